"""Settings validation, host.json consistency, and the response catalog."""

from __future__ import annotations

import json
import re
import string

import pytest

from shared.catalog import LANGUAGES, CatalogError, ResponseCatalog
from shared.settings import IDENTITY_SETTINGS, SettingsError, load_settings, setting_names
from tests.support.samples import ROOT, sample_values


def test_sample_settings_load(settings):
    assert settings.sendbird_bot_user_id == "ssg_bot"
    assert settings.cosmos_verify_tls is False and settings.intent_confidence_threshold == 0.5


def test_sample_lists_every_setting_the_app_reads():
    assert set(setting_names()) - IDENTITY_SETTINGS <= set(sample_values())


def test_identity_based_storage_connection_is_accepted_instead_of_a_connection_string():
    values = {k: v for k, v in sample_values().items() if k != "AzureWebJobsStorage"}
    with pytest.raises(SettingsError, match="AzureWebJobsStorage__accountName"):
        load_settings(values)
    s = load_settings({**values, "AzureWebJobsStorage__accountName": "chatgwstore", "COSMOS_KEY": ""}).settings
    assert s.storage_account_name == "chatgwstore" and s.cosmos_key == ""


@pytest.mark.parametrize("name", ["SENDBIRD_API_TOKEN", "COSMOS_ENDPOINT", "INTENT_ENDPOINT"])
def test_missing_required_setting_is_named(name):
    values = sample_values()
    del values[name]
    with pytest.raises(SettingsError, match=name):
        load_settings(values)


@pytest.mark.parametrize("name, value", [("INTENT_CONFIDENCE_THRESHOLD", "1.5"), ("INTENT_ENDPOINT", "not a url"),
                                         ("COSMOS_VERIFY_TLS", "maybe"), ("ORDER_TRACKING_URL", "https://x/"),
                                         ("DEFAULT_LANGUAGE", "fr"), ("WEBHOOK_MAX_BODY_BYTES", "100000")])
def test_bad_setting_is_named(name, value):
    with pytest.raises(SettingsError, match=name):
        load_settings({**sample_values(), name: value})


def test_setting_names_are_case_insensitive():
    values = {k.lower(): v for k, v in sample_values().items()}
    assert load_settings(values).settings.sendbird_bot_user_id == "ssg_bot"


def test_host_json_queue_settings_are_read(tmp_path):
    host = json.loads((ROOT / "host.json").read_text())
    cfg = load_settings(sample_values())
    assert cfg.host.message_encoding == host["extensions"]["queues"]["messageEncoding"]
    assert cfg.host.max_dequeue_count == host["extensions"]["queues"]["maxDequeueCount"]
    bad = tmp_path / "host.json"
    bad.write_text(json.dumps({"extensions": {"queues": {"messageEncoding": "utf16"}}}))
    with pytest.raises(SettingsError, match="messageEncoding|message_encoding"):
        load_settings(sample_values(), host_json=bad)


@pytest.mark.parametrize("name", ["AzureFunctionsJobHost__extensions__queues__maxDequeueCount",
                                  "AZUREFUNCTIONSJOBHOST__EXTENSIONS__QUEUES__MAXDEQUEUECOUNT"])
def test_max_dequeue_count_follows_the_hosts_app_setting_override(name):
    assert load_settings({**sample_values(), name: "3"}).host.max_dequeue_count == 3
    with pytest.raises(SettingsError, match="maxDequeueCount|max_dequeue_count"):
        load_settings({**sample_values(), name: "zero"})


def test_message_encoding_follows_the_hosts_app_setting_override():
    name = "AzureFunctionsJobHost__extensions__queues__messageEncoding"
    assert load_settings({**sample_values(), name: "none"}).host.message_encoding == "none"


@pytest.mark.parametrize("name", ["SENDBIRD_API_TOKEN", "AzureWebJobsStorage", "COSMOS_KEY", "TELEMETRY_PII_HASH_KEY"])
def test_an_unresolved_key_vault_reference_is_refused_at_start_up(name):
    ref = "@Microsoft.KeyVault(SecretUri=https://chatgw-kv.vault.azure.net/secrets/sendbird-api-token/)"
    with pytest.raises(SettingsError, match=f"{name}: unresolved Key Vault reference") as err:
        load_settings({**sample_values(), name: ref})
    assert "vault.azure.net" not in str(err.value)  # the message names the setting, not the reference


@pytest.mark.parametrize("name, url, ok", [
    ("SENDBIRD_API_BASE_URL", "http://api-abc.sendbird.com", False),
    ("SENDBIRD_API_BASE_URL", "https://api-abc.sendbird.com", True),
    ("SENDBIRD_API_BASE_URL", "http://localhost:8090", True),
    ("INTENT_ENDPOINT", "http://chatgw-intent.azurewebsites.net", False),
    ("INTENT_ENDPOINT", "https://chatgw-intent.azurewebsites.net", True),
    ("INTENT_ENDPOINT", "http://127.0.0.1:5088", True),
])
def test_outbound_endpoints_need_https_outside_the_local_stack(name, url, ok):
    values = {**sample_values(), name: url}
    if ok:
        load_settings(values)
    else:
        with pytest.raises(SettingsError, match=f"{name}: .*https://"):
            load_settings(values)


def test_pii_modes_need_a_hash_key():
    values = {**sample_values(), "TELEMETRY_PII_MODE": "strict"}
    with pytest.raises(SettingsError, match="TELEMETRY_PII_HASH_KEY"):
        load_settings(values)
    assert load_settings({**values, "TELEMETRY_PII_HASH_KEY": "k" * 32}).settings.telemetry_pii_mode == "strict"


def test_host_json_is_tuned_for_chat_latency():
    queues = json.loads((ROOT / "host.json").read_text())["extensions"]["queues"]
    h, m, s = queues["maxPollingInterval"].split(":")
    assert int(h) * 3600 + int(m) * 60 + float(s) <= 2, "a quiet bot must not wait more than ~2 s per hop"


def placeholders(text: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


def test_catalog_has_both_languages_with_the_same_placeholders(catalog):
    raw = json.loads((ROOT / "shared" / "responses.json").read_text(encoding="utf-8"))
    for key, texts in raw.items():
        assert set(texts) == set(LANGUAGES), key
        assert placeholders(texts["ko"]) == placeholders(texts["en"]), key
        assert re.search("[가-힣]", texts["ko"]), f"{key}: Korean text has no Hangul"


def test_catalog_covers_every_response_key_of_every_route(catalog):
    """The response keys come from the route registry; each exists in the catalog in Korean and English."""
    from shared.routes import routes
    declared = {k for r in routes() for k in r.response_keys}
    assert declared and all(catalog.has(k) for k in declared), declared - set(catalog.keys())
    for key in declared:
        assert all(catalog.render(key, lang, **{p: "x" for p in placeholders(catalog._texts[key][lang])})
                   for lang in LANGUAGES)


def test_every_answer_a_handler_gives_is_declared_by_its_route():
    source = (ROOT / "shared" / "branch_handlers.py").read_text(encoding="utf-8")
    answered = set(re.findall(r'Answer\("([a-z_]+\.[a-z_]+)"', source))
    from shared.routes import routes
    assert answered and answered <= {k for r in routes() for k in r.response_keys}


def test_catalog_errors_name_the_problem():
    cat = ResponseCatalog({"a.b": {"ko": "{x}", "en": "{x}"}})
    with pytest.raises(CatalogError, match="fr"):
        cat.render("a.b", "fr", x="1")
    with pytest.raises(CatalogError, match="x"):
        cat.render("a.b", "en")
