"""Sign a webhook file with the API token and POST it to the intake; prints the answer and an equivalent curl.

    python -m tools.send_webhook tests/fixtures/sendbird/message_send_ko.json [--url URL] [--token TOKEN]
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import requests

from shared.signature import SIGNATURE_HEADER, sign
from tools import webhooks
from tools.gateway_stack import LOCAL_API_TOKEN


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.send_webhook", description=__doc__.split("\n")[0])
    parser.add_argument("file", type=Path)
    parser.add_argument("--url", default="http://127.0.0.1:7071" + webhooks.WEBHOOK_PATH)
    parser.add_argument("--token", default=LOCAL_API_TOKEN, help="API token the signature is keyed with")
    args = parser.parse_args(argv)
    body = args.file.read_bytes()
    signature = sign(body, args.token)
    print("curl -sS -X POST " + shlex.quote(args.url) + " -H 'Content-Type: application/json' "
          f"-H '{SIGNATURE_HEADER}: {signature}' --data-binary @{shlex.quote(str(args.file))}", file=sys.stderr)
    resp = requests.post(args.url, data=body, timeout=10,
                         headers={"Content-Type": "application/json", SIGNATURE_HEADER: signature})
    print(resp.status_code, json.dumps(resp.json(), ensure_ascii=False) if resp.content else "")
    return 0 if resp.status_code < 400 else 1


if __name__ == "__main__":
    sys.exit(main())
