"""Compile a large host: full compile time, and one port added/removed incrementally.

The incremental figure covers what the agent does for one watched change:
update the topology view, ask the apps which owners it touches, recompute
those and diff them against the previous flows.

The topology is synthetic (no database, no datapath): ``ports`` local ports
spread over ``networks`` networks. Routers and security groups join the
topology when their apps land; until then they are not part of the figure.
"""

from __future__ import annotations

import gc
import statistics
import time

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.bench import Progress
from hwflow.model.objects import Network, Port
from hwflow.pipeline.topology import KIND_PORT, Topology

DEFAULTS = {"ports": 10_000, "networks": 500, "changes": 200}


def _mac(i: int) -> str:
    return "fa:16:3e:" + ":".join(f"{b:02x}" for b in i.to_bytes(3, "big"))


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def build(ports: int, networks: int) -> tuple[dict[str, Network], dict[str, Port]]:
    nets = {f"n{i}": Network(id=f"n{i}", name=f"n{i}", vni=1000 + i, unique_key=i + 1) for i in range(networks)}
    prts = {f"p{i}": Port(id=f"p{i}", name=f"p{i}", network_id=f"n{i % networks}", mac=_mac(i),
                          ips=[f"10.{(i // 250) % 250}.{i % 250}.1"], unique_key=100_000 + i) for i in range(ports)}
    return nets, prts


def run(params: dict, progress: Progress) -> dict[str, float]:
    nets, ports = build(params["ports"], params["networks"])
    compiler = Compiler.from_file(layout_path(""))
    progress(f"full compile of {len(ports)} ports over {len(nets)} networks")
    gc.collect()
    start = time.perf_counter()
    topo = Topology("bench", nets, ports, set(ports))
    pipeline = compiler.compile(topo)
    full_s = time.perf_counter() - start
    progress(f"{len(pipeline.flows)} flows in {full_s:.3f}s; now {params['changes']} incremental changes")
    timings = []
    for i in range(params["changes"]):
        pid = f"x{i}"
        port = Port(id=pid, name=pid, network_id=f"n{i % len(nets)}", mac=_mac(10**7 + i), unique_key=900_000 + i)
        for adding in (True, False):
            start = time.perf_counter()
            if adding:
                changes = topo.apply(KIND_PORT, pid, port) + topo.set_local(pid, True)
            else:
                changes = topo.set_local(pid, False) + topo.apply(KIND_PORT, pid, None)
            delta = compiler.update(topo, changes)
            timings.append((time.perf_counter() - start) * 1000)
            assert delta.added or delta.removed
    return {
        "flows": len(pipeline.flows),
        "full_compile_s": round(full_s, 4),
        "incremental_median_ms": round(statistics.median(timings), 3),
        "incremental_p99_ms": round(sorted(timings)[int(len(timings) * 0.99) - 1], 3),
        "rss_mb": round(_rss_mb(), 1),
    }
