"""Floating IPs and SNAT reached through the provider uplink: the outside is not a port of this host (interpreter).

test_l3's NAT site, with the external network's ports ("upstream", holding the external subnet's gateway_ip,
and "outsider") bound nowhere: they are behind the flat external network's uplink, and no port of that
network is local here. The host still switches it (a NAT network) and sends what comes in from its uplink
through l3 first (ARP for the FIP, DNAT).
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from test_l3 import (
    CHASSIS_IP,
    EDITS,
    FIP,
    GW_MAC,
    OUTSIDER_MAC,
    RA,
    REMOTE,
    VM1_MAC,
    compiler,
    ip,
    mac,
    nat_edit,
    nat_topology,
    send,
)

from hwflow.agent.selection import SnapshotSource, walk
from hwflow.apps import l3
from hwflow.pipeline import interpreter, ir
from hwflow.pipeline.topology import Topology

UPLINK = ir.physnet_port("physnet1")
OUTSIDE = {"upstream", "outsider"}


def copy(topo: Topology, local: set[str]) -> Topology:
    """The same objects, with ``local`` the local ports: what a full compile of the agent's state sees."""
    return Topology("h", dict(topo.networks), dict(topo.ports), local,
                    others={k: dict(v) for k, v in topo.objects.items() if k not in ("network", "port")})


def uplink_topology(**kwargs) -> Topology:
    topo = nat_topology(**kwargs)
    return copy(topo, topo.local_port_ids - OUTSIDE)


def from_uplink(pipeline: ir.Pipeline, ct: interpreter.ConnTracker, eth_src: str, eth_dst: int, src: str,
                dst: str, **more: int) -> interpreter.Verdict:
    return send(pipeline, ct, UPLINK, eth_src, eth_dst, src, dst, **more)


def arp_from_uplink(pipeline: ir.Pipeline, address: str) -> list[tuple[int, dict[str, int]]]:
    """Where the outsider's ARP request for ``address``, coming in from the uplink, goes."""
    return interpreter.run(pipeline, {"in_port": UPLINK, "eth_src": mac(OUTSIDER_MAC), "eth_dst": (1 << 48) - 1,
                                      "eth_type": ir.ETH_TYPE_ARP, "arp_op": 1, "arp_spa": ip("198.51.100.77"),
                                      "arp_sha": mac(OUTSIDER_MAC), "arp_tpa": ip(address), "arp_tha": 0}).outputs


def test_the_fip_vm_goes_out_of_the_uplink_to_the_upstream_and_its_reply_comes_back():
    pipeline, ct = compiler().compile(uplink_topology()), interpreter.ConnTracker()
    ((port, out),) = send(pipeline, ct, 11, VM1_MAC, mac(RA), "10.0.0.5", REMOTE).outputs
    assert port == UPLINK
    assert (out["ipv4_src"], out["eth_src"], out["eth_dst"]) == (ip(FIP), l3.nat_mac(FIP), mac(GW_MAC))
    ((port, back),) = from_uplink(pipeline, ct, GW_MAC, l3.nat_mac(FIP), REMOTE, FIP, ip_ttl=60).outputs
    assert port == 11
    assert (back["ipv4_dst"], back["eth_src"], back["eth_dst"], back["ip_ttl"]) == (
        ip("10.0.0.5"), mac(RA), mac(VM1_MAC), 59)


def test_the_outside_asks_for_the_fip_through_the_uplink_and_reaches_the_vm_by_it():
    pipeline, ct = compiler().compile(uplink_topology()), interpreter.ConnTracker()
    ((port, answer),) = arp_from_uplink(pipeline, FIP)
    assert port == UPLINK and answer["arp_op"] == 2 and answer["arp_sha"] == l3.nat_mac(FIP)
    syn = {"ip_proto": 6, "tcp_src": 40000, "tcp_dst": 22}
    ((port, inside),) = from_uplink(pipeline, ct, OUTSIDER_MAC, l3.nat_mac(FIP), "198.51.100.77", FIP, **syn).outputs
    assert port == 11 and inside["ipv4_dst"] == ip("10.0.0.5")
    reply = {"ip_proto": 6, "tcp_src": 22, "tcp_dst": 40000}
    ((port, out),) = send(pipeline, ct, 11, VM1_MAC, mac(RA), "10.0.0.5", "198.51.100.77", **reply).outputs
    assert port == UPLINK and out["ipv4_src"] == ip(FIP) and out["eth_dst"] == mac(OUTSIDER_MAC)


def test_chassis_snat_replies_come_back_through_the_uplink():
    pipeline, ct = compiler().compile(uplink_topology(fip=False)), interpreter.ConnTracker()
    ((port, out),) = send(pipeline, ct, 11, VM1_MAC, mac(RA), "10.0.0.5", REMOTE).outputs
    assert port == UPLINK and out["ipv4_src"] == ip(CHASSIS_IP)
    ((port, back),) = from_uplink(pipeline, ct, GW_MAC, l3.nat_mac(CHASSIS_IP), REMOTE, CHASSIS_IP).outputs
    assert port == 11 and back["ipv4_dst"] == ip("10.0.0.5")


def test_without_a_gateway_or_a_fip_the_host_takes_nothing_from_the_uplink():
    pipeline = compiler().compile(uplink_topology(fip=False, gateway=False))
    assert not arp_from_uplink(pipeline, FIP)
    assert from_uplink(pipeline, interpreter.ConnTracker(), GW_MAC, mac(VM1_MAC), REMOTE, "10.0.0.5").kind == "drop"


def test_the_agent_holds_the_ports_of_a_fips_external_network():
    topo = nat_topology()
    held = walk(["vm1"], "h", SnapshotSource(o for table in topo.objects.values() for o in table.values()))
    assert {("port", "upstream"), ("port", "outsider"), ("floating_ip", "f1")} <= set(held.objects)
    assert ("port", "vm3") not in held.objects  # behind another router: not this port's business


UPLINK_EDITS = [*EDITS, "bind-upstream", "unbind-upstream", "add-upstream"]


def uplink_edit(topo: Topology, edit: str) -> list:
    if edit in ("bind-upstream", "unbind-upstream") and topo.get("port", "upstream"):
        return topo.set_local("upstream", edit == "bind-upstream")
    if edit == "add-upstream":
        return topo.apply("port", "upstream", nat_topology().get("port", "upstream"))
    return nat_edit(topo, edit)


@settings(max_examples=120, deadline=None)
@given(st.lists(st.sampled_from(UPLINK_EDITS), max_size=6))
def test_fips_gateways_and_outside_ports_coming_and_going_equal_a_full_compile(edits):
    topo, inc = uplink_topology(), compiler()
    inc.compile(topo)
    for edit in edits:
        inc.update(topo, uplink_edit(topo, edit))
        assert set(inc.pipeline().flows) == set(compiler().compile(copy(topo, set(topo.local_port_ids))).flows)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.booleans(), st.sets(st.sampled_from(["vm1", "vm2", "upstream"]))),
                min_size=1, max_size=4))
def test_batches_of_fips_gateways_and_local_ports_equal_a_full_compile(states):
    """The agent hands over whole states at once: a FIP, a gateway and local ports changing in one batch."""
    inc, topo = compiler(), uplink_topology()
    inc.compile(topo)
    for fip, gateway, local in states:
        state = nat_topology(fip=fip, gateway=gateway)
        inc.update(topo, topo.update({"router": state.of("router"), "floating_ip": state.of("floating_ip")}, local))
        assert set(inc.pipeline().flows) == set(compiler().compile(copy(topo, set(local))).flows)
