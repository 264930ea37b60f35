"""Partition a host's compiled pipeline: the agent's per-pass split into NIC rules and software paths.

The host is the compile benchmark's (:func:`hwflow.bench.compile.build`), scaled down: ``ports`` local ports,
one per 20 on each network, a router per 100 ports and a security group per 100 ports, every port an
offload-capable VF of one NIC with the capabilities of ``profile`` (``etc/nic-profiles``). The figure is
what the agent pays on every reconcile pass today, for IPv4 (``[offload] ethertypes``' default).

The walk enumerates every path a port's packets can take, so its cost grows with the ports a port can
reach: per port about linearly, in all about quadratically in ``ports`` (routers join the networks).
"""

from __future__ import annotations

import time

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.bench import Progress
from hwflow.bench.compile import build
from hwflow.offload.partition import PortOffload, partition
from hwflow.pipeline import ir
from hwflow.pipeline.topology import Topology
from hwflow.sim.profile import load_profile

DEFAULTS = {"ports": 100, "profile": "mlx5-connectx6dx"}
PORTS_PER_NETWORK = 20
PORTS_PER_ROUTER = PORTS_PER_GROUP = 100


def run(params: dict, progress: Progress) -> dict[str, float]:
    ports = params["ports"]
    scale = {"ports": ports, "networks": max(1, ports // PORTS_PER_NETWORK),
             "routers": max(1, ports // PORTS_PER_ROUTER), "groups": max(1, ports // PORTS_PER_GROUP)}
    nets, local, others = build(scale)
    pipeline = Compiler.from_file(layout_path("")).compile(Topology("bench", nets, local, set(local), others=others))
    caps = load_profile(params["profile"]).capabilities
    offload = {p.unique_key: PortOffload(p.unique_key, "nic0", caps) for p in local.values()}
    progress(f"partitioning {len(pipeline.flows)} flows for {ports} ports ({params['profile']})")
    start = time.perf_counter()
    plan = partition(pipeline, offload, (ir.ETH_TYPE_IPV4,))
    seconds = time.perf_counter() - start
    return {
        "flows": len(pipeline.flows),
        "partition_s": round(seconds, 3),
        "per_port_ms": round(seconds * 1000 / ports, 2),
        "hw_rules": len(plan.rules),
        "software_paths": len(plan.software),
    }
