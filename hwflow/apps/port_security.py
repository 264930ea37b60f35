"""Port security: a port may only send from its own addresses.

A port with ``port_security`` may send Ethernet from its MAC with IPv4 from
its IPv4 addresses, ARP claiming them, IPv6 from its IPv6 addresses or its
EUI-64 link-local address, and the two address-less exchanges a booting VM
needs: DHCPv4 discovery from 0.0.0.0 and IPv6 duplicate-address detection
from ::. ``allowed_address_pairs`` add (MAC, IP or prefix) pairs (VRRP,
clustered services). Anything else it sends is dropped here. A port
without port security passes untouched.

The checks are plain header matches, so the partitioner can carry them into
the NIC along with the forwarding decision that follows.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterator

from hwflow.apps.base import LocalPortApp, mac_int
from hwflow.model.objects import Port
from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import Topology

PRIO_ALLOW = 100
PRIO_DROP = 1
IPPROTO_UDP, IPPROTO_ICMPV6 = 17, 58


@functools.lru_cache(maxsize=65536)
def ip_network(text: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """Parsed once per address: a full compile reads every port's addresses in several apps."""
    return ipaddress.ip_network(text, strict=False)


@functools.lru_cache(maxsize=65536)
def link_local(mac: str) -> ipaddress.IPv6Network:
    """fe80::/64 with the EUI-64 interface id derived from ``mac`` (RFC 4291 appendix A)."""
    b = bytearray(bytes.fromhex(mac.replace(":", "")))
    b[0] ^= 0x02
    eui = bytes(b[:3]) + b"\xff\xfe" + bytes(b[3:])
    return ipaddress.IPv6Network((int.from_bytes(b"\xfe\x80" + bytes(6) + eui, "big"), 128))


def allowed_sources(port: Port) -> list[tuple[str, ipaddress.IPv4Network | ipaddress.IPv6Network]]:
    """(MAC, source prefix) pairs the port may send from."""
    pairs = [(port.mac, ip_network(ip)) for ip in port.ips]
    pairs.append((port.mac, link_local(port.mac)))
    pairs += [(p["mac_address"], ip_network(p["ip_address"]))
              for p in port.allowed_address_pairs]
    return pairs


def prefix(field: str, net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> tuple[int, int]:
    width = ir.FIELD_BITS[field]
    mask = ((1 << net.prefixlen) - 1) << (width - net.prefixlen)
    return int(net.network_address), mask


class PortSecurityApp(LocalPortApp):
    spec = AppSpec(name="port_security", tables=("filter",), entries={"in": "filter"}, exits=("out",))

    def port_flows(self, port: Port, topo: Topology, layout: AppLayout, owner: str) -> Iterator[ir.Flow]:
        table, onward = layout.table("filter"), (layout.goto("out"),)
        if not port.port_security:
            yield ir.Flow(table, PRIO_ALLOW, ir.Match.of(in_port=port.unique_key), onward, owner)
            return
        for match in self._allowed(port):
            yield ir.Flow(table, PRIO_ALLOW, match, onward, owner)
        yield ir.Flow(table, PRIO_DROP, ir.Match.of(in_port=port.unique_key), (ir.Drop(),), owner)

    @staticmethod
    def _allowed(port: Port) -> Iterator[ir.Match]:
        key, own_mac = port.unique_key, mac_int(port.mac)
        for mac, net in allowed_sources(port):
            src = dict(in_port=key, eth_src=mac_int(mac))
            if net.version == 4:
                yield ir.Match.of(**src, eth_type=ir.ETH_TYPE_IPV4, ipv4_src=prefix("ipv4_src", net))
                yield ir.Match.of(**src, eth_type=ir.ETH_TYPE_ARP, arp_spa=prefix("arp_spa", net))
            else:
                yield ir.Match.of(**src, eth_type=ir.ETH_TYPE_IPV6, ipv6_src=prefix("ipv6_src", net))
        yield ir.Match.of(in_port=key, eth_src=own_mac, eth_type=ir.ETH_TYPE_IPV4, ipv4_src=0,
                          ip_proto=IPPROTO_UDP, udp_src=68, udp_dst=67)
        yield ir.Match.of(in_port=key, eth_src=own_mac, eth_type=ir.ETH_TYPE_IPV6, ipv6_src=0,
                          ip_proto=IPPROTO_ICMPV6)
