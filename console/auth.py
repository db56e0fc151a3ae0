"""Who is calling, what they may do, and CSRF protection.

- ``CONSOLE_AUTH_MODE=local``: a sign-in page checks a user of ``CONSOLE_LOCAL_USERS`` (constant-time compare);
  the user and their roles go into the session cookie (signed with ``CONSOLE_SECRET``, ``HttpOnly``,
  ``SameSite=Strict``, expiring after ``CONSOLE_SESSION_HOURS``). Five failed sign-ins of a name within five
  minutes lock that name for the rest of the five minutes.
- ``CONSOLE_AUTH_MODE=easyauth``: App Service Authentication (Entra ID) signs the user in before any request
  reaches the app and passes the principal in ``X-MS-CLIENT-PRINCIPAL`` (base64 JSON with the token's claims;
  App Service removes any such header a client sends). The Entra app roles map to console roles
  (``CONSOLE_EASYAUTH_ROLES``). Never enable it where the app is reachable without App Service in front.

Roles: ``editor`` (intents, utterances, entities, review decisions, training, deploying to staging, responses),
``operator`` (swapping or rolling back production, conversations, poison replays). Every signed-in user may read.

CSRF: every state-changing request must carry the session's token (form field ``csrf_token`` or header
``X-CSRF-Token``; htmx sends the header on every request), and an ``Origin``/``Referer`` header, when present, must
be this host. The session cookie is ``SameSite=Strict`` as a second line.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import secrets
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request

from console.settings import ConsoleSettings

CSRF_FIELD = "csrf_token"
CSRF_HEADER = "x-csrf-token"
LOCKOUT_FAILURES, LOCKOUT_SECONDS = 5, 300


@dataclass(frozen=True)
class User:
    name: str
    roles: tuple[str, ...]
    source: str = "local"

    def can(self, role: str | None) -> bool:
        return role is None or role in self.roles


def current_user(request: Request, settings: ConsoleSettings) -> User | None:
    if settings.auth_mode == "easyauth":
        return easyauth_user(request, settings)
    data = request.session.get("user")
    if not isinstance(data, dict) or data.get("exp", 0) < time.time():
        return None
    known = settings.users().get(data.get("name", ""))
    if known is None:  # removed from CONSOLE_LOCAL_USERS since: the session ends
        return None
    return User(known.name, known.roles)


def easyauth_user(request: Request, settings: ConsoleSettings) -> User | None:
    raw = request.headers.get("x-ms-client-principal")
    if not raw:
        return None
    try:
        principal = json.loads(base64.b64decode(raw))
    except (binascii.Error, ValueError):
        return None
    claims = principal.get("claims") or []
    role_type = principal.get("role_typ") or "roles"
    name_type = principal.get("name_typ") or "name"
    app_roles = {c.get("val") for c in claims if c.get("typ") in (role_type, "roles")}
    mapping = settings.role_map()
    roles = tuple(sorted({mapping[r] for r in app_roles if r in mapping}))
    name = request.headers.get("x-ms-client-principal-name") or next(
        (c.get("val") for c in claims if c.get("typ") == name_type), None) or "unknown"
    return User(str(name), roles, "entra")


def sign_in(request: Request, settings: ConsoleSettings, name: str, password: str) -> User | None:
    users = settings.users()
    candidate = users.get(name)
    expected = (candidate.password if candidate else secrets.token_hex(16)).encode("utf-8")
    ok = hmac.compare_digest(expected, password.encode("utf-8")) and candidate is not None
    if not ok or candidate is None:
        return None
    request.session.clear()  # a new session (and CSRF token) at every sign-in
    request.session["user"] = {"name": candidate.name, "exp": time.time() + settings.session_hours * 3600}
    csrf_token(request)
    return User(candidate.name, candidate.roles)


def sign_out(request: Request) -> None:
    request.session.clear()


def csrf_token(request: Request) -> str:
    token = request.session.get("csrf")
    if not isinstance(token, str) or len(token) < 32:
        token = secrets.token_urlsafe(32)
        request.session["csrf"] = token
    return token


def csrf_problem(request: Request, submitted: str | None) -> str | None:
    """Why a state-changing request fails the CSRF check, or None when it passes."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if origin and origin != "null":
        parts = urlsplit(origin)
        if parts.netloc and parts.netloc != request.headers.get("host", request.url.netloc):
            return f"the request comes from another site ({parts.netloc})"
    expected = request.session.get("csrf")
    given = request.headers.get(CSRF_HEADER) or submitted
    if not expected or not given or not hmac.compare_digest(str(expected), str(given)):
        return "missing or wrong CSRF token (reload the page)"
    return None


class SignInThrottle:
    """Failed sign-ins per name; a name with LOCKOUT_FAILURES failures within LOCKOUT_SECONDS is locked."""

    def __init__(self, clock=time.monotonic):
        self._failures: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._clock = clock

    def locked(self, name: str) -> bool:
        now = self._clock()
        with self._lock:
            recent = [t for t in self._failures.get(name, []) if now - t < LOCKOUT_SECONDS]
            self._failures[name] = recent
            return len(recent) >= LOCKOUT_FAILURES

    def failed(self, name: str) -> None:
        with self._lock:
            self._failures.setdefault(name, []).append(self._clock())

    def succeeded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)
