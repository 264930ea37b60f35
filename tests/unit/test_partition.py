"""The HW/SW split must never change a verdict (invariant 3 of ARCHITECTURE.md).

Random pipelines and random packets: whatever the partitioner puts in
hardware, "hardware rules first, software on a miss" must give the same
output ports as the software pipeline alone.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hwflow.offload.capabilities import MASK_ANY, MASK_EXACT, MASK_PREFIX, Capabilities
from hwflow.offload.partition import PortOffload, hw_then_sw, partition
from hwflow.pipeline import interpreter, ir

PORTS = (1, 2, 3, 4)
MACS = (0x02_00_00_00_00_01, 0x02_00_00_00_00_02, 0x02_00_00_00_01_02, 0xFF_FF_FF_FF_FF_FF, 0x01_00_5E_00_00_01)
ETH_TYPES = (ir.ETH_TYPE_IPV4, ir.ETH_TYPE_IPV6, ir.ETH_TYPE_ARP)
IPS = (0x0A000001, 0x0A000002, 0x0A000101, 0xC0A80001)
PROTOS = (1, 6, 17)

FULL_CAPS = Capabilities(
    match_fields={"eth_dst": MASK_ANY, "eth_src": MASK_ANY, "eth_type": MASK_EXACT,
                  "ipv4_dst": MASK_PREFIX, "ip_proto": MASK_EXACT},
    actions=frozenset({"redirect", "drop"}), max_rules=1000,
)


def _term(draw, field: str, pool) -> tuple[int, int]:
    value = draw(st.sampled_from(pool))
    width = ir.FIELD_BITS[field]
    kind = draw(st.sampled_from(("exact", "prefix", "any")))
    if kind == "exact":
        mask = (1 << width) - 1
    elif kind == "prefix":
        n = draw(st.integers(0, width))
        mask = ((1 << n) - 1) << (width - n)
    else:
        mask = draw(st.integers(0, (1 << width) - 1))
    return value & mask, mask


@st.composite
def flows(draw, table: int, last_table: int):
    terms = {}
    if table == 0 and draw(st.booleans()):
        terms["in_port"] = draw(st.sampled_from(PORTS))
    if table > 0 and draw(st.booleans()):
        terms["metadata"] = draw(st.sampled_from((0, 7, 9)))
    if table > 0 and draw(st.integers(0, 3)) == 0:
        terms["reg0"] = draw(st.sampled_from((0, 1, 2, 6, 9)))
    if table > 0 and draw(st.integers(0, 3)) == 0:
        terms["ct_state"] = (draw(st.sampled_from((ir.CT_NEW, ir.CT_EST, ir.CT_TRK))),
                             draw(st.sampled_from((ir.CT_NEW, ir.CT_EST, ir.CT_TRK, 0xFF))))
    for field, pool in (("eth_dst", MACS), ("eth_type", ETH_TYPES), ("ipv4_dst", IPS), ("ip_proto", PROTOS)):
        if draw(st.integers(0, 2)) == 0:
            terms[field] = _term(draw, field, pool) if field != "eth_type" else draw(st.sampled_from(pool))
    actions: list = []
    for _ in range(draw(st.integers(0, 2))):
        choice = draw(st.sampled_from(("out", "out", "meta", "rewrite", "move", "other")))
        if choice == "out":
            actions.append(ir.Output(draw(st.sampled_from(PORTS))))
        elif choice == "meta":
            actions.append(ir.SetField("metadata", draw(st.sampled_from((7, 9)))))
        elif choice == "rewrite":
            actions.append(ir.SetField("eth_src", MACS[0]))
        elif choice == "move":
            actions.append(ir.Move(draw(st.sampled_from(("in_port", "ip_proto", "reg1"))), "reg0"))
        else:
            actions.append(draw(st.sampled_from((ir.PushVlan(5), ir.PopVlan(), ir.DecTtl(), ir.Punt("test")))))
    if table < last_table and draw(st.booleans()):
        if draw(st.booleans()):
            actions.append(ir.GotoTable(draw(st.integers(table + 1, last_table))))
        else:
            actions.append(ir.Conntrack(zone=3, commit=draw(st.booleans()),
                                        table=draw(st.integers(table + 1, last_table))))
    elif draw(st.integers(0, 4)) == 0:
        actions.append(ir.Drop())
    prio = draw(st.integers(0, 5))
    return ir.Flow(table, prio, ir.Match.of(**terms), tuple(actions), f"t{table}p{prio}")


@st.composite
def pipelines(draw):
    last = draw(st.integers(0, 2))
    out = []
    for table in range(last + 1):
        out += draw(st.lists(flows(table, last), max_size=6))
    unique = {f.key: f for f in out}
    return ir.Pipeline.build(unique.values(), {})


packets = st.fixed_dictionaries({
    "in_port": st.sampled_from(PORTS),
    "eth_dst": st.sampled_from(MACS),
    "eth_src": st.sampled_from(MACS),
    "eth_type": st.sampled_from(ETH_TYPES),
    "ipv4_dst": st.sampled_from(IPS),
    "ip_proto": st.sampled_from(PROTOS),
    "ip_ttl": st.sampled_from((1, 2, 64)),
})


def _offload(caps: Capabilities, switches=("sw0", "sw0", "sw0", "sw1")) -> dict[int, PortOffload]:
    return {p: PortOffload(p, s, caps) for p, s in zip(PORTS, switches)}


@settings(max_examples=400, deadline=None)
@given(pipelines(), st.lists(packets, min_size=1, max_size=20), st.integers(0, 12), st.booleans())
def test_split_never_changes_a_verdict(pipeline, pkts, capacity, unicast_only):
    caps = Capabilities(FULL_CAPS.match_fields, FULL_CAPS.actions, max_rules=capacity)
    plan = partition(pipeline, _offload(caps), (ir.ETH_TYPE_IPV4, ir.ETH_TYPE_IPV6), unicast_only=unicast_only)
    for pkt in pkts:
        assert hw_then_sw(pipeline, plan, pkt) == interpreter.run(pipeline, pkt).ports, (plan.rules, pkt)
        if any(r.match.covers(pkt) for r in plan.rules_of(pkt["in_port"])):
            assert interpreter.run(pipeline, pkt).punt is None  # a punted packet never goes to hardware


@settings(max_examples=200, deadline=None)
@given(pipelines(), st.lists(packets, min_size=1, max_size=10))
def test_split_with_a_weak_nic_is_still_exact(pipeline, pkts):
    weak = Capabilities({"eth_dst": MASK_EXACT, "eth_type": MASK_EXACT}, frozenset({"redirect"}), max_rules=3)
    plan = partition(pipeline, _offload(weak), (ir.ETH_TYPE_IPV4,))
    for rule in plan.rules:
        assert {t.field for t in rule.match.fields} <= {"eth_dst", "eth_type"}
        assert all(t.exact for t in rule.match.fields)
    for pkt in pkts:
        assert hw_then_sw(pipeline, plan, pkt) == interpreter.run(pipeline, pkt).ports


def _l2_pipeline() -> ir.Pipeline:
    macs = {1: MACS[0], 2: MACS[1], 3: MACS[2]}
    flows = [ir.Flow(0, 100, ir.Match.of(in_port=p), (ir.SetField("metadata", 7), ir.GotoTable(10)), f"port:{p}")
             for p in macs]
    flows += [ir.Flow(10, 100, ir.Match.of(metadata=7, eth_dst=m), (ir.Output(p),), f"port:{p}")
              for p, m in macs.items()]
    flows.append(ir.Flow(10, 50, ir.Match.of(metadata=7, eth_dst=(ir.MULTICAST_BIT, ir.MULTICAST_BIT)),
                         tuple(ir.Output(p) for p in macs), "network:n"))
    return ir.Pipeline.build(flows, {})


def test_l2_unicast_goes_to_hardware_and_the_rest_stays_in_software():
    pipeline = _l2_pipeline()
    plan = partition(pipeline, _offload(FULL_CAPS), (ir.ETH_TYPE_IPV4,))
    rules = {(r.in_port, r.output) for r in plan.rules}
    # ports 1..3 share switch sw0: each reaches the other two; nothing reaches port 4 (no flows)
    assert rules == {(1, 2), (1, 3), (2, 1), (2, 3), (3, 1), (3, 2)}
    assert all(r.match.get("eth_type").value == ir.ETH_TYPE_IPV4 for r in plan.rules)
    assert all(r.level == 0 for r in plan.rules)  # exact MACs never overlap: one priority suffices
    reasons = {s.reason.split(":")[0] for s in plan.software if s.in_port == 1}
    assert any("outputs" in r for r in reasons)  # broadcast to two other ports
    assert any(r.startswith("drop") for r in reasons)  # unknown unicast


def test_capacity_is_shared_per_switch_and_the_rest_stays_in_software():
    pipeline = _l2_pipeline()
    caps = Capabilities(FULL_CAPS.match_fields, FULL_CAPS.actions, max_rules=4)
    plan = partition(pipeline, _offload(caps), (ir.ETH_TYPE_IPV4,))
    assert len(plan.rules) == 4
    assert sum(1 for s in plan.software if "full" in s.reason) == 2


def test_no_redirect_across_switches():
    pipeline = _l2_pipeline()
    plan = partition(pipeline, _offload(FULL_CAPS, ("sw0", "sw1", "sw0", "sw0")), (ir.ETH_TYPE_IPV4,))
    assert {(r.in_port, r.output) for r in plan.rules} == {(1, 3), (3, 1)}


@settings(max_examples=200, deadline=None)
@given(pipelines(), st.lists(packets, min_size=1, max_size=10), st.data())
def test_a_refused_rule_keeps_what_it_shadows_in_software(pipeline, pkts, data):
    offload = _offload(FULL_CAPS)
    first = partition(pipeline, offload, (ir.ETH_TYPE_IPV4,), unicast_only=False)
    if not first.rules:
        return
    victim = data.draw(st.sampled_from(first.rules))
    plan = partition(pipeline, offload, (ir.ETH_TYPE_IPV4,), refused={(victim.in_port, victim.match): "ENOSPC"},
                     unicast_only=False)
    assert (victim.in_port, victim.match) not in {(r.in_port, r.match) for r in plan.rules}
    assert any(s.reason == "the NIC refused it: ENOSPC" for s in plan.software)
    for pkt in pkts:
        assert hw_then_sw(pipeline, plan, pkt) == interpreter.run(pipeline, pkt).ports


def test_two_port_flood_is_one_output_but_stays_in_software():
    flows = [ir.Flow(0, 100, ir.Match.of(in_port=p), (ir.SetField("metadata", 7), ir.GotoTable(10)), "p")
             for p in (1, 2)]
    flows.append(ir.Flow(10, 50, ir.Match.of(metadata=7, eth_dst=(ir.MULTICAST_BIT, ir.MULTICAST_BIT)),
                         (ir.Output(1), ir.Output(2)), "network:n"))
    pipeline = ir.Pipeline.build(flows, {})
    assert partition(pipeline, _offload(FULL_CAPS), (ir.ETH_TYPE_IPV4,)).rules == []
    offloaded = partition(pipeline, _offload(FULL_CAPS), (ir.ETH_TYPE_IPV4,), unicast_only=False).rules
    assert {(r.in_port, r.output) for r in offloaded} == {(1, 2), (2, 1)}


def _check_all_packets(pipeline: ir.Pipeline, plan) -> None:
    for in_port in PORTS:
        for eth_dst in MACS:
            for proto in PROTOS:
                pkt = {"in_port": in_port, "eth_dst": eth_dst, "eth_src": MACS[0], "eth_type": ir.ETH_TYPE_IPV4,
                       "ipv4_dst": IPS[0], "ip_proto": proto, "ip_ttl": 64}
                assert hw_then_sw(pipeline, plan, pkt) == interpreter.run(pipeline, pkt).ports, pkt


def test_conntrack_recirculation_keeps_the_path_in_software():
    flows = [ir.Flow(0, 10, ir.Match.of(eth_dst=MACS[0]), (ir.Output(2), ir.Conntrack(zone=1, table=1)), "a"),
             ir.Flow(1, 10, ir.Match.of(), (ir.Output(3),), "b")]
    pipeline = ir.Pipeline.build(flows, {})
    plan = partition(pipeline, _offload(FULL_CAPS), (ir.ETH_TYPE_IPV4,), unicast_only=False)
    assert plan.rules == []
    assert any(s.reason.startswith("conntrack") for s in plan.software)
    _check_all_packets(pipeline, plan)


def test_a_register_loaded_from_the_packet_is_not_guessed():
    flows = [ir.Flow(0, 10, ir.Match.of(), (ir.Move("ip_proto", "reg0"), ir.GotoTable(1)), "a"),
             ir.Flow(1, 10, ir.Match.of(reg0=0), (ir.Output(2),), "b"),
             ir.Flow(1, 5, ir.Match.of(), (ir.Output(3),), "c")]
    pipeline = ir.Pipeline.build(flows, {})
    plan = partition(pipeline, _offload(FULL_CAPS), (ir.ETH_TYPE_IPV4,), unicast_only=False)
    assert plan.rules == []
    _check_all_packets(pipeline, plan)


def test_a_register_loaded_from_pipeline_state_is_followed():
    flows = [ir.Flow(0, 10, ir.Match.of(), (ir.Move("in_port", "reg0"), ir.GotoTable(1)), "a"),
             ir.Flow(1, 10, ir.Match.of(reg0=1), (ir.Output(2),), "b"),
             ir.Flow(1, 5, ir.Match.of(), (ir.Output(3),), "c")]
    pipeline = ir.Pipeline.build(flows, {})
    plan = partition(pipeline, _offload(FULL_CAPS), (ir.ETH_TYPE_IPV4,), unicast_only=False)
    # 3 -> 3 is output to the ingress port (a no-op: drop); port 4 sits behind another switch
    assert {(r.in_port, r.output) for r in plan.rules} == {(1, 2), (2, 3)}
    _check_all_packets(pipeline, plan)


def test_punted_and_ttl_paths_stay_in_software():
    flows = [ir.Flow(0, 10, ir.Match.of(ip_proto=17), (ir.Punt("dhcp"),), "dhcp"),
             ir.Flow(0, 5, ir.Match.of(), (ir.DecTtl(), ir.Output(2)), "route")]
    pipeline = ir.Pipeline.build(flows, {})
    plan = partition(pipeline, _offload(FULL_CAPS), (ir.ETH_TYPE_IPV4,), unicast_only=False)
    assert plan.rules == []
    reasons = {s.reason for s in plan.software if s.in_port == 1}
    assert "punted to the agent (dhcp)" in reasons and "DecTtl: not offloaded yet" in reasons
    assert interpreter.run(pipeline, {"in_port": 1, "ip_proto": 17}).kind == "punt"
    assert interpreter.run(pipeline, {"in_port": 1, "ip_proto": 6, "ip_ttl": 1}).kind == "drop"
    assert interpreter.run(pipeline, {"in_port": 1, "ip_proto": 6, "ip_ttl": 9}).outputs[0][1]["ip_ttl"] == 8
