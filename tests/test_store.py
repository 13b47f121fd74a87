"""The Store contract, exercised directly (the same tests will run against every store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from gateway.endpoints import endpoint_hash
from gateway.models import Event, MatchPolicy
from gateway.store.base import Outcome
from gateway.store.sqlite import SqliteStore
from tests.conftest import Clock, row

pytestmark = pytest.mark.anyio

P256DH = "BK6Yl1dbZTCCfVKeKTPDsUajF-kMc4eGaewNzvFspZPkoX2F__HHuSj1buJNg0Zq9JF8lTYkfHZH2lv8UDBqqLI"
AUTH = "_WaWEIbW1xnIE4LSaho9uw"
E1 = "https://fcm.googleapis.com/fcm/send/one"
E2 = "https://fcm.googleapis.com/fcm/send/two"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(str(tmp_path / "s.db"), clock=clock)
    await s.open()
    yield s
    await s.close()


def event(n: int, receiver: str = "bob.near", value_type: str = "like") -> Event:
    r = row(n, receiver, value_type)
    return Event(f"t:{n}", "t", receiver, value_type, r["blockHeight"], r)


async def test_reopening_applies_migrations_once(tmp_path: Path) -> None:
    for _ in range(2):
        s = SqliteStore(str(tmp_path / "m.db"))
        await s.open()
        assert await s.counts() == {"streams": 0, "accounts": 0}
        await s.close()


async def test_ingest_writes_deliveries_and_cursor_together(store: SqliteStore) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    result = await store.ingest([event(1), event(2)], MatchPolicy(), cursor=("queryapi", "130000002"))
    assert (result.new_events, result.deliveries) == (2, 2)
    assert await store.get_cursor("queryapi") == "130000002"
    again = await store.ingest([event(2)], MatchPolicy(), cursor=("queryapi", "130000003"))
    assert again.deliveries == 0 and again.skipped == {"duplicate_event": 1}
    assert await store.get_cursor("queryapi") == "130000003"


async def test_ingest_failure_rolls_back_events_and_cursor(store: SqliteStore) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    bad = Event("t:2", "t", "bob.near", "like", 1, {"unserialisable": object()})
    with pytest.raises(TypeError):
        await store.ingest([event(1), bad], MatchPolicy(), cursor=("queryapi", "9"))
    assert await store.get_cursor("queryapi") is None
    assert (await store.ingest([event(1)], MatchPolicy())).deliveries == 1  # event 1 was not kept


async def test_claim_leases_and_an_expired_lease_is_claimed_again(store: SqliteStore, clock: Clock) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(1)], MatchPolicy())
    [claim] = await store.claim(10, lease_seconds=30)
    assert claim.stream.endpoint == E1 and claim.row["id"] == 1 and claim.attempts == 1
    assert await store.claim(10, lease_seconds=30) == []  # leased: nobody else takes it
    clock.now += 31  # the worker died; its lease ran out
    [again] = await store.claim(10, lease_seconds=30)
    assert again.delivery_id == claim.delivery_id and again.attempts == 2
    await store.release([again.delivery_id])
    [third] = await store.claim(10, lease_seconds=30)  # released: claimable at once
    assert third.attempts == 2


async def test_retry_outcome_sets_the_due_time(store: SqliteStore, clock: Clock) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(1)], MatchPolicy())
    [claim] = await store.claim(10, 30)
    await store.record([Outcome(claim.delivery_id, "retry", 503, "busy", retry_at=clock.now + 60)])
    assert await store.claim(10, 30) == []
    assert await store.next_due_at() == clock.now + 60
    clock.now += 60
    assert len(await store.claim(10, 30)) == 1


async def test_gone_deletes_every_stream_of_the_endpoint_and_cancels_its_queue(store: SqliteStore) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.upsert_stream("carol.near", "https://near.org", E1, P256DH, AUTH)
    await store.upsert_stream("bob.near", "https://near.org", E2, P256DH, AUTH)
    await store.ingest([event(1), event(2, "carol.near")], MatchPolicy())
    claims = await store.claim(1, 30)
    first = next(c for c in claims if c.stream.endpoint == E1)
    await store.record([Outcome(first.delivery_id, "gone", 410, "gone", endpoint_hash=endpoint_hash(E1))])
    assert await store.counts() == {
        "streams": 1,
        "accounts": 1,
        "deliveries_gone": 1,
        "deliveries_pending": 1,
        "deliveries_cancelled": 1,
    }


async def test_dead_letters_are_listed_with_their_reason(store: SqliteStore, clock: Clock) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(1), event(2)], MatchPolicy())
    a, b = await store.claim(10, 30)
    await store.record(
        [Outcome(a.delivery_id, "dead", 400, "HTTP 400 bad"), Outcome(b.delivery_id, "rejected", 403, "VAPID rejected")]
    )
    letters = await store.dead_letters()
    assert {(d.status, d.http_status, d.reason, d.account_id) for d in letters} == {
        ("dead", 400, "HTTP 400 bad", "bob.near"),
        ("rejected", 403, "VAPID rejected", "bob.near"),
    }
    assert all(d.endpoint_hash == endpoint_hash(E1) for d in letters)


async def test_purge_keeps_the_dedupe_window(store: SqliteStore, clock: Clock) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(1)], MatchPolicy())
    [c] = await store.claim(10, 30)
    await store.record([Outcome(c.delivery_id, "sent", 201)])
    assert await store.purge(clock.now - 3600) == 0  # recent: kept, so a replay is still deduplicated
    assert (await store.ingest([event(1)], MatchPolicy())).deliveries == 0
    clock.now += 10
    assert await store.purge(clock.now) == 1


async def test_deleting_a_stream_cancels_its_pending_deliveries(store: SqliteStore) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(1)], MatchPolicy())
    assert await store.delete_streams(E1, "bob.near") == 1
    assert await store.claim(10, 30) == []
    assert (await store.counts())["deliveries_cancelled"] == 1
