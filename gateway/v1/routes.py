"""``/v1``: the gateway's own API for browsers, every request signed with the subscription's secret
(``gateway.v1.signing``). A browser manages what it holds — its streams, its read marks — and reads
the inbox of the accounts it has streams for. Errors have the one shape of the NEAR routes
(``ErrorBody``) with stable codes; lists page by an opaque cursor; reads a page polls carry an
``ETag`` and answer 304 to ``If-None-Match``."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response
from pydantic import BaseModel, Field

from gateway.api import PUBLIC_ERRORS, ApiContext, GatewayKey, create_stream, quiet_hours_of
from gateway.endpoints import InvalidEndpoint, canonical_endpoint, endpoint_hash, push_host
from gateway.exceptions import BadRequest, Forbidden, TooManyRequests, Unauthorized
from gateway.links import click_url
from gateway.models import AccountId, CreateStreamRequest, ValueType
from gateway.payload import title_and_body
from gateway.ratelimit import retry_after_header
from gateway.store.base import ACCOUNT_READER, UNREAD_CAP, InboxItem, StreamInfo
from gateway.v1.signing import SignedHeaders, SigningError, parse_time, verify

PAGE_SIZE = 50  # inbox items per page unless ``limit`` asks for fewer or more...
MAX_PAGE_SIZE = 200  # ...up to this
MAX_READ_IDS = 500  # ids one mark-read request may name

SIGNED_ERRORS: dict[int | str, dict[str, Any]] = {**PUBLIC_ERRORS, 304: {"description": "Not Modified"}}
router = APIRouter(prefix="/v1", tags=["v1"], responses=SIGNED_ERRORS)


@dataclass(frozen=True)
class Caller:
    """A browser that proved it holds a subscription: its endpoint's hash and its streams."""

    endpoint_hash: str
    streams: list[StreamInfo]

    def stream_of(self, account_id: str) -> StreamInfo:
        for info in self.streams:
            if info.stream.account_id == account_id:
                return info
        raise Forbidden("not_your_account", "this subscription has no stream for that account")


def _ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


async def _signed_headers(request: Request) -> tuple[SignedHeaders, str, float]:
    """The signature headers, the canonical endpoint and the signing time, or 401."""
    ctx = _ctx(request)
    given = [request.headers.get(h) for h in ("x-push-endpoint", "x-push-time", "x-push-nonce", "x-push-signature")]
    if not all(given):
        raise Unauthorized(
            "signature_required", "sign the request: X-Push-Endpoint, X-Push-Time, X-Push-Nonce, X-Push-Signature"
        )
    headers = SignedHeaders(*(str(g) for g in given))
    try:
        signed_at = parse_time(headers.time, time.time(), ctx.settings.security.request_signature_max_age)
        endpoint = canonical_endpoint(headers.endpoint)
    except SigningError as exc:
        raise Unauthorized(exc.code, exc.message) from None
    except InvalidEndpoint:
        raise Unauthorized("invalid_signature", "X-Push-Endpoint is not a push endpoint") from None
    return headers, endpoint, signed_at


async def _signed_by(request: Request, auth: str, headers: SignedHeaders) -> bool:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    try:
        verify(auth, headers, request.method, target, await request.body())
    except SigningError:
        return False
    return True


async def _check_signature(request: Request, auth: str, headers: SignedHeaders, signed_at: float) -> None:
    """401 unless the request is signed with ``auth``, the first time this signature is seen."""
    if not await _signed_by(request, auth, headers):
        raise Unauthorized("invalid_signature", "X-Push-Signature is not this request's, signed by this subscription")
    await _use_once(request, headers, signed_at)


async def _use_once(request: Request, headers: SignedHeaders, signed_at: float) -> None:
    ctx = _ctx(request)
    max_age = ctx.settings.security.request_signature_max_age
    if not await ctx.store.use_nonce(f"v1:{headers.signature}", signed_at + max_age):
        raise Unauthorized("signature_replayed", "this signed request was already used")


async def signed_caller(request: Request) -> Caller:
    """The browser behind a signed request, or 401 with why not (``signature_required``,
    ``signature_expired``, ``invalid_signature``, ``unknown_subscription``, ``signature_replayed``).

    The caller holds only the endpoint's streams whose own secret made the signature: anyone who
    knows an endpoint may register a stream on it with a secret of theirs (the NEAR routes are open),
    and that must not open the streams the browser registered with its real one."""
    headers, endpoint, signed_at = await _signed_headers(request)
    ehash = endpoint_hash(endpoint)
    streams = await _ctx(request).store.list_streams(endpoint_hash=ehash)
    if not streams:
        raise Unauthorized("unknown_subscription", "no stream holds this subscription")
    held: list[StreamInfo] = []
    for auth in {s.stream.auth for s in streams}:
        if await _signed_by(request, auth, headers):
            held = [s for s in streams if s.stream.auth == auth]
            break
    if not held:
        raise Unauthorized("invalid_signature", "X-Push-Signature is not this request's, signed by this subscription")
    await _use_once(request, headers, signed_at)
    return Caller(ehash, held)


def proven(info: StreamInfo) -> None:
    """403 unless the stream proves its account (created with a NEP-413 signature)."""
    if not info.signed:
        raise Forbidden(
            "account_proof_required",
            "this changes the account on every browser: create this stream with `signed` (NEP-413) first",
        )


SignedCaller = Annotated[Caller, Depends(signed_caller)]


STAGES = ("shown", "clicked", "closed")
ReceiptStage = Literal["shown", "clicked", "closed"]


# --- answers -----------------------------------------------------------------------------------------


class StreamBody(BaseModel):
    accountId: str
    gateway: str
    createdAt: float
    muted: list[str]
    # its push service refused a push as not ours (401/403: bound to another VAPID key): subscribe
    # again (the web client does on its next page load); false again once the stream is registered anew
    needsRenewal: bool = False


class StreamsBody(BaseModel):
    streams: list[StreamBody]


class InboxItemBody(BaseModel):
    id: int
    type: str
    title: str
    body: str
    url: str  # where its notification's click goes, for this browser's frontend
    createdAt: float
    read: bool
    row: dict[str, Any]  # the NEAR row


class InboxBody(BaseModel):
    accountId: str
    items: list[InboxItemBody]
    next: str | None  # the cursor of the next (older) page; null on the last


class UnreadBody(BaseModel):
    accountId: str
    unread: int
    capped: bool  # the count stopped at its cap: show "999+"


Scope = Literal["browser", "account"]


class MarkReadRequest(BaseModel):
    """Mark items read: ``ids``, everything up to ``upTo``, or ``all``; for this browser, or (the
    stream proving the account) for the account on every browser."""

    accountId: AccountId
    ids: list[int] = Field(default_factory=list, max_length=MAX_READ_IDS)
    upTo: int | None = Field(None, ge=0)
    upToTime: float | None = Field(None, ge=0, description="everything that arrived at or before (epoch seconds)")
    all: bool = False
    scope: Scope = "browser"


class MuteRequest(BaseModel):
    """Mute (or unmute) a type for this browser's stream, or (proven) for the account's browsers."""

    accountId: AccountId
    type: ValueType
    muted: bool
    scope: Scope = "browser"


class QuietRequest(BaseModel):
    """This browser's quiet hours for the account ("HH:MM" in ``timeZone``); ``start`` null clears."""

    accountId: AccountId
    timeZone: str = Field("UTC", max_length=64)
    start: str | None = Field(None, max_length=5)
    end: str | None = Field(None, max_length=5)


class CreatedStreamBody(BaseModel):
    accountId: str
    gateway: str
    signed: bool  # it proves the account (created with a valid NEP-413 signature)


class ReceiptRequest(BaseModel):
    """What the service worker saw of a notification: the push's ``inboxId`` and the stage."""

    accountId: AccountId
    inboxId: int = Field(ge=1)
    stage: ReceiptStage


def _etagged(request: Request, body: BaseModel) -> Response:
    """The answer with a strong ETag of its bytes, or 304 when the caller has them already."""
    content = body.model_dump_json().encode()
    tag = '"' + base64.urlsafe_b64encode(hashlib.sha256(content).digest()[:18]).decode() + '"'
    headers = {"ETag": tag, "Cache-Control": "private, no-cache"}
    if tag in [t.strip() for t in request.headers.get("if-none-match", "").split(",")]:
        return Response(status_code=304, headers=headers)
    return Response(content, media_type="application/json", headers=headers)


def _cursor(item_id: int) -> str:
    return base64.urlsafe_b64encode(json.dumps({"before": item_id}).encode()).decode().rstrip("=")


def _before(cursor: str | None) -> int | None:
    if cursor is None:
        return None
    try:
        before = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))["before"]
    except (ValueError, KeyError, TypeError, binascii.Error):
        raise BadRequest("invalid_cursor", "cursor is not one this API gave") from None
    if not isinstance(before, int) or before < 0:
        raise BadRequest("invalid_cursor", "cursor is not one this API gave")
    return before


def _item(ctx: ApiContext, item: InboxItem, gateway: str) -> InboxItemBody:
    title, body = title_and_body(item.row)
    url = click_url(
        item.row,
        gateway,
        ctx.settings.link_templates,
        (ctx.settings.explorer.transaction, ctx.settings.explorer.account),
    )
    return InboxItemBody(
        id=item.id,
        type=item.value_type,
        title=title,
        body=body,
        url=url,
        createdAt=item.created_at,
        read=item.read,
        row=item.row,
    )


# --- routes -----------------------------------------------------------------------------------------


@router.get("/streams", response_model=StreamsBody)
async def list_own_streams(request: Request, caller: SignedCaller) -> Response:
    """This browser's streams: one per account it gets notifications for, with the account's mutes."""
    streams = [
        StreamBody(
            accountId=s.stream.account_id,
            gateway=s.stream.gateway,
            createdAt=s.created_at,
            muted=list(s.muted),
            needsRenewal=s.refused_at is not None,
        )
        for s in sorted(caller.streams, key=lambda s: s.stream.account_id)
    ]
    return _etagged(request, StreamsBody(streams=streams))


@router.get("/inbox", response_model=InboxBody)
async def inbox(
    request: Request,
    caller: SignedCaller,
    account: Annotated[str, Query(min_length=2, max_length=64, description="an account this browser has a stream for")],
    cursor: Annotated[str | None, Query(max_length=64, description="`next` of the page before")] = None,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE)] = PAGE_SIZE,
) -> Response:
    """The account's notifications, newest first, read or unread for this browser; each links where
    its notification opens on this browser's frontend."""
    ctx = _ctx(request)
    info = caller.stream_of(account)
    items = await ctx.store.inbox(account, caller.endpoint_hash, before=_before(cursor), limit=limit + 1)
    page, more = items[:limit], len(items) > limit
    body = InboxBody(
        accountId=account,
        items=[_item(ctx, i, info.stream.gateway) for i in page],
        next=_cursor(page[-1].id) if more else None,
    )
    return _etagged(request, body)


@router.get("/inbox/unread", response_model=UnreadBody)
async def unread(
    request: Request,
    caller: SignedCaller,
    account: Annotated[str, Query(min_length=2, max_length=64, description="an account this browser has a stream for")],
) -> Response:
    """How many of the account's notifications this browser has not read (a badge polls this)."""
    ctx = _ctx(request)
    caller.stream_of(account)
    count = await ctx.store.unread_count(account, caller.endpoint_hash)
    return _etagged(request, UnreadBody(accountId=account, unread=count, capped=count >= UNREAD_CAP))


@router.post("/inbox/read", status_code=204)
async def mark_read(body: MarkReadRequest, request: Request, caller: SignedCaller) -> Response:
    """Mark notifications read for this browser (or, ``scope`` account, on every browser): some
    (``ids``), all up to one (``upTo``), all that came up to a time (``upToTime``), or ``all``."""
    ctx = _ctx(request)
    caller.stream_of(body.accountId)
    if not body.ids and body.upTo is None and body.upToTime is None and not body.all:
        raise BadRequest("nothing_to_mark", "give ids, upTo, upToTime or all")
    reader = caller.endpoint_hash
    if body.scope == "account":
        proven(caller.stream_of(body.accountId))
        reader = ACCOUNT_READER
    newest = await ctx.store.newest_inbox_id(body.accountId)
    up_to = None if body.upTo is None else min(body.upTo, newest)  # a mark past today's would hide tomorrow's
    if body.all or body.upToTime is not None:
        until = None if body.all else body.upToTime
        up_to = max(
            up_to or 0, newest if until is None else await ctx.store.newest_inbox_id(body.accountId, until=until)
        )
    await ctx.store.mark_read(body.accountId, reader, ids=body.ids, up_to=up_to)
    return Response(status_code=204)


@router.post("/streams", status_code=201, response_model=CreatedStreamBody)
async def create_own_stream(body: CreateStreamRequest, request: Request, key: GatewayKey = None) -> Response:
    """Register (201) or refresh (200) this browser's stream for an account, as /subscriptions/create
    does; signed with the ``auth`` of the subscription in the body. With ``signed`` (NEP-413) the
    stream proves the account, which account-wide changes through /v1 need."""
    headers, endpoint, signed_at = await _signed_headers(request)
    if endpoint != body.subscription.endpoint:
        raise Unauthorized("invalid_signature", "X-Push-Endpoint is not the subscription's endpoint")
    await _check_signature(request, body.subscription.keys.auth, headers, signed_at)
    ctx = _ctx(request)
    created = await create_stream(ctx, body, key)
    [info] = [
        i
        for i in await ctx.store.list_streams(endpoint_hash=endpoint_hash(endpoint))
        if i.stream.account_id == body.accountId
    ]
    answer = CreatedStreamBody(accountId=body.accountId, gateway=info.stream.gateway, signed=info.signed)
    return Response(answer.model_dump_json(), status_code=201 if created else 200, media_type="application/json")


@router.delete("/streams/{account_id}", status_code=204)
async def delete_own_stream(account_id: str, request: Request, caller: SignedCaller) -> Response:
    """Stop this browser's notifications for the account (its other streams stay)."""
    ctx = _ctx(request)
    info = caller.stream_of(account_id)
    await ctx.store.delete_streams(info.stream.endpoint, account_id)
    ctx.counts.invalidate()
    return Response(status_code=204)


@router.delete("/accounts/{account_id}/streams", status_code=204)
async def delete_account_streams(account_id: str, request: Request, caller: SignedCaller) -> Response:
    """Delete every browser's stream of the account (this one's too): the stream must prove the account."""
    ctx = _ctx(request)
    proven(caller.stream_of(account_id))
    await ctx.store.delete_streams_of(account_id=account_id)
    ctx.counts.invalidate()
    return Response(status_code=204)


@router.put("/preferences/mutes", status_code=204)
async def set_mute(body: MuteRequest, request: Request, caller: SignedCaller) -> Response:
    """Mute or unmute a type: for this browser (``scope`` browser), or for the account on every
    browser, now and later (``account``: the stream must prove the account)."""
    ctx = _ctx(request)
    info = caller.stream_of(body.accountId)
    if body.scope == "account":
        proven(info)
    await ctx.store.set_preference(body.accountId, info.stream.endpoint, body.type, body.muted, scope=body.scope)
    return Response(status_code=204)


@router.put("/preferences/quiet", status_code=204)
async def set_quiet(body: QuietRequest, request: Request, caller: SignedCaller) -> Response:
    """This browser's quiet hours for the account (as POST /preferences/quiet)."""
    ctx = _ctx(request)
    info = caller.stream_of(body.accountId)
    await ctx.store.set_quiet_hours(
        body.accountId, info.stream.endpoint, quiet_hours_of(body.timeZone, body.start, body.end)
    )
    return Response(status_code=204)


@router.post("/receipts", status_code=204)
async def receipt(body: ReceiptRequest, request: Request) -> Response:
    """A service worker's report of a notification: ``shown``, ``clicked`` (which also marks it read
    for this browser) or ``closed``. Idempotent: each stage counts once per browser. Forged ones (bad
    signature, no such notification for the account) are refused and counted; at most
    ``[limits] receipts_per_endpoint_*`` per browser."""
    ctx = _ctx(request)
    try:
        caller = await signed_caller(request)
    except Unauthorized as exc:
        ctx.metrics.receipts_refused.labels(exc.code).inc()
        raise
    wait = ctx.receipts.take(caller.endpoint_hash, time.monotonic())
    if wait:
        ctx.metrics.receipts_refused.labels("rate_limited").inc()
        after = retry_after_header(wait)
        raise TooManyRequests("rate_limited", f"too many receipts; retry in {after} s", after)
    info = caller.stream_of(body.accountId)
    found = await ctx.store.record_receipt(
        body.accountId, caller.endpoint_hash, body.inboxId, body.stage, push_host(info.stream.endpoint)
    )
    if not found.known:
        ctx.metrics.receipts_refused.labels("unknown_notification").inc()
        raise BadRequest("unknown_notification", "no such notification was pushed to this browser")
    if found.new:
        ctx.metrics.notifications.labels(body.stage, ctx.type_label(found.value_type)).inc()
    return Response(status_code=204)
