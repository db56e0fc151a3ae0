"""Importing a relabelled daily review export (``review-export@1`` JSONL, :mod:`shared.review_export`) into the
review inbox and the intent project.

The relabeller fills each line's ``label`` with an intent name of the project or ``dismiss`` (any case), or leaves
it empty. :func:`plan` decides what every line does, and the console applies the plan through the same authoring
path as the inbox's "assign" (one export -> add the utterances -> import) and marks the items decided.

**All or nothing.** Any invalid line (not JSON, another schema, a bad id, an unknown intent, the same item twice,
an intent for an item without text) refuses the whole file with every reason and its line number; nothing is
applied. Two cases are *not* errors, because the file was right when it was written and the inbox moved on since:
an item no longer in the inbox (erased, deleted) and an item already assigned or dismissed (someone decided it in
the console meanwhile). Those lines are skipped and listed in the summary; the newer decision stands, and an
erased customer's text never comes back from a file.

**What joins the project** is the text stored in the inbox for that item, never a text edited in the file (the
file's ``text`` is only there to read). In PII mode ``strict`` items have no text, so a line of such an item can
only be ``dismiss``; an intent there is an error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.review import ReviewItem
from shared.review_export import DISMISS, LineError, RelabelledLine


@dataclass(frozen=True)
class Planned:
    """One line that changes something: its number, the item, and the intent (None: dismiss)."""

    line: int
    item: ReviewItem
    intent: str | None


@dataclass
class ImportPlan:
    """What a relabelled file does: assignments, dismissals, skipped lines (with why), unlabelled lines, errors."""

    assign: list[Planned] = field(default_factory=list)
    dismiss: list[Planned] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    unlabelled: int = 0
    errors: list[LineError] = field(default_factory=list)

    def error_details(self) -> list[dict[str, Any]]:
        """The errors as the API answers them: ``[{"line": 3, "reason": "..."}]`` (line 0: the whole file)."""
        return [{"line": e.line, "reason": e.reason} for e in sorted(self.errors, key=lambda e: e.line)]


def _intent_error(label: str, intents: Iterable[str]) -> str:
    names = sorted(intents)
    shown = ", ".join(names[:30]) + (" ..." if len(names) > 30 else "")
    return f"label {label!r} is neither an intent of the project nor {DISMISS!r} (intents: {shown})"


def plan(lines: list[tuple[int, RelabelledLine]], items: Mapping[str, ReviewItem | None], intents: Iterable[str],
         errors: list[LineError] | None = None) -> ImportPlan:
    """Decide every parsed line (``items``: the stored item of each line's id, None when gone; ``intents``: the
    project's intent names; ``errors``: the parse errors so far, kept)."""
    known = set(intents)
    out = ImportPlan(errors=list(errors or []))
    for number, line in lines:
        label = line.label.strip()
        if not label:
            out.unlabelled += 1
            continue
        dismiss = label.casefold() == DISMISS
        if not dismiss and label not in known:
            out.errors.append(LineError(number, _intent_error(label, known)))
            continue
        item = items.get(line.id)
        if item is None:
            out.skipped.append({"line": number, "id": line.id, "reason": "no longer in the inbox (erased or deleted)"})
            continue
        if not dismiss and not item.text:
            out.errors.append(LineError(number, f"item {line.id} has no text (PII mode strict): it can only be "
                                                f"'{DISMISS}'"))
            continue
        if item.status != "open":
            who = f" by {item.decision.by}" if item.decision else ""
            out.skipped.append({"line": number, "id": line.id, "reason": f"already {item.status}{who}"})
            continue
        (out.dismiss if dismiss else out.assign).append(Planned(number, item, None if dismiss else label))
    return out


def add_utterances(project: dict[str, Any], assign: list[Planned], dataset: str
                   ) -> tuple[dict[str, str], list[LineError]]:
    """Add the stored text of every planned assignment to ``project`` (in place) as ``dataset``, as the inbox's
    "assign" does: a text already in the project is not added again (said so in its change). Returns each item's
    change in words and the lines whose text the project refuses (too long, empty)."""
    from console import project as pj

    changes: dict[str, str] = {}
    errors: list[LineError] = []
    for p in assign:
        try:
            changes[p.item.id] = pj.add_utterance(project, p.item.text or "", p.item.language, p.intent or "",
                                                  dataset)
        except pj.EditError as exc:
            if "already in the project" in str(exc):
                changes[p.item.id] = f"not added: {exc}"
            else:
                errors.append(LineError(p.line, f"item {p.item.id}: {exc}"))
    return changes, errors
