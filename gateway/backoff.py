"""Exponential backoff with jitter, shared by push retries and watcher reconnects. Pure."""

from __future__ import annotations

import random
from collections.abc import Iterator


def backoff_delays(initial: float, maximum: float, rng: random.Random) -> Iterator[float]:
    """Delays with full jitter in [d/2, d]: d = initial, 2·initial, 4·initial, … capped at maximum."""
    delay = initial
    while True:
        yield rng.uniform(delay / 2, delay)
        delay = min(delay * 2, maximum)
