"""Distributed routing, checked with the reference interpreter (OVS translation of its actions comes next)."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from hwflow.apps import l3
from hwflow.apps.compiler import Compiler, layout_path
from hwflow.model.objects import (
    Chassis,
    FloatingIP,
    Network,
    Port,
    Router,
    RouterPort,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)
from hwflow.pipeline import interpreter, ir
from hwflow.pipeline.topology import Topology

RA, RB, RC = "fa:16:3e:aa:00:01", "fa:16:3e:bb:00:01", "fa:16:3e:cc:00:01"


def mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def ip(text: str) -> int:
    a, b, c, d = (int(x) for x in text.split("."))
    return a << 24 | b << 16 | c << 8 | d


def compiler() -> Compiler:
    """The shipped layout: routing as the agent runs it, every stage in place."""
    return Compiler.from_file(layout_path(""))


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
    assert names[-1] == "output.deliver" and {"l3.route", "l3.next_hop", "l2.lookup"} <= set(names)


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


RA6 = "fa:16:3e:aa:00:06"
VM1_LINK_LOCAL = 0xFE80 << 112 | 0xF816_3EFF_FE00_0001  # fa:16:3e:00:00:01's EUI-64: port security lets it out


def with_ipv6_router_port(topo: Topology) -> Topology:
    """Network a also has fd00::/64, and the router a port on it holding fd00::1."""
    subnet = Subnet(id="s6", name="s6", network_id="a", cidr="fd00::/64", gateway_ip="fd00::1")
    rp = RouterPort(id="rp6", name="rp6", router_id="r", network_id="a", subnet_id="s6", mac=RA6, ip="fd00::1")
    topo.update({"subnet": {**topo.of("subnet"), "s6": subnet}, "router_port": {**topo.of("router_port"), "rp6": rp}},
                set(topo.local_port_ids))
    return topo


def solicit_router(pipeline: ir.Pipeline, src: int) -> interpreter.Verdict:
    return interpreter.run(pipeline, {
        "in_port": 11, "eth_src": mac("fa:16:3e:00:00:01"), "eth_dst": 0x3333FF000001, "eth_type": ir.ETH_TYPE_IPV6,
        "ipv6_src": src, "ipv6_dst": 0xFF02 << 112 | 0x1_FF00_0001, "ip_proto": 58, "ip_ttl": 255, "icmp_type": 135,
        "icmp_code": 0, "nd_target": 0xFD00 << 112 | 1, "nd_options_type": 1, "nd_sll": mac("fa:16:3e:00:00:01")})


def test_a_solicitation_for_an_ipv6_router_port_is_advertised_with_the_router_flag():
    pipeline = compiler().compile(with_ipv6_router_port(topology()))
    ((port, na),) = solicit_router(pipeline, VM1_LINK_LOCAL).outputs
    assert port == 11
    assert (na["eth_src"], na["eth_dst"]) == (mac(RA6), mac("fa:16:3e:00:00:01"))
    assert (na["ipv6_src"], na["ipv6_dst"], na["icmp_type"]) == (0xFD00 << 112 | 1, VM1_LINK_LOCAL, 136)
    assert na["nd_reserved"] == l3.NA_ROUTER | l3.NA_SOLICITED | l3.NA_OVERRIDE == 0xE000_0000
    assert (na["nd_options_type"], na["nd_tll"]) == (2, mac(RA6))


def test_duplicate_address_detection_of_a_router_address_is_not_answered_and_ipv4_routing_is_unchanged():
    plain, with_v6 = (compiler().compile(t) for t in (topology(), with_ipv6_router_port(topology())))
    dad, before = solicit_router(with_v6, 0), solicit_router(plain, 0)
    walked = [with_v6.table_names[s.table] for s in dad.steps]
    assert walked == [plain.table_names[s.table] for s in before.steps] and "l2.lookup" in walked  # on to L2
    assert dad.outputs == before.outputs
    added = set(with_v6.flows) - set(plain.flows)
    # the DAD pass, the advert, its option
    assert {f.owner for f in added} == {ir.Owner("router_port", "rp6")} and len(added) == 3


def test_same_network_traffic_is_still_switched():
    pipeline = compiler().compile(topology())
    out = from_vm1(pipeline, eth_dst=mac("fa:16:3e:00:00:09"), ipv4_dst=ip("10.0.0.9"))
    assert out.kind == "drop" and pipeline.table_names[out.steps[-1].table] == "l2.lookup"


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(["drop-rpb", "drop-sb", "renumber-b", "add-route", "drop-vm2", "add-v6", "drop-v6",
                                 "renumber-a"]), max_size=5))
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
        elif edit == "add-v6":  # an IPv6 router port on a (its subnet first)
            v6 = with_ipv6_router_port(topology())
            changes = topo.apply("subnet", "s6", v6.get("subnet", "s6")) + topo.apply(
                "router_port", "rp6", v6.get("router_port", "rp6"))
        elif edit == "drop-v6" and topo.get("router_port", "rp6"):
            changes = topo.apply("router_port", "rp6", None)
        elif edit == "renumber-a":
            changes = topo.apply("network", "a", Network(id="a", name="a", vni=1, unique_key=9))
        else:
            continue
        inc.update(topo, changes)
        full = compiler().compile(Topology("h", dict(topo.networks), dict(topo.ports), set(topo.local_port_ids),
                                           others={k: dict(v) for k, v in topo.objects.items()
                                                   if k not in ("network", "port")}))
        assert set(inc.pipeline().flows) == set(full.flows)


# --- floating IPs and per-chassis SNAT ---------------------------------------------------------------------------
# Network a (vm1, with a FIP) and b (vm2, none) sit behind router r, whose gateway is the flat external network;
# network c (vm3) behind router r2, which has none. On the external network, "upstream" holds the external
# subnet's gateway_ip (the next hop of the default route: how l3 learns its MAC) and "outsider" is a host there;
# both are local ports here, standing for the wire the external network is on.

GW_MAC, OUTSIDER_MAC = "fa:16:3e:ee:00:01", "fa:16:3e:ee:00:77"
FIP, CHASSIS_IP, REMOTE = "198.51.100.50", "198.51.100.10", "8.8.8.8"
VM1_MAC, VM2_MAC = "fa:16:3e:00:00:01", "fa:16:3e:00:00:02"


def nat_topology(fip: bool = True, external_ip: str = CHASSIS_IP, gateway: bool = True) -> Topology:
    nets = {n.id: n for n in (
        Network(id="a", name="a", vni=1, unique_key=1), Network(id="b", name="b", vni=2, unique_key=2),
        Network(id="c", name="c", vni=4, unique_key=4),
        Network(id="ext", name="ext", network_type="flat", physical_network="physnet1", external=True, unique_key=3))}
    subnets = {s.id: s for s in (
        Subnet(id="sa", name="sa", network_id="a", cidr="10.0.0.0/24", gateway_ip="10.0.0.1"),
        Subnet(id="sb", name="sb", network_id="b", cidr="10.0.1.0/24", gateway_ip="10.0.1.1"),
        Subnet(id="sc", name="sc", network_id="c", cidr="10.0.2.0/24", gateway_ip="10.0.2.1"),
        Subnet(id="sext", name="sext", network_id="ext", cidr="198.51.100.0/24", gateway_ip="198.51.100.1"))}
    ports = {p.id: p for p in (
        Port(id="vm1", name="vm1", network_id="a", mac=VM1_MAC, ips=["10.0.0.5"], unique_key=11),
        Port(id="vm2", name="vm2", network_id="b", mac=VM2_MAC, ips=["10.0.1.5"], unique_key=12),
        Port(id="vm3", name="vm3", network_id="c", mac="fa:16:3e:00:00:03", ips=["10.0.2.5"], unique_key=13),
        Port(id="upstream", name="upstream", network_id="ext", mac=GW_MAC, ips=["198.51.100.1"], unique_key=20,
             port_security=False),  # a router: it forwards the world's addresses
        Port(id="outsider", name="outsider", network_id="ext", mac=OUTSIDER_MAC, ips=["198.51.100.77"],
             unique_key=21))}
    routers = {r.id: r for r in (
        Router(id="r", name="r", unique_key=1, gateway_network_id="ext" if gateway else "",
               gateway_ip="198.51.100.2" if gateway else ""),
        Router(id="r2", name="r2", unique_key=2))}
    rps = {rp.id: rp for rp in (
        RouterPort(id="rpa", name="rpa", router_id="r", network_id="a", subnet_id="sa", mac=RA, ip="10.0.0.1"),
        RouterPort(id="rpb", name="rpb", router_id="r", network_id="b", subnet_id="sb", mac=RB, ip="10.0.1.1"),
        RouterPort(id="rpc", name="rpc", router_id="r2", network_id="c", subnet_id="sc", mac=RC, ip="10.0.2.1"))}
    fips = {"f1": FloatingIP(id="f1", name="f1", floating_network_id="ext", floating_ip_address=FIP, port_id="vm1",
                             fixed_ip_address="10.0.0.5", unique_key=1)} if fip else {}
    chassis = {"h": Chassis(id="h", tunnel_ip="192.0.2.1", external_ip=external_ip)}
    return Topology("h", nets, ports, set(ports), others={
        "subnet": subnets, "router": routers, "router_port": rps, "floating_ip": fips, "chassis": chassis})


def send(pipeline: ir.Pipeline, ct: interpreter.ConnTracker, in_port: int, eth_src: str, eth_dst: int, src: str,
         dst: str, **more: int) -> interpreter.Verdict:
    pkt = {"in_port": in_port, "eth_src": mac(eth_src), "eth_dst": eth_dst, "eth_type": ir.ETH_TYPE_IPV4,
           "ipv4_src": ip(src), "ipv4_dst": ip(dst), "ip_proto": 1, "ip_ttl": 64, **more}
    return interpreter.run(pipeline, pkt, ct)


def arp_for(pipeline: ir.Pipeline, address: str) -> dict[str, int] | None:
    """The answer the outsider gets to its ARP request for ``address`` (None: only flooded on, unanswered)."""
    verdict = interpreter.run(pipeline, {"in_port": 21, "eth_src": mac(OUTSIDER_MAC), "eth_dst": (1 << 48) - 1,
                                         "eth_type": ir.ETH_TYPE_ARP, "arp_op": 1, "arp_spa": ip("198.51.100.77"),
                                         "arp_sha": mac(OUTSIDER_MAC), "arp_tpa": ip(address), "arp_tha": 0})
    answers = [pkt for port, pkt in verdict.outputs if port == 21 and pkt["arp_op"] == 2]
    return answers[0] if answers else None


def test_a_fip_vm_pings_out_snatted_and_the_reply_comes_back_to_it():
    pipeline, ct = compiler().compile(nat_topology()), interpreter.ConnTracker()
    ((port, out),) = send(pipeline, ct, 11, VM1_MAC, mac(RA), "10.0.0.5", REMOTE).outputs
    assert port == 20
    assert (out["ipv4_src"], out["ipv4_dst"], out["ip_ttl"]) == (ip(FIP), ip(REMOTE), 63)
    assert (out["eth_src"], out["eth_dst"]) == (l3.nat_mac(FIP), mac(GW_MAC))
    ((port, back),) = send(pipeline, ct, 20, GW_MAC, l3.nat_mac(FIP), REMOTE, FIP, ip_ttl=60).outputs
    assert port == 11
    assert (back["ipv4_src"], back["ipv4_dst"], back["ip_ttl"]) == (ip(REMOTE), ip("10.0.0.5"), 59)
    assert (back["eth_src"], back["eth_dst"]) == (mac(RA), mac(VM1_MAC))


def test_an_outside_host_reaches_the_vm_through_its_fip_and_gets_answers_from_the_fip():
    pipeline, ct = compiler().compile(nat_topology()), interpreter.ConnTracker()
    answer = arp_for(pipeline, FIP)
    assert answer is not None and answer["arp_sha"] == l3.nat_mac(FIP) and answer["arp_spa"] == ip(FIP)
    syn = {"ip_proto": 6, "tcp_src": 40000, "tcp_dst": 22}
    ((port, inside),) = send(pipeline, ct, 21, OUTSIDER_MAC, answer["arp_sha"], "198.51.100.77", FIP, **syn).outputs
    assert port == 11 and inside["ipv4_dst"] == ip("10.0.0.5") and inside["eth_dst"] == mac(VM1_MAC)
    reply = {"ip_proto": 6, "tcp_src": 22, "tcp_dst": 40000}
    ((port, out),) = send(pipeline, ct, 11, VM1_MAC, mac(RA), "10.0.0.5", "198.51.100.77", **reply).outputs
    assert port == 21 and out["ipv4_src"] == ip(FIP) and out["eth_dst"] == mac(OUTSIDER_MAC)


def test_without_a_fip_the_router_snats_to_the_chassis_external_ip():
    pipeline, ct = compiler().compile(nat_topology()), interpreter.ConnTracker()
    ((port, out),) = send(pipeline, ct, 12, VM2_MAC, mac(RB), "10.0.1.5", REMOTE).outputs
    assert port == 20 and out["ipv4_src"] == ip(CHASSIS_IP) and out["eth_src"] == l3.nat_mac(CHASSIS_IP)
    ((port, back),) = send(pipeline, ct, 20, GW_MAC, l3.nat_mac(CHASSIS_IP), REMOTE, CHASSIS_IP).outputs
    assert port == 12 and back["ipv4_dst"] == ip("10.0.1.5") and back["eth_src"] == mac(RB)
    answer = arp_for(pipeline, CHASSIS_IP)
    assert answer is not None and answer["arp_sha"] == l3.nat_mac(CHASSIS_IP)
    stranger = send(pipeline, ct, 21, OUTSIDER_MAC, l3.nat_mac(CHASSIS_IP), "198.51.100.77", CHASSIS_IP)
    assert stranger.kind == "drop"  # nobody inside opened it: the chassis address takes no new connections


def test_no_gateway_no_nat_and_no_external_ip_no_snat():
    pipeline = compiler().compile(nat_topology())
    assert send(pipeline, interpreter.ConnTracker(), 13, "fa:16:3e:00:00:03", mac(RC), "10.0.2.5", REMOTE).kind \
        == "drop"
    bare = compiler().compile(nat_topology(external_ip=""))
    assert send(bare, interpreter.ConnTracker(), 12, VM2_MAC, mac(RB), "10.0.1.5", REMOTE).kind == "drop"
    ((_, out),) = send(bare, interpreter.ConnTracker(), 11, VM1_MAC, mac(RA), "10.0.0.5", REMOTE).outputs
    assert out["ipv4_src"] == ip(FIP)  # a FIP needs no chassis address
    assert arp_for(bare, CHASSIS_IP) is None
    assert arp_for(compiler().compile(nat_topology(gateway=False)), FIP) is None


def test_each_router_has_its_own_zone_and_chassis_snat_one_apart():
    pipeline = compiler().compile(nat_topology())
    zones = {action.zone for flow in pipeline.flows for action in flow.actions
             if isinstance(action, ir.Conntrack) and action.nat is not None}
    assert zones == {l3.router_zone(nat_topology().get("router", "r")), l3.CHASSIS_SNAT_ZONE}


EDITS = ["drop-fip", "add-fip", "unbind-vm1", "bind-vm1", "no-gateway", "gateway", "external-ip", "drop-upstream",
         "r2-gateway", "r2-first", "c-overlaps-a"]


def nat_edit(topo: Topology, edit: str) -> list:
    full = nat_topology()
    if edit == "drop-fip" and topo.get("floating_ip", "f1"):
        return topo.apply("floating_ip", "f1", None)
    if edit == "add-fip":
        return topo.apply("floating_ip", "f1", full.get("floating_ip", "f1"))
    if edit in ("unbind-vm1", "bind-vm1"):
        return topo.set_local("vm1", edit == "bind-vm1")
    if edit in ("no-gateway", "gateway"):
        return topo.apply("router", "r", nat_topology(gateway=edit == "gateway").get("router", "r"))
    if edit == "external-ip":
        return topo.apply("chassis", "h", Chassis(id="h", tunnel_ip="192.0.2.1", external_ip="198.51.100.11"))
    if edit in ("r2-gateway", "r2-first"):  # another tenant's router SNATs here too; "first": it has the lower key
        return topo.apply("router", "r2", Router(id="r2", name="r2", unique_key=0 if edit == "r2-first" else 2,
                                                 gateway_network_id="ext", gateway_ip="198.51.100.3"))
    if edit == "c-overlaps-a":  # r2's inside subnet is r's: only one of them may SNAT it (l3._snat_legs)
        return topo.apply("subnet", "sc", Subnet(id="sc", name="sc", network_id="c", cidr="10.0.0.0/24",
                                                 gateway_ip="10.0.0.1"))
    if edit == "drop-upstream" and topo.get("port", "upstream"):
        return topo.apply("port", "upstream", None) + topo.set_local("upstream", False)
    return []


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(EDITS), max_size=5))
def test_incremental_nat_equals_a_full_compile(edits):
    topo, inc = nat_topology(), compiler()
    inc.compile(topo)
    for edit in edits:
        inc.update(topo, nat_edit(topo, edit))
        full = compiler().compile(Topology("h", dict(topo.networks), dict(topo.ports), set(topo.local_port_ids),
                                           others={k: dict(v) for k, v in topo.objects.items()
                                                   if k not in ("network", "port")}))
        assert set(inc.pipeline().flows) == set(full.flows)


def test_removing_a_fip_incrementally_sends_its_vm_out_through_chassis_snat():
    topo, inc = nat_topology(), compiler()
    inc.compile(topo)
    inc.update(topo, topo.apply("floating_ip", "f1", None))
    ((_, out),) = send(inc.pipeline(), interpreter.ConnTracker(), 11, VM1_MAC, mac(RA), "10.0.0.5", REMOTE).outputs
    assert out["ipv4_src"] == ip(CHASSIS_IP)
    assert arp_for(inc.pipeline(), FIP) is None


def test_a_heartbeat_of_this_chassis_recomputes_no_router():
    topo, inc = nat_topology(), compiler()
    inc.compile(topo)
    beat = Chassis(id="h", tunnel_ip="192.0.2.1", external_ip=CHASSIS_IP, up=True, heartbeat_at=5.0)
    assert inc.update(topo, topo.apply("chassis", "h", beat)).owners == 0


def test_security_groups_filter_the_vm_by_its_fixed_address_around_the_nat():
    """vm1 may send anything and take SSH in: its groups see the untranslated addresses on both sides of the NAT."""
    topo = nat_topology()
    topo.apply("port", "vm1", dataclasses.replace(topo.ports["vm1"], security_groups=["ssh"]))
    topo.update({"security_group": {"ssh": SecurityGroup(id="ssh", name="ssh", unique_key=1)},
                 "security_group_rule": {r.id: r for r in (
                     SecurityGroupRule(id="out", name="out", security_group_id="ssh", direction="egress"),
                     SecurityGroupRule(id="in", name="in", security_group_id="ssh", direction="ingress",
                                       protocol="tcp", port_min=22, port_max=22))}}, topo.local_port_ids)
    pipeline, ct = compiler().compile(topo), interpreter.ConnTracker()
    ((port, _),) = send(pipeline, ct, 11, VM1_MAC, mac(RA), "10.0.0.5", REMOTE).outputs
    assert port == 20
    assert send(pipeline, ct, 20, GW_MAC, l3.nat_mac(FIP), REMOTE, FIP).ports == (11,)  # the reply, un-SNATed
    tcp = {"ip_proto": 6, "tcp_src": 40000}
    assert send(pipeline, ct, 21, OUTSIDER_MAC, l3.nat_mac(FIP), "198.51.100.77", FIP, tcp_dst=22, **tcp).ports \
        == (11,)
    assert send(pipeline, ct, 21, OUTSIDER_MAC, l3.nat_mac(FIP), "198.51.100.77", FIP, tcp_dst=80, **tcp).kind \
        == "drop"
