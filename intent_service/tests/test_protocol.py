"""Protocol tests against a real uvicorn process (retail model, key configured)."""
import json

import requests

KEY = {"Ocp-Apim-Subscription-Key": "test-key-123"}


def post(server, api_path, body, headers=None, raw=None, path=None):
    h = dict(KEY)
    h.update(headers or {})
    data = raw if raw is not None else json.dumps(body, ensure_ascii=False).encode("utf-8")
    h.setdefault("Content-Type", "application/json")
    return requests.post(server.url(path or api_path), data=data, headers=h, timeout=5)


def assert_clu_error(resp, status, code=None):
    assert resp.status_code == status, resp.text
    err = resp.json()["error"]
    assert isinstance(err["message"], str) and err["message"]
    if code:
        assert err["code"] == code
    assert "Traceback" not in resp.text
    return err


def test_health_and_model_info(server):
    assert requests.get(server.url("/health/live"), timeout=2).json() == {"status": "alive"}
    r = requests.get(server.url("/health/ready"), timeout=2)
    assert r.status_code == 200 and r.json()["status"] == "ready"
    info = requests.get(server.url("/model"), timeout=2).json()
    assert info["version"].startswith("retail-test-")
    assert len(info["data_sha256"]) == 64 and info["trained_at"].endswith("Z")
    assert set(info["intents"]) == {"Greeting", "Help", "OrderStatus", "ProductSearch",
                                    "HumanHandoff", "ThanksGoodbye", "None"}
    assert set(info["entityCategories"]) == {"OrderNumber", "PhoneNumber", "Date",
                                             "ProductCategory", "StoreName"}


def test_prediction_shape_sorting_and_headers(server, api_path, clu):
    r = post(server, api_path, clu("where is my order 20261119-0042?"))
    assert r.status_code == 200
    body = r.json()
    assert body["kind"] == "ConversationResult"
    assert body["result"]["query"] == "where is my order 20261119-0042?"
    pred = body["result"]["prediction"]
    assert pred["projectKind"] == "Conversation"
    assert pred["topIntent"] == "OrderStatus"
    scores = [i["confidenceScore"] for i in pred["intents"]]
    assert scores == sorted(scores, reverse=True)
    assert all(0.0 <= s <= 1.0 for s in scores)
    assert pred["intents"][0]["category"] == pred["topIntent"]
    assert {i["category"] for i in pred["intents"]} >= {"OrderStatus", "Greeting", "None"}
    assert pred["entities"] == [{
        "category": "OrderNumber", "text": "20261119-0042", "offset": 18, "length": 13,
        "confidenceScore": 1.0,
        "extraInformation": [{"extraInformationKind": "RegexKey", "key": "dated",
                              "regexPattern": pred["entities"][0]["extraInformation"][0]["regexPattern"]}]}]
    info = requests.get(server.url("/model"), timeout=2).json()
    assert r.headers["x-model-version"] == info["version"]
    assert r.headers["x-model-data-sha256"] == info["data_sha256"]


def test_intents_in_both_languages(server, api_path, clu):
    cases = {
        "안녕하세요 반가워요": "Greeting",
        "hello, anyone around?": "Greeting",
        "이 챗봇 사용법 좀 알려주세요": "Help",
        "배송이 언제 도착하는지 알려줘": "OrderStatus",
        "do you have leather boots in size 260": "ProductSearch",
        "검정 운동화 있어요?": "ProductSearch",
        "상담원이랑 통화하고 싶어요": "HumanHandoff",
        "thank you, bye": "ThanksGoodbye",
    }
    for text, intent in cases.items():
        pred = post(server, api_path, clu(text)).json()["result"]["prediction"]
        assert pred["topIntent"] == intent, (text, pred["intents"][:3])


def test_out_of_scope_is_none(server, api_path, clu):
    for text in ["how do i bake sourdough bread", "주식 투자 어떻게 해", "who wrote hamlet"]:
        pred = post(server, api_path, clu(text)).json()["result"]["prediction"]
        assert pred["topIntent"] == "None", (text, pred["intents"][:3])
        assert pred["intents"][0]["category"] == "None"


def test_korean_entities_offsets_all_index_types(server, api_path, clu):
    text = "주문번호 20261119-0042 운동화 한빛몰에서 11월 19일에 샀어요 010-1234-5678"
    expected_cp = {"OrderNumber": (5, 13), "ProductCategory": (19, 3), "StoreName": (23, 3),
                   "Date": (29, 7), "PhoneNumber": (42, 13)}
    for sit in (None, "TextElement_V8", "Utf16CodeUnit"):
        ents = post(server, api_path, clu(text, sit)).json()["result"]["prediction"]["entities"]
        got = {e["category"]: (e["offset"], e["length"]) for e in ents}
        assert got == expected_cp, sit
        for e in ents:  # the reported span is the reported text
            assert text[e["offset"]:e["offset"] + e["length"]] == e["text"]
    ents = post(server, api_path, clu(text, "Utf8CodeUnit")).json()["result"]["prediction"]["entities"]
    raw = text.encode("utf-8")
    for e in ents:
        assert raw[e["offset"]:e["offset"] + e["length"]].decode("utf-8") == e["text"]
    product = next(e for e in ents if e["category"] == "ProductCategory")
    assert product["extraInformation"] == [{"extraInformationKind": "ListKey", "key": "shoes"}]
    store = next(e for e in ents if e["category"] == "StoreName")
    assert store["extraInformation"][0]["key"] == "hanbit-mall"


def test_grapheme_offsets_with_combining_sequences_and_emoji(server, api_path, clu):
    # "e" + combining acute is one text element; the emoji is 1 element, 2 UTF-16 units
    text = "cafe\u0301 \U0001F45F 주문번호 20261119-0042"

    def ent(sit):
        return post(server, api_path, clu(text, sit)).json()["result"]["prediction"]["entities"][0]

    assert (ent("TextElement_V8")["offset"], ent("TextElement_V8")["length"]) == (12, 13)
    assert ent("Utf16CodeUnit")["offset"] == 14
    assert ent("Utf8CodeUnit")["offset"] == len("cafe\u0301 \U0001F45F 주문번호 ".encode("utf-8"))
    assert ent(None)["text"] == "20261119-0042"


def test_list_entity_synonyms_and_case(server, api_path, clu):
    ents = post(server, api_path, clu("Any SNEAKERS or a Denim Jacket at Blue Harbor Outlet?")
                ).json()["result"]["prediction"]["entities"]
    got = [(e["category"], e["text"], e["extraInformation"][0]["key"]) for e in ents]
    assert got == [("ProductCategory", "SNEAKERS", "shoes"),
                   ("ProductCategory", "Denim Jacket", "jacket"),
                   ("StoreName", "Blue Harbor Outlet", "blue-harbor-outlet")]


def test_request_validation(server, api_path, clu):
    assert_clu_error(post(server, api_path, None, raw=b"{not json"), 400, "InvalidArgument")
    assert_clu_error(post(server, api_path, None, raw=b"\xff\xfe"), 400, "InvalidArgument")
    assert_clu_error(post(server, api_path, ["a list"]), 400, "InvalidArgument")
    body = clu("hi")
    del body["analysisInput"]["conversationItem"]["text"]
    assert "text" in assert_clu_error(post(server, api_path, body), 400, "InvalidArgument")["message"]
    assert_clu_error(post(server, api_path, {"kind": "Conversation"}), 400, "InvalidArgument")
    assert_clu_error(post(server, api_path, clu("hi", kind="ConversationResult")), 400)
    assert_clu_error(post(server, api_path, clu(42)), 400, "InvalidArgument")
    assert_clu_error(post(server, api_path, clu("   ")), 400, "InvalidArgument")
    err = assert_clu_error(post(server, api_path, clu("가" * 1001)), 400, "InvalidArgument")
    assert "1000" in err["message"]
    assert post(server, api_path, clu("가" * 1000)).status_code == 200
    assert_clu_error(post(server, api_path, clu("hi", "Utf32")), 400, "InvalidArgument")
    bad_version = "/language/:analyze-conversations?api-version=2021-01-01"
    assert_clu_error(post(server, api_path, clu("hi"), path=bad_version), 400, "InvalidArgument")
    assert_clu_error(post(server, api_path, clu("hi"), path="/language/:analyze-conversations"), 400)
    assert_clu_error(post(server, api_path, None, raw=b"{" + b" " * 70000 + b"}"), 413)


def test_key_check(server, api_path, clu):
    body = json.dumps(clu("hi")).encode()
    for headers in ({}, {"Ocp-Apim-Subscription-Key": "wrong"}):
        r = requests.post(server.url(api_path), data=body, headers=headers, timeout=5)
        assert_clu_error(r, 401)
    assert post(server, api_path, clu("hi")).status_code == 200
    # health probes need no key
    assert requests.get(server.url("/health/live"), timeout=2).status_code == 200


def test_unknown_path_and_method(server, api_path):
    assert_clu_error(requests.get(server.url("/nope"), timeout=2), 404, "NotFound")
    assert_clu_error(requests.get(server.url(api_path), headers=KEY, timeout=2), 405)


def test_request_id_echo(server, api_path, clu):
    r = post(server, api_path, clu("hi"), headers={"Apim-Request-Id": "abc-123"})
    assert r.headers["apim-request-id"] == "abc-123"
