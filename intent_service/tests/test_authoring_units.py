"""Units of the authoring service: the retail project file, splits, offsets, evaluation figures, the
promotion gate, configuration, event signatures and the deployment registry's swap semantics."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from intent_service.authoring import projectfile as pf
from intent_service.authoring.cli import RETAIL_PROJECT, retail_project_text
from intent_service.authoring.config import AuthoringConfig, ConfigError, parse_keys
from intent_service.authoring.evaluation import (GatePolicy, entities_summary, gate_verdict, intents_summary,
                                                 summarize)
from intent_service.authoring.events import EventSink, sign, verify_signature
from intent_service.authoring.registry import DeploymentRegistry
from intent_service.authoring.repository import Repository
from intent_service.authoring.storage import MemoryBlobStore

RETAIL = Path(__file__).resolve().parents[1] / "data" / "retail"


# ---------------------------------------------------------------------------- the retail project file


def test_retail_project_file_agrees_with_the_csv_files():
    """project.json is generated from utterances_*.csv + entities.json; regenerate it with
    python -m intent_service.authoring.cli retail-project when they change."""
    assert RETAIL_PROJECT.read_text(encoding="utf-8") == retail_project_text()


def test_retail_project_content_matches_the_training_data():
    from intent_service.data import load_dataset

    project = json.loads(RETAIL_PROJECT.read_text(encoding="utf-8"))
    ds = load_dataset(RETAIL)
    utts = project["assets"]["utterances"]
    assert sorted((u["text"], u["intent"]) for u in utts) == sorted(zip(ds.texts, ds.intents, strict=True))
    assert {u["language"] for u in utts} == {"en", "ko"}
    spec = json.loads((RETAIL / "entities.json").read_text(encoding="utf-8"))
    assert pf.entity_spec(project["assets"]) == pf.entity_spec({"entities": spec["entities"]})
    # about 20 % of every (intent, language) group is Test
    for intent in {u["intent"] for u in utts}:
        for lang in ("en", "ko"):
            group = [u for u in utts if u["intent"] == intent and u["language"] == lang]
            share = sum(u["dataset"] == "Test" for u in group) / len(group)
            assert 0.15 <= share <= 0.25, (intent, lang, share)
    labelled = [u for u in utts if u["entities"]]
    assert len(labelled) > 50
    for u in labelled:
        for e in u["entities"]:
            start, end = pf.utf16_to_codepoints(u["text"], e["offset"], e["length"])
            assert u["text"][start:end].strip()


def test_split_is_deterministic_and_respects_test():
    project = json.loads(RETAIL_PROJECT.read_text(encoding="utf-8"))
    a = project["assets"]
    tr, te, opts = pf.split(a, {"kind": "manual"})
    assert opts == {"kind": "manual"} and te == pf.test_indices(a)
    assert not set(tr) & set(te) and len(tr) + len(te) == len(a["utterances"])
    tr1, te1, opts1 = pf.split(a, None)
    assert opts1 == {"kind": "percentage", "trainingSplitPercentage": 80, "testingSplitPercentage": 20}
    assert (tr1, te1) == pf.split(a, {"kind": "percentage"})[:2]
    assert not set(te1) & set(pf.test_indices(a)) and not set(tr1) & set(pf.test_indices(a))
    assert abs(len(te1) / (len(tr1) + len(te1)) - 0.2) < 0.03
    assert pf.split(a, {"kind": "percentage", "trainingSplitPercentage": 90})[2]["testingSplitPercentage"] == 10


def test_offsets_convert_between_units():
    text = "😀 주문 20261119-0042 é"  # an astral emoji (2 UTF-16 units), Hangul, a combining accent
    text = text[:-1] + "e\u0301"
    s16 = text.index("2") + 1  # UTF-16 offset of the order number: the emoji counts twice
    assert pf.convert_span(text, s16, 13, "Utf16CodeUnit") == (s16, 13)
    assert pf.convert_span(text, s16, 13, "TextElement_V8") == (5, 13)
    assert pf.convert_span(text, s16, 13, "Utf8CodeUnit") == (len("😀 주문 ".encode()), 13)
    end16 = len(text.encode("utf-16-le")) // 2
    assert pf.convert_span(text, end16 - 2, 2, "TextElement_V8") == (19, 1)  # e + accent: one grapheme


def test_testset_digest_changes_only_with_test_utterances():
    a = json.loads(RETAIL_PROJECT.read_text(encoding="utf-8"))["assets"]
    d = pf.testset_sha256(a)
    a["utterances"].append({"text": "new", "intent": "Greeting", "dataset": "Train"})
    assert pf.testset_sha256(a) == d
    a["utterances"].append({"text": "new", "intent": "Greeting", "dataset": "Test"})
    assert pf.testset_sha256(a) != d


# ---------------------------------------------------------------------------- evaluation and gate


def r(expected, predicted, exp_ents=(), pred_ents=(), text="x"):
    return {"text": text, "language": "en", "intentsResult": {"expectedIntent": expected, "predictedIntent": predicted},
            "entitiesResult": {"expectedEntities": [dict(zip(("category", "offset", "length"), e, strict=True)) for e in exp_ents],
                               "predictedEntities": [dict(zip(("category", "offset", "length"), e, strict=True)) for e in pred_ents]}}


def test_intent_figures_by_hand():
    results = [r("A", "A"), r("A", "B"), r("B", "B"), r("B", "B"), r("None", "A")]
    s = intents_summary(results)
    a = s["intents"]["A"]
    assert (a["truePositiveCount"], a["falsePositiveCount"], a["falseNegativeCount"], a["trueNegativeCount"]) == (1, 1, 1, 2)
    assert a["precision"] == 0.5 and a["recall"] == 0.5 and a["f1"] == 0.5
    b = s["intents"]["B"]
    assert b["precision"] == pytest.approx(2 / 3, abs=1e-6) and b["recall"] == 1.0
    assert s["microF1"] == pytest.approx(3 / 5) and s["microPrecision"] == pytest.approx(3 / 5)
    assert s["macroF1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3, abs=1e-6)
    assert s["confusionMatrix"]["A"] == {"A": {"rawValue": 1.0, "normalizedValue": 50.0},
                                         "B": {"rawValue": 1.0, "normalizedValue": 50.0}}


def test_entity_figures_by_hand():
    results = [r("A", "A", [("Num", 0, 5)], [("Num", 0, 5)]),
               r("A", "A", [("Num", 2, 4)], [("Num", 2, 3)]),           # wrong length: FN + FP
               r("A", "A", [], [("Date", 0, 4)]),                        # spurious
               r("A", "A", [("Date", 1, 2)], [])]                        # missed
    s = entities_summary(results, ["Num", "Date", "Store"])
    n = s["entities"]["Num"]
    assert (n["truePositiveCount"], n["falsePositiveCount"], n["falseNegativeCount"], n["trueNegativeCount"]) == (1, 1, 1, 2)
    assert s["entities"]["Store"]["f1"] == 0.0 and s["entities"]["Store"]["trueNegativeCount"] == 4
    assert s["macroF1"] == pytest.approx((0.5 + 0.0) / 2)  # Store: neither labelled nor predicted, left out
    assert s["confusionMatrix"]["Num"]["Num"]["rawValue"] == 2.0
    assert s["confusionMatrix"]["None"]["Date"]["rawValue"] == 1.0
    assert s["confusionMatrix"]["Date"]["None"]["rawValue"] == 1.0
    full = summarize(results, ["A"], ["Num"], {"kind": "manual"})
    assert set(full) == {"intentsEvaluation", "entitiesEvaluation", "evaluationOptions"}


def test_gate_verdicts():
    policy = GatePolicy(max_accuracy_drop=2.0, max_intent_f1_drop=10.0)
    prod = [r("A", "A")] * 45 + [r("B", "B")] * 45 + [r("B", "A")] * 10
    assert gate_verdict(prod, prod, policy)["verdict"] == "passed"
    assert gate_verdict(prod, None, policy)["verdict"] == "notApplicable"
    # one point of accuracy less: within the margin (B's F1 drops ~1.3 points)
    slightly = [r("A", "A")] * 45 + [r("B", "B")] * 44 + [r("B", "A")] * 11
    assert gate_verdict(slightly, prod, policy)["verdict"] == "passed"
    worse = [r("A", "A")] * 45 + [r("B", "B")] * 40 + [r("B", "A")] * 15
    v = gate_verdict(worse, prod, policy)
    assert v["verdict"] == "refused" and [x["code"] for x in v["reasons"]] == ["AccuracyDrop"]
    # accuracy within a wide margin, but intent A collapses while B improves
    shifted = [r("A", "B")] * 20 + [r("A", "A")] * 25 + [r("B", "B")] * 55
    v = gate_verdict(shifted, prod, GatePolicy(max_accuracy_drop=50, max_intent_f1_drop=5))
    assert v["verdict"] == "refused" and v["reasons"][0]["target"] == "A"


# ---------------------------------------------------------------------------- config and events


def test_config_from_env():
    assert AuthoringConfig.from_env({}) is None
    c = AuthoringConfig.from_env({"INTENT_STORE": "memory", "INTENT_AUTHORING_KEYS": "ci:0123456789abcdef0,me:abcdefabcdef01234",
                                  "INTENT_GATE_MAX_ACCURACY_DROP": "1.5", "INTENT_MAX_TRAINING_JOBS": "2"})
    assert c.authoring_keys == {"ci": "0123456789abcdef0", "me": "abcdefabcdef01234"}
    assert c.gate.max_accuracy_drop == 1.5 and c.limits.max_training_jobs == 2
    with pytest.raises(ConfigError):
        parse_keys("nokey")
    with pytest.raises(ConfigError):
        parse_keys("a:short")
    with pytest.raises(ConfigError):  # the authoring key must not be the prediction key
        AuthoringConfig.from_env({"INTENT_STORE": "memory", "INTENT_AUTHORING_KEY": "same-key-0123456789",
                                  "INTENT_API_KEY": "same-key-0123456789"})
    with pytest.raises(ConfigError):
        AuthoringConfig.from_env({"INTENT_STORE": "file"})
    c = AuthoringConfig.from_env({"INTENT_STORE_CONNECTION_STRING": "UseDevelopmentStorage=true"})
    assert c.store == "blob" and c.container == "models" and c.prefix == "clu/"


def test_signature_roundtrip_and_tamper():
    body = b'{"id":"1"}'
    ts = int(time.time())
    headers = {"webhook-id": "1", "webhook-timestamp": str(ts), "webhook-signature": sign("s3cret", "1", ts, body)}
    assert verify_signature("s3cret", headers, body)
    assert not verify_signature("s3cret", headers, body + b" ")
    assert not verify_signature("s3cret", dict(headers, **{"webhook-timestamp": str(ts - 3600)}), body)


def test_emit_never_blocks_or_raises_when_the_webhook_is_down():
    sink = EventSink("http://127.0.0.1:9/unreachable", "s", max_attempts=2, backoff=0.01, capacity=3)
    sink.start()
    t0 = time.perf_counter()
    for _ in range(10):  # more than the queue holds: the extra ones are dropped, not waited for
        sink.emit("IntentService.Test", "p", "s", {"x": 1})
    assert time.perf_counter() - t0 < 0.5
    deadline = time.monotonic() + 10
    while sink.failed + sink.dropped < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    sink.stop()
    assert sink.delivered == 0 and sink.failed + sink.dropped == 10 and sink.dropped >= 1
    assert EventSink(None).emit("X", "p", "s", {}) is None


# ---------------------------------------------------------------------------- the registry


class FakeModel:
    def __init__(self, version):
        self.version = version


def registry_with_fake_loader(monkeypatch, load_seconds=0.0):
    import intent_service.authoring.registry as reg

    repo = Repository(MemoryBlobStore())
    loads = []

    def fake_load(data, digest, name="", **kw):
        loads.append(digest)
        time.sleep(load_seconds)
        return FakeModel(data.decode())

    monkeypatch.setattr(reg, "load_model_bytes", fake_load)
    return DeploymentRegistry(repo, interval=0.05), repo, loads


def doc(rev, **deps):
    return {"revision": rev, "deployments": {k: {"modelSha256": v, "trainedModelLabel": v} for k, v in deps.items()}}


def test_registry_swaps_atomically_and_keeps_at_most_two_models(monkeypatch):
    registry, repo, loads = registry_with_fake_loader(monkeypatch, load_seconds=0.2)
    digests = {}
    for name in ("m1", "m2", "m3"):
        digests[name] = repo.put_content(name.encode())
    registry.apply("p", doc(1, production=digests["m1"]))
    assert registry.resolve("p", "production").model.version == "m1"
    seen = []
    stop = threading.Event()

    most = []

    def reader():  # a prediction loop: never sees a gap
        while not stop.is_set():
            slot = registry.resolve("p", "production")
            seen.append(slot.model.version if slot else None)
            most.append(registry.models_in_memory())

    t = threading.Thread(target=reader)
    t.start()
    registry.apply("p", doc(2, production=digests["m2"]))  # loads m2 (0.2 s) beside m1, then switches
    registry.apply("p", doc(3, production=digests["m3"]))
    time.sleep(0.05)
    stop.set()
    t.join()
    assert max(most) <= 2
    assert None not in seen and seen[0] == "m1" and seen[-1] == "m3"
    order = [v for i, v in enumerate(seen) if i == 0 or seen[i - 1] != v]
    assert order == ["m1", "m2", "m3"]
    assert registry.models_in_memory() == 1
    # an older document (the sync loop racing a deploy job) never undoes a newer one
    assert registry.apply("p", doc(2, production=digests["m2"])) is False
    assert registry.resolve("p", "production").model.version == "m3"
    # a swap shares the loaded models: no load
    n = len(loads)
    registry.apply("p", doc(4, production=digests["m3"], staging=digests["m3"]))
    registry.apply("p", doc(5, production=digests["m3"], staging=digests["m3"]))
    assert len(loads) == n
    registry.apply("p", None)
    assert registry.resolve("p", "production") is None and registry.models_in_memory() == 0


def test_registry_sync_follows_the_store(monkeypatch):
    registry, repo, _ = registry_with_fake_loader(monkeypatch)
    d1 = repo.put_content(b"m1")
    etag = repo.put_deployments("p", doc(1, production=d1), None)
    registry.sync_once()
    assert registry.resolve("p", "production").model.version == "m1"
    d2 = repo.put_content(b"m2")
    repo.put_deployments("p", doc(2, production=d2, staging=d1), etag)
    registry.sync_once()
    assert registry.resolve("p", "staging").model.version == "m1"
    assert registry.resolve("p", "production").model.version == "m2"
    repo.store.delete(repo.deployments_name("p"))
    registry.sync_once()
    assert registry.resolve("p", "production") is None
    # a model whose content does not verify keeps the project on its previous models
    repo.put_deployments("q", doc(1, production="0" * 64), None)
    registry.sync_once()
    assert "q" in registry.project_errors and registry.resolve("q", "production") is None


def _request(headers):
    from starlette.requests import Request

    return Request({"type": "http", "method": "GET", "path": "/", "query_string": b"",
                    "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]})


def test_authenticator_keys_and_easy_auth_principals():
    from intent_service.authoring.api import Authenticator

    auth = Authenticator({"ci": "k" * 20, "alice": "a" * 20}, easy_auth=True, principals={"oid-1", "bob@contoso"})
    assert auth.identify(_request({"Ocp-Apim-Subscription-Key": "a" * 20})) == "key:alice"
    assert auth.identify(_request({"Ocp-Apim-Subscription-Key": "k" * 20})) == "key:ci"
    assert auth.identify(_request({"Ocp-Apim-Subscription-Key": "x" * 20})) is None
    # a wrong key is not rescued by principal headers
    assert auth.identify(_request({"Ocp-Apim-Subscription-Key": "x", "X-MS-CLIENT-PRINCIPAL-ID": "oid-1"})) is None
    assert auth.identify(_request({"X-MS-CLIENT-PRINCIPAL-ID": "oid-1",
                                   "X-MS-CLIENT-PRINCIPAL-NAME": "carol@contoso"})) == "principal:carol@contoso"
    assert auth.identify(_request({"X-MS-CLIENT-PRINCIPAL-ID": "oid-9",
                                   "X-MS-CLIENT-PRINCIPAL-NAME": "bob@contoso"})) == "principal:bob@contoso"
    assert auth.identify(_request({"X-MS-CLIENT-PRINCIPAL-ID": "oid-9"})) is None
    # without Easy Auth the headers mean nothing
    plain = Authenticator({"ci": "k" * 20})
    assert plain.identify(_request({"X-MS-CLIENT-PRINCIPAL-ID": "oid-1"})) is None
    assert not Authenticator({}).configured


def test_an_entity_without_prebuilts_or_required_components_is_accepted():
    """CLU project files often leave both out; they default to empty lists."""
    from intent_service.authoring.schema import Entity
    e = Entity.model_validate({"category": "OrderNumber"})
    assert e.prebuilts == [] and e.requiredComponents == []


def test_a_live_job_in_a_long_phase_without_progress_is_not_reported_failed():
    """A job whose work runs longer than ``stale_job_seconds`` without reporting progress (storing a model on a
    loaded machine) keeps its heartbeat, so no replica reports it failed; one whose replica stopped is."""
    import dataclasses
    import threading as _threading
    import time as _time

    from intent_service.authoring.repository import Repository
    from intent_service.authoring.service import AuthoringService
    from intent_service.authoring.storage import MemoryBlobStore

    config = dataclasses.replace(AuthoringConfig.from_env({"INTENT_STORE": "memory"}), stale_job_seconds=4.0)
    svc = AuthoringService(config, Repository(MemoryBlobStore()), registry=None, events=None)
    release = _threading.Event()
    job = svc._new_job(None, "test")
    svc._spawn(svc._run_job, None, job["jobId"], lambda: release.wait(30) and {})
    deadline = _time.monotonic() + 9.0  # more than twice the stale limit
    while _time.monotonic() < deadline:
        assert svc.get_job(None, job["jobId"], "test")["status"] in ("notStarted", "running")
        _time.sleep(0.2)
    release.set()
    for _ in range(50):
        if svc.get_job(None, job["jobId"], "test")["status"] == "succeeded":
            break
        _time.sleep(0.1)
    assert svc.get_job(None, job["jobId"], "test")["status"] == "succeeded"
