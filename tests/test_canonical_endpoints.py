"""One canonical spelling of every push endpoint, computed at the boundary (shared/security-review
r06, r08, r15): the allow-list, the stored row, the pool, the VAPID aud and the metrics label agree."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.endpoints import (
    DEFAULT_ALLOWED_ENDPOINTS,
    InvalidEndpoint,
    canonical_endpoint,
    endpoint_hash,
    is_allowed,
    parse_prefix,
)
from tests.conftest import RunningGateway, row
from tests.fakepush import FakePushService

PREFIXES = tuple(parse_prefix(p) for p in DEFAULT_ALLOWED_ENDPOINTS)


@pytest.mark.parametrize(
    ("given", "canonical"),
    [
        ("https://FCM.GoogleAPIs.com/fcm/send/x", "https://fcm.googleapis.com/fcm/send/x"),
        ("HTTPS://fcm.googleapis.com:443/fcm/send/x", "https://fcm.googleapis.com/fcm/send/x"),
        ("https://fcm.googleapis.com", "https://fcm.googleapis.com/"),
        ("http://127.0.0.1:8080/p?a=1", "http://127.0.0.1:8080/p?a=1"),
        ("http://127.0.0.1:80/p", "http://127.0.0.1/p"),
        ("https://[::1]:443/x", "https://[::1]/x"),
        ("https://[::1]:8443/x", "https://[::1]:8443/x"),
        ("https://xn--bcher-kva.example/x", "https://xn--bcher-kva.example/x"),
    ],
)
def test_every_spelling_of_an_endpoint_has_one_canonical_form(given: str, canonical: str) -> None:
    assert canonical_endpoint(given) == canonical
    assert canonical_endpoint(canonical) == canonical  # idempotent


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://fcm.googleapis.com:0443/fcm/send/x",  # leading zeros: its own pool, its own aud
        "https://fcm.googleapis.com:000443/fcm/send/x",
        "https://fcm.googleapis.com:99999/x",
        "https://user:pw@fcm.googleapis.com/fcm/send/x",
        "https://fcm.googleapis.com/fcm/send/x\u00e9",  # non-ASCII: raw bytes on the wire
        "https://fcm.googleapis.com/fcm/send/\x01x",  # control characters
        "https://fcm.googleapis.com/fcm/send x",
        "https://fcm.googleapis.com/fcm\\send/x",
        "https://fcm.googleapis.com/fcm/send/../../admin",  # out of an allowed path prefix
        "https://fcm.googleapis.com/fcm/send/%2e%2e/admin",
        "https://fcm.googleapis.com/fcm/send/.%2E/admin",
        "https://fcm.googleapis.com/fcm/send/..%2fadmin",
        "https://fcm.googleapis.com/x#fragment",
        "https://a..b/x",
        "ftp://fcm.googleapis.com/x",
        "//fcm.googleapis.com/x",
        "https://" + "a" * 2100,
    ],
)
def test_endpoints_without_a_canonical_form_are_refused(endpoint: str) -> None:
    with pytest.raises(InvalidEndpoint):
        canonical_endpoint(endpoint)
    assert not is_allowed(endpoint, PREFIXES)


def test_path_prefixes_cannot_be_walked_out_of() -> None:
    prefixes = (parse_prefix("https://push.example.org/wpush/"),)
    assert is_allowed("https://push.example.org/wpush/v2/abc", prefixes)
    for escape in ("/wpush/../admin/x", "/wpush/%2e%2e/admin/x", "/wpush/..%2fadmin/x", "/admin/x"):
        assert not is_allowed(f"https://push.example.org{escape}", prefixes), escape


def create(gw: RunningGateway, endpoint: str, keys: dict[str, str], account: str = "bob.near") -> Any:
    subscription = {"endpoint": endpoint, "keys": keys}
    body = {"accountId": account, "gateway": "https://near.social", "subscription": subscription}
    return gw.post("/subscriptions/create", body)


def test_the_api_stores_the_canonical_form_and_finds_it_under_any_spelling(
    gateway: RunningGateway, fake_push: FakePushService
) -> None:
    sub = fake_push.subscribe()
    keys = sub.as_json()["keys"]
    shouted = sub.endpoint.replace("http://", "HTTP://")
    assert create(gateway, shouted, keys).status_code == 201
    assert create(gateway, sub.endpoint, keys).status_code == 201  # the same stream, refreshed
    [stored] = gateway.query("SELECT endpoint, endpoint_hash FROM streams")
    assert tuple(stored) == (sub.endpoint, endpoint_hash(sub.endpoint))
    r = gateway.post("/preferences/set", {"accountId": "bob.near", "endpoint": shouted, "dapp": "like", "block": True})
    assert r.status_code == 201
    assert gateway.post("/subscriptions/delete", {"endpoint": shouted}).status_code == 204
    assert gateway.query("SELECT * FROM streams") == []


@pytest.mark.parametrize(
    "bad",
    ["http://127.0.0.1:0{port}/push/x", "http://127.0.0.1:{port}/push/\u00e9", "http://127.0.0.1:{port}/push/../x"],
)
def test_the_api_refuses_endpoints_without_a_canonical_form(
    gateway: RunningGateway, fake_push: FakePushService, bad: str
) -> None:
    sub = fake_push.subscribe()
    r = create(gateway, bad.format(port=fake_push.port), sub.as_json()["keys"])
    assert r.status_code == 400 and r.json()["code"] == "invalid_endpoint", r.text
    r = gateway.post("/subscriptions/delete", {"endpoint": bad.format(port=fake_push.port)})
    assert r.status_code == 400 and r.json()["code"] == "invalid_endpoint"
    assert gateway.query("SELECT * FROM streams") == []


def test_a_stream_stored_in_another_spelling_is_sent_in_the_canonical_one(
    gateway: RunningGateway, fake_push: FakePushService
) -> None:
    sub = fake_push.subscribe()
    assert create(gateway, sub.endpoint, sub.as_json()["keys"]).status_code == 201
    shouted = sub.endpoint.replace("http://", "HTTP://")
    with gateway.db() as db:  # as an older gateway stored it
        db.execute("UPDATE streams SET endpoint = ?", (shouted,))
    gateway.ingest(row(1))
    (got,) = fake_push.wait_count(sub, 1)
    assert got.claims["aud"] == fake_push.url  # the aud of the canonical origin: not refused as a bad VAPID
    metrics = gateway.http.get("/metrics").text
    assert f'push_host="127.0.0.1:{fake_push.port}"' in metrics and "HTTP://" not in metrics


def test_a_stored_endpoint_with_no_canonical_form_is_dead_lettered_never_sent(
    gateway: RunningGateway, fake_push: FakePushService
) -> None:
    sub = fake_push.subscribe()
    assert create(gateway, sub.endpoint, sub.as_json()["keys"]).status_code == 201
    with gateway.db() as db:
        db.execute("UPDATE streams SET endpoint = ?", (sub.endpoint + "\u00e9",))
    gateway.ingest(row(1))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not gateway.query("SELECT 1 FROM deliveries WHERE status = 'dead'"):
        time.sleep(0.1)
    [(status, reason)] = [tuple(r) for r in gateway.query("SELECT status, reason FROM deliveries")]
    assert status == "dead" and reason.startswith("invalid endpoint")
    assert fake_push.received == []
