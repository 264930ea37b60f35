"""Relations between objects, checked by the NB API on every write (on the embedded database).

The conformance suite shows every driver stores and watches the same; here
is what the API refuses and why, kind by kind.
"""

from __future__ import annotations

import pytest

from hwflow.db import NbApi
from hwflow.model import (
    BrokenReference,
    FloatingIP,
    Network,
    Port,
    Router,
    RouterPort,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
    ValidationError,
)


@pytest.fixture
def api(tmp_path):
    with NbApi.from_url(f"sqlite:///{tmp_path}/nb.sqlite") as nb:
        yield nb


def mac(i: int) -> str:
    return f"fa:16:3e:00:01:{i:02x}"


def test_port_addresses_must_lie_in_the_networks_subnets(api):
    net = api.create(Network(name="n", vni=1))
    api.create(Port(network_id=net.id, mac=mac(1), ips=["192.0.2.9"]))  # no subnet yet: plain L2
    api.create(Subnet(network_id=net.id, cidr="10.0.0.0/24"))
    api.create(Subnet(network_id=net.id, cidr="2001:db8::/64"))
    api.create(Port(network_id=net.id, mac=mac(2), ips=["10.0.0.5", "2001:db8::5"]))
    with pytest.raises(ValidationError, match=r"port .*: ips .* has 10.1.0.5, which lies in none of the network's "
                       r"subnets \(10.0.0.0/24, 2001:db8::/64\)"):
        api.create(Port(network_id=net.id, mac=mac(3), ips=["10.1.0.5"]))


def test_subnets_of_a_network_do_not_overlap_and_keep_their_prefix(api):
    net = api.create(Network(name="n", vni=1))
    other = api.create(Network(name="o", vni=2))
    s = api.create(Subnet(network_id=net.id, cidr="10.0.0.0/16"))
    with pytest.raises(ValidationError, match=f"overlaps subnet {s.id} .10.0.0.0/16."):
        api.create(Subnet(network_id=net.id, cidr="10.0.3.0/24"))
    api.create(Subnet(network_id=other.id, cidr="10.0.3.0/24"))  # another network may reuse it
    with pytest.raises(ValidationError, match="cidr cannot change"):
        api.update(Subnet(**{**s.to_dict(), "cidr": "10.1.0.0/16"}))
    api.update(Subnet(**{**s.to_dict(), "gateway_ip": "10.0.0.1"}))


def test_a_subnet_in_use_cannot_be_deleted_but_goes_with_its_network(api):
    net = api.create(Network(name="n", vni=1))
    s = api.create(Subnet(network_id=net.id, cidr="10.0.0.0/24"))
    p = api.create(Port(name="vm", network_id=net.id, mac=mac(1), ips=["10.0.0.5"]))
    with pytest.raises(BrokenReference, match=rf"subnet {s.id} is still used by port {p.id} \(vm\)"):
        api.delete("subnet", s.id, cascade=True)
    api.update(Port(**{**p.to_dict(), "ips": []}))
    assert [o.id for o in api.delete("subnet", s.id)] == [s.id]
    api.create(Subnet(network_id=net.id, cidr="10.0.0.0/24"))
    removed = api.delete("network", net.id, cascade=True)
    assert sorted(o.kind for o in removed) == ["network", "port", "subnet"]


def test_ports_and_router_ports_share_addresses(api):
    net = api.create(Network(name="n", vni=1))
    sub = api.create(Subnet(network_id=net.id, cidr="10.0.0.0/24", gateway_ip="10.0.0.1"))
    router = api.create(Router(name="r"))
    rp = api.create(RouterPort(router_id=router.id, network_id=net.id, subnet_id=sub.id, mac=mac(1), ip="10.0.0.1"))
    taken = f"ip 10.0.0.1 on network {net.id} is already used by router_port {rp.id}"
    with pytest.raises(ValidationError, match=taken):
        api.create(Port(network_id=net.id, mac=mac(2), ips=["10.0.0.1"]))
    with pytest.raises(ValidationError, match="mac .* is already used by router_port"):
        api.create(Port(network_id=net.id, mac=mac(1)))
    with pytest.raises(ValidationError, match="ip '10.1.0.1' .*lies in none"):
        api.create(RouterPort(router_id=router.id, network_id=net.id, subnet_id=sub.id, mac=mac(3), ip="10.1.0.1"))
    other = api.create(Network(name="o", vni=2))
    with pytest.raises(ValidationError, match=f"subnet_id .* is on network {net.id}, not on network_id {other.id}"):
        api.create(RouterPort(router_id=router.id, network_id=other.id, subnet_id=sub.id, mac=mac(4), ip="10.0.0.2"))
    with pytest.raises(BrokenReference, match="still used by router_port"):
        api.delete("subnet", sub.id)
    with pytest.raises(BrokenReference, match="still used by router_port"):
        api.delete("network", net.id, cascade=True)
    removed = api.delete("router", router.id, cascade=True)
    assert [o.kind for o in removed] == ["router", "router_port"]
    api.create(Port(network_id=net.id, mac=mac(1), ips=["10.0.0.1"]))  # released with the router port


def test_security_groups_rules_and_remote_groups(api):
    web = api.create(SecurityGroup(name="web"))
    db = api.create(SecurityGroup(name="db"))
    api.create(SecurityGroupRule(security_group_id=web.id, protocol="tcp", port_min=80, port_max=80))
    api.create(SecurityGroupRule(security_group_id=db.id, protocol="tcp", port_min=5432, port_max=5432,
                                 remote_group_id=web.id))
    self_rule = api.create(SecurityGroupRule(security_group_id=web.id, remote_group_id=web.id))
    with pytest.raises(BrokenReference, match="remote_group_id 'nope' names no existing security_group"):
        api.create(SecurityGroupRule(security_group_id=web.id, remote_group_id="nope"))
    net = api.create(Network(name="n", vni=1))
    with pytest.raises(BrokenReference, match="security_groups 'nope' names no existing security_group"):
        api.create(Port(network_id=net.id, mac=mac(1), security_groups=[web.id, "nope"]))
    port = api.create(Port(network_id=net.id, mac=mac(1), security_groups=[web.id]))
    with pytest.raises(BrokenReference, match=f"security_group {web.id} .web. is still used by "):
        api.delete("security_group", web.id, cascade=True)  # the port and db's rule use it
    api.update(Port(**{**port.to_dict(), "security_groups": [db.id]}))
    with pytest.raises(BrokenReference, match=r"still used by security_group_rule .*; remove those references"):
        api.delete("security_group", web.id, cascade=True)
    with pytest.raises(BrokenReference, match="--cascade"):
        api.delete("security_group", db.id)  # it owns a rule
    with pytest.raises(BrokenReference, match="still used by port"):
        api.delete("security_group", db.id, cascade=True)
    api.update(Port(**{**api.get("port", port.id).to_dict(), "security_groups": []}))
    api.delete("security_group", db.id, cascade=True)
    removed = api.delete("security_group", web.id, cascade=True)  # its own rules, the self-referencing one too
    assert {o.id for o in removed} >= {web.id, self_rule.id}


def test_floating_ips_need_an_external_network_and_a_port_address(api):
    internal = api.create(Network(name="in", vni=1))
    api.create(Subnet(network_id=internal.id, cidr="10.0.0.0/24"))
    ext = api.create(Network(name="ext", network_type="flat", physical_network="public", external=True))
    api.create(Subnet(network_id=ext.id, cidr="203.0.113.0/24", enable_dhcp=False))
    port = api.create(Port(network_id=internal.id, mac=mac(1), ips=["10.0.0.5"]))
    with pytest.raises(ValidationError, match="not external"):
        api.create(FloatingIP(floating_network_id=internal.id, floating_ip_address="10.0.0.9"))
    with pytest.raises(ValidationError, match="lies in none"):
        api.create(FloatingIP(floating_network_id=ext.id, floating_ip_address="198.51.100.1"))
    fip = api.create(FloatingIP(floating_network_id=ext.id, floating_ip_address="203.0.113.5", port_id=port.id))
    assert fip.fixed_ip_address == "10.0.0.5"  # the port's only IPv4 address
    with pytest.raises(ValidationError, match="203.0.113.5 on network .* is already used by floating_ip"):
        api.create(FloatingIP(floating_network_id=ext.id, floating_ip_address="203.0.113.5"))
    with pytest.raises(ValidationError, match="10.0.0.5 of port .* is already used by floating_ip"):
        api.create(FloatingIP(floating_network_id=ext.id, floating_ip_address="203.0.113.6", port_id=port.id))
    with pytest.raises(ValidationError, match="fixed_ip_address .* must be one of port"):
        api.create(FloatingIP(floating_network_id=ext.id, floating_ip_address="203.0.113.7", port_id=port.id,
                              fixed_ip_address="10.0.0.77"))
    with pytest.raises(BrokenReference, match=f"port {port.id} is still used by floating_ip {fip.id}"):
        api.delete("port", port.id)
    api.update(FloatingIP(**{**fip.to_dict(), "port_id": "", "fixed_ip_address": ""}))
    api.delete("port", port.id)


def test_a_router_gateway_is_on_an_external_network(api):
    internal = api.create(Network(name="in", vni=1))
    ext = api.create(Network(name="ext", network_type="vlan", physical_network="public", vlan_id=100,
                             external=True))
    api.create(Subnet(network_id=ext.id, cidr="203.0.113.0/24"))
    with pytest.raises(ValidationError, match="gateway_network_id .* not external"):
        api.create(Router(gateway_network_id=internal.id))
    router = api.create(Router(gateway_network_id=ext.id, gateway_ip="203.0.113.2"))
    with pytest.raises(ValidationError, match="203.0.113.2 on network .* is already used by router"):
        api.create(FloatingIP(floating_network_id=ext.id, floating_ip_address="203.0.113.2"))
    with pytest.raises(BrokenReference, match=f"still used by router {router.id}"):
        api.delete("network", ext.id, cascade=True)


def test_provider_segments_are_unique(api):
    api.create(Network(name="a", network_type="vlan", physical_network="p1", vlan_id=10))
    api.create(Network(name="b", network_type="vlan", physical_network="p2", vlan_id=10))
    with pytest.raises(ValidationError, match="vlan 10 on physical network p1 is already used by network"):
        api.create(Network(name="c", network_type="vlan", physical_network="p1", vlan_id=10))
    api.create(Network(name="d", network_type="flat", physical_network="p1"))
    with pytest.raises(ValidationError, match="flat network on physical network p1 is already used"):
        api.create(Network(name="e", network_type="flat", physical_network="p1"))


def test_a_network_type_cannot_change(api):
    net = api.create(Network(name="a", network_type="vlan", physical_network="p1", vlan_id=10))
    with pytest.raises(ValidationError, match="network_type cannot change"):
        api.update(Network(**{**net.to_dict(), "network_type": "vxlan", "vni": 5, "physical_network": "",
                              "vlan_id": 0}))
    moved = api.update(Network(**{**net.to_dict(), "vlan_id": 11}))
    api.create(Network(name="b", network_type="vlan", physical_network="p1", vlan_id=10))  # 10 was released
    assert moved.vlan_id == 11
