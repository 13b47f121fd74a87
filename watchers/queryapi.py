"""Source A: the QueryAPI (Hasura) GraphQL subscription over WebSocket, subprotocol graphql-ws.

Every (re)connect subscribes from the stored cursor (the highest block height stored), not from
the configured start: rows at that height come again and are skipped as duplicates.
"""

from __future__ import annotations

from typing import Any

from gateway.config import QueryApiWatcherSettings
from watchers.base import EventSink, Watcher, WatcherError
from watchers.decode import decode_queryapi_frame
from watchers.ws import open_socket

OPERATION_ID = "notifications"


def subscription_query(settings: QueryApiWatcherSettings, from_height: int) -> str:
    fields = " ".join(settings.fields)
    return (
        f"subscription Notifications {{ {settings.table}(cursor: {{initial_value: {{blockHeight: {from_height}}}, "
        f"ordering: ASC}}, batch_size: {settings.batch_size}) {{ {fields} }} }}"
    )


def start_message(settings: QueryApiWatcherSettings, from_height: int) -> dict[str, Any]:
    return {
        "type": "start",
        "id": OPERATION_ID,
        "payload": {
            "operationName": "Notifications",
            "variables": {},
            "query": subscription_query(settings, from_height),
        },
    }


class QueryApiWatcher(Watcher):
    kind = "queryapi"

    def __init__(self, settings: QueryApiWatcherSettings, sink: EventSink) -> None:
        super().__init__(settings, sink)
        self.settings = settings

    async def _session(self) -> None:
        s = self.settings
        stored = await self.sink.cursor(self.name)
        from_height = int(stored) if stored is not None else s.start_block_height
        self.state.cursor = str(from_height)
        async with open_socket(
            s.url, read_timeout=s.read_timeout, ping_interval=s.ping_interval, subprotocol="graphql-ws"
        ) as ws:
            await ws.send_json(
                {"type": "connection_init", "payload": {"headers": {"x-hasura-role": s.role}, "lazy": True}}
            )
            while True:  # wait for the ack; keep-alives may come first
                first = decode_queryapi_frame(await ws.recv(), source=self.name, table=s.table)
                if first.kind == "ack":
                    break
                if first.kind == "error":
                    self.server_error(first.errors)
                    raise WatcherError("connection refused by the server")
            await ws.send_json(start_message(s, from_height))
            self.state.connected = True
            while True:
                decoded = decode_queryapi_frame(await ws.recv(), source=self.name, table=s.table)
                if decoded.kind == "complete":
                    raise WatcherError("the server completed the subscription")
                height = decoded.max_block_height
                cursor = str(height) if height is not None and height > from_height else None
                await self.accept(decoded, cursor=cursor)
                if cursor is not None:
                    from_height = int(cursor)
                if decoded.kind == "error":
                    raise WatcherError("the subscription failed: " + "; ".join(decoded.errors))
