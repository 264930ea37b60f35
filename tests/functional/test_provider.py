"""Provider networks: a VM reaches an "outside" namespace through its physical network's uplink.

One SimHost maps physnet1 to a veth pair whose far end sits in a namespace standing for the physical
network. A switch there (its own userspace OVS: this kernel has no 8021q module for VLAN devices) takes
the uplink as a trunk and has two access ports, VLAN 100 and untagged, holding the outside addresses of
the vlan and the flat network, and a third access port on VLAN 300, which no network has, holding an
address in the flat network's subnet (what must not get in). Each outside address is a port of its network
bound nowhere (so L2 knows its MAC), which the agent reaches out of the uplink: tagged on the vlan network,
untagged on the flat one.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_e2e import vm_ns, wait_for

from hwflow.backends.ovs.daemons import OvsDaemons
from hwflow.db.api import NbApi
from hwflow.model.objects import Network, Port
from hwflow.sim.host import SimHost, in_ns, run

pytestmark = pytest.mark.functional

PHYSNET = "physnet1"
VLAN_ID = 100
OUTSIDE = {"vlan": ("fa:16:3e:0e:00:64", "10.71.0.100"), "flat": ("fa:16:3e:0e:00:01", "10.71.1.100")}
SWITCH = "br-out"
VMS = {"vlan": ("pv1", "fa:16:3e:71:00:01", "10.71.0.1"), "flat": ("pf1", "fa:16:3e:71:01:01", "10.71.1.1")}
STRAY = ("ostray", 300, "fa:16:3e:0e:01:2c", "10.71.1.200")  # an access port on a VLAN no network has


def learnt_vlans(switch: OvsDaemons, mac: str) -> set[int]:
    """VLANs on which the outside switch has seen frames from ``mac``."""
    fdb = run("ovs-appctl", "-t", str(switch.rundir / "vswitchd.ctl"), "fdb/show", SWITCH).stdout
    return {int(line.split()[1]) for line in fdb.splitlines()[1:] if line.split()[2] == mac}


@pytest.fixture(scope="module")
def provider(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimHost, OvsDaemons]]:
    """The host, with one VM on each provider network, and the outside switch."""
    base: Path = tmp_path_factory.mktemp("provider")
    tag = secrets.token_hex(2)
    outside = f"hwf-o{tag}"
    host = SimHost(f"p{tag}", base / "host", f"sqlite:///{base}/nb.sqlite", uplinks={PHYSNET: outside})
    run("ip", "netns", "add", outside)
    switch = OvsDaemons(base / "switch", netns=outside)
    try:
        host.start()
        device = host.uplink_peer(PHYSNET)
        switch.start()
        # the switch's own port floods untagged frames too: only the addressed device may answer ARP
        in_ns(outside, "sysctl", "-qw", "net.ipv4.conf.all.arp_ignore=1")
        vsctl = ("ovs-vsctl", f"--db={switch.db_sock}")
        run(*vsctl, "add-br", SWITCH, "--", "set", "bridge", SWITCH, "datapath_type=netdev", "--",
            "add-port", SWITCH, device)
        for dev, tag, mac, address in (("ovlan", VLAN_ID, *OUTSIDE["vlan"]), ("oflat", 0, *OUTSIDE["flat"]), STRAY):
            run(*vsctl, "add-port", SWITCH, dev, f"tag={tag}", "--", "set", "interface", dev, "type=internal")
            wait_for(f"{dev} in {outside}", lambda dev=dev: in_ns(outside, "ip", "link", "show", dev, check=False)
                     .returncode == 0)
            in_ns(outside, "ip", "link", "set", dev, "address", mac)
            in_ns(outside, "ip", "addr", "add", f"{address}/24", "dev", dev)
            in_ns(outside, "ip", "link", "set", dev, "up")
        with NbApi.from_url(host.database) as nb:
            for kind in ("vlan", "flat"):
                net = nb.create(Network(name=f"prov-{kind}", network_type=kind, physical_network=PHYSNET,
                                        vlan_id=VLAN_ID if kind == "vlan" else 0))
                mac, address = OUTSIDE[kind]
                nb.create(Port(name=f"outside-{kind}", network_id=net.id, mac=mac, ips=[address],
                               port_security=False))
                vm, vm_mac, vm_ip = VMS[kind]
                port = nb.create(Port(name=vm, network_id=net.id, mac=vm_mac, ips=[vm_ip], chassis=host.name))
                host.plug(port, vm_ns(host, vm))
        yield host, switch
    finally:
        host.stop()
        switch.stop()
        run("ip", "netns", "delete", outside, check=False)


def test_vm_on_a_vlan_network_pings_outside_with_tagged_frames(provider: tuple[SimHost, OvsDaemons]) -> None:
    host, switch = provider
    vm, vm_mac, _ = VMS["vlan"]
    wait_for(f"{vm} to reach {OUTSIDE['vlan'][1]} through the uplink without loss",
             lambda: host.ping(vm_ns(host, vm), OUTSIDE["vlan"][1], count=3, interval=0.1) == 0.0, timeout=30,
             host=host)
    assert learnt_vlans(switch, vm_mac) == {VLAN_ID}  # the switch saw the VM's frames tagged, on VLAN 100 only


def test_vm_on_a_flat_network_pings_outside_untagged(provider: tuple[SimHost, OvsDaemons]) -> None:
    host, switch = provider
    vm, vm_mac, _ = VMS["flat"]
    wait_for(f"{vm} to reach {OUTSIDE['flat'][1]} through the uplink without loss",
             lambda: host.ping(vm_ns(host, vm), OUTSIDE["flat"][1], count=3, interval=0.1) == 0.0, timeout=30,
             host=host)
    assert learnt_vlans(switch, vm_mac) == {0}


# Counts the frames eth0 receives from each MAC given, for a while; prints "ready", then the counts.
COUNTER = """
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.bind(("eth0", 0))
s.settimeout(0.2)
macs = [bytes.fromhex(m.replace(":", "")) for m in sys.argv[2:]]
seen = [0] * len(macs)
end = time.time() + float(sys.argv[1])
print("ready", flush=True)
while time.time() < end:
    try:
        frame = s.recv(4096)
    except socket.timeout:
        continue
    for i, mac in enumerate(macs):
        seen[i] += frame[6:12] == mac
print(*seen, flush=True)
"""


def test_frames_tagged_with_a_vlan_no_network_has_do_not_reach_the_flat_network(
        provider: tuple[SimHost, OvsDaemons]) -> None:
    host, _ = provider
    outside = host.uplinks[PHYSNET]
    vm, _, vm_ip = VMS["flat"]
    wait_for(f"{vm} to reach {OUTSIDE['flat'][1]} untagged", lambda: host.ping(
        vm_ns(host, vm), OUTSIDE["flat"][1], count=1, interval=0.1) == 0.0, timeout=30, host=host)
    counter = subprocess.Popen(["ip", "netns", "exec", vm_ns(host, vm), sys.executable, "-c", COUNTER,  # noqa: S603
                                "6", STRAY[2], OUTSIDE["flat"][0]], stdout=subprocess.PIPE, text=True)
    try:
        assert counter.stdout is not None and counter.stdout.readline().strip() == "ready"
        for source in (STRAY[0], "oflat"):  # tagged 300, then untagged: the same pings to the flat VM
            in_ns(outside, "ping", "-c", "3", "-i", "0.2", "-W", "1", "-I", source, vm_ip, check=False)
        stray, flat = map(int, counter.communicate(timeout=20)[0].split())
    finally:
        if counter.poll() is None:
            counter.kill()
            counter.wait(5)
    assert stray == 0  # dropped at the uplink, not taken as the flat network's, tag and all
    assert flat > 0  # the measurement sees what gets in
