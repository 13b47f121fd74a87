"""Operating the gateway: metrics, the admin API, the operator commands and log formats."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.cli import main
from tests.conftest import RunningGateway, row
from tests.fakepush import FakePushService, Reply, Subscription
from tests.fakesources import FakeNearRpc, GraphQLWsServer, wait_until

Start = Callable[..., RunningGateway]
ADMIN = "admin-secret-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


def subscribe(gw: RunningGateway, fake_push: FakePushService, account: str) -> Subscription:
    sub = fake_push.subscribe()
    body = {"accountId": account, "gateway": "https://near.social", "subscription": sub.as_json()}
    assert gw.post("/subscriptions/create", body).status_code == 201
    return sub


def settle(gw: RunningGateway, timeout: float = 15) -> None:
    assert wait_until(
        lambda: gw.query("SELECT count(*) FROM deliveries WHERE status = 'pending'")[0][0] == 0, timeout
    ), "deliveries still pending"


def samples(gw: RunningGateway) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = gw.http.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    out = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def config_file(tmp_path: Path, gw: RunningGateway, extra: str = "") -> Path:
    """A config file for the CLI naming the running gateway's database, key and push services."""
    s = gw.settings
    path = tmp_path / "cli.toml"
    allowed = json.dumps(s.push.allowed_endpoints)
    no_watchers = "" if "[[watchers]]" in extra else "watchers = []"
    path.write_text(
        f'{no_watchers}\n[storage]\nurl = "{s.storage.url}"\n[vapid]\nprivate_key_file = "{s.vapid.private_key_file}"\n'
        f'subject = "{s.vapid.subject}"\n[push]\nallowed_endpoints = {allowed}\nrequest_timeout = 5.0\n{extra}'
    )
    return path


# --- metrics -----------------------------------------------------------------------------------


def test_metrics_count_deliveries_by_outcome_and_host_with_latencies(
    start_gateway: Start, fake_push: FakePushService
) -> None:
    gw = start_gateway(push={"retry_initial_delay": 0.1, "give_up_after": 0.3})
    ok, gone, failing = (subscribe(gw, fake_push, a) for a in ("ok.near", "gone.near", "bad.near"))
    fake_push.always(gone, Reply(410))
    fake_push.always(failing, Reply(503))
    gw.ingest([row(1, "ok.near"), row(2, "ok.near"), row(3, "gone.near"), row(4, "bad.near")])
    settle(gw)
    host = fake_push.url.removeprefix("http://")
    m = samples(gw)

    def count(outcome: str) -> float:
        return m.get(("gateway_deliveries_total", (("outcome", outcome), ("push_host", host))), 0.0)

    assert count("sent") == 2 and count("gone") == 1
    assert count("retried") >= 1 and count("dead_lettered") == 1
    attempts = sum(count(o) for o in ("sent", "gone", "retried", "dead_lettered"))
    assert m[("gateway_push_send_seconds_count", (("push_host", host),))] == attempts
    assert m[("gateway_event_to_push_seconds_count", ())] == 2
    assert m[("gateway_outbox_depth", ())] == 0
    assert m[("gateway_streams", ())] == 2 and m[("gateway_accounts", ())] == 2  # the gone stream was deleted
    assert ok.id not in gw.http.get("/metrics").text


def test_metrics_show_each_watcher_and_refused_requests(start_gateway: Start, fake_push: FakePushService) -> None:
    source = GraphQLWsServer([row(n, "bob.near", blockHeight=150_000_000 + n) for n in range(1, 6)])
    rpc = FakeNearRpc()
    rpc.head = 150_000_012
    try:
        watcher = {"name": "qa", "kind": "queryapi", "url": source.url, "start_block_height": 150_000_000}
        gw = start_gateway(
            watchers=[watcher],
            limits={"per_ip_rate": 0.1, "per_ip_burst": 1},
            security={"near_rpc_url": rpc.url},
            metrics={"chain_head_interval": 0.1},
        )
        key = (("kind", "queryapi"), ("watcher", "qa"))
        assert wait_until(lambda: samples(gw).get(("gateway_events_ingested_total", key)) == 5)
        m = samples(gw)
        assert m[("gateway_watcher_connected", key)] == 1
        assert m[("gateway_watcher_block_height", key)] == 150_000_005
        assert m[("gateway_watcher_reconnects_total", key)] == 0
        assert wait_until(lambda: samples(gw).get(("gateway_watcher_lag_blocks", key)) == 7)  # head − newest seen
        rpc.head += 3
        assert wait_until(lambda: samples(gw).get(("gateway_watcher_lag_blocks", key)) == 10)
        assert gw.http.get("/healthz").json()["watchers"]["qa"]["lag_blocks"] == 10
        gw.http.get("/vapid-public-key")
        assert gw.http.get("/vapid-public-key").status_code == 429
        assert samples(gw)[("gateway_api_requests_refused_total", (("reason", "rate_limited"),))] == 1
    finally:
        source.close()
        rpc.close()


# --- admin API ------------------------------------------------------------------------------


def test_admin_api_is_closed_without_a_token(gateway: RunningGateway) -> None:
    r = gateway.http.get("/admin/api/overview", headers=AUTH)
    assert r.status_code == 403 and r.json()["code"] == "admin_disabled"


def test_admin_api_streams_send_test_and_dead_letters(start_gateway: Start, fake_push: FakePushService) -> None:
    gw = start_gateway(admin={"token": ADMIN}, push={"give_up_after": 0.2, "retry_initial_delay": 0.1})
    assert gw.http.get("/admin/api/overview").status_code == 401
    assert gw.http.get("/admin/api/overview", headers={"Authorization": "Bearer wrong"}).status_code == 401
    bob1, bob2 = subscribe(gw, fake_push, "bob.near"), subscribe(gw, fake_push, "bob.near")
    carol = subscribe(gw, fake_push, "carol.near")
    fake_push.always(carol, Reply(400, body=b"bad request"))

    streams = gw.http.get("/admin/api/streams", params={"account": "bob.near"}, headers=AUTH).json()
    assert len(streams) == 2 and {s["accountId"] for s in streams} == {"bob.near"}
    assert bob1.id not in json.dumps(streams) and streams[0]["endpoint"].startswith(fake_push.url + "/…#")

    fake_push.script(bob2, Reply(410))
    results = gw.http.post("/admin/api/send-test", json={"accountId": "bob.near"}, headers=AUTH).json()
    assert sorted((r["status"], r["verdict"]) for r in results) == [(201, "sent"), (410, "gone")]
    [test_push] = fake_push.for_sub(bob1)
    assert test_push.payload is not None and test_push.payload["title"] == "Test notification"

    gw.ingest([row(1, "carol.near"), row(2, "carol.near")])
    settle(gw)
    letters = gw.http.get("/admin/api/deadletters", headers=AUTH).json()
    assert len(letters) == 2 and all(d["status"] == "dead" and "400" in d["reason"] for d in letters)
    overview = gw.http.get("/admin/api/overview", headers=AUTH).json()
    assert overview["outboxDepth"] == 0 and len(overview["deadLetters"]) == 2
    assert {h["host"] for h in overview["failingHosts"]} == {fake_push.url.removeprefix("http://")}
    assert {(h["status"], h["count"]) for h in overview["history"]} == {("dead", 2)}

    fake_push.always(carol, Reply(201))
    retried = gw.http.post("/admin/api/deadletters/retry", json={"ids": [letters[0]["id"]]}, headers=AUTH).json()
    assert retried == {"retried": 1}
    fake_push.wait_count(carol, 1)
    assert gw.http.post("/admin/api/deadletters/purge", json={"ids": None}, headers=AUTH).json() == {"purged": 1}
    assert gw.http.get("/admin/api/deadletters", headers=AUTH).json() == []

    r = gw.http.delete("/admin/api/streams", headers=AUTH)
    assert r.status_code == 400 and r.json()["code"] == "invalid_query"
    assert gw.http.delete("/admin/api/streams", params={"account": "carol.near"}, headers=AUTH).json() == {"deleted": 1}
    assert [s["accountId"] for s in gw.http.get("/admin/api/streams", headers=AUTH).json()] == ["bob.near"]


# --- CLI -------------------------------------------------------------------------------------


def test_cli_streams_list_show_delete(
    start_gateway: Start, fake_push: FakePushService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = start_gateway()
    bob = subscribe(gw, fake_push, "bob.near")
    subscribe(gw, fake_push, "carol.near")
    gw.post("/preferences/set", {"accountId": "bob.near", "endpoint": bob.endpoint, "dapp": "like", "block": True})
    capsys.readouterr()  # what the in-process gateway printed at start
    cfg = str(config_file(tmp_path, gw))
    assert main(["streams", "list", "--config", cfg]) == 0
    out = capsys.readouterr().out
    assert "bob.near" in out and "carol.near" in out and bob.id not in out
    assert main(["streams", "list", "--account", "bob.near", "--json", "--config", cfg]) == 0
    [view] = json.loads(capsys.readouterr().out)
    assert view["muted"] == ["like"] and view["gateway"] == "https://near.social"
    assert main(["streams", "show", "--endpoint-hash", view["endpointHash"], "--config", cfg]) == 0
    assert "muted: like" in capsys.readouterr().out
    assert main(["streams", "delete", "--config", cfg]) == 2  # needs a selector
    assert "exactly one of --account or --endpoint-hash" in capsys.readouterr().err
    assert main(["streams", "delete", "--account", "bob.near", "--config", cfg]) == 0
    assert "deleted 1 stream(s)" in capsys.readouterr().out
    assert [r[0] for r in gw.query("SELECT account_id FROM streams")] == ["carol.near"]
    assert main(["streams", "show", "--account", "bob.near", "--config", cfg]) == 1


def test_cli_send_test_prints_each_answer(
    start_gateway: Start, fake_push: FakePushService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = start_gateway()
    ok, gone = subscribe(gw, fake_push, "bob.near"), subscribe(gw, fake_push, "bob.near")
    fake_push.always(gone, Reply(410, body=b"expired"))
    capsys.readouterr()  # what the in-process gateway printed at start
    cfg = str(config_file(tmp_path, gw))
    assert main(["send-test", "--account", "bob.near", "--json", "--config", cfg]) == 1  # not all accepted
    results = json.loads(capsys.readouterr().out)
    assert sorted((r["status"], r["verdict"]) for r in results) == [(201, "sent"), (410, "gone")]
    assert any("expired" in r["detail"] for r in results)
    assert [r[0] for r in gw.query("SELECT endpoint FROM streams")] == [ok.endpoint]  # the gone one is deleted
    assert len(fake_push.for_sub(ok)) == 1
    assert main(["send-test", "--account", "nobody.near", "--config", cfg]) == 1
    assert "has no streams" in capsys.readouterr().err


def test_cli_dead_letters_list_retry_purge(
    start_gateway: Start, fake_push: FakePushService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    gw = start_gateway()
    sub = subscribe(gw, fake_push, "bob.near")
    fake_push.always(sub, Reply(400, body=b"malformed"))
    gw.ingest([row(1), row(2), row(3)])
    settle(gw)
    capsys.readouterr()  # what the in-process gateway printed at start
    cfg = str(config_file(tmp_path, gw))
    assert main(["deadletters", "list", "--json", "--config", cfg]) == 0
    letters = json.loads(capsys.readouterr().out)
    assert len(letters) == 3 and all("malformed" in d["reason"] for d in letters)
    assert main(["deadletters", "retry", "--config", cfg]) == 2
    assert "--id N" in capsys.readouterr().err
    fake_push.always(sub, Reply(201))
    assert main(["deadletters", "retry", "--id", str(letters[0]["id"]), "--config", cfg]) == 0
    assert "queued 1" in capsys.readouterr().out
    fake_push.wait_count(sub, 1, timeout=10)  # the running gateway polls the outbox and sends it
    assert main(["deadletters", "purge", "--all", "--config", cfg]) == 0
    assert "purged 2" in capsys.readouterr().out
    assert main(["deadletters", "list", "--config", cfg]) == 0
    assert "(none)" in capsys.readouterr().out


def test_cli_config_check_names_the_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text('[vapid]\nsubject = "mailto:ops@real.org"\n[ingest]\ntoken = "t"\n')
    assert main(["config", "check", "--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "ok" in out and "admin API are disabled" in out
    bad = tmp_path / "bad.toml"
    bad.write_text('[limits]\nper_ip_rate = -1\n[[watchers]]\nname = "x"\nkind = "queryapi"\nurl = "http://a"\n')
    assert main(["config", "check", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "limits.per_ip_rate" in err and "watchers.0" in err
    assert main(["config", "check", "--config", str(tmp_path / "missing.toml")]) == 2
    assert "not found" in capsys.readouterr().err


def test_cli_replay_rereads_a_range_without_pushing_twice(
    start_gateway: Start, fake_push: FakePushService, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = 160_000_000
    source = GraphQLWsServer([row(n, "bob.near", blockHeight=base + n) for n in range(1, 21)])
    try:
        watcher = {"name": "qa", "kind": "queryapi", "url": source.url, "start_block_height": base}
        gw = start_gateway(watchers=[watcher], matching={"max_per_endpoint_per_day": 0})
        # Rows 1..20 are ingested before the stream exists: stored (the dedupe window) but never sent.
        assert wait_until(
            lambda: [tuple(r) for r in gw.query("SELECT value FROM cursors WHERE source = 'qa'")] == [(str(base + 20),)]
        )
        sub = subscribe(gw, fake_push, "bob.near")
        # The indexer back-fills rows it had missed at old heights: only a replay can find them.
        source.add_rows([row(100 + n, "bob.near", "comment", blockHeight=base + 5 + n) for n in range(3)])
        capsys.readouterr()  # what the in-process gateway printed at start
        cfg = str(config_file(tmp_path, gw, f'[[watchers]]\nname = "qa"\nkind = "queryapi"\nurl = "{source.url}"\n'))
        assert main(["replay", "--watcher", "qa", "--from-block", str(base + 1), "--config", cfg]) == 0
        out, err = capsys.readouterr()
        assert "3 new" in out and "3 deliveries queued" in out
        assert "100.0%" in err and "[####" in err  # the progress bar
        pushed = fake_push.wait_count(sub, 3, timeout=10)
        time.sleep(0.5)
        assert sorted(p.payload["id"] for p in fake_push.for_sub(sub) if p.payload) == [100, 101, 102]
        assert len(pushed) == 3
        assert [tuple(r) for r in gw.query("SELECT value FROM cursors WHERE source = 'qa'")] == [
            (str(base + 20),)
        ]  # live cursor kept
        assert main(["replay", "--watcher", "qa", "--from-block", str(base + 1), "--config", cfg]) == 0
        assert "0 new" in capsys.readouterr().out  # again: everything deduplicated
        assert main(["replay", "--watcher", "nope", "--from-block", "1", "--config", cfg]) == 2
        assert "no watcher named 'nope'" in capsys.readouterr().err
    finally:
        source.close()


# --- logs --------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["kv", "json"])
def test_structured_log_formats(style: str, capsys: pytest.CaptureFixture[str]) -> None:
    import logging

    from gateway.config import LoggingSettings
    from gateway.logfmt import setup_logging

    setup_logging(LoggingSettings(level="info", format=style))  # type: ignore[arg-type]
    try:
        logging.getLogger("gateway.test").warning("delivery dead-lettered delivery=%s reason=%s", 7, 'HTTP 400 "bad"')
    finally:
        logging.getLogger().handlers.clear()
    line = capsys.readouterr().err.strip().splitlines()[-1]
    if style == "json":
        record: dict[str, Any] = json.loads(line)
        assert record["level"] == "warning" and record["logger"] == "gateway.test"
        assert record["msg"] == 'delivery dead-lettered delivery=7 reason=HTTP 400 "bad"'
        assert record["ts"].endswith("Z")
    else:
        assert line.startswith("ts=") and " level=warning logger=gateway.test msg=" in line
        assert line.endswith('msg="delivery dead-lettered delivery=7 reason=HTTP 400 \\"bad\\""')
