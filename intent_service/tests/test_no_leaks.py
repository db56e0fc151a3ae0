"""Health and error bodies never carry a URL, a SAS token, a credential or a file path.

Security review: ``GET /health/ready`` (no key) echoed the last model-load error, including the
full blob URL with its SAS query string. Bodies now give a reason code and the error's class;
the details go to the log with the query string removed.
"""
import time

import requests

from intent_service.tests.hostile import hostile_pickle

KEY = "test-key-123"


def bodies(srv, api_path, clu):
    """Every kind of response the service gives, as text (body and headers)."""
    out = {}
    for path in ("/health/live", "/health/ready", "/model", "/nope"):
        r = requests.get(srv.url(path), timeout=2)
        out[path] = (r.status_code, r.text + str(dict(r.headers)))
    for name, headers, path in (
            ("analyze", {"Ocp-Apim-Subscription-Key": KEY}, api_path),
            ("analyze-no-key", {}, api_path),
            ("analyze-bad-version", {"Ocp-Apim-Subscription-Key": KEY},
             "/language/:analyze-conversations?api-version=1999-01-01")):
        r = requests.post(srv.url(path), json=clu("where is my order"), headers=headers, timeout=2)
        out[name] = (r.status_code, r.text + str(dict(r.headers)))
    r = requests.post(srv.url(api_path), data=b"{not json", timeout=2,
                      headers={"Ocp-Apim-Subscription-Key": KEY, "Content-Type": "application/json"})
    out["analyze-bad-json"] = (r.status_code, r.text + str(dict(r.headers)))
    return out


def wait_for_failure(srv, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = requests.get(srv.url("/health/ready"), timeout=2)
        inner = r.json()["error"].get("innererror", {})
        if inner.get("code") == "model_load_failed":
            return r
        time.sleep(0.1)
    raise TimeoutError(srv.output())


def assert_clean(out, forbidden):
    for name, (status, text) in out.items():
        for word in forbidden:
            assert word not in text, (name, status, word, text)


def test_sas_url_never_appears_in_a_response(httpserver, start_server, api_path, clu):
    httpserver.expect_request("/models/secret-blob.skops").respond_with_data("expired", status=403)
    url = httpserver.url_for("/models/secret-blob.skops") + "?sv=2024-01-01&sr=b&sig=SECRET%2Bsig"
    srv = start_server(url, key=KEY, extra_env={"INTENT_MODEL_SHA256": "a" * 64})
    srv.wait_live()
    r = wait_for_failure(srv)
    assert r.status_code == 503 and r.headers["Retry-After"]
    assert r.json() == {"error": {"code": "ServiceUnavailable",
                                  "message": "The model is not loaded yet; retry later.",
                                  "innererror": {"code": "model_load_failed",
                                                 "errorClass": "ModelSourceError"}}}
    out = bodies(srv, api_path, clu)
    assert out["analyze"][0] == 503 and out["/model"][0] == 503 and out["/health/live"][0] == 200
    host_port = url.split("/")[2]
    assert_clean(out, ["SECRET", "sig=", "sv=", "secret-blob", host_port, "/models/", "http://",
                       "expired"])
    log = srv.output()
    assert "secret-blob.skops?<redacted>" in log and "403" in log  # the details are in the log
    assert "SECRET" not in log and "sig=" not in log


def test_local_path_never_appears_in_a_response(tmp_path, start_server, api_path, clu):
    private = tmp_path / "private-model-dir"
    private.mkdir()
    marker = tmp_path / "unpickled-marker"
    model = private / "retail.joblib"  # an old pickle, pointed at by mistake (or swapped in)
    model.write_bytes(hostile_pickle(marker))
    srv = start_server(str(model), key=KEY)
    srv.wait_live()
    r = wait_for_failure(srv)
    assert r.json()["error"]["innererror"] == {"code": "model_load_failed",
                                               "errorClass": "LegacyPickleModelError"}
    out = bodies(srv, api_path, clu)
    assert_clean(out, [str(private), "private-model-dir", "retail.joblib", str(tmp_path)])
    assert "private-model-dir" in srv.output() and "build-retail" in srv.output()
    assert not marker.exists()  # never unpickled


def test_loaded_model_info_shows_the_digest_not_the_path(server, retail_model_path, api_path,
                                                         clu):
    import hashlib

    info = requests.get(server.url("/model"), timeout=2).json()
    assert info["model_sha256"] == hashlib.sha256(retail_model_path.read_bytes()).hexdigest()
    assert info["model_sha256_pinned"] is False and info["source_kind"] == "file"
    out = bodies(server, api_path, clu)
    assert out["analyze"][0] == 200
    assert_clean(out, [str(retail_model_path.parent), retail_model_path.name])


def test_no_model_configured_says_so_without_details(start_server, api_path, clu):
    srv = start_server("")
    srv.wait_live()
    r = requests.get(srv.url("/health/ready"), timeout=2)
    assert r.status_code == 503
    assert r.json()["error"]["innererror"] == {"code": "model_not_configured"}
