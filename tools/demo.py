"""The main job: start the local stack and run a scripted bilingual conversation through the real functions.

Usage (from the repository root, after ``make install``; ``make demo`` does both)::

    python -m tools.demo                  # scripted conversation, then stop everything
    python -m tools.demo --payload FILE   # post your own webhook file (signed with the local token)
    python -m tools.demo run              # leave the stack up for manual curl calls (Ctrl-C stops it)
    python -m tools.demo run --free-ports # the same on free ports (tests, or when the defaults are taken)
    python -m tools.demo run --no-cache   # without the prediction cache

``run`` starts the stack with the prediction cache on (a ``redis-server`` on a free loopback port, memory only,
and the gateway's ``INTENT_CACHE_URL`` pointed at it: :mod:`shared.intent_cache`), so a repeated utterance is
answered without the intent service; ``--no-cache`` leaves Redis out. The scripted conversation runs without it
unless given ``--cache``. Either way the stack says whether the cache is on.

For each user message it prints the intent, confidence score, route, the bot's
reply as the SendBird stand-in received it, the intake's answer time and the
end-to-end latency (webhook sent -> reply recorded by SendBird), in ms.

Stopping: SIGTERM, SIGINT (Ctrl-C, or ``kill -INT``, also when the process was
started as a background job and inherited SIGINT ignored) and SIGHUP (unless
inherited ignored, as under nohup) stop every service, at any point: while the
stack starts, while ``run`` waits, during the scripted conversation. Exit status:
``run`` exits 0 when stopped by one of these signals (that is how it normally
ends); the scripted conversation and ``--payload`` exit 128 + the signal number
(130 for SIGINT, 143 for SIGTERM) when a signal interrupts them.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import signal
import sys
import textwrap
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from devstack.stack import ServiceStartError
from tools import telemetry_summary, webhooks
from tools.gateway_stack import BOT_USER_ID, LOCAL_API_TOKEN, StackOptions, build_stack

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


#: What stops the stack: a process manager's or ``kill``'s SIGTERM, Ctrl-C's SIGINT, a closed terminal's SIGHUP.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Interrupted(BaseException):
    """Raised in the main thread by a stop signal while the scripted conversation runs.

    A BaseException, like KeyboardInterrupt, so that ``except Exception`` on the way does not swallow it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class StopSignals:
    """Turns SIGTERM, SIGINT and SIGHUP into a flag plus a byte on a self-pipe (``signal.set_wakeup_fd``).

    The handler runs in the main thread; it only records the first signal (and, while ``raise_once`` is
    set, raises :class:`Interrupted` once). It takes no lock and calls nothing that does: no Event.set,
    no print, no logging, no stopping of services. Everything else happens in the main flow, which
    polls :attr:`signum` or waits in :meth:`wait`.

    SIGINT gets the handler even when it was inherited ignored: a background job of a non-interactive
    shell starts with SIGINT set to SIG_IGN, and Python then installs no KeyboardInterrupt handler, so
    ``kill -INT`` would do nothing. SIGHUP inherited ignored (nohup) stays ignored. On exit the previous
    handlers and wake-up fd are restored.
    """

    def __init__(self) -> None:
        self.signum: int | None = None
        self.raise_once = False
        self._previous: dict[int, object] = {}
        self._previous_wakeup_fd = -1
        self._read_fd = self._write_fd = -1

    def __enter__(self) -> "StopSignals":
        self._read_fd, self._write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.set_blocking(self._write_fd, False)
        self._previous_wakeup_fd = signal.set_wakeup_fd(self._write_fd, warn_on_full_buffer=False)
        for sig in STOP_SIGNALS:
            if sig == signal.SIGHUP and signal.getsignal(sig) == signal.SIG_IGN:
                continue
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()
        signal.set_wakeup_fd(self._previous_wakeup_fd)
        os.close(self._read_fd)
        os.close(self._write_fd)

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is None:
            self.signum = signum
        if self.raise_once:
            self.raise_once = False
            raise Interrupted(signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    def wait(self, timeout: float) -> bool:
        """Block until a stop signal arrives (True) or ``timeout`` seconds pass (False)."""
        if self.signum is None:
            select.select([self._read_fd], [], [], timeout)
            # The wake-up bytes are the signal numbers: do not depend on when the Python-level handler runs.
            while True:
                try:
                    data = os.read(self._read_fd, 512)
                except BlockingIOError:
                    break
                if not data:
                    break
                for number in data:
                    if self.signum is None and number in STOP_SIGNALS:
                        self.signum = number
        return self.signum is not None


def cache_line(stack) -> str:
    """Whether the gateway's prediction cache is on in ``stack``, and where."""
    if "redis" in stack:
        return (f"Prediction cache: on (INTENT_CACHE_URL={stack['redis'].url}, memory only; "
                "--no-cache turns it off)")
    return "Prediction cache: off (--cache turns it on)"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m tools.demo", description=__doc__.split("\n")[0])
    parser.add_argument("mode", nargs="?", choices=["demo", "run"], default="demo")
    parser.add_argument("--payload", type=Path, help="post this webhook file instead of the scripted conversation")
    parser.add_argument("--free-ports", action="store_true", help="use free ports instead of the default ones")
    parser.add_argument("--cache", action=argparse.BooleanOptionalAction, default=None,
                        help="prediction cache (a redis-server in the stack): on for run, off for the scripted demo")
    args = parser.parse_args(argv)
    if args.cache is None:
        args.cache = args.mode == "run"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with StopSignals() as signals:
        return _run(args, signals)


def _run(args: argparse.Namespace, signals: StopSignals) -> int:
    # Status when a stop signal ends it: see the module docstring.
    def stopped_status() -> int:
        return 0 if args.mode == "run" else 128 + signals.signum

    stack = build_stack(StackOptions(free_ports=args.free_ports, telemetry=True, console=True, cache=args.cache))
    print("starting the local stack (Azurite queues and blobs, Cosmos DB stand-in, SendBird stand-in, intent "
          "service with its authoring API, Application Insights ingestion sink, "
          f"{'redis-server, ' if args.cache else ''}functions runner, console)...", flush=True)
    t0 = time.monotonic()
    try:
        stack.start(cancel=lambda: signals.signum is not None)  # on failure it stops what it started
    except ServiceStartError:
        if signals.signum is None:
            raise
        print(f"{signals.name} received while starting: local stack stopped", flush=True)
        return stopped_status()
    try:
        print(f"stack ready in {time.monotonic() - t0:.1f} s:")
        for key, info in stack.describe().items():
            print(f"  {key:10} port {info['port']:5}  pid {info['pid']}  log {info['log']}")
        print(cache_line(stack), flush=True)
        if args.mode == "run":
            url = stack["functions"].base_url + webhooks.WEBHOOK_PATH
            logins = ", ".join(f"{u} / {pw} ({r})" for u, (r, pw) in stack["console"].credentials().items())
            print(f"\nWebhook intake: {url}\nSendBird stand-in messages: {stack['sendbird'].base_url}/__standin/messages"
                  f"\nTelemetry envelopes (Application Insights sink): {stack['telemetry'].base_url}/__sink/envelopes"
                  f"\nConsole: {stack['console'].base_url}/  sign in as {logins}"
                  f"\nTry:\n  python -m tools.send_webhook tests/fixtures/sendbird/message_send_en.json --url {url}"
                  "\nCtrl-C (or SIGTERM) stops everything.", flush=True)
            while not signals.wait(1.0):
                pass
            print(f"\n{signals.name} received: stopping the local stack...", flush=True)
            return stopped_status()
        sys.stdout.flush()
        try:
            signals.raise_once = True
            if signals.signum is not None:  # arrived between the start and here
                raise Interrupted(signals.signum)
            if args.payload:
                status = post_payload(stack, args.payload)
            else:
                rows = run_script(stack)
                status = _summary(rows)
                print_telemetry(stack, rows)
            signals.raise_once = False
        except Interrupted:
            print(f"\n{signals.name} received: stopping the local stack...", flush=True)
            status = stopped_status()
        finally:
            signals.raise_once = False
        return status
    finally:
        stack.stop()  # every service's process group; a further signal meanwhile is only recorded
        if signals.signum is not None:
            print("local stack stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
