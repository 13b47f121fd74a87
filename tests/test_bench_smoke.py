"""The benchmark harness still works: tiny bursts through a real gateway to the benchmark's own fake
push service (llhttp on uvloop, another server implementation than the tests'), every request
verified and decrypted, over plain HTTP and over TLS; and a small fan-out beside lone pushes.
Correctness only; the figures come from `python -m bench.run` and `python -m bench.fanout`."""

from __future__ import annotations

import pytest

from bench.fakepush import FakePushProcess
from bench.fanout import fanout_run
from bench.run import crypto_floor, gateway_burst


@pytest.mark.slow
@pytest.mark.parametrize(("tls", "processes"), [(False, 0), (True, 1)], ids=["http-default", "https-one-process"])
def test_bench_burst_delivers_verified_pushes(tls: bool, processes: int) -> None:
    fake = FakePushProcess(delay=0.0, sample_rate=1.0)
    try:
        result = gateway_burst(fake, receivers=2, per_receiver=5, events=3, tls=tls, processes=processes)
        stats = fake.stats()
        assert result["scheme"] == ("https" if tls else "http")
        assert result["pushes"] == stats["count"] == 30
        assert result["errors"] == [] and stats["errors"] == []
        assert len(stats["samples"]) == 30  # every push decrypted to its row
        assert {s[1]["receiver"] for s in stats["samples"]} == {"b0.near", "b1.near"}
    finally:
        fake.close()


def test_crypto_floor_runs() -> None:
    floor = crypto_floor(20)
    assert floor["us_per_push"] > 0 and floor["pywebpush_us"] > 0


@pytest.mark.slow
def test_bench_fanout_measures_the_lone_pushes_beside_a_fan_out(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakePushProcess(delay=0.0, sample_rate=0.0)
    monkeypatch.setenv("SSL_CERT_FILE", fake.cert)
    try:
        result = fanout_run(fake, fake.https, 3000, "processes = 1")
        assert result["errors"] == []
        assert result["followers"] == 3000 and result["singles"] >= 1  # each lone push decrypted
        assert 0 < result["p50_ms"] <= result["p99_ms"] <= result["max_ms"]
        assert all(lo <= hi for lo, hi in result["rss"].values())
    finally:
        fake.close()
