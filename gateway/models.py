"""Data shapes of the gateway (pydantic), validated at the boundary. No I/O.

Validation errors raise ``PydanticCustomError`` whose type is the stable API error code, so the
app's one handler can answer ``{"code": "invalid_p256dh", ...}`` without knowing the models.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from typing import Annotated, Any, NamedTuple

from cryptography.hazmat.primitives.asymmetric import ec
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from gateway.deepjson import loads_without_recursion
from gateway.endpoints import InvalidEndpoint, canonical_endpoint

ACCOUNT_ID_MIN, ACCOUNT_ID_MAX = 2, 64
# The notification row of the NEAR notifications server (near-protocols.md §3), in its order.
NEAR_ROW_FIELDS = (
    "id",
    "blockHeight",
    "initiatedBy",
    "itemType",
    "message",
    "path",
    "receiver",
    "valueType",
    "devhubPostId",
    "actionAtBlockHeight",
)
# On-chain account activity that the neardata watcher derives from blocks (watchers/chain.py): each
# is its own notification, and a click opens the block explorer unless the gateway says otherwise.
ACTIVITY_TYPES = frozenset(
    {
        "near_transfer",
        "ft_transfer",
        "ft_mint",
        "ft_burn",
        "nft_transfer",
        "nft_mint",
        "add_key",
        "delete_key",
        "receipt_failed",
    }
)
MAX_GATEWAY_LENGTH = 512
MAX_VALUE_TYPE_LENGTH = 128


def b64url_decode(value: str) -> bytes:
    """Decode base64url with or without padding (browsers omit it; some clients add it)."""
    text = value.strip().replace("+", "-").replace("/", "_")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def loads_json(text: str | bytes) -> Any:
    """Standard JSON only. Python's parser takes NaN and Infinity; the browser's JSON.parse, which
    reads the pushed row, does not. A document nested too deep for Python's parser is read without
    recursion (deepjson), so one over-deep row is refused alone and the rows beside it are read."""
    try:
        return json.loads(text, parse_constant=_refuse_constant)
    except RecursionError:
        return loads_without_recursion(text)


# What a row may hold: the service worker's JSON.parse reads numbers as doubles (exact to 2^53), the
# store keeps integers in 64 bits, and a push holds 4 KiB in all.
MAX_SAFE_INTEGER = 2**53 - 1
MAX_ROW_DEPTH = 16
MAX_ROW_STRING = 4096


def row_problem(value: Any) -> tuple[str, str] | None:
    """(code, message) for the first thing in a row no browser or store can hold; None when all fit.
    Iterative: a deeply nested value must not exhaust the stack here either."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if depth > MAX_ROW_DEPTH:
            return "invalid_depth", f"rows may nest at most {MAX_ROW_DEPTH} levels"
        if isinstance(item, bool) or item is None:
            continue
        if isinstance(item, int):
            if abs(item) > MAX_SAFE_INTEGER:
                return "invalid_number", "integers must be within ±(2^53 − 1), what JSON.parse reads exactly"
        elif isinstance(item, float):
            if item != item or item in (float("inf"), float("-inf")):
                return "invalid_number", "numbers must be finite"
        elif isinstance(item, str):
            if len(item) > MAX_ROW_STRING:
                return "invalid_length", f"strings in a row may be at most {MAX_ROW_STRING} characters"
        elif isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
            stack.extend((k, depth + 1) for k in item)
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return None


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _account_id(value: str) -> str:
    if not ACCOUNT_ID_MIN <= len(value) <= ACCOUNT_ID_MAX:
        raise PydanticCustomError(
            "invalid_account_id",
            "accountId must be {min}..{max} characters",
            {"min": ACCOUNT_ID_MIN, "max": ACCOUNT_ID_MAX},
        )
    if any(c.isspace() or not c.isprintable() for c in value):
        raise PydanticCustomError("invalid_account_id", "accountId contains whitespace or control characters")
    return value


def _p256dh(value: str) -> str:
    try:
        raw = b64url_decode(value)
        if len(raw) != 65 or raw[0] != 0x04:
            raise ValueError("not an uncompressed point")
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except (ValueError, binascii.Error) as exc:
        raise PydanticCustomError(
            "invalid_p256dh", "keys.p256dh must be a base64url uncompressed P-256 point (65 bytes)"
        ) from exc
    return value


def _auth(value: str) -> str:
    try:
        raw = b64url_decode(value)
    except (ValueError, binascii.Error) as exc:
        raise PydanticCustomError("invalid_auth", "keys.auth must be 16 bytes, base64url") from exc
    if len(raw) != 16:
        raise PydanticCustomError("invalid_auth", "keys.auth must be 16 bytes, base64url")
    return value


def _gateway(value: str) -> str:
    if len(value) > MAX_GATEWAY_LENGTH or not value.startswith(("https://", "http://")):
        raise PydanticCustomError("invalid_gateway", "gateway must be an http(s) URL")
    return value.rstrip("/")


def _value_type(value: str) -> str:
    if not 1 <= len(value) <= MAX_VALUE_TYPE_LENGTH:
        raise PydanticCustomError("invalid_value_type", "dapp/valueType must be 1..128 characters")
    return value


AccountId = Annotated[str, AfterValidator(_account_id)]
P256dh = Annotated[str, AfterValidator(_p256dh)]
AuthSecret = Annotated[str, AfterValidator(_auth)]
GatewayUrl = Annotated[str, AfterValidator(_gateway)]
ValueType = Annotated[str, AfterValidator(_value_type)]


def _endpoint(value: str) -> str:
    try:
        return canonical_endpoint(value)
    except InvalidEndpoint as exc:
        why = {"why": str(exc)}
        raise PydanticCustomError("invalid_endpoint", "endpoint is not a plain http(s) URL: {why}", why) from exc


# Put in its one canonical spelling here, at the boundary. The allow-list check needs the operator's
# settings, so the API does that.
Endpoint = Annotated[str, Field(min_length=1, max_length=2048), AfterValidator(_endpoint)]


class _Body(BaseModel):
    # Unknown fields are ignored, as the NEAR server does: clients in the wild send extras.
    model_config = ConfigDict(extra="ignore", frozen=True)


class SubscriptionKeys(_Body):
    p256dh: P256dh
    auth: AuthSecret


class PushSubscription(_Body):
    endpoint: Endpoint
    expirationTime: int | float | None = None
    keys: SubscriptionKeys


class SignedMessage(_Body):
    """A NEP-413 ``signMessage`` result with what was signed (see gateway.nep413)."""

    publicKey: Annotated[str, Field(max_length=128)]
    signature: Annotated[str, Field(max_length=256)]
    nonce: Annotated[str, Field(max_length=64)]
    recipient: Annotated[str, Field(max_length=256)]
    message: Annotated[str, Field(max_length=4096)]
    callbackUrl: Annotated[str, Field(max_length=2048)] | None = None


class CreateStreamRequest(_Body):
    """Body of POST /subscriptions/create (NEAR notifications server, unchanged)."""

    accountId: AccountId
    gateway: GatewayUrl
    subscription: PushSubscription
    # Proof of account ownership; read only when [security] require_signed_subscriptions is on.
    signed: SignedMessage | None = None


class DeleteStreamRequest(_Body):
    """Body of POST /subscriptions/delete; ``accountId`` narrows it to one account's stream."""

    endpoint: Endpoint
    accountId: AccountId | None = None


class SetPreferenceRequest(_Body):
    """Body of POST /preferences/set: ``block`` mutes type ``dapp`` for that endpoint's account."""

    accountId: AccountId
    endpoint: Endpoint
    dapp: ValueType
    block: bool


class SetQuietHoursRequest(_Body):
    """Body of POST /preferences/quiet (ours): hold what is not urgent from ``start`` to ``end``
    ("HH:MM", local time in ``timeZone``, IANA, as the browser's ``Intl`` reports it); ``start``
    null clears them. Checked by gateway/pacing/quiet.py."""

    accountId: AccountId
    endpoint: Endpoint
    timeZone: str = Field("UTC", max_length=64)
    start: str | None = Field(None, max_length=5)
    end: str | None = Field(None, max_length=5)


class NotificationRow(BaseModel):
    """A notification in the QueryAPI row shape (near-protocols.md §3); extra fields are kept, within
    what a browser and the store can hold (``row_problem``)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _fits(cls, data: Any) -> Any:
        problem = row_problem(data)
        if problem is not None:
            raise PydanticCustomError(problem[0], problem[1])
        return data

    id: int | Annotated[str, Field(min_length=1, max_length=256)]
    receiver: AccountId
    valueType: ValueType
    blockHeight: int | None = None
    initiatedBy: str | None = None
    itemType: str | None = None
    message: str | None = None
    path: str | None = None
    devhubPostId: int | str | None = None
    actionAtBlockHeight: int | None = None


@dataclass(frozen=True)
class Event:
    """One notification for one receiver, whatever source it came from."""

    key: str  # unique across sources: "<source>:<id>"; the dedupe key with the endpoint
    source: str
    receiver: str
    value_type: str
    block_height: int | None
    row: dict[str, Any]  # the NEAR row, pushed unchanged so old service workers keep working


class QuietHours(NamedTuple):
    """From ``start`` to ``end`` (minutes after local midnight) each day in ``time_zone`` (IANA);
    ``start`` after ``end`` spans midnight (22:00–07:00). gateway/pacing/quiet.py reads it."""

    time_zone: str
    start: int
    end: int


class Stream(NamedTuple):  # per-push records are tuples: cheaper to build than frozen dataclasses
    """(account, gateway, push subscription) as stored."""

    id: int
    account_id: str
    gateway: str
    endpoint: str
    endpoint_hash: str
    p256dh: str
    auth: str
    quiet: QuietHours | None = None  # read at ingest only


class Claim(NamedTuple):
    """A delivery claimed by a dispatcher: everything needed to build and send one push."""

    delivery_id: int
    attempts: int
    compact: bool
    event_created_at: float
    stream: Stream
    row: dict[str, Any]  # shared by the claims of one event: read, never modified
    event_key: str = ""
    # A digest: the rows it folds (oldest first; ``row`` is the newest) and how many it folds in all.
    folded: tuple[dict[str, Any], ...] = ()
    folded_total: int = 0
    inbox_id: int | None = None  # the account's inbox item of ``row``
    unread: int | None = None  # the stream's browser's unread count, up to 99 (the app badge)


@dataclass
class IngestResult:
    events: int = 0
    new_events: int = 0
    deliveries: int = 0
    folded: int = 0  # (event, stream) pairs added to a digest instead of a delivery of their own
    skipped: dict[str, int] = field(default_factory=dict)
