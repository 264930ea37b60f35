"""The ARP and neighbor discovery responder for ports' own addresses, checked with the reference interpreter."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nic_model import hw_then_sw
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from hwflow.apps.base import NA_OVERRIDE, NA_SOLICITED, ipv4_int, ipv6_int, mac_int
from hwflow.apps.compiler import Compiler, layout_path
from hwflow.backends.ovs import translate
from hwflow.model.objects import Network, Port
from hwflow.offload.capabilities import MASK_ANY, MASK_EXACT, Capabilities
from hwflow.offload.partition import PortOffload, partition
from hwflow.pipeline import interpreter, ir
from hwflow.pipeline.topology import Topology

VM1, VM2, REMOTE = "fa:16:3e:00:00:01", "fa:16:3e:00:00:02", "fa:16:3e:00:00:03"
FAR = ir.Owner("port", "far")
ASKER = {"in_port": 11, "eth_src": mac_int(VM1), "eth_dst": (1 << 48) - 1, "eth_type": ir.ETH_TYPE_ARP,
         "arp_op": 1, "arp_sha": mac_int(VM1), "arp_spa": ipv4_int("10.0.0.5"), "arp_tha": 0}


def topology() -> Topology:
    """vm1 and vm2 here on network a, a third port of a on another chassis; vm1 may send anything (no port
    security); vm1 and the third port have IPv6 addresses too."""
    nets = {"a": Network(id="a", name="a", vni=1, unique_key=1)}
    ports = {p.id: p for p in (
        Port(id="vm1", name="vm1", network_id="a", mac=VM1, ips=["10.0.0.5", "fd00::5"], unique_key=11,
             port_security=False),
        Port(id="vm2", name="vm2", network_id="a", mac=VM2, ips=["10.0.0.6"], unique_key=12),
        Port(id="far", name="far", network_id="a", mac=REMOTE, ips=["10.0.0.7", "fd00::7"], unique_key=13,
             chassis="other"))}
    return Topology("h", nets, ports, {"vm1", "vm2"})


def pipeline() -> ir.Pipeline:
    return Compiler.from_file(layout_path("")).compile(topology())


def ask(pl: ir.Pipeline, target: str, **fields: int) -> interpreter.Verdict:
    return interpreter.run(pl, {**ASKER, "arp_tpa": ipv4_int(target), **fields})


def test_a_remote_ports_address_is_answered_with_its_mac_back_out_of_the_asking_port():
    ((port, reply),) = ask(pipeline(), "10.0.0.7").outputs
    assert port == 11
    assert (reply["eth_src"], reply["eth_dst"], reply["arp_op"]) == (mac_int(REMOTE), mac_int(VM1), 2)
    assert (reply["arp_sha"], reply["arp_spa"]) == (mac_int(REMOTE), ipv4_int("10.0.0.7"))
    assert (reply["arp_tha"], reply["arp_tpa"]) == (mac_int(VM1), ipv4_int("10.0.0.5"))


def test_a_local_ports_address_is_answered_and_never_reaches_it():
    out = ask(pipeline(), "10.0.0.6")
    assert [p for p, _ in out.outputs] == [11]
    assert out.outputs[0][1]["arp_sha"] == mac_int(VM2)


def test_gratuitous_arp_and_the_owners_own_probe_are_flooded_not_answered():
    pl = pipeline()
    gratuitous = ask(pl, "10.0.0.5")  # vm1 announcing 10.0.0.5
    assert sorted(p for p, _ in gratuitous.outputs) == [12]
    assert all(pkt["arp_op"] == 1 for _, pkt in gratuitous.outputs)
    probe = ask(pl, "10.0.0.5", arp_spa=0)  # RFC 5227: vm1 checks nobody else holds its address
    assert sorted(p for p, _ in probe.outputs) == [12]
    conflict = ask(pl, "10.0.0.6", in_port=11, arp_spa=0)  # vm1 probing vm2's address: it is taken
    assert [(p, pkt["arp_op"]) for p, pkt in conflict.outputs] == [(11, 2)]


def test_an_unknown_address_is_flooded_as_before():
    out = ask(pipeline(), "10.0.0.99")
    assert sorted(p for p, _ in out.outputs) == [12]
    assert all(pkt["arp_op"] == 1 and pkt["arp_tpa"] == ipv4_int("10.0.0.99") for _, pkt in out.outputs)


def test_a_port_down_is_not_answered_for_and_is_again_once_up():
    """vm2 (here) and the far port administratively down: requests for their addresses, IPv4 and IPv6, are not
    answered but flood, and with every other port of the network down they reach nobody; up, they are answered."""
    topo = topology()
    for pid in ("vm2", "far"):
        topo.ports[pid] = dataclasses.replace(topo.ports[pid], admin_state_up=False)
    down = Compiler.from_file(layout_path("")).compile(topo)
    assert ask(down, "10.0.0.6").outputs == ask(down, "10.0.0.7").outputs == solicit(down, "fd00::7").outputs == ()
    up = pipeline()
    assert [(p, pkt["arp_op"]) for p, pkt in ask(up, "10.0.0.7").outputs] == [(11, 2)]
    assert [(p, pkt["arp_op"]) for p, pkt in ask(up, "10.0.0.6").outputs] == [(11, 2)]
    assert [(p, pkt["icmp_type"]) for p, pkt in solicit(up, "fd00::7").outputs] == [(11, 136)]


def test_answers_translate_to_openflow_arp_rewrites_back_out_of_in_port():
    pl = pipeline()
    (table,) = [t for t, name in pl.table_names.items() if name == "responder.arp"]
    (answer,) = [f for f in pl.flows if f.table == table and f.owner == FAR and f.priority == 100
                 and f.match.get("eth_type").value == ir.ETH_TYPE_ARP]
    mod = translate.to_flow_mod(answer, {11: 1, 12: 2})
    assert (mod.match["eth_type"], mod.match["arp_op"], mod.match["arp_tpa"]) == (0x0806, 1, "10.0.0.7")
    actions = [a for i in mod.instructions for a in getattr(i, "actions", [])]
    assert {a.key: a.value for a in actions if isinstance(a, parser.OFPActionSetField)} == {
        "eth_src": REMOTE, "arp_op": 2, "arp_sha": REMOTE, "arp_spa": "10.0.0.7"}
    assert actions[-1].port == ofp.OFPP_IN_PORT


# --- IPv6 neighbor discovery --------------------------------------------------------------------------

VM2_LINK_LOCAL = ipv6_int("fe80::f816:3eff:fe00:2")  # what vm2's port security lets it send IPv6 from


def solicit(pl: ir.Pipeline, target: str, in_port: int = 11, src: int = ipv6_int("fd00::5"), mac: str = VM1,
            **fields: int) -> interpreter.Verdict:
    """A multicast NS (to the target's solicited-node group) carrying the asker's link-layer address."""
    group = ipv6_int("ff02::1:ff00:0") | ipv6_int(target) & 0xFFFFFF
    multicast_mac = 0x3333_0000_0000 | group & 0xFFFF_FFFF
    return interpreter.run(pl, {"in_port": in_port, "eth_src": mac_int(mac), "eth_dst": multicast_mac,
                                "eth_type": ir.ETH_TYPE_IPV6, "ipv6_src": src, "ipv6_dst": group, "ip_proto": 58,
                                "ip_ttl": 255, "icmp_type": 135, "icmp_code": 0, "nd_reserved": 0,
                                "nd_target": ipv6_int(target), "nd_options_type": 1, "nd_sll": mac_int(mac),
                                **fields})


def test_a_solicitation_is_advertised_back_with_the_targets_mac_in_a_target_option():
    ((port, na),) = solicit(pipeline(), "fd00::7").outputs
    assert port == 11
    assert (na["eth_src"], na["eth_dst"]) == (mac_int(REMOTE), mac_int(VM1))
    assert (na["ipv6_src"], na["ipv6_dst"], na["ip_ttl"]) == (ipv6_int("fd00::7"), ipv6_int("fd00::5"), 255)
    assert (na["icmp_type"], na["icmp_code"], na["nd_target"]) == (136, 0, ipv6_int("fd00::7"))
    assert na["nd_reserved"] == NA_SOLICITED | NA_OVERRIDE == 0x6000_0000
    assert (na["nd_options_type"], na["nd_tll"]) == (2, mac_int(REMOTE)) and "nd_sll" not in na


def test_a_local_ports_ipv6_address_is_answered_to_another_port_and_never_reaches_the_owner():
    out = solicit(pipeline(), "fd00::5", in_port=12, src=VM2_LINK_LOCAL, mac=VM2)
    assert [(port, pkt["icmp_type"], pkt["nd_tll"], pkt["ipv6_dst"]) for port, pkt in out.outputs] == [
        (12, 136, mac_int(VM1), VM2_LINK_LOCAL)]


def test_duplicate_address_detection_and_the_owners_own_solicitation_are_flooded_not_answered():
    pl = pipeline()
    dad = solicit(pl, "fd00::7", src=0, nd_options_type=0, nd_sll=0)  # from ::, without the option
    assert [(port, pkt["icmp_type"]) for port, pkt in dad.outputs] == [(12, 135)]
    own = solicit(pl, "fd00::5")  # vm1 asking for its own address
    assert [(port, pkt["icmp_type"]) for port, pkt in own.outputs] == [(12, 135)]
    dad_of_a_local_address = solicit(pl, "fd00::5", in_port=12, src=0, mac=VM2, nd_options_type=0, nd_sll=0)
    assert [(port, pkt["icmp_type"]) for port, pkt in dad_of_a_local_address.outputs] == [(11, 135)]


def test_a_solicitation_for_an_address_nobody_holds_is_flooded_as_before():
    out = solicit(pipeline(), "fd00::99")
    assert [(port, pkt["icmp_type"], pkt["nd_sll"]) for port, pkt in out.outputs] == [(12, 135, mac_int(VM1))]


def test_a_port_without_ipv6_has_no_neighbor_discovery_flows_and_its_arp_flows_unchanged():
    pl = pipeline()
    names = {name: t for t, name in pl.table_names.items()}
    vm2 = [f for f in pl.flows
           if f.owner == ("port", "vm2") and f.table in (names["responder.arp"], names["responder.na"])]
    assert {f.match.get("eth_type").value for f in vm2} == {ir.ETH_TYPE_ARP} and len(vm2) == 3
    na = [f for f in pl.flows if f.table == names["responder.na"]]
    assert sorted(f.owner for f in na) == [FAR, ir.Owner("port", "vm1")]


def test_nd_answers_translate_to_an_openflow_advert_finished_in_the_next_table():
    pl = pipeline()
    names = {name: t for t, name in pl.table_names.items()}
    ask, finish = (next(f for f in pl.flows if f.table == names[t] and f.owner == FAR and f.priority == 100
                        and f.match.get("eth_type").value == ir.ETH_TYPE_IPV6)
                   for t in ("responder.arp", "responder.na"))
    first, second = (translate.to_flow_mod(f, {11: 1, 12: 2}) for f in (ask, finish))
    assert (first.match["icmpv6_type"], first.match["ipv6_nd_target"]) == (135, "fd00::7")
    set_fields = {a.key: a.value for i in first.instructions for a in getattr(i, "actions", [])
                  if isinstance(a, parser.OFPActionSetField)}
    assert set_fields == {"eth_src": REMOTE, "ipv6_src": "fd00::7", "icmpv6_type": 136, "nd_reserved": 0x6000_0000,
                          "nd_options_type": 2}
    assert first.instructions[-1].table_id == names["responder.na"]
    assert (second.match["icmpv6_type"], second.match["ipv6_nd_target"]) == (136, "fd00::7")
    (apply,) = second.instructions
    assert [(a.key, a.value) for a in apply.actions[:1]] == [("ipv6_nd_tll", REMOTE)]
    assert apply.actions[-1].port == ofp.OFPP_IN_PORT


PORTS = [Port(id=f"p{i}", name=f"p{i}", network_id=f"n{i % 2}", mac=f"fa:16:3e:00:00:{i + 1:02x}",
              ips=[f"10.0.{i % 2}.{i + 5}"], unique_key=100 + i) for i in range(5)]
NETS = [Network(id=f"n{i}", name=f"n{i}", vni=10 + i, unique_key=k) for i in range(2) for k in (i + 1, i + 7)]


@st.composite
def states(draw):
    """Which networks exist (possibly renumbered), which ports exist (possibly readdressed), which are local."""
    nets = {n.id: n for n in draw(st.lists(st.sampled_from(NETS), max_size=3))}
    ports = {}
    for port in draw(st.lists(st.sampled_from(PORTS), unique_by=lambda p: p.id)):
        extra = draw(st.sampled_from([[], ["10.0.9.9"], ["fd00::1"]]))
        ports[port.id] = dataclasses.replace(port, ips=port.ips + extra)
    local = draw(st.sets(st.sampled_from(sorted(ports)))) if ports else set()
    return nets, ports, local


@settings(max_examples=100, deadline=None)
@given(st.lists(states(), min_size=1, max_size=6))
def test_incremental_equals_full(sequence):
    compiler = Compiler.from_file(layout_path(""))
    topo = Topology("h")
    compiler.compile(topo)
    for nets, ports, local in sequence:
        compiler.update(topo, topo.update({"network": nets, "port": ports}, local))
        full = Compiler.from_file(layout_path("")).compile(Topology("h", nets, ports, local))
        assert set(compiler.pipeline().flows) == set(full.flows)


# --- the IPv6 neighbor discovery fields (for the NA responder) in OpenFlow --------------------------

ND = {"eth_type": ir.ETH_TYPE_IPV6, "ip_proto": 58}


def test_nd_fields_translate_to_their_oxm_fields_behind_the_icmpv6_type():
    solicit = ir.Flow(7, 100, ir.Match.of(**ND, icmp_type=135, nd_target=0xFD00 << 112 | 7),
                      (ir.SetField("nd_sll", mac_int(REMOTE)), ir.OutputInPort()), "port:far")
    mod = translate.to_flow_mod(solicit, {})
    assert (mod.match["icmpv6_type"], mod.match["ipv6_nd_target"]) == (135, "fd00::7")
    actions = [a for i in mod.instructions for a in getattr(i, "actions", [])]
    assert (actions[0].key, actions[0].value) == ("ipv6_nd_sll", REMOTE)


def test_nd_fields_without_their_icmpv6_type_are_refused_naming_it():
    unsolicited = ir.Flow(7, 100, ir.Match.of(**ND, icmp_type=135), (ir.SetField("nd_tll", 1),), "port:far")
    with pytest.raises(translate.TranslationError, match="ipv6_nd_tll needs an exact match on icmp_type=136"):
        translate.to_flow_mod(unsolicited, {})


def test_a_path_matching_or_rewriting_nd_fields_stays_in_software_and_gives_the_same_verdicts():
    target = 0xFD00 << 112 | 7
    asker = {"in_port": 1, "eth_src": mac_int(VM1), **ND, "icmp_code": 0, "nd_options_type": 1, "nd_sll": mac_int(VM1)}
    flows = [ir.Flow(0, 10, ir.Match.of(**ND, icmp_type=135, nd_target=target),
                     (ir.SetField("nd_options_type", 2), ir.SetField("nd_tll", mac_int(REMOTE)), ir.Output(1)), "nd"),
             ir.Flow(0, 5, ir.Match.of(eth_dst=mac_int(VM2)), (ir.Output(2),), "l2")]
    pipeline = ir.Pipeline.build(flows, {})
    caps = Capabilities(match_fields={"eth_dst": MASK_ANY, "eth_type": MASK_EXACT, "ip_proto": MASK_EXACT,
                                      "icmp_type": MASK_EXACT}, actions=frozenset({"redirect", "drop"}),
                        max_rules=100)
    plan = partition(pipeline, {p: PortOffload(p, "sw0", caps) for p in (1, 2)}, (ir.ETH_TYPE_IPV6,),
                     unicast_only=False)
    assert "the NIC cannot match nd_target (with any mask)" in {s.reason for s in plan.software}
    for pkt in ({**asker, "icmp_type": 135, "nd_target": target, "eth_dst": mac_int(VM2)},
                {**asker, "icmp_type": 128, "eth_dst": mac_int(VM2)}):
        assert hw_then_sw(pipeline, plan, pkt, interpreter.ConnTracker()) == interpreter.run(pipeline, pkt).outputs
    answer = interpreter.run(pipeline, {**asker, "in_port": 2, "icmp_type": 135, "nd_target": target}).outputs
    assert [(port, pkt["nd_tll"]) for port, pkt in answer] == [(1, mac_int(REMOTE))]
