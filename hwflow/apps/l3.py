"""Distributed IPv4 routing between the subnets of a router, on every host.

Each host routes its own VMs' traffic itself (no central router): a packet
sent to a router port's MAC is routed right there and leaves on the
destination network, rewritten as if the router had forwarded it.

Tables, in order:

* ``arp``: ARP requests for a router port's address are answered here and
  sent back out of the asking port; everything else goes on.
* ``router_mac``: IPv4 to a router port's MAC on this network is routed;
  everything else leaves through ``out`` (to L2 switching).
* ``route``: longest prefix first. A subnet of the same router: the next hop
  is the destination itself; a static route: its nexthop. The packet gets
  the egress router port's MAC as source, the egress network in
  ``metadata``, its TTL decremented.
* ``next_hop``: the next hop's address (in the ``nexthop`` register) gives
  the destination MAC; the packet leaves through ``out`` on the egress
  network. An unknown next hop is dropped.

Owners: ``router_port:<id>`` (ARP answer, router MAC), ``router:<id>``
(routes), ``port:<id>`` (a next hop on a routed network).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator

from hwflow.apps.base import App, port_owner
from hwflow.model.objects import Network, Port, Router, RouterPort, Subnet
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import KIND_NETWORK, KIND_PORT, Change, Topology

PRIO_HIT = 100
PRIO_MISS = 0
PRIO_ROUTE = 100  # plus the prefix length: longest prefix wins


def mac_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def ip_int(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


def prefix(cidr: str) -> tuple[int, int]:
    net = ipaddress.IPv4Network(cidr)
    return int(net.network_address), int(net.netmask)


def rp_owner(rp_id: str) -> str:
    return f"router_port:{rp_id}"


def router_owner(router_id: str) -> str:
    return f"router:{router_id}"


class L3App(App):
    spec = AppSpec(name="l3", tables=("arp", "router_mac", "route", "next_hop"), entries={"in": "arp"},
                   exits=("out",), registers=("nexthop",))

    # --- owners ---------------------------------------------------------------------

    def owners(self, topo: Topology) -> Iterator[str]:
        yield "l3:defaults"
        routed: set[str] = set()
        for rp in topo.of("router_port").values():
            yield rp_owner(rp.id)
            routed.add(rp.network_id)
        yield from (router_owner(r) for r in sorted(topo.of("router")))
        for network_id in sorted(routed):
            yield from (port_owner(p.id) for p in topo.ports_of(network_id))

    def owner_flows(self, owner: str, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        kind, oid = owner.split(":", 1)
        if kind == "l3":
            yield from self._defaults(layout, owner)
        elif kind == "router_port":
            yield from self._router_port(topo, layout, topo.get("router_port", oid), owner)
        elif kind == "router":
            yield from self._routes(topo, layout, topo.get("router", oid), owner)
        elif kind == "port":
            yield from self._next_hop(topo, layout, topo.get("port", oid), owner)

    def affected(self, change: Change, topo: Topology) -> Iterator[str]:
        objs = [o for o in (change.old, change.new) if o is not None]
        if change.kind == "router_port":
            yield rp_owner(change.id)
            for rp in objs:
                yield router_owner(rp.router_id)
                yield from (port_owner(p.id) for p in topo.ports_of(rp.network_id))
        elif change.kind == "router":
            yield router_owner(change.id)
        elif change.kind in ("subnet", KIND_NETWORK):
            network_ids = {o.network_id for o in objs} if change.kind == "subnet" else {change.id}
            for network_id in network_ids:
                for rp in topo.by("router_port", "network_id", network_id):
                    yield rp_owner(rp.id)
                    yield router_owner(rp.router_id)
                yield from (port_owner(p.id) for p in topo.ports_of(network_id))
        elif change.kind == KIND_PORT:
            yield port_owner(change.id)

    # --- flows --------------------------------------------------------------------------

    @staticmethod
    def _defaults(layout: AppLayout, owner: str) -> Iterator[ir.Flow]:
        """What no router claims: not ARP for a router, not to a router MAC, no route, no next hop."""
        yield ir.Flow(layout.table("arp"), PRIO_MISS, ir.Match.of(), (ir.GotoTable(layout.table("router_mac")),),
                      owner)
        yield ir.Flow(layout.table("router_mac"), PRIO_MISS, ir.Match.of(), (layout.goto("out"),), owner)
        yield ir.Flow(layout.table("route"), PRIO_MISS, ir.Match.of(), (ir.Drop(),), owner)
        yield ir.Flow(layout.table("next_hop"), PRIO_MISS, ir.Match.of(), (ir.Drop(),), owner)

    @staticmethod
    def _router_port(topo: Topology, layout: AppLayout, rp: RouterPort | None, owner: str) -> Iterator[ir.Flow]:
        network: Network | None = rp and topo.networks.get(rp.network_id)
        if rp is None or network is None or ":" in rp.ip:
            return
        net = network.unique_key
        answer = (
            ir.Move("eth_src", "eth_dst"), ir.SetField("eth_src", mac_int(rp.mac)), ir.SetField("arp_op", 2),
            ir.Move("arp_sha", "arp_tha"), ir.SetField("arp_sha", mac_int(rp.mac)),
            ir.Move("arp_spa", "arp_tpa"), ir.SetField("arp_spa", ip_int(rp.ip)), ir.OutputInPort(),
        )
        yield ir.Flow(layout.table("arp"), PRIO_HIT,
                      ir.Match.of(metadata=net, eth_type=ir.ETH_TYPE_ARP, arp_op=1, arp_tpa=ip_int(rp.ip)),
                      answer, owner)
        yield ir.Flow(layout.table("router_mac"), PRIO_HIT,
                      ir.Match.of(metadata=net, eth_type=ir.ETH_TYPE_IPV4, eth_dst=mac_int(rp.mac)),
                      (ir.GotoTable(layout.table("route")),), owner)

    def _routes(self, topo: Topology, layout: AppLayout, router: Router | None, owner: str) -> Iterator[ir.Flow]:
        if router is None:
            return
        legs = [leg for leg in (self._leg(topo, rp) for rp in topo.by("router_port", "router_id", router.id)) if leg]
        nexthop = layout.reg("nexthop")
        seen: set[tuple[int, tuple[int, int]]] = set()
        for ingress_net, _, _, _ in legs:
            for egress_net, egress_mac, cidr, _ in legs:
                key = (ingress_net, prefix(cidr))
                if key in seen:
                    continue
                seen.add(key)
                yield self._route(layout, owner, ingress_net, cidr, egress_net, egress_mac,
                                  ir.Move("ipv4_dst", nexthop))
            for route in router.routes:
                egress = next((leg for leg in legs if ipaddress.IPv4Address(route["nexthop"])
                               in ipaddress.IPv4Network(leg[2])), None) if ":" not in route["nexthop"] else None
                if egress is not None and (ingress_net, prefix(route["destination"])) not in seen:
                    seen.add((ingress_net, prefix(route["destination"])))
                    yield self._route(layout, owner, ingress_net, route["destination"], egress[0], egress[1],
                                      ir.SetField(nexthop, ip_int(route["nexthop"])))

    @staticmethod
    def _route(layout: AppLayout, owner: str, ingress_net: int, cidr: str, egress_net: int, egress_mac: int,
               set_nexthop: ir.Action) -> ir.Flow:
        plen = ipaddress.IPv4Network(cidr).prefixlen
        match = ir.Match.of(metadata=ingress_net, eth_type=ir.ETH_TYPE_IPV4, ipv4_dst=prefix(cidr))
        actions = (set_nexthop, ir.SetField("metadata", egress_net), ir.SetField("eth_src", egress_mac), ir.DecTtl(),
                   ir.GotoTable(layout.table("next_hop")))
        return ir.Flow(layout.table("route"), PRIO_ROUTE + plen, match, actions, owner)

    @staticmethod
    def _leg(topo: Topology, rp: RouterPort) -> tuple[int, int, str, str] | None:
        """(network key, router port MAC, subnet CIDR, router port id) of an IPv4 router port."""
        network: Network | None = topo.networks.get(rp.network_id)
        subnet: Subnet | None = topo.get("subnet", rp.subnet_id)
        if network is None or subnet is None or ":" in subnet.cidr:
            return None
        return network.unique_key, mac_int(rp.mac), subnet.cidr, rp.id

    @staticmethod
    def _next_hop(topo: Topology, layout: AppLayout, port: Port | None, owner: str) -> Iterator[ir.Flow]:
        network: Network | None = port and topo.networks.get(port.network_id)
        if port is None or network is None or not topo.by("router_port", "network_id", port.network_id):
            return
        for address in port.ips:
            if ":" not in address:
                yield ir.Flow(layout.table("next_hop"), PRIO_HIT,
                              ir.Match.of(metadata=network.unique_key, **{layout.reg("nexthop"): ip_int(address)}),
                              (ir.SetField("eth_dst", mac_int(port.mac)), layout.goto("out")), owner)
