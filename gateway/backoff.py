"""Exponential backoff with jitter, shared by push retries and watcher reconnects, and the
Retry-After header that overrides it. Pure."""

from __future__ import annotations

import random
from collections.abc import Iterator
from email.utils import parsedate_to_datetime


def backoff_delays(initial: float, maximum: float, rng: random.Random) -> Iterator[float]:
    """Delays with full jitter in [d/2, d]: d = initial, 2·initial, 4·initial, … capped at maximum."""
    delay = initial
    while True:
        yield rng.uniform(delay / 2, delay)
        delay = min(delay * 2, maximum)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or HTTP-date); None for anything else."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():  # str.isdigit() is also true of "²", which float() refuses
        return float(value)
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - now)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
