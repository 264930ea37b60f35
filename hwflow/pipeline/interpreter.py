"""The reference interpreter: run one packet through the IR.

It is the oracle: tests compare OVS, the simulated NIC and the HW/SW split
against it. It follows the semantics written in :mod:`hwflow.pipeline.ir`
and OpenFlow's one quirk that matters here: output to the ingress port is
skipped unless asked for explicitly.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from hwflow.pipeline import ir

MAX_STEPS = 64  # a goto chain longer than this is a pipeline bug, not traffic



@dataclasses.dataclass(frozen=True)
class Step:
    table: int
    flow: ir.Flow | None  # None: table miss


@dataclasses.dataclass(frozen=True)
class Verdict:
    outputs: tuple[tuple[int, Mapping[str, int]], ...]  # (port, packet as sent)
    steps: tuple[Step, ...]

    @property
    def kind(self) -> str:
        return "output" if self.outputs else "drop"

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(port for port, _ in self.outputs)


def lookup(pipeline: ir.Pipeline, table: int, packet: Mapping[str, int]) -> ir.Flow | None:
    """The flow that wins in ``table``: highest priority among the matching ones."""
    for flow in pipeline.table(table):  # already highest priority first
        if flow.match.covers(packet):
            return flow
    return None


def run(pipeline: ir.Pipeline, packet: Mapping[str, int]) -> Verdict:
    """Run ``packet`` (field -> value; must carry ``in_port``) from table 0."""
    if "in_port" not in packet:
        raise ValueError("the packet needs an in_port")
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
        table = None
        if flow is None:
            break
        for action in flow.actions:
            if isinstance(action, ir.Output):
                if action.port != state["in_port"]:
                    outputs.append((action.port, _visible(state)))
            elif isinstance(action, ir.SetField):
                state[action.field] = action.value
            elif isinstance(action, ir.GotoTable):
                if action.table <= steps[-1].table:
                    raise RuntimeError(f"goto from table {steps[-1].table} to {action.table} goes backwards")
                table = action.table
            elif isinstance(action, ir.Drop):
                table = None
                break
    return Verdict(tuple(outputs), tuple(steps))


def _visible(state: Mapping[str, int]) -> dict[str, int]:
    """The packet as it leaves: internal fields are not on the wire."""
    return {k: v for k, v in state.items() if k not in ir.INTERNAL_FIELDS and k != "in_port"}
