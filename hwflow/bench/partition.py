"""Partition a host's compiled pipeline: the split into NIC rules and software paths, full and per change.

The host is the compile benchmark's (:func:`hwflow.bench.compile.build`): ``local_ports`` ports here and
``remote_ports`` bound to other chassis (reached through VXLAN tunnels), 20 ports a network, a router per 100
ports (joining five networks) and a security group per 100 ports. Every local port is a VF of one NIC with
the capabilities of ``profile`` (``etc/nic-profiles``), and so is the host's VXLAN tunnel device.
``ethertypes``: what may be offloaded, as ``[offload] ethertypes`` (its default: IPv4 and IPv6).

``partition_s``: a full partition (what the agent does at start and on the resync timer). ``hw_rules``:
rules planned, each shared chain once; ``tc_rules``: the rules the representors get (a NIC keeps a copy of
a shared chain per representor).

Then ``changes`` rounds of five changes, each applied as the agent applies a watched change: the topology
view, the compiler's delta (which patches the pipeline), the partitioner's re-plan of what the delta reaches.
The kinds: a local port added, a local port removed, a local port moved to another chassis, a remote port
added, a security-group rule changed. ``max_rules`` (0: the profile's) sets the NIC's capacity: a shared chain
costs a rule per representor reaching it, so a big host outgrows the profile's working budget: short of room,
a change re-plans the ports it reaches with what the others leave them, and a switch pushed over its capacity
takes room back from its last ports. ``incremental_median_ms``/``incremental_p99_ms``: the partitioner's
part; ``change_median_ms``: the whole of it (view, compile, pipeline patch, partition); ``full_replans``:
changes the partitioner could only answer with a whole plan (what the join tables' chains keep of the state
changed). ``diverged_ports``: ports whose rules after all the changes differ from a whole plan of the same
host made afresh (0: incremental == whole, which a restarted agent relies on to keep every rule; with the NIC
short of room a change's ports get what the others leave them, and only the resync timer's whole plan serves
ports in key order again, so there it may differ).
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.bench import Progress
from hwflow.bench.compile import _port, build
from hwflow.model.objects import Chassis
from hwflow.offload.capabilities import Capabilities
from hwflow.offload.partition import Partitioner, PortOffload
from hwflow.pipeline import ir
from hwflow.pipeline.topology import KIND_PORT, Topology
from hwflow.sim.profile import load_profile

DEFAULTS = {"local_ports": 1000, "remote_ports": 10_000, "profile": "mlx5-connectx6dx", "changes": 20, "max_rules": 0,
            "ethertypes": "ipv4,ipv6"}
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
    # the first ports are local: port i is on network i % networks, so they spread over every network (a
    # stride that divides the number of networks would have put them all on a few)
    local = {f"p{i}" for i in range(local_ports)}
    for i, pid in enumerate(ports):
        if pid not in local:
            ports[pid] = dataclasses.replace(ports[pid], chassis=f"c{i % REMOTE_CHASSIS}")
    compiler = Compiler.from_file(layout_path(""))
    topo = Topology("bench", nets, ports, local, others={**others, "chassis": chassis})
    compiler.compile(topo)
    return compiler, topo


def capabilities(profile: str, max_rules: int = 0) -> Capabilities:
    """The NIC's: ``profile``'s, with ``max_rules`` as its capacity if not 0."""
    caps = load_profile(profile).capabilities
    return dataclasses.replace(caps, max_rules=max_rules) if max_rules else caps


def offload(topo: Topology, caps: Capabilities) -> dict[int, PortOffload]:
    """Every local port and the VXLAN device on one NIC with ``caps``."""
    ports = {p.unique_key: PortOffload(p.unique_key, "nic0", caps) for p in topo.local_ports()}
    ports[ir.TUNNEL_PORTS["vxlan"]] = PortOffload(ir.TUNNEL_PORTS["vxlan"], "nic0", caps)
    return ports


def run(params: dict, progress: Progress) -> dict[str, float]:
    progress(f"compiling {params['local_ports']} local and {params['remote_ports']} remote ports")
    compiler, topo = host(params["local_ports"], params["remote_ports"])
    pipeline = compiler.pipeline()
    caps = capabilities(params["profile"], params["max_rules"])
    ports = offload(topo, caps)
    partitioner = Partitioner(compiler.layout.joins())
    progress(f"partitioning {len(pipeline.flows)} flows for {len(ports)} ports ({params['profile']})")
    start = time.perf_counter()
    types = tuple(ir.ETH_TYPES_BY_NAME[name.strip()] for name in str(params["ethertypes"]).split(","))
    plan = partitioner.plan(pipeline, ports, types, {})
    seconds = time.perf_counter() - start
    planned, installed = plan.counts()
    results = {
        "flows": len(pipeline.flows),
        "partition_s": round(seconds, 3),
        "per_port_ms": round(seconds * 1000 / len(ports), 3),
        "hw_rules": planned,
        "tc_rules": installed,
        "shared_chains": plan.shared_chains,
        "software_paths": plan.software_count,
    }
    progress(f"full partition {seconds:.2f}s; now {params['changes']} rounds of five changes")
    partition_ms, change_ms = [], []
    total = params["local_ports"] + params["remote_ports"]
    nets, groups = len(topo.networks), len(topo.of("security_group")) - 1
    for i in range(params["changes"]):
        key = total + 2 * i + 1
        local = _port(total + 2 * i, nets, groups, key)
        remote = dataclasses.replace(_port(total + 2 * i + 1, nets, groups, key + 1), chassis="c0")
        victim = sorted(topo.local_port_ids)[i % len(topo.local_port_ids)]
        rule = next(iter(topo.of("security_group_rule").values()))
        for change in _changes(topo, local, remote, victim, rule):
            began = time.perf_counter()
            delta = compiler.update(topo, change())
            ports = offload(topo, caps)
            middle = time.perf_counter()
            partitioner.plan(compiler.pipeline(), ports, types, {}, (delta.added, delta.removed))
            ended = time.perf_counter()
            partition_ms.append((ended - middle) * 1000)
            change_ms.append((ended - began) * 1000)
        # the moved port comes back (untimed, but planned: the partitioner must see every delta), so every round
        # starts from the same host
        delta = compiler.update(topo, topo.apply(KIND_PORT, victim, dataclasses.replace(topo.ports[victim],
                                                                                         chassis="bench"))
                                + topo.set_local(victim, True))
        plan = partitioner.plan(compiler.pipeline(), offload(topo, caps), types, {}, (delta.added, delta.removed))
    progress("checking the plan the changes led to against a whole plan of the same host")
    whole = Partitioner(compiler.layout.joins()).plan(compiler.pipeline(), offload(topo, caps), types, {})
    results.update({
        "diverged_ports": sum(1 for port in plan.own.keys() | whole.own.keys()
                              if sorted(plan.rules_of(port), key=repr) != sorted(whole.rules_of(port), key=repr)),
        "incremental_median_ms": round(statistics.median(partition_ms), 3),
        "incremental_p99_ms": round(sorted(partition_ms)[max(0, int(len(partition_ms) * 0.99) - 1)], 3),
        "change_median_ms": round(statistics.median(change_ms), 3),
        "full_replans": partitioner.full_plans - 1,
    })
    return results


def _changes(topo: Topology, local, remote, victim: str, rule) -> list[Callable[[], list]]:
    """The five changes of one round, each applied to the topology view when called (in this order)."""
    moved = dataclasses.replace(topo.ports[victim], chassis="c1")
    wider = dataclasses.replace(rule, port_max=rule.port_max + 1 if rule.port_max else None,
                                revision=rule.revision + 1)
    return [
        lambda: topo.apply(KIND_PORT, local.id, local) + topo.set_local(local.id, True),
        lambda: topo.set_local(local.id, False) + topo.apply(KIND_PORT, local.id, None),
        lambda: topo.apply(KIND_PORT, victim, moved) + topo.set_local(victim, False),
        lambda: topo.apply(KIND_PORT, remote.id, remote),
        lambda: topo.apply("security_group_rule", rule.id, wider),
    ]
