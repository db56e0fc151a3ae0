"""The review inbox's cold path end to end on the real local stack (its own: Azurite queues and blobs, the Cosmos DB
stand-in, the SendBird stand-in, the intent service with its authoring API, the functions runner hosting
function_app.py, the console):

a customer's message the model does not understand -> the review inbox (Cosmos DB) -> the timer function
``review_export`` invoked through the runner's admin API -> the day's JSONL blob in Azurite has the line ->
the relabeller fills ``label`` -> the file is imported through the console's API -> the text is an utterance of
the intent project and the item is decided. Every wait polls with a deadline.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from shared.clients.blobs import BlobStore
from shared.review_export import blob_name
from tests.support.polling import poll

pytestmark = pytest.mark.stack

SENTENCE = "waiting for ages for my kettle"  # the retail model answers None: fallback, captured for review



@pytest.fixture(scope="module")
def stack(tmp_path_factory) -> Iterator[Any]:
    from tools.gateway_stack import StackOptions, build_stack
    s = build_stack(StackOptions(free_ports=True, console=True, log_dir=tmp_path_factory.mktemp("export-stack")))
    s.start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def console(stack) -> requests.Session:
    """An editor signed in to the console (JSON answers, the session's CSRF token on every request)."""
    from tools.gateway_stack import CONSOLE_USERS
    base = stack["console"].base_url
    s = requests.Session()
    token = re.search(r'name="csrf-token" content="([^"]+)"', s.get(base + "/signin", timeout=10).text)[1]
    signed = s.post(base + "/signin", json={"username": "editor", "password": CONSOLE_USERS["editor"][1],
                                            "csrf_token": token}, headers={"Accept": "application/json"}, timeout=10)
    assert signed.status_code == 200, signed.text
    s.headers.update({"Accept": "application/json", "X-CSRF-Token": signed.json()["csrf_token"]})
    s.base = base  # type: ignore[attr-defined]
    return s


def say(stack: Any, text: str) -> dict[str, Any]:
    """A customer's message through the signed webhook; returns the bot's reply as the SendBird stand-in got it."""
    from tools import webhooks
    from tools.gateway_stack import LOCAL_API_TOKEN
    user = f"export_{uuid.uuid4().hex[:8]}"
    channel, message_id = f"sendbird_group_channel_{user}", int(time.time() * 1000) * 10 + 1
    body = webhooks.encode(webhooks.message_send_event(user_id=user, text=text, message_id=message_id,
                                                      channel_url=channel))
    result = webhooks.post(requests.Session(), stack["functions"].base_url, body, LOCAL_API_TOKEN)
    assert result.status == 200 and result.body["status"] == "accepted", result.body
    msg = poll(lambda: next((m for m in stack["sendbird"].control.messages(channel)
                             if m.get("dedup_id") == f"reply-{message_id}"), None), 30, f"the reply to {text!r}")
    return {**msg, "data": json.loads(msg.get("data") or "{}")}


def export_line(stack: Any, text: str) -> dict[str, Any] | None:
    """The line of ``text`` in today's export (or yesterday's, when the test straddles midnight UTC)."""
    blobs = BlobStore(stack["azurite_blob"].connection_string)
    today = dt.datetime.now(dt.timezone.utc).date()
    for day in (today, today - dt.timedelta(days=1)):
        raw = blobs.get("review-exports", blob_name(day))
        for line in (raw or b"").decode("utf-8").splitlines():
            record = json.loads(line)
            if record.get("text") == text:
                return record
    return None


def test_a_fallback_message_is_exported_relabelled_and_imported_into_the_project(stack, console):
    base = console.base  # type: ignore[attr-defined]
    text = f"{SENTENCE} {uuid.uuid4().hex[:6]}"
    assert say(stack, text)["data"]["route"] == "fallback"

    # 1. the review stage put it in the inbox
    item = poll(lambda: next((i for i in console.get(base + "/review", timeout=10).json()["items"]
                              if i["text"] == text), None), 30, "the message in the review inbox")
    assert item["status"] == "open" and item["count"] == 1

    # 2. the timer function, invoked now through the runner's admin API (as on the host), writes the day's file
    runner = stack["functions"].base_url
    before = requests.get(runner + "/admin/localrunner/stats", timeout=5).json()["functions"]["review_export"]
    fired = requests.post(runner + "/admin/functions/review_export", json={"input": ""}, timeout=10)
    assert fired.status_code == 202
    poll(lambda: requests.get(runner + "/admin/localrunner/stats", timeout=5).json()["functions"]["review_export"]
         ["successes"] > before["successes"], 60, "the export function to succeed")
    line = poll(lambda: export_line(stack, text), 10, "the item's line in the export blob")
    assert line["schema"] == "review-export@1" and line["id"] == item["id"] and line["label"] == ""
    assert line["count"] == 1 and line["top_intents"] and line["model_version"]

    # 3. the relabeller labels it; the console imports the file
    line["label"] = "OrderStatus"
    done = console.post(base + "/review/import", files={"file": ("relabelled.jsonl",
                                                                 (json.dumps(line) + "\n").encode("utf-8"),
                                                                 "application/x-ndjson")}, timeout=120)
    assert done.status_code == 200, done.text
    assert [a["id"] for a in done.json()["summary"]["assigned"]] == [item["id"]]

    # 4. the text is an utterance of the project, and the item left the inbox
    [utterance] = console.get(base + "/intents", params={"q": text, "refresh": "1"}, timeout=30).json()["utterances"]
    assert (utterance["text"], utterance["intent"], utterance["dataset"]) == (text, "OrderStatus", "Train")
    assigned = console.get(base + "/review", params={"status": "assigned"}, timeout=10).json()["items"]
    assert any(i["id"] == item["id"] and i["decision"]["intent"] == "OrderStatus" for i in assigned)
    # the day's file is offered for download in the console
    days = console.get(base + "/review/exports", timeout=10).json()["days"]
    assert dt.datetime.now(dt.timezone.utc).date().isoformat() in days or len(days) >= 1
