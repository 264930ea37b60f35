"""What every network application is: topology in, IR flows out, per owner.

An app declares its tables, entry and exit points and registers in ``spec``
(by local name); the datapath layout (hwflow.pipeline.layout) gives it
numbers, handed to it as an :class:`AppLayout`. Apps know nothing of OVS,
tc or NICs, nor of which app comes before or after them.

Flows are produced per *owner* (a logical object: an :class:`ir.Owner`, a
kind and an id, ``port:<id>`` as text), and an app says which of its owners
a change may touch. That is all the incremental compiler needs: on a change
it recomputes just those owners' flows, the way OVN's incremental engine
recomputes only dirty nodes. Apps dispatch on ``owner.kind``.
"""

from __future__ import annotations

import abc
import functools
import ipaddress
import socket
from collections.abc import Iterable, Iterator

from hwflow.model.objects import Port
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import KIND_LOCAL, KIND_PORT, Change, Topology

IPPROTO_ICMPV6 = 58
ND_SOLICIT, ND_ADVERT = 135, 136
ND_OPT_TARGET_LLADDR = 2
NA_ROUTER, NA_SOLICITED, NA_OVERRIDE = 0x8000_0000, 0x4000_0000, 0x2000_0000  # the NA flags word (nd_reserved)

OWNER_PORT, OWNER_NETWORK = "port", "network"  # owner kinds several apps share


class App(abc.ABC):
    spec: AppSpec

    @abc.abstractmethod
    def owners(self, topo: Topology) -> Iterable[ir.Owner]:
        """Every owner this app has flows for in ``topo``."""

    @abc.abstractmethod
    def owner_flows(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterable[ir.Flow]:
        """The flows of one owner now (none when the owner is gone)."""

    @abc.abstractmethod
    def affected(self, change: Change, topo: Topology) -> Iterable[ir.Owner]:
        """Owners whose flows ``change`` may alter (``topo`` is already updated)."""

    def flows(self, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        for owner in self.owners(topo):
            yield from self.owner_flows(owner, topo, layout)


class LocalPortApp(App):
    """An app whose flows are all per local port (owner ``port:<id>``).

    Subclasses write ``port_flows``; a change to the port, or to its being
    local, recomputes just that port.
    """

    def owners(self, topo: Topology) -> Iterator[ir.Owner]:
        return (port_owner(p.id) for p in topo.local_ports())

    def owner_flows(self, owner: ir.Owner, topo: Topology, layout: AppLayout) -> Iterator[ir.Flow]:
        if owner.kind == OWNER_PORT and topo.is_local(owner.id):
            yield from self.port_flows(topo.ports[owner.id], topo, layout, owner)

    def affected(self, change: Change, topo: Topology) -> Iterator[ir.Owner]:
        if change.kind in (KIND_PORT, KIND_LOCAL):
            yield port_owner(change.id)

    @abc.abstractmethod
    def port_flows(self, port: Port, topo: Topology, layout: AppLayout, owner: ir.Owner) -> Iterable[ir.Flow]:
        """The flows of one local port."""


def network_of(change: Change) -> set[str]:
    """Networks a port change touches: the one it left and the one it is on."""
    return {obj.network_id for obj in (change.old, change.new) if isinstance(obj, Port)}


def port_owner(port_id: str) -> ir.Owner:
    return ir.Owner(OWNER_PORT, port_id)


def network_owner(network_id: str) -> ir.Owner:
    return ir.Owner(OWNER_NETWORK, network_id)


def defaults_owner(app: str) -> ir.Owner:
    """An app's flows that belong to no object (its table misses, the pass-through): ``<app>:defaults``."""
    return ir.Owner(app, "defaults")


def arp_answer(table: int, priority: int, network: int, address: str, mac: int, owner: ir.Owner) -> ir.Flow:
    """Answer an ARP request for ``address`` on ``network`` with ``mac``, back out of the asking port."""
    answer = (
        ir.Move("eth_src", "eth_dst"), ir.SetField("eth_src", mac), ir.SetField("arp_op", 2),
        ir.Move("arp_sha", "arp_tha"), ir.SetField("arp_sha", mac),
        ir.Move("arp_spa", "arp_tpa"), ir.SetField("arp_spa", ipv4_int(address)), ir.OutputInPort(),
    )
    return ir.Flow(table, priority,
                   ir.Match.of(metadata=network, eth_type=ir.ETH_TYPE_ARP, arp_op=1, arp_tpa=ipv4_int(address)),
                   answer, owner)


def solicitation(network: int, target: int) -> dict[str, int]:
    """Match terms of a neighbor solicitation for ``target`` on ``network`` (with the OpenFlow prerequisites)."""
    return {"metadata": network, "eth_type": ir.ETH_TYPE_IPV6, "ip_proto": IPPROTO_ICMPV6, "icmp_type": ND_SOLICIT,
            "nd_target": target}


def nd_answer(ask: int, finish: int, priority: int, network: int, address: str, mac: int, flags: int,
              owner: ir.Owner) -> tuple[ir.Flow, ir.Flow]:
    """Answer a neighbor solicitation for ``address`` on ``network`` with ``mac``, back out of the asking port.

    The flow in table ``ask`` turns the NS into an NA with ``flags`` (NA_SOLICITED | NA_OVERRIDE for a port,
    plus NA_ROUTER for a router's) and goes on to table ``finish``, whose flow fills the option with ``mac``.
    """
    target = ipv6_int(address)
    advert = (
        ir.Move("eth_src", "eth_dst"), ir.SetField("eth_src", mac),
        ir.Move("ipv6_src", "ipv6_dst"), ir.SetField("ipv6_src", target),
        ir.SetField("icmp_type", ND_ADVERT), ir.SetField("nd_reserved", flags),
        ir.SetField("nd_options_type", ND_OPT_TARGET_LLADDR), ir.GotoTable(finish),
    )
    return (ir.Flow(ask, priority, ir.Match.of(**solicitation(network, target)), advert, owner),
            ir.Flow(finish, priority, ir.Match.of(**{**solicitation(network, target), "icmp_type": ND_ADVERT}),
                    (ir.SetField("nd_tll", mac), ir.OutputInPort()), owner))


def dad_pass(table: int, priority: int, network: int, address: str, onward: ir.Action, owner: ir.Owner) -> ir.Flow:
    """Duplicate address detection for ``address`` (an NS from ``::``) goes ``onward``, unanswered."""
    return ir.Flow(table, priority, ir.Match.of(**solicitation(network, ipv6_int(address)), ipv6_src=0), (onward,),
                   owner)


# --- address conversions every app needs (IR values are plain integers) ---------------


def mac_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


def ipv4_int(address: str) -> int:
    """A dotted-quad IPv4 address (the model keeps them canonical) as an int; inet_pton is strict and fast."""
    return int.from_bytes(socket.inet_pton(socket.AF_INET, address), "big")


def ipv6_int(address: str) -> int:
    return int.from_bytes(socket.inet_pton(socket.AF_INET6, address), "big")


@functools.lru_cache(maxsize=65536)
def ipv4_prefix(cidr: str) -> tuple[int, int]:
    """(network address, netmask) of an IPv4 CIDR, as IR value and mask; parsed once per CIDR."""
    net = ipaddress.IPv4Network(cidr, strict=False)
    return int(net.network_address), int(net.netmask)
