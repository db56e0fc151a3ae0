"""Drive conversations the way SendBird would: signed webhooks, several users in parallel, each user's
messages in order, every message posted 1-3 times (webhook retries, some concurrent, some later), and
SendBird's own retry policy when a delivery fails or times out."""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from faults.plan import FaultPlan
from tools import webhooks
from tools.gateway_stack import LOCAL_API_TOKEN

#: Utterances the retail model routes to a replying route (checked again at start by :func:`preflight`).
UTTERANCES = [
    "hi", "hello there", "what can you do?", "where is my order?", "my order number is 20261119-0042",
    "20261119-0042", "show me sneakers", "I'm looking for running shoes", "do you sell perfume?",
    "help please", "what's the weather on mars", "thanks, bye!", "has it shipped?",
    "안녕하세요", "주문 조회하고 싶어요", "운동화 보여주세요", "뭐 할 수 있어?", "화성 날씨 알려줘", "고마워요",
]


def preflight(intent_base_url: str, utterances: list[str] = UTTERANCES) -> tuple[list[str], list[str]]:
    """Split ``utterances`` into (usable, excluded): excluded ones have HumanHandoff as top intent (a handed-off
    conversation is silent by design, which would blur the accounting)."""
    from tools.gateway_stack import intent_client, top_intent

    usable, excluded = [], []
    client = intent_client(intent_base_url)
    for text in utterances:
        (excluded if top_intent(client, text) == "HumanHandoff" else usable).append(text)
    return usable, excluded


@dataclass
class Attempt:
    status: int | None          # None: connection error / timeout
    outcome: str                # accepted / duplicate-ok / ignored / error text
    at_ms: int
    correlation_id: str | None = None


@dataclass
class Message:
    user: str
    channel: str
    message_id: int
    index: int                  # position in the user's conversation
    text: str
    sent_at_ms: int = 0
    deliveries: int = 1
    attempts: list[Attempt] = field(default_factory=list)

    @property
    def accepted(self) -> bool:
        return any(a.status == 200 and a.outcome == "accepted" for a in self.attempts)


class Driver:
    """``base_url``: the runner's URL, or a callable giving the live instances' URLs (the platform's front end:
    each post goes to the next live instance, round-robin)."""

    def __init__(self, base_url: str | Callable[[], list[str]], plan: FaultPlan, utterances: list[str]):
        self._urls: Callable[[], list[str]] = base_url if callable(base_url) else (lambda: [base_url])
        self._next_url = itertools.count()
        self.plan = plan
        self.utterances = utterances
        self.rng = random.Random(plan.seed)
        self.messages: list[Message] = []
        self.total = plan.users * plan.messages
        self.started = 0                   # first deliveries begun (progress for the fault scheduler)
        self.counters = {"posts": 0, "extra_deliveries": 0, "concurrent": 0, "late": 0, "failed_posts": 0,
                         "sendbird_retries": 0, "gave_up": 0}
        self._lock = threading.Lock()
        self._local = threading.local()
        self._extra: list[threading.Thread] = []
        self._mid = int(time.time() * 1000) * 1000

    # ---- SendBird's side of one delivery
    def _session(self) -> requests.Session:
        if not hasattr(self._local, "s"):
            self._local.s = requests.Session()
        return self._local.s

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self.counters[key] += n

    def deliver(self, msg: Message, body: bytes) -> bool:
        """Post ``body`` like SendBird: on an error or a timeout re-post after each back-off (3 times)."""
        backoffs = list(self.plan.webhook_retry_backoff_s)
        while True:
            at = int(time.time() * 1000)
            self._count("posts")
            try:
                urls = self._urls() or [""]
                r = webhooks.post(self._session(), urls[next(self._next_url) % len(urls)], body, LOCAL_API_TOKEN,
                                  timeout=self.plan.webhook_timeout_s)
                a = Attempt(r.status, r.body.get("status") or str(r.body)[:80], at, r.body.get("correlation_id"))
            except requests.RequestException as exc:
                self._local.s = requests.Session()  # a dead keep-alive connection: start afresh
                a = Attempt(None, f"{type(exc).__name__}", at)
            with self._lock:
                msg.attempts.append(a)
            if a.status == 200:
                return True
            self._count("failed_posts")
            if not backoffs:
                self._count("gave_up")
                return False
            self._count("sendbird_retries")
            time.sleep(backoffs.pop(0))

    # ---- one user's conversation
    def _user(self, u: int, rng: random.Random) -> None:
        user, channel = f"fi-user-{self.plan.seed}-{u:03d}", f"sendbird_group_channel_fi_{self.plan.seed}_{u:03d}"
        for i in range(self.plan.messages):
            with self._lock:
                self._mid += 1
                mid = self._mid
            text = rng.choice(self.utterances)
            msg = Message(user, channel, mid, i, text, int(time.time() * 1000))
            msg.deliveries = rng.choices((1, 2, 3), weights=self.plan.deliveries_weights)[0]
            with self._lock:
                self.messages.append(msg)
                self.started += 1
            body = webhooks.encode(webhooks.message_send_event(
                user_id=user, text=text, message_id=mid, channel_url=channel, created_at_ms=msg.sent_at_ms))
            for _ in range(msg.deliveries - 1):
                concurrent = rng.random() < self.plan.concurrent_share
                delay = 0.0 if concurrent else rng.uniform(*self.plan.late_delivery_s)
                self._count("extra_deliveries")
                self._count("concurrent" if concurrent else "late")
                t = threading.Thread(target=self._later, args=(msg, body, delay), daemon=True)
                with self._lock:
                    self._extra.append(t)
                t.start()
            self.deliver(msg, body)
            time.sleep(rng.uniform(*self.plan.gap_ms) / 1000)

    def _later(self, msg: Message, body: bytes, delay: float) -> None:
        if delay:
            time.sleep(delay)
        self.deliver(msg, body)

    def run(self) -> list[Message]:
        """Run every user's conversation in parallel; returns once every delivery (and re-post) is done."""
        threads = [threading.Thread(target=self._user, args=(u, random.Random(self.rng.random())), daemon=True)
                   for u in range(self.plan.users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        while True:
            with self._lock:
                pending = [t for t in self._extra if t.is_alive()]
            if not pending:
                break
            for t in pending:
                t.join()
        return self.messages

    @property
    def progress(self) -> float:
        with self._lock:
            return self.started / self.total if self.total else 1.0
