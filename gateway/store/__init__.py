"""Persistence: the Store contract (base.py) and its implementations."""

from __future__ import annotations

from gateway.exceptions import ConfigError
from gateway.store.base import Store


def open_store(url: str) -> Store:
    """The store for a ``[storage] url``: ``sqlite:///path`` or ``postgresql://user@host/db[?schema=NAME]``."""
    if url.startswith("sqlite:///"):
        from gateway.store.sqlite import SqliteStore

        return SqliteStore(url.removeprefix("sqlite:///"))
    if url.startswith(("postgresql://", "postgres://")):
        from gateway.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ConfigError(f"storage.url: unsupported store {url.split(':', 1)[0]!r} (use sqlite:///PATH or postgresql://…)")


__all__ = ["Store", "open_store"]
