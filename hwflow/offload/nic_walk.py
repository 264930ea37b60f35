"""One packet through a plan's hardware rules, as tc on the NIC takes it (``hwflow trace --hardware``).

Written from tc's documented behaviour, not from the partitioner's helpers (the equivalence tests' NIC model,
``tests/unit/nic_model.py``, is built on this, so the proof still compares two independent readings of a plan):

- A representor's rules are tried chain by chain; within a chain by level (tc priority), lowest first; the
  order inside a level is the NIC's business, so two rules of one level that both take a packet make the
  answer depend on the NIC: :class:`OverlappingRules`.
- flower matches VLAN tags through the protocol: a rule without a ``vlan_vid`` term takes untagged packets
  only.
- ``drop`` (gact drop) ends the packet there: no output, and software never sees it.
- ``pass`` hands the packet to software, which runs the whole pipeline from the start.
- A miss in chain 0 goes to software the same way. A miss in chain N > 0 depends on the NIC
  (``Capabilities.chain_miss``): mlx5 (``continue``) hands it to software tc at chain N, which holds no rule of
  ours (skip_sw), and the kernel drops it (the walk says ``lost``); a ``restart`` NIC hands it to software
  from the start.
- ``conntrack`` is the connection table the NIC and software share (the kernel's). A packet no ``ct`` action
  has seen has ``ct_state`` 0 (untracked).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

from hwflow.offload import capabilities as hw
from hwflow.offload.partition import SHARED, HwRule, Plan, SoftwareLeaf
from hwflow.pipeline import interpreter, ir

INTERNAL = ir.INTERNAL_FIELDS | {"in_port"}
MAX_GOTOS = 64

REDIRECT, DROP, PASS, MISS = "redirect", "drop", "pass", "miss"


class OverlappingRules(ValueError):
    """Two rules of one chain and level both take the packet: which one wins is the NIC's business."""


@dataclasses.dataclass
class NicWalk:
    """What the NIC does with one packet.

    ``verdict``: ``redirect`` (out of ``output``, ``packet`` as sent), ``drop``, ``pass`` (a pass rule hands it
    to software) or ``miss`` (no rule of ``chain`` takes it). ``rules``: the rules that took it, in order (gotos
    first). ``software``: whether software then runs the whole pipeline for it (a pass, a miss in chain 0, a
    miss on a NIC whose chain misses restart); a miss that does not is ``lost``. ``leaf``: the software path the
    packet's is, when the plan kept one for it in the chain it left the NIC from (its reason says why).
    """

    verdict: str
    chain: int
    rules: list[HwRule] = dataclasses.field(default_factory=list)
    output: int | None = None
    packet: dict[str, int] = dataclasses.field(default_factory=dict)
    software: bool = False
    leaf: SoftwareLeaf | None = None

    @property
    def lost(self) -> bool:
        return self.verdict == MISS and not self.software

    @property
    def by_nic(self) -> bool:
        """The NIC decided the packet (sent it out or dropped it): software never sees it."""
        return self.verdict in (REDIRECT, DROP)


def lookup(rules: Sequence[HwRule], chain: int, packet: Mapping[str, int]) -> HwRule | None:
    """The rule of ``chain`` that takes ``packet`` (None: a miss)."""
    candidates = [r for r in rules if r.chain == chain and r.match.covers(packet)
                  and (r.match.get("vlan_vid") is not None or "vlan_vid" not in packet)]
    for level in sorted({r.level for r in candidates}):
        hits = [r for r in candidates if r.level == level]
        if len(hits) > 1:
            raise OverlappingRules(f"rules of one priority overlap: {hits}")
        return hits[0]
    return None


def apply(action: ir.Action, state: dict[str, int], tracker: interpreter.ConnTracker) -> None:
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
    elif not isinstance(action, ir.DecTtl):
        raise ValueError(f"{action} has no tc form")


def walk(plan: Plan, packet: Mapping[str, int], tracker: interpreter.ConnTracker | None = None,
         chain_miss: str = hw.CHAIN_MISS_CONTINUE, explain: bool = False) -> NicWalk:
    """``packet`` (with ``in_port``) through its port's rules in ``plan``; ``tracker`` is the connection table
    (changed by the ct actions the NIC does). ``explain``: find the software path a packet software takes is
    (``NicWalk.leaf``: a search of the plan's software paths)."""
    tracker = tracker if tracker is not None else interpreter.ConnTracker()
    rules = plan.rules_of(packet["in_port"])
    state = {"ct_state": 0, **packet}
    taken: list[HwRule] = []
    chain = 0
    for _ in range(MAX_GOTOS):
        rule = lookup(rules, chain, state)
        if rule is None:
            software = chain == 0 or chain_miss == hw.CHAIN_MISS_RESTART
            return NicWalk(MISS, chain, taken, software=software,
                           leaf=software_leaf(plan, packet["in_port"], chain, state) if explain else None)
        taken.append(rule)
        if rule.drop:
            return NicWalk(DROP, chain, taken)
        if rule.output is None and rule.goto is None:
            return NicWalk(PASS, chain, taken, software=True,
                           leaf=software_leaf(plan, packet["in_port"], chain, state) if explain else None)
        for action in rule.actions:
            apply(action, state, tracker)
        if rule.goto is None:
            return NicWalk(REDIRECT, chain, taken, rule.output, {k: v for k, v in state.items() if k not in INTERNAL})
        chain = rule.goto
    raise RuntimeError(f"more than {MAX_GOTOS} gotos: {rules}")


def software_leaf(plan: Plan, port: int, chain: int, state: Mapping[str, int]) -> SoftwareLeaf | None:
    """The first path the plan kept in software, in ``chain`` of ``port``, that ``state`` lies in."""
    if chain == 0:
        leaves = [leaf for leaf in plan.software if leaf.chain == 0 and leaf.in_port == port]
    else:
        held = plan.chains.get(chain)
        leaves = [leaf for leaf in held.software if leaf.in_port in (port, SHARED)] if held is not None else []
    for leaf in leaves:
        if leaf.match.covers(state) and (not leaf.within or any(m.covers(state) for m in leaf.within)):
            return leaf
    return None


class _ForcedState(interpreter.ConnTracker):
    """A connection table whose lookups answer a given ct_state: a packet aimed at a path after conntrack (+est,
    say) takes that path, not the one a first packet would."""

    def __init__(self, ct_state: int | None) -> None:
        super().__init__()
        self.ct_state = ct_state

    def state(self, zone: int, packet: Mapping[str, int]) -> int:
        return self.ct_state if self.ct_state is not None else super().state(zone, packet)


def aimed(plan: Plan, port: int, most: int = 2000) -> list[tuple[dict[str, int], int | None]]:
    """One packet aimed at each of ``port``'s paths in ``plan``, hardware rules and software paths alike, chain 0
    and the chains its gotos lead to (each packet moved into the goto's match, then into the path's): (packet,
    the ct_state the path reads, or None). At most ``most``."""
    by_chain: dict[int, list[HwRule | SoftwareLeaf]] = {}
    for rule in plan.rules_of(port):
        by_chain.setdefault(rule.chain, []).append(rule)
    for leaf in plan.software:
        if leaf.chain == 0 and leaf.in_port == port:
            by_chain.setdefault(0, []).append(leaf)
    for number in plan.reaches.get(port, ()):
        by_chain.setdefault(number, []).extend(plan.chains[number].software)
    out: list[tuple[dict[str, int], int | None]] = []
    todo: list[tuple[int, dict[str, int], int | None]] = [(0, {"in_port": port}, None)]
    entered = {0}
    while todo and len(out) < most:
        chain, packet, ct_state = todo.pop()
        for item in by_chain.get(chain, ()):
            if isinstance(item, HwRule) and item.owner in ("", "miss"):
                continue  # a pass rule stands for the software paths it holds, which have their own packets
            moved = moved_into(packet, item.match)
            term = item.match.get("ct_state")
            state = term.value if term is not None else ct_state
            out.append((moved, state))
            if isinstance(item, HwRule) and item.goto is not None and item.goto not in entered:
                entered.add(item.goto)
                todo.append((item.goto, moved, state))
    return out[:most]


# a family's address fields, and its ICMP protocol with the echo request/reply types
_FAMILIES = {ir.ETH_TYPE_IPV4: (("ipv4_src", "ipv4_dst"), 1, (8, 0)),
             ir.ETH_TYPE_IPV6: (("ipv6_src", "ipv6_dst"), 58, (128, 129))}
_L3 = ("ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst", "ip_proto", "ip_ttl", "tcp_src", "tcp_dst", "udp_src",
       "udp_dst", "icmp_type", "icmp_code")


def moved_into(packet: Mapping[str, int], match: ir.Match) -> dict[str, int]:
    """``packet`` with the header terms of ``match`` (a packet aimed at a rule or path), in its family."""
    moved = dict(packet)
    family = match.get("eth_type")
    if family is not None and family.value != moved.get("eth_type", family.value):
        _into_family(moved, family.value)
    if match.get("vlan_vid") is None:
        moved.pop("vlan_vid", None)  # flower: a rule without a VLAN term takes untagged packets only
    for term in match.fields:
        if term.field not in INTERNAL:  # ct_state and the like: the packet gets them on its way
            moved[term.field] = term.value | moved.get(term.field, 0) & ~term.mask
    return moved


def _into_family(packet: dict[str, int], eth_type: int) -> None:
    """A packet aimed at a rule of another ethertype: its addresses become that family's (0 until the rule's
    terms set them: a field left out would be absent to the pipeline but 0 in the frame the NIC sees), an echo
    stays an echo; a non-IP ethertype keeps no IP field."""
    old = _FAMILIES.get(packet.get("eth_type", -1))
    new = _FAMILIES.get(eth_type)
    if new is None:
        for field in _L3:
            packet.pop(field, None)
        return
    for field in _L3[:4]:
        packet.pop(field, None)
    packet.update(dict.fromkeys(new[0], 0))
    if old is not None and packet.get("ip_proto") == old[1]:
        packet["ip_proto"] = new[1]
        if packet.get("icmp_type") in old[2]:
            packet["icmp_type"] = new[2][old[2].index(packet["icmp_type"])]
        else:
            packet.pop("icmp_type", None)
            packet.pop("icmp_code", None)


def table_shares(pipeline: ir.Pipeline, plan: Plan, ports: Sequence[int], chain_miss: str = hw.CHAIN_MISS_CONTINUE,
                 most: int = 2000) -> dict[int, tuple[int, int]]:
    """table -> (paths through it the NIC decides, paths through it in all), over one packet aimed at each path of
    each of ``ports`` (:func:`aimed`): the tables the pipeline takes that packet through count it, as offloaded
    when the NIC forwards or drops it."""
    shares: dict[int, list[int]] = {}
    for port in ports:
        for packet, ct_state in aimed(plan, port, most):
            try:
                by_nic = walk(plan, packet, _ForcedState(ct_state), chain_miss).by_nic
                steps = interpreter.run(pipeline, packet, _ForcedState(ct_state)).steps
            except (OverlappingRules, RuntimeError, ValueError):
                continue
            for table in {step.table for step in steps}:
                counts = shares.setdefault(table, [0, 0])
                counts[0] += by_nic
                counts[1] += 1
    return {table: (hw_paths, total) for table, (hw_paths, total) in shares.items()}
