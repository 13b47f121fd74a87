"""The operators' jobs, shared by the admin API and the CLI: views that never show a full
endpoint or keys, the test push, and the dashboard's overview."""

from __future__ import annotations

import json
import time
import weakref
from collections.abc import Callable
from typing import Any

from gateway.dispatcher import Sender
from gateway.endpoints import redact
from gateway.exceptions import StoreUnavailable
from gateway.store.base import DeadLetter, FunnelRow, Store, StreamInfo
from gateway.webpush import Verdict

OVERVIEW_WINDOW = 3600.0  # seconds of history the dashboard shows
FUNNEL_WINDOW = 86400.0  # seconds of sent pushes and receipts the dashboard's funnel counts
FUNNEL_ROWS = 20  # (type, push service) rows it shows, most sent first
FUNNEL_REFRESH = 60.0  # seconds the funnel is reused between reads
TEST_TAG = "gateway-test"


def stream_view(info: StreamInfo) -> dict[str, Any]:
    s = info.stream
    return {
        "id": s.id,
        "accountId": s.account_id,
        "gateway": s.gateway,
        "endpoint": redact(s.endpoint),
        "endpointHash": s.endpoint_hash,
        "muted": list(info.muted),
        "createdAt": info.created_at,
        "updatedAt": info.updated_at,
    }


def dead_letter_view(d: DeadLetter) -> dict[str, Any]:
    return {
        "id": d.delivery_id,
        "eventKey": d.event_key,
        "endpointHash": d.endpoint_hash,
        "accountId": d.account_id,
        "status": d.status,
        "httpStatus": d.http_status,
        "reason": d.reason,
        "attempts": d.attempts,
        "createdAt": d.created_at,
        "finishedAt": d.finished_at,
    }


def test_payload(account_id: str, gateway: str) -> bytes:
    return json.dumps(
        {
            "title": "Test notification",
            "body": f"Notifications for {account_id} reach this browser.",
            "url": gateway,
            "tag": TEST_TAG,
            "receiver": account_id,
            "valueType": "test",
        },
        separators=(",", ":"),
    ).encode()


async def send_test(store: Store, sender: Sender, account_id: str) -> list[dict[str, Any]]:
    """A test push to every stream of the account; each push service's answer, per stream."""
    results = []
    for info in await store.list_streams(account_id=account_id, limit=1000):
        s = info.stream
        answer = await sender.post(sender.seal(s.endpoint, s.p256dh, s.auth, test_payload(account_id, s.gateway)))
        if answer.verdict is Verdict.GONE:  # as the dispatcher would: the browser unsubscribed
            await store.delete_streams(s.endpoint)
        results.append(
            {
                "streamId": s.id,
                "endpoint": redact(s.endpoint),
                "status": answer.status,
                "verdict": answer.verdict.value,
                "detail": answer.detail,
            }
        )
    return results


# store -> (when, rows): a day moves slowly. Weak: a closed store's entry goes with it.
_funnels: weakref.WeakKeyDictionary[Store, tuple[float, list[FunnelRow]]] = weakref.WeakKeyDictionary()


async def _funnel(store: Store, now: float) -> list[FunnelRow]:
    """The last day's funnel, read at most once a FUNNEL_REFRESH (it walks a day of pushes: 0.36 s at
    300,000 on SQLite), however often dashboards refresh."""
    cached = _funnels.get(store)
    if cached is None or now - cached[0] >= FUNNEL_REFRESH or now < cached[0]:
        cached = _funnels[store] = (now, await store.funnel(now - FUNNEL_WINDOW))
    return cached[1]


async def overview(
    store: Store, watcher_states: Callable[[], dict[str, dict[str, Any]]], now: float | None = None
) -> dict[str, Any]:
    """What the dashboard shows: counts, watchers, deliveries per minute by outcome, failing hosts,
    recent dead letters."""
    now = time.time() if now is None else now
    since = now - OVERVIEW_WINDOW
    view: dict[str, Any] = {"now": now, "watchers": watcher_states()}
    try:
        counts = await store.counts()
        view |= {
            "counts": counts,
            "outboxDepth": counts.get("deliveries_pending", 0),
            "history": [
                {"minute": m, "status": status, "count": n} for m, status, n in await store.delivery_history(since)
            ],
            "failingHosts": [{"host": h, "count": n} for h, n in await store.failing_hosts(since)],
            "deadLetters": [dead_letter_view(d) for d in await store.dead_letters(20)],
            "funnel": [
                {"type": r.value_type, "host": r.push_host, "sent": r.sent, "shown": r.shown, "clicked": r.clicked}
                for r in await _funnel(store, now)
            ][:FUNNEL_ROWS],
        }
    except StoreUnavailable:  # the page still shows the outage, and what the watchers are doing
        view |= {"counts": {}, "outboxDepth": None, "history": [], "failingHosts": [], "deadLetters": [], "funnel": []}
    return view | {"store": store.status.snapshot()}
