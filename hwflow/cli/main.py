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

from hwflow import conf as hwconf
from hwflow.model.errors import HwflowError

COMMAND_MODULES = (
    "hwflow.cli.nb",
    "hwflow.cli.capabilities",
    "hwflow.cli.demo",
)


class CliError(Exception):
    """A user-facing failure: printed as one line, exit status 1."""


def common_options(parser: argparse.ArgumentParser, database: bool = True, fmt: bool = True) -> None:
    """Options that every reporting / database-touching command takes."""
    parser.add_argument(
        "--config-file", action="append", default=[], metavar="PATH",
        help="oslo.config file to read (may be repeated)",
    )
    if database:
        parser.add_argument(
            "--database", metavar="URL",
            help="northbound database: sqlite:///PATH or etcd://HOST:PORT[,...] "
            "(default: [database] url of the config)",
        )
    if fmt:
        parser.add_argument(
            "--format", choices=("table", "json"), default="table",
            help="output format (default: table)",
        )


def load_conf(args: argparse.Namespace):
    argv: list[str] = []
    for path in getattr(args, "config_file", []) or []:
        argv += ["--config-file", path]
    conf = hwconf.new_conf(argv)
    if getattr(args, "database", None):
        conf.set_override("url", args.database, group="database")
    return conf


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
