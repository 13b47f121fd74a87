"""Pacing through a running gateway and the fake push service: Topic and Urgency headers, digests of
bursts, quiet hours."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import INGEST_TOKEN, RunningGateway, row
from tests.fakepush import FakePushService
from tests.test_e2e import subscribe


def likes(n: int, first_id: int = 1) -> list[dict[str, Any]]:
    """``n`` likes by different people on one post of bob.near."""
    return [row(first_id + i, initiatedBy=f"u{first_id + i}.near") for i in range(n)]


def test_each_push_carries_a_topic_per_item_and_the_urgency_of_its_type(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    gw = start_gateway(push={"types": {"poke": {"topic": "none"}}})
    sub = subscribe(gw, fake_push)
    other_post = row(3, actionAtBlockHeight=42)
    alert = {**row(6, value_type="add_key"), "permission": "FullAccess", "txHash": "TX"}
    gw.ingest([*likes(2), other_post, row(4, value_type="mention"), row(5, value_type="poke"), alert])
    pushes = {p.payload["id"]: p for p in fake_push.wait_count(sub, 6) if p.payload}
    assert fake_push.errors == []  # every Topic was a valid RFC 8030 topic
    topic = {i: p.headers.get("Topic") for i, p in pushes.items()}
    assert topic[1] == topic[2]  # two likes on one post: the second replaces the first
    assert topic[3] != topic[1]  # a like on another post does not
    assert topic[4] not in (None, topic[1])
    assert topic[5] is None  # topic = "none" for pokes
    for i, push in pushes.items():
        assert push.payload is not None and push.payload["tag"] == push.payload["notification"]["tag"]
        if topic[i] is not None:
            assert push.payload["tag"] == topic[i]  # replaced on screen as at the push service
    urgency = {i: p.headers["Urgency"] for i, p in pushes.items()}
    assert urgency == {1: "low", 2: "low", 3: "low", 4: "normal", 5: "normal", 6: "high"}


def test_five_likes_within_the_window_are_two_pushes_the_second_replacing_the_first(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    gw = start_gateway(push={"types": {"like": {"digest": 1.5}}})
    sub = subscribe(gw, fake_push)
    answer = gw.ingest(likes(5)).json()
    assert (answer["deliveries"], answer["folded"]) == (2, 3)  # the first push and one digest of the rest
    [first] = fake_push.wait_count(sub, 1)
    assert first.payload is not None and first.payload["body"] == "u1.near liked your post"
    started = time.monotonic()
    first_and_digest = fake_push.wait_count(sub, 2)
    assert time.monotonic() - started > 0.5  # held for the window, not sent at once
    digest = first_and_digest[1]
    assert digest.payload is not None
    assert digest.payload["body"] == "u5.near and 4 others liked your post"
    assert digest.payload["notification"]["body"] == digest.payload["body"]
    assert digest.headers["Topic"] == first.headers["Topic"] and digest.payload["tag"] == first.payload["tag"]
    assert digest.payload["digest"]["count"] == 5
    assert [r["id"] for r in digest.payload["digest"]["rows"]] == [5, 4, 3, 2, 1]
    assert digest.payload["url"] == first.payload["url"]
    time.sleep(2)  # nothing more comes
    assert len(fake_push.for_sub(sub)) == 2 and fake_push.errors == []
    later = gw.ingest(likes(1, first_id=6)).json()  # after the window: a new burst, pushed at once
    assert (later["deliveries"], later["folded"]) == (1, 0)
    assert fake_push.wait_count(sub, 3)[2].payload["body"] == "u6.near liked your post"  # type: ignore[index]


def test_quiet_hours_hold_pushes_for_one_digest_at_the_end_while_an_alert_goes_at_once(
    gateway: RunningGateway, fake_push: FakePushService
) -> None:
    sub = subscribe(gateway, fake_push)
    minute = time.gmtime().tm_hour * 60 + time.gmtime().tm_min
    window = {
        "start": f"{minute // 60:02d}:{minute % 60:02d}",
        "end": f"{(minute + 3) % 1440 // 60:02d}:{(minute + 3) % 60:02d}",
    }
    body = {"accountId": "bob.near", "endpoint": sub.endpoint, "timeZone": "Etc/UTC", **window}
    assert gateway.post("/preferences/quiet", body).status_code == 201
    held = gateway.ingest([row(1), row(2, value_type="comment", initiatedBy="carol.near")]).json()
    assert (held["deliveries"], held["folded"]) == (1, 1)
    alert = {**row(3, value_type="add_key"), "permission": "FullAccess", "txHash": "TX"}
    gateway.ingest([alert])
    [urgent] = fake_push.wait_count(sub, 1)
    assert urgent.payload is not None and urgent.payload["valueType"] == "add_key"
    # The window ends in two seconds (time moved by editing the row: the held digest is due then).
    with gateway.db() as db:
        moved = db.execute("UPDATE deliveries SET due_at = ? WHERE folded IS NOT NULL", (time.time() + 2,)).rowcount
    assert moved == 1
    time.sleep(1)
    assert len(fake_push.for_sub(sub)) == 1  # still held
    pushes = fake_push.wait_count(sub, 2, timeout=10)
    digest = pushes[1].payload
    assert digest is not None and digest["title"] == "2 new notifications"
    assert digest["body"] == "carol.near commented on your post, and 1 more"
    assert [r["id"] for r in digest["digest"]["rows"]] == [2, 1]
    assert fake_push.errors == []


def test_quiet_hours_are_validated_and_need_a_stream(gateway: RunningGateway, fake_push: FakePushService) -> None:
    sub = subscribe(gateway, fake_push)
    base = {"accountId": "bob.near", "endpoint": sub.endpoint}
    for body, code in (
        ({**base, "timeZone": "Mars/Olympus", "start": "22:00", "end": "07:00"}, "invalid_time_zone"),
        ({**base, "timeZone": "Europe/Berlin", "start": "24:00", "end": "07:00"}, "invalid_time"),
        ({**base, "timeZone": "Europe/Berlin", "start": "22:00"}, "invalid_time"),
        ({**base, "accountId": "carol.near", "start": "22:00", "end": "07:00"}, "unknown_subscription"),
    ):
        r = gateway.post("/preferences/quiet", body)
        assert r.status_code == 400 and r.json()["code"] == code, (body, r.text)
    assert (
        gateway.post(
            "/preferences/quiet", {**base, "timeZone": "Europe/Berlin", "start": "22:00", "end": "07:00"}
        ).status_code
        == 201
    )
    assert [tuple(r) for r in gateway.query("SELECT quiet_zone, quiet_start, quiet_end FROM streams")] == [
        ("Europe/Berlin", 22 * 60, 7 * 60)
    ]
    assert gateway.post("/preferences/quiet", {**base, "start": None}).status_code == 201  # cleared
    assert [tuple(r) for r in gateway.query("SELECT quiet_zone FROM streams")] == [(None,)]


def quiet_now(minutes: int = 3) -> dict[str, str]:
    """A quiet window (UTC) from this minute to ``minutes`` later."""
    now = time.gmtime()
    start = now.tm_hour * 60 + now.tm_min
    end = (start + minutes) % 1440
    return {
        "timeZone": "Etc/UTC",
        "start": f"{start // 60:02d}:{start % 60:02d}",
        "end": f"{end // 60:02d}:{end % 60:02d}",
    }


@pytest.mark.slow
def test_kill_9_while_deliveries_are_held_still_delivers_them_once(
    tmp_path: Path, fake_push: FakePushService, procs: list[Any]
) -> None:
    from tests.test_process import GatewayProcess, _query, write_config

    push = "poll_interval = 0.2\nclaim_lease = 2.0\n[push.types.like]\ndigest = 3.0"
    config = write_config(tmp_path, fake_push, push, f'[ingest]\ntoken = "{INGEST_TOKEN}"')
    bob, carol = fake_push.subscribe(), fake_push.subscribe()
    gw = GatewayProcess(tmp_path, ["--config", str(config)])
    procs.append(gw)
    for account, sub in (("bob.near", bob), ("carol.near", carol)):
        body = {"accountId": account, "gateway": "https://near.social", "subscription": sub.as_json()}
        assert gw.http.post("/subscriptions/create", json=body).status_code == 201
    quiet = {"accountId": "carol.near", "endpoint": carol.endpoint, **quiet_now()}
    assert gw.http.post("/preferences/quiet", json=quiet).status_code == 201
    rows = [*likes(4), row(10, "carol.near", "comment"), row(11, "carol.near", "mention")]
    r = gw.http.post("/events", json=rows, headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
    assert (r.json()["deliveries"], r.json()["folded"]) == (3, 3)  # bob: first + digest; carol: one held digest
    fake_push.wait_count(bob, 1)
    gw.kill9()  # both digests are still held: they live in the outbox, not in the process
    assert len(fake_push.for_sub(bob)) == 1 and fake_push.for_sub(carol) == []

    restarted = GatewayProcess(tmp_path, ["--config", str(config)])
    procs.append(restarted)
    digest_body = "u4.near and 3 others liked your post"

    def bob_digests() -> list[Any]:  # called under the fake's lock (wait_for): reads .received itself
        return [p for p in fake_push.received if p.sub_id == bob.id and p.payload and p.payload["body"] == digest_body]

    assert fake_push.wait_for(lambda: len(bob_digests()) == 1, timeout=15)
    # carol's quiet window ends now (time moved by editing the row the restart found)
    with sqlite3.connect(tmp_path / "gw.db") as db:
        moved = db.execute("UPDATE deliveries SET due_at = ? WHERE event_key = '~digest:ingest:10'", (time.time(),))
        assert moved.rowcount == 1  # the digest the first held event opened
    [held] = fake_push.wait_count(carol, 1, timeout=15)
    assert held.payload is not None and held.payload["title"] == "2 new notifications"
    time.sleep(1.5)
    assert len(bob_digests()) == 1 and len(fake_push.for_sub(carol)) == 1  # each digest once
    # at-least-once: only bob's first push may come twice, if it was in flight at the kill
    assert len(fake_push.for_sub(bob)) in (2, 3) and fake_push.errors == []
    assert {s for (s,) in _query(tmp_path / "gw.db", "SELECT DISTINCT status FROM deliveries")} == {"sent"}
    assert restarted.terminate() == 0
