"""The main job: start the local stack and run a scripted bilingual conversation through the real functions.

Usage (from the repository root, after ``make install``; ``make demo`` does both)::

    python -m tools.demo                  # scripted conversation, then stop everything
    python -m tools.demo --payload FILE   # post your own webhook file (signed with the local token)
    python -m tools.demo run              # leave the stack up for manual curl calls (Ctrl-C stops it)

For each user message it prints the intent, confidence score, route, the bot's
reply as the SendBird stand-in received it, the intake's answer time and the
end-to-end latency (webhook sent -> reply recorded by SendBird), in ms.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import textwrap
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from tools import telemetry_summary, webhooks
from tools.gateway_stack import BOT_USER_ID, LOCAL_API_TOKEN, build_stack

REPLY_TIMEOUT_SECONDS = 15.0
#: How long a message that should get no reply (silence, duplicate) is watched, in seconds.
QUIET_WINDOW_SECONDS = 2.0


@dataclass
class Step:
    user: str
    text: str
    kind: str = "MESG"  # MESG, FILE, BOT (sent by the bot itself), DUP (re-delivery of the previous webhook)
    expect: str = "reply"  # reply | none
    note: str = ""


CHANNEL_EN = "sendbird_group_channel_demo_en"
CHANNEL_KO = "sendbird_group_channel_demo_ko"
SCRIPT = [
    Step("customer_1042", "Hi there!"),
    Step("customer_1042", "Where is my order?"),
    Step("customer_1042", "20261119-0042", note="fills the order-number slot"),
    Step("customer_1042", "What can you do?"),
    Step("customer_2077", "안녕하세요"),
    Step("customer_2077", "운동화 보여주세요"),
    Step("customer_2077", "", kind="DUP", expect="none", note="SendBird re-delivers the same webhook"),
    Step(BOT_USER_ID, "(the bot's own message echoed back)", kind="BOT", expect="none", note="no reply loop"),
    Step("customer_2077", "", kind="FILE", note="a photo"),
    Step("customer_2077", "화성 날씨 알려줘", note="out of scope"),
    Step("customer_2077", "상담원 연결해 주세요"),
    Step("customer_2077", "여보세요?", expect="none", note="handed off: the bot stays silent"),
    Step("customer_1042", "Thanks, bye!"),
]


def _reply_for(stack, channel_url: str, dedup_id: str, timeout: float) -> dict | None:
    """The stand-in's recorded message answering this webhook (by dedup_id), waiting up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for m in stack["sendbird"].control.messages(channel_url):
            if m.get("dedup_id") == dedup_id:
                return m
        time.sleep(0.02)
    return None


def _count_replies(stack, channel_url: str, dedup_id: str) -> int:
    return sum(1 for m in stack["sendbird"].control.messages(channel_url) if m.get("dedup_id") == dedup_id)


def run_script(stack, out=sys.stdout) -> list[dict]:
    """Send :data:`SCRIPT` as signed webhooks and print one block per user message; returns the rows."""
    base = stack["functions"].base_url
    session = requests.Session()
    rows: list[dict] = []
    message_id = int(time.time() * 1000) * 10
    last_body: bytes | None = None
    last_id = 0
    for step in SCRIPT:
        channel = CHANNEL_KO if step.user == "customer_2077" else CHANNEL_EN
        if step.kind == "DUP":
            body, mid = last_body, last_id
        else:
            message_id += 1
            mid = message_id
            event = webhooks.message_send_event(
                user_id=step.user, text=step.text, message_id=mid, channel_url=channel,
                message_type="FILE" if step.kind == "FILE" else "MESG")
            body = webhooks.encode(event)
            last_body, last_id = body, mid
        result = webhooks.post(session, base, body, LOCAL_API_TOKEN)
        dedup_id = f"reply-{mid}"
        row = {"user": step.user, "text": step.text or ("(file)" if step.kind == "FILE" else "(duplicate)"),
               "kind": step.kind, "note": step.note, "intake_status": result.status, "intake": result.body,
               "intake_ms": round(result.latency_ms, 1)}
        if step.expect == "reply":
            msg = _reply_for(stack, channel, dedup_id, REPLY_TIMEOUT_SECONDS)
            if msg is None:
                row.update(reply=None, error=f"no reply within {REPLY_TIMEOUT_SECONDS:.0f} s")
            else:
                data = json.loads(msg.get("data") or "{}")
                row.update(reply=msg["message"], intent=data.get("intent"), confidence=data.get("confidence"),
                           route=data.get("route"), e2e_ms=msg["created_at"] - result.sent_at_ms,
                           timings=data.get("timings", {}))
        else:
            time.sleep(QUIET_WINDOW_SECONDS)
            row.update(reply=None, replies_for_message=_count_replies(stack, channel, dedup_id))
        rows.append(row)
        _print_row(row, out)
    return rows


def _print_row(row: dict, out) -> None:
    who = f"{row['user']}: {row['text']}"
    print(f"\n> {who}" + (f"   [{row['note']}]" if row["note"] else ""), file=out)
    intake = row["intake"].get("status") or row["intake"].get("error", {}).get("code")
    reason = row["intake"].get("reason")
    print(f"  intake: {row['intake_status']} {intake}{' (' + reason + ')' if reason else ''}"
          f" in {row['intake_ms']} ms", file=out)
    if row.get("reply"):
        conf = row["confidence"]
        print(f"  intent: {row['intent']}  confidence: {conf if conf is not None else '-'}  route: {row['route']}",
              file=out)
        print(textwrap.indent(textwrap.fill(row["reply"], 100), "  bot: ") if "\n" not in row["reply"]
              else "  bot: " + row["reply"].replace("\n", "\n       "), file=out)
        print(f"  end-to-end: {row['e2e_ms']} ms   ({_hops_text(row.get('timings', {}))})", file=out)
    elif row.get("error"):
        print(f"  ERROR: {row['error']}", file=out)
    else:
        print(f"  bot: (no new reply; replies recorded for this message: {row['replies_for_message']})", file=out)


def _hops_text(timings: dict) -> str:
    """``chat-inbound: wait 3 + 15 ms (intent 4, cosmos 6); ...`` from the reply's ``data.timings``."""
    parts = []
    for hop in timings.get("hops", []):
        deps = ", ".join(f"{k} {v}" for k, v in hop.get("dependency_ms", {}).items() if v)
        parts.append(f"{hop['stage']} wait {hop['queue_wait_ms']} + {hop['duration_ms']} ms" + (f" ({deps})" if deps else ""))
    if "reply_queue_wait_ms" in timings:
        parts.append(f"chat-reply wait {timings['reply_queue_wait_ms']} ms")
    return "; ".join(parts)


def post_payload(stack, path: Path) -> int:
    """Post a user-supplied webhook file (exact bytes, signed with the local token) and show what happened."""
    body = path.read_bytes()
    result = webhooks.post(requests.Session(), stack["functions"].base_url, body, LOCAL_API_TOKEN)
    print(f"intake: {result.status} {json.dumps(result.body, ensure_ascii=False)} in {result.latency_ms:.1f} ms")
    if result.status == 200 and result.body.get("status") == "accepted":
        channel = result.body["channel_url"]
        msg = _reply_for(stack, channel, f"reply-{result.body['message_id']}",
                         REPLY_TIMEOUT_SECONDS)
        if msg:
            print(f"bot: {msg['message']}\nSendBird data: {msg.get('data')}\n"
                  f"end-to-end: {msg['created_at'] - result.sent_at_ms} ms")
        else:
            print(f"no reply within {REPLY_TIMEOUT_SECONDS:.0f} s (handed off, or see the runner log)")
    return 0 if result.status < 500 else 1


def _summary(rows: list[dict]) -> int:
    expected = [r for r in rows if r["kind"] not in ("DUP", "BOT") and r.get("note") != "handed off: the bot stays silent"]
    missing = [r for r in expected if not r.get("reply")]
    doubled = [r for r in rows if r.get("replies_for_message", 0) > 1]
    leaked = [r for r in rows if r["kind"] == "BOT" and r.get("replies_for_message")]
    lat = sorted(r["e2e_ms"] for r in rows if r.get("e2e_ms") is not None)
    if lat:
        print(f"\n{len(lat)} replies; end-to-end latency ms: min {lat[0]}, median {lat[len(lat) // 2]}, "
              f"max {lat[-1]}")
    problems = len(missing) + len(doubled) + len(leaked)
    print("OK: every message answered once, duplicates and the bot's own message produced no reply"
          if not problems else f"PROBLEMS: {len(missing)} unanswered, {len(doubled)} doubled, {len(leaked)} bot loops")
    return 1 if problems else 0


def print_telemetry(stack, rows: list[dict], out=sys.stdout) -> None:
    """What the gateway sent to Application Insights (recorded by the local sink), and one message's tree."""
    time.sleep(2.5)  # the runner's exporters send every second
    envelopes = stack["telemetry"].envelopes()
    c = telemetry_summary.counts(envelopes)
    print(f"\nTelemetry recorded by the local Application Insights sink ({len(envelopes)} envelopes):", file=out)
    for kind in ("requests", "dependencies", "events", "metrics"):
        print(f"  {kind:13}" + ", ".join(f"{k} {v}" for k, v in sorted(c[kind].items())), file=out)
    sample = next((r for r in rows if r.get("reply") and r["text"].startswith("Where is my order")), None)
    if sample is None:
        return
    correlation = sample["intake"].get("correlation_id")
    op = next((e["tags"].get("ai.operation.id") for e in envelopes if e["data"]["baseType"] == "EventData"
               and e["data"]["baseData"].get("properties", {}).get("correlation_id") == correlation), None)
    if op:
        print(f"\nOperation tree of {sample['text']!r} (operation_Id {op}):", file=out)
        for line in telemetry_summary.operation_tree(envelopes, op):
            print("  " + line, file=out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", choices=["demo", "run"], default="demo")
    parser.add_argument("--payload", type=Path, help="post this webhook file instead of the scripted conversation")
    parser.add_argument("--free-ports", action="store_true", help="use free ports instead of the default ones")
    args = parser.parse_args(argv)

    ports = ({k: 0 for k in ("azurite", "cosmos", "sendbird", "intent", "functions", "telemetry")}
             if args.free_ports else None)
    stack = build_stack(ports=ports, with_telemetry=True)
    print("starting the local stack (Azurite, Cosmos DB stand-in, SendBird stand-in, intent service, "
          "Application Insights ingestion sink, functions runner)...", flush=True)
    t0 = time.monotonic()
    with stack:
        print(f"stack ready in {time.monotonic() - t0:.1f} s:")
        for key, info in stack.describe().items():
            print(f"  {key:10} port {info['port']:5}  pid {info['pid']}  log {info['log']}")
        if args.mode == "run":
            url = stack["functions"].base_url + webhooks.WEBHOOK_PATH
            print(f"\nWebhook intake: {url}\nSendBird stand-in messages: {stack['sendbird'].base_url}/__standin/messages"
                  f"\nTelemetry envelopes (Application Insights sink): {stack['telemetry'].base_url}/__sink/envelopes"
                  f"\nTry:\n  python -m tools.send_webhook tests/fixtures/sendbird/message_send_en.json --url {url}"
                  "\nCtrl-C stops everything.")
            stop = threading.Event()
            signal.signal(signal.SIGTERM, lambda *_: stop.set())
            try:
                stop.wait()
            except KeyboardInterrupt:
                pass
            return 0
        if args.payload:
            return post_payload(stack, args.payload)
        rows = run_script(stack)
        status = _summary(rows)
        print_telemetry(stack, rows)
        return status


if __name__ == "__main__":
    sys.exit(main())
