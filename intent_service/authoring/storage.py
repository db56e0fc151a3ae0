"""The storage port of the authoring service, and its two adapters.

Everything the authoring service keeps (projects, jobs, trained-model records and their content,
deployment records, the audit log) is a *blob*: a name, bytes and an ETag. The port is small on
purpose, so that the in-memory fake and Azure Blob Storage (Azurite locally) can be held to the same
contract test (``tests/test_authoring_storage.py``):

* ``read(name)`` -> ``Blob`` or ``None``;
* ``write(name, data, if_match=etag | if_none_match=True)`` -> the new ETag; a failed condition raises
  ``PreconditionFailed`` (optimistic concurrency: this is how two replicas never overwrite each
  other's deployment changes, and how a swap is one atomic write);
* ``delete(name, if_match=None)`` -> ``True`` if it existed;
* ``list(prefix)`` -> ``BlobInfo`` (name, etag, size) sorted by name; one listing tells a replica
  which deployment records changed, without reading them.
"""
from __future__ import annotations

import hashlib
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Protocol, Tuple


class StoreError(RuntimeError):
    """The store could not be reached or answered an error."""


class PreconditionFailed(StoreError):
    """``if_match`` / ``if_none_match`` did not hold: someone else wrote first."""


@dataclass(frozen=True)
class Blob:
    data: bytes
    etag: str


@dataclass(frozen=True)
class BlobInfo:
    name: str
    etag: str
    size: int


class BlobStore(Protocol):
    def read(self, name: str) -> Optional[Blob]: ...

    def write(self, name: str, data: bytes, *, if_match: Optional[str] = None,
              if_none_match: bool = False) -> str: ...

    def delete(self, name: str, *, if_match: Optional[str] = None) -> bool: ...

    def list(self, prefix: str = "") -> List[BlobInfo]: ...

    def describe(self) -> str: ...


class MemoryBlobStore:
    """In-process fake of the port (tests, a single replica without Azurite). Thread-safe."""

    def __init__(self) -> None:
        self._blobs: Dict[str, Tuple[bytes, str]] = {}
        self._lock = threading.Lock()

    def describe(self) -> str:
        return "memory"

    def read(self, name: str) -> Optional[Blob]:
        with self._lock:
            item = self._blobs.get(name)
        return Blob(item[0], item[1]) if item else None

    def write(self, name: str, data: bytes, *, if_match: Optional[str] = None,
              if_none_match: bool = False) -> str:
        data = bytes(data)
        with self._lock:
            current = self._blobs.get(name)
            if if_none_match and current is not None:
                raise PreconditionFailed(f"{name} already exists")
            if if_match is not None and (current is None or current[1] != if_match):
                raise PreconditionFailed(f"{name} changed (etag mismatch)")
            etag = f'"{uuid.uuid4().hex}"'
            self._blobs[name] = (data, etag)
            return etag

    def delete(self, name: str, *, if_match: Optional[str] = None) -> bool:
        with self._lock:
            current = self._blobs.get(name)
            if current is None:
                return False
            if if_match is not None and current[1] != if_match:
                raise PreconditionFailed(f"{name} changed (etag mismatch)")
            del self._blobs[name]
            return True

    def list(self, prefix: str = "") -> List[BlobInfo]:
        with self._lock:
            items = [(n, v) for n, v in self._blobs.items() if n.startswith(prefix)]
        return [BlobInfo(n, v[1], len(v[0])) for n, v in sorted(items)]


class AzureBlobStore:
    """Azure Blob Storage (or Azurite) through ``azure-storage-blob``: one container, an optional name
    prefix. ETags are the service's own; conditions map to ``If-Match`` / ``If-None-Match: *``."""

    def __init__(self, container_client: Any, prefix: str = "", create_container: bool = True) -> None:
        self._cc = container_client
        self._prefix = prefix
        self._ensured = not create_container

    def _ensure(self) -> None:
        """Create the container on first use (Azurite); on Azure, Bicep creates it."""
        if self._ensured:
            return
        from azure.core.exceptions import AzureError, ResourceExistsError

        try:
            self._cc.create_container()
        except ResourceExistsError:
            pass
        except AzureError as exc:
            raise StoreError(f"create container: {type(exc).__name__}: {_short(exc)}") from None
        self._ensured = True

    @classmethod
    def from_connection_string(cls, conn: str, container: str, prefix: str = "") -> "AzureBlobStore":
        from azure.storage.blob import ContainerClient

        return cls(ContainerClient.from_connection_string(conn, container, **_client_options()), prefix)

    @classmethod
    def from_account_url(cls, account_url: str, container: str, prefix: str = "",
                         client_id: Optional[str] = None) -> "AzureBlobStore":
        """Entra ID (managed identity on Azure): the identity needs Storage Blob Data Contributor on the
        container. The container must exist (Bicep creates it); it is not created here."""
        from azure.identity import DefaultAzureCredential, ManagedIdentityCredential
        from azure.storage.blob import ContainerClient

        cred = ManagedIdentityCredential(client_id=client_id) if client_id else DefaultAzureCredential()
        cc = ContainerClient(account_url, container, credential=cred, **_client_options())
        return cls(cc, prefix, create_container=False)

    def describe(self) -> str:
        return f"azure-blob container {self._cc.container_name!r} at {self._cc.url.split('?')[0]}"

    def _name(self, name: str) -> str:
        return self._prefix + name

    def read(self, name: str) -> Optional[Blob]:
        from azure.core.exceptions import AzureError, ResourceNotFoundError

        self._ensure()

        try:
            downloader = self._cc.download_blob(self._name(name))
            data = downloader.readall()
            return Blob(data, _quoted(downloader.properties.etag))
        except ResourceNotFoundError:
            return None
        except AzureError as exc:
            raise StoreError(f"read {name}: {type(exc).__name__}: {_short(exc)}") from None

    def write(self, name: str, data: bytes, *, if_match: Optional[str] = None,
              if_none_match: bool = False) -> str:
        from azure.core import MatchConditions
        from azure.core.exceptions import (AzureError, ResourceExistsError, ResourceModifiedError,
                                           ResourceNotFoundError)

        self._ensure()

        kwargs: Dict[str, Any] = {"overwrite": not if_none_match}
        if if_match is not None:
            kwargs.update(etag=if_match, match_condition=MatchConditions.IfNotModified)
        try:
            props = self._cc.get_blob_client(self._name(name)).upload_blob(bytes(data), **kwargs)
            return _quoted(props["etag"])
        except (ResourceExistsError, ResourceModifiedError):
            raise PreconditionFailed(f"{name}: condition not met") from None
        except ResourceNotFoundError:  # If-Match on a blob that no longer exists
            raise PreconditionFailed(f"{name}: no longer exists") from None
        except AzureError as exc:
            raise StoreError(f"write {name}: {type(exc).__name__}: {_short(exc)}") from None

    def delete(self, name: str, *, if_match: Optional[str] = None) -> bool:
        from azure.core import MatchConditions
        from azure.core.exceptions import AzureError, ResourceModifiedError, ResourceNotFoundError

        self._ensure()

        kwargs: Dict[str, Any] = {}
        if if_match is not None:
            kwargs.update(etag=if_match, match_condition=MatchConditions.IfNotModified)
        try:
            self._cc.delete_blob(self._name(name), **kwargs)
            return True
        except ResourceNotFoundError:
            return False
        except ResourceModifiedError:
            raise PreconditionFailed(f"{name}: condition not met") from None
        except AzureError as exc:
            raise StoreError(f"delete {name}: {type(exc).__name__}: {_short(exc)}") from None

    def list(self, prefix: str = "") -> List[BlobInfo]:
        from azure.core.exceptions import AzureError

        self._ensure()

        n = len(self._prefix)
        try:
            items = [BlobInfo(b.name[n:], _quoted(b.etag), b.size or 0)
                     for b in self._cc.list_blobs(name_starts_with=self._name(prefix))]
        except AzureError as exc:
            raise StoreError(f"list {prefix}: {type(exc).__name__}: {_short(exc)}") from None
        return sorted(items, key=lambda b: b.name)


def _client_options() -> dict:
    # short timeouts and few retries: a replica's sync loop retries on its own schedule
    return {"connection_timeout": 5, "read_timeout": 30, "retry_total": 2}


def _quoted(etag: str) -> str:
    """ETags as the service sends them in headers (quoted); the SDK's listing drops the quotes."""
    etag = str(etag or "")
    return etag if etag.startswith(('"', 'W/"')) else f'"{etag}"'


def _short(exc: Exception) -> str:
    text = str(exc).splitlines()[0] if str(exc) else ""
    return text[:300]


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
