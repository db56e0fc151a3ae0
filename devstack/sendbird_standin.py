"""SendBird Platform API stand-in (the bot "send message" endpoint) for local runs and tests.

Run as a process::

    python -m devstack.sendbird_standin --port 8090 --api-token TOKEN --bot-user-id ssg_bot

or in-process (tests)::

    with SendBirdStandInServer(port=0, api_token="t", bot_user_id="ssg_bot") as sb:
        ...  # sb.base_url, sb.messages(), sb.add_faults([...]), sb.wait_for_messages(1)

Platform API served: ``POST /v3/bots/{bot_userid}/send`` (see devstack/README.md).
Control API (tests, fault injection) under ``/__standin/``:

- ``GET    /__standin/health``
- ``GET    /__standin/messages[?wait_for=N&timeout=S&channel_url=C]``  messages + counters
- ``DELETE /__standin/messages``   reset messages, counters, dedup keys and pending faults
- ``GET    /__standin/attempts``   the last 1000 send attempts (status, fault, dedup...)
- ``GET    /__standin/faults``     pending scripted faults
- ``POST   /__standin/faults``     append scripted faults (a JSON list, one object, or {"faults": [...]})
- ``DELETE /__standin/faults``     drop pending faults

The server is a stdlib ``ThreadingHTTPServer`` speaking HTTP/1.1 with keep-alive
(werkzeug's dev server always answers ``Connection: close``, so it is not used).
"""

from __future__ import annotations

import argparse
import collections
import hmac
import json
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, Iterable

from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = [
    "SendBirdStandInServer",
    "SendBirdControlClient",
    "StandInError",
    "main",
]

# SendBird error codes used by the stand-in (SendBird Platform API error-code table).
CODE_STRING_REQUIRED = 400100
CODE_BOOLEAN_REQUIRED = 400104
CODE_JSON_REQUIRED = 400103
CODE_MISSING_FIELD = 400105
CODE_INVALID_VALUE = 400151
CODE_NOT_FOUND = 400201
CODE_UNAUTHORIZED = 400401
CODE_RATE_LIMITED = 500910
CODE_INTERNAL = 500901

FIELDS_STR = ("message", "channel_url", "custom_type", "data", "dedup_id", "message_type")
FIELDS_BOOL = ("send_push", "mark_as_read")
ALLOWED_FIELDS = frozenset(FIELDS_STR + FIELDS_BOOL)
REQUIRED_FIELDS = ("message", "channel_url")

FAULT_KEYS = frozenset({"status", "retry_after", "delay_ms", "times", "code", "message", "limit"})
MAX_WAIT_SECONDS = 60.0
FIRST_MESSAGE_ID = 100_000_001


class StandInError(RuntimeError):
    """Raised by the control client for unexpected answers and wait timeouts."""


def _error_body(code: int, message: str) -> dict:
    return {"error": True, "code": code, "message": message}


def validate_fault(spec: Any) -> dict:
    """Validate one scripted fault; return a normalised copy (raises ValueError)."""
    if not isinstance(spec, dict):
        raise ValueError("each fault must be a JSON object")
    unknown = set(spec) - FAULT_KEYS
    if unknown:
        raise ValueError(f"unknown fault key(s): {sorted(unknown)}")
    fault: dict = {}
    if "status" in spec:
        status = spec["status"]
        if not isinstance(status, int) or isinstance(status, bool) or not 400 <= status <= 599:
            raise ValueError("fault 'status' must be an int in 400..599")
        fault["status"] = status
    if "delay_ms" in spec:
        delay = spec["delay_ms"]
        if not isinstance(delay, (int, float)) or isinstance(delay, bool) or not 0 <= delay <= 60000:
            raise ValueError("fault 'delay_ms' must be a number in 0..60000")
        fault["delay_ms"] = delay
    if "status" not in fault and "delay_ms" not in fault:
        raise ValueError("a fault needs 'status' and/or 'delay_ms'")
    times = spec.get("times", 1)
    if not isinstance(times, int) or isinstance(times, bool) or times < 1:
        raise ValueError("fault 'times' must be an int >= 1")
    fault["times"] = times
    if "retry_after" in spec:
        ra = spec["retry_after"]
        if not isinstance(ra, (int, float)) or isinstance(ra, bool) or ra < 0:
            raise ValueError("fault 'retry_after' must be a number >= 0")
        fault["retry_after"] = ra
    if "code" in spec:
        if not isinstance(spec["code"], int) or isinstance(spec["code"], bool):
            raise ValueError("fault 'code' must be an int")
        fault["code"] = spec["code"]
    for key in ("message", "limit"):
        if key in spec:
            if not isinstance(spec[key], str):
                raise ValueError(f"fault '{key}' must be a string")
            fault[key] = spec[key]
    return fault


def _normalise_faults(payload: Any) -> list[dict]:
    if isinstance(payload, dict) and "faults" in payload and len(payload) == 1:
        payload = payload["faults"]
    if isinstance(payload, dict):
        payload = [payload]
    if not isinstance(payload, list):
        raise ValueError("expected a JSON list of faults, one fault object, or {\"faults\": [...]}")
    return [validate_fault(item) for item in payload]


def validate_send_body(body: Any) -> tuple[dict | None, tuple[int, str] | None]:
    """Validate a send-message body. Returns (fields, None) or (None, (code, message))."""
    if not isinstance(body, dict):
        return None, (CODE_JSON_REQUIRED, "Invalid value: the request body must be a JSON object.")
    for name in body:
        if name not in ALLOWED_FIELDS:
            return None, (CODE_INVALID_VALUE, f'Invalid value: unknown field "{name}".')
    for name in REQUIRED_FIELDS:
        if name not in body:
            return None, (CODE_MISSING_FIELD, f'"{name}" is required.')
    for name in FIELDS_STR:
        if name in body and not isinstance(body[name], str):
            return None, (CODE_STRING_REQUIRED, f'"{name}" must be a string.')
    for name in FIELDS_BOOL:
        if name in body and not isinstance(body[name], bool):
            return None, (CODE_BOOLEAN_REQUIRED, f'"{name}" must be a boolean.')
    if not body["message"].strip():
        return None, (CODE_INVALID_VALUE, 'Invalid value: "message" must not be empty.')
    if not body["channel_url"]:
        return None, (CODE_INVALID_VALUE, 'Invalid value: "channel_url" must not be empty.')
    if "message_type" in body and body["message_type"] != "MESG":
        return None, (CODE_INVALID_VALUE, 'Invalid value: "message_type" must be "MESG".')
    if "dedup_id" in body and not body["dedup_id"]:
        return None, (CODE_INVALID_VALUE, 'Invalid value: "dedup_id" must not be empty.')
    return body, None


class _State:
    """All recorded state; every access holds ``cond``."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._reset_locked()

    def _reset_locked(self) -> None:
        self.messages: list[dict] = []
        self.by_dedup: dict[tuple[str, str], dict] = {}
        self.attempts = 0
        self.accepted = 0
        self.deduplicated = 0
        self.rejected: collections.Counter[int] = collections.Counter()
        self.faults: collections.deque[dict] = collections.deque()
        self.faults_applied = 0
        self.attempt_log: collections.deque[dict] = collections.deque(maxlen=1000)
        self.next_id = FIRST_MESSAGE_ID
        self.last_created_at = 0

    def reset(self) -> None:
        with self.cond:
            self._reset_locked()
            self.cond.notify_all()

    def counters_locked(self) -> dict:
        return {
            "attempts": self.attempts,
            "accepted": self.accepted,
            "deduplicated": self.deduplicated,
            "rejected": {str(k): v for k, v in sorted(self.rejected.items())},
            "rejected_total": sum(self.rejected.values()),
            "faults_applied": self.faults_applied,
            "faults_pending": sum(f["times"] for f in self.faults),
        }

    def snapshot_locked(self, channel_url: str | None = None) -> dict:
        msgs = [m for m in self.messages if channel_url is None or m["channel_url"] == channel_url]
        return {
            "messages": [json.loads(json.dumps(m)) for m in msgs],
            "count": len(msgs),
            "counters": self.counters_locked(),
        }

    def take_fault_locked(self) -> dict | None:
        if not self.faults:
            return None
        head = self.faults[0]
        head["times"] -= 1
        if head["times"] <= 0:
            self.faults.popleft()
        self.faults_applied += 1
        return {k: v for k, v in head.items() if k != "times"}


_Reply = tuple  # (status, json payload, extra headers)


class _Req:
    """The parts of an HTTP request the dispatcher needs."""

    __slots__ = ("method", "path", "args", "headers")

    def __init__(self, method: str, path: str, args: dict, headers: Any) -> None:
        self.method = method
        self.path = path
        self.args = args
        self.headers = headers


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: every answer carries Content-Length
    server_version = "SendBirdStandIn/1.0"

    def version_string(self) -> str:
        return self.server_version
    disable_nagle_algorithm = True  # TCP_NODELAY: no 40 ms delayed-ACK stalls on keep-alive

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, True)  # type: ignore[attr-defined]

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, False)  # type: ignore[attr-defined]

    def _read_body(self) -> bytes:
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        raw = self._read_body()  # always drained, so keep-alive connections stay in sync
        split = urllib.parse.urlsplit(self.path)
        req = _Req(self.command, urllib.parse.unquote(split.path),
                   dict(urllib.parse.parse_qsl(split.query)), self.headers)
        standin: SendBirdStandInServer = self.server.standin  # type: ignore[attr-defined]
        try:
            status, payload, headers = standin._dispatch(req, raw)
        except Exception as exc:  # pragma: no cover - defensive
            status, payload, headers = 500, _error_body(CODE_INTERNAL, f"stand-in error: {exc!r}"), {}
        body = json.dumps(payload).encode("utf-8")
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _handle

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.standin.access_log:  # type: ignore[attr-defined]
            super().log_message(format, *args)


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], standin: "SendBirdStandInServer") -> None:
        self.standin = standin
        self._conns: set = set()
        self._conns_lock = threading.Lock()
        super().__init__(address, _Handler)

    def track(self, conn: Any, add: bool) -> None:
        with self._conns_lock:
            (self._conns.add if add else self._conns.discard)(conn)

    def close_connections(self) -> None:
        """Drop idle keep-alive connections (their handler threads would serve on after stop)."""
        import socket as _socket
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(_socket.SHUT_RDWR)
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, TimeoutError)):
            return
        super().handle_error(request, client_address)


class SendBirdStandInServer:
    """In-process SendBird Platform API stand-in (threaded, HTTP/1.1 keep-alive).

    ``port=0`` picks a free port; read ``.port`` / ``.base_url`` after ``start()``.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        api_token: str = "standin-api-token",
        bot_user_id: str | Iterable[str] = "ssg_bot",
        access_log: bool = False,
    ) -> None:
        self.host = host
        self._requested_port = port
        self.api_token = api_token
        ids = [bot_user_id] if isinstance(bot_user_id, str) else list(bot_user_id)
        if not ids:
            raise ValueError("at least one bot_user_id is required")
        self.bot_user_ids = tuple(ids)
        self.bot_user_id = ids[0]
        self.access_log = access_log
        self._state = _State()
        self._server: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ lifecycle
    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("server not started")
        return self._server.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> "SendBirdStandInServer":
        if self._server is not None:
            return self
        try:
            server = _HTTPServer((self.host, self._requested_port), self)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot bind {self.host}:{self._requested_port}: {exc.strerror}") from exc
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2},
            name=f"sendbird-standin:{self.port}", daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> "SendBirdStandInServer":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ------------------------------------------------------------------ in-process control
    def messages(self, channel_url: str | None = None) -> list[dict]:
        with self._state.cond:
            return self._state.snapshot_locked(channel_url)["messages"]

    def counters(self) -> dict:
        with self._state.cond:
            return self._state.counters_locked()

    def snapshot(self) -> dict:
        with self._state.cond:
            return self._state.snapshot_locked()

    def attempts(self) -> list[dict]:
        with self._state.cond:
            return list(self._state.attempt_log)

    def reset(self) -> None:
        self._state.reset()

    def add_faults(self, faults: list[dict] | dict) -> list[dict]:
        normalised = _normalise_faults(faults)
        with self._state.cond:
            self._state.faults.extend(normalised)
            return [dict(f) for f in self._state.faults]

    def pending_faults(self) -> list[dict]:
        with self._state.cond:
            return [dict(f) for f in self._state.faults]

    def clear_faults(self) -> None:
        with self._state.cond:
            self._state.faults.clear()

    def wait_for_messages(self, n: int, timeout: float = 5.0, channel_url: str | None = None) -> list[dict]:
        """Block until at least ``n`` visible messages are recorded; raise TimeoutError otherwise."""
        snap = self._wait(n, timeout, channel_url)
        if snap["count"] < n:
            raise TimeoutError(
                f"waited {timeout}s for {n} message(s), got {snap['count']}; counters={snap['counters']}"
            )
        return snap["messages"]

    def health(self) -> dict:
        return {"status": "ok", "bot_user_ids": list(self.bot_user_ids)}

    # ------------------------------------------------------------------ internals
    def _wait(self, n: int, timeout: float, channel_url: str | None) -> dict:
        deadline = time.monotonic() + max(0.0, min(timeout, MAX_WAIT_SECONDS))
        state = self._state

        def count() -> int:
            if channel_url is None:
                return len(state.messages)
            return sum(1 for m in state.messages if m["channel_url"] == channel_url)

        with state.cond:
            while count() < n:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                state.cond.wait(remaining)
            return state.snapshot_locked(channel_url)

    @staticmethod
    def _json(payload: Any, status: int = 200, headers: dict | None = None) -> _Reply:
        return status, payload, headers or {}

    def _dispatch(self, request: _Req, raw: bytes) -> _Reply:
        path = request.path
        parts = path.strip("/").split("/")
        if len(parts) == 4 and parts[0] == "v3" and parts[1] == "bots" and parts[3] == "send":
            if request.method != "POST":
                return self._json(_error_body(CODE_NOT_FOUND, "Method not allowed."), 405,
                                  headers={"Allow": "POST"})
            return self._send(request, parts[2], raw)
        if parts[0] == "__standin":
            return self._control(request, "/".join(parts[1:]), raw)
        return self._json(_error_body(CODE_NOT_FOUND, f"Resource not found: {path}"), 404)

    # ---- platform API
    def _reject(self, attempt: dict, status: int, code: int, message: str,
                headers: dict | None = None) -> _Reply:
        with self._state.cond:
            self._state.rejected[status] += 1
            attempt["status"] = status
            attempt["error_code"] = code
            self._state.attempt_log.append(attempt)
        return self._json(_error_body(code, message), status, headers)

    def _send(self, request: _Req, bot_userid: str, raw: bytes) -> _Reply:
        state = self._state
        with state.cond:
            state.attempts += 1
            attempt_no = state.attempts
            fault = state.take_fault_locked()
        attempt: dict = {"attempt": attempt_no, "at_ms": int(time.time() * 1000), "bot_userid": bot_userid}
        if fault:
            attempt["fault"] = fault
            if fault.get("delay_ms"):
                time.sleep(fault["delay_ms"] / 1000.0)
            status = fault.get("status")
            if status is not None:
                headers: dict[str, str] = {}
                if status == 429:
                    retry_after = fault.get("retry_after", 1)
                    ra_text = str(int(retry_after)) if float(retry_after).is_integer() else str(retry_after)
                    headers = {
                        "X-RateLimit-Limit": fault.get("limit", "100;w=60"),
                        "X-RateLimit-Remaining": "0",
                        "X-RateLimit-RetryAfter": ra_text,
                    }
                    code = fault.get("code", CODE_RATE_LIMITED)
                    message = fault.get("message", "Too many requests. Rate limit exceeded.")
                elif status >= 500:
                    code = fault.get("code", CODE_INTERNAL)
                    message = fault.get("message", f"Internal server error (injected {status}).")
                else:
                    code = fault.get("code", CODE_INVALID_VALUE)
                    message = fault.get("message", f"Injected error {status}.")
                return self._reject(attempt, status, code, message, headers)

        token = request.headers.get("Api-Token")
        if not token or not hmac.compare_digest(token.encode(), self.api_token.encode()):
            return self._reject(attempt, 401, CODE_UNAUTHORIZED,
                                "Invalid value: \"Api-Token\"." if token else "\"Api-Token\" header is required.")
        if bot_userid not in self.bot_user_ids:
            return self._reject(attempt, 404, CODE_NOT_FOUND, f'"bot_userid" not found: {bot_userid}.')
        try:
            body = json.loads(raw.decode("utf-8")) if raw else None
        except (UnicodeDecodeError, json.JSONDecodeError):
            return self._reject(attempt, 400, CODE_JSON_REQUIRED, "Invalid value: the request body is not valid JSON.")
        fields, error = validate_send_body(body)
        if error is not None:
            return self._reject(attempt, 400, *error)
        assert fields is not None

        with state.cond:
            dedup_key = (fields["channel_url"], fields["dedup_id"]) if "dedup_id" in fields else None
            existing = state.by_dedup.get(dedup_key) if dedup_key else None
            if existing is not None:
                state.deduplicated += 1
                existing["_standin"]["send_attempts"] += 1
                attempt.update(status=200, message_id=existing["message_id"], deduplicated=True)
                state.attempt_log.append(attempt)
                return self._json(_public(existing))
            now_ms = max(int(time.time() * 1000), state.last_created_at)
            state.last_created_at = now_ms
            message_id = state.next_id
            state.next_id += 1
            message = {
                "message_id": message_id,
                "type": "MESG",
                "custom_type": fields.get("custom_type", ""),
                "channel_url": fields["channel_url"],
                "user": {
                    "user_id": bot_userid,
                    "nickname": bot_userid,
                    "profile_url": "",
                    "metadata": {},
                    "role": "",
                    "is_active": True,
                },
                "mention_type": "users",
                "mentioned_users": [],
                "is_removed": False,
                "message": fields["message"],
                "translations": {},
                "data": fields.get("data", ""),
                "created_at": now_ms,
                "updated_at": 0,
                "message_survival_seconds": -1,
                "silent": False,
                "_standin": {
                    "send_push": fields.get("send_push", True),
                    "mark_as_read": fields.get("mark_as_read", True),
                    "send_attempts": 1,
                    "attempt": attempt_no,
                },
            }
            if "dedup_id" in fields:
                message["dedup_id"] = fields["dedup_id"]
                state.by_dedup[dedup_key] = message
            state.messages.append(message)
            state.accepted += 1
            attempt.update(status=200, message_id=message_id, deduplicated=False)
            state.attempt_log.append(attempt)
            state.cond.notify_all()
            return self._json(_public(message))

    # ---- control API
    def _control(self, request: _Req, sub: str, raw: bytes) -> _Reply:
        method = request.method
        if sub == "health" and method == "GET":
            return self._json(self.health())
        if sub == "messages" and method == "GET":
            channel_url = request.args.get("channel_url")
            wait_for = request.args.get("wait_for")
            if wait_for is not None:
                try:
                    n = int(wait_for)
                    timeout = float(request.args.get("timeout", "5"))
                except ValueError:
                    return self._json(_error_body(CODE_INVALID_VALUE, "wait_for/timeout must be numbers"), 400)
                snap = self._wait(n, timeout, channel_url)
                snap["timed_out"] = snap["count"] < n
                return self._json(snap)
            with self._state.cond:
                snap = self._state.snapshot_locked(channel_url)
            snap["timed_out"] = False
            return self._json(snap)
        if sub == "messages" and method == "DELETE":
            self.reset()
            return self._json({"reset": True})
        if sub == "attempts" and method == "GET":
            return self._json({"attempts": self.attempts()})
        if sub == "faults" and method == "GET":
            return self._json({"faults": self.pending_faults()})
        if sub == "faults" and method == "DELETE":
            self.clear_faults()
            return self._json({"faults": []})
        if sub == "faults" and method == "POST":
            try:
                pending = self.add_faults(json.loads(raw.decode("utf-8") or "null"))
            except (ValueError, UnicodeDecodeError) as exc:
                return self._json(_error_body(CODE_INVALID_VALUE, f"bad fault list: {exc}"), 400)
            return self._json({"faults": pending})
        return self._json(_error_body(CODE_NOT_FOUND, f"unknown control call: {method} /__standin/{sub}"), 404)


def _public(message: dict) -> dict:
    return {k: json.loads(json.dumps(v)) for k, v in message.items() if k != "_standin"}


class SendBirdControlClient:
    """HTTP client for a stand-in's control API (same method names as the in-process server)."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _call(self, method: str, path: str, payload: Any = None, query: dict | None = None,
              timeout: float | None = None) -> Any:
        url = f"{self.base_url}/__standin/{path}"
        if query:
            url += "?" + urllib.parse.urlencode(query)
        data = json.dumps(payload).encode() if payload is not None else None
        req = urllib.request.Request(url, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout or self.timeout) as resp:
                return json.loads(resp.read().decode())
        except urllib.error.HTTPError as exc:
            raise StandInError(f"{method} {url} -> {exc.code}: {exc.read().decode(errors='replace')}") from exc

    def health(self) -> dict:
        return self._call("GET", "health")

    def snapshot(self, channel_url: str | None = None) -> dict:
        return self._call("GET", "messages", query={"channel_url": channel_url} if channel_url else None)

    def messages(self, channel_url: str | None = None) -> list[dict]:
        return self.snapshot(channel_url)["messages"]

    def counters(self) -> dict:
        return self.snapshot()["counters"]

    def attempts(self) -> list[dict]:
        return self._call("GET", "attempts")["attempts"]

    def reset(self) -> None:
        self._call("DELETE", "messages")

    def add_faults(self, faults: list[dict] | dict) -> list[dict]:
        return self._call("POST", "faults", faults)["faults"]

    def pending_faults(self) -> list[dict]:
        return self._call("GET", "faults")["faults"]

    def clear_faults(self) -> None:
        self._call("DELETE", "faults")

    def wait_for_messages(self, n: int, timeout: float = 5.0, channel_url: str | None = None) -> list[dict]:
        """Long-poll until at least ``n`` visible messages are recorded; raise TimeoutError otherwise."""
        query: dict = {"wait_for": n, "timeout": timeout}
        if channel_url:
            query["channel_url"] = channel_url
        snap = self._call("GET", "messages", query=query, timeout=timeout + 10)
        if snap["timed_out"]:
            raise TimeoutError(
                f"waited {timeout}s for {n} message(s), got {snap['count']}; counters={snap['counters']}"
            )
        return snap["messages"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m devstack.sendbird_standin", description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8090)
    parser.add_argument("--api-token", default="standin-api-token")
    parser.add_argument("--bot-user-id", action="append", dest="bot_user_ids",
                        help="bot user id (repeatable); default ssg_bot")
    parser.add_argument("--access-log", action="store_true", help="log every request to stderr")
    args = parser.parse_args(argv)
    server = SendBirdStandInServer(
        host=args.host, port=args.port, api_token=args.api_token,
        bot_user_id=args.bot_user_ids or ["ssg_bot"], access_log=args.access_log,
    )
    try:
        server.start()
    except OSError as exc:
        print(f"sendbird stand-in: {exc}", file=sys.stderr, flush=True)
        return 1
    stopping: list[int] = []  # the handler only appends: no locks or other threading primitives in a handler

    def _on_signal(signum: int, frame: Any) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    print(f"SendBird stand-in ready at {server.base_url} (bots: {', '.join(server.bot_user_ids)})", flush=True)
    try:
        while not stopping:
            time.sleep(0.2)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
