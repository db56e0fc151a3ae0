"""Acceptance: Microsoft's own SDK (azure-ai-language-conversations 1.1.0, ConversationAuthoringClient +
ConversationAnalysisClient) drives the model lifecycle against this service:
import -> train -> wait -> evaluation summary -> deploy to staging -> predict on staging -> swap with
production -> predict -> swap back (rollback).

Set AUTHORING_SDK_TRANSCRIPT=FILE to keep the transcript of what the SDK saw (README's session).
"""
from __future__ import annotations

import copy
import json
import os

import pytest
import requests

from .authoring_support import AUTHOR_KEY, PREDICT_KEY, AuthoringServer, load_retail_project

try:  # the acceptance client must be installed (intent_service/requirements-dev.txt): never skip silently
    import azure.ai.language.conversations  # noqa: F401
except ImportError as exc:  # pragma: no cover
    raise ImportError("azure-ai-language-conversations==1.1.0 is missing: "
                      "pip install -r intent_service/requirements-dev.txt") from exc

PROJECT = "retail-bot"

EXTRA_TRAIN = [  # v2's project file adds these training utterances
    ("could you check where my parcel is right now", "OrderStatus", "en"),
    ("has my package left the warehouse yet", "OrderStatus", "en"),
    ("택배 지금 어디쯤인지 확인해 주세요", "OrderStatus", "ko"),
    ("배송 출발했는지 알려주세요", "OrderStatus", "ko"),
    ("do you carry waterproof hiking boots", "ProductSearch", "en"),
    ("방수 등산화 있나요", "ProductSearch", "ko"),
]


@pytest.fixture(scope="module")
def server():
    srv = AuthoringServer()
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


class Transcript:
    def __init__(self):
        self.lines = []

    def __call__(self, call: str, result) -> None:
        text = result if isinstance(result, str) else json.dumps(result, ensure_ascii=False)
        self.lines.append(f">>> {call}\n{text}")
        print(self.lines[-1])

    def save(self):
        path = os.environ.get("AUTHORING_SDK_TRANSCRIPT")
        if path:
            with open(path, "w", encoding="utf-8") as fh:
                fh.write("\n".join(self.lines) + "\n")


def _job(result: dict) -> dict:
    keep = ("jobId", "status", "errors", "warnings", "result", "resultUrl")
    return {k: result[k] for k in keep if k in result and result[k] not in ([], None)}


def test_sdk_full_lifecycle(server):
    from azure.ai.language.conversations import ConversationAnalysisClient
    from azure.ai.language.conversations.authoring import ConversationAuthoringClient
    from azure.core.credentials import AzureKeyCredential
    from azure.core.exceptions import ClientAuthenticationError, ResourceNotFoundError

    log = Transcript()
    authoring = ConversationAuthoringClient(server.base, AzureKeyCredential(AUTHOR_KEY))
    analysis = ConversationAnalysisClient(server.base, AzureKeyCredential(PREDICT_KEY))

    def predict(deployment: str, text: str) -> dict:
        result = analysis.analyze_conversation(task={
            "kind": "Conversation",
            "analysisInput": {"conversationItem": {"id": "1", "participantId": "u1", "text": text}},
            "parameters": {"projectName": PROJECT, "deploymentName": deployment, "verbose": True}},
            raw_response_hook=lambda resp: seen.update(version=resp.http_response.headers.get("x-model-version")))
        pred = result["result"]["prediction"]
        return {"topIntent": pred["topIntent"], "confidence": pred["intents"][0]["confidenceScore"],
                "entities": [(e["category"], e["text"]) for e in pred["entities"]], "x-model-version": seen["version"]}

    seen = {}
    # a prediction key cannot author
    with pytest.raises(ClientAuthenticationError):
        ConversationAuthoringClient(server.base, AzureKeyCredential(PREDICT_KEY)).get_project(PROJECT)
    log("ConversationAuthoringClient(prediction key).get_project('retail-bot')", "ClientAuthenticationError (401)")

    # 1. import the retail project file (v1 data)
    project = load_retail_project()
    result = authoring.begin_import_project(PROJECT, project).result()
    log("begin_import_project('retail-bot', project.json).result()", _job(result))
    assert result["status"] == "succeeded"
    meta = authoring.get_project(PROJECT)
    log("get_project('retail-bot')", {k: meta[k] for k in ("projectName", "projectKind", "language", "multilingual")})

    # 2. train v1 (manual split: the Test utterances of the file), wait
    result = authoring.begin_train(PROJECT, {"modelLabel": "v1", "trainingMode": "standard",
                                             "evaluationOptions": {"kind": "manual"}}).result()
    log("begin_train('retail-bot', {modelLabel: v1, trainingMode: standard, evaluationOptions: manual}).result()",
        _job(result))
    assert result["status"] == "succeeded"
    assert result["result"]["trainingStatus"]["percentComplete"] == 100

    # 3. evaluation summary
    summary = authoring.get_model_evaluation_summary(PROJECT, "v1")
    ie = summary["intentsEvaluation"]
    log("get_model_evaluation_summary('retail-bot', 'v1')",
        {"intentsEvaluation": {"microF1": ie["microF1"], "macroF1": ie["macroF1"],
                               "intents": {k: {m: v[m] for m in ("precision", "recall", "f1", "truePositiveCount",
                                                                 "falsePositiveCount", "falseNegativeCount")}
                                           for k, v in ie["intents"].items()}},
         "entitiesEvaluation": {"microF1": summary["entitiesEvaluation"]["microF1"]},
         "evaluationOptions": summary["evaluationOptions"],
         "confusionMatrix['OrderStatus']": ie["confusionMatrix"]["OrderStatus"]})
    assert set(ie["intents"]) == {"Greeting", "Help", "HumanHandoff", "None", "OrderStatus", "ProductSearch",
                                  "ThanksGoodbye"}
    assert 0.5 < ie["microF1"] <= 1.0
    results = list(authoring.list_model_evaluation_results(PROJECT, "v1", string_index_type="Utf16CodeUnit"))
    test_count = sum(1 for u in project["assets"]["utterances"] if u["dataset"] == "Test")
    assert len(results) == test_count
    log("list_model_evaluation_results('retail-bot', 'v1')[0]", results[0])

    # 4. v1 goes to production (nothing there yet: the gate does not apply)
    result = authoring.begin_deploy_project(PROJECT, "production", {"trainedModelLabel": "v1"}).result()
    log("begin_deploy_project('retail-bot', 'production', {trainedModelLabel: v1}).result()", result)
    v1 = authoring.get_trained_model(PROJECT, "v1")

    # 5. v2: more training data, trained, deployed to staging
    project2 = copy.deepcopy(project)
    project2["assets"]["utterances"] += [{"text": t, "intent": i, "language": lang, "dataset": "Train",
                                          "entities": []} for t, i, lang in EXTRA_TRAIN]
    authoring.begin_import_project(PROJECT, project2).result()
    result = authoring.begin_train(PROJECT, {"modelLabel": "v2", "trainingMode": "standard",
                                             "evaluationOptions": {"kind": "manual"}}).result()
    log("begin_import_project(+6 utterances); begin_train({modelLabel: v2, ...}).result()", _job(result))
    v2 = authoring.get_trained_model(PROJECT, "v2")
    log("list_trained_models('retail-bot')",
        [{k: m[k] for k in ("label", "modelId", "lastTrainedDateTime", "modelTrainingConfigVersion")}
         for m in authoring.list_trained_models(PROJECT)])
    result = authoring.begin_deploy_project(PROJECT, "staging", {"trainedModelLabel": "v2"}).result()
    log("begin_deploy_project('retail-bot', 'staging', {trainedModelLabel: v2}).result()",
        {k: result[k] for k in ("deploymentName", "modelId", "lastDeployedDateTime")})
    assert result["modelId"] == v2["modelId"]

    # 6. predict on staging (v2) and production (v1)
    p = predict("staging", "택배 지금 어디쯤인지 확인해 주세요")
    log("analyze_conversation(deploymentName='staging', '택배 지금 어디쯤인지 확인해 주세요')", p)
    assert p["x-model-version"] == v2["modelVersion"] and p["topIntent"] == "OrderStatus"
    p = predict("production", "where is my order 20261119-0042?")
    log("analyze_conversation(deploymentName='production', 'where is my order 20261119-0042?')", p)
    assert p["x-model-version"] == v1["modelVersion"]
    assert p["topIntent"] == "OrderStatus" and ("OrderNumber", "20261119-0042") in p["entities"]

    # 7. swap staging <-> production (the gate compares v2 with v1 on the Test utterances)
    result = authoring.begin_swap_deployments(
        PROJECT, {"firstDeploymentName": "production", "secondDeploymentName": "staging"}).result()
    log("begin_swap_deployments('retail-bot', {production, staging}).result()", _job(result))
    assert result["status"] == "succeeded"
    deployments = {d["deploymentName"]: d["modelId"] for d in authoring.list_deployments(PROJECT)}
    log("list_deployments('retail-bot')", deployments)
    assert deployments == {"production": v2["modelId"], "staging": v1["modelId"]}
    p = predict("production", "where is my order 20261119-0042?")
    log("analyze_conversation(deploymentName='production', 'where is my order 20261119-0042?')", p)
    assert p["x-model-version"] == v2["modelVersion"]

    # 8. swap back: the rollback
    result = authoring.begin_swap_deployments(
        PROJECT, {"firstDeploymentName": "production", "secondDeploymentName": "staging"}).result()
    log("begin_swap_deployments('retail-bot', {production, staging}).result()   # rollback", _job(result))
    deployments = {d["deploymentName"]: d["modelId"] for d in authoring.list_deployments(PROJECT)}
    log("list_deployments('retail-bot')", deployments)
    assert deployments == {"production": v1["modelId"], "staging": v2["modelId"]}
    p = predict("production", "상담원 연결해 주세요")
    log("analyze_conversation(deploymentName='production', '상담원 연결해 주세요')", p)
    assert p["x-model-version"] == v1["modelVersion"]

    # unknown deployment: 404 in CLU's shape, through the SDK
    with pytest.raises(ResourceNotFoundError) as exc:
        predict("canary", "hello")
    log("analyze_conversation(deploymentName='canary', 'hello')",
        f"ResourceNotFoundError: {exc.value.error.code}: {exc.value.error.message}")

    # the audit log as the admin tooling lists it (extension of the protocol, plain HTTP)
    audit = requests.get(f"{server.base}/language/authoring/analyze-conversations/projects/{PROJECT}/audit",
                         params={"api-version": "2023-04-01"}, headers={"Ocp-Apim-Subscription-Key": AUTHOR_KEY},
                         timeout=10).json()["value"]
    rows = [{"time": e["time"], "who": e["who"], "action": e["action"], "deployment": e.get("deploymentName"),
             "outcome": e["outcome"], "gate": (e.get("gate") or {}).get("verdict")} for e in audit]
    log("GET /projects/retail-bot/audit", "\n".join(json.dumps(r, ensure_ascii=False) for r in rows))
    actions = [(e["action"], e.get("deploymentName"), e["outcome"]) for e in audit]
    assert actions[-3:] == [("deploy", "staging", "succeeded"), ("swap", "production<->staging", "succeeded"),
                            ("swap", "production<->staging", "succeeded")]
    assert audit[-1]["gate"]["verdict"] == "rollback" and audit[-1]["who"] == "key:admin"
    log.save()
