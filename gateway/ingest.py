"""The store as watchers and POST /events see it: events in, cursor moved, dispatcher woken.

A batch the store refuses (``StoreRefused``: a value it can never hold) is split: each event is
stored on its own, the refused ones are reported, and the cursor moves past them all, so one
poison row never holds back the good rows beside it or wedges its source.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from gateway.exceptions import StoreRefused
from gateway.matcher import MatchPolicy
from gateway.models import Event, IngestResult
from gateway.store.base import Lease, Store


@dataclass
class Ingested:
    """An ingest's result, and the events the store refused (by index in the batch) with why."""

    result: IngestResult
    refused: dict[int, str] = field(default_factory=dict)


async def ingest_setting_aside_refused(
    store: Store,
    events: list[Event],
    policy: MatchPolicy,
    cursor: tuple[str, str] | None = None,
    lease: Lease | None = None,
) -> Ingested:
    """Ingest ``events`` and move ``cursor`` in one transaction; if the store refuses the batch, store
    each event alone (ingest is idempotent per event key) and move the cursor after the last."""
    try:
        return Ingested(await store.ingest(events, policy, cursor=cursor, lease=lease))
    except StoreRefused:
        pass  # find which
    total, refused = IngestResult(), {}
    for i, event in enumerate(events):
        try:
            one = await store.ingest([event], policy, lease=lease)
        except StoreRefused as exc:
            refused[i] = str(exc)
            continue
        total.new_events += one.new_events
        total.deliveries += one.deliveries
        total.folded += one.folded
        for reason, count in one.skipped.items():
            total.skipped[reason] = total.skipped.get(reason, 0) + count
    total.events = len(events) - len(refused)
    if cursor is not None:
        await store.ingest([], policy, cursor=cursor, lease=lease)
    return Ingested(total, refused)


class StoreSink:
    """Implements watchers.base.EventSink on top of the Store, for one watcher: while it leads,
    ``lease`` is its leadership and every write commits only while the leadership holds."""

    def __init__(self, store: Store, policy: MatchPolicy, wake: Callable[[], None]) -> None:
        self._store = store
        self._policy = policy
        self._wake = wake
        self.lease: Lease | None = None

    async def cursor(self, key: str) -> str | None:
        return await self._store.get_cursor(key)

    async def deliver(self, events: list[Event], cursor_key: str, cursor: str | None) -> Ingested:
        ingested = await ingest_setting_aside_refused(
            self._store, events, self._policy, None if cursor is None else (cursor_key, cursor), self.lease
        )
        if ingested.result.deliveries:
            self._wake()
        return ingested

    async def accounts(self) -> list[str]:
        return await self._store.accounts()

    async def accounts_updated_since(self, since: float) -> list[str]:
        return await self._store.accounts_updated_since(since)
