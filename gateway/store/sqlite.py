"""The embedded store: one SQLite file, one writer thread, WAL journal.

Every call runs on a single worker thread (a capacity limiter of one), so the event loop never
blocks on disk and transactions never interleave. ``kill -9`` at any moment leaves the file
consistent: each method is one transaction.
"""

from __future__ import annotations

import contextlib
import heapq
import json
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import sqlite_utils

from gateway.endpoints import endpoint_hash
from gateway.exceptions import StoreError, StoreRefused, StoreUnavailable, StreamCapReached
from gateway.fairshare import FairShare, flow_of
from gateway.matcher import MatchPolicy, match
from gateway.models import Claim, Event, IngestResult, QuietHours, Stream
from gateway.pacing.digest import (
    DIGEST_PREFIX,
    MAX_DIGEST_REACH,
    Fold,
    Hold,
    LatestDigest,
    events_purged_before,
    fold_state,
    folded_keys,
    plan,
    split_paced,
)
from gateway.pacing.quiet import quiet_hours
from gateway.store.admin import count_hosts as _count_hosts
from gateway.store.admin import funnel_rows
from gateway.store.admin import stream_info as _stream_info
from gateway.store.base import (
    AGAIN,
    BADGE_CAP,
    FRESH,
    PENDING_COUNT,
    UNREAD_CAP,
    DeadLetter,
    FunnelRow,
    InboxItem,
    Lease,
    MuteScope,
    Outcome,
    Receipt,
    StreamInfo,
)
from gateway.store.boundary import StoreStatus, guard_calls

T = TypeVar("T")

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_initial",
        """
        CREATE TABLE streams (
            id INTEGER PRIMARY KEY,
            account_id TEXT NOT NULL,
            gateway TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            endpoint_hash TEXT NOT NULL,
            p256dh TEXT NOT NULL,
            auth TEXT NOT NULL,
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            UNIQUE (endpoint_hash, account_id)
        );
        CREATE INDEX streams_by_account ON streams (account_id);
        CREATE TABLE preferences (
            endpoint_hash TEXT NOT NULL,
            account_id TEXT NOT NULL,
            value_type TEXT NOT NULL,
            PRIMARY KEY (endpoint_hash, account_id, value_type)
        );
        CREATE TABLE events (
            event_key TEXT PRIMARY KEY,
            source TEXT NOT NULL,
            receiver TEXT NOT NULL,
            value_type TEXT NOT NULL,
            block_height INTEGER,
            row_json TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE INDEX events_by_created ON events (created_at);
        CREATE TABLE deliveries (
            id INTEGER PRIMARY KEY,
            event_key TEXT NOT NULL,
            stream_id INTEGER NOT NULL,
            endpoint_hash TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            compact INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            due_at REAL NOT NULL,
            lease_until REAL,
            finished_at REAL,
            http_status INTEGER,
            reason TEXT NOT NULL DEFAULT '',
            UNIQUE (event_key, endpoint_hash)
        );
        CREATE INDEX deliveries_due ON deliveries (due_at) WHERE status = 'pending';
        CREATE INDEX deliveries_by_endpoint ON deliveries (endpoint_hash) WHERE status = 'pending';
        CREATE INDEX deliveries_finished ON deliveries (status, finished_at);
        CREATE TABLE endpoint_daily (
            endpoint_hash TEXT NOT NULL,
            day TEXT NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (endpoint_hash, day)
        );
        CREATE TABLE cursors (
            source TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at REAL NOT NULL
        );
        """,
    ),
    (
        # The claim must walk the pending rows by due time, not sort them all: the finished-rows
        # index (status, finished_at) tempted the planner into a full sort of the backlog.
        "0002_claim_by_due_time",
        """
        DROP INDEX deliveries_finished;
        CREATE INDEX deliveries_finished ON deliveries (finished_at) WHERE status != 'pending';
        DROP INDEX deliveries_due;
        CREATE INDEX deliveries_due ON deliveries (due_at, lease_until) WHERE status = 'pending';
        """,
    ),
    (
        # No query reads it, and every finished push paid to maintain it.
        "0003_drop_unused_endpoint_index",
        "DROP INDEX deliveries_by_endpoint;",
    ),
    (
        # Nonces of signed requests (NEP-413), remembered until the signature expires: no replays.
        "0004_used_nonces",
        """
        CREATE TABLE used_nonces (nonce TEXT PRIMARY KEY, expires_at REAL NOT NULL);
        CREATE INDEX used_nonces_expiry ON used_nonces (expires_at);
        """,
    ),
    (
        # The neardata watcher keeps the set of subscribed accounts current from what changed.
        "0005_streams_by_update",
        "CREATE INDEX streams_by_update ON streams (updated_at);",
    ),
    (
        # Mutes as the NEAR server keeps them: per (account, type), for all of the account's browsers,
        # outliving its streams. Every mute so far came from /preferences/set: they become the account's.
        "0006_account_mutes",
        """
        CREATE TABLE account_mutes (
            account_id TEXT NOT NULL,
            value_type TEXT NOT NULL,
            PRIMARY KEY (account_id, value_type)
        );
        INSERT OR IGNORE INTO account_mutes SELECT DISTINCT account_id, value_type FROM preferences;
        DELETE FROM preferences
        """,
    ),
    (
        # Pacing: a stream's quiet hours; a delivery's fold key (the burst or quiet window it opens or
        # belongs to) and, for a digest, the events it folds (JSON keys, oldest first) and their count.
        "0007_pacing",
        """
        ALTER TABLE streams ADD COLUMN quiet_zone TEXT;
        ALTER TABLE streams ADD COLUMN quiet_start INTEGER;
        ALTER TABLE streams ADD COLUMN quiet_end INTEGER;
        ALTER TABLE deliveries ADD COLUMN fold_key TEXT;
        ALTER TABLE deliveries ADD COLUMN folded TEXT;
        ALTER TABLE deliveries ADD COLUMN folded_total INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX deliveries_folds ON deliveries (stream_id, fold_key, created_at) WHERE fold_key IS NOT NULL;
        CREATE INDEX deliveries_open_digests ON deliveries (created_at) WHERE folded IS NOT NULL AND status = 'pending';
        """,
    ),
    (
        # The inbox: every notification matched for an account, kept [inbox] days, with read marks per
        # reader (a browser's endpoint hash, or '*' for the proven account): all up to a mark, and ones.
        "0008_inbox",
        """
        CREATE TABLE inbox (
            id INTEGER PRIMARY KEY,
            account_id TEXT NOT NULL,
            event_key TEXT NOT NULL,
            value_type TEXT NOT NULL,
            row_json TEXT NOT NULL,
            created_at REAL NOT NULL,
            UNIQUE (account_id, event_key)
        );
        CREATE INDEX inbox_by_account ON inbox (account_id, id);
        CREATE INDEX inbox_by_created ON inbox (created_at);
        CREATE TABLE inbox_marks (
            account_id TEXT NOT NULL,
            reader TEXT NOT NULL,
            up_to INTEGER NOT NULL,
            PRIMARY KEY (account_id, reader)
        );
        CREATE TABLE inbox_read (
            account_id TEXT NOT NULL,
            reader TEXT NOT NULL,
            inbox_id INTEGER NOT NULL,
            PRIMARY KEY (account_id, reader, inbox_id)
        );
        INSERT INTO inbox_marks SELECT DISTINCT account_id, endpoint_hash, 0 FROM streams;
        """,
    ),
    (
        # What the service workers report of each notification: shown, clicked, closed (once each per
        # browser), with the type and push service for the funnel.
        "0009_receipts",
        """
        CREATE TABLE receipts (
            inbox_id INTEGER NOT NULL,
            reader TEXT NOT NULL,
            stage TEXT NOT NULL,
            value_type TEXT NOT NULL,
            push_host TEXT NOT NULL,
            at REAL NOT NULL,
            PRIMARY KEY (inbox_id, reader, stage)
        );
        CREATE INDEX receipts_by_time ON receipts (at);
        """,
    ),
    (
        # A stream created with a NEP-413 signature proves its account: what changes the account for
        # all its browsers through /v1 needs it. Refreshed with other keys and no signature, it is lost.
        "0010_signed_streams",
        "ALTER TABLE streams ADD COLUMN signed INTEGER NOT NULL DEFAULT 0;",
    ),
    (
        # "Read up to a time" finds the account's newest item by then without walking the others.
        "0011_inbox_by_time",
        "CREATE INDEX inbox_by_time ON inbox (account_id, created_at);",
    ),
    (
        # Fresh deliveries leave in fair-share order (gateway/fairshare.py), the rest (retries, digests,
        # claims a crash left) by due time: one index each, so neither walk steps over the other's rows.
        "0012_fair_share",
        f"""
        ALTER TABLE deliveries ADD COLUMN fair_at REAL NOT NULL DEFAULT 0;
        UPDATE deliveries SET fair_at = due_at WHERE status = 'pending';
        DROP INDEX deliveries_due;
        CREATE INDEX deliveries_due ON deliveries (due_at, lease_until) WHERE {AGAIN};
        CREATE INDEX deliveries_fresh ON deliveries (fair_at) WHERE {FRESH};
        """,  # noqa: S608
    ),
    (
        # A stream whose push service refused a push as not ours (401/403), until registered again.
        "0013_stream_refused",
        "ALTER TABLE streams ADD COLUMN refused_at REAL;",
    ),
]


# The per-push statements move whole batches as one JSON value in or out (json_each, json_group_array):
# Python's sqlite3 hands the GIL to and fro around every row it steps through, and with the event
# loop busy on the other thread each hand-off is a futex wait. One statement step per batch instead.
_STREAMS_OF = (
    "SELECT json_group_array(json_array(id, account_id, gateway, endpoint, endpoint_hash, "
    "quiet_zone, quiet_start, quiet_end)) FROM streams WHERE account_id = ?"
)
# DISTINCT inside the aggregate: a subquery's DISTINCT makes the planner walk the account index
# instead of the updated_at one (300 ms instead of 0.6 ms at a million streams).
_ACCOUNTS = "SELECT json_group_array(DISTINCT account_id) FROM streams"
_ACCOUNTS_SINCE = "SELECT json_group_array(DISTINCT account_id) FROM streams WHERE updated_at >= ?"
_SENT_TODAY = (
    "SELECT json_group_object(endpoint_hash, count) FROM endpoint_daily "
    "WHERE day = ? AND endpoint_hash IN (SELECT value FROM json_each(?))"
)
_NEW_DELIVERIES = (
    "INSERT OR IGNORE INTO deliveries (event_key, stream_id, endpoint_hash, created_at, due_at, fair_at) "
    "SELECT ?, json_extract(value, '$[0]'), json_extract(value, '$[1]'), ?, ?, ? + key * ? FROM json_each(?)"
)
_COUNT_SENT = (
    "INSERT INTO endpoint_daily SELECT value, ?, 1 FROM json_each(?) WHERE true "
    "ON CONFLICT (endpoint_hash, day) DO UPDATE SET count = count + 1"
)
# A claim takes the first ``limit`` of two walks merged: fresh deliveries by fair key (all due, none
# leased: a lease counts an attempt) and the others due by now, by due time.
_FRESH_FIRST = (
    "SELECT json_group_array(json_array(fair_at, id)) FROM "  # noqa: S608
    f"(SELECT id, fair_at FROM deliveries WHERE {FRESH} ORDER BY fair_at LIMIT ?)"
)
_DUE_AGAIN = (
    "SELECT json_group_array(json_array(due_at, id)) FROM (SELECT id, due_at FROM deliveries "  # noqa: S608
    f"WHERE {AGAIN} AND due_at <= ? AND (lease_until IS NULL OR lease_until <= ?) ORDER BY due_at LIMIT ?)"
)
_LEASE = "UPDATE deliveries SET lease_until = ?, attempts = attempts + 1 WHERE id IN (SELECT value FROM json_each(?))"
_CLAIMED = (
    "SELECT json_group_array(json_array(d.id, d.attempts, d.compact, d.created_at, d.event_key, d.folded, "
    "d.folded_total, d.stream_id, s.account_id, s.gateway, s.endpoint, s.endpoint_hash, s.p256dh, s.auth)) "
    "FROM json_each(?) j JOIN deliveries d ON d.id = j.value "
    "LEFT JOIN streams s ON s.id = d.stream_id WHERE d.status = 'pending' ORDER BY j.key"
)
# A push taken again after a crash whose burst's digest went out meanwhile would replace the digest on
# screen with stale text: it is cancelled instead (the digest carries it).
_REPLACED = (
    "UPDATE deliveries SET status = 'cancelled', finished_at = ?, lease_until = NULL, "
    "reason = 'replaced by a digest already sent' WHERE id IN (SELECT value FROM json_each(?)) "
    "AND fold_key IS NOT NULL AND folded IS NULL AND EXISTS (SELECT 1 FROM deliveries g "
    "WHERE g.stream_id = deliveries.stream_id AND g.fold_key = deliveries.fold_key AND g.folded IS NOT NULL "
    "AND g.status = 'sent' AND g.created_at >= deliveries.created_at)"
)
# The inbox. A new browser's mark starts at the account's newest item: what it missed is from then on.
_NEW_READER = (
    "INSERT OR IGNORE INTO inbox_marks VALUES (?, ?, (SELECT COALESCE(MAX(id), 0) FROM inbox WHERE account_id = ?))"
)
_TO_INBOX = (
    "INSERT OR IGNORE INTO inbox (account_id, event_key, value_type, row_json, created_at) VALUES (?, ?, ?, ?, ?)"
)
# Read for a reader: at or below its mark or the account's, or marked one by one by either.
_READ_UP_TO = "SELECT COALESCE(MAX(up_to), 0) FROM inbox_marks WHERE account_id = ? AND reader IN (?, '*')"
_IS_READ = (
    "(i.id <= ? OR EXISTS (SELECT 1 FROM inbox_read r WHERE r.account_id = i.account_id "
    "AND r.reader IN (?, '*') AND r.inbox_id = i.id))"
)
_INBOX_IDS = (
    "SELECT json_group_array(json_array(i.account_id, i.event_key, i.id)) FROM json_each(?) p "
    "JOIN inbox i ON i.account_id = p.value ->> 0 AND i.event_key = p.value ->> 1"
)
# Unread per (account, reader), counted up to the cap ?1, as unread_count counts. Not row by row (a
# probe of inbox_read per unread item was 28% of a push's busy time): the items after the mark, counted
# up to twice the cap in the account's index, less the distinct items read one by one after it — exact
# while those are at most the cap, else counted row by row.
_UNREAD_OF = (
    "WITH p AS MATERIALIZED (SELECT value ->> 0 AS a, value ->> 1 AS r, (SELECT COALESCE(MAX(up_to), 0) "
    "FROM inbox_marks WHERE account_id = value ->> 0 AND reader IN (value ->> 1, '*')) AS up FROM json_each(?2)), "
    "n AS MATERIALIZED (SELECT a, r, up, (SELECT COUNT(*) FROM (SELECT DISTINCT x.inbox_id FROM inbox_read x "
    "WHERE x.account_id = a AND x.reader IN (r, '*') AND x.inbox_id > up AND EXISTS (SELECT 1 FROM inbox i "
    "WHERE i.id = x.inbox_id AND i.account_id = a) LIMIT ?1 + 1)) AS one_by_one FROM p) "
    "SELECT json_group_array(json_array(a, r, CASE WHEN one_by_one > ?1 THEN (SELECT COUNT(*) FROM (SELECT 1 "
    "FROM inbox i WHERE i.account_id = a AND i.id > up AND NOT EXISTS (SELECT 1 FROM inbox_read x "
    "WHERE x.account_id = a AND x.reader IN (r, '*') AND x.inbox_id = i.id) ORDER BY i.account_id, i.id LIMIT ?1)) "
    "ELSE MIN(?1, (SELECT COUNT(*) FROM (SELECT 1 FROM inbox i WHERE i.account_id = a AND i.id > up "
    "ORDER BY i.account_id, i.id LIMIT 2 * ?1)) - one_by_one) END)) FROM n"
)
# Whether an event went to a browser: its own delivery, or a digest of the browser's stream folding it.
_PUSHED_TO = (
    "SELECT 1 FROM deliveries WHERE event_key = ? AND endpoint_hash = ? UNION ALL "
    "SELECT 1 FROM deliveries d, json_each(d.folded) f WHERE d.stream_id = "
    "(SELECT id FROM streams WHERE endpoint_hash = ? AND account_id = ?) AND d.fold_key IS NOT NULL "
    "AND d.folded IS NOT NULL AND f.value = ? LIMIT 1"
)
# scheme://host[:port] of a stream's endpoint (NULL when the stream is gone), for grouping in SQL
_ORIGIN_OF = "substr(s.endpoint, 1, instr(substr(s.endpoint, 9), '/') + 7)"
_OLDEST_OPEN_DIGEST = "SELECT MIN(created_at) FROM deliveries WHERE folded IS NOT NULL AND status = 'pending'"
_CLAIMED_EVENTS = (  # each event once, however many streams it goes to; rows stay text for Python's
    # parser (SQLite's json() refuses what json.dumps may write, such as NaN, and one bad row must not
    # fail every claim)
    "SELECT json_group_object(event_key, row_json) FROM events WHERE event_key IN (SELECT value FROM json_each(?))"
)
_FINISH = (
    "UPDATE deliveries SET status = ?, finished_at = ?, lease_until = NULL, http_status = ?, reason = ? "
    "WHERE id IN (SELECT value FROM json_each(?)) AND status = 'pending'"
)


_ACCOUNT_MUTES = "SELECT value_type FROM account_mutes WHERE account_id = ?"
_REFUSED = (
    "UPDATE streams SET refused_at = ? WHERE id IN "
    "(SELECT stream_id FROM deliveries WHERE id IN (SELECT value FROM json_each(?)))"
)
# Pacing: the latest push of a burst sent at once, and a digest that can still take events.
_BURST_FIRST = (
    "SELECT event_key, created_at FROM deliveries WHERE stream_id = ? AND fold_key = ? AND folded IS NULL "
    "AND created_at > ? ORDER BY created_at DESC LIMIT 1"
)
_LATEST_DIGEST = (
    "SELECT id, folded, folded_total, status, lease_until, due_at FROM deliveries WHERE stream_id = ? "
    "AND fold_key = ? AND folded IS NOT NULL AND created_at > ? ORDER BY id DESC LIMIT 1"
)
_NEW_PACED = (
    "INSERT OR IGNORE INTO deliveries (event_key, stream_id, endpoint_hash, created_at, due_at, fold_key, folded, "
    "folded_total, fair_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _json_value(c: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> Any:
    """The one JSON value a ``json_group_*`` query builds, parsed."""
    return json.loads(c.execute(sql, args).fetchone()[0])


def utc_day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


# SQLite result codes (the primary code is the low byte of an extended one) that pass: another
# process holds the lock past the busy timeout, the disk or max_page_count is full, I/O failed.
SQLITE_FULL = 13
TRANSIENT_CODES = frozenset({5, 6, 7, 10, 14, 15})  # BUSY, LOCKED, NOMEM, IOERR, CANTOPEN, PROTOCOL
REFUSED_CODES = frozenset({18, 19, 20, 25})  # TOOBIG, CONSTRAINT, MISMATCH, RANGE


@guard_calls
class SqliteStore:
    def __init__(self, path: str, clock: Callable[[], float] = time.time, busy_timeout: float = 30.0) -> None:
        self.path = path
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._fair = FairShare()  # this process's ingest: the order fresh deliveries leave in
        self.status = StoreStatus()

    @staticmethod
    def classify(exc: BaseException) -> StoreError | None:
        """A driver error as the store boundary reports it (gateway/store/boundary.py)."""
        if isinstance(exc, sqlite3.Error):
            code = (getattr(exc, "sqlite_errorcode", None) or 0) & 0xFF
            if code == SQLITE_FULL:
                return StoreUnavailable(f"SQLite: {exc}", "storage_full")
            if code in TRANSIENT_CODES:
                return StoreUnavailable(f"SQLite: {exc}")
            if code in REFUSED_CODES or isinstance(exc, sqlite3.IntegrityError | sqlite3.DataError):
                return StoreRefused(f"SQLite refused the data: {exc}")
            return None
        if isinstance(exc, OverflowError):  # a Python int past SQLite's 64 bits
            return StoreRefused(f"SQLite refused the data: {exc}")
        return None

    # --- plumbing -------------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        conn = self._conn
        if conn is None:
            raise StoreError("store is not open")
        return await anyio.to_thread.run_sync(fn, conn, limiter=self._limiter)

    async def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run(conn: sqlite3.Connection) -> T:
            if conn.in_transaction:  # an earlier ROLLBACK failed (I/O): end that transaction first
                conn.execute("ROLLBACK")
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = fn(conn)
                conn.execute("COMMIT")  # may fail too (busy, full), leaving the transaction open
            except BaseException:
                if conn.in_transaction:  # SQLite has already rolled back after some errors (SQLITE_FULL)
                    with contextlib.suppress(sqlite3.Error):  # the first error is the one to report
                        conn.execute("ROLLBACK")
                raise
            return result

        return await self._run(run)

    async def open(self) -> None:
        def connect() -> sqlite3.Connection:
            if self.path != ":memory:":
                _create_private(Path(self.path))
            conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=self._busy_timeout)
            conn.row_factory = sqlite3.Row
            db = sqlite_utils.Database(conn)
            _enable_wal(conn)
            db.execute("PRAGMA synchronous = NORMAL")  # durable across process crashes
            db.execute("PRAGMA foreign_keys = ON")
            self._migrate(db)
            return conn

        try:
            self._conn = await anyio.to_thread.run_sync(connect, limiter=self._limiter)
        except sqlite3.Error as exc:
            raise StoreError(f"cannot open SQLite store {self.path}: {exc}") from exc

    @staticmethod
    def _migrate(db: sqlite_utils.Database) -> None:
        db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        for name, sql in MIGRATIONS:
            db.conn.execute("BEGIN IMMEDIATE")  # the write lock first: processes may start together
            if db.conn.execute("SELECT 1 FROM schema_migrations WHERE name = ?", (name,)).fetchone():
                db.conn.execute("COMMIT")
                continue
            try:
                for statement in filter(str.strip, sql.split(";")):
                    db.conn.execute(statement)
                db.conn.execute("INSERT INTO schema_migrations VALUES (?, ?)", (name, time.time()))
            except BaseException:
                db.conn.execute("ROLLBACK")
                raise
            db.conn.execute("COMMIT")

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            await anyio.to_thread.run_sync(conn.close, limiter=self._limiter)

    async def ping(self) -> None:
        """Probe a write: the lock is free (not busy past the timeout) and a new page fits (not full).
        Rolled back: nothing stays."""

        def probe(c: sqlite3.Connection) -> None:
            page = c.execute("PRAGMA page_size").fetchone()[0]
            c.execute("INSERT INTO cursors VALUES ('~probe', hex(zeroblob(?)), 0)", (page,))
            raise _ProbeDone

        with contextlib.suppress(_ProbeDone):
            await self._tx(probe)

    # --- streams --------------------------------------------------------------------------

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
        now = self._clock()
        ehash = endpoint_hash(endpoint)

        def run(c: sqlite3.Connection) -> bool:
            cur = c.execute(
                "UPDATE streams SET gateway = ?, p256dh = ?, auth = ?, endpoint = ?, updated_at = ?, "
                "refused_at = NULL, signed = CASE WHEN ? THEN 1 WHEN auth = ? THEN signed ELSE 0 END "
                "WHERE endpoint_hash = ? AND account_id = ?",
                (gateway, p256dh, auth, endpoint, now, signed, auth, ehash, account_id),
            )
            if cur.rowcount:
                return False
            if max_per_endpoint:  # a hard cap: only the endpoint's owner can fill it
                (accounts,) = c.execute("SELECT count(*) FROM streams WHERE endpoint_hash = ?", (ehash,)).fetchone()
                if accounts >= max_per_endpoint:
                    raise StreamCapReached("endpoint", max_per_endpoint)
            if max_per_account:
                # Anyone may register a stream for any account: at the cap, the account's least recently
                # refreshed streams give way (a real browser refreshes its own on every page load), so
                # junk streams can never lock the owner out.
                (streams,) = c.execute("SELECT count(*) FROM streams WHERE account_id = ?", (account_id,)).fetchone()
                if streams >= max_per_account:
                    oldest = c.execute(
                        "SELECT endpoint_hash FROM streams WHERE account_id = ? ORDER BY updated_at, id LIMIT ?",
                        (account_id, streams - max_per_account + 1),
                    ).fetchall()
                    for (victim,) in oldest:
                        _delete_streams(c, victim, account_id, now)
            c.execute(
                "INSERT INTO streams (account_id, gateway, endpoint, endpoint_hash, p256dh, auth, "
                "created_at, updated_at, signed) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (account_id, gateway, endpoint, ehash, p256dh, auth, now, now, signed),
            )
            c.execute(_NEW_READER, (account_id, ehash, account_id))
            return True

        return await self._tx(run)

    async def delete_streams(self, endpoint: str, account_id: str | None = None) -> int:
        ehash = endpoint_hash(endpoint)
        return await self._tx(lambda c: _delete_streams(c, ehash, account_id, self._clock()))

    async def accounts(self) -> list[str]:
        # One JSON value, not a row object per account: a third of the time with a million of them.
        found: list[str] = await self._run(lambda c: _json_value(c, _ACCOUNTS, ()))
        return found

    async def accounts_updated_since(self, since: float) -> list[str]:
        found: list[str] = await self._run(lambda c: _json_value(c, _ACCOUNTS_SINCE, (since,)))
        return found

    async def set_preference(
        self, account_id: str, endpoint: str, value_type: str, block: bool, *, scope: MuteScope = "account"
    ) -> bool:
        ehash = endpoint_hash(endpoint)

        def run(c: sqlite3.Connection) -> bool:
            exists = c.execute(
                "SELECT 1 FROM streams WHERE endpoint_hash = ? AND account_id = ?", (ehash, account_id)
            ).fetchone()
            if not exists:
                return False
            if scope == "account":
                if block:
                    c.execute("INSERT OR IGNORE INTO account_mutes VALUES (?, ?)", (account_id, value_type))
                else:
                    c.execute(
                        "DELETE FROM account_mutes WHERE account_id = ? AND value_type = ?", (account_id, value_type)
                    )
            elif block:
                c.execute("INSERT OR IGNORE INTO preferences VALUES (?, ?, ?)", (ehash, account_id, value_type))
            else:
                c.execute(
                    "DELETE FROM preferences WHERE endpoint_hash = ? AND account_id = ? AND value_type = ?",
                    (ehash, account_id, value_type),
                )
            return True

        return await self._tx(run)

    async def set_quiet_hours(self, account_id: str, endpoint: str, quiet: QuietHours | None) -> bool:
        zone, start, end = quiet if quiet is not None else (None, None, None)
        return bool(
            await self._tx(
                lambda c: (
                    c.execute(
                        "UPDATE streams SET quiet_zone = ?, quiet_start = ?, quiet_end = ? "
                        "WHERE endpoint_hash = ? AND account_id = ?",
                        (zone, start, end, endpoint_hash(endpoint), account_id),
                    ).rowcount
                )
            )
        )

    # --- the inbox ------------------------------------------------------------------------

    async def inbox(
        self, account_id: str, reader: str, *, before: int | None = None, limit: int = 50
    ) -> list[InboxItem]:
        def run(c: sqlite3.Connection) -> list[InboxItem]:
            (up_to,) = c.execute(_READ_UP_TO, (account_id, reader)).fetchone()
            rows = c.execute(
                f"SELECT i.id, i.event_key, i.value_type, i.row_json, i.created_at, {_IS_READ} FROM inbox i "  # noqa: S608
                "WHERE i.account_id = ? AND i.id < ? ORDER BY i.id DESC LIMIT ?",
                (up_to, reader, account_id, before if before is not None else 2**62, limit),
            ).fetchall()
            return [InboxItem(r[0], r[1], r[2], json.loads(r[3]), r[4], bool(r[5])) for r in rows]

        return await self._run(run)

    async def unread_count(self, account_id: str, reader: str, *, cap: int = UNREAD_CAP) -> int:
        def run(c: sqlite3.Connection) -> int:
            (up_to,) = c.execute(_READ_UP_TO, (account_id, reader)).fetchone()
            (count,) = c.execute(
                f"SELECT COUNT(*) FROM (SELECT 1 FROM inbox i WHERE i.account_id = ? AND i.id > ? "  # noqa: S608
                f"AND NOT {_IS_READ} ORDER BY i.account_id, i.id LIMIT ?)",
                (account_id, up_to, up_to, reader, cap),
            ).fetchone()
            return int(count)

        return await self._run(run)

    async def mark_read(
        self, account_id: str, reader: str, *, ids: list[int] | None = None, up_to: int | None = None
    ) -> None:
        def run(c: sqlite3.Connection) -> None:
            if up_to is not None:
                c.execute(
                    "INSERT INTO inbox_marks VALUES (?, ?, ?) ON CONFLICT (account_id, reader) "
                    "DO UPDATE SET up_to = MAX(up_to, excluded.up_to)",
                    (account_id, reader, up_to),
                )
                c.execute(
                    "DELETE FROM inbox_read WHERE account_id = ? AND reader = ? AND inbox_id <= ?",
                    (account_id, reader, up_to),
                )
            if ids:
                c.execute(
                    "INSERT OR IGNORE INTO inbox_read SELECT ?, ?, id FROM inbox WHERE account_id = ? "
                    "AND id IN (SELECT value FROM json_each(?))",
                    (account_id, reader, account_id, json.dumps(ids)),
                )

        await self._tx(run)

    async def record_receipt(self, account_id: str, reader: str, inbox_id: int, stage: str, push_host: str) -> Receipt:
        now = self._clock()

        def run(c: sqlite3.Connection) -> Receipt:
            found = c.execute(
                "SELECT value_type, event_key FROM inbox WHERE id = ? AND account_id = ?", (inbox_id, account_id)
            ).fetchone()
            if (
                found is None
                or c.execute(_PUSHED_TO, (found[1], reader, reader, account_id, found[1])).fetchone() is None
            ):
                return Receipt(known=False, new=False, value_type="")
            new = c.execute(
                "INSERT OR IGNORE INTO receipts VALUES (?, ?, ?, ?, ?, ?)",
                (inbox_id, reader, stage, found[0], push_host, now),
            ).rowcount
            if stage == "clicked":
                c.execute("INSERT OR IGNORE INTO inbox_read VALUES (?, ?, ?)", (account_id, reader, inbox_id))
            return Receipt(known=True, new=bool(new), value_type=str(found[0]))

        return await self._tx(run)

    async def funnel(self, since: float) -> list[FunnelRow]:
        def run(c: sqlite3.Connection) -> list[FunnelRow]:
            # counted in SQL by (type, origin): a day of pushes never comes into Python row by row
            sent = c.execute(
                f"SELECT e.value_type, {_ORIGIN_OF}, COUNT(*) FROM deliveries d "  # noqa: S608
                "JOIN events e ON e.event_key = "
                "(CASE WHEN d.folded IS NULL THEN d.event_key ELSE substr(d.event_key, ?) END) "
                "LEFT JOIN streams s ON s.id = d.stream_id WHERE d.status = 'sent' AND d.finished_at >= ? "
                "GROUP BY 1, 2",
                (len(DIGEST_PREFIX) + 1, since),
            ).fetchall()
            seen = c.execute(
                "SELECT value_type, push_host, stage, COUNT(*) FROM receipts WHERE at >= ? GROUP BY 1, 2, 3", (since,)
            ).fetchall()
            return funnel_rows(sent, seen)

        return await self._run(run)

    async def newest_inbox_id(self, account_id: str, *, until: float | None = None) -> int:
        args: tuple[Any, ...]
        if until is None:
            sql, args = "SELECT MAX(id) FROM inbox WHERE account_id = ?", (account_id,)
        else:  # one seek of inbox_by_time
            sql = "SELECT id FROM inbox WHERE account_id = ? AND created_at <= ? ORDER BY created_at DESC LIMIT 1"
            args = (account_id, until)
        row = await self._run(lambda c: c.execute(sql, args).fetchone())
        return 0 if row is None or row[0] is None else int(row[0])

    # --- ingest ---------------------------------------------------------------------------

    async def ingest(
        self,
        events: list[Event],
        policy: MatchPolicy,
        *,
        cursor: tuple[str, str] | None = None,
        lease: Lease | None = None,  # unused: a SQLite leadership lasts as long as its process
    ) -> IngestResult:
        now = self._clock()
        day = utc_day(now)

        def run(c: sqlite3.Connection) -> IngestResult:
            result = IngestResult(events=len(events))
            for event in events:
                inserted = c.execute(
                    "INSERT OR IGNORE INTO events VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        event.key,
                        event.source,
                        event.receiver,
                        event.value_type,
                        event.block_height,
                        json.dumps(event.row, separators=(",", ":")),
                        now,
                    ),
                ).rowcount
                if not inserted:
                    result.skipped["duplicate_event"] = result.skipped.get("duplicate_event", 0) + 1
                    continue
                result.new_events += 1
                self._match_one(c, event, policy, now, day, result, self._fair)
            if cursor is not None:
                c.execute(
                    "INSERT INTO cursors VALUES (?, ?, ?) ON CONFLICT (source) "
                    "DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                    (cursor[0], cursor[1], now),
                )
            return result

        return await self._tx(run)

    @staticmethod
    def _match_one(
        c: sqlite3.Connection,
        event: Event,
        policy: MatchPolicy,
        now: float,
        day: str,
        result: IngestResult,
        fair: FairShare,
    ) -> None:
        streams = [
            Stream(stream_id, account, gateway, endpoint, ehash, "", "", quiet_hours(zone, start, end))
            for stream_id, account, gateway, endpoint, ehash, zone, start, end in _json_value(
                c, _STREAMS_OF, (event.receiver,)
            )
        ]
        if not streams:
            return
        if not policy.allowed_value_types or event.value_type in policy.allowed_value_types:
            c.execute(_TO_INBOX, (event.receiver, event.key, event.value_type, json.dumps(event.row), now))
        blocked: dict[str, set[str]] = {}
        for r in c.execute("SELECT endpoint_hash, value_type FROM preferences WHERE account_id = ?", (event.receiver,)):
            blocked.setdefault(r[0], set()).add(r[1])
        account_wide = {r[0] for r in c.execute(_ACCOUNT_MUTES, (event.receiver,))}
        sent_today: dict[str, int] = {}
        if policy.max_per_endpoint_per_day:
            sent_today = _json_value(c, _SENT_TODAY, (day, json.dumps([s.endpoint_hash for s in streams])))
        outcome = match(
            event,
            streams,
            policy=policy,
            blocked={s.id: frozenset(blocked.get(s.endpoint_hash, set()) | account_wide) for s in streams},
            sent_today=sent_today,
        )
        for reason, count in outcome.skipped.items():
            result.skipped[reason] = result.skipped.get(reason, 0) + count
        if not outcome.selected:
            return
        plain, paced = split_paced(event, outcome.selected, policy.pacing, now)
        step = policy.fair_step
        fair_at = fair.take(flow_of(event.source, event.row), len(outcome.selected), now, step)
        created = [s.endpoint_hash for s in plain]
        if plain:
            pairs = json.dumps([[s.id, s.endpoint_hash] for s in plain])
            c.execute(_NEW_DELIVERIES, (event.key, now, now, fair_at, step, pairs))
        for i, (stream, fold_key, held_until) in enumerate(paced, start=len(plain)):
            if SqliteStore._pace(c, event, stream, fold_key, held_until, policy, now, fair_at + i * step):
                created.append(stream.endpoint_hash)
            else:
                result.folded += 1
        if policy.max_per_endpoint_per_day and created:  # the counter exists for the cap alone
            c.execute(_COUNT_SENT, (day, json.dumps(created)))
        result.deliveries += len(created)

    @staticmethod
    def _pace(
        c: sqlite3.Connection,
        event: Event,
        stream: Stream,
        fold_key: str,
        held_until: float | None,
        policy: MatchPolicy,
        now: float,
        fair_at: float,
    ) -> bool:
        """Queue the event for ``stream`` as pacing says; True when that made a row (else it was folded)."""
        window = 0.0 if policy.pacing is None else policy.pacing.window(event.value_type)
        first = None
        if held_until is None:  # quiet hours hold everything: no burst to look for
            first = c.execute(_BURST_FIRST, (stream.id, fold_key, now - window)).fetchone()
        found = c.execute(_LATEST_DIGEST, (stream.id, fold_key, now - window - MAX_DIGEST_REACH)).fetchone()
        latest = None if found is None else LatestDigest(found[0], json.loads(found[1]), *found[2:])
        step = plan(event.key, now, fold_key, held_until, window, fold_state(first, latest, now, window, held_until))
        if isinstance(step, Fold):
            assert latest is not None
            c.execute(
                "UPDATE deliveries SET folded = ?, folded_total = folded_total + 1 WHERE id = ?",
                (json.dumps(folded_keys(latest.folded, event.key)), step.delivery_id),
            )
            return False
        if isinstance(step, Hold):
            # created when its window ends: a delivery's age (give_up_after) counts from then
            args = (DIGEST_PREFIX + event.key, stream.id, stream.endpoint_hash, step.due_at, step.due_at, fold_key)
            c.execute(_NEW_PACED, (*args, json.dumps(list(step.folded)), step.total, step.due_at))
        else:
            c.execute(_NEW_PACED, (event.key, stream.id, stream.endpoint_hash, now, now, fold_key, None, 0, fair_at))
        return True

    async def get_cursor(self, source: str) -> str | None:
        row = await self._run(lambda c: c.execute("SELECT value FROM cursors WHERE source = ?", (source,)).fetchone())
        return None if row is None else str(row[0])

    # --- outbox ---------------------------------------------------------------------------

    async def claim(self, limit: int, lease_seconds: float) -> list[Claim]:
        now = self._clock()

        def run(c: sqlite3.Connection) -> list[Claim]:
            fresh = json.loads(c.execute(_FRESH_FIRST, (limit,)).fetchone()[0])
            again = json.loads(c.execute(_DUE_AGAIN, (now, now, limit)).fetchone()[0])
            if not fresh and not again:
                return []
            due = json.dumps([i for _, i in heapq.merge(fresh, again)][:limit])
            c.execute(_LEASE, (now + lease_seconds, due))
            c.execute(_REPLACED, (now, due))
            rows = _json_value(c, _CLAIMED, (due,))
            wanted = {r[4] for r in rows if r[5] is None} | {k for r in rows if r[5] for k in json.loads(r[5])}
            row_texts = _json_value(c, _CLAIMED_EVENTS, (json.dumps(list(wanted)),))
            events: dict[str, dict[str, Any]] = {key: json.loads(text) for key, text in row_texts.items()}
            claims: list[Claim] = []
            row_keys: list[str] = []
            orphans: list[int] = []
            for delivery_id, attempts, compact, created_at, event_key, folded, total, *stream in rows:
                rows_of: tuple[dict[str, Any], ...] = ()
                row_key = event_key
                if folded is None:
                    row = events.get(event_key)
                else:  # a digest: the rows it folds that are still kept
                    kept = [k for k in json.loads(folded) if k in events]
                    rows_of = tuple(events[k] for k in kept)
                    row, row_key = (rows_of[-1], kept[-1]) if kept else (None, "")
                if stream[1] is None or row is None:  # the stream or the event is gone
                    orphans.append(delivery_id)
                    continue
                claims.append(
                    Claim(
                        delivery_id,
                        attempts,
                        bool(compact),
                        created_at,
                        Stream(*stream),
                        row,
                        event_key,
                        rows_of,
                        total,
                    )
                )
                row_keys.append(row_key)
            if orphans:
                c.executemany(
                    "UPDATE deliveries SET status = 'cancelled', finished_at = ?, lease_until = NULL, "
                    "reason = 'stream deleted before sending' WHERE id = ?",
                    [(now, i) for i in orphans],
                )
            return _with_inbox(c, claims, row_keys)

        return await self._tx(run)

    async def next_due_at(self) -> float | None:
        row = await self._run(
            lambda c: c.execute(
                f"SELECT COALESCE((SELECT due_at FROM deliveries WHERE {FRESH} LIMIT 1), "  # noqa: S608
                f"(SELECT MIN(MAX(due_at, COALESCE(lease_until, 0))) FROM deliveries WHERE {AGAIN}))"
            ).fetchone()
        )
        return None if row is None or row[0] is None else float(row[0])

    async def record(self, outcomes: list[Outcome]) -> None:
        now = self._clock()

        def run(c: sqlite3.Connection) -> None:
            retries = [o for o in outcomes if o.status == "retry"]
            finished = [o for o in outcomes if o.status != "retry"]
            c.executemany(
                "UPDATE deliveries SET due_at = ?, lease_until = NULL, compact = ?, http_status = ?, "
                "reason = ? WHERE id = ? AND status = 'pending'",
                [(o.retry_at or now, int(o.compact), o.http_status, o.reason, o.delivery_id) for o in retries],
            )
            alike: dict[tuple[str, int | None, str], list[int]] = {}  # most are (sent, 201, "")
            for o in finished:
                alike.setdefault((o.status, o.http_status, o.reason), []).append(o.delivery_id)
            for (status, http_status, reason), ids in alike.items():
                c.execute(_FINISH, (status, now, http_status, reason, json.dumps(ids)))
            for o in finished:
                if o.status == "gone" and o.endpoint_hash:
                    _delete_streams(c, o.endpoint_hash, None, now)
            refused = [o.delivery_id for o in finished if o.status == "rejected"]
            if refused:  # rare: never in the way of the common case
                c.execute(_REFUSED, (now, json.dumps(refused)))

        await self._tx(run)

    async def release(self, delivery_ids: list[int]) -> None:
        await self._tx(
            lambda c: c.executemany(
                "UPDATE deliveries SET lease_until = NULL, attempts = MAX(attempts - 1, 0) "
                "WHERE id = ? AND status = 'pending'",
                [(i,) for i in delivery_ids],
            )
        )

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        def run(c: sqlite3.Connection) -> list[DeadLetter]:
            rows = c.execute(
                "SELECT d.*, s.account_id FROM deliveries d LEFT JOIN streams s ON s.id = d.stream_id "
                "WHERE d.status IN ('dead', 'rejected') ORDER BY d.finished_at DESC, d.id DESC LIMIT ?",
                (limit,),
            ).fetchall()
            return [
                DeadLetter(
                    delivery_id=r["id"],
                    event_key=r["event_key"],
                    endpoint_hash=r["endpoint_hash"],
                    account_id=r["account_id"],
                    status=r["status"],
                    http_status=r["http_status"],
                    reason=r["reason"],
                    attempts=r["attempts"],
                    created_at=r["created_at"],
                    finished_at=r["finished_at"],
                )
                for r in rows
            ]

        return await self._run(run)

    async def list_streams(
        self, *, account_id: str | None = None, endpoint_hash: str | None = None, limit: int = 100
    ) -> list[StreamInfo]:
        where, args = _stream_filter(account_id, endpoint_hash)

        def run(c: sqlite3.Connection) -> list[StreamInfo]:
            rows = c.execute(
                f"SELECT s.*, (SELECT group_concat(value_type, char(31)) FROM (SELECT value_type FROM "  # noqa: S608
                f"preferences p WHERE p.endpoint_hash = s.endpoint_hash AND p.account_id = s.account_id "
                f"UNION SELECT value_type FROM account_mutes m WHERE m.account_id = s.account_id)) AS muted "
                f"FROM streams s WHERE {where} ORDER BY s.id DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
            return [_stream_info(r, r["muted"].split("\x1f") if r["muted"] else []) for r in rows]

        return await self._run(run)

    async def delete_streams_of(self, *, account_id: str | None = None, endpoint_hash: str | None = None) -> int:
        where, args = _stream_filter(account_id, endpoint_hash)
        now = self._clock()

        def run(c: sqlite3.Connection) -> int:
            pairs = c.execute(f"SELECT endpoint_hash, account_id FROM streams s WHERE {where}", args).fetchall()  # noqa: S608
            return sum(_delete_streams(c, ehash, account, now) for ehash, account in pairs)

        return await self._tx(run)

    async def retry_dead_letters(self, ids: list[int] | None = None) -> int:
        chosen = _json_ids(ids)
        now = self._clock()
        return await self._tx(
            lambda c: int(
                c.execute(
                    "UPDATE deliveries SET status = 'pending', attempts = 0, due_at = ?, fair_at = ?, "
                    "lease_until = NULL, finished_at = NULL, http_status = NULL, reason = '' "
                    "WHERE status IN ('dead', 'rejected') AND (? IS NULL OR id IN (SELECT value FROM json_each(?)))",
                    (now, now, chosen, chosen),
                ).rowcount
            )
        )

    async def purge_dead_letters(self, ids: list[int] | None = None) -> int:
        chosen = _json_ids(ids)
        return await self._tx(
            lambda c: int(
                c.execute(
                    "DELETE FROM deliveries WHERE status IN ('dead', 'rejected') "
                    "AND (? IS NULL OR id IN (SELECT value FROM json_each(?)))",
                    (chosen, chosen),
                ).rowcount
            )
        )

    async def delivery_history(self, since: float) -> list[tuple[int, str, int]]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT CAST(finished_at / 60 AS INTEGER) * 60 AS minute, status, COUNT(*) FROM deliveries "
                "WHERE status != 'pending' AND finished_at >= ? GROUP BY minute, status ORDER BY minute",
                (since,),
            ).fetchall()
        )
        return [(int(m), str(st), int(n)) for m, st, n in rows]

    async def failing_hosts(self, since: float, limit: int = 5) -> list[tuple[str, int]]:
        rows = await self._run(
            lambda c: c.execute(
                "SELECT s.endpoint FROM deliveries d JOIN streams s ON s.id = d.stream_id "
                "WHERE (d.status IN ('dead', 'rejected') AND d.finished_at >= ?) "
                "OR (d.status = 'pending' AND d.attempts > 0)",
                (since,),
            ).fetchall()
        )
        return _count_hosts([r[0] for r in rows], limit)

    async def set_cursor(self, source: str, value: str) -> None:
        now = self._clock()
        await self._tx(
            lambda c: c.execute(
                "INSERT INTO cursors VALUES (?, ?, ?) ON CONFLICT (source) DO UPDATE SET value = excluded.value, "
                "updated_at = excluded.updated_at",
                (source, value, now),
            )
        )

    async def counts(self) -> dict[str, int]:
        def run(c: sqlite3.Connection) -> dict[str, int]:
            out: dict[str, Any] = {
                "streams": c.execute("SELECT COUNT(*) FROM streams").fetchone()[0],
                "accounts": c.execute("SELECT COUNT(DISTINCT account_id) FROM streams").fetchone()[0],
            }
            for status, n in c.execute("SELECT status, COUNT(*) FROM deliveries GROUP BY status"):
                out[f"deliveries_{status}"] = n
            return {k: int(v) for k, v in out.items()}

        return await self._run(run)

    async def health_counts(self) -> dict[str, int]:
        def run(c: sqlite3.Connection) -> dict[str, int]:
            # pending rows through their partial index: the finished history (days of it) is never walked
            streams, accounts = c.execute("SELECT COUNT(*), COUNT(DISTINCT account_id) FROM streams").fetchone()
            pending = c.execute(PENDING_COUNT).fetchone()[0]
            return {"streams": int(streams), "accounts": int(accounts), "deliveries_pending": int(pending)}

        return await self._run(run)

    @asynccontextmanager
    async def leadership(self, name: str) -> AsyncIterator[_SoleLease]:
        """The embedded store serves one process: it always leads."""
        yield _SoleLease()

    async def use_nonce(self, nonce: str, expires_at: float) -> bool:
        now = self._clock()

        def run(c: sqlite3.Connection) -> bool:
            c.execute("DELETE FROM used_nonces WHERE nonce = ? AND expires_at < ?", (nonce, now))
            return bool(c.execute("INSERT OR IGNORE INTO used_nonces VALUES (?, ?)", (nonce, expires_at)).rowcount)

        return await self._tx(run)

    async def purge(self, older_than: float, inbox_older_than: float | None = None) -> int:
        def run(c: sqlite3.Connection) -> int:
            c.execute("DELETE FROM used_nonces WHERE expires_at < ?", (self._clock(),))
            n = c.execute(
                "DELETE FROM deliveries WHERE status != 'pending' AND finished_at < ?", (older_than,)
            ).rowcount
            (oldest_digest,) = c.execute(_OLDEST_OPEN_DIGEST).fetchone()
            c.execute(
                "DELETE FROM events WHERE created_at < ? AND NOT EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.event_key = events.event_key)",
                (events_purged_before(older_than, oldest_digest),),
            )
            c.execute("DELETE FROM endpoint_daily WHERE day < ?", (utc_day(older_than),))
            if inbox_older_than is not None:
                c.execute("DELETE FROM inbox WHERE created_at < ?", (inbox_older_than,))
                c.execute("DELETE FROM inbox_read WHERE inbox_id NOT IN (SELECT id FROM inbox)")
                c.execute("DELETE FROM receipts WHERE at < ?", (inbox_older_than,))
            return int(n)

        return await self._tx(run)


class _ProbeDone(Exception):
    """Rolls the readiness probe's transaction back."""


class _SoleLease:
    async def wait_lost(self) -> None:
        await anyio.sleep_forever()


def _create_private(path: Path) -> None:
    """The database holds every endpoint (a capability URL) and auth secret: a new file is 0600 and a
    new directory 0700, whatever the umask. SQLite gives its -wal and -shm files the database's mode."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _enable_wal(conn: sqlite3.Connection, attempts: int = 100) -> None:
    """Switch to WAL. Processes opening a new file together can see "database is locked" here at
    once: SQLite does not always wait on the busy timeout for a journal-mode change, so retry."""
    for attempt in range(attempts):
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(0.05)


def _json_ids(ids: list[int] | None) -> str | None:
    """Ids as the JSON array the queries' ``json_each(?)`` reads; None selects every row."""
    return None if ids is None else json.dumps([int(i) for i in ids])


def _stream_filter(account_id: str | None, endpoint_hash: str | None) -> tuple[str, list[str]]:
    clauses, args = ["1 = 1"], []
    if account_id is not None:
        clauses.append("s.account_id = ?")
        args.append(account_id)
    if endpoint_hash is not None:
        clauses.append("s.endpoint_hash = ?")
        args.append(endpoint_hash)
    return " AND ".join(clauses), args


def _with_inbox(c: sqlite3.Connection, claims: list[Claim], row_keys: list[str]) -> list[Claim]:
    """The claims with the inbox id of the row each shows (``row_keys``: a digest's newest) and the
    unread count of their browser (the badge): two statements for the batch."""
    if not claims:
        return claims
    keys = json.dumps([[cl.stream.account_id, k] for cl, k in zip(claims, row_keys, strict=True)])
    ids = {(a, k): i for a, k, i in _json_value(c, _INBOX_IDS, (keys,))}
    readers = json.dumps(sorted({(cl.stream.account_id, cl.stream.endpoint_hash) for cl in claims}))
    unread = {(a, r): n for a, r, n in _json_value(c, _UNREAD_OF, (BADGE_CAP, readers))}
    return [
        cl._replace(
            inbox_id=ids.get((cl.stream.account_id, k)),
            unread=unread.get((cl.stream.account_id, cl.stream.endpoint_hash)),
        )
        for cl, k in zip(claims, row_keys, strict=True)
    ]


def _delete_streams(c: sqlite3.Connection, ehash: str, account_id: str | None, now: float) -> int:
    """Delete streams of an endpoint and cancel what was still queued for them."""
    where, args = "endpoint_hash = ?", [ehash]
    if account_id is not None:
        where += " AND account_id = ?"
        args.append(account_id)
    ids = [r[0] for r in c.execute(f"SELECT id FROM streams WHERE {where}", args)]  # noqa: S608
    if not ids:
        return 0
    marks = ",".join("?" * len(ids))
    c.execute(f"DELETE FROM streams WHERE id IN ({marks})", ids)  # noqa: S608
    c.execute(f"DELETE FROM preferences WHERE {where}", args)  # noqa: S608
    c.execute(
        f"UPDATE deliveries SET status = 'cancelled', finished_at = ?, lease_until = NULL, "  # noqa: S608
        f"reason = 'stream deleted' WHERE status = 'pending' AND stream_id IN ({marks})",
        (now, *ids),
    )
    return len(ids)
