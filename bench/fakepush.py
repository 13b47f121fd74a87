"""A fast fake push service for benchmarks, run in its own process.

Answers 201 after a configurable delay (a real push service is across the internet), on HTTP and on
HTTPS with a self-signed certificate (``cert``: senders trust it to send over TLS). A sample of requests is verified
(VAPID JWT) and decrypted (aes128gcm) with the tests' own RFC 8291 code, so a broken sender is caught.
Subscription keys are derived from the subscription id, so senders and this service agree on them
without exchanging anything:  endpoint = <base>/push/<id>.

    GET /stats  -> {"count", "first", "last", "errors", "samples": [[arrival, payload], ...], "connections"}
    POST /reset
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import multiprocessing
import os
import random
import socket
import ssl
import tempfile
import time
from typing import Any, cast

import httptools
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from bench.gateway_proc import proc_cpu_seconds
from tests.rfc8291 import b64e, decrypt, raw_public, verify_vapid

ALWAYS = "always-"  # subscriptions whose every push is verified and sampled (latency of chosen pushes)
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def browser_keys(sub_id: str) -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """The private key and auth secret of subscription ``sub_id`` (deterministic)."""
    seed = hashlib.sha256(f"bench-browser-{sub_id}".encode()).digest()
    key = ec.derive_private_key(int.from_bytes(seed, "big") % (P256_ORDER - 1) + 1, ec.SECP256R1())
    return key, hashlib.sha256(seed).digest()[:16]


def subscription(base: str, sub_id: str) -> dict[str, Any]:
    key, auth = browser_keys(sub_id)
    return {
        "endpoint": f"{base}/push/{sub_id}",
        "expirationTime": None,
        "keys": {"p256dh": b64e(raw_public(key)), "auth": b64e(auth)},
    }


def self_signed(directory: str) -> tuple[str, str]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(__import__("ipaddress").ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    return cert_path, key_path


class _Service:
    """What the fake does with each request, whichever server reads it."""

    def __init__(self, sample_rate: float) -> None:
        self.state: dict[str, Any] = {
            "count": 0,
            "first": None,
            "last": None,
            "errors": [],
            "samples": [],
            "connections": 0,  # that carried pushes since the last reset (lean server only): on https, handshakes
        }
        self.sample_rate = sample_rate
        self.rng = random.Random(7)
        self.generation = 0

    def push(self, origin: str, sub: str, authorization: str, has_ttl: bool, body: bytes) -> None:
        state, now = self.state, time.time()
        state["count"] += 1
        state["first"] = state["first"] or now
        state["last"] = now
        if sub.startswith(ALWAYS) or self.rng.random() < self.sample_rate:
            try:
                verify_vapid(authorization, origin, now)
                if not has_ttl:
                    raise ValueError("no TTL header")
                private, auth = browser_keys(sub)
                state["samples"].append([now, json.loads(decrypt(body, private, auth))])
            except Exception as exc:  # a broken sender: recorded, reported by the benchmark
                state["errors"].append(f"{type(exc).__name__}: {exc}"[:200])

    def reset(self) -> None:
        self.state.update(count=0, first=None, last=None, errors=[], samples=[], connections=0)
        self.generation += 1


CREATED = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class _LlhttpConnection(asyncio.Protocol):
    """One connection of the lean server: requests read by llhttp (httptools), answers written whole.

    Answers go out in request order: every push answer waits the same ``delay``, and the loop runs
    timers due at the same time in the order they were set."""

    def __init__(self, scheme: str, service: _Service, delay: float) -> None:
        self.scheme, self.service, self.delay = scheme, service, delay
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self.counted = -1  # the service's reset generation this connection was last counted in
        self.on_message_begin()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            self.answer(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n", keep=False)

    # llhttp callbacks
    def on_message_begin(self) -> None:
        self.url = b""
        self.headers: dict[bytes, bytes] = {}
        self.body: list[bytes] = []

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self.headers[name.lower()] = value

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        method, path, keep = self.parser.get_method(), self.url, self.parser.should_keep_alive()
        if method == b"POST" and path.startswith(b"/push/"):
            h = self.headers
            origin = f"{self.scheme}://{h.get(b'host', b'').decode('latin-1')}"
            authorization = h.get(b"authorization", b"").decode("latin-1")
            self.service.push(origin, path[6:].decode("latin-1"), authorization, b"ttl" in h, b"".join(self.body))
            if self.counted != self.service.generation:  # its first push since the last reset
                self.counted = self.service.generation
                self.service.state["connections"] += 1
            if self.delay:
                asyncio.get_running_loop().call_later(self.delay, self.answer, CREATED, keep)
            else:
                self.answer(CREATED, keep)
            return
        if path == b"/stats":
            out = json.dumps(self.service.state).encode()
        elif method == b"POST" and path == b"/reset":
            self.service.reset()
            out = b"{}"
        else:
            self.answer(NOT_FOUND, keep)
            return
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(out)
        self.answer(head + out, keep)

    def answer(self, data: bytes, keep: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(data)
        if not keep:
            self.transport.close()


def _aiohttp_app(service: _Service, delay: float) -> web.Application:
    """The same service on aiohttp's web server (the fake's first server, kept to compare with)."""

    async def push(request: web.Request) -> web.Response:
        body = await request.read()
        origin = f"{request.scheme}://{request.host}"
        authorization = request.headers.get("Authorization", "")
        service.push(origin, request.match_info["sub"], authorization, "TTL" in request.headers, body)
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=201)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(service.state)

    async def reset(_: web.Request) -> web.Response:
        service.reset()
        return web.json_response({})

    app = web.Application()
    app.add_routes([web.post("/push/{sub}", push), web.get("/stats", stats), web.post("/reset", reset)])
    return app


def _serve(
    http_sock: socket.socket,
    https_sock: socket.socket,
    cert: str,
    key: str,
    delay: float,
    sample_rate: float,
    server: str,
    loop: str,
) -> None:
    service = _Service(sample_rate)

    async def main() -> None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        if server == "aiohttp":
            runner = web.AppRunner(_aiohttp_app(service, delay), access_log=None)
            await runner.setup()
            await web.SockSite(runner, http_sock).start()
            await web.SockSite(runner, https_sock, ssl_context=context).start()
        else:
            running = asyncio.get_running_loop()
            await running.create_server(lambda: _LlhttpConnection("http", service, delay), sock=http_sock)
            await running.create_server(
                lambda: _LlhttpConnection("https", service, delay), sock=https_sock, ssl=context
            )
        await asyncio.Event().wait()

    if loop == "uvloop":
        import uvloop

        uvloop.run(main())
    else:
        asyncio.run(main())


class FakePushProcess:
    """The fake in its own process.

    It shares this machine's cores with the senders measured, so the less CPU it takes the better:
    by default a lean server (``server="llhttp"``: an asyncio protocol, requests read by httptools) on
    uvloop. ``server="aiohttp"`` is aiohttp's web server, the fake's first one; ``loop="asyncio"``
    asyncio's own loop. CPU per push during a gateway burst (bench.run 4a prints it; 10,000 pushes, the
    three in turns, median of 3 each, 2-core machine): the first server, aiohttp on asyncio's loop, 176 µs
    over HTTP and 248 µs over TLS; aiohttp on uvloop 152 and 222 µs; the lean server on uvloop 57 and 110 µs.
    """

    def __init__(
        self, delay: float = 0.040, sample_rate: float = 0.02, server: str = "llhttp", loop: str = "uvloop"
    ) -> None:
        if server not in ("llhttp", "aiohttp") or loop not in ("uvloop", "asyncio"):
            raise ValueError(f"server {server!r} or loop {loop!r} unknown")
        self.dir = tempfile.mkdtemp(prefix="fakepush-")
        self.cert, key = self_signed(self.dir)
        socks = []
        for _ in range(2):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", 0))
            s.listen(4096)
            socks.append(s)
        self.http = f"http://127.0.0.1:{socks[0].getsockname()[1]}"
        self.https = f"https://127.0.0.1:{socks[1].getsockname()[1]}"
        self.proc = multiprocessing.get_context("fork").Process(
            target=_serve, args=(socks[0], socks[1], self.cert, key, delay, sample_rate, server, loop), daemon=True
        )
        self.proc.start()
        for s in socks:
            s.close()
        time.sleep(0.3)

    def cpu(self) -> float:
        """CPU seconds the fake has used (utime + stime, from /proc)."""
        assert self.proc.pid is not None
        return proc_cpu_seconds(self.proc.pid)

    def stats(self) -> dict[str, Any]:
        import urllib.request

        with urllib.request.urlopen(f"{self.http}/stats", timeout=30) as r:
            result: dict[str, Any] = json.loads(r.read())
            return result

    def reset(self) -> None:
        import urllib.request

        urllib.request.urlopen(urllib.request.Request(f"{self.http}/reset", method="POST"), timeout=30).read()

    def wait_count(self, n: int, timeout: float = 600) -> dict[str, Any]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            s = self.stats()
            if s["count"] >= n:
                return s
            time.sleep(0.1)
        raise TimeoutError(f"only {self.stats()['count']} of {n} pushes arrived")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.join(5)
