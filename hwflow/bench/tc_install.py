"""Install tc-flower rules into the simulated NIC over its control socket: rules per second.

The bench starts its own ``hwflow-simnic`` (``vfs`` VF/representor pairs) in
a private network namespace, with the sim-basic profile grown to hold every
rule, and stops it (by pid) and removes the namespace afterwards. Half the
rules go in as rule objects through ``TcClient.add`` (Python encoding), half
as one natively encoded batch through ``TcClient.send_batch``; both wait for
every acknowledgement. A dump then counts what the device holds. The rules
redirect IPv4 TCP from representor 0 to representor 1, 100 per prio.

The real kernel's flower, against ``tc -batch`` with the same rules, is
measured by the VM tier (``hil/vm/run``, group ``bench``) with
:func:`kernel_vs_tc_batch`: the development kernel has no flower.

Results: python_rules_per_s, native_rules_per_s, speedup (native / python,
same run), rules_verified (rules the dump returned), refused (answers that
were errors; should be 0).
"""

from __future__ import annotations

import array
import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc import native
from hwflow.backends.tc.transport import KernelTransport, SimSocketTransport, TcClient
from hwflow.bench import Progress
from hwflow.sim.host import stop_process
from hwflow.sim.profile import load_profile

DEFAULTS = {"rules": 20_000, "vfs": 2, "timeout_s": 60.0}
RULES_PER_PRIO = 100
START_TIMEOUT_S = 30.0


def _run(*args: str) -> None:
    done = subprocess.run(list(args), check=False, capture_output=True, text=True, timeout=60)
    if done.returncode:
        raise RuntimeError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")


@contextlib.contextmanager
def simnic(workdir: Path, rules: int, vfs: int) -> Iterator[dict]:
    """A hwflow-simnic in its own namespace, room for ``rules``; yields its status (socket, ports)."""
    suffix = secrets.token_hex(3)
    ns = f"hwt-tc-bench-{suffix}"
    profile = load_profile("sim-basic").to_dict()
    profile["name"] = "sim-bench"
    profile["capabilities"]["max_rules"] = rules
    profile_path = workdir / "profile.json"
    profile_path.write_text(json.dumps(profile), encoding="utf-8")
    sock = str(workdir / "ctl")
    _run("ip", "netns", "add", ns)
    proc = None
    try:
        with open(workdir / "simnic.log", "w", encoding="utf-8") as log:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "hwflow.sim.server", "--name", f"hwtc{suffix}",
                 "--num-vfs", str(vfs), "--socket", sock, "--profile", str(profile_path), "--log-level", "WARNING"],
                stdout=log, stderr=subprocess.STDOUT)
        status = Path(sock + ".json")
        deadline = time.monotonic() + START_TIMEOUT_S
        while not status.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"hwflow-simnic did not start: {(workdir / 'simnic.log').read_text()}")
            time.sleep(0.05)
        yield json.loads(status.read_text(encoding="utf-8"))
    finally:
        stop_process(proc)
        subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def prototype(src: int, dst: int) -> fl.FlowerRule:
    return fl.FlowerRule(src, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(
        eth_dst=0x020000000001, ip_proto=fl.IPPROTO_TCP, ipv4_dst=0x0A000000, tcp_dst=80), (fl.Mirred(dst),),
        flags=fl.TCA_CLS_FLAGS_SKIP_SW)


def rows(first: int, count: int) -> array.array:
    """prio, handle, ipv4_dst for rules first .. first+count-1 (RULES_PER_PRIO per prio)."""
    values = array.array("Q")
    for i in range(first, first + count):
        values.extend((1 + i // RULES_PER_PRIO, 1 + i % RULES_PER_PRIO, 0x0A000000 + i))
    return values


def run(params: dict, progress: Progress) -> dict[str, float]:
    if os.geteuid() != 0:
        raise RuntimeError("tc-install starts hwflow-simnic in a private network namespace: run it as root")
    count, vfs = params["rules"], params["vfs"]
    if count < 2 or vfs < 2:
        raise ValueError("rules and vfs must be at least 2 (the rules redirect from one representor to another)")
    workdir = Path(tempfile.mkdtemp(prefix="hwt-tc-"))  # short: AF_UNIX paths are limited to 108 bytes
    try:
        with simnic(workdir, count, vfs) as status:
            src, dst = (p["representor_ifindex"] for p in status["ports"][:2])
            batch = native.FlowerBatch(prototype(src, dst), ("prio", "handle", "ipv4_dst"))
            half = count // 2
            rules = batch.rules(rows(0, half), half)
            native_rows = rows(half, count - half)
            client = TcClient(SimSocketTransport(status["socket"]), timeout=params["timeout_s"])
            try:
                progress(f"{half} rules as objects (Python encoding) into {status['name']}")
                start = time.perf_counter()
                refused = sum(r is not None for r in client.add(rules))
                python_s = time.perf_counter() - start
                progress(f"{count - half} rules as one {'native' if batch.native else 'Python'}-encoded batch")
                start = time.perf_counter()
                refused += sum(r is not None for r in client.send_batch(batch, native_rows, count - half))
                native_s = time.perf_counter() - start
                verified = len(client.dump(src))
            finally:
                client.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    python_rate, native_rate = half / python_s, (count - half) / native_s
    return {
        "python_rules_per_s": round(python_rate),
        "native_rules_per_s": round(native_rate),
        "speedup": round(native_rate / python_rate, 2),
        "rules_verified": verified,
        "refused": refused,
    }


def tc_batch_lines(dev: str, out_dev: str, first: int, count: int) -> list[str]:
    """The rules :func:`rows` describes, as ``tc -batch`` lines (skip_hw: the kernel's software flower)."""
    lines = []
    for i in range(first, first + count):
        address = 0x0A000000 + i
        dotted = ".".join(str(address >> s & 0xFF) for s in (24, 16, 8, 0))
        lines.append(f"filter add dev {dev} ingress protocol ip prio {1 + i // RULES_PER_PRIO} handle "
                     f"{1 + i % RULES_PER_PRIO} flower skip_hw dst_mac 02:00:00:00:00:01 ip_proto tcp dst_ip {dotted} "
                     f"dst_port 80 action mirred egress redirect dev {out_dev}")
    return lines


def kernel_vs_tc_batch(dev: str, out_dev: str, count: int, workdir: Path, rounds: int = 3,
                       timeout_s: float = 120.0) -> dict:
    """``count`` rules into the kernel's flower on ``dev`` (clsact in place, empty): hwflow, then ``tc -batch``.

    hwflow sends one natively encoded batch through ``TcClient.send_batch``
    and waits for every acknowledgement; the rules are removed (the qdisc is
    recreated) and ``tc -batch`` adds the same rules from a file. Each count
    is verified by a dump. The two alternate for ``rounds`` rounds and the
    best rate of each is kept: under TCG on a shared host one run can be
    several times slower than the next. Needs root and a kernel with cls_flower.
    """
    src, dst = (int(Path(f"/sys/class/net/{d}/ifindex").read_text(encoding="utf-8")) for d in (dev, out_dev))
    batch = native.FlowerBatch(dataclasses.replace(prototype(src, dst), flags=fl.TCA_CLS_FLAGS_SKIP_HW),
                               ("prio", "handle", "ipv4_dst"))
    script = workdir / "rules.tc"
    script.write_text("\n".join(tc_batch_lines(dev, out_dev, 0, count)) + "\n", encoding="utf-8")
    hwflow_s, tc_s, verified, refused = [], [], [], 0
    client = TcClient(KernelTransport(), timeout=timeout_s)
    try:
        for _ in range(rounds):
            start = time.perf_counter()
            refused += sum(r is not None for r in client.send_batch(batch, rows(0, count), count))
            hwflow_s.append(time.perf_counter() - start)
            verified.append(_flush(client, dev, src))
            start = time.perf_counter()
            done = subprocess.run(["tc", "-batch", str(script)], check=False, capture_output=True, text=True,
                                  timeout=timeout_s * 10)
            tc_s.append(time.perf_counter() - start)
            if done.returncode:
                raise RuntimeError(f"tc -batch failed ({done.returncode}): {done.stderr.strip()[-500:]}")
            verified.append(_flush(client, dev, src))
    finally:
        client.close()
    return {
        "rules": count,
        "rounds": rounds,
        "native_encoder": batch.native,
        "hwflow_rules_per_s": round(count / min(hwflow_s)),
        "tc_batch_rules_per_s": round(count / min(tc_s)),
        "ratio": round(min(tc_s) / min(hwflow_s), 2),
        "hwflow_each": [round(count / t) for t in hwflow_s],
        "tc_batch_each": [round(count / t) for t in tc_s],
        "verified": min(verified),
        "refused": refused,
    }


def _flush(client: TcClient, dev: str, ifindex: int) -> int:
    """How many rules ``dev`` holds; then none (the clsact qdisc is recreated)."""
    held = len(client.dump(ifindex))
    _run("tc", "qdisc", "del", "dev", dev, "clsact")
    _run("tc", "qdisc", "add", "dev", dev, "clsact")
    return held
