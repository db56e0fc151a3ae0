"""Benchmark harness: the stack, the load generator, reply collection and the figures of one run.

One *run* = one mode (``chain`` or ``monolith``) x one intent-service latency x one offered rate. The load
is open-loop: webhook ``i`` is due at ``t0 + i / rate``; at most ``users`` webhooks are in flight (one
sender thread per simulated user, each with its own keep-alive connection, like SendBird's pool). A webhook
not answered within SendBird's 5 s is re-sent (same bytes) up to ``webhook_retries`` times, as SendBird does.
Every figure after the HTTP answer comes from the replies the SendBird stand-in recorded.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import queue
import random
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import requests

from devstack.stack import FunctionsRunner, LocalStack
from shared.clients.cosmos import load_counts
from tools import webhooks
from tools.gateway_stack import (BOT_USER_ID, LOCAL_API_TOKEN, ROOT, StackOptions, build_stack, gateway_env,
                                intent_client, top_intent)

MONOLITH_APP = ROOT / "bench" / "monolith_app"
APP_ROOTS = {"chain": ROOT, "monolith": MONOLITH_APP}
#: SendBird's webhook timeout: no answer within it -> the same POST again (up to 3 times).
SENDBIRD_TIMEOUT_S = 5.0

#: Utterances the simulated users send (both languages, several routes). Any that the model sends to the
#: handoff route are dropped at start (a handed-off user gets no replies, which would count as lost).
UTTERANCES = [
    "Hi there!", "What can you do?", "Where is my order 20261119-0042?", "Show me sneakers",
    "Do you have running shoes?", "Thanks, bye!", "order status for 20261119-0042 please",
    "안녕하세요", "운동화 보여주세요", "주문번호 20261119-0042 배송 조회해 주세요", "뭐 할 수 있어요?", "고마워요",
    "what is the weather on mars", "Hello", "I want to see jackets",
]


# --------------------------------------------------------------------------- stack
def infra_stack(intent_latency_ms: float, log_dir: str | os.PathLike | None = None, *,
                cache: bool = False) -> LocalStack:
    """Azurite, Cosmos stand-in, SendBird stand-in and the intent service with an added latency (free ports),
    from the project's one stack builder; the runner is added per mode by :func:`runner_for`. ``cache``: a
    redis-server too, and the runners' prediction cache pointed at it (``INTENT_CACHE_URL``)."""
    return build_stack(StackOptions(free_ports=True, log_dir=log_dir, app_root=None, cache=cache,
                                    intent_env={"INTENT_ADDED_LATENCY_MS": str(intent_latency_ms)}))


def runner_for(stack: LocalStack, mode: str, log_dir: str | os.PathLike | None = None, *,
               workers: int | None = None, env: dict[str, str] | None = None) -> FunctionsRunner:
    """The functions runner hosting the chain (the repo's function_app.py) or the monolith app, not started.
    ``workers``: ``FUNCTIONS_WORKER_PROCESS_COUNT`` (None: the worker runs in the runner's process);
    ``env``: more app settings."""
    overrides = dict(env or {})
    # each process of the runner writes its Cosmos DB operation counters here (run_once reads them)
    overrides.setdefault("COSMOS_OP_COUNTS_DIR", tempfile.mkdtemp(prefix="cosmos-ops-"))
    if workers is not None:
        overrides["FUNCTIONS_WORKER_PROCESS_COUNT"] = str(workers)
    return FunctionsRunner(APP_ROOTS[mode], 0, gateway_env(stack, overrides), log_dir=log_dir)


def worker_pids(runner: FunctionsRunner) -> list[int]:
    """The language worker processes of a runner started with ``FUNCTIONS_WORKER_PROCESS_COUNT`` (else [])."""
    try:
        stats = requests.get(runner.base_url + "/admin/localrunner/stats", timeout=5).json()
    except (requests.RequestException, ValueError):
        return []
    return [w["pid"] for w in stats.get("worker_processes", []) if w.get("pid")]


def usable_utterances(intent_base_url: str) -> list[str]:
    """UTTERANCES minus those the model routes to a handoff (checked against the running intent service)."""
    client = intent_client(intent_base_url)
    return [text for text in UTTERANCES if top_intent(client, text) != "HumanHandoff"]


# --------------------------------------------------------------------------- load
@dataclass
class Sent:
    index: int
    user: str
    channel: str
    message_id: int
    scheduled_ms: float          # epoch ms it was due
    sent_at_ms: int = 0          # epoch ms of the first POST
    status: int | None = None    # final HTTP status (None: no answer)
    latency_ms: float | None = None   # first delivery's answer time (None: timed out)
    attempts: int = 0
    timeouts: int = 0
    error: str | None = None
    accepted: bool = False


def drive(base_url: str | list[str], *, rate: float, duration: float, users: int, texts: list[str], tag: str,
          webhook_retries: int = 3, timeout_s: float = SENDBIRD_TIMEOUT_S) -> list[Sent]:
    """Send ``rate * duration`` signed webhooks open-loop; returns one :class:`Sent` per webhook. Several
    ``base_url``s (instances behind the platform's front end): webhook ``i`` goes to ``base_url[i % n]``."""
    urls = [base_url] if isinstance(base_url, str) else list(base_url)
    count = max(1, int(round(rate * duration)))
    rng = random.Random(42)
    base_id = int(time.time() * 1000) * 1000
    t0 = time.time() + 0.2
    plan = [Sent(i, f"bench-{tag}-u{i % users}", f"bench_{tag}_ch{i % users}", base_id + i, (t0 + i / rate) * 1000)
            for i in range(count)]
    bodies = [webhooks.encode(webhooks.message_send_event(
        user_id=s.user, text=rng.choice(texts), message_id=s.message_id, channel_url=s.channel,
        bot_user_id=BOT_USER_ID)) for s in plan]
    work: queue.Queue = queue.Queue()
    hard_stop = t0 + duration + 4 * timeout_s * (webhook_retries + 1) + 30  # bound for every thread

    def sender() -> None:
        session = requests.Session()
        while True:
            item = work.get()
            if item is None:
                return
            s: Sent = plan[item]
            body = bodies[item]
            for attempt in range(webhook_retries + 1):
                if time.time() > hard_stop:
                    s.error = s.error or "bench time bound reached"
                    break
                s.attempts += 1
                try:
                    res = webhooks.post(session, urls[(item + attempt) % len(urls)], body, LOCAL_API_TOKEN,
                                        timeout=timeout_s)
                except requests.Timeout:
                    s.timeouts += 1
                    if attempt == 0:
                        s.sent_at_ms = int(time.time() * 1000 - timeout_s * 1000)
                    session = requests.Session()  # the timed-out connection is unusable
                    continue
                except requests.RequestException as exc:
                    s.error = f"{type(exc).__name__}: {exc}"[:200]
                    session = requests.Session()
                    continue
                if attempt == 0:
                    s.sent_at_ms, s.latency_ms = res.sent_at_ms, res.latency_ms
                s.status = res.status
                s.accepted = s.accepted or (res.status == 200 and res.body.get("status") == "accepted")
                if res.status < 500:
                    break
            work.task_done()

    threads = [threading.Thread(target=sender, daemon=True, name=f"user-{u}") for u in range(users)]
    for t in threads:
        t.start()
    for i in range(count):
        delay = plan[i].scheduled_ms / 1000 - time.time()
        if delay > 0:
            time.sleep(delay)
        work.put(i)
    for _ in threads:
        work.put(None)
    for t in threads:
        t.join(max(0.0, hard_stop - time.time()))
    return plan


def collect_replies(control, expected: set[str], *, drain_timeout: float, since_index: int = 0) -> dict[str, list[dict]]:
    """dedup_id -> recorded messages, waiting until every expected reply is there or ``drain_timeout`` passes."""
    deadline = time.monotonic() + drain_timeout
    while True:
        by_id: dict[str, list[dict]] = {}
        for m in control.messages():
            by_id.setdefault(m.get("dedup_id") or "", []).append(m)
        if expected <= by_id.keys() or time.monotonic() >= deadline:
            return by_id
        time.sleep(0.25)


# --------------------------------------------------------------------------- resource sampling
class ProcSampler:
    """CPU seconds (user+system) of several processes over a window, and the peak RSS of each (sampled 10 Hz)."""

    def __init__(self, pids: dict[str, int], interval: float = 0.1):
        self.procs = {k: psutil.Process(p) for k, p in pids.items() if p}
        self.interval = interval
        self.peak_rss = {k: 0 for k in self.procs}
        self._stop = threading.Event()
        self._cpu0: dict[str, float] = {}
        self._t0 = 0.0
        self._thread = threading.Thread(target=self._loop, daemon=True)

    @staticmethod
    def _cpu(p: psutil.Process) -> float:
        t = p.cpu_times()
        return t.user + t.system

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            for k, p in self.procs.items():
                try:
                    self.peak_rss[k] = max(self.peak_rss[k], p.memory_info().rss)
                except psutil.Error:
                    pass

    def __enter__(self) -> "ProcSampler":
        self._t0 = time.monotonic()
        self._cpu0 = {k: self._cpu(p) for k, p in self.procs.items()}
        self._self0 = self._cpu(psutil.Process())
        self._thread.start()
        return self

    def _cpu_or_last(self, key: str) -> float:
        """CPU seconds of ``key`` since the start; a process that ended (e.g. a restarted worker) counts 0."""
        try:
            return self._cpu(self.procs[key]) - self._cpu0[key]
        except psutil.Error:
            return 0.0

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.wall_s = time.monotonic() - self._t0
        self.cpu_s = {k: self._cpu_or_last(k) for k in self.procs}
        self.cpu_s["bench_client"] = self._cpu(psutil.Process()) - self._self0


def vm_hwm_bytes(pid: int) -> int | None:
    """Peak RSS of a process over its life (VmHWM), Linux only."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# --------------------------------------------------------------------------- figures
def pct(values: list[float], q: float) -> float | None:
    """Percentile ``q`` (0..100), nearest-rank on sorted values; None when empty."""
    if not values:
        return None
    v = sorted(values)
    k = max(0, min(len(v) - 1, math.ceil(q / 100 * len(v)) - 1))
    return round(float(v[k]), 1)


def summary(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50": pct(values, 50), "p95": pct(values, 95), "p99": pct(values, 99),
            "max": round(max(values), 1) if values else None,
            "mean": round(sum(values) / len(values), 1) if values else None}


@dataclass
class RunFigures:
    mode: str
    intent_latency_ms: float
    rate: float
    duration_s: float
    users: int
    figures: dict = field(default_factory=dict)


def cache_figures(replies: dict[str, list[dict]]) -> dict[str, Any]:
    """The prediction cache's effect, from each reply's intent-stage hop (``chat-inbound``): a hop that called
    Redis looked the utterance up; one that called Redis and not the intent service was answered from the cache,
    or (``coalesced``, it waited for a concurrent look-up's call: ``intent_coalesced`` in its hop) by another
    message's model call. ``hits`` counts both; ``intent_calls`` counts hops that called the intent service."""
    lookups = hits = coalesced = intent_calls = messages = 0
    for msgs in replies.values():
        timings = json.loads(msgs[0].get("data") or "{}").get("timings", {})
        for hop in timings.get("hops", []):
            if hop.get("stage") != "chat-inbound":
                continue
            deps = hop.get("dependency_ms", {})
            messages += 1
            intent_calls += "intent" in deps
            lookups += "redis" in deps
            hits += "redis" in deps and "intent" not in deps
            coalesced += "intent_coalesced" in deps and "intent" not in deps
    return {"messages": messages, "lookups": lookups, "hits": hits, "coalesced": coalesced,
            "intent_calls": intent_calls,
            "hit_rate": round(hits / lookups, 3) if lookups else None,
            "intent_calls_saved": round(hits / messages, 3) if messages else None}


def flush_cache(stack: LocalStack) -> None:
    """Empty the stack's prediction cache (a measured run starts cold: its first occurrences are misses)."""
    import redis

    if "redis" in stack:
        client = redis.Redis.from_url(stack["redis"].url)
        client.flushdb()
        client.close()


@contextlib.contextmanager
def frozen_cache(stack: LocalStack, freeze: bool) -> Iterator[None]:
    """With ``freeze``, the stack's redis-server is stopped (SIGSTOP) for the ``with`` block and resumed after it:
    the kernel still accepts its connections, nothing answers (a hung cache). Without, nothing happens."""
    pid = stack["redis"].pid if freeze and "redis" in stack else None
    if pid:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        if pid:
            os.kill(pid, signal.SIGCONT)


def compute_figures(plan: list[Sent], replies: dict[str, list[dict]], counters: dict, sampler: ProcSampler,
                    runner_pid: int, stats: dict | None) -> dict[str, Any]:
    sent = [s for s in plan if s.attempts]
    accepted = [s for s in plan if s.accepted]
    intake = [s.latency_ms for s in sent if s.latency_ms is not None]
    e2e, overhead, intent_ms, cosmos_ms, sendbird_ms = [], [], [], [], []
    waits: dict[str, list[float]] = {}
    durations: dict[str, list[float]] = {}
    last_reply_ms = 0
    first_reply_ms = float("inf")
    got = lost = visible_dups = 0
    for s in accepted:
        msgs = replies.get(f"reply-{s.message_id}", [])
        if not msgs:
            lost += 1
            continue
        got += 1
        visible_dups += len(msgs) - 1
        m = msgs[0]
        last_reply_ms = max(last_reply_ms, m["created_at"])
        first_reply_ms = min(first_reply_ms, m["created_at"])
        total = m["created_at"] - s.sent_at_ms
        e2e.append(total)
        timings = json.loads(m.get("data") or "{}").get("timings", {})
        dep = {"intent": 0.0, "cosmos": 0.0, "sendbird": 0.0}
        for hop in timings.get("hops", []):
            waits.setdefault(hop["stage"], []).append(hop["queue_wait_ms"])
            durations.setdefault(hop["stage"], []).append(hop["duration_ms"])
            hop_deps = hop.get("dependency_ms", {})
            for k in dep:
                dep[k] += float(hop_deps.get(k, 0) or 0)
            # a coalesced look-up's wait for another message's model call is model time, not gateway overhead
            dep["intent"] += float(hop_deps.get("intent_coalesced", 0) or 0)
        if "reply_queue_wait_ms" in timings:
            waits.setdefault("chat-reply", []).append(timings["reply_queue_wait_ms"])
        intent_ms.append(dep["intent"])
        cosmos_ms.append(dep["cosmos"])
        sendbird_ms.append(dep["sendbird"])
        overhead.append(total - dep["intent"] - dep["sendbird"])
    first_sent = min((s.sent_at_ms for s in sent), default=0)
    last_sent = max((s.sent_at_ms for s in sent), default=0)
    span_s = max(1e-3, (last_reply_ms - first_sent) / 1000) if got else None
    host_cpu = sum(v for k, v in sampler.cpu_s.items() if k.startswith("runner"))
    worker_cpu = sum(v for k, v in sampler.cpu_s.items() if k.startswith("worker"))
    runner_cpu = host_cpu + worker_cpu
    return {
        "webhooks": len(plan), "sent": len(sent), "accepted": len(accepted),
        "offered_rate": round(len(sent) / max(1e-3, (last_sent - first_sent) / 1000), 1) if len(sent) > 1 else None,
        "send_lag_ms_p99": pct([s.sent_at_ms - s.scheduled_ms for s in sent if s.sent_at_ms], 99),
        "http_status": {str(k): sum(1 for s in sent if s.status == k) for k in sorted({s.status for s in sent},
                                                                                     key=str)},
        "intake_ms": summary(intake),
        "sendbird_timeouts": sum(s.timeouts for s in sent),
        "webhook_redeliveries": sum(s.attempts - 1 for s in sent),
        "webhooks_over_5s": sum(1 for s in sent if s.timeouts),
        "errors": sorted({s.error for s in sent if s.error})[:5],
        "replies": got, "lost": lost,
        "duplicate_replies_visible": visible_dups,
        "duplicate_sends_deduplicated": counters.get("deduplicated", 0),
        "sendbird_attempts": counters.get("attempts", 0),
        "e2e_ms": summary(e2e),
        "gateway_overhead_ms": summary(overhead),
        "intent_ms": summary(intent_ms), "cosmos_ms": summary(cosmos_ms), "sendbird_dep_ms": summary(sendbird_ms),
        "prediction_cache": cache_figures({k: v for k, v in replies.items() if v}),
        "queue_wait_ms": {k: summary(v) for k, v in waits.items()},
        "stage_duration_ms": {k: summary(v) for k, v in durations.items()},
        "throughput_msgs_s": round(got / span_s, 2) if span_s else 0.0,
        # the rate replies came out at (first to last reply): unlike throughput_msgs_s it does not count the first
        # reply's latency against the run (a 10 s run with a 2 s model caps throughput_msgs_s at 10/12 of the rate)
        "reply_rate_msgs_s": round((got - 1) / ((last_reply_ms - first_reply_ms) / 1000), 2)
        if got > 1 and last_reply_ms > first_reply_ms else None,
        "wall_s": round(sampler.wall_s, 2),
        "cpu_s": {k: round(v, 2) for k, v in sampler.cpu_s.items()},
        "runner_cpu_pct": round(100 * runner_cpu / max(1e-3, sampler.wall_s), 1),
        "runner_cpu_ms_per_msg": round(1000 * runner_cpu / got, 2) if got else None,
        # with worker processes: the host's part (HTTP, queue I/O, polling, leases: .NET on Azure) and the
        # workers' part (the functions: what runs in Python on Azure); without, all of it is "host"
        "host_cpu_ms_per_msg": round(1000 * host_cpu / got, 2) if got else None,
        "worker_cpu_ms_per_msg": round(1000 * worker_cpu / got, 2) if got and worker_cpu else None,
        "worker_cpu_pct": round(100 * worker_cpu / max(1e-3, sampler.wall_s), 1),
        "stack_cpu_ms_per_msg": round(1000 * sum(v for k, v in sampler.cpu_s.items() if k != "bench_client") / got, 2)
        if got else None,
        "runner_peak_rss_mb": round(sum(v for k, v in sampler.peak_rss.items()
                                        if k.startswith(("runner", "worker"))) / 2**20, 1),
        "runner_vmhwm_mb": round((vm_hwm_bytes(runner_pid) or 0) / 2**20, 1),
        "runner_stats": stats,
    }


def run_once(stack: LocalStack, runner: FunctionsRunner | list[FunctionsRunner], *, mode: str,
             intent_latency_ms: float, rate: float, duration: float, users: int, texts: list[str], tag: str,
             webhook_retries: int = 3, drain_timeout: float | None = None) -> dict[str, Any]:
    """One measured run against an already started stack + runner(s) (several: instances sharing the queues and
    the state, webhooks spread over them); returns its figures."""
    runners = [runner] if isinstance(runner, FunctionsRunner) else list(runner)
    runner = runners[0]
    control = stack["sendbird"].control
    control.reset()
    pids = {**{k: stack[k].pid for k in ("azurite", "cosmos", "sendbird", "intent")}}
    for i, r in enumerate(runners):
        pids[f"runner{i or ''}"] = r.pid
        pids.update({f"worker{i}-{j}": pid for j, pid in enumerate(worker_pids(r))})
    db_before = cosmos_counts(runners)
    with ProcSampler(pids) as sampler:
        plan = drive([r.base_url for r in runners], rate=rate, duration=duration, users=users, texts=texts,
                     tag=tag, webhook_retries=webhook_retries)
        expected = {f"reply-{s.message_id}" for s in plan if s.accepted}
        if drain_timeout is None:
            drain_timeout = 15 + 3 * intent_latency_ms / 1000 * max(1.0, rate * duration / 50)
        replies = collect_replies(control, expected, drain_timeout=min(drain_timeout, 120))
    try:
        stats = requests.get(runner.base_url + "/admin/localrunner/stats", timeout=5).json()
    except (requests.RequestException, ValueError):
        stats = None
    figures = compute_figures(plan, replies, control.counters(), sampler, runner.pid, _compact_stats(stats))
    figures["loadavg_1min_after"] = round(os.getloadavg()[0], 2)  # other jobs on the machine skew the figures
    figures["cosmos"] = cosmos_per_message(db_before, settled_cosmos_counts(runners), figures.get("replies") or 0)
    return {"mode": mode, "intent_latency_ms": intent_latency_ms, "rate": rate, "duration_s": duration,
            "users": users, "instances": len(runners), "worker_processes": len(worker_pids(runner)) or None,
            **figures}


def cosmos_counts(runners: list[FunctionsRunner]) -> dict[str, dict[str, int]]:
    """Cosmos DB operations the runners' processes counted at their client so far (container -> counts, plus
    ``all``; :class:`shared.clients.cosmos.CosmosCounters`)."""
    total: dict[str, dict[str, int]] = {"all": {}}
    for r in runners:
        where = r.env_overrides.get("COSMOS_OP_COUNTS_DIR")
        for container, counts in (load_counts(Path(where)) if where else {}).items():
            for scope in (container, "all"):
                into = total.setdefault(scope, {})
                for k, v in counts.items():
                    into[k] = into.get(k, 0) + v
    return total


def settled_cosmos_counts(runners: list[FunctionsRunner], timeout: float = 5.0) -> dict[str, dict[str, int]]:
    """:func:`cosmos_counts` once two reads 1 s apart agree (the last "sent" marks are written after the replies
    the stand-in recorded; each process writes its counters every 0.5 s), or after ``timeout`` seconds."""
    last, deadline = cosmos_counts(runners), time.monotonic() + timeout
    while time.monotonic() < deadline:
        time.sleep(1.0)
        now = cosmos_counts(runners)
        if now == last:
            break
        last = now
    return last


def cosmos_per_message(before: dict[str, dict[str, int]], after: dict[str, dict[str, int]],
                       replies: int) -> dict[str, dict[str, float]]:
    """Per reply: operations, writes, reads and body bytes (written = request bodies of the writes) on the user
    state container and on every container (``all``: also the response catalog's refresh and the review inbox)."""
    out: dict[str, dict[str, float]] = {}
    for scope in ("user_state", "all"):
        a, b = after.get(scope, {}), before.get(scope, {})
        delta = {k: a.get(k, 0) - b.get(k, 0) for k in a}
        out[scope] = {k: round(v / replies, 2) if replies else 0.0 for k, v in sorted(delta.items())}
        out[scope]["total_operations"] = delta.get("operations", 0)
    return out


def _compact_stats(stats: dict | None) -> dict | None:
    if not stats:
        return None
    fns = {k: {c: v[c] for c in ("invocations", "failures", "timeouts", "poisoned") if v.get(c)}
           for k, v in stats.get("functions", {}).items()}
    return {"functions": {k: v for k, v in fns.items() if v}}
