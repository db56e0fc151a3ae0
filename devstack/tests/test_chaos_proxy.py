"""The fault-injecting reverse proxy (devstack/chaos_proxy.py): forwarding, rules, control API, TLS."""

from __future__ import annotations

import json
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from devstack.chaos_proxy import ChaosControlClient, ChaosProxyServer, RuleError
from devstack.stack import ChaosProxy


class _Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _any(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n) if n else b""
        srv = self.server
        with srv.lock:
            srv.seen.append((self.command, self.path, body, self.client_address[1]))
        if self.path.startswith("/slow"):
            time.sleep(0.5)
        payload = json.dumps({"method": self.command, "path": self.path, "body": body.decode(),
                              "host": self.headers.get("Host"),
                              "self": f"http://127.0.0.1:{srv.server_address[1]}/x"}).encode()
        self.send_response(201 if self.command == "POST" else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Upstream", "echo")
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = _any


@pytest.fixture
def upstream():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Echo)
    srv.daemon_threads = True
    srv.lock, srv.seen = threading.Lock(), []
    t = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


@pytest.fixture
def proxy(upstream):
    with ChaosProxyServer(f"http://127.0.0.1:{upstream.server_address[1]}", port=0, seed=1) as p:
        yield p


def test_forwards_method_path_body_and_rewrites_upstream_urls(proxy, upstream):
    s = requests.Session()
    r = s.post(proxy.base_url + "/a/b?q=1", data=b"hello", timeout=5)
    assert r.status_code == 201 and r.headers["X-Upstream"] == "echo"
    body = r.json()
    assert (body["method"], body["path"], body["body"]) == ("POST", "/a/b?q=1", "hello")
    assert body["host"] == f"127.0.0.1:{upstream.server_address[1]}"
    assert body["self"] == proxy.base_url + "/x"  # absolute upstream URLs point back at the proxy
    assert s.get(proxy.base_url + "/c", timeout=5).json()["method"] == "GET"
    st = proxy.stats()
    assert st["requests"] == 2 and st["forwarded"] == 2 and st["by_status"] == {"201": 1, "200": 1}


def test_keep_alive_on_both_sides(proxy, upstream):
    s = requests.Session()
    for i in range(5):
        assert s.get(f"{proxy.base_url}/k{i}", timeout=5).status_code == 200
    assert len({port for *_, port in upstream.seen}) == 1  # one upstream connection for one client connection


def test_status_rule_answers_without_calling_upstream(proxy, upstream):
    proxy.set_rules([{"name": "throttle", "path": "^/docs", "status": 429,
                      "headers": {"x-ms-retry-after-ms": "20"}, "body": {"code": "TooManyRequests"}}])
    r = requests.get(proxy.base_url + "/docs/1", timeout=5)
    assert r.status_code == 429 and r.headers["x-ms-retry-after-ms"] == "20"
    assert r.json() == {"code": "TooManyRequests"} and r.headers["Content-Type"] == "application/json"
    assert upstream.seen == []
    assert requests.get(proxy.base_url + "/other", timeout=5).status_code == 200  # path does not match
    assert proxy.stats()["rules"] == {"throttle": 1}


def test_probability_times_and_method(proxy, upstream):
    proxy.set_rules([{"name": "never", "path": "", "probability": 0.0, "status": 500},
                     {"name": "twice", "path": "", "method": "POST", "times": 2, "status": 503}])
    s = requests.Session()
    assert [s.post(proxy.base_url + "/p", timeout=5).status_code for _ in range(3)] == [503, 503, 201]
    assert s.get(proxy.base_url + "/p", timeout=5).status_code == 200
    assert proxy.stats()["rules"] == {"twice": 2}
    assert proxy.rules()[1]["remaining"] == 0


def test_probability_is_roughly_honoured(proxy):
    proxy.set_rules([{"name": "half", "path": "", "probability": 0.5, "status": 503}])
    s = requests.Session()
    codes = [s.get(proxy.base_url + "/x", timeout=5).status_code for _ in range(200)]
    assert 60 < codes.count(503) < 140


def test_delay_makes_a_client_timeout(proxy):
    proxy.set_rules([{"name": "slow", "path": "^/t", "delay_ms": 800}])
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(proxy.base_url + "/t", timeout=(1, 0.3))
    start = time.monotonic()
    assert requests.get(proxy.base_url + "/t", timeout=5).status_code == 200
    assert time.monotonic() - start >= 0.75


def test_reset_before_and_after_the_upstream(proxy, upstream):
    proxy.set_rules([{"name": "rst", "path": "^/r", "reset": True, "times": 1},
                     {"name": "lost-answer", "path": "^/w", "reset": True, "phase": "response", "times": 1}])
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.get(proxy.base_url + "/r", timeout=5)
    assert upstream.seen == []
    with pytest.raises(requests.exceptions.ConnectionError):
        requests.post(proxy.base_url + "/w", data=b"work", timeout=5)
    assert [(m, p, b) for m, p, b, _ in upstream.seen] == [("POST", "/w", b"work")]  # done upstream, answer lost
    assert requests.get(proxy.base_url + "/r", timeout=5).status_code == 200  # times exhausted
    assert proxy.stats()["resets"] == 2


def test_upstream_down_is_502(upstream):
    port = upstream.server_address[1]
    upstream.shutdown()
    upstream.server_close()
    with ChaosProxyServer(f"http://127.0.0.1:{port}", port=0) as p:
        r = requests.get(p.base_url + "/x", timeout=5)
    assert r.status_code == 502 and "upstream failed" in r.json()["error"]


def test_control_api(proxy):
    c = ChaosControlClient(proxy.base_url)
    assert c.health()["status"] == "ok"
    rules = c.set_rules([{"name": "a", "path": "^/a", "status": 418}])
    assert rules[0]["name"] == "a" and c.rules()[0]["status"] == 418
    assert requests.get(proxy.base_url + "/a", timeout=5).status_code == 418
    assert c.stats()["rules"] == {"a": 1}
    assert c.reset_stats()["requests"] == 0
    c.clear_rules()
    assert c.rules() == []
    for bad in ([{"path": "("}], [{"probability": 2}], [{"status": 42}], [{"bogus": 1}], [{"reset": True, "status": 500}],
                "not a list"):
        with pytest.raises(RuleError):
            c.set_rules(bad)
    with pytest.raises(RuleError):
        proxy.set_rules([{"delay_ms": -1}])


def test_tls_listener_with_self_signed_certificate(upstream):
    with ChaosProxyServer(f"http://127.0.0.1:{upstream.server_address[1]}", port=0, tls=True) as p:
        assert p.base_url.startswith("https://")
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(p.base_url + "/x", timeout=5)  # self-signed: verification fails
        s = requests.Session()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert [s.get(p.base_url + f"/x{i}", timeout=5, verify=False).status_code for i in range(3)] == [200] * 3
            p.set_rules([{"path": "", "reset": True, "times": 1}])
            with pytest.raises(requests.exceptions.ConnectionError):
                requests.get(p.base_url + "/x", timeout=5, verify=False)
        assert ChaosControlClient(p.base_url).health()["status"] == "ok"


@pytest.mark.stack
def test_cosmos_sdk_through_tls_proxy_retries_429_by_itself(cosmos_standin, log_dir):
    """HTTPS in front of the HTTPS Cosmos stand-in; the SDK keeps to the proxy (account document rewritten)
    and retries injected 429s (x-ms-retry-after-ms) on its own."""
    from azure.cosmos import CosmosClient, PartitionKey

    with ChaosProxy(cosmos_standin.endpoint.rstrip("/"), 0, tls=True, name="chaos-cosmos-test", seed=3,
                    log_dir=log_dir) as proxy:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            client = CosmosClient(proxy.endpoint, credential=cosmos_standin.key, connection_verify=False)
            db = client.create_database_if_not_exists("chaos_proxy_test")
            container = db.create_container_if_not_exists("items", partition_key=PartitionKey(path="/user_id"))
            proxy.control.reset_stats()
            proxy.control.set_rules([{"name": "cosmos-429", "path": "/docs", "times": 3, "status": 429,
                                      "headers": {"x-ms-retry-after-ms": "10", "x-ms-substatus": "3200"},
                                      "body": {"code": "TooManyRequests", "message": "Request rate is large."}}])
            container.upsert_item({"id": "u1", "user_id": "u1", "n": 1})
            assert container.read_item("u1", partition_key="u1")["n"] == 1
        st = proxy.control.stats()
        assert st["rules"] == {"cosmos-429": 3} and st["by_status"]["429"] == 3
        assert st["forwarded"] >= 2  # every call went through the proxy, not to the stand-in's own address


@pytest.mark.stack
def test_chaos_proxy_service_subprocess(upstream, log_dir):
    with ChaosProxy(f"http://127.0.0.1:{upstream.server_address[1]}", 0, log_dir=log_dir, seed=1) as svc:
        assert svc.running and svc.control.health()["status"] == "ok"
        svc.control.set_rules([{"name": "down", "path": "^/svc", "status": 503, "times": 1}])
        assert requests.get(svc.base_url + "/svc", timeout=5).status_code == 503
        assert requests.get(svc.base_url + "/svc", timeout=5).status_code == 200
        assert svc.control.stats()["rules"] == {"down": 1}
    assert not svc.running
