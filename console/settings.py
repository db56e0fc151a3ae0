"""The console's own settings (environment variables ``CONSOLE_*``), validated once at start-up.

The console also reads the gateway's app settings (:func:`shared.settings.load_settings`: Cosmos DB, Storage, the
PII mode), so it always looks at the same stores as the functions; in Azure its App Service gets the same values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, ValidationError, field_validator, model_validator

ROLES = ("editor", "operator")
Role = Literal["editor", "operator"]


class SettingsError(RuntimeError):
    """A console setting is missing or invalid (the message names it)."""


@dataclass(frozen=True)
class LocalUser:
    name: str
    roles: tuple[str, ...]
    password: str


def parse_local_users(raw: str) -> dict[str, LocalUser]:
    """``name:role[+role]:password`` entries separated by commas (roles: editor, operator; passwords of 12+
    characters). Raises ``ValueError`` naming the bad entry (never the password)."""
    users: dict[str, LocalUser] = {}
    for i, part in enumerate(p.strip() for p in raw.split(",")):
        if not part:
            continue
        name, sep1, rest = part.partition(":")
        roles, sep2, password = rest.partition(":")
        role_list = tuple(r.strip() for r in roles.split("+") if r.strip())
        if not (sep1 and sep2 and name.strip()):
            raise ValueError(f"entry {i + 1}: expected name:role[+role]:password")
        if not role_list or any(r not in ROLES for r in role_list):
            raise ValueError(f"entry {i + 1} ({name}): roles must be {' or '.join(ROLES)}, joined by '+'")
        if len(password) < 12:
            raise ValueError(f"entry {i + 1} ({name}): the password must have at least 12 characters")
        users[name.strip()] = LocalUser(name.strip(), role_list, password)
    return users


class ConsoleSettings(BaseModel):
    """Field ``foo`` is read from ``CONSOLE_FOO``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: ``local``: a sign-in page with the users of ``CONSOLE_LOCAL_USERS``; ``easyauth``: behind App Service
    #: Authentication (Entra ID), which signs users in and passes the principal (with its app roles) in headers.
    auth_mode: Literal["local", "easyauth"] = "local"
    #: Signs the session cookie (which holds the user and the CSRF token). A secret, 32+ characters.
    secret: str = Field(min_length=32, repr=False)
    local_users: str = Field(default="", repr=False)
    #: Entra app role -> console role (``easyauth``).
    easyauth_roles: str = "Console.Editor:editor,Console.Operator:operator"
    #: Cookies only over https (false only for the local stack on http://127.0.0.1).
    secure_cookies: bool = True
    session_hours: float = Field(default=8, gt=0, le=24 * 7)

    #: The CLU authoring endpoint: the project's intent service, or an Azure AI Language resource
    #: (``https://<resource>.cognitiveservices.azure.com``); and its authoring key.
    authoring_endpoint: HttpUrl
    authoring_key: str = Field(default="", repr=False)
    authoring_api_version: str = "2023-04-01"
    authoring_timeout_seconds: float = Field(default=30, gt=0, le=300)
    #: How long the console waits for an import, a deployment or a swap job.
    job_timeout_seconds: float = Field(default=300, gt=0, le=3600)
    project_name: str = ""
    production_deployment: str = ""
    staging_deployment: str = "staging"
    audit_container: str = "console_audit"

    @field_validator("authoring_endpoint")
    @classmethod
    def _https_outside_loopback(cls, value: HttpUrl) -> HttpUrl:
        if value.scheme != "https" and (value.host or "") not in ("127.0.0.1", "localhost", "::1", "[::1]"):
            raise ValueError("must be an https:// URL (plain http only on loopback)")
        return value

    @model_validator(mode="after")
    def _users_for_local_mode(self) -> "ConsoleSettings":
        users = parse_local_users(self.local_users)
        if self.auth_mode == "local" and not users:
            raise ValueError("CONSOLE_LOCAL_USERS is required when CONSOLE_AUTH_MODE is local")
        self.role_map()  # validates
        return self

    def users(self) -> dict[str, LocalUser]:
        return parse_local_users(self.local_users)

    def role_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for part in (p.strip() for p in self.easyauth_roles.split(",")):
            if not part:
                continue
            app_role, sep, role = part.rpartition(":")
            if not sep or role not in ROLES or not app_role:
                raise ValueError(f"CONSOLE_EASYAUTH_ROLES entry {part!r}: expected <app role>:<editor|operator>")
            out[app_role] = role
        return out

    @property
    def authoring_base(self) -> str:
        return str(self.authoring_endpoint).rstrip("/")


def env_name(field: str) -> str:
    return "CONSOLE_" + field.upper()


def setting_names() -> list[str]:
    return [env_name(f) for f in ConsoleSettings.model_fields]


def load_console_settings(environ: Mapping[str, str] | None = None, *, project_name: str = "",
                          production_deployment: str = "") -> ConsoleSettings:
    """Read and validate the ``CONSOLE_*`` settings; project and production deployment default to the gateway's
    ``INTENT_PROJECT_NAME`` / ``INTENT_DEPLOYMENT_NAME``. Raises :class:`SettingsError` naming each bad one."""
    source = os.environ if environ is None else environ
    lowered = {k.lower(): v for k, v in source.items()}
    values = {f: lowered[env_name(f).lower()] for f in ConsoleSettings.model_fields if env_name(f).lower() in lowered}
    values.setdefault("project_name", project_name)
    values.setdefault("production_deployment", production_deployment)
    try:
        return ConsoleSettings.model_validate(values)
    except ValidationError as exc:
        problems = "; ".join(f"{env_name(str(e['loc'][0])) if e['loc'] else 'settings'}: {e['msg']}"
                             for e in exc.errors())
        raise SettingsError(f"invalid console settings: {problems}") from exc
