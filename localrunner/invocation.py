"""Invoking user functions like the Python worker: parameters, context, outputs.

Sync functions run on a thread pool (PYTHON_THREADPOOL_THREAD_COUNT), async
ones on a dedicated asyncio event-loop thread; pool and loop together stand for
the language worker process. When an invocation exceeds functionTimeout the host
restarts that worker process, so *every* invocation in flight in it fails; here
the worker's pool and loop are abandoned and replaced (threads cannot be
killed: an abandoned thread may still finish, but its result and outputs are
discarded).
"""
from __future__ import annotations

import asyncio
import base64
import collections.abc
import concurrent.futures
import functools
import logging
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Protocol

import azure.functions as func
from azure.functions import _queue as azf_queue

from .app_loader import FunctionSpec, QueueTarget
from .hostjson import HostJsonError, host_messages, to_string

host_log = logging.getLogger("localrunner.host")


class InvocationTimeout(Exception):
    pass


class WorkerRestarted(Exception):
    """The invocation was in flight in a worker process that the host restarted."""


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

    @property
    def is_set(self) -> bool:
        """The function called ``set`` (an unset output is not written)."""
        return self._is_set


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

    # the library declares Type[threading.local]; the worker returns a threading.local instance, as here
    @property
    def thread_local_storage(self) -> threading.local:  # type: ignore[override]
        return self._tls

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    # the library declares its ABCs here; the worker's TraceContext/RetryContext are plain classes, as here
    @property
    def trace_context(self) -> TraceContext:  # type: ignore[override]
        return self._trace_context

    @property
    def retry_context(self) -> RetryContext:  # type: ignore[override]
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
        self.worker_restarts = 0

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

    def inc_worker_restarts(self) -> int:
        with self._lock:
            self.worker_restarts += 1
            return self.worker_restarts

    def snapshot(self) -> Dict[str, Any]:
        with self._lock:
            return {
                "functions": {k: dict(v) for k, v in self.functions.items()},
                "listeners": {k: dict(v) for k, v in self.listeners.items()},
                "worker_restarts": self.worker_restarts,
            }


# -- execution engine -------------------------------------------------------------

def _timespan(seconds: float) -> str:
    whole = int(seconds)
    text = f"{whole // 3600:02d}:{whole % 3600 // 60:02d}:{whole % 60:02d}"
    frac = seconds - whole
    return text + (f"{frac:.3f}"[1:] if frac else "")


class _Worker:
    """One 'language worker process': a thread pool for sync functions and an event loop for async ones."""

    def __init__(self, number: int, thread_count: int):
        self.number = number
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=thread_count,
                                                          thread_name_prefix=f"func-worker{number}")
        self.loop = asyncio.new_event_loop()
        self.loop_thread = threading.Thread(target=self._run_loop, name=f"func-asyncio{number}", daemon=True)
        self.loop_thread.start()
        self.calls: set = set()
        self.dead = False

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
            pending = [t for t in asyncio.all_tasks(self.loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                self.loop.run_until_complete(asyncio.wait(pending, timeout=5))
        except Exception:  # noqa: BLE001 - a dying worker must not take the runner down
            pass
        finally:
            try:
                self.loop.close()
            except Exception:  # noqa: BLE001
                pass

    def kill(self) -> None:
        """Abandon: cancel queued sync calls and async tasks, stop the loop; running threads are left alone."""
        self.dead = True
        self.pool.shutdown(wait=False, cancel_futures=True)
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:  # loop already closed
            pass


class _Call:
    """One invocation running in a worker."""

    def __init__(self, worker: _Worker, function: str, invocation_id: str):
        self.worker = worker
        self.function = function
        self.invocation_id = invocation_id
        self.wake = threading.Event()
        self.future: Optional[concurrent.futures.Future] = None
        self.completed = False
        self.state = "running"  # running | finished | timed_out | abandoned
        self.cause = ""  # for an abandoned call: the invocation whose timeout restarted the worker


class ExecutionEngine:
    def __init__(self, thread_count: int, function_timeout: Optional[float], stats: Optional["Stats"] = None):
        self.thread_count = thread_count
        self.function_timeout = function_timeout
        self.stats = stats
        self._lock = threading.Lock()
        self._worker = _Worker(1, thread_count)
        self._orphans: set = set()  # abandoned calls whose code may still be running
        self.restarts = 0

    @property
    def orphans_running(self) -> int:
        """Abandoned invocations (restarted worker) whose code is still running in a thread."""
        with self._lock:
            return len(self._orphans)

    def _on_done(self, call: _Call, fut: concurrent.futures.Future) -> None:
        with self._lock:
            call.completed = True
            orphan = call in self._orphans
            self._orphans.discard(call)
        if orphan and not fut.cancelled():
            host_log.warning("Function 'Functions.%s' (Id=%s) finished after its worker process was restarted; "
                             "its result and outputs are discarded", call.function, call.invocation_id)
        call.wake.set()

    def call(self, fn: Callable, is_async: bool, kwargs: Dict[str, Any], *,
             function: str = "?", invocation_id: str = "") -> Any:
        with self._lock:
            worker = self._worker
            call = _Call(worker, function, invocation_id)
            worker.calls.add(call)
        try:
            if is_async:
                fut = asyncio.run_coroutine_threadsafe(fn(**kwargs), worker.loop)
            else:
                fut = worker.pool.submit(fn, **kwargs)
        except RuntimeError:
            # the worker was restarted between picking it and submitting (pool shut down / loop closed)
            with self._lock:
                worker.calls.discard(call)
            raise WorkerRestarted("the worker process was restarted before the invocation started") from None
        call.future = fut
        fut.add_done_callback(functools.partial(self._on_done, call))
        call.wake.wait(self.function_timeout)
        victims: Optional[List[_Call]] = None
        with self._lock:
            if call.state == "abandoned":
                raise WorkerRestarted(
                    f"worker process restarted because {call.cause} exceeded functionTimeout; "
                    "this invocation was in flight in it and failed")
            worker.calls.discard(call)
            if call.completed:
                call.state = "finished"
            else:
                call.state = "timed_out"
                self._orphans.add(call)
                if worker is self._worker:
                    victims = self._restart_locked(worker, call)
        if call.state == "finished":
            return fut.result()
        fut.cancel()  # async: cancels the task; sync: no effect on a running thread
        host_log.error("Timeout value of %s exceeded by function 'Functions.%s' (Id: '%s'). Initiating cancellation.",
                       _timespan(self.function_timeout or 0), function, invocation_id)
        if victims is not None:
            self._after_restart(call, worker, victims)
        raise InvocationTimeout(f"Timeout value of {_timespan(self.function_timeout or 0)} was exceeded by "
                                f"function: Functions.{function}")

    def _restart_locked(self, worker: _Worker, cause: _Call) -> List[_Call]:
        """Replace ``worker`` (lock held); returns the other calls that were in flight in it."""
        # a call whose function already returned got its answer before the restart: not a victim
        victims = [c for c in worker.calls if not c.completed]
        worker.calls.clear()
        described = f"invocation {cause.invocation_id} of 'Functions.{cause.function}'"
        for v in victims:
            v.state = "abandoned"
            v.cause = described
            if not v.completed:
                self._orphans.add(v)
        worker.dead = True
        self.restarts += 1
        self._worker = _Worker(worker.number + 1, self.thread_count)
        return victims

    def _after_restart(self, cause: _Call, worker: _Worker, victims: List[_Call]) -> None:
        host_log.warning("A function timeout has occurred. Restarting worker process executing invocationId '%s'.",
                         cause.invocation_id)
        worker.kill()
        for v in victims:
            if v.future is not None:
                v.future.cancel()
            v.wake.set()
        n = self.stats.inc_worker_restarts() if self.stats is not None else self.restarts
        host_log.warning(
            "localrunner: worker process restarted (restart #%d): %d other invocation(s) in flight in it failed%s",
            n, len(victims),
            (": " + ", ".join(f"Functions.{v.function} (Id={v.invocation_id})" for v in victims)) if victims else "",
        )
        host_log.warning("Restart of language worker process(es) completed.")

    def shutdown(self) -> None:
        with self._lock:
            worker = self._worker
        worker.kill()
        worker.loop_thread.join(5)


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
    worker_restarted: bool = False  # failed because another invocation's timeout restarted the worker
    outs: Dict[str, Out] = field(default_factory=dict)


class Engine(Protocol):
    """What runs a function: :class:`ExecutionEngine` (in this process) or ``workers.ProcessEngine``."""

    def call(self, fn: Callable, is_async: bool, kwargs: Dict[str, Any], *,
             function: str = "?", invocation_id: str = "") -> Any: ...


class Invoker:
    """Runs one invocation: build arguments, call, flush queue outputs, log, count."""

    def __init__(self, engine: Engine, stats: Stats,
                 send_queue: Callable[[QueueTarget, List[bytes]], None]):
        self.engine = engine
        self.stats = stats
        self._send_queue = send_queue

    def invoke(self, spec: FunctionSpec, trigger_value: Any, *, reason: str,
               traceparent: Optional[str] = None, details: Optional[str] = None) -> InvocationResult:
        invocation_id = str(uuid.uuid4())
        outs: Dict[str, Out] = {}
        kwargs: Dict[str, Any] = {}
        kwargs[spec.trigger_param] = trigger_value
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
            ret = self.engine.call(spec.func, spec.is_async, kwargs, function=spec.name,
                                   invocation_id=invocation_id)
            if ret is not None and not spec.has_return:
                # the worker's own check (dispatcher.py), message as the worker writes it (no space before
                # "returned")
                raise RuntimeError(f"function {spec.name!r} without a $return binding"
                                   "returned a non-None value")
            result.return_value = ret
            self._flush_queue_outputs(spec, ret, outs)
            result.ok = True
        except WorkerRestarted as exc:
            result.error = exc
            result.worker_restarted = True
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
            assert err is not None  # every failed invocation records its exception above
            plain = result.timed_out or result.worker_restarted
            remote_tb = getattr(err, "remote_traceback", None)  # raised in a worker process (workers.py)
            host_log.error(
                "Executed 'Functions.%s' (Failed, Id=%s, Duration=%dms)%s", spec.name, invocation_id, duration_ms,
                f"\n{remote_tb}" if remote_tb else "",
                exc_info=(type(err), err, err.__traceback__) if not (plain or remote_tb is not None) else None,
            )
            if plain:
                host_log.error("Function 'Functions.%s' (Id=%s): %s", spec.name, invocation_id, err)
        return result

    def _flush_queue_outputs(self, spec: FunctionSpec, ret: Any, outs: Dict[str, Out]) -> None:
        # convert everything first so that nothing is sent if any value is bad
        pending: List[tuple[QueueTarget, List[bytes]]] = []
        for o in spec.outputs:
            if o.kind != "queue":
                continue
            assert o.target is not None, f"{spec.name}: queue output '{o.name}' without a target"
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
