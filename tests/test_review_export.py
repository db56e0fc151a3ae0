"""The review inbox's daily export (shared/review_export.py) and the timer function that runs it, on fakes."""

from __future__ import annotations

import datetime as dt
import json

from azure.functions.timer import TimerRequest
import pytest

from shared import bootstrap
from shared import review_export as rx
from shared.errors import TransientError
from shared.models import IntentScore
from shared.review import ReviewItem, decide
from shared.telemetry import Redactor
from tests.support.chain import fake_services
from tests.support.fakes import InMemoryBlobs, InMemoryReviewStore
from tests.support.samples import sample_values
from shared.settings import load_settings

DAY = dt.date(2026, 12, 2)
START, END = rx.day_bounds(DAY)
HOUR = 3_600_000
KEY = "k" * 32


def item(n: int, last_seen: int, *, text: str | None = "where is my order 1234567", mode: str = "off",
         first_seen: int | None = None) -> ReviewItem:
    return ReviewItem(id="r" + f"{n:040x}", language="en", text=text, pii_mode=mode, count=n + 1,  # type: ignore[arg-type]
                      first_seen_ms=first_seen or last_seen - HOUR, last_seen_ms=last_seen,
                      reasons={"fallback": n + 1}, top_intents=[IntentScore(category="OrderStatus",
                                                                            confidence_score=0.41)],
                      top_intent="OrderStatus", confidence_score=0.41, model_version="retail-20261201")


def put(store: InMemoryReviewStore, *items: ReviewItem) -> None:
    for it in items:
        store.update(it.id, lambda _old, it=it: it)


def deps(store: InMemoryReviewStore, blobs: InMemoryBlobs, mode: str = "off", **kw: object) -> rx.ExportDeps:
    return rx.ExportDeps(store, blobs, Redactor(mode, KEY), "review-exports", **kw)  # type: ignore[arg-type]


def lines(blobs: InMemoryBlobs, day: dt.date) -> list[dict]:
    raw = blobs.get("review-exports", rx.blob_name(day))
    assert raw is not None, f"no file for {day}"
    return [json.loads(x) for x in raw.decode("utf-8").splitlines()]


def at(day: dt.date, hour: int = 0, minute: int = 5) -> int:
    return rx.day_bounds(day)[0] + hour * HOUR + minute * 60_000


# --------------------------------------------------------------------------- which items, which days
def test_a_day_holds_the_open_items_last_seen_in_it_and_nothing_else():
    store, blobs = InMemoryReviewStore(), InMemoryBlobs()
    put(store, item(1, START), item(2, END - 1), item(3, START - 1), item(4, END), item(5, START + HOUR))
    decide(store, item(5, 0).id, "dismissed", "editor")
    done = rx.export_day(deps(store, blobs), DAY)
    got = lines(blobs, DAY)
    assert [g["id"] for g in got] == [item(1, 0).id, item(2, 0).id]  # oldest first; 3, 4 other days; 5 decided
    assert done == rx.DayExport(DAY, "2026/12/02.jsonl", 2)
    assert blobs.content_types[("review-exports", "2026/12/02.jsonl")].startswith("application/x-ndjson")


def test_each_line_is_a_versioned_record_with_an_empty_label():
    store, blobs = InMemoryReviewStore(), InMemoryBlobs()
    put(store, item(7, START + 2 * HOUR + 123, first_seen=START - 3 * rx.DAY_MS))
    rx.export_day(deps(store, blobs), DAY)
    (line,) = lines(blobs, DAY)
    assert list(line)[0] == "schema" and line["schema"] == "review-export@1"
    assert line == {"schema": "review-export@1", "id": item(7, 0).id, "day": "2026-12-02", "language": "en",
                    "pii_mode": "off", "text": "where is my order 1234567", "count": 8,
                    "first_seen": "2026-11-29T00:00:00.000Z", "last_seen": "2026-12-02T02:00:00.123Z",
                    "reasons": {"fallback": 8},
                    "top_intents": [{"category": "OrderStatus", "confidence_score": 0.41}],
                    "model_version": "retail-20261201", "label": ""}
    assert rx.ExportRecord.model_validate(line).id == item(7, 0).id  # the file reads back with its own model


def test_an_item_seen_again_later_moves_to_the_later_days_file():
    store, blobs = InMemoryReviewStore(), InMemoryBlobs()
    put(store, item(1, START + HOUR))
    rx.export_day(deps(store, blobs), DAY)
    put(store, item(1, END + HOUR))  # seen again the next day: its newer line supersedes
    rx.export_day(deps(store, blobs), DAY + dt.timedelta(days=1))
    rx.export_day(deps(store, blobs), DAY)
    assert lines(blobs, DAY) == []
    assert [x["id"] for x in lines(blobs, DAY + dt.timedelta(days=1))] == [item(1, 0).id]


@pytest.mark.parametrize("last, expected", [
    (None, ["2026-12-02"]),                                   # first run: yesterday
    (dt.date(2026, 12, 2), ["2026-12-02"]),                   # a re-run rewrites yesterday
    (dt.date(2026, 12, 1), ["2026-12-02"]),                   # the normal daily run
    (dt.date(2026, 11, 29), ["2026-11-30", "2026-12-01", "2026-12-02"]),  # host down for two days: caught up
    (dt.date(2026, 10, 1), [f"2026-11-{d}" for d in range(26, 31)] + ["2026-12-01", "2026-12-02"]),  # bounded: 7
    (dt.date(2026, 12, 3), ["2026-12-02"]),                   # a marker from the future (clock skew): yesterday
])
def test_days_to_export(last, expected):
    assert [d.isoformat() for d in rx.days_to_export(dt.date(2026, 12, 3), last, 7)] == expected


def test_a_missed_day_is_caught_up_and_the_marker_moves_to_the_last_complete_day():
    store, blobs = InMemoryReviewStore(), InMemoryBlobs()
    d1, d2, d3 = DAY - dt.timedelta(days=2), DAY - dt.timedelta(days=1), DAY
    put(store, item(1, at(d1, 10)), item(2, at(d2, 11)), item(3, at(d3, 12)))
    rx.run(deps(store, blobs), clock=lambda: at(d2, 0))  # the run after d1 ...
    assert [x["id"] for x in lines(blobs, d1)] == [item(1, 0).id]
    # ... then the host is down during the run after d2; the run after d3 (past due or not) writes d2 and d3
    result = rx.run(deps(store, blobs), past_due=True, clock=lambda: at(d3 + dt.timedelta(days=1), 0))
    assert [f.day for f in result.files] == [d2, d3] and result.caught_up == 1
    assert [x["id"] for x in lines(blobs, d2)] == [item(2, 0).id]
    assert [x["id"] for x in lines(blobs, d3)] == [item(3, 0).id]
    assert rx.read_marker(blobs, "review-exports") == d3


def test_a_rerun_writes_the_same_bytes_and_a_day_without_items_gets_an_empty_file():
    store, blobs = InMemoryReviewStore(), InMemoryBlobs()
    put(store, item(1, at(DAY, 9)), item(2, at(DAY, 9)))
    clock = lambda: at(DAY + dt.timedelta(days=1), 0, 5)  # noqa: E731
    rx.run(deps(store, blobs), clock=clock)
    first = blobs.get("review-exports", rx.blob_name(DAY))
    rx.run(deps(store, blobs), clock=clock)
    assert blobs.get("review-exports", rx.blob_name(DAY)) == first
    assert blobs.names("review-exports") == ["2026/12/02.jsonl", rx.MARKER]
    rx.run(deps(store, blobs), clock=lambda: at(DAY + dt.timedelta(days=2), 0, 5))
    assert blobs.get("review-exports", "2026/12/03.jsonl") == b""


def test_today_so_far_is_written_only_when_configured_and_does_not_move_the_marker():
    store, blobs = InMemoryReviewStore(), InMemoryBlobs()
    put(store, item(1, at(DAY, 9)))
    rx.run(deps(store, blobs, include_today=True), clock=lambda: at(DAY, 10))
    assert [x["id"] for x in lines(blobs, DAY)] == [item(1, 0).id]
    assert rx.read_marker(blobs, "review-exports") == DAY - dt.timedelta(days=1)
    rx.run(deps(store, blobs), clock=lambda: at(DAY + dt.timedelta(days=1), 0))  # rewritten complete next night
    assert rx.read_marker(blobs, "review-exports") == DAY


def test_a_failed_write_leaves_the_marker_so_the_next_run_writes_the_days_again():
    store, blobs = InMemoryReviewStore(), InMemoryBlobs()
    put(store, item(1, at(DAY, 9)))
    blobs.fail_with = TransientError("storage down")
    with pytest.raises(TransientError):
        rx.run(deps(store, blobs), clock=lambda: at(DAY + dt.timedelta(days=1), 0))
    blobs.fail_with = None
    assert rx.read_marker(blobs, "review-exports") is None
    rx.run(deps(store, blobs), clock=lambda: at(DAY + dt.timedelta(days=1), 0))
    assert len(lines(blobs, DAY)) == 1


def test_an_unreadable_marker_means_yesterday_only():
    blobs = InMemoryBlobs()
    blobs.put("review-exports", rx.MARKER, b"{not json")
    assert rx.read_marker(blobs, "review-exports") is None


# --------------------------------------------------------------------------- PII modes
def test_mask_mode_masks_text_even_of_items_captured_before_the_mode_changed():
    store, blobs = InMemoryReviewStore(), InMemoryBlobs()
    put(store, item(1, at(DAY, 9), text="order 20261119-0042 for ann@example.com"))
    rx.export_day(deps(store, blobs, "mask"), DAY)
    (line,) = lines(blobs, DAY)
    assert line["pii_mode"] == "mask"
    assert "0042" not in line["text"] and "ann@example.com" not in line["text"] and "<email>" in line["text"]


@pytest.mark.parametrize("current, captured, text", [("strict", "off", "where is my order"),
                                                      ("strict", "strict", None), ("off", "strict", None)])
def test_strict_mode_exports_no_text_at_all(current, captured, text):
    store, blobs = InMemoryReviewStore(), InMemoryBlobs()
    put(store, item(1, at(DAY, 9), text=text, mode=captured))
    rx.export_day(deps(store, blobs, current), DAY)
    raw = blobs.get("review-exports", rx.blob_name(DAY)) or b""
    (line,) = lines(blobs, DAY)
    assert "text" not in line and b"order" not in raw
    assert line["count"] == 2 and line["top_intents"][0]["category"] == "OrderStatus" and line["label"] == ""


# --------------------------------------------------------------------------- parsing a relabelled file
def test_parse_relabelled_lists_every_bad_line_with_its_number():
    good = rx.record_of(item(1, START), DAY, "off").model_copy(update={"label": "OrderStatus"}).line()
    raw = "\n".join([good, "", "{oops", "[1]", json.dumps({"schema": "review-export@2", "id": item(2, 0).id}),
                     json.dumps({"schema": "review-export@1", "id": "x1"}), good]).encode()
    parsed, errors = rx.parse_relabelled(raw)
    assert [(n, p.label) for n, p in parsed] == [(1, "OrderStatus")]
    assert [e.line for e in errors] == [3, 4, 5, 6, 7]
    assert "not JSON" in errors[0].reason and "not a JSON object" in errors[1].reason
    assert "schema" in errors[2].reason and "id" in errors[3].reason and "already on line 1" in errors[4].reason


@pytest.mark.parametrize("raw, reason", [(b"", "no lines"), (b"\xff\xfe{", "not UTF-8"),
                                         (b"{}\n" * (rx.MAX_IMPORT_LINES + 1), "at most"),
                                         (b" " * (rx.MAX_IMPORT_BYTES + 1), "larger than")])
def test_parse_relabelled_refuses_a_whole_file(raw, reason):
    parsed, errors = rx.parse_relabelled(raw)
    assert parsed == [] and len(errors) == 1 and errors[0].line == 0 and reason in errors[0].reason


# --------------------------------------------------------------------------- the timer function
def test_the_timer_function_runs_the_export_on_the_composition_root():
    config = load_settings({**sample_values(), "REVIEW_EXPORT_CONTAINER": "exports-test"})
    store, blobs = InMemoryReviewStore(), InMemoryBlobs()
    put(store, item(1, rx.day_bounds(dt.datetime.now(dt.timezone.utc).date() - dt.timedelta(days=1))[0] + HOUR))
    bootstrap.install(fake_services(config, review_store=store, blobs=blobs))
    try:
        from functions.review_export import review_export
        review_export.build().get_user_function()(TimerRequest(past_due=True))
    finally:
        bootstrap.install(None)
    names = blobs.names("exports-test")
    assert rx.MARKER in names and len(names) == 2
    assert json.loads(blobs.get("exports-test", names[0]) or b"")["id"] == item(1, 0).id
