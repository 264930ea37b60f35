"""L2 switching between the local ports of each logical network.

Packets arrive with their network key in ``metadata`` (see the classifier).
Known unicast MACs go to their port; broadcast and multicast go to every
local port of the network (OVS, like the interpreter, never sends a packet
back out of the port it came in on). Unknown unicast is dropped. Tunnels to
ports on other chassis come with the multi-host work.

Owners: ``port:<id>`` for a port's unicast flow, ``network:<id>`` for the
network's flood flow (whose port list changes as local ports come and go).
"""

from __future__ import annotations

from collections.abc import Iterator

from hwflow.apps.base import App, network_of, network_owner, port_owner
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import KIND_LOCAL, KIND_NETWORK, KIND_PORT, Change, Topology

PRIO_UNICAST = 100
PRIO_FLOOD = 50
FLOOD = ir.Match.of(eth_dst=(ir.MULTICAST_BIT, ir.MULTICAST_BIT)).fields


def mac_to_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


class L2App(App):
    spec = AppSpec(name="l2", tables=("lookup",), entries={"in": "lookup"})

    def owners(self, topo: Topology) -> Iterator[str]:
        networks = set()
        for port in topo.local_ports():
            yield port_owner(port.id)
            networks.add(port.network_id)
        yield from (network_owner(n) for n in sorted(networks))

    def owner_flows(self, owner: str, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        kind, oid = owner.split(":", 1)
        table = layout.table("lookup")
        if kind == "port":
            port = topo.ports.get(oid)
            network = port and topo.networks.get(port.network_id)
            if port is None or network is None or not topo.is_local(oid):
                return
            yield ir.Flow(table, PRIO_UNICAST, ir.Match.of(metadata=network.unique_key, eth_dst=mac_to_int(port.mac)),
                          (ir.Output(port.unique_key),), owner)
            return
        network = topo.networks.get(oid)
        ports = topo.local_ports_of(oid)
        if network is None or not ports:
            return
        match = ir.Match((*FLOOD, ir.FieldMatch("metadata", network.unique_key, ir.full_mask("metadata"))))
        yield ir.Flow(table, PRIO_FLOOD, match, tuple(ir.Output(p.unique_key) for p in ports), owner)

    def affected(self, change: Change, topo: Topology) -> Iterator[str]:
        if change.kind == KIND_NETWORK:
            yield network_owner(change.id)
            yield from (port_owner(p.id) for p in topo.local_ports_of(change.id))
        elif change.kind in (KIND_PORT, KIND_LOCAL):
            yield port_owner(change.id)
            yield from (network_owner(n) for n in network_of(change))
