"""The /v1 API through a running gateway: requests signed with the subscription's auth secret."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import httpx
import pytest

from gateway.v1.signing import SigningError, canonical_request, parse_time, sign
from tests.conftest import RunningGateway, row
from tests.fakepush import FakePushService
from tests.test_e2e import subscribe


def signed(
    gw: RunningGateway,
    sub: Any,
    method: str,
    target: str,
    body: Any = None,
    *,
    auth: str | None = None,
    at: float | None = None,
    headers: dict[str, str] | None = None,
) -> httpx.Response:
    """A request signed as the web client signs it, with ``sub``'s secret unless ``auth`` is given."""
    content = b"" if body is None else json.dumps(body).encode()
    stamp = str(int(time.time() if at is None else at))
    secret = auth or sub.as_json()["keys"]["auth"]
    nonce = secrets.token_urlsafe(16)
    sent = {
        "X-Push-Endpoint": sub.endpoint,
        "X-Push-Time": stamp,
        "X-Push-Nonce": nonce,
        "X-Push-Signature": sign(secret, method, target, sub.endpoint, stamp, nonce, content),
        **({"Content-Type": "application/json"} if body is not None else {}),
        **(headers or {}),
    }
    return gw.http.request(method, target, content=content, headers=sent)


def code(r: httpx.Response) -> str:
    return str(r.json()["code"])


# --- signing, pure ----------------------------------------------------------------------------------


def test_the_canonical_request_binds_method_target_time_and_body() -> None:
    auth, n, e = "_WaWEIbW1xnIE4LSaho9uw", "n" * 16, "https://fcm.googleapis.com/fcm/send/a"
    target = "/v1/inbox?account=bob.near"
    base = sign(auth, "GET", target, e, "1800000000", n)
    assert base != sign(auth, "POST", target, e, "1800000000", n)
    assert base != sign(auth, "GET", "/v1/inbox?account=carol.near", e, "1800000000", n)
    assert base != sign(auth, "GET", target, e + "b", "1800000000", n)  # another endpoint
    assert base != sign(auth, "GET", target, e, "1800000001", n)
    assert base != sign(auth, "GET", target, e, "1800000000", "m" * 16)
    assert base != sign(auth, "GET", target, e, "1800000000", n, b"{}")
    assert base != sign("AAAAAAAAAAAAAAAAAAAAAA", "GET", target, e, "1800000000", n)
    lines = canonical_request("get", "/v1/x", e, "1", n, b"").split(b"\n")
    assert lines[:6] == [b"NPG1", b"GET", b"/v1/x", e.encode(), b"1", n.encode()]


def test_a_signing_time_must_be_seconds_within_the_window() -> None:
    assert parse_time("1800000000", 1800000100.0, 300) == 1800000000.0
    for text, why in (("1800000000", "signature_expired"), ("18e8", "invalid_signature"), ("-1", "invalid_signature")):
        with pytest.raises(SigningError) as err:
            parse_time(text, 1800000400.0, 300)
        assert err.value.code == why


# --- through the gateway ----------------------------------------------------------------------------


def test_a_signed_browser_lists_its_streams_and_nobody_else_can(
    gateway: RunningGateway, fake_push: FakePushService
) -> None:
    sub = subscribe(gateway, fake_push, "bob.near")
    subscribe(gateway, fake_push, "carol.near", sub=sub)
    other = subscribe(gateway, fake_push, "dave.near")
    r = signed(gateway, sub, "GET", "/v1/streams")
    assert r.status_code == 200, r.text
    assert [s["accountId"] for s in r.json()["streams"]] == ["bob.near", "carol.near"]
    assert signed(gateway, other, "GET", "/v1/streams").json()["streams"][0]["accountId"] == "dave.near"


def test_unsigned_wrongly_signed_stale_replayed_and_unknown_requests_are_refused(
    gateway: RunningGateway, fake_push: FakePushService
) -> None:
    sub = subscribe(gateway, fake_push, "bob.near")
    other = subscribe(gateway, fake_push, "carol.near")
    assert code(gateway.http.get("/v1/streams")) == "signature_required"
    r = signed(gateway, sub, "GET", "/v1/streams", auth=other.as_json()["keys"]["auth"])  # another stream's secret
    assert r.status_code == 401 and code(r) == "invalid_signature"
    r = signed(gateway, sub, "GET", "/v1/streams", at=time.time() - 600)
    assert r.status_code == 401 and code(r) == "signature_expired"
    r = signed(gateway, sub, "GET", "/v1/streams", at=time.time() + 600)
    assert r.status_code == 401 and code(r) == "signature_expired"
    stranger = fake_push.subscribe()  # holds a real secret, but no stream
    assert code(signed(gateway, stranger, "GET", "/v1/streams")) == "unknown_subscription"
    # the very same request twice: the second is a replay
    stamp, nonce = str(int(time.time())), secrets.token_urlsafe(16)
    headers = {
        "X-Push-Endpoint": sub.endpoint,
        "X-Push-Time": stamp,
        "X-Push-Nonce": nonce,
        "X-Push-Signature": sign(sub.as_json()["keys"]["auth"], "GET", "/v1/streams", sub.endpoint, stamp, nonce, b""),
    }
    assert gateway.http.get("/v1/streams", headers=headers).status_code == 200
    again = gateway.http.get("/v1/streams", headers=headers)
    assert again.status_code == 401 and code(again) == "signature_replayed"
    # a signature for one target does not open another
    headers["X-Push-Nonce"] = nonce = secrets.token_urlsafe(16)
    headers["X-Push-Signature"] = sign(
        sub.as_json()["keys"]["auth"], "GET", "/v1/streams", sub.endpoint, stamp, nonce, b""
    )
    assert code(gateway.http.get("/v1/inbox?account=bob.near", headers=headers)) == "invalid_signature"


def test_the_inbox_lists_an_accounts_notifications_newest_first_with_links_for_this_browser(
    gateway: RunningGateway, fake_push: FakePushService
) -> None:
    sub = subscribe(gateway, fake_push, "bob.near")  # gateway https://near.social
    gateway.ingest([row(1), row(2, value_type="comment", initiatedBy="carol.near")])
    r = signed(gateway, sub, "GET", "/v1/inbox?account=bob.near")
    assert r.status_code == 200, r.text
    items = r.json()["items"]
    assert [(i["row"]["id"], i["type"], i["read"]) for i in items] == [(2, "comment", False), (1, "like", False)]
    assert items[1]["title"] == "New like" and items[1]["body"] == "alice.near liked your post"
    assert items[1]["url"].startswith("https://near.social/mob.near/widget/MainPage.N.Post.Page")
    assert r.json()["next"] is None
    other = subscribe(gateway, fake_push, "carol.near")
    r = signed(gateway, other, "GET", "/v1/inbox?account=bob.near")  # not an account it has a stream for
    assert r.status_code == 403 and code(r) == "not_your_account"


def test_the_inbox_pages_across_a_thousand_items_by_cursor(gateway: RunningGateway, fake_push: FakePushService) -> None:
    sub = subscribe(gateway, fake_push, "bob.near")
    gateway.post("/preferences/set", {"accountId": "bob.near", "endpoint": sub.endpoint, "dapp": "like", "block": True})
    for start in range(0, 1000, 500):  # muted: in the inbox, not pushed
        gateway.ingest([row(n) for n in range(start + 1, start + 501)])
    seen: list[int] = []
    target = "/v1/inbox?account=bob.near&limit=200"
    pages = 0
    while True:
        r = signed(gateway, sub, "GET", target)
        assert r.status_code == 200, r.text
        seen += [i["row"]["id"] for i in r.json()["items"]]
        pages += 1
        if r.json()["next"] is None:
            break
        target = f"/v1/inbox?account=bob.near&limit=200&cursor={r.json()['next']}"
    assert seen == list(range(1000, 0, -1)) and pages == 5
    assert code(signed(gateway, sub, "GET", "/v1/inbox?account=bob.near&cursor=bm9wZQ")) == "invalid_cursor"
    assert fake_push.for_sub(sub) == []


def test_unread_counts_follow_mark_read_for_this_browser_only(
    gateway: RunningGateway, fake_push: FakePushService
) -> None:
    phone = subscribe(gateway, fake_push, "bob.near")
    laptop = subscribe(gateway, fake_push, "bob.near")
    gateway.ingest([row(n) for n in range(1, 6)])

    def unread(sub: Any) -> int:
        r = signed(gateway, sub, "GET", "/v1/inbox/unread?account=bob.near")
        assert r.status_code == 200, r.text
        return int(r.json()["unread"])

    assert unread(phone) == unread(laptop) == 5
    ids = [i["id"] for i in signed(gateway, phone, "GET", "/v1/inbox?account=bob.near").json()["items"]]
    r = signed(gateway, phone, "POST", "/v1/inbox/read", {"accountId": "bob.near", "ids": ids[:2]})
    assert r.status_code == 204, r.text
    assert unread(phone) == 3 and unread(laptop) == 5
    assert (
        signed(gateway, phone, "POST", "/v1/inbox/read", {"accountId": "bob.near", "upTo": ids[3]}).status_code == 204
    )
    assert unread(phone) == 1  # the middle one is still unread
    assert signed(gateway, laptop, "POST", "/v1/inbox/read", {"accountId": "bob.near", "all": True}).status_code == 204
    assert unread(laptop) == 0 and unread(phone) == 1
    r = signed(gateway, phone, "POST", "/v1/inbox/read", {"accountId": "bob.near"})
    assert r.status_code == 400 and code(r) == "nothing_to_mark"
    r = signed(gateway, phone, "POST", "/v1/inbox/read", {"accountId": "carol.near", "all": True})
    assert r.status_code == 403 and code(r) == "not_your_account"


def test_a_polled_read_answers_304_until_it_changes(gateway: RunningGateway, fake_push: FakePushService) -> None:
    sub = subscribe(gateway, fake_push, "bob.near")
    gateway.ingest([row(1)])
    first = signed(gateway, sub, "GET", "/v1/inbox/unread?account=bob.near")
    tag = first.headers["ETag"]
    same = signed(gateway, sub, "GET", "/v1/inbox/unread?account=bob.near", headers={"If-None-Match": tag})
    assert same.status_code == 304 and same.headers["ETag"] == tag and same.content == b""
    gateway.ingest([row(2)])
    changed = signed(gateway, sub, "GET", "/v1/inbox/unread?account=bob.near", headers={"If-None-Match": tag})
    assert changed.status_code == 200 and changed.json()["unread"] == 2 and changed.headers["ETag"] != tag


def test_each_push_names_its_inbox_item_and_carries_the_browsers_unread_count(
    gateway: RunningGateway, fake_push: FakePushService
) -> None:
    sub = subscribe(gateway, fake_push, "bob.near")
    gateway.ingest([row(1), row(2, value_type="comment")])
    pushes = {p.payload["id"]: p.payload for p in fake_push.wait_count(sub, 2) if p.payload}
    items = {i["row"]["id"]: i["id"] for i in signed(gateway, sub, "GET", "/v1/inbox?account=bob.near").json()["items"]}
    assert pushes[1]["inboxId"] == items[1] and pushes[2]["inboxId"] == items[2]
    assert {pushes[1]["app_badge"], pushes[2]["app_badge"]} <= {1, 2}  # unread when each was sent
    r = signed(gateway, sub, "POST", "/v1/inbox/read", {"accountId": "bob.near", "all": True})
    assert r.status_code == 204
    gateway.ingest([row(3, value_type="mention")])
    third = fake_push.wait_count(sub, 3)[2].payload
    assert third is not None and third["app_badge"] == 1 and third["valueType"] == "mention"


def metric(gw: RunningGateway, line_start: str) -> float:
    for line in gw.http.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_receipts_count_each_stage_once_and_a_click_marks_the_item_read(
    gateway: RunningGateway, fake_push: FakePushService
) -> None:
    sub = subscribe(gateway, fake_push, "bob.near")
    gateway.ingest([row(1)])
    [push] = fake_push.wait_count(sub, 1)
    assert push.payload is not None
    inbox_id = push.payload["inboxId"]
    shown = {"accountId": "bob.near", "inboxId": inbox_id, "stage": "shown"}
    for _ in range(2):  # a retried receipt is the same receipt
        assert signed(gateway, sub, "POST", "/v1/receipts", shown).status_code == 204
    assert metric(gateway, 'gateway_notifications_total{stage="shown",type="like"}') == 1.0
    clicked = {**shown, "stage": "clicked"}
    assert signed(gateway, sub, "POST", "/v1/receipts", clicked).status_code == 204
    assert metric(gateway, 'gateway_notifications_total{stage="clicked",type="like"}') == 1.0
    [item] = signed(gateway, sub, "GET", "/v1/inbox?account=bob.near").json()["items"]
    assert item["read"] is True
    assert signed(gateway, sub, "GET", "/v1/inbox/unread?account=bob.near").json()["unread"] == 0


def test_forged_unknown_and_excess_receipts_are_refused_and_counted(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    gw = start_gateway(limits={"receipts_per_endpoint_burst": 3, "receipts_per_endpoint_rate": 0.01})
    sub = subscribe(gw, fake_push, "bob.near")
    other = subscribe(gw, fake_push, "carol.near")
    gw.ingest([row(1), row(2, "carol.near")])
    [push] = fake_push.wait_count(sub, 1)
    assert push.payload is not None
    body = {"accountId": "bob.near", "inboxId": push.payload["inboxId"], "stage": "shown"}
    forged = signed(gw, sub, "POST", "/v1/receipts", body, auth=other.as_json()["keys"]["auth"])
    assert forged.status_code == 401 and code(forged) == "invalid_signature"
    assert metric(gw, 'gateway_receipts_refused_total{reason="invalid_signature"}') == 1.0
    [carols] = fake_push.wait_count(other, 1)
    assert carols.payload is not None
    not_bobs = {**body, "inboxId": carols.payload["inboxId"]}  # carol's notification, reported by bob's browser
    r = signed(gw, sub, "POST", "/v1/receipts", not_bobs)
    assert r.status_code == 400 and code(r) == "unknown_notification"
    assert metric(gw, 'gateway_receipts_refused_total{reason="unknown_notification"}') == 1.0
    statuses = [signed(gw, sub, "POST", "/v1/receipts", body).status_code for _ in range(3)]
    assert statuses == [204, 204, 429]  # a burst of 3 (the unknown one took a token too)
    limited = signed(gw, sub, "POST", "/v1/receipts", body)
    assert limited.status_code == 429 and code(limited) == "rate_limited" and int(limited.headers["Retry-After"]) >= 1
    assert metric(gw, 'gateway_receipts_refused_total{reason="rate_limited"}') == 2.0
    assert signed(gw, other, "POST", "/v1/receipts", {**not_bobs, "accountId": "carol.near"}).status_code == 204


# --- streams and preferences through /v1; what needs proof of the account ----------------------------


def create_body(sub: Any, account: str = "alice.near", signed: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"accountId": account, "gateway": "https://near.social", "subscription": sub.as_json()}
    return {**body, "signed": signed} if signed else body


def test_a_browser_creates_and_deletes_its_own_stream_signed_with_its_secret(
    gateway: RunningGateway, fake_push: FakePushService
) -> None:
    sub = fake_push.subscribe()
    r = signed(gateway, sub, "POST", "/v1/streams", create_body(sub))
    assert r.status_code == 201 and r.json() == {
        "accountId": "alice.near",
        "gateway": "https://near.social",
        "signed": False,
    }
    assert signed(gateway, sub, "POST", "/v1/streams", create_body(sub)).status_code == 200  # a refresh
    stranger = fake_push.subscribe()  # signs with its own secret for another endpoint
    r = signed(gateway, stranger, "POST", "/v1/streams", create_body(sub))
    assert r.status_code == 401 and code(r) == "invalid_signature"
    assert signed(gateway, sub, "DELETE", "/v1/streams/alice.near").status_code == 204
    assert gateway.query("SELECT * FROM streams") == []


def test_account_wide_changes_need_a_stream_created_with_the_accounts_signature(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    from tests.fakesources import FakeNearRpc
    from tests.test_hardening import Wallet, subscribe_message

    rpc = FakeNearRpc()
    try:
        gw = start_gateway(security={"near_rpc_url": rpc.url})
        wallet = Wallet()
        rpc.add_key("alice.near", wallet.public_key)
        owner, squatter, laptop = fake_push.subscribe(), fake_push.subscribe(), fake_push.subscribe()
        proof = wallet.sign(subscribe_message("alice.near", "https://near.social", owner.endpoint))
        r = signed(gw, owner, "POST", "/v1/streams", create_body(owner, signed=proof))
        assert r.status_code == 201 and r.json()["signed"] is True
        for other in (squatter, laptop):  # anyone may register a stream for alice.near, unsigned
            assert signed(gw, other, "POST", "/v1/streams", create_body(other)).status_code == 201
        mute = {"accountId": "alice.near", "type": "like", "muted": True, "scope": "account"}
        r = signed(gw, squatter, "PUT", "/v1/preferences/mutes", mute)
        assert r.status_code == 403 and code(r) == "account_proof_required"
        r = signed(gw, squatter, "DELETE", "/v1/accounts/alice.near/streams")
        assert r.status_code == 403 and code(r) == "account_proof_required"
        r = signed(gw, squatter, "POST", "/v1/inbox/read", {"accountId": "alice.near", "all": True, "scope": "account"})
        assert r.status_code == 403 and code(r) == "account_proof_required"
        # what only changes the squatter's own view is allowed
        browser_mute = {**mute, "scope": "browser"}
        assert signed(gw, squatter, "PUT", "/v1/preferences/mutes", browser_mute).status_code == 204
        gw.ingest([row(1, "alice.near"), row(2, "alice.near", "comment")])
        fake_push.wait_count(owner, 2)
        fake_push.wait_count(laptop, 2)
        assert [p.payload["id"] for p in fake_push.wait_count(squatter, 1) if p.payload] == [2]
        # the proven owner marks all read for the account: on every browser
        r = signed(gw, owner, "POST", "/v1/inbox/read", {"accountId": "alice.near", "all": True, "scope": "account"})
        assert r.status_code == 204
        assert signed(gw, laptop, "GET", "/v1/inbox/unread?account=alice.near").json()["unread"] == 0
        assert signed(gw, owner, "PUT", "/v1/preferences/mutes", mute).status_code == 204
        assert gw.ingest([row(3, "alice.near")]).json()["skipped"] == {"blocked_by_preference": 3}
        quiet = {"accountId": "alice.near", "timeZone": "Europe/Berlin", "start": "22:00", "end": "07:00"}
        assert signed(gw, laptop, "PUT", "/v1/preferences/quiet", quiet).status_code == 204
        zones = gw.query("SELECT endpoint, quiet_zone FROM streams WHERE quiet_zone IS NOT NULL")
        assert [tuple(z) for z in zones] == [(laptop.endpoint, "Europe/Berlin")]
        # new keys on the owner's endpoint without a signature: the stream no longer proves the account
        from tests.rfc8291 import BrowserKeys

        owner.keys = BrowserKeys.new()
        assert signed(gw, owner, "POST", "/v1/streams", create_body(owner)).json()["signed"] is False
        r = signed(gw, owner, "DELETE", "/v1/accounts/alice.near/streams")
        assert r.status_code == 403 and code(r) == "account_proof_required"
        proof = wallet.sign(subscribe_message("alice.near", "https://near.social", owner.endpoint))
        assert signed(gw, owner, "POST", "/v1/streams", create_body(owner, signed=proof)).json()["signed"] is True
        assert signed(gw, owner, "DELETE", "/v1/accounts/alice.near/streams").status_code == 204
        assert gw.query("SELECT * FROM streams") == []
    finally:
        rpc.close()


def test_mark_read_up_to_a_time(gateway: RunningGateway, fake_push: FakePushService) -> None:
    sub = subscribe(gateway, fake_push, "bob.near")
    gateway.ingest([row(1)])
    [first] = signed(gateway, sub, "GET", "/v1/inbox?account=bob.near").json()["items"]
    time.sleep(0.05)
    gateway.ingest([row(2)])
    r = signed(gateway, sub, "POST", "/v1/inbox/read", {"accountId": "bob.near", "upToTime": first["createdAt"]})
    assert r.status_code == 204
    items = signed(gateway, sub, "GET", "/v1/inbox?account=bob.near").json()["items"]
    assert [(i["row"]["id"], i["read"]) for i in items] == [(2, False), (1, True)]


def test_a_stranger_registering_on_a_known_endpoint_opens_none_of_its_other_streams(
    start_gateway: Any, fake_push: FakePushService
) -> None:
    """The NEAR routes let anyone who knows an endpoint register a stream on it for another account,
    with a secret of their own: that secret must open that stream only."""
    from tests.fakesources import FakeNearRpc
    from tests.rfc8291 import BrowserKeys
    from tests.test_hardening import Wallet, subscribe_message

    rpc = FakeNearRpc()
    try:
        gw = start_gateway(security={"near_rpc_url": rpc.url})
        wallet = Wallet()
        rpc.add_key("alice.near", wallet.public_key)
        victim = fake_push.subscribe()
        proof = wallet.sign(subscribe_message("alice.near", "https://near.social", victim.endpoint))
        assert signed(gw, victim, "POST", "/v1/streams", create_body(victim, signed=proof)).json()["signed"] is True
        gw.ingest([row(1, "alice.near")])
        fake_push.wait_count(victim, 1)
        attacker = fake_push.subscribe()
        attacker.endpoint = victim.endpoint  # knows the endpoint, has its own keys
        attacker.keys = BrowserKeys.new()
        r = gw.post("/subscriptions/create", create_body(attacker, "mallory.near"))
        assert r.status_code == 201
        assert [s["accountId"] for s in signed(gw, attacker, "GET", "/v1/streams").json()["streams"]] == [
            "mallory.near"
        ]
        r = signed(gw, attacker, "GET", "/v1/inbox?account=alice.near")
        assert r.status_code == 403 and code(r) == "not_your_account"
        r = signed(gw, attacker, "DELETE", "/v1/accounts/alice.near/streams")
        assert r.status_code == 403 and code(r) == "not_your_account"
        # the real browser still holds its streams
        assert signed(gw, victim, "GET", "/v1/inbox?account=alice.near").status_code == 200
        assert [s["accountId"] for s in signed(gw, victim, "GET", "/v1/streams").json()["streams"]] == ["alice.near"]
    finally:
        rpc.close()
