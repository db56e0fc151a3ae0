"""The review inbox's cold path: a daily JSONL export for offline relabelling, and reading a relabelled file back.

**Export** (timer function ``review_export``, :func:`run`): each run writes one file per UTC day to Blob Storage,
``{REVIEW_EXPORT_CONTAINER}/YYYY/MM/DD.jsonl``, one :class:`ExportRecord` per line (UTF-8, ``\\n``-terminated,
ordered by last seen then id; an empty file for a day without items, so "exported, nothing that day" differs from
"not exported").

*Which items are "a day's items".* A review item is one normalised phrasing that the review stage keeps updating
(count, last seen) as long as customers write it, so it belongs to no single day. The file of day D holds the
**open** items whose ``last_seen`` falls in D (UTC, ``[00:00, 24:00)``) when the file is written: the phrasings
last seen that day, each with its cumulative count and first seen. An item seen again on a later day moves to that
day's file (with its new count), so a phrasing appears in the file of the last day it was seen, and the files
written after their day ended cover every open item once (as long as it is not seen again; then its newer line
supersedes the older one: the import works by item id, so an older line still applies to the same item).
Assigned and dismissed items are not exported: there is nothing left to label.

*Which days a run writes* (:func:`days_to_export`): every day after the last complete day exported (a marker blob,
:data:`MARKER`) up to yesterday, at most ``REVIEW_EXPORT_CATCH_UP_DAYS`` back, and always yesterday. So a missed
timer occurrence (``past_due``) or a host down for days is caught up by the next run, and a re-run overwrites the
same files with the same content (idempotent). With ``REVIEW_EXPORT_INCLUDE_TODAY`` the current day so far is
written too (rewritten by every later run; it does not move the marker).

*PII mode* (``TELEMETRY_PII_MODE``), as the inbox applies it: ``off`` exports the item's text as stored; ``mask``
the masked text (masked again at export, in case an item was captured while the mode was ``off``); ``strict`` no
text at all (the key is absent): only id, counts, dates, intents and model version. An item stored without text
(captured in ``strict``) never gets one back.

**Import** (console, :func:`parse_relabelled`): the relabeller fills ``label`` with an intent name or
``dismiss``; every line is validated (:class:`RelabelledLine`) and the errors are listed with their line numbers.
Applying the labels is the console's job (the same authoring path as the inbox's "assign").
"""

from __future__ import annotations

import datetime as dt
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from shared.models import IntentScore, now_ms
from shared.ports import BlobPort, ReviewStore
from shared.review import ReviewItem
from shared.telemetry import Redactor, redact_text

log = logging.getLogger(__name__)

#: The version tag of every exported line; a reader refuses another.
SCHEMA = "review-export@1"
#: The blob that remembers the last complete day exported (inside the export container).
MARKER = "_state/last-exported-day.json"
#: The ``label`` value that dismisses an item.
DISMISS = "dismiss"
#: The largest relabelled file the console reads: lines, and bytes (a day of a busy bot is far below either).
MAX_IMPORT_LINES = 5_000
MAX_IMPORT_BYTES = 5 * 1024 * 1024
DAY_MS = 86_400_000


class ExportRecord(BaseModel):
    """One line of an export file (``review-export@1``). Times are ISO 8601 UTC with milliseconds."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    schema_: Literal["review-export@1"] = Field(default="review-export@1", alias="schema")
    id: str = Field(description="the review item's id: what the import matches on")
    day: str = Field(description="the UTC day of the file, YYYY-MM-DD")
    language: Literal["ko", "en"]
    pii_mode: Literal["off", "mask", "strict"]
    text: str | None = Field(default=None, description="normalised phrasing's first text; absent in strict mode")
    count: int = Field(ge=0, description="captures of this phrasing so far (all days)")
    first_seen: str
    last_seen: str
    reasons: dict[str, int] = Field(default_factory=dict, description="fallback / low_confidence -> count")
    top_intents: list[IntentScore] = Field(default_factory=list, description="of the latest capture, best first")
    model_version: str = ""
    label: str = Field(default="", description="for the relabeller: an intent name, or 'dismiss'")

    def line(self) -> str:
        """The JSON line (no newline): ``schema`` first, ``text`` left out when None."""
        return json.dumps(self.model_dump(mode="json", by_alias=True, exclude_none=True), ensure_ascii=False,
                          separators=(",", ":"))


def iso_ms(epoch_ms: int) -> str:
    """``epoch_ms`` as ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    t = dt.datetime.fromtimestamp(epoch_ms / 1000, tz=dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def day_bounds(day: dt.date) -> tuple[int, int]:
    """The UTC day as epoch milliseconds ``[start, end)``."""
    start = int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.timezone.utc).timestamp() * 1000)
    return start, start + DAY_MS


def blob_name(day: dt.date) -> str:
    """``YYYY/MM/DD.jsonl``."""
    return f"{day:%Y/%m/%d}.jsonl"


def export_text(item: ReviewItem, mode: str) -> str | None:
    """The text an export may carry: none in ``strict`` (now or when captured), masked in ``mask``."""
    if item.text is None or mode == "strict" or item.pii_mode == "strict":
        return None
    return redact_text(item.text, "mask") if mode == "mask" else item.text


def record_of(item: ReviewItem, day: dt.date, mode: str) -> ExportRecord:
    """The export line of ``item`` in the file of ``day`` under PII ``mode``."""
    return ExportRecord(id=item.id, day=day.isoformat(), language=item.language, pii_mode=mode,  # type: ignore[arg-type]
                        text=export_text(item, mode), count=item.count, first_seen=iso_ms(item.first_seen_ms),
                        last_seen=iso_ms(item.last_seen_ms), reasons=dict(item.reasons),
                        top_intents=list(item.top_intents), model_version=item.model_version)


def render_day(items: list[ReviewItem], day: dt.date, mode: str) -> bytes:
    """The file of ``day``: one line per item, each ending with ``\\n`` (empty for no items)."""
    return "".join(record_of(i, day, mode).line() + "\n" for i in items).encode("utf-8")


@dataclass(frozen=True)
class ExportDeps:
    """What the export needs: where items are, where files go, the PII mode, the catch-up bound."""

    store: ReviewStore
    blobs: BlobPort
    redactor: Redactor
    container: str
    catch_up_days: int = 7
    include_today: bool = False


@dataclass(frozen=True)
class DayExport:
    """One file written: its day, blob name and number of lines."""

    day: dt.date
    blob: str
    items: int
    complete: bool = True


@dataclass(frozen=True)
class ExportRun:
    """What one run wrote, and whether it caught up missed days."""

    files: list[DayExport] = field(default_factory=list)
    caught_up: int = 0

    def summary(self) -> dict[str, Any]:
        return {"files": [{"day": f.day.isoformat(), "blob": f.blob, "items": f.items, "complete": f.complete}
                          for f in self.files], "caught_up_days": self.caught_up}


def days_to_export(today: dt.date, last_exported: dt.date | None, catch_up_days: int) -> list[dt.date]:
    """The complete days a run on ``today`` (UTC) writes, oldest first: those after ``last_exported`` up to
    yesterday, at most ``catch_up_days`` back; always at least yesterday (a re-run rewrites it)."""
    yesterday = today - dt.timedelta(days=1)
    first = yesterday - dt.timedelta(days=catch_up_days - 1)
    if last_exported is not None and last_exported >= first:
        first = min(last_exported + dt.timedelta(days=1), yesterday)
    elif last_exported is None:
        first = yesterday
    return [first + dt.timedelta(days=n) for n in range((yesterday - first).days + 1)]


def read_marker(blobs: BlobPort, container: str) -> dt.date | None:
    """The last complete day exported, or None (no marker yet, or one that does not parse: logged)."""
    raw = blobs.get(container, MARKER)
    if raw is None:
        return None
    try:
        return dt.date.fromisoformat(json.loads(raw)["last_exported_day"])
    except (ValueError, KeyError, TypeError):
        log.warning("review export: marker %s/%s does not parse; exporting yesterday only", container, MARKER)
        return None


def export_day(deps: ExportDeps, day: dt.date, *, complete: bool = True) -> DayExport:
    """Write the file of ``day`` (overwriting). Errors: ``TransientError``/``PermanentError`` of the stores."""
    start, end = day_bounds(day)
    items = deps.store.seen_between(start, end, "open")
    deps.blobs.put(deps.container, blob_name(day), render_day(items, day, deps.redactor.mode),
                   "application/x-ndjson; charset=utf-8")
    return DayExport(day, blob_name(day), len(items), complete)


def run(deps: ExportDeps, *, past_due: bool = False, clock: Callable[[], int] = now_ms) -> ExportRun:
    """One timer run: write the days :func:`days_to_export` gives (and today so far when configured), then move
    the marker to the last complete day. A failure leaves the marker where it was, so the next run (or the
    host's retry of a past-due occurrence) writes the same days again. ``past_due`` is only logged: the marker,
    not the timer, decides what is caught up."""
    today = dt.datetime.fromtimestamp(clock() / 1000, tz=dt.timezone.utc).date()
    last = read_marker(deps.blobs, deps.container)
    days = days_to_export(today, last, deps.catch_up_days)
    files = [export_day(deps, d) for d in days]
    deps.blobs.put(deps.container, MARKER, json.dumps({"last_exported_day": days[-1].isoformat(),
                                                       "written_at": iso_ms(clock())}).encode("utf-8"),
                   "application/json")
    if deps.include_today:
        files.append(export_day(deps, today, complete=False))
    result = ExportRun(files, caught_up=max(0, len(days) - 1))
    log.info("review export%s: %s", " (past due)" if past_due else "", result.summary())
    return result


# --------------------------------------------------------------------------- import (console)
class RelabelledLine(BaseModel):
    """One line of a relabelled export, as the import reads it: only ``schema``, ``id`` and ``label`` matter;
    the other fields of the export are accepted and ignored (the item's stored text is what joins the project,
    never a text edited in the file)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    schema_: Literal["review-export@1"] = Field(alias="schema")
    id: str = Field(pattern=r"^r[0-9a-f]{40}$")
    label: str = Field(default="", max_length=200)


@dataclass(frozen=True)
class LineError:
    """Why line ``line`` (1-based) of an uploaded file was refused."""

    line: int
    reason: str


def _describe(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'line'}: {e['msg']}" for e in exc.errors())


def _parse_line(number: int, text: str) -> tuple[RelabelledLine | None, LineError | None]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        return None, LineError(number, f"not JSON: {exc}")
    if not isinstance(value, dict):
        return None, LineError(number, "not a JSON object")
    try:
        return RelabelledLine.model_validate(value), None
    except ValidationError as exc:
        return None, LineError(number, _describe(exc))


def parse_relabelled(raw: bytes) -> tuple[list[tuple[int, RelabelledLine]], list[LineError]]:
    """The lines of an uploaded file with their 1-based numbers, and every line's error (blank lines skipped).

    Refused as a whole (one error, line 0): not UTF-8, larger than :data:`MAX_IMPORT_BYTES` or
    :data:`MAX_IMPORT_LINES`, or no line at all. A second line of the same item id is an error on that line."""
    if len(raw) > MAX_IMPORT_BYTES:
        return [], [LineError(0, f"the file is larger than {MAX_IMPORT_BYTES} bytes")]
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return [], [LineError(0, f"the file is not UTF-8: {exc.reason} at byte {exc.start}")]
    lines = [(n, t) for n, t in enumerate(text.splitlines(), start=1) if t.strip()]
    if not lines:
        return [], [LineError(0, "the file has no lines")]
    if len(lines) > MAX_IMPORT_LINES:
        return [], [LineError(0, f"the file has {len(lines)} lines; at most {MAX_IMPORT_LINES} per import")]
    parsed: list[tuple[int, RelabelledLine]] = []
    errors: list[LineError] = []
    seen: dict[str, int] = {}
    for number, t in lines:
        line, error = _parse_line(number, t)
        if error is not None:
            errors.append(error)
        elif line is not None and line.id in seen:
            errors.append(LineError(number, f"item {line.id} is already on line {seen[line.id]}"))
        elif line is not None:
            seen[line.id] = number
            parsed.append((number, line))
    return parsed, errors
