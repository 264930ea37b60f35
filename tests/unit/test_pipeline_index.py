"""Pipeline.candidates: the indexed lookup finds exactly what a scan of the whole table finds, in order."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hwflow.pipeline import interpreter, ir

FIELDS = {"in_port": 3, "metadata": 3, "eth_dst": 3, "outport": 3}  # field -> how many values it takes


@st.composite
def terms(draw) -> ir.Match:
    chosen = {}
    for field, count in FIELDS.items():
        kind = draw(st.sampled_from(["absent", "exact", "masked"]))
        if kind == "exact":
            chosen[field] = draw(st.integers(1, count))
        elif kind == "masked":
            chosen[field] = (draw(st.integers(0, 1)), 1)  # the low bit only: overlaps several exact values
    return ir.Match.of(**chosen)


@st.composite
def pipelines(draw) -> ir.Pipeline:
    flows = {}
    for _ in range(draw(st.integers(0, 25))):
        flow = ir.Flow(0, draw(st.integers(0, 5)), draw(terms()), (ir.Output(draw(st.integers(1, 9))),), "t")
        flows.setdefault(flow.key, flow)
    return ir.Pipeline.build(flows.values(), {})


packets = st.fixed_dictionaries({field: st.integers(0, count + 1) for field, count in FIELDS.items()})


@settings(max_examples=300, deadline=None)
@given(pipelines(), st.lists(packets, min_size=1, max_size=5))
def test_candidates_hold_every_flow_that_matches_in_table_order(pipeline, packets):
    table = pipeline.table(0)
    for packet in packets:
        candidates = list(pipeline.candidates(0, packet))
        assert [f for f in table if f.match.covers(packet)] == [f for f in candidates if f.match.covers(packet)]
        assert candidates == [f for f in table if f in candidates]  # a subsequence, in priority order
        winner = next((f for f in table if f.match.covers(packet)), None)
        assert interpreter.lookup(pipeline, 0, packet) == winner


def test_the_index_leaves_out_flows_for_other_values_of_the_field_the_walk_knows():
    flows = [ir.Flow(0, 10, ir.Match.of(in_port=port, eth_dst=port), (ir.Output(port),), "t") for port in range(1, 50)]
    flows.append(ir.Flow(0, 0, ir.Match.of(), (ir.Drop(),), "miss"))
    pipeline = ir.Pipeline.build(flows, {})
    assert [f.owner for f in pipeline.candidates(0, {"in_port": 7})] == ["t", "miss"]
    # in_port unknown: the other exactly-matched field does the same; a field no flow matches exactly, nothing
    assert [f.owner for f in pipeline.candidates(0, {"eth_dst": 7})] == ["t", "miss"]
    assert len(list(pipeline.candidates(0, {"ip_proto": 6}))) == 50


def test_the_index_takes_the_known_field_that_leaves_fewest_candidates():
    """A responder-like table: a few flows per port match in_port, thousands match only a network key."""
    flows = [ir.Flow(0, 20, ir.Match.of(in_port=1, arp_spa=i), (ir.Drop(),), "port") for i in range(3)]
    flows += [ir.Flow(0, 10, ir.Match.of(metadata=i % 10, arp_tpa=i), (ir.Drop(),), "answer") for i in range(1000)]
    pipeline = ir.Pipeline.build(flows, {})
    assert len(list(pipeline.candidates(0, {"in_port": 1}))) == 1003  # in_port alone leaves every answer in
    assert len(list(pipeline.candidates(0, {"in_port": 1, "metadata": 3}))) == 103


def test_a_long_rest_is_looked_up_again_by_a_second_known_field():
    """A DHCP-like table: a flow per port (in_port) and one per network (metadata): a port's walk knows both and
    sees its own flow and its network's, not every network's; a change of another network's flow is no answer
    of its lookup (ir.reaches), one of its own network's is."""
    flows = [ir.Flow(0, 20, ir.Match.of(in_port=p), (ir.Drop(),), "port") for p in range(1, 200)]
    flows += [ir.Flow(0, 10, ir.Match.of(metadata=n), (ir.Drop(),), "network") for n in range(1, 200)]
    pipeline = ir.Pipeline.build(flows, {})
    fields, values, found = pipeline.lookup(0, {"in_port": 7, "metadata": 3})
    assert [f.match for f in found] == [ir.Match.of(in_port=7), ir.Match.of(metadata=3)]
    assert not ir.reaches(ir.pins(ir.Match.of(metadata=4)), fields, values)
    assert ir.reaches(ir.pins(ir.Match.of(metadata=3, ip_proto=17)), fields, values)
    assert ir.reaches(ir.pins(ir.Match.of(ip_proto=17)), fields, values)


def test_a_field_whose_refined_lookup_leaves_fewest_comes_first_though_alone_it_leaves_more():
    """An L2-like table: per network, a flow per destination MAC and a flood (multicast bit). A routed path knows
    the network and the next hop's MAC: the network alone leaves its 30 destinations, the MAC alone one flow
    and every network's flood, refined by the network one flow and the network's flood. The MAC comes first
    (a whole plan's routed paths looked at every destination of their network, 20% of its time); a change to
    another network's flood is no answer of the lookup, one to its own is."""
    mac = 0x02_00_00_00_00_00
    flows = [ir.Flow(0, 50, ir.Match.of(metadata=n, eth_dst=mac + 100 * n + d), (ir.Output(d),), "port")
             for n in range(1, 40) for d in range(30)]
    flows += [ir.Flow(0, 10, ir.Match.of(metadata=n, eth_dst=(1 << 40, 1 << 40)), (ir.Drop(),), "flood")
              for n in range(1, 40)]
    pipeline = ir.Pipeline.build(flows, {})
    fields, values, found = pipeline.lookup(0, {"metadata": 3, "eth_dst": mac + 307})
    assert (fields, values) == (("eth_dst", "metadata"), (mac + 307, 3))
    assert [(f.match.get("eth_dst").value, f.owner) for f in found] == [(mac + 307, "port"), (1 << 40, "flood")]
    assert not ir.reaches(ir.pins(ir.Match.of(metadata=4, eth_dst=(1 << 40, 1 << 40))), fields, values)
    assert ir.reaches(ir.pins(ir.Match.of(metadata=3, eth_dst=(1 << 40, 1 << 40))), fields, values)


def test_lookups_by_ports_long_gone_are_not_remembered_for_ever():
    """An agent's walks ask a table by the in_port of every port it ever had; a table with no flow of a port is
    never patched when the port goes, so the answers by its value must not pile up (the soak's agent grew)."""
    flows = [ir.Flow(0, 20, ir.Match.of(in_port=p), (ir.Drop(),), "port") for p in range(1, 4)]
    flows.append(ir.Flow(0, 10, ir.Match(), (ir.Output(1),), "default"))
    pipeline = ir.Pipeline.build(flows, {})
    bound = ir.ANSWERS_KEPT + ir.ANSWERS_PER_FLOW * len(flows)  # one table: its flows are the pipeline's
    for port in range(1, 3 * bound):
        fields, values, found = pipeline.lookup(0, {"in_port": port, "metadata": 1})
        assert (fields, values) == (("in_port",), (port,))
        assert [f.owner for f in found] == (["port"] if port < 4 else []) + ["default"]
    assert len(pipeline._answers[0].by_key) <= bound


@settings(max_examples=300, deadline=None)
@given(pipelines(), packets, terms())
def test_a_flow_no_lookup_answer_reaches_cannot_take_its_packets(pipeline, packet, match):
    """What an incremental user relies on: a flow ``ir.reaches`` says is no answer of a lookup can match no
    packet with the values it looked up by, so adding or removing it cannot change what a walk there finds."""
    fields, values, _ = pipeline.lookup(0, packet)
    assert dict(zip(fields, values)) == {f: packet[f] for f in fields}
    if not ir.reaches(ir.pins(match), fields, values):
        assert not match.covers(packet)


@st.composite
def flows_of(draw, table: int) -> ir.Flow:
    return ir.Flow(table, draw(st.integers(0, 5)), draw(terms()), (ir.Output(draw(st.integers(1, 9))),), "t")


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(flows_of(0), flows_of(1)), max_size=30), st.lists(st.one_of(flows_of(0), flows_of(1)),
       max_size=8), st.lists(st.integers(0, 29), max_size=8), st.lists(packets, min_size=1, max_size=5),
       st.booleans())
def test_a_patched_pipeline_is_the_pipeline_built_from_its_flows(before, added, gone, pkts, warm):
    """Same flows per table in priority order, and lookups (indexes patched, not rebuilt) find what a scan finds."""
    old = ir.Pipeline.build({f.key: f for f in before}.values(), {})
    if warm:  # indexes built before the patch are patched; the others are built afterwards
        for pkt in pkts:
            for table in (0, 1):
                list(old.candidates(table, pkt))
    removed = [old.flows[i] for i in gone if i < len(old.flows)]
    kept = {f.key for f in old.flows} - {f.key for f in removed}
    fresh = list({f.key: f for f in added if f.key not in kept}.values())
    new = old.patched(fresh, removed)
    rebuilt = ir.Pipeline.build([*(f for f in old.flows if f.key in kept), *fresh], {})
    assert set(new.flows) == set(rebuilt.flows)
    for table in (0, 1):
        assert [f.priority for f in new.table(table)] == sorted((f.priority for f in new.table(table)), reverse=True)
        for pkt in pkts:
            scan = [f for f in new.table(table) if f.match.covers(pkt)]
            assert [f for f in new.candidates(table, pkt) if f.match.covers(pkt)] == scan
            assert {f.key for f in scan} == {f.key for f in rebuilt.table(table) if f.match.covers(pkt)}
    assert old.flows == ir.Pipeline.build({f.key: f for f in before}.values(), {}).flows  # the old one unchanged
    for table in (0, 1):  # and its lookups too (the new one took its indexes over: it builds them again)
        for pkt in pkts:
            assert [f for f in old.candidates(table, pkt) if f.match.covers(pkt)] == [
                f for f in old.table(table) if f.match.covers(pkt)]
    again = new.patched(fresh[:1], [])  # a pipeline patched twice: the middle one keeps working
    for pkt in pkts:
        assert [f for f in new.candidates(0, pkt) if f.match.covers(pkt)] == [
            f for f in new.table(0) if f.match.covers(pkt)]
        assert [f for f in again.candidates(0, pkt) if f.match.covers(pkt)] == [
            f for f in again.table(0) if f.match.covers(pkt)]


def test_a_patch_clashing_with_a_remaining_flow_is_refused_or_told():
    flow = ir.Flow(0, 1, ir.Match.of(in_port=1), (ir.Output(2),), "a")
    twin = flow._replace(actions=(ir.Output(3),), owner="b")
    pipeline = ir.Pipeline.build([flow], {})
    try:
        pipeline.patched([twin], [])
        raise AssertionError("a clash must raise without on_clash")
    except ValueError as exc:
        assert "share table/priority/match" in str(exc)
    told = []
    assert pipeline.patched([twin], [], on_clash=lambda kept, dropped: told.append((kept, dropped))).flows == (flow,)
    assert told == [(flow, twin)]


@st.composite
def tables_with_repeats(draw) -> ir.Pipeline:
    """Tables whose flows share a few actions, so later flows often do what earlier ones do."""
    flows = {}
    for _ in range(draw(st.integers(0, 25))):
        action = draw(st.sampled_from([ir.Output(1), ir.Output(2), ir.Drop()]))
        flow = ir.Flow(0, draw(st.integers(0, 5)), draw(terms()), (action,), draw(st.sampled_from("ab")))
        flows.setdefault(flow.key, flow)
    return ir.Pipeline.build(flows.values(), {})


@settings(max_examples=500, deadline=None)
@given(tables_with_repeats(), st.lists(packets, min_size=1, max_size=8))
def test_essential_candidates_send_every_packet_where_all_of_them_do(pipeline, packets):
    """A walk over the essential candidates decides each packet as the whole table does (or both miss)."""
    for packet in packets:
        every = next((f for f in pipeline.candidates(0, packet) if f.match.covers(packet)), None)
        essential = next((f for f in pipeline.lookup(0, packet, essential=True)[2] if f.match.covers(packet)), None)
        assert (every is None) == (essential is None)
        assert every is None or every.actions == essential.actions


def test_neighbour_discovery_bypasses_that_end_where_the_default_does_are_not_essential():
    nd = [ir.Match.of(eth_type=ir.ETH_TYPE_IPV6, ip_proto=58, icmp_type=t) for t in (133, 134, 135, 136)]
    bypass = [ir.Flow(0, 200, match, (ir.GotoTable(2),), "nd") for match in nd]
    own = ir.Flow(0, 100, ir.Match.of(eth_type=ir.ETH_TYPE_IPV6, outport=5), (ir.Conntrack(zone=5, table=3),), "sg")
    default = ir.Flow(0, 0, ir.Match.of(), (ir.GotoTable(2),), "default")
    pipeline = ir.Pipeline.build([*bypass, own, default], {})
    # a destination with rules of its own needs the bypasses in front of them; one without, only the default
    assert [f.owner for f in pipeline.lookup(0, {"outport": 5}, essential=True)[2]] == ["nd"] * 4 + ["sg", "default"]
    assert [f.owner for f in pipeline.lookup(0, {"outport": 6}, essential=True)[2]] == ["default"]
    assert [f.owner for f in pipeline.lookup(0, {"outport": 6})[2]] == ["nd"] * 4 + ["default"]


@settings(max_examples=300, deadline=None)
@given(tables_with_repeats(), st.lists(packets, min_size=1, max_size=6), st.lists(st.integers(0, 24), max_size=6),
       st.sampled_from([ir.Output(1), ir.Output(2), ir.Drop()]), st.data())
def test_essential_answers_follow_a_patch(pipeline, pkts, gone, action, data):
    """The essential candidates remembered by the index lists they came from (one computation for every
    destination whose lookup leaves the same lists) are forgotten when a patch changes those lists in place:
    before and after, the essential candidates decide each packet as the whole table does."""
    for pkt in pkts:
        pipeline.lookup(0, pkt, essential=True)
    removed = [pipeline.flows[i] for i in gone if i < len(pipeline.flows)]
    held = {f.key for f in pipeline.flows} - {f.key for f in removed}
    added = [f for f in (ir.Flow(0, data.draw(st.integers(0, 5)), data.draw(terms()), (action,), "new")
                         for _ in range(data.draw(st.integers(0, 4)))) if f.key not in held]
    patched = pipeline.patched({f.key: f for f in added}.values(), removed)
    for pkt in pkts:
        for p in (patched, pipeline, patched):
            every = next((f for f in p.table(0) if f.match.covers(pkt)), None)
            essential = next((f for f in p.lookup(0, pkt, essential=True)[2] if f.match.covers(pkt)), None)
            assert (every is None) == (essential is None)
            assert every is None or every.actions == essential.actions
