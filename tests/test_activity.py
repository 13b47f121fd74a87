"""What users see of on-chain activity: amounts in human units, texts, urgency, links; token metadata."""

from __future__ import annotations

import json
from typing import Any

import pytest

from gateway.links import click_url
from gateway.nearrpc import RpcUnavailable, TokenMetadata, token_metadata_from_answer
from gateway.pacing.collapse import tag_for
from gateway.pacing.urgency import urgency_for
from gateway.payload import build_payload, format_amount, title_and_body


@pytest.mark.parametrize(
    ("raw", "decimals", "shown"),
    [
        ("2500000000000000000000000", 24, "2.5"),
        ("1000000000000000000000", 18, "1,000"),
        ("10000000000000000000000", 24, "0.01"),
        ("350000000000000000000", 24, "0.00035"),
        ("123456789", 6, "123.456789"),
        ("123456789999", 9, "123.456789"),  # cut at 6 decimals, never rounded up
        ("4774", 0, "4,774"),
        ("1", 24, "< 0.000001"),
        ("0", 24, "0"),
        ("340282366920938463463374607431768211455", 24, "340,282,366,920,938.463463"),  # u128 max: no float
    ],
)
def test_amounts_are_shown_in_human_units(raw: str, decimals: int, shown: str) -> None:
    assert format_amount(raw, decimals) == shown


@pytest.mark.parametrize("raw", ["", "-1", "1.5", "１２", None, 12])
def test_amounts_that_are_not_u128_strings_are_not_formatted(raw: Any) -> None:
    assert format_amount(raw, 24) is None


def activity(value_type: str, **fields: Any) -> dict[str, Any]:
    return {
        "id": f"R1:{value_type}:0",
        "blockHeight": 1,
        "receiver": "bob.near",
        "initiatedBy": "alice.near",
        "valueType": value_type,
        "receiptId": "R1",
        "txHash": "TX1",
        **fields,
    }


@pytest.mark.parametrize(
    ("row", "title", "body"),
    [
        (
            activity("near_transfer", amount="2500000000000000000000000"),
            "NEAR received",
            "alice.near sent you 2.5 NEAR",
        ),
        (
            activity(
                "ft_transfer",
                amount="1000000000000000000000",
                token="token.sweat",
                symbol="SWEAT",
                decimals=18,
                initiatedBy="spin.sweat",
            ),
            "Tokens received",
            "You received 1,000 SWEAT from spin.sweat",
        ),
        (
            activity("ft_transfer", amount="1000", token="token.sweat"),
            "Tokens received",
            "You received 1000 (raw units) of token.sweat from alice.near",
        ),  # the RPC could not tell its decimals
        (
            activity("ft_mint", amount="5", token="t.near", symbol="T", decimals=0),
            "Tokens received",
            "5 T minted to bob.near",
        ),
        (
            activity("nft_transfer", token="x.paras.near", tokenIds=["7"]),
            "NFT received",
            "alice.near sent you NFT 7 from x.paras.near",
        ),
        (
            activity("add_key", permission="FullAccess", publicKey="ed25519:K"),
            "Security alert",
            "New full-access key added to bob.near",
        ),
        (
            activity("add_key", permission="app.near", publicKey="ed25519:K"),
            "New access key",
            "New key for app.near added to bob.near",
        ),
        (activity("delete_key", publicKey="ed25519:K"), "Security alert", "An access key was deleted from bob.near"),
        (
            activity(
                "receipt_failed",
                contract="aurora",
                method="submit",
                error="FunctionCallError",
                errorMessage="Smart contract panicked: ERR_OUT_OF_FUND",
            ),
            "Transaction failed",
            "Your call to submit on aurora failed: Smart contract panicked: ERR_OUT_OF_FUND",
        ),
        (
            activity("receipt_failed", contract="x.near", error="AccountAlreadyExists"),
            "Transaction failed",
            "Your transaction to x.near failed: AccountAlreadyExists",
        ),
    ],
)
def test_activity_texts(row: dict[str, Any], title: str, body: str) -> None:
    assert title_and_body(row) == (title, body)


def test_a_configured_event_type_says_what_happened_where() -> None:
    row = {**activity("mt_transfer"), "standard": "nep245", "event": "mt_transfer", "token": "intents.near"}
    assert title_and_body(row) == ("On-chain activity", "mt_transfer by alice.near on intents.near")


def test_security_alerts_are_urgent_and_the_rest_keep_the_default() -> None:
    assert urgency_for(activity("add_key", permission="FullAccess")) == "high"
    assert urgency_for(activity("delete_key")) == "high"
    assert urgency_for(activity("add_key", permission="app.near")) is None
    assert urgency_for(activity("near_transfer", amount="1")) is None
    assert urgency_for({"valueType": "like"}) == "low"
    assert urgency_for({"valueType": "comment"}) is None


def test_each_activity_row_is_its_own_notification() -> None:
    first, second = activity("near_transfer", amount="1"), {**activity("near_transfer", amount="1"), "id": "R2:x:0"}
    assert tag_for(first) != tag_for(second)


def test_activity_links_open_the_explorer_unless_the_gateway_has_a_template_for_the_type() -> None:
    row = activity("near_transfer", amount="1")
    assert click_url(row, "https://near.social") == "https://nearblocks.io/txns/TX1"
    assert click_url({**row, "txHash": None}, "https://near.org") == "https://nearblocks.io/address/bob.near"
    templates = {"https://wallet.example": {"near_transfer": "{gateway}/tx/{txHash}", "default": "{gateway}/inbox"}}
    assert click_url(row, "https://wallet.example", templates) == "https://wallet.example/tx/TX1"
    tokens = {"https://wallet.example": {"ft_transfer": "{gateway}/token/{token}/{receiptId}"}}
    ft = activity("ft_transfer", amount="1", token="token.sweat")
    assert click_url(ft, "https://wallet.example", tokens) == "https://wallet.example/token/token.sweat/R1"
    # the gateway's default link is for its own notifications; activity without a template goes to the explorer
    assert click_url(activity("add_key"), "https://wallet.example", templates) == "https://nearblocks.io/txns/TX1"
    custom = {**activity("mt_transfer"), "standard": "nep245"}
    explorer = ("https://testnet.nearblocks.io/txns/{txHash}", "https://testnet.nearblocks.io/address/{receiver}")
    assert click_url(custom, "https://near.social", None, explorer) == "https://testnet.nearblocks.io/txns/TX1"
    # social rows keep their built-in links
    assert click_url({"valueType": "poke", "initiatedBy": "a.near"}, "https://near.social").endswith("a.near")


def test_the_payload_carries_the_activity_fields_and_the_explorer_link() -> None:
    payload = json.loads(build_payload(activity("near_transfer", amount="1"), gateway="https://near.social"))
    assert payload["url"] == "https://nearblocks.io/txns/TX1" and payload["amount"] == "1"
    assert payload["receiptId"] == "R1" and payload["body"].endswith("NEAR")


def test_ft_metadata_answers_are_read_defensively() -> None:
    def answer(meta: Any) -> dict[str, Any]:
        return {"result": {"result": list(json.dumps(meta).encode()), "logs": []}}

    assert token_metadata_from_answer(answer({"symbol": "SWEAT", "decimals": 18})) == TokenMetadata("SWEAT", 18)
    assert token_metadata_from_answer(answer({"symbol": "x" * 40, "decimals": 99})) == TokenMetadata(None, None)
    assert token_metadata_from_answer(answer({"symbol": "A\nB", "decimals": True})) == TokenMetadata(None, None)
    for bad in ({"error": {"name": "HANDLER_ERROR"}}, {"result": {"result": [300]}}, {"result": {}}, None):
        with pytest.raises(RpcUnavailable):
            token_metadata_from_answer(bad)
    with pytest.raises(RpcUnavailable):
        token_metadata_from_answer(answer([1, 2]))
