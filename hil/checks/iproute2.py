"""iproute2's reading of a flower filter (``tc -j filter show``), in hwflow's terms.

iproute2 decodes the kernel's dump with its own code (f_flower.c), so when
it reads the keys hwflow meant, the encoder's attribute numbers and byte
orders are right, which a round trip through hwflow's own decoder cannot
show. Its JSON names keys by role (``src_ip``, ``dst_port``, ``icmp_type``)
rather than by attribute: the rule's protocol and ip_proto say which hwflow
key a name stands for. Values come as numbers, names (``tcp``, ``ipv4``,
``+trk+est``), ``value/prefixlen``, ``value/mask``, or a value with a
separate ``NAME_mask`` entry in hex.
"""

from __future__ import annotations

import ipaddress
from typing import Any

from hwflow.backends.tc import flower as fl

PROTOCOLS = {"ip": fl.ETH_P_IP, "ipv4": fl.ETH_P_IP, "ipv6": fl.ETH_P_IPV6, "802.1Q": fl.ETH_P_8021Q,
             "802.1ad": 0x88A8, "arp": 0x0806, "rarp": 0x8035, "all": fl.ETH_P_ALL}
IP_PROTOS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "icmpv6": 58}
ARP_OPS = {"request": 1, "reply": 2}
CT_STATES = {"new": 1 << 0, "est": 1 << 1, "rel": 1 << 2, "trk": 1 << 3, "inv": 1 << 4, "rpl": 1 << 5}
# iproute2 names that are hwflow field names too.
SAME = ("vlan_id", "vlan_prio", "cvlan_id", "cvlan_prio", "ip_proto", "ip_tos", "ip_ttl", "tcp_flags",
        "arp_sip", "arp_tip", "arp_op", "arp_sha", "arp_tha", "enc_key_id", "enc_dst_port",
        "ct_state", "ct_zone", "ct_mark")
RENAMED = {"dst_mac": "eth_dst", "src_mac": "eth_src", "vlan_ethtype": "vlan_eth_type",
           "cvlan_ethtype": "cvlan_eth_type"}


def width(field: str) -> int:
    spec = next((s for s in fl.KEY_SPECS if s.field == field), None)
    if spec is None:
        raise ValueError(f"iproute2 shows {field}, which hwflow's encoder has no key for")
    return spec.width


def field_for(name: str, value: Any, rule: fl.FlowerRule) -> str:
    """The hwflow key an iproute2 name stands for in this rule."""
    if name in RENAMED:
        return RENAMED[name]
    if name in SAME:
        return name
    family = "ipv6" if rule.protocol == fl.ETH_P_IPV6 else "ipv4"
    if name in ("src_ip", "dst_ip"):
        return f"{family}_{name[:3]}"
    if name in ("enc_src_ip", "enc_dst_ip"):
        return f"enc_{'ipv6' if ':' in str(value) else 'ipv4'}_{name[4:7]}"
    if name in ("src_port", "dst_port"):
        transport = {6: "tcp", 17: "udp", 132: "sctp"}.get(getattr(rule.keys, "ip_proto", None) or -1, "?")
        return f"{transport}_{name[:3]}"
    if name in ("icmp_type", "icmp_code"):
        return f"icmp{'v6' if family == 'ipv6' else 'v4'}_{name[5:]}"
    raise ValueError(f"iproute2 key {name!r} has no hwflow counterpart known to hil/checks/iproute2.py")


def number(text: str, hex_default: bool = False) -> int:
    if text.startswith("[") and text.endswith("]"):
        return int(text[1:-1])
    if text.startswith("0x") or hex_default:
        return int(text, 16)
    return int(text)


def parse_value(field: str, value: Any) -> tuple[int, int]:
    """(value, mask) from one iproute2 JSON value; the mask is all ones unless the text carries one."""
    bits = width(field)
    full = (1 << bits) - 1
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ValueError(f"iproute2 value {value!r} for {field} is neither a number nor text")
    if isinstance(value, int):
        return value, full
    if field == "ct_state":
        return ct_state(value)
    text, _, mask = value.partition("/")
    if field.endswith(("_mac", "_sha", "_tha")) or field in ("eth_dst", "eth_src"):
        parse = _mac
    elif any(part in field for part in ("ipv4", "ipv6", "_sip", "_tip")):
        parse = _ip
    else:
        names = {**PROTOCOLS, **IP_PROTOS, **ARP_OPS}
        return (names[text] if text in names else number(text)), (number(mask, text.startswith("0x"))
                                                                 if mask else full)
    if not mask:
        return parse(text), full
    return parse(text), (full ^ ((1 << (bits - int(mask))) - 1) if mask.isdigit() else parse(mask))


def _mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def _ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def ct_state(text: str) -> tuple[int, int]:
    """``+trk+est-new``: + sets a bit in value and mask, - only in the mask."""
    value = mask = 0
    for chunk in text.replace("-", " -").replace("+", " +").split():
        bit = CT_STATES[chunk[1:]]
        mask |= bit
        if chunk[0] == "+":
            value |= bit
    return value, mask


def keys(options: dict[str, Any], rule: fl.FlowerRule) -> dict[str, tuple[int, int]]:
    """iproute2's keys as {hwflow field: (value, mask)}; eth_type is left out (it is the rule's protocol)."""
    raw = options.get("keys", {})
    out = {}
    for name, value in raw.items():
        if name == "eth_type" or name.endswith("_mask"):
            continue
        field = field_for(name, value, rule)
        val, mask = parse_value(field, value)
        if f"{name}_mask" in raw:  # print_masked_*: value and mask apart, the mask (and a text value) in hex
            extra = raw[f"{name}_mask"]
            mask = extra if isinstance(extra, int) else number(extra, hex_default=True)
            val = value if isinstance(value, int) else number(value, hex_default=True)
        out[field] = (val, mask)
    return out


def protocol(entry: dict[str, Any]) -> int:
    name = entry.get("protocol", "")
    return PROTOCOLS[name] if name in PROTOCOLS else number(name, hex_default=True)


def protocol_name(ethertype: int) -> str:
    """iproute2's name for an ethertype in action output (``802.1Q``, ``802.1ad``)."""
    return next(name for name, value in PROTOCOLS.items() if value == ethertype and name != "ipv4")


def actions(options: dict[str, Any]) -> list[tuple]:
    """Each action as (kind, ...): mirred (action, direction, device), gact (verdict, chain),
    vlan (action, id, protocol, priority); other kinds by kind alone."""
    out: list[tuple] = []
    for act in sorted(options.get("actions", []), key=lambda a: a.get("order", 0)):
        if act.get("kind") == "mirred":
            out.append(("mirred", act.get("mirred_action"), act.get("direction"), act.get("to_dev")))
        elif act.get("kind") == "gact":
            control = act.get("control_action", {})
            out.append(("gact", control.get("type"), control.get("chain", 0)))
        elif act.get("kind") == "vlan":
            out.append(("vlan", act.get("vlan_action"), act.get("id"), act.get("protocol"), act.get("priority")))
        else:
            out.append((act.get("kind"),))
    return out
