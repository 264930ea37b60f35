"""Split the compiled pipeline into hardware rules and a software remainder.

The software datapath always holds the *whole* pipeline: a packet that no
hardware rule takes falls to the representor and OVS handles it exactly as
if there were no NIC. Hardware rules are a cache in front of it, and one is
emitted only when it provably gives the verdict the pipeline would.

How the proof goes: for each local port and each offloadable ethertype the
pipeline is walked *symbolically*. A region is a conjunction of masked
constraints on header fields; pipeline-internal fields (``in_port``,
``metadata``) are known constants along a path. At each table, flows are
taken in priority order: a flow that cannot match the region is skipped, one
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
the software path must see.

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

Flower matches VLAN tags by protocol: a rule without a ``vlan_vid`` term
takes untagged packets only. Tagged packets pass it by, so a rule for tagged
packets is kept in software when an earlier rule without a tag overlaps it.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Iterator, Mapping, Sequence

from hwflow.offload import capabilities as hw
from hwflow.offload.capabilities import Capabilities
from hwflow.pipeline import interpreter, ir

INTERNAL_FIELDS = ir.INTERNAL_FIELDS | {"in_port"}
TUNNEL_TYPE = {port: kind for kind, port in ir.TUNNEL_PORTS.items()}  # tunnel port key -> tunnel type
REWRITABLE = frozenset({"eth_src", "eth_dst", "ipv4_src", "ipv4_dst"})  # header fields pedit can set
IPV4_ONLY = frozenset({"ipv4_src", "ipv4_dst"})
TUNNEL_FIELDS = frozenset({"tun_id", "tun_dst"})  # what an encapsulating output needs set
TTL_EXPIRES = (0, 0xFE)  # ip_ttl 0 or 1: a decrement would reach zero
# IR field -> the name a NIC's capabilities use for it, where they differ (flower's enc_* keys).
CAPABILITY_FIELD = {"tun_src": "tun_ipv4_src", "tun_dst": "tun_ipv4_dst"}
CT_STATE_NAMES = {ir.CT_NEW: "new", ir.CT_EST: "est", ir.CT_REL: "rel", ir.CT_RPL: "rpl", ir.CT_INV: "inv",
                  ir.CT_TRK: "trk"}

Region = Mapping[str, tuple[int, int]]  # field -> (value, mask)
Edit = ir.SetField | ir.DecTtl | ir.PushVlan | ir.PopVlan | ir.Conntrack  # what a hardware rule does to a packet


@dataclasses.dataclass(frozen=True)
class PortOffload:
    """A local port whose VF sits behind an offload-capable embedded switch (or a tunnel port's device)."""

    port: int  # logical port key, or one of ir.TUNNEL_PORTS
    switch_id: str
    capabilities: Capabilities


@dataclasses.dataclass(frozen=True)
class Leaf:
    region: tuple[tuple[str, int, int], ...]  # sorted (field, value, mask)
    outputs: tuple[int, ...]
    blocker: str | None  # why the walk stopped early (punt, a field it cannot know...): software only
    owner: str | None  # owner of the last flow on the path (None: table miss)
    edits: tuple[Edit, ...] = ()  # header actions before the output, in order
    chain: int = 0  # the tc chain (ct recirculation) the path is in
    goto: int | None = None  # a conntrack leaf: edits end in ct(table), then chain ``goto``
    trap: bool = False  # packets software must decide (their TTL expires here): a pass rule may hold them

    def as_match(self) -> ir.Match:
        return ir.Match(tuple(ir.FieldMatch(f, v, m) for f, v, m in self.region))


@dataclasses.dataclass(frozen=True)
class HwRule:
    """One hardware rule on ``in_port``'s representor (chain ``chain``).

    It applies ``actions`` (IR header actions, in order) and then redirects
    to ``output``; or, with ``goto``, its last action is ``ct`` and the packet
    goes on in chain ``goto``; with neither, it hands the packet to software
    (tc ``pass``).
    """

    in_port: int
    order: int  # position in the port's decision list: lower wins
    level: int  # priority layer within the chain; rules sharing a level never overlap
    match: ir.Match  # header fields (and ct_state in a chain after ct); always includes eth_type
    output: int | None
    owner: str
    actions: tuple[Edit, ...] = ()
    chain: int = 0
    goto: int | None = None


@dataclasses.dataclass(frozen=True)
class SoftwareLeaf:
    in_port: int
    match: ir.Match
    reason: str
    chain: int = 0
    passable: bool = False  # a pass rule (to software) may hold it in front of later rules


@dataclasses.dataclass
class Plan:
    rules: list[HwRule] = dataclasses.field(default_factory=list)
    software: list[SoftwareLeaf] = dataclasses.field(default_factory=list)

    def rules_of(self, port: int) -> list[HwRule]:
        return [r for r in self.rules if r.in_port == port]


# --- symbolic walk ------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Path:
    """What the walk knows along one path besides the region."""

    known: Mapping[str, int]  # pipeline state and header fields an action set
    aliases: Mapping[str, str] = dataclasses.field(default_factory=dict)  # register -> packet field copied in
    dirty: frozenset[str] = frozenset()  # header fields changed to a value the walk cannot know
    outputs: tuple[int, ...] = ()
    edits: tuple[Edit, ...] = ()
    chain: int = 0

    def but(self, **changes) -> _Path:
        return dataclasses.replace(self, **changes)


def _refine(match: ir.Match, region: dict[str, tuple[int, int]], known: Mapping[str, int]):
    """(None, _) if ``match`` cannot hold in region; else (covers_all, refined region)."""
    refined = dict(region)
    covers_all = True
    for term in match.fields:
        if term.field in known:
            if known[term.field] & term.mask != term.value:
                return None, region
            continue
        value, mask = refined.get(term.field, (0, 0))
        if (value ^ term.value) & mask & term.mask:
            return None, region
        if term.mask & ~mask:
            covers_all = False
            refined[term.field] = (value | term.value, mask | term.mask)
    return covers_all, refined


class Chains:
    """Numbers the tc chains of ct recirculations (per port: they share its devices' chain space).

    ``wanted(chain)`` is asked right after the walk yields a ct rule's leaf, once its consumer has decided
    on it: a chain that rule does not lead to in hardware is not walked. A NIC without conntrack, or a port
    whose conntrack rule stayed in software, would otherwise have every path behind its security groups
    enumerated for nothing.
    """

    def __init__(self, wanted: Callable[[int], bool] | None = None) -> None:
        self._numbers = itertools.count(1)
        self.wanted = wanted or (lambda chain: True)

    def new(self) -> int:
        return next(self._numbers)


def walk(pipeline: ir.Pipeline, known: Mapping[str, int], region: Region,
         chains: Chains | None = None) -> Iterator[Leaf]:
    """All leaves of the pipeline for packets in ``region``, in decision-list order."""
    yield from _walk_table(pipeline, 0, dict(region), _Path(dict(known)), chains or Chains(), 0)


def _walk_table(pipeline, table, region, path: _Path, chains, depth) -> Iterator[Leaf]:
    if depth > 64:
        raise RuntimeError("pipeline loops: more than 64 tables on one path")
    for flow in pipeline.candidates(table, path.known):
        stale = sorted(path.dirty & {t.field for t in flow.match.fields})
        if stale:
            yield _leaf(region, path, f"matches {', '.join(stale)} after an action changed it", flow.owner)
            return
        match = _through_aliases(flow.match, path.aliases)
        if match is None:
            continue
        covers_all, refined = _refine(match, region, path.known)
        if covers_all is None:
            continue
        yield from _run(pipeline, flow, refined, path, chains, depth)
        if covers_all:
            return
    yield _leaf(region, path, None, None)


def _through_aliases(match: ir.Match, aliases: Mapping[str, str]) -> ir.Match | None:
    """``match`` with registers holding a copy of a packet field read as that field (None: it cannot hold)."""
    if not any(t.field in aliases for t in match.fields):
        return match
    terms: dict[str, tuple[int, int]] = {}
    for t in match.fields:
        field = aliases.get(t.field, t.field)
        value, mask = terms.get(field, (0, 0))
        if (value ^ t.value) & mask & t.mask:
            return None
        terms[field] = (value | t.value, mask | t.mask)
    return ir.Match(tuple(ir.FieldMatch(f, v, m) for f, (v, m) in terms.items()))


def _run(pipeline, flow, region, path: _Path, chains, depth) -> Iterator[Leaf]:
    """Follow one flow's actions; an action the walk cannot see through ends it in a software leaf.

    Ending there is what keeps the proof simple: the leaf's region is all the
    packets that reach this point, so nothing after it can be mistaken.
    """
    path = path.but(known=dict(path.known), aliases=dict(path.aliases))
    for action in flow.actions:
        if isinstance(action, ir.Output):
            if action.port != path.known.get("in_port"):
                path = path.but(outputs=path.outputs + (action.port,))
        elif isinstance(action, ir.GotoTable):
            yield from _walk_table(pipeline, action.table, region, path, chains, depth + 1)
            return
        elif isinstance(action, ir.Drop):
            break
        elif isinstance(action, ir.Conntrack) and action.table is not None:
            yield from _recirculate(pipeline, flow, action, region, path, chains, depth)
            return
        elif isinstance(action, ir.DecTtl) and "ip_ttl" not in path.dirty:
            expiring, trapped = _refine(ir.Match.of(ip_ttl=TTL_EXPIRES), region, path.known)
            if expiring is not None:  # some packets here die of the decrement: software decides them
                yield dataclasses.replace(_leaf(trapped, path, "the TTL expires here", flow.owner), trap=True)
                if expiring:
                    return
            path = _edit(path, action)
        else:
            blocker = _see_through(action, path)
            if blocker is not None:
                yield _leaf(region, path, blocker, flow.owner)
                return
            path = _edit(path, action) if _is_edit(action) else path
    yield _leaf(region, path, None, flow.owner)


def _recirculate(pipeline, flow, action: ir.Conntrack, region, path: _Path, chains, depth) -> Iterator[Leaf]:
    """``ct(table=N)``: a rule doing ct then goto chain C, and table N's leaves in chain C."""
    blocker = None
    if path.outputs or path.edits:
        blocker = "conntrack after an output or a header action: a miss in its chain would replay them"
    elif action.commit or action.nat is not None:
        blocker = "conntrack commit/NAT before recirculation: a miss in its chain would apply it twice"
    if blocker is not None:
        yield _leaf(region, path, blocker, flow.owner)
        return
    chain = chains.new()
    yield dataclasses.replace(_leaf(region, path.but(edits=(action,)), None, flow.owner), goto=chain)
    if not chains.wanted(chain):
        return
    known = {k: v for k, v in path.known.items() if k != "ct_state"} | {"ct_zone": action.zone}
    inner = {**region, "ct_state": (ir.CT_TRK, ir.CT_TRK)}  # after ct every packet is tracked
    yield from _walk_table(pipeline, action.table, inner, path.but(known=known, chain=chain), chains, depth + 1)


def _is_edit(action: ir.Action) -> bool:
    return isinstance(action, ir.SetField) and action.field not in INTERNAL_FIELDS or isinstance(
        action, ir.PushVlan | ir.PopVlan | ir.Conntrack)


def _edit(path: _Path, action: Edit) -> _Path:
    """The path after a header action the hardware would do."""
    known, dirty = dict(path.known), set(path.dirty)
    if isinstance(action, ir.SetField):
        known[action.field] = action.value
        dirty.discard(action.field)
    elif isinstance(action, ir.PushVlan):
        known["vlan_vid"] = action.vid
        dirty.discard("vlan_vid")
    elif isinstance(action, ir.PopVlan):
        known.pop("vlan_vid", None)
        dirty.add("vlan_vid")
    elif isinstance(action, ir.DecTtl):
        dirty.add("ip_ttl")
    elif isinstance(action, ir.Conntrack) and action.nat is not None:  # the translation depends on the connection
        for field in ("ipv4_src", "ipv4_dst"):
            known.pop(field, None)
            dirty.add(field)
    return path.but(known=known, dirty=frozenset(dirty), edits=path.edits + (action,))


def _see_through(action: ir.Action, path: _Path) -> str | None:
    """Apply a pipeline-state action to the known state, or say why the walk must stop here (None: go on).

    A register loaded from an unchanged packet field of its width becomes an
    alias of it: matches on the register are matches on the packet.
    """
    known, aliases = path.known, path.aliases
    target = action.field if isinstance(action, ir.SetField) else action.dst if isinstance(action, ir.Move) else None
    if target in INTERNAL_FIELDS:
        aliases.pop(target, None)  # type: ignore[attr-defined]
    if isinstance(action, ir.SetField) and action.field in INTERNAL_FIELDS:
        known[action.field] = action.value  # type: ignore[index]
        return None
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
        return "a second TTL decrement on one path: not offloaded"
    if not _is_edit(action):
        return f"{type(action).__name__}: not offloaded"
    if path.outputs:
        return "a header action after an output: copies with different headers stay in software"
    return None


def _leaf(region, path: _Path, blocker, owner) -> Leaf:
    return Leaf(tuple(sorted((f, v, m) for f, (v, m) in region.items())), path.outputs, blocker, owner,
                path.edits, path.chain)


# --- choosing what goes to hardware ----------------------------------------------


def _overlaps(a: ir.Match, b: ir.Match, ignore: frozenset[str] = frozenset()) -> bool:
    theirs = b.as_dict()
    for term in a.fields:
        other = theirs.get(term.field)
        if term.field not in ignore and other is not None and (term.value ^ other.value) & term.mask & other.mask:
            return False
    return True


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


def _cannot_match(leaf: Leaf, caps: Capabilities) -> str | None:
    for field, _, mask in leaf.region:
        if field == "ct_state":
            states = [name for bit, name in CT_STATE_NAMES.items() if mask & bit]
            if not caps.can_conntrack(states):
                return f"the NIC cannot match ct_state {'/'.join(states)}"
        elif not caps.can_match(CAPABILITY_FIELD.get(field, field), mask, ir.FIELD_BITS[field]):
            return f"the NIC cannot match {field} with mask {mask:#x}"
    return None


def _cannot_edit(leaf: Leaf, caps: Capabilities) -> str | None:
    """Why the NIC cannot do the leaf's header actions (None: it can)."""
    ipv4 = _region_value(leaf, "eth_type") == ir.ETH_TYPE_IPV4
    tagged = any(field == "vlan_vid" for field, _, _ in leaf.region)
    for edit in leaf.edits:
        if isinstance(edit, ir.SetField) and edit.field in TUNNEL_FIELDS:
            continue  # the encapsulating output's business
        if isinstance(edit, ir.SetField) and not (edit.field in REWRITABLE and caps.can_rewrite(edit.field)
                                                  and hw.ACTION_REWRITE in caps.actions):
            return f"the NIC cannot rewrite {edit.field}"
        if isinstance(edit, ir.SetField | ir.DecTtl) and not ipv4 and (
                isinstance(edit, ir.DecTtl) or edit.field in IPV4_ONLY):
            return f"{edit} needs the path to be IPv4"
        if isinstance(edit, ir.DecTtl) and hw.ACTION_TTL_DEC not in caps.actions:
            return "the NIC cannot decrement the TTL"
        if isinstance(edit, ir.PushVlan) and (hw.ACTION_VLAN_PUSH not in caps.actions or tagged):
            return "the NIC cannot push a VLAN tag here (no vlan_push, or the packet is tagged already)"
        if isinstance(edit, ir.PopVlan) and hw.ACTION_VLAN_POP not in caps.actions:
            return "the NIC cannot pop a VLAN tag"
        if isinstance(edit, ir.Conntrack) and not (hw.ACTION_CT in caps.actions and caps.can_conntrack(
                zone=edit.zone, nat=edit.nat is not None) and (edit.nat is None or ipv4)):
            return f"the NIC cannot do conntrack in zone {edit.zone}{' with NAT (IPv4)' if edit.nat else ''}"
    return None


def _cannot_deliver(leaf: Leaf, port: PortOffload, ports: Mapping[int, PortOffload], unicast_only: bool) -> str | None:
    """Why the leaf's single output cannot be a redirect from ``port`` (None: it can)."""
    if not leaf.outputs:
        return "drop: kept in software until drops are ordered make-before-break"
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
    tunnel_set = {e.field for e in leaf.edits if isinstance(e, ir.SetField) and e.field in TUNNEL_FIELDS}
    if tunnel is None and tunnel_set:
        return "tunnel metadata set for a port that is not a tunnel"
    if tunnel is not None and not (caps.can_encap(tunnel) and tunnel_set == TUNNEL_FIELDS):
        return f"the NIC cannot encapsulate {tunnel} (or the path does not set both tun_id and tun_dst)"
    return None


def _action_count(leaf: Leaf, port: PortOffload) -> int:
    """How many tc actions the leaf becomes (see hwflow.backends.tc.backend.to_flower)."""
    pedit = any(isinstance(e, ir.DecTtl) or isinstance(e, ir.SetField) and e.field in REWRITABLE for e in leaf.edits)
    others = sum(1 for e in leaf.edits if isinstance(e, ir.PushVlan | ir.PopVlan | ir.Conntrack))
    tunnel = any(isinstance(e, ir.SetField) and e.field in TUNNEL_FIELDS for e in leaf.edits)
    return 2 * pedit + others + tunnel + (port.port in TUNNEL_TYPE) + 1


def _why_not(leaf: Leaf, port: PortOffload, ports: Mapping[int, PortOffload], unicast_only: bool) -> str | None:
    """Why this leaf cannot be a hardware rule on ``port`` (None: it can)."""
    caps = port.capabilities
    if leaf.blocker is not None:
        return leaf.blocker
    if leaf.goto is not None:
        if not {hw.ACTION_CT, hw.ACTION_GOTO_CHAIN} <= caps.actions:
            return "the NIC cannot do conntrack with a goto chain"
        if caps.max_chains is not None and leaf.goto >= caps.max_chains:
            return f"the NIC has {caps.max_chains} chain(s); chain {leaf.goto} does not fit"
        return _cannot_edit(leaf, caps) or _cannot_match(leaf, caps)
    tunnel = TUNNEL_TYPE.get(port.port)
    if tunnel is not None and not caps.can_decap(tunnel):
        return f"the NIC cannot decapsulate {tunnel}"
    reason = _cannot_deliver(leaf, port, ports, unicast_only) or _cannot_edit(leaf, caps) or _cannot_match(leaf, caps)
    if reason is None and _action_count(leaf, port) > caps.max_actions_per_rule:
        reason = f"{_action_count(leaf, port)} actions; the NIC takes {caps.max_actions_per_rule} per rule"
    return reason


def _passable(leaf: Leaf, port: PortOffload, refused: Mapping[tuple[int, ir.Match], str]) -> bool:
    """A software leaf a ``pass`` rule may hold: whatever software does with its packets, it still does.

    Holding it costs a rule, so it is done only when a later rule would
    otherwise be kept out by overlapping it (see :func:`plan_port`).
    """
    return hw.ACTION_PASS in port.capabilities.actions and _cannot_match(leaf, port.capabilities) is None \
        and (port.port, leaf.as_match()) not in refused


def _tagged_after_untagged(match: ir.Match, placed: Sequence[HwRule | SoftwareLeaf]) -> bool:
    """A tagged rule behind an overlapping untagged one: flower lets tagged packets pass the untagged rule."""
    if match.get("vlan_vid") is None:
        return False
    vlan = frozenset({"vlan_vid"})
    return any(r.match.get("vlan_vid") is None and _overlaps(match, r.match, vlan) for r in placed)


def plan_port(
    pipeline: ir.Pipeline, port: PortOffload, ports: Mapping[int, PortOffload],
    ethertypes: Sequence[int], budget: int, refused: Mapping[tuple[int, ir.Match], str] | None = None,
    unicast_only: bool = True,
) -> Plan:
    """The decision list of one port's hardware rules, at most ``budget`` of them.

    ``refused`` holds rules the NIC already turned down (by port and match),
    with its reason; they stay in software, and so does whatever they shadow.
    Leaves in the chain of a conntrack rule that stayed in software are left
    out: that rule's software leaf covers them. A leaf kept out only by
    earlier software leaves gets them placed as ``pass`` rules in front of
    it, when the NIC can match them (and has room).
    """
    refused = refused or {}
    plan = Plan()
    order = 0
    open_chains = {0}
    chains = Chains(open_chains.__contains__)
    for eth_type in ethertypes:
        known = {"in_port": port.port, **dict.fromkeys(ir.INTERNAL_FIELDS, 0)}
        placed: list[HwRule] = []
        for leaf in walk(pipeline, known, {"eth_type": (eth_type, 0xFFFF)}, chains):
            if leaf.chain not in open_chains:
                continue
            match = leaf.as_match()
            in_chain = [r for r in placed if r.chain == leaf.chain]
            reason = _why_not(leaf, port, ports, unicast_only)
            if reason is None and (port.port, match) in refused:
                reason = f"the NIC refused it: {refused[port.port, match]}"
            shadows = [sw for sw in plan.software
                       if sw.in_port == port.port and sw.chain == leaf.chain and _overlaps(match, sw.match)]
            if reason is None and _tagged_after_untagged(match, [*in_chain, *shadows]):
                reason = "VLAN-tagged, behind an overlapping rule for untagged packets"
            if reason is None and shadows and (not all(sw.passable for sw in shadows)
                                               or len(plan.rules) + len(shadows) >= budget):
                reason = "overlaps an earlier software-only path"
            elif reason is None:
                for sw in shadows:  # hold them in front with pass rules
                    plan.software.remove(sw)
                    _place(plan, placed, HwRule(port.port, order, 0, sw.match, None, "", (), sw.chain))
                    order += 1
            if reason is None and len(plan.rules) >= budget:
                reason = "the NIC's rule table is full"
            if reason is not None:
                plan.software.append(SoftwareLeaf(port.port, match, reason, leaf.chain,
                                                  _passable(leaf, port, refused)))
                continue
            output = None if leaf.goto is not None else leaf.outputs[0]
            _place(plan, placed, HwRule(port.port, order, 0, match, output, leaf.owner or "", leaf.edits, leaf.chain,
                                        leaf.goto))
            order += 1
            if leaf.goto is not None:
                open_chains.add(leaf.goto)
    return plan


def _place(plan: Plan, placed: list[HwRule], rule: HwRule) -> None:
    """Add ``rule`` on the lowest level above every overlapping rule of its chain placed before it."""
    level = 1 + max((r.level for r in placed if r.chain == rule.chain and _overlaps(rule.match, r.match)), default=-1)
    rule = dataclasses.replace(rule, level=level)
    placed.append(rule)
    plan.rules.append(rule)


def partition(
    pipeline: ir.Pipeline, ports: Mapping[int, PortOffload], ethertypes: Sequence[int],
    refused: Mapping[tuple[int, ir.Match], str] | None = None, unicast_only: bool = True,
) -> Plan:
    """Hardware rules for every offload-capable local port.

    Capacity is shared per embedded switch; ports are served in key order so
    the choice is stable and visible (`hwflow trace` and the agent's log say
    which paths stayed in software and why).
    """
    plan = Plan()
    used: dict[str, int] = {}
    for key in sorted(ports):
        port = ports[key]
        budget = port.capabilities.max_rules - used.get(port.switch_id, 0)
        sub = plan_port(pipeline, port, ports, ethertypes, max(budget, 0), refused, unicast_only)
        used[port.switch_id] = used.get(port.switch_id, 0) + len(sub.rules)
        plan.rules.extend(sub.rules)
        plan.software.extend(sub.software)
    return plan


class Partitioner:
    """:func:`partition` for an agent's passes: the last plan again while nothing it depends on changed.

    Most passes (the resync timer, an OVSDB event about an unrelated interface) find the same compiled
    pipeline (the compiler hands back the same object until a change), the same ports and capabilities and
    the same refusals; partitioning costs seconds on a host of a hundred ports (doc/benchmarks.rst).
    """

    def __init__(self) -> None:
        self._last: tuple[ir.Pipeline, dict[int, PortOffload], tuple[int, ...], dict, Plan] | None = None

    def plan(self, pipeline: ir.Pipeline, ports: Mapping[int, PortOffload], ethertypes: Sequence[int],
             refused: Mapping[tuple[int, ir.Match], str]) -> Plan:
        last = self._last
        if last is not None and last[0] is pipeline and last[1] == ports and last[2] == tuple(ethertypes) \
                and last[3] == refused:
            return last[4]
        plan = partition(pipeline, ports, ethertypes, refused)
        self._last = (pipeline, dict(ports), tuple(ethertypes), dict(refused), plan)
        return plan


def hw_then_sw(pipeline: ir.Pipeline, plan: Plan, packet: Mapping[str, int],
               conntrack: interpreter.ConnTracker | None = None) -> tuple[tuple[int, Mapping[str, int]], ...]:
    """Outputs (port, packet as sent) when the NIC's rules run first and OVS takes the misses.

    The NIC is modelled as tc sees it: levels become priorities within a
    chain and the order inside a level is the NIC's business, so two rules
    of one level that both take the packet make the answer depend on the NIC:
    that raises. A rule without a ``vlan_vid`` term takes untagged packets
    only (flower's protocol match). ``conntrack`` is the connection table the
    NIC and the software share (the kernel's). The equivalence oracle: tests
    assert this equals the interpreter's outputs.
    """
    tracker = conntrack if conntrack is not None else interpreter.ConnTracker()
    rules = plan.rules_of(packet["in_port"])
    state = dict(packet)
    chain = 0
    while (rule := _nic_lookup(rules, chain, state)) is not None and (rule.output, rule.goto) != (None, None):
        for action in rule.actions:
            _nic_apply(action, state, tracker)
        if rule.goto is None:
            return ((rule.output, {k: v for k, v in state.items() if k not in INTERNAL_FIELDS}),)
        chain = rule.goto
    return interpreter.run(pipeline, packet, tracker).outputs


def _nic_lookup(rules: Sequence[HwRule], chain: int, packet: Mapping[str, int]) -> HwRule | None:
    candidates = [r for r in rules if r.chain == chain and r.match.covers(packet)
                  and (r.match.get("vlan_vid") is not None or "vlan_vid" not in packet)]
    for level in sorted({r.level for r in candidates}):
        hits = [r for r in candidates if r.level == level]
        if len(hits) > 1:
            raise AssertionError(f"rules of one priority overlap: {hits}")
        return hits[0]
    return None


def _nic_apply(action: Edit, state: dict[str, int], tracker: interpreter.ConnTracker) -> None:
    """What tc's pedit, vlan, tunnel_key and ct actions do to the packet."""
    if isinstance(action, ir.SetField):
        state[action.field] = action.value
    elif isinstance(action, ir.DecTtl) and "ip_ttl" in state:
        state["ip_ttl"] -= 1
    elif isinstance(action, ir.PushVlan):
        state["vlan_vid"] = action.vid
    elif isinstance(action, ir.PopVlan):
        state.pop("vlan_vid", None)
    elif isinstance(action, ir.Conntrack):
        interpreter.apply_conntrack(state, action, tracker)
