"""NEP-413 signed messages: proof that a request comes from an account's key holder. Pure.

A wallet's ``signMessage({message, recipient, nonce})`` signs sha256 of the Borsh encoding of
``(tag = 2**31 + 413, message, nonce[32], recipient, callbackUrl?)`` with an ed25519 access key.
For a subscription the ``message`` is JSON naming what is authorised:

    {"action": "subscribe", "accountId": "alice.near", "gateway": "https://near.social",
     "endpoint": "https://fcm.googleapis.com/fcm/send/...", "timestamp": 1764000000000}

so a signature cannot be reused for another endpoint, gateway or account, nor after it expires.
Whether the key belongs to the account is asked of NEAR RPC (``gateway.nearrpc``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from gateway.endpoints import InvalidEndpoint, canonical_endpoint

NEP413_TAG = 2**31 + 413
B58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


class SignatureError(Exception):
    """The signed message is missing, malformed, wrong, expired or for something else."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def b58decode(text: str) -> bytes:
    number = 0
    for char in text:
        digit = B58_ALPHABET.find(char)
        if digit < 0:
            raise ValueError(f"not base58: {char!r}")
        number = number * 58 + digit
    body = number.to_bytes((number.bit_length() + 7) // 8, "big")
    return b"\x00" * (len(text) - len(text.lstrip("1"))) + body


def b58encode(data: bytes) -> str:
    number = int.from_bytes(data, "big")
    out = ""
    while number:
        number, digit = divmod(number, 58)
        out = B58_ALPHABET[digit] + out
    return "1" * (len(data) - len(data.lstrip(b"\x00"))) + out


def _borsh_string(value: str) -> bytes:
    raw = value.encode("utf-8")
    return len(raw).to_bytes(4, "little") + raw


def signed_digest(message: str, nonce: bytes, recipient: str, callback_url: str | None = None) -> bytes:
    """What the key signs: sha256 of the Borsh-encoded NEP-413 payload with its tag."""
    callback = b"\x01" + _borsh_string(callback_url) if callback_url is not None else b"\x00"
    data = NEP413_TAG.to_bytes(4, "little") + _borsh_string(message) + nonce + _borsh_string(recipient) + callback
    return hashlib.sha256(data).digest()


def parse_public_key(text: str) -> bytes:
    """``ed25519:<base58>`` to the 32 raw bytes."""
    curve, _, encoded = text.partition(":")
    try:
        raw = b58decode(encoded)
    except ValueError:
        raw = b""
    if curve != "ed25519" or len(raw) != 32:
        raise SignatureError("invalid_signature", "signed.publicKey must be ed25519:<base58 of 32 bytes>")
    return raw


def _b64(value: str, field: str, size: int) -> bytes:
    try:
        raw = base64.b64decode(
            value + "=" * (-len(value) % 4), altchars=b"-_" if "-" in value or "_" in value else None
        )
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != size:
        raise SignatureError("invalid_signature", f"signed.{field} must be {size} bytes, base64")
    return raw


@dataclass(frozen=True)
class SignedRequest:
    """The ``signed`` member of a request body, as the wallet returned it."""

    publicKey: str
    signature: str  # base64 (standard or url-safe) of 64 bytes
    nonce: str  # base64 of the 32 bytes passed to signMessage
    recipient: str
    message: str
    callbackUrl: str | None = None


def verify_subscription(
    signed: SignedRequest,
    *,
    action: str,
    account_id: str,
    gateway: str,
    endpoint: str,
    recipient: str,
    now: float,
    max_age: float,
) -> float:
    """Check the signature and that the message authorises exactly this request, recently.

    Returns the message's timestamp (epoch seconds). Raises ``SignatureError``.
    """
    public_key = parse_public_key(signed.publicKey)
    signature = _b64(signed.signature, "signature", 64)
    nonce = _b64(signed.nonce, "nonce", 32)
    if signed.recipient != recipient:
        raise SignatureError("invalid_signature", f"signed.recipient must be {recipient!r}")
    digest = signed_digest(signed.message, nonce, signed.recipient, signed.callbackUrl)
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, digest)
    except InvalidSignature as exc:
        raise SignatureError("invalid_signature", "the signature does not match the message and key") from exc
    try:
        claims = json.loads(signed.message)
    except ValueError:
        claims = None
    if not isinstance(claims, dict):
        raise SignatureError("invalid_signature", "signed.message must be a JSON object")
    expected = {"action": action, "accountId": account_id, "gateway": gateway, "endpoint": endpoint}
    for name, value in expected.items():
        signed_value = claims.get(name)
        if name == "gateway" and isinstance(signed_value, str):
            signed_value = signed_value.rstrip("/")
        if name == "endpoint" and isinstance(signed_value, str):  # the request's is canonical already
            try:
                signed_value = canonical_endpoint(signed_value)
            except InvalidEndpoint:
                signed_value = None
        if signed_value != value:
            raise SignatureError("signature_mismatch", f"the signed message's {name} does not match the request")
    timestamp = claims.get("timestamp")
    if not isinstance(timestamp, int) or isinstance(timestamp, bool):  # NaN would never expire
        raise SignatureError("invalid_signature", "signed.message needs an integer timestamp (milliseconds)")
    seconds = float(timestamp) / 1000
    if abs(now - seconds) > max_age:
        raise SignatureError(
            "signature_expired", f"the signed message is older than {max_age:.0f} s (or in the future)"
        )
    return seconds
