"""The benchmark harness still works: a tiny burst through a real gateway to the benchmark's own fake
push service (aiohttp, another server implementation), every request verified and decrypted.
Correctness only; the figures come from `python -m bench.run`."""

from __future__ import annotations

import pytest

from bench.fakepush import FakePushProcess
from bench.run import crypto_floor, gateway_burst


@pytest.mark.slow
def test_bench_burst_delivers_verified_pushes() -> None:
    fake = FakePushProcess(delay=0.0, sample_rate=1.0)
    try:
        result = gateway_burst(fake, receivers=2, per_receiver=5, events=3)
        stats = fake.stats()
        assert result["pushes"] == stats["count"] == 30
        assert result["errors"] == [] and stats["errors"] == []
        assert len(stats["samples"]) == 30  # every push decrypted to its row
        assert {s[1]["receiver"] for s in stats["samples"]} == {"b0.near", "b1.near"}
    finally:
        fake.close()


def test_crypto_floor_runs() -> None:
    floor = crypto_floor(20)
    assert floor["us_per_push"] > 0 and floor["pywebpush_us"] > 0
