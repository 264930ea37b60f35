"""Ports on other chassis: tunnels for overlay networks, the uplink for provider networks (interpreter)."""

from __future__ import annotations

import dataclasses
import ipaddress

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.backends.ovs.backend import fixed_ports
from hwflow.conf import bridge_mappings
from hwflow.model.errors import ValidationError
from hwflow.model.objects import MAX_DATAPATH_KEY, Chassis, Network, Port
from hwflow.pipeline import interpreter, ir
from hwflow.pipeline.layout import Wiring
from hwflow.pipeline.topology import Topology

HERE = "h1"
VXLAN = Network(id="ov", name="ov", network_type="vxlan", vni=5001, unique_key=1)
GENEVE = Network(id="gn", name="gn", network_type="geneve", vni=5002, unique_key=2)
VLAN = Network(id="vl", name="vl", network_type="vlan", physical_network="physnet1", vlan_id=100, unique_key=3)
FLAT = Network(id="fl", name="fl", network_type="flat", physical_network="physnet1", unique_key=4)
NETWORKS = (VXLAN, GENEVE, VLAN, FLAT)
CHASSIS = {c.id: c for c in (Chassis(id="h1", tunnel_ip="192.0.2.1"), Chassis(id="h2", tunnel_ip="192.0.2.2"),
                             Chassis(id="h3", tunnel_ip="192.0.2.3"),
                             Chassis(id="h4", tunnel_ip="192.0.2.4", tunnel_types=["geneve"]))}
UPLINK = ir.physnet_port("physnet1")
BROADCAST = 0xFFFF_FFFF_FFFF


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def port(key: int, network: Network, chassis: str) -> Port:
    return Port(id=f"p{key}", name=f"p{key}", network_id=network.id, mac=f"fa:16:3e:00:00:{key:02x}",
                chassis=chassis, port_security=False, unique_key=key)


# Per network: two local ports, two on h2, one on h3, one on h4 (which terminates geneve only).
PORTS = {p.id: p for n, net in enumerate(NETWORKS)
         for p in (port(10 * n + 10, net, HERE), port(10 * n + 11, net, HERE), port(10 * n + 12, net, "h2"),
                   port(10 * n + 13, net, "h2"), port(10 * n + 14, net, "h3"), port(10 * n + 15, net, "h4"))}
LOCAL = {p.id for p in PORTS.values() if p.chassis == HERE}


def mac(key: int) -> int:
    return int(PORTS[f"p{key}"].mac.replace(":", ""), 16)


def pipeline(ports=PORTS, local=LOCAL, chassis=CHASSIS) -> ir.Pipeline:
    topo = Topology(HERE, {n.id: n for n in NETWORKS}, ports, local, others={"chassis": chassis})
    return Compiler.from_file(layout_path("")).compile(topo)


def send(pipe: ir.Pipeline, in_port: int, eth_dst: int, src_key: int = 10, **fields: int) -> interpreter.Verdict:
    packet = {"in_port": in_port, "eth_src": mac(src_key), "eth_dst": eth_dst, "eth_type": ir.ETH_TYPE_ARP,
              **fields}
    return interpreter.run(pipe, packet)


def tunnelled(verdict: interpreter.Verdict) -> list[tuple[int, int, int]]:
    """(tunnel port, VNI, remote IP) of each tunnelled copy."""
    return [(p, pkt["tun_id"], pkt["tun_dst"]) for p, pkt in verdict.outputs if p in ir.TUNNEL_PORTS.values()]


def test_remote_unicast_is_encapsulated_to_its_chassis_with_the_vni():
    pipe = pipeline()
    verdict = send(pipe, 10, mac(12))
    assert tunnelled(verdict) == [(ir.TUNNEL_PORTS["vxlan"], 5001, ip("192.0.2.2"))]
    assert verdict.ports == (ir.TUNNEL_PORTS["vxlan"],)
    geneve = send(pipe, 20, mac(25), src_key=20)  # h4 terminates geneve: reachable on a geneve network
    assert tunnelled(geneve) == [(ir.TUNNEL_PORTS["geneve"], 5002, ip("192.0.2.4"))]


def test_local_unicast_stays_local_and_untunnelled():
    verdict = send(pipeline(), 10, mac(11))
    assert verdict.ports == (11,)
    assert "tun_id" not in verdict.outputs[0][1]


def test_a_chassis_that_cannot_be_reached_gets_nothing():
    pipe = pipeline()
    assert send(pipe, 10, mac(15)).kind == "drop"  # h4 does not terminate vxlan
    unknown = pipeline(chassis={k: v for k, v in CHASSIS.items() if k != "h3"})
    assert send(unknown, 10, mac(14)).kind == "drop"


def test_flood_reaches_local_ports_and_each_remote_chassis_once():
    verdict = send(pipeline(), 10, BROADCAST)
    vxlan = ir.TUNNEL_PORTS["vxlan"]
    assert [p for p in verdict.ports if p < ir.PHYSNET_PORT_BASE] == [11]
    assert tunnelled(verdict) == [(vxlan, 5001, ip("192.0.2.2")), (vxlan, 5001, ip("192.0.2.3"))]


def test_flood_from_a_tunnel_goes_to_local_ports_only():
    vxlan = ir.TUNNEL_PORTS["vxlan"]
    verdict = send(pipeline(), vxlan, BROADCAST, src_key=12, tun_id=5001, tun_src=ip("192.0.2.2"))
    assert verdict.ports == (10, 11)


def test_decapsulated_unicast_is_delivered_by_its_vni():
    vxlan, geneve = ir.TUNNEL_PORTS["vxlan"], ir.TUNNEL_PORTS["geneve"]
    assert send(pipeline(), vxlan, mac(11), src_key=12, tun_id=5001).ports == (11,)
    assert send(pipeline(), geneve, mac(21), src_key=22, tun_id=5002).ports == (21,)


@pytest.mark.parametrize(("in_port", "vni"), [
    (ir.TUNNEL_PORTS["vxlan"], 999),  # a VNI no network has
    (ir.TUNNEL_PORTS["vxlan"], 5002),  # the geneve network's VNI on the vxlan port
    (ir.TUNNEL_PORTS["geneve"], 5001),
])
def test_decap_of_an_unknown_vni_drops(in_port, vni):
    assert send(pipeline(), in_port, BROADCAST, src_key=12, tun_id=vni).kind == "drop"


def test_decap_of_a_network_without_local_ports_drops():
    local = {p for p in LOCAL if PORTS[p].network_id != VXLAN.id}
    assert send(pipeline(local=local), ir.TUNNEL_PORTS["vxlan"], BROADCAST, src_key=12, tun_id=5001).kind == "drop"


def test_a_lone_host_accepts_no_tunnelled_traffic():
    alone = {k: p for k, p in PORTS.items() if p.chassis == HERE}
    pipe = pipeline(ports=alone)
    assert send(pipe, ir.TUNNEL_PORTS["vxlan"], mac(11), src_key=10, tun_id=5001).kind == "drop"
    assert not [f for f in pipe.flows for fm in f.match.fields if fm.field == "tun_id"]


def test_database_keys_stay_below_the_reserved_ports():
    with pytest.raises(ValidationError, match="unique_key"):
        Port(**{**PORTS["p10"].to_dict(), "unique_key": ir.PHYSNET_PORT_BASE}).validate()
    with pytest.raises(ValidationError, match="unique_key"):
        Network(**{**VXLAN.to_dict(), "unique_key": ir.PHYSNET_PORT_BASE}).validate()
    assert MAX_DATAPATH_KEY < ir.PHYSNET_PORT_BASE
    Port(**{**PORTS["p10"].to_dict(), "unique_key": MAX_DATAPATH_KEY}).validate()


def test_vlan_network_leaves_tagged_by_the_uplink():
    pipe = pipeline()
    ((out, pkt),) = send(pipe, 30, mac(33), src_key=30).outputs
    assert (out, pkt["vlan_vid"]) == (UPLINK, 100)
    flood = send(pipe, 30, BROADCAST, src_key=30)
    assert sorted(flood.ports) == [31, UPLINK]
    assert [pkt.get("vlan_vid") for _, pkt in flood.outputs] == [None, 100]  # the local copy is untagged
    assert not tunnelled(flood)


def test_vlan_frames_from_the_uplink_are_untagged_and_delivered():
    pipe = pipeline()
    ((out, pkt),) = send(pipe, UPLINK, mac(31), src_key=33, vlan_vid=100).outputs
    assert out == 31 and "vlan_vid" not in pkt
    flood = send(pipe, UPLINK, BROADCAST, src_key=33, vlan_vid=100)
    assert flood.ports == (30, 31)  # not back out of the uplink
    assert send(pipe, UPLINK, mac(31), src_key=33, vlan_vid=101).kind == "drop"


def test_flat_network_is_untagged_both_ways():
    pipe = pipeline()
    ((out, pkt),) = send(pipe, 40, mac(44), src_key=40).outputs
    assert out == UPLINK and "vlan_vid" not in pkt
    assert send(pipe, UPLINK, mac(41), src_key=44).ports == (41,)
    assert sorted(send(pipe, 40, BROADCAST, src_key=40).ports) == [41, UPLINK]


def test_a_frame_tagged_with_a_vlan_no_network_has_stays_out_of_the_flat_network():
    pipe = pipeline()
    for frame in (dict(dst=mac(41)), dict(dst=BROADCAST)):  # the flat network's port, and everyone
        assert send(pipe, UPLINK, frame["dst"], src_key=44, vlan_vid=300).kind == "drop"
        assert send(pipe, UPLINK, frame["dst"], src_key=44).ports  # untagged: the flat network's


def test_uplink_keys_are_stable_and_reserved():
    assert ir.physnet_port("physnet1") == UPLINK
    assert ir.physnet_port("physnet1") != ir.physnet_port("physnet2")
    keys = [ir.physnet_port(f"physnet{i}") for i in range(1000)]
    assert all(ir.PHYSNET_PORT_BASE <= k < ir.PHYSNET_PORT_BASE + ir.PHYSNET_PORT_SPAN for k in keys)
    assert max(ir.PHYSNET_PORT_BASE + ir.PHYSNET_PORT_SPAN, *keys) < min(ir.TUNNEL_PORTS.values())


# --- split horizon: what another chassis sends is for this host's ports only ------------------------------


def tables_walked(pipe: ir.Pipeline, verdict: interpreter.Verdict) -> list[str]:
    return [pipe.table_names[step.table] for step in verdict.steps]


@pytest.mark.parametrize(("in_port", "arrival", "dst"), [
    (ir.TUNNEL_PORTS["vxlan"], {"tun_id": 5001}, 12),  # to a port on h2: its sender reached it itself
    (UPLINK, {"vlan_vid": 100}, 33),  # to a port behind the uplink
])
def test_unicast_from_another_chassis_to_a_port_elsewhere_misses_in_l2(in_port, arrival, dst):
    pipe = pipeline()
    verdict = send(pipe, in_port, mac(dst), src_key=dst + 1, **arrival)
    assert verdict.kind == "drop"
    walked = tables_walked(pipe, verdict)
    assert walked[-1] == "l2.tunnel" and verdict.steps[-1].flow is None and "l2.lookup" not in walked


def test_a_port_moved_to_another_chassis_leaves_the_tunnels_lookup_and_comes_back():
    compiler = Compiler.from_file(layout_path(""))
    topo = Topology(HERE, {n.id: n for n in NETWORKS}, PORTS, set(LOCAL), others={"chassis": CHASSIS})
    compiler.compile(topo)
    here, moved = PORTS["p11"], Port(**{**PORTS["p11"].to_dict(), "chassis": "h3"})
    vxlan = ir.TUNNEL_PORTS["vxlan"]

    def from_tunnel() -> interpreter.Verdict:
        return send(compiler.pipeline(), vxlan, mac(11), src_key=12, tun_id=5001)

    assert from_tunnel().ports == (11,)
    compiler.update(topo, topo.apply("port", "p11", moved) + topo.set_local("p11", False))
    assert from_tunnel().kind == "drop" and tables_walked(compiler.pipeline(), from_tunnel())[-1] == "l2.tunnel"
    assert tunnelled(send(compiler.pipeline(), 10, mac(11))) == [(vxlan, 5001, ip("192.0.2.3"))]  # local: as ever
    compiler.update(topo, topo.apply("port", "p11", here) + topo.set_local("p11", True))
    assert from_tunnel().ports == (11,)


def test_unicast_to_a_port_elsewhere_skips_the_egress_stages_and_follows_the_port():
    """Its own host filters what it receives: L2 sends a packet for a port elsewhere straight to delivery, and
    one for a local port through the egress stages (what that port may receive); the port moving moves it."""
    compiler = Compiler.from_file(layout_path(""))
    topo = Topology(HERE, {n.id: n for n in NETWORKS}, PORTS, set(LOCAL), others={"chassis": CHASSIS})
    compiler.compile(topo)
    vxlan = ir.TUNNEL_PORTS["vxlan"]

    def walked_to(dst: int) -> list[str]:
        verdict = send(compiler.pipeline(), 10, mac(dst))
        return tables_walked(compiler.pipeline(), verdict)

    assert walked_to(12)[-2:] == ["l2.lookup", "output.deliver"]
    assert walked_to(11)[-3:] == ["l2.lookup", "sg_ingress.ingress", "output.deliver"]
    moved = Port(**{**PORTS["p11"].to_dict(), "chassis": "h3"})
    compiler.update(topo, topo.apply("port", "p11", moved) + topo.set_local("p11", False))
    assert walked_to(11)[-2:] == ["l2.lookup", "output.deliver"]
    assert tunnelled(send(compiler.pipeline(), 10, mac(11))) == [(vxlan, 5001, ip("192.0.2.3"))]
    compiler.update(topo, topo.apply("port", "p11", PORTS["p11"]) + topo.set_local("p11", True))
    assert walked_to(11)[-3:] == ["l2.lookup", "sg_ingress.ingress", "output.deliver"]
    assert send(compiler.pipeline(), 10, mac(11)).ports == (11,)


def whole_lookup_for_tunnels() -> Compiler:
    """The pipeline with the classifier's ``tunnel`` exit wired to L2's lookup of every destination."""
    wiring = Wiring.load(layout_path(""))
    wires = {**wiring.wires, ("classifier", "tunnel"): ("l2", "in")}
    return Compiler(list(Compiler.from_file(layout_path("")).apps.values()), dataclasses.replace(wiring, wires=wires))


arrivals = st.one_of(
    st.tuples(st.sampled_from(list(ir.TUNNEL_PORTS.values())), st.fixed_dictionaries(
        {"tun_id": st.sampled_from([5001, 5002, 999])})),
    st.tuples(st.just(UPLINK), st.one_of(st.just({}),
                                         st.fixed_dictionaries({"vlan_vid": st.sampled_from([100, 101])}))),
)


@settings(max_examples=200, deadline=None)
@given(st.sets(st.sampled_from(sorted(PORTS))), st.lists(st.tuples(
    arrivals, st.sampled_from([*(mac(p.unique_key) for p in PORTS.values()), BROADCAST, 0x3333_0000_0001]),
    st.sampled_from([ir.ETH_TYPE_ARP, ir.ETH_TYPE_IPV4])), min_size=1, max_size=20))
def test_from_another_chassis_the_local_lookup_delivers_what_the_whole_one_would(local, packets):
    """Split horizon changes where a packet for elsewhere drops (L2's miss, not a skipped hairpin), nothing
    delivered: whichever ports are local, every packet from a tunnel or the uplink gets the same verdict."""
    topo = Topology(HERE, {n.id: n for n in NETWORKS}, PORTS, local, others={"chassis": CHASSIS})
    split = Compiler.from_file(layout_path("")).compile(topo)
    whole = whole_lookup_for_tunnels().compile(topo)
    for (in_port, arrival), eth_dst, eth_type in packets:
        packet = {"in_port": in_port, "eth_src": mac(12), "eth_dst": eth_dst, "eth_type": eth_type, **arrival}
        ours, theirs = interpreter.run(split, packet), interpreter.run(whole, packet)
        assert (ours.outputs, ours.punt) == (theirs.outputs, theirs.punt)


# --- incremental == full, with remote ports and chassis coming and going ----------------------------------

CHASSIS_VERSIONS = [Chassis(id="h2", tunnel_ip="192.0.2.2"), Chassis(id="h2", tunnel_ip="192.0.2.22"),
                    Chassis(id="h2", tunnel_ip="192.0.2.2", tunnel_types=["geneve"]),
                    Chassis(id="h3", tunnel_ip="192.0.2.3"), Chassis(id="h3", tunnel_ip="192.0.2.33")]
ops = st.one_of(
    st.tuples(st.just("chassis"), st.sampled_from(CHASSIS_VERSIONS), st.booleans()),
    st.tuples(st.just("port"), st.integers(0, 5), st.tuples(st.sampled_from(NETWORKS),
                                                             st.sampled_from(["", HERE, "h2", "h3"]))),
    st.tuples(st.just("drop_port"), st.integers(0, 5), st.none()),
    st.tuples(st.just("local"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("network"), st.sampled_from(NETWORKS), st.integers(0, 1)),
)


def apply(topo: Topology, op: str, a, b) -> list:
    if op == "chassis":
        return topo.apply("chassis", a.id, a if b else None)
    if op == "port":
        net, chassis = b
        old = topo.ports.get(f"q{a}")
        if old is not None and old.network_id != net.id:  # network_id is immutable: delete first
            return topo.apply("port", old.id, None) + topo.apply("port", old.id, _q(a, net, chassis))
        return topo.apply("port", f"q{a}", _q(a, net, chassis))
    if op == "drop_port":
        return topo.apply("port", f"q{a}", None)
    if op == "local":
        return topo.set_local(f"q{a}", b)
    renumbered = Network(**{**a.to_dict(), "vni": a.vni + b if a.vni else 0,
                            "vlan_id": a.vlan_id + b if a.vlan_id else 0})
    return topo.apply("network", a.id, renumbered)


def _q(i: int, net: Network, chassis: str) -> Port:
    return Port(id=f"q{i}", name="", network_id=net.id, mac=f"fa:16:3e:00:01:{i:02x}", chassis=chassis,
                port_security=False, unique_key=200 + i)


@settings(max_examples=150, deadline=None)
@given(st.lists(ops, max_size=25))
def test_remote_ports_and_chassis_incremental_equals_full(operations):
    compiler = Compiler.from_file(layout_path(""))
    topo = Topology(HERE, {n.id: n for n in NETWORKS})
    compiler.compile(topo)
    for op, a, b in operations:
        compiler.update(topo, apply(topo, op, a, b))
        full = Compiler.from_file(layout_path("")).compile(
            Topology(HERE, topo.networks, topo.ports, topo.local_port_ids, others={"chassis": topo.of("chassis")}))
        assert set(compiler.pipeline().flows) == set(full.flows)


@st.composite
def worlds(draw):
    """A whole state, as the agent hands it over in one batch: ports, where they are bound, chassis."""
    chassis = {c.id: c for c in draw(st.lists(st.sampled_from(CHASSIS_VERSIONS), max_size=3))}
    ports = {}
    for i in draw(st.sets(st.integers(0, 5))):
        net, where = draw(st.tuples(st.sampled_from(NETWORKS), st.sampled_from(["", HERE, "h2", "h3"])))
        ports[f"q{i}"] = _q(i, net, where)
    local = draw(st.sets(st.sampled_from(sorted(ports)))) if ports else set()
    return ports, local, chassis


@settings(max_examples=150, deadline=None)
@given(st.lists(worlds(), min_size=1, max_size=6))
def test_batches_of_remote_ports_and_chassis_equal_a_full_compile(sequence):
    compiler = Compiler.from_file(layout_path(""))
    topo = Topology(HERE, {n.id: n for n in NETWORKS})
    compiler.compile(topo)
    for ports, local, chassis in sequence:
        compiler.update(topo, topo.update({"port": ports, "chassis": chassis}, local))
        full = Compiler.from_file(layout_path("")).compile(
            Topology(HERE, topo.networks, ports, local, others={"chassis": chassis}))
        assert set(compiler.pipeline().flows) == set(full.flows)


@pytest.mark.parametrize("network", [VXLAN, VLAN])
def test_a_network_opened_and_closed_by_several_local_ports_at_once(network):
    remote, first, second = _q(0, network, "h2"), _q(1, network, HERE), _q(2, network, HERE)
    chassis = {"h2": CHASSIS_VERSIONS[0]}
    states = [({"q0": remote}, set()), ({"q0": remote, "q1": first, "q2": second}, {"q1", "q2"}),
              ({"q0": remote}, set())]
    test_batches_of_remote_ports_and_chassis_equal_a_full_compile.hypothesis.inner_test(
        [(ports, local, chassis) for ports, local in states])


# --- configuration: the ports the agent keeps on the bridge -------------------------------------------------


def test_fixed_ports_are_flow_based_tunnels_and_the_mapped_uplinks():
    ports = fixed_ports("192.0.2.1", ["geneve", "vxlan", "vxlan"], {"vxlan": 4789, "geneve": 6081},
                        bridge_mappings(["physnet1:eth1", " physnet2 : eth2 "]))
    by_key = {p.key: p for p in ports}
    assert set(by_key) == {*ir.TUNNEL_PORTS.values(), UPLINK, ir.physnet_port("physnet2")}
    vxlan = by_key[ir.TUNNEL_PORTS["vxlan"]]
    assert (vxlan.type, dict(vxlan.options)) == (
        "vxlan", {"remote_ip": "flow", "key": "flow", "local_ip": "192.0.2.1", "dst_port": "4789"})
    assert (by_key[UPLINK].name, by_key[UPLINK].type, by_key[UPLINK].options) == ("eth1", "", ())
    assert by_key[ir.physnet_port("physnet2")].name == "eth2"


@pytest.mark.parametrize(("entries", "error"), [
    (["physnet1"], "not <physical_network>:<interface>"),
    (["physnet1:"], "not <physical_network>:<interface>"),
    (["physnet1:eth1", "physnet1:eth2"], "twice"),
])
def test_a_bad_bridge_mapping_is_named(entries, error):
    with pytest.raises(ValueError, match=error):
        bridge_mappings(entries)


def test_two_physical_networks_sharing_an_uplink_key_are_refused():
    assert ir.physnet_port("physnet22") == ir.physnet_port("physnet400")
    with pytest.raises(ValueError, match="rename one"):
        fixed_ports("192.0.2.1", [], {}, {"physnet22": "eth1", "physnet400": "eth2"})
