"""Keeps the bridge's hwflow flows equal to the desired IR flows.

Desired state, not event scripts. The backend holds in memory what the
bridge has under the hwflow cookie marker (canonical key -> instructions,
cookie and the IR flow it came from), as its last :meth:`OvsBackend.sync` or
:meth:`OvsBackend.apply` left it:

- :meth:`~OvsBackend.apply` takes a *delta* of the desired set (flows added,
  flows removed, the current port bindings) and sends only the flow_mods it
  needs, computed from memory without a dump: the cost follows the change.
- :meth:`~OvsBackend.sync` is the full reconcile (start, reconnect, repair
  timer): it dumps what is installed, diffs it against the whole desired set
  and sends the difference; it also refreshes the memory, and counts (and
  logs) as *repairs* the flows where the dump disagreed with it, which is a
  bug or someone else changing the bridge.

Both send ADD / MODIFY_STRICT / DELETE_STRICT in one batch with a barrier,
deletions last. Unchanged flows are never re-sent, so their packet counters
survive; flows without the marker (someone else's) are never touched.

The batch is built without os-ken objects: IR flows compile to program words
(translate.FlowCompiler) that the native encoder turns into flow_mods written
in large chunks (native.py, openflow.OpenFlowConnection.send_program).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import NamedTuple

from os_ken.ofproto import ofproto_v1_3 as ofp

from hwflow.backends.ovs import native, translate
from hwflow.backends.ovs.openflow import OpenFlowConnection, ProgramWriter, Rejected
from hwflow.backends.ovs.ovsdb import FixedPort, OvsdbClient
from hwflow.pipeline import ir
from hwflow.util.gc import gc_paused

LOG = logging.getLogger(__name__)
TUNNEL_PORT_NAMES = {"vxlan": "hwf-vxlan", "geneve": "hwf-geneve"}
PART_FLOWS = 8192  # flow_mods per part handed to the writer thread: about 1 MiB, one encoder chunk


@dataclasses.dataclass(frozen=True)
class SyncResult:
    added: int
    modified: int
    deleted: int
    skipped_unbound: tuple[translate.UnboundPort, ...]
    errors: tuple[Rejected, ...]
    repairs: int = 0  # sync only: flows where the dump disagreed with the state held in memory

    @property
    def sent(self) -> int:
        return self.added + self.modified + self.deleted


@dataclasses.dataclass(frozen=True)
class FlowRecord:
    key: translate.FlowKey
    cookie: int
    table: int
    priority: int
    n_packets: int
    n_bytes: int


class FullSyncNeeded(RuntimeError):
    """:meth:`OvsBackend.apply` cannot trust the state it holds in memory: call :meth:`OvsBackend.sync`."""


class Held(NamedTuple):
    """One installed flow as the backend holds it in memory (keyed by its translate.FlowKey)."""

    instructions: translate.InstructionsKey
    cookie: int
    source: ir.Flow | None  # the IR flow it was compiled from; None if only a dump told us (a refused change)


def port_refs(flow: ir.Flow) -> list[int]:
    """The logical ports a flow's OpenFlow form depends on (an in_port match, Output actions): when one of
    them is bound to another ofport, or unbound, the flow compiles differently. May name a port more than
    once, or one the compiler would not reach (after a Drop): harmless, the flow is merely recompiled."""
    refs = [value for field, value, mask in flow.match if field == "in_port" and mask]
    for action in flow.actions:
        if action.__class__ is ir.Output:
            refs.append(action.port)
    return refs


class OvsBackend:
    """The software datapath: one bridge, reached through OVSDB and OpenFlow.

    Holds the bridge's hwflow flows in memory (see the module docstring). Use :meth:`sync` (the whole
    desired set) at start, after :attr:`needs_full_sync` turns true and on the repair timer; :meth:`apply`
    (a delta) for everything else. :attr:`repairs` counts, over the backend's life, the flows a sync found
    different from what memory said.

    How an agent pass drives both backends, make-before-break (stale NIC rules off, OVS, new NIC rules
    on)::

        if full:  # start, ovs.needs_full_sync, the repair timer
            changes = tc.plan(all_hw_rules, managed_representors)
            tc.remove(changes); ovs.sync(all_flows, ports); tc.install(changes)
        else:
            changes = tc.plan_delta(hw_added, hw_removed)
            tc.remove(changes)
            try:
                ovs.apply(flows_added, flows_removed, ports)  # ports: every binding, as sync takes them
            except FullSyncNeeded:  # the session dropped since the check: vswitchd may have restarted
                ovs.sync(all_flows, ports)
            tc.install(changes)

    A delta is relative to the desired set the backend was last given (the flows of the last sync, changed
    by every apply since). An apply that raises (ValueError, TranslationError) leaves that set as it was:
    the next delta must start from it, or the next call be a sync.
    """

    def __init__(self, ovsdb: OvsdbClient, of: OpenFlowConnection, catalog: native.Catalog | None = None) -> None:
        self.ovsdb = ovsdb
        self.of = of
        self.compiler = translate.FlowCompiler(catalog or native.Catalog())
        self.encoder = native.best_encoder(self.compiler.catalog)
        self.repairs = 0
        self._held: dict[translate.FlowKey, Held] = {}
        self._by_port: dict[int, set[translate.FlowKey]] = {}  # logical port -> held flows naming it
        self._unbound: dict[ir.Flow, int] = {}  # desired flows left out, -> the unbound port they wait for
        self._waiting: dict[int, dict[ir.Flow, None]] = {}  # unbound port -> the flows waiting for it
        self._ports: dict[int, int] = {}  # the bindings the held flows were compiled with
        self._generation: int | None = None  # the OpenFlow session generation memory is valid for

    # --- the state held in memory --------------------------------------------------------------

    @property
    def needs_full_sync(self) -> bool:
        """True when :meth:`apply` cannot be used and the next call must be :meth:`sync`: no sync yet, the
        OpenFlow session was lost or re-established since (vswitchd may have restarted, which empties its
        flow table), or a sync or apply failed half-way (what the bridge holds is unknown)."""
        return self._generation is None or self._generation != self.of.generation

    def installed_flows(self) -> dict[translate.FlowKey, tuple[translate.InstructionsKey, int]]:
        """The state held in memory, key -> (instructions, cookie): what a dump should show."""
        return {key: (held.instructions, held.cookie) for key, held in self._held.items()}

    @property
    def held(self) -> Mapping[translate.FlowKey, Held]:
        """The state held in memory itself, not a copy (the next sync or apply changes or replaces it): for a
        reader in another thread that copies it with one ``dict()`` (hwflow.agent.published), where copying
        100,000 entries on every pass would slow the pass."""
        return self._held

    def unbound_flows(self) -> dict[ir.Flow, int]:
        """Desired flows left out because they name an unbound port, -> that port. Installed by the
        :meth:`apply` whose ``ports`` binds it."""
        return dict(self._unbound)

    def _forget(self) -> None:
        """What the bridge holds is unknown (a failure half-way): only a sync may follow."""
        self._generation = None

    def _hold(self, key: translate.FlowKey, held: Held) -> None:
        old = self._held.get(key)
        if old is not None and old.source is not None:
            if held.source is not None and held.source == old.source:
                self._held[key] = held
                return
            self._unindex(key, old.source)
        self._held[key] = held
        if held.source is not None:
            for port in port_refs(held.source):
                self._by_port.setdefault(port, set()).add(key)

    def _drop(self, key: translate.FlowKey) -> None:
        old = self._held.pop(key, None)
        if old is not None and old.source is not None:
            self._unindex(key, old.source)

    def _unindex(self, key: translate.FlowKey, source: ir.Flow) -> None:
        for port in port_refs(source):
            keys = self._by_port.get(port)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_port[port]

    def _wait(self, exc: translate.UnboundPort) -> None:
        self._unwait(exc.flow)
        self._unbound[exc.flow] = exc.port_key
        self._waiting.setdefault(exc.port_key, {})[exc.flow] = None

    def _unwait(self, flow: ir.Flow) -> bool:
        if flow not in self._unbound:
            return False
        port = self._unbound.pop(flow)
        flows = self._waiting[port]
        del flows[flow]
        if not flows:
            del self._waiting[port]
        return True

    def _dump(self) -> dict[translate.FlowKey, translate.InstalledFlow]:
        replies = self.of.dump_flows_raw(translate.COOKIE_MARK, translate.COOKIE_MARK_MASK)
        return {flow.key: flow for flow in self.compiler.decode_flow_stats(replies)}

    # --- full reconcile --------------------------------------------------------------------------

    def sync(self, flows: Iterable[ir.Flow], ports: Mapping[int, int]) -> SyncResult:
        """Make the bridge's hwflow flows equal to ``flows`` (the whole desired set): dump, diff, send.

        ``ports`` maps logical port keys to ofports; flows naming a port it lacks are left out (reported in
        ``skipped_unbound``, and kept: a later :meth:`apply` whose ``ports`` binds it installs them), as if
        the port did not exist yet. Refreshes the state held in memory; where the dump disagreed with it (a
        flow missing, extra or different) the difference is repaired like any other, counted in
        ``repairs`` (here and on the backend) and logged as a warning, unless memory was not trusted
        anyway (first sync, after a reconnect or a failure).

        Raises TranslationError for a flow OpenFlow cannot express: that is an app bug, not a state. The
        difference streams out in parts of PART_FLOWS while later flows are still being compiled, so when
        it raises, the additions and modifications of the flows before the bad one may already be applied
        (never a deletion: those go last); :attr:`needs_full_sync` stays true and the next sync reconciles.
        """
        with gc_paused(keep=True):  # the state held in memory lives on, acyclic: frozen, never scanned
            try:
                return self._sync(flows, ports)
            except BaseException:
                self._forget()
                raise

    def _sync(self, flows: Iterable[ir.Flow], ports: Mapping[int, int]) -> SyncResult:
        trusted = not self.needs_full_sync
        self._forget()
        self.of.connect()
        generation = self.of.generation  # a session lost or redialled from here on: memory stays untrusted
        installed = self._dump()
        repairs = self._disagreements(installed) if trusted else 0
        desired: dict[translate.FlowKey, Held] = {}  # becomes the state held in memory
        by_port: dict[int, set[translate.FlowKey]] = {}
        unbound: list[translate.UnboundPort] = []
        self.compiler.forget_owners()
        compile_flow, flow_mod = self.compiler.compile, self.compiler.flow_mod
        words: list[int] = []
        added = modified = pending = 0
        with self.of.writer(self.encoder) as writer:
            for flow in flows:
                try:
                    want = compile_flow(flow, ports)
                except translate.UnboundPort as exc:
                    unbound.append(exc)
                    continue
                key = want.key
                other = desired.get(key)
                if other is not None:
                    if (other.instructions, other.cookie) != (want.instructions, want.cookie):
                        raise ValueError(f"two flows want the same OpenFlow table/priority/match with different "
                                         f"actions: {flow} vs {other.source}; fix the app that emits them")
                    continue
                desired[key] = Held(want.instructions, want.cookie, flow)
                for port in port_refs(flow):
                    by_port.setdefault(port, set()).add(key)
                have = installed.get(key)
                if have is None:
                    words += flow_mod(key[0], key[1], want.cookie, 0, ofp.OFPFC_ADD, want.body)
                    added += 1
                elif (have.instructions, have.cookie) != (want.instructions, want.cookie):
                    words += _update(flow_mod, have.cookie, want)
                    modified += 1
                else:
                    continue
                pending += 1
                if pending == PART_FLOWS:
                    writer.add(words, pending)
                    words, pending = [], 0
            stale = [(key, have) for key, have in installed.items() if key not in desired]
            for key, have in stale:
                # Exact cookie: deletes this one installed flow and nothing that merely shares its key.
                words += flow_mod(key[0], key[1], have.cookie, translate.ALL_ONES_64, ofp.OFPFC_DELETE_STRICT,
                                  self.compiler.key_body(key))
            writer.add(words, pending + len(stale))
            errors = writer.finish()
        self._held, self._by_port = desired, by_port
        refused = self._refused_keys(errors)
        for key in refused or ():  # what OVS refused stays as the dump showed it
            have = installed.get(key)
            if have is None:
                self._drop(key)
            else:
                self._hold(key, Held(have.instructions, have.cookie, None))
        self._unbound, self._waiting = {}, {}
        for exc in unbound:
            self._wait(exc)
        self._ports = dict(ports)
        if refused is not None and self.of.generation == generation:
            self._generation = generation
        for error in errors:
            LOG.error("OVS refused %s", error)
        self.repairs += repairs
        result = SyncResult(added, modified, len(stale), tuple(unbound), tuple(errors), repairs)
        LOG.debug("OVS sync: %d added, %d modified, %d deleted, %d unbound, %d errors, %d repairs", added,
                  modified, len(stale), len(unbound), len(errors), repairs)
        return result

    def _disagreements(self, installed: Mapping[translate.FlowKey, translate.InstalledFlow]) -> int:
        """How many flows the dump shows differently from memory; logged as a warning when any."""
        held = self._held
        extra = different = 0
        for key, have in installed.items():
            mine = held.get(key)
            if mine is None:
                extra += 1
            elif mine.cookie != have.cookie or mine.instructions != have.instructions:
                different += 1
        missing = len(held) - (len(installed) - extra)  # held keys the dump lacks
        repairs = missing + extra + different
        if repairs:
            LOG.warning("OVS: the dump of %s disagrees with the flows hwflow holds in memory: %d missing, "
                        "%d extra, %d different; repairing %d flow(s) (a bug, or someone else changed the "
                        "bridge's hwflow flows)", self.of.endpoint, missing, extra, different, repairs)
        return repairs

    def _refused_keys(self, errors: Iterable[Rejected]) -> list[translate.FlowKey] | None:
        """The keys of the refused flow_mods; None (and memory forgotten) if one cannot be read back."""
        keys = []
        for error in errors:
            msg = error.msg
            try:
                keys.append(translate.flow_key(msg.table_id, msg.priority, msg.match))
            except (AttributeError, ValueError, TypeError):  # not a flow_mod we can read back: trust nothing
                LOG.error("cannot tell which flow OVS refused (%s); the next call must be a sync", error)
                self._forget()
                return None
        return keys

    # --- deltas -------------------------------------------------------------------------------------

    def apply(self, added: Iterable[ir.Flow], removed: Iterable[ir.Flow], ports: Mapping[int, int]
              ) -> SyncResult:
        """Apply a change of the desired set, computed from the state held in memory: no dump.

        ``added``: flows now desired that were not (or whose actions or owner changed); ``removed``: flows
        desired before (by an earlier sync or apply) that no longer are, as they were given then; a flow
        whose actions change is removed in its old form and added in its new one. ``ports``: the current
        logical port -> ofport bindings, all of them (as sync takes them); the backend compares them with
        the previous ones and recompiles what depends on a binding that changed: a flow left out because it
        named an unbound port is installed once ``ports`` binds it (and listed again in ``skipped_unbound``
        while it does not), a flow naming a port that was unbound since is deleted and waits for it, a flow
        naming a port bound to another ofport is replaced.

        Sends only the flow_mods the delta needs, in one batch and barrier: an ADD for a key not installed;
        for a key installed with other instructions or cookie, a MODIFY_STRICT (an ADD over the same key
        when the cookie changes, which OVS applies in place): never a delete and an add, so no packet sees
        neither; a DELETE_STRICT for a key removed and not re-added, sent last. Flows OVS refuses are
        reported in ``errors`` and kept in memory as they were (a refused ADD: not installed; the next sync
        retries it).

        Raises FullSyncNeeded when :attr:`needs_full_sync` is true (nothing is sent: call :meth:`sync` with
        the whole desired set), ValueError for two flows with one key and different actions and
        TranslationError for a flow OpenFlow cannot express (both before anything is sent, memory
        unchanged). When the connection fails during the write, the error propagates and
        :attr:`needs_full_sync` turns true.
        """
        with gc_paused():
            return self._apply(added, removed, ports)

    def _apply(self, added: Iterable[ir.Flow], removed: Iterable[ir.Flow], ports: Mapping[int, int]
               ) -> SyncResult:
        if self.needs_full_sync:
            raise FullSyncNeeded(f"OVS at {self.of.endpoint}: no sync yet, or the OpenFlow session was lost or "
                                 "re-established since the last one (vswitchd may have restarted); call sync()")
        generation = self._generation
        old_ports, ports = self._ports, dict(ports)
        compile_flow = self.compiler.compile
        gone: set[ir.Flow] = set()
        doomed: dict[translate.FlowKey, None] = {}  # held keys to delete unless desired again
        for flow in removed:
            gone.add(flow)
            if flow in self._unbound:
                continue  # never installed: it waited for a port
            try:
                was = compile_flow(flow, old_ports)
            except translate.TranslationError:  # not installed either (sync or apply would have raised)
                continue
            held = self._held.get(was.key)
            if held is not None and (held.source == flow or (held.instructions, held.cookie) == (
                    was.instructions, was.cookie)):
                doomed[was.key] = None
        redo: dict[ir.Flow, None] = dict.fromkeys(added)
        if ports != old_ports:
            for port in {p for p in old_ports.keys() | ports.keys() if old_ports.get(p) != ports.get(p)}:
                for key in self._by_port.get(port, ()):
                    source = self._held[key].source
                    doomed[key] = None  # compiled with the old binding: replaced by its recompiled form
                    if source not in gone:
                        redo[source] = None  # type: ignore[index]
                for flow in self._waiting.get(port, {}):
                    if flow not in gone:
                        redo[flow] = None
        desired: dict[translate.FlowKey, translate.Compiled] = {}
        unbound: list[translate.UnboundPort] = []
        for flow in redo:
            try:
                want = compile_flow(flow, ports)
            except translate.UnboundPort as exc:
                unbound.append(exc)
                continue
            other = desired.get(want.key)
            if other is not None and (other.instructions, other.cookie) != (want.instructions, want.cookie):
                raise ValueError(f"two flows want the same OpenFlow table/priority/match with different "
                                 f"actions: {flow} vs {other.source}; fix the app that emits them")
            desired[want.key] = want

        # Nothing can fail any more before sending: update memory, remembering what each key held.
        before: dict[translate.FlowKey, Held | None] = {}
        flow_mod = self.compiler.flow_mod
        parts = _Parts()
        added_n = modified = 0
        for key, want in desired.items():
            have = self._held.get(key)
            before[key] = have
            if have is None:
                parts.add(flow_mod(key[0], key[1], want.cookie, 0, ofp.OFPFC_ADD, want.body))
                added_n += 1
            elif (have.instructions, have.cookie) != (want.instructions, want.cookie):
                parts.add(_update(flow_mod, have.cookie, want))
                modified += 1
            self._hold(key, Held(want.instructions, want.cookie, want.source))
        for key in doomed:  # last: a key re-added above was modified in place instead
            if key in desired:
                continue
            have = self._held[key]
            before[key] = have
            parts.add(flow_mod(key[0], key[1], have.cookie, translate.ALL_ONES_64, ofp.OFPFC_DELETE_STRICT,
                               self.compiler.key_body(key)))
            self._drop(key)
        deleted = parts.messages - added_n - modified
        for flow in gone:
            self._unwait(flow)
        for flow in desired.values():
            self._unwait(flow.source)
        for exc in unbound:
            self._wait(exc)
        self._ports = ports

        errors: list[Rejected] = []
        if parts.messages:
            try:
                with self.of.writer(self.encoder) as writer:
                    parts.write(writer)
                    errors = writer.finish()
            except BaseException:
                self._forget()
                raise
        for key in self._refused_keys(errors) or ():
            was_held = before.get(key)
            if was_held is None:
                self._drop(key)
            else:
                self._hold(key, was_held)
        for error in errors:
            LOG.error("OVS refused %s", error)
        if self.of.generation != generation:  # the write went to a new session: the bridge is unknown
            self._forget()
        result = SyncResult(added_n, modified, deleted, tuple(unbound), tuple(errors))
        LOG.debug("OVS delta: %d added, %d modified, %d deleted, %d unbound, %d errors", added_n, modified,
                  deleted, len(unbound), len(errors))
        return result

    # --- reading the bridge ---------------------------------------------------------------------------

    def ofports(self, port_keys: Mapping[str, int]) -> dict[int, int]:
        """Logical port key -> ofport for the bound interfaces, given iface-id -> logical port key."""
        return {port_keys[iface_id]: iface.ofport for iface_id, iface in self.ovsdb.interfaces().items()
                if iface_id in port_keys}

    def flow_stats(self) -> list[FlowRecord]:
        """hwflow's flows as the bridge has them now (a dump), with their counters."""
        return [FlowRecord(key, f.cookie, key[0], key[1], f.n_packets, f.n_bytes)
                for key, f in self._dump().items()]

    def port_stats(self) -> dict[int, tuple[int, int]]:
        return self.of.port_stats()

    def port_counters(self) -> dict[int, tuple[int, int, int, int]]:
        """ofport -> (rx_packets, rx_bytes, tx_packets, tx_bytes)."""
        return self.of.port_counters()


def fixed_ports(tunnel_ip: str, tunnel_types: Iterable[str], udp_ports: Mapping[str, int],
                uplinks: Mapping[str, str]) -> list[FixedPort]:
    """The tunnel endpoints and provider uplinks the agent keeps on the integration bridge.

    One flow-based tunnel port per type (the flows set ``tun_id`` and ``tun_dst``), bound to
    ``tunnel_ip``: the userspace datapath routes what it encapsulates by its own route table,
    learnt from the kernel's, so ``tunnel_ip`` must be on a bridge port of the same vswitchd.
    Each uplink (physical network -> interface) is that interface plugged in as is.
    """
    ports = [FixedPort(TUNNEL_PORT_NAMES[kind], ir.TUNNEL_PORTS[kind], kind,
                       (("remote_ip", "flow"), ("key", "flow"), ("local_ip", tunnel_ip),
                        ("dst_port", str(udp_ports[kind]))))
             for kind in sorted(set(tunnel_types))]
    physnets: dict[int, str] = {}
    for physnet, interface in sorted(uplinks.items()):
        key = ir.physnet_port(physnet)
        if key in physnets:
            raise ValueError(f"physical networks {physnets[key]!r} and {physnet!r} get the same uplink port key "
                             f"{key:#x} (ir.physnet_port); rename one of them")
        physnets[key] = physnet
        ports.append(FixedPort(interface, key))
    return ports


def _update(flow_mod: Callable[..., list[int]], cookie: int, want: translate.Compiled) -> list[int]:
    """The flow_mod that changes a flow installed with ``cookie`` into ``want``, in place.

    OVS never rewrites a cookie on MODIFY under OpenFlow 1.2+ (ofp-flow.c), so a new owner needs an
    ADD over the same strict key, which OVS applies as a replace that carries the counters over. A
    MODIFY_STRICT's cookie mask limits it to a flow carrying our marker."""
    table, priority, _ = want.key
    if cookie != want.cookie:
        return flow_mod(table, priority, want.cookie, 0, ofp.OFPFC_ADD, want.body)
    return flow_mod(table, priority, want.cookie, translate.COOKIE_MARK_MASK, ofp.OFPFC_MODIFY_STRICT, want.body)


class _Parts:
    """Flow_mod program words cut into parts of PART_FLOWS messages, for a ProgramWriter."""

    def __init__(self) -> None:
        self.parts: list[tuple[list[int], int]] = []
        self._words: list[int] = []
        self._count = 0
        self.messages = 0

    def add(self, words: list[int]) -> None:
        self._words += words
        self._count += 1
        self.messages += 1
        if self._count == PART_FLOWS:
            self.flush()

    def flush(self) -> None:
        if self._count:
            self.parts.append((self._words, self._count))
            self._words, self._count = [], 0

    def write(self, writer: ProgramWriter) -> None:
        self.flush()
        for words, count in self.parts:
            writer.add(words, count)
