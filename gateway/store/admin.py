"""Pieces both stores share for the operators' queries (admin API and CLI). Pure."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from gateway.endpoints import push_host
from gateway.models import Stream
from gateway.store.base import FunnelRow, StreamInfo


def stream_info(row: Mapping[str, Any], muted: Iterable[str]) -> StreamInfo:
    stream = Stream(
        row["id"], row["account_id"], row["gateway"], row["endpoint"], row["endpoint_hash"], row["p256dh"], row["auth"]
    )
    created, updated = float(row["created_at"]), float(row["updated_at"])
    refused = row["refused_at"]
    return StreamInfo(
        stream, created, updated, tuple(sorted(muted)), bool(row["signed"]), None if refused is None else float(refused)
    )


def count_hosts(endpoints: Iterable[str], limit: int) -> list[tuple[str, int]]:
    hosts = Counter(push_host(e) for e in endpoints)
    return hosts.most_common(limit)


def funnel_rows(sent: Iterable[Sequence[Any]], seen: Iterable[Sequence[Any]]) -> list[FunnelRow]:
    """``sent``: (type, endpoint origin or None, count); ``seen``: (type, host, stage, count)."""
    counts: dict[tuple[str, str], dict[str, int]] = {}
    for value_type, origin, count in sent:
        key = (str(value_type), push_host(f"{origin}/") if origin else "gone")
        stages = counts.setdefault(key, {})
        stages["sent"] = stages.get("sent", 0) + int(count)
    for value_type, host, stage, count in seen:
        stages = counts.setdefault((str(value_type), str(host)), {})
        stages[str(stage)] = stages.get(str(stage), 0) + int(count)
    return [
        FunnelRow(t, h, c.get("sent", 0), c.get("shown", 0), c.get("clicked", 0), c.get("closed", 0))
        for (t, h), c in sorted(counts.items(), key=lambda kv: (-kv[1].get("sent", 0), kv[0]))
    ]
