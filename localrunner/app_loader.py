"""Import a Python v2 programming-model app and describe its functions.

Mirrors what the Python worker's indexer does: find the single FunctionApp
(FunctionRegister) instance in the script module, call ``get_functions()``
once, and validate each function's parameters against its bindings.
"""
from __future__ import annotations

import importlib
import inspect
import os
import re
import sys
import types
import typing
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Mapping, Optional


from .config import ConfigError

if TYPE_CHECKING:  # pragma: no cover - types only
    from .timers import TimerTriggerSpec


class FunctionLoadError(ConfigError):
    """The app or one of its functions cannot be loaded the way the host would."""


DEFAULT_CONNECTION = "AzureWebJobsStorage"
#: azure-functions-host ScriptHost.ValidateHttpFunction: the host's own API lives under these.
RESERVED_ROUTE_PREFIXES = ("admin", "runtime")
RESERVED_ROUTE_MESSAGE = "The specified route conflicts with one or more built in routes."
# Binding names (azure-functions-host Utility.ValidateBinding, used by WorkerFunctionMetadataProvider):
# a letter, then letters and digits; snake_case is accepted since host 4.1038, a double underscore is not.
_BINDING_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")
_QUEUE_NAME_RE = re.compile(r"^(?=.{3,63}$)[a-z0-9]+(-[a-z0-9]+)*$")
_EXPR_RE = re.compile(r"%([^%]+)%")


@dataclass
class QueueTarget:
    """A resolved queue: the connection string (value) and the queue name."""

    connection_name: str
    connection_string: str
    queue_name: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.connection_string, self.queue_name)


@dataclass
class HttpTriggerSpec:
    param: str
    route: str
    methods: Optional[List[str]]  # None = every method
    auth_level: str  # "anonymous" | "function" | "admin"


@dataclass
class QueueTriggerSpec:
    param: str
    target: QueueTarget
    param_type: Any = None  # annotation: str / bytes / QueueMessage


@dataclass
class OutputSpec:
    name: str  # parameter name or "$return"
    kind: str  # "queue" | "http"
    target: Optional[QueueTarget] = None


@dataclass
class FunctionSpec:
    name: str
    func: Callable
    is_async: bool
    http: Optional[HttpTriggerSpec] = None
    queue: Optional[QueueTriggerSpec] = None
    timer: Optional["TimerTriggerSpec"] = None  # timers.py
    outputs: List[OutputSpec] = field(default_factory=list)
    wants_context: bool = False
    directory: str = ""

    @property
    def has_return(self) -> bool:
        """A ``$return`` output binding exists (the worker fails a non-None return value otherwise)."""
        return any(o.name == "$return" for o in self.outputs)

    @property
    def trigger_param(self) -> str:
        """The parameter the trigger value is passed as."""
        trigger = self.http or self.queue or self.timer
        assert trigger is not None, f"{self.name}: no trigger"
        return trigger.param

    @property
    def trigger_type(self) -> str:
        return "httpTrigger" if self.http else "timerTrigger" if self.timer else "queueTrigger"

    def describe(self) -> Dict[str, Any]:
        d: Dict[str, Any] = {"name": self.name, "trigger": self.trigger_type}
        if self.http:
            d.update(route=self.http.route, methods=self.http.methods, authLevel=self.http.auth_level)
        if self.queue:
            d.update(queueName=self.queue.target.queue_name, connection=self.queue.target.connection_name)
        if self.timer:
            d.update(schedule=self.timer.schedule, runOnStartup=self.timer.run_on_startup,
                     useMonitor=self.timer.use_monitor)
        d["outputs"] = [
            {"name": o.name, "type": o.kind, **({"queueName": o.target.queue_name} if o.target else {})}
            for o in self.outputs
        ]
        return d


# -- expression / connection resolution -------------------------------------

def resolve_expression(value: str, env: Mapping[str, str], *, what: str) -> str:
    """Resolve %SETTING% app-setting expressions like the host does."""

    def repl(m: "re.Match[str]") -> str:
        key = m.group(1)
        if key not in env:
            raise FunctionLoadError(f"{what}: app setting '{key}' used in '{value}' is not defined (local.settings.json Values or environment)")
        return env[key]

    return _EXPR_RE.sub(repl, value)


def validate_queue_name(name: str, *, what: str) -> str:
    if not _QUEUE_NAME_RE.match(name):
        raise FunctionLoadError(
            f"{what}: invalid queue name '{name}': 3-63 characters, lowercase letters, digits and single hyphens, "
            "starting and ending with a letter or digit"
        )
    return name


def resolve_connection(name: Optional[str], env: Mapping[str, str], *, what: str) -> tuple[str, str]:
    """Return (connection name, connection string) for a storage connection setting."""
    conn = (name or "").strip() or DEFAULT_CONNECTION
    conn = resolve_expression(conn, env, what=what) if "%" in conn else conn
    candidates = [conn]
    if not conn.lower().startswith("azurewebjobs"):
        candidates.append("AzureWebJobs" + conn)
    candidates.append("ConnectionStrings:" + conn)
    for cand in candidates:
        value = env.get(cand)
        if value:
            return conn, value
    for suffix in ("__serviceUri", "__queueServiceUri", "__accountName"):
        if env.get(conn + suffix):
            raise FunctionLoadError(
                f"{what}: connection '{conn}' uses the identity-based form ({conn}{suffix}); "
                "identity-based connections are not supported by localrunner. Set "
                f"'{conn}' to a connection string (e.g. UseDevelopmentStorage=true for Azurite)."
            )
    raise FunctionLoadError(
        f"{what}: storage connection setting '{conn}' is not defined (set it in local.settings.json Values "
        "or the environment; e.g. UseDevelopmentStorage=true for Azurite)"
    )


def validate_binding_name(name: Any, *, what: str) -> None:
    """The host refuses binding names other than ``$return`` and letter-first alphanumerics (single
    underscores allowed); the message is the host's."""
    if name == "$return":
        return
    if not isinstance(name, str) or not _BINDING_NAME_RE.match(name) or "__" in name:
        raise FunctionLoadError(
            f"{what}: The binding name {name} is invalid. Please assign a valid name to the binding."
        )


def is_reserved_route(route: str) -> bool:
    """ScriptHost.ValidateHttpFunction: the declared route (no routePrefix), trimmed of '/', lower-cased,
    must not *start with* 'admin' or 'runtime' (a plain string prefix: 'administration/x' is refused too)."""
    return route.strip("/").lower().startswith(RESERVED_ROUTE_PREFIXES)


def _enum_value(v: Any) -> str:
    return str(getattr(v, "value", v))


def _set_repr(names: Iterable[str]) -> str:
    """The worker prints a Python set; sorted here so the message is stable."""
    return "{" + ", ".join(repr(n) for n in sorted(names)) + "}"


# -- loading ------------------------------------------------------------------

def import_app_module(app_root: str, module_name: str = "function_app") -> types.ModuleType:
    """Import (freshly) the app's script module from app_root."""
    app_root = os.path.abspath(app_root)
    script = os.path.join(app_root, *module_name.split(".")) + ".py"
    if not os.path.isfile(script):
        raise FunctionLoadError(f"{script}: not found (the v2 programming model needs function_app.py in the app root)")
    if sys.path[:1] != [app_root]:
        if app_root in sys.path:
            sys.path.remove(app_root)
        sys.path.insert(0, app_root)
    # A previous Runner (or a test) may have imported a module of the same
    # name from elsewhere; the host always starts from a fresh process, and
    # get_functions() may only be called once per FunctionApp object.
    sys.modules.pop(module_name, None)
    importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # surface import errors clearly, like the worker does
        raise FunctionLoadError(f"importing {module_name} from {app_root} failed: {type(exc).__name__}: {exc}") from exc
    mod_file = os.path.abspath(getattr(module, "__file__", "") or "")
    if os.path.dirname(mod_file) != os.path.dirname(script):
        raise FunctionLoadError(f"imported {module_name} from {mod_file}, expected {script}")
    return module


def find_function_app(module: types.ModuleType) -> Any:
    from azure.functions.decorators.function_app import FunctionRegister

    apps = [v for v in vars(module).values() if isinstance(v, FunctionRegister)]
    uniq: List[FunctionRegister] = []
    for a in apps:
        if not any(a is u for u in uniq):
            uniq.append(a)
    if not uniq:
        raise FunctionLoadError(f"{module.__name__}: no azure.functions.FunctionApp instance found at module level")
    if len(uniq) > 1:
        raise FunctionLoadError(f"{module.__name__}: multiple FunctionApp instances found; the host allows only one")
    return uniq[0]


def build_specs(app: Any, env: Mapping[str, str], app_root: str) -> List[FunctionSpec]:
    specs: List[FunctionSpec] = []
    names = set()
    try:
        functions = app.get_functions()
    except Exception as exc:
        raise FunctionLoadError(f"indexing the FunctionApp failed: {type(exc).__name__}: {exc}") from exc
    for f in functions:
        name = f.get_function_name()
        if name.lower() in names:
            raise FunctionLoadError(f"duplicate function name '{name}'")
        names.add(name.lower())
        user_fn = f.get_user_function()
        what = f"function '{name}'"
        trigger = f.get_trigger()
        spec = FunctionSpec(
            name=name,
            func=user_fn,
            is_async=inspect.iscoroutinefunction(user_fn),
            directory=app_root,
        )
        if trigger is None:
            raise FunctionLoadError(f"{what}: has no trigger")
        ttype = trigger.type
        binding_params: Dict[str, str] = {}
        for b in f.get_bindings():
            validate_binding_name(b.name, what=what)
        for b in f.get_bindings():
            btype = b.type
            direction = _enum_value(getattr(b, "_direction", getattr(b, "direction", "")))
            bname = b.name
            if b is trigger:
                continue
            if btype == "http" and str(direction).upper() in ("OUT", "1"):
                spec.outputs.append(OutputSpec(name=bname, kind="http"))
                if bname != "$return":
                    binding_params[bname] = "http"
                continue
            if btype == "queue" and str(direction).upper() in ("OUT", "1"):
                qname = resolve_expression(b.queue_name, env, what=f"{what} output '{bname}'")
                validate_queue_name(qname, what=f"{what} output '{bname}'")
                cname, cstr = resolve_connection(getattr(b, "connection", None), env, what=f"{what} output '{bname}'")
                spec.outputs.append(OutputSpec(name=bname, kind="queue", target=QueueTarget(cname, cstr, qname)))
                if bname != "$return":
                    binding_params[bname] = "queue"
                continue
            raise FunctionLoadError(
                f"{what}: binding '{bname}' of type '{btype}' (direction {direction}) is not supported by localrunner "
                "(supported: httpTrigger, queueTrigger, queue output, http output)"
            )
        if ttype == "httpTrigger":
            methods = getattr(trigger, "methods", None)
            route = getattr(trigger, "route", None)
            if route is None or not str(route).strip():
                route = name  # the host's default: the function name
            if is_reserved_route(route):
                raise FunctionLoadError(f"{what}: route '{route}': {RESERVED_ROUTE_MESSAGE}")
            auth = _enum_value(getattr(trigger, "auth_level", None) or "function").lower()
            spec.http = HttpTriggerSpec(
                param=trigger.name,
                route=route.strip("/"),
                methods=[_enum_value(m).upper() for m in methods] if methods else None,
                auth_level=auth,
            )
        elif ttype == "queueTrigger":
            qname = resolve_expression(trigger.queue_name, env, what=f"{what} trigger")
            validate_queue_name(qname, what=f"{what} trigger")
            cname, cstr = resolve_connection(getattr(trigger, "connection", None), env, what=f"{what} trigger")
            spec.queue = QueueTriggerSpec(param=trigger.name, target=QueueTarget(cname, cstr, qname))
        elif ttype == "timerTrigger":
            from .timers import timer_spec  # timers.py imports this module
            spec.timer = timer_spec(trigger, env, what=what)
        else:
            raise FunctionLoadError(
                f"{what}: trigger type '{ttype}' is not supported by localrunner (supported: httpTrigger, queueTrigger, "
                "timerTrigger)"
            )
        binding_params[trigger.name] = ttype

        # parameters vs bindings, like the worker's Registry.add_indexed_function (functions.py): every
        # Python parameter except an unbound 'context' needs a binding, whatever its default value or kind
        sig = inspect.signature(user_fn)
        params = dict(sig.parameters)
        try:
            hints = typing.get_type_hints(user_fn)
        except Exception:
            hints = {k: p.annotation for k, p in params.items()}
        if "context" in params and "context" not in binding_params:
            spec.wants_context = True
            params.pop("context")
        extra_in_py = set(params) - set(binding_params)
        missing_in_py = set(binding_params) - set(params)
        if extra_in_py:
            raise FunctionLoadError(
                f"cannot load the {name} function: the following parameters are declared in Python but not in "
                f"function.json: {_set_repr(extra_in_py)}"
            )
        if missing_in_py:
            raise FunctionLoadError(
                f"cannot load the {name} function: the following parameters are declared in function.json but "
                f"not in Python: {_set_repr(missing_in_py)}"
            )
        if spec.queue:
            spec.queue.param_type = hints.get(spec.queue.param)
        specs.append(spec)
    return specs
