"""The suite's local stack: the devstack services, chaos proxies in front of the intent service and the
Cosmos DB stand-in, and a functions runner that can be killed (SIGKILL) and restarted on the same port."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import requests

from devstack.stack import FunctionsRunner, Service
from faults.plan import FaultPlan
from tools.gateway_stack import ROOT, StackOptions, build_stack, gateway_env

log = logging.getLogger("faults")
DATABASE = "faults"


class FaultStack:
    def __init__(self, plan: FaultPlan, log_dir: Path):
        self.plan = plan
        self.log_dir = Path(log_dir)
        self.services: dict[str, Service] = {}
        self.runner: FunctionsRunner | None = None
        self.runner_port: int | None = None
        self.env: dict[str, str] = {}
        self.kills: list[dict] = []
        self.stats_before_kill: list[dict] = []

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
            self.start_runner()
        except BaseException:
            self.stop()
            raise
        return self

    def start_runner(self) -> FunctionsRunner:
        port = self.runner_port or 0
        self.runner = FunctionsRunner(ROOT, port, self.env, log_dir=self.log_dir, startup_timeout=60).start()
        self.runner_port = self.runner.port
        return self.runner

    def stop(self) -> None:
        if self.runner is not None:
            self.runner.stop(timeout=10)
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
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.runner_port}"

    @property
    def runner_log(self) -> Path:
        return self.log_dir / f"functions-runner-{self.runner_port}.log"

    def runner_stats(self, timeout: float = 2.0) -> dict | None:
        try:
            return requests.get(self.base_url + "/admin/localrunner/stats", timeout=timeout).json()
        except (requests.RequestException, ValueError):
            return None

    # ---- the worker killed mid-message
    def kill_and_restart_runner(self) -> dict:
        """SIGKILL the runner by PID (in-flight messages stay hidden until their lease lapses), start a new one
        on the same port with the same settings. Returns what happened (timings, in-flight invocations)."""
        old = self.runner
        stats = self.runner_stats(timeout=1.0)
        if stats:
            self.stats_before_kill.append(stats)
        inflight = None
        if stats:
            inflight = sum(f["invocations"] - f["successes"] - f["failures"] for f in stats["functions"].values())
        t0 = time.monotonic()
        pid = old.pid
        os.kill(pid, signal.SIGKILL)
        old.process.wait(timeout=10)
        old.stop()  # reaps, closes the log
        killed = time.monotonic()
        self.start_runner()
        event = {"in_flight_invocations": inflight, "down_s": round(time.monotonic() - killed, 2),
                 "at": time.time(), "pid": pid, "new_pid": self.runner.pid}
        self.kills.append(event)
        log.warning("runner killed (pid %s, %s invocations in flight); new runner pid %s ready after %.1f s",
                    pid, inflight, self.runner.pid, time.monotonic() - t0)
        return event
