"""Partition a host's compiled pipeline: the split into NIC rules and software paths, full and per change.

The host is the compile benchmark's (:func:`hwflow.bench.compile.build`): ``local_ports`` ports here and
``remote_ports`` bound to other chassis (reached through VXLAN tunnels), 20 ports a network, a router per 100
ports (joining five networks) and a security group per 100 ports. Every local port is a VF of one NIC with
the capabilities of ``profile`` (``etc/nic-profiles``), and so is the host's VXLAN tunnel device. IPv4
(``[offload] ethertypes``' default).

``partition_s``: a full partition (what the agent does at start and on the resync timer). ``hw_rules``:
rules planned, each shared chain once; ``tc_rules``: the rules the representors get (a NIC keeps a copy of
a shared chain per representor).
"""

from __future__ import annotations

import dataclasses
import time

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.bench import Progress
from hwflow.bench.compile import build
from hwflow.model.objects import Chassis
from hwflow.offload.partition import PortOffload, partition
from hwflow.pipeline import ir
from hwflow.pipeline.topology import Topology
from hwflow.sim.profile import load_profile

DEFAULTS = {"local_ports": 1000, "remote_ports": 10_000, "profile": "mlx5-connectx6dx"}
PORTS_PER_NETWORK = 20
PORTS_PER_ROUTER = PORTS_PER_GROUP = 100
REMOTE_CHASSIS = 16


def host(local_ports: int, remote_ports: int) -> tuple[Compiler, Topology]:
    """The benchmark's host: its compiler (with everything compiled) and its topology."""
    total = local_ports + remote_ports
    scale = {"ports": total, "networks": max(1, total // PORTS_PER_NETWORK),
             "routers": max(1, total // PORTS_PER_ROUTER), "groups": max(1, total // PORTS_PER_GROUP)}
    nets, ports, others = build(scale)
    chassis = {f"c{i}": Chassis(id=f"c{i}", name=f"c{i}", tunnel_ip=f"192.0.2.{i + 1}", tunnel_types=["vxlan"])
               for i in range(REMOTE_CHASSIS)}
    # every (total // local_ports)-th port is local, so local ports spread over all the networks
    stride = max(1, total // max(local_ports, 1))
    local = {pid for i, pid in enumerate(ports) if i % stride == 0 and i // stride < local_ports}
    for i, pid in enumerate(ports):
        if pid not in local:
            ports[pid] = dataclasses.replace(ports[pid], chassis=f"c{i % REMOTE_CHASSIS}")
    compiler = Compiler.from_file(layout_path(""))
    topo = Topology("bench", nets, ports, local, others={**others, "chassis": chassis})
    compiler.compile(topo)
    return compiler, topo


def offload(topo: Topology, profile: str) -> dict[int, PortOffload]:
    caps = load_profile(profile).capabilities
    ports = {p.unique_key: PortOffload(p.unique_key, "nic0", caps) for p in topo.local_ports()}
    ports[ir.TUNNEL_PORTS["vxlan"]] = PortOffload(ir.TUNNEL_PORTS["vxlan"], "nic0", caps)
    return ports


def run(params: dict, progress: Progress) -> dict[str, float]:
    progress(f"compiling {params['local_ports']} local and {params['remote_ports']} remote ports")
    compiler, topo = host(params["local_ports"], params["remote_ports"])
    pipeline = compiler.pipeline()
    ports = offload(topo, params["profile"])
    joins = compiler.layout.joins()
    progress(f"partitioning {len(pipeline.flows)} flows for {len(ports)} ports ({params['profile']})")
    start = time.perf_counter()
    plan = partition(pipeline, ports, (ir.ETH_TYPE_IPV4,), joins=joins)
    seconds = time.perf_counter() - start
    planned, installed = plan.counts()
    return {
        "flows": len(pipeline.flows),
        "partition_s": round(seconds, 3),
        "per_port_ms": round(seconds * 1000 / len(ports), 3),
        "hw_rules": planned,
        "tc_rules": installed,
        "shared_chains": len(plan.chains),
        "software_paths": len(plan.software),
    }
