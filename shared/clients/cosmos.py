"""Cosmos DB client (:class:`~shared.ports.StateStore`): user state documents with ETag optimistic concurrency.

SDK: ``azure-cosmos`` 4.x (sync), SQL API. One document per user in the
container ``COSMOS_STATE_CONTAINER`` (partition key ``/user_id``, indexing policy
:data:`STATE_INDEXING_POLICY`). Writes use ``If-Match`` on the ETag
(``MatchConditions.IfNotModified``) and are partial document updates (PATCH) when
they fit in one (:func:`shared.state.document_patch`); a 412 means another writer
won, so the read-modify-write is retried with fresh state. A write may start from a
sealed :class:`~shared.state.StateVersion` a previous stage handed on instead of a
read (:meth:`CosmosStateStore.update_versioned`).
Throttling (429) is retried by the SDK itself (``x-ms-retry-after-ms``); what
still fails is raised as :class:`~shared.errors.TransientError`.
Every request is counted at the client (:class:`CosmosCounters`, :data:`COUNTERS`).
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, Callable, TypeVar, cast
from urllib.parse import unquote, urlsplit

import requests
from azure.core import MatchConditions
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry
from azure.cosmos import ContainerProxy, CosmosClient, PartitionKey
from azure.cosmos import exceptions as cosmos_errors
from azure.core.exceptions import AzureError

from shared import timing
from shared.clients.errors import azure_error
from shared.errors import TransientError
from shared.models import now_ms
from shared.ports import TelemetryPort
from shared.settings import Settings
from shared.telemetry import DISABLED
from shared.state import (MAX_PATCH_OPS, PatchOp, StateVersion, UserState, deferred_version, document_id,
                          document_patch, is_sealed, merge_ops, partial_patch, version_of)

log = logging.getLogger(__name__)
T = TypeVar("T")

#: Read-modify-write attempts before giving up on a hot document (each conflict is one HTTP 412/409).
MAX_CONFLICT_ATTEMPTS = 8


def connect(settings: Settings) -> ContainerProxy:
    """Create the SDK client (once per worker) and return the state container.

    Auth: ``COSMOS_KEY``, or when it is empty a managed identity (``DefaultAzureCredential``;
    needs the Cosmos DB Built-in Data Contributor role). Every operation is bounded by
    ``COSMOS_TIMEOUT_SECONDS`` including the SDK's own 429 retries.

    With ``COSMOS_CREATE_IF_MISSING=true`` (local stack only) the database and
    container are created; on Azure the infrastructure creates them.
    """
    return open_container(cosmos_client(settings), settings, settings.cosmos_state_container, "/user_id")


def cosmos_client(settings: Settings) -> CosmosClient:
    """The SDK client for ``COSMOS_ENDPOINT`` (one per worker; every container of the database shares it)."""
    credential = settings.cosmos_key or _managed_identity(settings)
    return CosmosClient(
        str(settings.cosmos_endpoint),
        credential=credential,
        connection_verify=settings.cosmos_verify_tls,
        connection_timeout=settings.cosmos_timeout_seconds,
        timeout=settings.cosmos_timeout_seconds,  # absolute per operation, including the SDK's 429 retries
        transport=_transport(settings),
    )


#: Indexing policy of the user-state container: only the paths a query filters or sorts on are indexed, the turns
#: history and everything else are not (each indexed path costs request units on every write, and the turns are
#: most of the document). The queries (the console's, :class:`CosmosStateStore`): ``WHERE c.channel_url = @c
#: ORDER BY c.updated_at_ms DESC`` (composite index) and ``ORDER BY c.updated_at_ms DESC``. Point reads and
#: writes by id and partition key need no index. Same policy in ``infra/main.bicep`` (``tests/test_deploy.py``).
STATE_INDEXING_POLICY: dict[str, Any] = {
    "indexingMode": "consistent",
    "automatic": True,
    "includedPaths": [{"path": "/channel_url/?"}, {"path": "/updated_at_ms/?"}],
    "excludedPaths": [{"path": "/*"}, {"path": '/"_etag"/?'}],
    "compositeIndexes": [[{"path": "/channel_url", "order": "ascending"},
                          {"path": "/updated_at_ms", "order": "descending"}]],
}


def open_container(client: CosmosClient, settings: Settings, name: str, partition_key_path: str) -> ContainerProxy:
    """Container ``name`` of ``COSMOS_DATABASE`` (created with ``partition_key_path`` when
    ``COSMOS_CREATE_IF_MISSING`` is set, the local stack; on Azure the infrastructure creates it). The user-state
    container is created with :data:`STATE_INDEXING_POLICY`."""
    if settings.cosmos_create_if_missing:
        db = _created_concurrently_too(lambda: client.create_database_if_not_exists(settings.cosmos_database))
        policy = STATE_INDEXING_POLICY if name == settings.cosmos_state_container else None
        return _created_concurrently_too(lambda: db.create_container_if_not_exists(
            name, partition_key=PartitionKey(path=partition_key_path), indexing_policy=policy))
    return client.get_database_client(settings.cosmos_database).get_container_client(name)


def _created_concurrently_too(create_if_not_exists: Callable[[], T]) -> T:
    """``create_if_not_exists()``, once more when it raised 409: the SDK's ``create_*_if_not_exists`` reads, then
    creates on a 404, so another process (worker processes, instances) creating the same database or container in
    between makes it raise ``CosmosResourceExistsError``; the second call finds it. (Seen in the two-instance fault
    suite: the first message of a run was poisoned with that 409.)"""
    try:
        return create_if_not_exists()
    except cosmos_errors.CosmosResourceExistsError:
        return create_if_not_exists()


class LazyContainer:
    """A container opened on first use. The SDK client's constructor already talks to the account (it reads the
    account's endpoints), so opening containers while the composition root is built would make every function,
    the webhook intake included, depend on Cosmos DB being reachable at worker start. Opened once (thread-safe) by
    ``open_``; ``container_link`` is the name until then; every other attribute is the real container's."""

    def __init__(self, open_: Callable[[], ContainerProxy], name: str):
        self._open = open_
        self._name = name
        self._lock = threading.Lock()
        self._container: ContainerProxy | None = None

    @property
    def container_link(self) -> str:
        return self._container.container_link if self._container is not None else self._name

    def get(self) -> ContainerProxy:
        """The container, opened now if it was not yet (raises what the SDK raises; retried on the next use)."""
        if self._container is None:
            with self._lock:
                if self._container is None:
                    self._container = self._open()
        return self._container

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.get(), attr)


def lazy_containers(settings: Settings) -> Callable[[str, str], ContainerProxy]:
    """``container(name, partition_key_path)`` for :class:`LazyContainer` s that share one SDK client, itself
    created on the first container's first use."""
    lock = threading.Lock()
    clients: list[CosmosClient] = []

    def client() -> CosmosClient:
        with lock:
            if not clients:
                clients.append(cosmos_client(settings))
            return clients[0]

    def container(name: str, partition_key_path: str) -> ContainerProxy:
        lazy = LazyContainer(lambda: open_container(client(), settings, name, partition_key_path), name)
        return cast(ContainerProxy, lazy)

    return container


#: Keep-alive connections to Cosmos DB per worker. The SDK's default pool (10) made concurrent stages
#: open new TLS connections under load (profiled in bench/); 32 covers batchSize 16 on two queues.
POOL_SIZE = 32


def _transport(settings: Settings) -> RequestsTransport:
    """azure-core's requests transport on a session with a larger keep-alive pool; the SDK does its own retries.
    Every request is counted in :data:`COUNTERS`."""
    session = requests.Session()
    session.trust_env = False
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE,
                          max_retries=Retry(total=False, redirect=False, raise_on_status=False))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    if settings.cosmos_op_counts_dir:
        COUNTERS.dump_every(Path(settings.cosmos_op_counts_dir), COUNTS_DUMP_SECONDS)
    return CountingTransport(session=session, session_owner=False, connection_verify=settings.cosmos_verify_tls,
                             connection_timeout=settings.cosmos_timeout_seconds)


# --------------------------------------------------------------------------- what the gateway asks of Cosmos DB
#: Seconds between two dumps of the counters to ``COSMOS_OP_COUNTS_DIR`` (when set).
COUNTS_DUMP_SECONDS = 0.5
#: Document operations by kind, from the HTTP method and headers of a request on ``.../docs[/{id}]``.
OP_KINDS = ("read", "create", "upsert", "replace", "patch", "delete", "query", "batch")
#: The kinds that write.
WRITE_KINDS = frozenset({"create", "upsert", "replace", "patch", "delete", "batch"})


def op_kind(method: str, url: str, headers: Any) -> tuple[str, str] | None:
    """``(container, kind)`` of one Cosmos DB REST request on a document (kind: one of :data:`OP_KINDS`), or None
    for account, database, container and partition-key-range requests (metadata the SDK reads and caches)."""
    parts = urlsplit(url).path.rstrip("/").split("/")
    if "docs" not in parts or "colls" not in parts:
        return None
    container = unquote(parts[parts.index("colls") + 1])
    on_item = parts[-1] != "docs"
    method = method.upper()
    kind = {"PUT": "replace", "PATCH": "patch", "DELETE": "delete"}.get(method)
    if method == "GET":
        kind = "read" if on_item else "query"
    if kind is None:
        lower = {str(k).lower(): str(v).lower() for k, v in headers.items()}
        if lower.get("x-ms-documentdb-isquery") == "true" or "query" in lower.get("content-type", ""):
            kind = "query"
        elif lower.get("x-ms-cosmos-is-batch-request") == "true":
            kind = "batch"
        else:
            kind = "upsert" if lower.get("x-ms-documentdb-is-upsert") == "true" else "create"
    return container, kind


class CosmosCounters:
    """What this process asked of Cosmos DB, counted at the client (every HTTP attempt, the SDK's own 429 retries
    included), per container: document operations by kind (:data:`OP_KINDS`), ``operations``, ``writes``, and
    body bytes: ``request_bytes``, ``written_bytes`` (request bodies of the writes), ``response_bytes``.
    Thread-safe; one per process (:data:`COUNTERS`). :meth:`snapshot` is what the benchmark and the tests read;
    with ``COSMOS_OP_COUNTS_DIR`` set (local tooling only) each process also writes it to
    ``<dir>/cosmos-ops-<pid>.json``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, dict[str, int]] = {}
        self._dumping = False

    def count(self, container: str, kind: str, request_bytes: int, response_bytes: int) -> None:
        """Count one request of ``kind`` on ``container`` with these body sizes (bytes)."""
        with self._lock:
            c = self._counts.setdefault(container, {})
            c[kind] = c.get(kind, 0) + 1
            c["operations"] = c.get("operations", 0) + 1
            c["request_bytes"] = c.get("request_bytes", 0) + request_bytes
            c["response_bytes"] = c.get("response_bytes", 0) + response_bytes
            if kind in WRITE_KINDS:
                c["writes"] = c.get("writes", 0) + 1
                c["written_bytes"] = c.get("written_bytes", 0) + request_bytes

    def snapshot(self) -> dict[str, dict[str, int]]:
        """The counts so far, container name -> ``operations``, ``writes``, one key per kind seen, byte totals."""
        with self._lock:
            return {k: dict(v) for k, v in self._counts.items()}

    def reset(self) -> None:
        with self._lock:
            self._counts = {}

    def dump_every(self, directory: Path, seconds: float) -> None:
        """Start (once) a daemon thread writing :meth:`snapshot` to ``directory/cosmos-ops-<pid>.json``."""
        with self._lock:
            if self._dumping:
                return
            self._dumping = True
        directory.mkdir(parents=True, exist_ok=True)
        target = directory / f"cosmos-ops-{os.getpid()}.json"

        def loop() -> None:
            last: dict[str, dict[str, int]] | None = None
            while True:
                snap = self.snapshot()
                if snap != last:
                    tmp = target.with_suffix(".tmp")
                    tmp.write_text(json.dumps(snap))
                    tmp.replace(target)
                    last = snap
                time.sleep(seconds)

        threading.Thread(target=loop, name="cosmos-op-counts", daemon=True).start()


#: This process's counters (every Cosmos client built by :func:`cosmos_client` counts here).
COUNTERS = CosmosCounters()


def _body_len(body: Any) -> int:
    if body is None:
        return 0
    if isinstance(body, (bytes, bytearray)):
        return len(body)
    if isinstance(body, str):
        return len(body.encode("utf-8"))
    return 0


class CountingTransport(RequestsTransport):
    """The requests transport, counting each document request in :data:`COUNTERS` (kind and body bytes)."""

    def send(self, request: Any, **kwargs: Any) -> Any:
        response = super().send(request, **kwargs)
        op = op_kind(request.method, request.url, request.headers)
        if op is not None:
            content = getattr(getattr(response, "internal_response", None), "content", None)
            received = len(content) if isinstance(content, (bytes, bytearray)) else \
                int(response.headers.get("content-length") or 0)
            COUNTERS.count(*op, _body_len(request.body), received)
        return response


def _managed_identity(settings: Settings) -> Any:
    from azure.identity import DefaultAzureCredential
    return DefaultAzureCredential(managed_identity_client_id=settings.storage_client_id or None)


def _body(state: UserState) -> dict[str, Any]:
    return state.model_dump(mode="json")


class CosmosStateStore:
    """:class:`~shared.ports.StateStore` on a Cosmos DB container.

    Every write is conditional on the ETag of the document it was computed from. It is a partial document update
    (PATCH, at most :data:`~shared.state.MAX_PATCH_OPS` operations: the changed fields, the changed or appended
    turns) when that says it, else a replace of the whole document; a new document is created. ``seal_key``
    seals the :class:`~shared.state.StateVersion` s this store hands out (default: a random key, i.e. versions are
    trusted only by this instance).
    """

    def __init__(self, container: ContainerProxy, max_attempts: int = MAX_CONFLICT_ATTEMPTS,
                 telemetry: TelemetryPort = DISABLED, seal_key: bytes | None = None):
        self._telemetry = telemetry
        self._container = container
        self._max_attempts = max_attempts
        self._target = getattr(container, "container_link", "user_state")
        self._key = seal_key or os.urandom(32)

    def _read(self, user_id: str) -> tuple[UserState, str] | None:
        found = self._read_doc(user_id)
        return (UserState.model_validate(found[0]), found[1]) if found else None

    def _read_doc(self, user_id: str) -> tuple[dict[str, Any], str] | None:
        try:
            with timing.dependency(self._telemetry, "cosmos", "read user_state", self._target, "Azure DocumentDB"):
                doc = self._container.read_item(document_id(user_id), partition_key=user_id)
        except cosmos_errors.CosmosResourceNotFoundError:
            return None
        return doc, doc["_etag"]

    def get_or_create(self, user_id: str, channel_url: str | None) -> UserState:
        try:
            found = self._read(user_id)
            if found:
                return found[0]
            state = UserState.new(user_id, channel_url, now_ms())
            try:
                self._container.create_item(_body(state))
            except cosmos_errors.CosmosResourceExistsError:
                found = self._read(user_id)
                if found:
                    return found[0]
            return state
        except AzureError as exc:
            raise azure_error(exc, "cosmos state read") from exc

    def update(self, user_id: str, channel_url: str | None, mutate: Callable[[UserState], T]) -> T:
        return self.update_versioned(user_id, channel_url, mutate)[0]

    def trusts(self, version: StateVersion) -> bool:
        return is_sealed(version, self._key)

    def update_versioned(self, user_id: str, channel_url: str | None, mutate: Callable[[UserState], T], *,
                         base: StateVersion | None = None,
                         keep_turn: int | None = None) -> tuple[T, StateVersion]:
        try:
            if base is not None and self.trusts(base):
                done = self._update_from(user_id, base, mutate, keep_turn)
                if done is not None:
                    return done
            for attempt in range(1, self._max_attempts + 1):
                done = self._update_once(user_id, channel_url, mutate, keep_turn)
                if done is not None:
                    return done
                log.info("state of %s changed concurrently (attempt %d); retrying", user_id, attempt)
        except AzureError as exc:
            raise azure_error(exc, "cosmos state update") from exc
        raise TransientError(f"state of {user_id} kept changing: {self._max_attempts} ETag conflicts in a row")

    def defer(self, base: StateVersion, mutate: Callable[[UserState], T]) -> tuple[T, StateVersion] | None:
        if not self.trusts(base):
            return None
        state = base.state()
        result = mutate(state)
        ops = partial_patch(base, state)
        if not ops or len(merge_ops(base.unwritten, ops)) > MAX_PATCH_OPS - 1:  # room for updated_at_ms
            return None
        return result, deferred_version(base, state, ops, self._key)

    def _update_from(self, user_id: str, base: StateVersion, mutate: Callable[[UserState], T],
                     keep_turn: int | None) -> tuple[T, StateVersion] | None:
        """The write of ``mutate`` on ``base`` without a read (PATCH ``If-Match: base.etag``, with the changes
        ``base`` holds unwritten), or None when that cannot be done: nothing to write (a decision not to write is
        always taken on a fresh read), a change the partial copy cannot express, or the document changed since
        (412)."""
        state = base.state()
        result = mutate(state)
        own = partial_patch(base, state)
        if own is None or (not own and not base.unwritten):
            return None
        state.updated_at_ms = now_ms()
        ops = merge_ops(base.unwritten, partial_patch(base, state) or [])
        if len(ops) > MAX_PATCH_OPS:
            return None
        try:
            doc = self._write(user_id, ops, None, base.etag)
        except (cosmos_errors.CosmosAccessConditionFailedError, cosmos_errors.CosmosResourceNotFoundError):
            log.info("state of %s changed since the version the message carried; reading it", user_id)
            return None
        return result, version_of(doc, doc["_etag"], keep_turn, self._key)

    def _update_once(self, user_id: str, channel_url: str | None, mutate: Callable[[UserState], T],
                     keep_turn: int | None) -> tuple[T, StateVersion] | None:
        """One read-modify-write; None after an ETag conflict (412, or 409 on a concurrent create)."""
        found = self._read_doc(user_id)
        if found:
            stored, etag = found
            state = UserState.model_validate(stored)
        else:
            stored, etag, state = None, None, UserState.new(user_id, channel_url, now_ms())
        before = state.model_dump()
        result = mutate(state)
        if stored is not None and etag is not None and state.model_dump() == before:
            return result, version_of(stored, etag, keep_turn, self._key)  # nothing changed: no write
        state.updated_at_ms = now_ms()
        body = _body(state)
        ops = document_patch(stored, body) if stored is not None else None
        try:
            doc = self._write(user_id, ops, body, etag)
        except (cosmos_errors.CosmosAccessConditionFailedError, cosmos_errors.CosmosResourceExistsError):
            return None
        return result, version_of(doc, doc["_etag"], keep_turn, self._key)

    def _write(self, user_id: str, ops: list[PatchOp] | None, body: dict[str, Any] | None,
               etag: str | None) -> dict[str, Any]:
        """PATCH ``ops`` (when given), else replace with ``body`` (create when ``etag`` is None); ``If-Match:
        etag``. Returns the stored document (with its new ``_etag``)."""
        with timing.dependency(self._telemetry, "cosmos", "write user_state", self._target, "Azure DocumentDB"):
            if etag is None:
                assert body is not None
                return cast(dict[str, Any], self._container.create_item(body))
            if ops:
                return cast(dict[str, Any], self._container.patch_item(
                    document_id(user_id), partition_key=user_id, patch_operations=ops, etag=etag,
                    match_condition=MatchConditions.IfNotModified))
            assert body is not None
            return cast(dict[str, Any], self._container.replace_item(
                body["id"], body, etag=etag, match_condition=MatchConditions.IfNotModified))

    # ------------------------------------------------------------------ StateAdmin (the console)
    def find(self, user_id: str) -> UserState | None:
        try:
            found = self._read(user_id)
        except AzureError as exc:
            raise azure_error(exc, "cosmos state read") from exc
        return found[0] if found else None

    def _query(self, query: str, parameters: list[dict[str, Any]], what: str) -> list[UserState]:
        try:
            docs = self._container.query_items(query, parameters=parameters, enable_cross_partition_query=True)
            return [UserState.model_validate(d) for d in docs]
        except AzureError as exc:
            raise azure_error(exc, what) from exc

    def find_by_channel(self, channel_url: str, limit: int = 20) -> list[UserState]:
        return self._query(f"SELECT TOP {int(limit)} * FROM c WHERE c.channel_url = @c ORDER BY c.updated_at_ms DESC",
                           [{"name": "@c", "value": channel_url}], "cosmos state query")

    def recent(self, limit: int = 20) -> list[UserState]:
        return self._query(f"SELECT TOP {int(limit)} * FROM c ORDER BY c.updated_at_ms DESC", [],
                           "cosmos state query")

    def delete(self, user_id: str) -> bool:
        try:
            self._container.delete_item(document_id(user_id), partition_key=user_id)
            return True
        except cosmos_errors.CosmosResourceNotFoundError:
            return False
        except AzureError as exc:
            raise azure_error(exc, "cosmos state delete") from exc


def load_counts(directory: Path) -> dict[str, dict[str, int]]:
    """The sum of the counters every process wrote to ``directory`` (``COSMOS_OP_COUNTS_DIR``), container name ->
    counts (see :class:`CosmosCounters`); empty when there are none. For the benchmark and the tests."""
    total: dict[str, dict[str, int]] = {}
    for path in sorted(directory.glob("cosmos-ops-*.json")):
        try:
            snap = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being replaced right now: the next read has it
        for container, counts in snap.items():
            into = total.setdefault(container, {})
            for k, v in counts.items():
                into[k] = into.get(k, 0) + int(v)
    return total
