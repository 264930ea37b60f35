"""The OVS backend against real Open vSwitch (userspace datapath) and real packets.

Each test gets a fresh host namespace running its own ovsdb-server and
ovs-vswitchd, and two "VM" namespaces plugged into br-int through veth pairs,
the way os-vif plugs a representor: the host-side end is an OVS port whose
Interface carries external_ids:iface-id.
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from hwflow.backends.ovs.backend import OvsBackend
from hwflow.backends.ovs.daemons import OvsDaemons
from hwflow.backends.ovs.openflow import OpenFlowConnection, OpenFlowVersionError
from hwflow.backends.ovs.ovsdb import OvsdbClient
from hwflow.backends.ovs.translate import owner_cookie
from hwflow.pipeline import ir

pytestmark = pytest.mark.functional

PREFIX = "hwt-ovs"
BRIDGE = "br-int"
NET_KEY = 7
CLASSIFY, L2 = 0, 10
FOREIGN_COOKIE = 0x1234


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


def in_ns(ns: str, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run("ip", "netns", "exec", ns, *argv, check=check)


def unique(kind: str) -> str:
    """Device names must fit IFNAMSIZ (15): prefix + 5 random hex digits is 13 characters."""
    return f"{PREFIX}-{kind}{secrets.token_hex(3)[:5]}" if kind else f"{PREFIX}-{secrets.token_hex(3)[:5]}"


@dataclasses.dataclass
class Vm:
    ns: str
    key: int  # logical port key
    iface_id: str
    host_dev: str
    ip: str
    mac: int


@dataclasses.dataclass
class Host:
    ns: str
    daemons: OvsDaemons
    ovsdb: OvsdbClient
    of: OpenFlowConnection
    backend: OvsBackend
    vms: list[Vm]

    def ports(self) -> dict[int, int]:
        return self.backend.ofports({vm.iface_id: vm.key for vm in self.vms})

    def ofctl(self, *args: str) -> str:
        return run("ovs-ofctl", "-O", "OpenFlow13", *args).stdout

    def dump(self) -> str:
        return self.ofctl("dump-flows", self.daemons.mgmt(BRIDGE))


def mac_of(ns: str, dev: str) -> int:
    out = in_ns(ns, "cat", f"/sys/class/net/{dev}/address").stdout.strip()
    return int(out.replace(":", ""), 16)


def plug_vm(host_ns: str, index: int) -> Vm:
    """A namespace with one veth end; the other end stays in the host namespace for OVS."""
    ns = f"{PREFIX}-vm{index}-{secrets.token_hex(2)}"
    run("ip", "netns", "add", ns)
    host_dev, vm_dev = unique(""), unique("")
    in_ns(host_ns, "ip", "link", "add", host_dev, "type", "veth", "peer", "name", vm_dev, "netns", ns)
    in_ns(host_ns, "ip", "link", "set", host_dev, "up")
    in_ns(ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1")
    in_ns(ns, "ethtool", "-K", vm_dev, "tx", "off")
    ip = f"10.77.0.{index}"
    in_ns(ns, "ip", "addr", "add", f"{ip}/24", "dev", vm_dev)
    in_ns(ns, "ip", "link", "set", vm_dev, "up")
    in_ns(ns, "ip", "link", "set", "lo", "up")
    return Vm(ns, key=100 + index, iface_id=f"lport-{index}-{secrets.token_hex(2)}", host_dev=host_dev,
              ip=ip, mac=mac_of(ns, vm_dev))


@pytest.fixture
def host() -> Iterator[Host]:
    if shutil.which("ovs-vswitchd") is None:
        pytest.skip("openvswitch-switch is not installed")
    host_ns = f"{PREFIX}-host-{secrets.token_hex(3)}"
    rundir = Path(tempfile.mkdtemp(prefix=f"{PREFIX}-"))
    namespaces = [host_ns]
    closers = []
    daemons = OvsDaemons(rundir, netns=host_ns)
    try:
        run("ip", "netns", "add", host_ns)
        in_ns(host_ns, "ip", "link", "set", "lo", "up")
        daemons.start()
        ovsdb = OvsdbClient(daemons.db_sock, BRIDGE)
        closers.append(ovsdb.close)
        ovsdb.ensure_bridge()
        vms = []
        for index in (1, 2):
            vm = plug_vm(host_ns, index)
            namespaces.append(vm.ns)
            vms.append(vm)
            ovsdb.add_port(vm.host_dev, iface_id=vm.iface_id)
            ovsdb.wait_for_ofport(vm.host_dev, timeout=10)
        of = OpenFlowConnection(daemons.mgmt(BRIDGE))
        closers.append(of.close)
        of.connect()
        yield Host(host_ns, daemons, ovsdb, of, OvsBackend(ovsdb, of), vms)
    finally:
        for close in reversed(closers):
            close()
        daemons.stop()
        for ns in reversed(namespaces):
            run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(rundir, ignore_errors=True)


def port_flows(vm: Vm) -> list[ir.Flow]:
    owner = f"port:{vm.iface_id}"
    return [
        ir.Flow(CLASSIFY, 100, ir.Match.of(in_port=vm.key),
                (ir.SetField("metadata", NET_KEY), ir.GotoTable(L2)), owner),
        ir.Flow(L2, 100, ir.Match.of(metadata=NET_KEY, eth_dst=vm.mac), (ir.Output(vm.key),), owner),
    ]


def broadcast_flow(vms: list[Vm]) -> ir.Flow:
    return ir.Flow(L2, 50, ir.Match.of(metadata=NET_KEY, eth_dst=(ir.MULTICAST_BIT, ir.MULTICAST_BIT)),
                   tuple(ir.Output(vm.key) for vm in vms), f"network:{NET_KEY}")


def pipeline(vms: list[Vm], with_ports: list[Vm] | None = None) -> list[ir.Flow]:
    flows = [broadcast_flow(vms)]
    for vm in vms if with_ports is None else with_ports:
        flows += port_flows(vm)
    return flows


def ping_loss(src: Vm, dst: Vm, count: int = 3) -> float:
    out = in_ns(src.ns, "ping", "-c", str(count), "-i", "0.2", "-W", "1", dst.ip, check=False).stdout
    found = re.search(r"([\d.]+)% packet loss", out)
    assert found, f"unexpected ping output: {out!r}"
    return float(found.group(1))


def path_gone(src: Vm, dst: Vm, timeout: float = 10) -> bool:
    """True once pings stop getting through. The barrier says OVS changed its flow table; the datapath's
    cached flows follow when the revalidator threads next run, which a busy machine can delay."""
    deadline = time.monotonic() + timeout
    while ping_loss(src, dst, count=1) != 100:
        if time.monotonic() > deadline:
            return False
    return ping_loss(src, dst) == 100


def n_packets(host: Host) -> dict[tuple, int]:
    return {r.key: r.n_packets for r in host.backend.flow_stats()}


def test_synced_pipeline_forwards_pings(host: Host) -> None:
    vm1, vm2 = host.vms
    assert ping_loss(vm1, vm2, count=1) == 100  # fail_mode=secure and no flows: nothing passes

    result = host.backend.sync(pipeline(host.vms), host.ports())

    assert (result.added, result.modified, result.deleted, result.errors) == (5, 0, 0, ())
    assert ping_loss(vm1, vm2) == 0
    assert ping_loss(vm2, vm1) == 0
    ofports = host.ports()
    rx, tx = host.backend.port_stats()[ofports[vm1.key]]
    assert rx >= 3 and tx >= 3  # counted by OVS on vm1's port: echo requests in, replies out


def test_second_sync_sends_nothing_and_keeps_counters(host: Host) -> None:
    vm1, vm2 = host.vms
    host.backend.sync(pipeline(host.vms), host.ports())
    assert ping_loss(vm1, vm2) == 0
    before = n_packets(host)
    assert sum(before.values()) > 0

    again = host.backend.sync(pipeline(host.vms), host.ports())

    assert (again.sent, again.errors, again.skipped_unbound) == (0, (), ())
    after = n_packets(host)
    assert after.keys() == before.keys()
    assert all(after[k] >= before[k] for k in before), "a re-sent flow would have reset its n_packets"


def test_removing_one_ports_flows_deletes_exactly_those(host: Host) -> None:
    vm1, vm2 = host.vms
    host.backend.sync(pipeline(host.vms), host.ports())
    assert ping_loss(vm1, vm2) == 0
    before = n_packets(host)
    removed = {(f.table, f.priority) for f in port_flows(vm2)}

    result = host.backend.sync(pipeline(host.vms, with_ports=[vm1]), host.ports())

    assert (result.added, result.modified, result.deleted, result.errors) == (0, 0, 2, ())
    after = n_packets(host)
    gone = before.keys() - after.keys()
    assert {(k[0], k[1]) for k in gone} == removed and len(gone) == 2
    assert all(after[k] >= before[k] for k in after)
    dump = host.dump()
    mac2 = ":".join(f"{b:02x}" for b in vm2.mac.to_bytes(6, "big"))
    assert mac2 not in dump and f"in_port={host.ports()[vm2.key]}" not in dump
    assert path_gone(vm1, vm2)
    owners = {str(owner) for owner in host.backend.compiler.owners()}  # what `hwflow flows` names cookies by
    assert f"port:{vm1.iface_id}" in owners and f"port:{vm2.iface_id}" not in owners


def test_changed_actions_are_modified_in_place(host: Host) -> None:
    vm1, vm2 = host.vms
    host.backend.sync(pipeline(host.vms), host.ports())
    assert ping_loss(vm1, vm2) == 0
    misdirected = [f if f.match.get("eth_dst") is None or f.match.get("eth_dst").value != vm2.mac
                   else f._replace(actions=(ir.Output(vm1.key),)) for f in pipeline(host.vms)]

    result = host.backend.sync(misdirected, host.ports())

    assert (result.added, result.modified, result.deleted, result.errors) == (0, 1, 0, ())
    assert path_gone(vm1, vm2)
    assert host.backend.sync(misdirected, host.ports()).sent == 0


def test_flows_of_others_survive_sync(host: Host) -> None:
    host.backend.sync(pipeline(host.vms), host.ports())
    host.ofctl("add-flow", host.daemons.mgmt(BRIDGE),
               f"cookie={FOREIGN_COOKIE:#x},table=5,priority=7,ip,nw_dst=10.9.9.9,actions=drop")
    # Same table as ours, and a cookie one bit away from the hwflow marker.
    host.ofctl("add-flow", host.daemons.mgmt(BRIDGE),
               f"cookie={owner_cookie('x') ^ (1 << 63):#x},table={L2},priority=3,actions=drop")

    result = host.backend.sync([], host.ports())

    assert (result.deleted, result.errors) == (5, ())
    dump = host.dump()
    assert f"cookie={FOREIGN_COOKIE:#x}" in dump and "priority=3" in dump
    assert len([line for line in dump.splitlines() if "cookie=" in line]) == 2
    assert host.backend.flow_stats() == []


def test_unbound_ports_are_skipped_and_reported(host: Host) -> None:
    vm1, vm2 = host.vms
    ports = {vm1.key: host.ports()[vm1.key]}

    result = host.backend.sync(pipeline(host.vms), ports)

    assert sorted(e.port_key for e in result.skipped_unbound) == [vm2.key, vm2.key, vm2.key]
    assert (result.added, result.errors) == (2, ())


def test_refused_flow_is_mapped_back_and_the_rest_applied(host: Host) -> None:
    vm1, vm2 = host.vms
    bad = ir.Flow(20, 9, ir.Match(), (ir.Output(999),), "port:bogus")
    ports = {**host.ports(), 999: 0xFFFFFFFF}  # OFPP_ANY: OVS refuses it as an output port

    result = host.backend.sync([*pipeline(host.vms), bad], ports)

    assert len(result.errors) == 1
    refused = result.errors[0]
    assert (refused.msg.table_id, refused.msg.priority) == (20, 9)
    assert refused.msg.cookie == owner_cookie("port:bogus")
    assert "refused" in str(refused)
    assert ping_loss(vm1, vm2) == 0


def test_interface_changes_wake_the_agent(host: Host) -> None:
    seen = threading.Event()
    names: list[str] = []

    def woken(event: str, name: str) -> None:
        names.append(name)
        seen.set()

    host.ovsdb.on_change(woken)
    dev = unique("")
    # A veth, not a dummy: this kernel has no dummy module.
    in_ns(host.ns, "ip", "link", "add", dev, "type", "veth", "peer", "name", unique(""))
    host.ovsdb.add_port(dev, iface_id="lport-late")
    assert seen.wait(5) and dev in names
    ofport = host.ovsdb.wait_for_ofport(dev, timeout=10)
    assert host.ovsdb.interfaces()["lport-late"].ofport == ofport
    host.ovsdb.del_port(dev)
    deadline = time.monotonic() + 5
    while "lport-late" in host.ovsdb.interfaces() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert "lport-late" not in host.ovsdb.interfaces()


def test_version_mismatch_is_explained_and_reconnect_recovers(host: Host) -> None:
    host.backend.sync(pipeline(host.vms), host.ports())
    run("ovs-vsctl", f"--db={host.daemons.db_sock}", "set", "bridge", BRIDGE, "protocols=OpenFlow10")
    with pytest.raises(OpenFlowVersionError, match="protocols"):
        OpenFlowConnection(host.daemons.mgmt(BRIDGE)).connect()

    host.ovsdb.ensure_bridge()  # repairs protocols=OpenFlow13; our old session was dropped meanwhile

    deadline = time.monotonic() + 5
    while True:
        try:
            assert len(host.backend.flow_stats()) == 5
            break
        except OpenFlowVersionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    assert host.backend.sync(pipeline(host.vms), host.ports()).sent == 0


def test_thousands_of_flows_sync_in_one_batch_and_dump_in_many_parts(host: Host) -> None:
    """3000 flows dump as ~300 kB, which OVS splits into several multipart replies."""
    bulk = [ir.Flow(30, 10, ir.Match.of(metadata=i, eth_type=ir.ETH_TYPE_IPV4, ipv4_dst=0x0A000000 + i),
                    (ir.Drop(),), f"fip:{i}") for i in range(3000)]
    flows = [*pipeline(host.vms), *bulk]

    result = host.backend.sync(flows, host.ports())

    assert (result.added, result.errors) == (3005, ())
    assert len(host.backend.flow_stats()) == 3005
    assert "flow_count=3000" in host.ofctl("dump-aggregate", host.daemons.mgmt(BRIDGE), "table=30")
    parts = host.of.request(parser.OFPFlowStatsRequest(host.of.datapath, 0, 30, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                                       0, 0, parser.OFPMatch()))
    assert len(parts) > 1 and sum(len(part.body) for part in parts) == 3000
    assert host.backend.sync(flows, host.ports()).sent == 0
    assert host.backend.sync(flows[:-1000], host.ports()).deleted == 1000


def test_new_owner_rewrites_the_cookie_without_touching_counters(host: Host) -> None:
    vm1, vm2 = host.vms
    host.backend.sync(pipeline(host.vms), host.ports())
    assert ping_loss(vm1, vm2) == 0
    before = n_packets(host)
    moved = [f._replace(owner="network:renamed") if f.priority == 50 else f
             for f in pipeline(host.vms)]

    result = host.backend.sync(moved, host.ports())

    assert (result.added, result.modified, result.deleted) == (0, 1, 0)
    assert f"cookie={owner_cookie('network:renamed'):#x}" in host.dump()
    assert all(n_packets(host)[k] >= before[k] for k in before)
