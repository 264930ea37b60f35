"""A real agent on a simulated host: from a northbound write to the NIC rules and OVS flows it should produce.

(With ``hosts`` of 2 or more, the benchmark is another: a write on one host reaching the NICs of the others,
on a lab of that many hosts; see :mod:`hwflow.bench.mesh` for what it measures and its parameters
``mesh_ports`` and ``database``.)

The host (:class:`hwflow.sim.host.SimHost`): its own userspace Open vSwitch, a simulated NIC with the
capabilities of ``profile`` and ``local_ports`` + ``changes`` VFs, and ``hwflow-agent`` as a process, on
the database at ``url`` (default: a new SQLite file in a temporary directory; ``etcd://HOST:PORT`` gets a
key prefix of its own, ``etcd://HOST:PORT/PREFIX`` is used as given and must be empty; the agent reaches an
endpoint on 127.0.0.1, which its namespace has its own of, through a relay the bench runs, a hop on its
path to the database). The topology is
the compile benchmark's (:func:`hwflow.bench.compile.build`) at ``hwflow bench partition``'s proportions:
``local_ports`` + ``remote_ports`` ports, 20 a network (one /24 subnet each), a router per 100 ports
joining five networks, a security group of ten rules per 100 ports (the first four ports also in
``admin``, which one rule of every group names), written as one batch (``NbApi.create_many``). The first
``local_ports`` ports are bound to the host (port i is on network i % networks: one local port on each of
the first networks, 19 remote ones beside it, and with fewer routers than local ports every network is
behind a router of a local network, so the agent holds every port); the others to 16 other chassis with
VXLAN tunnel addresses (192.0.2.1-16).

Setup (``setup_s``, from the first write to the host settled): the topology written (``db_s``), the host
started without its agent, each local port's VF handed to a VM namespace and its representor put on br-int
with the port's iface-id (``SimHost.plug``, as Nova and os-vif do: ``plug_s``, about 70 ms a VF), then the
agent started and left to converge (``first_sync_s``). The host has *settled* when for a second
(``SETTLE_ROUNDS`` samples ``SETTLE_SAMPLE_S`` apart) the agent, the simulated NIC and ovs-vswitchd each
used under ``IDLE_CPU`` of a core and the OVS flow count did not move: a pass keeps the agent busy, or the
NIC while the agent waits for its acknowledgements (the NIC's half is the last step of a pass), and a
refused rule starts another pass at once.

Measured writes, ``changes`` of each kind, one at a time, each after the host settled; the clock starts
when the write (``NbApi.apply``) returns and stops when *everything below is present*, looked at every
``POLL_S``: flows by the owner's cookie (the agent's OVS backend marks every flow with its owner), first
counted by the switch (an aggregate-stats request, cheap) and dumped when the count moved, over the bridge's
management socket; once OVS holds its part (the agent adds NIC rules after the flows behind them), the
rules of the representors named, dumped over the NIC's control socket (``TcClient.dump``, as the agent's tc
backend does). ``timeout_s`` without it is an error naming the write.

- ``local_port``: a port created (bound to the host) on the network of an existing local port
  (its *neighbour*), in the neighbour's security groups. Its VF was plugged, with the port's id as
  iface-id, before the write (untimed, and the host settled after it), so the figure is the agent's path
  from the database, not os-vif's. In place: on the NIC, at least one rule on the new port's representor
  and a rule on the neighbour's representor redirecting to it (mirred); in OVS, among the flows of owner
  ``port:<id>``, its classifier flow (``in_port`` = its OpenFlow port), its L2 lookup flow (``eth_dst`` =
  its MAC) and its output flow (output to its OpenFlow port).
- ``remote_port``: a port bound to another chassis, on a local port's network. In place: among the
  flows of owner ``port:<id>``, its L2 lookup flow (``eth_dst`` = its MAC) and its output flow (set
  ``tun_ipv4_dst`` to its chassis's tunnel address, then output). No NIC rule: an encap rule needs the
  tunnel device behind the NIC's eswitch, and the simulated host's VXLAN port is Open vSwitch's own (the
  agent offloads VFs only).
- ``sg_rule``: an ingress TCP rule (a port of its own, 20000 + i) added to the security group of a local
  port. In place: a flow matching the rule's ``tcp_dst`` under every owner that holds the group's rules:
  the group (``security_group:<id>``) when a local member is in it alone (they share its flows), and each
  local member also in another group (``port:<id>``: it has flows of its own). No NIC rule: the group's
  rules come after conntrack, in chains the plan for this host leaves to software.
  ``nic_rules_per_<kind>`` (how much the NIC's rule count moved per write) says whether that still holds.

Results: ``write_to_nic_median_ms`` / ``write_to_nic_p99_ms`` over every measured write (the time both
datapaths hold what it should produce; p99 is the nearest rank: below 100 writes, the slowest),
``write_to_ovs_median_ms`` (OVS's part alone) and each kind's median (``<kind>_median_ms``).

``noop_pass_ms`` and ``resync_s``: the agent process is stopped (SIGTERM), then an agent is started as
``hwflow-agent`` starts it (``build_agent`` from the host's config, then ``start``) in the host's
namespace, its passes driven by the bench (``python -m hwflow.bench.converge agent-passes``) instead of its
wake-up loop: the daemon says nowhere when a pass ends. ``resync_s``: from that process's start to the end
of its first pass (``resync_pass_s``: that pass alone); ``resync_settled_s``: to the end of the passes that
follow it until one changes nothing (``resync_passes`` in all: the NIC refuses again what it refused
before the restart, and the agent re-plans). Then ``noop_pass_ms``: the median of ``Agent.reconcile()``
with nothing changed (max(3, changes) passes; one that changes something is an error).
``resync_nic_rules_removed``: rules the restarted agent took off the NIC on the way (put back or not);
``resync_nic_rules_lost``: rules held before the restart and not once it settled, compared as what they
match and do (a restarted agent gets new handles and numbers its chains afresh);
``resync_ovs_flows_lost``: the same for flows (0 for both: a restart reconciles, it never flushes).
``nic_rules``, ``ovs_flows``: what the host held before the restart.

Everything started is stopped by PID (the agent, the simulated NIC, Open vSwitch, the helper agent, the relay)
and every namespace removed, on failure, Ctrl-C and SIGTERM too; the temporary directory (config, logs,
database) is removed after a run that worked (unless ``keep`` is 1: the agent's log says what each pass
spent on each stage, at debug level: why) and named otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import json
import logging
import os
import secrets
import selectors
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hwflow.apps.base import mac_int
from hwflow.backends.ovs import translate
from hwflow.backends.ovs.openflow import OpenFlowConnection
from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.transport import SimSocketTransport, TcClient
from hwflow.bench import Progress, median_ms, mesh, p99_ms
from hwflow.bench.compile import _mac, _subnet, build
from hwflow.bench.partition import PORTS_PER_GROUP, PORTS_PER_NETWORK, PORTS_PER_ROUTER, REMOTE_CHASSIS
from hwflow.bench.workdir import run_in_workdir
from hwflow.db.api import Create, NbApi
from hwflow.model.objects import Chassis, NbObject, Network, Port, SecurityGroupRule
from hwflow.sim.host import BRIDGE, SimHost, stop_process

DEFAULTS: dict[str, Any] = {"local_ports": 200, "remote_ports": 10_000, "changes": 5, "url": "",
                            "profile": "mlx5-connectx6dx", "timeout_s": 300.0, "keep": 0,
                            "hosts": 1, "mesh_ports": 300, "database": "etcd"}  # the last three: see mesh
KINDS = ("local_port", "remote_port", "sg_rule")
POLL_S = 0.002  # between two looks at the datapaths while a write is on its way
SETTLE_SAMPLE_S = 0.25
SETTLE_ROUNDS = 4  # idle samples in a row: the host has settled
IDLE_CPU = 0.2  # share of a core the agent (its database watch polls), the NIC and vswitchd each stay under, idle
MAX_CHANGES = 50  # the measured ports take host addresses .100+i and .200+i of a /24
SG_RULE_PORT = 20_000
NEW_MAC = 2**22  # the measured ports' MACs: above every topology port's (compile.build: _mac(i), i < 2**22)
PROGRESS_EVERY = 50  # plugged VFs between two progress lines
FULL_MASK = 2**64 - 1


class ConvergeError(RuntimeError):
    """A write did not reach the datapaths in time, or the host could not be set up; the message says which."""


# --- the topology --------------------------------------------------------------------------------------


@dataclasses.dataclass
class Write:
    """One measured write: what to write (and plug first), and what must be present once it has landed."""

    kind: str
    obj: NbObject
    neighbour: Port | None = None  # local_port: the existing local port of its network
    tunnel_ip: str = ""  # remote_port: its chassis's tunnel address
    owners: list[str] = dataclasses.field(default_factory=list)  # sg_rule: the flow owners holding its group's rules

    def label(self) -> str:
        return f"{self.kind} {self.obj.id}"


@dataclasses.dataclass
class Scenario:
    objects: list[NbObject]  # in batch order: nothing references what comes after it
    local: list[Port]
    writes: dict[str, list[Write]]


def scenario(local_ports: int, remote_ports: int, chassis: str, changes: int) -> Scenario:
    """The host of the module docstring, ``chassis`` holding its local ports, and the writes to measure."""
    total = local_ports + remote_ports
    scale = {"ports": total, "networks": max(1, total // PORTS_PER_NETWORK),
             "routers": max(1, total // PORTS_PER_ROUTER), "groups": max(1, total // PORTS_PER_GROUP)}
    nets, ports, others = build(scale)
    remotes = [Chassis(id=f"c{i}", name=f"c{i}", tunnel_ip=f"192.0.2.{i + 1}", tunnel_types=["vxlan"])
               for i in range(REMOTE_CHASSIS)]
    # Port i is on network i % networks: the first ports are local, one a network (while there are more
    # networks than local ports), and their networks reach a router each (there are fewer routers than
    # local ports at the default sizes), so the agent holds every network behind those routers, and with
    # them every remote port.
    local_ids = {f"p{i}" for i in range(local_ports)}
    for i, pid in enumerate(ports):
        where = chassis if pid in local_ids else remotes[i % REMOTE_CHASSIS].id
        ports[pid] = dataclasses.replace(ports[pid], chassis=where, unique_key=0)
    local = [ports[pid] for pid in ports if pid in local_ids]
    objects: list[NbObject] = [*remotes, *nets.values()]
    for kind in ("subnet", "router", "router_port", "security_group", "security_group_rule"):
        objects += others[kind].values()
    objects += ports.values()
    # A network's prefix: its subnet's (compile.build gives network nI the subnet sI).
    prefix = {f"n{i}": _subnet(i) for i in range(len(nets))}
    writes: dict[str, list[Write]] = {kind: [] for kind in KINDS}
    for i in range(changes):
        neighbour = local[i % len(local)]
        port = Port(id=f"cv-local-{i}", name=f"cv-local-{i}", network_id=neighbour.network_id, mac=_mac(NEW_MAC + i),
                    ips=[f"{prefix[neighbour.network_id]}.{200 + i}"], chassis=chassis,
                    security_groups=list(neighbour.security_groups))
        writes["local_port"].append(Write("local_port", port, neighbour=neighbour))
        near = local[(i + len(local) // 2) % len(local)]
        remote = remotes[i % REMOTE_CHASSIS]
        port = Port(id=f"cv-remote-{i}", name=f"cv-remote-{i}", network_id=near.network_id,
                    mac=_mac(NEW_MAC + MAX_CHANGES + i), ips=[f"{prefix[near.network_id]}.{100 + i}"],
                    chassis=remote.id, security_groups=list(near.security_groups))
        writes["remote_port"].append(Write("remote_port", port, tunnel_ip=remote.tunnel_ip))
    # The rule flows of a group are its own (owner security_group:ID) for the local members in it alone,
    # and each local member also in another group holds them itself (owner port:ID): the measured local
    # ports are written before the rules.
    members = local + [w.obj for w in writes["local_port"] if isinstance(w.obj, Port)]
    groups = list(dict.fromkeys(p.security_groups[0] for p in local))
    for i in range(changes):
        group = groups[i % len(groups)]
        owners = [f"port:{p.id}" for p in members if group in p.security_groups and len(p.security_groups) > 1]
        if any(p.security_groups == [group] for p in members):
            owners.append(f"security_group:{group}")
        rule = SecurityGroupRule(id=f"cv-rule-{i}", name=f"cv-rule-{i}", security_group_id=group,
                                 direction="ingress", protocol="tcp", port_min=SG_RULE_PORT + i,
                                 port_max=SG_RULE_PORT + i)
        writes["sg_rule"].append(Write("sg_rule", rule, owners=owners))
    return Scenario(objects, local, writes)


# --- what the datapaths hold ----------------------------------------------------------------------------


class Datapaths:
    """The host's NIC (its control socket) and OVS (the bridge's management socket), as the bench reads them."""

    def __init__(self, host: SimHost) -> None:
        self.host = host
        self.tc = TcClient(SimSocketTransport(host.nic_socket))
        self.of = OpenFlowConnection(host.ovs.mgmt(BRIDGE))

    def close(self) -> None:
        self.tc.close()
        self.of.close()

    def rules(self, ifindex: int) -> list[fl.FlowerRule]:
        return [rule for rule, _ in self.tc.dump(ifindex)]

    def all_rules(self) -> set[fl.FlowerRule]:
        """Every rule on every representor, with its handle (a rule flushed and added again is another)."""
        return {rule for port in self.host.nic_ports for rule in self.rules(port["representor_ifindex"])}

    def owner_flows(self, owner: str) -> list[tuple[dict[str, int], list[tuple]]]:
        """The flows of one owner: each as its match (field -> value) and its actions (apply-actions keys)."""
        out = []
        for stats in self.of.dump_flows(translate.owner_cookie(owner), FULL_MASK):
            match = {field: value for field, value, _ in translate.flow_key(stats.table_id, stats.priority,
                                                                             stats.match)[2]}
            actions = [a for kind, *rest in translate.instructions_key(stats.instructions) if kind == "apply"
                       for a in rest[0]]
            out.append((match, actions))
        return out

    def flow_count(self, owner: str | None = None) -> int:
        """The flows hwflow installed (or one owner's), counted by the switch: no dump."""
        if owner is None:
            return self.of.flow_count(translate.COOKIE_MARK, translate.COOKIE_MARK_MASK)
        return self.of.flow_count(translate.owner_cookie(owner), FULL_MASK)

    def all_flows(self) -> set[tuple]:
        return {(s.table_id, s.priority, translate.match_key(s.match), translate.instructions_key(s.instructions),
                 s.cookie) for s in self.of.dump_flows(translate.COOKIE_MARK, translate.COOKIE_MARK_MASK)}



def _ipv4_int(address: str) -> int:
    a, b, c, d = (int(x) for x in address.split("."))
    return a << 24 | b << 16 | c << 8 | d


class Expectation:
    """What a write must have put in place: a check of OVS and one of the NIC (None: nothing to see there).

    ``ovs`` looks at the flows of ``owners`` only when the switch's count of them moved (a count costs
    the switch and the bench far less than a dump, and the bench must not slow down what it measures).
    """

    def __init__(self, paths: Datapaths, owners: list[str], ovs: Callable[[], bool],
                 nic: Callable[[], bool] | None) -> None:
        self._paths, self._owners, self._ovs, self.nic = paths, owners, ovs, nic
        self._counts: list[int] | None = None

    def ovs(self) -> bool:
        counts = [self._paths.flow_count(owner) for owner in self._owners]
        if counts == self._counts:
            return False
        self._counts = counts
        return self._ovs()


def expectation(write: Write, paths: Datapaths, host: SimHost) -> Expectation:
    if write.kind == "local_port":
        port = write.obj
        assert isinstance(port, Port) and write.neighbour is not None
        vm = next(vm for vm in host.vms.values() if vm.port_id == port.id)
        ofport = host.ovsdb.ofport(vm.representor)
        rep = _representor_ifindex(host, port.id)
        neighbour = _representor_ifindex(host, write.neighbour.id)
        mac = mac_int(port.mac)

        def ovs() -> bool:
            flows = paths.owner_flows(f"port:{port.id}")
            return (any(m.get("in_port") == ofport for m, _ in flows)
                    and any(m.get("eth_dst") == mac for m, _ in flows)
                    and any(("output", ofport) in a for _, a in flows))

        def nic() -> bool:  # the new representor first: dumping it is cheap while it holds nothing
            return bool(paths.rules(rep)) and any(
                isinstance(a, fl.Mirred) and a.ifindex == rep for r in paths.rules(neighbour) for a in r.actions)

        return Expectation(paths, [f"port:{port.id}"], ovs, nic)
    if write.kind == "remote_port":
        port = write.obj
        assert isinstance(port, Port)
        mac, tunnel = mac_int(port.mac), _ipv4_int(write.tunnel_ip)

        def remote_ovs() -> bool:
            flows = paths.owner_flows(f"port:{port.id}")
            return (any(m.get("eth_dst") == mac for m, _ in flows)
                    and any(("set_field", "tun_ipv4_dst", tunnel) in a and any(x[0] == "output" for x in a)
                            for _, a in flows))

        return Expectation(paths, [f"port:{port.id}"], remote_ovs, None)
    rule = write.obj
    assert isinstance(rule, SecurityGroupRule)

    def sg_ovs() -> bool:
        return all(any(m.get("tcp_dst") == rule.port_min for m, _ in paths.owner_flows(owner))
                   for owner in write.owners)

    return Expectation(paths, write.owners, sg_ovs, None)


def _representor_ifindex(host: SimHost, port_id: str) -> int:
    vm = next(vm for vm in host.vms.values() if vm.port_id == port_id)
    return next(p["representor_ifindex"] for p in host.nic_ports if p["vf"] == vm.vf)


def wait_in_place(write: Write, expect: Expectation, start: float, timeout: float,
                  agent_alive: Callable[[], bool]) -> tuple[float, float]:
    """Poll until both datapaths hold what ``write`` should produce; (seconds to OVS, seconds to both)."""
    ovs_at = nic_at = None
    if expect.nic is None:
        nic_at = 0.0
    while True:
        if ovs_at is None and expect.ovs():
            ovs_at = time.perf_counter() - start
        # The NIC is looked at once OVS holds its part: the agent adds NIC rules after the flows behind
        # them (make-before-break), and the later of the two times is the same either way.
        if ovs_at is not None and nic_at is None and expect.nic is not None and expect.nic():
            nic_at = time.perf_counter() - start
        if ovs_at is not None and nic_at is not None:
            return ovs_at, max(ovs_at, nic_at)
        elapsed = time.perf_counter() - start
        if elapsed > timeout or not agent_alive():
            missing = " and ".join(what for what, at in (("the OVS flows", ovs_at), ("the NIC rules", nic_at))
                                   if at is None)
            why = "the agent exited" if not agent_alive() else f"not there after {timeout:g}s"
            raise ConvergeError(f"{write.label()}: {missing} it should produce: {why}")
        time.sleep(POLL_S)


# --- the agent ------------------------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    """CPU time (user + system, every thread) a process has used."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _busy_processes(host: SimHost) -> dict[str, int]:
    """The host's processes a pass keeps busy: the agent, the simulated NIC (installing what the agent sent,
    while the agent waits for the acknowledgements) and ovs-vswitchd."""
    pid = host.agent_pid
    if pid is None:
        raise ConvergeError(f"the agent exited; see {host.agent_log}")
    pids = {"hwflow-agent": pid}
    with contextlib.suppress(OSError, ValueError, KeyError):
        pids["hwflow-simnic"] = int(json.loads(Path(host.nic_socket + ".json").read_text())["pid"])
    with contextlib.suppress(OSError, ValueError):
        pids["ovs-vswitchd"] = int((host.ovs.rundir / "vswitchd.pid").read_text().strip())
    return pids


def settle(host: SimHost, paths: Datapaths, timeout: float, what: str, flows: bool = False) -> None:
    """Wait until the agent, the NIC and OVS are idle and the OVS flow count stays put (see the docstring);
    with ``flows``, until OVS also holds some of hwflow's flows (an agent that cannot reach its database idles
    with none)."""
    deadline = time.monotonic() + timeout
    calm, last = 0, None
    while calm < SETTLE_ROUNDS:
        try:
            pids = _busy_processes(host)
            cpu = {name: _cpu_seconds(pid) for name, pid in pids.items()}
            time.sleep(SETTLE_SAMPLE_S)
            busy = {name: (_cpu_seconds(pid) - cpu[name]) / SETTLE_SAMPLE_S for name, pid in pids.items()}
        except (ConvergeError, OSError) as exc:  # OSError: a process went between two samples
            raise ConvergeError(f"{what}: {exc if isinstance(exc, ConvergeError) else 'a host process exited'}; "
                                f"see {host.workdir}") from None
        count = paths.flow_count()
        calm = calm + 1 if max(busy.values()) < IDLE_CPU and count == last and (count or not flows) else 0
        last = count
        if time.monotonic() > deadline:
            load = ", ".join(f"{name} {share:.0%}" for name, share in busy.items())
            raise ConvergeError(f"{what}: the host did not settle in {timeout:g}s (last sample: {load} of a core, "
                                f"{count} OVS flows); see {host.agent_log}")


@dataclasses.dataclass
class Restart:
    resync_s: float
    pass_s: float
    settled_s: float
    noop_ms: list[float]
    passes: list[dict]  # the PassResult of each pass until one changed nothing


def restart(host: SimHost, passes: int, timeout: float, progress: Progress) -> Restart:
    """Stop the agent process; start one as hwflow-agent does, its passes driven here (see the docstring)."""
    host.stop_agent()
    log = host.workdir / "agent-passes.log"
    argv = ["ip", "netns", "exec", host.ns, sys.executable, "-m", "hwflow.bench.converge", "agent-passes",
            "--config-file", str(host.agent_config), "--log-file", str(log), "--passes", str(passes)]
    start = time.perf_counter()
    with open(host.workdir / "agent-passes.out", "wb") as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL, text=True,
                                start_new_session=True)
    try:
        events: dict[str, tuple[float, dict]] = {}
        timer = threading.Timer(timeout, proc.kill)  # a hung helper must not hang the bench
        timer.start()
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                event = json.loads(line)
                events[event["event"]] = (time.perf_counter() - start, event)
                if event["event"] == "first_pass":
                    progress(f"restarted: first pass done {events['first_pass'][0]:.2f}s after the start")
        finally:
            timer.cancel()
        proc.wait(30)
        if proc.returncode or "noop" not in events:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise ConvergeError(f"the restarted agent failed (exit {proc.returncode}; see {log}): "
                                f"{(host.workdir / 'agent-passes.out').read_text(errors='replace')[-2000:]}{tail}")
    finally:
        stop_process(proc)
    first_at, first = events["first_pass"]
    settled_at, settled = events["settled"]
    return Restart(first_at, first["pass_s"], settled_at, events["noop"][1]["ms"], settled["passes"])


def _changed(result: dict) -> int:
    return sum(int(result.get(key, 0)) for key in ("ovs_changes", "hw_removed", "hw_installed"))


def agent_passes(config: str, log_file: str, passes: int) -> int:
    """In the host's namespace: an agent built and started as hwflow-agent's main does, its passes timed.

    Prints one JSON line per event: ``first_pass`` (its duration and PassResult), ``settled`` (once a pass
    changed nothing: the follow-ups a refused rule causes are over), ``noop`` (the duration of each of
    ``passes`` more passes, in ms).
    """
    from hwflow import conf as hwconf
    from hwflow.agent.daemon import build_agent

    conf = hwconf.new_conf(["--config-file", config])
    logging.basicConfig(level=logging.INFO, filename=log_file, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    def emit(event: str, **fields: Any) -> None:
        print(json.dumps({"event": event, **fields}), flush=True)

    def timed() -> tuple[float, dict]:
        begin = time.perf_counter()
        result = agent.reconcile()
        seconds = time.perf_counter() - begin
        return seconds, dataclasses.asdict(result) if dataclasses.is_dataclass(result) else {}

    stop = threading.Event()
    agent = build_agent(conf)
    if not agent.start(stop):
        return 1
    try:
        seconds, result = timed()
        emit("first_pass", pass_s=seconds, result=result)
        results = [result]
        for _ in range(10):  # each refusal re-plans; a NIC refusing the same rules again ends it soon
            if not _changed(result):
                break
            seconds, result = timed()
            results.append(result)
        else:
            raise ConvergeError(f"the restarted agent still changes the datapaths after 10 passes: {result}")
        emit("settled", passes=results)
        noop = []
        for _ in range(passes):
            seconds, result = timed()
            if _changed(result):
                raise ConvergeError(f"a pass with nothing to do changed the datapaths: {result}")
            noop.append(seconds * 1000)
        emit("noop", ms=noop)
    finally:
        agent.shutdown()
    return 0


# --- the run --------------------------------------------------------------------------------------------


def _database(url: str, workdir: Path) -> str:
    if not url:
        return f"sqlite:///{workdir}/nb.sqlite"
    if url.startswith("etcd://") and "/" not in url[len("etcd://"):]:
        return f"{url}/hwflow-converge-{secrets.token_hex(4)}"
    return url


def rule_content(rules: set[fl.FlowerRule]) -> set[fl.FlowerRule]:
    """Rules as what they match and do, whatever handle the NIC gave them and number the agent gave their chains
    (a restarted agent numbers its chains afresh)."""
    return {dataclasses.replace(rule, handle=0, chain=0, actions=tuple(
        dataclasses.replace(a, chain=0) if isinstance(a, fl.Gact) else a for a in rule.actions)) for rule in rules}




def run(params: dict, progress: Progress) -> dict[str, float]:
    if os.geteuid() != 0:
        raise RuntimeError("converge starts Open vSwitch, a simulated NIC and the agent in network namespaces: "
                           "run it as root")
    if params["hosts"] > 1:  # many hosts on one database: hwflow.bench.mesh
        return mesh.run(params, progress)
    local_ports, remote_ports, changes = params["local_ports"], params["remote_ports"], params["changes"]
    if local_ports < 2 or remote_ports < 1 or not 1 <= changes <= MAX_CHANGES:
        raise ValueError(f"converge needs local_ports >= 2, remote_ports >= 1 and 1 <= changes <= {MAX_CHANGES}")
    return run_in_workdir("hwcv-", params["keep"], progress, lambda workdir: _run(params, workdir, progress))


def _run(params: dict, workdir: Path, progress: Progress) -> dict[str, float]:
    local_ports, remote_ports, changes = params["local_ports"], params["remote_ports"], params["changes"]
    timeout = params["timeout_s"]
    url = _database(params["url"], workdir)
    name = f"cv{secrets.token_hex(3)}"
    topo = scenario(local_ports, remote_ports, name, changes)
    results: dict[str, float] = {}
    start = time.perf_counter()
    with NbApi.from_url(url) as nb:
        if nb.list(Network):
            raise ConvergeError(f"the database at {url} is not empty: give converge an empty one")
        progress(f"writing {len(topo.objects)} objects ({local_ports} local and {remote_ports} remote ports) "
                 f"to {url} in one batch")
        nb.create_many(topo.objects)
        results["db_s"] = round(time.perf_counter() - start, 3)
        host = SimHost(name, workdir, url, num_vfs=local_ports + changes, profile=params["profile"],
                       agent_debug=bool(params["keep"]))
        paths = relay_proc = None
        try:
            progress(f"starting host {name} (OVS, simulated {params['profile']} NIC with {host.num_vfs} VFs)")
            host.start(agent=False)
            relay_proc = _relay(url, host, workdir, progress)
            plug_start = time.perf_counter()
            for i, port in enumerate(topo.local):
                host.plug(port, f"{host.ns}-{i}")
                if (i + 1) % PROGRESS_EVERY == 0 and i + 1 < len(topo.local):
                    progress(f"plugged {i + 1} of {len(topo.local)} VFs ({time.perf_counter() - plug_start:.1f}s)")
            results["plug_s"] = round(time.perf_counter() - plug_start, 3)
            progress(f"plugged {len(topo.local)} VFs in {results['plug_s']:.1f}s; starting the agent")
            paths = Datapaths(host)
            sync_start = time.perf_counter()
            host.start_agent()
            settle(host, paths, timeout, "the first sync", flows=True)
            now = time.perf_counter()
            results["first_sync_s"] = round(now - sync_start, 3)
            results["setup_s"] = round(now - start, 3)
            rules = len(paths.all_rules())
            progress(f"agent settled {results['first_sync_s']:.1f}s after its start: {rules} NIC rules, "
                     f"{paths.flow_count()} OVS flows (setup {results['setup_s']:.1f}s)")
            to_ovs: list[float] = []
            to_both: dict[str, list[float]] = {kind: [] for kind in KINDS}
            for kind in KINDS:
                for write in topo.writes[kind]:
                    if kind == "local_port":
                        assert isinstance(write.obj, Port)
                        host.plug(write.obj, f"{host.ns}-{write.obj.id.rsplit('-', 1)[1]}n")
                        settle(host, paths, timeout, f"{write.label()}: plugging its VF")
                    expect = expectation(write, paths, host)
                    nb.apply([Create(write.obj)])
                    begin = time.perf_counter()
                    ovs_s, both_s = wait_in_place(write, expect, begin, timeout, lambda: host.agent_pid is not None)
                    to_ovs.append(ovs_s)
                    to_both[kind].append(both_s)
                    progress(f"{write.label()}: OVS {ovs_s * 1000:.1f} ms, both {both_s * 1000:.1f} ms")
                    settle(host, paths, timeout, f"after {write.label()}")
                after = len(paths.all_rules())
                results[f"nic_rules_per_{kind}"] = round((after - rules) / changes, 2)
                rules = after
            every = [s for kind in KINDS for s in to_both[kind]]
            results["write_to_nic_median_ms"] = median_ms(every)
            results["write_to_nic_p99_ms"] = p99_ms(every)
            results["write_to_ovs_median_ms"] = median_ms(to_ovs)
            for kind in KINDS:
                results[f"{kind}_median_ms"] = median_ms(to_both[kind])
            held_rules, held_flows = paths.all_rules(), paths.all_flows()
            results["nic_rules"], results["ovs_flows"] = len(held_rules), len(held_flows)
            passes = max(3, changes)
            progress(f"restarting the agent ({len(held_rules)} NIC rules, {len(held_flows)} OVS flows), then "
                     f"{passes} passes with nothing to do")
            again = restart(host, passes, timeout, progress)
            results["resync_s"] = round(again.resync_s, 3)
            results["resync_pass_s"] = round(again.pass_s, 3)
            results["resync_settled_s"] = round(again.settled_s, 3)
            results["noop_pass_ms"] = round(statistics.median(again.noop_ms), 2)
            results["resync_passes"] = len(again.passes)
            results["resync_nic_rules_removed"] = sum(int(p.get("hw_removed", 0)) for p in again.passes)
            results["resync_nic_rules_lost"] = len(rule_content(held_rules) - rule_content(paths.all_rules()))
            results["resync_ovs_flows_lost"] = len(held_flows - paths.all_flows())
        finally:
            if paths is not None:
                paths.close()
            host.stop()
            stop_process(relay_proc)
    return results


# --- a database on the machine's loopback, seen from the host's namespace --------------------------------

LOOPBACK = ("127.0.0.1", "localhost")
CLONE_NEWNET = 0x40000000


def _loopback_ports(url: str) -> list[int]:
    """The ports of an etcd URL's endpoints on the machine's loopback (which a namespace has its own of)."""
    if not url.startswith("etcd://"):
        return []
    hosts = url[len("etcd://"):].partition("/")[0]
    return sorted({int(port) for host, _, port in (h.rpartition(":") for h in hosts.split(","))
                   if host in LOOPBACK and port.isdigit()})


def _relay(url: str, host: SimHost, workdir: Path, progress: Progress) -> subprocess.Popen | None:
    """A relay (``python -m hwflow.bench.converge relay``) from 127.0.0.1:PORT in the host's namespace to the
    machine's, for each endpoint of ``url`` on the loopback: the agent there reaches the database the bench
    writes to by the same URL. None when the database is a file or elsewhere."""
    ports = _loopback_ports(url)
    if not ports:
        return None
    progress(f"relaying 127.0.0.1 port(s) {', '.join(map(str, ports))} into namespace {host.ns} for the agent")
    with open(workdir / "relay.out", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "hwflow.bench.converge", "relay", "--netns", host.ns,
                                 *(f"--port={p}" for p in ports)], stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        stop_process(proc)
        raise ConvergeError(f"the loopback relay did not start: {(workdir / 'relay.out').read_text()[-2000:]}")
    return proc


def _listen_in_netns(netns: str, ports: list[int]) -> list[tuple[int, socket.socket]]:
    """Listening sockets on 127.0.0.1 of a named network namespace, made by a thread that joins it (a thread's
    namespace is its own; a socket stays in the one it was made in)."""
    made: list[tuple[int, socket.socket]] = []
    failed: list[BaseException] = []

    def make() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            with open(f"/var/run/netns/{netns}", "rb") as ns:
                if libc.setns(ns.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns to {netns}: {os.strerror(ctypes.get_errno())}")
            made.extend((port, socket.create_server(("127.0.0.1", port))) for port in ports)
        except BaseException as exc:  # handed to the caller
            failed.append(exc)

    worker = threading.Thread(target=make)
    worker.start()
    worker.join()
    if failed:
        raise failed[0]
    return made


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(65536):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _splice(inside: socket.socket, port: int) -> None:
    try:
        outside = socket.create_connection(("127.0.0.1", port), timeout=10)
        outside.settimeout(None)
    except OSError:
        inside.close()
        return
    pumps = [threading.Thread(target=_pump, args=pair, daemon=True) for pair in ((inside, outside), (outside, inside))]
    for pump in pumps:
        pump.start()
    for pump in pumps:
        pump.join()
    inside.close()
    outside.close()


def relay(netns: str, ports: list[int]) -> int:
    """Until SIGTERM: each connection to 127.0.0.1:PORT in ``netns`` joined to 127.0.0.1:PORT here."""
    listeners = _listen_in_netns(netns, ports)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    selector = selectors.DefaultSelector()
    for port, listener in listeners:
        selector.register(listener, selectors.EVENT_READ, port)
    print("ready", flush=True)
    while not stop.is_set():
        for key, _ in selector.select(0.2):
            assert isinstance(key.fileobj, socket.socket)
            conn, _ = key.fileobj.accept()
            threading.Thread(target=_splice, args=(conn, key.data), daemon=True).start()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m hwflow.bench.converge agent-passes|relay``: the bench's helpers (:func:`agent_passes`,
    :func:`relay`)."""
    parser = argparse.ArgumentParser(prog="python -m hwflow.bench.converge")
    sub = parser.add_subparsers(dest="command", required=True)
    helper = sub.add_parser("agent-passes", help="start an agent as hwflow-agent does and time its passes")
    helper.add_argument("--config-file", required=True)
    helper.add_argument("--log-file", required=True)
    helper.add_argument("--passes", type=int, default=5)
    loop = sub.add_parser("relay", help="join 127.0.0.1 ports of a network namespace to the machine's")
    loop.add_argument("--netns", required=True)
    loop.add_argument("--port", type=int, action="append", required=True)
    args = parser.parse_args(argv)
    if args.command == "relay":
        return relay(args.netns, args.port)
    return agent_passes(args.config_file, args.log_file, args.passes)


if __name__ == "__main__":
    sys.exit(main())
