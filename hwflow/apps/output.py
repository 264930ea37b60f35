"""Egress dispatch: deliver a packet to the logical port (or flood group) in ``outport``.

This is the one stage that knows where a logical port is. A local port is an
``Output`` to it; a network's flood group is an ``Output`` to each of the
network's local ports (neither OVS nor the interpreter sends a packet back
out of the port it came in on). Ports on other chassis and provider uplinks
come with the multi-host work, here and nowhere else.

Keeping location out of L2 (which only chooses ``outport``) lets stages that
filter per destination port, such as ingress security groups, sit between
the two without knowing about tunnels.

Owners: ``port:<id>`` (a local port's delivery), ``network:<id>`` (its flood
group).
"""

from __future__ import annotations

from collections.abc import Iterator

from hwflow.apps.base import App, network_of, network_owner, port_owner
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import KIND_LOCAL, KIND_NETWORK, KIND_PORT, Change, Topology

PRIO_DELIVER = 100


class OutputApp(App):
    spec = AppSpec(name="output", tables=("deliver",), entries={"in": "deliver"})

    def owners(self, topo: Topology) -> Iterator[str]:
        networks = set()
        for port in topo.local_ports():
            yield port_owner(port.id)
            networks.add(port.network_id)
        yield from (network_owner(n) for n in sorted(networks))

    def owner_flows(self, owner: str, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        kind, oid = owner.split(":", 1)
        table = layout.table("deliver")
        if kind == "port":
            if topo.is_local(oid):
                port = topo.ports[oid]
                yield ir.Flow(table, PRIO_DELIVER, ir.Match.of(outport=port.unique_key),
                              (ir.Output(port.unique_key),), owner)
            return
        network = topo.networks.get(oid)
        ports = topo.local_ports_of(oid)
        if network is None or not ports:
            return
        yield ir.Flow(table, PRIO_DELIVER, ir.Match.of(outport=ir.flood_group(network.unique_key)),
                      tuple(ir.Output(p.unique_key) for p in ports), owner)

    def affected(self, change: Change, topo: Topology) -> Iterator[str]:
        if change.kind == KIND_NETWORK:
            yield network_owner(change.id)
        elif change.kind in (KIND_PORT, KIND_LOCAL):
            yield port_owner(change.id)
            yield from (network_owner(n) for n in network_of(change))
