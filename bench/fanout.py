"""A big fan-out and the lone notifications beside it (issue 18, point 5).

    .venv/bin/python -m bench.fanout [--followers 100000] [--plain-http]

One account with ``followers`` followers posts: ``followers`` rows (each to one follower, one stream
each, ``initiatedBy`` the poster) go to ``POST /events`` in batches of 1,000, as fast as the gateway
takes them. Meanwhile one row to another account (another initiator each time) every 100 ms. The
fake push service (bench/fakepush.py, its own process, 40 ms answers, TLS by default) decrypts
every push of that other account, so each one's event-to-push time is known.

Printed per run: when the last fan-out push was accepted (from the first POST), the event-to-push
p50/p99/max of the lone ones, and the RSS of every gateway process (the serving process, the
multiprocessing resource tracker, the sending processes), sampled every 250 ms, at the start and
after each fifth of the burst. Two runs in one: the fair share as configured by default, and
``fair_rate`` so high that the outbox is first-in first-out (the order before issue 18).
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

import httpx

from bench.fakepush import ALWAYS, FakePushProcess, subscription
from bench.gateway_proc import TOKEN, GatewayProc, proc_rss_mb
from bench.run import build_store, sample_row

BATCH = 1000
SINGLE_EVERY = 0.1


def rank(ordered: list[float], q: float) -> float:
    """The nearest-rank quantile of sorted values."""
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def family(pid: int) -> list[int]:
    """``pid`` and its child processes (the sending processes of `gateway serve`)."""
    children: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        children.extend(int(c) for c in text)
    return [pid, *children]


def fanout_run(fake: FakePushProcess, base: str, followers: int, push_toml: str) -> dict[str, Any]:
    workdir = Path(os.environ.get("TMPDIR", "/tmp")) / "bench-fanout"
    shutil.rmtree(workdir, ignore_errors=True)
    workdir.mkdir(parents=True)
    db = str(workdir / "gw.db")
    build_store(db, followers, 1, base)  # accounts g<i>.near, one stream each
    gw = GatewayProc([base], db=db, push_toml=push_toml)
    try:
        gw.create("solo.near", subscription(base, f"{ALWAYS}solo"))
        time.sleep(2.0)  # the sending processes start
        pids = family(gw.pid)
        rows = [{**sample_row(i, f"g{i}.near"), "initiatedBy": "star.near"} for i in range(followers)]
        rss: dict[int, list[float]] = {pid: [] for pid in pids}
        done = threading.Event()
        posted: dict[str, float] = {}

        def post_fanout() -> None:
            with httpx.Client(base_url=gw.url, timeout=300) as http:
                for i in range(0, len(rows), BATCH):
                    r = http.post("/events", json=rows[i : i + BATCH], headers={"Authorization": f"Bearer {TOKEN}"})
                    r.raise_for_status()
            posted["at"] = time.time()

        def sample_rss() -> None:
            while not done.is_set():
                for pid in pids:
                    rss[pid].append(proc_rss_mb(pid))
                time.sleep(0.25)

        fake.reset()
        sampler = threading.Thread(target=sample_rss, daemon=True)
        sampler.start()
        t0 = time.time()
        poster = threading.Thread(target=post_fanout, daemon=True)
        poster.start()
        singles = 0
        while True:
            stats = fake.stats()
            if stats["count"] >= followers + singles:
                break
            if time.time() - t0 > 600:
                raise TimeoutError(f"only {stats['count']} of {followers + singles} pushes in 600 s")
            row = {
                **sample_row(10_000_000 + singles, "solo.near"),
                "initiatedBy": f"user{singles}.near",
                "sentAt": time.time(),
            }
            if stats["count"] < followers:  # singles only while the fan-out drains
                gw.ingest([row])
                singles += 1
            time.sleep(SINGLE_EVERY)
        done.set()
        poster.join()
        stats = fake.stats()
        lone = sorted(a - p["sentAt"] for a, p in stats["samples"] if p.get("receiver") == "solo.near")
        return {
            "followers": followers,
            "accepted_s": stats["last"] - t0,
            "posted_s": posted["at"] - t0,
            "rate": followers / (stats["last"] - t0),
            "singles": len(lone),
            "p50_ms": rank(lone, 0.50) * 1000,
            "p99_ms": rank(lone, 0.99) * 1000,
            "max_ms": lone[-1] * 1000,
            "rss": {pid: (min(v), max(v)) for pid, v in rss.items() if v},
            # each process's RSS at the start and after each fifth of the burst: growth that stops
            # (caches filling) or goes on (something kept per delivery)
            "rss_fifths": {pid: [v[k * (len(v) - 1) // 5] for k in range(6)] for pid, v in rss.items() if v},
            "errors": stats["errors"][:3],
        }
    finally:
        gw.close()
        shutil.rmtree(workdir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--followers", type=int, default=100_000)
    parser.add_argument("--plain-http", action="store_true", help="send over plain HTTP instead of TLS")
    parser.add_argument("--processes", type=int, default=0, help="[push] processes (0: one per core)")
    args = parser.parse_args()
    # Only the lone pushes are decrypted: the followers' streams share one key pair (bench.run.build_store).
    fake = FakePushProcess(delay=0.040, sample_rate=0.0)
    try:
        base = fake.http if args.plain_http else fake.https
        os.environ["SSL_CERT_FILE"] = fake.cert  # the gateway trusts the fake's self-signed certificate
        print(f"machine: {os.cpu_count()} cores; {args.followers} followers; {'http' if args.plain_http else 'https'}")
        for name, toml in (("fair share (default)", ""), ("first in, first out", "fair_rate = 1e12")):
            result = fanout_run(fake, base, args.followers, f"processes = {args.processes}\n{toml}")
            rss = "; ".join("→".join(f"{mb:.0f}" for mb in v) + " MB" for v in result["rss_fifths"].values())
            print(
                f"{name}: {result['followers']} accepted in {result['accepted_s']:.1f} s ({result['rate']:.0f}/s; "
                f"posted in {result['posted_s']:.1f} s); lone pushes ({result['singles']}): "
                f"p50 {result['p50_ms']:.0f} ms, p99 {result['p99_ms']:.0f} ms, max {result['max_ms']:.0f} ms; "
                f"RSS per process at the start and each fifth of the burst: {rss}; errors {result['errors'] or 'none'}"
            )
    finally:
        fake.close()


if __name__ == "__main__":
    main()
