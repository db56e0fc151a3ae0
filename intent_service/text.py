"""Text helpers: normalisation and index conversion between string index types.

CLU reports entity ``offset``/``length`` in one of three units, chosen by the
request's ``parameters.stringIndexType``:

* ``TextElement_V8`` (default): extended grapheme clusters (user-perceived
  characters, Unicode 8 rules and later).
* ``Utf16CodeUnit``: UTF-16 code units (what JavaScript/.NET string indices use).
* ``Utf8CodeUnit``: UTF-8 bytes.

Internally everything works on Python code-point indices; this module converts.
"""
from __future__ import annotations

import unicodedata
from typing import List, Tuple

import regex  # type: ignore[import-untyped]

STRING_INDEX_TYPES = ("TextElement_V8", "Utf16CodeUnit", "Utf8CodeUnit")
DEFAULT_STRING_INDEX_TYPE = "TextElement_V8"

_GRAPHEME = regex.compile(r"\X")
_SPACES = regex.compile(r"\s+")


def graphemes(text: str) -> List[str]:
    """Split ``text`` into extended grapheme clusters."""
    return _GRAPHEME.findall(text)


def normalize_for_model(text: str) -> str:
    """Normalisation applied before featurisation (training and serving alike).

    NFKC folds full-width forms and compatibility jamo; casefold lowercases
    Latin text (Hangul has no case); whitespace is collapsed.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return _SPACES.sub(" ", text).strip()


class IndexedText:
    """A text with its grapheme boundaries and a normalised matching view.

    ``norm`` is the concatenation of ``NFC(casefold(g))`` for every grapheme
    ``g`` of the original text, so each character of ``norm`` maps back to
    exactly one original grapheme. Matching happens on ``norm``; results are
    mapped back to original code-point spans that always fall on grapheme
    boundaries.
    """

    def __init__(self, text: str):
        self.text = text
        self.graphemes = graphemes(text)
        # code-point start of each grapheme, plus the end sentinel
        self.g_starts: List[int] = []
        pos = 0
        for g in self.graphemes:
            self.g_starts.append(pos)
            pos += len(g)
        self.g_starts.append(pos)
        norm_parts: List[str] = []
        self.norm_to_g: List[int] = []
        for gi, g in enumerate(self.graphemes):
            ng = unicodedata.normalize("NFC", g.casefold())
            norm_parts.append(ng)
            self.norm_to_g.extend([gi] * len(ng))
        self.norm = "".join(norm_parts)
        self.norm_to_g.append(len(self.graphemes))

    def norm_span_to_graphemes(self, start: int, end: int) -> Tuple[int, int]:
        """Map a [start, end) span of ``norm`` to a grapheme span (snapped outwards)."""
        g_start = self.norm_to_g[start]
        g_end = self.norm_to_g[end - 1] + 1 if end > start else g_start
        return g_start, g_end

    def grapheme_span_to_codepoints(self, g_start: int, g_end: int) -> Tuple[int, int]:
        return self.g_starts[g_start], self.g_starts[g_end]

    def convert(self, g_start: int, g_end: int, index_type: str) -> Tuple[int, int]:
        """Return (offset, length) of a grapheme span in the requested unit."""
        if index_type == "TextElement_V8":
            return g_start, g_end - g_start
        cp_start, cp_end = self.grapheme_span_to_codepoints(g_start, g_end)
        before, inside = self.text[:cp_start], self.text[cp_start:cp_end]
        if index_type == "Utf16CodeUnit":
            return len(before.encode("utf-16-le", "surrogatepass")) // 2, len(
                inside.encode("utf-16-le", "surrogatepass")) // 2
        if index_type == "Utf8CodeUnit":
            return (len(before.encode("utf-8", "surrogatepass")),
                    len(inside.encode("utf-8", "surrogatepass")))
        raise ValueError(f"unknown stringIndexType {index_type!r}")
