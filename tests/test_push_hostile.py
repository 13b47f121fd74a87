"""A misbehaving push service beside a good one, through a running gateway: the good one gets every
push, and the gateway keeps answering (its event loop is never frozen by what a push service sends)."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from tests.conftest import row
from tests.fakepush import FakePushService
from tests.test_e2e import subscribe

MIB = 1 << 20
# What the bad push service answers, by the path of the push: each broke the hand-written parser.
BAD = {
    "negative-chunk": [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n-10\r\n"],
    "early-hints-only": [b"HTTP/1.1 103 Early Hints\r\n\r\n"],
    "huge": [b"HTTP/1.1 500 Oops\r\nContent-Length: 1000000000000\r\n\r\n", *[b"x" * MIB] * 40],
    "bad-length": [b"HTTP/1.1 201 Created\r\nContent-Length: 1_0\r\n\r\n0123456789"],
    "two-answers": [b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\nHTTP/1.1 410 Gone\r\nContent-Length: 0\r\n\r\n"],
}


class BadPushService:
    """A raw TCP server on its own event loop thread answering each push as BAD says."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.requests = 0
        self._tasks: set[asyncio.Task[None]] = set()
        ready = threading.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            if task is not None:
                self._tasks.add(task)
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = next(
                        int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
                    )
                    await reader.readexactly(length)
                    self.requests += 1
                    kind = head.split(b" ")[1].decode().strip("/").split("/")[0]
                    for data in BAD[kind]:
                        writer.write(data)
                        await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
                pass
            finally:  # cancelled at close too: no socket left for the garbage collector to find
                writer.transport.abort()

        async def start() -> None:
            self.server = await asyncio.start_server(handle, "127.0.0.1", 0)
            self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
            ready.set()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.run_until_complete(start())
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        ready.wait(5)

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            # A connection accepted just before the close has its handler task created but not yet
            # started (accepting takes a few loop turns). Cancelled then, its `finally` would never run
            # and its socket would be left for the garbage collector: let every such task start first
            # (until no new one has started for 0.2 s: a loaded machine takes longer than a fixed wait).
            started = -1
            for _ in range(25):
                await asyncio.sleep(0.2)
                if len(self._tasks) == started:
                    break
                started = len(self._tasks)
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


def test_a_hostile_push_service_never_stalls_the_gateway_or_the_good_push_service(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    bad = BadPushService()
    try:
        gw = start_gateway(
            push={"allowed_endpoints": [fake_push.url + "/", bad.url + "/"], "request_timeout": 2.0},
            matching={"max_per_endpoint_per_day": 0},
        )
        good = subscribe(gw, fake_push, "bob.near")
        for n, kind in enumerate(BAD):
            sub = fake_push.subscribe()
            body = sub.as_json()
            body["endpoint"] = f"{bad.url}/{kind}/{n}"
            r = gw.post(
                "/subscriptions/create",
                {"accountId": f"victim{n}.near", "gateway": "https://near.social", "subscription": body},
            )
            assert r.status_code == 201, r.text
        events = 20
        for n in range(1, events + 1):
            rows = [row(n * 100 + v, f"victim{v}.near") for v in range(len(BAD))]
            assert gw.ingest([*rows, row(n, "bob.near")]).status_code == 202
        slowest = 0.0
        deadline = time.monotonic() + 20
        while len(fake_push.for_sub(good)) < events and time.monotonic() < deadline:
            started = time.monotonic()
            assert gw.http.get("/healthz").status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.02)
        assert sorted(r.payload["id"] for r in fake_push.for_sub(good)) == list(range(1, events + 1))
        assert bad.requests >= len(BAD)  # the bad service really was asked
        assert slowest < 0.1, f"/healthz took {slowest * 1000:.0f} ms"
        assert gw.query("SELECT count(*) FROM streams WHERE account_id = 'bob.near'")[0][0] == 1
    finally:
        bad.close()
