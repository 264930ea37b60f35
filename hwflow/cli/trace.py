"""``hwflow trace``: follow one packet through a chassis' compiled pipeline."""

from __future__ import annotations

import argparse
from typing import Any

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.cli.common import CliError, common_options
from hwflow.cli.output import dump_json
from hwflow.db.api import NbApi
from hwflow.model.objects import Network, Port
from hwflow.pipeline import interpreter
from hwflow.pipeline.topology import Topology
from hwflow.pipeline.trace import PacketSpecError, parse_spec, render, with_defaults

EPILOG = """\
packet fields (comma-separated field=value, named as in the pipeline IR):
  eth_src eth_dst eth_type vlan_vid ipv4_src ipv4_dst ipv6_src ipv6_dst ip_proto
  ip_ttl tcp_src tcp_dst udp_src udp_dst icmp_type icmp_code arp_op arp_spa arp_tpa
  MACs as aa:bb:cc:dd:ee:ff, addresses dotted, eth_type also ipv4|arp|ipv6, ip_proto
  also icmp|tcp|udp. Left out: eth_src and ipv4_src/arp_spa from the port, eth_type
  ipv4, ICMP echo, TTL 64; eth_dst from the port owning ipv4_dst on the same network.

JSON keys (--format json):
  verdict  "output", "drop" or "punt"
  outputs  [{"port": name, "packet": {field: value}}] as each copy leaves
  steps    [{"table", "table_name", "flow": {"priority", "match", "actions"} or null,
            "owner" (the logical object the flow came from)}]

The pipeline is compiled from the database for the ports bound to --chassis,
with the same apps and layout as hwflow-agent.

example:
  hwflow trace --chassis demo --port vm1 --packet ipv4_dst=10.0.0.2
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "trace", help="trace a packet through a chassis' pipeline", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Show each table a packet visits, the flow that matched it, the logical object that "
        "flow came from, and the verdict.",
    )
    common_options(parser)
    parser.add_argument("--chassis", required=True, help="chassis whose pipeline to use")
    parser.add_argument("--port", required=True, help="ingress logical port (name or id), bound to the chassis")
    parser.add_argument("--packet", default="", metavar="SPEC", help="the packet: field=value,...")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, conf: Any) -> int:
    with NbApi.from_url(conf.database.url, conf) as nb:
        _, objects = nb.snapshot()
        port = nb.find(Port, args.port)
    networks = {o.id: o for o in objects if isinstance(o, Network)}
    ports = {o.id: o for o in objects if isinstance(o, Port)}
    local = frozenset(p.id for p in ports.values() if p.chassis == args.chassis)
    if port.id not in local:
        raise CliError(f"port {args.port} is not bound to chassis {args.chassis} "
                       f"(it is bound to {port.chassis or 'no chassis'})")
    pipeline = Compiler.from_file(layout_path(conf.apps.layout)).compile(Topology(args.chassis, networks, ports, local))
    try:
        packet = with_defaults(parse_spec(args.packet), port, ports)
    except PacketSpecError as exc:
        raise CliError(f"--packet: {exc}") from None
    verdict = interpreter.run(pipeline, {"in_port": port.unique_key, **packet})
    names = {p.unique_key: p.name or p.id for p in ports.values()}
    report = render(verdict, pipeline, names)
    for step in report["steps"]:  # an ir.Owner is a (kind, id) tuple: its "kind:id" text for people and JSON
        if step["owner"] is not None:
            step["owner"] = str(step["owner"])
    if args.format == "json":
        dump_json(report)
    else:
        _print(report)
    return 0


def _print(report: dict[str, Any]) -> None:
    for i, step in enumerate(report["steps"]):
        head = f"{i}. table {step['table']} ({step['table_name']})"
        if step["flow"] is None:
            print(f"{head}: no flow matched -> drop")
            continue
        flow = step["flow"]
        print(f"{head}: priority {flow['priority']} {flow['match']}")
        print(f"      actions {', '.join(flow['actions']) or 'drop'}   [from {step['owner']}]")
    print(f"verdict: {report['verdict']}")
    for out in report["outputs"]:
        print(f"  -> {out['port']}: " + ",".join(f"{k}={v}" for k, v in out["packet"].items()))
