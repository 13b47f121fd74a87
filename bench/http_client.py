"""Client CPU per push-sized POST: gateway.http1 vs aiohttp vs httpx, same server, same run.

The dispatcher's HTTP client is a performance decision (design.md): this measures the client's
own CPU time (process_time of the client process) for N POSTs of a 4 KiB body at a fixed
concurrency against a minimal HTTP/1.1 server running in a separate process.

    .venv/bin/python -m bench.http_client [N] [CONCURRENCY]
"""

from __future__ import annotations

import asyncio
import multiprocessing
import socket
import sys
import time

BODY = b"x" * 4096


def serve(sock: socket.socket) -> None:
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
        server = await asyncio.start_server(handle, sock=sock)
        await server.serve_forever()

    asyncio.run(main())


async def run_aiohttp(url: str, n: int, concurrency: int) -> None:
    import aiohttp

    sem = asyncio.Semaphore(concurrency)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:

        async def one() -> None:
            async with sem, session.post(url, data=BODY, headers={"TTL": "60"}) as r:
                await r.read()

        await asyncio.gather(*(one() for _ in range(n)))


async def run_http1(url: str, n: int, concurrency: int) -> None:
    from gateway.http1 import Http1Client

    client = Http1Client(concurrency_per_origin=concurrency)

    async def one() -> None:
        await client.post(url, {"TTL": "60"}, BODY, 10)

    await asyncio.gather(*(one() for _ in range(n)))
    await client.aclose()


async def run_httpx(url: str, n: int, concurrency: int) -> None:
    import httpx

    sem = asyncio.Semaphore(concurrency)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits) as client:

        async def one() -> None:
            async with sem:
                await client.post(url, content=BODY, headers={"TTL": "60"})

        await asyncio.gather(*(one() for _ in range(n)))


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 5000
    concurrency = int(sys.argv[2]) if len(sys.argv) > 2 else 64
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/push"
    server = multiprocessing.Process(target=serve, args=(sock,), daemon=True)
    server.start()
    print(f"{n} POSTs of {len(BODY)} bytes, concurrency {concurrency}")
    print(f"{'client':8} {'wall s':>8} {'req/s':>8} {'client CPU µs/req':>18}")
    results = {}
    for name, fn in (("http1", run_http1), ("aiohttp", run_aiohttp), ("httpx", run_httpx)):
        asyncio.run(fn(url, 200, concurrency))  # warm up
        cpu0, wall0 = time.process_time(), time.perf_counter()
        asyncio.run(fn(url, n, concurrency))
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
        results[name] = cpu / n
        print(f"{name:8} {wall:8.2f} {n / wall:8.0f} {cpu / n * 1e6:18.1f}")
    print(f"aiohttp ÷ http1 client CPU per request: {results['aiohttp'] / results['http1']:.1f}×")
    print(f"httpx ÷ http1 client CPU per request: {results['httpx'] / results['http1']:.1f}×")
    server.terminate()


if __name__ == "__main__":
    main()
