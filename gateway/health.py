"""What /healthz and /metrics say of the store: counts read at most every HEALTH_MAX_AGE seconds,
with one read in flight however many callers ask. Both routes are unauthenticated and exempt from
rate limits (probes and scrapers must get through), so a burst of them must cost the store one query,
not one each: the store's connection is the one the dispatcher claims on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

HEALTH_MAX_AGE = 1.0  # seconds a count is served before the store is asked again


class CachedCounts:
    def __init__(
        self,
        fetch: Callable[[], Awaitable[dict[str, int]]],
        max_age: float = HEALTH_MAX_AGE,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._max_age = max_age
        self._clock = clock
        self._value: dict[str, int] | None = None
        self._at = 0.0
        self._in_flight: asyncio.Future[dict[str, int]] | None = None

    async def get(self) -> dict[str, int]:
        """The counts, fresh within ``max_age``; a store failure raises (and is not remembered)."""
        if self._value is not None and self._clock() - self._at < self._max_age:
            return self._value
        if self._in_flight is None:
            self._in_flight = asyncio.ensure_future(self._refresh())
        return dict(await asyncio.shield(self._in_flight))

    def invalidate(self) -> None:
        """This process changed the streams: the next caller reads the store again."""
        self._value = None

    async def _refresh(self) -> dict[str, int]:
        try:
            value = await self._fetch()
            self._value, self._at = value, self._clock()
            return value
        finally:
            self._in_flight = None
