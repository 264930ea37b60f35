"""The ARP responder on a real host: requests for a port's address are answered by OVS, not flooded.

Three VMs on one network. A request from vm1 for vm2's address must come
back answered with vm2's MAC while vm3, which would get every flooded frame,
sees no ARP request for it (an ARP sniffer in vm3 lists the addresses asked
for; counting all of vm3's frames was flaky: a VM's own announcements, which
are flooded, may arrive during the test); a request for an address no port
holds is still flooded (and the sniffer shows the measurement would see it).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest
from test_e2e import VMS, Lab, create_network, ping, plug, programmed, vm_ns, wait_programmed

from hwflow.sim.host import SimHost, in_ns

pytestmark = pytest.mark.functional

UNKNOWN = "10.0.0.99"


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


# Prints each ARP request's target address seen on eth0 for argv[1] seconds, after a "ready" line.
SNIFFER = """
import socket, sys, time
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
s.bind(("eth0", 0))
s.settimeout(0.2)
end = time.time() + float(sys.argv[1])
print("ready", flush=True)
while time.time() < end:
    try:
        frame = s.recv(2048)
    except socket.timeout:
        continue
    if frame[20:22] == b"\\x00\\x01":  # ARP operation: request
        print(socket.inet_ntoa(frame[38:42]), flush=True)
"""


class ArpRequests:
    """The targets of the ARP requests a VM receives while the ``with`` block runs (and a second after)."""

    def __init__(self, host: SimHost, vm: str, seconds: float = 6.0) -> None:
        self.proc = subprocess.Popen(["ip", "netns", "exec", vm_ns(host, vm), sys.executable, "-c", SNIFFER,
                                      str(seconds)], stdout=subprocess.PIPE, text=True)
        self.targets: list[str] = []

    def __enter__(self) -> ArpRequests:
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
    with ArpRequests(trio, "vm3") as seen:
        assert ping(trio, "vm1", VMS[1][2], count=3) == 0

    assert VMS[1][1] in neighbour(trio, "vm1", VMS[1][2])
    assert VMS[0][1] in neighbour(trio, "vm2", VMS[0][2])  # vm2's request for vm1 was answered too
    assert not {VMS[0][2], VMS[1][2]} & set(seen.targets), f"vm3 saw ARP requests for {seen.targets}: flooded"


def test_a_request_for_an_address_nobody_holds_is_flooded(trio: SimHost) -> None:
    with ArpRequests(trio, "vm3", seconds=4.0) as seen:
        assert ping(trio, "vm1", UNKNOWN, count=1) == 100
    assert UNKNOWN in seen.targets
    assert "lladdr" not in neighbour(trio, "vm1", UNKNOWN)
