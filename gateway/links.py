"""Where a notification click goes, per gateway: pure, no I/O.

The stream's ``gateway`` (the frontend the user subscribed on) decides. Built in:
- ``https://near.org``: the reference service workers' links (``/s/p?a=&b=`` share links, DevHub
  post links, ``/notifications``).
- ``https://near.social``: the mob.near post and comment page widgets with ``accountId`` and
  ``blockHeight``, profile pages for follows and pokes, the widget page for stars.
Any other gateway: the operator's templates (``[[gateways]]`` in the config file), per value type,
with ``{field}`` placeholders for the row's fields; then the gateway's ``default_link``; then the
gateway itself.
On-chain activity (transfers, keys, failed receipts, configured NEP-297 events) with no template of
its type opens the block explorer (``[explorer]``): the transaction, or the account without one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from gateway.models import ACTIVITY_TYPES

NEAR_ORG = "https://near.org"
NEAR_SOCIAL = "https://near.social"
MOB = f"{NEAR_SOCIAL}/mob.near/widget"
PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
NEARBLOCKS = ("https://nearblocks.io/txns/{txHash}", "https://nearblocks.io/address/{receiver}")


def gateway_origin(gateway: str) -> str:
    """``scheme://host[:port]`` of a gateway URL, lower-cased, ``www.`` dropped."""
    parts = urlsplit(gateway.strip())
    host = (parts.netloc or "").lower().removeprefix("www.")
    return f"{(parts.scheme or 'https').lower()}://{host}"


def _q(value: Any) -> str:
    return quote(str(value), safe="")


def _owner(path: Any) -> str | None:
    """The account that owns a SocialDB path ("bob.near/post/main" -> "bob.near")."""
    return path.split("/", 1)[0] if isinstance(path, str) and "/" in path else None


def _is_comment(path: Any) -> bool:
    return isinstance(path, str) and "/post/comment" in path


def near_org_link(row: Mapping[str, Any]) -> str:
    value_type = str(row.get("valueType") or "")
    if value_type.startswith("devgovgigs") and row.get("devhubPostId") is not None:
        return f"{NEAR_ORG}/devhub.near/widget/app?page=post&id={_q(row['devhubPostId'])}"
    if row.get("receiver") and row.get("actionAtBlockHeight") is not None:
        return f"{NEAR_ORG}/s/p?a={_q(row['receiver'])}&b={_q(row['actionAtBlockHeight'])}"
    if value_type == "mention" and row.get("initiatedBy") and row.get("blockHeight") is not None:
        # A mention names no target block: the mentioning post is at the event's own block.
        author = _owner(row.get("path")) or row["initiatedBy"]
        return f"{NEAR_ORG}/s/p?a={_q(author)}&b={_q(row['blockHeight'])}"
    return f"{NEAR_ORG}/notifications"


def _social_item(account: Any, block: Any, comment: bool) -> str | None:
    if not account or block is None:
        return None
    page = "MainPage.N.Comment.Page" if comment else "MainPage.N.Post.Page"
    return f"{MOB}/{page}?accountId={_q(account)}&blockHeight={_q(block)}"


def near_social_link(row: Mapping[str, Any]) -> str:
    value_type = str(row.get("valueType") or "")
    path, initiator = row.get("path"), row.get("initiatedBy")
    link: str | None = None
    if value_type.startswith(("devgovgigs", "devhub")) and row.get("devhubPostId") is not None:
        link = f"{NEAR_SOCIAL}/devhub.near/widget/app?page=post&id={_q(row['devhubPostId'])}"
    elif value_type == "comment":  # the new comment itself, written by the initiator at this block
        link = _social_item(initiator, row.get("blockHeight"), True) or _social_item(
            _owner(path), row.get("actionAtBlockHeight"), False
        )
    elif value_type == "mention":  # the mentioning post or comment, at this block
        link = _social_item(_owner(path) or initiator, row.get("blockHeight"), _is_comment(path))
    elif value_type in ("like", "repost"):
        link = _social_item(_owner(path) or row.get("receiver"), row.get("actionAtBlockHeight"), _is_comment(path))
    elif value_type in ("follow", "unfollow", "poke") and initiator:
        link = f"{MOB}/ProfilePage?accountId={_q(initiator)}"
    elif value_type == "star" and isinstance(path, str) and "/widget/" in path:
        link = f"{NEAR_SOCIAL}/{quote(path, safe='/.')}"
    return link or f"{MOB}/NotificationFeed"


def fill_template(template: str, row: Mapping[str, Any], gateway: str) -> str | None:
    """``template`` with ``{field}`` replaced by the row's URL-encoded field; None when one is missing."""
    values = {**row, "gateway": gateway.rstrip("/")}
    missing = False

    def sub(match: re.Match[str]) -> str:
        nonlocal missing
        value = values.get(match.group(1))
        if value is None or value == "":
            missing = True
            return ""
        return str(value) if match.group(1) == "gateway" else _q(value)

    filled = PLACEHOLDER.sub(sub, template)
    return None if missing else filled


def is_activity(row: Mapping[str, Any]) -> bool:
    """On-chain account activity: a built-in type, or a configured NEP-297 event (it names its standard)."""
    return row.get("valueType") in ACTIVITY_TYPES or (bool(row.get("receiptId")) and bool(row.get("standard")))


def click_url(
    row: Mapping[str, Any],
    gateway: str,
    templates: Mapping[str, Mapping[str, str]] | None = None,
    explorer: tuple[str, str] = NEARBLOCKS,
) -> str:
    """The page a click on this notification opens for a stream registered on ``gateway``.

    ``templates`` maps a gateway origin to {value type or "default": URL template}; ``explorer`` is
    (transaction template, account template) for on-chain activity.
    """
    origin = gateway_origin(gateway)
    configured = (templates or {}).get(origin) or {}
    value_type = str(row.get("valueType") or "")
    keys = (value_type,) if is_activity(row) else (value_type, "default")
    for key in keys:
        template = configured.get(key)
        link = fill_template(template, row, gateway) if template else None
        if link:
            return link
    if is_activity(row):
        for template in explorer:
            link = fill_template(template, row, gateway)
            if link:
                return link
    if origin == NEAR_ORG:
        return near_org_link(row)
    if origin == NEAR_SOCIAL:
        return near_social_link(row)
    return gateway.rstrip("/") or NEAR_ORG
