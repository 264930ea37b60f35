"""An agent under a churn of port creates, moves and deletes: memory, rules and flows back to their baseline.

One simulated host (:class:`hwflow.sim.host.SimHost`: userspace Open vSwitch, a simulated ``profile`` NIC with
``vfs`` VFs, ``hwflow-agent`` as a process serving its metrics) on a SQLite database, with two fixed VMs on one
network (vm1, vm2: the NIC's rules carry their traffic) exchanging a UDP stream with sequence numbers
(:mod:`hwflow.sim.stream`, ``rate`` datagrams a second each way) for the whole run. Two other chassis
(``PEERS``, liveness kept by the bench) stand for the rest of the cloud.

The churn: ``ops_per_s`` operations a second, at a steady rate, drawn by ``random.Random(seed)`` from
``create_local`` (a port bound here, its VF handed to a new VM namespace, as Nova and os-vif do),
``create_remote`` (a port bound to a peer), ``move`` (a local port to a peer, its VM unplugged; a remote
one here, plugged, or to the other peer), ``sg_rule`` (a rule added to or removed from the security group
half the churned ports are in) and ``delete`` (a churned port, unplugged if here), on the fixed VMs' network,
at most ``max_ports`` churned ports at once.

Phases: the baseline (the fixed VMs programmed, the datapaths' rules and flows read); ``warmup_s`` of churn,
then back to the baseline topology (every churned port deleted, every added rule removed) and the agent's
RSS, open file descriptors and threads read (the memory baseline: what a first churn allocates for good,
caches and the allocator's arenas, is not a leak); ``minutes`` of churn with the RSS sampled every
``sample_s``; back to the baseline again and everything read again. Back to the baseline means: the NIC's
rule count and OVS's flow count equal the baseline's, twice in a row a second apart (``timeout_s`` without
it: the figures say by how much they differ).

Results (the functional test tests/functional/test_soak.py asserts them):

- ``ops``, ``ops_<kind>``: operations made (warm-up and churn); ``ports_created``: churned ports in all;
- ``nic_rules_max``, ``ovs_flows_max``: the most the datapaths held at a sample (what the churn added);
- ``nic_rules_baseline`` / ``nic_rules_end``, ``ovs_flows_baseline`` / ``ovs_flows_end``: counts;
  ``nic_rules_changed`` / ``ovs_flows_changed``: rules and flows of the end not in the baseline or the other
  way round, compared by what they match and do (a rule's handle and chain number aside);
- ``leftover_nic_rules`` / ``leftover_ovs_flows``: rules and flows of a churned port at the end: a NIC rule
  on or redirecting to a representor a churned VM had, or matching a churned MAC; an OVS flow of a churned
  port's owner cookie, matching a churned MAC, or taking in from or sending to an OpenFlow port a churned VM
  had (and no baseline VM has);
- ``back_to_baseline_s``: from the last delete to the counts back;
- ``rss_warm_mb``, ``rss_end_mb``, ``rss_growth_mb`` (end minus warm), ``rss_max_mb`` (while churning),
  ``rss_slope_mb_per_h`` (a least-squares line through the churn's samples); ``rss_start_mb`` before the
  warm-up;
- ``fds_warm`` / ``fds_end``, ``threads_warm`` / ``threads_end``: the agent's, at the two baselines (the fewest
  descriptors seen over ``SETTLE_FDS_S``: a pass in flight holds a child's pipes for a moment; extra ones at the end
  are named in the progress);
- ``python_objects_warm`` / ``python_objects_end``, ``python_objects_growth`` (end minus warm): the objects the
  agent's Python holds at the two baselines (its ``hwflow_agent_python_objects``): live state that grows shows
  here, where RSS also keeps what the allocator holds after a peak;
- ``stream_sent``, ``stream_lost``, ``stream_duplicates``: the fixed stream, both ways summed;
- ``full_passes``: the agent's full passes (its metrics); ``full_passes_timer``: those its start and its
  resync timer (``[agent] resync_interval``, as the agent reads it) account for over its uptime, plus one for a timer
  that fires while the metrics are read; ``repairs``: rules and flows a full pass found differing from what
  the agent held (tc's counter and OVS's warnings), ``failed_passes``: passes that raised (both are bugs).

Everything started is stopped by PID and every namespace removed, on failure and Ctrl-C too; the temporary
directory is removed after a run that worked unless ``keep`` is 1.
"""

from __future__ import annotations

import dataclasses
import random
import re
import secrets
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from hwflow.apps.base import mac_int
from hwflow.backends.ovs import translate
from hwflow.backends.tc import flower as fl
from hwflow.bench import Progress
from hwflow.bench.converge import Datapaths, rule_content, settle
from hwflow.bench.workdir import run_in_workdir
from hwflow.conf import new_conf
from hwflow.db.api import NbApi
from hwflow.model.errors import Conflict
from hwflow.model.objects import Chassis, Network, Port, SecurityGroup, SecurityGroupRule, Subnet
from hwflow.sim.host import SimHost, in_ns
from hwflow.sim.stream import Stream
from hwflow.util.netns import call_in

DEFAULTS: dict[str, Any] = {"minutes": 30.0, "warmup_s": 120.0, "ops_per_s": 2.0, "seed": 1,
                            "profile": "mlx5-connectx6dx", "vfs": 8, "max_ports": 12, "rate": 100,
                            "sample_s": 10.0, "timeout_s": 120.0, "keep": 0}
FIXED = (("vm1", "fa:16:3e:00:50:01", "10.0.0.1"), ("vm2", "fa:16:3e:00:50:02", "10.0.0.2"))
PEERS = (("soakpeer1", "192.0.2.1"), ("soakpeer2", "192.0.2.2"))
HEARTBEAT_TTL = 15.0
HEARTBEAT_EVERY = 3.0
METRICS_PORT = 9478  # in the host's namespace, on its loopback
OBJECTS = "hwflow_agent_python_objects"  # the agent's metric its census of live objects is read from
SETTLE_FDS_S = 5.0  # how long the fd count is watched for its low: a pass in flight holds a few for a moment
CHURN_IPS = range(10, 250)  # host parts of the churned ports' addresses in 10.0.0.0/24
KINDS = ("create_local", "create_remote", "move", "sg_rule", "delete")
WEIGHTS = {"create_local": 3, "create_remote": 2, "move": 3, "sg_rule": 2, "delete": 4}
MAX_SG_RULES = 6  # added rules at once
PROGRESS_EVERY = 60.0  # seconds between two progress lines


class SoakError(RuntimeError):
    """The soak could not run (a host step failed, the agent died); the message says which."""


# --- the agent process, from /proc -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Footprint:
    """What a leak shows in from outside the agent: memory, file descriptors (and what they point to), threads."""

    rss_mb: float
    threads: int
    fd_targets: tuple[str, ...]  # what each open descriptor points to (a socket, a pipe, a file's path)

    @property
    def fds(self) -> int:
        return len(self.fd_targets)


def footprint(pid: int | None) -> Footprint:
    """The agent's resident memory (VmRSS), open file descriptors and threads, now."""
    if pid is None:
        raise SoakError("the agent exited")
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    rss_kb = int(status["VmRSS"].split()[0])
    targets = []
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            targets.append(re.sub(r"\[\d+\]$", "", str(fd.readlink())))
        except FileNotFoundError:  # closed while listed
            continue
    return Footprint(round(rss_kb / 1024, 2), int(status["Threads"]), tuple(sorted(targets)))


def settled_footprint(pid: int | None, seconds: float = SETTLE_FDS_S) -> Footprint:
    """The footprint with the fewest descriptors over ``seconds``: a pass in flight holds a child's pipes or a
    dump's netlink socket for a moment, a leak holds its descriptor in every sample."""
    best = footprint(pid)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and best.fds:
        time.sleep(0.2)
        now = footprint(pid)
        if now.fds < best.fds:
            best = now
    return best


def fds_added(before: Footprint, after: Footprint) -> list[str]:
    """What the descriptors ``after`` holds beyond ``before``'s point to (a socket, a pipe, a file's path)."""
    return sorted((Counter(after.fd_targets) - Counter(before.fd_targets)).elements())


def agent_metrics(host: SimHost) -> dict[str, float]:
    """The agent's metrics as served (name with its labels -> value), read inside the host's namespace."""
    text = call_in(host.ns, lambda: requests.get(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=10).text)
    return {sample.name + "".join(f"{{{k}={v}}}" for k, v in sorted(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples}


# --- the churn ------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Churned:
    """A churned port as last written, and where its VM is."""

    port: Port
    vm: str | None = None  # its VM's namespace while it is bound here


class Churn:
    """The churned ports and security group rules, and the operations on them (see the module's docstring)."""

    def __init__(self, host: SimHost, nb: NbApi, network: str, group: str, seed: int, max_ports: int) -> None:
        self.host, self.nb, self.network, self.group = host, nb, network, group
        self.rng = random.Random(seed)
        self.max_ports = max_ports
        self.ports: dict[str, Churned] = {}
        self.rules: list[str] = []  # ids of the rules added to the group
        self.counts = dict.fromkeys(KINDS, 0)
        self.created = 0
        self.plugged = 0  # VMs plugged so far: each gets a namespace of its own
        self.macs: set[int] = set()
        self.ids: set[str] = set()
        self.ofports: set[int] = set()
        self.ifindexes: set[int] = set()

    def free_vf(self) -> bool:
        return len(self.host.vms) < self.host.num_vfs

    def step(self) -> None:
        """One operation, drawn among those possible now."""
        kinds = [k for k in KINDS if self._possible(k)]
        kind = self.rng.choices(kinds, [WEIGHTS[k] for k in kinds])[0]
        getattr(self, kind)()
        self.counts[kind] += 1

    def _possible(self, kind: str) -> bool:
        room = len(self.ports) < self.max_ports
        return {"create_local": room and self.free_vf(), "create_remote": room, "move": bool(self.ports),
                "sg_rule": True, "delete": bool(self.ports)}[kind]

    def create_local(self) -> None:
        self._plug(self._create(self.host.name))

    def create_remote(self) -> None:
        self._create(self.rng.choice(PEERS)[0])

    def move(self) -> None:
        churned = self.ports[self.rng.choice(sorted(self.ports))]
        if churned.vm is not None:
            self._unplug(churned)
            self._bind(churned, self.rng.choice(PEERS)[0])
        elif self.free_vf() and self.rng.random() < 0.5:
            self._bind(churned, self.host.name)
            self._plug(churned)
        else:
            self._bind(churned, next(name for name, _ in PEERS if name != churned.port.chassis))

    def sg_rule(self) -> None:
        if self.rules and (len(self.rules) >= MAX_SG_RULES or self.rng.random() < 0.5):
            self.nb.delete(SecurityGroupRule, self.rules.pop(self.rng.randrange(len(self.rules))))
            return
        low = self.rng.randrange(1024, 60000)
        rule = self.nb.create(SecurityGroupRule(security_group_id=self.group, direction="ingress", protocol="tcp",
                                                port_min=low, port_max=low + self.rng.randrange(100)))
        self.rules.append(rule.id)

    def delete(self) -> None:
        churned = self.ports.pop(self.rng.choice(sorted(self.ports)))
        if churned.vm is not None:
            self._unplug(churned)
        self.nb.delete(Port, churned.port.id)

    def back_to_baseline(self) -> None:
        """Every churned port deleted (its VM unplugged) and every added rule removed."""
        while self.ports:
            self.delete()
        while self.rules:
            self.nb.delete(SecurityGroupRule, self.rules.pop())

    def _create(self, chassis: str) -> Churned:
        self.created += 1
        used = {ip for c in self.ports.values() for ip in c.port.ips}
        ip = next(f"10.0.0.{i}" for i in self.rng.sample(CHURN_IPS, len(CHURN_IPS)) if f"10.0.0.{i}" not in used)
        mac = f"fa:16:3e:5a:{self.created >> 8 & 0xff:02x}:{self.created & 0xff:02x}"
        groups = [self.group] if self.rng.random() < 0.5 else []
        port = self.nb.create(Port(name=f"soak-{self.created}", network_id=self.network, mac=mac, ips=[ip],
                                   chassis=chassis, security_groups=groups))
        self.macs.add(mac_int(mac))
        self.ids.add(port.id)
        churned = self.ports[port.id] = Churned(port)
        return churned

    def _bind(self, churned: Churned, chassis: str) -> None:
        """The port's chassis changed (compare-and-swap on a fresh read: the agent writes ports' status too)."""
        for _ in range(5):
            current = self.nb.get(Port, churned.port.id)
            try:
                churned.port = self.nb.update(dataclasses.replace(current, chassis=chassis))
                return
            except Conflict:
                continue
        raise SoakError(f"port {churned.port.name}: 5 conflicts in a row moving it to {chassis}")

    def _plug(self, churned: Churned) -> None:
        self.plugged += 1
        churned.vm = f"{self.host.ns}-s{self.plugged}"
        vm = self.host.plug(churned.port, churned.vm)
        self.ofports.add(self.host.ovsdb.ofport(vm.representor) or 0)
        self.ifindexes.add(next(p["representor_ifindex"] for p in self.host.nic_ports if p["vf"] == vm.vf))

    def _unplug(self, churned: Churned) -> None:
        assert churned.vm is not None
        self.host.unplug(churned.vm)
        churned.vm = None


@contextmanager
def heartbeats(nb_url: str) -> Iterator[None]:
    """Keep the peers' liveness leases while the soak runs (their agents would): ports bound there tunnel."""
    stop = threading.Event()

    def beat() -> None:
        with NbApi.from_url(nb_url) as nb:
            while not stop.is_set():
                for name, _ in PEERS:
                    nb.heartbeat(name, HEARTBEAT_TTL)
                stop.wait(HEARTBEAT_EVERY)

    thread = threading.Thread(target=beat, name="soak-heartbeats", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


# --- what the datapaths hold ----------------------------------------------------------------------------------


@dataclasses.dataclass
class Contents:
    """What both datapaths hold, as compared with the baseline."""

    rules: set[fl.FlowerRule]
    flows: set[tuple]  # (table, priority, match key, instructions key, cookie)


def held(paths: Datapaths) -> Contents:
    """Both datapaths dumped now, to compare with the baseline's dump."""
    return Contents(paths.all_rules(), paths.all_flows())


def leftovers(now: Contents, churn: Churn, baseline_ofports: set[int]) -> tuple[int, int]:
    """NIC rules and OVS flows that belong to a churned port (see the module's docstring)."""
    def rule_left(rule: fl.FlowerRule) -> bool:
        return (rule.ifindex in churn.ifindexes or rule.keys.eth_src in churn.macs or rule.keys.eth_dst in churn.macs
                or any(isinstance(a, fl.Mirred) and a.ifindex in churn.ifindexes for a in rule.actions))

    cookies = {translate.owner_cookie(f"port:{pid}") for pid in churn.ids}
    ofports = churn.ofports - baseline_ofports - {0}

    def flow_left(flow: tuple) -> bool:
        _, _, match, instructions, cookie = flow
        fields = {field: value for field, value, _ in match}
        outputs = {a[1] for kind, *rest in instructions if kind == "apply" for a in rest[0] if a[0] == "output"}
        return (cookie in cookies or fields.get("eth_src") in churn.macs or fields.get("eth_dst") in churn.macs
                or fields.get("in_port") in ofports or bool(outputs & ofports))

    return sum(map(rule_left, now.rules)), sum(map(flow_left, now.flows))


def wait_counts(paths: Datapaths, rules: int, flows: int, timeout: float) -> float:
    """Seconds until the NIC holds ``rules`` rules and OVS ``flows`` flows, twice a second apart; -1 on timeout."""
    start = time.monotonic()
    streak = 0
    while streak < 2:
        if time.monotonic() - start > timeout:
            return -1.0
        now = held(paths)
        streak = streak + 1 if (len(now.rules), len(now.flows)) == (rules, flows) else 0
        time.sleep(1.0)
    return round(time.monotonic() - start - 1.0, 2)


# --- the run -----------------------------------------------------------------------------------------------------


def run(params: dict, progress: Progress) -> dict[str, float]:
    if params["vfs"] < len(FIXED) + 1 or params["max_ports"] < 1 or params["ops_per_s"] <= 0:
        raise ValueError("soak needs vfs >= 3, max_ports >= 1 and ops_per_s > 0")
    return run_in_workdir("hwsk-", params["keep"], progress, lambda workdir: _run(params, workdir, progress))


def _run(params: dict, workdir: Path, progress: Progress) -> dict[str, float]:
    url = f"sqlite:///{workdir}/nb.sqlite"
    host = SimHost(f"sk{secrets.token_hex(3)}", workdir / "host", url, num_vfs=params["vfs"],
                   profile=params["profile"], metrics_port=METRICS_PORT)
    stream: Stream | None = None
    paths: Datapaths | None = None
    with NbApi.from_url(url) as nb, heartbeats(url):
        try:
            network, group, fixed = _baseline_topology(nb, host.name)
            progress(f"starting host {host.name} ({params['profile']}, {params['vfs']} VFs) and the fixed VMs")
            host.start(agent=False)
            baseline_ofports = _plug_fixed(host, fixed)
            agent_started = time.monotonic()
            host.start_agent()
            paths = Datapaths(host)
            settle(host, paths, params["timeout_s"], "the baseline", flows=True)
            baseline = held(paths)
            start = footprint(host.agent_pid)
            progress(f"baseline: {len(baseline.rules)} NIC rules, {len(baseline.flows)} OVS flows; agent RSS "
                     f"{start.rss_mb} MB")
            stream = Stream("soak", workdir, *((fixed_ns(host, vm), ip) for vm, _, ip in FIXED),
                            rate=params["rate"]).start()
            churn = Churn(host, nb, network, group, params["seed"], params["max_ports"])
            _churn_for(churn, stream, params["warmup_s"], params["ops_per_s"], progress, "warm-up", paths)
            churn.back_to_baseline()
            warm_back = wait_counts(paths, len(baseline.rules), len(baseline.flows), params["timeout_s"])
            time.sleep(2.0)
            warm = settled_footprint(host.agent_pid)
            objects_warm = agent_metrics(host)[OBJECTS]
            progress(f"warmed up ({sum(churn.counts.values())} operations; counts back in {warm_back} s): agent "
                     f"RSS {warm.rss_mb} MB, {objects_warm:.0f} objects, {warm.fds} fds, {warm.threads} threads")
            samples = _churn_for(churn, stream, params["minutes"] * 60, params["ops_per_s"], progress, "churn",
                                 paths, params["sample_s"])
            churn.back_to_baseline()
            back = wait_counts(paths, len(baseline.rules), len(baseline.flows), params["timeout_s"])
            time.sleep(2.0)
            end = settled_footprint(host.agent_pid)
            if end.fds != warm.fds:
                progress(f"descriptors at the end beyond the warm baseline's: {fds_added(warm, end)}; "
                         f"fewer: {fds_added(end, warm)}")
            ways = stream.stop()
            stream = None
            metrics = agent_metrics(host)
            uptime = time.monotonic() - agent_started
            log = host.agent_log.read_text(errors="replace")
            results = _figures(churn, baseline, held(paths), baseline_ofports, (start, warm, end), samples)
            results.update({
                "back_to_baseline_s": back,
                "stream_sent": sum(w.sent for w in ways.values()),
                "stream_lost": sum(w.lost for w in ways.values()),
                "stream_duplicates": sum(w.duplicates for w in ways.values()),
                "full_passes": metrics["hwflow_agent_reconcile_passes_total{kind=full}"],
                "full_passes_timer": 2 + int(uptime // resync_interval(host)),
                "repairs": metrics["hwflow_agent_tc_repairs_total"] + log.count("OVS: the dump of"),
                "failed_passes": log.count("reconcile failed"),
                "python_objects_warm": objects_warm,
                "python_objects_end": metrics[OBJECTS],
                "python_objects_growth": metrics[OBJECTS] - objects_warm,
            })
            return results
        finally:
            if stream is not None:
                stream.kill()
            if paths is not None:
                paths.close()
            host.stop()


def resync_interval(host: SimHost) -> float:
    """The agent's repair timer, as the agent reads its configuration."""
    return float(new_conf(["--config-file", str(host.agent_config)]).agent.resync_interval)


def fixed_ns(host: SimHost, vm: str) -> str:
    return f"{host.ns}-{vm}"


def _baseline_topology(nb: NbApi, chassis: str) -> tuple[str, str, dict[str, Port]]:
    """The fixed VMs' network and ports, the churned ports' security group (one rule, kept), the peers."""
    for name, ip in PEERS:
        nb.create(Chassis(name=name, tunnel_ip=ip, up=True))
    net = nb.create(Network(name="soak-net", vni=4001))
    nb.create(Subnet(name="soak-sub", network_id=net.id, cidr="10.0.0.0/24", gateway_ip="10.0.0.254"))
    group = nb.create(SecurityGroup(name="soak-sg"))
    nb.create(SecurityGroupRule(security_group_id=group.id, direction="ingress", protocol="icmp"))
    fixed = {vm: nb.create(Port(name=vm, network_id=net.id, mac=mac, ips=[ip], chassis=chassis))
             for vm, mac, ip in FIXED}
    return net.id, group.id, fixed


def _plug_fixed(host: SimHost, fixed: dict[str, Port]) -> set[int]:
    """Plug the fixed VMs, give each its peer as a permanent neighbour (the stream measures the datapaths, not
    ARP); their OpenFlow ports."""
    ofports = set()
    for vm, port in fixed.items():
        plugged = host.plug(port, fixed_ns(host, vm))
        ofports.add(host.ovsdb.ofport(plugged.representor) or 0)
    for (vm, _, _), (_, peer_mac, peer_ip) in zip(FIXED, reversed(FIXED), strict=True):
        in_ns(fixed_ns(host, vm), "ip", "neigh", "replace", peer_ip, "lladdr", peer_mac, "dev", "eth0", "nud",
              "permanent")
    return ofports


@dataclasses.dataclass(frozen=True)
class Sample:
    at: float  # seconds since the churn began
    rss_mb: float
    nic_rules: int
    ovs_flows: int


def _churn_for(churn: Churn, stream: Stream, seconds: float, ops_per_s: float, progress: Progress, what: str,
               paths: Datapaths, sample_every: float = 0.0) -> list[Sample]:
    """Operations at ``ops_per_s`` for ``seconds`` (a slow operation delays the next, none is skipped); every
    ``sample_every`` seconds (0: never) the agent's RSS and the datapaths' counts sampled."""
    began = time.monotonic()
    samples: list[Sample] = []
    next_op = next_sample = next_note = began
    while (now := time.monotonic()) - began < seconds:
        if sample_every and now >= next_sample:
            samples.append(Sample(now - began, footprint(churn.host.agent_pid).rss_mb, len(paths.all_rules()),
                                  paths.flow_count()))
            next_sample += sample_every
        if now >= next_note:
            stream.status()  # raises if an end died
            progress(f"{what}: {now - began:.0f} of {seconds:.0f} s, {sum(churn.counts.values())} operations, "
                     f"{len(churn.ports)} churned ports, agent RSS {footprint(churn.host.agent_pid).rss_mb} MB")
            next_note += PROGRESS_EVERY
        if now >= next_op:
            churn.step()
            next_op = max(next_op + 1.0 / ops_per_s, time.monotonic() - 1.0 / ops_per_s)
        time.sleep(max(0.0, min(next_op, next_sample if sample_every else next_op) - time.monotonic()))
    return samples


def _figures(churn: Churn, baseline: Contents, now: Contents, baseline_ofports: set[int],
             procs: tuple[Footprint, Footprint, Footprint], samples: list[Sample]) -> dict[str, float]:
    start, warm, end = procs
    left_rules, left_flows = leftovers(now, churn, baseline_ofports)
    slope = statistics.linear_regression([s.at for s in samples], [s.rss_mb for s in samples]).slope \
        if len(samples) >= 2 else 0.0
    return {
        "ops": sum(churn.counts.values()), **{f"ops_{kind}": n for kind, n in churn.counts.items()},
        "ports_created": churn.created,
        "nic_rules_baseline": len(baseline.rules), "nic_rules_end": len(now.rules),
        "ovs_flows_baseline": len(baseline.flows), "ovs_flows_end": len(now.flows),
        "nic_rules_changed": len(rule_content(baseline.rules) ^ rule_content(now.rules)),
        "ovs_flows_changed": len(baseline.flows ^ now.flows),
        "leftover_nic_rules": left_rules, "leftover_ovs_flows": left_flows,
        "rss_start_mb": start.rss_mb, "rss_warm_mb": warm.rss_mb, "rss_end_mb": end.rss_mb,
        "rss_growth_mb": round(end.rss_mb - warm.rss_mb, 2),
        "rss_max_mb": max((s.rss_mb for s in samples), default=end.rss_mb),
        "nic_rules_max": max((s.nic_rules for s in samples), default=0),
        "ovs_flows_max": max((s.ovs_flows for s in samples), default=0),
        "rss_slope_mb_per_h": round(slope * 3600, 2),
        "fds_warm": warm.fds, "fds_end": end.fds, "threads_warm": warm.threads, "threads_end": end.threads,
    }
