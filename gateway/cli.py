"""The ``gateway`` command."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import anyio

from gateway import __version__
from gateway.config import Settings, load_settings
from gateway.exceptions import GatewayError
from gateway.webpush import generate_key_file, public_key_b64, read_key_file


def _setup_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.logging.level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _serve(args: argparse.Namespace) -> int:
    from gateway.service import Gateway

    settings = load_settings(args.config)
    _setup_logging(settings)
    anyio.run(Gateway(settings).run)
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

    serve = sub.add_parser("serve", help="run the HTTP API and the dispatcher")
    serve.add_argument("--config", metavar="FILE", help="TOML settings file (every key optional)")
    serve.set_defaults(func=_serve)

    vapid = sub.add_parser("vapid", help="show or generate the VAPID key pair")
    vapid.add_argument("action", choices=["show", "generate"])
    vapid.add_argument("--config", metavar="FILE")
    vapid.set_defaults(func=_vapid)
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
