"""The reference interpreter: run one packet through the IR.

It is the oracle: tests compare OVS, the simulated NIC and the HW/SW split
against it. It follows the semantics written in :mod:`hwflow.pipeline.ir`
and OpenFlow's quirks that matter here: output to the ingress port is
skipped, a TTL that would reach zero drops the packet, and ``ct(table=N)``
re-enters the pipeline at table N with the connection's state set.

Connection tracking is modelled by :class:`ConnTracker`, which a caller
keeps across packets (stateful security groups need the reply direction
to find the connection the request committed).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from hwflow.pipeline import ir

MAX_STEPS = 64  # more tables than this on one packet's path is a pipeline bug, not traffic

Key = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Step:
    table: int
    flow: ir.Flow | None  # None: table miss


@dataclasses.dataclass(frozen=True)
class Verdict:
    outputs: tuple[tuple[int, Mapping[str, int]], ...]  # (port, packet as sent)
    steps: tuple[Step, ...]
    punt: str | None = None  # the reason, when the packet went to the agent

    @property
    def kind(self) -> str:
        if self.punt is not None:
            return "punt"
        return "output" if self.outputs else "drop"

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(port for port, _ in self.outputs)


class ConnTracker:
    """Connections by zone and 5-tuple; the reply direction is the reversed tuple."""

    def __init__(self) -> None:
        self._committed: dict[tuple[int, Key], int] = {}  # (zone, forward key) -> ct_mark

    @staticmethod
    def _keys(packet: Mapping[str, int]) -> tuple[Key, Key] | None:
        proto = packet.get("ip_proto")
        if proto is None:
            return None
        src = packet.get("ipv4_src", packet.get("ipv6_src", 0))
        dst = packet.get("ipv4_dst", packet.get("ipv6_dst", 0))
        if proto in (6, 17):
            sport = packet.get("tcp_src", packet.get("udp_src", 0))
            dport = packet.get("tcp_dst", packet.get("udp_dst", 0))
            return (proto, src, dst, sport, dport), (proto, dst, src, dport, sport)
        return (proto, src, dst), (proto, dst, src)

    def state(self, zone: int, packet: Mapping[str, int]) -> int:
        keys = self._keys(packet)
        if keys is None:
            return ir.CT_TRK | ir.CT_INV
        forward, reverse = keys
        if (zone, forward) in self._committed:
            return ir.CT_TRK | ir.CT_EST
        if (zone, reverse) in self._committed:
            return ir.CT_TRK | ir.CT_EST | ir.CT_RPL
        return ir.CT_TRK | ir.CT_NEW

    def commit(self, zone: int, packet: Mapping[str, int]) -> None:
        keys = self._keys(packet)
        if keys is not None and (zone, keys[1]) not in self._committed:
            self._committed.setdefault((zone, keys[0]), 0)


def lookup(pipeline: ir.Pipeline, table: int, packet: Mapping[str, int]) -> ir.Flow | None:
    """The flow that wins in ``table``: highest priority among the matching ones."""
    for flow in pipeline.table(table):  # already highest priority first
        if flow.match.covers(packet):
            return flow
    return None


def run(pipeline: ir.Pipeline, packet: Mapping[str, int], conntrack: ConnTracker | None = None) -> Verdict:
    """Run ``packet`` (field -> value; must carry ``in_port``) from table 0."""
    if "in_port" not in packet:
        raise ValueError("the packet needs an in_port")
    tracker = conntrack or ConnTracker()
    state = dict(packet)
    for name in ir.INTERNAL_FIELDS:
        state.setdefault(name, 0)
    outputs: list[tuple[int, Mapping[str, int]]] = []
    steps: list[Step] = []
    table: int | None = 0
    while table is not None:
        if len(steps) >= MAX_STEPS:
            raise RuntimeError(f"pipeline loops: more than {MAX_STEPS} tables visited")
        flow = lookup(pipeline, table, state)
        steps.append(Step(table, flow))
        current, table = table, None
        if flow is None:
            break
        for action in flow.actions:
            if isinstance(action, ir.Output):
                if action.port != state["in_port"]:
                    outputs.append((action.port, _visible(state)))
            elif isinstance(action, ir.OutputInPort):
                outputs.append((state["in_port"], _visible(state)))
            elif isinstance(action, ir.GotoTable):
                if action.table <= current:
                    raise RuntimeError(f"goto from table {current} to {action.table} goes backwards")
                table = action.table
            elif isinstance(action, ir.Punt):
                return Verdict(tuple(outputs), tuple(steps), punt=action.reason)
            elif isinstance(action, ir.Drop) or not _mutate(state, action, tracker):
                table = None
                break
            elif isinstance(action, ir.Conntrack) and action.table is not None:
                table = action.table
                break
    return Verdict(tuple(outputs), tuple(steps))


def _mutate(state: dict[str, int], action: ir.Action, tracker: ConnTracker) -> bool:
    """Apply a header/metadata action; False when the packet dies of it (TTL)."""
    if isinstance(action, ir.SetField):
        state[action.field] = action.value
    elif isinstance(action, ir.Move):
        state[action.dst] = state.get(action.src, 0) & ir.full_mask(action.dst)
    elif isinstance(action, ir.PushVlan):
        state["vlan_vid"] = action.vid
    elif isinstance(action, ir.PopVlan):
        state.pop("vlan_vid", None)
    elif isinstance(action, ir.DecTtl):
        if "ip_ttl" in state:
            if state["ip_ttl"] <= 1:
                return False
            state["ip_ttl"] -= 1
    elif isinstance(action, ir.Conntrack):
        if action.table is not None:  # the state as the packet found it, as OVS reports it after ct(commit)
            state["ct_state"] = tracker.state(action.zone, state)
            state["ct_zone"] = action.zone
        if action.commit:
            tracker.commit(action.zone, state)
    return True


def _visible(state: Mapping[str, int]) -> dict[str, int]:
    """The packet as it leaves: internal fields are not on the wire."""
    return {k: v for k, v in state.items() if k not in ir.INTERNAL_FIELDS and k != "in_port"}
