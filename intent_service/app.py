"""ASGI application: the Azure CLU ``analyze-conversations`` protocol.

Endpoints
    POST /language/:analyze-conversations?api-version=2023-04-01
    /language/authoring/analyze-conversations/...   CLU authoring (only with a project store: see
                         ``authoring/``; predictions are then answered per projectName/deploymentName)
    GET  /health/live    200 as soon as the process serves HTTP
    GET  /health/ready   200 once the model is loaded, else 503 + Retry-After
    GET  /model          model metadata (version, trained_at, data_sha256, ...)

The model loads in a background thread after the server starts listening, so
liveness answers at once while a large model or a slow blob download is still
in progress.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
import time
import uuid
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, AsyncIterator, Dict, Optional

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from .text import DEFAULT_STRING_INDEX_TYPE, STRING_INDEX_TYPES

if TYPE_CHECKING:
    from .authoring import Authoring
    from .model import IntentModel

log = logging.getLogger("intent_service")

API_VERSIONS = ("2023-04-01",)
MAX_TEXT_CHARS = 1000
MAX_BODY_BYTES = 64 * 1024
RETRY_AFTER_SECONDS = 2


def error(status: int, code: str, message: str, headers: Optional[Dict[str, str]] = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status,
                        headers=headers)


class BadRequest(Exception):
    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ModelHolder:
    """Loads the model in a background thread, retrying with back-off.

    What went wrong is logged (URLs without their query string); HTTP responses get only
    ``reason()``: a fixed reason code and the error's class name, never a path, URL or message.
    """

    def __init__(self, source: Optional[str], sha256: Optional[str] = None,
                 max_backoff: float = 30.0, max_bytes: Optional[int] = None):
        from .model import DEFAULT_MAX_MODEL_BYTES

        self.source = source
        self.sha256 = sha256
        self.max_bytes = max_bytes or DEFAULT_MAX_MODEL_BYTES
        self.max_backoff = max_backoff
        self.model: Optional[IntentModel] = None
        self.last_error_class: Optional[str] = None
        self.load_seconds: Optional[float] = None
        self.started = time.perf_counter()
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    @property
    def ready(self) -> bool:
        return self.model is not None

    def reason(self) -> Dict[str, str]:
        """Why the model is not there, safe to show without a key."""
        if not self.source:
            return {"code": "model_not_configured"}
        if self.last_error_class:
            return {"code": "model_load_failed", "errorClass": self.last_error_class}
        return {"code": "model_not_loaded"}

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="model-loader", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        from .model import ModelConfigError, load_model, redact_url, scrub_urls

        if not self.source:
            log.error("no model configured (set --model or INTENT_MODEL)")
            return
        delay = 1.0
        while not self._stop.is_set():
            try:
                model = load_model(self.source, expected_sha256=self.sha256,
                                   max_bytes=self.max_bytes)
                self.load_seconds = time.perf_counter() - self.started
                self.model = model
                self.last_error_class = None
                log.info("ready: model %s (data sha256 %s, file sha256 %s) from %s, %.2fs after start",
                         model.version, model.data_sha256[:12], model.file_sha256[:12],
                         redact_url(self.source), self.load_seconds)
                return
            except Exception as exc:  # keep serving liveness; retry later
                self.last_error_class = type(exc).__name__
                detail = scrub_urls(str(exc))
                if isinstance(exc, ModelConfigError):  # the settings will not change: no retry
                    log.error("model load failed, not retrying (fix the settings): %s: %s",
                              self.last_error_class, detail)
                    return
                log.error("model load failed (retrying in %.0fs): %s: %s", delay,
                          self.last_error_class, detail)
                self._stop.wait(delay)
                delay = min(delay * 2, self.max_backoff)


def _validate(body: Any) -> Dict[str, Any]:
    if not isinstance(body, dict):
        raise BadRequest("The request body must be a JSON object.")
    kind = body.get("kind")
    if kind != "Conversation":
        raise BadRequest(f"Invalid value for 'kind': {kind!r}. Supported: 'Conversation'.")
    ai = body.get("analysisInput")
    if not isinstance(ai, dict):
        raise BadRequest("'analysisInput' is required and must be an object.")
    item = ai.get("conversationItem")
    if not isinstance(item, dict):
        raise BadRequest("'analysisInput.conversationItem' is required and must be an object.")
    text = item.get("text")
    if not isinstance(text, str):
        raise BadRequest("'analysisInput.conversationItem.text' is required and must be a string.")
    if not text.strip():
        raise BadRequest("'analysisInput.conversationItem.text' must not be empty.")
    if len(text) > MAX_TEXT_CHARS:
        raise BadRequest(f"'analysisInput.conversationItem.text' exceeds the limit of "
                         f"{MAX_TEXT_CHARS} characters ({len(text)}).")
    for key in ("id", "participantId", "language"):
        if key in item and not isinstance(item[key], str):
            raise BadRequest(f"'analysisInput.conversationItem.{key}' must be a string.")
    params = body.get("parameters", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise BadRequest("'parameters' must be an object.")
    sit = params.get("stringIndexType", DEFAULT_STRING_INDEX_TYPE)
    if sit not in STRING_INDEX_TYPES:
        raise BadRequest(f"Invalid value for 'parameters.stringIndexType': {sit!r}. "
                         f"Supported: {', '.join(STRING_INDEX_TYPES)}.")
    return {"text": text, "stringIndexType": sit}


def parse_added_latency_ms(value: Any) -> float:
    """``INTENT_ADDED_LATENCY_MS``: a number of milliseconds >= 0 (empty/None = 0); ValueError otherwise."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return 0.0
    ms = float(value)
    if not ms >= 0 or ms == float("inf"):
        raise ValueError(f"INTENT_ADDED_LATENCY_MS must be a number of ms >= 0, got {value!r}")
    return ms


def create_app(model_source: Optional[str] = None, api_key: Optional[str] = None,
               model_sha256: Optional[str] = None, added_latency_ms: float = 0.0,
               model_max_bytes: Optional[int] = None,
               authoring: Optional[Authoring] = None) -> Starlette:
    """``authoring``: an ``authoring.Authoring`` (a project store is configured): its routes are mounted
    and predictions are answered by the model deployed to the request's projectName/deploymentName
    instead of the single ``model_source`` model.
    ``added_latency_ms``: extra delay of every prediction answer (benchmarks: a slow model). It is an
    ``asyncio.sleep``, so the event loop keeps serving other requests meanwhile.
    ``model_max_bytes``: the largest model file accepted (default 200 MiB)."""
    holder = ModelHolder(model_source, model_sha256, max_bytes=model_max_bytes)
    added_latency_s = parse_added_latency_ms(added_latency_ms) / 1000.0
    key_bytes = api_key.encode("utf-8") if api_key else None

    def not_ready() -> JSONResponse:
        # no path, URL or error message here: these endpoints need no key (details are logged)
        return JSONResponse({"error": {"code": "ServiceUnavailable",
                                       "message": "The model is not loaded yet; retry later.",
                                       "innererror": holder.reason()}},
                            status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    def model_headers(model: IntentModel) -> Dict[str, str]:
        return {"x-model-version": model.version, "x-model-data-sha256": model.data_sha256}

    async def live(request: Request) -> JSONResponse:
        return JSONResponse({"status": "alive"})

    def store_not_ready() -> JSONResponse:
        return JSONResponse({"error": {"code": "ServiceUnavailable",
                                       "message": "The deployments are not loaded yet; retry later.",
                                       "innererror": {"code": "deployments_not_synced"}}},
                            status_code=503, headers={"Retry-After": str(RETRY_AFTER_SECONDS)})

    async def ready(request: Request) -> JSONResponse:
        if authoring is not None:
            if not authoring.ready:
                return store_not_ready()
            return JSONResponse({"status": "ready", "deployments": len(authoring.registry.snapshot())})
        model = holder.model
        if model is None:
            return not_ready()
        return JSONResponse({"status": "ready", "modelVersion": model.version},
                            headers=model_headers(model))

    async def model_info(request: Request) -> JSONResponse:
        from .model import is_url

        if authoring is not None:
            return JSONResponse(authoring.info())
        model = holder.model
        if model is None:
            return not_ready()
        info = model.info()
        # the digest of the bytes that were loaded; never the path or URL they came from
        info["model_sha256"] = model.file_sha256
        info["model_sha256_pinned"] = bool(holder.sha256)
        info["source_kind"] = "url" if is_url(holder.source or "") else "file"
        info["loadSeconds"] = holder.load_seconds
        return JSONResponse(info, headers=model_headers(model))

    async def analyze(request: Request) -> JSONResponse:
        if key_bytes is not None:
            given = request.headers.get("ocp-apim-subscription-key", "").encode("utf-8")
            if not hmac.compare_digest(given, key_bytes) and not (
                    authoring is not None and authoring.is_authoring_key(given)):
                return error(401, "401", "Access denied due to invalid subscription key. "
                                         "Provide a valid key in the Ocp-Apim-Subscription-Key header.")
        api_version = request.query_params.get("api-version")
        if api_version not in API_VERSIONS:
            return error(400, "InvalidArgument",
                         f"Unsupported or missing api-version {api_version!r}. "
                         f"Supported: {', '.join(API_VERSIONS)}.")
        if authoring is None:
            model = holder.model
            if model is None:
                return not_ready()
        elif not authoring.ready:
            return store_not_ready()
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            return error(413, "RequestEntityTooLarge",
                         f"The request body exceeds {MAX_BODY_BYTES} bytes.")
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError):
            return error(400, "InvalidArgument", "The request body is not valid JSON.")
        try:
            req = _validate(body)
        except BadRequest as exc:
            return error(400, "InvalidArgument", exc.message)
        if authoring is not None:
            model, problem = authoring.resolve(body.get("parameters"))
            if problem is not None:
                return JSONResponse(problem[1], status_code=problem[0])
        # checked above (holder.model), or resolve() gave a model since it gave no problem
        assert model is not None
        prediction = model.analyze(req["text"], req["stringIndexType"])
        if added_latency_s:
            await asyncio.sleep(added_latency_s)
        headers = model_headers(model)
        headers["apim-request-id"] = request.headers.get("apim-request-id") or str(uuid.uuid4())
        return JSONResponse({"kind": "ConversationResult",
                             "result": {"query": req["text"], "prediction": prediction}},
                            headers=headers)

    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, HTTPException)  # registered for HTTPException only
        codes = {404: ("NotFound", "Resource not found."),
                 405: ("MethodNotAllowed", "Method not allowed for this resource.")}
        code, msg = codes.get(exc.status_code, ("InvalidRequest", str(exc.detail)))
        return error(exc.status_code, code, msg, headers=getattr(exc, "headers", None))

    async def server_error(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        return error(500, "InternalServerError", "An internal error occurred.")

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if authoring is not None:
            authoring.start()
        else:
            holder.start()
        yield
        holder.stop()
        if authoring is not None:
            authoring.stop()

    app = Starlette(
        routes=[
            Route("/language/:analyze-conversations", analyze, methods=["POST"]),
            Route("/health/live", live, methods=["GET"]),
            Route("/health/ready", ready, methods=["GET"]),
            Route("/model", model_info, methods=["GET"]),
        ] + (list(authoring.routes) if authoring is not None else []),
        exception_handlers={HTTPException: http_error, Exception: server_error},
        lifespan=lifespan,
    )
    app.state.holder = holder
    app.state.authoring = authoring
    app.state.added_latency_ms = added_latency_s * 1000.0
    return app


def create_app_from_env() -> Starlette:
    """Factory for ``uvicorn --factory`` and multi-worker runs (config from env)."""
    from .authoring import Authoring
    from .cli import configure_logging
    from .model import parse_max_model_bytes

    configure_logging()
    authoring = Authoring.from_env()  # None without a project store (INTENT_STORE*)
    return create_app(model_source=os.environ.get("INTENT_MODEL"),
                      api_key=os.environ.get("INTENT_API_KEY") or None,
                      model_sha256=os.environ.get("INTENT_MODEL_SHA256") or None,
                      added_latency_ms=parse_added_latency_ms(os.environ.get("INTENT_ADDED_LATENCY_MS")),
                      model_max_bytes=parse_max_model_bytes(os.environ.get("INTENT_MODEL_MAX_BYTES")),
                      authoring=authoring)
