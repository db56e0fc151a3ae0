"""FUNCTIONS_WORKER_PROCESS_COUNT: the runner's process is the host, invocations run in worker processes
(restart_app/, functionTimeout 3 s). See workers.py for the host behaviours reproduced."""
import os
import threading
import time

import pytest
import requests

from localrunner.tests.queue_helpers import restart_app_env as _env, send as _send, texts as _texts
from localrunner import ConfigError, Runner

APP = os.path.join(os.path.dirname(os.path.abspath(__file__)), "restart_app")


def _pids(r, n=4):
    return [int(requests.get(r.url("pid"), timeout=10).text) for _ in range(n)]


def test_invocations_go_round_robin_to_the_worker_processes(azurite, helpers):
    env = _env(azurite, FUNCTIONS_WORKER_PROCESS_COUNT="2")
    with Runner(APP, port=0, env_overrides=env) as r:
        assert r.worker_processes == 2
        pids = _pids(r)
        workers = {w["pid"] for w in r.stats()["worker_processes"]}
        assert len(workers) == 2 and set(pids) == workers and os.getpid() not in workers
        assert pids[0] != pids[1] and pids[0] == pids[2] and pids[1] == pids[3]  # round-robin
        # queue trigger and output binding through a worker; the host writes the output
        _send(azurite, env["Q_WORK"], "fine:0")
        helpers.wait_for(lambda: _texts(azurite, env["Q_DONE"]) == ["fine#1"], 10, what="output")
        assert r.function_stats("work")["successes"] == 1


def test_a_timeout_restarts_only_the_worker_that_ran_it(azurite, helpers):
    env = _env(azurite, FUNCTIONS_WORKER_PROCESS_COUNT="2",
               AzureFunctionsJobHost__extensions__queues__maxDequeueCount="1")
    with Runner(APP, port=0, env_overrides=env) as r:
        first, second = _pids(r, 2)  # the next dispatch goes to `first` again
        _send(azurite, env["Q_WORK"], "slow:4.5")  # on `first`; exceeds the 3 s functionTimeout
        helpers.wait_for(lambda: r.function_stats("work")["invocations"] == 1, 10, what="slow started")
        results = {}

        def get(key, seconds):
            results[key] = requests.get(r.url(f"pid-sleep/{seconds}"), timeout=30)

        # 1.5 s into the slow one (its timeout: 3 s): one call per worker. The one on `second` ends 0.5 s after
        # the restart; the one on `first` would sleep 10 s but is in flight there when the restart comes (its
        # own timeout would only come 1.5 s later)
        time.sleep(1.5)
        t1 = threading.Thread(target=get, args=("on_second", 2))
        t1.start()
        helpers.wait_for(lambda: r.function_stats("pid_sleep")["invocations"] == 1, 5, what="1st http")
        t2 = threading.Thread(target=get, args=("on_first", 10))
        t2.start()
        helpers.wait_for(lambda: r.function_stats("pid_sleep")["invocations"] == 2, 5, what="2nd http")
        t1.join(15)
        t2.join(15)
        # the invocation in flight in the restarted worker failed; the other worker's one finished normally
        assert results["on_first"].status_code == 500
        assert results["on_second"].status_code == 200 and int(results["on_second"].text) == second
        assert r.worker_restarts == 1
        st = r.function_stats("work")
        assert (st["failures"], st["timeouts"]) == (1, 1)
        helpers.wait_for(lambda: r.function_stats("work")["poisoned"] == 1, 10, what="poisoned")
        assert _texts(azurite, env["Q_WORK"] + "-poison") == ["slow:4.5"]
        # a fresh process replaced `first`; `second` was left alone
        helpers.wait_for(lambda: len(r.stats()["worker_processes"]) == 2
                         and all(w["ready"] for w in r.stats()["worker_processes"]), 30, what="replacement ready")
        now = {w["pid"] for w in r.stats()["worker_processes"]}
        assert second in now and first not in now
        assert set(_pids(r)) == now
        assert _texts(azurite, env["Q_DONE"]) == []


def test_a_worker_that_exits_is_replaced_and_its_invocation_fails(azurite, helpers, caplog):
    env = _env(azurite, FUNCTIONS_WORKER_PROCESS_COUNT="2")
    with Runner(APP, port=0, env_overrides=env) as r:
        assert requests.get(r.url("crash"), timeout=15).status_code == 500
        assert r.function_stats("crash")["failures"] == 1 and r.worker_restarts == 1
        helpers.wait_for(lambda: len(r.stats()["worker_processes"]) == 2
                         and all(w["ready"] for w in r.stats()["worker_processes"]), 30, what="replacement ready")
        assert len(set(_pids(r))) == 2
    assert "exited unexpectedly" in caplog.text


def test_worker_process_count_is_validated(azurite):
    with pytest.raises(ConfigError, match="FUNCTIONS_WORKER_PROCESS_COUNT"):
        Runner(APP, port=0, env_overrides=_env(azurite, FUNCTIONS_WORKER_PROCESS_COUNT="11")).start()


def test_a_signal_to_the_process_group_leaves_the_workers_to_the_hosts_graceful_stop(azurite):
    # Ctrl-C or a process manager signals the whole group: the workers ignore it, the host drains the invocation
    # in flight (the HTTP call still gets its answer) and then stops them
    import signal
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = dict(os.environ, **_env(azurite, FUNCTIONS_WORKER_PROCESS_COUNT="2"))
    p = subprocess.Popen([sys.executable, "-m", "localrunner", "--app-root", APP, "--port", "0"], cwd=repo, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        base = p.stdout.readline().strip().rsplit(" ", 1)[1]
        results = {}
        t = threading.Thread(target=lambda: results.update(r=requests.get(base + "/api/pid-sleep/1.5", timeout=15)))
        t.start()
        deadline = time.monotonic() + 10
        while requests.get(base + "/admin/localrunner/stats", timeout=5).json()["functions"]["pid_sleep"][
                "invocations"] == 0:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGTERM)
        t.join(15)
        assert results["r"].status_code == 200
        assert p.wait(15) == 0
        err = p.stderr.read()
        assert "exited unexpectedly" not in err and "localrunner stopped" in err
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
