"""Requests signed with a push subscription's ``auth`` secret. Pure.

Only the browser and the gateway know that secret (RFC 8291: the push service never sees it), so an
HMAC made with it proves the request comes from the browser holding the subscription, without the
secret ever travelling. A request carries three headers:

    X-Push-Endpoint:  the subscription's endpoint
    X-Push-Time:      the signing time, Unix seconds
    X-Push-Nonce:     16 to 64 URL-safe characters, random per request
    X-Push-Signature: base64url(HMAC-SHA256(k, canonical)), unpadded

where ``k = HMAC-SHA256(auth, "near-push-gateway/v1 request")`` (a key of its own, never the RFC 8291
one) and ``canonical`` is, joined by newlines: ``NPG1``, the method, the path with its query string as
sent, the endpoint, the time, the nonce, and base64url(SHA-256(body)). A signature is good for ``max_age`` seconds
either side of the gateway's clock and, the store remembering it, for one request (the nonce lets a
browser send the same request twice in one second).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass

SCHEME = "NPG1"
KEY_LABEL = b"near-push-gateway/v1 request"
MAX_AGE = 300.0  # seconds a signature is accepted either side of the gateway's clock


class SigningError(Exception):
    """A request that is not signed as it must be: ``code`` is the API's stable code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class SignedHeaders:
    endpoint: str
    time: str
    nonce: str
    signature: str


NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _auth_bytes(auth: str) -> bytes:
    return base64.urlsafe_b64decode(auth + "=" * (-len(auth) % 4))


def canonical_request(method: str, target: str, endpoint: str, time: str, nonce: str, body: bytes) -> bytes:
    """What is signed: ``target`` is the path with its query string, ``endpoint`` the header's value,
    both exactly as sent."""
    body_hash = _b64url(hashlib.sha256(body).digest())
    return "\n".join((SCHEME, method.upper(), target, endpoint, time, nonce, body_hash)).encode()


def sign(auth: str, method: str, target: str, endpoint: str, time: str, nonce: str, body: bytes = b"") -> str:
    """The ``X-Push-Signature`` of a request, as a browser computes it (tests and tools use this)."""
    key = hmac.new(_auth_bytes(auth), KEY_LABEL, hashlib.sha256).digest()
    canonical = canonical_request(method, target, endpoint, time, nonce, body)
    return _b64url(hmac.new(key, canonical, hashlib.sha256).digest())


def parse_time(text: str, now: float, max_age: float = MAX_AGE) -> float:
    """The signing time, if it is a number of seconds within ``max_age`` of ``now``."""
    if not (text.isascii() and text.isdigit()) or len(text) > 12:
        raise SigningError("invalid_signature", "X-Push-Time must be Unix seconds")
    signed_at = float(int(text))
    if abs(now - signed_at) > max_age:
        raise SigningError("signature_expired", f"X-Push-Time is more than {int(max_age)} s from the gateway's clock")
    return signed_at


def verify(auth: str, headers: SignedHeaders, method: str, target: str, body: bytes) -> None:
    """Raise ``SigningError`` unless ``headers.signature`` is this request's, made with ``auth``."""
    if not NONCE.fullmatch(headers.nonce):
        raise SigningError("invalid_signature", "X-Push-Nonce must be 16 to 64 URL-safe characters")
    try:
        expected = sign(auth, method, target, headers.endpoint, headers.time, headers.nonce, body)
    except (ValueError, TypeError):  # a stored secret we cannot read: nobody can sign for it
        raise SigningError("invalid_signature", "this subscription cannot sign requests") from None
    if not hmac.compare_digest(expected.encode(), headers.signature.encode()):
        raise SigningError("invalid_signature", "X-Push-Signature is not this request's, signed by this subscription")
