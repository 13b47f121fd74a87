"""The Store contract, exercised directly against every store: SQLite and PostgreSQL.

The PostgreSQL run needs a server (GATEWAY_TEST_POSTGRES_URL, default the machine's local one); each
test gets its own schema, dropped afterwards, so runs never collide. It skips, saying why, only when
no server answers.
"""

from __future__ import annotations

import math
import os
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from gateway.config import TypeDelivery
from gateway.endpoints import endpoint_hash
from gateway.exceptions import StreamCapReached
from gateway.matcher import MatchPolicy
from gateway.models import Event, QuietHours
from gateway.pacing.digest import Pacing
from gateway.store.base import ACCOUNT_READER, BADGE_CAP, Outcome, Store
from gateway.store.postgres import MIGRATIONS as PG_MIGRATIONS
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore
from tests.conftest import Clock, row

pytestmark = pytest.mark.anyio

P256DH = "BK6Yl1dbZTCCfVKeKTPDsUajF-kMc4eGaewNzvFspZPkoX2F__HHuSj1buJNg0Zq9JF8lTYkfHZH2lv8UDBqqLI"
AUTH = "_WaWEIbW1xnIE4LSaho9uw"
E1 = "https://fcm.googleapis.com/fcm/send/one"
E2 = "https://fcm.googleapis.com/fcm/send/two"
E3 = "https://fcm.googleapis.com/fcm/send/three"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


POSTGRES_URL = os.environ.get("GATEWAY_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture
def clock() -> Clock:
    return Clock()


async def _postgres_reachable() -> str | None:
    import asyncpg

    try:
        conn = await asyncpg.connect(POSTGRES_URL, timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"no PostgreSQL server at {POSTGRES_URL} ({type(exc).__name__}); set GATEWAY_TEST_POSTGRES_URL"
    await conn.close()
    return None


@pytest.fixture(params=["sqlite", "postgresql"])
async def make_store(request: Any, tmp_path: Path, clock: Clock) -> AsyncIterator[Callable[[], Store]]:
    """A factory of stores on one database: each call is another process's view of the same data."""
    if request.param == "sqlite":
        yield lambda: SqliteStore(str(tmp_path / "s.db"), clock=clock)
        return
    reason = await _postgres_reachable()
    if reason:
        pytest.skip(reason)
    import asyncpg

    schema = f"gw_test_{uuid.uuid4().hex[:12]}"
    yield lambda: PostgresStore(f"{POSTGRES_URL}?schema={schema}", clock=clock)
    conn = await asyncpg.connect(POSTGRES_URL)
    await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    await conn.close()


@pytest.fixture
async def store(make_store: Callable[[], Store]) -> AsyncIterator[Store]:
    s = make_store()
    await s.open()
    yield s
    await s.close()


def event(n: int, receiver: str = "bob.near", value_type: str = "like") -> Event:
    r = row(n, receiver, value_type)
    return Event(f"t:{n}", "t", receiver, value_type, r["blockHeight"], r)


async def test_reopening_applies_migrations_once(make_store: Callable[[], Store]) -> None:
    for _ in range(2):
        s = make_store()
        await s.open()
        assert await s.counts() == {"streams": 0, "accounts": 0}
        await s.close()


async def test_a_claimed_delivery_is_not_claimed_by_another_process(make_store: Callable[[], Store]) -> None:
    a, b = make_store(), make_store()
    await a.open()
    await b.open()
    try:
        await a.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
        await a.ingest([event(n) for n in range(1, 7)], MatchPolicy())
        first = await a.claim(4, 30)
        second = await b.claim(10, 30)
        assert len(first) == 4 and len(second) == 2
        assert not {c.delivery_id for c in first} & {c.delivery_id for c in second}
        assert await b.claim(10, 30) == []
    finally:
        await a.close()
        await b.close()


async def test_accounts_updated_since_names_only_the_accounts_whose_streams_changed(store: Store, clock: Clock) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    clock.now += 10
    await store.upsert_stream("carol.near", "https://near.org", E2, P256DH, AUTH)
    assert await store.accounts_updated_since(clock.now) == ["carol.near"]
    assert sorted(await store.accounts_updated_since(clock.now - 10)) == ["bob.near", "carol.near"]
    clock.now += 10
    assert await store.accounts_updated_since(clock.now) == []
    await store.upsert_stream("bob.near", "https://near.social", E1, P256DH, AUTH)  # a refresh counts too
    assert await store.accounts_updated_since(clock.now) == ["bob.near"]


async def test_streams_accounts_and_preferences(store: Store) -> None:
    assert await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH) is True
    assert await store.upsert_stream("bob.near", "https://near.social", E1, P256DH, AUTH) is False
    await store.upsert_stream("carol.near", "https://near.org", E2, P256DH, AUTH)
    assert sorted(await store.accounts()) == ["bob.near", "carol.near"]
    assert await store.set_preference("bob.near", E1, "like", True) is True
    assert await store.set_preference("mallory.near", E1, "like", True) is False
    result = await store.ingest([event(1, value_type="like"), event(2, value_type="poke")], MatchPolicy())
    assert result.deliveries == 1 and result.skipped == {"blocked_by_preference": 1}
    [claim] = await store.claim(10, 30)
    assert claim.stream.gateway == "https://near.social" and claim.row["valueType"] == "poke"
    assert await store.set_preference("bob.near", E1, "like", False) is True
    assert (await store.ingest([event(3, value_type="like")], MatchPolicy())).deliveries == 1


async def test_a_mute_is_the_accounts_on_every_browser_and_outlives_its_streams(store: Store) -> None:
    """As the NEAR server keeps it: per (account, type), set from any of the account's streams."""
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.upsert_stream("bob.near", "https://near.org", E2, P256DH, AUTH)
    await store.upsert_stream("carol.near", "https://near.org", E2, P256DH, AUTH)
    assert await store.set_preference("bob.near", E1, "like", True) is True
    result = await store.ingest([event(1, value_type="like"), event(2, "carol.near", value_type="like")], MatchPolicy())
    assert result.deliveries == 1 and result.skipped == {"blocked_by_preference": 2}  # bob's two; carol's goes
    assert await store.delete_streams(E1) == 1 and await store.delete_streams(E2, "bob.near") == 1
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)  # turned on again
    assert (await store.ingest([event(3, value_type="like")], MatchPolicy())).skipped == {"blocked_by_preference": 1}
    assert await store.set_preference("bob.near", E1, "like", False) is True
    assert (await store.ingest([event(4, value_type="like")], MatchPolicy())).deliveries == 1


async def test_mutes_stored_per_stream_before_become_the_accounts(make_store: Callable[[], Store]) -> None:
    """The account_mutes migration, applied to a store as it was before it: the preferences rows
    (every one set through /preferences/set) become the account's mutes."""
    old = make_store()
    await old.open()
    await old.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await old.upsert_stream("bob.near", "https://near.org", E2, P256DH, AUTH)
    await old.upsert_stream("carol.near", "https://near.org", E1, P256DH, AUTH)
    rows = [(endpoint_hash(E1), "bob.near", "like"), (endpoint_hash(E2), "bob.near", "like")]
    rows.append((endpoint_hash(E1), "carol.near", "comment"))
    name = "0006_account_mutes" if isinstance(old, SqliteStore) else "0004_account_mutes"
    undo = ["DROP TABLE account_mutes", f"DELETE FROM schema_migrations WHERE name = '{name}'"]  # back to before
    if isinstance(old, SqliteStore):

        def rewind(c: Any) -> None:
            for sql in undo:
                c.execute(sql)
            c.executemany("INSERT INTO preferences VALUES (?, ?, ?)", rows)

        await old._run(rewind)
    else:
        assert isinstance(old, PostgresStore)
        async with old.pool.acquire() as conn:
            for sql in undo:
                await conn.execute(sql)
            await conn.executemany("INSERT INTO preferences VALUES ($1, $2, $3)", rows)
    await old.close()

    store = make_store()
    await store.open()  # migrates
    try:
        await store.upsert_stream("bob.near", "https://near.social", E3, P256DH, AUTH)  # a browser new since
        result = await store.ingest(
            [event(1, value_type="like"), event(2, "carol.near", value_type="comment"), event(3, "carol.near")],
            MatchPolicy(),
        )
        assert result.skipped == {"blocked_by_preference": 4} and result.deliveries == 1  # carol's like only
        infos = await store.list_streams(account_id="bob.near")
        assert all(i.muted == ("like",) for i in infos) and len(infos) == 3
    finally:
        await store.close()


async def test_a_browser_mute_is_that_streams_alone_and_goes_with_it(store: Store) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.upsert_stream("bob.near", "https://near.org", E2, P256DH, AUTH)
    assert await store.set_preference("bob.near", E1, "like", True, scope="browser") is True
    result = await store.ingest([event(1, value_type="like")], MatchPolicy())
    assert result.deliveries == 1 and result.skipped == {"blocked_by_preference": 1}
    await store.delete_streams(E1)
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    assert (await store.ingest([event(2, value_type="like")], MatchPolicy())).deliveries == 2


async def test_daily_cap_counts_per_endpoint(store: Store) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    result = await store.ingest([event(n) for n in range(1, 5)], MatchPolicy(max_per_endpoint_per_day=2))
    assert result.deliveries == 2 and result.skipped == {"daily_cap": 2}


async def test_ingest_writes_deliveries_and_cursor_together(store: Store) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    result = await store.ingest([event(1), event(2)], MatchPolicy(), cursor=("queryapi", "130000002"))
    assert (result.new_events, result.deliveries) == (2, 2)
    assert await store.get_cursor("queryapi") == "130000002"
    again = await store.ingest([event(2)], MatchPolicy(), cursor=("queryapi", "130000003"))
    assert again.deliveries == 0 and again.skipped == {"duplicate_event": 1}
    assert await store.get_cursor("queryapi") == "130000003"


async def test_ingest_failure_rolls_back_events_and_cursor(store: Store) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    bad = Event("t:2", "t", "bob.near", "like", 1, {"unserialisable": object()})
    with pytest.raises(TypeError):
        await store.ingest([event(1), bad], MatchPolicy(), cursor=("queryapi", "9"))
    assert await store.get_cursor("queryapi") is None
    assert (await store.ingest([event(1)], MatchPolicy())).deliveries == 1  # event 1 was not kept


async def test_claim_leases_and_an_expired_lease_is_claimed_again(store: Store, clock: Clock) -> None:
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


async def test_a_row_with_a_non_standard_number_is_still_claimed(store: Store) -> None:
    """Python's json writes NaN, which strict JSON parsers refuse: claims must read it back, not stall."""
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    odd = event(1)
    await store.ingest(
        [Event(odd.key, odd.source, odd.receiver, odd.value_type, 1, {**odd.row, "x": math.nan})], MatchPolicy()
    )
    await store.ingest([event(2)], MatchPolicy())
    claims = await store.claim(10, lease_seconds=30)
    assert sorted(c.row["id"] for c in claims) == [1, 2]
    assert math.isnan(next(c.row["x"] for c in claims if c.row["id"] == 1))


async def test_retry_outcome_sets_the_due_time(store: Store, clock: Clock) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(1)], MatchPolicy())
    [claim] = await store.claim(10, 30)
    await store.record([Outcome(claim.delivery_id, "retry", 503, "busy", retry_at=clock.now + 60)])
    assert await store.claim(10, 30) == []
    assert await store.next_due_at() == clock.now + 60
    clock.now += 60
    assert len(await store.claim(10, 30)) == 1


def by(n: int, initiator: str, receiver: str) -> Event:
    r = row(n, receiver, initiatedBy=initiator)
    return Event(f"t:{n}", "t", receiver, "like", r["blockHeight"], r)


async def test_a_lone_notification_goes_out_before_the_tail_of_a_big_fan_out(store: Store, clock: Clock) -> None:
    # 300 followers of star.near each get its post; then carol's single alert, 50 ms later: the
    # fan-out, 10 sent by then, is ahead of its share of 100 deliveries a second ([push] fair_rate)
    for i in range(300):
        await store.upsert_stream(f"f{i}.near", "https://near.org", f"{E1}-{i}", P256DH, AUTH)
    await store.upsert_stream("carol.near", "https://near.org", E2, P256DH, AUTH)
    await store.ingest([by(i, "star.near", f"f{i}.near") for i in range(300)], MatchPolicy())
    first = await store.claim(10, 30)
    assert [c.row["id"] for c in first] == list(range(10))  # one flow keeps its order
    clock.now += 0.05
    await store.ingest([by(1000, "mallory.near", "carol.near")], MatchPolicy())
    claims = await store.claim(10, 30)
    assert claims[0].row["id"] == 1000, [c.row["id"] for c in claims]
    assert [c.row["id"] for c in claims[1:]] == list(range(10, 19))


async def test_two_fan_outs_at_once_alternate_and_a_due_retry_keeps_its_turn(store: Store, clock: Clock) -> None:
    for i in range(40):
        await store.upsert_stream(f"f{i}.near", "https://near.org", f"{E1}-{i}", P256DH, AUTH)
    await store.ingest([by(1, "zed.near", "f0.near")], MatchPolicy())
    [tried] = await store.claim(1, 30)
    await store.record([Outcome(tried.delivery_id, "retry", 503, "busy", retry_at=clock.now + 0.05)])
    await store.ingest([by(100 + i, "a.near", f"f{i}.near") for i in range(1, 20)], MatchPolicy())
    await store.ingest([by(200 + i, "b.near", f"f{i}.near") for i in range(20, 39)], MatchPolicy())
    clock.now += 0.05
    ids = [c.row["id"] for c in await store.claim(12, 30)]
    # a's and b's deliveries take turns; the retry, due 50 ms after both began, comes in its place
    assert ids[:4] == [101, 220, 102, 221], ids
    assert 1 in ids and ids.index(1) > 4, ids


async def test_retried_dead_letters_and_released_claims_are_fresh_again(store: Store, clock: Clock) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(1)], MatchPolicy())
    [claim] = await store.claim(10, 30)
    await store.release([claim.delivery_id])
    [again] = await store.claim(10, 30)
    assert (again.delivery_id, again.attempts) == (claim.delivery_id, 1)
    await store.record([Outcome(again.delivery_id, "dead", 400, "bad")])
    assert await store.claim(10, 30) == []
    assert await store.retry_dead_letters() == 1
    assert await store.next_due_at() == clock.now
    assert [c.delivery_id for c in await store.claim(10, 30)] == [claim.delivery_id]


async def test_gone_deletes_every_stream_of_the_endpoint_and_cancels_its_queue(store: Store) -> None:
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


async def test_dead_letters_are_listed_with_their_reason(store: Store, clock: Clock) -> None:
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


async def test_purge_keeps_the_dedupe_window(store: Store, clock: Clock) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(1)], MatchPolicy())
    [c] = await store.claim(10, 30)
    await store.record([Outcome(c.delivery_id, "sent", 201)])
    assert await store.purge(clock.now - 3600) == 0  # recent: kept, so a replay is still deduplicated
    assert (await store.ingest([event(1)], MatchPolicy())).deliveries == 0
    clock.now += 10
    assert await store.purge(clock.now) == 1


async def test_deleting_a_stream_cancels_its_pending_deliveries(store: Store) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(1)], MatchPolicy())
    assert await store.delete_streams(E1, "bob.near") == 1
    assert await store.claim(10, 30) == []
    assert (await store.counts())["deliveries_cancelled"] == 1


async def test_stores_opening_together_apply_each_migration_once(make_store: Callable[[], Store]) -> None:
    stores = [make_store() for _ in range(4)]
    async with anyio.create_task_group() as tg:  # four processes starting at the same moment
        for s in stores:
            tg.start_soon(s.open)
    try:
        await stores[0].upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
        assert [await s.counts() for s in stores] == [{"streams": 1, "accounts": 1}] * 4
        if isinstance(stores[0], PostgresStore):
            rows = await stores[0].pool.fetch("SELECT name FROM schema_migrations")
            assert sorted(r[0] for r in rows) == [name for name, _ in PG_MIGRATIONS]
    finally:
        for s in stores:
            await s.close()


async def test_stream_caps_hold_when_processes_create_at_once(make_store: Callable[[], Store]) -> None:
    stores = [make_store() for _ in range(4)]
    for s in stores:
        await s.open()
    capped: list[str] = []

    async def create(s: Store, n: int) -> None:
        try:
            await s.upsert_stream("bob.near", "https://near.org", f"{E1}-{n}", P256DH, AUTH, max_per_account=3)
        except StreamCapReached as exc:
            capped.append(exc.scope)

    try:
        async with anyio.create_task_group() as tg:
            for n in range(12):
                tg.start_soon(create, stores[n % 4], n)
        assert (await stores[0].counts())["streams"] == 3  # never more than the cap...
        assert capped == []  # ...and never refused: the least recently refreshed streams gave way
        for n in range(3):  # the endpoint side: accounts on one endpoint
            await stores[0].upsert_stream(f"a{n}.near", "https://near.org", E2, P256DH, AUTH, max_per_endpoint=3)
        with pytest.raises(StreamCapReached):
            await stores[1].upsert_stream("a9.near", "https://near.org", E2, P256DH, AUTH, max_per_endpoint=3)
    finally:
        for s in stores:
            await s.close()


async def test_a_nonce_is_usable_once_until_it_expires(store: Store, clock: Clock) -> None:
    assert await store.use_nonce("ed25519:k:n1", clock() + 300) is True
    assert await store.use_nonce("ed25519:k:n1", clock() + 300) is False
    assert await store.use_nonce("ed25519:k:n2", clock() + 300) is True
    clock.now += 301
    assert await store.use_nonce("ed25519:k:n1", clock() + 300) is True  # expired: forgotten
    await store.purge(clock() - 86400)
    assert await store.use_nonce("ed25519:k:n2", clock() + 300) is True


async def test_operators_list_and_delete_streams(store: Store) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.upsert_stream("bob.near", "https://near.social", E2, P256DH, AUTH)
    await store.upsert_stream("carol.near", "https://near.org", E1, P256DH, AUTH)
    await store.set_preference("bob.near", E1, "like", True)  # the account's: on both its streams
    await store.set_preference("bob.near", E1, "devhub/mention", True, scope="browser")  # E1's alone
    bobs = await store.list_streams(account_id="bob.near")
    assert [(i.stream.endpoint, i.muted) for i in bobs] == [(E2, ("like",)), (E1, ("devhub/mention", "like"))]
    on_e1 = await store.list_streams(endpoint_hash=endpoint_hash(E1))
    assert sorted(i.stream.account_id for i in on_e1) == ["bob.near", "carol.near"]
    assert len(await store.list_streams(limit=2)) == 2
    await store.ingest([event(1, value_type="comment")], MatchPolicy())  # queued for bob's two endpoints
    assert await store.delete_streams_of(account_id="bob.near") == 2
    assert [i.stream.account_id for i in await store.list_streams()] == ["carol.near"]
    assert (await store.counts()).get("deliveries_cancelled") == 2
    assert await store.delete_streams_of(endpoint_hash=endpoint_hash(E1)) == 1
    assert await store.list_streams() == []


async def test_operators_retry_and_purge_dead_letters(store: Store, clock: Clock) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(n) for n in range(1, 5)], MatchPolicy())
    claims = await store.claim(10, 30)
    await store.record(
        [Outcome(c.delivery_id, "dead", 400, "HTTP 400 bad") for c in claims[:3]]
        + [Outcome(claims[3].delivery_id, "sent", 201)]
    )
    history = await store.delivery_history(clock.now - 3600)
    assert {(status, n) for _, status, n in history} == {("dead", 3), ("sent", 1)}
    assert all(minute % 60 == 0 and minute <= clock.now for minute, _, _ in history)
    assert await store.failing_hosts(clock.now - 3600) == [("fcm.googleapis.com", 3)]
    assert await store.retry_dead_letters([claims[0].delivery_id]) == 1
    [again] = await store.claim(10, 30)
    assert again.delivery_id == claims[0].delivery_id and again.attempts == 1
    assert await store.purge_dead_letters([claims[1].delivery_id]) == 1
    assert [d.delivery_id for d in await store.dead_letters()] == [claims[2].delivery_id]
    assert await store.retry_dead_letters() == 1
    assert await store.purge_dead_letters() == 0  # the retried one is pending now, not dead
    assert await store.retry_dead_letters([]) == 0


async def test_set_cursor_moves_a_watcher(store: Store) -> None:
    await store.set_cursor("queryapi", "100")
    await store.set_cursor("queryapi", "42")
    assert await store.get_cursor("queryapi") == "42"


def test_a_new_sqlite_database_and_its_directory_are_private(tmp_path: Path) -> None:
    import os
    import stat

    async def main() -> None:
        store = SqliteStore(str(tmp_path / "data" / "gateway.db"))
        await store.open()
        await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
        await store.close()

    old = os.umask(0o022)  # a usual umask: files 0644 unless the store says otherwise
    try:
        import anyio

        anyio.run(main)
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700
    for f in (tmp_path / "data").iterdir():
        assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name


# --- pacing: digests and quiet hours ---------------------------------------------------------------

LIKES_DIGEST = MatchPolicy(pacing=Pacing({"like": TypeDelivery(digest=60)}))


def minute_of_day(ts: float) -> int:
    return int(ts // 60) % (24 * 60)  # UTC


async def test_a_burst_is_one_push_at_once_then_one_digest_of_all_of_it(store: Store, clock: Clock) -> None:
    for endpoint in (E1, E2):
        await store.upsert_stream("bob.near", "https://near.org", endpoint, P256DH, AUTH)
    t0 = clock.now
    first = await store.ingest([event(1)], LIKES_DIGEST)
    assert (first.deliveries, first.folded) == (2, 0)
    claims = await store.claim(10, 30)
    assert [c.folded for c in claims] == [(), ()]
    await store.record([Outcome(c.delivery_id, "sent", 201) for c in claims])
    clock.now += 5
    second = await store.ingest([event(2)], LIKES_DIGEST)
    assert (second.deliveries, second.folded) == (2, 0)  # a digest opened per browser
    rest = await store.ingest([event(3), event(4), event(5)], LIKES_DIGEST)
    assert (rest.deliveries, rest.folded) == (0, 6)
    assert await store.claim(10, 30) == []  # held until the window ends
    assert await store.next_due_at() == t0 + 60
    clock.now = t0 + 60
    digests = await store.claim(10, 30)
    assert sorted(c.stream.endpoint for c in digests) == [E1, E2]
    for digest in digests:
        assert [r["id"] for r in digest.folded] == [1, 2, 3, 4, 5] and digest.folded_total == 5
        assert digest.row["id"] == 5
    await store.record([Outcome(c.delivery_id, "sent", 201) for c in digests])
    clock.now += 1  # after the window a new burst begins with a push at once
    again = await store.ingest([event(6)], LIKES_DIGEST)
    assert (again.deliveries, again.folded) == (2, 0)
    assert {c.folded for c in await store.claim(10, 30)} == {()}


async def test_likes_on_another_post_or_types_without_a_window_are_not_folded(store: Store, clock: Clock) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(1)], LIKES_DIGEST)
    other_post = Event("t:o", "t", "bob.near", "like", 1, {**row(9), "actionAtBlockHeight": 77})
    assert (await store.ingest([other_post], LIKES_DIGEST)).deliveries == 1
    comments = [event(n, value_type="comment") for n in (10, 11)]
    assert (await store.ingest(comments, LIKES_DIGEST)).deliveries == 2
    assert len(await store.claim(10, 30)) == 4  # all due now


async def test_quiet_hours_hold_pushes_until_the_window_ends_but_not_security_alerts(
    store: Store, clock: Clock
) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    now_minute = minute_of_day(clock.now)
    quiet = QuietHours("UTC", now_minute, now_minute + 2)
    assert await store.set_quiet_hours("bob.near", E1, quiet)
    assert not await store.set_quiet_hours("bob.near", E2, quiet)  # no such stream
    policy = MatchPolicy(pacing=Pacing())
    held = await store.ingest([event(1), event(2, value_type="comment")], policy)
    assert (held.deliveries, held.folded) == (1, 1)  # one digest of both
    alert = Event("t:k", "t", "bob.near", "add_key", 1, {**row(3, value_type="add_key"), "permission": "FullAccess"})
    assert (await store.ingest([alert], policy)).deliveries == 1
    [urgent] = await store.claim(10, 30)
    assert urgent.row["valueType"] == "add_key" and urgent.folded == ()
    await store.record([Outcome(urgent.delivery_id, "sent", 201)])
    ends = (clock.now // 60 + 2) * 60
    assert await store.next_due_at() == ends
    clock.now = ends
    [digest] = await store.claim(10, 30)
    assert [r["id"] for r in digest.folded] == [1, 2] and digest.folded_total == 2
    assert digest.event_created_at == ends  # its age (give_up_after) counts from the window's end
    assert await store.set_quiet_hours("bob.near", E1, None)
    clock.now = ends - 60  # inside the old window, but it was cleared
    assert (await store.ingest([event(4)], policy)).deliveries == 1
    assert [c.row["id"] for c in await store.claim(10, 30)] == [4]


async def test_a_held_digest_outlives_the_process(make_store: Callable[[], Store], clock: Clock) -> None:
    before = make_store()
    await before.open()
    await before.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await before.ingest([event(1)], LIKES_DIGEST)
    await before.record([Outcome(c.delivery_id, "sent", 201) for c in await before.claim(10, 30)])
    await before.ingest([event(2), event(3)], LIKES_DIGEST)
    await before.close()
    after = make_store()
    await after.open()
    try:
        clock.now += 60
        [digest] = await after.claim(10, 30)
        assert [r["id"] for r in digest.folded] == [1, 2, 3]
    finally:
        await after.close()


async def test_a_push_taken_again_after_its_digest_went_out_is_cancelled_not_sent_stale(
    store: Store, clock: Clock
) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    t0 = clock.now
    await store.ingest([event(1)], LIKES_DIGEST)
    [first] = await store.claim(10, 100)  # sent, and the process died before recording it
    await store.ingest([event(2)], LIKES_DIGEST)
    clock.now = t0 + 60
    [digest] = await store.claim(10, 30)
    assert digest.folded_total == 2
    await store.record([Outcome(digest.delivery_id, "sent", 201)])
    clock.now = t0 + 101  # the first push's lease ends: it would replace the digest with "u1 liked"
    assert await store.claim(10, 30) == []
    assert await store.next_due_at() is None
    assert first.folded == ()


async def test_a_purge_keeps_the_events_a_held_digest_folds(store: Store, clock: Clock) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    minute = minute_of_day(clock.now)
    await store.set_quiet_hours("bob.near", E1, QuietHours("UTC", minute, (minute + 2) % 1440))
    await store.ingest([event(1), event(2)], MatchPolicy(pacing=Pacing()))
    clock.now += 1
    await store.purge(older_than=clock.now)  # a retention shorter than the hold
    clock.now += 120
    [digest] = await store.claim(10, 30)
    assert [r["id"] for r in digest.folded] == [1, 2]


# --- the inbox --------------------------------------------------------------------------------------

B1, B2 = endpoint_hash(E1), endpoint_hash(E2)


async def test_every_matched_notification_goes_to_the_inbox_whatever_became_of_its_push(store: Store) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.set_preference("bob.near", E1, "poke", True, scope="browser")  # muted on the browser
    result = await store.ingest(
        [event(1), event(2, value_type="poke"), event(3, receiver="nobody.near")],
        MatchPolicy(max_per_endpoint_per_day=1),
    )
    assert result.deliveries == 1  # one pushed; the poke muted; nobody.near has no stream
    items = await store.inbox("bob.near", B1)
    assert [(i.row["id"], i.value_type, i.read) for i in items] == [(2, "poke", False), (1, "like", False)]
    assert await store.inbox("nobody.near", B1) == []
    assert (await store.ingest([event(1)], MatchPolicy())).skipped == {"duplicate_event": 1}
    assert len(await store.inbox("bob.near", B1)) == 2  # an event is in the inbox once


async def test_read_marks_are_per_browser_and_the_accounts_count_on_every_browser(store: Store) -> None:
    for endpoint in (E1, E2):
        await store.upsert_stream("bob.near", "https://near.org", endpoint, P256DH, AUTH)
    await store.ingest([event(n) for n in range(1, 6)], MatchPolicy())
    ids = [i.id for i in await store.inbox("bob.near", B1)]  # newest first
    assert await store.unread_count("bob.near", B1) == 5 and await store.unread_count("bob.near", B2) == 5
    await store.mark_read("bob.near", B1, ids=[ids[0]])
    assert await store.unread_count("bob.near", B1) == 4 and await store.unread_count("bob.near", B2) == 5
    assert [i.read for i in await store.inbox("bob.near", B1)] == [True, False, False, False, False]
    await store.mark_read("bob.near", B1, up_to=ids[3])  # everything up to the second oldest
    assert [i.read for i in await store.inbox("bob.near", B1)] == [True, False, False, True, True]
    await store.mark_read("bob.near", ACCOUNT_READER, ids=[ids[1]])  # the proven account's mark
    assert [i.read for i in await store.inbox("bob.near", B2)] == [False, True, False, False, False]
    assert await store.unread_count("bob.near", B1) == 1
    await store.mark_read("bob.near", B2, up_to=await store.newest_inbox_id("bob.near"))  # all read
    assert await store.unread_count("bob.near", B2) == 0
    await store.mark_read("carol.near", B1, ids=ids)  # another account's ids are no marks of bob's
    assert await store.unread_count("bob.near", B1) == 1


async def test_a_new_browser_starts_with_nothing_unread_and_the_inbox_pages_by_id(store: Store) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(n) for n in range(1, 8)], MatchPolicy())
    await store.upsert_stream("bob.near", "https://near.org", E2, P256DH, AUTH)
    assert await store.unread_count("bob.near", B2) == 0
    await store.ingest([event(8)], MatchPolicy())
    assert await store.unread_count("bob.near", B2) == 1 and await store.unread_count("bob.near", B1) == 8
    first = await store.inbox("bob.near", B1, limit=3)
    second = await store.inbox("bob.near", B1, before=first[-1].id, limit=3)
    rest = await store.inbox("bob.near", B1, before=second[-1].id, limit=3)
    assert [i.row["id"] for i in first + second + rest] == [8, 7, 6, 5, 4, 3, 2, 1]
    assert await store.unread_count("bob.near", B1, cap=5) == 5


async def test_the_inbox_is_kept_for_its_own_retention(store: Store, clock: Clock) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(1)], MatchPolicy())
    [item] = await store.inbox("bob.near", B1)
    await store.mark_read("bob.near", B1, ids=[item.id])
    clock.now += 10
    await store.ingest([event(2)], MatchPolicy())
    await store.purge(older_than=clock.now + 1)  # deliveries and events go...
    assert len(await store.inbox("bob.near", B1)) == 2  # ...the inbox stays
    await store.purge(older_than=clock.now, inbox_older_than=clock.now - 5)
    assert [i.row["id"] for i in await store.inbox("bob.near", B1)] == [2]


async def test_a_stream_refused_by_its_push_service_is_marked_until_registered_again(
    store: Store, clock: Clock
) -> None:
    for endpoint in (E1, E2):
        await store.upsert_stream("bob.near", "https://near.org", endpoint, P256DH, AUTH)
    await store.ingest([event(1)], MatchPolicy())
    claims = {c.stream.endpoint: c for c in await store.claim(10, 30)}
    await store.record(
        [Outcome(claims[E1].delivery_id, "rejected", 403, "HTTP 403"), Outcome(claims[E2].delivery_id, "sent", 201)]
    )
    refused = {i.stream.endpoint: i.refused_at for i in await store.list_streams(account_id="bob.near")}
    assert refused == {E1: clock.now, E2: None}
    clock.now += 5
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)  # the page registered it again
    assert all(i.refused_at is None for i in await store.list_streams(account_id="bob.near"))


async def test_a_claim_carries_its_inbox_item_and_its_browsers_unread_count(store: Store, clock: Clock) -> None:
    for endpoint in (E1, E2):
        await store.upsert_stream("bob.near", "https://near.org", endpoint, P256DH, AUTH)
    await store.ingest([event(1), event(2)], MatchPolicy())
    [newest, oldest] = await store.inbox("bob.near", B1)
    await store.mark_read("bob.near", B1, ids=[oldest.id])
    claims = await store.claim(10, 30)
    got = sorted((c.stream.endpoint, c.row["id"], c.inbox_id, c.unread) for c in claims)
    assert got == [(E1, 1, oldest.id, 1), (E1, 2, newest.id, 1), (E2, 1, oldest.id, 2), (E2, 2, newest.id, 2)]
    await store.record([Outcome(c.delivery_id, "sent", 201) for c in claims])
    # a digest shows its newest row's item
    await store.ingest([event(3)], LIKES_DIGEST)
    await store.ingest([event(4), event(5)], LIKES_DIGEST)
    await store.record([Outcome(c.delivery_id, "sent", 201) for c in await store.claim(10, 30)])
    clock.now += 60
    digests = await store.claim(10, 30)
    [item5] = [i for i in await store.inbox("bob.near", B1) if i.row["id"] == 5]
    assert {(c.row["id"], c.inbox_id) for c in digests} == {(5, item5.id)} and len(digests) == 2


async def test_the_badge_a_claim_carries_is_exact_however_the_items_were_read(store: Store) -> None:
    """The badge is counted from the mark and the items read one by one, not row by row: it must match
    the inbox's own read flags past twice the cap, with reads by either reader, and with more one-by-one
    reads than the cap (counted row by row then)."""
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(n) for n in range(1000, 1000 + 3 * BADGE_CAP)], MatchPolicy())  # 297
    await store.record([Outcome(c.delivery_id, "sent", 201) for c in await store.claim(1000, 30)])
    ids = sorted(i.id for i in await store.inbox("bob.near", B1, limit=1000))  # oldest first
    n = 0

    async def badge_and_truth() -> tuple[int | None, int]:
        """The badge of a new notification's claim, and the unread count by the inbox's read flags."""
        nonlocal n
        n += 1
        await store.ingest([event(n)], MatchPolicy())
        [claim] = await store.claim(10, 30)
        await store.record([Outcome(claim.delivery_id, "sent", 201)])
        unread = sum(not i.read for i in await store.inbox("bob.near", B1, limit=1000))
        return claim.unread, min(BADGE_CAP, unread)

    assert await badge_and_truth() == (BADGE_CAP, BADGE_CAP)
    await store.mark_read("bob.near", B1, ids=ids[:90])
    await store.mark_read("bob.near", ACCOUNT_READER, ids=ids[80:95])  # 95 distinct: 299 - 95 unread
    assert await badge_and_truth() == (BADGE_CAP, BADGE_CAP)
    await store.mark_read("bob.near", B1, ids=ids[100:250])  # 245 one by one, more than the cap
    assert await badge_and_truth() == (300 - 245, 300 - 245)
    await store.mark_read("bob.near", B1, up_to=ids[200])  # 201 read; ids[201:250] one by one after it
    await store.mark_read("bob.near", ACCOUNT_READER, ids=ids[240:260])  # 59 distinct after the mark
    assert await badge_and_truth() == (301 - 201 - 59, 301 - 201 - 59)
    await store.mark_read("bob.near", B1, up_to=ids[-1])  # all read but the four new since
    assert await badge_and_truth() == (5, 5)


async def test_receipts_are_recorded_once_per_stage_and_a_click_reads_the_item(store: Store, clock: Clock) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(1), event(2, value_type="comment")], MatchPolicy())
    claims = await store.claim(10, 30)
    await store.record([Outcome(c.delivery_id, "sent", 201) for c in claims])
    items = {i.row["id"]: i.id for i in await store.inbox("bob.near", B1)}
    host = "fcm.googleapis.com"
    first = await store.record_receipt("bob.near", B1, items[1], "shown", host)
    assert first == (True, True, "like")
    assert await store.record_receipt("bob.near", B1, items[1], "shown", host) == (True, False, "like")  # idempotent
    assert (await store.record_receipt("bob.near", B1, items[1], "clicked", host)).new
    assert [i.read for i in await store.inbox("bob.near", B1) if i.id == items[1]] == [True]
    assert not (await store.record_receipt("carol.near", B1, items[1], "shown", host)).known  # not carol's item
    assert not (await store.record_receipt("bob.near", B1, 10**9, "shown", host)).known
    # a browser that never got it (a stream registered later, by anyone) cannot report it
    await store.upsert_stream("bob.near", "https://near.org", E3, P256DH, AUTH)
    assert not (await store.record_receipt("bob.near", endpoint_hash(E3), items[1], "clicked", host)).known
    await store.record_receipt("bob.near", B1, items[2], "closed", host)
    rows = {(r.value_type, r.push_host): r[2:] for r in await store.funnel(clock.now - 86400)}
    assert rows == {("like", host): (1, 1, 1, 0), ("comment", host): (1, 0, 0, 1)}
    assert await store.funnel(clock.now + 1) == []


async def test_an_event_arriving_as_its_digest_is_claimed_goes_on_in_a_bigger_digest(
    make_store: Callable[[], Store], clock: Clock
) -> None:
    """Ingest's clock (its transaction began just before the window ended, or its host runs behind)
    still says "inside the window" while a dispatcher has taken the digest."""
    worker_clock = Clock()
    ingest, worker = make_store(), make_store()
    worker._clock = worker_clock  # type: ignore[attr-defined]  (both stores read their clock there)
    await ingest.open()
    await worker.open()
    try:
        t0 = clock.now
        await ingest.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
        await ingest.ingest([event(1)], LIKES_DIGEST)
        await worker.record([Outcome(c.delivery_id, "sent", 201) for c in await worker.claim(10, 30)])
        await ingest.ingest([event(n) for n in (2, 3, 4, 5)], LIKES_DIGEST)
        worker_clock.now = t0 + 60
        [first_digest] = await worker.claim(10, 30)
        clock.now = t0 + 59.8
        late = await ingest.ingest([event(6)], LIKES_DIGEST)
        assert (late.deliveries, late.folded) == (1, 0)  # a new digest, not a fold into the taken one
        await worker.record([Outcome(first_digest.delivery_id, "sent", 201)])
        worker_clock.now = t0 + 60.1
        [second_digest] = await worker.claim(10, 30)
        assert first_digest.folded_total == 5
        assert [r["id"] for r in second_digest.folded] == [1, 2, 3, 4, 5, 6] and second_digest.folded_total == 6
    finally:
        await ingest.close()
        await worker.close()


async def test_processes_ingesting_one_burst_at_once_open_one_digest(
    make_store: Callable[[], Store], clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    a, b = make_store(), make_store()
    if isinstance(a, PostgresStore):  # SQLite has one writer: its ingests queue up by themselves
        matched = PostgresStore._match_one

        async def slow(conn: Any, *args: Any) -> None:  # the rest of a batch: the transaction stays open
            await matched(conn, *args)
            await anyio.sleep(0.3)

        monkeypatch.setattr(PostgresStore, "_match_one", staticmethod(slow))
    await a.open()
    await b.open()
    try:
        await a.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
        await a.ingest([event(1)], LIKES_DIGEST)
        await a.record([Outcome(c.delivery_id, "sent", 201) for c in await a.claim(10, 30)])
        clock.now += 5
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.ingest, [event(2)], LIKES_DIGEST)
            tg.start_soon(b.ingest, [event(3)], LIKES_DIGEST)
        minute = minute_of_day(clock.now)
        await a.upsert_stream("carol.near", "https://near.org", E2, P256DH, AUTH)
        await a.set_quiet_hours("carol.near", E2, QuietHours("UTC", minute, (minute + 2) % 1440))
        quiet = MatchPolicy(pacing=Pacing())
        async with anyio.create_task_group() as tg:
            tg.start_soon(a.ingest, [event(4, receiver="carol.near")], quiet)
            tg.start_soon(b.ingest, [event(5, receiver="carol.near")], quiet)
        clock.now += 200
        digests = {c.stream.account_id: c for c in await a.claim(10, 30)}
        assert sorted(r["id"] for r in digests["bob.near"].folded) == [1, 2, 3]
        assert digests["bob.near"].folded_total == 3
        assert sorted(r["id"] for r in digests["carol.near"].folded) == [4, 5]
        assert len(digests) == 2 and digests["carol.near"].folded_total == 2
    finally:
        await a.close()
        await b.close()


async def test_a_digest_key_never_collides_with_an_event_key(store: Store, clock: Clock) -> None:
    """POST /events?source=digest makes keys "digest:<id>": a digest's own key must be another."""
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    lookalike = Event("digest:t:2", "digest", "bob.near", "poke", 1, row(99, value_type="poke"))
    await store.ingest([lookalike], LIKES_DIGEST)
    result = await store.ingest([event(1), event(2)], LIKES_DIGEST)
    assert (result.deliveries, result.folded) == (2, 0)
    clock.now += 60
    kinds = sorted((c.event_key, c.folded_total) for c in await store.claim(10, 30))
    assert kinds == [("digest:t:2", 0), ("t:1", 0), ("~digest:t:2", 2)]


async def test_folded_and_held_notifications_are_in_the_inbox_too(store: Store, clock: Clock) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(1), event(2), event(3)], LIKES_DIGEST)  # one at once, two folded
    minute = minute_of_day(clock.now)
    await store.upsert_stream("carol.near", "https://near.org", E2, P256DH, AUTH)
    await store.set_quiet_hours("carol.near", E2, QuietHours("UTC", minute, (minute + 2) % 1440))
    held = await store.ingest([event(4, receiver="carol.near")], MatchPolicy(pacing=Pacing()))
    assert held.deliveries == 1  # the held digest
    assert [i.row["id"] for i in await store.inbox("bob.near", B1)] == [3, 2, 1]
    assert [i.row["id"] for i in await store.inbox("carol.near", B2)] == [4]


async def test_read_up_to_a_time_marks_what_came_by_then(store: Store, clock: Clock) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(1)], MatchPolicy())
    noon = clock.now
    clock.now += 10
    await store.ingest([event(2)], MatchPolicy())
    up_to = await store.newest_inbox_id("bob.near", until=noon)
    await store.mark_read("bob.near", B1, up_to=up_to)
    assert [(i.row["id"], i.read) for i in await store.inbox("bob.near", B1)] == [(2, False), (1, True)]
    assert await store.newest_inbox_id("bob.near", until=noon - 1) == 0


async def test_a_receipt_for_a_notification_folded_into_a_digest_is_taken(store: Store, clock: Clock) -> None:
    await store.upsert_stream("bob.near", "https://near.org", E1, P256DH, AUTH)
    await store.ingest([event(1), event(2), event(3)], LIKES_DIGEST)
    await store.record([Outcome(c.delivery_id, "sent", 201) for c in await store.claim(10, 30)])
    clock.now += 60
    [digest] = await store.claim(10, 30)
    assert digest.inbox_id is not None
    assert (await store.record_receipt("bob.near", B1, digest.inbox_id, "shown", "fcm.googleapis.com")).known
