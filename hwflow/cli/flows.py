"""``hwflow flows``: what a host's NIC and Open vSwitch hold, side by side, with owners, counters and reasons.

What is installed comes from the datapaths themselves: a tc dump of every representor the agent owns (over
the NIC's control endpoint: the simulated NIC's ``unix:PATH`` socket, or netlink) and an OpenFlow dump of
the integration bridge's hwflow flows (over its management socket). What it means comes from the file the
agent publishes (hwflow.agent.published): each hardware rule's owner, each software path's reason. The
join of the two (:func:`join`) also says where they disagree.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hwflow.agent import published
from hwflow.cli.common import CliError, common_options
from hwflow.cli.output import dump_json

EPILOG = """\
where it reads (run it on the host, as root: the NIC's socket and OVS's management socket are root's):
  --config-file  the agent's config: [agent] state_dir (where the agent publishes
                 flows-<chassis>.msgpack) and chassis_name (the default --chassis). The NIC
                 endpoints, representors and the bridge's OpenFlow endpoint come from that
                 published file, as the agent uses them.
  a simulated host (hwflow demo --keep, hwflow lab, SimHost):
      ip netns exec hwf-NAME hwflow flows --config-file WORKDIR/agent.conf
  (hwflow demo --keep prints each host's WORKDIR; the lab's are WORKDIR/NAMEi.)

what each line is (one entry each):
  hw rule   a tc-flower rule on a representor (chain, prio), with the NIC's counters
  sw path   a packet path the agent kept in Open vSwitch, with the reason (no counters:
            its packets are counted by the OVS flows that carry them)
  sw flow   an OpenFlow flow of the bridge (table, priority), with OVS's counters; OVS holds
            the whole pipeline, so it carries every packet no hardware rule took

disagreements (what is installed against the agent's published plan; the plan is rewritten at
most every few seconds after a change, so a disagreement younger than that may be the agent
catching up; one that stays is repaired by the agent's next full pass):
  "installed, not in the agent's plan"      a tc rule or an OpenFlow flow nobody planned
                                            (someone else's, or stale)
  "in the agent's plan, not installed"      a planned tc rule missing from the NIC (with the
                                            NIC's refusal when it refused it), or an OpenFlow
                                            flow the agent holds installed missing from the
                                            bridge (its table, priority and match)
  "installed with other actions"            a tc rule: same match, other actions than planned
  "owner unknown to the agent"              an OpenFlow flow under hwflow's cookie marker whose
                                            owner the agent never compiled

JSON keys (--format json): a list of entries, each
  datapath      "hw" or "sw"
  kind          "rule" (hw), "pass" / "miss" (hw: a rule handing packets to software in front of
                later rules / a chain's catch-all), "path" (sw: a path kept in software),
                "flow" (sw: an OpenFlow flow)
  port          the logical port's id (tunnel:vxlan, physnet:NAME for the host's own ports), or
                null (a flow of no one port, a path of a chain several ports share: see ports)
  ports         the logical ports (ids) the entry applies to
  port_name     the port's name, or null
  device        the representor (hw) or the OpenFlow port's device, or null
  owner         the logical object the rule or flow comes from, "kind:id" (port, router,
                security_group_rule, network, an app's defaults...), or null
  packets, bytes  counters as the datapath has them now (null: not installed, or a path)
  reason        why a path is kept in software (a capability the NIC lacks; "the NIC refused
                it: ... refused with ENOSPC ..." with its errno; "the NIC's rule table is full";
                "overlaps an earlier software-only path"), else null
  disagreement  one of the texts above, or null
  chain, prio, order   (hw) the tc chain, priority, and position in the chain's decision list
  table, priority      (sw flow) the OpenFlow table and priority
  match         what it matches: the IR match (hw planned, sw path), tc-flower keys (a hw rule
                installed but not planned), OpenFlow fields (sw flow)
  flower        (hw) the tc-flower match as installed or planned
  actions       what it does, as text (null for an OpenFlow flow missing from the bridge: the
                plan names flows by table, priority and match only)
"""

COLUMNS = ("dp", "port", "owner", "packets", "bytes", "where", "match", "note")
WIDTHS = {"port": 20, "owner": 36, "match": 72}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "flows", help="a host's hardware rules and software flows side by side, with owners, counters and reasons",
        description="Show what this host's NIC (tc-flower rules) and Open vSwitch (OpenFlow flows) hold now, "
        "each with its logical owner and counters; every packet path kept in software with the reason; and "
        "where what is installed disagrees with the agent's plan.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_options(parser, database=False)
    parser.add_argument("--chassis", metavar="NAME",
                        help="whose published plan to read, in the config's [agent] state_dir (default: the "
                        "config's [agent] chassis_name; else the only one there)")
    parser.add_argument("--port", metavar="PORT",
                        help="only entries of this logical port (its id, name, or representor device name)")
    parser.add_argument("--datapath", choices=("hw", "sw", "all"), default="all",
                        help="only hardware rules, only software (paths and flows), or both (default: all)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace, conf: Any) -> int:
    path = find_published(Path(conf.agent.state_dir), args.chassis, conf.agent.chassis_name,
                          bool(args.config_file))
    try:
        doc = published.load(path)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read the agent's published plan: {exc}") from None
    want_hw, want_sw = args.datapath in ("hw", "all"), args.datapath in ("sw", "all")
    tc, unreadable = dump_nics(doc) if want_hw else ({}, {})
    flows = dump_ovs(doc) if want_sw else None
    entries = [e for e in join(doc, tc, flows, unreadable)
               if (args.datapath == "all" or e["datapath"] == args.datapath) and _on_port(e, args.port)]
    if args.format == "json":
        dump_json(entries)
    else:
        for device, error in sorted(unreadable.items()):
            print(f"warning: cannot read the rules of {device[0]} ifindex {device[1]}: {error}", file=sys.stderr)
        print(table_lines(doc, entries))
    return 0


def find_published(state_dir: Path, chassis: str | None, configured: str, from_config: bool) -> Path:
    """The published file of ``chassis`` (default: the config's chassis when a config was given, else the only
    file there)."""
    if chassis:
        path = published.path_for(state_dir, chassis)
        if not path.exists():
            raise CliError(f"no published plan of chassis {chassis} in {state_dir} ({path.name} is missing)"
                           f"{_there(state_dir)}")
        return path
    if from_config:
        path = published.path_for(state_dir, configured)
        if path.exists():
            return path
    found = sorted(state_dir.glob("flows-*.msgpack"))
    if len(found) == 1:
        return found[0]
    if not found:
        raise CliError(f"no published plan in {state_dir}: is hwflow-agent running with this [agent] state_dir? "
                       "(point --config-file at the agent's config)")
    raise CliError(f"several chassis publish in {state_dir}: pick one with --chassis{_there(state_dir)}")


def _there(state_dir: Path) -> str:
    names = [p.name[len("flows-"):-len(".msgpack")] for p in sorted(state_dir.glob("flows-*.msgpack"))]
    return f"; published there: {', '.join(names)}" if names else ""


# --- reading the datapaths ---------------------------------------------------------------------------


def dump_nics(doc: Mapping[str, Any]) -> tuple[dict[tuple[str, int], list], dict[tuple[str, int], str]]:
    """Every representor the agent owns, dumped: (endpoint, ifindex) -> [(rule, stats)], and the devices that
    could not be read -> why."""
    from hwflow.backends.tc.backend import TcBackend
    from hwflow.backends.tc.transport import TcError

    backend = TcBackend()
    dumps: dict[tuple[str, int], list] = {}
    unreadable: dict[tuple[str, int], str] = {}
    try:
        for device in doc.get("devices", ()):
            dev = (device["endpoint"], device["ifindex"])
            try:
                dumps[dev] = backend.installed(*dev)
            except (TcError, OSError, ValueError) as exc:
                unreadable[dev] = str(exc)
    finally:
        backend.close()
    return dumps, unreadable


def dump_ovs(doc: Mapping[str, Any]) -> list:
    """The bridge's hwflow flows (cookie marker), with their counters."""
    from hwflow.backends.ovs import native, translate
    from hwflow.backends.ovs.openflow import OpenFlowConnection, OpenFlowError

    endpoint = doc["ovs"]["openflow_endpoint"]
    conn = OpenFlowConnection(endpoint, timeout=10.0)
    try:
        replies = conn.dump_flows_raw(translate.COOKIE_MARK, translate.COOKIE_MARK_MASK)
    except (OpenFlowError, OSError) as exc:
        raise CliError(f"cannot dump Open vSwitch's flows at {endpoint}: {exc}") from None
    finally:
        conn.close()
    return translate.FlowCompiler(native.Catalog()).decode_flow_stats(replies)


# --- the join --------------------------------------------------------------------------------------


def _identity(endpoint: str, ifindex: int, chain: int, prio: int, protocol: int, keys: tuple) -> tuple:
    return (endpoint, ifindex, chain, prio, protocol, keys)


class _Ports:
    """Logical keys, ofports and devices -> what an entry says of its port."""

    def __init__(self, doc: Mapping[str, Any]) -> None:
        self.by_key = {int(key): info for key, info in doc.get("ports", {}).items()}
        self.by_ofport = {info["ofport"]: key for key, info in self.by_key.items() if info.get("ofport") is not None}
        self.by_id = {info["id"]: key for key, info in self.by_key.items()}
        self.devices = {(d["endpoint"], d["ifindex"]): d for d in doc.get("devices", ())}

    def fields(self, key: int | None, device: str | None = None) -> dict[str, Any]:
        info = self.by_key.get(key) if key is not None else None
        if info is None:
            return {"port": None, "ports": [], "port_name": None, "device": device}
        return {"port": info["id"], "ports": [info["id"]], "port_name": info.get("name"),
                "device": device or info.get("device")}

    def ids(self, keys: Iterable[int]) -> list[str]:
        return [self.by_key[k]["id"] if k in self.by_key else str(k) for k in keys]


def join(doc: Mapping[str, Any], tc: Mapping[tuple[str, int], list], flows: Iterable[Any] | None,
         unreadable: Mapping[tuple[str, int], str] | None = None) -> list[dict[str, Any]]:
    """The entries of ``hwflow flows``: the published plan joined with what the datapaths hold.

    ``tc``: (endpoint, ifindex) -> [(FlowerRule, RuleStats | None)] as dumped; ``flows``: the bridge's
    InstalledFlows (None: not dumped); ``unreadable``: devices whose dump failed, -> why. Hardware rules are
    joined by their identity (device, chain, prio, protocol, keys); OpenFlow flows by theirs (table, priority,
    match), and named by their cookie (the hash of an owner the agent published)."""
    ports = _Ports(doc)
    entries = _hw_entries(doc, tc, unreadable or {}, ports) + _sw_entries(doc, ports)
    if flows is not None:
        entries += _ovs_entries(doc, flows, ports)
    return entries


def _hw_entries(doc: Mapping[str, Any], tc: Mapping[tuple[str, int], list], unreadable: Mapping[tuple[str, int], str],
                ports: _Ports) -> list[dict[str, Any]]:
    """The NIC rules dumped, each told against the agent's plan; then the planned ones missing from a device
    that was dumped (or could not be read)."""
    names = {d["ifindex"]: d["name"] for d in doc.get("devices", ()) if d.get("name")}
    entries: list[dict[str, Any]] = []
    planned: dict[tuple, dict[str, Any]] = {}
    for rule in doc.get("hw", ()):
        planned[_identity(rule["endpoint"], rule["ifindex"], rule["chain"], rule["prio"], rule["protocol"],
                          rule["keys"])] = rule
    refused = {(r["ifindex"], r["chain"], r["prio"], r["protocol"], r["keys"]): r["error"]
               for r in doc.get("refused", ())}
    seen: set[tuple] = set()
    for dev, dumped in sorted(tc.items()):
        device = ports.devices.get(dev, {})
        for rule, stats in dumped:
            keys = published.key_values(rule.keys)
            ident = _identity(dev[0], dev[1], rule.chain, rule.prio, rule.protocol, keys)
            seen.add(ident)
            plan = planned.get(ident)
            actions = published.flower_actions(rule.actions, names)
            flower = published.flower_match(rule.protocol, published.keys_map(keys))
            entry = {"datapath": "hw", "kind": plan["kind"] if plan else "rule",
                     **ports.fields(plan["port"] if plan else device.get("port"), device.get("name")),
                     "owner": plan["owner"] if plan else None, "chain": rule.chain, "prio": rule.prio,
                     "order": plan["order"] if plan else None,
                     "match": plan["match"] if plan else flower,
                     "flower": flower, "actions": actions,
                     "packets": stats.packets if stats else 0, "bytes": stats.bytes if stats else 0,
                     "reason": None, "disagreement": None}
            if plan is None:
                entry["disagreement"] = "installed, not in the agent's plan"
            elif plan["actions"] != actions:
                entry["disagreement"] = f"installed with other actions (planned: {plan['actions']})"
            entries.append(entry)
    for ident, plan in planned.items():
        dev = (plan["endpoint"], plan["ifindex"])
        if ident in seen or dev not in tc and dev not in unreadable:
            continue  # installed (above), or a device not asked for
        if dev in unreadable:
            why = f"the NIC could not be read: {unreadable[dev]}"
        else:
            error = refused.get(ident[1:])
            why = "in the agent's plan, not installed" + (f" (the NIC refused it: {error})" if error else "")
        device = ports.devices.get(dev, {})
        entries.append({"datapath": "hw", "kind": plan["kind"], **ports.fields(plan["port"], device.get("name")),
                        "owner": plan["owner"], "chain": plan["chain"], "prio": plan["prio"],
                        "order": plan["order"], "match": plan["match"],
                        "flower": published.flower_match(plan["protocol"], published.keys_map(plan["keys"])),
                        "actions": plan["actions"], "packets": None, "bytes": None, "reason": None,
                        "disagreement": why})
    return entries


def _sw_entries(doc: Mapping[str, Any], ports: _Ports) -> list[dict[str, Any]]:
    """The paths the agent left to OVS, each with the ports it is reached from."""
    entries: list[dict[str, Any]] = []
    for path in doc.get("sw", ()):
        keys = path["ports"]
        one = keys[0] if len(keys) == 1 else None
        fields = ports.fields(one)
        fields["ports"] = ports.ids(keys)
        entries.append({"datapath": "sw", "kind": "path", **fields, "owner": path["owner"], "chain": path["chain"],
                        "match": path["match"], "packets": None, "bytes": None, "reason": path["reason"],
                        "disagreement": None})
    return entries


def _ovs_entries(doc: Mapping[str, Any], flows: Iterable[Any], ports: _Ports) -> list[dict[str, Any]]:
    """The bridge's flows, each named by its cookie and told against the flows the agent holds installed; then
    those of them missing from the bridge."""
    from hwflow.backends.ovs.translate import owner_cookie

    owners = {owner_cookie(owner): owner for owner in doc.get("owners", ())}
    planned = {(row["table"], row["priority"], row["match"]): row["cookie"] for row in doc.get("flows", ())}
    entries = []
    seen = set()
    for flow in flows:
        seen.add(flow.key)
        owner = owners.get(flow.cookie)
        if owner is None:
            why = "owner unknown to the agent"
        elif planned.get(flow.key) != flow.cookie:
            why = "installed, not in the agent's plan"
        else:
            why = None
        entries.append(_ovs_entry(flow.key, owner, ports, ovs_actions(flow.instructions, ports), flow.n_packets,
                                  flow.n_bytes, why))
    for key, cookie in planned.items():
        if key not in seen:
            entries.append(_ovs_entry(key, owners.get(cookie), ports, None, None, None,
                                      "in the agent's plan, not installed"))
    return entries


def _ovs_entry(key: tuple, owner: str | None, ports: _Ports, actions: str | None, packets: int | None,
               octets: int | None, disagreement: str | None) -> dict[str, Any]:
    table, priority, match = key
    in_port = next((value for oxm, value, _ in match if oxm == "in_port"), None)
    port = ports.by_ofport.get(in_port) if in_port is not None else None
    if port is None and owner is not None and owner.startswith("port:"):
        port = ports.by_id.get(owner[len("port:"):])
    return {"datapath": "sw", "kind": "flow", **ports.fields(port), "owner": owner, "table": table,
            "priority": priority, "match": ovs_match(match, ports), "actions": actions, "packets": packets,
            "bytes": octets, "reason": None, "disagreement": disagreement}


# --- OpenFlow flows as text -------------------------------------------------------------------------


_OXM_MAC = {"eth_src", "eth_dst", "arp_sha", "arp_tha", "nd_sll", "nd_tll"}
_OXM_IPV4 = {"ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa", "tun_ipv4_src", "tun_ipv4_dst"}
_OXM_IPV6 = {"ipv6_src", "ipv6_dst", "nd_target"}


def _oxm_value(oxm: str, value: int, ports: _Ports | None = None) -> str:
    if oxm in _OXM_MAC:
        return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))
    if oxm in _OXM_IPV4:
        return str(ipaddress.IPv4Address(value))
    if oxm in _OXM_IPV6:
        return str(ipaddress.IPv6Address(value))
    if oxm == "in_port" and ports is not None:
        key = ports.by_ofport.get(value)
        info = ports.by_key.get(key) if key is not None else None
        return (info.get("device") or info.get("name") or info["id"]) if info else str(value)
    if oxm == "eth_type":
        return f"{value:#06x}"
    return str(value) if value < 256 else f"{value:#x}"


def _oxm_bits(oxm: str, mask: int) -> int:
    from hwflow.backends.ovs import translate

    return translate._OXM_BITS.get(oxm, mask.bit_length())


def ovs_match(match: Iterable[tuple[str, int, int]], ports: _Ports | None = None) -> str:
    terms = []
    for oxm, value, mask in match:
        text = f"{oxm}={_oxm_value(oxm, value, ports)}"
        if mask != (1 << _oxm_bits(oxm, mask)) - 1:
            text += f"/{_oxm_value(oxm, mask) if oxm in _OXM_MAC | _OXM_IPV4 | _OXM_IPV6 else hex(mask)}"
        terms.append(text)
    return ",".join(terms) or "*"


def _ovs_action(action: tuple, ports: _Ports | None) -> str:
    kind = action[0]
    if kind == "output":
        return f"output:{_oxm_value('in_port', action[1], ports) if action[1] < 0xFFFFFF00 else 'CONTROLLER'}"
    if kind == "set_field":
        return f"set:{action[1]}={_oxm_value(action[1], action[2])}"
    if kind == "ct":
        return f"ct(zone={action[3]},table={action[4]}{',commit' if action[1] & 1 else ''})"
    if kind == "reg_move":
        return f"move:{action[1]}->{action[2]}"
    if kind == "unknown":
        return "unknown"
    return ":".join(str(part) for part in action)


def ovs_actions(instructions: Iterable[tuple], ports: _Ports | None = None) -> str:
    out = []
    for instruction in instructions:
        if instruction[0] == "apply":
            out += [_ovs_action(a, ports) for a in instruction[1]]
        elif instruction[0] == "goto":
            out.append(f"goto:{instruction[1]}")
        elif instruction[0] == "write_metadata":
            full = instruction[2] == (1 << 64) - 1
            out.append(f"metadata={instruction[1]:#x}" + ("" if full else f"/{instruction[2]:#x}"))
        else:
            out.append(str(instruction[0]))
    return " ".join(out) or "drop"


# --- output ------------------------------------------------------------------------------------------


def _on_port(entry: Mapping[str, Any], port: str | None) -> bool:
    if port is None:
        return True
    return port in entry["ports"] or port in (entry["port_name"], entry["device"])


def _short(text: str | None, width: int) -> str:
    if text is None:
        return "-"
    return text if len(text) <= width else text[:width - 1] + "…"


_ETH_NAMES = {"0x0800": "ip", "0x86dd": "ipv6", "0x0806": "arp"}


def _brief(match: str | None) -> str | None:
    """A match for the table: its ethertype first, by name (``ip eth_dst=...``), the rest as it was."""
    if not match or match == "*":
        return match
    terms = match.split(",")
    kinds = [t for t in terms if t.startswith("eth_type=")]
    rest = [t for t in terms if not t.startswith("eth_type=")]
    head = [_ETH_NAMES.get(k[len("eth_type="):], k) for k in kinds]
    return " ".join(head + [",".join(rest)] if rest else head)


def _row(entry: Mapping[str, Any], names: Mapping[str, str]) -> dict[str, str]:
    hw = entry["datapath"] == "hw"
    if hw:
        where = f"chain {entry['chain']} prio {entry['prio']}"
    elif entry["kind"] == "path":
        where = f"chain {entry['chain']}"
    else:
        where = f"table {entry['table']} prio {entry['priority']}"
    port = entry["port_name"] or entry["device"] or entry["port"] or (
        f"{len(entry['ports'])} ports" if entry["ports"] else "-")
    owner = entry["owner"] or (f"({entry['kind']})" if entry["kind"] in ("pass", "miss") else "-")
    kind, _, oid = owner.partition(":")
    if kind == "port" and oid in names:  # a port by its name, as the PORT column shows it
        owner = f"port:{names[oid]}"
    note = entry["disagreement"] or entry["reason"]
    if note is None and entry["kind"] != "path":
        note = entry.get("actions")
    if entry["disagreement"]:
        note = f"DISAGREES: {note}"
    return {"dp": f"{entry['datapath']} {entry['kind']}", "port": _short(port, WIDTHS["port"]),
            "owner": _short(owner, WIDTHS["owner"]), "packets": "-" if entry["packets"] is None else str(
                entry["packets"]), "bytes": "-" if entry["bytes"] is None else str(entry["bytes"]), "where": where,
            "match": _short(_brief(entry["match"]), WIDTHS["match"]), "note": note or "-"}


def table_lines(doc: Mapping[str, Any], entries: list[dict[str, Any]]) -> str:
    """One line per entry, after a line saying whose plan and how old it is."""
    import time

    names = {info["id"]: info["name"] for info in doc.get("ports", {}).values() if info.get("name")}
    rows = [_row(e, names) for e in entries]
    widths = {c: max([len(c)] + [len(r[c]) for r in rows]) for c in COLUMNS}
    right = {"packets", "bytes"}
    lines = [f"chassis {doc.get('chassis')}: plan published {max(0.0, time.time() - doc.get('written', 0)):.0f}s "
             f"ago; {sum(1 for e in entries if e['datapath'] == 'hw')} hw, "
             f"{sum(1 for e in entries if e['kind'] == 'path')} sw paths, "
             f"{sum(1 for e in entries if e['kind'] == 'flow')} sw flows, "
             f"{sum(1 for e in entries if e['disagreement'])} disagreements"]
    lines.append("  ".join(c.upper().rjust(widths[c]) if c in right else c.upper().ljust(widths[c])
                           for c in COLUMNS).rstrip())
    for r in rows:
        lines.append("  ".join(r[c].rjust(widths[c]) if c in right else r[c].ljust(widths[c])
                               for c in COLUMNS).rstrip())
    if not rows:
        lines.append("(none)")
    return "\n".join(lines)
