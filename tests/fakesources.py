"""Fake event sources on port 0 that speak the real protocols (near-protocols.md §5–7).

Each runs in its own thread (WebSocket servers on their own asyncio loop), records what clients
sent, and can misbehave on request: drop the connection mid-stream, send garbage, answer errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
import time
from collections.abc import Awaitable, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

TABLE = "dataplatform_near_notifications_notifications_stream"

# Poison a fake can be asked to send. json.dumps cannot write JSON nested 5,000 deep (it recurses), so
# rows are written with DEEP_MARK where the nesting goes and poison_json splices the text in.
DEEP = "[" * 5000 + "]" * 5000
DEEP_MARK = "<nested 5,000 deep>"
LONG_ACCOUNT = "r" * 10000 + ".near"


def poison_json(value: Any) -> str:
    """``value`` as JSON text, with DEEP in place of every string DEEP_MARK."""
    return json.dumps(value).replace(json.dumps(DEEP_MARK), DEEP)


def _rows_json(rows: list[dict[str, Any]]) -> str:
    """A JSON list of rows; a row added as raw text (``_raw``) goes out as exactly that text."""
    return "[" + ",".join(r["_raw"] if "_raw" in r else json.dumps(r) for r in rows) + "]"


class _LoopServer:
    """A websockets server on its own event loop thread."""

    def __init__(self, handler: Callable[[ServerConnection], Awaitable[None]], subprotocols: list[str] | None = None):
        self.loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._server: Server | None = None

        async def quiet(ws: ServerConnection) -> None:
            with contextlib.suppress(ConnectionClosed):
                await handler(ws)

        self._handler = quiet
        self._subprotocols = subprotocols
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._started.wait(10)
        assert self._server is not None
        self.port = self._server.sockets[0].getsockname()[1] if self._server.sockets else 0

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def start() -> None:
            self._server = await serve(
                self._handler,
                "127.0.0.1",
                0,
                subprotocols=self._subprotocols,  # type: ignore[arg-type]
                ping_interval=None,
            )
            self._started.set()

        self.loop.run_until_complete(start())
        self.loop.run_forever()

    def call(self, fn: Callable[[], Any]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def close(self) -> None:
        async def stop() -> None:
            if self._server is not None:
                self._server.close()
                await self._server.wait_closed()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()


class Gate:
    """Holds a source's data back until the test has created its subscriptions."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def is_open(self) -> bool:
        return self._open.is_set()

    async def wait(self) -> None:
        while not self._open.is_set():
            await asyncio.sleep(0.02)


def _abort(ws: ServerConnection) -> None:
    """Drop the TCP connection without a closing handshake, as a crashed server would."""
    ws.transport.abort()


class GraphQLWsServer:
    """The QueryAPI notifications stream (Apollo subscriptions-transport-ws, subprotocol graphql-ws)."""

    def __init__(self, rows: list[dict[str, Any]] | None = None, *, ka_interval: float = 0.3) -> None:
        self.rows: list[dict[str, Any]] = sorted(rows or [], key=lambda r: r["blockHeight"])
        self.ka_interval = ka_interval
        self.sessions: list[dict[str, Any]] = []  # per connection: init payload, query, from height
        self.sent_ids: list[Any] = []  # every row id sent, across connections
        self.drop_after_frames: list[int] = []  # per upcoming connection: drop after N data frames
        self.garbage: list[str] = []  # sent once, right after the first data frame of the next connection
        self.error_after_frames: int | None = None  # send an error frame after N data frames (once)
        self.silent_sessions = 0  # this many upcoming connections go quiet after the ack (a dead peer)
        self.raw_frames: list[str] = []  # sent as they are, once, before the rows of the next connection
        self.gate = Gate()
        self._server = _LoopServer(self._handle, subprotocols=["graphql-ws"])
        self.url = f"ws://127.0.0.1:{self._server.port}/v1/graphql"

    def add_rows(self, rows: list[dict[str, Any]]) -> None:
        self.rows = sorted(self.rows + rows, key=lambda r: r["blockHeight"])

    def close(self) -> None:
        self._server.close()

    async def _handle(self, ws: ServerConnection) -> None:
        session: dict[str, Any] = {"subprotocol": ws.subprotocol}
        self.sessions.append(session)
        init = json.loads(await ws.recv())
        session["init"] = init
        if init.get("type") != "connection_init":
            await ws.close(4400, "expected connection_init")
            return
        await ws.send(json.dumps({"type": "connection_ack"}))
        start = json.loads(await ws.recv())
        if self.silent_sessions > 0:
            self.silent_sessions -= 1
            session["silent"] = True
            await ws.wait_closed()
            return
        await ws.send(json.dumps({"type": "ka"}))
        session["start"] = start
        query = start["payload"]["query"]
        session["from"] = int(re.search(r"blockHeight: (\d+)", query).group(1))  # type: ignore[union-attr]
        batch = int(re.search(r"batch_size: (\d+)", query).group(1))  # type: ignore[union-attr]
        drop_after = self.drop_after_frames.pop(0) if self.drop_after_frames else None
        garbage, self.garbage = self.garbage, []
        raw_frames, self.raw_frames = self.raw_frames, []
        await self.gate.wait()
        for text in raw_frames:
            await ws.send(text)
        sent_frames = 0
        position = session["from"]
        sent_keys: set[Any] = set()
        while True:
            pending = [r for r in self.rows if r["blockHeight"] >= position and r["id"] not in sent_keys]
            if not pending:
                await ws.send(json.dumps({"type": "ka"}))
                await asyncio.sleep(self.ka_interval)
                continue
            chunk = pending[:batch]
            frame = {"type": "data", "id": start["id"], "payload": {"data": {TABLE: chunk}}}
            await ws.send(json.dumps(frame))
            self.sent_ids += [r["id"] for r in chunk]
            sent_keys.update(r["id"] for r in chunk)
            position = chunk[-1]["blockHeight"]
            sent_frames += 1
            for g in garbage:
                await ws.send(g)
            garbage = []
            if self.error_after_frames is not None and sent_frames >= self.error_after_frames:
                self.error_after_frames = None
                await ws.send(
                    json.dumps(
                        {
                            "type": "data",
                            "id": start["id"],
                            "payload": {
                                "errors": [
                                    {"message": "field not found in type", "extensions": {"code": "validation-failed"}}
                                ]
                            },
                        }
                    )
                )
                await asyncio.sleep(1)  # the client is expected to reconnect
                return
            if drop_after is not None and sent_frames >= drop_after:
                _abort(ws)
                return
            await asyncio.sleep(0.02)


def filter_matches(flt: Any, row: Any) -> bool:
    """The actions server's filter: a list is OR, an object is AND over its keys, leaves compare equal."""
    if isinstance(flt, list):
        return any(filter_matches(f, row) for f in flt)
    if isinstance(flt, dict):
        return isinstance(row, dict) and all(k in row and filter_matches(v, row[k]) for k, v in flt.items())
    return bool(flt == row)


class ActionsServer:
    """The actions WebSocket: one subscribe message, a `note: past` frame, then live frames per block."""

    def __init__(self, past: list[dict[str, Any]] | None = None) -> None:
        self.actions: list[dict[str, Any]] = list(past or [])
        self.subscriptions: list[dict[str, Any]] = []
        self.drop_after_live_frames: list[int] = []
        self.garbage: list[str] = []  # sent before the past frame of the next connection
        self._clients: list[tuple[ServerConnection, Any, str]] = []
        self.gate = Gate()
        self._server = _LoopServer(self._handle)
        self.url = f"ws://127.0.0.1:{self._server.port}/ws"

    def close(self) -> None:
        self._server.close()

    def push_block(self, actions: list[dict[str, Any]]) -> None:
        """A new block with these actions: stored, and sent live to every client whose filter matches."""
        self.actions.extend(actions)
        self._server.call(lambda: asyncio.ensure_future(self._broadcast(actions)))

    def push_frame(self, text: str) -> None:
        """A live frame of exactly this text to every client (unfiltered: a frame json.dumps cannot write)."""
        self._server.call(lambda: asyncio.ensure_future(self._send_all(text)))

    async def _send_all(self, text: str) -> None:
        for ws, _, _ in list(self._clients):
            with contextlib.suppress(Exception):
                await ws.send(text)

    async def _broadcast(self, actions: list[dict[str, Any]]) -> None:
        for ws, flt, secret in list(self._clients):
            matching = [a for a in actions if filter_matches(flt, a)]
            if not matching:
                continue
            try:
                await ws.send(json.dumps({"secret": secret, "actions": matching}))
            except Exception:
                continue
            ws.live_frames = getattr(ws, "live_frames", 0) + 1  # type: ignore[attr-defined]
            limit = getattr(ws, "drop_after", None)
            if limit is not None and ws.live_frames >= limit:  # type: ignore[attr-defined]
                self._clients = [c for c in self._clients if c[0] is not ws]
                _abort(ws)

    async def _handle(self, ws: ServerConnection) -> None:
        sub = json.loads(await ws.recv())
        self.subscriptions.append(sub)
        flt, secret = sub.get("filter"), sub.get("secret", "")
        await self.gate.wait()
        n = max(0, min(int(sub.get("fetch_past_actions", 0)), 1000))
        past = [a for a in self.actions if filter_matches(flt, a)][-n:] if n else []
        garbage, self.garbage = self.garbage, []
        for g in garbage:
            await ws.send(g)
        await ws.send(json.dumps({"secret": secret, "actions": past, "note": "past"}))
        ws.drop_after = self.drop_after_live_frames.pop(0) if self.drop_after_live_frames else None  # type: ignore[attr-defined]
        self._clients.append((ws, flt, secret))
        try:
            await ws.wait_closed()
        finally:
            self._clients = [c for c in self._clients if c[0] is not ws]


class _HttpServer:
    def __init__(self, handle: Callable[[BaseHTTPRequestHandler], None]) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                handle(self)

            def do_GET(self) -> None:
                handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    @staticmethod
    def reply(h: BaseHTTPRequestHandler, status: int, body: bytes, content_type: str = "application/json") -> None:
        h.send_response(status)
        h.send_header("Content-Type", content_type)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)


class SocialIndexServer:
    """api.near.social POST /index for action notify: entries per receiver, ordered by blockHeight."""

    def __init__(self) -> None:
        self.entries: dict[str, list[dict[str, Any]]] = {}
        self.requests: list[dict[str, Any]] = []
        self.failures: list[tuple[int, bytes]] = []  # next answers to give instead of data
        self.delay = 0.0
        self.in_flight = 0
        self.max_in_flight = 0
        self.times: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        self._http = _HttpServer(self._handle)
        self.url = self._http.url

    def close(self) -> None:
        self._http.close()

    def add(self, receiver: str, initiator: str, block: int, value: dict[str, Any]) -> None:
        with self._lock:
            self.entries.setdefault(receiver, []).append({"accountId": initiator, "blockHeight": block, "value": value})
            self.entries[receiver].sort(key=lambda e: e["blockHeight"])

    def add_raw(self, receiver: str, entries: list[tuple[int, str]]) -> None:
        """Entries sent as exactly this JSON text, each served at its block; all added at once."""
        with self._lock:
            listed = self.entries.setdefault(receiver, [])
            listed += [{"blockHeight": block, "_raw": text} for block, text in entries]
            listed.sort(key=lambda e: e["blockHeight"])

    def requests_for(self, account: str) -> list[dict[str, Any]]:
        with self._lock:
            return [r for r in self.requests if r.get("key") == account]

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers.get("Content-Length", "0"))) or b"{}")
        with self._lock:
            self.requests.append(body)
            self.times.setdefault(body.get("key"), []).append(time.monotonic())
            failure = self.failures.pop(0) if self.failures else None
            entries = list(self.entries.get(body.get("key"), []))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        time.sleep(self.delay)
        with self._lock:
            self.in_flight -= 1
        if failure is not None:
            return _HttpServer.reply(h, failure[0], failure[1], "text/plain")
        if h.path != "/index" or body.get("action") != "notify":
            return _HttpServer.reply(h, 400, b"bad request", "text/plain")
        opts = body.get("options", {})
        limit, order, start = opts.get("limit", 100), opts.get("order", "asc"), opts.get("from")
        if order == "desc":
            chosen = [e for e in reversed(entries) if start is None or e["blockHeight"] <= start][:limit]
        else:
            chosen = [e for e in entries if start is None or e["blockHeight"] >= start][:limit]
            if chosen and len(chosen) == limit:  # the page runs on to the end of its last block
                last = chosen[-1]["blockHeight"]
                chosen += [e for e in entries if e["blockHeight"] == last and e not in chosen]
        _HttpServer.reply(h, 200, _rows_json(chosen).encode())


class JsonWsFeed:
    """A generic WebSocket feed: answers a subscribe message with frames of rows after its cursor."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.subscribes: list[Any] = []
        self.raw_frames: list[str] = []  # sent as they are, after the garbage frame and before the rows
        self.gate = Gate()
        self._server = _LoopServer(self._handle)
        self.url = f"ws://127.0.0.1:{self._server.port}/feed"

    def close(self) -> None:
        self._server.close()

    async def _handle(self, ws: ServerConnection) -> None:
        sub = json.loads(await ws.recv())
        self.subscribes.append(sub)
        after = int(sub["params"]["from"])
        await self.gate.wait()
        await ws.send("this is not json")
        for text in self.raw_frames:
            await ws.send(text)
        for r in self.rows:
            if r["block"]["number"] >= after:
                await ws.send(json.dumps({"channel": "notifications", "result": {"items": [r]}}))
        await ws.wait_closed()


class JsonHttpFeed:
    """A generic HTTP feed: GET /rows?after=N answers {"data": {"rows": [...]}} of rows past N."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        self.rows = rows
        self.paths: list[str] = []
        self.gate = Gate()
        self._http = _HttpServer(self._handle)
        self.url = self._http.url

    def close(self) -> None:
        self._http.close()

    def add_raw(self, rows: list[tuple[int, str]]) -> None:
        """Rows sent as exactly this JSON text, each served at its height."""
        self.rows = self.rows + [{"height": height, "_raw": text} for height, text in rows]

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        self.paths.append(h.path)
        match = re.search(r"after=(\d+)", h.path)
        after = int(match.group(1)) if match else 0
        rows = [r for r in self.rows if r["height"] > after][:2] if self.gate.is_open() else []
        _HttpServer.reply(h, 200, ('{"data": {"rows": ' + _rows_json(rows) + "}}").encode())


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


class FakeNearRpc:
    """NEAR JSON-RPC ``query`` / ``view_access_key`` over HTTP, answering as nodes do: the key's
    permission, or an error whose cause is UNKNOWN_ACCESS_KEY / UNKNOWN_ACCOUNT."""

    def __init__(self) -> None:
        self.keys: dict[str, dict[str, Any]] = {}  # account -> public key -> permission
        self.requests: list[dict[str, Any]] = []
        self.down = False
        self.head = 0  # the chain head's height, for method "block"
        self.tokens: dict[str, Any] = {}  # contract -> what its ft_metadata returns (call_function)
        self._http = _HttpServer(self._handle)
        self.url = self._http.url

    def close(self) -> None:
        self._http.close()

    def add_key(self, account: str, public_key: str, permission: Any = "FullAccess") -> None:
        self.keys.setdefault(account, {})[public_key] = permission

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        body = json.loads(h.rfile.read(int(h.headers.get("Content-Length", "0"))))
        self.requests.append(body)
        if self.down:
            _HttpServer.reply(h, 502, b"<html>bad gateway</html>", "text/html")
            return
        params = body.get("params", {})
        if body.get("method") == "block":
            reply = {"jsonrpc": "2.0", "id": body.get("id"), "result": {"header": {"height": self.head}}}
            _HttpServer.reply(h, 200, json.dumps(reply).encode())
            return
        if params.get("request_type") == "call_function":
            contract = params.get("account_id")
            if params.get("method_name") != "ft_metadata" or contract not in self.tokens:
                answer: dict[str, Any] = {
                    "error": {"name": "HANDLER_ERROR", "cause": {"name": "CONTRACT_EXECUTION_ERROR"}, "code": -32000}
                }
            else:
                returned = list(json.dumps(self.tokens[contract]).encode())
                answer = {"result": {"result": returned, "logs": [], "block_height": 1, "block_hash": "x"}}
            _HttpServer.reply(h, 200, json.dumps({"jsonrpc": "2.0", "id": body.get("id"), **answer}).encode())
            return
        assert body.get("method") == "query" and params.get("request_type") == "view_access_key", body
        account, key = params["account_id"], params["public_key"]
        if account not in self.keys:
            answer = {
                "error": {"name": "HANDLER_ERROR", "cause": {"name": "UNKNOWN_ACCOUNT", "info": {}}, "code": -32000}
            }
        elif key not in self.keys[account]:
            answer = {
                "error": {"name": "HANDLER_ERROR", "cause": {"name": "UNKNOWN_ACCESS_KEY", "info": {}}, "code": -32000}
            }
        else:
            answer = {
                "result": {"nonce": 7, "permission": self.keys[account][key], "block_height": 1, "block_hash": "x"}
            }
        reply = {"jsonrpc": "2.0", "id": body.get("id"), **answer}
        _HttpServer.reply(h, 200, json.dumps(reply).encode())
