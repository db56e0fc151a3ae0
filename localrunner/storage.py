"""A small Azure Storage queue client for the host side of the runner (REST API, Shared Key or SAS).

The host does the queue I/O of every trigger and output binding (polling, leases, deletes, writes); on Azure that
is the .NET host's job and costs the Python worker nothing. Here it runs in the runner's Python process, and
``azure-storage-queue``'s pipeline (policies, retries, XML models) cost several ms of CPU per call: at a few
hundred calls per second it was most of the runner's CPU. This client does the six operations the host needs
with ``http.client`` on pooled keep-alive connections:

=====================  ==========================================================  =====================
operation              request                                                     success
=====================  ==========================================================  =====================
create queue           ``PUT /<queue>``                                            201, 204 (exists)
put message            ``POST /<queue>/messages``                                  201
get messages           ``GET /<queue>/messages?numofmessages=N&visibilitytimeout``  200 (XML list)
update visibility      ``PUT /<queue>/messages/<id>?popreceipt=..&visibilitytimeout``  204 (new pop receipt)
delete message         ``DELETE /<queue>/messages/<id>?popreceipt=..``             204
queue properties       ``GET /<queue>?comp=metadata``                              200
=====================  ==========================================================  =====================

Errors raise :class:`StorageError` (HTTP status, ``x-ms-error-code``); connection failures raise ``OSError``.
Idle keep-alive connections the server closed, or older than :data:`MAX_IDLE_SECONDS`, are not reused, and a
request that fails on a reused connection before any answer arrived is sent once more on a new connection (the
server closed it as the request went out), as urllib3 does.

Connection strings: ``UseDevelopmentStorage=true``, or ``AccountName`` + ``AccountKey`` (Shared Key) or
``SharedAccessSignature`` with ``QueueEndpoint`` or ``DefaultEndpointsProtocol`` + ``EndpointSuffix``.
"""
from __future__ import annotations

import base64
import datetime as _dt
import email.utils
import hashlib
import hmac
import http.client
import select
import threading
import time
import urllib.parse
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple
from xml.sax.saxutils import escape

API_VERSION = "2020-10-02"
DEV_ACCOUNT = "devstoreaccount1"
DEV_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
DEV_QUEUE_ENDPOINT = f"http://127.0.0.1:10001/{DEV_ACCOUNT}"
_RETRYABLE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class StorageError(Exception):
    """The storage service answered with an error status."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.error_code = code


@dataclass
class StoredMessage:
    """A received message (the attributes the runner reads, named like the SDK's ``QueueMessage``)."""

    id: str
    pop_receipt: Optional[str]
    dequeue_count: int
    content: str
    inserted_on: Optional[_dt.datetime]
    expires_on: Optional[_dt.datetime]
    next_visible_on: Optional[_dt.datetime]


@dataclass(frozen=True)
class Account:
    """Where a connection string points: the queue endpoint and the credential."""

    name: str
    endpoint: str  # scheme://host[:port][/path], no trailing slash
    key: Optional[bytes] = None  # Shared Key (decoded)
    sas: str = ""  # SAS token without '?'

    @classmethod
    def from_connection_string(cls, conn: str) -> "Account":
        """Parse a storage connection string; raises ValueError when it has no usable queue endpoint/credential."""
        parts: Dict[str, str] = {}
        for item in conn.split(";"):
            if "=" in item:
                k, v = item.split("=", 1)
                parts[k.strip().lower()] = v.strip()
        if parts.get("usedevelopmentstorage", "").lower() == "true":
            return cls(DEV_ACCOUNT, DEV_QUEUE_ENDPOINT, base64.b64decode(DEV_KEY))
        name = parts.get("accountname", "")
        endpoint = parts.get("queueendpoint", "")
        if not endpoint:
            if not name:
                raise ValueError("connection string has neither QueueEndpoint nor AccountName")
            scheme = parts.get("defaultendpointsprotocol", "https")
            endpoint = f"{scheme}://{name}.queue.{parts.get('endpointsuffix', 'core.windows.net')}"
        key = parts.get("accountkey")
        sas = parts.get("sharedaccesssignature", "").lstrip("?")
        if not key and not sas:
            raise ValueError("connection string has neither AccountKey nor SharedAccessSignature")
        if not name:
            name = (urllib.parse.urlsplit(endpoint).hostname or "").split(".")[0]
        return cls(name, endpoint.rstrip("/"), base64.b64decode(key) if key else None, sas)


#: an idle connection older than this is closed rather than reused (Node's server, Azurite, closes keep-alive
#: connections after 5 s idle; Azure Storage after minutes)
MAX_IDLE_SECONDS = 4.0


def _dropped(conn: http.client.HTTPConnection) -> bool:
    """The server closed (or wrote to) this idle connection: it is readable before we sent anything."""
    sock = conn.sock
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _Pool:
    """Keep-alive connections to one endpoint, reused LIFO by any thread. An idle connection is checked before
    reuse (closed by the server, or idle longer than :data:`MAX_IDLE_SECONDS`: dropped), as urllib3 does."""

    def __init__(self, scheme: str, host: str, port: Optional[int], timeout: float):
        self.scheme, self.host, self.port, self.timeout = scheme, host, port, timeout
        self._idle: List[Tuple[http.client.HTTPConnection, float]] = []
        self._lock = threading.Lock()

    def get(self, fresh: bool = False) -> Tuple[http.client.HTTPConnection, bool]:
        """A connection and whether it was reused (``fresh``: a new one)."""
        while not fresh:
            with self._lock:
                if not self._idle:
                    break
                conn, since = self._idle.pop()
            if time.monotonic() - since > MAX_IDLE_SECONDS or _dropped(conn):
                conn.close()
                continue
            return conn, True
        cls = http.client.HTTPSConnection if self.scheme == "https" else http.client.HTTPConnection
        return cls(self.host, self.port, timeout=self.timeout), False

    def put(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            self._idle.append((conn, time.monotonic()))

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for c, _ in idle:
            c.close()


def _http_date(value: Optional[str]) -> Optional[_dt.datetime]:
    return email.utils.parsedate_to_datetime(value) if value else None


class QueueClient:
    """One queue of one account. Thread-safe; share one :class:`_Pool` per endpoint through :class:`Storage`."""

    def __init__(self, account: Account, queue_name: str, pool: _Pool):
        self.account = account
        self.queue_name = queue_name
        self._pool = pool
        self._path = urllib.parse.urlsplit(account.endpoint).path.rstrip("/") + "/" + queue_name

    # -- operations
    def create_queue(self) -> bool:
        """True if created, False if it existed already."""
        try:
            status, _, _ = self._request("PUT", "")
        except StorageError as exc:
            if exc.status == 409:
                return False
            raise
        return status == 201

    def send_message(self, content: str) -> None:
        body = ('<?xml version="1.0" encoding="utf-8"?><QueueMessage><MessageText>'
                f"{escape(content)}</MessageText></QueueMessage>").encode("utf-8")
        self._request("POST", "/messages", body=body)

    def receive_messages(self, count: int, visibility_timeout: int) -> List[StoredMessage]:
        _, _, data = self._request("GET", "/messages", {"numofmessages": str(count),
                                                        "visibilitytimeout": str(int(visibility_timeout))})
        out = []
        for m in ET.fromstring(data) if data else []:
            f = {c.tag: (c.text or "") for c in m}
            out.append(StoredMessage(
                id=f["MessageId"], pop_receipt=f.get("PopReceipt"), dequeue_count=int(f.get("DequeueCount") or 0),
                content=f.get("MessageText", ""), inserted_on=_http_date(f.get("InsertionTime")),
                expires_on=_http_date(f.get("ExpirationTime")), next_visible_on=_http_date(f.get("TimeNextVisible"))))
        return out

    def update_message(self, message_id: str, pop_receipt: Optional[str], visibility_timeout: int) -> str:
        """Make the message visible again after ``visibility_timeout`` s; returns the new pop receipt."""
        _, headers, _ = self._request("PUT", f"/messages/{urllib.parse.quote(message_id)}",
                                      {"popreceipt": pop_receipt or "",
                                       "visibilitytimeout": str(int(visibility_timeout))})
        return headers.get("x-ms-popreceipt", "")

    def delete_message(self, message_id: str, pop_receipt: Optional[str]) -> None:
        self._request("DELETE", f"/messages/{urllib.parse.quote(message_id)}", {"popreceipt": pop_receipt or ""})

    def approximate_message_count(self) -> int:
        _, headers, _ = self._request("GET", "", {"comp": "metadata"})
        return int(headers.get("x-ms-approximate-messages-count", "0"))

    # -- HTTP
    def _request(self, method: str, sub: str, query: Optional[Dict[str, str]] = None,
                 body: bytes = b"") -> Tuple[int, Dict[str, str], bytes]:
        path = self._path + sub
        query = dict(query or {})
        qs = urllib.parse.urlencode(query)
        if self.account.sas:
            qs = f"{qs}&{self.account.sas}" if qs else self.account.sas
        url = path + (f"?{qs}" if qs else "")
        headers = {"x-ms-version": API_VERSION,
                   "x-ms-date": email.utils.formatdate(usegmt=True),
                   "Content-Length": str(len(body))}
        if body:
            headers["Content-Type"] = "application/xml"
        if self.account.key is not None and not self.account.sas:
            headers["Authorization"] = self._shared_key(method, path, query, headers, len(body))
        for attempt in (1, 2):
            conn, reused = self._pool.get(fresh=attempt > 1)
            try:
                conn.request(method, url, body=body or None, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
            except _RETRYABLE:
                conn.close()
                if reused and attempt == 1:
                    continue  # the server closed the idle connection as we sent: once more on a new one
                raise
            except BaseException:
                conn.close()
                raise
            if resp.will_close:
                conn.close()
            else:
                self._pool.put(conn)
            rheaders = {k.lower(): v for k, v in resp.getheaders()}
            if resp.status >= 300:
                raise StorageError(resp.status, rheaders.get("x-ms-error-code", ""), data[:300].decode("utf-8",
                                                                                                       "replace"))
            return resp.status, rheaders, data
        raise AssertionError("unreachable")

    def _shared_key(self, method: str, path: str, query: Dict[str, str], headers: Dict[str, str],
                    length: int) -> str:
        """``SharedKey account:signature`` (Authorize with Shared Key, version 2015-02-21 and later)."""
        canonical_headers = "".join(f"{k.lower()}:{v}\n" for k, v in sorted(headers.items(), key=lambda kv: kv[0].lower())
                                    if k.lower().startswith("x-ms-"))
        resource = f"/{self.account.name}{urllib.parse.quote(path)}" + "".join(
            f"\n{k.lower()}:{v}" for k, v in sorted(query.items()))
        to_sign = "\n".join([method, "", "", str(length) if length else "", "", headers.get("Content-Type", ""),
                             "", "", "", "", "", ""]) + "\n" + canonical_headers + resource
        assert self.account.key is not None
        sig = base64.b64encode(hmac.new(self.account.key, to_sign.encode("utf-8"), hashlib.sha256).digest())
        return f"SharedKey {self.account.name}:{sig.decode('ascii')}"


class Storage:
    """Queue clients by (connection string, queue name), one connection pool per endpoint."""

    def __init__(self, timeout: float = 60.0):
        self._timeout = timeout
        self._lock = threading.Lock()
        self._pools: Dict[str, _Pool] = {}
        self._clients: Dict[Tuple[str, str], QueueClient] = {}

    def client(self, connection_string: str, queue_name: str) -> QueueClient:
        key = (connection_string, queue_name)
        with self._lock:
            c = self._clients.get(key)
            if c is None:
                account = Account.from_connection_string(connection_string)
                u = urllib.parse.urlsplit(account.endpoint)
                pool = self._pools.get(f"{u.scheme}://{u.netloc}")
                if pool is None:
                    pool = self._pools[f"{u.scheme}://{u.netloc}"] = _Pool(u.scheme, u.hostname or "", u.port,
                                                                            self._timeout)
                c = self._clients[key] = QueueClient(account, queue_name, pool)
            return c

    def close(self) -> None:
        with self._lock:
            pools = list(self._pools.values())
        for p in pools:
            p.close()
