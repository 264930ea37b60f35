"""What every ``hwflow`` command shares: its error type and common options.

Kept apart from :mod:`hwflow.cli.main` so that command modules never import
the entry point (``python -m hwflow.cli.main`` would load it twice).
"""

from __future__ import annotations

import argparse

from oslo_config import cfg

from hwflow import conf as hwconf


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
            help="northbound database: sqlite:///PATH, etcd://HOST:PORT[,...] or etcds://... (TLS) "
            "(default: [database] url of the config)",
        )
    if fmt:
        parser.add_argument(
            "--format", choices=("table", "json"), default="table",
            help="output format (default: table)",
        )


def load_conf(args: argparse.Namespace) -> cfg.ConfigOpts:
    argv: list[str] = []
    for path in getattr(args, "config_file", []) or []:
        argv += ["--config-file", path]
    conf = hwconf.new_conf(argv)
    if getattr(args, "database", None):
        conf.set_override("url", args.database, group="database")
    return conf
