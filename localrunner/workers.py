"""Language worker processes (``FUNCTIONS_WORKER_PROCESS_COUNT``): the host dispatches, workers run the code.

The real host is a .NET process that polls triggers, does binding I/O and serves HTTP; it sends each invocation
over gRPC to one of ``FUNCTIONS_WORKER_PROCESS_COUNT`` Python worker processes (1 to 10, default 1). Reproduced
here with :class:`ProcessEngine`:

* the runner's own process is the host: HTTP front end, queue listeners, leases, output-binding writes;
* each worker is a child process (``multiprocessing`` *spawn*, so nothing of the host's state is inherited) that
  imports ``function_app`` itself, runs sync functions on its own thread pool of ``PYTHON_THREADPOOL_THREAD_COUNT``
  threads and ``async def`` functions on its own event loop, and sends back the return value and what was set
  on the outputs (the host then writes them);
* invocations go round-robin to the *initialized* workers (azure-functions-host
  ``src/WebJobs.Script/Workers/Rpc/FunctionRegistration/RpcFunctionInvocationDispatcherLoadBalancer.cs``), so
  module-level state (caches, clients) exists once per worker, as on Azure;
* ``functionTimeout``: the host restarts **only the worker executing the timed-out invocation**
  (``WebScriptHostExceptionHandler.OnTimeoutExceptionAsync`` ->
  ``RpcFunctionInvocationDispatcher.RestartWorkerWithInvocationIdAsync``): that process is killed (its threads
  with it), every invocation in flight in it fails, the other workers keep running, and a fresh process
  (re-importing the app) takes its place; until it is ready the others get every invocation;
* a worker that exits by itself (crash, ``os._exit``) is replaced the same way, its invocations failed.

Differences (documented in README.md): workers start together, not ``ProcessStartupInterval`` (10 s) apart; the
restart is immediate (no grace period); the host process also imports the app (to index it).

Protocol (``multiprocessing`` ``Connection``, pickled tuples): host -> worker ``("invoke", invocation_id,
function, trigger, traceparent)`` and ``("stop",)``; worker -> host ``("ready", pid)``, ``("failed_start",
message)`` and ``("result", invocation_id, ok, return_value, outputs, error)``, where ``outputs`` maps the names
of the outputs that were set to their values and ``error`` is ``(type name, message, formatted traceback)``.
An HTTP trigger travels as a plain dict (``func.HttpRequest`` does not pickle), queue triggers as they are.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import itertools
import logging
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import Connection
from typing import Any, Callable, Dict, List, Optional, Tuple

import azure.functions as func

from .invocation import Context, InvocationTimeout, Out, RetryContext, Stats, TraceContext, WorkerRestarted, \
    _timespan

host_log = logging.getLogger("localrunner.host")

#: the host's MaxProcessCount (WorkerProcessCountOptions.cs)
MAX_WORKER_PROCESSES = 10
#: how long a (re)started worker may take to import the app and report ready (the host's ProcessStartupTimeout)
WORKER_STARTUP_TIMEOUT = 60.0


class RemoteInvocationError(Exception):
    """The function raised in a worker process; the message carries the worker's traceback."""

    def __init__(self, type_name: str, message: str, remote_traceback: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_traceback = remote_traceback


class WorkerStartError(Exception):
    """A worker process could not import or index the app."""


# -- trigger / result conversion ---------------------------------------------------

def _http_request_to_wire(req: func.HttpRequest) -> Dict[str, Any]:
    return {"__http_request__": True, "method": req.method, "url": req.url, "headers": dict(req.headers),
            "params": dict(req.params), "route_params": dict(req.route_params), "body": req.get_body()}


def _wire_to_trigger(value: Any) -> Any:
    if isinstance(value, dict) and value.get("__http_request__"):
        return func.HttpRequest(method=value["method"], url=value["url"], headers=value["headers"],
                                params=value["params"], route_params=value["route_params"], body=value["body"])
    return value


def _trigger_to_wire(value: Any) -> Any:
    if isinstance(value, func.HttpRequest):
        return _http_request_to_wire(value)
    return value


# -- the worker process -----------------------------------------------------------

def worker_main(conn: Connection, app_root: str, module: str, thread_count: int, number: int,
                log_level: int) -> None:
    """Entry point of one worker process: import and index the app, then serve invocations until told to stop
    or the host's end of the pipe closes (the host died)."""
    # The host owns the workers' lifetime: a SIGTERM/SIGINT sent to the whole process group (Ctrl-C, a process
    # manager stopping the runner) must not kill them under the host's graceful stop, which drains the
    # invocations in flight first and then stops them.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=log_level, stream=sys.stderr,
                        format=f"[%(asctime)s] %(levelname)s %(name)s (worker {number}): %(message)s")
    logging.getLogger("azure").setLevel(logging.WARNING)
    logging.getLogger("urllib3").setLevel(logging.WARNING)
    from .app_loader import build_specs, find_function_app, import_app_module

    try:
        app = find_function_app(import_app_module(app_root, module))
        specs = {s.name: s for s in build_specs(app, os.environ, app_root)}
    except BaseException as exc:  # noqa: BLE001 - reported to the host, which fails the start
        conn.send(("failed_start", f"{type(exc).__name__}: {exc}"))
        conn.close()
        return
    send_lock = threading.Lock()
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=thread_count, thread_name_prefix=f"func-worker{number}")
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name=f"func-asyncio{number}", daemon=True).start()

    def reply(msg: Tuple[Any, ...]) -> None:
        with send_lock:
            try:
                conn.send(msg)
            except Exception as exc:  # noqa: BLE001 - e.g. an output value that does not pickle
                if msg[0] == "result" and msg[2]:
                    conn.send(("result", msg[1], False, None, {},
                               (type(exc).__name__, f"the invocation's result could not be sent to the host: {exc}",
                                "")))

    def finish(invocation_id: str, outs: Dict[str, Out], fut: "concurrent.futures.Future[Any]") -> None:
        try:
            ret = fut.result()
        except BaseException as exc:  # noqa: BLE001 - user code may raise anything
            reply(("result", invocation_id, False, None, {},
                   (type(exc).__name__, str(exc), "".join(traceback.format_exception(exc)))))
            return
        set_outs = {k: o.get() for k, o in outs.items() if o.is_set}
        reply(("result", invocation_id, True, ret, set_outs, None))

    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg[0] == "stop":
            break
        _, invocation_id, name, trigger, traceparent = msg
        spec = specs[name]
        outs: Dict[str, Out] = {o.name: Out() for o in spec.outputs if o.name != "$return"}
        kwargs: Dict[str, Any] = dict(outs)
        kwargs[spec.trigger_param] = _wire_to_trigger(trigger)
        if spec.wants_context:
            kwargs["context"] = Context(invocation_id, spec.name, spec.directory, TraceContext(traceparent),
                                        RetryContext())
        fut: "concurrent.futures.Future[Any]"
        if spec.is_async:
            fut = asyncio.run_coroutine_threadsafe(spec.func(**kwargs), loop)
        else:
            fut = pool.submit(spec.func, **kwargs)
        fut.add_done_callback(functools.partial(finish, invocation_id, outs))
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # threads still running user code must not hold the process


# -- the host side ------------------------------------------------------------------

class _Pending:
    def __init__(self, function: str, invocation_id: str):
        self.function = function
        self.invocation_id = invocation_id
        self.done = threading.Event()
        self.result: Optional[Tuple[bool, Any, Dict[str, Any], Any]] = None
        self.failure: Optional[BaseException] = None


class _WorkerProcess:
    """The host's channel to one worker process."""

    def __init__(self, number: int, process: Any, conn: Connection):
        self.number = number
        self.process = process
        self.conn = conn
        self.pid: Optional[int] = None
        self.ready = False
        self.dead = False
        self.invocations = 0
        self.pending: Dict[str, _Pending] = {}
        self.send_lock = threading.Lock()
        self.start_error = ""
        self.restart_cause = ""  # set before the host kills it for a timeout


class ProcessEngine:
    """Runs invocations in ``count`` worker processes; same ``call`` contract as ``invocation.ExecutionEngine``.

    ``call`` blocks the calling host thread until the worker answers, ``function_timeout`` seconds pass
    (:class:`InvocationTimeout`; the worker is restarted) or the worker dies (:class:`WorkerRestarted`).
    """

    def __init__(self, count: int, thread_count: int, function_timeout: Optional[float], stats: Stats, *,
                 app_root: str, module: str, log_level: int = logging.INFO):
        if not 1 <= count <= MAX_WORKER_PROCESSES:
            raise ValueError(f"worker process count must be 1..{MAX_WORKER_PROCESSES}, got {count}")
        self.count = count
        self.thread_count = thread_count
        self.function_timeout = function_timeout
        self.stats = stats
        self.app_root = app_root
        self.module = module
        self.log_level = log_level
        self._ctx = multiprocessing.get_context("spawn")
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._workers: List[_WorkerProcess] = []
        self._numbers = itertools.count(1)
        self._rr = itertools.count()
        self._closing = False
        self._running = False  # start() succeeded: a lost worker is replaced
        self.restarts = 0
        self.orphans_running = 0  # a killed process takes its threads with it

    # -- lifecycle
    def start(self, timeout: float = WORKER_STARTUP_TIMEOUT) -> None:
        """Start every worker and wait until each has imported the app; raises :class:`WorkerStartError`."""
        workers = [self._spawn() for _ in range(self.count)]
        deadline = time.monotonic() + timeout
        with self._lock:
            while not all(w.ready or w.dead for w in workers):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise WorkerStartError(f"worker processes not ready within {timeout:.0f} s")
                self._changed.wait(remaining)
            failed = [w for w in workers if w.dead]
        if failed:
            raise WorkerStartError(failed[0].start_error or "a worker process exited during start-up")
        self._running = True
        host_log.info("%d language worker process(es) started: pids %s", self.count,
                      ", ".join(str(w.pid) for w in workers))

    def _spawn(self) -> _WorkerProcess:
        parent, child = self._ctx.Pipe(duplex=True)
        number = next(self._numbers)
        proc = self._ctx.Process(target=worker_main, name=f"localrunner-worker-{number}", daemon=True,
                                 args=(child, self.app_root, self.module, self.thread_count, number, self.log_level))
        proc.start()
        child.close()
        w = _WorkerProcess(number, proc, parent)
        with self._lock:
            self._workers.append(w)
        threading.Thread(target=self._read, args=(w,), name=f"worker-{number}-reader", daemon=True).start()
        return w

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._lock:
            self._closing = True
            workers = list(self._workers)
        for w in workers:
            try:
                with w.send_lock:
                    w.conn.send(("stop",))
            except (OSError, ValueError):
                pass
        deadline = time.monotonic() + timeout
        for w in workers:
            w.process.join(max(0.1, deadline - time.monotonic()))
            if w.process.is_alive():
                w.process.kill()
                w.process.join(2)
            w.conn.close()

    def describe(self) -> List[Dict[str, Any]]:
        """The worker processes now: number, pid, ready, invocations dispatched to it."""
        with self._lock:
            return [{"number": w.number, "pid": w.pid, "ready": w.ready, "invocations": w.invocations}
                    for w in self._workers if not w.dead]

    # -- reader: results and deaths
    def _read(self, w: _WorkerProcess) -> None:
        while True:
            try:
                msg = w.conn.recv()
            except (EOFError, OSError):
                break
            kind = msg[0]
            if kind == "ready":
                with self._lock:
                    w.pid, w.ready = msg[1], True
                    self._changed.notify_all()
            elif kind == "failed_start":
                w.start_error = f"worker process {w.number}: {msg[1]}"
            elif kind == "result":
                _, invocation_id, ok, ret, outs, error = msg
                with self._lock:
                    p = w.pending.pop(invocation_id, None)
                if p is not None:
                    p.result = (ok, ret, outs, error)
                    p.done.set()
        self._lost(w)

    def _lost(self, w: _WorkerProcess) -> None:
        """``w`` is gone (killed by a timeout restart, or exited): fail what was in flight in it, start a
        replacement. Called by the reader thread and by the timeout path; the first call does the work."""
        with self._lock:
            if w.dead:
                return
            cause = w.restart_cause
            why = f"worker process {w.number} (pid {w.pid}) exited"
            w.dead = True
            w.ready = False
            self._workers.remove(w)
            victims = list(w.pending.values())
            w.pending.clear()
            closing = self._closing or not self._running
            self._changed.notify_all()
        for v in victims:
            v.failure = WorkerRestarted(
                f"worker process restarted because {cause} exceeded functionTimeout; this invocation was in flight "
                "in it and failed" if cause else f"{why}; this invocation was in flight in it and failed")
            v.done.set()
        if closing:
            return
        if not cause:
            host_log.error("Language worker process %d exited unexpectedly (%d invocation(s) in flight failed); "
                           "starting a new one", w.number, len(victims))
        n = self.stats.inc_worker_restarts()
        self.restarts += 1
        if cause:
            host_log.warning(
                "localrunner: worker process restarted (restart #%d): %d other invocation(s) in flight in it "
                "failed%s", n, len(victims),
                (": " + ", ".join(f"Functions.{v.function} (Id={v.invocation_id})" for v in victims)) if victims
                else "")
        try:
            self._spawn()
        except Exception:  # noqa: BLE001 - the others keep serving
            host_log.exception("starting a replacement worker process failed")

    # -- dispatch
    def _pick(self) -> _WorkerProcess:
        deadline = time.monotonic() + WORKER_STARTUP_TIMEOUT
        with self._lock:
            while True:
                ready = [w for w in self._workers if w.ready]
                if ready:
                    w = ready[next(self._rr) % len(ready)]
                    w.invocations += 1
                    return w
                if self._closing or time.monotonic() > deadline:
                    raise WorkerRestarted("no language worker process is available")
                self._changed.wait(0.5)

    def call(self, fn: Callable[..., Any], is_async: bool, kwargs: Dict[str, Any], *,
             function: str = "?", invocation_id: str = "") -> Any:
        """Run ``function`` in a worker with ``kwargs`` (trigger, ``Out`` objects, ``context``); sets the ``Out``
        objects the function set, returns its return value; raises what the function raised (as
        :class:`RemoteInvocationError`), :class:`InvocationTimeout` or :class:`WorkerRestarted`."""
        trigger: Any = None
        traceparent = ""
        outs: Dict[str, Out] = {}
        for k, v in kwargs.items():
            if isinstance(v, Out):
                outs[k] = v
            elif isinstance(v, Context):
                traceparent = v.trace_context.Traceparent
            else:
                trigger = v
        if not traceparent:
            from .invocation import new_traceparent
            traceparent = new_traceparent()
        w = self._pick()
        p = _Pending(function, invocation_id)
        with self._lock:
            w.pending[invocation_id] = p
        try:
            with w.send_lock:
                w.conn.send(("invoke", invocation_id, function, _trigger_to_wire(trigger), traceparent))
        except (OSError, ValueError):
            with self._lock:
                w.pending.pop(invocation_id, None)
            raise WorkerRestarted("the worker process was restarted before the invocation started") from None
        if not p.done.wait(self.function_timeout):
            with self._lock:
                still = w.pending.pop(invocation_id, None) is not None
            if still:
                self._timeout(w, p)
                raise InvocationTimeout(f"Timeout value of {_timespan(self.function_timeout or 0)} was exceeded by "
                                        f"function: Functions.{function}")
            p.done.wait(5)  # the answer or the worker's death raced the timeout
        if p.failure is not None:
            raise p.failure
        assert p.result is not None
        ok, ret, set_outs, error = p.result
        if not ok:
            raise RemoteInvocationError(*error)
        for name, value in set_outs.items():
            outs[name].set(value)
        return ret

    def _timeout(self, w: _WorkerProcess, p: _Pending) -> None:
        host_log.error("Timeout value of %s exceeded by function 'Functions.%s' (Id: '%s'). Initiating cancellation.",
                       _timespan(self.function_timeout or 0), p.function, p.invocation_id)
        host_log.warning("A function timeout has occurred. Restarting worker process executing invocationId '%s'.",
                         p.invocation_id)
        with self._lock:
            w.restart_cause = f"invocation {p.invocation_id} of 'Functions.{p.function}'"
        w.process.kill()
        w.process.join(5)
        self._lost(w)
        host_log.warning("Restart of language worker process(es) completed.")
