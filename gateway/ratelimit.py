"""Token buckets keyed by client (IP, frontend origin), bounded in memory. Pure: time is passed in."""

from __future__ import annotations

import hmac
import ipaddress
import math
from collections import OrderedDict
from collections.abc import Iterable


class RateLimiter:
    """``burst`` requests at once per key, refilled at ``rate`` per second.

    At most ``max_keys`` buckets are kept; the least recently used is dropped first, which only
    ever forgives a client (a fresh bucket is full), so memory stays bounded under address spraying.
    """

    def __init__(self, rate: float, burst: int, max_keys: int) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: str, now: float) -> float:
        """Spend one token; 0.0 when allowed, else the seconds until a token is available."""
        if not self.enabled:
            return 0.0
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= 1.0:
            tokens -= 1.0
            wait = 0.0
        else:
            wait = (1.0 - tokens) / self.rate
        self._buckets[key] = (tokens, now)
        if len(self._buckets) > self.max_keys:
            self._buckets.popitem(last=False)
        return wait

    def __len__(self) -> int:
        return len(self._buckets)


def client_bucket(address: str) -> str:
    """The per-IP bucket of a client address: an IPv4 address itself (also when IPv4-mapped,
    ``::ffff:1.2.3.4``), the /64 of an IPv6 address (one host owns a whole /64, so keying by the
    full address would let it rotate through 2**64 buckets); an address that does not parse, as is."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((int(ip) >> 64 << 64, 64)))  # drops any %scope too
    return str(ip)


def keyed_frontend(given: str | None, frontends: Iterable[tuple[str, str]]) -> str | None:
    """The frontend (``origin``) whose key ``given`` is, among ``(origin, key)`` pairs; None when
    no key was given or it is nobody's. Every key is compared, each in constant time."""
    if given is None:
        return None
    found = None
    for origin, key in frontends:
        if key and hmac.compare_digest(given.encode(), key.encode()) and found is None:
            found = origin
    return found


def retry_after_header(wait: float) -> str:
    """Whole seconds for ``Retry-After`` (at least 1: clients treat 0 as "now")."""
    return str(max(1, math.ceil(wait)))
