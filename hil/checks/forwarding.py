"""Real packets between namespaces, forwarded only by the rules hwflow's tc backend installed.

The path under test is the agent's: a compiled pipeline (IR), the
partitioner's hardware rules for it, ``to_flower`` with ``skip_hw`` (the
kernel's software flower stands in for the NIC), installed and read back
by :class:`hwflow.backends.tc.backend.TcBackend`. There is no bridge and no
route between the namespaces: a packet that no rule redirects is lost, so a
ping that passes was carried by the rules, and the rules' counters must
show exactly the packets sent. Each scenario is one :class:`Scenario`; new
encoder features (VLAN, pedit, tunnel_key, ct) become new scenarios.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from hil.checks import host
from hil.suite import Check, CheckFailed
from hwflow.backends.tc.backend import TC_FLAGS, Representor, TcBackend, to_flower
from hwflow.offload.capabilities import Capabilities
from hwflow.offload.partition import PortOffload, partition
from hwflow.pipeline import ir
from hwflow_drivers.generic import GENERIC_SWITCHDEV

NET_KEY = 7
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

    def knows(self, other: Endpoint) -> None:
        """A permanent neighbour entry: ARP is broadcast, which stays in software (there is none here)."""
        mac = ":".join(f"{other.mac():012x}"[i:i + 2] for i in range(0, 12, 2))
        host.sh("ip", "-n", self.netns, "neigh", "replace", other.address, "lladdr", mac, "dev", "eth0",
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


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    endpoints: tuple[Endpoint, ...]
    pipeline: Callable[[list[Endpoint]], ir.Pipeline]
    ethertypes: tuple[int, ...]
    expected_rules: int


@dataclasses.dataclass(frozen=True)
class Datapath:
    """Where the rules go: the kernel's software flower (VM) or the NIC (skip_sw), and what it can do."""

    flags: int
    switch_id: str
    capabilities: Capabilities


SOFTWARE_FLOWER = Datapath(TC_FLAGS["skip_hw"], "hil-vm", GENERIC_SWITCHDEV)


def run_scenario(scenario: Scenario, datapath: Datapath = SOFTWARE_FLOWER) -> None:
    """Install the partitioner's rules, ping both ways, and read every rule's counter back."""
    a, b = scenario.endpoints
    for e in scenario.endpoints:
        e.setup()
    a.knows(b)
    b.knows(a)
    reps = {e.port: Representor(host.ifindex(e.rep), "netlink") for e in scenario.endpoints}
    ports = {e.port: PortOffload(e.port, datapath.switch_id, datapath.capabilities) for e in scenario.endpoints}
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
        counts = {e.rep: [s.packets if s else None for _, s in backend.installed("netlink", reps[e.port].ifindex)]
                  for e in scenario.endpoints}
        if counts != {a.rep: [PINGS], b.rep: [PINGS]}:
            raise CheckFailed(f"rule counters {counts}; sent {PINGS} echo requests and got {PINGS} replies")
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
    return Scenario("L2 unicast redirect (IPv4)", (a, b), l2_pipeline, (ir.ETH_TYPE_IPV4,), expected_rules=2)


SCENARIOS = (l2_scenario(Endpoint(1, "hila", "hilra", "10.77.0.1"), Endpoint(2, "hilb", "hilrb", "10.77.0.2")),)


def checks() -> list[Check]:
    return [Check(f"packets {s.name}", lambda s=s: run_scenario(s)) for s in SCENARIOS]
