"""HTTP front end: route templates, auth levels, request/response conversion.

A small WSGI application served by werkzeug's threaded server (HTTP/1.1
keep-alive). See README.md for why werkzeug.
"""
from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import traceback
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Tuple

import azure.functions as func
from azure.functions import _abc as azf_abc
from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from .app_loader import FunctionSpec, HttpTriggerSpec
from .invocation import Invoker, wait_until_zero

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

log = logging.getLogger("localrunner.http")

_CONSTRAINTS = {
    "int": r"-?\d+",
    "long": r"-?\d+",
    "alpha": r"[A-Za-z]+",
    "bool": r"(?:[Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee])",
    "guid": r"[{(]?[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{12}[)}]?",
    "decimal": r"-?\d+(?:\.\d+)?",
    "double": r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?",
    "float": r"-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?",
}
_PARAM_RE = re.compile(r"\{([^{}]+)\}")


class RouteTemplateError(ValueError):
    pass


class CompiledRoute:
    """An ASP.NET-style route template: literals, {name}, {name?}, {name:int}, {*rest}."""

    def __init__(self, template: str, spec: FunctionSpec):
        if spec.http is None:
            raise ValueError(f"function '{spec.name}' has no HTTP trigger")
        self.template = template
        self.spec = spec
        self.http: HttpTriggerSpec = spec.http
        self.names: Dict[str, str] = {}
        parts: List[str] = []
        literal_chars = 0
        n_params = 0
        catch_all = False
        segments = [s for s in template.split("/") if s != ""]
        for seg in segments:
            pieces = []
            pos = 0
            optional_seg = False
            for m in _PARAM_RE.finditer(seg):
                lit = seg[pos:m.start()]
                pieces.append(re.escape(lit))
                literal_chars += len(lit)
                pos = m.end()
                raw = m.group(1).strip()
                n_params += 1
                star = raw.startswith("*")
                raw = raw.lstrip("*")
                optional = raw.endswith("?")
                raw = raw.rstrip("?")
                raw = raw.split("=", 1)[0]
                name, *constraints = raw.split(":")
                name = name.strip()
                if not name or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                    raise RouteTemplateError(f"route '{template}': invalid parameter '{m.group(0)}'")
                group = f"p{len(self.names)}"
                self.names[group] = name
                if star:
                    pat = r".*"
                    catch_all = True
                else:
                    pat = r"[^/]+"
                    for c in constraints:
                        cname = c.split("(", 1)[0].strip().lower()
                        if cname in _CONSTRAINTS:
                            pat = _CONSTRAINTS[cname]
                pieces.append(f"(?P<{group}>{pat})")
                if optional or star:
                    optional_seg = True
            lit = seg[pos:]
            pieces.append(re.escape(lit))
            literal_chars += len(lit)
            body = "".join(pieces)
            if optional_seg and len(_PARAM_RE.findall(seg)) == 1 and seg.startswith("{") and seg.endswith("}"):
                parts.append(f"(?:/{body})?")
            else:
                parts.append(f"/{body}")
        self.regex = re.compile("^" + "".join(parts) + "/?$", re.IGNORECASE)
        # literal routes win over parameterised ones, catch-alls last
        self.order = (catch_all, n_params, -literal_chars)

    def match(self, path: str) -> Optional[Dict[str, str]]:
        m = self.regex.match(path)
        if not m:
            return None
        return {self.names[g]: v for g, v in m.groupdict().items() if v is not None}


def _join_multi(items: Iterable[tuple[str, str]]) -> Dict[str, str]:
    out: Dict[str, List[str]] = {}
    for k, v in items:
        out.setdefault(k, []).append(v)
    return {k: ",".join(v) for k, v in out.items()}


def _to_werkzeug_response(ret: Any) -> Response:
    if ret is None:
        return Response(status=204)
    if isinstance(ret, str):
        return Response(ret.encode("utf-8"), status=200, content_type="text/plain; charset=utf-8")
    if isinstance(ret, azf_abc.HttpResponse):
        headers = ret.headers
        resp = Response(ret.get_body() or b"", status=int(ret.status_code))
        resp.headers.clear()
        has_ct = False
        for k in list(headers.keys()):
            values = headers.get_all(k) if hasattr(headers, "get_all") else [headers[k]]
            if k.lower() == "content-type":
                has_ct = True
            for v in values:
                resp.headers.add(k, v)
        if not has_ct:
            mt = ret.mimetype or "text/plain"
            resp.headers["Content-Type"] = f"{mt}; charset={ret.charset}" if mt.startswith("text/") else mt
        return resp
    raise TypeError(f"HTTP function returned unsupported type {type(ret).__name__} "
                    "(return func.HttpResponse or str)")


def _json_response(obj: Any, status: int = 200) -> Response:
    return Response(json.dumps(obj), status=status, content_type="application/json; charset=utf-8")


class HttpFrontend:
    def __init__(self, specs: List[FunctionSpec], route_prefix: str, invoker: Invoker,
                 function_key: Optional[str], status: Callable[[], Dict[str, Any]],
                 stats: Callable[[], Dict[str, Any]]):
        self.invoker = invoker
        self.function_key = function_key
        self.prefix = route_prefix.strip("/")
        self._status = status
        self._stats = stats
        self.routes: List[CompiledRoute] = []
        for s in specs:
            if s.http:
                full = f"{self.prefix}/{s.http.route}" if self.prefix else s.http.route
                try:
                    self.routes.append(CompiledRoute(full, s))
                except RouteTemplateError as exc:
                    from .app_loader import FunctionLoadError
                    raise FunctionLoadError(f"function '{s.name}': {exc}") from None
        self.routes.sort(key=lambda r: r.order)
        self._inflight = 0
        self._cond = threading.Condition()
        self.draining = False
        #: ``POST /admin/functions/{name}`` (set by the runner: timers.AdminInvoker): name, body -> status, JSON
        self.admin_invoke: Optional[Callable[[str, bytes], Tuple[int, Optional[Dict[str, Any]]]]] = None

    # -- bookkeeping used by graceful stop --------------------------------------
    def wait_idle(self, deadline: float) -> bool:
        return wait_until_zero(self._cond, lambda: self._inflight, deadline)

    def _authorized(self, http: HttpTriggerSpec, request: Request) -> bool:
        if self.function_key is None or http.auth_level == "anonymous":
            return True
        supplied = request.headers.get("x-functions-key") or request.args.get("code")
        if not supplied:
            return False
        return hmac.compare_digest(supplied.encode(), self.function_key.encode())

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        response = self.dispatch(request)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        path = request.path
        low = path.rstrip("/").lower()
        if low == "/admin/host/status":
            return _json_response(self._status())
        if low == "/admin/localrunner/stats":
            return _json_response(self._stats())
        if low == "/admin/functions":
            return _json_response(self._status().get("functions", []))
        if low.startswith("/admin/functions/") and request.method.upper() == "POST":
            return self._admin_invoke(request, path.rstrip("/")[len("/admin/functions/"):])
        if low == "":
            return Response("Your Functions app (localrunner) is up and running.", content_type="text/plain")
        for route in self.routes:
            params = route.match(path)
            if params is None:
                continue
            methods = route.http.methods
            if methods is not None and request.method.upper() not in methods:
                continue  # the host's route constraint: another function may match, else 404
            return self._invoke(route, request, params)
        return Response(status=404)

    def _admin_invoke(self, request: Request, name: str) -> Response:
        """The host's admin API for non-HTTP functions (needs the master key on Azure; here the function key
        when one is set)."""
        if self.draining:
            return _json_response({"error": "host is shutting down"}, status=503)
        if self.function_key is not None and not self._key_matches(request):
            return Response(status=401)
        if self.admin_invoke is None:
            return Response(status=404)
        status, body = self.admin_invoke(name, request.get_data(cache=False) or b"")
        return _json_response(body, status=status) if body is not None else Response(status=status)

    def _key_matches(self, request: Request) -> bool:
        supplied = request.headers.get("x-functions-key") or request.args.get("code")
        return bool(supplied) and hmac.compare_digest(str(supplied).encode(), str(self.function_key).encode())

    def _invoke(self, route: CompiledRoute, request: Request, route_params: Dict[str, str]) -> Response:
        spec = route.spec
        if self.draining:
            return _json_response({"error": "host is shutting down"}, status=503)
        if not self._authorized(route.http, request):
            return Response(status=401)
        with self._cond:
            self._inflight += 1
        try:
            headers = _join_multi((k.lower(), v) for k, v in request.headers.items())
            req = func.HttpRequest(
                method=request.method.upper(),
                url=request.url,
                headers=headers,
                params=_join_multi(request.args.items(multi=True)),
                route_params=route_params,
                body=request.get_data(cache=False) or b"",
            )
            result = self.invoker.invoke(
                spec, req,
                reason="This function was programmatically called via the host APIs.",
                traceparent=request.headers.get("traceparent"),
            )
            if not result.ok:
                body = {"error": "Exception while executing function: Functions." + spec.name,
                        "invocationId": result.invocation_id}
                if result.timed_out:
                    body["error"] = f"Timeout while executing function: Functions.{spec.name}"
                return _json_response(body, status=500)
            ret = result.return_value
            http_outs = [o for o in spec.outputs if o.kind == "http" and o.name != "$return"]
            if ret is None and http_outs:
                ret = result.outs[http_outs[0].name].get()
            try:
                return _to_werkzeug_response(ret)
            except Exception:
                log.error("Function '%s' (Id=%s) returned an invalid HTTP response:\n%s",
                          spec.name, result.invocation_id, traceback.format_exc())
                return _json_response({"error": "Invalid HTTP response from function: Functions." + spec.name,
                                       "invocationId": result.invocation_id}, status=500)
        finally:
            with self._cond:
                self._inflight -= 1
                self._cond.notify_all()


class _QuietHandler(WSGIRequestHandler):
    """HTTP/1.1 keep-alive handler; access log at DEBUG to keep stderr readable."""

    protocol_version = "HTTP/1.1"

    def log_request(self, code="-", size="-"):
        log.debug('%s "%s" %s %s', self.address_string(), self.requestline, code, size)


def build_server(host: str, port: int, app: WSGIApplication) -> ThreadedWSGIServer:
    server = make_server(host, port, app, threaded=True, request_handler=_QuietHandler)
    assert isinstance(server, ThreadedWSGIServer)  # what make_server builds for threaded=True
    server.daemon_threads = True
    return server
