"""List and regex entities declared in the training data, CLU/LUIS style.

Entity definition file (JSON), modelled on the ``assets.entities`` section of
a CLU project export::

    {
      "entities": [
        {"category": "ProductCategory",
         "list": {"sublists": [
            {"listKey": "shoes",
             "synonyms": [{"language": "en", "values": ["shoes", "sneakers"]},
                          {"language": "ko", "values": ["신발", "운동화"]}]}]}},
        {"category": "OrderNumber",
         "regex": {"expressions": [
            {"regexKey": "dated", "language": "*", "regexPattern": "(?<!\\d)\\d{8}-\\d{4}(?!\\d)"}]}}
      ]
    }

Matching is done on a case-folded, NFC-normalised view of the text (see
``text.IndexedText``), so patterns and synonyms should be written in lower
case. Regex patterns use the ``regex`` package syntax (a superset of ``re``,
including variable-length look-behind). Matches from all categories compete:
longer matches win, then earlier ones; results never overlap.

Every entity is reported with ``confidenceScore`` 1.0 (they are exact
matches), and with ``extraInformation`` like CLU: ``ListKey`` (the canonical
value) for list entities, ``RegexKey`` for regex entities.
"""
from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import regex  # type: ignore[import-untyped]

from .text import IndexedText


class EntitySpecError(ValueError):
    pass


def _norm_value(value: str) -> str:
    return unicodedata.normalize("NFC", value.casefold()).strip()


def _is_latin_or_digit(ch: str) -> bool:
    return ch.isascii() and ch.isalnum()


@dataclass
class _Candidate:
    category: str
    g_start: int
    g_end: int
    extra: Dict[str, Any]
    order: int


@dataclass
class EntityExtractor:
    spec: Dict[str, Any]
    _list_patterns: List[tuple] = field(default_factory=list, repr=False)
    _regex_patterns: List[tuple] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        validate_spec(self.spec)
        for ent in self.spec.get("entities", []):
            cat = ent["category"]
            if "list" in ent:
                # synonym -> listKey; longest synonyms first so the alternation prefers them
                syn_to_key: Dict[str, str] = {}
                for sub in ent["list"]["sublists"]:
                    key = sub["listKey"]
                    for syn in [key] + [v for s in sub.get("synonyms", []) for v in s["values"]]:
                        n = _norm_value(syn)
                        if n:
                            syn_to_key.setdefault(n, key)
                for syn in sorted(syn_to_key, key=len, reverse=True):
                    pat = regex.escape(syn)
                    if _is_latin_or_digit(syn[0]):
                        pat = r"(?<![a-z0-9])" + pat
                    if _is_latin_or_digit(syn[-1]):
                        # tolerate English plurals ("bag" -> "bags", "dress" -> "dresses")
                        suffix = r"(?:e?s)?" if syn[-1].isalpha() else ""
                        pat = pat + suffix + r"(?![a-z0-9])"
                    self._list_patterns.append((cat, syn_to_key[syn], regex.compile(pat)))
            if "regex" in ent:
                for expr in ent["regex"]["expressions"]:
                    self._regex_patterns.append(
                        (cat, expr.get("regexKey", cat), expr["regexPattern"],
                         regex.compile(expr["regexPattern"], regex.IGNORECASE | regex.V0)))

    @property
    def categories(self) -> List[str]:
        return sorted({e["category"] for e in self.spec.get("entities", [])})

    def extract(self, text: str, string_index_type: str = "TextElement_V8",
                indexed: Optional[IndexedText] = None) -> List[Dict[str, Any]]:
        it = indexed or IndexedText(text)
        cands: List[_Candidate] = []
        order = 0
        for cat, key, pat, rx in self._regex_patterns:
            for m in rx.finditer(it.norm, overlapped=False):
                if m.end() > m.start():
                    gs, ge = it.norm_span_to_graphemes(m.start(), m.end())
                    cands.append(_Candidate(cat, gs, ge, {
                        "extraInformationKind": "RegexKey", "key": key, "regexPattern": pat}, order))
                    order += 1
        for cat, key, rx in self._list_patterns:
            for m in rx.finditer(it.norm):
                gs, ge = it.norm_span_to_graphemes(m.start(), m.end())
                cands.append(_Candidate(cat, gs, ge, {
                    "extraInformationKind": "ListKey", "key": key}, order))
                order += 1
        # longest first, then leftmost, then declaration order; drop overlaps
        cands.sort(key=lambda c: (-(c.g_end - c.g_start), c.g_start, c.order))
        taken: List[_Candidate] = []
        for c in cands:
            if all(c.g_end <= t.g_start or c.g_start >= t.g_end for t in taken):
                taken.append(c)
        taken.sort(key=lambda c: c.g_start)
        out = []
        for c in taken:
            cp_s, cp_e = it.grapheme_span_to_codepoints(c.g_start, c.g_end)
            offset, length = it.convert(c.g_start, c.g_end, string_index_type)
            out.append({
                "category": c.category,
                "text": text[cp_s:cp_e],
                "offset": offset,
                "length": length,
                "confidenceScore": 1.0,
                "extraInformation": [c.extra],
            })
        return out


def validate_spec(spec: Any) -> None:
    if not isinstance(spec, dict) or not isinstance(spec.get("entities", []), list):
        raise EntitySpecError("entity file must be a JSON object with an 'entities' list")
    seen = set()
    for i, ent in enumerate(spec.get("entities", [])):
        if not isinstance(ent, dict) or not isinstance(ent.get("category"), str) or not ent["category"]:
            raise EntitySpecError(f"entities[{i}]: 'category' (string) is required")
        cat = ent["category"]
        if cat in seen:
            raise EntitySpecError(f"entities[{i}]: duplicate category {cat!r}")
        seen.add(cat)
        if "list" not in ent and "regex" not in ent:
            raise EntitySpecError(f"entity {cat!r}: needs a 'list' or a 'regex' component")
        if "list" in ent:
            subs = ent["list"].get("sublists") if isinstance(ent["list"], dict) else None
            if not isinstance(subs, list) or not subs:
                raise EntitySpecError(f"entity {cat!r}: list.sublists must be a non-empty list")
            for sub in subs:
                if not isinstance(sub, dict) or not isinstance(sub.get("listKey"), str):
                    raise EntitySpecError(f"entity {cat!r}: every sublist needs a 'listKey'")
                for syn in sub.get("synonyms", []):
                    if not isinstance(syn, dict) or not isinstance(syn.get("values"), list):
                        raise EntitySpecError(f"entity {cat!r}: synonyms need a 'values' list")
        if "regex" in ent:
            exprs = ent["regex"].get("expressions") if isinstance(ent["regex"], dict) else None
            if not isinstance(exprs, list) or not exprs:
                raise EntitySpecError(f"entity {cat!r}: regex.expressions must be a non-empty list")
            for expr in exprs:
                if not isinstance(expr, dict) or not isinstance(expr.get("regexPattern"), str):
                    raise EntitySpecError(f"entity {cat!r}: every expression needs 'regexPattern'")
                try:
                    regex.compile(expr["regexPattern"])
                except regex.error as exc:
                    raise EntitySpecError(f"entity {cat!r}: bad regex {expr['regexPattern']!r}: {exc}") from exc


def load_spec(path: Path) -> Dict[str, Any]:
    with open(path, encoding="utf-8") as fh:
        spec = json.load(fh)
    validate_spec(spec)
    return spec
