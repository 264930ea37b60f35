"""The ARP responder on a real host: requests for a port's address are answered by OVS, not flooded.

Three VMs on one network (their IPv6 is off: SimHost disables it, so their
interfaces receive nothing but what the tests send). A request from vm1 for
vm2's address must come back answered with vm2's MAC while vm3, which would
get every flooded frame, receives nothing; a request for an address no port
holds is still flooded (and vm3's counter shows the measurement would see it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from test_e2e import VMS, Lab, create_network, ping, plug, programmed, vm_ns, wait_for, wait_programmed

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


def rx_packets(host: SimHost, vm: str) -> int:
    """Frames the VM's interface received."""
    return int(in_ns(vm_ns(host, vm), "cat", "/sys/class/net/eth0/statistics/rx_packets").stdout)


def neighbour(host: SimHost, vm: str, address: str) -> str:
    return in_ns(vm_ns(host, vm), "ip", "neigh", "show", address, "dev", "eth0").stdout


def test_a_request_for_another_vms_address_is_answered_with_its_mac_and_not_flooded(trio: SimHost) -> None:
    for vm in ("vm1", "vm2"):
        in_ns(vm_ns(trio, vm), "ip", "neigh", "flush", "dev", "eth0")
    before = rx_packets(trio, "vm3")

    assert ping(trio, "vm1", VMS[1][2], count=3) == 0

    assert VMS[1][1] in neighbour(trio, "vm1", VMS[1][2])
    assert VMS[0][1] in neighbour(trio, "vm2", VMS[0][2])  # vm2's request for vm1 was answered too
    assert rx_packets(trio, "vm3") == before, "vm3 received a frame: an ARP request was flooded"


def test_a_request_for_an_address_nobody_holds_is_flooded(trio: SimHost) -> None:
    before = rx_packets(trio, "vm3")
    assert ping(trio, "vm1", UNKNOWN, count=1) == 100
    wait_for("vm3 receiving vm1's flooded request", lambda: rx_packets(trio, "vm3") > before, timeout=5)
    assert "lladdr" not in neighbour(trio, "vm1", UNKNOWN)
