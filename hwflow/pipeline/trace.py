"""Packets as people write them, and traces as people read them.

``hwflow trace`` takes a packet as comma-separated ``field=value`` pairs
named as in the IR (``eth_dst=fa:16:3e:00:00:02,ipv4_dst=10.0.0.2``); what is
left out gets a sensible default from the ingress port (its MAC and first
IP as sources, IPv4 ICMP echo, TTL 64). Values print back the same way.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from hwflow.model.objects import Port, RouterPort
from hwflow.pipeline import interpreter, ir

MAC_FIELDS = {"eth_src", "eth_dst", "arp_sha", "arp_tha"}
IPV4_FIELDS = {"ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa", "tun_src", "tun_dst"}
IPV6_FIELDS = {"ipv6_src", "ipv6_dst"}
ETH_TYPES = {"ipv4": ir.ETH_TYPE_IPV4, "arp": ir.ETH_TYPE_ARP, "ipv6": ir.ETH_TYPE_IPV6}
IP_PROTOS = {"icmp": 1, "tcp": 6, "udp": 17, "icmpv6": 58}
BROADCAST = (1 << 48) - 1


class PacketSpecError(ValueError):
    """A packet description that cannot be read; the message names the pair at fault."""


def parse_value(field: str, text: str) -> int:
    try:
        if field in MAC_FIELDS:
            parts = text.split(":")
            if len(parts) != 6:
                raise ValueError("a MAC has six ':'-separated bytes")
            return int("".join(f"{int(p, 16):02x}" for p in parts), 16)
        if field in IPV4_FIELDS:
            return int(ipaddress.IPv4Address(text))
        if field in IPV6_FIELDS:
            return int(ipaddress.IPv6Address(text))
        if field == "eth_type" and text in ETH_TYPES:
            return ETH_TYPES[text]
        if field == "ip_proto" and text in IP_PROTOS:
            return IP_PROTOS[text]
        value = int(text, 0)
    except ValueError as exc:
        raise PacketSpecError(f"{field}={text}: {exc}") from None
    if not 0 <= value < 1 << ir.FIELD_BITS[field]:
        raise PacketSpecError(f"{field}={text}: out of range for {ir.FIELD_BITS[field]} bits")
    return value


def format_value(field: str, value: int) -> str | int:
    if field in MAC_FIELDS:
        return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))
    if field in IPV4_FIELDS:
        return str(ipaddress.IPv4Address(value))
    if field in IPV6_FIELDS:
        return str(ipaddress.IPv6Address(value))
    if field in ("eth_type", "metadata"):
        return f"{value:#06x}" if field == "eth_type" else value
    return value


def parse_spec(spec: str) -> dict[str, int]:
    fields: dict[str, int] = {}
    for pair in filter(None, (p.strip() for p in spec.split(","))):
        name, sep, text = pair.partition("=")
        if not sep:
            raise PacketSpecError(f"{pair!r} is not field=value")
        if name in ir.DERIVED_FIELDS:
            raise PacketSpecError(f"{name} follows from the packet (vlan_tagged: give a vlan_vid, or none)")
        if name not in ir.FIELD_BITS or name in ir.INTERNAL_FIELDS or name == "in_port":
            known = ", ".join(f for f in ir.FIELD_BITS
                              if f not in ir.INTERNAL_FIELDS and f not in ir.DERIVED_FIELDS and f != "in_port")
            raise PacketSpecError(f"unknown packet field {name!r}; known: {known}")
        fields[name] = parse_value(name, text.strip())
    return fields


def with_defaults(given: Mapping[str, int], port: Port, ports: Mapping[str, Port],
                  router_ports: Iterable[RouterPort] = ()) -> dict[str, int]:
    """Fill what the user left out from the ingress port and the network's other ports (or its router)."""
    packet = {"eth_src": parse_value("eth_src", port.mac), "eth_type": ir.ETH_TYPE_IPV4, **given}
    ipv4 = [ip for ip in port.ips if ":" not in ip]
    if packet["eth_type"] == ir.ETH_TYPE_ARP:
        packet.setdefault("eth_dst", BROADCAST)
        packet.setdefault("arp_op", 1)
        if ipv4:
            packet.setdefault("arp_spa", parse_value("arp_spa", ipv4[0]))
    elif packet["eth_type"] == ir.ETH_TYPE_IPV4:
        if ipv4:
            packet.setdefault("ipv4_src", parse_value("ipv4_src", ipv4[0]))
        packet.setdefault("ip_proto", 1)
        packet.setdefault("ip_ttl", 64)
        if packet["ip_proto"] == 1:
            packet.setdefault("icmp_type", 8)
            packet.setdefault("icmp_code", 0)
        if "eth_dst" not in packet and "ipv4_dst" in packet:
            packet["eth_dst"] = _mac_of(packet["ipv4_dst"], port.network_id, ports, router_ports)
    if "eth_dst" not in packet:
        raise PacketSpecError("say eth_dst (or an ipv4_dst of a port on the same network)")
    return packet


def _mac_of(address: int, network_id: str, ports: Mapping[str, Port], router_ports: Iterable[RouterPort] = ()) -> int:
    """The MAC of the port on the network holding ``address``, else of the network's IPv4 router port."""
    text = str(ipaddress.IPv4Address(address))
    for other in ports.values():
        if other.network_id == network_id and text in other.ips:
            return parse_value("eth_dst", other.mac)
    for rp in sorted(router_ports, key=lambda r: r.id):
        if rp.network_id == network_id and rp.ip and ":" not in rp.ip and rp.mac:
            return parse_value("eth_dst", rp.mac)
    raise PacketSpecError(f"no port on the network has {text} and no router is on it: give eth_dst too")


def render(verdict: interpreter.Verdict, pipeline: ir.Pipeline, port_names: Mapping[int, str]) -> dict[str, Any]:
    """The JSON form of ``hwflow trace``: verdict, outputs and steps."""
    return {
        "verdict": verdict.kind,
        "outputs": [{"port": port_names.get(p, str(p)), "packet": format_packet(pkt)} for p, pkt in verdict.outputs],
        "steps": [_step(step, pipeline, port_names) for step in verdict.steps],
    }


def format_packet(packet: Mapping[str, int]) -> dict[str, Any]:
    return {k: format_value(k, v) for k, v in sorted(packet.items())}


def _step(step: interpreter.Step, pipeline: ir.Pipeline, port_names: Mapping[int, str]) -> dict[str, Any]:
    entry: dict[str, Any] = {"table": step.table, "table_name": pipeline.table_names.get(step.table, "")}
    if step.flow is None:
        entry.update(flow=None, owner=None, result="no flow matched: drop")
        return entry
    entry["flow"] = {"priority": step.flow.priority, "match": format_match(step.flow.match, port_names),
                     "actions": [format_action(a, port_names, pipeline) for a in step.flow.actions]}
    entry["owner"] = str(step.flow.owner)
    return entry


def format_match(match: ir.Match, port_names: Mapping[int, str]) -> str:
    terms = []
    for term in match.fields:
        if term.field == "in_port":
            terms.append(f"in_port={port_names.get(term.value, term.value)}")
        elif term.exact:
            terms.append(f"{term.field}={format_value(term.field, term.value)}")
        else:
            terms.append(f"{term.field}={format_value(term.field, term.value)}/{format_value(term.field, term.mask)}")
    return ",".join(terms) or "*"


def format_action(action: ir.Action, port_names: Mapping[int, str], pipeline: ir.Pipeline) -> str:
    if isinstance(action, ir.Output):
        return f"output:{port_names.get(action.port, action.port)}"
    if isinstance(action, ir.GotoTable):
        return f"goto:{pipeline.table_names.get(action.table, action.table)}"
    if isinstance(action, ir.SetField):
        return f"set:{action.field}={format_value(action.field, action.value)}"
    if isinstance(action, ir.Move):
        return f"move:{action.src}->{action.dst}"
    if isinstance(action, ir.PushVlan):
        return f"push_vlan:{action.vid}"
    if isinstance(action, ir.Punt):
        return f"punt:{action.reason}"
    if isinstance(action, ir.Conntrack):
        parts = [f"zone={action.zone}"] + (["commit"] if action.commit else []) + _format_nat(action.nat)
        if action.table is not None:
            parts.append(f"table={pipeline.table_names.get(action.table, action.table)}")
        return f"ct({','.join(parts)})"
    return {ir.PopVlan: "pop_vlan", ir.DecTtl: "dec_ttl", ir.Drop: "drop", ir.OutputInPort: "output:in_port"}[
        type(action)]


def _format_nat(nat: ir.Nat | None) -> list[str]:
    """OVS's spelling: ``nat`` (apply what the connection has) or ``nat(src=IP)``/``nat(dst=IP)`` (set it up)."""
    if nat is None:
        return []
    if nat.kind is None or nat.ipv4 is None:
        return ["nat"]
    side = "src" if nat.kind == "snat" else "dst"
    return [f"nat({side}={format_value('ipv4_src', nat.ipv4)})"]
