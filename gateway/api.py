"""HTTP endpoints: the NEAR notifications-server API (unchanged), the VAPID key, ingest, health."""

from __future__ import annotations

import hmac
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError

from gateway.config import Settings
from gateway.endpoints import is_allowed
from gateway.exceptions import BadRequest, Forbidden, PayloadTooLarge, Unauthorized
from gateway.matcher import policy_from
from gateway.models import (
    CreateStreamRequest,
    DeleteStreamRequest,
    MatchPolicy,
    NotificationRow,
    SetPreferenceRequest,
)
from gateway.store.base import Store
from watchers.decode import event_from_row

SOURCE_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")


@dataclass
class ApiContext:
    """What the endpoints need, set once on ``app.state.ctx`` by the app factory."""

    settings: Settings
    store: Store
    vapid_public_key: str
    on_ingest: Callable[[], None]
    watcher_states: Callable[[], dict[str, dict[str, Any]]] = dict

    @property
    def policy(self) -> MatchPolicy:
        return policy_from(self.settings.matching)


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
    skipped: dict[str, int]


ERRORS: dict[int | str, dict[str, Any]] = {400: {"model": ErrorBody}, 413: {"model": ErrorBody}}

router = APIRouter()


def _ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    return ctx


def _check_endpoint(ctx: ApiContext, endpoint: str, field: str) -> None:
    if not is_allowed(endpoint, ctx.settings.push.endpoint_prefixes):
        raise BadRequest("endpoint_not_allowed", f"{field} is not on this gateway's push-service allow-list")


@router.post("/subscriptions/create", status_code=201, responses=ERRORS, tags=["NEAR API"])
async def create_subscription(body: CreateStreamRequest, request: Request) -> Response:
    """Register a stream (account, gateway, push subscription). Creating it again refreshes it."""
    ctx = _ctx(request)
    sub = body.subscription
    _check_endpoint(ctx, sub.endpoint, "subscription.endpoint")
    await ctx.store.upsert_stream(body.accountId, body.gateway, sub.endpoint, sub.keys.p256dh, sub.keys.auth)
    return Response(status_code=201)


@router.post("/subscriptions/delete", status_code=204, responses=ERRORS, tags=["NEAR API"])
async def delete_subscription(body: DeleteStreamRequest, request: Request) -> Response:
    """Delete the endpoint's streams, or only ``accountId``'s stream on it."""
    deleted = await _ctx(request).store.delete_streams(body.endpoint, body.accountId)
    if not deleted:
        raise BadRequest("unknown_subscription", "no subscription with this endpoint (and accountId)")
    return Response(status_code=204)


@router.post("/preferences/set", status_code=201, responses=ERRORS, tags=["NEAR API"])
async def set_preference(body: SetPreferenceRequest, request: Request) -> Response:
    """Mute (``block: true``) or unmute one notification type for a stream."""
    found = await _ctx(request).store.set_preference(body.accountId, body.endpoint, body.dapp, body.block)
    if not found:
        raise BadRequest("unknown_subscription", "no subscription with this endpoint for this accountId")
    return Response(status_code=201)


@router.get("/vapid-public-key", tags=["gateway"])
async def vapid_public_key(request: Request) -> VapidKeyBody:
    """The applicationServerKey to pass to ``PushManager.subscribe``."""
    return VapidKeyBody(publicKey=_ctx(request).vapid_public_key)


@router.get("/healthz", tags=["gateway"])
async def healthz(request: Request) -> JSONResponse:
    """200 when the store answers, with stream and outbox counts and each watcher's state; 503 otherwise."""
    ctx = _ctx(request)
    try:
        counts = await ctx.store.counts()
    except Exception:  # any store failure is "unhealthy", never a 500
        return JSONResponse({"status": "unavailable"}, status_code=503)
    return JSONResponse({"status": "ok", **counts, "watchers": ctx.watcher_states()})


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
    responses={**ERRORS, 401: {"model": ErrorBody}, 403: {"model": ErrorBody}},
    openapi_extra=EVENTS_SCHEMA,
    tags=["ingest"],
)
async def ingest_events(
    request: Request,
    authorization: Annotated[str | None, Header()] = None,
    source: Annotated[str, Query(description="namespace of the row ids (dedupe key)")] = "ingest",
) -> IngestBody:
    """Feed notification rows (QueryAPI shape, one or a list) into the matcher. Bearer token required."""
    ctx = _ctx(request)
    token = ctx.settings.ingest.token
    if not token:
        raise Forbidden("ingest_disabled", "POST /events is disabled: set [ingest] token to enable it")
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise Unauthorized("unauthorized", "missing or wrong bearer token")
    if not SOURCE_NAME.match(source):
        raise BadRequest("invalid_source", "source must match [a-z0-9][a-z0-9._-]{0,63}")
    try:
        data = json.loads(await request.body())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest("malformed_json", "request body is not valid JSON") from exc
    rows = data if isinstance(data, list) else [data]
    if len(rows) > ctx.settings.ingest.max_batch:
        raise PayloadTooLarge("too_many_rows", f"at most {ctx.settings.ingest.max_batch} rows per request")
    events = []
    for i, raw in enumerate(rows):
        try:
            row = NotificationRow.model_validate(raw)
        except ValidationError as exc:
            code, message = describe_validation_error(exc.errors(include_url=False)[0])
            prefix = f"rows[{i}]: " if isinstance(data, list) else ""
            raise BadRequest(code, prefix + message) from exc
        events.append(event_from_row(row, source))
    result = await ctx.store.ingest(events, ctx.policy)
    if result.deliveries:
        ctx.on_ingest()
    return IngestBody(
        events=result.events, newEvents=result.new_events, deliveries=result.deliveries, skipped=result.skipped
    )


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
