"""L2 switching between the local ports of each logical network.

Packets arrive with their network key in ``metadata`` (see the classifier).
Known unicast MACs go to their port; broadcast and multicast go to every
local port of the network (OVS, like the interpreter, never sends a packet
back out of the port it came in on). Unknown unicast is dropped. Tunnels to
ports on other chassis come with the multi-host work.
"""

from __future__ import annotations

from collections.abc import Iterator

from hwflow.apps.base import App
from hwflow.model.objects import Port
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import Topology

PRIO_UNICAST = 100
PRIO_FLOOD = 50


def mac_to_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


class L2App(App):
    spec = AppSpec(name="l2", tables=("lookup",), entries={"in": "lookup"})

    def flows(self, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        table = layout.table("lookup")
        by_network: dict[str, list[Port]] = {}
        for port in topo.local_ports():
            by_network.setdefault(port.network_id, []).append(port)
        for network_id, ports in sorted(by_network.items()):
            network = topo.networks.get(network_id)
            if network is None:
                continue
            net_key = network.unique_key
            for port in ports:
                yield ir.Flow(table, PRIO_UNICAST, ir.Match.of(metadata=net_key, eth_dst=mac_to_int(port.mac)),
                              (ir.Output(port.unique_key),), f"port:{port.id}")
            yield ir.Flow(table, PRIO_FLOOD,
                          ir.Match.of(metadata=net_key, eth_dst=(ir.MULTICAST_BIT, ir.MULTICAST_BIT)),
                          tuple(ir.Output(p.unique_key) for p in ports), f"network:{network_id}")
