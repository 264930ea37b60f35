"""The reference interpreter's semantics, one construct at a time."""

from __future__ import annotations

import pytest

from hwflow.pipeline import interpreter, ir

A, B = 1, 2
REQ = {"eth_type": ir.ETH_TYPE_IPV4, "ipv4_src": 10, "ipv4_dst": 20, "ip_proto": 6, "tcp_src": 1000, "tcp_dst": 22}
REPLY = {**REQ, "ipv4_src": 20, "ipv4_dst": 10, "tcp_src": 22, "tcp_dst": 1000}


def stateful_firewall() -> ir.Pipeline:
    """A allows new TCP/22 towards B and commits it; B's side only lets established replies back."""
    est = ir.Match.of(ct_state=(ir.CT_TRK | ir.CT_EST, ir.CT_TRK | ir.CT_EST))
    flows = [
        ir.Flow(0, 10, ir.Match.of(), (ir.Conntrack(zone=5, table=1),), "ct"),
        ir.Flow(1, 20, ir.Match.of(in_port=A, tcp_dst=22, ct_state=(ir.CT_TRK | ir.CT_NEW, 0xFF)),
                (ir.Conntrack(zone=5, commit=True), ir.Output(B)), "allow-ssh"),
        ir.Flow(1, 10, ir.Match((*est.fields, ir.FieldMatch("in_port", A, ir.full_mask("in_port")))),
                (ir.Output(B),), "est-a"),
        ir.Flow(1, 10, ir.Match((*est.fields, ir.FieldMatch("in_port", B, ir.full_mask("in_port")))),
                (ir.Output(A),), "est-b"),
    ]
    return ir.Pipeline.build(flows, {})


def test_conntrack_lets_replies_of_committed_connections_through():
    pipeline, ct = stateful_firewall(), interpreter.ConnTracker()
    assert interpreter.run(pipeline, {"in_port": B, **REPLY}, ct).kind == "drop"  # nothing committed yet
    first = interpreter.run(pipeline, {"in_port": A, **REQ}, ct)
    assert first.ports == (B,) and first.steps[-1].flow.owner == "allow-ssh"
    reply = interpreter.run(pipeline, {"in_port": B, **REPLY}, ct)
    assert reply.ports == (A,) and reply.steps[-1].flow.owner == "est-b"
    again = interpreter.run(pipeline, {"in_port": A, **REQ}, ct)
    assert again.steps[-1].flow.owner == "est-a"
    other = interpreter.run(pipeline, {"in_port": A, **REQ, "tcp_dst": 80}, ct)
    assert other.kind == "drop"


def test_zones_keep_connections_apart():
    ct = interpreter.ConnTracker()
    ct.commit(1, REQ)
    assert ct.state(1, REPLY) == ir.CT_TRK | ir.CT_EST | ir.CT_RPL
    assert ct.state(2, REPLY) == ir.CT_TRK | ir.CT_NEW


def test_internal_fields_never_leave_and_vlan_and_moves_apply():
    flows = [ir.Flow(0, 1, ir.Match.of(), (ir.SetField("reg3", 7), ir.Move("eth_src", "eth_dst"), ir.PushVlan(42),
                                           ir.Output(B), ir.PopVlan(), ir.Output(3)), "x")]
    out = interpreter.run(ir.Pipeline.build(flows, {}), {"in_port": A, "eth_src": 5, "eth_dst": 6, "vlan_vid": 9})
    (port_b, pkt_b), (port_3, pkt_3) = out.outputs
    assert (port_b, pkt_b["vlan_vid"], pkt_b["eth_dst"]) == (B, 42, 5)
    assert port_3 == 3 and "vlan_vid" not in pkt_3
    assert not set(pkt_b) & ir.INTERNAL_FIELDS


def test_goto_backwards_is_a_pipeline_bug():
    flows = [ir.Flow(1, 1, ir.Match.of(), (ir.GotoTable(0),), "x"),
             ir.Flow(0, 1, ir.Match.of(), (ir.GotoTable(1),), "y")]
    with pytest.raises(RuntimeError, match="backwards"):
        interpreter.run(ir.Pipeline.build(flows, {}), {"in_port": A})


def test_bad_actions_are_refused_when_built():
    with pytest.raises(ValueError, match="do not fit"):
        ir.Move("metadata", "reg0")
    with pytest.raises(ValueError, match="VLAN id"):
        ir.PushVlan(5000)


def test_an_nd_option_leaves_named_by_its_final_type_as_ovs_writes_it():
    """OVS retypes the option before it writes an address into it (what a copy sends is what it held since the
    copy before): an nd_sll written with a retype to 2 is lost, an nd_tll written lands; a message without the
    option gets none."""
    ns = {"in_port": A, "eth_type": ir.ETH_TYPE_IPV6, "ip_proto": 58, "icmp_type": 135, "nd_options_type": 1,
          "nd_sll": 0x111}
    flows = [ir.Flow(0, 1, ir.Match.of(), (
        ir.Output(B), ir.SetField("nd_sll", 0x333), ir.Output(3), ir.SetField("nd_options_type", 2), ir.Output(4),
        ir.SetField("nd_tll", 0x222), ir.Output(5), ir.SetField("nd_sll", 0x444), ir.SetField("nd_options_type", 1),
        ir.SetField("nd_tll", 0x555), ir.Output(6)), "x")]
    pipeline = ir.Pipeline.build(flows, {})
    options = [{f: pkt.get(f) for f in ("nd_options_type", "nd_sll", "nd_tll")}
               for _, pkt in interpreter.run(pipeline, ns).outputs]
    assert options == [{"nd_options_type": 1, "nd_sll": 0x111, "nd_tll": None},
                       {"nd_options_type": 1, "nd_sll": 0x333, "nd_tll": None},
                       {"nd_options_type": 2, "nd_sll": None, "nd_tll": 0x333},
                       {"nd_options_type": 2, "nd_sll": None, "nd_tll": 0x222},
                       {"nd_options_type": 1, "nd_sll": 0x444, "nd_tll": None}]  # the tll written is lost
    dad = {k: v for k, v in ns.items() if k not in ("nd_options_type", "nd_sll")}
    assert all("nd_sll" not in pkt and "nd_tll" not in pkt for _, pkt in interpreter.run(pipeline, dad).outputs)
