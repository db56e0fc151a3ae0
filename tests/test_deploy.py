"""Deployment files: infra/main.bicep, its parameter file, the GitHub Actions workflows and the deploy scripts.

No Bicep compiler installs from the registries the dev machines reach (see infra/README.md, "Validation"), so
besides compiling when a `bicep` binary is on PATH, these tests read main.bicep with a small parser and an
evaluator for the expressions it uses in names and app settings, and check what matters for this app: every app
setting the app reads (shared.settings.setting_names()) is defined, in both connection modes, with values the
settings module accepts; secrets are Key Vault references and no setting holds a storage key; shared-key access
is off; names fit Azure's limits; role assignment names are deterministic and their scopes narrow (per-secret Key
Vault access, nobody but the deployment identity writes the models); queues and staged triggers match the code.
Workflows are validated against the GitHub Actions workflow schema vendored by check-jsonschema, their actions are
pinned to commit SHAs, and the smoke and check scripts run against the real intake code or stand-ins.
"""

from __future__ import annotations

import http.server
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

import pytest

from shared.routes import routes

from shared import signature
from shared.intake import handle_webhook
from shared.models import INBOUND_QUEUE, REPLY_QUEUE, REVIEW_QUEUE, poison_queue_name, poison_record_queue
from shared.settings import SettingsError, load_settings, setting_names

ROOT = Path(__file__).resolve().parent.parent
INFRA = ROOT / "infra"
BICEP = INFRA / "main.bicep"
PARAMS = INFRA / "main.parameters.json"
WORKFLOWS = ROOT / ".github" / "workflows"
FIXTURES = Path(__file__).resolve().parent / "deploy_fixtures"
SAMPLE = json.loads((ROOT / "local.settings.sample.json").read_text(encoding="utf-8"))["Values"]

#: Settings the platform (Functions host, App Service, azure-identity) reads; not in shared/settings.py.
PLATFORM_SETTINGS = {
    "FUNCTIONS_EXTENSION_VERSION", "FUNCTIONS_WORKER_RUNTIME", "AzureWebJobsFeatureFlags", "WEBSITE_RUN_FROM_PACKAGE",
    "WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID", "SCM_DO_BUILD_DURING_DEPLOYMENT", "ENABLE_ORYX_BUILD",
    "AZURE_CLIENT_ID", "AzureWebJobsStorage__credential",
}
#: Settings for features being added now (the idempotency container); the app ignores unknown settings.
PENDING_SETTINGS: set[str] = set()
#: The identity-based and the connection-string forms of the queue connection: either satisfies the app.
STORAGE_FORMS = {"AzureWebJobsStorage", "AzureWebJobsStorage__accountName"}
#: Settings whose value depends on the deployment (endpoints, secrets); the others must equal the sample's.
DEPLOYMENT_SPECIFIC = {
    "AzureWebJobsStorage", "SENDBIRD_API_TOKEN", "SENDBIRD_API_BASE_URL", "SENDBIRD_BOT_USER_ID", "COSMOS_ENDPOINT",
    "COSMOS_KEY", "COSMOS_VERIFY_TLS", "COSMOS_CREATE_IF_MISSING", "INTENT_ENDPOINT", "INTENT_API_KEY",
    "APPLICATIONINSIGHTS_CONNECTION_STRING", "TELEMETRY_PII_HASH_KEY",
    "INTENT_CACHE_URL", "INTENT_CACHE_HASH_KEY", "INTENT_CACHE_PRINCIPAL_ID",
}
#: App settings that hold secrets: Key Vault references in every mode (plus the fallback keys in connection mode).
SECRET_SETTINGS = {"SENDBIRD_API_TOKEN", "INTENT_API_KEY", "TELEMETRY_PII_HASH_KEY"}
KEY_VAULT_REFERENCE = "@Microsoft.KeyVault(SecretUri="
GUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


# ------------------------------------------------------------------------------------------------------------
# A small reader for the subset of Bicep main.bicep uses
# ------------------------------------------------------------------------------------------------------------

def _strip_comment(line: str) -> str:
    """The line without a trailing // comment (outside strings)."""
    in_str = False
    for i, ch in enumerate(line):
        if ch == "'":
            in_str = not in_str
        elif not in_str and line.startswith("//", i):
            return line[:i].rstrip()
    return line.rstrip()


class Bicep:
    def __init__(self, text: str):
        self.text = text
        self.lines = [_strip_comment(line) for line in text.splitlines()]
        self.params: dict[str, dict] = {}
        self.vars: dict[str, str] = {}
        self.resources: dict[str, dict] = {}
        self.outputs: dict[str, str] = {}
        self._parse()

    def _block(self, start: int) -> tuple[str, int]:
        """Text from line ``start`` to the line closing its first bracket (column 0), and the next index."""
        depth, out, i = 0, [], start
        while i < len(self.lines):
            line = self.lines[i]
            out.append(line)
            depth += _depth_change(line)
            i += 1
            if depth <= 0:
                break
        return "\n".join(out), i

    def _parse(self) -> None:
        decorators: list[str] = []
        i = 0
        while i < len(self.lines):
            line = self.lines[i]
            if line.startswith("@"):
                block, i = self._block(i) if _depth_change(line) > 0 else (line, i + 1)
                decorators.append(block)
                continue
            if m := re.match(r"^param (\w+) (\w+)(?: = (.+))?$", line):
                self.params[m[1]] = {"type": m[2], "default": m[3], "decorators": decorators}
            elif m := re.match(r"^var (\w+) = (.+)$", line):
                block, nxt = self._block(i) if _depth_change(line) > 0 else (line, i + 1)
                self.vars[m[1]] = block.split(" = ", 1)[1]
                i = nxt
                decorators = []
                continue
            elif m := re.match(r"^resource (\w+) '([^'@]+)@([^']+)'(?: existing)? = (?:if \((.+?)\) )?[\[{]", line):
                block, nxt = self._block(i)
                self.resources[m[1]] = {"type": m[2], "api": m[3], "condition": m[4], "body": block}
                i = nxt
                decorators = []
                continue
            elif m := re.match(r"^output (\w+) \w+ = (.+)$", line):
                self.outputs[m[1]] = m[2]
            decorators = []
            i += 1

    def object_var(self, name: str) -> dict[str, str]:
        """``var name = { KEY: expr ... }`` as {KEY: expression text} (top-level keys only)."""
        body = self.vars[name]
        assert body.startswith("{"), f"var {name} is not an object literal"
        return _object_entries(body)

    def array_var(self, name: str) -> list[str]:
        body = self.vars[name]
        assert body.startswith("["), f"var {name} is not an array literal"
        return [m for m in re.findall(r"^\s+'([^']*)'$", body, re.M)]

    def of_type(self, rtype: str) -> dict[str, dict]:
        return {k: v for k, v in self.resources.items() if v["type"] == rtype}


def _depth_change(line: str) -> int:
    depth, in_str = 0, False
    for ch in line:
        if ch == "'":
            in_str = not in_str
        elif not in_str and ch in "{[(":
            depth += 1
        elif not in_str and ch in "}])":
            depth -= 1
    return depth


def _without_string_text(code: str) -> str:
    """``code`` with the literal text of every string removed; ``${...}`` interpolations are kept as code."""
    out, i, in_str, depth = [], 0, False, 0
    while i < len(code):
        ch = code[i]
        if in_str:
            if code.startswith("${", i):
                out.append(" ")
                in_str, depth, i = False, 1, i + 2
                continue
            if ch == "'":
                out.append("''")
                in_str = False
            i += 1
            continue
        if ch == "'":
            in_str = True
        elif depth and ch == "{":
            depth += 1
        elif depth and ch == "}":
            depth -= 1
            if depth == 0:
                in_str = True
                out.append(" ")
                i += 1
                continue
        else:
            out.append(ch)
        if ch in "{" and depth:
            out.append(ch)
        i += 1
    return "".join(out)


def _object_entries(body: str) -> dict[str, str]:
    entries: dict[str, str] = {}
    depth = 0
    for line in body.splitlines():
        if depth == 1 and (m := re.match(r"^\s*('[^']+'|[\w.]+):\s*(.*)$", line)):
            entries[m[1].strip("'")] = m[2]
        depth += _depth_change(line)
    return entries


class Evaluator:
    """Evaluates Bicep expressions made of string interpolation, params, vars, a few functions, member access."""

    def __init__(self, bicep: Bicep, params: dict, resources: dict | None = None, unique: str = "q7x3k2m9p4w8z"):
        self.bicep, self.params, self.resources, self.unique = bicep, params, resources or {}, unique

    def value(self, name: str):
        if name in self.params:
            return self.params[name]
        if name in self.bicep.vars:
            return self.eval(self.bicep.vars[name])
        if name in self.resources:
            return self.resources[name]
        if name in ("true", "false"):
            return name == "true"
        raise KeyError(f"unknown identifier {name!r}")

    def eval(self, expr: str):
        value, rest = self._expr(expr.strip())
        if rest.strip().startswith("?"):  # ternary: cond ? a : b (unnested)
            then, other = _split_top(rest.strip()[1:], ":")
            return self.eval(then) if value else self.eval(other)
        assert not rest.strip(), f"cannot evaluate {expr!r} (left: {rest!r})"
        return value

    def _expr(self, s: str):
        s = s.lstrip()
        if s.startswith("!"):
            value, rest = self._expr(s[1:])
            return not value, rest
        if s.startswith("'"):
            value, rest = self._string(s)
        elif m := re.match(r"^-?\d+", s):
            value, rest = int(m[0]), s[m.end():]
        elif m := re.match(r"^(\w+)\(", s):
            args, rest = self._args(s[m.end():])
            value = self._call(m[1], args)
        elif m := re.match(r"^\w+", s):
            value, rest = self.value(m[0]), s[m.end():]
        else:
            raise AssertionError(f"cannot evaluate {s!r}")
        while True:
            if m := re.match(r"^\.(\w+)\(\)", rest):  # method such as listKeys()
                value, rest = value[m[1]](), rest[m.end():]
            elif m := re.match(r"^\.(\w+)", rest):
                value, rest = value[m[1]], rest[m.end():]
            elif m := re.match(r"^\[(\d+)\]", rest):
                value, rest = value[int(m[1])], rest[m.end():]
            else:
                return value, rest

    def _args(self, s: str):
        args = []
        s = s.lstrip()
        while not s.startswith(")"):
            value, s = self._expr(s)
            args.append(value)
            s = s.lstrip()
            if s.startswith(","):
                s = s[1:].lstrip()
        return args, s[1:]

    def _string(self, s: str):
        out, i = [], 1
        while s[i] != "'":
            if s.startswith("${", i):
                depth, j = 1, i + 2
                while depth:
                    depth += {"{": 1, "}": -1}.get(s[j], 0)
                    j += 1
                out.append(str(self.eval(s[i + 2:j - 1])))
                i = j
            else:
                out.append(s[i])
                i += 1
        return "".join(out), s[i + 1:]

    def _call(self, name: str, args: list):
        funcs = {
            "take": lambda v, n: v[:n], "toLower": lambda v: v.lower(), "replace": lambda v, a, b: v.replace(a, b),
            "string": lambda v: str(v).lower() if isinstance(v, bool) else str(v), "empty": lambda v: not v,
            "uniqueString": lambda *a: self.unique,
            "subscription": lambda: {"id": "/subscriptions/00000000-0000-0000-0000-000000000001",
                                     "tenantId": "00000000-0000-0000-0000-00000000000a"},
            "resourceGroup": lambda: {"id": "/subscriptions/x/resourceGroups/rg-chatbot", "location": "koreacentral",
                                      "name": "rg-chatbot"},
            "environment": lambda: {"suffixes": {"storage": "core.windows.net"}},
        }
        assert name in funcs, f"the test evaluator does not know {name}()"
        return funcs[name](*args)


def _split_top(s: str, sep: str) -> tuple[str, str]:
    depth, in_str = 0, False
    for i, ch in enumerate(s):
        if ch == "'":
            in_str = not in_str
        elif not in_str:
            depth += {"(": 1, "{": 1, "[": 1, ")": -1, "}": -1, "]": -1}.get(ch, 0)
            if ch == sep and depth == 0:
                return s[:i], s[i + 1:]
    raise AssertionError(f"no {sep!r} in {s!r}")


# ------------------------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def bicep() -> Bicep:
    return Bicep(BICEP.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def param_file() -> dict:
    return {k: v["value"] for k, v in json.loads(PARAMS.read_text(encoding="utf-8"))["parameters"].items()}


def param_values(bicep: Bicep, param_file: dict, **overrides) -> dict:
    """Parameter values of a deployment: the file, the defaults, then overrides (what `az deployment` does)."""
    ev = Evaluator(bicep, {})
    values = {}
    for name, p in bicep.params.items():
        if p["default"] == "{":  # an object literal default (tags)
            values[name] = {}
        elif p["default"] is not None:
            ev.params = values
            values[name] = ev.eval(p["default"])
    values.update(param_file)
    values.update(overrides)
    return values


FAKE_ACCOUNT_KEY = "c2VjcmV0LWFjY291bnQta2V5LXRoYXQtbXVzdC1uZXZlci1zaG93LXVw=="
FAKE_RESOURCES = {
    "storage": {"name": "stchatbotq7x3k2m9p4w8z", "listKeys": lambda: {"keys": [{"value": FAKE_ACCOUNT_KEY}]}},
    "artifactStorage": {"name": "artchatbotq7x3k2m9p4w8z"},
    "cosmos": {"properties": {"documentEndpoint": "https://cosmos-chatbot-q7x3k2m9p4w8z.documents.azure.com:443/"}},
    "intentApp": {"properties": {"defaultHostName": "intent-chatbot-q7x3k2.azurewebsites.net"}},
    "appInsights": {"properties": {"ConnectionString": "InstrumentationKey=00000000-0000-0000-0000-000000000000"}},
    "functionIdentity": {"id": "/subscriptions/x/resourceGroups/rg-chatbot/providers/Microsoft.ManagedIdentity/"
                                "userAssignedIdentities/id-func-chatbot-q7x3k2m9p4w8z",
                         "properties": {"clientId": "11111111-1111-1111-1111-111111111111",
                                        "principalId": "22222222-2222-2222-2222-222222222222"}},
    "redisCache": {"properties": {"hostName": "redis-chatbot-q7x3k2m9p4w8z.westeurope.redis.azure.net"}},
    "keyVault": {"properties": {"vaultUri": "https://kv-chatbot-q7x3k2m9p4.vault.azure.net/"}},
}


def function_settings(bicep: Bicep, params: dict, slot: str = "production") -> dict[str, str]:
    """The function app's app settings as main.bicep defines them for ``params``, evaluated."""
    ev = Evaluator(bicep, params, FAKE_RESOURCES)
    conn = params["useConnectionStrings"]
    objects = ["appSettingsCommon",
               "storageSettingsConnectionString" if conn else "storageSettingsIdentity",
               "cosmosSettingsConnectionString" if conn else "cosmosSettingsIdentity",
               "functionSettingsProduction" if slot == "production" else "functionSettingsStaging"]
    settings = {k: ev.eval(v) for name in objects for k, v in bicep.object_var(name).items()}
    disabled = "false" if slot == "production" else "true"
    settings.update({f"AzureWebJobs.{f}.Disabled": disabled for f in bicep.array_var("queueTriggeredFunctions")})
    return settings


def defined_setting_texts(bicep: Bicep) -> dict[str, str]:
    """Every function app setting main.bicep defines (both modes), as expression text."""
    names = ["appSettingsCommon", "storageSettingsIdentity", "storageSettingsConnectionString",
             "cosmosSettingsIdentity", "cosmosSettingsConnectionString", "functionSettingsProduction"]
    return {k: v for name in names for k, v in bicep.object_var(name).items()}


# ------------------------------------------------------------------------------------------------------------
# Bicep: structure and compiler
# ------------------------------------------------------------------------------------------------------------

def test_bicep_compiles_when_a_compiler_is_available(tmp_path):
    """Runs only where a `bicep` binary is on PATH (not installable from PyPI/npm here; see infra/README.md)."""
    exe = shutil.which("bicep")
    if not exe:
        pytest.skip("no bicep compiler on PATH (none installs from PyPI/npm without a download): parsed instead")
    out = subprocess.run([exe, "build", str(BICEP), "--outfile", str(tmp_path / "main.json")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr


def test_bicep_brackets_balance_and_every_reference_is_declared(bicep):
    assert sum(_depth_change(line) for line in bicep.lines) == 0
    declared = set(bicep.params) | set(bicep.vars) | set(bicep.resources)
    code = "\n".join(bicep.lines)
    code = _without_string_text(code)
    refs = set(re.findall(r"(?<![\w.'])([a-z]\w*)\.(?:id|name|properties|listKeys)\b", code))
    assert refs <= declared, f"undeclared: {refs - declared}"
    for m in re.finditer(r"\bparent: (\w+)|\bscope: (\w+)|^\s+(\w+)$", code, re.M):
        name = next(g for g in m.groups() if g)
        if name not in ("true", "false") and m.group(0).strip() == name:
            continue  # a bare array item (dependsOn entries are checked below)
        assert name in bicep.resources, f"{m.group(0).strip()}: not a resource"
    for res in bicep.resources.values():
        if dm := re.search(r"dependsOn: \[(.*?)\]", res["body"], re.S):
            for dep in dm[1].split():
                assert dep in bicep.resources, f"dependsOn {dep}: not a resource"
    for name in bicep.params:
        uses = len(re.findall(rf"\b{name}\b", code))
        assert uses > 1, f"param {name} is never used"
    assert "newGuid(" not in code and "utcNow(" not in code, "names and values must be deterministic"


def test_resource_types_and_api_versions(bicep):
    expected = {
        "Microsoft.Web/sites": "2023-12-01", "Microsoft.Web/sites/slots": "2023-12-01",
        "Microsoft.Web/serverfarms": "2023-12-01", "Microsoft.Web/sites/config": "2023-12-01",
        "Microsoft.Web/sites/slots/config": "2023-12-01",
        "Microsoft.Storage/storageAccounts": "2023-05-01",
        "Microsoft.Storage/storageAccounts/queueServices": "2023-05-01",
        "Microsoft.Storage/storageAccounts/queueServices/queues": "2023-05-01",
        "Microsoft.Storage/storageAccounts/blobServices": "2023-05-01",
        "Microsoft.Storage/storageAccounts/blobServices/containers": "2023-05-01",
        "Microsoft.DocumentDB/databaseAccounts": "2024-05-15",
        "Microsoft.DocumentDB/databaseAccounts/sqlDatabases": "2024-05-15",
        "Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers": "2024-05-15",
        "Microsoft.DocumentDB/databaseAccounts/sqlRoleAssignments": "2024-05-15",
        "Microsoft.KeyVault/vaults": "2023-07-01", "Microsoft.KeyVault/vaults/secrets": "2023-07-01",
        "Microsoft.ContainerRegistry/registries": "2023-07-01",
        "Microsoft.Authorization/roleAssignments": "2022-04-01",
        "Microsoft.ManagedIdentity/userAssignedIdentities": "2023-01-31",
        "Microsoft.ManagedIdentity/userAssignedIdentities/federatedIdentityCredentials": "2023-01-31",
        "Microsoft.Insights/components": "2020-02-02", "Microsoft.OperationalInsights/workspaces": "2022-10-01",
        "Microsoft.Cache/redisEnterprise": "2025-04-01", "Microsoft.Cache/redisEnterprise/databases": "2025-04-01",
        "Microsoft.Cache/redisEnterprise/databases/accessPolicyAssignments": "2025-04-01",
    }
    for name, res in bicep.resources.items():
        assert expected.get(res["type"]) == res["api"], f"{name}: {res['type']}@{res['api']}"
    present = {r["type"] for r in bicep.resources.values()}
    for required in ("Microsoft.Web/sites/slots", "Microsoft.ContainerRegistry/registries", "Microsoft.KeyVault/vaults",
                     "Microsoft.Insights/components", "Microsoft.OperationalInsights/workspaces"):
        assert required in present


# ------------------------------------------------------------------------------------------------------------
# App settings vs. the app
# ------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("use_connection_strings", [False, True], ids=["identity", "connection-strings"])
def test_every_setting_the_app_reads_is_defined(bicep, param_file, use_connection_strings):
    params = param_values(bicep, param_file, useConnectionStrings=use_connection_strings)
    defined = set(function_settings(bicep, params))
    other_form = STORAGE_FORMS - defined
    assert STORAGE_FORMS & defined, "no queue connection (AzureWebJobsStorage or AzureWebJobsStorage__accountName)"
    if not use_connection_strings:
        assert "AzureWebJobsStorage" not in defined, "the host prefers a connection string over __accountName"
    for name in setting_names():
        if name in other_form or (name.startswith("AzureWebJobsStorage__") and use_connection_strings):
            continue  # the other form of the queue connection
        assert name in defined, f"{name} (read by shared/settings.py) is not in main.bicep's app settings"


def test_every_sample_setting_is_defined_with_the_same_value(bicep, param_file):
    texts = defined_setting_texts(bicep)
    params = param_values(bicep, param_file)
    ev = Evaluator(bicep, params, FAKE_RESOURCES)
    for name, sample_value in SAMPLE.items():
        assert name in texts, f"{name} (local.settings.sample.json) is not in main.bicep's app settings"
        if name not in DEPLOYMENT_SPECIFIC:
            assert ev.eval(texts[name]) == sample_value, f"{name}: main.bicep differs from local.settings.sample.json"


def test_no_unknown_app_settings(bicep):
    known = set(setting_names()) | set(SAMPLE) | PLATFORM_SETTINGS | PENDING_SETTINGS | STORAGE_FORMS
    unknown = set(defined_setting_texts(bicep)) - known
    assert not unknown, f"main.bicep sets settings nobody reads (typo?): {unknown}"


def test_connection_string_mode_settings_load_in_the_settings_module(bicep, param_file):
    params = param_values(bicep, param_file, useConnectionStrings=True)
    env = {k: ("resolved-secret-value" if v.startswith(KEY_VAULT_REFERENCE) else v)
           for k, v in function_settings(bicep, params).items()}
    config = load_settings(env)
    assert config.settings.cosmos_verify_tls is True and config.settings.cosmos_create_if_missing is False


def test_identity_mode_settings_load_in_the_settings_module(bicep, param_file):
    params = param_values(bicep, param_file, useConnectionStrings=False)
    env = {k: ("resolved-secret-value" if v.startswith(KEY_VAULT_REFERENCE) else v)
           for k, v in function_settings(bicep, params).items()}
    assert env["COSMOS_KEY"] == "" and env["AzureWebJobsStorage__accountName"]
    try:
        load_settings(env)
    except SettingsError as exc:
        if all(part.split(":")[0].strip() in {"AzureWebJobsStorage", "COSMOS_KEY"}
               for part in str(exc).split("invalid app settings:")[-1].split(";")):
            pytest.skip(f"shared/settings.py does not accept identity-based connections yet: {exc}")
        raise


SECRET_PARAMS = {"sendbirdApiToken", "intentApiKey", "telemetryPiiHashKey"}
#: Secrets of the model lifecycle (intentModelLifecycle); infra/scripts/deploy_infra.sh does not pass them yet.
LIFECYCLE_SECRET_PARAMS = {"intentAuthoringKeys", "modelEventsSecret"}
#: Secrets of the console (deployed with consoleAuthClientId).
CONSOLE_SECRET_PARAMS = {"consoleSecret", "consoleAuthoringKey"}


def _secret_name(bicep: Bicep, res: dict) -> str:
    return Evaluator(bicep, {}).eval(res["body"].split("name: ", 1)[1].split("\n")[0])


def test_secrets_are_key_vault_references(bicep, param_file):
    for conn in (False, True):
        for slot in ("production", "staging"):
            settings = function_settings(bicep, param_values(bicep, param_file, useConnectionStrings=conn), slot)
            secrets = SECRET_SETTINGS | ({"AzureWebJobsStorage", "COSMOS_KEY"} if conn else set())
            for name in secrets:
                reference = r"@Microsoft\.KeyVault\(SecretUri=https://[\w-]+\.vault\.azure\.net/secrets/[\w-]+\)"
                assert re.fullmatch(reference, settings[name]), f"{name} ({slot}): {settings[name]}"
    intent = bicep.object_var("intentSettings")
    assert intent["INTENT_API_KEY"] == "intentKeyReference"
    assert bicep.object_var("appSettingsCommon")["TELEMETRY_PII_HASH_KEY"] == "telemetryPiiHashKeyReference"
    for p in SECRET_PARAMS | LIFECYCLE_SECRET_PARAMS | CONSOLE_SECRET_PARAMS:
        assert any("@secure()" in d for d in bicep.params[p]["decorators"]), f"{p} must be @secure()"
        assert bicep.params[p]["default"] == "''", f"{p}: empty by default (keeps the stored secret)"
    written = {name: res for name, res in bicep.of_type("Microsoft.KeyVault/vaults/secrets").items()
               if "existing" not in res["body"].split("\n")[0]}
    assert {_secret_name(bicep, r) for r in written.values()} == {
        "sendbird-api-token", "intent-api-key", "telemetry-pii-hash-key", "cosmos-key", "storage-connection-string",
        "intent-authoring-keys", "model-events-secret", "console-session-secret", "console-authoring-key",
        "intent-cache-hash-key"}
    # the hash key is a secret kept across deployments: written only when given, never generated per deployment
    assert written["telemetryPiiHashKeySecret"]["condition"] == "!empty(telemetryPiiHashKey)"


def _expand(bicep: Bicep, text: str, seen: frozenset = frozenset()) -> str:
    """``text`` followed by the text of every variable it uses, transitively (what an expression can reach)."""
    out = [text]
    for name in set(re.findall(r"\b([A-Za-z_]\w*)\b", _without_string_text(text))):
        if name in bicep.vars and name not in seen:
            out.append(_expand(bicep, bicep.vars[name], seen | {name}))
    return "\n".join(out)


SETTING_VARS = ["appSettingsCommon", "storageSettingsIdentity", "storageSettingsConnectionString",
                "cosmosSettingsIdentity", "cosmosSettingsConnectionString", "functionSettingsProduction",
                "functionSettingsStaging", "triggersEnabledProduction", "triggersDisabledStaging",
                "functionCreationSettings", "intentSettings", "intentModelDigestProduction", "intentModelDigestStaging",
                "consoleSettings", "consoleStorageIdentity", "consoleStorageConnectionString",
                "consoleCosmosConnectionString"]


def test_no_app_setting_holds_a_storage_key(bicep, param_file):
    """The storage account key is nowhere in an app setting (any mode, either slot): only in a Key Vault secret."""
    for conn in (False, True):
        params = param_values(bicep, param_file, useConnectionStrings=conn)
        for slot in ("production", "staging"):
            for name, value in function_settings(bicep, params, slot).items():
                assert FAKE_ACCOUNT_KEY not in value and "AccountKey=" not in value, f"{name} ({slot}) holds a key"
                assert "SharedAccessSignature=" not in value and "sig=" not in value, f"{name} ({slot}): a SAS"
    for var in SETTING_VARS:
        reach = _expand(bicep, bicep.vars[var])
        assert "listKeys(" not in reach and "AccountKey=" not in reach, f"{var} reaches an account key"
    # listKeys() is used only for the values of Key Vault secrets (the fallback mode's connection string, Cosmos key)
    for name, res in bicep.resources.items():
        if "listKeys(" in _expand(bicep, res["body"]):
            assert res["type"] == "Microsoft.KeyVault/vaults/secrets", name
            assert res["condition"] == "useConnectionStrings", name
    # no Azure Files content share: its setting only takes a connection string with the account key
    code = "\n".join(bicep.lines)
    for name in ("WEBSITE_CONTENTAZUREFILECONNECTIONSTRING", "WEBSITE_CONTENTSHARE", "WEBSITE_SKIP_CONTENTSHARE"):
        assert name not in code, f"{name}: the app runs without a content share (see infra/README.md, Security)"


def test_shared_key_access_is_off_unless_the_fallback_is_chosen(bicep, param_file):
    accounts = bicep.of_type("Microsoft.Storage/storageAccounts")
    assert set(accounts) == {"storage", "artifactStorage"}
    for name, res in accounts.items():
        body = res["body"]
        assert "allowBlobPublicAccess: false" in body and "minimumTlsVersion: 'TLS1_2'" in body, name
        expr = re.search(r"^\s+allowSharedKeyAccess: (.+)$", body, re.M)[1]
        for conn in (False, True):
            value = Evaluator(bicep, param_values(bicep, param_file, useConnectionStrings=conn)).eval(expr)
            # The one exception, documented in infra/README.md: useConnectionStrings=true puts a connection string
            # (account key) for AzureWebJobsStorage into Key Vault, which needs shared keys on the runtime account.
            assert value is (conn and name == "storage"), f"{name}: allowSharedKeyAccess={value} (fallback={conn})"
    assert param_values(bicep, param_file)["useConnectionStrings"] is False, "deployed default: identity, no keys"
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    security = readme.split("## Security", 1)[1].split("\n## ", 1)[0]
    assert "allowSharedKeyAccess" in security and "useConnectionStrings=true" in security


def test_staging_slot_settings_stick_and_disable_queue_triggers(bicep, param_file):
    packages = f"https://{FAKE_RESOURCES['artifactStorage']['name']}.blob.core.windows.net/function-packages/"
    params = param_values(bicep, param_file, functionPackageBlob="functionapp-a-1-1.zip",
                          functionStagingPackageBlob="functionapp-b-2-1.zip")
    prod, staging = function_settings(bicep, params), function_settings(bicep, params, "staging")
    # each slot runs its package blob, fetched with the user-assigned identity (no content share, no key, no SAS)
    assert prod["WEBSITE_RUN_FROM_PACKAGE"] == packages + "functionapp-a-1-1.zip"
    assert staging["WEBSITE_RUN_FROM_PACKAGE"] == packages + "functionapp-b-2-1.zip"
    for settings in (prod, staging):
        assert settings["WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID"] == FAKE_RESOURCES["functionIdentity"]["id"]
    fresh = param_values(bicep, param_file)  # first deployment: no package yet, staging follows production
    assert function_settings(bicep, fresh)["WEBSITE_RUN_FROM_PACKAGE"] == packages + "none.zip"
    assert function_settings(bicep, fresh, "staging")["WEBSITE_RUN_FROM_PACKAGE"] == packages + "none.zip"
    # the sites are created with their package URL (an app created with WEBSITE_RUN_FROM_PACKAGE=1 cannot switch)
    assert "value: functionProductionPackageUrl" in bicep.resources["functionApp"]["body"]
    assert "value: functionStagingPackageUrl" in bicep.resources["functionStaging"]["body"]
    assert "WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID" in bicep.vars["functionCreationSettings"]
    sticky = {k for k in prod if k.startswith("AzureWebJobs.")}
    assert "functionSlotSettingNames" in bicep.resources["functionSlotConfigNames"]["body"]
    # the package is the code: it must swap with the slot, so it is not a slot setting
    assert "WEBSITE_RUN_FROM_PACKAGE" not in bicep.vars["functionSlotSettingNames"]
    assert bicep.vars["functionSlotSettingNames"] == "map(queueTriggeredFunctions, f => 'AzureWebJobs.${f}.Disabled')"
    assert {k for k in staging if k.endswith(".Disabled") and staging[k] == "true"} == sticky
    assert all(prod[k] == "false" for k in sticky)
    # every queue-triggered function of the app, indexed like the worker does
    saved = dict(os.environ)
    os.environ.update(SAMPLE)
    try:
        for name in [m for m in sys.modules if m == "function_app" or m.startswith("functions.")]:
            del sys.modules[name]
        app = importlib.import_module("function_app").app
        # and the timer-triggered ones (the daily review export): a staging build must not rewrite its files
        queue_triggered = {f.get_function_name() for f in app.get_functions()
                           if any(b["type"] in ("queueTrigger", "timerTrigger")
                                  for b in json.loads(f.get_function_json())["bindings"])}
    finally:
        os.environ.clear()
        os.environ.update(saved)
    assert set(bicep.array_var("queueTriggeredFunctions")) == queue_triggered


def test_queues_match_the_code(bicep):
    stage = {INBOUND_QUEUE, REPLY_QUEUE, REVIEW_QUEUE} | set(routes().queues())
    assert set(bicep.array_var("stageQueues")) == stage
    assert "map(stageQueues, q => '${q}-poison')" in bicep.vars["queueNames"]
    assert "map(stageQueues, q => '${q}-poison-records')" in bicep.vars["queueNames"]
    assert all(poison_queue_name(q) == f"{q}-poison" for q in stage)
    assert all(poison_record_queue(q) == f"{q}-poison-records" for q in stage)
    for q in stage:
        assert re.fullmatch(r"(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*", poison_queue_name(q))
        assert re.fullmatch(r"(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*", poison_record_queue(q))


def test_cosmos_database_and_containers(bicep):
    ev = Evaluator(bicep, {})
    common = bicep.object_var("appSettingsCommon")
    assert ev.eval(common["COSMOS_DATABASE"]) == SAMPLE["COSMOS_DATABASE"] == "chatbot"
    assert ev.eval(common["COSMOS_STATE_CONTAINER"]) == SAMPLE["COSMOS_STATE_CONTAINER"] == "user_state"
    containers = bicep.of_type("Microsoft.DocumentDB/databaseAccounts/sqlDatabases/containers")
    assert set(containers) == {"cosmosStateContainer", "cosmosReviewContainer", "cosmosCatalogContainer",
                               "cosmosAuditContainer"}
    assert "cosmosPartitionKeyPath" in containers["cosmosStateContainer"]["body"]
    for name in ("cosmosReviewContainer", "cosmosCatalogContainer", "cosmosAuditContainer"):
        assert "cosmosIdPartitionKeyPath" in containers[name]["body"]  # shared/clients/cosmos_stores.py: /id
    assert all("version: 2" in res["body"] for res in containers.values())
    assert ev.eval(bicep.vars["cosmosPartitionKeyPath"]) == "/user_id"
    assert ev.eval(bicep.vars["cosmosIdPartitionKeyPath"]) == "/id"
    for setting, var in (("COSMOS_REVIEW_CONTAINER", "cosmosReviewContainerName"),
                         ("COSMOS_CATALOG_CONTAINER", "cosmosCatalogContainerName")):
        assert ev.eval(common[setting]) == ev.eval(bicep.vars[var]) == SAMPLE[setting]
    # the idempotency records (turns, sent dedup ids) live in the user's document and expire with it
    assert "defaultTtl: userStateTtlSeconds" in containers["cosmosStateContainer"]["body"]
    assert int(bicep.params["userStateTtlSeconds"]["default"]) == 90 * 24 * 3600
    role = bicep.resources["cosmosFunctionDataContributor"]["body"]
    assert "cosmosDataContributorRoleId" in role
    assert ev.eval(bicep.vars["cosmosDataContributorRoleId"]) == "00000000-0000-0000-0000-000000000002"
    assert "disableLocalAuth: !useConnectionStrings" in bicep.resources["cosmos"]["body"]


# ------------------------------------------------------------------------------------------------------------
# Hosting: plans, slots, intent service
# ------------------------------------------------------------------------------------------------------------

def test_function_app_plan_keeps_an_instance_warm(bicep, param_file):
    plan = bicep.resources["functionPlan"]["body"]
    assert "name: 'EP1'" in plan and "tier: 'ElasticPremium'" in plan and "reserved: true" in plan
    config = bicep.object_var("functionSiteConfig")
    assert config["linuxFxVersion"] == "'Python|3.11'"
    assert config["minimumElasticInstanceCount"] == "functionAlwaysReadyInstances"
    assert param_values(bicep, param_file)["functionAlwaysReadyInstances"] >= 1
    assert bicep.resources["functionStaging"]["type"] == "Microsoft.Web/sites/slots"
    assert bicep.resources["intentStaging"]["type"] == "Microsoft.Web/sites/slots"
    assert Evaluator(bicep, {}).eval(bicep.vars["stagingSlotName"]) == "staging"
    for site in ("functionApp", "functionStaging", "intentApp", "intentStaging"):
        body = bicep.resources[site]["body"]
        assert "httpsOnly: true" in body and "keyVaultReferenceIdentity:" in body and "'UserAssigned'" in body


def test_intent_service_app_settings_match_its_image(bicep, param_file):
    dockerfile = (ROOT / "intent_service" / "Dockerfile").read_text(encoding="utf-8")
    port = re.search(r"\bPORT=(\d+)", dockerfile)[1]
    model = re.search(r"\bINTENT_MODEL=(\S+)", dockerfile)[1]
    ev = Evaluator(bicep, param_values(bicep, param_file), FAKE_RESOURCES)
    settings = {k: ev.eval(v) for k, v in bicep.object_var("intentSettings").items()}
    assert settings["WEBSITES_PORT"] == settings["PORT"] == port
    assert settings["INTENT_MODEL"] == model
    assert 230 <= int(settings["WEBSITES_CONTAINER_START_TIME_LIMIT"]) <= 1800
    assert settings["WEBSITE_SWAP_WARMUP_PING_PATH"] == "/health/ready"
    site = bicep.object_var("intentSiteConfig")
    assert site["healthCheckPath"] == "'/health/ready'" and site["acrUseManagedIdentityCreds"] == "true"
    overlay = (INFRA / "docker" / "intent-with-model.Dockerfile").read_text(encoding="utf-8")
    assert f"COPY --chown=10001:10001 {Path(model).name} {model}" in overlay
    workflow = (WORKFLOWS / "deploy.yml").read_text(encoding="utf-8")
    assert f"|| '{Path(model).name}'" in workflow and f"--file build/model/{Path(model).name}" in workflow
    assert "USER 10001" in dockerfile


def test_intent_model_digest_comes_from_a_parameter_per_slot(bicep, param_file):
    """INTENT_MODEL_SHA256 (the service refuses a URL model without it and checks a file model against it) is set
    from parameters, per slot, and travels with the image: the workflow pins staging, the swap carries it along."""
    old, new = "ab" * 32, "cd" * 32

    def digests(**overrides):
        ev = Evaluator(bicep, param_values(bicep, param_file, **overrides), FAKE_RESOURCES)
        return tuple(ev.eval(bicep.object_var(v)["INTENT_MODEL_SHA256"])
                     for v in ("intentModelDigestProduction", "intentModelDigestStaging"))
    assert digests(intentModelSha256=old) == (old, old)
    assert digests(intentModelSha256=old, intentStagingModelSha256=new) == (old, new)
    assert "INTENT_MODEL_SHA256" not in bicep.object_var("intentSettings"), "per slot, not shared"
    assert "properties: union(intentSettings, intentModelDigestProduction, intentLifecycleSettings)" in \
        bicep.resources["intentAppSettingsConfig"]["body"]
    assert "properties: union(intentSettings, intentModelDigestStaging, intentLifecycleSettings)" in \
        bicep.resources["intentStagingSettingsConfig"]["body"]
    for p in ("intentModelSha256", "intentStagingModelSha256"):
        assert "@maxLength(64)" in "\n".join(bicep.params[p]["decorators"]), p


# ------------------------------------------------------------------------------------------------------------
# Names, parameters, role assignments
# ------------------------------------------------------------------------------------------------------------

NAME_RULES = {  # var: (min, max, pattern)
    "storageAccountName": (3, 24, r"[a-z0-9]+"),
    "keyVaultName": (3, 24, r"[a-zA-Z](?!.*--)[a-zA-Z0-9-]*[a-zA-Z0-9]"),
    "registryName": (5, 50, r"[a-zA-Z0-9]+"),
    "cosmosAccountName": (3, 44, r"[a-z0-9](?!.*--)[a-z0-9-]*[a-z0-9]"),
    "functionAppName": (2, 24, r"[a-z0-9](?!.*--)[a-z0-9-]*[a-z0-9]"),  # <= 24: slot host ID stays distinct
    "intentAppName": (2, 60, r"[a-z0-9][a-z0-9-]*[a-z0-9]"),
    "consoleAppName": (2, 60, r"[a-z0-9][a-z0-9-]*[a-z0-9]"),
    "consoleIdentityName": (3, 128, r"[a-zA-Z0-9][\w-]*"),
    "functionPlanName": (1, 60, r"[\w-]+"),
    "intentPlanName": (1, 60, r"[\w-]+"),
    "logWorkspaceName": (4, 63, r"[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]"),
    "appInsightsName": (1, 260, r"[\w.()-]+"),
    "functionIdentityName": (3, 128, r"[a-zA-Z0-9][\w-]*"),
    "intentIdentityName": (3, 128, r"[a-zA-Z0-9][\w-]*"),
    "githubIdentityName": (3, 128, r"[a-zA-Z0-9][\w-]*"),
    "artifactStorageAccountName": (3, 24, r"[a-z0-9]+"),
    "modelsContainerName": (3, 63, r"[a-z0-9](?!.*--)[a-z0-9-]*[a-z0-9]"),
    "cluContainerName": (3, 63, r"[a-z0-9](?!.*--)[a-z0-9-]*[a-z0-9]"),
    "functionPackagesContainerName": (3, 63, r"[a-z0-9](?!.*--)[a-z0-9-]*[a-z0-9]"),
}


def test_console_is_deployed_only_behind_app_service_authentication(bicep, param_file):
    """The console trusts the principal App Service Authentication passes (X-MS-CLIENT-PRINCIPAL), so it exists only
    with an Entra ID app registration, and then every request needs a sign-in (but the health check)."""
    assert bicep.vars["consoleEnabled"] == "!empty(consoleAuthClientId)"
    assert param_values(bicep, param_file)["consoleAuthClientId"] == "", "no console unless asked for"
    for name, res in bicep.resources.items():
        first = res["body"].split("\n")[0]
        if "existing" in first or not (name.startswith("console") or "consoleIdentity.id" in res["body"]):
            continue
        assert (res["condition"] or "").startswith("consoleEnabled"), f"{name} must depend on consoleEnabled"
    auth = bicep.resources["consoleAuthConfig"]["body"]
    assert "name: 'authsettingsV2'" in auth and "requireAuthentication: true" in auth
    assert "unauthenticatedClientAction: 'RedirectToLoginPage'" in auth and "clientId: consoleAuthClientId" in auth
    assert re.search(r"excludedPaths: \[\s*'/healthz'\s*\]", auth)
    site = bicep.resources["consoleApp"]["body"]
    assert "httpsOnly: true" in site and "keyVaultReferenceIdentity: consoleIdentity.id" in site
    assert "appCommandLine: 'python -m console --host 0.0.0.0 --port 8000'" in site
    assert "healthCheckPath: '/healthz'" in site


@pytest.mark.parametrize("use_connection_strings", [False, True], ids=["identity", "connection-strings"])
def test_console_settings_load_and_match_the_function_app(bicep, param_file, use_connection_strings):
    from console.main import gateway_environment
    from console.settings import load_console_settings
    params = param_values(bicep, param_file, useConnectionStrings=use_connection_strings,
                          consoleAuthClientId="33333333-3333-3333-3333-333333333333")
    resources = dict(FAKE_RESOURCES, consoleIdentity={"properties": {"clientId": "44444444-4444-4444-4444-444444444444"}})
    ev = Evaluator(bicep, params, resources)
    names = ["consoleSettings", "consoleStorageConnectionString" if use_connection_strings else "consoleStorageIdentity"]
    names += ["consoleCosmosConnectionString"] if use_connection_strings else []
    settings = {k: ev.eval(v) for n in names for k, v in bicep.object_var(n).items()}
    for name in ("CONSOLE_SECRET", "CONSOLE_AUTHORING_KEY", "TELEMETRY_PII_HASH_KEY") + (
            ("AzureWebJobsStorage", "COSMOS_KEY") if use_connection_strings else ()):
        assert settings[name].startswith(KEY_VAULT_REFERENCE), name
    resolved = {k: ("resolved-secret-value-0123456789-abcdefghij" if v.startswith(KEY_VAULT_REFERENCE) else v)
                for k, v in settings.items()}
    if use_connection_strings:
        resolved["AzureWebJobsStorage"] = "UseDevelopmentStorage=true"
    config = load_settings(gateway_environment(resolved))  # the console's view of the gateway settings
    console = load_console_settings(resolved, project_name=config.settings.intent_project_name,
                                    production_deployment=config.settings.intent_deployment_name)
    assert console.auth_mode == "easyauth" and console.project_name == "retail-bot"
    assert console.authoring_base == "https://intent-chatbot-q7x3k2.azurewebsites.net"
    function = function_settings(bicep, params)
    shared = [k for k in settings if k in function and k not in ("AZURE_CLIENT_ID", "SCM_DO_BUILD_DURING_DEPLOYMENT",
                                                                 "AzureWebJobsStorage__clientId")]
    assert {"COSMOS_REVIEW_CONTAINER", "TELEMETRY_PII_MODE", "REVIEW_CONFIDENCE_THRESHOLD"} <= set(shared)
    for k in shared:
        assert settings[k] == function[k], f"{k}: the console and the function app must agree"
    assert "SENDBIRD_API_TOKEN" not in settings, "the console never calls SendBird: it gets no token"


def test_intent_model_lifecycle_settings_load_in_the_authoring_config(bicep, param_file):
    """With intentModelLifecycle, both slots get the authoring store (the clu container, managed identity), the
    authoring keys and (with a webhook) the events secret as Key Vault references; the settings load in
    intent_service.authoring.config; without it, the intent service keeps serving the model of its image."""
    from intent_service.authoring.config import AuthoringConfig, ConfigError

    resources = dict(FAKE_RESOURCES, intentIdentity={"properties": {"clientId": "22222222-2222-2222-2222-222222222222"}})

    assert param_values(bicep, param_file)["intentModelLifecycle"] is False
    assert bicep.vars["intentLifecycleSettings"] == \
        "intentModelLifecycle ? union(intentAuthoringSettings, intentLifecycleEvents) : {}"
    assert bicep.vars["intentLifecycleEvents"] == "empty(modelEventsWebhookUrl) ? {} : intentEventsSettings"
    ev = Evaluator(bicep, param_values(bicep, param_file, intentModelLifecycle=True), resources)
    settings = {k: ev.eval(v) for k, v in bicep.object_var("intentAuthoringSettings").items()}
    assert settings["INTENT_STORE_ACCOUNT_URL"] == "https://artchatbotq7x3k2m9p4w8z.blob.core.windows.net"
    assert settings["INTENT_STORE_CONTAINER"] == "clu" and settings["INTENT_STORE_PREFIX"] == ""
    assert settings["INTENT_AUTHORING_KEYS"].startswith(KEY_VAULT_REFERENCE + "https://")
    events = {k: ev.eval(v) for k, v in bicep.object_var("intentEventsSettings").items()}
    assert events["INTENT_EVENTS_SECRET"].endswith("/secrets/model-events-secret)")
    env = {k: ("admin:resolved-secret-value-0123" if v.startswith(KEY_VAULT_REFERENCE) else v)
           for k, v in settings.items()}
    config = AuthoringConfig.from_env(env)
    assert config.account_url and config.container == "clu" and config.prefix == ""
    assert config.client_id == "22222222-2222-2222-2222-222222222222"
    assert config.authoring_keys == {"admin": "resolved-secret-value-0123"}
    assert config.gate.max_accuracy_drop == 2.0 and config.gate.production_deployment == "production"
    with pytest.raises(ConfigError):  # an unresolved reference is never taken for a key
        AuthoringConfig.from_env(settings)


@pytest.mark.parametrize("prefix", ["chatbot", "ab", "retail-bot", "shop2bot99"])
@pytest.mark.parametrize("unique", ["q7x3k2m9p4w8z", "4kz0000000000"])
def test_resource_names_fit_azure_limits(bicep, param_file, prefix, unique):
    pattern = bicep.params["prefix"]
    lo = int(re.search(r"@minLength\((\d+)\)", "".join(pattern["decorators"]))[1])
    hi = int(re.search(r"@maxLength\((\d+)\)", "".join(pattern["decorators"]))[1])
    assert lo <= len(prefix) <= hi
    ev = Evaluator(bicep, param_values(bicep, param_file, prefix=prefix), unique=unique)
    names = {}
    for var, (mn, mx, rx) in NAME_RULES.items():
        name = ev.eval(bicep.vars[var])
        assert mn <= len(name) <= mx and re.fullmatch(rx, name), f"{var} = {name!r} ({mn}-{mx}, {rx})"
        names[var] = name
    assert len(f"{names['functionAppName']}-staging") <= 32
    assert names["storageAccountName"] != names["artifactStorageAccountName"]


PREFIX_RULE = re.compile(r"^[a-z0-9](?:[a-z0-9-]*[a-z0-9])?$")


def test_parameter_file(bicep, param_file):
    assert set(param_file) <= set(bicep.params), set(param_file) - set(bicep.params)
    required = {n for n, p in bicep.params.items() if p["default"] is None}
    assert required <= set(param_file), f"required parameters missing from the file: {required - set(param_file)}"
    assert not (SECRET_PARAMS | LIFECYCLE_SECRET_PARAMS | CONSOLE_SECRET_PARAMS) & set(param_file), \
        "secrets never go into the parameter file"
    values = param_values(bicep, param_file)
    for name, p in bicep.params.items():
        deco = "\n".join(p["decorators"])
        v = values[name]
        expected_type = {"string": str, "int": int, "bool": bool, "object": dict}[p["type"]]
        assert isinstance(v, expected_type) and not (expected_type is int and isinstance(v, bool)), name
        if m := re.search(r"@minValue\((-?\d+)\)", deco):
            assert v >= int(m[1]), name
        if m := re.search(r"@maxValue\((-?\d+)\)", deco):
            assert v <= int(m[1]), name
        if m := re.search(r"@minLength\((\d+)\)", deco):
            assert len(v) >= int(m[1]), name
        if m := re.search(r"@maxLength\((\d+)\)", deco):
            assert len(v) <= int(m[1]), name
        if "@allowed(" in deco:
            assert f"'{v}'" in deco, f"{name}={v!r} not in @allowed"
    assert PREFIX_RULE.match(values["prefix"]) and "--" not in values["prefix"]
    assert values["sendbirdApiBaseUrl"].startswith("https://api-") and values["sendbirdApiBaseUrl"].endswith(
        ".sendbird.com")


def test_role_assignments_are_deterministic_and_least_privilege(bicep):
    roles = {k: v.strip("'") for k, v in bicep.object_var("roles").items()}
    assert all(GUID.match(v) for v in roles.values()) and len(set(roles.values())) == len(roles)
    identities = set(bicep.of_type("Microsoft.ManagedIdentity/userAssignedIdentities"))
    seen = set()
    assignments = bicep.of_type("Microsoft.Authorization/roleAssignments")
    assert len(assignments) >= 10
    for name, res in assignments.items():
        body = res["body"]
        m = re.search(r"name: guid\((\w+)\(?\)?\.id, (\w+)\.id, roles\.(\w+)\)", body)
        assert m, f"{name}: name must be guid(<scope>.id, <identity>.id, roles.<role>)"
        scope, identity, role = m.groups()
        assert identity in identities and role in roles, name
        assert f"roles.{role})" in body.split("roleDefinitionId:")[1].split("\n")[0], f"{name}: role mismatch"
        assert f"principalId: {identity}.properties.principalId" in body, name
        assert "principalType: 'ServicePrincipal'" in body, name
        if scope != "resourceGroup":
            assert f"scope: {scope}" in body, f"{name}: guid() scope and scope: differ"
        assert (scope, identity, role) not in seen
        seen.add((scope, identity, role))
    granted = {(identity, role) for _, identity, role in seen}
    assert {("functionIdentity", "storageBlobDataOwner"), ("functionIdentity", "storageQueueDataContributor"),
            ("functionIdentity", "keyVaultSecretsUser"), ("intentIdentity", "acrPull"),
            ("githubIdentity", "acrPush"), ("githubIdentity", "websiteContributor")} <= granted
    assert not any(role in ("owner", "contributor") for _, role in granted)
    fed = bicep.resources["githubFederatedCredential"]["body"]
    assert "https://token.actions.githubusercontent.com" in fed and "api://AzureADTokenExchange" in fed
    assert "repo:${githubRepository}:ref:refs/heads/main" in fed


def role_assignments(bicep: Bicep) -> list[tuple[str, str, str, str | None]]:
    """(scope resource or 'resourceGroup', identity, role key, condition) of every role assignment."""
    out = []
    for res in bicep.of_type("Microsoft.Authorization/roleAssignments").values():
        m = re.search(r"name: guid\((\w+)\(?\)?\.id, (\w+)\.id, roles\.(\w+)\)", res["body"])
        out.append((m[1], m[2], m[3], res["condition"]))
    return out


#: Every role each identity holds, (scope, role): the whole least-privilege design in one place.
EXPECTED_ROLES = {
    "functionIdentity": {
        # AzureWebJobsStorage (identity-based): the host's blobs (keys, locks, leases) and the chat queues
        ("storage", "storageBlobDataOwner"), ("storage", "storageQueueDataContributor"),
        # its package (WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID): read, on that container only
        ("functionPackagesContainer", "storageBlobDataReader"),
        # the daily review export's files: write, on that container only
        ("reviewExportContainer", "storageBlobDataContributor"),
        # the secrets it references, one by one (the last two only with useConnectionStrings=true)
        ("sendbirdTokenSecretRef", "keyVaultSecretsUser"), ("intentKeySecretRef", "keyVaultSecretsUser"),
        ("telemetryPiiHashKeySecretRef", "keyVaultSecretsUser"), ("cosmosKeySecretRef", "keyVaultSecretsUser"),
        ("storageConnectionSecretRef", "keyVaultSecretsUser"),
        # the prediction cache's key-hashing secret (only with intentCache)
        ("intentCacheHashKeySecretRef", "keyVaultSecretsUser"),
    },
    "intentIdentity": {
        ("registry", "acrPull"), ("modelsContainer", "storageBlobDataReader"),
        ("intentKeySecretRef", "keyVaultSecretsUser"),
        # model lifecycle (intentModelLifecycle): its authoring store, its authoring keys, the events secret
        ("cluContainer", "storageBlobDataContributor"), ("intentAuthoringKeysSecretRef", "keyVaultSecretsUser"),
        ("modelEventsSecretRef", "keyVaultSecretsUser"),
    },
    "consoleIdentity": {
        # the queues (poison listing and replay, depths) and the secrets its settings reference, one by one
        ("storage", "storageQueueDataContributor"), ("consoleSecretRef", "keyVaultSecretsUser"),
        # the daily review exports it offers for download: read, on that container only
        ("reviewExportContainer", "storageBlobDataReader"),
        ("consoleAuthoringKeySecretRef", "keyVaultSecretsUser"), ("telemetryPiiHashKeySecretRef", "keyVaultSecretsUser"),
        ("cosmosKeySecretRef", "keyVaultSecretsUser"), ("storageConnectionSecretRef", "keyVaultSecretsUser"),
    },
    "githubIdentity": {
        ("functionApp", "websiteContributor"), ("intentApp", "websiteContributor"), ("registry", "acrPush"),
        ("functionPackagesContainer", "storageBlobDataContributor"), ("modelsContainer", "storageBlobDataContributor"),
        ("sendbirdTokenSecretRef", "keyVaultSecretsUser"), ("intentKeySecretRef", "keyVaultSecretsUser"),
        ("resourceGroup", "reader"),
    },
}
BLOB_WRITE_ROLES = {"storageBlobDataOwner", "storageBlobDataContributor"}


def test_role_scopes_are_narrow(bicep, param_file):
    assignments = role_assignments(bicep)
    held = {identity: {(scope, role) for scope, ident, role, _ in assignments if ident == identity}
            for identity in EXPECTED_ROLES}
    assert held == EXPECTED_ROLES
    assert {ident for _, ident, _, _ in assignments} == set(EXPECTED_ROLES)
    conditions = {(scope, ident): cond for scope, ident, _, cond in assignments}
    assert conditions[("cosmosKeySecretRef", "functionIdentity")] == "useConnectionStrings"
    assert conditions[("storageConnectionSecretRef", "functionIdentity")] == "useConnectionStrings"
    assert all(cond == "!empty(githubRepository)"
               for (_, ident), cond in conditions.items() if ident == "githubIdentity")
    assert conditions[("cluContainer", "intentIdentity")] == "intentModelLifecycle"
    assert conditions[("intentAuthoringKeysSecretRef", "intentIdentity")] == "intentModelLifecycle"
    assert conditions[("modelEventsSecretRef", "intentIdentity")] == "intentModelLifecycle && !empty(modelEventsWebhookUrl)"
    assert all(cond in ("consoleEnabled", "consoleEnabled && useConnectionStrings")
               for (_, ident), cond in conditions.items() if ident == "consoleIdentity")
    assert conditions[("cosmosKeySecretRef", "consoleIdentity")] == "consoleEnabled && useConnectionStrings"

    # Key Vault: per secret, never the whole vault; each scope is a secret of this vault with the referenced name,
    # and the assignment waits for the secret when this deployment writes it
    assert not [a for a in assignments if a[0] == "keyVault"], "no role on the whole vault"
    written = {_secret_name(bicep, r): n for n, r in bicep.of_type("Microsoft.KeyVault/vaults/secrets").items()
               if "existing" not in r["body"].split("\n")[0]}
    for name, res in bicep.of_type("Microsoft.Authorization/roleAssignments").items():
        scope = re.search(r"^\s+scope: (\w+)$", res["body"], re.M)
        if scope and bicep.resources[scope[1]]["type"] == "Microsoft.KeyVault/vaults/secrets":
            target = bicep.resources[scope[1]]
            assert target["body"].split("\n")[0].rstrip().endswith("existing = {"), scope[1]
            assert "parent: keyVault" in target["body"], scope[1]
            assert "roles.keyVaultSecretsUser" in res["body"], name
            assert written[_secret_name(bicep, target)] in res["body"].split("dependsOn:")[1], f"{name}: dependsOn"
    # the intent service reads exactly the secret its settings reference
    intent_refs = {v for v in bicep.object_var("intentSettings").values() if v.endswith("Reference")}
    assert intent_refs == {"intentKeyReference"}
    lifecycle_refs = {v for name in ("intentAuthoringSettings", "intentEventsSettings")
                      for v in bicep.object_var(name).values() if v.endswith("Reference")}
    assert lifecycle_refs == {"intentAuthoringKeysReference", "modelEventsSecretReference"}

    # Models and packages live in the artifact account; the function identity owns blobs only in the runtime account
    # and reads only its packages, so it can write neither a model nor a package. Only the deployment identity can.
    assert "parent: artifactBlobService" in bicep.resources["modelsContainer"]["body"]
    assert "parent: artifactBlobService" in bicep.resources["functionPackagesContainer"]["body"]
    assert "parent: artifactStorage" in bicep.resources["artifactBlobService"]["body"]
    artifact_scopes = {"artifactStorage", "artifactBlobService", "modelsContainer", "functionPackagesContainer",
                       "resourceGroup"}
    writers = {ident for scope, ident, role, _ in assignments if scope in artifact_scopes and role in BLOB_WRITE_ROLES}
    assert writers == {"githubIdentity"}
    # the one container the intent service writes: its authoring store (trained models named by their SHA-256)
    assert "parent: artifactBlobService" in bicep.resources["cluContainer"]["body"]
    assert {ident for scope, ident, role, _ in assignments if scope == "cluContainer" and role in BLOB_WRITE_ROLES} \
        == {"intentIdentity"}
    containers = bicep.of_type("Microsoft.Storage/storageAccounts/blobServices/containers")
    runtime_containers = [n for n, r in containers.items() if "parent: blobService" in r["body"]]
    # only data the function app itself writes (the daily review exports), never an artifact something runs
    assert runtime_containers == ["reviewExportContainer"], "no artifact in the account the function identity owns " \
        "blobs of"


# ------------------------------------------------------------------------------------------------------------
# Workflows
# ------------------------------------------------------------------------------------------------------------

def _check_jsonschema(*files: Path) -> subprocess.CompletedProcess:
    if importlib.util.find_spec("check_jsonschema") is None:
        pytest.fail("check-jsonschema is not installed: pip install -r infra/requirements-dev.txt")
    return subprocess.run([sys.executable, "-m", "check_jsonschema", "--builtin-schema", "vendor.github-workflows",
                           *map(str, files)], capture_output=True, text=True, timeout=60)


def workflow_files() -> list[Path]:
    return sorted(WORKFLOWS.glob("*.yml")) + sorted(WORKFLOWS.glob("*.yaml"))


def test_workflows_validate_against_the_github_actions_schema():
    files = workflow_files()
    assert files, "no workflow in .github/workflows"
    out = _check_jsonschema(*files)
    assert out.returncode == 0, out.stdout + out.stderr
    bad = _check_jsonschema(FIXTURES / "invalid_workflow.yml")
    assert bad.returncode != 0 and "stepz" in bad.stdout, "the schema check must reject an invalid workflow"


@pytest.fixture(scope="module")
def workflow() -> dict:
    yaml = pytest.importorskip("yaml", reason="PyYAML: pip install -r infra/requirements-dev.txt")
    data = yaml.safe_load((WORKFLOWS / "deploy.yml").read_text(encoding="utf-8"))
    data["on"] = data.pop(True, data.get("on"))  # YAML 1.1 reads the key `on` as true
    return data


def _steps(job: dict) -> list[dict]:
    return job["steps"]


def _index(steps: list[dict], predicate) -> int:
    return next(i for i, s in enumerate(steps) if predicate(s))


def test_workflow_tests_then_deploys_through_staging_with_oidc(workflow, bicep):
    assert workflow["on"]["push"]["branches"] == ["main"]
    jobs = workflow["jobs"]
    assert any(s.get("run", "").strip() == "make test" for s in _steps(jobs["test"]))
    text = (WORKFLOWS / "deploy.yml").read_text(encoding="utf-8")
    assert "secrets." not in text and "creds:" not in text and "publish-profile" not in text, "no stored passwords"
    for name, job in jobs.items():
        for step in _steps(job):
            if step.get("uses", "").startswith("azure/login@"):
                assert set(step["with"]) == {"client-id", "tenant-id", "subscription-id"}
                assert job["permissions"]["id-token"] == "write", f"{name}: OIDC needs id-token: write"
    deploy_jobs = {n: j for n, j in jobs.items() if n != "test"}
    for name, job in deploy_jobs.items():
        needs = job["needs"] if isinstance(job["needs"], list) else [job["needs"]]
        assert "test" in needs or all("test" in _as_list(jobs[n].get("needs")) for n in needs), name

    fa = _steps(jobs["function-app"])
    assert not any("functions-action" in s.get("uses", "") for s in fa), "zip deploy needs the content share"
    upload = _index(fa, lambda s: "az storage blob upload" in s.get("run", ""))
    assert "--auth-mode login" in fa[upload]["run"] and "--container-name function-packages" in fa[upload]["run"]
    assert "--overwrite false" in fa[upload]["run"] and "GITHUB_RUN_ID" in fa[upload]["run"], "one blob per run"
    deploy = _index(fa, lambda s: "WEBSITE_RUN_FROM_PACKAGE=" in s.get("run", ""))
    assert "--slot staging" in fa[deploy]["run"] and "/syncfunctiontriggers" in fa[deploy]["run"]
    refs = _index(fa, lambda s: "infra/scripts/check_key_vault_refs.py" in s.get("run", ""))
    smoke = _index(fa, lambda s: "infra/scripts/smoke_webhook.py" in s.get("run", ""))
    swap = _index(fa, lambda s: "deployment slot swap" in s.get("run", ""))
    synced = _index(fa, lambda s: "/syncfunctiontriggers" in s.get("run", "") and "--slot" not in s.get("run", ""))
    assert upload < deploy < refs < smoke < swap < synced and fa[swap].get("id") == "swap"
    assert "--slot staging --target-slot production" in fa[swap]["run"]
    assert "staging" in fa[smoke]["run"]
    assert set(re.findall(r"--expect (\w+)", fa[refs]["run"])) == SECRET_SETTINGS
    rollback = fa[-1]
    assert "failure()" in rollback["if"] and "deployment slot swap" in rollback["run"]

    image = _steps(jobs["intent-image"])
    fetch = _index(image, lambda s: "az storage blob download" in s.get("run", ""))
    build = _index(image, lambda s: "docker push" in s.get("run", ""))
    assert fetch < build and "--auth-mode login" in image[fetch]["run"]
    # the model digest is pinned: no build without INTENT_MODEL_SHA256, and the file must match it
    assert "^[0-9a-fA-F]{64}$" in image[fetch]["run"] and "exit 1" in image[fetch]["run"]
    assert "sha256sum --check" in image[fetch]["run"] and "if [ -n" not in image[fetch]["run"]
    assert image[fetch].get("id") == "model" and "steps.model.outputs.sha256" in jobs["intent-image"]["outputs"][
        "model_sha256"]
    assert "infra/docker/intent-with-model.Dockerfile" in image[build]["run"]
    intent = _steps(jobs["intent-deploy"])
    digest = "INTENT_MODEL_SHA256=${{ needs.intent-image.outputs.model_sha256 }}"
    pin = _index(intent, lambda s: digest in s.get("run", ""))
    assert "--slot staging" in intent[pin]["run"]
    staged = _index(intent, lambda s: s.get("uses", "").startswith("azure/webapps-deploy@"))
    assert intent[staged]["with"]["slot-name"] == "staging"
    refs = _index(intent, lambda s: "infra/scripts/check_key_vault_refs.py" in s.get("run", ""))
    assert re.findall(r"--expect (\w+)", intent[refs]["run"]) == ["INTENT_API_KEY"]
    ready = _index(intent, lambda s: "infra/scripts/wait_ready.py" in s.get("run", ""))
    swap = _index(intent, lambda s: "slot swap" in s.get("run", ""))
    assert pin < staged < refs < ready < swap and "staging" in intent[ready]["run"]
    assert "failure()" in intent[-1]["if"]


USES = re.compile(r"^\s*(?:-\s+)?uses:\s*(?P<ref>\S+)(?P<rest>.*)$")


def test_workflow_actions_are_pinned_to_commit_shas():
    """Every `uses:` names owner/repo@<40-hex commit SHA> with the release tag in a trailing comment, and the same
    action is pinned to the same commit everywhere (a tag can be moved; a commit SHA cannot)."""
    pins: dict[str, set[tuple[str, str]]] = {}
    count = 0
    for path in workflow_files():
        for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not (m := USES.match(line)) or line.lstrip().startswith("#"):
                continue
            count += 1
            where = f"{path.name}:{lineno}: {line.strip()}"
            ref = re.fullmatch(r"(?P<action>[\w.-]+/[\w.-]+(?:/[\w./-]+)?)@(?P<sha>[0-9a-f]{40})", m["ref"])
            assert ref, f"{where}: pin to a full commit SHA (owner/repo@<40 hex>)"
            tag = re.fullmatch(r"\s+# (v\d+(?:\.\d+){0,2})\s*", m["rest"])
            assert tag, f"{where}: add the release tag as a trailing comment (# vX.Y.Z)"
            pins.setdefault(ref["action"].lower(), set()).add((ref["sha"], tag[1]))
    assert count >= 10
    for action, versions in pins.items():
        assert len(versions) == 1, f"{action} is pinned to several commits: {versions}"


def _as_list(value) -> list:
    return [] if value is None else value if isinstance(value, list) else [value]


def test_workflow_variables_and_names_come_from_the_infrastructure(bicep):
    text = "\n".join(p.read_text(encoding="utf-8") for p in workflow_files())
    used = set(re.findall(r"vars\.(\w+)", text))
    optional = {"INTENT_MODEL_BLOB", "INTENT_MODEL_SHA256"}  # set by hand (README, "Deploy")
    assert used - optional <= set(bicep.outputs), f"variables not output by main.bicep: {used - optional - set(bicep.outputs)}"
    ev = Evaluator(bicep, {})
    for var in ("sendbirdTokenSecretName", "intentKeySecretName"):
        assert f"--name {ev.eval(bicep.vars[var])} " in text, var
    assert f"--container-name {ev.eval(bicep.vars['modelsContainerName'])} " in text
    assert f"--container-name {ev.eval(bicep.vars['functionPackagesContainerName'])} " in text
    assert "vars.STORAGE_ACCOUNT_NAME" not in text, "models and packages are in the artifact account"
    for script in re.findall(r"infra/(?:scripts|docker)/[\w.-]+", text):
        assert (ROOT / script).is_file(), script


# ------------------------------------------------------------------------------------------------------------
# Smoke and readiness scripts, against the real intake code and a stand-in intent service
# ------------------------------------------------------------------------------------------------------------

def _load_script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"infra_{name}", INFRA / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@contextmanager
def serve(handler_fn):
    """An HTTP server on a free loopback port; ``handler_fn(method, path, headers, body) -> (status, dict)``."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def _do(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            status, payload, *extra = handler_fn(self.command, self.path, {k.lower(): v for k, v in
                                                                           self.headers.items()}, body)
            data = json.dumps(payload).encode()
            self.send_response(status)
            for k, v in (extra[0] if extra else {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = _do

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def intake_server(token: str, warmup_503: int = 0):
    """The real intake decision (shared/intake.py) behind POST /api/sendbird/webhook, settings from the sample."""
    settings = load_settings(SAMPLE | {"SENDBIRD_API_TOKEN": token}).settings
    state = {"warmup": warmup_503}

    def handle(method, path, headers, body):
        if state["warmup"] > 0:
            state["warmup"] -= 1
            return 503, {"error": "warming up"}
        if method != "POST" or path != "/api/sendbird/webhook":
            return 404, {}
        decision = handle_webhook(body, headers, settings)
        return decision.status, decision.body
    return serve(handle)


def test_smoke_script_signs_like_the_app():
    smoke = _load_script("smoke_webhook")
    body = smoke.event(user_id="u1", text="안녕", channel_url="c", message_id=1, bot_user_id="ssg_bot")
    assert smoke.sign(body, "tok-12345678") == signature.sign(body, "tok-12345678")
    assert smoke.SIGNATURE_HEADER == signature.SIGNATURE_HEADER


def test_smoke_script_passes_against_the_real_intake_after_warm_up():
    smoke = _load_script("smoke_webhook")
    token = SAMPLE["SENDBIRD_API_TOKEN"]
    with intake_server(token, warmup_503=2) as url:
        failures = smoke.run(url, token, SAMPLE["SENDBIRD_BOT_USER_ID"], deadline_s=10, interval=0.05, timeout=5,
                             accept_user_id="smoke_user", channel_url="smoke_channel")
    assert failures == []


def test_smoke_script_fails_on_a_wrong_token_or_a_wrong_bot():
    smoke = _load_script("smoke_webhook")
    with intake_server("the-deployed-token-1234") as url:
        failures = smoke.run(url, "another-token-5678", SAMPLE["SENDBIRD_BOT_USER_ID"], deadline_s=1, interval=0.05)
        assert failures and "expected 200, got 401" in failures[0]
        failures = smoke.run(url, "the-deployed-token-1234", "not_the_bot", deadline_s=1, interval=0.05)
        assert failures and "sent_by_bot" in failures[0]
    with serve(lambda *a: (200, {"status": "ignored", "reason": "sent_by_bot"})) as url:  # no signature check
        failures = smoke.run(url, "tok-12345678", "ssg_bot", deadline_s=1, interval=0.05)
        assert failures and "expected 401" in failures[0]
    assert smoke.main(["--base-url", "http://127.0.0.1:9", "--bot-user-id", "b",
                       "--token-env", "SMOKE_TOKEN_THAT_IS_NOT_SET"]) == 2


def intent_standin(key: str, not_ready: int):
    state = {"not_ready": not_ready}

    def handle(method, path, headers, body):
        if path == "/health/ready":
            if state["not_ready"] > 0:
                state["not_ready"] -= 1
                return 503, {"status": "loading"}
            return 200, {"status": "ready"}
        if path.startswith("/language/:analyze-conversations") and method == "POST":
            if headers.get("ocp-apim-subscription-key") != key:
                return 401, {"error": {"code": "401", "message": "bad key"}}
            return 200, {"kind": "ConversationResult", "result": {"query": json.loads(body)["analysisInput"][
                "conversationItem"]["text"], "prediction": {"topIntent": "Greeting", "intents": []}}}, {
                "x-model-data-sha256": "abc"}
        return 404, {}
    return serve(handle)


def test_wait_ready_script_waits_for_readiness_and_checks_a_prediction():
    ready = _load_script("wait_ready")
    with intent_standin("k" * 16, not_ready=3) as url:
        assert ready.run(url, key="k" * 16, deadline_s=10, interval=0.05, expect_data_sha256="abc") == []
        failures = ready.run(url, key="wrong-key", deadline_s=10, interval=0.05)
        assert failures and "analyze-conversations" in failures[0]
    with intent_standin("k", not_ready=10_000) as url:
        failures = ready.run(url, deadline_s=0.3, interval=0.05)
        assert failures and "/health/ready did not answer 200" in failures[0]


def _kv_refs(*entries: tuple[str, str]) -> dict:
    """A configreferences/appsettings answer: (setting, status) pairs."""
    return {"value": [{"id": f"/subscriptions/s/resourceGroups/rg/providers/Microsoft.Web/sites/app/slots/staging/"
                             f"config/configreferences/appsettings/{name}", "name": name,
                       "properties": {"reference": "@Microsoft.KeyVault(SecretUri=https://kv.vault.azure.net/"
                                                   "secrets/x)", "status": status, "details": ""}}
                      for name, status in entries]}


def test_key_vault_reference_check_waits_for_resolution_and_names_what_failed():
    check = _load_script("check_key_vault_refs")
    answers = iter([_kv_refs(("SENDBIRD_API_TOKEN", "Initialized")),
                    _kv_refs(("SENDBIRD_API_TOKEN", "Resolved"), ("INTENT_API_KEY", "Resolved"))])
    assert check.run(lambda: next(answers), ["SENDBIRD_API_TOKEN", "INTENT_API_KEY"], deadline_s=5, interval=0) == []
    # a missing role on a secret: App Service would hand the app the literal reference text
    denied = _kv_refs(("SENDBIRD_API_TOKEN", "Resolved"), ("TELEMETRY_PII_HASH_KEY", "AccessToKeyVaultDenied"))
    problems = check.run(lambda: denied, ["SENDBIRD_API_TOKEN"], deadline_s=0.05, interval=0.01)
    assert problems == ["TELEMETRY_PII_HASH_KEY: AccessToKeyVaultDenied"]
    # an expected secret setting that is no reference at all (a plain value slipped in)
    assert check.unresolved(_kv_refs(("INTENT_API_KEY", "Resolved")), ["SENDBIRD_API_TOKEN"]) == [
        "SENDBIRD_API_TOKEN: not a Key Vault reference of this slot"]

    def broken():
        raise RuntimeError("az: not logged in")
    assert "not logged in" in check.run(broken, [], deadline_s=0, interval=0)[0]
    assert check.main(["--resource-id", "func-chatbot"]) == 2


def test_deploy_script_is_valid_bash(bicep):
    out = subprocess.run(["bash", "-n", str(INFRA / "scripts" / "deploy_infra.sh")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    text = (INFRA / "scripts" / "deploy_infra.sh").read_text(encoding="utf-8")
    assert "main.parameters.json" in text
    # it keeps what the pipeline deployed (images, model digests, packages of both slots) and passes the secrets
    passed = set(re.findall(r"\b([a-z]\w+)=\"\$", text.split("az deployment group create", 1)[1]))
    assert passed <= set(bicep.params), f"not parameters of main.bicep: {passed - set(bicep.params)}"
    assert {"intentImage", "intentStagingImage", "intentModelSha256", "intentStagingModelSha256",
            "functionPackageBlob", "functionStagingPackageBlob"} | SECRET_PARAMS <= passed
    # the hash key is generated once (when the vault has none), never per deployment
    assert "secret_exists telemetry-pii-hash-key" in text and "openssl rand -hex 32" in text
    # so is the prediction cache's (with intentCache): test_deploy_script_generates_the_cache_hash_key_once_...
    assert "intentCacheHashKey" in passed and "secret_exists intent-cache-hash-key" in text


def test_infra_readme_covers_deploy_costs_rotation_and_rollback():
    readme = (INFRA / "README.md").read_text(encoding="utf-8")
    for heading in ("## Deploy", "cost", "Rotate the SendBird token", "Roll back a swap", "Validation", "## Security"):
        assert heading.lower() in readme.lower(), heading
    security = readme.split("## Security", 1)[1].split("\n## ", 1)[0]
    for topic in ("allowSharedKeyAccess", "WEBSITE_RUN_FROM_PACKAGE_BLOB_MI_RESOURCE_ID", "Flex Consumption",
                  "Microsoft.KeyVault/vaults/secrets", "INTENT_MODEL_SHA256", "TELEMETRY_PII_HASH_KEY",
                  "@Microsoft.KeyVault(", "commit SHA", "check_key_vault_refs.py"):
        assert topic in security, f"README Security: {topic}"
    for test in re.findall(r"`(test_\w+)`", security):
        assert test in globals(), f"README Security names a test that does not exist: {test}"
    for command in ("az deployment group create", "az functionapp deployment slot swap", "az keyvault secret set"):
        assert command in readme, command
    requirements = (INFRA / "requirements-dev.txt").read_text(encoding="utf-8")
    assert re.search(r"^check-jsonschema==[\d.]+$", requirements, re.M)
    assert re.search(r"^PyYAML==[\d.]+$", requirements, re.M)


# ------------------------------------------------------------------------------------------------------------
# Prediction cache (intentCache): Azure Managed Redis, TLS, Entra ID, the hash key in Key Vault
# ------------------------------------------------------------------------------------------------------------

def test_the_prediction_cache_is_off_by_default_and_its_settings_load(bicep, param_file):
    settings = function_settings(bicep, param_values(bicep, param_file))
    assert settings["INTENT_CACHE_URL"] == "" and settings["INTENT_CACHE_HASH_KEY"] == ""
    for name in ("redisCache", "redisDatabase", "redisFunctionAccess", "functionIntentCacheKeyUser"):
        assert bicep.resources[name]["condition"] == "intentCache", name


def test_the_prediction_cache_is_redis_over_tls_with_entra_id_and_no_key_in_a_setting(bicep, param_file):
    params = param_values(bicep, param_file, intentCache=True)
    settings = function_settings(bicep, params)
    assert settings["INTENT_CACHE_URL"] == "rediss://redis-chatbot-q7x3k2m9p4w8z.westeurope.redis.azure.net:10000"
    assert settings["INTENT_CACHE_HASH_KEY"] == (
        "@Microsoft.KeyVault(SecretUri=https://kv-chatbot-q7x3k2m9p4.vault.azure.net/secrets/intent-cache-hash-key)")
    assert settings["INTENT_CACHE_PRINCIPAL_ID"] == FAKE_RESOURCES["functionIdentity"]["properties"]["principalId"]
    env = {k: ("resolved-secret-value" if v.startswith(KEY_VAULT_REFERENCE) else v) for k, v in settings.items()}
    s = load_settings(env).settings
    assert s.intent_cache_url.startswith("rediss://") and s.intent_cache_principal_id
    db = bicep.resources["redisDatabase"]["body"]
    assert "clientProtocol: 'Encrypted'" in db and "accessKeysAuthentication: 'Disabled'" in db
    assert "clusteringPolicy: 'EnterpriseCluster'" in db and "port: 10000" in db
    assert "minimumTlsVersion: '1.2'" in bicep.resources["redisCache"]["body"]
    access = bicep.resources["redisFunctionAccess"]
    assert access["type"] == "Microsoft.Cache/redisEnterprise/databases/accessPolicyAssignments"
    assert "objectId: functionIdentity.properties.principalId" in access["body"]
    assert any("@secure()" in d for d in bicep.params["intentCacheHashKey"]["decorators"])
    assert bicep.params["intentCacheHashKey"]["default"] == "''"
    assert bicep.resources["intentCacheHashKeySecret"]["condition"] == "!empty(intentCacheHashKey)"
    assert "scope: intentCacheHashKeySecretRef" in bicep.resources["functionIntentCacheKeyUser"]["body"]


FAKE_AZ = r'''#!/usr/bin/env bash
# az stand-in for deploy_infra.sh: a vault FAKE_KV_ID holding the secrets named in FAKE_SECRETS (space-separated),
# no apps; the deployment's arguments are written to $FAKE_AZ_LOG, one per line.
case "$1 $2" in
  "keyvault list") [[ -n "${FAKE_KV_ID:-}" ]] && echo "$FAKE_KV_ID"; exit 0 ;;
  "resource show")
    name="${4##*/}"
    [[ " ${FAKE_SECRETS:-} " == *" $name "* ]] && exit 0
    echo "ERROR: (SecretNotFound)" >&2; exit 3 ;;
  "deployment group") printf '%s\n' "$@" > "$FAKE_AZ_LOG"; echo "{}"; exit 0 ;;
esac
exit 0
'''


def _run_deploy_script(tmp_path: Path, *args: str, secrets: str = "", cache_in_params: bool = False,
                       env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, dict[str, str]]:
    """deploy_infra.sh (a copy, beside main.parameters.json, with ``intentCache`` true there if asked) against the
    az stand-in; returns the run and the deployment's ``name=value`` parameters."""
    infra = tmp_path / "infra"
    (infra / "scripts").mkdir(parents=True)
    shutil.copy(INFRA / "scripts" / "deploy_infra.sh", infra / "scripts" / "deploy_infra.sh")
    params = json.loads(PARAMS.read_text(encoding="utf-8"))
    if cache_in_params:
        params["parameters"]["intentCache"] = {"value": True}
    (infra / "main.parameters.json").write_text(json.dumps(params, indent=2), encoding="utf-8")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "az").write_text(FAKE_AZ, encoding="utf-8")
    (bin_dir / "az").chmod(0o755)
    log = tmp_path / "az-deployment.txt"
    run_env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
               "FAKE_AZ_LOG": str(log), "FAKE_SECRETS": secrets,
               "FAKE_KV_ID": "/subscriptions/0/resourceGroups/rg/providers/Microsoft.KeyVault/vaults/kv-x" if secrets
               else "", **(env or {})}
    out = subprocess.run(["bash", str(infra / "scripts" / "deploy_infra.sh"), "rg-chatbot", "westeurope", *args],
                         capture_output=True, text=True, env=run_env, timeout=60)
    assert out.returncode == 0, out.stderr
    passed = dict(a.split("=", 1) for a in log.read_text(encoding="utf-8").splitlines() if "=" in a)
    return out, passed


STORED = "sendbird-api-token intent-api-key telemetry-pii-hash-key"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="deploy_infra.sh generates keys with openssl")
def test_deploy_script_generates_the_cache_hash_key_once_and_never_prints_it(tmp_path):
    # first deployment with the cache: the vault has no intent-cache-hash-key yet -> 32 random bytes, hex
    out, passed = _run_deploy_script(tmp_path / "first", "intentCache=true", secrets=STORED)
    key = passed["intentCacheHashKey"]
    assert re.fullmatch(r"[0-9a-f]{64}", key), "32 random bytes as hex"
    assert key not in out.stdout and key not in out.stderr, "a generated key is never printed"
    assert "generated INTENT_CACHE_HASH_KEY (stored in Key Vault as intent-cache-hash-key)" in out.stderr
    assert passed["intentCache"] == "true" and passed["telemetryPiiHashKey"] == ""
    # another first deployment gets another key
    _, again = _run_deploy_script(tmp_path / "other", "intentCache=true", secrets=STORED)
    assert re.fullmatch(r"[0-9a-f]{64}", again["intentCacheHashKey"]) and again["intentCacheHashKey"] != key
    # later deployments: the vault has it -> empty parameter, the stored secret stays
    out, passed = _run_deploy_script(tmp_path / "later", "intentCache=true",
                                     secrets=STORED + " intent-cache-hash-key")
    assert passed["intentCacheHashKey"] == "" and "INTENT_CACHE_HASH_KEY" not in out.stderr
    # intentCache in the parameter file counts too
    _, passed = _run_deploy_script(tmp_path / "file", secrets=STORED, cache_in_params=True)
    assert re.fullmatch(r"[0-9a-f]{64}", passed["intentCacheHashKey"])
    # a key given by the operator is passed as given
    _, passed = _run_deploy_script(tmp_path / "given", "intentCache=true", secrets=STORED,
                                   env={"INTENT_CACHE_HASH_KEY": "operator-chosen-key-0123456789"})
    assert passed["intentCacheHashKey"] == "operator-chosen-key-0123456789"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="deploy_infra.sh generates keys with openssl")
def test_deploy_script_generates_no_cache_key_without_the_cache(tmp_path):
    out, passed = _run_deploy_script(tmp_path / "off", secrets=STORED)
    assert passed["intentCacheHashKey"] == "" and "INTENT_CACHE_HASH_KEY" not in out.stderr
    # an extra parameter wins over the parameter file
    out, passed = _run_deploy_script(tmp_path / "override", "intentCache=false", secrets=STORED,
                                     cache_in_params=True)
    assert passed["intentCacheHashKey"] == "" and passed["intentCache"] == "false"
    # the first deployment of all (no vault): the telemetry key is generated, the cache key is not
    out, passed = _run_deploy_script(tmp_path / "new", env={"SENDBIRD_API_TOKEN": "t" * 40, "INTENT_API_KEY": "k" * 32})
    assert re.fullmatch(r"[0-9a-f]{64}", passed["telemetryPiiHashKey"]) and passed["intentCacheHashKey"] == ""
