"""``max_streams_per_account`` never locks an account's owner out (security review r17).

Registration is open (anyone may register a stream for any account, as on the NEAR reference server),
so a hard cap let 50 junk streams for bob.near answer 403 to bob's own browser. At the cap the
account's least recently refreshed stream gives way instead; ``max_accounts_per_endpoint`` stays hard.
The store tests run on SQLite and PostgreSQL (the ``make_store`` fixture of tests/test_store.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import anyio
import httpx
import pytest

from gateway.endpoints import endpoint_hash
from gateway.exceptions import StreamCapReached
from gateway.matcher import MatchPolicy
from gateway.store.base import Store
from tests.conftest import Clock, RunningGateway, row
from tests.fakepush import FakePushService
from tests.rfc8291 import BrowserKeys
from tests.test_store import (  # noqa: F401  (fixtures: both stores on one database, a clock moved by hand)
    AUTH,
    P256DH,
    anyio_backend,
    clock,
    event,
    make_store,
    store,
)

JUNK = "https://fcm.googleapis.com/fcm/send/junk"
REAL = "https://fcm.googleapis.com/fcm/send/bobs-own-browser"


async def endpoints_of(store: Store, account: str) -> set[str]:  # noqa: F811
    return {i.stream.endpoint for i in await store.list_streams(account_id=account, limit=1000)}


# --- the stores ----------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_junk_streams_at_the_cap_give_way_to_the_owner(store: Store, clock: Clock) -> None:  # noqa: F811
    for n in range(50):
        assert await store.upsert_stream(
            "bob.near", "https://near.social", f"{JUNK}{n}", P256DH, AUTH, max_per_account=50
        )
        clock.now += 1
    await store.set_preference("bob.near", f"{JUNK}0", "like", True)
    await store.ingest([event(1, value_type="comment")], MatchPolicy())  # one pending delivery per junk stream

    assert await store.upsert_stream("bob.near", "https://near.social", REAL, P256DH, AUTH, max_per_account=50)

    kept = await endpoints_of(store, "bob.near")
    assert REAL in kept and f"{JUNK}0" not in kept  # the least recently refreshed one gave way
    assert kept == {REAL} | {f"{JUNK}{n}" for n in range(1, 50)}
    counts = await store.counts()
    assert counts["streams"] == 50  # still at the cap
    assert counts["deliveries_cancelled"] == 1 and counts["deliveries_pending"] == 49  # as delete_streams does
    assert await store.set_preference("bob.near", f"{JUNK}0", "like", False) is False  # its mutes went with it
    assert await store.counts() == counts

    clock.now += 1
    assert await store.upsert_stream(
        "bob.near", "https://near.social", f"{JUNK}-again", P256DH, AUTH, max_per_account=50
    )
    kept = await endpoints_of(store, "bob.near")
    assert f"{JUNK}1" not in kept and REAL in kept and len(kept) == 50  # the next oldest, never the newer owner


@pytest.mark.anyio
async def test_refreshing_never_evicts_and_protects_the_stream(store: Store, clock: Clock) -> None:  # noqa: F811
    for name in "abc":
        await store.upsert_stream("bob.near", "https://near.org", f"{JUNK}-{name}", P256DH, AUTH, max_per_account=3)
        clock.now += 1
    before = {i.stream.endpoint: i.updated_at for i in await store.list_streams(account_id="bob.near")}
    for name in "cba":  # at the cap, each refresh is no new stream: nothing is deleted
        is_new = await store.upsert_stream(
            "bob.near", "https://near.social", f"{JUNK}-{name}", P256DH, AUTH, max_per_account=3
        )
        assert is_new is False
        clock.now += 1
    after = {
        i.stream.endpoint: (i.stream.gateway, i.updated_at) for i in await store.list_streams(account_id="bob.near")
    }
    assert set(after) == set(before)
    assert all(gw == "https://near.social" and after[e][1] > before[e] for e, (gw, _) in after.items())

    # "a" was created first but refreshed last: "c", the newest stream but refreshed least recently, goes.
    assert await store.upsert_stream("bob.near", "https://near.org", f"{JUNK}-d", P256DH, AUTH, max_per_account=3)
    assert await endpoints_of(store, "bob.near") == {f"{JUNK}-a", f"{JUNK}-b", f"{JUNK}-d"}
    assert (await store.counts())["streams"] == 3


@pytest.mark.anyio
async def test_other_accounts_never_give_way(store: Store, clock: Clock) -> None:  # noqa: F811
    await store.upsert_stream("carol.near", "https://near.org", f"{JUNK}-carol", P256DH, AUTH, max_per_account=2)
    clock.now += 1
    for n in range(5):
        await store.upsert_stream("bob.near", "https://near.org", f"{JUNK}{n}", P256DH, AUTH, max_per_account=2)
        clock.now += 1
    assert await endpoints_of(store, "carol.near") == {f"{JUNK}-carol"}
    assert await endpoints_of(store, "bob.near") == {f"{JUNK}3", f"{JUNK}4"}


@pytest.mark.anyio
async def test_a_lowered_cap_brings_the_account_down_to_it(store: Store, clock: Clock) -> None:  # noqa: F811
    for n in range(5):  # no cap then
        await store.upsert_stream("bob.near", "https://near.org", f"{JUNK}{n}", P256DH, AUTH)
        clock.now += 1
    assert await store.upsert_stream("bob.near", "https://near.org", REAL, P256DH, AUTH, max_per_account=3)
    assert await endpoints_of(store, "bob.near") == {f"{JUNK}3", f"{JUNK}4", REAL}


@pytest.mark.anyio
async def test_accounts_per_endpoint_stay_a_hard_cap_and_delete_nothing(store: Store, clock: Clock) -> None:  # noqa: F811
    for account in ("a0.near", "a1.near"):
        await store.upsert_stream(account, "https://near.org", REAL, P256DH, AUTH, max_per_endpoint=2)
    for n in range(2):  # a2 is at its own account cap too: the refusal must not evict its oldest
        await store.upsert_stream("a2.near", "https://near.org", f"{JUNK}{n}", P256DH, AUTH, max_per_account=2)
        clock.now += 1
    with pytest.raises(StreamCapReached) as caught:
        await store.upsert_stream(
            "a2.near", "https://near.org", REAL, P256DH, AUTH, max_per_account=2, max_per_endpoint=2
        )
    assert (caught.value.scope, caught.value.cap) == ("endpoint", 2)
    assert await endpoints_of(store, "a2.near") == {f"{JUNK}0", f"{JUNK}1"}
    assert {i.stream.account_id for i in await store.list_streams(endpoint_hash=endpoint_hash(REAL))} == {
        "a0.near",
        "a1.near",
    }
    # refreshing an account already on the full endpoint is not capped
    assert await store.upsert_stream("a1.near", "https://near.social", REAL, P256DH, AUTH, max_per_endpoint=2) is False


@pytest.mark.anyio
async def test_concurrent_creates_from_four_processes_never_overshoot(make_store: Callable[[], Store]) -> None:  # noqa: F811
    stores = [make_store() for _ in range(4)]
    for s in stores:
        await s.open()
    results: list[bool] = []

    async def create(s: Store, n: int) -> None:
        results.append(
            await s.upsert_stream("bob.near", "https://near.org", f"{JUNK}{n}", P256DH, AUTH, max_per_account=3)
        )

    async def create_same(s: Store) -> None:  # one stream created by four processes at once: one new
        results.append(await s.upsert_stream("carol.near", "https://near.org", REAL, P256DH, AUTH, max_per_account=1))

    try:
        async with anyio.create_task_group() as tg:
            for n in range(12):
                tg.start_soon(create, stores[n % 4], n)
            for s in stores:
                tg.start_soon(create_same, s)
        assert sorted(results) == [False] * 3 + [True] * 13  # every create answered, none refused
        assert len(await endpoints_of(stores[0], "bob.near")) == 3  # exactly the cap, never more
        assert await endpoints_of(stores[0], "carol.near") == {REAL}
        assert (await stores[0].counts())["streams"] == 4
    finally:
        for s in stores:
            await s.close()


# --- through a running gateway -----------------------------------------------------------------


def post_waiting(gw: RunningGateway, body: dict[str, Any]) -> httpx.Response:
    """POST /subscriptions/create from one address, waiting out its 429s (bounded)."""
    for _ in range(20):
        r = gw.post("/subscriptions/create", body)
        if r.status_code != 429:
            return r
        time.sleep(float(r.headers["retry-after"]))
    raise AssertionError("still rate-limited")


def test_r17_fifty_junk_streams_do_not_lock_the_owner_out(start_gateway: Any, fake_push: FakePushService) -> None:
    gw: RunningGateway = start_gateway()  # the defaults: max_streams_per_account = 50, per-IP rate limits on
    for n in range(50):
        keys = BrowserKeys.new()
        junk = {"endpoint": f"{fake_push.url}/push/junk{n}", "keys": {"p256dh": keys.p256dh, "auth": keys.auth_b64}}
        r = post_waiting(gw, {"accountId": "bob.near", "gateway": "https://near.social", "subscription": junk})
        assert r.status_code == 201, r.text
    real = fake_push.subscribe()
    r = post_waiting(gw, {"accountId": "bob.near", "gateway": "https://near.social", "subscription": real.as_json()})
    assert r.status_code == 201, r.text
    endpoints = {e for (e,) in gw.query("SELECT endpoint FROM streams WHERE account_id = 'bob.near'")}
    assert len(endpoints) == 50 and real.endpoint in endpoints and f"{fake_push.url}/push/junk0" not in endpoints

    gw.ingest(row(1))
    [push] = fake_push.wait_count(real, 1)  # bob's own browser is notified
    assert push.payload is not None and push.payload["id"] == 1


def test_account_cap_gives_way_and_endpoint_cap_refuses_through_the_api(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    gw: RunningGateway = start_gateway(limits={"max_streams_per_account": 2, "max_accounts_per_endpoint": 2})
    subs = [fake_push.subscribe() for _ in range(3)]

    def create(account: str, sub_index: int) -> httpx.Response:
        body = {"accountId": account, "gateway": "https://near.social", "subscription": subs[sub_index].as_json()}
        return gw.post("/subscriptions/create", body)

    def streams() -> set[tuple[str, str]]:
        return {(a, e) for a, e in gw.query("SELECT account_id, endpoint FROM streams")}

    assert create("bob.near", 0).status_code == 201
    time.sleep(0.01)
    assert create("bob.near", 1).status_code == 201
    time.sleep(0.01)
    assert create("bob.near", 0).status_code == 201  # a refresh: sub 0 is now the most recent
    time.sleep(0.01)
    assert create("bob.near", 2).status_code == 201  # at the cap: sub 1 gives way
    assert streams() == {("bob.near", subs[0].endpoint), ("bob.near", subs[2].endpoint)}
    assert create("carol.near", 0).status_code == 201
    r = create("dave.near", 0)  # two accounts on sub 0 already: only its owner could have put them there
    assert r.status_code == 403 and r.json()["code"] == "too_many_streams"
    assert "at most 2 accounts on this endpoint" in r.json()["message"]
    assert len(streams()) == 3
