"""Split the compiled pipeline into hardware rules and a software remainder.

The software datapath always holds the *whole* pipeline: a packet that no
hardware rule takes falls to the representor and OVS handles it exactly as
if there were no NIC. Hardware rules are a cache in front of it, and one is
emitted only when it provably gives the verdict the pipeline would.

How the proof goes: for each local port and each offloadable ethertype the
pipeline is walked *symbolically*. A region is a conjunction of masked
constraints on header fields; pipeline-internal fields (``in_port``,
``metadata``) are known constants along a path. At each table, flows are
taken in priority order (less those a later flow makes redundant, which
would only lead where it does: :func:`hwflow.pipeline.ir.essential_flows`;
one path instead of nine for every local destination's IPv6 packets through
an ingress stage's neighbour discovery bypasses, and no pass rule for the
software paths the bypasses made): a flow that cannot match the region is skipped, one
that matches all of it wins outright, and one that matches part of it wins
on the refined region (region AND its match) and the walk goes on with the
lower flows over the whole region. Every path ends in a *leaf* (a region and
its verdict). Listed in walk order, the leaves form a decision list: for any
packet of the port, the first leaf whose region covers it is the path the
pipeline really takes, because a leaf's region always lies inside the match
of every flow on its path, and any earlier-priority flow it does not follow
either cannot match it or was taken by earlier leaves.

A leaf becomes a hardware rule (same order, so earlier wins) when the NIC can
express it (fields, masks, one redirect to a port of the same embedded
switch, and the header actions on the way), it is unicast (flooding follows
every port change of a network, so it stays in software), and no *earlier*
leaf kept in software overlaps it: otherwise the rule would steal packets
the software path must see. A path ending where the NIC cannot match (a
ct_state it cannot read) is kept in software widened to what it can match,
so a pass rule may hold it; a later rule needs that pass in front only if it
overlaps the path itself, not the widening (mlx5 reads +trk and +est only:
its +inv and +rel paths must not take the +est redirects' packets).

Drops: a path that ends with nothing sent because a flow said so (port
security's anti-spoofing drop, a security group's default deny or +inv, a
router's no-route) becomes a rule that drops (:attr:`HwRule.drop`: tc
``gact drop``, no header actions, since a dropped packet's headers do not
matter) where the NIC has the drop action, ordered like any rule: one that
overlaps an earlier software path (ARP, DHCP, a broadcast software floods)
gets it held in front by a pass rule, or stays in software. The backend
takes a drop off the NIC before OVS changes whenever it is to stop dropping
or a change in front of it may hand it other packets (make-before-break:
hwflow.backends.tc.backend.TcDiff.break_drops). Kept in software: a path
whose only output went back to the port it came in by (OpenFlow skips it, so
it drops, but no flow decided that: a port's packet to its own MAC; what a
tunnel or an uplink brings never reaches a remote destination, whose paths
would fill the NIC for nothing, since L2 looks it up among the local ports
only, hwflow.apps.l2); a table miss (no flow decided it either: every
table the apps mean to drop in ends in a flow that does, so a miss is a
table with no default or one mid-change, and planning it would pin a rule
to the absence of flows; the compiled pipeline's misses are few, so they
cost little CPU in software); a drop after a conntrack action (its commit
is software's); and any drop on a NIC without the drop action.

Header actions the walk sees through, when the NIC can do them: rewrites of
MACs and IPv4 addresses, TTL decrement, VLAN push/pop, tunnel encap
(``tun_id`` + ``tun_dst`` + output to a tunnel port) and decap (a rule on the
tunnel port), and conntrack. A rewritten field is known from then on, so
later matches on it are decided, not guessed. A TTL decrement splits the
path: packets whose TTL expires (TTL 0 or 1) are a *trap* leaf, placed as a
``pass`` rule (to software) in front of the decrementing rule when the NIC
can, since flower cannot say "TTL > 1" in one rule. ``ct(table=N)`` becomes
a rule doing ``ct`` and ``goto chain C``; the walk goes on in table N with
``ct_state`` unknown (a region field, +trk set) and its leaves become chain
C's decision list. A packet that misses every rule of a chain goes to
software, which runs the whole pipeline again: so nothing before such a
``ct`` may change the packet or the connection table (no rewrite, commit or
NAT; those happen inline, in the rule that also outputs).

Chains as tables: at a *join* (a table where paths from many places meet:
the L2 lookup, L3's entry and its next hop) a path whose packet is still as
it arrived hands over to a chain every port of the network (or every
network of a router) shares, so a destination's rules are planned once per
network instead of once per source port. The rewrites a router decided
before its next hop ride along as the chain's pending edits: the goto does
nothing to the packet, the chain's rules do the edits with their output, so
a miss anywhere still reaches software with the packet untouched.

Flower matches VLAN tags by protocol: a rule without a ``vlan_vid`` term
takes untagged packets only. Tagged packets pass it by, so a rule for tagged
packets is kept in software when an earlier rule without a tag overlaps it.

How room is given out when a NIC cannot hold every eligible rule: capacity
is per embedded switch, and each representor pays for its own rules and a
copy of every chain it reaches. Ports are served one after the other, each
getting what the ports before it left of its switch (its paths that do not
fit stay in software, reason :data:`FULL`; where paths hand over to shared
chains, a port left less than a goto costs, :data:`LEAST_ROOM`, is not walked
at all: one software path), in the order of a *rank* the
caller gives (port -> priority, highest first; ties, and ports it does not
name, at 0, in key order; no rank: key order). The agent ranks by measured
traffic, packets a second through both datapaths decayed over time, with
hysteresis: a port ranked above another keeps its place unless the other
sends ``traffic_hysteresis`` times as much (and one packet a second more),
so a port holding room keeps it until another is that much busier
(hwflow.agent.traffic).
A new rank gives the room out again in its order, planning again only the
ports whose room changes (:meth:`_Planner.rerank`); a port losing room
falls back to OVS, which always holds the whole pipeline, and the agent
removes its NIC rules before it installs the gaining port's (make-before-
break). A change of the pipeline while short of room gives the changed ports
what the others leave (see :meth:`_Planner.update`): only a whole plan or a
new rank serves everyone in rank order again. A rank never changes what a
rule does, only which ports have rules.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import itertools
import math
import operator
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from typing import NamedTuple

from hwflow.offload import capabilities as hw
from hwflow.offload.capabilities import Capabilities
from hwflow.pipeline import ir
from hwflow.util.gc import gc_paused

INTERNAL_FIELDS = ir.INTERNAL_FIELDS | {"in_port"}
TUNNEL_TYPE = {port: kind for kind, port in ir.TUNNEL_PORTS.items()}  # tunnel port key -> tunnel type
REWRITABLE = frozenset({"eth_src", "eth_dst", "ipv4_src", "ipv4_dst"})  # header fields pedit can set
IPV4_ONLY = frozenset({"ipv4_src", "ipv4_dst"})
_FULL_MASKS = {field: ir.full_mask(field) for field in ir.FIELD_BITS}
TUNNEL_FIELDS = frozenset({"tun_id", "tun_dst"})  # what an encapsulating output needs set
TTL_EXPIRES = (0, 0xFE)  # ip_ttl 0 or 1: a decrement would reach zero
_TTL_EXPIRING = ir.Match.of(ip_ttl=TTL_EXPIRES)
# IR field -> the name a NIC's capabilities use for it, where they differ (flower's enc_* keys).
CAPABILITY_FIELD = {"tun_src": "tun_ipv4_src", "tun_dst": "tun_ipv4_dst"}
CT_STATE_NAMES = {ir.CT_NEW: "new", ir.CT_EST: "est", ir.CT_REL: "rel", ir.CT_RPL: "rpl", ir.CT_INV: "inv",
                  ir.CT_TRK: "trk"}

Region = Mapping[str, tuple[int, int]]  # field -> (value, mask)
# what a walk read: (table, fields, values) of each lookup -> the (field, value)s every such lookup knew, and
# ("out", port) / ("matched", table) -> None (see walk, _Planned)
Deps = dict[tuple, "tuple[tuple[str, int], ...] | None"]
Edit = ir.SetField | ir.DecTtl | ir.PushVlan | ir.PopVlan | ir.Conntrack  # what a hardware rule does to a packet
PATHS_PER_RULE = 50  # a port short of room is planned again once it would gain a rule per 50 paths (_worth_it)
# what a goto to a chain the decision list does not reach yet costs at least: itself, and the chain's one rule for
# hardware and its catch-all (a chain with none for hardware is not entered). A port's goto that cannot pay that
# is kept in software without planning the chain: at a full NIC most ports' chains would be planned for nothing
GOTO_AT_LEAST = 3
# where paths hand over to shared chains (a layout with joins, a NIC with chains), every path of a port that goes
# anywhere passes a goto: a port given less room than one costs could hold a drop rule or two at most, which keep
# next to none of its packets off the CPU. It is not walked (that costs as much as a port with room, and a full
# NIC leaves most ports that little): all its traffic stays in software, as one path
LEAST_ROOM = GOTO_AT_LEAST
SHARED = -1  # SoftwareLeaf.in_port of a path in a shared chain: it is every port's that reaches the chain
SHARED_REGION = frozenset({"eth_type", "vlan_vid", "vlan_tagged"})  # what a join's chain keeps of the region


class PortOffload(NamedTuple):
    """A local port whose VF sits behind an offload-capable embedded switch (or a tunnel port's device).

    A named tuple: a change compares every port with the one before (which moved), and a tuple compares in C.
    """

    port: int  # logical port key, or one of ir.TUNNEL_PORTS
    switch_id: str
    capabilities: Capabilities


@dataclasses.dataclass(frozen=True)
class ChainEntry:
    """Where a tc chain's walk starts: the table, and what the walk knows there.

    Two paths that reach the same entry go on exactly alike, so one chain
    serves both. A conntrack recirculation's entry keeps the whole region and
    ``in_port`` (it belongs to one port); a join's drops ``in_port`` and every
    header term but the ethertype, VLAN and ct_state (see :func:`walk`), so
    every port of a network reaches the same chain. A path may reach a join
    with header rewrites decided but not done (a router's MAC rewrite and
    TTL decrement before its next-hop table): the goto leaves the packet as
    it is, and the chain's rules do them (``edits``), so a miss there still
    reaches software with the packet as it arrived.
    """

    table: int
    known: tuple[tuple[str, int], ...]  # sorted pipeline state (and header fields a pending edit sets)
    aliases: tuple[tuple[str, str], ...]  # sorted register -> packet field copies
    region: tuple[tuple[str, int, int], ...]  # sorted (field, value, mask) every packet entering lies in
    edits: tuple[Edit, ...] = ()  # header actions the path decided on before the goto: the chain's rules do them

    def __post_init__(self) -> None:
        # the planner's tables are keyed by chains, so by entries: hash the nested tuples once, not per lookup
        object.__setattr__(self, "_hash", hash((self.table, self.known, self.aliases, self.region, self.edits)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined]

    @property
    def shared(self) -> bool:
        return not any(field == "in_port" for field, _ in self.known)

    @property
    def dirty(self) -> frozenset[str]:
        """Header fields the pending edits leave unknown (a TTL decrement's)."""
        return frozenset({"ip_ttl"} if any(isinstance(e, ir.DecTtl) for e in self.edits) else ())


class Leaf(NamedTuple):
    """One path of a decision list: its region and what the pipeline does with its packets.

    A named tuple, not a frozen dataclass: a big host's walk makes hundreds of thousands, and a frozen
    dataclass's constructor sets each field through ``object.__setattr__``.
    """

    region: tuple[tuple[str, int, int], ...]  # sorted (field, value, mask); the walk gives an ir.Match
    outputs: tuple[int, ...]
    blocker: str | None  # why the walk stopped early (punt, a field it cannot know...): software only
    owner: ir.Owner | None  # owner of the last flow on the path (None: table miss)
    edits: tuple[Edit, ...] = ()  # header actions before the output, in order
    enter: ChainEntry | None = None  # the path goes on in another chain (edits end in its ct, if any)
    trap: bool = False  # packets software must decide (their TTL expires here): a pass rule may hold them
    # the regions a software leaf stands for when ``region`` was widened to what the NIC can match (empty: it is
    # its region): a later rule overlapping only the widening needs no pass in front (see _walk_table)
    within: tuple[tuple[tuple[str, int, int], ...], ...] = ()
    # no output because the only one was to the port the packet came in by (OpenFlow skips it): a drop no flow
    # decided, kept in software (see _cannot_deliver); not part of the verdict, since either way nothing leaves
    hairpin: bool = False

    def as_match(self) -> ir.Match:
        region = self.region
        return region if isinstance(region, ir.Match) else ir.Match(ir.FieldMatch(*term) for term in region)

    @property
    def verdict(self) -> tuple:
        """What the leaf does with a packet (its owner and hairpin aside): outputs, blocker, edits, enter, trap,
        within."""
        return self[1:3] + self[4:8]

    @property
    def drop(self) -> bool:
        """Whether the path ends with nothing sent and nothing left to decide: no output, no chain entered, not
        stopped early (a blocker, a trap)."""
        return not self.outputs and self.enter is None and self.blocker is None


class HwRule(NamedTuple):
    """One hardware rule on ``in_port``'s representor (chain ``chain``).

    It applies ``actions`` (IR header actions, in order) and then redirects
    to ``output``; or, with ``goto``, the packet goes on in chain ``goto``
    (after the ``ct`` that ends ``actions``, if any); with ``drop``, the NIC
    drops the packet (tc ``gact drop``: no output, no goto, no actions);
    with none of them, it hands the packet to software (tc ``pass``).
    ``shared``: the rule belongs to a chain every port reaching it gets a
    copy of (:meth:`Plan.rules_of`).
    """

    in_port: int
    order: int  # position in the chain's decision list: lower wins
    level: int  # priority layer within the chain; rules sharing a level never overlap
    match: ir.Match  # header fields (and ct_state in a chain after ct); always includes eth_type
    output: int | None
    owner: ir.Owner | str  # the flow's owner; "" for a pass rule holding software paths, "miss" for a catch-all
    actions: tuple[Edit, ...] = ()
    chain: int = 0
    goto: int | None = None
    shared: bool = False
    drop: bool = False  # the pipeline drops the packets (a flow's decision): the NIC drops them (see _cannot_drop)


@dataclasses.dataclass(frozen=True)
class SoftwareLeaf:
    in_port: int  # SHARED for a leaf of a shared chain
    match: ir.Match
    reason: str
    chain: int = 0
    passable: bool = False  # a pass rule (to software) may hold it in front of later rules
    within: tuple[ir.Match, ...] = ()  # the paths it stands for, when ``match`` is wider (see Leaf.within)
    owner: ir.Owner | str | None = dataclasses.field(default=None, compare=False)  # the path's flow (hwflow flows)

    def overlaps(self, match: ir.Match) -> bool:
        """Whether a packet of ``match`` may be one of this leaf's paths (its ``match`` overlaps ``match``)."""
        return not self.within or any(_overlaps(match, path) for path in self.within)


@dataclasses.dataclass
class ChainPlan:
    """One tc chain's decision list; it ends in a catch-all ``pass`` so a miss reaches software from chain 0."""

    id: int
    rules: list[HwRule] = dataclasses.field(default_factory=list)
    software: list[SoftwareLeaf] = dataclasses.field(default_factory=list)
    children: set[int] = dataclasses.field(default_factory=set)  # chains its rules go to
    shared: bool = False  # every port reaching it gets a copy (else it is one port's own)


class Plan:
    """Each port's chain-0 decision list, the chains they reach, and the paths left to software.

    A chain is held once however many ports reach it; :meth:`rules_of` gives one port its copy of a shared
    chain, which is what its representor gets (a NIC keeps rules per representor: each carries an implicit
    source-port match). Chains are the unit of change: ``refreshed`` names those planned again since the
    plan before, so a consumer re-encodes those and a changed port's chain 0, not every rule of a port that
    reaches thousands of chains (a tunnel device). The software paths are kept in parts (a port's, a
    chain's) and listed on first use: a change's plan is read by port, and listing tens of thousands of
    paths would cost it more than its re-plan.
    """

    def __init__(self, own: dict[int, list[HwRule]] | None = None, chains: dict[int, ChainPlan] | None = None,
                 reaches: dict[int, tuple[int, ...]] | None = None, software: Sequence[SoftwareLeaf] = (),
                 of_ports: Mapping[int, Sequence[SoftwareLeaf]] | None = None,
                 refreshed: frozenset[int] | None = None) -> None:
        self.own = own if own is not None else {}  # port -> its chain 0's rules
        self.chains = chains if chains is not None else {}  # every chain some port reaches (shared or its own), by id
        self.reaches = reaches if reaches is not None else {}  # port -> the chains it reaches, by id
        self.refreshed = refreshed  # chains planned again since the plan before (None: all of them are new)
        self._given = software
        self._of_ports = of_ports or {}  # port -> its chain 0's software paths
        self._software: list[SoftwareLeaf] | None = None

    @property
    def software(self) -> list[SoftwareLeaf]:
        """Every path left to software: as given, then ports' chain 0 by port, then chains by number."""
        if self._software is None:
            self._software = [*self._given, *(leaf for port in sorted(self._of_ports) for leaf in self._of_ports[port]),
                              *(leaf for n in sorted(self.chains) for leaf in self.chains[n].software)]
        return self._software

    @property
    def software_count(self) -> int:
        return len(self._given) + sum(len(part) for part in self._of_ports.values()) + sum(
            len(chain.software) for chain in self.chains.values())

    def units_of(self, port: int) -> list[tuple[int, list[HwRule]]]:
        """``port``'s rules by chain, as its representor takes them: (0, its chain 0), then (chain id, its copy)."""
        units = [(0, list(self.own.get(port, ())))]
        for number in self.reaches.get(port, ()):
            chain = self.chains[number]
            units.append((number, [_copy_for(r, port) for r in chain.rules] if chain.shared else chain.rules))
        return units

    def rules_of(self, port: int) -> list[HwRule]:
        return [rule for _, rules in self.units_of(port) for rule in rules]

    @property
    def rules(self) -> list[HwRule]:
        """Every rule as installed, port by port."""
        return [rule for port in sorted(self.own.keys() | self.reaches.keys()) for rule in self.rules_of(port)]

    def counts(self) -> tuple[int, int]:
        """(rules planned, each chain once; rules installed, a copy of a shared chain per port reaching it)."""
        own = sum(len(rules) for rules in self.own.values())
        planned = own + sum(len(c.rules) for c in self.chains.values())
        installed = own + sum(len(self.chains[c].rules) for chains in self.reaches.values() for c in chains)
        return planned, installed

    @property
    def shared_chains(self) -> int:
        return sum(1 for chain in self.chains.values() if chain.shared)


def _copy_for(rule: HwRule, port: int) -> HwRule:
    """A shared chain's rule on ``port``'s representor: a redirect back to the port itself becomes a pass.

    The pipeline never sends a packet back where it came from (OpenFlow drops an output to in_port);
    software decides those packets, as it would without the rule.
    """
    if rule.output == port:
        return rule._replace(in_port=port, output=None, actions=())
    return rule._replace(in_port=port)


# --- symbolic walk ------------------------------------------------------------


class _Path(NamedTuple):
    """What the walk knows along one path besides the region (a named tuple: the walk makes one per step)."""

    known: Mapping[str, int]  # pipeline state and header fields an action set
    aliases: Mapping[str, str] = {}  # register -> packet field copied in (never mutated in place: replaced)
    dirty: frozenset[str] = frozenset()  # header fields changed to a value the walk cannot know
    outputs: tuple[int, ...] = ()
    edits: tuple[Edit, ...] = ()
    hairpin: bool = False  # an output to the port the packet came in by was skipped (see Leaf.hairpin)

    @property
    def pending(self) -> bool:
        """Nothing done to the packet yet but header rewrites and a TTL decrement, which a rule further on may do
        as well as one here: a goto to a join table can carry them (see :class:`ChainEntry`)."""
        return not self.outputs and self.dirty <= _TTL_ONLY and all(
            e.__class__ is ir.SetField or e.__class__ is ir.DecTtl for e in self.edits)


def _refine(match: ir.Match, region: dict[str, tuple[int, int]], known: Mapping[str, int]):
    """(None, _) if ``match`` cannot hold in region; else (covers_all, refined region: ``region`` itself when it
    covers all)."""
    refined = None
    for field, want, bits in match:
        held = known.get(field, _UNKNOWN)
        if held is not _UNKNOWN:
            if held & bits != want:
                return None, region
            continue
        value, mask = region.get(field, _NO_TERM) if refined is None else refined.get(field, _NO_TERM)
        if (value ^ want) & mask & bits:
            return None, region
        if bits & ~mask:
            if refined is None:
                refined = dict(region)
            refined[field] = (value | want, mask | bits)
    return (True, region) if refined is None else (False, refined)


_UNKNOWN = object()  # a field the known state does not hold
_new_tuple = tuple.__new__
_NOTHING: frozenset = frozenset()
_TTL_ONLY = frozenset({"ip_ttl"})
_NO_TERM = (0, 0)  # a region's term for a field it does not constrain


def walk(pipeline: ir.Pipeline, known: Mapping[str, int], region: Region,
         joins: frozenset[int] = frozenset(), doomed: Doom | None = None,
         deps: Deps | None = None, state: StateRead | None = None, memo: Segments | None = None) -> Iterator[Leaf]:
    """The leaves of one chain's decision list for packets in ``region``, in order.

    The walk does not follow a path into another chain: a ``ct(table=N)`` ends
    in a leaf whose ``enter`` names the chain N starts, and so does a path
    whose packet is still as it arrived (see :func:`_hands_over`) going to a
    table in ``joins``; that chain is walked on its own (:func:`walk_entry`).
    A join's chain forgets the port: every port of a network reaches the
    same one. ``doomed(region)`` says a region no hardware rule can match (a field
    the NIC cannot match): the walk ends there in one software leaf instead
    of enumerating the paths below, which could only end in software too.
    ``deps`` collects each table lookup made, as (table, fields, values)
    (:meth:`ir.Pipeline.lookup`): what a change must touch to change the walk;
    with the (field, value)s every such lookup knew (a flow pinning one to
    another value cannot change the walk).
    """
    if joins and state is None:
        state = StateRead(pipeline.flows)
    how = _Walk(joins, doomed, deps, state, doomed(region) if doomed is not None else None)
    yield from _fold(_walk_table(pipeline, 0, dict(region), _Path(dict(known)), how, 0, memo))


def walk_entry(pipeline: ir.Pipeline, entry: ChainEntry, joins: frozenset[int] = frozenset(),
               doomed: Doom | None = None, deps: Deps | None = None,
               state: StateRead | None = None, memo: Segments | None = None) -> Iterator[Leaf]:
    """The leaves of the chain that starts at ``entry``.

    ``memo``: the chain's segments from its walk before, reused where nothing they read changed (see
    :class:`Segments`); it collects this walk's.
    """
    path = _Path(dict(entry.known), dict(entry.aliases), entry.dirty, edits=entry.edits)
    region = {f: (v, m) for f, v, m in entry.region}
    if joins and state is None:
        state = StateRead(pipeline.flows)
    how = _Walk(joins, doomed, deps, state, doomed(region) if doomed is not None else None)
    yield from _fold(_walk_table(pipeline, entry.table, region, path, how, 0, memo))


class Segment(NamedTuple):
    """What one flow of a chain's entry table led to: the leaves of the paths through it, and what they read."""

    flow: ir.Flow  # held so the identity its segment is filed by stays its own
    leaves: tuple[Leaf, ...]
    deps: Deps  # what the paths through the flow read (see walk)


class Segments:
    """A chain's walk by the flows of its entry table, for the next walk of the same chain to reuse.

    A join's chain (a network's L2 lookup, a router's next hop) holds every destination of the network or
    router, each the paths through one flow of the entry table. A change re-plans the chain, but touches one
    destination or a few: the segments of the other flows are taken as they were when none of the lookups
    they made could answer differently now (``changed(deps)`` says), which leaves the walk of a port added or
    gone, not of its whole network. The walk's order and its fold over the whole list are as before, so the
    leaves are the same as a walk afresh (a property test holds them equal).
    """

    def __init__(self, before: Mapping[int, Segment] | None = None,
                 changed: Callable[[Deps], bool] | None = None, twin: Twin | None = None) -> None:
        self.before = before or {}
        self.changed = changed
        self.twin = twin
        self.now: dict[int, Segment] = {}  # id(flow) -> its segment in this walk

    def reuse(self, flow: ir.Flow) -> Segment | None:
        old = self.before.get(id(flow))
        if old is None or old.flow is not flow or self.changed is None or self.changed(old.deps):
            old = self.twin.segment(flow, self.changed) if self.twin is not None else None
            if old is None:
                return None
        self.now[id(flow)] = old
        return old


class Twin:
    """The segments of the same chain for another ethertype, which stand for this one's where they never read it.

    A network's L2 chain is walked once for IPv4 and once for IPv6 packets, and its remote destinations' paths
    (the lookup, the delivery into a tunnel) are the same but for the ethertype term of their regions: no flow
    on them matches the ethertype, none is looked up by it, none copies it. Such a segment of the chain walked
    first is taken by the second with the term swapped instead of walked again (its leaves are still decided,
    as dear as the walk was); a segment that reads the ethertype anywhere (a local destination's
    security group) is walked. A test holds every swapped segment equal to the segment walked afresh.
    """

    def __init__(self, segments: Mapping[int, Segment], theirs: int, mine: int, reads: StateRead) -> None:
        self.segments = segments
        self.theirs, self.mine = theirs, mine  # the ethertypes: the twin's and this chain's
        self.reads = reads
        self._blind: dict[int, bool] = {}  # table -> whether nothing in it reads the ethertype

    def segment(self, flow: ir.Flow, changed: Callable[[Deps], bool] | None) -> Segment | None:
        """The twin's segment of ``flow`` with the ethertype swapped (None: it must be walked)."""
        theirs = self.segments.get(id(flow))
        if theirs is None or theirs.flow is not flow or flow.match.get("eth_type") is not None \
                or not all(self._blind_to(dep) for dep in theirs.deps) \
                or (changed is not None and changed(theirs.deps)):
            return None
        leaves = []
        for leaf in theirs.leaves:
            swapped = _swapped(leaf, self.theirs, self.mine)
            if swapped is None:
                return None
            leaves.append(swapped)
        return Segment(flow, tuple(leaves), theirs.deps)

    def _blind_to(self, dep: tuple) -> bool:
        if dep[0] in _NAMED_DEPS:
            return True
        if "eth_type" in dep[1]:
            return False
        blind = self._blind.get(dep[0])
        if blind is None:
            blind = self._blind[dep[0]] = "eth_type" not in self.reads.matched(dep[0]) \
                and "eth_type" not in self.reads.copied(dep[0])
        return blind


def _swapped(leaf: Leaf, theirs: int, mine: int) -> Leaf | None:
    """``leaf`` with its ethertype term ``theirs`` made ``mine`` (in its region, the chain it enters and the
    regions it stands for); None if it knows the ethertype otherwise."""
    old, full = ("eth_type", theirs, _FULL_MASKS["eth_type"]), _FULL_MASKS["eth_type"]
    new = ("eth_type", mine, full)
    if old not in leaf.region:
        return None
    region = ir.Match.of_terms([new if term == old else term for term in leaf.region])
    enter = leaf.enter
    if enter is not None:
        if any(field == "eth_type" for field, _ in enter.known):
            return None
        enter = dataclasses.replace(enter, region=tuple(new if term == old else term for term in enter.region))
    within = tuple(tuple(new if term == old else term for term in path) for path in leaf.within)
    return Leaf(region, leaf.outputs, leaf.blocker, leaf.owner, leaf.edits, enter, leaf.trap, within, leaf.hairpin)


def _fold(leaves: Iterator[Leaf]) -> Iterator[Leaf]:
    """The leaves without those the next one makes redundant: it covers their region and does the same.

    A decision list gives a packet the first leaf covering it; a leaf inside the next one's region with the
    same verdict (outputs, edits, chain entered, blocker) sends its packets where the next would. The
    pipeline makes such pairs wherever a special case ends alike: a DHCP reply bypasses the ingress stage of a
    local port without security groups and is delivered as every other packet to it, so without the fold that
    destination took two rules.
    """
    held = None
    for leaf in leaves:
        if held is not None and not (leaf.verdict == held.verdict and _within(held.region, leaf.region)):
            yield held
        held = leaf
    if held is not None:
        yield held


def _within(inner: tuple[tuple[str, int, int], ...], outer: tuple[tuple[str, int, int], ...]) -> bool:
    """Whether every packet of region ``inner`` lies in region ``outer``."""
    terms = {f: (v, m) for f, v, m in inner}
    for field, value, mask in outer:
        v, m = terms.get(field, (0, 0))
        if mask & ~m or (v ^ value) & mask:
            return False
    return True


class _Walk(NamedTuple):
    """What one walk carries unchanged down every path (a named tuple: a segment's walk makes its own copy)."""

    joins: frozenset[int]
    doomed: Doom | None
    deps: Deps | None = None
    state: StateRead | None = None  # what the tables read (for the entry of a join's chain)
    doomed_at_entry: str | None = None  # why the walk's first region is doomed already (then every refinement is)


def _walk_table(pipeline, table, region, path: _Path, how: _Walk, depth, memo: Segments | None = None
                ) -> Iterator[Leaf]:
    if depth > 64:
        raise RuntimeError("pipeline loops: more than 64 tables on one path")
    exact = _exact(pipeline.index_fields(table), region, path.known, path.dirty)
    fields, values, flows = pipeline.lookup(table, exact, essential=True)
    if how.deps is not None:
        _note(how.deps, (table, fields, values), tuple(exact.items()))
    held: list | None = None  # a doomed refinement's leaf: [widened region, the regions it stands for, why, owner]
    aliases, dirty, known = path.aliases, path.dirty, path.known
    for flow in flows:
        match = _through_aliases(flow.match, aliases) if aliases else flow.match
        if match is None:
            continue
        stale = [t[0] for t in match if t[0] in dirty] if dirty else None  # (a match's terms are sorted)
        if stale:
            # a flow that may match on what an action changed stops the walk; one that cannot match for its
            # other terms is passed by, whether or not the table's index happened to leave it out
            rest = ir.Match(tuple(t for t in match.fields if t.field not in path.dirty))
            if _refine(rest, region, known)[0] is None:
                continue
            if held is not None:
                yield _widened(held, path)
            yield _leaf(region, path, f"matches {', '.join(stale)} after an action changed it", flow.owner)
            return
        covers_all, refined = _refine(match, region, known)
        if covers_all is None:
            continue
        # the region before was not doomed (the walk stops where it is, see _Walk.doomed_at_entry): only the
        # terms this flow narrowed can doom it
        doomed = None if covers_all or how.doomed is None else how.doomed_at_entry or how.doomed.narrowed(
            match, refined)
        if doomed is not None:
            # one software leaf for what no rule can match, widened to the region the NIC can match (a pass
            # rule may hold it) and knowing the regions it stands for (a later rule they do not overlap needs no
            # pass in front): the ICMPv6 types a stage lets through one by one are one leaf, not seven
            coarse = how.doomed.coarse(refined)
            narrow = tuple(sorted((f, v, m) for f, (v, m) in refined.items())) if how.doomed.partly(refined) \
                else None  # (a rule overlaps the widening if and only if it overlaps the path: nothing to keep)
            if held is not None and held[0] == coarse:
                held[1] = held[1] + [narrow] if held[1] is not None and narrow is not None else None
            else:
                if held is not None:
                    yield _widened(held, path)
                held = [coarse, [narrow] if narrow is not None else None, doomed, flow.owner]
            continue
        if held is not None:
            yield _widened(held, path)
            held = None
        if memo is not None:
            yield from _segment(pipeline, flow, refined, path, how, memo)
        else:
            yield from _run(pipeline, flow, refined, path, how, depth)
        if covers_all:
            return
    if held is not None:
        yield _widened(held, path)
    yield _leaf(region, path, None, None)


def _widened(held: list, path: _Path) -> Leaf:
    """The software leaf of a doomed refinement (see :func:`_walk_table`): its region widened, and ``within``
    the regions it stands for."""
    coarse, narrow, why, owner = held
    leaf = _leaf(coarse, path, why, owner)
    return leaf._replace(within=tuple(narrow)) if narrow else leaf


def _segment(pipeline, flow, region, path: _Path, how: _Walk, memo: Segments) -> tuple[Leaf, ...]:
    """The leaves of the paths through ``flow`` of a chain's entry table: as before if they may be, else walked."""
    segment = memo.reuse(flow)
    if segment is None:
        deps: Deps = {}
        leaves = tuple(_run(pipeline, flow, region, path, _Walk(how.joins, how.doomed, deps, how.state,
                                                                  how.doomed_at_entry), 0))
        segment = memo.now[id(flow)] = Segment(flow, leaves, deps)
    if how.deps is not None:
        for dep, known in segment.deps.items():
            _note(how.deps, dep, known)
    return segment.leaves


def _note(deps: Deps, dep: tuple, known: tuple | None) -> None:
    """Add ``dep`` to ``deps``, with what every lookup by it knew alike (None: a dependency that is no lookup)."""
    seen = deps.setdefault(dep, known)
    if seen is not known and seen != known:
        deps[dep] = tuple(item for item in seen if item in known) if seen and known else ()


def _exact(fields: Iterable[str], region, known: Mapping[str, int], dirty: frozenset[str] = frozenset()
           ) -> dict[str, int]:
    """What a lookup by ``fields`` may use: the known state and header fields, and the header fields the region
    pins (not one an action changed since: the region says what it held before)."""
    exact = {}
    for field in fields:
        value = known.get(field, _UNKNOWN)
        if value is _UNKNOWN:
            term = region.get(field)
            if term is None or term[1] != _FULL_MASKS[field] or field in dirty:
                continue
            value = term[0]
        exact[field] = value
    return exact


def _through_aliases(match: ir.Match, aliases: Mapping[str, str]) -> ir.Match | None:
    """``match`` with registers holding a copy of a packet field read as that field (None: it cannot hold)."""
    for term in match:
        if term[0] in aliases:
            break
    else:
        return match  # (a loop, not any() over a generator: a walk asks this of every flow it looks at)
    terms: dict[str, tuple[int, int]] = {}
    for name, want, bits in match:
        field = aliases.get(name, name)
        value, mask = terms.get(field, _NO_TERM)
        if (value ^ want) & mask & bits:
            return None
        terms[field] = (value | want, mask | bits)
    return ir.Match.of_terms([(f, v, m) for f, (v, m) in terms.items()])  # (an alias is as wide as its field)


def _run(pipeline, flow, region, path: _Path, how: _Walk, depth) -> Iterator[Leaf]:
    """Follow one flow's actions; an action the walk cannot see through ends it in a software leaf.

    Ending there is what keeps the proof simple: the leaf's region is all the
    packets that reach this point, so nothing after it can be mistaken.
    """
    owned = False  # whether path's known state and aliases are this run's own copies (_see_through changes them)
    for action in flow.actions:
        kind = action.__class__  # (the IR's actions have no subclasses: one look per action, not six isinstance)
        if kind is ir.Output:
            if action.port != path.known.get("in_port"):
                path = _Path(path.known, path.aliases, path.dirty, path.outputs + (action.port,), path.edits,
                             path.hairpin)
            elif not path.hairpin:
                path = path._replace(hairpin=True)
        elif kind is ir.GotoTable:
            if action.table in how.joins and _hands_over(path, action.table, how):
                entry = _join_entry(how.state.from_table(action.table), action.table, region, path)
                yield _leaf(region, _Path(path.known, path.aliases, path.dirty, path.outputs, (), path.hairpin), None,
                            flow.owner, entry)  # the chain's rules do the pending edits
            else:
                yield from _walk_table(pipeline, action.table, region, path, how, depth + 1)
            return
        elif kind is ir.Drop:
            break
        elif kind is ir.Conntrack and action.table is not None:
            yield _recirculate(flow, action, region, path)
            return
        elif kind is ir.DecTtl and "ip_ttl" not in path.dirty and not path.outputs:
            expiring, trapped = _refine(_TTL_EXPIRING, region, path.known)
            if expiring is not None:  # some packets here die of the decrement: software decides them
                yield _leaf(trapped, path, "the TTL expires here", flow.owner)._replace(trap=True)
                if expiring:
                    return
            path = _edit(path, action)
        else:
            if not owned and (kind is ir.SetField or kind is ir.Move):
                path, owned = _Path(dict(path.known), dict(path.aliases), path.dirty, path.outputs, path.edits,
                                    path.hairpin), True
            blocker = _see_through(action, path)
            if blocker is not None:
                yield _leaf(region, path, blocker, flow.owner)
                return
            path = _edit(path, action) if _is_edit(action) else path
    yield _leaf(region, path, None, flow.owner)


def _hands_over(path: _Path, table: int, how: _Walk) -> bool:
    """Whether a path goes on in a join's chain rather than in this one.

    Its packet must be as it arrived (edits pending at most, see :attr:`_Path.pending`), and the join must not
    look flows up by a field a pending edit set: a chain entered so would be one per value (a routed path
    reaching L2 with the destination's MAC set would get a chain per destination), shared by nothing.
    """
    if not path.pending or path.known.get("in_port", SHARED) == 0:
        return False
    if not any(isinstance(e, ir.SetField) for e in path.edits):
        return True
    if how.deps is not None:
        how.deps[("matched", table)] = None
    matched = how.state.matched(table)
    return not any(isinstance(e, ir.SetField) and e.field in matched for e in path.edits)


def _join_entry(reads: frozenset[str], table: int, region, path: _Path) -> ChainEntry:
    """The chain a path of a port continues in at a join table, with the edits it has pending.

    A VF port's chain is shared: it keeps of the pipeline state only what the
    tables from ``table`` on read (so the port's conntrack zone, say, does not
    split the chain), and of the region only what says how a packet is framed.
    Not whether and how it is tracked: the paths through a join are taken by
    packets that went through conntrack and by those that bypassed it (DHCP,
    say), and a chain of its own for each would double the largest chains;
    where a flow behind the join reads ct_state, the chain's walk splits on
    it. Fewer terms than the path's region is a larger region: the
    chain's decision list is right for every packet of it, so for the port's
    too. A tunnel port's chain stays its own (``in_port`` and the whole
    region kept): every rule on a tunnel device decapsulates and matches the
    tunnel's endpoint (the shape OVS gives a recirculated tunnel flow), so
    its chains are not the VFs'; one per network still keeps a change of a
    network's ports to that network's chain instead of the device's whole
    decision list.
    """
    own = path.known.get("in_port") in TUNNEL_TYPE
    known = tuple(sorted((f, v) for f, v in path.known.items() if own or f != "ct_state" and (
        f in reads or f not in INTERNAL_FIELDS)))
    aliases = tuple(sorted((r, f) for r, f in path.aliases.items() if r in reads))
    kept = {f: (v, m) for f, (v, m) in region.items() if own or f in SHARED_REGION}
    value, mask = region.get("eth_dst", (0, 0))
    if not own and mask & ir.MULTICAST_BIT:  # unicast or not is framing too (flooded paths stay in software)
        kept["eth_dst"] = (value & ir.MULTICAST_BIT, ir.MULTICAST_BIT)
    return ChainEntry(table, known, aliases, tuple(sorted((f, v, m) for f, (v, m) in kept.items())), path.edits)


def _recirculate(flow, action: ir.Conntrack, region, path: _Path) -> Leaf:
    """``ct(table=N)``: a rule doing ct then goto the chain where table N's leaves are."""
    blocker = None
    if path.outputs or path.edits:
        blocker = "conntrack after an output or a header action: a miss in its chain would replay them"
    elif action.commit or action.nat is not None:
        blocker = "conntrack commit/NAT before recirculation: a miss in its chain would apply it twice"
    if blocker is not None:
        return _leaf(region, path, blocker, flow.owner)
    known = {k: v for k, v in path.known.items() if k != "ct_state"} | {"ct_zone": action.zone}
    inner = {**region, "ct_state": (ir.CT_TRK, ir.CT_TRK)}  # after ct every packet is tracked
    entry = ChainEntry(action.table, tuple(sorted(known.items())), tuple(sorted(path.aliases.items())),
                       tuple(sorted((f, v, m) for f, (v, m) in inner.items())))
    return _leaf(region, path._replace(edits=(action,)), None, flow.owner, entry)


def _is_edit(action: ir.Action) -> bool:
    return isinstance(action, ir.SetField) and action.field not in INTERNAL_FIELDS or isinstance(
        action, ir.PushVlan | ir.PopVlan | ir.Conntrack)


def _edit(path: _Path, action: Edit) -> _Path:
    """The path after a header action the hardware would do."""
    known, dirty = path.known, path.dirty
    if isinstance(action, ir.SetField):
        known = {**known, action.field: action.value}
        if action.field in dirty:
            dirty = dirty - {action.field}
    elif isinstance(action, ir.PushVlan):
        known, dirty = {**known, "vlan_vid": action.vid}, dirty - {"vlan_vid"}
    elif isinstance(action, ir.PopVlan):
        known, dirty = {f: v for f, v in known.items() if f != "vlan_vid"}, dirty | {"vlan_vid"}
    elif isinstance(action, ir.DecTtl):
        dirty = dirty | {"ip_ttl"}
    elif isinstance(action, ir.Conntrack) and action.nat is not None:  # the translation depends on the connection
        known = {f: v for f, v in known.items() if f not in IPV4_ONLY}
        dirty = dirty | IPV4_ONLY
    return _Path(known, path.aliases, dirty, path.outputs, path.edits + (action,), path.hairpin)


def _see_through(action: ir.Action, path: _Path) -> str | None:
    """Apply a pipeline-state action to the known state, or say why the walk must stop here (None: go on).

    A register loaded from an unchanged packet field of its width becomes an
    alias of it: matches on the register are matches on the packet.
    """
    if action.__class__ is ir.SetField:  # the common case first: a walk sees one or two a table
        if action.field in INTERNAL_FIELDS:
            path.aliases.pop(action.field, None)  # type: ignore[attr-defined]
            path.known[action.field] = action.value  # type: ignore[index]
            return None
        return "a header action after an output: copies with different headers stay in software" \
            if path.outputs else None
    known, aliases = path.known, path.aliases
    if isinstance(action, ir.Move) and action.dst in INTERNAL_FIELDS:
        aliases.pop(action.dst, None)  # type: ignore[attr-defined]
    if isinstance(action, ir.Move) and action.dst in INTERNAL_FIELDS and action.src in known:
        known[action.dst] = known[action.src] & ir.full_mask(action.dst)  # type: ignore[index]
        return None
    if isinstance(action, ir.Move) and action.dst in INTERNAL_FIELDS and action.src not in path.dirty \
            and (action.src not in INTERNAL_FIELDS or action.src in aliases) \
            and ir.FIELD_BITS[action.src] == ir.FIELD_BITS[action.dst]:
        known.pop(action.dst, None)  # type: ignore[attr-defined]
        aliases[action.dst] = aliases.get(action.src, action.src)  # type: ignore[index]
        return None
    if isinstance(action, ir.Move):
        return f"sets {action.dst} from the packet: not offloaded"
    if isinstance(action, ir.Punt):
        return f"punted to the agent ({action.reason})"
    if isinstance(action, ir.DecTtl):
        if path.outputs:
            return "a header action after an output: copies with different headers stay in software"
        return "a second TTL decrement on one path: not offloaded"
    if not _is_edit(action):
        return f"{type(action).__name__}: not offloaded"
    if path.outputs:
        return "a header action after an output: copies with different headers stay in software"
    return None


def _leaf(region, path: _Path, blocker, owner, enter: ChainEntry | None = None) -> Leaf:
    match = ir.Match.of_terms([(f, v, m) for f, (v, m) in region.items()])
    if path.hairpin and not path.outputs:
        return Leaf(match, path.outputs, blocker, owner, path.edits, enter, False, (), True)
    return Leaf(match, path.outputs, blocker, owner, path.edits, enter)


# --- choosing what goes to hardware ----------------------------------------------


def _overlaps(a: ir.Match, b: ir.Match, ignore: frozenset[str] = frozenset()) -> bool:
    """Whether some packet matches both (a tracked packet is exactly one of new, est, rel and inv)."""
    return not ir.disjoint(a.fields, b.as_dict(), ignore)


def _unicast_only(leaf: Leaf) -> bool:
    """True when the leaf's region pins the destination MAC's group bit to 0."""
    for field, value, mask in leaf.region:
        if field == "eth_dst":
            return bool(mask & ir.MULTICAST_BIT) and not value & ir.MULTICAST_BIT
    return False


def _region_value(leaf: Leaf, field: str) -> int | None:
    for name, value, mask in leaf.region:
        if name == field and mask == ir.full_mask(field):
            return value
    return None


def _cannot_edit(leaf: Leaf, caps: Capabilities) -> str | None:
    """Why the NIC cannot do the leaf's header actions (None: it can)."""
    if not leaf.edits:
        return None
    ipv4 = _region_value(leaf, "eth_type") == ir.ETH_TYPE_IPV4
    tagged = any(field == "vlan_vid" for field, _, _ in leaf.region)
    for edit in leaf.edits:
        kind = edit.__class__  # (by class identity, as the walk does: a routed leaf carries five edits)
        if kind is ir.SetField:
            if edit.field in TUNNEL_FIELDS:
                continue  # the encapsulating output's business
            if not (edit.field in REWRITABLE and caps.can_rewrite(edit.field) and hw.ACTION_REWRITE in caps.actions):
                return f"the NIC cannot rewrite {edit.field}"
            if not ipv4 and edit.field in IPV4_ONLY:
                return f"{edit} needs the path to be IPv4"
        elif kind is ir.DecTtl:
            if not ipv4:
                return f"{edit} needs the path to be IPv4"
            if hw.ACTION_TTL_DEC not in caps.actions:
                return "the NIC cannot decrement the TTL"
        elif kind is ir.PushVlan:
            if hw.ACTION_VLAN_PUSH not in caps.actions or tagged:
                return "the NIC cannot push a VLAN tag here (no vlan_push, or the packet is tagged already)"
        elif kind is ir.PopVlan:
            if hw.ACTION_VLAN_POP not in caps.actions:
                return "the NIC cannot pop a VLAN tag"
        elif kind is ir.Conntrack and not (hw.ACTION_CT in caps.actions and caps.can_conntrack(
                zone=edit.zone, nat=edit.nat is not None) and (edit.nat is None or ipv4)):
            return f"the NIC cannot do conntrack in zone {edit.zone}{' with NAT (IPv4)' if edit.nat else ''}"
    return None


def _cannot_drop(leaf: Leaf, caps: Capabilities) -> str | None:
    """Why a leaf without outputs cannot be a drop rule (None: it can).

    The NIC drops only what a flow of the pipeline decided to drop (port security's anti-spoofing, a security
    group's default deny or +inv, a router's no-route): a path that ends so is dropped by software too, so
    the rule changes no verdict (make-before-break keeps it so through a change: see
    hwflow.backends.tc.backend.TcDiff). Not: a path whose only output went back to the port it came in by
    (OpenFlow skips it); a table miss; a drop after conntrack (see the module docstring).
    """
    if leaf.hairpin:
        return "output to the port it came in by: OpenFlow drops it, but no flow decided it, so it stays in software"
    if leaf.owner is None:
        return "table miss: no flow decided this drop, so it stays in software"
    if hw.ACTION_DROP not in caps.actions:
        return "the NIC cannot drop"
    if any(isinstance(e, ir.Conntrack) for e in leaf.edits):
        return "a drop after a conntrack action: the connection table's change is software's"
    return None


def _cannot_deliver(leaf: Leaf, port: PortOffload, ports: Mapping[int, PortOffload], unicast_only: bool) -> str | None:
    """Why the leaf's single output cannot be a redirect from ``port``, or, with no output, why its drop cannot
    be a drop rule (:func:`_cannot_drop`) (None: it can)."""
    if not leaf.outputs:
        return _cannot_drop(leaf, port.capabilities)
    if len(leaf.outputs) > 1:
        return f"{len(leaf.outputs)} outputs: replication stays in software"
    if unicast_only and not _unicast_only(leaf):
        return "broadcast/multicast: its port set changes with every port of the network, so it stays in software"
    target = ports.get(leaf.outputs[0])
    if target is None or target.switch_id != port.switch_id:
        return "output port is not behind the same embedded switch"
    caps = port.capabilities
    if hw.ACTION_REDIRECT not in caps.actions:
        return "the NIC cannot redirect"
    tunnel = TUNNEL_TYPE.get(leaf.outputs[0])
    tunnel_set = {e.field for e in leaf.edits if e.__class__ is ir.SetField and e.field in TUNNEL_FIELDS} \
        if leaf.edits else ()
    if tunnel is None and tunnel_set:
        return "tunnel metadata set for a port that is not a tunnel"
    if tunnel is not None and not (caps.can_encap(tunnel) and tunnel_set == TUNNEL_FIELDS):
        return f"the NIC cannot encapsulate {tunnel} (or the path does not set both tun_id and tun_dst)"
    return None


def _action_count(leaf: Leaf, port: PortOffload) -> int:
    """How many tc actions the leaf becomes (see hwflow.backends.tc.backend.to_flower): a drop is one."""
    if not leaf.outputs:
        return 1
    rewrite = ttl = tunnel = False  # a rewrite, and a TTL decrement, is a pedit and a csum of its own
    others = 0
    for edit in leaf.edits:  # (one pass: asked of every leaf of a whole plan)
        if isinstance(edit, ir.SetField):
            rewrite = rewrite or edit.field in REWRITABLE
            tunnel = tunnel or edit.field in TUNNEL_FIELDS
        elif isinstance(edit, ir.DecTtl):
            ttl = True
        elif isinstance(edit, ir.PushVlan | ir.PopVlan | ir.Conntrack):
            others += 1
    return 2 * rewrite + 2 * ttl + others + tunnel + (port.port in TUNNEL_TYPE) + 1


def _why_not(leaf: Leaf, port: PortOffload, ports: Mapping[int, PortOffload], unicast_only: bool,
             doom: Doom) -> str | None:
    """Why this leaf cannot be a hardware rule on ``port`` (``doom``: its NIC's) (None: it can)."""
    caps = port.capabilities
    if leaf.blocker is not None:
        return leaf.blocker
    if leaf.enter is not None:
        if not {hw.ACTION_GOTO_CHAIN, hw.ACTION_PASS} <= caps.actions:
            return "the NIC cannot goto a chain and pass what misses there to software"
        if leaf.edits and hw.ACTION_CT not in caps.actions:
            return "the NIC cannot do conntrack"
        return _cannot_edit(leaf, caps) or doom.cannot_match(leaf.region)
    tunnel = TUNNEL_TYPE.get(port.port)
    if tunnel is not None and not caps.can_decap(tunnel):
        return f"the NIC cannot decapsulate {tunnel}"
    reason = _cannot_deliver(leaf, port, ports, unicast_only) or (
        leaf.outputs and _cannot_edit(leaf, caps)) or doom.cannot_match(leaf.region)  # a drop does no edits
    if reason is None and _action_count(leaf, port) > caps.max_actions_per_rule:
        reason = f"{_action_count(leaf, port)} actions; the NIC takes {caps.max_actions_per_rule} per rule"
    return reason


def _passable(leaf: Leaf, port: PortOffload, refused: Mapping[tuple[int, ir.Match], str], scope: int,
              doom: Doom) -> bool:
    """A software leaf a ``pass`` rule may hold: whatever software does with its packets, it still does.

    Holding it costs a rule, so it is done only when a later rule would
    otherwise be kept out by overlapping it (see :meth:`_Planner.decide`).
    """
    return hw.ACTION_PASS in port.capabilities.actions and doom.cannot_match(leaf.region) is None \
        and (scope, leaf.as_match()) not in refused


class Doom:
    """What a NIC can match, per term and remembered (a big host asks of the same few terms millions of times).

    Called with a region: why no refinement of it can be matched by the NIC (None: some may be): a field it
    matches with no mask at all, or a ct_state it cannot match. Refining only adds terms and mask bits, so a
    region doomed stays doomed, and the walk may stop there (:func:`walk`).
    """

    def __init__(self, caps: Capabilities) -> None:
        self.caps = caps
        self._unmatchable_terms: dict[tuple[str, int], str | None] = {}
        self._mismatched_terms: dict[tuple[str, int], str | None] = {}

    def __call__(self, region: Region) -> str | None:
        for field, (_, mask) in region.items():
            reason = self._unmatchable(field, mask)
            if reason is not None:
                return reason
        return None

    def narrowed(self, match: ir.Match, refined: Region) -> str | None:
        """:meth:`__call__` for a region ``match`` narrowed from one that was not doomed: only its terms can."""
        for field, _, _ in match:
            term = refined.get(field)
            if term is not None:
                reason = self._unmatchable(field, term[1])
                if reason is not None:
                    return reason
        return None

    def coarse(self, region: Region) -> dict[str, tuple[int, int]]:
        """``region`` without the terms the NIC cannot match: a larger region it can (see :func:`_walk_table`).
        Only on a NIC with ``pass``: there a rule in front holds the larger leaf, where a NIC without it would
        keep every later rule it overlaps in software."""
        if hw.ACTION_PASS not in self.caps.actions:
            return dict(region)
        return {f: (v, m) for f, (v, m) in region.items() if self._unmatchable(f, m) is None}

    def partly(self, region: Region) -> bool:
        """Whether :meth:`coarse` drops a term of ``region`` the NIC's rules may still carry in another form: a
        ct_state with states it cannot match, on a NIC that matches some. Only then may a rule be disjoint from
        the region and overlap its widening (see Leaf.within); a field the NIC cannot match at all is in no rule."""
        term = region.get("ct_state")
        return term is not None and self._unmatchable("ct_state", term[1]) is not None and \
            self._ct_unmatchable(ir.CT_TRK) is None

    def cannot_match(self, terms: Iterable[tuple[str, int, int]]) -> str | None:
        """Why the NIC cannot match one of ``terms`` as it is (None: it matches them all)."""
        memo = self._mismatched_terms
        for field, _, mask in terms:
            reason = memo.get((field, mask), _UNKNOWN)
            if reason is _UNKNOWN:
                reason = memo[field, mask] = self._mismatched(field, mask)
            if reason is not None:
                return reason
        return None

    def _unmatchable(self, field: str, mask: int) -> str | None:
        memo = self._unmatchable_terms
        reason = memo.get((field, mask), _UNKNOWN)
        if reason is _UNKNOWN:
            reason = memo[field, mask] = self._ct_unmatchable(mask) if field == "ct_state" else None if (
                field == "eth_type" or CAPABILITY_FIELD.get(field, field) in self.caps.match_fields) else \
                f"the NIC cannot match {field} (with any mask)"
        return reason

    def _mismatched(self, field: str, mask: int) -> str | None:
        if field == "ct_state":
            return self._ct_unmatchable(mask)
        if not self.caps.can_match(CAPABILITY_FIELD.get(field, field), mask, ir.FIELD_BITS[field]):
            return f"the NIC cannot match {field} with mask {mask:#x}"
        return None

    def _ct_unmatchable(self, mask: int) -> str | None:
        states = [name for bit, name in CT_STATE_NAMES.items() if mask & bit]
        return None if self.caps.can_conntrack(states) else f"the NIC cannot match ct_state {'/'.join(states)}"


class _Rules:
    """A chain's placed rules or software leaves, found by what they could overlap.

    A decision list of a network's destinations has thousands of entries, nearly all pinned to one
    ``eth_dst`` (switched) or one ``eth_dst`` and ``ipv4_dst`` (routed: the router's MAC), and a tunnel
    port's to one ``tun_id`` per network: a tree keyed by the exact values of those (None where an entry does
    not pin one) makes "what does this leaf overlap" a look at a few buckets instead of a scan of the list.
    """

    KEYS = ("tun_id", "eth_dst", "ipv4_dst")
    _AT = {field: (i, ir.full_mask(field)) for i, field in enumerate(KEYS)}

    def __init__(self) -> None:
        self._tree: dict = {}  # tun_id -> eth_dst -> ipv4_dst -> [(item, its terms by field)] (None: not pinned)

    def add(self, item: HwRule | SoftwareLeaf, key: Sequence[int | None] | None = None) -> None:
        tun, dst, ip = key or self.key_of(item.match)
        level = self._tree.setdefault(tun, {}).setdefault(dst, {})
        level.setdefault(ip, []).append((item, {t.field: t for t in item.match}))

    def remove(self, item: HwRule | SoftwareLeaf) -> None:
        tun, dst, ip = self.key_of(item.match)
        entries = self._tree[tun][dst][ip]
        entries.pop(next(i for i, (other, _) in enumerate(entries) if other is item))

    def overlapping(self, match: ir.Match, key: Sequence[int | None] | None = None) -> list:
        """The entries some packet of ``match`` could match too, in order (``key``: its :meth:`key_of`)."""
        tun, dst, ip = key or self.key_of(match)
        found = []
        tree = self._tree
        for by_dst in (tree.values() if tun is None else (tree.get(tun), tree.get(None))):
            if not by_dst:
                continue
            for by_ip in (by_dst.values() if dst is None else (by_dst.get(dst), by_dst.get(None))):
                if not by_ip:
                    continue
                for entries in (by_ip.values() if ip is None else (by_ip.get(ip), by_ip.get(None))):
                    if entries:
                        found.extend(item for item, theirs in entries if not ir.disjoint(match, theirs))
        if len(found) > 1:
            found.sort(key=_position)
        return found

    @classmethod
    def key_of(cls, match: ir.Match) -> list[int | None]:
        """The values ``match`` pins the KEYS to (None where it does not): where its entry is filed."""
        key: list[int | None] = [None, None, None]
        at = cls._AT
        for field, value, mask in match:
            slot = at.get(field)
            if slot is not None and mask == slot[1]:
                key[slot[0]] = value
        return key


def _position(item: HwRule | SoftwareLeaf) -> int:
    return item.order if isinstance(item, HwRule) else -1


FULL = "the NIC's rule table is full"


@dataclasses.dataclass
class _Decided:
    rules: list[HwRule] = dataclasses.field(default_factory=list)
    software: list[SoftwareLeaf] = dataclasses.field(default_factory=list)
    children: set[int] = dataclasses.field(default_factory=set)
    cost: int = 0  # rules a port pays for: these and every chain they reach, each once
    reached: set[int] = dataclasses.field(default_factory=set)  # the chains those are
    # the least more room that would have placed a path left to software for want of it (None: none was): with
    # less, every decision stays as it is
    shortfall: int | None = None
    wants: dict[int, int] = dataclasses.field(default_factory=dict)  # chain -> the least more room a goto to it needs
    # the least room in which every goto is decided as it is (with less, one a chain's plan decided would be FULL),
    # and a port's chain 0 walked at all (LEAST_ROOM)
    floor: int = 0
    entered: set[tuple] = dataclasses.field(default_factory=set)  # the chains (by key) its gotos went to or wanted

    def short_by(self, rules: int, target: int | None = None) -> None:
        self.shortfall = rules if self.shortfall is None else min(self.shortfall, rules)
        if target is not None:
            self.wants[target] = min(self.wants.get(target, rules), rules)


class ChainIds:
    """tc chain numbers, the same for the same chain in every plan, and growing along every goto.

    On a NIC with no chain limit a chain's number is its entry table's block (``(table + 1) << 23``) plus
    a hash of its entry: a goto always leads to a later table, so to a higher number (the simulated NIC,
    and mlx5 without ignore_flow_level, refuse a goto backwards), and a restarted agent, or a whole plan
    after many changes, numbers a chain as before (its rules keep their identity: nothing to replace).
    Two entries whose hashes meet take the next free number, first come first served, so after a restart
    the two may swap (rare: a few thousand chains in 8 million numbers a table); their rules are then
    replaced, the goto after the chain it leads to is in place (see TcDiff.delete_after). On a NIC with few
    chains (``max_chains``) nothing is shared and each port numbers its own chains from 1 in the order met, as
    far as the NIC goes.
    """

    BLOCK = 23  # bits of a table's block; a tc goto reaches chains below 2**28, the probes' chain is the last
    TABLES = (1 << (28 - BLOCK)) - 2  # tables a layout may have: blocks 1..30 (31 holds the probes' chain)

    def __init__(self) -> None:
        self._ids: dict[tuple, int] = {}
        self._taken: set[int] = set()
        self._next: dict[int, int] = {}

    def get(self, key: tuple, space: int) -> int:
        number = self._ids.get(key)
        if number is None:
            if space == SHARED:
                entry = key[-1]
                if entry.table >= self.TABLES:
                    raise ValueError(f"table {entry.table}: tc chain numbers have room for {self.TABLES} tables "
                                     f"of {1 << self.BLOCK} chains; lower ChainIds.BLOCK for a longer layout")
                block = (entry.table + 1) << self.BLOCK
                slot = int.from_bytes(hashlib.blake2b(repr(key).encode(), digest_size=4).digest(), "big")
                number = block + slot % (1 << self.BLOCK)
                while number in self._taken:
                    number = block + (number + 1 - block) % (1 << self.BLOCK)
            else:
                number = self._next.get(space, 1)
                self._next[space] = number + 1
            self._ids[key] = number
            self._taken.add(number)
        return number

    def of(self, key: tuple) -> int | None:
        """``key``'s number, if it has one."""
        return self._ids.get(key)

    def keep_only(self, keys: Collection[tuple]) -> None:
        """:meth:`forget` every key but ``keys`` (a whole plan's chains): the numbers outlive each plan, so the
        chains of ports long gone would otherwise keep theirs for ever."""
        for key in [key for key in self._ids if key not in keys]:
            self.forget(key)

    def forget(self, key: tuple) -> None:
        """Give up ``key``'s number (its chain is reached by nothing now): a chain made again later takes the
        same hash slot, so the same number unless another took it meanwhile. A port's own numbers on a NIC
        with few chains are kept (they count up, and a number given up would not come back)."""
        number = self._ids.get(key)
        if number is not None and number >= 1 << self.BLOCK:
            del self._ids[key]
            self._taken.discard(number)


_TABLE_OF, _MATCH_OF, _FIELD_OF = operator.attrgetter("table"), operator.attrgetter("match"), operator.itemgetter(0)


class StateRead:
    """Which pipeline state the flows of each table read (match, or copy with a move), counted per field.

    A join's chain entry keeps of a path's state only what the tables from the join on read (see
    :func:`_join_entry`); counting lets a change of the pipeline say whether that set moved.
    """

    def __init__(self, flows: Iterable[ir.Flow]) -> None:
        self._fields: dict[int, dict[str, int]] = {}  # table -> state field -> how many flows read it
        self._matched: dict[int, dict[str, int]] = {}  # table -> header field -> how many flows match it
        self._copied: dict[int, dict[str, int]] = {}  # table -> header field -> how many flows copy it unmatched
        self._from: dict[int, frozenset[str]] = {}
        self._matched_sets: dict[int, frozenset[str]] = {}  # matched(table), until a count changes
        # counted table by table over the flows' terms (a whole plan's first step: 80,000 flows on a big host)
        for table, group in itertools.groupby(flows, key=_TABLE_OF):
            of_table = list(group)
            matched = collections.Counter(map(_FIELD_OF, itertools.chain.from_iterable(map(_MATCH_OF, of_table))))
            copied: collections.Counter[str] = collections.Counter()  # fields copied by a flow not matching them
            for flow in of_table:
                for action in flow.actions:
                    if action.__class__ is ir.Move:
                        copied.update({a.src for a in flow.actions if isinstance(a, ir.Move)}
                                      - {term[0] for term in flow.match})
                        break
            self._add(table, matched, copied)

    def count(self, flow: ir.Flow, step: int) -> None:
        """Take ``flow`` in (``step`` 1) or out (-1)."""
        self._count(*_shape(flow), step)

    def _count(self, table: int, fields: tuple[str, ...], moved: tuple[str, ...], step: int) -> None:
        matched = set(fields)
        self._add(table, dict.fromkeys(matched, step), dict.fromkeys(set(moved) - matched, step))

    def _add(self, table: int, matched: Mapping[str, int], copied: Mapping[str, int]) -> None:
        """Count fields flows of ``table`` match and fields they copy without matching them (field -> how many
        flows more, or fewer): pipeline state where it is read, header fields as matched or as copied."""
        state = self._fields.setdefault(table, {})
        for counts, headers in ((matched, self._matched.setdefault(table, {})),
                                (copied, self._copied.setdefault(table, {}))):
            for field, number in counts.items():
                into = state if field in ir.INTERNAL_FIELDS else headers
                total = into.get(field, 0) + number
                if total:
                    into[field] = total
                else:
                    del into[field]
        self._from.clear()
        self._matched_sets.clear()

    def copied(self, table: int) -> frozenset[str]:
        """Header fields some flow of ``table`` copies into the pipeline's state without matching them."""
        return frozenset(self._copied.get(table, ()))

    def matched(self, table: int) -> frozenset[str]:
        """Header fields some flow of ``table`` matches."""
        fields = self._matched_sets.get(table)
        if fields is None:
            fields = self._matched_sets[table] = frozenset(self._matched.get(table, ()))
        return fields

    def from_table(self, table: int) -> frozenset[str]:
        """State some flow of ``table`` or a later one reads (gotos only go forward)."""
        reads = self._from.get(table)
        if reads is None:
            reads = self._from[table] = frozenset(f for t, counts in self._fields.items() if t >= table
                                                  for f in counts)
        return reads


def _shape(flow: ir.Flow) -> tuple[int, tuple[str, ...], tuple[str, ...]]:
    """What :class:`StateRead` counts of a flow: its table, the fields it matches and those it copies elsewhere."""
    return flow.table, tuple(t.field for t in flow.match), tuple(a.src for a in flow.actions
                                                                   if isinstance(a, ir.Move))


_NAMED_DEPS = frozenset({"out", "matched"})  # dependencies that are not table lookups (see _Planned.deps)
Owner = tuple  # ("port", port key) or ("chain", chain key): what one walk was planned into


@dataclasses.dataclass
class _Planned:
    """One port's chain 0 or one chain, as planned, and what planning it read (to know when to plan it again)."""

    decided: _Decided
    deps: Deps  # (table, fields, values) a walk looked flows up by (-> what it knew there); ("out", port) a leaf
    # would output to; ("matched", table): a path with pending rewrites asked which fields a join looks flows up by


class _Planner:
    """Plans ports' chain 0 and every chain they reach, each chain once, and keeps it all for the next change.

    Every walk records what it read (:data:`Deps`): the table lookups it made (a table and the field and value
    it looked flows up by, :meth:`ir.Pipeline.lookup`, with what else it knew there) and the ports it
    considered as outputs. A changed flow touches the walks that looked up its table by a value it matches (or
    that it does not pin) and agrees with what they knew; a port that comes, goes or changes touches the walks
    that considered it. :meth:`update` plans those again, and the ports and chains above a chain whose
    usefulness or size changed; everything else stays as it was.

    A chain planned again is not planned from nothing: its walk reuses the segments nothing changed under
    (:class:`Segments`), and its decisions take a leaf seen before as judged before (``_judged``), so a
    destination added to a network costs that destination's paths and one pass over the chain's list. A
    chain nothing has a goto to any more is forgotten with all of it (:meth:`_prune`).
    """

    def __init__(self, pipeline: ir.Pipeline, ports: Mapping[int, PortOffload], ethertypes: Sequence[int],
                 refused: Mapping[tuple[int, ir.Match], str], unicast_only: bool, joins: frozenset[int],
                 ids: ChainIds, rank: Mapping[int, float] | None = None) -> None:
        self.pipeline, self.ports, self.ethertypes = pipeline, dict(ports), tuple(ethertypes)
        self.rank: dict[int, float] = dict(rank or {})  # port -> its priority for room (see _order)
        self.refused, self.unicast_only, self.joins, self.ids = dict(refused), unicast_only, joins, ids
        self._planned: dict[Owner, _Planned] = {}
        self._chains: dict[tuple, ChainPlan | None] = {}  # chain key -> plan, None: not usable (or being planned)
        self._keys: dict[int, tuple] = {}  # chain id -> key
        self._port_software: dict[int, list[SoftwareLeaf]] = {}  # port -> its chain 0's software paths
        self._by_number: dict[int, ChainPlan] = {}  # the plans of _chains, by id (keys hash slowly: they hold entries)
        self._readers: dict[tuple, set[Owner]] = {}  # ("out", port) or ("matched", table) -> owners that read it
        # (table, fields) -> the owners that looked its flows up by those fields, by their values, one dict level
        # a field (a set at the bottom): see ir.Pipeline.lookup
        self._by_table: dict[tuple[int, tuple[str, ...]], dict | set[Owner]] = {}
        self._parents: dict[tuple, set[Owner]] = {}  # chain key -> owners with a goto to it
        self._orphans: set[tuple] = set()  # chains whose last parent went during this change (see _prune)
        self._reached_by: dict[int, set[int]] = {}  # chain id -> ports reaching it
        self._closures: dict[int, set[int]] = {}  # port -> chain ids it reaches
        self._closures_of: dict[int, frozenset[int]] = {}  # chain id -> it and the chains below it
        self._costs: dict[int, int] = {}  # port -> the rules its representor takes
        self._budgets: dict[int, int] = {}  # port -> the room it was planned in
        self._starved: dict[int, int] = {}  # port -> the more room it needs to place a path kept out for want of it
        self._wants: dict[int, dict[int, int]] = {}  # starved port -> chain -> the more room a goto to it needs
        self._counted: dict[int, set[int]] = {}  # port -> the chains it reaches, as counted during this change
        self._reshaped = False  # a chain planned again during this change leads elsewhere (or appeared, or went)
        self._resized: dict[int, int] = {}  # chain -> the rules it gained during this change (else)
        self._freed: dict[int, float] = {}  # chain -> at most how many rules fewer a goto to it costs now
        self._planned_since: set[int] = set()  # chains planned since the last Plan was assembled
        self._dooms: dict[int, Doom] = {}  # id(capabilities) -> its match checks
        self._on_switch: dict[str, set[int]] = {}  # switch -> its ports' keys
        self._file_ports(self.ports)
        # owner -> (capabilities, id(leaf) -> (leaf, why it stays in software or None, switch of its output)): the
        # judgements of its last decide, for leaves its next walk reuses
        self._judged: dict[Owner, tuple[Capabilities, dict[int, tuple[Leaf, str | None, str | None]]]] = {}
        self._segments: dict[tuple, tuple[Capabilities, dict[int, Segment]]] = {}  # chain key -> its last walk's
        # port -> its chain 0's last walks (by ethertype: each walks table 0 over its own region): a tunnel device's
        # holds a segment per network, and planning it again when it gains room reuses all it can
        self._port_segments: dict[int, tuple[Capabilities, dict[int, dict[int, Segment]]]] = {}
        self._changed: Callable[[Deps], bool] | None = None  # during a change: whether deps are hit
        self.reads = StateRead(pipeline.flows)
        self.plan = Plan()

    # --- whole plans and changes ------------------------------------------------------

    def _order(self, keys: Iterable[int]) -> list[int]:
        """``keys`` in the order room is given out: highest rank first, then by key (a port the rank does not
        name ranks 0; without a rank, key order)."""
        rank = self.rank
        return sorted(keys, key=lambda k: (-rank.get(k, 0.0), k)) if rank else sorted(keys)

    def chain_keys(self) -> Collection[tuple]:
        """The keys of the chains planned (a whole plan's: what ChainIds keeps numbers for)."""
        return self._chains.keys()

    def plan_all(self) -> Plan:
        """Every port, in rank order (:meth:`_order`), each within what the ports before it left of its switch's
        capacity."""
        used: dict[str, int] = {}
        for key in self._order(self.ports):
            port = self.ports[key]
            budget = max(port.capabilities.max_rules - used.get(port.switch_id, 0), 0)
            used[port.switch_id] = used.get(port.switch_id, 0) + self._plan_port(port, budget)
        return self._assemble(set(self.ports))

    def update(self, pipeline: ir.Pipeline, added: Sequence[ir.Flow], removed: Sequence[ir.Flow],
               ports: Mapping[int, PortOffload]) -> set[int]:
        """Take a changed pipeline (the flows ``added`` and ``removed``) and port set; the ports whose rules may
        differ now. Raises :class:`_Replan` when only a whole plan is right: what a join table's chains keep
        of the state changed (a field newly read, or no longer), or a switch stays over its capacity after its
        last ports gave up room (:meth:`_make_room`)."""
        reads_before = {j: self.reads.from_table(j) for j in self.joins}
        matched_before = {j: self.reads.matched(j) for j in self.joins}
        for flows, step in ((added, 1), (removed, -1)):
            for flow in flows:
                self.reads.count(flow, step)
        if any(self.reads.from_table(j) != before for j, before in reads_before.items()):
            raise _Replan("the fields read behind a join changed")
        self.pipeline = pipeline
        dirty: set[Owner] = set()
        for join, before in matched_before.items():
            if self.reads.matched(join) != before:
                dirty |= self._readers.get(("matched", join), set())
        for flow in (*added, *removed):
            dirty |= self._readers_of(flow)
        gone = self.ports.keys() - ports.keys()
        moved = {k for k, v in ports.items() if self.ports.get(k) != v}
        for key in gone | moved:
            dirty |= self._readers.get(("out", key), set())
        for key in gone:
            self._forget(("port", key))
            self._port_segments.pop(key, None)
            self._judged.pop(("port", key), None)
        self.ports = dict(ports)
        self._file_ports(gone | moved)
        dirty |= {("port", k) for k in moved}
        self._reshaped, self._resized, self._freed = False, {}, {}
        self._changed = _hit_by(added, removed, {j for j, before in matched_before.items()
                                                 if self.reads.matched(j) != before})
        try:
            return self._apply(dirty, gone)
        finally:
            self._changed = None

    def _apply(self, dirty: set[Owner], gone: set[int]) -> set[int]:
        """Plan again what a change made ``dirty`` (owners), with the ports ``gone``; see :meth:`update`."""
        touched_chains = self._replan_chains({o for o in dirty if o[0] == "chain"}, dirty)
        self._forget_closures(self._planned_since)
        replanned = {o[1] for o in dirty if o[0] == "port"} & self.ports.keys()
        below: set[int] = set()  # ports that keep their chain 0 but reach a chain planned again
        for number in touched_chains:
            below |= self._reached_by.get(number, set())
        for key in gone:
            self._costs.pop(key, None)
            self._starved.pop(key, None)
            self._wants.pop(key, None)
            self._budgets.pop(key, None)
        # what the ports below cost now, before the room left to the others is counted: when no chain planned
        # again changed where it leads, they reach the chains they did, and only those chains' sizes changed
        if self._reshaped:
            used = self._used()
            for key in below - replanned - gone:
                self._set_cost(key, used)
        else:
            for number, grew in self._resized.items():
                for key in self._reached_by.get(number, set()) - gone:
                    self._costs[key] += grew
            for key in below - replanned - gone:
                self._counted[key] = self._closures[key]
            used = self._used()
        for key in self._order(replanned):
            self._plan_port(self.ports[key], self._room(self.ports[key], used))
            self._set_cost(key, used)
        # ports short of room try again when what they could gain would place more: a port planned after them, or
        # gone, freed room; a chain they reach shrank (room for anything), or a chain below a goto they wanted
        # (room for that goto); _freed bounds what a chain saves
        general, toward = self._credits()
        retried = set()
        for key in self._order(self._starved):
            room = self._room(self.ports[key], used)
            gain = room - self._budgets[key] + general.get(key, 0)
            credits = toward.get(key)
            if (gain >= self._starved.get(key, math.inf) or credits and any(
                    gain + credit >= self._wants.get(key, {}).get(target, math.inf)
                    for target, credit in credits.items())) and self._worth_it(key, gain + max(
                        (credits or {}).values(), default=0)):
                self._plan_port(self.ports[key], room)
                self._set_cost(key, used)
                retried.add(key)
        retried |= self._make_room(used)
        changed_ports = {o[1] for o in dirty if o[0] == "port"} | gone | below | retried
        self._assemble(changed_ports & self.ports.keys(), gone, self._planned_since)  # holds touched_chains too
        self._prune()
        self._check_room()
        return changed_ports

    def rerank(self, rank: Mapping[int, float], dry: bool = False) -> set[int]:
        """Give the room out again in ``rank``'s order (:meth:`_order`), the pipeline and ports as they are; the
        ports planned again (``dry``: the first port that would be, and nothing changed).

        Each port, in the new order, gets what the ports before it leave of its switch, as a whole plan would
        serve it. A port's plan stays as it is when that room would decide every path as before: room for all
        it takes and for every goto its chain decided (:attr:`_Decided.floor`), and, short of room, less than
        the more room its first path kept out needs (:attr:`_Decided.shortfall`); only the others are planned
        again. Ports holding all they want in the same room, whatever their order among themselves, are not
        touched: a new rank moves rules only where it moves room.
        """
        before = self.rank
        self.rank = dict(rank)
        used: dict[str, int] = {}
        moved: set[int] = set()
        for key in self._order(self.ports):
            port = self.ports[key]
            switch = port.switch_id
            room = max(port.capabilities.max_rules - used.get(switch, 0), 0)
            cost = self._costs.get(key, 0)
            short = self._starved.get(key)
            planned = self._planned.get(("port", key))
            floor = planned.decided.floor if planned is not None else 0
            if room < max(cost, floor) or short is not None and room >= self._budgets.get(key, 0) + short:
                moved.add(key)
                if dry:
                    break
                self._changed = _unchanged  # the pipeline is as it was: every segment of its last walk holds
                try:
                    self._plan_port(port, room)
                finally:
                    self._changed = None
                self._set_cost(key, {})
            used[switch] = used.get(switch, 0) + self._costs.get(key, 0)
        if dry:
            self.rank = before
            return moved
        if moved:
            self._assemble(moved, (), self._planned_since)
            self._prune()
            self._check_room()
        return moved

    def _worth_it(self, key: int, gain: float) -> bool:
        """Whether port ``key``, short of room, is planned again for ``gain`` more rules: one whose chain 0 is long
        (a tunnel device decides every network's decapsulation, a thousand paths and more) only once the gain
        is a rule per PATHS_PER_RULE of its paths, or each local port removed would have it decide them all
        again for one more rule (30 ms a change at 1,000 networks). Until then it keeps what it has; the resync
        timer's whole plan serves every port in key order again."""
        judged = self._judged.get(("port", key))
        return gain * PATHS_PER_RULE >= (len(judged[1]) if judged is not None else 0)

    def _make_room(self, used: dict[str, int]) -> set[int]:
        """Bring a switch a change pushed over its capacity (a chain grew under ports that keep it) back under
        it: its VF ports from the last in key order give up room, each planned again in what the others leave
        it, as a whole plan would have served them last (in rank order: :meth:`_order`); a tunnel device (whose
        decision list holds every network's, and is the dearest to plan again) only when theirs is not enough.
        The ports planned again."""
        shrunk: set[int] = set()
        over = self._over(used)
        if not over:
            return shrunk
        order = self._order(k for k in self.ports if k not in TUNNEL_TYPE)[::-1]
        for key in order + self._order(k for k in self.ports if k in TUNNEL_TYPE)[::-1]:
            port = self.ports[key]
            if port.switch_id not in over or not self._costs.get(key):
                continue
            self._plan_port(port, self._room(port, used))
            self._set_cost(key, used)
            shrunk.add(key)
            if used.get(port.switch_id, 0) <= port.capabilities.max_rules:
                over.discard(port.switch_id)
                if not over:
                    break
        return shrunk

    def _check_room(self) -> None:
        """Raise :class:`_Replan` when a switch is over its capacity (what :meth:`_make_room` could not mend).

        Short of room, a port re-planned by a change gets what the others leave it; only a whole plan (the
        resync timer) serves the ports in key order again.
        """
        if self._over(self._used()):
            raise _Replan("a switch is over its capacity")

    def _over(self, used: Mapping[str, int]) -> set[str]:
        """The switches whose ports take more rules than it holds (a switch's capacity: its ports' NIC's)."""
        return {switch for switch, keys in self._on_switch.items()
                if keys and used.get(switch, 0) > self.ports[next(iter(keys))].capabilities.max_rules}

    def _replan_chains(self, chains: set[Owner], dirty: set[Owner]) -> set[int]:
        """Plan the chains in ``chains`` again; add to ``dirty`` the owners above one that changed its use."""
        touched: set[int] = set()
        before = {o[1]: self._chains.get(o[1]) for o in chains}
        for owner in chains:
            self._forget(owner)
            self._set_chain(owner[1], None)
            del self._chains[owner[1]]
        for owner in sorted(chains, key=lambda o: self.ids.get(o[1], SHARED)):
            key, old = owner[1], before[owner[1]]
            if key in self._chains:  # planned already, as the child of another chain planned again: the ports
                new = self._chains[key]  # reaching it and the owners above it are told as if planned here
            else:
                ctx = self._context(key)
                if ctx is None:
                    continue
                new = self._set_chain(key, self._chain_for(ctx, key))
            if old is not None:
                touched.add(old.id)
            if (old is None) != (new is None) or (old is not None and _exit(old) != _exit(new)):
                dirty |= self._parents.get(key, set())
                upward = {o for o in self._parents.get(key, set()) if o[0] == "chain"} - chains
                touched |= self._replan_chains(upward, dirty)
        for owner in chains:
            old, new = before[owner[1]], self._chains.get(owner[1])
            if old is None or new is None:
                self._reshaped = True
                if old is not None:  # gone, or of no use now: a goto to it is no more
                    self._free(old.id, len(old.rules) + self._cost_below(old.children))
                continue
            self._free(old.id, max(len(old.rules) - len(new.rules), 0))
            if old.children == new.children:
                self._resized[new.id] = len(new.rules) - len(old.rules)
                continue
            self._reshaped = True
            self._free(old.id, self._cost_below(old.children - new.children))
        return touched

    def _prune(self) -> None:
        """Forget the chains nothing has a goto to any more (a port gone, a destination's conntrack chain left
        behind), and those only they led to: what the planner keeps for a chain (its plan, segments,
        judgements, number) would otherwise grow with every port that ever came and went."""
        while self._orphans:
            key = self._orphans.pop()
            if self._parents.get(key) or key not in self._chains:
                continue
            chain = self._chains.pop(key)
            number = chain.id if chain is not None else self.ids.of(key)
            self._forget(("chain", key))
            for table in (self._by_number, self._keys, self._closures_of, self._reached_by):
                table.pop(number, None)
            for table in (self._segments, self._parents):
                table.pop(key, None)
            self._judged.pop(("chain", key), None)
            self.ids.forget(key)

    def _free(self, number: int, rules: float) -> None:
        """Count ``rules`` fewer under chain ``number`` (what a port above it that wanted more may gain)."""
        if rules:
            self._freed[number] = self._freed.get(number, 0) + rules

    def _credits(self) -> tuple[dict[int, float], dict[int, dict[int, float]]]:
        """What the chains planned again freed, for the ports short of room: (port -> under chains it reaches,
        port -> wanted chain -> under that chain)."""
        general: dict[int, float] = {}
        toward: dict[int, dict[int, float]] = {}
        for number, freed in self._freed.items() if self._starved else ():
            chains, ports = self._above({number})
            numbers = {self.ids.of(key) for key in chains}  # few: the chains above one, by number
            for port in ports & self._starved.keys():
                if number in self._closures.get(port, ()):
                    general[port] = general.get(port, 0) + freed
                    continue
                for target in self._wants.get(port, {}).keys() & numbers:  # a tunnel device wants a thousand
                    toward.setdefault(port, {})[target] = toward.get(port, {}).get(target, 0) + freed
        return general, toward

    def _cost_below(self, children: Iterable[int]) -> float:
        """What gotos to ``children`` cost (inf: not known). A child planned again in this change counts what
        it lost on its own."""
        cost = 0.0
        for child in children:
            if child in self._by_number:
                cost += self._rules_in(self._closure_of(child))
            elif child not in self._planned_since:
                return math.inf
        return cost

    def _context(self, key: tuple) -> PortOffload | None:
        """The port context a chain is planned in: its own port, or any port of its switch for a shared one."""
        switch, scope, _ = key
        if scope != SHARED:
            return self.ports.get(scope)
        return next((p for p in self.ports.values() if p.switch_id == switch), None)

    def _above(self, numbers: Iterable[int]) -> tuple[set[tuple], set[int]]:
        """The chains (by key) with a goto, placed or wanted, to one of the chains ``numbers`` or to a chain above
        one, those chains included; and the ports with one."""
        chains = {self._keys[n] for n in numbers}
        ports: set[int] = set()
        todo = list(chains)
        while todo:
            for kind, what in self._parents.get(todo.pop(), ()):
                if kind == "port":
                    ports.add(what)
                elif what not in chains:
                    chains.add(what)
                    todo.append(what)
        return chains, ports

    def _used(self) -> dict[str, int]:
        """Switch -> the rules its ports' representors take, as planned so far."""
        get = self._costs.get
        return {switch: sum(map(get, keys, itertools.repeat(0))) for switch, keys in self._on_switch.items()}

    def _file_ports(self, keys: Iterable[int]) -> None:
        """File ``keys`` (ports come, gone or moved) under the switch each is on now (:meth:`_used` sums by it)."""
        for key in keys:
            for on in self._on_switch.values():
                on.discard(key)
            port = self.ports.get(key)
            if port is not None:
                self._on_switch.setdefault(port.switch_id, set()).add(key)

    def _room(self, port: PortOffload, used: Mapping[str, int]) -> int:
        """What the other ports of its switch leave ``port``."""
        others = used.get(port.switch_id, 0) - self._costs.get(port.port, 0)
        return max(port.capabilities.max_rules - others, 0)

    def _set_cost(self, key: int, used: dict[str, int]) -> None:
        """Count again what port ``key``'s representor takes: its chain 0 and every chain below it."""
        planned = self._planned["port", key].decided
        closure = self._counted[key] = self._reaching(planned.children)
        cost = len(planned.rules) + self._rules_in(closure)
        switch = self.ports[key].switch_id
        used[switch] = used.get(switch, 0) + cost - self._costs.get(key, 0)
        self._costs[key] = cost

    def _readers_of(self, flow: ir.Flow) -> set[Owner]:
        """The owners whose walks looked up ``flow``'s table by values whose answer it is in (ir.reaches), and
        where it agrees with what the walk knew (a port's walk of IPv4 is not one of an ARP answer's readers,
        though it looked the responder's table up by its network)."""
        found: set[Owner] = set()
        pins = ir.pins(flow.match)
        for (table, fields), tree in self._by_table.items():
            if table == flow.table:
                found |= _reached(tree, [pins.get(field) for field in fields])
        return {owner for owner in found if self._agreed(owner, flow.table, pins)}

    def _agreed(self, owner: Owner, table: int, pins: Mapping[str, int]) -> bool:
        """Whether one of ``owner``'s lookups of ``table`` has a flow pinning ``pins`` among its answers as it knew
        them."""
        planned = self._planned.get(owner)
        if planned is None:
            return True
        return any(dep[0] == table and _among_answers(pins, dep, known) for dep, known in planned.deps.items())

    # --- planning one port or chain ------------------------------------------------------

    def _plan_port(self, port: PortOffload, budget: int) -> int:
        """Plan one port's chain 0 within ``budget`` rules; the rules its representor takes."""
        owner = ("port", port.port)
        self._forget(owner)
        deps: Deps = {}
        joins = self._joins(port.capabilities)
        if budget < LEAST_ROOM and joins:
            decided = _unwalked(port, budget)
            self._port_segments.pop(port.port, None)
            self._judged.pop(owner, None)
        else:
            doomed = self._doom(port.capabilities)
            known = {"in_port": port.port, **dict.fromkeys(ir.INTERNAL_FIELDS, 0)}
            kept = self._port_segments.get(port.port)
            memos = {eth_type: Segments(kept[1].get(eth_type) if kept is not None and kept[0] is port.capabilities
                                        else None, self._changed) for eth_type in self.ethertypes}
            leaves = (leaf for eth_type in self.ethertypes
                      for leaf in walk(self.pipeline, known, {"eth_type": (eth_type, 0xFFFF)}, joins, doomed, deps,
                                       self.reads, memos[eth_type]))
            decided = self.decide(leaves, port, port.port, 0, budget, owner, deps)
            if joins:  # with less room it would not be walked (LEAST_ROOM)
                decided.floor = max(decided.floor, LEAST_ROOM)
            self._port_segments[port.port] = (port.capabilities, {t: memo.now for t, memo in memos.items()})
        self._remember(owner, _Planned(decided, deps))
        self._budgets[port.port] = budget
        if decided.shortfall is not None:
            self._starved[port.port] = decided.shortfall
            self._wants[port.port] = decided.wants
        else:
            self._starved.pop(port.port, None)
            self._wants.pop(port.port, None)
        return decided.cost

    def _chain_for(self, ctx: PortOffload, key: tuple) -> ChainPlan | None:
        entry = key[2]
        owner = ("chain", key)
        caps = ctx.capabilities
        number = self.ids.get(key, ctx.port if caps.max_chains is not None else SHARED)
        self._keys[number] = key
        self._planned_since.add(number)
        catch = _catch_all(entry)
        scope = SHARED if entry.shared else ctx.port
        if catch is None or (caps.max_chains is not None and number >= caps.max_chains) or (
                (scope, catch) in self.refused):  # a chain whose misses cannot be caught must not be entered
            self._remember(owner, _Planned(_Decided(), {}))
            return None
        shared = entry.shared
        chain_ctx = PortOffload(SHARED, ctx.switch_id, caps) if shared else ctx
        deps: Deps = {}
        kept = self._segments.get(key)
        memo = Segments(kept[1] if kept is not None and kept[0] is caps else None, self._changed,
                        self._twin(key, caps))
        leaves = walk_entry(self.pipeline, entry, self._joins(caps), self._doom(caps), deps, self.reads, memo)
        decided = self.decide(leaves, chain_ctx, scope, number, None, owner, deps)
        self._segments[key] = (caps, memo.now)
        if not any(r.output is not None or r.goto is not None or r.drop for r in decided.rules):
            self._remember(owner, _Planned(decided, deps))
            return None
        level = 1 + max(r.level for r in decided.rules)
        rules = decided.rules + [HwRule(chain_ctx.port, len(decided.rules), level, catch, None, "miss", (), number,
                                        None, shared)]
        chain = ChainPlan(number, rules, decided.software, decided.children, shared)
        self._remember(owner, _Planned(decided, deps))
        return chain

    def _twin(self, key: tuple, caps: Capabilities) -> Twin | None:
        """The chain ``key`` for another ethertype, planned already: its segments may stand for this one's (see
        :class:`Twin`). Not where the NIC cannot match either region as it is (a walk that stops at its entry)."""
        entry = key[2]
        region = {f: (v, m) for f, v, m in entry.region}
        mine, mask = region.get("eth_type", (None, 0))
        doom = self._doom(caps)
        if mine is None or mask != _FULL_MASKS["eth_type"] or doom(region) is not None:
            return None
        for theirs in self.ethertypes:
            if theirs == mine:
                continue
            twin = (key[0], key[1], dataclasses.replace(entry, region=tuple(
                (f, theirs, m) if f == "eth_type" else (f, v, m) for f, v, m in entry.region)))
            kept = self._segments.get(twin)
            if kept is not None and kept[0] is caps and doom({**region, "eth_type": (theirs, mask)}) is None:
                return Twin(kept[1], theirs, mine, self.reads)
        return None

    def _closure_of(self, number: int) -> frozenset[int]:
        """The chain and every chain below it (what a goto to it costs a representor)."""
        closure = self._closures_of.get(number)
        if closure is None:
            closure = self._closures_of[number] = frozenset({number}).union(
                *(self._closure_of(child) for child in self._by_id(number).children))
        return closure

    def _rules_in(self, chains: Iterable[int]) -> int:
        """The rules of ``chains``: what a representor reaching them takes of them."""
        return sum(len(self._by_number[c].rules) for c in chains)

    def _reaching(self, children: Iterable[int]) -> set[int]:
        """The chains a goto to each of ``children`` leads through (a port's, from its chain 0)."""
        return set().union(*(self._closure_of(child) for child in children))

    def _forget_closures(self, numbers: Iterable[int]) -> None:
        """Drop the cached closures of chains planned again, and of every chain above them."""
        for key in self._above(numbers)[0]:
            chain = self._chains.get(key)
            self._closures_of.pop(chain.id if chain is not None else self.ids.get(key, SHARED), None)

    def _remember(self, owner: Owner, planned: _Planned) -> None:
        self._planned[owner] = planned
        if owner[0] == "port":
            self._port_software[owner[1]] = planned.decided.software
        for dep in planned.deps:
            if dep[0] in _NAMED_DEPS:
                self._readers.setdefault(dep, set()).add(owner)
            else:
                values = dep[2]
                node = self._by_table.setdefault(dep[:2], {} if values else set())
                for depth, value in enumerate(values, 1):
                    node = node.setdefault(value, {} if depth < len(values) else set())
                node.add(owner)

    def _forget(self, owner: Owner) -> None:
        planned = self._planned.pop(owner, None)
        if planned is None:
            return
        if owner[0] == "port":
            del self._port_software[owner[1]]
        for dep in planned.deps:
            if dep[0] in _NAMED_DEPS:
                self._readers.get(dep, set()).discard(owner)
            else:
                node = self._by_table.get(dep[:2], set())
                for value in dep[2]:
                    node = node.get(value, set())
                node.discard(owner)
        for key in planned.decided.entered:
            parents = self._parents.get(key)
            if parents is not None:
                parents.discard(owner)
                if not parents:
                    self._orphans.add(key)

    def _doom(self, caps: Capabilities) -> Doom:
        """The NIC's match checks, one memo per capabilities (keyed by identity: they hold a dict, no hash)."""
        doom = self._dooms.get(id(caps))
        if doom is None or doom.caps is not caps:
            if len(self._dooms) >= 64:  # capabilities read afresh (a NIC probed again): forget the old ones'
                self._dooms.clear()
            doom = self._dooms[id(caps)] = Doom(caps)
        return doom

    def _joins(self, caps: Capabilities) -> frozenset[int]:
        """Where paths may hand over to a shared chain: nowhere on a NIC without (enough) chains, whose ports
        keep a flat decision list each, as far as their capacity goes."""
        if caps.max_chains is not None or not {hw.ACTION_GOTO_CHAIN, hw.ACTION_PASS} <= caps.actions:
            return frozenset()
        return self.joins

    def decide(self, leaves: Iterator[Leaf], ctx: PortOffload, scope: int, chain: int,
               budget: int | None, owner: Owner, deps: Deps) -> _Decided:
        """One chain's decision list: each leaf a rule when it can be, in order.

        ``refused`` holds rules the NIC already turned down (by scope and match), with its reason; they stay in
        software, and so does whatever they shadow. A leaf kept out only by earlier software leaves gets them
        placed as ``pass`` rules in front of it, when the NIC can match them (and has room). ``budget`` (for a
        port's chain 0) counts a goto as the rules of every chain it leads to; a goto that cannot pay the least a
        chain costs (:data:`GOTO_AT_LEAST`) stays in software without the chain being planned.
        """
        out = _Decided()
        placed, software = _Rules(), _Rules()
        shared = scope == SHARED
        doom = self._doom(ctx.capabilities)
        refused = self.refused
        judged = self._judged.get(owner)
        before = judged[1] if judged is not None and judged[0] is ctx.capabilities else {}
        now: dict[int, tuple[Leaf, str | None, str | None]] = {}
        self._judged[owner] = (ctx.capabilities, now)
        for leaf in leaves:
            match = leaf.as_match()
            for port in leaf.outputs:
                deps[("out", port)] = None
            # a leaf walked before (a segment reused) is judged as before while the port it goes to is where it was
            target_port = self.ports.get(leaf.outputs[0]) if leaf.outputs else None
            switch = target_port.switch_id if target_port is not None else None
            seen = before.get(id(leaf))
            if seen is not None and seen[0] is leaf and seen[2] == switch:
                reason = seen[1]
            else:
                reason = _why_not(leaf, ctx, self.ports, self.unicast_only, doom)
            now[id(leaf)] = (leaf, reason, switch)
            if reason is None and refused and (scope, match) in refused:
                reason = f"the NIC refused it: {refused[scope, match]}"
            target, cost, below = None, 1, _NOTHING
            if reason is None and leaf.enter is not None:
                chain_key = _chain_key(ctx, leaf.enter)
                dear = budget is not None and not self._reached_already(ctx, chain_key, out)
                if dear and out.cost + GOTO_AT_LEAST > budget:
                    reason = FULL  # whatever the chain behind it holds: not planned for a port that cannot pay
                    out.short_by(out.cost + GOTO_AT_LEAST - budget)
                else:
                    if dear:  # with less room than this, FULL whatever the chain holds
                        out.floor = max(out.floor, out.cost + GOTO_AT_LEAST)
                    target, reason = self._enter(ctx, chain_key, owner, out)
                    if target is not None and budget is not None:
                        below = self._closure_of(target) - out.reached
                        cost += self._rules_in(below)
            key = _Rules.key_of(match)
            shadows = [sw for sw in software.overlapping(match, key) if sw.overlaps(match)]
            above = placed.overlapping(match, key) if reason is None else ()  # the placed rules it must sit below
            if reason is None and (above or shadows) and _tagged_after_untagged(match, [*above, *shadows]):
                reason = "VLAN-tagged, behind an overlapping rule for untagged packets"
            if reason is None and shadows and not all(sw.passable for sw in shadows):
                reason = "overlaps an earlier software-only path"
            elif reason is None and shadows and budget is not None and out.cost + len(shadows) + cost > budget:
                reason = FULL  # the pass rules it needs in front do not fit
                out.short_by(out.cost + len(shadows) + cost - budget, target)
            elif reason is None:
                for sw in shadows:  # hold them in front with pass rules
                    software.remove(sw)
                    out.software.remove(sw)
                    self._place(out, placed, HwRule(ctx.port, len(out.rules), 0, sw.match, None, "", (), chain,
                                                    shared=shared))
                    out.cost += 1
                above = placed.overlapping(match, key)
            if reason is None and budget is not None and out.cost + cost > budget:
                reason = FULL
                out.short_by(out.cost + cost - budget, target)
            if reason is not None:
                sw = SoftwareLeaf(scope, match, reason, chain, _passable(leaf, ctx, self.refused, scope, doom),
                                  tuple(map(ir.Match.of_terms, leaf.within)), leaf.owner)
                software.add(sw, key)
                out.software.append(sw)
                continue
            if leaf.enter is None and not leaf.outputs:  # a drop: header edits before it do not matter
                rule = HwRule(ctx.port, len(out.rules), 0, match, None, leaf.owner, (), chain, None, shared, True)
            else:
                output = None if leaf.enter is not None else leaf.outputs[0]
                rule = HwRule(ctx.port, len(out.rules), 0, match, output, leaf.owner or "", leaf.edits, chain,
                              target, shared)
            self._place(out, placed, rule, above, key)
            out.cost += cost
            if below:
                out.reached |= below
            if target is not None:
                out.children.add(target)
        return out

    @staticmethod
    def _place(out: _Decided, placed: _Rules, rule: HwRule, above: Sequence[HwRule] | None = None,
               key: Sequence[int | None] | None = None) -> None:
        """Add ``rule`` on the lowest level above every overlapping rule placed before it (``above``, when the
        caller has them already; ``key``: its match's :meth:`_Rules.key_of`)."""
        if above is None:
            above = placed.overlapping(rule.match, key)
        if above:
            rule = _new_tuple(HwRule, (*rule[:2], 1 + max(r.level for r in above), *rule[3:]))  # (_replace is slower)
        placed.add(rule, key)
        out.rules.append(rule)

    def _reached_already(self, ctx: PortOffload, key: tuple, out: _Decided) -> bool:
        """Whether a goto to the chain ``key`` (:func:`_chain_key`) costs one rule only (the chain and those below
        it are among what the decision list reaches already), or the NIC numbers chains in the order met
        (``max_chains``: each goto there is decided by the chain itself). Else it costs at least
        :data:`GOTO_AT_LEAST`."""
        if ctx.capabilities.max_chains is not None:
            return True
        chain = self._chains.get(key)
        return chain is not None and self._closure_of(chain.id) <= out.reached

    def _enter(self, ctx: PortOffload, key: tuple, parent: Owner, out: _Decided) -> tuple[int | None, str | None]:
        """The chain ``key`` (:func:`_chain_key`) a goto leaf leads to, planned now if it is new (None and why: keep
        the leaf in software)."""
        caps = ctx.capabilities
        limited = caps.max_chains is not None
        out.entered.add(key)
        if key not in self._chains:
            self._chains[key] = None  # a chain reaching itself stays in software
            self._set_chain(key, self._chain_for(ctx, key))
        self._parents.setdefault(key, set()).add(parent)
        chain = self._chains[key]
        if chain is None:
            number = self.ids.get(key, SHARED)
            if limited and number >= caps.max_chains:
                return None, f"the NIC has {caps.max_chains} chain(s); chain {number} does not fit"
            return None, "no path behind this goto goes to hardware (or its misses cannot be caught)"
        return _exit(chain), None

    def _set_chain(self, key: tuple, chain: ChainPlan | None) -> ChainPlan | None:
        old = self._chains.get(key)
        if old is not None:
            del self._by_number[old.id]
        self._chains[key] = chain
        if chain is not None:
            self._by_number[chain.id] = chain
        return chain

    def _by_id(self, number: int) -> ChainPlan:
        return self._by_number[number]

    # --- the plan --------------------------------------------------------------------------

    def _assemble(self, ports: set[int], gone: Iterable[int] = (), refresh: set[int] | None = None) -> Plan:
        """A new :class:`Plan`: ``ports`` looked at again (their rules and the chains they reach), the rest kept.

        ``refresh``: the chains planned again since the last plan (None: a whole plan, everything looked at).
        """
        old = self.plan
        own, reaches = dict(old.own), dict(old.reaches)
        looked: set[int] = set()  # chains whose reach may have changed
        for key in gone:
            own.pop(key, None)
            reaches.pop(key, None)
            for number in self._closures.pop(key, ()):
                self._reached_by.get(number, set()).discard(key)
                looked.add(number)
        for key in ports:
            planned = self._planned["port", key]
            closure = self._counted.get(key)  # with its cost, counted during this change
            if closure is not None and closure is self._closures.get(key):
                continue  # it reaches the chains it did (some planned again in place: Plan.refreshed)
            if closure is None:
                closure = self._reaching(planned.decided.children)
                self._costs[key] = len(planned.decided.rules) + self._rules_in(closure)
            before = self._closures.get(key, set())
            looked |= before ^ closure
            for number in before - closure:
                self._reached_by.get(number, set()).discard(key)
            for number in closure - before:
                self._reached_by.setdefault(number, set()).add(key)
            self._closures[key] = closure
            own[key] = planned.decided.rules
            if closure:
                reaches[key] = tuple(sorted(closure))
            else:
                reaches.pop(key, None)
        if refresh is None:
            looked = set(self._reached_by)
        chains = dict(old.chains) if refresh is not None else {}
        for number in looked | (refresh or set()):
            if self._reached_by.get(number):
                chains[number] = self._by_id(number)
            else:
                chains.pop(number, None)
        self._planned_since = set()
        self._counted.clear()
        self.plan = Plan(own, chains, reaches, of_ports=dict(self._port_software),
                         refreshed=frozenset(refresh) if refresh is not None else None)
        return self.plan


def _unwalked(port: PortOffload, budget: int) -> _Decided:
    """The plan of a port given less than :data:`LEAST_ROOM` where paths hand over to shared chains: no rule, one
    software path for all it sends, short of room until it has that much. It reads nothing of the pipeline, so no
    change touches it; the room a change or a new rank frees plans it again (:meth:`_Planner.update`,
    :meth:`_Planner.rerank`)."""
    decided = _Decided()
    decided.software.append(SoftwareLeaf(port.port, ir.Match(()), FULL))
    decided.short_by(LEAST_ROOM - budget)
    return decided


def _chain_key(ctx: PortOffload, entry: ChainEntry) -> tuple:
    """The planner's key of the chain ``entry`` starts for a goto from ``ctx``: one per switch for a shared entry,
    one per port for its own entries and on a NIC that numbers each port's chains (``max_chains``)."""
    limited = ctx.capabilities.max_chains is not None
    return ctx.switch_id, ctx.port if limited or not entry.shared else SHARED, entry


def _hit_by(added: Sequence[ir.Flow], removed: Sequence[ir.Flow], matched: set[int]
            ) -> Callable[[Deps], bool]:
    """Whether a walk that read ``deps`` may go otherwise after a change of these flows (and of the header
    fields these join tables match): one of its lookups would answer with a flow added or removed that agrees
    with what the walk knew there (a lookup by network knowing the destination MAC, a routed path's, is not
    hit by another destination's flow)."""
    by_table: dict[int, list[dict[str, int]]] = {}  # table -> what each changed flow of it pins
    for flow in (*added, *removed):
        by_table.setdefault(flow.table, []).append(ir.pins(flow.match))

    def hit(deps: Deps) -> bool:
        for dep, known in deps.items():
            if dep[0] == "matched":
                if dep[1] in matched:
                    return True
                continue
            flows = by_table.get(dep[0])
            if flows and any(_among_answers(pins, dep, known) for pins in flows):
                return True
        return False
    return hit


def _among_answers(pins: Mapping[str, int], dep: tuple, known: tuple | None) -> bool:
    """Whether a flow pinning ``pins`` (:func:`ir.pins`) is (or, added, would be) among the answers of lookup
    ``dep`` (table, fields, values) as the walk knew it: reached by the values (:func:`ir.reaches`), and pinning
    no field to another value than the walk knew there (``known``: (field, value)s)."""
    if not ir.reaches(pins, dep[1], dep[2]):
        return False
    for field, value in known or ():
        pin = pins.get(field)
        if pin is not None and pin != value:
            return False
    return True


def _exit(chain: ChainPlan) -> int:
    """Where a goto to ``chain`` leads: the chain, or the chain it sends every packet on to when that is all it
    does (an L3 chain of a network without a router: one hop less per packet, two rules less per port)."""
    first, catch = chain.rules[0], chain.rules[-1]
    if len(chain.rules) == 2 and first.goto is not None and not first.actions and first.match == catch.match:
        return first.goto
    return chain.id


def _unchanged(deps: Deps) -> bool:
    return False


class _Replan(Exception):
    """An incremental update that only a whole plan gets right."""


def _catch_all(entry: ChainEntry) -> ir.Match | None:
    """A match every packet entering the chain has: its ethertype and VLAN (None: flower cannot say it)."""
    terms = {f: (v, m) for f, v, m in entry.region if f in ("eth_type", "vlan_vid", "vlan_tagged")}
    if "eth_type" not in terms or terms["eth_type"][1] != 0xFFFF:
        return None
    if "vlan_vid" in terms and terms["vlan_vid"][1] != ir.full_mask("vlan_vid"):
        return None
    if terms.get("vlan_tagged", (0, 0))[0] and "vlan_vid" not in terms:
        return None  # tagged with any VID: flower has no rule for that
    terms.pop("vlan_tagged", None)
    return ir.Match(tuple(ir.FieldMatch(f, v, m) for f, (v, m) in sorted(terms.items())))


def _tagged_after_untagged(match: ir.Match, placed: Sequence[HwRule | SoftwareLeaf]) -> bool:
    """A tagged rule behind an overlapping untagged one: flower lets tagged packets pass the untagged rule."""
    if match.get("vlan_vid") is None:
        return False
    vlan = frozenset({"vlan_vid"})
    return any(r.match.get("vlan_vid") is None and _overlaps(match, r.match, vlan) for r in placed)


def partition(
    pipeline: ir.Pipeline, ports: Mapping[int, PortOffload], ethertypes: Sequence[int],
    refused: Mapping[tuple[int, ir.Match], str] | None = None, unicast_only: bool = True,
    joins: Iterable[int] = (), ids: ChainIds | None = None, rank: Mapping[int, float] | None = None,
) -> Plan:
    """Hardware rules for every offload-capable local port.

    ``joins`` are the tables where the paths of many ports meet (the layout's
    entry points wired from more than one exit, e.g. L3 and L2): there a
    port's path hands over to a chain all ports of the network share (see
    :func:`_hands_over`).
    Capacity is shared per embedded switch and counted per representor;
    ports are served in ``rank`` order (port -> priority, highest first; a
    port it does not name ranks 0; ties, and every port without a rank, in
    key order) so the choice is stable and visible (`hwflow trace` and the
    agent's log say which paths stayed in software and why).
    """
    return _Planner(pipeline, ports, ethertypes, refused or {}, unicast_only, frozenset(joins),
                    ids or ChainIds(), rank).plan_all()


class Partitioner:
    """The agent's partitioner: a whole plan at first, then only what each change reaches.

    :meth:`plan` with (the flows a change added, those it removed: the compiler's delta) plans again the ports and
    chains whose walks read what changed (see :class:`_Planner`); without them, or when the refusals or the
    ethertypes changed, or a switch went over its capacity, it plans everything. While a NIC is short of room,
    a port a change re-plans gets what the other ports leave it (visible in its software paths' reasons); a
    whole plan, at start and on the agent's resync timer, serves the ports in rank order again (``rank``: port
    -> priority, highest first, ties in key order; none: key order). A new rank gives the room out again in
    its order, planning again only the ports whose room that changes (:meth:`_Planner.rerank`);
    :meth:`moves` says beforehand whether it would. ``changed`` says which ports' rules may differ from the
    plan before (None: any). Chain numbers stay as they were (:class:`ChainIds`).
    """

    def __init__(self, joins: Iterable[int] = ()) -> None:
        self.joins = frozenset(joins)
        self._ids = ChainIds()
        self._planner: _Planner | None = None
        self.changed: set[int] | None = None
        self.full_plans = 0  # whole plans made (start, resync, capacity)

    def plan(self, pipeline: ir.Pipeline, ports: Mapping[int, PortOffload], ethertypes: Sequence[int],
             refused: Mapping[tuple[int, ir.Match], str],
             delta: tuple[Sequence[ir.Flow], Sequence[ir.Flow]] | None = None,
             rank: Mapping[int, float] | None = None) -> Plan:
        planner = self._planner
        rank = dict(rank or {})
        same = planner is not None and planner.ethertypes == tuple(ethertypes) and planner.refused == refused
        if same and planner.pipeline is pipeline and planner.ports == ports:
            self.changed = set()
            if planner.rank != rank:
                try:
                    with gc_paused():
                        self.changed = planner.rerank(rank)
                    return planner.plan
                except _Replan:
                    return self._whole(pipeline, ports, ethertypes, refused, rank)
            return planner.plan
        if same and delta is not None:
            try:
                with gc_paused():  # a change's objects are few and acyclic
                    self.changed = planner.update(pipeline, delta[0], delta[1], ports)
                    if planner.rank != rank:
                        self.changed |= planner.rerank(rank)
                return planner.plan
            except _Replan:
                pass
        return self._whole(pipeline, ports, ethertypes, refused, rank)

    def _whole(self, pipeline: ir.Pipeline, ports: Mapping[int, PortOffload], ethertypes: Sequence[int],
               refused: Mapping[tuple[int, ir.Match], str], rank: Mapping[int, float]) -> Plan:
        self._planner = None  # the old plan goes before the new one is made (and frozen: see gc_paused)
        with gc_paused(keep=True):
            self._planner = _Planner(pipeline, ports, ethertypes, refused, True, self.joins, self._ids, rank)
            self.changed = None
            self.full_plans += 1
            plan = self._planner.plan_all()
            self._ids.keep_only(self._planner.chain_keys())
            return plan

    def moves(self, rank: Mapping[int, float]) -> bool:
        """Whether planning with ``rank`` would give some port other room than the last plan did (a port holding
        all it wants keeps it in any order that leaves it that room): the agent plans again only then."""
        planner = self._planner
        return planner is not None and planner.rank != dict(rank) and bool(planner.rerank(rank, dry=True))

    def short(self) -> bool:
        """Whether the last plan left some path in software for want of room (a rank would order something)."""
        return self._planner is not None and bool(self._planner._starved)



def _reached(node: dict | set, pins: Sequence[int | None]) -> set:
    """The owners in a lookup tree (see _Planner._by_table) whose lookups a flow pinning ``pins`` is an answer of."""
    if not pins:
        return node  # type: ignore[return-value]
    if pins[0] is not None:
        child = node.get(pins[0])  # type: ignore[union-attr]
        return _every(child) if child is not None else set()
    found: set = set()
    for child in node.values():  # type: ignore[union-attr]
        found |= _reached(child, pins[1:])
    return found


def _every(node: dict | set) -> set:
    if isinstance(node, set):
        return node
    found: set = set()
    for child in node.values():
        found |= _every(child)
    return found
