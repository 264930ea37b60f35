"""``hwflow capabilities``: what every network device of this host can offload, and why not."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, TextIO

from oslo_config import cfg

from hwflow.cli import output
from hwflow.cli.common import CliError, common_options
from hwflow.offload.inventory import UnknownDriverError, inventory, load_drivers
from hwflow_drivers.base import DeviceReport
from hwflow_drivers.discovery import SYS, discover

COLUMNS = ("name", "driver", "nic_driver", "pci_id", "switch_id", "role", "eswitch", "offload", "reason")

DESCRIPTION = """\
List every network device of this host (or of a recorded sysfs tree) with the
hwflow NIC driver that describes it and whether hwflow may put tc-flower rules
in its embedded switch. When it may not, REASON says why and, where there is
one, the command that would change it.

Facts come from sysfs (pyudev), rtnetlink, ethtool (hw-tc-offload) and
devlink (eswitch mode). A source the host cannot answer is listed under
"sources missing" and its facts are left unknown, never guessed. The NIC
drivers asked, in order, are [nic] drivers of the configuration; simulated
NICs are found through [nic] sim_sockets."""

EPILOG = """\
JSON output (--format json):
  {"devices": [DEVICE, ...], "sources_missing": [STRING, ...]}
  DEVICE keys:
    name           netdev name
    ifindex        interface index
    driver         kernel driver (e.g. mlx5_core, ice, veth, tun) or null
    nic_driver     hwflow NIC driver that described it (sim, generic, ...) or null
    pci_id         PCI vendor:device (e.g. 15b3:101d) or null
    switch_id      embedded-switch id (phys_switch_id) or null
    port_role      vf_representor, sf_representor, pf_representor, uplink, pf or netdev
    eswitch_mode   switchdev, legacy, or null when unknown
    offload        true when hwflow may program the device's hardware
    reason         why offload is false, or null
    capabilities   {"match_fields": {FIELD: exact|prefix|any}, "actions": [...],
                    "max_rules": N, "max_actions_per_rule": N}
    tc_endpoint    "netlink" for the kernel, "unix:PATH" for a simulated NIC, or null
  sources_missing: facts no source could supply (e.g. a kernel without devlink).

Exit status: 0 on success; 1 when --device names no device or the
configuration names an unknown NIC driver.

Examples:
  hwflow capabilities
  hwflow capabilities --device enp3s0f0npf0vf1
  hwflow capabilities --format json --config-file /etc/hwflow/hwflow.conf
  hwflow capabilities --sysfs-root /tmp/recorded-host/sys"""


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "capabilities",
        help="what each network device can offload, and why not",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common_options(parser, database=False)
    parser.add_argument(
        "--device", metavar="DEV",
        help="show one device in full, with its whole capability list",
    )
    parser.add_argument(
        "--sysfs-root", metavar="PATH", type=Path, default=SYS,
        help="read a recorded sysfs tree instead of /sys; non-sysfs facts are taken from "
        "PATH/hwflow-recorded.json when present (default: /sys)",
    )
    parser.set_defaults(func=run)
    return parser


def collect(conf: cfg.ConfigOpts, sysfs_root: Path) -> tuple[list[DeviceReport], list[str]]:
    """Every device's report, and every source that could not answer."""
    try:
        drivers = load_drivers(conf)
        devices = discover(sysfs_root)
    except (UnknownDriverError, ValueError) as exc:
        raise CliError(str(exc)) from exc
    missing = {m for dev in devices for m in dev.sources_missing}
    missing.update(p for d in drivers for p in d.problems())
    return inventory(drivers, devices), sorted(missing)


def _row(report: DeviceReport) -> dict[str, Any]:
    return {
        "name": report.name,
        "driver": report.kernel_driver,
        "nic_driver": report.nic_driver,
        "pci_id": report.pci_id,
        "switch_id": report.switch_id,
        "role": report.port_role,
        "eswitch": report.eswitch_mode,
        "offload": report.offload,
        "reason": report.reason,
    }


def _print_device(report: DeviceReport, out: TextIO) -> None:
    data = report.to_dict()
    caps = data.pop("capabilities")
    data.update(max_rules=caps["max_rules"], max_actions_per_rule=caps["max_actions_per_rule"],
                actions=caps["actions"])
    output.table([{"property": k, "value": v} for k, v in data.items()], ("property", "value"), out)
    print(file=out)
    output.table([{"match_field": f, "mask": m} for f, m in caps["match_fields"].items()],
                 ("match_field", "mask"), out)


def run(args: argparse.Namespace, conf: cfg.ConfigOpts) -> int:
    everything, missing = collect(conf, args.sysfs_root)
    reports = [r for r in everything if args.device in (None, r.name)]
    if not reports and args.device is not None:
        names = ", ".join(r.name for r in everything) or "none"
        raise CliError(f"no network device named {args.device!r}; present: {names}")
    if args.format == "json":
        output.dump_json({"devices": [r.to_dict() for r in reports], "sources_missing": missing}, sys.stdout)
        return 0
    if args.device is not None:
        _print_device(reports[0], sys.stdout)
    else:
        output.table([_row(r) for r in reports], COLUMNS, sys.stdout)
    if missing:
        print("\nsources missing:\n  " + "\n  ".join(missing))
    return 0
