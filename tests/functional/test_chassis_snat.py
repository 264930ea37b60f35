"""Per-chassis SNAT in real OVS: a VM without a FIP goes out as its host's external_ip, its replies come back, the
outside cannot open a connection through that address, and a FIP on the same router still wins.

One SimHost with ``external_ip`` set: vm1 (no FIP) and vm2 (with a FIP) on an inside network behind router r, whose
gateway is a flat external network mapped to an uplink. Behind the uplink, in the outside namespace, sits
"upstream", the router to the rest of the world (bound nowhere, holding the external subnet's gateway_ip: how l3
knows the next hop's MAC), with a "remote" address on its loopback standing for the Internet.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from test_e2e import agent_log, vm_ns, wait_for
from test_floating_ip import NatSite, ask, nat_flows, nat_host, ping

from hwflow.apps.l3 import nat_mac
from hwflow.sim.host import SimHost, in_ns

pytestmark = pytest.mark.functional

EXTERNAL_IP, FIP, REMOTE = "198.51.100.77", "198.51.100.60", "203.0.113.19"
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


SITE = NatSite(inside="10.61.0", vni=6100, router_mac="fa:16:3e:c5:00:01", vms={"vm1": VM1, "vm2": VM2},
               fip_holder="vm2", fip=FIP, upstream_mac=UPSTREAM_MAC, remote=REMOTE)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    with nat_host(tmp_path_factory, "xsnat", external_ip=EXTERNAL_IP) as (host, outside):
        vms, _, _ = SITE.create(host, "")
        SITE.upstream_behind_uplink(host, outside)
        for vm in ("vm1", "vm2"):
            host.plug(vms[vm], vm_ns(host, vm), gateway=SITE.gateway)
        wait_for("the FIP's and the chassis SNAT's NAT flows in OVS", lambda: nat_flows(host) >= NAT_FLOWS, host=host)
        yield Site(host, vm_ns(host, "vm1"), vm_ns(host, "vm2"), outside)


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
