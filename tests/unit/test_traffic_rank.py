"""The traffic rank (hwflow.agent.traffic): decayed rates, hysteresis against flapping, and the agent's report
step that turns a reading of both datapaths into a new rank only when it moves room."""

from __future__ import annotations

import threading
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from test_agent_metrics import FakeTc, flower_rule, value
from test_partition import FULL_CAPS, _capped
from test_partition_rank import _network_flows

from hwflow.agent.daemon import Agent
from hwflow.agent.metrics import AgentMetrics
from hwflow.agent.traffic import IDLE, TrafficRates, priorities
from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.backend import Representor
from hwflow.offload.partition import Partitioner, PortOffload
from hwflow.pipeline import ir


def test_a_rate_is_packets_a_second_and_halves_every_half_life_once_quiet():
    rates = TrafficRates(half_life=4.0)
    rates.observe({1: 1000, 2: 0}, 0.0)  # counts since a time unknown: only the clock
    assert rates.rates == {1: 0.0, 2: 0.0}
    for t in range(1, 200):
        rates.observe({1: 20, 2: 0}, float(t))
    assert rates.rates[1] == pytest.approx(20.0)
    quiet_often, quiet_rarely = TrafficRates(4.0), TrafficRates(4.0)
    for r in (quiet_often, quiet_rarely):
        r.observe({1: 0}, 0.0)
        r.rates = {1: 20.0}
    for t in range(1, 9):
        quiet_often.observe({1: 0}, float(t))
    quiet_rarely.observe({1: 0}, 8.0)
    assert quiet_often.rates[1] == pytest.approx(5.0) and quiet_rarely.rates[1] == pytest.approx(5.0)
    rates.observe({2: 8}, 201.0)  # port 1 gone
    assert set(rates.rates) == {2}


def test_a_port_goes_above_another_only_when_busier_by_the_factor_and_idle():
    before = {1: 3.0, 2: 2.0, 3: 1.0}  # the order the plan was made in: 1, 2, 3
    assert priorities({1: 10.0, 2: 20.0, 3: 0.0}, before, 2.0) == before  # 20 is not more than 2 x 10 + 1
    assert priorities({1: 10.0, 2: 21.5, 3: 0.0}, before, 2.0) == {2: 3.0, 1: 2.0, 3: 1.0}
    # port 3 passes both, one after the other; a port the rank did not name (4) starts last, by key among equals
    assert priorities({1: 1.0, 2: 0.0, 3: 9.0, 4: 0.0, 5: 0.0}, before, 2.0) == {3: 5.0, 1: 4.0, 2: 3.0, 4: 2.0,
                                                                                  5: 1.0}
    assert priorities({1: 0.0, 2: 0.9, 3: 0.5}, {}, 2.0) == {1: 3.0, 2: 2.0, 3: 1.0}  # idle: key order stays


def _three_ports(room: int = 4):
    """Ports 1-3 on one network, each a rule to each of the two others (2 rules): ``room`` rules in all."""
    pipeline = ir.Pipeline.build(_network_flows([(7, i, i + 1) for i in range(3)]), {})
    caps = _capped(FULL_CAPS, room)
    return pipeline, {p: PortOffload(p, "sw0", caps) for p in (1, 2, 3)}


@settings(max_examples=200, deadline=None, database=None)
@given(st.lists(st.sampled_from((0.0, 0.3, 1.0, 2.0, 2.5, 5.0, 11.0, 30.0)), min_size=3, max_size=3),
       st.permutations((1, 2, 3)), st.sampled_from((1.0, 2.0, 3.0)), st.sampled_from((2, 3, 4)))
def test_room_moves_only_to_a_port_busier_by_the_factor_and_never_back(rates, first, factor, room):
    """Room for one of three ports, one and a half, or two (``room`` 2, 3, 4), given out first in a random order;
    then the agent's rule (a rank with hysteresis from the last one, a plan again when it moves room) round
    after round at the same rates: rules move only to a port busier than factor x the rate of each port losing
    them, plus IDLE; the rank reached in the first round is kept (no flapping, nothing moves after it)."""
    pipeline, offload = _three_ports(room)
    partitioner = Partitioner()
    types = (ir.ETH_TYPE_IPV4,)
    adopted = {p: 10.0 - i for i, p in enumerate(first)}
    partitioner.plan(pipeline, offload, types, {}, rank=adopted)
    measured = dict(zip((1, 2, 3), rates))
    rules = [{p: len(partitioner._planner.plan.rules_of(p)) for p in offload}]
    for _ in range(3):
        rank = priorities(measured, adopted, factor)
        if partitioner.moves(rank):
            adopted = rank
            partitioner.plan(pipeline, offload, types, {}, rank=rank)
        rules.append({p: len(partitioner._planner.plan.rules_of(p)) for p in offload})
        lost = {p for p in offload if rules[-1][p] < rules[-2][p]}
        gained = {p for p in offload if rules[-1][p] > rules[-2][p]}
        assert bool(lost) == bool(gained)
        for port in lost:
            assert all(measured[g] > factor * measured[port] + IDLE for g in gained), (measured, rules)
    assert rules[1] == rules[2] == rules[3]
    assert not partitioner.moves(priorities(measured, adopted, factor))


def test_ties_keep_the_lower_key_and_idle_ports_never_trade_places():
    pipeline, offload = _three_ports(room=2)
    partitioner = Partitioner()
    partitioner.plan(pipeline, offload, (ir.ETH_TYPE_IPV4,), {})
    assert [len(partitioner._planner.plan.rules_of(p)) for p in (1, 2, 3)] == [2, 0, 0] and partitioner.short()
    assert not partitioner.moves(priorities({1: 0.0, 2: 0.0, 3: 0.0}, {}, 2.0))
    assert not partitioner.moves(priorities({1: 0.0, 2: 0.9, 3: 0.5}, {}, 2.0))
    assert not partitioner.moves(priorities({1: 2.0, 2: 0.0, 3: 5.0}, {}, 2.0))  # 3 passes 2, not 1 (5 = 2x2+1)
    assert partitioner.moves(priorities({1: 0.0, 2: 1.5, 3: 0.5}, {}, 2.0))


def test_the_metrics_reading_gives_each_port_its_packets_through_both_datapaths():
    m = AgentMetrics(CollectorRegistry())
    tc = FakeTc()
    tc.rules[("unix:x", 5)] = [(flower_rule(5, 1), fl.RuleStats(10, 1000, 0)),
                               (flower_rule(5, 2, fl.Gact("pass")), fl.RuleStats(4, 400, 0))]
    topo = SimpleNamespace(ports={"a": SimpleNamespace(unique_key=1), "b": SimpleNamespace(unique_key=2)},
                           local_port_ids={"a", "b"})
    counters = {7: (4, 400, 0, 0), 8: (2, 200, 0, 0)}
    ovs = SimpleNamespace(port_counters=lambda: counters)
    reps = {1: Representor(5, "unix:x")}
    assert m.traffic(tc, ovs, topo, reps, {1: 7, 2: 8}) == {1: 14, 2: 2}
    tc.rules[("unix:x", 5)][0] = (flower_rule(5, 1), fl.RuleStats(15, 1500, 0))
    counters[8] = (9, 900, 0, 0)
    assert m.traffic(tc, ovs, topo, reps, {1: 7, 2: 8}) == {1: 5, 2: 7}
    m.rates({1: 2.5, 2: 0.5}, topo)
    assert value(m, "port_packet_rate", port="a") == 2.5

    def broken() -> dict:
        raise OSError("OVS went away")

    assert m.traffic(tc, SimpleNamespace(port_counters=broken), topo, reps, {1: 7, 2: 8}) is None


class FakePartitioner:
    def __init__(self, short: bool, moves: bool) -> None:
        self._short, self._moves, self.asked = short, moves, []

    def short(self) -> bool:
        return self._short

    def moves(self, rank) -> bool:
        self.asked.append(rank)
        return self._moves


class FakeMetrics:
    serving = False

    def __init__(self, packets) -> None:
        self.packets, self.read, self.exported = packets, 0, None

    def traffic(self, *args):
        self.read += 1
        return self.packets

    def rates(self, rates, topo) -> None:
        self.exported = dict(rates)


def _agent(short: bool, moves: bool, packets=None) -> SimpleNamespace:
    return SimpleNamespace(
        _partitioner=FakePartitioner(short, moves), metrics=FakeMetrics(packets), _traffic=TrafficRates(30.0),
        _rank={}, _wake=threading.Event(), tc=None, ovs=None, topo=None, _encoded_reps={}, ofports={},
        conf=SimpleNamespace(offload=SimpleNamespace(traffic_hysteresis=2.0)))


def test_the_report_step_reads_traffic_only_when_short_of_room_and_re_ranks_only_when_room_moves():
    idle = _agent(short=False, moves=True, packets={1: 5})
    Agent.report_traffic(idle)
    assert idle.metrics.read == 0 and not idle._wake.is_set()

    agent = _agent(short=True, moves=False, packets={1: 5, 2: 50})
    Agent.report_traffic(agent)  # the first reading sets the clock
    agent._traffic._at -= 5.0
    Agent.report_traffic(agent)
    assert agent.metrics.read == 2 and agent.metrics.exported[2] > agent.metrics.exported[1] > 0
    assert agent._partitioner.asked and agent._rank == {} and not agent._wake.is_set()

    agent._partitioner._moves = True
    agent._traffic._at -= 5.0
    Agent.report_traffic(agent)
    asked = agent._partitioner.asked[-1]
    assert agent._rank == asked and agent._wake.is_set()
    assert sorted(asked, key=lambda p: -asked[p]) == [2, 1]  # 50 a second against 5

    unread = _agent(short=True, moves=True, packets=None)  # a datapath could not be read
    Agent.report_traffic(unread)
    assert not unread._partitioner.asked and not unread._wake.is_set()
