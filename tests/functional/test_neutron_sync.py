"""hwflow's database kept what Neutron's says (issue 17, consistency): writes that fail while hwflow's etcd is
down leave the two apart until ``hwflow neutron-sync`` repairs hwflow's side; what is changed behind Neutron's
back in hwflow is put back; two Neutron servers on one Neutron database racing updates of one port never leave
hwflow behind Neutron's last revision.

Real parts only: Neutron 29's API under uWSGI with hwflow's driver (tests/functional/neutron_server.py), a real
etcd stopped and started by its PID, the ``hwflow`` command run as a user runs it.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

openstack = pytest.importorskip("openstack", reason="hwflow's neutron extra is not installed (pip install -e "
                                "'.[test,neutron]'; tools/dev.sh setup installs it)")
from neutron_server import PHYSNET, NeutronServer  # noqa: E402
from test_etcd_tls import stored  # noqa: E402

from hwflow.cli.neutron import ApiNeutron  # noqa: E402
from hwflow.db.api import NbApi  # noqa: E402
from hwflow.db.etcd_server import EtcdCluster  # noqa: E402
from hwflow.model.objects import (  # noqa: E402
    FloatingIP,
    Network,
    Port,
    Router,
    RouterPort,
    SecurityGroup,
    SecurityGroupRule,
)

pytestmark = pytest.mark.functional

RACE_ROUNDS = 12  # rounds of both servers updating one port at once
REPAIR_TIMEOUT = 90.0  # a server started (its round at start), or a round every 2 s, on a busy machine
RETRY_SOON = 2.0  # hwflow.neutron.maintenance.SOON (not imported: the test reads Neutron's log, not the module)


class Site:
    """A Neutron server writing hwflow's database on an etcd this test may stop, and a client of each."""

    def __init__(self, workdir: Path, etcd: EtcdCluster, server: NeutronServer, nb: NbApi) -> None:
        self.workdir, self.etcd, self.server, self.nb = workdir, etcd, server, nb
        self.conn = client(server.url)

    def sync(self, *options: str) -> tuple[int, list[dict[str, Any]], str]:
        """``hwflow neutron-sync --format json`` against this site: its status, its report, its stderr."""
        done = subprocess.run([sys.executable, "-m", "hwflow.cli.main", "neutron-sync", "--format", "json",
                               "--database", self.etcd.url, "--neutron-url", self.server.url, *options],
                              capture_output=True, text=True, timeout=300)
        report = json.loads(done.stdout) if done.stdout.strip() else []
        return done.returncode, report, done.stderr


def client(url: str) -> openstack.connection.Connection:
    return openstack.connection.Connection(auth_type="none", auth={"endpoint": url}, network_endpoint_override=url)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    workdir = tmp_path_factory.mktemp("neutron-sync")
    with contextlib.ExitStack() as stack:
        etcd = stack.enter_context(EtcdCluster(1))
        nb = stack.enter_context(NbApi.from_url(etcd.url))
        server = NeutronServer(workdir, {"database": etcd.url, "sync_interval": "0"})  # repairs: the tests'
        stack.callback(server.stop)
        server.start()
        yield Site(workdir, etcd, server, nb)


def summary(report: list[dict[str, Any]]) -> set[tuple[str, str, str]]:
    return {(row["action"], row["kind"], row["id"]) for row in report}


def test_writes_failed_while_hwflow_was_down_are_repaired(site: Site) -> None:
    """With hwflow's etcd stopped, a port update and a port delete fail in their postcommit and a rule's
    creation in its callback (Neutron keeps each and logs the failure): the sync lists exactly those three, a
    dry run changes nothing, the repair makes hwflow's copies Neutron's, a second run finds nothing."""
    conn, nb = site.conn, site.nb
    net = conn.network.create_network(name="sync-net")
    sub = conn.network.create_subnet(network_id=net.id, ip_version=4, cidr="10.7.0.0/24",  # .77: no port's yet
                                     allocation_pools=[{"start": "10.7.0.10", "end": "10.7.0.50"}])
    kept = conn.network.create_port(network_id=net.id, name="kept")
    first_ip = kept.fixed_ips[0]["ip_address"]
    gone = conn.network.create_port(network_id=net.id, name="gone")
    group = conn.network.create_security_group(name="sync-group")
    try:
        site.etcd.stop()
        try:
            # ML2 logs a port's failed postcommit and answers 200 or 204; Neutron has the change either way
            with contextlib.suppress(openstack.exceptions.HttpException):
                conn.network.update_port(kept, name="renamed", fixed_ips=[{"subnet_id": sub.id,
                                                                            "ip_address": "10.7.0.77"}])
            with contextlib.suppress(openstack.exceptions.HttpException):
                conn.network.delete_port(gone)
            rule = conn.network.create_security_group_rule(security_group_id=group.id, direction="ingress",
                                                           ethertype="IPv4", protocol="tcp", port_range_min=80,
                                                           port_range_max=80)
        finally:
            site.etcd.start()
        assert conn.network.get_port(kept.id).name == "renamed"
        assert conn.network.find_port(gone.id) is None
        assert (nb.get(Port, kept.id).name, nb.get(Port, kept.id).ips) == ("kept", [first_ip])
        assert stored(nb, Port, gone.id) and not stored(nb, SecurityGroupRule, rule.id)

        status, report, err = site.sync("--dry-run")
        assert status == 0, err
        assert summary(report) == {("update", "port", kept.id), ("delete", "port", gone.id),
                                   ("create", "security_group_rule", rule.id)}
        assert {row["result"] for row in report} == {""}
        assert [row["detail"] for row in report if row["action"] == "update"] == ["differs in name, ips"]
        assert nb.get(Port, kept.id).name == "kept" and stored(nb, Port, gone.id)

        status, report, err = site.sync()
        assert status == 0, err
        assert {(row["id"], row["result"]) for row in report} == {(kept.id, "updated"), (gone.id, "deleted"),
                                                                  (rule.id, "created")}
        held = nb.get(Port, kept.id)
        assert (held.name, held.ips, held.external_revision) == (
            "renamed", ["10.7.0.77"], conn.network.get_port(kept.id).revision_number)
        assert not stored(nb, Port, gone.id)
        assert (nb.get(SecurityGroupRule, rule.id).port_min, nb.get(SecurityGroupRule, rule.id).protocol) == (80, "tcp")
        assert site.sync() == (0, [], "")
    finally:
        conn.network.delete_port(kept)
        conn.network.delete_network(net)
        conn.network.delete_security_group(group)


def test_what_hwflow_lost_or_changed_behind_neutrons_back_is_put_back(site: Site) -> None:
    """A port and a group (with its rules) deleted in hwflow and a network's MTU changed there come back as
    Neutron has them; an object hwflow's own API made is not Neutron's and is left alone."""
    conn, nb = site.conn, site.nb
    net = conn.network.create_network(name="behind", mtu=1400)
    group = conn.network.create_security_group(name="behind-group")
    port = conn.network.create_port(network_id=net.id, name="behind-port", security_group_ids=[group.id])
    own = nb.create(Network(name="hwflows-own", vni=5000))  # outside Neutron's VNI range
    try:
        rules = {r["id"] for r in conn.network.get_security_group(group.id).security_group_rules}
        nb.delete(Port, port.id)
        nb.delete(SecurityGroup, group.id, cascade=True)
        changed = nb.get(Network, net.id)
        changed.mtu = 1280
        nb.update(changed)

        status, report, err = site.sync()
        assert status == 0, err
        assert summary(report) == {("create", "port", port.id), ("create", "security_group", group.id),
                                   ("update", "network", net.id),
                                   *(("create", "security_group_rule", rule) for rule in rules)}
        assert {row["result"] for row in report} == {"created", "updated"}
        assert nb.get(Network, net.id).mtu == 1400
        assert nb.get(Port, port.id).security_groups == [group.id]
        assert {r.id for r in nb.referrers(SecurityGroup, group.id, SecurityGroupRule)} == rules
        assert nb.get(Network, own.id).name == "hwflows-own"
        assert site.sync() == (0, [], "")
    finally:
        nb.delete(Network, own.id)
        conn.network.delete_port(port)
        conn.network.delete_network(net)
        conn.network.delete_security_group(group)


def test_two_servers_racing_never_leave_hwflow_behind(site: Site) -> None:
    """A second Neutron server on the first one's Neutron database: both update one port at once, round after
    round; after each round hwflow holds what Neutron holds, at Neutron's last revision number."""
    other = NeutronServer(site.workdir / "second", {"database": site.etcd.url, "sync_interval": "0"},
                          database=site.server.database)
    (site.workdir / "second").mkdir()
    try:
        other.start()
        conns = (site.conn, client(other.url))
        net = conns[0].network.create_network(name="race")
        port = conns[0].network.create_port(network_id=net.id, name="race-0")
        failures: list[BaseException] = []

        def rename(conn: openstack.connection.Connection, name: str) -> None:
            try:
                conn.network.update_port(port.id, name=name)
            except openstack.exceptions.HttpException as exc:  # sqlite's lock between the two servers
                failures.append(exc)

        try:
            for n in range(RACE_ROUNDS):
                racers = [threading.Thread(target=rename, args=(conn, f"race-{n}-{i}"))
                          for i, conn in enumerate(conns)]
                for racer in racers:
                    racer.start()
                for racer in racers:
                    racer.join()
                last = conns[0].network.get_port(port.id)
                held = site.nb.get(Port, port.id)
                assert (held.name, held.external_revision) == (last.name, last.revision_number), f"round {n}"
            assert len(failures) < RACE_ROUNDS, failures
        finally:
            conns[0].network.delete_port(port)
            conns[0].network.delete_network(net)
    finally:
        other.stop()



def test_an_older_revision_is_never_written_over_a_newer(site: Site) -> None:
    """What a slower server's postcommit does when another server's later update reached hwflow first (held here
    as a revision ahead of Neutron's): the older write leaves it, and so does a repair."""
    conn, nb = site.conn, site.nb
    net = conn.network.create_network(name="late")
    port = conn.network.create_port(network_id=net.id, name="late-0")
    try:
        ahead = nb.get(Port, port.id)
        ahead.name, ahead.external_revision = "ahead", port.revision_number + 100
        nb.update(ahead)
        port = conn.network.update_port(port, name="late-1")
        assert port.revision_number < ahead.external_revision
        held = nb.get(Port, port.id)
        assert (held.name, held.external_revision) == ("ahead", ahead.external_revision)

        status, report, err = site.sync()
        assert status == 0, err
        assert [(row["action"], row["id"], row["result"]) for row in report] == [
            ("update", port.id, "left: hwflow holds a newer revision")]
        assert nb.get(Port, port.id).name == "ahead"
    finally:
        conn.network.delete_port(port)
        conn.network.delete_network(net)


def test_a_server_repairs_on_its_own(site: Site) -> None:
    """A server with [hwflow] sync_interval = 2 (on the same Neutron database) puts back, with no one running the
    command, what was changed behind Neutron's back before it started (its round at start: a server restarted
    after a write it missed) and after (its periodic rounds): a port deleted, a network's MTU changed."""
    conn, nb = site.conn, site.nb
    repairer = NeutronServer(site.workdir / "repairer", {"database": site.etcd.url, "sync_interval": "2"},
                             database=site.server.database)
    (site.workdir / "repairer").mkdir()
    net = conn.network.create_network(name="repaired", mtu=1400)
    port = conn.network.create_port(network_id=net.id, name="repaired-port")

    def break_and_wait() -> None:
        nb.delete(Port, port.id)
        changed = nb.get(Network, net.id)
        changed.mtu = 1280
        nb.update(changed)
        if repairer.proc is None:
            repairer.start()
        deadline = time.monotonic() + REPAIR_TIMEOUT
        while not (stored(nb, Port, port.id) and nb.get(Network, net.id).mtu == 1400):
            assert time.monotonic() < deadline, f"not repaired in {REPAIR_TIMEOUT:g} s:\n{repairer.tail()}"
            time.sleep(0.5)
        assert nb.get(Port, port.id).name == "repaired-port"

    try:
        break_and_wait()  # before it starts
        break_and_wait()  # while it runs
        assert repairer.log.read_text().count("hwflow maintenance: create port " + port.id) == 2
    finally:
        repairer.stop()
        conn.network.delete_port(port)
        conn.network.delete_network(net)


def test_a_failed_write_is_repaired_in_seconds_by_the_server_it_failed_in(site: Site) -> None:
    """A port update whose postcommit fails (hwflow's etcd stopped; ML2 keeps it and logs) reaches hwflow soon
    after etcd is back, with no one running the command and no periodic round due (sync_interval 3600): the
    failed write asks its server's maintenance for a round, which tries again while etcd is still down."""
    conn, nb = site.conn, site.nb
    retrier = NeutronServer(site.workdir / "retrier", {"database": site.etcd.url, "sync_interval": "3600"},
                            database=site.server.database)
    (site.workdir / "retrier").mkdir()
    net = conn.network.create_network(name="retried")
    port = conn.network.create_port(network_id=net.id, name="before")
    try:
        retrier.start()
        wait_log(retrier, "hwflow maintenance: a round done")  # its round at start: the write failing wakes it
        site.etcd.stop()
        try:
            with contextlib.suppress(openstack.exceptions.HttpException):
                client(retrier.url).network.update_port(port.id, name="after")
            assert client(retrier.url).network.get_port(port.id).name == "after"
            time.sleep(2 * RETRY_SOON)  # rounds fail meanwhile, and back off
        finally:
            site.etcd.start()
        deadline = time.monotonic() + REPAIR_TIMEOUT
        while nb.get(Port, port.id).name != "after":
            assert time.monotonic() < deadline, f"not repaired in {REPAIR_TIMEOUT:g} s:\n{retrier.tail()}"
            time.sleep(0.5)
        log = retrier.log.read_text()
        assert "hwflow maintenance: not all repaired" in log and f"hwflow maintenance: update port {port.id}" in log
    finally:
        retrier.stop()
        conn.network.delete_port(port)
        conn.network.delete_network(net)


def wait_log(server: NeutronServer, text: str) -> None:
    deadline = time.monotonic() + REPAIR_TIMEOUT
    while text not in server.log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"no {text!r} in {REPAIR_TIMEOUT:g} s:\n{server.tail()}"
        time.sleep(0.5)


def test_collections_are_read_page_by_page(site: Site) -> None:
    """Read two ports a request, Neutron's ports are all there, each once, as read in one go."""
    conn = site.conn
    net = conn.network.create_network(name="paged")
    ports = [conn.network.create_port(network_id=net.id, name=f"paged-{n}") for n in range(5)]
    try:
        paged = [port["id"] for port in ApiNeutron(conn, page=2).list("ports")]
        assert len(paged) == len(set(paged)) and set(paged) == {p["id"] for p in ApiNeutron(conn).list("ports")}
        assert {port.id for port in ports} <= set(paged)
    finally:
        for port in ports:
            conn.network.delete_port(port)
        conn.network.delete_network(net)


def test_routers_interfaces_and_floating_ips_are_put_back(site: Site) -> None:
    """The L3 plugin's objects too: a router with its gateway, its interface and a floating IP on a VM port, lost
    from hwflow (the router with its interfaces), come back as Neutron has them."""
    conn, nb = site.conn, site.nb
    with contextlib.ExitStack() as stack:
        ext = conn.network.create_network(name="sync-public", provider_network_type="vlan",
                                          provider_physical_network=PHYSNET, provider_segmentation_id=170,
                                          is_router_external=True)
        stack.callback(conn.network.delete_network, ext)
        ext_sub = conn.network.create_subnet(network_id=ext.id, ip_version=4, cidr="203.0.113.0/24",
                                             is_dhcp_enabled=False)
        inside = conn.network.create_network(name="sync-inside")
        stack.callback(conn.network.delete_network, inside)
        sub = conn.network.create_subnet(network_id=inside.id, ip_version=4, cidr="10.77.0.0/24")
        r = conn.network.create_router(name="sync-router", external_gateway_info={
            "network_id": ext.id, "external_fixed_ips": [{"subnet_id": ext_sub.id}]})
        stack.callback(conn.network.delete_router, r)
        interface = conn.network.add_interface_to_router(r, subnet=sub.id)
        stack.callback(conn.network.remove_interface_from_router, r, subnet=sub.id)
        vm = conn.network.create_port(network_id=inside.id, name="sync-vm")
        stack.callback(conn.network.delete_port, vm)
        fip = conn.network.create_ip(floating_network_id=ext.id, port_id=vm.id)
        stack.callback(conn.network.delete_ip, fip)

        nb.delete(FloatingIP, fip.id)
        nb.delete(Router, r.id, cascade=True)
        assert not stored(nb, RouterPort, interface["port_id"])
        status, report, err = site.sync()
        assert status == 0, err
        assert {(row["action"], row["kind"], row["id"], row["result"]) for row in report} == {
            ("create", "router", r.id, "created"), ("create", "router_port", interface["port_id"], "created"),
            ("create", "floating_ip", fip.id, "created")}
        held = nb.get(Router, r.id)
        assert (held.gateway_network_id, held.gateway_ip) == (
            ext.id, r.external_gateway_info["external_fixed_ips"][0]["ip_address"])
        assert (nb.get(RouterPort, interface["port_id"]).router_id, nb.get(RouterPort, interface["port_id"]).ip) == (
            r.id, sub.gateway_ip)
        assert (nb.get(FloatingIP, fip.id).port_id, nb.get(FloatingIP, fip.id).floating_ip_address) == (
            vm.id, fip.floating_ip_address)
        assert site.sync() == (0, [], "")
