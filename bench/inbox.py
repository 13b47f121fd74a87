"""The inbox with a million rows for one account, next to the same account with a thousand, in one
run: list pages (first and deep, by cursor), the unread count, mark all read, and a claim batch
reading the badge. Both stores (PostgreSQL when it answers).

    .venv/bin/python -m bench.inbox [--rows 1000000]

Prints medians of repeated calls in milliseconds; asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import statistics
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg

from gateway.endpoints import endpoint_hash
from gateway.matcher import MatchPolicy
from gateway.models import Event
from gateway.store.base import Store
from gateway.store.postgres import PostgresStore
from gateway.store.sqlite import SqliteStore

POSTGRES_URL = os.environ.get("GATEWAY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
ENDPOINT = "https://fcm.googleapis.com/fcm/send/bench"
P256DH = "BK6Yl1dbZTCCfVKeKTPDsUajF-kMc4eGaewNzvFspZPkoX2F__HHuSj1buJNg0Zq9JF8lTYkfHZH2lv8UDBqqLI"
AUTH = "_WaWEIbW1xnIE4LSaho9uw"
ROW = json.dumps({"id": 0, "receiver": "big.near", "valueType": "like", "initiatedBy": "a.near"})
REPEAT = 21
BROWSERS = 50


async def median_ms(call: Callable[[], Awaitable[Any]]) -> float:
    times = []
    for _ in range(REPEAT):
        started = time.perf_counter()
        await call()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def fill_sqlite(path: str, account: str, rows: int) -> None:
    with sqlite3.connect(path) as db:
        db.executemany(
            "INSERT INTO inbox (account_id, event_key, value_type, row_json, created_at) VALUES (?, ?, 'like', ?, ?)",
            ((account, f"b:{account}:{i}", ROW, 1.0 + i) for i in range(rows)),
        )


async def fill_postgres(url: str, schema: str, account: str, rows: int) -> None:
    conn = await asyncpg.connect(url, server_settings={"search_path": schema})
    try:
        await conn.copy_records_to_table(
            "inbox",
            records=((account, f"b:{account}:{i}", "like", ROW, 1.0 + i) for i in range(rows)),
            columns=["account_id", "event_key", "value_type", "row_json", "created_at"],
        )
        await conn.execute("ANALYZE inbox")
    finally:
        await conn.close()


async def measure(store: Store, account: str) -> dict[str, float]:
    reader = endpoint_hash(ENDPOINT)
    first = await store.inbox(account, reader, limit=50)
    deep = first[-1].id // 2  # a cursor halfway down
    await store.mark_read(account, reader, ids=[i.id for i in first[:10]])
    figures = {
        "first page": await median_ms(lambda: store.inbox(account, reader, limit=50)),
        "deep page": await median_ms(lambda: store.inbox(account, reader, before=deep, limit=50)),
        "unread count": await median_ms(lambda: store.unread_count(account, reader)),
    }
    events = [
        Event(f"claim:{account}:{n}", "claim", account, "like", 1, {"id": n, "receiver": account}) for n in range(50)
    ]
    await store.ingest(events, MatchPolicy())
    figures["claim 50 (badge)"] = await median_ms(lambda: _claim_and_release(store))
    newest = await store.newest_inbox_id(account)
    figures["mark all read"] = await median_ms(lambda: store.mark_read(account, reader, up_to=newest))
    return figures


async def _claim_and_release(store: Store) -> None:
    claims = await store.claim(50, 30)
    await store.release([c.delivery_id for c in claims])


async def many_browsers(store: Store, fill: Callable[[str, int], Awaitable[None]]) -> float:
    """One event to an account with BROWSERS browsers, each with 2,000 unread: the claim reads as many badges."""
    account = "busy.near"
    for n in range(BROWSERS):
        await store.upsert_stream(account, "https://near.org", f"{ENDPOINT}/{n}", P256DH, AUTH)
    await store.ingest(
        [Event(f"busy:{n}", "busy", account, "like", 1, {"id": n, "receiver": account}) for n in range(2)],
        MatchPolicy(),
    )
    await _claim_all_and_record(store)  # the account's browsers start from here: fill them 2,000 unread
    await fill(account, 2000)
    await store.ingest([Event("busy:last", "busy", account, "like", 1, {"id": 9, "receiver": account})], MatchPolicy())
    return await median_ms(lambda: _claim_and_release(store))


async def _claim_all_and_record(store: Store) -> None:
    from gateway.store.base import Outcome

    claims = await store.claim(1000, 30)
    await store.record([Outcome(c.delivery_id, "sent", 201) for c in claims])


async def run_store(
    name: str, make: Callable[[], Store], fill: Callable[[str, int], Awaitable[None]], rows: int
) -> None:
    store = make()
    await store.open()
    try:
        for account, count in (("small.near", 1000), ("big.near", rows)):
            await store.upsert_stream(account, "https://near.org", ENDPOINT, P256DH, AUTH)
            await fill(account, count)
            figures = await measure(store, account)
            shown = "  ".join(f"{k} {v:.2f} ms" for k, v in figures.items())
            print(f"{name:10} {count:>9,} rows  {shown}")
        busy = await many_browsers(store, fill)
        print(f"{name:10} one event to {BROWSERS} browsers of one account, 2,000 unread each: claim {busy:.2f} ms")
    finally:
        await store.close()


async def main(rows: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = f"{tmp}/inbox.db"

        async def fill_lite(account: str, count: int) -> None:
            await asyncio.to_thread(fill_sqlite, path, account, count)

        await run_store("sqlite", lambda: SqliteStore(path), fill_lite, rows)
    try:
        probe = await asyncpg.connect(POSTGRES_URL, timeout=3)
        await probe.close()
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        print(f"postgresql skipped: no server at {POSTGRES_URL} ({type(exc).__name__})")
        return
    schema = f"bench_inbox_{uuid.uuid4().hex[:8]}"
    try:
        await run_store(
            "postgresql",
            lambda: PostgresStore(f"{POSTGRES_URL}?schema={schema}"),
            lambda account, count: fill_postgres(POSTGRES_URL, schema, account, count),
            rows,
        )
    finally:
        conn = await asyncpg.connect(POSTGRES_URL)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000, help="inbox rows of the big account")
    asyncio.run(main(parser.parse_args().rows))
