"""The web client renews its streams on every page load, in Chromium (see tests/test_browser.py).

At ``max_streams_per_account`` the gateway drops the account's least recently refreshed stream, so a
real browser must keep being the most recent: each load of the page quietly POSTs
/subscriptions/create again for every stream it holds, and sets its mutes again.
"""

from __future__ import annotations

import json
import time
from typing import Any

from tests.conftest import RunningGateway, row
from tests.fakepush import FakePushService
from tests.test_browser import browser, desktop, open_client, pytestmark  # noqa: F401  (fixtures, skip marker)

# As tests/test_browser.py's INIT_STUB (no push service is reachable here), but the subscription
# outlives a reload, as a real one does.
PERSISTENT_STUB = """
(() => {
  const SUB = %s;
  const sub = () => ({ endpoint: SUB.endpoint, toJSON: () => SUB,
                       unsubscribe: async () => { localStorage.removeItem("__sub"); return true; } });
  PushManager.prototype.subscribe = async function () { localStorage.setItem("__sub", "1"); return sub(); };
  PushManager.prototype.getSubscription = async function () { return localStorage.getItem("__sub") ? sub() : null; };
})();
"""
ADMIN = {"Authorization": "Bearer renew-admin-token"}


def wait_for(page: Any, check: Any, what: str, timeout: float = 10.0) -> None:
    for _ in range(int(timeout * 20)):
        if check():
            return
        page.wait_for_timeout(50)
    raise AssertionError(f"never happened: {what}")


def reload(page: Any) -> None:
    page.reload()
    page.wait_for_selector("#state[data-state=subscribed]")  # quietly: the page shows what it showed


def streams(gw: RunningGateway) -> list[tuple[str, str, float]]:
    return [tuple(r) for r in gw.query("SELECT account_id, endpoint, updated_at FROM streams ORDER BY id")]


def test_reload_refreshes_the_stream_and_brings_it_back(
    start_gateway: Any,
    fake_push: FakePushService,
    browser: Any,  # noqa: F811
) -> None:
    gw: RunningGateway = start_gateway(admin={"token": "renew-admin-token"})
    sub = fake_push.subscribe()
    browser.add_init_script(PERSISTENT_STUB % json.dumps(sub.as_json()))
    page = open_client(browser, gw)
    page.wait_for_timeout(300)
    assert streams(gw) == []  # nothing to renew before subscribing

    page.fill("#account", "bob.near")
    page.click("#subscribe")
    page.wait_for_selector("#state[data-state=subscribed]")
    page.check("#types input[value=like]")
    page.wait_for_selector("#mute-state:has-text('Muted Likes')")
    page.click("#quiet-save")  # the default 22:00-07:00, in this browser's time zone
    page.wait_for_selector("#quiet-state:has-text('Quiet from 22:00 to 07:00')")
    [(account, endpoint, first)] = streams(gw)
    assert (account, endpoint) == ("bob.near", sub.endpoint)

    time.sleep(0.05)
    reload(page)  # a page load refreshes the stream: updated_at moves
    wait_for(page, lambda: streams(gw)[0][2] > first, "the reload refreshed the stream")
    assert [(a, e) for a, e, _ in streams(gw)] == [("bob.near", sub.endpoint)]
    page.wait_for_selector("body[data-renewed='bob.near']")  # what renew() did, for whoever asks

    # An operator deletes it (the account's mutes stay, as the NEAR server keeps them); the next page
    # load brings the stream back, still muted.
    r = gw.http.delete("/admin/api/streams", params={"account": "bob.near"}, headers=ADMIN)
    assert r.json() == {"deleted": 1}
    assert streams(gw) == []
    reload(page)
    wait_for(page, lambda: len(streams(gw)) == 1, "the reload brought the stream back")
    assert [(a, e) for a, e, _ in streams(gw)] == [("bob.near", sub.endpoint)]
    assert [tuple(r) for r in gw.query("SELECT account_id, value_type FROM account_mutes")] == [("bob.near", "like")]
    assert gw.ingest(row(1, value_type="like")).json()["skipped"] == {"blocked_by_preference": 1}
    # ...and its quiet hours, which went with the deleted stream
    wait_for(page, lambda: gw.query("SELECT quiet_start, quiet_end FROM streams")[0][0] is not None, "quiet hours back")
    assert [tuple(r) for r in gw.query("SELECT quiet_start, quiet_end FROM streams")] == [(22 * 60, 7 * 60)]


def test_a_browser_pushed_out_by_junk_streams_comes_back_on_its_next_load(
    start_gateway: Any,
    fake_push: FakePushService,
    browser: Any,  # noqa: F811
) -> None:
    gw: RunningGateway = start_gateway(limits={"max_streams_per_account": 2})
    sub = fake_push.subscribe()
    browser.add_init_script(PERSISTENT_STUB % json.dumps(sub.as_json()))
    page = open_client(browser, gw)
    page.fill("#account", "bob.near")
    page.click("#subscribe")
    page.wait_for_selector("#state[data-state=subscribed]")

    junk = [fake_push.subscribe() for _ in range(2)]  # an attacker's two newer streams push bob's out
    for j in junk:
        time.sleep(0.01)
        body = {"accountId": "bob.near", "gateway": "https://near.social", "subscription": j.as_json()}
        assert gw.post("/subscriptions/create", body).status_code == 201
    assert {e for _, e, _ in streams(gw)} == {j.endpoint for j in junk}

    reload(page)  # bob opens the page again: his stream is back, the oldest junk one gave way
    wait_for(page, lambda: sub.endpoint in {e for _, e, _ in streams(gw)}, "the reload brought bob's stream back")
    assert {e for _, e, _ in streams(gw)} == {sub.endpoint, junk[1].endpoint}
