"""Every setting the gateway reads, validated in one place at start-up.

Sources:
- App settings (environment variables; ``local.settings.json`` ``Values`` locally,
  Application settings / Key Vault references on Azure). Names are the
  environment variable names below, case-insensitive.
- ``host.json`` ``extensions.queues`` (read-only here): the message encoding and
  ``maxDequeueCount`` that the queue trigger uses, so that messages the app
  sends with the SDK and its own poison decisions agree with the host. Like the
  host, an app setting ``AzureFunctionsJobHost__extensions__queues__<key>``
  overrides the host.json value (azure-functions-host: host configuration from
  environment variables, prefix ``AzureFunctionsJobHost``, ``__`` as separator).

A value that is still an App Service Key Vault reference (``@Microsoft.KeyVault(...)``)
was not resolved by the platform (missing access, wrong secret name): App Service
then hands the literal string to the app. It is refused at start-up, naming the
setting, so it can never become a key (an HMAC key anyone can guess, say).

``load_settings()`` raises :class:`SettingsError` naming every missing or bad
setting, so a misconfigured app fails at start-up with one clear line instead
of at the first chat message.
"""

from __future__ import annotations

import functools
import json
import os
import re
from pathlib import Path
from collections.abc import Mapping
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, field_validator, model_validator

APP_ROOT = Path(__file__).resolve().parent.parent


class SettingsError(RuntimeError):
    """Raised at start-up when an app setting or host.json is missing or invalid."""


class HostQueueConfig(BaseModel):
    """The part of ``host.json`` (``extensions.queues``) the app's own code depends on.

    Spec: host.json reference, "queues" (Azure Functions extension bundle 4.x).
    """

    message_encoding: Literal["base64", "none"] = "base64"
    max_dequeue_count: int = Field(default=5, ge=1)

    @classmethod
    def from_host_json(cls, path: Path, environ: Mapping[str, str] | None = None) -> "HostQueueConfig":
        """Read ``extensions.queues`` from ``host.json`` at ``path``, with the host's app-setting overrides
        (``AzureFunctionsJobHost__extensions__queues__maxDequeueCount`` etc., case-insensitive) from
        ``environ`` (default ``os.environ``).

        Raises :class:`SettingsError` if the file is missing, not JSON, or holds bad values.
        """
        try:
            host = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SettingsError(f"cannot read {path}: {exc}") from exc
        queues = {k.lower(): v for k, v in host.get("extensions", {}).get("queues", {}).items()}
        lowered = {k.lower(): v for k, v in (os.environ if environ is None else environ).items()}
        overrides = {k[len(HOST_QUEUES_OVERRIDE):]: v for k, v in lowered.items() if k.startswith(HOST_QUEUES_OVERRIDE)}
        queues.update(overrides)
        try:
            return cls(
                message_encoding=queues.get("messageencoding", "base64"),
                max_dequeue_count=queues.get("maxdequeuecount", 5),
            )
        except ValidationError as exc:
            where = f"{path} / {HOST_QUEUES_OVERRIDE}*" if overrides else str(path)
            raise SettingsError(f"{where}: extensions.queues: {_describe(exc)}") from exc


#: App-setting prefix (lower-cased) the host reads ``extensions.queues`` overrides from.
HOST_QUEUES_OVERRIDE = "azurefunctionsjobhost__extensions__queues__"
#: What App Service leaves in a setting whose Key Vault reference it could not resolve.
KEY_VAULT_REFERENCE_PREFIX = "@microsoft.keyvault("
#: Hosts where plain ``http://`` is allowed (the local stack); elsewhere outbound calls need ``https://``.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})


class Settings(BaseModel):
    """App settings. Times are in seconds, sizes in bytes, unless a name says otherwise.

    Field ``foo_bar`` is read from the app setting ``FOO_BAR`` (see :func:`env_name`).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    # --- Storage queues (the same connection the queue triggers/bindings use) ---
    # Either a connection string, or the host's identity-based form (account name + managed identity).
    azure_webjobs_storage: str = Field(default="", repr=False)
    storage_account_name: str = ""
    storage_client_id: str = ""

    # --- SendBird (webhook signature + Platform API) ---
    sendbird_api_token: str = Field(min_length=8, repr=False)
    sendbird_api_base_url: HttpUrl
    sendbird_bot_user_id: str = Field(min_length=1)
    sendbird_ignored_sender_ids: str = ""
    sendbird_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    webhook_max_body_bytes: int = Field(default=32_768, ge=1_024, le=45_000)
    # A signed webhook older than this (payload.created_at) is refused as a replay; handled message ids are
    # remembered at least this long. Newer than now + the skew: refused too.
    webhook_replay_window_seconds: int = Field(default=600, ge=60, le=7 * 24 * 3600)
    webhook_max_clock_skew_seconds: int = Field(default=60, ge=0, le=3600)

    # --- Cosmos DB (user state) ---
    cosmos_endpoint: HttpUrl
    cosmos_key: str = Field(default="", repr=False, description="empty: managed identity (DefaultAzureCredential)")
    cosmos_database: str = "chatbot"
    cosmos_state_container: str = "user_state"
    # The review inbox (items the intent stage captured for the bot team, shared/review.py) and the response
    # catalog's versions (shared/catalog.py): containers of the same database, partition key /id.
    cosmos_review_container: str = "review_items"
    cosmos_catalog_container: str = "response_catalog"
    cosmos_verify_tls: bool = True
    cosmos_create_if_missing: bool = False
    cosmos_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # Local tooling only (the benchmark, tests): a directory where each process writes its Cosmos DB operation
    # counters twice a second (shared/clients/cosmos.py CosmosCounters). Empty: not written.
    cosmos_op_counts_dir: str = ""

    # --- Intent service (Azure CLU protocol, api-version 2023-04-01) ---
    intent_endpoint: HttpUrl
    intent_api_key: str = Field(default="", repr=False)
    intent_project_name: str = "retail-bot"
    intent_deployment_name: str = "production"
    intent_api_version: str = "2023-04-01"
    intent_timeout_seconds: float = Field(default=3.0, gt=0, le=30)
    intent_retries: int = Field(default=2, ge=0, le=5)
    intent_confidence_threshold: float = Field(default=0.5, ge=0, le=1)
    # A message routed to fallback, or answered with a confidence score below this, is captured for the review
    # inbox (queue review-capture, off the hot path; shared/review.py). 0: only fallbacks.
    review_confidence_threshold: float = Field(default=0.7, ge=0, le=1)
    # Longest text sent to the intent service (CLU's conversation item limit is 1,000 characters).
    intent_max_text_chars: int = Field(default=1_000, ge=50, le=1_000)
    intent_breaker_failures: int = Field(default=5, ge=1, le=100)
    intent_breaker_reset_seconds: float = Field(default=10.0, gt=0, le=600)

    # --- Conversation behaviour ---
    default_language: Literal["ko", "en"] = "ko"
    handoff_reset_seconds: int = Field(default=1_800, ge=0)
    state_history_limit: int = Field(default=20, ge=1, le=200)
    order_tracking_url: str = "https://shop.example.com/orders/{order_number}"
    product_search_url: str = "https://shop.example.com/search?category={category}"
    reply_max_reschedules: int = Field(default=10, ge=0)
    reply_send_lease_seconds: int = Field(default=15, ge=1, le=600)
    order_max_wait_seconds: int = Field(default=30, ge=0, le=600)
    retry_budget_seconds: int = Field(default=60, ge=0, le=3600)
    # How long a worker uses its copy of the response catalog before it looks for a newer published version
    # (the console edits the catalog without a redeploy; shared/catalog.py LiveCatalog). 0: the shipped file only.
    catalog_refresh_seconds: float = Field(default=5.0, ge=0, le=3600)

    # --- Daily review export (shared/review_export.py; timer function review_export) ---
    # Blob container of the JSONL files (one per UTC day, YYYY/MM/DD.jsonl) in the AzureWebJobsStorage account.
    review_export_container: str = Field(default="review-exports", min_length=3, max_length=63,
                                         pattern=r"^[a-z0-9]+(-[a-z0-9]+)*$")
    # NCRONTAB (six fields, seconds first, UTC on Azure), read by the host through %REVIEW_EXPORT_SCHEDULE%.
    review_export_schedule: str = "0 5 0 * * *"
    # A run exports every day since the last exported one, at most this many days back (a host down for days).
    review_export_catch_up_days: int = Field(default=7, ge=1, le=31)
    # Also write the current UTC day so far (rewritten by later runs); the local stack turns it on.
    review_export_include_today: bool = False

    # --- Prediction cache (shared/intent_cache.py, Redis shared by every instance); empty URL: off ---
    # redis://127.0.0.1:PORT/0 locally; rediss://HOST:10000 (Azure Managed Redis) elsewhere. A password in the URL
    # only through a Key Vault reference; with INTENT_CACHE_PRINCIPAL_ID the app signs in with Entra ID instead.
    intent_cache_url: str = Field(default="", repr=False)
    # HMAC-SHA256 key of the cache keys (a secret, 16+ characters): Redis readers cannot confirm a guessed text.
    intent_cache_hash_key: str = Field(default="", repr=False)
    intent_cache_ttl_seconds: int = Field(default=3_600, ge=1, le=7 * 24 * 3600)
    # Connect and socket timeout of each cache operation (ms): the most a slow or hung Redis delays a message.
    intent_cache_timeout_ms: int = Field(default=50, ge=5, le=1_000)
    # How long the intent service's current model version is reused (s); 0: asked for every message.
    intent_cache_version_ttl_seconds: float = Field(default=1.0, ge=0, le=60)
    # Object id of the app's managed identity: Entra ID authentication to Azure Managed Redis (no access key).
    intent_cache_principal_id: str = ""

    # --- Telemetry (Application Insights); empty disables it ---
    applicationinsights_connection_string: str = Field(default="", repr=False)
    telemetry_sampling_rate: float = Field(default=1.0, ge=0, le=1)
    telemetry_pii_mode: Literal["off", "mask", "strict"] = "off"
    # HMAC-SHA256 key for user/channel ids in telemetry (mask/strict); a secret (Key Vault reference on Azure).
    telemetry_pii_hash_key: str = Field(default="", repr=False)
    telemetry_export_interval_seconds: float = Field(default=15.0, ge=0.2, le=300)

    @model_validator(mode="after")
    def _storage_connection_given(self) -> "Settings":
        if not self.azure_webjobs_storage and not self.storage_account_name:
            raise ValueError("set AzureWebJobsStorage (connection string) or AzureWebJobsStorage__accountName "
                             "(identity-based connection)")
        return self

    @model_validator(mode="after")
    def _pii_hash_key_given(self) -> "Settings":
        if self.telemetry_pii_mode != "off" and len(self.telemetry_pii_hash_key) < 16:
            raise ValueError("TELEMETRY_PII_HASH_KEY (at least 16 characters, a secret) is required when "
                             "TELEMETRY_PII_MODE is mask or strict: ids are hashed with it (HMAC-SHA256)")
        return self

    @model_validator(mode="after")
    def _intent_cache_usable(self) -> "Settings":
        if not self.intent_cache_url:
            return self
        url = urlsplit(self.intent_cache_url)
        if url.scheme not in ("redis", "rediss") or not url.hostname:
            raise ValueError("INTENT_CACHE_URL must be a redis:// or rediss:// URL with a host")
        if url.hostname not in LOOPBACK_HOSTS:
            if url.scheme != "rediss":
                raise ValueError("INTENT_CACHE_URL must be rediss:// (TLS) outside the local stack")
            if not (url.password or self.intent_cache_principal_id):
                raise ValueError("INTENT_CACHE_URL outside the local stack needs INTENT_CACHE_PRINCIPAL_ID (Entra ID) "
                                 "or a password in the URL (through a Key Vault reference)")
        if len(self.intent_cache_hash_key) < 16:
            raise ValueError("INTENT_CACHE_HASH_KEY (at least 16 characters, a secret) is required with "
                             "INTENT_CACHE_URL: cache keys are HMACs of the text")
        return self

    @field_validator("sendbird_api_base_url", "intent_endpoint")
    @classmethod
    def _https_outside_loopback(cls, value: HttpUrl) -> HttpUrl:
        if value.scheme != "https" and (value.host or "") not in LOOPBACK_HOSTS:
            raise ValueError(f"must be an https:// URL (plain http only for the local stack on loopback), "
                             f"got scheme {value.scheme!r}")
        return value

    @field_validator("review_export_schedule")
    @classmethod
    def _six_field_ncrontab(cls, value: str) -> str:
        fields = value.split()
        if len(fields) != 6 or not all(re.fullmatch(r"[0-9A-Za-z*,/?#LW-]+", f) for f in fields):
            raise ValueError("must be an NCRONTAB expression of six fields, seconds first ({second} {minute} "
                             f"{{hour}} {{day}} {{month}} {{day-of-week}}), e.g. '0 5 0 * * *'; got {value!r}")
        return " ".join(fields)

    @field_validator("order_tracking_url")
    @classmethod
    def _has_order_placeholder(cls, value: str) -> str:
        if "{order_number}" not in value:
            raise ValueError("must contain the placeholder {order_number}")
        return value

    @field_validator("product_search_url")
    @classmethod
    def _has_category_placeholder(cls, value: str) -> str:
        if "{category}" not in value:
            raise ValueError("must contain the placeholder {category}")
        return value

    @property
    def ignored_sender_ids(self) -> frozenset[str]:
        """The bot itself plus ``SENDBIRD_IGNORED_SENDER_IDS`` (comma-separated user ids)."""
        extra = {s.strip() for s in self.sendbird_ignored_sender_ids.split(",") if s.strip()}
        return frozenset(extra | {self.sendbird_bot_user_id})

    @property
    def sendbird_base_url(self) -> str:
        return str(self.sendbird_api_base_url).rstrip("/")


#: Environment variable name for each field whose env name differs from the upper-cased field name.
_ENV_NAMES = {
    "azure_webjobs_storage": "AzureWebJobsStorage",
    # The Functions host's identity-based connection settings for the same connection name.
    "storage_account_name": "AzureWebJobsStorage__accountName",
    "storage_client_id": "AzureWebJobsStorage__clientId",
}
#: Settings that are alternatives to a connection string (identity-based); not in local.settings.sample.json,
#: whose local values use connection strings.
IDENTITY_SETTINGS = frozenset({"AzureWebJobsStorage__accountName", "AzureWebJobsStorage__clientId"})


def env_name(field: str) -> str:
    """The app setting name of a :class:`Settings` field (e.g. ``intent_endpoint`` -> ``INTENT_ENDPOINT``)."""
    return _ENV_NAMES.get(field, field.upper())


def setting_names() -> list[str]:
    """Every app setting name the gateway reads, in declaration order."""
    return [env_name(name) for name in Settings.model_fields]


def _describe(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "?"
        name = env_name(field) if field in Settings.model_fields else (field if field != "?" else "settings")
        parts.append(f"{name}: {err['msg']}")
    return "; ".join(parts)


def load_settings(environ: dict[str, str] | None = None, host_json: Path | None = None) -> "AppConfig":
    """Read and validate app settings and host.json.

    ``environ`` defaults to ``os.environ``; ``host_json`` to ``host.json`` beside
    ``function_app.py``. Raises :class:`SettingsError` naming each bad setting.
    """
    source = os.environ if environ is None else environ
    lowered = {k.lower(): v for k, v in source.items()}
    values = {f: lowered[env_name(f).lower()] for f in Settings.model_fields if env_name(f).lower() in lowered}
    unresolved = [env_name(f) for f, v in values.items() if v.strip().lower().startswith(KEY_VAULT_REFERENCE_PREFIX)]
    if unresolved:
        raise SettingsError(
            f"invalid app settings: {', '.join(unresolved)}: unresolved Key Vault reference (App Service could not "
            "read the secret: check the app's identity has 'Key Vault Secrets User' on it and the secret name; "
            "see the setting's 'Key Vault Reference' status in the portal)")
    try:
        settings = Settings.model_validate(values)
    except ValidationError as exc:
        raise SettingsError(f"invalid app settings: {_describe(exc)}") from exc
    host = HostQueueConfig.from_host_json(host_json or APP_ROOT / "host.json", source)
    return AppConfig(settings=settings, host=host)


class AppConfig(BaseModel):
    """Validated app settings plus the host.json values the code depends on."""

    model_config = {"frozen": True, "arbitrary_types_allowed": True}
    settings: Settings
    host: HostQueueConfig


@functools.cache
def get_config() -> AppConfig:
    """The process-wide configuration, loaded once per worker process."""
    return load_settings()
