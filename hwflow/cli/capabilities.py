"""``hwflow capabilities``: what every network device of this host can offload, and why not."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from oslo_config import cfg

from hwflow.backends.tc.probe import ProbeError, Prober, not_probed_claims, probe_candidates
from hwflow.backends.tc.transport import KernelTransport, SimSocketTransport, TcClient, Transport
from hwflow.cli import output
from hwflow.cli.common import CliError, common_options
from hwflow.offload.capabilities import SCHEMA
from hwflow.offload.discovery import SYS, discover
from hwflow.offload.inventory import UnknownDriverError, inventory, load_drivers
from hwflow.offload.nic import (
    PF_REPRESENTOR,
    SF_REPRESENTOR,
    TC_NETLINK,
    TUNNEL,
    UPLINK,
    VF_REPRESENTOR,
    DeviceReport,
)
from hwflow.offload.probe import ProbeCache, ProbeReport, age_text

COLUMNS = ("name", "driver", "nic_driver", "pci_id", "switch_id", "role", "eswitch", "representors", "offload",
           "reason")
REPRESENTOR_ROLES = (PF_REPRESENTOR, VF_REPRESENTOR, SF_REPRESENTOR)

DESCRIPTION = """\
List every network device of this host (or of a recorded sysfs tree) with the
hwflow NIC driver that describes it and whether hwflow may put tc-flower rules
in its embedded switch. When it may not, REASON says why and, where there is
one, the command that would change it. Ports of one embedded switch (same
phys_switch_id) are grouped: the uplink's REPRESENTORS column counts the PF,
VF and SF representors of its eswitch.

Facts come from sysfs (pyudev), rtnetlink, ethtool (hw-tc-offload, firmware)
and devlink (eswitch mode). A source the host cannot answer is listed under
"sources missing" and its facts are left unknown, never guessed. The NIC
drivers asked, in order, are [nic] drivers of the configuration (vendor
drivers such as mlx5 and ice before the generic one); simulated NICs are found
through [nic] sim_sockets.

--probe asks the devices themselves: for each claim it installs one tc-flower
rule with skip_sw on a chain nothing jumps to (or, on a device with chain 0
only, at the last priority behind a source-MAC guard no frame carries) and
removes it at once, so traffic is never touched. Results are cached in
[nic] probe_cache (or --probe-cache) with the time they were taken; their
age is shown, and the generic driver claims exactly what they confirmed."""

EPILOG = f"""\
JSON output (--format json):
  {{"devices": [DEVICE, ...], "eswitches": [ESWITCH, ...], "sources_missing": [STRING, ...]}}
  DEVICE keys:
    name               netdev name
    ifindex            interface index
    driver             kernel driver (e.g. mlx5_core, ice, veth, tun) or null
    nic_driver         hwflow NIC driver that described it (sim, mlx5, ice, generic, ...) or null
    pci_id             PCI vendor:device (e.g. 15b3:101d) or null
    firmware           firmware version (ethtool -i) or null
    switch_id          embedded-switch id (phys_switch_id) or null
    port_role          vf_representor, sf_representor, pf_representor, uplink, tunnel, pf or netdev
                       (tunnel: a flow-based tunnel device whose decap rules the embedded switch holds)
    eswitch_mode       switchdev, legacy, or null when unknown
    offload            true when hwflow may program the device's hardware
    reason             why offload is false, or null
    capabilities       CAPABILITIES (below); all empty when offload is false
    capability_source  where the capabilities come from (family facts, probe and its age, profile) or null
    tc_endpoint        "netlink" for the kernel, "unix:PATH" for a simulated NIC, or null
    tunnel_type        a tunnel device's type (vxlan, geneve), else null
    tunnel_dst_port    a tunnel device's UDP port (4789, 6081), else null
    probe              null, or the cached probe: {{"device", "switch_id", "taken_at" (Unix time), "age_seconds",
                       "placement", "results": [{{"claim", "status": confirmed|refused|error|not_probed,
                       "detail"}}], "not_probed": [CLAIM, ...]}}
  ESWITCH keys: switch_id, eswitch_mode, uplinks, pf_representors, vf_representors, sf_representors,
    tunnels (lists of netdev names of that embedded switch; tunnels: the tunnel devices it decapsulates for).
  CAPABILITIES:
{chr(10).join('    ' + line for line in SCHEMA.splitlines())}
  sources_missing: facts no source could supply (e.g. a kernel without devlink).

Exit status: 0 on success; 1 when --device names no device, when --probe
cannot reach a device, or when the configuration names an unknown NIC driver.

Examples:
  hwflow capabilities
  hwflow capabilities --device enp3s0f0npf0vf1
  hwflow capabilities --probe --device enp3s0f0npf0vf1
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
        help="show one device in full, with its whole capability list and cached probe results",
    )
    parser.add_argument(
        "--sysfs-root", metavar="PATH", type=Path, default=SYS,
        help="read a recorded sysfs tree instead of /sys; non-sysfs facts are taken from "
        "PATH/hwflow-recorded.json when present (default: /sys)",
    )
    parser.add_argument(
        "--probe", action="store_true",
        help="run active probes on every offloadable device (or on --device) and cache the results",
    )
    parser.add_argument(
        "--probe-cache", metavar="DIR", type=Path,
        help="directory of cached probe results (default: [nic] probe_cache, /var/lib/hwflow/probes)",
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


def eswitches(reports: Sequence[DeviceReport]) -> list[dict[str, Any]]:
    """The ports of each embedded switch, grouped by switch id."""
    groups: dict[str, dict[str, Any]] = {}
    for report in reports:
        if report.switch_id is None:
            continue
        group = groups.setdefault(report.switch_id, {
            "switch_id": report.switch_id, "eswitch_mode": report.eswitch_mode, "uplinks": [],
            "pf_representors": [], "vf_representors": [], "sf_representors": [], "tunnels": []})
        key = {UPLINK: "uplinks", TUNNEL: "tunnels"}.get(report.port_role, f"{report.port_role}s")
        if key in group:
            group[key].append(report.name)
    return [groups[k] for k in sorted(groups)]


def _representors(report: DeviceReport, switches: dict[str, dict[str, Any]]) -> str | None:
    """For an uplink: how many representors its eswitch has, by kind."""
    group = switches.get(report.switch_id or "")
    if group is None or report.port_role != UPLINK:
        return None
    counts = [f"{len(group[f'{role}s'])} {role.split('_')[0]}" for role in REPRESENTOR_ROLES
              if group[f"{role}s"]]
    return " ".join(counts) or "0"


def _row(report: DeviceReport, switches: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "name": report.name,
        "driver": report.kernel_driver,
        "nic_driver": report.nic_driver,
        "pci_id": report.pci_id,
        "switch_id": report.switch_id,
        "role": report.port_role,
        "eswitch": report.eswitch_mode,
        "representors": _representors(report, switches),
        "offload": report.offload,
        "reason": report.reason,
    }


def _probe_dict(report: DeviceReport, probe: ProbeReport | None) -> dict[str, Any] | None:
    if probe is None:
        return None
    return {**probe.to_dict(), "age_seconds": round(probe.age(), 3),
            "not_probed": not_probed_claims(report.capabilities)}


def _print_device(report: DeviceReport, probe: ProbeReport | None, out: TextIO) -> None:
    data = report.to_dict()
    caps = data.pop("capabilities")
    fields = caps.pop("match_fields")
    ct = caps.pop("conntrack")
    quirks = caps.pop("quirks")
    data.update(caps)
    if report.offload and data["max_chains"] is None:
        data["max_chains"] = "no device limit"
    data["conntrack"] = "none" if ct is None else (
        f"states {','.join(ct['states']) or '-'}; zones {'yes' if ct['zones'] else 'no'}; "
        f"nat {'yes' if ct['nat'] else 'no'}")
    output.table([{"property": k, "value": v} for k, v in data.items()], ("property", "value"), out)
    print(file=out)
    output.table([{"match_field": f, "mask": m} for f, m in fields.items()], ("match_field", "mask"), out)
    if quirks:
        print(file=out)
        output.table(quirks, ("name", "description", "source"), out)
    if probe is None:
        if report.offload:
            print(f"\nnot probed: hwflow capabilities --probe --device {report.name}", file=out)
        return
    print(file=out)
    print(f"probed {age_text(probe.age())} ago, {probe.placement}:", file=out)
    output.table([r.to_dict() for r in probe.results], ("claim", "status", "detail"), out)


def _transport(report: DeviceReport) -> Transport:
    endpoint = report.tc_endpoint or ""
    if endpoint.startswith("unix:"):
        return SimSocketTransport(endpoint.removeprefix("unix:"))
    return KernelTransport()


def probable(report: DeviceReport, live: bool) -> str | None:
    """Why ``report``'s device cannot be probed, or None when it can."""
    if not report.offload or report.tc_endpoint is None:
        return report.reason or "no tc endpoint"
    if not live and report.tc_endpoint == TC_NETLINK:
        return "its facts come from a recorded sysfs tree, not from this host's kernel"
    return None


def probe_devices(reports: Sequence[DeviceReport], cache: ProbeCache, live: bool) -> list[ProbeReport]:
    """Probe every device of ``reports`` that can be (see :func:`probable`) and cache each report."""
    done = []
    for report in reports:
        if probable(report, live) is not None:
            continue
        candidates = probe_candidates(report.capabilities)
        try:
            client = TcClient(_transport(report))
        except (ConnectionError, OSError) as exc:
            raise CliError(f"cannot probe {report.name}: {exc}") from exc
        try:
            probe = Prober(client, report.ifindex).run(report.name, candidates, report.switch_id)
        except (ProbeError, TimeoutError, ConnectionError, OSError) as exc:
            raise CliError(f"cannot probe {report.name}: {exc}") from exc
        finally:
            client.close()
        cache.save(probe)
        done.append(probe)
    return done


def _cache(args: argparse.Namespace, conf: cfg.ConfigOpts) -> ProbeCache:
    if args.probe_cache is not None:
        conf.set_override("probe_cache", str(args.probe_cache), group="nic")
    return ProbeCache(Path(conf.nic.probe_cache))


def _cached(cache: ProbeCache, name: str) -> ProbeReport | None:
    try:
        return cache.load(name)
    except ValueError as exc:
        raise CliError(str(exc)) from exc


def run(args: argparse.Namespace, conf: cfg.ConfigOpts) -> int:
    cache = _cache(args, conf)
    everything, missing = collect(conf, args.sysfs_root)
    reports = [r for r in everything if args.device in (None, r.name)]
    if not reports and args.device is not None:
        names = ", ".join(r.name for r in everything) or "none"
        raise CliError(f"no network device named {args.device!r}; present: {names}")
    if args.probe:
        live = args.sysfs_root.resolve() == SYS
        why_not = probable(reports[0], live) if args.device is not None else None
        if why_not is not None:
            raise CliError(f"{args.device} cannot be probed: {why_not}")
        probed = probe_devices(reports, cache, live)
        everything, missing = collect(conf, args.sysfs_root)  # drivers that learn from probes see them now
        reports = [r for r in everything if args.device in (None, r.name)]
        if args.format == "table":
            if not probed:
                print("probed nothing: no device here can offload (see REASON)")
            for probe in probed:
                counts = {s: sum(r.status == s for r in probe.results) for s in ("confirmed", "refused", "error")}
                print(f"probed {probe.device}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
                      + f" ({probe.placement})")
            print()
    if args.format == "json":
        output.dump_json({
            "devices": [{**r.to_dict(), "probe": _probe_dict(r, _cached(cache, r.name))} for r in reports],
            "eswitches": eswitches(everything),
            "sources_missing": missing,
        }, sys.stdout)
        return 0
    if args.device is not None:
        _print_device(reports[0], _cached(cache, reports[0].name), sys.stdout)
    else:
        switches = {g["switch_id"]: g for g in eswitches(everything)}
        output.table([_row(r, switches) for r in reports], COLUMNS, sys.stdout)
    if missing:
        print("\nsources missing:\n  " + "\n  ".join(missing))
    return 0
