"""Source B: the actions WebSocket (evgenykuzyakov/event-api), SocialDB set calls with index.notify.

The server keeps no cursor: each (re)connect asks for ``fetch_past_actions`` recent rows; events
below the stored block height are dropped here and the rest are deduplicated by the store.
"""

from __future__ import annotations

from typing import Any

from gateway.config import NearActionsWatcherSettings
from watchers.base import EventSink, Watcher
from watchers.decode import decode_actions_frame
from watchers.ws import open_socket


def subscribe_message(settings: NearActionsWatcherSettings) -> dict[str, Any]:
    return {
        "secret": settings.secret,
        "filter": [
            {"accountId": settings.contract, "status": "SUCCESS", "action": {"FunctionCall": {"method_name": "set"}}}
        ],
        "fetch_past_actions": settings.fetch_past_actions,
    }


class NearActionsWatcher(Watcher):
    kind = "near-actions"

    def __init__(self, settings: NearActionsWatcherSettings, sink: EventSink) -> None:
        super().__init__(settings, sink)
        self.settings = settings

    async def _session(self) -> None:
        s = self.settings
        stored = await self.sink.cursor(self.name)
        floor = int(stored) if stored is not None else 0
        self.state.cursor = stored
        async with open_socket(s.url, read_timeout=s.read_timeout, ping_interval=s.ping_interval) as ws:
            await ws.send_json(subscribe_message(s))
            self.state.connected = True
            while True:
                decoded = decode_actions_frame(await ws.recv(), source=self.name, contract=s.contract)
                decoded.events = [e for e in decoded.events if (e.block_height or 0) >= floor]
                height = decoded.max_block_height
                cursor = str(height) if height is not None and height > floor else None
                await self.accept(decoded, cursor=cursor)
                if cursor is not None:
                    floor = int(cursor)
