"""The authoring API over HTTP against a real server process (in-memory project store): CLU's paths,
shapes, errors and long-running operations; validation with the path of the bad field; limits;
cancellation; the promotion gate; the audit log; signed CloudEvents; prediction per deployment."""
from __future__ import annotations

import copy
import time

import pytest
import requests

from intent_service.authoring.events import verify_signature
from intent_service.authoring.projectfile import convert_span

from .authoring_support import (AUTHOR_KEY, AUTHORING, PREDICT_KEY, Authoring, AuthoringServer, WebhookReceiver,
                                load_retail_project, predict)

SECRET = "webhook-secret-for-tests"


@pytest.fixture(scope="module")
def webhook():
    hook = WebhookReceiver(fail_first=2)  # the first two deliveries fail: retried with back-off
    yield hook
    hook.stop()


@pytest.fixture(scope="module")
def server(webhook):
    srv = AuthoringServer(env={"INTENT_EVENTS_WEBHOOK_URL": webhook.url, "INTENT_EVENTS_SECRET": SECRET,
                               "INTENT_EVENTS_BACKOFF_SECONDS": "0.1", "INTENT_MAX_UTTERANCES": "2000",
                               "INTENT_AUTHORING_MAX_REQUEST_BYTES": "3000000",
                               "INTENT_GATE_MAX_ACCURACY_DROP": "2", "INTENT_GATE_MAX_INTENT_F1_DROP": "10"})
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def api(server):
    return Authoring(server.base)


@pytest.fixture(scope="module")
def retail(api):
    """Project 'retail-bot' imported and trained as 'v1' (manual split)."""
    job = api.run("POST", "/projects/retail-bot/:import", load_retail_project())
    assert job["status"] == "succeeded", job
    job = api.run("POST", "/projects/retail-bot/:train",
                  {"modelLabel": "v1", "trainingMode": "standard", "evaluationOptions": {"kind": "manual"}})
    assert job["status"] == "succeeded", job
    return "retail-bot"


def small_project(name="small", test=True):
    utts = []
    for intent, texts in {"Greeting": ["hi", "hello", "hey there", "good morning", "안녕하세요", "반가워요"],
                          "OrderStatus": ["where is my order", "track my package", "order status please",
                                          "배송 어디쯤이에요", "주문 확인해 주세요", "택배 언제 와요"],
                          "None": ["what is the weather", "tell me a joke", "who won the game",
                                   "날씨 어때", "농담해줘", "오늘 뉴스"]}.items():
        for k, t in enumerate(texts):
            utts.append({"text": t, "language": "ko" if ord(t[0]) > 0x3000 else "en", "intent": intent,
                         "dataset": "Test" if (test and k == 0) else "Train"})
    return {"projectFileVersion": "2023-04-01", "stringIndexType": "Utf16CodeUnit",
            "metadata": {"projectKind": "Conversation", "projectName": name, "language": "en",
                         "multilingual": True, "description": "", "settings": {"confidenceThreshold": 0.0}},
            "assets": {"projectKind": "Conversation",
                       "intents": [{"category": c} for c in ("Greeting", "None", "OrderStatus")],
                       "entities": [], "utterances": utts}}


def assert_error(resp, status, code=None, target=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert err["message"]
    if code:
        assert err["code"] == code, err
    if target:
        assert err.get("target") == target, err
    return err


# ---------------------------------------------------------------------------- security


def test_authoring_needs_its_own_key(server, api):
    for headers in ({}, {"Ocp-Apim-Subscription-Key": PREDICT_KEY}, {"Ocp-Apim-Subscription-Key": "wrong"}):
        r = requests.get(api.url("/projects"), headers=headers, timeout=5)
        assert_error(r, 401)
    assert requests.get(api.url("/projects"), headers={"Ocp-Apim-Subscription-Key": AUTHOR_KEY},
                        timeout=5).status_code == 200


def test_api_version_is_required(server):
    r = requests.get(server.url(AUTHORING + "/projects"), headers={"Ocp-Apim-Subscription-Key": AUTHOR_KEY},
                     timeout=5)
    assert_error(r, 400, "InvalidArgument")
    r = requests.get(server.url(AUTHORING + "/projects?api-version=2022-05-01"),
                     headers={"Ocp-Apim-Subscription-Key": AUTHOR_KEY}, timeout=5)
    assert_error(r, 400, "InvalidArgument")


def test_prediction_needs_project_and_deployment_and_answers_404_in_clu_shape(server, retail):
    r = predict(server.base, "hi", "nope", "production")
    err = assert_error(r, 404, "NotFound")
    assert err["innererror"]["code"] == "ProjectNotFound"
    r = requests.post(server.url("/language/:analyze-conversations?api-version=2023-04-01"),
                      headers={"Ocp-Apim-Subscription-Key": PREDICT_KEY},
                      json={"kind": "Conversation", "analysisInput": {"conversationItem": {"text": "hi"}}}, timeout=5)
    assert_error(r, 400, "InvalidArgument")
    assert predict(server.base, "hi", "retail-bot", "production", key="wrong").status_code == 401


# ---------------------------------------------------------------------------- projects


def test_project_create_get_update_list_delete(api):
    r = api.call("PATCH", "/projects/crud-1", {"projectKind": "Conversation"},
                 headers={"Content-Type": "application/merge-patch+json"})
    assert_error(r, 400, "InvalidArgument", "language")
    r = api.call("PATCH", "/projects/crud-1", {"projectKind": "Conversation", "language": "ko",
                                               "multilingual": True, "description": "first"},
                 headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 201, r.text
    meta = r.json()
    assert meta["projectName"] == "crud-1" and meta["language"] == "ko" and meta["createdDateTime"].endswith("Z")
    r = api.call("PATCH", "/projects/crud-1", {"description": "second", "settings": {"confidenceThreshold": 0.3}},
                 headers={"Content-Type": "application/merge-patch+json"})
    assert r.status_code == 200 and r.json()["description"] == "second"
    assert api.call("GET", "/projects/crud-1").json()["settings"] == {"confidenceThreshold": 0.3}
    api.call("PATCH", "/projects/crud-2", {"projectKind": "Conversation", "language": "en"})
    page = api.call("GET", "/projects", params={"top": 1}).json()
    assert len(page["value"]) == 1
    names = [p["projectName"] for p in api.call("GET", "/projects").json()["value"]]
    assert {"crud-1", "crud-2"} <= set(names)
    r = api.call("DELETE", "/projects/crud-1")
    assert r.status_code == 202 and "/projects/global/deletion-jobs/" in r.headers["operation-location"]
    assert api.wait(r)["status"] == "succeeded"
    assert_error(api.call("GET", "/projects/crud-1"), 404, "ProjectNotFound")
    assert_error(api.call("GET", "/projects/bad%20name"), 400, "InvalidArgument", "projectName")


# ---------------------------------------------------------------------------- import / export


@pytest.mark.parametrize("mutate,target", [
    (lambda p: p["metadata"].pop("language"), "metadata.language"),
    (lambda p: p["assets"]["utterances"][3].update(dataset="Validation"), "assets.utterances[3].dataset"),
    (lambda p: p["assets"]["utterances"][5].update(intent="Unknown"), "assets.utterances[5].intent"),
    (lambda p: p["assets"]["utterances"][7].update(text="x" * 501), "assets.utterances[7].text"),
    (lambda p: p["assets"]["utterances"][2].update(entities=[{"category": "OrderNumber", "offset": 0, "length": 99}]),
     "assets.utterances[2].entities[0].length"),
    (lambda p: p["assets"]["utterances"][2].update(entities=[{"category": "OrderNumber", "offset": "0", "length": 1}]),
     "assets.utterances[2].entities[0].offset"),
    (lambda p: p["assets"]["entities"][0]["regex"]["expressions"][0].update(regexPattern="(unclosed"),
     "assets.entities[0].regex.expressions[0].regexPattern"),
    (lambda p: p["assets"]["intents"].append({"category": "Greeting"}), "assets.intents[7].category"),
    (lambda p: p.update(stringIndexType="Utf8CodeUnit"), "stringIndexType"),
    (lambda p: p["assets"]["utterances"].extend(p["assets"]["utterances"] * 3), "assets.utterances"),
])
def test_bad_project_files_get_400_with_the_path(api, mutate, target):
    project = load_retail_project()
    mutate(project)
    r = api.call("POST", "/projects/bad-file/:import", project)
    err = assert_error(r, 400, "InvalidArgument", target)
    assert target in err["message"] and err["details"][0]["target"] == target
    assert_error(api.call("GET", "/projects/bad-file"), 404, "ProjectNotFound")  # nothing was written


def test_oversized_body_is_413(api):
    project = load_retail_project()
    project["assets"]["description_padding"] = "x" * 3_100_000
    assert_error(api.call("POST", "/projects/too-big/:import", project), 413, "RequestEntityTooLarge")


def test_export_returns_what_was_imported(api, retail):
    r = api.call("POST", "/projects/retail-bot/:export", params={"stringIndexType": "Utf16CodeUnit"})
    job = api.wait(r)
    assert job["status"] == "succeeded" and job["resultUrl"].startswith("http")
    exported = api.s.get(job["resultUrl"], timeout=10).json()
    original = load_retail_project()
    assert exported["assets"] == original["assets"]
    assert exported["metadata"]["projectName"] == "retail-bot"
    assert exported["projectFileVersion"] == "2023-04-01" and exported["stringIndexType"] == "Utf16CodeUnit"
    # the assets a trained model was trained on
    job = api.run("POST", "/projects/retail-bot/:export",
                  params={"stringIndexType": "Utf16CodeUnit", "trainedModelLabel": "v1"})
    assert api.s.get(job["resultUrl"], timeout=10).json()["assets"] == original["assets"]
    assert_error(api.call("POST", "/projects/retail-bot/:export"), 400, "InvalidArgument", "stringIndexType")


# ---------------------------------------------------------------------------- training


def test_training_request_validation(api, retail):
    p = "/projects/retail-bot/:train"
    assert_error(api.call("POST", p, {"modelLabel": "x"}), 400, "InvalidArgument", "trainingMode")
    assert_error(api.call("POST", p, {"modelLabel": "x", "trainingMode": "turbo"}), 400, "InvalidArgument",
                 "trainingMode")
    assert_error(api.call("POST", p, {"modelLabel": "x", "trainingMode": "standard", "trainingConfigVersion": "1999"}),
                 400, "InvalidArgument", "trainingConfigVersion")
    assert_error(api.call("POST", p, {"modelLabel": "x y", "trainingMode": "standard"}), 400, "InvalidArgument",
                 "modelLabel")
    assert_error(api.call("POST", p, {"modelLabel": "x", "trainingMode": "standard", "evaluationOptions":
                                      {"kind": "percentage", "trainingSplitPercentage": 70,
                                       "testingSplitPercentage": 20}}),
                 400, "InvalidArgument", "evaluationOptions.testingSplitPercentage")
    assert api.run("POST", "/projects/no-test/:import", small_project("no-test", test=False))["status"] == "succeeded"
    assert_error(api.call("POST", "/projects/no-test/:train", {"modelLabel": "x", "trainingMode": "standard",
                                                                "evaluationOptions": {"kind": "manual"}}),
                 400, "InvalidArgument", "evaluationOptions.kind")
    assert_error(api.call("POST", "/projects/missing/:train", {"modelLabel": "x", "trainingMode": "standard"}),
                 404, "ProjectNotFound")


def test_concurrent_training_limit_429_and_cancel(api, retail):
    r1 = api.call("POST", "/projects/retail-bot/:train", {"modelLabel": "cancelled", "trainingMode": "standard"})
    assert r1.status_code == 202
    r2 = api.call("POST", "/projects/retail-bot/:train", {"modelLabel": "second", "trainingMode": "standard"})
    err = assert_error(r2, 429, "TooManyRequests")
    assert int(r2.headers["Retry-After"]) > 0 and "limit" in err["message"]
    job_url = r1.headers["operation-location"]
    job_id = job_url.split("/jobs/")[1].split("?")[0]
    listed = api.call("GET", "/projects/retail-bot/train/jobs").json()["value"]
    assert job_id in [j["jobId"] for j in listed]
    r = api.call("POST", f"/projects/retail-bot/train/jobs/{job_id}/:cancel")
    assert r.status_code == 202
    deadline = time.monotonic() + 30
    while True:
        job = api.s.get(job_url, timeout=5).json()
        if job["status"] == "cancelled" or time.monotonic() > deadline:
            break
        assert job["status"] in ("running", "cancelling", "notStarted")
        time.sleep(0.1)
    assert job["status"] == "cancelled", job
    assert job["result"]["trainingStatus"]["status"] == "cancelled"
    assert_error(api.call("GET", "/projects/retail-bot/models/cancelled"), 404, "NotFound")
    # the slot is free again
    r = api.call("POST", "/projects/small/:import", small_project())
    assert api.wait(r)["status"] == "succeeded"
    job = api.run("POST", "/projects/small/:train", {"modelLabel": "s1", "trainingMode": "advanced",
                                                     "evaluationOptions": {"kind": "percentage",
                                                                           "trainingSplitPercentage": 70}})
    assert job["status"] == "succeeded", job
    ev = api.call("GET", "/projects/small/models/s1/evaluation/summary-result").json()
    assert ev["evaluationOptions"] == {"kind": "percentage", "trainingSplitPercentage": 70,
                                       "testingSplitPercentage": 30}


def test_trained_models_evaluation_and_results(api, retail):
    models = api.call("GET", "/projects/retail-bot/models").json()["value"]
    v1 = next(m for m in models if m["label"] == "v1")
    for key in ("modelId", "lastTrainedDateTime", "lastTrainingDurationInSeconds", "modelExpirationDate",
                "modelTrainingConfigVersion", "hasSnapshot"):
        assert key in v1
    assert len(v1["modelSha256"]) == 64
    s = api.call("GET", "/projects/retail-bot/models/v1/evaluation/summary-result").json()
    ie = s["intentsEvaluation"]
    project = load_retail_project()
    n_test = sum(1 for u in project["assets"]["utterances"] if u["dataset"] == "Test")
    for c in ie["intents"].values():
        assert c["truePositiveCount"] + c["falsePositiveCount"] + c["falseNegativeCount"] + c["trueNegativeCount"] == n_test
        assert 0 <= c["precision"] <= 1 and 0 <= c["recall"] <= 1 and 0 <= c["f1"] <= 1
    assert sum(v["rawValue"] for row in ie["confusionMatrix"].values() for v in row.values()) == n_test
    for row in ie["confusionMatrix"].values():
        assert abs(sum(v["normalizedValue"] for v in row.values()) - 100) < 0.01
    assert {"microF1", "microPrecision", "microRecall", "macroF1", "macroPrecision", "macroRecall"} <= set(ie)
    assert set(s["entitiesEvaluation"]["entities"]) >= {"OrderNumber", "ProductCategory"}
    assert s["evaluationOptions"] == {"kind": "manual"}
    # per-utterance results, paged
    page = api.call("GET", "/projects/retail-bot/models/v1/evaluation/result",
                    params={"stringIndexType": "Utf16CodeUnit", "top": 10}).json()
    assert len(page["value"]) == 10 and "nextLink" not in page
    page = api.call("GET", "/projects/retail-bot/models/v1/evaluation/result",
                    params={"stringIndexType": "Utf16CodeUnit", "maxpagesize": 50}).json()
    assert len(page["value"]) == 50 and "skip=50" in page["nextLink"]
    everything = []
    url = api.url("/projects/retail-bot/models/v1/evaluation/result?stringIndexType=Utf16CodeUnit&maxpagesize=50")
    while url:
        body = api.s.get(url, timeout=10).json()
        everything += body["value"]
        url = body.get("nextLink")
    assert len(everything) == n_test
    # offsets in other units
    utf16 = {r["text"]: r for r in everything}
    graphemes = api.call("GET", "/projects/retail-bot/models/v1/evaluation/result",
                         params={"stringIndexType": "TextElement_V8", "maxpagesize": 500}).json()["value"]
    checked = 0
    for r in graphemes:
        for a, b in zip(utf16[r["text"]]["entitiesResult"]["expectedEntities"],
                        r["entitiesResult"]["expectedEntities"], strict=True):
            assert (b["offset"], b["length"]) == convert_span(r["text"], a["offset"], a["length"], "TextElement_V8")
            checked += 1
    assert checked > 5
    assert_error(api.call("GET", "/projects/retail-bot/models/v1/evaluation/result"), 400, "InvalidArgument")
    assert_error(api.call("GET", "/projects/retail-bot/models/nope"), 404, "NotFound")


# ---------------------------------------------------------------------------- deployments, gate, audit, events


def test_deploy_predict_swap_delete(server, api, retail, webhook):
    assert api.run("PUT", "/projects/retail-bot/deployments/production", {"trainedModelLabel": "v1"})["status"] == "succeeded"
    dep = api.call("GET", "/projects/retail-bot/deployments/production").json()
    v1 = api.call("GET", "/projects/retail-bot/models/v1").json()
    assert dep["modelId"] == v1["modelId"] and dep["deploymentName"] == "production"
    r = predict(server.base, "where is my order 20261119-0042?", "retail-bot", "production")
    assert r.status_code == 200 and r.headers["x-model-version"] == v1["modelVersion"]
    # an authoring key may also predict
    assert predict(server.base, "hi", "retail-bot", "production", key=AUTHOR_KEY).status_code == 200
    assert_error(api.call("PUT", "/projects/retail-bot/deployments/staging", {"trainedModelLabel": "nope"}),
                 404, "NotFound")
    assert_error(api.call("PUT", "/projects/retail-bot/deployments/staging", {}), 400, "InvalidArgument",
                 "trainedModelLabel")
    assert api.run("PUT", "/projects/retail-bot/deployments/staging", {"trainedModelLabel": "v1"})["status"] == "succeeded"
    swap = {"firstDeploymentName": "production", "secondDeploymentName": "staging"}
    r = api.call("POST", "/projects/retail-bot/deployments/:swap", swap)
    assert "/deployments/swap/jobs/" in r.headers["operation-location"]
    assert api.wait(r)["status"] == "succeeded"
    assert_error(api.call("POST", "/projects/retail-bot/deployments/:swap",
                          {"firstDeploymentName": "production", "secondDeploymentName": "canary"}), 404, "NotFound")
    r = api.call("DELETE", "/projects/retail-bot/deployments/staging")
    assert "/deployments/staging/jobs/" in r.headers["operation-location"]
    assert api.wait(r)["status"] == "succeeded"
    assert_error(api.call("GET", "/projects/retail-bot/deployments/staging"), 404, "NotFound")
    assert_error(predict(server.base, "hi", "retail-bot", "staging"), 404, "NotFound")
    names = [d["deploymentName"] for d in api.call("GET", "/projects/retail-bot/deployments").json()["value"]]
    assert names == ["production"]
    # events: signed CloudEvents 1.0, delivered despite the first two failed attempts
    events = webhook.wait_for(lambda e: e["type"] == "IntentService.Deployment.Deleted")
    assert webhook.attempts >= len(webhook.requests) + 2
    types = [e["type"] for e in webhook.events()]
    for t in ("IntentService.Training.Succeeded", "IntentService.Deployment.Deployed",
              "IntentService.Deployment.Swapped", "IntentService.Deployment.Deleted"):
        assert t in types, types
    for headers, body in webhook.requests:
        h = {k.lower(): v for k, v in headers.items()}
        assert h["content-type"].startswith("application/cloudevents+json")
        assert verify_signature(SECRET, headers, body)
        assert not verify_signature("other-secret", headers, body)
    e = events[0]
    assert e["specversion"] == "1.0" and e["source"].endswith("/projects/retail-bot")
    assert e["subject"] == "deployments/staging" and e["data"]["from"]["trainedModelLabel"] == "v1"
    assert {"id", "time", "datacontenttype"} <= set(e)


def test_promotion_gate_refuses_then_force_and_audit(api, retail, webhook):
    assert api.run("PUT", "/projects/retail-bot/deployments/production", {"trainedModelLabel": "v1"})["status"] == "succeeded"
    # a worse model: the same frozen Test utterances, 3 training utterances per intent
    project = load_retail_project()
    bad = copy.deepcopy(project)
    kept, count = [], {}
    for u in bad["assets"]["utterances"]:
        if u["dataset"] == "Test" or count.get(u["intent"], 0) < 3:
            kept.append(u)
            if u["dataset"] != "Test":
                count[u["intent"]] = count.get(u["intent"], 0) + 1
    bad["assets"]["utterances"] = kept
    assert api.run("POST", "/projects/retail-bot/:import", bad)["status"] == "succeeded"
    assert api.run("POST", "/projects/retail-bot/:train", {"modelLabel": "bad", "trainingMode": "standard",
                                                            "evaluationOptions": {"kind": "manual"}})["status"] == "succeeded"
    assert api.run("POST", "/projects/retail-bot/:import", project)["status"] == "succeeded"
    r = api.call("PUT", "/projects/retail-bot/deployments/production", {"trainedModelLabel": "bad"})
    err = assert_error(r, 409, "Conflict", "production")
    codes = {d["code"] for d in err["details"]}
    assert codes & {"AccuracyDrop", "IntentF1Drop"}, err
    assert "points" in err["message"]
    assert api.call("GET", "/projects/retail-bot/deployments/production").json()["trainedModelLabel"] == "v1"
    # the same model through staging + swap is gated too
    assert api.run("PUT", "/projects/retail-bot/deployments/staging", {"trainedModelLabel": "bad"})["status"] == "succeeded"
    assert_error(api.call("POST", "/projects/retail-bot/deployments/:swap",
                          {"firstDeploymentName": "staging", "secondDeploymentName": "production"}), 409, "Conflict")
    # forced: deployed, and the audit log says so
    job = api.run("PUT", "/projects/retail-bot/deployments/production",
                  {"trainedModelLabel": "bad", "force": True, "reason": "incident 42: test override"})
    assert job["status"] == "succeeded"
    assert api.call("GET", "/projects/retail-bot/deployments/production").json()["trainedModelLabel"] == "bad"
    audit = api.call("GET", "/projects/retail-bot/audit").json()["value"]
    refused = [e for e in audit if e["outcome"] == "refused"]
    assert len(refused) == 2 and refused[0]["action"] == "deploy" and refused[1]["action"] == "swap"
    assert refused[0]["gate"]["verdict"] == "refused" and refused[0]["who"] == "key:admin"
    assert refused[0]["gate"]["figures"]["productionAccuracy"] > refused[0]["gate"]["figures"]["candidateAccuracy"]
    forced = audit[-1]
    assert forced["action"] == "deploy" and forced["forced"] is True and forced["gate"]["verdict"] == "forced"
    assert forced["from"]["trainedModelLabel"] == "v1" and forced["to"]["trainedModelLabel"] == "bad"
    assert forced["reason"] == "incident 42: test override"
    # back to v1: it served production before, so the gate lets the rollback through
    job = api.run("PUT", "/projects/retail-bot/deployments/production", {"trainedModelLabel": "v1"})
    assert job["status"] == "succeeded"
    assert api.call("GET", "/projects/retail-bot/audit").json()["value"][-1]["gate"]["verdict"] == "rollback"
    # delete the bad model (it is still deployed to staging: that deployment keeps serving its content)
    assert api.call("DELETE", "/projects/retail-bot/models/bad").status_code == 204
    assert_error(api.call("GET", "/projects/retail-bot/models/bad"), 404)
    assert predict(api.base, "hi", "retail-bot", "staging").status_code == 200
    actions = [e["action"] for e in api.call("GET", "/projects/retail-bot/audit").json()["value"]]
    assert {"import", "train", "deploy", "swap", "deleteDeployment", "deleteModel"} <= set(actions)


def test_global_endpoints(api):
    langs = api.call("GET", "/projects/global/languages").json()["value"]
    assert {"ko", "en"} <= {x["languageCode"] for x in langs}
    versions = api.call("GET", "/projects/global/training-config-versions").json()["value"]
    assert versions and "trainingConfigVersion" in versions[0] and "modelExpirationDate" in versions[0]


def test_bootstrap_command_imports_trains_and_deploys(server, api):
    """What make demo / make run call at start (python -m intent_service.authoring.cli bootstrap)."""
    from intent_service.authoring.cli import bootstrap

    lines = []
    dep = bootstrap(server.base, AUTHOR_KEY, project="boot", label="b1", log=lines.append)
    assert dep["deploymentName"] == "production" and dep["trainedModelLabel"] == "b1"
    assert any("evaluation on the Test utterances" in line for line in lines)
    r = predict(server.base, "where is my order 20261119-0042?", "boot", "production")
    assert r.status_code == 200 and r.json()["result"]["prediction"]["topIntent"] == "OrderStatus"
    again = bootstrap(server.base, AUTHOR_KEY, project="boot", label="b2", if_missing=True, log=lines.append)
    assert again["trainedModelLabel"] == "b1" and "nothing to do" in lines[-1]
