"""Training data: utterance files (CSV or JSONL), the entity file, CLINC150.

Utterance files
    * CSV (UTF-8, header row) with at least the columns ``text`` and ``intent``;
      other columns (e.g. ``language``) are ignored.
    * JSONL: one object per line with ``text`` and ``intent`` keys.
    The intent ``None`` marks out-of-scope examples (``oos`` is accepted as a
    synonym and mapped to ``None``).

A data directory holds any number of ``*.csv``/``*.jsonl`` utterance files and
an optional ``entities.json`` (see ``entities.py`` for its format).
"""
from __future__ import annotations

import csv
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .entities import load_spec

NONE_ALIASES = {"oos", "none", "out_of_scope", "outofscope"}
#: CLINC150 Full as shipped in this repository (CC BY 3.0; see data/clinc150/README.md)
DEFAULT_CLINC150 = Path(__file__).resolve().parent / "data" / "clinc150"


class DataError(ValueError):
    pass


@dataclass
class Dataset:
    texts: List[str]
    intents: List[str]
    files: List[Path] = field(default_factory=list)
    entity_spec: Dict = field(default_factory=lambda: {"entities": []})
    sha256: str = ""

    def __len__(self) -> int:
        return len(self.texts)


def _canonical_intent(intent: str) -> str:
    intent = intent.strip()
    return "None" if intent.lower() in NONE_ALIASES else intent


def _read_csv(path: Path) -> List[Tuple[str, str]]:
    rows = []
    with open(path, encoding="utf-8-sig", newline="") as fh:
        reader = csv.DictReader(fh)
        if not reader.fieldnames or "text" not in reader.fieldnames or "intent" not in reader.fieldnames:
            raise DataError(f"{path}: CSV needs a header with 'text' and 'intent' columns")
        for n, row in enumerate(reader, start=2):
            text, intent = (row.get("text") or "").strip(), (row.get("intent") or "").strip()
            if not text and not intent:
                continue
            if not text or not intent:
                raise DataError(f"{path}:{n}: empty text or intent")
            rows.append((text, _canonical_intent(intent)))
    return rows


def _read_jsonl(path: Path) -> List[Tuple[str, str]]:
    rows = []
    with open(path, encoding="utf-8") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                text, intent = str(obj["text"]).strip(), str(obj["intent"]).strip()
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(f"{path}:{n}: expected a JSON object with text and intent ({exc})") from exc
            if not text or not intent:
                raise DataError(f"{path}:{n}: empty text or intent")
            rows.append((text, _canonical_intent(intent)))
    return rows


def _hash_files(files: Sequence[Path]) -> str:
    h = hashlib.sha256()
    for f in sorted(files, key=lambda p: p.name):
        h.update(f.name.encode("utf-8") + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()


def utterance_files(data: Path) -> List[Path]:
    if data.is_dir():
        files = sorted(p for p in data.iterdir()
                       if p.suffix.lower() in (".csv", ".jsonl") and p.is_file())
        if not files:
            raise DataError(f"{data}: no .csv or .jsonl utterance files")
        return files
    if data.is_file():
        return [data]
    raise DataError(f"{data}: no such file or directory")


def load_dataset(data: str | os.PathLike, entities: Optional[str | os.PathLike] = None) -> Dataset:
    """Load utterances from a file or directory, plus the entity definitions.

    ``entities`` defaults to ``entities.json`` inside the data directory (or
    beside the data file) when present.
    """
    data = Path(data)
    files = utterance_files(data)
    rows: List[Tuple[str, str]] = []
    for f in files:
        rows.extend(_read_jsonl(f) if f.suffix.lower() == ".jsonl" else _read_csv(f))
    if not rows:
        raise DataError(f"{data}: no utterances")
    ent_path = Path(entities) if entities else (data if data.is_dir() else data.parent) / "entities.json"
    spec: Dict[str, Any] = {"entities": []}
    hashed = list(files)
    if ent_path.is_file():
        spec = load_spec(ent_path)
        hashed.append(ent_path)
    elif entities:
        raise DataError(f"{ent_path}: entity file not found")
    return Dataset(texts=[r[0] for r in rows], intents=[r[1] for r in rows], files=hashed,
                   entity_spec=spec, sha256=_hash_files(hashed))


# --------------------------------------------------------------------------- CLINC150


def clinc150_path(path: Optional[str] = None) -> Path:
    p = Path(path or os.environ.get("CLINC150_DIR", str(DEFAULT_CLINC150)))
    return p / "data_full.json" if p.is_dir() else p


def load_clinc150(path: Optional[str] = None) -> Tuple[Dict[str, Dataset], str]:
    """CLINC150 Full as datasets: ``train`` (train + oos_train), ``val`` (val +
    oos_val), ``test`` (test + oos_test); the label ``oos`` becomes ``None``.

    Larson et al., "An Evaluation Dataset for Intent Classification and
    Out-of-Scope Prediction", EMNLP-IJCNLP 2019 (CC BY 3.0).
    """
    f = clinc150_path(path)
    if not f.is_file():
        raise DataError(f"CLINC150 file not found: {f} (use --clinc-dir)")
    raw = f.read_bytes()
    d = json.loads(raw)
    sha = hashlib.sha256(raw).hexdigest()
    out = {}
    for split in ("train", "val", "test"):
        pairs = list(d[split]) + list(d["oos_" + split])
        out[split] = Dataset(texts=[t for t, _ in pairs],
                             intents=[_canonical_intent(i) for _, i in pairs],
                             files=[f], sha256=sha)
    return out, sha


def export_clinc150(out_dir: str, path: Optional[str] = None) -> List[Path]:
    """Convert CLINC150 to this project's JSONL format (train/val/test.jsonl)."""
    splits, _ = load_clinc150(path)
    os.makedirs(out_dir, exist_ok=True)
    written = []
    for name, ds in splits.items():
        p = Path(out_dir) / f"{name}.jsonl"
        with open(p, "w", encoding="utf-8") as fh:
            for t, i in zip(ds.texts, ds.intents, strict=False):
                fh.write(json.dumps({"text": t, "intent": i}, ensure_ascii=False) + "\n")
        written.append(p)
    return written
