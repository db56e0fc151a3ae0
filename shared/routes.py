"""The route registry: every branch route is declared once, here-by-registration, and everything else is derived.

A route is one :class:`RouteSpec`: its name, the CLU intents that lead to it, the slot it can fill (and the entity
category that fills it), its handler and the response keys the handler answers with. From the registry come:

- the intent stage's choice of route (:func:`shared.routing.choose_route`);
- the intent stage's queue output bindings, one per route (``functions/intent_stage.py``);
- one branch handler function per route (``functions/branch_handlers.py``) and its poison trigger;
- the telemetry ``route`` dimension, the catalog check (every response key in Korean and English, tests) and the
  infrastructure's queue list (``tests/test_deploy.py`` checks ``infra/main.bicep`` against :meth:`RouteRegistry.queues`).

The built-in routes register themselves in :mod:`shared.branch_handlers`; :data:`ROUTES` is complete once that module
is imported (:func:`routes` does it). README, "How to add a route", walks through adding one.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover - types only
    from shared.branch_handlers import Answer, Context
    from shared.models import RoutedMessage
    from shared.state import UserState

#: A handler: ``(message, state, context) -> Answer``; may change the state (slots, handoff).
Handler = Callable[["RoutedMessage", "UserState", "Context"], "Answer"]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
#: The route of a message no route's intent matched confidently (CLU ``None``, low confidence, unknown intent).
FALLBACK = "fallback"
#: The route of a non-text message (a file).
UNSUPPORTED = "unsupported"


@dataclass(frozen=True)
class RouteSpec:
    """One branch route. ``name``: lowercase letters, digits and ``_`` (it names a queue and a binding)."""

    name: str
    handler: Handler
    response_keys: tuple[str, ...]
    intents: tuple[str, ...] = ()
    slot: str | None = None
    slot_entity: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name):
            raise ValueError(f"route name {self.name!r}: lowercase letters, digits and '_', 1-40 characters")
        if (self.slot is None) != (self.slot_entity is None):
            raise ValueError(f"route {self.name!r}: slot and slot_entity go together")

    @property
    def queue(self) -> str:
        """The route's queue, e.g. ``route-order-status``."""
        return "route-" + self.name.replace("_", "-")

    @property
    def binding(self) -> str:
        """The intent stage's output binding name for this route, e.g. ``to_order_status``."""
        return f"to_{self.name}"

    @property
    def function_name(self) -> str:
        """The branch handler function's name, e.g. ``route_order_status``."""
        return f"route_{self.name}"


class RouteRegistry:
    """The routes in registration order. Registering a second route with a taken name, intent or slot fails."""

    def __init__(self) -> None:
        self._routes: dict[str, RouteSpec] = {}

    def register(self, spec: RouteSpec) -> RouteSpec:
        """Add ``spec``; returns it. Raises ``ValueError`` when its name, an intent or its slot is taken."""
        if spec.name in self._routes:
            raise ValueError(f"route {spec.name!r} is already registered")
        for other in self._routes.values():
            shared_intents = set(spec.intents) & set(other.intents)
            if shared_intents:
                raise ValueError(f"intents {sorted(shared_intents)} already lead to route {other.name!r}")
            if spec.slot is not None and spec.slot == other.slot:
                raise ValueError(f"slot {spec.slot!r} is already filled by route {other.name!r}")
        self._routes[spec.name] = spec
        return spec

    def unregister(self, name: str) -> None:
        """Remove a route (tests that register a throwaway route)."""
        self._routes.pop(name, None)

    def get(self, name: str) -> RouteSpec:
        """The route called ``name``. Raises ``KeyError`` for an unknown one."""
        return self._routes[name]

    def __contains__(self, name: object) -> bool:
        return name in self._routes

    def __iter__(self) -> Iterator[RouteSpec]:
        return iter(list(self._routes.values()))

    def __len__(self) -> int:
        return len(self._routes)

    def for_intent(self, intent: str | None) -> RouteSpec | None:
        """The route a CLU top intent leads to, or None (CLU's ``None``, or an intent without a route)."""
        return next((r for r in self._routes.values() if intent is not None and intent in r.intents), None)

    def for_slot(self, slot: str | None) -> RouteSpec | None:
        """The route that fills ``slot``, or None."""
        return next((r for r in self._routes.values() if slot is not None and r.slot == slot), None)

    def queues(self) -> list[str]:
        """Every route's queue, in registration order."""
        return [r.queue for r in self._routes.values()]

    def describe(self) -> list[dict[str, Any]]:
        """The registry as data (docs, tests)."""
        return [{"name": r.name, "queue": r.queue, "intents": list(r.intents), "slot": r.slot,
                 "slot_entity": r.slot_entity, "response_keys": list(r.response_keys)} for r in self._routes.values()]


#: The process-wide registry. The built-in routes are registered by :mod:`shared.branch_handlers`.
ROUTES = RouteRegistry()


def routes() -> RouteRegistry:
    """:data:`ROUTES` with the built-in routes registered."""
    importlib.import_module("shared.branch_handlers")
    return ROUTES
