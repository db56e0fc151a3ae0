"""``make run`` (``python -m tools.demo run``) stops on SIGTERM and SIGINT and leaves nothing behind.

Each test starts the real stack on free ports as a subprocess, signals it, and then checks that the
process exited in time with status 0, that every port it printed refuses connections and that none
of its services (nor anything they started) is alive. Every process of one run carries a unique
environment variable, which finds them wherever they were re-parented to. Readiness is polled with
deadlines, never slept for.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.stack,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc; parent-death signal is Linux only"),
]

ROOT = Path(__file__).resolve().parent.parent
TOKEN_VAR = "DEMO_SIGNALS_TEST_RUN"
READY_TIMEOUT = 180.0  # start-up on 2 busy shared cores; normally about 5 s
EXIT_TIMEOUT = 20.0  # stopping normally takes about 1 s; Service.stop escalates to SIGKILL after 10 s
GONE_TIMEOUT = 20.0  # services ending on their own after their parent was killed
SERVICE_LINE = re.compile(r"^\s+(\w+)\s+port\s+(\d+)\s+pid\s+(\d+)\s+log\s")


# --------------------------------------------------------------------------- /proc helpers
def _stat(pid: int) -> tuple[str, int] | None:
    """(state, start time in clock ticks) of a process, or None when there is no such process."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = text[text.rindex(")") + 2:].split()  # after "pid (comm) "
    return fields[0], int(fields[19])


def _alive(pid: int, started: int | None = None) -> bool:
    """Running (not a zombie), and the same process when its start time is given (no PID reuse)."""
    st = _stat(pid)
    return st is not None and st[0] not in ("Z", "X") and (started is None or st[1] == started)


def _processes_with(token: str) -> list[int]:
    """PIDs of live processes whose environment has TOKEN_VAR=token (zombies have no environment)."""
    needle = f"{TOKEN_VAR}={token}".encode() + b"\0"
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes()
        except OSError:  # gone meanwhile, or another user's
            continue
        if (b"\0" + env).find(b"\0" + needle) >= 0 and _alive(int(entry)):
            found.append(int(entry))
    return found


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _port_refuses(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(2.0)
        try:
            sock.connect(("127.0.0.1", port))
        except ConnectionRefusedError:
            return True
        except OSError:
            return False
        return False


def _poll(predicate, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


# --------------------------------------------------------------------------- the demo under test
class DemoRun:
    """``python -m tools.demo run --free-ports`` as a subprocess, its output collected by a thread."""

    def __init__(self, ignore_sigint: bool = False) -> None:
        self.token = uuid.uuid4().hex
        env = dict(os.environ, PYTHONUNBUFFERED="1", **{TOKEN_VAR: self.token})

        def preexec() -> None:
            # What a non-interactive shell does to a background job ("make run &"): SIGINT ignored,
            # inherited through exec, so Python installs no KeyboardInterrupt handler.
            signal.signal(signal.SIGINT, signal.SIG_IGN)

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tools.demo", "run", "--free-ports"], cwd=ROOT, env=env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True, encoding="utf-8", errors="replace",
            start_new_session=True,  # the test's own terminal signals do not reach it
            preexec_fn=preexec if ignore_sigint else None,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.services: dict[str, dict] = {}  # key -> {port, pid, started}

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def wait_ready(self) -> None:
        ok = _poll(lambda: self.proc.poll() is not None or any("stops everything" in ln for ln in self.lines),
                   READY_TIMEOUT, 0.1)
        assert ok and self.proc.poll() is None, f"demo not ready (exit {self.proc.poll()}):\n{self.output}"
        for line in self.lines:
            m = SERVICE_LINE.match(line)
            if m:
                pid = int(m.group(3))
                st = _stat(pid)
                assert st is not None, f"{m.group(1)} (pid {pid}) is not running:\n{self.output}"
                self.services[m.group(1)] = {"port": int(m.group(2)), "pid": pid, "started": st[1]}
        assert set(self.services) == {"azurite", "azurite_blob", "cosmos", "sendbird", "intent", "telemetry",
                                      "redis", "functions", "console"}, self.output
        assert any(ln.startswith("Prediction cache: on (INTENT_CACHE_URL=redis://127.0.0.1:") for ln in self.lines)
        # what was printed is what runs: the demo's children are exactly the nine services
        assert sorted(_children(self.proc.pid)) == sorted(s["pid"] for s in self.services.values())

    def signal_and_wait(self, sig: int) -> float:
        t0 = time.monotonic()
        self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=EXIT_TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {EXIT_TIMEOUT:.0f} s after {signal.Signals(sig).name}:\n{self.output}")
        self._reader.join(timeout=5)
        return time.monotonic() - t0

    def assert_everything_gone(self, timeout: float = 0.0) -> None:
        """Every printed service PID dead, every printed port refusing, no process of this run alive.

        ``timeout`` > 0 polls (services ending on their own); 0 checks once (the demo stopped them
        before it exited, so there is nothing to wait for)."""
        def leftovers() -> list[str]:
            out = [f"{k} pid {s['pid']}" for k, s in self.services.items() if _alive(s["pid"], s["started"])]
            out += [f"{k} port {s['port']}" for k, s in self.services.items() if not _port_refuses(s["port"])]
            out += [f"pid {p} with the run's environment" for p in _processes_with(self.token)]
            return out

        _poll(lambda: not leftovers(), timeout, 0.1)
        assert not leftovers(), f"left behind: {leftovers()}\n{self.output}"

    def cleanup(self) -> None:
        """After a failure: stop whatever of this run is still alive, by PID (process group)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        for pid in _processes_with(self.token):
            try:
                os.killpg(pid, signal.SIGKILL)
            except OSError:
                pass
        if self.proc.stdout:
            self.proc.stdout.close()


@pytest.fixture
def demo_run():
    runs: list[DemoRun] = []

    def start(**kwargs) -> DemoRun:
        run = DemoRun(**kwargs)
        runs.append(run)
        return run

    yield start
    for run in runs:
        run.cleanup()


# --------------------------------------------------------------------------- tests
def test_sigterm_stops_run_and_every_service(demo_run):
    run = demo_run()
    run.wait_ready()
    elapsed = run.signal_and_wait(signal.SIGTERM)
    assert run.proc.returncode == 0, run.output
    assert "SIGTERM received: stopping the local stack" in run.output
    assert run.lines[-1] == "local stack stopped"
    run.assert_everything_gone()
    assert elapsed < EXIT_TIMEOUT


def test_sigint_stops_run_started_as_background_job(demo_run):
    # precondition: the preexec really hands an ignored SIGINT to the Python it starts
    probe = subprocess.run(
        [sys.executable, "-c", "import signal; print(signal.getsignal(signal.SIGINT) is signal.SIG_IGN)"],
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN), capture_output=True, text=True, timeout=30)
    assert probe.stdout.strip() == "True"

    run = demo_run(ignore_sigint=True)
    run.wait_ready()
    run.signal_and_wait(signal.SIGINT)
    assert run.proc.returncode == 0, run.output
    assert "SIGINT received: stopping the local stack" in run.output
    assert run.lines[-1] == "local stack stopped"
    run.assert_everything_gone()


def test_sigterm_while_starting_stops_what_was_started(demo_run):
    run = demo_run()
    # signal once the first services are spawned, long before the stack is ready
    assert _poll(lambda: run.proc.poll() is not None or _children(run.proc.pid), READY_TIMEOUT), run.output
    assert run.proc.poll() is None, run.output
    started = {pid: _stat(pid) for pid in _children(run.proc.pid)}
    run.signal_and_wait(signal.SIGTERM)
    assert run.proc.returncode == 0, run.output
    # (the second form only if this test was descheduled until the stack was ready)
    assert ("SIGTERM received while starting: local stack stopped" in run.output
            or "SIGTERM received: stopping the local stack" in run.output), run.output
    assert not any(st and _alive(pid, st[1]) for pid, st in started.items())
    assert _processes_with(run.token) == [], run.output


def test_services_die_with_a_hard_killed_parent(demo_run):
    # SIGKILL cannot be handled: the services' parent-death signal (PR_SET_PDEATHSIG) stops them
    run = demo_run()
    run.wait_ready()
    run.signal_and_wait(signal.SIGKILL)
    assert run.proc.returncode == -signal.SIGKILL
    run.assert_everything_gone(timeout=GONE_TIMEOUT)


def test_stop_ends_the_whole_process_group(tmp_path):
    # A service whose own child ignores SIGTERM and is not stopped by it: stop() must not leave it.
    from devstack.stack import Service, _http_status

    pid_file = tmp_path / "grandchild.pid"

    class _WithChild(Service):
        name = "with-child"

        def command(self):
            code = ("import http.server, pathlib, subprocess, sys\n"
                    "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
                    "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)'])\n"
                    f"pathlib.Path({str(pid_file)!r}).write_text(str(child.pid))\n"
                    f"http.server.HTTPServer(('127.0.0.1', {self.port}), http.server.SimpleHTTPRequestHandler)"
                    ".serve_forever()\n")
            return [sys.executable, "-c", code]

        def is_ready(self):
            return pid_file.exists() and _http_status(f"http://127.0.0.1:{self.port}/") is not None

    svc = _WithChild(0, log_dir=tmp_path).start()
    grandchild = int(pid_file.read_text())
    started = _stat(grandchild)[1]
    try:
        t0 = time.monotonic()
        svc.stop(timeout=5)
        assert time.monotonic() - t0 < 3
        assert _poll(lambda: not _alive(grandchild, started), 5.0), "the service's child outlived stop()"
        assert _port_refuses(svc.port)
    finally:
        if _alive(grandchild, started):
            os.kill(grandchild, signal.SIGKILL)
