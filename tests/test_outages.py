"""Riding through store outages: the store boundary classifies errors, the API answers 503 with a
stable code, the dispatcher keeps what it could not record, watchers pause and resume.

SQLite outages are real SQLite errors: another connection holding the write lock past the busy
timeout (SQLITE_BUSY), and ``PRAGMA max_page_count`` making the file full (SQLITE_FULL) without root.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from gateway.config import MatchingSettings
from gateway.exceptions import StoreRefused, StoreUnavailable
from gateway.matcher import policy_from
from gateway.models import NotificationRow
from gateway.store.sqlite import SqliteStore
from tests.conftest import INGEST_TOKEN, RunningGateway, row
from tests.fakepush import FakePushService, Reply, Subscription
from tests.fakesources import GraphQLWsServer, wait_until
from tests.test_e2e import subscribe
from tests.test_watchers import queryapi
from watchers.decode import event_from_row

AUTH = {"Authorization": f"Bearer {INGEST_TOKEN}"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def on_store(gw: RunningGateway, fn: Callable[[sqlite3.Connection], Any]) -> Any:
    """Run ``fn`` on the running gateway's own SQLite connection (per-connection pragmas)."""
    store = gw.gateway.store
    assert isinstance(store, SqliteStore)
    return gw._portal.call(store._run, fn)


@contextmanager
def write_lock_held(path: str) -> Iterator[None]:
    """Another process's writer holding the lock (WAL: readers go on, writers wait, then SQLITE_BUSY)."""
    conn = sqlite3.connect(path, timeout=10, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def pushed(fake: FakePushService, sub: Subscription) -> Counter[Any]:
    return Counter(r.payload["id"] for r in fake.for_sub(sub) if r.payload)


# --- the boundary --------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_sqlite_errors_are_classified_at_the_store_boundary(tmp_path: Any) -> None:
    store = SqliteStore(str(tmp_path / "s.db"), busy_timeout=0.2)
    await store.open()
    policy = policy_from(MatchingSettings())
    try:
        assert store.status.state == "up"
        with write_lock_held(store.path), pytest.raises(StoreUnavailable) as busy:
            await store.set_cursor("w", "1")
        assert busy.value.code == "store_unavailable" and "locked" in str(busy.value)
        assert store.status.state == "unavailable" and store.status.outages == 1
        await store.set_cursor("w", "1")  # the same call, once the lock is gone
        assert store.status.state == "up" and await store.get_cursor("w") == "1"

        too_big = dataclasses.replace(event_from_row(NotificationRow.model_validate(row(1)), "t"), block_height=2**63)
        with pytest.raises(StoreRefused):
            await store.ingest([too_big], policy)
        assert store.status.state == "up" and store.status.errors["refused"] == 1

        pages = await store._run(lambda c: c.execute("PRAGMA page_count").fetchone()[0])
        await store._run(lambda c: c.execute(f"PRAGMA max_page_count = {pages}").fetchone())
        big = [event_from_row(NotificationRow.model_validate(row(n, message="m" * 4000)), "t") for n in range(50)]
        with pytest.raises(StoreUnavailable) as full:
            await store.ingest(big, policy)
        assert full.value.code == "storage_full" and store.status.state == "full"
        await store._run(lambda c: c.execute("PRAGMA max_page_count = 1073741823").fetchone())
        result = await store.ingest(big, policy)  # the transaction was rolled back whole: all of it again
        assert result.new_events == 50 and store.status.state == "up" and store.status.outages == 2
    finally:
        await store.close()


# --- the API -------------------------------------------------------------------------------------


def test_a_full_sqlite_file_answers_503_storage_full_and_the_same_requests_succeed_once_lifted(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    gw = start_gateway(matching={"max_per_endpoint_per_day": 0})
    bob = subscribe(gw, fake_push, "bob.near")
    gw.ingest([row(1)])
    fake_push.wait_count(bob, 1)
    pages = on_store(gw, lambda c: c.execute("PRAGMA page_count").fetchone()[0])
    on_store(gw, lambda c: c.execute(f"PRAGMA max_page_count = {pages}").fetchone())

    batch = [row(n, message="m" * 4000) for n in range(2, 40)]
    r = gw.post("/events", batch, headers=AUTH)
    assert r.status_code == 503, r.text
    assert r.json()["code"] == "storage_full" and r.headers["Retry-After"] == "30"
    carol = fake_push.subscribe()
    body = {"accountId": "carol.near", "gateway": "https://near.social", "subscription": carol.as_json()}
    for n in range(30):  # refreshes are small: fill the last free bytes with new streams
        other = fake_push.subscribe().as_json()
        last = gw.post("/subscriptions/create", {**body, "accountId": f"c{n}.near", "subscription": other})
        if last.status_code == 503:
            break
    assert last.status_code == 503 and last.json()["code"] == "storage_full", last.text
    ready = gw.http.get("/readyz")
    assert ready.status_code == 503 and ready.json()["code"] == "storage_full" and "Retry-After" in ready.headers
    health = gw.http.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "degraded"
    assert health.json()["store"]["state"] == "full"
    assert "gateway_store_up 0.0" in gw.http.get("/metrics").text

    on_store(gw, lambda c: c.execute("PRAGMA max_page_count = 1073741823").fetchone())
    assert gw.post("/events", batch, headers=AUTH).status_code == 202
    assert gw.post("/subscriptions/create", body).status_code == 201
    fake_push.wait_count(bob, 39)
    assert pushed(fake_push, bob) == Counter(range(1, 40))  # nothing lost, nothing twice
    assert wait_until(lambda: gw.http.get("/readyz").status_code == 200, 5)
    metrics = gw.http.get("/metrics").text
    assert "gateway_store_up 1.0" in metrics and 'gateway_store_errors_total{code="storage_full"}' in metrics


def test_a_write_lock_held_past_the_busy_timeout_answers_503_store_unavailable(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    gw = start_gateway(storage={"busy_timeout": 0.3}, matching={"max_per_endpoint_per_day": 0})
    bob = subscribe(gw, fake_push, "bob.near")
    with write_lock_held(gw.db_path):
        r = gw.post("/events", [row(1)], headers=AUTH)
        assert r.status_code == 503 and r.json()["code"] == "store_unavailable", r.text
        assert r.headers["Retry-After"] == "2"
        assert gw.http.get("/readyz").status_code == 503
        assert gw.http.get("/healthz").status_code == 200  # alive: a restart would not help
    assert gw.post("/events", [row(1)], headers=AUTH).status_code == 202
    fake_push.wait_count(bob, 1)
    assert wait_until(lambda: gw.http.get("/readyz").status_code == 200, 5)


# --- the dispatcher ------------------------------------------------------------------------------


def test_an_outcome_the_store_could_not_record_is_kept_and_the_push_is_not_sent_again(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    """The store goes away while a push is in flight, for longer than the claim's lease: the sent
    push's outcome is recorded when the store is back, and nobody sends it a second time."""
    gw = start_gateway(
        storage={"busy_timeout": 0.2},
        push={"claim_lease": 1.0, "poll_interval": 0.1},
        matching={"max_per_endpoint_per_day": 0},
    )
    bob = subscribe(gw, fake_push, "bob.near")
    lock_released = threading.Event()

    def lock_the_store_while_answering(sub: Subscription) -> Reply:
        def hold() -> None:
            with write_lock_held(gw.db_path):
                time.sleep(3.0)  # three leases long
            lock_released.set()

        threading.Thread(target=hold, daemon=True).start()
        time.sleep(0.2)  # the lock is taken before the answer leaves
        return Reply(201)

    fake_push.chooser = lock_the_store_while_answering
    gw.ingest([row(1)])
    fake_push.wait_count(bob, 1)
    fake_push.chooser = None
    assert lock_released.wait(10)
    assert wait_until(lambda: gw.query("SELECT status FROM deliveries")[0][0] == "sent", 10)
    time.sleep(2.0)  # past the lease: a lost outcome would have been claimed and sent again by now
    assert pushed(fake_push, bob) == Counter({1: 1})
    [(attempts,)] = gw.query("SELECT attempts FROM deliveries")
    assert attempts == 1


# --- watchers ------------------------------------------------------------------------------------


def test_a_watcher_holds_its_frame_through_a_store_outage_on_the_same_connection(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    """Paused, not reconnected: the frame that arrived while the store was locked is stored when the
    lock goes, the cursor moves once, and the source sees one session from start to end."""
    source = GraphQLWsServer([])
    try:
        gw = start_gateway(
            storage={"busy_timeout": 0.2},
            admin={"token": "adm"},
            watchers=[queryapi(source.url)],
            matching={"max_per_endpoint_per_day": 0},
        )
        bob = subscribe(gw, fake_push, "bob.near")
        # only now the first row: streamed before bob's stream existed it would reach nobody (a race
        # that failed CI once)
        source.add_rows([row(1, blockHeight=130000001)])
        fake_push.wait_count(bob, 1)

        def state() -> dict[str, Any]:
            return dict(gw.http.get("/healthz").json()["watchers"]["queryapi"])

        with write_lock_held(gw.db_path):
            source.add_rows([row(n, blockHeight=130000000 + n) for n in (2, 3)])
            assert wait_until(lambda: state()["store_paused"], 10)
            overview = gw.http.get("/admin/api/overview", headers={"Authorization": "Bearer adm"}).json()
            assert overview["store"]["state"] == "unavailable" and overview["watchers"]["queryapi"]["store_paused"]
            assert "gateway_watcher_store_paused" in gw.http.get("/metrics").text
        fake_push.wait_count(bob, 3)
        assert pushed(fake_push, bob) == Counter({1: 1, 2: 1, 3: 1})
        final = state()
        assert not final["store_paused"] and final["store_pauses"] == 1
        assert final["reconnects"] == 0 and len(source.sessions) == 1 and final["cursor"] == "130000003"
    finally:
        source.close()


@pytest.mark.anyio
async def test_a_social_index_poll_whose_cursor_read_fails_is_retried_and_the_watcher_keeps_running(
    tmp_path: Any,
) -> None:
    """The store failing under one account's poll (here: its cursor read, twice) is that poll's
    fault, retried with backoff; before, it ended the watcher and with it the process."""
    import anyio

    from gateway.config import load_settings
    from gateway.ingest import StoreSink
    from tests.fakesources import SocialIndexServer
    from tests.test_watchers import social_watcher
    from watchers import build_watcher

    class CursorReadsFailTwice(StoreSink):
        failures = 2

        async def cursor(self, key: str) -> str | None:
            if self.failures:
                self.failures -= 1
                raise StoreUnavailable("PostgreSQL: ConnectionResetError: [Errno 104] Connection reset by peer")
            return await super().cursor(key)

    index = SocialIndexServer()
    store = SqliteStore(str(tmp_path / "s.db"))
    await store.open()
    try:
        await store.upsert_stream("bob.near", "https://near.social", "https://push.test/a", "k", "a")
        settings = load_settings(None, {"watchers": [social_watcher(index.url)]}).watchers[0]
        watcher = build_watcher(settings, CursorReadsFailTwice(store, policy_from(MatchingSettings()), lambda: None))
        with anyio.move_on_after(3.0) as waited:
            await watcher.run()  # runs until cancelled; raising would end it early
        assert waited.cancelled_caught
        assert watcher.state.faults.get("poll_failed") == 2
        assert len(index.requests_for("bob.near")) >= 2  # it went on polling after the failures
    finally:
        await store.close()
        index.close()
