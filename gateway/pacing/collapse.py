"""Which pushes are about the same thing: one collapse key per (account, type, item).

Its hash is the RFC 8030 ``Topic`` (a newer push replaces an older one still queued at the push
service for an offline browser) and the notification ``tag`` (the browser replaces the one on screen),
so both collapse the same pushes.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from gateway.models import ACTIVITY_TYPES

if TYPE_CHECKING:
    from gateway.config import TopicMode, TypeDelivery

TOPIC_CHARS = 32  # RFC 8030 §5.4: at most 32 characters of the URL-safe base64 alphabet


def is_own_item(value_type: str) -> bool:
    """Types where every notification is its own item: a mention, a message, a transfer, a key."""
    return value_type in ("mention", "custom") or value_type.endswith("/mention") or value_type in ACTIVITY_TYPES


def item_of(row: Mapping[str, Any]) -> str:
    """What a notification is about: the post liked or commented on, or the notification itself."""
    value_type = str(row.get("valueType") or "")
    if is_own_item(value_type):
        return f"#{row.get('id')}"
    return str(row.get("devhubPostId") or row.get("actionAtBlockHeight") or row.get("path") or "")


def topic_mode(row: Mapping[str, Any], types: Mapping[str, TypeDelivery] | None = None) -> TopicMode:
    configured = (types or {}).get(str(row.get("valueType")))
    return "item" if configured is None else configured.topic


def collapse_key(row: Mapping[str, Any], types: Mapping[str, TypeDelivery] | None = None) -> str | None:
    """(account, type, item) as one string; None when the type's pushes never collapse."""
    mode = topic_mode(row, types)
    if mode == "none":
        return None
    item = "" if mode == "type" else item_of(row)
    return f"{row.get('receiver')}\n{row.get('valueType')}\n{item}"


def hashed(key: str) -> str:
    """32 URL-safe characters (192 bits of SHA-256): a valid Topic and a short, opaque tag."""
    return base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()).decode()[:TOPIC_CHARS]


def topic_for(row: Mapping[str, Any], types: Mapping[str, TypeDelivery] | None = None) -> str | None:
    key = collapse_key(row, types)
    return None if key is None else hashed(key)


def tag_for(row: Mapping[str, Any], types: Mapping[str, TypeDelivery] | None = None) -> str:
    """The notification tag: the Topic, or (no Topic) one of the notification's own."""
    key = collapse_key(row, types)
    if key is None:
        key = f"{row.get('receiver')}\n{row.get('valueType')}\n#{row.get('id')}"
    return hashed(key)
