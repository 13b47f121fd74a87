"""A fake neardata server on port 0 that answers as fastnear/neardata-server does (README "Facts
about the API" of shared/fixtures/neardata), and misbehaves on request.

- ``GET /v0/block/{h}``: the block, or ``null`` for a skipped height; a height just past the tip
  (at most +10) is held open until it is produced (or ``hold`` runs out: then 404
  ``BLOCK_DOES_NOT_EXIST``); further than that, 404 at once.
- ``GET /v0/block_opt/{h}``: the same for the newest heights, else 302 to ``/v0/block/{h}``.
- ``GET /v0/last_block/final``: 302 with the relative ``Location: /v0/block/{tip}``.
- Heights below ``archive_below`` 302 to another server (an archive host, absolute Location).
- One-shot faults per height: ``429`` (Retry-After), ``500`` (not cached), ``drop`` (connection
  closed with no answer), ``truncate`` (half the body, then closed), ``garbage`` (not JSON).
- ``api_key``: every request must carry ``Authorization: Bearer <key>`` or gets 401.
"""

from __future__ import annotations

import base64
import copy
import json
import threading
import time
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.conftest import fixture_path

HOLD_DISTANCE = 10  # the real server holds heights at most this far past the tip


def fixture_block(name: str) -> Any:
    """A fixture block (parsed), e.g. ``fixture_block("107503704")``; None for the skipped height."""
    return json.loads(fixture_path(f"neardata/{name}.json").read_text())


def at_height(block: Any, height: int) -> Any:
    """``block`` moved to ``height`` (the header says which height it is; nothing else changes)."""
    if block is None:
        return None
    moved = copy.deepcopy(block)
    moved["block"]["header"]["height"] = height
    return moved


class FakeNeardata:
    def __init__(self, *, api_key: str = "", hold: float = 2.0) -> None:
        self.blocks: dict[int, bytes] = {}
        self.tip = 0
        self.api_key = api_key
        self.hold = hold
        self.archive_below = 0
        self.archive: FakeNeardata | None = None
        self.optimistic_window = 3
        self.faults: dict[int, list[str]] = {}
        self.requests: list[tuple[str, str | None]] = []  # (path, Authorization header)
        self.delay = 0.0  # seconds before answering each block request
        self.in_flight = 0
        self.max_in_flight = 0
        self._cond = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # head and body go in two writes: no delayed-ACK stall between

            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:
                server._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- the chain ---------------------------------------------------------------------------

    def produce(self, height: int, block: Any, *, raw: bytes | None = None) -> None:
        """Add a block (parsed, moved to ``height``) or ``None`` (a skipped height); the tip moves up."""
        body = raw if raw is not None else json.dumps(at_height(block, height), separators=(",", ":")).encode()
        with self._cond:
            self.blocks[height] = body
            self.tip = max(self.tip, height)
            self._cond.notify_all()

    def produce_many(self, blocks: Iterable[tuple[int, Any]]) -> None:
        for height, block in blocks:
            self.produce(height, block)

    def fail(self, height: int, *faults: str) -> None:
        with self._cond:
            self.faults.setdefault(height, []).extend(faults)

    def block_requests(self, height: int) -> int:
        return sum(1 for path, _ in self.requests if path.endswith(f"/{height}"))

    # --- HTTP --------------------------------------------------------------------------------

    def _reply(
        self, h: BaseHTTPRequestHandler, status: int, body: bytes, headers: dict[str, str] | None = None
    ) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            h.send_header(name, value)
        h.end_headers()
        h.wfile.write(body)

    def _error(self, h: BaseHTTPRequestHandler, status: int, kind: str, message: str) -> None:
        self._reply(h, status, json.dumps({"error": message, "type": kind}).encode())

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        with self._cond:
            self.requests.append((h.path, h.headers.get("Authorization")))
        if self.api_key and h.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._reply(h, 401, b"Unauthorized")
        parts = h.path.split("?")[0].strip("/").split("/")
        if parts[:3] == ["v0", "last_block", "final"]:
            h.send_response(302)
            h.send_header("Location", f"/v0/block/{self.tip}")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return None
        if len(parts) != 3 or parts[0] != "v0" or parts[1] not in ("block", "block_opt") or not parts[2].isdigit():
            return self._error(h, 400, "INVALID_ARGUMENT", "Invalid argument")
        height = int(parts[2])
        if parts[1] == "block_opt" and height < self.tip - self.optimistic_window:
            return self._redirect(h, f"/v0/block/{height}")
        if self.archive is not None and height < self.archive_below:
            return self._redirect(h, f"{self.archive.url}/v0/block/{height}")
        with self._cond:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            self._block(h, height)
        finally:
            with self._cond:
                self.in_flight -= 1
        return None

    def _redirect(self, h: BaseHTTPRequestHandler, location: str) -> None:
        h.send_response(302)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()

    def _block(self, h: BaseHTTPRequestHandler, height: int) -> None:
        if self.delay:
            time.sleep(self.delay)
        with self._cond:
            fault = self.faults[height].pop(0) if self.faults.get(height) else None
            if fault is None and height not in self.blocks:
                if height > self.tip + HOLD_DISTANCE:
                    fault = "far_future"
                else:  # held open until the block is produced, as the real server does
                    self._cond.wait_for(lambda: height in self.blocks, timeout=self.hold)
                    if height not in self.blocks:
                        fault = "far_future"
            body = self.blocks.get(height, b"null")
        if fault == "far_future":
            return self._error(h, 404, "BLOCK_DOES_NOT_EXIST", "The block is too far in the future")
        if fault == "429":
            return self._reply(h, 429, b"Too Many Requests", {"Retry-After": "1"})
        if fault == "500":
            return self._error(h, 500, "CACHE_ERROR", "Cache error: The block is not cached")
        if fault == "garbage":
            return self._reply(h, 200, b'{"block": {"header": ')
        if fault == "drop":
            h.close_connection = True
            h.connection.close()
            return None
        if fault == "truncate":
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.close()
            return None
        cache = "max-age=86400" if body == b"null" else "max-age=31536000"
        return self._reply(h, 200, body, {"Cache-Control": f"public, {cache}"})


# --- constructed blocks: one shard, receipts of the kinds the fixtures lack ----------------------


def b64(value: Any) -> str:
    return base64.b64encode(json.dumps(value).encode()).decode()


def receipt(
    receipt_id: str,
    predecessor: str,
    receiver: str,
    actions: list[Any],
    *,
    signer: str | None = None,
    logs: list[str] | None = None,
    status: Any = None,
    tx_hash: str | None = "TX",
) -> dict[str, Any]:
    """One ``receipt_execution_outcomes`` entry in the neardata shape (format.md §3)."""
    return {
        "execution_outcome": {
            "id": receipt_id,
            "block_hash": "B",
            "proof": [],
            "outcome": {
                "executor_id": receiver,
                "logs": logs or [],
                "receipt_ids": [],
                "status": status if status is not None else {"SuccessValue": ""},
                "gas_burnt": 1,
                "tokens_burnt": "0",
                "metadata": {"version": 3, "gas_profile": []},
            },
        },
        "receipt": {
            "predecessor_id": predecessor,
            "receiver_id": receiver,
            "receipt_id": receipt_id,
            "receipt": {
                "Action": {
                    "signer_id": signer or predecessor,
                    "signer_public_key": "ed25519:K",
                    "gas_price": "1",
                    "output_data_receivers": [],
                    "input_data_ids": [],
                    "actions": actions,
                    "is_promise_yield": False,
                }
            },
            "priority": 0,
        },
        "tx_hash": tx_hash,
    }


def event_log(standard: str, event: str, data: list[dict[str, Any]]) -> str:
    return "EVENT_JSON:" + json.dumps({"standard": standard, "version": "1.0.0", "event": event, "data": data})


def block(height: int, receipts: list[dict[str, Any]], *, timestamp_ns: int | None = None) -> dict[str, Any]:
    stamp = timestamp_ns if timestamp_ns is not None else int(time.time() * 1e9)
    return {
        "block": {
            "author": "validator.near",
            "header": {
                "height": height,
                "prev_height": height - 1,
                "hash": f"H{height}",
                "prev_hash": f"H{height - 1}",
                "timestamp": stamp,
                "timestamp_nanosec": str(stamp),
                "chunk_mask": [True],
            },
            "chunks": [],
        },
        "shards": [
            {
                "shard_id": 0,
                "chunk": None,
                "receipt_execution_outcomes": receipts,
                "state_changes": [],
            }
        ],
    }
