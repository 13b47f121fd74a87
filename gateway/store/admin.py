"""Pieces both stores share for the operators' queries (admin API and CLI). Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from gateway.endpoints import push_host
from gateway.models import Stream
from gateway.store.base import StreamInfo


def stream_info(row: Mapping[str, Any], muted: Iterable[str]) -> StreamInfo:
    stream = Stream(
        row["id"], row["account_id"], row["gateway"], row["endpoint"], row["endpoint_hash"], row["p256dh"], row["auth"]
    )
    return StreamInfo(stream, float(row["created_at"]), float(row["updated_at"]), tuple(sorted(muted)))


def count_hosts(endpoints: Iterable[str], limit: int) -> list[tuple[str, int]]:
    hosts = Counter(push_host(e) for e in endpoints)
    return hosts.most_common(limit)
