"""Run the fault-injection suite: ``python -m faults.run [--preset ci|full] [--users N --messages M --seed S ...]``.

Starts its own stack on free loopback ports, drives the conversations while injecting the faults of the
plan, waits for the queues to drain, compares the accepted messages with the replies the SendBird stand-in
recorded, prints the report (also written to ``<log dir>/report.txt`` and ``report.json``) and exits 1 when
a message was lost or answered twice, 0 otherwise.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
import threading
import time
import warnings
from pathlib import Path

from faults.driver import Driver, preflight
from faults.plan import PRESETS, FaultPlan
from faults.report import Report, build_report
from faults.stack import DATABASE, FaultStack
from faults.writer import SecondWriter

log = logging.getLogger("faults")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / ".stack" / "faults"
STATE_CONTAINER = "user_state"


def intent_rules(plan: FaultPlan) -> list[dict]:
    return [
        {"name": "intent-503", "path": "^/language/", "probability": plan.intent_503_p, "status": 503,
         "body": {"error": {"code": "ServiceUnavailable", "message": "chaos proxy: injected 503"}}},
        {"name": "intent-timeout", "path": "^/language/", "probability": plan.intent_slow_p,
         "delay_ms": plan.intent_slow_ms},
    ]


def outage_rules() -> list[dict]:
    return [{"name": "intent-outage-503", "path": "^/language/", "status": 503,
             "body": {"error": {"code": "ServiceUnavailable", "message": "chaos proxy: outage"}}}]


def cosmos_rules(plan: FaultPlan) -> list[dict]:
    return [{"name": "cosmos-429", "path": "/docs", "probability": plan.cosmos_429_p, "status": 429,
             "headers": {"x-ms-retry-after-ms": str(plan.cosmos_retry_after_ms), "x-ms-substatus": "3200"},
             "body": {"code": "TooManyRequests", "message": "Message: {\"Errors\":[\"Request rate is large.\"]}"}}]


class Scheduler(threading.Thread):
    """Time/progress-driven faults: runner kills, the intent outage, SendBird 429/5xx bursts."""

    def __init__(self, stack: FaultStack, driver: Driver, plan: FaultPlan):
        super().__init__(name="fault-scheduler", daemon=True)
        self.stack, self.driver, self.plan = stack, driver, plan
        self.done = threading.Event()
        self.events: list[str] = []
        self.bursts = 0
        self.error: BaseException | None = None

    def _note(self, text: str) -> None:
        self.events.append(f"{time.strftime('%H:%M:%S')} {text}")
        log.warning(text)

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            self.error = exc
            log.exception("fault scheduler failed")

    def _run(self) -> None:
        kills = sorted(self.plan.kill_at)
        outage_at = self.plan.intent_outage_at
        next_burst = time.monotonic() + self.plan.sendbird_burst_every_s / 2
        outage_end = None
        while not self.done.wait(0.1):
            progress = self.driver.progress
            now = time.monotonic()
            if kills and progress >= kills[0]:
                kills.pop(0)
                instances = max(1, self.plan.instances)
                index = len(self.stack.kills) % instances
                restart = self.plan.restart_killed or instances == 1
                self._note(f"SIGKILL runner {index} (of {instances}) at {progress:.0%} of the messages")
                ev = self.stack.kill_runner(index, restart=restart)
                self._note(f"new runner up after {ev['down_s']} s" if restart
                           else f"runner {index} stays down; {len(self.stack.base_urls())} instance(s) left")
            if outage_at is not None and progress >= outage_at:
                outage_at = None
                self.stack["intent_proxy"].control.set_rules(outage_rules())
                outage_end = now + self.plan.intent_outage_s
                self._note(f"intent service outage (every call 503) for {self.plan.intent_outage_s} s")
            if outage_end is not None and now >= outage_end:
                outage_end = None
                self.stack["intent_proxy"].control.set_rules(intent_rules(self.plan))
                self._note("intent service outage over")
            if self.plan.sendbird_burst_every_s and now >= next_burst:
                next_burst = now + self.plan.sendbird_burst_every_s
                self.stack["sendbird"].control.add_faults([dict(f) for f in self.plan.sendbird_burst])
                self.bursts += 1
        if outage_end is not None:
            self.stack["intent_proxy"].control.set_rules(intent_rules(self.plan))


def _queue_depths(conn: str) -> dict[str, int]:
    from azure.storage.queue import QueueClient

    from shared.poison_admin import source_queues

    depths = {}
    for q in source_queues():
        try:
            depths[q] = QueueClient.from_connection_string(conn, q).get_queue_properties().approximate_message_count
        except Exception:  # noqa: BLE001 - a queue not created yet is empty
            depths[q] = 0
    return depths


def _drain(stack: FaultStack, plan: FaultPlan) -> bool:
    """Wait (bounded) until every gateway queue has been empty for ``plan.quiet_s`` seconds."""
    conn = stack["azurite"].connection_string
    deadline = time.monotonic() + plan.drain_timeout_s
    empty_since = None
    while time.monotonic() < deadline:
        total = sum(_queue_depths(conn).values())
        if total == 0:
            empty_since = empty_since or time.monotonic()
            if time.monotonic() - empty_since >= plan.quiet_s:
                return True
        else:
            empty_since = None
        time.sleep(0.5)
    return False


def all_poison(queues) -> list:
    """Every poison message, through the listing the operators use (``shared.poison_admin.list_poison``)."""
    from shared.poison_admin import list_poison

    return list_poison(queues, limit=10_000).entries


def _log_counts(path: Path) -> dict[str, int]:
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return {}
    return {
        "duplicate_deliveries_dropped": len(re.findall(r"not routed: duplicate delivery", text)),
        "gateway_412": len(re.findall(r"changed concurrently", text)),
        "reply_reschedules": len(re.findall(r"rescheduled in .* \(SendBird 429", text)),
        "busy_reschedules": len(re.findall(r"another sender holds the claim", text)),
        "intent_breaker_open": len(re.findall(r"circuit open", text)),
        "skipped_deletes_logged": len(re.findall(r"chaos: not deleting message", text)),
        "replies_already_sent": len(re.findall(r"was sent before: not sending again", text)),
    }


def run_suite(plan: FaultPlan, out_dir: Path | None = None, echo=print) -> Report:
    out_dir = Path(out_dir or DEFAULT_OUT / time.strftime("%Y%m%d-%H%M%S"))
    log_dir = out_dir / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    with FaultStack(plan, log_dir) as stack:
        echo(f"stack up in {time.monotonic() - started:.1f} s; runner(s) {', '.join(stack.base_urls())}; "
             f"logs {log_dir}")
        usable, excluded = preflight(stack["intent"].base_url)
        if excluded:
            echo(f"utterances left out (classified HumanHandoff): {excluded}")
        stack["intent_proxy"].control.set_rules(intent_rules(plan))
        stack["cosmos_proxy"].control.set_rules(cosmos_rules(plan))
        stack["sendbird"].control.reset()

        driver = Driver(stack.base_urls, plan, usable)
        users = [f"fi-user-{plan.seed}-{u:03d}" for u in range(plan.users)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            container = stack["cosmos"].client().get_database_client(DATABASE).get_container_client(STATE_CONTAINER)
        writer = SecondWriter(container, users, plan.writer_interval_s).start()
        scheduler = Scheduler(stack, driver, plan)
        scheduler.start()
        load_start = time.monotonic()
        messages = driver.run()
        scheduler.done.set()
        scheduler.join(120)
        echo(f"load done in {time.monotonic() - load_start:.1f} s ({len(messages)} messages); draining")
        drained = _drain(stack, plan)
        writer.stop()
        stack["sendbird"].control.clear_faults()

        visible = stack["sendbird"].control.messages()
        from shared.clients.queues import QueueSender

        poison = all_poison(QueueSender(stack["azurite"].connection_string, "base64"))
        states = {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for u in users:
                try:
                    states[u] = container.read_item(u, partition_key=u)
                except Exception:  # noqa: BLE001 - no document: the user's messages never got that far
                    pass
        writer_check = writer.check()
        final_stats = stack.runner_stats() or {"functions": {}}
        skipped = sum(f.get("chaos_skipped_deletes", 0)
                      for s in [*stack.stats_before_kill, final_stats] for f in s["functions"].values())
        counters = stack["sendbird"].control.counters()
        log_counts: dict[str, int] = {}
        for path in stack.runner_logs:
            for k, v in _log_counts(path).items():
                log_counts[k] = log_counts.get(k, 0) + v
        injected = {**driver.counters, **log_counts, "skipped_deletes": skipped, "instances": plan.instances,
                    "kills": stack.kills, "intent_proxy": stack["intent_proxy"].control.stats(),
                    "cosmos_proxy": stack["cosmos_proxy"].control.stats(),
                    "sendbird_faults_applied": counters.get("faults_applied", 0),
                    "sendbird_rejected": counters.get("rejected", {}),
                    "sendbird_deduplicated": counters.get("deduplicated", 0),
                    "sendbird_bursts": scheduler.bursts, "events": scheduler.events}
        if scheduler.error:
            injected["scheduler_error"] = repr(scheduler.error)
        report = build_report(messages, visible, poison, states, writer_check, injected, plan.to_dict(),
                              time.monotonic() - started, drained)
        report.details["runner_log"] = ", ".join(str(p) for p in stack.runner_logs)
        report.details["visible"] = [{k: m.get(k) for k in ("dedup_id", "channel_url", "created_at", "message")}
                                     for m in visible]
        report.details["states"] = states
        report.details["messages"] = [
            {"user": m.user, "message_id": m.message_id, "index": m.index, "text": m.text, "accepted": m.accepted,
             "deliveries": m.deliveries, "attempts": [a.__dict__ for a in m.attempts]} for m in messages]
    text = report.text()
    (out_dir / "report.txt").write_text(text + "\n", encoding="utf-8")
    (out_dir / "report.json").write_text(json.dumps(report.to_dict(), indent=1, default=str, ensure_ascii=False),
                                         encoding="utf-8")
    echo(text)
    echo(f"report: {out_dir / 'report.txt'} (details in report.json; logs in {log_dir})")
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m faults.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="full")
    p.add_argument("--users", type=int)
    p.add_argument("--messages", type=int, help="per user (keep <= 20, the state history limit)")
    p.add_argument("--seed", type=int)
    p.add_argument("--skip-delete-rate", type=float, dest="skip_delete_rate")
    p.add_argument("--kill-at", default=None, help="comma-separated shares of the load, e.g. 0.3,0.7 ('' = none)")
    p.add_argument("--no-outage", action="store_true", help="no intent service outage")
    p.add_argument("--no-bursts", action="store_true", help="no SendBird 429/5xx bursts")
    p.add_argument("--out", type=Path, default=None, help=f"output folder (default {DEFAULT_OUT}/<timestamp>)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    plan = PRESETS[args.preset].with_(users=args.users, messages=args.messages, seed=args.seed,
                                      skip_delete_rate=args.skip_delete_rate)
    if args.kill_at is not None:
        plan = plan.with_(kill_at=tuple(float(x) for x in args.kill_at.split(",") if x.strip()))
    if args.no_outage:
        from dataclasses import replace
        plan = replace(plan, intent_outage_at=None)
    if args.no_bursts:
        plan = plan.with_(sendbird_burst_every_s=0.0)
    report = run_suite(plan, args.out)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
