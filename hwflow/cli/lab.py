"""``hwflow lab``: several simulated SmartNIC hosts on one machine, on one database (hwflow.sim.lab)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hwflow.cli.common import CliError, common_options
from hwflow.cli.output import dump_json
from hwflow.sim.host import HostError
from hwflow.sim.lab import LabHost, SimLab, host_report, load_state, plug_vm, teardown_lab, unplug_vm

EPILOG = """\
what `up` starts (root; needs iproute2, openvswitch-switch, and etcd-server for --database etcd):
  a namespace hwf-ul-NAME holding the underlay bridge every host's NIC is wired to and the
  management bridge the agents reach the database by; etcd there (--database etcd, the
  default: 1 member at 10.254.0.251:2379, or --etcd-cluster 3: .251-.253), or an SQLite
  file in the workdir (--database sqlite); then NAME1..NAMEn, each a simulated host
  (namespace hwf-NAMEi: ovs-vswitchd, a simulated NIC with its uplink on the underlay and
  tunnel address 172.31.0.i, hwflow-agent). VMs are namespaces behind VFs: `hwflow lab plug`
  gives one a free VF for a port of the database (`hwflow demo --hosts N` plugs some).

the database from the root namespace (etcd listens in the lab's namespace only):
  ip netns exec hwf-ul-NAME hwflow nb network list --database etcd://10.254.0.251:2379

JSON keys (--format json) of `up` and `status`:
  name, workdir, database (the URL the agents use), underlay_namespace,
  hosts: a list of {name, profile, tunnel_ip, vms (namespaces), nic_rules,
  nic_forwarded_packets (redirected by NIC rules; null, as the other NIC counts, for a NIC
  whose rules have no counters: ice-e810's profile), nic_encapsulated_packets (put into a
  tunnel by the NIC), nic_decapsulated_packets (taken out of a tunnel and delivered by the
  NIC), ovs_forwarded_packets (taken in by OVS from VF representors and tunnel ports),
  ovs_uplink_packets (taken in by OVS from the provider uplinks)}
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lab", help="run several simulated SmartNIC hosts on one database (root)",
        description="Start, inspect and stop a lab of simulated SmartNIC hosts: each its own OVS, simulated NIC "
        "and agent, their NICs wired to one underlay, on one database.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    up = actions.add_parser("up", help="start a lab", epilog=EPILOG,
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    _where(up)
    up.add_argument("--hosts", type=int, default=3, help="number of hosts (default: 3)")
    up.add_argument("--profile", default="mlx5-connectx6dx",
                    help="NIC profile(s), comma-separated, given to the hosts in turn (default: mlx5-connectx6dx)")
    up.add_argument("--database", choices=("etcd", "sqlite"), default="etcd",
                    help="etcd in the lab's namespace, or an SQLite file in the workdir (default: etcd)")
    up.add_argument("--etcd-cluster", type=int, choices=(1, 3), default=1, help="etcd members (default: 1)")
    up.add_argument("--vfs", type=int, default=4, help="VFs per simulated NIC (default: 4)")
    up.add_argument("--debug-agents", action="store_true", help="agents log at debug level")
    up.set_defaults(func=run_up)
    status = actions.add_parser("status", help="hosts, VMs, and what each host's NIC and OVS forwarded")
    _where(status)
    status.set_defaults(func=run_status)
    plug = actions.add_parser(
        "plug", help="give a VM namespace a free VF of a host, its representor plugged for a port",
        description="Create the network namespace --vm holding a free VF of --host's simulated NIC as its eth0, "
        "with the MAC of --port (read from the lab's database), and plug the VF's representor into the host's "
        "integration bridge for that port, as Nova and os-vif plug a VM (the port bound to that host, by hwflow "
        "nb or Neutron, is then programmed by the host's agent). The VM asks DHCP for its address, e.g. "
        "`ip netns exec VM busybox udhcpc -i eth0`; `hwflow lab down` deletes it with the lab.",
        epilog="JSON keys (--format json): vm, host, port_id, mac, ips (the port's), vf, representor")
    _where(plug)
    plug.add_argument("--host", required=True, help="the lab's host (NAME1, NAME2, ...)")
    plug.add_argument("--port", required=True, metavar="PORT_ID", help="the port's id in the lab's database")
    plug.add_argument("--vm", required=True, metavar="NAMESPACE", help="the VM's network namespace (new)")
    plug.set_defaults(func=run_plug)
    unplug = actions.add_parser(
        "unplug", help="take a VM's representor off its bridge and its VF back, delete its namespace",
        epilog="JSON keys (--format json): vm, host, port_id, vf_netdev, representor")
    _where(unplug)
    unplug.add_argument("--vm", required=True, metavar="NAMESPACE", help="the VM's network namespace")
    unplug.set_defaults(func=run_unplug)
    down = actions.add_parser("down", help="stop a lab and remove its namespaces")
    _where(down)
    down.set_defaults(func=run_down)


def _where(parser: argparse.ArgumentParser) -> None:
    common_options(parser, database=False)
    parser.add_argument("--name", default="lab", help="lab name, 1-5 letters or digits (default: lab)")
    parser.add_argument("--workdir", metavar="DIR", help="config, logs, database (default: /tmp/hwflow-lab-NAME)")


def _workdir(args: argparse.Namespace) -> Path:
    return Path(args.workdir or f"/tmp/hwflow-lab-{args.name}")


def run_up(args: argparse.Namespace, conf: Any) -> int:
    if os.geteuid() != 0:
        raise CliError("a lab creates network namespaces and runs Open vSwitch: run it as root")
    workdir = _workdir(args)
    try:
        lab = SimLab(args.name, workdir, hosts=args.hosts, profiles=[p for p in args.profile.split(",") if p],
                     database=args.database, etcd_members=args.etcd_cluster, num_vfs=args.vfs,
                     agent_debug=args.debug_agents)
        lab.start(lambda text: _say(args, f"starting {text}"))
    except HostError as exc:
        raise CliError(f"could not start the lab: {exc}") from None
    _report(args, workdir)
    if args.format == "table":
        print(f"\nstop it with: hwflow lab down --workdir {workdir}")
    return 0


def run_status(args: argparse.Namespace, conf: Any) -> int:
    _report(args, _workdir(args))
    return 0


def run_plug(args: argparse.Namespace, conf: Any) -> int:
    return _vm_changed(args, "plug", lambda: plug_vm(_workdir(args), args.host, args.port, args.vm), lambda done: (
        f"plugged {done['vm']} on {done['host']}: VF {done['vf']} (representor {done['representor']}) for port "
        f"{done['port_id']}, MAC {done['mac']}, addresses {', '.join(done['ips']) or 'none'}"))


def run_unplug(args: argparse.Namespace, conf: Any) -> int:
    return _vm_changed(args, "unplug", lambda: unplug_vm(_workdir(args), args.vm), lambda done: (
        f"unplugged {done['vm']} from {done['host']}: VF {done['vf_netdev']} back, representor "
        f"{done['representor']} off the bridge"))


def _vm_changed(args: argparse.Namespace, verb: str, change: Callable[[], dict], said: Callable[[dict], str]) -> int:
    """Plug or unplug a VM; what was done as JSON or one line."""
    try:
        done = change()
    except HostError as exc:
        raise CliError(f"could not {verb} {args.vm}: {exc}") from None
    if args.format == "json":
        dump_json(done)
    else:
        print(said(done))
    return 0


def run_down(args: argparse.Namespace, conf: Any) -> int:
    workdir = _workdir(args)
    if not teardown_lab(workdir):
        raise CliError(f"no lab in {workdir} (no lab.json there)")
    _say(args, f"stopped the lab in {workdir}")
    if args.format == "json":
        dump_json({"workdir": str(workdir), "stopped": True})
    return 0


def _report(args: argparse.Namespace, workdir: Path) -> None:
    state = load_state(workdir)
    if state is None:
        raise CliError(f"no lab in {workdir} (no lab.json there): hwflow lab up --workdir {workdir}")
    report = {"name": state["name"], "workdir": str(workdir), "database": state["database"],
              "underlay_namespace": state["underlay_ns"],
              "hosts": [host_report(LabHost(**host)) for host in state["hosts"]]}
    if args.format == "json":
        dump_json(report)
        return
    print(f"lab {report['name']} in {workdir}: database {report['database']} (namespace "
          f"{report['underlay_namespace']})")
    print(f"{'host':<9} {'profile':<24} {'tunnel ip':<13} {'VMs':>3} {'NIC rules':>9} {'NIC fwd':>8} "
          f"{'encap':>7} {'decap':>7} {'OVS fwd':>8}")
    for host in report["hosts"]:
        h = {k: "-" if v is None else v for k, v in host.items()}  # "-": a NIC whose rules count nothing
        print(f"{h['name']:<9} {h['profile']:<24} {h['tunnel_ip']:<13} {len(h['vms']):>3} {h['nic_rules']:>9} "
              f"{h['nic_forwarded_packets']:>8} {h['nic_encapsulated_packets']:>7} "
              f"{h['nic_decapsulated_packets']:>7} {h['ovs_forwarded_packets']:>8}")


def _say(args: argparse.Namespace, text: str) -> None:
    """Progress goes to stderr so that --format json stays parseable."""
    print(text, file=sys.stderr, flush=True)
