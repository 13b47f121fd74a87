"""Which streams get an event: pure, no I/O.

streams of the receiver − types muted by the stream's preferences − types outside the operator's
allow-list − endpoints over their daily cap − endpoints that already had this event. The store
gathers the inputs and writes the answer in the same transaction; an event seen before never
reaches the matcher (the store keeps every event key for ``retention_days``), and within one
event an endpoint carrying several streams gets one push.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from gateway.config import DEFAULT_FAIR_RATE, MatchingSettings, PushSettings
from gateway.models import Event, Stream
from gateway.pacing.digest import Pacing


@dataclass(frozen=True)
class MatchPolicy:
    """The operator's matching settings, as the matcher (and ingest's pacing) needs them."""

    allowed_value_types: frozenset[str] = frozenset()
    max_per_endpoint_per_day: int = 0  # 0 = no cap
    pacing: Pacing | None = None  # [push.types] for digests and quiet hours; None: built-in urgencies only
    fair_step: float = 1.0 / DEFAULT_FAIR_RATE  # seconds of a flow's virtual clock per delivery (fairshare.py)


def policy_from(matching: MatchingSettings, push: PushSettings | None = None) -> MatchPolicy:
    """What ingest applies: the matching settings, and ``[push.types]`` for digests and quiet hours."""
    return MatchPolicy(
        frozenset(matching.allowed_value_types),
        matching.max_per_endpoint_per_day,
        None if push is None else Pacing(push.types),
        1.0 / (DEFAULT_FAIR_RATE if push is None else push.fair_rate),
    )


@dataclass(frozen=True)
class MatchResult:
    selected: list[Stream]
    skipped: dict[str, int]  # reason -> count, for metrics and logs


def match(
    event: Event,
    streams: Iterable[Stream],
    *,
    policy: MatchPolicy,
    blocked: Mapping[int, frozenset[str]],
    sent_today: Mapping[str, int],
) -> MatchResult:
    """Select the streams that should receive ``event``.

    ``blocked`` maps stream id to muted types, ``sent_today`` maps endpoint hash to pushes
    counted today.
    """
    skipped: dict[str, int] = {}

    def skip(reason: str) -> None:
        skipped[reason] = skipped.get(reason, 0) + 1

    if policy.allowed_value_types and event.value_type not in policy.allowed_value_types:
        count = sum(1 for s in streams if s.account_id == event.receiver)
        return MatchResult([], {"type_not_allowed": count} if count else {})

    selected: list[Stream] = []
    seen_endpoints: set[str] = set()
    for stream in streams:
        if stream.account_id != event.receiver:
            continue
        if event.value_type in blocked.get(stream.id, frozenset()):
            skip("blocked_by_preference")
        elif stream.endpoint_hash in seen_endpoints:
            skip("duplicate")
        elif policy.max_per_endpoint_per_day and (
            sent_today.get(stream.endpoint_hash, 0) >= policy.max_per_endpoint_per_day
        ):
            skip("daily_cap")
        else:
            selected.append(stream)
            seen_endpoints.add(stream.endpoint_hash)
    return MatchResult(selected, skipped)
