"""Index function_app.py the way the Python worker does and check every binding."""

from __future__ import annotations

import importlib
import inspect
import os
import json
import re
import sys

import pytest

from tests.support.samples import sample_values

QUEUE_NAME = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")
KNOWN_TYPES = {"httpTrigger", "http", "queueTrigger", "queue", "timerTrigger"}


@pytest.fixture(scope="module")
def functions():
    values = sample_values()
    saved = dict(os.environ)
    os.environ.update(values)
    try:
        for name in [m for m in sys.modules if m == "function_app" or m.startswith("functions.")]:
            del sys.modules[name]
        module = importlib.import_module("function_app")
        yield [json.loads(f.get_function_json())
               | {"name": f.get_function_name(),
                  "params": set(inspect.signature(inspect.unwrap(f.get_user_function())).parameters),
                  "user_function": inspect.unwrap(f.get_user_function())}
               for f in module.app.get_functions()]
    finally:
        os.environ.clear()
        os.environ.update(saved)


def resolve(value: str, settings: dict[str, str]) -> str:
    for name in re.findall(r"%([^%]+)%", value):
        assert name in settings, f"binding expression %{name}% is not in local.settings.sample.json"
        value = value.replace(f"%{name}%", settings[name])
    return value


def test_every_stage_is_registered(functions):
    names = {f["name"] for f in functions}
    assert {"sendbird_webhook", "intent_stage", "reply_sender"} <= names
    assert {f"route_{r}" for r in ("greeting", "help", "order_status", "product_search", "handoff", "goodbye",
                                   "fallback", "unsupported")} <= names
    assert len(names) == len(functions), "function names must be unique"


def test_bindings_are_known_and_valid(functions):
    settings = sample_values()
    for f in functions:
        triggers = [b for b in f["bindings"] if b["type"].endswith("Trigger")]
        assert len(triggers) == 1, f["name"]
        for b in f["bindings"]:
            assert b["type"] in KNOWN_TYPES, (f["name"], b["type"])
            if b["type"].startswith("queue"):
                assert QUEUE_NAME.match(resolve(b["queueName"], settings)), (f["name"], b["queueName"])
                assert b["connection"] in settings, (f["name"], b["connection"])
            if b["type"] == "timerTrigger":  # an NCRONTAB schedule of six fields, from a sample setting
                assert len(resolve(b["schedule"], settings).split()) == 6, (f["name"], b["schedule"])


def test_the_review_export_runs_daily_from_a_setting_and_never_on_start(functions):
    [export] = [f for f in functions if f["name"] == "review_export"]
    [timer] = export["bindings"]
    assert timer["type"] == "timerTrigger" and timer["schedule"] == "%REVIEW_EXPORT_SCHEDULE%"
    assert timer["runOnStartup"] is False and timer["useMonitor"] is True


def test_webhook_route_and_auth(functions):
    [hook] = [f for f in functions if f["name"] == "sendbird_webhook"]
    trigger = next(b for b in hook["bindings"] if b["type"] == "httpTrigger")
    assert trigger["route"] == "sendbird/webhook" and trigger["methods"] == ["POST"]
    assert trigger["authLevel"].lower() == "anonymous"


def test_every_output_queue_has_a_consumer(functions):
    consumed = {b["queueName"] for f in functions for b in f["bindings"] if b["type"] == "queueTrigger"}
    produced = {b["queueName"] for f in functions for b in f["bindings"] if b["type"] == "queue"}
    assert produced <= consumed, produced - consumed
    [intent] = [f for f in functions if f["name"] == "intent_stage"]
    outputs = {b["queueName"] for b in intent["bindings"] if b["type"] == "queue"}
    assert len(outputs) == 9 and "review-capture" in outputs  # one per route, and the review capture
    assert "review_capture" in {f["name"] for f in functions}


def test_binding_names_match_the_python_parameters(functions):
    """The worker refuses a function whose parameters and binding names differ."""
    for f in functions:
        bound = {b["name"] for b in f["bindings"] if b["name"] != "$return"}
        assert bound == f["params"], (f["name"], bound ^ f["params"])


def test_no_http_route_collides_with_the_hosts_built_in_routes(functions):
    """The host refuses routes whose first segment is ``admin`` or ``runtime`` (its own admin API):
    "The specified route conflicts with one or more built in routes." (../shared/reference/functions-host-rules.md)."""
    routes = {f["name"]: b.get("route") or f["name"] for f in functions for b in f["bindings"]
              if b["type"] == "httpTrigger"}
    assert routes, "the app has HTTP functions"
    for name, route in routes.items():
        assert route.strip("/").split("/")[0].lower() not in ("admin", "runtime"), (name, route)
    assert routes["ops_poison_list"] == "ops/poison" and routes["ops_poison_replay"] == "ops/poison/replay"


def test_binding_names_are_ones_the_host_accepts(functions):
    """Letters, digits and single underscores; the host refuses ``__`` in a binding name."""
    for f in functions:
        for b in f["bindings"]:
            assert b["name"] == "$return" or re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", b["name"]), (f["name"], b["name"])
            assert "__" not in b["name"], (f["name"], b["name"])


def test_the_webhook_intake_runs_on_the_workers_event_loop(functions):
    """The worker awaits an ``async def`` function on its event loop and runs a plain one on the thread pool the
    queue functions share (functions/intake.py says why): the intake must stay async, and must never suspend
    (no ``await``: it would let another invocation interleave on the loop, and nothing in it waits on I/O)."""
    [hook] = [f for f in functions if f["name"] == "sendbird_webhook"]
    fn = hook["user_function"]
    assert inspect.iscoroutinefunction(fn)
    source = inspect.getsource(fn)
    assert "await " not in source and "async with" not in source and "async for" not in source
    others = [f["name"] for f in functions
              if f["name"] != "sendbird_webhook" and inspect.iscoroutinefunction(f["user_function"])]
    assert others == [], f"{others}: an async function's blocking I/O would stall the worker's event loop"
