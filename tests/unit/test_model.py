"""The model accepts every well-formed object and names the field of every bad one."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from hwflow.model import (
    KINDS,
    Chassis,
    FloatingIP,
    Network,
    Port,
    Router,
    RouterPort,
    SecurityGroupRule,
    Subnet,
    ValidationError,
    from_dict,
    kind_class,
)
from hwflow.model.objects import MAX_DATAPATH_KEY, MAX_VNI

octet = st.integers(0, 255)


def mac_text(octets: list[int], upper: bool) -> str:
    text = ":".join(f"{o:02x}" for o in octets)
    return text.upper() if upper else text


unicast_macs = st.builds(
    mac_text,
    st.lists(octet, min_size=6, max_size=6).map(lambda o: [o[0] & 0xFE, *o[1:]]).filter(any),
    st.booleans(),
)
multicast_macs = st.builds(
    mac_text, st.lists(octet, min_size=6, max_size=6).map(lambda o: [o[0] | 1, *o[1:]]), st.booleans()
)
unicast_ips = st.ip_addresses().filter(lambda a: not (a.is_multicast or a.is_unspecified))


def port(**fields) -> Port:
    base = {"id": "p1", "network_id": "n1", "mac": "fa:16:3e:00:00:01"}
    return Port(**{**base, **fields})


def rejected(obj, field: str) -> str:
    """Validate, expecting a failure whose message names the object and the field."""
    with pytest.raises(ValidationError) as info:
        obj.validate()
    message = str(info.value)
    assert message.startswith(f"{obj.kind} {obj.id}"), message
    assert re.search(rf"\b{field}\b", message), message
    return message


@given(unicast_macs)
def test_unicast_macs_are_accepted_and_lower_cased(mac):
    p = port(mac=mac)
    p.validate()
    assert p.mac == mac.lower()


@given(multicast_macs)
def test_multicast_macs_are_rejected(mac):
    assert "unicast" in rejected(port(mac=mac), "mac")


@given(st.text(max_size=20))
def test_malformed_macs_are_rejected(text):
    assume(not re.fullmatch(r"\s*[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\s*", text))
    rejected(port(mac=text), "mac")


def test_the_zero_mac_is_rejected():
    rejected(port(mac="00:00:00:00:00:00"), "mac")


@given(st.integers(1, MAX_VNI))
def test_vnis_in_range_are_accepted(vni):
    Network(id="n1", vni=vni).validate()


@given(st.integers().filter(lambda v: not 1 <= v <= MAX_VNI))
def test_vnis_out_of_range_are_rejected(vni):
    assert str(MAX_VNI) in rejected(Network(id="n1", vni=vni), "vni")


@given(st.integers())
def test_mtu_bounds(mtu):
    net = Network(id="n1", vni=1, mtu=mtu)
    if 68 <= mtu <= 9000:
        net.validate()
    else:
        rejected(net, "mtu")


@given(st.lists(unicast_ips, max_size=4, unique=True))
def test_unicast_ips_are_accepted_in_canonical_form(addresses):
    p = port(ips=[a.exploded.upper() for a in addresses])
    p.validate()
    assert p.ips == [str(a) for a in addresses]


# Drawn from the multicast ranges directly: filtering random addresses for them fails hypothesis's health check.
@given(st.one_of(st.ip_addresses(network="224.0.0.0/4"), st.ip_addresses(network="ff00::/8"),
                 st.sampled_from([ipaddress.ip_address("0.0.0.0"), ipaddress.ip_address("::")])))
def test_multicast_and_unspecified_ips_are_rejected(address):
    assert "unicast" in rejected(port(ips=[str(address)]), "ips")


@given(st.text(max_size=40))
def test_text_that_is_not_an_ip_is_rejected(text):
    try:
        ipaddress.ip_address(text)
        assume(False)
    except ValueError:
        pass
    rejected(port(ips=[text]), "ips")


def test_an_ip_listed_twice_is_rejected():
    assert "more than once" in rejected(port(ips=["10.0.0.1", "10.0.0.1"]), "ips")


def test_prefix_lengths_are_not_addresses():
    assert "no prefix length" in rejected(port(ips=["10.0.0.1/24"]), "ips")


@pytest.mark.parametrize("bad", ["", "a/b", "has space", "-leading", "x" * 256])
def test_ids_that_cannot_be_keys_are_rejected(bad):
    with pytest.raises(ValidationError, match=r"\bid\b"):
        Network(id=bad, vni=1).validate()


def test_wrong_types_are_rejected_even_when_built_directly():
    rejected(Network(id="n1", vni=True), "vni")  # a bool is not an int
    rejected(port(ips="10.0.0.1"), "ips")
    rejected(port(port_security=1), "port_security")
    rejected(port(admin_state_up="down"), "admin_state_up")
    rejected(Network(id="n1", vni=1, admin_state_up=0), "admin_state_up")


def test_a_record_written_before_admin_state_reads_as_up():
    for obj in (port(admin_state_up=False), Network(id="n1", vni=1, admin_state_up=False)):
        obj.validate()
        assert from_dict(obj.kind, obj.to_dict()).admin_state_up is False
        old = {k: v for k, v in obj.to_dict().items() if k != "admin_state_up"}
        assert from_dict(obj.kind, old).admin_state_up is True


def test_a_port_needs_a_network():
    rejected(port(network_id=""), "network_id")


def test_chassis_id_is_its_name():
    assert Chassis(name="host1").id == "host1"
    assert Chassis(id="host1").name == "host1"
    rejected(Chassis(id="host1", name="host2", tunnel_ip="10.0.0.1"), "name")


def test_chassis_rules():
    Chassis(name="h", tunnel_ip="192.0.2.1", capabilities={"nics": [{"name": "eth0"}]}).validate()
    rejected(Chassis(name="h", tunnel_ip="not-an-ip"), "tunnel_ip")
    rejected(Chassis(name="h", tunnel_ip="192.0.2.1", capabilities={"x": object()}), "capabilities")
    rejected(Chassis(name="h", tunnel_ip="192.0.2.1", heartbeat_at=float("nan")), "heartbeat_at")


objects = st.one_of(
    st.builds(
        Port, id=st.uuids().map(str), name=st.text(max_size=10).filter(str.isprintable),
        network_id=st.uuids().map(str), mac=unicast_macs.map(str.lower),
        ips=st.lists(unicast_ips.map(str), max_size=3, unique=True), chassis=st.sampled_from(["", "host-1"]),
        port_security=st.booleans(), unique_key=st.integers(0, MAX_DATAPATH_KEY), revision=st.integers(0, 2**40),
        admin_state_up=st.booleans(),
    ),
    st.builds(Network, id=st.uuids().map(str), vni=st.integers(1, MAX_VNI), mtu=st.integers(68, 9000),
              admin_state_up=st.booleans()),
    st.builds(Chassis, name=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
              tunnel_ip=unicast_ips.map(str), up=st.booleans(), heartbeat_at=st.floats(0, 2e9),
              capabilities=st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)),
)


@given(objects)
def test_to_dict_from_dict_round_trip(obj):
    obj.validate()
    assert from_dict(obj.kind, obj.to_dict()) == obj


def test_from_dict_rejects_unknown_fields_naming_them():
    with pytest.raises(ValidationError, match=r"network n1: unknown field\(s\) colour"):
        from_dict("network", {"id": "n1", "vni": 1, "colour": "red"})


@pytest.mark.parametrize("field, value", [("vni", "7"), ("mtu", 1500.0), ("name", 3), ("id", None)])
def test_from_dict_rejects_wrong_types_naming_the_field(field, value):
    with pytest.raises(ValidationError, match=rf"\b{field}\b.*must be"):
        from_dict("network", {"id": "n1", "vni": 1, field: value})


def test_from_dict_rejects_records_that_are_not_objects():
    with pytest.raises(ValidationError, match="must be a JSON object"):
        from_dict("port", ["p1"])


def test_from_dict_fills_missing_fields_with_defaults_and_validates():
    assert from_dict("network", {"id": "n1", "vni": 9}).mtu == 1500
    with pytest.raises(ValidationError, match="vni"):
        from_dict("network", {"id": "n1"})


def test_kind_names_map_to_classes():
    assert {name: kind_class(name) for name in KINDS} == dict(KINDS)
    assert set(KINDS) == {"chassis", "network", "subnet", "port", "router", "router_port", "security_group",
                          "security_group_rule", "floating_ip"}
    assert kind_class(Port) is Port
    with pytest.raises(ValidationError, match="unknown kind 'switch'; known kinds: chassis, floating_ip, network"):
        kind_class("switch")


# Network types


@pytest.mark.parametrize("fields, field", [
    ({"network_type": "vlan", "physical_network": "physnet1", "vlan_id": 0}, "vlan_id"),
    ({"network_type": "vlan", "physical_network": "physnet1", "vlan_id": 4095}, "vlan_id"),
    ({"network_type": "vlan", "physical_network": "", "vlan_id": 10}, "physical_network"),
    ({"network_type": "vlan", "physical_network": "phys net", "vlan_id": 10}, "physical_network"),
    ({"network_type": "vlan", "physical_network": "physnet1", "vlan_id": 10, "vni": 5}, "vni"),
    ({"network_type": "flat", "physical_network": "physnet1", "vlan_id": 3}, "vlan_id"),
    ({"network_type": "geneve", "vni": 0}, "vni"),
    ({"network_type": "vxlan", "vni": 5, "physical_network": "physnet1"}, "physical_network"),
    ({"network_type": "gre", "vni": 5}, "network_type"),
])
def test_network_type_rules(fields, field):
    rejected(Network(id="n1", **fields), field)


def test_provider_networks_are_unique_per_physical_network():
    vlan = Network(id="n1", network_type="vlan", physical_network="physnet1", vlan_id=10)
    flat = Network(id="n2", network_type="flat", physical_network="physnet1")
    geneve = Network(id="n3", network_type="geneve", vni=7)
    for net in (vlan, flat, geneve):
        net.validate()
    assert vlan.unique_values() == [("vlan", "10 on physical network physnet1")]
    assert flat.unique_values() == [("flat network", "on physical network physnet1")]
    assert geneve.unique_values() == [("vni", "7")]


# Subnets


prefixes = st.one_of(
    st.builds(ipaddress.IPv4Network, st.tuples(st.integers(0, 2**32 - 1), st.integers(8, 30)), st.just(False)),
    st.builds(ipaddress.IPv6Network, st.tuples(st.integers(0, 2**128 - 1), st.integers(16, 126)), st.just(False)),
)


def subnet(**fields) -> Subnet:
    return Subnet(**{"id": "s1", "network_id": "n1", "cidr": "10.0.0.0/24", **fields})


MULTICAST = (ipaddress.ip_network("224.0.0.0/4"), ipaddress.ip_network("ff00::/8"))


@given(prefixes)
def test_any_unicast_prefix_is_a_subnet_and_its_hosts_can_be_the_gateway(prefix):
    if any(prefix.version == m.version and prefix.overlaps(m) for m in MULTICAST):
        assert "multicast" in rejected(subnet(cidr=str(prefix)), "cidr")
        return
    gateway = prefix.network_address + 1
    s = subnet(cidr=str(prefix).upper(), gateway_ip=str(gateway))
    s.validate()
    assert s.cidr == str(prefix) and s.gateway_ip == str(gateway)


@given(prefixes, st.integers(1, 2**32))
def test_host_bits_and_outside_gateways_are_rejected(prefix, offset):
    host = prefix.network_address + offset % prefix.num_addresses
    assume(host != prefix.network_address)
    assume(not any(prefix.version == m.version and prefix.overlaps(m) for m in MULTICAST))
    assert "host bits" in rejected(subnet(cidr=f"{host}/{prefix.prefixlen}"), "cidr")
    outside = prefix.broadcast_address + 1 if int(prefix.broadcast_address) < 2**prefix.max_prefixlen - 1 else None
    assume(outside is not None)
    assert "must lie in" in rejected(subnet(cidr=str(prefix), gateway_ip=str(outside)), "gateway_ip")


def test_subnet_rules():
    rejected(subnet(cidr="10.0.0.0/33"), "cidr")
    rejected(subnet(cidr="10.0.0.0/31"), "cidr")
    rejected(subnet(gateway_ip="10.0.0.255"), "gateway_ip")  # broadcast
    rejected(subnet(gateway_ip="10.0.0.0"), "gateway_ip")
    rejected(subnet(dns_nameservers=["8.8.8.x"]), "dns_nameservers")
    rejected(subnet(host_routes=[{"destination": "0.0.0.0/0"}]), "host_routes")
    rejected(subnet(host_routes=[{"destination": "192.168.0.0/16", "nexthop": "10.1.0.1"}]), "host_routes")
    rejected(subnet(host_routes=[{"destination": "2001:db8::/32", "nexthop": "10.0.0.1"}]), "host_routes")
    rejected(subnet(host_routes=[{"destination": "10.9.0.1/16", "nexthop": "10.0.0.1"}]), "host_routes")
    rejected(subnet(allocation_pools=[{"start": "10.0.0.9", "end": "10.0.0.2"}]), "allocation_pools")
    rejected(subnet(allocation_pools=[{"start": "10.0.0.2", "end": "10.0.1.2"}]), "allocation_pools")
    rejected(subnet(gateway_ip="10.0.0.5", allocation_pools=[{"start": "10.0.0.2", "end": "10.0.0.9"}]),
             "allocation_pools")
    overlapping = [{"start": "10.0.0.2", "end": "10.0.0.9"}, {"start": "10.0.0.9", "end": "10.0.0.20"}]
    assert "overlap" in rejected(subnet(allocation_pools=overlapping), "allocation_pools")
    rejected(subnet(host_routes=[{"destination": 5, "nexthop": "10.0.0.1"}]), "host_routes")
    ok = subnet(gateway_ip="10.0.0.1", dns_nameservers=["2001:DB8::53"],
                host_routes=[{"destination": "192.168.0.0/16", "nexthop": "10.0.0.254"}],
                allocation_pools=[{"start": "10.0.0.100", "end": "10.0.0.200"},
                                  {"start": "10.0.0.2", "end": "10.0.0.9"}])
    ok.validate()
    assert ok.dns_nameservers == ["2001:db8::53"]
    assert [p["start"] for p in ok.allocation_pools] == ["10.0.0.2", "10.0.0.100"]


# Ports: security


def test_port_security_rules():
    port(security_groups=["sg1"], allowed_address_pairs=[{"ip_address": "10.0.0.0/24"}]).validate()
    p = port(allowed_address_pairs=[{"ip_address": "10.0.0.7", "mac_address": "FA:16:3E:00:00:09"}])
    p.validate()
    assert p.allowed_address_pairs == [{"ip_address": "10.0.0.7", "mac_address": "fa:16:3e:00:00:09"}]
    assert port(allowed_address_pairs=[{"ip_address": "10.0.0.7"}]).validate() is None
    rejected(port(port_security=False, security_groups=["sg1"]), "security_groups")
    rejected(port(port_security=False, allowed_address_pairs=[{"ip_address": "10.0.0.7"}]), "allowed_address_pairs")
    rejected(port(allowed_address_pairs=[{"mac_address": "fa:16:3e:00:00:09"}]), "allowed_address_pairs")
    rejected(port(allowed_address_pairs=[{"ip_address": "10.0.0.7/24"}]), "allowed_address_pairs")
    rejected(port(security_groups=["sg1", "sg1"]), "security_groups")
    rejected(port(security_groups=["a/b"]), "security_groups")


# Ports: extra DHCP options


def test_extra_dhcp_opts_are_stored_in_one_spelling():
    p = port(extra_dhcp_opts=[{"name": "MTU", "value": 1400}, {"name": "6", "value": "10.0.0.9 , 10.0.0.10"},
                              {"name": "router", "value": None, "ip_version": "4"},
                              {"name": "classless-static-route", "value": "10.9.0.0/16,10.0.0.254", "ip_version": 4},
                              {"name": "dns-server", "value": "2001:DB8::53", "ip_version": 6},
                              {"name": "200", "value": "free text"}])
    p.validate()
    assert p.extra_dhcp_opts == [  # sorted by IP version and name: the order means nothing
        {"name": "200", "value": "free text", "ip_version": 4},
        {"name": "classless-static-route", "value": "10.9.0.0/16,10.0.0.254", "ip_version": 4},
        {"name": "dns-server", "value": "10.0.0.9,10.0.0.10", "ip_version": 4},
        {"name": "mtu", "value": "1400", "ip_version": 4},
        {"name": "router", "value": "", "ip_version": 4},  # not sent
        {"name": "dns-server", "value": "2001:DB8::53", "ip_version": 6}]  # stored as given, not served
    reordered = port(extra_dhcp_opts=list(reversed(p.extra_dhcp_opts)))
    reordered.validate()
    assert reordered.extra_dhcp_opts == p.extra_dhcp_opts
    assert from_dict("port", p.to_dict()) == p
    old = {k: v for k, v in p.to_dict().items() if k != "extra_dhcp_opts"}  # a record written before the field
    assert from_dict("port", old).extra_dhcp_opts == []


@pytest.mark.parametrize(("entry", "message"), [
    ({"name": "mtu", "value": "big"}, "option 'mtu' value 'big' must be a whole number 68..65535"),
    ({"name": "dns-server", "value": "10.0.0.300"}, "option 'dns-server' value '10.0.0.300' must be IPv4 addresses"),
    ({"name": "classless-static-route", "value": "10.9.0.0/16"}, "must be DEST/LEN,ROUTER pairs"),
    ({"name": "tag:x,router", "value": "10.0.0.1"}, "option 'tag:x,router' is neither an option name hwflow knows"),
    ({"name": "53", "value": "1"}, "option '53' belongs to the DHCP exchange itself"),
    ({"name": "mtu", "value": "1400", "ip_version": 5}, "option 'mtu' has ip_version 5; write 4 or 6"),
    ({"name": "mtu", "value": "1400", "ip_version": True}, "write 4 or 6"),
    ({"name": "mtu", "value": ["1400"]}, "write it as text"),
    ({"name": "", "value": "x"}, "option name '' must be 1-64 printable characters"),
    ({"name": "dns-server", "value": "x" * 256, "ip_version": 6}, "over 255 characters"),
    ({"value": "1400"}, "entries must be"), ({"name": "mtu", "val": "1400"}, "entries must be")])
def test_bad_extra_dhcp_opts_name_the_port_the_option_and_what_to_write(entry, message):
    assert message in rejected(port(extra_dhcp_opts=[entry]), "extra_dhcp_opts")


def test_an_option_is_given_once_per_ip_version():
    assert "option 'mtu' (IPv4) more than once" in rejected(
        port(extra_dhcp_opts=[{"name": "mtu", "value": "1400"}, {"name": "26", "value": ""}]), "extra_dhcp_opts")
    port(extra_dhcp_opts=[{"name": "dns-server", "value": "10.0.0.9"},
                          {"name": "dns-server", "value": "2001:db8::53", "ip_version": 6}]).validate()


# Security group rules


def rule(**fields) -> SecurityGroupRule:
    return SecurityGroupRule(**{"id": "r1", "security_group_id": "sg1", **fields})


@given(st.integers(1, 65535), st.integers(1, 65535), st.sampled_from(["tcp", "udp", "sctp", "TCP", "6", "17"]))
def test_port_ranges(a, b, protocol):
    r = rule(protocol=protocol, port_min=a, port_max=b)
    if a <= b:
        r.validate()
        assert r.protocol in ("tcp", "udp", "sctp")
    else:
        rejected(r, "port_max")


def test_security_group_rule_rules():
    assert rule(protocol="58", ethertype="IPv6").validate() is None
    rejected(rule(direction="in"), "direction")
    rejected(rule(ethertype="ipv4"), "ethertype")
    rejected(rule(protocol="256"), "protocol")
    rejected(rule(protocol="ospf"), "protocol")
    rejected(rule(protocol="icmp", ethertype="IPv6"), "protocol")
    rejected(rule(protocol="icmpv6"), "protocol")
    rejected(rule(protocol="icmp", port_min=1, port_max=2), "port_min")
    rejected(rule(protocol="tcp", icmp_type=8), "icmp_type")
    rejected(rule(protocol="icmp", icmp_type=256), "icmp_type")
    rejected(rule(protocol="icmp", icmp_type=8, icmp_code=-2), "icmp_code")
    rejected(rule(remote_ip_prefix="10.0.0.0/8", remote_group_id="sg2"), "remote_group_id")
    rejected(rule(remote_ip_prefix="2001:db8::/32"), "remote_ip_prefix")
    rejected(rule(remote_ip_prefix="10.0.0.1/8"), "remote_ip_prefix")
    ok = rule(protocol="1", icmp_type=8, remote_ip_prefix="10.0.0.0/8")
    ok.validate()
    assert ok.protocol == "icmp"


# Routers and floating IPs


def test_router_and_floating_ip_rules():
    Router(id="r1", gateway_network_id="ext", gateway_ip="203.0.113.1",
           routes=[{"destination": "192.168.0.0/16", "nexthop": "10.0.0.254"}]).validate()
    rejected(Router(id="r1", gateway_ip="203.0.113.1"), "gateway_ip")
    rejected(Router(id="r1", routes=[{"destination": "192.168.0.0/16", "nexthop": "2001:db8::1"}]), "routes")
    rejected(Router(id="r1", routes=[{"destination": "192.168.0.0/16"}]), "routes")
    RouterPort(id="rp", router_id="r1", network_id="n1", subnet_id="s1", mac="fa:16:3e:00:00:01",
               ip="10.0.0.1").validate()
    rejected(RouterPort(id="rp", router_id="r1", network_id="n1", subnet_id="", mac="fa:16:3e:00:00:01",
                        ip="10.0.0.1"), "subnet_id")
    FloatingIP(id="f", floating_network_id="ext", floating_ip_address="203.0.113.5").validate()
    rejected(FloatingIP(id="f", floating_network_id="ext", floating_ip_address="2001:db8::5"), "floating_ip_address")
    rejected(FloatingIP(id="f", floating_network_id="ext", floating_ip_address="203.0.113.5",
                        fixed_ip_address="10.0.0.5"), "fixed_ip_address")


def test_chassis_tunnel_types_and_external_ip():
    c = Chassis(name="h", tunnel_ip="192.0.2.1", tunnel_types=["vxlan", "geneve", "vxlan"], external_ip="203.0.113.9")
    c.validate()
    assert c.tunnel_types == ["geneve", "vxlan"]
    rejected(Chassis(name="h", tunnel_ip="192.0.2.1", tunnel_types=["gre"]), "tunnel_types")
    rejected(Chassis(name="h", tunnel_ip="192.0.2.1", tunnel_types=[]), "tunnel_types")
    rejected(Chassis(name="h", tunnel_ip="192.0.2.1", external_ip="224.0.0.1"), "external_ip")


every_kind = st.sampled_from(sorted(KINDS))


@given(every_kind, st.dictionaries(st.text(max_size=8), st.one_of(st.none(), st.integers(), st.text(max_size=8),
                                                               st.lists(st.integers(), max_size=2)), max_size=4))
def test_from_dict_never_fails_other_than_by_validation_error(kind, data):
    """A foreign record of any shape is a ValidationError naming the kind, never another exception."""
    try:
        obj = from_dict(kind, {"id": "x1", **data})
    except ValidationError as exc:
        assert str(exc).startswith(kind)
    else:
        assert obj.kind == kind
