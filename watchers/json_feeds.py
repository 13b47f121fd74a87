"""Generic feeds, configured in TOML only: ``websocket-json`` and ``http-poll-json``.

The cursor is the highest block height seen (``mapping.block_height``). Placeholders in the
subscribe message, the URL or the request body: ``{cursor}`` is the stored cursor, ``{next}`` the
cursor + 1. A string that is exactly a placeholder becomes a number when the cursor is one.
"""

from __future__ import annotations

from typing import Any

import anyio

from gateway.config import HttpPollJsonWatcherSettings, WebsocketJsonWatcherSettings
from watchers.base import EventSink, Watcher
from watchers.decode import Decoded, decode_json_rows, parse_json
from watchers.http import JsonHttp
from watchers.ws import open_socket


def fill(template: Any, cursor: str) -> Any:
    """``template`` with {cursor} and {next} replaced, recursively through lists and objects."""
    following = str(int(cursor) + 1) if cursor.lstrip("-").isdigit() else cursor
    if isinstance(template, str):
        for placeholder, value in (("{cursor}", cursor), ("{next}", following)):
            if template == placeholder:
                return int(value) if value.lstrip("-").isdigit() else value
        return template.replace("{cursor}", cursor).replace("{next}", following)
    if isinstance(template, list):
        return [fill(v, cursor) for v in template]
    if isinstance(template, dict):
        return {k: fill(v, cursor) for k, v in template.items()}
    return template


class _FeedWatcher(Watcher):
    def __init__(self, settings: WebsocketJsonWatcherSettings | HttpPollJsonWatcherSettings, sink: EventSink) -> None:
        super().__init__(settings, sink)
        self.cursor_value = settings.start_cursor

    async def _resume(self, start_cursor: str) -> None:
        """Pick up the stored cursor (or the configured start) at the beginning of a session."""
        self.cursor_value = await self.sink.cursor(self.name) or start_cursor
        self.state.cursor = self.cursor_value

    async def _accept_page(self, payload: Any, rows: str, mapping: dict[str, str]) -> bool:
        """Decode one frame/page, store its events with the new cursor; True when the cursor moved."""
        decoded, cursor = self._decode(payload, rows, mapping)
        await self.accept(decoded, cursor=cursor)
        if cursor is not None:
            self.cursor_value = cursor
        return cursor is not None

    def _decode(self, payload: Any, rows: str, mapping: dict[str, str]) -> tuple[Decoded, str | None]:
        decoded = decode_json_rows(payload, source=self.name, rows=rows, mapping=mapping)
        height = decoded.max_block_height
        current = int(self.cursor_value) if self.cursor_value.lstrip("-").isdigit() else None
        if height is not None and (current is None or height > current):
            return decoded, str(height)
        return decoded, None


class WebsocketJsonWatcher(_FeedWatcher):
    kind = "websocket-json"

    def __init__(self, settings: WebsocketJsonWatcherSettings, sink: EventSink) -> None:
        super().__init__(settings, sink)
        self.settings = settings

    async def _session(self) -> None:
        s = self.settings
        await self._resume(s.start_cursor)
        mapping = s.mapping.model_dump()
        async with open_socket(s.url, read_timeout=s.read_timeout, ping_interval=s.ping_interval) as ws:
            if s.subscribe is not None:
                await ws.send_json(fill(s.subscribe, self.cursor_value))
            self.state.connected = True
            while True:
                payload, fault = parse_json(await ws.recv())
                if fault is not None:
                    await self.accept(Decoded("unknown", faults=[fault]))
                    continue
                await self._accept_page(payload, s.rows, mapping)


class HttpPollJsonWatcher(_FeedWatcher):
    kind = "http-poll-json"

    def __init__(self, settings: HttpPollJsonWatcherSettings, sink: EventSink) -> None:
        super().__init__(settings, sink)
        self.settings = settings

    async def _session(self) -> None:
        s = self.settings
        await self._resume(s.start_cursor)
        mapping = s.mapping.model_dump()
        http = JsonHttp(s.request_timeout, 1)
        try:
            while True:
                body = fill(s.body, self.cursor_value) if s.method == "POST" else None
                payload = await http.request(s.method, fill(s.url, self.cursor_value), body)
                self.state.connected = True
                if not await self._accept_page(payload, s.rows, mapping):
                    await anyio.sleep(s.interval)  # nothing new: wait; new rows: ask again at once to catch up
        finally:
            with anyio.CancelScope(shield=True):
                await http.aclose()
