"""Process management (devstack.stack): Azurite, the SendBird stand-in process, failures, LocalStack."""

from __future__ import annotations

import os
import socket
import sys
import time

import pytest
import requests
from azure.storage.queue import QueueClient, QueueServiceClient

from devstack import stack
from devstack.stack import (
    Azurite,
    CosmosStandIn,
    FunctionsRunner,
    IntentService,
    LocalStack,
    SendBirdStandIn,
    Service,
    ServiceStartError,
    port_is_free,
)

pytestmark = pytest.mark.stack  # starts Azurite / stand-ins as subprocesses


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still "exists"; Popen.wait() in stop() reaps it, so this is reliable here
    return True


def test_azurite_start_queue_round_trip_stop(node_modules, log_dir):
    az = Azurite(0, in_memory=True, log_dir=log_dir)
    with az:
        assert az.running and az.pid
        assert not port_is_free(az.port)
        assert "127.0.0.1" in az.connection_string and str(az.port) in az.connection_string
        q = QueueClient.from_connection_string(az.connection_string, "round-trip")
        q.create_queue()
        q.send_message("hello azurite")
        msgs = list(q.receive_messages(visibility_timeout=5))
        assert [m.content for m in msgs] == ["hello azurite"]
        assert msgs[0].dequeue_count == 1
        q.delete_message(msgs[0])
        assert list(q.receive_messages()) == []
        pid = az.pid
    assert not az.running
    assert not _pid_alive(pid)
    assert port_is_free(az.port)
    assert az.log_path.exists()


def test_azurite_in_memory_data_is_gone_after_restart(node_modules, log_dir):
    port = stack.free_port()
    with Azurite(port, log_dir=log_dir) as az:
        QueueServiceClient.from_connection_string(az.connection_string).create_queue("ephemeral")
    with Azurite(port, log_dir=log_dir) as az:
        names = [q.name for q in QueueServiceClient.from_connection_string(az.connection_string).list_queues()]
        assert "ephemeral" not in names


def test_port_in_use_fails_fast(log_dir):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(ServiceStartError, match="already in use"):
            SendBirdStandIn(port, log_dir=log_dir).start()
        assert time.monotonic() - t0 < 2


class _Crashing(Service):
    name = "crashing"

    def command(self):
        return [sys.executable, "-c", "import sys; print('boom: missing config XYZ'); sys.exit(3)"]

    def is_ready(self):
        return False


class _NeverReady(Service):
    name = "never-ready"

    def command(self):
        return [sys.executable, "-c", "import time; print('still booting', flush=True); time.sleep(60)"]

    def is_ready(self):
        return False


def test_early_exit_error_has_log_tail(log_dir):
    svc = _Crashing(0, log_dir=log_dir, startup_timeout=10)
    with pytest.raises(ServiceStartError) as err:
        svc.start()
    text = str(err.value)
    assert "exited with code 3" in text
    assert "boom: missing config XYZ" in text
    assert not svc.running


def test_timeout_error_has_log_tail_and_kills_process(log_dir):
    svc = _NeverReady(0, log_dir=log_dir, startup_timeout=1.0)
    with pytest.raises(ServiceStartError) as err:
        svc.start()
    assert "not ready" in str(err.value) and "still booting" in str(err.value)
    assert svc.process is None  # stopped


def test_stop_kills_when_terminate_is_ignored(log_dir):
    class _Stubborn(Service):
        name = "stubborn"

        def command(self):
            code = ("import signal, time, http.server, sys\n"
                    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                    f"http.server.HTTPServer(('127.0.0.1', {self.port}), http.server.SimpleHTTPRequestHandler)"
                    ".serve_forever()\n")
            return [sys.executable, "-c", code]

        def is_ready(self):
            return stack._http_status(f"http://127.0.0.1:{self.port}/") is not None

    svc = _Stubborn(0, log_dir=log_dir).start()
    pid = svc.pid
    t0 = time.monotonic()
    code = svc.stop(timeout=0.5)
    assert code == -9
    assert time.monotonic() - t0 < 3
    assert not _pid_alive(pid)


def test_sendbird_standin_process_and_control_client(log_dir):
    with SendBirdStandIn(0, api_token="proc-token", bot_user_id="proc_bot", log_dir=log_dir) as sb:
        assert sb.control.health()["status"] == "ok"
        assert sb.send_url == f"{sb.base_url}/v3/bots/proc_bot/send"
        sb.control.add_faults([{"status": 429, "retry_after": 2}])
        r = requests.post(sb.send_url, json={"message": "x", "channel_url": "c"},
                          headers={"Api-Token": "proc-token"}, timeout=5)
        assert r.status_code == 429 and r.headers["X-RateLimit-RetryAfter"] == "2"
        r = requests.post(sb.send_url, json={"message": "x", "channel_url": "c"},
                          headers={"Api-Token": "proc-token"}, timeout=5)
        assert r.status_code == 200
        assert [m["message"] for m in sb.control.wait_for_messages(1, timeout=2)] == ["x"]
        proc = sb.process
    assert proc.returncode == 0  # clean exit on SIGTERM


def test_command_lines_follow_the_contracts(tmp_path):
    intent = IntentService("models/m.joblib", 0, key="k1", log_dir=tmp_path)
    cmd = intent.command()
    assert cmd[0] == sys.executable
    assert cmd[1:] == ["-m", "intent_service", "serve", "--model", "models/m.joblib",
                       "--host", "127.0.0.1", "--port", str(intent.port), "--key", "k1"]
    assert "--key" not in IntentService("m", 0, log_dir=tmp_path).command()

    runner = FunctionsRunner("functions", 0, {"X": "1"}, log_dir=tmp_path)
    assert runner.command() == [sys.executable, "-m", "localrunner", "--app-root", "functions",
                                "--port", str(runner.port)]
    assert runner.environment()["X"] == "1"
    assert runner.cwd() == stack.REPO_ROOT

    az = Azurite(0, log_dir=tmp_path).command()
    for flag in ("--skipApiVersionCheck", "--queueHost", "--inMemoryPersistence"):
        assert flag in az
    assert Azurite().port == 10001 and CosmosStandIn().port == 8081 and SendBirdStandIn().port == 8090
    assert IntentService("m").port == 5088 and FunctionsRunner("functions").port == 7071


def test_local_stack_starts_in_parallel_and_stops_in_reverse(node_modules, log_dir, monkeypatch):
    order = []
    orig_stop = Service.stop

    def recording_stop(self, timeout=10.0):
        if self.process is not None:
            order.append(self.name)
        return orig_stop(self, timeout)

    monkeypatch.setattr(Service, "stop", recording_stop)
    ls = LocalStack.default(ports={"azurite": 0, "cosmos": 0, "sendbird": 0}, log_dir=log_dir)
    assert list(ls.services) == ["azurite", "cosmos", "sendbird"]
    t0 = time.monotonic()
    with ls:
        elapsed = time.monotonic() - t0
        assert all(s.running for s in ls.services.values())
        assert ls["sendbird"].control.health()["status"] == "ok"
        QueueServiceClient.from_connection_string(ls["azurite"].connection_string).create_queue("stackq")
        db = ls["cosmos"].client().create_database_if_not_exists("stackdb")
        assert db.read()["id"] == "stackdb"
        desc = ls.describe()
        assert desc["cosmos"]["pid"] == ls["cosmos"].pid
    assert order == ["sendbird-standin", "cosmos-standin", "azurite-queue"]
    assert not any(s.running for s in ls.services.values())
    assert elapsed < 15


def test_local_stack_failure_stops_the_started_ones(log_dir):
    ok = SendBirdStandIn(0, log_dir=log_dir)
    bad = _Crashing(0, log_dir=log_dir)
    ls = LocalStack({"sendbird": ok, "bad": bad})
    with pytest.raises(ServiceStartError, match="boom"):
        ls.start()
    assert not ok.running and not bad.running
