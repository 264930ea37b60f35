"""Per-chassis SNAT in real OVS: a VM without a FIP goes out as its host's external_ip, its replies come back, the
outside cannot open a connection through that address, and a FIP on the same router still wins.

One SimHost with ``external_ip`` set: vm1 (no FIP) and vm2 (with a FIP) on an inside network behind router r, whose
gateway is a flat external network mapped to an uplink. Behind the uplink, in the outside namespace, sits
"upstream", the router to the rest of the world (bound nowhere, holding the external subnet's gateway_ip: how l3
knows the next hop's MAC), with a "remote" address on its loopback standing for the Internet.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_e2e import agent_log, vm_ns, wait_for
from test_floating_ip import ask, nat_flows, ping

from hwflow.apps.l3 import nat_mac
from hwflow.db.api import NbApi
from hwflow.model.objects import FloatingIP, Network, Port, Router, RouterPort, Subnet
from hwflow.sim.host import SimHost, in_ns, run

pytestmark = pytest.mark.functional

PHYSNET = "physnet1"
EXTERNAL_IP, FIP, EXT_GW, REMOTE = "198.51.100.77", "198.51.100.60", "198.51.100.1", "203.0.113.19"
VM1 = ("fa:16:3e:c5:00:05", "10.61.0.5")
VM2 = ("fa:16:3e:c5:00:06", "10.61.0.6")
UPSTREAM_MAC = "fa:16:3e:c5:ee:01"
# The FIP's SNAT and DNAT, the chassis SNAT of the inside network and the un-SNAT of its replies.
NAT_FLOWS = 4


@dataclass(frozen=True)
class Site:
    host: SimHost
    vm1: str  # no FIP: goes out as EXTERNAL_IP
    vm2: str  # FIP holder
    outside: str  # upstream's namespace, behind the uplink


def create_site(host: SimHost) -> tuple[Port, Port]:
    """The networks, router r (SNAT on by default), vm1, vm2 and its FIP, and upstream bound nowhere."""
    with NbApi.from_url(host.database) as nb:
        inside = nb.create(Network(name="inside", vni=6100))
        sub = nb.create(Subnet(name="inside", network_id=inside.id, cidr="10.61.0.0/24", gateway_ip="10.61.0.1"))
        ext = nb.create(Network(name="ext", network_type="flat", physical_network=PHYSNET, external=True))
        nb.create(Subnet(name="ext", network_id=ext.id, cidr="198.51.100.0/24", gateway_ip=EXT_GW, enable_dhcp=False))
        router = nb.create(Router(name="r", gateway_network_id=ext.id, gateway_ip="198.51.100.2"))
        nb.create(RouterPort(name="r-inside", router_id=router.id, network_id=inside.id, subnet_id=sub.id,
                             mac="fa:16:3e:c5:00:01", ip="10.61.0.1"))
        vm1 = nb.create(Port(name="vm1", network_id=inside.id, mac=VM1[0], ips=[VM1[1]], chassis=host.name))
        vm2 = nb.create(Port(name="vm2", network_id=inside.id, mac=VM2[0], ips=[VM2[1]], chassis=host.name))
        nb.create(Port(name="upstream", network_id=ext.id, mac=UPSTREAM_MAC, ips=[EXT_GW], chassis="",
                       port_security=False))
        nb.create(FloatingIP(name="fip", floating_network_id=ext.id, floating_ip_address=FIP, port_id=vm2.id))
    return vm1, vm2


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    base: Path = tmp_path_factory.mktemp("csnat")
    tag = secrets.token_hex(2)
    outside = f"hwf-x{tag}"
    run("ip", "netns", "add", outside)
    host = SimHost(f"c{tag}", base / "host", f"sqlite:///{base}/nb.sqlite", uplinks={PHYSNET: outside},
                   external_ip=EXTERNAL_IP)
    try:
        host.start()
        vm1, vm2 = create_site(host)
        device = host.uplink_peer(PHYSNET)
        for argv in (("ip", "link", "set", device, "address", UPSTREAM_MAC),
                     ("ip", "addr", "add", f"{EXT_GW}/24", "dev", device),
                     ("ip", "addr", "add", f"{REMOTE}/32", "dev", "lo"), ("ip", "link", "set", "lo", "up"),
                     ("ethtool", "-K", device, "tx", "off")):  # a real router's frames carry whole checksums
            in_ns(outside, *argv)
        host.plug(vm1, vm_ns(host, "vm1"), gateway="10.61.0.1")
        host.plug(vm2, vm_ns(host, "vm2"), gateway="10.61.0.1")
        wait_for("the FIP's and the chassis SNAT's NAT flows in OVS", lambda: nat_flows(host) >= NAT_FLOWS, host=host)
        yield Site(host, vm_ns(host, "vm1"), vm_ns(host, "vm2"), outside)
    finally:
        try:
            host.stop()
        finally:
            run("ip", "netns", "delete", outside, check=False)


def ping_ttl(ns: str, address: str, ttl: int) -> str:
    """One ping leaving ``ns`` with IP TTL ``ttl``: its summary line tells whether it got through."""
    return in_ns(ns, "ping", "-c", "1", "-W", "1", "-t", str(ttl), address, check=False).stdout


def ip_received(ns: str) -> int:
    """IPv4 packets ``ns`` has received (its ARP traffic, e.g. refreshing its gateway's entry, does not count)."""
    lines = [line.split() for line in in_ns(ns, "cat", "/proc/net/snmp").stdout.splitlines() if line.startswith("Ip:")]
    return int(lines[1][lines[0].index("InReceives")])


def test_a_vm_without_fip_goes_out_as_the_chassis_external_ip(site: Site) -> None:
    out = ping(site.vm1, REMOTE)
    assert " 0% packet loss" in out, out + agent_log(site.host)[-3000:]
    assert "ttl=63" in out  # the reply was routed once on its way in, after its un-SNAT
    assert ask(site.vm1, site.outside, REMOTE, bind=REMOTE) == [EXTERNAL_IP, REMOTE]
    neigh = in_ns(site.outside, "ip", "neigh", "show", EXTERNAL_IP).stdout
    assert ":".join(f"{b:02x}" for b in nat_mac(EXTERNAL_IP).to_bytes(6, "big")) in neigh  # the host answered ARP


def test_the_way_out_is_routed_once(site: Site) -> None:
    assert " 0% packet loss" in ping_ttl(site.vm1, REMOTE, ttl=2)
    assert " 100% packet loss" in ping_ttl(site.vm1, REMOTE, ttl=1)  # the router's TTL decrement ends it


def test_the_outside_cannot_open_a_connection_through_the_external_ip(site: Site) -> None:
    before = ip_received(site.vm1)
    assert " 100% packet loss" in ping(site.outside, EXTERNAL_IP)
    assert ask(site.outside, site.vm1, EXTERNAL_IP, bind="0.0.0.0") == ["TimeoutError: timed out"]
    assert ip_received(site.vm1) == before


def test_a_vm_with_a_fip_on_the_same_router_still_goes_out_as_its_fip(site: Site) -> None:
    assert ask(site.vm2, site.outside, REMOTE, bind=REMOTE) == [FIP, REMOTE]
    assert ask(site.vm1, site.outside, REMOTE, bind=REMOTE) == [EXTERNAL_IP, REMOTE]
    assert " 0% packet loss" in ping(site.outside, FIP)  # and is still reached through it
