"""Re-read a block range of a watcher's source into the store (``gateway replay``).

The replay runs the watcher in this process with its own sink: events go through the normal
ingest, whose deduplication drops what was already stored, so nothing is pushed twice; the live
cursor is left where it is. It stops at the target block, or when the source has been quiet for
``idle_exit`` seconds after the last progress.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import anyio

from gateway.config import Settings
from gateway.exceptions import ConfigError
from gateway.ingest import Ingested, ingest_setting_aside_refused
from gateway.matcher import MatchPolicy, policy_from
from gateway.models import Event
from gateway.store import open_store
from gateway.store.base import Store
from watchers import build_watcher

# Kinds whose cursor is a block height the source can start from.
REPLAYABLE = frozenset({"neardata", "queryapi", "websocket-json", "http-poll-json"})


@dataclass
class ReplayProgress:
    start: int
    target: int
    position: int
    events: int = 0
    new_events: int = 0
    deliveries: int = 0

    @property
    def fraction(self) -> float:
        span = max(1, self.target - self.start)
        return min(1.0, max(0.0, (self.position - self.start) / span))


class ReplaySink:
    """An EventSink that ingests without moving the live cursor and tracks the replay's progress."""

    def __init__(self, store: Store, policy: MatchPolicy, progress: ReplayProgress, on_progress: Callable[[], None]):
        self._store = store
        self._policy = policy
        self.progress = progress
        self._on_progress = on_progress
        self.reached = anyio.Event()
        self.last_progress = time.monotonic()

    async def cursor(self, key: str) -> str | None:
        return str(self.progress.start - 1)  # sources resume after the cursor

    async def deliver(self, events: list[Event], cursor_key: str, cursor: str | None) -> Ingested:
        ingested = await ingest_setting_aside_refused(self._store, events, self._policy)
        result = ingested.result
        p = self.progress
        p.events += result.events
        p.new_events += result.new_events
        p.deliveries += result.deliveries
        if cursor is not None and cursor.lstrip("-").isdigit():
            p.position = max(p.position, int(cursor))
            self.last_progress = time.monotonic()
        self._on_progress()
        if p.position >= p.target:
            self.reached.set()
        return ingested

    async def accounts(self) -> list[str]:
        return await self._store.accounts()

    async def accounts_updated_since(self, since: float) -> list[str]:
        return await self._store.accounts_updated_since(since)


async def replay(
    settings: Settings,
    watcher_name: str,
    from_block: int,
    to_block: int | None,
    on_progress: Callable[[ReplayProgress], None],
    idle_exit: float = 10.0,
) -> ReplayProgress:
    found = [w for w in settings.watchers if w.name == watcher_name]
    if not found:
        names = ", ".join(w.name for w in settings.watchers) or "none configured"
        raise ConfigError(f"no watcher named {watcher_name!r} (watchers: {names})")
    watcher_settings = found[0]
    if watcher_settings.kind not in REPLAYABLE:
        raise ConfigError(
            f"watcher {watcher_name!r} is {watcher_settings.kind!r}: its source cannot start from a block "
            f"(replayable kinds: {', '.join(sorted(REPLAYABLE))})"
        )
    store = open_store(settings.storage.url, **settings.storage.open_options())
    await store.open()
    try:
        if to_block is None:
            stored = await store.get_cursor(watcher_name)
            if stored is None or not stored.isdigit():
                raise ConfigError(f"watcher {watcher_name!r} has no stored block cursor: give --to-block")
            to_block = int(stored)
        progress = ReplayProgress(start=from_block, target=to_block, position=from_block)
        sink = ReplaySink(store, policy_from(settings.matching, settings.push), progress, lambda: on_progress(progress))
        watcher = build_watcher(watcher_settings, sink)
        on_progress(progress)
        async with anyio.create_task_group() as tg:
            tg.start_soon(watcher.run)
            while not sink.reached.is_set() and time.monotonic() - sink.last_progress < idle_exit:
                with anyio.move_on_after(0.2):
                    await sink.reached.wait()
            tg.cancel_scope.cancel()
        return progress
    finally:
        await store.close()


def progress_bar(p: ReplayProgress, width: int = 30) -> str:
    filled = round(p.fraction * width)
    return (
        f"[{'#' * filled}{'.' * (width - filled)}] {p.fraction * 100:5.1f}%  block {p.position}/{p.target}  "
        f"events {p.events} (new {p.new_events})  deliveries {p.deliveries}"
    )
