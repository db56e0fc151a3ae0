"""The sentence encoder (digest-checked), the model that uses it, the CLINC150 protocol, and the
official Azure CLU prediction client against the service."""
import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import requests

from intent_service import encoder as enc_mod
from intent_service.cli import main
from intent_service.encoder import ENCODER_DIR, ENCODER_FILES, get_encoder
from intent_service.model import (EncoderIntegrityError, EncoderSourceError, ModelIntegrityError,
                                  load_model, load_model_bytes)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def fresh_encoder_cache(monkeypatch):
    """Encoders are cached per (directory, digests): start from an empty cache, restore after."""
    saved = dict(enc_mod._cache)
    enc_mod._cache.clear()
    yield
    enc_mod._cache.clear()
    enc_mod._cache.update(saved)


# --------------------------------------------------------------------------- the encoder files


def test_shipped_encoder_files_match_the_pinned_digests_and_carry_the_license():
    for name, digest in ENCODER_FILES.items():
        assert sha((ENCODER_DIR / name).read_bytes()) == digest, name
    # upstream's tokenizer.json is shipped byte for byte (digest from the reference notes)
    assert ENCODER_FILES["tokenizer.json"] == (
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037")
    assert "Apache License" in (ENCODER_DIR / "LICENSE").read_text(encoding="utf-8")
    notice = (ENCODER_DIR / "NOTICE").read_text(encoding="utf-8")
    assert "sentence-transformers/all-MiniLM-L6-v2" in notice and ENCODER_FILES["model.int8.onnx"] in notice
    assert (ENCODER_DIR / "model.int8.onnx").stat().st_size < 30 * 1024 * 1024


def test_english_embeddings_carry_meaning():
    e = get_encoder().encode(["where is my parcel", "track my package please",
                              "what will the weather be tomorrow", "where is my parcel"])
    assert e.shape == (4, 384) and e.dtype == np.float32
    assert np.allclose(np.linalg.norm(e, axis=1), 1.0, atol=1e-3)
    assert np.allclose(e[0], e[3])  # deterministic
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2  # a paraphrase is nearer than another topic


def test_tampered_encoder_file_is_refused(retail_model_path, tmp_path, monkeypatch, fresh_encoder_cache):
    copy = tmp_path / "encoder"
    shutil.copytree(ENCODER_DIR, copy)
    onnx = copy / "model.int8.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit in the middle of the weights
    onnx.write_bytes(bytes(data))
    monkeypatch.setenv("INTENT_ENCODER_DIR", str(copy))
    with pytest.raises(EncoderIntegrityError, match="model.int8.onnx") as info:
        load_model(str(retail_model_path))
    assert isinstance(info.value, ModelIntegrityError)
    # the tokenizer is checked too
    onnx.write_bytes((ENCODER_DIR / "model.int8.onnx").read_bytes())
    (copy / "tokenizer.json").write_text("{}", encoding="utf-8")
    with pytest.raises(EncoderIntegrityError, match="tokenizer.json"):
        load_model(str(retail_model_path))
    (copy / "tokenizer.json").unlink()
    with pytest.raises(EncoderSourceError):
        load_model(str(retail_model_path))
    # control: an intact copy loads
    shutil.copy(ENCODER_DIR / "tokenizer.json", copy / "tokenizer.json")
    assert load_model(str(retail_model_path)).analyze("where is my order?")["topIntent"] == "OrderStatus"


def test_a_model_naming_other_encoder_digests_is_refused(retail_model, fresh_encoder_cache):
    """The digests come from the model file: a model trained on another encoder export does not
    silently run on this one."""
    d = retail_model.to_dict()
    step = d["pipeline"].named_steps["features"].transformer_list[-1][1]
    other = dict(step.encoder_files, **{"model.int8.onnx": "0" * 64})
    step.encoder_files = other
    d["meta"] = dict(d["meta"], encoder=dict(d["meta"]["encoder"], files=other))
    import skops.io as sio

    try:
        with pytest.raises(EncoderIntegrityError, match="differs from the expected 0000"):
            load_model_bytes(sio.dumps(d))
    finally:
        step.encoder_files = dict(ENCODER_FILES)


def test_server_refuses_a_tampered_encoder_and_says_why(start_server, retail_model_path, tmp_path):
    copy = tmp_path / "encoder"
    shutil.copytree(ENCODER_DIR, copy)
    data = bytearray((copy / "model.int8.onnx").read_bytes())
    data[100] ^= 0xFF
    (copy / "model.int8.onnx").write_bytes(bytes(data))
    srv = start_server(str(retail_model_path), extra_env={"INTENT_ENCODER_DIR": str(copy)})
    srv.wait_live()
    import time

    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        body = requests.get(srv.url("/health/ready"), timeout=2).json()
        if body["error"]["innererror"]["code"] == "model_load_failed":
            break
        time.sleep(0.1)
    assert body["error"]["innererror"] == {"code": "model_load_failed",
                                           "errorClass": "EncoderIntegrityError"}
    assert str(copy) not in json.dumps(body)


# --------------------------------------------------------------------------- the model


def test_model_records_configuration_data_and_encoder_digests(server, retail_model):
    info = requests.get(server.url("/model"), timeout=5).json()
    assert info["encoder"]["name"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert info["encoder"]["files"] == ENCODER_FILES
    assert info["config"]["embedding_weight"] > 0 and info["config"]["classifier"] == "svc"
    assert len(info["data_sha256"]) == 64 and info["data_sha256"] == retail_model.data_sha256
    assert info["calibration"]["threshold_rule"] == "accuracy"


@pytest.mark.parametrize("text,intent", [
    ("where is my order 20261119-0042?", "OrderStatus"),
    ("has my package shipped yet", "OrderStatus"),
    ("do you sell running shoes in size 270", "ProductSearch"),
    ("let me talk to a real person", "HumanHandoff"),
    ("what's the capital of france", "None"),
    ("주문번호 20261119-0042 배송 조회해 주세요", "OrderStatus"),
    ("검정 운동화 270 사이즈 있어요?", "ProductSearch"),
    ("상담원 연결해 주세요", "HumanHandoff"),
    ("오늘 날씨 어때?", "None"),
    ("안녕하세요", "Greeting"),
])
def test_english_and_korean_predictions(retail_model, text, intent):
    assert retail_model.analyze(text)["topIntent"] == intent


def test_model_bytes_round_trip(retail_model):
    data = retail_model.to_bytes()
    again = load_model_bytes(data, expected_sha256=sha(data))
    assert again.file_sha256 == sha(data)
    texts = ["where is my order", "배송 조회", "hello there"]
    assert np.allclose(again.probabilities(texts), retail_model.probabilities(texts))
    with pytest.raises(ModelIntegrityError):
        load_model_bytes(data, expected_sha256="0" * 64)


def test_evaluate_prints_per_intent_figures_and_confusions(retail_model_path, capsys):
    data = Path(__file__).resolve().parents[1] / "data" / "retail" / "utterances_ko.csv"
    assert main(["evaluate", "--model", str(retail_model_path), "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "per intent:" in out and "precision" in out and "confusion summary" in out
    for intent in ("Greeting", "OrderStatus", "None"):
        assert any(line.split()[:1] == [intent] for line in out.splitlines()), intent


# --------------------------------------------------------------------------- CLINC150 protocol


def synthetic_clinc(path: Path, scramble_test: bool = False) -> set:
    """A tiny CLINC150-shaped file. Returns the test texts (each carries a marker word)."""
    topics = {"balance": "how much money is in my {} account",
              "weather": "what is the weather like in {} today",
              "music": "play some {} music for me"}
    fill = ["checking", "savings", "paris", "jazz", "rock", "seoul", "business", "kid", "boston",
            "classical", "joint", "london", "travel", "pop", "tokyo", "student"]
    oos = ["who wrote this {} poem", "how tall is the {} tower", "recipe for {} soup",
           "translate {} into latin"]

    def split(lo, hi, tag=""):
        ins = [[t.format(f) + tag, i] for i, t in topics.items() for f in fill[lo:hi]]
        out = [[o.format(f) + tag, "oos"] for o in oos for f in fill[lo:hi][:2]]
        return ins, out

    tr_in, tr_oos = split(0, 10)
    va_in, va_oos = split(10, 13)
    te_in, te_oos = split(13, 16, " zzqtest")
    if scramble_test:  # other test labels: must not change any choice
        labels = [r[1] for r in te_in + te_oos][::-1]
        for r, lab in zip(te_in + te_oos, labels, strict=True):
            r[1] = lab
    data = {"train": tr_in, "oos_train": tr_oos, "val": va_in, "oos_val": va_oos,
            "test": [r for r in te_in + te_oos if r[1] != "oos"],
            "oos_test": [r for r in te_in + te_oos if r[1] == "oos"]}
    path.mkdir(parents=True, exist_ok=True)
    (path / "data_full.json").write_text(json.dumps(data), encoding="utf-8")
    return {r[0] for r in te_in + te_oos}


def test_clinc150_protocol_no_test_data_reaches_a_choice(tmp_path, monkeypatch):
    import intent_service.clinc as clinc
    import intent_service.training as training

    seen = []
    real_train = training.train_model

    def spy(dataset, **kw):  # every text a model is fitted or calibrated on
        seen.extend(dataset.texts)
        if kw.get("validation") is not None:
            seen.extend(kw["validation"].texts)
        return real_train(dataset, **kw)

    monkeypatch.setattr(clinc, "train_model", spy)
    reports = []
    for scramble in (False, True):
        test_texts = synthetic_clinc(tmp_path / str(scramble), scramble_test=scramble)
        out = tmp_path / f"report-{scramble}.json"
        assert main(["clinc150", "--clinc-dir", str(tmp_path / str(scramble)), "--json", str(out)]) == 0
        assert seen and not test_texts & set(seen)
        reports.append(json.loads(out.read_text()))
    a, b = reports
    for setting in ("oos-train", "oos-threshold", "shipped"):
        # every choice and every val figure is the same whatever the test labels are ...
        assert a[setting]["temperature"] == b[setting]["temperature"]
        assert a[setting]["threshold"] == b[setting]["threshold"]
        assert a[setting]["val"] == b[setting]["val"]
    assert a["oos-train"]["threshold"] == 0.0
    assert a["config"] == b["config"] and a["encoder"]["files"] == ENCODER_FILES
    # ... while the test figures do change: test was only scored
    assert a["shipped"]["test"] != b["shipped"]["test"]


def test_configuration_selection_uses_val_only_and_the_one_standard_error_rule(tmp_path, monkeypatch):
    import intent_service.clinc as clinc

    synthetic_clinc(tmp_path)
    from intent_service.data import load_clinc150

    splits, _ = load_clinc150(str(tmp_path))
    cands = [{"embedding_weight": 0.0, "classifier": "svc", "C": 1.0},
             {"embedding_weight": 2.0, "classifier": "svc", "C": 1.0}]
    sel = clinc.select_config(splits["train"], splits["val"], candidates=cands, log=lambda *_: None)
    best, se = sel["best"], sel["standard_error"]
    first_ok = next(r for r in sel["rows"] if r["criterion"] >= best - se - 1e-12)
    assert sel["chosen"] == first_ok["config"]
    assert se == pytest.approx(np.sqrt(best * (1 - best) / len(splits["val"])))


# --------------------------------------------------------------------------- the official CLU client


def test_official_azure_clu_prediction_client_works_against_the_service(server):
    # azure-ai-language-conversations==1.1.0, pinned in intent_service/requirements-dev.txt (installed by make)
    from azure.ai.language.conversations import ConversationAnalysisClient
    from azure.core.credentials import AzureKeyCredential

    client = ConversationAnalysisClient(server.base, AzureKeyCredential("test-key-123"))
    with client:
        result = client.analyze_conversation(task={
            "kind": "Conversation",
            "analysisInput": {"conversationItem": {"id": "1", "participantId": "user-1",
                                                   "text": "주문번호 20261119-0042 배송 조회해 주세요"}},
            "parameters": {"projectName": "retail-bot", "deploymentName": "production",
                           "stringIndexType": "TextElement_V8"}})
    pred = result["result"]["prediction"]
    assert result["kind"] == "ConversationResult" and pred["projectKind"] == "Conversation"
    assert pred["topIntent"] == "OrderStatus" == pred["intents"][0]["category"]
    assert [e["category"] for e in pred["entities"]] == ["OrderNumber"]
    assert pred["entities"][0]["offset"] == 5 and pred["entities"][0]["length"] == 13
