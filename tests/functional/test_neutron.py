"""hwflow driven by a real Neutron server (issue 17): what a user does through Neutron's API lands in hwflow's
database, translated, and leaves it when deleted.

The server is Neutron 29's API under uWSGI with hwflow's ML2 mechanism driver (tests/functional/
neutron_server.py), driven with openstacksdk as a user would; each step reads hwflow's database (an sqlite
file, then a real etcd) back through NbApi. Writes happen in Neutron's postcommit, before the API answers,
so there is nothing to wait for.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

openstack = pytest.importorskip("openstack", reason="hwflow's neutron extra is not installed (pip install -e "
                                "'.[test,neutron]'; tools/dev.sh setup installs it)")
from neutron_server import PHYSNET, NeutronServer  # noqa: E402
from oslo_config import cfg  # noqa: E402
from test_etcd_tls import stored  # noqa: E402
from tls_pki import Authority  # noqa: E402

from hwflow import conf as hwflow_conf  # noqa: E402
from hwflow.db import etcd_auth  # noqa: E402
from hwflow.db.api import NbApi  # noqa: E402
from hwflow.db.etcd import EtcdDriver  # noqa: E402
from hwflow.db.etcd_server import EtcdCluster, ServerTls  # noqa: E402
from hwflow.model.objects import (  # noqa: E402
    Chassis,
    Network,
    Port,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)
from hwflow.neutron import mapping  # noqa: E402
from hwflow.neutron.mech_driver import OPTS, hwflow_database_conf  # noqa: E402

pytestmark = pytest.mark.functional

HOST, CHASSIS = "compute-1", "chassis-1"  # a binding host and the chassis its agent registered


def closed_etcd(stack: contextlib.ExitStack, workdir: Path) -> tuple[str, dict[str, str]]:
    """An etcd closed to strangers (doc/security.rst): TLS with client certificates of a CA made here, auth on
    (``hwflow db auth setup``'s accounts). Its URL and the credentials of hwflow-admin, the operator's user
    Neutron writes as."""
    ca = Authority(workdir, "hwflow")
    server, probe, client = ca.issue("server", server=True), ca.issue("probe"), ca.issue("neutron")
    cluster = stack.enter_context(EtcdCluster(1, tls=ServerTls(str(ca.cert), str(server.cert), str(server.key),
                                                               str(probe.cert), str(probe.key))))
    files = {"ca_file": str(ca.cert), "cert_file": str(client.cert), "key_file": str(client.key)}
    setup = hwflow_conf.new_conf()
    for name, value in files.items():
        setup.set_override(name, value, group="database")
    with NbApi.from_url(cluster.url, setup) as root:
        assert isinstance(root.driver, EtcdDriver)
        accounts = {account.user: account for account in etcd_auth.setup(root.driver)}
    return cluster.url, {**files, "username": etcd_auth.ADMIN, "password": accounts[etcd_auth.ADMIN].password}


@pytest.fixture(scope="module", params=["sqlite", "etcd", "etcd-closed"])
def neutron(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[openstack.connection.Connection, NbApi]]:
    """A running Neutron server writing a fresh hwflow database (an sqlite file, a real etcd, or one with
    TLS, client certificates and auth), a client for it, and that database as the same user sees it."""
    workdir = tmp_path_factory.mktemp("neutron")
    with contextlib.ExitStack() as stack:
        credentials: dict[str, str] = {}
        if request.param == "etcd-closed":
            database, credentials = closed_etcd(stack, workdir)
        elif request.param == "etcd":
            database = stack.enter_context(EtcdCluster(1)).url
        else:
            database = f"sqlite:///{workdir / 'hwflow.sqlite'}"
        options = {"database": database, **credentials}
        nb = stack.enter_context(NbApi.from_url(database, hwflow_database_conf(neutron_conf(options))))
        nb.put_chassis(Chassis(id=CHASSIS, hostname=HOST, tunnel_ip="192.0.2.1"))
        server = NeutronServer(workdir, options)
        stack.callback(server.stop)
        server.start()
        conn = openstack.connection.Connection(auth_type="none", auth={"endpoint": server.url},
                                               network_endpoint_override=server.url)
        yield conn, nb


def neutron_conf(options: dict[str, str]) -> cfg.ConfigOpts:
    """Neutron's [hwflow] section as the driver registers and reads it."""
    conf = cfg.ConfigOpts()
    conf.register_opts(OPTS, group="hwflow")
    conf([], default_config_files=[])
    for name, value in options.items():
        conf.set_override(name, value, group="hwflow")
    return conf


def test_network_subnet_port_lifecycle(neutron) -> None:
    """Create, update and delete through Neutron; hwflow's database follows each step field by field."""
    conn, nb = neutron
    net = conn.network.create_network(name="web", provider_network_type="vxlan",
                                      provider_segmentation_id=1500, mtu=1400)
    held = nb.get(Network, net.id)
    assert (held.name, held.project_id, held.network_type, held.vni, held.physical_network, held.mtu) == (
        "web", net.project_id, "vxlan", 1500, "", 1400)
    conn.network.update_network(net, name="web2", mtu=1300)
    assert (nb.get(Network, net.id).name, nb.get(Network, net.id).mtu) == ("web2", 1300)

    sub = conn.network.create_subnet(
        network_id=net.id, name="web-v4", ip_version=4, cidr="10.1.0.0/24", gateway_ip="10.1.0.1",
        dns_nameservers=["10.1.0.53"], allocation_pools=[{"start": "10.1.0.10", "end": "10.1.0.99"}],
        host_routes=[{"destination": "192.168.0.0/16", "nexthop": "10.1.0.254"}])
    held = nb.get(Subnet, sub.id)
    assert (held.network_id, held.cidr, held.gateway_ip, held.enable_dhcp, held.dns_nameservers) == (
        net.id, "10.1.0.0/24", "10.1.0.1", True, ["10.1.0.53"])
    assert held.allocation_pools == [{"start": "10.1.0.10", "end": "10.1.0.99"}]
    assert held.host_routes == [{"destination": "192.168.0.0/16", "nexthop": "10.1.0.254"}]
    conn.network.update_subnet(sub, enable_dhcp=False, dns_nameservers=[])
    assert (nb.get(Subnet, sub.id).enable_dhcp, nb.get(Subnet, sub.id).dns_nameservers) == (False, [])

    port = conn.network.create_port(network_id=net.id, name="vm-a", binding_host_id=HOST)
    held = nb.get(Port, port.id)
    assert (held.network_id, held.mac, held.ips, held.chassis, held.port_security) == (
        net.id, port.mac_address, [port.fixed_ips[0]["ip_address"]], CHASSIS, True)
    assert held.security_groups == port.security_group_ids and len(held.security_groups) == 1
    default = nb.get(SecurityGroup, held.security_groups[0])
    assert default.name == "default"
    rules = {rule.id for rule in nb.referrers(SecurityGroup, default.id, SecurityGroupRule)
             if rule.security_group_id == default.id}
    assert rules == {rule["id"] for rule in conn.network.get_security_group(default.id).security_group_rules}

    port = conn.network.update_port(port, name="vm-a2", fixed_ips=[{"subnet_id": sub.id, "ip_address": "10.1.0.42"}],
                                    allowed_address_pairs=[{"ip_address": "10.1.0.128/25"}],
                                    binding_host_id="compute-9")
    held = nb.get(Port, port.id)
    assert (held.name, held.ips, held.chassis) == ("vm-a2", ["10.1.0.42"], "compute-9")
    assert held.allowed_address_pairs == [{"ip_address": "10.1.0.128/25", "mac_address": port.mac_address}]
    port = conn.network.update_port(port, binding_host_id=CHASSIS)  # a host that is its chassis's name
    assert nb.get(Port, port.id).chassis == CHASSIS

    conn.network.update_port(port, security_group_ids=[])  # Neutron drops all its IP: so does hwflow's empty group
    assert nb.get(Port, port.id).security_groups == [mapping.DROP_ALL_GROUP]
    assert not nb.referrers(SecurityGroup, mapping.DROP_ALL_GROUP, SecurityGroupRule)
    conn.network.update_port(port, allowed_address_pairs=[], port_security_enabled=False)
    held = nb.get(Port, port.id)
    assert (held.port_security, held.security_groups, held.allowed_address_pairs) == (False, [], [])

    conn.network.delete_port(port)
    assert not stored(nb, Port, port.id)
    conn.network.delete_subnet(sub)
    assert not stored(nb, Subnet, sub.id)
    conn.network.delete_network(net)
    assert not stored(nb, Network, net.id)
    left = {obj.id for kind in (Network, Subnet, Port) for obj in nb.list(kind)}
    assert not left & {net.id, sub.id, port.id}


def test_admin_state_of_a_network_and_a_port_is_written(neutron) -> None:
    """``openstack network set --disable`` and ``openstack port set --disable`` (the SDK's is_admin_state_up)
    land in hwflow's database, and ``--enable`` again (the datapath's part: test_admin_state_packets.py)."""
    conn, nb = neutron
    net = conn.network.create_network(name="admin-state")
    port = None
    try:
        port = conn.network.create_port(network_id=net.id, name="vm-admin", binding_host_id=HOST)
        assert (nb.get(Network, net.id).admin_state_up, nb.get(Port, port.id).admin_state_up) == (True, True)
        port = conn.network.update_port(port, is_admin_state_up=False)
        assert not port.is_admin_state_up and nb.get(Port, port.id).admin_state_up is False
        conn.network.update_network(net, is_admin_state_up=False)
        assert nb.get(Network, net.id).admin_state_up is False
        conn.network.update_network(net, is_admin_state_up=True)
        port = conn.network.update_port(port, is_admin_state_up=True)
        assert (nb.get(Network, net.id).admin_state_up, nb.get(Port, port.id).admin_state_up) == (True, True)
        down = conn.network.create_port(network_id=net.id, name="born-down", is_admin_state_up=False)
        try:
            assert nb.get(Port, down.id).admin_state_up is False
        finally:
            conn.network.delete_port(down)
    finally:
        if port is not None:
            conn.network.delete_port(port)
        conn.network.delete_network(net)


def held_options(nb: NbApi, port_id: str) -> dict[tuple[str, int], str]:
    """A port's extra DHCP options in hwflow's database: (name, IP version) -> value."""
    return {(o["name"], o["ip_version"]): o["value"] for o in nb.get(Port, port_id).extra_dhcp_opts}


def test_a_ports_extra_dhcp_opts_are_written_and_what_hwflow_cannot_serve_is_refused(neutron) -> None:
    """ML2 supports extra_dhcp_opt itself (no extension driver): a port's options reach hwflow's database as
    Neutron holds them (an option of null value is dropped, "" kept: not sent), and a malformed one is refused
    with hwflow's reason."""
    conn, nb = neutron
    net = conn.network.create_network(name="dhcp-opts")
    port = None
    try:
        port = conn.network.create_port(network_id=net.id, extra_dhcp_opts=[
            {"opt_name": "mtu", "opt_value": "1400"}, {"opt_name": "dns-server", "opt_value": "10.4.0.53,10.4.0.54"},
            {"opt_name": "router", "opt_value": ""}, {"opt_name": "domain-name", "opt_value": None},
            {"opt_name": "dns-server", "opt_value": "[2001:db8::53]", "ip_version": 6}])
        assert held_options(nb, port.id) == {("mtu", 4): "1400", ("dns-server", 4): "10.4.0.53,10.4.0.54",
                                             ("router", 4): "", ("dns-server", 6): "[2001:db8::53]"}
        conn.network.update_port(port, extra_dhcp_opts=[{"opt_name": "mtu", "opt_value": "1300"},
                                                         {"opt_name": "router", "opt_value": None}])
        assert held_options(nb, port.id) == {("mtu", 4): "1300", ("dns-server", 4): "10.4.0.53,10.4.0.54",
                                             ("dns-server", 6): "[2001:db8::53]"}  # null removed the router option
        with pytest.raises(openstack.exceptions.HttpException, match="extra_dhcp_opts option 'mtu' value 'tall'"):
            conn.network.update_port(port, extra_dhcp_opts=[{"opt_name": "mtu", "opt_value": "tall"}])
        assert held_options(nb, port.id)[("mtu", 4)] == "1300"
        with pytest.raises(openstack.exceptions.HttpException, match="option 'tag:pxe,bootfile-name' is neither"):
            conn.network.create_port(network_id=net.id, name="refused", extra_dhcp_opts=[
                {"opt_name": "tag:pxe,bootfile-name", "opt_value": "pxelinux.0"}])
        assert [p.id for p in conn.network.ports(network_id=net.id)] == [port.id]
    finally:
        if port is not None:
            conn.network.delete_port(port)
        conn.network.delete_network(net)


def test_provider_networks(neutron) -> None:
    """A VLAN and a flat network on the physical network keep their VLAN id and physical network."""
    conn, nb = neutron
    vlan = conn.network.create_network(name="prov-vlan", provider_network_type="vlan",
                                       provider_physical_network=PHYSNET, provider_segmentation_id=150)
    flat = conn.network.create_network(name="prov-flat", provider_network_type="flat",
                                       provider_physical_network=PHYSNET, is_router_external=True)
    try:
        held = nb.get(Network, vlan.id)
        assert (held.network_type, held.physical_network, held.vlan_id, held.vni) == ("vlan", PHYSNET, 150, 0)
        held = nb.get(Network, flat.id)
        assert (held.network_type, held.physical_network, held.vlan_id, held.external) == ("flat", PHYSNET, 0, True)
    finally:
        conn.network.delete_network(vlan)
        conn.network.delete_network(flat)
    assert not stored(nb, Network, vlan.id) and not stored(nb, Network, flat.id)


def test_security_group_and_rules(neutron) -> None:
    """A group, a rule added and removed, the group deleted: hwflow's copy follows, rule fields translated."""
    conn, nb = neutron
    group = conn.network.create_security_group(name="ssh", description="ssh from the lab")
    assert (nb.get(SecurityGroup, group.id).name, nb.get(SecurityGroup, group.id).description) == (
        "ssh", "ssh from the lab")
    group = conn.network.update_security_group(group, name="ssh-in", description="ssh from anywhere")
    assert (nb.get(SecurityGroup, group.id).name, nb.get(SecurityGroup, group.id).description) == (
        "ssh-in", "ssh from anywhere")
    rule = conn.network.create_security_group_rule(
        security_group_id=group.id, direction="ingress", ethertype="IPv4", protocol="tcp",
        port_range_min=22, port_range_max=22, remote_ip_prefix="10.9.8.7/8")
    held = nb.get(SecurityGroupRule, rule.id)
    assert (held.direction, held.ethertype, held.protocol, held.port_min, held.port_max, held.remote_ip_prefix) == (
        "ingress", "IPv4", "tcp", 22, 22, "10.0.0.0/8")
    ping = conn.network.create_security_group_rule(
        security_group_id=group.id, direction="ingress", ethertype="IPv6", protocol="ipv6-icmp",
        port_range_min=128, remote_group_id=group.id)
    held = nb.get(SecurityGroupRule, ping.id)
    assert (held.protocol, held.icmp_type, held.icmp_code, held.remote_group_id) == ("icmpv6", 128, -1, group.id)
    conn.network.delete_security_group_rule(rule)
    assert not stored(nb, SecurityGroupRule, rule.id)
    conn.network.delete_security_group(group)
    assert not stored(nb, SecurityGroup, group.id) and not stored(nb, SecurityGroupRule, ping.id)


def test_deleting_a_group_takes_the_rules_naming_it_as_remote(neutron) -> None:
    """Neutron drops other groups' rules whose remote group is deleted (no event for them); hwflow too."""
    conn, nb = neutron
    web, admins = conn.network.create_security_group(name="web"), conn.network.create_security_group(name="admins")
    try:
        rule = conn.network.create_security_group_rule(security_group_id=web.id, direction="ingress",
                                                       ethertype="IPv4", protocol="tcp", port_range_min=22,
                                                       port_range_max=22, remote_group_id=admins.id)
        assert nb.get(SecurityGroupRule, rule.id).remote_group_id == admins.id
        conn.network.delete_security_group(admins)
        kept = {r["id"] for r in conn.network.get_security_group(web.id).security_group_rules}
        assert rule.id not in kept and not stored(nb, SecurityGroupRule, rule.id)
        assert kept == {r.id for r in nb.referrers(SecurityGroup, web.id, SecurityGroupRule)}
    finally:
        conn.network.delete_security_group(web)
        conn.network.delete_security_group(admins, ignore_missing=True)


def test_a_vni_hwflow_gave_a_network_of_its_own_is_refused(neutron) -> None:
    """A network made with hwflow's own API holds VNI 1777: Neutron's network asking for it is a 409 naming
    that network, and neither database gets it; another VNI is fine."""
    conn, nb = neutron
    own = nb.create(Network(name="made-by-hwflow-nb", vni=1777))
    try:
        with pytest.raises(openstack.exceptions.ConflictException, match=f"vni 1777 is taken by network {own.id}"):
            conn.network.create_network(name="clash", provider_network_type="vxlan", provider_segmentation_id=1777)
        assert not [net for net in conn.network.networks() if net.name == "clash"]
        assert [net.id for net in nb.list(Network) if getattr(net, "vni", 0) == 1777] == [own.id]
        net = conn.network.create_network(name="no-clash", provider_network_type="vxlan", provider_segmentation_id=1778)
        assert nb.get(Network, net.id).vni == 1778
        conn.network.delete_network(net)
    finally:
        nb.delete(Network, own.id)


def test_what_hwflow_cannot_hold_is_refused(neutron) -> None:
    """Neutron answers 400 with hwflow's reason, and neither database keeps the object."""
    conn, nb = neutron
    net = conn.network.create_network(name="narrow")
    try:
        with pytest.raises(openstack.exceptions.BadRequestException,
                           match="hwflow cannot hold this subnet: .*at most /30"):
            conn.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.2.0.0/31", gateway_ip=None,
                                       is_dhcp_enabled=False)
        assert not list(conn.network.subnets(network_id=net.id))
        assert not [sub for sub in nb.list(Subnet) if sub.network_id == net.id]
    finally:
        conn.network.delete_network(net)

    group = conn.network.create_security_group(name="dccp")
    try:
        with pytest.raises(openstack.exceptions.ConflictException, match="description .* must be at most 255"):
            conn.network.update_security_group(group, description="tab\there")
        assert nb.get(SecurityGroup, group.id).description == ""
        with pytest.raises(openstack.exceptions.ConflictException, match="port range on protocol 33"):
            conn.network.create_security_group_rule(security_group_id=group.id, direction="ingress",
                                                    ethertype="IPv4", protocol="dccp",
                                                    port_range_min=5000, port_range_max=5001)
        assert {r["protocol"] for r in conn.network.get_security_group(group.id).security_group_rules} == {None}
    finally:
        conn.network.delete_security_group(group)


def test_port_brings_the_groups_hwflow_lacks(neutron) -> None:
    """A group hwflow's database lacks (made before the driver was enabled) is written with the first port in
    it, rules and all, instead of the port being refused for naming a group that is not there."""
    conn, nb = neutron
    net = conn.network.create_network(name="late")
    group = conn.network.create_security_group(name="before-hwflow")
    nb.delete(SecurityGroup, group.id, cascade=True)
    port = None
    try:
        port = conn.network.create_port(network_id=net.id, security_group_ids=[group.id])
        assert nb.get(Port, port.id).security_groups == [group.id]
        assert nb.get(SecurityGroup, group.id).name == "before-hwflow"
        held = {rule.id for rule in nb.referrers(SecurityGroup, group.id, SecurityGroupRule)}
        assert held == {rule["id"] for rule in conn.network.get_security_group(group.id).security_group_rules}
        assert len(held) == 2  # the egress rules every new group gets
    finally:
        if port is not None:
            conn.network.delete_port(port)
        conn.network.delete_network(net)
        conn.network.delete_security_group(group)
    assert not stored(nb, SecurityGroup, group.id)
