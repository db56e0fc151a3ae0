"""The suite's local stack: the devstack services, chaos proxies in front of the intent service and the
Cosmos DB stand-in, and one or more functions runners (instances) that can be killed (SIGKILL) and restarted on
the same port."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import requests

from devstack.stack import FunctionsRunner, Service
from faults.plan import FaultPlan
from tools.gateway_stack import ROOT, StackOptions, build_stack, gateway_env

log = logging.getLogger("faults")
DATABASE = "faults"


class FaultStack:
    """The services plus ``plan.instances`` functions runners (instances of the app) on the same queues and state.

    Several instances compete for the same queue messages, as Azure's instances do; an output-binding write wakes
    only the writing instance's listener (each runner is its own host), the others find the message at their next
    poll. A killed instance's in-flight messages reappear after the lease (``plan.lease_seconds``).
    """

    def __init__(self, plan: FaultPlan, log_dir: Path):
        self.plan = plan
        self.log_dir = Path(log_dir)
        self.services: dict[str, Service] = {}
        #: instance index -> its runner (None: killed and not restarted)
        self.runners: list[FunctionsRunner | None] = []
        self.ports: list[int] = []
        self.env: dict[str, str] = {}
        self.kills: list[dict] = []
        self.stats_before_kill: list[dict] = []
        self._lock = threading.Lock()

    # ---- lifecycle
    def start(self) -> "FaultStack":
        p = self.plan
        try:
            self._stack = build_stack(StackOptions(free_ports=True, log_dir=self.log_dir, app_root=None,
                                                   chaos_seed=p.seed)).start()
            self.services.update(self._stack.services)
            self.env = gateway_env(self._stack, {
                "COSMOS_DATABASE": DATABASE,
                "INTENT_TIMEOUT_SECONDS": str(p.intent_timeout_seconds),
                # explicit and short: localrunner's default lease is the host's 10 minutes, which would hold
                # back every chaos redelivery and every message in flight at a SIGKILL for 10 minutes
                "LOCALRUNNER_LEASE_SECONDS": str(p.lease_seconds),
                "LOCALRUNNER_CHAOS_SKIP_DELETE_RATE": str(p.skip_delete_rate),
                **{k: str(v) for k, v in p.extra_env.items()},
            })
            for i in range(max(1, p.instances)):
                self.runners.append(None)
                self.ports.append(0)
                self.start_runner(i)
        except BaseException:
            self.stop()
            raise
        return self

    def start_runner(self, index: int = 0) -> FunctionsRunner:
        """Start instance ``index`` (again: on its previous port, appending to the same log)."""
        runner = FunctionsRunner(ROOT, self.ports[index], self.env, log_dir=self.log_dir, startup_timeout=60).start()
        with self._lock:
            self.runners[index] = runner
            self.ports[index] = runner.port
        return runner

    def stop(self) -> None:
        for runner in self.runners:
            if runner is not None:
                runner.stop(timeout=10)
        for key in reversed(list(self.services)):
            try:
                self.services[key].stop(timeout=10)
            except Exception:  # keep stopping the others
                log.exception("stopping %s failed", key)

    def __enter__(self) -> "FaultStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- shortcuts
    def __getitem__(self, key: str) -> Service:
        return self.services[key]

    @property
    def runner(self) -> FunctionsRunner | None:
        """The first live instance."""
        return next((r for r in self.runners if r is not None), None)

    @property
    def base_url(self) -> str:
        """The first instance's URL (its port is kept across restarts)."""
        return f"http://127.0.0.1:{self.ports[0]}"

    def base_urls(self) -> list[str]:
        """The live instances' URLs: where the platform's front end sends webhooks now."""
        with self._lock:
            return [f"http://127.0.0.1:{port}" for r, port in zip(self.runners, self.ports, strict=True)
                    if r is not None]

    @property
    def runner_log(self) -> Path:
        return self.runner_logs[0]

    @property
    def runner_logs(self) -> list[Path]:
        """One log per instance (a restarted instance appends to its log)."""
        return [self.log_dir / f"functions-runner-{port}.log" for port in self.ports]

    def runner_stats(self, timeout: float = 2.0) -> dict | None:
        """The live instances' ``/admin/localrunner/stats`` function counters, summed (None: none answered)."""
        total: dict[str, dict[str, int]] = {}
        answered = False
        for url in self.base_urls():
            try:
                stats = requests.get(url + "/admin/localrunner/stats", timeout=timeout).json()
            except (requests.RequestException, ValueError):
                continue
            answered = True
            for name, counters in stats.get("functions", {}).items():
                mine = total.setdefault(name, {})
                for k, v in counters.items():
                    mine[k] = mine.get(k, 0) + v
        return {"functions": total} if answered else None

    def _instance_stats(self, index: int, timeout: float) -> dict | None:
        try:
            return requests.get(f"http://127.0.0.1:{self.ports[index]}/admin/localrunner/stats",
                                timeout=timeout).json()
        except (requests.RequestException, ValueError):
            return None

    # ---- the worker killed mid-message
    def kill_runner(self, index: int = 0, restart: bool = True) -> dict:
        """SIGKILL instance ``index`` by PID (its in-flight messages stay hidden until their lease lapses); with
        ``restart`` start a new one on the same port with the same settings, else leave the others to take over
        (and the front end to stop sending it webhooks). Returns what happened (timings, in-flight invocations)."""
        old = self.runners[index]
        if old is None:
            raise RuntimeError(f"instance {index} is not running")
        stats = self._instance_stats(index, timeout=1.0)
        if stats:
            self.stats_before_kill.append(stats)
        inflight = None
        if stats:
            inflight = sum(f["invocations"] - f["successes"] - f["failures"] for f in stats["functions"].values())
        t0 = time.monotonic()
        pid = old.pid
        with self._lock:
            self.runners[index] = None  # the front end stops routing to it
        os.kill(pid, signal.SIGKILL)
        old.process.wait(timeout=10)
        old.stop()  # reaps, closes the log
        killed = time.monotonic()
        event = {"instance": index, "in_flight_invocations": inflight, "at": time.time(), "pid": pid,
                 "restarted": restart}
        if restart:
            new = self.start_runner(index)
            event.update(down_s=round(time.monotonic() - killed, 2), new_pid=new.pid)
            log.warning("runner %d killed (pid %s, %s invocations in flight); new runner pid %s ready after %.1f s",
                        index, pid, inflight, new.pid, time.monotonic() - t0)
        else:
            log.warning("runner %d killed (pid %s, %s invocations in flight); %d instance(s) left", index, pid,
                        inflight, len(self.base_urls()))
        self.kills.append(event)
        return event

    def kill_and_restart_runner(self) -> dict:
        """:meth:`kill_runner` of instance 0 with a restart (the single-instance scenario)."""
        return self.kill_runner(0, restart=True)
