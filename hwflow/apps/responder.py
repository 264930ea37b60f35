"""ARP answered on the host for the ports' own addresses: requests never flood the network.

Every IPv4 address of every port of a network this host has ports on (local
or remote: the topology holds them all) is known, with its MAC. So an ARP
request on the network for such an address is answered right here, back out
of the asking port, the way l3 answers for router ports: the other VMs never
see it, and no broadcast crosses a tunnel.

Not answered (passed on to ``out``, so L2 floods them as before):

* a gratuitous ARP (sender and target address the same): an announcement,
  not a question;
* a request from the owner itself for its own address (e.g. an RFC 5227
  probe, sent from 0.0.0.0): answering it would make the owner think its
  address is taken. A probe from any other port is answered: the address is.

Owners: ``responder:defaults`` (the pass-through), ``port:<id>`` (its answers).
"""

from __future__ import annotations

from collections.abc import Iterator

from hwflow.apps.base import App, arp_answer, ipv4_int, mac_int, owner_id, port_owner
from hwflow.model.objects import Network, Port
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import KIND_LOCAL, KIND_NETWORK, KIND_PORT, Change, Topology

PRIO_ANSWER = 100
PRIO_PASS = 110  # above the answer: what must not be answered
PRIO_MISS = 0
DEFAULTS = "responder:defaults"


class ResponderApp(App):
    spec = AppSpec(name="responder", tables=("arp",), entries={"in": "arp"}, exits=("out",))

    def owners(self, topo: Topology) -> Iterator[str]:
        yield DEFAULTS
        yield from (port_owner(p) for p in sorted(topo.ports))

    def owner_flows(self, owner: str, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        if owner == DEFAULTS:
            yield ir.Flow(layout.table("arp"), PRIO_MISS, ir.Match.of(), (layout.goto("out"),), owner)
            return
        port: Port | None = topo.ports.get(owner_id(owner))
        network: Network | None = port and topo.networks.get(port.network_id)
        if port is None or network is None or not port.mac:
            return
        for address in port.ips:
            if ":" not in address:
                yield from self._answers(topo, layout, port, network.unique_key, address, owner)

    @staticmethod
    def _answers(topo: Topology, layout: AppLayout, port: Port, net: int, address: str,
                 owner: str) -> Iterator[ir.Flow]:
        table, value = layout.table("arp"), ipv4_int(address)
        request = {"metadata": net, "eth_type": ir.ETH_TYPE_ARP, "arp_op": 1, "arp_tpa": value}
        yield ir.Flow(table, PRIO_PASS, ir.Match.of(**request, arp_spa=value), (layout.goto("out"),), owner)
        if topo.is_local(port.id):
            yield ir.Flow(table, PRIO_PASS, ir.Match.of(**request, in_port=port.unique_key), (layout.goto("out"),),
                          owner)
        yield arp_answer(table, PRIO_ANSWER, net, address, mac_int(port.mac), owner)

    def affected(self, change: Change, topo: Topology) -> Iterator[str]:
        if change.kind in (KIND_PORT, KIND_LOCAL):
            yield port_owner(change.id)
        elif change.kind == KIND_NETWORK:
            yield from (port_owner(p.id) for p in topo.ports_of(change.id))
