"""The order fresh deliveries leave the outbox in: start-time fair queuing per initiator. Pure.

A big fan-out (an account with 100,000 followers posts) must not make everyone else wait behind
it. Each flow — the account that caused the events, the row's ``initiatedBy``, else the source —
has a virtual clock that advances ``1/rate`` seconds per delivery it queues, never starting before
now. A delivery's fair key is the clock's reading when it was queued, and claims take fresh
deliveries in key order. A lone notification's key is "now", so it goes out before the tail of a
fan-out queued earlier; two fan-outs at once alternate. Within one flow the order is kept.

The clocks are in memory, one set per ingesting process: after a restart every flow starts again at
now, and a flow ingested by two processes gets two shares. Both only change the order, never what is
sent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

FLOWS_KEPT = 65536  # clocks remembered; past that, those already behind "now" are forgotten


def flow_of(source: str, row: Mapping[str, Any]) -> str:
    """Whose share a delivery comes from: the account that caused it, else the source."""
    initiator = row.get("initiatedBy")
    return f"@{initiator}" if isinstance(initiator, str) and initiator else f"source:{source}"


class FairShare:
    """Virtual clocks per flow, each advancing ``step`` seconds (1 ÷ ``[push] fair_rate``) per delivery."""

    def __init__(self) -> None:
        self._next: dict[str, float] = {}

    def take(self, flow: str, count: int, now: float, step: float) -> float:
        """The fair key of the first of ``count`` deliveries of ``flow`` queued at ``now``; the i-th
        (0-based) has ``start + i * step``."""
        start = max(now, self._next.get(flow, now))
        if len(self._next) >= FLOWS_KEPT and flow not in self._next:
            self._next = {f: t for f, t in self._next.items() if t > now}
            if len(self._next) >= FLOWS_KEPT:  # all still ahead: they start again at now (order only)
                self._next.clear()
        self._next[flow] = start + count * step
        return start
