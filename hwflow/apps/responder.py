"""ARP and IPv6 neighbor discovery answered on the host for the ports' own addresses: requests never flood.

Every address of every port of a network this host has ports on (local or
remote: the topology holds them all) is known, with its MAC. So an ARP
request, or an IPv6 neighbor solicitation (NS), on the network for such an
address is answered right here, back out of the asking port, the way l3
answers for router ports: the other VMs never see it, and no broadcast or
multicast crosses a tunnel.

Not answered (passed on to ``out``, so L2 floods them as before):

* a gratuitous ARP (sender and target address the same): an announcement,
  not a question;
* a request from the owner itself for its own address (e.g. an RFC 5227
  probe, sent from 0.0.0.0, or its own NS): answering it would make the
  owner think its address is taken. A probe from any other port is
  answered: the address is.
* a request for an address of a port that is administratively down, or on a
  network that is (``Topology.admin_up``): its datapaths drop its traffic, so
  an answer would draw packets nobody takes (OVN answers only for ports that
  are up too); the request floods, and the port, down, does not answer;
* an NS from the unspecified address ``::`` (duplicate address detection,
  RFC 4862): the answer would go to ``::``, and it carries no link-layer
  option to turn into the answer's (see below). DAD from another port for
  a held address still reaches the owner, which defends it itself.

An NS becomes its neighbor advertisement (NA, RFC 4861) in place, in two
flows. In ``arp``: Ethernet and IPv6 addresses swapped round with the
target's as source, ICMPv6 type 136, the flags word S|O (l3 adds R for a
router), and the NS's source link-layer option retyped as a target
link-layer option (``nd_options_type`` 2); then, in ``na``, matching the NA
it now is, that option gets the target's MAC (``nd_tll``). One flow cannot do
it in OVS: it refuses ``nd_tll`` on a flow matching a solicitation, skips a
``nd_sll`` rewrite once the type is 136 (unmet prerequisites at translation)
and, in the datapath, retypes the option before it writes an address into
it, so ``nd_sll`` written before the retype is lost too. Linux always sends
the option in an NS from an address; one without it (allowed when unicast)
is answered without one, which RFC 4861 7.2.4 permits. The hop limit stays
255. OVS recomputes the ICMPv6 checksum.

Costs: an IPv4 address two flows (three for a local port), an IPv6 one a
flow more; the IPv4 path is what it was, and a port without IPv6 pays nothing for
it. IPv6 link-local addresses are not answered (they are no port address in
the model) and still flood.

Owners: ``responder:defaults`` (the pass-through), ``port:<id>`` (its answers).
"""

from __future__ import annotations

from collections.abc import Iterator

from hwflow.apps.base import (
    NA_OVERRIDE,
    NA_SOLICITED,
    App,
    arp_answer,
    dad_pass,
    defaults_owner,
    ipv4_int,
    ipv6_int,
    mac_int,
    nd_answer,
    port_owner,
    solicitation,
)
from hwflow.model.objects import Network, Port
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import KIND_LOCAL, KIND_NETWORK, KIND_PORT, Change, Topology

PRIO_ANSWER = 100
PRIO_PASS = 110  # above the answer: what must not be answered
PRIO_MISS = 0
DEFAULTS = defaults_owner("responder")

class ResponderApp(App):
    spec = AppSpec(name="responder", tables=("arp", "na"), entries={"in": "arp"}, exits=("out",))

    def owners(self, topo: Topology) -> Iterator[ir.Owner]:
        yield DEFAULTS
        yield from (port_owner(p) for p in sorted(topo.ports))

    def owner_flows(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        if owner == DEFAULTS:
            yield ir.Flow(layout.table("arp"), PRIO_MISS, ir.Match.of(), (layout.goto("out"),), owner)
            return
        port: Port | None = topo.ports.get(owner.id)
        network: Network | None = port and topo.networks.get(port.network_id)
        if port is None or network is None or not port.mac or not topo.admin_up(port):
            return  # a port administratively down (or on a network that is) is not answered for, as OVN does
        for address in port.ips:
            if ":" not in address:
                yield from self._answers(topo, layout, port, network.unique_key, address, owner)
            else:
                yield from self._nd_answers(topo, layout, port, network.unique_key, address, owner)

    @staticmethod
    def _answers(topo: Topology, layout: AppLayout, port: Port, net: int, address: str,
                 owner: ir.Owner) -> Iterator[ir.Flow]:
        table, value = layout.table("arp"), ipv4_int(address)
        request = {"metadata": net, "eth_type": ir.ETH_TYPE_ARP, "arp_op": 1, "arp_tpa": value}
        yield ir.Flow(table, PRIO_PASS, ir.Match.of(**request, arp_spa=value), (layout.goto("out"),), owner)
        if topo.is_local(port.id):
            yield ir.Flow(table, PRIO_PASS, ir.Match.of(**request, in_port=port.unique_key), (layout.goto("out"),),
                          owner)
        yield arp_answer(table, PRIO_ANSWER, net, address, mac_int(port.mac), owner)

    @staticmethod
    def _nd_answers(topo: Topology, layout: AppLayout, port: Port, net: int, address: str,
                    owner: ir.Owner) -> Iterator[ir.Flow]:
        table, onward = layout.table("arp"), layout.goto("out")
        yield dad_pass(table, PRIO_PASS, net, address, onward, owner)
        if topo.is_local(port.id):
            own = ir.Match.of(**solicitation(net, ipv6_int(address)), in_port=port.unique_key)
            yield ir.Flow(table, PRIO_PASS, own, (onward,), owner)
        yield from nd_answer(table, layout.table("na"), PRIO_ANSWER, net, address, mac_int(port.mac),
                             NA_SOLICITED | NA_OVERRIDE, owner)

    def affected(self, change: Change, topo: Topology) -> Iterator[ir.Owner]:
        if change.kind in (KIND_PORT, KIND_LOCAL):
            yield port_owner(change.id)
        elif change.kind == KIND_NETWORK:
            yield from (port_owner(p.id) for p in topo.ports_of(change.id))
