"""A real browser end to end: Debian's Firefox ESR subscribes through the gateway's own page with a
real ``PushManager.subscribe()``, its push service is ours (tests/mozpush.py: Mozilla's WebPush
WebSocket protocol to the browser, RFC 8030 to the gateway), and Firefox itself decrypts what the
gateway encrypted and shows it. Driven over WebDriver BiDi (tests/bidi.py).

Chromium keeps its own tests (tests/test_browser.py): the trusted click through the notification
daemon, which Firefox's BiDi cannot reach.
"""

from __future__ import annotations

import base64
import os
import shutil
import socket
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RunningGateway, row

FIREFOX = shutil.which("firefox-esr") or "/usr/bin/firefox-esr"
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not Path(FIREFOX).exists(),
        reason="needs Debian's firefox-esr: scripts/test installs it (apt-get install firefox-esr)",
    ),
]
from tests.bidi import Firefox  # noqa: E402
from tests.mozpush import MozPushService  # noqa: E402

SHOWN = (
    "navigator.serviceWorker.ready.then(r => r.getNotifications())"
    ".then(ns => ns.map(n => ({title: n.title, body: n.body, url: n.data && n.data.url})))"
)
ENDPOINT = "navigator.serviceWorker.ready.then(r => r.pushManager.getSubscription()).then(s => s && s.endpoint)"
STATE = "document.getElementById('state').dataset.state"


@pytest.fixture
def mozpush() -> Iterator[MozPushService]:
    service = MozPushService()
    yield service
    service.close()


@pytest.fixture
def new_firefox(mozpush: MozPushService) -> Iterator[Callable[[], Firefox]]:
    started: list[Firefox] = []

    def start() -> Firefox:
        ff = Firefox(mozpush.ws_url)
        started.append(ff)
        return ff

    yield start
    for ff in started:
        ff.close()


@pytest.fixture
def firefox(new_firefox: Callable[[], Firefox]) -> Firefox:
    return new_firefox()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture
def port() -> int:
    return free_port()


@pytest.fixture
def start_gw(start_gateway: Any, mozpush: MozPushService, port: int) -> Callable[..., RunningGateway]:
    """A gateway pushing to the local push service, on one port (the page's origin) for the whole test."""

    def start(**sections: Any) -> RunningGateway:
        gateway: RunningGateway = start_gateway(
            server={"host": "127.0.0.1", "port": port},
            push={"allowed_endpoints": [mozpush.http_url + "/"]},
            matching={"max_per_endpoint_per_day": 0},
            **sections,
        )
        return gateway

    return start


@pytest.fixture
def gw(start_gw: Callable[..., RunningGateway]) -> RunningGateway:
    return start_gw()


def open_page(ff: Firefox, gw: RunningGateway) -> None:
    ff.navigate(gw.url + "/")
    ff.wait(f"{STATE} !== undefined && {STATE} !== 'working'")


def subscribe_through_the_page(ff: Firefox, gw: RunningGateway, account: str) -> str:
    open_page(ff, gw)
    ff.evaluate(f"(document.getElementById('account').value = {account!r}, true)")
    ff.click("#subscribe")
    ff.wait(f"{STATE} === 'subscribed'", timeout=30)
    endpoint: str = ff.evaluate(ENDPOINT)
    return endpoint


def streams(gw: RunningGateway) -> list[tuple[str, str]]:
    return [(r["account_id"], r["endpoint"]) for r in gw.query("SELECT account_id, endpoint FROM streams ORDER BY id")]


def acks(mozpush: MozPushService, n: int) -> list[int | None]:
    assert mozpush.wait_for(lambda: sum(m.ack is not None for m in mozpush.messages) >= n), (
        f"acks {[m.ack for m in mozpush.messages]}; posted {mozpush.posted}"
    )
    return [m.ack for m in mozpush.messages]


def test_firefox_subscribes_through_the_page_and_shows_likes_comments_and_mentions_it_decrypted(
    gw: RunningGateway, firefox: Firefox, mozpush: MozPushService
) -> None:
    endpoint = subscribe_through_the_page(firefox, gw, "bob.near")
    assert endpoint.startswith(mozpush.http_url + "/wpush/")
    [channel] = mozpush.channels.values()
    assert channel.key == base64.urlsafe_b64decode(gw.http.get("/vapid-public-key").json()["publicKey"] + "==")
    assert streams(gw) == [("bob.near", endpoint)]
    gw.ingest([row(1), row(2, value_type="comment"), row(3, value_type="mention")])
    assert acks(mozpush, 3) == [100, 100, 100]  # Firefox decrypted each one
    shown = firefox.wait(f"{SHOWN}.then(ns => ns.length === 3 && ns)")
    page = "https://near.social/mob.near/widget/MainPage.N"
    assert sorted((n["title"], n["body"], n["url"]) for n in shown) == [  # each opens its own page
        (
            "New comment",
            "alice.near commented on your post",
            f"{page}.Comment.Page?accountId=alice.near&blockHeight=130000002",
        ),
        ("New like", "alice.near liked your post", f"{page}.Post.Page?accountId=bob.near&blockHeight=129999000"),
        ("New mention", "alice.near mentioned you", f"{page}.Post.Page?accountId=bob.near&blockHeight=130000003"),
    ]
    # the payload is a declarative Web Push message: what Firefox showed is its `notification`
    [posted] = [p for p in mozpush.posted if p.status == 201][:1]
    assert posted.headers.get("Content-Encoding") == "aes128gcm" and posted.headers.get("TTL", "").isdigit()


def test_a_push_encrypted_with_a_wrong_auth_secret_is_undecryptable_to_firefox_and_shows_nothing(
    gw: RunningGateway, firefox: Firefox, mozpush: MozPushService
) -> None:
    endpoint = subscribe_through_the_page(firefox, gw, "bob.near")
    wrong = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode()
    with sqlite3.connect(gw.db_path) as db:
        db.execute("UPDATE streams SET auth = ? WHERE endpoint = ?", (wrong, endpoint))
    gw.ingest(row(1))
    assert acks(mozpush, 1) == [101]  # the browser's own decryption failed: it really decrypts
    assert firefox.evaluate(SHOWN) == []


def test_unsubscribing_stops_the_pushes_and_removes_the_stream(
    gw: RunningGateway, firefox: Firefox, mozpush: MozPushService
) -> None:
    endpoint = subscribe_through_the_page(firefox, gw, "bob.near")
    firefox.click("#unsubscribe")
    firefox.wait(f"{STATE} === 'unsubscribed'")
    assert streams(gw) == []
    assert mozpush.wait_for(lambda: not any(c.registered for c in mozpush.channels.values()))  # unregistered
    assert firefox.evaluate(ENDPOINT) is None
    assert gw.ingest(row(1)).json()["deliveries"] == 0
    assert endpoint.rsplit("/", 1)[1] in mozpush.channels


def test_two_firefox_profiles_of_one_account_each_get_their_own(
    gw: RunningGateway, new_firefox: Callable[[], Firefox], mozpush: MozPushService
) -> None:
    first, second = new_firefox(), new_firefox()
    endpoints = [subscribe_through_the_page(ff, gw, "bob.near") for ff in (first, second)]
    assert endpoints[0] != endpoints[1]
    assert sorted(streams(gw)) == sorted(("bob.near", e) for e in endpoints)
    gw.ingest(row(1))
    assert acks(mozpush, 2) == [100, 100]
    for ff in (first, second):
        [shown] = ff.wait(SHOWN)
        assert shown["title"] == "New like"


def test_a_rotated_channel_fires_pushsubscriptionchange_which_registers_again_with_the_mutes(
    gw: RunningGateway, firefox: Firefox, mozpush: MozPushService
) -> None:
    old = subscribe_through_the_page(firefox, gw, "bob.near")
    firefox.click("#types input[value='comment']")  # mute comments (the page's own checkbox)
    firefox.wait("document.getElementById('mute-state').textContent.startsWith('Muted')")
    mozpush.rotate()  # a new UAID at the next hello: Firefox drops its channels and tells the worker
    assert mozpush.wait_for(lambda: len(mozpush.channels) == 2, timeout=30), mozpush.log[-5:]
    new = firefox.wait(f"{ENDPOINT}.then(e => e !== {old!r} && e)")

    def moved() -> bool:
        return streams(gw) == [("bob.near", new)]

    for _ in range(100):
        if moved():
            break
        firefox.evaluate("new Promise(r => setTimeout(r, 100))")
    assert streams(gw) == [("bob.near", new)]
    gw.ingest([row(1, value_type="comment"), row(2)])
    assert acks(mozpush, 1) == [100]
    [shown] = firefox.wait(SHOWN)
    assert shown["title"] == "New like"  # the comment stayed muted on the new subscription


def test_a_changed_vapid_key_makes_the_page_renew_the_subscription_on_the_next_visit(
    start_gw: Callable[..., RunningGateway], firefox: Firefox, mozpush: MozPushService, tmp_path: Path
) -> None:
    first = start_gw()
    old = subscribe_through_the_page(firefox, first, "bob.near")
    firefox.click("#types input[value='comment']")  # a mute of this browser, to be carried over
    firefox.wait("document.getElementById('mute-state').textContent.startsWith('Muted')")
    first.stop()
    # The key file lost (or rotated): the gateway starts with a new key on the same database.
    second = start_gw(vapid={"private_key_file": str(tmp_path / "new_vapid.pem"), "subject": "mailto:ops@gateway.test"})
    key = base64.urlsafe_b64decode(second.http.get("/vapid-public-key").json()["publicKey"] + "==")
    open_page(firefox, second)
    firefox.wait("document.body.dataset.renewed !== undefined", timeout=30)
    new = firefox.evaluate(ENDPOINT)
    assert new != old and firefox.evaluate(STATE) == "subscribed"
    assert streams(second) == [("bob.near", new)]  # the old stream deleted, the new one registered
    assert mozpush.channels[new.rsplit("/", 1)[1]].key == key
    assert not mozpush.channels[old.rsplit("/", 1)[1]].registered  # the old subscription unsubscribed
    second.ingest([row(1, value_type="comment"), row(2)])
    assert acks(mozpush, 1) == [100]
    assert [n["title"] for n in firefox.wait(SHOWN)] == ["New like"]  # the comment stayed muted


def test_a_stream_its_push_service_refuses_is_renewed_by_the_page_on_the_next_visit(
    gw: RunningGateway, firefox: Firefox, mozpush: MozPushService
) -> None:
    old = subscribe_through_the_page(firefox, gw, "bob.near")
    mozpush.refusing.add(old.rsplit("/", 1)[1])  # 403 for every push to it, whatever the key
    gw.ingest(row(1))
    assert mozpush.wait_for(lambda: [p.status for p in mozpush.posted] == [403])
    for _ in range(100):  # recorded: the stream is marked
        if gw.query("SELECT refused_at FROM streams")[0]["refused_at"] is not None:
            break
        firefox.evaluate("new Promise(r => setTimeout(r, 50))")
    firefox.wait("import('/main.js').then(m => m.status()).then(s => s.state === 'needs renewal')")
    open_page(firefox, gw)  # the next visit: renew() replaces the subscription
    firefox.wait("document.body.dataset.renewed !== undefined", timeout=30)
    new = firefox.evaluate(ENDPOINT)
    assert new != old and streams(gw) == [("bob.near", new)]
    assert gw.query("SELECT refused_at FROM streams")[0]["refused_at"] is None
    assert firefox.evaluate(STATE) == "subscribed"
    gw.ingest(row(2))
    assert acks(mozpush, 1) == [100]
    assert [n["title"] for n in firefox.wait(SHOWN)] == ["New like"]
