"""A small fault-injecting reverse proxy (HTTP/1.1 keep-alive, optional TLS) with a control API.

Put it in front of a service and script failures per path::

    python -m devstack.chaos_proxy --upstream https://127.0.0.1:8081 --port 9081 --tls [--seed 7]

    POST /__chaos/rules   [{"name": "cosmos-429", "path": "/docs", "probability": 0.1, "status": 429,
                            "headers": {"x-ms-retry-after-ms": "20"}, "body": {"code": "TooManyRequests"}}]
    GET  /__chaos/stats

Rules (a JSON list; ``POST`` replaces the list, ``DELETE`` clears it). For each proxied request the rules are
tried in order; the first rule whose ``path`` regex matches (``re.search`` on the path + query), whose
``method`` matches (optional), that has applications left (``times``, optional) and whose dice roll
(``probability``, default 1) hits is applied; otherwise the request is forwarded untouched. A rule does, after
sleeping ``delay_ms`` (default 0):

- ``"reset": true``: resets the client connection (TCP RST, no answer). With ``"phase": "response"`` the
  request is forwarded first and the connection is reset instead of answering (the work was done upstream,
  the answer is lost).
- ``"status": N``: answers N with ``headers`` and ``body`` (a string, or JSON for any other value) without
  calling the upstream.
- neither: forwards the request (added latency; longer than the client's timeout = a timeout).

Stats (``GET /__chaos/stats``, ``DELETE`` resets): ``requests``, ``forwarded``, ``upstream_errors`` (502
answered), ``by_status`` (answers sent), ``rules`` (applications per rule name).

With ``--tls`` it listens on HTTPS with a self-signed certificate generated at start (``cryptography``).
An HTTPS upstream is not verified (the local stand-ins are self-signed). Absolute upstream URLs in response
bodies and ``Location``/``Content-Location`` headers are rewritten to the proxy's own URL, so clients that
discover endpoints from a response (the Cosmos DB SDK reads ``writableLocations`` from the account
document) keep talking through the proxy.

In-process use (tests): ``ChaosProxyServer(upstream, port=0, tls=False).start()``; as a subprocess:
``devstack.stack.ChaosProxy``. Both expose ``.base_url`` and a control client with ``set_rules()``,
``rules()``, ``clear_rules()``, ``stats()``, ``reset_stats()``.
"""

from __future__ import annotations

import argparse
import datetime
import http.client
import ipaddress
import json
import os
import random
import re
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

CONTROL_PREFIX = "/__chaos/"
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
              "trailers", "transfer-encoding", "upgrade", "proxy-connection"}
RULE_KEYS = {"name", "path", "method", "probability", "status", "headers", "body", "delay_ms", "reset", "phase",
             "times"}
UPSTREAM_TIMEOUT = 120.0


class RuleError(ValueError):
    """A rule spec is invalid (answered 400 by the control API)."""


class Rule:
    def __init__(self, spec: dict, index: int):
        if not isinstance(spec, dict):
            raise RuleError(f"rule {index}: must be an object")
        unknown = set(spec) - RULE_KEYS
        if unknown:
            raise RuleError(f"rule {index}: unknown keys {sorted(unknown)}; known: {sorted(RULE_KEYS)}")
        self.spec = dict(spec)
        self.name = str(spec.get("name") or f"rule{index}")
        try:
            self.path = re.compile(spec.get("path", ""))
        except re.error as exc:
            raise RuleError(f"rule {self.name}: bad path regex: {exc}") from None
        self.method = spec.get("method")
        if self.method is not None and not isinstance(self.method, str):
            raise RuleError(f"rule {self.name}: method must be a string")
        self.probability = _number(spec.get("probability", 1.0), f"rule {self.name}: probability", 0.0, 1.0)
        self.delay_ms = _number(spec.get("delay_ms", 0), f"rule {self.name}: delay_ms", 0, 600_000)
        self.status = spec.get("status")
        if self.status is not None and (not isinstance(self.status, int) or not 100 <= self.status <= 599):
            raise RuleError(f"rule {self.name}: status must be an integer 100..599")
        self.reset = bool(spec.get("reset", False))
        self.phase = spec.get("phase", "request")
        if self.phase not in ("request", "response"):
            raise RuleError(f"rule {self.name}: phase must be 'request' or 'response'")
        if self.reset and self.status is not None:
            raise RuleError(f"rule {self.name}: reset and status exclude each other")
        headers = spec.get("headers", {})
        if not isinstance(headers, dict):
            raise RuleError(f"rule {self.name}: headers must be an object")
        self.headers = {str(k): str(v) for k, v in headers.items()}
        body = spec.get("body", "")
        if isinstance(body, str):
            self.body = body.encode("utf-8")
        else:
            self.body = json.dumps(body).encode("utf-8")
            self.headers.setdefault("Content-Type", "application/json")
        times = spec.get("times")
        if times is not None and (not isinstance(times, int) or times < 0):
            raise RuleError(f"rule {self.name}: times must be a non-negative integer")
        self.remaining = times

    def matches(self, method: str, path: str) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        return self.path.search(path) is not None


def _number(value: Any, what: str, lo: float, hi: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= value <= hi:
        raise RuleError(f"{what} must be a number {lo}..{hi}, got {value!r}")
    return float(value)


def parse_rules(data: Any) -> list[Rule]:
    if isinstance(data, dict) and "rules" in data:
        data = data["rules"]
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise RuleError("rules must be a JSON list of rule objects (or {\"rules\": [...]})")
    return [Rule(spec, i) for i, spec in enumerate(data)]


def self_signed_context(hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> ssl.SSLContext:
    """A server SSLContext with a fresh self-signed certificate (EC P-256, valid 30 days) for ``hosts``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "devstack chaos proxy")])
    sans: list[x509.GeneralName] = []
    for h in hosts:
        try:
            sans.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            sans.append(x509.DNSName(h))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .sign(key, hashes.SHA256()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with tempfile.TemporaryDirectory(prefix="chaos-proxy-") as tmp:
        cert_path, key_path = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
        with open(cert_path, "wb") as fh:
            fh.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as fh:
            fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    proxy: "ChaosProxyServer"

    def finish_request(self, request, client_address):
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.proxy._track(request, True)
        try:
            if self.proxy.ssl_context is not None:
                try:
                    request.settimeout(10)
                    tls = self.proxy.ssl_context.wrap_socket(request, server_side=True)
                    tls.settimeout(None)
                except (OSError, ssl.SSLError):
                    return
                self.proxy._track(tls, True)
                try:
                    self.RequestHandlerClass(tls, client_address, self)
                finally:
                    self.proxy._track(tls, False)
                    try:
                        tls.close()
                    except OSError:
                        pass
            else:
                self.RequestHandlerClass(request, client_address, self)
        finally:
            self.proxy._track(request, False)

    def handle_error(self, request, client_address):  # client went away etc.: not worth a traceback
        exc = sys.exc_info()[1]
        if not isinstance(exc, (OSError, ssl.SSLError, http.client.HTTPException)):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "devstack-chaos-proxy"
    server: _Server

    def log_message(self, fmt, *args):
        if self.server.proxy.access_log:
            sys.stderr.write("%s - %s\n" % (self.address_string(), fmt % args))

    def setup(self):
        super().setup()
        self._upstream: http.client.HTTPConnection | None = None

    def finish(self):
        try:
            super().finish()
        finally:
            if self._upstream is not None:
                self._upstream.close()

    # every method goes through one dispatcher
    def _dispatch(self):
        proxy = self.server.proxy
        body = self._read_body()
        if body is None:
            return
        if self.path.startswith(CONTROL_PREFIX):
            self._control(body)
            return
        proxy._count("requests")
        rule = proxy._pick(self.command, self.path)
        if rule is not None:
            if rule.delay_ms:
                time.sleep(rule.delay_ms / 1000.0)
            if rule.reset and rule.phase == "request":
                self._reset()
                return
            if rule.status is not None:
                self._send(rule.status, list(rule.headers.items()), rule.body)
                return
        status, headers, payload = self._forward(body)
        if rule is not None and rule.reset:  # phase == "response": the upstream did the work, the answer is lost
            self._reset()
            return
        self._send(status, headers, payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = do_OPTIONS = _dispatch

    def _read_body(self) -> bytes | None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            chunks = []
            while True:
                line = self.rfile.readline(65537)
                size = int(line.split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline(3)
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            self._send(400, [("Content-Type", "text/plain")], b"bad Content-Length")
            self.close_connection = True
            return None
        return self.rfile.read(length) if length else b""

    def _forward(self, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        proxy = self.server.proxy
        headers = [(k, v) for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP and k.lower() != "host"]
        headers.append(("Host", proxy.upstream_netloc))
        if body or self.command in ("POST", "PUT", "PATCH"):
            headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
            headers.append(("Content-Length", str(len(body))))
        for attempt in (1, 2):
            reused = self._upstream is not None
            if self._upstream is None:
                try:
                    self._upstream = proxy._connect()
                except OSError as exc:
                    return self._upstream_error(exc)
            conn = self._upstream
            try:
                conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers:
                    conn.putheader(k, v)
                conn.endheaders(body if body else None)
                resp = conn.getresponse()
                payload = resp.read()
                out = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP_BY_HOP
                       and k.lower() != "content-length"]
                if resp.will_close:
                    conn.close()
                    self._upstream = None
                proxy._count("forwarded")
                return resp.status, proxy._rewrite_headers(out), proxy._rewrite_body(payload)
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                conn.close()
                self._upstream = None
                if reused and attempt == 1:
                    continue  # the upstream closed an idle keep-alive connection: once more on a new one
                return self._upstream_error(exc)
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                self._upstream = None
                return self._upstream_error(exc)
        raise AssertionError("unreachable")

    def _upstream_error(self, exc: BaseException) -> tuple[int, list[tuple[str, str]], bytes]:
        self.server.proxy._count("upstream_errors")
        body = json.dumps({"error": "chaos proxy: upstream failed", "detail": f"{type(exc).__name__}: {exc}"})
        return 502, [("Content-Type", "application/json")], body.encode()

    def _send(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.server.proxy._count_status(status)
        reason = http.client.responses.get(status, "Unknown")
        lines = [f"HTTP/1.1 {status} {reason}"]
        lines += [f"{k}: {v}" for k, v in headers]
        no_body = self.command == "HEAD" or status in (204, 304) or 100 <= status < 200
        if not no_body or self.command == "HEAD":
            lines.append(f"Content-Length: {len(body)}")
        if self.close_connection:
            lines.append("Connection: close")
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if no_body else body)
        try:
            self.wfile.write(data)
        except OSError:
            self.close_connection = True

    def _reset(self) -> None:
        self.server.proxy._count("resets")
        try:
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
        try:
            self.connection.close()  # really closed (RST, no TLS close_notify) once rfile/wfile are closed
        except OSError:
            pass
        self.close_connection = True

    def _control(self, body: bytes) -> None:
        proxy = self.server.proxy
        path = self.path.split("?", 1)[0]
        try:
            if path == CONTROL_PREFIX + "health" and self.command == "GET":
                return self._json(200, {"status": "ok", "upstream": proxy.upstream})
            if path == CONTROL_PREFIX + "rules":
                if self.command == "GET":
                    return self._json(200, {"rules": proxy.rules()})
                if self.command == "POST":
                    try:
                        proxy.set_rules(json.loads(body or b"[]"))
                    except (ValueError, RuleError) as exc:
                        return self._json(400, {"error": str(exc)})
                    return self._json(200, {"rules": proxy.rules()})
                if self.command == "DELETE":
                    proxy.clear_rules()
                    return self._json(200, {"rules": []})
            if path == CONTROL_PREFIX + "stats":
                if self.command == "GET":
                    return self._json(200, proxy.stats())
                if self.command == "DELETE":
                    proxy.reset_stats()
                    return self._json(200, proxy.stats())
            return self._json(404, {"error": f"unknown control call {self.command} {path}"})
        except OSError:
            self.close_connection = True

    def _json(self, status: int, obj: Any) -> None:
        self._send(status, [("Content-Type", "application/json")], json.dumps(obj).encode())


class ChaosProxyServer:
    """The proxy, in-process. ``upstream``: ``http(s)://host:port``. ``port=0`` picks a free port."""

    def __init__(self, upstream: str, port: int = 0, tls: bool = False, *, host: str = "127.0.0.1",
                 seed: int | None = None, access_log: bool = False):
        parts = urlsplit(upstream)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"upstream must be http(s)://host:port, got {upstream!r}")
        self.upstream = f"{parts.scheme}://{parts.netloc}"
        self.upstream_scheme = parts.scheme
        self.upstream_host = parts.hostname
        self.upstream_port = parts.port or (443 if parts.scheme == "https" else 80)
        self.upstream_netloc = parts.netloc
        self.host = host
        self.tls = tls
        self.access_log = access_log
        self.ssl_context = self_signed_context((host, "localhost")) if tls else None
        self._upstream_ssl = ssl._create_unverified_context() if parts.scheme == "https" else None
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._rules: list[Rule] = []
        self._stats: dict[str, Any] = {}
        self.reset_stats()
        self._sockets: set = set()
        self._server = _Server((host, port), _Handler)
        self._server.proxy = self
        self.port = self._server.server_address[1]
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    # ---- lifecycle
    def start(self) -> "ChaosProxyServer":
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                        name=f"chaos-proxy-{self.port}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        with self._lock:
            socks = list(self._sockets)
        for s in socks:  # idle keep-alive connections block in their handler threads
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.1)

    def __enter__(self) -> "ChaosProxyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---- rules and stats (the control API calls these too)
    def set_rules(self, rules: Any) -> list[dict]:
        parsed = parse_rules(rules)
        with self._lock:
            self._rules = parsed
        return self.rules()

    def clear_rules(self) -> None:
        with self._lock:
            self._rules = []

    def rules(self) -> list[dict]:
        with self._lock:
            return [dict(r.spec, name=r.name, remaining=r.remaining) for r in self._rules]

    def stats(self) -> dict:
        with self._lock:
            return json.loads(json.dumps(self._stats))

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = {"requests": 0, "forwarded": 0, "upstream_errors": 0, "resets": 0, "by_status": {},
                           "rules": {}}

    # ---- internals
    def _pick(self, method: str, path: str) -> Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.remaining == 0 or not rule.matches(method, path):
                    continue
                if rule.probability < 1.0 and self._rng.random() >= rule.probability:
                    continue
                if rule.remaining is not None:
                    rule.remaining -= 1
                self._stats["rules"][rule.name] = self._stats["rules"].get(rule.name, 0) + 1
                return rule
        return None

    def _count(self, key: str) -> None:
        with self._lock:
            self._stats[key] += 1

    def _count_status(self, status: int) -> None:
        with self._lock:
            by = self._stats["by_status"]
            by[str(status)] = by.get(str(status), 0) + 1

    def _track(self, sock, add: bool) -> None:
        with self._lock:
            (self._sockets.add if add else self._sockets.discard)(sock)

    def _connect(self) -> http.client.HTTPConnection:
        if self.upstream_scheme == "https":
            conn: http.client.HTTPConnection = http.client.HTTPSConnection(
                self.upstream_host, self.upstream_port, timeout=UPSTREAM_TIMEOUT, context=self._upstream_ssl)
        else:
            conn = http.client.HTTPConnection(self.upstream_host, self.upstream_port, timeout=UPSTREAM_TIMEOUT)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _upstream_origins(self) -> list[bytes]:
        hosts = {self.upstream_host}
        if self.upstream_host in ("127.0.0.1", "localhost"):
            hosts |= {"127.0.0.1", "localhost"}
        return [f"{self.upstream_scheme}://{h}:{self.upstream_port}".encode() for h in hosts]

    def _rewrite_body(self, payload: bytes) -> bytes:
        for origin in self._upstream_origins():
            if origin in payload:
                payload = payload.replace(origin, self.base_url.encode())
        return payload

    def _rewrite_headers(self, headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
        out = []
        for k, v in headers:
            if k.lower() in ("location", "content-location"):
                v = self._rewrite_body(v.encode("latin-1")).decode("latin-1")
            out.append((k, v))
        return out


class ChaosControlClient:
    """HTTP client for a proxy's ``/__chaos/`` API (TLS not verified)."""

    def __init__(self, base_url: str, timeout: float = 5.0):
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self._ctx = ssl._create_unverified_context()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base_url + CONTROL_PREFIX + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout, context=self._ctx) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            raise RuleError(f"{method} {path}: {exc.code} {exc.read().decode(errors='replace')}") from None

    def health(self) -> dict:
        return self._call("GET", "health")

    def set_rules(self, rules: list[dict]) -> list[dict]:
        return self._call("POST", "rules", rules)["rules"]

    def rules(self) -> list[dict]:
        return self._call("GET", "rules")["rules"]

    def clear_rules(self) -> None:
        self._call("DELETE", "rules")

    def stats(self) -> dict:
        return self._call("GET", "stats")

    def reset_stats(self) -> dict:
        return self._call("DELETE", "stats")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m devstack.chaos_proxy", description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="http(s)://host:port of the service behind the proxy")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = a free port (read it from the ready line)")
    p.add_argument("--tls", action="store_true", help="listen on HTTPS with a self-signed certificate")
    p.add_argument("--seed", type=int, default=None, help="seed of the rules' dice")
    p.add_argument("--rules", default=None, help="initial rules: a JSON list or @file")
    p.add_argument("--access-log", action="store_true")
    args = p.parse_args(argv)
    proxy = ChaosProxyServer(args.upstream, args.port, args.tls, host=args.host, seed=args.seed,
                             access_log=args.access_log)
    if args.rules:
        text = open(args.rules[1:], encoding="utf-8").read() if args.rules.startswith("@") else args.rules
        proxy.set_rules(json.loads(text))
    def _on_sigterm(signum: int, frame: object) -> None:
        raise KeyboardInterrupt  # unwinds serve_forever in the main thread; no threads or locks from a handler

    signal.signal(signal.SIGTERM, _on_sigterm)
    print(f"chaos proxy ready on {proxy.base_url} -> {proxy.upstream}", flush=True)
    try:
        proxy.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        proxy.stop()  # serve_forever has returned, so shutdown() does not wait
    return 0


if __name__ == "__main__":
    sys.exit(main())
