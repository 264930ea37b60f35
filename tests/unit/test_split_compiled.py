"""The split never changes a verdict, on pipelines the shipped compiler makes (issue 13).

``test_partition`` draws pipelines at random, which rarely look like a host's: random tables seldom reach a
join, a conntrack chain or a route. Here the topologies are random (networks with IPv4 and IPv6 subnets, a
router joining some of them, now and then with its gateway on a flat external network, SNAT to this host's
address there and floating IPs for some local ports, security groups, ports here and on other chassis reached
through VXLAN) and the pipeline is what the agent would compile for them; the NIC has one of the shipped
profiles, offloads both families as the agent does by default, and holds the VFs, the VXLAN device and the
external network's uplink. Packets (a third of them IPv6: echo, neighbor solicitation, TCP, UDP; some from
behind the uplink to a floating IP or this host's address, some from a VM on its way out) are drawn between
the topology's own addresses (so they meet its rules), and each is followed by copies moved
into the match of every hardware rule its port has on the way (chain 0 and the chains its gotos lead to), and
by those just outside each rule (a masked bit flipped) and with TTLs 1 and 2, so most examples exercise the
NIC side and its edges. The floor (at least half the examples forward a packet by a NIC rule) keeps a change
to the generator or the partitioner from quietly turning the proof back into the interpreter checked
against itself.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress

from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from nic_model import aimed_at_rules, dropped_by_nic, forwarded_by_nic, hw_then_sw, software_alone

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
from hwflow.offload.partition import SHARED, Partitioner, PortOffload
from hwflow.pipeline import interpreter, ir
from hwflow.pipeline.topology import Topology
from hwflow.sim.profile import load_profile

TUN = ir.TUNNEL_PORTS["vxlan"]
UPLINK = ir.physnet_port("physnet1")  # the external network's uplink: its outside is behind it
EXTERNAL_IP = "198.51.100.10"  # this host's address outside (SNAT)
ETHERTYPES = (ir.ETH_TYPE_IPV4, ir.ETH_TYPE_IPV6)  # what the agent offloads by default
PROFILES = ("mlx5-connectx6dx", "mlx5-connectx6dx", "sim-no-tunnel-no-ct", "ice-e810")
RULES = (
    ("ingress", {"protocol": "tcp", "port_min": 22, "port_max": 22}),
    ("ingress", {"protocol": "tcp", "port_min": 80, "port_max": 81, "remote_ip_prefix": "10.0.0.0/8"}),
    ("ingress", {"protocol": "udp", "port_min": 53, "port_max": 53}),
    ("ingress", {"protocol": "icmp", "icmp_type": 8}),
    ("ingress", {}),
    ("egress", {}),
    ("egress", {"protocol": "tcp"}),
)
CHASSIS = {f"c{i}": Chassis(id=f"c{i}", name=f"c{i}", tunnel_ip=f"192.0.2.{i + 1}", tunnel_types=["vxlan"])
           for i in range(2)}
HERE = Chassis(id="here", name="here", tunnel_ip="192.0.2.100", tunnel_types=["vxlan"], external_ip=EXTERNAL_IP)
OUTSIDE = {"upstream": (0xFA163EEE0001, "198.51.100.1"), "outsider": (0xFA163EEE0077, "198.51.100.77")}


# With ``admin_states``, now and then a network or a port administratively down (issue 17): it carries nothing.
# Sampled, so that the simplest draw, which hypothesis favours, is up. Only the randomized properties draw them:
# a draw more would give the derandomized ones other examples than those their floors were measured on.
NETWORK_ADMIN_STATES = st.sampled_from((True,) * 9 + (False,))
PORT_ADMIN_STATES = st.sampled_from((True,) * 7 + (False,))


def _mac(i: int) -> int:
    return 0xFA163E000000 + i


def _mac_text(value: int) -> str:
    return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))


@dataclasses.dataclass
class Host:
    topo: Topology
    pipeline: ir.Pipeline
    joins: frozenset[int]
    addresses: list[tuple[int, int, int]]  # (MAC, IPv4, IPv6) of every port and router port
    local: list[Port]
    vnis: list[int]
    outside: list[tuple[int, int]]  # (MAC, IPv4) of the hosts behind the uplink (none: no external network)
    fips: list[int]  # the floating IPv4 addresses, each held by a local port


@st.composite
def hosts(draw, admin_states: bool = False) -> Host:
    n_nets = draw(st.integers(1, 3))
    nets = {f"n{i}": Network(id=f"n{i}", name=f"n{i}", vni=100 + i, unique_key=i + 1,
                             admin_state_up=draw(NETWORK_ADMIN_STATES) if admin_states else True)
            for i in range(n_nets)}
    subnets = {f"s{i}": Subnet(id=f"s{i}", name=f"s{i}", network_id=f"n{i}", cidr=f"10.0.{i}.0/24",
                               gateway_ip=f"10.0.{i}.1") for i in range(n_nets)}
    subnets.update({f"s{i}v6": Subnet(id=f"s{i}v6", name=f"s{i}v6", network_id=f"n{i}", cidr=f"fd00:0:0:{i}::/64",
                                      gateway_ip=f"fd00:0:0:{i}::1") for i in range(n_nets)})
    routed = draw(st.sets(st.sampled_from(sorted(nets)))) if n_nets > 1 else set()
    rps = {f"rp{n[1:]}": RouterPort(id=f"rp{n[1:]}", name=f"rp{n[1:]}", router_id="r0", network_id=n,
                                    subnet_id=f"s{n[1:]}", mac=_mac_text(_mac(0x100 + int(n[1:]))),
                                    ip=f"10.0.{n[1:]}.1") for n in sorted(routed)}
    rps.update({f"rp{n[1:]}v6": RouterPort(id=f"rp{n[1:]}v6", name=f"rp{n[1:]}v6", router_id="r0", network_id=n,
                                           subnet_id=f"s{n[1:]}v6", mac=_mac_text(_mac(0x200 + int(n[1:]))),
                                           ip=f"fd00:0:0:{n[1:]}::1") for n in sorted(routed)})
    groups = {g: SecurityGroup(id=g, name=g, unique_key=k + 1) for k, g in enumerate(("g0", "g1"))}
    rules = {}
    for g in groups:
        for j in draw(st.sets(st.integers(0, len(RULES) - 1), min_size=1)):
            direction, fields = RULES[j]
            rules[f"{g}-{j}"] = SecurityGroupRule(id=f"{g}-{j}", name=f"{g}-{j}", security_group_id=g,
                                                  direction=direction, **fields)
    ports = {}
    for i in range(draw(st.integers(2, 6))):
        net = draw(st.integers(0, n_nets - 1))
        ports[f"p{i}"] = Port(
            id=f"p{i}", name=f"p{i}", network_id=f"n{net}", mac=_mac_text(_mac(i + 1)), unique_key=i + 1,
            ips=[f"10.0.{net}.{i + 10}", f"fd00:0:0:{net}::{i + 10:x}"],
            chassis=draw(st.sampled_from(("", "", "c0", "c1"))) if i else "",
            security_groups=draw(st.lists(st.sampled_from(sorted(groups)), max_size=2, unique=True)),
            port_security=draw(st.integers(0, 5)) > 0,
            admin_state_up=draw(PORT_ADMIN_STATES) if admin_states else True)
    local = {pid for pid, p in ports.items() if not p.chassis}
    router = Router(id="r0", name="r0")
    fips: dict[str, FloatingIP] = {}
    if routed and draw(st.booleans()):  # the router's gateway on a flat external network; FIPs for local ports
        nets["ext"] = Network(id="ext", name="ext", network_type="flat", physical_network="physnet1", external=True,
                              unique_key=n_nets + 1)
        subnets["sext"] = Subnet(id="sext", name="sext", network_id="ext", cidr="198.51.100.0/24",
                                 gateway_ip="198.51.100.1")
        router = dataclasses.replace(router, gateway_network_id="ext", gateway_ip="198.51.100.2")
        for name, (mac, ip) in OUTSIDE.items():  # behind the uplink: bound nowhere, local to nothing
            ports[name] = Port(id=name, name=name, network_id="ext", mac=_mac_text(mac), ips=[ip],
                               unique_key=100 + len(ports), port_security=name != "upstream")
        held = [pid for pid in sorted(local) if ports[pid].network_id in routed]
        for k, pid in enumerate(draw(st.lists(st.sampled_from(held), unique=True)) if held else ()):
            fips[f"f{k}"] = FloatingIP(id=f"f{k}", name=f"f{k}", floating_network_id="ext", port_id=pid,
                                       floating_ip_address=f"198.51.100.{50 + k}", fixed_ip_address=ports[pid].ips[0],
                                       unique_key=k + 1)
    others = {"subnet": subnets, "router_port": rps, "router": {"r0": router} if rps else {},
              "security_group": groups, "security_group_rule": rules, "chassis": {**CHASSIS, "here": HERE},
              "floating_ip": fips}
    topo = Topology("here", nets, ports, local, others=others)
    compiler = Compiler.from_file(layout_path(""))
    compiler.compile(topo)
    addresses = [(_mac(i + 1), *(int(ipaddress.ip_address(ip)) for ip in p.ips)) for i, p in enumerate(ports.values())
                 if p.id not in OUTSIDE]
    for n in sorted(routed):  # a router port answers for both its addresses, each on its own MAC
        v4, v6 = rps[f"rp{n[1:]}"], rps[f"rp{n[1:]}v6"]
        addresses.append((int(v4.mac.replace(":", ""), 16), int(ipaddress.ip_address(v4.ip)), 0))
        addresses.append((int(v6.mac.replace(":", ""), 16), 0, int(ipaddress.ip_address(v6.ip))))
    outside = [(mac, int(ipaddress.ip_address(ip))) for mac, ip in OUTSIDE.values()] if "ext" in nets else []
    return Host(topo, compiler.pipeline(), frozenset(compiler.layout.joins()), addresses,
                [ports[pid] for pid in sorted(local)], [n.vni for n in nets.values() if n.id != "ext"], outside,
                [int(ipaddress.ip_address(f.floating_ip_address)) for f in fips.values()])


@st.composite
def packets(draw, host: Host) -> dict[str, int]:
    """A packet between the host's addresses (now and then a stranger's), from a local port or the tunnel; a
    third of them IPv6 (echo, a neighbor solicitation, TCP or UDP)."""
    v6 = not draw(st.integers(0, 2))
    at = 2 if v6 else 1
    held = [a for a in host.addresses if a[at]]  # (a router port has one address a MAC)
    src_mac, *src_ips = draw(st.sampled_from(held))
    dst_mac, *dst_ips = draw(st.sampled_from(held))
    src_ip, dst_ip = src_ips[at - 1], dst_ips[at - 1]
    way_out = False
    if host.outside and not v6 and not draw(st.integers(0, 3)):
        # the outside: from behind the uplink to a FIP or this host's external address, or a VM's way out
        out_mac, out_ip = draw(st.sampled_from(host.outside))
        if draw(st.booleans()):
            pkt = {"in_port": UPLINK}
            src_mac, src_ip = out_mac, draw(st.sampled_from((out_ip, int(ipaddress.ip_address("8.8.8.8")))))
            dst_ip = draw(st.sampled_from((*host.fips, int(ipaddress.ip_address(EXTERNAL_IP)))))
            dst_mac = l3.nat_mac(str(ipaddress.ip_address(dst_ip)))
        else:
            dst_ip = draw(st.sampled_from((out_ip, int(ipaddress.ip_address("8.8.8.8")))))
            pkt = {"in_port": draw(st.sampled_from(host.local)).unique_key} if host.local else {"in_port": TUN}
            port = next((p for p in host.local if p.unique_key == pkt["in_port"]), None)
            if port is not None:
                src_mac, src_ip = int(port.mac.replace(":", ""), 16), int(ipaddress.ip_address(port.ips[0]))
            way_out = True
    elif host.local and draw(st.integers(0, 4)):
        port = draw(st.sampled_from(host.local))
        pkt = {"in_port": port.unique_key}
        if draw(st.integers(0, 5)):  # mostly the port's own addresses: port security lets those through
            src_mac, src_ip = int(port.mac.replace(":", ""), 16), int(ipaddress.ip_address(port.ips[at - 1]))
    else:
        pkt = {"in_port": TUN, "tun_id": draw(st.sampled_from(host.vnis)),
               "tun_src": int(ipaddress.ip_address(CHASSIS[draw(st.sampled_from(sorted(CHASSIS)))].tunnel_ip))}
    if not draw(st.integers(0, 9)):
        dst_mac = draw(st.sampled_from((0xFFFFFFFFFFFF, 0x02AABBCCDDEE, 0x3333FF000000 | dst_ip & 0xFFFFFF)))
    # SNAT gives every VM's way out this host's one address: each its own source port, and no ICMP (the reference
    # keys an ICMP connection by addresses alone, so two VMs' pings would meet in one translation)
    proto = draw(st.sampled_from((6, 17) if way_out else (58 if v6 else 1, 6, 6, 17)))
    pkt.update({"eth_src": src_mac, "eth_dst": dst_mac, "ip_proto": proto,
                "ip_ttl": draw(st.sampled_from((1, 2, 64, 255)))})
    if v6:
        pkt.update({"eth_type": ir.ETH_TYPE_IPV6, "ipv6_src": src_ip, "ipv6_dst": dst_ip})
    else:
        pkt.update({"eth_type": ir.ETH_TYPE_IPV4, "ipv4_src": src_ip, "ipv4_dst": dst_ip})
    if proto == 1:
        pkt.update({"icmp_type": draw(st.sampled_from((0, 8))), "icmp_code": 0})
    elif proto == 58:
        pkt.update({"icmp_type": draw(st.sampled_from((128, 129, 135))), "icmp_code": 0})
        if pkt["icmp_type"] == 135:  # a solicitation for the destination's address, from the source's MAC
            pkt.update({"nd_target": dst_ip, "nd_sll": src_mac, "nd_reserved": 0, "nd_options_type": 1})
    else:
        port_field = "tcp" if proto == 6 else "udp"
        pkt.update({f"{port_field}_src": 40000 + pkt["in_port"] % 1000 if way_out else draw(
                        st.sampled_from((68, 546, 33000))),
                    f"{port_field}_dst": draw(st.sampled_from((22, 53, 67, 80, 443, 547)))})
    return pkt


def reply(host: Host, packet: dict[str, int]) -> dict[str, int] | None:
    """The answer of the local port ``packet`` is addressed to (None: it is not for one), so connections get
    established and the rules for established traffic are reached."""
    to = next((p for p in host.local if int(p.mac.replace(":", ""), 16) == packet["eth_dst"]), None)
    if to is None:
        return None
    back = dict(packet, in_port=to.unique_key, eth_src=packet["eth_dst"], eth_dst=packet["eth_src"], ip_ttl=64)
    for family in ("ipv4", "ipv6"):
        if f"{family}_src" in packet:
            back[f"{family}_src"], back[f"{family}_dst"] = packet[f"{family}_dst"], packet[f"{family}_src"]
    for field in ("tun_id", "tun_src", "nd_target", "nd_sll", "nd_reserved", "nd_options_type"):
        back.pop(field, None)
    for proto in ("tcp", "udp"):
        if f"{proto}_src" in packet:
            back[f"{proto}_src"], back[f"{proto}_dst"] = packet[f"{proto}_dst"], packet[f"{proto}_src"]
    if packet.get("icmp_type") in (8, 128, 135):  # echo answered; a solicitation answered by an advertisement
        back["icmp_type"] = {8: 0, 128: 129, 135: 136}[packet["icmp_type"]]
        if back["icmp_type"] == 136:
            back.update({"nd_target": packet["nd_target"], "nd_tll": packet["eth_dst"], "nd_reserved": 0x60000000,
                         "nd_options_type": 2})
    return back


def offload_of(host: Host, profile: str) -> dict[int, PortOffload]:
    """The host's NIC, of ``profile``: every local port's VF, the tunnel device, and the uplink when there is an
    outside."""
    caps = load_profile(profile).capabilities
    offload = {p.unique_key: PortOffload(p.unique_key, "nic0", caps) for p in host.local}
    offload[TUN] = PortOffload(TUN, "nic0", caps)
    if host.outside:
        offload[UPLINK] = PortOffload(UPLINK, "nic0", caps)
    return offload


def _check(data, host: Host, profile: str, stats: collections.Counter) -> None:
    """Hardware first, software on a miss, over drawn packets, their replies and copies aimed at the rules."""
    plan = Partitioner(host.joins).plan(host.pipeline, offload_of(host, profile), ETHERTYPES, {})
    drawn = data.draw(st.lists(packets(host), min_size=3, max_size=8))
    nic, reference = interpreter.ConnTracker(), interpreter.ConnTracker()
    by_nic = dropped = 0
    sent = [p for d in drawn for p in (d, reply(host, d)) if p is not None]
    for pkt in [p for d in sent for p in (d, *aimed_at_rules(plan, d))]:
        expected = software_alone(host.pipeline, pkt, reference)
        drop = dropped_by_nic(plan, pkt, nic)
        assert hw_then_sw(host.pipeline, plan, pkt, nic) == expected, (profile, pkt, plan.rules_of(pkt["in_port"]))
        by_nic += forwarded_by_nic(plan, pkt)
        if drop:  # a packet the NIC drops is one the pipeline drops
            assert expected == (), (profile, pkt, expected, plan.rules_of(pkt["in_port"]))
            dropped += 1
    event(f"{profile}: {'a packet forwarded by a NIC rule' if by_nic else 'every packet left to software'}")
    event(f"{profile}: {'a packet dropped by a NIC rule' if dropped else 'no packet dropped by a NIC rule'}")
    stats["examples"] += 1
    stats["by_nic"] += bool(by_nic)
    stats["dropped"] += bool(dropped)
    stats[profile] += 1
    stats[profile, "by_nic"] += bool(by_nic)


def test_a_compiled_host_split_never_changes_a_verdict(nic_share):
    """The examples are the same in every run (derandomized), so the floors below are a fact about the test,
    not a draw (for one version of hypothesis): 58% of them forward a packet by a NIC rule over all profiles,
    62% on mlx5 (randomized runs of 200 measured 56-71% over all, 55-71% on mlx5; every example sends three
    packets at least); and 45% drop a packet by a NIC drop rule (measured 61%: port security's anti-spoofing,
    a security group's deny, no route). The floors are lower than before IPv6 and NAT joined the generator: a
    NAT's first packet is software's, and ICMPv6 (echo, neighbor discovery) stays in software on the shipped
    profiles (none claims an ICMP match: drivers/mlx5.py says why mlx5's does not yet).
    Under the floors, the proof has stopped reaching the NIC and compares the interpreter with itself. Its
    randomized twin below explores new examples on every run."""
    stats: collections.Counter = collections.Counter()

    @settings(max_examples=200, deadline=None, derandomize=True, database=None)
    @given(st.data(), hosts(), st.sampled_from(PROFILES))
    def check(data, host: Host, profile: str) -> None:
        _check(data, host, profile, stats)

    check()
    nic_share.update(examples=stats["examples"], by_nic=stats["by_nic"], dropped=stats["dropped"])
    assert stats["by_nic"] >= stats["examples"] // 2, stats
    assert stats["mlx5-connectx6dx", "by_nic"] >= stats["mlx5-connectx6dx"] * 55 // 100, stats
    assert stats["dropped"] * 100 >= stats["examples"] * 45, stats


@settings(max_examples=200, deadline=None)
@given(st.data(), hosts(admin_states=True), st.sampled_from(PROFILES))
def test_a_compiled_host_split_never_changes_a_verdict_on_fresh_examples(data, host: Host, profile: str):
    _check(data, host, profile, collections.Counter())


@settings(max_examples=100, deadline=None)
@given(st.data(), hosts(admin_states=True))
def test_a_rule_the_nic_refuses_leaves_its_paths_and_what_it_shadows_to_software(data, host: Host):
    """The NIC turns one of the plan's rules down (ENOSPC, say): the plan made again without it still gives
    every packet its verdict, and holds no rule of that match in that place."""
    offload = offload_of(host, "mlx5-connectx6dx")
    first = Partitioner(host.joins).plan(host.pipeline, offload, ETHERTYPES, {})
    rules = [r for port in sorted(first.own.keys() | first.reaches.keys()) for r in first.rules_of(port)]
    assume(rules)
    victim = data.draw(st.sampled_from(rules))
    scope = SHARED if victim.shared else victim.in_port
    plan = Partitioner(host.joins).plan(host.pipeline, offload, ETHERTYPES,
                                        {(scope, victim.match): "ENOSPC"})
    assert not any(r.match == victim.match and r.chain == victim.chain and (r.shared or r.in_port == scope)
                   for port in offload for r in plan.rules_of(port))
    nic, reference = interpreter.ConnTracker(), interpreter.ConnTracker()
    drawn = data.draw(st.lists(packets(host), min_size=1, max_size=6))
    sent = [p for d in drawn for p in (d, reply(host, d)) if p is not None]
    for pkt in [p for d in sent for p in (d, *aimed_at_rules(first, d), *aimed_at_rules(plan, d))]:
        expected = software_alone(host.pipeline, pkt, reference)
        assert hw_then_sw(host.pipeline, plan, pkt, nic) == expected, (pkt, victim)
