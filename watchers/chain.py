"""Pure decoding of NEAR blocks into account-activity events. No I/O.

A block is a neardata ``GET /v0/block/{height}`` answer: the NEAR Lake ``StreamerMessage`` in one
object (field spec: shared/fixtures/neardata/format.md). Only executed receipts count
(``shards[].receipt_execution_outcomes``), and of those only successful ones produce activity — a
failed batch is rolled back on chain — except the one ``receipt_failed`` row for the account that
signed it. Rows keep the NEAR row fields and add ``receiptId``, ``txHash`` and the fields of their
kind; social rows are exactly those of the other NEAR sources (same content key).

The decoder is handed the set of accounts that have a stream: its cost is that of the block, not of
the number of subscribers. This module is the only importer of msgspec: it decodes just the parts
of a block an event needs (a 4 MB block in a few ms; bench/README.md).
"""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from collections.abc import Container, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import msgspec
from pydantic import ValidationError

from gateway.config import ChainEventSettings
from gateway.models import Event, NotificationRow, loads_json
from watchers.decode import Decoded, Fault, decode_social_set

SYSTEM = "system"  # predecessor of gas and deposit refunds: not activity
EVENT_PREFIX = "EVENT_JSON:"
MAX_ERROR_CHARS = 300
MAX_MEMO_CHARS = 200
MAX_EVENT_DATA_BYTES = 2048  # a configured event's `data` entry is kept in the row up to this size
U128 = re.compile(r"^[0-9]{1,39}\Z")  # \Z: "$" would also take a trailing newline
# What decoding a receipt or an action of any shape may raise (deep JSON: RecursionError)
DECODE_ERRORS = (TypeError, ValueError, KeyError, AttributeError, IndexError, binascii.Error, RecursionError)
# Receipt and action variants that carry no activity of ours: known, so not counted as faults.
QUIET_RECEIPTS = frozenset({"Data", "GlobalContractDistribution"})
QUIET_ACTIONS = frozenset(
    {
        "CreateAccount",
        "DeployContract",
        "DeleteAccount",
        "Stake",
        "Delegate",  # its inner actions run later as a receipt of their own, and are decoded then
        "DelegateV2",
        "DeployGlobalContract",
        "DeployGlobalContractByAccountId",
        "UseGlobalContract",
        "UseGlobalContractByAccountId",
        "DeterministicStateInit",
        "TransferToGasKey",
        "WithdrawFromGasKey",
        "AddGasKey",
        "DeleteGasKey",
    }
)
# Built-in NEP-297 events: (standard, event) -> (valueType, receiver field, initiator field or None).
BUILTIN_EVENTS: dict[tuple[str, str], tuple[str, str, str | None]] = {
    ("nep141", "ft_transfer"): ("ft_transfer", "new_owner_id", "old_owner_id"),
    ("nep141", "ft_mint"): ("ft_mint", "owner_id", None),
    ("nep141", "ft_burn"): ("ft_burn", "owner_id", None),
    ("nep171", "nft_transfer"): ("nft_transfer", "new_owner_id", "old_owner_id"),
    ("nep171", "nft_mint"): ("nft_mint", "owner_id", None),
}


# --- the parts of a block that are read (everything else is skipped while parsing) ----------


class _Outcome(msgspec.Struct):
    executor_id: Any = None
    logs: Any = None
    status: Any = None


class _ExecutionOutcome(msgspec.Struct):
    id: Any = None
    outcome: _Outcome | None = None


class _ReceiptOutcome(msgspec.Struct):
    execution_outcome: _ExecutionOutcome | None = None
    receipt: Any = None
    tx_hash: Any = None


class _Shard(msgspec.Struct):
    shard_id: Any = None
    receipt_execution_outcomes: list[_ReceiptOutcome] | None = None


class _Header(msgspec.Struct):
    height: int
    hash: Any = None
    timestamp_nanosec: Any = None
    timestamp: Any = None


class _BlockPart(msgspec.Struct):
    header: _Header


class _Envelope(msgspec.Struct):
    block: _BlockPart
    shards: list[_Shard] | None = None


class _LooseShard(msgspec.Struct):
    shard_id: Any = None
    receipt_execution_outcomes: Any = None


class _LooseEnvelope(msgspec.Struct):
    """A block read again when a part of it is not of its shape: the shards as they come."""

    block: _BlockPart
    shards: Any = None


_DECODER = msgspec.json.Decoder(_Envelope | None)
_LOOSE_DECODER = msgspec.json.Decoder(_LooseEnvelope | None)


@dataclass(frozen=True)
class Block:
    height: int
    hash: str | None
    time: float | None  # epoch seconds, from timestamp_nanosec (``timestamp`` overflows a double's precision)
    shards: list[_Shard]
    faults: tuple[Fault, ...] = ()  # parts that were not of their shape (a receipt outcome that is 42), left out


def parse_block(body: bytes) -> tuple[Block | None, Fault | None]:
    """A block from an answer's body; (None, None) for ``null``, a skipped height. A shard or receipt
    outcome that is not of its shape is left out as a fault of the block; the rest is read."""
    try:
        envelope = _DECODER.decode(body)
    except msgspec.ValidationError:  # well-formed JSON, some part of it not of its shape
        return _parse_loose(body)
    except msgspec.DecodeError as exc:
        return None, Fault("malformed_json", str(exc)[:120])
    except RecursionError:  # msgspec raises it, not DecodeError, for nesting past the interpreter's limit
        return None, Fault("malformed_json", "JSON nested too deeply")
    if envelope is None:
        return None, None
    return _block(envelope.block.header, envelope.shards or []), None


def _block(header: _Header, shards: list[_Shard], faults: tuple[Fault, ...] = ()) -> Block:
    return Block(
        height=header.height,
        hash=header.hash if isinstance(header.hash, str) else None,
        time=_block_time(header),
        shards=shards,
        faults=faults,
    )


def _parse_loose(body: bytes) -> tuple[Block | None, Fault | None]:
    """The block read part by part (only for a block the typed decoder refused: it is slower), so
    one receipt outcome that is not one does not lose the block's other receipts."""
    try:
        envelope = _LOOSE_DECODER.decode(body)
    except msgspec.DecodeError as exc:  # the header itself is not one: this is no block
        return None, Fault("bad_block", str(exc)[:120])
    except RecursionError:
        return None, Fault("malformed_json", "JSON nested too deeply")
    if envelope is None:
        return None, None
    raw_shards = [] if envelope.shards is None else envelope.shards
    if not isinstance(raw_shards, list):
        return None, Fault("bad_block", "shards is not a list")
    shards: list[_Shard] = []
    faults: list[Fault] = []
    for i, raw in enumerate(raw_shards):
        try:
            loose = msgspec.convert(raw, _LooseShard)
        except msgspec.ValidationError as exc:
            faults.append(Fault("bad_shard", f"shard {i}: {str(exc)[:100]}"))
            continue
        raw_outcomes = [] if loose.receipt_execution_outcomes is None else loose.receipt_execution_outcomes
        if not isinstance(raw_outcomes, list):
            faults.append(Fault("bad_shard", f"shard {i}: receipt_execution_outcomes is not a list"))
            continue
        outcomes: list[_ReceiptOutcome] = []
        for j, outcome in enumerate(raw_outcomes):
            try:
                outcomes.append(msgspec.convert(outcome, _ReceiptOutcome))
            except msgspec.ValidationError as exc:
                faults.append(Fault("bad_receipt", f"shard {i} outcome {j}: {str(exc)[:100]}"))
        shards.append(_Shard(shard_id=loose.shard_id, receipt_execution_outcomes=outcomes))
    return _block(envelope.block.header, shards, tuple(faults)), None


def _block_time(header: _Header) -> float | None:
    stamp = header.timestamp_nanosec
    # a u64 of ASCII digits: isdigit() alone takes "²", and a long one overflows int() or the float
    if isinstance(stamp, str) and stamp.isascii() and stamp.isdigit() and len(stamp) <= 20:
        return int(stamp) / 1e9
    if isinstance(header.timestamp, int) and not isinstance(header.timestamp, bool) and 0 <= header.timestamp < 2**64:
        return header.timestamp / 1e9
    return None


# --- decoding ---------------------------------------------------------------------------------


def activity_event_key(row: dict[str, Any]) -> str:
    """The identity of an activity row: its receipt, position, receiver and type. The same block
    seen by two neardata watchers (or final and optimistic) gives the same key, so one push."""
    parts = [row.get("blockHeight"), row.get("id"), row.get("receiver"), row.get("valueType")]
    digest = hashlib.sha256(json.dumps(parts, separators=(",", ":")).encode()).hexdigest()[:24]
    return f"near:{row.get('blockHeight')}:{digest}"


@dataclass
class _Receipt:
    """What every row of one executed receipt shares, and the per-type row counters."""

    block: Block
    source: str
    accounts: Container[str]
    out: Decoded
    receipt_id: str
    predecessor: str
    receiver: str
    signer: str | None
    tx_hash: str | None
    counts: dict[str, int]

    def add(self, value_type: str, receiver: Any, initiator: Any, **fields: Any) -> None:
        if not isinstance(receiver, str):
            self.out.faults.append(Fault("bad_row", f"{value_type} receiver is not an account id"))
            return
        n = self.counts.get(value_type, 0)
        self.counts[value_type] = n + 1  # before the filter: a row's id and key must not depend on who else subscribes
        if receiver not in self.accounts:
            return
        raw = {
            "id": f"{self.receipt_id}:{value_type}:{n}",
            "blockHeight": self.block.height,
            "initiatedBy": initiator if isinstance(initiator, str) else None,
            "receiver": receiver,
            "valueType": value_type,
            "receiptId": self.receipt_id,
            "txHash": self.tx_hash,
            **fields,
        }
        try:
            event = _event(raw, self.source)
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "row"
            self.out.faults.append(Fault("bad_row", f"{value_type} {where}: {first['msg']}"))
            return
        self.out.add(event)


def _event(raw: dict[str, Any], source: str) -> Event:
    row = NotificationRow.model_validate(raw)
    data: dict[str, Any] = row.model_dump(mode="json")
    return Event(
        key=activity_event_key(data),
        source=source,
        receiver=row.receiver,
        value_type=row.valueType,
        block_height=row.blockHeight,
        row=data,
    )


def decode_block(
    block: Block,
    *,
    source: str,
    accounts: Container[str],
    social_contract: str = "social.near",
    events: Sequence[ChainEventSettings] = (),
) -> Decoded:
    """The notifications one block holds for ``accounts``; a receipt that does not decode is a fault."""
    out = Decoded("block", faults=list(block.faults), max_block_time=block.time)
    for shard in block.shards:
        for outcome in shard.receipt_execution_outcomes or ():
            try:
                _decode_receipt(block, outcome, source, accounts, social_contract, events, out)
            except DECODE_ERRORS as exc:
                out.faults.append(Fault("bad_receipt", f"{type(exc).__name__}: {str(exc)[:120]}"))
    out.max_block_height = block.height
    return out


def is_u128(value: Any) -> bool:
    """A u128 as NEAR writes it: a string of ASCII digits below 2^128."""
    return isinstance(value, str) and U128.match(value) is not None and int(value) < 2**128


def _variant(value: Any) -> tuple[str, Any]:
    """An externally tagged enum value: ``{"Name": body}``, or a bare ``"Name"`` (CreateAccount)."""
    if isinstance(value, str):
        return value, {}
    if isinstance(value, dict) and len(value) == 1:
        name, body = next(iter(value.items()))
        return str(name), body
    raise ValueError("not a tagged variant")


def _decode_receipt(
    block: Block,
    outcome: _ReceiptOutcome,
    source: str,
    accounts: Container[str],
    social_contract: str,
    events: Sequence[ChainEventSettings],
    out: Decoded,
) -> None:
    receipt = outcome.receipt
    executed = outcome.execution_outcome.outcome if outcome.execution_outcome else None
    if not isinstance(receipt, dict) or executed is None:
        raise ValueError("receipt outcome without receipt or outcome")
    kind, body = _variant(receipt["receipt"])
    if kind != "Action":
        if kind not in QUIET_RECEIPTS:
            out.faults.append(Fault("unknown_receipt", f"receipt variant {kind[:40]}"))
        return
    status_kind, status = _variant(executed.status)
    ctx = _Receipt(
        block=block,
        source=source,
        accounts=accounts,
        out=out,
        receipt_id=str(receipt.get("receipt_id") or outcome.execution_outcome.id),  # type: ignore[union-attr]
        predecessor=str(receipt["predecessor_id"]),
        receiver=str(receipt["receiver_id"]),
        signer=body.get("signer_id") if isinstance(body.get("signer_id"), str) else None,
        tx_hash=outcome.tx_hash if isinstance(outcome.tx_hash, str) else None,
        counts={},
    )
    actions = body.get("actions") or []
    if not isinstance(actions, list):
        raise TypeError("actions is not a list")
    if status_kind == "Failure":
        _failed(ctx, actions, status)
        return
    if status_kind not in ("SuccessValue", "SuccessReceiptId"):
        out.faults.append(Fault("unknown_status", f"status {status_kind[:40]}"))
        return
    for index, action in enumerate(actions):
        try:
            _action(ctx, index, action, social_contract)
        except DECODE_ERRORS as exc:  # one action that is not one: the others of the receipt still count
            out.faults.append(Fault("bad_action", f"action {index}: {type(exc).__name__}: {str(exc)[:100]}"))
    logs = executed.logs if isinstance(executed.logs, list) else []
    emitter = executed.executor_id if isinstance(executed.executor_id, str) else ctx.receiver
    for line in logs:
        if isinstance(line, str) and line.startswith(EVENT_PREFIX):
            _nep297(ctx, emitter, line[len(EVENT_PREFIX) :], events)


def _action(ctx: _Receipt, index: int, action: Any, social_contract: str) -> None:
    name, body = _variant(action)
    if name == "Transfer":
        deposit = body.get("deposit")
        if ctx.predecessor == SYSTEM:
            return
        if not is_u128(deposit):
            ctx.out.faults.append(Fault("bad_action", "Transfer deposit is not a u128 string"))
        elif int(deposit) != 0:
            ctx.add("near_transfer", ctx.receiver, ctx.predecessor, amount=deposit)
    elif name == "AddKey":
        access = body.get("access_key") or {}
        ctx.add(
            "add_key",
            ctx.receiver,
            ctx.predecessor,
            publicKey=body.get("public_key"),
            permission=_permission(access.get("permission")),
        )
    elif name == "DeleteKey":
        ctx.add("delete_key", ctx.receiver, ctx.predecessor, publicKey=body.get("public_key"))
    elif name == "FunctionCall":
        if ctx.receiver == social_contract and body.get("method_name") == "set":
            try:
                decode_social_set(
                    body.get("args"),
                    f"{ctx.receipt_id}:{index}",
                    ctx.block.height,
                    ctx.source,
                    ctx.out,
                    receivers=ctx.accounts,
                    extra={"receiptId": ctx.receipt_id, "txHash": ctx.tx_hash},
                )
            # RecursionError: notify is anyone's text, and may nest deeper than the parser goes
            except (ValueError, TypeError, AttributeError, binascii.Error, RecursionError) as exc:
                ctx.out.faults.append(Fault("bad_args", f"social set: {type(exc).__name__}: {str(exc)[:100]}"))
    elif name not in QUIET_ACTIONS:
        ctx.out.faults.append(Fault("unknown_action", f"action variant {name[:40]}"))


def _permission(value: Any) -> str:
    """``FullAccess``, or the contract a function-call key may call."""
    name, body = _variant(value)
    if name in ("FullAccess", "GasKeyFullAccess"):
        return "FullAccess"
    if isinstance(body, dict) and isinstance(body.get("receiver_id"), str):
        return str(body["receiver_id"])
    return name


def _failed(ctx: _Receipt, actions: list[Any], status: Any) -> None:
    """A failed receipt: nothing of it happened; its signer learns it failed."""
    if ctx.predecessor == SYSTEM or ctx.signer is None:
        return
    error, message, index = _failure(status)
    method = None
    if index is not None and 0 <= index < len(actions):
        name, body = _variant(actions[index])
        if name == "FunctionCall" and isinstance(body, dict):
            method = body.get("method_name")
    elif len(actions) == 1:
        name, body = _variant(actions[0])
        method = body.get("method_name") if name == "FunctionCall" and isinstance(body, dict) else None
    ctx.add(
        "receipt_failed",
        ctx.signer,
        ctx.predecessor,
        contract=ctx.receiver,
        method=method if isinstance(method, str) else None,
        error=error,
        errorMessage=message,
    )


def _failure(status: Any) -> tuple[str, str | None, int | None]:
    """(the failure kind, its message when it has one, the failed action's index)."""
    kind, body = _variant(status)  # ActionError | InvalidTxError
    index = None
    if kind == "ActionError" and isinstance(body, dict):
        index = body.get("index") if isinstance(body.get("index"), int) else None
        kind, body = _variant(body.get("kind"))
    return kind[:80], _first_text(body), index


def _first_text(value: Any) -> str | None:
    """The first string inside a failure's body ("Smart contract panicked: …"), shortened."""
    for text in _strings(value):
        return text[:MAX_ERROR_CHARS]
    return None


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def _nep297(ctx: _Receipt, emitter: str, text: str, rules: Sequence[ChainEventSettings]) -> None:
    try:
        event = loads_json(text)
    except (ValueError, RecursionError):  # any contract can log nesting deeper than the parser goes
        ctx.out.faults.append(Fault("bad_event", "EVENT_JSON is not JSON"))
        return
    if not isinstance(event, dict):
        ctx.out.faults.append(Fault("bad_event", "EVENT_JSON is not an object"))
        return
    standard, name, data = event.get("standard"), event.get("event"), event.get("data")
    entries = data if isinstance(data, list) else [data]
    builtin = BUILTIN_EVENTS.get((str(standard), str(name)))
    if builtin is not None:
        value_type, receiver_field, initiator_field = builtin
        for entry in entries:
            if isinstance(entry, dict):
                _token_row(ctx, emitter, value_type, entry, receiver_field, initiator_field)
    for rule in rules:
        if rule.standard == standard and rule.event == name and rule.contract in ("", emitter):
            for entry in entries:
                if isinstance(entry, dict):
                    _custom_row(ctx, emitter, rule, entry)


def _token_row(
    ctx: _Receipt, token: str, value_type: str, entry: dict[str, Any], receiver_field: str, initiator_field: str | None
) -> None:
    fields: dict[str, Any] = {"token": token}
    if value_type.startswith("ft_"):
        amount = entry.get("amount")
        if not is_u128(amount):
            ctx.out.faults.append(Fault("bad_event", f"{value_type} amount is not a u128 string"))
            return
        fields["amount"] = amount
    else:
        ids = entry.get("token_ids")
        if not (isinstance(ids, list) and all(isinstance(i, str) for i in ids)):
            ctx.out.faults.append(Fault("bad_event", f"{value_type} token_ids is not a list of strings"))
            return
        fields["tokenIds"] = [i[:128] for i in ids[:20]]
    memo = entry.get("memo")
    if isinstance(memo, str):
        fields["memo"] = memo[:MAX_MEMO_CHARS]
    initiator = entry.get(initiator_field) if initiator_field else ctx.predecessor
    ctx.add(value_type, entry.get(receiver_field), initiator, **fields)


def _custom_row(ctx: _Receipt, emitter: str, rule: ChainEventSettings, entry: dict[str, Any]) -> None:
    initiator = entry.get(rule.initiator_field) if rule.initiator_field else ctx.predecessor
    fields: dict[str, Any] = {"token": emitter, "standard": rule.standard, "event": rule.event}
    if len(json.dumps(entry, separators=(",", ":"))) <= MAX_EVENT_DATA_BYTES:
        fields["data"] = entry
    ctx.add(rule.type_name, entry.get(rule.receiver_field), initiator, **fields)


def with_token_metadata(event: Event, symbol: str | None, decimals: int | None) -> Event:
    """An ft row with its token's symbol and decimals (from ft_metadata), for the push text."""
    if symbol is None and decimals is None:
        return event
    return replace(event, row={**event.row, "symbol": symbol, "decimals": decimals})
