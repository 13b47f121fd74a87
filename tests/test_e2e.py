"""The whole path through a real running gateway: NEAR API -> POST /events -> encrypted, signed push."""

from __future__ import annotations

from typing import Any

from tests.conftest import RunningGateway, row
from tests.fakepush import FakePushService


def subscribe(gw: RunningGateway, fake: FakePushService, account: str = "bob.near", sub: Any = None) -> Any:
    sub = sub or fake.subscribe()
    r = gw.post("/subscriptions/create",
                {"accountId": account, "gateway": "https://near.social", "subscription": sub.as_json()})
    assert r.status_code == 201, r.text
    return sub


def test_fixture_create_body_then_event_delivers_every_row_field(
    gateway: RunningGateway, fake_push: FakePushService, create_body: dict[str, Any]
) -> None:
    sub = fake_push.subscribe()
    create_body["subscription"]["endpoint"] = sub.endpoint
    create_body["subscription"]["keys"] = sub.as_json()["keys"]
    r = gateway.post("/subscriptions/create", create_body)
    assert r.status_code == 201 and r.content == b""

    event = row(9001, receiver=create_body["accountId"])
    result = gateway.ingest(event).json()
    assert result["deliveries"] == 1

    [push] = fake_push.wait_count(sub, 1)
    assert fake_push.errors == []
    for key, value in event.items():
        assert push.payload is not None and push.payload[key] == value
    assert push.payload["title"] == "New like"
    assert push.payload["body"] == "alice.near liked your post"
    assert push.payload["url"] == "https://near.org/s/p?a=bob.near&b=129999000"
    assert push.payload["tag"]
    assert push.headers["TTL"] == "86400" and push.headers["Urgency"] == "normal"
    assert push.claims["aud"] == fake_push.url and push.claims["sub"] == "mailto:ops@gateway.test"
