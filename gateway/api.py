"""HTTP endpoints: the NEAR notifications-server API (unchanged), the VAPID key, ingest, health."""

from __future__ import annotations

import contextlib
import hmac
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError

from gateway.config import Settings
from gateway.dispatcher import Sender
from gateway.endpoints import is_allowed
from gateway.exceptions import (
    BadRequest,
    Forbidden,
    PayloadTooLarge,
    ServiceUnavailable,
    StoreUnavailable,
    StreamCapReached,
    Unauthorized,
)
from gateway.health import CachedCounts
from gateway.ingest import Ingested, ingest_setting_aside_refused
from gateway.links import gateway_origin
from gateway.matcher import MatchPolicy, policy_from
from gateway.metrics import Metrics
from gateway.models import (
    ACTIVITY_TYPES,
    CreateStreamRequest,
    DeleteStreamRequest,
    IngestResult,
    NotificationRow,
    SetPreferenceRequest,
    SetQuietHoursRequest,
    loads_json,
)
from gateway.nearrpc import AccessKeys, RpcUnavailable
from gateway.nep413 import SignatureError, SignedRequest, verify_subscription
from gateway.pacing.quiet import QuietHours, known_time_zones, parse_hhmm
from gateway.payload import TYPE_TEXTS
from gateway.ratelimit import RateLimiter
from gateway.store.base import MuteScope, Store
from watchers.decode import event_from_row

KNOWN_TYPES = frozenset(TYPE_TEXTS) | ACTIVITY_TYPES | {"custom"}
HEALTH_TIMEOUT = 2.0  # seconds /healthz, /readyz and /metrics wait for the store before answering without it
SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass
class ApiContext:
    """What the endpoints need, set once on ``app.state.ctx`` by the app factory."""

    settings: Settings
    store: Store
    vapid_public_key: str
    on_ingest: Callable[[], None]
    watcher_states: Callable[[], dict[str, dict[str, Any]]] = dict
    metrics: Metrics = field(default_factory=Metrics)
    sender: Sender | None = None  # the push client, in processes that send (admin send-test)
    access_keys: AccessKeys = field(init=False)
    counts: CachedCounts = field(init=False)  # what /healthz and /metrics show of the store
    readiness: CachedCounts = field(init=False)  # the store's write probe, as often as counts
    receipts: RateLimiter = field(init=False)  # POST /v1/receipts per browser endpoint

    def __post_init__(self) -> None:
        self.counts = CachedCounts(lambda: self.store.health_counts())

        async def probe() -> dict[str, int]:
            await self.store.ping()
            return {}

        self.readiness = CachedCounts(probe)
        limits = self.settings.limits
        self.receipts = RateLimiter(
            limits.receipts_per_endpoint_rate, limits.receipts_per_endpoint_burst, limits.tracked_clients
        )
        security = self.settings.security
        self.access_keys = AccessKeys(
            security.near_rpc_url, timeout=security.rpc_timeout, cache_seconds=security.rpc_cache_seconds
        )

    def type_label(self, value_type: str) -> str:
        """A notification type as a metrics label: the known ones, else "other" (types come from
        sources: anyone writing a social notify picks one, and labels must stay bounded)."""
        if value_type in KNOWN_TYPES or value_type in self.settings.push.types:
            return value_type
        return value_type if value_type in self.settings.matching.allowed_value_types else "other"

    @property
    def policy(self) -> MatchPolicy:
        return policy_from(self.settings.matching, self.settings.push)


class ErrorBody(BaseModel):
    """Every 4xx/5xx answer. ``statusCode``/``error``/``message`` match the NEAR server; ``code`` is stable."""

    statusCode: int
    error: str
    code: str
    message: str


class VapidKeyBody(BaseModel):
    publicKey: str


class IngestBody(BaseModel):
    events: int
    newEvents: int
    deliveries: int
    folded: int = 0  # (event, browser) pairs added to a digest or quiet-hours hold instead
    skipped: dict[str, int]


class RejectedRow(BaseModel):
    row: int  # index in the request's list
    code: str
    message: str


class PartlyIngestedBody(ErrorBody):
    """400 from POST /events. When a list had bad rows: ``code`` and ``message`` are the first bad
    row's, ``rejected`` lists each, and the other rows were ingested as ``accepted`` says (sending
    the list again is safe). Other 400s (the body itself is bad) have neither field."""

    rejected: list[RejectedRow] | None = None
    accepted: IngestBody | None = None


# 503: the store is unavailable (store_unavailable, storage_full) or a dependency is (rpc_unavailable).
ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorBody} for s in (400, 413, 503)}
# The public routes may also refuse a client (rate, keys, signatures, caps) or time it out.
PUBLIC_ERRORS: dict[int | str, dict[str, Any]] = {
    **ERRORS,
    **{status: {"model": ErrorBody} for status in (401, 403, 408, 429, 503)},
}

router = APIRouter()


def _ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


def same_secret(given: str, expected: str) -> bool:
    """Compare a client's secret with ours in constant time."""
    return hmac.compare_digest(given.encode(), expected.encode())


def bearer_matches(authorization: str | None, token: str) -> bool:
    """Whether an ``Authorization: Bearer <token>`` header carries ``token``."""
    scheme, _, given = (authorization or "").partition(" ")
    return scheme.lower() == "bearer" and same_secret(given.strip(), token)


def _check_endpoint(ctx: ApiContext, endpoint: str, field: str) -> None:
    if not is_allowed(endpoint, ctx.settings.push.endpoint_prefixes):
        raise BadRequest("endpoint_not_allowed", f"{field} is not on this gateway's push-service allow-list")


def check_gateway_key(ctx: ApiContext, given: str | None, gateway: str | None) -> None:
    """A [[gateways]] entry with a key needs it for streams of its origin; with
    ``require_gateway_key`` every request needs some entry's key (and, naming a gateway, its own)."""
    entries = ctx.settings.gateways
    if gateway is not None:
        origin = gateway_origin(gateway)
        entry = next((g for g in entries if g.key and gateway_origin(g.origin) == origin), None)
        if entry is not None:
            if given is None or not same_secret(given, entry.key):
                raise Unauthorized("invalid_gateway_key", f"X-Gateway-Key is missing or wrong for {origin}")
            return
    if given is not None:
        if not any(g.key and same_secret(given, g.key) for g in entries):
            raise Unauthorized("invalid_gateway_key", "X-Gateway-Key is not a key of any configured gateway")
        if gateway is not None:  # a known key, used for a gateway it was not issued for
            raise Unauthorized("invalid_gateway_key", "X-Gateway-Key does not belong to this gateway's origin")
        return
    if ctx.settings.security.require_gateway_key:
        raise Unauthorized("gateway_key_required", "this gateway serves configured frontends only: send X-Gateway-Key")


async def check_ownership(ctx: ApiContext, body: CreateStreamRequest) -> bool:
    """Whether the request proves the account: a fresh NEP-413 signature (``signed``) by an access
    key of it. Required with ``require_signed_subscriptions``; a signature given is checked always
    (a wrong one is refused), and a stream created with one proves the account on /v1."""
    security = ctx.settings.security
    if body.signed is None:
        if security.require_signed_subscriptions:
            raise Unauthorized("signature_required", "this gateway needs `signed`: a NEP-413 message from the account")
        return False
    now = time.time()
    try:
        signed_at = verify_subscription(
            SignedRequest(**body.signed.model_dump()),
            action="subscribe",
            account_id=body.accountId,
            gateway=body.gateway,
            endpoint=body.subscription.endpoint,
            recipient=security.signature_recipient,
            now=now,
            max_age=security.signature_max_age,
        )
    except SignatureError as exc:
        raise Unauthorized(exc.code, exc.message) from exc
    try:
        permission = await ctx.access_keys.permission(body.accountId, body.signed.publicKey)
    except RpcUnavailable as exc:
        raise ServiceUnavailable("rpc_unavailable", "cannot check the key with NEAR RPC now; try again") from exc
    if permission is None or (permission == "function_call" and not security.allow_function_call_keys):
        raise Unauthorized("key_not_owned", "the signing key is not a (full) access key of the account")
    nonce = f"{body.signed.publicKey}:{body.signed.nonce}"
    if not await ctx.store.use_nonce(nonce, signed_at + security.signature_max_age):
        raise Unauthorized("signature_replayed", "this signed message was already used")
    return True


async def create_stream(ctx: ApiContext, body: CreateStreamRequest, key: str | None) -> bool:
    """Register (or refresh) a stream as /subscriptions/create and POST /v1/streams do; True when new."""
    sub = body.subscription
    check_gateway_key(ctx, key, body.gateway)
    _check_endpoint(ctx, sub.endpoint, "subscription.endpoint")
    signed = await check_ownership(ctx, body)
    limits = ctx.settings.limits
    try:
        created = await ctx.store.upsert_stream(
            body.accountId,
            body.gateway,
            sub.endpoint,
            sub.keys.p256dh,
            sub.keys.auth,
            max_per_account=limits.max_streams_per_account,
            max_per_endpoint=limits.max_accounts_per_endpoint,
            signed=signed,
        )
    except StreamCapReached as exc:
        what = "streams for this account" if exc.scope == "account" else "accounts on this endpoint"
        raise Forbidden("too_many_streams", f"at most {exc.cap} {what}; delete one first") from exc
    ctx.counts.invalidate()
    return created


GatewayKey = Annotated[str | None, Header(alias="X-Gateway-Key", description="the frontend's API key, if any")]


@router.post("/subscriptions/create", status_code=201, responses=PUBLIC_ERRORS, tags=["NEAR API"])
async def create_subscription(body: CreateStreamRequest, request: Request, key: GatewayKey = None) -> Response:
    """Register a stream (account, gateway, push subscription). Creating it again refreshes it."""
    await create_stream(_ctx(request), body, key)
    return Response(status_code=201)


@router.post("/subscriptions/delete", status_code=204, responses=PUBLIC_ERRORS, tags=["NEAR API"])
async def delete_subscription(body: DeleteStreamRequest, request: Request, key: GatewayKey = None) -> Response:
    """Delete the endpoint's streams, or only ``accountId``'s stream on it."""
    ctx = _ctx(request)
    check_gateway_key(ctx, key, None)
    deleted = await ctx.store.delete_streams(body.endpoint, body.accountId)
    if not deleted:
        raise BadRequest("unknown_subscription", "no subscription with this endpoint (and accountId)")
    ctx.counts.invalidate()
    return Response(status_code=204)


@router.post("/preferences/set", status_code=201, responses=PUBLIC_ERRORS, tags=["NEAR API"])
async def set_preference(body: SetPreferenceRequest, request: Request, key: GatewayKey = None) -> Response:
    """Mute (``block: true``) or unmute one notification type for the account, on all its browsers,
    as the NEAR server does; the mute is kept when the browsers unsubscribe and subscribe again.
    Asked from one of the account's streams (``endpoint``)."""
    return await _set_mute(body, request, key, "account")


@router.post("/preferences/browser", status_code=201, responses=PUBLIC_ERRORS, tags=["gateway"])
async def set_browser_preference(body: SetPreferenceRequest, request: Request, key: GatewayKey = None) -> Response:
    """Like /preferences/set, for this browser's stream only (ours, not a NEAR route): the account's
    other browsers keep getting the type, and the mute goes with the stream."""
    return await _set_mute(body, request, key, "browser")


async def _set_mute(body: SetPreferenceRequest, request: Request, key: str | None, scope: MuteScope) -> Response:
    ctx = _ctx(request)
    check_gateway_key(ctx, key, None)
    found = await ctx.store.set_preference(body.accountId, body.endpoint, body.dapp, body.block, scope=scope)
    if not found:
        raise BadRequest("unknown_subscription", "no subscription with this endpoint for this accountId")
    return Response(status_code=201)


def quiet_hours_of(time_zone: str, start: str | None, end: str | None) -> QuietHours | None:
    """Quiet hours from a request ("HH:MM" in an IANA zone), None to clear; 400 when malformed."""
    if start is None:
        return None
    if time_zone not in known_time_zones():
        raise BadRequest("invalid_time_zone", "timeZone must be an IANA time zone such as Europe/Berlin")
    if end is None:
        raise BadRequest("invalid_time", "end is required with start")
    try:
        return QuietHours(time_zone, parse_hhmm(start), parse_hhmm(end))
    except ValueError as exc:
        raise BadRequest("invalid_time", str(exc)) from None


@router.post("/preferences/quiet", status_code=201, responses=PUBLIC_ERRORS, tags=["gateway"])
async def set_quiet_hours(body: SetQuietHoursRequest, request: Request, key: GatewayKey = None) -> Response:
    """Quiet hours for this browser's stream of the account (ours, not a NEAR route): pushes that
    are not high-urgency are held from ``start`` to ``end`` each day in ``timeZone`` and come as one
    digest when the window ends. ``start`` null clears them."""
    ctx = _ctx(request)
    check_gateway_key(ctx, key, None)
    quiet = quiet_hours_of(body.timeZone, body.start, body.end)
    if not await ctx.store.set_quiet_hours(body.accountId, body.endpoint, quiet):
        raise BadRequest("unknown_subscription", "no subscription with this endpoint for this accountId")
    return Response(status_code=201)


@router.get("/vapid-public-key", responses={429: {"model": ErrorBody}}, tags=["gateway"])
async def vapid_public_key(request: Request) -> VapidKeyBody:
    """The applicationServerKey to pass to ``PushManager.subscribe``."""
    return VapidKeyBody(publicKey=_ctx(request).vapid_public_key)


@router.get("/healthz", tags=["gateway"])
async def healthz(request: Request) -> JSONResponse:
    """Liveness: 200 while the process works, even through a store outage (restarting the process
    would not bring the store back). ``status`` is ``ok``, or ``degraded`` while the store does not
    answer; with the store's state, stream and outbox counts (when readable) and each watcher's state."""
    ctx = _ctx(request)
    counts: dict[str, int] = {}
    # A probe must not wait out a store timeout, and liveness answers whatever the store does.
    with anyio.move_on_after(HEALTH_TIMEOUT), contextlib.suppress(Exception):
        counts = await ctx.counts.get()
        if not ctx.store.status.up:  # an outage ends with a write: the readiness probe is one
            await ctx.readiness.get()
    status = "ok" if counts and ctx.store.status.up else "degraded"
    body = {"status": status, **counts, "store": ctx.store.status.snapshot(), "watchers": ctx.watcher_states()}
    return JSONResponse(body)


@router.get("/readyz", tags=["gateway"], responses={503: {"model": ErrorBody}})
async def readyz(request: Request) -> JSONResponse:
    """Readiness: 200 when the store answers; 503 with the reason (and Retry-After) while it does
    not, so a load balancer sends the traffic elsewhere until it is back."""
    ctx = _ctx(request)
    try:
        with anyio.fail_after(HEALTH_TIMEOUT):
            await ctx.readiness.get()
        status = ctx.store.status
        if not status.up:
            code = "storage_full" if status.state == "full" else "store_unavailable"
            raise StoreUnavailable(status.reason or "the store did not answer", code)
    except StoreUnavailable as exc:
        raise ServiceUnavailable(exc.code, f"not ready: {exc}") from exc
    except TimeoutError as exc:
        raise ServiceUnavailable(
            "store_unavailable", f"not ready: the store did not answer in {HEALTH_TIMEOUT} s"
        ) from exc
    return JSONResponse({"status": "ready", "store": ctx.store.status.snapshot()})


@router.get("/metrics", tags=["gateway"], response_class=PlainTextResponse)
async def metrics(request: Request) -> PlainTextResponse:
    """Prometheus text exposition: deliveries, latencies, outbox depth, streams, watchers."""
    ctx = _ctx(request)

    async def counts() -> dict[str, int]:
        with anyio.fail_after(HEALTH_TIMEOUT):
            return await ctx.counts.get()

    body = await ctx.metrics.render(counts, ctx.watcher_states, ctx.store.status.snapshot)
    return PlainTextResponse(body, media_type=CONTENT_TYPE_LATEST)


EVENTS_SCHEMA = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/NotificationRow"},
                        {"type": "array", "items": {"$ref": "#/components/schemas/NotificationRow"}},
                    ]
                }
            }
        },
    }
}


@router.post(
    "/events",
    status_code=202,
    response_model=IngestBody,
    responses={**ERRORS, 400: {"model": PartlyIngestedBody}, 401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
    openapi_extra=EVENTS_SCHEMA,
    tags=["ingest"],
)
async def ingest_events(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    source: Annotated[str, Query(description="namespace of the row ids (dedupe key)")] = "ingest",
) -> IngestBody | JSONResponse:
    """Feed notification rows (QueryAPI shape, one or a list) into the matcher. Bearer token required.

    In a list, rows that are invalid (or that the store refuses) are answered 400 in ``rejected``
    while the others are ingested (``accepted``); each row is ingested once, so the whole list can
    be sent again."""
    ctx = _ctx(request)
    token = ctx.settings.ingest.token
    if not token:
        raise Forbidden("ingest_disabled", "POST /events is disabled: set [ingest] token to enable it")
    if not bearer_matches(authorization, token):
        raise Unauthorized("unauthorized", "missing or wrong bearer token")
    if not SOURCE_NAME.match(source):
        raise BadRequest("invalid_source", "source must match [a-z0-9][a-z0-9._-]{0,63}")
    try:
        data = loads_json(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("malformed_json", "request body is not valid JSON") from exc
    rows = data if isinstance(data, list) else [data]
    if len(rows) > ctx.settings.ingest.max_batch:
        raise PayloadTooLarge("too_many_rows", f"at most {ctx.settings.ingest.max_batch} rows per request")
    events, rows_of_events, rejected = [], [], []
    for i, raw in enumerate(rows):
        try:
            row = NotificationRow.model_validate(raw)
        except ValidationError as exc:
            if not isinstance(data, list):
                raise BadRequest(*describe_validation_error(exc.errors(include_url=False)[0])) from exc
            code, message = describe_validation_error(exc.errors(include_url=False)[0])
            rejected.append(RejectedRow(row=i, code=code, message=message))
            continue
        events.append(event_from_row(row, source))
        rows_of_events.append(i)
    ingested = await ingest_setting_aside_refused(ctx.store, events, ctx.policy) if events else Ingested(IngestResult())
    result = ingested.result
    if result.deliveries:
        ctx.on_ingest()
    accepted = IngestBody(
        events=result.events,
        newEvents=result.new_events,
        deliveries=result.deliveries,
        folded=result.folded,
        skipped=result.skipped,
    )
    for j, why in ingested.refused.items():
        rejected.append(RejectedRow(row=rows_of_events[j], code="refused_by_store", message=why))
    if not rejected:
        return accepted
    if not isinstance(data, list):
        raise BadRequest(rejected[0].code, rejected[0].message)
    rejected.sort(key=lambda r: r.row)
    first, more = rejected[0], len(rejected) - 1
    message = f"rows[{first.row}]: {first.message}" + (f" (and {more} more rejected rows)" if more else "")
    body = PartlyIngestedBody(
        statusCode=400, error="Bad Request", code=first.code, message=message, rejected=rejected, accepted=accepted
    )
    return JSONResponse(body.model_dump(), status_code=400)


def describe_validation_error(err: Any) -> tuple[str, str]:
    """(stable code, message) for one pydantic error; custom validators name their own code."""
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    path = ".".join(loc) or "body"
    kind = err.get("type", "")
    if kind == "json_invalid":
        return "malformed_json", "request body is not valid JSON"
    if kind == "missing":
        return "missing_field", f'"{path}" is required'
    if kind.startswith("invalid_"):
        return kind, str(err.get("msg", "invalid value"))
    if kind in ("model_attributes_type", "dict_type", "model_type") and path == "body":
        return "invalid_body", "request body must be a JSON object"
    if path.endswith("endpoint"):
        return "invalid_endpoint", f"{path} must be a URL of at most 2048 characters"
    return "invalid_field", f"{path}: {err.get('msg', 'invalid value')}"
