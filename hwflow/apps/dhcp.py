"""DHCP answered by the agent itself: DHCPv4 requests from local ports are punted.

Sits right after port security (which admits DHCP discovery from 0.0.0.0)
and before the security groups, so a port's security groups cannot cut it
off from its own address. A port with an IPv4 address in a subnet of its
network that has ``enable_dhcp`` gets one flow: broadcast UDP 68 -> 67 from
it goes to the agent (``Punt("dhcp")``), whose responder (hwflow.agent.dhcp)
answers with the port's address. Everything else, and DHCP from a port the
agent does not serve (a subnet without DHCP may have a DHCP server of its
own on the network), goes on through ``out``.

A served port's broadcast requests are punted: DISCOVER, and REQUEST when
selecting, rebooting or rebinding (and INFORM) all go to ff:ff:ff:ff:ff:ff.
So is a renewal from T1 (RENEWING), unicast to the server identifier
(:func:`server_id`, the subnet's gateway) when a router port holds that
address: the client resolved it to the router port's MAC (l3 answers its
ARP), and one punt per such subnet matches the network, that MAC, the
gateway address and UDP 68 -> 67 (a port outside the subnet that asks is
not answered: hwflow.agent.dhcp serves only the ports it leases to).
That narrow match overlaps none of the port's forwarding paths but one
through the router to a default route, so a NIC that cannot hold a punt
with a ``pass`` rule still carries the rest. Where no router port holds the
gateway, nobody answers the client's ARP for it: those clients renew by
broadcast at T2 (REBINDING), long before their lease runs out.

Owners: ``dhcp:defaults`` (the pass-through), ``port:<id>`` (its broadcast
punt), ``network:<id>`` (the renewal punts, while the network has local ports).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterator

from hwflow.apps.base import (
    OWNER_NETWORK,
    LocalPortApp,
    defaults_owner,
    ipv4_int,
    ipv4_prefix,
    mac_int,
    network_owner,
    port_owner,
)
from hwflow.model.objects import Port, Subnet
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import KIND_NETWORK, KIND_PRESENT, Change, Topology

PRIO_PUNT = 100
PRIO_MISS = 0
DEFAULTS = defaults_owner("dhcp")
PUNT_REASON = "dhcp"
KIND_SUBNET, KIND_ROUTER_PORT = "subnet", "router_port"
IPPROTO_UDP = 17
BROADCAST_MAC = (1 << 48) - 1
CLIENT_PORT, SERVER_PORT = 68, 67
REQUEST = {"eth_type": ir.ETH_TYPE_IPV4, "ip_proto": IPPROTO_UDP, "udp_src": CLIENT_PORT, "udp_dst": SERVER_PORT}


@dataclasses.dataclass(frozen=True)
class Served:
    """What the agent hands a port over DHCP: its address and the subnet the options come from."""

    address: ipaddress.IPv4Address
    subnet: Subnet


def server_id(subnet: Subnet) -> ipaddress.IPv4Address:
    """The gateway, or the last host address of a subnet without one (see hwflow.agent.dhcp)."""
    if subnet.gateway_ip:
        return ipaddress.IPv4Address(subnet.gateway_ip)
    return subnet.network.broadcast_address - 1


def dhcp_subnets(topo: Topology, network_id: str) -> list[Subnet]:
    """The network's IPv4 subnets with DHCP on."""
    return [s for s in topo.by(KIND_SUBNET, "network_id", network_id) if s.enable_dhcp and ":" not in s.cidr]


def served(port: Port, topo: Topology) -> Served | None:
    """The port's first IPv4 address that lies in a DHCP-enabled subnet of its network, if any."""
    subnets = dhcp_subnets(topo, port.network_id)
    for text in port.ips:
        if ":" in text:
            continue
        address = ipv4_int(text)  # integers and cached prefixes: a full compile asks this of every port
        for subnet in subnets:
            network, mask = ipv4_prefix(subnet.cidr)
            if address & mask == network:
                return Served(ipaddress.IPv4Address(address), subnet)
    return None


class DhcpApp(LocalPortApp):
    spec = AppSpec(name="dhcp", tables=("dhcp",), entries={"in": "dhcp"}, exits=("out",))

    def owners(self, topo: Topology) -> Iterator[ir.Owner]:
        yield DEFAULTS
        yield from super().owners(topo)
        yield from (network_owner(n) for n in sorted({p.network_id for p in topo.local_ports()}))

    def owner_flows(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        if owner == DEFAULTS:
            yield ir.Flow(layout.table("dhcp"), PRIO_MISS, ir.Match.of(), (layout.goto("out"),), owner)
        elif owner.kind == OWNER_NETWORK:
            yield from self._renewals(owner.id, topo, layout, owner)
        else:
            yield from super().owner_flows(owner, topo, layout)

    def port_flows(self, port: Port, topo: Topology, layout: AppLayout, owner: ir.Owner) -> Iterator[ir.Flow]:
        if served(port, topo) is not None:
            match = ir.Match.of(in_port=port.unique_key, eth_dst=BROADCAST_MAC, **REQUEST)
            yield ir.Flow(layout.table("dhcp"), PRIO_PUNT, match, (ir.Punt(PUNT_REASON),), owner)

    @staticmethod
    def _renewals(network_id: str, topo: Topology, layout: AppLayout, owner: ir.Owner) -> Iterator[ir.Flow]:
        """Renewals to each DHCP subnet's server identifier that a router port holds, on a network with local ports."""
        network = topo.networks.get(network_id)
        if network is None or not topo.local_ports_of(network_id):
            return
        holders = {rp.ip: rp.mac for rp in topo.by(KIND_ROUTER_PORT, "network_id", network_id) if rp.mac}
        for subnet in dhcp_subnets(topo, network_id):
            server = server_id(subnet)
            mac = holders.get(str(server))
            if mac:
                match = ir.Match.of(metadata=network.unique_key, eth_dst=mac_int(mac), ipv4_dst=int(server), **REQUEST)
                yield ir.Flow(layout.table("dhcp"), PRIO_PUNT, match, (ir.Punt(PUNT_REASON),), owner)

    def affected(self, change: Change, topo: Topology) -> Iterator[ir.Owner]:
        if change.kind in (KIND_SUBNET, KIND_ROUTER_PORT):  # whom we serve; where renewals go
            networks = {s.network_id for s in (change.old, change.new) if s is not None}
            for network_id in sorted(networks):
                yield network_owner(network_id)
                yield from (port_owner(p.id) for p in topo.local_ports_of(network_id))
        elif change.kind in (KIND_NETWORK, KIND_PRESENT):  # its key; its first local port, or its last
            yield network_owner(change.id)
        yield from super().affected(change, topo)
