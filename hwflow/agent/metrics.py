"""The agent's Prometheus metrics: what is in the NIC, what stays in OVS and why, how the agent keeps up.

One :class:`AgentMetrics` per agent, on a ``CollectorRegistry`` of its own (never the library's global one, so
two agents can live in one process), served by prometheus_client's HTTP server in a thread when
``[agent] metrics_port`` is set (:meth:`AgentMetrics.serve`; ``[agent] metrics_host``, 127.0.0.1 by default).

Every metric, its labels and what it means (all prefixed ``hwflow_agent_``):

Hardware rules and software paths, set at the end of every pass from what the pass computed anyway
(:meth:`AgentMetrics.observe_pass`), except where said:

- ``hw_rules_installed``: rules in the NICs now, as the tc backend holds them (what the NICs answered; a shared
  chain's rule counted once per representor carrying it). Refreshed after a pass that changed a NIC and on
  every report.
- ``hw_rules_eligible``: rules the last plan puts in hardware (they passed the capability checks and fit the
  room; counted as installed). Eligible but not installed = refused, or not yet installed.
- ``hw_rules_refused``: rules the NICs refused and that stay refused until the repair timer retries them.
- ``hw_refusals_total{errno}``: every refusal a NIC answered, by its errno's name (``ENOSPC``, ``EOPNOTSUPP``,
  ...; the number when the name is unknown).
- ``sw_paths``: paths of the pipeline the last plan keeps in software (OVS carries them).
- ``sw_paths_by_reason{reason}``: the same by class of reason (on every report, and only when the plan changed:
  listing every path costs a big host more than a delta pass). The class is read from the partitioner's reason
  text by :func:`reason_class` (first match in :data:`REASON_CLASSES`):
  ``refused`` (the NIC refused the rule), ``no_room`` (the rule table is full, or a chain does not fit),
  ``shadowed`` (an earlier software path overlaps it, so a rule would steal its packets), ``other`` (a table
  miss's drop; a goto whose chain takes nothing), and ``capability`` for every other reason (all name a match,
  action or delivery the NIC, or hwflow's model of it, cannot do).
- ``hw_waiting_for_room``: software paths the NIC could carry if it had room (the ``no_room`` class); a port
  given too little room to be walked at all counts as one (hwflow.offload.partition.LEAST_ROOM).

Capacity, on every report, from the tc backend's rules and the NICs' reported capabilities:

- ``switch_rules_used{switch_id}``: rules installed on each embedded switch (all its representors together).
- ``switch_rules_max{switch_id}``: its rule capacity (the capabilities' ``max_rules``).

Traffic per logical port, on every report (a dump of every representor's rules and OVS's port counters: not
on every pass, a big host's dump costs); ``port`` is the logical port's id, ``datapath`` ``hw`` or ``sw``:

- ``port_packets_total{datapath, port}``, ``port_bytes_total{datapath, port}``: traffic from the port (received
  on its representor) that the NIC's rules carried (``hw``: the counters of the rules on its representor that
  end a packet's way in the NIC, a redirect or a drop; a packet a goto sends on is counted by the rule it
  reaches, one that a rule passes up is OVS's) or that went up to Open vSwitch (``sw``: OVS's receive counters
  of the representor). Accumulated from the differences between reports, so a rule replaced or removed does
  not make them go back.
- ``port_packet_rate{port}``: packets a second from the port through both datapaths, decayed over time
  (``[offload] traffic_half_life``): what the agent ranks ports by when a NIC is short of room
  (hwflow.agent.traffic). Read on every report while a NIC is short of room, or while metrics are served.

Reconcile passes (every pass):

- ``reconcile_passes_total{kind}``: passes, ``kind`` ``full`` (start, repair timer, after a failure or an OVS
  reconnect: both datapaths dumped) or ``delta``.
- ``reconcile_duration_seconds{kind}``: histogram of their duration (the sum of their stages).
- ``reconcile_stage_seconds{stage}``: each stage's time in the last pass that ran it (``ovsdb``, ``topology``,
  ``compile``, ``partition``, ``tc_plan``, ``tc_remove``, ``ovs``, ``tc_install``, ...: ``PassResult.stages``).
- ``tc_repairs_total``: NIC rules a full pass's dump found differing from what the agent held (a bug, or
  someone else changed the NIC; ``TcBackend.repairs``).

Database watch:

- ``db_watch_lag_seconds``: histogram of the seconds from a write to the agent's watch delivering it, one
  observation for every put the watch delivers (the NB API stamps each record it writes with the time,
  ``hwflow.db.api.WRITTEN``; a delete and a record written before the stamp existed carry none). The writer's
  clock against the agent's: between hosts, their clocks' skew is in it (a negative lag counts as 0).
- ``db_revision`` (read when scraped): the database revision the agent's cache stands at.
- ``db_watch_reply_age_seconds`` (read when scraped): seconds since the database last answered the cache's watch
  (an answer comes at least every watch timeout, one second, when the database is reachable: a value growing
  past that means the agent is not hearing about changes). NaN before the first answer.

Cluster (every report):

- ``chassis_alive``: chassis whose liveness lease holds, as the agent last read them (itself included).

The process (read when scraped):

- ``python_objects``: objects the agent's Python holds that its garbage collector tracks (containers and
  instances; frozen ones included): a census that tells live state that grows (a cache never pruned) from
  memory the allocator keeps after a peak, which RSS alone cannot (``hwflow bench soak``). Counting costs a
  pass over them (~10 ms per 100,000) at each scrape.
"""

from __future__ import annotations

import errno as errno_names
import gc
import logging
import math
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from hwflow.backends.tc import flower as fl

if TYPE_CHECKING:
    from hwflow.agent.cache import NbCache
    from hwflow.agent.daemon import PassResult
    from hwflow.backends.ovs.backend import OvsBackend
    from hwflow.backends.tc.backend import Representor, TcBackend
    from hwflow.offload.nic import DeviceReport
    from hwflow.offload.partition import Plan
    from hwflow.pipeline.topology import Topology

LOG = logging.getLogger(__name__)

PREFIX = "hwflow_agent_"
KINDS = ("full", "delta")

# (class, substrings of the partitioner's reason text), first match wins; anything else is "capability".
REASON_CLASSES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("refused", ("the NIC refused",)),
    ("no_room", ("rule table is full", "does not fit")),
    ("shadowed", ("overlaps an earlier software-only path", "behind an overlapping rule")),
    ("other", ("table miss", "no path behind this goto")),
)
CAPABILITY = "capability"
CLASSES = (CAPABILITY, *(name for name, _ in REASON_CLASSES))

# a change reaches the watch in milliseconds; seconds while the database is slow or the agent busy
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, math.inf)
# pass durations: a delta pass takes a millisecond or so, a big host's full pass seconds
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, math.inf)


def python_objects() -> int:
    """The objects the garbage collector tracks: its generations' and those frozen out of them (gc.freeze)."""
    return len(gc.get_objects()) + gc.get_freeze_count()


def reason_class(reason: str) -> str:
    """The class of a software path's reason (see the module's docstring)."""
    for name, marks in REASON_CLASSES:
        if any(mark in reason for mark in marks):
            return name
    return CAPABILITY


def finishes(rule: fl.FlowerRule) -> bool:
    """Whether the NIC ends the way of the packets ``rule`` takes (a redirect or a drop): the rules whose counters
    are hardware traffic (a goto's packets are counted again where they go, a pass's are software's)."""
    return any(isinstance(a, fl.Mirred) and a.redirect or isinstance(a, fl.Gact) and a.verdict == "drop"
               for a in rule.actions)


class AgentMetrics:
    """The agent's metrics (listed in the module's docstring) on ``registry`` (a new one if not given)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(PREFIX + name, doc, labels, registry=r)

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(PREFIX + name, doc, labels, registry=r)

        self.hw_installed = gauge("hw_rules_installed", "Rules in the NICs now (as the NICs answered)")
        self.hw_eligible = gauge("hw_rules_eligible", "Rules the last plan puts in hardware")
        self.hw_refused = gauge("hw_rules_refused", "Rules the NICs refused, until the repair timer retries them")
        self.refusals = counter("hw_refusals", "Refusals the NICs answered, by errno", ("errno",))
        self.sw_paths = gauge("sw_paths", "Paths the last plan keeps in software")
        self.sw_by_reason = gauge("sw_paths_by_reason", "Paths kept in software, by class of reason", ("reason",))
        self.waiting = gauge("hw_waiting_for_room", "Software paths the NIC could carry if it had room")
        self.switch_used = gauge("switch_rules_used", "Rules installed on an embedded switch", ("switch_id",))
        self.switch_max = gauge("switch_rules_max", "Rule capacity of an embedded switch", ("switch_id",))
        self.port_packets = counter("port_packets", "Packets from a logical port, by the datapath that carried "
                                    "them", ("datapath", "port"))
        self.port_bytes = counter("port_bytes", "Bytes from a logical port, by the datapath that carried them",
                                  ("datapath", "port"))
        self.port_rate = gauge("port_packet_rate", "Packets a second from a logical port through both datapaths, "
                               "decayed (what room on a full NIC is ranked by)", ("port",))
        self.passes = counter("reconcile_passes", "Reconcile passes, by kind", ("kind",))
        self.duration = Histogram(PREFIX + "reconcile_duration_seconds", "Duration of reconcile passes", ("kind",),
                                  buckets=DURATION_BUCKETS, registry=r)
        self.stage = gauge("reconcile_stage_seconds", "Each stage's time in the last pass that ran it", ("stage",))
        self.repairs = counter("tc_repairs", "NIC rules a dump found differing from what the agent held")
        self.revision = gauge("db_revision", "Database revision the agent's cache stands at")
        self.reply_age = gauge("db_watch_reply_age_seconds", "Seconds since the database last answered the watch")
        self.watch_lag = Histogram(PREFIX + "db_watch_lag_seconds", "Seconds from a write to the watch delivering "
                                   "it", buckets=LAG_BUCKETS, registry=r)
        self.chassis_alive = gauge("chassis_alive", "Chassis whose liveness lease holds")
        gauge("python_objects", "Objects the garbage collector tracks, frozen ones included").set_function(
            python_objects)
        self.reply_age.set(math.nan)  # until following a cache (follow)
        for kind in KINDS:  # present from the start, at zero
            self.passes.labels(kind)
            self.duration.labels(kind)
        for name in CLASSES:
            self.sw_by_reason.labels(name)
        # label children looked up once: the pass updates them without a dict lookup per label set
        self._passes = {kind: self.passes.labels(kind) for kind in KINDS}
        self._durations = {kind: self.duration.labels(kind) for kind in KINDS}
        self._stages: dict[str, Gauge] = {}
        self._refusals_seen: dict[int, int] = {}
        self._repairs_seen = 0
        self._plan: Plan | None = None
        self._classified: Plan | None = None  # the plan sw_paths_by_reason was counted from
        self._rule_seen: dict[tuple, tuple[int, int]] = {}  # (endpoint, ifindex, chain, prio, handle) -> counters
        self._ovs_seen: dict[str, tuple[int, int]] = {}  # port id -> OVS rx (packets, bytes) at the last report
        self._ports: set[str] = set()  # ports with traffic series
        self._server = None
        self._thread = None

    # --- serving ------------------------------------------------------------------------------------------

    def serve(self, host: str, port: int) -> None:
        """Serve ``/metrics`` over HTTP on ``host``:``port`` from a thread (prometheus_client's server)."""
        self._server, self._thread = start_http_server(port, addr=host, registry=self.registry)
        LOG.info("serving Prometheus metrics on http://%s:%d/metrics", host, self._server.server_port)

    @property
    def serving(self) -> bool:
        return self._server is not None

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def follow(self, cache: NbCache) -> None:
        """Export the cache's revision and the age of its last watch reply, read at each scrape, and the lag of
        each change its watch delivers."""
        self.revision.set_function(lambda: cache.revision)
        cache.observe_lag = self.watch_lag.observe

        def age() -> float:
            last = cache.last_reply
            return math.nan if last is None else time.monotonic() - last

        self.reply_age.set_function(age)

    # --- every pass (keep it cheap: a delta pass must not slow down) ------------------------------------

    def observe_pass(self, result: PassResult, full: bool, plan: Plan, tc: TcBackend) -> None:
        """A pass ended: counts and times from ``result``, what the plan says, what the NIC refused."""
        kind = "full" if full else "delta"
        self._passes[kind].inc()
        self._durations[kind].observe(sum(result.stages.values()))
        for stage, seconds in result.stages.items():
            child = self._stages.get(stage)
            if child is None:
                child = self._stages[stage] = self.stage.labels(stage)
            child.set(seconds)
        self.hw_eligible.set(result.hw_rules)
        self.sw_paths.set(result.software_only)
        self._plan = plan
        self._take_refusals(tc)
        if full or result.hw_installed or result.hw_removed:
            self.hw_installed.set(sum(tc.rule_counts().values()))

    def _take_refusals(self, tc: TcBackend) -> None:
        for err, total in tc.refusals.items():
            seen = self._refusals_seen.get(err, 0)
            if total > seen:
                self.refusals.labels(errno_names.errorcode.get(err, str(err))).inc(total - seen)
                self._refusals_seen[err] = total
        if tc.repairs > self._repairs_seen:
            self.repairs.inc(tc.repairs - self._repairs_seen)
            self._repairs_seen = tc.repairs
        self.hw_refused.set(tc.refused_count)

    # --- every report ---------------------------------------------------------------------------------------

    def report(self, tc: TcBackend, ovs: OvsBackend, reports: Mapping[str, DeviceReport], topo: Topology,
               reps: Mapping[int, Representor], ofports: Mapping[int, int], alive: frozenset[str] | None
               ) -> dict[int, int] | None:
        """The agent's report step: capacity, reasons, per-port traffic (``reps``: port key -> its representor,
        ``ofports``: port key -> its OpenFlow port), chassis alive. A datapath that cannot be read leaves its
        metrics as they were (logged at debug level). Returns what :meth:`traffic` read."""
        if alive is not None:
            self.chassis_alive.set(len(alive))
        self._capacity(tc, reports)
        self._reasons()
        return self.traffic(tc, ovs, topo, reps, ofports)

    def traffic(self, tc: TcBackend, ovs: OvsBackend, topo: Topology, reps: Mapping[int, Representor],
                ofports: Mapping[int, int]) -> dict[int, int] | None:
        """Read the per-port traffic of both datapaths since the last reading (one dump of each representor's
        rules, one of OVS's port counters) into the ``port_*_total`` counters; port key -> packets from the port
        through either datapath, for every local port (None when a datapath could not be read: a rate from half
        the traffic would rank wrong). The agent's traffic rank reads it (hwflow.agent.traffic)."""
        ports = {topo.ports[pid].unique_key: pid for pid in topo.local_port_ids if pid in topo.ports}
        packets: dict[str, int] | None = dict.fromkeys(ports.values(), 0)
        try:
            self._hw_traffic(tc, {key: reps[key] for key in ports if key in reps}, ports, packets)
        except Exception as exc:  # a NIC that does not answer now: next report
            LOG.debug("cannot read the NIC rules' counters for metrics: %s", exc)
            packets = None
        try:
            self._sw_traffic(ovs, {ports[key]: ofport for key, ofport in ofports.items() if key in ports}, packets)
        except Exception as exc:  # OVS reconnecting: next report
            LOG.debug("cannot read OVS's port counters for metrics: %s", exc)
            packets = None
        gone = self._ports - set(ports.values())
        for pid in gone:
            for datapath in ("hw", "sw"):
                for metric in (self.port_packets, self.port_bytes):
                    try:
                        metric.remove(datapath, pid)
                    except KeyError:
                        pass
            try:
                self.port_rate.remove(pid)
            except KeyError:
                pass
            self._ovs_seen.pop(pid, None)
        self._ports -= gone
        return None if packets is None else {key: packets[pid] for key, pid in ports.items()}

    def rates(self, rates: Mapping[int, float], topo: Topology) -> None:
        """Export the agent's traffic rates (port key -> packets a second) by port id."""
        ports = {topo.ports[pid].unique_key: pid for pid in topo.local_port_ids if pid in topo.ports}
        for key, rate in rates.items():
            pid = ports.get(key)
            if pid is not None:
                self.port_rate.labels(pid).set(rate)
                self._ports.add(pid)

    def _capacity(self, tc: TcBackend, reports: Mapping[str, DeviceReport]) -> None:
        counts = tc.rule_counts()
        self.hw_installed.set(sum(counts.values()))
        switch_of: dict[tuple[str, int], str] = {}
        used: dict[str, int] = {}
        for report in reports.values():
            if report.offload and report.tc_endpoint and report.switch_id:
                switch_of[report.tc_endpoint, report.ifindex] = report.switch_id
                self.switch_max.labels(report.switch_id).set(report.capabilities.max_rules)
                used.setdefault(report.switch_id, 0)
        for dev, count in counts.items():
            switch = switch_of.get(dev)
            if switch is not None:
                used[switch] += count
        for switch, count in used.items():
            self.switch_used.labels(switch).set(count)

    def _reasons(self) -> None:
        plan = self._plan
        if plan is None or plan is self._classified:
            return
        by_class = dict.fromkeys(CLASSES, 0)
        for leaf in plan.software:
            by_class[reason_class(leaf.reason)] += 1
        for name, count in by_class.items():
            self.sw_by_reason.labels(name).set(count)
        self.waiting.set(by_class["no_room"])
        self._classified = plan

    def _hw_traffic(self, tc: TcBackend, reps: Mapping[int, Representor], ports: Mapping[int, str],
                    total: dict[str, int] | None = None) -> None:
        seen: dict[tuple, tuple[int, int]] = {}
        for key, rep in reps.items():
            packets = octets = 0
            for rule, stats in tc.installed(rep.endpoint, rep.ifindex):
                if stats is None or not finishes(rule):
                    continue
                ident = (rep.endpoint, rep.ifindex, rule.chain, rule.prio, rule.handle)
                before = self._rule_seen.get(ident, (0, 0))
                now = seen[ident] = (stats.packets, stats.bytes)
                # counters that went back belong to a new rule in the old one's place: all of it is new
                packets += now[0] - before[0] if now[0] >= before[0] else now[0]
                octets += now[1] - before[1] if now[1] >= before[1] else now[1]
            self._count("hw", ports[key], packets, octets, total)
        self._rule_seen = seen

    def _sw_traffic(self, ovs: OvsBackend, ofports: Mapping[str, int], total: dict[str, int] | None = None
                    ) -> None:
        counters = ovs.port_counters()
        for pid, ofport in ofports.items():
            found = counters.get(ofport)
            if found is None:
                continue
            now = (found[0], found[1])
            before = self._ovs_seen.get(pid, (0, 0))
            self._ovs_seen[pid] = now
            self._count("sw", pid, now[0] - before[0] if now[0] >= before[0] else now[0],
                        now[1] - before[1] if now[1] >= before[1] else now[1], total)

    def _count(self, datapath: str, pid: str, packets: int, octets: int, total: dict[str, int] | None = None
               ) -> None:
        self.port_packets.labels(datapath, pid).inc(packets)
        self.port_bytes.labels(datapath, pid).inc(octets)
        self._ports.add(pid)
        if total is not None:
            total[pid] = total.get(pid, 0) + packets
