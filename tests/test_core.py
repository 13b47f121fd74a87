"""The pure core: endpoints allow-list, matcher, payload, VAPID signer, retry decisions."""

from __future__ import annotations

import json
import random

import pytest

from gateway.config import PushSettings
from gateway.dispatcher import decide, retry_delay
from gateway.endpoints import DEFAULT_ALLOWED_ENDPOINTS, endpoint_hash, is_allowed, parse_prefix, redact
from gateway.matcher import MatchPolicy, match
from gateway.models import Claim, Event, Stream
from gateway.pacing.collapse import tag_for
from gateway.payload import MAX_PLAINTEXT_BYTES, build_payload, title_and_body
from gateway.webpush import PushAnswer, VapidSigner, Verdict, classify, parse_retry_after
from tests.conftest import Clock, row
from tests.rfc8291 import verify_vapid

PREFIXES = tuple(parse_prefix(p) for p in DEFAULT_ALLOWED_ENDPOINTS)


@pytest.mark.parametrize(
    ("endpoint", "ok"),
    [
        ("https://fcm.googleapis.com/fcm/send/abc", True),
        ("https://updates.push.services.mozilla.com/wpush/v2/gAAA", True),
        ("https://web.push.apple.com/QGx", True),
        ("https://db5p.notify.windows.com/w/?token=x", True),
        ("https://notify.windows.com/w/", False),  # the wildcard wants a subdomain
        ("https://evilnotify.windows.com/w/", False),
        ("https://FCM.googleapis.com/fcm/send/abc", True),
        ("https://fcm.googleapis.com:8443/fcm/send/abc", False),
        ("http://fcm.googleapis.com/fcm/send/abc", False),
        ("https://fcm.googleapis.com.evil.example/", False),
        ("https://user@fcm.googleapis.com/", False),
        ("http://169.254.169.254/latest", False),
        ("https://fcm.googleapis.com/fcm/send/a b", False),
        ("not a url", False),
        ("https://fcm.googleapis.com:99999/", False),
    ],
)
def test_endpoint_allow_list(endpoint: str, ok: bool) -> None:
    assert is_allowed(endpoint, PREFIXES) is ok


def test_path_prefix_is_respected() -> None:
    prefixes = (parse_prefix("http://127.0.0.1:9000/push/"),)
    assert is_allowed("http://127.0.0.1:9000/push/abc", prefixes)
    assert not is_allowed("http://127.0.0.1:9000/admin", prefixes)
    assert not is_allowed("http://127.0.0.1:9001/push/abc", prefixes)


def test_redact_hides_the_capability_path() -> None:
    endpoint = "https://fcm.googleapis.com/fcm/send/SECRET-TOKEN"
    assert "SECRET" not in redact(endpoint) and endpoint_hash(endpoint)[:12] in redact(endpoint)


def _event(value_type: str = "like", receiver: str = "bob.near") -> Event:
    r = row(1, receiver, value_type)
    return Event("t:1", "t", receiver, value_type, r["blockHeight"], r)


def _streams() -> list[Stream]:
    return [
        Stream(1, "bob.near", "https://near.org", "e1", "h1", "", ""),
        Stream(2, "bob.near", "https://near.org", "e2", "h2", "", ""),
        Stream(3, "carol.near", "https://near.org", "e3", "h3", "", ""),
    ]


def test_matcher_selects_the_receivers_streams_minus_filters() -> None:
    result = match(_event(), _streams(), policy=MatchPolicy(), blocked={}, sent_today={})
    assert [s.id for s in result.selected] == [1, 2]
    result = match(
        _event(),
        _streams(),
        policy=MatchPolicy(max_per_endpoint_per_day=3),
        blocked={1: frozenset({"like"})},
        sent_today={"h2": 3},
    )
    assert result.selected == [] and result.skipped == {"blocked_by_preference": 1, "daily_cap": 1}
    shared = [*_streams(), Stream(4, "bob.near", "https://near.social", "e1", "h1", "", "")]
    result = match(_event(), shared, policy=MatchPolicy(), blocked={}, sent_today={})
    assert [s.id for s in result.selected] == [1, 2] and result.skipped == {"duplicate": 1}
    result = match(_event("poke"), _streams(), policy=MatchPolicy(frozenset({"like"})), blocked={}, sent_today={})
    assert result.selected == [] and result.skipped == {"type_not_allowed": 2}


ALL_TYPES = [
    "like",
    "comment",
    "mention",
    "follow",
    "unfollow",
    "poke",
    "repost",
    "star",
    "custom",
    "devgovgigs/like",
    "devgovgigs/reply",
    "devgovgigs/edit",
    "devgovgigs/mention",
    "devhub/edit",
    "devhub/mention",
    "proposal/mention",
    "proposal/edit",
    "rfp/mention",
    "something-new",
]


@pytest.mark.parametrize("value_type", ALL_TYPES)
def test_every_type_gets_a_title_body_url_and_tag(value_type: str) -> None:
    r = row(5, value_type=value_type, message="Your bounty was approved" if value_type == "custom" else None)
    payload = json.loads(build_payload(r))
    assert payload["title"] and payload["body"] and payload["url"].startswith("https://") and payload["tag"]
    for key, value in r.items():
        assert payload[key] == value
    if value_type == "custom":
        assert payload["body"] == "Your bounty was approved"
    elif value_type != "something-new":
        assert "alice.near" in payload["body"]


def test_tags_group_likes_on_one_post_but_not_mentions() -> None:
    assert tag_for(row(1)) == tag_for(row(2, initiatedBy="carol.near"))
    assert tag_for(row(1, value_type="mention")) != tag_for(row(2, value_type="mention"))
    assert title_and_body(row(1, path="bob.near/post/comment"))[1] == "alice.near liked your comment"


def test_payload_stays_under_the_aes128gcm_limit() -> None:
    huge = row(1, value_type="custom", message="m" * 10000, extra_field="x" * 5000)
    payload = build_payload(huge)
    assert len(payload) <= MAX_PLAINTEXT_BYTES
    decoded = json.loads(payload)
    assert decoded["id"] == 1 and decoded["receiver"] == "bob.near" and decoded["valueType"] == "custom"
    assert len(build_payload(huge, compact=True)) <= 1024
    small = row(2, extra_field="kept")
    assert json.loads(build_payload(small))["extra_field"] == "kept"


def test_every_field_is_bounded_so_no_row_can_overflow_the_record() -> None:
    wide = "\U0001f600" * 4096  # 4 bytes each in UTF-8: the longest a row's string may be (MAX_ROW_STRING)
    fields = ("initiatedBy", "itemType", "message", "path", "devhubPostId")
    pathological = {**row(1, "b" * 64, "v" * 128, **dict.fromkeys(fields, wide)), "id": "x" * 256}
    for compact, limit in ((False, MAX_PLAINTEXT_BYTES), (True, 1024)):
        payload = build_payload(pathological, compact=compact)
        assert len(payload) <= limit, (compact, len(payload))
        assert json.loads(payload)["receiver"] == "b" * 64


def test_vapid_header_is_cached_per_origin_and_renewed_before_exp() -> None:
    from cryptography.hazmat.primitives.asymmetric import ec

    clock = Clock()
    signer = VapidSigner(ec.generate_private_key(ec.SECP256R1()), "mailto:ops@gateway.test", clock)
    a = signer.authorization("https://fcm.googleapis.com")
    assert signer.authorization("https://fcm.googleapis.com") is a
    b = signer.authorization("https://web.push.apple.com")
    assert a != b
    claims = verify_vapid(a, "https://fcm.googleapis.com", clock.now)
    assert claims["sub"] == "mailto:ops@gateway.test"
    clock.now += 11.5 * 3600  # within an hour of exp: renewed
    renewed = signer.authorization("https://fcm.googleapis.com")
    assert renewed != a
    verify_vapid(renewed, "https://fcm.googleapis.com", clock.now)


def test_classify_and_retry_after() -> None:
    assert [classify(s) for s in (201, 404, 410, 413, 401, 403, 429, 503, 500, 406, 400, 302)] == [
        Verdict.SENT,
        Verdict.GONE,
        Verdict.GONE,
        Verdict.TOO_LARGE,
        Verdict.REJECTED,
        Verdict.REJECTED,
        Verdict.RETRY,
        Verdict.RETRY,
        Verdict.RETRY,
        Verdict.RETRY,
        Verdict.FAILED,
        Verdict.FAILED,
    ]
    assert parse_retry_after("120", 0) == 120
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", 1445412470.0) == pytest.approx(10)
    assert parse_retry_after("soon", 0) is None
    # never raises: "²" is a digit to str.isdigit() but not to float(); dates past year 9999 overflow
    for garbage in ("\xb2", "1e3", "-5", "Wed, 21 Oct 99999 07:28:00 GMT", "", "   "):
        assert parse_retry_after(garbage, 0) is None


def test_retry_decisions() -> None:
    settings = PushSettings(retry_initial_delay=1, retry_max_delay=60, give_up_after=100)
    stream = Stream(1, "bob.near", "g", "https://x/y", "h", "", "")
    claim = Claim(7, 1, False, 1000.0, stream, row(1))
    rng = random.Random(1)
    delays = [retry_delay(n, None, settings, rng) for n in range(1, 9)]
    assert all(0.5 * min(2 ** (n - 1), 60) <= d <= min(2 ** (n - 1), 60) for n, d in enumerate(delays, 1))
    assert retry_delay(1, 30, settings, rng) == 30
    assert retry_delay(1, 3600, settings, rng) == 60  # capped
    out = decide(claim, PushAnswer(Verdict.RETRY, 503, None, "x"), settings, 1010.0, rng)
    assert out.status == "retry" and out.retry_at is not None and 1010.5 <= out.retry_at <= 1011
    late = decide(claim, PushAnswer(Verdict.RETRY, 503, None, "x"), settings, 1100.0, rng)
    assert late.status == "dead"
    assert decide(claim, PushAnswer(Verdict.TOO_LARGE, 413, None, ""), settings, 1010, rng).compact
    assert decide(claim, PushAnswer(Verdict.GONE, 410, None, ""), settings, 1010, rng).endpoint_hash == "h"


def test_fair_share_clocks_start_at_now_advance_per_delivery_and_stay_bounded() -> None:
    from gateway import fairshare
    from gateway.fairshare import FairShare, flow_of

    assert flow_of("neardata", {"initiatedBy": "alice.near"}) == "@alice.near"
    assert flow_of("neardata", {"initiatedBy": None}) == "source:neardata"
    fair = FairShare()
    assert fair.take("@a", 100, 1000.0, 0.01) == 1000.0
    assert fair.take("@a", 1, 1000.5, 0.01) == 1001.0  # behind its own 100
    assert fair.take("@b", 1, 1000.5, 0.01) == 1000.5  # another flow starts now
    assert fair.take("@a", 1, 1005.0, 0.01) == 1005.0  # never before now
    for i in range(fairshare.FLOWS_KEPT):
        fair.take(f"@f{i}", 1, 2000.0, 0.01)
    assert fair.take("@new", 1, 3000.0, 0.01) == 3000.0
    assert len(fair._next) <= 2  # the clocks behind "now" were forgotten
