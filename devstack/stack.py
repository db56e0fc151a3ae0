"""Start and stop the local stack services as subprocesses bound to 127.0.0.1.

Every service class takes a port (``0`` = pick a free port), a log directory
(default ``<repo>/.stack/logs``, git-ignored) and a start-up timeout; it starts
the process in its own session (process group), polls a readiness check until it
passes, and on failure raises ``ServiceStartError`` carrying the tail of the service's
log. ``stop()`` ends the service's whole process group (SIGTERM, wait, SIGKILL). On
Linux a service started from the main thread is also SIGKILLed by the kernel if this
process dies without stopping it (``PR_SET_PDEATHSIG``). All classes are context
managers::

    with LocalStack.default(ports={"azurite": 0, "cosmos": 0, "sendbird": 0}) as stack:
        stack["azurite"].connection_string
        stack["cosmos"].endpoint, stack["cosmos"].key
        stack["sendbird"].control.wait_for_messages(1)

Python services run with ``sys.executable`` from the repository root; Node
services with the ``node`` found on PATH.
"""

from __future__ import annotations

import atexit
import concurrent.futures
import http.client
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

from devstack.sendbird_standin import SendBirdControlClient

__all__ = [
    "REPO_ROOT",
    "DEVSTACK_DIR",
    "NODE_MODULES",
    "DEFAULT_PORTS",
    "LOCALHOST",
    "COSMOS_EMULATOR_KEY",
    "AZURITE_ACCOUNT_NAME",
    "AZURITE_ACCOUNT_KEY",
    "ServiceStartError",
    "free_port",
    "port_is_free",
    "ensure_node_modules",
    "node_binary",
    "Service",
    "Azurite",
    "AzuriteBlob",
    "CosmosStandIn",
    "SendBirdStandIn",
    "IntentService",
    "RedisServer",
    "FunctionsRunner",
    "LocalStack",
]

REPO_ROOT = Path(__file__).resolve().parent.parent
DEVSTACK_DIR = REPO_ROOT / "devstack"
NODE_MODULES = DEVSTACK_DIR / "node_modules"
DEFAULT_LOG_DIR = REPO_ROOT / ".stack" / "logs"
LOCALHOST = "127.0.0.1"

DEFAULT_PORTS = {
    "azurite": 10001,
    "azurite_blob": 10000,
    "cosmos": 8081,
    "sendbird": 8090,
    "intent": 5088,
    "functions": 7071,
}

# Well-known, public emulator credentials (not secrets).
COSMOS_EMULATOR_KEY = (
    "C2y6yDjf5/R+ob0N8A7Cgv30VRDJIWEHLM+4QDU5DE2nQ9nDuVTqobD4b8mGGyPMbIZnqyMsEcaGQy67XIw/Jw=="
)
AZURITE_ACCOUNT_NAME = "devstoreaccount1"
AZURITE_ACCOUNT_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)

_NODE_BINS = ("azurite-queue",)
_NODE_PACKAGES = ("azurite", "@vercel/cosmosdb-server")


class ServiceStartError(RuntimeError):
    """A service did not become ready; the message includes the tail of its log."""


# --------------------------------------------------------------------------- helpers
def free_port(host: str = LOCALHOST) -> int:
    """A port that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def port_is_free(port: int, host: str = LOCALHOST) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def node_binary() -> str:
    node = shutil.which("node")
    if not node:
        raise ServiceStartError("node not found on PATH (Node 20 is needed for Azurite and the Cosmos stand-in)")
    return node


_npm_lock = threading.Lock()


def _node_modules_complete() -> bool:
    return all((NODE_MODULES / ".bin" / b).exists() for b in _NODE_BINS) and all(
        (NODE_MODULES / p / "package.json").exists() for p in _NODE_PACKAGES
    )


def ensure_node_modules(force: bool = False, timeout: float = 600.0) -> Path:
    """Run ``npm ci --prefix devstack`` (from the repo root) when devstack/node_modules is missing."""
    with _npm_lock:
        if not force and _node_modules_complete():
            return NODE_MODULES
        npm = shutil.which("npm")
        if not npm:
            raise ServiceStartError("npm not found on PATH; cannot install devstack/node_modules")
        proc = subprocess.run(
            [npm, "ci", "--prefix", "devstack", "--no-audit", "--no-fund"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
        )
        if proc.returncode != 0 or not _node_modules_complete():
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-30:])
            raise ServiceStartError(f"npm ci --prefix devstack failed (exit {proc.returncode}):\n{tail}")
        return NODE_MODULES


def _http_status(url: str, timeout: float = 1.0, headers: Mapping[str, str] | None = None) -> int | None:
    """Status code of a GET, or None when nothing answers. TLS is not verified (self-signed stand-ins)."""
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if parts.scheme == "https":
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=ssl._create_unverified_context()
        )
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        conn.request("GET", path, headers=dict(headers or {}))
        resp = conn.getresponse()
        resp.read()
        return resp.status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        conn.close()


# --------------------------------------------------------------------------- process management
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_prctl_fn: object = None  # libc's prctl, looked up once (None: not looked up yet; False: unavailable)


def _libc_prctl():
    global _prctl_fn
    if _prctl_fn is None:
        _prctl_fn = False
        if sys.platform.startswith("linux"):
            try:
                import ctypes

                fn = ctypes.CDLL(None, use_errno=True).prctl
                fn.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
                fn.restype = ctypes.c_int
                _prctl_fn = fn
            except (OSError, AttributeError):
                pass
    return _prctl_fn or None


def _parent_death_preexec() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has the kernel SIGKILL the child when this process dies, or None.

    SIGKILL, not SIGTERM: the parent died without stopping its services, so there is no orderly
    shutdown to honour, and a graceful stop can stall when everything goes at once (the functions
    runner drains for up to 30 s against an Azurite that is gone too).

    Linux only, and only when called from the main thread: the parent-death signal fires when
    the *thread* that forked the child ends, so a child spawned from a short-lived worker thread
    would be stopped as soon as that thread finished (LocalStack therefore spawns from the
    calling thread and only waits for readiness in worker threads). The preexec function runs
    in the forked child before exec; it only calls prctl (looked up here, in the parent) and
    getppid.
    """
    if threading.current_thread() is not threading.main_thread():
        return None
    prctl = _libc_prctl()
    if prctl is None:
        return None
    parent = os.getpid()
    sigkill = int(signal.SIGKILL)

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, sigkill, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before prctl took effect: nobody will signal us
            os._exit(1)

    return preexec


def _signal_group(pid: int, sig: int) -> None:
    """Send ``sig`` to the process group led by ``pid`` (services start in their own session, so
    pgid == pid); fall back to the process alone if the group is gone."""
    try:
        os.killpg(pid, sig)
        return
    except (ProcessLookupError, PermissionError):
        pass
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


_live_services: "weakref.WeakSet[Service]" = weakref.WeakSet()


@atexit.register
def _stop_leftovers() -> None:  # pragma: no cover - safety net
    for service in list(_live_services):
        try:
            service.stop(timeout=3)
        except Exception:
            pass


# --------------------------------------------------------------------------- base class
class Service:
    """One local service run as a subprocess. Subclasses define ``command()`` and ``is_ready()``."""

    name = "service"
    default_port = 0
    stage = 0  # LocalStack starts lower stages first (functions runner last)

    def __init__(
        self,
        port: int | None = None,
        *,
        log_dir: str | os.PathLike | None = None,
        startup_timeout: float = 30.0,
        env: Mapping[str, str] | None = None,
        host: str = LOCALHOST,
    ) -> None:
        if port is None:
            port = self.default_port
        self.host = host
        self.port = int(port) if port else free_port(host)
        self.log_dir = Path(log_dir) if log_dir is not None else DEFAULT_LOG_DIR
        self.startup_timeout = startup_timeout
        self.env_overrides = dict(env or {})
        self.process: subprocess.Popen | None = None
        self._log_file = None
        self.started_at: float | None = None
        self.ready_after: float | None = None  # seconds from spawn to ready

    # ---- to override
    def command(self) -> list[str]:
        raise NotImplementedError

    def is_ready(self) -> bool:
        raise NotImplementedError

    def cwd(self) -> Path:
        return REPO_ROOT

    def prepare(self) -> None:
        """Hook run before spawning (e.g. make sure node_modules exist)."""

    # ---- properties
    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}-{self.port}.log"

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.update(self.env_overrides)
        return env

    def log_tail(self, lines: int = 40) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(0, os.SEEK_END)
                size = fh.tell()
                fh.seek(max(0, size - 64 * 1024))
                text = fh.read().decode("utf-8", errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ---- lifecycle
    def start(self, *, cancel: Callable[[], bool] | None = None) -> "Service":
        """Spawn the process and wait until it is ready.

        ``cancel``, if given, is polled before spawning and between readiness checks; once it
        returns true the start is abandoned (the process is stopped, ``ServiceStartError``).
        """
        if self.running:
            return self
        cmd = self._spawn(cancel)
        self._await_ready(cmd, cancel)
        return self

    def _spawn(self, cancel: Callable[[], bool] | None = None) -> list[str]:
        """Check the port, start the process (own session; parent-death signal when possible)."""
        self.prepare()
        if cancel is not None and cancel():
            raise ServiceStartError(f"{self.name}: start cancelled")
        if not port_is_free(self.port, self.host):
            raise ServiceStartError(
                f"{self.name}: port {self.host}:{self.port} is already in use "
                "(another instance running? pass port=0 for a free port)"
            )
        self.log_dir.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} start: {cmd}\n".encode())
        self._log_file.flush()
        self.started_at = time.monotonic()
        try:
            self.process = subprocess.Popen(
                cmd, cwd=self.cwd(), env=self.environment(),
                stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT,
                # Own session and process group: Ctrl-C in the parent's terminal does not hit it;
                # stop() signals the whole group.
                start_new_session=True,
                preexec_fn=_parent_death_preexec(),
            )
        except (OSError, subprocess.SubprocessError) as exc:
            self._close_log()
            raise ServiceStartError(f"{self.name}: cannot run {cmd[0]}: {exc}") from exc
        _live_services.add(self)
        return cmd

    def _await_ready(self, cmd: Sequence[str], cancel: Callable[[], bool] | None = None) -> None:
        try:
            self._wait_ready(cmd, cancel)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, cmd: Sequence[str], cancel: Callable[[], bool] | None = None) -> None:
        deadline = self.started_at + self.startup_timeout
        delay = 0.05
        while True:
            if cancel is not None and cancel():
                raise ServiceStartError(f"{self.name}: start cancelled")
            code = self.process.poll()
            if code is not None:
                raise ServiceStartError(
                    f"{self.name} exited with code {code} before it was ready\n"
                    f"command: {' '.join(cmd)}\nlog {self.log_path} (tail):\n{self.log_tail()}"
                )
            if self.is_ready():
                self.ready_after = time.monotonic() - self.started_at
                return
            if time.monotonic() >= deadline:
                raise ServiceStartError(
                    f"{self.name} not ready on {self.host}:{self.port} after {self.startup_timeout:.0f}s\n"
                    f"command: {' '.join(cmd)}\nlog {self.log_path} (tail):\n{self.log_tail()}"
                )
            time.sleep(delay)
            delay = min(delay * 1.5, 0.5)

    def stop(self, timeout: float = 10.0) -> int | None:
        """Stop the service's process group: SIGTERM, wait up to ``timeout`` for the service's own
        process, then SIGKILL. Whatever is still left in its group after that is SIGKILLed.
        Returns the service process's exit code."""
        proc, self.process = self.process, None
        code = None
        if proc is not None:
            if proc.poll() is None:
                _signal_group(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=timeout)
                except subprocess.TimeoutExpired:
                    _signal_group(proc.pid, signal.SIGKILL)
                    proc.wait(timeout=5)
            code = proc.returncode
            # Leftovers of the group (children the service did not stop). No fallback to the PID:
            # it is reaped by now.
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _live_services.discard(self)
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self._log_file is not None:
            try:
                self._log_file.close()
            finally:
                self._log_file = None

    def __enter__(self) -> "Service":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<{type(self).__name__} {self.host}:{self.port} {state}>"


class _NodeService(Service):
    def prepare(self) -> None:
        ensure_node_modules()


# --------------------------------------------------------------------------- services
class Azurite(_NodeService):
    """Azurite queue service (``azurite-queue``), in memory by default."""

    name = "azurite-queue"
    default_port = DEFAULT_PORTS["azurite"]

    def __init__(
        self,
        queue_port: int | None = DEFAULT_PORTS["azurite"],
        in_memory: bool = True,
        *,
        location: str | os.PathLike | None = None,
        silent: bool = True,
        debug_log: str | os.PathLike | None = None,
        log_dir: str | os.PathLike | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(queue_port, log_dir=log_dir, startup_timeout=startup_timeout)
        self.in_memory = in_memory
        self.silent = silent
        self.debug_log = Path(debug_log) if debug_log else None
        self.location = Path(location) if location else None

    def command(self) -> list[str]:
        cmd = [
            node_binary(), str(NODE_MODULES / ".bin" / "azurite-queue"),
            "--skipApiVersionCheck", "--disableTelemetry",
            "--queueHost", self.host, "--queuePort", str(self.port),
        ]
        if self.in_memory:
            cmd.append("--inMemoryPersistence")
        else:
            location = self.location or (REPO_ROOT / ".stack" / f"azurite-{self.port}")
            location.mkdir(parents=True, exist_ok=True)
            cmd += ["--location", str(location)]
        if self.silent:
            cmd.append("--silent")
        if self.debug_log:
            cmd += ["--debug", str(self.debug_log)]
        return cmd

    def is_ready(self) -> bool:
        # Any HTTP answer (an unauthenticated request gets 4xx) means it is serving.
        return _http_status(f"http://{self.host}:{self.port}/{AZURITE_ACCOUNT_NAME}?comp=list") is not None

    @property
    def queue_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{AZURITE_ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT_NAME};"
            f"AccountKey={AZURITE_ACCOUNT_KEY};QueueEndpoint={self.queue_endpoint};"
        )


class AzuriteBlob(Azurite):
    """Azurite blob service (``azurite-blob``), in memory by default: the daily review exports of the local stack
    (:mod:`shared.review_export`). A process of its own beside the queue service (one port per service)."""

    name = "azurite-blob"
    default_port = DEFAULT_PORTS["azurite_blob"]

    def __init__(self, blob_port: int | None = DEFAULT_PORTS["azurite_blob"], in_memory: bool = True, *,
                 log_dir: str | os.PathLike | None = None, startup_timeout: float = 30.0) -> None:
        super().__init__(blob_port, in_memory, log_dir=log_dir, startup_timeout=startup_timeout)

    def command(self) -> list[str]:
        cmd = [node_binary(), str(NODE_MODULES / ".bin" / "azurite-blob"), "--skipApiVersionCheck",
               "--disableTelemetry", "--blobHost", self.host, "--blobPort", str(self.port)]
        if self.in_memory:
            cmd.append("--inMemoryPersistence")
        else:
            location = self.location or (REPO_ROOT / ".stack" / f"azurite-blob-{self.port}")
            location.mkdir(parents=True, exist_ok=True)
            cmd += ["--location", str(location)]
        return cmd + (["--silent"] if self.silent else []) + (["--debug", str(self.debug_log)] if self.debug_log
                                                              else [])

    @property
    def blob_endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/{AZURITE_ACCOUNT_NAME}"

    @property
    def connection_string(self) -> str:
        return (f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT_NAME};"
                f"AccountKey={AZURITE_ACCOUNT_KEY};BlobEndpoint={self.blob_endpoint};")


class CosmosStandIn(_NodeService):
    """@vercel/cosmosdb-server over HTTPS via devstack/cosmos_server.js (keep-alive, read-404 fix)."""

    name = "cosmos-standin"
    default_port = DEFAULT_PORTS["cosmos"]
    key = COSMOS_EMULATOR_KEY

    def __init__(
        self,
        port: int | None = DEFAULT_PORTS["cosmos"],
        *,
        keep_alive: bool = True,
        log_dir: str | os.PathLike | None = None,
        startup_timeout: float = 30.0,
    ) -> None:
        super().__init__(port, log_dir=log_dir, startup_timeout=startup_timeout)
        self.keep_alive = keep_alive

    def command(self) -> list[str]:
        cmd = [node_binary(), str(DEVSTACK_DIR / "cosmos_server.js"), "--host", self.host, "--port", str(self.port)]
        if not self.keep_alive:
            cmd.append("--no-keep-alive")
        return cmd

    def is_ready(self) -> bool:
        # Unauthenticated GET / answers (401) once the HTTPS server listens.
        return _http_status(f"https://{self.host}:{self.port}/") is not None

    @property
    def endpoint(self) -> str:
        return f"https://{self.host}:{self.port}/"

    @property
    def connection_string(self) -> str:
        return f"AccountEndpoint={self.endpoint};AccountKey={self.key};"

    def client(self, **kwargs):
        """An ``azure.cosmos.CosmosClient`` for this stand-in (TLS not verified)."""
        from azure.cosmos import CosmosClient

        kwargs.setdefault("connection_verify", False)
        return CosmosClient(self.endpoint, credential=self.key, **kwargs)


class SendBirdStandIn(Service):
    """The SendBird Platform API stand-in (``python -m devstack.sendbird_standin``)."""

    name = "sendbird-standin"
    default_port = DEFAULT_PORTS["sendbird"]

    def __init__(
        self,
        port: int | None = DEFAULT_PORTS["sendbird"],
        api_token: str = "standin-api-token",
        bot_user_id: str = "ssg_bot",
        *,
        log_dir: str | os.PathLike | None = None,
        startup_timeout: float = 20.0,
        access_log: bool = False,
    ) -> None:
        super().__init__(port, log_dir=log_dir, startup_timeout=startup_timeout)
        self.api_token = api_token
        self.bot_user_id = bot_user_id
        self.access_log = access_log
        self.control = SendBirdControlClient(self.base_url)

    def command(self) -> list[str]:
        cmd = [
            sys.executable, "-m", "devstack.sendbird_standin",
            "--host", self.host, "--port", str(self.port),
            "--api-token", self.api_token, "--bot-user-id", self.bot_user_id,
        ]
        if self.access_log:
            cmd.append("--access-log")
        return cmd

    def is_ready(self) -> bool:
        return _http_status(f"{self.base_url}/__standin/health") == 200

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def send_url(self) -> str:
        return f"{self.base_url}/v3/bots/{self.bot_user_id}/send"


class IntentService(Service):
    """``python -m intent_service serve --model MODEL --host 127.0.0.1 --port PORT [--key KEY]``."""

    name = "intent-service"
    default_port = DEFAULT_PORTS["intent"]

    def __init__(
        self,
        model: str | os.PathLike,
        port: int | None = DEFAULT_PORTS["intent"],
        key: str | None = None,
        *,
        env: Mapping[str, str] | None = None,
        log_dir: str | os.PathLike | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(port, log_dir=log_dir, startup_timeout=startup_timeout, env=env)
        self.model = str(model)
        self.key = key

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "intent_service", "serve", "--model", self.model,
               "--host", self.host, "--port", str(self.port)]
        if self.key:
            cmd += ["--key", self.key]
        return cmd

    def is_ready(self) -> bool:
        return _http_status(f"{self.base_url}/health/ready") == 200

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


class RedisServer(Service):
    """``redis-server`` (Debian package ``redis-server``, installed by ``make install``) on loopback, in memory
    only (no RDB snapshots, no append-only file): the prediction cache of the local stack."""

    name = "redis"
    default_port = 0

    def __init__(self, port: int | None = 0, *, log_dir: str | os.PathLike | None = None,
                 startup_timeout: float = 15.0, binary: str | None = None) -> None:
        super().__init__(port, log_dir=log_dir, startup_timeout=startup_timeout)
        self.binary = binary or shutil.which("redis-server") or "/usr/bin/redis-server"

    def command(self) -> list[str]:
        return [self.binary, "--bind", self.host, "--port", str(self.port), "--save", "", "--appendonly", "no",
                "--daemonize", "no", "--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]

    def is_ready(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=1.0) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    @property
    def url(self) -> str:
        """The ``INTENT_CACHE_URL`` of this server (database 0)."""
        return f"redis://{self.host}:{self.port}/0"


class FunctionsRunner(Service):
    """``python -m localrunner --app-root APP_ROOT --port PORT`` with environment overrides."""

    name = "functions-runner"
    default_port = DEFAULT_PORTS["functions"]
    stage = 1  # after the services it talks to

    def __init__(
        self,
        app_root: str | os.PathLike,
        port: int | None = DEFAULT_PORTS["functions"],
        env: Mapping[str, str] | None = None,
        *,
        log_dir: str | os.PathLike | None = None,
        startup_timeout: float = 60.0,
    ) -> None:
        super().__init__(port, log_dir=log_dir, startup_timeout=startup_timeout, env=env)
        self.app_root = str(app_root)

    def command(self) -> list[str]:
        return [sys.executable, "-m", "localrunner", "--app-root", self.app_root, "--port", str(self.port)]

    def is_ready(self) -> bool:
        return _http_status(f"{self.base_url}/admin/host/status") == 200

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"


# --------------------------------------------------------------------------- the stack
class LocalStack:
    """A set of services started together (in parallel within a stage) and stopped in reverse order.

    Services are addressed by key: ``stack["azurite"]``. Keys default to the service's ``name``.
    """

    def __init__(self, services: Mapping[str, Service] | Iterable[Service] | None = None,
                 *, parallel: bool = True) -> None:
        self.services: dict[str, Service] = {}
        self.parallel = parallel
        if isinstance(services, Mapping):
            for key, svc in services.items():
                self.add(svc, key)
        elif services is not None:
            for svc in services:
                self.add(svc)

    def add(self, service: Service, key: str | None = None) -> Service:
        key = key or service.name
        if key in self.services:
            raise ValueError(f"duplicate service key {key!r}")
        self.services[key] = service
        return service

    def __getitem__(self, key: str) -> Service:
        return self.services[key]

    def __contains__(self, key: str) -> bool:
        return key in self.services

    def get(self, key: str, default: Service | None = None) -> Service | None:
        return self.services.get(key, default)

    @classmethod
    def default(
        cls,
        *,
        azurite: bool = True,
        cosmos: bool = True,
        sendbird: bool = True,
        intent_model: str | os.PathLike | None = None,
        intent_key: str | None = None,
        functions_app_root: str | os.PathLike | None = None,
        functions_env: Mapping[str, str] | Callable[["LocalStack"], Mapping[str, str]] | None = None,
        ports: Mapping[str, int] | None = None,
        sendbird_api_token: str = "standin-api-token",
        bot_user_id: str = "ssg_bot",
        log_dir: str | os.PathLike | None = None,
    ) -> "LocalStack":
        """Build a stack with keys ``azurite``, ``cosmos``, ``sendbird``, ``intent``, ``functions``.

        ``ports`` overrides DEFAULT_PORTS per key (0 = free port). ``functions_env`` may be a
        callable receiving the stack (ports are already resolved) to build the runner's env.
        """
        p = {**DEFAULT_PORTS, **(ports or {})}
        stack = cls()
        if azurite:
            stack.add(Azurite(p["azurite"], log_dir=log_dir), "azurite")
        if cosmos:
            stack.add(CosmosStandIn(p["cosmos"], log_dir=log_dir), "cosmos")
        if sendbird:
            stack.add(SendBirdStandIn(p["sendbird"], sendbird_api_token, bot_user_id, log_dir=log_dir), "sendbird")
        if intent_model is not None:
            stack.add(IntentService(intent_model, p["intent"], intent_key, log_dir=log_dir), "intent")
        if functions_app_root is not None:
            env = functions_env(stack) if callable(functions_env) else functions_env
            stack.add(FunctionsRunner(functions_app_root, p["functions"], env, log_dir=log_dir), "functions")
        return stack

    def start(self, *, cancel: Callable[[], bool] | None = None) -> "LocalStack":
        """Start every service, stage by stage; on any failure stop the ones started and re-raise.

        ``cancel``, if given, is polled while starting (before each spawn and between readiness
        checks, at least every 0.5 s); once it returns true the start is abandoned with
        ``ServiceStartError`` and everything started so far is stopped. A signal handler that only
        sets a flag can so interrupt a start promptly.
        """
        # node_modules once, up front, rather than racing from several threads.
        if any(isinstance(s, _NodeService) for s in self.services.values()):
            ensure_node_modules()
        stages = sorted({s.stage for s in self.services.values()})
        try:
            for stage in stages:
                group = [s for s in self.services.values() if s.stage == stage and not s.running]
                self._start_group(group, cancel)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_group(self, group: list[Service], cancel: Callable[[], bool] | None = None) -> None:
        if not group:
            return
        if not self.parallel or len(group) == 1:
            for svc in group:
                svc.start(cancel=cancel)
            return
        # Spawn from this thread (a service's parent-death signal is tied to the thread that spawned
        # it, see _parent_death_preexec); only the readiness waits run in worker threads. If this
        # thread is interrupted (KeyboardInterrupt), the workers stop waiting instead of running
        # to their start-up timeouts.
        interrupted = [False]

        def stop_waiting() -> bool:
            return interrupted[0] or (cancel is not None and cancel())

        spawned = [(svc, svc._spawn(cancel)) for svc in group]  # a failure here: start() stops them
        errors: list[BaseException] = []
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(spawned)) as pool:
            futures = [pool.submit(svc._await_ready, cmd, stop_waiting) for svc, cmd in spawned]
            try:
                for fut in concurrent.futures.as_completed(futures):
                    try:
                        fut.result()
                    except Exception as exc:  # collect all, report together
                        errors.append(exc)
            except BaseException:
                interrupted[0] = True
                raise
        if errors:
            raise ServiceStartError("\n\n".join(str(e) for e in errors)) from errors[0]

    def stop(self) -> None:
        """Stop every service, in reverse order of declaration."""
        for svc in reversed(list(self.services.values())):
            try:
                svc.stop()
            except Exception:  # keep stopping the others
                pass

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def describe(self) -> dict[str, dict]:
        """Key -> {pid, port, log} (for printing)."""
        return {
            key: {"class": type(s).__name__, "port": s.port, "pid": s.pid, "log": str(s.log_path)}
            for key, s in self.services.items()
        }


# --------------------------------------------------------------------------- fault injection
class ChaosProxy(Service):
    """``python -m devstack.chaos_proxy``: a fault-injecting reverse proxy in front of ``upstream``.

    ``tls=True`` listens on HTTPS (self-signed certificate generated at start). ``.control`` is a
    :class:`devstack.chaos_proxy.ChaosControlClient` (``set_rules``, ``stats``...). ``name`` distinguishes
    several proxies' log files (``<name>-<port>.log``).
    """

    name = "chaos-proxy"
    default_port = 0

    def __init__(
        self,
        upstream: str,
        port: int | None = 0,
        tls: bool = False,
        *,
        name: str | None = None,
        seed: int | None = None,
        access_log: bool = False,
        log_dir: str | os.PathLike | None = None,
        startup_timeout: float = 20.0,
    ) -> None:
        super().__init__(port, log_dir=log_dir, startup_timeout=startup_timeout)
        from devstack.chaos_proxy import ChaosControlClient

        if name:
            self.name = name
        self.upstream = upstream
        self.tls = tls
        self.seed = seed
        self.access_log = access_log
        self.control = ChaosControlClient(self.base_url)

    def command(self) -> list[str]:
        cmd = [sys.executable, "-m", "devstack.chaos_proxy", "--upstream", self.upstream,
               "--host", self.host, "--port", str(self.port)]
        if self.tls:
            cmd.append("--tls")
        if self.seed is not None:
            cmd += ["--seed", str(self.seed)]
        if self.access_log:
            cmd.append("--access-log")
        return cmd

    def is_ready(self) -> bool:
        return _http_status(f"{self.base_url}/__chaos/health") == 200

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    @property
    def endpoint(self) -> str:
        """``base_url`` with a trailing slash (the form COSMOS_ENDPOINT takes)."""
        return self.base_url + "/"
