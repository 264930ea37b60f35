"""Discovery against a switchdev device the kernel really has: netdevsim with VF representors.

netdevsim gives real devlink, a real eswitch mode and real representor
netdevs (``phys_switch_id``, ``phys_port_name`` pfXvfY), so hwflow's
discovery and ``hwflow capabilities`` can be checked against the kernel
rather than a recorded tree. It cannot offload flower (6.1 offloads only
cls_bpf): the check asks the kernel (a ``skip_sw`` rule through hwflow's own
client must be refused) and then requires ``hwflow capabilities --probe`` to
say the same, with the kernel's reason.
"""

from __future__ import annotations

import errno
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from hil.checks import host
from hil.suite import Check, CheckFailed
from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.transport import KernelTransport, TcClient

DEV_ID = 10
VFS = 2
BUS = Path("/sys/bus/netdevsim")
KERNEL_REASON = "only offload of BPF classifiers supported"  # netdevsim's extack for flower (6.1)


def create() -> list[str]:
    """A netdevsim device with one port, VFS VFs, in switchdev mode; its VF representors' names."""
    host.sh("modprobe", "netdevsim")
    device = BUS / "devices" / f"netdevsim{DEV_ID}"
    if not device.exists():
        (BUS / "new_device").write_text(f"{DEV_ID} 1", encoding="utf-8")
    (device / "sriov_numvfs").write_text(str(VFS), encoding="utf-8")
    host.sh("devlink", "dev", "eswitch", "set", f"netdevsim/netdevsim{DEV_ID}", "mode", "switchdev")
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        reps = representors()
        if len(reps) == VFS:
            for name in reps:
                host.sh("ip", "link", "set", name, "up")
            return sorted(reps)
        time.sleep(0.2)
    raise CheckFailed(f"netdevsim{DEV_ID} in switchdev mode shows {len(representors())} VF representors, "
                      f"expected {VFS}")


def representors() -> dict[str, str]:
    """VF representor name -> phys_port_name, read straight from sysfs."""
    out = {}
    for net in Path("/sys/class/net").iterdir():
        try:
            name = (net / "phys_port_name").read_text(encoding="utf-8").strip()
        except OSError:
            continue
        if name.startswith("pf0vf") and (net / "device" / "driver").resolve().name == "netdevsim":
            out[net.name] = name
    return out


def capabilities(*extra: str) -> dict[str, dict[str, Any]]:
    """``hwflow capabilities --format json [EXTRA]``, by device name."""
    out = host.sh("python3", "-m", "hwflow.cli.main", "capabilities", "--format", "json", *extra, timeout=300)
    return {d["name"]: d for d in json.loads(out)["devices"]}


def flower_refusal(rep: str) -> str:
    """Ask the kernel to put a flower rule in the device (skip_sw); the refusal's text."""
    host.sh("ethtool", "-K", rep, "hw-tc-offload", "on")
    host.clsact(rep)
    client = TcClient(KernelTransport(), timeout=10.0)
    try:
        rule = fl.FlowerRule(host.ifindex(rep), 1, 1, fl.ETH_P_IP, fl.FlowerKeys(), (fl.Gact("drop"),),
                             flags=fl.TCA_CLS_FLAGS_SKIP_SW)
        (err,) = client.add([rule])
        if err is None:
            client.delete([rule])
            raise CheckFailed(f"netdevsim accepted a skip_sw flower rule on {rep}; the premise changed")
        if err.errno != errno.EOPNOTSUPP:
            raise CheckFailed(f"netdevsim refused skip_sw flower with {err}, expected EOPNOTSUPP")
        return str(err)
    finally:
        client.close()


def discovery() -> None:
    """Every VF representor is found with its role and switch id, as sysfs and devlink say."""
    reps = create()
    report = capabilities()
    switch_ids = set()
    for rep in reps:
        dev = report.get(rep)
        if dev is None:
            raise CheckFailed(f"hwflow capabilities does not list {rep}; it lists {sorted(report)}")
        sysfs_id = Path(f"/sys/class/net/{rep}/phys_switch_id").read_text(encoding="utf-8").strip()
        want = {"driver": "netdevsim", "port_role": "vf_representor", "switch_id": sysfs_id}
        got = {k: dev.get(k) for k in want}
        if got != want:
            raise CheckFailed(f"{rep}: hwflow reports {got}, the kernel says {want}")
        switch_ids.add(dev["switch_id"])
    if len(switch_ids) != 1:
        raise CheckFailed(f"the VF representors of one eswitch report different switch ids: {switch_ids}")


def truthful_offload() -> None:
    """Asked to probe, hwflow must not claim flower offload for netdevsim, and must carry the kernel's reason."""
    reps = create()
    refusal = flower_refusal(reps[0])
    with tempfile.TemporaryDirectory(prefix="hil-probes-") as cache:
        dev = capabilities("--probe", "--probe-cache", cache, "--device", reps[0])[reps[0]]
    claimed = dev["capabilities"]["actions"] if dev["offload"] else []
    if claimed:
        raise CheckFailed(f"after probing, hwflow capabilities says {reps[0]} can offload {claimed}, but the "
                          f"kernel refused flower in hardware: {refusal}")
    told = json.dumps([dev.get("reason"), dev.get("probe")])
    if KERNEL_REASON not in told:
        raise CheckFailed(f"{reps[0]}: no offload claimed, but neither the reason nor the probe results carry "
                          f"the kernel's explanation {KERNEL_REASON!r}: reason {dev.get('reason')!r}, "
                          f"probe {dev.get('probe')}")


def checks() -> list[Check]:
    return [
        Check("netdevsim switchdev: VF representors discovered with role and switch id", discovery),
        Check("netdevsim switchdev: probed, no flower offload claimed, the kernel's reason given", truthful_offload),
    ]
