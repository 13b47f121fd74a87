"""The gateway as operators run it: a `gateway serve` subprocess."""

from __future__ import annotations

import os
import queue
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import INGEST_TOKEN, row
from tests.fakepush import FakePushService, Reply


class GatewayProcess:
    def __init__(self, cwd: Path, args: list[str], env: dict[str, str] | None = None, command: str = "serve") -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", command, *args],
            cwd=cwd,
            env={**os.environ, "GATEWAY_SERVER__PORT": "0", **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        lines: queue.Queue[str] = queue.Queue()
        self._pumps = [
            threading.Thread(target=self._pump, args=(self.proc.stdout, self.stdout, lines), daemon=True),
            threading.Thread(target=self._pump, args=(self.proc.stderr, self.stderr, None), daemon=True),
        ]
        for pump in self._pumps:
            pump.start()
        deadline = time.monotonic() + 20
        self.url = ""
        ready = False
        while not ready:
            try:
                line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"gateway did not start: {''.join(self.stderr)}") from None
            if line.startswith("gateway listening on "):
                self.url = line.split()[-1]
                ready = True
            elif line.startswith("gateway running roles=") and "api" not in line:
                ready = True
        self.http = httpx.Client(base_url=self.url, timeout=10)

    @staticmethod
    def _pump(stream: Any, sink: list[str], lines: queue.Queue[str] | None) -> None:
        for line in stream:
            sink.append(line)
            if lines is not None:
                lines.put(line.strip())

    def printed(self, text: str) -> bool:
        return any(text in line for line in list(self.stdout))

    def wait_printed(self, text: str, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        while not self.printed(text) and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.printed(text)

    def kill9(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.close()

    def terminate(self, timeout: float = 15) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.close(timeout)

    def close(self, timeout: float = 15) -> int:
        code = self.proc.wait(timeout=timeout)
        for pump in self._pumps:
            pump.join(timeout=5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        self.http.close()
        return code


def sending_processes(gw: GatewayProcess) -> int:
    """How many processes send for ``gw`` (its start line says when more than one)."""
    line = next(line for line in gw.stdout if line.startswith("gateway running roles="))
    return int(line.split("sending_processes=")[1]) if "sending_processes=" in line else 1


def write_config(tmp_path: Path, fake_push: FakePushService, push: str, rest: str = "") -> Path:
    """A config for a gateway subprocess on its own database and key, pushing to the fake service."""
    config = tmp_path / "gateway.toml"
    no_watchers = "" if "[[watchers]]" in rest else "watchers = []  # not the embedded mainnet default"
    config.write_text(
        f"""
{no_watchers}
[storage]
url = "sqlite:///{tmp_path / "gw.db"}"
[vapid]
private_key_file = "{tmp_path / "vapid.pem"}"
subject = "mailto:ops@gateway.test"
[push]
allowed_endpoints = ["{fake_push.url}/"]
{push}
[matching]
max_per_endpoint_per_day = 0
{rest}
"""
    )
    return config


@pytest.mark.slow
def test_serve_without_config_uses_embedded_defaults(tmp_path: Path, procs: list[GatewayProcess]) -> None:
    gw = GatewayProcess(tmp_path, [])
    procs.append(gw)
    key_file = tmp_path / "data" / "vapid_private.pem"
    assert key_file.exists() and (tmp_path / "data" / "gateway.db").exists()
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "data").stat().st_mode) == 0o700  # the key and the database live there
    assert stat.S_IMODE((tmp_path / "data" / "gateway.db").stat().st_mode) == 0o600
    printed = next(line for line in gw.stdout if line.startswith("VAPID public key: ")).split()[-1]
    assert gw.http.get("/vapid-public-key").json() == {"publicKey": printed}
    assert any(line.startswith("gateway running roles=api,worker,watch loop=uvloop") for line in gw.stdout)
    assert "placeholder" in "".join(gw.stderr)  # the loud warning about [vapid] subject
    assert "BEGIN" not in "".join(gw.stderr + gw.stdout)  # the private key is never printed
    assert gw.terminate() == 0
    assert "gateway stopped" in "".join(gw.stderr)

    again = GatewayProcess(tmp_path, [])  # the second start reuses the key
    procs.append(again)
    assert again.http.get("/vapid-public-key").json() == {"publicKey": printed}
    assert again.terminate() == 0


@pytest.mark.slow
def test_kill_9_with_deliveries_in_flight_loses_nothing(
    tmp_path: Path, fake_push: FakePushService, procs: list[GatewayProcess]
) -> None:
    config = write_config(
        tmp_path,
        fake_push,
        "concurrency = 4\nclaim_lease = 2.0\nretry_initial_delay = 0.2\npoll_interval = 0.2",
        f'[ingest]\ntoken = "{INGEST_TOKEN}"',
    )
    subs = [fake_push.subscribe() for _ in range(3)]
    for sub in subs:
        fake_push.always(sub, Reply(201, delay=0.25))  # a push service across the internet

    gw = GatewayProcess(tmp_path, ["--config", str(config)])
    procs.append(gw)
    senders = sending_processes(gw)  # the default: one per core, each with `concurrency` in flight
    for i, sub in enumerate(subs):
        r = gw.http.post(
            "/subscriptions/create",
            json={"accountId": f"acc{i}.near", "gateway": "https://near.org", "subscription": sub.as_json()},
        )
        assert r.status_code == 201
    rows = [row(n, f"acc{n % 3}.near") for n in range(1, 31)]
    r = gw.http.post("/events", json=rows, headers={"Authorization": f"Bearer {INGEST_TOKEN}"})
    assert r.json()["deliveries"] == 30

    assert fake_push.wait_for(lambda: len(fake_push.received) >= 6, timeout=20)
    gw.kill9()
    sent_before = len(fake_push.received)
    assert sent_before < 30, "the kill must come with deliveries still queued"

    restarted = GatewayProcess(tmp_path, ["--config", str(config)])
    procs.append(restarted)

    def all_delivered() -> bool:
        got = {(r.sub_id, r.payload["id"]) for r in fake_push.received if r.payload and r.status == 201}
        return len(got) == 30

    assert fake_push.wait_for(all_delivered, timeout=40), f"{len(fake_push.received)} received"
    assert fake_push.errors == []
    # At-least-once: only the pushes in flight at the kill (≤ concurrency each) may be sent twice.
    assert len(fake_push.received) - 30 <= 4 * senders
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        statuses = {s for (s,) in _query(tmp_path / "gw.db", "SELECT DISTINCT status FROM deliveries")}
        if statuses == {"sent"}:
            break
        time.sleep(0.1)
    assert statuses == {"sent"}
    assert restarted.terminate() == 0


def _query(db: Path, sql: str) -> list[Any]:
    import sqlite3

    with sqlite3.connect(db) as conn:
        return conn.execute(sql).fetchall()


@pytest.mark.slow
def test_kill_9_while_a_watcher_streams_loses_nothing_and_doubles_nothing(
    tmp_path: Path, fake_push: FakePushService, procs: list[GatewayProcess]
) -> None:
    from tests.fakesources import GraphQLWsServer

    rows = [row(n, f"acc{n % 4}.near", blockHeight=130000000 + n // 3) for n in range(1, 241)]
    source = GraphQLWsServer(rows)
    source.gate.close()
    config = write_config(
        tmp_path,
        fake_push,
        # one process watching and sending, killed (sending processes: tests/test_senders.py)
        "concurrency = 8\nclaim_lease = 2.0\npoll_interval = 0.2\nprocesses = 1",
        f"""[[watchers]]
name = "queryapi"
kind = "queryapi"
url = "{source.url}"
start_block_height = 130000000
batch_size = 4
reconnect_initial_delay = 0.2
""",
    )
    subs = [fake_push.subscribe() for _ in range(4)]
    for sub in subs:
        fake_push.always(sub, Reply(201, delay=0.02))
    try:
        gw = GatewayProcess(tmp_path, ["--config", str(config)])
        procs.append(gw)
        for i, sub in enumerate(subs):
            body = {"accountId": f"acc{i}.near", "gateway": "https://near.org", "subscription": sub.as_json()}
            assert gw.http.post("/subscriptions/create", json=body).status_code == 201
        source.gate.open()
        assert fake_push.wait_for(lambda: len(fake_push.received) >= 60, timeout=30)
        gw.kill9()
        assert len(source.sent_ids) < 240, "the kill must come mid-stream"

        restarted = GatewayProcess(tmp_path, ["--config", str(config)])
        procs.append(restarted)

        def all_pushed() -> bool:
            return len({(r.sub_id, r.payload["id"]) for r in fake_push.received if r.payload}) == 240

        assert fake_push.wait_for(all_pushed, timeout=60), f"{len(fake_push.received)} pushes"
        assert source.sessions[-1]["from"] > 130000000  # resumed from the stored cursor, not the start
        # The cursor moved with the deliveries: one delivery per (event, endpoint), never two.
        assert _query(
            tmp_path / "gw.db", "SELECT COUNT(*), COUNT(DISTINCT event_key || endpoint_hash) FROM deliveries"
        ) == [(240, 240)]
        # Pushes sent twice can only be the few in flight at the kill (at most `concurrency`).
        assert len(fake_push.received) - 240 <= 8
        assert fake_push.errors == []
        assert restarted.terminate() == 0
    finally:
        source.close()


@pytest.mark.slow
def test_sigterm_releases_in_flight_claims_and_exits_within_the_bound(
    tmp_path: Path, fake_push: FakePushService, procs: list[GatewayProcess]
) -> None:
    config = write_config(  # sending in-process; with sending processes: tests/test_senders.py
        tmp_path, fake_push, "concurrency = 8\nclaim_lease = 600.0\nrequest_timeout = 30.0\nprocesses = 1"
    )
    subs = [fake_push.subscribe() for _ in range(4)]
    for sub in subs:
        fake_push.always(sub, Reply(201, delay=20.0))  # a push service that hangs
    gw = GatewayProcess(tmp_path, ["--config", str(config)], env={"GATEWAY_INGEST__TOKEN": INGEST_TOKEN})
    procs.append(gw)
    for i, sub in enumerate(subs):
        body = {"accountId": f"acc{i}.near", "gateway": "https://near.org", "subscription": sub.as_json()}
        assert gw.http.post("/subscriptions/create", json=body).status_code == 201
    rows = [row(n, f"acc{n % 4}.near") for n in range(1, 21)]
    assert gw.http.post("/events", json=rows, headers={"Authorization": f"Bearer {INGEST_TOKEN}"}).status_code == 202
    assert fake_push.wait_for(lambda: fake_push.in_flight == 8, timeout=10)  # the pool is busy
    started = time.monotonic()
    assert gw.terminate(timeout=15) == 0
    assert time.monotonic() - started < 7  # stop taking work, give in-flight pushes a bounded time, exit
    assert "gateway stopped" in "".join(gw.stderr)
    leased = _query(tmp_path / "gw.db", "SELECT count(*) FROM deliveries WHERE lease_until IS NOT NULL")
    assert leased == [(0,)], "claims still held after a clean stop"
    assert _query(tmp_path / "gw.db", "SELECT status, count(*) FROM deliveries GROUP BY status") == [("pending", 20)]

    for sub in subs:
        fake_push.always(sub, Reply(201))
    again = GatewayProcess(tmp_path, ["--config", str(config)])
    procs.append(again)
    # Released, not leased for 600 s: the restarted process sends them at once.
    assert fake_push.wait_for(
        lambda: len([r for r in fake_push.received if r.status == 201 and r.at >= started]) >= 20, 15
    )
    assert again.terminate() == 0
