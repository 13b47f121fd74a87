"""Client CPU per push-sized POST: gateway.http1 vs aiohttp vs httpx, same server, same run.

The dispatcher's HTTP client is a performance decision (design.md): this measures the client's
own CPU time (process_time of the client process) for N POSTs of a 4 KiB body at a fixed
concurrency against a minimal HTTP/1.1 server running in a separate process, over plain HTTP and
over TLS (the server's certificate self-signed, bench.fakepush.self_signed; each client given an
ssl context that trusts it). Each client first sends 200 POSTs as a warm-up, which opens its
CONCURRENCY connections (and makes their TLS handshakes); the N measured POSTs reuse them: the
steady state of a sender, record work only.

    .venv/bin/python -m bench.http_client [N] [CONCURRENCY]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import shutil
import socket
import ssl
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine
from typing import Any

from bench.fakepush import self_signed

BODY = b"x" * 4096
WARM_UP = 200


class Measure:
    """Process CPU and wall time of the requests after the warm-up."""

    def __init__(self) -> None:
        self.cpu = self.wall = 0.0

    def start(self) -> None:
        self.cpu, self.wall = time.process_time(), time.perf_counter()

    def stop(self) -> tuple[float, float]:
        return time.process_time() - self.cpu, time.perf_counter() - self.wall


def serve(sock: socket.socket, tls_sock: socket.socket, cert: str, key: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                await reader.readexactly(length)
                writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        plain = await asyncio.start_server(handle, sock=sock)
        await asyncio.start_server(handle, sock=tls_sock, ssl=context)
        await plain.serve_forever()

    import uvloop  # the server's CPU is not measured, but a faster server lets the clients run at full speed

    uvloop.run(main())


async def run_aiohttp(url: str, n: int, concurrency: int, tls: ssl.SSLContext) -> tuple[float, float]:
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency, ssl=tls)) as session:

        async def one() -> None:
            async with sem, session.post(url, data=BODY, headers={"TTL": "60"}) as r:
                await r.read()

        await asyncio.gather(*(one() for _ in range(WARM_UP)))
        measure = Measure()
        measure.start()
        await asyncio.gather(*(one() for _ in range(n)))
        return measure.stop()


async def run_http1(url: str, n: int, concurrency: int, tls: ssl.SSLContext) -> tuple[float, float]:
    from gateway.http1 import Http1Client

    client = Http1Client(concurrency_per_origin=concurrency, tls=tls)

    async def one() -> None:
        await client.post(url, {"TTL": "60"}, BODY, 10)

    await asyncio.gather(*(one() for _ in range(WARM_UP)))
    measure = Measure()
    measure.start()
    await asyncio.gather(*(one() for _ in range(n)))
    took = measure.stop()
    await client.aclose()
    return took


async def run_httpx(url: str, n: int, concurrency: int, tls: ssl.SSLContext) -> tuple[float, float]:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, verify=tls) as client:

        async def one() -> None:
            async with sem:
                await client.post(url, content=BODY, headers={"TTL": "60"})

        await asyncio.gather(*(one() for _ in range(WARM_UP)))
        measure = Measure()
        measure.start()
        await asyncio.gather(*(one() for _ in range(n)))
        return measure.stop()


Client = Callable[[str, int, int, ssl.SSLContext], Coroutine[Any, Any, tuple[float, float]]]
CLIENTS: tuple[tuple[str, Client], ...] = (("http1", run_http1), ("aiohttp", run_aiohttp), ("httpx", run_httpx))


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    directory = tempfile.mkdtemp(prefix="bench-http-client-")
    cert, key = self_signed(directory)
    trusting = ssl.create_default_context(cafile=cert)
    socks = []
    for _ in range(2):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        socks.append(sock)
    urls = {
        "http": f"http://127.0.0.1:{socks[0].getsockname()[1]}/push",
        "https": f"https://127.0.0.1:{socks[1].getsockname()[1]}/push",
    }
    server = multiprocessing.Process(target=serve, args=(socks[0], socks[1], cert, key), daemon=True)
    server.start()
    print(f"{n} POSTs of {len(BODY)} bytes, concurrency {concurrency}, over http and https")
    print(f"{'client':8} {'scheme':6} {'wall s':>8} {'req/s':>8} {'client CPU µs/req':>18}")
    results: dict[tuple[str, str], float] = {}
    for name, fn in CLIENTS:
        for scheme, url in urls.items():
            cpu, wall = asyncio.run(fn(url, n, concurrency, trusting))
            results[(name, scheme)] = cpu / n
            print(f"{name:8} {scheme:6} {wall:8.2f} {n / wall:8.0f} {cpu / n * 1e6:18.1f}")
    print()
    print("| client | http µs/req | https µs/req | https − http |")
    print("| --- | ---: | ---: | ---: |")
    for name, _ in CLIENTS:
        plain, tls = results[(name, "http")] * 1e6, results[(name, "https")] * 1e6
        print(f"| {name} | {plain:.1f} | {tls:.1f} | {tls - plain:+.1f} |")
    for scheme in urls:
        base = results[("http1", scheme)]
        print(
            f"{scheme}: aiohttp ÷ http1 client CPU per request {results[('aiohttp', scheme)] / base:.1f}×, "
            f"httpx ÷ http1 {results[('httpx', scheme)] / base:.1f}×"
        )
    server.terminate()
    shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
