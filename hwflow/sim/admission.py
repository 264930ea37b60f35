"""Does a capability profile allow this tc-flower rule? The simulated NIC's admission check.

A real driver parses a flower rule and answers EOPNOTSUPP for anything its
hardware cannot do. The simulated NIC asks this module instead, with the
profile's :class:`Capabilities`, so it refuses exactly what the profile does
not claim. Keys and actions this module does not know (the flower encoder
grows faster than this check) are refused by name, never let through: a
profile can only be trusted for what it was checked against.
"""

from __future__ import annotations

import errno
from collections.abc import Collection

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.probe import PEDIT_FIELDS, TUNNEL_PORTS
from hwflow.offload.capabilities import (
    ACTION_CT,
    ACTION_GOTO_CHAIN,
    ACTION_REDIRECT,
    ACTION_REWRITE,
    ACTION_TTL_DEC,
    ACTION_TUNNEL_DECAP,
    ACTION_TUNNEL_ENCAP,
    ACTION_VLAN_POP,
    ACTION_VLAN_PUSH,
    QUIRK_TUNNEL_UDP_DST_PORT,
    Capabilities,
)

TUNNEL_KEY_PREFIX = "enc_"  # tc-flower(8): enc_key_id, enc_dst_ip, enc_dst_port, ...
TUNNEL_UDP_DST_PORT = "enc_dst_port"
TUNNEL_BY_PORT = {port: kind for kind, port in TUNNEL_PORTS.items()}  # how a tunnel_key set names its type
# ct_state flags (pkt_cls.h TCA_FLOWER_KEY_CT_FLAGS_*) in the capability model's names.
CT_FLAGS = {fl.TCA_FLOWER_KEY_CT_FLAGS_NEW: "new", fl.TCA_FLOWER_KEY_CT_FLAGS_ESTABLISHED: "est",
            fl.TCA_FLOWER_KEY_CT_FLAGS_RELATED: "rel", fl.TCA_FLOWER_KEY_CT_FLAGS_TRACKED: "trk",
            fl.TCA_FLOWER_KEY_CT_FLAGS_INVALID: "inv", fl.TCA_FLOWER_KEY_CT_FLAGS_REPLY: "rpl"}


class NotAdmitted(Exception):
    """The profile does not allow the rule; ``what`` names the part it does not allow."""

    def __init__(self, what: str, err: int = errno.EOPNOTSUPP) -> None:
        super().__init__(what)
        self.what = what
        self.errno = err


def action_name(action: object) -> str:
    """The capability an action needs, in hwflow.offload.capabilities' vocabulary, or a name for it."""
    if isinstance(action, fl.Mirred):
        if action.egress and action.redirect:
            return ACTION_REDIRECT
        direction = "egress" if action.egress else "ingress"
        return f"mirred {direction} {'redirect' if action.redirect else 'mirror'}"
    if isinstance(action, fl.Gact):
        return action.verdict
    if isinstance(action, fl.Vlan):
        return {"push": ACTION_VLAN_PUSH, "pop": ACTION_VLAN_POP}.get(action.action, ACTION_REWRITE)
    if isinstance(action, fl.TunnelKey):
        return ACTION_TUNNEL_DECAP if action.unset else ACTION_TUNNEL_ENCAP
    if isinstance(action, fl.Pedit):
        return ACTION_TTL_DEC if all(k.cmd == "add" for k in action.keys) else ACTION_REWRITE
    if isinstance(action, fl.Ct):
        return ACTION_CT
    if isinstance(action, fl.Csum):
        return "csum"
    return f"{type(action).__name__} (an action hwflow/sim/admission.py does not know)"


def pedit_fields(action: fl.Pedit) -> set[str]:
    """The IR fields a pedit writes; NotAdmitted naming the bytes of any other."""
    out = set()
    for key in action.keys:
        for i in range(4):
            if key.mask >> (8 * (3 - i)) & 0xFF == 0xFF:
                continue  # byte kept
            offset = key.offset + i
            field = next((f for lo, hi, f in PEDIT_FIELDS.get(key.htype, []) if lo <= offset < hi), None)
            if field is None:
                raise NotAdmitted(f"pedit of {key.htype} header byte {offset} (no field hwflow models there)")
            out.add(field)
    return out


def _check_action_details(action: object, caps: Capabilities) -> None:
    """The part of an action the capability model qualifies: tunnel type, rewritten field, ct zone/NAT."""
    if isinstance(action, fl.TunnelKey) and not action.unset:
        kind = "geneve" if action.geneve_opts else TUNNEL_BY_PORT.get(action.dst_port or TUNNEL_PORTS["vxlan"])
        if kind is None or not caps.can_encap(kind):
            raise NotAdmitted(f"tunnel_key set to {kind or f'UDP port {action.dst_port}'} (encap types: "
                              f"{', '.join(sorted(caps.tunnel_encap)) or 'none'})")
    if isinstance(action, fl.Pedit):
        fields = pedit_fields(action)
        if all(k.cmd == "add" for k in action.keys):
            if fields != {"ip_ttl"} or any(k.value & ~k.mask != k.value or _added_byte(k) != 0xFF
                                           for k in action.keys):
                raise NotAdmitted(f"pedit add on {', '.join(sorted(fields))} (only a TTL decrement is modelled)")
            return
        missing = sorted(f for f in fields if not caps.can_rewrite(f))
        if missing or any(k.cmd == "add" for k in action.keys):
            raise NotAdmitted(f"rewrite of {', '.join(missing) or 'a mix of set and add'}")
    if isinstance(action, fl.Vlan) and action.action == "modify" and not caps.can_rewrite("vlan_vid"):
        raise NotAdmitted("rewrite of vlan_vid (vlan modify)")
    if isinstance(action, fl.Ct) and not caps.can_conntrack(zone=action.zone, nat=bool(action.nat)):
        raise NotAdmitted(f"ct zone {action.zone}{' nat ' + action.nat if action.nat else ''}")


def _added_byte(key: fl.PeditKey) -> int:
    """The byte a TTL-decrementing pedit add adds (0xff: minus one), at the one byte the mask leaves open."""
    for i in range(4):
        shift = 8 * (3 - i)
        if key.mask >> shift & 0xFF != 0xFF:
            return key.value >> shift & 0xFF
    return 0


def check_keys(rule: fl.FlowerRule, caps: Capabilities) -> None:
    """Every matched key must be a field the profile matches, with a mask kind it takes."""
    if rule.protocol != fl.ETH_P_ALL and not caps.can_match("eth_type", 0xFFFF, 16):
        raise NotAdmitted("match on eth_type")
    for spec, value, mask in rule.keys.items():
        # the ethertype after a tag is the packet's ethertype (what the IR's eth_type is, and how OVS offloads
        # a tagged flow: protocol 802.1Q, vlan_ethtype): the profile's eth_type says whether the NIC matches it
        field = "eth_type" if spec.field in ("vlan_eth_type", "cvlan_eth_type") else getattr(spec, "ir_field", None)
        if field is None:
            raise NotAdmitted(f"match on flower key {spec.field} (no IR field known for it)")
        if field == "ct_state":
            states = {name for bit, name in CT_FLAGS.items() if value & mask & bit}
            if not caps.can_conntrack(states):
                raise NotAdmitted(f"match on ct_state +{' +'.join(sorted(states)) or ' (none)'}")
        elif field == "ct_zone":
            if not caps.can_conntrack(zone=value):
                raise NotAdmitted(f"match on ct_zone {value}")
        elif not caps.can_match(field, mask, spec.width):
            raise NotAdmitted(f"match on {field} with mask {mask:#x}")
    if caps.has_quirk(QUIRK_TUNNEL_UDP_DST_PORT):
        _check_tunnel_port_quirk(rule)
    _check_tunnel_type(rule, caps)


def _check_tunnel_type(rule: fl.FlowerRule, caps: Capabilities) -> None:
    """A rule matching tunnel (enc_*) keys receives decapsulated traffic: its tunnel type must be decap-able."""
    keys = {spec.field: value for spec, value, _ in rule.keys.items()}
    if not any(k.startswith(TUNNEL_KEY_PREFIX) for k in keys):
        return
    port = keys.get(TUNNEL_UDP_DST_PORT)
    kind = TUNNEL_BY_PORT.get(port) if port is not None else None
    if port is not None and kind is None:
        raise NotAdmitted(f"a tunnel match on UDP port {port} (no tunnel type hwflow knows uses it)")
    if (kind is not None and not caps.can_decap(kind)) or not caps.tunnel_decap:
        raise NotAdmitted(f"a {kind or 'tunnel'} match (decap types: {', '.join(sorted(caps.tunnel_decap)) or 'none'})")


def _check_tunnel_port_quirk(rule: fl.FlowerRule) -> None:
    keys = {spec.field: (mask, spec.width) for spec, _, mask in rule.keys.items()}
    if any(k.startswith(TUNNEL_KEY_PREFIX) for k in keys):
        mask, width = keys.get(TUNNEL_UDP_DST_PORT, (0, 16))
        if mask != (1 << width) - 1:
            raise NotAdmitted(f"a tunnel match without an exact {TUNNEL_UDP_DST_PORT} "
                              f"(quirk {QUIRK_TUNNEL_UDP_DST_PORT})")


def _csum_after_rewrite(action: object, caps: Capabilities) -> bool:
    """csum is how tc asks to fix checksums after a pedit: part of rewrite / ttl_dec, not an ability of its own."""
    return isinstance(action, fl.Csum) and bool({ACTION_REWRITE, ACTION_TTL_DEC} & caps.actions)


def check_actions(rule: fl.FlowerRule, caps: Capabilities, ports: Collection[int]) -> None:
    """Action count, kinds, redirect targets inside this switch, and forward gotos within the chain range."""
    if caps.max_chains is not None and rule.chain >= caps.max_chains:
        raise NotAdmitted(f"a rule in chain {rule.chain} (the profile has chains 0..{caps.max_chains - 1})")
    if len(rule.actions) > caps.max_actions_per_rule:
        raise NotAdmitted(f"{len(rule.actions)} actions in one rule (max {caps.max_actions_per_rule})")
    for action in rule.actions:
        name = action_name(action)
        if name not in caps.actions and not _csum_after_rewrite(action, caps):
            raise NotAdmitted(f"action {name}")
        _check_action_details(action, caps)
        if isinstance(action, fl.Mirred) and action.ifindex not in ports:
            raise NotAdmitted(f"redirect to ifindex {action.ifindex} (not a port of this switch)")
        if name == ACTION_GOTO_CHAIN and isinstance(action, fl.Gact):
            if action.chain <= rule.chain:
                raise NotAdmitted(f"goto from chain {rule.chain} to chain {action.chain} (not a later chain)")
            if caps.max_chains is not None and action.chain >= caps.max_chains:
                raise NotAdmitted(f"goto chain {action.chain} (the profile has chains 0..{caps.max_chains - 1})")


def check(rule: fl.FlowerRule, caps: Capabilities, ports: Collection[int]) -> None:
    """Raise :class:`NotAdmitted` unless a device with ``caps`` would take ``rule`` in hardware.

    ``ports`` are the ifindexes of the switch's own ports (where a redirect may go).
    """
    if rule.flags & fl.TCA_CLS_FLAGS_SKIP_HW:
        raise NotAdmitted("a skip_hw rule (it belongs to the kernel datapath)")
    check_keys(rule, caps)
    check_actions(rule, caps, ports)

