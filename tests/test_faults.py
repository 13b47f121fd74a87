"""Fault injection: a push service answering a random mix of failures while the source keeps
dropping its connection; then the same with kill -9 of the gateway at random moments.

At the end every expected delivery is sent or dead-lettered with its reason, every endpoint the
push service called gone (410) has no stream left, no stream received an event twice (with kills:
only pushes in flight at a kill may be repeated), and the gateway's memory stayed flat.
"""

from __future__ import annotations

import random
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from bench.gateway_proc import proc_rss_mb
from tests.conftest import row
from tests.fakepush import FakePushService, Reply, Subscription
from tests.fakesources import GraphQLWsServer
from tests.test_process import GatewayProcess, write_config

ACCOUNTS = 20
BROWSERS_PER_ACCOUNT = 2
ROWS = 300
CONCURRENCY = 16
GONE_SHARE = 0.05
FINAL = ("sent", "gone", "cancelled", "dead", "rejected")


class Chaos:
    """The push service's answers: 10% 503, 5% 429 + Retry-After, 2% hang past the gateway's
    timeout, the rest 201; the endpoints in ``gone`` always answer 410."""

    def __init__(self, seed: int, gone: set[str]) -> None:
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.gone = gone

    def __call__(self, sub: Subscription) -> Reply:
        if sub.id in self.gone:
            return Reply(410, body=b"subscription expired")
        with self.lock:
            roll = self.rng.random()
        if roll < 0.10:
            return Reply(503, body=b"try later")
        if roll < 0.15:
            return Reply(429, headers={"Retry-After": "1"}, body=b"slow down")
        if roll < 0.17:
            return Reply(503, delay=1.5)  # the gateway gives up after 0.5 s: no answer for it
        return Reply(201, delay=0.005)


def _db(tmp_path: Path, sql: str) -> list[Any]:
    with sqlite3.connect(tmp_path / "gw.db", timeout=10) as conn:
        return conn.execute(sql).fetchall()


@contextmanager
def database_cut(tmp_path: Path, seconds: float) -> Iterator[None]:
    """The store unreachable for writes: another process holds SQLite's write lock past the gateway's
    busy timeout, so every write it tries fails SQLITE_BUSY until the lock is let go."""
    conn = sqlite3.connect(tmp_path / "gw.db", timeout=10, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    try:
        yield
        time.sleep(seconds)
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def run_fault_scenario(
    tmp_path: Path, fake_push: FakePushService, procs: list[GatewayProcess], kills: int, cuts: int = 2
) -> None:
    rng = random.Random(413 + kills)
    rows = [row(n, f"acc{n % ACCOUNTS}.near", blockHeight=140_000_000 + n // 2) for n in range(1, ROWS + 1)]
    source = GraphQLWsServer(rows)
    source.drop_after_frames = [rng.randint(2, 5) for _ in range(1000)]  # it drops every few frames
    source.gate.close()
    subs = {a: [fake_push.subscribe() for _ in range(BROWSERS_PER_ACCOUNT)] for a in range(ACCOUNTS)}
    every_sub = [s for group in subs.values() for s in group]
    gone = {s.id for s in rng.sample(every_sub, max(1, round(len(every_sub) * GONE_SHARE)))}
    fake_push.chooser = Chaos(seed=kills, gone=gone)
    config = write_config(
        tmp_path,
        fake_push,
        f"concurrency = {CONCURRENCY}\nrequest_timeout = 0.5\nretry_initial_delay = 0.2\nretry_max_delay = 1.0\n"
        # The lease outlasts a database cut (at most 3 s): with several sending processes (the default),
        # one whose outcomes wait for the store must record them before another may take their
        # claims again, or a push goes out twice (README, Outages).
        "claim_lease = 5.0\npoll_interval = 0.2\ngive_up_after = 120.0",
        f"""[limits]
per_ip_rate = 0
[[watchers]]
name = "queryapi"
kind = "queryapi"
url = "{source.url}"
start_block_height = 140000000
batch_size = 5
reconnect_initial_delay = 0.1
reconnect_max_delay = 0.5
""",
    )
    # Writes give up after half a second of another process's lock: a database cut is an outage.
    config.write_text(config.read_text().replace("[storage]\n", "[storage]\nbusy_timeout = 0.5\n", 1))
    rss: list[float] = []
    try:
        gw = GatewayProcess(tmp_path, ["--config", str(config)])
        procs.append(gw)
        for a, group in subs.items():
            for sub in group:
                body = {"accountId": f"acc{a}.near", "gateway": "https://near.social", "subscription": sub.as_json()}
                assert gw.http.post("/subscriptions/create", json=body).status_code == 201
        source.gate.open()

        def settled() -> bool:
            if gw.proc.poll() is None:
                rss.append(proc_rss_mb(gw.proc.pid))
            every_row_in = _db(tmp_path, "SELECT count(*) FROM events")[0][0] == ROWS
            open_deliveries = _db(tmp_path, "SELECT count(*) FROM deliveries WHERE status = 'pending'")[0][0]
            return bool(every_row_in and open_deliveries == 0)

        for _ in range(cuts):
            time.sleep(rng.uniform(0.3, 1.0))  # a random moment of the run
            with database_cut(tmp_path, rng.uniform(2.0, 3.0)):
                assert not settled(), "each database cut must come mid-run"
            assert gw.proc.poll() is None, "a database cut must not stop the gateway"

        for _ in range(kills):
            time.sleep(rng.uniform(0.3, 1.2))  # a random moment of the run
            gw.kill9()
            assert not settled(), "each kill must come mid-run"
            gw = GatewayProcess(tmp_path, ["--config", str(config)])
            procs.append(gw)

        deadline = time.monotonic() + 90
        while not settled():
            assert time.monotonic() < deadline, "the run did not settle in 90 s"
            time.sleep(0.5)

        # Every expected delivery ended, and ended for a reason.
        statuses = dict(_db(tmp_path, "SELECT status, count(*) FROM deliveries GROUP BY status"))
        assert set(statuses) <= set(FINAL), statuses
        assert _db(
            tmp_path, "SELECT count(*) FROM deliveries WHERE status IN ('dead', 'rejected') AND reason = ''"
        ) == [(0,)]
        # One delivery per (event, endpoint): the source's re-sent rows and the reconnects doubled nothing.
        assert _db(tmp_path, "SELECT count(*) - count(DISTINCT event_key || endpoint_hash) FROM deliveries") == [(0,)]

        accepted = Counter(
            (r.sub_id, r.payload["id"]) for r in fake_push.received if r.status == 201 and r.payload is not None
        )
        dead = _db(tmp_path, "SELECT count(*) FROM deliveries WHERE status = 'dead'")[0][0]
        expected = {(s.id, n) for n in range(1, ROWS + 1) for s in subs[n % ACCOUNTS] if s.id not in gone}
        missing = expected - set(accepted)
        assert len(missing) == dead, f"{len(missing)} deliveries neither accepted nor dead-lettered"
        assert set(accepted) <= expected
        # Gone endpoints: their streams were deleted, and nothing was accepted for them.
        remaining = {r[0] for r in _db(tmp_path, "SELECT endpoint FROM streams")}
        assert remaining == {s.endpoint for s in every_sub if s.id not in gone}
        assert not any(sub_id in gone for sub_id, _ in accepted)
        # Never the same event twice to a browser; with kills, only what was in flight at each kill
        # (a database cut repeats nothing: outcomes it kept from being recorded are recorded after).
        repeated = sum(count - 1 for count in accepted.values())
        assert repeated <= kills * CONCURRENCY, f"{repeated} repeated pushes"
        if kills == 0:
            assert repeated == 0
        assert fake_push.errors == []
        answered = Counter(r.status for r in fake_push.received)
        assert answered[429] and answered[503] and answered[410], answered  # the faults really happened
        print(f"kills={kills} cuts={cuts} answers={dict(answered)} deliveries={statuses} repeated={repeated}")
        if cuts:
            assert any("store unavailable" in line for p in procs for line in p.stderr), "the cuts were felt"
        print(f"gateway RSS {rss[0]:.0f} -> {rss[-1]:.0f} MB over {len(rss)} samples")
        # Memory stayed flat: the second half of the run used no more than the first half plus a margin.
        half = len(rss) // 2
        assert max(rss[half:]) <= max(rss[:half]) + 25, f"RSS grew: {rss[:half][-1]:.0f} -> {max(rss[half:]):.0f} MB"
        assert len(source.sessions) > 5  # the source really dropped the connection again and again
        assert gw.terminate() == 0
    finally:
        source.close()


@pytest.mark.slow
def test_fault_injection_run_ends_with_every_delivery_accounted_for(
    tmp_path: Path, fake_push: FakePushService, procs: list[GatewayProcess]
) -> None:
    run_fault_scenario(tmp_path, fake_push, procs, kills=0)


@pytest.mark.slow
def test_fault_injection_run_with_kill_9_at_random_moments(
    tmp_path: Path, fake_push: FakePushService, procs: list[GatewayProcess]
) -> None:
    run_fault_scenario(tmp_path, fake_push, procs, kills=3)
