"""The one builder of the gateway's local stack: Azurite (queues and blobs), Cosmos DB stand-in, SendBird stand-in,
intent service, optionally chaos proxies, a telemetry sink, the functions runner and the bot team's console.

The demo (``make demo``/``make run``), the tests (``tests/conftest.py``), the fault-injection suite (``faults/``)
and the benchmark (``bench/``) all build their stack here, with :class:`StackOptions`, so that they run the real
``function_app.py`` against the same services, configured from ``local.settings.sample.json`` with the stack's
actual ports, the same API token and bot user id.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from devstack.stack import (DEFAULT_PORTS, Azurite, AzuriteBlob, ChaosProxy, CosmosStandIn, FunctionsRunner,
                            IntentService, LocalStack, RedisServer, SendBirdStandIn, Service, _http_status)
from devstack.telemetry_sink import TelemetrySinkService
from intent_service.cli import DEFAULT_RETAIL_MODEL
from shared.clients.clu import IntentClient
from shared.language import detect_language
from shared.settings import load_settings

ROOT = Path(__file__).resolve().parent.parent
RETAIL_MODEL = DEFAULT_RETAIL_MODEL
#: The token the sample webhooks in tests/fixtures/sendbird were signed with; used by the local stack.
LOCAL_API_TOKEN = "0123456789abcdef0123456789abcdef01234567"
BOT_USER_ID = "ssg_bot"
#: The console's local sign-in (printed by ``make run``; local stack only) and its key of the intent service's
#: authoring API. Never used outside the loopback stack.
CONSOLE_PORT = 8095
CONSOLE_AUTHORING_KEY = "local-console-authoring-key-0123"
CONSOLE_USERS = {"editor": ("editor", "editor-local-pass"), "operator": ("operator", "operator-local-pass"),
                 "lead": ("editor+operator", "lead-local-password")}
CONSOLE_SECRET = "local-console-session-secret-0123456789abcdef"
#: The prediction cache's key-hashing secret on the local stack (``INTENT_CACHE_HASH_KEY``); loopback only.
LOCAL_CACHE_HASH_KEY = "local-intent-cache-hash-key-0123"
RETAIL_PROJECT = ROOT / "intent_service" / "data" / "retail" / "project.json"


@dataclass(frozen=True)
class StackOptions:
    """What the local stack runs.

    - ``ports``: service key -> port (0 = a free port); default :data:`devstack.stack.DEFAULT_PORTS`, or every
      service on a free port with ``free_ports``;
    - ``app_root``: the functions app the runner hosts (key ``functions``); None: no runner (the caller starts its
      own with :func:`gateway_env`, e.g. to kill and restart it);
    - ``telemetry``: a local Application Insights ingestion sink (key ``telemetry``), the gateway's telemetry
      pointed at it;
    - ``chaos_seed``: chaos proxies in front of the intent service (key ``intent_proxy``) and Cosmos DB
      (``cosmos_proxy``), seeded; the gateway talks to the proxies;
    - ``intent_env``: environment of the intent service (e.g. ``INTENT_ADDED_LATENCY_MS``);
    - ``env_overrides``: app settings over the stack's (the runner's environment);
    - ``console``: the bot team's console (key ``console``, :data:`CONSOLE_PORT` by default) with the intent
      service's model lifecycle on (CLU authoring API, in-memory project store): the retail project is imported,
      trained and deployed to ``production`` while the stack starts (the gateway then predicts from that
      deployment). On for ``make demo``/``make run``.
    - ``cache``: a ``redis-server`` (key ``redis``, free port, memory only) and the gateway's prediction cache
      pointed at it (``INTENT_CACHE_URL``, :mod:`shared.intent_cache`).
    """

    ports: Mapping[str, int] | None = None
    free_ports: bool = False
    log_dir: str | os.PathLike[str] | None = None
    app_root: Path | None = ROOT
    telemetry: bool = False
    chaos_seed: int | None = None
    intent_env: Mapping[str, str] = field(default_factory=dict)
    env_overrides: Mapping[str, str] = field(default_factory=dict)
    runner_startup_timeout: float = 60.0
    console: bool = False
    cache: bool = False


def sample_settings() -> dict[str, str]:
    values: dict[str, str] = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]
    return values


def intent_client(base_url: str) -> IntentClient:
    """The project's own intent service client (CLU protocol, :mod:`shared.clients.clu`) for the service at
    ``base_url``, with the sample settings (project ``retail-bot``, deployment ``production``)."""
    return IntentClient(load_settings({**sample_settings(), "INTENT_ENDPOINT": base_url}).settings)


def top_intent(client: IntentClient, text: str) -> str | None:
    """The top intent the service gives ``text`` (language detected as the gateway does)."""
    return client.analyze(text, detect_language(text) or "ko", participant_id="tooling", item_id="1").top_intent


def ensure_retail_model() -> Path:
    """Build the intent service's retail model if it is missing (a few seconds)."""
    if not RETAIL_MODEL.exists():
        subprocess.run([sys.executable, "-m", "intent_service", "build-retail"], cwd=ROOT, check=True)
    return RETAIL_MODEL


def gateway_env(stack: LocalStack, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """App settings for a functions runner: the sample settings pointed at the stack's services (through the
    chaos proxies when the stack has them)."""
    env = sample_settings()
    if "telemetry" in stack:
        env.update({"APPLICATIONINSIGHTS_CONNECTION_STRING": stack["telemetry"].connection_string,
                    "TELEMETRY_EXPORT_INTERVAL_SECONDS": "1"})
    intent = stack["intent_proxy"] if "intent_proxy" in stack else stack["intent"]
    cosmos = stack["cosmos_proxy"] if "cosmos_proxy" in stack else stack["cosmos"]
    env.update({
        "AzureWebJobsStorage": storage_connection_string(stack),
        # the daily review export also writes today so far, so a manual run shows what the stack just captured
        "REVIEW_EXPORT_INCLUDE_TODAY": "true",
        "COSMOS_ENDPOINT": cosmos.endpoint,
        "SENDBIRD_API_BASE_URL": stack["sendbird"].base_url,
        "SENDBIRD_API_TOKEN": LOCAL_API_TOKEN,
        "SENDBIRD_BOT_USER_ID": BOT_USER_ID,
        "INTENT_ENDPOINT": intent.base_url,
    })
    if "redis" in stack:
        env.update({"INTENT_CACHE_URL": stack["redis"].url, "INTENT_CACHE_HASH_KEY": LOCAL_CACHE_HASH_KEY})
    env.update(overrides or {})
    return env


def storage_connection_string(stack: LocalStack) -> str:
    """``AzureWebJobsStorage`` of the stack: Azurite's queue endpoint, plus its blob endpoint when the stack runs
    the blob service (the daily review exports)."""
    cs = stack["azurite"].connection_string
    if "azurite_blob" in stack:
        cs += f"BlobEndpoint={stack['azurite_blob'].blob_endpoint};"
    return cs


class AuthoringIntentService(IntentService):
    """The intent service with its CLU authoring API on (in-memory project store, key
    :data:`CONSOLE_AUTHORING_KEY`). Ready once ``project_file`` is imported, trained and deployed to
    ``production`` (about 15 s), so the gateway's predictions find their deployment."""

    name = "intent-authoring"

    def __init__(self, model: str | os.PathLike[str], port: int | None, *, project_file: Path = RETAIL_PROJECT,
                 project: str = "retail-bot", env: Mapping[str, str] | None = None,
                 log_dir: str | os.PathLike[str] | None = None, startup_timeout: float = 240.0) -> None:
        env = {"INTENT_STORE": "memory", "INTENT_AUTHORING_KEYS": f"console:{CONSOLE_AUTHORING_KEY}",
               "INTENT_JOB_RETRY_AFTER_SECONDS": "0.2", "INTENT_SYNC_INTERVAL_SECONDS": "0.5", **(env or {})}
        super().__init__(model, port, env=env, log_dir=log_dir, startup_timeout=startup_timeout)
        self.project_file, self.project = project_file, project
        self.bootstrap_seconds: float | None = None

    def _await_ready(self, cmd: Sequence[str], cancel: Callable[[], bool] | None = None) -> None:
        super()._await_ready(cmd, cancel)
        try:
            t0 = time.monotonic()
            bootstrap_project(self.base_url, CONSOLE_AUTHORING_KEY, self.project, self.project_file, cancel=cancel)
            self.bootstrap_seconds = time.monotonic() - t0
        except BaseException:
            self.stop()
            raise


def bootstrap_project(endpoint: str, key: str, project: str, project_file: Path, label: str = "retail",
                      deployment: str = "production", cancel: Callable[[], bool] | None = None) -> None:
    """Import ``project_file`` as ``project``, train ``label`` (manual evaluation on its Test utterances) and
    deploy it to ``deployment``, through the CLU authoring API (the console's client). ``cancel`` is polled
    while the jobs run (a stop signal during the stack's start ends it promptly)."""
    from console.clu import AuthoringClient
    from devstack.stack import ServiceStartError

    def sleep(seconds: float) -> None:
        if cancel is not None and cancel():
            raise ServiceStartError("intent-authoring: start cancelled")
        time.sleep(min(seconds, 0.5))

    client = AuthoringClient(endpoint, key, project, job_timeout=300, sleep=sleep)
    client.import_project(json.loads(project_file.read_text(encoding="utf-8")))
    client.wait(client.train(label, {"kind": "manual"}), "training")
    client.deploy(deployment, label)


class ConsoleService(Service):
    """``python -m console --host 127.0.0.1 --port PORT`` (the bot team's console) with the gateway's settings."""

    name = "console"
    default_port = CONSOLE_PORT
    stage = 1  # after the stores and the intent service it talks to

    def command(self) -> list[str]:
        return [sys.executable, "-m", "console", "--host", self.host, "--port", str(self.port)]

    def is_ready(self) -> bool:
        return _http_status(f"{self.base_url}/healthz") == 200

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @staticmethod
    def credentials() -> dict[str, tuple[str, str]]:
        """User -> (roles, password) of the local sign-in."""
        return dict(CONSOLE_USERS)


def console_env(stack: LocalStack, overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """The console's settings: the gateway's (same stores) plus its own ``CONSOLE_*``."""
    env = gateway_env(stack, overrides)
    env.update({
        "CONSOLE_AUTH_MODE": "local",
        "CONSOLE_SECRET": CONSOLE_SECRET,
        "CONSOLE_LOCAL_USERS": ",".join(f"{u}:{roles}:{pw}" for u, (roles, pw) in CONSOLE_USERS.items()),
        "CONSOLE_SECURE_COOKIES": "false",
        "CONSOLE_AUTHORING_ENDPOINT": stack["intent"].base_url,
        "CONSOLE_AUTHORING_KEY": CONSOLE_AUTHORING_KEY,
    })
    return env


def build_stack(options: StackOptions | None = None) -> LocalStack:
    """The local stack described by ``options`` (not started; ``.start()`` it, or use it as a context manager)."""
    o = options or StackOptions()
    ports = {k: 0 for k in DEFAULT_PORTS} if o.free_ports else {**DEFAULT_PORTS, **(o.ports or {})}
    d = o.log_dir
    stack = LocalStack()
    stack.add(Azurite(ports["azurite"], log_dir=d), "azurite")
    stack.add(AzuriteBlob(ports["azurite_blob"], log_dir=d), "azurite_blob")
    stack.add(CosmosStandIn(ports["cosmos"], log_dir=d), "cosmos")
    stack.add(SendBirdStandIn(ports["sendbird"], LOCAL_API_TOKEN, BOT_USER_ID, log_dir=d), "sendbird")
    if o.console:
        stack.add(AuthoringIntentService(ensure_retail_model(), ports["intent"], env=dict(o.intent_env), log_dir=d),
                  "intent")
    else:
        stack.add(IntentService(ensure_retail_model(), ports["intent"], env=dict(o.intent_env), log_dir=d), "intent")
    if o.chaos_seed is not None:
        stack.add(ChaosProxy(stack["intent"].base_url, 0, name="chaos-intent", seed=o.chaos_seed, log_dir=d),
                  "intent_proxy")
        stack.add(ChaosProxy(stack["cosmos"].endpoint.rstrip("/"), 0, tls=True, name="chaos-cosmos",
                             seed=o.chaos_seed + 1, log_dir=d), "cosmos_proxy")
    if o.cache:
        stack.add(RedisServer(0, log_dir=d), "redis")
    if o.telemetry:
        port = 0 if o.free_ports else (o.ports or {}).get("telemetry", TelemetrySinkService.default_port)
        stack.add(TelemetrySinkService(port, log_dir=d), "telemetry")
    if o.app_root is not None:  # last: its settings point at the other services, whose ports are known by now
        stack.add(FunctionsRunner(o.app_root, ports["functions"], gateway_env(stack, o.env_overrides), log_dir=d,
                                  startup_timeout=o.runner_startup_timeout), "functions")
    if o.console:
        port = 0 if o.free_ports else (o.ports or {}).get("console", CONSOLE_PORT)
        stack.add(ConsoleService(port, env=console_env(stack, o.env_overrides), log_dir=d), "console")
    return stack
