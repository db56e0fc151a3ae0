"""The console's HTTP app (Starlette): server-rendered pages (Jinja2) made interactive with htmx.

Every endpoint answers HTML (a page, or for an htmx request the fragment it swaps in) and, when the request
asks for ``Accept: application/json``, the same data as JSON: the tests and scripts use that. Errors are
``{"error": {"code", "message", "details"?}}`` with 400 (invalid input, the reasons listed), 401 (not signed in),
403 (role or CSRF), 404, 409 (a conflict: the promotion gate, a concurrent edit), 502/503 (the authoring service
or a store failed). Every state-changing call is written to the audit log, refused and failed ones too.

No route starts with ``admin`` or ``runtime`` (the Functions host reserves them; the console is its own App
Service, but keeps the rule so it could be hosted there).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
import re
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from console import auth
from console import project as pj
from console import review_import as ri
from console.clu import AuthoringClient, AuthoringError
from console.settings import ConsoleSettings
from shared import review as rv
from shared import review_export as rx
from shared.audit import AuditEntry
from shared.bootstrap import AdminServices
from shared.catalog import CatalogConflict, CatalogVersion, ResponseCatalog, required_keys, validate_texts
from shared.conversations import ConversationNotFound, clear_slot, end_handoff, erase, erasure_subject, find
from shared.errors import GatewayError
from shared.language import detect_language
from shared.models import now_ms
from shared.poison_admin import ReplayRequest, list_poison, replay, source_queues
from shared.routes import routes

log = logging.getLogger("console")
HERE = Path(__file__).resolve().parent
EDITOR, OPERATOR = "editor", "operator"


class ConsoleError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list[Any] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details or []


def bad(message: str, details: list[Any] | None = None) -> ConsoleError:
    return ConsoleError(400, "invalid_request", message, details)


# --------------------------------------------------------------------------- input
class Input:
    """A request's fields (form or JSON body): ``get`` one, ``getlist`` several."""

    def __init__(self, values: dict[str, list[Any]], files: dict[str, bytes] | None = None):
        self._values, self.files = values, files or {}

    def get(self, name: str, default: str = "") -> str:
        vals = self._values.get(name)
        return str(vals[0]) if vals and vals[0] is not None else default

    def getlist(self, name: str) -> list[str]:
        return [str(v) for v in self._values.get(name, []) if v is not None and str(v) != ""]

    def bool(self, name: str) -> bool:
        return self.get(name).lower() in ("1", "true", "on", "yes")

    def int(self, name: str, default: int | None = None) -> int:
        raw = self.get(name)
        if raw == "" and default is not None:
            return default
        try:
            return int(raw)
        except ValueError:
            raise bad(f"{name} must be a whole number, got {raw!r}") from None

    def raw(self) -> dict[str, list[Any]]:
        return self._values


async def read_input(request: Request) -> Input:
    if request.method in ("GET", "HEAD"):
        values: dict[str, list[Any]] = {}
        for k, v in request.query_params.multi_items():
            values.setdefault(k, []).append(v)
        return Input(values)
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("application/json"):
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            raise bad("the body is not valid JSON") from None
        if not isinstance(body, dict):
            raise bad("the body must be a JSON object")
        return Input({k: (v if isinstance(v, list) else [v]) for k, v in body.items()})
    form = await request.form(max_files=1, max_fields=5000, max_part_size=5 * 1024 * 1024)
    fields: dict[str, list[Any]] = {}
    files: dict[str, bytes] = {}
    for k, item in form.multi_items():
        if isinstance(item, str):
            fields.setdefault(k, []).append(item)
        else:
            files[k] = await item.read()
    return Input(fields, files)


# --------------------------------------------------------------------------- the project, cached
class ProjectCache:
    """The exported project, re-exported when older than ``max_age`` seconds or after the console's own edits.
    Edits are serialised (one export -> edit -> import at a time in this console)."""

    def __init__(self, client: AuthoringClient, max_age: float = 15.0):
        self._client, self._max_age = client, max_age
        self._project: dict[str, Any] | None = None
        self._at = 0.0
        self._lock = threading.Lock()
        self._edit_lock = threading.Lock()

    def get(self, fresh: bool = False) -> dict[str, Any]:
        with self._lock:
            if fresh or self._project is None or time.monotonic() - self._at > self._max_age:
                self._project, self._at = self._client.export_project(), time.monotonic()
            return json.loads(json.dumps(self._project))

    def edit(self, change: Callable[[dict[str, Any]], str]) -> str:
        with self._edit_lock:
            project = self.get(fresh=True)
            what = change(project)
            self._client.import_project(project)
            with self._lock:
                self._project, self._at = project, time.monotonic()
            return what

    def replace(self, project: dict[str, Any]) -> None:
        with self._edit_lock:
            self._client.import_project(project)
            with self._lock:
                self._project, self._at = None, 0.0


# --------------------------------------------------------------------------- the app
@dataclass
class Console:
    settings: ConsoleSettings
    admin: AdminServices
    authoring: AuthoringClient
    throttle: auth.SignInThrottle = field(default_factory=auth.SignInThrottle)

    def __post_init__(self) -> None:
        self.project = ProjectCache(self.authoring)
        self.env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(),
                               trim_blocks=True, lstrip_blocks=True)
        self.env.filters["when"] = _when
        self.env.filters["pct"] = lambda v: "-" if v is None else f"{100 * float(v):.1f}"
        self.env.filters["urlq"] = lambda v: quote(str(v), safe="")
        self.env.filters["ref"] = _ref
        self.env.globals["routes_registry"] = routes

    # ---- audit
    def audit(self, user: auth.User, action: str, target: str = "", outcome: str = "succeeded",
              **details: Any) -> None:
        try:
            self.admin.audit.record(AuditEntry(actor=user.name, roles=list(user.roles), action=action,
                                               target=target[:500], outcome=outcome,  # type: ignore[arg-type]
                                               details={k: v for k, v in details.items() if v is not None}))
        except Exception:  # noqa: BLE001 - the change happened; a lost audit line is logged loudly
            log.exception("could not write the audit entry %s %s", action, target)

    # ---- rendering
    def render(self, request: Request, template: str, data: dict[str, Any], status: int = 200,
               headers: dict[str, str] | None = None) -> Response:
        if wants_json(request):
            return JSONResponse(_jsonable(data), status_code=status, headers=headers)
        user = request.state.user if hasattr(request.state, "user") else None
        html = self.env.get_template(template).render(
            request=request, user=user, csrf=auth.csrf_token(request), settings=self.settings,
            htmx=request.headers.get("hx-request") == "true", **data)
        return HTMLResponse(html, status_code=status, headers=headers)

    def error(self, request: Request, exc: ConsoleError) -> Response:
        body = {"error": {"code": exc.code, "message": exc.message, **({"details": exc.details} if exc.details
                                                                       else {})}}
        if wants_json(request):
            return JSONResponse(body, status_code=exc.status)
        headers = {"HX-Retarget": "#flash", "HX-Reswap": "innerHTML"} if request.headers.get("hx-request") else None
        return self.render(request, "_error.html" if headers else "error.html", body, exc.status, headers)


def wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "text/html" not in accept


def _when(ms: Any) -> str:
    if not ms:
        return "-"
    if isinstance(ms, str):
        return ms.replace("T", " ")[:19]
    return dt.datetime.fromtimestamp(int(ms) / 1000).strftime("%Y-%m-%d %H:%M:%S")


def _ref(v: Any) -> str:
    """A model reference of the authoring audit log (``{trainedModelLabel, ...}``, or per deployment) in words."""
    if not v:
        return "-"
    if isinstance(v, dict) and "trainedModelLabel" in v:
        return str(v.get("trainedModelLabel"))
    if isinstance(v, dict):
        return ", ".join(f"{k}: {_ref(x)}" for k, x in v.items())
    return str(v)


def _jsonable(data: Any) -> Any:
    if hasattr(data, "model_dump"):
        return data.model_dump(mode="json")
    if isinstance(data, dict):
        return {k: _jsonable(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [_jsonable(v) for v in data]
    if hasattr(data, "__dataclass_fields__"):
        return _jsonable(data.__dict__)
    return data


Handler = Callable[[Request, auth.User, Input], Awaitable[Response]]


def create_app(console: Console) -> Starlette:
    c = console

    def endpoint(role: str | None = None, *, write: bool = False, action: str = "") -> Callable[[Handler], Any]:
        def deco(fn: Handler) -> Callable[[Request], Awaitable[Response]]:
            @functools.wraps(fn)
            async def handler(request: Request) -> Response:
                user = auth.current_user(request, c.settings)
                if user is None:
                    if wants_json(request) or request.method != "GET":
                        return c.error(request, ConsoleError(401, "unauthenticated", "sign in first"))
                    return RedirectResponse(f"/signin?next={quote(request.url.path)}", status_code=303)
                request.state.user = user
                try:
                    data = await read_input(request)
                    if write:
                        problem = auth.csrf_problem(request, data.get(auth.CSRF_FIELD) or None)
                        if problem:
                            c.audit(user, action or request.url.path, outcome="refused", reason="csrf")
                            raise ConsoleError(403, "csrf_failed", problem)
                    if not user.can(role):
                        c.audit(user, action or request.url.path, outcome="refused", reason=f"needs role {role}")
                        raise ConsoleError(403, "forbidden", f"this needs the {role} role; you have "
                                           f"{', '.join(user.roles) or 'none'}")
                    return await fn(request, user, data)
                except ConsoleError as exc:
                    return c.error(request, exc)
                except pj.EditError as exc:
                    return c.error(request, bad(str(exc)))
                except AuthoringError as exc:
                    status = exc.status if exc.status in (400, 404, 409) else 502
                    details = [d.get("message", d) if isinstance(d, dict) else d for d in exc.details]
                    return c.error(request, ConsoleError(status, f"authoring_{exc.code}", exc.message, details))
                except GatewayError as exc:
                    return c.error(request, ConsoleError(503, "store_unavailable", exc.reason))
            return handler
        return deco

    def run(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Awaitable[Any]:
        return run_in_threadpool(fn, *args, **kwargs)

    # ------------------------------------------------------------------ sign-in
    async def signin_page(request: Request) -> Response:
        if c.settings.auth_mode == "easyauth":
            return RedirectResponse("/.auth/login/aad?post_login_redirect_uri=/", status_code=303)
        return c.render(request, "signin.html", {"next": request.query_params.get("next", "/"), "failed": None})

    async def signin(request: Request) -> Response:
        data = await read_input(request)
        problem = auth.csrf_problem(request, data.get(auth.CSRF_FIELD) or None)
        name, password = data.get("username").strip(), data.get("password")
        nxt = data.get("next") or "/"
        if not nxt.startswith("/") or nxt.startswith("//"):
            nxt = "/"
        if problem:
            return c.error(request, ConsoleError(403, "csrf_failed", problem))
        if c.throttle.locked(name):
            return c.error(request, ConsoleError(429, "locked", "too many failed sign-ins for this name; wait five "
                                                 "minutes"))
        user = auth.sign_in(request, c.settings, name, password)
        if user is None:
            c.throttle.failed(name)
            if wants_json(request):
                return c.error(request, ConsoleError(401, "sign_in_failed", "unknown user or wrong password"))
            return c.render(request, "signin.html", {"next": nxt, "failed": "unknown user or wrong password"}, 401)
        c.throttle.succeeded(name)
        c.audit(user, "auth.sign_in")
        if wants_json(request):
            return JSONResponse({"user": user.name, "roles": list(user.roles), "csrf_token": auth.csrf_token(request)})
        return RedirectResponse(nxt, status_code=303)

    @endpoint(write=True, action="auth.sign_out")
    async def signout(request: Request, user: auth.User, data: Input) -> Response:
        auth.sign_out(request)
        if wants_json(request):
            return JSONResponse({"signed_out": True})
        return RedirectResponse("/signin", status_code=303)

    async def health(request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    @endpoint()
    async def whoami(request: Request, user: auth.User, data: Input) -> Response:
        return JSONResponse({"user": user.name, "roles": list(user.roles), "csrf_token": auth.csrf_token(request)})

    async def home(request: Request) -> Response:
        return RedirectResponse("/intents", status_code=303)

    # ------------------------------------------------------------------ intents, utterances, entities
    @endpoint()
    async def intents_page(request: Request, user: auth.User, data: Input) -> Response:
        project = await run(c.project.get, data.bool("refresh"))
        filters = {k: data.get(k) for k in ("q", "intent", "language", "dataset", "entity")}
        found = pj.search(project, **filters)
        limit = data.int("limit", 200)
        return c.render(request, "intents.html", {
            "filters": filters, "summary": pj.summary(project), "intents": pj.intents(project),
            "entities": pj.entity_view(project), "entity_names": pj.entity_categories(project),
            "utterances": found[:limit], "matched": len(found), "total": len(pj.assets(project)["utterances"]),
            "project_name": c.authoring.project})

    async def edit(user: auth.User, action: str, target: str, change: Callable[[dict[str, Any]], str]) -> str:
        try:
            what = await run(c.project.edit, change)
        except (pj.EditError, AuthoringError) as exc:
            c.audit(user, action, target, "refused" if isinstance(exc, pj.EditError) else "failed", reason=str(exc))
            raise
        c.audit(user, action, target, changed=what)
        return what

    def done(request: Request, what: str, redirect: str, **extra: Any) -> Response:
        if wants_json(request):
            return JSONResponse({"changed": what, **_jsonable(extra)})
        if request.headers.get("hx-request"):
            return Response(status_code=204, headers={"HX-Location": json.dumps({"path": redirect, "target": "main"}),
                                                      "HX-Trigger": json.dumps({"flash": what})})
        return RedirectResponse(redirect, status_code=303)

    @endpoint(EDITOR, write=True, action="intent.add")
    async def intent_add(request: Request, user: auth.User, data: Input) -> Response:
        name = data.get("name")
        return done(request, await edit(user, "intent.add", name, lambda p: pj.add_intent(p, name)), "/intents")

    @endpoint(EDITOR, write=True, action="intent.delete")
    async def intent_delete(request: Request, user: auth.User, data: Input) -> Response:
        name = request.path_params["name"]
        return done(request, await edit(user, "intent.delete", name, lambda p: pj.delete_intent(p, name)), "/intents")

    @endpoint(EDITOR, write=True, action="entity.add")
    async def entity_add(request: Request, user: auth.User, data: Input) -> Response:
        name = data.get("name")
        return done(request, await edit(user, "entity.add", name, lambda p: pj.add_entity(p, name)), "/intents")

    @endpoint(EDITOR, write=True, action="entity.delete")
    async def entity_delete(request: Request, user: auth.User, data: Input) -> Response:
        name = request.path_params["name"]
        return done(request, await edit(user, "entity.delete", name, lambda p: pj.delete_entity(p, name)), "/intents")

    @endpoint(EDITOR, write=True, action="utterance.add")
    async def utterance_add(request: Request, user: auth.User, data: Input) -> Response:
        text, lang = data.get("text"), data.get("language") or detect_language(data.get("text")) or ""
        what = await edit(user, "utterance.add", data.get("intent"), lambda p: pj.add_utterance(
            p, text, lang, data.get("intent"), data.get("dataset") or "Train"))
        return done(request, what, "/intents?intent=" + quote(data.get("intent")))

    @endpoint(EDITOR, write=True, action="utterance.edit")
    async def utterance_edit(request: Request, user: auth.User, data: Input) -> Response:
        key = request.path_params["key"]
        what = await edit(user, "utterance.edit", key, lambda p: pj.edit_utterance(
            p, key, text=data.get("text") or None, language=data.get("language") or None,
            intent=data.get("intent") or None, dataset=data.get("dataset") or None))
        return done(request, what, "/intents")

    @endpoint(EDITOR, write=True, action="utterance.delete")
    async def utterance_delete(request: Request, user: auth.User, data: Input) -> Response:
        key = request.path_params["key"]
        return done(request, await edit(user, "utterance.delete", key, lambda p: pj.delete_utterance(p, key)),
                    "/intents")

    @endpoint(EDITOR, write=True, action="utterance.label")
    async def utterance_label(request: Request, user: auth.User, data: Input) -> Response:
        key = request.path_params["key"]
        what = await edit(user, "utterance.label", key, lambda p: pj.label_entity(
            p, key, data.get("category"), data.get("span"), data.int("occurrence", 1)))
        return done(request, what, "/intents")

    @endpoint(EDITOR, write=True, action="utterance.unlabel")
    async def utterance_unlabel(request: Request, user: auth.User, data: Input) -> Response:
        key = request.path_params["key"]
        what = await edit(user, "utterance.unlabel", key, lambda p: pj.unlabel_entity(p, key, data.int("index")))
        return done(request, what, "/intents")

    @endpoint()
    async def project_export(request: Request, user: auth.User, data: Input) -> Response:
        project = await run(c.project.get, True)
        name = f"{c.authoring.project}-{time.strftime('%Y%m%d-%H%M%S')}.json"
        return Response(json.dumps(project, ensure_ascii=False, indent=1), media_type="application/json",
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @endpoint(EDITOR, write=True, action="project.import")
    async def project_import(request: Request, user: auth.User, data: Input) -> Response:
        raw = data.files.get("file")
        if raw is None:
            raw = data.get("project").encode("utf-8")
        try:
            uploaded = pj.validated_upload(json.loads(raw or b"null"))
        except ValueError as exc:
            c.audit(user, "project.import", outcome="refused", reason=str(exc)[:300])
            raise bad(f"the file is not a CLU project file: {exc}") from None
        try:
            await run(c.project.replace, uploaded)
        except AuthoringError as exc:
            c.audit(user, "project.import", outcome="failed", reason=exc.message[:300])
            raise
        n = len(uploaded["assets"].get("utterances") or [])
        what = f"imported a project file with {n} utterances"
        c.audit(user, "project.import", changed=what)
        return done(request, what, "/intents")

    # ------------------------------------------------------------------ review inbox
    @endpoint()
    async def review_page(request: Request, user: auth.User, data: Input) -> Response:
        status = data.get("status") or "open"
        if status not in (*rv.STATUSES, "all"):
            raise bad(f"status must be one of {[*rv.STATUSES, 'all']}")
        items = await run(c.admin.review_store.recent, None if status == "all" else status, 500)
        q = data.get("q").casefold()
        if q:
            items = [i for i in items if i.text and q in i.text.casefold()]
        intents = []
        try:
            intents = pj.intents(await run(c.project.get))
        except AuthoringError as exc:
            log.warning("review page without the intent list: %s", exc)
        return c.render(request, "review.html", {"items": items, "status": status, "q": data.get("q"),
                                                 "intents": intents, "pii_mode": c.admin.settings.telemetry_pii_mode,
                                                 "exports": await export_days(14)})

    async def decide_many(user: auth.User, ids: list[str], action: str, intent: str | None,
                          dataset: str) -> list[dict[str, Any]]:
        if not ids:
            raise bad("select at least one item")
        items = [i for i in [await run(c.admin.review_store.get, x) for x in ids] if i is not None]
        missing = sorted(set(ids) - {i.id for i in items})
        if missing:
            raise ConsoleError(404, "not_found", f"no review item(s) {missing}")
        results: list[dict[str, Any]] = []
        if action == "assigned":
            assert intent is not None
            textless = [i.id for i in items if not i.text]
            if textless:
                raise ConsoleError(409, "no_text", "these items have no text (PII mode strict keeps none), so they "
                                   f"cannot join the project; dismiss them instead: {textless}")
            changes: dict[str, str] = {}

            def change(p: dict[str, Any]) -> str:
                changes.clear()
                for it in items:
                    try:
                        changes[it.id] = pj.add_utterance(p, it.text or "", it.language, intent, dataset)
                    except pj.EditError as exc:
                        if "already in the project" not in str(exc):
                            raise
                        changes[it.id] = f"not added: {exc}"
                total = len(pj.assets(p)["utterances"])
                return f"{sum(1 for v in changes.values() if v.startswith('added'))} utterance(s) added; " \
                       f"the project now has {total}"
            summary = await edit(user, "review.assign", ",".join(ids), change)
            for it in items:
                what = f"{changes[it.id]} ({summary}); train and deploy for the bot to learn it"
                await run(functools.partial(rv.decide, c.admin.review_store, it.id, "assigned", user.name,
                                            intent=intent, changed=what))
                results.append({"id": it.id, "changed": what})
        else:
            what = "dismissed: the project is unchanged"
            for it in items:
                await run(functools.partial(rv.decide, c.admin.review_store, it.id, "dismissed", user.name,
                                            changed=what))
                c.audit(user, "review.dismiss", it.id, count=it.count)
                results.append({"id": it.id, "changed": what})
        return results

    @endpoint(EDITOR, write=True, action="review.assign")
    async def review_assign(request: Request, user: auth.User, data: Input) -> Response:
        intent, dataset = data.get("intent"), data.get("dataset") or "Train"
        if not intent:
            raise bad("choose the intent to assign")
        results = await decide_many(user, data.getlist("ids"), "assigned", intent, dataset)
        return done(request, f"assigned {len(results)} item(s) to {intent}", "/review", results=results)

    @endpoint(EDITOR, write=True, action="review.dismiss")
    async def review_dismiss(request: Request, user: auth.User, data: Input) -> Response:
        results = await decide_many(user, data.getlist("ids"), "dismissed", None, "")
        return done(request, f"dismissed {len(results)} item(s)", "/review", results=results)

    @endpoint(EDITOR, write=True, action="review.reopen")
    async def review_reopen(request: Request, user: auth.User, data: Input) -> Response:
        ids = data.getlist("ids")
        if not ids:
            raise bad("select at least one item")
        for x in ids:
            try:
                await run(rv.reopen, c.admin.review_store, x)
            except rv.ReviewNotFound:
                raise ConsoleError(404, "not_found", f"no review item {x}") from None
            c.audit(user, "review.reopen", x)
        return done(request, f"reopened {len(ids)} item(s)", "/review?status=open")

    # ------------------------------------------------------------------ review inbox: daily exports (cold path)
    async def export_days(limit: int) -> list[str]:
        """The newest ``limit`` days with an export file (YYYY-MM-DD), newest first; [] when Storage fails."""
        container = c.admin.settings.review_export_container
        try:
            names = await run(c.admin.blobs.names, container, "")
        except GatewayError as exc:
            log.warning("review page without the export list: %s", exc.reason)
            return []
        days = [n[:-len(".jsonl")].replace("/", "-") for n in names if re.fullmatch(r"\d{4}/\d{2}/\d{2}\.jsonl", n)]
        return sorted(days, reverse=True)[:limit]

    @endpoint()
    async def review_exports(request: Request, user: auth.User, data: Input) -> Response:
        return JSONResponse({"container": c.admin.settings.review_export_container, "days": await export_days(400)})

    @endpoint()
    async def review_export_download(request: Request, user: auth.User, data: Input) -> Response:
        day = request.path_params["day"]
        try:
            name = rx.blob_name(dt.date.fromisoformat(day))
        except ValueError:
            raise bad(f"the day must be a date YYYY-MM-DD, got {day!r}") from None
        raw = await run(c.admin.blobs.get, c.admin.settings.review_export_container, name)
        if raw is None:
            raise ConsoleError(404, "not_found", f"no review export for {day} (the export runs shortly after "
                               "midnight UTC for the day before)")
        c.audit(user, "review.export_download", day, lines=raw.count(b"\n"))  # the file may hold customers' texts
        return Response(raw, media_type="application/x-ndjson; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="review-export-{day}.jsonl"'})

    @endpoint(EDITOR, write=True, action="review.import")
    async def review_import(request: Request, user: auth.User, data: Input) -> Response:
        """A relabelled export (multipart ``file``, or JSON ``{"jsonl": "..."}``) and ``dataset`` (Train/Test):
        every line validated first, nothing applied when one is invalid (400 with each line's reason)."""
        raw = data.files.get("file")
        raw = raw if raw is not None else data.get("jsonl").encode("utf-8")
        dataset = data.get("dataset") or "Train"
        if dataset not in pj.DATASETS:
            raise bad(f"dataset must be one of {list(pj.DATASETS)}, got {dataset!r}")
        parsed, errors = rx.parse_relabelled(raw)
        ids = [line.id for _, line in parsed]
        items = await run(lambda: {x: c.admin.review_store.get(x) for x in ids})
        project = await run(c.project.get, True) if parsed else {}
        plan = ri.plan(parsed, items, pj.intents(project) if parsed else [], errors)
        plan.errors += ri.add_utterances(project, plan.assign, dataset)[1]  # a dry run on this copy
        if plan.errors:
            c.audit(user, "review.import", outcome="refused", reason=f"{len(plan.errors)} invalid line(s)")
            raise ConsoleError(400, "invalid_file", f"nothing was imported: {len(plan.errors)} line(s) of the file "
                               "are invalid (line 0: the whole file)", plan.error_details())
        summary = await apply_import(user, plan, dataset)
        c.audit(user, "review.import", f"{len(parsed)} line(s)", changed=summary["changed"],
                assigned=len(summary["assigned"]), dismissed=len(summary["dismissed"]),
                skipped=len(summary["skipped"]), unlabelled=plan.unlabelled)
        return done(request, summary["changed"], "/review", summary=summary)

    async def apply_import(user: auth.User, plan: ri.ImportPlan, dataset: str) -> dict[str, Any]:
        """Apply a valid plan: one project edit for every assignment, then each item's decision."""
        changes: dict[str, str] = {}
        total = ""
        if plan.assign:
            def change(project: dict[str, Any]) -> str:
                found, errors = ri.add_utterances(project, plan.assign, dataset)
                if errors:  # the project changed since the dry run
                    raise pj.EditError("; ".join(f"line {e.line}: {e.reason}" for e in errors))
                changes.clear()
                changes.update(found)
                return f"the project now has {len(pj.assets(project)['utterances'])} utterances"
            try:
                total = await run(c.project.edit, change)
            except (pj.EditError, AuthoringError) as exc:
                c.audit(user, "review.import", outcome="failed", reason=str(exc)[:300])
                raise
        out: dict[str, Any] = {"assigned": [], "dismissed": [], "skipped": list(plan.skipped),
                               "unlabelled": plan.unlabelled}
        decisions = [(p, "assigned", f"{changes[p.item.id]} ({total}); from a relabelled export (line {p.line}); "
                      "train and deploy for the bot to learn it") for p in plan.assign]
        decisions += [(p, "dismissed", f"dismissed from a relabelled export (line {p.line}): the project is "
                       "unchanged") for p in plan.dismiss]
        for p, action, what in decisions:
            try:
                await run(functools.partial(rv.decide, c.admin.review_store, p.item.id, action, user.name,  # type: ignore[arg-type]
                                            intent=p.intent, changed=what))
            except rv.ReviewNotFound:
                out["skipped"].append({"line": p.line, "id": p.item.id, "reason": "erased during the import"})
                continue
            out[action].append({"line": p.line, "id": p.item.id, "intent": p.intent, "changed": what})
        added = sum(1 for v in changes.values() if v.startswith("added"))
        out["utterances_added"] = added
        out["changed"] = (f"imported a relabelled export: {len(out['assigned'])} assigned ({added} utterance(s) "
                          f"added), {len(out['dismissed'])} dismissed, {len(out['skipped'])} skipped, "
                          f"{plan.unlabelled} unlabelled" + (f"; {total}" if total else ""))
        return out

    # ------------------------------------------------------------------ training and models
    def _deployment_labels(models: list[dict[str, Any]], deps: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
        by_id = {m.get("modelId"): m.get("label") for m in models}
        out = {}
        for d in deps:
            out[d["deploymentName"]] = {**d, "label": d.get("trainedModelLabel") or by_id.get(d.get("modelId"))}
        return out

    @endpoint()
    async def models_page(request: Request, user: auth.User, data: Input) -> Response:
        jobs, models, deps = await run(c.authoring.training_jobs), await run(c.authoring.models), \
            await run(c.authoring.deployments)
        jobs = sorted(jobs, key=lambda j: j.get("createdDateTime", ""), reverse=True)[:15]
        models = sorted(models, key=lambda m: m.get("lastTrainedDateTime", ""), reverse=True)
        trail = await run(c.authoring.audit)
        console_trail = await run(c.admin.audit.recent, 30, "model")
        return c.render(request, "models.html", {
            "jobs": jobs, "models": models, "deployments": _deployment_labels(models, deps),
            "production": c.settings.production_deployment, "staging": c.settings.staging_deployment,
            "service_audit": list(reversed(trail or []))[:30] if trail is not None else None,
            "console_audit": console_trail})

    @endpoint(EDITOR, write=True, action="model.train")
    async def model_train(request: Request, user: auth.User, data: Input) -> Response:
        label = data.get("label") or time.strftime("m%Y%m%d-%H%M%S")
        project = await run(c.project.get, True)
        has_test = any((u.get("dataset") or "Train") == "Test" for u in pj.assets(project)["utterances"])
        evaluation = {"kind": "manual"} if has_test else None
        try:
            url = await run(c.authoring.train, label, evaluation)
        except AuthoringError as exc:
            c.audit(user, "model.train", label, "failed", reason=exc.message)
            raise
        job_id = url.split("?")[0].rstrip("/").rsplit("/", 1)[-1]
        c.audit(user, "model.train", label, evaluation="manual (Test utterances)" if has_test else "80/20 split",
                job=job_id)
        job = await run(c.authoring.job, url)
        return c.render(request, "_job.html", {"job": job, "job_id": job_id}, 202)

    @endpoint()
    async def model_job(request: Request, user: auth.User, data: Input) -> Response:
        job_id = request.path_params["job_id"]
        job = await run(c.authoring.job, c.authoring.train_job_url(job_id))
        return c.render(request, "_job.html", {"job": job, "job_id": job_id})

    @endpoint()
    async def model_page(request: Request, user: auth.User, data: Input) -> Response:
        label = request.path_params["label"]
        summary = await run(c.authoring.evaluation_summary, label)
        results = await run(c.authoring.evaluation_results, label)
        models, deps = await run(c.authoring.models), await run(c.authoring.deployments)
        labels = _deployment_labels(models, deps)
        prod_label = (labels.get(c.settings.production_deployment) or {}).get("label")
        prod_summary = None
        if prod_label and prod_label != label:
            try:
                prod_summary = await run(c.authoring.evaluation_summary, prod_label)
            except AuthoringError as exc:
                log.warning("no evaluation of the production model %s: %s", prod_label, exc)
        ie = summary.get("intentsEvaluation", {})
        pe = (prod_summary or {}).get("intentsEvaluation", {})
        rows = [{"intent": name, **vals, "prod": (pe.get("intents") or {}).get(name)}
                for name, vals in sorted((ie.get("intents") or {}).items())]
        matrix = ie.get("confusionMatrix") or {}
        names = sorted(set(matrix) | {p for row in matrix.values() for p in row})
        missed = [r for r in results if r["intentsResult"]["expectedIntent"] != r["intentsResult"]["predictedIntent"]]
        return c.render(request, "model.html", {
            "label": label, "summary": summary, "rows": rows, "matrix": matrix, "names": names,
            "misclassified": missed, "tested": len(results), "prod_label": prod_label, "prod_summary": prod_summary,
            "deployments": labels, "staging": c.settings.staging_deployment,
            "production": c.settings.production_deployment})

    @endpoint(EDITOR, write=True, action="model.deploy_staging")
    async def model_deploy(request: Request, user: auth.User, data: Input) -> Response:
        label = request.path_params["label"]
        target = c.settings.staging_deployment
        try:
            await run(functools.partial(c.authoring.deploy, target, label))
        except AuthoringError as exc:
            c.audit(user, "model.deploy_staging", label, "failed", reason=exc.message)
            raise
        c.audit(user, "model.deploy_staging", label, deployment=target)
        return done(request, f"deployed {label} to {target}", f"/models/{quote(label)}")

    @endpoint(action="model.try")
    async def model_try(request: Request, user: auth.User, data: Input) -> Response:
        text = data.get("text").strip()
        if not text:
            raise bad("type a sentence to try")
        if len(text) > 1000:
            raise bad("at most 1,000 characters (CLU's limit)")
        language = data.get("language") or detect_language(text) or c.admin.settings.default_language
        answers = {}
        for d in (c.settings.staging_deployment, c.settings.production_deployment):
            try:
                answers[d] = await run(c.authoring.predict, text, language, d)
            except AuthoringError as exc:
                answers[d] = {"error": exc.message}
        threshold = c.admin.settings.intent_confidence_threshold
        for a in answers.values():
            pred = a.get("prediction") or {}
            top = next((i for i in pred.get("intents", []) if i["category"] == pred.get("topIntent")), None)
            score = top["confidenceScore"] if top else 0.0
            route = routes().for_intent(pred.get("topIntent"))
            a["route"] = route.name if route and score >= threshold else "fallback"
            a["score"] = score
        return c.render(request, "_try.html", {"text": text, "language": language, "answers": answers,
                                               "staging": c.settings.staging_deployment,
                                               "production": c.settings.production_deployment})

    def _swap_verdict(job_id: str | None, timeout: float = 5.0) -> dict[str, Any]:
        """The promotion gate's verdict of swap job ``job_id`` from the authoring audit log (written just after the
        job finishes, so it is polled briefly); empty where the service has no audit log (Azure CLU)."""
        deadline = time.monotonic() + timeout
        while True:
            trail = c.authoring.audit()
            if trail is None:
                return {}
            entry = next((e for e in reversed(trail) if e.get("action") == "swap" and e.get("jobId") == job_id), None)
            if entry is not None or time.monotonic() > deadline:
                return dict((entry or {}).get("gate") or {})
            time.sleep(0.2)

    @endpoint(OPERATOR, write=True, action="model.swap")
    async def model_swap(request: Request, user: auth.User, data: Input) -> Response:
        force, reason = data.bool("force"), data.get("reason").strip()
        if force and not reason:
            raise bad("forcing past the promotion gate needs a reason (it goes to the audit log)")
        prod, staging = c.settings.production_deployment, c.settings.staging_deployment
        try:
            job = await run(functools.partial(c.authoring.swap, prod, staging, force=force, reason=reason))
        except AuthoringError as exc:
            reasons = [d.get("message") for d in exc.details if isinstance(d, dict)]
            c.audit(user, "model.swap", f"{staging}->{prod}", "refused" if exc.status == 409 else "failed",
                    reason=exc.message[:500], gate=reasons)
            if exc.status == 409 and exc.inner.get("code") == "PromotionGateRefused":
                raise ConsoleError(409, "gate_refused", "the promotion gate refused the swap; an operator may force "
                                   "it with a reason", reasons) from None
            raise
        verdict = await run(_swap_verdict, job.get("jobId"))
        c.audit(user, "model.swap", f"{staging}->{prod}", forced=force or None, reason=reason or None,
                verdict=verdict.get("verdict"))
        what = f"swapped {staging} and {prod}" + (f": gate {verdict.get('verdict')}" if verdict else "")
        return done(request, what, "/models", gate=verdict)

    # ------------------------------------------------------------------ responses
    def _catalog_state() -> dict[str, Any]:
        shipped = ResponseCatalog.load()
        current = c.admin.catalog_store.current()
        texts = current.texts if current else shipped.texts()
        keys = required_keys() + sorted(k for k in texts if k not in required_keys())
        return {"current": current, "version": current.version if current else 0, "texts": texts, "keys": keys,
                "history": c.admin.catalog_store.history(30), "shipped": shipped.texts(),
                "refresh_seconds": c.admin.settings.catalog_refresh_seconds}

    @endpoint()
    async def responses_page(request: Request, user: auth.User, data: Input) -> Response:
        return c.render(request, "responses.html", {**await run(_catalog_state), "problems": []})

    def _texts_from(data: Input, base: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
        texts = {k: dict(v) for k, v in base.items()}
        raw = data.raw()
        if "texts" in raw and raw["texts"] and isinstance(raw["texts"][0], dict):
            texts = raw["texts"][0]  # JSON: the whole catalog
        for name, vals in raw.items():  # form: texts[<key>][<lang>]
            if name.startswith("texts[") and name.endswith("]") and "][" in name:
                key, lang = name[len("texts["):-1].split("][", 1)
                texts.setdefault(key, {})[lang] = str(vals[0]).replace("\r\n", "\n")
        return texts

    @endpoint(EDITOR, write=True, action="catalog.publish")
    async def responses_publish(request: Request, user: auth.User, data: Input) -> Response:
        state = await run(_catalog_state)
        based_on = data.int("based_on", state["version"])
        texts = _texts_from(data, state["texts"])
        problems = validate_texts(texts)
        if problems:
            c.audit(user, "catalog.publish", outcome="refused", problems=problems[:10])
            raise bad("the catalog was not published", problems)
        if based_on != state["version"]:
            c.audit(user, "catalog.publish", outcome="refused", reason="edited an older version")
            raise ConsoleError(409, "conflict", f"version {state['version']} was published since you opened version "
                               f"{based_on}; reload and edit again")
        new = CatalogVersion(version=state["version"] + 1, texts=texts, author=user.name, note=data.get("note")[:500],
                             created_at_ms=now_ms(), based_on=based_on)
        changed = new.changed_keys(state["current"]) if state["current"] else [
            k for k in texts if texts[k] != state["shipped"].get(k)]
        if not changed:
            raise bad("nothing changed")
        try:
            await run(c.admin.catalog_store.publish, new)
        except CatalogConflict as exc:
            c.audit(user, "catalog.publish", outcome="refused", reason=str(exc))
            raise ConsoleError(409, "conflict", str(exc)) from None
        c.audit(user, "catalog.publish", f"v{new.version}", keys=changed)
        return done(request, f"published version {new.version} ({', '.join(changed)}); the bot uses it within "
                    f"{c.admin.settings.catalog_refresh_seconds:g} s", "/responses", version=new.version,
                    changed_keys=changed)

    @endpoint()
    async def responses_version(request: Request, user: auth.User, data: Input) -> Response:
        n = int(request.path_params["version"])
        state = await run(_catalog_state)
        found = await run(c.admin.catalog_store.get, n)
        if found is None:
            raise ConsoleError(404, "not_found", f"no version {n}")
        keys = [k for k in state["keys"] if found.texts.get(k) != state["texts"].get(k)]
        return c.render(request, "response_version.html", {"v": found, "diff": keys, "current": state["texts"],
                                                           "current_version": state["version"]})

    @endpoint(EDITOR, write=True, action="catalog.revert")
    async def responses_revert(request: Request, user: auth.User, data: Input) -> Response:
        n = int(request.path_params["version"])
        state = await run(_catalog_state)
        old = await run(c.admin.catalog_store.get, n)
        if old is None:
            raise ConsoleError(404, "not_found", f"no version {n}")
        problems = validate_texts(old.texts)
        if problems:
            raise bad(f"version {n} is not valid for this build any more", problems)
        new = CatalogVersion(version=state["version"] + 1, texts=old.texts, author=user.name,
                             note=f"revert to version {n}", created_at_ms=now_ms(), based_on=state["version"],
                             reverted_from=n)
        try:
            await run(c.admin.catalog_store.publish, new)
        except CatalogConflict as exc:
            raise ConsoleError(409, "conflict", str(exc)) from None
        c.audit(user, "catalog.revert", f"v{new.version}", reverted_from=n)
        return done(request, f"version {new.version} restores version {n}", "/responses", version=new.version)

    # ------------------------------------------------------------------ conversations
    @endpoint()
    async def conversations_page(request: Request, user: auth.User, data: Input) -> Response:
        found = await run(find, c.admin.conversations(), data.get("q"), 30)
        return c.render(request, "conversations.html", {"q": data.get("q"), "found": found, "now": now_ms()})

    @endpoint()
    async def conversation_page(request: Request, user: auth.User, data: Input) -> Response:
        user_id = request.path_params["user_id"]
        state = await run(c.admin.state_admin.find, user_id)
        if state is None:
            raise ConsoleError(404, "not_found", f"no conversation of user {user_id!r}")
        return c.render(request, "conversation.html", {"state": state, "now": now_ms(),
                                                       "handed_off": state.is_handed_off(now_ms())})

    async def conversation_change(request: Request, user: auth.User, action: str,
                                  fn: Callable[..., Any]) -> Response:
        user_id = request.path_params["user_id"]
        try:
            await run(fn, c.admin.conversations(), user_id)
        except ConversationNotFound:
            raise ConsoleError(404, "not_found", f"no conversation of user {user_id!r}") from None
        # named as an erasure would name them (an HMAC), so erasing the user leaves no id behind in the log
        c.audit(user, action, erasure_subject(user_id, c.admin.settings.telemetry_pii_hash_key))
        return done(request, f"{action.split('.')[1].replace('_', ' ')}: done", f"/conversations/{quote(user_id)}")

    @endpoint(OPERATOR, write=True, action="conversation.end_handoff")
    async def conversation_end_handoff(request: Request, user: auth.User, data: Input) -> Response:
        return await conversation_change(request, user, "conversation.end_handoff", end_handoff)

    @endpoint(OPERATOR, write=True, action="conversation.clear_slot")
    async def conversation_clear_slot(request: Request, user: auth.User, data: Input) -> Response:
        return await conversation_change(request, user, "conversation.clear_slot", clear_slot)

    @endpoint(OPERATOR, write=True, action="conversation.erase")
    async def conversation_erase(request: Request, user: auth.User, data: Input) -> Response:
        user_id = request.path_params["user_id"]
        if data.get("confirm") != user_id:
            raise bad("type the user id to confirm the erasure")
        erasure = await run(erase, c.admin.conversations(), user_id)
        c.audit(user, "conversation.erase", erasure.subject, **erasure.details())
        what = (f"erased: state document {'deleted' if erasure.state_deleted else 'not found'}, "
                f"{erasure.review_items_deleted} review item(s) deleted, {erasure.review_items_updated} updated")
        return done(request, what, "/conversations", erasure=erasure.details())

    # ------------------------------------------------------------------ operations
    @endpoint()
    async def operations_page(request: Request, user: auth.User, data: Input) -> Response:
        queue = data.get("queue") or None
        if queue is not None and queue not in source_queues():
            raise bad(f"unknown queue {queue!r}; known: {list(source_queues())}")
        page = await run(list_poison, c.admin.queues, (queue,) if queue else None)
        redactor = c.admin.redactor
        entries = [e.to_dict(redactor) for e in page.entries]

        def depths() -> list[dict[str, Any]]:
            from shared.models import poison_queue_name, poison_record_queue
            return [{"queue": q, "depth": c.admin.queues.depth(q),
                     "poison": c.admin.queues.depth(poison_queue_name(q)),
                     "records": c.admin.queues.depth(poison_record_queue(q))} for q in source_queues()]
        return c.render(request, "operations.html", {"entries": entries, "queue": queue, "queues": source_queues(),
                                                     "depths": await run(depths), "more": page.next_offset})

    @endpoint(OPERATOR, write=True, action="poison.replay")
    async def operations_replay(request: Request, user: auth.User, data: Input) -> Response:
        ids = data.getlist("ids")
        if not ids:
            raise bad("select the poison messages to replay")
        try:
            req = ReplayRequest(ids=ids, queues=data.getlist("queues"))
        except ValueError as exc:
            raise bad(str(exc)) from None
        replayed = await run(replay, c.admin.queues, req)
        c.audit(user, "poison.replay", ",".join(ids)[:500], replayed=len(replayed),
                message_ids=[e.message_id for e in replayed])
        return done(request, f"replayed {len(replayed)} message(s)", "/operations",
                    replayed=[e.to_dict(c.admin.redactor) for e in replayed])

    # ------------------------------------------------------------------ audit
    @endpoint()
    async def audit_page(request: Request, user: auth.User, data: Input) -> Response:
        entries = await run(c.admin.audit.recent, 200, data.get("action") or None)
        return c.render(request, "audit.html", {"entries": entries, "action": data.get("action")})

    route_list = [
        Route("/", home),
        Route("/healthz", health),
        Route("/signin", signin_page, methods=["GET"]),
        Route("/signin", signin, methods=["POST"]),
        Route("/signout", signout, methods=["POST"]),
        Route("/me", whoami),
        Route("/intents", intents_page),
        Route("/intents", intent_add, methods=["POST"]),
        Route("/intents/{name}/delete", intent_delete, methods=["POST"]),
        Route("/entities", entity_add, methods=["POST"]),
        Route("/entities/{name}/delete", entity_delete, methods=["POST"]),
        Route("/utterances", utterance_add, methods=["POST"]),
        Route("/utterances/{key}", utterance_edit, methods=["POST"]),
        Route("/utterances/{key}/delete", utterance_delete, methods=["POST"]),
        Route("/utterances/{key}/labels", utterance_label, methods=["POST"]),
        Route("/utterances/{key}/labels/delete", utterance_unlabel, methods=["POST"]),
        Route("/project/export", project_export),
        Route("/project/import", project_import, methods=["POST"]),
        Route("/review", review_page),
        Route("/review/assign", review_assign, methods=["POST"]),
        Route("/review/dismiss", review_dismiss, methods=["POST"]),
        Route("/review/reopen", review_reopen, methods=["POST"]),
        Route("/review/import", review_import, methods=["POST"]),
        Route("/review/exports", review_exports),
        Route("/review/exports/{day}", review_export_download),
        Route("/models", models_page),
        Route("/models/train", model_train, methods=["POST"]),
        Route("/models/try", model_try, methods=["POST"]),
        Route("/models/swap", model_swap, methods=["POST"]),
        Route("/models/jobs/{job_id}", model_job),
        Route("/models/{label}", model_page),
        Route("/models/{label}/deploy", model_deploy, methods=["POST"]),
        Route("/responses", responses_page),
        Route("/responses", responses_publish, methods=["POST"]),
        Route("/responses/versions/{version:int}", responses_version),
        Route("/responses/versions/{version:int}/revert", responses_revert, methods=["POST"]),
        Route("/conversations", conversations_page),
        Route("/conversations/{user_id:path}/end-handoff", conversation_end_handoff, methods=["POST"]),
        Route("/conversations/{user_id:path}/clear-slot", conversation_clear_slot, methods=["POST"]),
        Route("/conversations/{user_id:path}/erase", conversation_erase, methods=["POST"]),
        Route("/conversations/{user_id:path}", conversation_page),
        Route("/operations", operations_page),
        Route("/operations/replay", operations_replay, methods=["POST"]),
        Route("/audit", audit_page),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(SecurityHeaders),
                  Middleware(SessionMiddleware, secret_key=c.settings.secret, session_cookie="console_session",
                             max_age=int(c.settings.session_hours * 3600), same_site="strict",
                             https_only=c.settings.secure_cookies)]
    app = Starlette(routes=route_list, middleware=middleware)
    app.state.console = c
    return app


class SecurityHeaders:
    """Content-Security-Policy (scripts and styles only from the app itself: htmx and the console's script are
    files, no inline script), no sniffing, no framing, no caching of pages."""

    CSP = ("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; "
           "form-action 'self'; base-uri 'none'")

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = [(b"content-security-policy", self.CSP.encode()), (b"x-content-type-options", b"nosniff"),
                         (b"referrer-policy", b"same-origin"), (b"x-frame-options", b"DENY")]
                if not path.startswith("/static"):
                    extra.append((b"cache-control", b"no-store"))
                headers += [(k, v) for k, v in extra if k not in names]
                message = {**message, "headers": headers}
            await send(message)
        await self.app(scope, receive, send_with_headers)


def route_paths(app: Starlette) -> list[str]:
    """Every route path of the app (tests check none starts with ``admin`` or ``runtime``)."""
    return [getattr(r, "path", "") for r in app.routes]
