"""Model loading from a file and from an HTTP URL; readiness before the model is loaded."""
import hashlib
import time

import requests
from werkzeug.wrappers import Response

from intent_service.model import load_model


def test_load_from_file_and_url(retail_model_path, httpserver):
    blob = retail_model_path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()
    from_file = load_model(str(retail_model_path))
    httpserver.expect_request("/models/retail.skops").respond_with_data(
        blob, content_type="application/octet-stream")
    url = httpserver.url_for("/models/retail.skops") + "?sv=2024-01-01&sig=secret"
    from_url = load_model(url, expected_sha256=digest)
    assert from_url.version == from_file.version
    assert from_url.data_sha256 == from_file.data_sha256
    assert from_url.file_sha256 == from_file.file_sha256 == digest
    text = "주문번호 20261119-0042 어디쯤 왔나요"
    assert from_url.analyze(text) == from_file.analyze(text)


def test_not_ready_until_slow_url_model_arrives(retail_model_path, httpserver, start_server,
                                                api_path, clu):
    blob = retail_model_path.read_bytes()
    digest = hashlib.sha256(blob).hexdigest()

    def slow(request):
        time.sleep(3.0)  # a slow blob download
        return Response(blob, content_type="application/octet-stream")

    httpserver.expect_request("/slow.skops").respond_with_handler(slow)
    srv = start_server(httpserver.url_for("/slow.skops") + "?sig=s3cr3t",
                       extra_env={"INTENT_MODEL_SHA256": digest})
    srv.wait_live()
    t_live = time.monotonic()
    r = requests.get(srv.url("/health/ready"), timeout=2)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
    assert r.json()["error"]["code"] == "ServiceUnavailable"
    assert r.json()["error"]["innererror"] == {"code": "model_not_loaded"}
    r = requests.post(srv.url(api_path), json=clu("hi"), timeout=2)
    assert r.status_code == 503 and "Retry-After" in r.headers
    assert requests.get(srv.url("/model"), timeout=2).status_code == 503
    srv.wait_ready(timeout=20)
    assert time.monotonic() - t_live > 1.0  # it really was waiting for the download
    r = requests.post(srv.url(api_path), json=clu("hi"), timeout=2)
    assert r.status_code == 200 and r.json()["result"]["prediction"]["topIntent"] == "Greeting"
    r = requests.get(srv.url("/model"), timeout=2)
    info = r.json()
    assert info["model_sha256"] == digest and info["model_sha256_pinned"] is True
    assert info["source_kind"] == "url" and "source" not in info
    assert "s3cr3t" not in r.text and "slow.skops" not in r.text  # neither the SAS nor the URL
    assert "s3cr3t" not in srv.output()
    assert "Uvicorn running" in srv.output() or "starting on" in srv.output()
