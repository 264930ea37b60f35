"""``hwflow bench converge --param hosts=N`` (N >= 2): a write on one host reaching the NICs of the others.

A :class:`hwflow.sim.lab.SimLab` of ``hosts`` simulated hosts (profile ``profile``, their NICs wired to one
underlay) on one database (``database``: etcd in the lab's namespace, or SQLite). ``mesh_ports`` ports on
networks of ``PORTS_PER_NETWORK`` (VXLAN), port i bound to host i % hosts, so every network has ports on
every host; each port's VF is plugged on its host (with the port's id as iface-id, as os-vif does) before
anything is written, so the figures are the agents' path from the database, not the plugging.

``full_mesh_s``: from the batch write of every network and port (``NbApi.create_many``) returning until
every host holds, for every port of its networks on another host, a NIC rule that encapsulates to that
host (``tunnel_key set`` to its tunnel address, matching the port's MAC) in the copy of the network's chain
on one of its own ports' representors (the rule a VM's packet to that port takes), and for every one of
its own ports a NIC rule delivering to it. Then a sample of pings (each host's first VM to the first VM of
each other host on its network) must all be answered: an error otherwise.

``write_to_remote_nic_median_ms`` / ``_p99_ms``: ``changes`` ports created one at a time, each bound to
another host than the one watched (in turn), VF plugged there beforehand; from the write returning until
the watched host's NIC holds the encapsulating rule to it (looked at every ``POLL_S`` on one representor
of the network, where the rule's copy lands; the agent puts NIC rules in after the OVS flows behind them).
``nic_rules_per_host``: the mean count of rules on a host's VF representors at the end.

Anchor: ovn-controller needs ~400 ms to apply a change across 3,000 hypervisors.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import secrets
import shutil
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from hwflow.apps.base import mac_int
from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.transport import SimSocketTransport, TcClient
from hwflow.bench import Progress, median_ms, p99_ms
from hwflow.db.api import Create
from hwflow.model.objects import NbObject, Network, Port, Subnet
from hwflow.sim.host import SimHost
from hwflow.sim.lab import SimLab

PORTS_PER_NETWORK = 20
POLL_S = 0.002
MESH_POLL_S = 0.05
SAMPLE_PINGS = 2


class MeshError(RuntimeError):
    """The lab did not reach what a measurement waits for; the message names it."""


@dataclasses.dataclass
class _Net:
    network: Network
    ports: dict[str, list[Port]]  # host name -> its ports on the network


def _mac(i: int) -> str:
    return "fa:16:3f:" + ":".join(f"{b:02x}" for b in i.to_bytes(3, "big"))


def _topology(lab: SimLab, ports: int) -> tuple[list[NbObject], list[_Net]]:
    objects: list[NbObject] = []
    nets: list[_Net] = []
    for n in range(max(1, -(-ports // PORTS_PER_NETWORK))):
        net = Network(id=str(uuid.uuid4()), name=f"mesh-{n}", network_type="vxlan", vni=6000 + n)
        objects += [net, Subnet(id=str(uuid.uuid4()), name=f"mesh-{n}", network_id=net.id,
                                cidr=f"10.{100 + n // 256}.{n % 256}.0/24")]
        nets.append(_Net(net, {h.name: [] for h in lab.hosts}))
    for i in range(ports):
        n = i // PORTS_PER_NETWORK
        host = lab.hosts[i % len(lab.hosts)]
        port = Port(id=str(uuid.uuid4()), name=f"mesh-{i}", network_id=nets[n].network.id, mac=_mac(i),
                    ips=[f"10.{100 + n // 256}.{n % 256}.{i % PORTS_PER_NETWORK + 1}"], chassis=host.name)
        objects.append(port)
        nets[n].ports[host.name].append(port)
    return objects, nets


class _Nic:
    """One host's NIC rules, read over its control socket."""

    def __init__(self, host: SimHost) -> None:
        self.host = host
        self.client = TcClient(SimSocketTransport(host.nic_socket))
        self.tunnel_ip = int(ipaddress.ip_address(host.tunnel_ip))

    def representor(self, port: Port) -> int:
        vm = self.host.vms[_vm(self.host, port)]
        return next(p["representor_ifindex"] for p in self.host.nic_ports if p["vf"] == vm.vf)

    def encaps(self, ifindex: int) -> set[tuple[int, int]]:
        """(destination MAC, tunnel address) of every rule on the representor that encapsulates."""
        out = set()
        for rule, _ in self.client.dump(ifindex):
            tunnel = next((a for a in rule.actions if isinstance(a, fl.TunnelKey) and not a.unset), None)
            if tunnel is not None and rule.keys.eth_dst is not None:
                out.add((rule.keys.eth_dst, tunnel.ipv4_dst))
        return out

    def delivers(self) -> set[int]:
        """Ifindexes some rule of the NIC redirects to."""
        devices = [p["representor_ifindex"] for p in self.host.nic_ports]
        devices += [t["ifindex"] for t in self.host.nic_status.get("tunnels", ())]
        return {a.ifindex for d in devices for rule, _ in self.client.dump(d) for a in rule.actions
                if isinstance(a, fl.Mirred)}

    def close(self) -> None:
        self.client.close()


def _vm(host: SimHost, port: Port) -> str:
    return f"{host.ns}-{port.name.rsplit('-', 1)[1]}"



def _meshed(lab: SimLab, nets: list[_Net], nics: dict[str, _Nic]) -> bool:
    tunnel = {h.name: nics[h.name].tunnel_ip for h in lab.hosts}
    for host in lab.hosts:
        nic = nics[host.name]
        if not {nic.representor(p) for net in nets for p in net.ports[host.name]} <= nic.delivers():
            return False
        for net in nets:
            own = net.ports[host.name]
            if not own:
                continue
            want = {(mac_int(p.mac), tunnel[other]) for other, ports in net.ports.items() if other != host.name
                    for p in ports}
            if not want <= nic.encaps(nic.representor(own[0])):
                return False
    return True




def run(params: dict, progress: Progress) -> dict[str, float]:
    hosts, ports, changes = params["hosts"], params["mesh_ports"], params["changes"]
    if hosts < 2 or ports < 2 * hosts or changes < 1:
        raise ValueError("converge with hosts >= 2 needs mesh_ports >= 2 * hosts and changes >= 1")
    workdir = Path(tempfile.mkdtemp(prefix="hwmesh-"))
    per_host = -(-ports // hosts) + changes
    lab = SimLab(f"m{secrets.token_hex(2)}", workdir, hosts=hosts, profiles=[params["profile"]],
                 database=params["database"], num_vfs=per_host, agent_debug=bool(params["keep"]))
    ok = False
    try:
        progress(f"starting {hosts} hosts ({params['profile']}, {per_host} VFs each) on {params['database']}")
        lab.start(lambda text: progress(f"  {text}"))
        results = _measure(lab, params, progress)
        ok = True
        return results
    finally:
        lab.stop()
        if ok and not params["keep"]:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            progress(f"logs and config left in {workdir}")


def _measure(lab: SimLab, params: dict, progress: Progress) -> dict[str, float]:
    timeout, changes = params["timeout_s"], params["changes"]
    objects, nets = _topology(lab, params["mesh_ports"])
    by_name = {h.name: h for h in lab.hosts}
    plug_start = time.perf_counter()
    for net in nets:
        for name, ports in net.ports.items():
            for port in ports:
                by_name[name].plug(port, _vm(by_name[name], port))
    results: dict[str, float] = {"plug_s": round(time.perf_counter() - plug_start, 3)}
    progress(f"plugged {params['mesh_ports']} VFs in {results['plug_s']:.1f}s; writing {len(objects)} objects")
    nics = {h.name: _Nic(h) for h in lab.hosts}
    try:
        start = time.perf_counter()
        lab.nb(lambda nb: nb.create_many(objects))
        while not _meshed(lab, nets, nics):
            if time.perf_counter() - start > timeout:
                raise MeshError(f"the hosts did not reach a full mesh in {timeout:.0f}s")
            time.sleep(MESH_POLL_S)
        results["full_mesh_s"] = round(time.perf_counter() - start, 3)
        progress(f"full mesh of {params['mesh_ports']} ports over {len(lab.hosts)} hosts in "
                 f"{results['full_mesh_s']:.2f}s; pinging a sample")
        _ping_sample(lab, nets)
        to_nic = _remote_writes(lab, nets, nics, changes, timeout, progress)
        results["write_to_remote_nic_median_ms"] = median_ms(to_nic)
        results["write_to_remote_nic_p99_ms"] = p99_ms(to_nic)
        results["nic_rules_per_host"] = round(statistics.mean(
            len([r for d in [p["representor_ifindex"] for p in h.nic_ports] for r in nics[h.name].client.dump(d)])
            for h in lab.hosts), 1)
    finally:
        for nic in nics.values():
            nic.close()
    return results


def _ping_sample(lab: SimLab, nets: list[_Net]) -> None:
    for net in nets[:1]:
        for host in lab.hosts:
            first = net.ports[host.name][0]
            for other in lab.hosts:
                if other is host:
                    continue
                target = net.ports[other.name][0]
                host.ping(_vm(host, first), target.ips[0], count=1, interval=0.1)  # ARP, and the NIC's neighbour
                loss = host.ping(_vm(host, first), target.ips[0], count=SAMPLE_PINGS, interval=0.1)
                if loss:
                    raise MeshError(f"{first.name} on {host.name} -> {target.name} on {other.name}: {loss}% loss "
                                    "with every rule in place")


def _remote_writes(lab: SimLab, nets: list[_Net], nics: dict[str, _Nic], changes: int, timeout: float,
                   progress: Progress) -> list[float]:
    watched = lab.hosts[0]
    net = nets[0]
    neighbour = nics[watched.name].representor(net.ports[watched.name][0])
    to_nic: list[float] = []
    for i in range(changes):
        owner = lab.hosts[1 + i % (len(lab.hosts) - 1)]
        port = Port(id=str(uuid.uuid4()), name=f"mesh-new{i}", network_id=net.network.id, mac=_mac(2**20 + i),
                    ips=[f"10.100.0.{200 + i}"], chassis=owner.name)
        owner.plug(port, _vm(owner, port))
        want = (mac_int(port.mac), nics[owner.name].tunnel_ip)
        lab.nb(lambda nb, port=port: nb.apply([Create(port)]))
        begin = time.perf_counter()
        while want not in nics[watched.name].encaps(neighbour):
            if time.perf_counter() - begin > timeout:
                raise MeshError(f"{port.name} on {owner.name}: no encapsulating rule on {watched.name} in {timeout}s")
            time.sleep(POLL_S)
        to_nic.append(time.perf_counter() - begin)
        progress(f"{port.name} on {owner.name}: {watched.name}'s NIC encapsulates to it after "
                 f"{to_nic[-1] * 1000:.1f} ms")
    return to_nic
