"""The composition root with in-memory fakes, and one driver that moves messages through the stages as the queues
would (the one chain driver of the unit tests)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from shared.bootstrap import Services
from shared.branch_handlers import handle
from shared.catalog import ResponseCatalog
from shared.intent_stage import classify
from shared.models import InboundMessage, ReplyMessage, RoutedMessage, decode, now_ms
from shared.processing import delivered
from shared.reply_sender import Delivery, deliver
from shared.settings import AppConfig, load_settings
from shared.state import Turn
from shared.telemetry import DISABLED
from tests.support.fakes import (FakeSendBird, InMemoryBlobs, InMemoryReviewStore, InMemoryStateStore,
                                 RecordingQueueSender, ScriptedIntentClient)
from tests.support.messages import inbound


def sample_config() -> AppConfig:
    from tests.support.samples import sample_values
    return load_settings(sample_values())


def fake_services(config: AppConfig | None = None, **overrides: Any) -> Services:
    """The same :class:`~shared.bootstrap.Services` the app builds, with every external system faked; any client
    can be replaced by keyword (``fake_services(intent=my_fake)``)."""
    parts: dict[str, Any] = dict(config=config or sample_config(), queues=RecordingQueueSender(),
                                 state_store=InMemoryStateStore(), intent=ScriptedIntentClient(),
                                 sendbird=FakeSendBird(), catalog=ResponseCatalog.load(), telemetry=DISABLED,
                                 review_store=InMemoryReviewStore(), blobs=InMemoryBlobs())
    return Services(**{**parts, **overrides})


class Chain:
    """Drives messages through intent stage -> branch handler -> reply sender on one :class:`Services`.

    ``held_back`` collects messages a handler re-queued to wait for an earlier one (read from the route queues).
    """

    def __init__(self, services: Services):
        self.svc = services
        self.next_id = 100
        self._handed_out: Counter[str] = Counter()

    # the stages, one call each (with an optional clock, epoch ms)
    def route(self, msg: InboundMessage, clock: Callable[[], int] = now_ms) -> RoutedMessage | None:
        return classify(msg, self.svc.intent_stage(), clock=clock)

    def handle(self, routed: RoutedMessage, clock: Callable[[], int] = now_ms) -> ReplyMessage | None:
        """The branch handler on ``routed`` as the queue hands it out: handling the same routed message again is a
        redelivery (dequeue count 2, 3...)."""
        self._handed_out[routed.to_queue_text()] += 1
        with delivered(self._handed_out[routed.to_queue_text()]):
            # nothing else runs while a single-threaded chain waits: the order wait's pauses are skipped
            return handle(routed, self.svc.branch(), clock=clock, sleep=lambda _seconds: None)

    def fail_handler(self, routed: RoutedMessage) -> None:
        """What a branch handler that failed on ``routed`` leaves: this delivery counted (a later copy is a
        redelivery) and its chain's send claim released (:func:`shared.branch_handlers.handle`)."""
        from shared.intent_stage import release_chain_claim
        self._handed_out[routed.to_queue_text()] += 1
        self.svc.state_store.update(routed.user_id, routed.channel_url, lambda s: release_chain_claim(routed, s))

    def send(self, reply: ReplyMessage, clock: Callable[[], int] = now_ms) -> Delivery:
        """The reply sender on ``reply`` as the queue hands it out: sending the same reply again is a redelivery
        (dequeue count 2, 3...), as for a queue message that was not deleted."""
        self._handed_out[reply.to_queue_text()] += 1
        with delivered(self._handed_out[reply.to_queue_text()]):
            return deliver(reply, self.svc.reply_sender(), clock=clock)

    def say(self, text: str, message_type: str = "MESG", clock: Callable[[], int] = now_ms
            ) -> tuple[RoutedMessage | None, ReplyMessage | None]:
        """One user message through all three stages (through the queue encoding, as in production)."""
        self.next_id += 1
        routed = self.route(inbound(text, self.next_id, message_type=message_type), clock)
        if routed is None:
            return None, None
        routed = decode(routed.to_queue_bytes(), RoutedMessage)
        reply = self.handle(routed, clock)
        if reply is not None:
            self.send(reply, clock)
        return routed, reply

    @property
    def held_back(self) -> list[RoutedMessage]:
        queues = self.svc.queues
        assert isinstance(queues, RecordingQueueSender)
        return [decode(t, RoutedMessage) for q, sent in queues.sent.items() if q.startswith("route-")
                for t, _ in sent]

    def turn(self, message_id: int, user: str = "u-1") -> Turn | None:
        return self.svc.state_store.get_or_create(user, "ch-1").turn_for(message_id)
