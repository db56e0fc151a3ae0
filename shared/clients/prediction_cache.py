"""The prediction cache's adapters: Redis (:class:`RedisPredictionCache`, :class:`~shared.ports.PredictionCache`)
and the intent service's current model version (:class:`DeploymentVersionProbe`, :class:`~shared.ports.ModelVersions`).

What is cached, under which key, and why a model swap is never answered from the cache is
:mod:`shared.intent_cache`'s business; this module only stores strings and reads versions.

Redis (``INTENT_CACHE_URL``: ``redis://127.0.0.1:PORT/0`` on the local stack, ``rediss://HOST:10000`` for Azure
Managed Redis; TLS is required outside loopback):

- every operation has a hard time budget: connect and socket timeouts of ``INTENT_CACHE_TIMEOUT_MS``
  (default 50 ms), no client-side retries (redis-py's default retries are switched off), no handshake round trips
  beyond AUTH (``CLIENT SETINFO`` is not sent);
- a circuit breaker (the ``circuitbreaker`` package, as the intent client) opens after
  :data:`BREAKER_FAILURES` failures in a row: for :data:`BREAKER_RESET_SECONDS` the cache is skipped without a
  network call, so a dead or hung Redis costs a message at most one timeout until the breaker opens, then nothing;
- every failure (timeout, refused connection, open circuit, a Redis error, a failed Entra ID token request)
  raises :class:`~shared.errors.TransientError`; the caller treats it as a miss. An open circuit raises its
  subclass :class:`~shared.errors.RateLimited` (retry after the circuit's remaining open time, as the intent
  client's breaker does), so that the caller can count it apart (``outcome=breaker_open``).

Authentication: a password in the URL (local stack, or a Key Vault reference holding the whole URL), or, for
Azure Managed Redis / Azure Cache for Redis with Microsoft Entra ID, no password and ``INTENT_CACHE_PRINCIPAL_ID``
(the object id of the function app's managed identity): each new connection authenticates as that principal with
an access token for ``https://redis.azure.com/.default`` (:class:`EntraIdCredentialProvider`; tokens are reused
until 5 minutes before they expire). A connection the server closes when its token expires fails one command
(a miss) and is replaced by a freshly authenticated one.

Model version (:class:`DeploymentVersionProbe`), first found of:

1. ``GET {INTENT_ENDPOINT}/model`` of the project's intent service (no model inference, no key needed): with the
   model lifecycle on, the answer lists every deployment with its ``modelVersion``; a single-model service sends
   ``x-model-version``;
2. Azure CLU, which has no ``/model`` and reports no version in predictions: the authoring API's deployment
   (``GET {INTENT_ENDPOINT}/language/authoring/analyze-conversations/projects/{project}/deployments/{deployment}``,
   ``INTENT_API_VERSION``, the same resource key): ``modelId@lastDeployedDateTime``, which changes with every
   deployment or swap to the deployment.

The answer is reused for ``INTENT_CACHE_VERSION_TTL_SECONDS`` (0: asked for every message); a failed look-up
gives ``None`` for the same time, and the cache is then bypassed.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, urlsplit

import redis
import requests
from circuitbreaker import CircuitBreaker, CircuitBreakerError
from redis.backoff import NoBackoff
from redis.retry import Retry

from shared import timing
from shared.errors import RateLimited, TransientError
from shared.ports import TelemetryPort
from shared.settings import Settings
from shared.telemetry import DISABLED

log = logging.getLogger(__name__)

#: Failures in a row that open the Redis circuit, and how long it stays open (seconds).
BREAKER_FAILURES, BREAKER_RESET_SECONDS = 3, 10.0
#: Connections per worker (the stages' thread pool is 32 threads).
MAX_CONNECTIONS = 32
#: The Entra ID token scope of Azure Managed Redis and Azure Cache for Redis.
REDIS_TOKEN_SCOPE = "https://redis.azure.com/.default"
#: Timeout of one model-version look-up, seconds.
VERSION_TIMEOUT_SECONDS = 0.5


class EntraIdCredentialProvider(redis.CredentialProvider):
    """redis-py credentials for Microsoft Entra ID: (principal object id, access token).

    ``credential``: an azure-identity ``TokenCredential`` (``get_token(scope)`` -> token with ``.token`` and
    ``.expires_on`` epoch seconds). Called once per new connection; the token is reused until 5 minutes before it
    expires. Errors of ``credential`` propagate (the connection attempt fails: a cache miss).
    :meth:`keep_fresh` renews the token on a background thread, so that opening a connection never waits for the
    token endpoint (whose latency is not bounded by the cache's timeout).
    """

    def __init__(self, principal_id: str, credential: Any, clock: Callable[[], float] = time.time):
        self._principal_id = principal_id
        self._credential = credential
        self._clock = clock
        self._token: tuple[str, float] | None = None
        self._lock = threading.Lock()

    def get_credentials(self) -> tuple[str, str]:
        with self._lock:
            if self._token is None or self._token[1] - 300 <= self._clock():
                token = self._credential.get_token(REDIS_TOKEN_SCOPE)
                self._token = (token.token, float(token.expires_on))
            return self._principal_id, self._token[0]

    def keep_fresh(self, stop: threading.Event | None = None) -> threading.Thread:
        """Start a daemon thread that gets a token now and renews it 10 minutes before it expires (after a failure:
        again in 30 s), until ``stop`` is set. Returns the thread."""
        stop = stop or threading.Event()

        def renew() -> None:
            while not stop.is_set():
                try:
                    with self._lock:
                        token = self._credential.get_token(REDIS_TOKEN_SCOPE)
                        self._token = (token.token, float(token.expires_on))
                    wait = max(30.0, self._token[1] - 600 - self._clock())
                except Exception:  # the next connection tries again itself
                    log.warning("Entra ID token for the prediction cache not renewed; retrying in 30 s", exc_info=True)
                    wait = 30.0
                stop.wait(wait)

        thread = threading.Thread(target=renew, name="prediction-cache-token", daemon=True)
        thread.start()
        return thread


class RedisPredictionCache:
    """:class:`~shared.ports.PredictionCache` on Redis. One instance (one connection pool) per worker.

    ``url``: ``redis://`` or ``rediss://`` URL (``/db`` optional); ``timeout_seconds``: connect and socket timeout
    of every operation; ``credential_provider``: redis-py credentials (Entra ID) when the URL has no password.
    Errors: :class:`~shared.errors.TransientError` for every failure; an open circuit:
    :class:`~shared.errors.RateLimited`, a subclass.
    """

    def __init__(self, url: str, *, timeout_seconds: float = 0.05, telemetry: TelemetryPort = DISABLED,
                 credential_provider: redis.CredentialProvider | None = None,
                 breaker_failures: int = BREAKER_FAILURES, breaker_reset_seconds: float = BREAKER_RESET_SECONDS):
        self._telemetry = telemetry
        self._target = urlsplit(url).hostname or ""
        extra: dict[str, Any] = {"credential_provider": credential_provider} if credential_provider else {}
        self._redis = redis.Redis.from_url(
            url, socket_timeout=timeout_seconds, socket_connect_timeout=timeout_seconds,
            retry=Retry(NoBackoff(), 0), retry_on_timeout=False, health_check_interval=0,
            max_connections=MAX_CONNECTIONS, driver_info=None, decode_responses=True, **extra)
        self.breaker = CircuitBreaker(failure_threshold=breaker_failures, recovery_timeout=breaker_reset_seconds,
                                      expected_exception=TransientError, name="prediction-cache")
        self._guarded = self.breaker.decorate(self._call)

    def get(self, key: str) -> str | None:
        """The value stored under ``key``, None when there is none (or it expired)."""
        value = self._run("GET", lambda: self._redis.get(key))
        return value if isinstance(value, str) else None

    def set(self, key: str, value: str, ttl_seconds: int) -> None:
        """Store ``value`` under ``key`` for ``ttl_seconds`` (>= 1), replacing what was there."""
        self._run("SET", lambda: self._redis.set(key, value, ex=max(1, int(ttl_seconds))))

    def close(self) -> None:
        """Close the pool's connections. Never raises."""
        try:
            self._redis.close()
        except Exception:  # pragma: no cover - closing sockets
            log.debug("closing the prediction cache's connections failed", exc_info=True)

    def _run(self, operation: str, call: Callable[[], Any]) -> Any:
        try:
            return self._guarded(operation, call)
        except CircuitBreakerError as exc:
            remaining = self.breaker.open_remaining
            raise RateLimited(f"prediction cache circuit open for {remaining:.0f} s "
                              f"after {self.breaker.failure_count} failures", max(1.0, remaining)) from exc

    def _call(self, operation: str, call: Callable[[], Any]) -> Any:
        try:
            with timing.dependency(self._telemetry, "redis", operation, self._target, "Redis"):
                return call()
        except Exception as exc:  # Redis, socket, TLS and credential errors alike: the cache never fails a message
            raise TransientError(f"prediction cache {operation} failed: {type(exc).__name__}: {exc}") from exc


def credential_provider_for(settings: Settings) -> redis.CredentialProvider | None:
    """Entra ID credentials when ``INTENT_CACHE_PRINCIPAL_ID`` is set (the app's managed identity, client id
    ``AzureWebJobsStorage__clientId`` for a user-assigned one), kept fresh in the background; else None (password
    in the URL or none)."""
    if not settings.intent_cache_principal_id:
        return None
    from azure.identity import DefaultAzureCredential

    credential = DefaultAzureCredential(managed_identity_client_id=settings.storage_client_id or None)
    provider = EntraIdCredentialProvider(settings.intent_cache_principal_id, credential)
    provider.keep_fresh()
    return provider


def build_cache(settings: Settings, telemetry: TelemetryPort = DISABLED) -> RedisPredictionCache:
    """The Redis adapter for ``INTENT_CACHE_URL`` and ``INTENT_CACHE_TIMEOUT_MS`` (no I/O here)."""
    return RedisPredictionCache(settings.intent_cache_url, timeout_seconds=settings.intent_cache_timeout_ms / 1000,
                                telemetry=telemetry, credential_provider=credential_provider_for(settings))


class DeploymentVersionProbe:
    """:class:`~shared.ports.ModelVersions`: the model version the intent service currently answers
    ``INTENT_PROJECT_NAME`` / ``INTENT_DEPLOYMENT_NAME`` with (see module docstring).

    ``ttl_seconds``: how long an answer (or a failed look-up) is reused; ``clock``: monotonic seconds.
    Thread-safe; one look-up at a time per worker (others wait for it, at most its timeout).
    """

    def __init__(self, settings: Settings, *, ttl_seconds: float | None = None,
                 clock: Callable[[], float] = time.monotonic, session: requests.Session | None = None):
        base = str(settings.intent_endpoint).rstrip("/")
        self._url = base + "/model"
        self._project, self._deployment = settings.intent_project_name, settings.intent_deployment_name
        self._clu_url = (f"{base}/language/authoring/analyze-conversations/projects/{quote(self._project)}"
                         f"/deployments/{quote(self._deployment)}")
        self._clu_params = {"api-version": settings.intent_api_version}
        self._ttl = settings.intent_cache_version_ttl_seconds if ttl_seconds is None else ttl_seconds
        self._clock = clock
        self._session = session or requests.Session()
        self._session.trust_env = False
        if settings.intent_api_key:
            self._session.headers["Ocp-Apim-Subscription-Key"] = settings.intent_api_key
        self._lock = threading.Lock()
        self._version: str | None = None
        self._checked_at: float | None = None
        self.lookups = 0

    def current(self) -> str | None:
        """The current model version, or None when the service does not tell (the cache is then bypassed)."""
        with self._lock:
            now = self._clock()
            if self._checked_at is None or now - self._checked_at >= self._ttl:
                self._version = self._lookup()
                self._checked_at = self._clock()
            return self._version

    def observe(self, version: str | None) -> None:
        """A prediction was answered by ``version``: if it differs from the known one, it is the current one now
        (a swap seen before the next look-up)."""
        if version:
            with self._lock:
                if version != self._version:
                    self._version = version
                    self._checked_at = self._clock()

    def _lookup(self) -> str | None:
        self.lookups += 1
        try:
            return self._from_model_info() or self._from_clu_deployment()
        except (requests.RequestException, ValueError, AttributeError, TypeError):
            log.info("model version look-up failed; the prediction cache is bypassed meanwhile", exc_info=True)
        return None

    def _from_model_info(self) -> str | None:
        """The project's intent service: ``GET /model``."""
        resp = self._session.get(self._url, timeout=VERSION_TIMEOUT_SECONDS, allow_redirects=False)
        if resp.status_code != 200:
            return None
        header = resp.headers.get("x-model-version")
        if header:
            return str(header)
        for d in resp.json().get("deployments") or []:
            if d.get("projectName") == self._project and d.get("deploymentName") == self._deployment:
                return str(d.get("modelVersion") or "") or None
        return None

    def _from_clu_deployment(self) -> str | None:
        """Azure CLU: the authoring API's deployment, ``modelId@lastDeployedDateTime``."""
        resp = self._session.get(self._clu_url, params=self._clu_params, timeout=VERSION_TIMEOUT_SECONDS,
                                 allow_redirects=False)
        if resp.status_code != 200:
            return None
        body = resp.json()
        model, deployed = body.get("modelId"), body.get("lastDeployedDateTime")
        return f"{model}@{deployed}" if model and deployed else None
