"""The Store contract: everything the API, the matcher and the dispatcher need from persistence.

Delivery life cycle (``deliveries.status``):

    pending ──claim (lease)──► in flight ──► sent
       ▲                          │      ├─► gone       (404/410: every stream of the endpoint deleted)
       └──── retry (due_at) ◄─────┘      ├─► rejected   (401/403: our VAPID is wrong; stream kept)
                                         ├─► dead       (other 4xx, 413 twice, or retries past give-up age)
                                         └─► cancelled  (the stream was deleted before sending)

A claim that is never finished (the process died) is claimable again once its lease ends.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

from gateway.matcher import MatchPolicy
from gateway.models import Claim, Event, IngestResult, QuietHours, Stream
from gateway.store.boundary import StoreStatus

# The outbox's two walks (gateway/fairshare.py): fresh deliveries — never tried, not digests — are
# all due and leave by fair key; the others (retries, digests, holds, leases a crash left) by due time.
# A lease counts an attempt, so a claimed delivery leaves the fresh walk at once.
FRESH = "status = 'pending' AND attempts = 0 AND folded IS NULL"
AGAIN = "status = 'pending' AND (attempts > 0 OR folded IS NOT NULL)"
# Counted over the two partial indexes: "status = 'pending'" alone matches neither, and walks the table.
PENDING_COUNT = (
    f"SELECT (SELECT COUNT(*) FROM deliveries WHERE {FRESH}) + (SELECT COUNT(*) FROM deliveries WHERE {AGAIN})"  # noqa: S608
)

FinalStatus = Literal["sent", "gone", "rejected", "dead", "cancelled"]
# A mute for all of an account's browsers, kept when they unsubscribe (the NEAR server's), or for one
# browser's stream only (ours, off the NEAR routes).
MuteScope = Literal["account", "browser"]


class Outcome(NamedTuple):  # one per push: a tuple is cheaper to build than a frozen dataclass
    """What the dispatcher learned about one claimed delivery."""

    delivery_id: int
    status: FinalStatus | Literal["retry"]
    http_status: int | None = None
    reason: str = ""
    retry_at: float | None = None  # for "retry": when it is due again
    compact: bool = False  # for "retry": send the compact payload next time
    endpoint_hash: str = ""  # for "gone": the endpoint whose streams are deleted


@dataclass(frozen=True)
class DeadLetter:
    delivery_id: int
    event_key: str
    endpoint_hash: str
    account_id: str | None
    status: str
    http_status: int | None
    reason: str
    attempts: int
    created_at: float
    finished_at: float | None


UNREAD_CAP = 1000  # an unread count stops at this ("999+"): counting further would cost more than it says
# The badge a push carries stops here ("99+", as platforms show it): counted for every browser of a
# claim batch, it must stay cheap (bench.inbox, 50 browsers of one account).
BADGE_CAP = 99
ACCOUNT_READER = "*"  # the reader of read marks made for the account (proven), on every browser


@dataclass(frozen=True)
class InboxItem:
    """One notification in an account's inbox, as one reader sees it."""

    id: int
    event_key: str
    value_type: str
    row: dict[str, Any]
    created_at: float
    read: bool


class Receipt(NamedTuple):
    known: bool  # the inbox item exists for that account
    new: bool  # first time this reader reported this stage for it
    value_type: str


class FunnelRow(NamedTuple):
    """Pushes sent of one type to one push service, and how many were reported shown, clicked, closed."""

    value_type: str
    push_host: str
    sent: int
    shown: int
    clicked: int
    closed: int


@dataclass(frozen=True)
class StreamInfo:
    """A stream as operators see it (admin API and CLI)."""

    stream: Stream
    created_at: float
    updated_at: float
    muted: tuple[str, ...]
    signed: bool = False  # created with a NEP-413 signature of the account: it proves the account
    # when its push service last refused a push as not ours (401/403: a subscription bound to another
    # VAPID key), until the stream is registered again: the browser's page renews it
    refused_at: float | None = None


class Lease(Protocol):
    """Leadership held by this process."""

    async def wait_lost(self) -> None:
        """Return when the leadership is lost (the store's connection died)."""


class Store(Protocol):
    """Every public call raises ``StoreUnavailable`` (retry later) or ``StoreRefused`` (this data
    never) for what the store's driver reports, classified at the boundary (boundary.py); ``status``
    says what the last calls saw."""

    status: StoreStatus

    async def open(self) -> None:
        """Connect and apply migrations."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise when the store cannot take a write now (the readiness probe); leaves nothing behind."""

    # --- streams and preferences (the public API) ---
    async def upsert_stream(
        self,
        account_id: str,
        gateway: str,
        endpoint: str,
        p256dh: str,
        auth: str,
        *,
        max_per_account: int = 0,
        max_per_endpoint: int = 0,
        signed: bool = False,
    ) -> bool:
        """Create or refresh a stream; True when it was new. ``signed``: its request carried a valid
        NEP-413 signature of the account, so the stream proves the account (``StreamInfo.signed``)
        until it is refreshed with other keys and no signature.

        Refreshing (the account already has a stream on this endpoint) updates its keys, gateway and
        ``updated_at``, and is never capped. Caps (0 = none) apply to new streams only:

        - ``max_per_account`` gives way: when the account already has that many streams, its least
          recently refreshed ones are deleted (their pending deliveries cancelled, as ``delete_streams``
          does) so that it keeps exactly ``max_per_account`` with the new one. Anyone may register a
          stream for any account, so a hard cap would let junk streams lock the owner out; a browser
          that refreshes its streams (the web client does on every page load) always comes back.
        - ``max_per_endpoint`` (accounts on one endpoint, a capability only its browser holds) is hard:
          ``StreamCapReached("endpoint", cap)``, and nothing is deleted.

        Neither cap is overshot when creates race, in one process or many sharing the store.
        """

    async def use_nonce(self, nonce: str, expires_at: float) -> bool:
        """Remember a signed request's nonce until ``expires_at``; False when it was already used."""

    async def delete_streams(self, endpoint: str, account_id: str | None = None) -> int:
        """Delete the endpoint's streams (only ``account_id``'s when given); returns how many."""

    async def accounts(self) -> list[str]:
        """Every account that has at least one stream, once each, in no particular order."""

    async def accounts_updated_since(self, since: float) -> list[str]:
        """Accounts whose streams were created or refreshed at ``since`` or later (wall time): what a
        watcher holding the whole set needs to stay current, at a cost that grows with the changes."""

    async def set_preference(
        self, account_id: str, endpoint: str, value_type: str, block: bool, *, scope: MuteScope = "account"
    ) -> bool:
        """Mute or unmute a type, asked from the account's stream on ``endpoint``: for the whole account
        (every browser, now and later: it outlives the streams) or for that stream only. False when no
        such stream exists (and nothing changes)."""

    async def set_quiet_hours(self, account_id: str, endpoint: str, quiet: QuietHours | None) -> bool:
        """Set (or, with None, clear) the quiet hours of the account's stream on ``endpoint``. False
        when no such stream exists. Deliveries already held keep their time."""

    # --- the inbox: every notification matched for an account, read marks per reader ---
    # A reader is a browser (its endpoint hash) or ACCOUNT_READER; an item is read for a browser when it
    # or the account marked it. A browser's marks start at the account's newest item when its first
    # stream is created (its inbox holds what came since).

    async def inbox(
        self, account_id: str, reader: str, *, before: int | None = None, limit: int = 50
    ) -> list[InboxItem]:
        """The account's items newest first, below id ``before`` when given, with ``reader``'s read state."""

    async def unread_count(self, account_id: str, reader: str, *, cap: int = UNREAD_CAP) -> int:
        """Items unread for ``reader``, counted up to ``cap``."""

    async def mark_read(
        self, account_id: str, reader: str, *, ids: list[int] | None = None, up_to: int | None = None
    ) -> None:
        """Mark items read for ``reader``: every one up to id ``up_to``, and those ``ids`` (others' ids
        are ignored)."""

    async def record_receipt(self, account_id: str, reader: str, inbox_id: int, stage: str, push_host: str) -> Receipt:
        """What ``reader``'s service worker reported of the account's inbox item (``stage``: shown,
        clicked, closed), once per stage; a click also marks the item read for the reader."""

    async def funnel(self, since: float) -> list[FunnelRow]:
        """Per (type, push service): pushes sent since ``since``, and the receipts reported since."""

    async def newest_inbox_id(self, account_id: str, *, until: float | None = None) -> int:
        """The id of the account's newest item (0 when none), or of the newest created at or before
        ``until``: "mark all read" and "read up to a time" mark up to it."""

    # --- ingest: matcher + outbox + cursor in one transaction ---
    async def ingest(
        self,
        events: list[Event],
        policy: MatchPolicy,
        *,
        cursor: tuple[str, str] | None = None,
        lease: Lease | None = None,
    ) -> IngestResult:
        """Record events, write their deliveries and advance ``cursor`` = (source, value) atomically.

        With the ``lease`` of a leadership, the transaction commits only while it is still held."""

    async def get_cursor(self, source: str) -> str | None: ...

    # --- outbox (the dispatcher) ---
    async def claim(self, limit: int, lease_seconds: float) -> list[Claim]:
        """Take up to ``limit`` due deliveries, leasing them to this process."""

    async def next_due_at(self) -> float | None:
        """Earliest due time of a pending delivery, or None when the outbox is empty."""

    async def record(self, outcomes: list[Outcome]) -> None:
        """Apply dispatch outcomes (and prune gone endpoints) in one transaction."""

    async def release(self, delivery_ids: list[int]) -> None:
        """Give claims back (clean shutdown) so another worker takes them at once."""

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        """Deliveries that ended without being sent (dead, rejected), newest first."""

    async def counts(self) -> dict[str, int]:
        """Streams, accounts and deliveries by status (the admin overview; walks the whole history)."""

    async def health_counts(self) -> dict[str, int]:
        """Streams, accounts and pending deliveries: what /healthz and /metrics show, without walking
        the finished history."""

    # --- operators (admin API and CLI) ---
    async def list_streams(
        self, *, account_id: str | None = None, endpoint_hash: str | None = None, limit: int = 100
    ) -> list[StreamInfo]:
        """Streams, newest first, of one account or one endpoint (hash), or all."""

    async def delete_streams_of(self, *, account_id: str | None = None, endpoint_hash: str | None = None) -> int:
        """Delete every stream of an account or of an endpoint (hash); cancels what was queued for them."""

    async def retry_dead_letters(self, ids: list[int] | None = None) -> int:
        """Queue dead or rejected deliveries again (these ids, or all), due now, attempts reset."""

    async def purge_dead_letters(self, ids: list[int] | None = None) -> int:
        """Delete dead or rejected deliveries (these ids, or all)."""

    async def delivery_history(self, since: float) -> list[tuple[int, str, int]]:
        """(minute as epoch seconds, status, count) of deliveries finished since ``since``."""

    async def failing_hosts(self, since: float, limit: int = 5) -> list[tuple[str, int]]:
        """Push-service hosts with the most deliveries that failed (dead, rejected, or retrying) since ``since``."""

    async def set_cursor(self, source: str, value: str) -> None:
        """Move a watcher's cursor (replays)."""

    async def purge(self, older_than: float, inbox_older_than: float | None = None) -> int:
        """Delete finished deliveries and events created before ``older_than`` (epoch seconds), and
        inbox items created before ``inbox_older_than`` when given."""

    def leadership(self, name: str) -> AbstractAsyncContextManager[Lease]:
        """Wait until this process leads ``name`` (one process at a time across all sharing the store)."""
