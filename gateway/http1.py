"""A small HTTP/1.1 client for the dispatcher's one job: POST a small body, read a small answer.

Per request it costs a fraction of a general client (bench/README.md): requests are written as one
pre-rendered buffer on a kept-alive connection. Answers are read by llhttp (httptools, the parser
uvicorn uses), never by hand: whatever a push service sends, an exchange ends with an answer or an
HttpError, and a connection goes back to the pool only after a complete, well-framed final answer.
1xx answers are skipped; heads and bodies are bounded while they are read; bytes beyond an answer,
or on an idle connection, close that connection; idle connections expire after ``keep_alive``
seconds. Connections are pooled per origin, with a cap on how many are open and on how many are being
opened at once (a burst reuses the first ones rather than starting a handshake each); TLS uses the default
verified context. Redirects are never followed. Deadlines are checked by one periodic sweep rather
than a timer per request.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from typing import NamedTuple, cast
from urllib.parse import urlsplit

import httptools

MAX_HEAD_BYTES = 64 * 1024  # all heads of one exchange together (1xx answers included)
MAX_BODY_BYTES = 64 * 1024  # push-service answers are tiny; the rest of a larger one is not read
IDLE_PER_ORIGIN = 256
ROUTES_KEPT = 8192  # parsed endpoint URLs remembered (65,536 of them took 20 MB)
SWEEP_INTERVAL = 0.05  # least seconds between two sweeps of in-flight requests for missed deadlines
KEEP_ALIVE = 15.0  # seconds an idle connection is reused: below the usual server idle timeouts (30-75 s)
# New connections opened at once per origin: a burst of requests waits for these or for one coming back
# idle, rather than starting a TLS handshake each (512 at once took 1.2 s to first answers, bench.run 4b).
CONNECTING_PER_ORIGIN = 8


class HttpError(Exception):
    """No answer: the connection failed, closed, or the answer was malformed."""


class Answer(NamedTuple):
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class _Connection(asyncio.Protocol):
    """One kept-alive connection; llhttp's callbacks (``on_*``) build the answer of the exchange."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()  # once: on Python 3.11 each lookup costs a getpid()
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.keep_alive = False  # true only after a complete, well-framed final answer
        self.idle_since = 0.0
        self._waiter: asyncio.Future[Answer] | None = None
        self._parser: httptools.HttpResponseParser | None = None
        self._reset()

    def _reset(self) -> None:
        self._status = 0
        self._headers: dict[str, str] = {}
        self._body = bytearray()
        self._head_bytes = 0
        self.answered_any = False  # a byte of an answer came (a request then is never sent again)
        self._in_head = True  # the final answer's head is not complete yet
        self._done = False  # the final answer is complete

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's transports are not its subclasses

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done() or self._parser is None:
            self.close()  # bytes on an idle connection, or beyond the answer: it cannot be trusted
            return
        self.answered_any = True
        try:
            while data and self._in_head:  # feed a head no further than its bound
                allow = MAX_HEAD_BYTES - self._head_bytes
                if allow <= 0:
                    raise HttpError("answer head too large")
                piece, data = data[:allow], data[allow:]
                self._head_bytes += len(piece)
                self._parser.feed_data(piece)
            if data and not waiter.done():
                self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(HttpError("the push service switched protocols"))
        except httptools.HttpParserError as exc:
            self._fail(HttpError(f"malformed answer: {exc}"))
        except HttpError as exc:
            self._fail(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.keep_alive = False
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if not self._in_head and self._delimited_by_close():
            self._finish()  # no length, not chunked: the body ends with the connection
        else:
            waiter.set_exception(HttpError(f"connection closed: {exc or 'by the server'}"))

    # llhttp callbacks
    def on_message_begin(self) -> None:
        if self._done:  # a second answer to one request: never pool this connection
            self.keep_alive = False
            raise HttpError("bytes beyond the answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_head:
            self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if 100 <= status < 200:  # informational (RFC 9110 §15.2): the final answer is still to come
            self._headers = {}
            return
        self._status, self._in_head = status, False

    def on_body(self, body: bytes) -> None:
        if self._in_head or self._done:
            return
        self._body += body
        if len(self._body) > MAX_BODY_BYTES:  # enough to classify it: answer now, read no more
            del self._body[MAX_BODY_BYTES:]
            self._finish(keep_alive=False)
            self.close()

    def on_message_complete(self) -> None:
        if self._in_head or self._done:  # an informational answer ended (or one beyond the answer)
            return
        assert self._parser is not None
        self._finish(keep_alive=self._parser.should_keep_alive())

    def _finish(self, keep_alive: bool = False) -> None:
        self._done = True
        self.keep_alive = keep_alive and not self.closed
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(Answer(self._status, self._headers, bytes(self._body)))

    def _fail(self, exc: Exception) -> None:
        self.keep_alive = False
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(exc)
        self.close()

    def _delimited_by_close(self) -> bool:
        return (
            "content-length" not in self._headers
            and "chunked" not in self._headers.get("transfer-encoding", "").lower()
        )

    # one exchange
    def send(self, request: bytes) -> asyncio.Future[Answer]:
        assert self.transport is not None
        self._reset()
        self.keep_alive = False
        self._parser = httptools.HttpResponseParser(self)
        self._waiter = self._loop.create_future()
        self.transport.write(request)
        return self._waiter

    def close(self) -> None:
        self.closed = True
        self.keep_alive = False
        if self.transport is not None:
            self.transport.close()

    def time_out(self) -> None:
        """The answer is late: fail the exchange and drop the connection (its answer may still come)."""
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(TimeoutError("no answer before the deadline"))
        self.close()


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
        shown = f"[{host}]" if ":" in host else host  # an IPv6 literal keeps its brackets (RFC 9110 §7.2)
        self.host_header = shown if port == (443 if scheme == "https" else 80) else f"{shown}:{port}"
        self.slots = _Slots(limit)
        self.idle: deque[_Connection] = deque()
        self.opening = 0  # connections being opened now, at most CONNECTING_PER_ORIGIN
        self.waiting: deque[asyncio.Future[_Connection | None]] = deque()  # for a connection, or a turn to open one

    def take_idle(self, expired: float) -> _Connection | None:
        """The newest open idle connection, after closing those idle since before ``expired``."""
        while self.idle and self.idle[0].idle_since < expired:  # oldest first: never read from again
            self.idle.popleft().close()
        while self.idle:
            candidate = self.idle.pop()
            if not candidate.closed:
                return candidate
        return None

    def give_back(self, conn: _Connection, now: float) -> bool:
        """A connection whose exchange ended well: to a request waiting for one, else to the idle pool
        (False: the pool is full)."""
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return True
        if len(self.idle) >= IDLE_PER_ORIGIN:
            return False
        conn.idle_since = now
        self.idle.append(conn)
        return True

    async def take_or_connect(self) -> tuple[_Connection, bool]:
        """A new connection, or, when CONNECTING_PER_ORIGIN are being opened already, whichever comes
        first: a connection given back, or a turn to open one; and whether it was reused."""
        if self.opening < CONNECTING_PER_ORIGIN:
            self.opening += 1
        else:
            waiter: asyncio.Future[_Connection | None] = asyncio.get_running_loop().create_future()
            self.waiting.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():  # handed something just as we were cancelled
                    late = waiter.result()
                    if late is None:
                        self._opened()
                    elif not self.give_back(late, asyncio.get_running_loop().time()):
                        late.close()
                elif waiter in self.waiting:
                    self.waiting.remove(waiter)
                raise
            if handed is not None:
                return handed, True
        try:  # our turn to open one (counted in ``opening``)
            return await self.connect(), False
        finally:
            self._opened()

    def _opened(self) -> None:
        """A turn to open a connection ends: it passes to the next request waiting, if any."""
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.opening -= 1

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
    def __init__(
        self, *, concurrency_per_origin: int, tls: ssl.SSLContext | None = None, keep_alive: float = KEEP_ALIVE
    ) -> None:
        self._limit = concurrency_per_origin
        self._keep_alive = keep_alive
        self._tls = tls or ssl.create_default_context()
        self._origins: dict[str, _Origin] = {}
        self._routes: dict[str, tuple[_Origin, bytes]] = {}  # url -> origin, rendered request line and Host
        self._deadlines: dict[_Connection, float] = {}  # in-flight exchanges, by loop time
        self._sweeper: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

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
        loop = self._loop
        if loop is None:  # the loop of the first request is the client's: looked up once (a getpid() each)
            loop = self._loop = asyncio.get_running_loop()
        await origin.slots.acquire()
        try:
            return await self._exchange(loop, origin, request, loop.time() + timeout)
        finally:
            origin.slots.release()

    async def _exchange(
        self, loop: asyncio.AbstractEventLoop, origin: _Origin, request: bytes, deadline: float
    ) -> Answer:
        for attempt in range(2):
            conn = origin.take_idle(loop.time() - self._keep_alive)
            reused = conn is not None
            if conn is None:
                async with asyncio.timeout_at(deadline):  # rare: a timer for a new connection is fine
                    conn, reused = await origin.take_or_connect()
            self._watch(conn, deadline)
            try:
                answer = await conn.send(request)
            except HttpError:
                conn.close()
                if reused and attempt == 0 and not conn.answered_any:  # closed while idle: once more, fresh
                    continue
                raise
            except BaseException:
                conn.close()
                raise
            finally:
                self._deadlines.pop(conn, None)
            if not (conn.keep_alive and not conn.closed and origin.give_back(conn, loop.time())):
                conn.close()
            return answer
        raise HttpError("unreachable")

    def _watch(self, conn: _Connection, deadline: float) -> None:
        self._deadlines[conn] = deadline
        if self._sweeper is None or self._sweeper.when() > deadline:  # the sweep due first, for this one
            if self._sweeper is not None:
                self._sweeper.cancel()
            loop = self._loop or asyncio.get_running_loop()
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
