"""The dispatcher's HTTP client against hostile or buggy push services (shared/security-review r01-r05,
r12, r14): a scripted raw TCP server on port 0, on asyncio and on uvloop. Every exchange ends with an
answer or an error before its deadline, nothing escapes a protocol callback, and a connection is
pooled only after a complete, well-framed answer."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.http1 import MAX_BODY_BYTES, Http1Client, HttpError, _Connection

pytestmark = pytest.mark.anyio

Steps = list[tuple[float, bytes | None]]  # (delay, bytes to write, or None: close)
Script = Callable[[bytes, int], Steps | None]  # (request, n-th on its connection) -> steps; None: close
OK = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
MIB = 1 << 20


@pytest.fixture(
    params=[pytest.param("asyncio", id="asyncio"), pytest.param(("asyncio", {"use_uvloop": True}), id="uvloop")]
)
def anyio_backend(request: pytest.FixtureRequest) -> Any:
    return request.param


class RawServer:
    """Reads each request (head + Content-Length body) and writes what the script says."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.requests: list[bytes] = []
        self.connections = 0
        self._tasks: list[asyncio.Task[Any]] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.append(writer)
        task = asyncio.current_task()
        if task is not None:
            self._tasks.append(task)
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                lengths = [int(h.split(b":")[1]) for h in lines if h.lower().startswith(b"content-length")]
                length = lengths[0] if lengths else 0
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                steps = self.script(request, n)
                n += 1
                if steps is None:
                    break
                for delay, data in steps:
                    if delay:
                        await asyncio.sleep(delay)
                    if data is None:
                        writer.close()
                        return
                    writer.write(data)
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        writer.close()

    def paths(self) -> list[str]:
        return [r.split(b" ")[1].decode() for r in self.requests]


def path_of(request: bytes) -> str:
    return request.split(b" ")[1].decode()


class Ticker:
    """Counts event-loop turns every 20 ms: a frozen loop stops it."""

    def __init__(self) -> None:
        self.ticks = 0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0.02)
            self.ticks += 1


async def test_a_negative_chunk_size_fails_the_exchange_at_once_and_never_freezes_the_loop() -> None:
    answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-10\r\n"
    async with RawServer(lambda req, n: [(0, answer)]) as server:
        ticker = Ticker()
        task = asyncio.create_task(ticker.run())
        client = Http1Client(concurrency_per_origin=2)
        started = time.monotonic()
        with pytest.raises(HttpError, match="malformed answer"):
            await client.post(f"{server.url}/p", {}, b"x", 5.0)
        assert time.monotonic() - started < 1.0  # not the 5 s deadline: at once
        await asyncio.sleep(0.2)
        assert ticker.ticks >= 5  # the loop kept turning
        task.cancel()
        await client.aclose()


async def test_informational_answers_are_skipped_and_never_shift_answers_onto_other_requests() -> None:
    def script(req: bytes, n: int) -> Steps:
        path = path_of(req)
        if path == "/push/A":  # alive: 103 Early Hints, a 100, then 201 a little later
            return [
                (0, b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n"),
                (0.1, OK),
            ]
        if path == "/push/B":  # expired
            return [(0.05, b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n")]
        return [(0, OK)]

    async with RawServer(script) as server:
        client = Http1Client(concurrency_per_origin=1)
        got = [(await client.post(f"{server.url}/push/{sub}", {}, b"x", 2)).status for sub in "ABC"]
        assert got == [201, 410, 201]
        assert server.connections == 1  # each answer was whole: the connection stayed good
        await client.aclose()


MALFORMED = {
    "cl-abc": b"HTTP/1.1 500 X\r\nContent-Length: abc\r\n\r\n",
    "cl-neg": b"HTTP/1.1 201 X\r\nContent-Length: -3\r\n\r\nabcdef",
    "cl-dup": b"HTTP/1.1 201 X\r\nContent-Length: 0\r\nContent-Length: 4\r\n\r\nabcd",
    "cl-under": b"HTTP/1.1 201 X\r\nContent-Length: 1_0\r\n\r\n0123456789",
    "cl-suffix": b"HTTP/1.1 201 X\r\nContent-Length: 12abc\r\n\r\n",
    "status": b"HTTP/1.1 2\xb201 X\r\nContent-Length: 0\r\n\r\n",
    "nocolon": b"HTTP/1.1 201 X\r\nthis is not a header\r\nContent-Length: 0\r\n\r\n",
    "not-http": b"SMTP 220 hello\r\n\r\n",
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_malformed_framing_fails_that_exchange_at_once_with_nothing_escaping_a_callback(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with RawServer(lambda req, n: [(0, MALFORMED[case])]) as server:
        client = Http1Client(concurrency_per_origin=1)
        started = time.monotonic()
        with caplog.at_level(logging.ERROR, logger="asyncio"), pytest.raises(HttpError, match="malformed answer"):
            await client.post(f"{server.url}/p", {}, b"", 3.0)
        assert time.monotonic() - started < 1.0
        await asyncio.sleep(0.05)
        assert [r for r in caplog.records if r.name == "asyncio"] == []  # no "protocol callback failed"
        assert not any(o.idle for o in client._origins.values())
        await client.aclose()


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 400 Bad\r\nContent-Length: 1000000000000\r\n\r\n",  # announces 1 TB
        b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\nffffffffff\r\n",  # one huge chunk
        b"HTTP/1.0 400 Bad\r\n\r\n",  # delimited by the close
    ],
    ids=["content-length", "chunked", "close-delimited"],
)
async def test_a_huge_answer_is_answered_from_its_first_64_kib_and_the_rest_is_not_read(head: bytes) -> None:
    junk = b"x" * MIB
    async with RawServer(lambda req, n: [(0, head), *[(0, junk)] * 150]) as server:
        client = Http1Client(concurrency_per_origin=1)
        started = time.monotonic()
        answer = await client.post(f"{server.url}/p", {}, b"", 5.0)
        assert answer.status == 400 and len(answer.body) == MAX_BODY_BYTES
        assert time.monotonic() - started < 2.0
        assert not any(o.idle for o in client._origins.values())  # never pooled mid-body
        await client.aclose()


async def test_a_huge_head_fails_without_being_buffered() -> None:
    head = b"HTTP/1.1 201 Created\r\nX-Junk: " + b"a" * (4 * MIB) + b"\r\n\r\n"
    async with RawServer(lambda req, n: [(0, head)]) as server:
        client = Http1Client(concurrency_per_origin=1)
        with pytest.raises(HttpError, match="head too large"):
            await client.post(f"{server.url}/p", {}, b"", 5.0)
        await client.aclose()


async def test_endless_informational_answers_hit_the_head_bound() -> None:
    async with RawServer(lambda req, n: [(0, b"HTTP/1.1 103 Early Hints\r\n\r\n" * 10_000)]) as server:
        client = Http1Client(concurrency_per_origin=1)
        with pytest.raises(HttpError, match="head too large"):
            await client.post(f"{server.url}/p", {}, b"", 5.0)
        await client.aclose()


async def test_an_answer_over_the_body_limit_is_never_pooled_and_the_next_push_is_sent_once() -> None:
    chunk = b"400\r\n" + b"e" * 1024 + b"\r\n"

    def script(req: bytes, n: int) -> Steps:
        if path_of(req) == "/first":
            return [
                (0, b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n" + chunk * 70),
                (0.2, chunk * 30 + b"0\r\n\r\n"),
            ]
        return [(0, OK)]

    async with RawServer(script) as server:
        client = Http1Client(concurrency_per_origin=1)
        assert (await client.post(f"{server.url}/first", {}, b"", 5)).status == 500
        assert (await client.post(f"{server.url}/second", {}, b"", 5)).status == 201
        await asyncio.sleep(0.3)
        assert server.paths() == ["/first", "/second"]  # the second push went out once
        await client.aclose()


async def test_bytes_on_an_idle_connection_or_beyond_an_answer_close_it() -> None:
    def script(req: bytes, n: int) -> Steps:
        if path_of(req) == "/beyond":  # two answers to one request, in one write
            return [(0, OK + b"HTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n")]
        if path_of(req) == "/idle":  # a good answer, then garbage once the connection is idle
            return [(0, OK), (0.05, b"x" * 1000)]
        return [(0, OK)]

    async with RawServer(script) as server:
        client = Http1Client(concurrency_per_origin=1)
        assert (await client.post(f"{server.url}/beyond", {}, b"", 3)).status == 201
        assert (await client.post(f"{server.url}/next", {}, b"", 3)).status == 201  # not the stray 410
        assert server.connections == 2
        assert (await client.post(f"{server.url}/idle", {}, b"", 3)).status == 201
        await asyncio.sleep(0.2)
        assert all(c.closed for o in client._origins.values() for c in o.idle)  # the garbage closed it
        assert (await client.post(f"{server.url}/next", {}, b"", 3)).status == 201
        assert server.connections == 3  # /idle went on the second connection; the garbage retired it
        await client.aclose()


async def test_idle_connections_expire_before_a_dead_one_costs_a_timeout() -> None:
    # first connection: one answer, then a black hole; later connections answer at once
    async with RawServer(lambda req, n: [(0, OK)] if n == 0 else [(3600, OK)]) as server:
        client = Http1Client(concurrency_per_origin=1, keep_alive=0.3)
        assert (await client.post(f"{server.url}/p", {}, b"", 3)).status == 201
        await asyncio.sleep(0.5)
        started = time.monotonic()
        assert (await client.post(f"{server.url}/p", {}, b"", 3)).status == 201
        assert time.monotonic() - started < 1.0 and server.connections == 2
        await client.aclose()


async def test_a_trickled_chunked_answer_costs_cpu_linear_in_its_bytes() -> None:
    pieces = 4000

    def script(req: bytes, n: int) -> Steps:
        if path_of(req) == "/chunked":
            return [
                (0, b"HTTP/1.1 500 Oops\r\nTransfer-Encoding: chunked\r\n\r\n"),
                *[(0.0002, b"1\r\nx\r\n")] * pieces,
                (0, b"0\r\n\r\n"),
            ]
        return [(0, b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % pieces), *[(0.0002, b"x")] * pieces]

    async with RawServer(script) as server:
        client = Http1Client(concurrency_per_origin=1)
        cpu = {}
        for path in ("/sized", "/chunked"):
            before = time.thread_time()  # client and server share this thread: both pay per write alike
            answer = await client.post(f"{server.url}{path}", {}, b"", 20)
            cpu[path] = time.thread_time() - before
            assert answer.status == 500 and len(answer.body) == pieces
        # quadratic re-parsing made the chunked answer cost many times the sized one (r04: 24x)
        assert cpu["/chunked"] < 3 * cpu["/sized"] + 0.05, cpu
        await client.aclose()


class _Transport:
    def __init__(self) -> None:
        self.closed = False

    def write(self, data: bytes) -> None:
        pass

    def close(self) -> None:
        self.closed = True


@settings(max_examples=400, deadline=1000, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.one_of(
            st.binary(max_size=200),
            st.sampled_from(
                [
                    OK,
                    b"HTTP/1.1 103 x\r\n\r\n",
                    b"\r\n",
                    b"0\r\n\r\n",
                    b"Content-Length: 5\r\n",
                    b"Transfer-Encoding: chunked\r\n",
                    b"HTTP/1.1 200 OK\r\n",
                    b"-1\r\n",
                    b"ffffffff\r\n",
                ]
            ),
        ),
        max_size=30,
    )
)
def test_any_byte_stream_ends_the_exchange_with_an_answer_or_an_error(chunks: list[bytes]) -> None:
    async def run() -> None:
        conn = _Connection()
        transport = _Transport()
        conn.connection_made(transport)  # type: ignore[arg-type]
        waiter = conn.send(b"POST / HTTP/1.1\r\n\r\n")
        for chunk in chunks:
            conn.data_received(chunk)  # never raises
        conn.connection_lost(None)
        assert waiter.done()
        if waiter.exception() is None:
            answer = waiter.result()
            assert 200 <= answer.status <= 999 and len(answer.body) <= MAX_BODY_BYTES
        assert not conn.keep_alive  # the connection is gone: never pooled

    asyncio.run(run())
