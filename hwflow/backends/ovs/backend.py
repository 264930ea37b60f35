"""Keeps the bridge's hwflow flows equal to the desired IR flows.

Desired state, not event scripts: every sync dumps what is installed under
the hwflow cookie marker, diffs it by canonical key and sends only the
difference (ADD / MODIFY_STRICT / DELETE_STRICT) in one batch with a barrier.
Unchanged flows are never re-sent, so their packet counters survive; flows
without the marker (someone else's) are never touched.

The batch is built without os-ken objects: IR flows compile to program words
(translate.FlowCompiler) that the native encoder turns into flow_mods written
in large chunks (native.py, openflow.OpenFlowConnection.send_program).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping

from os_ken.ofproto import ofproto_v1_3 as ofp

from hwflow.backends.ovs import native, translate
from hwflow.backends.ovs.openflow import OpenFlowConnection, Rejected
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


class OvsBackend:
    """The software datapath: one bridge, reached through OVSDB and OpenFlow."""

    def __init__(self, ovsdb: OvsdbClient, of: OpenFlowConnection, catalog: native.Catalog | None = None) -> None:
        self.ovsdb = ovsdb
        self.of = of
        self.compiler = translate.FlowCompiler(catalog or native.Catalog())
        self.encoder = native.best_encoder(self.compiler.catalog)

    def _installed(self) -> dict[translate.FlowKey, translate.InstalledFlow]:
        replies = self.of.dump_flows_raw(translate.COOKIE_MARK, translate.COOKIE_MARK_MASK)
        return {flow.key: flow for flow in self.compiler.decode_flow_stats(replies)}

    def sync(self, flows: Iterable[ir.Flow], ports: Mapping[int, int]) -> SyncResult:
        """Flows naming an unbound port are left out (and reported), as if the port did not exist yet.

        Raises TranslationError for a flow OpenFlow cannot express: that is an app bug, not a state. The
        difference streams out in parts of PART_FLOWS while later flows are still being compiled, so when
        it raises, the additions and modifications of the flows before the bad one may already be applied
        (never a deletion: those go last); the next sync reconciles.
        """
        with gc_paused():
            return self._sync(flows, ports)

    def _sync(self, flows: Iterable[ir.Flow], ports: Mapping[int, int]) -> SyncResult:
        installed = self._installed()
        desired: dict[translate.FlowKey, translate.Compiled] = {}
        unbound: list[translate.UnboundPort] = []
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
                desired[key] = want
                have = installed.get(key)
                if have is None:
                    words += flow_mod(key[0], key[1], want.cookie, 0, ofp.OFPFC_ADD, want.body)
                    added += 1
                elif (have.instructions, have.cookie) != (want.instructions, want.cookie):
                    words += _update(flow_mod, have, want)
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
        for error in errors:
            LOG.error("OVS refused %s", error)
        result = SyncResult(added, modified, len(stale), tuple(unbound), tuple(errors))
        LOG.debug("OVS sync: %d added, %d modified, %d deleted, %d unbound, %d errors", added, modified,
                  len(stale), len(unbound), len(errors))
        return result

    def ofports(self, port_keys: Mapping[str, int]) -> dict[int, int]:
        """Logical port key -> ofport for the bound interfaces, given iface-id -> logical port key."""
        return {port_keys[iface_id]: iface.ofport for iface_id, iface in self.ovsdb.interfaces().items()
                if iface_id in port_keys}

    def flow_stats(self) -> list[FlowRecord]:
        return [FlowRecord(key, f.cookie, key[0], key[1], f.n_packets, f.n_bytes)
                for key, f in self._installed().items()]

    def port_stats(self) -> dict[int, tuple[int, int]]:
        return self.of.port_stats()


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


def _update(flow_mod: Callable[..., list[int]], have: translate.InstalledFlow, want: translate.Compiled
            ) -> list[int]:
    """OVS never rewrites a cookie on MODIFY under OpenFlow 1.2+ (ofp-flow.c), so a new owner needs an
    ADD over the same strict key, which OVS applies as a replace that carries the counters over. A
    MODIFY_STRICT's cookie mask limits it to a flow carrying our marker."""
    table, priority, _ = want.key
    if have.cookie != want.cookie:
        return flow_mod(table, priority, want.cookie, 0, ofp.OFPFC_ADD, want.body)
    return flow_mod(table, priority, want.cookie, translate.COOKIE_MARK_MASK, ofp.OFPFC_MODIFY_STRICT, want.body)
