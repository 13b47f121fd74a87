"""What a push carries: pure, no I/O.

The NEAR row goes out unchanged (service workers in the wild read ``valueType``, ``initiatedBy``,
``receiver``, ``blockHeight``, ``actionAtBlockHeight``, ``devhubPostId``), plus ``title``, ``body``,
``url`` and ``tag`` so a new service worker can show it without knowing NEAR, and the Declarative Web
Push members (``web_push``, ``notification``, ``mutable``) so a browser can show it with none at all.
A digest adds ``digest``: how many it folds and the newest of their rows.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from gateway.links import NEARBLOCKS, click_url
from gateway.models import ACTIVITY_TYPES, NEAR_ROW_FIELDS
from gateway.pacing.collapse import item_of, tag_for
from gateway.pacing.digest import digest_tag

if TYPE_CHECKING:
    from gateway.config import TypeDelivery

# aes128gcm in one record: 4096-byte body limit − 86-byte header − 1 delimiter − 16 tag.
MAX_PLAINTEXT_BYTES = 3993
# Room left for the per-browser "app_badge" added after the shared part is built (with_badge).
BADGE_ROOM = len(',"app_badge":1000')  # (at most BADGE_CAP, 99, in practice)
# After a 413 the dispatcher retries once with the compact form, which stays under this.
COMPACT_PLAINTEXT_BYTES = 1024
MAX_BODY_CHARS = 240
COMPACT_BODY_CHARS = 120
DIGEST_OVERHEAD = 32  # bytes of the digest member's own keys and punctuation
DECLARATIVE_WEB_PUSH = 8030  # "web_push": the member that makes a payload declarative (its value: the RFC)
LANG = "en"  # the language of the texts below
# The last resort for a row of long texts: every text cut to this many characters, then halved.
FIELD_CHARS = 64
KEPT_WHOLE = frozenset({"id", "receiver", "valueType"})  # what old service workers key on; bounded by validation


# value type -> (title, body with {who})
TYPE_TEXTS: dict[str, tuple[str, str]] = {
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


NEAR_DECIMALS = 24
SHOWN_DECIMALS = 6  # fraction digits shown of an amount; the rest is cut, not rounded up


def format_amount(raw: Any, decimals: int) -> str | None:
    """A token amount in human units: "2.5", "1,000", "0.00035"; None when ``raw`` is not a u128 string.

    Exact integer arithmetic (a u128 does not fit a double); an amount too small to show is "< 0.000001".
    """
    if not (isinstance(raw, str) and raw.isascii() and raw.isdigit()):
        return None
    whole, fraction = divmod(int(raw), 10**decimals)
    shown = min(decimals, SHOWN_DECIMALS)
    digits = str(fraction).rjust(decimals, "0")[:shown].rstrip("0") if decimals else ""
    if whole == 0 and not digits and fraction:
        return f"< 0.{'0' * (shown - 1)}1"
    return f"{whole:,}" + (f".{digits}" if digits else "")


def _token_amount(row: dict[str, Any]) -> str:
    """The amount with the token's symbol (ft_metadata), or raw units of the contract when unknown."""
    decimals, symbol, token = row.get("decimals"), row.get("symbol"), row.get("token") or "a token"
    if isinstance(decimals, int) and isinstance(symbol, str):
        amount = format_amount(row.get("amount"), decimals)
        if amount is not None:
            return f"{amount} {symbol}"
    return f"{row.get('amount')} (raw units) of {token}"


def _nfts(row: dict[str, Any]) -> str:
    found = row.get("tokenIds")
    ids: list[Any] = found if isinstance(found, list) else []
    token = row.get("token") or "a contract"
    what = f"NFT {ids[0]}" if len(ids) == 1 else f"{len(ids)} NFTs"
    return f"{what} from {token}"


def _activity_text(value_type: str, row: dict[str, Any], who: str) -> tuple[str, str]:
    account = str(row.get("receiver") or "your account")
    if value_type == "near_transfer":
        amount = format_amount(row.get("amount"), NEAR_DECIMALS) or str(row.get("amount"))
        return "NEAR received", f"{who} sent you {amount} NEAR"
    if value_type == "ft_transfer":
        return "Tokens received", f"You received {_token_amount(row)} from {who}"
    if value_type == "ft_mint":
        return "Tokens received", f"{_token_amount(row)} minted to {account}"
    if value_type == "ft_burn":
        return "Tokens burned", f"{_token_amount(row)} burned from {account}"
    if value_type == "nft_transfer":
        return "NFT received", f"{who} sent you {_nfts(row)}"
    if value_type == "nft_mint":
        return "NFT received", f"You received {_nfts(row)}"
    if value_type == "add_key":
        if row.get("permission") == "FullAccess":
            return "Security alert", f"New full-access key added to {account}"
        return "New access key", f"New key for {row.get('permission')} added to {account}"
    if value_type == "delete_key":
        return "Security alert", f"An access key was deleted from {account}"
    # receipt_failed
    method, contract = row.get("method"), row.get("contract") or "a contract"
    call = f"call to {method} on {contract}" if method else f"transaction to {contract}"
    why = row.get("errorMessage") or row.get("error") or "an error"
    return "Transaction failed", f"Your {call} failed: {why}"


def _thing(row: dict[str, Any]) -> str:
    path = row.get("path") or ""
    return "comment" if "/post/comment" in str(path) else "post"


def title_and_body(row: dict[str, Any]) -> tuple[str, str]:
    value_type = str(row.get("valueType") or "")
    who = str(row.get("initiatedBy") or "Someone")
    if value_type == "custom":
        message = row.get("message")
        return "Notification", str(message) if message else f"{who} sent you a notification"
    if value_type in ACTIVITY_TYPES:
        return _activity_text(value_type, row, who)
    if row.get("standard") and row.get("receiptId"):  # a NEP-297 event the operator configured
        return "On-chain activity", f"{row.get('event') or value_type} by {who} on {row.get('token') or 'a contract'}"
    title, template = TYPE_TEXTS.get(value_type, ("New notification", "{who} sent you a {type} notification"))
    return title, template.format(who=who, thing=_thing(row), type=value_type or "new")


def digest_text(row: dict[str, Any], folded: Sequence[dict[str, Any]], total: int) -> tuple[str, str]:
    """The text of a push folding ``total`` notifications (``folded``: the newest of them, ``row`` last).

    A burst about one item reads as one notification with more people ("alice.near and 4 others
    liked your post"); a mix (quiet hours) says how many and shows the newest.
    """
    title, body = title_and_body(row)
    if total <= 1:
        return title, body
    if len({(r.get("valueType"), item_of(r)) for r in folded}) == 1:
        who = str(row.get("initiatedBy") or "Someone")
        people = {r.get("initiatedBy") for r in folded}
        others = total - 1 if total > len(folded) else len(people) - 1
        if others > 0 and body.startswith(who):
            group = f"{who} and {others} {'other' if others == 1 else 'others'}"
            return title, group + body[len(who) :]
    return f"{total} new notifications", f"{body}, and {total - 1} more"


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def with_badge(encoded: bytes, unread: int | None, limit: int = MAX_PLAINTEXT_BYTES) -> bytes:
    """A built payload with this browser's unread count as ``app_badge`` (Declarative Web Push's
    top-level member; our service worker sets the app badge from it). Appended to the shared bytes:
    the rest of a payload is the same for every browser of the account. Left out where it would
    take the payload past ``limit``."""
    if unread is None:
        return encoded
    badged = encoded[:-1] + b',"app_badge":' + str(min(unread, 1000)).encode() + b"}"
    return badged if len(badged) <= limit else encoded


def _declarative(added: dict[str, Any]) -> dict[str, Any]:
    """The Declarative Web Push members (W3C Push API; Safari shows these without running a service
    worker). ``mutable``: a service worker that is there still gets the push and shows it itself,
    with the Mute action (a declarative action would need a page to navigate to)."""
    notification = {
        "title": added["title"],
        "body": added["body"],
        "navigate": added["url"],
        "tag": added["tag"],
        "lang": LANG,
    }
    return {"web_push": DECLARATIVE_WEB_PUSH, "notification": notification, "mutable": True}


def _digest_member(folded: Sequence[dict[str, Any]], total: int, room: int) -> dict[str, Any]:
    """``digest``: how many were folded and the newest rows (NEAR fields) that fit in ``room`` bytes."""
    rows = [{k: r.get(k) for k in NEAR_ROW_FIELDS if k in r} for r in reversed(folded)]  # newest first
    while rows and len(_encode({"count": total, "rows": rows})) > room:
        rows.pop()
    return {"count": total, "rows": rows}


def build_payload(
    row: dict[str, Any],
    *,
    gateway: str = "https://near.org",
    links: Mapping[str, Mapping[str, str]] | None = None,
    compact: bool = False,
    explorer: tuple[str, str] = NEARBLOCKS,
    types: Mapping[str, TypeDelivery] | None = None,
    folded: Sequence[dict[str, Any]] = (),
    folded_total: int = 0,
    inbox_id: int | None = None,
) -> bytes:
    """The JSON plaintext of one push, never over the aes128gcm single-record limit.

    ``gateway`` is the stream's frontend (it decides the click link, with the operator's ``links``
    templates by gateway origin, and ``explorer`` for on-chain activity); ``compact`` is the smaller
    form sent once after a 413. A digest passes the rows it folds (``folded``, oldest first, ``row``
    the newest) and how many it folds in all. ``inbox_id`` (the account's inbox item) is what the
    service worker's receipts name. Room is left for ``with_badge``.
    """
    title, body = digest_text(row, folded, folded_total) if folded else title_and_body(row)
    added: dict[str, Any] = {
        "title": title,
        "body": _truncate(body, COMPACT_BODY_CHARS if compact else MAX_BODY_CHARS),
        "url": click_url(row, gateway, links, explorer),
        "tag": digest_tag(list(folded), types) if folded else tag_for(row, types),
    }
    if inbox_id is not None:
        added["inboxId"] = inbox_id
    # the full form leaves room for the badge; the compact one (after a 413) fits first, badge if room
    limit = COMPACT_PLAINTEXT_BYTES if compact else MAX_PLAINTEXT_BYTES - BADGE_ROOM
    if folded:  # the rows go in the room the rest leaves
        room = limit - len(_encode({**added, **_declarative(added), **row})) - DIGEST_OVERHEAD
        added["digest"] = _digest_member(folded, folded_total, room)
    full = {**added, **row} if not compact else None
    if full is not None:
        encoded = _encode({**full, **_declarative(added)})
        if len(encoded) <= limit:
            return encoded
    # Too big (or compact asked): keep only the NEAR fields, shortening free text.
    near = {k: row.get(k) for k in NEAR_ROW_FIELDS if k in row}
    for text_field in ("message", "path"):
        text = near.get(text_field)
        if isinstance(text, str):
            near[text_field] = _truncate(text, 200 if compact else 1000)
    encoded = _encode({**added, **near, **_declarative(added)})
    if len(encoded) > limit:  # pathological ids or account names: drop free text entirely
        near["message"] = None
        near["path"] = None
        added.pop("digest", None)
        encoded = _encode({**added, **near, **_declarative(added)})
    chars = FIELD_CHARS
    cut = {**added, **near}
    while len(encoded) > limit and chars > 1:  # whatever a source sent, every text gets shorter until it fits
        cut = {k: v[:chars] if isinstance(v, str) and k not in KEPT_WHOLE else v for k, v in {**added, **near}.items()}
        encoded = _encode({**cut, **_declarative(cut)})
        chars //= 2
    if len(encoded) > limit:  # the last resort: without the declarative copy of what is already there
        cut.pop("inboxId", None)
        encoded = _encode(cut)
    return encoded
