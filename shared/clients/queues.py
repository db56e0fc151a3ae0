"""Storage queue client (:class:`~shared.ports.QueuePort`, ``azure-storage-queue`` 12.x) for what output bindings
cannot do.

Stage-to-stage messages travel through queue *output bindings* (the host writes
them when the function succeeds, and wakes the target listener at once). This
client covers the rest: delayed re-sends (SendBird 429 ``X-RateLimit-RetryAfter``),
poison records with a reason, and operations (peek, receive/delete/release for replays, queue depth).
Errors: :class:`~shared.errors.TransientError` / :class:`~shared.errors.PermanentError` by
:data:`shared.clients.errors.AZURE_ERRORS`.

Encoding: messages are encoded exactly as the queue trigger expects, per
``host.json`` ``extensions.queues.messageEncoding`` (``base64``: UTF-8 text,
base64-encoded, via ``TextBase64EncodePolicy``; ``none``: plain text). A
mismatch would send every message to the poison queue.
"""

from __future__ import annotations

import logging
from typing import Literal

import requests
from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry
from azure.storage.queue import (
    QueueClient,
    QueueMessage,
    QueueServiceClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)

from shared.clients.errors import azure_error
from shared.models import PoisonRecord, poison_record_queue
from shared.ports import QueuedMessage

log = logging.getLogger(__name__)

#: The longest visibility delay Storage queues accept for a new message: 7 days, in seconds.
MAX_VISIBILITY_DELAY_SECONDS = 7 * 24 * 3600
#: Keep-alive connections to Storage per worker, like the intent client's. urllib3's default pool (10) is smaller
#: than the stages' concurrency (up to 64 invocations per queue function): under load (ordering hold-backs,
#: reschedules) it logged "Connection pool is full, discarding connection" and opened a new connection per call.
POOL_SIZE = 64


def _transport() -> RequestsTransport:
    """azure-core's requests transport on a session with a :data:`POOL_SIZE` keep-alive pool, shared by every queue
    client of the service client, with the Storage SDK's own default timeouts (connect 20 s, read 60 s; a transport
    passed in does not get them); the SDK does its own retries."""
    session = requests.Session()
    session.trust_env = False  # no per-request proxy/netrc look-ups
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE,
                          max_retries=Retry(total=False, redirect=False, raise_on_status=False))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return RequestsTransport(session=session, session_owner=False, connection_timeout=20, read_timeout=60)


class QueueSender:
    """Sends and reads queue messages with the app's encoding. Create once per worker."""

    def __init__(self, connection_string: str, encoding: Literal["base64", "none"], *,
                 account_name: str = "", client_id: str = ""):
        """Connect with ``connection_string``, or when it is empty with a managed identity to
        ``https://{account_name}.queue.core.windows.net`` (the host's ``AzureWebJobsStorage__accountName``)."""
        if connection_string:
            self._service = QueueServiceClient.from_connection_string(connection_string, transport=_transport())
        else:
            from azure.identity import DefaultAzureCredential
            self._service = QueueServiceClient(
                f"https://{account_name}.queue.core.windows.net",
                credential=DefaultAzureCredential(managed_identity_client_id=client_id or None),
                transport=_transport())
        self._encoding = encoding
        self._clients: dict[str, QueueClient] = {}

    def client(self, queue: str) -> QueueClient:
        """A cached :class:`QueueClient` for ``queue`` using the app's encoding policies."""
        if queue not in self._clients:
            policies = (
                {"message_encode_policy": TextBase64EncodePolicy(), "message_decode_policy": TextBase64DecodePolicy()}
                if self._encoding == "base64" else {}
            )
            self._clients[queue] = self._service.get_queue_client(queue, **policies)
        return self._clients[queue]

    def ensure_queue(self, queue: str) -> None:
        """Create ``queue`` if it does not exist."""
        try:
            self.client(queue).create_queue()
        except ResourceExistsError:
            pass

    def send(self, queue: str, text: str, delay_seconds: float = 0, *, keep_forever: bool = False) -> None:
        """Put ``text`` (UTF-8 JSON) on ``queue``, invisible for ``delay_seconds`` (0..7 days); with
        ``keep_forever`` the message never expires (time-to-live -1; default: Storage's 7 days).

        Creates the queue when missing. Raises :class:`TransientError` if Storage fails.
        """
        delay = max(0, min(int(round(delay_seconds)), MAX_VISIBILITY_DELAY_SECONDS))
        options = {"visibility_timeout": delay or None, "time_to_live": -1 if keep_forever else None}
        try:
            try:
                self.client(queue).send_message(text, **options)
            except ResourceNotFoundError:
                self.ensure_queue(queue)
                self.client(queue).send_message(text, **options)
        except AzureError as exc:
            raise azure_error(exc, f"send to queue {queue}") from exc

    def send_poison(self, record: PoisonRecord) -> None:
        """Write ``record`` to ``<record.source_queue>-poison-records`` (never expires: an operator decides)."""
        self.send(poison_record_queue(record.source_queue), record.model_dump_json(), keep_forever=True)
        log.error("poisoned message from %s: %s (correlation_id=%s, message_id=%s, dequeue_count=%d)",
                  record.source_queue, record.reason, record.correlation_id, record.message_id,
                  record.dequeue_count)

    def peek(self, queue: str, max_messages: int = 32) -> list[QueuedMessage]:
        """Up to ``max_messages`` (1..32) visible messages of ``queue`` without hiding them."""
        try:
            return [_queued(m) for m in self.client(queue).peek_messages(max_messages=max_messages)]
        except ResourceNotFoundError:
            return []
        except AzureError as exc:
            raise azure_error(exc, f"peek at queue {queue}") from exc

    def receive(self, queue: str, max_messages: int = 32, visibility_timeout: int = 30) -> list[QueuedMessage]:
        """Up to ``max_messages`` (1..32) visible messages, hidden for ``visibility_timeout`` seconds."""
        try:
            return [_queued(m) for m in self.client(queue).receive_messages(
                messages_per_page=max_messages, max_messages=max_messages, visibility_timeout=visibility_timeout)]
        except ResourceNotFoundError:
            return []
        except AzureError as exc:
            raise azure_error(exc, f"receive from queue {queue}") from exc

    def delete(self, queue: str, message: QueuedMessage) -> None:
        """Delete a received message."""
        try:
            self.client(queue).delete_message(message.id, message.pop_receipt)
        except AzureError as exc:
            raise azure_error(exc, f"delete from queue {queue}") from exc

    def release(self, queue: str, message: QueuedMessage) -> None:
        """Make a received message visible again now."""
        try:
            self.client(queue).update_message(message.id, message.pop_receipt, visibility_timeout=0)
        except AzureError as exc:
            raise azure_error(exc, f"release a message of queue {queue}") from exc

    def depth(self, queue: str) -> int:
        """Approximate number of messages in ``queue`` (0 when it does not exist)."""
        try:
            return int(self.client(queue).get_queue_properties().approximate_message_count or 0)
        except ResourceNotFoundError:
            return 0
        except AzureError as exc:
            raise azure_error(exc, f"read the depth of queue {queue}") from exc


def _queued(m: QueueMessage) -> QueuedMessage:
    inserted = int(m.inserted_on.timestamp() * 1000) if m.inserted_on else 0
    return QueuedMessage(id=m.id, content=m.content, inserted_at_ms=inserted, dequeue_count=m.dequeue_count or 0,
                         pop_receipt=m.pop_receipt or "")
