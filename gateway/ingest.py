"""The store as watchers see it: events in, cursor moved, dispatcher woken, in one call."""

from __future__ import annotations

from collections.abc import Callable

from gateway.models import Event, MatchPolicy
from gateway.store.base import Store


class StoreSink:
    """Implements watchers.base.EventSink on top of the Store."""

    def __init__(self, store: Store, policy: MatchPolicy, wake: Callable[[], None]) -> None:
        self._store = store
        self._policy = policy
        self._wake = wake

    async def cursor(self, key: str) -> str | None:
        return await self._store.get_cursor(key)

    async def deliver(self, events: list[Event], cursor_key: str, cursor: str | None) -> int:
        result = await self._store.ingest(events, self._policy, cursor=None if cursor is None else (cursor_key, cursor))
        if result.deliveries:
            self._wake()
        return result.deliveries

    async def accounts(self) -> list[str]:
        return await self._store.accounts()

    async def accounts_updated_since(self, since: float) -> list[str]:
        return await self._store.accounts_updated_since(since)
