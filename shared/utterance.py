"""What part of a customer's message is sent to the intent service.

Azure CLU (and the project's intent service, which follows it) accepts at most 1,000 characters per
conversation item (``../shared/reference/clu.md``); the webhook intake accepts up to 4,000
(:data:`shared.models.MAX_UTTERANCE_CHARS`). A longer message is not refused: the intent service gets an
**excerpt** built by this rule, and every later stage keeps the full text.

Rule (:func:`intent_excerpt`), with ``limit`` = ``INTENT_MAX_TEXT_CHARS`` (default 1,000 code points,
which never exceeds 1,000 text elements):

1. Whitespace runs (line breaks, indentation, repeated spaces) become one space. If the result fits in
   ``limit``, it is sent whole (as before: short and medium messages are classified as written).
2. Otherwise the excerpt is the message's **first sentence** (at most :data:`HEAD_CHARS`) and its **last
   sentences** (as many whole ones as fit in :data:`TAIL_CHARS`, at least the last one, cut at a word
   boundary if it alone is longer), joined by ``" … "``. Sentences end at ``. ! ? 。 ！ ？`` followed by a
   space; a text without any is treated as one sentence (its beginning and its end are taken).

Why: customers open with what they want or close with the question ("... so where is my order
20261119-0042?"); the middle of a 1,000-4,000 character message is mostly the story between them. The
intent model is trained on utterances of one or two sentences, and a classifier fed the whole wall of
text sees the question diluted by the story (measured on the retail model: a 1,100-character English
complaint ending in "where is my order ...?" was classified HumanHandoff 0.40 from its first 1,000
characters, OrderStatus 0.87 from its first and last sentences). Entities are found in the excerpt only:
an order number in the middle of a long story is not seen (the bot then asks for it).

Entity offsets returned by the intent service refer to the excerpt; handlers use the entities' text and
list keys, never offsets into the full text.
"""

from __future__ import annotations

import re

#: Joins the beginning and the end of a long message in its excerpt.
ELLIPSIS = " … "
#: Longest opening part of a long message's excerpt, characters.
HEAD_CHARS = 200
#: Longest closing part of a long message's excerpt, characters.
TAIL_CHARS = 300
#: How far back (characters) a cut looks for a word boundary.
BOUNDARY_WINDOW = 40

_WHITESPACE = re.compile(r"\s+")
_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+")
_BOUNDARY = re.compile(r"[\s.,!?;:。！？、]")


def intent_excerpt(text: str, limit: int) -> str:
    """The text to classify for ``text``: at most ``limit`` code points (``limit`` >= 20), see module docstring."""
    flat = _WHITESPACE.sub(" ", text).strip()
    if len(flat) <= limit:
        return flat
    sentences = _SENTENCE_END.split(flat)
    budget = limit - len(ELLIPSIS)
    head = _cut_end(sentences[0][:min(HEAD_CHARS, budget // 2)])
    tail_budget = min(TAIL_CHARS, budget - len(head))
    tail: list[str] = []
    for sentence in reversed(sentences[1:]):
        if len(" ".join([sentence, *tail])) > tail_budget:
            break
        tail.insert(0, sentence)
    closing = " ".join(tail) if tail else _cut_start(sentences[-1][-tail_budget:])
    return head + ELLIPSIS + closing


def _cut_end(piece: str) -> str:
    """``piece`` without a trailing partial word (cut at the last boundary in the final window)."""
    window = piece[-BOUNDARY_WINDOW:]
    last = max((m.end() for m in _BOUNDARY.finditer(window)), default=0)
    return (piece[:len(piece) - len(window) + last] if last else piece).rstrip()


def _cut_start(piece: str) -> str:
    """``piece`` without a leading partial word (cut at the first boundary in the first window)."""
    m = _BOUNDARY.search(piece[:BOUNDARY_WINDOW])
    return (piece[m.end():] if m else piece).lstrip()
