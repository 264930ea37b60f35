"""Two simulated hosts, one database: VMs on different chassis ping each other through VXLAN and Geneve.

Each host is a SimHost (its own namespace, ovs-vswitchd, simulated NIC and agent) on one shared SQLite
file. The hosts' NICs are wired to one underlay (``Underlay``: a bridge); each host's tunnel address sits
on an OVS bridge that holds its NIC's uplink representor. Ports are bound to their chassis, so each agent
sees the other's ports as remote and reaches them through the tunnel port of the network's type.

Where the pings go is the point: on a NIC that can encapsulate and decapsulate the network's tunnel type
(mlx5-connectx6dx: VXLAN and Geneve) the agent offloads the tunnel port, so the NIC's rules put the VM's
packets into the tunnel and take the other host's out of it, and OVS sees neither; on one that cannot
(sim-basic) OVS does both. A pair with one of each shows they interoperate: what one host's NIC
encapsulates the other's OVS decapsulates, and the other way round.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_e2e import PINGS, counted, device_rules, evidence, ovs_rx, representor, vm_ns, wait_for

from hwflow.backends.ovs.backend import TUNNEL_PORT_NAMES
from hwflow.backends.ovs.openflow import OpenFlowConnection
from hwflow.backends.tc import flower as fl
from hwflow.db.api import NbApi
from hwflow.model.objects import Chassis, Network, Port
from hwflow.sim.host import BRIDGE, SimHost, Underlay
from hwflow.sim.profile import load_profile

pytestmark = pytest.mark.functional

# the two hosts' NIC profiles: both in software, both in hardware, one of each
PAIRS = (("sim-basic", "sim-basic"), ("mlx5-connectx6dx", "mlx5-connectx6dx"), ("mlx5-connectx6dx", "sim-basic"))

# network type -> (VNI, [(vm, mac, ip) on host a, on host b])
NETWORKS = {
    "vxlan": (7001, [("vx1", "fa:16:3e:07:00:01", "10.70.0.1"), ("vx2", "fa:16:3e:07:00:02", "10.70.0.2")]),
    "geneve": (7002, [("gn1", "fa:16:3e:07:01:01", "10.70.1.1"), ("gn2", "fa:16:3e:07:01:02", "10.70.1.2")]),
}


def tunnel_packets(host: SimHost, kind: str) -> tuple[int, int]:
    """(rx, tx) packets of the host's OVS tunnel port of ``kind``."""
    of = OpenFlowConnection(host.ovs.mgmt(BRIDGE))
    try:
        return of.port_stats()[host.ovsdb.ofport(TUNNEL_PORT_NAMES[kind])]
    finally:
        of.close()


def encapsulates(rule: fl.FlowerRule) -> bool:
    return any(isinstance(a, fl.TunnelKey) and not a.unset for a in rule.actions)


def delivers(rule: fl.FlowerRule) -> bool:
    """A decap rule that hands the inner packet to a VF (not a goto or a pass to software)."""
    return any(isinstance(a, fl.Mirred) for a in rule.actions)


def decapsulated(host: SimHost, kind: str) -> int:
    """Packets the rules on the host's ``kind`` tunnel device delivered to a VF."""
    (device,) = [t["ifindex"] for t in host.nic_status.get("tunnels", ()) if t["type"] == kind]
    return sum(stats.packets for rule, stats in device_rules(host, [device]) if stats is not None and delivers(rule))


def offloads(host: SimHost, kind: str) -> bool:
    caps = load_profile(host.profile).capabilities
    return caps.can_encap(kind) and caps.can_decap(kind)


@pytest.fixture(scope="module", params=PAIRS, ids="+".join)
def hosts(request: pytest.FixtureRequest,
          tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimHost, SimHost]]:
    """Two hosts (NIC profiles: the parameter) with one VM of each network on each, bound to their chassis."""
    base: Path = tmp_path_factory.mktemp("multihost")
    tag = secrets.token_hex(2)
    database = f"sqlite:///{base}/nb.sqlite"
    underlay = Underlay(f"m{tag}")
    pair = [SimHost(f"m{tag}{i}", base / f"h{i}", database, profile=profile, tunnel_ip=f"172.31.70.{i + 1}",
                    external_ip=f"198.51.100.{i}", underlay=underlay)
            for i, profile in zip((1, 2), request.param, strict=True)]
    try:
        underlay.start()
        for host in pair:
            host.start()
        with NbApi.from_url(database) as nb:
            # hosts come up before their VMs: an agent cache does not take in a chassis registering after its ports
            wait_for("both chassis registered", lambda: {c.id for c in nb.list(Chassis)} == {h.name for h in pair})
            # each registers its per-chassis SNAT address, which l3 SNATs gateway traffic to
            assert {c.id: c.external_ip for c in nb.list(Chassis)} == {h.name: h.external_ip for h in pair}
            for kind, (vni, vms) in NETWORKS.items():
                net = nb.create(Network(name=f"mh-{kind}", network_type=kind, vni=vni))
                for host, (vm, mac, ip) in zip(pair, vms, strict=True):
                    port = nb.create(Port(name=vm, network_id=net.id, mac=mac, ips=[ip], chassis=host.name))
                    host.plug(port, vm_ns(host, vm))
        for host in pair:
            wait_for(f"the tunnel ports on {host.name}",
                     lambda host=host: all(host.ovsdb.ofport(name) for name in TUNNEL_PORT_NAMES.values()), host=host)
        yield pair[0], pair[1]
    finally:
        for host in pair:
            host.stop()
        underlay.stop()


@pytest.mark.parametrize("kind", sorted(NETWORKS))
def test_vms_on_two_hosts_ping_through_the_tunnel(hosts: tuple[SimHost, SimHost], kind: str) -> None:
    """Pings from a's VM to b's over ``kind``, and which datapath put each packet into the tunnel and took it
    out: the NIC on a host whose profile offloads ``kind`` (its VM's rules encapsulate, its tunnel device's
    rules deliver; OVS's tunnel port counts nothing), OVS on the others (the tunnel port counts every packet).
    """
    a, b = hosts
    (_, vms) = NETWORKS[kind]
    (vm_a, _, _), (vm_b, _, ip_b) = vms
    ends = ((a, vm_a), (b, vm_b))

    def now() -> list[tuple[int, int, int, int, int]]:
        """Each end: OVS tunnel rx, tx, OVS rx from the VM, NIC encapsulated from the VM, NIC decapsulated."""
        return [(*tunnel_packets(host, kind), ovs_rx(host, representor(host, vm)), counted(host, vm, encapsulates),
                 decapsulated(host, kind)) for host, vm in ends]

    def hardware_ready() -> bool:  # the first packets ARP for the tunnel's far end: the NIC waits for it
        before = now()
        lost = a.ping(vm_ns(a, vm_a), ip_b, count=3, interval=0.1)
        after = now()
        return lost == 0.0 and all(
            not offloads(host, kind) or (was[3] < is_[3] and was[4] < is_[4])
            for host, was, is_ in zip((a, b), before, after, strict=True))

    wait_for(f"{vm_a} on {a.name} to reach {ip_b} on {b.name} over {kind} without loss, through the NIC where "
             "it can", hardware_ready, timeout=40, host=a, details=lambda: evidence(a) + evidence(b))
    before = now()
    loss = a.ping(vm_ns(a, vm_a), ip_b, count=PINGS, interval=0.05)

    def seen() -> list[tuple[int, ...]]:
        return [tuple(n - m for n, m in zip(after, was, strict=True)) for after, was in zip(now(), before, strict=True)]

    def what() -> str:
        a_seen, b_seen = seen()
        return (f"(OVS tunnel rx, tx, OVS rx from the VM, NIC encap, NIC decap) on {a.profile}/{b.profile}: "
                f"a {a_seen}, b {b_seen}" + evidence(a) + evidence(b))

    def as_expected() -> bool:
        for host, (rx, tx, from_vm, encap, decap) in zip((a, b), seen(), strict=True):
            if offloads(host, kind):  # an ARP probe (not offloaded: IPv4 and IPv6 are) may cross OVS meanwhile
                if min(encap, decap) < PINGS or max(rx, tx, from_vm) > PINGS // 4:
                    return False
            elif min(rx, tx, from_vm) < PINGS or max(encap, decap) > 0:
                return False
        return True

    assert loss == 0, f"{loss}% loss " + what()
    # OVS updates a tunnel port's counters a moment later (a VM representor's at once): poll
    wait_for(f"the pings counted by the NIC on {'/'.join(h.name for h in (a, b) if offloads(h, kind)) or 'no host'} "
             "and by OVS on the others", as_expected, details=what)


def test_a_removed_tunnel_port_is_put_back(hosts: tuple[SimHost, SimHost]) -> None:
    a, b = hosts
    a.ovsdb.del_port(TUNNEL_PORT_NAMES["vxlan"])
    wait_for(f"the vxlan port back on {a.name}", lambda: a.ovsdb.ofport(TUNNEL_PORT_NAMES["vxlan"]), host=a)
    (_, vms) = NETWORKS["vxlan"]
    (vm_a, _, _), (_, _, ip_b) = vms
    wait_for(f"{vm_a} to reach {ip_b} again", lambda: a.ping(vm_ns(a, vm_a), ip_b, count=3, interval=0.1) == 0.0,
             timeout=30, host=a)
