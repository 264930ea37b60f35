"""The ``hwflow`` command: one sub-command per module of this package.

Each command module exposes ``add_parser(subparsers)``, which adds its
parser and sets ``func(args, conf) -> int`` as the parser default. Options
every command shares (``--config-file``, ``--database``, ``--format``) are
added here so that they read the same everywhere.
"""

from __future__ import annotations

import argparse
import logging
import sys

from hwflow.cli.common import CliError, load_conf
from hwflow.model.errors import HwflowError

COMMAND_MODULES = (
    "hwflow.cli.nb",
    "hwflow.cli.db",
    "hwflow.cli.capabilities",
    "hwflow.cli.demo",
    "hwflow.cli.lab",
    "hwflow.cli.bench",
    "hwflow.cli.pipeline",
    "hwflow.cli.trace",
    "hwflow.cli.flows",
    "hwflow.cli.neutron",
)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(
        prog="hwflow",
        description="Operate hwflow: the logical network (nb), what the NICs can "
        "do (capabilities), and a self-contained demo (demo).",
    )
    parser.add_argument("--debug", action="store_true", help="log debug messages to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        conf = load_conf(args)
        return int(args.func(args, conf) or 0)
    except (CliError, HwflowError) as exc:
        print(f"hwflow {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
