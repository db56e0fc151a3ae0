"""SendBird webhook signatures.

Spec: SendBird Platform API v3, "Webhooks": header ``x-sendbird-signature`` is
the lowercase hex HMAC-SHA256 of the raw request body, keyed with the
application's master API token.
"""

from __future__ import annotations

import hashlib
import hmac

SIGNATURE_HEADER = "x-sendbird-signature"


def sign(body: bytes, api_token: str) -> str:
    """Hex HMAC-SHA256 of ``body`` (raw bytes) keyed with ``api_token``; 64 lowercase hex chars."""
    return hmac.new(api_token.encode("utf-8"), body, hashlib.sha256).hexdigest()


def verify(body: bytes, signature: str | None, api_token: str) -> bool:
    """True when ``signature`` matches ``body``; constant-time comparison, case-insensitive hex.

    Any header value is handled (compared as UTF-8 bytes), so a non-ASCII header is a mismatch, never an error.
    """
    if not signature:
        return False
    given = signature.strip().lower().encode("utf-8", errors="replace")
    return hmac.compare_digest(sign(body, api_token).encode("ascii"), given)
