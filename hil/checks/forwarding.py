"""Real packets between namespaces, forwarded only by the rules hwflow's tc backend installed.

The path under test is the agent's: a compiled pipeline (IR), the
partitioner's hardware rules for it, ``to_flower`` with ``skip_hw`` (the
kernel's software flower stands in for the NIC), installed and read back
by :class:`hwflow.backends.tc.backend.TcBackend`. There is no bridge and no
route between the namespaces: a packet that no rule redirects is lost, so a
ping that passes was carried by the rules, and the rules' counters must
show exactly the packets sent. Each scenario is one :class:`Scenario`
(plain forwarding; the hardware runner reuses it); the rewriting actions
(pedit, VLAN, tunnel_key, ct) have theirs in :mod:`hil.checks.actions`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from hil.checks import host
from hil.suite import Check, CheckFailed
from hwflow.apps.compiler import Compiler, layout_path
from hwflow.backends.tc.backend import TC_FLAGS, Representor, TcBackend, to_flower
from hwflow.model.objects import Network, Port
from hwflow.offload.capabilities import Capabilities
from hwflow.offload.partition import PortOffload, partition
from hwflow.pipeline import ir
from hwflow.pipeline.topology import Topology
from hwflow.sim.profile import load_profile
from hwflow_drivers.generic import GENERIC_SWITCHDEV

NET_KEY = 7
STAND_IN_PROFILE = "mlx5-connectx6dx"  # etc/nic-profiles: what a real NIC would be asked to take
PINGS = 5


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """A VM stand-in: a namespace whose eth0 faces representor ``rep`` in the root namespace.

    In the VM eth0 is the veth peer of ``rep``; on a real NIC it is the VF
    netdev ``vf``, moved into the namespace and renamed.
    """

    port: int  # logical port key
    netns: str
    rep: str
    address: str
    vf: str | None = None

    def setup(self) -> None:
        host.sh("ip", "netns", "del", self.netns, check=False)
        host.sh("ip", "netns", "add", self.netns)
        if self.vf is None:
            host.delete_link(self.rep)
            host.veth(self.rep, "eth0", self.netns)
        else:
            host.sh("ip", "link", "set", self.vf, "netns", self.netns)
            host.sh("ip", "-n", self.netns, "link", "set", self.vf, "name", "eth0")
            host.sh("ip", "-n", self.netns, "link", "set", "eth0", "up")
            host.sh("ip", "link", "set", self.rep, "up")
        host.sh("ip", "netns", "exec", self.netns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        host.sh("ip", "-n", self.netns, "addr", "add", f"{self.address}/24", "dev", "eth0")
        host.clsact(self.rep)

    def teardown(self) -> None:
        """Deleting the namespace returns a VF to the root namespace (under its eth0 name: rename it back)."""
        if self.vf is not None:
            host.sh("ip", "-n", self.netns, "link", "set", "eth0", "down", check=False)
            host.sh("ip", "-n", self.netns, "link", "set", "eth0", "name", self.vf, check=False)
            host.sh("ip", "-n", self.netns, "link", "set", self.vf, "netns", "1", check=False)
        host.sh("ip", "netns", "del", self.netns, check=False)

    def mac(self) -> int:
        return host.mac_of("eth0", self.netns)

    def mac_text(self) -> str:
        return ":".join(f"{self.mac():012x}"[i:i + 2] for i in range(0, 12, 2))

    def knows(self, other: Endpoint) -> None:
        """A permanent neighbour entry: ARP is broadcast, which stays in software (there is none here)."""
        host.sh("ip", "-n", self.netns, "neigh", "replace", other.address, "lladdr", other.mac_text(), "dev", "eth0",
                "nud", "permanent")

    def ping(self, other: Endpoint, count: int) -> bool:
        out = host.sh("ip", "netns", "exec", self.netns, "ping", "-n", "-q", "-c", str(count), "-i", "0.2",
                      "-W", "2", other.address, check=False)
        return f"{count} received" in out


def l2_pipeline(endpoints: list[Endpoint]) -> ir.Pipeline:
    """What the L2 app compiles for one network: classify by port, then unicast by MAC and a flood."""
    flows = [ir.Flow(0, 100, ir.Match.of(in_port=e.port), (ir.SetField("metadata", NET_KEY), ir.GotoTable(1)),
                     f"port:{e.port}") for e in endpoints]
    flows += [ir.Flow(1, 100, ir.Match.of(metadata=NET_KEY, eth_dst=e.mac()), (ir.Output(e.port),),
                      f"port:{e.port}") for e in endpoints]
    flows.append(ir.Flow(1, 50, ir.Match.of(metadata=NET_KEY, eth_dst=(ir.MULTICAST_BIT, ir.MULTICAST_BIT)),
                         tuple(ir.Output(e.port) for e in endpoints), f"network:{NET_KEY}"))
    return ir.Pipeline.build(flows, {0: "classify", 1: "l2"})


def compiled_pipeline(endpoints: list[Endpoint]) -> ir.Pipeline:
    """What hwflow's own apps (the shipped layout: L2, port security, ...) compile for one network."""
    net = Network(id="hilnet", name="hilnet", vni=NET_KEY, unique_key=NET_KEY)
    ports = {f"p{e.port}": Port(id=f"p{e.port}", name=f"p{e.port}", network_id=net.id, mac=e.mac_text(),
                                ips=[e.address], unique_key=e.port) for e in endpoints}
    topology = Topology("hil", {net.id: net}, ports, set(ports))
    return Compiler.from_file(layout_path("")).compile(topology)


@dataclasses.dataclass(frozen=True)
class Scenario:
    """A pipeline over two endpoints, and what the partitioner must make of it.

    ``stand_in`` are the capabilities the partitioner assumes when the
    kernel's software flower stands in for a NIC (the VM); on a real NIC its
    own reported capabilities are used instead. ``counts`` are the packet
    counters expected on each side's rules, in ascending order.
    """

    name: str
    endpoints: tuple[Endpoint, ...]
    pipeline: Callable[[list[Endpoint]], ir.Pipeline]
    stand_in: Capabilities
    ethertypes: tuple[int, ...]
    expected_rules: int
    counts: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Datapath:
    """Where the rules go: the kernel's software flower (VM) or the NIC (skip_sw), and what it can do
    (None: the scenario's stand-in)."""

    flags: int
    switch_id: str
    capabilities: Capabilities | None


SOFTWARE_FLOWER = Datapath(TC_FLAGS["skip_hw"], "hil-vm", None)


def run_scenario(scenario: Scenario, datapath: Datapath = SOFTWARE_FLOWER) -> None:
    """Install the partitioner's rules, ping both ways, and read every rule's counter back."""
    a, b = scenario.endpoints
    for e in scenario.endpoints:
        e.setup()
    a.knows(b)
    b.knows(a)
    reps = {e.port: Representor(host.ifindex(e.rep), "netlink") for e in scenario.endpoints}
    caps = datapath.capabilities or scenario.stand_in
    ports = {e.port: PortOffload(e.port, datapath.switch_id, caps) for e in scenario.endpoints}
    plan = partition(scenario.pipeline(list(scenario.endpoints)), ports, scenario.ethertypes)
    if len(plan.rules) != scenario.expected_rules:
        raise CheckFailed(f"the partitioner chose {len(plan.rules)} hardware rules, expected "
                          f"{scenario.expected_rules}: {plan.rules}; software: {plan.software}")
    desired = [to_flower(rule, reps, datapath.flags) for rule in plan.rules]
    backend = TcBackend()
    try:
        if a.ping(b, 1):
            raise CheckFailed(f"{a.netns} reaches {b.netns} before any rule is installed: the test proves nothing")
        changes = backend.plan(desired, reps.values())
        installed = backend.install(changes)
        if installed != len(desired) or backend.refused():
            raise CheckFailed(f"installed {installed} of {len(desired)} rules; refused: {backend.refused()}")
        if not a.ping(b, PINGS):
            raise CheckFailed(f"ping {a.netns} -> {b.netns} lost packets with the rules installed")
        counts = {e.rep: sorted(s.packets if s else -1 for _, s in backend.installed("netlink", reps[e.port].ifindex))
                  for e in scenario.endpoints}
        if counts != {a.rep: list(scenario.counts), b.rep: list(scenario.counts)}:
            raise CheckFailed(f"rule counters {counts}, expected {list(scenario.counts)} on each side for "
                              f"{PINGS} echo requests and {PINGS} replies")
        again = backend.plan(desired, reps.values())
        if again:
            raise CheckFailed(f"a second sync against the kernel's dump is not empty: {again}")
        backend.remove(backend.plan([], reps.values()))
        if a.ping(b, 1):
            raise CheckFailed("ping still passes after the rules were removed: something else forwards")
    finally:
        backend.close()
        for e in scenario.endpoints:
            e.teardown()


def l2_scenario(a: Endpoint, b: Endpoint) -> Scenario:
    return Scenario("L2 unicast redirect (IPv4)", (a, b), l2_pipeline, GENERIC_SWITCHDEV, (ir.ETH_TYPE_IPV4,),
                    expected_rules=2, counts=(PINGS,))


def compiled_scenario(a: Endpoint, b: Endpoint) -> Scenario:
    """The shipped apps' pipeline, split for a ConnectX-6 Dx: per side, the port-security-checked unicast
    rule (eth_src, ipv4_src, eth_dst) carries the pings; the DHCP-discover rule, the pass rules holding what
    software must see (the port's own MAC, broadcasts, destinations L2 does not know) in front of the
    anti-spoofing drop, and that drop carry nothing: eight rules a side."""
    return Scenario("compiled by hwflow's apps (L2 + port security), split for ConnectX-6 Dx", (a, b),
                    compiled_pipeline, load_profile(STAND_IN_PROFILE).capabilities, (ir.ETH_TYPE_IPV4,),
                    expected_rules=16, counts=(0,) * 7 + (PINGS,))


SCENARIOS = tuple(make(Endpoint(1, "hila", "hilra", "10.77.0.1"), Endpoint(2, "hilb", "hilrb", "10.77.0.2"))
                  for make in (l2_scenario, compiled_scenario))


def checks() -> list[Check]:
    return [Check(f"packets {s.name}", lambda s=s: run_scenario(s)) for s in SCENARIOS]
