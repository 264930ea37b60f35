"""``hwflow trace``: follow one packet through a chassis' compiled pipeline."""

from __future__ import annotations

import argparse
from typing import Any

from hwflow.cli import hostview
from hwflow.cli.common import CliError, common_options
from hwflow.cli.output import dump_json
from hwflow.db.api import NbApi
from hwflow.model.objects import Network, Port, RouterPort
from hwflow.offload import nic_walk
from hwflow.offload.partition import HwRule
from hwflow.pipeline import interpreter, ir
from hwflow.pipeline.trace import (
    PacketSpecError,
    format_action,
    format_match,
    format_packet,
    parse_spec,
    render,
    with_defaults,
)

EPILOG = """\
packet fields (comma-separated field=value, named as in the pipeline IR):
  eth_src eth_dst eth_type vlan_vid ipv4_src ipv4_dst ipv6_src ipv6_dst ip_proto
  ip_ttl tcp_src tcp_dst udp_src udp_dst icmp_type icmp_code arp_op arp_spa arp_tpa
  MACs as aa:bb:cc:dd:ee:ff, addresses dotted, eth_type also ipv4|arp|ipv6, ip_proto
  also icmp|tcp|udp. Left out: eth_src and ipv4_src/arp_spa from the port, eth_type
  ipv4, ICMP echo, TTL 64; eth_dst from the port owning ipv4_dst on the same network,
  else the MAC of the network's router port (the way to another subnet).

JSON keys (--format json):
  verdict  "output", "drop" or "punt"
  outputs  [{"port": name, "packet": {field: value}}] as each copy leaves
  steps    [{"table", "table_name", "flow": {"priority", "match", "actions"} or null,
            "owner" (the logical object the flow came from)}]

  hardware (with --hardware) {"nic": where the NIC's capabilities came from,
            "verdict": "redirect to PORT [after EDITS]", "drop",
            "pass to software at chain N", "miss in chain N[: lost]" or "software",
            "rules": [{"chain", "match", "actions", "owner"}] the NIC rules that take
            the packet, in order (gotos first),
            "reason": why software has the packet (the plan's reason for its path), or null,
            "packet": {field: value} as the NIC sends it (redirect only)}

The pipeline is the one hwflow-agent of --chassis compiles (hwflow.agent.view:
the same selection of objects, topology, apps and layout), taking the ports
bound to the chassis as plugged in (trace has no OVS to ask: an unbound port an
agent has plugged is local there, not here). Other chassis whose agents hold no
liveness lease are left out as the agent leaves them (nothing tunnels to them).

--hardware plans that pipeline as the agent does: every local port a VF of one
NIC with the capabilities of --profile (default: those the chassis's agent
recorded, else mlx5-connectx6dx), the chassis's tunnel types on it when the NIC
can encapsulate them, the uplink of each physical network of --uplink on it
(default: those [agent] bridge_mappings of the --config-file given maps: give
the host's own config), the [offload] options of the configuration. The packet then goes through the plan's rules as tc
takes them: first rule of the chain that matches, gotos followed, pass or a
miss in chain 0 to software.

examples:
  hwflow trace --chassis demo --port vm1 --packet ipv4_dst=10.0.0.2
  hwflow trace --chassis demo --port vm1 --packet ipv4_dst=10.1.0.5 --hardware --profile sim-basic
  hwflow trace --chassis demo --port vm1 --packet ipv4_dst=203.0.113.9 --hardware --uplink physnet1
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
    parser.add_argument("--hardware", action="store_true",
                        help="say first what the chassis's NIC does with the packet: the rules that take it, or "
                        "why it falls to software")
    parser.add_argument("--profile", metavar="NAME",
                        help="with --hardware: the NIC's capability profile (name or JSON file; default: what the "
                        f"chassis's agent recorded, else {hostview.DEFAULT_PROFILE})")
    parser.add_argument("--uplink", metavar="PHYSNET", action="append",
                        help="with --hardware: a physical network whose uplink is a representor of the NIC (as the "
                        "host's [agent] bridge_mappings maps it; may be repeated; default: the config's mappings)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, conf: Any) -> int:
    uplinks = hostview.uplinks_of(conf, args.uplink)
    host = hostview.load(conf, args.chassis)
    with NbApi.from_url(conf.database.url, conf) as nb:
        port = nb.find(Port, args.port)
    topo, pipeline = host.topo, host.pipeline
    if not topo.is_local(port.id):
        raise CliError(f"port {args.port} is not bound to chassis {args.chassis} "
                       f"(it is bound to {port.chassis or 'no chassis'})")
    ports = {o.id: o for o in host.objects if isinstance(o, Port)}
    router_ports = [o for o in host.objects if isinstance(o, RouterPort)]
    try:
        packet = with_defaults(parse_spec(args.packet), port, ports, router_ports)
    except PacketSpecError as exc:
        raise CliError(f"--packet: {exc}") from None
    names = {p.unique_key: p.name or p.id for p in ports.values()}
    names.update({key: f"{kind}-tunnel" for kind, key in ir.TUNNEL_PORTS.items()})
    physnets = {o.physical_network for o in host.objects if isinstance(o, Network) and o.physical_network}
    names.update({ir.physnet_port(physnet): f"{physnet}-uplink" for physnet in physnets | set(uplinks)})
    hardware = None
    if args.hardware:
        hardware = _hardware(hostview.hardware(host, conf, args.profile, uplinks),
                             {"in_port": port.unique_key, **packet}, pipeline, names)
    verdict = interpreter.run(pipeline, {"in_port": port.unique_key, **packet})
    report = render(verdict, pipeline, names)
    for step in report["steps"]:  # an ir.Owner is a (kind, id) tuple: its "kind:id" text for people and JSON
        if step["owner"] is not None:
            step["owner"] = str(step["owner"])
    if hardware is not None:
        report = {"hardware": hardware, **report}
    if args.format == "json":
        dump_json(report)
    else:
        for name in host.dead:
            print(f"note: chassis {name} has no liveness lease: its agent is down, nothing tunnels to its ports")
        _print(report)
    return 0


def _hardware(hw: hostview.Hardware, packet: dict[str, int], pipeline: ir.Pipeline,
              names: dict[int, str]) -> dict[str, Any]:
    """The ``hardware`` entry of the report: what the NIC does with the packet, the rules it takes, and why
    software has it (when it does)."""
    entry: dict[str, Any] = {"nic": hw.source}
    if not hw.enabled:
        return {**entry, "verdict": "software", "rules": [], "reason": "offload is disabled ([offload] enabled)"}
    if packet["in_port"] not in hw.offload:
        return {**entry, "verdict": "software", "rules": [], "reason": "the port has no VF behind the NIC"}
    taken = nic_walk.walk(hw.plan, packet, chain_miss=hw.capabilities.chain_miss, explain=True)
    rules = [{"chain": r.chain, "match": format_match(r.match, names),
              "actions": [format_action(a, names, pipeline) for a in r.actions] + _ending(r, names),
              "owner": str(r.owner) if r.owner not in ("", "miss") else
              ("pass rule (holds software paths)" if r.owner == "" else "catch-all")} for r in taken.rules]
    entry["rules"] = rules
    if taken.verdict == nic_walk.REDIRECT:
        edits = [format_action(a, names, pipeline) for r in taken.rules for a in r.actions]
        entry["verdict"] = f"redirect to {names.get(taken.output, taken.output)}" + (
            f" after {', '.join(edits)}" if edits else "")
        entry["reason"] = None
        entry["packet"] = format_packet(taken.packet)
        return entry
    if taken.verdict == nic_walk.DROP:
        return {**entry, "verdict": "drop", "reason": None}
    entry["verdict"] = (f"pass to software at chain {taken.chain}" if taken.verdict == nic_walk.PASS else
                        f"miss in chain {taken.chain}" + (": to software" if taken.software else ": lost (software tc "
                                                           "goes on in that chain, which holds no rule)"))
    entry["reason"] = _why_software(taken, hw, packet)
    return entry


def _ending(rule: HwRule, names: dict[int, str]) -> list[str]:
    if rule.drop:
        return ["drop"]
    if rule.goto is not None:
        return [f"goto chain {rule.goto}"]
    if rule.output is not None:
        return [f"redirect:{names.get(rule.output, rule.output)}"]
    return ["pass"]


def _why_software(taken: nic_walk.NicWalk, hw: hostview.Hardware, packet: dict[str, int]) -> str:
    if taken.leaf is not None:
        return taken.leaf.reason
    if packet.get("eth_type") not in hw.ethertypes:
        return f"ethertype {packet.get('eth_type', 0):#06x} is not offloaded ([offload] ethertypes)"
    if taken.verdict == nic_walk.PASS and taken.rules and taken.rules[-1].owner == "miss":
        return "no hardware rule for this packet in the chain: its catch-all hands it to software"
    if taken.verdict == nic_walk.PASS:
        return "a pass rule holds it for software, in front of later rules"
    return "no hardware rule takes it"


def _print(report: dict[str, Any]) -> None:
    hardware = report.get("hardware")
    if hardware is not None:
        print(f"NIC ({hardware['nic']}): {hardware['verdict']}")
        for rule in hardware["rules"]:
            print(f"   chain {rule['chain']}: {rule['match']}")
            print(f"      actions {', '.join(rule['actions'])}   [from {rule['owner']}]")
        if hardware["reason"]:
            print(f"   software because: {hardware['reason']}")
        print("software (OVS)" + (": the pipeline as software runs it" if hardware["reason"] else
                                  ": what the NIC's rules stand for") + ":")
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
