"""The review page's cold path: downloading a day's export and importing a relabelled file (editor role, CSRF,
audit, every line validated with its reason, nothing applied when one line is invalid), on the console's API with
in-memory stores and the real intent service's authoring API (``conftest.authoring_service``)."""

from __future__ import annotations

import datetime as dt
import json
import uuid

from starlette.testclient import TestClient

from console.app import create_app
from console.tests.conftest import make_admin, make_console, sign_in
from shared import review_export as rx
from shared.models import ReviewCapture, RoutedMessage
from shared.review import ReviewDeps, decide, record
from shared.telemetry import Redactor
from tests.support.messages import inbound

DAY = dt.date(2026, 12, 2)


def error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert body["code"] == code, body
    return body


def capture(text: str, message_id: int) -> ReviewCapture:
    routed = RoutedMessage.following(inbound(text, message_id, user="u-1"), route="fallback", text=text,
                                     language="en", top_intent="None", confidence_score=0.8)
    return ReviewCapture.following(routed, reason="fallback", text=text, language="en", route="fallback",
                                   top_intent="None", confidence_score=0.8, model_version="retail-bot.retail.x")


def exported(world) -> list[dict]:
    """The open items as the export writes them (one dict per line)."""
    raw = rx.render_day(world.admin.review_store.recent("open"), DAY, "off").decode()
    return [json.loads(line) for line in raw.splitlines()]


def jsonl(lines: list[dict]) -> str:
    return "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)


def new_items(world, *texts: str):
    deps = ReviewDeps(world.admin.review_store, Redactor("off"))
    return [record(capture(t, 100 + n), deps) for n, t in enumerate(texts)]


def test_a_relabelled_file_assigns_dismisses_skips_and_says_what_changed(world, editor):
    kettle, rude, gone, decided = (f"{t} {uuid.uuid4().hex[:8]}" for t in
                                   ("my kettle is still not here", "you are useless", "call me at home",
                                    "where is my parcel"))
    items = new_items(world, kettle, rude, gone, decided)
    lines = exported(world)
    labels = {items[0].id: "OrderStatus", items[1].id: "DISMISS", items[2].id: "Help", items[3].id: "Help"}
    for line in lines:
        line["label"] = labels.get(line["id"], "")
        line["text"] = "an edited text the import must ignore"
    world.admin.review_store.delete(items[2].id)  # erased after the export
    decide(world.admin.review_store, items[3].id, "dismissed", "operator")  # decided in the console meanwhile
    resp = editor.post("/review/import", files={"file": ("day.jsonl", jsonl(lines).encode(), "application/x-ndjson")},
                       data={"dataset": "Test"})
    assert resp.status_code == 200, resp.text
    summary = resp.json()["summary"]
    assert [(a["id"], a["intent"]) for a in summary["assigned"]] == [(items[0].id, "OrderStatus")]
    assert [d["id"] for d in summary["dismissed"]] == [items[1].id]
    assert {s["id"]: s["reason"] for s in summary["skipped"]} == {
        items[2].id: "no longer in the inbox (erased or deleted)", items[3].id: "already dismissed by operator"}
    assert summary["utterances_added"] == 1 and summary["unlabelled"] == len(lines) - 4
    assert resp.json()["changed"].startswith("imported a relabelled export: 1 assigned (1 utterance(s) added), "
                                             "1 dismissed, 2 skipped")
    [u] = editor.get("/intents", params={"q": kettle}).json()["utterances"]
    assert (u["text"], u["intent"], u["dataset"]) == (kettle, "OrderStatus", "Test")  # the stored text, not the file's
    assert editor.get("/intents", params={"q": "an edited text"}).json()["utterances"] == []
    assigned = world.admin.review_store.get(items[0].id)
    assert assigned.status == "assigned" and assigned.decision.by == "editor" and "line" in assigned.decision.changed
    assert world.admin.review_store.get(items[1].id).status == "dismissed"
    assert world.admin.review_store.get(items[3].id).decision.by == "operator"  # the newer decision stands
    audit = world.admin.audit.recent(action_prefix="review.import")
    assert audit[0].outcome == "succeeded" and audit[0].details["assigned"] == 1
    editor.post(f"/utterances/{u['key']}/delete")


def test_one_invalid_line_refuses_the_whole_file_with_every_reason(world, editor):
    a, b = new_items(world, f"my order is late {uuid.uuid4().hex[:8]}", f"hello there {uuid.uuid4().hex[:8]}")
    # a's line, by id: the export lists the open items newest first, and a and b may be recorded in the same ms
    good = {**next(x for x in exported(world) if x["id"] == a.id), "label": "OrderStatus"}
    lines = [json.dumps(good), "{not json", json.dumps({**good, "id": b.id, "label": "NoSuchIntent"}),
             json.dumps({**good, "schema": "review-export@9", "id": b.id}), json.dumps(good), "",
             json.dumps({"schema": "review-export@1", "id": "../../etc", "label": "dismiss"})]
    body = error(editor.post("/review/import", json={"jsonl": "\n".join(lines)}), 400, "invalid_file")
    assert body["message"].startswith("nothing was imported: 5 line(s)")
    reasons = {d["line"]: d["reason"] for d in body["details"]}
    assert sorted(reasons) == [2, 3, 4, 5, 7]
    assert "not JSON" in reasons[2] and "'NoSuchIntent' is neither an intent" in reasons[3]
    assert "schema" in reasons[4] and "already on line 1" in reasons[5] and "id" in reasons[7]
    assert world.admin.review_store.get(a.id).status == "open"  # the valid line was not applied either
    assert editor.get("/intents", params={"q": a.text}).json()["utterances"] == []
    assert world.admin.audit.recent(action_prefix="review.import")[0].outcome == "refused"
    for raw, why in [("", "no lines"), ("\xff", None)]:
        body = error(editor.post("/review/import", files={"file": ("x.jsonl", raw.encode("latin-1"), "text/plain")}),
                     400, "invalid_file")
        assert body["details"][0]["line"] == 0 and (why is None or why in body["details"][0]["reason"])
    error(editor.post("/review/import", json={"jsonl": json.dumps(good), "dataset": "Dev"}), 400, "invalid_request")


def test_import_needs_the_editor_role_and_the_csrf_token(world, operator, editor):
    body = jsonl([{"schema": "review-export@1", "id": "r" + "0" * 40, "label": "dismiss"}])
    error(operator.post("/review/import", json={"jsonl": body}), 403, "forbidden")
    anon = world.client_for()
    error(anon.post("/review/import", json={"jsonl": body}, headers={"Accept": "application/json"}), 401,
          "unauthenticated")
    token = editor.headers.pop("X-CSRF-Token")
    error(editor.post("/review/import", json={"jsonl": body}), 403, "csrf_failed")
    editor.headers["X-CSRF-Token"] = token
    done = editor.post("/review/import", json={"jsonl": body}).json()  # an unknown id: skipped, nothing else
    assert done["summary"]["skipped"][0]["reason"].startswith("no longer in the inbox")


def test_strict_mode_items_can_only_be_dismissed_from_a_file(authoring_service):
    from tools.gateway_stack import CONSOLE_AUTHORING_KEY
    key = "k" * 20
    admin = make_admin(TELEMETRY_PII_MODE="strict", TELEMETRY_PII_HASH_KEY=key)
    console = make_console(authoring_service.base_url, CONSOLE_AUTHORING_KEY, admin)
    c = sign_in(TestClient(create_app(console), base_url="http://console.test"), "editor")
    deps = ReviewDeps(admin.review_store, Redactor("strict", key), key)
    first, second = record(capture("my secret sentence", 1), deps), record(capture("another secret", 2), deps)
    lines = [json.loads(x) for x in rx.render_day(admin.review_store.recent("open"), DAY, "strict").decode()
             .splitlines()]
    assert all("text" not in x for x in lines)
    by_id = {x["id"]: x for x in lines}
    body = error(c.post("/review/import", json={"jsonl": jsonl([{**by_id[first.id], "label": "Help"}])}), 400,
                 "invalid_file")
    assert "no text (PII mode strict)" in body["details"][0]["reason"]
    done = c.post("/review/import", json={"jsonl": jsonl([{**by_id[first.id], "label": "dismiss"},
                                                          by_id[second.id]])}).json()
    assert [d["id"] for d in done["summary"]["dismissed"]] == [first.id] and done["summary"]["unlabelled"] == 1
    assert admin.review_store.get(first.id).status == "dismissed"


def test_a_days_export_is_listed_and_downloaded(world, editor):
    container = world.admin.settings.review_export_container
    world.admin.blobs.put(container, rx.blob_name(DAY), b'{"schema":"review-export@1"}\n')
    world.admin.blobs.put(container, rx.MARKER, b"{}")
    assert editor.get("/review/exports").json() == {"container": container, "days": ["2026-12-02"]}
    assert editor.get("/review").json()["exports"] == ["2026-12-02"]
    got = editor.get("/review/exports/2026-12-02")
    assert got.status_code == 200 and got.content == b'{"schema":"review-export@1"}\n'
    assert got.headers["content-type"].startswith("application/x-ndjson")
    assert 'filename="review-export-2026-12-02.jsonl"' in got.headers["content-disposition"]
    assert world.admin.audit.recent(action_prefix="review.export_download")[0].target == "2026-12-02"
    error(editor.get("/review/exports/2026-12-01"), 404, "not_found")
    error(editor.get("/review/exports/yesterday"), 400, "invalid_request")
    page = editor.get("/review", headers={"Accept": "text/html"})
    assert 'href="/review/exports/2026-12-02"' in page.text and 'hx-post="/review/import"' in page.text


def test_the_review_page_works_while_blob_storage_is_down(world, editor):
    from shared.errors import TransientError
    world.admin.blobs.fail_with = TransientError("storage down")  # type: ignore[attr-defined]
    assert editor.get("/review").json()["exports"] == []
    error(editor.get("/review/exports/2026-12-02"), 503, "store_unavailable")
