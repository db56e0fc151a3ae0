"""Local Application Insights ingestion sink: records the envelopes exporters POST to ``/v2.1/track``.

Point an app at it with the connection string
``InstrumentationKey=00000000-0000-0000-0000-000000000000;IngestionEndpoint=http://127.0.0.1:<port>/``.

Endpoints: ``POST /v2.1/track`` (JSON list of envelopes, or newline-delimited JSON, optionally gzip),
answers like the real service ``{"itemsReceived", "itemsAccepted", "errors": []}``;
``GET /__sink/envelopes[?wait_for=N&timeout=S]`` (all recorded, oldest first);
``DELETE /__sink/envelopes``; ``GET /__sink/health``.

Run: ``python -m devstack.telemetry_sink --port 8099``, or in-process :class:`TelemetrySink`,
or as a stack service :class:`TelemetrySinkService`.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

from devstack.stack import Service, _http_status

INSTRUMENTATION_KEY = "00000000-0000-0000-0000-000000000000"


def connection_string(base_url: str) -> str:
    """An Application Insights connection string whose ingestion endpoint is ``base_url``."""
    return f"InstrumentationKey={INSTRUMENTATION_KEY};IngestionEndpoint={base_url.rstrip('/')}/"


class _Store:
    def __init__(self) -> None:
        self.envelopes: list[dict] = []
        self.cond = threading.Condition()

    def add(self, items: list[dict]) -> None:
        with self.cond:
            self.envelopes.extend(items)
            self.cond.notify_all()

    def wait(self, n: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        with self.cond:
            while len(self.envelopes) < n and (left := deadline - time.monotonic()) > 0:
                self.cond.wait(left)
            return list(self.envelopes)


def _parse(body: bytes, encoding: str | None) -> list[dict]:
    if encoding == "gzip" or body[:2] == b"\x1f\x8b":
        body = gzip.decompress(body)
    text = body.decode("utf-8").strip()
    if text.startswith("["):
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    store: _Store

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, payload: object) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if urlparse(self.path).path.rstrip("/") not in ("/v2.1/track", "/v2/track"):
            return self._send(404, {"error": "unknown path"})
        try:
            items = _parse(body, self.headers.get("Content-Encoding"))
        except (ValueError, OSError) as exc:
            return self._send(400, {"itemsReceived": 0, "itemsAccepted": 0,
                                    "errors": [{"index": 0, "statusCode": 400, "message": str(exc)}]})
        self.store.add(items)
        self._send(200, {"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []})

    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path == "/__sink/health":
            return self._send(200, {"status": "ok"})
        if url.path == "/__sink/envelopes":
            q = parse_qs(url.query)
            n = int(q.get("wait_for", ["0"])[0])
            items = self.store.wait(n, float(q.get("timeout", ["5"])[0])) if n else list(self.store.envelopes)
            return self._send(200, {"count": len(items), "envelopes": items})
        self._send(404, {"error": "unknown path"})

    def do_DELETE(self) -> None:
        if urlparse(self.path).path == "/__sink/envelopes":
            with self.store.cond:
                self.store.envelopes.clear()
            return self._send(200, {"count": 0})
        self._send(404, {"error": "unknown path"})


class TelemetrySink:
    """In-process sink on ``host:port`` (0 = a free port)."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0):
        self.store = _Store()
        handler = type("Handler", (_Handler,), {"store": self.store})
        self._server = ThreadingHTTPServer((host, port), handler)
        self._server.daemon_threads = True
        self.port = self._server.server_address[1]
        self.base_url = f"http://{host}:{self.port}"
        self.connection_string = connection_string(self.base_url)
        self._thread: threading.Thread | None = None

    def start(self) -> "TelemetrySink":
        self._thread = threading.Thread(target=self._server.serve_forever, name="telemetry-sink", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> "TelemetrySink":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def envelopes(self) -> list[dict]:
        return list(self.store.envelopes)

    def clear(self) -> None:
        with self.store.cond:
            self.store.envelopes.clear()


def fetch_envelopes(base_url: str, wait_for: int = 0, timeout: float = 5.0) -> list[dict]:
    """The envelopes a (possibly remote-process) sink recorded."""
    url = f"{base_url.rstrip('/')}/__sink/envelopes?wait_for={wait_for}&timeout={timeout}"
    with urllib.request.urlopen(url, timeout=timeout + 5) as resp:
        return json.loads(resp.read())["envelopes"]


class TelemetrySinkService(Service):
    """The sink as a subprocess of a :class:`~devstack.stack.LocalStack`."""

    name = "telemetry-sink"
    default_port = 8099

    def command(self) -> list[str]:
        return [sys.executable, "-m", "devstack.telemetry_sink", "--host", self.host, "--port", str(self.port)]

    def is_ready(self) -> bool:
        return _http_status(f"{self.base_url}/__sink/health") == 200

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def connection_string(self) -> str:
        return connection_string(self.base_url)

    def envelopes(self, wait_for: int = 0, timeout: float = 5.0) -> list[dict]:
        return fetch_envelopes(self.base_url, wait_for, timeout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.telemetry_sink", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8099)
    args = parser.parse_args(argv)
    sink = TelemetrySink(args.host, args.port)
    print(f"telemetry sink ready on {sink.base_url} ({sink.connection_string})", flush=True)
    try:
        sink._server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
