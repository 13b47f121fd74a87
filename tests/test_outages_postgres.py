"""PostgreSQL outages made deterministic: a TCP proxy on port 0 between the gateway and the server
that the test cuts (every connection reset, new ones refused) and restores, and real backend
terminations (``pg_terminate_backend``: the AdminShutdown a server restart sends).

End checks as in the fault-injection run: every accepted event reaches every stream, no process
exited, and pushes repeated are bounded by what was in flight when a cut came.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gateway.config import MatchingSettings
from gateway.exceptions import StoreRefused, StoreUnavailable
from gateway.matcher import policy_from
from gateway.models import NotificationRow
from gateway.store.postgres import PostgresStore
from tests.conftest import INGEST_TOKEN, row
from tests.fakepush import FakePushService, Reply, Subscription
from tests.fakesources import GraphQLWsServer, wait_until
from tests.tcpproxy import TcpProxy
from tests.test_e2e import subscribe
from tests.test_process import GatewayProcess
from tests.test_store import POSTGRES_URL
from watchers.decode import event_from_row

pytestmark = pytest.mark.anyio
AUTH = {"Authorization": f"Bearer {INGEST_TOKEN}"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    address = httpx.URL(POSTGRES_URL)
    tcp = TcpProxy(address.host, address.port or 5432)
    yield tcp
    tcp.close()


def via(proxy: TcpProxy, schema: str) -> str:
    """The test database's URL, through the proxy."""
    address = httpx.URL(POSTGRES_URL)
    userinfo = address.userinfo.decode()
    return f"postgresql://{userinfo}@127.0.0.1:{proxy.port}{address.path}?schema={schema}"


async def terminate_backends(ports: list[int]) -> int:
    """End the server sessions behind the proxy as a server restart would (57P01 admin shutdown)."""
    conn = await asyncpg.connect(POSTGRES_URL)
    try:
        rows = await conn.fetch(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE client_port = ANY($1::int[])", ports
        )
        return len(rows)
    finally:
        await conn.close()


def events(n: int, start: int = 1) -> list[Any]:
    return [event_from_row(NotificationRow.model_validate(row(i)), "t") for i in range(start, start + n)]


# --- the boundary --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (asyncpg.CannotConnectNowError("the database system is shutting down"), "store_unavailable"),
        (asyncpg.AdminShutdownError("terminating connection due to administrator command"), "store_unavailable"),
        (asyncpg.TooManyConnectionsError("sorry, too many clients already"), "store_unavailable"),
        (asyncpg.SerializationError("could not serialize access"), "store_unavailable"),
        (asyncpg.DeadlockDetectedError("deadlock detected"), "store_unavailable"),
        (asyncpg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"), "store_unavailable"),
        (asyncpg.DiskFullError("could not extend file: No space left on device"), "storage_full"),
        (ConnectionRefusedError(111, "Connection refused"), "store_unavailable"),
        (asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation"), "store_unavailable"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else v,
)
def test_postgres_transient_errors_are_store_unavailable(error: Exception, code: str) -> None:
    classified = PostgresStore.classify(error)
    assert isinstance(classified, StoreUnavailable) and classified.code == code


def test_postgres_data_errors_are_refusals_and_bugs_pass_unchanged() -> None:
    assert isinstance(PostgresStore.classify(asyncpg.NumericValueOutOfRangeError("out of range")), StoreRefused)
    assert isinstance(PostgresStore.classify(asyncpg.UntranslatableCharacterError("\\u0000")), StoreRefused)
    assert PostgresStore.classify(asyncpg.UndefinedTableError("relation does not exist")) is None
    assert PostgresStore.classify(KeyError("a bug")) is None


async def test_real_postgres_failures_are_classified_and_the_pool_reconnects(pg_schema: str, proxy: TcpProxy) -> None:
    store = PostgresStore(via(proxy, pg_schema), connect_timeout=2, command_timeout=5)
    await store.open()
    policy = policy_from(MatchingSettings())
    try:
        await store.ingest(events(1), policy, cursor=("w", "1"))
        [event] = events(1, start=2)
        with pytest.raises(StoreRefused):  # past int64: asyncpg refuses to encode it
            await store.ingest(
                [
                    event._replace(block_height=2**63)
                    if hasattr(event, "_replace")
                    else _with(event, block_height=2**63)
                ],
                policy,
            )
        with pytest.raises(StoreRefused):  # PostgreSQL text cannot hold NUL
            await store.ingest([_with(event, receiver="bob\x00.near")], policy)
        assert store.status.state == "up" and store.status.errors["refused"] == 2

        proxy.cut()
        with pytest.raises(StoreUnavailable):
            await store.get_cursor("w")
        assert store.status.state == "unavailable"
        with pytest.raises(StoreUnavailable):  # refused while cut: connection refused or reset
            await store.get_cursor("w")
        proxy.restore()
        assert await _eventually(store.get_cursor, "w") == "1"  # the pool replaced its dead connections
        assert store.status.state == "up" and store.status.outages == 1

        assert await terminate_backends(proxy.upstream_ports()) >= 1  # a real 57P01
        # asyncpg often reads the server's FATAL first and the pool replaces the connection unseen;
        # otherwise the one call on it fails as unavailable and the next succeeds.
        assert await _eventually(store.get_cursor, "w") == "1"
        assert store.status.state == "up" and store.status.outages in (1, 2)
    finally:
        await store.close()


def _with(event: Any, **changes: Any) -> Any:
    import dataclasses

    return dataclasses.replace(event, **changes)


async def _eventually(call: Any, *args: Any, attempts: int = 20) -> Any:
    for _ in range(attempts - 1):
        try:
            return await call(*args)
        except StoreUnavailable:
            await asyncio.sleep(0.1)
    return await call(*args)


# --- leadership ----------------------------------------------------------------------------------


async def test_a_leader_whose_lock_connection_died_can_no_longer_write(pg_schema: str) -> None:
    """Two processes never lead one watcher at once: the leader's writes go through the connection
    holding its advisory lock, so once that connection is gone (and another process took the lock)
    the old leader's next write fails instead of committing beside the new leader's."""
    url = f"{POSTGRES_URL}?schema={pg_schema}"
    first, second = PostgresStore(url), PostgresStore(url)
    await first.open()
    await second.open()
    policy = policy_from(MatchingSettings())
    try:
        async with first.leadership("watcher:w") as old:
            await first.ingest(events(1), policy, cursor=("w", "1"), lease=old)
            conn = await asyncpg.connect(POSTGRES_URL)
            holder = await conn.fetchval(
                "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted AND database = "
                "(SELECT oid FROM pg_database WHERE datname = current_database()) ORDER BY pid LIMIT 1"
            )
            await conn.fetchval("SELECT pg_terminate_backend($1)", holder)
            await conn.close()
            async with second.leadership("watcher:w") as new:  # the lock is free the moment its session ends
                await second.ingest(events(1, start=2), policy, cursor=("w", "2"), lease=new)
                with pytest.raises(StoreUnavailable):
                    await first.ingest(events(1, start=3), policy, cursor=("w", "3"), lease=old)
                await old.wait_lost()  # and the old leader finds out
            assert await first.get_cursor("w") == "2"
            assert await first.ingest(events(1, start=3), policy) is not None  # its pool is fine
    finally:
        await first.close()
        await second.close()


# --- a whole gateway -----------------------------------------------------------------------------


class Feeder:
    """A client posting one event every ``every`` seconds, each again until it is accepted (as a
    client honouring 503 + Retry-After would, only faster)."""

    def __init__(self, url: str, n: int, receiver: str = "bob.near", every: float = 0.03) -> None:
        self.url, self.n, self.receiver, self.every = url, n, receiver, every
        self.accepted: list[int] = []
        self.refused: Counter[str] = Counter()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=5) as http:
            for i in range(1, self.n + 1):
                while True:
                    try:
                        r = http.post("/events", json=[row(i, self.receiver)], headers=AUTH)
                    except httpx.HTTPError:
                        self.refused["no_answer"] += 1
                        time.sleep(0.1)
                        continue
                    if r.status_code == 202:
                        self.accepted.append(i)
                        break
                    assert r.status_code == 503, r.text
                    self.refused[r.json()["code"]] += 1
                    time.sleep(0.1)
                time.sleep(self.every)


def pairs(fake: FakePushService, subs: list[Subscription]) -> Counter[tuple[str, Any]]:
    ids = {s.id for s in subs}
    return Counter((r.sub_id, r.payload["id"]) for r in list(fake.received) if r.payload and r.sub_id in ids)


def cut_for(proxy: TcpProxy, seconds: float) -> None:
    proxy.cut()
    time.sleep(seconds)
    proxy.restore()


@pytest.mark.slow
def test_serve_on_postgres_rides_through_two_cuts(
    pg_schema: str, proxy: TcpProxy, start_gateway: Any, fake_push: FakePushService
) -> None:
    concurrency = 8
    gw = start_gateway(
        storage={"url": via(proxy, pg_schema), "connect_timeout": 1.0, "command_timeout": 5.0},
        push={"concurrency": concurrency, "claim_lease": 3.0},
        matching={"max_per_endpoint_per_day": 0},
    )
    subs = [subscribe(gw, fake_push, "bob.near") for _ in range(2)]
    for sub in subs:
        fake_push.always(sub, Reply(201, delay=0.02))
    feeder = Feeder(gw.url, 120)
    readiness_during_cuts = []
    for _ in range(2):
        assert wait_until(lambda: len(feeder.accepted) >= 20 + 40 * proxy.cuts, 30)
        proxy.cut()
        time.sleep(0.5)
        readiness_during_cuts.append(gw.http.get("/readyz").json().get("code"))
        health = gw.http.get("/healthz")
        assert health.status_code == 200 and health.json()["status"] == "degraded"
        time.sleep(2.0)
        proxy.restore()
    feeder.thread.join(60)
    assert feeder.accepted == list(range(1, 121))
    assert fake_push.wait_for(lambda: len(pairs(fake_push, subs)) == 240, timeout=30), len(pairs(fake_push, subs))
    repeated = sum(n - 1 for n in pairs(fake_push, subs).values())
    print(f"refused while cut: {dict(feeder.refused)}; pushes repeated: {repeated}")
    assert repeated <= 2 * concurrency  # at most what was in flight at each cut
    assert feeder.refused["store_unavailable"] > 0  # the cuts really refused requests
    assert readiness_during_cuts == ["store_unavailable", "store_unavailable"]
    assert not gw._future.done()  # the process never stopped
    assert wait_until(lambda: gw.http.get("/readyz").status_code == 200, 10)
    assert gw.http.get("/healthz").json()["store"]["outages"] >= 2
    assert fake_push.errors == []


@pytest.mark.slow
def test_api_two_workers_and_a_watcher_ride_through_cuts_and_a_backend_termination(
    tmp_path: Path, pg_schema: str, proxy: TcpProxy, fake_push: FakePushService, procs: list[GatewayProcess]
) -> None:
    rows = [row(n, f"acc{n % 2}.near", blockHeight=150_000_000 + n) for n in range(1, 161)]
    source = GraphQLWsServer([])
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[storage]
url = "{via(proxy, pg_schema)}"
connect_timeout = 1.0
command_timeout = 5.0
[vapid]
private_key_file = "{tmp_path / "vapid.pem"}"
subject = "mailto:ops@gateway.test"
[push]
allowed_endpoints = ["{fake_push.url}/"]
concurrency = 8
claim_lease = 3.0
poll_interval = 0.2
[ingest]
token = "{INGEST_TOKEN}"
[matching]
max_per_endpoint_per_day = 0
[limits]
per_ip_rate = 0
[[watchers]]
name = "queryapi"
kind = "queryapi"
url = "{source.url}"
start_block_height = 150000000
batch_size = 4
reconnect_initial_delay = 0.1
reconnect_max_delay = 0.5
""")
    subs = [fake_push.subscribe() for _ in range(4)]  # two browsers for each of two accounts
    for sub in subs:
        fake_push.always(sub, Reply(201, delay=0.02))
    try:
        api = GatewayProcess(tmp_path, ["--config", str(config)], command="api")
        workers = [GatewayProcess(tmp_path, ["--config", str(config)], command="worker") for _ in range(2)]
        watch = GatewayProcess(tmp_path, ["--config", str(config)], command="watch")
        everyone = [api, *workers, watch]
        procs += everyone
        assert watch.wait_printed("watcher queryapi leading")
        for i, sub in enumerate(subs):
            body = {"accountId": f"acc{i % 2}.near", "gateway": "https://near.org", "subscription": sub.as_json()}
            assert api.http.post("/subscriptions/create", json=body).status_code == 201
        feeder = Feeder(api.url, 60, receiver="acc0.near", every=0.05)  # and events through the API

        def trickle() -> None:  # the source's rows arrive over the run, across the outages
            for chunk in range(0, len(rows), 8):
                source.add_rows(rows[chunk : chunk + 8])
                time.sleep(0.15)

        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(0.8)
        cut_for(proxy, 2.5)
        time.sleep(1.0)
        assert asyncio.run(terminate_backends(proxy.upstream_ports())) >= 4  # a restart's admin shutdown
        time.sleep(1.0)
        cut_for(proxy, 2.5)
        assert len(source.sent_ids) < len(rows) or len(feeder.accepted) < 60, "the outages must come mid-stream"

        feeder.thread.join(60)
        expected = {(s.id, n) for n in range(1, 161) for i, s in enumerate(subs) if n % 2 == i % 2}
        expected |= {(s.id, n) for n in feeder.accepted for i, s in enumerate(subs) if i % 2 == 0}

        # The rows of the source and of the API share ids 1..60 for acc0.near but not their event
        # keys: each is its own notification. Count pushes per (browser, source) instead.
        def delivered() -> Counter[tuple[str, Any, str]]:
            return Counter(
                (r.sub_id, r.payload["id"], str(r.payload.get("blockHeight")))
                for r in list(fake_push.received)
                if r.payload
            )

        total = 160 * 2 + len(feeder.accepted) * 2
        assert fake_push.wait_for(lambda: len(delivered()) == total, timeout=60), f"{len(delivered())} of {total}"
        assert {(s, n) for s, n, _ in delivered()} == expected
        repeated = sum(n - 1 for n in delivered().values())
        print(f"pushes repeated: {repeated}; refused while cut: {dict(feeder.refused)}")
        assert repeated <= 3 * 2 * 8  # three outages, two workers, 8 in flight each
        assert all(p.proc.poll() is None for p in everyone), [p.proc.poll() for p in everyone]
        assert sum("watcher queryapi leading" in line for line in watch.stdout) >= 2  # leadership taken again
        assert not any(p.printed("watcher queryapi leading") for p in [api, *workers])
        health = api.http.get("/healthz").json()
        assert health["status"] == "ok" and health["store"]["outages"] >= 2
        assert api.http.get("/readyz").status_code == 200
        assert fake_push.errors == []
        for p in everyone:
            assert p.terminate() == 0
    finally:
        source.close()


def local_cluster() -> tuple[str, str] | None:
    """(version, name) of the Debian PostgreSQL cluster serving the test database, when this machine
    has one and we may restart it (root); None otherwise."""
    import os
    import shutil
    import subprocess

    if os.geteuid() != 0 or shutil.which("pg_lsclusters") is None:
        return None
    port = str(httpx.URL(POSTGRES_URL).port or 5432)
    listed = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True, check=False).stdout
    for line in listed.splitlines():
        version, name, cluster_port, status, *_ = line.split()
        if cluster_port == port and status == "online" and httpx.URL(POSTGRES_URL).host in ("127.0.0.1", "localhost"):
            return version, name
    return None


@pytest.mark.slow
def test_serve_rides_through_a_real_server_restart(
    pg_schema: str, start_gateway: Any, fake_push: FakePushService
) -> None:
    import subprocess

    cluster = local_cluster()
    if cluster is None:
        pytest.skip("no local Debian PostgreSQL cluster this user may restart (pg_ctlcluster, root)")
    gw = start_gateway(
        storage={"url": f"{POSTGRES_URL}?schema={pg_schema}", "connect_timeout": 1.0, "command_timeout": 5.0},
        push={"concurrency": 8, "claim_lease": 5.0},
        matching={"max_per_endpoint_per_day": 0},
    )
    subs = [subscribe(gw, fake_push, "bob.near") for _ in range(2)]
    feeder = Feeder(gw.url, 80)
    assert wait_until(lambda: len(feeder.accepted) >= 20, 30)
    subprocess.run(["pg_ctlcluster", *cluster, "restart", "-m", "fast"], check=True, timeout=60)
    feeder.thread.join(60)
    assert feeder.accepted == list(range(1, 81))
    assert fake_push.wait_for(lambda: len(pairs(fake_push, subs)) == 160, timeout=30), len(pairs(fake_push, subs))
    repeated = sum(n - 1 for n in pairs(fake_push, subs).values())
    print(f"refused during the restart: {dict(feeder.refused)}; pushes repeated: {repeated}")
    assert repeated <= 8
    assert not gw._future.done()
    assert gw.http.get("/healthz").json()["store"]["outages"] >= 1


@pytest.mark.slow
def test_a_social_index_watcher_rides_through_a_cut(
    pg_schema: str, proxy: TcpProxy, start_gateway: Any, fake_push: FakePushService
) -> None:
    """Its polls read each account's cursor: a store outage there fails that poll, not the process."""
    from tests.fakesources import SocialIndexServer
    from tests.test_watchers import social_watcher

    index = SocialIndexServer()
    like = {"type": "like", "item": {"type": "social", "path": "bob.near/post/main", "blockHeight": 1}}
    index.add("bob.near", "alice.near", 100, like)
    try:
        gw = start_gateway(
            storage={"url": via(proxy, pg_schema), "connect_timeout": 1.0, "command_timeout": 5.0},
            watchers=[social_watcher(index.url)],
            matching={"max_per_endpoint_per_day": 0},
        )
        bob = subscribe(gw, fake_push, "bob.near")
        assert wait_until(lambda: len(index.requests_for("bob.near")) >= 2, 10)  # started at the newest
        cut_for(proxy, 2.0)
        index.add("bob.near", "carol.near", 101, like)
        [push] = fake_push.wait_count(bob, 1, timeout=20)
        assert push.payload is not None and push.payload["initiatedBy"] == "carol.near"
        assert not gw._future.done()
    finally:
        index.close()
