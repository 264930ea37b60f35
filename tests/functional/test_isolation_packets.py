"""Isolation with real packets (issue 16, part 3): two tenants with the same subnet and the same addresses on one
simulated host, on the NIC path and on the OVS path.

Tenant a has a1 (10.60.0.1) and a2 (10.60.0.2); tenant b has b1 and b2 with the very same addresses, each on its
own network. a1 pings a2 (delivered); then aims at b2 (its MAC for 10.60.0.2), sends from an address it does not
own, and from a MAC it does not own (b1's): none of it arrives in any VM (their interfaces' receive counters do
not move). The VMs' neighbours are permanent entries, so nothing but the pings is sent. On the NIC path
(mlx5-connectx6dx) the NIC's rules forward the ping and drop the spoofed packets, OVS sees none of them; on the
OVS path (the same NIC refusing every rule: ``hwflow-simnic --refuse-rate 1``) OVS takes them all. The unit
property over random topologies is tests/unit/test_isolation.py.
"""

from __future__ import annotations

import functools
import json
import secrets
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from test_e2e import Lab, counted, evidence, hw_packets, lab, ovs_rx, representor, vm_ns, wait_for  # noqa: F401
from test_provider import COUNTER

from hwflow.backends.tc import flower as fl
from hwflow.db.api import NbApi
from hwflow.model.objects import Network, Port, Subnet
from hwflow.sim.host import SimHost, in_ns

pytestmark = pytest.mark.functional

PINGS = 10
SUBNET = "10.60.0.0/24"
TENANTS = {"a": 3601, "b": 3602}  # tenant -> its network's VNI
VMS = {f"{t}{i}": (t, f"fa:16:3e:60:0{t}:0{i}", f"10.60.0.{i}") for t in TENANTS for i in (1, 2)}
SPOOFED_IP = "10.60.0.9"
CAPTURE = 4  # seconds each VM's capture runs: the pings take 0.5 s, 1.5 s unanswered
PATHS = {"nic": {"profile": "mlx5-connectx6dx"}, "ovs": {"profile": "mlx5-connectx6dx", "nic_refuse_rate": 1.0}}


def two_tenants(sims: Lab, tmp_path: Path, path: str) -> SimHost:
    """A host (of ``PATHS[path]``) with the four VMs plugged, every VM able to reach its neighbour."""
    name = f"e2{secrets.token_hex(2)}"
    host = SimHost(name, tmp_path / name, f"sqlite:///{tmp_path}/{name}.sqlite", agent_debug=True, **PATHS[path])
    sims.hosts.append(host)
    host.start()
    with NbApi.from_url(host.database) as nb:
        nets = {t: nb.create(Network(name=f"iso-{t}", vni=vni, project_id=t)) for t, vni in TENANTS.items()}
        for t, net in nets.items():
            nb.create(Subnet(name=f"iso-{t}", network_id=net.id, cidr=SUBNET, project_id=t))
        ports = {vm: nb.create(Port(name=vm, network_id=nets[t].id, mac=mac, ips=[ip], chassis=host.name,
                                    project_id=t)) for vm, (t, mac, ip) in VMS.items()}
    for vm, port in ports.items():
        host.plug(port, vm_ns(host, vm))
    for vm, (tenant, _, _) in VMS.items():
        for peer, (other, mac, ip) in VMS.items():
            if other == tenant and peer != vm:
                neighbour(host, vm, ip, mac)
    for vm in VMS:
        peer = f"{vm[0]}{3 - int(vm[1])}"
        wait_for(f"{vm} to reach {peer}", lambda vm=vm, peer=peer: host.ping(
            vm_ns(host, vm), VMS[peer][2], count=1, interval=0.2) == 0.0, timeout=60, host=host)
    return host


def neighbour(host: SimHost, vm: str, ip: str, mac: str) -> None:
    in_ns(vm_ns(host, vm), "ip", "neigh", "replace", ip, "lladdr", mac, "dev", "eth0", "nud", "permanent")


def arrivals(host: SimHost, macs: list[str], send: Callable[[], object]) -> dict[str, list[int]]:
    """Frames each VM but a1 (the sender: its capture sees what it sends) receives from each of ``macs`` while
    ``send`` runs (a capture in each VM's namespace: the host's own kernel also sends the VMs router
    solicitations through their representors, from MACs of its own, which receive counters would count)."""
    counters = {vm: subprocess.Popen(["ip", "netns", "exec", vm_ns(host, vm), sys.executable, "-c", COUNTER,  # noqa: S603
                                      str(CAPTURE), *macs], stdout=subprocess.PIPE, text=True)
                for vm in VMS if vm != "a1"}
    try:
        for vm, counter in counters.items():
            assert counter.stdout is not None and counter.stdout.readline().strip() == "ready", vm
        send()
        return {vm: [int(n) for n in counter.communicate(timeout=CAPTURE + 10)[0].split()]
                for vm, counter in counters.items()}
    finally:
        for counter in counters.values():
            if counter.poll() is None:
                counter.kill()
                counter.wait(5)


def in_ovs(host: SimHost) -> int:
    """Packets a1 sent that the NIC handed to OVS (on a1's representor)."""
    return ovs_rx(host, representor(host, "a1"))


def dropped_by_nic(host: SimHost) -> int:
    """Packets a1 sent that a NIC drop rule took."""
    return counted(host, "a1", lambda rule: any(isinstance(a, fl.Gact) and a.verdict == "drop" for a in rule.actions))


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_tenant_reaches_its_neighbour_never_the_other_tenant_and_never_spoofs(lab: Lab,  # noqa: F811
                                                                              tmp_path: Path, path: str) -> None:
    host = two_tenants(lab, tmp_path, path)
    a1, figures = vm_ns(host, "a1"), {"path": path, "profile": PATHS[path]}

    own, spoofed_mac = VMS["a1"][1], VMS["b1"][1]
    ping = functools.partial(host.ping, a1, "10.60.0.2", count=PINGS, interval=0.05)

    ovs, by_nic = in_ovs(host), hw_packets(host, "a1", "a2")
    seen = arrivals(host, [own], lambda: ping() == 0.0 or pytest.fail(f"a1 did not reach a2{evidence(host)}"))
    assert seen["a2"][0] >= PINGS and all(seen[vm] == [0] for vm in ("b1", "b2")), seen
    if path == "nic":  # forwarded by the NIC's rules; OVS saw none of the requests
        assert hw_packets(host, "a1", "a2") - by_nic >= PINGS and in_ovs(host) == ovs, evidence(host)
    else:
        assert hw_packets(host, "a1", "a2") == by_nic and in_ovs(host) - ovs >= PINGS, evidence(host)
    figures["delivered"] = seen["a2"][0]

    def nothing_arrives(what: str, spoofed: bool) -> None:
        """a1 pings 10.60.0.2 as ``what`` says: no answer, and no VM receives a frame of it. On the NIC path a
        spoofed packet is the NIC's to drop (port security travels with its rules); one to a MAC its network
        does not hold may go to OVS, which drops it."""
        ovs, drops = in_ovs(host), dropped_by_nic(host)
        seen = arrivals(host, [own, spoofed_mac], lambda: ping() == 100.0 or pytest.fail(f"{what}: answered"))
        assert all(counts == [0, 0] for counts in seen.values()), (what, seen)
        if path == "nic" and spoofed:  # the NIC dropped each: OVS never saw them
            assert dropped_by_nic(host) - drops >= PINGS and in_ovs(host) == ovs, (what, evidence(host))
        elif path == "ovs":
            assert in_ovs(host) - ovs >= PINGS, (what, ovs, in_ovs(host))
        figures[what] = {"sent": PINGS, "arrived": sum(map(sum, seen.values())),
                         "dropped_by_nic": dropped_by_nic(host) - drops, "to_ovs": in_ovs(host) - ovs}

    neighbour(host, "a1", "10.60.0.2", VMS["b2"][1])  # tenant b's VM holding the same address
    nothing_arrives("to the other tenant", spoofed=False)
    neighbour(host, "a1", "10.60.0.2", VMS["a2"][1])
    in_ns(a1, "ip", "addr", "add", f"{SPOOFED_IP}/32", "dev", "eth0")
    in_ns(a1, "ip", "route", "replace", "10.60.0.2/32", "dev", "eth0", "src", SPOOFED_IP)
    nothing_arrives("from an address it does not own", spoofed=True)
    in_ns(a1, "ip", "route", "del", "10.60.0.2/32", "dev", "eth0")
    in_ns(a1, "ip", "addr", "del", f"{SPOOFED_IP}/32", "dev", "eth0")
    in_ns(a1, "ip", "link", "set", "eth0", "address", spoofed_mac)  # tenant b's twin's MAC
    neighbour(host, "a1", "10.60.0.2", VMS["a2"][1])  # a new MAC flushed the neighbours
    nothing_arrives("from a MAC it does not own", spoofed=True)
    in_ns(a1, "ip", "link", "set", "eth0", "address", own)
    neighbour(host, "a1", "10.60.0.2", VMS["a2"][1])
    assert ping() == 0.0, "a1 with its own addresses again"
    print("ISOLATION " + json.dumps(figures, sort_keys=True), flush=True)
