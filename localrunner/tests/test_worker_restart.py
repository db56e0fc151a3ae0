"""functionTimeout restarts the worker process: every invocation in flight in it fails (restart_app/, 3 s timeout)."""
import logging
import os
import threading
import time

import requests

from localrunner.tests.queue_helpers import restart_app_env as _env, send as _send, texts as _texts
from localrunner import Runner

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "restart_app")


def _get_in_thread(url, results, key):
    def run():
        try:
            results[key] = requests.get(url, timeout=30)
        except Exception as exc:  # pragma: no cover - reported by the assertion below
            results[key] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_timeout_fails_every_invocation_in_flight_in_the_worker(azurite, helpers, caplog):
    caplog.set_level(logging.INFO)
    env = _env(azurite, AzureFunctionsJobHost__extensions__queues__maxDequeueCount="1")
    with Runner(APP, port=0, env_overrides=env) as r:
        mod = r.app_module
        _send(azurite, env["Q_WORK"], "slow:4.5")  # exceeds the 3 s functionTimeout
        helpers.wait_for(lambda: ("slow:4.5", 1) in mod.STARTED, 10, what="slow started")
        results = {}
        threads = [_get_in_thread(r.url("sleep/5"), results, "sync"),
                   _get_in_thread(r.url("async-sleep/5"), results, "async")]
        helpers.wait_for(lambda: r.function_stats("http_sleep")["invocations"] == 1
                         and r.function_stats("http_async_sleep")["invocations"] == 1, 5, what="http in flight")
        for t in threads:
            t.join(15)
        # both HTTP invocations were in flight when the queue invocation timed out: both failed with 500, at the
        # restart (about 3 s after 'slow' started), not after their own 5 s
        assert results["sync"].status_code == 500 and results["async"].status_code == 500
        assert r.worker_restarts == 1 and r.stats()["worker_restarts"] == 1
        for name in ("http_sleep", "http_async_sleep"):
            st = r.function_stats(name)
            assert (st["failures"], st["timeouts"], st["successes"]) == (1, 0, 0), name
        st = r.function_stats("work")
        assert (st["failures"], st["timeouts"]) == (1, 1)
        # the timed-out message was on its last attempt (maxDequeueCount 1): the host copies the raw body to the
        # poison queue itself; the app never got to write anything
        helpers.wait_for(lambda: r.function_stats("work")["poisoned"] == 1, 10, what="poisoned")
        assert _texts(azurite, env["Q_WORK"] + "-poison") == ["slow:4.5"]
        assert _texts(azurite, env["Q_WORK"]) == []
        # the new worker serves at once
        assert requests.get(r.url("quick"), timeout=5).text == "ok"
        # the abandoned sync threads run to their end, but nothing they set is sent
        helpers.wait_for(lambda: ("slow:4.5", 1) in mod.FINISHED and "sync" in mod.HTTP_FINISHED, 10,
                         what="abandoned threads to finish")
        helpers.wait_for(lambda: r.orphans_running == 0, 5, what="orphans gone")
        time.sleep(0.3)
        assert _texts(azurite, env["Q_DONE"]) == []
        assert "async" not in mod.HTTP_FINISHED  # async invocations are cancelled with their worker
        assert r.function_stats("work")["successes"] == 0
    log = caplog.text
    assert "A function timeout has occurred. Restarting worker process executing invocationId" in log
    assert "worker process restarted" in log
    assert "Restart of language worker process(es) completed." in log
    assert "finished after its worker process was restarted; its result and outputs are discarded" in log


def test_messages_in_flight_are_retried_and_late_outputs_never_sent(azurite, helpers):
    env = _env(azurite)  # maxDequeueCount 2 (restart_app/host.json)
    with Runner(APP, port=0, env_overrides=env) as r:
        mod = r.app_module
        _send(azurite, env["Q_WORK"], "slow:4.5")
        helpers.wait_for(lambda: ("slow:4.5", 1) in mod.STARTED, 10, what="slow started")
        _send(azurite, env["Q_WORK"], "victim:4")  # would finish in time on its own (its timeout: 3 s later)
        helpers.wait_for(lambda: ("victim:4", 1) in mod.STARTED, 10, what="victim started")
        # both fail at the restart, become visible again (visibilityTimeout 0) and succeed on attempt 2
        helpers.wait_for(lambda: _texts(azurite, env["Q_DONE"]) == ["slow#2", "victim#2"], 15, what="retries")
        # the first attempts' threads still finish later and set their outputs: never sent, message not deleted
        helpers.wait_for(lambda: {("slow:4.5", 1), ("victim:4", 1)} <= set(mod.FINISHED), 10,
                         what="abandoned attempts to finish")
        time.sleep(0.5)
        assert _texts(azurite, env["Q_DONE"]) == ["slow#2", "victim#2"]
        st = r.function_stats("work")
        assert (st["invocations"], st["successes"], st["failures"], st["timeouts"], st["poisoned"]) == (4, 2, 2, 1, 0)
        assert r.worker_restarts == 1
        assert _texts(azurite, env["Q_WORK"] + "-poison") == []


def test_no_restart_when_everything_finishes_in_time(azurite, helpers):
    env = _env(azurite)
    with Runner(APP, port=0, env_overrides=env) as r:
        _send(azurite, env["Q_WORK"], "fine:0.2")
        assert requests.get(r.url("sleep/0.5"), timeout=10).text == "slept"
        helpers.wait_for(lambda: _texts(azurite, env["Q_DONE"]) == ["fine#1"], 10, what="output")
        assert r.worker_restarts == 0


def test_cli_exits_promptly_with_an_abandoned_thread_still_running(azurite):
    # the timed-out function's thread sleeps 30 s and cannot be killed; SIGTERM must not wait for it
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, **_env(azurite))
    p = subprocess.Popen([sys.executable, "-m", "localrunner", "--app-root", APP, "--port", "0"],
                         cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        base = p.stdout.readline().strip().rsplit(" ", 1)[1]
        assert requests.get(base + "/api/sleep/30", timeout=15).status_code == 500  # timed out after 3 s
        t0 = time.monotonic()
        p.terminate()
        assert p.wait(15) == 0
        assert time.monotonic() - t0 < 8
        err = p.stderr.read()
        assert "worker process restarted" in err and "localrunner stopped" in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
