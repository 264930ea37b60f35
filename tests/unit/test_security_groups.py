"""Security groups, checked with the reference interpreter and its connection tracker."""

from __future__ import annotations

import ipaddress
import logging

from hypothesis import given, settings
from hypothesis import strategies as st

from hwflow.apps.base import mac_int
from hwflow.apps.compiler import Compiler, layout_path
from hwflow.apps.port_security import link_local
from hwflow.apps.security_groups import port_masks
from hwflow.model.objects import Network, Port, SecurityGroup, SecurityGroupRule
from hwflow.pipeline import interpreter, ir
from hwflow.pipeline import topology as topology_module
from hwflow.pipeline.topology import Topology

NET = Network(id="n", name="n", vni=5, unique_key=1)
ADDR = {"server": "10.0.0.1", "client": "10.0.0.2", "other": "10.0.0.9", "open": "10.0.0.4"}
KEYS = {"server": 11, "client": 12, "other": 13, "open": 14}
GROUPS = {g: SecurityGroup(id=g, name=g, unique_key=k + 1) for k, g in enumerate(("ssh", "clients", "plain"))}


def mac_of(name: str) -> str:
    return f"fa:16:3e:00:00:{KEYS[name] & 0xFF:02x}"


def mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def rule(rid: str, group: str, direction: str, **fields) -> SecurityGroupRule:
    return SecurityGroupRule(id=rid, name=rid, security_group_id=group, direction=direction, **fields)


EGRESS_ALL = [rule(f"{g}-out", g, "egress") for g in GROUPS]
SSH_IN = rule("ssh-in", "ssh", "ingress", protocol="tcp", port_min=22, port_max=22)


def port(name: str, groups=(), key: int | None = None) -> Port:
    return Port(id=name, name=name, network_id="n", mac=mac_of(name), ips=[ADDR[name]],
                unique_key=key or KEYS[name], security_groups=list(groups))


def topology(rules=(), **groups) -> Topology:
    """server in ssh, client and other in plain unless ``groups`` says otherwise; open has none."""
    membership = {"server": ["ssh"], "client": ["plain"], "other": ["plain"], "open": [], **groups}
    ports = {name: port(name, g) for name, g in membership.items()}
    every_rule = {r.id: r for r in (*EGRESS_ALL, SSH_IN, *rules)}
    return Topology("h", {"n": NET}, ports, set(ports),
                    others={"security_group": GROUPS, "security_group_rule": every_rule})


class Wire:
    """Packets between the test's ports through one pipeline, with conntrack kept across packets."""

    def __init__(self, topo: Topology) -> None:
        self.topo = topo
        self.compiler = Compiler.from_file(layout_path(""))
        self.pipeline = self.compiler.compile(topo)
        self.ct = interpreter.ConnTracker()

    def change(self, kind: str, obj_id: str, obj) -> None:
        self.compiler.update(self.topo, self.topo.apply(kind, obj_id, obj))
        self.pipeline = self.compiler.pipeline()

    def tcp(self, src: str, dst: str, sport: int, dport: int) -> bool:
        return self.send(src, dst, ip_proto=6, tcp_src=sport, tcp_dst=dport)

    def send(self, src: str, dst: str, **fields: int) -> bool:
        """Did a packet from ``src`` reach ``dst`` (and only it)?"""
        pkt = {"in_port": KEYS[src], "eth_src": mac(mac_of(src)), "eth_dst": mac(mac_of(dst)),
               "eth_type": ir.ETH_TYPE_IPV4, "ipv4_src": ip(ADDR[src]), "ipv4_dst": ip(ADDR[dst]), "ip_ttl": 64,
               **fields}
        return interpreter.run(self.pipeline, pkt, self.ct).ports == (KEYS[dst],)


def test_only_ssh_gets_in_and_its_replies_get_out():
    wire = Wire(topology())
    assert wire.tcp("client", "server", 40000, 22)
    assert wire.tcp("server", "client", 22, 40000)  # the reply
    assert wire.tcp("client", "server", 40000, 22)
    assert not wire.tcp("client", "server", 40001, 80)
    assert not wire.send("client", "server", ip_proto=1, icmp_type=8, icmp_code=0)


def test_the_server_side_cannot_open_a_connection_to_a_client_without_ingress_rules():
    wire = Wire(topology())
    assert not wire.tcp("server", "client", 22, 40000)  # unsolicited: no connection to reply to
    assert wire.tcp("client", "server", 40000, 22)
    assert not wire.tcp("server", "client", 5555, 40000)  # new, from another port of the server
    assert not wire.tcp("server", "client", 22, 40001)  # not the connection's ports


def test_arp_neighbour_discovery_dhcp_and_unfiltered_ports_pass():
    wire = Wire(topology())
    arp = {"eth_type": ir.ETH_TYPE_ARP, "arp_op": 2, "arp_spa": ip(ADDR["client"]), "arp_tpa": ip(ADDR["server"])}
    assert wire.send("client", "server", **arp)
    v6 = {"eth_type": ir.ETH_TYPE_IPV6, "ipv6_src": link_local(mac_int(mac_of("client")))[1],
          "ipv6_dst": link_local(mac_int(mac_of("server")))[1], "ip_proto": 58}
    assert wire.send("client", "server", **v6, icmp_type=135, icmp_code=0)  # neighbour solicitation
    assert not wire.send("client", "server", **v6, icmp_type=128, icmp_code=0)  # echo: no IPv6 ingress rule
    assert not wire.send("server", "client", **v6, icmp_type=134, icmp_code=0)  # no router advertisements from a VM
    no_egress = Wire(topology())
    no_egress.change("security_group_rule", "plain-out", None)
    assert not no_egress.send("client", "open", ip_proto=17, udp_src=68, udp_dst=53)
    dhcp = {"ipv4_src": 0, "ip_proto": 17, "udp_src": 68, "udp_dst": 67}
    assert no_egress.send("client", "open", **dhcp)  # DHCP discovery passes even with no egress rule
    assert wire.tcp("open", "client", 1, 2) is False  # the client filters what it receives...
    assert wire.tcp("client", "open", 3, 4)  # ...the open port nothing
    assert wire.tcp("open", "server", 5, 22)


def test_remote_group_admits_exactly_the_groups_members_and_follows_membership():
    from_clients = rule("from-clients", "plain", "ingress", protocol="tcp", port_min=80, port_max=89,
                        remote_group_id="clients")
    wire = Wire(topology([from_clients], client=["clients"]))
    assert wire.tcp("client", "other", 40000, 85)  # client is in "clients"
    assert not wire.tcp("server", "other", 40000, 85)
    assert not wire.tcp("client", "other", 40000, 90)
    wire.change("port", "server", port("server", ["ssh", "clients"]))
    assert wire.tcp("server", "other", 40001, 85)
    wire.change("port", "client", port("client", []))
    assert not wire.tcp("client", "other", 40002, 85)


def test_a_remote_groups_peers_include_its_members_allowed_address_pairs():
    from_clients = rule("from-clients", "plain", "ingress", remote_group_id="clients")
    wire = Wire(topology([from_clients], server=["clients"]))
    spoofer = Port(id="open", name="open", network_id="n", mac=mac_of("open"), unique_key=KEYS["open"],
                   port_security=False)  # may send from any address
    wire.change("port", "open", spoofer)
    assert not wire.send("open", "other", ipv4_src=ip("10.0.0.13"), ip_proto=6, tcp_src=1, tcp_dst=2)
    paired = Port(id="server", name="server", network_id="n", mac=mac_of("server"), ips=[ADDR["server"]],
                  unique_key=KEYS["server"], security_groups=["clients"],
                  allowed_address_pairs=[{"ip_address": "10.0.0.12/30", "mac_address": mac_of("server")}])
    wire.change("port", "server", paired)
    assert wire.send("open", "other", ipv4_src=ip("10.0.0.13"), ip_proto=6, tcp_src=1, tcp_dst=2)
    assert not wire.send("open", "other", ipv4_src=ip("10.0.0.17"), ip_proto=6, tcp_src=1, tcp_dst=2)


def test_remote_cidr_is_a_masked_source_ingress_and_destination_egress():
    cidr_in = rule("cidr-in", "ssh", "ingress", remote_ip_prefix="10.0.0.0/30")
    wire = Wire(topology([cidr_in], client=["plain"]))
    assert wire.tcp("client", "server", 40000, 8080)  # 10.0.0.2 is in 10.0.0.0/30
    assert not wire.tcp("other", "server", 40000, 8080)  # 10.0.0.9 is not
    egress = rule("cidr-out", "clients", "egress", remote_ip_prefix="10.0.0.8/29")
    wire = Wire(topology([egress], client=["clients"], other=[]))
    wire.change("security_group_rule", "clients-out", None)  # leaves only cidr-out for the client
    assert wire.tcp("client", "other", 40000, 9)  # to 10.0.0.9
    assert not wire.tcp("client", "open", 40000, 9)  # to 10.0.0.4


def test_rules_added_and_removed_take_effect_incrementally():
    wire = Wire(topology())
    wire.change("security_group_rule", "ssh-in", None)
    assert not wire.tcp("client", "server", 40000, 22)
    icmp = rule("ping", "ssh", "ingress", protocol="icmp", icmp_type=8)
    wire.change("security_group_rule", "ping", icmp)
    assert not wire.send("client", "server", ip_proto=1, icmp_type=13, icmp_code=0)
    assert wire.send("client", "server", ip_proto=1, icmp_type=8, icmp_code=0)
    assert wire.send("server", "client", ip_proto=1, icmp_type=0, icmp_code=0)  # the echo reply


def test_rules_that_come_and_go_leave_no_cached_terms_behind():
    """The agent's group index lives as long as the agent: the terms it caches by rule id go with the rule
    (the soak's churn of rule changes grew it by every rule ever added)."""
    wire = Wire(topology())
    assert wire.tcp("client", "server", 40000, 22)
    indexes = [wire.compiler.apps[name]._index for name in ("sg_ingress", "sg_egress")]
    before = [set(index._terms) for index in indexes]
    for n in range(5):
        wire.change("security_group_rule", f"tmp{n}", rule(f"tmp{n}", "ssh", "ingress", protocol="tcp",
                                                            port_min=1000 + n, port_max=1000 + n))
        assert wire.tcp("client", "server", 40000, 1000 + n)
        wire.change("security_group_rule", f"tmp{n}", None)
        assert not wire.tcp("client", "server", 41000, 1000 + n)  # a new connection: the first is tracked
    assert [set(index._terms) for index in indexes] == before
    assert wire.tcp("client", "server", 40000, 22)


def test_a_port_in_several_groups_gets_what_any_of_them_allows():
    wire = Wire(topology([rule("web", "plain", "ingress", protocol="tcp", port_min=80, port_max=80)],
                         server=["ssh", "plain"]))
    assert wire.tcp("client", "server", 40000, 22)
    assert wire.tcp("client", "server", 40000, 80)
    assert not wire.tcp("client", "server", 40000, 81)


def test_a_groups_rules_are_shared_by_its_ports_so_a_port_costs_the_same_whatever_the_rules():
    many = [rule(f"r{i}", "plain", "ingress", protocol="tcp", port_min=1000 + i, port_max=1000 + i)
            for i in range(20)]
    wire = Wire(topology(many))
    before = len(wire.pipeline.flows)
    wire.change("port", "open", port("open", ["plain"]))
    # per stage: IPv4 and IPv6 into conntrack and their commits; plus the port's classify/unicast/... elsewhere
    added = [f for f in wire.pipeline.flows
             if f.owner == ("port", "open") and "sg_" in wire.pipeline.table_names[f.table]]
    assert len(added) == 8
    assert len(wire.pipeline.flows) - before == 8
    assert wire.tcp("client", "open", 40000, 1007) and not wire.tcp("client", "open", 40000, 22)


def test_a_port_whose_key_is_no_conntrack_zone_gets_a_zone_of_its_own(monkeypatch):
    monkeypatch.setitem(KEYS, "server", 0x12345)  # beyond the 16-bit zones: database keys are never reused
    wire = Wire(topology())
    zones = {a.zone for f in wire.pipeline.flows if f.owner == ("port", "server") for a in f.actions
             if isinstance(a, ir.Conntrack)}
    assert zones == {topology_module.LOCAL_NUMBERS}  # numbered from the top down, clear of the small keys
    assert wire.tcp("client", "server", 40000, 22) and wire.tcp("server", "client", 22, 40000)
    assert not wire.tcp("client", "server", 40001, 80)


def test_a_port_beyond_the_hosts_zones_is_cut_off_with_an_error(monkeypatch, caplog):
    monkeypatch.setattr(topology_module, "LOCAL_NUMBERS", 3)  # server, client and other (keys 11-13) take 3, 2, 1
    with caplog.at_level(logging.ERROR):
        wire = Wire(topology(open=["plain"]))
    assert wire.topo.local_number("open") is None
    assert not wire.tcp("open", "server", 40000, 22)
    assert wire.tcp("client", "server", 40000, 22)  # the others still work
    assert "port open: no conntrack zone left on this host" in caplog.text
    wire.change("port", "other", None)  # a zone given back is taken by the next port that needs one
    wire.compiler.update(wire.topo, wire.topo.set_local("open", False) + wire.topo.set_local("open", True))
    wire.pipeline = wire.compiler.pipeline()
    assert wire.topo.local_number("open") == 1
    assert wire.tcp("open", "server", 40000, 22)


PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1}


@st.composite
def ingress_rules(draw, rid: str) -> SecurityGroupRule:
    protocol = draw(st.sampled_from(["", "tcp", "udp", "icmp"]))
    fields: dict = {"protocol": protocol,
                    "remote_ip_prefix": draw(st.sampled_from(["", "10.0.0.0/30", "10.0.0.8/29", "10.0.0.4/32"]))}
    if protocol in ("tcp", "udp") and draw(st.booleans()):
        low = draw(st.integers(1, 40))
        fields.update(port_min=low, port_max=draw(st.integers(low, 40)))
    if protocol == "icmp" and draw(st.booleans()):
        fields.update(icmp_type=draw(st.sampled_from([0, 8])), icmp_code=draw(st.sampled_from([-1, 0, 1])))
    return rule(rid, "ssh", "ingress", **fields)


def allows(r: SecurityGroupRule, source: str, proto: int, dport: int, icmp: tuple[int, int]) -> bool:
    """Neutron's reading of one ingress rule, written independently of the app."""
    return ((not r.protocol or PROTOCOLS[r.protocol] == proto)
            and ((r.port_min, r.port_max) == (0, 0) or r.port_min <= dport <= r.port_max)
            and r.icmp_type in (-1, icmp[0]) and r.icmp_code in (-1, icmp[1])
            and (not r.remote_ip_prefix
                 or ipaddress.ip_address(ADDR[source]) in ipaddress.ip_network(r.remote_ip_prefix)))


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 4).flatmap(lambda n: st.tuples(*(ingress_rules(f"r{i}") for i in range(n)))),
       st.sampled_from(["client", "other", "open"]), st.sampled_from(sorted(PROTOCOLS.values())),
       st.integers(1, 45), st.sampled_from([(0, 0), (8, 0), (8, 1), (3, 3)]))
def test_a_new_connection_gets_in_exactly_when_some_rule_allows_it(rules, source, proto, dport, icmp):
    topo = topology(rules)
    topo.apply("security_group_rule", "ssh-in", None)
    wire = Wire(topo)
    fields = ({"icmp_type": icmp[0], "icmp_code": icmp[1]} if proto == 1 else
              {"tcp_src": 40000, "tcp_dst": dport} if proto == 6 else {"udp_src": 40000, "udp_dst": dport})
    expected = any(allows(r, source, proto, dport if proto != 1 else 0, icmp) for r in rules)
    assert wire.send(source, "server", ip_proto=proto, **fields) == expected


@settings(max_examples=300, deadline=None)
@given(st.integers(1, 65535), st.integers(0, 300), st.integers(0, 65535))
def test_port_masks_cover_exactly_the_range(low, span, probe):
    high = min(low + span, 65535)
    masks = port_masks(low, high)
    assert sum(probe & m == v for v, m in masks) == (low <= probe <= high)
    assert all(v & ~m == 0 for v, m in masks)


# --- incremental == full ------------------------------------------------------------------------------------

SG_PORTS = ("server", "client", "other")
RULES = [
    SSH_IN,
    rule("web", "plain", "ingress", protocol="tcp", port_min=80, port_max=81),
    rule("peer", "plain", "ingress", remote_group_id="clients"),
    rule("peer6", "clients", "ingress", ethertype="IPv6", protocol="icmpv6", remote_group_id="plain"),
    rule("cidr", "clients", "egress", remote_ip_prefix="10.0.0.0/29"),
    *EGRESS_ALL,
]

ops = st.one_of(
    st.tuples(st.just("port"), st.sampled_from(SG_PORTS),
              st.one_of(st.none(), st.lists(st.sampled_from(sorted(GROUPS)), unique=True, max_size=2))),
    st.tuples(st.just("local"), st.sampled_from(SG_PORTS), st.booleans()),
    st.tuples(st.just("rule"), st.sampled_from(range(len(RULES))), st.booleans()),
    st.tuples(st.just("group"), st.sampled_from(sorted(GROUPS)), st.sampled_from([None, 0, 5, 6, "described"])),
)


def stored_group(group_id: str, spec: int | str | None) -> SecurityGroup | None:
    """A group stored with key ``spec`` (0: not stored yet), described anew (same key 5), or gone (None)."""
    if spec is None:
        return None
    if spec == "described":
        return SecurityGroup(id=group_id, name=group_id, unique_key=5, description="described anew")
    return SecurityGroup(id=group_id, name=group_id, unique_key=spec)


@settings(max_examples=150, deadline=None)
@given(st.lists(ops, max_size=20))
def test_incremental_equals_full_compile(operations):
    topo = Topology("h", {"n": NET}, others={"security_group": GROUPS})
    compiler = Compiler.from_file(layout_path(""))
    compiler.compile(topo)
    for op, a, b in operations:
        if op == "port":
            changes = topo.apply("port", a, None if b is None else port(a, b))
        elif op == "local":
            changes = topo.set_local(a, b)
        elif op == "group":
            changes = topo.apply("security_group", a, stored_group(a, b))
        else:
            changes = topo.apply("security_group_rule", RULES[a].id, RULES[a] if b else None)
        compiler.update(topo, changes)
        full = Compiler.from_file(layout_path("")).compile(
            Topology("h", dict(topo.networks), dict(topo.ports), set(topo.local_port_ids),
                     others={k: dict(topo.of(k)) for k in ("security_group", "security_group_rule")}))
        assert set(compiler.pipeline().flows) == set(full.flows)
