"""End to end on simulated SmartNIC hosts: real OVS, the simulated NIC, the real agent, real pings.

Each host is a ``SimHost`` (its own network namespace, ovsdb-server and
ovs-vswitchd, hwflow-simnic and hwflow-agent processes) on an embedded SQLite
database in the test's directory. The tests look at what each datapath really
carried: the NIC's tc-flower rule counters (dumped over its control socket)
and Open vSwitch's flow and port counters (over OpenFlow).
"""

from __future__ import annotations

import dataclasses
import errno
import json
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp

from hwflow.backends.ovs import translate
from hwflow.backends.ovs.openflow import OpenFlowConnection
from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.transport import SimSocketTransport, TcClient
from hwflow.db.api import NbApi
from hwflow.model.objects import Network, Port, Router, RouterPort, Subnet
from hwflow.sim.host import BRIDGE, SimHost, in_ns

pytestmark = pytest.mark.functional

HWFLOW = shutil.which("hwflow") or str(Path(sys.executable).with_name("hwflow"))
PINGS = 10
VMS = (("vm1", "fa:16:3e:00:00:01", "10.0.0.1"),
       ("vm2", "fa:16:3e:00:00:02", "10.0.0.2"),
       ("vm3", "fa:16:3e:00:00:03", "10.0.0.3"))
IP_PROTOCOLS = {fl.ETH_P_IP, fl.ETH_P_IPV6}
FOREIGN_VF = 3  # the tests never plug it


def mac_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def agent_log(host: SimHost) -> str:
    """The agent's log so far ("" until it writes its first line)."""
    return host.agent_log.read_text(errors="replace") if host.agent_log.exists() else ""


def wait_for(what: str, check: Callable[[], Any], timeout: float = 20, host: SimHost | None = None,
             details: Callable[[], str] | None = None) -> Any:
    """Poll ``check`` until it returns something truthy; fail naming ``what`` (and the agent log, and what
    ``details`` says then)."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            log = agent_log(host)[-3000:] if host else ""
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}\n{details() if details else ''}\n{log}")
        time.sleep(0.2)


# --- what the datapaths hold ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Flow:
    """One hwflow OpenFlow flow, reduced to what the tests compare."""

    key: translate.FlowKey
    actions: translate.InstructionsKey
    cookie: int
    packets: int

    @property
    def in_port(self) -> int | None:
        return next((value for field, value, _ in self.key[2] if field == "in_port"), None)

    @property
    def eth_dst(self) -> tuple[int, int] | None:
        return next(((value, mask) for field, value, mask in self.key[2] if field == "eth_dst"), None)

    @property
    def outputs(self) -> list[int]:
        return [a[1] for kind, *rest in self.actions if kind == "apply" for a in rest[0] if a[0] == "output"]

    def identity(self) -> tuple:
        return self.key, self.actions, self.cookie


def nic_rules(host: SimHost, vfs: set[int] | None = None) -> list[tuple[fl.FlowerRule, fl.RuleStats | None]]:
    """Every flower rule on the NIC's representors (or on those of ``vfs``), with counters; without ``vfs``
    also those on its tunnel devices and its uplink representor."""
    devices = [port["representor_ifindex"] for port in host.nic_ports if vfs is None or port["vf"] in vfs]
    if vfs is None:
        devices += [tunnel["ifindex"] for tunnel in host.nic_status.get("tunnels", ())]
        devices += [uplink["representor_ifindex"] for uplink in host.nic_status.get("uplinks", ())]
    return device_rules(host, devices)


def device_rules(host: SimHost, ifindexes: list[int]) -> list[tuple[fl.FlowerRule, fl.RuleStats | None]]:
    """The flower rules on the NIC's devices ``ifindexes``, with counters."""
    client = TcClient(SimSocketTransport(host.nic_socket))
    try:
        return [entry for ifindex in ifindexes for entry in client.dump(ifindex)]
    finally:
        client.close()


def ovs_flows(host: SimHost) -> list[Flow]:
    of = OpenFlowConnection(host.ovs.mgmt(BRIDGE))
    try:
        stats = of.dump_flows(translate.COOKIE_MARK, translate.COOKIE_MARK_MASK)
    finally:
        of.close()
    return [Flow(translate.flow_key(s.table_id, s.priority, s.match), translate.instructions_key(s.instructions),
                 s.cookie, s.packet_count) for s in stats]


def ovs_rx(host: SimHost, representor: str) -> int:
    """Packets OVS received on a representor (what the NIC handed up to software)."""
    of = OpenFlowConnection(host.ovs.mgmt(BRIDGE))
    try:
        return of.port_stats()[host.ovsdb.ofport(representor)][0]
    finally:
        of.close()


def representor(host: SimHost, vm: str) -> str:
    return host.vms[vm_ns(host, vm)].representor


def ifindex(host: SimHost, vm: str) -> int:
    """The ifindex of ``vm``'s representor (``vm`` as in VMS: "vm1")."""
    return next(p["representor_ifindex"] for p in host.nic_ports if p["vf"] == host.vms[vm_ns(host, vm)].vf)


def counted(host: SimHost, vm: str, pick: Callable[[fl.FlowerRule], bool] = lambda rule: True) -> int:
    """Packets counted by the NIC rules (of every chain) on ``vm``'s representor that ``pick`` selects."""
    return sum(stats.packets for rule, stats in nic_rules(host, {host.vms[vm_ns(host, vm)].vf})
               if stats is not None and pick(rule))


def redirects(rule: fl.FlowerRule, to: int | None = None) -> bool:
    """Whether the rule sends packets on in hardware: to representor ifindex ``to``, or (None) anywhere."""
    return any(isinstance(a, fl.Mirred) and (to is None or a.ifindex == to) for a in rule.actions)


def rewrites(rule: fl.FlowerRule) -> bool:
    return any(isinstance(a, fl.Pedit) for a in rule.actions)


def hw_packets(host: SimHost, src: str, dst: str, protocol: int = fl.ETH_P_IP, rewriting: bool = False) -> int:
    """Packets the NIC redirected from VM ``src`` to VM ``dst`` (sum over matching rules); ``rewriting``: by
    rules that also rewrite headers (pedit) on the way, as a routed path's do."""
    dst_if = ifindex(host, dst)
    return counted(host, src, lambda rule: rule.protocol == protocol and redirects(rule, dst_if)
                   and (rewrites(rule) or not rewriting))


def rewriting_redirect(host: SimHost, src: str, dst: str) -> list[fl.FlowerRule]:
    """The NIC rules on ``src``'s representor that rewrite headers and redirect to ``dst``'s (a routed path)."""
    dst_if = ifindex(host, dst)
    return [rule for rule, _ in nic_rules(host, {host.vms[vm_ns(host, src)].vf})
            if redirects(rule, dst_if) and rewrites(rule)]


def nic_dump(host: SimHost) -> str:
    """Every NIC rule with its keys, actions and packet counter, one a line (for failure messages)."""
    lines = []
    for rule, stats in nic_rules(host):
        keys = " ".join(f"{spec.field}={value:#x}/{mask:#x}" for spec, value, mask in rule.keys.items())
        lines.append(f"{rule.describe()} protocol {rule.protocol:#06x} [{keys}] {rule.actions} "
                     f"packets={stats.packets if stats else '-'}")
    return "\n".join(lines)


def evidence(host: SimHost) -> str:
    """What a failure about a datapath shows: the host's NIC rules with their counters and the agent log's tail."""
    return (f"\n--- NIC rules of {host.name}:\n{nic_dump(host)}\n"
            f"--- agent log of {host.name}:\n{agent_log(host)[-3000:]}")


def unicast_packets(flows: list[Flow], mac: str) -> int:
    """What OVS switched to ``mac``: the counters of its unicast flows, in both L2 tables (the lookup from a
    local port and the one from a tunnel)."""
    found = [f for f in flows if f.eth_dst == (mac_int(mac), 0xFFFFFFFFFFFF)]
    assert len(found) == 2, found
    return sum(f.packets for f in found)


# --- hosts ------------------------------------------------------------------------------------------


class Lab:
    """Starts SimHosts with unique names and always stops them."""

    def __init__(self, base: Callable[[str], Path]) -> None:
        self._base = base
        self.hosts: list[SimHost] = []

    def host(self, profile: str = "sim-basic", agent_debug: bool = False) -> SimHost:
        name = f"e2{secrets.token_hex(2)}"
        workdir = self._base(name)
        host = SimHost(name, workdir, f"sqlite:///{workdir}/nb.sqlite", profile=profile, agent_debug=agent_debug)
        self.hosts.append(host)
        return host.start()

    def stop(self) -> None:
        """Stops every host even if stopping one fails; re-raises the first failure."""
        failures = []
        for host in self.hosts:
            try:
                host.stop()
            except Exception as exc:  # the other hosts must still be stopped
                failures.append(exc)
        if failures:
            raise failures[0]


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(lambda name: tmp_path / name)
    try:
        yield lab
    finally:
        lab.stop()


def vm_ns(host: SimHost, vm: str) -> str:
    return f"hwf-{host.name}-{vm}"


def create_network(host: SimHost, vms: tuple = VMS[:2]) -> dict[str, Port]:
    with NbApi.from_url(host.database) as nb:
        net = nb.create(Network(name="e2e-net", vni=1001))
        return {vm: nb.create(Port(name=vm, network_id=net.id, mac=mac, ips=[ip], chassis=host.name))
                for vm, mac, ip in vms}


def create_port(host: SimHost, vm: str, mac: str, ip: str) -> Port:
    with NbApi.from_url(host.database) as nb:
        (net,) = nb.list(Network)
        return nb.create(Port(name=vm, network_id=net.id, mac=mac, ips=[ip], chassis=host.name))


def plug(host: SimHost, ports: dict[str, Port]) -> None:
    for vm, port in ports.items():
        host.plug(port, vm_ns(host, vm))


# What the shipped pipeline gives n VMs on one network (each with one IPv4 address):
# per direction, port security admits four unicast paths the NIC can carry (IPv4 from the
# port's address, DHCP discovery from 0.0.0.0, IPv6 from its link-local address, IPv6 DAD
# from ::); per port, OVS holds classify + 6 port-security flows (IPv4, ARP, IPv6 link-local,
# DHCP, DAD, drop) + 3 ARP responder flows (the answer, and not answering a gratuitous ARP nor
# the port itself) + unicast lookup in both L2 tables (from L3, from the tunnel) + delivery;
# per network a flood lookup in both L2 tables and its delivery; and the table misses: the
# router app's 4, one each for dhcp, the responder and the two security group stages.
RULES_PER_DIRECTION = 4
FLOWS_PER_PORT = 13
FLOWS_PER_NETWORK = 3
TABLE_MISSES = 8


def programmed(vms: int) -> dict[str, int]:
    return {"rules": vms * (vms - 1) * RULES_PER_DIRECTION,
            "flows": vms * FLOWS_PER_PORT + FLOWS_PER_NETWORK + TABLE_MISSES}


def carries_ping(rule: fl.FlowerRule) -> bool:
    """The IPv4 rule for traffic from a port's own address (not the DHCP-discovery one)."""
    return rule.protocol == fl.ETH_P_IP and rule.keys.ipv4_src not in (None, 0)


def wait_programmed(host: SimHost, rules: int, flows: int, timeout: float = 20) -> None:
    wait_for(f"{rules} NIC rules and {flows} OVS flows",
             lambda: len(nic_rules(host)) == rules and len(ovs_flows(host)) == flows, timeout, host)


def ping(host: SimHost, src: str, dst_ip: str, count: int = PINGS) -> float:
    return host.ping(vm_ns(host, src), dst_ip, count=count, interval=0.05)


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SimHost]:
    """One host with vm1 and vm2 on one network, fully programmed."""
    lab = Lab(tmp_path_factory.mktemp)
    try:
        host = lab.host()
        plug(host, create_network(host))
        wait_programmed(host, **programmed(2))
        yield host
    finally:
        lab.stop()


# --- the tests ----------------------------------------------------------------------------------------


def test_unicast_between_two_vms_is_forwarded_by_the_nic_not_ovs(pair: SimHost) -> None:
    directions = (("vm1", "vm2"), ("vm2", "vm1"))
    vms = [(vm, mac) for vm, mac, _ in VMS[:2]]
    hw_before = {d: hw_packets(pair, *d) for d in directions}
    rx_before = {vm: ovs_rx(pair, representor(pair, vm)) for vm, _ in vms}
    flows = ovs_flows(pair)
    uni_before = {vm: unicast_packets(flows, mac) for vm, mac in vms}

    assert ping(pair, "vm1", VMS[1][2]) == 0, evidence(pair)

    hw = {d: hw_packets(pair, *d) - hw_before[d] for d in directions}
    assert all(n >= PINGS for n in hw.values()), f"NIC IPv4 rules counted {hw}, expected >= {PINGS} each way"
    rx = {vm: ovs_rx(pair, representor(pair, vm)) - rx_before[vm] for vm, _ in vms}
    assert all(n < PINGS for n in rx.values()), f"OVS received {rx} packets on the representors: ICMP went to OVS"
    flows = ovs_flows(pair)
    uni = {vm: unicast_packets(flows, mac) - uni_before[vm] for vm, mac in vms}
    assert all(n < PINGS for n in uni.values()), f"OVS unicast flows matched {uni} packets: ICMP went to OVS"


def test_arp_goes_through_ovs_and_never_to_the_nic(pair: SimHost) -> None:
    vm1 = vm_ns(pair, "vm1")

    def answered() -> int:  # the ARP responder's answers: the flows sending back out of the asking port
        return sum(f.packets for f in ovs_flows(pair) if ofp.OFPP_IN_PORT in f.outputs)

    answered_before = answered()
    in_ns(vm1, "ip", "neigh", "flush", "dev", "eth0")
    assert ping(pair, "vm1", VMS[1][2], count=3) == 0, evidence(pair)

    # OVS refreshes flow counters from its datapath periodically: poll.
    wait_for("the ARP request answered by OVS", lambda: answered() > answered_before)
    rules = nic_rules(pair)
    assert rules and {rule.protocol for rule, _ in rules} <= IP_PROTOCOLS, [r for r, _ in rules]


def test_port_security_drops_a_spoofed_source_before_either_datapath_forwards_it(pair: SimHost) -> None:
    vm1, vm1_port = vm_ns(pair, "vm1"), pair.ovsdb.ofport(representor(pair, "vm1"))

    def dropped() -> int:  # vm1's port-security drop flow: priority 1, matching only its in_port, no actions
        return sum(f.packets for f in ovs_flows(pair) if f.key[1] == 1 and f.in_port == vm1_port and not f.outputs)

    # vm1 knows vm2's MAC after this: the spoofed pings need no ARP
    assert ping(pair, "vm1", VMS[1][2], count=2) == 0, evidence(pair)
    hw_before, drops_before = hw_packets(pair, "vm1", "vm2"), dropped()
    subprocess.run(["ip", "netns", "exec", vm1, "ip", "addr", "add", "10.0.0.99/24", "dev", "eth0"], check=True)
    try:
        spoofed = subprocess.run(["ip", "netns", "exec", vm1, "ping", "-c", "5", "-i", "0.1", "-W", "1",
                                  "-I", "10.0.0.99", VMS[1][2]], capture_output=True, text=True, check=False)
        assert "100% packet loss" in spoofed.stdout, spoofed.stdout
    finally:
        subprocess.run(["ip", "netns", "exec", vm1, "ip", "addr", "del", "10.0.0.99/24", "dev", "eth0"], check=False)
    assert dropped() - drops_before >= 5, "the spoofed pings were not dropped by port security in OVS"
    assert hw_packets(pair, "vm1", "vm2") == hw_before, "the NIC forwarded a spoofed packet"
    assert ping(pair, "vm1", VMS[1][2]) == 0, evidence(pair)


@dataclasses.dataclass
class Deleted:
    """A host on which vm1 and vm2 talked, then vm2's port was deleted with ``hwflow nb port delete``."""

    host: SimHost
    rep: int  # vm2's representor ifindex
    ofport: int  # and its OpenFlow port

    def rules_towards(self) -> list[fl.FlowerRule]:
        return [rule for rule, _ in nic_rules(self.host)
                if any(getattr(a, "ifindex", None) == self.rep for a in rule.actions)]

    def rules_on(self) -> list[fl.FlowerRule]:
        return [rule for rule, _ in nic_rules(self.host) if rule.ifindex == self.rep]

    def flows(self) -> list[Flow]:
        return [f for f in ovs_flows(self.host) if f.in_port == self.ofport or self.ofport in f.outputs]


@pytest.fixture(scope="module")
def deleted(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deleted]:
    lab = Lab(tmp_path_factory.mktemp)
    try:
        host = lab.host()
        plug(host, create_network(host))
        wait_programmed(host, **programmed(2))
        state = Deleted(host, ifindex(host, "vm2"), host.ovsdb.ofport(representor(host, "vm2")))
        assert ping(host, "vm1", VMS[1][2], count=3) == 0, evidence(host)  # both VMs now know each other's MAC
        assert len(state.rules_on()) == len(state.rules_towards()) == RULES_PER_DIRECTION and state.flows()

        done = subprocess.run([HWFLOW, "nb", "port", "delete", "vm2", "--database", host.database],
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        assert "deleted port" in done.stdout and "(vm2)" in done.stdout
        wait_for("the OVS flows of vm2 and the NIC rules towards it to go",
                 lambda: not state.rules_towards() and not state.flows(), host=host)
        yield state
    finally:
        lab.stop()


def test_deleting_a_port_with_the_cli_removes_its_flows_and_the_rules_towards_it(deleted: Deleted) -> None:
    host = deleted.host
    assert not deleted.rules_towards() and not deleted.flows()
    vm1_ofport = host.ovsdb.ofport(representor(host, "vm1"))
    assert any(f.in_port == vm1_ofport for f in ovs_flows(host)), "vm1's flows went too"
    assert ping(host, "vm1", VMS[1][2], count=3) == 100, evidence(host)
    assert host.agent_pid is not None, "the agent died"


def test_deleting_a_port_with_the_cli_removes_the_rules_on_its_representor(deleted: Deleted) -> None:
    wait_for("the deleted port's NIC rules to go (they would still redirect its traffic in hardware)",
             lambda: not deleted.rules_on())


@dataclasses.dataclass
class Snapshot:
    rules: dict[fl.FlowerRule, int]  # rule (with handle) -> packets
    flows: dict[tuple, int]  # flow identity -> n_packets
    rule_count: int
    flow_count: int


def snapshot(host: SimHost) -> Snapshot:
    rules = nic_rules(host)
    flows = ovs_flows(host)
    return Snapshot({r: s.packets if s else 0 for r, s in rules}, {f.identity(): f.packets for f in flows},
                    len(rules), len(flows))


def start_agent(host: SimHost) -> None:
    """Start the (stopped) agent and wait until it is up and has run a reconcile pass, both halves (OVS and the
    NIC): its end is logged, as a change or at debug as a pass that changed nothing."""
    mark = len(agent_log(host))
    host.start_agent()

    def reconciled() -> bool:
        text = agent_log(host)[mark:]
        assert "cannot start" not in text, text
        return "hwflow-agent up as chassis" in text and ("reconciled (" in text or "changed nothing" in text)

    wait_for("the agent's first reconcile pass", reconciled, host=host)


def test_agent_restart_reconciles_without_flushing_or_duplicating(lab: Lab) -> None:
    host = lab.host(agent_debug=True)  # debug logs every pass ("OVS sync: ...")
    plug(host, create_network(host))
    wait_programmed(host, **programmed(2))
    in_ns(vm_ns(host, "vm1"), "ip", "neigh", "flush", "dev", "eth0")
    assert ping(host, "vm1", VMS[1][2]) == 0, evidence(host)
    wait_for("OVS counters", lambda: sum(f.packets for f in ovs_flows(host)) > 0)  # the ARP answers
    before = snapshot(host)
    assert sum(before.rules.values()) >= 2 * PINGS and sum(before.flows.values()) > 0
    pid = host.agent_pid

    host.stop_agent()
    start_agent(host)
    after = snapshot(host)

    assert host.agent_pid not in (None, pid)
    assert set(after.rules) == set(before.rules), "NIC rules (with handles) changed across the restart"
    assert after.rule_count == before.rule_count, "duplicate NIC rules after the restart"
    assert len({(r.ifindex, r.prio, r.protocol, r.keys) for r in after.rules}) == after.rule_count
    assert all(after.rules[r] >= n for r, n in before.rules.items()), "NIC counters were reset"
    assert set(after.flows) == set(before.flows) and after.flow_count == before.flow_count
    assert all(after.flows[f] >= n for f, n in before.flows.items()), "OVS counters were reset"

    # A port created (and plugged) while the agent is down is programmed when it comes back.
    host.stop_agent()
    vm, mac, address = VMS[2]
    host.plug(create_port(host, vm, mac, address), vm_ns(host, vm))
    assert len(nic_rules(host)) == programmed(2)["rules"]
    start_agent(host)
    wait_programmed(host, **programmed(3))
    rep3 = ifindex(host, vm)
    assert any(rule.ifindex == rep3 for rule, _ in nic_rules(host))
    assert ping(host, "vm1", address) == 0, evidence(host)
    assert ping(host, vm, VMS[1][2]) == 0, evidence(host)


def test_a_port_plugged_later_travels_as_a_delta_to_both_datapaths(lab: Lab) -> None:
    """After the first (full) pass, a new port reaches OVS as flow_mods of the compiler's delta and the NIC as
    the rules of the ports whose plan changed: no dump of either datapath until the resync timer."""
    host = lab.host(agent_debug=True)  # debug: "OVS sync: ..." for a full pass, "OVS delta: ..." for a delta
    plug(host, create_network(host))
    wait_programmed(host, **programmed(2))
    mark = len(agent_log(host))
    vm, mac, address = VMS[2]
    host.plug(create_port(host, vm, mac, address), vm_ns(host, vm))
    wait_programmed(host, **programmed(3))
    assert ping(host, "vm1", address) == 0, evidence(host)
    assert any(rule.ifindex == ifindex(host, vm) for rule, _ in nic_rules(host))
    passes = agent_log(host)[mark:]
    assert "reconciled (delta)" in passes and "OVS delta:" in passes, passes
    assert "reconciled (full)" not in passes and "OVS sync:" not in passes, passes


def test_a_full_nic_refuses_and_the_traffic_stays_in_ovs(lab: Lab) -> None:
    host = lab.host(profile="sim-tiny")
    (foreign_port,) = [p for p in host.nic_ports if p["vf"] == FOREIGN_VF]
    foreign = [fl.FlowerRule(foreign_port["representor_ifindex"], 10, i + 1, fl.ETH_P_IP,
                             fl.FlowerKeys(ipv4_dst=0xC0A80000 + i), (fl.Gact("drop"),)) for i in range(7)]
    client = TcClient(SimSocketTransport(host.nic_socket))
    try:
        assert client.add(foreign) == [None] * 7
    finally:
        client.close()

    plug(host, create_network(host))
    ours = {vm.vf for vm in host.vms.values()}
    wait_for("ENOSPC refusals in the agent log", lambda: agent_log(host).count("ENOSPC") >= 3, host=host)
    wait_for("the one rule that fits", lambda: len(nic_rules(host, ours)) == 1, host=host)
    (accepted, _), = nic_rules(host, ours)
    log = agent_log(host)
    assert "refused to add" in log and errno.errorcode[errno.ENOSPC] in log

    in_hardware = {vm for vm in ("vm1", "vm2") if carries_ping(accepted) and accepted.ifindex == ifindex(host, vm)}
    in_software = {"vm1", "vm2"} - in_hardware  # the directions whose ping rule the NIC refused
    rx_before = {vm: ovs_rx(host, representor(host, vm)) for vm in in_software}
    assert ping(host, "vm1", VMS[1][2]) == 0, evidence(host)
    for vm in in_software:
        assert ovs_rx(host, representor(host, vm)) - rx_before[vm] >= PINGS, f"{vm}'s pings did not go via OVS"
    if in_hardware:
        assert nic_rules(host, ours)[0][1].packets >= PINGS
    assert [rule for rule, _ in nic_rules(host, {FOREIGN_VF})] == foreign
    assert len(nic_rules(host)) == 8


ROUTED = (("vm1", "fa:16:3e:00:01:01", "10.1.0.5"), ("vm2", "fa:16:3e:00:02:01", "10.2.0.5"))


@pytest.mark.parametrize("profile", ["sim-basic", "mlx5-connectx6dx"])
def test_routed_ping_between_two_subnets_through_the_distributed_router(lab: Lab, profile: str) -> None:
    """vm1 (10.1.0.0/24) pings vm2 (10.2.0.0/24) through router r1, both VMs on one host.

    sim-basic cannot rewrite headers nor decrement the TTL: routed paths stay in OVS, which receives every
    echo request on vm1's representor and every reply on vm2's, and no NIC rule forwards one. On
    mlx5-connectx6dx the partitioner puts them in hardware: vm1's chain 0 sends its IPv4 to a chain of the
    router's where a ``pass`` catches TTL 0/1 (expiry is software's) and a rule rewrites both MACs, decrements
    the TTL (pedit + csum) and redirects to vm2's representor (and the same back): those rules count every
    echo, and OVS sees only each VM's ARP for its gateway.
    """
    host = lab.host(profile)
    with NbApi.from_url(host.database) as nb:
        legs = []
        for i, (cidr, gw) in enumerate((("10.1.0.0/24", "10.1.0.1"), ("10.2.0.0/24", "10.2.0.1"))):
            net = nb.create(Network(name=f"net{i}", vni=2000 + i))
            subnet = nb.create(Subnet(name=f"sub{i}", network_id=net.id, cidr=cidr, gateway_ip=gw))
            legs.append((net, subnet, gw))
        router = nb.create(Router(name="r1"))
        for i, (net, subnet, gw) in enumerate(legs):
            nb.create(RouterPort(name=f"r1-{i}", router_id=router.id, network_id=net.id, subnet_id=subnet.id,
                                 mac=f"fa:16:3e:ee:00:0{i}", ip=gw))
        vms = {name: nb.create(Port(name=name, network_id=net.id, mac=mac, ips=[address], chassis=host.name))
               for (name, mac, address), (net, _, _) in zip(ROUTED, legs, strict=True)}
    for (name, port), (_, _, gw) in zip(vms.items(), legs, strict=True):
        host.plug(port, vm_ns(host, name), gateway=gw)
    wait_for("routes and next hops in OVS", lambda: sum(1 for f in ovs_flows(host) if f.key[1] >= 100) > 20,
             host=host)
    in_hardware = profile != "sim-basic"
    directions = (("vm1", "vm2"), ("vm2", "vm1"))
    if in_hardware:
        wait_for("the routed paths' rewriting NIC rules, both ways",
                 lambda: all(rewriting_redirect(host, *d) for d in directions), host=host,
                 details=lambda: nic_dump(host))

    def nic() -> dict[tuple[str, str], tuple[int, int]]:  # each way: packets redirected, by rules with a pedit
        return {d: (hw_packets(host, *d), hw_packets(host, *d, rewriting=True)) for d in directions}

    hw_before, rx_before = nic(), {vm: ovs_rx(host, representor(host, vm)) for vm in vms}
    out = in_ns(vm_ns(host, "vm1"), "ping", "-c", str(PINGS), "-i", "0.05", "-W", "2", ROUTED[1][2], check=False,
                timeout=60).stdout
    assert " 0% packet loss" in out, out + evidence(host)
    assert "ttl=63" in out  # one router hop: the TTL was decremented on the way

    hw = {d: tuple(n - b for n, b in zip(now, hw_before[d], strict=True)) for d, now in nic().items()}
    rx = {vm: ovs_rx(host, representor(host, vm)) - rx_before[vm] for vm in vms}
    if in_hardware:
        assert all(routed >= PINGS for _, routed in hw.values()), \
            f"the NIC redirected {hw} (all, with a pedit), expected >= {PINGS} each way" \
            + evidence(host)
        assert all(n < PINGS for n in rx.values()), f"OVS received {rx} on the representors: echoes went to OVS" \
            + evidence(host)
    else:
        assert all(n >= PINGS for n in rx.values()), f"OVS received only {rx} on the representors" + evidence(host)
        assert not any(redirected for redirected, _ in hw.values()), f"the NIC redirected {hw}" + evidence(host)
    neigh = in_ns(vm_ns(host, "vm1"), "ip", "neigh", "show", "10.1.0.1").stdout
    assert "fa:16:3e:ee:00:00" in neigh  # the gateway's ARP was answered with the router port's MAC


def test_demo_command_reports_traffic_in_both_datapaths(tmp_path: Path) -> None:
    name = f"d{secrets.token_hex(3)}"  # its own namespaces, whatever else runs on the machine
    done = subprocess.run([HWFLOW, "demo", "--format", "json", "--name", name,
                           "--workdir", str(tmp_path)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr + done.stdout
    report = json.loads(done.stdout)
    assert report["ping_loss_percent"] == 0
    assert report["nic_forwarded_packets"] > 0
    assert report["ovs_forwarded_packets"] > 0
    assert not (tmp_path / "host.json").exists(), "the demo left its host running"


# --- drops in the NIC ------------------------------------------------------------------------------------


def drops(rule: fl.FlowerRule) -> bool:
    """Whether the rule drops what it takes (gact drop)."""
    return any(isinstance(a, fl.Gact) and a.verdict == "drop" for a in rule.actions)


def hw_dropped(host: SimHost, vm: str) -> int:
    """Packets the NIC's drop rules on ``vm``'s representor took (every chain)."""
    return counted(host, vm, drops)


def test_port_security_drops_a_spoofed_source_in_the_nic_and_ovs_never_sees_it(lab: Lab) -> None:
    """On a NIC that drops (mlx5), port security's drop of a spoofed source is a NIC rule behind pass rules for
    what software must still see (ARP, DHCP, broadcasts): the spoofed pings die in the NIC, OVS's representor
    receives (next to) none of them, and the legitimate ping is still forwarded by the NIC."""
    host = lab.host("mlx5-connectx6dx")
    plug(host, create_network(host))
    wait_for("vm1's port-security drop rule in the NIC", lambda: any(
        drops(rule) and rule.protocol == fl.ETH_P_IP for rule, _ in nic_rules(host, {host.vms[vm_ns(host, "vm1")].vf})),
        host=host)
    vm1 = vm_ns(host, "vm1")
    wait_for("vm1 reaching vm2", lambda: ping(host, "vm1", VMS[1][2], count=2) == 0, host=host)  # ARP learnt
    sent = 20
    dropped_before, rx_before = hw_dropped(host, "vm1"), ovs_rx(host, representor(host, "vm1"))
    subprocess.run(["ip", "netns", "exec", vm1, "ip", "addr", "add", "10.0.0.99/24", "dev", "eth0"], check=True)
    try:
        spoofed = subprocess.run(["ip", "netns", "exec", vm1, "ping", "-c", str(sent), "-i", "0.05", "-W", "1",
                                  "-I", "10.0.0.99", VMS[1][2]], capture_output=True, text=True, check=False)
    finally:
        subprocess.run(["ip", "netns", "exec", vm1, "ip", "addr", "del", "10.0.0.99/24", "dev", "eth0"], check=False)
    assert "100% packet loss" in spoofed.stdout, spoofed.stdout
    dropped = hw_dropped(host, "vm1") - dropped_before
    rx = ovs_rx(host, representor(host, "vm1")) - rx_before
    assert dropped >= sent, f"the NIC's drop rules took {dropped} of {sent} spoofed pings" + evidence(host)
    assert rx < sent // 4, f"OVS received {rx} packets on vm1's representor: the spoofed pings went to OVS" + \
        evidence(host)
    hw_before = hw_packets(host, "vm1", "vm2")
    assert ping(host, "vm1", VMS[1][2]) == 0, evidence(host)
    assert hw_packets(host, "vm1", "vm2") - hw_before >= PINGS, "the legitimate ping left the NIC" + evidence(host)
