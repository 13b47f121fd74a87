"""How the dispatcher treats each push-service answer, through a real running gateway."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from gateway.dispatcher import SEAL_CHUNK
from gateway.webpush import PushAnswer, PushClient, SealedPush
from tests.conftest import RunningGateway, row
from tests.fakepush import FakePushService, Reply
from tests.test_e2e import subscribe


def wait_status(gw: RunningGateway, status: str, n: int = 1, timeout: float = 10.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = gw.query("SELECT * FROM deliveries WHERE status = ?", status)
        if len(rows) >= n:
            return rows
        time.sleep(0.05)
    raise AssertionError(
        f"no {n} deliveries reached {status!r}: {[dict(r) for r in gw.query('SELECT * FROM deliveries')]}"
    )


def test_410_prunes_every_stream_of_the_endpoint(gateway: RunningGateway, fake_push: FakePushService) -> None:
    sub = subscribe(gateway, fake_push, "bob.near")
    subscribe(gateway, fake_push, "carol.near", sub=sub)
    keep = subscribe(gateway, fake_push, "bob.near")
    fake_push.always(sub, Reply(410))
    gateway.ingest(row(1))
    fake_push.wait_count(sub, 1, status=410)
    fake_push.wait_count(keep, 1)
    wait_status(gateway, "gone")
    streams = gateway.query("SELECT account_id, endpoint FROM streams")
    assert [(s["account_id"], s["endpoint"]) for s in streams] == [("bob.near", keep.endpoint)]
    assert gateway.ingest(row(2, "carol.near")).json()["deliveries"] == 0


def test_404_also_means_gone(gateway: RunningGateway, fake_push: FakePushService) -> None:
    sub = subscribe(gateway, fake_push)
    fake_push.always(sub, Reply(404))
    gateway.ingest(row(1))
    wait_status(gateway, "gone")
    assert gateway.query("SELECT * FROM streams") == []


def test_429_retry_after_is_honoured(gateway: RunningGateway, fake_push: FakePushService) -> None:
    sub = subscribe(gateway, fake_push)
    fake_push.script(sub, Reply(429, {"Retry-After": "2"}))
    gateway.ingest(row(1))
    [throttled] = fake_push.wait_count(sub, 1, status=429)
    [sent] = fake_push.wait_count(sub, 1, status=201, timeout=15)
    # The retry backoff alone would be ≤ 0.2 s; the push service asked for 2 s.
    assert sent.at - throttled.at >= 1.9
    assert sent.payload == throttled.payload
    [delivery] = wait_status(gateway, "sent")
    assert delivery["attempts"] == 2


def test_5xx_then_success_is_retried_with_backoff(gateway: RunningGateway, fake_push: FakePushService) -> None:
    sub = subscribe(gateway, fake_push)
    fake_push.script(sub, Reply(500), Reply(502), Reply(503))
    gateway.ingest(row(1))
    fake_push.wait_count(sub, 1, status=201)
    statuses = [r.status for r in fake_push.for_sub(sub, status=None)]
    assert statuses == [500, 502, 503, 201]
    times = [r.at for r in fake_push.for_sub(sub, status=None)]
    assert all(b - a >= 0.09 for a, b in itertools.pairwise(times))  # jittered [d/2, d], d ≥ 0.2
    [delivery] = wait_status(gateway, "sent")
    assert delivery["attempts"] == 4


def test_timeout_is_retried(start_gateway: Any, fake_push: FakePushService) -> None:
    gw = start_gateway(push={"request_timeout": 0.5})
    sub = subscribe(gw, fake_push)
    fake_push.script(sub, Reply(201, delay=1.5))
    gw.ingest(row(1))
    pushes = fake_push.wait_count(sub, 2, timeout=15)
    assert len(pushes) == 2  # the first answered too late; the retry went through
    wait_status(gw, "sent")


def test_401_keeps_the_stream_and_marks_the_delivery_rejected(
    gateway: RunningGateway, fake_push: FakePushService, caplog: pytest.LogCaptureFixture
) -> None:
    sub = subscribe(gateway, fake_push)
    fake_push.always(sub, Reply(401))
    gateway.ingest([row(1), row(2)])
    rejected = wait_status(gateway, "rejected", 2)
    assert {r["http_status"] for r in rejected} == {401}
    assert len(gateway.query("SELECT * FROM streams")) == 1
    assert len(fake_push.for_sub(sub, status=401)) == 2  # never retried
    errors = [r for r in caplog.records if "rejected our VAPID" in r.getMessage()]
    assert len(errors) == 1  # logged once per origin, not per delivery
    assert sub.id not in errors[0].getMessage()  # no full endpoint in logs


def test_413_retries_once_with_a_smaller_payload(gateway: RunningGateway, fake_push: FakePushService) -> None:
    sub = subscribe(gateway, fake_push)
    fake_push.script(sub, Reply(413))
    gateway.ingest(row(1, value_type="custom", message="x" * 3000))
    [big] = fake_push.wait_count(sub, 1, status=413)
    [small] = fake_push.wait_count(sub, 1, status=201)
    assert small.plaintext_bytes < big.plaintext_bytes and small.plaintext_bytes <= 1024
    assert small.payload is not None and small.payload["id"] == 1 and small.payload["receiver"] == "bob.near"


def test_413_twice_is_dead_lettered(gateway: RunningGateway, fake_push: FakePushService) -> None:
    sub = subscribe(gateway, fake_push)
    fake_push.always(sub, Reply(413))
    gateway.ingest(row(1))
    [dead] = wait_status(gateway, "dead")
    assert "too large" in dead["reason"] and dead["attempts"] == 2


def test_other_4xx_is_dead_lettered_and_inspectable(gateway: RunningGateway, fake_push: FakePushService) -> None:
    sub = subscribe(gateway, fake_push)
    fake_push.always(sub, Reply(400, body=b"UnauthorizedRegistration"))
    gateway.ingest(row(1))
    [dead] = wait_status(gateway, "dead")
    assert dead["http_status"] == 400 and "UnauthorizedRegistration" in dead["reason"]
    assert len(gateway.query("SELECT * FROM streams")) == 1


def test_redirect_is_not_followed(gateway: RunningGateway, fake_push: FakePushService) -> None:
    sub = subscribe(gateway, fake_push)
    other = fake_push.subscribe()
    fake_push.always(sub, Reply(307, {"Location": other.endpoint}))
    gateway.ingest(row(1))
    wait_status(gateway, "dead")
    assert fake_push.for_sub(other, status=None) == []


def test_retries_give_up_after_the_configured_age(start_gateway: Any, fake_push: FakePushService) -> None:
    gw = start_gateway(push={"give_up_after": 1.0, "retry_initial_delay": 0.3})
    sub = subscribe(gw, fake_push)
    fake_push.always(sub, Reply(503))
    gw.ingest(row(1))
    [dead] = wait_status(gw, "dead", timeout=15)
    assert dead["reason"].startswith("gave up after") and dead["http_status"] == 503
    assert 1 <= len(fake_push.for_sub(sub, status=503)) <= 6


def test_concurrency_per_push_service_is_bounded(start_gateway: Any, fake_push: FakePushService) -> None:
    gw = start_gateway(push={"concurrency_per_origin": 3}, matching={"max_per_endpoint_per_day": 0})
    subs = [subscribe(gw, fake_push, f"acc{i}.near") for i in range(4)]
    for sub in subs:
        fake_push.always(sub, Reply(201, delay=0.2))
    gw.ingest([row(n, f"acc{n % 4}.near") for n in range(12)])
    for sub in subs:
        fake_push.wait_count(sub, 3, timeout=15)
    assert fake_push.max_in_flight == 3  # reached, never exceeded


def test_a_claimed_batch_is_sealed_in_chunks_the_first_going_out_before_the_rest_are_sealed(
    start_gateway: Any, fake_push: FakePushService, monkeypatch: pytest.MonkeyPatch
) -> None:
    sealed: list[str] = []
    sealed_at_first_post: list[int] = []
    real_seal, real_post = PushClient.seal, PushClient.post

    def seal(self: PushClient, endpoint: str, *args: Any) -> SealedPush:
        sealed.append(endpoint)
        return real_seal(self, endpoint, *args)

    async def post(self: PushClient, push: SealedPush) -> PushAnswer:
        if not sealed_at_first_post:
            sealed_at_first_post.append(len(sealed))
        return await real_post(self, push)

    monkeypatch.setattr(PushClient, "seal", seal)
    monkeypatch.setattr(PushClient, "post", post)
    gw = start_gateway(
        matching={"max_per_endpoint_per_day": 0}, limits={"per_ip_rate": 0, "max_streams_per_account": 0}
    )
    subs = [subscribe(gw, fake_push, "bob.near") for _ in range(3 * SEAL_CHUNK)]
    gw.ingest(row(1))  # one claim of all of them
    assert fake_push.wait_for(lambda: len(fake_push.received) == len(subs), timeout=15)
    assert sealed_at_first_post == [SEAL_CHUNK]  # back to back, then sent while the rest are sealed
    assert sorted(sealed) == sorted(s.endpoint for s in subs)


def test_a_push_that_cannot_be_sealed_is_retried_and_the_others_go_out(
    start_gateway: Any, fake_push: FakePushService, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_seal = PushClient.seal
    failures = [RuntimeError("a bug of ours")]

    def seal(self: PushClient, *args: Any) -> SealedPush:
        if failures:
            raise failures.pop()
        return real_seal(self, *args)

    monkeypatch.setattr(PushClient, "seal", seal)
    gw = start_gateway()
    subs = [subscribe(gw, fake_push, "bob.near") for _ in range(3)]
    gw.ingest(row(1))
    for sub in subs:
        fake_push.wait_count(sub, 1)
    rows = wait_status(gw, "sent", 3)
    assert sorted(r["attempts"] for r in rows) == [1, 1, 2]  # the one that failed, again after its backoff
