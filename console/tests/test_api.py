"""API tests of every console endpoint: authentication, roles, CSRF, validation and errors with reasons.

The console runs in-process (Starlette's TestClient) on in-memory fakes of the gateway's stores and talks to a
real intent service through the CLU authoring protocol (``conftest.authoring_service``). Requests ask for JSON
(``Accept: application/json``); the same endpoints render HTML for the browser (``test_browser.py``).
"""

from __future__ import annotations

import base64
import json
import uuid

from starlette.testclient import TestClient

from console.app import create_app, route_paths
from console.tests.conftest import make_admin, make_console, sign_in
from shared.models import INBOUND_QUEUE, PoisonRecord, ReviewCapture, RoutedMessage, now_ms
from shared.review import ReviewDeps, record
from shared.telemetry import Redactor
from tests.support.messages import inbound
from tests.support.polling import poll as wait_for

JSON = {"Accept": "application/json"}


def error(resp, status: int, code: str) -> dict:
    assert resp.status_code == status, resp.text
    body = resp.json()["error"]
    assert body["code"] == code, body
    return body


def unique(prefix: str = "console test") -> str:
    return f"{prefix} {uuid.uuid4().hex[:8]}"


# --------------------------------------------------------------------------- authentication, roles, CSRF
def test_every_page_needs_a_signed_in_user(world):
    anon = world.client_for()
    for path in ("/intents", "/review", "/models", "/responses", "/conversations", "/operations", "/audit", "/me"):
        error(anon.get(path, headers=JSON), 401, "unauthenticated")
    page = anon.get("/review", follow_redirects=False)
    assert page.status_code == 303 and page.headers["location"] == "/signin?next=/review"
    error(anon.post("/utterances", json={"text": "x"}, headers=JSON), 401, "unauthenticated")
    assert anon.get("/healthz").json() == {"status": "ok"}


def test_sign_in_checks_the_password_and_locks_a_name_after_five_failures(world):
    c = world.client_for()
    token = c.get("/signin").text.split('name="csrf-token" content="')[1].split('"')[0]
    for _ in range(5):
        error(c.post("/signin", json={"username": "operator", "password": "wrong-password!", "csrf_token": token},
                     headers=JSON), 401, "sign_in_failed")
    error(c.post("/signin", json={"username": "operator", "password": "operator-password-1", "csrf_token": token},
                 headers=JSON), 429, "locked")
    error(c.post("/signin", json={"username": "editor", "password": "editor-password-1"}, headers=JSON),
          403, "csrf_failed")  # no token: refused even with the right password
    assert sign_in(world.client_for(), "editor").get("/me").json()["roles"] == ["editor"]


def test_state_changing_calls_need_the_csrf_token_and_the_same_origin(world, editor):
    no_token = TestClient(editor.app, base_url="http://console.test", cookies=editor.cookies)
    error(no_token.post("/intents", json={"name": "X"}, headers=JSON), 403, "csrf_failed")
    body = error(editor.post("/intents", json={"name": "X"}, headers={**JSON, "Origin": "https://evil.example"}),
                 403, "csrf_failed")
    assert "another site" in body["message"]
    refused = [e for e in world.admin.audit.recent() if e.outcome == "refused"]
    assert {e.details.get("reason") for e in refused} == {"csrf"}


def test_roles(editor, operator, world):
    body = error(editor.post("/models/swap", json={}), 403, "forbidden")
    assert "operator" in body["message"]
    error(operator.post("/utterances", json={"text": "hi", "intent": "Greeting"}), 403, "forbidden")
    error(operator.post("/responses", json={}), 403, "forbidden")
    error(editor.post("/conversations/u-1/erase", json={"confirm": "u-1"}), 403, "forbidden")
    error(editor.post("/operations/replay", json={"ids": ["1"]}), 403, "forbidden")
    assert operator.get("/intents").status_code == 200  # everybody reads
    assert any(e.action == "model.swap" and e.outcome == "refused" for e in world.admin.audit.recent())


def test_sign_out_ends_the_session(editor):
    assert editor.post("/signout").json() == {"signed_out": True}
    error(editor.get("/me"), 401, "unauthenticated")


def test_easy_auth_mode_takes_the_principal_and_its_app_roles(authoring_service):
    from tools.gateway_stack import CONSOLE_AUTHORING_KEY
    console = make_console(authoring_service.base_url, CONSOLE_AUTHORING_KEY, make_admin(),
                           CONSOLE_AUTH_MODE="easyauth", CONSOLE_LOCAL_USERS="")
    c = TestClient(create_app(console), base_url="http://console.test")
    error(c.get("/me", headers=JSON), 401, "unauthenticated")
    principal = {"auth_typ": "aad", "name_typ": "name", "role_typ": "roles",
                 "claims": [{"typ": "name", "val": "kim@example.com"}, {"typ": "roles", "val": "Console.Operator"},
                            {"typ": "roles", "val": "Something.Else"}]}
    headers = {**JSON, "X-MS-CLIENT-PRINCIPAL": base64.b64encode(json.dumps(principal).encode()).decode()}
    me = c.get("/me", headers=headers).json()
    assert me["user"] == "kim@example.com" and me["roles"] == ["operator"]
    assert c.get("/signin", follow_redirects=False).headers["location"].startswith("/.auth/login/aad")


def test_routes_and_security_headers(world, editor):
    app = editor.app
    for path in route_paths(app):
        assert path.strip("/").split("/")[0].lower() not in ("admin", "runtime"), path
    page = editor.get("/intents", headers={"Accept": "text/html"})
    assert "script-src" not in page.headers["content-security-policy"]  # default-src 'self': no inline script
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-frame-options"] == "DENY" and page.headers["cache-control"] == "no-store"
    assert '<meta name="csrf-token"' in page.text and "<script>" not in page.text


# --------------------------------------------------------------------------- intents, utterances, entities
def test_utterances_add_search_edit_label_delete(editor, world):
    text = unique("where has my parcel gone")
    added = editor.post("/utterances", json={"text": text, "intent": "OrderStatus", "dataset": "Train"})
    assert added.status_code == 200 and "added" in added.json()["changed"] and "(en)" in added.json()["changed"]
    found = editor.get("/intents", params={"q": text}).json()
    [u] = found["utterances"]
    assert (u["intent"], u["language"], u["dataset"]) == ("OrderStatus", "en", "Train")
    body = error(editor.post("/utterances", json={"text": text, "intent": "OrderStatus"}), 400, "invalid_request")
    assert "already in the project" in body["message"]
    error(editor.post("/utterances", json={"text": "   ", "intent": "OrderStatus"}), 400, "invalid_request")
    body = error(editor.post("/utterances", json={"text": unique(), "intent": "NoSuchIntent"}), 400,
                 "invalid_request")
    assert "unknown intent" in body["message"]
    key = u["key"]
    moved = editor.post(f"/utterances/{key}", json={"intent": "Help", "dataset": "Test"}).json()
    assert "intent 'OrderStatus' -> 'Help'" in moved["changed"]
    labelled = editor.post(f"/utterances/{key}/labels", json={"category": "ProductCategory", "span": "parcel"})
    assert labelled.status_code == 200, labelled.text
    [u] = editor.get("/intents", params={"q": text}).json()["utterances"]
    assert u["intent"] == "Help" and u["entities"] == [{"category": "ProductCategory", "offset": 13, "length": 6}]
    body = error(editor.post(f"/utterances/{key}/labels", json={"category": "ProductCategory", "span": "kettle"}),
                 400, "invalid_request")
    assert "is not in the utterance" in body["message"]
    error(editor.post(f"/utterances/{key}/labels", json={"category": "Nope", "span": "parcel"}), 400,
          "invalid_request")
    assert "removed the ProductCategory label" in editor.post(f"/utterances/{key}/labels/delete",
                                                              json={"index": 0}).json()["changed"]
    assert editor.post(f"/utterances/{key}/delete").status_code == 200
    assert editor.get("/intents", params={"q": text}).json()["utterances"] == []
    error(editor.post(f"/utterances/{key}/delete"), 400, "invalid_request")  # gone: the reason says so
    actions = [e.action for e in world.admin.audit.recent(action_prefix="utterance.")]
    assert {"utterance.add", "utterance.edit", "utterance.label", "utterance.unlabel", "utterance.delete"} <= set(actions)


def test_intents_and_entities(editor):
    name = "Temp" + uuid.uuid4().hex[:6]
    assert editor.post("/intents", json={"name": name}).json()["changed"] == f"added intent {name}"
    error(editor.post("/intents", json={"name": name}), 400, "invalid_request")
    error(editor.post("/intents", json={"name": "bad name!"}), 400, "invalid_request")
    text = unique("temporary phrasing")
    editor.post("/utterances", json={"text": text, "intent": name})
    body = error(editor.post(f"/intents/{name}/delete"), 400, "invalid_request")
    assert "1 utterance(s) use" in body["message"]
    key = editor.get("/intents", params={"q": text}).json()["utterances"][0]["key"]
    editor.post(f"/utterances/{key}/delete")
    assert editor.post(f"/intents/{name}/delete").status_code == 200
    entity = "Ent" + uuid.uuid4().hex[:6]
    assert editor.post("/entities", json={"name": entity}).status_code == 200
    assert entity in [e["category"] for e in editor.get("/intents").json()["entities"]]
    assert editor.post(f"/entities/{entity}/delete").status_code == 200
    error(editor.post("/intents/None/delete"), 400, "invalid_request")


def test_export_and_import_the_project_file(editor):
    exported = editor.get("/project/export")
    assert exported.headers["content-disposition"].startswith('attachment; filename="retail-bot-')
    project = exported.json()
    n = len(project["assets"]["utterances"])
    text = unique("imported phrasing")
    changed = json.loads(json.dumps(project))
    changed["assets"]["utterances"].append({"text": text, "language": "en", "intent": "Greeting", "dataset": "Train"})
    resp = editor.post("/project/import", files={"file": ("p.json", json.dumps(changed), "application/json")})
    assert resp.status_code == 200 and f"{n + 1} utterances" in resp.json()["changed"]
    assert editor.get("/intents", params={"q": text}).json()["matched"] == 1
    error(editor.post("/project/import", files={"file": ("p.json", b"{not json", "application/json")}), 400,
          "invalid_request")
    body = error(editor.post("/project/import", files={"file": ("p.json", b'{"a": 1}', "application/json")}), 400,
                 "invalid_request")
    assert "not a CLU project file" in body["message"]
    bad = json.loads(json.dumps(project))
    bad["assets"]["utterances"].append({"text": "x", "language": "en", "intent": "Nope", "dataset": "Train"})
    body = error(editor.post("/project/import", files={"file": ("p.json", json.dumps(bad), "application/json")}),
                 400, "authoring_InvalidArgument")  # the service's own validation, passed on with its reason
    assert "Nope" in body["message"] or any("Nope" in str(d) for d in body.get("details", []))
    restored = editor.post("/project/import", files={"file": ("p.json", json.dumps(project), "application/json")})
    assert restored.status_code == 200 and editor.get("/intents").json()["total"] == n


# --------------------------------------------------------------------------- review inbox
def capture(text: str, message_id: int, user: str = "u-1") -> ReviewCapture:
    routed = RoutedMessage.following(inbound(text, message_id, user=user), route="fallback", text=text,
                                     language="en", top_intent="None", confidence_score=0.8)
    return ReviewCapture.following(routed, reason="fallback", text=text, language="en", route="fallback",
                                   top_intent="None", confidence_score=0.8, model_version="retail-bot.retail.x")


def test_review_assign_adds_the_text_to_the_project_and_says_what_changed(world, editor):
    text = unique("waiting for ages for my kettle")
    deps = ReviewDeps(world.admin.review_store, Redactor("off"))
    item = record(capture(text, 1), deps)
    record(capture(text, 2, "u-2"), deps)
    other = record(capture(unique("what is the meaning of life"), 3), deps)
    listed = editor.get("/review").json()
    assert [i["id"] for i in listed["items"]][:2] == [other.id, item.id] or {i["id"] for i in listed["items"]} >= {
        item.id, other.id}
    assert next(i for i in listed["items"] if i["id"] == item.id)["count"] == 2
    error(editor.post("/review/assign", json={"ids": [item.id]}), 400, "invalid_request")  # no intent
    error(editor.post("/review/assign", json={"intent": "OrderStatus"}), 400, "invalid_request")  # nothing selected
    error(editor.post("/review/assign", json={"ids": ["nope"], "intent": "OrderStatus"}), 404, "not_found")
    done = editor.post("/review/assign", json={"ids": [item.id], "intent": "OrderStatus"}).json()
    [result] = done["results"]
    assert result["changed"].startswith(f"added {text!r} (en) to OrderStatus as Train")
    assert editor.get("/intents", params={"q": text}).json()["utterances"][0]["intent"] == "OrderStatus"
    decided = world.admin.review_store.get(item.id)
    assert decided.status == "assigned" and decided.decision.by == "editor" and "added" in decided.decision.changed
    assert editor.post("/review/dismiss", json={"ids": [other.id]}).json()["results"][0]["changed"].startswith(
        "dismissed")
    assert [i["id"] for i in editor.get("/review", params={"status": "dismissed"}).json()["items"]] == [other.id]
    assert editor.post("/review/reopen", json={"ids": [other.id]}).status_code == 200
    assert world.admin.review_store.get(other.id).status == "open"
    error(editor.get("/review", params={"status": "weird"}), 400, "invalid_request")
    key = editor.get("/intents", params={"q": text}).json()["utterances"][0]["key"]
    editor.post(f"/utterances/{key}/delete")


def test_review_items_without_text_can_only_be_dismissed(authoring_service):
    from tools.gateway_stack import CONSOLE_AUTHORING_KEY
    admin = make_admin(TELEMETRY_PII_MODE="strict", TELEMETRY_PII_HASH_KEY="k" * 20)
    console = make_console(authoring_service.base_url, CONSOLE_AUTHORING_KEY, admin)
    c = sign_in(TestClient(create_app(console), base_url="http://console.test"), "editor")
    item = record(capture("my secret sentence", 1), ReviewDeps(admin.review_store, Redactor("strict", "k" * 20),
                                                               "k" * 20))
    assert c.get("/review").json()["items"][0]["text"] is None
    body = error(c.post("/review/assign", json={"ids": [item.id], "intent": "Help"}), 409, "no_text")
    assert "PII mode strict" in body["message"]
    assert c.post("/review/dismiss", json={"ids": [item.id]}).status_code == 200


# --------------------------------------------------------------------------- responses
def test_responses_publish_validate_history_and_revert(world, editor):
    page = editor.get("/responses").json()
    assert page["version"] == 0 and "order_status.found" in page["keys"]
    texts = page["texts"]
    texts["goodbye.thanks"]["en"] = "Bye! Come back soon."
    published = editor.post("/responses", json={"texts": texts, "based_on": 0, "note": "friendlier"}).json()
    assert published["version"] == 1 and published["changed_keys"] == ["goodbye.thanks"]
    assert world.admin.catalog_store.current().texts["goodbye.thanks"]["en"] == "Bye! Come back soon."
    form = {"based_on": "1", "texts[order_status.found][en]": "Order {order_number} is on its way"}
    body = error(editor.post("/responses", data=form), 400, "invalid_request")
    assert body["details"] == ["order_status.found: the en text must use the placeholders ['order_number', "
                               "'tracking_url'] (missing {tracking_url})"]
    error(editor.post("/responses", json={"texts": texts, "based_on": 1}), 400, "invalid_request")  # nothing changed
    texts["greeting.hello"]["ko"] = "안녕하세요!"
    body = error(editor.post("/responses", json={"texts": texts, "based_on": 0}), 409, "conflict")
    assert "version 1 was published since" in body["message"]
    assert editor.post("/responses", data={"based_on": "1", "texts[greeting.hello][ko]": "안녕하세요!"}).json()[
        "version"] == 2
    assert editor.get("/responses/versions/1").json()["diff"] == ["greeting.hello"]
    error(editor.get("/responses/versions/9"), 404, "not_found")
    reverted = editor.post("/responses/versions/1/revert").json()
    assert reverted["version"] == 3
    current = world.admin.catalog_store.current()
    assert current.reverted_from == 1 and current.texts["greeting.hello"] == page["shipped"]["greeting.hello"]
    assert [v["version"] for v in editor.get("/responses").json()["history"]] == [3, 2, 1]
    assert {e.action for e in world.admin.audit.recent(action_prefix="catalog.")} == {"catalog.publish",
                                                                                      "catalog.revert"}


# --------------------------------------------------------------------------- conversations
def seed_conversation(world, user="customer_77", channel="ch-77"):
    from shared.intent_stage import admit
    store = world.admin.state_store
    store.update(user, channel, lambda s: admit(inbound("hi", 5, user=user, channel_url=channel), s,
                                                world.admin.settings, now_ms()))

    def waiting(s):
        s.pending_slot = "order_number"
        s.handoff_until_ms = now_ms() + 600_000
    store.update(user, channel, waiting)
    return user, channel


def test_conversations_find_view_end_handoff_clear_slot(world, operator):
    user, channel = seed_conversation(world)
    assert [s["user_id"] for s in operator.get("/conversations", params={"q": user}).json()["found"]] == [user]
    assert [s["user_id"] for s in operator.get("/conversations", params={"q": channel}).json()["found"]] == [user]
    view = operator.get(f"/conversations/{user}").json()
    assert view["handed_off"] and view["state"]["pending_slot"] == "order_number" and len(view["state"]["turns"]) == 1
    operator.post(f"/conversations/{user}/end-handoff")
    operator.post(f"/conversations/{user}/clear-slot")
    view = operator.get(f"/conversations/{user}").json()
    assert not view["handed_off"] and view["state"]["pending_slot"] is None
    error(operator.get("/conversations/nobody"), 404, "not_found")
    error(operator.post("/conversations/nobody/clear-slot"), 404, "not_found")


def test_erase_needs_confirmation_and_leaves_an_audit_record_without_the_data(world, operator):
    user, _ = seed_conversation(world, "customer_erase", "ch-erase")
    operator.post(f"/conversations/{user}/clear-slot")
    record(capture(unique("something personal"), 9, user), ReviewDeps(world.admin.review_store, Redactor("off")))
    body = error(operator.post(f"/conversations/{user}/erase", json={"confirm": "wrong"}), 400, "invalid_request")
    assert "type the user id" in body["message"]
    done = operator.post(f"/conversations/{user}/erase", json={"confirm": user}).json()
    assert done["erasure"] == {"state_deleted": True, "review_items_deleted": 1, "review_items_updated": 0,
                               "review_occurrences_removed": 1}
    assert world.admin.state_admin.find(user) is None
    assert world.admin.review_store.items_of_user(user) == []
    [entry] = world.admin.audit.recent(action_prefix="conversation.erase")
    assert entry.target.startswith("user:")
    assert user not in json.dumps([e.model_dump() for e in world.admin.audit.recent()])  # no entry names them


# --------------------------------------------------------------------------- operations
def test_operations_list_poison_with_reasons_replay_and_depths(world, operator):
    queues = world.admin.queues
    original = inbound("hello", 4242).to_queue_text()
    queues.send_poison(PoisonRecord(source_queue=INBOUND_QUEUE, reason="intent service answered 503",
                                    error_type="TransientError", dequeue_count=5, poisoned_at_ms=now_ms() - 1000,
                                    correlation_id="corr-4242", message_id=4242, original=original))
    queues.send(INBOUND_QUEUE, "waiting")
    page = operator.get("/operations").json()
    [entry] = page["entries"]
    assert entry["reason"] == "intent service answered 503" and entry["message_id"] == 4242
    depth = next(d for d in page["depths"] if d["queue"] == INBOUND_QUEUE)
    assert depth == {"queue": INBOUND_QUEUE, "depth": 1, "poison": 0, "records": 1}
    assert "review-capture" in [d["queue"] for d in page["depths"]]
    error(operator.get("/operations", params={"queue": "nope"}), 400, "invalid_request")
    error(operator.post("/operations/replay", json={}), 400, "invalid_request")
    error(operator.post("/operations/replay", json={"ids": [entry["id"]], "queues": ["nope"]}), 400,
          "invalid_request")
    replayed = operator.post("/operations/replay", json={"ids": [entry["id"]]}).json()
    assert [m["message_id"] for m in replayed["replayed"]] == [4242]
    assert json.loads(queues.texts(INBOUND_QUEUE)[-1])["replayed"] is True
    assert operator.get("/operations").json()["entries"] == []


# --------------------------------------------------------------------------- training and models (real service)

def test_models_train_evaluate_deploy_try_swap_and_roll_back(world, lead, editor):
    models = lead.get("/models").json()
    assert models["deployments"]["production"]["label"] == "retail"
    error(editor.post("/models/try", json={"text": ""}), 400, "invalid_request")
    label = "t" + uuid.uuid4().hex[:6]
    started = lead.post("/models/train", json={"label": label})
    assert started.status_code == 202, started.text
    job_id = started.json()["job_id"]
    job = wait_for(lambda: (j := lead.get(f"/models/jobs/{job_id}").json()["job"])["status"] in (
        "succeeded", "failed") and j, 180, "training")
    assert job["status"] == "succeeded", job
    ev = lead.get(f"/models/{label}").json()
    assert ev["tested"] > 50 and {r["intent"] for r in ev["rows"]} >= {"OrderStatus", "Greeting"}
    assert ev["prod_label"] == "retail" and ev["rows"][0]["prod"] is not None  # compared with production
    assert all(r["intentsResult"]["expectedIntent"] != r["intentsResult"]["predictedIntent"]
               for r in ev["misclassified"])
    assert sum(c["rawValue"] for row in ev["matrix"].values() for c in row.values()) == ev["tested"]
    error(lead.get("/models/no-such-model"), 404, "authoring_NotFound")
    assert lead.post(f"/models/{label}/deploy").json()["changed"] == f"deployed {label} to staging"
    tried = lead.post("/models/try", json={"text": "where is my order"}).json()
    assert set(tried["answers"]) == {"staging", "production"}
    assert all(a["prediction"]["topIntent"] == "OrderStatus" and a["route"] == "order_status"
               for a in tried["answers"].values())
    error(lead.post("/models/swap", json={"force": "1"}), 400, "invalid_request")  # forcing needs a reason
    swapped = lead.post("/models/swap", json={}).json()
    assert swapped["gate"]["verdict"] in ("passed", "notApplicable"), swapped
    assert lead.get("/models").json()["deployments"]["production"]["label"] == label
    back = lead.post("/models/swap", json={}).json()  # roll back: the old production model is in staging
    assert back["gate"]["verdict"] == "rollback"
    assert lead.get("/models").json()["deployments"]["production"]["label"] == "retail"
    trail = lead.get("/models").json()["service_audit"]
    assert [e["action"] for e in trail[:2]] == ["swap", "swap"]
    assert {e.action for e in world.admin.audit.recent(action_prefix="model.")} >= {
        "model.train", "model.deploy_staging", "model.swap"}


def test_the_authoring_service_unreachable_is_a_502_with_the_reason(world):
    console = make_console("http://127.0.0.1:9", "k" * 20, make_admin())
    c = sign_in(TestClient(create_app(console), base_url="http://console.test"), "lead")
    body = error(c.get("/models"), 502, "authoring_Unavailable")
    assert "did not answer" in body["message"]


def test_audit_page_lists_every_change(world, editor):
    editor.post("/intents", json={"name": "bad name!"})
    entries = editor.get("/audit").json()["entries"]
    assert entries[0]["action"] == "intent.add" and entries[0]["outcome"] == "refused"
    assert entries[0]["actor"] == "editor" and entries[0]["roles"] == ["editor"]
    assert any(e["action"] == "auth.sign_in" for e in entries)


def test_a_refused_swap_shows_the_gates_reasons_and_forcing_needs_a_reason(world, operator, monkeypatch):
    from console.clu import AuthoringError
    calls = []

    def swap(first, second, *, force=False, reason=""):
        calls.append((first, second, force, reason))
        if not force:
            raise AuthoringError(409, "Conflict", "The promotion gate refused the model for the production deployment",
                                 [{"code": "AccuracyDrop", "message": "accuracy drops 3.1 points (limit 2)"}],
                                 {"code": "PromotionGateRefused"})
        return {"status": "succeeded", "jobId": "j-1"}
    monkeypatch.setattr(world.console.authoring, "swap", swap)
    monkeypatch.setattr(world.console.authoring, "audit", lambda: [
        {"action": "swap", "jobId": "j-1", "gate": {"verdict": "forced", "reasons": ["hotfix"]}}])
    body = error(operator.post("/models/swap", json={}), 409, "gate_refused")
    assert body["details"] == ["accuracy drops 3.1 points (limit 2)"]
    forced = operator.post("/models/swap", json={"force": "1", "reason": "hotfix"}).json()
    assert forced["gate"]["verdict"] == "forced" and calls[-1] == ("production", "staging", True, "hotfix")
    refused, done = world.admin.audit.recent(action_prefix="model.swap")[::-1]
    assert refused.outcome == "refused" and refused.details["gate"] == ["accuracy drops 3.1 points (limit 2)"]
    assert done.details["forced"] is True and done.details["reason"] == "hotfix"
