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
switch, no header rewrite), it is unicast (flooding follows every port
change of a network, so it stays in software), and no *earlier* leaf kept in software overlaps
it: otherwise the rule would steal packets the software path must see.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence

from hwflow.offload.capabilities import ACTION_REDIRECT, Capabilities
from hwflow.pipeline import interpreter, ir

INTERNAL_FIELDS = ir.INTERNAL_FIELDS | {"in_port"}

Region = Mapping[str, tuple[int, int]]  # field -> (value, mask)


@dataclasses.dataclass(frozen=True)
class PortOffload:
    """A local port whose VF sits behind an offload-capable embedded switch."""

    port: int  # logical port key
    switch_id: str
    capabilities: Capabilities


@dataclasses.dataclass(frozen=True)
class Leaf:
    region: tuple[tuple[str, int, int], ...]  # sorted (field, value, mask)
    outputs: tuple[int, ...]
    blocker: str | None  # why the walk stopped early (header rewrite, conntrack, punt...): software only
    owner: str | None  # owner of the last flow on the path (None: table miss)

    def as_match(self) -> ir.Match:
        return ir.Match(tuple(ir.FieldMatch(f, v, m) for f, v, m in self.region))


@dataclasses.dataclass(frozen=True)
class HwRule:
    """One hardware rule on ``in_port``'s representor, redirecting to ``output``."""

    in_port: int
    order: int  # position in the port's decision list: lower wins
    level: int  # priority layer; rules sharing a level never overlap
    match: ir.Match  # header fields only; always includes eth_type
    output: int
    owner: str


@dataclasses.dataclass(frozen=True)
class SoftwareLeaf:
    in_port: int
    match: ir.Match
    reason: str


@dataclasses.dataclass
class Plan:
    rules: list[HwRule] = dataclasses.field(default_factory=list)
    software: list[SoftwareLeaf] = dataclasses.field(default_factory=list)

    def rules_of(self, port: int) -> list[HwRule]:
        return [r for r in self.rules if r.in_port == port]


# --- symbolic walk ------------------------------------------------------------


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


def walk(pipeline: ir.Pipeline, known: Mapping[str, int], region: Region) -> Iterator[Leaf]:
    """All leaves of the pipeline for packets in ``region``, in decision-list order."""
    yield from _walk_table(pipeline, 0, dict(region), dict(known), (), 0)


def _walk_table(pipeline, table, region, known, outputs, depth) -> Iterator[Leaf]:
    if depth > 64:
        raise RuntimeError("pipeline loops: more than 64 tables on one path")
    for flow in pipeline.table(table):
        covers_all, refined = _refine(flow.match, region, known)
        if covers_all is None:
            continue
        yield from _run(pipeline, flow, refined, known, outputs, depth)
        if covers_all:
            return
    yield _leaf(region, outputs, None, None)


def _run(pipeline, flow, region, known, outputs, depth) -> Iterator[Leaf]:
    """Follow one flow's actions; an action the walk cannot see through ends it in a software leaf.

    Ending there is what keeps the proof simple: the leaf's region is all the
    packets that reach this point, so nothing after it can be mistaken.
    """
    known = dict(known)
    for action in flow.actions:
        if isinstance(action, ir.Output):
            if action.port != known.get("in_port"):
                outputs = outputs + (action.port,)
        elif isinstance(action, ir.GotoTable):
            yield from _walk_table(pipeline, action.table, region, known, outputs, depth + 1)
            return
        elif isinstance(action, ir.Drop):
            break
        else:
            blocker = _see_through(action, known)
            if blocker is not None:
                yield _leaf(region, outputs, blocker, flow.owner)
                return
    yield _leaf(region, outputs, None, flow.owner)


def _see_through(action: ir.Action, known: dict[str, int]) -> str | None:
    """Apply ``action`` to the known pipeline state, or say why the walk must stop here."""
    if isinstance(action, ir.SetField) and action.field in INTERNAL_FIELDS:
        known[action.field] = action.value
        return None
    if isinstance(action, ir.Move) and action.dst in INTERNAL_FIELDS and action.src in known:
        known[action.dst] = known[action.src] & ir.full_mask(action.dst)
        return None
    if isinstance(action, ir.SetField | ir.Move):
        target = action.field if isinstance(action, ir.SetField) else action.dst
        return f"sets {target} from the packet or rewrites a header: not offloaded yet"
    if isinstance(action, ir.Punt):
        return f"punted to the agent ({action.reason})"
    if isinstance(action, ir.Conntrack):
        return "conntrack: not offloaded yet"
    return f"{type(action).__name__}: not offloaded yet"


def _leaf(region, outputs, blocker, owner) -> Leaf:
    return Leaf(tuple(sorted((f, v, m) for f, (v, m) in region.items())), outputs, blocker, owner)


# --- choosing what goes to hardware ----------------------------------------------


def _overlaps(a: ir.Match, b: ir.Match) -> bool:
    theirs = b.as_dict()
    for term in a.fields:
        other = theirs.get(term.field)
        if other is not None and (term.value ^ other.value) & term.mask & other.mask:
            return False
    return True


def _unicast_only(leaf: Leaf) -> bool:
    """True when the leaf's region pins the destination MAC's group bit to 0."""
    for field, value, mask in leaf.region:
        if field == "eth_dst":
            return bool(mask & ir.MULTICAST_BIT) and not value & ir.MULTICAST_BIT
    return False


def _why_not(leaf: Leaf, port: PortOffload, ports: Mapping[int, PortOffload], unicast_only: bool) -> str | None:
    """Why this leaf cannot be a hardware rule on ``port`` (None: it can)."""
    if leaf.blocker is not None:
        return leaf.blocker
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
    if ACTION_REDIRECT not in caps.actions:
        return "the NIC cannot redirect"
    for field, _, mask in leaf.region:
        if not caps.can_match(field, mask, ir.FIELD_BITS[field]):
            return f"the NIC cannot match {field} with mask {mask:#x}"
    return None


def plan_port(
    pipeline: ir.Pipeline, port: PortOffload, ports: Mapping[int, PortOffload],
    ethertypes: Sequence[int], budget: int, refused: Mapping[tuple[int, ir.Match], str] | None = None,
    unicast_only: bool = True,
) -> Plan:
    """The decision list of one port's hardware rules, at most ``budget`` of them.

    ``refused`` holds rules the NIC already turned down (by port and match),
    with its reason; they stay in software, and so does whatever they shadow.
    """
    refused = refused or {}
    plan = Plan()
    order = 0
    for eth_type in ethertypes:
        known = {"in_port": port.port, **dict.fromkeys(ir.INTERNAL_FIELDS, 0)}
        leaves = walk(pipeline, known, {"eth_type": (eth_type, 0xFFFF)})
        placed: list[HwRule] = []
        for leaf in leaves:
            match = leaf.as_match()
            reason = _why_not(leaf, port, ports, unicast_only)
            if reason is None and (port.port, match) in refused:
                reason = f"the NIC refused it: {refused[port.port, match]}"
            if reason is None and any(_overlaps(match, sw.match) for sw in plan.software if sw.in_port == port.port):
                reason = "overlaps an earlier software-only path"
            if reason is None and len(plan.rules) >= budget:
                reason = "the NIC's rule table is full"
            if reason is not None:
                plan.software.append(SoftwareLeaf(port.port, match, reason))
                continue
            level = 1 + max((r.level for r in placed if _overlaps(match, r.match)), default=-1)
            rule = HwRule(port.port, order, level, match, leaf.outputs[0], leaf.owner or "")
            placed.append(rule)
            plan.rules.append(rule)
            order += 1
    return plan


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


def hw_then_sw(pipeline: ir.Pipeline, plan: Plan, packet: Mapping[str, int]) -> tuple[int, ...]:
    """Output ports when the NIC's rules run first and OVS takes the misses.

    The NIC is modelled as tc sees it: levels become priorities and the order
    inside a level is the NIC's business, so two rules of one level that both
    take the packet make the answer depend on the NIC: that raises.
    The equivalence oracle: tests assert this equals the software verdict.
    """
    rules = plan.rules_of(packet["in_port"])
    for level in sorted({r.level for r in rules}):
        hits = [r for r in rules if r.level == level and r.match.covers(packet)]
        if len(hits) > 1:
            raise AssertionError(f"rules of one priority overlap: {hits}")
        if hits:
            return (hits[0].output,)
    return interpreter.run(pipeline, packet).ports
