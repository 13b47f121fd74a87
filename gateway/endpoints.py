"""Push endpoints: the allow-list check, hashing and redaction. Pure functions, no I/O.

The gateway POSTs to URLs that strangers hand it, so an endpoint is accepted only when it
falls under one of the operator's allowed prefixes. A prefix is ``scheme://host[:port]/path``
where the host may start with ``*.`` to admit any subdomain (``https://*.notify.windows.com/``).
Only https is accepted, except plain http to a loopback host that the operator lists
explicitly (local push services and tests).
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from urllib.parse import urlsplit

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
MAX_ENDPOINT_LENGTH = 2048

DEFAULT_ALLOWED_ENDPOINTS = (
    "https://fcm.googleapis.com/",
    "https://updates.push.services.mozilla.com/",
    "https://web.push.apple.com/",
    "https://*.notify.windows.com/",
)


@dataclass(frozen=True)
class EndpointPrefix:
    scheme: str
    host: str  # lower-case; "*.example.com" admits subdomains only
    port: int
    path: str

    def admits(self, scheme: str, host: str, port: int, path: str) -> bool:
        if scheme != self.scheme or port != self.port:
            return False
        if self.host.startswith("*."):
            if not host.endswith(self.host[1:]) or host == self.host[2:]:
                return False
        elif host != self.host:
            return False
        return path.startswith(self.path)


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def parse_prefix(prefix: str) -> EndpointPrefix:
    """Parse one allowed prefix; raise ValueError saying what is wrong with it."""
    parts = urlsplit(prefix)
    scheme = parts.scheme.lower()
    host = (parts.hostname or "").lower()
    if scheme not in ("https", "http") or not host:
        raise ValueError(f"{prefix!r} is not an absolute http(s) URL prefix")
    if scheme == "http" and host not in LOOPBACK_HOSTS:
        raise ValueError(f"{prefix!r}: plain http is allowed only for a loopback host")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise ValueError(f"{prefix!r}: a prefix has no credentials, query or fragment")
    try:
        port = parts.port or _default_port(scheme)
    except ValueError as exc:
        raise ValueError(f"{prefix!r}: bad port") from exc
    return EndpointPrefix(scheme, host, port, parts.path or "/")


def is_allowed(endpoint: str, prefixes: tuple[EndpointPrefix, ...]) -> bool:
    """True when ``endpoint`` is a well-formed URL under one of ``prefixes``."""
    if len(endpoint) > MAX_ENDPOINT_LENGTH or any(c.isspace() for c in endpoint):
        return False
    try:
        parts = urlsplit(endpoint)
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        port = parts.port or _default_port(scheme)
    except ValueError:
        return False
    if not host or parts.username or parts.password or parts.fragment:
        return False
    path = parts.path or "/"
    return any(p.admits(scheme, host, port, path) for p in prefixes)


def endpoint_hash(endpoint: str) -> str:
    """Stable identifier of an endpoint, safe to log and to show operators."""
    return hashlib.sha256(endpoint.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=65536)
def origin_of(endpoint: str) -> str:
    """``scheme://host[:port]`` — the VAPID ``aud`` and the unit of per-service concurrency."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


@functools.lru_cache(maxsize=65536)
def push_host(endpoint: str) -> str:
    """``host[:port]`` of the push service: the label metrics and the dashboard group by."""
    return origin_of(endpoint).split("://", 1)[-1]


def redact(endpoint: str) -> str:
    """What logs may show of an endpoint: its origin and hash, never the capability path."""
    return f"{origin_of(endpoint)}/…#{endpoint_hash(endpoint)[:12]}"
