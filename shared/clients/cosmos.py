"""Cosmos DB client (:class:`~shared.ports.StateStore`): user state documents with ETag optimistic concurrency.

SDK: ``azure-cosmos`` 4.x (sync), SQL API. One document per user in the
container ``COSMOS_STATE_CONTAINER`` (partition key ``/user_id``). Writes use
``If-Match`` on the ETag (``MatchConditions.IfNotModified``); a 412 means
another writer won, so the read-modify-write is retried with fresh state.
Throttling (429) is retried by the SDK itself (``x-ms-retry-after-ms``); what
still fails is raised as :class:`~shared.errors.TransientError`.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, TypeVar, cast

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
from shared.state import UserState, document_id

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


def open_container(client: CosmosClient, settings: Settings, name: str, partition_key_path: str) -> ContainerProxy:
    """Container ``name`` of ``COSMOS_DATABASE`` (created with ``partition_key_path`` when
    ``COSMOS_CREATE_IF_MISSING`` is set, the local stack; on Azure the infrastructure creates it)."""
    if settings.cosmos_create_if_missing:
        db = client.create_database_if_not_exists(settings.cosmos_database)
        return db.create_container_if_not_exists(name, partition_key=PartitionKey(path=partition_key_path))
    return client.get_database_client(settings.cosmos_database).get_container_client(name)


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
    """azure-core's requests transport on a session with a larger keep-alive pool; the SDK does its own retries."""
    session = requests.Session()
    session.trust_env = False
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE,
                          max_retries=Retry(total=False, redirect=False, raise_on_status=False))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return RequestsTransport(session=session, session_owner=False, connection_verify=settings.cosmos_verify_tls,
                             connection_timeout=settings.cosmos_timeout_seconds)


def _managed_identity(settings: Settings) -> Any:
    from azure.identity import DefaultAzureCredential
    return DefaultAzureCredential(managed_identity_client_id=settings.storage_client_id or None)


def _body(state: UserState) -> dict[str, Any]:
    return state.model_dump(mode="json")


class CosmosStateStore:
    """:class:`~shared.ports.StateStore` on a Cosmos DB container."""

    def __init__(self, container: ContainerProxy, max_attempts: int = MAX_CONFLICT_ATTEMPTS,
                 telemetry: TelemetryPort = DISABLED):
        self._telemetry = telemetry
        self._container = container
        self._max_attempts = max_attempts
        self._target = getattr(container, "container_link", "user_state")

    def _read(self, user_id: str) -> tuple[UserState, str] | None:
        try:
            with timing.dependency(self._telemetry, "cosmos", "read user_state", self._target, "Azure DocumentDB"):
                doc = self._container.read_item(document_id(user_id), partition_key=user_id)
        except cosmos_errors.CosmosResourceNotFoundError:
            return None
        return UserState.model_validate(doc), doc["_etag"]

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
        for attempt in range(1, self._max_attempts + 1):
            try:
                found = self._read(user_id)
                state, etag = found if found else (UserState.new(user_id, channel_url, now_ms()), None)
                before = state.model_dump()
                result = mutate(state)
                if etag is not None and state.model_dump() == before:
                    return result  # nothing changed: no write
                state.updated_at_ms = now_ms()
                with timing.dependency(self._telemetry, "cosmos", "write user_state", self._target,
                                       "Azure DocumentDB"):
                    if etag is None:
                        self._container.create_item(_body(state))
                    else:
                        self._container.replace_item(state.id, _body(state), etag=etag,
                                                     match_condition=MatchConditions.IfNotModified)
                return result
            except (cosmos_errors.CosmosAccessConditionFailedError, cosmos_errors.CosmosResourceExistsError):
                log.info("state of %s changed concurrently (attempt %d); retrying", user_id, attempt)
            except AzureError as exc:
                raise azure_error(exc, "cosmos state update") from exc
        raise TransientError(f"state of {user_id} kept changing: {self._max_attempts} ETag conflicts in a row")

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
