"""Per-gateway click links (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.links import click_url, gateway_origin
from tests.conftest import row

POST = "https://near.social/mob.near/widget/MainPage.N.Post.Page"
COMMENT = "https://near.social/mob.near/widget/MainPage.N.Comment.Page"


def r(value_type: str, **extra: Any) -> dict[str, Any]:
    base = row(1, "bob.near", value_type, blockHeight=130000002, actionAtBlockHeight=None, path=None, itemType=None)
    base.update(extra)
    return base


NEAR_ORG_CASES = [
    (
        r("like", path="bob.near/post/main", actionAtBlockHeight=129999000),
        "https://near.org/s/p?a=bob.near&b=129999000",
    ),
    (r("devgovgigs/like", devhubPostId=512), "https://near.org/devhub.near/widget/app?page=post&id=512"),
    (r("mention", initiatedBy="dave.near", path="dave.near/post/main"), "https://near.org/s/p?a=dave.near&b=130000002"),
    (r("follow"), "https://near.org/notifications"),
    (r("custom", message="hi"), "https://near.org/notifications"),
]


@pytest.mark.parametrize(("event", "url"), NEAR_ORG_CASES)
def test_near_org_links_follow_the_reference_service_worker(event: dict[str, Any], url: str) -> None:
    assert click_url(event, "https://near.org") == url
    assert click_url(event, "https://www.near.org/") == url


NEAR_SOCIAL_CASES = [
    (
        r("like", path="bob.near/post/main", actionAtBlockHeight=129999000),
        f"{POST}?accountId=bob.near&blockHeight=129999000",
    ),
    (
        r("like", path="bob.near/post/comment", actionAtBlockHeight=129999001),
        f"{COMMENT}?accountId=bob.near&blockHeight=129999001",
    ),
    (
        r("comment", initiatedBy="carol.near", path="bob.near/post/main", actionAtBlockHeight=129999000),
        f"{COMMENT}?accountId=carol.near&blockHeight=130000002",
    ),
    (
        r("mention", initiatedBy="dave.near", path="dave.near/post/main"),
        f"{POST}?accountId=dave.near&blockHeight=130000002",
    ),
    (
        r("mention", initiatedBy="dave.near", path="dave.near/post/comment"),
        f"{COMMENT}?accountId=dave.near&blockHeight=130000002",
    ),
    (
        r("repost", path="bob.near/post/main", actionAtBlockHeight=129999000),
        f"{POST}?accountId=bob.near&blockHeight=129999000",
    ),
    (r("follow", initiatedBy="erin.near"), "https://near.social/mob.near/widget/ProfilePage?accountId=erin.near"),
    (r("poke", initiatedBy="erin.near"), "https://near.social/mob.near/widget/ProfilePage?accountId=erin.near"),
    (r("star", path="frank.near/widget/Explorer"), "https://near.social/frank.near/widget/Explorer"),
    (r("devgovgigs/reply", devhubPostId=7), "https://near.social/devhub.near/widget/app?page=post&id=7"),
    (r("custom", message="hi"), "https://near.social/mob.near/widget/NotificationFeed"),
    (r("something-new"), "https://near.social/mob.near/widget/NotificationFeed"),
]


@pytest.mark.parametrize(("event", "url"), NEAR_SOCIAL_CASES)
def test_near_social_links_open_the_post_and_comment_pages(event: dict[str, Any], url: str) -> None:
    assert click_url(event, "https://near.social") == url


TEMPLATES = {
    "https://my.frontend": {
        "like": "{gateway}/post/{receiver}/{actionAtBlockHeight}",
        "mention": "https://my.frontend/p/{initiatedBy}?b={blockHeight}",
        "default": "{gateway}/inbox?for={receiver}",
    }
}


def test_configured_gateway_uses_its_templates_with_encoded_fields() -> None:
    like = r("like", path="bob.near/post/main", actionAtBlockHeight=129999000)
    assert click_url(like, "https://my.frontend/", TEMPLATES) == "https://my.frontend/post/bob.near/129999000"
    mention = r("mention", initiatedBy="a b&c")
    assert click_url(mention, "https://my.frontend", TEMPLATES) == "https://my.frontend/p/a%20b%26c?b=130000002"
    # a like without a target block cannot fill its template: the default link is used
    assert click_url(r("like"), "https://my.frontend", TEMPLATES) == "https://my.frontend/inbox?for=bob.near"


def test_unknown_gateway_falls_back_to_itself() -> None:
    assert click_url(r("like"), "https://docs.near.org/") == "https://docs.near.org"
    assert click_url(r("like"), "https://my.frontend", {"https://my.frontend": {}}) == "https://my.frontend"


def test_configured_templates_override_the_built_ins() -> None:
    custom = {"https://near.social": {"follow": "https://near.social/{initiatedBy}"}}
    assert (
        click_url(r("follow", initiatedBy="erin.near"), "https://near.social", custom)
        == "https://near.social/erin.near"
    )
    assert click_url(r("poke", initiatedBy="erin.near"), "https://near.social", custom).endswith(
        "ProfilePage?accountId=erin.near"
    )


def test_gateway_origin_normalises() -> None:
    assert gateway_origin("https://WWW.Near.Social/some/page") == "https://near.social"
