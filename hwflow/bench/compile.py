"""Compile a large host: full compile time, and one port added/removed incrementally.

The incremental figure covers what the agent does for one watched change:
update the topology view, ask the apps which owners it touches, recompute
those and diff them against the previous flows.

The topology is synthetic (no database, no datapath): ``ports`` local ports
spread over ``networks`` networks (one /24 subnet each), ``routers``
routers sharing the networks between them, and ``groups`` security groups
of the ten rules in :data:`RULES`, every port in one of them. The first
:data:`ADMINS` ports are also in the ``admin`` group, which one rule of
every group names as its remote group. The port added and removed for the
incremental figure is in a group too.

``full_compile_s`` is what the agent pays: the compiler pauses cyclic garbage
collection while it compiles (:func:`hwflow.util.gc.gc_paused`).
"""

from __future__ import annotations

import gc
import statistics
import time

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.bench import Progress
from hwflow.model.objects import Network, Port, Router, RouterPort, SecurityGroup, SecurityGroupRule, Subnet
from hwflow.pipeline.topology import KIND_PORT, Topology

DEFAULTS = {"ports": 10_000, "networks": 500, "routers": 100, "groups": 100, "changes": 200}
ADMINS = 4
# Ten rules of a typical group: (direction, fields); "admin" is the remote group every group names.
RULES: tuple[tuple[str, dict], ...] = (
    ("ingress", {"protocol": "tcp", "port_min": 22, "port_max": 22}),
    ("ingress", {"protocol": "tcp", "port_min": 80, "port_max": 81, "remote_ip_prefix": "10.0.0.0/8"}),
    ("ingress", {"protocol": "tcp", "port_min": 443, "port_max": 443}),
    ("ingress", {"protocol": "tcp", "port_min": 8000, "port_max": 8080}),
    ("ingress", {"protocol": "udp", "port_min": 53, "port_max": 53, "remote_ip_prefix": "10.0.0.0/16"}),
    ("ingress", {"protocol": "icmp", "icmp_type": 8}),
    ("ingress", {"ethertype": "IPv6", "protocol": "icmpv6"}),
    ("ingress", {"protocol": "tcp", "port_min": 5432, "port_max": 5432, "remote_group_id": "admin"}),
    ("egress", {}),
    ("egress", {"ethertype": "IPv6"}),
)


def _mac(i: int) -> str:
    return "fa:16:3e:" + ":".join(f"{b:02x}" for b in i.to_bytes(3, "big"))


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _subnet(net: int) -> str:
    return f"10.{net // 256}.{net % 256}"


def _port(i: int, networks: int, groups: int, key: int) -> Port:
    """Port ``i``: on network i % networks, host address i // networks + 2, in group i % groups."""
    net = i % networks
    member = [f"g{i % groups}", "admin"] if i < ADMINS else [f"g{i % groups}"]
    return Port(id=f"p{i}", name=f"p{i}", network_id=f"n{net}", mac=_mac(i), unique_key=key,
                ips=[f"{_subnet(net)}.{i // networks + 2}"], security_groups=member)


def build(params: dict) -> tuple[dict[str, Network], dict[str, Port], dict[str, dict]]:
    """Networks, ports and everything else (kind -> id -> object) of the modelled host."""
    networks, routers = params["networks"], params["routers"]
    nets = {f"n{i}": Network(id=f"n{i}", name=f"n{i}", vni=1000 + i, unique_key=i + 1) for i in range(networks)}
    prts = {f"p{i}": _port(i, networks, params["groups"], i + 1) for i in range(params["ports"])}
    subnets = {f"s{i}": Subnet(id=f"s{i}", name=f"s{i}", network_id=f"n{i}", cidr=f"{_subnet(i)}.0/24",
                               gateway_ip=f"{_subnet(i)}.1") for i in range(networks)}
    rps = {f"rp{i}": RouterPort(id=f"rp{i}", name=f"rp{i}", router_id=f"r{i % routers}", network_id=f"n{i}",
                                subnet_id=f"s{i}", mac=_mac(2**23 + i), ip=f"{_subnet(i)}.1") for i in range(networks)}
    groups = [f"g{i}" for i in range(params["groups"])] + ["admin"]
    rules = {f"{g}-{j}": SecurityGroupRule(id=f"{g}-{j}", name=f"{g}-{j}", security_group_id=g, direction=direction,
                                           **fields) for g in groups for j, (direction, fields) in enumerate(RULES)}
    others = {"subnet": subnets, "router_port": rps,
              "router": {f"r{i}": Router(id=f"r{i}", name=f"r{i}") for i in range(routers)},
              "security_group": {g: SecurityGroup(id=g, name=g, unique_key=k + 1) for k, g in enumerate(groups)},
              "security_group_rule": rules}
    return nets, prts, others


def run(params: dict, progress: Progress) -> dict[str, float]:
    nets, ports, others = build(params)
    compiler = Compiler.from_file(layout_path(""))
    progress(f"full compile of {len(ports)} ports over {len(nets)} networks, {params['routers']} routers, "
             f"{len(others['security_group'])} security groups")
    gc.collect()
    start = time.perf_counter()
    topo = Topology("bench", nets, ports, set(ports), others=others)
    pipeline = compiler.compile(topo)
    full_s = time.perf_counter() - start
    flows = len(pipeline.flows)
    progress(f"{flows} flows in {full_s:.3f}s; now {params['changes']} incremental changes")
    timings = []
    for i in range(params["changes"]):
        port = _port(len(ports) + i, len(nets), params["groups"], len(ports) + i + 1)
        pid = port.id
        for adding in (True, False):
            start = time.perf_counter()
            if adding:
                changes = topo.apply(KIND_PORT, pid, port) + topo.set_local(pid, True)
            else:
                changes = topo.set_local(pid, False) + topo.apply(KIND_PORT, pid, None)
            delta = compiler.update(topo, changes)
            timings.append((time.perf_counter() - start) * 1000)
            assert delta.added or delta.removed
    rss_mb = _rss_mb()
    return {
        "flows": flows,
        "full_compile_s": round(full_s, 4),
        "incremental_median_ms": round(statistics.median(timings), 3),
        "incremental_p99_ms": round(sorted(timings)[int(len(timings) * 0.99) - 1], 3),
        "rss_mb": round(rss_mb, 1),
    }
