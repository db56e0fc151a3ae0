"""The gateway's error hierarchy: what to do with a message that failed.

- :class:`TransientError`: the failure may go away (timeout, 5xx, 503 while the
  intent service warms up, 412/429 from Cosmos DB after retries). The queue
  trigger raises it so the host retries after ``visibilityTimeout``; on the last
  attempt (``maxDequeueCount``) the message is poisoned with the reason.
- :class:`PermanentError`: retrying cannot help (undecodable message, unknown
  version, a 4xx from SendBird other than 429). The message goes to
  ``<queue>-poison`` at once with the reason.
- :class:`RateLimited`: a transient error that carries how long to wait.
"""

from __future__ import annotations


class GatewayError(Exception):
    """Base class. ``reason`` is a short, log-friendly explanation."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class TransientError(GatewayError):
    """Retry later: the same input may succeed."""


class PermanentError(GatewayError):
    """Do not retry: the same input will fail again. Poison it with the reason."""


class RateLimited(TransientError):
    """The remote asked us to wait ``retry_after_seconds`` (e.g. SendBird 429 ``X-RateLimit-RetryAfter``)."""

    def __init__(self, reason: str, retry_after_seconds: float):
        super().__init__(reason)
        self.retry_after_seconds = retry_after_seconds
