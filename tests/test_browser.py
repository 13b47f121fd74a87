"""The web client in a real browser: Debian's Chromium, driven by Playwright, against a running gateway.

Pushes reach the service worker through the DevTools command ServiceWorker.deliverPushMessage (there is
no push service here) carrying the exact plaintext the dispatcher sent to the fake push service.
Notifications are shown by Chromium through a fake freedesktop notification daemon (tests/desktop.py)
and clicked through it, so the click is a real, trusted notificationclick.
"""

from __future__ import annotations

import base64
import json
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import INGEST_TOKEN, RunningGateway, row
from tests.fakepush import FakePushService
from tests.test_e2e import subscribe

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not Path(CHROMIUM).exists() or shutil.which("dbus-daemon") is None,
    reason="needs Debian's chromium and dbus-daemon: scripts/test installs them (apt-get install chromium dbus)",
)
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("dbus_next")
from tests.desktop import Desktop  # noqa: E402  (imports dbus_next)

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
POST_URL = "https://near.social/mob.near/widget/MainPage.N.Post.Page?accountId=bob.near&blockHeight=129999000"


@pytest.fixture
def desktop() -> Iterator[Desktop]:
    d = Desktop()
    yield d
    d.close()


@pytest.fixture
def browser(desktop: Desktop) -> Iterator[Any]:
    # A persistent profile: Chromium routes notification clicks to real profiles only. Its path is kept
    # short and free of the test's name (long profile paths lost notifications in getNotifications()).
    profile = tempfile.mkdtemp(prefix="chromium-")
    with sync_api.sync_playwright() as p:
        ctx = p.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, env=desktop.env, args=CHROMIUM_ARGS
        )
        # No internet here: near.social pages are answered locally so an opened tab keeps its URL.
        ctx.route(
            "https://near.social/**",
            lambda route: route.fulfill(status=200, content_type="text/html", body="<title>near.social</title>post"),
        )
        ctx.route(
            "https://near.org/**",
            lambda route: route.fulfill(status=200, content_type="text/html", body="<title>near.org</title>post"),
        )
        yield ctx
        ctx.close()
    shutil.rmtree(profile, ignore_errors=True)


def open_client(ctx: Any, gw: RunningGateway, *, grant: bool = True) -> Any:
    if grant:
        ctx.grant_permissions(["notifications"], origin=gw.url)
    page = ctx.pages[0] if ctx.pages else ctx.new_page()
    page.goto(gw.url + "/")
    page.wait_for_function("document.getElementById('state').dataset.state !== undefined")
    return page


def registration_id(ctx: Any, page: Any, origin: str) -> tuple[Any, str]:
    cdp = ctx.new_cdp_session(page)
    regs: list[dict[str, Any]] = []
    cdp.on("ServiceWorker.workerRegistrationUpdated", lambda e: regs.extend(e["registrations"]))
    cdp.send("ServiceWorker.enable")
    for _ in range(100):
        found = [r for r in regs if r["scopeURL"] == origin + "/" and not r["isDeleted"]]
        if found:
            return cdp, found[-1]["registrationId"]
        page.wait_for_timeout(50)
    raise AssertionError(f"no service worker registration for {origin}: {regs}")


def deliver(ctx: Any, page: Any, origin: str, data: str) -> None:
    page.evaluate("navigator.serviceWorker.ready.then(r => r.active.state)")
    cdp, rid = registration_id(ctx, page, origin)
    cdp.send("ServiceWorker.deliverPushMessage", {"origin": origin, "registrationId": rid, "data": data})


NOTIFICATIONS = """async () => {
    const r = await navigator.serviceWorker.ready;
    return (await r.getNotifications()).map(n => ({title: n.title, body: n.body, tag: n.tag, data: n.data}));
}"""


def wait_notifications(page: Any, done: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Poll the registration's notifications until ``done(list)`` holds."""
    for _ in range(int(timeout * 10)):
        notes: list[dict[str, Any]] = page.evaluate(NOTIFICATIONS)
        if done(notes):
            return notes
        page.wait_for_timeout(100)
    raise AssertionError(f"notifications never reached the expected state: {page.evaluate(NOTIFICATIONS)}")


def shown(page: Any, desktop: Desktop, n: int) -> list[dict[str, Any]]:
    """The registration's notifications once ``n`` are on the desktop.

    Ask only after the desktop has them: a getNotifications() racing the platform's display makes
    Chromium drop the not-yet-displayed notification from its list.
    """
    desktop.wait_shown(n)
    return wait_notifications(page, lambda notes: len(notes) >= n)


class TargetWatch:
    """Every URL a page target of the browser has had, from DevTools target events."""

    def __init__(self, ctx: Any, page: Any) -> None:
        self.urls: list[str] = []
        self._cdp = ctx.new_cdp_session(page)
        self._cdp.on("Target.targetCreated", self._seen)
        self._cdp.on("Target.targetInfoChanged", self._seen)
        self._cdp.send("Target.setDiscoverTargets", {"discover": True})

    def _seen(self, event: dict[str, Any]) -> None:
        info = event["targetInfo"]
        if info["type"] == "page":
            self.urls.append(info["url"])

    def wait_for(self, page: Any, url: str, timeout: float = 10.0) -> None:
        for _ in range(int(timeout * 20)):
            if url in self.urls:
                return
            page.wait_for_timeout(50)
        raise AssertionError(f"no page target opened {url}; saw {self.urls}")


def test_push_shows_the_dispatched_payload_and_a_click_opens_the_post(
    gateway: RunningGateway, fake_push: FakePushService, browser: Any, desktop: Desktop
) -> None:
    sub = subscribe(gateway, fake_push, "bob.near")  # gateway "https://near.social"
    gateway.ingest(row(9001, "bob.near", "like", path="bob.near/post/main", actionAtBlockHeight=129999000))
    [push] = fake_push.wait_count(sub, 1)
    payload = json.loads(push.plaintext)
    assert payload["url"] == POST_URL

    page = open_client(browser, gateway)
    deliver(browser, page, gateway.url, push.plaintext.decode())  # exactly what the dispatcher sent
    [note] = shown(page, desktop, 1)
    assert note["title"] == payload["title"] == "New like"
    assert note["body"] == payload["body"] == "alice.near liked your post"
    assert note["tag"] == payload["tag"]
    assert note["data"]["url"] == POST_URL
    assert note["data"]["payload"]["id"] == 9001 and note["data"]["payload"]["receiver"] == "bob.near"
    [on_desktop] = desktop.wait_shown(1)
    assert on_desktop["summary"] == "New like" and "alice.near liked your post" in on_desktop["body"]

    targets = TargetWatch(browser, page)
    desktop.click(on_desktop["id"])  # a real click: Chromium dispatches a trusted notificationclick
    targets.wait_for(page, POST_URL)  # a new tab navigated to the post (there is no internet to load it)
    wait_notifications(page, lambda notes: notes == [])  # the click closed the notification


def test_click_focuses_a_tab_already_on_the_url(
    gateway: RunningGateway, fake_push: FakePushService, browser: Any, desktop: Desktop
) -> None:
    # An unknown gateway's notifications open the gateway itself: here, the page already open.
    sub = fake_push.subscribe()
    r = gateway.post(
        "/subscriptions/create", {"accountId": "bob.near", "gateway": gateway.url, "subscription": sub.as_json()}
    )
    assert r.status_code == 201
    gateway.ingest(row(1))
    [push] = fake_push.wait_count(sub, 1)
    assert json.loads(push.plaintext)["url"] == gateway.url

    page = open_client(browser, gateway)
    deliver(browser, page, gateway.url, push.plaintext.decode())
    [on_desktop] = desktop.wait_shown(1)
    targets = TargetWatch(browser, page)
    pages_before = len(browser.pages)
    desktop.click(on_desktop["id"])
    wait_notifications(page, lambda notes: notes == [])  # the click was handled...
    page.wait_for_timeout(1000)
    assert len(browser.pages) == pages_before  # ...by focusing the open tab: nothing new opened
    assert [u for u in targets.urls if u != page.url] == []


def test_legacy_row_and_undecodable_payloads_still_show_a_notification(
    gateway: RunningGateway, browser: Any, desktop: Desktop
) -> None:
    page = open_client(browser, gateway)
    legacy = {
        "id": 123456,
        "blockHeight": 115000000,
        "initiatedBy": "alice.near",
        "itemType": "social",
        "message": None,
        "path": "bob.near/post/main",
        "receiver": "bob.near",
        "valueType": "like",
        "devhubPostId": None,
        "actionAtBlockHeight": 114990000,
    }
    deliver(browser, page, gateway.url, json.dumps(legacy))
    [note] = shown(page, desktop, 1)
    assert (note["title"], note["body"]) == ("New like", "alice.near liked your post")
    assert note["data"]["url"] == "https://near.org/s/p?a=bob.near&b=114990000"
    deliver(browser, page, gateway.url, "\u0000 not json {")
    deliver(browser, page, gateway.url, json.dumps({"valueType": "surprise"}))
    notes = shown(page, desktop, 3)
    assert [n["title"] for n in notes].count("New notification") == 2
    assert len(desktop.wait_shown(3)) >= 3


INIT_STUB = """
(() => {
  // No push service is reachable here, so PushManager.subscribe would never settle: stand in for it
  // with the test's subscription (real keys on the fake push service). Count permission prompts.
  window.__permissionRequests = 0;
  const ask = Notification.requestPermission.bind(Notification);
  Notification.requestPermission = (...args) => { window.__permissionRequests++; return ask(...args); };
  const SUB = %s;
  let current = null;
  PushManager.prototype.subscribe = async function () {
    current = { endpoint: SUB.endpoint, toJSON: () => SUB, unsubscribe: async () => { current = null; return true; } };
    return current;
  };
  PushManager.prototype.getSubscription = async function () { return current; };
})();
"""


def subscribe_on_page(browser: Any, gateway: RunningGateway, fake_push: FakePushService) -> tuple[Any, Any]:
    """A fake-push subscription (INIT_STUB stands in for PushManager) and the gateway's page,
    subscribed through its own form as bob.near."""
    sub = fake_push.subscribe()
    browser.add_init_script(INIT_STUB % json.dumps(sub.as_json()))
    page = open_client(browser, gateway)
    page.fill("#account", "bob.near")
    page.click("#subscribe")
    page.wait_for_function("document.getElementById('state').dataset.state !== 'working'")
    assert page.locator("#state").get_attribute("data-state") == "subscribed", page.locator("#state").inner_text()
    return sub, page


def test_page_subscribes_mutes_and_unsubscribes(
    gateway: RunningGateway, fake_push: FakePushService, browser: Any
) -> None:
    sub = fake_push.subscribe()
    browser.add_init_script(INIT_STUB % json.dumps(sub.as_json()))
    page = open_client(browser, gateway)
    assert page.evaluate("navigator.serviceWorker.ready.then(r => r.active.scriptURL)") == gateway.url + "/sw.js"
    assert page.locator("#state").get_attribute("data-state") == "unsubscribed"
    assert page.evaluate("window.__permissionRequests") == 0  # never asked without a user gesture

    page.fill("#account", "bob.near")
    page.click("#subscribe")
    page.wait_for_selector("#state[data-state=subscribed]")
    assert page.evaluate("window.__permissionRequests") == 1
    assert "bob.near" in page.locator("#state").inner_text()
    [stream] = gateway.query("SELECT account_id, gateway, endpoint FROM streams")
    assert tuple(stream) == ("bob.near", "https://near.social", sub.endpoint)

    page.check("#types input[value=like]")
    page.wait_for_selector("#mute-state:has-text('Muted Likes')")
    mutes = gateway.query("SELECT account_id, value_type FROM account_mutes")
    assert [tuple(r) for r in mutes] == [("bob.near", "like")]
    assert gateway.ingest(row(1, value_type="like")).json()["skipped"] == {"blocked_by_preference": 1}
    page.uncheck("#types input[value=like]")
    page.wait_for_selector("#mute-state:has-text('Unmuted Likes')")
    assert gateway.query("SELECT * FROM account_mutes") == []
    page.check("#types input[value=add_key]")  # the on-chain activity types are offered too
    page.wait_for_selector("#mute-state:has-text('Muted Keys added')")
    assert [tuple(r) for r in gateway.query("SELECT value_type FROM account_mutes")] == [("add_key",)]
    page.uncheck("#types input[value=add_key]")
    page.wait_for_selector("#mute-state:has-text('Unmuted Keys added')")

    page.click("#unsubscribe")
    page.wait_for_selector("#state[data-state=unsubscribed]")
    assert gateway.query("SELECT * FROM streams") == []


def test_page_shows_unsupported_and_blocked(gateway: RunningGateway, browser: Any) -> None:
    page = browser.new_page()
    page.add_init_script("delete window.PushManager;")
    page.goto(gateway.url + "/")
    page.wait_for_selector("#state[data-state=unsupported]")
    assert page.locator("#subscribe").is_disabled()
    page.close()

    page = open_client(browser, gateway, grant=False)
    cdp = browser.new_cdp_session(page)
    cdp.send(
        "Browser.setPermission", {"permission": {"name": "notifications"}, "setting": "denied", "origin": gateway.url}
    )
    page.reload()
    page.wait_for_selector("#state[data-state=blocked]")
    assert "blocked" in page.locator("#state").inner_text()
    assert page.locator("#subscribe").is_disabled()


def test_pushsubscriptionchange_registers_the_new_subscription(
    gateway: RunningGateway, fake_push: FakePushService, browser: Any
) -> None:
    old, new = fake_push.subscribe(), fake_push.subscribe()
    browser.add_init_script(INIT_STUB % json.dumps(old.as_json()))
    page = open_client(browser, gateway)
    page.fill("#account", "bob.near")
    page.click("#subscribe")
    page.wait_for_selector("#state[data-state=subscribed]")
    page.check("#types input[value=poke]")
    page.wait_for_selector("#mute-state:has-text('Muted Pokes')")
    page.fill("#quiet-start", "22:00")
    page.fill("#quiet-end", "07:00")
    page.click("#quiet-save")
    page.wait_for_selector("#quiet-state:has-text('Quiet from 22:00 to 07:00')")
    zone = page.evaluate("Intl.DateTimeFormat().resolvedOptions().timeZone")
    quiet = [tuple(r) for r in gateway.query("SELECT quiet_zone, quiet_start, quiet_end FROM streams")]
    assert quiet == [(zone, 22 * 60, 7 * 60)]  # the browser's own time zone, from Intl

    # Chromium never fires this event by itself; dispatch it in the worker as the browser would.
    [worker] = browser.service_workers
    worker.evaluate(
        """([sub, oldEndpoint]) => {
        const event = new ExtendableEvent('pushsubscriptionchange');
        Object.defineProperty(event, 'newSubscription', {value: {endpoint: sub.endpoint, toJSON: () => sub}});
        Object.defineProperty(event, 'oldSubscription', {value: {endpoint: oldEndpoint}});
        self.dispatchEvent(event);
    }""",
        [new.as_json(), old.endpoint],
    )
    page.wait_for_timeout(200)
    for _ in range(100):
        endpoints = [r[0] for r in gateway.query("SELECT endpoint FROM streams")]
        if endpoints == [new.endpoint]:
            break
        page.wait_for_timeout(50)
    assert endpoints == [new.endpoint]
    mutes = gateway.query("SELECT account_id, value_type FROM account_mutes")
    assert [tuple(r) for r in mutes] == [("bob.near", "poke")]
    for _ in range(100):  # the quiet hours came along (they go with the stream)
        quiet = [tuple(r) for r in gateway.query("SELECT quiet_zone, quiet_start, quiet_end FROM streams")]
        if quiet == [(zone, 22 * 60, 7 * 60)]:
            break
        page.wait_for_timeout(50)
    assert quiet == [(zone, 22 * 60, 7 * 60)]
    # held or not depends on the hour here: clear them so the push below goes at once
    assert gateway.post("/preferences/quiet", {"accountId": "bob.near", "endpoint": new.endpoint}).status_code == 201
    gateway.ingest(row(5, value_type="like"))
    [push] = fake_push.wait_count(new, 1)  # the gateway now pushes to the new subscription
    assert push.payload is not None and push.payload["id"] == 5


def test_pushsubscriptionchange_replaces_a_renewed_subscription_bound_to_an_old_vapid_key(
    gateway: RunningGateway, fake_push: FakePushService, browser: Any
) -> None:
    old, stale, current = fake_push.subscribe(), fake_push.subscribe(), fake_push.subscribe()
    browser.add_init_script(INIT_STUB % json.dumps(old.as_json()))
    page = open_client(browser, gateway)
    page.fill("#account", "bob.near")
    page.click("#subscribe")
    page.wait_for_selector("#state[data-state=subscribed]")
    key = gateway.http.get("/vapid-public-key").json()["publicKey"]
    # The browser renewed with the old options (another key); the worker's own subscribe() stands in
    # for the browser's and records the key it is asked for.
    [worker] = browser.service_workers
    worker.evaluate(
        """([stale, current, oldEndpoint]) => {
        self.__asked = null; self.__unsubscribed = false;
        self.registration.pushManager.subscribe = async (options) => {
          self.__asked = btoa(String.fromCharCode(...new Uint8Array(options.applicationServerKey)));
          return {endpoint: current.endpoint, toJSON: () => current};
        };
        const event = new ExtendableEvent('pushsubscriptionchange');
        Object.defineProperty(event, 'newSubscription', {value: {endpoint: stale.endpoint, toJSON: () => stale,
          options: {applicationServerKey: new Uint8Array(65).fill(4).buffer},
          unsubscribe: async () => { self.__unsubscribed = true; return true; }}});
        Object.defineProperty(event, 'oldSubscription', {value: {endpoint: oldEndpoint}});
        self.dispatchEvent(event);
    }""",
        [stale.as_json(), current.as_json(), old.endpoint],
    )
    for _ in range(100):
        endpoints = [r[0] for r in gateway.query("SELECT endpoint FROM streams")]
        if endpoints == [current.endpoint]:
            break
        page.wait_for_timeout(50)
    assert endpoints == [current.endpoint]  # neither the old nor the stale renewal
    asked = worker.evaluate("self.__asked")
    assert base64.b64decode(asked) == base64.urlsafe_b64decode(key + "=" * (-len(key) % 4))
    assert worker.evaluate("self.__unsubscribed") is True


SIGN_LIKE_A_WALLET = """async () => {
  // A NEP-413 signMessage in the page: ed25519 over sha256(borsh(tag, message, nonce, recipient, none)).
  const enc = new TextEncoder();
  const u32 = (n) => { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, n, true); return b; };
  const str = (s) => { const b = enc.encode(s); return [u32(b.length), b]; };
  window.__wallet = async ({ message, recipient, nonce }) => {
    const parts = [u32(2 ** 31 + 413), ...str(message), nonce, ...str(recipient), new Uint8Array([0])];
    const digest = await crypto.subtle.digest("SHA-256", await new Blob(parts).arrayBuffer());
    const sig = new Uint8Array(await crypto.subtle.sign({ name: "Ed25519" }, window.__key.privateKey, digest));
    return { publicKey: window.__publicKey, signature: btoa(String.fromCharCode(...sig)) };
  };
  window.__key = await crypto.subtle.generateKey({ name: "Ed25519" }, true, ["sign", "verify"]);
  return Array.from(new Uint8Array(await crypto.subtle.exportKey("raw", window.__key.publicKey)));
}"""


def test_module_subscribes_with_a_wallet_signature_and_a_gateway_key(
    start_gateway: Any, fake_push: FakePushService, browser: Any
) -> None:
    from gateway.nep413 import b58encode
    from tests.fakesources import FakeNearRpc

    rpc = FakeNearRpc()
    try:
        gw = start_gateway(
            gateways=[{"origin": "https://near.social", "key": "social-key"}],
            security={"require_signed_subscriptions": True, "require_gateway_key": True, "near_rpc_url": rpc.url},
        )
        sub = fake_push.subscribe()
        browser.add_init_script(INIT_STUB % json.dumps(sub.as_json()))
        page = open_client(browser, gw)
        public_key = "ed25519:" + b58encode(bytes(page.evaluate(SIGN_LIKE_A_WALLET)))
        page.evaluate("k => { window.__publicKey = k; }", public_key)
        rpc.add_key("alice.near", public_key)
        page.evaluate(
            """async () => {
              const m = await import("/main.js");
              await m.subscribe("alice.near", { gateway: "https://near.social", gatewayKey: "social-key",
                                                sign: window.__wallet });
            }"""
        )
        [stream] = gw.query("SELECT account_id, gateway, endpoint FROM streams")
        assert tuple(stream) == ("alice.near", "https://near.social", sub.endpoint)
        assert [r["params"]["public_key"] for r in rpc.requests] == [public_key]
        assert len(gw.query("SELECT * FROM used_nonces")) == 1
        page.evaluate("async () => (await import('/main.js')).unsubscribe()")  # sends the stored key
        assert gw.query("SELECT * FROM streams") == []
    finally:
        rpc.close()


def png_pixels(data: bytes) -> tuple[int, int, list[tuple[int, ...]]]:
    """Width, height and RGB(A) pixels of an 8-bit non-interlaced PNG (what Chromium writes)."""
    import struct
    import zlib

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        chunk = data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, color = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and color in (2, 6)
            channels = 3 if color == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        pos += 12 + length
    raw, stride, rows, prev = zlib.decompress(idat), width * channels, [], bytearray(width * channels)
    for y in range(height):
        kind, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - channels] if i >= channels else 0
            b, c = prev[i], prev[i - channels] if i >= channels else 0
            if kind == 1:
                line[i] = (line[i] + a) & 255
            elif kind == 2:
                line[i] = (line[i] + b) & 255
            elif kind == 3:
                line[i] = (line[i] + (a + b) // 2) & 255
            elif kind == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    pixels = [tuple(r[x * channels : x * channels + 3]) for r in rows for x in range(width)]
    return width, height, pixels


def test_operator_dashboard_shows_flow_failures_and_dead_letters(
    start_gateway: Any, fake_push: FakePushService, browser: Any, tmp_path: Path
) -> None:
    from tests.fakepush import Reply
    from tests.fakesources import GraphQLWsServer, wait_until

    source = GraphQLWsServer([row(n, "dave.near", blockHeight=170_000_000 + n) for n in range(1, 4)])
    try:
        watcher = {"name": "qa", "kind": "queryapi", "url": source.url, "start_block_height": 170_000_000}
        gw = start_gateway(admin={"token": "dash-token"}, watchers=[watcher], storage={"busy_timeout": 0.3})
        bob = subscribe(gw, fake_push, "bob.near")
        carol = subscribe(gw, fake_push, "carol.near")
        fake_push.always(carol, Reply(400, body=b"InvalidTokenFormat"))
        gw.ingest([row(10 + n, "bob.near", "comment") for n in range(4)] + [row(20, "carol.near")])
        comments = [p.payload["inboxId"] for p in fake_push.wait_count(bob, 4) if p.payload]
        assert wait_until(lambda: gw.query("SELECT count(*) FROM deliveries WHERE status = 'dead'")[0][0] == 1)
        # bob's service worker showed two of the comments and he clicked one (the funnel)
        from tests.test_v1 import signed

        for inbox_id, stage in ((comments[0], "shown"), (comments[1], "shown"), (comments[0], "clicked")):
            receipt = {"accountId": "bob.near", "inboxId": inbox_id, "stage": stage}
            assert signed(gw, bob, "POST", "/v1/receipts", receipt).status_code == 204

        page = browser.new_page()
        page.set_viewport_size({"width": 1280, "height": 900})
        page.goto(gw.url + "/admin")
        assert page.locator("#board").is_hidden()  # nothing shown before the token
        page.fill("#token", "dash-token")
        page.click("button[type=submit]")
        page.wait_for_selector("#status[data-state=ok]")
        assert page.locator("#outbox").inner_text() == "0"
        assert "2 streams" in page.locator("#counts").inner_text()
        assert (
            page.locator("#store-state").inner_text() == "up"
            and "0 outages" in page.locator("#store-detail").inner_text()
        )
        watcher_row = page.locator("#watchers tbody tr").first.inner_text()
        assert "qa" in watcher_row and "connected" in watcher_row and "170000003" in watcher_row
        assert fake_push.url.removeprefix("http://") in page.locator("#hosts tbody").inner_text()
        dead_row = page.locator("#deadletters tbody tr").first.inner_text()
        assert "carol.near" in dead_row and "InvalidTokenFormat" in dead_row and "400" in dead_row
        funnel_row = page.locator("#funnel tbody tr").first
        assert funnel_row.locator("td").all_inner_texts()[:5] == [
            "comment",
            fake_push.url.removeprefix("http://"),
            "4",
            "2",
            "1",
        ]
        widths = funnel_row.locator(".bar").evaluate_all("bs => bs.map(b => [b.dataset.stage, b.style.width])")
        assert widths == [["sent", "100%"], ["shown", "50%"], ["clicked", "25%"]]
        bars = page.eval_on_selector_all("#chart rect", "rs => rs.map(r => [r.dataset.status, +r.dataset.count])")
        assert sum(n for s, n in bars if s == "sent") == 4 and sum(n for s, n in bars if s == "dead") == 1

        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot), full_page=True)
        width, height, pixels = png_pixels(shot.read_bytes())
        assert width == 1280 and height >= 600
        sent_blue, dead_red = (0x2E, 0x90, 0xFA), (0xF0, 0x44, 0x38)
        assert pixels.count(sent_blue) > 50 and pixels.count(dead_red) > 20  # the bars are really drawn
        # A store outage (another process holds SQLite's write lock past the busy timeout) is on the page.
        from tests.test_outages import write_lock_held

        with write_lock_held(gw.db_path):
            assert gw.post("/events", [row(30)], headers={"Authorization": f"Bearer {INGEST_TOKEN}"}).status_code == 503
            page.reload()
            page.wait_for_selector("#store-state.bad")
            assert page.locator("#store-state").inner_text() == "unavailable"
            assert "database is locked" in page.locator("#store-detail").inner_text()

        page.evaluate("sessionStorage.setItem('adminToken', 'wrong')")
        page.reload()
        page.wait_for_selector("#status[data-state=error]")
        assert page.locator("#board").is_hidden()
        page.close()
    finally:
        source.close()


# --- Issue 16: the declarative payload, the Mute action, the reference service workers --------------


def test_the_declarative_payload_shows_and_its_mute_action_mutes_the_type_for_the_account(
    gateway: RunningGateway, fake_push: FakePushService, browser: Any, desktop: Desktop
) -> None:
    sub, page = subscribe_on_page(browser, gateway, fake_push)
    other_browser = subscribe(gateway, fake_push, "bob.near")  # the account's second browser

    gateway.ingest(row(9001, "bob.near", "like", actionAtBlockHeight=129999000))
    [push] = fake_push.wait_count(sub, 1)
    payload = json.loads(push.plaintext)
    assert payload["web_push"] == 8030 and payload["notification"]["navigate"] == POST_URL
    deliver(browser, page, gateway.url, push.plaintext.decode())
    [note] = shown(page, desktop, 1)
    assert (note["title"], note["body"]) == (payload["notification"]["title"], payload["notification"]["body"])
    assert note["title"] == "New like" and note["tag"] == payload["notification"]["tag"]
    assert note["data"]["url"] == POST_URL
    [on_desktop] = desktop.wait_shown(1)
    assert "Mute likes" in on_desktop["actions"], on_desktop["actions"]
    mute_key = on_desktop["actions"][on_desktop["actions"].index("Mute likes") - 1]  # (key, label) pairs

    targets = TargetWatch(browser, page)
    desktop.click(on_desktop["id"], mute_key)
    for _ in range(100):
        if gateway.query("SELECT * FROM account_mutes"):
            break
        page.wait_for_timeout(50)
    assert [tuple(r) for r in gateway.query("SELECT account_id, value_type FROM account_mutes")] == [
        ("bob.near", "like")
    ]
    page.wait_for_timeout(500)
    assert POST_URL not in targets.urls  # muting opened nothing
    # a later like reaches none of the account's browsers; other types still do
    later = gateway.ingest([row(9002, "bob.near", "like"), row(9003, "bob.near", "comment")]).json()
    assert later["skipped"] == {"blocked_by_preference": 2} and later["deliveries"] == 2
    assert [p.payload["id"] for p in fake_push.wait_count(other_browser, 2) if p.payload] == [9001, 9003]
    # the page's own state has the mute the notification made (its checkbox shows it)
    state = page.evaluate("caches.open('near-push').then(c => c.match('/__near-push/state')).then(r => r.json())")
    assert state["muted"] == {"bob.near/like": True}


REFERENCE_WORKERS = Path(__file__).resolve().parent / "fixtures" / "reference_sw"


@pytest.fixture
def reference_site() -> Iterator[str]:
    """The reference service workers served from an origin of their own (localhost: a secure context)."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(REFERENCE_WORKERS))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://localhost:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    ("worker", "title", "body"),
    [
        ("near_org_sw.js", "alice.near liked your post", ""),
        ("bos_sw.js", "Near Social Notification", "alice.ne... liked your post"),
    ],
)
def test_the_reference_service_workers_show_their_text_from_the_new_payload(
    gateway: RunningGateway,
    fake_push: FakePushService,
    browser: Any,
    desktop: Desktop,
    reference_site: str,
    worker: str,
    title: str,
    body: str,
) -> None:
    sub = subscribe(gateway, fake_push, "bob.near")
    gateway.ingest(row(9001, "bob.near", "like", actionAtBlockHeight=129999000))
    [push] = fake_push.wait_count(sub, 1)
    assert json.loads(push.plaintext)["web_push"] == 8030  # the new, declarative payload
    browser.grant_permissions(["notifications"], origin=reference_site)
    page = browser.new_page()
    page.goto(f"{reference_site}/near_org_sw.js")  # any page of the origin
    page.evaluate(f"navigator.serviceWorker.register('/{worker}').then(() => navigator.serviceWorker.ready)")
    deliver(browser, page, reference_site, push.plaintext.decode())
    [note] = shown(page, desktop, 1)
    assert (note["title"], note["body"]) == (title, body)
    assert note["data"]["url"] == "https://near.org/s/p?a=bob.near&b=129999000"
    if worker == "near_org_sw.js":
        assert note["tag"] == "9001"


# --- Issue 17: the inbox on the page, receipts and the badge from the service worker ---------------


def test_a_frontends_own_worker_imports_the_gateways_and_shows_its_pushes(
    gateway: RunningGateway, fake_push: FakePushService, browser: Any, desktop: Desktop, reference_site: str
) -> None:
    sub = subscribe(gateway, fake_push, "bob.near")
    gateway.ingest(row(9001, "bob.near", "like", actionAtBlockHeight=129999000))
    [push] = fake_push.wait_count(sub, 1)
    browser.grant_permissions(["notifications"], origin=reference_site)
    page = browser.new_page()
    page.goto(f"{reference_site}/near_org_sw.js")  # any page of the frontend's origin
    worker = f"/imports_gateway_sw.js?gateway={gateway.url}/"
    page.evaluate(f"navigator.serviceWorker.register('{worker}').then(() => navigator.serviceWorker.ready)")
    deliver(browser, page, reference_site, push.plaintext.decode())
    [note] = shown(page, desktop, 1)
    assert (note["title"], note["body"]) == ("New like", "alice.near liked your post")
    assert note["data"]["url"] == POST_URL and note["data"]["mute"]["type"] == "like"


def test_the_page_lists_the_inbox_and_the_worker_reports_shown_and_clicked_and_sets_the_badge(
    gateway: RunningGateway, fake_push: FakePushService, browser: Any, desktop: Desktop
) -> None:
    sub, page = subscribe_on_page(browser, gateway, fake_push)
    gateway.ingest([row(1, actionAtBlockHeight=129999000), row(2, value_type="comment", initiatedBy="carol.near")])
    pushes = {p.payload["id"]: p for p in fake_push.wait_count(sub, 2) if p.payload}

    page.evaluate("window.nearPushShowInbox()")
    page.wait_for_selector("#inbox-items li >> nth=1")
    items = page.eval_on_selector_all(
        "#inbox-items li", "ls => ls.map(l => [+l.dataset.id, l.dataset.read, l.querySelector('a').href])"
    )
    like_id = pushes[1].payload["inboxId"]  # type: ignore[index]
    comment_id = pushes[2].payload["inboxId"]  # type: ignore[index]
    assert [(i, read) for i, read, _ in items] == [(comment_id, "false"), (like_id, "false")]  # newest first
    assert dict((i, url) for i, _, url in items)[like_id] == POST_URL  # each links where its notification opens
    assert "2 unread" in page.locator("#inbox-state").inner_text()

    # No push service here: the worker's PushManager has no subscription, so give it the test's (as
    # INIT_STUB does for the page). It signs its receipts with that subscription's own secret.
    [worker] = browser.service_workers
    worker.evaluate(
        "sub => { self.registration.pushManager.getSubscription = async () => ({endpoint: sub.endpoint, "
        "toJSON: () => sub}); }",
        sub.as_json(),
    )
    deliver(browser, page, gateway.url, pushes[1].plaintext.decode())
    [on_desktop] = desktop.wait_shown(1)

    def receipts() -> list[tuple[int, str]]:
        return sorted((r[0], r[1]) for r in gateway.query("SELECT inbox_id, stage FROM receipts"))

    for _ in range(100):
        if receipts():
            break
        page.wait_for_timeout(50)
    assert receipts() == [(like_id, "shown")]
    badge = page.evaluate("caches.open('near-push').then(c => c.match('/__near-push/badge')).then(r => r.text())")
    assert int(badge) == pushes[1].payload["app_badge"] == 2  # type: ignore[index]
    state = page.evaluate("caches.open('near-push').then(c => c.match('/__near-push/state')).then(r => r.json())")
    assert "subscription" not in state and "auth" not in json.dumps(state)  # no copy of the secret

    targets = TargetWatch(browser, page)
    desktop.click(on_desktop["id"])  # a trusted click
    targets.wait_for(page, POST_URL)
    for _ in range(100):
        if (like_id, "clicked") in receipts():
            break
        page.wait_for_timeout(50)
    assert receipts() == [(like_id, "clicked"), (like_id, "shown")]
    for _ in range(100):  # the click read one: the badge shows one fewer until the next push
        badge = page.evaluate("caches.open('near-push').then(c => c.match('/__near-push/badge')).then(r => r.text())")
        if badge == "1":
            break
        page.wait_for_timeout(50)
    assert badge == "1"
    page.evaluate("window.nearPushShowInbox()")
    page.wait_for_selector(f"#inbox-items li[data-id='{like_id}'][data-read=true]")
    assert "1 unread" in page.locator("#inbox-state").inner_text()
    page.click("#mark-all-read")
    page.wait_for_selector("#inbox-state:has-text('0 unread')")


def test_a_copy_of_the_worker_without_signing_js_still_shows_every_push(
    gateway: RunningGateway, fake_push: FakePushService, browser: Any, desktop: Desktop, tmp_path: Path
) -> None:
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    (tmp_path / "sw.js").write_bytes((Path(__file__).resolve().parent.parent / "webclient" / "sw.js").read_bytes())
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    origin = f"http://localhost:{server.server_address[1]}"
    try:
        sub = subscribe(gateway, fake_push, "bob.near")
        gateway.ingest(row(9001, "bob.near", "like", actionAtBlockHeight=129999000))
        [push] = fake_push.wait_count(sub, 1)
        browser.grant_permissions(["notifications"], origin=origin)
        page = browser.new_page()
        page.goto(f"{origin}/sw.js")
        page.evaluate("navigator.serviceWorker.register('/sw.js').then(() => navigator.serviceWorker.ready)")
        deliver(browser, page, origin, push.plaintext.decode())
        [note] = shown(page, desktop, 1)
        assert (note["title"], note["data"]["url"]) == ("New like", POST_URL)
    finally:
        server.shutdown()
        server.server_close()


def test_an_inbox_answer_that_comes_late_does_not_overwrite_a_newer_one(
    gateway: RunningGateway, fake_push: FakePushService, browser: Any
) -> None:
    sub, page = subscribe_on_page(browser, gateway, fake_push)
    page.wait_for_selector("#inbox-state:has-text('Nothing yet.')")
    # The next inbox answer (nothing yet) is held back 3 s, as a slow network would.
    page.evaluate(
        """() => { const real = window.fetch; let held = false;
        window.fetch = (url, options) => {
          const answer = real(url, options);
          if (held || !String(url).includes('/v1/inbox')) return answer;
          held = true;
          return answer.then((r) => { window.__heldAnswered = true;
            return new Promise((done) => setTimeout(() => done(r), 3000)); });
        };
        window.nearPushShowInbox(); }"""
    )
    page.wait_for_function("window.__heldAnswered === true")  # answered before anything is in the inbox
    gateway.ingest([row(1), row(2, value_type="comment")])
    fake_push.wait_count(sub, 2)
    page.evaluate("window.nearPushShowInbox()")
    page.wait_for_selector("#inbox-items li >> nth=1")
    page.wait_for_timeout(3500)  # the held answer has come meanwhile
    assert page.locator("#inbox-items li").count() == 2
    assert "2 unread" in page.locator("#inbox-state").inner_text()
