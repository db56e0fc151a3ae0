"""HTTP triggers: routing, methods, params, JSON, errors, keys, keep-alive, settings precedence."""
import base64
import http.client
import json
import os

import pytest
import requests
from azure.storage.queue import QueueClient

from localrunner import Runner


@pytest.fixture(scope="module")
def runner(azurite, helpers):
    env = {"AzureWebJobsStorage": azurite, **helpers.unique_queues("http")}
    r = Runner(helpers.SAMPLE_APP, port=0, env_overrides=env)
    r.start()
    yield r
    r.stop(timeout=10)


def test_status_endpoint(runner):
    res = requests.get(runner.base_url + "/admin/host/status", timeout=5)
    assert res.status_code == 200
    body = res.json()
    assert body["state"] == "Running"
    assert {"http_items", "http_hello", "chain_a", "chain_b", "flaky", "always_fails", "slow"} <= set(body["functions"])


def test_route_and_query_params(runner):
    res = requests.get(runner.url("items/books/42") + "?q=x&q=y&single=1",
                       headers={"X-Test": "abc"}, timeout=5)
    assert res.status_code == 200
    assert res.headers["X-Handled-By"] == "http_items"
    assert res.headers["Content-Type"].startswith("application/json")
    body = res.json()
    assert body["method"] == "GET"
    assert body["route_params"] == {"category": "books", "id": "42"}
    assert body["params"] == {"q": "x,y", "single": "1"}
    assert body["x_test"] == "abc"
    assert body["url"].endswith("/api/items/books/42?q=x&q=y&single=1")
    assert body["json"] is None


def test_json_body_and_methods(runner):
    res = requests.post(runner.url("items/toys/7"), json={"a": [1, 2]}, timeout=5)
    assert res.status_code == 200
    assert res.json()["json"] == {"a": [1, 2]}
    assert res.json()["method"] == "POST"
    assert requests.delete(runner.url("items/toys/7"), timeout=5).status_code == 404  # method not declared
    assert requests.get(runner.url("items/toys/seven"), timeout=5).status_code == 404  # {id:int}
    assert requests.get(runner.url("nope"), timeout=5).status_code == 404


def test_async_function_and_settings_precedence(runner):
    # GREETING comes from local.settings.json (not overridden by the environment)
    res = requests.get(runner.url("hello") + "?name=bob", timeout=5)
    assert res.status_code == 200
    assert res.text == "hello-from-settings bob"
    assert res.headers["Content-Type"].startswith("text/plain")


def test_environment_wins_over_local_settings(azurite, helpers):
    env = {"AzureWebJobsStorage": azurite, "GREETING": "from-env", **helpers.unique_queues("prec")}
    before = os.environ.get("GREETING")
    with Runner(helpers.SAMPLE_APP, port=0, env_overrides=env) as r:
        assert requests.get(r.url("hello"), timeout=5).text == "from-env world"
    assert os.environ.get("GREETING") == before  # environment restored after stop


def test_unhandled_exception_is_500_without_traceback(runner, caplog):
    res = requests.get(runner.url("boom"), timeout=5)
    assert res.status_code == 500
    body = res.json()
    assert "http_boom" in body["error"]
    assert "kaboom-secret-detail" not in res.text and "Traceback" not in res.text
    assert runner.function_stats("http_boom")["failures"] >= 1
    assert any("kaboom-secret-detail" in (r.exc_text or "") or
               (r.exc_info and "kaboom" in str(r.exc_info[1])) for r in caplog.records)


def test_http_output_binding_sends_base64(runner, azurite):
    res = requests.post(runner.url("enqueue"), data="héllo output".encode(), timeout=5)
    assert res.status_code == 202
    q = QueueClient.from_connection_string(azurite, os.environ["Q_HTTP_OUT"])
    msgs = list(q.peek_messages(max_messages=5))
    assert len(msgs) == 1
    assert base64.b64decode(msgs[0].content).decode() == "héllo output"
    # nothing set -> nothing sent
    assert requests.post(runner.url("enqueue"), data=b"", timeout=5).status_code == 202
    assert len(list(q.peek_messages(max_messages=5))) == 1


def test_keep_alive(runner):
    conn = http.client.HTTPConnection("127.0.0.1", runner.port, timeout=5)
    conn.request("GET", "/api/hello")
    r1 = conn.getresponse()
    r1.read()
    sock = conn.sock
    assert r1.version == 11
    conn.request("GET", "/api/hello?name=again")
    r2 = conn.getresponse()
    assert r2.read() == b"hello-from-settings again"
    assert conn.sock is sock  # same TCP connection reused
    conn.close()


def test_keys_not_enforced_without_function_key(runner):
    assert requests.get(runner.url("keyed-admin"), timeout=5).status_code == 200


def test_function_key_enforced(azurite, helpers):
    env = {"AzureWebJobsStorage": azurite, **helpers.unique_queues("keys")}
    with Runner(helpers.SAMPLE_APP, port=0, env_overrides=env, function_key="s3cret") as r:
        assert requests.post(r.url("enqueue"), data=b"x", timeout=5).status_code == 401
        assert requests.post(r.url("enqueue"), data=b"x", headers={"x-functions-key": "wrong"},
                             timeout=5).status_code == 401
        assert requests.post(r.url("enqueue"), data=b"x", headers={"x-functions-key": "s3cret"},
                             timeout=5).status_code == 202
        assert requests.post(r.url("enqueue") + "?code=s3cret", data=b"x", timeout=5).status_code == 202
        assert requests.get(r.url("keyed-admin"), timeout=5).status_code == 401
        assert requests.get(r.url("keyed-admin") + "?code=s3cret", timeout=5).status_code == 200
        assert requests.get(r.url("hello"), timeout=5).status_code == 200  # anonymous
        assert r.function_stats("http_enqueue")["invocations"] == 2


def test_local_http_port_and_settings_file(azurite, helpers, app_copy, tmp_path):
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    root = app_copy()
    settings = tmp_path / "other.settings.json"
    settings.write_text(json.dumps({"Values": {"GREETING": "from-other-file"}, "Host": {"LocalHttpPort": free}}))
    env = {"AzureWebJobsStorage": azurite, **helpers.unique_queues("port")}
    before = os.environ.get("GREETING")
    os.environ.pop("GREETING", None)
    try:
        with Runner(root, settings_file=str(settings), env_overrides=env) as r:
            assert r.port == free
            assert requests.get(r.url("hello"), timeout=5).text == "from-other-file world"
    finally:
        if before is not None:
            os.environ["GREETING"] = before
