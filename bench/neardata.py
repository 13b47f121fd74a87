"""NEAR blocks: what reading the chain costs the neardata watcher.

    .venv/bin/python -m bench.neardata [--quick]

Sections: 1 JSON parser choice for a block (stdlib json, orjson, msgspec generic, the project's
``watchers.chain.parse_block``); 2 decode + match CPU per block against 1, 10k and 1M subscribed
accounts; 3 catch-up blocks/s of the real ``NeardataWatcher`` into a real SQLite store, fed over local
HTTP by ``tests.fakeneardata.FakeNeardata`` (its own process, on the other core); 4 the cost of
reading the subscribed-accounts set (``store.accounts()``) with 1M streams.

CPU figures are process CPU time (``time.process_time_ns``), every thread of this process included,
with the gateway's own GC settings (objects from import frozen, young threshold 20,000). Prints
figures; asserts nothing.
"""

from __future__ import annotations

import argparse
import base64
import copy
import gc
import importlib.util
import json
import multiprocessing
import os
import secrets
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
import msgspec
import orjson
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.config import NeardataWatcherSettings
from gateway.ingest import StoreSink
from gateway.matcher import MatchPolicy
from gateway.runtime import GC_YOUNG_THRESHOLD
from gateway.store import open_store
from watchers.chain import decode_block, parse_block
from watchers.neardata import ACCOUNTS_RELOAD, CHANGE_SLACK, NeardataWatcher

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures" / "neardata"
REAL = "107503704"  # a real 145 KB mainnet block
BIG = "synthetic 4 MB"
BIG_BYTES = 4_000_000
MATCHED = "fees.sweat"  # a receiver of the real block (an ft_transfer of token.sweat)
DEAD_RPC = "http://127.0.0.1:9/"  # ft_metadata is asked here: refused at once, tokens shown in raw units
ACCOUNTS_REFRESH = 2.0  # NeardataWatcherSettings.accounts_refresh default


def compact(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def fixture_bodies() -> dict[str, bytes]:
    """Every fixture block as its file's bytes, and the synthetic 4 MB block (compact JSON)."""
    bodies = {p.stem: p.read_bytes() for p in sorted(FIXTURES.glob("*.json"))}
    bodies[BIG] = compact(big_block(json.loads(bodies[REAL])))
    return bodies


def big_block(base: dict[str, Any], at_least: int = BIG_BYTES) -> dict[str, Any]:
    """The real block with its shards' receipt_execution_outcomes, state_changes and chunk transactions
    repeated (whole copies, in order) until its compact JSON is at least ``at_least`` bytes."""
    big = copy.deepcopy(base)
    while len(compact(big)) < at_least:
        for src, dst in zip(base["shards"], big["shards"], strict=True):
            dst["receipt_execution_outcomes"].extend(copy.deepcopy(src["receipt_execution_outcomes"]))
            dst["state_changes"].extend(copy.deepcopy(src["state_changes"]))
            if src.get("chunk") and dst.get("chunk"):
                dst["chunk"]["transactions"].extend(copy.deepcopy(src["chunk"]["transactions"]))
    return big


def cpu_ms(fns: dict[str, Callable[[], Any]], runs: int) -> dict[str, float]:
    """Median process CPU ms of each ``fn()`` over ``runs`` calls. The functions take turns (one call
    of each per round), so that the machine's drift falls on all of them alike; one warm-up call each;
    freeing a result is not counted."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            t = time.process_time_ns()
            result = fn()
            samples[name].append((time.process_time_ns() - t) / 1e6)
            del result
    return {name: statistics.median(values) for name, values in samples.items()}


def fmt_ms(ms: float) -> str:
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 10 else f"{ms:.1f}"


# --- 1. JSON parser choice ---------------------------------------------------------------------


def parsers(bodies: dict[str, bytes], runs: int) -> None:
    decoders: dict[str, Callable[[bytes], Any]] = {
        "json.loads": json.loads,
        "orjson.loads": orjson.loads,
        "msgspec.json.decode": msgspec.json.decode,
        "chain.parse_block": parse_block,
    }
    print(f"\n1 JSON parser for a block: CPU ms per parse, median of {runs} runs (the parsers take turns)")
    print("| block | bytes | " + " | ".join(decoders) + " |")
    print("| --- | ---: |" + " ---: |" * len(decoders))
    for name, body in bodies.items():
        fns = {label: (lambda d=decode, b=body: d(b)) for label, decode in decoders.items()}
        ms = cpu_ms(fns, runs)  # type: ignore[arg-type]
        print(f"| {name} | {len(body):,} | " + " | ".join(fmt_ms(ms[label]) for label in decoders) + " |")


# --- 2. decode + match --------------------------------------------------------------------------


def subscribed(n: int) -> frozenset[str]:
    """``n`` subscribed accounts: one receiver of the real block and filler names that match nothing."""
    return frozenset([MATCHED, *(f"acct{i}.near" for i in range(n - 1))])


def decode_and_match(bodies: dict[str, bytes], sizes: list[int], runs: int) -> None:
    print(
        f"\n2 parse_block + decode_block per block: CPU ms, median of {runs} runs (the sizes take turns; "
        f"accounts: {MATCHED} + acct<i>.near filler; the store side of matching not included)"
    )
    sets = {n: subscribed(n) for n in sizes}
    print("| block | bytes | " + " | ".join(f"{n:,} account{'s' * (n > 1)}" for n in sizes) + " | events |")
    print("| --- | ---: |" + " ---: |" * len(sizes) + " ---: |")
    for name, body in bodies.items():

        def run(accounts: frozenset[str], body: bytes = body) -> Any:
            block, _ = parse_block(body)
            return None if block is None else decode_block(block, source="neardata", accounts=accounts)

        ms = cpu_ms({str(n): (lambda a=accounts: run(a)) for n, accounts in sets.items()}, runs)  # type: ignore[misc]
        decoded = run(sets[sizes[-1]])
        events = 0 if decoded is None else len(decoded.events)
        print(f"| {name} | {len(body):,} | " + " | ".join(fmt_ms(ms[str(n)]) for n in sizes) + f" | {events} |")


# --- 3. catch-up from a local fake neardata server ----------------------------------------------


def mixed_plan(n: int) -> list[str | None]:
    """Fixture blocks for ``n`` consecutive heights: of every 10, six of the real mainnet block, two
    of 200000000, one testnet block and one skipped height (``null``)."""
    cycle: list[str | None] = [REAL, REAL, REAL, REAL, REAL, REAL, "200000000", "200000000", "testnet-185758655", None]
    return [cycle[i % len(cycle)] for i in range(n)]


def _fake_process(conn: Connection, first: int, names: list[str | None], core: int | None) -> None:
    """The fake neardata server, in its own process (so that its CPU is not counted as the watcher's)."""
    if core is not None:
        os.sched_setaffinity(0, {core})
    from tests.fakeneardata import FakeNeardata

    fake = FakeNeardata()
    cut = 0

    def handle_error(request: Any, client_address: Any) -> None:
        # The request held open past the tip when a run ends: the watcher has gone when it is answered.
        nonlocal cut
        if isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
            cut += 1
        else:
            traceback.print_exc()

    fake._server.handle_error = handle_error  # type: ignore[method-assign]
    # TCP_NODELAY on the fake's sockets: http.server writes the head and the body apart, and without it
    # every answer that fits in a few segments (a null height, a 40 kB block) waits ~40 ms for the
    # client's delayed ACK (Nagle); the watcher would be timed waiting for the fake.
    fake._server.RequestHandlerClass.disable_nagle_algorithm = True  # type: ignore[attr-defined]
    blocks: dict[str, Any] = {}
    for name in set(names):
        if name == BIG:
            blocks[name] = big_block(json.loads((FIXTURES / f"{REAL}.json").read_bytes()))
        elif name is not None:
            blocks[name] = json.loads((FIXTURES / f"{name}.json").read_bytes())
    for i, name in enumerate(names):
        fake.produce(first + i, blocks[name] if name else None)
    sizes = [len(fake.blocks[first + i]) for i in range(len(names))]
    conn.send((fake.url, statistics.mean(sizes)))
    conn.recv()  # stop
    conn.send((len(fake.requests), cut))
    fake.close()


def web_push_keys() -> tuple[str, str]:
    def b64url(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = key.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    return b64url(point), b64url(secrets.token_bytes(16))


async def catch_up(url: str, first: int, last: int, concurrency: int, workdir: Path) -> dict[str, Any]:
    """The watcher from ``first`` until the stored cursor is ``last``: wall and process CPU time."""
    store = open_store(f"sqlite:///{workdir}/b.db")
    await store.open()
    p256dh, auth = web_push_keys()
    await store.upsert_stream(MATCHED, "https://near.org", "https://fcm.googleapis.com/fcm/send/x", p256dh, auth)
    settings = NeardataWatcherSettings(
        kind="neardata",
        name="bench",
        url=url,
        start_block_height=first,
        concurrency=concurrency,
        rpc_url=DEAD_RPC,
    )
    watcher = NeardataWatcher(settings, StoreSink(store, MatchPolicy(), lambda: None))
    cursor: str | None = None
    try:
        async with anyio.create_task_group() as tg:
            cpu0, t0 = time.process_time(), time.perf_counter()
            tg.start_soon(watcher.run)
            with anyio.move_on_after(300) as scope:
                while True:
                    # The watcher's own state (no I/O) says when to ask the store, so that polling costs
                    # next to nothing; the stored cursor is the one that counts.
                    seen = watcher.state.cursor
                    if seen is not None and int(seen) >= last:
                        cursor = await store.get_cursor("bench")
                        if cursor is not None and int(cursor) >= last:
                            break
                    await anyio.sleep(0.002)
            cpu, wall = time.process_time() - cpu0, time.perf_counter() - t0
            tg.cancel_scope.cancel()
        counts = await store.counts()
    finally:
        await store.close()
    blocks = last - first + 1
    return {
        "concurrency": concurrency,
        "reached": not scope.cancelled_caught,
        "cursor": cursor,
        "state": watcher.state.snapshot(),
        "blocks": blocks,
        "wall": wall,
        "rate": blocks / wall,
        "cpu_ms": cpu / blocks * 1000,
        "counts": counts,
    }


def catch_ups(label: str, names: list[str | None], runs: int, pin: bool) -> None:
    heights = len(names)
    first = 150_000_000
    last = first + heights - 1
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    fake = ctx.Process(target=_fake_process, args=(child, first, names, 1 if pin else None), daemon=True)
    fake.start()
    url, mean_bytes = parent.recv()
    results: dict[int, list[dict[str, Any]]] = {1: [], 4: []}
    use_uvloop = importlib.util.find_spec("uvloop") is not None
    try:
        for _ in range(runs):
            for concurrency in results:
                workdir = Path(tempfile.mkdtemp(prefix="bench-neardata-"))
                try:
                    r = anyio.run(
                        catch_up, url, first, last, concurrency, workdir, backend_options={"use_uvloop": use_uvloop}
                    )
                finally:
                    shutil.rmtree(workdir, ignore_errors=True)
                results[concurrency].append(r)
                if not r["reached"]:
                    print(f"   !! concurrency {concurrency}: cursor {r['cursor']} after 300 s, not {last}")
                    print(f"   !! watcher state: {r['state']}")
    finally:
        parent.send("stop")
        requests, cut = parent.recv()
        fake.join(10)
    skipped = names.count(None)
    print(
        f"\n{label} catch-up, {heights} heights ({heights - skipped} blocks, {skipped} skipped; mean body "
        f"{mean_bytes / 1000:.0f} kB) from FakeNeardata over local HTTP (TCP_NODELAY; its own process"
        f"{', on core 1; this process on core 0' if pin else ''}), into a SQLite store with one "
        f"{MATCHED} stream; {'uvloop' if use_uvloop else 'asyncio'}; median of {runs} runs"
    )
    print("| concurrency | blocks/s (wall) | CPU ms/block | blocks per CPU-second | deliveries | runs, blocks/s |")
    print("| ---: | ---: | ---: | ---: | ---: | --- |")
    for concurrency, rs in results.items():
        rate = statistics.median(r["rate"] for r in rs)
        cpu = statistics.median(r["cpu_ms"] for r in rs)
        deliveries = rs[-1]["counts"].get("deliveries_pending", 0)
        runs_text = ", ".join(f"{r['rate']:.0f}" for r in rs)
        print(f"| {concurrency} | {rate:.1f} | {cpu:.2f} | {1000 / cpu:.0f} | {deliveries} | {runs_text} |")
    faults = {k: v for r in results[1] + results[4] for k, v in r["state"]["faults"].items()}
    print(
        f"   fake served {requests} requests ({cut} held past the tip, answered after the run had ended); "
        f"watcher faults: {faults or 'none'}"
    )


# --- 4. reading the subscribed-accounts set ------------------------------------------------------


async def accounts_cost(path: str, runs: int) -> dict[str, float]:
    """CPU ms of the watcher's two reads: the whole set (and the set made of it), and what changed."""
    store = open_store(f"sqlite:///{path}")
    await store.open()
    full, changed, found = [], [], 0
    try:
        for _ in range(runs):
            cpu = time.process_time_ns()
            accounts = set(await store.accounts())
            full.append((time.process_time_ns() - cpu) / 1e6)
            del accounts
            cpu = time.process_time_ns()
            found = len(await store.accounts_updated_since(time.time() - CHANGE_SLACK))
            changed.append((time.process_time_ns() - cpu) / 1e6)
    finally:
        await store.close()
    return {"full": statistics.median(full), "changed": statistics.median(changed), "found": found}


RECENT = 10  # streams created or refreshed within the last CHANGE_SLACK seconds


def fill_streams(path: str, n: int) -> None:
    async def migrate() -> None:
        store = open_store(f"sqlite:///{path}")
        await store.open()
        await store.close()

    anyio.run(migrate)
    p256dh, auth = web_push_keys()
    now = time.time()
    with sqlite3.connect(path) as db:
        for start in range(0, n, 50_000):
            db.executemany(
                "INSERT INTO streams (account_id, gateway, endpoint, endpoint_hash, p256dh, auth, created_at, "
                "updated_at) VALUES (?,?,?,?,?,?,?,?)",
                (
                    (
                        f"acct{i}.near",
                        "https://near.org",
                        f"https://fcm.googleapis.com/fcm/send/{i}",
                        f"h{i}",
                        p256dh,
                        auth,
                        now - 3600,
                        now if i >= n - RECENT else now - 3600,
                    )
                    for i in range(start, min(n, start + 50_000))
                ),
            )


def accounts_reads(sizes: list[int], runs: int) -> None:
    print(
        f"\n4 the subscribed-accounts set (SQLite, one stream per account, {RECENT} changed lately), CPU ms, median "
        f"of {runs} runs; the watcher asks what changed every accounts_refresh = {ACCOUNTS_REFRESH:g} s and "
        f"reads the whole set every {ACCOUNTS_RELOAD:g} s"
    )
    print("| streams | whole set (accounts() + set) | what changed (accounts_updated_since) | found | CPU share |")
    print("| ---: | ---: | ---: | ---: | ---: |")
    for n in sizes:
        workdir = Path(tempfile.mkdtemp(prefix="bench-neardata-accounts-"))
        try:
            path = str(workdir / "a.db")
            fill_streams(path, n)
            r = anyio.run(accounts_cost, path, runs)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        share = r["full"] / (ACCOUNTS_RELOAD * 1000) + r["changed"] / (ACCOUNTS_REFRESH * 1000)
        print(f"| {n:,} | {r['full']:.1f} | {r['changed']:.2f} | {r['found']:.0f} | {share:.2%} |")


# --- the run ------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer runs, no 1M-account cases (a smoke run)")
    args = parser.parse_args()
    q = args.quick
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 50, 50)  # as `gateway serve` does (gateway/runtime.py)
    pin = (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")
    if pin:
        os.sched_setaffinity(0, {0})
    print(
        f"machine: {os.cpu_count()} cores; this process {'pinned to core 0' if pin else 'not pinned'}; "
        f"CPU = time.process_time_ns of this process"
    )
    bodies = fixture_bodies()
    runs = 5 if q else 21
    parsers(bodies, runs)
    sizes = [1, 10_000] if q else [1, 10_000, 1_000_000]
    decode_and_match(bodies, sizes, runs)
    catch_ups("3", mixed_plan(100 if q else 300), 1 if q else 3, pin)
    catch_ups("3b", [BIG] * (10 if q else 40), 1 if q else 3, pin)
    accounts_reads([10_000, 100_000] if q else [10_000, 1_000_000], 5)


if __name__ == "__main__":
    main()
