"""A fake push service on port 0 that behaves like a real one: it verifies the VAPID JWT and
decrypts the aes128gcm body with the tests' own code, then answers as scripted (201 by default)."""

from __future__ import annotations

import json
import re
import threading
import time
import uuid
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from tests.rfc8291 import BrowserKeys, DecryptError, VapidError, decrypt, verify_vapid

TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")


@dataclass
class Reply:
    status: int = 201
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    body: bytes = b""


@dataclass
class Received:
    sub_id: str
    at: float
    status: int  # what we answered
    payload: dict[str, Any] | None
    plaintext_bytes: int
    claims: dict[str, Any]
    headers: dict[str, str]
    plaintext: bytes = b""
    peer_port: int = 0  # the sender's TCP port: which process sent it (tests/test_senders.py)


class Subscription:
    """A fake browser subscription: the endpoint on the fake service and its keys."""

    def __init__(self, service: FakePushService) -> None:
        self.id = uuid.uuid4().hex
        self.keys = BrowserKeys.new()
        self.endpoint = f"{service.url}/push/{self.id}"

    def as_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "expirationTime": None,
            "keys": {"p256dh": self.keys.p256dh, "auth": self.keys.auth_b64},
        }


class FakePushService:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._subs: dict[str, Subscription] = {}
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._default: dict[str, Reply] = {}
        self.default_reply = Reply()
        self.chooser: Callable[[Subscription], Reply] | None = None  # picks each reply (fault injection)
        self.received: list[Received] = []
        self.errors: list[str] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._cond = threading.Condition(self._lock)
        service = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                service._handle(self)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._server.handle_error = self._connection_error  # type: ignore[method-assign]
        self.port = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    # --- test-facing ---------------------------------------------------------------------

    def subscribe(self) -> Subscription:
        sub = Subscription(self)
        with self._lock:
            self._subs[sub.id] = sub
        return sub

    def script(self, sub: Subscription, *replies: Reply) -> None:
        """Answer the next requests for ``sub`` with ``replies``, in order, then the default."""
        with self._lock:
            self._scripts[sub.id].extend(replies)

    def always(self, sub: Subscription, reply: Reply) -> None:
        with self._lock:
            self._default[sub.id] = reply

    def for_sub(self, sub: Subscription, status: int | None = 201) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.sub_id == sub.id and (status is None or r.status == status)]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            return True

    def wait_count(self, sub: Subscription, n: int, status: int | None = 201, timeout: float = 10.0) -> list[Received]:
        def enough() -> bool:
            return len([r for r in self.received if r.sub_id == sub.id and (status is None or r.status == status)]) >= n

        assert self.wait_for(enough, timeout), f"expected {n} pushes, got {len(self.for_sub(sub, status))}"
        return self.for_sub(sub, status)

    # --- server side ---------------------------------------------------------------------

    @staticmethod
    def _connection_error(request: Any, client_address: Any) -> None:
        """A sender killed mid-request resets its connections: expected in crash tests, not news."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            ThreadingHTTPServer.handle_error(None, request, client_address)  # type: ignore[arg-type]

    def _reject(self, h: BaseHTTPRequestHandler, status: int, why: str) -> None:
        with self._cond:
            self.errors.append(why)
            self._cond.notify_all()
        h.send_response(status)
        h.send_header("Content-Length", str(len(why)))
        h.end_headers()
        h.wfile.write(why.encode())

    def _handle(self, h: BaseHTTPRequestHandler) -> None:
        length = int(h.headers.get("Content-Length", "0"))
        body = h.rfile.read(length)
        parts = h.path.strip("/").split("/")
        with self._lock:
            sub = self._subs.get(parts[1]) if len(parts) == 2 and parts[0] == "push" else None
            reply = None
            if sub is not None:
                queue = self._scripts[sub.id]
                if queue:
                    reply = queue.popleft()
                elif sub.id in self._default:
                    reply = self._default[sub.id]
                else:
                    reply = self.chooser(sub) if self.chooser is not None else self.default_reply
        if sub is None or reply is None:
            return self._reject(h, 404, "no such subscription")
        now = time.time()
        try:
            claims = verify_vapid(h.headers.get("Authorization", ""), self.url, now)
        except VapidError as exc:
            return self._reject(h, 401, f"VAPID: {exc}")
        if h.headers.get("TTL") is None or not h.headers["TTL"].isdigit():
            return self._reject(h, 400, "TTL header missing")
        topic = h.headers.get("Topic")
        if topic is not None and not TOPIC.fullmatch(topic):  # RFC 8030 §5.4
            return self._reject(h, 400, "Topic must be at most 32 characters of URL-safe base64")
        if h.headers.get("Content-Encoding") != "aes128gcm":
            return self._reject(h, 400, "Content-Encoding must be aes128gcm")
        if len(body) > 4096:
            return self._reject(h, 413, "body over 4096 bytes")
        try:
            plaintext = decrypt(body, sub.keys.private, sub.keys.auth)
            payload = json.loads(plaintext)
        except (DecryptError, ValueError) as exc:
            return self._reject(h, 400, f"cannot decrypt: {exc!r}")
        with self._lock:
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        if reply.delay:
            time.sleep(reply.delay)
        with self._lock:
            self.in_flight -= 1
        record = Received(
            sub.id, now, reply.status, payload, len(plaintext), claims, dict(h.headers), plaintext, h.client_address[1]
        )
        with self._cond:
            self.received.append(record)
            self._cond.notify_all()
        try:
            h.send_response(reply.status)
            for k, v in reply.headers.items():
                h.send_header(k, v)
            h.send_header("Content-Length", str(len(reply.body)))
            h.end_headers()
            h.wfile.write(reply.body)
        except OSError:
            pass
