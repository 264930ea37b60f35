"""The NIC as tc sees it, for the equivalence tests: hardware rules first, software (the pipeline) on a miss.

Written from tc's documented behaviour, not from the partitioner's helpers, so the proof compares two
independent readings of a plan. The walk through a port's rules (``lookup``, ``apply``, ``hw_then_sw``) is the
product's, ``hwflow.offload.nic_walk`` (``hwflow trace --hardware`` shows it); it reads the plan so:

- A representor's rules are tried chain by chain; within a chain by level (tc priority), lowest first;
  the order inside a level is the NIC's business, so two rules of one level that both take a packet make
  the answer depend on the NIC: that raises.
- flower matches VLAN tags through the protocol: a rule without a ``vlan_vid`` term takes untagged
  packets only.
- ``drop`` (gact drop) ends the packet there: no output, and software never sees it.
- ``pass`` hands the packet to software, which runs the whole pipeline from the start (no chain tag is
  written: mlx5's accept goes through the "tc end" table to the slow path).
- A miss in chain 0 goes to software the same way. A miss in chain N > 0 is what mlx5 does with it: the
  packet reaches the representor tagged with N, software tc continues at chain N, which holds no rule of
  ours (skip_sw), and the kernel drops it. The model says so by returning no output, so a plan whose
  chain lets a packet fall through fails the comparison.
- ``conntrack`` is the connection table the NIC and software share (the kernel's). A packet no ``ct``
  action has seen has ``ct_state`` 0 (untracked): flower's ``ct_state -new`` takes it, ``+trk`` does not.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence

from hypothesis import assume

from hwflow.offload import nic_walk
from hwflow.offload.partition import HwRule, Plan
from hwflow.pipeline import interpreter, ir

INTERNAL = ir.INTERNAL_FIELDS | {"in_port"}


def software_alone(pipeline: ir.Pipeline, packet: Mapping[str, int], tracker: interpreter.ConnTracker
                   ) -> tuple[tuple[int, dict[str, int]], ...]:
    """The reference side: the pipeline in software alone. An example where two NAT translations meet is
    discarded (``assume``): OVS would pick a source port of its own there, which no reference can predict."""
    try:
        return interpreter.run(pipeline, packet, tracker).outputs
    except RuntimeError as exc:
        assume("clashes" not in str(exc))
        raise


def hw_then_sw(pipeline: ir.Pipeline, plan: Plan, packet: Mapping[str, int],
               conntrack: interpreter.ConnTracker | None = None) -> tuple[tuple[int, Mapping[str, int]], ...]:
    """Outputs (port, packet as sent) when the NIC's rules run first and OVS takes what they hand it."""
    tracker = conntrack if conntrack is not None else interpreter.ConnTracker()
    try:
        taken = nic_walk.walk(plan, packet, tracker)
    except nic_walk.OverlappingRules as exc:
        raise AssertionError(str(exc)) from None
    if taken.software:  # a pass, or a miss in chain 0: software from the start
        return interpreter.run(pipeline, packet, tracker).outputs
    if taken.verdict != nic_walk.REDIRECT:
        return ()  # gact drop, or lost (a miss in chain N: software tc continues there, where nothing of ours is)
    return ((taken.output, taken.packet),)


def forwarded_by_nic(plan: Plan, packet: Mapping[str, int]) -> bool:
    """Whether a hardware rule sends the packet out (rather than software deciding it): follows gotos."""
    rules = plan.rules_of(packet["in_port"])
    state = {"ct_state": 0, **packet}
    chain = 0
    for _ in range(64):
        rule = lookup(rules, chain, state)
        if rule is None or rule.goto is None:
            return rule is not None and rule.output is not None
        chain = rule.goto
    raise AssertionError(f"more than 64 gotos: {rules}")


def dropped_by_nic(plan: Plan, packet: Mapping[str, int], conntrack: interpreter.ConnTracker | None = None) -> bool:
    """Whether a hardware drop rule takes the packet (rather than software deciding it): follows gotos, doing
    their actions (``ct`` on a copy of ``conntrack``: a drop after conntrack reads the state it gives)."""
    tracker = copy.deepcopy(conntrack) if conntrack is not None else interpreter.ConnTracker()
    rules = plan.rules_of(packet["in_port"])
    state = {"ct_state": 0, **packet}
    chain = 0
    for _ in range(64):
        rule = lookup(rules, chain, state)
        if rule is None or rule.goto is None:
            return rule is not None and rule.drop
        for action in rule.actions:
            apply(action, state, tracker)
        chain = rule.goto
    raise AssertionError(f"more than 64 gotos: {rules}")


def aimed_at_rules(plan: Plan, packet: Mapping[str, int], most: int = 24) -> list[dict[str, int]]:
    """``packet`` moved into each rule of its port that forwards, drops or goes on, following gotos (into the goto's
    match, then into each rule of the chain it leads to), and just outside each (the rule's last masked header
    bit flipped) and with TTL 1 and 2: the packets a random draw rarely makes, and the ones that reach the NIC
    side of the proof and its edges. At most ``most``."""
    by_chain: dict[int, list[HwRule]] = {}
    for rule in plan.rules_of(packet["in_port"]):
        by_chain.setdefault(rule.chain, []).append(rule)
    out, todo, seen = [], [(0, dict(packet))], set()
    while todo and len(out) < most:
        chain, pkt = todo.pop()
        for rule in by_chain.get(chain, ()):
            if (rule.output, rule.goto, rule.drop) == (None, None, False):
                continue
            moved = nic_walk.moved_into(pkt, rule.match)
            key = (rule.chain, rule.order, tuple(sorted(moved.items())))
            if key in seen:
                continue
            seen.add(key)
            out += [moved, *_edges(moved, rule.match)]
            if rule.goto is not None:
                todo.append((rule.goto, moved))
    return out[:most]


def _edges(packet: dict[str, int], match: ir.Match) -> list[dict[str, int]]:
    """``packet`` just outside the rule (its last masked header bit flipped: the edge of a prefix, a neighbouring
    address or port), and with the TTLs a hop expires (1) or just survives (2)."""
    terms = [t for t in match.fields if t.field not in INTERNAL and t.field != "eth_type"]
    out = []
    if terms:
        term = terms[-1]
        out.append({**packet, term.field: packet[term.field] ^ (term.mask & -term.mask)})
    if "ip_ttl" in packet:
        out += [{**packet, "ip_ttl": ttl} for ttl in (1, 2)]
    return out


def lookup(rules: Sequence[HwRule], chain: int, packet: Mapping[str, int]) -> HwRule | None:
    """The product's reading (hwflow.offload.nic_walk.lookup); two rules of one level taking a packet fail the test."""
    try:
        return nic_walk.lookup(rules, chain, packet)
    except nic_walk.OverlappingRules as exc:
        raise AssertionError(str(exc)) from None


apply = nic_walk.apply  # what tc's pedit, vlan, tunnel_key and ct actions do to the packet
