"""The admin API (/admin/api/...) and the dashboard page (/admin), behind ``[admin] token``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request
from fastapi.responses import FileResponse
from pydantic import BaseModel, Field

from gateway.api import ApiContext, ErrorBody, bearer_matches
from gateway.exceptions import BadRequest, Forbidden, ServiceUnavailable, Unauthorized
from gateway.operations import dead_letter_view, overview, send_test, stream_view

DASHBOARD = Path(__file__).resolve().parent / "dashboard.html"
ADMIN_ERRORS: dict[int | str, dict[str, Any]] = {s: {"model": ErrorBody} for s in (400, 401, 403, 503)}


def _admin(request: Request, authorization: Annotated[str | None, Header()] = None) -> ApiContext:
    ctx: ApiContext = request.app.state.ctx
    token = ctx.settings.admin.token
    if not token:
        raise Forbidden("admin_disabled", "the admin API is disabled: set [admin] token to enable it")
    if not bearer_matches(authorization, token):
        raise Unauthorized("unauthorized", "missing or wrong admin bearer token")
    return ctx


Admin = Annotated[ApiContext, Depends(_admin)]
router = APIRouter(prefix="/admin/api", tags=["admin"], responses=ADMIN_ERRORS)


class Ids(BaseModel):
    ids: list[int] | None = Field(None, description="these dead letters; null = all of them")


class TestPush(BaseModel):
    accountId: str = Field(min_length=2, max_length=64)


@router.get("/overview")
async def get_overview(ctx: Admin) -> dict[str, Any]:
    """Counts, watchers, deliveries per minute by outcome (last hour), failing hosts, recent dead letters."""
    return await overview(ctx.store, ctx.watcher_states)


@router.get("/streams")
async def list_streams(
    ctx: Admin,
    account: Annotated[str | None, Query(max_length=64)] = None,
    endpoint_hash: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Streams of an account or an endpoint hash (or all), newest first; endpoints redacted."""
    infos = await ctx.store.list_streams(account_id=account, endpoint_hash=endpoint_hash, limit=limit)
    return [stream_view(i) for i in infos]


@router.delete("/streams")
async def delete_streams(
    ctx: Admin,
    account: Annotated[str | None, Query(max_length=64)] = None,
    endpoint_hash: Annotated[str | None, Query(max_length=64)] = None,
) -> dict[str, int]:
    """Delete every stream of an account or of an endpoint hash (one of them is required)."""
    if (account is None) == (endpoint_hash is None):
        raise BadRequest("invalid_query", "give exactly one of account or endpoint_hash")
    return {"deleted": await ctx.store.delete_streams_of(account_id=account, endpoint_hash=endpoint_hash)}


@router.post("/send-test")
async def post_send_test(body: TestPush, ctx: Admin) -> list[dict[str, Any]]:
    """A test push to every stream of the account, with each push service's answer."""
    if ctx.sender is None:
        raise ServiceUnavailable("no_sender", "this process does not send pushes")
    return await send_test(ctx.store, ctx.sender, body.accountId)


@router.get("/deadletters")
async def list_dead_letters(ctx: Admin, limit: Annotated[int, Query(ge=1, le=1000)] = 100) -> list[dict[str, Any]]:
    """Deliveries that ended without being sent, newest first, with their reason."""
    return [dead_letter_view(d) for d in await ctx.store.dead_letters(limit)]


@router.post("/deadletters/retry")
async def retry_dead_letters(body: Ids, ctx: Admin) -> dict[str, int]:
    """Queue dead letters again (due now, attempts reset)."""
    retried = await ctx.store.retry_dead_letters(body.ids)
    if retried:
        ctx.on_ingest()  # wake the local dispatcher
    return {"retried": retried}


@router.post("/deadletters/purge")
async def purge_dead_letters(body: Ids, ctx: Admin) -> dict[str, int]:
    """Delete dead letters for good."""
    return {"purged": await ctx.store.purge_dead_letters(body.ids)}


page = APIRouter()


@page.get("/admin", include_in_schema=False)
async def dashboard() -> FileResponse:
    """The dashboard page; it asks for the admin token and calls the admin API with it."""
    return FileResponse(DASHBOARD, headers={"Cache-Control": "no-cache"})
