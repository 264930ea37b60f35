"""What wakes the agent from OVSDB, against a real ovsdb-server and ovs-vswitchd (userspace datapath).

The agent's interface view is which logical port (external_ids:iface-id)
sits on which ofport; an Interface appearing, going, or changing one of the
columns that say so must call the change callback. vswitchd also rewrites
each Interface's statistics every 5 s, its link state when a link flaps,
and anyone may write other_config: none of that may call it.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hwflow.backends.ovs.daemons import OvsDaemons
from hwflow.backends.ovs.ovsdb import MONITORED, OvsdbClient

pytestmark = pytest.mark.functional

PREFIX = "hwt-ovev"
BRIDGE = "br-int"


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", ns, *argv, check=check)


def wait_for(condition: Callable[[], bool], timeout: float = 20, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Recorder:
    """The change callback: records (event, interface name) as OvsdbClient calls it."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.calls: list[tuple[str, str]] = []

    def __call__(self, event: str, name: str) -> None:
        with self._lock:
            self.calls.append((event, name))

    def of(self, name: str) -> list[str]:
        with self._lock:
            return [event for event, iface in self.calls if iface == name]

    def take(self) -> list[tuple[str, str]]:
        with self._lock:
            calls, self.calls = self.calls, []
            return calls


class Host:
    def __init__(self, ns: str, daemons: OvsDaemons, ovsdb: OvsdbClient, recorder: Recorder) -> None:
        self.ns = ns
        self.daemons = daemons
        self.ovsdb = ovsdb
        self.recorder = recorder
        self.vm_namespaces: list[str] = []

    def vsctl(self, *args: str) -> str:
        return run("ovs-vsctl", f"--db={self.daemons.db_sock}", *args).stdout.strip()

    def veth(self) -> tuple[str, str, str]:
        """A VM namespace holding one end of a veth pair (10.78.0.1/24); (host device, VM namespace, VM device)."""
        vm_ns = f"{PREFIX}-vm-{secrets.token_hex(3)}"
        run("ip", "netns", "add", vm_ns)
        self.vm_namespaces.append(vm_ns)
        host_dev, vm_dev = f"{PREFIX[4:]}h{secrets.token_hex(3)}", f"{PREFIX[4:]}v{secrets.token_hex(3)}"
        in_ns(self.ns, "ip", "link", "add", host_dev, "type", "veth", "peer", "name", vm_dev, "netns", vm_ns)
        in_ns(self.ns, "ip", "link", "set", host_dev, "up")
        in_ns(vm_ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
        in_ns(vm_ns, "ip", "addr", "add", "10.78.0.1/24", "dev", vm_dev)
        in_ns(vm_ns, "ip", "link", "set", vm_dev, "up")
        return host_dev, vm_ns, vm_dev

    def marker(self) -> str:
        """An interface (an internal port) whose external_ids the barrier writes."""
        name = f"{PREFIX[4:]}m{secrets.token_hex(3)}"
        self.vsctl("add-port", BRIDGE, name, "--", "set", "Interface", name, "type=internal")
        self.ovsdb.wait_for_ofport(name)
        self.barrier(name)
        return name

    def barrier(self, marker: str) -> list[tuple[str, str]]:
        """Wait until every update OVSDB sent before now has reached the callback; the calls made till then.

        Writes a column of ``marker`` that does call back (external_ids) and
        waits for that call: the IDL hands updates over in order, and one
        thread runs the callbacks in order, so anything sent earlier has
        been called back (or dropped) by then.
        """
        self.vsctl("set", "Interface", marker, f"external_ids:hwflow-test-barrier={secrets.token_hex(4)}")
        wait_for(lambda: ("update", marker) in self.recorder.calls, what=f"the barrier on {marker}")
        return [call for call in self.recorder.take() if call[1] != marker]


@pytest.fixture
def host() -> Iterator[Host]:
    ns = f"{PREFIX}-{secrets.token_hex(3)}"
    rundir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    daemons = OvsDaemons(rundir, netns=ns)
    ovsdb = None
    h = None
    try:
        run("ip", "netns", "add", ns)
        in_ns(ns, "ip", "link", "set", "lo", "up")
        daemons.start()
        ovsdb = OvsdbClient(daemons.db_sock, BRIDGE)
        ovsdb.ensure_bridge()
        recorder = Recorder()
        ovsdb.on_change(recorder)
        h = Host(ns, daemons, ovsdb, recorder)
        yield h
    finally:
        if ovsdb is not None:
            ovsdb.close()
        daemons.stop()
        for vm_ns in h.vm_namespaces if h is not None else []:
            run("ip", "netns", "del", vm_ns, check=False)
        run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(rundir, ignore_errors=True)


def test_only_the_columns_hwflow_uses_are_replicated(host: Host) -> None:
    tables = host.ovsdb.api.idl.tables
    assert set(tables) == set(MONITORED)
    for table, columns in MONITORED.items():
        assert set(tables[table].columns) == set(columns)
    assert "statistics" not in tables["Interface"].columns and "link_state" not in tables["Interface"].columns


def test_plugging_an_interface_and_its_ofport_call_back_and_unplugging_too(host: Host) -> None:
    name, _, _ = host.veth()
    host.recorder.take()  # the bridge's own rows

    host.ovsdb.add_port(name, iface_id="lport-1")
    host.ovsdb.wait_for_ofport(name)
    wait_for(lambda: "update" in host.recorder.of(name), what="the ofport update")
    assert host.recorder.of(name)[0] == "create"
    assert host.ovsdb.interfaces()["lport-1"].name == name

    host.recorder.take()
    host.vsctl("set", "Interface", name, "external_ids:iface-id=lport-2")  # re-bound to another logical port
    wait_for(lambda: host.recorder.of(name) == ["update"], what="the iface-id update")

    host.recorder.take()
    host.ovsdb.del_port(name)
    wait_for(lambda: "delete" in host.recorder.of(name), what="the delete")
    assert "lport-2" not in host.ovsdb.interfaces()


def test_statistics_link_state_and_other_config_do_not_call_back(host: Host) -> None:
    name, vm_ns, vm_dev = host.veth()
    host.ovsdb.add_port(name, iface_id="lport-1")
    host.ovsdb.wait_for_ofport(name)
    marker = host.marker()
    host.barrier(marker)  # the plugging calls are in; from here on nothing may call back for it

    def rx_packets() -> int:
        value = host.vsctl("get", "Interface", name, "statistics:rx_packets").strip('"')
        return int(value) if value.isdigit() else 0

    def traffic_counted(than: int) -> Callable[[], bool]:
        """Send a frame in (an ARP for an address nobody has: secure fail mode drops it after counting)
        and say whether vswitchd has written more than ``than`` received packets (it does every 5 s)."""
        def check() -> bool:
            in_ns(vm_ns, "ping", "-c", "1", "-W", "0.2", "10.78.0.2", check=False)
            return rx_packets() > than
        return check

    wait_for(traffic_counted(0), timeout=30, what="the statistics to show the traffic")
    wait_for(traffic_counted(rx_packets()), timeout=30, what="a second statistics update")
    host.vsctl("set", "Interface", name, "other_config:foo=bar")
    host.vsctl("set", "Interface", name, "mtu_request=1400")
    in_ns(vm_ns, "ip", "link", "set", vm_dev, "down")  # the host end's carrier, so its link_state, goes down
    wait_for(lambda: host.vsctl("get", "Interface", name, "link_state") == "down", what="link_state down")
    in_ns(vm_ns, "ip", "link", "set", vm_dev, "up")
    wait_for(lambda: host.vsctl("get", "Interface", name, "link_state") == "up", what="link_state up")

    assert host.barrier(marker) == []  # everything vswitchd and ovs-vsctl wrote above has reached the client
    assert host.ovsdb.interfaces()["lport-1"].name == name
