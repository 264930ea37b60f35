"""Admin state with real packets (issue 17): a port set admin down through the NB API stops carrying traffic both
ways and is no longer reported up; set up again, it pings and is reported again. Its network set down holds every
port of it down the same way. One simulated host, two VMs on one network (test_e2e's), on the NIC path and on the
OVS path (the NIC refusing every rule), as tests/functional/test_isolation_packets.py; the pipeline's part is
tests/unit/test_admin_state.py."""

from __future__ import annotations

import dataclasses
import secrets
from pathlib import Path

import pytest
from test_e2e import VMS, Lab, create_network, evidence, lab, plug, vm_ns, wait_for  # noqa: F401
from test_isolation_packets import PATHS

from hwflow.db.api import NbApi
from hwflow.model.objects import NbObject, Network
from hwflow.sim.host import SimHost

pytestmark = pytest.mark.functional

PINGS = 5
ADDRESS = {vm: ip for vm, _, ip in VMS}


def reaches(host: SimHost, src: str, dst: str) -> bool:
    """One ping from ``src`` to ``dst`` is answered."""
    return host.ping(vm_ns(host, src), ADDRESS[dst], count=1, interval=0.2) == 0.0


def reported(nb: NbApi) -> set[str]:
    return {status.port for status in nb.ports_up()[1]}


def set_admin(nb: NbApi, obj: NbObject, up: bool) -> None:
    nb.update(dataclasses.replace(nb.get(type(obj), obj.id), admin_state_up=up))


@pytest.mark.parametrize("path", sorted(PATHS))
def test_a_port_or_network_set_down_stops_its_traffic_both_ways_and_up_brings_it_back(lab: Lab,  # noqa: F811
                                                                                     tmp_path: Path, path: str) -> None:
    name = f"e2{secrets.token_hex(2)}"
    host = SimHost(name, tmp_path / name, f"sqlite:///{tmp_path}/{name}.sqlite", **PATHS[path])
    lab.hosts.append(host)
    host.start()
    ports = create_network(host)
    plug(host, ports)
    vm1, vm2 = ports["vm1"], ports["vm2"]
    wait_for("vm1 to reach vm2", lambda: reaches(host, "vm1", "vm2"), 60, host, lambda: evidence(host))
    with NbApi.from_url(host.database) as nb:
        wait_for("both ports reported up", lambda: reported(nb) == {vm1.id, vm2.id}, host=host)

        set_admin(nb, vm2, False)
        wait_for("vm2's report taken back", lambda: reported(nb) == {vm1.id}, host=host)
        assert host.ping(vm_ns(host, "vm1"), ADDRESS["vm2"], count=PINGS, interval=0.05) == 100.0
        assert host.ping(vm_ns(host, "vm2"), ADDRESS["vm1"], count=PINGS, interval=0.05) == 100.0

        set_admin(nb, vm2, True)
        wait_for("vm1 to reach vm2 again", lambda: reaches(host, "vm1", "vm2"), host=host)
        assert host.ping(vm_ns(host, "vm2"), ADDRESS["vm1"], count=PINGS, interval=0.05) == 0.0
        wait_for("vm2 reported up again", lambda: reported(nb) == {vm1.id, vm2.id}, host=host)

        (net,) = nb.list(Network)
        set_admin(nb, net, False)
        wait_for("no port of the network reported", lambda: reported(nb) == set(), host=host)
        for src, dst in (("vm1", "vm2"), ("vm2", "vm1")):
            assert host.ping(vm_ns(host, src), ADDRESS[dst], count=PINGS, interval=0.05) == 100.0, (src, dst)

        set_admin(nb, net, True)
        wait_for("vm2 to reach vm1 with the network up", lambda: reaches(host, "vm2", "vm1"), host=host)
        assert host.ping(vm_ns(host, "vm1"), ADDRESS["vm2"], count=PINGS, interval=0.05) == 0.0
        wait_for("both ports reported up again", lambda: reported(nb) == {vm1.id, vm2.id}, host=host)
