"""One contract for the console's stores: the in-memory fakes and the Cosmos DB adapters (on the stand-in) must
both pass it (review inbox, response catalog versions, audit log, the state store's administrative side)."""

from __future__ import annotations

import json
import threading
import uuid

import pytest

from shared.audit import AuditEntry
from shared.catalog import CatalogConflict, CatalogVersion, ResponseCatalog
from shared.clients.cosmos import CosmosStateStore, cosmos_client, open_container
from shared.clients.cosmos_stores import CosmosAuditLog, CosmosCatalogStore, CosmosReviewStore
from shared.review import ReviewItem
from shared.settings import load_settings
from tests.support.fakes import InMemoryAuditLog, InMemoryCatalogStore, InMemoryReviewStore, InMemoryStateStore
from tests.support.samples import sample_values


def _cosmos_settings(request):
    cosmos = request.getfixturevalue("cosmos")
    return load_settings({**sample_values(), "COSMOS_ENDPOINT": cosmos.endpoint,
                          "COSMOS_DATABASE": "contract"}).settings


def _container(request, kind: str, pk: str = "/id"):
    s = _cosmos_settings(request)
    return open_container(cosmos_client(s), s, f"{kind}-{uuid.uuid4().hex[:8]}", pk)


@pytest.fixture(params=["in-memory", "cosmos"])
def reviews(request):
    return InMemoryReviewStore() if request.param == "in-memory" else CosmosReviewStore(_container(request, "review"))


@pytest.fixture(params=["in-memory", "cosmos"])
def catalogs(request):
    return InMemoryCatalogStore() if request.param == "in-memory" else CosmosCatalogStore(_container(request, "cat"))


@pytest.fixture(params=["in-memory", "cosmos"])
def audits(request):
    return InMemoryAuditLog() if request.param == "in-memory" else CosmosAuditLog(_container(request, "audit"))


@pytest.fixture(params=["in-memory", "cosmos"])
def states(request):
    if request.param == "in-memory":
        return InMemoryStateStore()
    return CosmosStateStore(_container(request, "state", "/user_id"))


def item(item_id: str, **fields) -> ReviewItem:
    return ReviewItem(**{"id": item_id, "language": "en", "text": "hello", "count": 1, **fields})


# --------------------------------------------------------------------------- review inbox
def test_review_update_creates_changes_and_leaves_alone(reviews):
    assert reviews.get("r1") is None
    assert reviews.update("r1", lambda found: item("r1", last_seen_ms=5) if found is None else None).count == 1
    assert reviews.update("r1", lambda found: None) is None  # nothing to write
    changed = reviews.update("r1", lambda found: found.model_copy(update={"count": found.count + 1}))
    assert changed.count == 2 and reviews.get("r1").count == 2


def test_review_list_by_status_newest_first_and_by_user(reviews):
    for i, status in enumerate(["open", "dismissed", "open"]):
        reviews.update(f"r{i}", lambda _, i=i, status=status: item(
            f"r{i}", last_seen_ms=i, status=status, users={f"u{i}": 1, "shared": 2}, user_keys=sorted({f"u{i}", "shared"})))
    assert [i.id for i in reviews.recent("open")] == ["r2", "r0"]
    assert [i.id for i in reviews.recent()] == ["r2", "r1", "r0"]
    assert [i.id for i in reviews.items_of_user("u1")] == ["r1"]
    assert sorted(i.id for i in reviews.items_of_user("shared")) == ["r0", "r1", "r2"]
    assert reviews.delete("r1") and not reviews.delete("r1") and reviews.get("r1") is None


def test_review_items_last_seen_in_a_window_oldest_first(reviews):
    for n, (seen, status) in enumerate([(1_000, "open"), (999, "open"), (2_000, "open"), (1_500, "dismissed"),
                                        (1_500, "open"), (1_999, "open")]):
        reviews.update(f"r{n}", lambda _, n=n, seen=seen, status=status: item(f"r{n}", last_seen_ms=seen,
                                                                               status=status))
    assert [i.id for i in reviews.seen_between(1_000, 2_000)] == ["r0", "r3", "r4", "r5"]  # [start, end), ties by id
    assert [i.id for i in reviews.seen_between(1_000, 2_000, "open")] == ["r0", "r4", "r5"]
    assert reviews.seen_between(5_000, 6_000) == []


def test_review_concurrent_updates_lose_nothing(reviews):
    reviews.update("hot", lambda _: item("hot", count=0))
    errors: list[Exception] = []

    def bump():
        try:
            reviews.update("hot", lambda found: found.model_copy(update={"count": found.count + 1}))
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)
    threads = [threading.Thread(target=bump) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and reviews.get("hot").count == 6


# --------------------------------------------------------------------------- catalog versions
def texts(en_goodbye: str) -> dict:
    t = json.loads(ResponseCatalog.load_text())
    t["goodbye.thanks"]["en"] = en_goodbye
    return t


def test_catalog_publish_in_sequence_with_history(catalogs):
    assert catalogs.current() is None and catalogs.history() == []
    catalogs.publish(CatalogVersion(version=1, texts=texts("one"), author="a"))
    catalogs.publish(CatalogVersion(version=2, texts=texts("two"), author="b", based_on=1))
    assert catalogs.current().version == 2 and catalogs.current().texts["goodbye.thanks"]["en"] == "two"
    assert [v.version for v in catalogs.history()] == [2, 1]
    assert catalogs.get(1).texts["goodbye.thanks"]["en"] == "one" and catalogs.get(9) is None
    with pytest.raises(CatalogConflict):
        catalogs.publish(CatalogVersion(version=2, texts=texts("late"), author="c"))  # someone published 2 already
    with pytest.raises(CatalogConflict):
        catalogs.publish(CatalogVersion(version=5, texts=texts("skip"), author="c"))


# --------------------------------------------------------------------------- audit log
def test_audit_newest_first_and_by_action(audits):
    for i, action in enumerate(["review.assign", "catalog.publish", "review.dismiss"]):
        audits.record(AuditEntry(actor="editor", action=action, target=f"t{i}", at_ms=1000 + i))
    assert [e.action for e in audits.recent()] == ["review.dismiss", "catalog.publish", "review.assign"]
    assert [e.target for e in audits.recent(action_prefix="review.")] == ["t2", "t0"]
    assert len(audits.recent(limit=1)) == 1


# --------------------------------------------------------------------------- state admin
def test_state_admin_find_by_id_and_channel_recent_and_delete(states):
    u1, u2 = f"user-{uuid.uuid4().hex[:6]}", f"team/{uuid.uuid4().hex[:6]}?x"
    assert states.find(u1) is None
    states.update(u1, "ch-a", lambda s: setattr(s, "language", "en"))
    states.update(u2, "ch-b", lambda s: setattr(s, "language", "ko"))
    assert states.find(u1).language == "en" and states.find(u2).user_id == u2
    assert [s.user_id for s in states.find_by_channel("ch-b")] == [u2]
    assert {s.user_id for s in states.recent(10)} >= {u1, u2}
    assert states.delete(u2) and states.find(u2) is None and not states.delete(u2)
