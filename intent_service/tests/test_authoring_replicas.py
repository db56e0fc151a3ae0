"""Two replicas of the service on one Blob Storage account (Azurite) converge on the same deployments
within seconds of a change, whichever replica made it, without a restart; model content is
content-addressed and checked at every load."""
from __future__ import annotations

import hashlib
import time

import pytest

from intent_service.authoring.storage import AzureBlobStore

from .authoring_support import Authoring, AuthoringServer, azurite_blob_class, load_retail_project, predict


@pytest.fixture(scope="module")
def azurite(tmp_path_factory):
    svc = azurite_blob_class()(0, log_dir=tmp_path_factory.mktemp("azurite-logs"))
    svc.start()
    try:
        yield svc
    finally:
        svc.stop()


@pytest.fixture(scope="module")
def replicas(azurite):
    env = {"INTENT_STORE_CONTAINER": "replicas", "INTENT_SYNC_INTERVAL_SECONDS": "1",
           "INTENT_STALE_JOB_SECONDS": "8"}
    servers = [AuthoringServer(store=azurite.connection_string, env=env) for _ in range(2)]
    try:
        for s in servers:
            s.wait_ready(60)
        yield servers
    finally:
        for s in servers:
            s.stop()


def converge(server, deployment: str, version: str, timeout: float = 15.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        r = predict(server.base, "where is my order?", "retail-bot", deployment)
        if r.status_code == 200 and r.headers["x-model-version"] == version:
            return time.monotonic() - t0
        time.sleep(0.05)
    raise AssertionError(f"{server.base} did not serve {version} on {deployment} within {timeout}s: "
                         f"{r.status_code} {r.headers.get('x-model-version')}")


def test_two_replicas_converge(replicas, azurite):
    a, b = replicas
    api_a, api_b = Authoring(a.base), Authoring(b.base)
    assert api_a.run("POST", "/projects/retail-bot/:import", load_retail_project())["status"] == "succeeded"
    # a job accepted by A is visible from B (jobs live in the store)
    r = api_a.call("POST", "/projects/retail-bot/:train",
                   {"modelLabel": "v1", "trainingMode": "standard", "evaluationOptions": {"kind": "manual"}})
    loc_b = r.headers["operation-location"].replace(a.base, b.base)
    assert api_b.s.get(loc_b, timeout=5).json()["status"] in ("notStarted", "running", "succeeded")
    assert api_a.wait(r)["status"] == "succeeded"
    assert api_b.s.get(loc_b, timeout=5).json()["status"] == "succeeded"
    job = api_b.run("POST", "/projects/retail-bot/:train",
                    {"modelLabel": "v2", "trainingMode": "standard", "evaluationOptions": {"kind": "manual"}})
    assert job["status"] == "succeeded", (job, b.output()[-3000:])
    v1 = api_b.call("GET", "/projects/retail-bot/models/v1").json()
    v2 = api_a.call("GET", "/projects/retail-bot/models/v2").json()

    # deploy through A: B serves it within seconds
    assert api_a.run("PUT", "/projects/retail-bot/deployments/production", {"trainedModelLabel": "v1"})["status"] == "succeeded"
    assert converge(a, "production", v1["modelVersion"], 1.0) < 1.0  # A applied it before the job succeeded
    t_b = converge(b, "production", v1["modelVersion"])
    assert api_b.run("PUT", "/projects/retail-bot/deployments/staging", {"trainedModelLabel": "v2"})["status"] == "succeeded"
    t_a = converge(a, "staging", v2["modelVersion"])
    # swap through B: both replicas flip
    assert api_b.run("POST", "/projects/retail-bot/deployments/:swap",
                     {"firstDeploymentName": "production", "secondDeploymentName": "staging"})["status"] == "succeeded"
    t_swap = max(converge(a, "production", v2["modelVersion"]), converge(b, "production", v2["modelVersion"]))
    assert converge(a, "staging", v1["modelVersion"]) < 5 and converge(b, "staging", v1["modelVersion"]) < 5
    print(f"convergence: deploy A->B {t_b:.2f}s, deploy B->A {t_a:.2f}s, swap on both {t_swap:.2f}s")
    assert max(t_b, t_a, t_swap) < 5.0
    for s in (a, b):
        info = __import__("requests").get(s.url("/model"), timeout=5).json()
        assert {(d["deploymentName"], d["trainedModelLabel"]) for d in info["deployments"]} == \
            {("production", "v2"), ("staging", "v1")}
        assert info["modelsInMemory"] == 2

    # the store: content-addressed model files whose names are their SHA-256
    store = AzureBlobStore.from_connection_string(azurite.connection_string, "replicas", prefix="clu/")
    content = [b for b in store.list("content/sha256/")]
    assert {c.name for c in content} == {f"content/sha256/{v1['modelSha256']}.skops",
                                         f"content/sha256/{v2['modelSha256']}.skops"}
    for c in content:
        assert hashlib.sha256(store.read(c.name).data).hexdigest() == c.name.split("/")[-1][:-6]
    assert [b.name for b in store.list("deployments/")] == ["deployments/retail-bot.json"]

    # a tampered model file is refused at load (SHA-256 check): the deployment keeps its old model
    name = f"content/sha256/{v1['modelSha256']}.skops"
    original = store.read(name).data
    store.write(name, original[:-10] + b"0123456789")
    api_a.run("DELETE", "/projects/retail-bot/deployments/staging")
    time.sleep(2.5)  # both replicas dropped v1 (no deployment points at it any more)
    job = api_a.run("PUT", "/projects/retail-bot/deployments/canary", {"trainedModelLabel": "v1"})
    assert job["status"] == "failed" and job["errors"][0]["code"] == "InternalServerError"
    assert predict(a.base, "hi", "retail-bot", "canary").status_code == 404
    store.write(name, original)
    assert api_a.run("PUT", "/projects/retail-bot/deployments/canary", {"trainedModelLabel": "v1"})["status"] == "succeeded"
    converge(b, "canary", v1["modelVersion"])
    assert "ModelIntegrityError" in a.output()


def test_a_job_whose_replica_died_is_reported_failed(replicas):
    a, b = replicas
    api_a, api_b = Authoring(a.base), Authoring(b.base)
    r = api_a.call("POST", "/projects/retail-bot/:train", {"modelLabel": "orphan", "trainingMode": "standard"})
    assert r.status_code == 202, r.text
    loc_b = r.headers["operation-location"].replace(a.base, b.base)
    time.sleep(1.5)
    a.proc.kill()  # the replica running the job crashes (our own child, by PID)
    a.proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        job = api_b.s.get(loc_b, timeout=5).json()
        if job["status"] == "failed":
            break
        assert job["status"] in ("notStarted", "running"), job
        time.sleep(0.5)
    assert job["status"] == "failed" and "stopped" in job["errors"][0]["message"], job
    # B still serves, and can train
    assert predict(b.base, "hi", "retail-bot", "production").status_code == 200
