"""Pure decoding of source rows into Events (formats in near-protocols.md). No I/O."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from gateway.models import Event, NotificationRow


def event_from_row(row: NotificationRow, source: str) -> Event:
    """An Event from a row in the QueryAPI notification shape (near-protocols.md §3)."""
    data: dict[str, Any] = row.model_dump(mode="json")
    return Event(
        key=f"{source}:{row.id}",
        source=source,
        receiver=row.receiver,
        value_type=row.valueType,
        block_height=row.blockHeight,
        row=data,
    )


def events_from_rows(rows: list[Mapping[str, Any]], source: str) -> list[Event]:
    """Validate and decode rows; raises pydantic.ValidationError on the first bad row."""
    return [event_from_row(NotificationRow.model_validate(r), source) for r in rows]
