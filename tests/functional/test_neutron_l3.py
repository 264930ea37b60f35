"""Neutron's L3 in hwflow (issue 17): routers, their interfaces and gateways, and floating IPs made through a
real Neutron server (with hwflow's L3 service plugin, ``hwflow_l3``) land in hwflow's database as the objects
``hwflow nb`` makes and the agents route, follow each update, and leave it when deleted.

The server and the databases (sqlite, etcd, etcd closed to strangers) are test_neutron's fixture. Writes happen
in Neutron's callbacks after its commit, before the API answers: nothing to wait for.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest

openstack = pytest.importorskip("openstack", reason="hwflow's neutron extra is not installed (pip install -e "
                                "'.[test,neutron]'; tools/dev.sh setup installs it)")
from neutron_server import PHYSNET, NeutronServer  # noqa: E402
from test_dhcp import udhcpc  # noqa: E402
from test_e2e import Lab, evidence, hw_packets, lab, rewriting_redirect, vm_ns, wait_for  # noqa: E402, F401
from test_etcd_tls import stored  # noqa: E402
from test_floating_ip import EXT_GW, REMOTE, SITE, ask, nat_flows, nat_host, ping  # noqa: E402
from test_floating_ip import PHYSNET as UPLINK_PHYSNET  # noqa: E402
from test_neutron import HOST, neutron  # noqa: E402, F401 - the server and hwflow's database, per database

from hwflow.db.api import NbApi  # noqa: E402
from hwflow.model.objects import FloatingIP, Port, Router, RouterPort  # noqa: E402
from hwflow.sim.host import in_ns  # noqa: E402

pytestmark = pytest.mark.functional

EXT_CIDR = "198.51.100.0/24"  # EXT_GW, its gateway, is test_floating_ip's


@pytest.fixture
def site(neutron) -> Iterator[dict]:  # noqa: F811
    """An external network (a VLAN of the physical network) and two inside networks, each with a subnet,
    deleted again after the test with whatever the test left on them."""
    conn, _nb = neutron
    with contextlib.ExitStack() as stack:
        ext = conn.network.create_network(name="public", provider_network_type="vlan",
                                          provider_physical_network=PHYSNET, provider_segmentation_id=160,
                                          is_router_external=True)
        stack.callback(conn.network.delete_network, ext)
        made = {"ext": ext, "ext_sub": conn.network.create_subnet(
            network_id=ext.id, ip_version=4, cidr=EXT_CIDR, gateway_ip=EXT_GW, is_dhcp_enabled=False)}
        for n in (1, 2):
            net = conn.network.create_network(name=f"inside{n}")
            stack.callback(conn.network.delete_network, net)
            made[f"net{n}"] = net
            made[f"sub{n}"] = conn.network.create_subnet(network_id=net.id, ip_version=4, cidr=f"10.7{n}.0.0/24")
        stack.callback(_delete_ports, conn, [made["net1"].id, made["net2"].id])
        yield made


def _delete_ports(conn: openstack.connection.Connection, networks: list[str]) -> None:
    """The VM ports a test made on its networks (its routers and floating IPs it deletes itself)."""
    for net in networks:
        for port in conn.network.ports(network_id=net):
            if not port.device_owner:
                conn.network.delete_port(port)


@contextlib.contextmanager
def router(conn: openstack.connection.Connection, **attrs) -> Iterator:
    """A router, deleted at the end with its interfaces (Neutron refuses to delete a router that has any)."""
    made = conn.network.create_router(**attrs)
    try:
        yield made
    finally:
        for port in conn.network.ports(device_id=made.id, device_owner="network:router_interface"):
            conn.network.remove_interface_from_router(made, port=port.id)
        conn.network.delete_router(made)


def test_router_interfaces_gateway_and_routes(neutron, site) -> None:  # noqa: F811
    """Create, rename, set a gateway with and without SNAT, add interfaces by subnet and by port, static
    routes, remove the interfaces, clear the gateway, delete: hwflow's router and router ports follow, and
    Neutron shows the router's ports ACTIVE once hwflow holds them."""
    conn, nb = neutron
    with router(conn, name="r1") as r:
        held = nb.get(Router, r.id)
        assert (held.name, held.project_id, held.gateway_network_id, held.gateway_ip) == ("r1", r.project_id, "", "")
        conn.network.update_router(r, name="edge")
        assert nb.get(Router, r.id).name == "edge"

        r = conn.network.update_router(r, external_gateway_info={"network_id": site["ext"].id})
        address = r.external_gateway_info["external_fixed_ips"][0]["ip_address"]
        held = nb.get(Router, r.id)
        assert (held.gateway_network_id, held.gateway_ip, held.enable_snat) == (site["ext"].id, address, True)
        (gateway_port,) = conn.network.ports(device_id=r.id, device_owner="network:router_gateway")
        assert gateway_port.status == "ACTIVE"
        assert address != EXT_GW and address.startswith("198.51.100.")
        r = conn.network.update_router(r, external_gateway_info={"network_id": site["ext"].id, "enable_snat": False})
        held = nb.get(Router, r.id)
        assert (held.gateway_ip, held.enable_snat) == (address, False)

        by_subnet = conn.network.add_interface_to_router(r, subnet=site["sub1"].id)
        held = nb.get(RouterPort, by_subnet["port_id"])
        made = conn.network.get_port(by_subnet["port_id"])
        assert (held.router_id, held.network_id, held.subnet_id, held.ip, held.mac) == (
            r.id, site["net1"].id, site["sub1"].id, "10.71.0.1", made.mac_address)
        assert not stored(nb, Port, made.id)
        assert made.status == "ACTIVE"

        vm_side = conn.network.create_port(network_id=site["net2"].id, fixed_ips=[{"ip_address": "10.72.0.254"}])
        assert nb.get(Port, vm_side.id).ips == ["10.72.0.254"]
        conn.network.add_interface_to_router(r, port=vm_side.id)
        held = nb.get(RouterPort, vm_side.id)
        assert (held.router_id, held.subnet_id, held.ip, held.mac) == (
            r.id, site["sub2"].id, "10.72.0.254", vm_side.mac_address)
        assert not stored(nb, Port, vm_side.id)  # the port is the router's now: one holder of its MAC and address
        assert conn.network.get_port(vm_side.id).status == "ACTIVE"

        conn.network.update_router(r, routes=[{"destination": "192.168.5.0/24", "nexthop": "10.72.0.9"}])
        assert nb.get(Router, r.id).routes == [{"destination": "192.168.5.0/24", "nexthop": "10.72.0.9"}]
        conn.network.update_router(r, routes=[])
        assert nb.get(Router, r.id).routes == []

        conn.network.remove_interface_from_router(r, subnet=site["sub1"].id)
        assert not stored(nb, RouterPort, by_subnet["port_id"])
        conn.network.remove_interface_from_router(r, port=vm_side.id)
        assert not stored(nb, RouterPort, vm_side.id) and not stored(nb, Port, vm_side.id)
        assert not nb.referrers(Router, r.id, RouterPort)

        conn.network.update_router(r, external_gateway_info={})
        held = nb.get(Router, r.id)
        assert (held.gateway_network_id, held.gateway_ip) == ("", "")
    assert not stored(nb, Router, r.id)


def test_floating_ips(neutron, site) -> None:  # noqa: F811
    """A floating IP reserved, associated, disassociated, associated at creation, disassociated by its port's
    deletion, and deleted: hwflow's floating IP follows, and Neutron shows it ACTIVE while associated."""
    conn, nb = neutron
    gateway = {"network_id": site["ext"].id, "external_fixed_ips": [{"subnet_id": site["ext_sub"].id}]}
    with router(conn, name="fip-router", external_gateway_info=gateway) as r:
        assert nb.get(Router, r.id).gateway_ip == r.external_gateway_info["external_fixed_ips"][0]["ip_address"]
        conn.network.add_interface_to_router(r, subnet=site["sub1"].id)
        vm = conn.network.create_port(network_id=site["net1"].id, name="vm", binding_host_id=HOST)
        fixed = vm.fixed_ips[0]["ip_address"]

        fip = conn.network.create_ip(floating_network_id=site["ext"].id)
        held = nb.get(FloatingIP, fip.id)
        assert (held.floating_network_id, held.floating_ip_address, held.port_id, held.fixed_ip_address) == (
            site["ext"].id, fip.floating_ip_address, "", "")
        assert not stored(nb, Port, fip.port_id or "none") and not [
            p for p in nb.list(Port) if fip.floating_ip_address in p.ips]  # its Neutron port is not a hwflow port

        assert conn.network.get_ip(fip.id).status == "DOWN"
        conn.network.update_ip(fip, port_id=vm.id)
        held = nb.get(FloatingIP, fip.id)
        assert (held.port_id, held.fixed_ip_address) == (vm.id, fixed)
        assert conn.network.get_ip(fip.id).status == "ACTIVE"
        conn.network.update_ip(fip, port_id=None)
        assert (nb.get(FloatingIP, fip.id).port_id, nb.get(FloatingIP, fip.id).fixed_ip_address) == ("", "")
        assert conn.network.get_ip(fip.id).status == "DOWN"
        conn.network.delete_ip(fip)
        assert not stored(nb, FloatingIP, fip.id)

        fip = conn.network.create_ip(floating_network_id=site["ext"].id, port_id=vm.id)
        try:
            assert (nb.get(FloatingIP, fip.id).port_id, nb.get(FloatingIP, fip.id).fixed_ip_address) == (vm.id, fixed)
            assert conn.network.get_ip(fip.id).status == "ACTIVE"
            conn.network.delete_port(vm)  # Neutron disassociates the floating IP first
            assert not stored(nb, Port, vm.id)
            assert nb.get(FloatingIP, fip.id).port_id == ""
            assert conn.network.get_ip(fip.id).status == "DOWN"
        finally:
            conn.network.delete_ip(fip)
        assert not stored(nb, FloatingIP, fip.id)


def test_what_hwflow_cannot_hold_is_refused(neutron, site) -> None:  # noqa: F811
    """A router name hwflow cannot hold and an interface of two addresses are refused with hwflow's reason
    while Neutron can still say no: neither database keeps them."""
    conn, nb = neutron
    v6 = conn.network.create_subnet(network_id=site["net1"].id, ip_version=6, cidr="fd00:71::/64")
    with router(conn, name="r-routes") as r:
        conn.network.add_interface_to_router(r, subnet=v6.id)
        with pytest.raises(openstack.exceptions.HttpException, match="hwflow cannot hold this router: .*differ in IP"):
            conn.network.update_router(r, routes=[{"destination": "192.168.9.0/24", "nexthop": "fd00:71::9"}])
        assert conn.network.get_router(r.id).routes == [] and nb.get(Router, r.id).routes == []

    two = conn.network.create_port(network_id=site["net1"].id, fixed_ips=[{"subnet_id": site["sub1"].id},
                                                                           {"subnet_id": v6.id}])
    with router(conn, name="r-dual") as r:
        with pytest.raises(openstack.exceptions.ConflictException, match="has 2 addresses; hwflow holds a router "
                           "interface with exactly one"):
            conn.network.add_interface_to_router(r, port=two.id)
        assert not nb.referrers(Router, r.id, RouterPort)
        assert conn.network.get_port(two.id).device_owner == ""
        assert nb.get(Port, two.id).ips == [ip["ip_address"] for ip in two.fixed_ips]


PINGS = 10


def test_vms_on_neutron_ports_get_dhcp_and_ping_across_a_neutron_router_through_the_nic(
        lab: Lab, tmp_path: Path) -> None:  # noqa: F811
    """Everything made through Neutron, nothing with hwflow's CLI: two networks with DHCP, a router between
    them, a port on each bound to a simulated SmartNIC host (binding host = its chassis). Each VM boots with
    no address, gets its port's over DHCP (answered by the host's agent) with the router as gateway, and vm1
    pings vm2 across the router: one hop (TTL 63), in the NIC (mlx5 profile: its rules rewrite the MACs,
    decrement the TTL and redirect, and their counters move with every echo each way). The ports are without
    port security: behind a security group's connection tracking the routed echo is OVS's on this profile."""
    host = lab.host("mlx5-connectx6dx")
    server = NeutronServer(tmp_path / "neutron", {"database": host.database})
    server.workdir.mkdir()
    try:
        server.start()
        conn = openstack.connection.Connection(auth_type="none", auth={"endpoint": server.url},
                                               network_endpoint_override=server.url)
        r = conn.network.create_router(name="e2e-router")
        ports = {}
        for n, vm in ((1, "vm1"), (2, "vm2")):
            net = conn.network.create_network(name=f"e2e-net{n}")
            sub = conn.network.create_subnet(network_id=net.id, ip_version=4, cidr=f"10.8{n}.0.0/24")
            conn.network.add_interface_to_router(r, subnet=sub.id)
            ports[vm] = conn.network.create_port(network_id=net.id, name=vm, binding_host_id=host.name,
                                                 port_security_enabled=False)
    except Exception as exc:
        raise AssertionError(f"{exc}\n--- Neutron's log:\n{server.tail()}") from exc
    finally:
        server.stop()  # hwflow's database has it all now: the host needs no Neutron

    leases = {}
    with NbApi.from_url(host.database) as nb:
        for vm, port in ports.items():
            held = nb.get(Port, port.id)
            assert held.chassis == host.name
            host.plug(dataclasses.replace(held, ips=[]), vm_ns(host, vm))  # the VM boots with no address
    for vm, port in ports.items():
        (tmp_path / vm).mkdir()
        leases[vm] = lease = udhcpc(vm_ns(host, vm), tmp_path / vm)
        assert lease["ip"] == port.fixed_ips[0]["ip_address"], (lease, evidence(host))
        in_ns(vm_ns(host, vm), "ip", "addr", "add", f"{lease['ip']}/{lease['mask']}", "dev", "eth0")
        in_ns(vm_ns(host, vm), "ip", "route", "add", "default", "via", lease["router"])
    assert [leases[vm]["router"] for vm in ports] == ["10.81.0.1", "10.82.0.1"]

    directions = (("vm1", "vm2"), ("vm2", "vm1"))
    wait_for("the routed paths' rewriting NIC rules, both ways",
             lambda: all(rewriting_redirect(host, *d) for d in directions), host=host, details=lambda: evidence(host))
    before = {d: hw_packets(host, *d, rewriting=True) for d in directions}
    out = in_ns(vm_ns(host, "vm1"), "ping", "-c", str(PINGS), "-i", "0.05", "-W", "2", leases["vm2"]["ip"],
                check=False, timeout=60).stdout
    assert " 0% packet loss" in out, out + evidence(host)
    assert "ttl=63" in out  # one router hop
    routed = {d: hw_packets(host, *d, rewriting=True) - before[d] for d in directions}
    assert all(n >= PINGS for n in routed.values()), f"the NIC routed {routed}, expected >= {PINGS} each way" \
        + evidence(host)


def test_a_vm_on_a_neutron_port_goes_out_and_is_reached_through_its_neutron_floating_ip(
        tmp_path_factory: pytest.TempPathFactory) -> None:
    """A floating IP made through Neutron works in the datapath, and stops when Neutron disassociates it. The
    external network is a flat one on the physical network whose uplink leads to a namespace standing for the
    upstream router and the Internet behind it (REMOTE); the upstream router is a Neutron port on the external
    network holding its subnet's gateway address (how hwflow's router knows the next hop's MAC). vm1's port
    is in the default security group with ICMP let in."""
    assert UPLINK_PHYSNET == PHYSNET
    with nat_host(tmp_path_factory, "nfip") as (host, outside), contextlib.ExitStack() as stack:
        server = NeutronServer(tmp_path_factory.mktemp("neutron"), {"database": host.database})
        stack.callback(server.stop)
        server.start()
        conn = openstack.connection.Connection(auth_type="none", auth={"endpoint": server.url},
                                               network_endpoint_override=server.url)
        ext = conn.network.create_network(name="public", provider_network_type="flat",
                                          provider_physical_network=PHYSNET, is_router_external=True)
        ext_sub = conn.network.create_subnet(network_id=ext.id, ip_version=4, cidr=EXT_CIDR, gateway_ip=EXT_GW,
                                             is_dhcp_enabled=False)
        conn.network.create_port(network_id=ext.id, name="upstream", mac_address=SITE.upstream_mac,
                                 fixed_ips=[{"subnet_id": ext_sub.id, "ip_address": EXT_GW}],
                                 port_security_enabled=False)
        inside = conn.network.create_network(name="inside")
        sub = conn.network.create_subnet(network_id=inside.id, ip_version=4, cidr=f"{SITE.inside}.0/24")
        r = conn.network.create_router(name="edge", external_gateway_info={"network_id": ext.id})
        conn.network.add_interface_to_router(r, subnet=sub.id)
        vm = conn.network.create_port(network_id=inside.id, name="vm1", binding_host_id=host.name)
        conn.network.create_security_group_rule(security_group_id=vm.security_group_ids[0], direction="ingress",
                                                ethertype="IPv4", protocol="icmp")
        fip = conn.network.create_ip(floating_network_id=ext.id, port_id=vm.id)
        address = fip.floating_ip_address

        SITE.upstream_behind_uplink(host, outside)
        with NbApi.from_url(host.database) as nb:
            host.plug(nb.get(Port, vm.id), vm_ns(host, "vm1"), gateway=sub.gateway_ip)
        wait_for("the floating IP's NAT flows in OVS", lambda: nat_flows(host) >= 2, host=host)
        associated = nat_flows(host)  # its NAT's, and the security group's conntrack flows

        out = ping(vm_ns(host, "vm1"), REMOTE)
        assert " 0% packet loss" in out, out + evidence(host)
        assert ask(vm_ns(host, "vm1"), outside, REMOTE, bind=REMOTE) == [address, REMOTE]  # out as its FIP
        assert " 0% packet loss" in ping(outside, address)

        conn.network.update_ip(fip, port_id=None)
        wait_for("the floating IP's NAT flows gone", lambda: nat_flows(host) < associated, host=host)
        in_ns(outside, "ip", "neigh", "flush", "all")
        assert " 100% packet loss" in ping(outside, address)
