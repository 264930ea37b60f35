"""Port classification: which logical network a packet is on.

Every packet starts here. A packet from a known local port leaves through
``out`` with the port's network key in ``metadata``. A packet from another
chassis leaves through ``tunnel`` (wired straight to L2's lookup of this
host's ports, :mod:`hwflow.apps.l2`: its sender already applied port
security, its egress security groups and routing, and delivered to every
other chassis itself):

- from a tunnel port (``ir.TUNNEL_PORTS``), by its ``tun_id``: the VNI of an
  overlay network with a local port here and a port on a chassis we tunnel
  to (a host with no such peer, a lone host, accepts no tunnelled traffic);
- from a physical network's uplink (``ir.physnet_port``), by its VLAN tag
  (popped) for a vlan network, or untagged (``vlan_tagged=0``) for the
  physical network's flat network: a frame tagged with a VLAN no network
  here has is dropped, not taken into the flat network.

A packet from the uplink of a NAT network (:func:`hwflow.apps.l2.nat_networks`:
a router's gateway network, a local FIP's external network) leaves through
``external`` instead (wired to L3): the outside asks for and sends to the
FIPs and SNAT address this host answers for, which only L3 knows.

A packet from any other port, or with a VNI or VLAN no local network has,
is dropped (no flow matches). Later stages rely on ``metadata`` and never on
in_port to know the network.

Owners: ``port:<id>`` for a local port, ``network:<id>`` for the way into a
network from other chassis (while it is present: see :func:`hwflow.apps.l2.present`).
"""

from __future__ import annotations

from collections.abc import Iterator

from hwflow.apps.base import OWNER_NETWORK, LocalPortApp, network_of, network_owner, port_owner
from hwflow.apps.l2 import local_networks, nat_changed, nat_networks, present
from hwflow.apps.output import KIND_CHASSIS, is_overlay, remote_chassis
from hwflow.model.objects import Network, Port
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import KIND_LOCAL, KIND_NETWORK, KIND_PORT, Change, Topology

PRIO_PORT = 100
PRIO_FLAT = 90  # the uplink's untagged frames: the flat network's


class ClassifierApp(LocalPortApp):
    spec = AppSpec(name="classifier", tables=("ports",), entries={"in": "ports"}, exits=("out", "tunnel", "external"))

    def owners(self, topo: Topology) -> Iterator[ir.Owner]:
        yield from super().owners(topo)
        yield from (network_owner(n) for n in sorted(local_networks(topo)))

    def owner_flows(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        if owner.kind == OWNER_NETWORK:
            yield from self._network_flows(owner, topo, layout)
        else:
            yield from super().owner_flows(owner, topo, layout)

    def _network_flows(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        network = topo.networks.get(owner.id)
        if network is None or not present(topo, network.id):
            return
        overlay = is_overlay(network)
        if overlay and not any(remote_chassis(p, network, topo) for p in topo.ports_of(network.id)):
            return  # no chassis we could exchange this network's packets with: accept none
        priority, match, untag = self._arrival(network)
        exit_point = "external" if not overlay and network.id in nat_networks(topo) else "tunnel"
        actions = (*untag, ir.SetField("metadata", network.unique_key), layout.goto(exit_point))
        yield ir.Flow(layout.table("ports"), priority, match, actions, owner)

    @staticmethod
    def _arrival(network: Network) -> tuple[int, ir.Match, tuple[ir.Action, ...]]:
        """How the network's packets from other chassis arrive: (priority, match, actions undoing the tag)."""
        if network.network_type in ir.TUNNEL_PORTS:
            return PRIO_PORT, ir.Match.of(in_port=ir.TUNNEL_PORTS[network.network_type], tun_id=network.vni), ()
        uplink = ir.physnet_port(network.physical_network)
        if network.network_type == "vlan":
            return PRIO_PORT, ir.Match.of(in_port=uplink, vlan_vid=network.vlan_id), (ir.PopVlan(),)
        return PRIO_FLAT, ir.Match.of(in_port=uplink, vlan_tagged=0), ()

    def port_flows(self, port: Port, topo: Topology, layout: AppLayout, owner: ir.Owner) -> Iterator[ir.Flow]:
        network = topo.networks.get(port.network_id)
        match = ir.Match.of(in_port=port.unique_key)
        if network is None:  # the port arrived before its network: keep it isolated
            yield ir.Flow(layout.table("ports"), PRIO_PORT, match, (ir.Drop(),), owner)
            return
        actions = (ir.SetField("metadata", network.unique_key), layout.goto("out"))
        yield ir.Flow(layout.table("ports"), PRIO_PORT, match, actions, owner)

    def affected(self, change: Change, topo: Topology) -> Iterator[ir.Owner]:
        yield from (network_owner(n) for n in sorted(nat_changed(change, topo)))
        if change.kind == KIND_NETWORK:  # its key is what packets are tagged with; its VNI/VLAN how they arrive
            yield network_owner(change.id)
            yield from (port_owner(p.id) for p in topo.local_ports_of(change.id))
        elif change.kind in (KIND_PORT, KIND_LOCAL):  # its first local port, or first remote one, opens it
            yield from (network_owner(n) for n in network_of(change))
        elif change.kind == KIND_CHASSIS:
            yield from (network_owner(n) for n in sorted({p.network_id for p in topo.ports.values()
                                                          if p.chassis == change.id}))
        yield from super().affected(change, topo)
