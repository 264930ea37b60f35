"""Distributed IPv4 routing between the subnets of a router, with floating IPs and SNAT, on every host.

Each host routes its own VMs' traffic itself (no central router): a packet
sent to a router port's MAC is routed right there and leaves on the
destination network, rewritten as if the router had forwarded it. Traffic
to and from the outside is translated on the host too: a VM's floating IP
(FIP) at the VM's host, everything else of a router with a gateway SNATed
to the host's own ``external_ip`` (Dragonflow's per-chassis SNAT).

Tables, in order:

* ``arp``: ARP requests for a router port's address, and on an external
  network for a local port's FIP or this chassis's external_ip, are
  answered here and sent back out of the asking port; so are IPv6 neighbor
  solicitations for a router port's IPv6 address, with the NA's router
  flag set (R|S|O, built as the responder app builds its answers, finished
  in ``na``; duplicate address detection from ``::`` is passed on
  unanswered). Routing is IPv4 only: an IPv6 router port is answered for,
  nothing more.
* ``router_mac``: IPv4 to a router port's MAC on this network is routed;
  on an external network, IPv4 to a FIP's or the chassis's MAC is
  translated (``nat_in``); everything else leaves through ``out`` (to L2).
* ``route``: longest prefix first. A subnet of the same router: the next hop
  is the destination itself; a static route: its nexthop. The packet gets
  the egress router port's MAC as source, the egress network in
  ``metadata``, its TTL decremented. A router with a gateway also routes
  its gateway network's subnets and the default route (via the external
  subnet's gateway_ip) to ``nat_out``, TTL decremented.
* ``nat_out``: from a FIP's fixed address: SNAT to the FIP; from any other
  address of a router with enable_snat: SNAT to the chassis's external_ip.
  The packet goes on the external network with the translated address's
  MAC as source. Nothing else leaves (no NAT, no way out).
* ``nat_in``: to a FIP: DNAT to the fixed address (a reply of a connection
  the VM opened is un-SNATed by the same action), routed to the VM's
  network; to the chassis's external_ip: un-SNAT of replies only.
* ``unsnat``: an un-SNATed reply is routed to the inside subnet holding its
  destination.
* ``next_hop``: the next hop's address (in the ``nexthop`` register) gives
  the destination MAC; the packet leaves through ``out`` on the egress
  network. An unknown next hop is dropped.

Choices the model leaves open:

* MACs on the external network: the model gives neither the router's
  gateway nor a FIP a MAC, and one router MAC would show up on every
  chassis's uplink at once (a MAC flapping between switch ports). So every
  address a host answers for there (a FIP, the chassis's external_ip) has
  its own MAC derived from it, :func:`nat_mac` (02:00 + the IPv4 address:
  locally administered, unique per address).
* The external next hop (the external subnet's gateway_ip, or any address
  on the external subnet) is a port on the external network holding that
  address, as static-route next hops are: its MAC is the port's. The
  agent's selective topology must hold the ports of gateway networks.
* Conntrack zones: one per router for its FIPs (:func:`router_zone`, the
  Dragonflow way: VMs of different routers may share addresses), and one
  zone, ``CHASSIS_SNAT_ZONE``, for per-chassis SNAT: every router on the
  host SNATs to the same external_ip, so a reply names no router until it
  is un-SNATed, and then only its inside address says where it goes. Two
  tenants' routers may hold the same inside subnet: the first router (by
  key) SNATs it here, the other's network gets no SNAT on this chassis
  (fails closed, logged; its FIPs still work), or one tenant's replies
  would reach the other's VM holding the same address (:func:`_snat_legs`).
  All NAT zones are in 0x8000-0xffff; other apps keep below.

Owners: ``router_port:<id>`` (ARP or ND answer, router MAC), ``router:<id>``
(routes), ``port:<id>`` (a next hop on a routed or gateway network),
``floating_ip:<id>`` (a FIP of a local port), ``snat:<network id>`` (this
chassis's external_ip on an external network: the SNAT of the inside
networks of the routers with their gateway there, which one router's
change may take from another).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
from collections.abc import Iterator

from hwflow.apps.base import (
    NA_OVERRIDE,
    NA_ROUTER,
    NA_SOLICITED,
    OWNER_PORT,
    App,
    arp_answer,
    dad_pass,
    defaults_owner,
    ipv4_int,
    ipv4_prefix,
    mac_int,
    nd_answer,
    port_owner,
)
from hwflow.model.objects import Chassis, FloatingIP, Network, Port, Router, RouterPort, Subnet
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import KIND_LOCAL, KIND_NETWORK, KIND_PORT, Change, Topology

LOG = logging.getLogger(__name__)

PRIO_HIT = 100
PRIO_PASS = 110  # above an answer: what must not be answered
PRIO_MISS = 0
PRIO_ROUTE = 100  # plus the prefix length: longest prefix wins
PRIO_FIP = 200  # a FIP's own SNAT before its router's per-chassis SNAT

NAT_ZONE_BASE = 0x8000
CHASSIS_SNAT_ZONE = 0xFFFF
NAT_MAC_PREFIX = 0x0200 << 32  # locally administered, unicast; the low 32 bits are the IPv4 address

KIND_FIP = "floating_ip"
KIND_SNAT = "snat"
KIND_ROUTER, KIND_ROUTER_PORT = "router", "router_port"
DEFAULTS = defaults_owner("l3")
# Kinds a FIP's or the chassis SNAT's flows are drawn from besides their own object (and this chassis's address).
NAT_INPUTS = frozenset({"router", "router_port", "subnet", KIND_NETWORK})


def nat_mac(address: str) -> int:
    """The MAC this host answers with for an address it translates on an external network (a FIP, external_ip)."""
    return NAT_MAC_PREFIX | ipv4_int(address)


def router_zone(router: Router) -> int:
    """The conntrack zone of a router's FIPs: one per router, in 0x8000-0xfffe."""
    return NAT_ZONE_BASE + router.unique_key % (CHASSIS_SNAT_ZONE - NAT_ZONE_BASE)


def rp_owner(rp_id: str) -> ir.Owner:
    return ir.Owner(KIND_ROUTER_PORT, rp_id)


def router_owner(router_id: str) -> ir.Owner:
    return ir.Owner(KIND_ROUTER, router_id)


def fip_owner(fip_id: str) -> ir.Owner:
    return ir.Owner(KIND_FIP, fip_id)


def snat_owner(network_id: str) -> ir.Owner:
    return ir.Owner(KIND_SNAT, network_id)


@dataclasses.dataclass(frozen=True)
class Leg:
    """A router's IPv4 interface: its network's key, its MAC, its subnet."""

    network: int
    mac: int
    cidr: str


@dataclasses.dataclass(frozen=True)
class Gateway:
    """A router's way out: the external network's key, its IPv4 subnets, the next hop of the default route."""

    network: int
    cidrs: tuple[str, ...]
    next_hop: str  # "" when the external subnet has no gateway_ip: only its own subnets are reachable


class L3App(App):
    spec = AppSpec(name="l3", tables=("arp", "na", "router_mac", "route", "nat_out", "nat_in", "unsnat", "next_hop"),
                   entries={"in": "arp"}, exits=("out",), registers=("nexthop",),
                   meets=("next_hop",))

    # --- owners ---------------------------------------------------------------------

    def owners(self, topo: Topology) -> Iterator[ir.Owner]:
        yield DEFAULTS
        routed: set[str] = set()
        for rp in topo.of("router_port").values():
            yield rp_owner(rp.id)
            routed.add(rp.network_id)
        yield from (router_owner(r) for r in sorted(topo.of("router")))
        gateways = _gateway_networks(topo)
        for network_id in sorted(routed | gateways):
            yield from (port_owner(p.id) for p in topo.ports_of(network_id))
        yield from (fip_owner(f) for f in sorted(topo.of(KIND_FIP)))
        yield from (snat_owner(n) for n in sorted(gateways))

    def owner_flows(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        return self._flows_of[owner.kind](self, owner, topo, layout)

    def affected(self, change: Change, topo: Topology) -> Iterator[ir.Owner]:
        objs = [o for o in (change.old, change.new) if o is not None]
        if change.kind == "router_port":
            yield rp_owner(change.id)
            for rp in objs:
                yield router_owner(rp.router_id)
                yield from (port_owner(p.id) for p in topo.ports_of(rp.network_id))
        elif change.kind == "router":
            yield router_owner(change.id)
            for network_id in {r.gateway_network_id for r in objs} - {""}:
                yield from (port_owner(p.id) for p in topo.ports_of(network_id))
        elif change.kind in ("subnet", KIND_NETWORK):
            network_ids = {o.network_id for o in objs} if change.kind == "subnet" else {change.id}
            for network_id in network_ids:
                for rp in topo.by("router_port", "network_id", network_id):
                    yield rp_owner(rp.id)
                    yield router_owner(rp.router_id)
                yield from (router_owner(r.id) for r in topo.of("router").values()
                            if r.gateway_network_id == network_id)
                yield from (port_owner(p.id) for p in topo.ports_of(network_id))
        elif _external_ip_changed(change, topo):
            yield from (router_owner(r) for r in topo.of("router"))
        elif change.kind in (KIND_PORT, KIND_LOCAL):
            yield port_owner(change.id)
            yield from (fip_owner(f.id) for f in topo.of(KIND_FIP).values() if f.port_id == change.id)
        elif change.kind == KIND_FIP:
            yield fip_owner(change.id)
        if change.kind in NAT_INPUTS or _external_ip_changed(change, topo):  # few: local ports' FIPs, gateway nets
            yield from (fip_owner(f) for f in topo.of(KIND_FIP))
            yield from (snat_owner(n) for n in {*_gateway_networks(topo), *(
                o.gateway_network_id for o in objs if isinstance(o, Router) and o.gateway_network_id)})

    # --- flows --------------------------------------------------------------------------

    def _defaults(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        """What no router claims: not ARP for a router, not to a router MAC, no route, no next hop.

        The NAT tables drop what no FIP or SNAT claims by the IR's table miss: a host without NAT pays no flow.
        """
        yield ir.Flow(layout.table("arp"), PRIO_MISS, ir.Match.of(), (ir.GotoTable(layout.table("router_mac")),),
                      owner)
        yield ir.Flow(layout.table("router_mac"), PRIO_MISS, ir.Match.of(), (layout.goto("out"),), owner)
        yield ir.Flow(layout.table("route"), PRIO_MISS, ir.Match.of(), (ir.Drop(),), owner)
        yield ir.Flow(layout.table("next_hop"), PRIO_MISS, ir.Match.of(), (ir.Drop(),), owner)

    def _router_port(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        rp: RouterPort | None = topo.get(KIND_ROUTER_PORT, owner.id)
        network: Network | None = rp and topo.networks.get(rp.network_id)
        if rp is None or network is None:
            return
        net = network.unique_key
        if ":" in rp.ip:
            arp = layout.table("arp")
            yield dad_pass(arp, PRIO_PASS, net, rp.ip, ir.GotoTable(layout.table("router_mac")), owner)
            yield from nd_answer(arp, layout.table("na"), PRIO_HIT, net, rp.ip, mac_int(rp.mac),
                                 NA_ROUTER | NA_SOLICITED | NA_OVERRIDE, owner)
            return
        yield arp_answer(layout.table("arp"), PRIO_HIT, net, rp.ip, mac_int(rp.mac), owner)
        yield ir.Flow(layout.table("router_mac"), PRIO_HIT,
                      ir.Match.of(metadata=net, eth_type=ir.ETH_TYPE_IPV4, eth_dst=mac_int(rp.mac)),
                      (ir.GotoTable(layout.table("route")),), owner)

    def _routes(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        router: Router | None = topo.get(KIND_ROUTER, owner.id)
        if router is None:
            return
        legs = _legs(topo, router)
        nexthop = layout.reg("nexthop")
        seen: set[tuple[int, tuple[int, int]]] = set()

        def route(ingress: Leg, cidr: str, set_nexthop: ir.Action, rest: tuple[ir.Action, ...]) -> Iterator[ir.Flow]:
            if (ingress.network, ipv4_prefix(cidr)) not in seen:
                seen.add((ingress.network, ipv4_prefix(cidr)))
                yield self._route(layout, owner, ingress.network, cidr, (set_nexthop, *rest))

        gateway = _gateway(topo, router)
        for ingress in legs:
            for egress in legs:
                yield from route(ingress, egress.cidr, ir.Move("ipv4_dst", nexthop), _egress(layout, egress))
            for static in router.routes:
                egress_leg = next((leg for leg in legs if ipaddress.IPv4Address(static["nexthop"])
                                   in ipaddress.IPv4Network(leg.cidr)), None) if ":" not in static["nexthop"] else None
                if egress_leg is not None:
                    yield from route(ingress, static["destination"], ir.SetField(nexthop, ipv4_int(static["nexthop"])),
                                     _egress(layout, egress_leg))
            if gateway is not None:
                outward = (ir.DecTtl(), ir.GotoTable(layout.table("nat_out")))
                for cidr in gateway.cidrs:
                    yield from route(ingress, cidr, ir.Move("ipv4_dst", nexthop), outward)
                if gateway.next_hop:
                    yield from route(ingress, "0.0.0.0/0", ir.SetField(nexthop, ipv4_int(gateway.next_hop)), outward)

    @staticmethod
    def _route(layout: AppLayout, owner: ir.Owner, ingress_net: int, cidr: str,
               actions: tuple[ir.Action, ...]) -> ir.Flow:
        plen = ipaddress.IPv4Network(cidr).prefixlen
        match = ir.Match.of(metadata=ingress_net, eth_type=ir.ETH_TYPE_IPV4, ipv4_dst=ipv4_prefix(cidr))
        return ir.Flow(layout.table("route"), PRIO_ROUTE + plen, match, actions, owner)

    def _chassis_snat(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        """This chassis's external_ip on an external network: ARP, the SNAT of the inside networks of the routers
        with their gateway there, and replies un-SNATed into them."""
        network_id = owner.id
        external_ip = _external_ip(topo)
        network: Network | None = topo.networks.get(network_id)
        snatted = _snat_legs(topo, network_id)
        if not external_ip or network is None or not snatted:
            return
        ext, mac = network.unique_key, nat_mac(external_ip)
        yield arp_answer(layout.table("arp"), PRIO_HIT, ext, external_ip, mac, owner)
        yield ir.Flow(layout.table("router_mac"), PRIO_HIT,
                      ir.Match.of(metadata=ext, eth_type=ir.ETH_TYPE_IPV4, eth_dst=mac),
                      (ir.GotoTable(layout.table("nat_in")),), owner)
        yield ir.Flow(layout.table("nat_in"), PRIO_HIT,
                      ir.Match.of(metadata=ext, eth_type=ir.ETH_TYPE_IPV4, ipv4_dst=ipv4_int(external_ip)),
                      (ir.Conntrack(CHASSIS_SNAT_ZONE, table=layout.table("unsnat"), nat=ir.Nat()),), owner)
        nat = (ir.SetField("metadata", ext), ir.SetField("eth_src", mac),
               ir.Conntrack(CHASSIS_SNAT_ZONE, commit=True, table=layout.table("next_hop"),
                            nat=ir.Nat("snat", ipv4_int(external_ip))))
        for inside in sorted({leg.network for leg in snatted}):
            yield ir.Flow(layout.table("nat_out"), PRIO_HIT, ir.Match.of(metadata=inside, eth_type=ir.ETH_TYPE_IPV4),
                          nat, owner)
        for leg in snatted:
            plen = ipaddress.IPv4Network(leg.cidr).prefixlen
            yield ir.Flow(layout.table("unsnat"), PRIO_ROUTE + plen,
                          ir.Match.of(metadata=ext, eth_type=ir.ETH_TYPE_IPV4, ipv4_dst=ipv4_prefix(leg.cidr)),
                          (ir.Move("ipv4_dst", layout.reg("nexthop")), *_egress(layout, leg)), owner)

    def _floating_ip(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        """A local port's FIP: answered and DNATed on the external network, its traffic SNATed on the way out."""
        fip: FloatingIP | None = topo.get(KIND_FIP, owner.id)
        found = _fip_path(topo, fip)
        if fip is None or found is None:
            return
        router, inside, ext = found
        floating, fixed, mac = fip.floating_ip_address, fip.fixed_ip_address, nat_mac(fip.floating_ip_address)
        ipv4 = ir.ETH_TYPE_IPV4
        yield arp_answer(layout.table("arp"), PRIO_HIT, ext, floating, mac, owner)
        yield ir.Flow(layout.table("router_mac"), PRIO_HIT, ir.Match.of(metadata=ext, eth_type=ipv4, eth_dst=mac),
                      (ir.GotoTable(layout.table("nat_in")),), owner)
        zone, next_hop = router_zone(router), layout.table("next_hop")
        yield ir.Flow(layout.table("nat_in"), PRIO_HIT,
                      ir.Match.of(metadata=ext, eth_type=ipv4, ipv4_dst=ipv4_int(floating)),
                      (ir.SetField(layout.reg("nexthop"), ipv4_int(fixed)), ir.SetField("metadata", inside.network),
                       ir.SetField("eth_src", inside.mac), ir.DecTtl(),
                       ir.Conntrack(zone, commit=True, table=next_hop, nat=ir.Nat("dnat", ipv4_int(fixed)))), owner)
        yield ir.Flow(layout.table("nat_out"), PRIO_FIP,
                      ir.Match.of(metadata=inside.network, eth_type=ipv4, ipv4_src=ipv4_int(fixed)),
                      (ir.SetField("metadata", ext), ir.SetField("eth_src", mac),
                       ir.Conntrack(zone, commit=True, table=next_hop, nat=ir.Nat("snat", ipv4_int(floating)))), owner)

    def _next_hop(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        port: Port | None = topo.get(KIND_PORT, owner.id)
        network: Network | None = port and topo.networks.get(port.network_id)
        if port is None or network is None:
            return
        if not topo.by("router_port", "network_id", port.network_id) and port.network_id not in _gateway_networks(topo):
            return
        for address in port.ips:
            if ":" not in address:
                yield ir.Flow(layout.table("next_hop"), PRIO_HIT,
                              ir.Match.of(metadata=network.unique_key, **{layout.reg("nexthop"): ipv4_int(address)}),
                              (ir.SetField("eth_dst", mac_int(port.mac)), layout.goto("out")), owner)

    _flows_of = {DEFAULTS.kind: _defaults, KIND_ROUTER_PORT: _router_port, KIND_ROUTER: _routes, OWNER_PORT: _next_hop,
                 KIND_FIP: _floating_ip, KIND_SNAT: _chassis_snat}


def _egress(layout: AppLayout, leg: Leg) -> tuple[ir.Action, ...]:
    """Leave routed through ``leg``: on its network, from its MAC, one hop older, to the next-hop lookup."""
    return (ir.SetField("metadata", leg.network), ir.SetField("eth_src", leg.mac), ir.DecTtl(),
            ir.GotoTable(layout.table("next_hop")))


def _leg(topo: Topology, rp: RouterPort) -> Leg | None:
    network: Network | None = topo.networks.get(rp.network_id)
    subnet: Subnet | None = topo.get("subnet", rp.subnet_id)
    if network is None or subnet is None or ":" in subnet.cidr:
        return None
    return Leg(network.unique_key, mac_int(rp.mac), subnet.cidr)


def _legs(topo: Topology, router: Router) -> list[Leg]:
    return [leg for leg in (_leg(topo, rp) for rp in topo.by("router_port", "router_id", router.id)) if leg]


def _gateway(topo: Topology, router: Router) -> Gateway | None:
    """Where the router's outside traffic goes, if it has a gateway on a known external network with IPv4."""
    network: Network | None = topo.networks.get(router.gateway_network_id)
    if network is None:
        return None
    subnets = [s for s in topo.by("subnet", "network_id", network.id) if ":" not in s.cidr]
    if not subnets:
        return None
    own = next((s for s in subnets if router.gateway_ip and ipaddress.ip_address(router.gateway_ip) in s.network),
               None)
    first = own or next((s for s in subnets if s.gateway_ip), subnets[0])
    return Gateway(network.unique_key, tuple(s.cidr for s in subnets), first.gateway_ip)


def _snat_legs(topo: Topology, network_id: str) -> list[Leg]:
    """The inside legs SNATed to this chassis's external_ip by the routers with their gateway on ``network_id``.

    A reply to external_ip names no router until it is un-SNATed, and then only its inside address tells where it
    goes: two routers with overlapping inside subnets (two tenants' 10.0.0.0/24) would send one's replies into the
    other's network. So a router's inside network is SNATed only when none of its subnets overlaps one an earlier
    router (by key) SNATs here; the later one fails closed (its VMs reach the outside by floating IPs only), logged.
    """
    routers = [r for r in sorted(topo.of("router").values(), key=lambda r: (r.unique_key, r.id))
               if r.gateway_network_id == network_id and r.enable_snat and _gateway(topo, r)]
    taken: list[tuple[ipaddress.IPv4Network, str]] = []
    snatted: list[Leg] = []
    for router in routers:
        by_network: dict[int, list[Leg]] = {}
        for leg in _legs(topo, router):
            by_network.setdefault(leg.network, []).append(leg)
        mine = []
        for legs in by_network.values():
            nets = [ipaddress.IPv4Network(leg.cidr) for leg in legs]
            clash = next(((net, other) for net in nets for held, other in taken if net.overlaps(held)), None)
            if clash is not None:
                LOG.warning("router %s: inside subnet %s overlaps router %s's, which this chassis already SNATs to %s, "
                            "so its network gets no SNAT here; give one of them another subnet, or its VMs floating "
                            "IPs", router.id, clash[0], clash[1], _external_ip(topo))
                continue
            mine += [(net, router.id) for net in nets]
            snatted += legs
        taken += mine
    return snatted


def _gateway_networks(topo: Topology) -> set[str]:
    return {r.gateway_network_id for r in topo.of("router").values() if r.gateway_network_id}


def _external_ip(topo: Topology) -> str:
    """This chassis's IPv4 SNAT address ("" = it does no SNAT)."""
    chassis: Chassis | None = topo.get("chassis", topo.chassis)
    return chassis.external_ip if chassis is not None and ":" not in chassis.external_ip else ""


def _external_ip_changed(change: Change, topo: Topology) -> bool:
    """This chassis's SNAT address changed (its record also changes at every heartbeat, which touches no flow)."""
    if change.kind != "chassis" or change.id != topo.chassis:
        return False
    return getattr(change.old, "external_ip", "") != getattr(change.new, "external_ip", "")


def _fip_path(topo: Topology, fip: FloatingIP | None) -> tuple[Router, Leg, int] | None:
    """(router, the fixed port's leg, the external network's key) of a FIP whose port is local here."""
    if fip is None or not fip.port_id or not topo.is_local(fip.port_id) or not fip.fixed_ip_address:
        return None
    port: Port = topo.ports[fip.port_id]
    ext: Network | None = topo.networks.get(fip.floating_network_id)
    if ext is None:
        return None
    fixed = ipaddress.IPv4Address(fip.fixed_ip_address)
    for rp in topo.by("router_port", "network_id", port.network_id):
        router: Router | None = topo.get("router", rp.router_id)
        leg = _leg(topo, rp)
        if (router is not None and leg is not None and router.gateway_network_id == ext.id
                and fixed in ipaddress.IPv4Network(leg.cidr)):
            return router, leg, ext.unique_key
    return None
