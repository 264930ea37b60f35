"""Real packets through rewriting rules placed by the partitioner from pipelines hwflow's apps compiled.

Each scenario builds a topology (routers, a VLAN provider network, a VXLAN
overlay, a security group), compiles it with the shipped layout, splits it
with :data:`KERNEL_FLOWER` (what the kernel's software flower can do),
turns the hardware rules into flower rules with ``to_flower`` (``skip_hw``)
and installs them with :class:`TcBackend` through ``TcClient(echo=True)``
(every rule's NLM_F_ECHO from the kernel must equal the rule sent). Namespaces stand in for the VMs,
the uplink's far end and the remote chassis; there is no bridge and no
route between them, so a ping that passes was carried by the rules. The
receiver only accepts what the actions made (its own MAC, its VLAN, its
VNI; the reply's TTL tells the decrement), and every rule's counter must
show the packets sent: the nonzero counters of each device's rules are
compared, since ``pass`` rules holding software paths in front (DHCP,
expiring TTLs, conntrack ``+inv``) see none of the pings. The split is the
agent's: a port's path hands over to a chain its network's ports share at
the layout's join tables, so a ping counts on the goto and on the shared
chain's rule; every chain ends in a catch-all ``pass``, which the security
group check sees take the one packet its chain has no rule for.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Mapping

from hil.checks import host
from hil.suite import Check, CheckFailed
from hwflow.apps.compiler import Compiler, layout_path
from hwflow.backends.tc.backend import TC_FLAGS, Representor, TcBackend, TunnelEndpoint, to_flower
from hwflow.backends.tc.transport import KernelTransport, TcClient
from hwflow.model.objects import (
    Chassis,
    Network,
    Port,
    Router,
    RouterPort,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)
from hwflow.offload import capabilities as hw
from hwflow.offload.capabilities import MASK_ANY, Capabilities, Conntrack
from hwflow.offload.partition import PortOffload, partition
from hwflow.pipeline import ir
from hwflow.pipeline.topology import Topology

PINGS = 4
SWITCH = "hil-vm"
HERE, THERE = "h1", "h2"
LOCAL_VTEP, REMOTE_VTEP = "192.168.77.1", "192.168.77.2"
VXLAN_PORT = 4789
PHYSNET = "physnet1"

# What the kernel's software flower does: every key hwflow encodes with any mask, every action, any chain.
KERNEL_FLOWER = Capabilities(
    match_fields={f: MASK_ANY for f in ("eth_dst", "eth_src", "eth_type", "vlan_vid", "ip_proto", "ip_ttl", "ipv4_src",
                                        "ipv4_dst", "ipv6_src", "ipv6_dst", "tcp_src", "tcp_dst", "udp_src", "udp_dst",
                                        "tun_id", "tun_ipv4_src", "tun_ipv4_dst")},
    actions=frozenset(hw.HW_ACTIONS), max_rules=10_000, max_actions_per_rule=32, counters=True,
    tunnel_encap=frozenset({"vxlan", "geneve"}), tunnel_decap=frozenset({"vxlan", "geneve"}),
    rewrite_fields=frozenset({"eth_src", "eth_dst", "ipv4_src", "ipv4_dst"}),
    conntrack=Conntrack(frozenset(hw.CT_STATES), zones=True, nat=True),
)


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def mac_text(mac: int) -> str:
    return ":".join(f"{mac:012x}"[i:i + 2] for i in range(0, 12, 2))


@dataclasses.dataclass(frozen=True)
class Host:
    """A namespace whose ``eth0`` is the peer of ``rep`` (root namespace)."""

    netns: str
    rep: str

    def up(self, address: str) -> None:
        host.sh("ip", "netns", "del", self.netns, check=False)
        host.delete_link(self.rep)
        host.sh("ip", "netns", "add", self.netns)
        host.veth(self.rep, "eth0", self.netns)
        self.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        self.run("ip", "addr", "add", address, "dev", "eth0")

    def run(self, *cmd: str, check: bool = True) -> str:
        return host.sh("ip", "netns", "exec", self.netns, *cmd, check=check)

    def mac(self, dev: str = "eth0") -> int:
        return host.mac_of(dev, self.netns)

    def neighbour(self, address: str, mac: int, dev: str = "eth0") -> None:
        self.run("ip", "neigh", "replace", address, "lladdr", mac_text(mac), "dev", dev, "nud", "permanent")

    def ping(self, address: str, count: int = PINGS) -> str:
        """ping's output; a run that lost packets fails the check with it."""
        out = self.run("ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", address, check=False)
        if f"{count} received" not in out:
            raise CheckFailed(f"ping {self.netns} -> {address} lost packets: {out.strip().splitlines()[-2:]}")
        return out

    def reaches(self, address: str) -> bool:
        return "1 received" in self.run("ping", "-n", "-c", "1", "-W", "1", address, check=False)

    def down(self) -> None:
        host.sh("ip", "netns", "del", self.netns, check=False)
        host.delete_link(self.rep)


@dataclasses.dataclass(frozen=True)
class Stage:
    """What a scenario built: the pipeline, the device of each port the partitioner may use, tunnel facts."""

    pipeline: ir.Pipeline
    devices: Mapping[int, str]  # logical port (or tunnel/uplink port) key -> netdev in the root namespace
    tunnels: Mapping[int, TunnelEndpoint] = dataclasses.field(default_factory=dict)


def compile_topology(nets: list[Network], ports: list[Port], local: set[str], **others: dict) -> ir.Pipeline:
    topology = Topology(HERE, {n.id: n for n in nets}, {p.id: p for p in ports}, local, others=others)
    return Compiler.from_file(layout_path("")).compile(topology)


def port(key: int, net: str, mac: int, address: str, chassis: str = HERE, **kw: object) -> Port:
    return Port(id=f"p{key}", name=f"p{key}", network_id=net, mac=mac_text(mac), ips=[address], unique_key=key,
                chassis=chassis, **kw)


def forward(stage: Stage, traffic: Callable[[], None], counts: Mapping[str, list[int]],
            probe: Callable[[], bool]) -> None:
    """Split, install, send ``traffic``, compare nonzero counters, sync again (empty), remove, ``probe`` fails."""
    reps = {key: Representor(host.ifindex(dev), "netlink") for key, dev in stage.devices.items()}
    offload = {key: PortOffload(key, SWITCH, KERNEL_FLOWER) for key in stage.devices}
    # the agent's layout: a port's path hands over to a chain its network's ports share at the join tables
    joins = Compiler.from_file(layout_path("")).layout.joins()
    plan = partition(stage.pipeline, offload, (ir.ETH_TYPE_IPV4,), joins=joins)
    desired = [to_flower(rule, reps, TC_FLAGS["skip_hw"], stage.tunnels) for rule in plan.rules]
    for dev in stage.devices.values():
        host.clsact(dev)
    backend = TcBackend(lambda _: TcClient(KernelTransport(), timeout=10.0, echo=True))  # the agent's echo check
    try:
        if probe():
            raise CheckFailed("the traffic passes before any rule is installed: the test proves nothing")
        changes = backend.plan(desired, reps.values())
        installed = backend.install(changes)
        if installed != len(desired) or backend.refused():
            raise CheckFailed(f"installed {installed} of {len(desired)} rules; refused: {backend.refused()}")
        traffic()
        seen = {dev: sorted(s.packets for _, s in backend.installed("netlink", host.ifindex(dev)) if s and s.packets)
                for dev in counts}
        if seen != counts:
            raise CheckFailed(f"nonzero rule counters {seen}, expected {counts}; rules: {plan.rules}")
        again = backend.plan(desired, reps.values())
        if again:
            raise CheckFailed(f"a second sync against the kernel's dump is not empty: {again}")
        backend.remove(backend.plan([], reps.values()))
        if probe():
            raise CheckFailed("the traffic still passes after the rules were removed: something else forwards")
    finally:
        backend.close()


def routed(a: Host, b: Host) -> None:
    """Two subnets and a router: per side, the route (both MACs, TTL - 1, csum) behind a pass for TTL <= 1."""
    a.up("10.1.0.1/24")
    b.up("10.2.0.1/24")
    gw_a, gw_b = 0x020000AAAA01, 0x020000AAAA02
    for h, gw, mac, other in ((a, "10.1.0.254", gw_a, "10.2.0.0/24"), (b, "10.2.0.254", gw_b, "10.1.0.0/24")):
        h.neighbour(gw, mac)
        h.run("ip", "route", "add", other, "via", gw)
    nets = [Network(id="na", name="na", vni=1, unique_key=1), Network(id="nb", name="nb", vni=2, unique_key=2)]
    subnets = {s.id: s for s in (Subnet(id="sa", name="sa", network_id="na", cidr="10.1.0.0/24",
                                        gateway_ip="10.1.0.254"),
                                 Subnet(id="sb", name="sb", network_id="nb", cidr="10.2.0.0/24",
                                        gateway_ip="10.2.0.254"))}
    rports = {rp.id: rp for rp in (
        RouterPort(id="ra", name="ra", router_id="r", network_id="na", subnet_id="sa", mac=mac_text(gw_a),
                   ip="10.1.0.254"),
        RouterPort(id="rb", name="rb", router_id="r", network_id="nb", subnet_id="sb", mac=mac_text(gw_b),
                   ip="10.2.0.254"))}
    ports = [port(11, "na", a.mac(), "10.1.0.1"), port(12, "nb", b.mac(), "10.2.0.1")]
    pipeline = compile_topology(nets, ports, {"p11", "p12"}, subnet=subnets, router={"r": Router(id="r", name="r")},
                                router_port=rports)

    def traffic() -> None:
        out = a.ping("10.2.0.1")
        if "ttl=63" not in out:
            raise CheckFailed(f"the reply's TTL was not decremented once (expected ttl=63): {out.splitlines()[1:2]}")

    # each side: the goto into its network's shared L3 chain, the route's goto (the packet untouched) into the
    # destination network's next-hop chain, and there the rule doing the router's rewrites and the output
    forward(Stage(pipeline, {11: a.rep, 12: b.rep}), traffic,
            {a.rep: [PINGS, PINGS, PINGS], b.rep: [PINGS, PINGS, PINGS]},
            lambda: a.reaches("10.2.0.1"))


def vlan(a: Host, b: Host) -> None:
    """A VLAN provider network: A is local, B behind the physnet uplink on VLAN 100 (push out, pop in)."""
    a.up("10.3.0.1/24")
    b.up("10.3.0.99/32")  # b's eth0 is the uplink's far end; B talks on eth0.100
    b.run("ip", "link", "add", "link", "eth0", "name", "eth0.100", "type", "vlan", "id", "100")
    b.run("ip", "addr", "add", "10.3.0.2/24", "dev", "eth0.100")
    b.run("ip", "link", "set", "eth0.100", "up")
    a.neighbour("10.3.0.2", b.mac("eth0.100"))
    b.neighbour("10.3.0.1", a.mac(), "eth0.100")
    net = Network(id="vl", name="vl", network_type="vlan", physical_network=PHYSNET, vlan_id=100, unique_key=3)
    ports = [port(11, "vl", a.mac(), "10.3.0.1"), port(12, "vl", b.mac("eth0.100"), "10.3.0.2", THERE)]
    pipeline = compile_topology([net], ports, {"p11"}, chassis=_chassis())
    uplink = ir.physnet_port(PHYSNET)
    forward(Stage(pipeline, {11: a.rep, uplink: b.rep}), lambda: a.ping("10.3.0.2"),
            {a.rep: [PINGS, PINGS], b.rep: [PINGS]}, lambda: a.reaches("10.3.0.2"))  # A: goto, shared chain


def vxlan(a: Host, c: Host) -> None:
    """A VXLAN overlay: A is local, C on another chassis whose real VTEP answers; encap and decap in rules."""
    a.up("10.4.0.1/24")
    c.up(f"{REMOTE_VTEP}/24")  # C's eth0 is the underlay; its VTEP is vxlan42
    host.sh("ip", "addr", "add", f"{LOCAL_VTEP}/24", "dev", c.rep)
    host.delete_link("hilvx0")
    host.sh("ip", "link", "add", "hilvx0", "type", "vxlan", "external", "dstport", str(VXLAN_PORT))
    host.sh("ip", "link", "set", "hilvx0", "up")
    c.run("ip", "link", "add", "vxlan42", "type", "vxlan", "id", "42", "remote", LOCAL_VTEP, "local", REMOTE_VTEP,
          "dstport", str(VXLAN_PORT))
    c.run("ip", "addr", "add", "10.4.0.2/24", "dev", "vxlan42")
    c.run("ip", "link", "set", "vxlan42", "up")
    a.neighbour("10.4.0.2", c.mac("vxlan42"))
    c.neighbour("10.4.0.1", a.mac(), "vxlan42")
    net = Network(id="ov", name="ov", network_type="vxlan", vni=42, unique_key=1)
    ports = [port(11, "ov", a.mac(), "10.4.0.1"), port(12, "ov", c.mac("vxlan42"), "10.4.0.2", THERE)]
    tunnel = ir.TUNNEL_PORTS["vxlan"]
    stage = Stage(compile_topology([net], ports, {"p11"}, chassis=_chassis()), {11: a.rep, tunnel: "hilvx0"},
                  {tunnel: TunnelEndpoint(ip(LOCAL_VTEP), VXLAN_PORT)})
    try:
        # A: goto, encap in its network's chain; the tunnel device: goto its own chain for the VNI (the tunnel's
        # metadata kept for that chain's enc_* keys), decap and output there
        forward(stage, lambda: a.ping("10.4.0.2"), {a.rep: [PINGS, PINGS], "hilvx0": [PINGS, PINGS]},
                lambda: a.reaches("10.4.0.2"))
    finally:
        host.delete_link("hilvx0")


def conntrack(a: Host, b: Host) -> None:
    """A security group on B admitting ICMP: ct in B's zone, goto chain, +new commit / +est; B cannot open."""
    a.up("10.5.0.1/24")
    b.up("10.5.0.2/24")
    a.neighbour("10.5.0.2", b.mac())
    b.neighbour("10.5.0.1", a.mac())
    net = Network(id="n", name="n", vni=5, unique_key=5)
    group = SecurityGroup(id="g", name="g", unique_key=1)
    icmp_in = SecurityGroupRule(id="icmp-in", name="icmp-in", security_group_id="g", direction="ingress",
                                protocol="icmp")
    ports = [port(11, "n", a.mac(), "10.5.0.1"), port(12, "n", b.mac(), "10.5.0.2", security_groups=["g"])]
    pipeline = compile_topology([net], ports, {"p11", "p12"}, security_group={"g": group},
                                security_group_rule={"icmp-in": icmp_in})

    def traffic() -> None:
        a.ping("10.5.0.2")
        if b.reaches("10.5.0.1"):
            raise CheckFailed("B opened a connection to A although its group admits no egress")

    # A: goto its network's shared chain, there B's ct (every request), +new commit (the first), +est (the rest).
    # B: ct (replies and its own try), +est -> goto the shared chain, output to A there; its own try (+new, which
    # its group refuses) meets the ct chain's catch-all pass: software, not a miss the kernel would drop.
    forward(Stage(pipeline, {11: a.rep, 12: b.rep}), traffic,
            {a.rep: [1, PINGS - 1, PINGS, PINGS], b.rep: [1, PINGS, PINGS, PINGS + 1]}, lambda: a.reaches("10.5.0.2"))


def _chassis() -> dict[str, Chassis]:
    return {c.id: c for c in (Chassis(id=HERE, tunnel_ip=LOCAL_VTEP), Chassis(id=THERE, tunnel_ip=REMOTE_VTEP))}


SCENARIOS: tuple[tuple[str, Callable[[Host, Host], None]], ...] = (
    ("routed by hwflow's L3: MAC rewrite and TTL decrement (pedit + csum)", routed),
    ("VLAN provider network: push to the uplink, pop from it", vlan),
    ("VXLAN overlay: encap to an external vxlan device (tunnel_key) and decap (enc keys)", vxlan),
    ("security group: conntrack chain (ct zone, goto chain, commit, +est)", conntrack),
)


def run(scenario: Callable[[Host, Host], None]) -> None:
    a, b = Host("hilxa", "hilxra"), Host("hilxb", "hilxrb")
    try:
        scenario(a, b)
    finally:
        a.down()
        b.down()


def checks() -> list[Check]:
    return [Check(f"packets {name}", lambda s=scenario: run(s)) for name, scenario in SCENARIOS]
