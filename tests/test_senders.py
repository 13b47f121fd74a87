"""``[push] processes``: `gateway serve` sending from several processes on one SQLite store."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import INGEST_TOKEN, row
from tests.fakepush import FakePushService, Reply
from tests.test_process import GatewayProcess, _query, write_config

pytestmark = pytest.mark.slow


def sender_pids(gw: GatewayProcess, count: int, timeout: float = 20) -> list[int]:
    """The pids of the sending processes the gateway said it started, the newest per index."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = re.findall(r"sending process (\d+) started \(pid (\d+)\)", "".join(gw.stderr))
        newest = {int(i): int(pid) for i, pid in started}
        if len(newest) >= count:
            return [newest[i] for i in sorted(newest)]
        time.sleep(0.05)
    raise AssertionError(f"sending processes not started: {''.join(gw.stderr)[-2000:]}")


def local_ports(pid: int) -> set[int]:
    """The local TCP ports of ``pid``'s sockets (/proc: socket inodes, matched in net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[9] in inodes:
            ports.add(int(fields[1].split(":")[1], 16))
    return ports


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def metric(gw: GatewayProcess, name: str) -> float:
    text = gw.http.get("/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def subscribe_all(gw: GatewayProcess, fake_push: FakePushService, n: int, delay: float) -> list[str]:
    subs = []
    for i in range(n):
        sub = fake_push.subscribe()
        fake_push.always(sub, Reply(201, delay=delay))
        body = {"accountId": f"acc{i}.near", "gateway": "https://near.org", "subscription": sub.as_json()}
        assert gw.http.post("/subscriptions/create", json=body).status_code == 201
        subs.append(sub.id)
    return subs


def ingest(gw: GatewayProcess, rows: list[dict[str, object]]) -> None:
    r = gw.http.post("/events", json=rows, headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
    assert r.status_code == 202, r.text


def test_two_sending_processes_share_the_outbox_push_each_once_and_add_up_in_metrics(
    tmp_path: Path, fake_push: FakePushService, procs: list[GatewayProcess]
) -> None:
    config = write_config(
        tmp_path,
        fake_push,
        "processes = 2\nconcurrency = 16\nconcurrency_per_origin = 6",
        f'[ingest]\ntoken = "{INGEST_TOKEN}"',
    )
    gw = GatewayProcess(tmp_path, ["--config", str(config)])
    procs.append(gw)
    assert any("sending_processes=2" in line for line in gw.stdout)
    pids = sender_pids(gw, 2)
    subscribe_all(gw, fake_push, 10, delay=0.05)
    ingest(gw, [row(n, f"acc{n % 10}.near") for n in range(1, 301)])

    def all_sent() -> bool:
        return len({(r.sub_id, r.payload["id"]) for r in fake_push.received if r.payload}) == 300

    assert fake_push.wait_for(all_sent, timeout=30), f"{len(fake_push.received)} received"
    assert len(fake_push.received) == 300, "a delivery was sent twice"  # one lease per claim, both processes
    assert fake_push.errors == []
    assert 7 <= fake_push.max_in_flight <= 12  # per process: a slow push service holds at most 6 slots of each
    by_process = [local_ports(pid) for pid in pids]
    sent_by = [sum(1 for r in fake_push.received if r.peer_port in ports) for ports in by_process]
    assert all(n > 0 for n in sent_by) and sum(sent_by) == 300, sent_by  # both sent, from their own sockets
    # The serving process's /metrics adds up what its sending processes report (once a second).
    deadline = time.monotonic() + 5
    while metric(gw, 'gateway_deliveries_total{outcome="sent"') != 300 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert metric(gw, 'gateway_deliveries_total{outcome="sent"') == 300
    assert metric(gw, "gateway_event_to_push_seconds_count") == 300
    assert gw.terminate() == 0
    assert not any(alive(pid) for pid in pids)


def test_a_killed_sending_process_is_started_again_and_its_claims_are_sent(
    tmp_path: Path, fake_push: FakePushService, procs: list[GatewayProcess]
) -> None:
    config = write_config(
        tmp_path,
        fake_push,
        "processes = 2\nconcurrency = 8\nclaim_lease = 2.0\npoll_interval = 0.2",
        f'[ingest]\ntoken = "{INGEST_TOKEN}"',
    )
    gw = GatewayProcess(tmp_path, ["--config", str(config)])
    procs.append(gw)
    first, second = sender_pids(gw, 2)
    subscribe_all(gw, fake_push, 4, delay=0.3)
    ingest(gw, [row(n, f"acc{n % 4}.near") for n in range(1, 81)])
    assert fake_push.wait_for(lambda: len(fake_push.received) >= 10, timeout=20)
    os.kill(first, signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and "exited with -9" not in "".join(gw.stderr):
        time.sleep(0.05)
    assert "sending process 0 (pid" in "".join(gw.stderr)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and "".join(gw.stderr).count("sending process 0 started") < 2:
        time.sleep(0.05)
    restarted = sender_pids(gw, 2)
    assert restarted[0] != first and restarted[1] == second and alive(restarted[0])

    def all_sent() -> bool:
        return len({(r.sub_id, r.payload["id"]) for r in fake_push.received if r.payload and r.status == 201}) == 80

    assert fake_push.wait_for(all_sent, timeout=40), f"{len(fake_push.received)} received"
    assert len(fake_push.received) - 80 <= 8  # at most the killed process's in-flight pushes, again
    assert gw.terminate() == 0


def test_sigterm_stops_every_sending_process_and_releases_their_claims(
    tmp_path: Path, fake_push: FakePushService, procs: list[GatewayProcess]
) -> None:
    config = write_config(
        tmp_path,
        fake_push,
        "processes = 2\nconcurrency = 4\nclaim_lease = 600.0\nrequest_timeout = 30.0",
        f'[ingest]\ntoken = "{INGEST_TOKEN}"',
    )
    gw = GatewayProcess(tmp_path, ["--config", str(config)])
    procs.append(gw)
    pids = sender_pids(gw, 2)
    subscribe_all(gw, fake_push, 4, delay=20.0)  # a push service that hangs
    ingest(gw, [row(n, f"acc{n % 4}.near") for n in range(1, 21)])
    assert fake_push.wait_for(lambda: fake_push.in_flight == 8, timeout=10)  # 4 in flight in each process
    started = time.monotonic()
    assert gw.terminate(timeout=20) == 0
    assert time.monotonic() - started < 8
    assert not any(alive(pid) for pid in pids)
    leased = _query(tmp_path / "gw.db", "SELECT count(*) FROM deliveries WHERE lease_until IS NOT NULL")
    assert leased == [(0,)], "claims still held after a clean stop"
    assert _query(tmp_path / "gw.db", "SELECT status, count(*) FROM deliveries GROUP BY status") == [("pending", 20)]


def test_sending_processes_stop_when_the_serving_process_is_killed(
    tmp_path: Path, fake_push: FakePushService, procs: list[GatewayProcess]
) -> None:
    config = write_config(tmp_path, fake_push, "processes = 2")
    gw = GatewayProcess(tmp_path, ["--config", str(config)])
    procs.append(gw)
    pids = sender_pids(gw, 2)
    gw.kill9()
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids), "orphaned sending processes"
