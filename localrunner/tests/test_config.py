"""Settings, host.json validation, route templates, polling back-off, app indexing errors."""
import json
import os
import random
import subprocess
import sys
import textwrap

import pytest

from localrunner import ConfigError, FunctionLoadError, Runner
from localrunner.config import load_local_settings, parse_host_json, parse_timespan
from localrunner.queues import polling_delay

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_timespans():
    assert parse_timespan("00:00:02", what="x") == 2.0
    assert parse_timespan("00:00:00.250", what="x") == pytest.approx(0.25)
    assert parse_timespan("00:01:00", what="x") == 60.0
    assert parse_timespan("1.00:00:00", what="x") == 86400.0
    assert parse_timespan(1500, what="x") == 1.5  # milliseconds
    assert parse_timespan("1500", what="x") == 1.5
    for bad in ("2s", "00:61:00", "abc", -5, True, None):
        with pytest.raises(ConfigError):
            parse_timespan(bad, what="x")


def test_host_json_defaults():
    cfg = parse_host_json({"version": "2.0"})
    q = cfg.queues
    assert cfg.route_prefix == "api"
    assert (q.max_polling_interval, q.batch_size, q.new_batch_threshold) == (60.0, 16, 8)
    assert (q.visibility_timeout, q.max_dequeue_count, q.message_encoding) == (0.0, 5, "base64")
    cfg = parse_host_json({"version": "2.0", "extensions": {"queues": {"batchSize": 10}, "http": {"routePrefix": ""}},
                           "functionTimeout": "-1"})
    assert cfg.queues.new_batch_threshold == 5
    assert cfg.route_prefix == ""
    assert cfg.function_timeout is None
    cfg = parse_host_json({"version": "2.0", "functionTimeout": "00:05:00",
                           "extensions": {"queues": {"maxPollingInterval": 100, "messageEncoding": "None"}}})
    assert cfg.function_timeout == 300
    assert cfg.queues.max_polling_interval == pytest.approx(0.1)
    assert cfg.queues.message_encoding == "none"


@pytest.mark.parametrize("queues, needle", [
    ({"batchSize": 64}, "batchSize"),
    ({"batchSize": 0}, "batchSize"),
    ({"batchSize": "lots"}, "batchSize"),
    ({"maxPollingInterval": "00:00:00.050"}, "maxPollingInterval"),
    ({"maxPollingInterval": 50}, "maxPollingInterval"),
    ({"maxPollingInterval": "soon"}, "maxPollingInterval"),
    ({"maxDequeueCount": 0}, "maxDequeueCount"),
    ({"newBatchThreshold": -1}, "newBatchThreshold"),
    ({"visibilityTimeout": "1 minute"}, "visibilityTimeout"),
    ({"messageEncoding": "utf8"}, "messageEncoding"),
])
def test_bad_queue_settings_rejected(queues, needle):
    with pytest.raises(ConfigError) as ei:
        parse_host_json({"version": "2.0", "extensions": {"queues": queues}})
    assert needle in str(ei.value)
    assert repr(list(queues.values())[0]) in str(ei.value)


def test_bad_top_level_host_json():
    with pytest.raises(ConfigError, match="version"):
        parse_host_json({})
    with pytest.raises(ConfigError, match="version"):
        parse_host_json({"version": "1.0"})
    with pytest.raises(ConfigError, match="functionTimeout"):
        parse_host_json({"version": "2.0", "functionTimeout": "forever"})
    with pytest.raises(ConfigError, match="routePrefix"):
        parse_host_json({"version": "2.0", "extensions": {"http": {"routePrefix": 5}}})


def test_runner_rejects_bad_host_json_before_import(app_copy):
    root = app_copy(queues={"batchSize": 33})
    r = Runner(root, port=0, env_overrides={"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    with pytest.raises(ConfigError, match=r"batchSize.*33"):
        r.start()
    assert r.state == "Error"
    assert "GREETING" not in os.environ or os.environ.get("GREETING") != "hello-from-settings"


def test_cli_reports_bad_host_json(app_copy):
    root = app_copy(queues={"messageEncoding": "utf-16"})
    p = subprocess.run([sys.executable, "-m", "localrunner", "--app-root", root, "--port", "0"],
                       cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2
    assert "messageEncoding" in p.stderr and "utf-16" in p.stderr
    assert "ready" not in p.stdout


def test_local_settings(tmp_path):
    f = tmp_path / "local.settings.json"
    f.write_text(json.dumps({"IsEncrypted": False, "Values": {"A": "1", "B": True, "C": 3},
                             "Host": {"LocalHttpPort": 7123}}))
    s = load_local_settings(str(f))
    assert s.values == {"A": "1", "B": "true", "C": "3"}
    assert s.local_http_port == 7123
    f.write_text(json.dumps({"IsEncrypted": True, "Values": {}}))
    with pytest.raises(ConfigError, match="IsEncrypted"):
        load_local_settings(str(f))
    assert load_local_settings(str(tmp_path / "missing.json")).values == {}
    with pytest.raises(ConfigError):
        load_local_settings(str(tmp_path / "missing.json"), required=True)


def test_polling_backoff_sequence():
    rng = random.Random(1)
    delays = [polling_delay(n, 60.0, rng=rng) for n in range(1, 12)]
    assert delays[0] == pytest.approx(0.1)
    assert all(b >= a * 0.8 for a, b in zip(delays, delays[1:], strict=False))  # grows (with jitter)
    assert 0.15 <= delays[1] <= 0.25
    assert 2.5 <= delays[6] <= 4.1  # about 3.3 s at the 7th empty poll
    assert polling_delay(40, 2.0) == 2.0  # capped at maxPollingInterval
    assert min(polling_delay(n, 0.1) for n in range(1, 10)) == pytest.approx(0.1)


def test_route_templates():
    from localrunner.app_loader import FunctionSpec, HttpTriggerSpec
    from localrunner.http_frontend import CompiledRoute

    spec = FunctionSpec(name="f", func=lambda: None, is_async=False,
                        http=HttpTriggerSpec(param="req", route="x", methods=None, auth_level="anonymous"))
    r = CompiledRoute("api/items/{category}/{id:int}", spec)
    assert r.match("/api/items/books/42") == {"category": "books", "id": "42"}
    assert r.match("/API/Items/books/42/") == {"category": "books", "id": "42"}
    assert r.match("/api/items/books/x") is None
    r = CompiledRoute("api/files/{*path}", spec)
    assert r.match("/api/files/a/b/c.txt") == {"path": "a/b/c.txt"}
    r = CompiledRoute("api/opt/{name?}", spec)
    assert r.match("/api/opt") == {}
    assert r.match("/api/opt/bob") == {"name": "bob"}
    r = CompiledRoute("api/f/{name}.{ext}", spec)
    assert r.match("/api/f/report.pdf") == {"name": "report", "ext": "pdf"}


def _write_app(tmp_path, code, values=None, host=None):
    (tmp_path / "function_app.py").write_text(textwrap.dedent(code))
    (tmp_path / "host.json").write_text(json.dumps(host or {"version": "2.0"}))
    (tmp_path / "local.settings.json").write_text(json.dumps({"Values": values or {}}))
    return str(tmp_path)


def test_missing_setting_in_queue_name(tmp_path):
    root = _write_app(tmp_path, """
        import azure.functions as func
        app = func.FunctionApp()
        @app.queue_trigger(arg_name="msg", queue_name="%NOT_DEFINED_QUEUE_SETTING%", connection="AzureWebJobsStorage")
        def f(msg: func.QueueMessage): pass
    """, values={"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    with pytest.raises(FunctionLoadError, match="NOT_DEFINED_QUEUE_SETTING"):
        Runner(root, port=0).start()


def test_identity_connection_reported(tmp_path):
    root = _write_app(tmp_path, """
        import azure.functions as func
        app = func.FunctionApp()
        @app.queue_trigger(arg_name="msg", queue_name="jobs", connection="MyStorage")
        def f(msg: func.QueueMessage): pass
    """, values={"MyStorage__queueServiceUri": "https://acct.queue.core.windows.net"})
    with pytest.raises(FunctionLoadError, match="identity-based"):
        Runner(root, port=0).start()


def test_missing_connection_reported(tmp_path):
    root = _write_app(tmp_path, """
        import azure.functions as func
        app = func.FunctionApp()
        @app.queue_trigger(arg_name="msg", queue_name="jobs", connection="")
        def f(msg: func.QueueMessage): pass
    """)
    saved = os.environ.pop("AzureWebJobsStorage", None)
    try:
        with pytest.raises(FunctionLoadError, match="AzureWebJobsStorage"):
            Runner(root, port=0).start()
    finally:
        if saved is not None:
            os.environ["AzureWebJobsStorage"] = saved


def test_unknown_binding_types_refused(tmp_path):
    root = _write_app(tmp_path, """
        import azure.functions as func
        app = func.FunctionApp()
        @app.blob_trigger(arg_name="b", path="c/{name}", connection="AzureWebJobsStorage")
        def on_blob(b: func.InputStream): pass
    """)  # timer triggers are supported (test_timers.py)
    with pytest.raises(FunctionLoadError, match="blobTrigger"):
        Runner(root, port=0).start()
    (tmp_path / "function_app.py").write_text(textwrap.dedent("""
        import azure.functions as func
        app = func.FunctionApp()
        @app.route(route="x")
        @app.blob_input(arg_name="doc", path="c/b.txt", connection="AzureWebJobsStorage")
        def x(req, doc): return "x"
    """))
    with pytest.raises(FunctionLoadError, match="blob"):
        Runner(root, port=0).start()


def test_invalid_queue_name_and_param_mismatch(tmp_path):
    root = _write_app(tmp_path, """
        import azure.functions as func
        app = func.FunctionApp()
        @app.queue_trigger(arg_name="msg", queue_name="Bad_Name", connection="AzureWebJobsStorage")
        def f(msg: func.QueueMessage): pass
    """, values={"AzureWebJobsStorage": "UseDevelopmentStorage=true"})
    with pytest.raises(FunctionLoadError, match="Bad_Name"):
        Runner(root, port=0).start()
    (tmp_path / "function_app.py").write_text(textwrap.dedent("""
        import azure.functions as func
        app = func.FunctionApp()
        @app.route(route="x")
        def x(request): return "x"
    """))
    with pytest.raises(FunctionLoadError, match="req"):
        Runner(root, port=0).start()
