"""``hwflow demo``: one simulated SmartNIC host, two VMs, real pings.

Everything is real but the NIC: Open vSwitch (userspace datapath), the
agent on the embedded database, namespaces and kernel pings. The simulated
NIC forwards what the agent offloaded to it and hands the rest to OVS, and
the demo reports how many packets each datapath carried.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from hwflow.backends.ovs.openflow import OpenFlowConnection
from hwflow.backends.tc.transport import SimSocketTransport, TcClient
from hwflow.cli.common import CliError, common_options
from hwflow.cli.output import dump_json
from hwflow.db.api import NbApi
from hwflow.model.objects import Network, Port, Subnet
from hwflow.sim.host import BRIDGE, HostError, SimHost, teardown_from_state

VMS = (("vm1", "fa:16:3e:00:00:01", "10.0.0.1"), ("vm2", "fa:16:3e:00:00:02", "10.0.0.2"))

EPILOG = """\
what it does:
  1. starts Open vSwitch (userspace datapath) in network namespace hwf-demo (--name),
     a simulated SmartNIC with 4 VFs, and hwflow-agent on an embedded database;
  2. creates network demo-net (VNI 1001) and ports vm1/vm2 with `hwflow nb`'s API;
  3. gives each VM namespace (hwf-demo-vm1, hwf-demo-vm2) a VF, and plugs the
     representors into br-int, as Nova/os-vif would;
  4. waits for the agent to program OVS and the NIC, pings vm2 from vm1, and
     reports which datapath carried the packets.

JSON keys (--format json):
  ping_loss_percent      packet loss of the ping, in percent
  pings                  echo requests sent
  nic_forwarded_packets  packets the NIC's tc-flower rules forwarded (rule counters)
  ovs_forwarded_packets  packets that entered OVS from the representors (OVS port counters)
  nic_rules              tc-flower rules installed on the NIC
  ovs_flows              OpenFlow flows hwflow installed in OVS
  workdir                directory with the config, logs and database
  kept                   true when --keep left the host running

Needs root, iproute2 and openvswitch-switch. Exit status is 0 when the ping
lost nothing and the NIC forwarded packets, 1 otherwise.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "demo", help="run a self-contained single-host demo (root)",
        description="Run a self-contained single-host demo: one simulated SmartNIC host, two VMs, real pings.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    common_options(parser)
    parser.add_argument("--keep", action="store_true", help="leave everything running and say how to look around")
    parser.add_argument("--workdir", metavar="DIR", help="where to put config, logs and the database "
                        "(default: a new temporary directory)")
    parser.add_argument("--count", type=int, default=10, help="pings to send (default: 10)")
    parser.add_argument("--profile", default="sim-basic", help="simulated NIC profile (default: sim-basic)")
    parser.add_argument("--name", default="demo", help="host (chassis) name, at most 8 characters; its namespaces "
                        "are hwf-NAME and hwf-NAME-vm1/-vm2 (default: demo)")
    parser.add_argument("--clean", metavar="DIR", help="tear down a host left by --keep in DIR, then exit")
    parser.set_defaults(func=run)


def say(args: argparse.Namespace, text: str) -> None:
    """Progress goes to stderr so that --format json stays parseable."""
    if args.format == "table":
        print(text, file=sys.stderr, flush=True)


def run(args: argparse.Namespace, conf: Any) -> int:
    if args.clean:
        if not teardown_from_state(Path(args.clean)):
            raise CliError(f"nothing to clean in {args.clean}: no host.json there")
        print(f"cleaned up the demo host in {args.clean}")
        return 0
    if os.geteuid() != 0:
        raise CliError("the demo creates network namespaces and runs Open vSwitch: run it as root")
    for tool in ("ip", "ovs-vswitchd", "ovsdb-server", "ping"):
        if shutil.which(tool) is None:
            raise CliError(f"{tool} is not installed: apt-get install iproute2 openvswitch-switch iputils-ping")
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hwflow-demo-"))
    if (workdir / "host.json").exists():
        raise CliError(f"a demo host is still running from {workdir}: hwflow demo --clean {workdir}")
    database = args.database
    if database is None:  # the demo's own database starts empty every run
        for stale in workdir.glob("nb.sqlite*"):
            stale.unlink()
        database = f"sqlite:///{workdir}/nb.sqlite"
    try:
        host = SimHost(args.name, workdir, database, profile=args.profile)
    except HostError as exc:
        raise CliError(str(exc)) from None
    if subprocess.run(["ip", "netns", "pids", host.ns], capture_output=True, check=False).returncode == 0:
        raise CliError(f"network namespace {host.ns} exists: a demo named {args.name} is running (stop it with "
                       f"hwflow demo --clean ITS_WORKDIR, or ip netns delete {host.ns}), or use --name")
    say(args, f"[1/4] starting OVS, the simulated NIC and hwflow-agent (workdir {workdir})")
    try:
        host.start()
    except HostError as exc:
        raise CliError(f"could not start the demo host: {exc}") from None
    try:
        report = _scenario(args, host, database)
    except BaseException:
        host.stop()
        raise
    report["workdir"] = str(workdir)
    report["kept"] = bool(args.keep)
    if not args.keep:
        host.stop()
    _print(args, report, host)
    ok = report["ping_loss_percent"] == 0 and report["nic_forwarded_packets"] > 0
    return 0 if ok else 1


def _scenario(args: argparse.Namespace, host: SimHost, database: str) -> dict[str, Any]:
    say(args, "[2/4] creating network demo-net (10.0.0.0/24) and ports vm1, vm2 in the northbound database")
    with NbApi.from_url(database) as nb:
        net = nb.create(Network(name="demo-net", vni=1001))
        nb.create(Subnet(name="demo-subnet", network_id=net.id, cidr="10.0.0.0/24", gateway_ip="10.0.0.254"))
        ports = [nb.create(Port(name=vm, network_id=net.id, mac=mac, ips=[ip], chassis=host.name))
                 for vm, mac, ip in VMS]
    say(args, "[3/4] plugging VFs into VM namespaces and representors into br-int")
    for (vm, _, _), port in zip(VMS, ports):
        host.plug(port, f"{host.ns}-{vm}")
    _wait_for_agent(host, expected_rules=2)
    say(args, f"[4/4] pinging {VMS[1][2]} from vm1 ({args.count} packets)")
    loss = host.ping(f"{host.ns}-vm1", VMS[1][2], count=args.count)
    return {"ping_loss_percent": loss, "pings": args.count, **_counters(host)}


def _nic_rules(host: SimHost) -> list:
    client = TcClient(SimSocketTransport(host.nic_socket))
    try:
        return [entry for port in host.nic_ports for entry in client.dump(port["representor_ifindex"])]
    finally:
        client.close()


def _wait_for_agent(host: SimHost, expected_rules: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while len(_nic_rules(host)) < expected_rules:
        if host.agent_pid is None:
            raise CliError(f"hwflow-agent exited; see {host.agent_log}")
        if time.monotonic() > deadline:
            raise CliError(f"the agent did not install {expected_rules} NIC rules in {timeout:.0f}s; "
                           f"see {host.agent_log}")
        time.sleep(0.1)


def _counters(host: SimHost) -> dict[str, int]:
    rules = _nic_rules(host)
    reps = {host.ovsdb.ofport(p["representor"]) for p in host.nic_ports} - {None}
    of = OpenFlowConnection(host.ovs.mgmt(BRIDGE))
    try:
        ports = of.port_stats()
        flows = of.dump_flows(0x4857 << 48, 0xFFFF << 48)
    finally:
        of.close()
    return {
        "nic_forwarded_packets": sum(stats.packets for _, stats in rules if stats is not None),
        "ovs_forwarded_packets": sum(rx for ofport, (rx, _) in ports.items() if ofport in reps),
        "nic_rules": len(rules),
        "ovs_flows": len(flows),
    }


def _print(args: argparse.Namespace, report: dict[str, Any], host: SimHost) -> None:
    if args.format == "json":
        dump_json(report)
        return
    print(f"ping vm1 -> vm2: {report['ping_loss_percent']:g}% loss ({report['pings']} packets)")
    print(f"forwarded by the NIC (tc-flower rules):  {report['nic_forwarded_packets']} packets "
          f"({report['nic_rules']} rules)")
    print(f"forwarded by Open vSwitch:               {report['ovs_forwarded_packets']} packets "
          f"({report['ovs_flows']} flows)")
    if args.keep:
        d = report["workdir"]
        print(f"\nleft running in {d}. Look around:\n"
              f"  ip netns exec {host.ns}-vm1 ping 10.0.0.2\n"
              f"  ip netns exec {host.ns} hwflow capabilities --config-file {host.agent_config}\n"
              f"  hwflow trace --chassis {host.name} --port vm1 --packet ipv4_dst=10.0.0.2 --database "
              f"{args.database or f'sqlite:///{d}/nb.sqlite'}\n"
              f"  ovs-ofctl -O OpenFlow13 dump-flows {host.ovs.mgmt(BRIDGE)}\n"
              f"  hwflow nb port list --database {args.database or f'sqlite:///{d}/nb.sqlite'}\n"
              f"  less {host.agent_log}\n"
              f"clean up with: hwflow demo --clean {d}")
