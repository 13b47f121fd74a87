"""Pacing, pure: collapse topics, digest plans and texts, quiet hours, the declarative payload."""

from __future__ import annotations

import json
import re
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from gateway.config import TypeDelivery
from gateway.pacing.collapse import tag_for, topic_for
from gateway.pacing.digest import (
    QUIET,
    Deliver,
    Fold,
    FoldState,
    Hold,
    LatestDigest,
    Pacing,
    digest_tag,
    fold_key_for,
    fold_state,
    folded_keys,
    plan,
)
from gateway.pacing.quiet import QuietHours, format_hhmm, parse_hhmm, quiet_until
from gateway.payload import MAX_PLAINTEXT_BYTES, build_payload, digest_text, with_badge
from tests.conftest import row

TOPIC = re.compile(r"[A-Za-z0-9_-]{1,32}")  # RFC 8030 §5.4


def at(text: str, zone: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=ZoneInfo(zone)).timestamp()


# --- collapse -------------------------------------------------------------------------------------


def test_topics_are_valid_rfc8030_topics_and_match_the_tag() -> None:
    for r in (row(1), row(2, value_type="mention"), row(3, receiver="x" * 64, value_type="devgovgigs/like")):
        topic = topic_for(r)
        assert topic is not None and TOPIC.fullmatch(topic)
        assert tag_for(r) == topic


def test_likes_on_one_post_share_a_topic_but_not_across_posts_accounts_or_mentions() -> None:
    assert topic_for(row(1)) == topic_for(row(2, initiatedBy="carol.near"))
    assert topic_for(row(1)) != topic_for(row(2, actionAtBlockHeight=5))  # another post
    assert topic_for(row(1)) != topic_for(row(1, receiver="carol.near"))  # another account
    assert topic_for(row(1)) != topic_for(row(1, value_type="comment"))  # another type
    assert topic_for(row(1, value_type="mention")) != topic_for(row(2, value_type="mention"))


def test_the_topic_setting_collapses_by_type_or_not_at_all() -> None:
    by_type = {"like": TypeDelivery(topic="type")}
    assert topic_for(row(1), by_type) == topic_for(row(2, actionAtBlockHeight=5), by_type)
    never = {"like": TypeDelivery(topic="none")}
    assert topic_for(row(1), never) is None
    assert tag_for(row(1), never) != tag_for(row(2), never)  # each notification its own on screen too


# --- digests ----------------------------------------------------------------------------------------


def test_the_first_of_a_burst_goes_at_once_and_the_rest_fold_into_one_digest() -> None:
    window, t0 = 60.0, 1000.0
    assert plan("e1", t0, "k", None, window, FoldState()) == Deliver("k")
    second = plan("e2", t0 + 5, "k", None, window, FoldState("e1", t0))
    assert second == Hold("k", t0 + window, ("e1", "e2"), 2)
    assert plan("e3", t0 + 6, "k", None, window, FoldState("e1", t0, open_digest=7)) == Fold(7)
    # after the window a new burst begins
    assert plan("e4", t0 + window + 1, "k", None, window, FoldState("e1", t0)) == Deliver("k")


def test_quiet_hours_hold_everything_but_high_urgency() -> None:
    quiet = QuietHours("Europe/Berlin", parse_hhmm("22:00"), parse_hhmm("07:00"))
    night = at("2026-12-03T23:30:00", "Europe/Berlin")
    pacing = Pacing()
    key, held_until = fold_key_for(row(1), quiet, pacing, night)
    assert key == QUIET and held_until == at("2026-12-04T07:00:00", "Europe/Berlin")
    alert = {**row(2, value_type="add_key"), "permission": "FullAccess"}
    assert fold_key_for(alert, quiet, pacing, night) == (None, None)
    assert plan("e1", night, QUIET, held_until, 0, FoldState()) == Hold(QUIET, held_until, ("e1",), 1)
    assert plan("e2", night, QUIET, held_until, 0, FoldState(open_digest=3)) == Fold(3)
    day = at("2026-12-03T12:00:00", "Europe/Berlin")
    assert fold_key_for(row(1), quiet, pacing, day) == (None, None)
    digests = Pacing({"like": TypeDelivery(digest=60)})
    assert fold_key_for(row(1), quiet, digests, day)[0] is not None  # by day, the like's digest window


def test_an_event_arriving_as_its_digest_is_taken_carries_that_digest_on() -> None:
    """Ingest's clock says the window is still open, but the dispatcher already took the digest: the
    next digest carries its events and count, so "and 4 others" is never replaced by "and 1 other"."""
    window, t0 = 60.0, 1000.0
    taken = LatestDigest(7, ["e1", "e2", "e3"], 3, "pending", t0 + 90, t0 + window)
    state = fold_state(("e1", t0), taken, t0 + 59.9, window, None)
    assert state.open_digest is None and state.carried == (("e1", "e2", "e3"), 3)
    assert plan("e4", t0 + 59.9, "k", None, window, state) == Hold("k", t0 + window, ("e1", "e2", "e3", "e4"), 4)
    sent = taken._replace(status="sent", lease_until=None)
    assert fold_state(("e1", t0), sent, t0 + 59.9, window, None).carried == (("e1", "e2", "e3"), 3)
    still_open = taken._replace(lease_until=None)
    assert fold_state(("e1", t0), still_open, t0 + 30, window, None).open_digest == 7
    older_burst = taken._replace(status="sent", lease_until=None, due_at=t0 - 500)  # another window's
    assert fold_state(("e1", t0), older_burst, t0 + 30, window, None) == FoldState("e1", t0)
    # quiet hours: the same window's digest, taken at its end, is carried on too
    quiet_taken = LatestDigest(9, ["q1", "q2"], 2, "pending", t0 + 5000, t0 + 3600)
    assert plan("q3", t0 + 3599, QUIET, t0 + 3600, 0, fold_state(None, quiet_taken, t0 + 3599, 0, t0 + 3600)) == Hold(
        QUIET, t0 + 3600, ("q1", "q2", "q3"), 3
    )


def test_a_digest_lists_at_most_so_many_events() -> None:
    keys: list[str] = []
    for i in range(100):
        keys = folded_keys(keys, f"e{i}")
    assert len(keys) == 64 and keys[-1] == "e99" and keys[0] == "e36"


def test_digest_text_counts_the_people_of_a_burst() -> None:
    likes = [row(i, initiatedBy=f"u{i}.near") for i in range(5)]
    assert digest_text(likes[-1], likes, 5) == ("New like", "u4.near and 4 others liked your post")
    assert digest_text(likes[1], likes[:2], 2)[1] == "u1.near and 1 other liked your post"
    # more than the listed rows: the count says the rest
    assert digest_text(likes[-1], likes, 40)[1] == "u4.near and 39 others liked your post"
    mixed = [row(1), row(2, value_type="comment", initiatedBy="carol.near")]
    assert digest_text(mixed[-1], mixed, 2) == ("2 new notifications", "carol.near commented on your post, and 1 more")
    assert digest_tag(likes) == tag_for(likes[0])  # a burst's digest replaces its first push
    assert digest_tag(mixed) != tag_for(mixed[0])


def test_a_digest_payload_carries_the_newest_rows_within_one_record() -> None:
    likes = [row(i, initiatedBy=f"u{i}.near", message="m" * 300) for i in range(64)]
    encoded = build_payload(likes[-1], folded=likes, folded_total=70)
    assert len(encoded) <= MAX_PLAINTEXT_BYTES
    payload = json.loads(encoded)
    assert payload["digest"]["count"] == 70
    rows = payload["digest"]["rows"]
    assert 1 < len(rows) < 64 and rows[0]["id"] == 63  # newest first, as many as fit
    assert payload["body"] == "u63.near and 69 others liked your post"
    assert payload["notification"]["tag"] == payload["tag"] == tag_for(likes[0])


# --- the declarative payload ------------------------------------------------------------------------


def test_the_payload_is_a_declarative_push_message_keeping_the_near_fields() -> None:
    r = row(7)
    payload = json.loads(build_payload(r, gateway="https://near.social"))
    assert payload["web_push"] == 8030 and payload["mutable"] is True
    notification = payload["notification"]
    assert notification == {
        "title": payload["title"],
        "body": payload["body"],
        "navigate": payload["url"],
        "tag": payload["tag"],
        "lang": "en",
    }
    assert notification["title"] == "New like" and notification["navigate"].startswith("https://near.social/")
    for key, value in r.items():  # what the reference service workers read
        assert payload[key] == value
    compact = json.loads(build_payload(r, compact=True))
    assert compact["web_push"] == 8030 and compact["notification"]["navigate"] == compact["url"]


def test_a_row_cannot_override_the_declarative_members() -> None:
    hostile = {**row(1), "web_push": 1, "notification": {"title": "phish", "navigate": "https://evil.example"}}
    payload = json.loads(build_payload(hostile))
    assert payload["web_push"] == 8030 and payload["notification"]["navigate"] == payload["url"]
    assert payload["notification"]["title"] == "New like"


# --- quiet hours ------------------------------------------------------------------------------------


def test_hhmm_round_trips_and_refuses_other_text() -> None:
    assert parse_hhmm("22:30") == 1350 and format_hhmm(1350) == "22:30" and parse_hhmm("00:00") == 0
    for bad in ("24:00", "7:00", "12:60", "noon", "12:00:00"):
        with pytest.raises(ValueError):
            parse_hhmm(bad)


def test_a_window_within_one_day() -> None:
    quiet = QuietHours("Asia/Tokyo", parse_hhmm("13:00"), parse_hhmm("14:00"))
    assert quiet_until(at("2026-06-01T12:59:59", "Asia/Tokyo"), quiet) is None
    assert quiet_until(at("2026-06-01T13:00:00", "Asia/Tokyo"), quiet) == at("2026-06-01T14:00:00", "Asia/Tokyo")
    assert quiet_until(at("2026-06-01T14:00:00", "Asia/Tokyo"), quiet) is None


def test_a_window_across_midnight_ends_the_next_morning() -> None:
    quiet = QuietHours("America/New_York", parse_hhmm("22:00"), parse_hhmm("07:00"))
    assert quiet_until(at("2026-06-01T21:59:00", "America/New_York"), quiet) is None
    assert quiet_until(at("2026-06-01T23:00:00", "America/New_York"), quiet) == at(
        "2026-06-02T07:00:00", "America/New_York"
    )
    assert quiet_until(at("2026-06-02T03:00:00", "America/New_York"), quiet) == at(
        "2026-06-02T07:00:00", "America/New_York"
    )
    assert quiet_until(at("2026-06-02T07:00:00", "America/New_York"), quiet) is None


def test_a_night_with_a_dst_change_ends_at_the_local_wall_clock_time() -> None:
    quiet = QuietHours("Europe/Berlin", parse_hhmm("22:00"), parse_hhmm("07:00"))
    # 2026-03-29: clocks go from 02:00 to 03:00, so that night is 8 hours, not 9
    start = at("2026-03-28T22:00:00", "Europe/Berlin")
    ends = quiet_until(start, quiet)
    assert ends == at("2026-03-29T07:00:00", "Europe/Berlin") and ends - start == 8 * 3600
    # 2026-10-25: clocks go back, that night is 10 hours
    start = at("2026-10-24T22:00:00", "Europe/Berlin")
    ends = quiet_until(start, quiet)
    assert ends is not None and ends - start == 10 * 3600


def test_an_empty_window_or_unknown_zone_is_never_quiet() -> None:
    now = at("2026-06-01T23:00:00", "UTC")
    assert quiet_until(now, QuietHours("UTC", 600, 600)) is None
    assert quiet_until(now, QuietHours("Mars/Olympus", 0, 1439)) is None


def test_a_window_whose_end_the_spring_change_skips_ends_at_the_jump() -> None:
    quiet = QuietHours("America/New_York", parse_hhmm("22:00"), parse_hhmm("02:30"))
    # 2026-03-08: 02:00 EST jumps to 03:00 EDT, so 02:30 never happens that night
    ends = quiet_until(at("2026-03-07T23:00:00", "America/New_York"), quiet)
    assert ends == datetime.fromisoformat("2026-03-08T07:00:00+00:00").timestamp()  # 03:00 EDT, not 03:30


def test_a_window_ending_in_the_repeated_autumn_hour_holds_through_both() -> None:
    quiet = QuietHours("America/New_York", parse_hhmm("22:00"), parse_hhmm("01:30"))
    # 2026-11-01: 02:00 EDT goes back to 01:00 EST; 01:15 happens twice
    first_pass = datetime.fromisoformat("2026-11-01T05:15:00+00:00").timestamp()  # 01:15 EDT
    second_pass = datetime.fromisoformat("2026-11-01T06:15:00+00:00").timestamp()  # 01:15 EST
    assert quiet_until(first_pass, quiet) == datetime.fromisoformat("2026-11-01T05:30:00+00:00").timestamp()
    assert quiet_until(second_pass, quiet) == datetime.fromisoformat("2026-11-01T06:30:00+00:00").timestamp()


def test_a_compact_payload_of_a_wide_row_still_fits_its_limit() -> None:
    """The compact form (sent after a 413) stays under 1 KiB with the badge, declarative members and
    all, for rows of wide characters (ids are kept whole: a 64-character id of 4-byte characters)."""
    from gateway.payload import BADGE_ROOM, COMPACT_PLAINTEXT_BYTES, MAX_PLAINTEXT_BYTES

    wide = "\U0001f600" * 64  # 4 bytes each
    widest = {**row(1, "b" * 64, "v" * 128), "id": wide, "initiatedBy": wide, "path": wide * 4, "message": wide * 4}
    likes = [{**widest, "id": f"{wide[:60]}{i}"} for i in range(64)]
    compact = [
        build_payload(widest, compact=True, inbox_id=2**53),
        build_payload(likes[-1], compact=True, folded=likes, folded_total=900, inbox_id=2**53),
    ]
    for payload in compact:
        assert len(payload) <= COMPACT_PLAINTEXT_BYTES, len(payload)
        assert len(with_badge(payload, 999, COMPACT_PLAINTEXT_BYTES)) <= COMPACT_PLAINTEXT_BYTES
        assert json.loads(payload)["receiver"] == "b" * 64 and json.loads(payload)["id"]
    assert len(build_payload(likes[-1], folded=likes, folded_total=900)) <= MAX_PLAINTEXT_BYTES - BADGE_ROOM
