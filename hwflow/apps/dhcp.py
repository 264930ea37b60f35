"""DHCP answered by the agent itself: DHCP requests from local ports are punted.

Sits right after port security (which admits DHCP discovery from 0.0.0.0)
and before the security groups, so a port's security groups cannot cut it
off from its own address. Everything that is not DHCP for a served subnet
goes on through ``out``.

Owners: ``dhcp:defaults`` (the pass-through).
"""

from __future__ import annotations

from collections.abc import Iterator

from hwflow.apps.base import App
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import Change, Topology

PRIO_MISS = 0
DEFAULTS = "dhcp:defaults"


class DhcpApp(App):
    spec = AppSpec(name="dhcp", tables=("dhcp",), entries={"in": "dhcp"}, exits=("out",))

    def owners(self, topo: Topology) -> Iterator[str]:
        yield DEFAULTS

    def owner_flows(self, owner: str, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        if owner == DEFAULTS:
            yield ir.Flow(layout.table("dhcp"), PRIO_MISS, ir.Match.of(), (layout.goto("out"),), owner)

    def affected(self, change: Change, topo: Topology) -> Iterator[str]:
        return iter(())
