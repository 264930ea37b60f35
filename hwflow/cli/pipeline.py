"""``hwflow pipeline``: the datapath layout graph the agent compiles with."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from html import escape
from typing import Any

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.cli import hostview
from hwflow.cli.common import CliError, common_options
from hwflow.cli.output import dump_json
from hwflow.offload import nic_walk
from hwflow.pipeline.layout import Layout, LayoutError, describe, to_dot

ALL, SOME, NONE = "palegreen", "khaki1", "gray85"  # the NIC decides all / some / none of a table's paths

EPILOG = """\
JSON keys (--format json):
  start   "app.entry" where packets begin (table 0)
  apps    [{"name", "tables": {local name: table number}, "registers": {name: field},
            "entries": {entry: table}, "exits": {exit: table it leads to}}] in table order
  wires   [{"from": "app.exit", "to": "app.entry"}]

--dot --chassis NAME [--profile P]: each table coloured by the share of that
chassis's paths through it the NIC decides (forwards or drops): green all,
yellow some, grey none (or no path), with the share in the label and a legend.
The plan is the one `hwflow trace --hardware` makes (see its --help): the
pipeline the chassis's agent compiles, every local port a VF of a NIC of P
(default: the capabilities the chassis recorded, else mlx5-connectx6dx). Each
hardware rule and software path of each port (and tunnel device) counts once,
as one packet aimed at it and run through the pipeline.

examples:
  hwflow pipeline --dot | dot -Tpng > pipeline.png
  hwflow pipeline --dot --chassis host1 --profile sim-basic | dot -Tsvg > offload.svg
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "pipeline", help="show the datapath layout graph", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show which apps make up the pipeline, the tables and registers the layout gave them, "
        "and how their exit points are wired to entry points.",
    )
    common_options(parser)
    parser.add_argument("--layout", metavar="PATH", help="layout file (default: [apps] layout, or the shipped one)")
    parser.add_argument("--dot", action="store_true", help="print Graphviz source instead")
    parser.add_argument("--chassis", metavar="NAME",
                        help="with --dot: colour each table by how much of this chassis's traffic through it the "
                        "NIC takes")
    parser.add_argument("--profile", metavar="NAME",
                        help="with --chassis: the NIC's capability profile (default: what the chassis recorded, "
                        f"else {hostview.DEFAULT_PROFILE})")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, conf: Any) -> int:
    try:
        layout = Compiler.from_file(layout_path(args.layout or conf.apps.layout)).layout
    except LayoutError as exc:
        raise CliError(str(exc)) from None
    if args.chassis and not args.dot:
        raise CliError("--chassis colours the tables of --dot: give --dot too")
    if args.dot and args.chassis:
        if args.layout:
            conf.set_override("layout", args.layout, group="apps")
        host = hostview.load(conf, args.chassis)
        hw = hostview.hardware(host, conf, args.profile, hostview.uplinks_of(conf, None))
        shares = nic_walk.table_shares(host.pipeline, hw.plan, sorted(hw.offload), hw.capabilities.chain_miss)
        print(coloured_dot(layout, shares, f"chassis {args.chassis}, NIC: {hw.source}"), end="")
    elif args.dot:
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


def share_colour(share: tuple[int, int] | None) -> str:
    if share is None or not share[0]:
        return NONE
    return ALL if share[0] == share[1] else SOME


def coloured_dot(layout: Layout, shares: Mapping[int, tuple[int, int]], title: str) -> str:
    """:func:`to_dot` with each table's cell coloured by the share of its paths the NIC decides, and a legend."""
    out = ["digraph datapath {", "  rankdir=LR;", "  node [shape=plaintext];",
           f'  label="{_quoted(title)}"; labelloc=t;']
    for app, al in layout.apps.items():
        rows = [f'<tr><td bgcolor="white"><b>{escape(app)}</b></td></tr>']
        for name, table in al.table_ids.items():
            share = shares.get(table)
            text = f"{table} ({name})" + (f": {share[0]}/{share[1]} in the NIC" if share else ": no path")
            rows.append(f'<tr><td bgcolor="{share_colour(share)}">{escape(text)}</td></tr>')
        out.append(f'  "{app}" [label=<<table border="0" cellborder="1" cellspacing="0">{"".join(rows)}</table>>];')
    out.append('  start [shape=point];')
    out.append(f'  start -> "{layout.wiring.start[0]}" [label="{layout.wiring.start[1]}"];')
    out += [f'  "{a}" -> "{b}" [label="{e} -> {n}"];' for a, e, b, n in layout.edges()]
    legend = "".join(f'<tr><td bgcolor="{colour}">{escape(text)}</td></tr>' for colour, text in (
        (ALL, "the NIC decides every path through the table"), (SOME, "the NIC decides some of its paths"),
        (NONE, "software decides all of them (or no path goes through it)")))
    out.append(f'  legend [label=<<table border="0" cellborder="1" cellspacing="0"><tr><td><b>legend</b></td></tr>'
               f'{legend}</table>>];')
    out.append("}")
    return "\n".join(out) + "\n"


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')
