"""Announcing: CloudEvents 1.0 to a webhook, signed, retried with back-off, never in the way.

Every finished training job and every deployment change is one CloudEvents 1.0 event in structured
JSON mode (``Content-Type: application/cloudevents+json; charset=utf-8``), the schema Event Grid
accepts on a custom topic and delivers to webhooks::

    {"specversion": "1.0", "id": "<uuid>", "source": "/intent-service/projects/retail-bot",
     "type": "IntentService.Deployment.Swapped", "subject": "deployments/production",
     "time": "2026-12-05T10:00:00.123Z", "datacontenttype": "application/json", "data": {...}}

Types: ``IntentService.Training.Succeeded|Failed|Cancelled``,
``IntentService.Deployment.Deployed|Swapped|Deleted``.

Signature (the Standard Webhooks scheme): headers ``webhook-id`` (= the event id), ``webhook-timestamp``
(Unix seconds) and ``webhook-signature: v1,<base64 HMAC-SHA256(secret, "{id}.{timestamp}.{body}")>``;
``verify_signature`` checks one. Event Grid's ``aeg-event-type: Notification`` is sent too.

Delivery runs on one background thread fed by a bounded queue: ``emit`` never blocks and never raises.
A delivery that fails (connection error, 408, 429, 5xx) is retried with exponential back-off
(``backoff``, doubling, capped at 60 s, with jitter) up to ``max_attempts``; other 4xx answers are
final. Events still queued when the process stops are lost (logged).
"""
from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import hmac
import json
import logging
import queue
import random
import threading
import time
import uuid
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

if TYPE_CHECKING:
    import requests

log = logging.getLogger("intent_service.events")

CONTENT_TYPE = "application/cloudevents+json; charset=utf-8"


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def cloud_event(type_: str, source: str, subject: str, data: Dict[str, Any]) -> Dict[str, Any]:
    return {"specversion": "1.0", "id": str(uuid.uuid4()), "source": source, "type": type_,
            "subject": subject, "time": now_iso(), "datacontenttype": "application/json", "data": data}


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret.encode("utf-8"), f"{msg_id}.{timestamp}.".encode("utf-8") + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode("ascii")


def verify_signature(secret: str, headers: Dict[str, str], body: bytes, tolerance: float = 300.0) -> bool:
    """What a receiver runs: the signature matches and the timestamp is within ``tolerance`` seconds."""
    h = {k.lower(): v for k, v in headers.items()}
    try:
        ts = int(h["webhook-timestamp"])
        msg_id = h["webhook-id"]
        given = h["webhook-signature"].split()
    except (KeyError, ValueError):
        return False
    if abs(time.time() - ts) > tolerance:
        return False
    expected = sign(secret, msg_id, ts, body)
    return any(hmac.compare_digest(expected, g) for g in given)


class EventSink:
    def __init__(self, url: Optional[str], secret: Optional[str] = None, source: str = "/intent-service",
                 max_attempts: int = 6, backoff: float = 1.0, max_backoff: float = 60.0,
                 timeout: float = 5.0, capacity: int = 1000):
        self.url = url
        self.secret = secret
        self.source = source.rstrip("/") or "/intent-service"
        self.max_attempts = max(1, int(max_attempts))
        self.backoff = backoff
        self.max_backoff = max_backoff
        self.timeout = timeout
        self._queue: "queue.Queue" = queue.Queue(maxsize=capacity)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.delivered = 0
        self.failed = 0
        self.dropped = 0

    def start(self) -> None:
        if self.url and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="event-sink", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._queue.put_nowait(None) if not self._queue.full() else None
            self._thread.join(timeout=2)
        left = self._queue.qsize()
        if left:
            log.warning("%d event(s) not delivered at shutdown", left)

    def emit(self, type_: str, project: str, subject: str, data: Dict[str, Any]) -> Optional[Dict[str, Any]]:
        """Queue one event; returns it (or None without a webhook). Never blocks, never raises."""
        if not self.url:
            return None
        try:
            event = cloud_event(type_, f"{self.source}/projects/{project}", subject, data)
            self._queue.put_nowait((event, 1, 0.0))
            return event
        except queue.Full:
            self.dropped += 1
            log.error("event queue full: dropped %s for %s", type_, project)
        except Exception:  # an event must never fail the operation
            log.exception("could not queue event %s", type_)
        return None

    # ---- delivery
    def _run(self) -> None:
        import requests

        session = requests.Session()
        session.trust_env = False
        pending: List[Tuple[float, Dict[str, Any], int]] = []  # (due, event, attempt)
        while not self._stop.is_set():
            timeout = max(0.0, min((d for d, _, _ in pending), default=time.monotonic() + 0.5) - time.monotonic())
            try:
                item = self._queue.get(timeout=min(timeout, 0.5))
                if item is None:
                    continue
                event, attempt, _ = item
                pending.append((time.monotonic(), event, attempt))
            except queue.Empty:
                pass
            now = time.monotonic()
            due = [p for p in pending if p[0] <= now]
            pending = [p for p in pending if p[0] > now]
            for _, event, attempt in due:
                if self._stop.is_set():
                    break
                ok, final, why = self._deliver(session, event)
                if ok:
                    self.delivered += 1
                    log.info("event %s %s delivered (attempt %d)", event["type"], event["id"], attempt)
                elif final or attempt >= self.max_attempts:
                    self.failed += 1
                    log.error("event %s %s not delivered after %d attempt(s): %s", event["type"],
                              event["id"], attempt, why)
                else:
                    delay = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.8, 1.2)
                    log.warning("event %s %s: attempt %d failed (%s); retrying in %.1fs", event["type"],
                                event["id"], attempt, why, delay)
                    pending.append((time.monotonic() + delay, event, attempt + 1))

    def _deliver(self, session: requests.Session, event: Dict[str, Any]) -> Tuple[bool, bool, str]:
        import requests

        url = self.url
        assert url is not None  # the delivery thread runs only with a webhook URL (start())
        body = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
        ts = int(time.time())
        headers = {"Content-Type": CONTENT_TYPE, "aeg-event-type": "Notification",
                   "webhook-id": event["id"], "webhook-timestamp": str(ts), "ce-id": event["id"]}
        if self.secret:
            headers["webhook-signature"] = sign(self.secret, event["id"], ts, body)
        try:
            resp = session.post(url, data=body, headers=headers, timeout=self.timeout,
                                allow_redirects=False)
        except requests.RequestException as exc:
            return False, False, type(exc).__name__
        if 200 <= resp.status_code < 300:
            return True, True, ""
        retryable = resp.status_code in (408, 429) or resp.status_code >= 500
        return False, not retryable, f"HTTP {resp.status_code}"
