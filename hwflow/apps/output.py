"""Egress dispatch: deliver a packet to the logical port (or flood group) in ``outport``.

This is the one stage that knows where a logical port is:

- a local port is an ``Output`` to it;
- a port bound to another chassis, on an overlay (vxlan/geneve) network, is
  reached through that chassis's tunnel: ``tun_id`` = the network's VNI,
  ``tun_dst`` = the chassis's ``tunnel_ip``, out of the tunnel port of the
  network's type (``ir.TUNNEL_PORTS``);
- any port not on this chassis, on a provider (vlan/flat) network, is behind
  the physical network's uplink (``ir.physnet_port``), tagged with the VLAN
  id on a vlan network;
- a network's flood group is every local port, plus one tunnelled copy per
  remote chassis with ports on the network (head-end replication) or the
  uplink for a provider network. A packet that came in from a tunnel is
  flooded to local ports only (split horizon: its sender replicated it to
  every chassis already). Neither OVS nor the interpreter sends a packet
  back out of the port it came in on, so uplink floods do not echo.

A remote port whose chassis is unknown, has no tunnel address or does not
terminate the network's encapsulation gets no flow: its packets drop. So
does a local port that is administratively down (``Topology.admin_up``),
which is left out of its network's flood group too: it receives nothing
(:mod:`hwflow.apps.port_security` drops what it sends). A remote port that
is down is its own chassis's to drop.

Keeping location out of L2 (which only chooses ``outport``) lets stages that
filter per destination port, such as ingress security groups, sit between
the two without knowing about tunnels.

Owners: ``port:<id>`` (one port's delivery, for every port of a network
present here: see :func:`hwflow.apps.l2.present`), ``network:<id>`` (its
flood group).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from hwflow.apps.base import OWNER_NETWORK, OWNER_PORT, App, network_owner, port_owner
from hwflow.apps.l2 import local_networks, placement_affected, present
from hwflow.model.objects import Chassis, Network, Port
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import Change, Topology

PRIO_DELIVER = 100
PRIO_FROM_TUNNEL = 110  # a flood that came in from a tunnel: above the flood that replicates to tunnels
KIND_CHASSIS = Chassis.kind
OVERLAY_TYPES = tuple(ir.TUNNEL_PORTS)


def is_overlay(network: Network) -> bool:
    return network.network_type in OVERLAY_TYPES


def remote_chassis(port: Port, network: Network, topo: Topology) -> Chassis | None:
    """The chassis a port of an overlay network is tunnelled to, if it can be."""
    if port.chassis in ("", topo.chassis) or topo.is_local(port.id):
        return None
    chassis = topo.get(KIND_CHASSIS, port.chassis)
    if chassis is None or not chassis.tunnel_ip or network.network_type not in chassis.tunnel_types:
        return None
    return chassis


def encap(network: Network, chassis: Chassis) -> tuple[ir.Action, ...]:
    return (ir.SetField("tun_id", network.vni), ir.SetField("tun_dst", int(ipaddress.ip_address(chassis.tunnel_ip))),
            ir.Output(ir.TUNNEL_PORTS[network.network_type]))


def to_uplink(network: Network) -> tuple[ir.Action, ...]:
    tag = (ir.PushVlan(network.vlan_id),) if network.network_type == "vlan" else ()
    return (*tag, ir.Output(ir.physnet_port(network.physical_network)))


class OutputApp(App):
    spec = AppSpec(name="output", tables=("deliver",), entries={"in": "deliver"})

    def owners(self, topo: Topology) -> Iterator[ir.Owner]:
        for network_id in sorted(local_networks(topo)):
            yield from (port_owner(p.id) for p in topo.ports_of(network_id))
            yield network_owner(network_id)

    def owner_flows(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        return self._flows_of[owner.kind](self, owner, topo, layout)

    def _delivery(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        actions = self._port_actions(owner.id, topo)
        if actions:
            yield ir.Flow(layout.table("deliver"), PRIO_DELIVER, ir.Match.of(outport=topo.ports[owner.id].unique_key),
                          actions, owner)

    def _flood(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        table, oid = layout.table("deliver"), owner.id
        network = topo.networks.get(oid)
        if network is None or not present(topo, oid):
            return
        local = tuple(ir.Output(p.unique_key) for p in topo.local_ports_of(oid) if topo.admin_up(p))
        group = ir.flood_group(network.unique_key)
        if is_overlay(network):
            remote = self._remote_chassis_of(network, topo)
            if remote:  # the classifier takes this network's packets from the tunnel only then
                yield ir.Flow(table, PRIO_FROM_TUNNEL,
                              ir.Match.of(outport=group, in_port=ir.TUNNEL_PORTS[network.network_type]), local, owner)
            copies = tuple(a for chassis in remote for a in encap(network, chassis))
        else:
            copies = to_uplink(network)
        yield ir.Flow(table, PRIO_DELIVER, ir.Match.of(outport=group), local + copies, owner)

    _flows_of = {OWNER_PORT: _delivery, OWNER_NETWORK: _flood}

    @staticmethod
    def _port_actions(port_id: str, topo: Topology) -> tuple[ir.Action, ...]:
        """Where one port of a present network is: here, through a tunnel, or behind the uplink."""
        port = topo.ports.get(port_id)
        network = port and topo.networks.get(port.network_id)
        if port is None or network is None or not present(topo, port.network_id):
            return ()
        if topo.is_local(port_id):
            return (ir.Output(port.unique_key),) if topo.admin_up(port) else ()
        if not is_overlay(network):
            return to_uplink(network)
        chassis = remote_chassis(port, network, topo)
        return encap(network, chassis) if chassis is not None else ()

    @staticmethod
    def _remote_chassis_of(network: Network, topo: Topology) -> list[Chassis]:
        """Each chassis with a port on the network once, by name: one tunnelled copy each."""
        found = {c.id: c for p in topo.ports_of(network.id) if (c := remote_chassis(p, network, topo))}
        return [found[name] for name in sorted(found)]

    def affected(self, change: Change, topo: Topology) -> Iterator[ir.Owner]:
        # a port's admin state is its own change; a network's recomputes all its owners already
        yield from placement_affected(change, topo)
        if change.kind == KIND_CHASSIS:  # its tunnel address or types: the ports bound to it and their floods
            bound = [p for p in topo.ports.values() if p.chassis == change.id]
            yield from (port_owner(p.id) for p in bound)
            yield from (network_owner(n) for n in sorted({p.network_id for p in bound}))
