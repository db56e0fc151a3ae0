"""Sign a webhook file with the API token and POST it to the intake; prints the answer and an equivalent curl.

    python -m tools.send_webhook tests/fixtures/sendbird/message_send_ko.json [--url URL] [--token TOKEN]
                                 [--keep-created-at]

The intake refuses webhooks whose ``payload.created_at`` is outside its replay window
(``WEBHOOK_REPLAY_WINDOW_SECONDS``), so by default ``payload.created_at`` is set to now and the body is
re-serialized before signing; ``--keep-created-at`` posts the file's exact bytes.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import requests

from shared.signature import SIGNATURE_HEADER, sign
from tools import webhooks
from tools.gateway_stack import LOCAL_API_TOKEN


def refresh_created_at(body: bytes) -> bytes:
    """``body`` with ``payload.created_at`` set to now (epoch ms), when it is a JSON object with a payload."""
    try:
        event = json.loads(body)
    except ValueError:
        return body
    if not isinstance(event, dict) or not isinstance(event.get("payload"), dict):
        return body
    event["payload"]["created_at"] = int(time.time() * 1000)
    return json.dumps(event, ensure_ascii=False).encode("utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.send_webhook", description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:7071" + webhooks.WEBHOOK_PATH)
    parser.add_argument("--token", default=LOCAL_API_TOKEN, help="API token the signature is keyed with")
    parser.add_argument("--keep-created-at", action="store_true",
                        help="post the file's bytes as they are (an old created_at is refused as stale)")
    args = parser.parse_args(argv)
    body = args.file.read_bytes()
    if not args.keep_created_at:
        body = refresh_created_at(body)
    signature = sign(body, args.token)
    print("curl -sS -X POST " + shlex.quote(args.url) + " -H 'Content-Type: application/json' "
          f"-H '{SIGNATURE_HEADER}: {signature}' --data-binary {shlex.quote(body.decode('utf-8'))}", file=sys.stderr)
    resp = requests.post(args.url, data=body, timeout=10,
                         headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature})
    print(resp.status_code, json.dumps(resp.json(), ensure_ascii=False) if resp.content else "")
    return 0 if resp.status_code < 400 else 1


if __name__ == "__main__":
    sys.exit(main())
