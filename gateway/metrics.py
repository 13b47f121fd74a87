"""Prometheus metrics (prometheus-client), one registry per gateway process.

Counters and histograms are updated where things happen (dispatcher, API); gauges that describe
shared state (outbox depth, streams, watchers) are read when Prometheus scrapes, so each process
reports the database's truth and its own watchers. Every name here is listed in README (a test checks).
"""

from __future__ import annotations

import bisect
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

# Outcome label values of gateway_deliveries_total.
OUTCOMES = ("sent", "retried", "gone", "dead_lettered", "vapid_rejected", "cancelled")
_OUTCOME_OF_STATUS = {
    "sent": "sent",
    "retry": "retried",
    "gone": "gone",
    "dead": "dead_lettered",
    "rejected": "vapid_rejected",
    "cancelled": "cancelled",
}
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


class _SharedState(Collector):
    """Gauges read at scrape time: the store's counts and this process's watchers."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {}
        self.watchers: dict[str, dict[str, Any]] = {}
        self.store: dict[str, Any] = {}

    def collect(self) -> Iterable[Metric]:
        if self.store:
            up = GaugeMetricFamily("gateway_store_up", "1 while the store answers this process's calls")
            up.add_metric([], 1.0 if self.store.get("state") == "up" else 0.0)
            outages = CounterMetricFamily(
                "gateway_store_outages", "Times the store stopped answering (unavailable or full)"
            )
            outages.add_metric([], float(self.store.get("outages", 0)))
            errors = CounterMetricFamily(
                "gateway_store_errors",
                "Store calls that failed, by code (store_unavailable, storage_full, refused)",
                labels=["code"],
            )
            for code, count in dict(self.store.get("errors", {})).items():
                errors.add_metric([code], float(count))
            yield from (up, outages, errors)

        outbox = GaugeMetricFamily("gateway_outbox_depth", "Deliveries waiting to be sent (due or scheduled)")
        outbox.add_metric([], self.counts.get("deliveries_pending", 0))
        streams = GaugeMetricFamily("gateway_streams", "Stored streams (account, gateway, browser)")
        streams.add_metric([], self.counts.get("streams", 0))
        accounts = GaugeMetricFamily("gateway_accounts", "Accounts with at least one stream")
        accounts.add_metric([], self.counts.get("accounts", 0))
        yield from (outbox, streams, accounts)

        labels = ["watcher", "kind"]
        connected = GaugeMetricFamily(
            "gateway_watcher_connected", "1 while the watcher's source is connected", labels=labels
        )
        lag_s = GaugeMetricFamily(
            "gateway_watcher_lag_seconds", "Seconds the newest block seen is behind now", labels=labels
        )
        lag_b = GaugeMetricFamily(
            "gateway_watcher_lag_blocks", "Blocks the watcher is behind the chain head", labels=labels
        )
        height = GaugeMetricFamily(
            "gateway_watcher_block_height", "Newest block height the watcher has seen", labels=labels
        )
        events = CounterMetricFamily(
            "gateway_events_ingested", "Events the watcher handed to the matcher", labels=labels
        )
        faults = CounterMetricFamily("gateway_watcher_faults", "Input the watcher skipped", labels=[*labels, "fault"])
        reconnects = CounterMetricFamily("gateway_watcher_reconnects", "Reconnects of the watcher", labels=labels)
        paused = GaugeMetricFamily(
            "gateway_watcher_store_paused", "1 while the watcher holds input until the store answers", labels=labels
        )
        blocks = CounterMetricFamily(
            "gateway_watcher_blocks", "Heights a block watcher committed (skipped ones included)", labels=labels
        )
        skipped = CounterMetricFamily(
            "gateway_watcher_skipped_heights",
            "Heights at which no block was produced (or none could be read)",
            labels=labels,
        )
        rate = GaugeMetricFamily(
            "gateway_watcher_blocks_per_second", "Heights committed per second over the last minute", labels=labels
        )
        for name, state in self.watchers.items():
            key = [name, str(state.get("kind", ""))]
            connected.add_metric(key, 1.0 if state.get("connected") else 0.0)
            if state.get("lag_seconds") is not None:
                lag_s.add_metric(key, float(state["lag_seconds"]))
            if state.get("lag_blocks") is not None:
                lag_b.add_metric(key, float(state["lag_blocks"]))
            if state.get("last_block_height") is not None:
                height.add_metric(key, float(state["last_block_height"]))
            events.add_metric(key, float(state.get("events", 0)))
            reconnects.add_metric(key, float(state.get("reconnects", 0)))
            paused.add_metric(key, 1.0 if state.get("store_paused") else 0.0)
            for fault, count in dict(state.get("faults", {})).items():
                faults.add_metric([*key, fault], float(count))
            if state.get("kind") == "neardata":
                blocks.add_metric(key, float(state.get("blocks", 0)))
                skipped.add_metric(key, float(state.get("skipped_heights", 0)))
                rate.add_metric(key, float(state.get("blocks_per_second", 0.0)))
        yield from (connected, lag_s, lag_b, height, events, faults, reconnects, paused, blocks, skipped, rate)


class PushTally:
    """The per-push metrics of one process as plain numbers: cheaper than prometheus-client's locked
    values in the per-push path, and sent as they are by a sending process to the one serving
    /metrics, which adds them up (counts per bucket, not cumulative, as observed)."""

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str], int] = {}  # (outcome, push host) -> attempts
        self.send: dict[str, list[float]] = {}  # push host -> count per bucket (+Inf last), then the sum
        self.age = [0.0] * (len(LATENCY_BUCKETS) + 2)  # event to push, sent ones: the same layout

    def pushed(self, status: str, push_host: str, send_seconds: float, event_age: float | None) -> None:
        """One push attempt ended: its outcome, its request time, and, when sent, the event's age
        (None for a digest: held on purpose, its wait is not latency)."""
        key = (_OUTCOME_OF_STATUS.get(status, status), push_host)
        self.outcomes[key] = self.outcomes.get(key, 0) + 1
        send = self.send.get(push_host)
        if send is None:
            send = self.send[push_host] = [0.0] * (len(LATENCY_BUCKETS) + 2)
        _observe(send, send_seconds)
        if status == "sent" and event_age is not None:
            _observe(self.age, max(0.0, event_age))

    def to_json(self) -> dict[str, Any]:
        return {"outcomes": [[o, h, n] for (o, h), n in self.outcomes.items()], "send": self.send, "age": self.age}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PushTally:
        tally = cls()
        tally.outcomes = {(str(o), str(h)): int(n) for o, h, n in data["outcomes"]}
        tally.send = {str(h): [float(v) for v in values] for h, values in data["send"].items()}
        tally.age = [float(v) for v in data["age"]]
        return tally

    def add(self, other: PushTally) -> None:
        for key, n in other.outcomes.items():
            self.outcomes[key] = self.outcomes.get(key, 0) + n
        for host, values in other.send.items():
            mine = self.send.setdefault(host, [0.0] * len(values))
            self.send[host] = [a + b for a, b in zip(mine, values, strict=True)]
        self.age = [a + b for a, b in zip(self.age, other.age, strict=True)]


def _observe(histogram: list[float], value: float) -> None:
    histogram[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1  # le: a value on a bound counts in it
    histogram[-1] += value


def _histogram(family: HistogramMetricFamily, labels: list[str], values: list[float]) -> None:
    counts, cumulative, buckets = values[:-1], 0.0, []
    for bound, count in zip((*(str(b) for b in LATENCY_BUCKETS), "+Inf"), counts, strict=True):
        cumulative += count
        buckets.append((bound, cumulative))
    family.add_metric(labels, buckets, values[-1])


class _PushTallies(Collector):
    """gateway_deliveries_total and the two latency histograms: this process's and the others' summed."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        total = PushTally()
        total.add(self._metrics.tally)
        for other in self._metrics.tallies():
            total.add(other)
        deliveries = CounterMetricFamily(
            "gateway_deliveries", "Push attempts by outcome and push-service host", labels=["outcome", "push_host"]
        )
        for (outcome, host), n in sorted(total.outcomes.items()):
            deliveries.add_metric([outcome, host], n)
        send = HistogramMetricFamily(
            "gateway_push_send_seconds", "Time for one push-service request, answer included", labels=["push_host"]
        )
        for host, values in sorted(total.send.items()):
            _histogram(send, [host], values)
        age = HistogramMetricFamily(
            "gateway_event_to_push_seconds", "From the event's arrival at the gateway to its push being accepted"
        )
        _histogram(age, [], total.age)
        yield from (deliveries, send, age)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._shared = _SharedState()
        self.registry.register(self._shared)
        # Per push: plain numbers, summed with the sending processes' at scrape time (gateway/senders.py).
        self.tally = PushTally()
        self.tallies: Callable[[], Iterable[PushTally]] = tuple  # the other processes' latest tallies
        self.registry.register(_PushTallies(self))
        self.notifications = Counter(
            "gateway_notifications",
            "What service workers reported of notifications (receipts), by stage and type",
            ["stage", "type"],
            registry=self.registry,
        )
        self.receipts_refused = Counter(
            "gateway_receipts_refused",
            "Receipts refused: forged (bad signature), for no such notification, or over the rate",
            ["reason"],
            registry=self.registry,
        )
        self.api_requests = Counter(
            "gateway_api_requests_refused",
            "Public API requests refused before any work, by reason (rate_limited, ...)",
            ["reason"],
            registry=self.registry,
        )

    def pushed(self, status: str, push_host: str, send_seconds: float, event_age: float | None) -> None:
        """One push attempt ended (see PushTally.pushed)."""
        self.tally.pushed(status, push_host, send_seconds, event_age)

    async def render(
        self,
        counts: Callable[[], Awaitable[dict[str, int]]],
        watchers: Callable[[], dict[str, dict[str, Any]]],
        store: Callable[[], dict[str, Any]] = dict,
    ) -> bytes:
        """The text exposition, with the shared gauges read now."""
        try:
            self._shared.counts = await counts()
        except Exception:  # the store is down: report the counters, and no gauges rather than stale ones
            self._shared.counts = {}
        self._shared.watchers = watchers()
        self._shared.store = store()
        return generate_latest(self.registry)
