"""Rolling upgrades: two builds of the app read each other's queue messages (shared/models.py, module docstring,
"Rolling upgrades and message versions"; README, same section).

1. Within a version, only optional additions. Each message type's current version has a committed JSON-schema
   snapshot, ``tests/data/message_schemas/<type>-v<version>.json`` (titles and descriptions left out, so rewording a
   docstring changes nothing). Against it, a removed field, a field that became required, a new required field, or
   a change to what a field accepts (type, constraints, allowed values, default), in the message or in a model
   nested in it, fails with the list of changes and what to do (bump the version). A new optional field is
   compatible; the snapshot must then be regenerated and committed::

       .venv/bin/python -m tests.test_message_compat --write

   The command writes the snapshots of the current versions and refuses to overwrite one with a breaking change.
   The tests never write them.
2. Readers ignore what they do not know: a message as a newer build writes it (unknown fields added at the top and
   in every nested object) is decoded and processed as this build always did, and the unknown fields are not
   carried along when this build re-serialises the message.
3. A message as an older build wrote it (without the latest optional fields) is decoded and processed too.
"""

from __future__ import annotations

import copy
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, Field

from shared.models import (INBOUND_QUEUE, REPLY_QUEUE, InboundMessage, PoisonRecord, QueueMessageBase, ReplyMessage,
                           ReviewCapture, RoutedMessage, decode, now_ms, poison_record_queue)

#: Every message type that travels on a queue (PoisonRecord: the poison records the ops tooling reads and replays).
MODELS: tuple[type[QueueMessageBase] | type[PoisonRecord], ...] = (InboundMessage, RoutedMessage, ReplyMessage,
                                                                    ReviewCapture, PoisonRecord)
SNAPSHOTS = Path(__file__).parent / "data" / "message_schemas"
REGENERATE = ".venv/bin/python -m tests.test_message_compat --write"
#: Optional fields the latest releases added (an "older build" writes messages without them). Add a release's new
#: optional fields here, so that the test proves this build still processes messages written before it.
ADDED_LATELY: dict[str, tuple[str, ...]] = {"routed": ("state_version",), "reply": ("state_version",)}

# JSON-schema keywords that only annotate (left out of the snapshots), and those whose value is data, not a schema.
_ANNOTATIONS = frozenset({"title", "description", "examples"})
_DATA = frozenset({"default", "const", "enum", "examples"})
_NAMED_SCHEMAS = frozenset({"properties", "$defs", "patternProperties"})


# --------------------------------------------------------------------------- snapshots
def snapshot_path(model: type[BaseModel]) -> Path:
    return SNAPSHOTS / f"{model.TYPE}-v{model.VERSION}.json"  # type: ignore[attr-defined]


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """What a snapshot holds: the model's validation JSON schema without annotations."""
    return _strip(model.model_json_schema(mode="validation"))


def _strip(node: Any) -> Any:
    if isinstance(node, list):
        return [_strip(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _ANNOTATIONS:
            continue
        if key in _DATA:
            out[key] = value
        elif key in _NAMED_SCHEMAS and isinstance(value, dict):
            out[key] = {name: _strip(sub) for name, sub in value.items()}  # field names stay, even "title"
        else:
            out[key] = _strip(value)
    return out


def snapshot_text(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def read_snapshot(model: type[BaseModel]) -> dict[str, Any] | None:
    path = snapshot_path(model)
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


# --------------------------------------------------------------------------- the compatibility rule
class Changes:
    """How schema ``new`` differs from ``old`` (same message type and version): ``breaking`` changes (an older
    or newer build would refuse or misread the other's messages) and compatible ``added`` optional fields."""

    def __init__(self, old: dict[str, Any], new: dict[str, Any]):
        self._roots = (old, new)
        self._seen: set[tuple[str, str]] = set()
        self.breaking: list[str] = []
        self.added: list[str] = []
        self._compare(old, new, "")

    def _resolve(self, node: Any, root: dict[str, Any]) -> tuple[Any, str | None]:
        ref = None
        while isinstance(node, dict) and "$ref" in node:
            ref = node["$ref"].rsplit("/", 1)[-1]
            node = {**root.get("$defs", {})[ref], **{k: v for k, v in node.items() if k != "$ref"}}
        return node, ref

    def _compare(self, old: Any, new: Any, path: str) -> None:
        old, old_ref = self._resolve(old, self._roots[0])
        new, new_ref = self._resolve(new, self._roots[1])
        if old_ref and new_ref:
            if (old_ref, new_ref) in self._seen:  # a recursive model: compared once
                return
            self._seen.add((old_ref, new_ref))
        where = path or "(the message)"
        if not (isinstance(old, dict) and isinstance(new, dict)):
            if old != new:
                self.breaking.append(f"{where}: changed from {old!r} to {new!r}")
            return
        if "properties" in old or "properties" in new:
            self._compare_object(old, new, path)
        for key in sorted((set(old) | set(new)) - {"properties", "required", "$defs"}):
            if key == "additionalProperties" and ("properties" in old or "properties" in new):
                continue  # the model's extra policy, checked by _compare_object
            if key not in new:
                self.breaking.append(f"{where}: {key} {old[key]!r} dropped (a newer writer may write what an "
                                     f"older reader refuses)")
            elif key not in old:
                self.breaking.append(f"{where}: {key} {new[key]!r} added (a newer reader may refuse what an older "
                                     f"writer wrote)")
            elif key in ("items", "additionalProperties") and isinstance(old[key], dict) \
                    and isinstance(new[key], dict):
                self._compare(old[key], new[key], f"{path}[]")
            elif key in ("anyOf", "oneOf", "allOf") and isinstance(old[key], list) and isinstance(new[key], list) \
                    and len(old[key]) == len(new[key]):
                for o, n in zip(old[key], new[key], strict=True):
                    self._compare(o, n, path)
            elif key == "enum" and isinstance(old[key], list) and isinstance(new[key], list):
                if sorted(map(json.dumps, old[key])) != sorted(map(json.dumps, new[key])):
                    self.breaking.append(f"{where}: allowed values changed from {old[key]!r} to {new[key]!r}")
            elif old[key] != new[key]:
                self.breaking.append(f"{where}: {key} changed from {old[key]!r} to {new[key]!r}")

    def _compare_object(self, old: dict[str, Any], new: dict[str, Any], path: str) -> None:
        old_props, new_props = old.get("properties", {}), new.get("properties", {})
        old_required, new_required = set(old.get("required", [])), set(new.get("required", []))
        if new.get("additionalProperties") is False and old.get("additionalProperties") is not False:
            self.breaking.append(f"{path or '(the message)'}: refuses unknown fields now (extra='forbid'): a newer "
                                 f"build's optional additions would be poisoned; use extra='ignore'")
        for name, old_field in old_props.items():
            field_path = f"{path}.{name}" if path else name
            if name not in new_props:
                self.breaking.append(f"{field_path}: removed")
                continue
            new_field = dict(new_props[name])
            old_field = dict(old_field)
            if name in new_required and name not in old_required:
                self.breaking.append(f"{field_path}: became required (an older writer may leave it out)")
            elif name not in new_required and name not in old_required \
                    and old_field.get("default") != new_field.get("default"):
                self.breaking.append(f"{field_path}: default changed from {old_field.get('default')!r} to "
                                     f"{new_field.get('default')!r} (it says what a message without the field means)")
            # a required field that became optional stays compatible: every writer writes every field
            # (test_writers_write_every_field), so an older reader still finds it.
            old_field.pop("default", None)
            new_field.pop("default", None)
            self._compare(old_field, new_field, field_path)
        for name in new_props.keys() - old_props.keys():
            field_path = f"{path}.{name}" if path else name
            if name in new_required:
                self.breaking.append(f"{field_path}: new required field (an older writer does not write it)")
            else:
                self.added.append(field_path)


def breaking_message(model: type[BaseModel], changes: Changes) -> str:
    t, v = model.TYPE, model.VERSION  # type: ignore[attr-defined]
    listed = "\n".join(f"  - {c}" for c in changes.breaking)
    return (f"{model.__name__} ({t} v{v}) changed incompatibly within version {v}, compared with "
            f"tests/data/message_schemas/{snapshot_path(model).name}:\n"
            f"{listed}\n"
            f"Within a version only new optional fields are allowed, because an older build reads this version's "
            f"messages during a slot swap or rollback (shared/models.py, 'Rolling upgrades and message versions').\n"
            f"Either make the change compatible (keep the field and what it accepts; give a new field a default "
            f"that means what its absence always meant), or bump {model.__name__}.VERSION and its `version` "
            f"Literal to {v + 1}: readers must accept version {v + 1} one release before writers produce it, and "
            f"keep reading version {v} while its messages can still exist (queues, poison records). Then write "
            f"the new version's snapshot with: {REGENERATE}")


# --------------------------------------------------------------------------- snapshot tests
@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.TYPE)
def test_changes_within_a_version_are_only_optional_additions(model):
    old = read_snapshot(model)
    assert old is not None, (f"no snapshot {snapshot_path(model).name} for {model.__name__} version "
                             f"{model.VERSION}. A new version? Readers must accept it one release before writers "
                             f"produce it. Write the snapshot with: {REGENERATE}")
    changes = Changes(old, schema_of(model))
    assert not changes.breaking, breaking_message(model, changes)


@pytest.mark.parametrize("model", MODELS, ids=lambda m: m.TYPE)
def test_snapshot_is_up_to_date(model):
    old = read_snapshot(model)
    if old is None:
        pytest.skip("no snapshot (test_changes_within_a_version_are_only_optional_additions says what to do)")
    new = schema_of(model)
    if snapshot_text(old) == snapshot_text(new):
        return
    changes = Changes(old, new)
    if changes.breaking:
        pytest.fail(f"{snapshot_path(model).name} differs from {model.__name__} with breaking changes: bump the "
                    f"version (test_changes_within_a_version_are_only_optional_additions lists them); do not "
                    f"regenerate this snapshot")
    what = f"new optional field(s) {', '.join(changes.added)}" if changes.added else "a compatible change"
    pytest.fail(f"{snapshot_path(model).name} is out of date: {model.__name__} has {what}, compatible within "
                f"version {model.VERSION}. Regenerate the snapshots and commit them: {REGENERATE}")


def test_writers_write_every_field():
    """Writers write every field (defaults included), which keeps a field that became optional readable by an
    older build that still requires it (and makes the 'required' in the snapshots the readers' view only)."""
    for msg in samples().values():
        written = json.loads(msg.model_dump_json())
        assert set(written) == set(type(msg).model_fields), type(msg).__name__


# --------------------------------------------------------------------------- the checker catches each kind of change
def _routed_schema(**changes: Any) -> dict[str, Any]:
    """RoutedMessage's current schema with fields edited: ``name=None`` removes one, ``name=dict`` replaces it."""
    schema = copy.deepcopy(schema_of(RoutedMessage))
    for name, field in changes.items():
        if field is None:
            schema["properties"].pop(name)
            schema["required"] = [r for r in schema["required"] if r != name]
        else:
            schema["properties"][name] = field
    return schema


class _NewOptional(RoutedMessage):
    reply_hint: str | None = Field(default=None, max_length=20)


class _NewRequired(RoutedMessage):
    reply_hint: str


class _NowRequired(RoutedMessage):
    seq: int = Field(ge=0)  # type: ignore[assignment]


class _TypeChanged(RoutedMessage):
    seq: str = "0"  # type: ignore[assignment]


class _Tightened(RoutedMessage):
    text: str = Field(default="", max_length=1_000)


class _Widened(RoutedMessage):
    language: str  # type: ignore[assignment]


class _HopWithRetries(BaseModel):
    stage: str
    queue_wait_ms: int = Field(ge=0)
    duration_ms: int = Field(ge=0)
    dependency_ms: dict[str, int] = Field(default_factory=dict)
    retries: int = 0


class _NestedAddition(RoutedMessage):
    hops: tuple[_HopWithRetries, ...] = Field(default=(), max_length=16)  # type: ignore[assignment]


@pytest.mark.parametrize("new_schema, breaking, added", [
    (lambda: schema_of(_NewOptional), [], ["reply_hint"]),
    (lambda: schema_of(_NestedAddition), [], ["hops[].retries"]),
    (lambda: _routed_schema(seq=None), ["seq: removed"], []),
    (lambda: schema_of(_NewRequired), ["reply_hint: new required field"], []),
    (lambda: schema_of(_NowRequired), ["seq: became required"], []),
    (lambda: schema_of(_TypeChanged), ["seq: type changed from 'integer' to 'string'"], []),
    (lambda: schema_of(_Tightened), ["text: maxLength changed from 4000 to 1000"], []),
    (lambda: schema_of(_Widened), ["language: enum ['ko', 'en'] dropped"], []),
    (lambda: _routed_schema(order_waits={"type": "integer", "minimum": 0, "default": 1}),
     ["order_waits: default changed from 0 to 1"], []),
    (lambda: {**schema_of(RoutedMessage), "additionalProperties": False}, ["refuses unknown fields now"], []),
], ids=["new-optional", "nested-new-optional", "removed", "new-required", "now-required", "type", "tightened",
        "widened", "default", "forbid"])
def test_the_rule_catches_each_kind_of_change(new_schema, breaking, added):
    changes = Changes(schema_of(RoutedMessage), new_schema())
    for fragment in breaking:
        assert any(fragment in c for c in changes.breaking), changes.breaking
    if not breaking:
        assert changes.breaking == []
    assert changes.added == added


def test_the_failure_message_says_what_to_do():
    text = breaking_message(RoutedMessage, Changes(schema_of(RoutedMessage), _routed_schema(seq=None)))
    assert "seq: removed" in text and "bump RoutedMessage.VERSION" in text
    assert "one release before writers produce it" in text and REGENERATE in text


# --------------------------------------------------------------------------- sample messages of every type
def _prediction() -> dict[str, Any]:
    from tests.support.fakes import clu_prediction
    shoes = {"category": "ProductCategory", "text": "sneakers", "offset": 8, "length": 8, "confidenceScore": 1.0,
             "extraInformation": [{"extraInformationKind": "ListKey", "key": "shoes"}]}
    return clu_prediction("ProductSearch", 0.95, {"Greeting": 0.02}, entities=[shoes])


def samples(services: Any = None) -> dict[str, Any]:
    """One message of each type as this build writes it, every nested model present (hops, intents, entities, a
    sealed state_version), made by the stages themselves on in-memory fakes (``services``, default new ones)."""
    from tests.support.chain import Chain, fake_services
    from tests.support.messages import inbound
    services = services or fake_services()
    services.intent.predictions["show me sneakers"] = _prediction()  # type: ignore[attr-defined]
    chain = Chain(services)
    first = inbound("show me sneakers", 7).with_hop("intake", 0, now_ms() - 5, {"cosmos": 1.2})
    routed = chain.route(first)
    assert routed is not None and routed.state_version is not None
    routed = routed.with_hop(INBOUND_QUEUE, 3, now_ms() - 20, {"intent": 12.0})
    reply = chain.handle(routed)
    assert reply is not None and reply.state_version is not None
    capture = ReviewCapture.following(routed, reason="low_confidence", text=routed.text, language="en",
                                      route=routed.route, top_intent=routed.top_intent, confidence_score=0.6,
                                      intents=routed.intents, model_version="model-v1")
    record = PoisonRecord(source_queue=INBOUND_QUEUE, reason="intent service answered 503", error_type="TransientError",
                          dequeue_count=5, poisoned_at_ms=now_ms(), correlation_id=first.correlation_id,
                          message_id=first.message_id, original=first.to_queue_text())
    return {"inbound": first, "routed": routed, "reply": reply, "review": capture, "poison": record}


UNKNOWN = "added_by_a_newer_build"


def as_newer_build(body: str | bytes) -> str:
    """``body`` as a newer build of the same version would write it: an unknown field in the message and in every
    nested object a model reads (hops, intents, entities, state_version)."""
    data = json.loads(body)
    data[UNKNOWN] = {"nested": [1, 2], "flag": True}
    for key in ("hops", "intents", "entities"):
        for item in data.get(key) or []:
            item[UNKNOWN] = 1
    if data.get("state_version"):
        data["state_version"][UNKNOWN] = "x"
    return json.dumps(data, ensure_ascii=False)


def as_older_build(body: str | bytes, fields: tuple[str, ...] | None = None) -> str:
    """``body`` as an older build wrote it: without ``fields`` (default: every optional field)."""
    data = json.loads(body)
    model = next(m for m in MODELS if m.TYPE == data["type"])
    drop = fields if fields is not None else tuple(n for n, f in model.model_fields.items() if not f.is_required()
                                                   and n not in ("type", "version"))
    return json.dumps({k: v for k, v in data.items() if k not in drop}, ensure_ascii=False)


def _decode(body: str, model: Any) -> Any:
    return decode(body, model) if issubclass(model, QueueMessageBase) else model.model_validate_json(body)


def _all_keys(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield k
            yield from _all_keys(v)
    elif isinstance(node, list):
        for v in node:
            yield from _all_keys(v)


@pytest.mark.parametrize("type_", [m.TYPE for m in MODELS])
def test_a_newer_builds_message_decodes_as_this_build_reads_it(type_):
    msg = samples()[type_]
    assert _decode(as_newer_build(msg.model_dump_json()), type(msg)) == msg


@pytest.mark.parametrize("type_", [m.TYPE for m in MODELS])
def test_unknown_fields_are_not_carried_along(type_):
    """A decoded message re-serialised by this build holds only what this build knows (module docstring: a field
    is only written by code that understands it)."""
    msg = _decode(as_newer_build(samples()[type_].model_dump_json()), type(samples()[type_]))
    assert UNKNOWN not in set(_all_keys(json.loads(msg.model_dump_json())))
    if isinstance(msg, QueueMessageBase):
        again = msg.with_hop("route-x", 1, now_ms()).model_copy(update={"replayed": True})
        assert UNKNOWN not in again.to_queue_text()


@pytest.mark.parametrize("type_", [m.TYPE for m in MODELS])
def test_an_older_builds_message_without_the_optional_fields_decodes(type_):
    msg = samples()[type_]
    model = type(msg)
    older = _decode(as_older_build(msg.model_dump_json()), model)
    for name, field in model.model_fields.items():
        value = getattr(older, name)
        if field.is_required() or name in ("type", "version"):
            assert value == getattr(msg, name), name
        else:
            assert value == field.get_default(call_default_factory=True), name


@pytest.mark.parametrize("type_", ["routed", "reply"])
def test_a_newer_state_version_is_still_trusted(services, type_):
    """The sealed state_version keeps working with a newer build's addition to it: the seal covers what this
    build knows, so the handler and the reply sender still write on it without a read."""
    msg = samples(services)[type_]
    decoded = decode(as_newer_build(msg.to_queue_text()), type(msg))
    assert decoded.state_version == msg.state_version and services.state_store.trusts(decoded.state_version)


def test_a_raw_queue_message_never_passes_for_a_poison_record():
    """The poison trigger and the ops tooling tell a record from a raw body by validating it as a record: ignoring
    unknown fields must not make a raw message (newer or not) look like one."""
    from pydantic import ValidationError
    for type_, msg in samples().items():
        if type_ == "poison":
            continue
        for body in (msg.model_dump_json(), as_newer_build(msg.model_dump_json())):
            with pytest.raises(ValidationError):
                PoisonRecord.model_validate_json(body)


# --------------------------------------------------------------------------- processed normally, end to end
@pytest.fixture
def wired(services):
    from shared import bootstrap
    bootstrap.install(services)
    yield services
    bootstrap.install(None)


class _Out:
    def __init__(self) -> None:
        self.value: Any = None

    def set(self, val: Any) -> None:
        self.value = val

    def get(self) -> Any:
        return self.value


def _queue_msg(body: str | bytes) -> Any:
    from azure.functions.queue import QueueMessage
    return QueueMessage(id="m1", body=body.encode() if isinstance(body, str) else body, dequeue_count=1)


def _newer(body: str | bytes) -> str:
    return as_newer_build(body)


def _older(body: str | bytes) -> str:
    data = json.loads(body)
    return as_older_build(body, ADDED_LATELY.get(data["type"], ()))


def _route_outputs() -> dict[str, _Out]:
    from shared.routes import routes
    return {**{r.binding: _Out() for r in routes()}, "to_review": _Out()}


def _nothing_poisoned(services: Any) -> None:
    from shared.routes import routes
    for queue in (INBOUND_QUEUE, REPLY_QUEUE, *routes().queues()):
        assert services.queues.texts(poison_record_queue(queue)) == [], queue
    assert not services.queues.texts(REPLY_QUEUE), "an apology or a reschedule was sent"


def test_a_newer_builds_messages_are_answered_normally(wired):
    """Every hop's message as a newer build of the same version writes it (unknown fields in the message and its
    nested objects), through the trigger functions: the user gets the answer, the handler's deferred write reaches
    the document through the (still trusted) state_version, nothing is poisoned, nothing apologised."""
    from functions import branch_handlers as handler_fn
    from functions import intent_stage as intent_fn
    from functions import reply_sender as reply_fn
    from functions import review_capture as review_fn
    from shared.routes import routes
    from tests.support.messages import inbound
    services = wired
    services.intent.predictions["show me sneakers"] = _prediction()
    services.intent.predictions["anything cheap?"] = _low_confidence()

    outs = _route_outputs()
    intent_fn.intent_stage(_queue_msg(_newer(inbound("show me sneakers", 21).to_queue_text())), **outs)
    [(binding, routed_body)] = [(n, o.get()) for n, o in outs.items() if o.get() is not None]
    routed = decode(routed_body, RoutedMessage)
    assert binding == "to_product_search" and routed.entity("ProductCategory").key == "shoes"

    reply_out = _Out()
    handler_fn.process_routed(routes().get(routed.route), _queue_msg(_newer(routed_body)), reply_out)
    reply = decode(reply_out.get(), ReplyMessage)
    assert reply.reply_key.startswith("product_search.") and reply.message_id == 21

    reply_fn.reply_sender(_queue_msg(_newer(reply_out.get())))
    assert [m["dedup_id"] for m in services.sendbird.messages] == ["reply-21"]
    turn = services.state_store.get_or_create("u-1", "ch-1").turn_for(21)
    assert (turn.status, turn.reply_key, turn.reply_text) == ("sent", reply.reply_key, reply.text)

    outs = _route_outputs()
    intent_fn.intent_stage(_queue_msg(_newer(inbound("anything cheap?", 22).to_queue_text())), **outs)
    review_fn.review_capture(_queue_msg(_newer(outs["to_review"].get())))
    assert [i.text for i in services.review_store.recent()] == ["anything cheap?"]
    _nothing_poisoned(services)


def test_an_older_builds_messages_are_answered_normally(wired):
    """Messages as an older build wrote them, without the optional fields added lately (ADDED_LATELY), with the
    document as that build left it: a routed message without a state_version from an admission that took no send
    claim for its chain (the handler reads the document and writes), and an older handler's reply (its turn
    answered as that handler recorded it, no claim, no state_version). The reply this build's handler writes is not
    stripped: this build wrote it."""
    from functions import branch_handlers as handler_fn
    from functions import intent_stage as intent_fn
    from functions import reply_sender as reply_fn
    from functions import review_capture as review_fn
    from shared.routes import routes
    from tests.support.messages import admitted, inbound, reply_msg
    services = wired
    services.intent.predictions["show me sneakers"] = _prediction()
    services.intent.predictions["anything cheap?"] = _low_confidence()

    outs = _route_outputs()
    intent_fn.intent_stage(_queue_msg(_older(inbound("show me sneakers", 21).to_queue_text())), **outs)
    [routed_body] = [o.get() for n, o in outs.items() if o.get() is not None]
    older_routed = _older(routed_body)
    assert "state_version" in json.loads(routed_body) and "state_version" not in json.loads(older_routed)
    from shared.intent_stage import release_chain_claim  # an older admission took no claim for the chain
    routed = decode(older_routed, RoutedMessage)
    services.state_store.update(routed.user_id, routed.channel_url, lambda s: release_chain_claim(routed, s))
    reply_out = _Out()
    handler_fn.process_routed(routes().get("product_search"), _queue_msg(older_routed), reply_out)
    reply_fn.reply_sender(_queue_msg(reply_out.get()))

    older_reply = reply_msg()  # the greeting reply to message 11, as an older handler wrote and recorded it
    admitted(services.state_store, older_reply)
    reply_fn.reply_sender(_queue_msg(_older(older_reply.to_queue_text())))
    assert [m["dedup_id"] for m in services.sendbird.messages] == ["reply-21", "reply-11"]
    state = services.state_store.get_or_create("u-1", "ch-1")
    assert [state.turn_for(n).status for n in (21, 11)] == ["sent", "sent"]

    outs = _route_outputs()
    intent_fn.intent_stage(_queue_msg(_older(inbound("anything cheap?", 22).to_queue_text())), **outs)
    review_fn.review_capture(_queue_msg(_older(outs["to_review"].get())))
    assert [i.text for i in services.review_store.recent()] == ["anything cheap?"]
    _nothing_poisoned(services)


def _low_confidence() -> dict[str, Any]:
    from tests.support.fakes import clu_prediction
    return clu_prediction("ProductSearch", 0.55, {"Greeting": 0.2})


@pytest.mark.parametrize("build", [_newer, _older], ids=["newer-build", "older-build"])
def test_a_poison_record_of_another_build_is_listed_and_its_original_replayed(build):
    """The ops tooling reads a newer record as a record (reason, ids) and replays its original body, not the record."""
    from shared.poison_admin import ReplayRequest, list_poison, replay
    from tests.support.fakes import RecordingQueueSender
    queues = RecordingQueueSender()
    record = samples()["poison"]
    original_newer = as_newer_build(record.original)
    body = build(record.model_copy(update={"original": original_newer}).model_dump_json())
    queues.send(poison_record_queue(INBOUND_QUEUE), body, keep_forever=True)
    [entry] = list_poison(queues, (INBOUND_QUEUE,)).entries
    assert (entry.recorded_by, entry.reason, entry.message_id) == ("app", record.reason, record.message_id)
    [done] = replay(queues, ReplayRequest(message_ids=[record.message_id]), started_ms=now_ms() + 1_000)
    assert done.recorded_by == "app" and queues.depth(poison_record_queue(INBOUND_QUEUE)) == 0
    [requeued] = queues.texts(INBOUND_QUEUE)
    assert json.loads(requeued) == {**json.loads(original_newer), "replayed": True}  # the original, as written
    assert decode(requeued, InboundMessage) == decode(record.original, InboundMessage).model_copy(
        update={"replayed": True})


# --------------------------------------------------------------------------- the snapshot command
def write_snapshots(out: Callable[[str], None] = print) -> int:
    """Write the current versions' snapshots; refuse (exit status 1) where the change breaks the version."""
    SNAPSHOTS.mkdir(parents=True, exist_ok=True)
    status = 0
    for model in MODELS:
        path, new = snapshot_path(model), schema_of(model)
        old = read_snapshot(model)
        if old is not None:
            changes = Changes(old, new)
            if changes.breaking:
                out(f"refused: {breaking_message(model, changes)}\n")
                status = 1
                continue
            if snapshot_text(old) == snapshot_text(new):
                out(f"unchanged: {path.name}")
                continue
        path.write_text(snapshot_text(new), encoding="utf-8")
        out(f"wrote: {path.name}")
    return status


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(f"usage: {REGENERATE}")
    sys.exit(write_snapshots())
