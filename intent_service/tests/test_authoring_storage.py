"""The storage port's contract, held by the in-memory fake and by Azure Blob Storage (Azurite)."""
from __future__ import annotations

import threading

import pytest

from intent_service.authoring.storage import (AzureBlobStore, MemoryBlobStore, PreconditionFailed)

from .authoring_support import azurite_blob_class


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    svc = azurite_blob_class()(0, log_dir=tmp_path_factory.mktemp("azurite-logs"))
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


_containers = iter(range(1, 10_000))


@pytest.fixture(params=["memory", "azurite"])
def store(request):
    if request.param == "memory":
        return MemoryBlobStore()
    azurite = request.getfixturevalue("azurite")
    return AzureBlobStore.from_connection_string(azurite.connection_string,
                                                 f"contract{next(_containers)}", prefix="p/")


def test_read_missing_is_none(store):
    assert store.read("nope.json") is None
    assert store.delete("nope.json") is False


def test_write_read_roundtrip_and_etag_changes(store):
    e1 = store.write("a/b.json", b"one")
    blob = store.read("a/b.json")
    assert blob.data == b"one" and blob.etag == e1
    e2 = store.write("a/b.json", "zwei 두".encode("utf-8"))
    assert e2 != e1
    assert store.read("a/b.json").data == "zwei 두".encode("utf-8")


def test_if_none_match_creates_once(store):
    store.write("x", b"1", if_none_match=True)
    with pytest.raises(PreconditionFailed):
        store.write("x", b"2", if_none_match=True)
    assert store.read("x").data == b"1"


def test_if_match_is_optimistic_concurrency(store):
    etag = store.write("d.json", b"v1")
    new = store.write("d.json", b"v2", if_match=etag)
    with pytest.raises(PreconditionFailed):
        store.write("d.json", b"v3", if_match=etag)  # stale etag
    assert store.read("d.json").data == b"v2"
    with pytest.raises(PreconditionFailed):
        store.write("missing.json", b"v", if_match=new)  # if-match on a missing blob


def test_delete_with_and_without_condition(store):
    etag = store.write("z", b"1")
    store.write("z", b"2")
    with pytest.raises(PreconditionFailed):
        store.delete("z", if_match=etag)
    assert store.delete("z", if_match=store.read("z").etag) is True
    assert store.read("z") is None


def test_list_prefix_sorted_with_etags_and_sizes(store):
    for name in ("p1/b", "p1/a", "p2/a", "p1x"):
        store.write(name, name.encode())
    listed = store.list("p1/")
    assert [b.name for b in listed] == ["p1/a", "p1/b"]
    assert [b.size for b in listed] == [4, 4]
    assert listed[0].etag == store.read("p1/a").etag
    assert [b.name for b in store.list("p1")] == ["p1/a", "p1/b", "p1x"]


def test_concurrent_conditional_writers_one_wins(store):
    etag = store.write("race.json", b"0")
    results = []

    def writer(i):
        try:
            store.write("race.json", str(i).encode(), if_match=etag)
            results.append(i)
        except PreconditionFailed:
            pass

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 1
    assert store.read("race.json").data == str(results[0]).encode()
