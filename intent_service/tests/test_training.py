"""Training, evaluation, data formats and the CLINC150 loader on small data."""
import csv
import json
import re

from pathlib import Path

import pytest

from intent_service.cli import main
from intent_service.data import DataError, load_clinc150, clinc150_path, load_dataset
from intent_service.entities import EntityExtractor, EntitySpecError
from intent_service.model import load_model

RETAIL = Path(__file__).resolve().parents[1] / "data" / "retail"


def split_retail(tmp_path):
    """Every 4th retail utterance is held out; the entity file goes with the training set."""
    rows = []
    for f in sorted(RETAIL.glob("*.csv")):
        with open(f, encoding="utf-8") as fh:
            rows += list(csv.DictReader(fh))
    train, test = tmp_path / "train", tmp_path / "test"
    train.mkdir()
    test.mkdir()
    with open(train / "utterances.csv", "w", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "intent"])
        w.writerows([r["text"], r["intent"]] for i, r in enumerate(rows) if i % 4)
    with open(test / "utterances.jsonl", "w", encoding="utf-8") as fh:
        for i, r in enumerate(rows):
            if i % 4 == 0:
                fh.write(json.dumps({"text": r["text"], "intent": r["intent"]}, ensure_ascii=False) + "\n")
    (train / "entities.json").write_text((RETAIL / "entities.json").read_text(encoding="utf-8"),
                                         encoding="utf-8")
    return train, test / "utterances.jsonl"


def test_train_and_evaluate_cli(tmp_path, capsys):
    train, test = split_retail(tmp_path)
    out = tmp_path / "m.skops"
    assert main(["train", "--data", str(train), "--out", str(out), "--version", "t-1"]) == 0
    model = load_model(str(out))
    assert model.version == "t-1" and len(model.data_sha256) == 64
    assert set(model.extractor.categories) == {"OrderNumber", "PhoneNumber", "Date",
                                               "ProductCategory", "StoreName"}
    capsys.readouterr()
    report = tmp_path / "fig.json"
    assert main(["evaluate", "--model", str(out), "--data", str(test), "--json", str(report)]) == 0
    text = capsys.readouterr().out
    acc = float(re.search(r"in-scope accuracy: ([\d.]+)%", text).group(1))
    rec = float(re.search(r"out-of-scope recall: ([\d.]+)%", text).group(1))
    assert "confusion summary" in text
    fig = json.loads(report.read_text())
    assert fig["n"] == fig["n_in_scope"] + fig["n_oos"] > 100
    # held-out data the model never saw: a real classifier, not a lookup table
    assert acc >= 75.0 and rec >= 50.0, text


def test_data_hash_changes_with_data(tmp_path):
    a = tmp_path / "a.csv"
    a.write_text("text,intent\nhi,Greeting\nbye,ThanksGoodbye\n", encoding="utf-8")
    h1 = load_dataset(a).sha256
    a.write_text("text,intent\nhi,Greeting\nbye bye,ThanksGoodbye\n", encoding="utf-8")
    assert load_dataset(a).sha256 != h1


def test_data_format_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("utterance,label\nhi,Greeting\n", encoding="utf-8")
    with pytest.raises(DataError, match="text"):
        load_dataset(bad)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "hi"}\n', encoding="utf-8")
    with pytest.raises(DataError, match="bad.jsonl:1"):
        load_dataset(bad)
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"text": "what is love", "intent": "oos"}\n', encoding="utf-8")
    assert load_dataset(ok).intents == ["None"]
    with pytest.raises(EntitySpecError):
        EntityExtractor({"entities": [{"category": "X", "regex": {"expressions": [{"regexPattern": "("}]}}]})
    with pytest.raises(EntitySpecError):
        EntityExtractor({"entities": [{"category": "X"}]})


def test_entities_on_nfd_korean_and_overlaps():
    import unicodedata

    spec = json.loads((RETAIL / "entities.json").read_text(encoding="utf-8"))
    x = EntityExtractor(spec)
    nfd = unicodedata.normalize("NFD", "운동화 주문번호 20261119-0042")  # decomposed jamo
    ents = x.extract(nfd)
    assert [(e["category"], e["offset"], e["length"]) for e in ents] == [
        ("ProductCategory", 0, 3), ("OrderNumber", 9, 13)]
    assert ents[0]["text"] == nfd[:len(nfd.split(" ")[0])]
    # a phone number is not also an order number or a date; no overlapping spans
    ents = x.extract("call 010-1234-5678 about order 123456789")
    assert [(e["category"], e["text"]) for e in ents] == [("PhoneNumber", "010-1234-5678"),
                                                          ("OrderNumber", "123456789")]
    assert x.extract("파티 드레스") == [x.extract("파티 드레스")[0]]  # no "티" false positive


def test_clinc150_loader_and_export(tmp_path, monkeypatch):
    """CLINC150 is shipped in the repository: the default needs no argument and no machine path."""
    monkeypatch.delenv("CLINC150_DIR", raising=False)
    shipped = RETAIL.parent / "clinc150"
    assert clinc150_path() == shipped / "data_full.json" and clinc150_path().is_file()
    assert "CC BY 3.0" in (shipped / "README.md").read_text(encoding="utf-8")
    assert "creativecommons.org/licenses/by/3.0" in (shipped / "README.md").read_text(encoding="utf-8")
    splits, sha = load_clinc150()
    assert sha == "36923c3705a59e08fe9c3883d8bc2dd966ef93e22cb78ac41171782a698d56e0"
    assert len(sha) == 64
    assert len(splits["train"]) == 15000 + 100
    assert len(splits["val"]) == 3000 + 100 and len(splits["test"]) == 4500 + 1000
    assert splits["test"].intents.count("None") == 1000
    assert main(["clinc150", "--export", str(tmp_path)]) == 0
    assert sum(1 for _ in open(tmp_path / "test.jsonl", encoding="utf-8")) == 5500

