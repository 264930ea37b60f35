"""``hwflow pipeline``: the datapath layout graph the agent compiles with."""

from __future__ import annotations

import argparse
from typing import Any

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.cli.common import CliError, common_options
from hwflow.cli.output import dump_json
from hwflow.pipeline.layout import LayoutError, describe, to_dot

EPILOG = """\
JSON keys (--format json):
  start   "app.entry" where packets begin (table 0)
  apps    [{"name", "tables": {local name: table number}, "registers": {name: field},
            "entries": {entry: table}, "exits": {exit: table it leads to}}] in table order
  wires   [{"from": "app.exit", "to": "app.entry"}]

example: hwflow pipeline --dot | dot -Tpng > pipeline.png
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pipeline", help="show the datapath layout graph", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show which apps make up the pipeline, the tables and registers the layout gave them, "
        "and how their exit points are wired to entry points.",
    )
    common_options(parser, database=False)
    parser.add_argument("--layout", metavar="PATH", help="layout file (default: [apps] layout, or the shipped one)")
    parser.add_argument("--dot", action="store_true", help="print Graphviz source instead")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, conf: Any) -> int:
    try:
        layout = Compiler.from_file(layout_path(args.layout or conf.apps.layout)).layout
    except LayoutError as exc:
        raise CliError(str(exc)) from None
    if args.dot:
        print(to_dot(layout), end="")
    elif args.format == "json":
        dump_json({
            "start": ".".join(layout.wiring.start),
            "apps": [{"name": name, "tables": dict(al.table_ids), "registers": dict(al.register_fields),
                      "entries": {e: al.table_ids[t] for e, t in al.spec.entries.items()},
                      "exits": dict(al.exit_tables)} for name, al in layout.apps.items()],
            "wires": [{"from": f"{a}.{e}", "to": f"{b}.{n}"} for a, e, b, n in layout.edges()],
        })
    else:
        print("\n".join(describe(layout)))
    return 0
