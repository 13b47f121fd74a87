"""Abuse resistance of the public API: rate limits, caps, slow clients, gateway keys, signed subscriptions."""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.nep413 import b58decode, b58encode, signed_digest
from gateway.ratelimit import RateLimiter
from tests.conftest import RunningGateway
from tests.fakepush import FakePushService
from tests.fakesources import FakeNearRpc

Start = Callable[..., RunningGateway]


def stream_count(gw: RunningGateway) -> int:
    return int(gw.query("SELECT count(*) FROM streams")[0][0])


# --- rate limits -----------------------------------------------------------------------------


def test_token_bucket_refills_and_keeps_a_bounded_number_of_clients() -> None:
    limiter = RateLimiter(rate=2.0, burst=3, max_keys=100)
    assert [limiter.take("a", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.take("a", 0.0) == pytest.approx(0.5)  # one token every 0.5 s
    assert limiter.take("a", 0.5) == 0.0
    assert limiter.take("b", 0.5) == 0.0  # another client has its own bucket
    for i in range(1000):
        limiter.take(f"sprayed-{i}", 1.0)
    assert len(limiter) == 100
    assert RateLimiter(rate=0, burst=1, max_keys=10).take("x", 0.0) == 0.0  # rate 0 = off


def test_rate_limit_per_client_ip_answers_429_with_retry_after(start_gateway: Start) -> None:
    gw = start_gateway(limits={"per_ip_rate": 1.0, "per_ip_burst": 3})
    alice = {"X-Forwarded-For": "203.0.113.7"}  # from 127.0.0.1, a trusted proxy by default
    assert [gw.http.get("/vapid-public-key", headers=alice).status_code for _ in range(3)] == [200] * 3
    r = gw.http.get("/vapid-public-key", headers=alice)
    assert r.status_code == 429
    assert r.headers["Retry-After"] == "1"
    assert r.json()["code"] == "rate_limited" and r.json()["statusCode"] == 429
    r = gw.post("/subscriptions/create", {"accountId": "x"}, headers=alice)
    assert r.status_code == 429  # refused before the body is even read
    assert gw.http.get("/vapid-public-key", headers={"X-Forwarded-For": "198.51.100.9"}).status_code == 200
    assert all(gw.http.get("/healthz", headers=alice).status_code == 200 for _ in range(5))  # probes: unlimited
    gw.ingest([])  # POST /events has its token, not a rate limit
    time.sleep(1.1)
    assert gw.http.get("/vapid-public-key", headers=alice).status_code == 200


def test_rate_limit_per_frontend_origin_and_429_readable_by_browsers(start_gateway: Start) -> None:
    busy = {"origin": "https://busy.example", "key": "busy-secret-key"}
    gw = start_gateway(limits={"per_ip_rate": 0, "per_origin_rate": 0.5, "per_origin_burst": 2}, gateways=[busy])
    keyed = {"Origin": "https://busy.example", "X-Gateway-Key": busy["key"]}  # the key selects the frontend's bucket
    codes = [
        gw.http.get("/vapid-public-key", headers={**keyed, "X-Forwarded-For": f"192.0.2.{i}"}).status_code
        for i in range(3)
    ]
    assert codes == [200, 200, 429]
    r = gw.http.get("/vapid-public-key", headers=keyed)
    assert r.status_code == 429 and r.headers["Retry-After"] == "2"
    assert r.headers["access-control-allow-origin"] == "*"  # the frontend can read the 429
    assert "retry-after" in r.headers["access-control-expose-headers"].lower()
    assert gw.http.get("/vapid-public-key", headers={"Origin": "https://calm.example"}).status_code == 200
    # without its key, the frontend's Origin spends nothing of its budget: only the IP bucket applies
    assert gw.http.get("/vapid-public-key", headers={"Origin": "https://busy.example"}).status_code == 200
    assert gw.http.get("/vapid-public-key").status_code == 200


# --- caps --------------------------------------------------------------------------------------


def test_streams_per_account_and_accounts_per_endpoint_are_capped(
    start_gateway: Start, fake_push: FakePushService
) -> None:
    gw = start_gateway(limits={"max_streams_per_account": 2, "max_accounts_per_endpoint": 2})
    subs = [fake_push.subscribe() for _ in range(3)]

    def create(account: str, sub_index: int) -> Any:
        body = {"accountId": account, "gateway": "https://near.social", "subscription": subs[sub_index].as_json()}
        return gw.post("/subscriptions/create", body)

    assert create("bob.near", 0).status_code == 201
    assert create("bob.near", 1).status_code == 201
    assert create("bob.near", 0).status_code == 201  # refreshing an existing stream is not a new one
    assert create("bob.near", 2).status_code == 201  # at the account cap the least recently refreshed gives way
    bobs = {e for (e,) in gw.query("SELECT endpoint FROM streams WHERE account_id = 'bob.near'")}
    assert bobs == {subs[0].endpoint, subs[2].endpoint}
    assert create("carol.near", 0).status_code == 201
    r = create("dave.near", 0)  # accounts per endpoint stay a hard cap
    assert r.status_code == 403 and r.json()["code"] == "too_many_streams"
    assert "accounts on this endpoint" in r.json()["message"]
    assert stream_count(gw) == 3
    assert gw.post("/subscriptions/delete", {"endpoint": subs[0].endpoint, "accountId": "bob.near"}).status_code == 204
    assert create("dave.near", 0).status_code == 201  # room again


# --- slow clients ------------------------------------------------------------------------------


def _connect(gw: RunningGateway) -> socket.socket:
    host, port = gw.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection (then closed here too)."""
    data = b""
    with sock:
        while chunk := sock.recv(65536):
            data += chunk
    return data


def test_a_client_sending_its_request_head_too_slowly_is_disconnected(start_gateway: Start) -> None:
    gw = start_gateway(limits={"request_read_timeout": 0.5})
    sock = _connect(gw)
    started = time.monotonic()
    sock.sendall(b"POST /subscriptions/create HTTP/1.1\r\nHost: x\r\n")  # ...and never the rest
    assert _read_all(sock) == b""  # closed by the server
    assert 0.4 < time.monotonic() - started < 5
    silent = _connect(gw)  # connects and sends nothing at all
    assert _read_all(silent) == b""
    assert gw.http.get("/healthz").status_code == 200  # the server itself is fine


def test_a_client_sending_its_body_too_slowly_gets_408(start_gateway: Start) -> None:
    gw = start_gateway(limits={"request_read_timeout": 0.5})
    sock = _connect(gw)
    sock.sendall(b"POST /subscriptions/create HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
    sock.sendall(b"Content-Length: 100\r\n\r\n" + b'{"accountId":')
    answer = _read_all(sock).decode()
    assert answer.startswith("HTTP/1.1 408 ")
    assert json.loads(answer.split("\r\n\r\n", 1)[1])["code"] == "request_timeout"
    assert stream_count(gw) == 0


# --- gateway API keys ----------------------------------------------------------------------------

PARTNER = {"origin": "https://partner.example", "key": "partner-secret-key"}


def _create(gw: RunningGateway, fake_push: FakePushService, gateway: str, key: str | None) -> Any:
    body = {"accountId": "bob.near", "gateway": gateway, "subscription": fake_push.subscribe().as_json()}
    headers = {"X-Gateway-Key": key} if key is not None else {}
    return gw.post("/subscriptions/create", body, headers=headers)


def test_a_gateway_with_a_key_needs_it_while_others_stay_open(start_gateway: Start, fake_push: FakePushService) -> None:
    gw = start_gateway(gateways=[PARTNER])
    r = _create(gw, fake_push, "https://partner.example/app", None)
    assert r.status_code == 401 and r.json()["code"] == "invalid_gateway_key"
    assert _create(gw, fake_push, "https://partner.example/app", "wrong").status_code == 401
    assert _create(gw, fake_push, "https://partner.example/app", PARTNER["key"]).status_code == 201
    assert _create(gw, fake_push, "https://near.social", None).status_code == 201  # default: open
    r = _create(gw, fake_push, "https://near.social", "made-up-key")
    assert r.status_code == 401 and r.json()["code"] == "invalid_gateway_key"
    assert stream_count(gw) == 2
    assert PARTNER["key"] not in r.text


def test_require_gateway_key_closes_the_api_to_unknown_frontends(
    start_gateway: Start, fake_push: FakePushService
) -> None:
    gw = start_gateway(gateways=[PARTNER], security={"require_gateway_key": True})
    r = _create(gw, fake_push, "https://near.social", None)
    assert r.status_code == 401 and r.json()["code"] == "gateway_key_required"
    # the partner's key is only good for the partner's own origin
    assert _create(gw, fake_push, "https://near.social", PARTNER["key"]).status_code == 401
    sub = fake_push.subscribe()
    body = {"accountId": "bob.near", "gateway": "https://partner.example", "subscription": sub.as_json()}
    key = {"X-Gateway-Key": PARTNER["key"]}
    assert gw.post("/subscriptions/create", body, headers=key).status_code == 201
    pref = {"accountId": "bob.near", "endpoint": sub.endpoint, "dapp": "like", "block": True}
    assert gw.post("/preferences/set", pref).json()["code"] == "gateway_key_required"
    assert gw.post("/preferences/set", pref, headers=key).status_code == 201
    assert gw.post("/subscriptions/delete", {"endpoint": sub.endpoint}).status_code == 401
    assert stream_count(gw) == 1
    assert gw.post("/subscriptions/delete", {"endpoint": sub.endpoint}, headers=key).status_code == 204
    assert stream_count(gw) == 0


# --- NEP-413 signed subscriptions ----------------------------------------------------------------

RECIPIENT = "near-push-gateway"


class Wallet:
    """An account's ed25519 key, signing as a NEAR wallet's signMessage does (NEP-413)."""

    def __init__(self) -> None:
        self.key = Ed25519PrivateKey.generate()
        raw = self.key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.public_key = "ed25519:" + b58encode(raw)

    def sign(self, message: str, nonce: bytes | None = None, recipient: str = RECIPIENT) -> dict[str, Any]:
        nonce = nonce or os.urandom(32)
        signature = self.key.sign(signed_digest(message, nonce, recipient))
        return {
            "publicKey": self.public_key,
            "signature": base64.b64encode(signature).decode(),
            "nonce": base64.b64encode(nonce).decode(),
            "recipient": recipient,
            "message": message,
        }


def subscribe_message(account: str, gateway: str, endpoint: str, at: float | None = None) -> str:
    timestamp = int((at if at is not None else time.time()) * 1000)
    fields = {"action": "subscribe", "accountId": account, "gateway": gateway, "endpoint": endpoint}
    return json.dumps({**fields, "timestamp": timestamp})


@pytest.fixture
def rpc() -> Iterator[FakeNearRpc]:
    server = FakeNearRpc()
    yield server
    server.close()


def signed_gateway(start_gateway: Start, rpc: FakeNearRpc, **security: Any) -> RunningGateway:
    return start_gateway(security={"require_signed_subscriptions": True, "near_rpc_url": rpc.url, **security})


def test_base58_round_trips_and_keeps_leading_zeros() -> None:
    for raw in (b"", b"\x00", b"\x00\x00\x01\xff", os.urandom(32)):
        assert b58decode(b58encode(raw)) == raw
    assert b58encode(b"hello world") == "StV1DL6CwTryKyV"  # the Bitcoin alphabet's known value


def test_signed_subscription_is_accepted_once_and_its_key_is_asked_once(
    start_gateway: Start, rpc: FakeNearRpc, fake_push: FakePushService
) -> None:
    gw = signed_gateway(start_gateway, rpc)
    wallet = Wallet()
    rpc.add_key("alice.near", wallet.public_key)
    sub = fake_push.subscribe()
    body = {"accountId": "alice.near", "gateway": "https://near.social", "subscription": sub.as_json()}
    signed = wallet.sign(subscribe_message("alice.near", "https://near.social", sub.endpoint))
    assert gw.post("/subscriptions/create", {**body, "signed": signed}).status_code == 201
    assert stream_count(gw) == 1
    assert rpc.requests[0]["params"] == {
        "request_type": "view_access_key",
        "finality": "final",
        "account_id": "alice.near",
        "public_key": wallet.public_key,
    }
    r = gw.post("/subscriptions/create", {**body, "signed": signed})  # the same signed message again
    assert r.status_code == 401 and r.json()["code"] == "signature_replayed"
    fresh = wallet.sign(subscribe_message("alice.near", "https://near.social", sub.endpoint))
    assert gw.post("/subscriptions/create", {**body, "signed": fresh}).status_code == 201
    assert len(rpc.requests) == 1  # the key's answer is cached


@pytest.mark.parametrize(
    ("case", "code"),
    [
        ("missing", "signature_required"),
        ("other_endpoint", "signature_mismatch"),
        ("other_account", "signature_mismatch"),
        ("other_gateway", "signature_mismatch"),
        ("tampered", "invalid_signature"),
        ("wrong_recipient", "invalid_signature"),
        ("expired", "signature_expired"),
        ("future", "signature_expired"),
        ("garbage_key", "invalid_signature"),
        ("short_signature", "invalid_signature"),
        ("not_json", "invalid_signature"),
        ("key_not_on_account", "key_not_owned"),
        ("unknown_account", "key_not_owned"),
        ("function_call_key", "key_not_owned"),
        ("nan_timestamp", "invalid_signature"),  # NaN is never "too old": it would never expire (r13)
        ("float_timestamp", "invalid_signature"),
    ],
)
def test_bad_signed_subscriptions_are_refused_and_store_nothing(
    start_gateway: Start, rpc: FakeNearRpc, fake_push: FakePushService, case: str, code: str
) -> None:
    gw = signed_gateway(start_gateway, rpc)
    wallet, stranger = Wallet(), Wallet()
    rpc.add_key("alice.near", wallet.public_key)
    rpc.add_key("alice.near", "ed25519:" + b58encode(b"\x01" * 32))
    sub = fake_push.subscribe()
    body: dict[str, Any] = {"accountId": "alice.near", "gateway": "https://near.social", "subscription": sub.as_json()}
    message = subscribe_message("alice.near", "https://near.social", sub.endpoint)
    signed = wallet.sign(message)
    if case == "missing":
        signed = None
    elif case == "other_endpoint":
        signed = wallet.sign(subscribe_message("alice.near", "https://near.social", fake_push.subscribe().endpoint))
    elif case == "other_account":
        signed = wallet.sign(subscribe_message("mallory.near", "https://near.social", sub.endpoint))
    elif case == "other_gateway":
        signed = wallet.sign(subscribe_message("alice.near", "https://evil.example", sub.endpoint))
    elif case == "tampered":
        signed["message"] = message.replace('"subscribe"', '"subscribe" ')
    elif case == "wrong_recipient":
        signed = wallet.sign(message, recipient="another-app")
        signed["recipient"] = RECIPIENT
    elif case == "expired":
        signed = wallet.sign(subscribe_message("alice.near", "https://near.social", sub.endpoint, time.time() - 600))
    elif case == "future":
        signed = wallet.sign(subscribe_message("alice.near", "https://near.social", sub.endpoint, time.time() + 600))
    elif case == "garbage_key":
        signed["publicKey"] = "secp256k1:abc"
    elif case == "short_signature":
        signed["signature"] = base64.b64encode(b"x" * 10).decode()
    elif case == "not_json":
        signed = wallet.sign("please subscribe me")
    elif case == "key_not_on_account":
        signed = stranger.sign(message)
    elif case == "unknown_account":
        body["accountId"] = "nobody.near"
        signed = wallet.sign(subscribe_message("nobody.near", "https://near.social", sub.endpoint))
    elif case == "function_call_key":
        rpc.add_key("alice.near", wallet.public_key, {"FunctionCall": {"receiver_id": "social.near"}})
    elif case in ("nan_timestamp", "float_timestamp"):
        stamp = "NaN" if case == "nan_timestamp" else f"{time.time() * 1000 + 0.5}"
        signed = wallet.sign(message.rsplit('"timestamp": ', 1)[0] + f'"timestamp": {stamp}}}')
    if signed is not None:
        body["signed"] = signed
    r = gw.post("/subscriptions/create", body)
    assert r.status_code == 401, r.text
    assert r.json()["code"] == code
    assert stream_count(gw) == 0


def test_function_call_keys_can_be_allowed(start_gateway: Start, rpc: FakeNearRpc, fake_push: FakePushService) -> None:
    gw = signed_gateway(start_gateway, rpc, allow_function_call_keys=True)
    wallet = Wallet()
    rpc.add_key("alice.near", wallet.public_key, {"FunctionCall": {"receiver_id": "social.near"}})
    sub = fake_push.subscribe()
    signed = wallet.sign(subscribe_message("alice.near", "https://near.social", sub.endpoint))
    body = {"accountId": "alice.near", "gateway": "https://near.social", "subscription": sub.as_json()}
    assert gw.post("/subscriptions/create", {**body, "signed": signed}).status_code == 201


def test_rpc_down_answers_503_and_the_signed_message_stays_usable(
    start_gateway: Start, rpc: FakeNearRpc, fake_push: FakePushService
) -> None:
    gw = signed_gateway(start_gateway, rpc)
    wallet = Wallet()
    rpc.add_key("alice.near", wallet.public_key)
    rpc.down = True
    sub = fake_push.subscribe()
    signed = wallet.sign(subscribe_message("alice.near", "https://near.social", sub.endpoint))
    body = {
        "accountId": "alice.near",
        "gateway": "https://near.social",
        "subscription": sub.as_json(),
        "signed": signed,
    }
    r = gw.post("/subscriptions/create", body)
    assert r.status_code == 503 and r.json()["code"] == "rpc_unavailable"
    assert stream_count(gw) == 0
    rpc.down = False
    assert gw.post("/subscriptions/create", body).status_code == 201  # the nonce was not spent


# --- what logs and errors never show -------------------------------------------------------------


def test_logs_and_errors_never_show_keys_tokens_or_full_endpoints(
    start_gateway: Start, fake_push: FakePushService, caplog: pytest.LogCaptureFixture
) -> None:
    from tests.conftest import INGEST_TOKEN, row
    from tests.fakepush import Reply

    caplog.set_level("DEBUG")
    gw = start_gateway(gateways=[PARTNER], push={"retry_initial_delay": 0.1, "give_up_after": 0.5})
    subs = [fake_push.subscribe() for _ in range(5)]
    replies = [Reply(410), Reply(401), Reply(503), Reply(413), Reply(400, body=b"bad")]
    answers = []
    for i, (sub, reply) in enumerate(zip(subs, replies, strict=True)):
        fake_push.always(sub, reply)
        body = {"accountId": f"u{i}.near", "gateway": "https://near.social", "subscription": sub.as_json()}
        answers.append(gw.post("/subscriptions/create", body))
    gw.ingest([row(n, f"u{n}.near") for n in range(5)])
    bad = subs[0].as_json() | {"endpoint": subs[0].endpoint.replace("127.0.0.1", "169.254.169.254")}
    answers.append(
        gw.post("/subscriptions/create", {"accountId": "x.near", "gateway": "https://a.b", "subscription": bad})
    )
    answers.append(gw.post("/subscriptions/delete", {"endpoint": fake_push.subscribe().endpoint}))
    answers.append(gw.post("/subscriptions/create", {"accountId": "x.near"}, headers={"X-Gateway-Key": "guess"}))
    answers.append(gw.http.post("/events", json=[], headers={"Authorization": "Bearer wrong-token"}))
    deadline = time.monotonic() + 15
    while gw.query("SELECT count(*) FROM deliveries WHERE status = 'pending'")[0][0] and time.monotonic() < deadline:
        time.sleep(0.1)
    statuses = {r[0] for r in gw.query("SELECT status FROM deliveries")}
    assert {"gone", "rejected", "dead"} <= statuses  # the failure paths were really taken and logged
    secrets = [INGEST_TOKEN, PARTNER["key"], "wrong-token", "PRIVATE KEY"]
    for sub in subs:
        secrets += [sub.id, sub.keys.p256dh, sub.keys.auth_b64]
    shown = [r.getMessage() for r in caplog.records] + [a.text for a in answers]
    logged = " ".join(shown)
    assert "subscription gone" in logged and "rejected our VAPID" in logged  # those paths did log
    for text in shown:
        for secret in secrets:
            assert secret not in text, f"{secret[:6]}… shown in: {text[:200]}"
