"""Pure decoders on every fixture shape, and on garbage (which never raises, never makes events)."""

from __future__ import annotations

import base64
import json

import pytest

from tests.conftest import fixture_path
from watchers.decode import (
    decode_actions_frame,
    decode_json_rows,
    decode_queryapi_frame,
    decode_social_index_page,
    notify_entries,
)

TABLE = "dataplatform_near_notifications_notifications_stream"


def frames(name: str) -> list[str]:
    return fixture_path(name).read_text().splitlines()


def test_queryapi_fixture_frames() -> None:
    decoded = [decode_queryapi_frame(f, source="queryapi", table=TABLE) for f in frames("queryapi-graphql-ws.jsonl")]
    assert [d.kind for d in decoded] == ["ack", "ka", "data", "ka", "data", "data", "data", "error"]
    events = [e for d in decoded for e in d.events]
    assert [e.row["id"] for e in events] == list(range(9001, 9010))
    assert len({e.key for e in events}) == 9 and all(e.key.startswith("near:") for e in events)
    assert all(not d.faults for d in decoded)
    assert decoded[-1].errors == ["field not found in type"]
    assert [d.max_block_height for d in decoded if d.events] == [130000002, 130000004, 130000007]
    first = json.loads(frames("queryapi-graphql-ws.jsonl")[2])["payload"]["data"][TABLE][0]
    assert events[0].row == first  # the row goes out unchanged


def test_actions_fixture_frames() -> None:
    decoded = [decode_actions_frame(f, source="actions") for f in frames("near-actions-ws.jsonl")]
    assert [d.kind for d in decoded] == ["past", "live", "live"]
    events = [e for d in decoded for e in d.events]
    assert [(e.row["id"], e.receiver, e.value_type) for e in events] == [
        ("R1:0:0", "bob.near", "like"),  # notify as one object
        ("R2:0:0", "bob.near", "mention"),  # notify as an array: one event per entry
        ("R2:0:1", "frank.near", "mention"),
        ("R3:0:0", "frank.near", "follow"),  # the {"": …} form
    ]  # R4 (a set without notify) and R5 (FAILURE) are skipped
    assert decoded[0].max_block_time is not None
    like = events[0].row
    assert (like["initiatedBy"], like["blockHeight"], like["path"], like["actionAtBlockHeight"], like["itemType"]) == (
        "alice.near",
        130000001,
        "bob.near/post/main",
        129999000,
        "social",
    )
    mention = events[1].row
    assert mention["actionAtBlockHeight"] is None and mention["blockHeight"] == 130000002
    assert all(not d.faults for d in decoded)


def test_social_index_fixture_page() -> None:
    page = json.loads(fixture_path("social-index-notify-bob.near.json").read_text())
    decoded = decode_social_index_page(page, source="social", receiver="bob.near")
    assert [e.value_type for e in decoded.events] == ["like", "mention", "devgovgigs/like", "custom"]
    assert {e.receiver for e in decoded.events} == {"bob.near"}
    assert decoded.events[2].row["devhubPostId"] == 512
    assert decoded.events[3].row["message"] == "Your bounty was approved"
    assert decoded.max_block_height == 130000006
    again = decode_social_index_page(page, source="social", receiver="bob.near")
    assert [e.key for e in again.events] == [e.key for e in decoded.events]  # stable ids


def test_notify_forms() -> None:
    one = json.dumps({"key": "bob.near", "value": {"type": "poke"}})
    assert notify_entries(one) == [{"key": "bob.near", "value": {"type": "poke"}}]
    assert len(notify_entries(json.dumps([json.loads(one)] * 2))) == 2
    assert notify_entries({"": one}) == notify_entries(one)
    with pytest.raises(ValueError):
        notify_entries(42)


GARBAGE = [
    "",
    "not json",
    "[]",
    "null",
    "42",
    '{"type": "data"}',
    '{"type": "data", "payload": {"data": {}}}',
    '{"type": "surprise"}',
    '{"actions": "nope"}',
    '{"actions": [1, null, {"status": "SUCCESS"}]}',
    "\x00\xff",
    json.dumps({"type": "data", "payload": {"data": {TABLE: [{"id": 1}]}}}),
]


@pytest.mark.parametrize("text", GARBAGE)
def test_garbage_never_raises_and_never_makes_events(text: str) -> None:
    for decoded in (decode_queryapi_frame(text, source="q", table=TABLE), decode_actions_frame(text, source="a")):
        assert decoded.events == []
    assert decode_social_index_page(text, source="s", receiver="bob.near").events == []


def test_non_standard_json_numbers_are_a_fault_not_an_event() -> None:
    good = next(f for f in frames("queryapi-graphql-ws.jsonl") if '"blockHeight":' in f)
    assert decode_queryapi_frame(good, source="q", table=TABLE).events
    for constant in ("NaN", "Infinity", "-Infinity"):
        odd = good.replace('"blockHeight":', f'"score": {constant}, "blockHeight":', 1)
        assert odd != good
        decoded = decode_queryapi_frame(odd, source="q", table=TABLE)
        assert decoded.events == [] and [f.kind for f in decoded.faults] == ["malformed_json"]


def test_bad_action_is_counted_and_the_rest_of_the_frame_decodes() -> None:
    good = json.loads(frames("near-actions-ws.jsonl")[0])
    broken = dict(good["actions"][0], receiptId="RX")
    broken["action"] = {"FunctionCall": {"method_name": "set", "args": "!!!not base64"}}
    frame = dict(good, actions=[broken, *good["actions"]])
    decoded = decode_actions_frame(json.dumps(frame), source="a")
    assert [f.kind for f in decoded.faults] == ["bad_action"]
    assert len(decoded.events) == 3


def test_notify_for_an_invalid_receiver_is_a_fault_not_an_event() -> None:
    args = {"data": {"alice.near": {"index": {"notify": json.dumps({"key": "x", "value": {"type": "like"}})}}}}
    action = {
        "status": "SUCCESS",
        "accountId": "social.near",
        "receiptId": "R9",
        "actionIndex": 0,
        "blockHeight": 5,
        "action": {
            "FunctionCall": {"method_name": "set", "args": base64.b64encode(json.dumps(args).encode()).decode()}
        },
    }
    decoded = decode_actions_frame(json.dumps({"actions": [action]}), source="a")
    assert decoded.events == [] and [f.kind for f in decoded.faults] == ["bad_row"]


def test_one_notification_has_one_key_whatever_source_carried_it() -> None:
    query = [
        e for f in frames("queryapi-graphql-ws.jsonl") for e in decode_queryapi_frame(f, source="q", table=TABLE).events
    ]
    actions = [e for f in frames("near-actions-ws.jsonl") for e in decode_actions_frame(f, source="a").events]
    page = json.loads(fixture_path("social-index-notify-bob.near.json").read_text())
    social = decode_social_index_page(page, source="s", receiver="bob.near").events
    like = {e.key for e in (query[0], actions[0], social[0])}
    mention = {e.key for e in (query[2], actions[1], social[1])}
    assert len(like) == 1 and len(mention) == 1 and like != mention
    assert query[0].value_type == actions[0].value_type == social[0].value_type == "like"


def test_generic_rows_follow_the_mapping() -> None:
    page = {
        "result": {
            "items": [
                {"hash": "0xa", "to": "bob.eth", "from": "alice.eth", "kind": "transfer", "block": 17, "extra": 1},
                {"hash": "0xb", "to": "b", "kind": "transfer", "block": 18},  # receiver too short: a fault
                "junk",
            ]
        }
    }
    mapping = {
        "id": "hash",
        "receiver": "to",
        "initiator": "from",
        "type": "kind",
        "block_height": "block",
        "item_path": "",
    }
    decoded = decode_json_rows(page, source="eth", rows="result.items", mapping=mapping)
    [event] = decoded.events
    assert (event.key, event.receiver, event.value_type, event.block_height) == ("eth:0xa", "bob.eth", "transfer", 17)
    assert event.row["initiatedBy"] == "alice.eth" and event.row["extra"] == 1
    assert sorted(f.kind for f in decoded.faults) == ["bad_row", "bad_row"]
    assert decode_json_rows({"x": 1}, source="eth", rows="result.items", mapping=mapping).faults[0].kind == "no_rows"


def test_a_social_notify_cannot_claim_to_be_account_activity() -> None:
    """Anyone can write index.notify {"type": "delete_key"} to bob: it must not become a security alert
    (high urgency, through quiet hours) — only the chain decoder makes activity rows."""
    import base64

    from watchers.decode import Decoded, decode_social_set

    notify = [{"key": "bob.near", "value": {"type": t}} for t in ("delete_key", "add_key", "near_transfer", "like")]
    args = {"data": {"mallory.near": {"index": {"notify": json.dumps(notify)}}}}
    out = Decoded("live")
    decode_social_set(base64.b64encode(json.dumps(args).encode()).decode(), "rcpt:0", 140000000, "social", out)
    assert [e.value_type for e in out.events] == ["like"]
    assert [f.kind for f in out.faults] == ["reserved_type"] * 3
