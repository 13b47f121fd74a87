"""What a push carries: pure, no I/O.

The NEAR row goes out unchanged (service workers in the wild read ``valueType``, ``initiatedBy``,
``receiver``, ``blockHeight``, ``actionAtBlockHeight``, ``devhubPostId``), plus ``title``, ``body``,
``url`` and ``tag`` so a new service worker can show it without knowing NEAR.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from gateway.links import click_url
from gateway.models import NEAR_ROW_FIELDS

# aes128gcm in one record: 4096-byte body limit − 86-byte header − 1 delimiter − 16 tag.
MAX_PLAINTEXT_BYTES = 3993
# After a 413 the dispatcher retries once with the compact form, which stays under this.
COMPACT_PLAINTEXT_BYTES = 1024
MAX_BODY_CHARS = 240
COMPACT_BODY_CHARS = 120
MAX_TAG_CHARS = 128


# value type -> (title, body with {who})
_TEXTS: dict[str, tuple[str, str]] = {
    "like": ("New like", "{who} liked your {thing}"),
    "comment": ("New comment", "{who} commented on your {thing}"),
    "mention": ("New mention", "{who} mentioned you"),
    "follow": ("New follower", "{who} followed you"),
    "unfollow": ("Follower lost", "{who} unfollowed you"),
    "poke": ("Poke", "{who} poked you"),
    "repost": ("New repost", "{who} reposted your {thing}"),
    "star": ("New star", "{who} starred your component"),
    "devgovgigs/like": ("DevHub", "{who} liked your DevHub post"),
    "devgovgigs/reply": ("DevHub", "{who} replied to your DevHub post"),
    "devgovgigs/edit": ("DevHub", "{who} edited your DevHub post"),
    "devgovgigs/mention": ("DevHub", "{who} mentioned you in a DevHub post"),
    "devhub/edit": ("DevHub", "{who} edited a DevHub item you follow"),
    "devhub/mention": ("DevHub", "{who} mentioned you on DevHub"),
    "proposal/mention": ("DevHub proposal", "{who} mentioned you in a proposal"),
    "proposal/edit": ("DevHub proposal", "{who} edited a proposal"),
    "rfp/mention": ("DevHub RFP", "{who} mentioned you in an RFP"),
}


def _thing(row: dict[str, Any]) -> str:
    path = row.get("path") or ""
    return "comment" if "/post/comment" in str(path) else "post"


def title_and_body(row: dict[str, Any]) -> tuple[str, str]:
    value_type = str(row.get("valueType") or "")
    who = str(row.get("initiatedBy") or "Someone")
    if value_type == "custom":
        message = row.get("message")
        return "Notification", str(message) if message else f"{who} sent you a notification"
    title, template = _TEXTS.get(value_type, ("New notification", "{who} sent you a {type} notification"))
    return title, template.format(who=who, thing=_thing(row), type=value_type or "new")


def notification_tag(row: dict[str, Any]) -> str:
    """Groups repeats: a burst of likes on one post replaces one notification, not ten.

    Mentions and custom messages are each their own notification, so they are tagged by id.
    """
    value_type = str(row.get("valueType") or "notification")
    if value_type in ("mention", "custom") or value_type.endswith("/mention"):
        return f"{value_type}:{row.get('id')}"[:MAX_TAG_CHARS]
    target = row.get("devhubPostId") or row.get("actionAtBlockHeight") or row.get("path") or ""
    return f"{value_type}:{row.get('receiver')}:{target}"[:MAX_TAG_CHARS]


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def build_payload(
    row: dict[str, Any],
    *,
    gateway: str = "https://near.org",
    links: Mapping[str, Mapping[str, str]] | None = None,
    compact: bool = False,
) -> bytes:
    """The JSON plaintext of one push, never over the aes128gcm single-record limit.

    ``gateway`` is the stream's frontend (it decides the click link, with the operator's ``links``
    templates by gateway origin); ``compact`` is the smaller form sent once after a 413.
    """
    title, body = title_and_body(row)
    added = {
        "title": title,
        "body": _truncate(body, COMPACT_BODY_CHARS if compact else MAX_BODY_CHARS),
        "url": click_url(row, gateway, links),
        "tag": notification_tag(row),
    }
    limit = COMPACT_PLAINTEXT_BYTES if compact else MAX_PLAINTEXT_BYTES
    full = {**added, **row} if not compact else None
    if full is not None:
        encoded = _encode(full)
        if len(encoded) <= limit:
            return encoded
    # Too big (or compact asked): keep only the NEAR fields, shortening free text.
    near = {k: row.get(k) for k in NEAR_ROW_FIELDS if k in row}
    for text_field in ("message", "path"):
        text = near.get(text_field)
        if isinstance(text, str):
            near[text_field] = _truncate(text, 200 if compact else 1000)
    encoded = _encode({**added, **near})
    if len(encoded) > limit:  # pathological ids or account names: drop free text entirely
        near["message"] = None
        near["path"] = None
        encoded = _encode({**added, **near})
    return encoded
