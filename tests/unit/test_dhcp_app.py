"""The dhcp app punts exactly the DHCP requests of ports the agent serves (checked with the interpreter)."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.model.objects import Network, Port, Router, RouterPort, Subnet
from hwflow.offload import capabilities as hw
from hwflow.offload.partition import PortOffload, partition
from hwflow.pipeline import interpreter, ir
from hwflow.pipeline.topology import Topology
from hwflow.sim.profile import load_profile

NET = Network(id="n", name="n", vni=5, unique_key=1)
SUBNET = Subnet(id="s", name="s", network_id="n", cidr="10.0.0.0/24", gateway_ip="10.0.0.1", unique_key=1)
SERVED = Port(id="a", name="a", network_id="n", mac="fa:16:3e:00:00:01", ips=["10.0.0.5"], unique_key=1)
OUTSIDE = Port(id="b", name="b", network_id="n", mac="fa:16:3e:00:00:02", ips=["192.168.0.5"], unique_key=2)
NO_IP = Port(id="c", name="c", network_id="n", mac="fa:16:3e:00:00:03", unique_key=3)
PORTS = {p.id: p for p in (SERVED, OUTSIDE, NO_IP)}
ROUTER_MAC = "fa:16:3e:00:00:77"
GATEWAY = RouterPort(id="rp", name="rp", router_id="r", network_id="n", subnet_id="s", mac=ROUTER_MAC,
                     ip="10.0.0.1", unique_key=9)


def mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def topology(*subnets: Subnet, routed: bool = True) -> Topology:
    return Topology("h", {"n": NET}, PORTS, PORTS, {"subnet": {s.id: s for s in subnets},
                                                    "router_port": {"rp": GATEWAY} if routed else {},
                                                    "router": {"r": Router(id="r", name="r", unique_key=1)}})


def dhcp_from(port: Port, **overrides: int) -> dict[str, int]:
    """A DHCPDISCOVER as port security admits it: from the port's MAC and 0.0.0.0, broadcast."""
    return {"in_port": port.unique_key, "eth_src": mac(port.mac), "eth_dst": (1 << 48) - 1,
            "eth_type": ir.ETH_TYPE_IPV4, "ipv4_src": 0, "ipv4_dst": 0xFFFFFFFF, "ip_proto": 17,
            "udp_src": 68, "udp_dst": 67, **overrides}


def verdict(pipeline: ir.Pipeline, packet: dict[str, int]) -> interpreter.Verdict:
    return interpreter.run(pipeline, packet)


def test_dhcp_from_a_served_port_is_punted_and_from_others_flooded():
    pipeline = Compiler.from_file(layout_path("")).compile(topology(SUBNET))
    assert verdict(pipeline, dhcp_from(SERVED)).punt == "dhcp"
    for port in (OUTSIDE, NO_IP):  # no address in a DHCP subnet: some other server may answer it
        result = verdict(pipeline, dhcp_from(port))
        assert result.punt is None and set(result.ports) == {p.unique_key for p in PORTS.values()} - {port.unique_key}


def test_broadcast_and_renewals_to_the_gateways_router_port_are_punted_and_nothing_else():
    pipeline = Compiler.from_file(layout_path("")).compile(topology(SUBNET))
    own = {"ipv4_src": 0x0A000005}
    assert verdict(pipeline, dhcp_from(SERVED, **own)).punt == "dhcp"  # rebinding: from its address, broadcast
    for other in ({"udp_dst": 53}, {"udp_src": 67}, {"ip_proto": 6, "udp_src": 0, "udp_dst": 0}):
        result = verdict(pipeline, dhcp_from(SERVED, **own, **other))
        assert result.punt is None and result.ports, other
    # RENEWING: unicast to the server identifier (the gateway), framed to the router port that holds it
    renewal = dhcp_from(SERVED, **own, eth_dst=mac(ROUTER_MAC), ipv4_dst=0x0A000001)
    assert verdict(pipeline, renewal).punt == "dhcp"
    unrouted = Compiler.from_file(layout_path("")).compile(topology(SUBNET, routed=False))
    assert verdict(unrouted, renewal).punt is None  # no router port answers ARP for it: renewed at T2 instead
    unicast = verdict(pipeline, dhcp_from(SERVED, **own, eth_dst=mac(OUTSIDE.mac), ipv4_dst=0xC0A80005))
    assert unicast.punt is None and unicast.ports == (OUTSIDE.unique_key,)  # DHCP to another server on the net


def test_the_punts_keep_no_unicast_path_out_of_the_nic():
    """The punts are software-only, and a NIC without ``pass`` cannot hold them: they overlap no other path."""
    caps = load_profile("sim-basic").capabilities
    assert hw.ACTION_PASS not in caps.actions
    offload = {p.unique_key: PortOffload(p.unique_key, "sw0", caps) for p in PORTS.values()}
    plans = [partition(Compiler.from_file(layout_path("")).compile(topology(subnet)), offload, (ir.ETH_TYPE_IPV4,))
             for subnet in (dataclasses.replace(SUBNET, enable_dhcp=False), SUBNET)]
    assert plans[0].rules and plans[1].rules == plans[0].rules
    punted = [leaf.match for leaf in plans[1].software if "punted to the agent (dhcp)" in leaf.reason]
    assert {m.get("eth_dst").value for m in punted} == {(1 << 48) - 1, mac(ROUTER_MAC)}


def test_no_punt_when_dhcp_is_off_or_the_subnet_is_ipv6():
    off = dataclasses.replace(SUBNET, enable_dhcp=False)
    v6 = Subnet(id="s6", name="s6", network_id="n", cidr="2001:db8::/64", unique_key=2)
    for subnets in ((), (off,), (v6,)):
        pipeline = Compiler.from_file(layout_path("")).compile(topology(*subnets))
        assert verdict(pipeline, dhcp_from(SERVED)).punt is None, subnets


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sampled_from(["add", "remove", "toggle", "unplug", "plug"]), max_size=6))
def test_subnet_and_port_changes_stay_incremental(steps: list[str]):
    """Whatever happens to the subnet and the served port, the incremental pipeline equals a full compile."""
    compiler = Compiler.from_file(layout_path(""))
    topo = topology()
    compiler.compile(topo)
    subnet = SUBNET
    for step in steps:
        if step == "add":
            changes = topo.apply("subnet", "s", subnet)
        elif step == "remove":
            changes = topo.apply("subnet", "s", None)
        elif step == "toggle":
            subnet = dataclasses.replace(subnet, enable_dhcp=not subnet.enable_dhcp)
            changes = topo.apply("subnet", "s", subnet) if "s" in topo.of("subnet") else []
        elif step == "router":
            changes = topo.apply("router_port", "rp", None if "rp" in topo.of("router_port") else GATEWAY)
        else:
            changes = topo.set_local(SERVED.id, step == "plug")
        compiler.update(topo, changes)
        full = Compiler.from_file(layout_path("")).compile(topo)
        assert set(compiler.pipeline().flows) == set(full.flows)
        expected = "dhcp" if topo.is_local(SERVED.id) and "s" in topo.of("subnet") and subnet.enable_dhcp else None
        if topo.is_local(SERVED.id):
            assert verdict(compiler.pipeline(), dhcp_from(SERVED)).punt == expected
