"""SIGTERM/SIGINT handling of `python -m localrunner`: the handler only records the signal, the main loop
stops the runner (graceful drain, exit codes 0 and 1)."""
import os
import signal
import subprocess
import sys
import threading
import time

import requests
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from localrunner.__main__ import SIGNAL_POLL_SECONDS, signal_recorder, wait_for_signal

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_signal_handler_only_appends_the_signal_number():
    # no lock, no logging, no Event in a handler: it may interrupt the main thread while that holds one
    received: list = []
    handler = signal_recorder(received)
    calls = []

    def profile(frame, event, arg):
        if event == "call":
            calls.append(frame.f_code.co_qualname)
        elif event == "c_call":
            calls.append(arg.__qualname__)

    sys.setprofile(profile)
    try:
        handler(signal.SIGTERM, None)
    finally:
        sys.setprofile(None)
    assert received == [signal.SIGTERM]
    assert [c for c in calls if c != "setprofile"] == ["signal_recorder.<locals>.on_signal", "list.append"]


def test_main_loop_notices_a_recorded_signal_within_a_fraction_of_a_second():
    received: list = []
    old = signal.signal(signal.SIGUSR1, signal_recorder(received))
    sent = []

    def send() -> None:
        time.sleep(0.3)
        sent.append(time.monotonic())
        os.kill(os.getpid(), signal.SIGUSR1)

    t = threading.Thread(target=send)
    try:
        t.start()
        assert wait_for_signal(received) == signal.SIGUSR1
        noticed = time.monotonic()
    finally:
        t.join()
        signal.signal(signal.SIGUSR1, old)
    assert noticed - sent[0] < SIGNAL_POLL_SECONDS + 0.5


def _start_cli(azurite, helpers, tag, *extra):
    queues = helpers.unique_queues(tag)
    env = dict(os.environ, AzureWebJobsStorage=azurite, **queues)
    p = subprocess.Popen([sys.executable, "-m", "localrunner", "--app-root", helpers.SAMPLE_APP, "--port", "0", *extra],
                         cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()
    assert line.startswith("localrunner ready on http://127.0.0.1:"), line
    return p, line.rsplit(" ", 1)[1], queues


def _send_slow(azurite, queue, seconds):
    q = QueueClient.from_connection_string(azurite, queue, message_encode_policy=TextBase64EncodePolicy())
    q.send_message(str(seconds))


def _slow_invocations(base):
    return requests.get(base + "/admin/localrunner/stats", timeout=5).json()["functions"]["slow"]["invocations"]


def test_sigint_waits_for_the_invocation_in_flight_and_exits_0(azurite, helpers):
    p, base, queues = _start_cli(azurite, helpers, "sigint")
    try:
        _send_slow(azurite, queues["Q_SLOW"], 1.5)
        helpers.wait_for(lambda: _slow_invocations(base) == 1, 15, what="slow invocation started")
        p.send_signal(signal.SIGINT)
        assert p.wait(20) == 0
        err = p.stderr.read()
        assert "Received SIGINT" in err
        # the graceful stop waited for the function before shutting down
        assert "Executed 'Functions.slow' (Succeeded" in err
        assert err.index("Executed 'Functions.slow' (Succeeded") < err.index("localrunner stopped")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()


def test_sigterm_with_shutdown_timeout_exceeded_exits_1(azurite, helpers):
    p, base, queues = _start_cli(azurite, helpers, "sigterm1", "--shutdown-timeout", "0.5")
    try:
        _send_slow(azurite, queues["Q_SLOW"], 20)
        helpers.wait_for(lambda: _slow_invocations(base) == 1, 15, what="slow invocation started")
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        assert p.wait(15) == 1
        assert time.monotonic() - t0 < 8  # does not wait for the 20 s function
        err = p.stderr.read()
        assert "Received SIGTERM" in err
        assert "Graceful stop timed out" in err
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
