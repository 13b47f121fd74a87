"""Digests: the first push of a burst goes at once, the rest of the burst is folded into one
follow-up push that replaces it; pushes held by quiet hours are folded into one digest sent when the
window ends. A digest is an outbox row like any delivery (``kind = 'digest'``) listing the events it
folds, so it survives a crash; this module decides, the stores write. Pure."""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from gateway.models import Event, QuietHours, Stream
from gateway.pacing.collapse import collapse_key, hashed
from gateway.pacing.quiet import quiet_until
from gateway.pacing.urgency import urgency_for

if TYPE_CHECKING:
    from gateway.config import TypeDelivery

QUIET = "quiet"  # the fold key of the digest quiet hours hold
# A digest row's event key: this + the key of the event that opened it. Event keys are
# "<source>:<id>" with source names of [a-z0-9._-] (or "near:…"), so none starts with "~".
DIGEST_PREFIX = "~digest:"
MAX_DIGEST_REACH = 86400.0  # seconds before its row a digest's events may be: the longest digest window
MAX_FOLDED_KEYS = 64  # event keys a digest row lists (its count goes on): more would not fit one push


@dataclass(frozen=True)
class Pacing:
    """The operator's per-type settings, as ingest needs them (``[push.types]``)."""

    types: Mapping[str, TypeDelivery] = field(default_factory=dict)

    @functools.cached_property
    def folds_bursts(self) -> bool:
        """Whether any type has a digest window (else only quiet hours fold); asked per ingested event."""
        return any(t.digest > 0 for t in self.types.values())

    def window(self, value_type: str) -> float:
        configured = self.types.get(value_type)
        return 0.0 if configured is None else configured.digest

    def is_urgent(self, row: Mapping[str, Any]) -> bool:
        return urgency_for(dict(row), self.types) == "high"


NO_PACING = Pacing()


class FoldState(NamedTuple):
    """What the outbox holds for one (stream, fold key)."""

    first_key: str | None = None  # event of the latest push sent at once within the window
    first_at: float | None = None  # ...and when it was queued
    open_digest: int | None = None  # a digest not yet due (nor taken) that can take more events
    # A digest of the same window already taken or sent (an event that arrives as it is claimed):
    # its events and count go on in the next one, so a digest never replaces a bigger one.
    carried: tuple[tuple[str, ...], int] | None = None


class LatestDigest(NamedTuple):
    """The newest digest row of a (stream, fold key), as the stores read it."""

    id: int
    folded: list[str]
    total: int
    status: str
    lease_until: float | None
    due_at: float


def fold_state(
    first: tuple[str, float] | None,
    latest: LatestDigest | None,
    now: float,
    window: float,
    held_until: float | None,
) -> FoldState:
    """What ``plan`` needs, from the newest push sent at once and the newest digest of a fold key."""
    first_key, first_at = first if first is not None else (None, None)
    if latest is None:
        return FoldState(first_key, first_at)
    if latest.status == "pending" and latest.lease_until is None and latest.due_at > now:
        return FoldState(first_key, first_at, open_digest=latest.id)
    window_ends = held_until if held_until is not None else (None if first_at is None else first_at + window)
    if latest.status in ("pending", "sent") and window_ends is not None and latest.due_at == window_ends:
        return FoldState(first_key, first_at, carried=(tuple(latest.folded), latest.total))
    return FoldState(first_key, first_at)


class Deliver(NamedTuple):
    """Queue a push due now (``fold_key`` marks it as the first of a possible burst)."""

    fold_key: str | None


class Hold(NamedTuple):
    """Queue a digest of ``folded`` (event keys, oldest first; the newest MAX_FOLDED_KEYS) due at
    ``due_at``, folding ``total`` events."""

    fold_key: str
    due_at: float
    folded: tuple[str, ...]
    total: int


class Fold(NamedTuple):
    """Add the event to the digest ``delivery_id``."""

    delivery_id: int


Plan = Deliver | Hold | Fold


def fold_key_for(
    row: Mapping[str, Any], quiet: QuietHours | None, pacing: Pacing, now: float
) -> tuple[str | None, float | None]:
    """(fold key, end of the quiet window holding the push): (None, None) for a plain push."""
    if quiet is not None and not pacing.is_urgent(row):  # high urgency goes through quiet hours
        ends = quiet_until(now, quiet)
        if ends is not None:
            return QUIET, ends
    if pacing.window(str(row.get("valueType"))) > 0:
        return collapse_key(row, pacing.types), None
    return None, None


def split_paced(
    event: Event, selected: list[Stream], pacing: Pacing | None, now: float
) -> tuple[list[Stream], list[tuple[Stream, str, float | None]]]:
    """The streams that get a plain push now, and those pacing has a say for, with (fold key, end of
    their quiet window). Without digests or quiet hours, all plain: ingest's fast path stays as it was."""
    pacing = pacing or NO_PACING
    if not pacing.folds_bursts and all(s.quiet is None for s in selected):
        return selected, []
    plain: list[Stream] = []
    paced: list[tuple[Stream, str, float | None]] = []
    for stream in selected:
        fold_key, held_until = fold_key_for(event.row, stream.quiet, pacing, now)
        if fold_key is None:
            plain.append(stream)
        else:
            paced.append((stream, fold_key, held_until))
    return plain, paced


def plan(event_key: str, now: float, fold_key: str, held_until: float | None, window: float, state: FoldState) -> Plan:
    """Where one event goes for one stream, given what the outbox holds for its fold key."""
    burst_ends = _burst_ends(state, now, window)
    due = held_until if held_until is not None else burst_ends
    if due is None:
        return Deliver(fold_key)
    if state.open_digest is not None:
        return Fold(state.open_digest)
    if state.carried is not None:
        keys, total = state.carried
        return Hold(fold_key, due, tuple(folded_keys(list(keys), event_key)), total + 1)
    if held_until is not None or state.first_key is None:
        return Hold(fold_key, due, (event_key,), 1)
    return Hold(fold_key, due, (state.first_key, event_key), 2)


def _burst_ends(state: FoldState, now: float, window: float) -> float | None:
    """When the burst the latest push at once opened ends, while it lasts."""
    if state.first_at is None or state.first_key is None or now >= state.first_at + window:
        return None
    return state.first_at + window


def folded_keys(keys: list[str], event_key: str) -> list[str]:
    """A digest's key list with one more event: the newest MAX_FOLDED_KEYS (the count says the rest)."""
    return [*keys, event_key][-MAX_FOLDED_KEYS:]


def events_purged_before(older_than: float, oldest_open_digest: float | None) -> float:
    """Events before this may be purged: the retention cut, but never the events an open digest
    (held by a long window or quiet hours) folds, which a purge cannot see in its JSON list."""
    if oldest_open_digest is None:
        return older_than
    return min(older_than, float(oldest_open_digest) - MAX_DIGEST_REACH)


def digest_tag(rows: list[dict[str, Any]], types: Mapping[str, TypeDelivery] | None = None) -> str:
    """The digest replaces the pushes it folds: their Topic when they share one, else the quiet one."""
    keys = {collapse_key(r, types) for r in rows}
    if len(keys) == 1 and None not in keys:
        return hashed(str(next(iter(keys))))
    return hashed(f"{rows[-1].get('receiver') if rows else ''}\n{QUIET}\n")
