"""Settings of the authoring service (environment variables; see intent_service/README.md, "Authoring")."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Mapping, Optional

from .evaluation import GatePolicy
from .schema import Limits


class ConfigError(ValueError):
    pass


def _float(env: Mapping[str, str], name: str, default: float, minimum: float = 0.0) -> float:
    raw = env.get(name)
    if raw is None or not str(raw).strip():
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not value >= minimum or value == float("inf"):
        raise ConfigError(f"{name} must be >= {minimum}, got {raw!r}")
    return value


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 1) -> int:
    return int(_float(env, name, default, minimum))


def _no_unresolved_reference(name: str, value: Optional[str]) -> None:
    """App Service passes a Key Vault reference it cannot resolve as its literal text: never use that as a
    key or a signing secret (its text is visible to anyone who can read the app settings)."""
    if value and value.strip().startswith("@Microsoft.KeyVault("):
        raise ConfigError(f"{name} is an unresolved Key Vault reference; check the app's identity and the secret")


def parse_keys(raw: Optional[str]) -> Dict[str, str]:
    """``INTENT_AUTHORING_KEYS``: ``name:key`` pairs separated by commas (the name goes to the audit log)."""
    keys: Dict[str, str] = {}
    for part in (raw or "").split(","):
        part = part.strip()
        if not part:
            continue
        name, sep, key = part.partition(":")
        if not sep or not name.strip() or len(key.strip()) < 16:
            raise ConfigError("INTENT_AUTHORING_KEYS must be name:key pairs separated by commas, "
                              "each key at least 16 characters")
        keys[name.strip()] = key.strip()
    return keys


@dataclass
class AuthoringConfig:
    #: "memory" or empty; the Blob settings below win when set
    store: str = "memory"
    connection_string: Optional[str] = None
    account_url: Optional[str] = None
    client_id: Optional[str] = None
    container: str = "models"
    prefix: str = "clu/"
    authoring_keys: Dict[str, str] = field(default_factory=dict)
    prediction_key: Optional[str] = None
    trust_easy_auth: bool = False
    allowed_principals: FrozenSet[str] = frozenset()
    public_base_url: Optional[str] = None
    limits: Limits = field(default_factory=Limits)
    gate: GatePolicy = field(default_factory=GatePolicy)
    sync_interval: float = 1.0
    #: a model build runs in bursts of load_burst seconds separated by load_pause seconds (0: no throttle)
    load_burst: float = 0.001
    load_pause: float = 0.004
    job_retry_after: float = 1.0
    training_timeout: float = 900.0
    stale_job_seconds: float = 60.0
    events_url: Optional[str] = None
    events_secret: Optional[str] = None
    events_source: str = "/intent-service"
    events_max_attempts: int = 6
    events_backoff: float = 1.0

    @property
    def enabled(self) -> bool:
        return bool(self.connection_string or self.account_url or self.store == "memory")

    @classmethod
    def from_env(cls, env: Optional[Mapping[str, str]] = None) -> Optional["AuthoringConfig"]:
        """None when no project store is configured (the service then serves its single model)."""
        env = os.environ if env is None else env
        conn = (env.get("INTENT_STORE_CONNECTION_STRING") or "").strip() or None
        account = (env.get("INTENT_STORE_ACCOUNT_URL") or "").strip() or None
        store = (env.get("INTENT_STORE") or "").strip().lower()
        if not (conn or account or store):
            return None
        if store and store != "memory" and not (conn or account):
            raise ConfigError("INTENT_STORE must be 'memory' (or set INTENT_STORE_CONNECTION_STRING / "
                              "INTENT_STORE_ACCOUNT_URL for Blob Storage)")
        for name in ("INTENT_AUTHORING_KEYS", "INTENT_AUTHORING_KEY", "INTENT_EVENTS_SECRET"):
            _no_unresolved_reference(name, env.get(name))
        keys = parse_keys(env.get("INTENT_AUTHORING_KEYS"))
        single = (env.get("INTENT_AUTHORING_KEY") or "").strip()
        if single:
            if len(single) < 16:
                raise ConfigError("INTENT_AUTHORING_KEY must be at least 16 characters")
            keys.setdefault("authoring-key", single)
        prediction_key = env.get("INTENT_API_KEY") or None
        if prediction_key and prediction_key in keys.values():
            raise ConfigError("the authoring key must differ from the prediction key (INTENT_API_KEY)")
        d = Limits()
        limits = Limits(
            max_request_bytes=_int(env, "INTENT_AUTHORING_MAX_REQUEST_BYTES", d.max_request_bytes),
            max_utterances=_int(env, "INTENT_MAX_UTTERANCES", d.max_utterances),
            max_utterance_chars=_int(env, "INTENT_MAX_UTTERANCE_CHARS", d.max_utterance_chars),
            max_intents=_int(env, "INTENT_MAX_INTENTS", d.max_intents),
            max_entities=_int(env, "INTENT_MAX_ENTITIES", d.max_entities),
            max_list_values=_int(env, "INTENT_MAX_LIST_VALUES", d.max_list_values),
            max_regex_chars=_int(env, "INTENT_MAX_REGEX_CHARS", d.max_regex_chars),
            max_projects=_int(env, "INTENT_MAX_PROJECTS", d.max_projects),
            max_training_jobs=_int(env, "INTENT_MAX_TRAINING_JOBS", d.max_training_jobs),
        )
        g = GatePolicy()
        gate = GatePolicy(
            production_deployment=(env.get("INTENT_PRODUCTION_DEPLOYMENT") or g.production_deployment).strip(),
            max_accuracy_drop=_float(env, "INTENT_GATE_MAX_ACCURACY_DROP", g.max_accuracy_drop),
            max_intent_f1_drop=_float(env, "INTENT_GATE_MAX_INTENT_F1_DROP", g.max_intent_f1_drop),
        )
        container = (env.get("INTENT_STORE_CONTAINER") or "models").strip()
        if not re.fullmatch(r"[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]", container):
            raise ConfigError(f"INTENT_STORE_CONTAINER {container!r} is not a valid container name "
                              "(3-63 lower-case letters, digits and single hyphens)")
        principals = frozenset(p.strip() for p in (env.get("INTENT_AUTHORING_PRINCIPALS") or "").split(",")
                               if p.strip())
        return cls(
            store="blob" if (conn or account) else "memory",
            connection_string=conn, account_url=account,
            client_id=(env.get("INTENT_STORE_CLIENT_ID") or "").strip() or None,
            container=container,
            prefix=env.get("INTENT_STORE_PREFIX", "clu/"),
            authoring_keys=keys, prediction_key=prediction_key,
            trust_easy_auth=(env.get("INTENT_AUTHORING_EASY_AUTH") or "").strip().lower() in ("1", "true", "yes"),
            allowed_principals=principals,
            public_base_url=(env.get("INTENT_PUBLIC_BASE_URL") or "").strip().rstrip("/") or None,
            limits=limits, gate=gate,
            sync_interval=_float(env, "INTENT_SYNC_INTERVAL_SECONDS", 1.0, 0.05),
            load_burst=_float(env, "INTENT_MODEL_LOAD_BURST_MS", 1.0, 0.1) / 1000.0,
            load_pause=_float(env, "INTENT_MODEL_LOAD_PAUSE_MS", 4.0, 0.0) / 1000.0,
            job_retry_after=_float(env, "INTENT_JOB_RETRY_AFTER_SECONDS", 1.0, 0.05),
            training_timeout=_float(env, "INTENT_TRAINING_TIMEOUT_SECONDS", 900.0, 1.0),
            stale_job_seconds=_float(env, "INTENT_STALE_JOB_SECONDS", 60.0, 1.0),
            events_url=(env.get("INTENT_EVENTS_WEBHOOK_URL") or "").strip() or None,
            events_secret=env.get("INTENT_EVENTS_SECRET") or None,
            events_source=(env.get("INTENT_EVENTS_SOURCE") or "/intent-service").strip(),
            events_max_attempts=_int(env, "INTENT_EVENTS_MAX_ATTEMPTS", 6),
            events_backoff=_float(env, "INTENT_EVENTS_BACKOFF_SECONDS", 1.0, 0.01),
        )
