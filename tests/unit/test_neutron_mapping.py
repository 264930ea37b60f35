"""Neutron's resources as hwflow's objects (hwflow.neutron.mapping): the mapping of each field, and that
whatever Neutron hands over comes out as an object hwflow's model accepts or as a ValidationError naming it,
never as another exception (which Neutron would answer with a 500 and no reason)."""

from __future__ import annotations

import ipaddress
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("neutron_lib", reason="hwflow's neutron extra is not installed (pip install -e '.[test,neutron]')")
from neutron_lib import constants as n_const  # noqa: E402

from hwflow.model.errors import ValidationError  # noqa: E402
from hwflow.model.objects import NbObject, from_dict  # noqa: E402
from hwflow.neutron import mapping  # noqa: E402

IDS = st.uuids().map(str)
PROTOCOLS = st.one_of(st.sampled_from([None, "any", "tcp", "udp", "sctp", "icmp", "ipv6-icmp", "icmpv6"]),
                      st.sampled_from(sorted(n_const.IP_PROTOCOL_MAP)), st.integers(0, 255).map(str),
                      st.text(min_size=1, max_size=8))
# Mostly what Neutron lets through (a port, an ICMP type or code, none), sometimes what it would not.
RANGE_ENDS = st.one_of(st.none(), st.integers(0, 255), st.integers(1, 65535), st.integers(-1, 70000))


def _agrees_with_model(obj: NbObject) -> None:
    """What the translation made is what the database would store and read back."""
    assert from_dict(obj.kind, obj.to_dict()) == obj


@given(kind=st.sampled_from(["vxlan", "geneve", "vlan", "flat", "local", "gre"]),
       ident=st.one_of(st.none(), st.integers(0, 2**24)), physnet=st.one_of(st.none(), st.sampled_from(["physnet1"])),
       mtu=st.integers(0, 10000), external=st.booleans(), segments=st.integers(0, 2))
def test_network_is_one_segment_of_a_carried_type_or_refused(kind, ident, physnet, mtu, external, segments) -> None:
    net = {"id": str(uuid.uuid4()), "name": "n", "project_id": "p1", "mtu": mtu, "router:external": external}
    segment = {"network_type": kind, "segmentation_id": ident, "physical_network": physnet}
    try:
        made = mapping.network(net, [segment] * segments)
    except ValidationError as exc:
        assert str(exc).startswith(f"network {net['id']}")
        return
    _agrees_with_model(made)
    assert segments == 1 and kind in mapping.SEGMENT_TYPES
    assert (made.network_type, made.mtu, made.external, made.project_id) == (kind, mtu, external, "p1")
    assert (made.vni, made.vlan_id, made.physical_network) == {
        "vxlan": (ident, 0, ""), "geneve": (ident, 0, ""), "vlan": (0, ident, physnet), "flat": (0, 0, physnet),
    }[kind]


@pytest.mark.parametrize(("segments", "reason"), [
    ([{"network_type": "local"}], "network type 'local' is not one hwflow carries"),
    ([{"network_type": "vxlan", "segmentation_id": 7}] * 2, "has 2 segments"),
])
def test_network_refusal_names_the_reason(segments, reason) -> None:
    with pytest.raises(ValidationError, match=reason):
        mapping.network({"id": "n1", "mtu": 1450}, segments)


def test_subnet_fields_and_no_gateway() -> None:
    made = mapping.subnet({
        "id": "s1", "name": "", "project_id": "", "network_id": "n1", "cidr": "10.0.0.0/24", "gateway_ip": None,
        "enable_dhcp": False, "dns_nameservers": ["10.0.0.53"],
        "host_routes": [{"destination": "192.168.0.0/16", "nexthop": "10.0.0.254"}],
        "allocation_pools": [{"start": "10.0.0.2", "end": "10.0.0.200"}]})
    assert (made.gateway_ip, made.enable_dhcp, made.project_id, made.dns_nameservers) == (
        "", False, NbObject.project_id, ["10.0.0.53"])
    assert made.allocation_pools == [{"start": "10.0.0.2", "end": "10.0.0.200"}]
    assert made.host_routes == [{"destination": "192.168.0.0/16", "nexthop": "10.0.0.254"}]


PORT = {"id": "p1", "name": "vm", "project_id": "t1", "network_id": "n1", "mac_address": "fa:16:3e:00:00:01",
        "fixed_ips": [{"subnet_id": "s1", "ip_address": "10.0.0.5"}], "device_owner": "compute:nova",
        "port_security_enabled": True, "security_groups": ["g1"],
        "allowed_address_pairs": [{"ip_address": "10.0.0.77/24"}, {"ip_address": "10.0.0.9",
                                                                    "mac_address": "fa:16:3e:00:00:09"}]}


def test_port_fields_and_address_pairs() -> None:
    made = mapping.port(PORT, "chassis-1")
    assert (made.mac, made.ips, made.chassis, made.device_owner, made.security_groups) == (
        "fa:16:3e:00:00:01", ["10.0.0.5"], "chassis-1", "compute:nova", ["g1"])
    assert made.allowed_address_pairs == [{"ip_address": "10.0.0.0/24", "mac_address": "fa:16:3e:00:00:01"},
                                          {"ip_address": "10.0.0.9", "mac_address": "fa:16:3e:00:00:09"}]


ADDRESSES = st.one_of(st.ip_addresses().map(str), st.sampled_from(["10.0.0.77/24", "2001:db8::5/64", "10.0.0.0/8"]),
                      st.text(max_size=12))
MACS = st.one_of(st.just("fa:16:3e:00:00:01"), st.text(max_size=17),
                 st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)))


@given(mac=MACS, ips=st.lists(st.ip_addresses().map(str), max_size=3),
       pairs=st.lists(st.fixed_dictionaries({"ip_address": ADDRESSES}, optional={"mac_address": MACS}), max_size=3),
       security=st.booleans(), groups=st.lists(IDS, max_size=2), host=st.sampled_from(["", "compute-1"]))
def test_port_translates_or_is_refused(mac, ips, pairs, security, groups, host) -> None:
    neutron_port = {**PORT, "mac_address": mac, "fixed_ips": [{"ip_address": ip} for ip in ips],
                    "allowed_address_pairs": pairs, "port_security_enabled": security, "security_groups": groups}
    try:
        made = mapping.port(neutron_port, host)
    except ValidationError as exc:
        assert "port p1" in str(exc)
        return
    _agrees_with_model(made)
    assert (made.mac, made.chassis, made.port_security) == (mac.lower(), host, security)
    assert made.security_groups == ((groups or [mapping.DROP_ALL_GROUP]) if security else [])
    assert len(made.allowed_address_pairs) == (len(pairs) if security else 0)


def test_port_without_port_security_has_no_groups_or_pairs() -> None:
    made = mapping.port({**PORT, "port_security_enabled": False}, "")
    assert (made.port_security, made.security_groups, made.allowed_address_pairs) == (False, [], [])


def test_port_with_port_security_and_no_group_is_in_the_group_of_no_rule() -> None:
    """Neutron drops all its IP; hwflow's empty group does (an unfiltered port is one in no group)."""
    made = mapping.port({**PORT, "security_groups": []}, "")
    assert (made.port_security, made.security_groups) == (True, [mapping.DROP_ALL_GROUP])
    group = mapping.drop_all_group()
    assert (group.id, group.external_revision) == (mapping.DROP_ALL_GROUP, 0)  # hwflow's: no repair deletes it


def test_port_extra_dhcp_opts_are_written_as_neutron_stores_them() -> None:
    """Neutron stores no option of null value (it drops it), keeps "" for router and classless-static-route
    (not sent), and ip_version 4 when none is given."""
    opts = [{"opt_name": "mtu", "opt_value": "1400", "ip_version": 4},
            {"opt_name": "router", "opt_value": "", "ip_version": 4},
            {"opt_name": "domain-name", "opt_value": None, "ip_version": 4},
            {"opt_name": "dns-server", "opt_value": "[2001:db8::53]", "ip_version": 6},
            {"opt_name": "150", "opt_value": "10.0.0.9"}]
    made = mapping.port({**PORT, "extra_dhcp_opts": opts}, "")
    _agrees_with_model(made)
    assert made.extra_dhcp_opts == [{"name": "mtu", "value": "1400", "ip_version": 4},
                                    {"name": "router", "value": "", "ip_version": 4},
                                    {"name": "tftp-server-address", "value": "10.0.0.9", "ip_version": 4},
                                    {"name": "dns-server", "value": "[2001:db8::53]", "ip_version": 6}]
    assert mapping.port(PORT, "").extra_dhcp_opts == []


@given(name=st.one_of(st.sampled_from(["mtu", "router", "dns-server", "domain-name", "classless-static-route",
                                       "bootfile-name", "server-ip-address", "53", "150", "tag:pxe,67"]),
                      st.integers(-1, 256).map(str), st.text(max_size=10)),
       value=st.one_of(st.none(), st.sampled_from(["", "1400", "10.0.0.1,10.0.0.2", "10.9.0.0/16,10.0.0.1"]),
                       st.text(max_size=20)),
       version=st.sampled_from([4, 6]))
def test_extra_dhcp_opt_translates_or_is_refused_naming_the_port_and_option(name, value, version) -> None:
    opt = {"opt_name": name, "opt_value": value, "ip_version": version}
    try:
        made = mapping.port({**PORT, "extra_dhcp_opts": [opt]}, "")
    except ValidationError as exc:
        assert str(exc).startswith("port p1") and "extra_dhcp_opts" in str(exc)
        return
    _agrees_with_model(made)
    assert len(made.extra_dhcp_opts) == (value is not None)


@pytest.mark.parametrize("owner", [n_const.DEVICE_OWNER_ROUTER_INTF, n_const.DEVICE_OWNER_ROUTER_GW,
                                   n_const.DEVICE_OWNER_FLOATINGIP, n_const.DEVICE_OWNER_DVR_INTERFACE])
def test_l3_ports_are_left_to_the_l3_plugin(owner) -> None:
    assert mapping.is_l3_port({**PORT, "device_owner": owner})
    assert not mapping.is_l3_port(PORT)


@given(rule_id=IDS, group=IDS, direction=st.sampled_from(["ingress", "egress", "sideways"]),
       ethertype=st.sampled_from(["IPv4", "IPv6"]), protocol=PROTOCOLS, low=RANGE_ENDS, high=RANGE_ENDS,
       prefix=st.one_of(st.none(), st.sampled_from(["10.1.2.3/8", "2001:db8::1/32", "0.0.0.0/0", "nonsense"])),
       remote_group=st.one_of(st.none(), IDS))
def test_rule_translates_or_is_refused(rule_id, group, direction, ethertype, protocol, low, high, prefix,
                                       remote_group) -> None:
    rule = {"id": rule_id, "project_id": "t1", "security_group_id": group, "direction": direction,
            "ethertype": ethertype, "protocol": protocol, "port_range_min": low, "port_range_max": high,
            "remote_ip_prefix": prefix, "remote_group_id": remote_group}
    try:
        made = mapping.security_group_rule(rule)
    except ValidationError as exc:
        assert rule_id in str(exc)
        return
    _agrees_with_model(made)
    number = n_const.IP_PROTOCOL_MAP.get(str(protocol or "").lower(), protocol)
    if protocol in (None, "any"):
        assert made.protocol == ""
    elif made.protocol in ("icmp", "icmpv6"):  # either ICMP is the ICMP of the rule's ethertype
        assert str(number) in ("1", "58") and made.protocol == {"IPv4": "icmp", "IPv6": "icmpv6"}[ethertype]
        assert (made.icmp_type, made.icmp_code) == (-1 if low is None else low, -1 if high is None else high)
    else:
        assert str(n_const.IP_PROTOCOL_MAP.get(made.protocol, made.protocol)) == str(number)
        if low is not None or high is not None:
            assert (made.port_min, made.port_max) == (low if low is not None else high,
                                                      high if high is not None else low)
    assert made.remote_group_id == (remote_group or "")
    assert (made.direction, made.ethertype) == (direction, ethertype)


@pytest.mark.parametrize(("change", "reason"), [
    ({"remote_address_group_id": "ag1"}, "remote_address_group_id is not supported"),
    ({"protocol": "dccp", "port_range_min": 5000, "port_range_max": 5001}, "port range on protocol 33"),
    ({"protocol": "tcp", "remote_ip_prefix": "10.0.0.0/8", "ethertype": "IPv6"}, "must be an IPv6 prefix"),
])
def test_rule_refusal_names_the_reason(change, reason) -> None:
    rule = {"id": "r1", "security_group_id": "g1", "direction": "ingress", "ethertype": "IPv4", **change}
    with pytest.raises(ValidationError, match=reason):
        mapping.security_group_rule(rule)


V4, V6 = st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)


@given(name=st.text(max_size=8), gateway=st.lists(st.one_of(V4, V6), max_size=3), snat=st.booleans(),
       routes=st.lists(st.fixed_dictionaries({"destination": st.one_of(ADDRESSES, st.text(max_size=5)),
                                              "nexthop": st.one_of(V4, V6)}), max_size=3))
def test_router_translates_or_is_refused(name, gateway, snat, routes) -> None:
    """The gateway's address is its IPv4 one (hwflow's gateway holds one), else its first; routes are prefixes
    of one IP version with their next hop; anything else a ValidationError naming the router."""
    info = {"network_id": "ext", "enable_snat": snat,
            "external_fixed_ips": [{"subnet_id": "s", "ip_address": ip} for ip in gateway]} if gateway else None
    try:
        made = mapping.router({"id": "r1", "name": name, "project_id": "p1", "external_gateway_info": info,
                                 "routes": routes})
    except ValidationError as exc:
        assert str(exc).startswith("router r1")
        return
    _agrees_with_model(made)
    v4 = [ip for ip in gateway if ":" not in ip]
    assert (made.gateway_network_id, made.enable_snat) == (("ext", snat) if gateway else ("", True))
    assert made.gateway_ip == (v4 or gateway or [""])[0]
    assert made.routes == [{"destination": str(ipaddress.ip_network(r["destination"], strict=False)),
                            "nexthop": r["nexthop"]} for r in routes]


@given(fixed=st.lists(V4, max_size=3))
def test_router_interface_holds_exactly_one_address(fixed) -> None:
    port = {**PORT, "device_owner": n_const.DEVICE_OWNER_ROUTER_INTF,
            "fixed_ips": [{"subnet_id": f"s{n}", "ip_address": ip} for n, ip in enumerate(fixed)]}
    try:
        made = mapping.router_port(port, "r1")
    except ValidationError as exc:
        assert str(exc).startswith("router interface port p1: has" if len(fixed) != 1 else "router_port p1 (vm): ip")
        return
    _agrees_with_model(made)
    assert len(fixed) == 1
    assert (made.id, made.router_id, made.network_id, made.subnet_id, made.mac) == (
        "p1", "r1", PORT["network_id"], "s0", PORT["mac_address"])
    assert made.ip == fixed[0]


@given(address=st.one_of(V4, V6), port=st.sampled_from([None, "p1"]), fixed=st.one_of(st.none(), V4))
def test_floating_ip_translates_or_is_refused(address, port, fixed) -> None:
    fip = {"id": "f1", "project_id": "p1", "floating_network_id": "ext", "floating_ip_address": address,
           "port_id": port, "fixed_ip_address": fixed}
    try:
        made = mapping.floating_ip(fip)
    except ValidationError as exc:
        assert str(exc).startswith("floating_ip f1")
        return
    _agrees_with_model(made)
    assert ":" not in address
    assert (made.floating_network_id, made.port_id) == ("ext", port or "")
    assert (made.fixed_ip_address == "") == (fixed is None)


@pytest.mark.parametrize(("given", "held"), [({"admin_state_up": False}, False), ({"admin_state_up": True}, True),
                                             ({}, True)])
def test_admin_state_is_written_for_networks_and_ports(given: dict, held: bool) -> None:
    """Neutron's admin_state_up as is (a dict without it, as an older caller's, is up)."""
    net = mapping.network({"id": "n1", "mtu": 1450, **given}, [{"network_type": "vxlan", "segmentation_id": 7}])
    port = mapping.port({**PORT, **given}, "")
    assert (net.admin_state_up, port.admin_state_up) == (held, held)
    _agrees_with_model(net)
    _agrees_with_model(port)
