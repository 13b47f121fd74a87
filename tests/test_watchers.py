"""Watchers end to end: fake sources speaking the real protocols -> gateway -> fake push service."""

from __future__ import annotations

import base64
import itertools
import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import fixture_path, row
from tests.fakepush import FakePushService, Subscription
from tests.fakesources import (
    DEEP_MARK,
    LONG_ACCOUNT,
    TABLE,
    ActionsServer,
    GraphQLWsServer,
    JsonHttpFeed,
    JsonWsFeed,
    SocialIndexServer,
    poison_json,
    wait_until,
)
from tests.test_e2e import subscribe

FAST = {"reconnect_initial_delay": 0.1, "reconnect_max_delay": 0.5}


def fixture_rows() -> list[dict[str, Any]]:
    rows = []
    for line in fixture_path("queryapi-graphql-ws.jsonl").read_text().splitlines():
        frame = json.loads(line)
        data = (frame.get("payload") or {}).get("data") or {}
        rows += data.get(TABLE, [])
    return rows


def pushed_ids(fake: FakePushService, sub: Subscription) -> list[Any]:
    return [r.payload["id"] for r in fake.for_sub(sub) if r.payload]


@pytest.fixture
def graphql() -> Iterator[GraphQLWsServer]:
    server = GraphQLWsServer(fixture_rows())
    server.gate.close()  # opened by each test once its streams exist
    yield server
    server.close()


def queryapi(url: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": "queryapi",
        "kind": "queryapi",
        "url": url,
        "start_block_height": 130000000,
        "batch_size": 2,
        "read_timeout": 5.0,
        **FAST,
        **extra,
    }


def test_queryapi_stream_delivers_end_to_end(
    start_gateway: Any, fake_push: FakePushService, graphql: GraphQLWsServer
) -> None:
    gw = start_gateway(watchers=[queryapi(graphql.url)], matching={"max_per_endpoint_per_day": 0})
    bob = subscribe(gw, fake_push, "bob.near")
    frank = subscribe(gw, fake_push, "frank.near")
    graphql.gate.open()
    fake_push.wait_count(bob, 6)
    fake_push.wait_count(frank, 3)
    assert sorted(pushed_ids(fake_push, bob)) == [9001, 9002, 9003, 9006, 9008, 9009]
    assert sorted(pushed_ids(fake_push, frank)) == [9004, 9005, 9007]
    session = graphql.sessions[0]
    assert session["subprotocol"] == "graphql-ws"
    assert session["init"]["payload"]["headers"] == {"x-hasura-role": "dataplatform_near"}
    assert session["from"] == 130000000 and TABLE in session["start"]["payload"]["query"]
    assert fake_push.errors == []
    state = gw.http.get("/healthz").json()["watchers"]["queryapi"]
    assert state["connected"] and state["cursor"] == "130000007" and state["events"] == 9
    assert state["last_event_at"] is not None and state["last_block_height"] == 130000007


def test_queryapi_drop_mid_stream_resumes_from_cursor_without_gap_or_duplicate(
    start_gateway: Any, fake_push: FakePushService, graphql: GraphQLWsServer
) -> None:
    graphql.drop_after_frames = [2, 1]  # first connection dies after 2 frames, the second after 1
    gw = start_gateway(watchers=[queryapi(graphql.url)], matching={"max_per_endpoint_per_day": 0})
    bob = subscribe(gw, fake_push, "bob.near")
    frank = subscribe(gw, fake_push, "frank.near")
    graphql.gate.open()
    fake_push.wait_count(bob, 6)
    fake_push.wait_count(frank, 3)
    assert len(graphql.sessions) >= 3
    froms = [s["from"] for s in graphql.sessions]
    assert froms[0] == 130000000 and froms[1] > 130000000  # resumed from the cursor, not the start
    assert froms == sorted(froms)
    # the server re-sent rows at the cursor height; none was pushed twice
    assert any(n > 1 for n in Counter(graphql.sent_ids).values())
    assert sorted(pushed_ids(fake_push, bob)) == [9001, 9002, 9003, 9006, 9008, 9009]
    assert sorted(pushed_ids(fake_push, frank)) == [9004, 9005, 9007]
    assert gw.http.get("/healthz").json()["watchers"]["queryapi"]["reconnects"] >= 2


def test_queryapi_survives_garbage_and_error_frames(
    start_gateway: Any, fake_push: FakePushService, graphql: GraphQLWsServer, caplog: pytest.LogCaptureFixture
) -> None:
    graphql.garbage = [
        "not json at all",
        json.dumps({"type": "data", "id": "notifications", "payload": {"data": {TABLE: [{"id": 1}]}}}),
        json.dumps({"type": "data", "id": "notifications", "payload": {"data": {TABLE: [{"id": 2}]}}}),
        json.dumps({"type": "mystery"}),
        "[1, 2, 3]",
    ]
    graphql.error_after_frames = 3
    gw = start_gateway(watchers=[queryapi(graphql.url)], matching={"max_per_endpoint_per_day": 0})
    bob = subscribe(gw, fake_push, "bob.near")
    graphql.gate.open()
    fake_push.wait_count(bob, 6, timeout=15)
    faults = gw.http.get("/healthz").json()["watchers"]["queryapi"]["faults"]
    assert faults["malformed_json"] == 1 and faults["bad_row"] == 2 and faults["unknown_frame"] == 1
    assert faults["bad_frame"] == 1 and faults["server_error"] == 1
    messages = [r.getMessage() for r in caplog.records if r.name == "watchers"]
    assert sum("bad_row" in m for m in messages) == 1  # logged once per kind, then only counted
    assert any("field not found in type" in m for m in messages)  # the server's error, with its message
    assert sorted(pushed_ids(fake_push, bob)) == [9001, 9002, 9003, 9006, 9008, 9009]


def test_queryapi_restart_resumes_from_the_stored_cursor(
    start_gateway: Any, fake_push: FakePushService, graphql: GraphQLWsServer
) -> None:
    gw = start_gateway(watchers=[queryapi(graphql.url)], matching={"max_per_endpoint_per_day": 0})
    bob = subscribe(gw, fake_push, "bob.near")
    graphql.gate.open()
    fake_push.wait_count(bob, 6)
    gw.stop()
    graphql.add_rows([{**fixture_rows()[0], "id": 9100, "blockHeight": 130000010, "actionAtBlockHeight": 1}])
    again = start_gateway(watchers=[queryapi(graphql.url)], matching={"max_per_endpoint_per_day": 0})
    fake_push.wait_count(bob, 7)
    assert graphql.sessions[-1]["from"] == 130000007
    assert sorted(pushed_ids(fake_push, bob)) == [9001, 9002, 9003, 9006, 9008, 9009, 9100]
    assert again.http.get("/healthz").json()["watchers"]["queryapi"]["cursor"] == "130000010"


def actions_fixture() -> list[list[dict[str, Any]]]:
    return [json.loads(line)["actions"] for line in fixture_path("near-actions-ws.jsonl").read_text().splitlines()]


def set_call(receipt: str, signer: str, block: int, notify: Any, *, notify_text: str | None = None) -> dict[str, Any]:
    """A SocialDB set call with this notify value (or this exact notify text)."""
    args = {"data": {signer: {"index": {"notify": json.dumps(notify) if notify_text is None else notify_text}}}}
    return {
        "blockHeight": block,
        "blockHash": "h",
        "blockTimestampMs": 1714000000000.1,
        "shardId": 0,
        "txHash": "t",
        "receiptId": receipt,
        "signerId": signer,
        "signerPublicKey": "ed25519:x",
        "accountId": "social.near",
        "predecessorId": signer,
        "status": "SUCCESS",
        "actionIndex": 0,
        "action": {
            "FunctionCall": {
                "method_name": "set",
                "args": base64.b64encode(json.dumps(args).encode()).decode(),
                "gas": 1,
                "deposit": "0",
            }
        },
    }


def other_contract_call(block: int) -> dict[str, Any]:
    call = set_call("RZ", "zed.near", block, {"key": "bob.near", "value": {"type": "poke"}})
    return {**call, "accountId": "not-social.near"}


def actions_watcher(url: str) -> dict[str, Any]:
    return {
        "name": "actions",
        "kind": "near-actions",
        "url": url,
        "fetch_past_actions": 50,
        "read_timeout": 5.0,
        **FAST,
    }


def test_actions_stream_filters_decodes_and_delivers(start_gateway: Any, fake_push: FakePushService) -> None:
    past, *live = actions_fixture()
    server = ActionsServer([*past, other_contract_call(130000001)])
    server.gate.close()
    try:
        gw = start_gateway(watchers=[actions_watcher(server.url)], matching={"max_per_endpoint_per_day": 0})
        bob = subscribe(gw, fake_push, "bob.near")
        frank = subscribe(gw, fake_push, "frank.near")
        server.gate.open()
        fake_push.wait_count(bob, 2)  # like (one object), mention (array entry 0)
        fake_push.wait_count(frank, 1)  # mention (array entry 1)
        for block in live:
            server.push_block(block)
        fake_push.wait_count(frank, 2)  # follow, in the {"": …} form
        sub = server.subscriptions[0]
        assert sub["fetch_past_actions"] == 50
        assert sub["filter"] == [
            {"accountId": "social.near", "status": "SUCCESS", "action": {"FunctionCall": {"method_name": "set"}}}
        ]
        assert sorted(pushed_ids(fake_push, bob)) == ["R1:0:0", "R2:0:0"]
        assert sorted(pushed_ids(fake_push, frank)) == ["R2:0:1", "R3:0:0"]
        state = gw.http.get("/healthz").json()["watchers"]["actions"]
        assert state["connected"] and state["lag_seconds"] is not None and state["cursor"] == "130000003"
    finally:
        server.close()


def test_actions_reconnect_replays_past_rows_without_duplicates(start_gateway: Any, fake_push: FakePushService) -> None:
    past, *_ = actions_fixture()
    server = ActionsServer(past)
    server.drop_after_live_frames = [1]
    server.gate.close()
    try:
        gw = start_gateway(watchers=[actions_watcher(server.url)], matching={"max_per_endpoint_per_day": 0})
        bob = subscribe(gw, fake_push, "bob.near")
        server.gate.open()
        fake_push.wait_count(bob, 2)
        server.push_block([set_call("R10", "carol.near", 130000010, {"key": "bob.near", "value": {"type": "poke"}})])
        assert wait_until(lambda: len(server.subscriptions) == 2)  # dropped after that frame; reconnected
        server.push_block(
            [set_call("R11", "carol.near", 130000011, [{"key": "bob.near", "value": {"type": "follow"}}])]
        )
        fake_push.wait_count(bob, 4)
        assert wait_until(lambda: len(fake_push.for_sub(bob)) == 4, 1.0)
        assert sorted(pushed_ids(fake_push, bob)) == sorted(["R1:0:0", "R2:0:0", "R10:0:0", "R11:0:0"])
    finally:
        server.close()


def social_watcher(url: str) -> dict[str, Any]:
    return {"name": "social", "kind": "social-index", "url": url, "interval": 0.2, "limit": 2, **FAST}


def test_social_index_polls_each_account_from_its_cursor(start_gateway: Any, fake_push: FakePushService) -> None:
    index = SocialIndexServer()
    page = json.loads(fixture_path("social-index-notify-bob.near.json").read_text())
    for entry in page:
        index.add("bob.near", entry["accountId"], entry["blockHeight"], entry["value"])
    try:
        gw = start_gateway(watchers=[social_watcher(index.url)], matching={"max_per_endpoint_per_day": 0})
        bob = subscribe(gw, fake_push, "bob.near")
        # the first poll of a new account only finds where its history ends: no flood of old notifications
        assert wait_until(lambda: len(index.requests_for("bob.near")) >= 3)
        assert index.requests_for("bob.near")[0]["options"] == {"limit": 1, "order": "desc"}
        assert fake_push.for_sub(bob, status=None) == []
        index.add("bob.near", "zoe.near", 130000010, {"type": "poke"})
        index.add("bob.near", "yan.near", 130000011, {"type": "follow"})
        index.add(
            "bob.near",
            "xia.near",
            130000012,
            {"type": "like", "item": {"type": "social", "path": "bob.near/post/main", "blockHeight": 130000000}},
        )
        pushes = fake_push.wait_count(bob, 3)
        assert sorted(p.payload["initiatedBy"] for p in pushes if p.payload) == ["xia.near", "yan.near", "zoe.near"]
        froms = [r["options"].get("from") for r in index.requests_for("bob.near")[1:]]
        assert froms[0] == 130000007 and 130000012 in froms  # from = last + 1, per account
        # a new subscriber is picked up without a restart; a failing poll is retried
        index.failures = [(500, b"Internal error"), (400, b"bad key")]
        carol = subscribe(gw, fake_push, "carol.near")
        assert wait_until(lambda: len(index.requests_for("carol.near")) >= 2, 10)
        index.add("carol.near", "bob.near", 130000020, {"type": "poke"})
        fake_push.wait_count(carol, 1)
        assert gw.http.get("/healthz").json()["watchers"]["social"]["faults"]["poll_failed"] >= 1
        assert len(fake_push.for_sub(bob)) == 3
    finally:
        index.close()


GENERIC_ROWS = [
    {"tx": "0xa1", "to": {"account": "bob.near"}, "from": "eve.near", "kind": "transfer", "block": {"number": 50}},
    {"tx": "0xa2", "to": {"account": "bob.near"}, "from": "eve.near", "kind": "swap", "block": {"number": 51}},
    {"tx": "0xa3", "to": {"account": "x"}, "kind": "swap", "block": {"number": 52}},  # bad receiver: skipped
]


def test_generic_websocket_feed_configured_only_in_toml(
    tmp_path: Path, start_gateway: Any, fake_push: FakePushService
) -> None:
    feed = JsonWsFeed(GENERIC_ROWS)
    feed.gate.close()
    config = tmp_path / "feed.toml"
    config.write_text(f"""
[[watchers]]
name = "chain-feed"
kind = "websocket-json"
url = "{feed.url}"
start_cursor = "49"
rows = "result.items"
reconnect_initial_delay = 0.1
[watchers.subscribe]
method = "subscribe"
params = {{ from = "{{next}}", channel = "notifications" }}
[watchers.mapping]
id = "tx"
receiver = "to.account"
initiator = "from"
type = "kind"
block_height = "block.number"
item_path = ""
""")
    try:
        gw = start_gateway(config_file=config, matching={"max_per_endpoint_per_day": 0})
        bob = subscribe(gw, fake_push, "bob.near")
        feed.gate.open()
        pushes = fake_push.wait_count(bob, 2)
        by_tx = {p.payload["tx"]: p.payload for p in pushes if p.payload}
        assert sorted(by_tx) == ["0xa1", "0xa2"]
        assert by_tx["0xa1"]["body"] == "eve.near sent you a transfer notification"
        assert feed.subscribes[0] == {"method": "subscribe", "params": {"from": 50, "channel": "notifications"}}
        faults = gw.http.get("/healthz").json()["watchers"]["chain-feed"]["faults"]
        assert faults == {"malformed_json": 1, "bad_row": 1}
    finally:
        feed.close()


def test_generic_http_feed_configured_only_in_toml(
    tmp_path: Path, start_gateway: Any, fake_push: FakePushService
) -> None:
    rows = [{"uid": f"n{h}", "user": "bob.near", "event": "mention", "height": h} for h in range(1, 6)]
    feed = JsonHttpFeed(rows)
    feed.gate.close()
    config = tmp_path / "feed.toml"
    config.write_text(f"""
[[watchers]]
name = "poll-feed"
kind = "http-poll-json"
url = "{feed.url}/rows?after={{cursor}}"
interval = 0.2
rows = "data.rows"
[watchers.mapping]
id = "uid"
receiver = "user"
initiator = ""
type = "event"
block_height = "height"
item_path = ""
""")
    try:
        gw = start_gateway(config_file=config, matching={"max_per_endpoint_per_day": 0})
        bob = subscribe(gw, fake_push, "bob.near")
        feed.gate.open()
        pushes = fake_push.wait_count(bob, 5)
        assert sorted(p.payload["uid"] for p in pushes if p.payload) == ["n1", "n2", "n3", "n4", "n5"]
        assert list(dict.fromkeys(feed.paths))[:4] == [
            "/rows?after=0",
            "/rows?after=2",
            "/rows?after=4",
            "/rows?after=5",
        ]
        assert gw.http.get("/healthz").json()["watchers"]["poll-feed"]["cursor"] == "5"
    finally:
        feed.close()


def test_a_silent_dead_connection_is_noticed_by_the_read_timeout(
    start_gateway: Any, fake_push: FakePushService, graphql: GraphQLWsServer
) -> None:
    graphql.silent_sessions = 1  # acks, then never sends a frame (not even a keep-alive)
    gw = start_gateway(watchers=[queryapi(graphql.url, read_timeout=0.5)], matching={"max_per_endpoint_per_day": 0})
    bob = subscribe(gw, fake_push, "bob.near")
    graphql.gate.open()
    fake_push.wait_count(bob, 6)
    assert graphql.sessions[0].get("silent") and len(graphql.sessions) >= 2
    state = gw.http.get("/healthz").json()["watchers"]["queryapi"]
    assert state["reconnects"] >= 1


def test_social_index_respects_its_concurrency_cap_and_interval(start_gateway: Any, fake_push: FakePushService) -> None:
    index = SocialIndexServer()
    index.delay = 0.15
    try:
        gw = start_gateway(
            watchers=[{**social_watcher(index.url), "concurrency": 2, "interval": 0.6}],
            matching={"max_per_endpoint_per_day": 0},
        )
        for i in range(6):
            subscribe(gw, fake_push, f"acc{i}.near")
        assert wait_until(lambda: all(len(index.times.get(f"acc{i}.near", [])) >= 3 for i in range(6)), 15)
        assert index.max_in_flight == 2
        for i in range(6):
            times = index.times[f"acc{i}.near"]
            gaps = [b - a for a, b in itertools.pairwise(times)]
            assert min(gaps) >= 0.6, gaps  # nothing new: each account waits its interval
    finally:
        index.close()


def test_actions_stream_survives_garbage(start_gateway: Any, fake_push: FakePushService) -> None:
    past, *_ = actions_fixture()
    broken = {**past[0], "receiptId": "RB", "action": {"FunctionCall": {"method_name": "set", "args": "%%%"}}}
    server = ActionsServer([*past, broken])
    server.garbage = ["{{{ not json", json.dumps({"note": "no actions here"}), json.dumps({"actions": [42]})]
    server.gate.close()
    try:
        gw = start_gateway(watchers=[actions_watcher(server.url)], matching={"max_per_endpoint_per_day": 0})
        bob = subscribe(gw, fake_push, "bob.near")
        server.gate.open()
        fake_push.wait_count(bob, 2)
        server.push_block([set_call("R20", "carol.near", 130000020, {"key": "bob.near", "value": {"type": "poke"}})])
        fake_push.wait_count(bob, 3)
        state = gw.http.get("/healthz").json()["watchers"]["actions"]
        assert state["faults"] == {"malformed_json": 1, "bad_frame": 1, "bad_action": 2}
        assert state["reconnects"] == 0 and state["connected"]
    finally:
        server.close()


# --- poison rows (issue 15): each kind, its poison beside good rows in one frame or page -------------
#
# The poison: a block height past what the store and JSON.parse hold (2^63), a 10,000-character
# account, a row nested 5,000 deep (read without recursion, then refused for its depth) and a row that
# is not an object. Each must be one counted fault: the good rows beside it are delivered once, the
# cursor moves on, and the source is not reconnected over it.


def test_queryapi_poison_rows_are_counted_faults_and_the_good_rows_beside_them_are_delivered(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    poison_frame = {
        "type": "data",
        "id": "notifications",
        "payload": {
            "data": {
                TABLE: [
                    row(1, blockHeight=130000001),
                    row(2, blockHeight=2**63),  # no store can hold it: it once wedged the watcher
                    row(3, receiver=LONG_ACCOUNT, blockHeight=130000001),
                    {**row(4, blockHeight=130000001), "extra": DEEP_MARK},
                    "not a row",
                    42,
                    row(5, blockHeight=130000002, message="m" * 5000),  # over the 4 KiB a push holds
                    row(6, blockHeight=130000002),
                ]
            }
        },
    }
    graphql = GraphQLWsServer([row(n, blockHeight=130000000 + n) for n in range(7, 10)])
    graphql.raw_frames = [poison_json(poison_frame)]  # one frame, before the rows 7..9
    graphql.gate.close()
    try:
        gw = start_gateway(watchers=[queryapi(graphql.url)], matching={"max_per_endpoint_per_day": 0})
        bob = subscribe(gw, fake_push, "bob.near")
        graphql.gate.open()
        fake_push.wait_count(bob, 5)
        assert wait_until(lambda: gw.http.get("/healthz").json()["watchers"]["queryapi"]["cursor"] == "130000009")
        assert sorted(pushed_ids(fake_push, bob)) == [1, 6, 7, 8, 9]  # each once
        state = gw.http.get("/healthz").json()["watchers"]["queryapi"]
        assert state["faults"] == {"bad_row": 6}
        assert state["reconnects"] == 0 and len(graphql.sessions) == 1  # never a reconnect over them
    finally:
        graphql.close()


def test_actions_poison_rows_are_counted_faults_and_the_good_rows_beside_them_are_delivered(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    poke = {"key": "bob.near", "value": {"type": "poke"}}
    deep_args = set_call("R35", "carol.near", 130000030, poke)
    deep_args["action"] = {"FunctionCall": {"method_name": "set", "args": DEEP_MARK, "gas": 1, "deposit": "0"}}
    poison_frame = {
        "secret": "gateway",
        "actions": [
            set_call("R30", "carol.near", 130000030, poke),
            set_call("R31", "carol.near", 2**63, poke),
            set_call("R32", "carol.near", 130000030, {"key": LONG_ACCOUNT, "value": {"type": "poke"}}),
            # a notify nested 5,000 deep (anyone can write one), and a frame nested as deep
            set_call(
                "R33",
                "carol.near",
                130000030,
                None,
                notify_text=poison_json({"key": "bob.near", "value": {"type": DEEP_MARK}}),
            ),
            deep_args,
            "not a row",
            42,
            set_call("R34", "carol.near", 130000031, poke),
        ],
    }
    server = ActionsServer([])
    try:
        gw = start_gateway(watchers=[actions_watcher(server.url)], matching={"max_per_endpoint_per_day": 0})
        bob = subscribe(gw, fake_push, "bob.near")
        # connected, and the fake's (empty) past frame read: live frames now reach the watcher
        assert wait_until(lambda: gw.http.get("/healthz").json()["watchers"]["actions"]["seconds_since_last_frame"])
        server.push_frame(poison_json(poison_frame))
        fake_push.wait_count(bob, 2)
        server.push_block([set_call("R40", "carol.near", 130000040, poke)])
        fake_push.wait_count(bob, 3)
        assert wait_until(lambda: gw.http.get("/healthz").json()["watchers"]["actions"]["cursor"] == "130000040")
        time.sleep(0.3)  # nothing more comes
        assert sorted(pushed_ids(fake_push, bob)) == ["R30:0:0", "R34:0:0", "R40:0:0"]
        state = gw.http.get("/healthz").json()["watchers"]["actions"]
        assert state["faults"] == {"bad_row": 3, "bad_action": 3}
        assert state["reconnects"] == 0 and len(server.subscriptions) == 1
    finally:
        server.close()


def index_entry(initiator: str, block: int, value: Any) -> str:
    return poison_json({"accountId": initiator, "blockHeight": block, "value": value})


def test_social_index_poison_entries_are_counted_faults_and_the_cursor_moves_past_them(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    index = SocialIndexServer()
    poke = {"type": "poke"}
    try:
        gw = start_gateway(watchers=[social_watcher(index.url)], matching={"max_per_endpoint_per_day": 0})
        bob = subscribe(gw, fake_push, "bob.near")
        assert wait_until(lambda: len(index.requests_for("bob.near")) >= 2)  # the cursor is set: polling from 1
        # pages of 2, each running on to the end of its block: [zoe, 2^63], [two poison rows], [two more, wes], [vic]
        index.add_raw(
            "bob.near",
            [
                (130000010, index_entry("zoe.near", 130000010, poke)),
                (130000010, index_entry("yan.near", 2**63, poke)),  # served in block 130000010, says 2^63
                # a page of nothing but poison: the cursor must still move past it, or it is asked for forever
                (130000011, index_entry(LONG_ACCOUNT, 130000011, poke)),
                (130000011, index_entry("xia.near", 130000011, {"type": DEEP_MARK})),
                (130000012, '"not a row"'),
                (130000012, "42"),
                (130000012, index_entry("wes.near", 130000012, poke)),
                (130000013, index_entry("vic.near", 130000013, poke)),
            ],
        )
        pushes = fake_push.wait_count(bob, 3)
        assert sorted(p.payload["initiatedBy"] for p in pushes if p.payload) == ["vic.near", "wes.near", "zoe.near"]
        assert wait_until(lambda: [r["options"].get("from") for r in index.requests_for("bob.near")][-1] == 130000014)
        time.sleep(0.5)  # a few more polls of the newest: none goes back over the poison
        froms = [r["options"].get("from") for r in index.requests_for("bob.near")[1:]]
        assert [f for f in froms if f != 1] == [
            130000011,
            130000012,
            130000013,
            *([130000014] * froms.count(130000014)),
        ]
        state = gw.http.get("/healthz").json()["watchers"]["social"]
        assert state["faults"] == {"bad_row": 5}  # each poison entry counted once: never read again
        assert len(fake_push.for_sub(bob)) == 3
    finally:
        index.close()


def feed_row(tx: str, block: int, to: str = "bob.near", **extra: Any) -> dict[str, Any]:
    return {
        "tx": tx,
        "to": {"account": to},
        "from": "eve.near",
        "kind": "transfer",
        "block": {"number": block},
        **extra,
    }


def ws_feed_watcher(url: str) -> dict[str, Any]:
    return {
        "name": "chain-feed",
        "kind": "websocket-json",
        "url": url,
        "start_cursor": "49",
        "rows": "result.items",
        "subscribe": {"method": "subscribe", "params": {"from": "{next}"}},
        "mapping": {
            "id": "tx",
            "receiver": "to.account",
            "initiator": "from",
            "type": "kind",
            "block_height": "block.number",
            "item_path": "",
        },
        "read_timeout": 5.0,
        **FAST,
    }


def test_websocket_feed_poison_rows_are_counted_faults_and_the_good_rows_beside_them_are_delivered(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    feed = JsonWsFeed([feed_row("0xc1", 60), feed_row("0xc2", 61)])
    items = [
        feed_row("0xb1", 50),
        feed_row("0xb2", 2**63),
        feed_row("0xb3", 51, to=LONG_ACCOUNT),
        feed_row("0xb4", 51, extra=DEEP_MARK),
        "not a row",
        42,
        feed_row("0xb5", 52),
    ]
    feed.raw_frames = [poison_json({"channel": "notifications", "result": {"items": items}})]
    feed.gate.close()
    try:
        gw = start_gateway(watchers=[ws_feed_watcher(feed.url)], matching={"max_per_endpoint_per_day": 0})
        bob = subscribe(gw, fake_push, "bob.near")
        feed.gate.open()
        fake_push.wait_count(bob, 4)
        assert wait_until(lambda: gw.http.get("/healthz").json()["watchers"]["chain-feed"]["cursor"] == "61")
        assert sorted(p.payload["tx"] for p in fake_push.for_sub(bob) if p.payload) == ["0xb1", "0xb5", "0xc1", "0xc2"]
        state = gw.http.get("/healthz").json()["watchers"]["chain-feed"]
        assert state["faults"] == {"malformed_json": 1, "bad_row": 5}  # the fake's "this is not json", and these
        assert state["reconnects"] == 0 and len(feed.subscribes) == 1
    finally:
        feed.close()


def http_feed_watcher(url: str) -> dict[str, Any]:
    return {
        "name": "poll-feed",
        "kind": "http-poll-json",
        "url": f"{url}/rows?after={{cursor}}",
        "interval": 0.2,
        "rows": "data.rows",
        "mapping": {
            "id": "uid",
            "receiver": "user",
            "initiator": "",
            "type": "event",
            "block_height": "height",
            "item_path": "",
        },
        **FAST,
    }


def feed_entry(uid: str, height: int, user: str = "bob.near", **extra: Any) -> str:
    return poison_json({"uid": uid, "user": user, "event": "mention", "height": height, **extra})


def test_http_feed_poison_rows_are_counted_faults_and_the_cursor_moves_past_them(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    feed = JsonHttpFeed([])
    feed.gate.close()
    # pages of 2 rows after the cursor: [n1, 2^63], [two poison rows], [not a row, n4], [42, n5], [n6]
    feed.add_raw(
        [
            (1, feed_entry("n1", 1)),
            (1, feed_entry("n2", 2**63)),  # served with n1, says 2^63
            # a page of nothing but poison: the cursor must still move past it, or it is asked for forever
            (2, feed_entry("n3", 2, user=LONG_ACCOUNT)),
            (3, feed_entry("nd", 3, extra=DEEP_MARK)),
            (4, '"not a row"'),
            (4, feed_entry("n4", 4)),
            (5, "42"),
            (5, feed_entry("n5", 5)),
            (6, feed_entry("n6", 6)),
        ]
    )
    try:
        gw = start_gateway(watchers=[http_feed_watcher(feed.url)], matching={"max_per_endpoint_per_day": 0})
        bob = subscribe(gw, fake_push, "bob.near")
        feed.gate.open()
        fake_push.wait_count(bob, 4)
        assert wait_until(lambda: gw.http.get("/healthz").json()["watchers"]["poll-feed"]["cursor"] == "6")
        time.sleep(0.5)  # a few more polls of the newest
        assert sorted(p.payload["uid"] for p in fake_push.for_sub(bob) if p.payload) == ["n1", "n4", "n5", "n6"]
        asked = list(dict.fromkeys(p for p in feed.paths if p != "/rows?after=0"))
        assert asked == [f"/rows?after={n}" for n in (1, 3, 4, 5, 6)]  # past the poison rows, never back
        state = gw.http.get("/healthz").json()["watchers"]["poll-feed"]
        assert state["faults"] == {"bad_row": 5}
        assert state["reconnects"] == 0
    finally:
        feed.close()


def test_social_index_a_full_page_the_cursor_cannot_move_past_is_asked_again_at_the_interval_not_at_once(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    index = SocialIndexServer()
    try:
        gw = start_gateway(
            watchers=[{**social_watcher(index.url), "interval": 1.0}], matching={"max_per_endpoint_per_day": 0}
        )
        subscribe(gw, fake_push, "bob.near")
        assert wait_until(lambda: len(index.requests_for("bob.near")) >= 2)
        index.add_raw("bob.near", [(130000010, '"not a row"'), (130000010, "42")])  # full, and no height in it
        assert wait_until(lambda: gw.http.get("/healthz").json()["watchers"]["social"]["faults"].get("bad_row"))
        before = len(index.requests_for("bob.near"))
        time.sleep(2.0)
        asked = len(index.requests_for("bob.near")) - before
        # once a second (the interval), not at every scheduling round (0.2 s) for the same page
        assert asked <= 3, asked
    finally:
        index.close()
