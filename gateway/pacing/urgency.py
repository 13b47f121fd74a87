"""RFC 8030 Urgency and TTL of one push, by its type: ``[push.types]`` first, then the built-in
choices below, then ``[push]``'s. Pure."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.config import TypeDelivery

# RFC 8030 Urgency by type where [push] urgency is not the right one: a push service may hold a
# low-urgency push back (a phone saving battery) and delivers a high one at once.
TYPE_URGENCY = {"like": "low"}


def urgency_for(row: dict[str, Any], types: Mapping[str, TypeDelivery] | None = None) -> str | None:
    """RFC 8030 Urgency of one push when it is not ``[push] urgency``: the type's in ``[push.types]``;
    else high for security alerts (a new full-access key, a deleted key), else TYPE_URGENCY's."""
    value_type = row.get("valueType")
    configured = (types or {}).get(str(value_type))
    if configured is not None and configured.urgency is not None:
        return configured.urgency
    if value_type == "delete_key" or (value_type == "add_key" and row.get("permission") == "FullAccess"):
        return "high"
    return TYPE_URGENCY.get(str(value_type))


def ttl_for(row: dict[str, Any], types: Mapping[str, TypeDelivery] | None = None) -> int | None:
    """The TTL of one push when ``[push.types]`` sets one for its type."""
    configured = (types or {}).get(str(row.get("valueType")))
    return None if configured is None else configured.ttl
