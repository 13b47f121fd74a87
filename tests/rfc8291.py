"""The tests' own Web Push crypto (RFC 8291 / RFC 8188 aes128gcm, RFC 8292 VAPID), written with
``cryptography`` primitives only, independent of pywebpush and http_ece."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def b64d(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64e(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def _hmac(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def raw_public(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


def derive(ua_private: ec.EllipticCurvePrivateKey, as_public: bytes, auth: bytes, salt: bytes) -> tuple[bytes, bytes]:
    """(content encryption key, nonce) per RFC 8291 §3.3–3.4 and RFC 8188 §2.2–2.3."""
    peer = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), as_public)
    ecdh_secret = ua_private.exchange(ec.ECDH(), peer)
    prk_key = _hmac(auth, ecdh_secret)
    key_info = b"WebPush: info\x00" + raw_public(ua_private) + as_public
    ikm = _hmac(prk_key, key_info + b"\x01")
    prk = _hmac(salt, ikm)
    cek = _hmac(prk, b"Content-Encoding: aes128gcm\x00\x01")[:16]
    nonce = _hmac(prk, b"Content-Encoding: nonce\x00\x01")[:12]
    return cek, nonce


class DecryptError(Exception):
    pass


def decrypt(body: bytes, ua_private: ec.EllipticCurvePrivateKey, auth: bytes) -> bytes:
    """Decrypt a single-record aes128gcm Web Push body."""
    if len(body) < 21 + 65 + 17:
        raise DecryptError("body too short")
    salt, rs, idlen = body[:16], int.from_bytes(body[16:20], "big"), body[20]
    if idlen != 65:
        raise DecryptError(f"keyid length {idlen}, expected a 65-byte P-256 key")
    as_public = body[21 : 21 + idlen]
    ciphertext = body[21 + idlen :]
    if len(ciphertext) > rs:
        raise DecryptError("more than one record")
    cek, nonce = derive(ua_private, as_public, auth, salt)
    padded = AESGCM(cek).decrypt(nonce, ciphertext, None)
    unpadded = padded.rstrip(b"\x00")
    if not unpadded or unpadded[-1] != 0x02:
        raise DecryptError("last record must end with delimiter 0x02")
    return unpadded[:-1]


@dataclass
class BrowserKeys:
    """What a browser's PushManager holds for one subscription."""

    private: ec.EllipticCurvePrivateKey
    auth: bytes

    @classmethod
    def new(cls) -> BrowserKeys:
        return cls(ec.generate_private_key(ec.SECP256R1()), os.urandom(16))

    @property
    def p256dh(self) -> str:
        return b64e(raw_public(self.private))

    @property
    def auth_b64(self) -> str:
        return b64e(self.auth)


class VapidError(Exception):
    pass


def verify_vapid(authorization: str, expected_aud: str, now: float) -> dict[str, object]:
    """Check a ``vapid t=JWT, k=KEY`` header; return the claims or raise VapidError."""
    scheme, _, params = authorization.partition(" ")
    if scheme.lower() != "vapid":
        raise VapidError(f"scheme {scheme!r} is not vapid")
    fields = dict(p.strip().split("=", 1) for p in params.split(",") if "=" in p)
    if "t" not in fields or "k" not in fields:
        raise VapidError("missing t= or k=")
    try:
        key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b64d(fields["k"]))
        head_b64, claims_b64, sig_b64 = fields["t"].split(".")
        header = json.loads(b64d(head_b64))
        claims = json.loads(b64d(claims_b64))
        sig = b64d(sig_b64)
    except (ValueError, json.JSONDecodeError) as exc:
        raise VapidError(f"malformed JWT or key: {exc}") from exc
    if header.get("alg") != "ES256":
        raise VapidError("alg is not ES256")
    if len(sig) != 64:
        raise VapidError("ES256 signature must be 64 bytes")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    try:
        key.verify(der, f"{head_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA256()))
    except InvalidSignature as exc:
        raise VapidError("bad signature") from exc
    if claims.get("aud") != expected_aud:
        raise VapidError(f"aud {claims.get('aud')!r} != {expected_aud!r}")
    exp = claims.get("exp")
    if not isinstance(exp, int) or exp <= now or exp > now + 24 * 3600:
        raise VapidError(f"exp {exp!r} not within the next 24 h")
    sub = claims.get("sub")
    if not isinstance(sub, str) or not sub.startswith(("mailto:", "https:")):
        raise VapidError(f"sub {sub!r} is not mailto: or https:")
    claims["_k"] = fields["k"]
    return claims
