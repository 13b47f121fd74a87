"""Operator commands of the ``gateway`` CLI. They talk to the database directly (the same store the
running gateway uses), so they work with the gateway up or down, on SQLite or PostgreSQL."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from gateway.config import load_settings
from gateway.exceptions import ConfigError
from gateway.operations import dead_letter_view, send_test, stream_view
from gateway.replay import ReplayProgress, progress_bar, replay
from gateway.store import open_store
from gateway.store.base import Store
from gateway.webpush import VapidSigner, read_key_file

T = TypeVar("T")


def _with_store(args: argparse.Namespace, job: Callable[[Store], Awaitable[T]]) -> T:
    settings = load_settings(args.config)

    async def run() -> T:
        store = open_store(settings.storage.url, **settings.storage.open_options())
        await store.open()
        try:
            return await job(store)
        finally:
            await store.close()

    return anyio.run(run)


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) if ts else "-"


def _print(rows: list[dict[str, Any]], as_json: bool, columns: list[str]) -> None:
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    if not rows:
        print("(none)")
        return
    table = [columns] + [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(value.ljust(width) for value, width in zip(line, widths, strict=True)).rstrip())


def _cell(value: Any) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value)) or "-"
    if isinstance(value, float):
        return _when(value)
    return "-" if value is None else str(value)


def _selector(args: argparse.Namespace, *, required: bool) -> dict[str, str | None]:
    account, ehash = getattr(args, "account", None), getattr(args, "endpoint_hash", None)
    if required and (account is None) == (ehash is None):
        raise ConfigError("give exactly one of --account or --endpoint-hash")
    return {"account_id": account, "endpoint_hash": ehash}


# --- streams -------------------------------------------------------------------------------


def streams(args: argparse.Namespace) -> int:
    selector = _selector(args, required=args.action != "list")
    if args.action == "delete":
        deleted = _with_store(args, lambda s: s.delete_streams_of(**selector))
        print(f"deleted {deleted} stream(s)")
        return 0 if deleted else 1
    infos = _with_store(args, lambda s: s.list_streams(**selector, limit=args.limit))
    views = [stream_view(i) for i in infos]
    if args.action == "show":
        if not views:
            print("no such stream", file=sys.stderr)
            return 1
        for view in views:
            print("\n".join(f"{k:>12}: {_cell(v)}" for k, v in view.items()), end="\n\n")
        return 0
    _print(views, args.json, ["id", "accountId", "gateway", "endpoint", "muted", "updatedAt"])
    return 0


# --- dead letters --------------------------------------------------------------------------


def deadletters(args: argparse.Namespace) -> int:
    if args.action == "list":
        letters = _with_store(args, lambda s: s.dead_letters(args.limit))
        _print([dead_letter_view(d) for d in letters], args.json, ["id", "accountId", "status", "httpStatus", "reason"])
        return 0
    if not args.id and not args.all:
        raise ConfigError("give --id N (repeatable) or --all")
    ids = None if args.all else list(args.id)
    if args.action == "retry":
        n = _with_store(args, lambda s: s.retry_dead_letters(ids))
        print(f"queued {n} dead letter(s) again")
    else:
        n = _with_store(args, lambda s: s.purge_dead_letters(ids))
        print(f"purged {n} dead letter(s)")
    return 0


# --- send-test -------------------------------------------------------------------------------


def send_test_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    key_file = Path(settings.vapid.private_key_file)
    if not key_file.exists():
        raise ConfigError(f"vapid.private_key_file: {key_file} does not exist (start the gateway once to create it)")
    signer = VapidSigner(read_key_file(key_file), settings.vapid.subject)

    async def job(store: Store) -> list[dict[str, Any]]:
        from gateway.service import push_client

        async with push_client(signer, settings.push) as client:
            return await send_test(store, client, args.account)

    results = _with_store(args, job)
    if not results:
        print(f"{args.account} has no streams", file=sys.stderr)
        return 1
    _print(results, args.json, ["streamId", "endpoint", "status", "verdict", "detail"])
    return 0 if all(r["verdict"] == "sent" for r in results) else 1


# --- replay ----------------------------------------------------------------------------------


def replay_command(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    interactive = sys.stderr.isatty()

    def show(p: ReplayProgress) -> None:
        if interactive:
            print("\r" + progress_bar(p), end="", file=sys.stderr, flush=True)
        else:
            print(progress_bar(p), file=sys.stderr, flush=True)

    result = anyio.run(replay, settings, args.watcher, args.from_block, args.to_block, show, args.idle_exit)
    if interactive:
        print(file=sys.stderr)
    print(
        f"replayed blocks {result.start}..{result.position} of {result.target}: {result.events} events, "
        f"{result.new_events} new, {result.deliveries} deliveries queued"
    )
    return 0 if result.position >= result.target else 1


# --- config check ----------------------------------------------------------------------------


def config_check(args: argparse.Namespace) -> int:
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"{args.config or '(defaults)'}: {exc}", file=sys.stderr)
        return 2
    watchers = ", ".join(f"{w.name} ({w.kind})" for w in settings.watchers) or "none"
    print(f"{args.config or '(defaults)'}: ok")
    store_kind = settings.storage.url.split("://", 1)[0]
    print(f"  storage: {store_kind}; watchers: {watchers}; gateways: {len(settings.gateways)}")
    if settings.vapid.subject_is_placeholder:
        print("  warning: [vapid] subject is a placeholder; push services may reject it")
    if not settings.ingest.token:
        print("  note: [ingest] token is empty, POST /events is disabled")
    if not settings.admin.token:
        print("  note: [admin] token is empty, the dashboard and admin API are disabled")
    return 0


def add_operator_commands(sub: Any) -> None:
    def command(name: str, help_text: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        parser.add_argument("--config", metavar="FILE", help="TOML settings file")
        parser.set_defaults(func=func)
        return parser

    def selector(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--account", help="an account id")
        parser.add_argument("--endpoint-hash", dest="endpoint_hash", help="an endpoint's hash (as logs show it)")

    p = command("streams", "list, show or delete streams (by account or endpoint hash)", streams)
    p.add_argument("action", choices=["list", "show", "delete"])
    selector(p)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("send-test", "send a test push to every stream of an account", send_test_command)
    p.add_argument("--account", required=True)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("deadletters", "list, retry or purge dead letters", deadletters)
    p.add_argument("action", choices=["list", "retry", "purge"])
    p.add_argument("--id", type=int, action="append", help="a dead letter's id (repeatable)")
    p.add_argument("--all", action="store_true", help="every dead letter")
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command("replay", "re-read a block range of a watcher's source (deduplicated)", replay_command)
    p.add_argument("--watcher", required=True, help="the [[watchers]] name")
    p.add_argument("--from-block", dest="from_block", type=int, required=True)
    p.add_argument("--to-block", dest="to_block", type=int, help="default: the watcher's stored cursor")
    p.add_argument("--idle-exit", dest="idle_exit", type=float, default=10.0, help="stop after this many quiet seconds")

    config = sub.add_parser("config", help="validate a config file")
    config.add_argument("action", choices=["check"])
    config.add_argument("--config", metavar="FILE")
    config.set_defaults(func=config_check)
