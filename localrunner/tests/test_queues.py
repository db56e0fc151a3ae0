"""Queue triggers: chaining, retries, poison, encodings, wake-on-output, leases, timeouts, graceful stop."""
import base64
import os
import subprocess
import sys
import time

import pytest
import requests
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from localrunner import Runner

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def qclient(conn, name, base64_policy=True):
    kw = {"message_encode_policy": TextBase64EncodePolicy()} if base64_policy else {}
    q = QueueClient.from_connection_string(conn, name, **kw)
    try:
        q.create_queue()
    except Exception:
        pass
    return q


def raw_contents(conn, name):
    return [m.content for m in QueueClient.from_connection_string(conn, name).peek_messages(max_messages=32)]


def queue_len(conn, name):
    try:
        return QueueClient.from_connection_string(conn, name).get_queue_properties().approximate_message_count
    except Exception:
        return 0


@pytest.fixture(scope="module")
def qenv(azurite, helpers):
    return {"AzureWebJobsStorage": azurite, **helpers.unique_queues("q")}


@pytest.fixture(scope="module")
def runner(qenv, helpers):
    r = Runner(helpers.SAMPLE_APP, port=0, env_overrides=qenv)
    r.start()
    yield r
    assert r.stop(timeout=15)


def test_chain_with_output_bindings_and_wake(runner, qenv, azurite, helpers):
    mod = runner.app_module
    # let the chain_b listener go idle (a few empty polls) so the wake matters
    helpers.wait_for(lambda: runner.listener_stats("chain_b").get("empty_polls", 0) >= 3, 10, what="idle polls")
    t0 = time.monotonic()
    assert requests.post(runner.url("chain"), data=b"ping", timeout=5).status_code == 202
    helpers.wait_for(lambda: len(mod.CHAIN_B_SEEN) == 1, 10, what="chain_b invocation")
    body, fname, inv_id, traceparent = mod.CHAIN_B_SEEN[0]
    assert body == "A>ping"
    assert fname == "chain_b" and len(inv_id) == 36 and traceparent.startswith("00-")
    # both hops were written through output bindings in this runner: listeners were woken
    assert runner.listener_stats("chain_a")["wakeups"] >= 1
    assert runner.listener_stats("chain_b")["wakeups"] >= 1
    assert runner.listener_stats("chain_b")["woken_waits"] >= 1
    assert time.monotonic() - t0 < 5
    # the list output produced two messages for the sink
    helpers.wait_for(lambda: len(mod.SINK_SEEN) == 2, 10, what="sink messages")
    assert sorted(mod.SINK_SEEN) == [b"audit1:ping", b"audit2:ping"]
    for name in ("chain_a", "chain_b", "sink"):
        helpers.wait_for(lambda name=name: runner.function_stats(name)["successes"] >= 1, 5, what=f"{name} stats")
    helpers.wait_for(lambda: queue_len(azurite, qenv["Q_CHAIN_A"]) == 0, 5, what="chain-a emptied")
    assert queue_len(azurite, qenv["Q_CHAIN_B"]) == 0


def test_sdk_messages_do_not_wake(runner, qenv, azurite, helpers):
    before = runner.listener_stats("flaky").get("wakeups", 0)
    qclient(azurite, qenv["Q_FLAKY"]).send_message("0")
    helpers.wait_for(lambda: runner.function_stats("flaky")["successes"] >= 1, 10, what="flaky success")
    assert runner.listener_stats("flaky")["wakeups"] == before


def test_retry_until_success_sees_dequeue_count(runner, qenv, azurite, helpers):
    mod = runner.app_module
    mod.FLAKY_SEEN.clear()
    stats0 = dict(runner.function_stats("flaky"))
    qclient(azurite, qenv["Q_FLAKY"]).send_message("2")  # fail on attempts 1 and 2
    helpers.wait_for(lambda: runner.function_stats("flaky")["successes"] == stats0["successes"] + 1, 15,
                     what="flaky to succeed")
    assert mod.FLAKY_SEEN == [1, 2, 3]
    st = runner.function_stats("flaky")
    assert st["failures"] - stats0["failures"] == 2
    assert st["poisoned"] == stats0["poisoned"] == 0
    assert queue_len(azurite, qenv["Q_FLAKY"]) == 0
    assert queue_len(azurite, qenv["Q_FLAKY"] + "-poison") == 0


def test_always_failing_goes_to_poison(runner, qenv, azurite, helpers):
    mod = runner.app_module
    src = qenv["Q_POISON_SRC"]
    qclient(azurite, src).send_message('{"order": 1, "text": "ünïcode"}')
    helpers.wait_for(lambda: queue_len(azurite, src + "-poison") == 1, 15, what="poison message")
    raw = raw_contents(azurite, src + "-poison")
    assert len(raw) == 1
    assert base64.b64decode(raw[0]).decode() == '{"order": 1, "text": "ünïcode"}'  # same content, same encoding
    assert mod.ALWAYS_FAILS_SEEN == [1, 2, 3]  # maxDequeueCount = 3 in the sample host.json
    st = runner.function_stats("always_fails")
    assert (st["invocations"], st["failures"], st["poisoned"]) == (3, 3, 1)
    assert queue_len(azurite, src) == 0


def test_already_exceeded_dequeue_count_is_poisoned_without_invocation(runner, qenv, azurite, helpers):
    # a message received with dequeue_count > maxDequeueCount (e.g. left by a crashed host) is poisoned at once
    src = qenv["Q_SLOW"]
    runner_stopped_probe = runner.function_stats("slow")["invocations"]
    # bump the dequeue count by receiving it ourselves 3 times (visibility 1 s)
    # while the runner is not looking: use a separate queue name to avoid races
    other = src + "-x"
    qo = qclient(azurite, other)
    qo.send_message("0.01")
    for _ in range(3):
        m = helpers.wait_for(lambda: next(iter(qo.receive_messages(visibility_timeout=1, max_messages=1)), None),
                             5, what="manual receive")
        qo.update_message(m, visibility_timeout=0)
    # now hand the same content to a runner whose trigger queue is that queue
    env = dict(qenv, Q_SLOW=other)
    with Runner(helpers.SAMPLE_APP, port=0, env_overrides=env) as r2:
        helpers.wait_for(lambda: r2.function_stats("slow")["poisoned"] == 1, 10, what="poisoned on fetch")
        assert r2.function_stats("slow")["invocations"] == 0
    assert queue_len(azurite, other + "-poison") == 1
    assert runner.function_stats("slow")["invocations"] == runner_stopped_probe


def test_invalid_base64_goes_straight_to_poison(runner, qenv, azurite, helpers):
    audit = qenv["Q_AUDIT"]
    before = runner.function_stats("sink")["invocations"]
    qclient(azurite, audit, base64_policy=False).send_message("this is not base64!")
    helpers.wait_for(lambda: queue_len(azurite, audit + "-poison") == 1, 10, what="decode failure poison")
    assert raw_contents(azurite, audit + "-poison") == ["this is not base64!"]
    assert runner.function_stats("sink")["invocations"] == before
    assert runner.function_stats("sink")["poisoned"] == 1


def test_stats_endpoint(runner):
    body = requests.get(runner.base_url + "/admin/localrunner/stats", timeout=5).json()
    assert set(body["functions"]["flaky"]) >= {"invocations", "successes", "failures", "poisoned", "timeouts"}
    assert body["listeners"]["chain_b"]["polls"] >= 1


def test_none_encoding(azurite, helpers, app_copy):
    root = app_copy(queues={"messageEncoding": "none"})
    env = {"AzureWebJobsStorage": azurite, **helpers.unique_queues("none")}
    with Runner(root, port=0, env_overrides=env) as r:
        mod = r.app_module
        qclient(azurite, env["Q_CHAIN_A"], base64_policy=False).send_message("plain {json}")
        helpers.wait_for(lambda: len(mod.CHAIN_B_SEEN) == 1, 10, what="chain with none encoding")
        assert mod.CHAIN_B_SEEN[0][0] == "A>plain {json}"
        assert requests.post(r.url("enqueue"), data=b"raw text", timeout=5).status_code == 202
        assert raw_contents(azurite, env["Q_HTTP_OUT"]) == ["raw text"]  # not base64 encoded
        # under "none", a failing message is poisoned with the same plain content
        qclient(azurite, env["Q_POISON_SRC"], base64_policy=False).send_message("plain poison")
        helpers.wait_for(lambda: queue_len(azurite, env["Q_POISON_SRC"] + "-poison") == 1, 15, what="poison")
        assert raw_contents(azurite, env["Q_POISON_SRC"] + "-poison") == ["plain poison"]


def test_function_timeout_counts_as_failure(azurite, helpers, app_copy):
    root = app_copy(top={"functionTimeout": "00:00:01"}, queues={"maxDequeueCount": 1})
    env = {"AzureWebJobsStorage": azurite, **helpers.unique_queues("tmo")}
    with Runner(root, port=0, env_overrides=env) as r:
        qclient(azurite, env["Q_SLOW"]).send_message("2.5")
        helpers.wait_for(lambda: r.function_stats("slow")["timeouts"] == 1, 10, what="timeout")
        st = r.function_stats("slow")
        assert st["failures"] == 1 and st["successes"] == 0
        helpers.wait_for(lambda: r.function_stats("slow")["poisoned"] == 1, 5, what="poisoned after timeout")
        r.stop(timeout=5)


def test_lease_renewal_and_graceful_stop(azurite, helpers):
    env = {"AzureWebJobsStorage": azurite, **helpers.unique_queues("stop")}
    r = Runner(helpers.SAMPLE_APP, port=0, env_overrides=env, lease_seconds=2)
    r.start()
    mod = r.app_module
    try:
        qclient(azurite, env["Q_SLOW"]).send_message("3")
        helpers.wait_for(lambda: r.function_stats("slow")["invocations"] == 1, 10, what="slow started")
        t0 = time.monotonic()
        assert r.stop(timeout=15) is True
        elapsed = time.monotonic() - t0
    finally:
        r.stop(timeout=1)
    assert elapsed >= 1.5  # waited for the in-flight invocation
    assert mod.SLOW_DONE == ["3"]
    st = r.stats()
    assert st["functions"]["slow"] == {"invocations": 1, "successes": 1, "failures": 0, "timeouts": 0, "poisoned": 0}
    assert st["listeners"]["slow"]["renewals"] >= 1  # lease renewed while running past half the window
    assert r.state == "Stopped"
    assert queue_len(azurite, env["Q_SLOW"]) == 0  # completed message deleted despite renewals


def test_stop_timeout_leaves_message_for_redelivery(azurite, helpers):
    env = {"AzureWebJobsStorage": azurite, **helpers.unique_queues("kill")}
    r = Runner(helpers.SAMPLE_APP, port=0, env_overrides=env, lease_seconds=2)
    r.start()
    qclient(azurite, env["Q_SLOW"]).send_message("4")
    helpers.wait_for(lambda: r.function_stats("slow")["invocations"] == 1, 10, what="slow started")
    assert r.stop(timeout=0.3) is False
    q = QueueClient.from_connection_string(azurite, env["Q_SLOW"])
    assert list(q.peek_messages()) == []  # still hidden by the lease
    # with no renewals the message reappears after the 2 s window
    helpers.wait_for(lambda: len(list(q.peek_messages())) == 1, 6, what="message to reappear")


def test_cli_ready_line_and_sigterm(azurite, helpers):
    env = dict(os.environ, AzureWebJobsStorage=azurite, **helpers.unique_queues("cli"))
    p = subprocess.Popen([sys.executable, "-m", "localrunner", "--app-root", helpers.SAMPLE_APP, "--port", "0"],
                         cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = p.stdout.readline().strip()
        assert line.startswith("localrunner ready on http://127.0.0.1:"), line
        base = line.rsplit(" ", 1)[1]
        assert requests.get(base + "/admin/host/status", timeout=5).json()["state"] == "Running"
        assert requests.get(base + "/api/hello", timeout=5).text == "hello-from-settings world"
        p.terminate()  # SIGTERM
        assert p.wait(15) == 0
        err = p.stderr.read()
        assert "Executing 'Functions.http_hello' (Reason='This function was programmatically called via the host APIs.', Id=" in err
        assert "Executed 'Functions.http_hello' (Succeeded, Id=" in err
        assert "localrunner stopped" in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_batch_is_processed_in_parallel(runner, qenv, azurite, helpers):
    mod = runner.app_module
    done_before = len(mod.SLOW_DONE)
    q = qclient(azurite, qenv["Q_SLOW"])
    for _ in range(4):
        q.send_message("1")
    t0 = time.monotonic()
    helpers.wait_for(lambda: len(mod.SLOW_DONE) == done_before + 4, 10, what="4 slow messages")
    # sequential processing would take >= 4 s; the host runs a batch in parallel
    assert time.monotonic() - t0 < 3.5


def test_return_value_output_binding_and_bytes_param(runner, qenv, azurite, helpers):
    qclient(azurite, qenv["Q_RET_IN"]).send_message("hey")
    helpers.wait_for(lambda: queue_len(azurite, qenv["Q_RET_OUT"]) == 1, 10, what="$return output")
    assert [base64.b64decode(c).decode() for c in raw_contents(azurite, qenv["Q_RET_OUT"])] == ["echo:hey"]
    assert runner.function_stats("echo_return")["successes"] == 1
