"""Build, sign and post SendBird ``group_channel:message_send`` webhooks (documented format, Platform API v3)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

import requests

from shared.signature import SIGNATURE_HEADER, sign

WEBHOOK_PATH = "/api/sendbird/webhook"


def message_send_event(*, user_id: str, text: str, message_id: int, channel_url: str, nickname: str = "",
                       message_type: str = "MESG", created_at_ms: int | None = None,
                       bot_user_id: str = "ssg_bot", filename: str = "photo.png") -> dict:
    """A ``group_channel:message_send`` event as SendBird posts it (fields per ``sendbird.md``)."""
    payload: dict = {"message_id": message_id, "custom_type": "", "translations": {},
                     "created_at": created_at_ms or int(time.time() * 1000), "data": ""}
    if message_type == "FILE":
        payload.update(url=f"https://file.example.com/{filename}", filename=filename, filetype="image/png",
                       filesize=48_211)
    else:
        payload["message"] = text
    members = [{"user_id": u, "nickname": u, "profile_url": "", "is_online": True, "is_active": True, "metadata": {}}
               for u in (user_id, bot_user_id)]
    return {
        "category": "group_channel:message_send",
        "sender": {"user_id": user_id, "nickname": nickname or user_id, "profile_url": "", "metadata": {}},
        "silent": False, "sender_ip_addr": "203.0.113.24", "custom_type": "", "mention_type": "users",
        "mentioned_users": [], "members": members, "type": message_type, "payload": payload,
        "channel": {"name": "Support", "channel_url": channel_url, "custom_type": "support", "is_distinct": True,
                    "is_public": False, "is_super": False, "is_ephemeral": False, "is_discoverable": False,
                    "data": ""},
        "sdk": "JavaScript", "app_id": "9DA1B1F4-0BE6-4DA8-82C5-2E81DAB56F23",
    }


def encode(event: dict) -> bytes:
    """The body bytes SendBird would send (UTF-8 JSON)."""
    return json.dumps(event, ensure_ascii=False).encode("utf-8")


@dataclass
class WebhookResult:
    status: int
    body: dict
    sent_at_ms: int
    latency_ms: float


def post(session: requests.Session, base_url: str, body: bytes, api_token: str, timeout: float = 10) -> WebhookResult:
    """POST ``body`` signed with ``api_token`` to the intake; returns status, JSON body and answer latency (ms)."""
    headers = {"Content-Type": "application/json", "User-Agent": "SendBird", SIGNATURE_HEADER: sign(body, api_token)}
    sent_at_ms = int(time.time() * 1000)
    start = time.perf_counter()
    resp = session.post(base_url.rstrip("/") + WEBHOOK_PATH, data=body, headers=headers, timeout=timeout)
    latency = (time.perf_counter() - start) * 1000
    try:
        data = resp.json()
    except ValueError:
        data = {"raw": resp.text[:200]}
    return WebhookResult(resp.status_code, data, sent_at_ms, latency)
