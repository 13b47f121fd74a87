"""The WebSocket boundary: the only importer of ``websockets``. Errors become WatcherError."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI
from websockets.typing import Subprotocol

from watchers.base import WatcherError

MAX_FRAME_BYTES = 16 * 1024 * 1024


class Socket:
    def __init__(self, conn: ClientConnection, read_timeout: float) -> None:
        self._conn = conn
        self._read_timeout = read_timeout

    async def send_json(self, message: Any) -> None:
        try:
            await self._conn.send(json.dumps(message))
        except ConnectionClosed as exc:
            raise WatcherError(f"connection closed while sending: {exc}") from exc

    async def recv(self) -> str | bytes:
        """The next frame; WatcherError when none comes within the read timeout or the peer closed."""
        try:
            with anyio.fail_after(self._read_timeout):
                return await self._conn.recv()
        except TimeoutError as exc:
            raise WatcherError(f"no frame for {self._read_timeout:.0f} s (read timeout)") from exc
        except ConnectionClosed as exc:
            raise WatcherError(f"connection closed: {exc}") from exc


@asynccontextmanager
async def open_socket(
    url: str, *, read_timeout: float, ping_interval: float, subprotocol: str | None = None
) -> AsyncIterator[Socket]:
    """Connect with WebSocket pings (a missing pong within ``read_timeout`` closes the connection)."""
    try:
        conn = await connect(
            url,
            subprotocols=[Subprotocol(subprotocol)] if subprotocol else None,
            open_timeout=read_timeout,
            ping_interval=ping_interval,
            ping_timeout=read_timeout,
            close_timeout=2,
            max_size=MAX_FRAME_BYTES,
        )
    except (InvalidHandshake, InvalidURI) as exc:
        raise WatcherError(f"cannot connect: {exc}") from exc
    try:
        yield Socket(conn, read_timeout)
    finally:
        with anyio.CancelScope(shield=True):
            await conn.close()
