"""The Web Push boundary: VAPID, encryption, sending, and what push services' answers mean.

- VAPID (RFC 8292): the ES256 key pair lives in one file (PEM, or a raw base64url private key as
  web-push/py-vapid tools print it, so an existing deployment keeps its public key). One signed JWT
  is cached per push-service origin and renewed well before ``exp``.
- Encryption (RFC 8291, aes128gcm) is written here on ``cryptography`` primitives: the same
  algorithm as pywebpush's ``WebPusher.encode``, at a fraction of its Python overhead
  (bench/README.md), checked byte for byte against the RFC 8291 example.
- Sending: gateway.http1 (a small HTTP/1.1 keep-alive client), bounded concurrency per origin, no
  redirects followed (a redirect could lead off the allow-list), every answer classified into a
  ``Verdict``.
"""

from __future__ import annotations

import enum
import functools
import hashlib
import hmac
import json
import os
import ssl
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from gateway.backoff import parse_retry_after
from gateway.endpoints import ENDPOINTS_CACHED, origin_of
from gateway.exceptions import VapidKeyError
from gateway.http1 import KEEP_ALIVE, Http1Client, HttpError, render_headers
from gateway.models import b64url_decode, b64url_encode

JWT_LIFETIME = 12 * 3600  # seconds; RFC 8292 allows at most 24 h
JWT_RENEW_BEFORE = 3600  # renew a cached JWT this long before it expires
KEY_FILE_MODE = 0o600


# --- VAPID keys ---------------------------------------------------------------------------


def generate_key_file(path: Path) -> ec.EllipticCurvePrivateKey:
    """Create a new P-256 key at ``path`` (PEM, mode 0600); fails if the file exists."""
    key = ec.generate_private_key(ec.SECP256R1())
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # beside it: the database, also private
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, KEY_FILE_MODE)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    return key


def read_key_file(path: Path) -> ec.EllipticCurvePrivateKey:
    """Read a VAPID private key: PEM (PKCS8 or SEC1) or a raw 32-byte base64url scalar."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise VapidKeyError(f"cannot read VAPID key file {path}: {exc.strerror}") from exc
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            scalar = b64url_decode(data.decode("ascii").strip())
            if len(scalar) != 32:
                raise ValueError("raw key must be 32 bytes")
            key = ec.derive_private_key(int.from_bytes(scalar, "big"), ec.SECP256R1())
    except (ValueError, TypeError, UnsupportedAlgorithm, UnicodeDecodeError) as exc:
        raise VapidKeyError(f"{path} is not a P-256 private key (PEM or base64url)") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise VapidKeyError(f"{path} is not a P-256 (prime256v1) key")
    return key


def key_file_is_private(path: Path) -> bool:
    return stat.S_IMODE(path.stat().st_mode) & 0o077 == 0


def public_key_b64(key: ec.EllipticCurvePrivateKey) -> str:
    """The applicationServerKey browsers subscribe with: base64url uncompressed point."""
    raw = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return b64url_encode(raw)


class VapidSigner:
    """Signs VAPID JWTs, one cached ``Authorization`` header per push-service origin."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, subject: str, clock: Callable[[], float] = time.time) -> None:
        self._key = key
        self._subject = subject
        self._clock = clock
        self.public_key = public_key_b64(key)
        self._cache: dict[str, tuple[float, str]] = {}

    def authorization(self, origin: str) -> str:
        now = self._clock()
        cached = self._cache.get(origin)
        if cached is not None and cached[0] - JWT_RENEW_BEFORE > now:
            return cached[1]
        exp = int(now) + JWT_LIFETIME
        header = f"vapid t={self._sign({'aud': origin, 'exp': exp, 'sub': self._subject})}, k={self.public_key}"
        self._cache[origin] = (float(exp), header)
        return header

    def _sign(self, claims: dict[str, object]) -> str:
        def part(obj: dict[str, object]) -> str:
            return b64url_encode(json.dumps(obj, separators=(",", ":")).encode())

        signing_input = f"{part({'typ': 'JWT', 'alg': 'ES256'})}.{part(claims)}"
        der = self._key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return f"{signing_input}.{b64url_encode(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


# --- encryption (RFC 8291 + RFC 8188 aes128gcm, one record) -----------------------------------

RECORD_SIZE = 4096
_KEY_INFO = b"WebPush: info\x00"
_CEK_INFO = b"Content-Encoding: aes128gcm\x00\x01"
_NONCE_INFO = b"Content-Encoding: nonce\x00\x01"


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


@functools.lru_cache(maxsize=ENDPOINTS_CACHED)
def _receiver(p256dh: str, auth: str) -> tuple[ec.EllipticCurvePublicKey, bytes, bytes]:
    """A subscription's parsed keys, cached: the same browsers receive push after push."""
    raw = b64url_decode(p256dh)
    return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw), raw, b64url_decode(auth)


def encrypt(
    plaintext: bytes,
    p256dh: str,
    auth: str,
    *,
    sender: ec.EllipticCurvePrivateKey | None = None,
    salt: bytes | None = None,
) -> bytes:
    """aes128gcm body (RFC 8291) for one subscription: a fresh ECDH key pair and salt per message.

    ``sender`` and ``salt`` exist for the RFC's test vector only.
    """
    peer, ua_public, auth_secret = _receiver(p256dh, auth)
    sender = sender or ec.generate_private_key(ec.SECP256R1())
    salt = salt or os.urandom(16)
    as_public = sender.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    ikm = _hmac(_hmac(auth_secret, sender.exchange(ec.ECDH(), peer)), _KEY_INFO + ua_public + as_public + b"\x01")
    prk = _hmac(salt, ikm)
    cek, nonce = _hmac(prk, _CEK_INFO)[:16], _hmac(prk, _NONCE_INFO)[:12]
    header = salt + RECORD_SIZE.to_bytes(4, "big") + bytes([len(as_public)]) + as_public
    return header + AESGCM(cek).encrypt(nonce, plaintext + b"\x02", None)


# --- sending --------------------------------------------------------------------------------


class Verdict(enum.Enum):
    SENT = "sent"  # 2xx
    GONE = "gone"  # 404/410: the subscription no longer exists
    TOO_LARGE = "too_large"  # 413
    RETRY = "retry"  # 429, 5xx, 406 (WNS throttling), timeouts, connection errors
    REJECTED = "rejected"  # 401/403: our VAPID credentials are wrong
    FAILED = "failed"  # any other 4xx: retrying will not help


class PushAnswer(NamedTuple):  # a tuple: one is built per push
    verdict: Verdict
    status: int | None  # None when no HTTP answer came (timeout, connection error)
    retry_after: float | None  # seconds, from the Retry-After header
    detail: str  # short text for logs and dead letters; never the endpoint or keys


def classify(status: int) -> Verdict:
    if 200 <= status < 300:
        return Verdict.SENT
    if status in (404, 410):
        return Verdict.GONE
    if status == 413:
        return Verdict.TOO_LARGE
    if status in (401, 403):
        return Verdict.REJECTED
    if status in (406, 408, 425, 429) or status >= 500:
        return Verdict.RETRY
    return Verdict.FAILED


class SealedPush(NamedTuple):  # a tuple: one is built per push
    """A push ready to go: where, its header block, its encrypted body."""

    endpoint: str
    headers: bytes
    body: bytes


class PushClient:
    """POSTs encrypted messages to push services with per-origin concurrency limits. ``seal`` is the
    CPU work of a push (encryption, headers), ``post`` its I/O: a caller with many pushes can seal a
    batch back to back, keeping the crypto's tables in cache, before any goes out."""

    def __init__(
        self,
        signer: VapidSigner,
        *,
        ttl: int,
        urgency: str,
        timeout: float,
        concurrency_per_origin: int,
        keep_alive: float = KEEP_ALIVE,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._signer = signer
        self._ttl = str(ttl)
        self._urgency = urgency
        self._timeout = timeout
        self._http = Http1Client(concurrency_per_origin=concurrency_per_origin, tls=tls, keep_alive=keep_alive)
        self._rendered: dict[tuple[str, str, str], tuple[str, bytes]] = {}

    async def __aenter__(self) -> PushClient:
        return self

    def _headers(self, origin: str, urgency: str | None = None, ttl: int | None = None) -> bytes:
        """The header block for one push service, urgency and TTL, rendered once per VAPID token."""
        authorization = self._signer.authorization(origin)
        key = (origin, urgency or self._urgency, self._ttl if ttl is None else str(ttl))
        cached = self._rendered.get(key)
        if cached is None or cached[0] != authorization:
            block = render_headers(
                {
                    "Authorization": authorization,
                    "Content-Encoding": "aes128gcm",
                    "Content-Type": "application/octet-stream",
                    "TTL": key[2],
                    "Urgency": key[1],
                }
            )
            cached = self._rendered[key] = (authorization, block)
        return cached[1]

    async def __aexit__(self, *exc: object) -> None:
        await self._http.aclose()

    def seal(
        self,
        endpoint: str,
        p256dh: str,
        auth: str,
        plaintext: bytes,
        urgency: str | None = None,
        ttl: int | None = None,
        topic: str | None = None,
    ) -> SealedPush:
        """One push encrypted for its subscription; ``urgency`` and ``ttl`` override the configured ones
        for it (its type's); ``topic`` (RFC 8030 §5.4) lets it replace a push with the same topic still
        queued."""
        headers = self._headers(origin_of(endpoint), urgency, ttl)
        if topic is not None:  # one per item: appended, not a cache entry each
            headers += b"Topic: " + topic.encode("ascii") + b"\r\n"
        return SealedPush(endpoint, headers, encrypt(plaintext, p256dh, auth))

    async def post(self, push: SealedPush) -> PushAnswer:
        """POST a sealed push and classify the answer."""
        try:
            answer = await self._http.post(push.endpoint, push.headers, push.body, self._timeout)
        except TimeoutError:
            return PushAnswer(Verdict.RETRY, None, None, "timeout")
        except HttpError as exc:
            return PushAnswer(Verdict.RETRY, None, None, f"connection error: {exc}")
        status = answer.status
        verdict = classify(status)
        if verdict is Verdict.SENT:  # the common case needs no detail
            return PushAnswer(verdict, status, None, "")
        retry_after = parse_retry_after(answer.headers.get("retry-after"), time.time())
        text = answer.body[:512].decode("utf-8", "replace")
        # printable only: a reason is logged and stored (PostgreSQL text refuses NUL)
        detail = " ".join("".join(c if c.isprintable() else " " for c in text).split())[:200]
        return PushAnswer(verdict, status, retry_after, f"HTTP {status} {detail}".strip())
