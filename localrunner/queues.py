"""Azure Storage queue listeners and output sender with the host's semantics.

Reproduces the WebJobs SDK QueueListener / QueueProcessor behaviour:
batch fetch, newBatchThreshold, randomized exponential polling back-off,
visibility lease renewal, retry with visibilityTimeout, poison queue after
maxDequeueCount, decode failures straight to poison, and the "shared queue
watcher" that wakes a listener as soon as an output binding in this runner
writes to its queue.
"""
from __future__ import annotations

import concurrent.futures
import logging
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple

from azure.functions.queue import QueueMessage

from .app_loader import FunctionSpec, QueueTarget, QueueTriggerSpec
from .config import MIN_POLLING_INTERVAL, ConfigError, QueuesOptions
from .invocation import Invoker, Stats, decode_payload, encode_payload, wait_until_zero
from .storage import QueueClient, Storage, StorageError, StoredMessage

log = logging.getLogger("localrunner.queues")
host_log = logging.getLogger("localrunner.host")

#: jitter source of polling_delay when no ``rng`` is given
_BACKOFF_RNG = random.Random()


def polling_delay(attempt: int, maximum: float, minimum: float = MIN_POLLING_INTERVAL,
                  rng: random.Random = _BACKOFF_RNG) -> float:
    """Randomized exponential back-off for the n-th consecutive empty poll (n >= 1).

    Roughly 100 ms, 200, 300, 500, 900 ms, 1.7 s, 3.3 s ... capped at ``maximum``
    (the exponential part is jittered by +/-20% like the SDK's strategy).
    """
    if attempt <= 1:
        base = 0.0
    else:
        base = minimum * (2 ** min(attempt - 2, 30))
    delay = minimum + base * rng.uniform(0.8, 1.2)
    return min(max(delay, minimum), maximum)


class QueueService:
    """Queue clients (the host's own, ``storage.py``), creates queues, sends output messages, wakes listeners."""

    def __init__(self, encoding: str, stats: Stats):
        self.encoding = encoding
        self.stats = stats
        self._storage = Storage()
        self._created: set = set()
        self._listeners: Dict[Tuple[str, str], "QueueListener"] = {}

    def client(self, target: QueueTarget) -> QueueClient:
        try:
            return self._storage.client(target.connection_string, target.queue_name)
        except ValueError as exc:
            raise ConfigError(f"connection '{target.connection_name}': {exc}") from None

    def ensure_queue(self, target: QueueTarget) -> None:
        if target.key in self._created:
            return
        if self.client(target).create_queue():
            log.info("Created queue '%s'", target.queue_name)
        self._created.add(target.key)

    def register_listener(self, listener: "QueueListener") -> None:
        self._listeners[listener.target.key] = listener

    def send(self, target: QueueTarget, payloads: List[bytes]) -> None:
        self.ensure_queue(target)
        c = self.client(target)
        for p in payloads:
            c.send_message(encode_payload(p, self.encoding))
        listener = self._listeners.get(target.key)
        if listener is not None and payloads:
            listener.notify()

    def send_raw(self, target: QueueTarget, content: str) -> None:
        self.ensure_queue(target)
        self.client(target).send_message(content)

    def close(self) -> None:
        self._storage.close()


@dataclass
class _Lease:
    msg: StoredMessage
    pop_receipt: Optional[str]  # Optional as the SDK types it; the service always returns one
    last_renewed: float
    lock: threading.Lock = field(default_factory=threading.Lock)
    done: bool = False


class QueueListener:
    def __init__(self, spec: FunctionSpec, invoker: Invoker, options: QueuesOptions,
                 service: QueueService, stats: Stats, lease_seconds: int,
                 chaos_skip_delete_rate: float = 0.0, rng: Optional[random.Random] = None):
        if spec.queue is None:
            raise ValueError(f"function '{spec.name}' has no queue trigger")
        self.spec = spec
        self.trigger: QueueTriggerSpec = spec.queue
        self.target = self.trigger.target
        self.poison_target = QueueTarget(self.target.connection_name, self.target.connection_string,
                                         self.target.queue_name + "-poison")
        self.invoker = invoker
        self.options = options
        self.service = service
        self.stats = stats
        self.lease_seconds = max(1, int(lease_seconds))
        # chaos (LOCALRUNNER_CHAOS_SKIP_DELETE_RATE): probability that a successful invocation's message is
        # not deleted, so it reappears after the lease, as if the worker died after doing its work
        self.chaos_skip_delete_rate = float(chaos_skip_delete_rate)
        self._rng = rng or random.Random()
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._abandon = threading.Event()
        self._closed = False
        self._lease_stop = threading.Event()
        self._cond = threading.Condition()
        self._inflight = 0
        self._leases: Dict[str, _Lease] = {}
        self._leases_lock = threading.Lock()
        self._handlers = concurrent.futures.ThreadPoolExecutor(
            max_workers=options.batch_size + max(options.new_batch_threshold, 0) + 1,
            thread_name_prefix=f"queue-{spec.name}",
        )
        self._poll_thread: Optional[threading.Thread] = None
        self._lease_thread: Optional[threading.Thread] = None
        for k in ("polls", "empty_polls", "messages", "wakeups", "woken_waits", "renewals", "poll_errors"):
            stats.inc_listener(spec.name, k, 0)
        if self.chaos_skip_delete_rate > 0:
            stats.inc(spec.name, "chaos_skipped_deletes", 0)

    # -- lifecycle ---------------------------------------------------------------
    def start(self) -> None:
        self.service.ensure_queue(self.target)
        self.service.register_listener(self)
        self._poll_thread = threading.Thread(target=self._poll_loop, name=f"poll-{self.spec.name}", daemon=True)
        self._lease_thread = threading.Thread(target=self._lease_loop, name=f"lease-{self.spec.name}", daemon=True)
        self._poll_thread.start()
        self._lease_thread.start()
        log.info("Listening on queue '%s' for function '%s'", self.target.queue_name, self.spec.name)

    def stop_polling(self) -> None:
        self._stopping.set()
        self._wake.set()
        with self._cond:
            self._cond.notify_all()

    def join_poller(self, timeout: float) -> None:
        if self._poll_thread is not None:
            self._poll_thread.join(timeout)

    @property
    def inflight(self) -> int:
        with self._cond:
            return self._inflight

    def wait_idle(self, deadline: float) -> bool:
        return wait_until_zero(self._cond, lambda: self._inflight, deadline)

    def close(self, drained: bool) -> None:
        if not drained:
            # unfinished messages are left alone: they reappear when their
            # visibility window (lease) expires, like with a killed host
            self._abandon.set()
        self._closed = True
        self._lease_stop.set()
        self._handlers.shutdown(wait=False, cancel_futures=False)
        if self._lease_thread is not None:
            self._lease_thread.join(2)

    def notify(self) -> None:
        """An output binding in this runner wrote to our queue: poll now."""
        self.stats.inc_listener(self.spec.name, "wakeups")
        self._wake.set()

    # -- polling -----------------------------------------------------------------
    def _receive(self, n: int) -> List[StoredMessage]:
        return self.service.client(self.target).receive_messages(n, self.lease_seconds)

    def _poll_loop(self) -> None:
        opts = self.options
        empty = 0
        while not self._stopping.is_set():
            with self._cond:
                while self._inflight > opts.new_batch_threshold and not self._stopping.is_set():
                    self._cond.wait(0.5)
            if self._stopping.is_set():
                break
            self._wake.clear()
            try:
                msgs = self._receive(opts.batch_size)
            except Exception as exc:  # storage down, etc.: back off and retry
                self.stats.inc_listener(self.spec.name, "poll_errors")
                empty += 1
                log.warning("Polling queue '%s' failed: %s", self.target.queue_name, exc)
                self._stopping.wait(polling_delay(empty, opts.max_polling_interval))
                continue
            self.stats.inc_listener(self.spec.name, "polls")
            if msgs:
                empty = 0
                self.stats.inc_listener(self.spec.name, "messages", len(msgs))
                now = time.monotonic()
                with self._cond:
                    self._inflight += len(msgs)
                for m in msgs:
                    lease = _Lease(msg=m, pop_receipt=m.pop_receipt, last_renewed=now)
                    with self._leases_lock:
                        self._leases[m.id] = lease
                    self._handlers.submit(self._handle, lease)
                continue
            self.stats.inc_listener(self.spec.name, "empty_polls")
            empty += 1
            delay = polling_delay(empty, opts.max_polling_interval)
            if self._wake.wait(delay):
                if self._stopping.is_set():
                    break
                self.stats.inc_listener(self.spec.name, "woken_waits")
                empty = 0

    # -- lease renewal --------------------------------------------------------------
    def _lease_loop(self) -> None:
        half = self.lease_seconds / 2.0
        tick = min(1.0, self.lease_seconds / 4.0)
        client = self.service.client(self.target)
        while True:
            if self._stopping.is_set() and self.inflight == 0:
                return
            if self._abandon.is_set():
                return
            if self._lease_stop.wait(tick):
                return
            now = time.monotonic()
            with self._leases_lock:
                leases = list(self._leases.values())
            for lease in leases:
                if now - lease.last_renewed < half:
                    continue
                with lease.lock:
                    if lease.done:
                        continue
                    try:
                        lease.pop_receipt = client.update_message(lease.msg.id, lease.pop_receipt,
                                                                  self.lease_seconds)
                        lease.last_renewed = time.monotonic()
                        self.stats.inc_listener(self.spec.name, "renewals")
                    except Exception as exc:
                        log.warning("Renewing the visibility of message %s failed: %s", lease.msg.id, exc)
                        lease.last_renewed = time.monotonic()

    # -- processing -------------------------------------------------------------------
    def _handle(self, lease: _Lease) -> None:
        m = lease.msg
        try:
            if self._abandon.is_set():
                return
            opts = self.options
            if m.dequeue_count > opts.max_dequeue_count:
                self._poison(lease)
                return
            try:
                body = decode_payload(m.content, self.service.encoding)
            except ValueError as exc:
                host_log.error(
                    "Message %s on queue '%s' could not be decoded with messageEncoding '%s' (%s); "
                    "moving it to the poison queue", m.id, self.target.queue_name, self.service.encoding, exc,
                )
                self._poison(lease, log_warning=False)
                return
            qm = QueueMessage(
                id=m.id, body=body, dequeue_count=m.dequeue_count,
                expiration_time=m.expires_on, insertion_time=m.inserted_on,
                time_next_visible=m.next_visible_on, pop_receipt=lease.pop_receipt,
            )
            ptype = self.trigger.param_type
            if ptype is str:
                arg: Any = body.decode("utf-8")
            elif ptype is bytes:
                arg = body
            else:
                arg = qm
            details = (f"MessageId: {m.id}, DequeueCount: {m.dequeue_count}, "
                       f"InsertedOn: {m.inserted_on.isoformat() if m.inserted_on else None}")
            result = self.invoker.invoke(
                self.spec, arg, reason=f"New queue message detected on '{self.target.queue_name}'.",
                details=details,
            )
            if self._closed:
                log.warning("Runner stopped before '%s' finished message %s; it will reappear after its "
                            "visibility window", self.spec.name, m.id)
            elif result.ok:
                if self.chaos_skip_delete_rate > 0 and self._rng.random() < self.chaos_skip_delete_rate:
                    # outputs are flushed already; leave the message hidden until its lease lapses
                    self.stats.inc(self.spec.name, "chaos_skipped_deletes")
                    log.warning("chaos: not deleting message %s of '%s' after success (dequeue count %d); "
                                "it reappears after the %d s lease", m.id, self.target.queue_name,
                                m.dequeue_count, self.lease_seconds)
                    with lease.lock:
                        lease.done = True
                else:
                    self._delete(lease)
            elif m.dequeue_count >= opts.max_dequeue_count:
                self._poison(lease)
            else:
                self._release(lease, opts.visibility_timeout)
        except Exception:
            log.exception("Unexpected error processing message %s on '%s'", m.id, self.target.queue_name)
        finally:
            with lease.lock:
                lease.done = True
            with self._leases_lock:
                self._leases.pop(m.id, None)
            with self._cond:
                self._inflight -= 1
                self._cond.notify_all()

    def _delete(self, lease: _Lease) -> None:
        with lease.lock:
            try:
                self.service.client(self.target).delete_message(lease.msg.id, lease.pop_receipt)
            except (StorageError, OSError) as exc:
                # stale pop receipt: another instance took the message (lease lapsed)
                log.warning("Deleting message %s from '%s' failed (%s); it may be processed again",
                            lease.msg.id, self.target.queue_name, getattr(exc, "error_code", exc))
            lease.done = True

    def _release(self, lease: _Lease, visibility_timeout: float) -> None:
        with lease.lock:
            try:
                self.service.client(self.target).update_message(
                    lease.msg.id, lease.pop_receipt, int(round(visibility_timeout)))
            except (StorageError, OSError) as exc:
                log.warning("Releasing message %s on '%s' failed: %s", lease.msg.id, self.target.queue_name,
                            getattr(exc, "error_code", exc))
            lease.done = True

    def _poison(self, lease: _Lease, log_warning: bool = True) -> None:
        if log_warning:
            host_log.warning(
                "Message has reached MaxDequeueCount of %d. Moving message to queue '%s'.",
                self.options.max_dequeue_count, self.poison_target.queue_name,
            )
        # same stored content (so the same encoding) as the original message
        self.service.send_raw(self.poison_target, lease.msg.content or "")
        self.stats.inc(self.spec.name, "poisoned")
        self._delete(lease)
