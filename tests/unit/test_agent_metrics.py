"""The agent's Prometheus metrics (hwflow.agent.metrics): values after passes and reports, on a registry of
their own; the errno counter from a real (simulated) NIC's refusals; the classes of the partitioner's reasons."""

from __future__ import annotations

import dataclasses
import gc
import math
import os
import shutil
import tempfile
import time
import urllib.request
from types import SimpleNamespace

import pytest
from prometheus_client import CollectorRegistry

from hwflow.agent.cache import NbCache
from hwflow.agent.daemon import PassResult
from hwflow.agent.metrics import CLASSES, AgentMetrics, reason_class
from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.backend import Representor, TcBackend
from hwflow.db import NbApi
from hwflow.model import Network
from hwflow.offload.capabilities import Capabilities
from hwflow.offload.nic import DeviceReport
from hwflow.offload.partition import FULL, Plan, SoftwareLeaf
from hwflow.sim.eswitch import Eswitch
from hwflow.sim.profile import load_profile
from hwflow.sim.server import serve_in_background

P = "hwflow_agent_"


def value(m: AgentMetrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(P + name, labels)


def result(**stages: float) -> PassResult:
    return PassResult(local_ports=2, flows=40, hw_rules=12, software_only=3,
                      stages=stages or {"ovsdb": 0.001, "compile": 0.002, "tc_install": 0.0005})


def leaf(reason: str) -> SoftwareLeaf:
    return SoftwareLeaf(1, (), reason)


class FakeTc:
    """What the metrics read of a TcBackend; ``rules``: (endpoint, ifindex) -> [(rule, stats)]."""

    def __init__(self) -> None:
        self.refusals: dict[int, int] = {}
        self.repairs = 0
        self.refused_count = 0
        self.rules: dict[tuple[str, int], list[tuple[fl.FlowerRule, fl.RuleStats | None]]] = {}

    def rule_counts(self) -> dict[tuple[str, int], int]:
        return {dev: len(rules) for dev, rules in self.rules.items()}

    def installed(self, endpoint: str, ifindex: int) -> list[tuple[fl.FlowerRule, fl.RuleStats | None]]:
        return self.rules.get((endpoint, ifindex), [])


def flower_rule(ifindex: int, handle: int, *actions: object) -> fl.FlowerRule:
    return fl.FlowerRule(ifindex, 1, handle, fl.ETH_P_IP, fl.FlowerKeys(eth_dst=handle), actions or (fl.Mirred(99),))


def test_a_pass_sets_counts_times_and_stages() -> None:
    m = AgentMetrics(CollectorRegistry())
    tc = FakeTc()
    tc.rules[("unix:x", 5)] = [(flower_rule(5, h), None) for h in (1, 2, 3)]
    m.observe_pass(result(), True, Plan(), tc)
    m.observe_pass(result(ovsdb=0.004, partition=0.001), False, Plan(), tc)
    m.observe_pass(result(), False, Plan(), tc)
    assert value(m, "reconcile_passes_total", kind="full") == 1
    assert value(m, "reconcile_passes_total", kind="delta") == 2
    assert value(m, "reconcile_duration_seconds_count", kind="delta") == 2
    assert value(m, "reconcile_duration_seconds_sum", kind="full") == pytest.approx(0.0035)
    assert value(m, "reconcile_duration_seconds_bucket", kind="delta", le="0.005") == 2
    assert value(m, "reconcile_stage_seconds", stage="ovsdb") == pytest.approx(0.001)  # the last pass's
    assert value(m, "reconcile_stage_seconds", stage="partition") == pytest.approx(0.001)  # kept from the one before
    assert value(m, "hw_rules_eligible") == 12
    assert value(m, "sw_paths") == 3
    assert value(m, "hw_rules_installed") == 3  # the full pass counted the NIC's rules
    assert math.isnan(value(m, "db_watch_reply_age_seconds"))  # not following a cache


def test_repairs_and_refused_follow_the_backend() -> None:
    m = AgentMetrics(CollectorRegistry())
    tc = FakeTc()
    tc.repairs, tc.refused_count = 3, 2
    m.observe_pass(result(), True, Plan(), tc)
    tc.repairs = 5
    m.observe_pass(result(), False, Plan(), tc)
    assert value(m, "tc_repairs_total") == 5
    assert value(m, "hw_rules_refused") == 2


def test_refusals_are_counted_by_errno_from_a_real_nic() -> None:
    tmp = tempfile.mkdtemp(prefix="hwt-met-")  # AF_UNIX paths must stay short
    path = os.path.join(tmp, "ctl")
    reps = (11, 12)
    stop = serve_in_background(path, Eswitch("tiny", load_profile("sim-tiny"), list(reps)))
    endpoint = f"unix:{path}"
    tc = TcBackend()
    m = AgentMetrics(CollectorRegistry())
    try:
        desired = [(endpoint, fl.FlowerRule(reps[0], 1, 0, fl.ETH_P_IP, fl.FlowerKeys(eth_dst=mac),
                                            (fl.Mirred(reps[1]),))) for mac in range(1, 11)]  # sim-tiny holds 8
        changes = tc.plan(desired, [Representor(i, endpoint) for i in reps])
        tc.install(changes)
        m.observe_pass(result(), True, Plan(), tc)
        assert value(m, "hw_refusals_total", errno="ENOSPC") == 2
        assert value(m, "hw_rules_refused") == 2
        assert value(m, "hw_rules_installed") == 8
        m.observe_pass(result(), False, Plan(), tc)  # nothing new refused: the counter stays
        assert value(m, "hw_refusals_total", errno="ENOSPC") == 2
        tc.forget_refusals()
        tc.install(tc.plan(desired, [Representor(i, endpoint) for i in reps]))  # tried again, refused again
        m.observe_pass(result(), True, Plan(), tc)
        assert value(m, "hw_refusals_total", errno="ENOSPC") == 4
    finally:
        tc.close()
        stop()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.mark.parametrize(("reason", "expected"), [
    ("the NIC refused it: Error: No space left on device (ENOSPC)", "refused"),
    (FULL, "no_room"),
    ("the NIC has 4 chain(s); chain 9 does not fit", "no_room"),
    ("overlaps an earlier software-only path", "shadowed"),
    ("VLAN-tagged, behind an overlapping rule for untagged packets", "shadowed"),
    ("table miss: no flow decided this drop, so it stays in software", "other"),
    ("no path behind this goto goes to hardware (or its misses cannot be caught)", "other"),
    ("the NIC cannot match ipv6_src with mask 0xff", "capability"),
    ("broadcast/multicast: its port set changes with every port of the network, so it stays in software",
     "capability"),
    ("punted to the agent (dhcp)", "capability"),
    ("3 outputs: replication stays in software", "capability"),
    ("output port is not behind the same embedded switch", "capability"),
])
def test_reason_classes(reason: str, expected: str) -> None:
    assert reason_class(reason) == expected


def test_a_report_counts_reasons_capacity_traffic_and_chassis() -> None:
    m = AgentMetrics(CollectorRegistry())
    tc = FakeTc()
    plan = Plan(software=[leaf(FULL), leaf(FULL), leaf("the NIC refused it: EOPNOTSUPP"),
                          leaf("overlaps an earlier software-only path"), leaf("the NIC cannot drop")])
    m.observe_pass(result(), False, plan, tc)
    caps = dataclasses.replace(load_profile("sim-basic").capabilities, max_rules=64)
    assert isinstance(caps, Capabilities)
    reports = {name: DeviceReport(name, ifindex, "sim", "sim", None, "sw0", "VF_REPRESENTOR", "switchdev", True,
                                  None, caps, tc_endpoint="unix:x") for name, ifindex in (("r1", 5), ("r2", 6))}
    tc.rules[("unix:x", 5)] = [(flower_rule(5, 1), fl.RuleStats(10, 1000, 0)),
                               (flower_rule(5, 2), fl.RuleStats(5, 500, 0))]
    tc.rules[("unix:x", 6)] = [(flower_rule(6, 1), fl.RuleStats(1, 100, 0)),
                               # a goto's packets are counted where they go, a pass's by OVS
                               (flower_rule(6, 2, fl.Gact("goto_chain", 4)), fl.RuleStats(7, 700, 0)),
                               (flower_rule(6, 3, fl.Gact("pass")), fl.RuleStats(8, 800, 0)),
                               (flower_rule(6, 4, fl.Gact("drop")), fl.RuleStats(2, 200, 0))]
    tc.rules[("unix:other", 9)] = [(flower_rule(9, 1), None)]  # not a switch a report names
    ports = {"port-a": SimpleNamespace(unique_key=1), "port-b": SimpleNamespace(unique_key=2)}
    topo = SimpleNamespace(ports=ports, local_port_ids={"port-a", "port-b"})
    reps = {1: Representor(5, "unix:x"), 2: Representor(6, "unix:x")}
    ofports = {1: 7, 2: 8, 0xFFF0: 3}
    ovs = SimpleNamespace(port_counters=lambda: {7: (4, 400, 0, 0), 8: (2, 200, 0, 0), 3: (99, 9900, 0, 0)})

    m.report(tc, ovs, reports, topo, reps, ofports, frozenset({"a", "b", "c"}))

    assert {name: value(m, "sw_paths_by_reason", reason=name) for name in CLASSES} == {
        "capability": 1, "refused": 1, "no_room": 2, "shadowed": 1, "other": 0}
    assert value(m, "hw_waiting_for_room") == 2
    assert value(m, "switch_rules_used", switch_id="sw0") == 6
    assert value(m, "switch_rules_max", switch_id="sw0") == 64
    assert value(m, "hw_rules_installed") == 7
    assert value(m, "chassis_alive") == 3
    assert value(m, "port_packets_total", datapath="hw", port="port-a") == 15
    assert value(m, "port_bytes_total", datapath="hw", port="port-a") == 1500
    assert value(m, "port_packets_total", datapath="hw", port="port-b") == 3
    assert value(m, "port_packets_total", datapath="sw", port="port-a") == 4
    assert value(m, "port_bytes_total", datapath="sw", port="port-b") == 200

    # the counters move by the differences; a rule replaced by one with fresh counters does not take them back
    tc.rules[("unix:x", 5)] = [(flower_rule(5, 1), fl.RuleStats(12, 1200, 0)),
                               (flower_rule(5, 3), fl.RuleStats(1, 100, 0))]
    ovs.port_counters = lambda: {7: (5, 500, 0, 0), 8: (2, 200, 0, 0)}
    m.report(tc, ovs, reports, topo, reps, ofports, frozenset({"a"}))
    assert value(m, "port_packets_total", datapath="hw", port="port-a") == 18
    assert value(m, "port_packets_total", datapath="sw", port="port-a") == 5
    assert value(m, "chassis_alive") == 1

    # a port unplugged loses its series
    topo.local_port_ids = {"port-a"}
    m.report(tc, ovs, reports, topo, reps, ofports, None)
    assert value(m, "port_packets_total", datapath="hw", port="port-b") is None
    assert value(m, "port_packets_total", datapath="sw", port="port-a") == 5


def test_a_datapath_that_cannot_be_read_leaves_the_rest() -> None:
    m = AgentMetrics(CollectorRegistry())

    def broken() -> dict:
        raise OSError("OVS went away")

    topo = SimpleNamespace(ports={"p": SimpleNamespace(unique_key=1)}, local_port_ids={"p"})
    tc = FakeTc()
    tc.rules[("unix:x", 5)] = [(flower_rule(5, 1), fl.RuleStats(3, 300, 0))]
    m.report(tc, SimpleNamespace(port_counters=broken), {}, topo, {1: Representor(5, "unix:x")}, {1: 7}, None)
    assert value(m, "port_packets_total", datapath="hw", port="p") == 3
    assert value(m, "port_packets_total", datapath="sw", port="p") is None


def test_the_watch_is_read_when_scraped() -> None:
    m = AgentMetrics(CollectorRegistry())
    cache = SimpleNamespace(revision=41, last_reply=None)
    m.follow(cache)
    assert math.isnan(value(m, "db_watch_reply_age_seconds"))
    cache.revision, cache.last_reply = 42, time.monotonic() - 3
    assert value(m, "db_revision") == 42
    assert 3 <= value(m, "db_watch_reply_age_seconds") < 10


def test_the_census_of_live_objects_follows_what_is_held_frozen_ones_too() -> None:
    """What a soak tells a growing cache from the allocator's high-water mark by."""
    m = AgentMetrics(CollectorRegistry())
    before = value(m, "python_objects")
    held = [[n] for n in range(20_000)]
    assert value(m, "python_objects") - before >= 19_000
    gc.freeze()  # what gc_paused(keep=True) does to what a pass leaves alive
    try:
        assert value(m, "python_objects") - before >= 19_000
    finally:
        gc.unfreeze()
    del held
    assert value(m, "python_objects") - before < 1_000


def test_a_write_is_one_watch_lag_observation_above_zero_and_small(tmp_path) -> None:
    """A real database (SQLite) and the agent's cache following it: each put the watch delivers is observed once,
    its lag (now - the time the API stamped on the record) above 0 and well under a second."""
    m = AgentMetrics(CollectorRegistry())
    with NbApi.from_url(f"sqlite:///{tmp_path}/nb.sqlite") as nb:
        cache = NbCache(nb, lambda: None, "host1", watch_timeout=0.05)
        m.follow(cache)
        cache.resync()
        cache.start()
        try:
            assert value(m, "db_watch_lag_seconds_count") == 0
            nb.create(Network(name="blue", vni=10))
            deadline = time.monotonic() + 10
            while value(m, "db_watch_lag_seconds_count") < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
        finally:
            cache.stop()
    assert value(m, "db_watch_lag_seconds_count") == 1
    assert 0 < value(m, "db_watch_lag_seconds_sum") < 1


def test_two_agents_keep_their_own_registries_and_serve_over_http() -> None:
    a, b = AgentMetrics(), AgentMetrics()
    a.observe_pass(result(), True, Plan(), FakeTc())
    assert value(b, "reconcile_passes_total", kind="full") == 0
    a.serve("127.0.0.1", 0)
    try:
        port = a._server.server_port
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        a.close()
    assert 'hwflow_agent_reconcile_passes_total{kind="full"} 1.0' in text
    assert not a.serving


def test_a_delta_pass_pays_microseconds() -> None:
    m = AgentMetrics(CollectorRegistry())
    tc = FakeTc()
    stages = {s: 0.001 for s in ("ovsdb", "topology", "compile", "ofports", "partition", "tc_plan", "tc_remove",
                                 "ovs", "tc_install")}
    r, plan = result(**stages), Plan()
    m.observe_pass(r, False, plan, tc)
    began = time.perf_counter()
    for _ in range(1000):
        m.observe_pass(r, False, plan, tc)
    each = (time.perf_counter() - began) / 1000
    assert each < 100e-6, f"{each * 1e6:.0f} us a pass"
