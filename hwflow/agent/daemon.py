"""hwflow-agent: keep this host's two datapaths equal to the northbound database.

One loop, desired state only. Whenever the database or the bridge's ports
change, the change travels as a delta: the topology view's changes, the
compiler's flows added and removed (the pipeline patched), the partitioner's
re-plan of the ports and chains they reach, and each backend's flow_mods or
tc rules for exactly that, applied to the installed state it holds in
memory. At start, on the resync timer, after a failed pass and when OVS
reconnects, a full pass plans everything and dumps both datapaths, repairing
(and counting) what differs. Restarting is therefore the same as
reconciling, and nothing is flushed. Order inside one pass (make-before-break,
invariant 4): stale NIC rules come out first (OVS still has everything), then
OVS, then new NIC rules go in on top of flows that already back them.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import json
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping

from oslo_config import cfg

from hwflow import conf as hwconf
from hwflow.agent import view
from hwflow.agent.cache import NbCache
from hwflow.agent.dhcp import DhcpResponder
from hwflow.agent.metrics import AgentMetrics
from hwflow.agent.published import Publisher
from hwflow.agent.traffic import TrafficRates, priorities
from hwflow.apps.compiler import Compiler, Delta, layout_path
from hwflow.backends.ovs.backend import FullSyncNeeded, OvsBackend, SyncResult, fixed_ports
from hwflow.backends.ovs.openflow import OpenFlowConnection
from hwflow.backends.ovs.ovsdb import Iface, OvsdbClient
from hwflow.backends.tc.backend import TC_FLAGS, Representor, TcBackend, TcDiff, TunnelEndpoint, identity, to_flower
from hwflow.db.api import NbApi
from hwflow.model.errors import HwflowError, NotFound, ValidationError
from hwflow.model.objects import Chassis, NbObject, Port
from hwflow.offload import inventory
from hwflow.offload.discovery import discover
from hwflow.offload.nic import TUNNEL, UPLINK, DeviceReport
from hwflow.offload.partition import SHARED, HwRule, Partitioner, Plan, PortOffload
from hwflow.pipeline import ir
from hwflow.pipeline.topology import Change, Topology
from hwflow.util.gc import gc_paused

LOG = logging.getLogger("hwflow.agent")




@dataclasses.dataclass
class PassResult:
    """What one reconcile pass changed (for logs and tests)."""

    local_ports: int = 0
    flows: int = 0
    ovs_changes: int = 0
    hw_rules: int = 0
    hw_removed: int = 0
    hw_installed: int = 0
    software_only: int = 0
    stages: dict[str, float] = dataclasses.field(default_factory=dict)  # stage -> seconds, in pass order

    def clock(self, stage: str, since: float) -> float:
        """Note ``stage`` as having run from ``since`` until now; now (the next stage's start)."""
        now = time.perf_counter()
        self.stages[stage] = now - since
        return now


class Agent:
    def __init__(
        self,
        conf: cfg.ConfigOpts,
        nb: NbApi,
        ovsdb: OvsdbClient,
        ovs: OvsBackend,
        tc: TcBackend,
        devices: Callable[[], list[DeviceReport]],
        compiler: Compiler,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self.conf = conf
        self.nb = nb
        self.ovsdb = ovsdb
        self.ovs = ovs
        self.tc = tc
        self._devices = devices
        self.compiler = compiler
        self.chassis = conf.agent.chassis_name
        self.bridge_mappings = hwconf.bridge_mappings(conf.agent.bridge_mappings)
        self.fixed_ports = fixed_ports(
            conf.agent.tunnel_ip, conf.agent.tunnel_types,
            {"vxlan": conf.agent.vxlan_udp_port, "geneve": conf.agent.geneve_udp_port}, self.bridge_mappings)
        self.topo = Topology(self.chassis)
        self.compiler.compile(self.topo)
        self._wake = threading.Event()
        self.cache = NbCache(nb, self._wake.set, self.chassis)
        self._reports: dict[str, DeviceReport] = {}
        self._iface_names: frozenset[tuple[str, int]] = frozenset()
        self._refused: dict[tuple[int, ir.Match], str] = {}
        self._partitioner = Partitioner(compiler.layout.joins())
        # traffic per port, and the rank room on a NIC short of it is given out by (hwflow.agent.traffic)
        self._traffic = TrafficRates(conf.offload.traffic_half_life)
        self._rank: dict[int, float] = {}
        self._managed: set[Representor] = set()
        # port -> chain (0: the port's chain 0) -> its rules there as flower rules, and the representors they
        # were encoded with
        self._flower: dict[int, dict[int, list[tuple[HwRule, str, object]]]] = {}
        self._encoded_reps: dict[int, Representor] = {}
        self._tunnels: dict[int, TunnelEndpoint] = {}  # tunnel port key -> its endpoint, for the tunnels offloaded
        # tunnel ports and provider uplinks a NIC carries (from the reports: see _set_reports), by port key
        self._nic_fixed: dict[int, tuple[PortOffload, Representor]] = {}
        self._tunnel_warned: set[str] = set()
        self._alive: frozenset[str] | None = None  # chassis whose liveness lease holds (None: not read yet)
        self._liveness_flipped: set[str] = set()  # chassis whose liveness changed since the last pass
        self._force_full = True  # the first pass, and the one after a pass that failed, diff everything
        self._reported: frozenset[str] | None = None  # ports this agent reported up (None: read them back first)
        self._of_generation: int | None = None  # the OpenFlow session the last pass found: see _ovs_came_back
        self.last_pass = PassResult()
        self.ofports: dict[int, int] = {}  # logical port key -> ofport, as the last pass synced OVS with
        self.dhcp = DhcpResponder(ovs.of, lambda: (self.topo, self.ofports))
        self.published = Publisher.for_agent(conf)  # what `hwflow flows` reads (hwflow.agent.published)
        self.metrics = metrics if metrics is not None else AgentMetrics()  # its own registry (hwflow.agent.metrics)
        self.metrics.follow(self.cache)

    # --- what the last pass left, for hwflow.agent.published to label its rules with ---------------

    @property
    def encoded_reps(self) -> Mapping[int, Representor]:
        """Port key -> the representor the last pass encoded its NIC rules for: a rule's device and port."""
        return self._encoded_reps

    @property
    def managed_reps(self) -> frozenset[Representor]:
        """Representors whose tc rules the agent owns as of the last pass (plugged offload-capable interfaces,
        offloaded tunnels' devices): listed as devices even while no rule of the plan is on them."""
        return frozenset(self._managed)

    @property
    def device_reports(self) -> Mapping[str, DeviceReport]:
        """Interface name -> what discovery last reported about it: the names rules' devices are shown by."""
        return self._reports

    @property
    def flower_rules(self) -> Mapping[int, dict[int, list[tuple[HwRule, str, object]]]]:
        """Port -> chain -> its rules there as flower rules (with their tc endpoints): what the NIC should hold."""
        return self._flower

    # --- lifecycle -----------------------------------------------------------

    def start(self, stop: threading.Event) -> bool:
        """Connect everything and take the first full sync; False if stopped before that worked.

        Until the database answers, nothing is reconciled: the datapaths keep
        what they hold (a pass from an empty cache would remove it all).
        """
        self.ovsdb.ensure_bridge()
        self.ovsdb.on_change(lambda *_: self._wake.set())
        self._set_reports(self._discover())
        backoff = 0.5
        while not stop.is_set():
            try:
                self.cache.resync()
                break
            except HwflowError as exc:
                LOG.error("northbound database unavailable at start (%s); leaving the datapaths as they are, "
                          "retrying in %.1fs", exc, backoff)
                stop.wait(backoff)
                backoff = min(30.0, backoff * 2)
        else:
            return False
        self.register(up=True, always=True)
        self.follow_liveness()
        self.cache.start()
        self.dhcp.start()
        if self.conf.agent.metrics_port:
            self.metrics.serve(self.conf.agent.metrics_host, self.conf.agent.metrics_port)
        return True

    def run(self, stop: threading.Event) -> None:
        """Reconcile on every wake-up and on a timer, and report every ``report_interval``, until ``stop``.

        A report refreshes the chassis's liveness lease and rewrites its record only if something in it
        changed (see ``register``), so an agent that merely stays up wakes no other agent.
        """
        next_beat = time.monotonic() + self.conf.agent.report_interval
        next_resync = 0.0
        while not stop.is_set():
            now = time.monotonic()
            if self._wake.is_set() or now >= next_resync or self._ovs_came_back():
                self._wake.clear()
                full = now >= next_resync
                if full:  # the repair timer: dump both datapaths, and retry what a NIC refused before
                    self._refused.clear()
                    self.tc.forget_refusals()
                self.reconcile_safely(full)
                if full:
                    next_resync = now + self.conf.agent.resync_interval
            if now >= next_beat:
                self.register(up=True)
                if self._reported is None and not self._force_full:  # a status write failed: again
                    self.report_ports()
                self.follow_liveness()
                self.report_traffic()
                next_beat = now + self.conf.agent.report_interval
            self._wake.wait(timeout=min(1.0, self.conf.agent.report_interval))

    def _ovs_came_back(self) -> bool:
        """Whether the OpenFlow session to vswitchd was re-established since the last look and the flows held in
        memory may not be on the bridge any more (vswitchd restarted: its flow table is empty). The next pass is
        then a full one (OvsBackend.needs_full_sync); without this wake-up nothing would run it before the resync
        timer, and OVS would forward nothing for up to resync_interval."""
        of = self.ovs.of
        generation = of.generation
        if generation == self._of_generation or not of.connected:
            return False
        self._of_generation = generation
        return self.ovs.needs_full_sync

    def report_traffic(self) -> None:
        """The report step's traffic: the metrics, and the rank a NIC short of room gives its room by.

        Per-port traffic is a dump of every representor, so it is read once a report, not on every pass, and
        only while metrics are served or a NIC is short of room. Each reading updates the ports' rates
        (:class:`TrafficRates`); a rank from them, with hysteresis (:func:`priorities`), replaces the one the
        plan was made with only when it gives some port other room (``Partitioner.moves``), and then a pass
        plans again at once: rules move at most once a report, and only where room moves. While every rule
        fits, the rank orders nothing and is left as it is.
        """
        short = self._partitioner.short()
        if not (self.metrics.serving or short):
            return
        if self.metrics.serving:
            packets = self.metrics.report(self.tc, self.ovs, self._reports, self.topo, self._encoded_reps,
                                          self.ofports, self._alive)
        else:
            packets = self.metrics.traffic(self.tc, self.ovs, self.topo, self._encoded_reps, self.ofports)
        if packets is None:  # a datapath could not be read: the next report
            return
        self._traffic.observe(packets, time.monotonic())
        self.metrics.rates(self._traffic.rates, self.topo)
        if not short:
            return
        rank = priorities(self._traffic.rates, self._rank, self.conf.offload.traffic_hysteresis)
        if self._partitioner.moves(rank):
            LOG.info("traffic moves room on the NIC: ports ranked %s", ", ".join(
                f"{port} ({self._traffic.rates[port]:.1f}/s)" for port in sorted(rank, key=lambda p: -rank[p])))
            self._rank = rank
            self._wake.set()

    def shutdown(self) -> None:
        """Stop following the database; the datapaths keep what they have."""
        self.cache.stop()
        self.metrics.close()
        try:
            self.register(up=False)
        except HwflowError as exc:
            LOG.warning("could not mark chassis %s down: %s", self.chassis, exc)
        self.tc.close()
        self.dhcp.stop()
        self.ovs.of.close()
        self.ovsdb.close()

    def register(self, up: bool, always: bool = False) -> None:
        """Report this host: write its chassis record if it says something new, and while up keep it alive.

        The record (addresses, offload capabilities, ``up``) is written at start (``always``), at shutdown
        (``up`` False) and whenever what it would say differs from what is stored (the NIC's representors
        changed, or someone edited or removed the record); never just to say the agent still runs, since
        every write wakes each agent holding this chassis. Liveness is the lease ``NbApi.heartbeat``
        refreshes (an etcd lease; a timed mark on SQLite): it lapses after three missed reports.
        ``heartbeat_at`` in the record is when it was last written.
        """
        devices = [
            {"name": r.name, "switch_id": r.switch_id, "nic_driver": r.nic_driver, "firmware": r.firmware,
             "capability_source": r.capability_source, "capabilities": r.capabilities.to_dict()}
            for r in sorted(self._reports.values(), key=lambda r: r.name) if r.offload  # same order, same record
        ]
        wanted = Chassis(
            id=self.chassis, name=self.chassis, tunnel_ip=self.conf.agent.tunnel_ip,
            tunnel_types=list(self.conf.agent.tunnel_types), external_ip=self.conf.agent.external_ip,
            hostname=socket.gethostname(), capabilities={"offload_devices": devices},
            up=up, heartbeat_at=time.time(),
        )
        try:
            if always or self._chassis_differs(wanted):
                self.nb.put_chassis(wanted)
            if up:
                self.nb.heartbeat(self.chassis, 3 * self.conf.agent.report_interval)
        except HwflowError as exc:
            LOG.error("cannot report chassis %s: %s", self.chassis, exc)

    def follow_liveness(self) -> None:
        """Read which chassis are alive (their agents' leases); a chassis that died or came back wakes a pass.

        A dead host writes nothing (it was killed, or lost its power): its record still says it is up, and
        its lease lapses three reports after its last. The topology then takes it as unregistered, so nothing
        tunnels to its ports until it is back (see :meth:`_seen`). An agent stopped cleanly says it is not up
        (its datapaths keep forwarding): its tunnels stay. A database that cannot say leaves the last answer
        in force.
        """
        try:
            alive = frozenset(self.nb.alive_chassis())
        except HwflowError as exc:
            LOG.warning("cannot read which chassis are alive (%s); keeping the last answer", exc)
            return
        if self._alive is not None and alive != self._alive:
            flipped = alive ^ self._alive
            LOG.info("chassis liveness changed: %s", ", ".join(
                f"{name} {'up' if name in alive else 'down'}" for name in sorted(flipped)))
            self._liveness_flipped |= flipped
            self._wake.set()
        self._alive = alive

    def _seen(self, obj: NbObject | None) -> NbObject | None:
        """An object as the topology takes it (:func:`hwflow.agent.view.seen`: a chassis whose agent died is not
        tunnelled to)."""
        return view.seen(obj, self.chassis, self._alive)

    def _chassis_differs(self, wanted: Chassis) -> bool:
        """Whether the stored chassis record is missing or says other than ``wanted`` (its time aside)."""
        try:
            stored = self.nb.get(Chassis, self.chassis)
        except (NotFound, ValidationError):
            return True
        wanted.validate()  # the stored form: canonical addresses, sorted tunnel types
        return _reported(stored) != _reported(wanted)

    # --- one reconcile pass ----------------------------------------------------

    def reconcile_safely(self, full: bool = False) -> None:
        try:
            self.reconcile(full)
        except Exception:  # the daemon keeps serving what it has; the next pass retries
            LOG.exception("reconcile failed; the datapaths keep their current state, retrying on the next pass")

    def reconcile(self, full: bool = False) -> PassResult:
        """One pass: the topology's changes travel as deltas to both datapaths; ``full`` diffs all of it.

        An ordinary pass applies the compiler's delta: the partitioner re-plans what it reaches, OVS gets
        the flow_mods of the delta (``OvsBackend.apply``) and the NIC the rules of the ports whose plan
        changed (``TcBackend.plan_delta``), all from the state the backends hold in memory. A full pass
        (start, the resync timer, after a pass that failed, or when OVS reconnected) plans everything and
        dumps both datapaths to repair what differs. Make-before-break either way: stale NIC rules out
        first, then OVS, then new NIC rules on top of flows that already back them.
        """
        full = full or self._force_full or self.ovs.needs_full_sync
        if full:
            result = self._pass(True)
            self._reported = None  # a full pass repairs the statuses too (someone may have deleted them)
        else:
            # a delta pass allocates little, none of it cyclic: the collector (whose full scans of a big host's
            # state cost tens of ms) runs between passes, not in a write's way
            with gc_paused():
                result = self._pass(False)
        self.report_ports()
        return result

    def report_ports(self) -> None:
        """Report the local ports the last pass programmed as up, and those it no longer holds as down.

        A port is up once a pass got both datapaths in place for it (the pass returned), down when it left
        this host (unplugged, deleted, bound elsewhere) or is administratively down (``Topology.admin_up``:
        its datapaths drop its traffic; Neutron shows such a port DOWN, as ML2/OVS does): only the difference
        from what was reported is written, one small key per port (``NbApi.report_ports``); after a start, a
        full pass or a failed write, what is stored is read back first. Neutron shows a port ACTIVE on it
        (hwflow.neutron.status).
        """
        ports = self.topo.ports
        programmed = frozenset(pid for pid in self.topo.local_port_ids
                               if pid not in ports or self.topo.admin_up(ports[pid]))
        try:
            reported = self._reported
            if reported is None:
                reported = frozenset(status.port for status in self.nb.ports_up(self.chassis)[1])
            if programmed != reported:
                self.nb.report_ports(self.chassis, programmed - reported, reported - programmed)
            self._reported = programmed
        except HwflowError as exc:
            LOG.error("cannot report the status of chassis %s's ports (retrying at the next report): %s",
                      self.chassis, exc)
            self._reported = None

    def _pass(self, full: bool) -> PassResult:
        self._force_full = True  # until this pass is through: a pass that fails leaves the next one full
        result = PassResult()
        began = time.perf_counter()
        self.ovsdb.sync_fixed_ports(self.fixed_ports)  # tunnel ports and uplinks, put back if someone removed them
        ifaces = self.ovsdb.interfaces()
        began = result.clock("ovsdb", began)
        names = frozenset((i.name, i.ifindex) for i in ifaces.values())
        if names != self._iface_names:  # representors come and go with the NIC (a NIC restart: new ifindexes)
            self._set_reports(self._discover())
            self._iface_names = names
            began = result.clock("discover", began)
        self.cache.set_local_ports(ifaces)  # selective topology: fetch what these ports need, drop the rest
        changes = self._topology_changes(ifaces, full)
        began = result.clock("topology", began)
        delta = self.compiler.update(self.topo, changes) if changes else Delta()
        pipeline = self.compiler.pipeline()
        began = result.clock("compile", began)
        ports, local = self.topo.ports, self.topo.local_port_ids
        ofports = self.ofports = {ports[pid].unique_key: ifaces[pid].ofport for pid in local}
        ofports.update(self.ovsdb.fixed_ofports())
        began = result.clock("ofports", began)
        plan, reps = self._plan(pipeline, {ports[pid].unique_key: ifaces[pid] for pid in local},
                                None if full else (delta.added, delta.removed))
        began = result.clock("partition", began)
        tc_changes, wanted = self._tc_changes(plan, reps, ifaces, full or self._partitioner.changed is None)
        began = result.clock("tc_plan", began)
        result.local_ports, result.flows = len(local), len(pipeline)
        result.hw_rules, result.software_only = plan.counts()[1], plan.software_count
        result.hw_removed = self.tc.remove(tc_changes) + len(tc_changes.delete_after)  # those go after install
        began = result.clock("tc_remove", began)
        ovs = self._sync_ovs(pipeline, delta, ofports, full)
        result.ovs_changes = ovs.sent
        began = result.clock("ovs", began)
        result.hw_installed = self.tc.install(tc_changes)
        result.clock("tc_install", began)
        self._force_full = False
        if self._note_refusals(wanted):
            self._wake.set()  # re-plan now so nothing a refused rule shadows stays in hardware
        if tc_changes or ovs.sent:
            LOG.info("reconciled (%s) in %.1f ms: %d local ports, %d flows (%d OVS changes), %d hardware rules "
                     "(%d removed, %d installed), %d paths software-only [%s]", "full" if full else "delta",
                     sum(result.stages.values()) * 1000, result.local_ports, result.flows, result.ovs_changes,
                     result.hw_rules, result.hw_removed, result.hw_installed, result.software_only,
                     " ".join(f"{stage} {seconds * 1000:.1f}" for stage, seconds in result.stages.items()))
        else:
            LOG.debug("pass (%s) changed nothing in %.1f ms", "full" if full else "delta",
                      sum(result.stages.values()) * 1000)
        self.last_pass = result
        self.metrics.observe_pass(result, full, plan, self.tc)
        self.published.passed(self, plan, changed=bool(tc_changes) or bool(ovs.sent), full=full)  # hwflow flows
        return result

    def _sync_ovs(self, pipeline: ir.Pipeline, delta: Delta, ofports: Mapping[int, int], full: bool) -> SyncResult:
        if not full:
            try:
                return self.ovs.apply(delta.added, delta.removed, ofports)
            except FullSyncNeeded:
                LOG.warning("the OpenFlow session to OVS was lost since the last pass: syncing every flow")
        return self.ovs.sync(pipeline.flows, ofports)

    def _topology_changes(self, ifaces: Mapping[str, Iface], full: bool) -> list[Change]:
        """Bring the topology view up to the cache: only the objects the cache says changed since the last pass
        (``Topology.apply_all``); a full pass, or a cache that cannot say (it resynced), compares everything
        (``Topology.update``)."""
        drained = self.cache.drain()
        flipped, self._liveness_flipped = self._liveness_flipped, set()
        if full or drained is None:
            return view.update_topology(self.topo, self.cache.held(), ifaces, self._alive)
        if any(isinstance(obj, Chassis) and obj.up and self._alive is not None and obj.id not in self._alive
               for obj in drained.values()):
            self.follow_liveness()  # a host (re)registering: its lease is new, not lapsed
            flipped |= self._liveness_flipped
            self._liveness_flipped = set()
        drained = {key: self._seen(obj) for key, obj in drained.items() if key[0] in view.TOPOLOGY_KINDS}
        held = self.cache.objects(Chassis.kind) if flipped else {}
        for name in flipped:
            if name in held and (Chassis.kind, name) not in drained:
                drained[Chassis.kind, name] = self._seen(held[name])

        def port(pid: str) -> Port | None:
            return drained.get((Port.kind, pid)) if (Port.kind, pid) in drained else self.topo.ports.get(pid)

        local = {pid for pid in ifaces if (p := port(pid)) is not None and view.is_here(p, self.chassis)}
        return self.topo.apply_all(drained, local, view.TOPOLOGY_KINDS)

    def _tc_changes(self, plan: Plan, reps: Mapping[int, Representor], ifaces: Mapping[str, Iface],
                    full: bool) -> tuple[TcDiff, list[tuple[HwRule, str, object]]]:
        """The NIC changes of this pass, and the (rule, endpoint, flower rule) pairs they were made from.

        Flower rules are kept per port and chain: a delta pass turns into flower rules only the chains of the
        ports whose plan may have changed (``Partitioner.changed``) that were planned again (``Plan.refreshed``)
        or newly reached, and hands the difference to ``TcBackend.plan_delta``; a full pass (or a representor
        that changed under a port) turns every port's and lets ``TcBackend.plan`` diff them against a dump of
        each representor.
        """
        flags = TC_FLAGS[self.conf.offload.tc_policy]
        moved = any(self._encoded_reps.get(port, rep) != rep for port, rep in reps.items())
        self._encoded_reps = dict(reps)
        everything = full or moved
        changed = set(self._flower) | set(reps) if everything else (self._partitioner.changed or set()) | (
            set(self._flower) ^ set(reps))
        refreshed = None if everything else plan.refreshed
        wanted: list[tuple[HwRule, str, object]] = []
        added: list[tuple[str, object]] = []
        removed: list[tuple[str, object]] = []
        for port in changed:
            old = self._flower.pop(port, {})
            new = {}
            if port in reps:
                for chain, rules in plan.units_of(port):
                    kept = old.get(chain)
                    if kept is not None and chain and refreshed is not None and chain not in refreshed:
                        new[chain] = kept
                    elif rules:
                        new[chain] = _encode(rules, kept or (), reps, flags, self._tunnels)
                        wanted += new[chain]
            if new:
                self._flower[port] = new
            for chain in old.keys() | new.keys():
                before, after = old.get(chain, []), new.get(chain, [])
                if before is after:
                    continue
                before_pairs, after_pairs = {(ep, fr) for _, ep, fr in before}, {(ep, fr) for _, ep, fr in after}
                added += [pair for pair in after_pairs if pair not in before_pairs]
                removed += [pair for pair in before_pairs if pair not in after_pairs]
        managed = self._managed_representors(ifaces)
        if everything:
            return self.tc.plan(((ep, fr) for units in self._flower.values() for rules in units.values()
                                 for _, ep, fr in rules), managed), wanted
        return self.tc.plan_delta(added, removed), wanted

    def _managed_representors(self, ifaces: Mapping[str, Iface]) -> set[Representor]:
        """Representors whose tc rules this agent owns, and so dumps and cleans.

        Every offload-capable interface plugged into the bridge with an
        iface-id, whether or not its port still exists (a deleted port's own
        rules must go too), and the tunnel devices of the tunnels offloaded.
        An unplugged VF's rules go too: the backend cleans every device it
        holds rules on (TcBackend.plan). A VF nobody plugged is left alone.
        """
        current = set()
        for iface in ifaces.values():
            report = self._reports.get(iface.name)
            if report is not None and report.offload and report.tc_endpoint:
                current.add(Representor(report.ifindex, report.tc_endpoint))
        current.update(rep for _, rep in self._nic_fixed.values())
        self._managed = current
        return current

    def _plan(self, pipeline: ir.Pipeline, local: Mapping[int, Iface],
              delta: tuple[list[ir.Flow], list[ir.Flow]] | None) -> tuple[Plan, dict[int, Representor]]:
        offload: dict[int, PortOffload] = {}
        reps: dict[int, Representor] = {}
        for key, iface in local.items():
            report = self._reports.get(iface.name)
            if report is None or not report.offload or not report.tc_endpoint:
                continue
            offload[key] = PortOffload(key, report.switch_id or "", report.capabilities)
            reps[key] = Representor(report.ifindex, report.tc_endpoint)
        for key, (entry, rep) in self._nic_fixed.items():
            offload[key], reps[key] = entry, rep
        if not self.conf.offload.enabled:
            return Plan(), reps
        types = [ir.ETH_TYPES_BY_NAME[name] for name in self.conf.offload.ethertypes]
        return self._partitioner.plan(pipeline, offload, types, self._refused, delta, self._rank), reps

    def _set_reports(self, reports: dict[str, DeviceReport]) -> None:
        """The NIC's devices as discovery found them, and what they give the plan besides VFs (tunnel devices and
        provider uplinks): worked out once a discovery, not on every pass."""
        self._reports = reports
        tunnels = self._tunnel_devices()
        self._tunnels = {key: endpoint for key, (_, _, endpoint) in tunnels.items()}
        self._nic_fixed = {key: (entry, rep) for key, (entry, rep, _) in tunnels.items()} | self._nic_uplinks()

    def _tunnel_devices(self) -> dict[int, tuple[PortOffload, Representor, TunnelEndpoint]]:
        """The tunnel ports a NIC carries: each type this chassis tunnels with whose tunnel device a driver
        reported offloadable, on the UDP port OVS's tunnel port uses (else the NIC would take packets OVS's port
        does not, or the other way round: that tunnel stays OVS's, with a warning)."""
        local_ip = self.conf.agent.tunnel_ip
        if not local_ip or ipaddress.ip_address(local_ip).version != 4:
            return {}
        udp_ports = {"vxlan": self.conf.agent.vxlan_udp_port, "geneve": self.conf.agent.geneve_udp_port}
        found: dict[int, tuple[PortOffload, Representor, TunnelEndpoint]] = {}
        for report in sorted(self._reports.values(), key=lambda r: r.name):
            kind = report.tunnel_type
            if report.port_role != TUNNEL or not report.offload or not report.tc_endpoint \
                    or kind not in self.conf.agent.tunnel_types or ir.TUNNEL_PORTS[kind] in found:
                continue
            if report.tunnel_dst_port != udp_ports[kind]:
                if report.name not in self._tunnel_warned:
                    self._tunnel_warned.add(report.name)
                    LOG.warning("tunnel device %s listens on UDP port %s, OVS's %s port on %d: %s stays in software "
                                "(set [agent] %s_udp_port to the device's port)", report.name,
                                report.tunnel_dst_port, kind, udp_ports[kind], kind, kind)
                continue
            key = ir.TUNNEL_PORTS[kind]
            found[key] = (PortOffload(key, report.switch_id or "", report.capabilities),
                          Representor(report.ifindex, report.tc_endpoint),
                          TunnelEndpoint(int(ipaddress.ip_address(local_ip)), udp_ports[kind]))
        return found

    def _nic_uplinks(self) -> dict[int, tuple[PortOffload, Representor]]:
        """The provider uplinks a NIC carries: a physical network mapped (``[agent] bridge_mappings``) to an
        uplink representor a driver reported offloadable. Its VLAN push (to the network) and pop (from it) are
        then NIC rules like any other, on the VFs' representors and on the uplink's."""
        found: dict[int, tuple[PortOffload, Representor]] = {}
        for physnet, interface in sorted(self.bridge_mappings.items()):
            report = self._reports.get(interface)
            if report is None or report.port_role != UPLINK or not report.offload or not report.tc_endpoint:
                continue
            key = ir.physnet_port(physnet)
            found[key] = (PortOffload(key, report.switch_id or "", report.capabilities),
                          Representor(report.ifindex, report.tc_endpoint))
        return found

    def _note_refusals(self, wanted: list[tuple[HwRule, str, object]]) -> bool:
        refused = self.tc.refused()
        fresh = {}
        for rule, _, flower_rule in wanted:
            reason = refused.get(identity(flower_rule))
            if reason is not None:
                fresh[SHARED if rule.shared else rule.in_port, rule.match] = reason
        grew = not fresh.keys() <= self._refused.keys()
        self._refused.update(fresh)
        return grew

    def _discover(self) -> dict[str, DeviceReport]:
        try:
            return {r.name: r for r in self._devices()}
        except Exception:
            LOG.exception("NIC discovery failed; offloading nothing until it works")
            return {}


def _reported(chassis: Chassis) -> str:
    """What an agent reports in its chassis record, as stored (JSON): all but the time it wrote it."""
    fields = ("tunnel_ip", "tunnel_types", "external_ip", "hostname", "capabilities", "up")
    return json.dumps({f: getattr(chassis, f) for f in fields}, sort_keys=True)


# --- the daemon ---------------------------------------------------------------


def build_agent(conf: cfg.ConfigOpts) -> Agent:
    nb = NbApi.from_url(conf.database.url, conf)
    agent_conf = conf.agent
    ovsdb = OvsdbClient(agent_conf.ovsdb_connection, agent_conf.integration_bridge)
    endpoint = agent_conf.openflow_endpoint or f"unix:{agent_conf.ovs_rundir}/{agent_conf.integration_bridge}.mgmt"
    ovs = OvsBackend(ovsdb, OpenFlowConnection(endpoint))
    drivers = inventory.load_drivers(conf)
    return Agent(conf, nb, ovsdb, ovs, TcBackend(), lambda: inventory.inventory(drivers, discover()),
                 Compiler.from_file(layout_path(conf.apps.layout)))

def _encode(rules: Iterable[HwRule], old: Iterable[tuple[HwRule, str, object]], reps: Mapping[int, Representor],
            flags: int, tunnels: Mapping[int, TunnelEndpoint]) -> list[tuple[HwRule, str, object]]:
    """(rule, endpoint, flower rule) for each rule; one the port had before keeps its encoding (most of a changed
    port's rules are unchanged), unless a representor it names is another now."""
    def key(rule: HwRule) -> tuple:
        return rule, reps.get(rule.in_port), reps.get(rule.output)

    known = {key(rule): (endpoint, flower_rule) for rule, endpoint, flower_rule in old}
    return [(rule, *(known.get(key(rule)) or to_flower(rule, reps, flags, tunnels))) for rule in rules]



def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="hwflow-agent",
        description="The hwflow per-host agent: follows the northbound database and programs this "
        "host's NIC (tc-flower) and Open vSwitch so that both carry the logical network.",
        epilog="Options come from oslo.config files: see etc/hwflow.conf.sample.",
    )
    parser.add_argument("--config-file", action="append", default=[], metavar="PATH",
                        help="oslo.config file to read (may be repeated)")
    parser.add_argument("--debug", action="store_true", help="log debug messages")
    parser.add_argument("--log-file", metavar="PATH", help="log here instead of stderr")
    args = parser.parse_args(argv)
    conf = hwconf.new_conf([a for path in args.config_file for a in ("--config-file", path)])
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO, filename=args.log_file,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        agent = build_agent(conf)
        if not agent.start(stop):
            return 0
    except (HwflowError, OSError, RuntimeError, ValueError) as exc:  # ValueError: a bad option value
        LOG.error("cannot start: %s", exc)
        return 1
    LOG.info("hwflow-agent up as chassis %s", agent.chassis)
    try:
        agent.run(stop)
    finally:
        agent.shutdown()
        LOG.info("hwflow-agent stopped; the datapaths keep their state")
    return 0


if __name__ == "__main__":
    sys.exit(main())

