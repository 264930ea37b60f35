"""Faults with traffic in flight (issue 16, part 1): a steady stream between VMs, counted, while things break.

Each test runs a UDP stream with sequence numbers (hwflow.sim.stream, ``RATE`` datagrams a
second each way) between two VMs on each of two paths:

- the NIC path: two VMs on one network of an mlx5-connectx6dx host, whose packets the NIC's rules forward
  (their counters are checked to move, and OVS's representor counters not to);
- the OVS path: two VMs on two subnets of a sim-basic host, routed by the distributed router; sim-basic
  cannot rewrite headers, so every packet goes through Open vSwitch (checked likewise).

The VMs' neighbours are permanent entries: what is measured is the datapaths, not ARP's timers. Every loss
figure counts the datagrams of an established stream that never arrived; duplicates are counted too. The
figures each test measured are printed as ``RELIABILITY {json}`` lines (``pytest -s``): doc/reliability.rst
records them. Faults: the agent SIGKILLed and restarted (``KILLS`` times), etcd away for ``ETCD_OUTAGE``
seconds (one member; in a three-member cluster, the one the agents talk to), ovs-vswitchd SIGKILLed and
restarted, the simulated NIC SIGKILLed and restarted, and refusals injected into the NIC
(``hwflow-simnic --refuse-rate``).
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from test_e2e import (
    Lab,
    agent_log,
    evidence,
    hw_packets,
    ifindex,
    nic_dump,
    nic_rules,
    ovs_flows,
    ovs_rx,
    redirects,
    representor,
    snapshot,
    vm_ns,
    wait_for,
)

from hwflow.backends.tc import flower as fl
from hwflow.db.api import NbApi
from hwflow.model.errors import DatabaseUnavailable
from hwflow.model.objects import Network, Port, Router, RouterPort, Subnet
from hwflow.sim.host import SimHost, in_ns
from hwflow.sim.lab import SimLab
from hwflow.sim.stream import Stream, Way

pytestmark = pytest.mark.functional

RATE = 200  # datagrams a second, each way
IN_FLIGHT = RATE // 10  # datagrams a counter read may miss at the end: a tenth of a second of the stream
KILLS = 10
ETCD_OUTAGE = {1: 60.0, 3: 20.0}  # seconds etcd (or the agents' member) is away, by cluster size
SETTLE = 1.0  # seconds of stream before and after each fault
SETUP_TIMEOUT = 60.0  # for a new host's first rules and flows: a loaded machine's agents start slowly
NIC_PROFILE = "mlx5-connectx6dx"
OVS_PROFILE = "sim-basic"
BRIDGED = (("vm1", "fa:16:3e:00:10:01", "10.0.0.1"), ("vm2", "fa:16:3e:00:10:02", "10.0.0.2"))
ROUTED = (("vm1", "fa:16:3e:00:11:01", "10.1.0.5", "10.1.0.1", "fa:16:3e:ee:01:00"),
          ("vm2", "fa:16:3e:00:11:02", "10.2.0.5", "10.2.0.1", "fa:16:3e:ee:01:01"))


def figures(test: str, **values: object) -> None:
    """Print what a test measured, for doc/reliability.rst."""
    print("RELIABILITY " + json.dumps({"test": test, **values}, sort_keys=True), flush=True)


# --- the stream ------------------------------------------------------------------------------------------


@pytest.fixture
def streams(tmp_path: Path) -> Iterator[Callable[..., Stream]]:
    started: list[Stream] = []

    def start(name: str, a: tuple[str, str], b: tuple[str, str]) -> Stream:
        stream = Stream(name, tmp_path, a, b, RATE)
        started.append(stream)
        return stream.start()

    try:
        yield start
    finally:
        for stream in started:
            stream.kill()


# --- the two paths -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Path2:
    """Two VMs of one host and how to tell which datapath carried their stream."""

    kind: str  # "nic" or "ovs"
    host: SimHost
    vms: tuple[str, str]  # VMS names ("vm1", "vm2")
    addresses: tuple[str, str]

    def ends(self) -> tuple[tuple[str, str], tuple[str, str]]:
        return ((vm_ns(self.host, self.vms[0]), self.addresses[0]), (vm_ns(self.host, self.vms[1]), self.addresses[1]))

    def counters(self) -> dict[str, int]:
        """NIC redirects each way (IPv4 rules), and what OVS took in on both representors."""
        a, b = self.vms
        return {"nic_ab": hw_packets(self.host, a, b), "nic_ba": hw_packets(self.host, b, a),
                "ovs_rx": sum(ovs_rx(self.host, representor(self.host, vm)) for vm in self.vms)}


def nic_path_objects(nb: NbApi, chassis: str) -> dict[str, Port]:
    net = nb.create(Network(name="nic-net", vni=3001))
    nb.create(Subnet(name="nic-sub", network_id=net.id, cidr="10.0.0.0/24", gateway_ip="10.0.0.254"))
    return {vm: nb.create(Port(name=vm, network_id=net.id, mac=mac, ips=[ip], chassis=chassis))
            for vm, mac, ip in BRIDGED}


def ovs_path_objects(nb: NbApi, chassis: str) -> dict[str, Port]:
    router = nb.create(Router(name="r-ovs"))
    ports = {}
    for i, (vm, mac, ip, gw, gw_mac) in enumerate(ROUTED):
        net = nb.create(Network(name=f"ovs-net{i}", vni=3100 + i))
        subnet = nb.create(Subnet(name=f"ovs-sub{i}", network_id=net.id, cidr=f"10.{i + 1}.0.0/24", gateway_ip=gw))
        nb.create(RouterPort(name=f"r-ovs-{i}", router_id=router.id, network_id=net.id, subnet_id=subnet.id,
                             mac=gw_mac, ip=gw))
        ports[vm] = nb.create(Port(name=vm, network_id=net.id, mac=mac, ips=[ip], chassis=chassis))
    return ports


def plug_nic_path(host: SimHost, ports: dict[str, Port]) -> Path2:
    for vm, port in ports.items():
        host.plug(port, vm_ns(host, vm))
    for (vm, _, _), (_, peer_mac, peer_ip) in zip(BRIDGED, reversed(BRIDGED), strict=True):
        in_ns(vm_ns(host, vm), "ip", "neigh", "replace", peer_ip, "lladdr", peer_mac, "dev", "eth0", "nud",
              "permanent")
    path = Path2("nic", host, ("vm1", "vm2"), (BRIDGED[0][2], BRIDGED[1][2]))
    a, b = path.vms
    wait_for("the NIC rules carrying vm1 <-> vm2", lambda: all(
        any(rule.protocol == fl.ETH_P_IP and redirects(rule, ifindex(host, dst))
            for rule, _ in nic_rules(host, {host.vms[vm_ns(host, src)].vf}))
        for src, dst in ((a, b), (b, a))), timeout=SETUP_TIMEOUT, host=host, details=lambda: nic_dump(host))
    return path


def plug_ovs_path(host: SimHost, ports: dict[str, Port]) -> Path2:
    for vm, _, _, gw, gw_mac in ROUTED:
        host.plug(ports[vm], vm_ns(host, vm), gateway=gw)
        in_ns(vm_ns(host, vm), "ip", "neigh", "replace", gw, "lladdr", gw_mac, "dev", "eth0", "nud", "permanent")
    wait_for("routes and next hops in OVS", lambda: sum(1 for f in ovs_flows(host) if f.key[1] >= 100) > 20,
             timeout=SETUP_TIMEOUT, host=host)
    return Path2("ovs", host, ("vm1", "vm2"), (ROUTED[0][2], ROUTED[1][2]))


def check_datapath(path: Path2, before: dict[str, int], packets: int) -> dict[str, int]:
    """That the stream's ``packets`` (each way) went through the path's datapath: NIC rules each way, or OVS.

    Less a few: the counters are read as the streams stop, and a datagram sent just before can still be on its
    way through the simulated NIC (``IN_FLIGHT``)."""
    now = path.counters()
    moved = {key: now[key] - before[key] for key in now}
    packets = max(0, packets - IN_FLIGHT)
    if path.kind == "nic":
        assert moved["nic_ab"] >= packets and moved["nic_ba"] >= packets, \
            f"the NIC's rules counted {moved}, expected >= {packets} each way" + evidence(path.host)
    else:
        assert moved["ovs_rx"] >= 2 * packets, f"OVS took in {moved}, expected >= {2 * packets}"
        assert moved["nic_ab"] == moved["nic_ba"] == 0, f"the NIC redirected {moved} on the OVS path"
    return moved


def no_loss(ways: dict[str, Way], what: str) -> None:
    for way, w in ways.items():
        assert w.lost == 0 and w.duplicates == 0, f"{what} {way}: {w}"


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(lambda name: tmp_path / name)
    try:
        yield lab
    finally:
        lab.stop()


def two_paths(lab: Lab) -> tuple[Path2, Path2]:
    """The NIC path on an mlx5 host and the OVS path on a sim-basic host, each on its own SQLite database."""
    hosts = [lab.host(NIC_PROFILE, agent_debug=True), lab.host(OVS_PROFILE, agent_debug=True)]
    with NbApi.from_url(hosts[0].database) as nb:
        nic = plug_nic_path(hosts[0], nic_path_objects(nb, hosts[0].name))
    with NbApi.from_url(hosts[1].database) as nb:
        ovs = plug_ovs_path(hosts[1], ovs_path_objects(nb, hosts[1].name))
    return nic, ovs


def restart_agents(hosts: list[SimHost]) -> None:
    """Start the (stopped) agents of ``hosts`` together; wait until each is up and has run a reconcile pass
    (as test_e2e.start_agent, for several hosts at once)."""
    marks = {host.name: len(agent_log(host)) for host in hosts}
    for host in hosts:
        host.start_agent()
    for host in hosts:
        def reconciled(host: SimHost = host) -> bool:
            text = agent_log(host)[marks[host.name]:]
            assert "cannot start" not in text, text
            return "hwflow-agent up as chassis" in text and ("reconciled (" in text or "changed nothing" in text)

        wait_for(f"the first reconcile pass of {host.name}'s agent", reconciled, host=host)


# --- 1. the agent SIGKILLed and restarted ------------------------------------------------------------------


def test_agent_killed_and_restarted_ten_times_loses_nothing_and_flushes_nothing(lab: Lab, streams) -> None:
    paths = two_paths(lab)
    running = [streams(p.kind, *p.ends()) for p in paths]
    time.sleep(SETTLE)
    before = {p.kind: snapshot(p.host) for p in paths}
    counters = {p.kind: p.counters() for p in paths}
    sent_then = {p.kind: max(st["sent"] for st in s.status().values()) for p, s in zip(paths, running, strict=True)}
    restarts = []
    for _ in range(KILLS):
        began = time.monotonic()
        for p in paths:
            pid = p.host.agent_pid
            assert pid is not None, "the agent died on its own" + evidence(p.host)
            os.kill(pid, signal.SIGKILL)
            p.host.stop_agent()  # reaps it
        restart_agents([p.host for p in paths])
        restarts.append(time.monotonic() - began)
    time.sleep(SETTLE)
    ways = {p.kind: s.stop() for p, s in zip(paths, running, strict=True)}
    for p in paths:
        after = snapshot(p.host)
        b = before[p.kind]
        assert set(after.rules) == set(b.rules), f"{p.kind}: NIC rules (with handles) changed" + evidence(p.host)
        assert after.rule_count == b.rule_count, f"{p.kind}: duplicate NIC rules" + evidence(p.host)
        assert len({(r.ifindex, r.chain, r.prio, r.protocol, r.keys) for r in after.rules}) == after.rule_count
        assert set(after.flows) == set(b.flows) and after.flow_count == b.flow_count, f"{p.kind}: OVS flows changed"
        assert all(after.rules[r] >= n for r, n in b.rules.items()), "NIC counters were reset"
        sent = min(w.sent for w in ways[p.kind].values()) - sent_then[p.kind]  # sent after the counters were read
        check_datapath(p, counters[p.kind], sent)
        no_loss(ways[p.kind], f"{p.kind} path across {KILLS} agent kills")
    figures("agent_sigkill", kills=KILLS, restart_seconds_max=round(max(restarts), 2),
            restart_seconds_mean=round(sum(restarts) / len(restarts), 2),
            nic_rules=before["nic"].rule_count, ovs_flows={k: v.flow_count for k, v in before.items()},
            streams={k: {w: dataclasses.asdict(x) | {"gaps": len(x.gaps)} for w, x in v.items()}
                     for k, v in ways.items()})


def gaps_within(ways: dict[str, Way], start: float, end: float) -> bool:
    """Whether every gap of the stream lies inside [start, end] (time.monotonic())."""
    return all(start <= before and resumed <= end for w in ways.values() for _, _, before, resumed in w.gaps)


# --- 3. ovs-vswitchd SIGKILLed and restarted -----------------------------------------------------------------

OVS_DOWN = 2.0  # seconds vswitchd stays dead
# How long the test waits for the stream and the flows to come back after vswitchd's restart. Only the agent's
# wake-up on the OpenFlow session's return can bring them back in that time: the agents' repair timer is put
# out of reach first (RESYNC_OUT_OF_REACH), so a long wait absorbs a loaded machine (vswitchd's start, the
# agent's full pass, the redial's backoff all slow down) and lets no other path pass for the one tested. The
# recovery is measured, not bounded: the figures say how long it took.
RECOVERY_TIMEOUT = 120.0
RESYNC_OUT_OF_REACH = 3600


def resync_out_of_reach(hosts: list[SimHost]) -> None:
    """Restart the hosts' agents with ``[agent] resync_interval`` at RESYNC_OUT_OF_REACH (a restart reconciles
    and loses nothing: the SIGKILL test above)."""
    for host in hosts:
        host.stop_agent()
        text = host.agent_config.read_text()
        host.agent_config.write_text(text.replace("[agent]\n", f"[agent]\nresync_interval = {RESYNC_OUT_OF_REACH}\n",
                                                  1))
    restart_agents(hosts)


def test_vswitchd_killed_and_restarted_gets_its_flows_back_and_loses_only_during_the_outage(lab: Lab,
                                                                                           streams) -> None:
    """The NIC keeps forwarding what its rules hold while ovs-vswitchd is dead: the NIC path loses nothing. The
    OVS path loses what was sent while vswitchd was away and until the agent had put its flows back, and
    nothing else; the time from vswitchd's restart to the stream's first datagram through is measured."""
    paths = two_paths(lab)
    resync_out_of_reach([p.host for p in paths])
    running = [streams(p.kind, *p.ends()) for p in paths]
    time.sleep(SETTLE)
    flows = {p.kind: {f.identity() for f in ovs_flows(p.host)} for p in paths}
    rules = {p.kind: {r for r, _ in nic_rules(p.host)} for p in paths}
    killed = time.monotonic()
    for p in paths:
        p.host.ovs.kill_vswitchd()
    time.sleep(OVS_DOWN)
    restarted = time.monotonic()
    for p in paths:
        p.host.ovs.start_vswitchd()
    recovery = {p.kind: s.first_arrival_after(restarted, timeout=RECOVERY_TIMEOUT)
                for p, s in zip(paths, running, strict=True)}
    for p in paths:
        wait_for(f"{p.kind}: the agent to put its OVS flows back", lambda p=p: {
            f.identity() for f in ovs_flows(p.host)} == flows[p.kind], timeout=RECOVERY_TIMEOUT, host=p.host)
    back = time.monotonic() - restarted
    counters = {p.kind: p.counters() for p in paths}
    time.sleep(SETTLE)
    ways = {p.kind: s.stop() for p, s in zip(paths, running, strict=True)}
    for p in paths:
        assert {r for r, _ in nic_rules(p.host)} == rules[p.kind], f"{p.kind}: the NIC rules changed" + \
            evidence(p.host)
        check_datapath(p, counters[p.kind], int(RATE * SETTLE * 0.8))
    no_loss(ways["nic"], "NIC path while vswitchd was dead")
    silence = {kind: max(w.longest_silence for w in v.values()) for kind, v in ways.items()}
    lost = {kind: max(w.lost for w in v.values()) for kind, v in ways.items()}
    assert all(w.duplicates == 0 for w in ways["ovs"].values()), ways["ovs"]
    assert gaps_within(ways["ovs"], killed - 2.0 / RATE, restarted + recovery["ovs"] + 2.0 / RATE), \
        f"the OVS path lost datagrams outside the outage: {ways['ovs']} (killed {killed}, restarted {restarted})"
    assert lost["ovs"] <= RATE * (restarted - killed + recovery["ovs"]) + 2, ways["ovs"]
    figures("vswitchd_sigkill", down_seconds=OVS_DOWN, recovery_after_restart_seconds={
        k: round(v, 3) for k, v in recovery.items()}, flows_back_after_restart_seconds=round(back, 3),
        lost=lost, longest_silence_seconds={k: round(v, 3) for k, v in silence.items()},
        streams={k: {w: dataclasses.asdict(x) | {"gaps": len(x.gaps)} for w, x in v.items()} for k, v in ways.items()})


# --- 4. the simulated NIC restarted ------------------------------------------------------------------------------


def test_nic_restarted_falls_back_to_ovs_and_gets_its_rules_back(lab: Lab, streams) -> None:
    """The simulated NIC SIGKILLed and started again (its rules, VFs and representors gone, then new): the
    stream loses only what was sent while the NIC was down, then goes through OVS (the NIC has no rule) until
    the agent has put the rules back on the new representors, then through the NIC again."""
    paths = two_paths(lab)
    running = [streams(p.kind, *p.ends()) for p in paths]
    time.sleep(SETTLE)
    nic = paths[0]
    count = {p.kind: len(nic_rules(p.host)) for p in paths}
    killed = time.monotonic()
    down = {p.kind: p.host.restart_nic() for p in paths}
    back = resumed = time.monotonic()
    recovery = {p.kind: s.first_arrival_after(back) for p, s in zip(paths, running, strict=True)}
    for p in paths:
        wait_for(f"{p.kind}: {count[p.kind]} NIC rules back", lambda p=p: len(nic_rules(p.host)) == count[p.kind],
                 host=p.host, details=lambda p=p: nic_dump(p.host))
    rules_back = time.monotonic() - resumed
    wait_for("the NIC path in the NIC again", lambda: plug_nic_path_ready(nic), host=nic.host)
    counters = {p.kind: p.counters() for p in paths}
    time.sleep(SETTLE)
    ways = {p.kind: s.stop() for p, s in zip(paths, running, strict=True)}
    for p in paths:
        check_datapath(p, counters[p.kind], int(RATE * SETTLE * 0.8))
        assert all(w.duplicates == 0 for w in ways[p.kind].values()), ways[p.kind]
        assert gaps_within(ways[p.kind], killed - 2.0 / RATE, back + 0.5), \
            f"{p.kind}: datagrams lost outside the NIC's restart: {ways[p.kind]} (killed {killed}, back {back})"
    figures("nic_restart", down_seconds={k: round(v, 3) for k, v in down.items()},
            first_datagram_after_vfs_back_seconds={k: round(v, 3) for k, v in recovery.items()},
            rules=count, rules_back_after_vfs_back_seconds=round(rules_back, 3),
            lost={k: max(w.lost for w in v.values()) for k, v in ways.items()},
            longest_silence_seconds={k: round(max(w.longest_silence for w in v.values()), 3)
                                     for k, v in ways.items()},
            streams={k: {w: dataclasses.asdict(x) | {"gaps": len(x.gaps)} for w, x in v.items()}
                     for k, v in ways.items()})


def plug_nic_path_ready(path: Path2) -> bool:
    host, (a, b) = path.host, path.vms
    return all(any(rule.protocol == fl.ETH_P_IP and redirects(rule, ifindex(host, dst))
                   for rule, _ in nic_rules(host, {host.vms[vm_ns(host, src)].vf})) for src, dst in ((a, b), (b, a)))


# --- 5. refusals injected into the NIC -----------------------------------------------------------------------

REFUSE_RATE = 0.1
REFUSE_SEED = 7  # the same seed, the same refusals: the ports are all there before the agent's first pass
QUAD = BRIDGED + (("vm3", "fa:16:3e:00:10:03", "10.0.0.3"), ("vm4", "fa:16:3e:00:10:04", "10.0.0.4"))


def test_refusals_injected_into_the_nic_lose_nothing_and_leave_their_traffic_to_ovs(tmp_path: Path, lab: Lab,
                                                                                     streams) -> None:
    """The simulated NIC refuses REFUSE_RATE of the rule installs (EOPNOTSUPP, ENOSPC, or an echo that differs
    from the request): the agent logs each and keeps what the refused rules would have carried in OVS. Two
    streams (vm1 <-> vm2, vm3 <-> vm4): nothing lost, and each direction's datagrams went through the NIC's
    rules or, where a rule was refused, through OVS (its representor's counter), all of them."""
    host = SimHost(f"e2{secrets.token_hex(2)}", tmp_path / "refusals", f"sqlite:///{tmp_path}/refusals.sqlite",
                   profile=NIC_PROFILE, agent_debug=True, nic_refuse_rate=REFUSE_RATE, nic_refuse_seed=REFUSE_SEED)
    lab.hosts.append(host)
    host.start(agent=False)
    with NbApi.from_url(host.database) as nb:
        net = nb.create(Network(name="refusals", vni=3201))
        ports = {vm: nb.create(Port(name=vm, network_id=net.id, mac=mac, ips=[ip], chassis=host.name))
                 for vm, mac, ip in QUAD}
    for vm, port in ports.items():
        host.plug(port, vm_ns(host, vm))
    for vm, _, _ in QUAD:
        for peer, mac, ip in QUAD:
            if peer != vm:
                in_ns(vm_ns(host, vm), "ip", "neigh", "replace", ip, "lladdr", mac, "dev", "eth0", "nud", "permanent")
    restart_agents([host])
    time.sleep(2.0)  # the passes the refusals wake are over
    pairs = (("vm1", "vm2"), ("vm3", "vm4"))
    directions = [d for a, b in pairs for d in ((a, b), (b, a))]
    address = {vm: ip for vm, _, ip in QUAD}
    before = {d: (hw_packets(host, *d), ovs_rx(host, representor(host, d[0]))) for d in directions}
    running = [streams(f"{a}-{b}", (vm_ns(host, a), address[a]), (vm_ns(host, b), address[b])) for a, b in pairs]
    time.sleep(3 * SETTLE)
    ways = {pair: s.stop() for pair, s in zip(pairs, running, strict=True)}
    log, nic_log = agent_log(host), (host.workdir / "simnic.out").read_text(errors="replace")
    injected = {kind: nic_log.count(f"injected refusal ({kind})") for kind in ("EOPNOTSUPP", "ENOSPC", "echo")}
    assert sum(injected.values()) >= 1, "no refusal was injected"
    assert log.count("refused to") >= 1 and "that traffic stays in Open vSwitch" in log, log[-3000:]
    carried = {}
    for (a, b), way in ((pair, w) for pair, w in ways.items()):
        no_loss(way, f"stream {a} <-> {b} with refusals")
        for (src, dst), w in zip(((a, b), (b, a)), way.values(), strict=True):
            nic = hw_packets(host, src, dst) - before[src, dst][0]
            ovs = ovs_rx(host, representor(host, src)) - before[src, dst][1]
            carried[f"{src}->{dst}"] = {"nic": nic, "ovs": ovs, "sent": w.sent}
            assert nic + ovs >= w.received, f"{src}->{dst}: {carried} " + evidence(host)
            if nic < w.received:  # the NIC's rule for it was refused: OVS took every datagram the NIC did not
                assert ovs >= w.received - nic, f"{src}->{dst}: {carried}" + evidence(host)
    in_ovs = [d for d, c in carried.items() if c["nic"] < c["sent"] // 2]
    assert in_ovs, f"no stream direction lost its NIC rule to a refusal with seed {REFUSE_SEED}: {carried}"
    figures("nic_refusals", rate=REFUSE_RATE, seed=REFUSE_SEED, injected=injected,
            agent_refusal_lines=log.count("refused to"), directions=carried, through_ovs=in_ovs,
            lost=max(w.lost for v in ways.values() for w in v.values()),
            duplicates=max(w.duplicates for v in ways.values() for w in v.values()))


# --- 2. etcd away -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("members", [1, 3])
def test_etcd_away_the_datapaths_keep_forwarding_and_a_write_made_meanwhile_arrives(tmp_path: Path, streams,
                                                                                    members: int) -> None:
    """A lab on etcd (one member, or three of which the agents talk to the first: the etcd driver keeps to the
    member it last reached, starting with the URL's first) with the NIC path on an mlx5 host and the OVS path
    on a sim-basic one; that member stopped for ETCD_OUTAGE seconds. Both streams lose nothing meanwhile. A
    third VM on the NIC path's network is plugged meanwhile and its port written (through the other members;
    with one member, as soon as it is back: the write fails cleanly meanwhile): it pings vm1 afterwards."""
    lab = SimLab(f"f{secrets.token_hex(2)}", tmp_path / "lab", hosts=2, profiles=(NIC_PROFILE, OVS_PROFILE),
                 etcd_members=members, agent_debug=True)
    try:
        lab.start()
        nic_host, ovs_host = lab.hosts
        nic = plug_nic_path(nic_host, lab.nb(lambda nb: nic_path_objects(nb, nic_host.name)))
        ovs = plug_ovs_path(ovs_host, lab.nb(lambda nb: ovs_path_objects(nb, ovs_host.name)))
        paths = (nic, ovs)
        running = [streams(p.kind, *p.ends()) for p in paths]
        time.sleep(SETTLE)
        counters = {p.kind: p.counters() for p in paths}
        net_id = lab.nb(lambda nb: nb.list(Network)[0].id if nb.list(Network)[0].name == "nic-net" else next(
            n.id for n in nb.list(Network) if n.name == "nic-net"))
        new = Port(id="vm3-late", name="vm3", network_id=net_id, mac="fa:16:3e:00:10:03", ips=["10.0.0.3"],
                   chassis=nic_host.name)
        stopped = time.monotonic()
        lab.stop_etcd(0)
        try:
            nic_host.plug(new, vm_ns(nic_host, "vm3"))
            written_meanwhile = True
            try:
                lab.nb(lambda nb: nb.create(new))
            except DatabaseUnavailable:
                written_meanwhile = False
            assert written_meanwhile == (members > 1)
            time.sleep(max(0.0, ETCD_OUTAGE[members] - (time.monotonic() - stopped)))
        finally:
            lab.start_etcd(0)
        returned = time.monotonic()
        if not written_meanwhile:
            lab.nb(lambda nb: nb.create(new))
        wait_for("the late VM to reach vm1", lambda: nic_host.ping(vm_ns(nic_host, "vm3"), BRIDGED[0][2], count=1,
                                                                   interval=0.2) == 0, timeout=30, host=nic_host)
        reached = time.monotonic() - returned
        time.sleep(SETTLE)
        ways = {p.kind: s.stop() for p, s in zip(paths, running, strict=True)}
        for p in paths:
            check_datapath(p, counters[p.kind], int(RATE * ETCD_OUTAGE[members] * 0.8))
            no_loss(ways[p.kind], f"{p.kind} path with etcd away")
            assert p.host.agent_pid is not None, "an agent died" + evidence(p.host)
        figures(f"etcd_away_{members}", outage_seconds=ETCD_OUTAGE[members], written_meanwhile=written_meanwhile,
                late_port_pings_after_etcd_back_seconds=round(reached, 2),
                lost={k: max(w.lost for w in v.values()) for k, v in ways.items()},
                streams={k: {w: dataclasses.asdict(x) | {"gaps": len(x.gaps)} for w, x in v.items()}
                         for k, v in ways.items()})
    finally:
        lab.stop()
