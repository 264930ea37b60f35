"""Security groups: stateful filtering of what leaves (egress) and reaches (ingress) a local port.

Neutron's semantics. A local port without security groups is not filtered.
A port with groups may send (egress) only what some egress rule of its
groups allows and receive (ingress) only what some ingress rule allows;
the replies of an allowed connection pass both ways. Only IP is filtered:
ARP passes, as do IPv6 neighbour discovery and MLD (router advertisements
only towards the port, never from it), DHCP and DHCPv6 requests from the
port (those the agent answers are punted by the dhcp stage before
``sg_egress`` anyway) and the replies towards it.

Two apps, because the two checks sit at two places of the pipeline: egress
right after a packet is classified and port-secured (before routing), and
ingress once L2 has chosen the destination port in ``outport`` (before
delivery). Flood groups (``outport`` with :data:`ir.FLOOD_GROUP`) pass
ingress unfiltered: broadcast and multicast are not filtered here.

Each stage has four tables. The entry table (``egress``, ``ingress``,
after the stage's direction) sends a filtered port's IP packets
through conntrack in the port's zone, recirculating into ``state``, where
``+inv`` is dropped, ``+est``/``+rel`` go on and ``+new`` goes to ``rules``.
A rule admitting the packet sends it to ``commit``, where the connection is
committed in the port's zone and the packet goes on; the rest is dropped.
The rules of a group are emitted once, not per port: a port in exactly one
group carries the group's ``unique_key`` in a register from the entry to
the group's flows in ``rules``. A port in several groups (or in a group not
stored yet, key 0) gets its own copy of its groups' rules, matched on the
port. So flows grow as ports + rules, not ports x rules.

Conntrack zone: one per local port, its local number on this host
(:meth:`Topology.local_number`: the port's ``unique_key`` when that is free
and small enough, so usually the key). A packet
between two local ports is tracked twice, at the sender's egress and at the
receiver's ingress; with one shared zone the sender's commit would make the
receiver see ``+est`` and skip its ingress rules. Per-port zones keep the two
checks apart (and overlapping tenant addresses apart). A zone is 16 bits
and l3's NAT zones hold the upper half (0x8000 and up), so a host can filter
0x7fff local ports; a port beyond that cannot be tracked here and all its IP
traffic is dropped (failing closed), with an error naming it.

Removing a rule stops new connections at once; connections it had admitted
stay established (no conntrack flush).

Owners: ``<app>:defaults`` (the pass-through, and while a local port is
filtered, what does not depend on a port), ``port:<id>`` (a filtered local
port's entry and commit, and its own rules if it has them) and
``security_group:<id>`` (a group's shared rules, while a local port uses
them). A rule's peers (``remote_group_id``) are the addresses of every
port in that group, so a port joining, leaving or renumbering recomputes
the rules of every group with a rule naming one of its groups.
"""

from __future__ import annotations

import abc
import ipaddress
import logging
from collections.abc import Iterable, Iterator

from hwflow.apps.base import OWNER_PORT, App, defaults_owner, port_owner
from hwflow.apps.l3 import NAT_ZONE_BASE
from hwflow.apps.port_security import prefix
from hwflow.model.objects import PROTOCOL_NAMES, Port, SecurityGroup, SecurityGroupRule
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import KIND_LOCAL, KIND_PORT, Change, Topology

LOG = logging.getLogger(__name__)

KIND_RULE = SecurityGroupRule.kind
KIND_GROUP = SecurityGroup.kind
TABLES = ("state", "rules", "commit")  # after the entry table, which is named after the direction

PRIO_INVALID = 300
PRIO_PASS = 200  # entry: traffic no rule filters; state: established connections
PRIO_RELATED = 190
PRIO_TRACK = 100  # entry: a filtered port's IP; state: a new connection; rules: a rule admitting it; commit
PRIO_MISS = 0

MAX_ZONE = NAT_ZONE_BASE - 1  # the NAT zones of l3 take the upper half of the 16 bits
IP_TYPES = {"IPv4": ir.ETH_TYPE_IPV4, "IPv6": ir.ETH_TYPE_IPV6}
PROTOCOL_NUMBERS = {name: int(number) for number, name in PROTOCOL_NAMES.items()}
PORT_FIELDS = {6: "tcp_dst", 17: "udp_dst"}  # destination-port fields the IR has (none for sctp)
IPPROTO_UDP, IPPROTO_ICMPV6 = PROTOCOL_NUMBERS["udp"], PROTOCOL_NUMBERS["icmpv6"]
ICMPV6_MLD = (130, 131, 132, 143)
ICMPV6_RS, ICMPV6_RA, ICMPV6_NS, ICMPV6_NA = 133, 134, 135, 136

Terms = tuple[ir.FieldMatch, ...]


def ct_match(*bits: int) -> ir.FieldMatch:
    """ct_state with every bit of ``bits`` set (tracked packets only)."""
    value = ir.CT_TRK
    for bit in bits:
        value |= bit
    return ir.FieldMatch("ct_state", value, value)


def port_masks(low: int, high: int) -> list[tuple[int, int]]:
    """The fewest (value, mask) pairs of 16-bit ports covering exactly low..high."""
    out = []
    while low <= high:
        size = low & -low if low else 1 << 16
        while low + size - 1 > high:
            size >>= 1
        out.append((low, 0xFFFF & ~(size - 1)))
        low += size
    return out


def prefix_match(field: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> ir.FieldMatch:
    return ir.FieldMatch(field, *prefix(field, net))


def zone_of(port: Port, topo: Topology) -> int | None:
    """The local port's conntrack zone, or None (logged) when the host has none left for it."""
    zone = topo.local_number(port.id)
    if zone is not None and zone <= MAX_ZONE:
        return zone
    LOG.error("port %s: no conntrack zone left on this host (1..%d are taken by other local ports), so its security "
              "groups cannot be enforced and its IP traffic is dropped; move some ports to another host",
              port.id, MAX_ZONE)
    return None


def _key(group: SecurityGroup | None) -> int:
    return group.unique_key if group is not None else 0


class GroupIndex:
    """Which ports are in which group and which rules belong to (or name) a group.

    :class:`hwflow.pipeline.topology.Topology` indexes only single-valued
    fields, and a port's ``security_groups`` is a list, so each stage keeps
    this index itself: built from a topology on a full compile, then moved
    along by the changes the compiler hands to ``affected``. Every update
    removes what the old object contributed and adds what the new one does,
    so replaying a change the index already reflects leaves it as it is.
    """

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.members: dict[str, set[str]] = {}  # group -> port ids
        self.rules: dict[str, set[str]] = {}  # group -> its rule ids
        self.naming: dict[str, set[str]] = {}  # group -> ids of the rules with it as remote_group_id
        self._peers: dict[str, dict[str, Terms]] = {}  # group -> cached peer terms by field
        # caches, since every port of a group has the same rules: (groups, direction) -> rules, and
        # rule id -> peer field -> (the rule, its peers, its terms), valid while both are the same objects
        self._rules_of: dict[tuple[tuple[str, ...], str], list[SecurityGroupRule]] = {}
        self._terms: dict[str, dict[str, tuple[SecurityGroupRule, Terms | None, list[Terms]]]] = {}
        for port in topo.ports.values():
            self._port(port, add=True)
        for rule in topo.of(KIND_RULE).values():
            self._rule(rule, add=True)

    def apply(self, change: Change) -> None:
        if change.kind == KIND_PORT:
            for obj, add in ((change.old, False), (change.new, True)):
                if obj is not None:
                    self._port(obj, add)
        elif change.kind == KIND_RULE:
            for obj, add in ((change.old, False), (change.new, True)):
                if obj is not None:
                    self._rule(obj, add)

    def _port(self, port: Port, add: bool) -> None:
        for group in port.security_groups:
            _toggle(self.members, group, port.id, add)
            self._peers.pop(group, None)

    def _rule(self, rule: SecurityGroupRule, add: bool) -> None:
        self._rules_of.clear()
        if not add:  # a long-running agent sees rules come and go: a deleted rule's terms must not stay cached
            self._terms.pop(rule.id, None)
        _toggle(self.rules, rule.security_group_id, rule.id, add)
        if rule.remote_group_id:
            _toggle(self.naming, rule.remote_group_id, rule.id, add)

    def any_local_member(self) -> bool:
        return any(self.topo.is_local(pid) for members in self.members.values() for pid in members)

    def local_members(self, groups: Iterable[str]) -> set[str]:
        return {pid for group in groups for pid in self.members.get(group, ()) if self.topo.is_local(pid)}

    def shared_key(self, group: str) -> int:
        """The key a group's members carry to its shared rule flows (0: the group is not stored yet)."""
        return _key(self.topo.get(KIND_GROUP, group))

    def shared(self, port: Port) -> int:
        """The key of the one group whose shared rule flows filter ``port``, or 0: the port has its own."""
        return self.shared_key(port.security_groups[0]) if len(port.security_groups) == 1 else 0

    def has_shared_port(self, group: str) -> bool:
        return any(self.topo.is_local(pid) and len(self.topo.ports[pid].security_groups) == 1
                   for pid in self.members.get(group, ()))

    def naming_groups(self, groups: set[str]) -> set[str]:
        """Groups with a rule whose peers are the members of one of ``groups``."""
        rules = self.topo.of(KIND_RULE)
        return {rules[rid].security_group_id for g in groups for rid in self.naming.get(g, ()) if rid in rules}

    def port_rules(self, groups: list[str], direction: str) -> list[SecurityGroupRule]:
        """The rules of ``direction`` of all ``groups``, deterministic order."""
        key = (tuple(groups), direction)
        if key not in self._rules_of:
            table = self.topo.of(KIND_RULE)
            found = {rid: table[rid] for group in groups for rid in self.rules.get(group, ())
                     if rid in table and table[rid].direction == direction}
            self._rules_of[key] = [found[rid] for rid in sorted(found)]
        return self._rules_of[key]

    def terms(self, rule: SecurityGroupRule, remote_field: str) -> list[Terms]:
        """:func:`rule_terms` of ``rule``, with its peers' addresses in ``remote_field`` (src or dst)."""
        address_field = f"{'ipv4' if rule.ethertype == 'IPv4' else 'ipv6'}_{remote_field}"
        peers = self.peers(rule.remote_group_id, address_field) if rule.remote_group_id else None
        by_field = self._terms.setdefault(rule.id, {})
        cached = by_field.get(remote_field)
        if cached is None or cached[0] is not rule or cached[1] is not peers:
            cached = by_field[remote_field] = (rule, peers, list(rule_terms(rule, address_field, peers)))
        return cached[2]

    def peers(self, group: str, field: str) -> Terms:
        """Matches on ``field`` (an address field) for the addresses of the group's ports of its family.

        As in Neutron, a member's addresses are its ``ips`` and its allowed address pairs (prefixes too).
        """
        cache = self._peers.setdefault(group, {})
        if field not in cache:
            version = 4 if field.startswith("ipv4") else 6
            nets = {ipaddress.ip_network(a, strict=False) for pid in self.members.get(group, ())
                    if (p := self.topo.ports.get(pid))
                    for a in (*p.ips, *(pair["ip_address"] for pair in p.allowed_address_pairs))}
            cache[field] = tuple(sorted(prefix_match(field, n) for n in nets if n.version == version))
        return cache[field]


def _toggle(index: dict[str, set[str]], key: str, value: str, add: bool) -> None:
    if add:
        index.setdefault(key, set()).add(value)
    elif key in index:
        index[key].discard(value)
        if not index[key]:
            del index[key]


def rule_terms(rule: SecurityGroupRule, address_field: str, peers: Terms | None) -> Iterator[Terms]:
    """Field matches (besides the port and ct_state) of each flow that together admit what ``rule`` allows.

    ``peers``: exact matches on ``address_field`` for the remote group's addresses (None: no remote group).
    """
    base = [ir.FieldMatch("eth_type", IP_TYPES[rule.ethertype], 0xFFFF)]
    proto = PROTOCOL_NUMBERS.get(rule.protocol) if rule.protocol else None
    if rule.protocol and proto is None:
        proto = int(rule.protocol)
    if proto is not None:
        base.append(ir.FieldMatch("ip_proto", proto, 0xFF))
    for field, value in (("icmp_type", rule.icmp_type), ("icmp_code", rule.icmp_code)):
        if value >= 0:
            base.append(ir.FieldMatch(field, value, 0xFF))
    variants: list[list[ir.FieldMatch]] = [base]
    if (rule.port_min, rule.port_max) != (0, 0):
        field = PORT_FIELDS.get(proto or 0)
        if field is None:
            LOG.warning("security group rule %s: no IR field for %s port ranges; the rule admits nothing",
                        rule.id, rule.protocol)
            return
        variants = [[*base, ir.FieldMatch(field, v, m)] for v, m in port_masks(rule.port_min, rule.port_max)]
    if peers is None and rule.remote_ip_prefix:
        net = ipaddress.ip_network(rule.remote_ip_prefix)
        peers = (prefix_match(address_field, net),) if net.prefixlen else None
    for variant in variants:
        if peers is None:
            yield tuple(sorted(variant))
        else:
            yield from (tuple(sorted((*variant, peer))) for peer in peers)


def group_owner(group_id: str) -> ir.Owner:
    return ir.Owner(KIND_GROUP, group_id)


class _SecurityGroupStage(App):
    """One direction of the filter; subclasses say which field names the port and which way the rules look."""

    direction: str
    port_field: str  # how a packet names the filtered port: in_port (egress) or outport (ingress)
    remote_field: str  # the peer's address: dst (egress) or src (ingress)

    def __init__(self) -> None:
        self._index: GroupIndex | None = None
        self.defaults = defaults_owner(self.spec.name)

    def index(self, topo: Topology, rebuild: bool = False) -> GroupIndex:
        if rebuild or self._index is None or self._index.topo is not topo:
            self._index = GroupIndex(topo)
        return self._index

    # --- owners -------------------------------------------------------------------------------

    def owners(self, topo: Topology) -> Iterator[ir.Owner]:
        index = self.index(topo, rebuild=True)
        yield self.defaults
        groups: set[str] = set()
        for port in topo.local_ports():
            if port.security_groups:
                yield port_owner(port.id)
                groups.update(port.security_groups)
        yield from (group_owner(g) for g in sorted(groups) if index.shared_key(g))

    def owner_flows(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        index = self.index(topo)
        oid = owner.id
        if owner == self.defaults:
            yield from self._defaults(layout, index.any_local_member())
        elif owner.kind == KIND_GROUP:
            key = index.shared_key(oid)
            if key and index.has_shared_port(oid):
                yield from self._group(oid, key, index, layout, owner)
        elif owner.kind == OWNER_PORT and topo.is_local(oid) and topo.ports[oid].security_groups:
            yield from self._port(topo.ports[oid], topo, index, layout, owner)

    def affected(self, change: Change, topo: Topology) -> Iterator[ir.Owner]:
        fresh = self._index is None or self._index.topo is not topo
        index = self.index(topo)
        if not fresh:
            index.apply(change)
        objs = [o for o in (change.old, change.new) if o is not None]
        if change.kind in (KIND_PORT, KIND_LOCAL):
            groups = {g for port in objs for g in port.security_groups}
            if groups:  # a port without groups has no flows here, nor is it anyone's peer
                yield port_owner(change.id)
                yield self.defaults  # the first filtered port brings the shared flows, the last takes them
                yield from (group_owner(g) for g in sorted(groups))
            if change.kind == KIND_PORT:
                yield from self._users(index, index.naming_groups(groups))
        elif change.kind == KIND_RULE:
            yield from self._users(index, {r.security_group_id for r in objs})
        elif change.kind == KIND_GROUP and _key(change.old) != _key(change.new):
            # its key is what a member's packets carry to the group's flows (a new description changes nothing)
            yield group_owner(change.id)
            yield from (port_owner(pid) for pid in sorted(index.local_members({change.id})))

    @staticmethod
    def _users(index: GroupIndex, groups: set[str]) -> Iterator[ir.Owner]:
        """Owners holding flows of the rules of ``groups``: the groups' own, and ports that have their own."""
        for group in sorted(groups):
            yield group_owner(group)
            yield from (port_owner(pid) for pid in sorted(index.local_members({group}))
                        if not index.shared(index.topo.ports[pid]))

    # --- flows --------------------------------------------------------------------------------

    def _port(self, port: Port, topo: Topology, index: GroupIndex, layout: AppLayout,
              owner: ir.Owner) -> Iterator[ir.Flow]:
        """Into conntrack in the port's zone (with its group's key, if it shares its group's rules) and,
        for what a rule admits, the commit in that zone; the port's own rule flows if it shares none."""
        key = ir.FieldMatch(self.port_field, port.unique_key, ir.full_mask(self.port_field))
        zone = zone_of(port, topo)
        shared = index.shared(port)
        group_reg = layout.reg("group")
        for eth_type in IP_TYPES.values():
            match = ir.Match((ir.FieldMatch("eth_type", eth_type, 0xFFFF), key))
            if zone is None:
                yield ir.Flow(layout.table(self.direction), PRIO_TRACK, match, (ir.Drop(),), owner)
                continue
            track = ir.Conntrack(zone, table=layout.table("state"))
            yield ir.Flow(layout.table(self.direction), PRIO_TRACK, match,
                          (ir.SetField(group_reg, shared), track) if shared else (track,), owner)
            yield ir.Flow(layout.table("commit"), PRIO_TRACK, match,
                          (ir.Conntrack(zone, commit=True), layout.goto("out")), owner)
        if zone is not None and not shared:
            yield from self._rules(index.port_rules(port.security_groups, self.direction), key, index, layout, owner)

    def _group(self, group: str, key: int, index: GroupIndex, layout: AppLayout, owner: ir.Owner) -> Iterator[ir.Flow]:
        """The rules of a group, for every local port in it and in no other group (its key in a register)."""
        reg = layout.reg("group")
        match = ir.FieldMatch(reg, key, ir.full_mask(reg))
        yield from self._rules(index.port_rules([group], self.direction), match, index, layout, owner)

    def _rules(self, rules: list[SecurityGroupRule], whose: ir.FieldMatch, index: GroupIndex, layout: AppLayout,
               owner: ir.Owner) -> Iterator[ir.Flow]:
        table, commit = layout.table("rules"), (ir.GotoTable(layout.table("commit")),)
        seen: set[Terms] = set()
        for rule in rules:
            for terms in index.terms(rule, self.remote_field):
                if terms not in seen:
                    seen.add(terms)
                    yield ir.Flow(table, PRIO_TRACK, ir.Match((*terms, whose)), commit, owner)

    def _defaults(self, layout: AppLayout, filtering: bool) -> Iterator[ir.Flow]:
        """The pass-through, and while some local port is filtered, what all filtered ports share."""
        entry, state, onward = layout.table(self.direction), layout.table("state"), (layout.goto("out"),)
        yield ir.Flow(entry, PRIO_MISS, ir.Match.of(), onward, self.defaults)
        if not filtering:
            return
        for match in self.unfiltered():
            yield ir.Flow(entry, PRIO_PASS, match, onward, self.defaults)
        yield ir.Flow(state, PRIO_INVALID, ir.Match((ct_match(ir.CT_INV),)), (ir.Drop(),), self.defaults)
        yield ir.Flow(state, PRIO_PASS, ir.Match((ct_match(ir.CT_EST),)), onward, self.defaults)
        yield ir.Flow(state, PRIO_RELATED, ir.Match((ct_match(ir.CT_REL),)), onward, self.defaults)
        yield ir.Flow(state, PRIO_TRACK, ir.Match((ct_match(ir.CT_NEW),)), (ir.GotoTable(layout.table("rules")),),
                      self.defaults)
        yield ir.Flow(state, PRIO_MISS, ir.Match.of(), (ir.Drop(),), self.defaults)
        yield ir.Flow(layout.table("rules"), PRIO_MISS, ir.Match.of(), (ir.Drop(),), self.defaults)

    @abc.abstractmethod
    def unfiltered(self) -> Iterator[ir.Match]:
        """IP traffic of this direction that no security group filters."""


def _icmpv6(types: Iterable[int]) -> Iterator[ir.Match]:
    for icmp_type in types:
        yield ir.Match.of(eth_type=ir.ETH_TYPE_IPV6, ip_proto=IPPROTO_ICMPV6, icmp_type=icmp_type)


class SgEgressApp(_SecurityGroupStage):
    """What a local port may send."""

    spec = AppSpec(name="sg_egress", tables=("egress", *TABLES), entries={"in": "egress"}, exits=("out",),
                   registers=("group",))
    direction, port_field, remote_field = "egress", "in_port", "dst"

    def unfiltered(self) -> Iterator[ir.Match]:
        """Neighbour discovery and MLD (a port may not advertise itself as a router), and DHCP(v6) requests."""
        yield from _icmpv6((*ICMPV6_MLD, ICMPV6_RS, ICMPV6_NS, ICMPV6_NA))
        yield ir.Match.of(eth_type=ir.ETH_TYPE_IPV4, ip_proto=IPPROTO_UDP, udp_src=68, udp_dst=67)
        yield ir.Match.of(eth_type=ir.ETH_TYPE_IPV6, ip_proto=IPPROTO_UDP, udp_src=546, udp_dst=547)


class SgIngressApp(_SecurityGroupStage):
    """What a local port may receive."""

    spec = AppSpec(name="sg_ingress", tables=("ingress", *TABLES), entries={"in": "ingress"}, exits=("out",),
                   registers=("group",))
    direction, port_field, remote_field = "ingress", "outport", "src"

    def unfiltered(self) -> Iterator[ir.Match]:
        """Neighbour discovery, MLD, router advertisements, and DHCP(v6) replies."""
        yield from _icmpv6((*ICMPV6_MLD, ICMPV6_RS, ICMPV6_RA, ICMPV6_NS, ICMPV6_NA))
        yield ir.Match.of(eth_type=ir.ETH_TYPE_IPV4, ip_proto=IPPROTO_UDP, udp_src=67, udp_dst=68)
        yield ir.Match.of(eth_type=ir.ETH_TYPE_IPV6, ip_proto=IPPROTO_UDP, udp_src=547, udp_dst=546)
