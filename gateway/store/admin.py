"""Pieces both stores share for the operators' queries (admin API and CLI). Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.endpoints import origin_of
from gateway.models import Stream
from gateway.store.base import StreamInfo


def stream_info(row: Mapping[str, Any], muted: Iterable[str]) -> StreamInfo:
    stream = Stream(
        row["id"], row["account_id"], row["gateway"], row["endpoint"], row["endpoint_hash"], row["p256dh"], row["auth"]
    )
    return StreamInfo(stream, float(row["created_at"]), float(row["updated_at"]), tuple(sorted(muted)))


def id_filter(ids: list[int] | None, placeholder: str) -> tuple[str, list[int]]:
    """A `` AND id IN (...)`` clause for these ids (none = every row), with its arguments."""
    if ids is None:
        return "", []
    if not ids:
        return " AND 1 = 0", []
    if placeholder == "?":
        return f" AND id IN ({','.join('?' * len(ids))})", list(ids)
    return f" AND id = ANY({placeholder})", [list(ids)]  # type: ignore[list-item]


def count_hosts(endpoints: Iterable[str], limit: int) -> list[tuple[str, int]]:
    hosts = Counter(origin_of(e).split("://", 1)[-1] for e in endpoints)
    return hosts.most_common(limit)
