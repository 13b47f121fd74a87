"""Token buckets keyed by client (IP, frontend origin), bounded in memory. Pure: time is passed in."""

from __future__ import annotations

import math
from collections import OrderedDict


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


def retry_after_header(wait: float) -> str:
    """Whole seconds for ``Retry-After`` (at least 1: clients treat 0 as "now")."""
    return str(max(1, math.ceil(wait)))
