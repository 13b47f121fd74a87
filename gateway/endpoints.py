"""Push endpoints: one canonical form, the allow-list check, hashing and redaction. Pure, no I/O.

Every endpoint is put in its canonical form once, at the boundary (``canonical_endpoint``): scheme
and host lower-cased, the host checked as IDNA, the default port dropped, no userinfo. That one
spelling is what is allowed or not, stored, hashed, pooled, signed for (the VAPID ``aud``) and
counted in metrics, so ``https://FCM.googleapis.com:0443/…`` cannot open its own pools or labels.

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
# Dot segments, also percent-encoded: they would walk out of an allowed path prefix once a server
# or proxy normalises them.
DOT_SEGMENTS = frozenset({".", "..", "%2e", "%2e%2e", ".%2e", "%2e."})
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


# Entries of each per-endpoint cache below (and webpush's parsed keys): the endpoints pushed to again
# and again. A fan-out wider than this gains nothing from more (an LRU cycled through misses every
# time), and 65,536 entries made a sending process grow by 60 MB during one (bench.fanout).
ENDPOINTS_CACHED = 8192


class InvalidEndpoint(ValueError):
    """Why an endpoint has no canonical form (the API answers 400 invalid_endpoint with it)."""


@functools.lru_cache(maxsize=ENDPOINTS_CACHED)
def canonical_endpoint(endpoint: str) -> str:
    """The one spelling of ``endpoint``; InvalidEndpoint when it is not a plain absolute http(s) URL."""
    if len(endpoint) > MAX_ENDPOINT_LENGTH:
        raise InvalidEndpoint(f"longer than {MAX_ENDPOINT_LENGTH} characters")
    if not endpoint.isascii() or any(not 0x21 <= ord(c) <= 0x7E for c in endpoint):
        raise InvalidEndpoint("non-ASCII, space or control characters")
    if "\\" in endpoint:
        raise InvalidEndpoint("a backslash")
    parts = urlsplit(endpoint)
    scheme = parts.scheme.lower()
    if scheme not in ("https", "http") or not parts.netloc:
        raise InvalidEndpoint("not an absolute http(s) URL")
    if "@" in parts.netloc:
        raise InvalidEndpoint("userinfo (user:password@) in the URL")
    if parts.fragment or endpoint.endswith("#"):
        raise InvalidEndpoint("a fragment")
    host = (parts.hostname or "").lower()
    if not host:
        raise InvalidEndpoint("no host")
    if ":" in host:  # an IPv6 literal
        shown_host = f"[{host}]"
    else:
        try:
            shown_host = host.encode("idna").decode("ascii")
        except UnicodeError as exc:
            raise InvalidEndpoint("the host is not a valid domain name") from exc
    after_host = parts.netloc.rpartition("]")[2]  # past an IPv6 literal's brackets
    port_text = after_host.rpartition(":")[2] if ":" in after_host else ""
    if port_text and (not port_text.isdigit() or (len(port_text) > 1 and port_text[0] == "0")):
        raise InvalidEndpoint("a port with leading zeros or other characters")
    try:
        port = parts.port
    except ValueError as exc:
        raise InvalidEndpoint("a bad port") from exc
    netloc = shown_host if port in (None, _default_port(scheme)) else f"{shown_host}:{port}"
    path = parts.path or "/"
    if any(segment.lower() in DOT_SEGMENTS for segment in path.split("/")):
        raise InvalidEndpoint("dot segments (. or ..) in the path")
    if "%2f" in path.lower() or "%5c" in path.lower():
        raise InvalidEndpoint("an encoded slash or backslash in the path")
    return f"{scheme}://{netloc}{path}" + (f"?{parts.query}" if parts.query else "")


def is_allowed(endpoint: str, prefixes: tuple[EndpointPrefix, ...]) -> bool:
    """True when ``endpoint`` has a canonical form, and that form is under one of ``prefixes``."""
    try:
        endpoint = canonical_endpoint(endpoint)
        parts = urlsplit(endpoint)
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").lower()
        port = parts.port or _default_port(scheme)
    except ValueError:  # InvalidEndpoint included
        return False
    if not host:
        return False
    path = parts.path or "/"
    return any(p.admits(scheme, host, port, path) for p in prefixes)


def endpoint_hash(endpoint: str) -> str:
    """Stable identifier of an endpoint, safe to log and to show operators."""
    return hashlib.sha256(endpoint.encode()).hexdigest()[:32]


@functools.lru_cache(maxsize=ENDPOINTS_CACHED)
def origin_of(endpoint: str) -> str:
    """``scheme://host[:port]`` — the VAPID ``aud`` and the unit of per-service concurrency."""
    parts = urlsplit(endpoint)
    return f"{parts.scheme}://{parts.netloc.rsplit('@', 1)[-1]}"


@functools.lru_cache(maxsize=ENDPOINTS_CACHED)
def push_host(endpoint: str) -> str:
    """``host[:port]`` of the push service: the label metrics and the dashboard group by."""
    return origin_of(endpoint).split("://", 1)[-1]


def redact(endpoint: str) -> str:
    """What logs may show of an endpoint: its origin and hash, never the capability path."""
    return f"{origin_of(endpoint)}/…#{endpoint_hash(endpoint)[:12]}"
