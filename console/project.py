"""Edits of a CLU project file (the exported JSON; offsets in UTF-16 code units), as pure functions.

CLU's authoring API has no per-utterance calls: the console exports the project, applies one of these edits and
imports the result. Each edit returns a sentence saying what it changed (shown to the user and written to the
audit log) or raises :class:`EditError` with the reason.

Utterances have no id in the file: the console names one by :func:`utterance_key` (its language and text), which
is also why two utterances with the same text and language are refused.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

LANGUAGES = ("ko", "en")
DATASETS = ("Train", "Test")
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,49}$")
MAX_TEXT = 500


class EditError(ValueError):
    """An edit that cannot be applied; the message says why."""


def utf16_len(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


def utf16_offset(text: str, index: int) -> int:
    """The UTF-16 offset of Python string index ``index``."""
    return utf16_len(text[:index])


def python_index(text: str, offset: int) -> int:
    """The Python string index of UTF-16 offset ``offset``."""
    n = 0
    for i, ch in enumerate(text):
        if n >= offset:
            return i
        n += 2 if ord(ch) > 0xFFFF else 1
    return len(text)


def utterance_key(u: dict[str, Any]) -> str:
    raw = f"{u.get('language') or ''}\n{u['text']}".encode("utf-8")
    return hashlib.sha256(raw).hexdigest()[:12]


def assets(project: dict[str, Any]) -> dict[str, Any]:
    a = project.setdefault("assets", {})
    a.setdefault("projectKind", "Conversation")
    a.setdefault("intents", [])
    a.setdefault("entities", [])
    a.setdefault("utterances", [])
    return a


def intents(project: dict[str, Any]) -> list[str]:
    return [i["category"] for i in assets(project)["intents"]]


def entity_categories(project: dict[str, Any]) -> list[str]:
    return [e["category"] for e in assets(project)["entities"]]


@dataclass
class UtteranceView:
    key: str
    text: str
    language: str
    intent: str
    dataset: str
    entities: list[dict[str, Any]] = field(default_factory=list)

    def segments(self) -> list[tuple[str, str | None, int | None]]:
        """The text cut into (piece, entity category or None, label index or None), for highlighting."""
        spans = sorted(((python_index(self.text, e["offset"]), python_index(self.text, e["offset"] + e["length"]),
                         e["category"], i) for i, e in enumerate(self.entities)), key=lambda s: s[0])
        out: list[tuple[str, str | None, int | None]] = []
        pos = 0
        for start, end, cat, i in spans:
            if start < pos:
                continue  # overlapping labels: show the first
            if start > pos:
                out.append((self.text[pos:start], None, None))
            out.append((self.text[start:end], cat, i))
            pos = end
        if pos < len(self.text):
            out.append((self.text[pos:], None, None))
        return out


def view(u: dict[str, Any]) -> UtteranceView:
    return UtteranceView(utterance_key(u), u["text"], u.get("language") or "", u["intent"], u.get("dataset") or "Train",
                         list(u.get("entities") or []))


def search(project: dict[str, Any], q: str = "", intent: str = "", language: str = "", dataset: str = "",
           entity: str = "") -> list[UtteranceView]:
    q = q.strip().casefold()
    out = []
    for u in assets(project)["utterances"]:
        if q and q not in u["text"].casefold():
            continue
        if intent and u["intent"] != intent:
            continue
        if language and (u.get("language") or "") != language:
            continue
        if dataset and (u.get("dataset") or "Train") != dataset:
            continue
        if entity and not any(e["category"] == entity for e in u.get("entities") or []):
            continue
        out.append(view(u))
    return out


def summary(project: dict[str, Any]) -> list[dict[str, Any]]:
    """Per intent: utterance counts by language and dataset."""
    counts: Counter[tuple[str, str, str]] = Counter()
    for u in assets(project)["utterances"]:
        counts[(u["intent"], u.get("language") or "", u.get("dataset") or "Train")] += 1
    return [{"intent": name, "total": sum(v for k, v in counts.items() if k[0] == name),
             **{f"{lang}_{ds}": counts[(name, lang, ds)] for lang in LANGUAGES for ds in DATASETS}}
            for name in intents(project)]


def _find(project: dict[str, Any], key: str) -> dict[str, Any]:
    for u in assets(project)["utterances"]:
        if utterance_key(u) == key:
            return u
    raise EditError(f"no utterance {key} in the project (it was changed meanwhile? reload the page)")


def _check_text(text: str) -> str:
    text = text.strip()
    if not text:
        raise EditError("the text is empty")
    if len(text) > MAX_TEXT:
        raise EditError(f"the text is longer than {MAX_TEXT} characters")
    return text


def _check(project: dict[str, Any], language: str, intent: str, dataset: str) -> None:
    if language not in LANGUAGES:
        raise EditError(f"language must be one of {list(LANGUAGES)}, got {language!r}")
    if intent not in intents(project):
        raise EditError(f"unknown intent {intent!r}; the project has {intents(project)}")
    if dataset not in DATASETS:
        raise EditError(f"dataset must be Train or Test, got {dataset!r}")


def add_utterance(project: dict[str, Any], text: str, language: str, intent: str, dataset: str = "Train") -> str:
    text = _check_text(text)
    _check(project, language, intent, dataset)
    new = {"text": text, "language": language, "intent": intent, "dataset": dataset, "entities": []}
    for u in assets(project)["utterances"]:
        if utterance_key(u) == utterance_key(new):
            raise EditError(f"{text!r} ({language}) is already in the project, as {u['intent']} ({u.get('dataset')})")
    assets(project)["utterances"].append(new)
    return f"added {text!r} ({language}) to {intent} as {dataset}"


def edit_utterance(project: dict[str, Any], key: str, *, text: str | None = None, language: str | None = None,
                   intent: str | None = None, dataset: str | None = None) -> str:
    u = _find(project, key)
    new_text = _check_text(text) if text is not None else u["text"]
    new = {**u, "text": new_text, "language": language or u.get("language"), "intent": intent or u["intent"],
           "dataset": dataset or u.get("dataset") or "Train"}
    _check(project, new["language"], new["intent"], new["dataset"])
    if utterance_key(new) != key and any(utterance_key(o) == utterance_key(new) for o in assets(project)["utterances"]):
        raise EditError(f"{new_text!r} ({new['language']}) is already in the project")
    changes = [f"{k} {u.get(k)!r} -> {new[k]!r}" for k in ("text", "language", "intent", "dataset")
               if u.get(k) != new[k]]
    if new_text != u["text"]:  # keep the labels whose text is still there
        kept, dropped = [], []
        for e in u.get("entities") or []:
            start = python_index(u["text"], e["offset"])
            piece = u["text"][start:python_index(u["text"], e["offset"] + e["length"])]
            at = new_text.find(piece)
            if at >= 0:
                kept.append({**e, "offset": utf16_offset(new_text, at), "length": utf16_len(piece)})
            else:
                dropped.append(e["category"])
        new["entities"] = kept
        if dropped:
            changes.append(f"dropped label(s) {dropped} (their text is gone)")
    u.clear()
    u.update(new)
    return "edited utterance: " + ("; ".join(changes) or "nothing changed")


def delete_utterance(project: dict[str, Any], key: str) -> str:
    u = _find(project, key)
    assets(project)["utterances"].remove(u)
    return f"deleted {u['text']!r} ({u.get('language')}, {u['intent']})"


def label_entity(project: dict[str, Any], key: str, category: str, span: str, occurrence: int = 1) -> str:
    """Label the ``occurrence``-th appearance of ``span`` in the utterance as ``category``."""
    u = _find(project, key)
    if category not in entity_categories(project):
        raise EditError(f"unknown entity {category!r}; the project has {entity_categories(project)}")
    if not span:
        raise EditError("select the words to label")
    at = -1
    for _ in range(max(1, occurrence)):
        at = u["text"].find(span, at + 1)
        if at < 0:
            raise EditError(f"{span!r} is not in the utterance {u['text']!r}")
    offset, length = utf16_offset(u["text"], at), utf16_len(span)
    label = {"category": category, "offset": offset, "length": length}
    for e in u.get("entities") or []:
        if e["offset"] < offset + length and offset < e["offset"] + e["length"]:
            raise EditError(f"{span!r} overlaps the {e['category']} label; remove it first")
    u.setdefault("entities", []).append(label)
    u["entities"].sort(key=lambda e: e["offset"])
    return f"labelled {span!r} as {category} in {u['text']!r}"


def unlabel_entity(project: dict[str, Any], key: str, index: int) -> str:
    u = _find(project, key)
    labels = u.get("entities") or []
    if not 0 <= index < len(labels):
        raise EditError(f"the utterance has no label #{index}")
    e = labels.pop(index)
    piece = u["text"][python_index(u["text"], e["offset"]):python_index(u["text"], e["offset"] + e["length"])]
    return f"removed the {e['category']} label of {piece!r}"


def add_intent(project: dict[str, Any], name: str) -> str:
    name = name.strip()
    if not NAME.fullmatch(name):
        raise EditError("an intent name has 1-50 letters, digits, '_', '-' or '.', starting with a letter or digit")
    if name in intents(project):
        raise EditError(f"the intent {name!r} exists")
    assets(project)["intents"].append({"category": name})
    return f"added intent {name}"


def delete_intent(project: dict[str, Any], name: str) -> str:
    if name not in intents(project):
        raise EditError(f"no intent {name!r}")
    if name == "None":
        raise EditError("'None' is CLU's out-of-scope intent; it cannot be deleted")
    used = sum(1 for u in assets(project)["utterances"] if u["intent"] == name)
    if used:
        raise EditError(f"{used} utterance(s) use {name}: move or delete them first")
    assets(project)["intents"] = [i for i in assets(project)["intents"] if i["category"] != name]
    return f"deleted intent {name}"


def add_entity(project: dict[str, Any], name: str) -> str:
    name = name.strip()
    if not NAME.fullmatch(name):
        raise EditError("an entity name has 1-50 letters, digits, '_', '-' or '.', starting with a letter or digit")
    if name in entity_categories(project):
        raise EditError(f"the entity {name!r} exists")
    assets(project)["entities"].append({"category": name, "compositionSetting": "combineComponents", "prebuilts": [],
                                        "requiredComponents": []})
    return f"added entity {name} (learned from labels)"


def delete_entity(project: dict[str, Any], name: str) -> str:
    if name not in entity_categories(project):
        raise EditError(f"no entity {name!r}")
    labelled = sum(1 for u in assets(project)["utterances"] for e in u.get("entities") or [] if e["category"] == name)
    if labelled:
        raise EditError(f"{labelled} label(s) use {name}: remove them first")
    assets(project)["entities"] = [e for e in assets(project)["entities"] if e["category"] != name]
    return f"deleted entity {name}"


def entity_view(project: dict[str, Any]) -> list[dict[str, Any]]:
    """Each entity: its kinds (learned, list, regex), list keys with synonyms, regex keys, label count."""
    labels = Counter(e["category"] for u in assets(project)["utterances"] for e in u.get("entities") or [])
    out = []
    for e in assets(project)["entities"]:
        sublists = (e.get("list") or {}).get("sublists") or []
        regex = (e.get("regex") or {}).get("expressions") or []
        out.append({"category": e["category"], "labels": labels[e["category"]],
                    "kinds": ["learned"] + (["list"] if sublists else []) + (["regex"] if regex else []),
                    "list": [{"key": s.get("listKey"), "synonyms": "; ".join(
                        f"{syn.get('language')}: {', '.join(syn.get('values') or [])}" for syn in s.get("synonyms") or [])}
                        for s in sublists],
                    "regex": [r.get("regexKey") or r.get("regexPattern") for r in regex]})
    return out


def validated_upload(data: Any) -> dict[str, Any]:
    """A project file someone uploads: the shape the import needs (the service checks the rest)."""
    if not isinstance(data, dict) or not isinstance(data.get("assets"), dict):
        raise EditError("not a CLU project file: expected an object with 'assets' (export one to see the format)")
    if data.get("projectFileVersion") is None or not isinstance(data.get("metadata"), dict):
        raise EditError("not a CLU project file: 'projectFileVersion' and 'metadata' are required")
    return copy.deepcopy(data)
