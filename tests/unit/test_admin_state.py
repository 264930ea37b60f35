"""Admin state (issue 17): a local port that is down, by its own ``admin_state_up`` or its network's, sends and
receives nothing, and is out of its network's flood; set up again, it is back. Checked with the reference
interpreter on the pipeline the incremental compiler keeps (and that a full compile gives the same)."""

from __future__ import annotations

import dataclasses
import ipaddress

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.model.objects import Chassis, Network, Port, Subnet
from hwflow.pipeline import interpreter, ir
from hwflow.pipeline.topology import Topology

NET = Network(id="n", name="n", vni=5, unique_key=1)
OTHER_NET = Network(id="m", name="m", vni=6, unique_key=2)
PORTS = {
    "p": Port(id="p", name="p", network_id="n", mac="fa:16:3e:00:00:01", ips=["10.0.0.1"], unique_key=1),
    "q": Port(id="q", name="q", network_id="n", mac="fa:16:3e:00:00:02", ips=["10.0.0.2"], unique_key=2),
    "r": Port(id="r", name="r", network_id="n", mac="fa:16:3e:00:00:03", ips=["10.0.0.3"], unique_key=3,
              chassis="c1"),  # on another chassis: reached through the tunnel
    "o": Port(id="o", name="o", network_id="m", mac="fa:16:3e:00:00:04", ips=["10.0.1.4"], unique_key=4),
    "o2": Port(id="o2", name="o2", network_id="m", mac="fa:16:3e:00:00:05", ips=["10.0.1.5"], unique_key=5),
}
SUBNETS = {"s": Subnet(id="s", name="s", network_id="n", cidr="10.0.0.0/24"),
           "t": Subnet(id="t", name="t", network_id="m", cidr="10.0.1.0/24")}
REMOTE = Chassis(id="c1", name="c1", tunnel_ip="192.0.2.1", tunnel_types=["vxlan"])
OTHERS = {"chassis": {"c1": REMOTE}, "subnet": SUBNETS}
LOCAL = {"p", "q", "o", "o2"}
TUN = ir.TUNNEL_PORTS["vxlan"]
BROADCAST = 0xFFFF_FFFF_FFFF


def mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def ipv4(port: Port, dst: Port, **fields: int) -> dict[str, int]:
    return {"in_port": port.unique_key, "eth_src": mac(port.mac), "eth_dst": mac(dst.mac),
            "eth_type": ir.ETH_TYPE_IPV4, "ipv4_src": int(ipaddress.IPv4Address(port.ips[0])),
            "ipv4_dst": int(ipaddress.IPv4Address(dst.ips[0])), "ip_proto": 1, **fields}


def arp_request(port: Port) -> dict[str, int]:
    return {"in_port": port.unique_key, "eth_src": mac(port.mac), "eth_dst": BROADCAST, "eth_type": ir.ETH_TYPE_ARP,
            "arp_op": 1, "arp_spa": int(ipaddress.IPv4Address(port.ips[0])), "arp_tpa": 0x0A0000FE}


def dhcp_discover(port: Port) -> dict[str, int]:
    return {"in_port": port.unique_key, "eth_src": mac(port.mac), "eth_dst": BROADCAST,
            "eth_type": ir.ETH_TYPE_IPV4, "ipv4_src": 0, "ipv4_dst": 0xFFFF_FFFF, "ip_proto": 17,
            "udp_src": 68, "udp_dst": 67}


def from_tunnel(dst_mac: int) -> dict[str, int]:
    return {"in_port": TUN, "tun_id": NET.vni, "tun_src": int(ipaddress.IPv4Address(REMOTE.tunnel_ip)),
            "eth_src": mac(PORTS["r"].mac), "eth_dst": dst_mac, "eth_type": ir.ETH_TYPE_IPV4,
            "ipv4_src": 0x0A000003, "ipv4_dst": 0x0A000001, "ip_proto": 1}


class Host:
    """A topology and the compiler following its changes one object at a time, as the agent's delta passes do."""

    def __init__(self) -> None:
        self.topo = Topology("h", {"n": NET, "m": OTHER_NET}, dict(PORTS), LOCAL, others=OTHERS)
        self.compiler = Compiler.from_file(layout_path(""))
        self.compiler.compile(self.topo)

    def set(self, kind: str, obj: Network | Port) -> None:
        self.compiler.update(self.topo, self.topo.apply(kind, obj.id, obj))
        full = Compiler.from_file(layout_path("")).compile(Topology(
            "h", dict(self.topo.networks), dict(self.topo.ports), set(self.topo.local_port_ids),
            others=OTHERS))
        assert set(self.compiler.pipeline().flows) == set(full.flows)

    def outputs(self, packet: dict[str, int]) -> set[int]:
        return {port for port, _ in interpreter.run(self.compiler.pipeline(), packet).outputs}

    def punted(self, packet: dict[str, int]) -> bool:
        return interpreter.run(self.compiler.pipeline(), packet).punt is not None


def down(obj: Network | Port) -> Network | Port:
    return dataclasses.replace(obj, admin_state_up=False)


def test_a_down_port_sends_and_receives_nothing_and_is_back_when_up() -> None:
    host = Host()
    p, q, o, o2 = PORTS["p"], PORTS["q"], PORTS["o"], PORTS["o2"]
    assert host.outputs(ipv4(p, q)) == {2} and host.outputs(ipv4(q, p)) == {1}
    assert {1, TUN} <= host.outputs(arp_request(q)) and host.punted(dhcp_discover(p))
    assert host.outputs(from_tunnel(mac(p.mac))) == {1} and 1 in host.outputs(from_tunnel(BROADCAST))

    host.set("port", down(p))
    assert host.outputs(ipv4(p, q)) == set() and host.outputs(arp_request(p)) == set()
    assert not host.punted(dhcp_discover(p))  # its DHCP is not answered either
    assert host.outputs(ipv4(q, p)) == set()  # nothing is delivered to it
    assert host.outputs(arp_request(q)) == {TUN}  # its flood goes on without it
    assert host.outputs(from_tunnel(mac(p.mac))) == set() and host.outputs(from_tunnel(BROADCAST)) == {2}
    assert host.outputs(ipv4(o, o2)) == {5}  # another network's port is not touched

    host.set("port", p)
    assert host.outputs(ipv4(p, q)) == {2} and host.outputs(ipv4(q, p)) == {1}
    assert {1, TUN} <= host.outputs(arp_request(q)) and host.punted(dhcp_discover(p))
    assert host.outputs(from_tunnel(mac(p.mac))) == {1}


def test_a_down_network_holds_every_local_port_of_it_down_and_is_back_when_up() -> None:
    host = Host()
    p, q, o, o2 = PORTS["p"], PORTS["q"], PORTS["o"], PORTS["o2"]
    host.set("network", down(NET))
    for sender, receiver in ((p, q), (q, p)):
        assert host.outputs(ipv4(sender, receiver)) == set() and host.outputs(arp_request(sender)) == set()
        assert not host.punted(dhcp_discover(sender))
    assert host.outputs(from_tunnel(mac(p.mac))) == set() and host.outputs(from_tunnel(BROADCAST)) == set()
    assert host.outputs(ipv4(o, o2)) == {5}

    host.set("port", down(p))  # a port down on a network down: up again only when both are
    host.set("network", NET)
    assert host.outputs(ipv4(q, p)) == set() and host.outputs(ipv4(p, q)) == set()
    assert host.outputs(arp_request(q)) == {TUN}
    host.set("port", p)
    assert host.outputs(ipv4(q, p)) == {1} and host.outputs(ipv4(p, q)) == {2}
    assert {1, TUN} <= host.outputs(arp_request(q))
