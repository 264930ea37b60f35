"""L2 switching: which logical port a frame on a network is for.

Packets arrive with their network key in ``metadata`` (see the classifier)
and leave with the chosen logical port in ``outport``: the destination port
for a known unicast MAC, the network's flood group
(:func:`hwflow.pipeline.ir.flood_group`) for broadcast and multicast.
Unknown unicast is dropped (a controller knows every MAC on its networks).
They leave through ``out`` (to the egress stages: what a local port may
receive), except a unicast packet for a port that is not here (another
chassis, a provider uplink), which leaves through ``remote``, straight to
delivery: its own host filters what it receives, and the egress stages
would only pass it on (a partitioner's walk of every remote destination
went through them twice, their DHCP and ICMPv6 bypasses and their
pass-through, to find both end alike). How a port is reached is
:mod:`hwflow.apps.output`'s business.

Two lookup tables, one per way in:

- ``lookup`` (entry ``in``, from L3): a packet of a local port, or one a
  router here put on the network, may be for any port of the network;
- ``tunnel`` (entry ``tunnel``, from the classifier's ``tunnel`` exit): for
  a packet from another chassis (a tunnel port or a provider uplink), it
  holds only the local ports' unicast flows and the flood, so anything else
  misses and drops (split horizon made explicit, as OVN delivers what a
  tunnel brings only to its own ports). Its sender delivered to every
  other destination itself; before, such a packet found a remote port's
  flow and left by the port it came in by, which OpenFlow skips, a drop all
  the same. What a packet from the tunnel can reach is now what is here, so
  the partitioner walks a tunnel device's chains over the local
  destinations, not every destination of the network (issue 12: a quarter
  of a host's leaves). A router's MAC is in neither table: routing is L3's,
  before L2, and a packet from another chassis was routed by its sender.

Both tables are meeting points (``AppSpec.meets``), whichever wires feed
them: the partitioner hands a path over there to a chain per network, which
every local port of the network (``lookup``) or every network a router joins
shares, and which keeps a tunnel device's rules in a small chain per network
(``tunnel``) that a port's change re-plans alone.

A network is switched here while it is *present*: it has a local port, or
it is a NAT network (:func:`nat_networks`: a router's gateway network, the
external network of a local port's floating IP), whose outside hosts (the
upstream router behind the provider uplink) reach this host's FIPs and
SNAT address with no port of the network here.

Owners: ``port:<id>`` for a port's unicast flows (every port of a present
network in ``lookup``: remote ones are reached the same way; a local port in
``tunnel`` too, so its becoming local or remote, a change of that owner,
moves it in or out there and changes its exit), and ``network:<id>`` for the network's flood
flows (both tables).
"""

from __future__ import annotations

from collections.abc import Iterator

from hwflow.apps.base import OWNER_NETWORK, OWNER_PORT, App, mac_int, network_of, network_owner, port_owner
from hwflow.model.objects import FloatingIP, Router
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import KIND_LOCAL, KIND_NETWORK, KIND_PORT, KIND_PRESENT, Change, Topology

PRIO_UNICAST = 100
PRIO_FLOOD = 50
FLOOD = ir.Match.of(eth_dst=(ir.MULTICAST_BIT, ir.MULTICAST_BIT)).fields


def nat_networks(topo: Topology) -> set[str]:
    """Networks l3 translates on here: routers' gateway networks and the external networks of local ports' FIPs."""
    gateways = {r.gateway_network_id for r in topo.of(Router.kind).values() if r.gateway_network_id}
    return gateways | {f.floating_network_id for f in topo.of(FloatingIP.kind).values() if topo.is_local(f.port_id)}


def local_networks(topo: Topology) -> set[str]:
    """The networks present here: those of local ports, and the NAT networks."""
    return {port.network_id for port in topo.local_ports()} | nat_networks(topo)


def present(topo: Topology, network_id: str) -> bool:
    """Whether the network is switched here (one of :func:`local_networks`), without listing them all."""
    return bool(topo.local_ports_of(network_id)) or network_id in nat_networks(topo)


def nat_changed(change: Change, topo: Topology) -> set[str]:
    """Networks a change may make NAT networks or stop being: a router's gateway, a FIP's, or a FIP port's."""
    objs = [o for o in (change.old, change.new) if o is not None]
    if change.kind == Router.kind:
        return {r.gateway_network_id for r in objs} - {""}
    if change.kind == FloatingIP.kind:
        return {f.floating_network_id for f in objs}
    if change.kind in (KIND_PORT, KIND_LOCAL):
        return {f.floating_network_id for f in topo.of(FloatingIP.kind).values() if f.port_id == change.id}
    return set()


def network_owners(network_id: str, topo: Topology) -> Iterator[ir.Owner]:
    """The owners of a network in L2 and output: its flood and each of its ports."""
    yield network_owner(network_id)
    yield from (port_owner(p.id) for p in topo.ports_of(network_id))


def placement_affected(change: Change, topo: Topology) -> Iterator[ir.Owner]:
    """Owners of L2 and output (both have a flow per port and per network) that a change may touch.

    A port's change touches its own flow and its network's flood; a network's first local port arriving or
    its last leaving (the topology's "present" change) brings in or takes away every port's flows.
    """
    for network_id in sorted(nat_changed(change, topo)):
        yield from network_owners(network_id, topo)
    if change.kind in (KIND_NETWORK, KIND_PRESENT):
        yield from network_owners(change.id, topo)
    elif change.kind in (KIND_PORT, KIND_LOCAL):
        yield port_owner(change.id)
        yield from (network_owner(n) for n in sorted(network_of(change)))


class L2App(App):
    spec = AppSpec(name="l2", tables=("lookup", "tunnel"), entries={"in": "lookup", "tunnel": "tunnel"},
                   exits=("out", "remote"), meets=("lookup", "tunnel"))

    def owners(self, topo: Topology) -> Iterator[ir.Owner]:
        for network_id in sorted(local_networks(topo)):
            yield from (port_owner(p.id) for p in topo.ports_of(network_id))
            yield network_owner(network_id)

    def owner_flows(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        return self._flows_of[owner.kind](self, owner, topo, layout)

    def _unicast(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        port = topo.ports.get(owner.id)
        network = port and topo.networks.get(port.network_id)
        if port is None or network is None or not present(topo, port.network_id):
            return
        match = ir.Match.of(metadata=network.unique_key, eth_dst=mac_int(port.mac))
        local = topo.is_local(port.id)
        actions = (ir.SetField("outport", port.unique_key), layout.goto("out" if local else "remote"))
        yield ir.Flow(layout.table("lookup"), PRIO_UNICAST, match, actions, owner)
        if local:
            yield ir.Flow(layout.table("tunnel"), PRIO_UNICAST, match, actions, owner)

    def _flood(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        network = topo.networks.get(owner.id)
        if network is None or not present(topo, owner.id):
            return
        match = ir.Match((*FLOOD, ir.FieldMatch("metadata", network.unique_key, ir.full_mask("metadata"))))
        actions = (ir.SetField("outport", ir.flood_group(network.unique_key)), layout.goto("out"))
        yield from (ir.Flow(layout.table(table), PRIO_FLOOD, match, actions, owner) for table in self.spec.tables)

    _flows_of = {OWNER_PORT: _unicast, OWNER_NETWORK: _flood}

    def affected(self, change: Change, topo: Topology) -> Iterator[ir.Owner]:
        yield from placement_affected(change, topo)
