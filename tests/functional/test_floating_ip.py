"""Floating IPs in real OVS: a VM goes out as its FIP, the outside reaches it through the FIP, and a FIP removed
while running stops both.

One SimHost: vm1 on an inside network behind router r, whose gateway is a flat external network. On that
network sits "upstream", the router to the rest of the world: a VM here, plugged like vm1 (without port
security: it forwards others' addresses), holding the external subnet's gateway_ip (how l3 knows the next
hop's MAC) and, on its loopback, a "remote" address standing for the Internet behind it. The external network
is mapped to an uplink whose far end is an empty namespace.
"""

from __future__ import annotations

import contextlib
import secrets
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_e2e import agent_log, ovs_flows, vm_ns, wait_for

from hwflow.apps.l3 import nat_mac
from hwflow.db.api import NbApi
from hwflow.model.objects import FloatingIP, Network, Port, Router, RouterPort, Subnet
from hwflow.sim.host import SimHost, in_ns, run, stop_process

pytestmark = pytest.mark.functional

PHYSNET = "physnet1"
FIP, EXT_GW, REMOTE = "198.51.100.50", "198.51.100.1", "203.0.113.9"
VM1 = ("fa:16:3e:f1:00:05", "10.60.0.5")
UPSTREAM_MAC = "fa:16:3e:f1:ee:01"
UDP_PORT = 7007
# Answers every datagram to the address in argv[1] with the address it came from: each side sees what the other saw.
ECHO_SOURCE = (
    "import socket, sys\n"
    "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    f"s.bind((sys.argv[1], {UDP_PORT}))\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    data, peer = s.recvfrom(100)\n"
    "    s.sendto(peer[0].encode(), peer)\n"
)
# Sends one datagram and prints "<what the server saw as our address> <the address the answer came from>".
ASK = ("import socket, sys\n"
       "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
       "s.settimeout(2)\n"
       f"s.sendto(b'?', (sys.argv[1], {UDP_PORT}))\n"
       "data, peer = s.recvfrom(100)\n"
       "print(data.decode(), peer[0])\n")


class Site:
    def __init__(self, host: SimHost, fip_id: str, upstream: str) -> None:
        self.host = host
        self.fip_id = fip_id
        self.vm1 = vm_ns(host, "vm1")
        self.upstream = upstream  # the namespace holding the external gateway's address


def nat_flows(host: SimHost) -> int:
    """hwflow flows whose actions include a ct (the NAT and un-NAT steps)."""
    return sum(1 for f in ovs_flows(host) if "ct" in repr(f.actions).lower())


@dataclass(frozen=True)
class NatSite:
    """What a NAT test builds: an inside network behind router r, whose gateway is a flat external network."""

    inside: str  # the inside subnet's first three octets, e.g. "10.60.0"; .1 is the router's
    vni: int
    router_mac: str
    vms: Mapping[str, tuple[str, str]]  # name -> (mac, address): ports of this host on the inside network
    fip_holder: str  # which of them holds the FIP
    fip: str
    upstream_mac: str
    remote: str  # an address behind upstream, standing for the Internet

    @property
    def gateway(self) -> str:
        return f"{self.inside}.1"

    def create(self, host: SimHost, upstream_chassis: str) -> tuple[dict[str, Port], Port, FloatingIP]:
        """The networks, router, VMs and FIP, and upstream (bound to ``upstream_chassis``, "" = nowhere)."""
        with NbApi.from_url(host.database) as nb:
            inside = nb.create(Network(name="inside", vni=self.vni))
            sub = nb.create(Subnet(name="inside", network_id=inside.id, cidr=f"{self.inside}.0/24",
                                   gateway_ip=self.gateway))
            ext = nb.create(Network(name="ext", network_type="flat", physical_network=PHYSNET, external=True))
            nb.create(Subnet(name="ext", network_id=ext.id, cidr="198.51.100.0/24", gateway_ip=EXT_GW,
                             enable_dhcp=False))
            router = nb.create(Router(name="r", gateway_network_id=ext.id, gateway_ip="198.51.100.2"))
            nb.create(RouterPort(name="r-inside", router_id=router.id, network_id=inside.id, subnet_id=sub.id,
                                 mac=self.router_mac, ip=self.gateway))
            vms = {name: nb.create(Port(name=name, network_id=inside.id, mac=mac, ips=[ip], chassis=host.name))
                   for name, (mac, ip) in self.vms.items()}
            upstream = nb.create(Port(name="upstream", network_id=ext.id, mac=self.upstream_mac, ips=[EXT_GW],
                                      chassis=upstream_chassis, port_security=False))
            fip = nb.create(FloatingIP(name="fip", floating_network_id=ext.id, floating_ip_address=self.fip,
                                       port_id=vms[self.fip_holder].id))
        return vms, upstream, fip

    def upstream_behind_uplink(self, host: SimHost, outside: str) -> None:
        """Make the far end of the external network's uplink (in ``outside``) the upstream router."""
        device = host.uplink_peer(PHYSNET)
        for argv in (("ip", "link", "set", device, "address", self.upstream_mac),
                     ("ip", "addr", "add", f"{EXT_GW}/24", "dev", device),
                     ("ip", "addr", "add", f"{self.remote}/32", "dev", "lo"), ("ip", "link", "set", "lo", "up"),
                     ("ethtool", "-K", device, "tx", "off")):  # a real router's frames carry whole checksums
            in_ns(outside, *argv)


@contextlib.contextmanager
def nat_host(tmp_path_factory: pytest.TempPathFactory, kind: str, **options: str) -> Iterator[tuple[SimHost, str]]:
    """A started SimHost whose PHYSNET uplink leads to a fresh namespace (also returned); both gone afterwards."""
    base: Path = tmp_path_factory.mktemp(kind)
    tag = secrets.token_hex(2)
    outside = f"hwf-out{tag}"  # the host's own namespace is hwf-<its name>
    run("ip", "netns", "add", outside)
    host = SimHost(f"{kind[0]}{tag}", base / "host", f"sqlite:///{base}/nb.sqlite", uplinks={PHYSNET: outside},
                   **options)
    try:
        host.start()
        yield host, outside
    finally:
        try:
            host.stop()
        finally:
            run("ip", "netns", "delete", outside, check=False)


SITE = NatSite(inside="10.60.0", vni=6000, router_mac="fa:16:3e:f1:00:01", vms={"vm1": VM1}, fip_holder="vm1",
               fip=FIP, upstream_mac=UPSTREAM_MAC, remote=REMOTE)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with nat_host(tmp_path_factory, "fip") as (host, _):
        vms, upstream, fip = SITE.create(host, host.name)
        host.plug(vms["vm1"], vm_ns(host, "vm1"), gateway=SITE.gateway)
        host.plug(upstream, vm_ns(host, "up"))
        in_ns(vm_ns(host, "up"), "ip", "addr", "add", f"{REMOTE}/32", "dev", "lo")
        wait_for("the FIP's NAT flows in OVS", lambda: nat_flows(host) >= 2, host=host)
        yield Site(host, fip.id, vm_ns(host, "up"))


@pytest.fixture(scope="module")
def behind_uplink(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The same site, with upstream where it really is: behind the external network's uplink, bound nowhere."""
    with nat_host(tmp_path_factory, "uplink") as (host, outside):
        vms, _, fip = SITE.create(host, "")
        SITE.upstream_behind_uplink(host, outside)
        host.plug(vms["vm1"], vm_ns(host, "vm1"), gateway=SITE.gateway)
        wait_for("the FIP's NAT flows in OVS", lambda: nat_flows(host) >= 2, host=host)
        yield Site(host, fip.id, outside)


def ping(ns: str, address: str) -> str:
    out = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.2", "-W", "2", address],
                         capture_output=True, text=True, check=False)
    return out.stdout


def ask(ns: str, server_ns: str, address: str, bind: str) -> list[str]:
    """Ask the echo server in ``server_ns`` (on ``bind``) from ``ns`` at ``address``: [source it saw, answer's]."""
    server = subprocess.Popen(["ip", "netns", "exec", server_ns, sys.executable, "-c", ECHO_SOURCE, bind],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", ASK, address],
                             capture_output=True, text=True, check=False, timeout=20)
        return out.stdout.split() or [out.stderr.strip().splitlines()[-1]]
    finally:
        stop_process(server)


def test_the_vm_goes_out_as_its_fip_and_the_replies_find_it(site: Site) -> None:
    out = ping(site.vm1, REMOTE)
    assert " 0% packet loss" in out, out + agent_log(site.host)[-3000:]
    assert "ttl=63" in out  # the reply was routed once, by the router on the VM's host
    assert ask(site.vm1, site.upstream, REMOTE, bind=REMOTE) == [FIP, REMOTE]
    neigh = in_ns(site.upstream, "ip", "neigh", "show", FIP).stdout
    mac = ":".join(f"{b:02x}" for b in nat_mac(FIP).to_bytes(6, "big"))
    assert mac in neigh  # upstream asked who has the FIP, and the VM's host answered


def test_the_outside_reaches_the_vm_through_its_fip(site: Site) -> None:
    out = ping(site.upstream, FIP)
    assert " 0% packet loss" in out, out + agent_log(site.host)[-3000:]
    assert ask(site.upstream, site.vm1, FIP, bind="0.0.0.0") == [EXT_GW, FIP]  # DNATed in, un-DNATed out


def test_a_fip_removed_while_running_stops_both_ways(site: Site) -> None:
    with NbApi.from_url(site.host.database) as nb:
        nb.delete(FloatingIP, site.fip_id)
    wait_for("the FIP's flows gone", lambda: nat_flows(site.host) == 0, host=site.host)
    in_ns(site.upstream, "ip", "neigh", "flush", "dev", "eth0")
    assert " 100% packet loss" in ping(site.upstream, FIP)
    assert " 100% packet loss" in ping(site.vm1, REMOTE)  # no FIP and no chassis address: no way out


def test_through_the_uplink_the_vm_goes_out_as_its_fip_and_is_reached_through_it(behind_uplink: Site) -> None:
    out = ping(behind_uplink.vm1, REMOTE)
    assert " 0% packet loss" in out, out
    assert ask(behind_uplink.vm1, behind_uplink.upstream, REMOTE, bind=REMOTE) == [FIP, REMOTE]
    assert " 0% packet loss" in ping(behind_uplink.upstream, FIP)
