"""The dispatcher's HTTP/1.1 client against a raw local server that answers exactly as scripted."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.http1 import Http1Client, HttpError

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


Reply = Callable[[bytes, int], Awaitable[bytes | None]]  # (request, n-th on this connection) -> bytes or None=close


async def serve(reply: Reply, tls: ssl.SSLContext | None = None) -> tuple[asyncio.Server, str, dict[str, Any]]:
    stats: dict[str, Any] = {"connections": 0, "requests": [], "writers": [], "tasks": []}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        stats["connections"] += 1
        stats["writers"].append(writer)
        current = asyncio.current_task()
        if current is not None:
            stats["tasks"].append(current)
        n = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(
                    next(
                        line.split(b":")[1]
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    )
                )
                request = head + await reader.readexactly(length)
                stats["requests"].append(request)
                answer = await reply(request, n)
                n += 1
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if answer.startswith(b"HTTP/1.0") or b"Connection: close" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    port = server.sockets[0].getsockname()[1]
    return server, f"{'https' if tls else 'http'}://127.0.0.1:{port}", stats


async def stop(server: asyncio.Server, stats: dict[str, Any]) -> None:
    """Close the listener and every connection it accepted."""
    server.close()
    for writer in stats["writers"]:
        writer.close()
    await asyncio.wait(stats["tasks"], timeout=6)
    await server.wait_closed()


def fixed(answer: bytes) -> Reply:
    async def reply(request: bytes, n: int) -> bytes | None:
        return answer

    return reply


async def test_keeps_the_connection_alive_and_sends_the_request_as_given() -> None:
    server, url, stats = await serve(fixed(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"))
    client = Http1Client(concurrency_per_origin=4)
    for _ in range(3):
        answer = await client.post(f"{url}/push/abc?x=1", {"TTL": "60", "Urgency": "high"}, b"body", 5)
        assert answer.status == 201 and answer.body == b""
    assert stats["connections"] == 1
    first = stats["requests"][0]
    assert first.startswith(b"POST /push/abc?x=1 HTTP/1.1\r\n") and b"\r\nTTL: 60\r\n" in first
    assert first.endswith(b"\r\n\r\nbody") and b"Content-Length: 4" in first
    await client.aclose()
    await stop(server, stats)


async def test_reads_chunked_and_close_delimited_bodies() -> None:
    chunked = b"HTTP/1.1 400 Bad\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
    server, url, stats = await serve(fixed(chunked))
    client = Http1Client(concurrency_per_origin=4)
    answer = await client.post(f"{url}/p", {}, b"", 5)
    assert (answer.status, answer.body) == (400, b"hello world")
    await stop(server, stats)

    async def close_delimited(request: bytes, n: int) -> bytes | None:
        return b"HTTP/1.0 410 Gone\r\nRetry-After: 7\r\n\r\nsubscription expired"

    server, url, stats = await serve(close_delimited)  # closes after writing: the body ends with the connection
    answer = await client.post(f"{url}/p", {}, b"", 5)
    assert (answer.status, answer.headers["retry-after"], answer.body) == (410, "7", b"subscription expired")
    await client.aclose()
    await stop(server, stats)


async def test_a_stale_idle_connection_is_replaced_once() -> None:
    async def one_per_connection(request: bytes, n: int) -> bytes | None:
        return b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n" if n == 0 else None

    server, url, stats = await serve(one_per_connection)
    client = Http1Client(concurrency_per_origin=4)
    assert (await client.post(f"{url}/p", {}, b"a", 5)).status == 201
    assert (await client.post(f"{url}/p", {}, b"b", 5)).status == 201  # the kept connection was dead
    assert stats["connections"] == 2
    await client.aclose()
    await stop(server, stats)


async def test_malformed_answers_and_timeouts_raise() -> None:
    server, url, stats = await serve(fixed(b"SMTP 220 hello\r\n\r\n"))
    client = Http1Client(concurrency_per_origin=4)
    with pytest.raises(HttpError, match="malformed answer"):
        await client.post(f"{url}/p", {}, b"", 5)
    await stop(server, stats)

    async def slow(request: bytes, n: int) -> bytes | None:
        await asyncio.sleep(1)
        return None

    server, url, stats = await serve(slow)
    with pytest.raises(TimeoutError):
        await client.post(f"{url}/p", {}, b"", 0.2)
    await stop(server, stats)
    with pytest.raises(HttpError, match="cannot connect"):
        await client.post("http://127.0.0.1:9/p", {}, b"", 2)
    await client.aclose()


async def test_each_request_times_out_at_its_own_deadline() -> None:
    """Deadlines are swept, not timed one by one: a short one set after a long one still fires on time."""

    async def reply(request: bytes, n: int) -> bytes | None:
        await asyncio.sleep(float(request.split(b" ")[1].decode().strip("/")))
        return b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"

    server, url, stats = await serve(reply)
    client = Http1Client(concurrency_per_origin=8)
    loop = asyncio.get_running_loop()

    async def timed(delay: float, timeout: float) -> tuple[str, float]:
        start = loop.time()
        try:
            answer = await client.post(f"{url}/{delay}", {}, b"", timeout)
            result = str(answer.status)
        except TimeoutError:
            result = "timeout"
        return result, loop.time() - start

    slow = asyncio.create_task(timed(2, 1.5))  # its deadline is the one first scheduled
    await asyncio.sleep(0.05)
    late, fast = await asyncio.gather(timed(2, 0.3), timed(0.05, 1.5))
    assert late[0] == "timeout" and 0.25 <= late[1] < 1.0, late
    assert fast[0] == "201"
    assert (await slow)[0] == "timeout"
    answered = await client.post(f"{url}/0", {}, b"", 2)
    assert answered.status == 201
    assert stats["connections"] == 3  # the fast one's connection again: a timed-out one is never reused
    await client.aclose()
    await stop(server, stats)


async def test_requests_in_flight_per_origin_are_capped_and_cancelled_waiters_free_nothing() -> None:
    now = {"in_flight": 0, "most": 0}

    async def reply(request: bytes, n: int) -> bytes | None:
        now["in_flight"] += 1
        now["most"] = max(now["most"], now["in_flight"])
        await asyncio.sleep(0.1)
        now["in_flight"] -= 1
        return b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"

    server, url, stats = await serve(reply)
    client = Http1Client(concurrency_per_origin=2)
    tasks = [asyncio.create_task(client.post(f"{url}/{i}", {}, b"", 5)) for i in range(6)]
    await asyncio.sleep(0.03)  # two in flight, four waiting
    tasks[3].cancel()
    tasks[4].cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    assert [isinstance(d, asyncio.CancelledError) for d in done] == [False, False, False, True, True, False]
    assert now["most"] == 2
    order = [r.split(b" ")[1] for r in stats["requests"]]
    assert order == [b"/0", b"/1", b"/2", b"/5"]  # first come, first served
    now["most"] = 0
    await asyncio.gather(*(client.post(f"{url}/again", {}, b"", 5) for _ in range(2)))
    assert now["most"] == 2  # both slots are still there
    await client.aclose()
    await stop(server, stats)


def hang_up(raws: list[socket.socket]) -> None:
    """Close the server's side of every connection accepted so far."""
    for raw in raws:
        with contextlib.suppress(OSError):
            raw.shutdown(socket.SHUT_RDWR)
        raw.close()
    raws.clear()


async def test_a_burst_opens_a_few_connections_at_once_and_reuses_them() -> None:
    """Forty requests at once to a push service slow to finish its TLS handshakes: at most
    CONNECTING_PER_ORIGIN handshakes are started at a time, and the rest reuse the connections given back."""
    from bench.fakepush import self_signed
    from gateway.http1 import CONNECTING_PER_ORIGIN

    cert, key = self_signed(tempfile.mkdtemp())
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    accepted: list[float] = []
    raws: list[socket.socket] = []
    listener = socket.create_server(("127.0.0.1", 0))

    def serve_one(raw: socket.socket) -> None:  # a thread per connection: its handshake is slow
        time.sleep(0.3)
        try:
            with server_ctx.wrap_socket(raw, server_side=True) as conn:
                data = b""
                while True:
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            return
                        data += chunk
                    head, _, data = data.partition(b"\r\n\r\n")
                    length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                    while len(data) < length:
                        data += conn.recv(65536)
                    data = data[length:]
                    conn.sendall(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
        except OSError:
            pass

    def accept() -> None:
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:  # closed: the test is over
                return
            accepted.append(time.monotonic())
            raws.append(raw)
            threading.Thread(target=serve_one, args=(raw,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    url = f"https://127.0.0.1:{listener.getsockname()[1]}"
    client = Http1Client(concurrency_per_origin=64, tls=ssl.create_default_context(cafile=cert))
    late = await asyncio.gather(*(client.post(f"{url}/{i}", {}, b"x", 0.1) for i in range(20)), return_exceptions=True)
    assert all(isinstance(e, TimeoutError) for e in late)  # waiting for a turn or opening: no turn is lost
    hang_up(raws)  # the handshakes given up: the client's transports see the end and close
    await asyncio.sleep(0.3)
    accepted.clear()
    started = time.monotonic()
    answers = await asyncio.gather(*(client.post(f"{url}/{i}", {}, b"x", 10) for i in range(40)))
    assert [a.status for a in answers] == [201] * 40
    assert len([t for t in accepted if t < started + 0.25]) <= CONNECTING_PER_ORIGIN  # the first wave
    assert len(accepted) <= 2 * CONNECTING_PER_ORIGIN  # the others were served by those given back
    await client.aclose()
    listener.close()
    hang_up(raws)
    await asyncio.sleep(0.3)  # the client's transports close before the loop ends (else: a ResourceWarning)


async def test_tls_is_verified() -> None:
    from bench.fakepush import self_signed

    cert, key = self_signed(tempfile.mkdtemp())
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server, url, stats = await serve(fixed(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"), tls=server_ctx)
    trusting = Http1Client(concurrency_per_origin=2, tls=ssl.create_default_context(cafile=cert))
    assert (await trusting.post(f"{url}/p", {}, b"x", 5)).status == 201
    default = Http1Client(concurrency_per_origin=2)  # the system's CAs: a self-signed certificate is refused
    with pytest.raises(HttpError, match="cannot connect"):
        await default.post(f"{url}/p", {}, b"x", 5)
    await trusting.aclose()
    await default.aclose()
    await stop(server, stats)


async def test_the_host_header_of_an_ipv6_endpoint_keeps_its_brackets() -> None:
    from gateway.http1 import _Origin

    assert _Origin("https", "::1", 8443, 1, None).host_header == "[::1]:8443"
    assert _Origin("https", "2001:db8::1", 443, 1, None).host_header == "[2001:db8::1]"
    assert _Origin("http", "127.0.0.1", 80, 1, None).host_header == "127.0.0.1"
    assert _Origin("http", "127.0.0.1", 443, 1, None).host_header == "127.0.0.1:443"  # not http's default
    client = Http1Client(concurrency_per_origin=1)
    _, start = client._route("http://[::1]:8080/p")
    assert start.startswith(b"POST /p HTTP/1.1\r\nHost: [::1]:8080\r\n")
    await client.aclose()
