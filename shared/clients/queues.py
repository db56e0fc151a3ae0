"""Storage queue client (``azure-storage-queue`` 12.x) for what output bindings cannot do.

Stage-to-stage messages travel through queue *output bindings* (the host writes
them when the function succeeds, and wakes the target listener at once). This
client covers the rest: delayed re-sends (SendBird 429 ``X-RateLimit-RetryAfter``),
poison records with a reason, and tooling (peek/receive).

Encoding: messages are encoded exactly as the queue trigger expects, per
``host.json`` ``extensions.queues.messageEncoding`` (``base64``: UTF-8 text,
base64-encoded, via ``TextBase64EncodePolicy``; ``none``: plain text). A
mismatch would send every message to the poison queue.
"""

from __future__ import annotations

import logging
from typing import Literal

from azure.core.exceptions import AzureError, ResourceExistsError, ResourceNotFoundError
from azure.storage.queue import (
    QueueClient,
    QueueMessage,
    QueueServiceClient,
    TextBase64DecodePolicy,
    TextBase64EncodePolicy,
)

from shared.errors import TransientError
from shared.models import PoisonRecord, poison_record_queue

log = logging.getLogger(__name__)

#: The longest visibility delay Storage queues accept for a new message: 7 days, in seconds.
MAX_VISIBILITY_DELAY_SECONDS = 7 * 24 * 3600


class QueueSender:
    """Sends and reads queue messages with the app's encoding. Create once per worker."""

    def __init__(self, connection_string: str, encoding: Literal["base64", "none"], *,
                 account_name: str = "", client_id: str = ""):
        """Connect with ``connection_string``, or when it is empty with a managed identity to
        ``https://{account_name}.queue.core.windows.net`` (the host's ``AzureWebJobsStorage__accountName``)."""
        if connection_string:
            self._service = QueueServiceClient.from_connection_string(connection_string)
        else:
            from azure.identity import DefaultAzureCredential
            self._service = QueueServiceClient(
                f"https://{account_name}.queue.core.windows.net",
                credential=DefaultAzureCredential(managed_identity_client_id=client_id or None))
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
            raise TransientError(f"cannot send to queue {queue}: {type(exc).__name__}: {exc}") from exc

    def send_poison(self, record: PoisonRecord) -> None:
        """Write ``record`` to ``<record.source_queue>-poison-records`` (never expires: an operator decides)."""
        self.send(poison_record_queue(record.source_queue), record.model_dump_json(), keep_forever=True)
        log.error("poisoned message from %s: %s (correlation_id=%s, message_id=%s, dequeue_count=%d)",
                  record.source_queue, record.reason, record.correlation_id, record.message_id,
                  record.dequeue_count)

    def peek(self, queue: str, max_messages: int = 32) -> list[QueueMessage]:
        """Up to ``max_messages`` (1..32) visible messages of ``queue`` without hiding them."""
        try:
            return list(self.client(queue).peek_messages(max_messages=max_messages))
        except ResourceNotFoundError:
            return []
