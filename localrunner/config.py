"""Settings handling: local.settings.json and host.json, validated like the host.

Only the parts of host.json that this runner reproduces are read; everything
else is accepted and ignored (as documented in README.md).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, Mapping, Optional, Sequence


class ConfigError(Exception):
    """A setting in host.json / local.settings.json / the environment is invalid."""


# -- TimeSpan parsing -------------------------------------------------------

_TIMESPAN_RE = re.compile(
    r"^(?:(?P<days>\d+)\.)?(?P<h>\d{1,2}):(?P<m>\d{1,2}):(?P<s>\d{1,2})(?:\.(?P<frac>\d{1,7}))?$"
)


def parse_timespan(value: Any, *, what: str, number_unit_ms: bool = True) -> float:
    """Parse a .NET TimeSpan string ("[d.]hh:mm:ss[.fffffff]") or a number.

    Numbers are milliseconds when ``number_unit_ms`` (host.json accepts an
    integer millisecond count for the queue intervals). Returns seconds.
    """
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a TimeSpan 'hh:mm:ss' or a number of milliseconds, got {value!r}")
    if isinstance(value, (int, float)):
        if value < 0:
            raise ConfigError(f"{what}: must not be negative, got {value!r}")
        return float(value) / 1000.0 if number_unit_ms else float(value)
    if isinstance(value, str):
        text = value.strip()
        if re.fullmatch(r"\d+(\.\d+)?", text) and number_unit_ms:
            return float(text) / 1000.0
        m = _TIMESPAN_RE.match(text)
        if m:
            h, mi, s = int(m["h"]), int(m["m"]), int(m["s"])
            if mi > 59 or s > 59 or h > 23:
                raise ConfigError(f"{what}: invalid TimeSpan {value!r} (hours 0-23, minutes and seconds 0-59)")
            frac = float("0." + m["frac"]) if m["frac"] else 0.0
            days = int(m["days"]) if m["days"] else 0
            return days * 86400 + h * 3600 + mi * 60 + s + frac
    raise ConfigError(
        f"{what}: expected a TimeSpan like '00:00:02' or '00:00:00.500' or a number of milliseconds, got {value!r}"
    )


# -- host.json ----------------------------------------------------------------

@dataclass
class QueuesOptions:
    max_polling_interval: float = 60.0  # seconds
    batch_size: int = 16
    new_batch_threshold: int = 8
    visibility_timeout: float = 0.0  # seconds
    max_dequeue_count: int = 5
    message_encoding: str = "base64"


@dataclass
class HostConfig:
    route_prefix: str = "api"
    queues: QueuesOptions = field(default_factory=QueuesOptions)
    function_timeout: Optional[float] = 30 * 60.0  # seconds; None = unlimited
    raw: Dict[str, Any] = field(default_factory=dict)


MIN_POLLING_INTERVAL = 0.1  # QueuePollingIntervals.Minimum in the WebJobs SDK
MAX_BATCH_SIZE = 32


def _ci_get(d: Mapping[str, Any], key: str) -> Any:
    """Case-insensitive dict lookup (the host's configuration is case-insensitive)."""
    for k, v in d.items():
        if k.lower() == key.lower():
            return v
    return None


def _int_setting(value: Any, what: str, lo: int, hi: Optional[int] = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ConfigError(f"{what}: expected an integer, got {value!r}")
    try:
        n = int(value)
    except ValueError:
        raise ConfigError(f"{what}: expected an integer, got {value!r}") from None
    if n < lo or (hi is not None and n > hi):
        rng = f"between {lo} and {hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{what}: must be {rng}, got {value!r}")
    return n


def parse_host_json(data: Mapping[str, Any], source: str = "host.json") -> HostConfig:
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: top level must be a JSON object")
    version = _ci_get(data, "version")
    if version is None:
        raise ConfigError(f"{source}: missing \"version\": \"2.0\" (required by the Functions host)")
    if str(version) != "2.0":
        raise ConfigError(f"{source}: version must be \"2.0\", got {version!r}")

    cfg = HostConfig(raw=dict(data))
    extensions = _ci_get(data, "extensions") or {}
    if not isinstance(extensions, Mapping):
        raise ConfigError(f"{source}: extensions must be an object")

    http = _ci_get(extensions, "http") or {}
    if not isinstance(http, Mapping):
        raise ConfigError(f"{source}: extensions.http must be an object")
    prefix = _ci_get(http, "routePrefix")
    if prefix is not None:
        if not isinstance(prefix, str):
            raise ConfigError(f"{source}: extensions.http.routePrefix must be a string, got {prefix!r}")
        cfg.route_prefix = prefix.strip("/")

    q = _ci_get(extensions, "queues") or {}
    if not isinstance(q, Mapping):
        raise ConfigError(f"{source}: extensions.queues must be an object")
    qo = QueuesOptions()
    v = _ci_get(q, "maxPollingInterval")
    if v is not None:
        qo.max_polling_interval = parse_timespan(v, what=f"{source}: extensions.queues.maxPollingInterval")
        if qo.max_polling_interval < MIN_POLLING_INTERVAL:
            raise ConfigError(
                f"{source}: extensions.queues.maxPollingInterval must be at least 100 ms (00:00:00.100), got {v!r}"
            )
    v = _ci_get(q, "batchSize")
    if v is not None:
        qo.batch_size = _int_setting(v, f"{source}: extensions.queues.batchSize", 1, MAX_BATCH_SIZE)
    v = _ci_get(q, "newBatchThreshold")
    if v is not None:
        qo.new_batch_threshold = _int_setting(v, f"{source}: extensions.queues.newBatchThreshold", 0)
    else:
        qo.new_batch_threshold = qo.batch_size // 2
    v = _ci_get(q, "visibilityTimeout")
    if v is not None:
        qo.visibility_timeout = parse_timespan(v, what=f"{source}: extensions.queues.visibilityTimeout")
        if qo.visibility_timeout > 7 * 86400:
            raise ConfigError(f"{source}: extensions.queues.visibilityTimeout must be at most 7 days, got {v!r}")
    v = _ci_get(q, "maxDequeueCount")
    if v is not None:
        qo.max_dequeue_count = _int_setting(v, f"{source}: extensions.queues.maxDequeueCount", 1)
    v = _ci_get(q, "messageEncoding")
    if v is not None:
        if not isinstance(v, str) or v.lower() not in ("base64", "none"):
            raise ConfigError(
                f"{source}: extensions.queues.messageEncoding must be \"base64\" or \"none\", got {v!r}"
            )
        qo.message_encoding = v.lower()
    cfg.queues = qo

    ft = _ci_get(data, "functionTimeout")
    if ft is not None:
        if ft in (-1, "-1") or (isinstance(ft, str) and ft.strip() == "-1"):
            cfg.function_timeout = None
        else:
            if not isinstance(ft, str):
                raise ConfigError(f"{source}: functionTimeout must be a TimeSpan string like \"00:05:00\" or \"-1\", got {ft!r}")
            secs = parse_timespan(ft, what=f"{source}: functionTimeout", number_unit_ms=False)
            if secs <= 0:
                raise ConfigError(f"{source}: functionTimeout must be positive, got {ft!r}")
            cfg.function_timeout = secs
    return cfg


#: App settings with this prefix override host.json values (case-insensitive), ``__`` (or ``:``) between
#: the levels: ``AzureFunctionsJobHost__extensions__queues__maxDequeueCount``. azure-functions-host keeps
#: host.json under the configuration section "AzureFunctionsJobHost" (Config/HostJsonFileConfigurationSource.cs,
#: ConfigurationSectionNames.JobHost) and reads environment variables after it, so they win.
HOST_OVERRIDE_PREFIX = "AzureFunctionsJobHost"
_OVERRIDE_SPLIT_RE = re.compile(r"__|:")


def host_setting_overrides(env: Mapping[str, str]) -> Dict[str, Any]:
    """``{setting name: (path tuple, value)}`` for every ``AzureFunctionsJobHost__...`` app setting."""
    out: Dict[str, Any] = {}
    for name, value in env.items():
        parts = _OVERRIDE_SPLIT_RE.split(name)
        if len(parts) < 2 or parts[0].lower() != HOST_OVERRIDE_PREFIX.lower() or not all(parts[1:]):
            continue
        out[name] = (tuple(parts[1:]), value)
    return out


def _set_path(data: Dict[str, Any], path: Sequence[str], value: Any) -> bool:
    """Set ``data[path...] = value`` with case-insensitive keys; False if a level is not an object."""
    node = data
    for key in path[:-1]:
        existing = next((k for k in node if k.lower() == key.lower()), None)
        if existing is None:
            node[key] = {}
            existing = key
        elif not isinstance(node[existing], dict):
            return False
        node = node[existing]
    existing = next((k for k in node if k.lower() == path[-1].lower()), path[-1])
    node[existing] = value
    return True


def apply_host_overrides(data: Mapping[str, Any], env: Mapping[str, str], source: str) -> Dict[str, Any]:
    """host.json data with the ``AzureFunctionsJobHost__*`` app settings applied. Each override is validated
    on its own first, so an error names the app setting (and the value)."""
    merged = json.loads(json.dumps(data))  # deep copy
    for name, (path, value) in sorted(host_setting_overrides(env).items()):
        probe: Dict[str, Any] = {"version": "2.0"}
        if _set_path(probe, path, value):
            parse_host_json(probe, source=f"app setting {name}")
        _set_path(merged, path, value)
    return merged


def load_host_json(app_root: str, env: Optional[Mapping[str, str]] = None) -> HostConfig:
    """Read and validate APP_ROOT/host.json, with the app-setting overrides from ``env``
    (default: no overrides)."""
    path = os.path.join(app_root, "host.json")
    if not os.path.isfile(path):
        raise ConfigError(f"{path}: not found (a Functions app root must contain host.json)")
    try:
        with open(path, "r", encoding="utf-8-sig") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from None
    if env is not None and isinstance(data, Mapping):
        overrides = host_setting_overrides(env)
        if overrides:
            data = apply_host_overrides(data, env, path)
            return parse_host_json(data, source=f"{path} + {', '.join(sorted(overrides))}")
    return parse_host_json(data, source=path)


# -- local.settings.json ------------------------------------------------------

@dataclass
class LocalSettings:
    values: Dict[str, str] = field(default_factory=dict)
    local_http_port: Optional[int] = None
    path: Optional[str] = None


def load_local_settings(path: Optional[str], *, required: bool = False) -> LocalSettings:
    if path is None or not os.path.isfile(path):
        if required:
            raise ConfigError(f"{path}: settings file not found")
        return LocalSettings(path=path)
    try:
        with open(path, "r", encoding="utf-8-sig") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: invalid JSON: {exc}") from None
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: top level must be a JSON object")
    if _ci_get(data, "IsEncrypted") is True:
        raise ConfigError(f"{path}: IsEncrypted=true is not supported by localrunner; decrypt the file first")
    values = _ci_get(data, "Values") or {}
    if not isinstance(values, Mapping):
        raise ConfigError(f"{path}: Values must be an object")
    out: Dict[str, str] = {}
    for k, v in values.items():
        if v is None:
            continue
        if isinstance(v, (dict, list)):
            raise ConfigError(f"{path}: Values.{k} must be a string, got {type(v).__name__}")
        out[str(k)] = v if isinstance(v, str) else json.dumps(v) if isinstance(v, bool) else str(v)
    port = None
    host = _ci_get(data, "Host") or {}
    if isinstance(host, Mapping):
        p = _ci_get(host, "LocalHttpPort")
        if p is not None:
            port = _int_setting(p, f"{path}: Host.LocalHttpPort", 0, 65535)
    return LocalSettings(values=out, local_http_port=port, path=path)
