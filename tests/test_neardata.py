"""The neardata watcher end to end: a fake neardata server speaking the real API (and misbehaving)
-> gateway -> fake push service that decrypts what it gets."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakeneardata import FakeNeardata, b64, block, event_log, fixture_block, receipt
from tests.fakepush import FakePushService, Received, Subscription
from tests.fakesources import DEEP_MARK, LONG_ACCOUNT, ActionsServer, FakeNearRpc, poison_json, wait_until
from tests.test_e2e import subscribe
from tests.test_process import GatewayProcess, write_config

FAST = {"reconnect_initial_delay": 0.1, "reconnect_max_delay": 0.5}
H = 150_000_000  # where the fake chain starts
KAICHING = "lb2oyd4yvviz.users.kaiching"


@pytest.fixture
def chain() -> Iterator[FakeNeardata]:
    fake = FakeNeardata(hold=0.3)
    yield fake
    fake.close()


@pytest.fixture
def rpc() -> Iterator[FakeNearRpc]:
    fake = FakeNearRpc()
    fake.tokens["token.sweat"] = {"spec": "ft-1.0.0", "name": "SWEAT", "symbol": "SWEAT", "decimals": 18}
    yield fake
    fake.close()


def neardata(url: str, rpc_url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "chain",
        "kind": "neardata",
        "url": url,
        "start_block_height": H,
        "rpc_url": rpc_url,
        "accounts_refresh": 0.2,
        "request_timeout": 5.0,
        **FAST,
        **extra,
    }


def nft_block(height: int) -> dict[str, Any]:
    sent = event_log(
        "nep171", "nft_transfer", [{"old_owner_id": "alice.near", "new_owner_id": "carol.near", "token_ids": ["7"]}]
    )
    minted = event_log("nep171", "nft_mint", [{"owner_id": "carol.near", "token_ids": ["8", "9"]}])
    return block(
        height,
        [
            receipt(
                "RNFT",
                "alice.near",
                "x.paras.near",
                [{"FunctionCall": {"method_name": "nft_transfer", "args": "e30=", "gas": 1, "deposit": "1"}}],
                logs=[sent, minted],
            )
        ],
    )


def by_type(fake: FakePushService, sub: Subscription) -> dict[str, list[Received]]:
    out: dict[str, list[Received]] = {}
    for r in fake.for_sub(sub):
        out.setdefault(r.payload["valueType"], []).append(r)
    return out


def state(gw: Any, name: str = "chain") -> dict[str, Any]:
    return gw.http.get("/healthz").json()["watchers"][name]


def test_neardata_delivers_social_transfer_ft_nft_key_and_failure_rows_end_to_end(
    start_gateway: Any, fake_push: FakePushService, chain: FakeNeardata, rpc: FakeNearRpc
) -> None:
    chain.produce(H, fixture_block("107503704"))  # ft, add_key, near_transfer, failures (no tx_hash: 2023 data)
    chain.produce(H + 1, None)  # a skipped height
    chain.produce(H + 2, fixture_block("200000000"))  # social.near set calls, with tx_hash
    chain.produce(H + 3, nft_block(H + 3))
    gw = start_gateway(watchers=[neardata(chain.url, rpc.url)], matching={"max_per_endpoint_per_day": 0})
    fees, kaiching, relay = (subscribe(gw, fake_push, a) for a in ("fees.sweat", KAICHING, "relay.aurora"))
    devgov, mohaa, carol = (subscribe(gw, fake_push, a) for a in ("devgovgigs.near", "mohaa.near", "carol.near"))

    fake_push.wait_count(carol, 2)
    fake_push.wait_count(devgov, 2)
    fake_push.wait_count(mohaa, 2)
    assert wait_until(lambda: state(gw)["cursor"] == str(H + 3))

    (ft,) = by_type(fake_push, fees)["ft_transfer"]
    sender = "591dccb901a188815f31bae1195976de83ad734778ee9736699d57cd41eea0ba"
    assert ft.payload["body"] == f"You received 1 SWEAT from {sender}"
    assert ft.payload["token"] == "token.sweat" and ft.payload["amount"] == "1000000000000000000"
    assert ft.payload["receiptId"] == "5sLStrJZRkxposFSNuhriCcqbGGGg56Dbc2zFq1rfPX4"
    assert ft.payload["url"] == "https://nearblocks.io/address/fees.sweat"  # no tx hash in 2023 Lake data
    got = by_type(fake_push, kaiching)
    (key,) = got["add_key"]
    assert key.payload["body"] == f"New full-access key added to {KAICHING}"
    assert key.headers["Urgency"] == "high" and key.payload["permission"] == "FullAccess"
    (near,) = got["near_transfer"]
    assert near.payload["body"] == "users.kaiching sent you 0.01 NEAR" and near.headers["Urgency"] == "normal"
    (failed,) = by_type(fake_push, relay)["receipt_failed"]
    assert failed.payload["title"] == "Transaction failed"
    assert failed.payload["body"] == "Your call to submit on aurora failed: Smart contract panicked: ERR_OUT_OF_FUND"
    social = by_type(fake_push, devgov)
    assert set(social) == {"like", "comment"}
    (like,) = social["like"]
    assert like.payload["initiatedBy"] == "nearversedao.near" and like.payload["actionAtBlockHeight"] == 124058852
    assert like.payload["blockHeight"] == H + 2 and like.payload["txHash"]
    assert like.payload["url"].startswith("https://near.social/mob.near/widget/MainPage.N.Post.Page")
    assert sorted(by_type(fake_push, mohaa)) == ["custom", "receipt_failed"]  # its own failed set pushes no notify
    nfts = by_type(fake_push, carol)
    assert nfts["nft_transfer"][0].payload["body"] == "alice.near sent you NFT 7 from x.paras.near"
    assert nfts["nft_transfer"][0].payload["url"] == "https://nearblocks.io/txns/TX"
    assert nfts["nft_mint"][0].payload["body"] == "You received 2 NFTs from x.paras.near"

    s = state(gw)
    assert s["blocks"] == 4 and s["skipped_heights"] == 1 and s["last_block_height"] == H + 3
    assert s["lag_blocks"] == 0 and s["connected"]
    assert s["blocks_per_second"] == round(4 / 60, 3)  # four heights committed within the last minute
    assert s["lag_seconds"] is not None and s["lag_seconds"] > 0  # from the newest block's timestamp_nanosec
    assert s["faults"] == {}
    metrics = gw.http.get("/metrics").text
    assert 'gateway_watcher_skipped_heights_total{kind="neardata",watcher="chain"} 1.0' in metrics
    assert 'gateway_watcher_blocks_total{kind="neardata",watcher="chain"} 4.0' in metrics
    assert fake_push.errors == []
    # the token's metadata was asked once, and cached
    assert sum(r.get("params", {}).get("request_type") == "call_function" for r in rpc.requests) == 1


def transfer_block(height: int, to: str = "bob.near", n: int = 0) -> dict[str, Any]:
    """A block holding one NEAR transfer of ``height`` yoctoNEAR (so each push says which block)."""
    return block(height, [receipt(f"R{height}x{n}", "alice.near", to, [{"Transfer": {"deposit": str(height)}}])])


def amounts(fake: FakePushService, sub: Subscription) -> list[int]:
    return [int(r.payload["amount"]) for r in fake.for_sub(sub) if r.payload["valueType"] == "near_transfer"]


def test_neardata_rides_through_every_answer_the_real_api_gives(
    start_gateway: Any, fake_push: FakePushService, chain: FakeNeardata, rpc: FakeNearRpc
) -> None:
    archive = FakeNeardata()
    try:
        chain.archive, chain.archive_below = archive, H + 2  # old heights live on an archive host
        archive.produce_many((h, transfer_block(h)) for h in (H, H + 1))
        chain.produce_many((h, transfer_block(h)) for h in range(H + 2, H + 8))
        chain.produce(H + 8, None)
        chain.fail(H + 2, "429")
        chain.fail(H + 3, "500", "drop")
        chain.fail(H + 4, "truncate")
        chain.fail(H + 5, "garbage", "garbage")
        gw = start_gateway(watchers=[neardata(chain.url, rpc.url)], matching={"max_per_endpoint_per_day": 0})
        bob = subscribe(gw, fake_push, "bob.near")
        fake_push.wait_count(bob, 8, timeout=20)
        # now at the tip: the next height is held open, answered 404 when the hold runs out, asked again
        assert wait_until(lambda: chain.block_requests(H + 9) >= 2, timeout=10)
        chain.produce(H + 9, transfer_block(H + 9))
        fake_push.wait_count(bob, 9)
        assert sorted(amounts(fake_push, bob)) == [*range(H, H + 8), H + 9]  # each once, none skipped
        assert wait_until(lambda: state(gw)["cursor"] == str(H + 9))
        s = state(gw)
        assert s["skipped_heights"] == 1
        assert s["faults"]["http_429"] == 1 and s["faults"]["http_500"] == 1
        assert s["faults"]["malformed_json"] == 2
        assert archive.block_requests(H) == 1 and archive.block_requests(H + 1) == 1
        assert chain.block_requests(H + 4) == 2  # the truncated body was asked again, not skipped
    finally:
        archive.close()


def test_neardata_optimistic_follows_block_opt_and_the_redirects_of_old_heights(
    start_gateway: Any, fake_push: FakePushService, chain: FakeNeardata, rpc: FakeNearRpc
) -> None:
    chain.produce_many((h, transfer_block(h)) for h in range(H, H + 10))
    gw = start_gateway(
        watchers=[neardata(chain.url, rpc.url, finality="optimistic")], matching={"max_per_endpoint_per_day": 0}
    )
    bob = subscribe(gw, fake_push, "bob.near")
    fake_push.wait_count(bob, 10)
    assert sorted(amounts(fake_push, bob)) == list(range(H, H + 10))
    paths = [p for p, _ in chain.requests]
    assert f"/v0/block_opt/{H}" in paths and f"/v0/block/{H}" in paths  # old: redirected to the final block
    assert f"/v0/block_opt/{H + 9}" in paths and f"/v0/block/{H + 9}" not in paths


def test_neardata_sends_its_api_key_to_its_own_host_only(
    start_gateway: Any, fake_push: FakePushService, rpc: FakeNearRpc
) -> None:
    keyed, archive = FakeNeardata(api_key="s3cret"), FakeNeardata()
    try:
        archive.url = archive.url.replace("127.0.0.1", "localhost")  # another host
        keyed.archive, keyed.archive_below = archive, H + 1
        archive.produce(H, transfer_block(H))
        keyed.produce(H + 1, transfer_block(H + 1))
        gw = start_gateway(
            watchers=[neardata(keyed.url, rpc.url, api_key="s3cret")], matching={"max_per_endpoint_per_day": 0}
        )
        bob = subscribe(gw, fake_push, "bob.near")
        fake_push.wait_count(bob, 2)
        assert {auth for _, auth in keyed.requests} == {"Bearer s3cret"}
        assert {auth for _, auth in archive.requests} == {None}
    finally:
        keyed.close()
        archive.close()


def test_neardata_downloads_nothing_while_nobody_is_subscribed_then_starts_at_the_tip(
    start_gateway: Any, fake_push: FakePushService, chain: FakeNeardata, rpc: FakeNearRpc
) -> None:
    chain.produce_many((h, transfer_block(h)) for h in range(H, H + 5))
    gw = start_gateway(
        watchers=[neardata(chain.url, rpc.url, start_block_height=0)], matching={"max_per_endpoint_per_day": 0}
    )
    time.sleep(1.0)
    assert chain.requests == []  # nobody to notify: not one request
    assert not state(gw)["connected"]
    bob = subscribe(gw, fake_push, "bob.near")
    assert wait_until(lambda: state(gw)["cursor"] == str(H + 4))  # the newest final block, not history
    chain.produce(H + 5, transfer_block(H + 5))
    fake_push.wait_count(bob, 2)
    assert sorted(amounts(fake_push, bob)) == [H + 4, H + 5]
    assert not any(p.endswith(f"/{H}") for p, _ in chain.requests)


def test_neardata_unreachable_backs_off_and_says_so_once(
    start_gateway: Any, fake_push: FakePushService, rpc: FakeNearRpc, caplog: pytest.LogCaptureFixture
) -> None:
    dead = FakeNeardata()
    url = dead.url
    dead.close()  # nothing listens there any more: every request is refused
    gw = start_gateway(watchers=[neardata(url, rpc.url)])
    subscribe(gw, fake_push, "bob.near")
    assert wait_until(lambda: (state(gw)["last_error"] or "").startswith("request failed"), timeout=10)
    time.sleep(2.0)  # several retries at 0.1..0.5 s
    said = [r.getMessage() for r in caplog.records if r.name == "watchers.neardata" and "unreachable" in r.getMessage()]
    assert len(said) == 1, said
    assert not state(gw)["connected"]


def test_a_social_notification_seen_by_neardata_and_near_actions_is_pushed_once(
    start_gateway: Any, fake_push: FakePushService, chain: FakeNeardata, rpc: FakeNearRpc
) -> None:
    social = fixture_block("200000000")
    chain.produce(H, social)
    like = next(
        o
        for s in social["shards"]
        for o in s["receipt_execution_outcomes"]
        if o["receipt"]["receipt_id"] == "FTz3kdN9KVV2ThYrpN1f44hDrJcaEg8BpoRfaTLL332A"
    )
    call = like["receipt"]["receipt"]["Action"]["actions"][0]
    action = {
        "blockHeight": H,
        "blockHash": "h",
        "blockTimestampMs": 1767225600000,
        "shardId": 4,
        "txHash": like["tx_hash"],
        "receiptId": like["receipt"]["receipt_id"],
        "signerId": "nearversedao.near",
        "signerPublicKey": "ed25519:x",
        "accountId": "social.near",
        "predecessorId": "nearversedao.near",
        "status": "SUCCESS",
        "actionIndex": 0,
        "action": call,
    }
    actions = ActionsServer([action])
    try:
        gw = start_gateway(
            watchers=[
                neardata(chain.url, rpc.url),
                {"name": "actions", "kind": "near-actions", "url": actions.url, "read_timeout": 5.0, **FAST},
            ],
            matching={"max_per_endpoint_per_day": 0},
        )
        devgov = subscribe(gw, fake_push, "devgovgigs.near")
        fake_push.wait_count(devgov, 2)  # the like (from both sources) and the comment (from neardata)
        assert wait_until(lambda: state(gw)["cursor"] == str(H) and state(gw, "actions")["events"] >= 1)
        time.sleep(0.5)
        types = Counter(r.payload["valueType"] for r in fake_push.for_sub(devgov))
        assert types == {"like": 1, "comment": 1}
    finally:
        actions.close()


def test_configured_nep297_event_becomes_a_notification_type(
    start_gateway: Any, fake_push: FakePushService, chain: FakeNeardata, rpc: FakeNearRpc
) -> None:
    mt = event_log(
        "nep245",
        "mt_transfer",
        [{"old_owner_id": "alice.near", "new_owner_id": "bob.near", "token_ids": ["nep141:usdc"], "amounts": ["5"]}],
    )
    chain.produce(H, block(H, [receipt("RMT", "alice.near", "intents.near", [], logs=[mt])]))
    rule = {
        "standard": "nep245",
        "event": "mt_transfer",
        "receiver_field": "new_owner_id",
        "initiator_field": "old_owner_id",
        "contract": "intents.near",
    }
    gw = start_gateway(watchers=[neardata(chain.url, rpc.url, events=[rule])], matching={"max_per_endpoint_per_day": 0})
    bob = subscribe(gw, fake_push, "bob.near")
    (got,) = fake_push.wait_count(bob, 1)
    assert got.payload["valueType"] == "mt_transfer" and got.payload["initiatedBy"] == "alice.near"
    assert got.payload["data"]["amounts"] == ["5"] and got.payload["token"] == "intents.near"
    assert got.payload["url"] == "https://nearblocks.io/txns/TX"


@pytest.mark.slow
def test_kill_9_mid_catch_up_then_restart_pushes_every_block_once(
    tmp_path: Path, fake_push: FakePushService, chain: FakeNeardata, procs: list[GatewayProcess]
) -> None:
    blocks = 80
    chain.produce_many((h, transfer_block(h)) for h in range(H, H + blocks))
    chain.delay = 0.03  # a catch-up that takes a few seconds
    watcher = f"""[[watchers]]
name = "chain"
kind = "neardata"
url = "{chain.url}"
start_block_height = {H}
concurrency = 4
accounts_refresh = 0.2
rpc_url = "http://127.0.0.1:9/"
reconnect_initial_delay = 0.1
reconnect_max_delay = 0.5
"""
    config = write_config(tmp_path, fake_push, "poll_interval = 0.2", f"[limits]\nper_ip_rate = 0\n{watcher}")
    api = GatewayProcess(tmp_path, ["--config", str(config)], command="api")
    worker = GatewayProcess(tmp_path, ["--config", str(config)], command="worker")
    procs += [api, worker]
    bob = fake_push.subscribe()
    body = {"accountId": "bob.near", "gateway": "https://near.social", "subscription": bob.as_json()}
    assert api.http.post("/subscriptions/create", json=body).status_code == 201

    def cursor() -> int:
        import sqlite3

        with sqlite3.connect(tmp_path / "gw.db") as db:
            found = db.execute("SELECT value FROM cursors WHERE source = 'chain'").fetchone()
        return int(found[0]) if found else 0

    watch = GatewayProcess(tmp_path, ["--config", str(config)], command="watch")
    procs.append(watch)
    assert wait_until(lambda: cursor() >= H + 20, timeout=20)
    watch.kill9()
    killed_at = cursor()
    assert killed_at < H + blocks - 1, "the kill must come mid catch-up"
    watch = GatewayProcess(tmp_path, ["--config", str(config)], command="watch")
    procs.append(watch)
    fake_push.wait_count(bob, blocks, timeout=30)
    assert wait_until(lambda: cursor() == H + blocks - 1)
    time.sleep(0.5)
    assert Counter(amounts(fake_push, bob)) == Counter(range(H, H + blocks))  # every block once
    # the restart resumed after the stored cursor: nothing before it was fetched again
    assert all(chain.block_requests(h) == 1 for h in range(H, killed_at - 4)), "re-fetched committed blocks"
    for proc in (watch, worker, api):
        assert proc.terminate() == 0


def test_neardata_block_over_the_size_limit_is_a_counted_fault_not_a_wedge(
    start_gateway: Any, fake_push: FakePushService, chain: FakeNeardata, rpc: FakeNearRpc
) -> None:
    huge = transfer_block(H)
    huge["block"]["header"]["padding"] = "x" * (70 * 1024)
    chain.produce(H, huge)
    chain.produce(H + 1, transfer_block(H + 1))
    gw = start_gateway(
        watchers=[neardata(chain.url, rpc.url, max_block_bytes=64 * 1024)], matching={"max_per_endpoint_per_day": 0}
    )
    bob = subscribe(gw, fake_push, "bob.near")
    fake_push.wait_count(bob, 1)
    assert amounts(fake_push, bob) == [H + 1]
    s = state(gw)
    assert s["faults"]["block_too_large"] == 1 and s["faults"]["height_skipped"] == 1


def test_explorer_links_are_configurable_and_gateway_templates_win(
    start_gateway: Any, fake_push: FakePushService, chain: FakeNeardata, rpc: FakeNearRpc
) -> None:
    chain.produce(H, transfer_block(H))
    gw = start_gateway(
        watchers=[neardata(chain.url, rpc.url)],
        matching={"max_per_endpoint_per_day": 0},
        explorer={"transaction": "https://testnet.nearblocks.io/txns/{txHash}"},
        gateways=[
            {"origin": "https://wallet.example", "links": {"near_transfer": "{gateway}/tx/{txHash}/{receiptId}"}}
        ],
    )
    bob = subscribe(gw, fake_push, "bob.near")
    wallet = fake_push.subscribe()
    r = gw.post(
        "/subscriptions/create",
        {"accountId": "bob.near", "gateway": "https://wallet.example", "subscription": wallet.as_json()},
    )
    assert r.status_code == 201
    (social_gw,) = fake_push.wait_count(bob, 1)
    (own,) = fake_push.wait_count(wallet, 1)
    assert social_gw.payload["url"] == "https://testnet.nearblocks.io/txns/TX"
    assert own.payload["url"] == f"https://wallet.example/tx/TX/R{H}x0"


class FlakySink:
    """An EventSink over memory whose accounts() fails the first ``failures`` times (a store blip)."""

    def __init__(self, cursor: str | None, failures: int) -> None:
        self.stored = cursor
        self.failures = failures
        self.delivered: list[Any] = []

    async def cursor(self, key: str) -> str | None:
        return self.stored

    async def deliver(self, events: list[Any], cursor_key: str, cursor: str | None) -> int:
        self.delivered += events
        self.stored = cursor if cursor is not None else self.stored
        return len(events)

    async def accounts(self) -> list[str]:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("the store is restarting")
        return ["bob.near"]

    async def accounts_updated_since(self, since: float) -> list[str]:
        return []


def test_a_store_blip_while_reading_the_accounts_resumes_from_the_cursor_not_the_tip(chain: FakeNeardata) -> None:
    import anyio

    from gateway.config import NeardataWatcherSettings
    from watchers.neardata import NeardataWatcher

    chain.produce_many((h, transfer_block(h)) for h in range(H, H + 6))
    sink = FlakySink(cursor=str(H + 1), failures=2)
    settings = NeardataWatcherSettings(**neardata(chain.url, "http://127.0.0.1:9/", accounts_refresh=0.05))
    watcher = NeardataWatcher(settings, sink)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.run)
            with anyio.fail_after(10):
                while sink.stored != str(H + 5):
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert [int(e.row["amount"]) for e in sink.delivered] == [H + 2, H + 3, H + 4, H + 5]
    assert watcher.state.faults["accounts_unavailable"] == 2


def test_a_skipped_height_is_recovered_by_replay_once_the_limit_is_raised(
    start_gateway: Any,
    fake_push: FakePushService,
    chain: FakeNeardata,
    rpc: FakeNearRpc,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from gateway.cli import main
    from tests.test_operate import config_file

    huge = transfer_block(H)
    huge["block"]["header"]["padding"] = "x" * (70 * 1024)
    chain.produce(H, huge)
    chain.produce(H + 1, transfer_block(H + 1))
    small = neardata(chain.url, rpc.url, max_block_bytes=64 * 1024)
    gw = start_gateway(watchers=[small], matching={"max_per_endpoint_per_day": 0})
    bob = subscribe(gw, fake_push, "bob.near")
    fake_push.wait_count(bob, 1)
    assert wait_until(lambda: state(gw)["cursor"] == str(H + 1))
    raised = f'[[watchers]]\nname = "chain"\nkind = "neardata"\nurl = "{chain.url}"\nrpc_url = "{rpc.url}"\n'
    cfg = str(config_file(tmp_path, gw, "[matching]\nmax_per_endpoint_per_day = 0\n" + raised))
    capsys.readouterr()
    args = ["replay", "--watcher", "chain", "--from-block", str(H), "--to-block", str(H + 1), "--config", cfg]
    assert main(args) == 0
    assert "1 new" in capsys.readouterr().out
    fake_push.wait_count(bob, 2)
    time.sleep(0.5)
    assert sorted(amounts(fake_push, bob)) == [H, H + 1]  # the lost block once, the other not again
    assert state(gw)["cursor"] == str(H + 1)  # the live cursor stays


MT_RULE = {
    "standard": "nep245",
    "event": "mt_transfer",
    "receiver_field": "new_owner_id",
    "initiator_field": "old_owner_id",
    "contract": "intents.near",
}


def test_neardata_poison_receipts_actions_and_events_are_counted_faults_and_the_block_is_still_read(
    start_gateway: Any, fake_push: FakePushService, chain: FakeNeardata, rpc: FakeNearRpc
) -> None:
    def transfer(rid: str, deposit: Any, sender: str = "alice.near") -> dict[str, Any]:
        return receipt(rid, sender, "bob.near", [{"Transfer": {"deposit": deposit}}])

    big_ft = event_log(
        "nep141", "ft_transfer", [{"old_owner_id": "alice.near", "new_owner_id": "bob.near", "amount": 2**63}]
    )
    deep_notify = poison_json({"key": "bob.near", "value": {"type": DEEP_MARK}})
    deep_set = {
        "FunctionCall": {
            "method_name": "set",
            "args": b64({"data": {"carol.near": {"index": {"notify": deep_notify}}}}),
            "gas": 1,
            "deposit": "0",
        }
    }
    deep_event = "EVENT_JSON:" + poison_json(
        {
            "standard": "nep245",
            "version": "1.0.0",
            "event": "mt_transfer",
            "data": [
                {
                    "old_owner_id": "alice.near",
                    "new_owner_id": "bob.near",
                    "token_ids": ["nep141:usdc"],
                    "amounts": DEEP_MARK,
                }
            ],
        }
    )
    with_42 = receipt("RG", "alice.near", "bob.near", [42, {"Transfer": {"deposit": "3"}}])
    chain.produce(
        H,
        block(
            H,
            [
                transfer("RA", "1"),
                transfer("RB", "2", sender=LONG_ACCOUNT),  # a 10,000-character account: no row can hold it
                transfer("RC", str(2**128)),  # not a u128
                receipt("RD", "alice.near", "token.near", [], logs=[big_ft]),  # an ft amount past 2^63, as a number
                receipt("RE", "carol.near", "social.near", [deep_set]),  # a notify nested 5,000 deep
                receipt("RF", "alice.near", "intents.near", [], logs=[deep_event]),  # an event nested 5,000 deep
                42,  # receipt outcomes that are not objects
                "not a row",
                with_42,  # an action that is not one, before a good transfer of the same receipt
                transfer("RH", "4"),
            ],
        ),
    )
    chain.produce(H + 1, block(H + 1, [transfer("RI", "5")]))
    gw = start_gateway(
        watchers=[neardata(chain.url, rpc.url, events=[MT_RULE])], matching={"max_per_endpoint_per_day": 0}
    )
    bob = subscribe(gw, fake_push, "bob.near")
    fake_push.wait_count(bob, 4)
    assert wait_until(lambda: state(gw)["cursor"] == str(H + 1))
    time.sleep(0.3)  # nothing more comes
    assert sorted(amounts(fake_push, bob)) == [1, 3, 4, 5]  # each once
    assert {r.payload["valueType"] for r in fake_push.for_sub(bob)} == {"near_transfer"}
    s = state(gw)
    assert s["faults"] == {"bad_row": 3, "bad_action": 2, "bad_event": 1, "bad_receipt": 2}
    assert s["skipped_heights"] == 0 and s["reconnects"] == 0
    assert chain.block_requests(H) == 1  # read once: not retried, not skipped
