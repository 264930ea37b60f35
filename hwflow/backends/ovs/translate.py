"""Pipeline IR -> OpenFlow 1.3 flow_mods, and canonical keys for exact diffs.

A desired flow and the same flow dumped back from OVS must yield the same
:data:`FlowKey` and :data:`InstructionsKey`, whatever spelling os-ken or OVS
chose (masked vs exact fields, MACs as strings, instruction order), so the
backend can diff installed against desired without re-sending anything.

Cookies: the upper 16 bits are the hwflow marker, so hwflow dumps and deletes
only its own flows; the lower 48 bits hash the IR owner (its ``kind:id``), so the flows of one
logical object can be found with a cookie mask.

How the IR's less obvious parts are said in OpenFlow 1.3 + Nicira extensions:

- ``Punt`` is ``output:CONTROLLER`` with max_len OFPCML_NO_BUFFER and ends the
  action list, as the IR's walk ends there. The packet-in then carries the
  whole packet, and in its match the in_port, metadata, registers (the IR's
  ``outport`` is reg15), tunnel and ct fields the packet had: a responder
  (DHCP...) dispatches on the packet's content and reads the rest from the
  match, so the reason string does not travel. A ``SetField("metadata")``
  before the punt is written in place so the packet-in sees it.
- ``Conntrack`` is NXAST_CT: zone immediate, flag commit, recirc_table =
  ``table`` (none: the list goes on, as the IR's does), and ``nat`` nested as
  NXAST_NAT: nat(src=A), nat(dst=A), or a bare nat. OVS wants an IP match for
  ct, an IPv4 one for an IPv4 nat, and commit for snat/dnat: each is checked
  here. Actions after a ``Conntrack(table=N)`` are refused: OVS would run them
  on the untracked packet while the IR's walk goes on only in table N.
- ``ct_state``: the IR keeps 8 bits, OVS's NXM_NX_CT_STATE is 32 wide, but OVS
  defines only the low 8 (new est rel rpl inv trk snat dnat, the CT_* numbers)
  and never sets the others. The value goes over unchanged and the mask is
  the IR's mask in 32 bits, so an exact IR match is ``ct_state=V/0xff`` in
  OVS, which means the same thing; its dump keys the same way.
- ``PushVlan(vid)`` is push_vlan 0x8100 + set_field vlan_vid (OFPVID_PRESENT
  set); ``PopVlan`` is pop_vlan. OVS refuses pop_vlan or a vlan_vid rewrite
  unless a tag is known present (a vlan_vid match, ``vlan_tagged=1`` or an
  earlier push), and so does the translation. ``vlan_tagged`` is vlan_vid's
  OFPVID_PRESENT bit: 0 is ``vlan_vid=0x0000`` (untagged only), 1 the bit
  alone (any tag).
- ``tun_id`` is OXM tunnel_id, ``tun_src``/``tun_dst`` NXM_NX_TUN_IPV4_SRC/DST,
  matched and set alike.
- ``nd_reserved``/``nd_options_type`` are OVS's ERICOXM_OF fields of the same
  names (see :mod:`native`), set only: os-ken puts their OXMs ahead of the
  ICMPv6 type they need, which OVS refuses in a match (OFPBMC_BAD_PREREQ), so
  a match on them is refused here. They are what turns a neighbor
  solicitation into an advertisement in place (the flags word, the option's
  type 1 -> 2); the option's address is then written as ``nd_tll`` by a flow
  matching the advertisement, as OVS wants (see hwflow.apps.responder).
"""

from __future__ import annotations

import dataclasses
import hashlib
import ipaddress
import struct
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple

from os_ken.lib.packet import ether_types
from os_ken.ofproto import nicira_ext
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from hwflow.backends.ovs import native
from hwflow.backends.ovs.native import DATAPATH
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
    "arp_spa", "arp_tpa", "arp_sha", "arp_tha", "ct_state", "ct_zone", "ct_mark", "nd_reserved", "nd_options_type",
    *(f"reg{i}" for i in range(8)),
})
# IR fields OpenFlow spells otherwise. outport sits where OVN keeps its logical outport: far from
# the registers the layout hands out.
_RENAMED = {"outport": "reg15", "vlan_tagged": "vlan_vid", "tun_id": "tunnel_id", "tun_src": "tun_ipv4_src",
            "tun_dst": "tun_ipv4_dst", "nd_target": "ipv6_nd_target", "nd_sll": "ipv6_nd_sll", "nd_tll": "ipv6_nd_tll"}
_MAC_FIELDS = frozenset({"eth_src", "eth_dst", "arp_sha", "arp_tha", "ipv6_nd_sll", "ipv6_nd_tll"})
_IPV4_FIELDS = frozenset({"ipv4_src", "ipv4_dst", "arp_spa", "arp_tpa", "tun_ipv4_src", "tun_ipv4_dst"})
_IPV6_FIELDS = frozenset({"ipv6_src", "ipv6_dst", "ipv6_nd_target"})
# OXM widths, for telling an exact match from a masked one.
_OXM_BITS = {**ir.FIELD_BITS, "reg15": 32, "vlan_vid": 13, "icmpv4_type": 8, "icmpv4_code": 8, "icmpv6_type": 8,
             "icmpv6_code": 8, "tunnel_id": 64, "tun_ipv4_src": 32, "tun_ipv4_dst": 32, "ct_state": 32,
             "ipv6_nd_target": 128, "ipv6_nd_sll": 48, "ipv6_nd_tll": 48}
# OVS refuses a mask on these (MFM_NONE).
_NOT_MASKABLE = frozenset({"in_port", "eth_type", "ip_proto", "icmp_type", "icmp_code", "arp_op", "ct_zone"})
# Set-only: os-ken orders their OXMs (class 0x1000) ahead of the eth_type/ip_proto/icmpv6_type they need.
_NOT_MATCHABLE = frozenset({"nd_reserved", "nd_options_type"})
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
    "arp_sha": (_ARP,),
    "arp_tha": (_ARP,),
    # ND fields: an exact ICMPv6 type (IR icmp_type; its own prerequisites are icmpv6_type's, checked here).
    "ipv6_nd_target": (_V6, ("ip_proto", (58,)), ("icmp_type", (135, 136))),
    "ipv6_nd_sll": (_V6, ("ip_proto", (58,)), ("icmp_type", (135,))),
    "ipv6_nd_tll": (_V6, ("ip_proto", (58,)), ("icmp_type", (136,))),
    "nd_reserved": (_V6, ("ip_proto", (58,)), ("icmp_type", (135, 136))),
    "nd_options_type": (_V6, ("ip_proto", (58,)), ("icmp_type", (135, 136))),
    # Not match fields: what OVS wants matched before it lets an action touch the IP TTL, send the
    # packet through conntrack, or translate it to an IPv4 address.
    "nw_ttl": (("eth_type", _IP_ETH_TYPES),),
    "ct": (("eth_type", _IP_ETH_TYPES),),
    "nat to an IPv4 address": (_V4,),
}
# OXM fields OVS may dump under their older NXM name (os-ken: "<name>_nxm"), e.g. in a reg_move.
_NXM_ALIASES = frozenset({
    "in_port", "eth_dst", "eth_src", "eth_type", "ip_proto", "ipv4_src", "ipv4_dst", "tcp_src", "tcp_dst",
    "udp_src", "udp_dst", "icmpv4_type", "icmpv4_code", "arp_op", "arp_spa", "arp_tpa", "tunnel_id", "arp_sha",
    "arp_tha", "ipv6_src", "ipv6_dst", "icmpv6_type", "icmpv6_code",
})
# IR fields a Move cannot name: OpenFlow spells them with flag bits (vlan_vid), as another width
# (in_port), or cannot read them at all in 1.3 (ip_ttl).
_NOT_MOVABLE = frozenset({"in_port", "vlan_vid", "vlan_tagged", "ip_ttl"})
# IR fields only the switch writes: the ingress port, and what conntrack reports.
_NOT_WRITABLE = frozenset({"in_port", "ct_state", "ct_zone", "ct_mark"})
NAT_F_SRC, NAT_F_DST = 1, 2  # NXAST_NAT flags (OVS's NX_NAT_F_*; os-ken does not name them)
# NXAST_NAT's optional range values, in wire order: (range_present bit, bytes).
_NAT_RANGES = ((nicira_ext.NX_NAT_RANGE_IPV4_MIN, 4), (nicira_ext.NX_NAT_RANGE_IPV4_MAX, 4),
               (nicira_ext.NX_NAT_RANGE_IPV6_MIN, 16), (nicira_ext.NX_NAT_RANGE_IPV6_MAX, 16),
               (nicira_ext.NX_NAT_RANGE_PROTO_MIN, 2), (nicira_ext.NX_NAT_RANGE_PROTO_MAX, 2))
# An instruction type's rank: OpenFlow runs instructions in this order whatever the listing order.
_INSTRUCTION_ORDER = {ofp.OFPIT_APPLY_ACTIONS: 0, ofp.OFPIT_WRITE_METADATA: 1, ofp.OFPIT_GOTO_TABLE: 2}


class DumpDecodeError(ValueError):
    """A flow stats reply hwflow cannot read: cut short, or with lengths that do not add up."""


class TranslationError(ValueError):
    """An IR flow that has no faithful OpenFlow 1.3 form."""

    def __init__(self, flow: ir.Flow, reason: str) -> None:
        super().__init__(f"cannot translate flow table={flow.table} priority={flow.priority} "
                         f"owner={str(flow.owner)!r}: {reason}")
        self.flow = flow


class UnboundPort(TranslationError):
    """The flow names a logical port that has no ofport on this bridge (yet)."""

    def __init__(self, port_key: int, flow: ir.Flow) -> None:
        super().__init__(flow, f"logical port {port_key} is not bound to an OpenFlow port on this bridge")
        self.port_key = port_key


def owner_cookie(owner: ir.Owner | str) -> int:
    """Stable across processes and runs (unlike hash()), so a restarted agent recognises its flows: a hash
    of the owner's ``kind:id`` text (the same cookie for an Owner and its text)."""
    digest = hashlib.blake2b(str(owner).encode(), digest_size=OWNER_BITS // 8).digest()
    return COOKIE_MARK | int.from_bytes(digest, "big")


def is_hwflow_cookie(cookie: int) -> bool:
    return cookie & COOKIE_MARK_MASK == COOKIE_MARK


# --- IR -> OpenFlow ---------------------------------------------------------------


def oxm_name(field: str, match: ir.Match) -> str:
    """ICMP fields are icmpv4_* or icmpv6_* depending on the matched ip_proto."""
    if field in _SAME_NAME:
        return field
    if field in _RENAMED:
        return _RENAMED[field]
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


def _oxm_term(flow: ir.Flow, term: ir.FieldMatch, ports: Mapping[int, int]) -> tuple[str, int, int] | None:
    """(OXM field, value, mask) as integers, the mask full for an exact match; None for a match-all term."""
    if term.mask == 0:
        return None  # matches everything: OpenFlow has no term for it
    if term.field == "vlan_tagged":
        return _vlan_tagged_term(flow, term)
    if term.field == "ip_ttl":
        raise TranslationError(flow, "OpenFlow 1.3 cannot match ip_ttl")
    if term.field in _NOT_MATCHABLE:
        raise TranslationError(flow, f"{term.field} can only be set: OVS refuses a match on it as os-ken orders it "
                                     "(ahead of the ICMPv6 type it needs); match nd_target or icmp_type instead")
    if term.field in _NOT_MASKABLE and not term.exact:
        raise TranslationError(flow, f"{term.field} can only be matched exactly in OpenFlow "
                                     f"(mask {term.mask:#x})")
    oxm = oxm_name(term.field, flow.match)
    _check_prerequisites(flow, oxm, "a match on")
    value, mask = term.value, term.mask
    if term.field == "in_port":
        if value not in ports:
            raise UnboundPort(value, flow)
        return oxm, ports[value], _full_mask(oxm)
    if term.field == "vlan_vid":
        value, mask = value | ofp.OFPVID_PRESENT, mask | ofp.OFPVID_PRESENT
    return oxm, value, mask


def _vlan_tagged_term(flow: ir.Flow, term: ir.FieldMatch) -> tuple[str, int, int] | None:
    """vlan_tagged is OXM vlan_vid's OFPVID_PRESENT bit: 0 is OFPVID_NONE exactly (untagged frames only), 1
    the bit alone (any tag); beside a vlan_vid term, which carries the bit, it adds nothing."""
    vid = flow.match.get("vlan_vid")
    if vid is not None and vid.mask:
        if not term.value:
            raise TranslationError(flow, "vlan_tagged=0 beside a vlan_vid match never holds")
        return None
    if term.value:
        return "vlan_vid", ofp.OFPVID_PRESENT, ofp.OFPVID_PRESENT
    return "vlan_vid", ofp.OFPVID_NONE, _full_mask("vlan_vid")


def _full_mask(oxm: str) -> int:
    return (1 << _OXM_BITS[oxm]) - 1


def oxm_terms(flow: ir.Flow, ports: Mapping[int, int]) -> list[tuple[str, int, int]]:
    """The flow's match as OXM terms; raises UnboundPort / TranslationError like :func:`to_flow_mod`."""
    return [t for t in (_oxm_term(flow, term, ports) for term in flow.match.fields) if t is not None]


def to_match(flow: ir.Flow, ports: Mapping[int, int]) -> parser.OFPMatch:
    return parser.OFPMatch(**{oxm: to_user(oxm, value) if mask == _full_mask(oxm) else (
        to_user(oxm, value), to_user(oxm, mask)) for oxm, value, mask in oxm_terms(flow, ports)})


@dataclasses.dataclass(frozen=True)
class ActionPlan:
    """An IR action list in OpenFlow terms: apply-actions, then write-metadata, then goto.

    ``actions`` holds the actions' canonical keys (see :func:`instructions_key`), which are also what
    the compiler encodes: ("output", ofport), ("output", OFPP_CONTROLLER, max_len), ("set_field", oxm,
    value), ("set_nw_ttl", ttl), ("dec_nw_ttl",), ("reg_move", ...), ("push_vlan", ethertype),
    ("pop_vlan",), ("ct", flags, zone_src, zone, recirc_table, alg, nested keys) and ("nat", flags,
    *ranges).
    """

    actions: tuple[tuple[Any, ...], ...]
    metadata: int | None
    goto: int | None


@dataclasses.dataclass(slots=True)
class _Walk:
    """What OVS's checks of an action depend on, as the list is read: is a VLAN tag known present?"""

    vlan: bool

    @classmethod
    def start(cls, flow: ir.Flow) -> _Walk:
        term, tagged = flow.match.get("vlan_vid"), flow.match.get("vlan_tagged")
        # a vlan_vid term matches OFPVID_PRESENT too
        return cls(term is not None and term.mask != 0 or tagged is not None and tagged.value == 1)


def _output_key(port: int, max_len: int) -> tuple[Any, ...]:
    """max_len means something only for the controller port; OVS dumps what it was sent."""
    return ("output", port, max_len) if port == ofp.OFPP_CONTROLLER else ("output", port)


def _set_field(flow: ir.Flow, action: ir.SetField) -> tuple[Any, ...]:
    """A SetField other than metadata and vlan_vid (which depend on the actions around them)."""
    if action.field == "ip_ttl":
        _check_prerequisites(flow, "nw_ttl", "set_field on")
        return ("set_nw_ttl", action.value)
    if action.field in _NOT_WRITABLE:
        raise TranslationError(flow, f"{action.field} cannot be rewritten (only the switch sets it)")
    oxm = oxm_name(action.field, flow.match)
    _check_prerequisites(flow, oxm, "set_field on")
    return ("set_field", oxm, action.value)


def _move(flow: ir.Flow, action: ir.Move) -> list[tuple[Any, ...]]:
    for name in (action.src, action.dst):
        if name in _NOT_MOVABLE:
            raise TranslationError(flow, f"a move of {name} has no OpenFlow translation")
    if action.dst in _NOT_WRITABLE:
        raise TranslationError(flow, f"a move into {action.dst}: only the switch sets it")
    src, dst = oxm_name(action.src, flow.match), oxm_name(action.dst, flow.match)
    _check_prerequisites(flow, src, "a move from")
    _check_prerequisites(flow, dst, "a move to")
    bits = ir.FIELD_BITS[action.src]
    move = ("reg_move", src, dst, bits, 0, 0)
    # The IR copies the whole value; NXAST_REG_MOVE only the source's bits: clear the rest first.
    return [move] if bits == ir.FIELD_BITS[action.dst] else [("set_field", dst, 0), move]


def _nat(flow: ir.Flow, nat: ir.Nat) -> tuple[Any, ...]:
    if nat.kind is None:
        return ("nat", 0, *(None,) * len(_NAT_RANGES))
    _check_prerequisites(flow, "nat to an IPv4 address", "a Conntrack with")
    flags = NAT_F_SRC if nat.kind == "snat" else NAT_F_DST
    return ("nat", flags, nat.ipv4, *(None,) * (len(_NAT_RANGES) - 1))


def _conntrack(flow: ir.Flow, action: ir.Conntrack) -> tuple[Any, ...]:
    _check_prerequisites(flow, "ct", "the action")
    if action.nat is not None and action.nat.kind is not None and not action.commit:
        raise TranslationError(flow, f"Conntrack with {action.nat.kind} needs commit=True: OVS sets a translation "
                                     "up only when it commits the connection")
    state = flow.match.get("ct_state")
    if action.commit and state is not None and state.value & ir.CT_INV:
        raise TranslationError(flow, "Conntrack commit of a packet matched as ct_state +inv: OVS refuses it")
    if action.table is None:
        recirc = nicira_ext.NX_CT_RECIRC_NONE
    elif 0 <= action.table < ofp.OFPTT_MAX:
        recirc = action.table
    else:
        raise TranslationError(flow, f"Conntrack table {action.table} is outside OpenFlow's 0..{ofp.OFPTT_MAX - 1}")
    nested = () if action.nat is None else (_nat(flow, action.nat),)
    return ("ct", nicira_ext.NX_CT_F_COMMIT if action.commit else 0, None, action.zone, recirc, 0, nested)


def _needs_vlan(flow: ir.Flow, walk: _Walk, what: str) -> None:
    if not walk.vlan:
        raise TranslationError(flow, f"{what} needs a VLAN tag: match a vlan_vid or PushVlan first (OVS refuses "
                                     "it otherwise)")


def _other_action(flow: ir.Flow, action: ir.Action, walk: _Walk) -> list[tuple[Any, ...]]:
    """Every action but Output, GotoTable, Drop and SetField of metadata or an ordinary field, as action keys."""
    if isinstance(action, ir.OutputInPort):
        return [("output", ofp.OFPP_IN_PORT)]
    if isinstance(action, ir.Punt):
        return [_output_key(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)]
    if isinstance(action, ir.DecTtl):
        _check_prerequisites(flow, "nw_ttl", "dec_ttl on")
        return [("dec_nw_ttl",)]
    if isinstance(action, ir.Move):
        return _move(flow, action)
    if isinstance(action, ir.Conntrack):
        return [_conntrack(flow, action)]
    if isinstance(action, ir.PushVlan):
        walk.vlan = True
        return [("push_vlan", ether_types.ETH_TYPE_8021Q), ("set_field", "vlan_vid", action.vid | ofp.OFPVID_PRESENT)]
    if isinstance(action, ir.PopVlan):
        _needs_vlan(flow, walk, "PopVlan")
        walk.vlan = False  # the IR knows one tag: what a second one holds is never matched
        return [("pop_vlan",)]
    if isinstance(action, ir.SetField) and action.field == "vlan_vid":
        _needs_vlan(flow, walk, "a SetField of vlan_vid")
        return [("set_field", "vlan_vid", action.value | ofp.OFPVID_PRESENT)]
    raise TranslationError(flow, f"{type(action).__name__} has no OpenFlow translation")


def _reads_metadata(action: ir.Action) -> bool:
    """Actions that see the metadata as it is at that point, not as write-metadata leaves it afterwards."""
    if isinstance(action, ir.Move):
        return "metadata" in (action.src, action.dst)
    return isinstance(action, ir.Punt) or isinstance(action, ir.Conntrack) and action.table is not None


def _ends_walk(action: ir.Action) -> str | None:
    """The action after which nothing but Drop may follow: the IR's walk goes on elsewhere."""
    if isinstance(action, ir.GotoTable):
        return "GotoTable"
    if isinstance(action, ir.Conntrack) and action.table is not None:
        return "Conntrack(table=...)"
    return None


def plan_actions(flow: ir.Flow, ports: Mapping[int, int]) -> ActionPlan:
    """The order OpenFlow runs instructions and OVS dumps them; Drop and Punt end the list."""
    actions: list[tuple[Any, ...]] = []
    metadata: int | None = None
    goto: int | None = None
    ended: str | None = None
    walk = _Walk.start(flow)
    for action in flow.actions:
        if isinstance(action, ir.Drop):
            break
        if ended is not None:
            raise TranslationError(flow, f"actions after {ended} have no OpenFlow equivalent")
        if metadata is not None and _reads_metadata(action):
            actions.append(("set_field", "metadata", metadata))
            metadata = None
        if isinstance(action, ir.Output):
            if action.port not in ports:
                raise UnboundPort(action.port, flow)
            actions.append(("output", ports[action.port]))
        elif isinstance(action, ir.GotoTable):
            if action.table <= flow.table:
                raise TranslationError(flow, f"goto table {action.table}: OpenFlow only jumps forward")
            goto = action.table
        elif isinstance(action, ir.SetField) and action.field == "metadata":
            metadata = action.value
        elif isinstance(action, ir.SetField) and action.field != "vlan_vid":
            actions.append(_set_field(flow, action))
        else:
            actions += _other_action(flow, action, walk)
        if isinstance(action, ir.Punt):
            break
        ended = _ends_walk(action)
    return ActionPlan(tuple(actions), metadata, goto)


def _osken_action(action: tuple[Any, ...]) -> parser.OFPAction:
    kind = action[0]
    if kind == "output":
        return parser.OFPActionOutput(action[1], action[2] if len(action) > 2 else 0)
    if kind == "dec_nw_ttl":
        return parser.OFPActionDecNwTtl()
    if kind == "reg_move":
        _, src, dst, bits, src_ofs, dst_ofs = action
        return parser.NXActionRegMove(src, dst, bits, src_ofs, dst_ofs)
    if kind == "set_nw_ttl":
        return parser.OFPActionSetNwTtl(action[1])
    if kind == "push_vlan":
        return parser.OFPActionPushVlan(action[1])
    if kind == "pop_vlan":
        return parser.OFPActionPopVlan()
    if kind == "ct":
        _, flags, zone_src, zone, recirc, alg, nested = action
        return parser.NXActionCT(flags, zone_src or "", zone, recirc, alg, [_osken_action(a) for a in nested])
    if kind == "nat":
        ipv4_min = action[2]
        return parser.NXActionNAT(action[1], range_ipv4_min="" if ipv4_min is None else str(
            ipaddress.IPv4Address(ipv4_min)))
    return parser.OFPActionSetField(**{action[1]: to_user(action[1], action[2])})


def to_instructions(flow: ir.Flow, ports: Mapping[int, int]) -> list[parser.OFPInstruction]:
    plan = plan_actions(flow, ports)
    instructions: list[parser.OFPInstruction] = []
    if plan.actions:
        instructions.append(parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS,
                                                         [_osken_action(a) for a in plan.actions]))
    if plan.metadata is not None:
        instructions.append(parser.OFPInstructionWriteMetadata(plan.metadata, ALL_ONES_64))
    if plan.goto is not None:
        instructions.append(parser.OFPInstructionGotoTable(plan.goto))
    return instructions


def _check_table_and_priority(flow: ir.Flow) -> None:
    if not 0 <= flow.table < ofp.OFPTT_MAX:
        raise TranslationError(flow, f"table {flow.table} is outside OpenFlow's 0..{ofp.OFPTT_MAX - 1}")
    if not 0 <= flow.priority <= 0xFFFF:
        raise TranslationError(flow, f"priority {flow.priority} is outside OpenFlow's 0..65535")


def to_flow_mod(flow: ir.Flow, ports: Mapping[int, int], command: int = ofp.OFPFC_ADD) -> parser.OFPFlowMod:
    """Raises UnboundPort if a port is missing from ``ports``, TranslationError if OpenFlow cannot say it."""
    _check_table_and_priority(flow)
    return parser.OFPFlowMod(
        DATAPATH, cookie=owner_cookie(flow.owner), table_id=flow.table, command=command,
        priority=flow.priority, buffer_id=ofp.OFP_NO_BUFFER, out_port=ofp.OFPP_ANY,
        out_group=ofp.OFPG_ANY, match=to_match(flow, ports), instructions=to_instructions(flow, ports),
    )


# --- IR -> program words for the batch encoder --------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Compiled:
    """One IR flow ready for the batch encoder, with the keys the backend diffs it by."""

    key: FlowKey
    instructions: InstructionsKey
    cookie: int
    body: list[int]  # program words of the match and instructions (no flow_mod header, no final CLOSE)
    source: ir.Flow


@dataclasses.dataclass(frozen=True, slots=True)
class InstalledFlow:
    """A flow as the switch dumped it, in the canonical terms the backend diffs by."""

    key: FlowKey
    instructions: InstructionsKey
    cookie: int
    n_packets: int
    n_bytes: int


_MULTIPART_REPLY = struct.Struct("!BBHIHH4x")  # header, type, flags
_FLOW_STATS = struct.Struct("!HBxIIHHHH4xQQQ")  # length, table, durations, priority, timeouts, flags, cookie, counts
_OFP_MATCH = struct.Struct("!HH")  # type, length (without padding)
_TLV = struct.Struct("!HH")  # instruction or action: type, length
_OXM_HEADER = struct.Struct("!I")
_EXPERIMENTER_CLASS = 0xFFFF
_NX_SUBTYPE = struct.Struct("!IH")  # experimenter action: vendor, subtype
_NX_REG_MOVE = struct.Struct("!HHHII")  # n_bits, src_ofs, dst_ofs, src header, dst header
_NX_CT = struct.Struct("!HIHB3xH")  # flags, zone_src header, zone_ofs_nbits, recirc_table, alg; then actions
_NX_NAT = struct.Struct("!2xHH")  # flags, range_present; then the present ranges
_OUTPUT = struct.Struct("!IH")  # port, max_len


# Match terms whose value (not only presence and mask) decides OXM names and prerequisites.
_SHAPE_VALUES = frozenset({"eth_type", "ip_proto", "vlan_tagged"})
_PLAIN, _IN_PORT, _VLAN, _TAGGED = 0, 1, 2, 3
_TRANSFORMS = {"vlan_vid": _VLAN, "vlan_tagged": _TAGGED}
COOKIE_CACHE = 1 << 18
Shape = tuple[tuple[str, int, int], ...]


class _Step(NamedTuple):
    """One OXM term of a match shape: where its value comes from and how it is written (a tuple: the
    per-flow loop unpacks it)."""

    index: int  # position in ir.Match.fields
    transform: int  # _PLAIN, _IN_PORT (logical port -> ofport), _VLAN (| OFPVID_PRESENT), _TAGGED (vlan_tagged)
    oxm: str
    template: int
    wide: bool  # value over 64 bits: two words
    mask: int  # OXM mask (full for exact)
    mask_words: tuple[int, ...]  # () for an exact term


class FlowCompiler:
    """IR flows -> the compact program the native encoder turns into flow_mods, without os-ken objects.

    Produces the bytes :func:`to_flow_mod` would serialize and the keys :func:`flow_key` and
    :func:`instructions_key` would compute (tests/unit/test_ovs_translate.py checks both), at a fraction
    of the cost: what depends only on a match's *shape* (its fields, masks, eth_type and ip_proto) --
    validation, OXM names, templates, term order -- is worked out once per shape and cached.
    """

    def __init__(self, catalog: native.Catalog) -> None:
        self.catalog = catalog
        index = catalog.index
        self._fields = catalog.fields
        self._ids = {name: index[name] for name in ("flow_mod", "match", "apply_actions", "output", "set_nw_ttl",
                                                      "write_metadata", "goto_table")}
        self._builder = native.ProgramBuilder(catalog)  # the less common actions, from their keys
        self._cookies: dict[ir.Owner | str, int] = {}
        self._shapes: dict[Shape, tuple[tuple[_Step, ...], tuple[int, ...]]] = {}
        # exact OXM header (and experimenter id) -> field name, for reading dumps
        self._headers = {(f.header_word, f.header[4:]): name for name, f in catalog.fields.items()}
        self._headers.update({(native.field_from_os_ken(f"{name}_nxm").header_word, b""): name
                              for name in _NXM_ALIASES if name in catalog.fields})
        self._set_fields: dict[tuple[Shape, str], tuple[str, int, bool]] = {}

    def cookie(self, owner: ir.Owner | str) -> int:
        """Cached: most owners have several flows. Emptied when it reaches COOKIE_CACHE, so owners long
        deleted do not pile up in a long-running agent."""
        cookie = self._cookies.get(owner)
        if cookie is None:
            if len(self._cookies) >= COOKIE_CACHE:
                self._cookies.clear()
            cookie = self._cookies[owner] = owner_cookie(owner)
        return cookie

    def forget_owners(self) -> None:
        """Empty the cookie cache before a full sync compiles every flow wanted: it then holds the owners of
        those only, not every owner since the agent started (ports long deleted; COOKIE_CACHE is far off)."""
        self._cookies = {}  # a new dict: another thread may be copying the old one (owners)

    def owners(self) -> list[ir.Owner | str]:
        """The owners whose cookies are cached: those of every flow compiled since the cache was last emptied
        (a copy, which another thread may take: hwflow.agent.published names the owners of dumped flows so)."""
        return list(self._cookies)

    def _step(self, index: int, oxm: str, transform: int, mask: int) -> _Step:
        field = self.catalog.field(oxm)
        wide = field.width > 8
        exact = mask == _full_mask(oxm)
        name = f"oxm:{oxm}" if exact else f"oxm:{oxm}/masked"
        mask_words = () if exact else (mask >> 64, mask & native.CLOSE) if wide else (mask,)
        return _Step(index, transform, oxm, self.catalog.index[name], wide, mask, mask_words)

    def _recipe(self, flow: ir.Flow, shape: Shape) -> tuple[tuple[_Step, ...], tuple[int, ...]]:
        """Validates the shape as :func:`oxm_terms` does; returns its steps in os-ken order and the key order."""
        steps = []
        for i, term in enumerate(flow.match.fields):
            if term.mask == 0:
                continue
            if term.field == "in_port":
                _oxm_term(flow, term, {term.value: 0})  # validation only: the ofport is looked up per flow
                steps.append(self._step(i, "in_port", _IN_PORT, _full_mask("in_port")))
                continue
            oxm_term = _oxm_term(flow, term, {})
            if oxm_term is None:  # vlan_tagged=1 beside a vlan_vid
                continue
            oxm, _, mask = oxm_term
            steps.append(self._step(i, oxm, _TRANSFORMS.get(term.field, _PLAIN), mask))
        steps.sort(key=lambda step: self._fields[step.oxm].rank)
        key_order = tuple(sorted(range(len(steps)), key=lambda i: steps[i].oxm))
        recipe = self._shapes[shape] = (tuple(steps), key_order)
        return recipe

    def _match(self, flow: ir.Flow, ports: Mapping[int, int]) -> tuple[Shape, list[int], MatchKey]:
        fields = flow.match.fields
        shape = tuple([(f.field, f.mask, f.value if f.field in _SHAPE_VALUES else 0) for f in fields])
        recipe = self._shapes.get(shape) or self._recipe(flow, shape)
        steps, key_order = recipe
        words = [self._ids["match"]]
        terms = []
        for index, transform, oxm, template, wide, mask, mask_words in steps:
            value = fields[index].value
            if transform == _IN_PORT:
                ofport = ports.get(value)
                if ofport is None:
                    raise UnboundPort(value, flow)
                value = ofport
            elif transform == _VLAN:
                value |= ofp.OFPVID_PRESENT
            elif transform == _TAGGED:
                value = ofp.OFPVID_PRESENT if value else ofp.OFPVID_NONE
            terms.append((oxm, value, mask))
            if wide:
                words += (template, value >> 64, value & native.CLOSE, *mask_words)
            else:
                words += (template, value, *mask_words)
        words.append(native.CLOSE)
        key = tuple([terms[i] for i in key_order])
        return shape, words, key

    def _set_field(self, flow: ir.Flow, shape: Shape, action: ir.SetField) -> tuple[str, int, bool]:
        """(oxm or "set_nw_ttl", template, wide) for a SetField in a match of this shape, validated once."""
        cached = self._set_fields.get((shape, action.field))
        if cached is None:
            kind = _set_field(flow, action)
            if kind[0] == "set_nw_ttl":
                cached = ("set_nw_ttl", self._ids["set_nw_ttl"], False)
            else:
                field = self.catalog.field(kind[1])
                cached = (kind[1], self.catalog.index[f"set_field:{kind[1]}"], field.width > 8)
            self._set_fields[(shape, action.field)] = cached
        return cached

    def _instructions(self, flow: ir.Flow, shape: Shape, ports: Mapping[int, int]
                      ) -> tuple[list[int], InstructionsKey]:
        """Same rules and errors as :func:`plan_actions`, straight to words and key; the common actions
        (Output, GotoTable, SetField) inline, the others through the same helpers."""
        ids = self._ids
        words: list[int] = []
        keys: list[tuple[Any, ...]] = []
        metadata: int | None = None
        goto: int | None = None
        ended: str | None = None
        walk: _Walk | None = None
        for action in flow.actions:
            kind = action.__class__
            if kind is ir.Drop:
                break
            if ended is not None:
                raise TranslationError(flow, f"actions after {ended} have no OpenFlow equivalent")
            if kind is ir.Output:
                ofport = ports.get(action.port)
                if ofport is None:
                    raise UnboundPort(action.port, flow)
                words += (ids["output"], ofport, 0)
                keys.append(("output", ofport))
            elif kind is ir.GotoTable:
                if action.table <= flow.table:
                    raise TranslationError(flow, f"goto table {action.table}: OpenFlow only jumps forward")
                goto = action.table
                ended = "GotoTable"
            elif kind is ir.SetField and action.field == "metadata":
                metadata = action.value
            elif kind is ir.SetField and action.field != "vlan_vid":
                oxm, template, wide = self._set_field(flow, shape, action)
                value = action.value
                words += (template, value >> 64, value & native.CLOSE) if wide else (template, value)
                keys.append(("set_nw_ttl", value) if oxm == "set_nw_ttl" else ("set_field", oxm, value))
            else:
                if metadata is not None and _reads_metadata(action):
                    keys.append(("set_field", "metadata", metadata))
                    words += self._builder.action_words(keys[-1])
                    metadata = None
                walk = walk or _Walk.start(flow)
                for key in _other_action(flow, action, walk):
                    words += self._builder.action_words(key)
                    keys.append(key)
                if kind is ir.Punt:
                    break
                ended = _ends_walk(action)
        key: list[tuple[Any, ...]] = []
        if words:
            words = [ids["apply_actions"], *words, native.CLOSE]
            key.append(("apply", tuple(keys)))
        if metadata is not None:
            words += (ids["write_metadata"], metadata, ALL_ONES_64)
            key.append(("write_metadata", metadata, ALL_ONES_64))
        if goto is not None:
            words += (ids["goto_table"], goto)
            key.append(("goto", goto))
        return words, tuple(key)

    def compile(self, flow: ir.Flow, ports: Mapping[int, int]) -> Compiled:
        """Raises UnboundPort / TranslationError as :func:`to_flow_mod` does."""
        if not 0 <= flow.table < ofp.OFPTT_MAX or not 0 <= flow.priority <= 0xFFFF:
            _check_table_and_priority(flow)
        shape, words, match_key = self._match(flow, ports)
        instructions, instructions_key = self._instructions(flow, shape, ports)
        words += instructions
        return Compiled((flow.table, flow.priority, match_key), instructions_key, self.cookie(flow.owner), words,
                        flow)

    def flow_mod(self, table: int, priority: int, cookie: int, cookie_mask: int, command: int,
                 body: Sequence[int]) -> list[int]:
        """A whole flow_mod's program words."""
        return [self._ids["flow_mod"], cookie, cookie_mask, table, command, 0, 0, priority, ofp.OFP_NO_BUFFER,
                ofp.OFPP_ANY, ofp.OFPG_ANY, 0, *body, native.CLOSE]

    def key_body(self, key: FlowKey) -> list[int]:
        """Program words of a bare match rebuilt from a canonical key (for deleting an installed flow)."""
        steps = [(self._step(0, oxm, _PLAIN, mask), value) for oxm, value, mask in key[2]]
        words = [self._ids["match"]]
        for step, value in sorted(steps, key=lambda s: self._fields[s[0].oxm].rank):
            if step.wide:
                words += (step.template, value >> 64, value & native.CLOSE, *step.mask_words)
            else:
                words += (step.template, value, *step.mask_words)
        words.append(native.CLOSE)
        return words


    # --- reading dumps -----------------------------------------------------------------------------

    def _oxm(self, data: bytes, offset: int) -> tuple[str, int, int | None, int]:
        """(field, value, mask or None, size) of the OXM TLV at ``offset``."""
        (header,) = _OXM_HEADER.unpack_from(data, offset)
        exp = data[offset + 4:offset + 8] if header >> 16 == _EXPERIMENTER_CLASS else b""
        length = (header & 0xFF) - len(exp)
        masked = bool(header & 0x100)
        width = length // 2 if masked else length
        exact = (header & ~0x1FF) | (len(exp) + width)
        name = self._headers.get((exact, exp)) or f"oxm_{exact:#010x}{exp.hex()}"
        start = offset + 4 + len(exp)
        value = int.from_bytes(data[start:start + width], "big")
        mask = int.from_bytes(data[start + width:start + length], "big") if masked else None
        return name, value, mask, 4 + (header & 0xFF)

    def _match_key(self, data: bytes, offset: int, end: int) -> MatchKey:
        """As :func:`match_key` computes it from an os-ken OFPMatch."""
        terms = []
        while offset < end:
            name, value, mask, size = self._oxm(data, offset)
            if mask is None:
                mask = (1 << _OXM_BITS.get(name, 8 * (size - 4))) - 1
            if mask:
                terms.append((name, value & mask, mask))
            offset += size
        return tuple(sorted(terms))

    def _actions_key(self, data: bytes, offset: int, end: int) -> tuple[tuple[Any, ...], ...]:
        """As :func:`_action_key` computes it from os-ken actions."""
        keys: list[tuple[Any, ...]] = []
        while offset < end:
            kind, length = _TLV.unpack_from(data, offset)
            if length < 8:
                raise ValueError(f"corrupt action (type {kind}, length {length}) in a flow stats reply")
            if kind == ofp.OFPAT_OUTPUT:
                keys.append(_output_key(*_OUTPUT.unpack_from(data, offset + 4)))
            elif kind == ofp.OFPAT_SET_FIELD:
                name, value, _, _ = self._oxm(data, offset + 4)
                keys.append(("set_field", name, value))
            elif kind == ofp.OFPAT_SET_NW_TTL:
                keys.append(("set_nw_ttl", data[offset + 4]))
            elif kind == ofp.OFPAT_DEC_NW_TTL:
                keys.append(("dec_nw_ttl",))
            elif kind == ofp.OFPAT_PUSH_VLAN:
                keys.append(("push_vlan", _TLV.unpack_from(data, offset + 4)[0]))
            elif kind == ofp.OFPAT_POP_VLAN:
                keys.append(("pop_vlan",))
            else:
                keys.append(self._nx_action_key(data, offset, length) if kind == ofp.OFPAT_EXPERIMENTER
                            else ("unknown", kind, bytes(data[offset:offset + length])))
            offset += length
        return tuple(keys)

    def _header_name(self, header: int) -> str:
        return self._headers.get((header, b""), f"oxm_{header:#010x}")

    def _nx_action_key(self, data: bytes, offset: int, length: int) -> tuple[Any, ...]:
        """NXAST_REG_MOVE, NXAST_CT (its nested actions keyed alike) and NXAST_NAT; others unknown."""
        vendor, subtype = _NX_SUBTYPE.unpack_from(data, offset + 4)
        if vendor == native.NX_VENDOR and subtype == nicira_ext.NXAST_REG_MOVE:
            bits, src_ofs, dst_ofs, src, dst = _NX_REG_MOVE.unpack_from(data, offset + 10)
            return ("reg_move", self._header_name(src), self._header_name(dst), bits, src_ofs, dst_ofs)
        if vendor == native.NX_VENDOR and subtype == nicira_ext.NXAST_CT:
            flags, zone_src, zone, recirc, alg = _NX_CT.unpack_from(data, offset + 10)
            nested = self._actions_key(data, offset + 10 + _NX_CT.size, offset + length)
            return ("ct", flags, self._header_name(zone_src) if zone_src else None, zone, recirc, alg, nested)
        if vendor == native.NX_VENDOR and subtype == nicira_ext.NXAST_NAT:
            flags, present = _NX_NAT.unpack_from(data, offset + 10)
            at, ranges = offset + 10 + _NX_NAT.size, []
            for bit, size in _NAT_RANGES:
                ranges.append(int.from_bytes(data[at:at + size], "big") if present & bit else None)
                at += size if present & bit else 0
            return ("nat", flags, *ranges)
        return ("unknown", ofp.OFPAT_EXPERIMENTER, bytes(data[offset:offset + length]))

    def _instructions_key(self, data: bytes, offset: int, end: int) -> InstructionsKey:
        """As :func:`instructions_key` computes it from os-ken instructions."""
        keyed = []
        while offset < end:
            kind, length = _TLV.unpack_from(data, offset)
            if length < 8:
                raise ValueError(f"corrupt instruction (type {kind}, length {length}) in a flow stats reply")
            if kind == ofp.OFPIT_APPLY_ACTIONS:
                key: tuple[Any, ...] = ("apply", self._actions_key(data, offset + 8, offset + length))
            elif kind == ofp.OFPIT_WRITE_METADATA:
                key = ("write_metadata", *struct.unpack_from("!QQ", data, offset + 8))
            elif kind == ofp.OFPIT_GOTO_TABLE:
                key = ("goto", data[offset + 4])
            else:
                key = ("unknown", kind, bytes(data[offset:offset + length]))
            keyed.append((_INSTRUCTION_ORDER.get(kind, 99), key))
            offset += length
        return tuple(k for _, k in sorted(keyed) if k != ("apply", ()))

    def decode_flow_stats(self, replies: Iterable[bytes]) -> list[InstalledFlow]:
        """Flow stats multipart replies -> installed flows with the keys :func:`flow_key` and
        :func:`instructions_key` would give, without building os-ken objects (the slow part of a big
        dump); tests/unit/test_ovs_translate.py checks both agree.

        A reply that is cut short, or whose lengths do not add up, is a DumpDecodeError (a ValueError) saying
        where; nothing else is raised, and every length moves on (a zero one cannot loop)."""
        flows = []
        for n, data in enumerate(replies):
            try:
                flows += self._flow_stats(data)
            except (struct.error, IndexError, ValueError) as exc:
                raise DumpDecodeError(f"flow stats reply {n + 1} ({len(data)} bytes) is malformed: {exc}") from None
        return flows

    def _flow_stats(self, data: bytes) -> list[InstalledFlow]:
        flows = []
        _, _, length, _, kind, _ = _MULTIPART_REPLY.unpack_from(data)
        if kind != ofp.OFPMP_FLOW:
            raise ValueError(f"expected a flow stats reply, got multipart type {kind}")
        if length > len(data):
            raise ValueError(f"its header claims {length} bytes")
        offset = _MULTIPART_REPLY.size
        while offset < length:
            (size, table, _, _, priority, _, _, _, cookie, packets, octets) = _FLOW_STATS.unpack_from(data, offset)
            match_at = offset + _FLOW_STATS.size
            _, match_len = _OFP_MATCH.unpack_from(data, match_at)
            instructions_at = match_at + (match_len + 7) // 8 * 8
            if size < _FLOW_STATS.size + _OFP_MATCH.size or offset + size > length or instructions_at > offset + size \
                    or match_len < _OFP_MATCH.size:
                raise ValueError(f"the flow entry at offset {offset} has length {size} and a match of {match_len}")
            flows.append(InstalledFlow(
                (table, priority, self._match_key(data, match_at + _OFP_MATCH.size, match_at + match_len)),
                self._instructions_key(data, instructions_at, offset + size), cookie, packets, octets))
            offset += size
        return flows


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


def _canonical_field(name: str) -> str:
    """The OXM name of a field os-ken parsed under its NXM alias."""
    base = name.removesuffix("_nxm")
    return base if base in _NXM_ALIASES else name


def _nat_key(action: parser.NXActionNAT) -> tuple[Any, ...]:
    ranges = (action.range_ipv4_min, action.range_ipv4_max, action.range_ipv6_min, action.range_ipv6_max)
    protos = (action.range_proto_min, action.range_proto_max)
    return ("nat", action.flags, *(int(ipaddress.ip_address(r)) if r else None for r in ranges), *protos)


def _action_key(action: parser.OFPAction) -> tuple[Any, ...]:
    if isinstance(action, parser.OFPActionOutput):
        return _output_key(action.port, action.max_len)
    if isinstance(action, parser.OFPActionPushVlan):
        return ("push_vlan", action.ethertype)
    if isinstance(action, parser.OFPActionPopVlan):
        return ("pop_vlan",)
    if isinstance(action, parser.NXActionCT):
        zone_src = _canonical_field(action.zone_src) if action.zone_src else None
        return ("ct", action.flags, zone_src, action.zone_ofs_nbits, action.recirc_table, action.alg,
                tuple(_action_key(a) for a in action.actions))
    if isinstance(action, parser.NXActionNAT):
        return _nat_key(action)
    if isinstance(action, parser.OFPActionDecNwTtl):
        return ("dec_nw_ttl",)
    if isinstance(action, parser.NXActionRegMove):
        return ("reg_move", _canonical_field(action.src_field), _canonical_field(action.dst_field), action.n_bits,
                action.src_ofs, action.dst_ofs)
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
