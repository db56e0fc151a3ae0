"""Model files cannot run code, and model URLs are fetched only under strict rules.

Security review: a model file is a pickle and the SHA-256 pin was optional, so whoever could swap
the blob ran code in the service. Now: skops files naming only allowed types, pickles refused
unread, URLs https-only (http to loopback for tests), no redirects, a size cap, a required pin.
"""
import hashlib
import io
import json
import zipfile

import joblib
import pytest
import requests
import skops.io as sio
from werkzeug.wrappers import Response

from intent_service.cli import main
from intent_service.model import (ALLOWED_TYPES, FORMAT, LegacyPickleModelError,
                                  ModelConfigError, ModelFormatError, ModelIntegrityError,
                                  ModelSourceError, ModelTooLargeError, check_url, load_model,
                                  redact_url, scrub_urls)
from intent_service.tests.hostile import MarkerOnBuild, hostile_pickle

HOSTILE_TYPE = "intent_service.tests.hostile.MarkerOnBuild"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def schema_of(data: bytes) -> dict:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return json.loads(zf.read("schema.json"))


def rewrite_schema(data: bytes, edit) -> bytes:
    """The same zip with ``edit(node)`` applied to every node of schema.json: a hand-tampered file."""
    def walk(o):
        if isinstance(o, dict):
            edit(o)
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    src, out = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
    with src, zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as dst:
        for info in src.infolist():
            body = src.read(info.filename)
            if info.filename == "schema.json":
                schema = json.loads(body)
                walk(schema)
                body = json.dumps(schema).encode("utf-8")
            dst.writestr(info.filename, body)
    return out.getvalue()


# --------------------------------------------------------------------------- the file format


def test_saved_model_is_a_skops_file_naming_only_allowed_types(retail_model_path, retail_model):
    data = retail_model_path.read_bytes()
    assert data[:4] == b"PK\x03\x04" and b"pickle" not in data[:64]
    assert retail_model_path.suffix == ".skops"
    names = set()

    def walk(o):
        if isinstance(o, dict):
            if "__class__" in o:
                names.add(f"{o['__module__']}.{o['__class__']}")
            for v in o.values():
                walk(v)
        elif isinstance(o, list):
            for v in o:
                walk(v)

    walk(schema_of(data))
    assert names <= ALLOWED_TYPES
    assert "intent_service.text.normalize_for_model" in names
    assert retail_model.file_sha256 == sha(data)
    assert schema_of(data)["content"]["format"]["content"] == json.dumps(FORMAT)


def test_tampered_file_is_refused_by_the_pin(retail_model_path, tmp_path):
    data = bytearray(retail_model_path.read_bytes())
    pin = sha(bytes(data))
    data[len(data) // 2] ^= 0x01
    tampered = tmp_path / "retail.skops"
    tampered.write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="sha256 mismatch"):
        load_model(str(tampered), expected_sha256=pin)
    assert load_model(str(retail_model_path), expected_sha256=pin.upper()).file_sha256 == pin


def test_tampered_schema_naming_a_code_path_is_refused(retail_model_path, tmp_path):
    """A swapped file that makes the preprocessor os.system: refused before anything is built."""
    def to_os_system(node):
        if node.get("__class__") == "normalize_for_model":
            node.update({"__class__": "system", "__module__": "os"})

    data = rewrite_schema(retail_model_path.read_bytes(), to_os_system)
    assert b'"__module__": "os"' in zipfile.ZipFile(io.BytesIO(data)).read("schema.json")
    bad = tmp_path / "swapped.skops"
    bad.write_bytes(data)
    with pytest.raises(ModelFormatError, match="os.system"):
        load_model(str(bad))


def test_file_with_a_hostile_class_is_refused_without_building_it(retail_model, tmp_path):
    marker = tmp_path / "built-marker"
    d = retail_model.to_dict()
    d["pipeline"] = MarkerOnBuild(marker)
    path = tmp_path / "hostile.skops"
    sio.dump(d, str(path))
    with pytest.raises(ModelFormatError, match=HOSTILE_TYPE):
        load_model(str(path))
    assert not marker.exists()
    # control: the file really is hostile; a loader that trusted the type would have run it
    sio.loads(path.read_bytes(), trusted=[HOSTILE_TYPE])
    assert marker.exists()


def test_types_skops_trusts_by_default_are_still_refused_unless_listed(retail_model, tmp_path):
    from sklearn.linear_model import LogisticRegression

    d = retail_model.to_dict()
    d["pipeline"] = LogisticRegression()
    path = tmp_path / "other-estimator.skops"
    sio.dump(d, str(path))
    assert sio.get_untrusted_types(file=str(path)) == []  # skops alone would load it
    with pytest.raises(ModelFormatError, match="LogisticRegression"):
        load_model(str(path))


@pytest.mark.parametrize("writer", ["pickle", "joblib"])
def test_pickle_and_joblib_files_are_refused_without_unpickling(writer, tmp_path, capsys):
    marker = tmp_path / "unpickled-marker"
    path = tmp_path / "retail.joblib"
    if writer == "pickle":
        path.write_bytes(hostile_pickle(marker))
    else:
        from intent_service.tests.hostile import MarkerOnUnpickle

        joblib.dump({"format": "intent_service/model@1", "pipeline": MarkerOnUnpickle(marker)},
                    str(path), compress=3)
    with pytest.raises(LegacyPickleModelError, match="build-retail"):
        load_model(str(path))
    renamed = tmp_path / "model.bin"  # the content is recognised, not just the suffix
    renamed.write_bytes(path.read_bytes())
    with pytest.raises(LegacyPickleModelError):
        load_model(str(renamed))
    capsys.readouterr()
    assert main(["evaluate", "--model", str(path), "--data", str(tmp_path)]) == 2
    assert "pickle" in capsys.readouterr().err
    assert not marker.exists()


def test_other_non_model_files_are_refused(tmp_path):
    junk = tmp_path / "junk.skops"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelFormatError, match="not a skops model file"):
        load_model(str(junk))
    z = tmp_path / "plain.skops"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("readme.txt", "hello")
    with pytest.raises(ModelFormatError, match="not a skops model file"):
        load_model(str(z))
    with pytest.raises(ModelSourceError, match="not found"):
        load_model(str(tmp_path / "absent.skops"))


def test_local_file_size_cap(retail_model_path):
    size = retail_model_path.stat().st_size
    assert load_model(str(retail_model_path), max_bytes=size).file_sha256
    with pytest.raises(ModelTooLargeError, match="INTENT_MODEL_MAX_BYTES"):
        load_model(str(retail_model_path), max_bytes=size - 1)


# --------------------------------------------------------------------------- URLs


def test_url_without_pin_is_refused_before_any_request(httpserver):
    httpserver.expect_request("/m.skops").respond_with_data(b"x")
    with pytest.raises(ModelConfigError, match="needs a SHA-256 pin"):
        load_model(httpserver.url_for("/m.skops") + "?sig=SECRET")
    assert httpserver.log == []
    with pytest.raises(ModelConfigError, match="64 hexadecimal"):
        load_model(httpserver.url_for("/m.skops"), expected_sha256="abc")
    assert main(["serve", "--model", httpserver.url_for("/m.skops")]) == 2  # exits before serving
    assert httpserver.log == []


def test_redirect_is_refused(retail_model_path, httpserver):
    blob = retail_model_path.read_bytes()
    httpserver.expect_request("/real.skops").respond_with_data(blob)
    httpserver.expect_request("/moved.skops").respond_with_response(
        Response(status=302, headers={"Location": httpserver.url_for("/real.skops")}))
    with pytest.raises(ModelSourceError, match="302.*redirects are not followed"):
        load_model(httpserver.url_for("/moved.skops") + "?sig=SECRET", expected_sha256=sha(blob))
    assert [req.path for req, _ in httpserver.log] == ["/moved.skops"]  # the target never fetched
    for status in (301, 307, 308):
        httpserver.clear()
        httpserver.expect_request("/moved.skops").respond_with_response(
            Response(status=status, headers={"Location": httpserver.url_for("/real.skops")}))
        with pytest.raises(ModelSourceError, match=str(status)):
            load_model(httpserver.url_for("/moved.skops"), expected_sha256=sha(blob))


def test_plain_http_only_to_loopback(monkeypatch):
    def no_network(*a, **k):
        raise AssertionError("a refused URL must not be fetched")

    monkeypatch.setattr(requests, "get", no_network)
    pin = "0" * 64
    for url in ("http://models.example.invalid/retail.skops?sig=SECRET",
                "http://10.1.2.3/retail.skops", "http://127.0.0.1.example.invalid/m.skops",
                "http://localhost.example.invalid/m.skops", "ftp://127.0.0.1/m.skops",
                "file:///etc/passwd", "https:///no-host"):
        with pytest.raises(ModelConfigError) as info:
            load_model(url, expected_sha256=pin)
        assert "SECRET" not in str(info.value)
    for url in ("http://127.0.0.1:5/m", "http://127.9.9.9/m", "http://localhost:80/m",
                "http://[::1]:8/m", "https://account.blob.core.windows.net/models/m.skops?sig=x"):
        check_url(url)  # allowed (nothing is fetched here)


def test_oversize_download_is_refused(httpserver):
    big = b"\0" * (2 * 1024 * 1024)

    def chunked(request):  # no Content-Length: the streaming count must stop it
        return Response((big[i:i + 65536] for i in range(0, len(big), 65536)),
                        content_type="application/octet-stream")

    httpserver.expect_request("/big.skops").respond_with_data(big)
    httpserver.expect_request("/big-chunked.skops").respond_with_handler(chunked)
    for path in ("/big.skops", "/big-chunked.skops"):
        with pytest.raises(ModelTooLargeError, match="INTENT_MODEL_MAX_BYTES"):
            load_model(httpserver.url_for(path), expected_sha256=sha(big), max_bytes=1024 * 1024)


def test_url_digest_mismatch_and_http_errors(retail_model_path, httpserver):
    blob = retail_model_path.read_bytes()
    httpserver.expect_request("/retail.skops").respond_with_data(blob)
    httpserver.expect_request("/missing").respond_with_data("nope", status=404)
    with pytest.raises(ModelIntegrityError):
        load_model(httpserver.url_for("/retail.skops"), expected_sha256="1" * 64)
    with pytest.raises(ModelSourceError, match="404"):
        load_model(httpserver.url_for("/missing") + "?sig=SECRET", expected_sha256=sha(blob))
    model = load_model(httpserver.url_for("/retail.skops"), expected_sha256=sha(blob))
    assert model.file_sha256 == sha(blob)


def test_url_errors_never_carry_the_query_string():
    url = "https://acct.blob.core.windows.net/models/retail.skops?sv=2024-01-01&sig=SECRET"
    assert redact_url(url) == "https://acct.blob.core.windows.net/models/retail.skops?<redacted>"
    assert "SECRET" not in redact_url("https://user:SECRET@host/m.skops#SECRET")
    msg = ("HTTPSConnectionPool(host='acct', port=443): Max retries exceeded with url: "
           "/models/retail.skops?sv=2024-01-01&sig=SECRET (Caused by ...)")
    assert "SECRET" not in scrub_urls(msg) and "/models/retail.skops?<redacted>" in scrub_urls(msg)
    # a real connection error (nothing listens on the port): the message is scrubbed
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ModelSourceError) as info:
        load_model(f"http://127.0.0.1:{port}/m.skops?sig=SECRET", expected_sha256="0" * 64,
                   timeout=(2, 2))
    assert "SECRET" not in str(info.value) and info.value.__cause__ is None
