"""The `flowdppo` command: composes each component's subcommands (trainer, store, worker, server, api) into one CLI."""

from __future__ import annotations

import argparse
import importlib
import sys

# Each module exposes `register(subparsers)`; subcommand handlers import their heavy dependencies lazily.
COMPONENT_CLIS = ("trainer.cli", "store.cli", "worker.cli", "server", "api.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowdppo", description="Online RL for flow-matching text-to-image models.")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in COMPONENT_CLIS:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if not module_name.startswith(err.name or "?"):  # a component that exists but cannot import is an error
                raise
            continue
        module.register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
