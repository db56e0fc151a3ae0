#!/usr/bin/env python3
"""Wait until a deployed intent service is ready, then check one prediction (standard library only).

1. ``GET <base-url>/health/ready`` until 200 (the model is loaded) or ``--deadline`` passes; 503 (loading),
   other 5xx, 404 and connection errors are retried (a slot that just got a new image restarts its container).
2. With a key (``--key-env``, default ``INTENT_API_KEY``, if set): one CLU request
   ``POST /language/:analyze-conversations?api-version=2023-04-01`` with ``Ocp-Apim-Subscription-Key``;
   it must answer 200 with a ``topIntent``, and the same request without the key must answer 401.
3. With ``--expect-data-sha256``: the ``x-model-data-sha256`` header (the hash of the training data the
   model was built from, see intent_service/README.md) must equal it.

    INTENT_API_KEY=... python infra/scripts/wait_ready.py --base-url https://intent-chatbot-abc123-staging.azurewebsites.net

Exit status 0 when ready and every check passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import urllib.error
import urllib.request

ANALYZE_PATH = "/language/:analyze-conversations?api-version=2023-04-01"


def request(url: str, *, body: dict | None = None, key: str = "", timeout: float = 10) -> tuple[int, dict, dict]:
    """(status, JSON body, headers); status 0 when there was no HTTP answer."""
    headers = {"User-Agent": "chatbot-readiness-check"}
    data = None
    if body is not None:
        data = json.dumps(body).encode("utf-8")
        headers["Content-Type"] = "application/json"
    if key:
        headers["Ocp-Apim-Subscription-Key"] = key
    req = urllib.request.Request(url, data=data, headers=headers, method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, _json(resp.read()), {k.lower(): v for k, v in resp.headers.items()}
    except urllib.error.HTTPError as exc:
        return exc.code, _json(exc.read()), {k.lower(): v for k, v in exc.headers.items()}
    except (urllib.error.URLError, OSError) as exc:
        return 0, {"error": f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"}, {}


def _json(raw: bytes) -> dict:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {"raw": raw[:200].decode("utf-8", "replace")}
    return data if isinstance(data, dict) else {"raw": data}


def clu_request(text: str) -> dict:
    return {"kind": "Conversation",
            "analysisInput": {"conversationItem": {"id": "1", "participantId": "smoke", "text": text}},
            "parameters": {"projectName": "retail-bot", "deploymentName": "production", "stringIndexType":
                           "TextElement_V8"}}


def run(base_url: str, *, key: str = "", deadline_s: float = 600, interval: float = 5, timeout: float = 10,
        expect_data_sha256: str = "") -> list[str]:
    base = base_url.rstrip("/")
    deadline = time.monotonic() + deadline_s
    while True:
        status, body, _ = request(base + "/health/ready", timeout=timeout)
        if status == 200:
            print("ready: /health/ready -> 200")
            break
        if time.monotonic() >= deadline:
            return [f"/health/ready did not answer 200 within {deadline_s:g} s (last: {status or body.get('error')})"]
        print(f"  not ready ({status or body.get('error')}); retrying in {interval:g} s", file=sys.stderr)
        time.sleep(interval)

    failures: list[str] = []
    status, body, headers = request(base + ANALYZE_PATH, body=clu_request("hello"), key=key, timeout=timeout)
    print(f"analyze-conversations -> {status} topIntent={body.get('result', {}).get('prediction', {}).get('topIntent')}")
    if status != 200 or "topIntent" not in body.get("result", {}).get("prediction", {}):
        failures.append(f"analyze-conversations: expected 200 with a topIntent, got {status}: {str(body)[:300]}")
    if expect_data_sha256 and headers.get("x-model-data-sha256") != expect_data_sha256:
        failures.append(f"model data hash {headers.get('x-model-data-sha256')!r} != expected {expect_data_sha256!r}")
    if key:
        status, body, _ = request(base + ANALYZE_PATH, body=clu_request("hello"), timeout=timeout)
        print(f"analyze-conversations without key -> {status}")
        if status != 401:
            failures.append(f"without Ocp-Apim-Subscription-Key: expected 401, got {status}")
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True)
    p.add_argument("--key-env", default="INTENT_API_KEY", help="environment variable holding the service key")
    p.add_argument("--deadline", type=float, default=600, help="seconds to wait for readiness (default 600)")
    p.add_argument("--interval", type=float, default=5)
    p.add_argument("--timeout", type=float, default=10)
    p.add_argument("--expect-data-sha256", default="", help="expected x-model-data-sha256 header (optional)")
    args = p.parse_args(argv)
    failures = run(args.base_url, key=os.environ.get(args.key_env, ""), deadline_s=args.deadline,
                   interval=args.interval, timeout=args.timeout, expect_data_sha256=args.expect_data_sha256)
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    print("intent service ready" if not failures else "readiness check FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
