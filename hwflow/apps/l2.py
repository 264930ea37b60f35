"""L2 switching: which logical port a frame on a network is for.

Packets arrive with their network key in ``metadata`` (see the classifier)
and leave through ``out`` with the chosen logical port in ``outport``: the
destination port for a known unicast MAC, the network's flood group
(:func:`hwflow.pipeline.ir.flood_group`) for broadcast and multicast.
Unknown unicast is dropped (a controller knows every MAC on its networks).
Where a port is (this host, another chassis, a provider uplink) is the
egress stages' business, not L2's: see :mod:`hwflow.apps.output`.

Owners: ``port:<id>`` for a port's unicast flow (every port of a network
that has a local port: remote ones are reached the same way), and
``network:<id>`` for the network's flood flow.
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


def local_networks(topo: Topology) -> set[str]:
    return {port.network_id for port in topo.local_ports()}


class L2App(App):
    spec = AppSpec(name="l2", tables=("lookup",), entries={"in": "lookup"}, exits=("out",))

    def owners(self, topo: Topology) -> Iterator[str]:
        networks = local_networks(topo)
        for network_id in sorted(networks):
            yield from (port_owner(p.id) for p in topo.ports_of(network_id))
            yield network_owner(network_id)

    def owner_flows(self, owner: str, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        kind, oid = owner.split(":", 1)
        table = layout.table("lookup")
        if kind == "port":
            port = topo.ports.get(oid)
            network = port and topo.networks.get(port.network_id)
            if port is None or network is None or not topo.local_ports_of(port.network_id):
                return
            yield ir.Flow(table, PRIO_UNICAST, ir.Match.of(metadata=network.unique_key, eth_dst=mac_to_int(port.mac)),
                          (ir.SetField("outport", port.unique_key), layout.goto("out")), owner)
            return
        network = topo.networks.get(oid)
        if network is None or not topo.local_ports_of(oid):
            return
        match = ir.Match((*FLOOD, ir.FieldMatch("metadata", network.unique_key, ir.full_mask("metadata"))))
        yield ir.Flow(table, PRIO_FLOOD, match,
                      (ir.SetField("outport", ir.flood_group(network.unique_key)), layout.goto("out")), owner)

    def affected(self, change: Change, topo: Topology) -> Iterator[str]:
        if change.kind == KIND_NETWORK:
            yield network_owner(change.id)
            yield from (port_owner(p.id) for p in topo.ports_of(change.id))
        elif change.kind in (KIND_PORT, KIND_LOCAL):
            yield port_owner(change.id)
            # a local port coming or going may be the network's first or last here, which brings in (or takes
            # away) every port's flows; the topology cannot say what the count was before a batch of changes
            networks = network_of(change)
            local = (change.kind == KIND_LOCAL or change.new is None or change.id in topo.local_port_ids
                     or len(networks) > 1)
            for network_id in networks:
                yield network_owner(network_id)
                if local:
                    yield from (port_owner(p.id) for p in topo.ports_of(network_id))
