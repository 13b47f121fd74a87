"""Persistence: the Store contract (base.py) and its implementations."""

from __future__ import annotations

from gateway.exceptions import ConfigError
from gateway.store.base import Store


def open_store(
    url: str, *, busy_timeout: float = 30.0, connect_timeout: float = 10.0, command_timeout: float = 60.0
) -> Store:
    """The store for a ``[storage] url``: ``sqlite:///path`` or ``postgresql://user@host/db[?schema=NAME]``.

    ``busy_timeout`` is SQLite's wait for another process's lock; ``connect_timeout`` and
    ``command_timeout`` bound PostgreSQL's connects and statements (a cut network answers nothing).
    """
    if url.startswith("sqlite:///"):
        from gateway.store.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"), busy_timeout=busy_timeout)
    if url.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import PostgresStore

        return PostgresStore(url, connect_timeout=connect_timeout, command_timeout=command_timeout)
    raise ConfigError(f"storage.url: unsupported store {url.split(':', 1)[0]!r} (use sqlite:///PATH or postgresql://…)")


__all__ = ["Store", "open_store"]
