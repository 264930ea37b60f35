"""Security groups: stateful filtering of what leaves (egress) and reaches (ingress) a local port.

Two apps, because the two checks sit at two places of the pipeline: egress
right after a packet is classified and port-secured (before routing), and
ingress once L2 has chosen the destination port in ``outport`` (before
delivery). A port without security groups is not filtered.

Owners: ``sg_egress:defaults`` / ``sg_ingress:defaults`` (the pass-through).
"""

from __future__ import annotations

from collections.abc import Iterator

from hwflow.apps.base import App
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import Change, Topology

PRIO_MISS = 0


class _SecurityGroupStage(App):
    table: str

    @property
    def defaults(self) -> str:
        return f"{self.spec.name}:defaults"

    def owners(self, topo: Topology) -> Iterator[str]:
        yield self.defaults

    def owner_flows(self, owner: str, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        if owner == self.defaults:
            yield ir.Flow(layout.table(self.table), PRIO_MISS, ir.Match.of(), (layout.goto("out"),), owner)

    def affected(self, change: Change, topo: Topology) -> Iterator[str]:
        return iter(())


class SgEgressApp(_SecurityGroupStage):
    """What a local port may send."""

    table = "egress"
    spec = AppSpec(name="sg_egress", tables=("egress",), entries={"in": "egress"}, exits=("out",))


class SgIngressApp(_SecurityGroupStage):
    """What a local port may receive."""

    table = "ingress"
    spec = AppSpec(name="sg_ingress", tables=("ingress",), entries={"in": "ingress"}, exits=("out",))
