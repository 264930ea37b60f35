"""An agent that merely stays up writes nothing and wakes nobody: liveness is a lease, not a record rewrite.

Agents run in this process (hwflow.agent.daemon.Agent, start/run/shutdown as
hwflow-agent does) against a private Open vSwitch each (its own network
namespace) and one database, SQLite or a private etcd, with a short
report_interval. What is watched: the database revision (any write moves
it), the agent's reconcile passes, and the calls its NB cache makes when
what it holds changed.
"""

from __future__ import annotations

import argparse
import json
import secrets
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hwflow import conf as hwconf
from hwflow.agent.daemon import Agent
from hwflow.apps.compiler import Compiler, layout_path
from hwflow.backends.ovs.backend import OvsBackend
from hwflow.backends.ovs.daemons import OvsDaemons
from hwflow.backends.ovs.openflow import OpenFlowConnection
from hwflow.backends.ovs.ovsdb import OvsdbClient
from hwflow.backends.tc.backend import TcBackend
from hwflow.cli import nb as nb_cli
from hwflow.cli.common import load_conf
from hwflow.db import NbApi
from hwflow.db.etcd_server import EtcdCluster
from hwflow.model import Chassis, Network, Port, Subnet
from hwflow.sim.host import in_ns, run

pytestmark = pytest.mark.functional

BRIDGE = "br-int"
REPORT = 1.0  # [agent] report_interval: the lease's ttl is three of them
QUIET = 8 * REPORT  # how long an idle agent is watched: over one of vswitchd's 5 s statistics updates too


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture(params=["sqlite", "etcd"])
def url(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/nb.sqlite"
    return f"{request.getfixturevalue('etcd').url}/quiet-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def db(url) -> Iterator[NbApi]:
    with NbApi.from_url(url) as api:
        yield api


def wait_for(condition: Callable[[], bool], timeout: float = 30, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class RunningAgent:
    """One in-process agent on its own OVS: started like hwflow-agent, counting its passes and cache wakes."""

    def __init__(self, name: str, url: str, workdir: Path) -> None:
        self.name = name
        self.ns = f"hwt-q{name[-1]}-{secrets.token_hex(3)}"
        self.daemons = OvsDaemons(workdir / name, netns=self.ns)
        self.passes = 0
        self.cache_wakes = 0
        self.last_heartbeat = 0.0  # time.monotonic() of the agent's last NbApi.heartbeat
        self.stop_event = threading.Event()
        self.thread: threading.Thread | None = None
        self.agent: Agent | None = None
        self.url = url
        self.workdir = workdir

    def start(self) -> RunningAgent:
        run("ip", "netns", "add", self.ns)
        in_ns(self.ns, "ip", "link", "set", "lo", "up")
        self.daemons.start()
        config = self.workdir / f"{self.name}.conf"
        config.write_text(
            f"[database]\nurl = {self.url}\n\n"
            f"[agent]\nchassis_name = {self.name}\nintegration_bridge = {BRIDGE}\n"
            f"ovsdb_connection = {self.daemons.db_sock}\novs_rundir = {self.daemons.rundir}\n"
            f"report_interval = {REPORT}\nresync_interval = 3600\nstate_dir = {self.workdir}\n"
        )
        conf = hwconf.new_conf(["--config-file", str(config)])
        ovsdb = OvsdbClient(self.daemons.db_sock, BRIDGE)
        # As build_agent, but no NIC: this test's namespace is the machine's, whose NICs are not ours.
        agent = self.agent = Agent(conf, NbApi.from_url(self.url, conf), ovsdb,
                                   OvsBackend(ovsdb, OpenFlowConnection(self.daemons.mgmt(BRIDGE))), TcBackend(),
                                   lambda: [], Compiler.from_file(layout_path(conf.apps.layout)))
        reconcile, wake, heartbeat = agent.reconcile, agent.cache._on_change, agent.nb.heartbeat

        def counted_pass(full: bool = False):
            self.passes += 1
            return reconcile(full)

        def counted_wake() -> None:
            self.cache_wakes += 1
            wake()

        def timed_heartbeat(chassis: str, ttl: float) -> None:
            heartbeat(chassis, ttl)
            self.last_heartbeat = time.monotonic()

        agent.reconcile = counted_pass
        agent.cache._on_change = counted_wake
        agent.nb.heartbeat = timed_heartbeat
        assert agent.start(self.stop_event)
        self.thread = threading.Thread(target=agent.run, args=(self.stop_event,), name=f"agent-{self.name}",
                                       daemon=True)
        self.thread.start()
        return self

    def plug(self, device: str, port_id: str) -> None:
        """A local port: one end of a veth pair (no dummy module here) on the bridge with the port's iface-id."""
        in_ns(self.ns, "ip", "link", "add", device, "type", "veth", "peer", "name", f"{device}p")
        for dev in (device, f"{device}p"):
            in_ns(self.ns, "ip", "link", "set", dev, "up")
        self.agent.ovsdb.add_port(device, iface_id=port_id)
        self.agent.ovsdb.wait_for_ofport(device)

    def settle(self) -> None:
        """Wait until the agent has run no pass for three report intervals (the start's passes are over)."""
        deadline = time.monotonic() + 30
        while True:
            before = self.passes
            time.sleep(3 * REPORT)
            if self.passes == before:
                return
            assert time.monotonic() < deadline, f"{self.name} keeps reconciling"

    def stop(self, clean: bool = True) -> None:
        """Stop the loop; ``clean`` as hwflow-agent on SIGTERM (marks the chassis down), else as if it died."""
        if self.thread is None:
            return
        self.stop_event.set()
        self.thread.join(timeout=10)
        self.thread = None
        if not clean:
            self.agent.register = lambda up, always=False: None  # a dead agent writes nothing more
        self.agent.shutdown()
        self.agent.nb.close()

    def close(self) -> None:
        try:
            self.stop()
        finally:
            self.daemons.stop()
            run("ip", "netns", "del", self.ns, check=False)


@pytest.fixture
def agents(url) -> Iterator[Callable[[str], RunningAgent]]:
    workdir = Path(tempfile.mkdtemp(prefix="hwt-quiet-"))
    started: list[RunningAgent] = []

    def start(name: str) -> RunningAgent:
        agent = RunningAgent(name, url, workdir)
        started.append(agent)
        return agent.start()

    try:
        yield start
    finally:
        for agent in reversed(started):
            agent.close()
        shutil.rmtree(workdir, ignore_errors=True)


def chassis_list(url: str, capsys: pytest.CaptureFixture[str]) -> dict[str, dict]:
    """``hwflow nb chassis list --format json``, in process."""
    parser = argparse.ArgumentParser(prog="hwflow")
    nb_cli.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["nb", "chassis", "list", "--format", "json", "--database", url])
    capsys.readouterr()
    assert args.func(args, load_conf(args)) == 0
    return {c["name"]: c for c in json.loads(capsys.readouterr().out)}


def test_an_agent_that_stays_up_writes_nothing_and_stays_alive_until_its_lease_lapses(url, db, agents, capsys):
    host1 = agents("host1")
    host1.settle()
    record = db.get("chassis", "host1")
    assert record.up and record.heartbeat_at > 0
    revision, passes = db.driver.current_revision(), host1.passes

    deadline = time.monotonic() + QUIET  # longer than the lease's ttl: it must have been refreshed
    while time.monotonic() < deadline:
        assert "host1" in db.alive_chassis()
        time.sleep(REPORT / 2)
    assert db.driver.current_revision() == revision  # not one write, chassis record or other
    assert db.get("chassis", "host1").revision == record.revision
    assert host1.passes == passes and host1.cache_wakes == 0  # and no pass: nothing woke it
    listed = chassis_list(url, capsys)["host1"]
    assert listed["alive"] is True and listed["heartbeat_at"] == record.heartbeat_at

    host1.stop(clean=False)  # it dies: no more heartbeats, and nobody marks the chassis down
    wait_for(lambda: "host1" not in db.alive_chassis(), timeout=20, what="the lease to lapse")
    assert time.monotonic() - host1.last_heartbeat >= 3 * REPORT - 0.2  # it lapsed after its ttl, not before
    assert db.get("chassis", "host1").revision == record.revision  # the record still says up ...
    assert chassis_list(url, capsys)["host1"]["alive"] is False  # ... and the listing says dead


def test_a_clean_stop_marks_the_chassis_down_at_once(url, db, agents, capsys):
    host1 = agents("host1")
    assert chassis_list(url, capsys)["host1"]["alive"] is True
    first = db.get("chassis", "host1")
    host1.stop()
    record = db.get("chassis", "host1")
    assert not record.up and record.revision > first.revision
    assert chassis_list(url, capsys)["host1"]["alive"] is False  # the lease may still hold; the record says down


def test_a_record_removed_or_edited_meanwhile_is_written_again_at_the_next_report(db, agents):
    agents("host1")
    first = db.get("chassis", "host1")
    db.delete("chassis", "host1")
    wait_for(lambda: [c.id for c in db.list("chassis")] == ["host1"], timeout=10, what="the record to be back")
    again = db.get("chassis", "host1")
    assert again.up and again.hostname == first.hostname and again.heartbeat_at > first.heartbeat_at
    db.update(Chassis(**{**again.to_dict(), "hostname": "someone-else"}))
    wait_for(lambda: db.get("chassis", "host1").hostname == first.hostname, timeout=10,
             what="the hostname to be put back")


def test_an_agent_is_not_woken_by_the_reports_of_a_chassis_it_holds(url, db, agents):
    net = db.create(Network(id="n1", vni=1))
    db.create(Subnet(id="s1", network_id=net.id, cidr="10.0.0.0/24"))
    db.create(Port(id="vm1", network_id=net.id, mac="fa:16:3e:00:00:01", ips=["10.0.0.1"], chassis="host1"))
    db.create(Port(id="vm2", network_id=net.id, mac="fa:16:3e:00:00:02", ips=["10.0.0.2"], chassis="host2"))
    host2 = agents("host2")
    host1 = agents("host1")
    host1.plug("qvm1", "vm1")
    wait_for(lambda: "host2" in host1.agent.cache.objects("chassis"), what="host1 to hold chassis host2")
    host1.settle()
    wakes, passes = host1.cache_wakes, host1.passes

    deadline = time.monotonic() + QUIET
    while time.monotonic() < deadline:
        assert {"host1", "host2"} <= db.alive_chassis()  # both report all along
        time.sleep(REPORT / 2)
    assert host1.cache_wakes == wakes and host1.passes == passes
    assert "host2" in host1.agent.cache.objects("chassis") and host2.passes >= 1

    db.update(Network(**{**db.get("network", "n1").to_dict(), "mtu": 1400}))  # what it holds does wake it
    wait_for(lambda: host1.cache_wakes > wakes and host1.passes > passes, what="host1 to see the network change")
