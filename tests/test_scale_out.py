"""Several gateway processes on one PostgreSQL database: roles, shared claims, watcher failover."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import row
from tests.fakepush import FakePushService, Reply
from tests.fakesources import GraphQLWsServer
from tests.test_process import GatewayProcess
from tests.test_store import POSTGRES_URL


@pytest.mark.slow
def test_three_processes_survive_kill_9_of_a_worker_and_the_watcher_leader(
    tmp_path: Path, pg_schema: str, fake_push: FakePushService, procs: list[GatewayProcess]
) -> None:
    rows = [row(n, f"acc{n % 4}.near", blockHeight=130000000 + n // 3) for n in range(1, 201)]
    source = GraphQLWsServer(rows)
    source.gate.close()
    config = tmp_path / "gateway.toml"
    config.write_text(f"""
[storage]
url = "{POSTGRES_URL}?schema={pg_schema}"
[vapid]
private_key_file = "{tmp_path / "vapid.pem"}"
subject = "mailto:ops@gateway.test"
[push]
allowed_endpoints = ["{fake_push.url}/"]
concurrency = 8
claim_lease = 2.0
poll_interval = 0.2
processes = 1  # each process started here is one sender: the kills are of those
[matching]
max_per_endpoint_per_day = 0
[[watchers]]
name = "queryapi"
kind = "queryapi"
url = "{source.url}"
start_block_height = 130000000
batch_size = 4
reconnect_initial_delay = 0.2
""")
    subs = [fake_push.subscribe() for _ in range(4)]
    for sub in subs:
        fake_push.always(sub, Reply(201, delay=0.05))
    try:
        watcher_leader = GatewayProcess(tmp_path, ["--config", str(config)], command="watch")
        procs.append(watcher_leader)
        assert watcher_leader.wait_printed("watcher queryapi leading")
        everything = GatewayProcess(tmp_path, ["--config", str(config)], command="serve")
        worker = GatewayProcess(tmp_path, ["--config", str(config)], command="worker")
        procs += [everything, worker]
        time.sleep(1.5)
        assert not everything.printed("watcher queryapi leading")  # one leader at a time
        for i, sub in enumerate(subs):
            body = {"accountId": f"acc{i}.near", "gateway": "https://near.org", "subscription": sub.as_json()}
            assert everything.http.post("/subscriptions/create", json=body).status_code == 201

        source.gate.open()
        assert fake_push.wait_for(lambda: len(fake_push.received) >= 40, timeout=30)
        worker.kill9()
        watcher_leader.kill9()
        assert len(source.sent_ids) < 200, "the kills must come mid-stream"

        assert everything.wait_printed("watcher queryapi leading"), "the surviving process took the watcher over"

        def all_pushed() -> bool:
            return len({(r.sub_id, r.payload["id"]) for r in fake_push.received if r.payload}) == 200

        assert fake_push.wait_for(all_pushed, timeout=60), f"{len(fake_push.received)} pushes"
        assert fake_push.errors == []
        twice = sum(
            n - 1 for n in Counter((r.sub_id, r.payload["id"]) for r in fake_push.received if r.payload).values()
        )
        print(f"pushes sent twice (all inside the kill window): {twice}")
        assert twice <= 8  # at most what the killed worker had in flight
        assert everything.terminate() == 0
    finally:
        source.close()
