"""The hardware tier: the VM tier's checks on a host with a real switchdev NIC (see hil/hw/README.rst).

It changes the NIC (SR-IOV VFs, eswitch mode, tc rules on representors), so
it first makes sure the device carries nothing: a PF with addresses, a
master (bridge, bond, OVS) or packets moving is refused unless ``--force``.
Whatever it changed is put back at the end. It writes a report: what the
NIC took in hardware, what it refused and why, the insertion rate measured
through hwflow's batched client, and whether real packets between two VFs
were forwarded by the NIC's rules (hardware counters read back).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from hil import suite  # noqa: E402 - the repo root goes on sys.path first
from hil.checks import flower, forwarding, host  # noqa: E402
from hil.checks.rules import all_samples  # noqa: E402
from hwflow.backends.tc import flower as fl  # noqa: E402
from hwflow.offload.capabilities import Capabilities  # noqa: E402

SYS_NET = Path("/sys/class/net")
IDLE_PACKETS_PER_S = 5.0  # above this the PF carries traffic
REP_NAME = re.compile(r"(?:c\d+)?pf\d+vf(\d+)")


class Refused(SystemExit):
    """The runner will not touch the device; the message says why and how to override."""


@dataclasses.dataclass
class NicState:
    """What the runner changed, to put back afterwards."""

    pf: str
    pci: str
    numvfs: int
    mode: str


def read(path: Path) -> str:
    return path.read_text(encoding="utf-8").strip()


def packets(dev: str) -> int:
    stats = SYS_NET / dev / "statistics"
    return int(read(stats / "rx_packets")) + int(read(stats / "tx_packets"))


def switch_ports(pf: str) -> list[str]:
    """Netdevs of the PF's embedded switch (same phys_switch_id), the PF's own representors included."""
    try:
        switch_id = read(SYS_NET / pf / "phys_switch_id")
    except OSError:
        return []
    out = []
    for net in SYS_NET.iterdir():
        try:
            if read(net / "phys_switch_id") == switch_id and net.name != pf:
                out.append(net.name)
        except OSError:
            continue
    return out


def why_busy(pf: str, window: float = 3.0) -> list[str]:
    """Reasons to believe the PF (or its eswitch) is in use; empty when it looks idle."""
    reasons = []
    addrs = json.loads(host.sh("ip", "-j", "addr", "show", "dev", pf))
    scoped = [a["local"] for link in addrs for a in link.get("addr_info", []) if a.get("scope") == "global"]
    if scoped:
        reasons.append(f"{pf} has addresses {scoped}")
    for dev in [pf, *switch_ports(pf)]:
        if (SYS_NET / dev / "master").exists():
            reasons.append(f"{dev} is enslaved to {(SYS_NET / dev / 'master').resolve().name}")
    if f"dev {pf} " in host.sh("ip", "route", "show", "default") + " ":
        reasons.append(f"the default route goes through {pf}")
    before = packets(pf)
    time.sleep(window)
    rate = (packets(pf) - before) / window
    if rate > IDLE_PACKETS_PER_S:
        reasons.append(f"{pf} moves {rate:.0f} packets/s")
    return reasons


def eswitch_mode(pci: str) -> str:
    out = json.loads(host.sh("devlink", "-j", "dev", "eswitch", "show", f"pci/{pci}"))
    return next(iter(out["dev"].values()))["mode"]


def set_nic(state: NicState, numvfs: int, mode: str) -> None:
    """No VFs, then the eswitch mode, then the VFs: ice allows a mode change only without VFs, and
    mlx5 creates a representor per VF when VFs appear in switchdev mode."""
    path = SYS_NET / state.pf / "device" / "sriov_numvfs"
    if int(read(path)) == numvfs and eswitch_mode(state.pci) == mode:
        return
    path.write_text("0", encoding="utf-8")
    if eswitch_mode(state.pci) != mode:
        host.sh("devlink", "dev", "eswitch", "set", f"pci/{state.pci}", "mode", mode)
    if numvfs:
        path.write_text(str(numvfs), encoding="utf-8")


def representors(pf: str, vfs: int, wait: float = 30.0) -> tuple[list[str], list[str]]:
    """(VF netdevs, VF representors), both in VF order; VF drivers may take a while to create netdevs."""
    deadline = time.monotonic() + wait
    while True:
        reps: dict[int, str] = {}
        for name in switch_ports(pf):
            try:
                match = REP_NAME.fullmatch(read(SYS_NET / name / "phys_port_name"))
            except OSError:
                continue
            if match:
                reps[int(match.group(1))] = name
        vf_nets = [SYS_NET / pf / "device" / f"virtfn{i}" / "net" for i in range(vfs)]
        vf_devs = [sorted(p.iterdir())[0].name for p in vf_nets if p.is_dir() and any(p.iterdir())]
        if sorted(reps) == list(range(vfs)) and len(vf_devs) == vfs:
            return vf_devs, [reps[i] for i in range(vfs)]
        if time.monotonic() > deadline:
            raise suite.CheckFailed(f"after {wait:g}s: representors for VFs {sorted(reps)} and VF netdevs "
                                    f"{vf_devs}; expected {vfs} of each (is the VF driver loaded?)")
        time.sleep(0.5)


def offload_samples(bench: flower.Bench, report: dict[str, Any]) -> None:
    """Every sample rule with skip_sw: offloaded ones must round-trip; refusals are recorded, not failed."""
    offloaded, refused, wrong = [], {}, {}
    for sample in all_samples(flower.PLACEHOLDER_IN, flower.PLACEHOLDER_OUT):
        if sample.rule is None:
            wrong[sample.name] = sample.problem
            continue
        rule = bench.place(sample.rule, fl.TCA_CLS_FLAGS_SKIP_SW)
        try:
            flower.round_trip(bench, rule)
        except suite.CheckFailed as exc:
            text = str(exc)
            (refused if text.startswith("the kernel refused it") else wrong)[sample.name] = text
        else:
            offloaded.append(sample.name)
    report["offloaded"], report["refused"], report["mismatched"] = offloaded, refused, wrong
    if wrong:
        raise suite.CheckFailed(f"{len(wrong)} rules the NIC took do not read back as sent: {wrong}")


def insertion_rate(bench: flower.Bench, count: int, report: dict[str, Any]) -> None:
    """Rules per second into the NIC through TcClient's batches (distinct eth_dst, one prio)."""
    in_idx, out_idx = host.ifindex(bench.in_dev), host.ifindex(bench.out_dev)
    rules = [fl.FlowerRule(in_idx, 100, i + 1, fl.ETH_P_IP, fl.FlowerKeys(eth_dst=0x020000000000 + i),
                           (fl.Mirred(out_idx),), flags=fl.TCA_CLS_FLAGS_SKIP_SW) for i in range(count)]
    started = time.monotonic()
    errors = bench.client.add(rules)
    seconds = time.monotonic() - started
    accepted = [r for r, e in zip(rules, errors) if e is None]
    first_error = next((str(e) for e in errors if e is not None), None)
    bench.client.delete(accepted)
    report["insertion"] = {"rules": count, "accepted": len(accepted), "seconds": round(seconds, 3),
                           "rules_per_s": round(len(accepted) / seconds) if seconds else None,
                           "first_refusal": first_error}
    if not accepted:
        raise suite.CheckFailed(f"the NIC accepted none of {count} rules: {first_error}")


def capabilities_of(reps: Sequence[str], report: dict[str, Any]) -> tuple[str, Capabilities]:
    """hwflow's own report on the representors; the switch id and capabilities the packets check uses."""
    out = json.loads(host.sh(sys.executable, "-m", "hwflow.cli.main", "capabilities", "--format", "json"))
    devices = {d["name"]: d for d in out["devices"]}
    report["capabilities"] = {rep: devices.get(rep) for rep in reps}
    missing = [rep for rep in reps if rep not in devices]
    if missing:
        raise suite.CheckFailed(f"hwflow capabilities does not list {missing}")
    first = devices[reps[0]]
    if not first["offload"]:
        raise suite.CheckFailed(f"hwflow says {reps[0]} cannot offload: {first['reason']}")
    return first["switch_id"], Capabilities.from_dict(first["capabilities"])


class Stage:
    """The NIC set up for the checks (switchdev, VFs, representors); each check needs the one before it."""

    def __init__(self, state: NicState, vfs: int, report: dict[str, Any]) -> None:
        self.state, self.vfs, self.report = state, vfs, report
        self.bench: flower.Bench | None = None
        self.endpoints: tuple[forwarding.Endpoint, forwarding.Endpoint] | None = None
        self.datapath: forwarding.Datapath | None = None

    def setup(self) -> None:
        set_nic(self.state, self.vfs, "switchdev")
        vf_devs, reps = representors(self.state.pf, self.vfs)
        for dev in [self.state.pf, *reps]:
            host.sh("ethtool", "-K", dev, "hw-tc-offload", "on")
            host.sh("ip", "link", "set", dev, "up")
        self.report["vfs"], self.report["representors"] = vf_devs, reps
        self.bench = flower.Bench.on(reps[0], reps[1])
        self.endpoints = (forwarding.Endpoint(1, "hilhwa", reps[0], "10.78.0.1", vf_devs[0]),
                          forwarding.Endpoint(2, "hilhwb", reps[1], "10.78.0.2", vf_devs[1]))

    def ready(self) -> flower.Bench:
        if self.bench is None:
            raise suite.CheckFailed("not run: the switchdev setup failed")
        return self.bench

    def discovered(self) -> None:
        self.ready()
        switch_id, caps = capabilities_of(self.report["representors"], self.report)
        self.datapath = forwarding.Datapath(fl.TCA_CLS_FLAGS_SKIP_SW, switch_id, caps)

    def packets(self) -> None:
        self.ready()
        if self.datapath is None or self.endpoints is None:
            raise suite.CheckFailed("not run: hwflow did not report the representors as offloadable")
        forwarding.run_scenario(forwarding.l2_scenario(*self.endpoints), self.datapath)

    def checks(self, rules: int) -> list[suite.Check]:
        return [
            suite.Check(f"switchdev mode with {self.vfs} VFs and their representors", self.setup),
            suite.Check("hwflow capabilities reports the representors as offloadable", self.discovered),
            suite.Check("flower rules offloaded (skip_sw) read back as sent",
                        lambda: offload_samples(self.ready(), self.report)),
            suite.Check(f"insertion rate ({rules} rules)", lambda: insertion_rate(self.ready(), rules, self.report)),
            suite.Check("packets between two VFs forwarded by NIC rules, hardware counters match", self.packets),
        ]

    def close(self) -> None:
        if self.bench is not None:
            self.bench.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hil/hw/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--pf", required=True, help="the physical function's netdev (e.g. enp3s0f0np0)")
    parser.add_argument("--vfs", type=int, default=2, help="VFs to create (at least 2; default 2)")
    parser.add_argument("--force", action="store_true", help="touch the PF even if it looks in use")
    parser.add_argument("--rules", type=int, default=1000, help="rules for the insertion-rate measurement")
    parser.add_argument("--report", type=Path, default=Path("hil-hw-report.json"), help="where to write the report")
    args = parser.parse_args(argv)
    if args.vfs < 2:
        parser.error("--vfs must be at least 2: the packet check needs two VFs")
    if not (SYS_NET / args.pf / "device" / "sriov_numvfs").exists():
        parser.error(f"{args.pf} is not an SR-IOV physical function (no device/sriov_numvfs in sysfs)")
    busy = why_busy(args.pf)
    if busy and not args.force:
        raise Refused(f"hil/hw/run: refusing to touch {args.pf}: {'; '.join(busy)}. It would lose its VFs "
                      "and change eswitch mode; use a dedicated port, or pass --force if you accept that.")
    pci = (SYS_NET / args.pf / "device").resolve().name
    state = NicState(args.pf, pci, int(read(SYS_NET / args.pf / "device" / "sriov_numvfs")), eswitch_mode(pci))
    report: dict[str, Any] = {"pf": args.pf, "pci": pci, "before": dataclasses.asdict(state), "busy": busy}
    stage = Stage(state, args.vfs, report)
    try:
        results = suite.run_checks(stage.checks(args.rules), sys.stdout)
    finally:
        stage.close()
        set_nic(state, state.numvfs, state.mode)
    report["results"] = [dataclasses.asdict(r) for r in results]
    args.report.write_text(json.dumps(report, indent=1), encoding="utf-8")
    print(f"offloaded: {len(report.get('offloaded', []))} sample rules; refused by the NIC: "
          f"{len(report.get('refused', {}))}; insertion: {report.get('insertion', {}).get('rules_per_s')} rules/s")
    for name, why in report.get("refused", {}).items():
        print(f"  refused {name}: {why}")
    print(f"report: {args.report}")
    print(suite.summary(results))
    return 0 if suite.ok(results) else 1


if __name__ == "__main__":
    sys.exit(main())
