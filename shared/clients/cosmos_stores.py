"""Cosmos DB adapters of the console's stores: the review inbox (:class:`~shared.ports.ReviewStore`), the
published response catalog versions (:class:`~shared.ports.CatalogStore`) and the audit log
(:class:`~shared.ports.AuditLog`).

Each is one container of ``COSMOS_DATABASE`` with partition key ``/id`` (``COSMOS_REVIEW_CONTAINER``,
``COSMOS_CATALOG_CONTAINER``, ``CONSOLE_AUDIT_CONTAINER``), sharing the worker's SDK client
(:func:`shared.clients.cosmos.cosmos_client`). Writes that change a document use ``If-Match`` on its ETag (a 412 re-reads
and retries), like the state store. Errors map to :class:`~shared.errors.TransientError` /
:class:`~shared.errors.PermanentError` by :func:`shared.clients.errors.azure_error`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from azure.core import MatchConditions
from azure.core.exceptions import AzureError
from azure.cosmos import ContainerProxy
from azure.cosmos import exceptions as cosmos_errors

from shared.audit import AuditEntry
from shared.catalog import CatalogConflict, CatalogVersion
from shared.clients.errors import azure_error
from shared.errors import TransientError
from shared.review import ReviewItem

log = logging.getLogger(__name__)

MAX_CONFLICT_ATTEMPTS = 8
#: The catalog document that holds the current version (a copy of ``v<n>``).
CURRENT = "current"


def _clean(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if not k.startswith("_")}


class CosmosReviewStore:
    """:class:`~shared.ports.ReviewStore` on a Cosmos DB container (partition key ``/id``)."""

    def __init__(self, container: ContainerProxy, max_attempts: int = MAX_CONFLICT_ATTEMPTS):
        self._c = container
        self._max_attempts = max_attempts

    def _read(self, item_id: str) -> tuple[ReviewItem, str] | None:
        try:
            doc = self._c.read_item(item_id, partition_key=item_id)
        except cosmos_errors.CosmosResourceNotFoundError:
            return None
        return ReviewItem.model_validate(_clean(doc)), doc["_etag"]

    def get(self, item_id: str) -> ReviewItem | None:
        try:
            found = self._read(item_id)
        except AzureError as exc:
            raise azure_error(exc, "cosmos review read") from exc
        return found[0] if found else None

    def update(self, item_id: str, mutate: Callable[[ReviewItem | None], ReviewItem | None]) -> ReviewItem | None:
        for attempt in range(1, self._max_attempts + 1):
            try:
                found = self._read(item_id)
                item, etag = found if found else (None, None)
                new = mutate(item)
                if new is None:
                    return None
                body = new.model_dump(mode="json")
                if etag is None:
                    self._c.create_item(body)
                else:
                    self._c.replace_item(item_id, body, etag=etag, match_condition=MatchConditions.IfNotModified)
                return new
            except (cosmos_errors.CosmosAccessConditionFailedError, cosmos_errors.CosmosResourceExistsError):
                log.info("review item %s changed concurrently (attempt %d); retrying", item_id, attempt)
            except AzureError as exc:
                raise azure_error(exc, "cosmos review update") from exc
        raise TransientError(f"review item {item_id} kept changing: {self._max_attempts} ETag conflicts in a row")

    def delete(self, item_id: str) -> bool:
        try:
            self._c.delete_item(item_id, partition_key=item_id)
            return True
        except cosmos_errors.CosmosResourceNotFoundError:
            return False
        except AzureError as exc:
            raise azure_error(exc, "cosmos review delete") from exc

    def _query(self, query: str, parameters: list[dict[str, object]]) -> list[ReviewItem]:
        try:
            return [ReviewItem.model_validate(_clean(d)) for d in
                    self._c.query_items(query, parameters=parameters, enable_cross_partition_query=True)]
        except AzureError as exc:
            raise azure_error(exc, "cosmos review query") from exc

    def recent(self, status: str | None = None, limit: int = 500) -> list[ReviewItem]:
        params: list[dict[str, object]] = [{"name": "@s", "value": status}] if status else []
        where = "WHERE c.status = @s " if status else ""
        return self._query(f"SELECT TOP {int(limit)} * FROM c {where}ORDER BY c.last_seen_ms DESC", params)

    def items_of_user(self, user_key: str) -> list[ReviewItem]:
        return self._query("SELECT * FROM c WHERE ARRAY_CONTAINS(c.user_keys, @u)", [{"name": "@u", "value": user_key}])

    def seen_between(self, start_ms: int, end_ms: int, status: str | None = None) -> list[ReviewItem]:
        params: list[dict[str, object]] = [{"name": "@a", "value": int(start_ms)}, {"name": "@b", "value": int(end_ms)}]
        where = "c.last_seen_ms >= @a AND c.last_seen_ms < @b"
        if status:
            where += " AND c.status = @s"
            params.append({"name": "@s", "value": status})
        items = self._query(f"SELECT * FROM c WHERE {where}", params)
        return sorted(items, key=lambda i: (i.last_seen_ms, i.id))


class CosmosCatalogStore:
    """:class:`~shared.ports.CatalogStore` on a Cosmos DB container: ``v<n>`` per version, ``current`` a copy of
    the newest. Publishing creates ``v<n>`` (a second publisher of the same number gets 409) and then replaces
    ``current`` with ``If-Match``; a reader needs one point read."""

    def __init__(self, container: ContainerProxy):
        self._c = container

    @staticmethod
    def _doc_id(version: int) -> str:
        return f"v{version:08d}"

    def _read(self, doc_id: str) -> tuple[CatalogVersion, str] | None:
        try:
            doc = self._c.read_item(doc_id, partition_key=doc_id)
        except cosmos_errors.CosmosResourceNotFoundError:
            return None
        return CatalogVersion.model_validate(_clean(doc)), doc["_etag"]

    def current(self) -> CatalogVersion | None:
        try:
            found = self._read(CURRENT)
        except AzureError as exc:
            raise azure_error(exc, "cosmos catalog read") from exc
        return found[0] if found else None

    def get(self, version: int) -> CatalogVersion | None:
        try:
            found = self._read(self._doc_id(version))
        except AzureError as exc:
            raise azure_error(exc, "cosmos catalog read") from exc
        return found[0] if found else None

    def history(self, limit: int = 50) -> list[CatalogVersion]:
        try:
            docs = self._c.query_items(f"SELECT TOP {int(limit)} * FROM c WHERE c.id != @cur ORDER BY c.version DESC",
                                       parameters=[{"name": "@cur", "value": CURRENT}],
                                       enable_cross_partition_query=True)
            return [CatalogVersion.model_validate(_clean(d)) for d in docs]
        except AzureError as exc:
            raise azure_error(exc, "cosmos catalog query") from exc

    def publish(self, version: CatalogVersion) -> CatalogVersion:
        try:
            found = self._read(CURRENT)
            current, etag = found if found else (None, None)
            expected = (current.version if current else 0) + 1
            if version.version != expected:
                raise CatalogConflict(f"version {version.version} cannot be published: the current version is "
                                      f"{expected - 1}")
            body = version.model_dump(mode="json")
            try:
                self._c.create_item({**body, "id": self._doc_id(version.version)})
            except cosmos_errors.CosmosResourceExistsError:
                raise CatalogConflict(f"version {version.version} was published by someone else meanwhile") from None
            try:
                if etag is None:
                    self._c.create_item({**body, "id": CURRENT})
                else:
                    self._c.replace_item(CURRENT, {**body, "id": CURRENT}, etag=etag,
                                         match_condition=MatchConditions.IfNotModified)
            except (cosmos_errors.CosmosAccessConditionFailedError, cosmos_errors.CosmosResourceExistsError):
                raise CatalogConflict("another version became current meanwhile") from None
            return version
        except AzureError as exc:
            raise azure_error(exc, "cosmos catalog publish") from exc


class CosmosAuditLog:
    """:class:`~shared.ports.AuditLog` on a Cosmos DB container (append only)."""

    def __init__(self, container: ContainerProxy):
        self._c = container

    def record(self, entry: AuditEntry) -> None:
        try:
            self._c.create_item(entry.model_dump(mode="json"))
        except AzureError as exc:
            raise azure_error(exc, "cosmos audit write") from exc

    def recent(self, limit: int = 100, action_prefix: str | None = None) -> list[AuditEntry]:
        params: list[dict[str, object]] = [{"name": "@p", "value": action_prefix}] if action_prefix else []
        where = "WHERE STARTSWITH(c.action, @p) " if action_prefix else ""
        try:
            docs = self._c.query_items(f"SELECT TOP {int(limit)} * FROM c {where}ORDER BY c.at_ms DESC",
                                       parameters=params, enable_cross_partition_query=True)
            return [AuditEntry.model_validate(_clean(d)) for d in docs]
        except AzureError as exc:
            raise azure_error(exc, "cosmos audit query") from exc
