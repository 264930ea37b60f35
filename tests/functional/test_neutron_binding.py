"""Port binding and port status through a real Neutron server (issue 17): a port bound to a simulated host whose
real hwflow-agent runs is ``vif_type ovs``; plugged, the agent programs it and reports it up, and Neutron shows
it ACTIVE; unplugged, DOWN. A host without an agent, a dead agent, a direct port on a chassis whose NIC cannot
offload, and a direct port that is not a switchdev VF: binding_failed, the reason in Neutron's log.

The server (tests/functional/neutron_server.py) and the simulated host share one hwflow database (an sqlite
file); openstacksdk drives Neutron as a user would.
"""

from __future__ import annotations

import contextlib
import json
import re
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

openstack = pytest.importorskip("openstack", reason="hwflow's neutron extra is not installed (pip install -e "
                                "'.[test,neutron]'; tools/dev.sh setup installs it)")
from neutron_server import NeutronServer  # noqa: E402

from hwflow.db.api import NbApi  # noqa: E402
from hwflow.model.objects import Chassis, Port  # noqa: E402
from hwflow.sim.host import SimHost  # noqa: E402
from hwflow.sim.profile import resolve  # noqa: E402

pytestmark = pytest.mark.functional

SWITCHDEV = {"capabilities": ["switchdev"]}  # what Nova puts in binding:profile for a switchdev NIC's VF
TIMEOUT = 60.0  # the agent's pass, its report, the watcher's poll and Neutron's update, on a busy machine


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, NbApi, SimHost, NeutronServer]]:
    """A simulated host with its agent (chassis = its name), a Neutron server writing the same hwflow database,
    a client, and the database."""
    workdir = tmp_path_factory.mktemp("binding")
    name = f"nb{secrets.token_hex(2)}"
    database = f"sqlite:///{workdir / 'hwflow.sqlite'}"
    with contextlib.ExitStack() as stack:
        host = SimHost(name, workdir / name, database)
        stack.callback(host.stop)
        host.start()
        server = NeutronServer(workdir, {"database": database})
        stack.callback(server.stop)
        server.start()
        nb = stack.enter_context(NbApi.from_url(database))
        wait_for("the agent's chassis, alive", lambda: name in nb.alive_chassis(), server, host)
        yield client(server), nb, host, server


def client(server: NeutronServer) -> Any:
    """openstacksdk on the server's API, as the tests' admin (auth_strategy noauth)."""
    return openstack.connection.Connection(auth_type="none", auth={"endpoint": server.url},
                                           network_endpoint_override=server.url)


@pytest.fixture(scope="module")
def drop_only(cloud, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimHost]:
    """A second simulated host on the same database whose switchdev NIC can drop but not redirect (sim-basic
    without its redirect action): its agent reports an offload device that cannot forward a VF's traffic."""
    _, nb, _, server = cloud
    workdir = tmp_path_factory.mktemp("drop-only")
    profile = json.loads(resolve("sim-basic").read_text())
    profile.update(name="sim-drop-only", description="sim-basic that cannot redirect")
    profile["capabilities"]["actions"] = ["drop"]
    (workdir / "sim-drop-only.json").write_text(json.dumps(profile))
    name = f"nd{secrets.token_hex(2)}"
    host = SimHost(name, workdir / name, cloud[2].database, profile=str(workdir / "sim-drop-only.json"))
    try:
        host.start()
        wait_for("the drop-only host's agent, alive", lambda: name in nb.alive_chassis(), server, host)
        yield host
    finally:
        host.stop()


def wait_for(what: str, check: Callable[[], Any], server: NeutronServer, host: SimHost | None = None) -> Any:
    deadline = time.monotonic() + TIMEOUT
    while not (found := check()):
        if time.monotonic() > deadline:
            agent = host.agent_log.read_text(errors="replace")[-3000:] if host else ""
            pytest.fail(f"timed out waiting for {what}\n--- neutron:\n{server.tail()}\n--- agent:\n{agent}")
        time.sleep(0.3)
    return found


@pytest.fixture
def network(cloud: tuple[Any, NbApi, SimHost, NeutronServer]) -> Iterator[Any]:
    conn = cloud[0]
    net = conn.network.create_network(name="bound")
    conn.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.7.0.0/24", is_dhcp_enabled=False)
    try:
        yield net
    finally:
        try:
            for port in conn.network.ports(network_id=net.id):
                conn.network.delete_port(port)
            conn.network.delete_network(net)
        except openstack.exceptions.HttpException as error:
            pytest.fail(f"cleaning up: {error}\n--- neutron:\n{cloud[3].tail()}")


def test_a_port_plugged_on_its_host_goes_active_and_down_when_unplugged(cloud, network) -> None:
    conn, nb, host, server = cloud
    port = conn.network.create_port(network_id=network.id, name="vm1", binding_host_id=host.name)
    assert (port.binding_vif_type, port.binding_vif_details.get("port_filter")) == ("ovs", True)
    assert port.status == "DOWN"
    held = nb.get(Port, port.id)
    assert held.chassis == host.name
    vm = f"hwf-{host.name}-vm1"
    host.plug(held, vm)
    wait_for("the port ACTIVE in Neutron", lambda: conn.network.get_port(port.id).status == "ACTIVE", server, host)
    assert [(s.chassis, s.port) for s in nb.ports_up()[1]] == [(host.name, port.id)]
    host.unplug(vm)
    wait_for("the port DOWN in Neutron", lambda: conn.network.get_port(port.id).status == "DOWN", server, host)
    assert nb.ports_up()[1] == []
    host.plug(held, vm)  # and back: up again (the block the DOWN put back is completed again)
    wait_for("the port ACTIVE again", lambda: conn.network.get_port(port.id).status == "ACTIVE", server, host)
    host.unplug(vm)
    # Neutron on sqlite: a request racing the watcher's status write may find the database locked
    wait_for("the port DOWN again", lambda: conn.network.get_port(port.id).status == "DOWN", server, host)
    assert nb.ports_up()[1] == []


def test_a_port_set_admin_down_is_down_in_neutron_and_active_when_up_again(cloud, network) -> None:
    """Its agent stops reporting a port that is down (it carries no traffic), and Neutron shows it DOWN, as with
    ML2/OVS; enabled, it is reported and ACTIVE again."""
    conn, nb, host, server = cloud
    port = conn.network.create_port(network_id=network.id, name="vm-admin", binding_host_id=host.name)
    vm = f"hwf-{host.name}-vm-admin"
    host.plug(nb.get(Port, port.id), vm)
    try:
        wait_for("the port ACTIVE in Neutron", lambda: conn.network.get_port(port.id).status == "ACTIVE", server, host)
        conn.network.update_port(port, is_admin_state_up=False)
        wait_for("the port DOWN in Neutron", lambda: conn.network.get_port(port.id).status == "DOWN", server, host)
        assert nb.ports_up()[1] == []
        conn.network.update_port(port, is_admin_state_up=True)
        wait_for("the port ACTIVE again", lambda: conn.network.get_port(port.id).status == "ACTIVE", server, host)
        assert [(s.chassis, s.port) for s in nb.ports_up()[1]] == [(host.name, port.id)]
    finally:
        host.unplug(vm)
        wait_for("the port's report taken back", lambda: nb.ports_up()[1] == [], server, host)
        # and Neutron told: the status watcher's DOWN, written while the fixture deletes the port, made sqlite
        # fail the delete (a 500 in CI)
        wait_for("the port DOWN in Neutron", lambda: conn.network.get_port(port.id).status == "DOWN", server, host)


def test_a_direct_port_on_a_switchdev_host_binds_to_ovs(cloud, network) -> None:
    """A VF of a switchdev NIC on a host whose agent reports an offload device that redirects: ``ovs``, as
    networking-ovn binds it (os-vif plugs the VF's representor)."""
    conn, nb, host, server = cloud
    port = conn.network.create_port(network_id=network.id, binding_host_id=host.name, binding_vnic_type="direct",
                                    binding_profile=SWITCHDEV)
    assert port.binding_vif_type == "ovs"
    assert nb.get(Port, port.id).chassis == host.name


def test_a_port_deleted_while_plugged_or_unplugged_while_its_agent_was_down_is_taken_back(cloud, network) -> None:
    """The agent takes back the report of a port Neutron deleted under a running VM; and one whose VM went while
    the agent was stopped, when it starts again (it reads its reports back and corrects them): DOWN."""
    conn, nb, host, server = cloud
    ports = {vm: conn.network.create_port(network_id=network.id, name=vm, binding_host_id=host.name)
             for vm in ("vm2", "vm3")}
    for vm, port in ports.items():
        host.plug(nb.get(Port, port.id), f"hwf-{host.name}-{vm}")
    wait_for("both ports ACTIVE", lambda: all(conn.network.get_port(p.id).status == "ACTIVE"
                                               for p in ports.values()), server, host)
    conn.network.delete_port(ports["vm2"])
    wait_for("the deleted port's report taken back", lambda: {s.port for s in nb.ports_up()[1]} == {
        ports["vm3"].id}, server, host)
    host.unplug(f"hwf-{host.name}-vm2")
    host.stop_agent()
    host.unplug(f"hwf-{host.name}-vm3")
    assert {s.port for s in nb.ports_up()[1]} == {ports["vm3"].id}  # nobody said otherwise yet
    host.start_agent()
    wait_for("vm3 DOWN once the agent is back", lambda: conn.network.get_port(ports["vm3"].id).status == "DOWN",
             server, host)
    assert nb.ports_up()[1] == []
    wait_for("the agent alive again", lambda: host.name in nb.alive_chassis(), server, host)


def test_a_port_unplugged_while_neutron_was_down_is_down_when_it_is_back(cloud, tmp_path: Path) -> None:
    """The agent takes the report back while no Neutron server runs: the next server's watcher finds the port
    ACTIVE in Neutron and reported by no chassis, and sets it DOWN. A Neutron database of its own (the fixture's
    server keeps running; its watcher knows nothing of these ports), on the same hwflow database and host."""
    _, nb, host, _ = cloud
    with contextlib.ExitStack() as stack:
        first = NeutronServer(tmp_path / "first", {"database": host.database})
        stack.callback(first.stop)
        first.start()
        conn = client(first)
        net = conn.network.create_network(name="restart", provider_network_type="vxlan",
                                          provider_segmentation_id=1999)
        conn.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.8.0.0/24", is_dhcp_enabled=False)
        port = conn.network.create_port(network_id=net.id, binding_host_id=host.name)
        vm = f"hwf-{host.name}-vm4"
        host.plug(nb.get(Port, port.id), vm)
        wait_for("the port ACTIVE", lambda: conn.network.get_port(port.id).status == "ACTIVE", first, host)
        first.stop()
        host.unplug(vm)
        wait_for("the report taken back", lambda: port.id not in {s.port for s in nb.ports_up()[1]}, first, host)
        second = NeutronServer(tmp_path / "second", {"database": host.database}, database=first.database)
        stack.callback(second.stop)
        second.start()
        conn = client(second)
        wait_for("the port DOWN once a server is back", lambda: conn.network.get_port(port.id).status == "DOWN",
                 second, host)
        conn.network.delete_port(port)
        conn.network.delete_network(net)


def test_a_direct_port_on_a_host_whose_nic_cannot_redirect_fails(cloud, network, drop_only: SimHost) -> None:
    """Refused rather than bound normal: Nova has given the VM a VF already, which only a switchdev NIC's
    representor with a redirect lets hwflow reach."""
    conn, _, _, server = cloud
    port = conn.network.create_port(network_id=network.id, binding_host_id=drop_only.name,
                                    binding_vnic_type="direct", binding_profile=SWITCHDEV)
    assert port.binding_vif_type == "binding_failed"
    reason = f"chassis {drop_only.name} \\(host {drop_only.name}\\) reports no switchdev NIC that can forward"
    wait_for(f"the reason in Neutron's log: {reason}", lambda: _logged(server, reason), server)
    normal = conn.network.create_port(network_id=network.id, binding_host_id=drop_only.name)
    assert normal.binding_vif_type == "ovs"  # a tap on its bridge: its agent runs


@pytest.mark.parametrize(("host_id", "vnic", "reason"), [
    pytest.param("nowhere", "normal", "no hwflow agent registered for host nowhere: start hwflow-agent there",
                 id="no-agent"),
    pytest.param("stopped", "normal", r"the hwflow agent of host stopped \(chassis stopped\) is not alive",
                 id="dead-agent"),
    pytest.param("", "direct-legacy", "vnic_type direct without 'switchdev' in binding:profile capabilities",
                 id="direct-not-switchdev"),
    pytest.param("", "macvtap", "vnic_type macvtap is not one hwflow binds", id="macvtap"),
])
def test_what_hwflow_cannot_bind_fails_with_a_reason(cloud, network, host_id: str, vnic: str, reason: str) -> None:
    """``host_id`` "" is the simulated host, whose agent runs."""
    conn, nb, host, server = cloud
    nb.put_chassis(Chassis(id="stopped", tunnel_ip="192.0.2.32", up=False))  # registered once; no lease now
    kind = "direct" if vnic == "direct-legacy" else vnic
    port = conn.network.create_port(network_id=network.id, binding_host_id=host_id or host.name, binding_vnic_type=kind)
    assert port.binding_vif_type == "binding_failed"
    assert port.status == "DOWN"
    wait_for(f"the reason in Neutron's log: {reason}", lambda: _logged(server, reason), server)


def _logged(server: NeutronServer, pattern: str) -> bool:
    return re.search(f"hwflow cannot bind port .*{pattern}", server.log.read_text(errors="replace")) is not None
