#!/usr/bin/env python3
"""Smoke test of a deployed webhook intake (standard library only).

Posts SendBird ``group_channel:message_send`` webhooks signed like SendBird does (header
``x-sendbird-signature`` = hex HMAC-SHA256 of the raw body keyed with the API token, the same as
``shared/signature.py``) to ``<base-url>/api/sendbird/webhook`` and checks the answers:

1. a message sent by the bot itself, correctly signed -> 200 ``{"status": "ignored", "reason": "sent_by_bot"}``.
   This proves that the slot runs the new build, resolved its Key Vault reference (the signature key) and loaded
   its settings, and it enqueues nothing, so no user sees anything and production's queues stay untouched;
2. the same body with a wrong signature -> 401 (the signature check is on);
3. only with ``--accept-user-id`` and ``--channel-url``: a user message -> 200 ``accepted`` (this one IS enqueued
   and answered in that channel; use a test channel).

A freshly deployed slot restarts, so step 1 is retried on connection errors, 404 and 5xx until ``--deadline``.

    SENDBIRD_API_TOKEN=... python infra/scripts/smoke_webhook.py \\
        --base-url https://func-chatbot-abc123-staging.azurewebsites.net --bot-user-id ssg_bot

Exit status 0 when every check passes, 1 otherwise (each failure printed on stderr).
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass

WEBHOOK_PATH = "/api/sendbird/webhook"
SIGNATURE_HEADER = "x-sendbird-signature"
RETRY_STATUSES = {404, 500, 502, 503, 504}


def sign(body: bytes, api_token: str) -> str:
    """Hex HMAC-SHA256 of ``body`` keyed with ``api_token`` (as shared/signature.py and SendBird)."""
    return hmac.new(api_token.encode("utf-8"), body, hashlib.sha256).hexdigest()


def event(*, user_id: str, text: str, channel_url: str, message_id: int, bot_user_id: str) -> bytes:
    """A minimal but complete ``group_channel:message_send`` webhook body (UTF-8 JSON)."""
    members = [{"user_id": u, "nickname": u, "profile_url": "", "is_online": True, "is_active": True, "metadata": {}}
               for u in dict.fromkeys((user_id, bot_user_id))]
    body = {
        "category": "group_channel:message_send",
        "sender": {"user_id": user_id, "nickname": user_id, "profile_url": "", "metadata": {}},
        "silent": False, "custom_type": "", "mention_type": "users", "mentioned_users": [], "members": members,
        "type": "MESG",
        "payload": {"message_id": message_id, "custom_type": "", "translations": {}, "message": text,
                    "created_at": int(time.time() * 1000), "data": ""},
        "channel": {"name": "smoke test", "channel_url": channel_url, "custom_type": "", "is_distinct": True,
                    "is_public": False, "is_super": False, "is_ephemeral": False, "is_discoverable": False,
                    "data": ""},
        "sdk": "smoke-test",
    }
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


@dataclass
class Answer:
    status: int  # 0: no HTTP answer (connection error, timeout)
    body: dict
    error: str = ""


def post(url: str, body: bytes, signature: str, timeout: float) -> Answer:
    req = urllib.request.Request(url, data=body, method="POST", headers={
        "Content-Type": "application/json", "User-Agent": "chatbot-smoke-test", SIGNATURE_HEADER: signature})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return Answer(resp.status, _json(resp.read()))
    except urllib.error.HTTPError as exc:
        return Answer(exc.code, _json(exc.read()))
    except (urllib.error.URLError, OSError) as exc:
        return Answer(0, {}, f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}")


def _json(raw: bytes) -> dict:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        return {"raw": raw[:200].decode("utf-8", "replace")}
    return data if isinstance(data, dict) else {"raw": data}


def post_until_answered(url: str, body: bytes, signature: str, deadline: float, timeout: float,
                        interval: float) -> Answer:
    """POST until the answer is not a warm-up answer (no connection, 404, 5xx) or the deadline passes."""
    while True:
        answer = post(url, body, signature, timeout)
        if answer.status not in RETRY_STATUSES | {0} or time.monotonic() >= deadline:
            return answer
        print(f"  not ready yet ({answer.status or answer.error}); retrying in {interval:g} s", file=sys.stderr)
        time.sleep(interval)


def run(base_url: str, token: str, bot_user_id: str, *, deadline_s: float = 180, timeout: float = 10,
        interval: float = 5, accept_user_id: str = "", channel_url: str = "") -> list[str]:
    """Run the checks; returns the failures (empty: all passed)."""
    url = base_url.rstrip("/") + WEBHOOK_PATH
    deadline = time.monotonic() + deadline_s
    failures: list[str] = []
    message_id = int(time.time() * 1000)

    body = event(user_id=bot_user_id, text="smoke test (ignored: sent by the bot)",
                 channel_url=channel_url or "smoke_test_channel", message_id=message_id, bot_user_id=bot_user_id)
    answer = post_until_answered(url, body, sign(body, token), deadline, timeout, interval)
    print(f"signed bot message -> {answer.status or answer.error} {json.dumps(answer.body)[:300]}")
    if answer.status != 200:
        failures.append(f"signed webhook: expected 200, got {answer.status or answer.error}: {answer.body}")
    elif (answer.body.get("status"), answer.body.get("reason")) != ("ignored", "sent_by_bot"):
        failures.append(f"signed webhook from the bot: expected ignored/sent_by_bot, got {answer.body}")
    if failures:
        return failures

    bad = post(url, body, sign(body, token + "-wrong"), timeout)
    print(f"wrongly signed message -> {bad.status or bad.error}")
    if bad.status != 401:
        failures.append(f"wrong signature: expected 401, got {bad.status or bad.error}: {bad.body}")

    if accept_user_id and channel_url:
        body = event(user_id=accept_user_id, text="hello", channel_url=channel_url, message_id=message_id + 1,
                     bot_user_id=bot_user_id)
        answer = post(url, body, sign(body, token), timeout)
        print(f"signed user message -> {answer.status or answer.error} {json.dumps(answer.body)[:300]}")
        if answer.status != 200 or answer.body.get("status") != "accepted":
            failures.append(f"user message: expected 200 accepted, got {answer.status or answer.error}: {answer.body}")
    return failures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base-url", required=True, help="e.g. https://<app>-staging.azurewebsites.net")
    p.add_argument("--bot-user-id", required=True, help="SENDBIRD_BOT_USER_ID of the deployment")
    p.add_argument("--token-env", default="SENDBIRD_API_TOKEN",
                   help="environment variable holding the SendBird API token (default SENDBIRD_API_TOKEN)")
    p.add_argument("--deadline", type=float, default=180, help="seconds to wait for the slot to answer (default 180)")
    p.add_argument("--timeout", type=float, default=10, help="per-request timeout, seconds (default 10)")
    p.add_argument("--interval", type=float, default=5, help="seconds between warm-up retries (default 5)")
    p.add_argument("--accept-user-id", default="", help="also post a real user message from this user id ...")
    p.add_argument("--channel-url", default="", help="... in this (test) channel; it gets a real reply")
    args = p.parse_args(argv)
    token = os.environ.get(args.token_env, "")
    if not token:
        print(f"error: ${args.token_env} is empty", file=sys.stderr)
        return 2
    failures = run(args.base_url, token, args.bot_user_id, deadline_s=args.deadline, timeout=args.timeout,
                   interval=args.interval, accept_user_id=args.accept_user_id, channel_url=args.channel_url)
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    print("smoke test passed" if not failures else "smoke test FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
