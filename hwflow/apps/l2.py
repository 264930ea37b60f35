"""L2 switching between the local ports of each logical network.

Classification puts the port's network key in ``metadata``; the lookup table
sends known unicast MACs to their port and broadcast/multicast to every
local port of the network (OVS, like the interpreter, never sends a packet
back out of the port it came in on). Unknown unicast is dropped. Tunnels to
ports on other chassis come with the multi-host work.
"""

from __future__ import annotations

from collections.abc import Iterator

from hwflow.apps.base import App
from hwflow.model.objects import Port
from hwflow.pipeline import ir, tables
from hwflow.pipeline.topology import Topology

PRIO_PORT = 100
PRIO_UNICAST = 100
PRIO_FLOOD = 50


def mac_to_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


class L2App(App):
    name = "l2"

    def flows(self, topo: Topology) -> Iterator[ir.Flow]:
        local = topo.local_ports()
        for port in local:
            yield self._classify(topo, port)
        by_network: dict[str, list[Port]] = {}
        for port in local:
            by_network.setdefault(port.network_id, []).append(port)
        for network_id, ports in sorted(by_network.items()):
            network = topo.networks.get(network_id)
            if network is None:
                continue
            yield from self._lookup(network.unique_key, network_id, ports)

    @staticmethod
    def _classify(topo: Topology, port: Port) -> ir.Flow:
        network = topo.networks.get(port.network_id)
        if network is None:  # the cache has the port before its network
            return ir.Flow(tables.CLASSIFY, PRIO_PORT, ir.Match.of(in_port=port.unique_key), (ir.Drop(),),
                           f"port:{port.id}")
        return ir.Flow(
            tables.CLASSIFY,
            PRIO_PORT,
            ir.Match.of(in_port=port.unique_key),
            (ir.SetField("metadata", network.unique_key), ir.GotoTable(tables.L2_LOOKUP)),
            f"port:{port.id}",
        )

    @staticmethod
    def _lookup(net_key: int, network_id: str, ports: list[Port]) -> Iterator[ir.Flow]:
        for port in ports:
            yield ir.Flow(
                tables.L2_LOOKUP,
                PRIO_UNICAST,
                ir.Match.of(metadata=net_key, eth_dst=mac_to_int(port.mac)),
                (ir.Output(port.unique_key),),
                f"port:{port.id}",
            )
        yield ir.Flow(
            tables.L2_LOOKUP,
            PRIO_FLOOD,
            ir.Match.of(metadata=net_key, eth_dst=(ir.MULTICAST_BIT, ir.MULTICAST_BIT)),
            tuple(ir.Output(p.unique_key) for p in ports),
            f"network:{network_id}",
        )
