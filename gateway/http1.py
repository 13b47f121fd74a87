"""A small HTTP/1.1 client for the dispatcher's one job: POST a small body, read a small answer.

Per request it costs a fraction of a general client (bench/README.md): requests are written as one
pre-rendered buffer on a kept-alive connection, and answers are parsed just enough (status,
headers, a Content-Length, chunked or close-delimited body). Connections are pooled per origin,
with a cap on how many are open; TLS uses the default verified context. Redirects are never followed.
Deadlines are checked by one periodic sweep rather than a timer per request.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import NamedTuple, cast
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024  # push-service answers are tiny; anything larger ends the connection
IDLE_PER_ORIGIN = 256
ROUTES_KEPT = 65536  # parsed endpoint URLs remembered
SWEEP_INTERVAL = 0.05  # least seconds between two sweeps of in-flight requests for missed deadlines


class HttpError(Exception):
    """No answer: the connection failed, closed, or the answer was malformed."""


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self._buffer = bytearray()
        self._waiter: asyncio.Future[Answer] | None = None
        self._head: tuple[int, dict[str, str], bool] | None = None  # status, headers, keep_alive
        self.keep_alive = True

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        if self._waiter is not None and not self._waiter.done():
            try:
                answer = self._parse(final=False)
            except HttpError as exc:
                self._waiter.set_exception(exc)
                return
            if answer is not None:
                self._waiter.set_result(answer)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._waiter is not None and not self._waiter.done():
            try:
                answer = self._parse(final=True)
            except HttpError as err:
                self._waiter.set_exception(err)
                return
            if answer is None:
                self._waiter.set_exception(HttpError(f"connection closed: {exc or 'by the server'}"))
            else:
                self._waiter.set_result(answer)

    # one exchange
    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._buffer.clear()
        self._head = None
        self._waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def time_out(self) -> None:
        """The answer is late: fail the exchange and drop the connection (its answer may still come)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(TimeoutError("no answer before the deadline"))
        self.close()

    def _parse(self, *, final: bool) -> Answer | None:
        if self._head is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                if len(self._buffer) > MAX_HEAD_BYTES:
                    raise HttpError("answer head too large")
                return None
            lines = bytes(self._buffer[:end]).decode("latin-1").split("\r\n")
            del self._buffer[: end + 4]
            parts = lines[0].split(" ", 2)
            if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
                raise HttpError(f"malformed status line {lines[0][:60]!r}")
            headers: dict[str, str] = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            keep = parts[0] == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
            self._head = (int(parts[1]), headers, keep)
        status, headers, keep = self._head
        if status in (204, 304) or 100 <= status < 200:
            body: bytes | None = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._chunked()
        elif "content-length" in headers:
            length = int(headers["content-length"])
            if length > MAX_BODY_BYTES:
                keep = False
            body = bytes(self._buffer[:length]) if len(self._buffer) >= length else None
            if body is None and final:
                raise HttpError("connection closed inside the answer body")
        else:  # delimited by the connection closing
            keep = False
            body = bytes(self._buffer) if final else None
        if body is None:
            return None
        self.keep_alive = keep
        return Answer(status, headers, body[:MAX_BODY_BYTES])

    def _chunked(self) -> bytes | None:
        out, pos = bytearray(), 0
        while True:
            eol = self._buffer.find(b"\r\n", pos)
            if eol < 0:
                return None
            try:
                size = int(bytes(self._buffer[pos:eol]).split(b";")[0], 16)
            except ValueError as exc:
                raise HttpError("malformed chunk size") from exc
            if size == 0:
                end = self._buffer.find(b"\r\n\r\n", eol)
                if end < 0 and self._buffer[eol : eol + 4] != b"\r\n\r\n":
                    return None
                return bytes(out)
            if len(self._buffer) < eol + 2 + size + 2:
                return None
            out += self._buffer[eol + 2 : eol + 2 + size]
            pos = eol + 2 + size + 2
            if len(out) > MAX_BODY_BYTES:
                self.keep_alive = False
                return bytes(out)


class _Slots:
    """A first-come first-served limit on requests in flight: asyncio.Semaphore's job with less work per
    call (a freed slot passes straight to the next waiter)."""

    def __init__(self, limit: int) -> None:
        self.free = limit
        self._waiters: deque[asyncio.Future[None]] = deque()

    async def acquire(self) -> None:
        if self.free:
            self.free -= 1
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # handed a slot just as we were cancelled
                self.release()
            elif waiter in self._waiters:
                self._waiters.remove(waiter)
            raise

    def release(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class _Origin:
    def __init__(self, scheme: str, host: str, port: int, limit: int, tls: ssl.SSLContext | None) -> None:
        self.host, self.port = host, port
        self.tls = tls if scheme == "https" else None
        self.host_header = host if port in (80, 443) else f"{host}:{port}"
        self.slots = _Slots(limit)
        self.idle: deque[_Connection] = deque()

    async def connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_connection(
                _Connection, self.host, self.port, ssl=self.tls, server_hostname=self.host if self.tls else None
            )
        except (OSError, ssl.SSLError) as exc:
            raise HttpError(f"cannot connect: {type(exc).__name__}") from exc
        return conn


def render_headers(headers: dict[str, str]) -> bytes:
    """Header lines ready to send (each ending in CRLF); render once, reuse for every request."""
    return "".join(f"{k}: {v}\r\n" for k, v in headers.items()).encode("latin-1")


class Http1Client:
    def __init__(self, *, concurrency_per_origin: int, tls: ssl.SSLContext | None = None) -> None:
        self._limit = concurrency_per_origin
        self._tls = tls or ssl.create_default_context()
        self._origins: dict[str, _Origin] = {}
        self._routes: dict[str, tuple[_Origin, bytes]] = {}  # url -> origin, rendered request line and Host
        self._deadlines: dict[_Connection, float] = {}  # in-flight exchanges, by loop time
        self._sweeper: asyncio.TimerHandle | None = None

    def _route(self, url: str) -> tuple[_Origin, bytes]:
        """The origin of ``url`` and the start of its request; push endpoints repeat, so each is parsed once."""
        route = self._routes.get(url)
        if route is None:
            parts = urlsplit(url)
            key = f"{parts.scheme}://{parts.netloc}"
            origin = self._origins.get(key)
            if origin is None:
                port = parts.port or (443 if parts.scheme == "https" else 80)
                origin = self._origins[key] = _Origin(parts.scheme, parts.hostname or "", port, self._limit, self._tls)
            target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            start = f"POST {target} HTTP/1.1\r\nHost: {origin.host_header}\r\nContent-Length: ".encode("latin-1")
            if len(self._routes) >= ROUTES_KEPT:
                self._routes.clear()
            route = self._routes[url] = (origin, start)
        return route

    async def post(self, url: str, headers: dict[str, str] | bytes, body: bytes, timeout: float) -> Answer:  # noqa: ASYNC109
        """POST ``body``; ``headers`` as a dict, or as a block rendered once by ``render_headers``."""
        origin, start = self._route(url)
        block = headers if isinstance(headers, bytes) else render_headers(headers)
        request = b"%s%d\r\n%s\r\n%s" % (start, len(body), block, body)
        await origin.slots.acquire()
        try:
            return await self._exchange(origin, request, asyncio.get_running_loop().time() + timeout)
        finally:
            origin.slots.release()

    async def _exchange(self, origin: _Origin, request: bytes, deadline: float) -> Answer:
        for attempt in range(2):
            conn = None
            while origin.idle and conn is None:
                candidate = origin.idle.pop()
                conn = None if candidate.closed else candidate
            reused = conn is not None
            if conn is None:
                async with asyncio.timeout_at(deadline):  # rare: a timer for a new connection is fine
                    conn = await origin.connect()
            self._watch(conn, deadline)
            try:
                answer = await conn.send(request)
            except HttpError:
                conn.close()
                if reused and attempt == 0:  # the server closed an idle connection: once more, fresh
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            finally:
                self._deadlines.pop(conn, None)
            if conn.keep_alive and not conn.closed and len(origin.idle) < IDLE_PER_ORIGIN:
                origin.idle.append(conn)
            else:
                conn.close()
            return answer
        raise HttpError("unreachable")

    def _watch(self, conn: _Connection, deadline: float) -> None:
        self._deadlines[conn] = deadline
        if self._sweeper is None or self._sweeper.when() > deadline:  # the sweep due first, for this one
            if self._sweeper is not None:
                self._sweeper.cancel()
            loop = asyncio.get_running_loop()
            self._sweeper = loop.call_at(deadline, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        late = [conn for conn, deadline in self._deadlines.items() if deadline <= now]
        for conn in late:
            del self._deadlines[conn]
            conn.time_out()
        if self._deadlines:
            soonest = min(self._deadlines.values())
            self._sweeper = loop.call_at(max(soonest, now + SWEEP_INTERVAL), self._sweep, loop)
        else:
            self._sweeper = None

    async def aclose(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for origin in self._origins.values():
            while origin.idle:
                origin.idle.pop().close()
