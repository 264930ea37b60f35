"""Port classification: which logical network a packet from a local port is on.

Every packet starts here. A packet from a known local port leaves with the
port's network key in ``metadata``; a packet from any other port is dropped
(no flow matches). Later stages rely on ``metadata`` and never on in_port to
know the network.
"""

from __future__ import annotations

from collections.abc import Iterator

from hwflow.apps.base import LocalPortApp, port_owner
from hwflow.model.objects import Port
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import KIND_NETWORK, Change, Topology

PRIO_PORT = 100


class ClassifierApp(LocalPortApp):
    spec = AppSpec(name="classifier", tables=("ports",), entries={"in": "ports"}, exits=("out",))

    def port_flows(self, port: Port, topo: Topology, layout: AppLayout, owner: str) -> Iterator[ir.Flow]:
        network = topo.networks.get(port.network_id)
        match = ir.Match.of(in_port=port.unique_key)
        if network is None:  # the port arrived before its network: keep it isolated
            yield ir.Flow(layout.table("ports"), PRIO_PORT, match, (ir.Drop(),), owner)
            return
        actions = (ir.SetField("metadata", network.unique_key), layout.goto("out"))
        yield ir.Flow(layout.table("ports"), PRIO_PORT, match, actions, owner)

    def affected(self, change: Change, topo: Topology) -> Iterator[str]:
        if change.kind == KIND_NETWORK:  # its key is what packets are tagged with
            yield from (port_owner(p.id) for p in topo.local_ports_of(change.id))
        yield from super().affected(change, topo)
