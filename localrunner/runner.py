"""The Runner: settings -> import app -> HTTP server + queue listeners."""
from __future__ import annotations

import logging
import os
import sys
import threading
import time
import types
from typing import Any, Dict, List, Mapping, Optional

from werkzeug.serving import ThreadedWSGIServer

from .app_loader import FunctionSpec, build_specs, find_function_app, import_app_module
from .config import ConfigError, HostConfig, load_host_json, load_local_settings
from .http_frontend import HttpFrontend, build_server
from .invocation import ExecutionEngine, InvocationResult, Invoker, Stats
from .queues import QueueListener, QueueService
from .timers import AdminInvoker, TimerListener, start_timers, stop_timers
from .workers import MAX_WORKER_PROCESSES, ProcessEngine, WorkerStartError

log = logging.getLogger("localrunner")

DEFAULT_PORT = 7071
#: The host receives queue messages with a 10-minute visibility timeout, renewed at half-time
#: (azure-sdk-for-net ... Storage.Common/src/Shared/Queues/QueueListener.cs: _visibilityTimeout).
DEFAULT_LEASE_SECONDS = 600


class Runner:
    """Host a v2 Python Functions app in-process.

    >>> with Runner("path/to/app", port=0) as r:
    ...     requests.get(r.base_url + "/api/hello")
    """

    def __init__(
        self,
        app_root: str,
        *,
        port: Optional[int] = None,
        host: str = "127.0.0.1",
        settings_file: Optional[str] = None,
        function_key: Optional[str] = None,
        env_overrides: Optional[Mapping[str, str]] = None,
        module: str = "function_app",
        lease_seconds: Optional[int] = None,
        thread_count: Optional[int] = None,
        print_ready: bool = False,
        chaos_skip_delete_rate: Optional[float] = None,
        worker_processes: Optional[int] = None,
    ) -> None:
        self.app_root = os.path.abspath(app_root)
        self.requested_port = port
        self.host = host
        self.settings_file = settings_file or os.path.join(self.app_root, "local.settings.json")
        self._settings_explicit = settings_file is not None
        self.function_key = function_key
        self.env_overrides = dict(env_overrides or {})
        self.module = module
        self._lease_seconds = lease_seconds
        self._thread_count = thread_count
        self._worker_processes = worker_processes
        #: language worker processes (FUNCTIONS_WORKER_PROCESS_COUNT); None = the worker runs in this process
        self.worker_processes: Optional[int] = None
        self.print_ready = print_ready
        self._chaos_skip_delete_rate = chaos_skip_delete_rate
        self.chaos_skip_delete_rate = 0.0

        self.state = "Created"
        self.port: Optional[int] = None
        self.host_config: Optional[HostConfig] = None
        self.specs: List[FunctionSpec] = []
        self.stats_obj = Stats()
        self.listeners: List[QueueListener] = []
        self.timers: List[TimerListener] = []
        self._admin: Optional[AdminInvoker] = None
        self.app_module: Optional[types.ModuleType] = None
        self._env_saved: Dict[str, Optional[str]] = {}
        self._sys_path_added = False
        self._server: Optional[ThreadedWSGIServer] = None
        self._server_thread: Optional[threading.Thread] = None
        self._frontend: Optional[HttpFrontend] = None
        self._engine: Optional[ExecutionEngine | ProcessEngine] = None
        self._queues: Optional[QueueService] = None
        self._lock = threading.Lock()

    # -- public API -------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        if self.port is None:
            raise RuntimeError("runner not started")
        return f"http://{self.host}:{self.port}"

    @property
    def route_prefix(self) -> str:
        return self.host_config.route_prefix if self.host_config else "api"

    def url(self, route: str) -> str:
        """Full URL of an HTTP function route (prefix included)."""
        prefix = f"/{self.route_prefix}" if self.route_prefix else ""
        return f"{self.base_url}{prefix}/{route.lstrip('/')}"

    def status(self) -> Dict[str, Any]:
        return {
            "state": self.state,
            "functions": [s.name for s in self.specs],
            "details": [s.describe() for s in self.specs],
        }

    def stats(self) -> Dict[str, Any]:
        snap = self.stats_obj.snapshot()
        snap["state"] = self.state
        snap["host_pid"] = os.getpid()
        if isinstance(self._engine, ProcessEngine):
            snap["worker_processes"] = self._engine.describe()
        return snap

    @property
    def worker_restarts(self) -> int:
        """How often an invocation's functionTimeout restarted the (simulated) worker process."""
        return self.stats_obj.worker_restarts

    @property
    def orphans_running(self) -> int:
        """Invocations abandoned by a worker restart whose thread is still running (cannot be killed)."""
        return self._engine.orphans_running if self._engine is not None else 0

    def function_stats(self, name: str) -> Dict[str, int]:
        return self.stats().get("functions", {}).get(name, {})

    def listener_stats(self, name: str) -> Dict[str, int]:
        return self.stats().get("listeners", {}).get(name, {})

    def __enter__(self) -> "Runner":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> "Runner":
        with self._lock:
            if self.state != "Created":
                raise RuntimeError(f"runner already {self.state.lower()}")
            self.state = "Starting"
        try:
            self._start()
        except BaseException:
            self._teardown(drained=True)
            self.state = "Error"
            raise
        self.state = "Running"
        msg = f"localrunner ready on {self.base_url}"
        log.info(msg)
        if self.print_ready:
            print(msg, flush=True)
        return self

    def stop(self, timeout: float = 30.0) -> bool:
        """Graceful stop: stop polling, wait for in-flight invocations, shut down.

        Returns True if everything in flight finished within ``timeout``.
        """
        with self._lock:
            if self.state not in ("Running",):
                return True
            self.state = "Stopping"
        log.info("Stopping localrunner (waiting up to %.0fs for in-flight invocations)", timeout)
        deadline = time.monotonic() + timeout
        if self._frontend is not None:
            self._frontend.draining = True
        for listener in self.listeners:
            listener.stop_polling()
        drained = self._stop_timers(deadline)
        for listener in self.listeners:
            listener.join_poller(max(0.1, deadline - time.monotonic()))
        for listener in self.listeners:
            drained = listener.wait_idle(deadline) and drained
        if self._frontend is not None:
            drained = self._frontend.wait_idle(deadline) and drained
        if not drained:
            log.warning("Graceful stop timed out; unfinished messages will reappear after their visibility window")
        self._teardown(drained)
        self.state = "Stopped"
        log.info("localrunner stopped")
        return drained

    # -- internals ---------------------------------------------------------------------
    def _setenv(self, key: str, value: str) -> None:
        if key not in self._env_saved:
            self._env_saved[key] = os.environ.get(key)
        os.environ[key] = value

    def _restore_env(self) -> None:
        for key, old in self._env_saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old
        self._env_saved.clear()

    def _start(self) -> None:
        if not os.path.isdir(self.app_root):
            raise ConfigError(f"app root {self.app_root} is not a directory")
        # 1. settings: the environment wins over local.settings.json Values
        for k, v in self.env_overrides.items():
            self._setenv(k, str(v))
        settings = load_local_settings(self.settings_file, required=self._settings_explicit)
        for k, v in settings.values.items():
            if k not in os.environ:
                self._setenv(k, v)
        # host.json, then the AzureFunctionsJobHost__* app settings over it (environment, which now holds
        # local.settings.json Values too)
        self.host_config = hc = load_host_json(self.app_root, os.environ)
        if self.requested_port is not None:
            port = self.requested_port
        elif settings.local_http_port is not None:
            port = settings.local_http_port
        else:
            port = DEFAULT_PORT
        lease = self._lease_seconds
        if lease is None:
            raw = os.environ.get("LOCALRUNNER_LEASE_SECONDS")
            try:
                lease = int(raw) if raw else DEFAULT_LEASE_SECONDS
            except ValueError:
                raise ConfigError(f"LOCALRUNNER_LEASE_SECONDS must be an integer number of seconds, got {raw!r}") from None
        if lease < 1:
            raise ConfigError(f"lease seconds must be >= 1, got {lease}")
        chaos = self._chaos_skip_delete_rate
        if chaos is None:
            raw = os.environ.get("LOCALRUNNER_CHAOS_SKIP_DELETE_RATE")
            try:
                chaos = float(raw) if raw else 0.0
            except ValueError:
                raise ConfigError("LOCALRUNNER_CHAOS_SKIP_DELETE_RATE must be a probability 0..1, "
                                  f"got {raw!r}") from None
        if not 0.0 <= chaos <= 1.0:
            raise ConfigError(f"LOCALRUNNER_CHAOS_SKIP_DELETE_RATE must be a probability 0..1, got {chaos}")
        self.chaos_skip_delete_rate = chaos
        threads = self._thread_count
        if threads is None:
            raw = os.environ.get("PYTHON_THREADPOOL_THREAD_COUNT")
            try:
                threads = int(raw) if raw else max(hc.queues.batch_size, 8)
            except ValueError:
                raise ConfigError(f"PYTHON_THREADPOOL_THREAD_COUNT must be an integer, got {raw!r}") from None
        if threads < 1:
            raise ConfigError(f"thread count must be >= 1, got {threads}")
        processes = self._worker_processes
        if processes is None:
            raw = os.environ.get("FUNCTIONS_WORKER_PROCESS_COUNT")
            try:
                processes = int(raw) if raw else None
            except ValueError:
                raise ConfigError(f"FUNCTIONS_WORKER_PROCESS_COUNT must be an integer 1..{MAX_WORKER_PROCESSES}, "
                                  f"got {raw!r}") from None
        if processes is not None and not 1 <= processes <= MAX_WORKER_PROCESSES:
            # the host: "ProcessCount must not be greater than MaxProcessCount" (RpcWorkerConfigFactory.cs)
            raise ConfigError(f"FUNCTIONS_WORKER_PROCESS_COUNT must be 1..{MAX_WORKER_PROCESSES}, got {processes}")
        self.worker_processes = processes

        # 2. import and index the app
        self._sys_path_added = self.app_root not in sys.path
        module = import_app_module(self.app_root, self.module)
        self.app_module = module
        app = find_function_app(module)
        self.specs = build_specs(app, os.environ, self.app_root)
        for s in self.specs:
            self.stats_obj.register_function(s.name)
        log.info("Found %d function(s): %s", len(self.specs),
                 ", ".join(f"{s.name} ({s.trigger_type})" for s in self.specs))

        # 3. runtime
        if processes is None:
            self._engine = ExecutionEngine(threads, hc.function_timeout, self.stats_obj)
        else:
            self._engine = ProcessEngine(processes, threads, hc.function_timeout, self.stats_obj,
                                         app_root=self.app_root, module=self.module,
                                         log_level=logging.getLogger().getEffectiveLevel())
            try:
                self._engine.start()
            except WorkerStartError as exc:
                raise ConfigError(f"language worker process start failed: {exc}") from None
        self._queues = QueueService(hc.queues.message_encoding, self.stats_obj)
        invoker = Invoker(self._engine, self.stats_obj, self._queues.send)
        self._frontend = HttpFrontend(self.specs, hc.route_prefix, invoker, self.function_key,
                                      self.status, self.stats)
        self._server = build_server(self.host, port, self._frontend)
        self.port = self._server.server_port
        self._server_thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.1},
                                               name="http-server", daemon=True)
        self._server_thread.start()
        for s in self.specs:
            if s.queue:
                self.listeners.append(QueueListener(s, invoker, hc.queues, self._queues, self.stats_obj, lease,
                                                    chaos_skip_delete_rate=chaos))
        if chaos:
            log.warning("chaos: %.0f%% of successfully processed queue messages will NOT be deleted "
                        "(LOCALRUNNER_CHAOS_SKIP_DELETE_RATE=%s); they reappear after the %d s lease",
                        chaos * 100, chaos, lease)
        for listener in self.listeners:
            listener.start()
        self._start_timers(invoker)
        for s in self.specs:
            if s.http:
                log.info("  %s: [%s] %s", s.name, ",".join(s.http.methods or ["ALL"]), self.url(s.http.route))

    # -- timer triggers (timers.py) ---------------------------------------------------
    def _start_timers(self, invoker: Invoker) -> None:
        """Timer listeners, and the admin API that invokes a timer function now (``POST /admin/functions/{name}``)."""
        self.timers = start_timers(self.specs, invoker)
        self._admin = AdminInvoker(self.timers, self.specs)
        if self._frontend is not None:
            self._frontend.admin_invoke = self._admin

    def _stop_timers(self, deadline: float) -> bool:
        drained = stop_timers(self.timers, deadline)
        return (self._admin.wait_idle(deadline) if self._admin is not None else True) and drained

    def trigger(self, name: str) -> InvocationResult:
        """Invoke timer function ``name`` now and wait for it (tests; the admin API does the same in the
        background). Raises ``KeyError`` when ``name`` is not a timer function of the app."""
        for t in self.timers:
            if t.name.lower() == name.lower():
                return t.invoke_now()
        raise KeyError(f"no timer function {name!r}")

    def _teardown(self, drained: bool) -> None:
        for timer in self.timers:
            timer.stop()
        for listener in self.listeners:
            try:
                listener.stop_polling()
                listener.close(drained)
            except Exception:
                log.exception("closing listener failed")
        if self._server is not None:
            try:
                if self._server_thread is not None and self._server_thread.is_alive():
                    self._server.shutdown()
                self._server.server_close()
            except Exception:
                log.exception("stopping the HTTP server failed")
        if self._engine is not None:
            self._engine.shutdown()
        if self._queues is not None:
            self._queues.close()
        self._restore_env()
        if self._sys_path_added and self.app_root in sys.path:
            sys.path.remove(self.app_root)
            self._sys_path_added = False
