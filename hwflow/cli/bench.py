"""``hwflow bench NAME``: run a benchmark and print its figures."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from hwflow import bench
from hwflow.cli.common import CliError
from hwflow.cli.output import dump_json, table

EPILOG = """\
JSON (--json or --format json): one object with
  bench    the benchmark's name
  params   its parameters after --param overrides
  machine  hostname, cpu, cores, memory_gib, kernel, python, date (UTC)
  results  metric name -> number (doc/benchmarks.rst says what each one measures)
`hwflow bench` alone lists the benchmarks, their parameters and defaults, and what
each measures. Record figures with the date and machine in doc/benchmarks.rst.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "bench", help="run a benchmark", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run one of hwflow's benchmarks and print its figures.",
    )
    parser.add_argument("name", nargs="?", help="benchmark to run; omit to list them")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="override a parameter (may be repeated)")
    parser.add_argument("--json", action="store_true", help="print one JSON object (same as --format json)")
    parser.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    parser.add_argument("--config-file", action="append", default=[], metavar="PATH", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, conf: Any) -> int:
    if not args.name:
        rows = []
        for name in sorted(bench.BENCHMARKS):
            module = bench.load(name)
            rows.append({"name": name, "params": " ".join(f"{k}={v}" for k, v in module.DEFAULTS.items()),
                         "measures": (module.__doc__ or "").strip().splitlines()[0]})
        if args.json or args.format == "json":
            dump_json(rows)
        else:
            table(rows, ["name", "params", "measures"])
        return 0
    try:
        module = bench.load(args.name)
        params = bench.parse_params(module.DEFAULTS, args.param)
    except (KeyError, ValueError) as exc:
        raise CliError(str(exc).strip("'\"")) from None
    as_json = args.json or args.format == "json"

    def progress(text: str) -> None:
        print(f"[{args.name}] {text}", file=sys.stderr, flush=True)

    results = module.run(params, progress)
    report = {"bench": args.name, "params": params, "machine": bench.machine(), "results": results}
    if as_json:
        dump_json(report)
    else:
        table([{"metric": k, "value": v} for k, v in results.items()], ["metric", "value"])
    return 0
