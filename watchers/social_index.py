"""Source C: polling api.near.social ``POST /index`` (action: notify), one cursor per account.

Every account that has a stream is polled each ``interval`` with ``from = last + 1``; a full page
is followed at once. An account seen for the first time starts at its newest notification, so a new
subscriber is not flooded with history. New accounts are picked up at the next round.
"""

from __future__ import annotations

import logging
import random
import time
from typing import Any

import anyio

from gateway.backoff import backoff_delays
from gateway.config import SocialIndexWatcherSettings
from gateway.exceptions import StoreError
from watchers.base import EventSink, Watcher, WatcherError
from watchers.decode import Fault, decode_social_index_page
from watchers.http import JsonHttp

log = logging.getLogger(__name__)

TICK = 0.2  # seconds between scheduling rounds


def index_request(account: str, *, limit: int, order: str, from_height: int | None) -> dict[str, Any]:
    options: dict[str, Any] = {"limit": limit, "order": order}
    if from_height is not None:
        options["from"] = from_height
    return {"action": "notify", "key": account, "options": options}


class SocialIndexWatcher(Watcher):
    kind = "social-index"

    def __init__(self, settings: SocialIndexWatcherSettings, sink: EventSink) -> None:
        super().__init__(settings, sink)
        self.settings = settings
        self._due: dict[str, float] = {}
        self._failures: dict[str, int] = {}
        self._rng = random.Random()

    def _key(self, account: str) -> str:
        return f"{self.name}@{account}"

    async def run(self) -> None:
        s = self.settings
        http = JsonHttp(s.request_timeout, s.concurrency)
        limiter = anyio.Semaphore(s.concurrency)
        busy: set[str] = set()
        try:
            async with anyio.create_task_group() as tg:
                while True:
                    try:
                        accounts = await self.sink.accounts()
                    except Exception as exc:  # the store is briefly unavailable: try again next round
                        self.fault(Fault("accounts_unavailable", str(exc)[:120]))
                        accounts = []
                    self.state.connected = True
                    now = time.monotonic()
                    for account in accounts:
                        if account in busy or self._due.get(account, 0.0) > now:
                            continue
                        busy.add(account)
                        tg.start_soon(self._poll_guarded, http, limiter, account, busy)
                    await anyio.sleep(TICK)
        finally:
            with anyio.CancelScope(shield=True):
                await http.aclose()

    async def _poll_guarded(self, http: JsonHttp, limiter: anyio.Semaphore, account: str, busy: set[str]) -> None:
        try:
            async with limiter:
                full = await self._poll(http, account)
            self._failures.pop(account, None)
            self._due[account] = time.monotonic() + (0 if full else self.settings.interval)
        except (WatcherError, StoreError) as exc:  # the source, or the store (its cursor), failed
            n = self._failures[account] = self._failures.get(account, 0) + 1
            delays = backoff_delays(self.settings.reconnect_initial_delay, self.settings.reconnect_max_delay, self._rng)
            delay = [next(delays) for _ in range(min(n, 32))][-1]
            self._due[account] = time.monotonic() + max(delay, self.settings.interval)
            self.state.last_error = str(exc)[:500]
            self.fault(Fault("poll_failed", str(exc)[:200]))
        finally:
            busy.discard(account)

    async def _poll(self, http: JsonHttp, account: str) -> bool:
        """One request for ``account``; True when the page was full (more may be waiting)."""
        s = self.settings
        url = s.url.rstrip("/") + "/index"
        stored = await self.sink.cursor(self._key(account))
        if stored is None:  # first sight: start at the newest notification
            newest = await http.request("POST", url, index_request(account, limit=1, order="desc", from_height=None))
            height = newest[0].get("blockHeight") if isinstance(newest, list) and newest else None
            start = height if isinstance(height, int) else 0
            await self.deliver_patiently([], self._key(account), str(start))
            return False
        last = int(stored)
        page = await http.request("POST", url, index_request(account, limit=s.limit, order="asc", from_height=last + 1))
        decoded = decode_social_index_page(page, source=self.name, receiver=account)
        height = decoded.max_block_height
        cursor = str(height) if height is not None and height > last else None
        await self.accept(decoded, cursor_key=self._key(account), cursor=cursor)
        # a full page is followed at once, unless the cursor could not move past it (rows that say no
        # height): asking again at once would get the same page, in a loop
        return isinstance(page, list) and len(page) >= s.limit and cursor is not None
