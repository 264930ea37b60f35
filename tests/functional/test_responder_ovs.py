"""The ARP and ND responder on a real host: requests for a port's address are answered by OVS, not flooded.

Three VMs on one network. A request from vm1 for vm2's address must come
back answered with vm2's MAC while vm3, which would get every flooded frame,
sees no ARP request for it (an ARP sniffer in vm3 lists the addresses asked
for; counting all of vm3's frames was flaky: a VM's own announcements, which
are flooded, may arrive during the test); a request for an address no port
holds is still flooded (and the sniffer shows the measurement would see it).

The same with IPv6 in three IPv6-enabled VMs: ``ping -6`` between two of
them works while the third sees no neighbor solicitation for either address
(its sniffer lists the targets of the solicitations it receives), the
answering flows count the answers, and duplicate address detection is never
answered: an address added with DAD does not end up ``dadfailed``. The
network's router port is answered for too, as a router (the VM's neighbour
entry says ``router``).
"""

from __future__ import annotations

import ipaddress
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from test_e2e import VMS, Lab, create_network, ovs_flows, ping, plug, programmed, vm_ns, wait_for, wait_programmed

from hwflow.db.api import NbApi
from hwflow.model.objects import Network, Port, Router, RouterPort, Subnet
from hwflow.sim.host import SimHost, in_ns

pytestmark = pytest.mark.functional

UNKNOWN = "10.0.0.99"
V6 = {"vm1": "fd00::1", "vm2": "fd00::2", "vm3": "fd00::3"}
FAR_V6 = "fd00::9"  # a port of the network bound to another chassis: answered here, held by no VM
UNKNOWN_V6 = "fd00::99"
ROUTER_V6, ROUTER_MAC = "fd00::fe", "fa:16:3e:ee:00:06"


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimHost]:
    """One host with vm1, vm2 and vm3 on one network, fully programmed."""
    lab = Lab(tmp_path_factory.mktemp)
    try:
        host = lab.host()
        plug(host, create_network(host, VMS))
        wait_programmed(host, **programmed(3))
        yield host
    finally:
        lab.stop()


# Prints the target address of each request (ARP with argv[2] "arp", an ND solicitation with "nd") seen on eth0
# for argv[1] seconds, after a "ready" line.
SNIFFER = """
import socket, sys, time
arp = sys.argv[2] == "arp"
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806 if arp else 0x86DD))
s.bind(("eth0", 0))
s.settimeout(0.2)
end = time.time() + float(sys.argv[1])
print("ready", flush=True)
while time.time() < end:
    try:
        frame = s.recv(2048)
    except socket.timeout:
        continue
    if arp and frame[20:22] == b"\\x00\\x01":  # ARP operation: request
        print(socket.inet_ntoa(frame[38:42]), flush=True)
    elif not arp and frame[20] == 58 and frame[54] == 135:  # ICMPv6 right after the IPv6 header: an NS
        print(socket.inet_ntop(socket.AF_INET6, frame[62:78]), flush=True)
"""


class Requests:
    """The targets of the ARP requests (or ND solicitations) a VM receives while the ``with`` block runs."""

    def __init__(self, host: SimHost, vm: str, seconds: float = 6.0, kind: str = "arp") -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", vm_ns(host, vm), sys.executable, "-c", SNIFFER,
                                      str(seconds), kind], stdout=subprocess.PIPE, text=True)
        self.targets: list[str] = []

    def __enter__(self) -> Requests:
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        return self

    def __exit__(self, *exc: object) -> None:
        out, _ = self.proc.communicate(timeout=30)
        self.targets = out.split()


def neighbour(host: SimHost, vm: str, address: str) -> str:
    return in_ns(vm_ns(host, vm), "ip", "neigh", "show", address, "dev", "eth0").stdout


def test_a_request_for_another_vms_address_is_answered_with_its_mac_and_not_flooded(trio: SimHost) -> None:
    for vm in ("vm1", "vm2"):
        in_ns(vm_ns(trio, vm), "ip", "neigh", "flush", "dev", "eth0")
    with Requests(trio, "vm3") as seen:
        assert ping(trio, "vm1", VMS[1][2], count=3) == 0

    assert VMS[1][1] in neighbour(trio, "vm1", VMS[1][2])
    assert VMS[0][1] in neighbour(trio, "vm2", VMS[0][2])  # vm2's request for vm1 was answered too
    assert not {VMS[0][2], VMS[1][2]} & set(seen.targets), f"vm3 saw ARP requests for {seen.targets}: flooded"


def test_a_request_for_an_address_nobody_holds_is_flooded(trio: SimHost) -> None:
    with Requests(trio, "vm3", seconds=4.0) as seen:
        assert ping(trio, "vm1", UNKNOWN, count=1) == 100
    assert UNKNOWN in seen.targets
    assert "lladdr" not in neighbour(trio, "vm1", UNKNOWN)


# --- IPv6 neighbor discovery ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def trio6(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimHost]:
    """vm1, vm2 and vm3 with IPv4 and IPv6 (vm3's added with DAD) on one network, plus a remote port holding
    FAR_V6 and a router port holding ROUTER_V6; programmed down to the ND answers."""
    lab = Lab(tmp_path_factory.mktemp)
    try:
        host = lab.host()
        with NbApi.from_url(host.database) as nb:
            net = nb.create(Network(name="v6-net", vni=1002))
            nb.create(Subnet(name="v4", network_id=net.id, cidr="10.0.0.0/24", gateway_ip="10.0.0.254"))
            v6 = nb.create(Subnet(name="v6", network_id=net.id, cidr="fd00::/64", gateway_ip=ROUTER_V6))
            router = nb.create(Router(name="r6"))
            nb.create(RouterPort(name="r6-v6", router_id=router.id, network_id=net.id, subnet_id=v6.id,
                                 mac=ROUTER_MAC, ip=ROUTER_V6))
            ports = {vm: nb.create(Port(name=vm, network_id=net.id, mac=mac, ips=[ip, V6[vm]], chassis=host.name))
                     for vm, mac, ip in VMS}
            nb.create(Port(name="far", network_id=net.id, mac="fa:16:3e:00:00:09", ips=["10.0.0.9", FAR_V6],
                           chassis="elsewhere"))
        for vm, port in ports.items():
            host.plug(port, vm_ns(host, vm), ipv6=True, ipv6_dad=vm == "vm3")
        wait_for("an ND answer per IPv6 address in OVS", lambda: len(nd_answers(host)) == len(V6) + 2, host=host)
        yield host
    finally:
        lab.stop()


def nd_answers(host: SimHost) -> dict[str, int]:
    """The answering flows' packet counts, by the IPv6 address they answer for."""
    answers = {}
    for flow in ovs_flows(host):
        target = next((value for field, value, _ in flow.key[2] if field == "ipv6_nd_target"), None)
        if target is not None and any(a[:2] == ("set_field", "nd_reserved") for k, *rest in flow.actions
                                      if k == "apply" for a in rest[0]):
            answers[str(ipaddress.IPv6Address(target))] = flow.packets
    return answers


def test_ping6_resolves_through_the_host_and_no_solicitation_reaches_the_third_vm(trio6: SimHost) -> None:
    for vm in ("vm1", "vm2"):
        in_ns(vm_ns(trio6, vm), "ip", "-6", "neigh", "flush", "dev", "eth0")
    before = nd_answers(trio6)
    with Requests(trio6, "vm3", kind="nd") as seen:
        assert ping(trio6, "vm1", V6["vm2"], count=3) == 0

    assert VMS[1][1] in neighbour(trio6, "vm1", V6["vm2"])
    assert not {V6["vm1"], V6["vm2"]} & set(seen.targets), f"vm3 saw solicitations for {seen.targets}: flooded"
    assert nd_answers(trio6)[V6["vm2"]] > before[V6["vm2"]], "vm1's solicitation was not answered by OVS"


def test_the_router_port_is_answered_for_as_a_router(trio6: SimHost) -> None:
    vm2 = vm_ns(trio6, "vm2")
    with Requests(trio6, "vm3", seconds=4.0, kind="nd") as seen:
        in_ns(vm2, "ping", "-6", "-c", "1", "-W", "1", ROUTER_V6, check=False)  # no echo reply: it is no host
    entry = neighbour(trio6, "vm2", ROUTER_V6)
    assert ROUTER_MAC in entry and " router" in entry, entry
    assert ROUTER_V6 not in seen.targets


def test_a_solicitation_for_an_address_nobody_holds_is_flooded(trio6: SimHost) -> None:
    with Requests(trio6, "vm3", seconds=5.0, kind="nd") as seen:
        assert ping(trio6, "vm1", UNKNOWN_V6, count=1) == 100
    assert UNKNOWN_V6 in seen.targets


def test_duplicate_address_detection_is_never_answered(trio6: SimHost) -> None:
    """vm3's own address and, from vm1, the remote port's: the host answers solicitations for both, but not
    DAD probes (from ::), so neither ends up dadfailed; vm3 still sees vm1's probe, flooded."""
    wait_for("vm3's address out of DAD", lambda: trio6.ipv6_address_flags(
        vm_ns(trio6, "vm3"), V6["vm3"]) == set(), timeout=10, host=trio6)
    vm1 = vm_ns(trio6, "vm1")
    with Requests(trio6, "vm3", seconds=4.0, kind="nd") as seen:
        in_ns(vm1, "ip", "-6", "addr", "add", f"{FAR_V6}/64", "dev", "eth0")
        time.sleep(3)  # one probe, a second's wait (the kernel's defaults), and some to spare
    try:
        assert trio6.ipv6_address_flags(vm1, FAR_V6) == set()
        assert FAR_V6 in seen.targets
    finally:
        in_ns(vm1, "ip", "-6", "addr", "del", f"{FAR_V6}/64", "dev", "eth0")
