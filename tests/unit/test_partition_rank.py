"""Room given out by rank (issue 15, part 4): short of room, the ports the agent ranks highest (by traffic) get
it first; a rank changes which ports hold rules, never what a rule does.

The rank is data the partitioner is given (port -> priority, highest first, ties in key order); the agent
makes it from measured traffic with hysteresis (hwflow.agent.traffic, tested in test_traffic_rank.py).
"""

from __future__ import annotations

from hypothesis import strategies as st
from test_partition import (
    FULL_CAPS,
    MACS,
    PORTS,
    RICH_CAPS,
    _assert_same_outputs,
    _canonical,
    _capped,
    _event,
    _offload,
    _patched,
    _proved,
    changed_networks,
    changed_pipelines,
    packets,
    pipelines,
)
from test_partition import flows as flows_of

from hwflow.offload.partition import FULL, ChainIds, Partitioner, _Planner, partition
from hwflow.pipeline import ir

TYPES = (ir.ETH_TYPE_IPV4, ir.ETH_TYPE_IPV6)


@st.composite
def networks(draw):
    """Ports 1-4 on one or two networks, most of them destinations of the others (a rule per destination on each
    port of the network: the ports compete for room), and what random table 2 flows do after an L2 join."""
    nets = {p: draw(st.sampled_from((7, 7, 9))) for p in PORTS[:4]}
    flows = [ir.Flow(0, 10, ir.Match.of(in_port=p), (ir.SetField("metadata", net), ir.GotoTable(1)), "classify")
             for p, net in nets.items()]
    for port, net in nets.items():
        if draw(st.integers(0, 3)):
            then = draw(st.sampled_from(((ir.Output(port),), (ir.SetField("reg0", port), ir.GotoTable(2)))))
            flows.append(ir.Flow(1, 0, ir.Match.of(metadata=net, eth_dst=MACS[port - 1]), then, f"l2-{port}"))
    flows += [ir.Flow(2, 1, ir.Match.of(reg0=p), (ir.Output(p),), f"out-{p}") for p in PORTS[:4]]
    flows += draw(st.lists(flows_of(2, 2), max_size=2))
    return ir.Pipeline.build({f.key: f for f in flows}.values(), {})


@st.composite
def changed_networks_of_ports(draw):
    """Two of :func:`networks`: the second as the compiler makes it from the first (patched with the delta)."""
    before, after = draw(networks()), draw(networks())
    return _patched({f.key: f for f in before.flows}, {f.key: f for f in after.flows})


# pipelines shaped like the apps', and networks of ports (each a rule per destination: they compete for room)
contested = st.one_of(pipelines(True), networks(), networks(), changed_networks().map(lambda pair: pair[1]))
# priorities: few values, so that ties (broken by key) are common
ranks = st.builds(lambda values, named: {p: v for p, v, n in zip(PORTS, values, named) if n},
                  st.tuples(*[st.sampled_from((0.0, 0.5, 1.0, 3.0, 20.0))] * len(PORTS)),
                  st.tuples(*[st.integers(0, 3).map(bool)] * len(PORTS)))  # most ports named, some not


def _order(rank, ports) -> list[int]:
    return sorted(ports, key=lambda k: (-rank.get(k, 0.0), k))


def _short(plan) -> set[int]:
    return {leaf.in_port for leaf in plan.software if leaf.reason == FULL}


def test_short_of_room_each_port_gets_what_the_higher_ranked_ports_leave(nic_share):
    """A whole plan with a rank: each port's rules are exactly what planning it alone in the room the ports
    ranked above it (on its switch) leave would give, whatever the ports below it take; and every packet keeps
    its verdict. With key order the ports below a starved one could hold room it wanted: this is the ranking.
    Floor: 40% of the fixed examples forward a packet by a NIC rule (measured 59%)."""
    def check(pipeline, pkts, capacity, rich, joins, rank) -> int:
        caps = _capped(RICH_CAPS if rich else FULL_CAPS, capacity)
        offload = _offload(caps)
        ids = ChainIds()
        plan = partition(pipeline, offload, TYPES, joins=joins, ids=ids, rank=rank)
        order = _order(rank, offload)
        for position, port in enumerate(order):
            switch = offload[port].switch_id
            above = sum(len(plan.rules_of(q)) for q in order[:position] if offload[q].switch_id == switch)
            room = max(capacity - above, 0)
            alone = _Planner(pipeline, offload, TYPES, {}, True, frozenset(joins), ids)
            alone._plan_port(offload[port], room)
            assert alone._assemble({port}).rules_of(port) == plan.rules_of(port), (port, room, rank)
        for switch in ("sw0", "sw1"):
            assert sum(len(plan.rules_of(p)) for p in offload if offload[p].switch_id == switch) <= capacity
        if _short(plan):
            _event("short of room")
            starved = min(_short(plan), key=order.index)
            if any(plan.rules_of(q) for q in order[order.index(starved) + 1:]):
                _event("a port ranked below a starved one holds what it could not use")
        return _assert_same_outputs(pipeline, plan, pkts)

    _proved(nic_share, 40, 200, check, contested, st.lists(packets, min_size=1, max_size=10),
            st.integers(0, 30), st.booleans(), st.frozensets(st.integers(1, 2)), ranks)


def test_a_new_rank_gives_the_room_out_as_a_whole_plan_in_its_order_would(nic_share):
    """Plan with one rank, then with another (the pipeline and ports as they were): the plan is the whole plan
    with the new rank, only ports it says changed have other rules, and :meth:`Partitioner.moves` said
    beforehand that rules would move whenever they do. Floor: 30% of the fixed examples forward a packet by a
    NIC rule (measured 44%)."""
    def check(pipeline, pkts, capacity, rich, joins, first, then, flip) -> int:
        if flip:  # the order turned round (ports the first rank does not name stay at 0)
            then = {port: 20.0 - priority for port, priority in first.items()}
        caps = _capped(RICH_CAPS if rich else FULL_CAPS, capacity)
        offload = _offload(caps)
        partitioner = Partitioner(joins)
        before = partitioner.plan(pipeline, offload, TYPES, {}, rank=first)
        rules_before = {p: before.rules_of(p) for p in PORTS}
        units_before = {p: dict(before.units_of(p)) for p in PORTS}
        moves = partitioner.moves(then)
        plan = partitioner.plan(pipeline, offload, TYPES, {}, rank=then)
        assert partitioner.full_plans == 1
        whole = partition(pipeline, offload, TYPES, joins=joins, ids=ChainIds(), rank=then)
        assert _canonical(plan) == _canonical(whole)
        differ = {p for p in PORTS if plan.rules_of(p) != rules_before[p]}
        assert differ <= partitioner.changed
        assert moves == bool(partitioner.changed)
        for p in partitioner.changed:  # the agent re-encodes a changed port's chain 0 and the chains refreshed
            kept = {chain: units_before[p][chain] if chain and chain in units_before[p]
                    and chain not in plan.refreshed else rules for chain, rules in plan.units_of(p)}
            assert kept == dict(plan.units_of(p))
        _event("rules moved" if differ else "no rule moved")
        for switch in ("sw0", "sw1"):
            assert sum(len(plan.rules_of(p)) for p in offload if offload[p].switch_id == switch) <= capacity
        return _assert_same_outputs(pipeline, plan, pkts)

    _proved(nic_share, 30, 200, check, contested, st.lists(packets, min_size=1, max_size=10),
            st.integers(0, 12), st.booleans(), st.frozensets(st.integers(1, 2)), ranks, ranks, st.booleans())


def test_an_incremental_plan_with_a_rank_equals_a_whole_plan_with_it(nic_share):
    """A change of the pipeline and ports planned incrementally under a rank (the same, or one that changes with
    it) is what a whole plan with that rank gives, wherever no port is short of room (short of room a change's
    ports get what the others leave, as without a rank: test_partition's incremental tests); it always fits
    and keeps every verdict. Floor: 8% of the fixed examples forward a packet by a NIC rule (measured 16%)."""
    def check(pipelines_, before, after, rich, capacity, pkts, first, then, same) -> int:
        old, new = pipelines_
        then = first if same else then
        caps = _capped(RICH_CAPS if rich else FULL_CAPS, capacity)
        offload = _offload(caps)
        partitioner = Partitioner({1})
        partitioner.plan(old, {p: offload[p] for p in before}, (ir.ETH_TYPE_IPV4,), {}, rank=first)
        delta = (list(set(new.flows) - set(old.flows)), list(set(old.flows) - set(new.flows)))
        now = {p: offload[p] for p in after}
        plan = partitioner.plan(new, now, (ir.ETH_TYPE_IPV4,), {}, delta, rank=then)
        taken = _assert_same_outputs(new, plan, [p for p in pkts if p["in_port"] in now])
        for switch in ("sw0", "sw1"):
            assert sum(len(plan.rules_of(p)) for p in now if offload[p].switch_id == switch) <= capacity
        whole = partition(new, now, (ir.ETH_TYPE_IPV4,), joins={1}, ids=partitioner._ids, rank=then)
        if _short(whole):
            _event("short of room: served in the order of changes")
        else:
            _event("incremental" if partitioner.changed is not None else "whole plan")
            assert _canonical(plan) == _canonical(whole)
        return taken

    _proved(nic_share, 8, 200, check, st.one_of(changed_pipelines(), changed_networks_of_ports()),
            st.frozensets(st.sampled_from(PORTS), min_size=1),
            st.frozensets(st.sampled_from(PORTS), min_size=1), st.booleans(), st.integers(3, 40),
            st.lists(packets, min_size=1, max_size=10), ranks, ranks, st.booleans())


def test_a_port_left_less_room_by_a_new_rank_says_why_as_a_whole_plan_would():
    """Ports 1, 3 and 4 on network 7, whose chain holds nothing for hardware; port 2 on network 9, whose chain
    takes the room (a goto, a destination, the catch-all: 3 of 3). Ranked first, port 3 has room and its goto
    stays in software because nothing behind it goes to hardware; ranked after port 2 it has none, and a port
    that cannot pay a goto does not look behind it: the reason is the room. The new rank must plan port 3 again
    though its rules do not move, or its reason is not the one a whole plan with that rank gives."""
    flows = [ir.Flow(0, 10, ir.Match.of(in_port=p), (ir.SetField("metadata", net), ir.GotoTable(1)), "classify")
             for p, net in ((1, 7), (2, 9), (3, 7), (4, 7))]
    flows.append(ir.Flow(1, 0, ir.Match.of(eth_dst=MACS[0], metadata=9), (ir.Output(1),), "l2-1"))
    pipeline = ir.Pipeline.build(flows, {})
    offload = _offload(_capped(RICH_CAPS, 3))
    partitioner = Partitioner({1})
    before = partitioner.plan(pipeline, offload, (ir.ETH_TYPE_IPV4,), {}, rank={3: 0.5})
    assert FULL not in {sw.reason for sw in before.software if sw.in_port == 3}
    plan = partitioner.plan(pipeline, offload, (ir.ETH_TYPE_IPV4,), {}, rank={})
    assert [sw.reason for sw in plan.software if sw.in_port == 3] == [FULL]
    whole = partition(pipeline, offload, (ir.ETH_TYPE_IPV4,), joins={1}, ids=ChainIds())
    assert _canonical(plan) == _canonical(whole)


def test_ranked_ports_are_served_first_and_ties_in_key_order():
    """Three ports on one network, room for two ports' rules: the two ranked highest hold them; equal ranks (and
    ports the rank does not name, at 0) go in key order; without a rank, key order."""
    dests = [(7, i, i + 1) for i in range(3)]
    old = {f.key: f for f in _network_flows(dests)}
    pipeline, _ = _patched(old, old)
    caps = _capped(FULL_CAPS, 4)  # each port: a rule to each of the two others
    offload = {p: _offload(caps)[p]._replace(switch_id="sw0") for p in (1, 2, 3)}
    holders = {}
    for name, rank in {"none": {}, "3 first": {3: 5.0}, "2 and 3": {2: 1.0, 3: 1.0}, "1 and 3": {3: 2.0, 1: 1.0}
                       }.items():
        plan = partition(pipeline, offload, (ir.ETH_TYPE_IPV4,), rank=rank)
        holders[name] = {p for p in offload if plan.rules_of(p)}
    assert holders == {"none": {1, 2}, "3 first": {1, 3}, "2 and 3": {2, 3}, "1 and 3": {1, 3}}


def _network_flows(dests):
    flows = [ir.Flow(0, 10, ir.Match.of(in_port=p), (ir.SetField("metadata", 7), ir.GotoTable(1)), "classify")
             for p in (1, 2, 3)]
    macs = (0x02_00_00_00_00_01, 0x02_00_00_00_00_02, 0x02_00_00_00_00_03)
    flows += [ir.Flow(1, 0, ir.Match.of(metadata=net, eth_dst=macs[mac]), (ir.Output(port),), f"l2-{port}")
              for net, mac, port in dests]
    return flows
