"""Throughput with 1, 2 and 4 `gateway worker` processes on PostgreSQL, next to one `gateway serve` on
SQLite, in one run, against the same fake push service (40 ms answers).

    .venv/bin/python -m bench.scale [--quick]

PostgreSQL: GATEWAY_BENCH_POSTGRES_URL (default the machine's local server); each case uses its own schema.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid

import asyncpg

from bench.fakepush import FakePushProcess
from bench.gateway_proc import GatewayProc
from bench.run import gateway_burst, sample_row, setup_streams

POSTGRES_URL = os.environ.get("GATEWAY_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def drop_schema(schema: str) -> None:
    async def drop() -> None:
        conn = await asyncpg.connect(POSTGRES_URL)
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
        await conn.close()

    asyncio.run(drop())


def postgres_workers(
    fake: FakePushProcess, workers: int, receivers: int, per_receiver: int, events: int
) -> dict[str, float]:
    schema = f"gw_bench_{uuid.uuid4().hex[:10]}"
    url = f"{POSTGRES_URL}?schema={schema}"
    push = "poll_interval = 0.1"
    api = GatewayProc([fake.http], storage_url=url, command="api", push_toml=push)
    pool = [GatewayProc([fake.http], storage_url=url, command="worker", push_toml=push) for _ in range(workers)]
    try:
        setup_streams(api, fake, receivers, per_receiver, "s")
        rows = [sample_row(e * receivers + r, f"s{r}.near") for e in range(events) for r in range(receivers)]
        total = len(rows) * per_receiver
        fake.reset()
        cpu0 = sum(p.cpu() for p in [api, *pool])
        t0 = time.time()
        for i in range(0, len(rows), 50):
            api.ingest(rows[i : i + 50])
        stats = fake.wait_count(total)
        wall = stats["last"] - t0
        cpu = sum(p.cpu() for p in [api, *pool]) - cpu0
        return {"rate": total / wall, "cpu_us": cpu / total * 1e6, "errors": len(stats["errors"])}
    finally:
        for p in [api, *pool]:
            p.close()
        drop_schema(schema)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    events = 10 if args.quick else 50
    fake = FakePushProcess(delay=0.040)
    try:
        print(f"{os.cpu_count()} cores; push service answers after 40 ms; {events * 10 * 100} pushes per case")
        print("| setup | pushes/s | CPU µs/push (all gateway processes) |")
        print("| --- | ---: | ---: |")
        single = gateway_burst(fake, 10, 100, events)
        print(f"| 1 × gateway serve, SQLite | {single['rate']:.0f} | {single['cpu_us']:.0f} |")
        for workers in (1, 2, 4):
            r = postgres_workers(fake, workers, 10, 100, events)
            print(f"| gateway api + {workers} × gateway worker, PostgreSQL | {r['rate']:.0f} | {r['cpu_us']:.0f} |")
    finally:
        fake.close()


if __name__ == "__main__":
    main()
