"""Every setting the gateway reads, validated in one place at start-up.

Sources:
- App settings (environment variables; ``local.settings.json`` ``Values`` locally,
  Application settings / Key Vault references on Azure). Names are the
  environment variable names below, case-insensitive.
- ``host.json`` ``extensions.queues`` (read-only here): the message encoding and
  ``maxDequeueCount`` that the queue trigger uses, so that messages the app
  sends with the SDK and its own poison decisions agree with the host.

``load_settings()`` raises :class:`SettingsError` naming every missing or bad
setting, so a misconfigured app fails at start-up with one clear line instead
of at the first chat message.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Literal

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
    def from_host_json(cls, path: Path) -> "HostQueueConfig":
        """Read ``extensions.queues`` from ``host.json`` at ``path``.

        Raises :class:`SettingsError` if the file is missing, not JSON, or holds bad values.
        """
        try:
            host = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise SettingsError(f"cannot read {path}: {exc}") from exc
        queues = host.get("extensions", {}).get("queues", {})
        try:
            return cls(
                message_encoding=queues.get("messageEncoding", "base64"),
                max_dequeue_count=queues.get("maxDequeueCount", 5),
            )
        except ValidationError as exc:
            raise SettingsError(f"{path}: extensions.queues: {_describe(exc)}") from exc


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

    # --- Cosmos DB (user state) ---
    cosmos_endpoint: HttpUrl
    cosmos_key: str = Field(default="", repr=False, description="empty: managed identity (DefaultAzureCredential)")
    cosmos_database: str = "chatbot"
    cosmos_state_container: str = "user_state"
    cosmos_verify_tls: bool = True
    cosmos_create_if_missing: bool = False
    cosmos_timeout_seconds: float = Field(default=5.0, gt=0, le=60)

    # --- Intent service (Azure CLU protocol, api-version 2023-04-01) ---
    intent_endpoint: HttpUrl
    intent_api_key: str = Field(default="", repr=False)
    intent_project_name: str = "retail-bot"
    intent_deployment_name: str = "production"
    intent_api_version: str = "2023-04-01"
    intent_timeout_seconds: float = Field(default=3.0, gt=0, le=30)
    intent_retries: int = Field(default=2, ge=0, le=5)
    intent_confidence_threshold: float = Field(default=0.5, ge=0, le=1)
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

    # --- Telemetry (Application Insights); empty disables it ---
    applicationinsights_connection_string: str = Field(default="", repr=False)
    telemetry_sampling_rate: float = Field(default=1.0, ge=0, le=1)
    telemetry_pii_mode: Literal["off", "mask", "strict"] = "off"
    telemetry_export_interval_seconds: float = Field(default=15.0, ge=0.2, le=300)

    @model_validator(mode="after")
    def _storage_connection_given(self) -> "Settings":
        if not self.azure_webjobs_storage and not self.storage_account_name:
            raise ValueError("set AzureWebJobsStorage (connection string) or AzureWebJobsStorage__accountName "
                             "(identity-based connection)")
        return self

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
    lowered = {k.lower(): v for k, v in (os.environ if environ is None else environ).items()}
    values = {f: lowered[env_name(f).lower()] for f in Settings.model_fields if env_name(f).lower() in lowered}
    try:
        settings = Settings(**values)
    except ValidationError as exc:
        raise SettingsError(f"invalid app settings: {_describe(exc)}") from exc
    host = HostQueueConfig.from_host_json(host_json or APP_ROOT / "host.json")
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
