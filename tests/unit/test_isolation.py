"""Tenants never leak, and no port sends from an address it does not own (issue 16, part 3).

The topologies are random and multi-tenant: two to four tenants, each with one or two networks that overlap
the other tenants' (every tenant's first network is 10.0.0.0/24 and fd00::/64, its ports take .10-.12 there,
and a port's MAC is now and then its twin's in another tenant: the model keeps MACs unique per network only),
a router of the tenant joining some of its networks, security groups with rules that name remote groups, port
security on or off, allowed address pairs, ports and networks now and then administratively down (issue 17; in
the randomized property), and now and then a flat external network behind the uplink that the routers use as
their gateway (SNAT to this host's address, floating IPs for some local ports). Packets come from a local port
with its own addresses or with another's (often its twin's in another tenant), aimed at any address of any
tenant (through the router where the sender has one), from the tunnel, and from behind the uplink; every
delivery is answered by its receiver, so connections get established and SNAT replies come back.

An ORACLE written from the logical model alone (not from the pipeline) says what may happen: a port that is
administratively down, or on a network that is, sends and receives nothing; a packet from a port with port
security leaves only from the port's MAC and addresses (its fixed IPs, its EUI-64 link-local address, its
allowed address pairs, and the address-less DHCP discovery and duplicate-address detection a
booting VM sends); it reaches ports of its own network, of another network of its tenant joined to its own by
one of the tenant's routers, the outside through a router of its network with a gateway (leaving from its
floating IP or, when the router SNATs, from this host's address and from nothing else), and from the outside a
port is reached only at its floating IP or as the reply of a connection the port opened; the sender's egress
and the receiver's ingress security groups admit it (a rule, or a connection either port's traffic set up).
The oracle allows more than the pipeline does (ARP, DHCP, routing of IPv6, conntrack's finer points), never
less. Every delivery of the reference interpreter, and of "NIC rules first, OVS on a miss" for each NIC profile
the equivalence tests use (with packets aimed at the plan's rules besides), must be one the oracle allows.
"""

from __future__ import annotations

import collections
import dataclasses
import ipaddress
from collections.abc import Mapping

from hypothesis import assume, event, given, settings, target
from hypothesis import strategies as st
from nic_model import aimed_at_rules, forwarded_by_nic, hw_then_sw, software_alone
from test_split_compiled import (
    CHASSIS,
    ETHERTYPES,
    EXTERNAL_IP,
    HERE,
    NETWORK_ADMIN_STATES,
    OUTSIDE,
    PORT_ADMIN_STATES,
    PROFILES,
    RULES,
    TUN,
    UPLINK,
    Host,
    _mac_text,
    offload_of,
    reply,
)

from hwflow.apps import l3
from hwflow.apps.base import mac_int
from hwflow.apps.compiler import Compiler, layout_path
from hwflow.apps.port_security import link_local
from hwflow.model.objects import (
    PROTOCOL_NAMES,
    FloatingIP,
    Network,
    Port,
    Router,
    RouterPort,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)
from hwflow.offload.partition import Partitioner, Plan
from hwflow.pipeline import interpreter, ir
from hwflow.pipeline.topology import Topology

EXT = "ext"
NIC_PROFILES = tuple(sorted(set(PROFILES)))
PROTOCOLS = {name: int(number) for number, name in PROTOCOL_NAMES.items()}
BROADCAST = 0xFFFFFFFFFFFF
MULTICAST_BIT = 1 << 40
INTERNET = int(ipaddress.IPv4Address("8.8.8.8"))
# Neutron's: what a security group never filters (neighbour discovery, MLD, router solicitations and, towards the
# port, advertisements; DHCP and DHCPv6 requests from the port and replies to it), as (ethertype, proto, a, b):
# ICMPv6 types, or UDP source and destination ports
UNFILTERED = {
    "egress": {(6, 58, t, None) for t in (130, 131, 132, 143, 133, 135, 136)} | {(4, 17, 68, 67), (6, 17, 546, 547)},
    "ingress": {(6, 58, t, None) for t in (130, 131, 132, 143, 133, 134, 135, 136)} | {(4, 17, 67, 68),
                                                                                        (6, 17, 547, 546)},
}
Key = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Address:
    """An address a packet may be aimed at or sent from, and whose it is."""

    tenant: str
    network: str
    mac: int
    ipv4: int
    ipv6: int


@dataclasses.dataclass
class World:
    host: Host  # the compiled host, as the equivalence tests build it (their NIC offload reads it)
    addresses: list[Address]  # every port's, router port's and allowed address pair's


@st.composite
def worlds(draw, admin_states: bool = False) -> World:
    """A random multi-tenant host (module doc); ports and networks now and then down with ``admin_states`` (only
    the randomized property draws them: see test_split_compiled's ``PORT_ADMIN_STATES``)."""
    keys = iter(range(1, 1000))
    nets: dict[str, Network] = {}
    subnets: dict[str, Subnet] = {}
    ports: dict[str, Port] = {}
    rps: dict[str, RouterPort] = {}
    routers: dict[str, Router] = {}
    fips: dict[str, FloatingIP] = {}
    external = draw(st.integers(0, 3)) > 0
    if external:
        nets[EXT] = Network(id=EXT, name=EXT, network_type="flat", physical_network="physnet1", external=True,
                            unique_key=next(keys), project_id="admin")
        subnets["sext"] = Subnet(id="sext", name="sext", network_id=EXT, cidr="198.51.100.0/24",
                                 gateway_ip="198.51.100.1", project_id="admin")
        for name, (mac, ip) in OUTSIDE.items():
            ports[name] = Port(id=name, name=name, network_id=EXT, mac=_mac_text(mac), ips=[ip], unique_key=next(keys),
                               project_id="admin", port_security=False)
    groups = {f"t{t}g{k}": SecurityGroup(id=f"t{t}g{k}", name=f"t{t}g{k}", project_id=f"t{t}", unique_key=2 * t + k + 1)
              for t in range(4) for k in range(2)}
    rules: dict[str, SecurityGroupRule] = {}
    n_tenants = draw(st.integers(2, 4))
    for t in range(n_tenants):
        tenant = f"t{t}"
        own_groups = [g for g in groups if g.startswith(tenant)]
        for g in own_groups:
            for j in draw(st.sets(st.integers(0, len(RULES)), min_size=1, max_size=3)):
                direction, fields = RULES[j] if j < len(RULES) else ("ingress", {
                    "remote_group_id": draw(st.sampled_from(sorted(groups)[:2 * n_tenants]))})
                rules[f"{g}-{j}"] = SecurityGroupRule(id=f"{g}-{j}", name=f"{g}-{j}", security_group_id=g,
                                                      direction=direction, project_id=tenant, **fields)
        joined = []
        for j in range(draw(st.integers(1, 2))):
            nid = f"{tenant}n{j}"
            nets[nid] = Network(id=nid, name=nid, vni=100 + 10 * t + j, unique_key=next(keys), project_id=tenant,
                                admin_state_up=draw(NETWORK_ADMIN_STATES) if admin_states else True)
            for suffix, cidr, gateway in (("", f"10.0.{j}.0/24", f"10.0.{j}.1"),
                                          ("v6", f"fd00:0:0:{j}::/64", f"fd00:0:0:{j}::1")):
                subnets[nid + suffix] = Subnet(id=nid + suffix, name=nid + suffix, network_id=nid, cidr=cidr,
                                               gateway_ip=gateway, project_id=tenant)
            for h in sorted(draw(st.sets(st.integers(10, 12), min_size=1, max_size=3))):
                pid = f"{nid}p{h}"
                # a twin's MAC (the same in every tenant) or the tenant's own
                mac = f"fa:16:3e:00:{j:02x}:{h:02x}" if draw(st.booleans()) else f"fa:16:3e:{t + 1:02x}:{j:02x}:{h:02x}"
                secured = draw(st.integers(0, 4)) > 0
                pairs = draw(st.sampled_from((
                    [], [], [{"ip_address": f"10.0.{j}.99", "mac_address": mac}],
                    [{"ip_address": f"10.0.{j}.96/28", "mac_address": f"fa:16:3e:aa:{t:02x}:{h:02x}"}],
                    [{"ip_address": f"fd00:0:0:{j}::99", "mac_address": mac}]))) if secured else []
                ports[pid] = Port(
                    id=pid, name=pid, network_id=nid, mac=mac, unique_key=next(keys), project_id=tenant,
                    ips=[f"10.0.{j}.{h}", f"fd00:0:0:{j}::{h:x}"],
                    chassis=draw(st.sampled_from(("", "", "", "c0", "c1"))), port_security=secured,
                    admin_state_up=draw(PORT_ADMIN_STATES) if admin_states else True,
                    security_groups=draw(st.lists(st.sampled_from(own_groups), max_size=2, unique=True))
                    if secured else [],
                    allowed_address_pairs=pairs)
            if draw(st.integers(0, 2)):
                joined.append(nid)
        if joined:
            rid = f"{tenant}r"
            gateway = external and draw(st.integers(0, 3)) > 0
            routers[rid] = Router(id=rid, name=rid, project_id=tenant, unique_key=t + 1,
                                  gateway_network_id=EXT if gateway else "",
                                  gateway_ip=f"198.51.100.{2 + t}" if gateway else "",
                                  enable_snat=draw(st.integers(0, 3)) > 0)
            for nid in joined:
                j = int(nid[-1])
                for suffix, ip, last in (("", f"10.0.{j}.1", 1), ("v6", f"fd00:0:0:{j}::1", 2)):
                    mac = f"fa:16:3e:{t + 1:02x}:{j:02x}:{last:02x}"
                    rps[f"{nid}rp{suffix}"] = RouterPort(
                        id=f"{nid}rp{suffix}", name=f"{nid}rp{suffix}", router_id=rid, network_id=nid,
                        subnet_id=nid + suffix, mac=mac, ip=ip, project_id=tenant)
    local = {pid for pid, p in ports.items() if not p.chassis and p.network_id != EXT}
    gateways = {rp.network_id for rp in rps.values() if routers[rp.router_id].gateway_network_id}
    held = [pid for pid in sorted(local) if ports[pid].network_id in gateways]
    for k, pid in enumerate(draw(st.lists(st.sampled_from(held), unique=True)) if held else ()):
        fips[f"f{k}"] = FloatingIP(id=f"f{k}", name=f"f{k}", floating_network_id=EXT, port_id=pid,
                                   floating_ip_address=f"198.51.100.{50 + k}", fixed_ip_address=ports[pid].ips[0],
                                   unique_key=k + 1, project_id=ports[pid].project_id)
    others = {"subnet": subnets, "router_port": rps, "router": routers, "security_group": groups,
              "security_group_rule": rules, "chassis": {**CHASSIS, "here": HERE}, "floating_ip": fips}
    return world_of(Topology("here", nets, ports, local, others=others))


def world_of(topo: Topology) -> World:
    """The topology compiled as the agent of "here" would, and the addresses packets are aimed at and sent from
    (each port's, each allowed address pair's, each router port's), with their tenants."""
    compiler = Compiler.from_file(layout_path(""))
    compiler.compile(topo)
    addresses = []
    for port in topo.ports.values():
        if port.network_id == EXT:
            continue
        v4, v6 = (next((_int(ip) for ip in port.ips if (":" in ip) == six), 0) for six in (False, True))
        addresses.append(Address(port.project_id, port.network_id, mac_int(port.mac), v4, v6))
        for pair in port.allowed_address_pairs:
            net = ipaddress.ip_network(pair["ip_address"])
            ip = int(net.network_address) + (net.num_addresses > 1)  # a prefix's first host
            addresses.append(Address(port.project_id, port.network_id, mac_int(pair["mac_address"]),
                                     ip if net.version == 4 else 0, ip if net.version == 6 else 0))
    for rp in topo.of("router_port").values():
        six = ":" in rp.ip
        addresses.append(Address(rp.project_id, rp.network_id, mac_int(rp.mac), 0 if six else _int(rp.ip),
                                 _int(rp.ip) if six else 0))
    external = EXT in topo.networks
    host = Host(topo, compiler.pipeline(), frozenset(compiler.layout.joins()),
                [(a.mac, a.ipv4, a.ipv6) for a in addresses], topo.local_ports(),
                [n.vni for n in topo.networks.values() if n.vni],
                [(mac, _int(ip)) for mac, ip in OUTSIDE.values()] if external else [],
                [_int(f.floating_ip_address) for f in topo.of("floating_ip").values()])
    return World(host, addresses)


def _int(text: str) -> int:
    return int(ipaddress.ip_address(text))


@dataclasses.dataclass
class Attempt:
    packet: dict[str, int]
    cross_tenant: bool  # aimed at another tenant's address
    twin: bool  # ... which the sender's tenant holds too (overlapping addresses)
    spoofed: bool  # sent by a port with port security from an address it does not own


@st.composite
def attempts(draw, world: World) -> Attempt:
    """A packet from a local port (its own addresses or another's, to any tenant's), the tunnel or the outside."""
    host = world.host
    v6 = not draw(st.integers(0, 2))
    family = "ipv6" if v6 else "ipv4"
    aimed = [a for a in world.addresses if (a.ipv6 if v6 else a.ipv4)]
    to = draw(st.sampled_from(aimed))
    dst_mac, dst_ip = to.mac, to.ipv6 if v6 else to.ipv4
    where = draw(st.sampled_from(("port",) * 5 + ("tunnel", "outside", "outside")))
    sender: Port | None = None
    tenant = ""
    if where == "outside" and host.outside and not v6:
        out_mac, out_ip = draw(st.sampled_from(host.outside))
        dst_ip = draw(st.sampled_from((*host.fips, _int(EXTERNAL_IP), dst_ip)))
        pkt = {"in_port": UPLINK, "eth_src": out_mac, "ipv4_src": draw(st.sampled_from((out_ip, INTERNET))),
               "eth_dst": l3.nat_mac(str(ipaddress.IPv4Address(dst_ip))) if draw(st.integers(0, 3)) else dst_mac}
    elif where == "tunnel" or not host.local:
        net = draw(st.sampled_from(sorted({a.network for a in world.addresses})))
        remote = draw(st.sampled_from([a for a in aimed if a.network == net]))
        pkt = {"in_port": TUN, "tun_id": host.topo.networks[net].vni, "eth_src": remote.mac,
               f"{family}_src": remote.ipv6 if v6 else remote.ipv4,
               "tun_src": _int(CHASSIS[draw(st.sampled_from(sorted(CHASSIS)))].tunnel_ip)}
        tenant = host.topo.networks[net].project_id
    else:
        port = sender = draw(st.sampled_from(host.local))
        neighbours = [a for a in aimed if a.network == port.network_id]
        if neighbours and draw(st.booleans()):  # half of them to its own network (what it may reach)
            to = draw(st.sampled_from(neighbours))
            dst_mac, dst_ip = to.mac, to.ipv6 if v6 else to.ipv4
        own_mac, own_ip = mac_int(port.mac), _int(port.ips[1 if v6 else 0])
        other = draw(st.sampled_from(aimed))
        how = draw(st.sampled_from(("own",) * 4 + ("ip", "mac", "both")))
        src_mac = other.mac if how in ("mac", "both") else own_mac
        src_ip = (other.ipv6 if v6 else other.ipv4) if how in ("ip", "both") else own_ip
        pkt = {"in_port": port.unique_key, "eth_src": src_mac, f"{family}_src": src_ip}
        tenant = port.project_id
        routers = [rp for rp in host.topo.by("router_port", "network_id", port.network_id) if (":" in rp.ip) == v6]
        outward = bool(host.outside) and not v6 and draw(st.booleans())
        if outward:
            dst_ip = draw(st.sampled_from((INTERNET, *(ip for _, ip in host.outside))))
            tenant = to.tenant  # not aimed at a tenant
        if routers and (outward or to.network != port.network_id and draw(st.integers(0, 3))):
            dst_mac = mac_int(routers[0].mac)  # through the sender's router
    if not draw(st.integers(0, 9)):
        dst_mac = BROADCAST
    proto = draw(st.sampled_from((58 if v6 else 1, 6, 6, 17)))
    pkt.update({"eth_dst": pkt.get("eth_dst", dst_mac), f"{family}_dst": dst_ip, "ip_proto": proto, "ip_ttl": 64,
                "eth_type": ir.ETH_TYPE_IPV6 if v6 else ir.ETH_TYPE_IPV4})
    if proto in (1, 58):
        pkt.update({"icmp_type": 128 if v6 else 8, "icmp_code": 0})
    else:
        l4 = "tcp" if proto == 6 else "udp"
        pkt.update({f"{l4}_src": draw(st.sampled_from((33000, 40000 + pkt["in_port"] % 1000))),
                    f"{l4}_dst": draw(st.sampled_from((22, 53, 80, 443)))})
    cross = bool(tenant) and tenant != to.tenant
    twin = cross and any(a.tenant == tenant and (a.ipv6 if v6 else a.ipv4) == dst_ip for a in world.addresses)
    return Attempt(pkt, cross, twin, sender is not None and sender.port_security and not owns(sender, pkt))


def flow_key(packet: Mapping[str, int]) -> Key | None:
    """A connection's tuple as the packet carries it (ICMP: addresses only, as conntrack's reference keys it)."""
    if "ip_proto" not in packet:
        return None
    src = packet.get("ipv4_src", packet.get("ipv6_src", 0))
    dst = packet.get("ipv4_dst", packet.get("ipv6_dst", 0))
    if packet["ip_proto"] in (6, 17):
        l4 = "tcp" if packet["ip_proto"] == 6 else "udp"
        return (packet["ip_proto"], src, dst, packet.get(f"{l4}_src", 0), packet.get(f"{l4}_dst", 0))
    return (packet["ip_proto"], src, dst)


def reverse(key: Key) -> Key:
    return (key[0], key[2], key[1], key[4], key[3]) if len(key) == 5 else (key[0], key[2], key[1])


def _source(packet: Mapping[str, int]) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if "ipv4_src" in packet:
        return ipaddress.IPv4Address(packet["ipv4_src"])
    if "ipv6_src" in packet:
        return ipaddress.IPv6Address(packet["ipv6_src"])
    if "arp_spa" in packet:
        return ipaddress.IPv4Address(packet["arp_spa"])
    return None


def owns(port: Port, packet: Mapping[str, int]) -> bool:
    """Whether ``port`` may send ``packet`` from its source MAC and address (the model: its MAC with its fixed IPs
    and its link-local address, its allowed address pairs, and a booting VM's address-less DHCP discovery and
    duplicate-address detection; without port security, anything)."""
    if not port.port_security:
        return True
    mac, source = packet["eth_src"], _source(packet)
    own = mac_int(port.mac)
    if source is None:
        return mac == own
    held = [(own, ipaddress.ip_network(ip)) for ip in port.ips]
    held.append((own, ipaddress.IPv6Network((link_local(own)[1], 128))))
    held += [(mac_int(p["mac_address"]), ipaddress.ip_network(p["ip_address"])) for p in port.allowed_address_pairs]
    if any(mac == m and source in net for m, net in held):
        return True
    booting = (packet.get("ip_proto"), packet.get("udp_src"), packet.get("udp_dst")) == (17, 68, 67) \
        if source.version == 4 else packet.get("ip_proto") == 58
    return mac == own and int(source) == 0 and booting


class Oracle:
    """What the logical model allows a packet to do (module doc), and the connections seen so far: the tuples each
    local port sent with its security groups' consent and those delivered to it, in either direction."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.local = {p.unique_key: p for p in topo.local_ports()}
        self.by_vni = {n.vni: n for n in topo.networks.values() if n.vni}
        self.joins: dict[str, set[str]] = collections.defaultdict(set)  # router -> networks it has a port on
        for rp in topo.of("router_port").values():
            self.joins[rp.router_id].add(rp.network_id)
        self.fips = {_int(f.floating_ip_address): f.port_id for f in topo.of("floating_ip").values() if f.port_id}
        self.tracked: set[tuple[str, Key]] = set()

    def tenant(self, network: str) -> str:
        return self.topo.networks[network].project_id

    def routers_of(self, network: str) -> list[Router]:
        """The routers of the network's tenant with a port on it."""
        return [r for r in self.topo.of("router").values()
                if network in self.joins[r.id] and r.project_id == self.tenant(network)]

    def reachable(self, src: str, dst: str) -> bool:
        """Same network, or two networks of one tenant joined by one of its routers."""
        return src == dst or any(dst in self.joins[r.id] and self.tenant(dst) == r.project_id
                                 for r in self.routers_of(src))

    def network_in(self, packet: Mapping[str, int]) -> str | None:
        port = self.local.get(packet["in_port"])
        if port is not None:
            return port.network_id
        if packet["in_port"] == TUN:
            net = self.by_vni.get(packet.get("tun_id", -1))
            return net.id if net is not None else None
        return EXT if packet["in_port"] == UPLINK and EXT in self.topo.networks else None

    def is_tracked(self, port: Port, packet: Mapping[str, int]) -> bool:
        key = flow_key(packet)
        return key is not None and ((port.id, key) in self.tracked or (port.id, reverse(key)) in self.tracked)

    def admits(self, port: Port, packet: Mapping[str, int], direction: str) -> bool:
        """The port's security groups let the packet through in ``direction``: a rule, a connection, or what
        Neutron never filters. A port without port security or groups is not filtered."""
        if not (port.port_security and port.security_groups) or self.is_tracked(port, packet):
            return True
        source = _source(packet)
        if source is None or "ip_proto" not in packet:
            return True  # only IP is filtered
        proto = packet["ip_proto"]
        l4 = (packet.get("icmp_type"), None) if proto in (1, 58) else (
            packet.get("udp_src"), packet.get("udp_dst")) if proto == 17 else (None, None)
        if (source.version, proto, *l4) in UNFILTERED[direction]:
            return True
        if direction == "ingress" and packet["eth_dst"] & MULTICAST_BIT:
            return True  # a flood passes ingress unfiltered
        value = packet[f"ipv{source.version}_{'src' if direction == 'ingress' else 'dst'}"]
        peer = ipaddress.IPv4Address(value) if source.version == 4 else ipaddress.IPv6Address(value)
        rules = [r for r in self.topo.of("security_group_rule").values()
                 if r.security_group_id in port.security_groups and r.direction == direction]
        return any(self._rule_admits(r, packet, source.version, peer) for r in rules)

    def _rule_admits(self, rule: SecurityGroupRule, packet: Mapping[str, int], version: int,
                     peer: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        if rule.ethertype != f"IPv{version}":
            return False
        proto = packet["ip_proto"]
        if rule.protocol and (int(rule.protocol) if rule.protocol.isdigit() else PROTOCOLS[rule.protocol]) != proto:
            return False
        if (rule.port_min, rule.port_max) != (0, 0):
            dport = packet.get("tcp_dst") if proto == 6 else packet.get("udp_dst") if proto == 17 else None
            if dport is None or not rule.port_min <= dport <= rule.port_max:
                return False
        for field in ("icmp_type", "icmp_code"):
            if getattr(rule, field) >= 0 and packet.get(field) != getattr(rule, field):
                return False
        if rule.remote_ip_prefix and peer not in ipaddress.ip_network(rule.remote_ip_prefix):
            return False
        if rule.remote_group_id:
            members = [p for p in self.topo.ports.values() if rule.remote_group_id in p.security_groups]
            held = [ipaddress.ip_network(a) for p in members
                    for a in (*p.ips, *(pair["ip_address"] for pair in p.allowed_address_pairs))]
            return any(peer in net for net in held if net.version == version)
        return True

    def sent(self, packet: Mapping[str, int]) -> str | None:
        """The sender's side of a packet from a local port: a violation if it spoofs (then nothing of it may
        arrive anywhere); a connection its egress security groups consent to is tracked. A port without port
        security may send as a neighbour (a port of its network holding the source address): the replies are
        the neighbour's to get, so the connection is tracked as the neighbour's too."""
        port = self.local.get(packet["in_port"])
        if port is None:
            return None
        if not self.topo.admin_up(port):
            return f"port {port.id} is administratively down (or its network is): it sends nothing"
        if not owns(port, packet):
            return f"port {port.id} sends from an address it does not own"
        if not self.admits(port, packet, "egress"):
            return f"port {port.id}'s egress security groups refuse it"
        key = flow_key(packet)
        if key is not None:
            self.tracked.add((port.id, key))
            if not port.port_security:
                source = str(_source(packet))
                self.tracked |= {(p.id, key) for p in self.local.values()
                                 if p.network_id == port.network_id and source in p.ips}
        return None

    def delivery(self, packet: Mapping[str, int], out_port: int, out: Mapping[str, int]) -> str | None:
        """Why the model forbids ``packet`` leaving as ``out`` through ``out_port`` (None: it allows it), once
        :meth:`sent` has passed it."""
        sender = self.local.get(packet["in_port"])
        if out_port == packet["in_port"]:
            return None  # answered back to the asker
        src = self.network_in(packet)
        if src is None:
            return f"a packet from port {packet['in_port']} on no network of this host was delivered"
        to = self.local.get(out_port)
        if to is not None:
            if not self.topo.admin_up(to):
                return f"delivered to port {to.id}, which is administratively down (or its network is)"
            if src == EXT:
                fip = self.fips.get(packet.get("ipv4_dst", -1))
                if to.network_id != EXT and fip != to.id and not self.is_tracked(to, out):
                    return f"the outside reached {to.id} at no floating IP of its, by no connection it opened"
            elif not self.reachable(src, to.network_id):
                return (f"crossed from network {src} ({self.tenant(src)}) to port {to.id} on {to.network_id} "
                        f"({self.tenant(to.network_id)})")
            if not self.admits(to, out, "ingress"):
                return f"port {to.id}'s ingress security groups refuse it"
            key = flow_key(out)
            if key is not None:
                self.tracked.add((to.id, key))
            return None
        if out_port == TUN:
            net = self.by_vni.get(out.get("tun_id", -1))
            if net is None or not self.reachable(src, net.id):
                return f"tunnelled from network {src} ({self.tenant(src)}) with VNI {out.get('tun_id')}"
            return None
        if out_port == UPLINK and EXT in self.topo.networks:
            if src == EXT:
                return None
            routers = [r for r in self.routers_of(src) if r.gateway_network_id == EXT]
            own = {ip for ip, pid in self.fips.items() if sender is not None and pid == sender.id}
            if any(r.enable_snat for r in routers):
                own.add(_int(EXTERNAL_IP))
            if sender is None or not routers or out.get("ipv4_src") not in own:
                return f"left network {src} ({self.tenant(src)}) for the outside from {out.get('ipv4_src')}"
            return None
        return f"sent out of port {out_port}, which is no port of this host"


def answer(world: World, port: int, out: dict[str, int]) -> dict[str, int] | None:
    """The receiver's answer to a delivered packet (None: a flood, or back to the asker), so connections get
    established and replies come back through SNAT and floating IPs."""
    if out["eth_dst"] & MULTICAST_BIT or "ip_proto" not in out:
        return None
    stand_in = Port(id="receiver", name="receiver", network_id="", mac=_mac_text(out["eth_dst"]), unique_key=port)
    back = reply(dataclasses.replace(world.host, local=[stand_in]), out)
    if back is not None and port == TUN:
        back.update(tun_id=out["tun_id"], tun_src=out["tun_dst"])
    return back


def _run(world: World, packets: list[dict[str, int]], deliver, violations: list[str]) -> collections.Counter:
    """Send ``packets`` one by one through ``deliver`` (packet -> outputs), checked by a fresh oracle; how many
    were delivered to another port than the sender's, to the outside, and from it."""
    oracle = Oracle(world.host.topo)
    delivered: collections.Counter = collections.Counter()
    for pkt in packets:
        outputs = deliver(pkt)
        refused = oracle.sent(pkt)
        for port, out in outputs:
            why = refused or oracle.delivery(pkt, port, out)
            if why is not None:
                violations.append(f"{why}: {pkt} -> {port} {dict(out)}")
            delivered["delivered"] += port != pkt["in_port"]
            delivered["to the outside"] += port == UPLINK
            delivered["from the outside"] += pkt["in_port"] == UPLINK and port in oracle.local
    return delivered


L4_FIELDS = {6: ("tcp_src", "tcp_dst"), 17: ("udp_src", "udp_dst"), 1: ("icmp_type", "icmp_code"),
             58: ("icmp_type", "icmp_code")}


def on_the_wire(packet: dict[str, int]) -> dict[str, int]:
    """A packet aimed at a rule of another protocol keeps its old protocol's ports: the frame holds only its own."""
    kept = L4_FIELDS.get(packet.get("ip_proto", -1), ())
    return {k: v for k, v in packet.items() if k in kept or not any(k in f for f in L4_FIELDS.values())}


def _nic_first(pipeline: ir.Pipeline, plan: Plan, packet: Mapping[str, int], tracker: interpreter.ConnTracker
               ) -> tuple[tuple[int, Mapping[str, int]], ...]:
    """:func:`hw_then_sw`, discarding the example where two NAT translations meet (as ``software_alone`` does: a
    packet aimed at a rule was not run by the reference first)."""
    try:
        return hw_then_sw(pipeline, plan, packet, tracker)
    except RuntimeError as exc:
        assume("clashes" not in str(exc))
        raise


def verdicts(world: World, drawn: list[dict[str, int]], counts: collections.Counter) -> list[str]:
    """``drawn`` and the answers to what they deliver, through the reference interpreter and through "NIC first,
    OVS on a miss" for each profile (with packets aimed at the plan's rules besides): what the oracle forbids.
    ``counts`` gets the reference's deliveries and whether a NIC rule forwarded a packet (``by_nic``, mlx5)."""
    host = world.host
    tracker = interpreter.ConnTracker()
    sequence: list[dict[str, int]] = []
    for pkt in drawn:  # the reference decides the answers, which every datapath then gets in the same order
        sequence.append(pkt)
        for port, out in software_alone(host.pipeline, pkt, tracker):
            back = answer(world, port, dict(out)) if port != pkt["in_port"] else None
            if back is not None:
                software_alone(host.pipeline, back, tracker)
                sequence.append(back)
    violations: list[str] = []
    reference = interpreter.ConnTracker()
    counts.update(_run(world, sequence, lambda p: software_alone(host.pipeline, p, reference), violations))
    for profile in NIC_PROFILES:
        plan = Partitioner(host.joins).plan(host.pipeline, offload_of(host, profile), ETHERTYPES, {})
        nic = interpreter.ConnTracker()
        aimed = [p for pkt in sequence for p in (pkt, *map(on_the_wire, aimed_at_rules(plan, pkt, most=8)))]
        _run(world, aimed, lambda p, plan=plan, nic=nic: _nic_first(host.pipeline, plan, p, nic), violations)
        counts["by_nic"] += profile.startswith("mlx5") and any(forwarded_by_nic(plan, p) for p in aimed)
    return violations


def _check(data, world: World, stats: collections.Counter) -> None:
    drawn = data.draw(st.lists(attempts(world), min_size=3, max_size=8))
    counts: collections.Counter = collections.Counter()
    violations = verdicts(world, [a.packet for a in drawn], counts)
    assert not violations, "\n".join(violations[:5])
    seen = {**{k: counts[k] for k in ("delivered", "to the outside", "from the outside", "by_nic")},
            "cross-tenant": sum(a.cross_tenant for a in drawn), "at a twin": sum(a.twin for a in drawn),
            "spoofed": sum(a.spoofed for a in drawn)}
    for kind, number in seen.items():
        event(f"{kind}: {'some' if number else 'none'}")
        stats[kind] += bool(number)
    target(float(counts["delivered"]), label="deliveries")
    target(float(seen["cross-tenant"] + seen["spoofed"]), label="hostile attempts")
    stats["examples"] += 1


FLOORS = {"delivered": 60, "to the outside": 40, "from the outside": 40, "cross-tenant": 70, "at a twin": 20,
          "spoofed": 60, "by_nic": 60}  # percent of the examples


def test_no_datapath_lets_a_tenant_leak_or_a_port_spoof(nic_share):
    """Derandomized, so the floors are a fact about the test, not a draw (see test_split_compiled). Of the 150
    examples, measured: 77% deliver a packet to another port, 57% send one to the outside and get its answer back
    through SNAT or a floating IP, 89% try to reach another tenant's address (28% one the sender's tenant holds
    too), 75% send from an address the sender does not own, and in 80% a NIC rule forwards a packet (mlx5). Under
    the floors (``FLOORS``), the property has stopped looking at traffic that could leak. Its randomized twin
    below explores new examples on every run."""
    stats: collections.Counter = collections.Counter()

    @settings(max_examples=150, deadline=None, derandomize=True, database=None)
    @given(st.data(), worlds())
    def check(data, world: World) -> None:
        _check(data, world, stats)

    check()
    nic_share.update(examples=stats["examples"], by_nic=stats["by_nic"])
    for kind, floor in FLOORS.items():
        assert stats[kind] * 100 >= stats["examples"] * floor, (kind, stats)


@settings(max_examples=100, deadline=None)
@given(st.data(), worlds(admin_states=True))
def test_no_datapath_lets_a_tenant_leak_or_a_port_spoof_on_fresh_examples(data, world: World):
    _check(data, world, collections.Counter())


def test_two_tenants_snatting_one_subnet_never_get_each_others_replies():
    """Found by the property: tenants t0 and t1 both have 10.0.0.0/24 behind a router SNATing to this host's
    address, and a VM at 10.0.0.10. t1's VM went out SNATed, and the reply, un-SNATed to 10.0.0.10, was routed
    into t0's network (the first router holding that subnet) and delivered to t0's VM. Now the first router SNATs
    the subnet here and t1's fails closed: its VM's packet does not leave, and t0's reply comes back to t0."""
    nets = {EXT: Network(id=EXT, name=EXT, network_type="flat", physical_network="physnet1", external=True,
                         unique_key=1, project_id="admin")}
    subnets = {"sext": Subnet(id="sext", name="sext", network_id=EXT, cidr="198.51.100.0/24",
                              gateway_ip="198.51.100.1")}
    ports = {name: Port(id=name, name=name, network_id=EXT, mac=_mac_text(mac), ips=[ip], unique_key=90 + k,
                        project_id="admin", port_security=False) for k, (name, (mac, ip)) in enumerate(OUTSIDE.items())}
    routers, rps = {}, {}
    for t in range(2):
        tenant = f"t{t}"
        nets[f"{tenant}n0"] = Network(id=f"{tenant}n0", name=f"{tenant}n0", vni=100 + t, unique_key=10 + t,
                                      project_id=tenant)
        subnets[f"{tenant}n0"] = Subnet(id=f"{tenant}n0", name=f"{tenant}n0", network_id=f"{tenant}n0",
                                        cidr="10.0.0.0/24", gateway_ip="10.0.0.1", project_id=tenant)
        ports[f"{tenant}vm"] = Port(id=f"{tenant}vm", name=f"{tenant}vm", network_id=f"{tenant}n0",
                                    mac=f"fa:16:3e:0{t}:00:0a", ips=["10.0.0.10"], unique_key=20 + t,
                                    project_id=tenant)
        routers[f"{tenant}r"] = Router(id=f"{tenant}r", name=f"{tenant}r", unique_key=t + 1, project_id=tenant,
                                       gateway_network_id=EXT, gateway_ip=f"198.51.100.{2 + t}")
        rps[f"{tenant}rp"] = RouterPort(id=f"{tenant}rp", name=f"{tenant}rp", router_id=f"{tenant}r",
                                        network_id=f"{tenant}n0", subnet_id=f"{tenant}n0",
                                        mac=f"fa:16:3e:0{t}:00:01", ip="10.0.0.1", project_id=tenant)
    world = world_of(Topology("here", nets, ports, {"t0vm", "t1vm"}, others={
        "subnet": subnets, "router_port": rps, "router": routers, "chassis": {**CHASSIS, "here": HERE}}))
    out = [{"in_port": 20 + t, "eth_src": mac_int(f"fa:16:3e:0{t}:00:0a"), "eth_dst": mac_int(f"fa:16:3e:0{t}:00:01"),
            "eth_type": ir.ETH_TYPE_IPV4, "ipv4_src": _int("10.0.0.10"), "ipv4_dst": INTERNET, "ip_proto": 6,
            "tcp_src": 40000 + t, "tcp_dst": 80, "ip_ttl": 64} for t in (1, 0)]
    counts: collections.Counter = collections.Counter()
    assert verdicts(world, out, counts) == []
    assert counts["to the outside"] == counts["from the outside"] == 1, counts  # t0's way out, and its reply
