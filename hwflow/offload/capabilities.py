"""What a NIC's embedded switch can do, in the pipeline IR's own terms.

Drivers (``drivers/``) build a :class:`Capabilities` for each device they
handle; the partitioner only ever asks it questions. Field names are IR
field names (``eth_dst``, ``ipv4_src``...); action names are the HW action
vocabulary below. The same structure is what the simulated NIC's profile
holds, so the sim refuses exactly what a device with that profile would.

The JSON form (:meth:`Capabilities.to_dict`) is published in the chassis
record and printed by ``hwflow capabilities --format json``; its keys are
documented in :data:`SCHEMA` and never change meaning (new keys may be added,
with a default that keeps old documents valid).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

# How a device accepts a mask on a match field.
MASK_EXACT = "exact"  # only all-ones masks
MASK_PREFIX = "prefix"  # contiguous leading ones (CIDR-style)
MASK_ANY = "any"  # arbitrary bit masks
MASK_KINDS = (MASK_EXACT, MASK_PREFIX, MASK_ANY)

# HW actions hwflow knows how to ask for (the tc action behind each in brackets).
ACTION_REDIRECT = "redirect"  # mirred egress redirect to another port of the eswitch
ACTION_DROP = "drop"  # gact drop
ACTION_PASS = "pass"  # gact pass: hand the packet to the representor (software)
ACTION_GOTO_CHAIN = "goto_chain"  # gact goto chain N
ACTION_VLAN_PUSH = "vlan_push"  # vlan push
ACTION_VLAN_POP = "vlan_pop"  # vlan pop
ACTION_TUNNEL_ENCAP = "tunnel_encap"  # tunnel_key set (types in Capabilities.tunnel_encap)
ACTION_TUNNEL_DECAP = "tunnel_decap"  # tunnel_key unset on a rule matching enc_* keys (Capabilities.tunnel_decap)
ACTION_REWRITE = "rewrite"  # pedit set of a header field (fields in Capabilities.rewrite_fields)
ACTION_TTL_DEC = "ttl_dec"  # pedit add -1 on the IPv4 TTL / IPv6 hop limit
ACTION_CT = "ct"  # ct [commit] [zone Z] [nat] (what exactly: Capabilities.conntrack)
HW_ACTIONS = (ACTION_REDIRECT, ACTION_DROP, ACTION_PASS, ACTION_GOTO_CHAIN, ACTION_VLAN_PUSH, ACTION_VLAN_POP,
              ACTION_TUNNEL_ENCAP, ACTION_TUNNEL_DECAP, ACTION_REWRITE, ACTION_TTL_DEC, ACTION_CT)

TUNNEL_TYPES = ("vxlan", "geneve", "gre")

# Where a packet that misses every rule of a chain N > 0 goes (chain 0's misses always reach software).
CHAIN_MISS_CONTINUE = "continue"  # software tc goes on at chain N (mlx5 restores the chain id from reg_c0 and
# tags the skb); a chain that is only in hardware (skip_sw) is empty there and the kernel drops the packet
CHAIN_MISS_RESTART = "restart"  # software sees the packet from chain 0, as if the NIC had not touched it
CHAIN_MISSES = (CHAIN_MISS_CONTINUE, CHAIN_MISS_RESTART)
# tc-flower(8) ct_state flags a rule may match on.
CT_STATES = ("trk", "new", "est", "rel", "rpl", "inv")

# Quirks: named constraints a device is known to impose beyond what the fields above say.
QUIRK_TUNNEL_UDP_DST_PORT = "tunnel_match_needs_udp_dst_port"
QUIRKS = {
    QUIRK_TUNNEL_UDP_DST_PORT: "a rule matching tunnel (enc_*) keys must also match the outer UDP destination "
    "port (enc_dst_port) exactly",
}

SCHEMA = """\
{"match_fields": {FIELD: "exact"|"prefix"|"any"},   IR fields the device matches, and the masks it takes
 "actions": [ACTION, ...],                         redirect drop pass goto_chain vlan_push vlan_pop
                                                   tunnel_encap tunnel_decap rewrite ttl_dec ct
 "max_rules": N,                                   rule capacity of the eswitch (all ports together)
 "max_actions_per_rule": N,
 "max_chains": N|null,                             tc chains usable (1: chain 0 only; null: no device limit)
 "chain_miss": "continue"|"restart",               where a miss in chain N>0 goes: software tc at chain N
                                                   (mlx5; dropped there when the chain is hardware-only),
                                                   or software from chain 0 (default: continue)
 "counters": BOOL,                                 per-rule hit counters read back from hardware
 "tunnel_encap": [vxlan|geneve|gre, ...],           tunnel types of tunnel_encap
 "tunnel_decap": [vxlan|geneve|gre, ...],           tunnel types of tunnel_decap
 "rewrite_fields": [FIELD, ...],                   IR fields the rewrite action can set
 "conntrack": null | {"states": [trk|new|est|rel|rpl|inv, ...], "zones": BOOL, "nat": BOOL},
 "quirks": [{"name": NAME, "description": TEXT, "source": URL}, ...]}"""
"""The documented JSON form of :class:`Capabilities` (``hwflow capabilities --help`` prints it)."""


class CapabilitiesError(ValueError):
    """A capability document that is malformed or contradicts itself."""


@dataclasses.dataclass(frozen=True)
class Conntrack:
    """What a device's conntrack offload covers."""

    states: frozenset[str]  # ct_state flags a rule may match
    zones: bool  # zones other than 0 (ct zone Z, match ct_zone)
    nat: bool  # ct nat (SNAT/DNAT)

    def to_dict(self) -> dict[str, Any]:
        return {"states": sorted(self.states), "zones": self.zones, "nat": self.nat}


@dataclasses.dataclass(frozen=True)
class Quirk:
    """A named constraint, why it is believed (``source``: public documentation or driver code)."""

    name: str
    description: str
    source: str

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "description": self.description, "source": self.source}


def quirk(name: str, source: str) -> Quirk:
    """A known quirk with its standard description."""
    return Quirk(name, QUIRKS[name], source)


@dataclasses.dataclass(frozen=True)
class Capabilities:
    match_fields: Mapping[str, str]  # IR field -> mask kind
    actions: frozenset[str]
    max_rules: int
    max_actions_per_rule: int = 1
    max_chains: int | None = None  # None: the device adds no limit to tc's chain range
    chain_miss: str = CHAIN_MISS_CONTINUE  # CHAIN_MISSES: where a packet missing a chain N > 0 goes
    counters: bool = False
    tunnel_encap: frozenset[str] = frozenset()
    tunnel_decap: frozenset[str] = frozenset()
    rewrite_fields: frozenset[str] = frozenset()
    conntrack: Conntrack | None = None
    quirks: tuple[Quirk, ...] = ()

    def __post_init__(self) -> None:
        _check(self)

    def can_match(self, field: str, mask: int, width: int) -> bool:
        kind = self.match_fields.get(field)
        if kind is None:
            return False
        if kind == MASK_ANY or mask == (1 << width) - 1:
            return True
        if kind == MASK_PREFIX:
            inverted = ~mask & ((1 << width) - 1)
            return inverted & (inverted + 1) == 0  # mask is ones then zeros
        return False

    def can_encap(self, tunnel: str) -> bool:
        return tunnel in self.tunnel_encap

    def can_decap(self, tunnel: str) -> bool:
        return tunnel in self.tunnel_decap

    def can_rewrite(self, field: str) -> bool:
        return field in self.rewrite_fields

    def can_conntrack(self, states: Iterable[str] = (), zone: int = 0, nat: bool = False) -> bool:
        """Whether a ct action / ct_state match with these states, zone and NAT fits the device."""
        ct = self.conntrack
        if ct is None:
            return False
        return set(states) <= ct.states and (zone == 0 or ct.zones) and (not nat or ct.nat)

    def has_quirk(self, name: str) -> bool:
        return any(q.name == name for q in self.quirks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "match_fields": dict(sorted(self.match_fields.items())),
            "actions": sorted(self.actions),
            "max_rules": self.max_rules,
            "max_actions_per_rule": self.max_actions_per_rule,
            "max_chains": self.max_chains,
            "chain_miss": self.chain_miss,
            "counters": self.counters,
            "tunnel_encap": sorted(self.tunnel_encap),
            "tunnel_decap": sorted(self.tunnel_decap),
            "rewrite_fields": sorted(self.rewrite_fields),
            "conntrack": self.conntrack.to_dict() if self.conntrack else None,
            "quirks": [q.to_dict() for q in self.quirks],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Capabilities:
        """Parse the JSON form; missing keys take their defaults, unknown ones are refused (typos)."""
        if not isinstance(data, Mapping):
            raise CapabilitiesError(f"capabilities: expected an object, got {type(data).__name__}")
        unknown = sorted(set(data) - set(_DEFAULTS) - {"match_fields", "actions", "max_rules"})
        if unknown:
            raise CapabilitiesError(f"capabilities: unknown key(s) {unknown}; known: "
                                    f"{sorted({'match_fields', 'actions', 'max_rules', *_DEFAULTS})}")
        fields = data.get("match_fields", {})
        if not isinstance(fields, Mapping):
            raise CapabilitiesError("capabilities: match_fields must be an object {FIELD: MASK_KIND}")
        return cls(
            match_fields=dict(fields),
            actions=_names(data, "actions", ()),
            max_rules=_int(data, "max_rules", 0),
            max_actions_per_rule=_int(data, "max_actions_per_rule", 1),
            max_chains=_optional_int(data, "max_chains"),
            chain_miss=str(data.get("chain_miss", CHAIN_MISS_CONTINUE)),
            counters=_bool(data, "counters", False),
            tunnel_encap=_names(data, "tunnel_encap", ()),
            tunnel_decap=_names(data, "tunnel_decap", ()),
            rewrite_fields=_names(data, "rewrite_fields", ()),
            conntrack=_conntrack(data.get("conntrack")),
            quirks=_quirks(data.get("quirks", [])),
        )


_DEFAULTS = {"max_actions_per_rule": 1, "max_chains": None, "chain_miss": CHAIN_MISS_CONTINUE, "counters": False,
             "tunnel_encap": (), "tunnel_decap": (), "rewrite_fields": (), "conntrack": None, "quirks": ()}


def _int(data: Mapping[str, Any], key: str, default: int) -> int:
    value = data.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CapabilitiesError(f"capabilities: {key} must be an integer, got {value!r}")
    return value


def _optional_int(data: Mapping[str, Any], key: str) -> int | None:
    return None if data.get(key) is None else _int(data, key, 0)


def _bool(data: Mapping[str, Any], key: str, default: bool) -> bool:
    value = data.get(key, default)
    if not isinstance(value, bool):
        raise CapabilitiesError(f"capabilities: {key} must be true or false, got {value!r}")
    return value


def _names(data: Mapping[str, Any], key: str, default: Iterable[str]) -> frozenset[str]:
    value = data.get(key, default)
    if isinstance(value, str) or not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise CapabilitiesError(f"capabilities: {key} must be a list of names, got {value!r}")
    return frozenset(value)


def _conntrack(value: Any) -> Conntrack | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or set(value) - {"states", "zones", "nat"}:
        raise CapabilitiesError(f"capabilities: conntrack must be null or {{states, zones, nat}}, got {value!r}")
    return Conntrack(_names(value, "states", ()), _bool(value, "zones", False), _bool(value, "nat", False))


def _quirks(value: Any) -> tuple[Quirk, ...]:
    if not isinstance(value, (list, tuple)):
        raise CapabilitiesError(f"capabilities: quirks must be a list, got {value!r}")
    out = []
    for item in value:
        if not isinstance(item, Mapping) or set(item) != {"name", "description", "source"}:
            raise CapabilitiesError(f"capabilities: each quirk is {{name, description, source}}, got {item!r}")
        out.append(Quirk(str(item["name"]), str(item["description"]), str(item["source"])))
    return tuple(out)


def _problems(caps: Capabilities) -> list[str]:
    """Every way ``caps`` is malformed or contradicts itself."""
    out = []
    bad_masks = {k: v for k, v in caps.match_fields.items() if v not in MASK_KINDS}
    if bad_masks:
        out.append(f"unknown mask kind(s) {bad_masks}; use one of {MASK_KINDS}")
    unknown = caps.actions - set(HW_ACTIONS)
    if unknown:
        out.append(f"unknown action(s) {sorted(unknown)}; known: {HW_ACTIONS}")
    for key, low in (("max_rules", 0), ("max_actions_per_rule", 1), ("max_chains", 1)):
        if getattr(caps, key) is not None and getattr(caps, key) < low:
            out.append(f"{key} must be at least {low}, got {getattr(caps, key)}")
    for key, action in (("tunnel_encap", ACTION_TUNNEL_ENCAP), ("tunnel_decap", ACTION_TUNNEL_DECAP)):
        types = getattr(caps, key)
        if types - set(TUNNEL_TYPES):
            out.append(f"{key}: unknown tunnel type(s) {sorted(types - set(TUNNEL_TYPES))}; known: {TUNNEL_TYPES}")
        if bool(types) != (action in caps.actions):
            out.append(f"{key} lists tunnel types exactly when actions has {action!r}")
    if bool(caps.rewrite_fields) != (ACTION_REWRITE in caps.actions):
        out.append(f"rewrite_fields lists fields exactly when actions has {ACTION_REWRITE!r}")
    if (caps.conntrack is not None) != (ACTION_CT in caps.actions):
        out.append(f"conntrack is an object exactly when actions has {ACTION_CT!r} (null otherwise)")
    if caps.conntrack is not None and caps.conntrack.states - set(CT_STATES):
        out.append(f"conntrack: unknown state(s) {sorted(caps.conntrack.states - set(CT_STATES))}; "
                   f"known: {CT_STATES}")
    if caps.chain_miss not in CHAIN_MISSES:
        out.append(f"chain_miss {caps.chain_miss!r} is not one of {CHAIN_MISSES}")
    if ACTION_GOTO_CHAIN in caps.actions and caps.max_chains == 1:
        out.append(f"action {ACTION_GOTO_CHAIN!r} needs more than one chain (max_chains is 1)")
    unknown_quirks = [q.name for q in caps.quirks if q.name not in QUIRKS]
    if unknown_quirks:
        out.append(f"unknown quirk(s) {unknown_quirks}; known: {sorted(QUIRKS)}")
    return out


def _check(caps: Capabilities) -> None:
    problems = _problems(caps)
    if problems:
        raise CapabilitiesError("capabilities: " + "; ".join(problems))


NO_OFFLOAD = Capabilities(match_fields={}, actions=frozenset(), max_rules=0)
