"""SendBird Platform API client (:class:`~shared.ports.SendBirdPort`): send the bot's message proactively.

Spec: SendBird Chat Platform API v3, "Bot interface: send a bot's message"
``POST {base}/v3/bots/{bot_userid}/send`` with headers ``Api-Token`` and
``Content-Type: application/json; charset=utf8`` and body ``message``,
``channel_url``, ``message_type`` ("MESG"), ``dedup_id``, ``data``
(``../shared/reference/sendbird.md``).

Time budget: connect timeout 2 s, read timeout ``SENDBIRD_TIMEOUT_SECONDS``;
two in-process retries with back-off on connection errors and 500/502/503/504
(safe: every send carries a ``dedup_id``). Then:

- 429 -> :class:`~shared.errors.RateLimited` with ``X-RateLimit-RetryAfter`` seconds
  (the caller reschedules the message; nothing sleeps here);
- other exceptions and answers by the tables of :mod:`shared.clients.errors`: timeouts, connection errors,
  5xx -> :class:`~shared.errors.TransientError`; any other 4xx, and any 1xx/3xx ->
  :class:`~shared.errors.PermanentError` (SendBird's error ``code`` and ``message`` in the reason). Redirects are
  never followed: ``Api-Token`` must never reach another host, and a 302 turned into a GET is not a sent message.
"""

from __future__ import annotations

from urllib.parse import quote

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from shared import timing
from shared.clients.errors import http_status_error, requests_error
from shared.errors import RateLimited
from shared.ports import TelemetryPort
from shared.settings import Settings
from shared.telemetry import DISABLED

#: Wait used when a 429 carries no usable ``X-RateLimit-RetryAfter`` header, in seconds.
DEFAULT_RETRY_AFTER_SECONDS = 1.0


class SendBirdClient:
    """Sends bot messages. One instance (one keep-alive connection pool) per worker."""

    def __init__(self, settings: Settings, telemetry: TelemetryPort = DISABLED):
        self._telemetry = telemetry
        self._url = f"{settings.sendbird_base_url}/v3/bots/{quote(settings.sendbird_bot_user_id, safe='')}/send"
        self._timeout = (min(2.0, settings.sendbird_timeout_seconds), settings.sendbird_timeout_seconds)
        self._target = settings.sendbird_api_base_url.host or ""
        self._session = requests.Session()
        self._session.trust_env = False  # no per-request proxy/netrc look-ups
        retry = Retry(total=2, connect=2, read=2, status=2, status_forcelist=(500, 502, 503, 504),
                      allowed_methods=frozenset({"POST"}), backoff_factor=0.2,
                      respect_retry_after_header=False, raise_on_status=False)
        self._session.mount("http://", HTTPAdapter(max_retries=retry, pool_maxsize=32))
        self._session.mount("https://", HTTPAdapter(max_retries=retry, pool_maxsize=32))
        self._session.headers.update({"Api-Token": settings.sendbird_api_token,
                                      "Content-Type": "application/json; charset=utf8"})

    def send_bot_message(self, channel_url: str, message: str, dedup_id: str, data: str = "") -> int:
        """Send ``message`` (text) to ``channel_url`` as the bot; returns SendBird's ``message_id``.

        ``dedup_id`` lets SendBird drop a repeated send of the same reply;
        ``data`` is an opaque string stored with the message (we put the correlation id there).
        """
        body = {"message_type": "MESG", "message": message, "channel_url": channel_url, "dedup_id": dedup_id}
        if data:
            body["data"] = data
        try:
            with timing.dependency(self._telemetry, "sendbird", "POST /v3/bots/{bot_userid}/send",
                                   self._target) as dep:
                resp = self._session.post(self._url, json=body, timeout=self._timeout, allow_redirects=False)
                dep.set_status_code(resp.status_code)
        except requests.RequestException as exc:
            raise requests_error(exc, "SendBird") from exc
        if resp.status_code == 429:
            raise RateLimited(f"SendBird rate limit: {_error_text(resp)}",
                              _retry_after(resp.headers.get("X-RateLimit-RetryAfter")))
        error = http_status_error(resp.status_code)
        if error is not None:
            raise error(f"SendBird answered ({resp.status_code}): {_error_text(resp)}")
        try:
            return int(resp.json()["message_id"])
        except (ValueError, KeyError, TypeError):
            return 0  # sent (2xx) but the body lacks an id: do not resend


def _retry_after(header: str | None) -> float:
    try:
        value = float(header) if header is not None else DEFAULT_RETRY_AFTER_SECONDS
    except ValueError:
        value = DEFAULT_RETRY_AFTER_SECONDS
    return max(value, 0.0)


def _error_text(resp: requests.Response) -> str:
    try:
        err = resp.json()
        return f"code {err.get('code')}: {err.get('message')}"
    except ValueError:
        return resp.text[:200]
