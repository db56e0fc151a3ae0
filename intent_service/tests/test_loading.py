"""Model loading from a file and from an HTTP URL; readiness before the model is loaded."""
import hashlib
import time

import pytest
import requests
from werkzeug.wrappers import Response

from intent_service.model import ModelLoadError, load_model


def test_load_from_file_and_url(retail_model_path, httpserver):
    blob = retail_model_path.read_bytes()
    from_file = load_model(str(retail_model_path))
    httpserver.expect_request("/models/retail.joblib").respond_with_data(
        blob, content_type="application/octet-stream")
    url = httpserver.url_for("/models/retail.joblib") + "?sv=2024-01-01&sig=secret"
    from_url = load_model(url, expected_sha256=hashlib.sha256(blob).hexdigest())
    assert from_url.version == from_file.version
    assert from_url.data_sha256 == from_file.data_sha256
    text = "주문번호 20261119-0042 어디쯤 왔나요"
    assert from_url.analyze(text) == from_file.analyze(text)


def test_load_errors(retail_model_path, httpserver, tmp_path):
    httpserver.expect_request("/missing").respond_with_data("nope", status=404)
    with pytest.raises(ModelLoadError, match="404"):
        load_model(httpserver.url_for("/missing"))
    with pytest.raises(ModelLoadError, match="not found"):
        load_model(str(tmp_path / "absent.joblib"))
    with pytest.raises(ModelLoadError, match="sha256"):
        load_model(str(retail_model_path), expected_sha256="0" * 64)
    junk = tmp_path / "junk.joblib"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelLoadError):
        load_model(str(junk))


def test_not_ready_until_slow_url_model_arrives(retail_model_path, httpserver, start_server,
                                                api_path, clu):
    blob = retail_model_path.read_bytes()

    def slow(request):
        time.sleep(3.0)  # a slow blob download
        return Response(blob, content_type="application/octet-stream")

    httpserver.expect_request("/slow.joblib").respond_with_handler(slow)
    srv = start_server(httpserver.url_for("/slow.joblib") + "?sig=s3cr3t")
    srv.wait_live()
    t_live = time.monotonic()
    r = requests.get(srv.url("/health/ready"), timeout=2)
    assert r.status_code == 503 and int(r.headers["Retry-After"]) > 0
    assert r.json()["error"]["code"] == "ServiceUnavailable"
    r = requests.post(srv.url(api_path), json=clu("hi"), timeout=2)
    assert r.status_code == 503 and "Retry-After" in r.headers
    assert requests.get(srv.url("/model"), timeout=2).status_code == 503
    srv.wait_ready(timeout=20)
    assert time.monotonic() - t_live > 1.0  # it really was waiting for the download
    r = requests.post(srv.url(api_path), json=clu("hi"), timeout=2)
    assert r.status_code == 200 and r.json()["result"]["prediction"]["topIntent"] == "Greeting"
    info = requests.get(srv.url("/model"), timeout=2).json()
    assert "s3cr3t" not in info["source"]  # SAS tokens never leak
    assert "s3cr3t" not in srv.output()
    assert "Uvicorn running" in srv.output() or "starting on" in srv.output()
