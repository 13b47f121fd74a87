"""The ASGI app: routes, the one error handler, body-size limits, CORS and the web client."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import FileResponse, JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import __version__, admin
from gateway.api import ApiContext, describe_validation_error, router
from gateway.config import GatewaySettings, LimitsSettings, Settings
from gateway.cors import OpenCors
from gateway.dispatcher import Sender
from gateway.exceptions import ApiError, StoreRefused, StoreUnavailable, TooManyRequests
from gateway.links import gateway_origin
from gateway.metrics import Metrics
from gateway.ratelimit import RateLimiter, client_bucket, keyed_frontend, retry_after_header
from gateway.store.base import Store
from gateway.v1.routes import router as v1_router

log = logging.getLogger(__name__)

WEBCLIENT_DIR = Path(__file__).resolve().parent.parent / "webclient"
REASONS = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    422: "Unprocessable Entity",
    429: "Too Many Requests",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
# Seconds a client is asked to wait while the store is unavailable; a full disk needs an operator.
STORE_RETRY_AFTER = {"store_unavailable": "2", "storage_full": "30"}


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"statusCode": status, "error": REASONS.get(status, "Error"), "code": code, "message": message}
    return JSONResponse(body, status_code=status, headers=headers)


class BodyLimit:
    """Refuse bodies over a limit with 413 before the app reads them (Content-Length or streamed)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[str], int], read_timeout: float) -> None:
        self.app = app
        self.limit_for = limit_for
        self.read_timeout = read_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        too_large = error_response(413, "body_too_large", f"request body exceeds {limit} bytes")
        for name, value in scope.get("headers", []):
            if name == b"content-length" and (not value.isdigit() or int(value) > limit):
                await too_large(scope, receive, send)
                return
        chunks: list[bytes] = []
        size = 0
        with anyio.move_on_after(self.read_timeout) as reading:  # a slow client must not hold a worker
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    await too_large(scope, receive, send)
                    return
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
        if reading.cancelled_caught:
            slow = error_response(408, "request_timeout", f"request body not received within {self.read_timeout} s")
            await slow(scope, receive, send)
            return
        body = b"".join(chunks)
        sent = False

        async def replay() -> Message:
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


# Token-protected, or for probes and scrapers.
UNLIMITED_PATHS = frozenset({"/events", "/healthz", "/readyz", "/metrics"})


class RateLimit:
    """429 with Retry-After when a client IP (an IPv6 client by its /64), or a keyed frontend, exceeds
    its token bucket.

    A frontend's own budget is spent only by requests carrying its ``X-Gateway-Key``: the ``Origin``
    header is set at will by any non-browser client, so a bucket keyed by it would let strangers
    spend a real frontend's budget and lock its users out. Requests without a valid key are limited
    per client address only, so nobody is refused for other addresses' traffic.
    """

    def __init__(
        self,
        app: ASGIApp,
        limits: LimitsSettings,
        gateways: Iterable[GatewaySettings] = (),
        on_refused: Callable[[], None] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.app = app
        self.clock = clock
        self.on_refused = on_refused
        self.per_ip = RateLimiter(limits.per_ip_rate, limits.per_ip_burst, limits.tracked_clients)
        self.per_origin = RateLimiter(limits.per_origin_rate, limits.per_origin_burst, limits.tracked_clients)
        self.frontends = [(gateway_origin(g.origin), g.key) for g in gateways if g.key]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "OPTIONS" or scope["path"] in UNLIMITED_PATHS:
            await self.app(scope, receive, send)
            return
        now = self.clock()
        client = scope.get("client")
        wait = self.per_ip.take(client_bucket(client[0]) if client else "unknown", now)
        if not wait and self.frontends:
            given = next((v for k, v in scope.get("headers", []) if k == b"x-gateway-key"), None)
            frontend = keyed_frontend(given.decode("latin-1") if given is not None else None, self.frontends)
            if frontend is not None:
                wait = self.per_origin.take(frontend, now)
        if wait:
            self.on_refused()
            limited = error_response(
                429,
                "rate_limited",
                f"too many requests; retry in {retry_after_header(wait)} s",
                {"Retry-After": retry_after_header(wait)},
            )
            await limited(scope, receive, send)
            return
        await self.app(scope, receive, send)


def allowed_methods(app: FastAPI, path: str) -> list[str]:
    """Every method some route serves at ``path`` (routers included into the app walked too)."""
    methods: set[str] = set()
    pending: list[Any] = list(app.routes)
    while pending:
        route = pending.pop()
        if isinstance(route, APIRoute | Route):
            if route.methods and route.path_regex.match(path):
                methods |= route.methods
        elif hasattr(route, "original_router"):  # an included APIRouter (we include without a prefix)
            pending += route.original_router.routes
    return sorted(methods)


def _serve_webclient(app: FastAPI) -> None:
    """The web client's files at the root (the service worker's scope must be /), as explicit GET
    routes: a catch-all mount would swallow wrong-method API requests (405 with a wrong Allow)."""
    if not WEBCLIENT_DIR.is_dir():
        return
    for file in sorted(WEBCLIENT_DIR.iterdir()):
        if not file.is_file():
            continue
        paths = ["/", "/index.html"] if file.name == "index.html" else [f"/{file.name}"]

        for route in paths:
            app.add_api_route(route, _file_endpoint(file), methods=["GET", "HEAD"], include_in_schema=False)


def _file_endpoint(file: Path) -> Callable[[], Awaitable[FileResponse]]:
    # The path is closed over, not a parameter: FastAPI would take a parameter from the query string.
    async def serve() -> FileResponse:
        return FileResponse(file, headers={"Cache-Control": "no-cache"})

    return serve


def create_app(
    settings: Settings,
    store: Store,
    vapid_public_key: str,
    on_ingest: Callable[[], None] = lambda: None,
    watcher_states: Callable[[], dict[str, dict[str, Any]]] = dict,
    metrics: Metrics | None = None,
    sender: Sender | None = None,
) -> FastAPI:
    app = FastAPI(
        title="NEAR push gateway",
        version=__version__,
        description="Event-stream subscription gateway: NEAR activity to Web Push notifications.",
    )
    app.state.ctx = ApiContext(
        settings, store, vapid_public_key, on_ingest, watcher_states, metrics or Metrics(), sender
    )
    app.include_router(router)
    app.include_router(v1_router)
    app.include_router(admin.router)
    app.include_router(admin.page)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        headers = {"Retry-After": STORE_RETRY_AFTER[exc.code]} if exc.code in STORE_RETRY_AFTER else None
        if isinstance(exc, TooManyRequests):
            headers = {"Retry-After": exc.retry_after}
        return error_response(exc.status, exc.code, exc.message, headers)

    @app.exception_handler(StoreUnavailable)
    async def _store_unavailable(_: Request, exc: StoreUnavailable) -> JSONResponse:
        # Logged once per outage by the store boundary; nothing of the request was applied.
        full = exc.code == "storage_full"
        message = "storage is full" if full else "the store is unavailable"
        message += "; try again later (sending the same request again is safe)"
        return error_response(503, exc.code, message, {"Retry-After": STORE_RETRY_AFTER.get(exc.code, "2")})

    @app.exception_handler(StoreRefused)
    async def _store_refused(_: Request, exc: StoreRefused) -> JSONResponse:
        return error_response(400, "refused_by_store", f"the store cannot hold this request's data: {exc}")

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
        code, message = describe_validation_error(exc.errors()[0])
        return error_response(400, code, message)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = REASONS.get(exc.status_code, "error").lower().replace(" ", "_")
        headers = getattr(exc, "headers", None)
        if exc.status_code == 405:  # Starlette names one route's methods; a path may have several routes
            headers = {"Allow": ", ".join(allowed_methods(app, request.url.path))}
        return error_response(exc.status_code, code, str(exc.detail), headers)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return error_response(500, "internal_error", "internal error; the request was not applied")

    def openapi() -> dict[str, Any]:
        # Validation failures answer 400 with ErrorBody (as the NEAR server does), never FastAPI's 422.
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            for path in schema.get("paths", {}).values():
                for operation in path.values():
                    operation.get("responses", {}).pop("422", None)
            for unused in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(unused, None)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    _serve_webclient(app)

    s = settings.server

    def limit_for(path: str) -> int:
        return s.max_events_body_bytes if path == "/events" else s.max_body_bytes

    app.add_middleware(BodyLimit, limit_for=limit_for, read_timeout=settings.limits.request_read_timeout)
    refused = app.state.ctx.metrics.api_requests.labels("rate_limited").inc
    # Before the body is read; a [[gateways]] key selects the frontend's own bucket.
    app.add_middleware(RateLimit, limits=settings.limits, gateways=settings.gateways, on_refused=refused)
    # Browsers call the NEAR routes from the gateway frontends' origins, as the NEAR server answers them.
    app.add_middleware(OpenCors, expose_headers=["Retry-After"])
    return app
