"""What the real host and Python worker refuse at indexing / invocation.

One small app per mistake in bad_apps/ (see bad_apps/README.md); each fails start-up with the host's message.
"""
import os
import subprocess
import sys

import pytest
from azure.storage.queue import QueueClient, TextBase64EncodePolicy

from localrunner import FunctionLoadError, Runner

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(os.path.dirname(HERE))
BAD = os.path.join(HERE, "bad_apps")
ROUTE_MSG = "The specified route conflicts with one or more built in routes."

REFUSED = [
    ("route_admin", ["poison_list", "admin/poison", ROUTE_MSG]),
    ("route_runtime", ["runtime_status", "Runtime/status", ROUTE_MSG]),
    ("route_default_name", ["admin_tools", ROUTE_MSG]),
    ("binding_double_underscore",
     ["echo", "The binding name req__in is invalid. Please assign a valid name to the binding."]),
    ("unbound_parameter",
     ["cannot load the report function: the following parameters are declared in Python but not in "
      "function.json: {'verbose'}"]),
]


@pytest.mark.parametrize("app, needles", REFUSED, ids=[a for a, _ in REFUSED])
def test_indexing_refusals_fail_start(app, needles):
    before = dict(os.environ)
    r = Runner(os.path.join(BAD, app), port=0, env_overrides={"LOCALRUNNER_TEST_MARK": "1"})
    with pytest.raises(FunctionLoadError) as ei:
        r.start()
    for n in needles:
        assert n in str(ei.value)
    assert r.state == "Error"
    assert dict(os.environ) == before  # nothing left behind


@pytest.mark.parametrize("app, needles", REFUSED, ids=[a for a, _ in REFUSED])
def test_indexing_refusals_exit_code_2_from_cli(app, needles):
    p = subprocess.run([sys.executable, "-m", "localrunner", "--app-root", os.path.join(BAD, app), "--port", "0"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert needles[-1] in p.stderr
    assert "ready" not in p.stdout


def test_names_and_routes_the_host_accepts():
    # snake_case binding names (host >= 4.1038), 'admin' not first, 'runtime' inside a word, unbound context
    root = os.path.join(HERE, "good_names_app")
    with Runner(root, port=0, env_overrides={"AzureWebJobsStorage": "UseDevelopmentStorage=true"}) as r:
        import requests
        assert requests.post(r.url("ops/admin"), timeout=5).text == "ops_admin"
        assert requests.get(r.url("my-runtime"), timeout=5).text == "ok"
        # the runner's own endpoints mirror the host's built-in admin API and stay where they are
        assert requests.get(r.base_url + "/admin/host/status", timeout=5).json()["state"] == "Running"
        assert requests.get(r.base_url + "/admin/localrunner/stats", timeout=5).status_code == 200
        assert "ops_admin" in requests.get(r.base_url + "/admin/functions", timeout=5).json()


def test_reserved_route_check_is_a_string_prefix():
    from localrunner.app_loader import is_reserved_route
    for route in ("admin", "/admin/x", "ADMIN/poison", "administration/health", "adminx", "runtime",
                  "Runtime/status", "runtimes/x"):
        assert is_reserved_route(route), route
    for route in ("ops/admin", "my-admin", "api/admin", "run", "ops/poison", "sendbird/webhook"):
        assert not is_reserved_route(route), route


def test_binding_name_rules():
    from localrunner.app_loader import validate_binding_name
    for ok in ("req", "msg", "to_greeting", "to_order_status", "out1", "$return", "a" * 128):
        validate_binding_name(ok, what="f")
    for bad in ("to__greeting", "__x", "_x", "1x", "x-y", "x y", "", "a" * 129, None):
        with pytest.raises(FunctionLoadError, match="Please assign a valid name to the binding"):
            validate_binding_name(bad, what="f")


# -- (d) a return value without a $return binding fails the invocation (the worker's check) -----------------

def test_return_value_without_return_binding_fails_each_invocation(azurite, helpers, caplog):
    q = f"t{os.urandom(4).hex()}-returns"
    env = {"AzureWebJobsStorage": azurite, "Q_RETURNS": q,
           # fail once -> poison at once (also exercises the app-setting override of host.json)
           "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "1"}
    client = QueueClient.from_connection_string(azurite, q, message_encode_policy=TextBase64EncodePolicy())
    with Runner(os.path.join(BAD, "return_without_binding"), port=0, env_overrides=env) as r:
        assert r.host_config.queues.max_dequeue_count == 1
        client.send_message("hi")
        helpers.wait_for(lambda: r.function_stats("echo")["poisoned"] == 1, 15, what="poisoned")
        st = r.function_stats("echo")
        assert (st["invocations"], st["successes"], st["failures"]) == (1, 0, 1)
    assert "function 'echo' without a $return bindingreturned a non-None value" in caplog.text
    poison = QueueClient.from_connection_string(azurite, q + "-poison")
    assert len(list(poison.peek_messages())) == 1
