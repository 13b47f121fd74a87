"""The ``gateway`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import anyio

from gateway import __version__
from gateway.commands import add_operator_commands
from gateway.config import Settings, load_settings
from gateway.exceptions import GatewayError
from gateway.logfmt import setup_logging
from gateway.runtime import loop_options, tune_gc
from gateway.webpush import generate_key_file, public_key_b64, read_key_file


def _setup_logging(settings: Settings) -> None:
    setup_logging(settings.logging)


ROLE_COMMANDS = {
    "serve": ("api", "worker", "watch"),
    "api": ("api",),
    "worker": ("worker",),
    "watch": ("watch",),
}


def _serve(args: argparse.Namespace) -> int:
    from gateway.service import Gateway

    settings = load_settings(args.config)
    _setup_logging(settings)
    tune_gc()
    anyio.run(Gateway(settings, frozenset(ROLE_COMMANDS[args.command])).run, backend_options=loop_options())
    return 0


def _vapid(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    path = Path(settings.vapid.private_key_file)
    if args.action == "generate":
        if path.exists():
            print(f"{path} exists; refusing to overwrite it (browsers are subscribed to its key)", file=sys.stderr)
            return 1
        key = generate_key_file(path)
    else:
        key = read_key_file(path)
    print(public_key_b64(key))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="NEAR Web Push gateway")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    helps = {
        "serve": "run everything: the HTTP API, the dispatcher and the watchers",
        "api": "run the HTTP API only",
        "worker": "run the dispatcher only (claims and sends deliveries)",
        "watch": "run the watchers only (each led by one process at a time)",
    }
    for command, text in helps.items():
        role = sub.add_parser(command, help=text)
        role.add_argument("--config", metavar="FILE", help="TOML settings file (every key optional)")
        role.set_defaults(func=_serve)

    vapid = sub.add_parser("vapid", help="show or generate the VAPID key pair")
    vapid.add_argument("action", choices=["show", "generate"])
    vapid.add_argument("--config", metavar="FILE")
    vapid.set_defaults(func=_vapid)
    add_operator_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.func(args)
    except GatewayError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
