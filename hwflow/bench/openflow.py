"""``hwflow bench openflow``: flows into real Open vSwitch, native batch path vs os-ken per message.

The bench starts its own ovsdb-server and ovs-vswitchd (userspace datapath)
in a private network namespace, then, on one bridge:

- os-ken (the baseline): per IR flow one ``OFPFlowMod`` built and written,
  as os-ken's ``send_msg`` does, then a barrier;
- sync: ``OvsBackend.sync``, what the agent runs: IR flows compiled to program
  words, handed in parts to a writer thread that encodes them natively and
  writes 1 MiB chunks while later flows compile, one barrier;
- resync: the same sync again, nothing to send: the agent's steady state
  (dump decoded without os-ken objects, compile, diff);
- native: the compact description built from the same IR flows (its building
  timed apart as ``compile_flows_per_s``), encoded natively, written, barrier.

Each is timed until the switch's own flow count (aggregate stats, no dump)
shows exactly ``flows`` hwflow flows, or the bench fails. ``encode_flows_per_s``
is the native encoder alone; ``ovs_cpu_us_per_flow`` is the CPU time
ovs-vswitchd spent per flow during the native run and ``ovs_cpu_share`` the
cores it got meanwhile (1.0: one core all the time): their ratio is the
switch's ingest limit on this machine.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from hwflow.backends.ovs import native, translate
from hwflow.backends.ovs.backend import OvsBackend
from hwflow.backends.ovs.daemons import OvsDaemonError, OvsDaemons
from hwflow.backends.ovs.openflow import OpenFlowConnection
from hwflow.backends.ovs.ovsdb import OvsdbClient
from hwflow.bench import Progress
from hwflow.model.errors import HwflowError
from hwflow.pipeline import ir
from hwflow.util.gc import gc_paused

DEFAULTS: dict[str, Any] = {
    "flows": 100_000,  # flows per path
    "osken_flows": 100_000,  # flows for the os-ken baseline (fewer makes a quicker, noisier run)
    "netns_prefix": "hwflow-bench",
}
BRIDGE = "br-bench"
PORTS = {1: 1, 2: 2, 3: 3, 4: 4}  # logical port -> ofport; OVS accepts output to ports not (yet) present
TIMEOUT = 120.0


class BenchError(HwflowError):
    """The bench could not set up its switch, or a path did not leave the flows it should."""


def workload(count: int) -> list[ir.Flow]:
    """A pipeline-shaped mix, every flow distinct: L2 unicast, L3 rewrites, L4 classification."""
    flows = []
    for i in range(count):
        net = i // 1000 + 1
        owner = f"port:{i // 4}"
        kind = i % 3
        if kind == 0:
            flows.append(ir.Flow(10, 100, ir.Match.of(metadata=net, eth_dst=0x020000000000 + i),
                                 (ir.Output(1 + i % 4),), owner))
        elif kind == 1:
            match = ir.Match.of(metadata=net, eth_type=ir.ETH_TYPE_IPV4, ipv4_dst=(0x0A000000 + (i << 8), 0xFFFFFF00))
            flows.append(ir.Flow(20, 200, match, (ir.SetField("eth_src", 0x020000000001),
                                                  ir.SetField("eth_dst", 0x020000000000 + i),
                                                  ir.SetField("ip_ttl", 63), ir.Output(1 + i % 4)), owner))
        else:
            match = ir.Match.of(metadata=net, eth_type=ir.ETH_TYPE_IPV4, ip_proto=6, tcp_dst=i % 65536,
                                ipv4_src=0x0B000000 + i)
            flows.append(ir.Flow(5, 300, match, (ir.SetField("metadata", net), ir.GotoTable(20)), owner))
    return flows


def _timed(action: Callable[[], Any]) -> tuple[Any, float]:
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


def _clear(of: OpenFlowConnection) -> None:
    delete_all = parser.OFPFlowMod(of.datapath, table_id=ofp.OFPTT_ALL, command=ofp.OFPFC_DELETE,
                                   out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY)
    if of.send([delete_all]) or of.flow_count():
        raise BenchError("could not empty the bench bridge")


def _cpu_seconds(daemons: OvsDaemons) -> float:
    """ovs-vswitchd's CPU time so far, all threads (what OVS spent ingesting is the bench's main limit)."""
    pid = int((daemons.rundir / "vswitchd.pid").read_text().strip())
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _verified(of: OpenFlowConnection, want: int, path: str) -> int:
    count = of.flow_count(translate.COOKIE_MARK, translate.COOKIE_MARK_MASK)
    if count != want:
        raise BenchError(f"{path}: OVS holds {count} hwflow flows after the batch, expected {want}; "
                           "see vswitchd.log in the bench's run directory")
    return count


def _sync(backend: OvsBackend, flows: list[ir.Flow], progress: Progress) -> dict[str, float]:
    progress(f"sync: {len(flows)} IR flows through OvsBackend.sync (compile, diff, encode, write, barrier)")
    result, seconds = _timed(lambda: (backend.sync(flows, PORTS), _verified(backend.of, len(flows), "sync")))
    sync = result[0]
    if sync.errors or sync.added != len(flows):
        raise BenchError(f"sync: {sync.added} added, errors {[str(e) for e in sync.errors[:3]]}")
    progress(f"resync: the same {len(flows)} flows again (dump, decode, compile, diff: nothing to send)")
    again, resync_s = _timed(lambda: backend.sync(flows, PORTS))
    if again.sent or again.errors:
        raise BenchError(f"resync sent {again.sent} flow_mods, errors {[str(e) for e in again.errors[:3]]}")
    return {"sync_flows_per_s": len(flows) / seconds, "resync_flows_per_s": len(flows) / resync_s}


def _program(backend: OvsBackend, flows: list[ir.Flow]) -> tuple[list[int], float]:
    """The compact description of the flows' ADDs, and how fast the compiler built it (flows/s)."""
    compiler = backend.compiler
    start = time.perf_counter()
    words: list[int] = []
    with gc_paused():  # as OvsBackend.sync compiles
        for flow in flows:
            c = compiler.compile(flow, PORTS)
            words += compiler.flow_mod(c.key[0], c.key[1], c.cookie, 0, ofp.OFPFC_ADD, c.body)
    return words, len(flows) / (time.perf_counter() - start)


def _native(backend: OvsBackend, daemons: OvsDaemons, flows: list[ir.Flow], progress: Progress
            ) -> dict[str, float]:
    words, compile_rate = _program(backend, flows)
    _, encode_s = _timed(lambda: list(backend.encoder.encode(words, 1)))
    progress(f"native: {len(flows)} flows from their compact description (encode, write, barrier)")

    def program() -> int:
        errors = backend.of.send_program(words, len(flows), backend.encoder)
        if errors:
            raise BenchError(f"native: OVS refused {errors[0]}")
        return _verified(backend.of, len(flows), "native")

    cpu = _cpu_seconds(daemons)
    verified, seconds = _timed(program)
    cpu = _cpu_seconds(daemons) - cpu
    return {"native_flows_per_s": len(flows) / seconds, "flows_verified": verified,
            "compile_flows_per_s": compile_rate, "encode_flows_per_s": len(flows) / encode_s,
            "ovs_cpu_us_per_flow": cpu / len(flows) * 1e6, "ovs_cpu_share": cpu / seconds}


def _osken(of: OpenFlowConnection, flows: list[ir.Flow], progress: Progress) -> dict[str, float]:
    progress(f"os-ken: {len(flows)} flows, one OFPFlowMod built and written per flow")

    def program() -> int:
        errors = of.send_each(translate.to_flow_mod(f, PORTS) for f in flows)
        if errors:
            raise BenchError(f"os-ken: OVS refused {errors[0]}")
        return _verified(of, len(flows), "os-ken")

    _, seconds = _timed(program)
    return {"osken_flows_per_s": len(flows) / seconds}


def run(params: dict[str, Any], progress: Progress) -> dict[str, float]:
    if not re.fullmatch(r"[A-Za-z0-9-]{1,40}", params["netns_prefix"]):
        raise BenchError(f"netns_prefix {params['netns_prefix']!r}: use 1-40 letters, digits and '-'")
    flows = workload(params["flows"])
    baseline = flows if params["osken_flows"] == params["flows"] else workload(params["osken_flows"])
    ns = f"{params['netns_prefix']}-{secrets.token_hex(3)}"
    rundir = Path(tempfile.mkdtemp(prefix=f"{ns}-"))
    daemons = OvsDaemons(rundir, netns=ns)
    closers: list[Callable[[], None]] = []
    try:
        made = subprocess.run(["ip", "netns", "add", ns], check=False, capture_output=True, text=True, timeout=30)
        if made.returncode:
            raise BenchError(f"cannot create network namespace {ns}: {made.stderr.strip()}; the openflow bench "
                             "needs root and iproute2")
        progress(f"starting OVS (userspace datapath) in netns {ns}, run directory {rundir}")
        try:
            daemons.start()
        except OvsDaemonError as exc:
            raise BenchError(str(exc)) from None
        ovsdb = OvsdbClient(daemons.db_sock, BRIDGE)
        closers.append(ovsdb.close)
        ovsdb.ensure_bridge()
        of = OpenFlowConnection(daemons.mgmt(BRIDGE), timeout=TIMEOUT)
        closers.append(of.close)
        of.connect()
        backend = OvsBackend(ovsdb, of)
        if not native.NATIVE_AVAILABLE:
            progress("the native encoder is not built: the 'native' figures are the os-ken fallback's")
        results = _osken(of, baseline, progress)
        _clear(of)
        results.update(_sync(backend, flows, progress))
        _clear(of)
        results.update(_native(backend, daemons, flows, progress))
        results["speedup"] = results["native_flows_per_s"] / results["osken_flows_per_s"]
        results["sync_speedup"] = results["sync_flows_per_s"] / results["osken_flows_per_s"]
        return results
    finally:
        for close in reversed(closers):
            close()
        daemons.stop()
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True, timeout=30)
        shutil.rmtree(rundir, ignore_errors=True)
