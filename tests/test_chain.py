"""The pure NEAR block decoder (watchers/chain.py): the fixture blocks give exactly the rows of
shared/fixtures/neardata/README.md, constructed blocks cover the kinds the fixtures lack, and
arbitrary input (hypothesis) never raises and never reaches an account outside the set."""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.config import ChainEventSettings
from gateway.models import Event, NotificationRow
from tests.conftest import fixture_path
from tests.fakeneardata import b64, block, event_log, receipt
from watchers.chain import Block, decode_block, parse_block
from watchers.decode import Decoded, decode_actions_frame

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FIXTURES = ["107503704", "testnet-185758655", "200000000"]
MT_TRANSFER = ChainEventSettings(
    standard="nep245", event="mt_transfer", receiver_field="new_owner_id", initiator_field="old_owner_id"
)


class Everyone:
    """Every account has a stream."""

    def __contains__(self, account: object) -> bool:
        return True


class Recording:
    """An accounts set that counts its lookups. It has no __iter__ or __len__: the decoder can only
    ask about the accounts a block names, never walk the subscribers."""

    def __init__(self, accounts: set[str]) -> None:
        self.accounts = accounts
        self.lookups = 0

    def __contains__(self, account: object) -> bool:
        self.lookups += 1
        return account in self.accounts


EVERYONE = Everyone()


def raw_fixture(name: str) -> Any:
    return json.loads(fixture_path(f"neardata/{name}.json").read_text())


def parsed(value: Any) -> Block:
    """A block from its JSON (a fixture or a constructed one); it must parse."""
    body = value if isinstance(value, bytes) else json.dumps(value).encode()
    got, fault = parse_block(body)
    assert fault is None and got is not None
    return got


def fixture_block(name: str) -> Block:
    return parsed(fixture_path(f"neardata/{name}.json").read_bytes())


def decode(value: Any, accounts: Any = EVERYONE, **kw: Any) -> Decoded:
    return decode_block(parsed(value), source="chain", accounts=accounts, **kw)


def outcomes(raw: Any) -> Iterator[dict[str, Any]]:
    for shard in raw["shards"]:
        yield from shard["receipt_execution_outcomes"]


def tx_hashes(name: str) -> dict[str, str | None]:
    """receipt id -> tx_hash, read from the file itself (None when the file has none)."""
    return {o["receipt"]["receipt_id"]: o.get("tx_hash") for o in outcomes(raw_fixture(name))}


# The README columns: who, what type, by whom, the item, and the receipt.
COLUMNS = (
    "receiver",
    "valueType",
    "initiatedBy",
    "amount",
    "token",
    "publicKey",
    "permission",
    "contract",
    "method",
    "error",
    "errorMessage",
    "itemType",
    "path",
    "actionAtBlockHeight",
    "message",
    "receiptId",
    "txHash",
)


def project(row: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(row.get(c) for c in COLUMNS)


def table(rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted((project(r) for r in rows), key=repr)


def rows_of(out: Decoded) -> list[dict[str, Any]]:
    return [e.row for e in out.events]


def only(out: Decoded) -> dict[str, Any]:
    assert out.faults == []
    assert len(out.events) == 1, rows_of(out)
    return out.events[0].row


def assert_consistent(out: Decoded, height: int) -> None:
    """What every event must be: a valid row whose Event fields are the row's."""
    for event in out.events:
        row = NotificationRow.model_validate(event.row)
        assert (event.receiver, event.value_type, event.block_height) == (row.receiver, row.valueType, height)
        assert row.blockHeight == height and event.key.startswith(f"near:{height}:")
        assert event.source == "chain"


# --- 1. the fixture blocks give exactly the README rows ------------------------------------------

SWEAT_FEES = "591dccb901a188815f31bae1195976de83ad734778ee9736699d57cd41eea0ba"
SWEAT_OPTIN = "57763e449d661512979d539e680f6054b2c8e5d1bc0a2ca489f0c7411ea8c80b"
SWEAT_SPIN = "1319811c5fb65e4de7e7b4afced536c8d306760584f695eac874bdc462a5e0bc"
SWEAT_LEARN = "17620ca836a66b11845dc5ac0d089d1d1e120ea3559c8b662f5e62bd65b51584"

MAINNET_ROWS: list[dict[str, Any]] = [
    {
        "receiver": "relay.aurora",
        "valueType": "receipt_failed",
        "initiatedBy": "relay.aurora",
        "contract": "aurora",
        "method": "submit",
        "error": "FunctionCallError",
        "errorMessage": "Smart contract panicked: ERR_OUT_OF_FUND",
        "receiptId": "BZDV6HVpNPeCQCByp56CyULNKgSbC1zgPMK4hoMjVFqG",
    },
    {
        "receiver": "executor.v1.corn-staging.near",
        "valueType": "receipt_failed",
        "initiatedBy": "corn.v1.corn-staging.near",
        "contract": "corn.v1.corn-staging.near",
        "method": "on_get_locked_amount",
        "error": "FunctionCallError",
        "errorMessage": "Smart contract panicked: Distribution amount exceeds total mintable",
        "receiptId": "34Bstf8ZpJt4DLk16s4ckTKrVRgZpue5b3gKvVQSVw4B",
    },
    {
        "receiver": "fees.sweat",
        "valueType": "ft_transfer",
        "initiatedBy": SWEAT_FEES,
        "amount": "1000000000000000000",
        "token": "token.sweat",
        "receiptId": "5sLStrJZRkxposFSNuhriCcqbGGGg56Dbc2zFq1rfPX4",
    },
    {
        "receiver": "reward-optin.sweat",
        "valueType": "ft_transfer",
        "initiatedBy": SWEAT_OPTIN,
        "amount": "100000000000000000",
        "token": "token.sweat",
        "receiptId": "HfjZ9qaDmRcVWUbeZPSCzw1u1Mk89hkHPrSa8Fzc852F",
    },
    {
        "receiver": SWEAT_SPIN,
        "valueType": "ft_transfer",
        "initiatedBy": "spin.sweat",
        "amount": "1000000000000000000",
        "token": "token.sweat",
        "receiptId": "4PcZuJXHoQ7TLe6BeE92ssL8YSqZRkJKhS3AERY7bWBg",
    },
    {
        "receiver": SWEAT_LEARN,
        "valueType": "ft_transfer",
        "initiatedBy": "learn.sweat",
        "amount": "1000000000000000000",
        "token": "token.sweat",
        "receiptId": "Hyub7MSn3yjADPnevQViW35Zx3a1yntxYzLziWW3yW4o",
    },
    {
        "receiver": "lb2oyd4yvviz.users.kaiching",
        "valueType": "add_key",
        "initiatedBy": "users.kaiching",
        "publicKey": "ed25519:2cjDsUp9qKPTUjLSqTbhB7Cci3aEYcjv6eyoUaqRiBWS",
        "permission": "FullAccess",
        "receiptId": "92nz2arX34dfkJvvRdD4sCE8fygyL13JVzn6Ugnfm1Nz",
    },
    {
        "receiver": "lb2oyd4yvviz.users.kaiching",
        "valueType": "near_transfer",
        "initiatedBy": "users.kaiching",
        "amount": "10000000000000000000000",
        "receiptId": "92nz2arX34dfkJvvRdD4sCE8fygyL13JVzn6Ugnfm1Nz",
    },
    {
        "receiver": "sweat_welcome.near",
        "valueType": "near_transfer",
        "initiatedBy": "token.sweat",
        "amount": "350000000000000000000",
        "receiptId": "4tA2xd6NVknZ8uV6VeSa3sWnx9wdpquVKeNAJAyCkLHS",
    },
]  # the file has no tx_hash (Lake data): txHash None on every row

TESTNET_ROWS: list[dict[str, Any]] = [
    {
        "receiver": "vr0x3ansmvsqogyqlh8e7otigehvxxqr.testnet",
        "valueType": "ft_transfer",
        "initiatedBy": "maoleng1.testnet",
        "amount": "4774",
        "token": "vnsc.tkn.primitives.testnet",
        "receiptId": "C2J2prsk7rQrkpiQMcmukZMHMUZJgpxbQi3AXfgZnL6T",
        "txHash": "ACS74r29ASTCzsBEbgfUveChS16LFteQWznsdMUSrZBP",
    }
]  # not the system refund Gwss3… (tx_hash HpYnR9…), not report_prices

MAIN_POST = {"itemType": "social", "path": "devgovgigs.near/post/main", "actionAtBlockHeight": 124058852}
DAO_MESSAGE = "slimedragon.near created Transfer proposal for intear.sputnik-dao.near"
CUSTOM_RECEIPT = "FqEkmZRHYZ9jhDa8UhtYiD5M5nJE8CaRmw9rLt7naqkL"
SOCIAL_ROWS: list[dict[str, Any]] = [
    {
        "receiver": "devgovgigs.near",
        "valueType": "like",
        "initiatedBy": "nearversedao.near",
        **MAIN_POST,
        "receiptId": "FTz3kdN9KVV2ThYrpN1f44hDrJcaEg8BpoRfaTLL332A",
    },
    {
        "receiver": "nearversedao.near",
        "valueType": "mention",
        "initiatedBy": "slimedragon.near",
        "itemType": "social",
        "path": "slimedragon.near/post/comment",
        "receiptId": "FGABgN9aW6cHPJcUkMJ2tx3JxFU9nwqT3NyFM723KjNL",
    },
    {
        "receiver": "devgovgigs.near",
        "valueType": "comment",
        "initiatedBy": "slimedragon.near",
        **MAIN_POST,
        "receiptId": "FGABgN9aW6cHPJcUkMJ2tx3JxFU9nwqT3NyFM723KjNL",
    },
    {
        "receiver": "slimedragon.near",
        "valueType": "mention",
        "initiatedBy": "nearversedao.near",
        "itemType": "social",
        "path": "nearversedao.near/post/main",
        "receiptId": "2Ca83AyY6bek6YgKpkE1L3NAHqiVVp7BdE6SjDj3sbdZ",
    },
    *(
        {
            "receiver": to,
            "valueType": "custom",
            "initiatedBy": "slimedragon.near",
            "message": DAO_MESSAGE,
            "receiptId": CUSTOM_RECEIPT,
        }
        for to in ("slimedragon.near", "bjirken.near", "mohaa.near", "dyolo.near")  # itself too: no self filter here
    ),
    {
        "receiver": "nearversedao.near",
        "valueType": "poke",
        "initiatedBy": "devgovgigs.near",
        "receiptId": "6moBvzaV2ezujLrXRnum99kteZJK7HeCgxcXfmzW1LhN",
    },
    {
        "receiver": "mohaa.near",
        "valueType": "receipt_failed",
        "initiatedBy": "mohaa.near",
        "contract": "social.near",
        "method": "set",
        "error": "FunctionCallError",
        "errorMessage": "Smart contract panicked: Not enough storage balance",
        "receiptId": "31qvkDe898kxaYRkbDKWK3mGb4KQP33ybZhpiEtGDRJg",
    },  # and not its notify to dyolo.near; bjirken.near's profile set gives nothing
]


def expected(name: str, rows: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    hashes = tx_hashes(name)
    return table([{**r, "txHash": hashes[r["receiptId"]]} for r in rows])


@pytest.mark.parametrize(
    ("name", "height", "block_hash", "rows"),
    [
        ("107503704", 107503704, "3UGi8N6uikSd9ZgoUyz8FjhZhxErjhiqQ24AGDfq4DSf", MAINNET_ROWS),
        ("testnet-185758655", 185758655, None, TESTNET_ROWS),
        ("200000000", 200000000, "2RWzveW3LbBpuLmbWhdHUgBtxTLrpRVcw5jcY4PRcheD", SOCIAL_ROWS),
    ],
)
def test_fixture_block_gives_exactly_the_readme_rows(
    name: str, height: int, block_hash: str | None, rows: list[dict[str, Any]]
) -> None:
    got = fixture_block(name)
    assert got.height == height
    if block_hash is not None:
        assert got.hash == block_hash
    out = decode_block(got, source="chain", accounts=EVERYONE)
    assert out.faults == []
    assert table(rows_of(out)) == expected(name, rows)
    assert out.max_block_height == height and out.kind == "block"
    assert_consistent(out, height)
    assert len({e.key for e in out.events}) == len(out.events)


def test_mainnet_rows_have_no_tx_hash_and_testnet_rows_have_the_files() -> None:
    mainnet = decode_block(fixture_block("107503704"), source="chain", accounts=EVERYONE)
    assert mainnet.events and all(e.row["txHash"] is None for e in mainnet.events)
    assert set(tx_hashes("107503704").values()) == {None}
    testnet = decode_block(fixture_block("testnet-185758655"), source="chain", accounts=EVERYONE)
    assert [e.row["txHash"] for e in testnet.events] == ["ACS74r29ASTCzsBEbgfUveChS16LFteQWznsdMUSrZBP"]


def test_skipped_height_parses_to_nothing_and_no_fault() -> None:
    assert parse_block(fixture_path("neardata/115001861.json").read_bytes()) == (None, None)
    assert parse_block(b"null") == (None, None)


@pytest.mark.parametrize("name", FIXTURES)
def test_block_time_comes_from_timestamp_nanosec(name: str) -> None:
    stamp = raw_fixture(name)["block"]["header"]["timestamp_nanosec"]
    got = fixture_block(name)
    assert got.time == int(stamp) / 1e9
    assert decode_block(got, source="chain", accounts=EVERYONE).max_block_time == got.time


def test_block_time_prefers_the_string_over_the_number_and_falls_back() -> None:
    raw = block(1, [], timestamp_ns=1_702_111_281_374_650_334)
    raw["block"]["header"]["timestamp"] = 1_000_000_000_000_000_000  # disagrees: the string wins
    assert parsed(raw).time == 1_702_111_281_374_650_334 / 1e9
    del raw["block"]["header"]["timestamp_nanosec"]
    assert parsed(raw).time == 1_000_000_000.0
    del raw["block"]["header"]["timestamp"]
    assert parsed(raw).time is None


@pytest.mark.parametrize("stamp", ["²", "١٢٣", "1" * 5000, "9" * 400, "", "-5", "1e9", " 12"])
def test_odd_timestamp_strings_give_no_time_and_never_raise(stamp: str) -> None:
    raw = block(1, [])
    raw["block"]["header"]["timestamp_nanosec"] = stamp
    del raw["block"]["header"]["timestamp"]
    assert parsed(raw).time is None


@pytest.mark.parametrize("stamp", ["9" * 400, "-5", "true"])
def test_odd_timestamp_numbers_never_raise(stamp: str) -> None:
    body = ('{"block":{"header":{"height":1,"timestamp":' + stamp + "}}}").encode()
    got, fault = parse_block(body)
    assert fault is None and got is not None
    assert got.time is None or got.time == int(stamp) / 1e9


# --- 2. the accounts filter -------------------------------------------------------------------


def test_accounts_filter_keeps_only_the_set_accounts_rows() -> None:
    out = decode_block(fixture_block("200000000"), source="chain", accounts={"devgovgigs.near"})
    assert out.faults == []
    assert table(rows_of(out)) == expected("200000000", [r for r in SOCIAL_ROWS if r["receiver"] == "devgovgigs.near"])
    assert [e.value_type for e in out.events] == ["like", "comment"]


@pytest.mark.parametrize("name", FIXTURES)
def test_empty_accounts_set_gives_nothing(name: str) -> None:
    out = decode_block(fixture_block(name), source="chain", accounts=set())
    assert out.events == [] and out.faults == []
    assert out.max_block_height == fixture_block(name).height


@pytest.mark.parametrize("name", FIXTURES)
def test_never_a_row_for_an_account_outside_the_set(name: str) -> None:
    everyone = decode_block(fixture_block(name), source="chain", accounts=EVERYONE).events
    receivers = sorted({e.receiver for e in everyone})
    for n in range(len(receivers)):
        chosen = set(receivers[n::2]) | {"not-in-this-block.near"}
        got = decode_block(fixture_block(name), source="chain", accounts=chosen).events
        assert all(e.receiver in chosen for e in got)
        # the same events, with the same keys, as with everyone, less the others'
        assert [(e.key, e.row) for e in got] == [(e.key, e.row) for e in everyone if e.receiver in chosen]


@pytest.mark.parametrize("name", FIXTURES)
def test_the_decoder_asks_about_the_block_accounts_only(name: str) -> None:
    # cost: one lookup per candidate row, none per subscriber (the set is never iterated)
    everyone = decode_block(fixture_block(name), source="chain", accounts=EVERYONE).events
    for size in (0, 10, 10_000):
        accounts = Recording({f"subscriber{i}.near" for i in range(size)})
        assert decode_block(fixture_block(name), source="chain", accounts=accounts).events == []
        assert accounts.lookups == len(everyone)


def test_an_event_key_does_not_depend_on_who_else_has_a_stream() -> None:
    # a neardata watcher's accounts change between blocks; two watchers (final and optimistic, or
    # two replicas) can decode the same block with different sets and must still push once
    log = event_log(
        "nep141",
        "ft_transfer",
        [
            {"old_owner_id": "alice.near", "new_owner_id": "carol.near", "amount": "1"},
            {"old_owner_id": "alice.near", "new_owner_id": "bob.near", "amount": "2"},
        ],
    )
    raw = block(5, [receipt("R1", "alice.near", "tok.near", [], logs=[log])])
    both = decode(raw, accounts={"bob.near", "carol.near"})
    bob_only = decode(raw, accounts={"bob.near"})
    [bob] = [e for e in both.events if e.receiver == "bob.near"]
    assert [(e.key, e.row) for e in bob_only.events] == [(bob.key, bob.row)]


# --- 3. social rows are those of the near-actions source, key included ----------------------------


def actions_frame(raw: Any) -> str:
    """The near-actions stream frame for every social.near FunctionCall of a block (the
    ``set_call`` shape of tests/test_watchers.py), status as the chain says."""
    height = raw["block"]["header"]["height"]
    actions = []
    for o in outcomes(raw):
        r = o["receipt"]
        if r["receiver_id"] != "social.near":
            continue
        success = any(k in o["execution_outcome"]["outcome"]["status"] for k in ("SuccessValue", "SuccessReceiptId"))
        for index, action in enumerate(r["receipt"]["Action"]["actions"]):
            actions.append(
                {
                    "blockHeight": height,
                    "blockHash": raw["block"]["header"]["hash"],
                    "blockTimestampMs": int(raw["block"]["header"]["timestamp_nanosec"]) // 1_000_000,
                    "shardId": 4,
                    "txHash": o.get("tx_hash"),
                    "receiptId": r["receipt_id"],
                    "signerId": r["receipt"]["Action"]["signer_id"],
                    "signerPublicKey": "ed25519:x",
                    "accountId": "social.near",
                    "predecessorId": r["predecessor_id"],
                    "status": "SUCCESS" if success else "FAILURE",
                    "actionIndex": index,
                    "action": action,
                }
            )
    return json.dumps({"actions": actions})


def social_events(out: Decoded) -> list[tuple[str, dict[str, Any]]]:
    return sorted(((e.key, e.row) for e in out.events if e.value_type != "receipt_failed"), key=repr)


def test_social_rows_and_keys_are_those_of_the_actions_stream_for_the_fixture() -> None:
    raw = raw_fixture("200000000")
    chain = decode(raw)
    actions = decode_actions_frame(actions_frame(raw), source="chain")
    assert actions.faults == [] and len(actions.events) == 9
    assert social_events(chain) == social_events(actions)


def set_args(signer: str, notify: Any) -> dict[str, Any]:
    args = {"data": {signer: {"index": {"notify": json.dumps(notify)}}}}
    return {"FunctionCall": {"method_name": "set", "args": b64(args), "gas": 1, "deposit": "0"}}


def test_a_constructed_set_call_gives_the_actions_stream_row_and_key() -> None:
    notify = [
        {"key": "bob.near", "value": {"type": "like", "item": {"type": "social", "path": "bob.near/post/main"}}},
        {"key": "frank.near", "value": {"type": "mention", "item": {"type": "social", "path": "a.near/post/main"}}},
    ]
    raw = block(
        130000001,
        [receipt("R1", "alice.near", "social.near", [{"Transfer": {"deposit": "0"}}, set_args("alice.near", notify)])],
    )
    raw["shards"][0]["receipt_execution_outcomes"][0]["tx_hash"] = "t"
    chain = decode(raw)
    actions = decode_actions_frame(actions_frame(raw), source="chain")
    assert chain.faults == [] and actions.faults == []
    assert [e.row["id"] for e in chain.events] == ["R1:1:0", "R1:1:1"]  # the action index, as the stream says
    assert social_events(chain) == social_events(actions)
    assert [e.receiver for e in chain.events] == ["bob.near", "frank.near"]


def test_social_rows_follow_the_configured_contract_and_method() -> None:
    notify = {"key": "bob.near", "value": {"type": "poke"}}
    raw = block(
        7,
        [
            receipt("R1", "alice.near", "social.near", [set_args("alice.near", notify)]),
            receipt("R2", "alice.near", "v2.social.near", [set_args("alice.near", notify)]),
            receipt(
                "R3",
                "alice.near",
                "v2.social.near",
                [{"FunctionCall": {**set_args("alice.near", notify)["FunctionCall"], "method_name": "get"}}],
            ),
        ],
    )
    assert [e.row["receiptId"] for e in decode(raw).events] == ["R1"]
    assert [e.row["receiptId"] for e in decode(raw, social_contract="v2.social.near").events] == ["R2"]


def test_bad_social_args_are_a_bad_args_fault() -> None:
    bad = {"FunctionCall": {"method_name": "set", "args": "!!not base64", "gas": 1, "deposit": "0"}}
    raw = block(
        7,
        [
            receipt("R1", "alice.near", "social.near", [bad]),
            receipt("R2", "alice.near", "bob.near", [{"Transfer": {"deposit": "3"}}]),
        ],
    )
    out = decode(raw)
    assert [f.kind for f in out.faults] == ["bad_args"]
    assert [e.value_type for e in out.events] == ["near_transfer"]


# --- 4. constructed blocks ------------------------------------------------------------------------


def test_nft_transfer_and_mint_rows() -> None:
    logs = [
        event_log(
            "nep171",
            "nft_transfer",
            [{"old_owner_id": "alice.near", "new_owner_id": "bob.near", "token_ids": ["1", "2"], "memo": "gift"}],
        ),
        event_log("nep171", "nft_mint", [{"owner_id": "carol.near", "token_ids": ["7"]}]),
    ]
    out = decode(block(9, [receipt("R1", "minter.near", "nft.near", [], logs=logs)]))
    assert out.faults == []
    transfer, mint = out.events
    assert (transfer.receiver, transfer.value_type) == ("bob.near", "nft_transfer")
    assert transfer.row["initiatedBy"] == "alice.near" and transfer.row["tokenIds"] == ["1", "2"]
    assert transfer.row["token"] == "nft.near" and transfer.row["memo"] == "gift"
    assert (mint.receiver, mint.value_type, mint.row["initiatedBy"]) == ("carol.near", "nft_mint", "minter.near")
    assert mint.row["tokenIds"] == ["7"] and mint.row["token"] == "nft.near"
    assert_consistent(out, 9)


def test_token_is_the_executor_of_the_receipt() -> None:
    log = event_log("nep141", "ft_mint", [{"owner_id": "bob.near", "amount": "1"}])
    r = receipt("R1", "alice.near", "tok.near", [], logs=[log])
    assert only(decode(block(1, [r])))["token"] == "tok.near"


def test_ft_mint_and_burn_rows() -> None:
    logs = [
        event_log("nep141", "ft_mint", [{"owner_id": "bob.near", "amount": "100", "memo": "m"}]),
        event_log("nep141", "ft_burn", [{"owner_id": "carol.near", "amount": "5"}]),
    ]
    out = decode(block(3, [receipt("R1", "minter.near", "tok.near", [], logs=logs)]))
    assert out.faults == []
    assert [(e.receiver, e.value_type, e.row["amount"], e.row["token"], e.row["initiatedBy"]) for e in out.events] == [
        ("bob.near", "ft_mint", "100", "tok.near", "minter.near"),
        ("carol.near", "ft_burn", "5", "tok.near", "minter.near"),
    ]
    assert out.events[0].row["memo"] == "m"


@pytest.mark.parametrize("amount", ["-1", "1.5", "1e3", "", "1" * 40, str(2**128), "5\n", 5, 2**63, None])
def test_an_ft_amount_that_is_not_a_u128_string_is_a_bad_event(amount: Any) -> None:
    log = event_log("nep141", "ft_transfer", [{"old_owner_id": "a.near", "new_owner_id": "b.near", "amount": amount}])
    out = decode(block(1, [receipt("R1", "a.near", "tok.near", [], logs=[log])]))
    assert out.events == [] and [f.kind for f in out.faults] == ["bad_event"]


def test_a_failed_batch_gives_only_one_receipt_failed_row_to_its_signer() -> None:
    actions = [
        {"AddKey": {"public_key": "ed25519:K", "access_key": {"nonce": 0, "permission": "FullAccess"}}},
        {"Transfer": {"deposit": "5"}},
        {"FunctionCall": {"method_name": "do_it", "args": "", "gas": 1, "deposit": "0"}},
    ]
    status = {
        "Failure": {
            "ActionError": {
                "index": 2,
                "kind": {"FunctionCallError": {"ExecutionError": "Smart contract panicked: nope"}},
            }
        }
    }
    log = event_log("nep141", "ft_transfer", [{"old_owner_id": "x.near", "new_owner_id": "bob.near", "amount": "1"}])
    r = receipt("R1", "pred.near", "contract.near", actions, signer="signer.near", logs=[log], status=status)
    row = only(decode(block(4, [r])))
    assert (row["receiver"], row["valueType"], row["initiatedBy"]) == ("signer.near", "receipt_failed", "pred.near")
    assert (row["contract"], row["method"], row["error"], row["errorMessage"]) == (
        "contract.near",
        "do_it",
        "FunctionCallError",
        "Smart contract panicked: nope",
    )
    assert row["receiptId"] == "R1" and row["txHash"] == "TX"
    # the signer learns it failed only if it has a stream
    assert decode(block(4, [r]), accounts={"pred.near", "contract.near", "bob.near"}).events == []


def test_a_failure_at_a_non_call_action_or_with_a_bare_kind_has_no_method_or_message() -> None:
    actions = [{"FunctionCall": {"method_name": "a"}}, {"Transfer": {"deposit": "1"}}]
    at_transfer = {"Failure": {"ActionError": {"index": 1, "kind": {"LackBalanceForState": {"account_id": "c.near"}}}}}
    row = only(decode(block(1, [receipt("R1", "a.near", "c.near", actions, status=at_transfer)])))
    assert (row["method"], row["error"], row["errorMessage"]) == (None, "LackBalanceForState", "c.near")
    expired = {"Failure": {"ActionError": {"index": 0, "kind": "DelegateActionExpired"}}}
    row = only(decode(block(1, [receipt("R1", "a.near", "c.near", [{"Delegate": {}}], status=expired)])))
    assert (row["method"], row["error"], row["errorMessage"]) == (None, "DelegateActionExpired", None)
    tx_error = {"Failure": {"InvalidTxError": {"InvalidNonce": {"tx_nonce": 1, "ak_nonce": 2}}}}
    one_call = [{"FunctionCall": {"method_name": "only"}}]
    row = only(decode(block(1, [receipt("R1", "a.near", "c.near", one_call, status=tx_error)])))
    assert (row["method"], row["error"]) == ("only", "InvalidTxError")


def test_a_failed_system_receipt_gives_nothing() -> None:
    status = {"Failure": {"ActionError": {"index": 0, "kind": "Whatever"}}}
    out = decode(block(1, [receipt("R1", "system", "bob.near", [{"Transfer": {"deposit": "1"}}], status=status)]))
    assert out.events == [] and out.faults == []


def test_a_transfer_from_system_is_a_refund_and_gives_nothing() -> None:
    out = decode(block(1, [receipt("R1", "system", "bob.near", [{"Transfer": {"deposit": "12345"}}])]))
    assert out.events == [] and out.faults == []


def test_a_zero_transfer_gives_nothing() -> None:
    out = decode(block(1, [receipt("R1", "alice.near", "bob.near", [{"Transfer": {"deposit": "0"}}])]))
    assert out.events == [] and out.faults == []


def test_a_delegate_outer_receipt_gives_nothing_and_its_inner_receipt_a_transfer() -> None:
    delegate = {
        "Delegate": {
            "delegate_action": {
                "sender_id": "sender.near",
                "receiver_id": "bob.near",
                "actions": [{"Transfer": {"deposit": "7"}}],
                "nonce": 1,
                "max_block_height": 100,
                "public_key": "ed25519:K",
            },
            "signature": "ed25519:S",
        }
    }
    outer = receipt("R1", "relayer.near", "sender.near", [delegate], signer="relayer.near")
    inner = receipt("R2", "sender.near", "bob.near", [{"Transfer": {"deposit": "7"}}], signer="relayer.near")
    assert decode(block(1, [outer])).events == [] and decode(block(1, [outer])).faults == []
    row = only(decode(block(1, [outer, inner])))
    assert (row["receiver"], row["valueType"], row["initiatedBy"], row["amount"], row["receiptId"]) == (
        "bob.near",
        "near_transfer",
        "sender.near",
        "7",
        "R2",
    )


def test_add_key_with_a_function_call_permission_names_the_contract() -> None:
    permission = {"FunctionCall": {"allowance": None, "receiver_id": "app.near", "method_names": []}}
    action = {"AddKey": {"public_key": "ed25519:K", "access_key": {"nonce": 0, "permission": permission}}}
    row = only(decode(block(1, [receipt("R1", "alice.near", "alice.near", [action])])))
    assert (row["receiver"], row["valueType"], row["publicKey"], row["permission"]) == (
        "alice.near",
        "add_key",
        "ed25519:K",
        "app.near",
    )


def test_add_key_with_a_full_access_gas_key_is_full_access() -> None:
    permission = {"GasKeyFullAccess": {"balance": "1", "num_nonces": 4}}
    action = {"AddKey": {"public_key": "ed25519:K", "access_key": {"nonce": 0, "permission": permission}}}
    assert only(decode(block(1, [receipt("R1", "a.near", "a.near", [action])])))["permission"] == "FullAccess"


def test_delete_key_row() -> None:
    action = {"DeleteKey": {"public_key": "ed25519:K"}}
    row = only(decode(block(1, [receipt("R1", "alice.near", "alice.near", [action])])))
    assert (row["receiver"], row["valueType"], row["initiatedBy"], row["publicKey"]) == (
        "alice.near",
        "delete_key",
        "alice.near",
        "ed25519:K",
    )


@pytest.mark.parametrize("create", ["CreateAccount", {"CreateAccount": {}}])
def test_create_account_bare_or_tagged_is_tolerated(create: Any) -> None:
    actions = [create, {"Transfer": {"deposit": "9"}}]
    row = only(decode(block(1, [receipt("R1", "parent.near", "new.parent.near", actions)])))
    assert (row["receiver"], row["valueType"], row["amount"]) == ("new.parent.near", "near_transfer", "9")


def test_unknown_variants_are_counted_faults_and_do_not_stop_the_block() -> None:
    transfer = {"Transfer": {"deposit": "1"}}
    unknown_receipt = receipt("R2", "a.near", "bob.near", [transfer])
    unknown_receipt["receipt"]["receipt"] = {"FutureReceipt": {"x": 1}}
    raw = block(
        1,
        [
            receipt("R1", "a.near", "bob.near", [{"FutureAction": {}}, transfer]),  # the rest of the batch still counts
            unknown_receipt,
            receipt("R3", "a.near", "bob.near", [transfer], status={"Pending": None}),
            receipt("R4", "a.near", "bob.near", [transfer], status="Unknown"),
            receipt("R5", "a.near", "bob.near", [transfer]),
        ],
    )
    out = decode(raw)
    assert sorted(f.kind for f in out.faults) == [
        "unknown_action",
        "unknown_receipt",
        "unknown_status",
        "unknown_status",
    ]
    assert [e.row["receiptId"] for e in out.events] == ["R1", "R5"]


@pytest.mark.parametrize("deposit", [str(2**128), "1" * 40, "-1", "1e3", 2**63, 5, None])
def test_a_transfer_whose_deposit_is_not_a_u128_string_is_a_bad_action(deposit: Any) -> None:
    out = decode(block(1, [receipt("R1", "a.near", "bob.near", [{"Transfer": {"deposit": deposit}}])]))
    assert out.events == [] and [f.kind for f in out.faults] == ["bad_action"]


def test_the_largest_u128_deposit_is_a_transfer() -> None:
    largest = str(2**128 - 1)
    row = only(decode(block(1, [receipt("R1", "a.near", "bob.near", [{"Transfer": {"deposit": largest}}])])))
    assert row["amount"] == largest


def test_an_action_that_is_not_one_is_a_bad_action_and_the_rest_of_its_receipt_counts() -> None:
    log = event_log("nep141", "ft_transfer", [{"old_owner_id": "x.near", "new_owner_id": "bob.near", "amount": "1"}])
    r = receipt("R1", "a.near", "bob.near", [42, {"Transfer": {"deposit": "1"}}, [1, 2]], logs=[log])
    out = decode(block(1, [r]))
    assert [f.kind for f in out.faults] == ["bad_action", "bad_action"]
    assert sorted(e.value_type for e in out.events) == ["ft_transfer", "near_transfer"]


def test_a_receipt_outcome_or_shard_not_of_its_shape_is_a_fault_and_the_rest_of_the_block_is_read() -> None:
    good = receipt("R1", "a.near", "bob.near", [{"Transfer": {"deposit": "1"}}])
    broken_outcome = receipt("R2", "a.near", "bob.near", [{"Transfer": {"deposit": "1"}}])
    broken_outcome["execution_outcome"] = "not an outcome"
    raw = block(1, [42, good, "not a row", broken_outcome])
    raw["shards"] += [42, {"shard_id": 2, "receipt_execution_outcomes": {"not": "a list"}}]
    raw["shards"].append(
        {
            "shard_id": 3,
            "receipt_execution_outcomes": [receipt("R3", "a.near", "bob.near", [{"Transfer": {"deposit": "2"}}])],
        }
    )
    out = decode(raw)
    assert [f.kind for f in out.faults] == ["bad_receipt", "bad_receipt", "bad_receipt", "bad_shard", "bad_shard"]
    assert [e.row["receiptId"] for e in out.events] == ["R1", "R3"]


@pytest.mark.parametrize(
    "body",
    [b'{"block": {"header": {"height": "1"}}}', b'{"block": {"header": {"height": 1}}, "shards": 5}', b"[]"],
)
def test_a_block_whose_header_or_shards_are_not_of_their_shape_is_a_bad_block(body: bytes) -> None:
    got, fault = parse_block(body)
    assert got is None and fault is not None and fault.kind == "bad_block"


def test_a_receipt_that_does_not_decode_is_a_bad_receipt_and_the_next_one_counts() -> None:
    broken = receipt("R1", "a.near", "bob.near", [{"Transfer": {"deposit": "1"}}])
    del broken["receipt"]["predecessor_id"]
    out = decode(block(1, [broken, receipt("R2", "a.near", "bob.near", [{"Transfer": {"deposit": "1"}}])]))
    assert [f.kind for f in out.faults] == ["bad_receipt"]
    assert [e.row["receiptId"] for e in out.events] == ["R2"]


def test_a_configured_event_gives_rows_of_its_type() -> None:
    entries = [
        {"old_owner_id": "alice.near", "new_owner_id": "bob.near", "token_ids": ["nep141:usdc"], "amounts": ["5"]},
        {"old_owner_id": "alice.near", "new_owner_id": "carol.near", "token_ids": ["nep141:usdt"], "amounts": ["6"]},
    ]
    logs = [event_log("nep245", "mt_transfer", entries)]
    out = decode(block(2, [receipt("R1", "solver.near", "intents.near", [], logs=logs)]), events=[MT_TRANSFER])
    assert out.faults == []
    assert [(e.receiver, e.value_type, e.row["initiatedBy"]) for e in out.events] == [
        ("bob.near", "mt_transfer", "alice.near"),
        ("carol.near", "mt_transfer", "alice.near"),
    ]
    first = out.events[0].row
    assert (first["token"], first["standard"], first["event"], first["data"]) == (
        "intents.near",
        "nep245",
        "mt_transfer",
        entries[0],
    )
    assert len({e.key for e in out.events}) == 2
    assert (
        decode(block(2, [receipt("R1", "solver.near", "intents.near", [], logs=logs)])).events == []
    )  # not configured


def test_a_configured_event_with_its_own_type_and_no_initiator_field() -> None:
    rule = ChainEventSettings(standard="nep245", event="mt_mint", receiver_field="owner_id", value_type="intent_mint")
    logs = [event_log("nep245", "mt_mint", [{"owner_id": "bob.near", "token_ids": ["a"], "amounts": ["1"]}])]
    out = decode(block(2, [receipt("R1", "solver.near", "intents.near", [], logs=logs)]), events=[rule])
    row = only(out)
    assert (row["valueType"], row["receiver"], row["initiatedBy"]) == ("intent_mint", "bob.near", "solver.near")


def test_a_configured_contract_restricts_the_emitter() -> None:
    rule = MT_TRANSFER.model_copy(update={"contract": "intents.near"})
    entry = {"old_owner_id": "alice.near", "new_owner_id": "bob.near", "token_ids": ["t"], "amounts": ["1"]}
    logs = [event_log("nep245", "mt_transfer", [entry])]
    raw = block(
        2,
        [
            receipt("R1", "solver.near", "fake-intents.near", [], logs=logs),
            receipt("R2", "solver.near", "intents.near", [], logs=logs),
        ],
    )
    out = decode(raw, events=[rule])
    assert [(e.row["receiptId"], e.row["token"]) for e in out.events] == [("R2", "intents.near")]


def test_a_configured_event_with_big_data_keeps_the_row_without_it() -> None:
    entry = {"old_owner_id": "alice.near", "new_owner_id": "bob.near", "token_ids": ["t" * 3000], "amounts": ["1"]}
    out = decode(
        block(2, [receipt("R1", "s.near", "intents.near", [], logs=[event_log("nep245", "mt_transfer", [entry])])]),
        events=[MT_TRANSFER],
    )
    row = only(out)
    assert row["receiver"] == "bob.near" and "data" not in row


@pytest.mark.parametrize(
    "line",
    [
        "EVENT_JSON:{not json",
        "EVENT_JSON:[1, 2]",
        'EVENT_JSON:"nep141"',
        'EVENT_JSON:{"standard":"nep141","event":"ft_transfer","data":[{"amount":NaN}]}',
    ],
)
def test_malformed_event_json_is_a_bad_event_and_the_next_log_counts(line: str) -> None:
    good = event_log("nep141", "ft_transfer", [{"old_owner_id": "a.near", "new_owner_id": "b.near", "amount": "1"}])
    logs = [line, "Transfer 1604:4 from a to b", good]  # the plain line is not an event, nor a fault
    out = decode(block(1, [receipt("R1", "a.near", "tok.near", [], logs=logs)]))
    assert [f.kind for f in out.faults] == ["bad_event"]
    assert [e.value_type for e in out.events] == ["ft_transfer"]


def test_an_event_entry_without_a_receiver_account_is_a_bad_row() -> None:
    log = event_log("nep141", "ft_mint", [{"owner_id": 5, "amount": "1"}, {"owner_id": "b.near", "amount": "1"}])
    out = decode(block(1, [receipt("R1", "a.near", "tok.near", [], logs=[log])]))
    assert [f.kind for f in out.faults] == ["bad_row"]
    assert [e.receiver for e in out.events] == ["b.near"]


def test_events_of_a_successful_receipt_with_a_single_data_object() -> None:
    line = "EVENT_JSON:" + json.dumps(
        {"standard": "nep141", "version": "1.0.0", "event": "ft_mint", "data": {"owner_id": "b.near", "amount": "1"}}
    )
    assert only(decode(block(1, [receipt("R1", "a.near", "tok.near", [], logs=[line])])))["receiver"] == "b.near"


def test_a_data_receipt_is_quietly_skipped() -> None:
    data = receipt("R1", "a.near", "bob.near", [])
    data["receipt"]["receipt"] = {"Data": {"data_id": "D", "data": None, "is_promise_resume": False}}
    global_contract = receipt("R2", "a.near", "bob.near", [])
    global_contract["receipt"]["receipt"] = {"GlobalContractDistribution": {"id": "x"}}
    out = decode(block(1, [data, global_contract]))
    assert out.events == [] and out.faults == []


def test_two_identical_ft_transfers_in_one_receipt_are_two_events() -> None:
    log = event_log("nep141", "ft_transfer", [{"old_owner_id": "a.near", "new_owner_id": "b.near", "amount": "1"}])
    out = decode(block(1, [receipt("R1", "a.near", "tok.near", [], logs=[log, log])]))
    assert out.faults == [] and len(out.events) == 2
    assert len({e.key for e in out.events}) == 2
    assert [e.row["id"] for e in out.events] == ["R1:ft_transfer:0", "R1:ft_transfer:1"]
    entry = {"old_owner_id": "a.near", "new_owner_id": "b.near", "amount": "1"}
    two = decode(
        block(1, [receipt("R1", "a.near", "tok.near", [], logs=[event_log("nep141", "ft_transfer", [entry] * 2)])])
    )
    assert len({e.key for e in two.events}) == 2


def test_the_same_block_decoded_twice_gives_the_same_keys() -> None:
    raw = raw_fixture("107503704")
    assert [e.key for e in decode(raw).events] == [e.key for e in decode(copy.deepcopy(raw)).events]


@pytest.mark.parametrize("drop", [False, True])
def test_a_null_or_missing_tx_hash_gives_tx_hash_none(drop: bool) -> None:
    r = receipt("R1", "a.near", "bob.near", [{"Transfer": {"deposit": "1"}}], tx_hash=None)
    if drop:
        del r["tx_hash"]
    assert only(decode(block(1, [r])))["txHash"] is None


def test_the_receipt_id_falls_back_to_the_outcome_id() -> None:
    r = receipt("R1", "a.near", "bob.near", [{"Transfer": {"deposit": "1"}}])
    del r["receipt"]["receipt_id"]
    assert only(decode(block(1, [r])))["receiptId"] == "R1"


# --- nesting deeper than Python's parser goes: a fault, never an exception -----------------------

DEEP = "[" * 5000 + "]" * 5000  # within the 16 KB log cap a contract has


def test_a_deeply_nested_event_json_is_a_bad_event() -> None:
    # any contract can log this: it must not stop the watcher at this block forever
    good = receipt("R2", "a.near", "bob.near", [{"Transfer": {"deposit": "1"}}])
    out = decode(block(1, [receipt("R1", "a.near", "tok.near", [], logs=["EVENT_JSON:" + DEEP]), good]))
    assert [f.kind for f in out.faults] == ["bad_event"]
    assert [e.row["receiptId"] for e in out.events] == ["R2"]


def test_a_deeply_nested_social_notify_is_a_fault_in_both_decoders() -> None:
    # Read without recursion (gateway/deepjson.py): an array of arrays, not notify entries.
    args = {"data": {"alice.near": {"index": {"notify": DEEP}}}}  # a valid set: notify is just a string
    call = {"FunctionCall": {"method_name": "set", "args": b64(args), "gas": 1, "deposit": "0"}}
    raw = block(1, [receipt("R1", "alice.near", "social.near", [call])])
    assert [f.kind for f in decode(raw).faults] == ["bad_notify"]
    actions = decode_actions_frame(actions_frame(raw), source="chain")
    assert actions.events == [] and [f.kind for f in actions.faults] == ["bad_notify"]
    assert decode_actions_frame(DEEP, source="chain").faults[0].kind == "bad_frame"


def test_a_deeply_nested_block_body_is_a_fault() -> None:
    body = b'{"block":{"header":{"height":1}},"shards":[{"receipt_execution_outcomes":[{"receipt":' + DEEP.encode()
    got, fault = parse_block(body + b"}]}]}")
    assert got is None and fault is not None


# --- 5. properties --------------------------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=10), children, max_size=5),
    max_leaves=30,
)
POOL = ["alice.near", "bob.near", "social.near", "tok.near", "system", "x", "a" * 70]  # the last two: not valid ids
accounts = st.sampled_from(POOL)
maybe = st.one_of(accounts, accounts, json_values)  # a field that is usually an account id


@st.composite
def block_shaped(draw: st.DrawFn) -> dict[str, Any]:
    header = draw(
        st.fixed_dictionaries(
            {"height": st.integers(-(2**70), 2**70) | json_values},
            optional={"hash": json_values, "timestamp_nanosec": st.text() | json_values, "timestamp": json_values},
        )
    )
    shards = draw(json_values | st.lists(st.dictionaries(st.sampled_from(["receipt_execution_outcomes"]), json_values)))
    return {"block": {"header": header}, "shards": shards}


@SETTINGS
@given(st.binary(max_size=300))
def test_parse_block_never_raises_on_arbitrary_bytes(body: bytes) -> None:
    got, fault = parse_block(body)
    assert got is None or fault is None


@SETTINGS
@given(json_values | block_shaped())
def test_parse_block_never_raises_on_arbitrary_json(value: Any) -> None:
    got, fault = parse_block(json.dumps(value).encode())
    assert got is None or fault is None
    if value is None:
        assert (got, fault) == (None, None)
    if got is not None:
        assert got.time is None or isinstance(got.time, float)


def entry_strategy() -> st.SearchStrategy[dict[str, Any]]:
    """A NEP-297 `data` entry: usually of the shape the standards give, sometimes anything."""
    shaped = st.fixed_dictionaries(
        {
            "old_owner_id": maybe,
            "new_owner_id": maybe,
            "owner_id": maybe,
            "amount": st.sampled_from(["1", "0", "340282366920938463463374607431768211455"]),
            "token_ids": st.lists(st.text(max_size=3), max_size=3),
        },
        optional={"memo": json_values, "amounts": json_values},
    )
    loose = st.fixed_dictionaries(
        {},
        optional={
            "old_owner_id": maybe,
            "new_owner_id": maybe,
            "owner_id": maybe,
            "amount": st.sampled_from(["1", "x"]) | json_values,
            "token_ids": st.lists(st.text(max_size=3)) | json_values,
            "memo": json_values,
        },
    )
    return st.one_of(shaped, shaped, loose)


def event_line(standard: str, event: str, data: Any) -> str:
    return "EVENT_JSON:" + json.dumps({"standard": standard, "version": "1.0.0", "event": event, "data": data})


log_lines = st.one_of(
    st.text(max_size=20),
    st.text(max_size=20).map(lambda t: "EVENT_JSON:" + t),
    st.builds(
        event_line,
        st.sampled_from(["nep141", "nep171", "nep245", "x"]),
        st.sampled_from(["ft_transfer", "ft_mint", "ft_burn", "nft_transfer", "nft_mint", "mt_transfer"]),
        st.one_of(st.lists(entry_strategy(), max_size=3), st.lists(entry_strategy(), max_size=3), entry_strategy())
        | json_values,
    ),
)
notify_value = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["like", "mention", "poke", "custom"])},
        optional={
            "item": st.fixed_dictionaries(
                {"type": st.just("social"), "path": st.text(max_size=8)}, optional={"blockHeight": st.integers()}
            )
            | json_values,
            "message": st.text(max_size=8) | json_values,
        },
    ),
    st.fixed_dictionaries({"type": json_values}),
    json_values,
)
notify_entry = st.fixed_dictionaries({"key": maybe, "value": notify_value})
notify_text = st.one_of(
    st.builds(json.dumps, notify_entry),
    st.builds(json.dumps, st.lists(notify_entry, max_size=4)),
    st.builds(json.dumps, json_values),
    st.text(max_size=10),
)
set_args_b64 = st.builds(
    lambda signer, notify: b64({"data": {signer: {"index": {"notify": notify}}}}),
    accounts | st.text(max_size=12),
    notify_text,
) | st.builds(b64, json_values)


def tagged(name: str, body: Any) -> dict[str, Any]:
    return {name: body}


permission = st.one_of(
    st.just("FullAccess"),
    st.builds(tagged, st.just("FunctionCall"), st.fixed_dictionaries({"receiver_id": maybe})),
    st.builds(tagged, st.sampled_from(["FunctionCall", "GasKeyFullAccess", "Future"]), json_values),
    json_values,
)
# Each variant mostly in its own shape, sometimes with any body.
action_bodies = {
    "Transfer": st.fixed_dictionaries({"deposit": st.sampled_from(["1", "0", "10"])}) | json_values,
    "AddKey": st.fixed_dictionaries(
        {
            "public_key": st.text(max_size=8),
            "access_key": st.fixed_dictionaries({"nonce": st.integers(0), "permission": permission}),
        }
    )
    | json_values,
    "DeleteKey": st.fixed_dictionaries({"public_key": st.text(max_size=8) | json_values}) | json_values,
    "FunctionCall": st.fixed_dictionaries(
        {"method_name": st.sampled_from(["set", "set", "other"]) | json_values, "args": set_args_b64}
    )
    | json_values,
    "Delegate": json_values,
    "FutureAction": json_values,
}
actions = st.one_of(
    *(st.builds(tagged, st.just(name), body) for name, body in action_bodies.items()),
    st.just("CreateAccount"),
    json_values,
)
statuses = st.one_of(
    st.just({"SuccessValue": ""}),
    st.just({"SuccessReceiptId": "X"}),
    st.just({"SuccessValue": ""}),
    st.sampled_from(["Unknown", {"Pending": None}]),
    st.builds(tagged, st.sampled_from(["SuccessValue", "SuccessReceiptId", "Failure"]), json_values),
    st.fixed_dictionaries(
        {
            "Failure": st.fixed_dictionaries(
                {"ActionError": st.fixed_dictionaries({}, optional={"index": st.integers(-1, 4), "kind": json_values})}
            )
        }
    ),
    json_values,
)
# Where a receipt outcome holds a value of any shape (msgspec ``Any``): arbitrary JSON is put there.
OVERRIDES = [
    ("receipt",),
    ("receipt", "receipt"),
    ("receipt", "receipt", "Action"),
    ("receipt", "receipt", "Action", "actions"),
    ("receipt", "receipt", "Action", "signer_id"),
    ("receipt", "predecessor_id"),
    ("receipt", "receiver_id"),
    ("receipt", "receipt_id"),
    ("execution_outcome", "id"),
    ("execution_outcome", "outcome", "executor_id"),
    ("execution_outcome", "outcome", "logs"),
    ("execution_outcome", "outcome", "status"),
    ("tx_hash",),
]


def put(target: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    for part in path[:-1]:
        nxt = target.get(part)
        if not isinstance(nxt, dict):
            return  # an earlier override replaced this part
        target = nxt
    target[path[-1]] = value


@st.composite
def receipt_outcomes(draw: st.DrawFn) -> dict[str, Any]:
    made = receipt(
        draw(st.text(max_size=4)),
        draw(accounts),
        draw(accounts | st.just("social.near")),  # social.near more often: its set calls carry notify
        draw(st.lists(actions, max_size=4)),
        signer=draw(st.none() | accounts),
        logs=draw(st.lists(log_lines, max_size=4)),
        status=draw(statuses),
        tx_hash=draw(st.none() | st.text(max_size=4)),
    )
    for path, value in draw(st.lists(st.tuples(st.sampled_from(OVERRIDES), json_values), max_size=1)):
        put(made, path, value)
    return made


@st.composite
def blocks(draw: st.DrawFn) -> dict[str, Any]:
    made = block(draw(st.integers(0, 2**63)), draw(st.lists(receipt_outcomes(), max_size=4)), timestamp_ns=1)
    if draw(st.booleans()):  # a second shard
        made["shards"].append(
            {"shard_id": 1, "receipt_execution_outcomes": draw(st.lists(receipt_outcomes(), max_size=2))}
        )
    return made


def keyed(events: list[Event]) -> list[tuple[str, dict[str, Any]]]:
    return [(e.key, e.row) for e in events]


@SETTINGS
@given(blocks(), st.sets(accounts))
def test_decode_block_never_raises_and_only_reaches_the_set(raw: dict[str, Any], chosen: set[str]) -> None:
    got = parsed(raw)
    out = decode_block(got, source="chain", accounts=chosen, events=[MT_TRANSFER])
    assert all(e.receiver in chosen for e in out.events)
    assert_consistent(out, got.height)
    assert out.max_block_height == got.height
    # the set only filters: the same events (same keys, same rows) as with everyone, less the others'
    everyone = decode_block(got, source="chain", accounts=EVERYONE, events=[MT_TRANSFER])
    assert_consistent(everyone, got.height)
    assert keyed(out.events) == keyed([e for e in everyone.events if e.receiver in chosen])


@SETTINGS
@given(blocks())
def test_decode_block_never_raises_with_no_accounts(raw: dict[str, Any]) -> None:
    out = decode_block(parsed(raw), source="chain", accounts=frozenset(), events=[MT_TRANSFER])
    assert out.events == []


@SETTINGS
@given(st.lists(st.text(max_size=8), max_size=3), st.text(max_size=12))
def test_actions_and_chain_agree_on_any_notify_text(texts: list[str], signer: str) -> None:
    # whatever the notify says, the two NEAR decoders give the same social events
    notify = texts[0] if len(texts) == 1 else json.dumps([{"key": t, "value": {"type": "like"}} for t in texts])
    args = base64.b64encode(json.dumps({"data": {signer: {"index": {"notify": notify}}}}).encode()).decode()
    call = {"FunctionCall": {"method_name": "set", "args": args, "gas": 1, "deposit": "0"}}
    raw = block(10, [receipt("R1", "alice.near", "social.near", [call])])
    chain = decode(raw)
    actions = decode_actions_frame(actions_frame(raw), source="chain")
    assert keyed(chain.events) == keyed(actions.events)
