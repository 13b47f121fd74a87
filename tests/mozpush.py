"""A local push service for a real Firefox: Mozilla's WebPush WebSocket protocol to the browser, the
Web Push HTTP API (RFC 8030) to the gateway.

The browser's side of the protocol is Firefox's own ``PushServiceWebSocket.sys.mjs`` (in omni.ja):
``hello`` (a UAID is issued, or kept), ``register`` (a channel, bound to the applicationServerKey the
page subscribed with) answered with its push endpoint, ``unregister``, ``notification`` carrying the
encrypted body as sent, which the browser decrypts and ``ack``s with a code per message (100
delivered, 101 could not be decrypted, 102 not delivered), and ``{}`` pings.

The gateway POSTs to ``http://127.0.0.1:PORT/wpush/<channel>`` as to a real push service: the VAPID
JWT is verified and its key must be the channel's (else 401, as autopush answers a key mismatch), an
unknown channel is 404 and an unregistered one 410, the body must be aes128gcm, and TTL is honoured:
a message for a browser that is not connected waits TTL seconds for it (TTL 0: dropped).
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from websockets.asyncio.server import ServerConnection, serve

from tests.rfc8291 import VapidError, verify_vapid


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass
class Channel:
    id: str
    uaid: str
    key: bytes  # the applicationServerKey it was registered with (raw P-256 point)
    endpoint: str
    registered: bool = True


@dataclass
class Message:
    channel: str
    version: str
    body: bytes
    expires: float  # monotonic time past which it is not delivered
    sent: bool = False  # to the browser (it acks, or gets it again at its next hello)
    ack: int | None = None  # the browser's code: 100 delivered, 101 decryption error, 102 not delivered


@dataclass
class Posted:
    channel: str
    status: int
    reason: str = ""
    headers: dict[str, str] = field(default_factory=dict)


class MozPushService:
    """Both sides of the push service, in threads of their own; the state is behind one lock."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self.channels: dict[str, Channel] = {}
        self.messages: list[Message] = []
        self.posted: list[Posted] = []
        self.log: list[dict[str, Any]] = []  # every message of the browsers, as received
        self._sockets: dict[str, ServerConnection] = {}  # uaid -> its open WebSocket
        self._next_uaid: str | None = None  # a rotation: the UAID the next hello gets
        self.refusing: set[str] = set()  # channels whose pushes are refused 403, as a push service may
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run_ws, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait(10)
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._http.daemon_threads = True
        self.http_url = f"http://127.0.0.1:{self._http.server_address[1]}"
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    # --- the browser's side ------------------------------------------------------------------

    def _run_ws(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self._loop)

        async def main() -> None:
            async with serve(self._session, "127.0.0.1", 0) as server:
                self.ws_url = f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
                self._stop = asyncio.Event()
                ready.set()
                await self._stop.wait()

        self._loop.run_until_complete(main())
        self._loop.close()

    async def _session(self, ws: ServerConnection) -> None:
        uaid = None
        try:
            async for raw in ws:
                data = json.loads(raw)
                with self._cond:
                    self.log.append(data)
                    self._cond.notify_all()
                kind = data.get("messageType")
                if kind is None:  # a ping
                    await ws.send("{}")
                elif kind == "hello":
                    uaid = self._hello(data)
                    self._sockets[uaid] = ws
                    await ws.send(
                        json.dumps(
                            {"messageType": "hello", "uaid": uaid, "status": 200, "use_webpush": True, "broadcasts": {}}
                        )
                    )
                    await self._flush(uaid)
                elif kind == "register" and uaid is not None:
                    channel = self._register(uaid, data)
                    await ws.send(
                        json.dumps(
                            {
                                "messageType": "register",
                                "channelID": channel.id,
                                "status": 200,
                                "pushEndpoint": channel.endpoint,
                            }
                        )
                    )
                elif kind == "unregister":
                    with self._cond:
                        if data.get("channelID") in self.channels:
                            self.channels[data["channelID"]].registered = False
                        self._cond.notify_all()
                    await ws.send(
                        json.dumps({"messageType": "unregister", "channelID": data.get("channelID"), "status": 200})
                    )
                elif kind == "ack":
                    with self._cond:
                        for update in data.get("updates", []):
                            for m in self.messages:
                                if m.version == update.get("version"):
                                    m.ack = update.get("code")
                        self._cond.notify_all()
        finally:
            if uaid is not None and self._sockets.get(uaid) is ws:
                del self._sockets[uaid]

    def _hello(self, data: dict[str, Any]) -> str:
        with self._cond:
            if self._next_uaid is not None:  # rotated: the browser drops its channels and re-subscribes
                uaid, self._next_uaid = self._next_uaid, None
                return uaid
            given = data.get("uaid")
            return given if isinstance(given, str) and given else uuid.uuid4().hex

    def _register(self, uaid: str, data: dict[str, Any]) -> Channel:
        cid = data["channelID"]
        key = unb64url(data["key"].rstrip("=")) if data.get("key") else b""
        channel = Channel(cid, uaid, key, f"{self.http_url}/wpush/{cid}")
        with self._cond:
            self.channels[cid] = channel
            self._cond.notify_all()
        return channel

    async def _flush(self, uaid: str) -> None:
        """Send what waits for ``uaid``'s channels and has not expired."""
        ws = self._sockets.get(uaid)
        if ws is None:
            return
        now = time.monotonic()
        with self._cond:
            due = [m for m in self.messages if not m.sent and m.expires > now and self.channels[m.channel].uaid == uaid]
            for m in due:
                m.sent = True
        for m in due:
            await ws.send(
                json.dumps(
                    {
                        "messageType": "notification",
                        "channelID": m.channel,
                        "version": m.version,
                        "data": b64url(m.body),
                        "headers": {"encoding": "aes128gcm"},
                    }
                )
            )

    def rotate(self) -> None:
        """Issue every browser a new UAID: their connections close, and at the next hello they drop
        their subscriptions (Firefox fires ``pushsubscriptionchange``)."""
        with self._cond:
            self._next_uaid = uuid.uuid4().hex
            sockets = list(self._sockets.values())
            for channel in self.channels.values():  # gone with their UAID: pushes to them are 410
                channel.registered = False
        for ws in sockets:
            asyncio.run_coroutine_threadsafe(ws.close(), self._loop)

    # --- the gateway's side ------------------------------------------------------------------

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        service = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                status, reason = service._accept(self)
                self.send_response(status)
                if status == 201:
                    self.send_header("Location", f"{service.http_url}/m/{uuid.uuid4().hex}")
                body = json.dumps({"code": status, "message": reason}).encode() if reason else b""
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler

    def _accept(self, h: BaseHTTPRequestHandler) -> tuple[int, str]:
        body = h.rfile.read(int(h.headers.get("Content-Length", "0")))
        parts = h.path.strip("/").split("/")
        cid = parts[1] if len(parts) == 2 and parts[0] == "wpush" else ""
        with self._cond:
            channel = self.channels.get(cid)
        status, reason = 201, ""
        if channel is None:
            status, reason = 404, "no such subscription"
        elif not channel.registered:
            status, reason = 410, "unsubscribed"
        elif cid in self.refusing:
            status, reason = 403, "this subscription refuses the sender"
        else:
            try:
                verify_vapid(h.headers.get("Authorization", ""), self.http_url, time.time())
                key = h.headers.get("Authorization", "").split("k=", 1)[1].split(",")[0].strip()
                if channel.key and unb64url(key) != channel.key:
                    raise VapidError("VAPID public key mismatch: not the key the browser subscribed with")
            except (VapidError, IndexError, ValueError) as exc:
                status, reason = 401, str(exc)
        ttl = h.headers.get("TTL", "")
        if status == 201 and not ttl.isdigit():
            status, reason = 400, "TTL header missing"
        if status == 201 and h.headers.get("Content-Encoding") != "aes128gcm":
            status, reason = 400, "Content-Encoding must be aes128gcm"
        with self._cond:
            self.posted.append(Posted(cid, status, reason, dict(h.headers)))
            # kept TTL seconds for a browser away; TTL 0 only goes to one connected now (RFC 8030 §5.2)
            if status == 201 and (int(ttl) > 0 or channel.uaid in self._sockets):
                self.messages.append(Message(cid, uuid.uuid4().hex, body, time.monotonic() + max(int(ttl), 1)))
            self._cond.notify_all()
        if status == 201:
            asyncio.run_coroutine_threadsafe(self._flush(channel.uaid), self._loop)
        return status, reason

    # --- for the tests ---------------------------------------------------------------------------

    def wait_for(self, predicate: Any, timeout: float = 15.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._cond.wait(left)
            return True

    def close(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(5)
