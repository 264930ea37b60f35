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


def why_busy(pf: str, window: float = 3.0) -> list[str]:
    """Reasons to believe the PF is in use; empty when it looks idle."""
    reasons = []
    addrs = json.loads(host.sh("ip", "-j", "addr", "show", "dev", pf))
    scoped = [a["local"] for link in addrs for a in link.get("addr_info", []) if a.get("scope") == "global"]
    if scoped:
        reasons.append(f"{pf} has addresses {scoped}")
    if (SYS_NET / pf / "master").exists():
        reasons.append(f"{pf} is enslaved to {(SYS_NET / pf / 'master').resolve().name}")
    if pf in host.sh("ip", "route", "show", "default"):
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
    """VFs first (some drivers refuse to change the count in switchdev mode), then the eswitch mode."""
    path = SYS_NET / state.pf / "device" / "sriov_numvfs"
    if int(read(path)) != numvfs:
        if eswitch_mode(state.pci) != "legacy":
            host.sh("devlink", "dev", "eswitch", "set", f"pci/{state.pci}", "mode", "legacy")
        path.write_text("0", encoding="utf-8")
        path.write_text(str(numvfs), encoding="utf-8")
    if eswitch_mode(state.pci) != mode:
        host.sh("devlink", "dev", "eswitch", "set", f"pci/{state.pci}", "mode", mode)


def representors(pf: str, vfs: int) -> tuple[list[str], list[str]]:
    """(VF netdevs, VF representors), both in VF order, found through sysfs."""
    switch_id = read(SYS_NET / pf / "phys_switch_id")
    reps: dict[int, str] = {}
    for net in SYS_NET.iterdir():
        try:
            same = read(net / "phys_switch_id") == switch_id
            match = REP_NAME.fullmatch(read(net / "phys_port_name"))
        except OSError:
            continue
        if same and match:
            reps[int(match.group(1))] = net.name
    vf_devs = []
    for i in range(vfs):
        nets = sorted((SYS_NET / pf / "device" / f"virtfn{i}" / "net").iterdir())
        vf_devs.append(nets[0].name)
    if sorted(reps) != list(range(vfs)):
        raise suite.CheckFailed(f"found representors for VFs {sorted(reps)}, expected 0..{vfs - 1}")
    return vf_devs, [reps[i] for i in range(vfs)]


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
    try:
        set_nic(state, args.vfs, "switchdev")
        vf_devs, reps = representors(args.pf, args.vfs)
        for dev in [args.pf, *reps]:
            host.sh("ethtool", "-K", dev, "hw-tc-offload", "on")
            host.sh("ip", "link", "set", dev, "up")
        report["vfs"], report["representors"] = vf_devs, reps
        bench = flower.Bench.on(reps[0], reps[1])
        endpoints = (forwarding.Endpoint(1, "hilhwa", reps[0], "10.78.0.1", vf_devs[0]),
                     forwarding.Endpoint(2, "hilhwb", reps[1], "10.78.0.2", vf_devs[1]))
        datapath: list[forwarding.Datapath] = []

        def discovered() -> None:
            switch_id, caps = capabilities_of(reps, report)
            datapath.append(forwarding.Datapath(fl.TCA_CLS_FLAGS_SKIP_SW, switch_id, caps))

        def packets_in_hw() -> None:
            if not datapath:
                raise suite.CheckFailed("skipped: hwflow did not report the representors as offloadable")
            forwarding.run_scenario(forwarding.l2_scenario(*endpoints), datapath[0])

        checks = [
            suite.Check("hwflow capabilities reports the representors as offloadable", discovered),
            suite.Check("flower rules offloaded (skip_sw) read back as sent", lambda: offload_samples(bench, report)),
            suite.Check(f"insertion rate ({args.rules} rules)", lambda: insertion_rate(bench, args.rules, report)),
            suite.Check("packets between two VFs forwarded by NIC rules, hardware counters match",
                        packets_in_hw),
        ]
        results = suite.run_checks(checks, sys.stdout)
        bench.close()
    finally:
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
