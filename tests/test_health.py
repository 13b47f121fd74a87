"""/healthz and /metrics cost the store O(1) however often they are asked (shared/security-review r16)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from gateway.health import CachedCounts
from gateway.store.sqlite import SqliteStore
from tests.conftest import Clock


def test_a_burst_of_callers_costs_one_read_and_a_fresh_value_is_reused() -> None:
    calls = 0
    clock = Clock()

    async def fetch() -> dict[str, int]:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.05)
        return {"streams": calls}

    async def main() -> None:
        cache = CachedCounts(fetch, max_age=1.0, clock=clock)
        got = await asyncio.gather(*(cache.get() for _ in range(1000)))
        assert calls == 1 and all(g == {"streams": 1} for g in got)
        clock.now += 0.5
        assert await cache.get() == {"streams": 1} and calls == 1
        clock.now += 0.6
        assert await cache.get() == {"streams": 2}
        cache.invalidate()
        assert await cache.get() == {"streams": 3}

    asyncio.run(main())


def test_a_store_failure_is_raised_to_every_waiter_and_not_remembered() -> None:
    attempts = 0

    async def fetch() -> dict[str, int]:
        nonlocal attempts
        attempts += 1
        await asyncio.sleep(0.01)
        if attempts == 1:
            raise ConnectionError("store down")
        return {"streams": 1}

    async def main() -> None:
        cache = CachedCounts(fetch)
        results = await asyncio.gather(*(cache.get() for _ in range(10)), return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results)
        assert await cache.get() == {"streams": 1} and attempts == 2

    asyncio.run(main())


@pytest.mark.slow
def test_health_counts_never_walk_the_finished_history(tmp_path: Path) -> None:
    import sqlite3

    async def main() -> tuple[float, float, dict[str, int]]:
        store = SqliteStore(str(tmp_path / "h.db"))
        await store.open()
        await store.close()
        now = time.time()
        with sqlite3.connect(tmp_path / "h.db") as db:
            db.executemany(
                "INSERT INTO deliveries (event_key, stream_id, endpoint_hash, status, created_at, due_at, finished_at)"
                " VALUES (?, 1, 'h', 'sent', ?, ?, ?)",
                ((f"k{i}", now, now, now) for i in range(400_000)),
            )
            db.execute(
                "INSERT INTO deliveries (event_key, stream_id, endpoint_hash, created_at, due_at) "
                "VALUES ('p', 1, 'h', ?, ?)",
                (now, now),
            )
        store = SqliteStore(str(tmp_path / "h.db"))
        await store.open()
        try:
            t = time.perf_counter()
            await store.counts()
            full = time.perf_counter() - t
            t = time.perf_counter()
            counts = await store.health_counts()
            health = time.perf_counter() - t
        finally:
            await store.close()
        return full, health, counts

    full, health, counts = asyncio.run(main())
    assert counts["deliveries_pending"] == 1
    assert health < full / 10, f"health {health * 1000:.1f} ms vs full {full * 1000:.1f} ms"

    async def burst() -> float:
        """1,000 probes at once and a dispatcher's claim among them: how long the claim waits."""
        store = SqliteStore(str(tmp_path / "h.db"))
        await store.open()
        try:
            cache = CachedCounts(store.health_counts)

            async def timed_claim() -> float:
                t = time.perf_counter()
                await store.claim(256, 60)
                return time.perf_counter() - t

            *_, claim_took = await asyncio.gather(*(cache.get() for _ in range(1000)), timed_claim())
            return float(claim_took)
        finally:
            await store.close()

    claim_took = asyncio.run(burst())
    assert claim_took < max(0.2, 3 * health), f"the claim waited {claim_took * 1000:.0f} ms behind the probes"
