"""The whole path through a real running gateway: NEAR API -> POST /events -> encrypted, signed push."""

from __future__ import annotations

from typing import Any

from tests.conftest import RunningGateway, row
from tests.fakepush import FakePushService


def subscribe(gw: RunningGateway, fake: FakePushService, account: str = "bob.near", sub: Any = None) -> Any:
    sub = sub or fake.subscribe()
    r = gw.post(
        "/subscriptions/create", {"accountId": account, "gateway": "https://near.social", "subscription": sub.as_json()}
    )
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
    # the fixture's gateway is near.social: the like opens the liked post's page there
    assert push.payload["url"] == (
        "https://near.social/mob.near/widget/MainPage.N.Post.Page?accountId=bob.near&blockHeight=129999000"
    )
    assert push.payload["tag"]
    assert push.headers["TTL"] == "2419200"  # the NEAR server's TTL
    assert push.headers["Urgency"] == "low"  # a like: a push service may hold it for a phone saving battery
    assert push.claims["aud"] == fake_push.url and push.claims["sub"] == "mailto:ops@gateway.test"


def test_create_twice_is_idempotent_and_refreshes_keys(gateway: RunningGateway, fake_push: FakePushService) -> None:
    sub = subscribe(gateway, fake_push)
    old_keys = sub.keys
    from tests.rfc8291 import BrowserKeys

    sub.keys = BrowserKeys.new()  # the browser re-subscribed with new keys on the same endpoint
    subscribe(gateway, fake_push, sub=sub)
    assert len(gateway.query("SELECT * FROM streams")) == 1
    gateway.ingest(row(1))
    [push] = fake_push.wait_count(sub, 1)
    assert push.payload is not None and push.payload["id"] == 1  # decrypted with the new keys
    assert fake_push.errors == []
    assert old_keys is not sub.keys


def test_one_endpoint_carries_two_accounts_and_delete_by_account(
    gateway: RunningGateway, fake_push: FakePushService
) -> None:
    sub = subscribe(gateway, fake_push, "bob.near")
    subscribe(gateway, fake_push, "carol.near", sub=sub)
    gateway.ingest([row(1, "bob.near"), row(2, "carol.near")])
    pushes = fake_push.wait_count(sub, 2)
    assert sorted(p.payload["receiver"] for p in pushes if p.payload) == ["bob.near", "carol.near"]

    r = gateway.post("/subscriptions/delete", {"endpoint": sub.endpoint, "accountId": "carol.near"})
    assert r.status_code == 204
    assert gateway.ingest(row(3, "carol.near")).json()["deliveries"] == 0
    assert gateway.ingest(row(4, "bob.near")).json()["deliveries"] == 1
    pushes = fake_push.wait_count(sub, 3)
    assert [p.payload["id"] for p in pushes if p.payload][-1] == 4


def test_delete_removes_every_stream_of_the_endpoint(gateway: RunningGateway, fake_push: FakePushService) -> None:
    sub = subscribe(gateway, fake_push, "bob.near")
    subscribe(gateway, fake_push, "carol.near", sub=sub)
    r = gateway.post("/subscriptions/delete", {"endpoint": sub.endpoint})
    assert r.status_code == 204 and r.content == b""
    assert gateway.query("SELECT * FROM streams") == []
    assert gateway.ingest([row(1, "bob.near"), row(2, "carol.near")]).json()["deliveries"] == 0
    again = gateway.post("/subscriptions/delete", {"endpoint": sub.endpoint})
    assert again.status_code == 400 and again.json()["code"] == "unknown_subscription"


def test_preference_block_mutes_that_type_only(gateway: RunningGateway, fake_push: FakePushService) -> None:
    sub = subscribe(gateway, fake_push)
    body = {"accountId": "bob.near", "endpoint": sub.endpoint, "dapp": "like", "block": True}
    assert gateway.post("/preferences/set", body).status_code == 201
    result = gateway.ingest([row(1, value_type="like"), row(2, value_type="comment")]).json()
    assert result["deliveries"] == 1 and result["skipped"] == {"blocked_by_preference": 1}
    [push] = fake_push.wait_count(sub, 1)
    assert push.payload is not None and push.payload["valueType"] == "comment"

    assert gateway.post("/preferences/set", {**body, "block": False}).status_code == 201
    assert gateway.ingest(row(3, value_type="like")).json()["deliveries"] == 1
    fake_push.wait_count(sub, 2)


def test_preference_for_unknown_or_foreign_endpoint_is_refused(
    gateway: RunningGateway, fake_push: FakePushService
) -> None:
    sub = subscribe(gateway, fake_push, "bob.near")
    foreign = {"accountId": "mallory.near", "endpoint": sub.endpoint, "dapp": "like", "block": True}
    r = gateway.post("/preferences/set", foreign)
    assert r.status_code == 400 and r.json()["code"] == "unknown_subscription"
    unknown = {**foreign, "accountId": "bob.near", "endpoint": fake_push.url + "/push/nope"}
    assert gateway.post("/preferences/set", unknown).status_code == 400
    assert gateway.query("SELECT * FROM preferences") == []


def test_value_type_filter_drops_types_outside_the_allow_list(start_gateway: Any, fake_push: FakePushService) -> None:
    gw = start_gateway(matching={"allowed_value_types": ["comment"]})
    sub = subscribe(gw, fake_push)
    result = gw.ingest([row(1, value_type="like"), row(2, value_type="comment")]).json()
    assert result["deliveries"] == 1 and result["skipped"] == {"type_not_allowed": 1}
    [push] = fake_push.wait_count(sub, 1)
    assert push.payload is not None and push.payload["valueType"] == "comment"


def test_duplicate_event_is_sent_once(gateway: RunningGateway, fake_push: FakePushService) -> None:
    sub = subscribe(gateway, fake_push)
    assert gateway.ingest(row(7)).json()["deliveries"] == 1
    fake_push.wait_count(sub, 1)
    again = gateway.ingest([row(7), row(7)]).json()
    assert again["deliveries"] == 0 and again["skipped"] == {"duplicate_event": 2}
    gateway.ingest(row(8))
    pushes = fake_push.wait_count(sub, 2)
    assert [p.payload["id"] for p in pushes if p.payload] == [7, 8]


def test_daily_cap_limits_pushes_per_endpoint(start_gateway: Any, fake_push: FakePushService) -> None:
    gw = start_gateway(matching={"max_per_endpoint_per_day": 2})
    sub = subscribe(gw, fake_push)
    other = subscribe(gw, fake_push, "carol.near")
    result = gw.ingest([row(i) for i in range(1, 5)] + [row(9, "carol.near")]).json()
    assert result["deliveries"] == 3 and result["skipped"] == {"daily_cap": 2}
    fake_push.wait_count(sub, 2)
    fake_push.wait_count(other, 1)
    # Yesterday's count does not hold today back: time is moved by editing the counter's row.
    with gw.db() as conn:
        conn.execute("UPDATE endpoint_daily SET day = '2000-01-01'")
    assert gw.ingest(row(5)).json()["deliveries"] == 1
    assert len(fake_push.wait_count(sub, 3)) == 3


def test_end_to_end_on_postgresql(start_gateway: Any, fake_push: FakePushService) -> None:
    import asyncio
    import uuid

    import asyncpg
    import pytest

    from tests.test_store import POSTGRES_URL, _postgres_reachable

    reason = asyncio.run(_postgres_reachable())
    if reason:
        pytest.skip(reason)
    schema = f"gw_e2e_{uuid.uuid4().hex[:12]}"
    try:
        gw = start_gateway(storage={"url": f"{POSTGRES_URL}?schema={schema}"})
        sub = subscribe(gw, fake_push, "bob.near")
        subscribe(gw, fake_push, "bob.near", sub=sub)  # idempotent
        assert gw.ingest([row(1), row(1), row(2, value_type="poke")]).json()["deliveries"] == 2
        pushes = fake_push.wait_count(sub, 2)
        assert sorted(p.payload["id"] for p in pushes if p.payload) == [1, 2]
        assert fake_push.wait_for(lambda: gw.http.get("/healthz").json().get("deliveries_pending") == 0, 5)
        assert gw.post("/subscriptions/delete", {"endpoint": sub.endpoint}).status_code == 204
        assert gw.http.get("/healthz").json()["streams"] == 0
        gw.stop()
    finally:

        async def drop() -> None:
            conn = await asyncpg.connect(POSTGRES_URL)
            await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await conn.close()

        asyncio.run(drop())


def test_a_mute_set_from_one_browser_silences_the_type_on_all_of_them_and_outlives_resubscribing(
    gateway: RunningGateway, fake_push: FakePushService
) -> None:
    """As the NEAR server keeps mutes: per (account, type), not per browser."""
    laptop, phone = subscribe(gateway, fake_push, "bob.near"), subscribe(gateway, fake_push, "bob.near")
    body = {"accountId": "bob.near", "endpoint": laptop.endpoint, "dapp": "like", "block": True}
    assert gateway.post("/preferences/set", body).status_code == 201
    gateway.ingest([row(1, value_type="like"), row(2, value_type="comment")])
    for browser in (laptop, phone):
        [push] = fake_push.wait_count(browser, 1)
        assert push.payload is not None and push.payload["valueType"] == "comment"

    # Notifications turned off and on again, in both browsers: the mute is still there.
    for browser in (laptop, phone):
        assert gateway.post("/subscriptions/delete", {"endpoint": browser.endpoint}).status_code == 204
    laptop, phone = subscribe(gateway, fake_push, "bob.near"), subscribe(gateway, fake_push, "bob.near")
    result = gateway.ingest([row(3, value_type="like"), row(4, value_type="comment")]).json()
    assert result["deliveries"] == 2 and result["skipped"] == {"blocked_by_preference": 2}
    for browser in (laptop, phone):
        [push] = fake_push.wait_count(browser, 1)
        assert push.payload is not None and push.payload["id"] == 4

    # Unmuted from either browser: for both again.
    assert gateway.post("/preferences/set", {**body, "endpoint": phone.endpoint, "block": False}).status_code == 201
    gateway.ingest(row(5, value_type="like"))
    for browser in (laptop, phone):
        assert fake_push.wait_count(browser, 2)[-1].payload["id"] == 5  # type: ignore[index]


def test_a_browser_mute_silences_that_browser_only(gateway: RunningGateway, fake_push: FakePushService) -> None:
    laptop, phone = subscribe(gateway, fake_push, "bob.near"), subscribe(gateway, fake_push, "bob.near")
    body = {"accountId": "bob.near", "endpoint": laptop.endpoint, "dapp": "like", "block": True}
    assert gateway.post("/preferences/browser", body).status_code == 201
    result = gateway.ingest(row(1, value_type="like")).json()
    assert result["deliveries"] == 1 and result["skipped"] == {"blocked_by_preference": 1}
    fake_push.wait_count(phone, 1)
    assert fake_push.for_sub(laptop) == []
    foreign = {**body, "accountId": "mallory.near"}
    r = gateway.post("/preferences/browser", foreign)
    assert r.status_code == 400 and r.json()["code"] == "unknown_subscription"


def test_ttl_and_urgency_per_type_from_the_config(start_gateway: Any, fake_push: FakePushService) -> None:
    gw = start_gateway(
        push={"types": {"comment": {"ttl": 3600, "urgency": "high"}, "devhub/mention": {"ttl": 60}}},
        matching={"max_per_endpoint_per_day": 0},
    )
    sub = subscribe(gw, fake_push)
    gw.ingest([row(1, value_type="comment"), row(2, value_type="devhub/mention"), row(3), row(4, value_type="poke")])
    pushes = {p.payload["valueType"]: p.headers for p in fake_push.wait_count(sub, 4) if p.payload}
    assert (pushes["comment"]["TTL"], pushes["comment"]["Urgency"]) == ("3600", "high")
    assert (pushes["devhub/mention"]["TTL"], pushes["devhub/mention"]["Urgency"]) == ("60", "normal")
    assert (pushes["like"]["TTL"], pushes["like"]["Urgency"]) == ("2419200", "low")  # built in for likes
    assert (pushes["poke"]["TTL"], pushes["poke"]["Urgency"]) == ("2419200", "normal")  # [push]'s
