"""Pipeline IR -> OpenFlow 1.3 flow_mods, and canonical keys for exact diffs.

A desired flow and the same flow dumped back from OVS must yield the same
:data:`FlowKey` and :data:`InstructionsKey`, whatever spelling os-ken or OVS
chose (masked vs exact fields, MACs as strings, instruction order), so the
backend can diff installed against desired without re-sending anything.

Cookies: the upper 16 bits are the hwflow marker, so hwflow dumps and deletes
only its own flows; the lower 48 bits hash the IR owner, so the flows of one
logical object can be found with a cookie mask.
"""

from __future__ import annotations

import hashlib
import ipaddress
from collections.abc import Iterable, Mapping
from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from hwflow.pipeline import ir

HWFLOW_MARK = 0x4857  # "HW"
COOKIE_MARK = HWFLOW_MARK << 48
COOKIE_MARK_MASK = 0xFFFF << 48
OWNER_BITS = 48
ALL_ONES_64 = (1 << 64) - 1

MatchKey = tuple[tuple[str, int, int], ...]  # sorted (oxm field, value, mask)
FlowKey = tuple[int, int, MatchKey]  # (table, priority, match)
InstructionsKey = tuple[tuple[Any, ...], ...]

# IR field -> OXM field, where the names differ or depend on the match.
_SAME_NAME = frozenset({
    "in_port", "metadata", "eth_src", "eth_dst", "eth_type", "vlan_vid", "ipv4_src", "ipv4_dst",
    "ipv6_src", "ipv6_dst", "ip_proto", "tcp_src", "tcp_dst", "udp_src", "udp_dst", "arp_op",
    "arp_spa", "arp_tpa",
})
_MAC_FIELDS = frozenset({"eth_src", "eth_dst", "arp_sha", "arp_tha"})
_IPV4_FIELDS = frozenset({"ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa"})
_IPV6_FIELDS = frozenset({"ipv6_src", "ipv6_dst", "ipv6_nd_target"})
# OXM widths, for telling an exact match from a masked one.
_OXM_BITS = {**ir.FIELD_BITS, "vlan_vid": 13, "icmpv4_type": 8, "icmpv4_code": 8, "icmpv6_type": 8,
             "icmpv6_code": 8}
# OVS refuses a mask on these (MFM_NONE).
_NOT_MASKABLE = frozenset({"in_port", "eth_type", "ip_proto", "icmp_type", "icmp_code", "arp_op"})
_IP_ETH_TYPES = (ir.ETH_TYPE_IPV4, ir.ETH_TYPE_IPV6)
_V4 = ("eth_type", (ir.ETH_TYPE_IPV4,))
_V6 = ("eth_type", (ir.ETH_TYPE_IPV6,))
_ARP = ("eth_type", (ir.ETH_TYPE_ARP,))
# OXM field -> the exact matches it needs: OpenFlow 1.3's prerequisite table (checked recursively).
_PREREQUISITES: dict[str, tuple[tuple[str, tuple[int, ...]], ...]] = {
    "ipv4_src": (_V4,),
    "ipv4_dst": (_V4,),
    "ipv6_src": (_V6,),
    "ipv6_dst": (_V6,),
    "ip_proto": (("eth_type", _IP_ETH_TYPES),),
    "tcp_src": (("ip_proto", (6,)),),
    "tcp_dst": (("ip_proto", (6,)),),
    "udp_src": (("ip_proto", (17,)),),
    "udp_dst": (("ip_proto", (17,)),),
    "icmpv4_type": (_V4, ("ip_proto", (1,))),
    "icmpv4_code": (_V4, ("ip_proto", (1,))),
    "icmpv6_type": (_V6, ("ip_proto", (58,))),
    "icmpv6_code": (_V6, ("ip_proto", (58,))),
    "arp_op": (_ARP,),
    "arp_spa": (_ARP,),
    "arp_tpa": (_ARP,),
}
# An instruction type's rank: OpenFlow runs instructions in this order whatever the listing order.
_INSTRUCTION_ORDER = {ofp.OFPIT_APPLY_ACTIONS: 0, ofp.OFPIT_WRITE_METADATA: 1, ofp.OFPIT_GOTO_TABLE: 2}


class Of13Datapath:
    """What os-ken message classes need from a datapath to serialize and parse: the protocol modules."""

    ofproto = ofp
    ofproto_parser = parser
    id = None


DATAPATH = Of13Datapath()


class TranslationError(ValueError):
    """An IR flow that has no faithful OpenFlow 1.3 form."""

    def __init__(self, flow: ir.Flow, reason: str) -> None:
        super().__init__(f"cannot translate flow table={flow.table} priority={flow.priority} "
                         f"owner={flow.owner!r}: {reason}")
        self.flow = flow


class UnboundPort(TranslationError):
    """The flow names a logical port that has no ofport on this bridge (yet)."""

    def __init__(self, port_key: int, flow: ir.Flow) -> None:
        super().__init__(flow, f"logical port {port_key} is not bound to an OpenFlow port on this bridge")
        self.port_key = port_key


def owner_cookie(owner: str) -> int:
    """Stable across processes and runs (unlike hash()), so a restarted agent recognises its flows."""
    digest = hashlib.blake2b(owner.encode(), digest_size=OWNER_BITS // 8).digest()
    return COOKIE_MARK | int.from_bytes(digest, "big")


def is_hwflow_cookie(cookie: int) -> bool:
    return cookie & COOKIE_MARK_MASK == COOKIE_MARK


# --- IR -> OpenFlow ---------------------------------------------------------------


def oxm_name(field: str, match: ir.Match) -> str:
    """ICMP fields are icmpv4_* or icmpv6_* depending on the matched ip_proto."""
    if field in _SAME_NAME:
        return field
    if field in ("icmp_type", "icmp_code"):
        proto = match.get("ip_proto")
        family = "icmpv6" if proto is not None and proto.value == 58 else "icmpv4"
        return f"{family}_{field.split('_')[1]}"
    raise ValueError(f"IR field {field!r} cannot be expressed in OpenFlow 1.3")


def to_user(oxm: str, value: int) -> Any:
    """An integer as os-ken wants it for ``oxm`` (MACs and IPs are strings)."""
    if oxm in _MAC_FIELDS:
        return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))
    if oxm in _IPV4_FIELDS:
        return str(ipaddress.IPv4Address(value))
    if oxm in _IPV6_FIELDS:
        return str(ipaddress.IPv6Address(value))
    return value


def from_user(oxm: str, value: Any) -> int:
    if isinstance(value, int):
        return value
    if oxm in _MAC_FIELDS:
        return int(value.replace(":", ""), 16)
    return int(ipaddress.ip_address(value))


def _check_prerequisites(flow: ir.Flow, oxm: str, what: str) -> None:
    """OVS would refuse the flow_mod anyway; failing here names the flow and the missing term."""
    for name, allowed in _PREREQUISITES.get(oxm, ()):
        term = flow.match.get(name)
        if term is None or not term.exact or term.value not in allowed:
            wanted = " or ".join(f"{v:#06x}" if name == "eth_type" else str(v) for v in allowed)
            raise TranslationError(flow, f"{what} {oxm} needs an exact match on {name}={wanted} "
                                         "(an OpenFlow prerequisite the app must add)")
        _check_prerequisites(flow, name, "the prerequisite")


def _match_term(flow: ir.Flow, term: ir.FieldMatch, ports: Mapping[int, int]) -> tuple[str, Any] | None:
    if term.mask == 0:
        return None  # matches everything: OpenFlow has no term for it
    if term.field == "ip_ttl":
        raise TranslationError(flow, "OpenFlow 1.3 cannot match ip_ttl")
    if term.field in _NOT_MASKABLE and not term.exact:
        raise TranslationError(flow, f"{term.field} can only be matched exactly in OpenFlow "
                                     f"(mask {term.mask:#x})")
    oxm = oxm_name(term.field, flow.match)
    _check_prerequisites(flow, oxm, "a match on")
    value, mask = term.value, term.mask
    if term.field == "in_port":
        if value not in ports:
            raise UnboundPort(value, flow)
        return oxm, ports[value]
    if term.field == "vlan_vid":
        value, mask = value | ofp.OFPVID_PRESENT, mask | ofp.OFPVID_PRESENT
    if mask == (1 << _OXM_BITS[oxm]) - 1:
        return oxm, to_user(oxm, value)
    return oxm, (to_user(oxm, value), to_user(oxm, mask))


def to_match(flow: ir.Flow, ports: Mapping[int, int]) -> parser.OFPMatch:
    terms = (_match_term(flow, term, ports) for term in flow.match.fields)
    return parser.OFPMatch(**dict(t for t in terms if t is not None))


def _set_field(flow: ir.Flow, action: ir.SetField) -> parser.OFPAction:
    if action.field == "ip_ttl":
        return parser.OFPActionSetNwTtl(action.value)
    if action.field == "in_port":
        raise TranslationError(flow, "in_port cannot be rewritten")
    oxm = oxm_name(action.field, flow.match)
    _check_prerequisites(flow, oxm, "set_field on")
    value = action.value | ofp.OFPVID_PRESENT if action.field == "vlan_vid" else action.value
    return parser.OFPActionSetField(**{oxm: to_user(oxm, value)})


def to_instructions(flow: ir.Flow, ports: Mapping[int, int]) -> list[parser.OFPInstruction]:
    """Apply-actions, then write-metadata, then goto: the order OpenFlow runs them and OVS dumps them."""
    actions: list[parser.OFPAction] = []
    metadata: int | None = None
    goto: int | None = None
    for action in flow.actions:
        if isinstance(action, ir.Drop):
            break
        if goto is not None:
            raise TranslationError(flow, "actions after GotoTable have no OpenFlow equivalent")
        if isinstance(action, ir.Output):
            if action.port not in ports:
                raise UnboundPort(action.port, flow)
            actions.append(parser.OFPActionOutput(ports[action.port], 0))
        elif isinstance(action, ir.GotoTable):
            if action.table <= flow.table:
                raise TranslationError(flow, f"goto table {action.table}: OpenFlow only jumps forward")
            goto = action.table
        elif action.field == "metadata":
            metadata = action.value
        else:
            actions.append(_set_field(flow, action))
    instructions: list[parser.OFPInstruction] = []
    if actions:
        instructions.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions))
    if metadata is not None:
        instructions.append(parser.OFPInstructionWriteMetadata(metadata, ALL_ONES_64))
    if goto is not None:
        instructions.append(parser.OFPInstructionGotoTable(goto))
    return instructions


def to_flow_mod(flow: ir.Flow, ports: Mapping[int, int], command: int = ofp.OFPFC_ADD) -> parser.OFPFlowMod:
    """Raises UnboundPort if a port is missing from ``ports``, TranslationError if OpenFlow cannot say it."""
    if not 0 <= flow.table < ofp.OFPTT_MAX:
        raise TranslationError(flow, f"table {flow.table} is outside OpenFlow's 0..{ofp.OFPTT_MAX - 1}")
    if not 0 <= flow.priority <= 0xFFFF:
        raise TranslationError(flow, f"priority {flow.priority} is outside OpenFlow's 0..65535")
    return parser.OFPFlowMod(
        DATAPATH, cookie=owner_cookie(flow.owner), table_id=flow.table, command=command,
        priority=flow.priority, buffer_id=ofp.OFP_NO_BUFFER, out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY, match=to_match(flow, ports), instructions=to_instructions(flow, ports),
    )


# --- canonical forms ------------------------------------------------------------------


def match_key(match: parser.OFPMatch) -> MatchKey:
    """Masks made explicit, values pre-masked, all-wildcard terms dropped, sorted by field."""
    terms = []
    for oxm, spec in match.items():
        value, mask = spec if isinstance(spec, tuple) else (spec, None)
        value = from_user(oxm, value)
        full = (1 << _OXM_BITS.get(oxm, value.bit_length())) - 1
        mask = full if mask is None else from_user(oxm, mask)
        if mask:
            terms.append((oxm, value & mask, mask))
    return tuple(sorted(terms))


def flow_key(table_id: int, priority: int, match: parser.OFPMatch) -> FlowKey:
    return (table_id, priority, match_key(match))


def _action_key(action: parser.OFPAction) -> tuple[Any, ...]:
    if isinstance(action, parser.OFPActionOutput):
        return ("output", action.port)
    if isinstance(action, parser.OFPActionSetField):
        return ("set_field", action.key, from_user(action.key, action.value))
    if isinstance(action, parser.OFPActionSetNwTtl):
        return ("set_nw_ttl", action.nw_ttl)
    return ("unknown", action.type, str(action))


def _instruction_key(instruction: parser.OFPInstruction) -> tuple[Any, ...]:
    if isinstance(instruction, parser.OFPInstructionActions) and instruction.type == ofp.OFPIT_APPLY_ACTIONS:
        return ("apply", tuple(_action_key(a) for a in instruction.actions))
    if isinstance(instruction, parser.OFPInstructionWriteMetadata):
        return ("write_metadata", instruction.metadata, instruction.metadata_mask)
    if isinstance(instruction, parser.OFPInstructionGotoTable):
        return ("goto", instruction.table_id)
    return ("unknown", instruction.type, str(instruction))


def instructions_key(instructions: Iterable[parser.OFPInstruction]) -> InstructionsKey:
    """Sorted by execution order; an empty apply-actions is the same as none."""
    keyed = [(_INSTRUCTION_ORDER.get(i.type, 99), _instruction_key(i)) for i in instructions]
    return tuple(k for _, k in sorted(keyed) if k != ("apply", ()))
