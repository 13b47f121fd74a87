"""Pure decoding of source frames and pages into Events (formats in near-protocols.md). No I/O.

Every decoder takes raw text or parsed JSON and returns what it found: events, faults (a frame or
row that did not decode, with a short kind for counting and once-per-kind logging) and the cursor
the events reach. Nothing here raises on bad input; the socket and HTTP loops stay thin.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Container, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from gateway.models import ACTIVITY_TYPES, MAX_SAFE_INTEGER, Event, NotificationRow, loads_json


@dataclass(frozen=True)
class Fault:
    kind: str  # stable, for counting: "malformed_json", "bad_row", "bad_args", ...
    detail: str


@dataclass
class Decoded:
    """What one frame or page held."""

    kind: str = "data"  # queryapi: ack | ka | data | error | complete | unknown; actions: past | live
    events: list[Event] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # error messages the server sent
    # how far the frame or page reached: its events, and the rows refused that say a usable height
    # (the cursor moves past a poison row, so a page of them is not asked for again and again)
    max_block_height: int | None = None
    max_block_time: float | None = None  # epoch seconds of that block, when the source says

    def add(self, event: Event) -> None:
        self.events.append(event)
        if event.block_height is not None:
            self.max_block_height = max(self.max_block_height or 0, event.block_height)

    def reached(self, height: Any) -> None:
        """A refused row's height counts when a cursor can hold it (an integer within 2^53): one
        claiming 2^63 does not throw the cursor past every row still to come."""
        if isinstance(height, int) and not isinstance(height, bool) and 0 <= height <= MAX_SAFE_INTEGER:
            self.max_block_height = max(self.max_block_height or 0, height)


def near_event_key(row: Mapping[str, Any]) -> str:
    """The identity of a NEAR notification whatever source carried it.

    The QueryAPI row id, the actions stream's (receiptId, actionIndex, entry) and api.near.social's
    entries all describe the same SocialDB write; keying on its content lets an operator run two
    sources for redundancy, or switch sources, without pushing anything twice.
    """
    parts = [
        row.get(k)
        for k in (
            "blockHeight",
            "initiatedBy",
            "receiver",
            "valueType",
            "path",
            "actionAtBlockHeight",
            "devhubPostId",
            "message",
        )
    ]
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()[:24]
    return f"near:{row.get('blockHeight')}:{digest}"


def event_from_row(row: NotificationRow, source: str, *, near_key: bool = False) -> Event:
    """An Event from a row in the QueryAPI notification shape (near-protocols.md §3).

    ``near_key`` keys it by content (``near_event_key``) instead of ``source:id``.
    """
    data: dict[str, Any] = row.model_dump(mode="json")
    return Event(
        key=near_event_key(data) if near_key else f"{source}:{row.id}",
        source=source,
        receiver=row.receiver,
        value_type=row.valueType,
        block_height=row.blockHeight,
        row=data,
    )


def _validated(raw: Any, source: str, out: Decoded, *, near_key: bool = True) -> None:
    claimed = raw.get("valueType") if isinstance(raw, dict) else None
    if near_key and isinstance(claimed, str) and claimed in ACTIVITY_TYPES:
        # Anyone can write a social notify of any type: one claiming to be account activity
        # ("delete_key") would show as a security alert and go through quiet hours. Only the chain
        # decoder makes those.
        out.faults.append(Fault("reserved_type", f"{claimed} is on-chain activity, not a social notification"))
        out.reached(raw.get("blockHeight"))
        return
    try:
        out.add(event_from_row(NotificationRow.model_validate(raw), source, near_key=near_key))
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "row"
        out.faults.append(Fault("bad_row", f"{where}: {first['msg']}"))
        if isinstance(raw, dict):
            out.reached(raw.get("blockHeight"))


def parse_json(text: str | bytes) -> tuple[Any, Fault | None]:
    """A frame or page as JSON, or the fault that says why it is not."""
    try:
        return loads_json(text), None
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:  # RecursionError: nesting past the parser
        return None, Fault("malformed_json", str(exc)[:120])


# --- QueryAPI GraphQL stream (graphql-ws / subscriptions-transport-ws), §5 ---------------------


def decode_queryapi_frame(text: str | bytes, *, source: str, table: str) -> Decoded:
    """One server frame of the QueryAPI stream; rows of ``table`` become events."""
    frame, fault = parse_json(text)
    if fault is not None:
        return Decoded("unknown", faults=[fault])
    if not isinstance(frame, dict):
        return Decoded("unknown", faults=[Fault("bad_frame", "frame is not an object")])
    kind = frame.get("type")
    if kind in ("connection_ack", "ka", "complete"):
        return Decoded("ack" if kind == "connection_ack" else str(kind))
    if kind in ("error", "connection_error"):
        return Decoded("error", errors=_messages(frame.get("payload")))
    if kind != "data":
        return Decoded("unknown", faults=[Fault("unknown_frame", f"type {kind!r}")])
    payload = frame.get("payload")
    if not isinstance(payload, dict):
        return Decoded("unknown", faults=[Fault("bad_frame", "data frame without payload")])
    out = Decoded("data")
    if payload.get("errors"):
        out.kind = "error"
        out.errors = _messages(payload["errors"])
    data = payload.get("data")
    rows = data.get(table) if isinstance(data, dict) else None
    if rows is None:
        if out.kind != "error":
            out.faults.append(Fault("bad_frame", f"data frame without {table}"))
        return out
    if not isinstance(rows, list):
        out.faults.append(Fault("bad_frame", f"{table} is not a list"))
        return out
    for raw in rows:
        _validated(raw, source, out)
    return out


def _messages(errors: Any) -> list[str]:
    items = errors if isinstance(errors, list) else [errors]
    out = []
    for e in items:
        message = e.get("message") if isinstance(e, dict) else e
        out.append(str(message)[:300])
    return out


# --- SocialDB notify entries, shared by the actions stream and api.near.social ---------------


def notify_entries(notify: Any) -> list[Any]:
    """The entries of an ``index.notify`` value: a JSON string of one object or an array, or the
    ``{"": "<JSON string>"}`` form. Raises ValueError when it is none of these."""
    if isinstance(notify, dict) and set(notify) == {""}:
        notify = notify[""]
    if not isinstance(notify, str):
        raise ValueError("notify is not a JSON string")
    parsed = loads_json(notify)
    return parsed if isinstance(parsed, list) else [parsed]


def row_from_notify(row_id: str, initiator: str | None, block_height: int, key: Any, value: Any) -> dict[str, Any]:
    """A QueryAPI-shaped row from one notify entry (field derivation of near-protocols.md §4)."""
    if not isinstance(value, dict):
        raise ValueError("notify value is not an object")
    item: dict[str, Any] = value["item"] if isinstance(value.get("item"), dict) else {}
    return {
        "id": row_id,
        "blockHeight": block_height,
        "initiatedBy": initiator,
        "itemType": item.get("type"),
        "message": value.get("message") if isinstance(value.get("message"), str) else None,
        "path": item.get("path"),
        "receiver": key,
        "valueType": value.get("type"),
        "devhubPostId": value.get("post"),
        "actionAtBlockHeight": item.get("blockHeight") if isinstance(item.get("blockHeight"), int) else None,
    }


# --- NEAR actions WebSocket, §6 --------------------------------------------------------------

SOCIAL_CONTRACT = "social.near"


def decode_actions_frame(text: str | bytes, *, source: str, contract: str = SOCIAL_CONTRACT) -> Decoded:
    """One frame of the actions stream: SocialDB ``set`` calls with ``index.notify`` become events,
    one per notify entry, identified by (receiptId, actionIndex, entry index)."""
    frame, fault = parse_json(text)
    if fault is not None:
        return Decoded("unknown", faults=[fault])
    if not isinstance(frame, dict) or not isinstance(frame.get("actions"), list):
        return Decoded("unknown", faults=[Fault("bad_frame", "frame without an actions list")])
    out = Decoded("past" if frame.get("note") == "past" else "live")
    for action in frame["actions"]:
        try:
            _decode_action(action, source, contract, out)
        except (ValueError, TypeError, KeyError, AttributeError, binascii.Error, RecursionError) as exc:  # deep notify
            out.faults.append(Fault("bad_action", f"{type(exc).__name__}: {str(exc)[:120]}"))
            continue
        stamp = action.get("blockTimestampMs")
        if isinstance(stamp, int | float) and not isinstance(stamp, bool):
            out.max_block_time = max(out.max_block_time or 0.0, float(stamp) / 1000)
    return out


def _decode_action(action: Any, source: str, contract: str, out: Decoded) -> None:
    if not isinstance(action, dict):
        raise TypeError("action is not an object")
    if action.get("status") != "SUCCESS" or action.get("accountId") != contract:
        return
    call = (action.get("action") or {}).get("FunctionCall")
    if not isinstance(call, dict) or call.get("method_name") != "set":
        return
    block_height = action["blockHeight"]
    if not isinstance(block_height, int):
        raise TypeError("blockHeight is not an integer")
    receipt = {"receiptId": action["receiptId"], "txHash": action.get("txHash")}
    decode_social_set(
        call["args"], f"{action['receiptId']}:{action['actionIndex']}", block_height, source, out, extra=receipt
    )


def decode_social_set(
    args_b64: Any,
    id_prefix: str,
    block_height: int,
    source: str,
    out: Decoded,
    *,
    receivers: Container[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """The notifications of one SocialDB ``set`` call (base64 JSON args ``{"data": {signer: tree}}``):
    one event per ``index.notify`` entry, id ``<id_prefix>:<entry>``. Only receivers in ``receivers``
    when given. Raises ValueError, TypeError or binascii.Error when the args are not such a call."""
    decoded = base64.b64decode(args_b64, validate=True)
    if b"\\xa0" in decoded:  # some writers leave this literal text; the NEAR indexer reads it as a space
        decoded = decoded.replace(b"\\xa0", b" ")
    args = loads_json(decoded)
    data = args.get("data") if isinstance(args, dict) else None
    if not isinstance(data, dict):
        raise ValueError("set args without data")
    for signer, tree in data.items():
        index = tree.get("index") if isinstance(tree, dict) else None
        if not isinstance(index, dict) or "notify" not in index:
            continue  # a set without notify
        for n, entry in enumerate(notify_entries(index["notify"])):
            if not isinstance(entry, dict):  # malformed, whoever it was meant for
                out.faults.append(Fault("bad_notify", "notify entry is not an object"))
                continue
            key = entry.get("key")
            if receivers is not None and not (isinstance(key, str) and key in receivers):
                continue
            try:
                raw = row_from_notify(f"{id_prefix}:{n}", signer, block_height, key, entry.get("value"))
            except (ValueError, AttributeError) as exc:
                out.faults.append(Fault("bad_notify", str(exc)[:120]))
                continue
            _validated({**raw, **(extra or {})}, source, out)


# --- api.near.social POST /index (action: notify), §7 ---------------------------------------


def decode_social_index_page(payload: Any, *, source: str, receiver: str) -> Decoded:
    """One ``/index`` answer for ``receiver``; ``max_block_height`` is the next cursor − 1."""
    out = Decoded("data")
    if not isinstance(payload, list):
        out.faults.append(Fault("bad_page", "index answer is not a list"))
        return out
    for entry in payload:
        if not isinstance(entry, dict) or not isinstance(entry.get("blockHeight"), int):
            out.faults.append(Fault("bad_row", "index entry without an integer blockHeight"))
            continue
        value = entry.get("value")
        initiator = entry.get("accountId") if isinstance(entry.get("accountId"), str) else None
        digest = hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
        row_id = f"{entry['blockHeight']}:{initiator}:{receiver}:{digest}"
        try:
            raw = row_from_notify(row_id, initiator, entry["blockHeight"], receiver, value)
        except ValueError as exc:
            out.faults.append(Fault("bad_row", str(exc)))
            out.reached(entry["blockHeight"])
            continue
        _validated(raw, source, out)
    return out


# --- generic JSON feeds (websocket-json, http-poll-json) ---------------------------------


def dig(value: Any, path: str) -> Any:
    """``value`` at a dot path ("data.items", "result.0.rows"); "" is the value itself; None if absent."""
    if not path:
        return value
    for part in path.split("."):
        if isinstance(value, dict):
            value = value.get(part)
        elif isinstance(value, list) and part.isascii() and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return None
    return value


def decode_json_rows(payload: Any, *, source: str, rows: str, mapping: Mapping[str, str]) -> Decoded:
    """Rows of a generic feed: ``rows`` is the dot path to them, ``mapping`` says where each event
    field is in a row (keys id, receiver, initiator, type, block_height, item_path)."""
    out = Decoded("data")
    found = dig(payload, rows)
    if found is None:
        out.faults.append(Fault("no_rows", f"no rows at {rows or 'the top level'!r}"))
        return out
    for item in found if isinstance(found, list) else [found]:
        if not isinstance(item, dict):
            out.faults.append(Fault("bad_row", "row is not an object"))
            continue
        mapped = {
            "id": dig(item, mapping["id"]),
            "receiver": dig(item, mapping["receiver"]),
            "initiatedBy": dig(item, mapping["initiator"]) if mapping["initiator"] else None,
            "valueType": dig(item, mapping["type"]),
            "blockHeight": dig(item, mapping["block_height"]) if mapping["block_height"] else None,
            "path": dig(item, mapping["item_path"]) if mapping["item_path"] else None,
        }
        _validated({**item, **mapped}, source, out, near_key=False)
    return out
