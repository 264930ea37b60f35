"""Port security admits exactly the port's own sources (checked with the interpreter)."""

from __future__ import annotations

import ipaddress

from hypothesis import given, settings
from hypothesis import strategies as st

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.apps.port_security import link_local, source
from hwflow.model.objects import Network, Port
from hwflow.pipeline import interpreter, ir
from hwflow.pipeline.topology import Topology

MAC, OTHER_MAC, PEER_MAC = "fa:16:3e:00:00:01", "fa:16:3e:00:00:99", "fa:16:3e:00:00:02"
NET = Network(id="n", name="n", vni=5, unique_key=1)


def mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def pipeline_for(port: Port) -> ir.Pipeline:
    peer = Port(id="peer", name="peer", network_id="n", mac=PEER_MAC, unique_key=2)
    topo = Topology("h", {"n": NET}, {"p": port, "peer": peer}, {"p", "peer"})
    return Compiler.from_file(layout_path("")).compile(topo)


def sent(pipeline: ir.Pipeline, **fields: int) -> bool:
    """Did a unicast packet from the port reach its peer?"""
    pkt = {"in_port": 1, "eth_dst": mac(PEER_MAC), **fields}
    return interpreter.run(pipeline, pkt).ports == (2,)


addresses = st.integers(0, 255).map(lambda i: f"10.0.0.{i}")


@settings(max_examples=150, deadline=None)
@given(st.sets(addresses, max_size=3), st.sets(addresses, max_size=2), addresses, st.booleans())
def test_only_the_ports_own_sources_pass(ips, pairs, source, own_mac):
    ips = sorted(ips - {"10.0.0.0"})
    port = Port(id="p", name="p", network_id="n", mac=MAC, ips=ips, unique_key=1,
                allowed_address_pairs=[{"ip_address": a, "mac_address": OTHER_MAC} for a in sorted(pairs)])
    pipeline = pipeline_for(port)
    src_mac = MAC if own_mac else OTHER_MAC
    allowed = (source in ips and own_mac) or (source in pairs and not own_mac)
    ipv4 = {"eth_src": mac(src_mac), "eth_type": ir.ETH_TYPE_IPV4, "ipv4_src": int(ipaddress.IPv4Address(source)),
            "ip_proto": 1}
    arp = {"eth_src": mac(src_mac), "eth_type": ir.ETH_TYPE_ARP, "arp_spa": int(ipaddress.IPv4Address(source))}
    assert sent(pipeline, **ipv4) == allowed
    assert sent(pipeline, **arp) == allowed


def test_booting_vm_exchanges_pass_and_nothing_else_from_nowhere():
    pipeline = pipeline_for(Port(id="p", name="p", network_id="n", mac=MAC, ips=["10.0.0.1"], unique_key=1))
    dhcp = {"eth_src": mac(MAC), "eth_type": ir.ETH_TYPE_IPV4, "ipv4_src": 0, "ip_proto": 17}
    assert sent(pipeline, **dhcp, udp_src=68, udp_dst=67)
    assert not sent(pipeline, **dhcp, udp_src=68, udp_dst=53)
    v6 = {"eth_src": mac(MAC), "eth_type": ir.ETH_TYPE_IPV6}
    assert sent(pipeline, **v6, ipv6_src=0, ip_proto=58)  # duplicate address detection
    assert not sent(pipeline, **v6, ipv6_src=0, ip_proto=17)
    assert sent(pipeline, **v6, ipv6_src=link_local(mac(MAC))[1], ip_proto=17)
    assert not sent(pipeline, **v6, ipv6_src=link_local(mac(OTHER_MAC))[1], ip_proto=17)


def test_link_local_is_the_eui64_address():
    assert link_local(mac("fa:16:3e:00:00:01")) == (6, int(ipaddress.IPv6Address("fe80::f816:3eff:fe00:1")), 2**128 - 1)


@given(st.ip_addresses(), st.data())
def test_source_parses_as_ipaddress_does(address, data):
    length = data.draw(st.integers(0, address.max_prefixlen))
    net = ipaddress.ip_network(f"{address}/{length}", strict=False)
    assert source(f"{address}/{length}") == (net.version, int(net.network_address), int(net.netmask))
    assert source(str(address)) == (address.version, int(address), 2**address.max_prefixlen - 1)


def test_without_port_security_anything_passes():
    pipeline = pipeline_for(Port(id="p", name="p", network_id="n", mac=MAC, ips=["10.0.0.1"], unique_key=1,
                                 port_security=False))
    assert sent(pipeline, eth_src=mac(OTHER_MAC), eth_type=ir.ETH_TYPE_IPV4, ipv4_src=0x08080808, ip_proto=6)
