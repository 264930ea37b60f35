"""Port classification: which logical network a packet from a local port is on.

Every packet starts here. A packet from a known local port leaves with the
port's network key in ``metadata``; a packet from any other port is dropped
(no flow matches). Later stages rely on ``metadata`` and never on in_port to
know the network.
"""

from __future__ import annotations

from collections.abc import Iterator

from hwflow.apps.base import App
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import Topology

PRIO_PORT = 100


class ClassifierApp(App):
    spec = AppSpec(name="classifier", tables=("ports",), entries={"in": "ports"}, exits=("out",))

    def flows(self, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        table = layout.table("ports")
        for port in topo.local_ports():
            network = topo.networks.get(port.network_id)
            match = ir.Match.of(in_port=port.unique_key)
            if network is None:  # the port arrived before its network: keep it isolated
                yield ir.Flow(table, PRIO_PORT, match, (ir.Drop(),), f"port:{port.id}")
                continue
            actions = (ir.SetField("metadata", network.unique_key), layout.goto("out"))
            yield ir.Flow(table, PRIO_PORT, match, actions, f"port:{port.id}")
