"""What the suite injects, and how much: one :class:`FaultPlan` per run (presets: ``ci`` and ``full``)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace


@dataclass(frozen=True)
class FaultPlan:
    # ---- load
    users: int = 16
    messages: int = 15                       # per user (keep <= STATE_HISTORY_LIMIT, 20)
    seed: int = 1
    gap_ms: tuple[int, int] = (150, 600)     # pause between a user's messages
    # ---- SendBird webhook deliveries: how many times each message is posted (1..3) and when
    deliveries_weights: tuple[float, float, float] = (0.5, 0.3, 0.2)
    concurrent_share: float = 0.5            # share of extra deliveries posted at the same time as the first
    late_delivery_s: tuple[float, float] = (0.3, 4.0)  # the others: this much later
    webhook_timeout_s: float = 5.0           # SendBird's webhook timeout
    webhook_retry_backoff_s: tuple[float, ...] = (1.5, 3.0, 6.0)  # re-posts after a failure/timeout
    # ---- queue redeliveries (localrunner)
    skip_delete_rate: float = 0.1            # LOCALRUNNER_CHAOS_SKIP_DELETE_RATE
    lease_seconds: int = 3                   # LOCALRUNNER_LEASE_SECONDS
    # ---- worker killed mid-message: SIGKILL a runner when this share of the messages was sent
    kill_at: tuple[float, ...] = (0.4,)
    # ---- instances of the app on the same queues and state (competing consumers; webhooks spread over the live
    # ones, as the platform's front end does). With several, the n-th kill takes instance n % instances and,
    # unless restart_killed, leaves the others to take over its messages after the lease
    instances: int = 1
    restart_killed: bool = True
    # ---- intent service (chaos proxy in front of it)
    intent_timeout_seconds: float = 1.0      # INTENT_TIMEOUT_SECONDS for the gateway
    intent_503_p: float = 0.08
    intent_slow_p: float = 0.03              # answer after intent_slow_ms (> the timeout)
    intent_slow_ms: int = 1600
    intent_outage_at: float | None = 0.7     # share of messages sent when every call gets 503 ...
    intent_outage_s: float = 2.0             # ... for this long (opens the circuit breaker)
    # ---- SendBird Platform API bursts (stand-in scripted faults)
    sendbird_burst_every_s: float = 4.0
    sendbird_burst: tuple[dict, ...] = (
        {"status": 429, "retry_after": 1, "times": 3},
        {"status": 503, "times": 3},
        {"status": 500, "times": 2},
        {"status": 502, "times": 1},
    )
    # ---- Cosmos DB (chaos proxy in front of the stand-in; second writer on the same documents)
    cosmos_429_p: float = 0.05
    cosmos_retry_after_ms: int = 25
    writer_interval_s: float = 0.05          # pause between the second writer's writes
    # ---- accounting
    drain_timeout_s: float = 120.0
    quiet_s: float = 4.0                     # queues empty this long = drained
    extra_env: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)

    def with_(self, **changes) -> "FaultPlan":
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


#: Hung intent calls on the last attempt: the chaos proxy holds 60 % of the intent calls for 4 s, longer than the
#: functionTimeout set here (2 s), with maxDequeueCount 2 (both through the host's app-setting overrides). A timeout
#: restarts the worker process and fails every invocation in flight (functions-host-rules.md); on a message's last
#: attempt the host moves it, raw, to <queue>-poison, and only the app's poison triggers (shared/dead_letters.py)
#: stand between the user and silence. No other faults, so that the poison path is what is measured.
HUNG_LAST_ATTEMPT = FaultPlan(
    users=4, messages=5, kill_at=(), skip_delete_rate=0.0, intent_503_p=0.0, intent_slow_p=0.6, intent_slow_ms=4000,
    intent_outage_at=None, intent_timeout_seconds=10.0, sendbird_burst_every_s=0.0, cosmos_429_p=0.0,
    deliveries_weights=(1.0, 0.0, 0.0), drain_timeout_s=120.0,
    extra_env={"AzureFunctionsJobHost__functionTimeout": "00:00:02",
               "AzureFunctionsJobHost__extensions__queues__maxDequeueCount": "2"},
)

#: Two instances on the same Azurite queues and Cosmos DB state, every fault of the ``ci`` preset, and one instance
#: SIGKILLed at 45 % of the load and not restarted: its in-flight messages reappear after the 3 s lease and the
#: other instance finishes them; webhooks in flight to it fail and SendBird's re-posts reach the other one.
TWO_INSTANCES = FaultPlan(users=6, messages=10, kill_at=(0.45,), sendbird_burst_every_s=3.0, drain_timeout_s=90.0,
                          instances=2, restart_killed=False)

PRESETS = {
    "full": FaultPlan(),
    "hung": HUNG_LAST_ATTEMPT,
    # CI: a few minutes at most on 2 cores; every fault kind still happens
    "ci": FaultPlan(users=6, messages=10, kill_at=(0.45,), sendbird_burst_every_s=3.0, drain_timeout_s=90.0),
    "two-instances": TWO_INSTANCES,
    "full-two-instances": FaultPlan(instances=2, restart_killed=False),
}
