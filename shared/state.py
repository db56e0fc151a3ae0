"""Per-user conversation state: one document per SendBird user.

Where it is stored: :class:`shared.ports.StateStore` (Cosmos DB adapter :mod:`shared.clients.cosmos`, an in-memory
fake for unit tests, both held to ``tests/test_state_contract.py``).

Writes are partial (:func:`document_patch`, :func:`partial_patch`: the changed fields and turns, at most
:data:`MAX_PATCH_OPS` operations) and conditional on the ETag. A stage hands the document's version after its
write on to the next stage (:class:`StateVersion`: ETag, the turns the next stage needs, an HMAC seal) so that the
next write needs no read; a stale version only costs the read it saved (HTTP 412, then read-modify-write).
"""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from typing import Any, Literal
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, model_validator

#: Catalog key of the apology a user gets when their message was poisoned.
APOLOGY_KEY = "apology.error"


def reply_dedup_id(message_id: int) -> str:
    """SendBird ``dedup_id`` of the bot's reply to user message ``message_id``."""
    return f"reply-{message_id}"


def apology_dedup_id(message_id: int) -> str:
    """SendBird ``dedup_id`` of the apology for user message ``message_id`` (differs from the reply's,
    so that a replay after a fix can still deliver the real answer)."""
    return f"apology-{message_id}"


TurnStatus = Literal["received", "answered", "sent", "silent", "failed"]
#: A turn in one of these states no longer holds back the user's later messages.
FINAL_STATUSES: frozenset[str] = frozenset({"sent", "silent", "failed"})


class SendClaim(BaseModel):
    """A reply sender is sending ``dedup_id`` since ``since_ms`` (epoch ms), or the chain of the message's first
    delivery will (taken at admission, with a short ``lease_ms``); expires after the lease."""

    model_config = ConfigDict(extra="ignore")
    dedup_id: str
    since_ms: int
    lease_ms: int | None = Field(default=None, description="how long it holds (ms); None: REPLY_SEND_LEASE_SECONDS")

    def until_ms(self, default_lease_ms: int) -> int:
        """Epoch ms at which the claim expires (``default_lease_ms`` when it has no lease of its own)."""
        return self.since_ms + (self.lease_ms if self.lease_ms is not None else default_lease_ms)


class Turn(BaseModel):
    """One user message and its lifecycle: received -> answered -> sent (or silent / failed).

    ``seq`` orders a user's messages (assigned once, at admission by the intent stage).
    ``correlation_id`` is the accepted delivery's; another delivery of the same
    ``message_id`` (a SendBird webhook retry) has another one and is dropped as a duplicate.
    """

    model_config = ConfigDict(extra="ignore", validate_assignment=True)
    message_id: int
    seq: int = 0
    correlation_id: str | None = None
    channel_url: str | None = Field(default=None, description="the SendBird channel the message was sent in")
    status: TurnStatus = "received"
    received_at_ms: int = 0
    at_ms: int = 0
    route: str | None = None
    intent: str | None = None
    confidence_score: float = 0.0
    reply_key: str | None = None
    reply_text: str | None = None
    sending: SendClaim | None = None
    sent_dedup_ids: list[str] = Field(default_factory=list, description="replies SendBird accepted for this turn")
    sent_at_ms: int | None = None

    @property
    def answered(self) -> bool:
        """The handler produced a real answer (not only an apology)."""
        return self.reply_key not in (None, APOLOGY_KEY) and self.status in ("answered", "sent")

    @property
    def apologized(self) -> bool:
        """The user got an apology for this message (it was poisoned)."""
        return apology_dedup_id(self.message_id) in self.sent_dedup_ids


class UserState(BaseModel):
    """The Cosmos DB document of one user (partition key ``/user_id``).

    Fields this build does not know (written by another tool or a newer version) are kept as they are
    on every write (``extra="allow"``), so they are not lost. Cosmos system fields (``_etag``, ``_ts``...)
    are dropped on read.
    """

    model_config = ConfigDict(extra="allow", validate_assignment=True)
    id: str
    user_id: str
    schema_version: Literal[1] = 1
    channel_url: str | None = None
    language: Literal["ko", "en"] | None = None
    pending_slot: str | None = Field(default=None, description="the slot the next message may fill (a route's slot)")
    handoff_until_ms: int | None = Field(default=None, description="bot stays silent until this epoch ms")
    next_seq: int = Field(default=1, description="sequence number of the user's next admitted message")
    turns: list[Turn] = Field(default_factory=list, description="most recent last, bounded")
    recent_message_ids: dict[str, int] = Field(
        default_factory=dict, description="SendBird message_id -> received_at_ms of every message admitted within "
        "the webhook replay window, kept whatever the history length, so a replayed webhook is a duplicate")
    created_at_ms: int = 0
    updated_at_ms: int = 0

    @model_validator(mode="before")
    @classmethod
    def _drop_system_fields(cls, data: object) -> object:
        if isinstance(data, dict):
            return {k: v for k, v in data.items() if not k.startswith("_")}
        return data

    @classmethod
    def new(cls, user_id: str, channel_url: str | None, now_ms: int) -> "UserState":
        return cls(id=document_id(user_id), user_id=user_id, channel_url=channel_url,
                   created_at_ms=now_ms, updated_at_ms=now_ms)

    def is_handed_off(self, now_ms: int) -> bool:
        """True while a human agent owns the conversation (the bot stays silent)."""
        return self.handoff_until_ms is not None and now_ms < self.handoff_until_ms

    def turn_for(self, message_id: int) -> Turn | None:
        """The recorded turn of SendBird ``message_id``, if this message was already handled."""
        return next((t for t in self.turns if t.message_id == message_id), None)

    def record_turn(self, turn: Turn, limit: int) -> None:
        """Append ``turn`` and keep only the ``limit`` most recent turns."""
        self.turns = [*self.turns, turn][-limit:]

    def admit(self, message_id: int, correlation_id: str | None, received_at_ms: int, limit: int,
              status: TurnStatus = "received", channel_url: str | None = None) -> Turn:
        """Record a new turn with the next sequence number and return it; remember ``message_id``."""
        turn = Turn(message_id=message_id, seq=self.next_seq, correlation_id=correlation_id, status=status,
                    received_at_ms=received_at_ms, channel_url=channel_url)
        self.next_seq += 1
        self.record_turn(turn, limit)
        self.recent_message_ids = {**self.recent_message_ids, str(message_id): received_at_ms}
        return self.turns[-1]

    def seen_recently(self, message_id: int) -> bool:
        """True when ``message_id`` was admitted within the remembered window (even if its turn was evicted)."""
        return str(message_id) in self.recent_message_ids

    def forget_message_ids_before(self, cutoff_ms: int) -> None:
        """Drop remembered message ids received before ``cutoff_ms`` (epoch ms)."""
        if any(at < cutoff_ms for at in self.recent_message_ids.values()):
            self.recent_message_ids = {k: at for k, at in self.recent_message_ids.items() if at >= cutoff_ms}

    def pending_before(self, turn: Turn) -> list[Turn]:
        """Earlier turns of this user that are not final yet (they hold ``turn`` back)."""
        return [t for t in self.turns if t.seq < turn.seq and t.status not in FINAL_STATUSES]


def document_id(user_id: str) -> str:
    """Cosmos DB item id for ``user_id`` (ids may not contain ``/ \\ ? #``; those are %-escaped)."""
    return quote(user_id, safe="") if any(c in user_id for c in "/\\?#%") else user_id


# --------------------------------------------------------------------------- versions and partial updates
#: Operations Cosmos DB accepts in one patch request (more: the document is replaced whole).
MAX_PATCH_OPS = 10
#: One JSON-patch operation as Cosmos DB's partial document update takes it: ``{"op": "set" | "add" | "remove",
#: "path": "/json/pointer", "value": ...}`` (``add`` to ``/turns/-`` appends).
PatchOp = dict[str, Any]
#: Fields a partial copy (:class:`StateVersion`) leaves out, or shortens (``turns``).
_PARTIAL_FIELDS = ("turns", "recent_message_ids")


class StateVersion(BaseModel):
    """The user's document as one stage's write left it, handed to the next stage in its queue message so that the
    next write needs no read.

    ``etag``: the document's ETag after that write. ``doc``: a partial copy: every field except the turns history
    and ``recent_message_ids``, with ``turns`` holding only the turns the next stage looks at (the turn of the
    message in flight and every turn not final yet, i.e. all that :meth:`UserState.pending_before` can return),
    ``indexes[i]`` being the position of ``doc["turns"][i]`` in the stored list. ``seal``: HMAC-SHA256 of the rest,
    keyed by the store (:func:`seal_key`), so that whoever can write to a queue cannot make one up.

    It is only ever the base of an ``If-Match: etag`` write: when the document changed since, the write fails (HTTP
    412) and the store reads the document as it always did. Size: about 0.5-3 KB (one to a few turns).
    """

    # rolling upgrades (shared/models.py): a newer build's addition is ignored; the seal covers the fields this build
    # knows, so a version it cannot verify is not trusted and the document is read instead
    model_config = ConfigDict(extra="ignore", frozen=True)
    etag: str = Field(min_length=1, max_length=128)
    doc: dict[str, Any]
    indexes: list[int] = Field(max_length=200)
    unwritten: list[PatchOp] = Field(default_factory=list, max_length=MAX_PATCH_OPS, description="changes decided "
                                     "on the document at etag and already in doc, not written yet (a deferred write, "
                                     "written with the next one)")
    seal: str = Field(min_length=64, max_length=64)

    def state(self) -> "UserState":
        """The partial copy as a :class:`UserState` (the turns history holds only the copied turns)."""
        return UserState.model_validate(self.doc)

    def turn(self, message_id: int) -> Turn | None:
        """The copied turn of ``message_id``, if it is in the copy."""
        return self.state().turn_for(message_id)


def seal_key(secret: str) -> bytes:
    """The key that seals :class:`StateVersion` s, derived from a secret setting (never the secret itself)."""
    return hmac.new(secret.encode("utf-8"), b"gateway state version seal v1", hashlib.sha256).digest()


def _seal(key: bytes, etag: str, doc: dict[str, Any], indexes: list[int], unwritten: list[PatchOp]) -> str:
    body = json.dumps([etag, doc, indexes, unwritten], sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hmac.new(key, body.encode("utf-8"), hashlib.sha256).hexdigest()


def version_of(doc: dict[str, Any], etag: str, message_id: int | None, key: bytes) -> StateVersion:
    """The sealed :class:`StateVersion` of stored document ``doc`` (system fields ignored) at ``etag``, keeping the
    turn of ``message_id`` (None: none in particular) and every turn not final yet."""
    turns = doc.get("turns") or []
    keep = [i for i, t in enumerate(turns)
            if t.get("message_id") == message_id or t.get("status") not in FINAL_STATUSES]
    partial = {k: v for k, v in doc.items() if not k.startswith("_") and k not in _PARTIAL_FIELDS}
    partial["turns"] = [turns[i] for i in keep]
    return StateVersion(etag=etag, doc=partial, indexes=keep, seal=_seal(key, etag, partial, keep, []))


def deferred_version(base: StateVersion, after: "UserState", ops: list[PatchOp], key: bytes) -> StateVersion:
    """``base`` with the change ``ops`` (from :func:`partial_patch`) decided but not written: ``doc`` is ``after``
    (the partial copy, changed), ``unwritten`` holds ``ops`` on top of what ``base`` did not write yet."""
    doc = after.model_dump(mode="json")
    doc.pop("recent_message_ids", None)
    doc = {**{k: v for k, v in base.doc.items() if k not in doc}, **doc}
    unwritten = merge_ops(base.unwritten, ops)
    return StateVersion(etag=base.etag, doc=doc, indexes=base.indexes, unwritten=unwritten,
                        seal=_seal(key, base.etag, doc, base.indexes, unwritten))


def merge_ops(first: list[PatchOp], then: list[PatchOp]) -> list[PatchOp]:
    """``first`` followed by ``then``, an operation of ``first`` on a path ``then`` sets again left out."""
    later = {op["path"] for op in then if op["op"] == "set"}
    return [op for op in first if not (op["op"] == "set" and op["path"] in later)] + then


def is_sealed(version: StateVersion, key: bytes) -> bool:
    """True when ``version`` was made by :func:`version_of` with ``key`` and not changed since."""
    return hmac.compare_digest(version.seal, _seal(key, version.etag, version.doc, version.indexes,
                                                   version.unwritten))


def partial_patch(version: StateVersion, after: "UserState") -> list[PatchOp] | None:
    """The patch that makes the stored document (at ``version.etag``) what ``after`` (the partial copy, changed)
    says, or None when that cannot be said from the copy (turns added or removed, the remembered message ids
    changed) or needs more than :data:`MAX_PATCH_OPS` operations. ``[]``: nothing changed."""
    before = version.state().model_dump(mode="json")
    now = after.model_dump(mode="json")
    if now.get("recent_message_ids") != before.get("recent_message_ids"):
        return None
    old_turns, new_turns = before.pop("turns"), now.pop("turns")
    if [t["message_id"] for t in old_turns] != [t["message_id"] for t in new_turns]:
        return None
    ops = _object_ops("", {k: v for k, v in before.items() if k != "recent_message_ids"},
                      {k: v for k, v in now.items() if k != "recent_message_ids"}, nested=False)
    ops += [{"op": "set", "path": f"/turns/{version.indexes[i]}", "value": new}
            for i, (old, new) in enumerate(zip(old_turns, new_turns, strict=True)) if old != new]
    return ops if len(ops) <= MAX_PATCH_OPS else None


def document_patch(before: dict[str, Any], after: dict[str, Any]) -> list[PatchOp] | None:
    """The patch that turns stored document ``before`` into ``after`` (both JSON, system fields ignored), or None
    when it needs more than :data:`MAX_PATCH_OPS` operations (the caller replaces the document). Object fields
    (``recent_message_ids``, fields other writers add) change key by key; ``turns`` by evictions from the front,
    changed turns and appended turns. ``[]``: nothing changed."""
    ops = _object_ops("", {k: v for k, v in before.items() if not k.startswith("_")},
                      {k: v for k, v in after.items() if not k.startswith("_")}, nested=True)
    return ops if ops is not None and len(ops) <= MAX_PATCH_OPS else None


def _pointer(key: str) -> str:
    return key.replace("~", "~0").replace("/", "~1")


def _object_ops(prefix: str, before: dict[str, Any], after: dict[str, Any], nested: bool) -> list[PatchOp]:
    ops: list[PatchOp] = [{"op": "remove", "path": f"{prefix}/{_pointer(k)}"} for k in before if k not in after]
    for k, new in after.items():
        path, old = f"{prefix}/{_pointer(k)}", before.get(k)
        if k in before and old == new:
            continue
        if nested and k in before and k == "turns" and isinstance(old, list) and isinstance(new, list):
            ops += _turns_ops(path, old, new)
        elif nested and k in before and isinstance(old, dict) and isinstance(new, dict) and old and new:
            ops += _object_ops(path, old, new, nested=False)
        else:
            ops.append({"op": "set", "path": path, "value": new})
    return ops


def _turns_ops(path: str, old: list[Any], new: list[Any]) -> list[PatchOp]:
    """Evictions from the front, then changed turns, then appended ones (turns are matched by ``message_id``);
    the whole list when the change is anything else."""
    ids = [t.get("message_id") if isinstance(t, dict) else t for t in old]
    new_ids = [t.get("message_id") if isinstance(t, dict) else t for t in new]
    for evicted in range(len(old) + 1):
        kept = len(old) - evicted
        if ids[evicted:] == new_ids[:kept]:
            ops: list[PatchOp] = [{"op": "remove", "path": f"{path}/0"}] * evicted
            ops += [{"op": "set", "path": f"{path}/{i}", "value": new[i]}
                    for i in range(kept) if new[i] != old[evicted + i]]
            return ops + [{"op": "add", "path": f"{path}/-", "value": t} for t in new[kept:]]
    return [{"op": "set", "path": path, "value": new}]


def apply_patch(doc: dict[str, Any], ops: list[PatchOp]) -> dict[str, Any]:
    """``doc`` with ``ops`` applied in order, as Cosmos DB applies a patch (a deep copy; ``doc`` is not changed).
    Raises ``ValueError`` for a path that does not exist (Cosmos DB answers 400)."""
    result = copy.deepcopy(doc)
    for op in ops:
        *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        node: Any = result
        for p in parents:
            node = node[int(p)] if isinstance(node, list) else node.get(p)
            if node is None:
                raise ValueError(f"patch path {op['path']} does not exist")
        if isinstance(node, list):
            if op["op"] == "add" and last == "-":
                node.append(copy.deepcopy(op["value"]))
            elif op["op"] == "remove":
                del node[int(last)]
            else:
                node[int(last)] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del node[last]
        else:
            node[last] = copy.deepcopy(op["value"])
    return result
