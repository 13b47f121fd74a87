"""The scale-out store: PostgreSQL through an asyncpg connection pool, the same contract as SQLite.

Several gateway processes share one database: deliveries are claimed with ``FOR UPDATE SKIP LOCKED``
and a lease, and migrations run under an advisory lock, so processes starting together apply each
migration once. ``?schema=NAME`` in the URL keeps the tables in their own schema (created if missing).
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import json
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import anyio
import asyncpg

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
from gateway.store.admin import count_hosts, funnel_rows, stream_info
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
from gateway.store.sqlite import utc_day

MIGRATION_LOCK = 0x6761_7465  # pg_advisory_xact_lock key: one migrating process at a time
LEADER_RETRY = 1.0  # seconds between attempts to take a leadership another process holds
LEADER_CHECK = 1.0  # seconds between checks that the leader's connection is alive

MIGRATIONS: list[tuple[str, str]] = [
    (
        "0001_initial",
        """
        CREATE TABLE streams (
            id BIGSERIAL PRIMARY KEY,
            account_id TEXT NOT NULL,
            gateway TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            endpoint_hash TEXT NOT NULL,
            p256dh TEXT NOT NULL,
            auth TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL,
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
            block_height BIGINT,
            row_json TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL
        );
        CREATE INDEX events_by_created ON events (created_at);
        CREATE TABLE deliveries (
            id BIGSERIAL PRIMARY KEY,
            event_key TEXT NOT NULL,
            stream_id BIGINT NOT NULL,
            endpoint_hash TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',
            attempts INTEGER NOT NULL DEFAULT 0,
            compact BOOLEAN NOT NULL DEFAULT FALSE,
            created_at DOUBLE PRECISION NOT NULL,
            due_at DOUBLE PRECISION NOT NULL,
            lease_until DOUBLE PRECISION,
            finished_at DOUBLE PRECISION,
            http_status INTEGER,
            reason TEXT NOT NULL DEFAULT '',
            UNIQUE (event_key, endpoint_hash)
        );
        CREATE INDEX deliveries_due ON deliveries (due_at, lease_until) WHERE status = 'pending';
        CREATE INDEX deliveries_finished ON deliveries (finished_at) WHERE status <> 'pending';
        CREATE INDEX deliveries_by_stream ON deliveries (stream_id) WHERE status = 'pending';
        CREATE TABLE endpoint_daily (
            endpoint_hash TEXT NOT NULL,
            day TEXT NOT NULL,
            count INTEGER NOT NULL,
            PRIMARY KEY (endpoint_hash, day)
        );
        CREATE TABLE cursors (
            source TEXT PRIMARY KEY,
            value TEXT NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL
        );
        """,
    ),
    (
        # Nonces of signed requests (NEP-413), remembered until the signature expires: no replays.
        "0002_used_nonces",
        """
        CREATE TABLE used_nonces (nonce TEXT PRIMARY KEY, expires_at DOUBLE PRECISION NOT NULL);
        CREATE INDEX used_nonces_expiry ON used_nonces (expires_at);
        """,
    ),
    (
        # The neardata watcher keeps the set of subscribed accounts current from what changed.
        "0003_streams_by_update",
        "CREATE INDEX streams_by_update ON streams (updated_at);",
    ),
    (
        # Mutes as the NEAR server keeps them: per (account, type), outliving the account's streams.
        # Every mute so far came from /preferences/set: they become the account's.
        "0004_account_mutes",
        """
        CREATE TABLE account_mutes (
            account_id TEXT NOT NULL,
            value_type TEXT NOT NULL,
            PRIMARY KEY (account_id, value_type)
        );
        INSERT INTO account_mutes SELECT DISTINCT account_id, value_type FROM preferences ON CONFLICT DO NOTHING;
        DELETE FROM preferences;
        """,
    ),
    (
        # Pacing: a stream's quiet hours; a delivery's fold key (the burst or quiet window it opens or
        # belongs to) and, for a digest, the events it folds (JSON keys, oldest first) and their count.
        "0005_pacing",
        """
        ALTER TABLE streams ADD COLUMN quiet_zone TEXT, ADD COLUMN quiet_start INTEGER, ADD COLUMN quiet_end INTEGER;
        ALTER TABLE deliveries ADD COLUMN fold_key TEXT, ADD COLUMN folded TEXT,
            ADD COLUMN folded_total INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX deliveries_folds ON deliveries (stream_id, fold_key, created_at) WHERE fold_key IS NOT NULL;
        CREATE INDEX deliveries_open_digests ON deliveries (created_at) WHERE folded IS NOT NULL AND status = 'pending';
        """,
    ),
    (
        # The inbox: every notification matched for an account, kept [inbox] days, with read marks per
        # reader (a browser's endpoint hash, or '*' for the proven account): all up to a mark, and ones.
        "0006_inbox",
        """
        CREATE TABLE inbox (
            id BIGSERIAL PRIMARY KEY,
            account_id TEXT NOT NULL,
            event_key TEXT NOT NULL,
            value_type TEXT NOT NULL,
            row_json TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            UNIQUE (account_id, event_key)
        );
        CREATE INDEX inbox_by_account ON inbox (account_id, id);
        CREATE INDEX inbox_by_created ON inbox (created_at);
        CREATE TABLE inbox_marks (
            account_id TEXT NOT NULL,
            reader TEXT NOT NULL,
            up_to BIGINT NOT NULL,
            PRIMARY KEY (account_id, reader)
        );
        CREATE TABLE inbox_read (
            account_id TEXT NOT NULL,
            reader TEXT NOT NULL,
            inbox_id BIGINT NOT NULL,
            PRIMARY KEY (account_id, reader, inbox_id)
        );
        INSERT INTO inbox_marks SELECT DISTINCT account_id, endpoint_hash, 0 FROM streams;
        """,
    ),
    (
        # What the service workers report of each notification: shown, clicked, closed (once each per
        # browser), with the type and push service for the funnel.
        "0007_receipts",
        """
        CREATE TABLE receipts (
            inbox_id BIGINT NOT NULL,
            reader TEXT NOT NULL,
            stage TEXT NOT NULL,
            value_type TEXT NOT NULL,
            push_host TEXT NOT NULL,
            at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (inbox_id, reader, stage)
        );
        CREATE INDEX receipts_by_time ON receipts (at);
        """,
    ),
    (
        # A stream created with a NEP-413 signature proves its account: what changes the account for
        # all its browsers through /v1 needs it. Refreshed with other keys and no signature, it is lost.
        "0008_signed_streams",
        "ALTER TABLE streams ADD COLUMN signed BOOLEAN NOT NULL DEFAULT FALSE;",
    ),
    (
        # "Read up to a time" finds the account's newest item by then without walking the others.
        "0009_inbox_by_time",
        "CREATE INDEX inbox_by_time ON inbox (account_id, created_at);",
    ),
    (
        # Fresh deliveries leave in fair-share order, the rest by due time (as SQLite's 0012).
        "0010_fair_share",
        f"""
        ALTER TABLE deliveries ADD COLUMN fair_at DOUBLE PRECISION NOT NULL DEFAULT 0;
        UPDATE deliveries SET fair_at = due_at WHERE status = 'pending';
        DROP INDEX deliveries_due;
        CREATE INDEX deliveries_due ON deliveries (due_at, lease_until) WHERE {AGAIN};
        CREATE INDEX deliveries_fresh ON deliveries (fair_at) WHERE {FRESH};
        """,  # noqa: S608
    ),
    (
        # A stream whose push service refused a push as not ours (401/403), until registered again.
        "0011_stream_refused",
        "ALTER TABLE streams ADD COLUMN refused_at DOUBLE PRECISION;",
    ),
]


# The inbox (as in the SQLite store). $1 account, $2 reader.
_NEW_READER = (
    "INSERT INTO inbox_marks SELECT $1::text, $2::text, COALESCE(MAX(id), 0) FROM inbox WHERE account_id = $1 "
    "ON CONFLICT DO NOTHING"
)
_READ_UP_TO = "SELECT COALESCE(MAX(up_to), 0) AS up_to FROM inbox_marks WHERE account_id = $1 AND reader IN ($2, '*')"
# Unread per (account $1[k], reader $2[k]), counted up to $3. Ordered by the account's index so that
# a plan walks it, never the inbox: an account with nothing unread among a million rows of others'
# took 99-549 ms by a scan of the whole table (bench.inbox). Not row by row (see the SQLite store): the
# items after the mark up to twice the cap, less the distinct items read one by one after it — exact
# while those are at most the cap, else counted row by row.
_UNREAD_OF = (
    "SELECT p.a, p.r, CASE WHEN n.one_by_one > $3 THEN (SELECT COUNT(*) FROM (SELECT 1 FROM inbox i "
    "WHERE i.account_id = p.a AND (i.account_id, i.id) > (p.a, m.up) AND NOT EXISTS (SELECT 1 FROM inbox_read x "
    "WHERE x.account_id = p.a AND x.reader IN (p.r, '*') AND x.inbox_id = i.id) ORDER BY i.account_id, i.id "
    "LIMIT $3) u) ELSE LEAST($3, (SELECT COUNT(*) FROM (SELECT 1 FROM inbox i WHERE i.account_id = p.a "
    "AND (i.account_id, i.id) > (p.a, m.up) ORDER BY i.account_id, i.id LIMIT 2 * $3) u) - n.one_by_one) END "
    "FROM unnest($1::text[], $2::text[]) AS p(a, r) "
    "CROSS JOIN LATERAL (SELECT COALESCE(MAX(up_to), 0) AS up FROM inbox_marks "
    "WHERE account_id = p.a AND reader IN (p.r, '*')) m "
    "CROSS JOIN LATERAL (SELECT COUNT(*) AS one_by_one FROM (SELECT DISTINCT x.inbox_id FROM inbox_read x "
    "WHERE x.account_id = p.a AND x.reader IN (p.r, '*') AND x.inbox_id > m.up AND EXISTS (SELECT 1 FROM inbox i "
    "WHERE i.id = x.inbox_id AND i.account_id = p.a) LIMIT $3 + 1) d) n"
)
_IS_READ = (
    "(i.id <= m.up_to OR EXISTS (SELECT 1 FROM inbox_read r WHERE r.account_id = i.account_id "
    "AND r.reader IN ($2, '*') AND r.inbox_id = i.id))"
)


def split_schema(url: str) -> tuple[str, str | None]:
    """The DSN without our ``schema`` parameter, and that schema."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query)
    schema = next((v for k, v in query if k == "schema"), None)
    rest = urlencode([(k, v) for k, v in query if k != "schema"])
    return urlunsplit((parts.scheme, parts.netloc, parts.path, rest, parts.fragment)), schema


# Errors after which the same call may succeed: the connection was lost or refused, the server is
# starting, stopping or out of connections, a transaction lost a conflict, or a failover left us on
# a read-only standby. Disk full is transient too, with its own code.
TRANSIENT_ERRORS = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,  # class 08
    asyncpg.OperatorInterventionError,  # class 57: admin or crash shutdown, cannot connect now, cancelled
    asyncpg.InsufficientResourcesError,  # class 53: too many connections, out of memory
    asyncpg.TransactionRollbackError,  # class 40: serialization failure, deadlock
    asyncpg.ReadOnlySQLTransactionError,
    # asyncpg's protocol on a connection the server just terminated ("cannot switch to state ...;
    # another operation is in progress"); the pool discards that connection when it is released.
    asyncpg.InternalClientError,
)
KEEPALIVES = {"tcp_keepalives_idle": "10", "tcp_keepalives_interval": "5", "tcp_keepalives_count": "3"}
# Data the server (or asyncpg, encoding it) will never take: out of range, invalid text, too big.
REFUSED_ERRORS = (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError, asyncpg.ProgramLimitExceededError)


@guard_calls
class PostgresStore:
    def __init__(
        self,
        url: str,
        clock: Callable[[], float] = time.time,
        pool_size: int = 10,
        *,
        connect_timeout: float = 10.0,
        command_timeout: float = 60.0,
    ) -> None:
        self._dsn, self._schema = split_schema(url)
        if self._schema is not None and not self._schema.replace("_", "").isalnum():
            raise StoreError(f"schema name {self._schema!r} must be letters, digits and _")
        self._clock = clock
        self._pool_size = pool_size
        self._connect_timeout = connect_timeout
        self._command_timeout = command_timeout
        self._pool: asyncpg.Pool | None = None
        self._fair = FairShare()  # this process's ingest: the order fresh deliveries leave in
        self.status = StoreStatus()

    @staticmethod
    def classify(exc: BaseException) -> StoreError | None:
        """A driver error as the store boundary reports it (gateway/store/boundary.py)."""
        if isinstance(exc, asyncpg.DiskFullError):
            return StoreUnavailable(f"PostgreSQL: {exc}", "storage_full")
        if isinstance(exc, TRANSIENT_ERRORS):
            return StoreUnavailable(f"PostgreSQL: {type(exc).__name__}: {exc}")
        if isinstance(exc, asyncpg.InterfaceError):
            if isinstance(exc, asyncpg.ClientConfigurationError) or "pool is clos" in str(exc):
                return None  # our configuration, or a call after close(): not an outage
            if isinstance(exc, ValueError):  # asyncpg could not encode an argument (an int past 64 bits)
                return StoreRefused(f"PostgreSQL refused the data: {exc}")
            if "closed" in str(exc):  # "connection is closed", "... was closed in the middle of operation"
                return StoreUnavailable(f"PostgreSQL: {exc}")
            return None
        if isinstance(exc, REFUSED_ERRORS):
            return StoreRefused(f"PostgreSQL refused the data: {type(exc).__name__}: {exc}")
        return None

    def _connect_options(self) -> dict[str, Any]:
        # TCP keepalives both ways: after a silent partition (no reset) the server ends the session,
        # and with it a leader's advisory lock, in about 25 s instead of the kernel's two hours.
        settings = dict(KEEPALIVES)
        if self._schema:
            settings["search_path"] = self._schema
        return {"timeout": self._connect_timeout, "command_timeout": self._command_timeout, "server_settings": settings}

    @property
    def pool(self) -> asyncpg.Pool:
        if self._pool is None:
            raise StoreError("store is not open")
        return self._pool

    async def open(self) -> None:
        try:
            if self._schema:
                conn = await asyncpg.connect(self._dsn, timeout=self._connect_timeout)
                try:
                    async with conn.transaction():  # IF NOT EXISTS alone races between starting processes
                        await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                        await conn.execute(f'CREATE SCHEMA IF NOT EXISTS "{self._schema}"')
                finally:
                    await conn.close()
            # The pool replaces a connection that died when it is next released: after an outage
            # it reconnects by itself, one failed call per dead connection.
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=1, max_size=self._pool_size, **self._connect_options()
            )
            async with self.pool.acquire() as conn, conn.transaction():
                await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS schema_migrations "
                    "(name TEXT PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
                )
                applied = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
                for name, sql in MIGRATIONS:
                    if name not in applied:
                        await conn.execute(sql)
                        await conn.execute("INSERT INTO schema_migrations VALUES ($1, $2)", name, time.time())
        except (OSError, TimeoutError, asyncpg.PostgresError) as exc:
            raise StoreError(f"cannot open PostgreSQL store: {exc}") from exc

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    async def ping(self) -> None:
        """Probe a write (a read-only standby after a failover refuses it), rolled back."""
        async with self.pool.acquire() as conn:
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.execute("INSERT INTO cursors VALUES ('~probe', '', 0) ON CONFLICT DO NOTHING")
            finally:
                await tx.rollback()

    # --- streams ---------------------------------------------------------------------------

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
        async with self.pool.acquire() as conn, conn.transaction():

            async def refreshed() -> bool:
                updated = await conn.execute(
                    "UPDATE streams SET gateway = $1, p256dh = $2, auth = $3, endpoint = $4, updated_at = $5, "
                    "refused_at = NULL, signed = CASE WHEN $8 THEN TRUE WHEN auth = $3 THEN signed ELSE FALSE END "
                    "WHERE endpoint_hash = $6 AND account_id = $7",
                    gateway,
                    p256dh,
                    auth,
                    endpoint,
                    now,
                    ehash,
                    account_id,
                    signed,
                )
                return bool(updated != "UPDATE 0")

            if await refreshed():  # refreshing is never capped, and takes no lock
                return False
            # Serialise creates per account and per endpoint so concurrent ones cannot overshoot
            # (always account first, then endpoint: no lock cycle).
            locks = [f"account:{account_id}"] if max_per_account else []
            if max_per_endpoint:
                locks.append(f"endpoint:{ehash}")
            for key in locks:
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", key)
            if locks and await refreshed():  # a create of this very stream committed while we waited
                return False
            if max_per_endpoint:  # a hard cap: only the endpoint's owner can fill it
                accounts = await conn.fetchval("SELECT count(*) FROM streams WHERE endpoint_hash = $1", ehash)
                if accounts >= max_per_endpoint:
                    raise StreamCapReached("endpoint", max_per_endpoint)
            if max_per_account:
                # Anyone may register a stream for any account: at the cap, the account's least recently
                # refreshed streams give way (a real browser refreshes its own on every page load), so
                # junk streams can never lock the owner out. A refresh racing the eviction of that very
                # stream may lose it; the browser's next refresh brings it back.
                streams = await conn.fetchval("SELECT count(*) FROM streams WHERE account_id = $1", account_id)
                if streams >= max_per_account:
                    oldest = await conn.fetch(
                        "SELECT endpoint_hash FROM streams WHERE account_id = $1 ORDER BY updated_at, id LIMIT $2",
                        account_id,
                        streams - max_per_account + 1,
                    )
                    for victim in oldest:
                        await _delete_streams(conn, victim[0], account_id, now)
            inserted: bool = await conn.fetchval(
                "INSERT INTO streams (account_id, gateway, endpoint, endpoint_hash, p256dh, auth, created_at, "
                "updated_at, signed) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8) "
                "ON CONFLICT (endpoint_hash, account_id) "
                "DO UPDATE SET gateway = EXCLUDED.gateway, endpoint = EXCLUDED.endpoint, p256dh = EXCLUDED.p256dh, "
                "auth = EXCLUDED.auth, updated_at = EXCLUDED.updated_at, signed = CASE WHEN EXCLUDED.signed THEN TRUE "
                "WHEN streams.auth = EXCLUDED.auth THEN streams.signed ELSE FALSE END RETURNING (xmax = 0)",
                account_id,
                gateway,
                endpoint,
                ehash,
                p256dh,
                auth,
                now,
                signed,
            )
            if inserted:
                await conn.execute(_NEW_READER, account_id, ehash)
            return inserted

    async def use_nonce(self, nonce: str, expires_at: float) -> bool:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM used_nonces WHERE nonce = $1 AND expires_at < $2", nonce, self._clock())
            status = await conn.execute(
                "INSERT INTO used_nonces VALUES ($1, $2) ON CONFLICT (nonce) DO NOTHING", nonce, expires_at
            )
        return bool(status == "INSERT 0 1")

    async def delete_streams(self, endpoint: str, account_id: str | None = None) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            return await _delete_streams(conn, endpoint_hash(endpoint), account_id, self._clock())

    async def accounts(self) -> list[str]:
        rows = await self.pool.fetch("SELECT DISTINCT account_id FROM streams ORDER BY 1")
        return [r[0] for r in rows]

    async def accounts_updated_since(self, since: float) -> list[str]:
        rows = await self.pool.fetch("SELECT DISTINCT account_id FROM streams WHERE updated_at >= $1", since)
        return [r[0] for r in rows]

    async def set_quiet_hours(self, account_id: str, endpoint: str, quiet: QuietHours | None) -> bool:
        zone, start, end = quiet if quiet is not None else (None, None, None)
        status = await self.pool.execute(
            "UPDATE streams SET quiet_zone = $1, quiet_start = $2, quiet_end = $3 "
            "WHERE endpoint_hash = $4 AND account_id = $5",
            zone,
            start,
            end,
            endpoint_hash(endpoint),
            account_id,
        )
        return str(status) != "UPDATE 0"

    async def set_preference(
        self, account_id: str, endpoint: str, value_type: str, block: bool, *, scope: MuteScope = "account"
    ) -> bool:
        ehash = endpoint_hash(endpoint)
        async with self.pool.acquire() as conn, conn.transaction():
            exists = await conn.fetchval(
                "SELECT 1 FROM streams WHERE endpoint_hash = $1 AND account_id = $2", ehash, account_id
            )
            if not exists:
                return False
            if scope == "account":
                if block:
                    await conn.execute(
                        "INSERT INTO account_mutes VALUES ($1, $2) ON CONFLICT DO NOTHING", account_id, value_type
                    )
                else:
                    await conn.execute(
                        "DELETE FROM account_mutes WHERE account_id = $1 AND value_type = $2", account_id, value_type
                    )
            elif block:
                await conn.execute(
                    "INSERT INTO preferences VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", ehash, account_id, value_type
                )
            else:
                await conn.execute(
                    "DELETE FROM preferences WHERE endpoint_hash = $1 AND account_id = $2 AND value_type = $3",
                    ehash,
                    account_id,
                    value_type,
                )
            return True

    # --- the inbox ------------------------------------------------------------------------

    async def inbox(
        self, account_id: str, reader: str, *, before: int | None = None, limit: int = 50
    ) -> list[InboxItem]:
        rows = await self.pool.fetch(
            f"WITH m AS ({_READ_UP_TO}) SELECT i.id, i.event_key, i.value_type, i.row_json, i.created_at, "  # noqa: S608
            f"{_IS_READ} AS read FROM inbox i, m WHERE i.account_id = $1 AND i.id < $3 ORDER BY i.id DESC LIMIT $4",
            account_id,
            reader,
            before if before is not None else 2**62,
            limit,
        )
        return [InboxItem(r[0], r[1], r[2], json.loads(r[3]), r[4], bool(r[5])) for r in rows]

    async def unread_count(self, account_id: str, reader: str, *, cap: int = UNREAD_CAP) -> int:
        counted = await self.pool.fetchrow(_UNREAD_OF, [account_id], [reader], cap)
        count = counted[2]
        return int(count)

    async def mark_read(
        self, account_id: str, reader: str, *, ids: list[int] | None = None, up_to: int | None = None
    ) -> None:
        async with self.pool.acquire() as conn, conn.transaction():
            if up_to is not None:
                await conn.execute(
                    "INSERT INTO inbox_marks VALUES ($1, $2, $3) ON CONFLICT (account_id, reader) "
                    "DO UPDATE SET up_to = GREATEST(inbox_marks.up_to, EXCLUDED.up_to)",
                    account_id,
                    reader,
                    up_to,
                )
                await conn.execute(
                    "DELETE FROM inbox_read WHERE account_id = $1 AND reader = $2 AND inbox_id <= $3",
                    account_id,
                    reader,
                    up_to,
                )
            if ids:
                await conn.execute(
                    "INSERT INTO inbox_read SELECT $1::text, $2::text, id FROM inbox WHERE account_id = $1 "
                    "AND id = ANY($3) ON CONFLICT DO NOTHING",
                    account_id,
                    reader,
                    ids,
                )

    async def record_receipt(self, account_id: str, reader: str, inbox_id: int, stage: str, push_host: str) -> Receipt:
        async with self.pool.acquire() as conn, conn.transaction():
            item = await conn.fetchrow(
                "SELECT value_type, event_key FROM inbox WHERE id = $1 AND account_id = $2", inbox_id, account_id
            )
            pushed = item is not None and await conn.fetchval(
                # its own delivery to this browser, or a digest of the browser's stream folding it
                "SELECT EXISTS (SELECT 1 FROM deliveries WHERE event_key = $1 AND endpoint_hash = $2) OR EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.stream_id = (SELECT id FROM streams WHERE endpoint_hash = $2 "
                "AND account_id = $3) AND d.fold_key IS NOT NULL AND d.folded IS NOT NULL AND d.folded::jsonb ? $1)",
                item["event_key"],
                reader,
                account_id,
            )
            if item is None or not pushed:
                return Receipt(known=False, new=False, value_type="")
            value_type = item["value_type"]
            new = await conn.fetchval(
                "INSERT INTO receipts VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING RETURNING 1",
                inbox_id,
                reader,
                stage,
                value_type,
                push_host,
                self._clock(),
            )
            if stage == "clicked":
                await conn.execute(
                    "INSERT INTO inbox_read VALUES ($1, $2, $3) ON CONFLICT DO NOTHING", account_id, reader, inbox_id
                )
            return Receipt(known=True, new=new is not None, value_type=str(value_type))

    async def funnel(self, since: float) -> list[FunnelRow]:
        async with self.pool.acquire() as conn:
            # counted in SQL by (type, origin): a day of pushes never comes into Python row by row
            sent = await conn.fetch(
                "SELECT e.value_type, split_part(s.endpoint, '/', 1) || '//' || split_part(s.endpoint, '/', 3), "
                "COUNT(*) FROM deliveries d JOIN events e ON e.event_key = (CASE WHEN d.folded IS NULL "
                "THEN d.event_key ELSE substr(d.event_key, $2) END) LEFT JOIN streams s ON s.id = d.stream_id "
                "WHERE d.status = 'sent' AND d.finished_at >= $1 GROUP BY 1, 2",
                since,
                len(DIGEST_PREFIX) + 1,
            )
            seen = await conn.fetch(
                "SELECT value_type, push_host, stage, COUNT(*) FROM receipts WHERE at >= $1 GROUP BY 1, 2, 3", since
            )
        return funnel_rows([tuple(r) for r in sent], [tuple(r) for r in seen])

    async def newest_inbox_id(self, account_id: str, *, until: float | None = None) -> int:
        if until is None:
            value = await self.pool.fetchval("SELECT MAX(id) FROM inbox WHERE account_id = $1", account_id)
        else:  # one seek of inbox_by_time
            value = await self.pool.fetchval(
                "SELECT id FROM inbox WHERE account_id = $1 AND created_at <= $2 ORDER BY created_at DESC LIMIT 1",
                account_id,
                until,
            )
        return 0 if value is None else int(value)

    # --- ingest ----------------------------------------------------------------------------

    async def ingest(
        self,
        events: list[Event],
        policy: MatchPolicy,
        *,
        cursor: tuple[str, str] | None = None,
        lease: Lease | None = None,
    ) -> IngestResult:
        now = self._clock()
        day = utc_day(now)
        result = IngestResult(events=len(events))
        # A leader writes on the connection that holds its advisory lock: when that connection dies
        # the lock is gone and so is the transaction, so a watcher that lost its leadership can
        # never commit beside the new leader.
        connection = lease.connection() if isinstance(lease, _AdvisoryLease) else self.pool.acquire()
        async with connection as conn, conn.transaction():
            for event in events:
                inserted = await conn.fetchval(
                    "INSERT INTO events VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING RETURNING 1",
                    event.key,
                    event.source,
                    event.receiver,
                    event.value_type,
                    event.block_height,
                    json.dumps(event.row, separators=(",", ":")),
                    now,
                )
                if not inserted:
                    result.skipped["duplicate_event"] = result.skipped.get("duplicate_event", 0) + 1
                    continue
                result.new_events += 1
                await self._match_one(conn, event, policy, now, day, result, self._fair)
            if cursor is not None:
                await conn.execute(
                    "INSERT INTO cursors VALUES ($1, $2, $3) ON CONFLICT (source) "
                    "DO UPDATE SET value = EXCLUDED.value, updated_at = EXCLUDED.updated_at",
                    cursor[0],
                    cursor[1],
                    now,
                )
        return result

    @staticmethod
    async def _match_one(
        conn: Any,
        event: Event,
        policy: MatchPolicy,
        now: float,
        day: str,
        result: IngestResult,
        fair: FairShare,
    ) -> None:
        streams = [
            Stream(
                r["id"],
                r["account_id"],
                r["gateway"],
                r["endpoint"],
                r["endpoint_hash"],
                "",
                "",
                quiet_hours(r["quiet_zone"], r["quiet_start"], r["quiet_end"]),
            )
            for r in await conn.fetch(
                "SELECT id, account_id, gateway, endpoint, endpoint_hash, quiet_zone, quiet_start, quiet_end "
                "FROM streams WHERE account_id = $1",
                event.receiver,
            )
        ]
        if not streams:
            return
        if not policy.allowed_value_types or event.value_type in policy.allowed_value_types:
            await conn.execute(
                "INSERT INTO inbox (account_id, event_key, value_type, row_json, created_at) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                event.receiver,
                event.key,
                event.value_type,
                json.dumps(event.row),
                now,
            )
        blocked: dict[str, set[str]] = {}
        for r in await conn.fetch(
            "SELECT endpoint_hash, value_type FROM preferences WHERE account_id = $1", event.receiver
        ):
            blocked.setdefault(r[0], set()).add(r[1])
        account_wide = {
            r[0] for r in await conn.fetch("SELECT value_type FROM account_mutes WHERE account_id = $1", event.receiver)
        }
        sent_today: dict[str, int] = {}
        if policy.max_per_endpoint_per_day:
            rows = await conn.fetch(
                "SELECT endpoint_hash, count FROM endpoint_daily WHERE day = $1 AND endpoint_hash = ANY($2)",
                day,
                [s.endpoint_hash for s in streams],
            )
            sent_today = {r[0]: r[1] for r in rows}
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
            await conn.executemany(
                "INSERT INTO deliveries (event_key, stream_id, endpoint_hash, created_at, due_at, fair_at) "
                "VALUES ($1, $2, $3, $4, $4, $5) ON CONFLICT DO NOTHING",
                [(event.key, s.id, s.endpoint_hash, now, fair_at + i * step) for i, s in enumerate(plain)],
            )
        for i, (stream, fold_key, held_until) in enumerate(paced, start=len(plain)):
            if await PostgresStore._pace(conn, event, stream, fold_key, held_until, policy, now, fair_at + i * step):
                created.append(stream.endpoint_hash)
            else:
                result.folded += 1
        if policy.max_per_endpoint_per_day and created:  # the counter exists for the cap alone
            await conn.executemany(
                "INSERT INTO endpoint_daily VALUES ($1, $2, 1) ON CONFLICT (endpoint_hash, day) "
                "DO UPDATE SET count = endpoint_daily.count + 1",
                [(h, day) for h in created],
            )
        result.deliveries += len(created)

    @staticmethod
    async def _pace(
        conn: Any,
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
        # One ingest at a time per (stream, fold key): two processes must not both open a digest. The
        # newest digest is locked too (FOR UPDATE): a dispatcher's claim skips it while it takes the
        # event, and one that claimed it first is seen as such (a claimed digest takes no more).
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"fold:{stream.id}:{fold_key}")
        first = None
        if held_until is None:  # quiet hours hold everything: no burst to look for
            found_first = await conn.fetchrow(
                "SELECT event_key, created_at FROM deliveries WHERE stream_id = $1 AND fold_key = $2 "
                "AND folded IS NULL AND created_at > $3 ORDER BY created_at DESC LIMIT 1",
                stream.id,
                fold_key,
                now - window,
            )
            first = None if found_first is None else (found_first[0], found_first[1])
        found = await conn.fetchrow(
            "SELECT id, folded, folded_total, status, lease_until, due_at FROM deliveries WHERE stream_id = $1 "
            "AND fold_key = $2 AND folded IS NOT NULL AND created_at > $3 ORDER BY id DESC LIMIT 1 FOR UPDATE",
            stream.id,
            fold_key,
            now - window - MAX_DIGEST_REACH,
        )
        latest = None if found is None else LatestDigest(found[0], json.loads(found[1]), *found[2:])
        step = plan(event.key, now, fold_key, held_until, window, fold_state(first, latest, now, window, held_until))
        if isinstance(step, Fold):
            assert latest is not None
            await conn.execute(
                "UPDATE deliveries SET folded = $1, folded_total = folded_total + 1 WHERE id = $2",
                json.dumps(folded_keys(latest.folded, event.key)),
                step.delivery_id,
            )
            return False
        insert = (
            "INSERT INTO deliveries (event_key, stream_id, endpoint_hash, created_at, due_at, fold_key, folded, "
            "folded_total, fair_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT DO NOTHING"
        )
        if isinstance(step, Hold):
            # created when its window ends: a delivery's age (give_up_after) counts from then
            held = (stream.id, stream.endpoint_hash, step.due_at, step.due_at, fold_key, json.dumps(list(step.folded)))
            await conn.execute(insert, DIGEST_PREFIX + event.key, *held, step.total, step.due_at)
        else:
            await conn.execute(insert, event.key, stream.id, stream.endpoint_hash, now, now, fold_key, None, 0, fair_at)
        return True

    async def get_cursor(self, source: str) -> str | None:
        value: str | None = await self.pool.fetchval("SELECT value FROM cursors WHERE source = $1", source)
        return value

    # --- outbox ----------------------------------------------------------------------------

    async def claim(self, limit: int, lease_seconds: float) -> list[Claim]:
        now = self._clock()
        async with self.pool.acquire() as conn, conn.transaction():
            # Two walks merged (store/base.py FRESH, AGAIN); rows another claim holds are skipped.
            fresh = await conn.fetch(
                f"SELECT fair_at, id FROM deliveries WHERE {FRESH} ORDER BY fair_at LIMIT $1 "  # noqa: S608
                "FOR UPDATE SKIP LOCKED",
                limit,
            )
            again = await conn.fetch(
                f"SELECT due_at, id FROM deliveries WHERE {AGAIN} AND due_at <= $1 "  # noqa: S608
                "AND (lease_until IS NULL OR lease_until <= $1) ORDER BY due_at LIMIT $2 FOR UPDATE SKIP LOCKED",
                now,
                limit,
            )
            chosen = [r[1] for r in heapq.merge(map(tuple, fresh), map(tuple, again))][:limit]
            if not chosen:
                return []
            await conn.execute(  # every chosen row is locked by this transaction
                "UPDATE deliveries SET lease_until = $1, attempts = attempts + 1 WHERE id = ANY($2)",
                now + lease_seconds,
                chosen,
            )
            # A push taken again after a crash whose burst's digest went out meanwhile would replace the
            # digest on screen with stale text: it is cancelled instead (the digest carries it).
            await conn.execute(
                "UPDATE deliveries SET status = 'cancelled', finished_at = $1, lease_until = NULL, "
                "reason = 'replaced by a digest already sent' WHERE id = ANY($2) AND fold_key IS NOT NULL "
                "AND folded IS NULL AND EXISTS (SELECT 1 FROM deliveries g WHERE g.stream_id = deliveries.stream_id "
                "AND g.fold_key = deliveries.fold_key AND g.folded IS NOT NULL AND g.status = 'sent' "
                "AND g.created_at >= deliveries.created_at)",
                now,
                chosen,
            )
            rows = await conn.fetch(
                "SELECT d.id, d.attempts, d.compact, d.created_at, d.stream_id, d.event_key, d.folded, "
                "d.folded_total, s.account_id, s.gateway, s.endpoint, s.endpoint_hash, s.p256dh, s.auth, "
                "e.row_json FROM deliveries d "
                "LEFT JOIN streams s ON s.id = d.stream_id LEFT JOIN events e ON e.event_key = d.event_key "
                "WHERE d.id = ANY($1) AND d.status = 'pending' ORDER BY array_position($1, d.id)",
                chosen,
            )
            claims: list[Claim] = []
            orphans: list[int] = []
            parsed: dict[str, dict[str, Any]] = {}
            digests = {r["id"]: json.loads(r["folded"]) for r in rows if r["folded"] is not None}
            if digests:  # the rows they fold, each once
                wanted = list({k for keys in digests.values() for k in keys})
                for found in await conn.fetch(
                    "SELECT event_key, row_json FROM events WHERE event_key = ANY($1)", wanted
                ):
                    parsed[found[0]] = json.loads(found[1])
            row_keys: list[str] = []
            for r in rows:
                rows_of: tuple[dict[str, Any], ...] = ()
                row_key = r["event_key"]
                if r["id"] in digests:
                    kept = [k for k in digests[r["id"]] if k in parsed]
                    rows_of = tuple(parsed[k] for k in kept)
                    row_key = kept[-1] if kept else ""
                if r["account_id"] is None or (r["row_json"] is None and not rows_of):
                    orphans.append(r["id"])
                    continue
                if rows_of:
                    row = rows_of[-1]
                else:
                    row = parsed.get(r["event_key"]) or parsed.setdefault(r["event_key"], json.loads(r["row_json"]))
                stream = Stream(
                    r["stream_id"],
                    r["account_id"],
                    r["gateway"],
                    r["endpoint"],
                    r["endpoint_hash"],
                    r["p256dh"],
                    r["auth"],
                )
                claims.append(
                    Claim(
                        r["id"],
                        r["attempts"],
                        r["compact"],
                        r["created_at"],
                        stream,
                        row,
                        r["event_key"],
                        rows_of,
                        r["folded_total"],
                    )
                )
                row_keys.append(row_key)
            if orphans:
                await conn.execute(
                    "UPDATE deliveries SET status = 'cancelled', finished_at = $1, lease_until = NULL, "
                    "reason = 'stream deleted before sending' WHERE id = ANY($2)",
                    now,
                    orphans,
                )
            return await _with_inbox(conn, claims, row_keys)

    async def next_due_at(self) -> float | None:
        value = await self.pool.fetchval(
            f"SELECT COALESCE((SELECT due_at FROM deliveries WHERE {FRESH} LIMIT 1), "  # noqa: S608
            f"(SELECT MIN(GREATEST(due_at, COALESCE(lease_until, 0))) FROM deliveries WHERE {AGAIN}))"
        )
        return None if value is None else float(value)

    async def record(self, outcomes: list[Outcome]) -> None:
        now = self._clock()
        retries = [o for o in outcomes if o.status == "retry"]
        finished = [o for o in outcomes if o.status != "retry"]
        async with self.pool.acquire() as conn, conn.transaction():
            if retries:
                await conn.executemany(
                    "UPDATE deliveries SET due_at = $1, lease_until = NULL, compact = $2, http_status = $3, "
                    "reason = $4 WHERE id = $5 AND status = 'pending'",
                    [(o.retry_at or now, o.compact, o.http_status, o.reason, o.delivery_id) for o in retries],
                )
            if finished:
                await conn.executemany(
                    "UPDATE deliveries SET status = $1, finished_at = $2, lease_until = NULL, http_status = $3, "
                    "reason = $4 WHERE id = $5 AND status = 'pending'",
                    [(o.status, now, o.http_status, o.reason, o.delivery_id) for o in finished],
                )
            for o in finished:
                if o.status == "gone" and o.endpoint_hash:
                    await _delete_streams(conn, o.endpoint_hash, None, now)
            refused = [o.delivery_id for o in finished if o.status == "rejected"]
            if refused:  # rare: never in the way of the common case
                await conn.execute(
                    "UPDATE streams SET refused_at = $1 "
                    "WHERE id IN (SELECT stream_id FROM deliveries WHERE id = ANY($2))",
                    now,
                    refused,
                )

    async def release(self, delivery_ids: list[int]) -> None:
        await self.pool.execute(
            "UPDATE deliveries SET lease_until = NULL, attempts = GREATEST(attempts - 1, 0) "
            "WHERE id = ANY($1) AND status = 'pending'",
            delivery_ids,
        )

    async def dead_letters(self, limit: int = 100) -> list[DeadLetter]:
        rows = await self.pool.fetch(
            "SELECT d.*, s.account_id FROM deliveries d LEFT JOIN streams s ON s.id = d.stream_id "
            "WHERE d.status IN ('dead', 'rejected') ORDER BY d.finished_at DESC, d.id DESC LIMIT $1",
            limit,
        )
        return [
            DeadLetter(
                r["id"],
                r["event_key"],
                r["endpoint_hash"],
                r["account_id"],
                r["status"],
                r["http_status"],
                r["reason"],
                r["attempts"],
                r["created_at"],
                r["finished_at"],
            )
            for r in rows
        ]

    async def list_streams(
        self, *, account_id: str | None = None, endpoint_hash: str | None = None, limit: int = 100
    ) -> list[StreamInfo]:
        rows = await self.pool.fetch(
            "SELECT s.*, ARRAY(SELECT value_type FROM preferences p WHERE p.endpoint_hash = s.endpoint_hash "
            "AND p.account_id = s.account_id UNION SELECT value_type FROM account_mutes m "
            "WHERE m.account_id = s.account_id) AS muted FROM streams s "
            "WHERE ($1::text IS NULL OR s.account_id = $1) AND ($2::text IS NULL OR s.endpoint_hash = $2) "
            "ORDER BY s.id DESC LIMIT $3",
            account_id,
            endpoint_hash,
            limit,
        )
        return [stream_info(r, r["muted"]) for r in rows]

    async def delete_streams_of(self, *, account_id: str | None = None, endpoint_hash: str | None = None) -> int:
        now = self._clock()
        async with self.pool.acquire() as conn, conn.transaction():
            pairs = await conn.fetch(
                "SELECT endpoint_hash, account_id FROM streams WHERE ($1::text IS NULL OR account_id = $1) "
                "AND ($2::text IS NULL OR endpoint_hash = $2)",
                account_id,
                endpoint_hash,
            )
            return sum([await _delete_streams(conn, ehash, account, now) for ehash, account in pairs])

    async def retry_dead_letters(self, ids: list[int] | None = None) -> int:
        status = await self.pool.execute(
            "UPDATE deliveries SET status = 'pending', attempts = 0, due_at = $1, fair_at = $1, lease_until = NULL, "
            "finished_at = NULL, http_status = NULL, reason = '' WHERE status IN ('dead', 'rejected') "
            "AND ($2::bigint[] IS NULL OR id = ANY($2))",
            self._clock(),
            ids,
        )
        return int(status.split()[-1])

    async def purge_dead_letters(self, ids: list[int] | None = None) -> int:
        status = await self.pool.execute(
            "DELETE FROM deliveries WHERE status IN ('dead', 'rejected') AND ($1::bigint[] IS NULL OR id = ANY($1))",
            ids,
        )
        return int(status.split()[-1])

    async def delivery_history(self, since: float) -> list[tuple[int, str, int]]:
        rows = await self.pool.fetch(
            "SELECT (floor(finished_at / 60) * 60)::bigint AS minute, status, COUNT(*) FROM deliveries "
            "WHERE status <> 'pending' AND finished_at >= $1 GROUP BY 1, 2 ORDER BY 1",
            since,
        )
        return [(int(r[0]), str(r[1]), int(r[2])) for r in rows]

    async def failing_hosts(self, since: float, limit: int = 5) -> list[tuple[str, int]]:
        rows = await self.pool.fetch(
            "SELECT s.endpoint FROM deliveries d JOIN streams s ON s.id = d.stream_id "
            "WHERE (d.status IN ('dead', 'rejected') AND d.finished_at >= $1) "
            "OR (d.status = 'pending' AND d.attempts > 0)",
            since,
        )
        return count_hosts([r[0] for r in rows], limit)

    async def set_cursor(self, source: str, value: str) -> None:
        await self.pool.execute(
            "INSERT INTO cursors VALUES ($1, $2, $3) ON CONFLICT (source) DO UPDATE SET value = EXCLUDED.value, "
            "updated_at = EXCLUDED.updated_at",
            source,
            value,
            self._clock(),
        )

    async def counts(self) -> dict[str, int]:
        async with self.pool.acquire() as conn:
            out = {
                "streams": await conn.fetchval("SELECT COUNT(*) FROM streams"),
                "accounts": await conn.fetchval("SELECT COUNT(DISTINCT account_id) FROM streams"),
            }
            for r in await conn.fetch("SELECT status, COUNT(*) FROM deliveries GROUP BY status"):
                out[f"deliveries_{r[0]}"] = r[1]
        return {k: int(v) for k, v in out.items()}

    async def health_counts(self) -> dict[str, int]:
        async with self.pool.acquire() as conn:
            streams = await conn.fetchrow("SELECT COUNT(*), COUNT(DISTINCT account_id) FROM streams")
            pending = await conn.fetchval(PENDING_COUNT)
        return {"streams": int(streams[0]), "accounts": int(streams[1]), "deliveries_pending": int(pending)}

    @asynccontextmanager
    async def leadership(self, name: str) -> AsyncIterator[_AdvisoryLease]:
        """Hold a session advisory lock on a connection of its own: PostgreSQL releases it the moment
        the holder's connection dies (a killed process), and a waiting process takes it within
        LEADER_RETRY seconds."""
        key = int.from_bytes(hashlib.sha256(f"{self._schema}:{name}".encode()).digest()[:8], "big", signed=True)
        while True:
            conn = None
            try:
                conn = await asyncpg.connect(self._dsn, **self._connect_options())
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                    break
            except Exception as exc:  # the store is down: try again, never fail the process
                if self.classify(exc) is None:
                    raise
            if conn is not None:
                conn.terminate()
            await anyio.sleep(LEADER_RETRY)
        try:
            yield _AdvisoryLease(conn)
        finally:
            conn.terminate()  # ending the session releases the lock

    async def purge(self, older_than: float, inbox_older_than: float | None = None) -> int:
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("DELETE FROM used_nonces WHERE expires_at < $1", self._clock())
            status = await conn.execute(
                "DELETE FROM deliveries WHERE status <> 'pending' AND finished_at < $1", older_than
            )
            oldest_digest = await conn.fetchval(
                "SELECT MIN(created_at) FROM deliveries WHERE folded IS NOT NULL AND status = 'pending'"
            )
            await conn.execute(
                "DELETE FROM events WHERE created_at < $1 AND NOT EXISTS "
                "(SELECT 1 FROM deliveries d WHERE d.event_key = events.event_key)",
                events_purged_before(older_than, oldest_digest),
            )
            await conn.execute("DELETE FROM endpoint_daily WHERE day < $1", utc_day(older_than))
            if inbox_older_than is not None:
                await conn.execute("DELETE FROM inbox WHERE created_at < $1", inbox_older_than)
                await conn.execute(
                    "DELETE FROM inbox_read r WHERE NOT EXISTS (SELECT 1 FROM inbox i WHERE i.id = r.inbox_id)"
                )
                await conn.execute("DELETE FROM receipts WHERE at < $1", inbox_older_than)
        return int(status.split()[-1])


async def _with_inbox(conn: Any, claims: list[Claim], row_keys: list[str]) -> list[Claim]:
    """The claims with the inbox id of the row each shows (``row_keys``: a digest's newest) and the
    unread count of their browser (the badge): two statements for the batch."""
    if not claims:
        return claims
    # Correlated lookups, one index probe each: as a join, a generic plan chose to hash the whole
    # inbox (180 ms at a million rows, bench.inbox).
    found = await conn.fetch(
        "SELECT p.a, p.k, (SELECT i.id FROM inbox i WHERE i.account_id = p.a AND i.event_key = p.k) "
        "FROM unnest($1::text[], $2::text[]) AS p(a, k)",
        [cl.stream.account_id for cl in claims],
        row_keys,
    )
    ids = {(r[0], r[1]): r[2] for r in found if r[2] is not None}
    readers = sorted({(cl.stream.account_id, cl.stream.endpoint_hash) for cl in claims})
    counted = await conn.fetch(_UNREAD_OF, [a for a, _ in readers], [r for _, r in readers], BADGE_CAP)
    unread = {(r[0], r[1]): int(r[2]) for r in counted}
    return [
        cl._replace(
            inbox_id=ids.get((cl.stream.account_id, k)),
            unread=unread.get((cl.stream.account_id, cl.stream.endpoint_hash)),
        )
        for cl, k in zip(claims, row_keys, strict=True)
    ]


class _AdvisoryLease:
    """The connection holding a leader's advisory lock, shared by the liveness check and the
    leader's writes (one at a time: an asyncpg connection runs one query at once)."""

    def __init__(self, conn: Any) -> None:
        self._conn = conn
        self._lock = asyncio.Lock()
        self._closed = asyncio.Event()
        conn.add_termination_listener(lambda _: self._closed.set())

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[Any]:
        async with self._lock:
            yield self._conn

    async def wait_lost(self) -> None:
        while not self._closed.is_set():
            with anyio.move_on_after(LEADER_CHECK):
                await self._closed.wait()
            async with self._lock:  # a long write in progress is itself proof of life
                try:
                    with anyio.fail_after(LEADER_CHECK * 3):
                        await self._conn.fetchval("SELECT 1")
                except Exception:  # whatever it is, this connection can no longer vouch for the lock
                    return


async def _delete_streams(conn: Any, ehash: str, account_id: str | None, now: float) -> int:
    """Delete streams of an endpoint and cancel what was still queued for them."""
    if account_id is None:
        ids = [r[0] for r in await conn.fetch("DELETE FROM streams WHERE endpoint_hash = $1 RETURNING id", ehash)]
        await conn.execute("DELETE FROM preferences WHERE endpoint_hash = $1", ehash)
    else:
        ids = [
            r[0]
            for r in await conn.fetch(
                "DELETE FROM streams WHERE endpoint_hash = $1 AND account_id = $2 RETURNING id", ehash, account_id
            )
        ]
        await conn.execute("DELETE FROM preferences WHERE endpoint_hash = $1 AND account_id = $2", ehash, account_id)
    if ids:
        await conn.execute(
            "UPDATE deliveries SET status = 'cancelled', finished_at = $1, lease_until = NULL, "
            "reason = 'stream deleted' WHERE status = 'pending' AND stream_id = ANY($2)",
            now,
            ids,
        )
    return len(ids)
