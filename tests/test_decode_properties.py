"""Property tests (hypothesis) for every decoder: arbitrary input never raises and never makes an
event from garbage; valid frames round-trip to exactly their rows."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.models import NotificationRow
from watchers.decode import (
    Decoded,
    decode_actions_frame,
    decode_json_rows,
    decode_queryapi_frame,
    decode_social_index_page,
    dig,
)

TABLE = "dataplatform_near_notifications_notifications_stream"
MAPPING = {"id": "id", "receiver": "to", "initiator": "from", "type": "kind", "block_height": "block", "item_path": ""}
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
# JSON shaped like the real frames, so generation reaches past the first type check.
frame_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["data", "ka", "error", "connection_ack", "bogus"])},
    optional={
        "id": st.text(max_size=5),
        "payload": st.fixed_dictionaries({}, optional={"data": st.dictionaries(st.just(TABLE), json_values)})
        | json_values,
    },
)
garbage_text = st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1"))

account_ids = st.from_regex(r"[a-z0-9_-]{2,20}\.near", fullmatch=True)
value_types = st.sampled_from(["like", "comment", "mention", "repost", "follow", "poke", "devhub/mention", "custom"])


def assert_events_are_valid_rows(out: Decoded) -> None:
    """An event is only ever made from a row that passes the row model."""
    for event in out.events:
        row = NotificationRow.model_validate(event.row)
        assert event.receiver == row.receiver and event.value_type == row.valueType


def all_decoders(payload_text: str) -> list[Decoded]:
    try:
        parsed: Any = json.loads(payload_text)
    except ValueError:
        parsed = payload_text
    return [
        decode_queryapi_frame(payload_text, source="q", table=TABLE),
        decode_actions_frame(payload_text, source="a"),
        decode_social_index_page(parsed, source="s", receiver="bob.near"),
        decode_json_rows(parsed, source="j", rows="items", mapping=MAPPING),
    ]


@SETTINGS
@given(garbage_text)
def test_arbitrary_text_never_raises_and_is_never_an_event_unless_it_is_json(text: str) -> None:
    try:
        json.loads(text)
        is_json = True
    except ValueError:
        is_json = False
    for out in all_decoders(text):
        if not is_json:
            assert out.events == []
        assert_events_are_valid_rows(out)


@SETTINGS
@given(json_values | frame_like)
def test_arbitrary_json_never_raises_and_only_valid_rows_become_events(value: Any) -> None:
    for out in all_decoders(json.dumps(value)):
        assert_events_are_valid_rows(out)


@SETTINGS
@given(json_values, st.text(max_size=30))
def test_dig_never_raises(value: Any, path: str) -> None:
    dig(value, path)


def rows_strategy() -> st.SearchStrategy[list[dict[str, Any]]]:
    row = st.fixed_dictionaries(
        {
            "receiver": account_ids,
            "initiatedBy": account_ids,
            "valueType": value_types,
            "blockHeight": st.integers(1, 2**53 - 1),  # what a browser reads exactly (row_problem)
            "actionAtBlockHeight": st.integers(1, 2**53 - 1) | st.none(),
        }
    )
    return st.lists(row, min_size=1, max_size=6)


@SETTINGS
@given(rows_strategy())
def test_queryapi_data_frames_round_trip(rows: list[dict[str, Any]]) -> None:
    full = [{"id": i + 1, "itemType": "post", "path": f"{r['receiver']}/post/main", **r} for i, r in enumerate(rows)]
    frame = {"type": "data", "id": "1", "payload": {"data": {TABLE: full}}}
    out = decode_queryapi_frame(json.dumps(frame), source="q", table=TABLE)
    assert out.faults == []
    assert [e.row["id"] for e in out.events] == [r["id"] for r in full]
    for event, r in zip(out.events, full, strict=True):
        assert (event.receiver, event.value_type, event.block_height) == (
            r["receiver"],
            r["valueType"],
            r["blockHeight"],
        )
        assert {k: event.row[k] for k in r} == r
    assert out.max_block_height == max(r["blockHeight"] for r in full)


@SETTINGS
@given(rows_strategy(), st.sampled_from(["object", "array", "empty-key"]))
def test_actions_frames_round_trip(rows: list[dict[str, Any]], form: str) -> None:
    signer = rows[0]["initiatedBy"]
    entries = [
        {
            "key": r["receiver"],
            "value": {"type": r["valueType"], "item": {"type": "social", "path": f"{r['receiver']}/post/main"}},
        }
        for r in rows
    ]
    if form == "object":
        entries = entries[:1]
    notify_text = json.dumps(entries[0] if form == "object" else entries)
    notify: Any = {"": notify_text} if form == "empty-key" else notify_text
    args = {"data": {signer: {"index": {"notify": notify}}}}
    action = {
        "receiptId": "R1",
        "actionIndex": 0,
        "status": "SUCCESS",
        "accountId": "social.near",
        "blockHeight": rows[0]["blockHeight"],
        "blockTimestampMs": 1_700_000_000_000,
        "action": {
            "FunctionCall": {"method_name": "set", "args": base64.b64encode(json.dumps(args).encode()).decode()}
        },
    }
    out = decode_actions_frame(json.dumps({"actions": [action]}), source="a")
    assert out.faults == []
    assert [e.row["id"] for e in out.events] == [f"R1:0:{n}" for n in range(len(entries))]
    for event, entry in zip(out.events, entries, strict=True):
        assert event.receiver == entry["key"] and event.value_type == entry["value"]["type"]
        assert event.row["initiatedBy"] == signer and event.block_height == rows[0]["blockHeight"]


@SETTINGS
@given(rows_strategy())
def test_social_index_pages_round_trip(rows: list[dict[str, Any]]) -> None:
    page = [
        {"accountId": r["initiatedBy"], "blockHeight": r["blockHeight"], "value": {"type": r["valueType"]}}
        for r in rows
    ]
    out = decode_social_index_page(page, source="s", receiver="bob.near")
    assert out.faults == []
    assert [(e.receiver, e.value_type, e.block_height) for e in out.events] == [
        ("bob.near", r["valueType"], r["blockHeight"]) for r in rows
    ]


@SETTINGS
@given(rows_strategy())
def test_generic_json_rows_round_trip(rows: list[dict[str, Any]]) -> None:
    items = [
        {
            "id": f"e{i}",
            "to": r["receiver"],
            "from": r["initiatedBy"],
            "kind": r["valueType"],
            "block": r["blockHeight"],
        }
        for i, r in enumerate(rows)
    ]
    out = decode_json_rows({"items": items}, source="j", rows="items", mapping=MAPPING)
    assert out.faults == []
    assert [(e.row["id"], e.receiver, e.value_type, e.block_height) for e in out.events] == [
        (it["id"], it["to"], it["kind"], it["block"]) for it in items
    ]
