"""A fast fake push service for benchmarks, run in its own process.

Answers 201 after a configurable delay (a real push service is across the internet), on HTTP and on
HTTPS with a self-signed certificate (some peers insist on https). A sample of requests is verified
(VAPID JWT) and decrypted (aes128gcm) with the tests' own RFC 8291 code, so a broken sender is caught.
Subscription keys are derived from the subscription id, so senders and this service agree on them
without exchanging anything:  endpoint = <base>/push/<id>.

    GET /stats  -> {"count", "first", "last", "errors", "samples": [[arrival, payload], ...]}
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
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.rfc8291 import b64e, decrypt, raw_public, verify_vapid

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


def _serve(
    http_sock: socket.socket, https_sock: socket.socket, cert: str, key: str, delay: float, sample_rate: float
) -> None:
    state: dict[str, Any] = {"count": 0, "first": None, "last": None, "errors": [], "samples": []}
    rng = random.Random(7)

    async def push(request: web.Request) -> web.Response:
        body = await request.read()
        now = time.time()
        state["count"] += 1
        state["first"] = state["first"] or now
        state["last"] = now
        if rng.random() < sample_rate:
            try:
                origin = f"{request.scheme}://{request.host}"
                verify_vapid(request.headers.get("Authorization", ""), origin, now)
                if "TTL" not in request.headers:
                    raise ValueError("no TTL header")
                private, auth = browser_keys(request.match_info["sub"])
                state["samples"].append([now, json.loads(decrypt(body, private, auth))])
            except Exception as exc:  # a broken sender: recorded, reported by the benchmark
                state["errors"].append(f"{type(exc).__name__}: {exc}"[:200])
        if delay:
            await asyncio.sleep(delay)
        return web.Response(status=201)

    async def stats(_: web.Request) -> web.Response:
        return web.json_response(state)

    async def reset(_: web.Request) -> web.Response:
        state.update(count=0, first=None, last=None, errors=[], samples=[])
        return web.json_response({})

    async def main() -> None:
        app = web.Application()
        app.add_routes([web.post("/push/{sub}", push), web.get("/stats", stats), web.post("/reset", reset)])
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        await web.SockSite(runner, http_sock).start()
        await web.SockSite(runner, https_sock, ssl_context=context).start()
        await asyncio.Event().wait()

    asyncio.run(main())


class FakePushProcess:
    def __init__(self, delay: float = 0.040, sample_rate: float = 0.02) -> None:
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
            target=_serve, args=(socks[0], socks[1], self.cert, key, delay, sample_rate), daemon=True
        )
        self.proc.start()
        for s in socks:
            s.close()
        time.sleep(0.3)

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
