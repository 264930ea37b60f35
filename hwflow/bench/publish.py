"""Publish a host's plan for ``hwflow flows``: what the agent's writer thread spends, and the file's size.

The host is the partition benchmark's (:func:`hwflow.bench.partition.host`): ``local_ports`` ports here,
``remote_ports`` on other chassis. It is planned as the agent plans it (every local port and the VXLAN device
on one NIC of ``profile``), its rules encoded as flower rules as the agent encodes them, and its OpenFlow flows
compiled as the OVS backend compiles them (each local port an ofport); then the agent's publisher
(:class:`hwflow.agent.published.Publisher`) writes the file, as after the agent's first pass.

Times are CPU seconds of the thread (``time.thread_time``: the writer shares the interpreter with the agent,
so its CPU, not the wall clock of a loaded machine, is what it takes from it). ``first_s``: the first write
(nothing encoded before: the agent's first pass). ``again_s``: a write after a pass that changed one port's
rules (what the writer re-encodes is that port's, the rest it reuses). ``file_mib``: the file's size.
``load_s``: ``hwflow flows`` reading it back. ``hw_rules``, ``sw_paths``,
``ovs_flows``: what the file holds.
"""

from __future__ import annotations

import gc
import tempfile
import time
from pathlib import Path

from hwflow.agent import published
from hwflow.backends.ovs import native, translate
from hwflow.backends.ovs.backend import Held
from hwflow.backends.tc.backend import TC_FLAGS, Representor, TunnelEndpoint, to_flower
from hwflow.bench import Progress
from hwflow.bench.partition import capabilities, host, offload
from hwflow.offload.partition import Partitioner
from hwflow.pipeline import ir

DEFAULTS = {"local_ports": 200, "remote_ports": 2000, "profile": "mlx5-connectx6dx"}
ENDPOINT = "unix:/run/hwflow-simnic.sock"


def run(params: dict, progress: Progress) -> dict[str, float]:
    progress(f"compiling {params['local_ports']} local and {params['remote_ports']} remote ports")
    compiler, topo = host(params["local_ports"], params["remote_ports"])
    pipeline = compiler.pipeline()
    ports = offload(topo, capabilities(params["profile"]))
    plan = Partitioner(compiler.layout.joins()).plan(pipeline, ports, (ir.ETH_TYPE_IPV4, ir.ETH_TYPE_IPV6), {})
    reps = {key: Representor(100 + i, ENDPOINT) for i, key in enumerate(sorted(ports))}
    tunnels = {ir.TUNNEL_PORTS["vxlan"]: TunnelEndpoint(0xC0000201, 4789)}
    progress(f"encoding {plan.counts()[1]} NIC rules and {len(pipeline.flows)} OpenFlow flows")
    flower = {port: {chain: [(rule, *to_flower(rule, reps, TC_FLAGS["none"], tunnels)) for rule in rules]
                     for chain, rules in plan.units_of(port) if rules} for port in reps}
    ofports = {key: 10 + i for i, key in enumerate(sorted(reps))}
    flows = translate.FlowCompiler(native.Catalog())
    held = {}
    for flow in pipeline.flows:
        try:
            compiled = flows.compile(flow, ofports)
        except translate.UnboundPort:
            continue
        held[compiled.key] = Held(compiled.instructions, compiled.cookie, flow)
    local = frozenset(p.unique_key for p in topo.local_ports())
    snap = published.Snapshot(time.time(), True, plan, flower,
                              {key: (f"p{key}", None, ofports.get(key)) for key in reps},
                              [(rep.endpoint, rep.ifindex, f"rep{rep.ifindex}", key) for key, rep in reps.items()],
                              frozenset(reps), local, held)
    gc.collect()
    gc.freeze()  # as the agent keeps its state (hwflow.util.gc.gc_paused(keep=True)): no collection scans it
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "flows-bench.msgpack"
        publisher = published.Publisher(path, "bench", {"bridge": "br-int", "openflow_endpoint": "unix:/x"})
        owners = flows.owners()
        first = _timed_write(publisher, snap, owners)
        size = path.stat().st_size
        # one port's rules changed: its flower rules are new objects (as the agent re-encodes a changed port's)
        port = min(flower)
        changed = dict(flower)
        changed[port] = {chain: [(rule, ep, to_flower(rule, reps, TC_FLAGS["none"], tunnels)[1])
                                 for rule, ep, _ in rules] for chain, rules in flower[port].items()}
        again = _timed_write(publisher, published.Snapshot(time.time(), False, plan, changed, snap.ports,
                                                           snap.devices, snap.offloaded, snap.local, held), owners)
        began = time.thread_time()
        doc = published.load(path)
        load_s = time.thread_time() - began
    progress(f"first write {first:.2f}s, again {again:.2f}s, {size / 2**20:.1f} MiB, read back {load_s:.2f}s")
    return {"hw_rules": len(doc["hw"]), "sw_paths": len(doc["sw"]), "ovs_flows": len(held),
            "first_s": round(first, 3), "again_s": round(again, 3), "file_mib": round(size / 2**20, 2),
            "load_s": round(load_s, 3)}


def _timed_write(publisher: published.Publisher, snap: published.Snapshot, owners: list) -> float:
    began = time.thread_time()
    publisher.write(snap, owners, {})
    return time.thread_time() - began
