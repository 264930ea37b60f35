"""The interpreter's NAT, as OVS does it: ct(commit, nat(src|dst=...)) sets a translation up, ct(nat) applies it."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwflow.pipeline import interpreter, ir

INSIDE, OUTSIDE = 1, 2
VM, FIP, REMOTE = 0x0A000005, 0xC6336405, 0x08080808
CHECKED = 1  # the table ct(table=...) recirculates into: outputs by direction, ct_state copied into icmp_code


def gateway(kind: str) -> ir.Pipeline:
    """Inside -> outside SNATs to FIP (or outside -> FIP DNATs to VM); the other side takes ct(nat) only."""
    setup = ir.Nat("snat", FIP) if kind == "snat" else ir.Nat("dnat", VM)
    origin = INSIDE if kind == "snat" else OUTSIDE
    seen = ir.Move("ct_state", "icmp_code")
    flows = [
        ir.Flow(0, 10, ir.Match.of(in_port=origin), (ir.Conntrack(7, commit=True, table=CHECKED, nat=setup),), "setup"),
        ir.Flow(0, 5, ir.Match.of(), (ir.Conntrack(7, table=CHECKED, nat=ir.Nat()),), "nat"),
        ir.Flow(CHECKED, 10, ir.Match.of(in_port=INSIDE), (seen, ir.Output(OUTSIDE)), "out"),
        ir.Flow(CHECKED, 10, ir.Match.of(in_port=OUTSIDE), (seen, ir.Output(INSIDE)), "in"),
    ]
    return ir.Pipeline.build(flows, {})


def packet(in_port: int, src: int, dst: int, **more: int) -> dict[str, int]:
    return {"in_port": in_port, "eth_type": ir.ETH_TYPE_IPV4, "ipv4_src": src, "ipv4_dst": dst, "ip_proto": 1,
            **more}


def sent(verdict: interpreter.Verdict) -> tuple[int, int]:
    ((_, pkt),) = verdict.outputs
    return pkt["ipv4_src"], pkt["ipv4_dst"]


def test_snat_rewrites_the_source_and_the_reply_is_un_natted_back():
    pipeline, ct = gateway("snat"), interpreter.ConnTracker()
    assert sent(interpreter.run(pipeline, packet(INSIDE, VM, REMOTE), ct)) == (FIP, REMOTE)
    assert sent(interpreter.run(pipeline, packet(OUTSIDE, REMOTE, FIP), ct)) == (REMOTE, VM)
    assert sent(interpreter.run(pipeline, packet(INSIDE, VM, REMOTE), ct)) == (FIP, REMOTE)  # still the same one


def test_dnat_rewrites_the_destination_and_the_reply_leaves_from_the_public_address():
    pipeline, ct = gateway("dnat"), interpreter.ConnTracker()
    assert sent(interpreter.run(pipeline, packet(OUTSIDE, REMOTE, FIP), ct)) == (REMOTE, VM)
    assert sent(interpreter.run(pipeline, packet(INSIDE, VM, REMOTE), ct)) == (FIP, REMOTE)


def test_ct_state_carries_direction_and_the_nat_bits_ovs_sets():
    """First packet: +new+snat; reply: +est+rpl and +dnat (un-SNAT rewrites its destination), as the kernel does."""
    pipeline, ct = gateway("snat"), interpreter.ConnTracker()
    assert ct_state(interpreter.run(pipeline, packet(INSIDE, VM, REMOTE), ct)) == (
        ir.CT_TRK | ir.CT_NEW | ir.CT_SNAT)
    assert ct_state(interpreter.run(pipeline, packet(OUTSIDE, REMOTE, FIP), ct)) == (
        ir.CT_TRK | ir.CT_EST | ir.CT_RPL | ir.CT_DNAT)
    assert ct_state(interpreter.run(pipeline, packet(INSIDE, VM, REMOTE), ct)) == (
        ir.CT_TRK | ir.CT_EST | ir.CT_SNAT)


def ct_state(verdict: interpreter.Verdict) -> int:
    ((_, pkt),) = verdict.outputs
    return pkt["icmp_code"]  # where the test pipeline copied it


def test_a_bare_nat_leaves_traffic_of_no_connection_alone():
    pipeline, ct = gateway("snat"), interpreter.ConnTracker()
    verdict = interpreter.run(pipeline, packet(OUTSIDE, REMOTE, FIP), ct)
    assert sent(verdict) == (REMOTE, FIP) and ct_state(verdict) == ir.CT_TRK | ir.CT_NEW


def test_zones_keep_translations_apart():
    ct = interpreter.ConnTracker()
    ct.commit(7, packet(INSIDE, VM, REMOTE), ir.Nat("snat", FIP))
    reply = packet(OUTSIDE, REMOTE, FIP)
    assert ct.translate(8, reply, ir.Nat()) == 0 and reply["ipv4_dst"] == FIP
    assert ct.translate(7, reply, ir.Nat()) == ir.CT_DNAT and reply["ipv4_dst"] == VM


def test_nat_arguments_do_not_change_a_committed_connection():
    ct = interpreter.ConnTracker()
    ct.commit(7, packet(INSIDE, VM, REMOTE), ir.Nat("snat", FIP))
    again = packet(INSIDE, VM, REMOTE)
    ct.translate(7, again, ir.Nat("snat", 0x01020304))
    assert again["ipv4_src"] == FIP


def test_a_translation_that_clashes_with_a_reply_tuple_is_refused_not_guessed():
    ct = interpreter.ConnTracker()
    ct.commit(7, packet(INSIDE, VM, REMOTE), ir.Nat("snat", FIP))
    with pytest.raises(RuntimeError, match="another source port"):
        ct.commit(7, packet(INSIDE, VM + 1, REMOTE), ir.Nat("snat", FIP))


@given(st.dictionaries(st.integers(VM, VM + 50), st.integers(1024, 65535), min_size=1, max_size=8)
       .filter(lambda d: len(set(d.values())) == len(d)))
def test_every_client_gets_its_own_replies_back(clients):
    """TCP clients with distinct source ports all leave as FIP:port and each reply finds its way to its client."""
    pipeline, ct = gateway("snat"), interpreter.ConnTracker()
    for src, sport in clients.items():
        out = interpreter.run(pipeline, packet(INSIDE, src, REMOTE, ip_proto=6, tcp_src=sport, tcp_dst=443), ct)
        assert sent(out) == (FIP, REMOTE)
    for src, sport in clients.items():
        back = interpreter.run(pipeline, packet(OUTSIDE, REMOTE, FIP, ip_proto=6, tcp_src=443, tcp_dst=sport), ct)
        assert sent(back) == (REMOTE, src)


def test_trace_shows_the_nat_as_ovs_spells_it():
    from hwflow.pipeline.trace import format_action

    pipeline = ir.Pipeline.build([], {1: "l3.next_hop"})
    forms = [format_action(ir.Conntrack(7, commit=True, table=1, nat=nat), {}, pipeline)
             for nat in (ir.Nat("snat", FIP), ir.Nat("dnat", VM), ir.Nat())]
    assert forms == ["ct(zone=7,commit,nat(src=198.51.100.5),table=l3.next_hop)",
                     "ct(zone=7,commit,nat(dst=10.0.0.5),table=l3.next_hop)", "ct(zone=7,commit,nat,table=l3.next_hop)"]
