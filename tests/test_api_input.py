"""Bad input gets a 4xx JSON error with a stable code, never a 500, and changes nothing."""

from __future__ import annotations

import base64
import copy
import json
import time
from typing import Any

import pytest

from tests.conftest import INGEST_TOKEN, RunningGateway, row
from tests.fakepush import FakePushService

GOOD_KEYS = {
    "p256dh": "BK6Yl1dbZTCCfVKeKTPDsUajF-kMc4eGaewNzvFspZPkoX2F__HHuSj1buJNg0Zq9JF8lTYkfHZH2lv8UDBqqLI",
    "auth": "_WaWEIbW1xnIE4LSaho9uw",
}
GOOD = {
    "accountId": "bob.near",
    "gateway": "https://near.social",
    "subscription": {
        "endpoint": "https://fcm.googleapis.com/fcm/send/abc:APA91b",
        "expirationTime": None,
        "keys": GOOD_KEYS,
    },
}
NOT_ON_CURVE = base64.urlsafe_b64encode(b"\x04" + b"\x01" * 64).rstrip(b"=").decode()


def with_(path: str, value: Any) -> dict[str, Any]:
    body = copy.deepcopy(GOOD)
    *parents, last = path.split(".")
    target: Any = body
    for p in parents:
        target = target[p]
    if value is KeyError:
        del target[last]
    else:
        target[last] = value
    return body


CREATE_CASES = [
    ("missing accountId", with_("accountId", KeyError), "missing_field"),
    ("missing subscription", with_("subscription", KeyError), "missing_field"),
    ("missing keys.auth", with_("subscription.keys.auth", KeyError), "missing_field"),
    ("accountId too short", with_("accountId", "a"), "invalid_account_id"),
    ("accountId too long", with_("accountId", "a" * 65), "invalid_account_id"),
    ("p256dh not base64", with_("subscription.keys.p256dh", "!!!"), "invalid_p256dh"),
    ("p256dh compressed point", with_("subscription.keys.p256dh", GOOD_KEYS["p256dh"][:44]), "invalid_p256dh"),
    ("p256dh not on the curve", with_("subscription.keys.p256dh", NOT_ON_CURVE), "invalid_p256dh"),
    ("auth 15 bytes", with_("subscription.keys.auth", "_WaWEIbW1xnIE4LSaho9"), "invalid_auth"),
    ("auth 32 bytes", with_("subscription.keys.auth", GOOD_KEYS["auth"] * 2), "invalid_auth"),
    (
        "metadata endpoint",
        with_("subscription.endpoint", "http://169.254.169.254/latest/meta-data"),
        "endpoint_not_allowed",
    ),
    ("foreign https endpoint", with_("subscription.endpoint", "https://evil.example/push"), "endpoint_not_allowed"),
    (
        "look-alike host",
        with_("subscription.endpoint", "https://fcm.googleapis.com.evil.example/x"),
        "endpoint_not_allowed",
    ),
    (
        "userinfo trick",
        with_("subscription.endpoint", "https://fcm.googleapis.com@evil.example/x"),
        "invalid_endpoint",  # no canonical form: userinfo is refused before the allow-list
    ),
    (
        "http to an allowed host",
        with_("subscription.endpoint", "http://fcm.googleapis.com/fcm/send/x"),
        "endpoint_not_allowed",
    ),
    (
        "endpoint too long",
        with_("subscription.endpoint", "https://fcm.googleapis.com/" + "a" * 3000),
        "invalid_endpoint",
    ),
    ("gateway not a URL", with_("gateway", "near.social"), "invalid_gateway"),
    ("accountId not a string", with_("accountId", 42), "invalid_field"),
    ("body is a list", [GOOD], "invalid_body"),
]


@pytest.mark.parametrize(("case", "body", "code"), CREATE_CASES, ids=[c[0] for c in CREATE_CASES])
def test_bad_create_body_is_refused_with_a_stable_code(
    gateway: RunningGateway, case: str, body: Any, code: str
) -> None:
    r = gateway.post("/subscriptions/create", body)
    assert r.status_code == 400, r.text
    err = r.json()
    assert err["code"] == code, err
    assert err["statusCode"] == 400 and err["error"] == "Bad Request" and err["message"]
    assert gateway.query("SELECT * FROM streams") == []


def test_missing_field_message_matches_the_near_server(gateway: RunningGateway) -> None:
    r = gateway.post("/subscriptions/create", with_("accountId", KeyError))
    assert r.json()["message"] == '"accountId" is required'


def test_good_body_is_accepted_after_bad_ones(gateway: RunningGateway) -> None:
    for _, body, _ in CREATE_CASES:
        gateway.post("/subscriptions/create", body)
    assert gateway.post("/subscriptions/create", GOOD).status_code == 201
    assert len(gateway.query("SELECT * FROM streams")) == 1
    assert gateway.http.get("/healthz").json()["streams"] == 1


def test_malformed_json_is_a_400(gateway: RunningGateway) -> None:
    for path in ("/subscriptions/create", "/subscriptions/delete", "/preferences/set"):
        r = gateway.http.post(path, content=b'{"accountId": "bob.near",', headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["code"] == "malformed_json", (path, r.text)


def test_body_over_the_limit_is_a_413(gateway: RunningGateway) -> None:
    huge = with_("gateway", "https://near.social/" + "a" * 20000)
    r = gateway.post("/subscriptions/create", huge)
    assert r.status_code == 413 and r.json()["code"] == "body_too_large"
    chunked = gateway.http.post(
        "/subscriptions/create",
        content=iter([b"{" + b" " * 9000, b" " * 9000 + b"}"]),
        headers={"Content-Type": "application/json"},
    )
    assert chunked.status_code == 413
    assert gateway.http.get("/healthz").status_code == 200


def test_bad_delete_and_preference_bodies(gateway: RunningGateway) -> None:
    r = gateway.post("/subscriptions/delete", {})
    assert r.status_code == 400 and r.json()["code"] == "missing_field"
    endpoint = "https://fcm.googleapis.com/fcm/send/x"
    body = {"accountId": "bob.near", "endpoint": endpoint, "dapp": "like", "block": "maybe"}
    r = gateway.post("/preferences/set", body)
    assert r.status_code == 400 and r.json()["code"] == "invalid_field"
    r = gateway.post("/preferences/set", {"accountId": "bob.near", "endpoint": "x", "dapp": "like", "block": True})
    assert r.status_code == 400 and r.json()["code"] == "invalid_endpoint"
    r = gateway.post("/preferences/set", {"accountId": "b", "endpoint": "x", "dapp": "like", "block": True})
    assert r.json()["code"] == "invalid_account_id"


def test_events_require_the_bearer_token(gateway: RunningGateway) -> None:
    assert gateway.post("/events", row(1)).status_code == 401
    r = gateway.post("/events", row(1), headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    assert gateway.query("SELECT * FROM events") == []


def test_events_are_disabled_without_a_token(start_gateway: Any) -> None:
    gw = start_gateway(ingest={"token": ""})
    r = gw.post("/events", row(1), headers={"Authorization": "Bearer anything"})
    assert r.status_code == 403 and r.json()["code"] == "ingest_disabled"


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"id": 1, "valueType": "like"}, "missing_field"),
        ([{"id": 2, "receiver": "bob.near"}], "missing_field"),
        (row(1, receiver="x"), "invalid_account_id"),
        ("not a row", "invalid_body"),
    ],
)
def test_bad_event_rows_are_refused_and_nothing_is_ingested(gateway: RunningGateway, body: Any, code: str) -> None:
    r = gateway.post("/events", body, headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
    assert r.status_code == 400 and r.json()["code"] == code, r.text
    assert gateway.query("SELECT * FROM events") == []


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_non_standard_json_numbers_are_refused(gateway: RunningGateway, constant: str) -> None:
    """Python's parser takes them; the service worker's JSON.parse would not read the pushed row."""
    body = json.dumps([row(1)])[:-2] + f', "score": {constant}}}]'
    r = gateway.http.post(
        "/events", content=body, headers={"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": "application/json"}
    )
    assert r.status_code == 400 and r.json()["code"] == "malformed_json", r.text
    assert gateway.query("SELECT * FROM events") == []


def test_bad_event_row_error_names_the_row(gateway: RunningGateway) -> None:
    r = gateway.post(
        "/events", [row(1), {"id": 2, "receiver": "bob.near"}], headers={"Authorization": f"Bearer {INGEST_TOKEN}"}
    )
    assert r.json()["message"] == 'rows[1]: "valueType" is required'


def test_too_many_rows_is_a_413(start_gateway: Any) -> None:
    gw = start_gateway(ingest={"token": INGEST_TOKEN, "max_batch": 3})
    r = gw.post("/events", [row(i) for i in range(4)], headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
    assert r.status_code == 413 and r.json()["code"] == "too_many_rows"


def test_cors_is_open_for_the_near_routes(gateway: RunningGateway) -> None:
    r = gateway.http.options(
        "/subscriptions/create",
        headers={
            "Origin": "https://near.social",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,x-requested-with",  # any header a client asks for
        },
    )
    # As the NEAR server (Express cors()) answers: 204, the asked headers allowed, any origin.
    assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "*" and r.content == b""
    assert r.headers["access-control-allow-headers"] == "content-type,x-requested-with"
    assert "DELETE" in r.headers["access-control-allow-methods"]
    r = gateway.post("/subscriptions/create", GOOD, headers={"Origin": "https://near.org"})
    assert r.headers["access-control-allow-origin"] == "*"
    for answer in (  # every answer, with an Origin or without, errors too
        gateway.post("/subscriptions/create", GOOD),
        gateway.post("/preferences/set", {"accountId": "x"}),
        gateway.http.get("/vapid-public-key"),
    ):
        assert answer.headers["access-control-allow-origin"] == "*", answer.status_code


def test_vapid_public_key_health_and_openapi(gateway: RunningGateway, fake_push: FakePushService) -> None:
    key = gateway.http.get("/vapid-public-key").json()["publicKey"]
    assert len(base64.urlsafe_b64decode(key + "==")) == 65
    health = gateway.http.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    spec = gateway.http.get("/openapi.json").json()
    for path in (
        "/subscriptions/create",
        "/subscriptions/delete",
        "/preferences/set",
        "/events",
        "/vapid-public-key",
        "/healthz",
    ):
        assert path in spec["paths"], path
    # The key we advertise is the key push services see.
    from tests.test_e2e import subscribe

    sub = subscribe(gateway, fake_push)
    gateway.ingest(row(1))
    [push] = fake_push.wait_count(sub, 1)
    assert push.claims["_k"] == key


def test_unknown_route_is_a_json_404(gateway: RunningGateway) -> None:
    r = gateway.http.post("/subscriptions/nope", json={})
    assert r.status_code in (404, 405) and r.json()["code"] in ("not_found", "method_not_allowed")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (json.dumps(row(7, blockHeight=2**63)).encode(), "invalid_number"),  # past the store's 64 bits
        (json.dumps(row(7, blockHeight=2**53)).encode(), "invalid_number"),  # past what JSON.parse reads exactly
        (json.dumps(row(7, extra=-(2**60))).encode(), "invalid_number"),
        (json.dumps(row(7)).encode()[:-1] + b', "x": 1e400}', "invalid_number"),  # parses to infinity
        (json.dumps(row(7, nested=json.loads("[" * 20 + "]" * 20))).encode(), "invalid_depth"),
        (json.dumps(row(7, message="m" * 5000)).encode(), "invalid_length"),
        (b"[" * 100_000, "malformed_json"),  # too deep for the parser itself: not a 500
    ],
    ids=["2^63", "2^53", "-2^60", "1e400", "depth 20", "5000 chars", "100k ["],
)
def test_events_a_browser_or_the_store_cannot_hold_get_a_400_and_store_nothing(
    gateway: RunningGateway, body: bytes, code: str
) -> None:
    headers = {"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": "application/json"}
    r = gateway.http.post("/events", content=body, headers=headers)
    assert r.status_code == 400 and r.json()["code"] == code, r.text
    assert gateway.query("SELECT count(*) FROM events")[0][0] == 0
    assert gateway.ingest(row(8, blockHeight=2**53 - 1)).status_code == 202  # the largest exact one is fine


def test_a_batch_with_poison_rows_is_answered_400_for_them_and_its_good_rows_are_delivered_once(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    from tests.test_e2e import subscribe

    gw = start_gateway(matching={"max_per_endpoint_per_day": 0})
    bob = subscribe(gw, fake_push, "bob.near")
    poison = {
        1: row(2, blockHeight=2**63),
        3: row(4, receiver="r" * 10_000 + ".near"),
        4: "DEEP",
        6: "not a row",
    }
    batch = [poison.get(i, row(i + 1)) for i in range(8)]
    deep = '{"id": 5, "receiver": "bob.near", "valueType": "like", "x": ' + "[" * 5000 + "]" * 5000 + "}"
    body = json.dumps(batch).replace('"DEEP"', deep).encode()
    headers = {"Authorization": f"Bearer {INGEST_TOKEN}", "Content-Type": "application/json"}
    for attempt in range(2):  # sending the same batch again is safe: each good row is ingested once
        r = gw.http.post("/events", content=body, headers=headers)
        assert r.status_code == 400, r.text
        answer = r.json()
        assert [(x["row"], x["code"]) for x in answer["rejected"]] == [
            (1, "invalid_number"),
            (3, "invalid_length"),
            (4, "invalid_depth"),
            (6, "invalid_body"),
        ]
        assert answer["code"] == "invalid_number" and answer["message"].startswith("rows[1]: ")
        assert answer["accepted"]["events"] == 4 and answer["accepted"]["newEvents"] == (4 if attempt == 0 else 0)
    fake_push.wait_count(bob, 4)
    time.sleep(0.5)
    assert sorted(r.payload["id"] for r in fake_push.for_sub(bob) if r.payload) == [1, 3, 6, 8]
