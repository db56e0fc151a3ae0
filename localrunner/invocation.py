"""Invoking user functions like the Python worker: parameters, context, outputs.

Sync functions run on a thread pool (PYTHON_THREADPOOL_THREAD_COUNT), async
ones on a dedicated asyncio event-loop thread. functionTimeout is enforced by
giving up on the invocation (counted and logged as a failure); a sync thread
cannot be killed, so it keeps running in the background (the real host would
recycle the worker process instead).
"""
from __future__ import annotations

import asyncio
import base64
import collections.abc
import concurrent.futures
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import azure.functions as func
from azure.functions import _queue as azf_queue

from .app_loader import FunctionSpec, QueueTarget
from .hostjson import HostJsonError, host_messages, to_string

host_log = logging.getLogger("localrunner.host")


class InvocationTimeout(Exception):
    pass


# -- binding objects ------------------------------------------------------------

class Out(func.Out):
    """Output binding parameter (the worker's ``Out`` equivalent)."""

    def __init__(self) -> None:
        self._value: Any = None
        self._is_set = False

    def set(self, val: Any) -> None:
        self._value = val
        self._is_set = True

    def get(self) -> Any:
        return self._value


class TraceContext:
    def __init__(self, traceparent: str, tracestate: str = "", attributes: Optional[Dict[str, str]] = None):
        self._traceparent = traceparent
        self._tracestate = tracestate
        self._attributes = dict(attributes or {})

    # the worker exposes both spellings
    @property
    def Traceparent(self) -> str:  # noqa: N802
        return self._traceparent

    @property
    def Tracestate(self) -> str:  # noqa: N802
        return self._tracestate

    @property
    def Attributes(self) -> Dict[str, str]:  # noqa: N802
        return self._attributes

    trace_parent = Traceparent
    trace_state = Tracestate
    attributes = Attributes


class RetryContext:
    def __init__(self, retry_count: int = 0, max_retry_count: int = 0, exception: Any = None):
        self._retry_count = retry_count
        self._max_retry_count = max_retry_count
        self._exception = exception

    @property
    def retry_count(self) -> int:
        return self._retry_count

    @property
    def max_retry_count(self) -> int:
        return self._max_retry_count

    @property
    def exception(self) -> Any:
        return self._exception


class Context(func.Context):
    _tls = threading.local()

    def __init__(self, invocation_id: str, function_name: str, function_directory: str,
                 trace_context: TraceContext, retry_context: RetryContext):
        self._invocation_id = invocation_id
        self._function_name = function_name
        self._function_directory = function_directory
        self._trace_context = trace_context
        self._retry_context = retry_context

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def thread_local_storage(self):
        return self._tls

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def trace_context(self) -> TraceContext:
        return self._trace_context

    @property
    def retry_context(self) -> RetryContext:
        return self._retry_context


def new_traceparent(parent: Optional[str] = None) -> str:
    """W3C traceparent: keep the incoming trace id if any, new span id."""
    trace_id = secrets.token_hex(16)
    if parent:
        parts = parent.strip().split("-")
        if len(parts) == 4 and len(parts[1]) == 32:
            trace_id = parts[1]
    return f"00-{trace_id}-{secrets.token_hex(8)}-01"


# -- statistics -----------------------------------------------------------------

FUNCTION_COUNTERS = ("invocations", "successes", "failures", "timeouts", "poisoned")


class Stats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.functions: Dict[str, Dict[str, int]] = {}
        self.listeners: Dict[str, Dict[str, int]] = {}

    def register_function(self, name: str) -> None:
        with self._lock:
            self.functions.setdefault(name, {k: 0 for k in FUNCTION_COUNTERS})

    def inc(self, function: str, counter: str, n: int = 1) -> None:
        with self._lock:
            d = self.functions.setdefault(function, {k: 0 for k in FUNCTION_COUNTERS})
            d[counter] = d.get(counter, 0) + n

    def inc_listener(self, function: str, counter: str, n: int = 1) -> None:
        with self._lock:
            d = self.listeners.setdefault(function, {})
            d[counter] = d.get(counter, 0) + n

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            return {
                "functions": {k: dict(v) for k, v in self.functions.items()},
                "listeners": {k: dict(v) for k, v in self.listeners.items()},
            }


# -- execution engine -------------------------------------------------------------

class ExecutionEngine:
    def __init__(self, thread_count: int, function_timeout: Optional[float]):
        self.thread_count = thread_count
        self.function_timeout = function_timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=thread_count, thread_name_prefix="func-worker")
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._run_loop, name="func-asyncio", daemon=True)
        self._loop_thread.start()

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def call(self, fn: Callable, is_async: bool, kwargs: Dict[str, Any]) -> Any:
        timeout = self.function_timeout
        if is_async:
            fut = asyncio.run_coroutine_threadsafe(fn(**kwargs), self._loop)
            try:
                return fut.result(timeout)
            except concurrent.futures.TimeoutError:
                fut.cancel()
                raise InvocationTimeout(f"Timeout value of {timeout}s exceeded by function") from None
        fut = self._pool.submit(fn, **kwargs)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            raise InvocationTimeout(
                f"Timeout value of {timeout}s exceeded by function (the thread keeps running; "
                "the real host would restart the worker)"
            ) from None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._loop_thread.join(5)
        if not self._loop.is_running():
            try:
                self._loop.close()
            except Exception:
                pass


# -- queue output encoding -------------------------------------------------------

def _envelope(msg: azf_queue.QueueMessage) -> str:
    """A QueueMessage set on an output: the worker sends the JSON ``{"id": ..., "body": ...}``
    (azure-functions ``QueueMessageOutConverter.encode``) and the host writes that object, indented."""
    return to_string({"id": msg.id, "body": msg.get_body().decode("utf-8")})


def output_messages(value: Any, *, binding: str) -> List[bytes]:
    """The message payloads the host writes for what a function set on a queue output.

    * ``str``: the host's JSON handling (``hostjson.host_messages``): a JSON object is re-serialized
      indented, a JSON array becomes one message per element, JSON-looking text that does not parse
      raises ``HostJsonError`` (the invocation fails after the function returned);
    * ``bytes``: sent as is;
    * ``QueueMessage``: its ``{"id", "body"}`` JSON envelope (not just the body);
    * a list of ``str`` / ``QueueMessage``: one message per item, strings as they are (the worker sends the
      list as JSON, the host reads it without date parsing and writes each string unchanged); ``bytes``
      items are refused by the worker.
    """
    if value is None:
        return []
    if isinstance(value, str):
        try:
            return [m.encode("utf-8") for m in host_messages(value)]
        except HostJsonError as exc:
            raise HostJsonError(
                f"queue output '{binding}': the host parses a string that starts and ends like a JSON object or "
                f"array (Newtonsoft JToken.Parse) and it does not parse: {exc}. Nothing was sent; the "
                "invocation fails"
            ) from None
    if isinstance(value, (bytes, bytearray)):
        return [bytes(value)]
    if isinstance(value, azf_queue.QueueMessage):
        return [_envelope(value).encode("utf-8")]
    if isinstance(value, collections.abc.Iterable) and not isinstance(value, (dict, collections.abc.Mapping)):
        out: List[bytes] = []
        for item in value:
            if isinstance(item, str):
                out.append(item.encode("utf-8"))
            elif isinstance(item, azf_queue.QueueMessage):
                out.append(_envelope(item).encode("utf-8"))
            else:
                raise TypeError(f"queue output '{binding}': invalid data type in output queue message list: "
                                f"{type(item).__name__} (str or QueueMessage items only, as in the worker)")
        return out
    raise TypeError(
        f"queue output '{binding}': unsupported value type {type(value).__name__} (use str, bytes, "
        "QueueMessage or a list of str/QueueMessage; serialise JSON yourself)"
    )


def encode_payload(payload: bytes, encoding: str) -> str:
    if encoding == "base64":
        return base64.b64encode(payload).decode("ascii")
    try:
        return payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError("queue output: bytes that are not UTF-8 cannot be sent with messageEncoding 'none'") from None


def decode_payload(content: str, encoding: str) -> bytes:
    """Decode a stored message; raises ValueError for invalid base64."""
    if content is None:
        content = ""
    if encoding == "base64":
        try:
            return base64.b64decode(content.encode("ascii"), validate=True)
        except Exception as exc:
            raise ValueError(f"message content is not valid base64: {exc}") from None
    return content.encode("utf-8")


@dataclass
class InvocationResult:
    ok: bool
    invocation_id: str
    return_value: Any = None
    error: Optional[BaseException] = None
    timed_out: bool = False
    outs: Dict[str, Out] = field(default_factory=dict)


class Invoker:
    """Runs one invocation: build arguments, call, flush queue outputs, log, count."""

    def __init__(self, engine: ExecutionEngine, stats: Stats,
                 send_queue: Callable[[QueueTarget, List[bytes]], None]):
        self.engine = engine
        self.stats = stats
        self._send_queue = send_queue

    def invoke(self, spec: FunctionSpec, trigger_value: Any, *, reason: str,
               traceparent: Optional[str] = None, details: Optional[str] = None) -> InvocationResult:
        invocation_id = str(uuid.uuid4())
        outs: Dict[str, Out] = {}
        kwargs: Dict[str, Any] = {}
        trigger_param = spec.http.param if spec.http else spec.queue.param
        kwargs[trigger_param] = trigger_value
        for o in spec.outputs:
            if o.name != "$return":
                outs[o.name] = Out()
                kwargs[o.name] = outs[o.name]
        if spec.wants_context:
            kwargs["context"] = Context(
                invocation_id, spec.name, spec.directory,
                TraceContext(new_traceparent(traceparent)), RetryContext(),
            )
        self.stats.inc(spec.name, "invocations")
        host_log.info("Executing 'Functions.%s' (Reason='%s', Id=%s)", spec.name, reason, invocation_id)
        if details:
            host_log.info("Trigger Details: %s", details)
        start = time.monotonic()
        result = InvocationResult(ok=False, invocation_id=invocation_id, outs=outs)
        try:
            ret = self.engine.call(spec.func, spec.is_async, kwargs)
            if ret is not None and not spec.has_return:
                # the worker's own check (dispatcher.py), message as the worker writes it (no space before
                # "returned")
                raise RuntimeError(f"function {spec.name!r} without a $return binding"
                                   "returned a non-None value")
            result.return_value = ret
            self._flush_queue_outputs(spec, ret, outs)
            result.ok = True
        except InvocationTimeout as exc:
            result.error = exc
            result.timed_out = True
            self.stats.inc(spec.name, "timeouts")
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything
            result.error = exc
        duration_ms = int((time.monotonic() - start) * 1000)
        if result.ok:
            self.stats.inc(spec.name, "successes")
            host_log.info("Executed 'Functions.%s' (Succeeded, Id=%s, Duration=%dms)", spec.name, invocation_id, duration_ms)
        else:
            self.stats.inc(spec.name, "failures")
            err = result.error
            host_log.error(
                "Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)", spec.name, invocation_id, duration_ms,
                exc_info=(type(err), err, err.__traceback__) if not result.timed_out else None,
            )
            if result.timed_out:
                host_log.error("Function 'Functions.%s' (Id=%s): %s", spec.name, invocation_id, err)
        return result

    def _flush_queue_outputs(self, spec: FunctionSpec, ret: Any, outs: Dict[str, Out]) -> None:
        # convert everything first so that nothing is sent if any value is bad
        pending = []
        for o in spec.outputs:
            if o.kind != "queue":
                continue
            value = ret if o.name == "$return" else outs[o.name].get()
            msgs = output_messages(value, binding=o.name)
            if msgs:
                pending.append((o.target, msgs))
        for target, msgs in pending:
            self._send_queue(target, msgs)


def wait_until_zero(cond: threading.Condition, count: Callable[[], int], deadline: float) -> bool:
    """Wait (on ``cond``, notified when ``count()`` drops) until ``count()`` is 0 or ``time.monotonic()``
    passes ``deadline``. True when it reached 0 in time. Used by graceful stop."""
    with cond:
        while count() > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            cond.wait(min(remaining, 0.25))
        return True
