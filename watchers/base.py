"""What every watcher shares: the sink it feeds, its reported state, fault counting, and the
supervisor that reconnects with capped, jittered exponential backoff.

Watchers never touch the store: the service hands them an ``EventSink`` that stores events and
advances the cursor in one transaction.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import anyio

from gateway.backoff import backoff_delays
from gateway.config import WatcherSettingsBase
from gateway.exceptions import StoreUnavailable
from gateway.ingest import Ingested
from gateway.models import Event
from watchers.decode import Decoded, Fault

log = logging.getLogger("watchers")

STABLE_CONNECTION = 30.0  # seconds a connection must live before the backoff starts over
RATE_WINDOW = 60.0  # seconds over which blocks per second is measured
RATE_SAMPLES = 4096  # commit times kept for it (mainnet makes ~100 blocks a minute)
STORE_RETRY_INITIAL = 0.2  # seconds before retrying a delivery the store could not take...
STORE_RETRY_MAX = 5.0  # ...doubling up to this while the store stays unavailable


class EventSink(Protocol):
    async def cursor(self, key: str) -> str | None:
        """The stored cursor for ``key`` (a watcher name, or name@account)."""

    async def deliver(self, events: list[Event], cursor_key: str, cursor: str | None) -> Ingested:
        """Store events and their deliveries and move the cursor, atomically; events the store
        refuses are set aside (reported in the answer) and the cursor still moves past them.
        Raises ``StoreUnavailable`` when nothing could be stored."""

    async def accounts(self) -> list[str]:
        """Accounts that have at least one stream (social-index polls each)."""

    async def accounts_updated_since(self, since: float) -> list[str]:
        """Accounts whose streams were created or refreshed at ``since`` (wall time) or later."""


class WatcherError(Exception):
    """A watcher's session ended for a reason worth a reconnect (server error, timeout, bad state)."""


@dataclass
class WatcherState:
    """What health checks and metrics show about one watcher."""

    name: str
    kind: str
    connected: bool = False
    cursor: str | None = None
    last_event_at: float | None = None  # wall time the newest event was received
    last_frame_at: float | None = None  # wall time anything was last received
    last_block_height: int | None = None
    last_block_time: float | None = None  # chain time of that block, when the source tells it
    events: int = 0
    deliveries: int = 0
    faults: dict[str, int] = field(default_factory=dict)
    reconnects: int = 0
    last_error: str | None = None
    chain_head: int | None = None  # newest final block of the chain, when known (NEAR RPC or the source)
    store_paused: bool = False  # holding a frame or page until the store takes it
    store_pauses: int = 0
    blocks: int = 0  # block watchers: heights committed (skipped heights included)
    skipped_heights: int = 0  # heights at which the chain made no block (or that could not be read)
    _recent_blocks: deque[float] = field(default_factory=lambda: deque(maxlen=RATE_SAMPLES))

    def count_block(self, at: float) -> None:
        self.blocks += 1
        self._recent_blocks.append(at)

    def blocks_per_second(self, now: float) -> float:
        """Blocks committed per second over the last RATE_WINDOW seconds."""
        recent = [t for t in self._recent_blocks if now - t <= RATE_WINDOW]
        return len(recent) / RATE_WINDOW

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        now = time.time() if now is None else now
        lag = None if self.last_block_time is None else max(0.0, now - self.last_block_time)
        silent = None if self.last_frame_at is None else max(0.0, now - self.last_frame_at)
        return {
            "kind": self.kind,
            "connected": self.connected,
            "cursor": self.cursor,
            "last_event_at": self.last_event_at,
            "last_block_height": self.last_block_height,
            "lag_seconds": lag,
            "lag_blocks": (
                max(0, self.chain_head - self.last_block_height)
                if self.chain_head is not None and self.last_block_height is not None
                else None
            ),
            "seconds_since_last_frame": silent,
            "events": self.events,
            "deliveries": self.deliveries,
            "faults": dict(self.faults),
            "reconnects": self.reconnects,
            "store_paused": self.store_paused,
            "store_pauses": self.store_pauses,
            "last_error": self.last_error,
            "blocks": self.blocks,
            "skipped_heights": self.skipped_heights,
            "blocks_per_second": round(self.blocks_per_second(time.monotonic()), 3),
        }


class Watcher:
    """Base of every source kind: state, fault accounting, delivery to the sink, and ``run``, which
    keeps the kind's ``_session`` going under the reconnect supervisor."""

    kind = "watcher"

    def __init__(self, settings: WatcherSettingsBase, sink: EventSink) -> None:
        self.name = settings.name
        self.sink = sink
        self.state = WatcherState(self.name, self.kind)
        self._base_settings = settings
        self._logged_faults: set[str] = set()
        self._progress = False

    async def run(self) -> None:
        s = self._base_settings
        await self.supervise(self._session, s.reconnect_initial_delay, s.reconnect_max_delay)

    async def _session(self) -> None:
        """One connection (or polling run) until it ends; the supervisor starts the next."""
        raise NotImplementedError

    def fault(self, fault: Fault) -> None:
        """Count a fault; log the first of each kind only, so a flood of garbage stays one line."""
        self.state.faults[fault.kind] = self.state.faults.get(fault.kind, 0) + 1
        if fault.kind not in self._logged_faults:
            self._logged_faults.add(fault.kind)
            log.warning(
                "watcher %s skipped input (%s): %s; further %s faults are only counted",
                self.name,
                fault.kind,
                fault.detail,
                fault.kind,
            )

    def server_error(self, messages: list[str]) -> None:
        self.state.faults["server_error"] = self.state.faults.get("server_error", 0) + 1
        self.state.last_error = "; ".join(messages)[:500]
        log.error("watcher %s: the server sent an error: %s", self.name, self.state.last_error)

    async def accept(self, decoded: Decoded, cursor_key: str | None = None, cursor: str | None = None) -> None:
        """Account for one decoded frame/page and hand its events to the sink with the new cursor."""
        now = time.time()
        self.state.last_frame_at = now
        for fault in decoded.faults:
            self.fault(fault)
        if decoded.errors:
            self.server_error(decoded.errors)
        if not decoded.events and cursor is None:
            return
        ingested = await self.deliver_patiently(decoded.events, cursor_key or self.name, cursor)
        self.state.deliveries += ingested.result.deliveries
        for i, why in ingested.refused.items():
            self.fault(Fault("store_refused", f"event {decoded.events[i].key}: {why}"))
        if decoded.events:
            self._progress = True
            self.state.events += len(decoded.events) - len(ingested.refused)
            self.state.last_event_at = now
        if decoded.max_block_height is not None:
            self.state.last_block_height = max(self.state.last_block_height or 0, decoded.max_block_height)
        if decoded.max_block_time is not None:
            self.state.last_block_time = decoded.max_block_time
        if cursor is not None and (cursor_key is None or cursor_key == self.name):
            self.state.cursor = cursor

    async def deliver_patiently(self, events: list[Event], cursor_key: str, cursor: str | None) -> Ingested:
        """Hand events to the sink, waiting out a store outage: the frame or page is held (the source
        waits, its connection kept) and stored once the store answers, so nothing is skipped, and
        nothing is stored twice (the cursor moves in the same transaction)."""
        delays = backoff_delays(STORE_RETRY_INITIAL, STORE_RETRY_MAX, random.Random())
        try:
            while True:
                try:
                    ingested = await self.sink.deliver(events, cursor_key, cursor)
                except StoreUnavailable as exc:
                    if not self.state.store_paused:
                        self.state.store_paused = True
                        self.state.store_pauses += 1
                        log.warning("watcher %s paused: %s; resuming when the store answers", self.name, exc)
                    await anyio.sleep(next(delays))
                    continue
                if self.state.store_paused:
                    log.info("watcher %s resumed", self.name)
                return ingested
        finally:
            self.state.store_paused = False

    async def supervise(
        self,
        session: Callable[[], Awaitable[None]],
        initial_delay: float,
        max_delay: float,
        rng: random.Random | None = None,
    ) -> None:
        """Run ``session`` forever: after it ends or fails, wait a backoff delay and run it again.

        A session that lived STABLE_CONNECTION seconds or delivered events starts the backoff over.
        """
        rng = rng or random.Random()
        delays = backoff_delays(initial_delay, max_delay, rng)
        while True:
            started = time.monotonic()
            self._progress = False
            try:
                await session()
                reason = "closed by the server"
            except WatcherError as exc:
                reason = str(exc)
            except StoreUnavailable as exc:  # reading a cursor or the accounts: start over from the cursor
                reason = f"store unavailable: {exc}"
            except (OSError, TimeoutError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
            except Exception as exc:  # a library's own error types (protocol errors, closed sockets)
                reason = f"{type(exc).__name__}: {exc}"
                if type(exc).__module__.startswith(("watchers", "gateway")):
                    log.exception("watcher %s failed", self.name)
            self.state.connected = False
            self.state.last_error = reason[:500]
            if self._progress or time.monotonic() - started >= STABLE_CONNECTION:
                delays = backoff_delays(initial_delay, max_delay, rng)
            delay = next(delays)
            self.state.reconnects += 1
            log.warning("watcher %s disconnected (%s); reconnecting in %.1f s", self.name, reason, delay)
            await anyio.sleep(delay)
