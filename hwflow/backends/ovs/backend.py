"""Keeps the bridge's hwflow flows equal to the desired IR flows.

Desired state, not event scripts: every sync dumps what is installed under
the hwflow cookie marker, diffs it by canonical key and sends only the
difference (ADD / MODIFY_STRICT / DELETE_STRICT) in one batch with a barrier.
Unchanged flows are never re-sent, so their packet counters survive; flows
without the marker (someone else's) are never touched.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Mapping

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from hwflow.backends.ovs import translate
from hwflow.backends.ovs.openflow import OpenFlowConnection, Rejected
from hwflow.backends.ovs.ovsdb import OvsdbClient
from hwflow.pipeline import ir

LOG = logging.getLogger(__name__)


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


@dataclasses.dataclass(frozen=True)
class _Desired:
    mod: parser.OFPFlowMod
    instructions: translate.InstructionsKey
    source: ir.Flow


class OvsBackend:
    """The software datapath: one bridge, reached through OVSDB and OpenFlow."""

    def __init__(self, ovsdb: OvsdbClient, of: OpenFlowConnection) -> None:
        self.ovsdb = ovsdb
        self.of = of

    def _desired(self, flows: Iterable[ir.Flow], ports: Mapping[int, int],
                 ) -> tuple[dict[translate.FlowKey, _Desired], list[translate.UnboundPort]]:
        desired: dict[translate.FlowKey, _Desired] = {}
        unbound: list[translate.UnboundPort] = []
        for flow in flows:
            try:
                mod = translate.to_flow_mod(flow, ports)
            except translate.UnboundPort as exc:
                unbound.append(exc)
                continue
            key = translate.flow_key(mod.table_id, mod.priority, mod.match)
            entry = _Desired(mod, translate.instructions_key(mod.instructions), flow)
            other = desired.get(key)
            conflicting = other is not None and (other.instructions, other.mod.cookie) != (
                entry.instructions, mod.cookie)
            if conflicting:
                raise ValueError(f"two flows want the same OpenFlow table/priority/match with different "
                                 f"actions: {flow} vs {other.source}; fix the app that emits them")
            desired[key] = entry
        return desired, unbound

    def _installed(self) -> dict[translate.FlowKey, parser.OFPFlowStats]:
        stats = self.of.dump_flows(translate.COOKIE_MARK, translate.COOKIE_MARK_MASK)
        return {translate.flow_key(s.table_id, s.priority, s.match): s for s in stats}

    def sync(self, flows: Iterable[ir.Flow], ports: Mapping[int, int]) -> SyncResult:
        """Flows naming an unbound port are left out (and reported), as if the port did not exist yet.

        Raises TranslationError for a flow OpenFlow cannot express: that is an app bug, not a state.
        """
        desired, unbound = self._desired(flows, ports)
        installed = self._installed()
        batch: list[parser.OFPFlowMod] = []
        added = modified = 0
        for key, want in desired.items():
            have = installed.get(key)
            if have is None:
                batch.append(want.mod)
                added += 1
            elif (translate.instructions_key(have.instructions), have.cookie) != (want.instructions,
                                                                                  want.mod.cookie):
                batch.append(_update(have, want.mod))
                modified += 1
        stale = [stats for key, stats in installed.items() if key not in desired]
        batch += [_delete_strict(stats) for stats in stale]
        errors = self.of.send(batch) if batch else []
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
        return [FlowRecord(key, s.cookie, s.table_id, s.priority, s.packet_count, s.byte_count)
                for key, s in self._installed().items()]

    def port_stats(self) -> dict[int, tuple[int, int]]:
        return self.of.port_stats()


def _modify_strict(mod: parser.OFPFlowMod) -> parser.OFPFlowMod:
    """The cookie mask limits the modify to a flow carrying our marker."""
    return parser.OFPFlowMod(
        mod.datapath, cookie=mod.cookie, cookie_mask=translate.COOKIE_MARK_MASK, table_id=mod.table_id,
        command=ofp.OFPFC_MODIFY_STRICT, priority=mod.priority, buffer_id=ofp.OFP_NO_BUFFER,
        out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=mod.match, instructions=mod.instructions,
    )


def _update(have: parser.OFPFlowStats, want: parser.OFPFlowMod) -> parser.OFPFlowMod:
    """OVS never rewrites a cookie on MODIFY under OpenFlow 1.2+ (ofp-flow.c), so a new owner needs an
    ADD over the same strict key, which OVS applies as a replace that carries the counters over."""
    return want if have.cookie != want.cookie else _modify_strict(want)


def _delete_strict(stats: parser.OFPFlowStats) -> parser.OFPFlowMod:
    """Exact cookie: deletes this one installed flow and nothing that merely shares its key."""
    return parser.OFPFlowMod(
        translate.DATAPATH, cookie=stats.cookie, cookie_mask=translate.ALL_ONES_64, table_id=stats.table_id,
        command=ofp.OFPFC_DELETE_STRICT, priority=stats.priority, buffer_id=ofp.OFP_NO_BUFFER,
        out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, match=stats.match,
    )
