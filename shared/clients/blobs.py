"""Blob Storage client (:class:`~shared.ports.BlobPort`, ``azure-storage-blob`` 12.x): the daily review exports.

Identity, as for the queue client (:mod:`shared.clients.queues`): the ``AzureWebJobsStorage`` connection string
locally (Azurite: its ``BlobEndpoint``), and in Azure, where that setting is empty, the account named by
``AzureWebJobsStorage__accountName`` at ``https://{account}.blob.core.windows.net`` with a managed identity
(``DefaultAzureCredential``; ``AzureWebJobsStorage__clientId`` for a user-assigned one). The identity needs
*Storage Blob Data Contributor* on the export container (``infra/main.bicep`` grants it on that container only).

Errors: :class:`~shared.errors.TransientError` / :class:`~shared.errors.PermanentError` by
:data:`shared.clients.errors.AZURE_ERRORS` (an invalid container or blob name is a permanent 400). Messages name
the container and blob, never a credential.
"""

from __future__ import annotations

import logging

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.blob import BlobServiceClient, ContainerClient, ContentSettings, ExponentialRetry

from shared.clients.errors import azure_error

log = logging.getLogger(__name__)

#: Seconds to wait for a connection and for each read from Storage (the SDK's defaults are 20 s / 60 s).
CONNECTION_TIMEOUT_SECONDS = 10
READ_TIMEOUT_SECONDS = 60
#: Retries of a failed request (connection errors, 408/429/5xx), a few seconds apart (the SDK's default back-off
#: starts at 15 s and grows threefold: a console download would hang for minutes while Storage is down).
RETRIES = 2


class BlobStore:
    """Reads and writes block blobs. Create once per worker (the SDK client keeps its connections)."""

    def __init__(self, connection_string: str, *, account_name: str = "", client_id: str = "",
                 retries: int = RETRIES):
        """Connect with ``connection_string``, or when it is empty with a managed identity to
        ``https://{account_name}.blob.core.windows.net``. Raises ``ValueError`` when neither is given."""
        retry = ExponentialRetry(initial_backoff=1, increment_base=2, retry_total=retries, random_jitter_range=1)
        if connection_string:
            self._service = BlobServiceClient.from_connection_string(
                connection_string, connection_timeout=CONNECTION_TIMEOUT_SECONDS, read_timeout=READ_TIMEOUT_SECONDS,
                retry_policy=retry)
        elif account_name:
            from azure.identity import DefaultAzureCredential
            self._service = BlobServiceClient(
                f"https://{account_name}.blob.core.windows.net",
                credential=DefaultAzureCredential(managed_identity_client_id=client_id or None),
                connection_timeout=CONNECTION_TIMEOUT_SECONDS, read_timeout=READ_TIMEOUT_SECONDS, retry_policy=retry)
        else:
            raise ValueError("a Storage connection string or an account name is required")
        self._containers: dict[str, ContainerClient] = {}

    def _container(self, container: str) -> ContainerClient:
        if container not in self._containers:
            self._containers[container] = self._service.get_container_client(container)
        return self._containers[container]

    def ensure_container(self, container: str) -> None:
        """Create ``container`` (private: no public access) if it does not exist."""
        try:
            self._container(container).create_container()
        except ResourceExistsError:
            pass

    def put(self, container: str, name: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        """Upload ``data`` as block blob ``name``, overwriting; creates the container when missing."""
        settings = ContentSettings(content_type=content_type)
        try:
            try:
                self._container(container).upload_blob(name, data, overwrite=True, content_settings=settings)
            except ResourceNotFoundError:
                self.ensure_container(container)
                self._container(container).upload_blob(name, data, overwrite=True, content_settings=settings)
        except AzureError as exc:
            raise azure_error(exc, f"write blob {container}/{name}") from exc
        log.info("wrote blob %s/%s (%d bytes)", container, name, len(data))

    def get(self, container: str, name: str) -> bytes | None:
        """The blob's bytes, or None when it (or its container) does not exist."""
        try:
            return self._container(container).download_blob(name).readall()
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise azure_error(exc, f"read blob {container}/{name}") from exc

    def names(self, container: str, prefix: str = "") -> list[str]:
        """Sorted names of the blobs starting with ``prefix``; empty when the container does not exist."""
        try:
            return sorted(b.name for b in self._container(container).list_blobs(name_starts_with=prefix or None))
        except ResourceNotFoundError:
            return []
        except AzureError as exc:
            raise azure_error(exc, f"list blobs of {container}") from exc

    def close(self) -> None:
        """Close the SDK client's connections."""
        self._service.close()
