"""Port security: a port may only send from its own addresses.

A port with ``port_security`` may send Ethernet from its MAC with IPv4 from
its IPv4 addresses, ARP claiming them, IPv6 from its IPv6 addresses or its
EUI-64 link-local address, and the two address-less exchanges a booting VM
needs: DHCPv4 discovery from 0.0.0.0 and IPv6 duplicate-address detection
from ::. ``allowed_address_pairs`` add (MAC, IP or prefix) pairs (VRRP,
clustered services). Anything else it sends is dropped here. A port
without port security passes untouched.

A port that is administratively down (its ``admin_state_up`` or its
network's is False: ``Topology.admin_up``) has one flow here, a drop of all
it sends: this table is the first after the classifier, which only tags a
packet with its network, so nothing of it reaches DHCP, the responders or
routing. What is sent to it is dropped by :mod:`hwflow.apps.output`.

The checks are plain header matches, so the partitioner can carry them into
the NIC along with the forwarding decision that follows.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator

from hwflow.apps.base import LocalPortApp, mac_int, port_owner
from hwflow.model.objects import Port
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import KIND_NETWORK, Change, Topology, network_admin_up

PRIO_ALLOW = 100
PRIO_DROP = 1
IPPROTO_UDP, IPPROTO_ICMPV6 = 17, 58


Source = tuple[int, int, int]  # (IP version, address, mask): the IR's value and mask for ipv4_src/ipv6_src


def source(text: str) -> Source:
    """An address or CIDR as the model stores it; inet_pton, not ipaddress objects (10k ports' worth each compile)."""
    address, _, length = text.partition("/")
    version, family, bits = (6, socket.AF_INET6, 128) if ":" in address else (4, socket.AF_INET, 32)
    mask = (1 << bits) - (1 << (bits - int(length))) if length else (1 << bits) - 1
    return version, int.from_bytes(socket.inet_pton(family, address), "big") & mask, mask


def link_local(mac: int) -> Source:
    """fe80::/64 with the EUI-64 interface id derived from ``mac`` (RFC 4291 appendix A), as a /128."""
    iid = ((mac >> 24) ^ 0x020000) << 40 | 0xFFFE << 24 | mac & 0xFFFFFF
    return 6, 0xFE80 << 112 | iid, (1 << 128) - 1


def allowed_sources(port: Port) -> list[tuple[int, Source]]:
    """(MAC, source prefix) pairs the port may send from."""
    own = mac_int(port.mac)
    pairs = [(own, source(ip)) for ip in port.ips]
    pairs.append((own, link_local(own)))
    pairs += [(mac_int(p["mac_address"]), source(p["ip_address"])) for p in port.allowed_address_pairs]
    return pairs


def prefix(field: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int]:
    width = ir.FIELD_BITS[field]
    mask = ((1 << net.prefixlen) - 1) << (width - net.prefixlen)
    return int(net.network_address), mask


class PortSecurityApp(LocalPortApp):
    spec = AppSpec(name="port_security", tables=("filter",), entries={"in": "filter"}, exits=("out",))

    def port_flows(self, port: Port, topo: Topology, layout: AppLayout, owner: ir.Owner) -> Iterator[ir.Flow]:
        table, onward = layout.table("filter"), (layout.goto("out"),)
        if not topo.admin_up(port):
            yield ir.Flow(table, PRIO_DROP, ir.Match.of(in_port=port.unique_key), (ir.Drop(),), owner)
            return
        if not port.port_security:
            yield ir.Flow(table, PRIO_ALLOW, ir.Match.of(in_port=port.unique_key), onward, owner)
            return
        for match in self._allowed(port):
            yield ir.Flow(table, PRIO_ALLOW, match, onward, owner)
        yield ir.Flow(table, PRIO_DROP, ir.Match.of(in_port=port.unique_key), (ir.Drop(),), owner)

    def affected(self, change: Change, topo: Topology) -> Iterator[ir.Owner]:
        """A port's own change, and a network's admin state flipping: every local port of it."""
        if change.kind == KIND_NETWORK and network_admin_up(change.old) != network_admin_up(change.new):
            yield from (port_owner(p.id) for p in topo.local_ports_of(change.id))
        yield from super().affected(change, topo)

    @staticmethod
    def _allowed(port: Port) -> Iterator[ir.Match]:
        key, own_mac = port.unique_key, mac_int(port.mac)
        for mac, (version, address, mask) in allowed_sources(port):
            if version == 4:
                yield ir.Match.of(in_port=key, eth_src=mac, eth_type=ir.ETH_TYPE_IPV4, ipv4_src=(address, mask))
                yield ir.Match.of(in_port=key, eth_src=mac, eth_type=ir.ETH_TYPE_ARP, arp_spa=(address, mask))
            else:
                yield ir.Match.of(in_port=key, eth_src=mac, eth_type=ir.ETH_TYPE_IPV6, ipv6_src=(address, mask))
        yield ir.Match.of(in_port=key, eth_src=own_mac, eth_type=ir.ETH_TYPE_IPV4, ipv4_src=0,
                          ip_proto=IPPROTO_UDP, udp_src=68, udp_dst=67)
        yield ir.Match.of(in_port=key, eth_src=own_mac, eth_type=ir.ETH_TYPE_IPV6, ipv6_src=0,
                          ip_proto=IPPROTO_ICMPV6)
