"""Distributed routing, checked with the reference interpreter (OVS translation of its actions comes next)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hwflow.apps.compiler import Compiler, load_apps
from hwflow.model.objects import Network, Port, Router, RouterPort, Subnet
from hwflow.pipeline import interpreter, ir
from hwflow.pipeline.layout import Wiring
from hwflow.pipeline.topology import Topology

WIRING = Wiring.parse({"start": "classifier.in", "wires": {"classifier.out": "port_security.in",
                                                           "port_security.out": "l3.in", "l3.out": "l2.in",
                                                           "l2.out": "output.in"}})
RA, RB = "fa:16:3e:aa:00:01", "fa:16:3e:bb:00:01"


def mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def ip(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return a << 24 | b << 16 | c << 8 | d


def compiler() -> Compiler:
    return Compiler(load_apps(["classifier", "port_security", "l3", "l2", "output"]), WIRING)


def topology(routes=()) -> Topology:
    nets = {n.id: n for n in (Network(id="a", name="a", vni=1, unique_key=1),
                              Network(id="b", name="b", vni=2, unique_key=2))}
    subnets = {s.id: s for s in (Subnet(id="sa", name="sa", network_id="a", cidr="10.0.0.0/24", gateway_ip="10.0.0.1"),
                                 Subnet(id="sb", name="sb", network_id="b", cidr="10.0.1.0/24",
                                        gateway_ip="10.0.1.1"))}
    ports = {p.id: p for p in (
        Port(id="vm1", name="vm1", network_id="a", mac="fa:16:3e:00:00:01", ips=["10.0.0.5"], unique_key=11),
        Port(id="vm2", name="vm2", network_id="b", mac="fa:16:3e:00:00:02", ips=["10.0.1.5"], unique_key=12),
        Port(id="gw", name="gw", network_id="b", mac="fa:16:3e:00:00:03", ips=["10.0.1.254"], unique_key=13))}
    router = Router(id="r", name="r", routes=list(routes))
    rps = {rp.id: rp for rp in (
        RouterPort(id="rpa", name="rpa", router_id="r", network_id="a", subnet_id="sa", mac=RA, ip="10.0.0.1"),
        RouterPort(id="rpb", name="rpb", router_id="r", network_id="b", subnet_id="sb", mac=RB, ip="10.0.1.1"))}
    return Topology("h", nets, ports, set(ports),
                    others={"subnet": subnets, "router": {"r": router}, "router_port": rps})


def from_vm1(pipeline: ir.Pipeline, **fields: int) -> interpreter.Verdict:
    pkt = {"in_port": 11, "eth_src": mac("fa:16:3e:00:00:01"), "eth_type": ir.ETH_TYPE_IPV4,
           "ipv4_src": ip("10.0.0.5"), "ip_proto": 1, "ip_ttl": 64, **fields}
    return interpreter.run(pipeline, pkt)


def test_routed_packet_leaves_on_the_other_subnet_rewritten():
    pipeline = compiler().compile(topology())
    out = from_vm1(pipeline, eth_dst=mac(RA), ipv4_dst=ip("10.0.1.5"))
    ((port, pkt),) = out.outputs
    assert port == 12
    assert (pkt["eth_src"], pkt["eth_dst"], pkt["ip_ttl"]) == (mac(RB), mac("fa:16:3e:00:00:02"), 63)
    names = [pipeline.table_names[s.table] for s in out.steps]
    assert names[-2:] == ["l2.lookup", "output.deliver"] and "l3.route" in names


def test_a_ttl_of_one_dies_at_the_router_and_unrouted_is_dropped():
    pipeline = compiler().compile(topology())
    assert from_vm1(pipeline, eth_dst=mac(RA), ipv4_dst=ip("10.0.1.5"), ip_ttl=1).kind == "drop"
    assert from_vm1(pipeline, eth_dst=mac(RA), ipv4_dst=ip("192.0.2.1")).kind == "drop"
    assert from_vm1(pipeline, eth_dst=mac(RA), ipv4_dst=ip("10.0.1.77")).kind == "drop"  # no such next hop


def test_static_route_goes_through_its_nexthop():
    pipeline = compiler().compile(topology([{"destination": "192.0.2.0/24", "nexthop": "10.0.1.254"}]))
    ((port, pkt),) = from_vm1(pipeline, eth_dst=mac(RA), ipv4_dst=ip("192.0.2.9")).outputs
    assert port == 13 and pkt["eth_dst"] == mac("fa:16:3e:00:00:03") and pkt["ipv4_dst"] == ip("192.0.2.9")


def test_arp_for_the_gateway_is_answered_back_out_of_the_asking_port():
    pipeline = compiler().compile(topology())
    out = interpreter.run(pipeline, {"in_port": 11, "eth_src": mac("fa:16:3e:00:00:01"), "eth_dst": (1 << 48) - 1,
                                     "eth_type": ir.ETH_TYPE_ARP, "arp_op": 1, "arp_spa": ip("10.0.0.5"),
                                     "arp_sha": mac("fa:16:3e:00:00:01"), "arp_tpa": ip("10.0.0.1"), "arp_tha": 0})
    ((port, reply),) = out.outputs
    assert port == 11
    assert reply["arp_op"] == 2 and reply["arp_sha"] == mac(RA) and reply["arp_spa"] == ip("10.0.0.1")
    assert reply["arp_tha"] == mac("fa:16:3e:00:00:01") and reply["arp_tpa"] == ip("10.0.0.5")
    assert reply["eth_dst"] == mac("fa:16:3e:00:00:01") and reply["eth_src"] == mac(RA)


def test_same_network_traffic_is_still_switched():
    pipeline = compiler().compile(topology())
    out = from_vm1(pipeline, eth_dst=mac("fa:16:3e:00:00:09"), ipv4_dst=ip("10.0.0.9"))
    assert out.kind == "drop" and pipeline.table_names[out.steps[-1].table] == "l2.lookup"


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(["drop-rpb", "drop-sb", "renumber-b", "add-route", "drop-vm2"]), max_size=4))
def test_incremental_routing_equals_a_full_compile(edits):
    topo, inc = topology(), compiler()
    inc.compile(topo)
    for edit in edits:
        if edit == "drop-rpb" and topo.get("router_port", "rpb"):
            changes = topo.apply("router_port", "rpb", None)
        elif edit == "drop-sb" and topo.get("subnet", "sb") and not topo.get("router_port", "rpb"):
            changes = topo.apply("subnet", "sb", None)
        elif edit == "renumber-b":
            changes = topo.apply("network", "b", Network(id="b", name="b", vni=2, unique_key=7))
        elif edit == "add-route":
            changes = topo.apply("router", "r", Router(id="r", name="r", routes=[
                {"destination": "192.0.2.0/24", "nexthop": "10.0.1.254"}]))
        elif edit == "drop-vm2" and topo.get("port", "vm2"):
            changes = topo.apply("port", "vm2", None) + topo.set_local("vm2", False)
        else:
            continue
        inc.update(topo, changes)
        full = compiler().compile(Topology("h", dict(topo.networks), dict(topo.ports), set(topo.local_port_ids),
                                           others={k: dict(v) for k, v in topo.objects.items()
                                                   if k not in ("network", "port")}))
        assert set(inc.pipeline().flows) == set(full.flows)
