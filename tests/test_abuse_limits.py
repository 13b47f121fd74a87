"""Rate limits an attacker cannot spend on behalf of real users: a forged ``Origin`` spends no
frontend's budget (only that frontend's ``X-Gateway-Key`` does), and IPv6 clients are keyed by /64."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

import pytest

from gateway import ratelimit
from tests.conftest import RunningGateway
from tests.fakepush import FakePushService

Start = Callable[..., RunningGateway]

NEAR_SOCIAL = {"origin": "https://near.social", "key": "near-social-secret-key"}
PARTNER = {"origin": "https://partner.example", "key": "partner-secret-key"}
SLOW = 0.01  # tokens per second: no bucket refills while a test runs


def _get(gw: RunningGateway, ip: str, **headers: str) -> int:
    return gw.http.get("/vapid-public-key", headers={"X-Forwarded-For": ip, **headers}).status_code


# --- a forged Origin spends nobody's budget ---------------------------------------------------


def test_a_flood_forging_a_frontends_origin_from_many_addresses_does_not_lock_out_its_users(
    start_gateway: Start, fake_push: FakePushService
) -> None:
    limits = {"per_ip_rate": SLOW, "per_ip_burst": 5, "per_origin_rate": SLOW, "per_origin_burst": 20}
    gw = start_gateway(limits=limits, gateways=[NEAR_SOCIAL])
    flood: Counter[int] = Counter()
    for i in range(16):  # 16 addresses x 5 requests, each address inside its own burst: 80 > 20
        ip = f"203.0.113.{i}"
        for origin in ("https://near.social", "https://unkeyed.example"):  # a keyed and an unkeyed frontend
            flood[_get(gw, ip, Origin=origin)] += 1
            flood[_get(gw, ip, Origin=origin, **{"X-Gateway-Key": "guessed"})] += 1  # a wrong key spends nothing
        flood[_get(gw, ip, Origin="https://near.social")] += 1
    assert flood == {200: 80}
    # a real near.social user, first request from a fresh address, with the frontend's key ...
    body = {"accountId": "bob.near", "gateway": "https://near.social", "subscription": fake_push.subscribe().as_json()}
    headers = {"Origin": "https://near.social", "X-Gateway-Key": NEAR_SOCIAL["key"], "X-Forwarded-For": "198.51.100.7"}
    assert gw.post("/subscriptions/create", body, headers=headers).status_code == 201
    # ... and users of a frontend without a key are not refused either
    assert _get(gw, "198.51.100.8", Origin="https://unkeyed.example") == 200
    assert _get(gw, "198.51.100.9", Origin="https://near.social") == 200
    assert all(_get(gw, "203.0.113.0", Origin="https://near.social") == 429 for _ in range(3))  # per IP still holds


def test_a_keyed_frontend_keeps_its_own_budget_which_only_its_key_spends(start_gateway: Start) -> None:
    limits = {"per_ip_rate": SLOW, "per_ip_burst": 3, "per_origin_rate": SLOW, "per_origin_burst": 8}
    gw = start_gateway(limits=limits, gateways=[NEAR_SOCIAL, PARTNER])
    keyed = {"X-Gateway-Key": NEAR_SOCIAL["key"]}  # no Origin header: the key, not the header, names the frontend
    codes = [_get(gw, f"192.0.2.{i}", **keyed) for i in range(10)]
    assert codes == [200] * 8 + [429] * 2  # the frontend's budget, from 10 addresses
    r = gw.http.get("/vapid-public-key", headers={**keyed, "Origin": "https://elsewhere.example"})
    assert r.status_code == 429 and r.json()["code"] == "rate_limited"
    assert 90 < int(r.headers["Retry-After"]) <= 100  # 1 token at 0.01/s
    # strangers (no key, or a wrong one) from fresh addresses are not refused for it
    assert _get(gw, "198.51.100.20", Origin="https://near.social") == 200
    assert _get(gw, "198.51.100.21", Origin="https://near.social", **{"X-Gateway-Key": "wrong"}) == 200
    # the other keyed frontend has its own budget
    assert _get(gw, "198.51.100.22", **{"X-Gateway-Key": PARTNER["key"]}) == 200
    # and a keyed request still has its address's bucket too
    partner = {"X-Gateway-Key": PARTNER["key"]}
    assert [_get(gw, "198.51.100.23", **partner) for _ in range(4)] == [200, 200, 200, 429]


# --- IPv6 clients by /64 ----------------------------------------------------------------------


def test_ipv6_clients_share_one_bucket_per_64_and_mapped_ipv4_counts_as_ipv4(start_gateway: Start) -> None:
    gw = start_gateway(limits={"per_ip_rate": SLOW, "per_ip_burst": 3, "per_origin_rate": 0})
    one_64 = ["2001:db8:1:2::1", "2001:db8:1:2::2", "2001:db8:1:2:ffff:ffff:ffff:ffff"]
    assert [_get(gw, ip) for ip in one_64] == [200] * 3
    assert _get(gw, "2001:db8:1:2:abcd::9") == 429  # a fourth address of the same /64
    assert _get(gw, "2001:DB8:0001:0002:0:0:0:77") == 429  # however it is spelled
    assert _get(gw, "2001:db8:1:3::1") == 200  # the next /64 is another client
    # IPv4 stays per address, and an IPv4-mapped address is that IPv4 address
    assert [_get(gw, "192.0.2.1") for _ in range(3)] == [200] * 3
    assert _get(gw, "::ffff:192.0.2.1") == 429
    assert _get(gw, "192.0.2.2") == 200
    assert [_get(gw, "::ffff:192.0.2.3") for _ in range(3)] == [200] * 3
    assert _get(gw, "192.0.2.3") == 429
    # an address that does not parse is a bucket of its own
    assert [_get(gw, "not-an-address") for _ in range(4)] == [200, 200, 200, 429]
    assert _get(gw, "not-an-address-2") == 200


@pytest.mark.parametrize(
    ("address", "bucket"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
        ("2001:0DB8:0001:0002::", "2001:db8:1:2::/64"),
        ("::1", "::/64"),
        ("fe80::1%eth0", "fe80::/64"),
        ("::ffff:192.0.2.1", "192.0.2.1"),
        ("::FFFF:c000:0201", "192.0.2.1"),
        ("unknown", "unknown"),
        ("", ""),
        ("[2001:db8::1]", "[2001:db8::1]"),
    ],
)
def test_client_bucket_of_an_address(address: str, bucket: str) -> None:
    assert ratelimit.client_bucket(address) == bucket


def test_keyed_frontend_names_the_frontend_whose_key_was_given() -> None:
    frontends = [("https://near.social", "k1"), ("https://partner.example", "k2"), ("https://open.example", "")]
    assert ratelimit.keyed_frontend("k2", frontends) == "https://partner.example"
    assert ratelimit.keyed_frontend("k1", frontends) == "https://near.social"
    assert ratelimit.keyed_frontend("k3", frontends) is None
    assert ratelimit.keyed_frontend("", frontends) is None  # an empty key is nobody's
    assert ratelimit.keyed_frontend(None, frontends) is None
