"""``hwflow demo``: one simulated SmartNIC host, two VMs, real pings; or, with ``--hosts N``, a lab of N.

Everything is real but the NIC: Open vSwitch (userspace datapath), the
agent on the embedded database, namespaces and kernel pings. The simulated
NIC forwards what the agent offloaded to it and hands the rest to OVS, and
the demo reports how many packets each datapath carried. With several hosts
(a :class:`SimLab`) the VMs on each host ping those on the next, on one
network and across a router, through tunnels the NICs encapsulate and
decapsulate where their profile can.
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

from hwflow.backends.ovs import translate
from hwflow.backends.ovs.openflow import OpenFlowConnection
from hwflow.cli.common import CliError, common_options
from hwflow.cli.output import dump_json
from hwflow.db.api import NbApi
from hwflow.model.objects import Network, Port, Router, RouterPort, Subnet
from hwflow.sim.host import BRIDGE, HostError, SimHost, teardown_from_state
from hwflow.sim.lab import LabHost, SimLab, host_report, load_state, teardown_lab
from hwflow.sim.profile import load_profile

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
  nic_forwarded_packets  packets the NIC's tc-flower rules redirected (rule counters; null for a NIC
                         whose rules have no counters)
  ovs_forwarded_packets  packets that entered OVS from the representors (OVS port counters)
  nic_rules              tc-flower rules installed on the NIC
  ovs_flows              OpenFlow flows hwflow installed in OVS
  workdir                directory with the config, logs and database
  kept                   true when --keep left the host running

with --hosts N (N >= 2): a lab of N hosts (hwflow lab) named NAME1..NAMEn on
one database (an SQLite file, or etcd in the lab's namespace with --etcd),
their NICs (--profile, default mlx5-connectx6dx; comma-separated profiles
go to the hosts in turn) wired to one underlay; networks demo-a
(10.0.0.0/24) and demo-b (10.0.1.0/24), VXLAN, joined by router demo-router;
on host i VMs ai (10.0.0.i) and bi (10.0.1.i). Each ai pings a(i+1) (one
network, another host) and b(i+1) (across the router, another host).
JSON keys then: ping_loss_percent (all pings), pings, workdir, kept, and
  hosts  a list of {name, profile, nic_forwarded_packets, ovs_forwarded_packets,
         nic_encapsulated_packets, nic_decapsulated_packets}: what each host's
         NIC and OVS carried during the counted pings (see `hwflow lab --help`; the
         NIC's are null for a NIC whose rules have no counters, as ice-e810's)

Needs root, iproute2 and openvswitch-switch (and etcd-server for --etcd).
Exit status is 0 when the pings lost nothing and the NIC forwarded packets
(with --hosts: on every host whose profile can encapsulate VXLAN), 1 otherwise.
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
    parser.add_argument("--profile", help="simulated NIC profile (default: sim-basic; with --hosts: "
                        "mlx5-connectx6dx, and a comma-separated list goes to the hosts in turn)")
    parser.add_argument("--name", default="demo", help="host (chassis) name, at most 8 characters; its namespaces "
                        "are hwf-NAME and hwf-NAME-vm1/-vm2 (default: demo); with --hosts the lab's name, at "
                        "most 5")
    parser.add_argument("--hosts", type=int, default=1, help="simulated hosts (default: 1); 2 or more run a lab")
    parser.add_argument("--etcd", action="store_true", help="with --hosts: the lab's database is etcd, not SQLite")
    parser.add_argument("--clean", metavar="DIR", help="tear down a host or lab left by --keep in DIR, then exit")
    parser.set_defaults(func=run)


def say(args: argparse.Namespace, text: str) -> None:
    """Progress goes to stderr so that --format json stays parseable."""
    if args.format == "table":
        print(text, file=sys.stderr, flush=True)


def run(args: argparse.Namespace, conf: Any) -> int:
    if args.clean:
        if not (teardown_lab(Path(args.clean)) or teardown_from_state(Path(args.clean))):
            raise CliError(f"nothing to clean in {args.clean}: no host.json or lab.json there")
        print(f"cleaned up the demo in {args.clean}")
        return 0
    if os.geteuid() != 0:
        raise CliError("the demo creates network namespaces and runs Open vSwitch: run it as root")
    for tool in ("ip", "ovs-vswitchd", "ovsdb-server", "ping"):
        if shutil.which(tool) is None:
            raise CliError(f"{tool} is not installed: apt-get install iproute2 openvswitch-switch iputils-ping")
    if args.hosts > 1:
        return _run_lab(args)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hwflow-demo-"))
    if (workdir / "host.json").exists():
        raise CliError(f"a demo host is still running from {workdir}: hwflow demo --clean {workdir}")
    database = args.database
    if database is None:  # the demo's own database starts empty every run
        for stale in workdir.glob("nb.sqlite*"):
            stale.unlink()
        database = f"sqlite:///{workdir}/nb.sqlite"
    try:
        host = SimHost(args.name, workdir, database, profile=args.profile or "sim-basic")
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
    ok = report["ping_loss_percent"] == 0 and (report["nic_forwarded_packets"] or 0) > 0
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


def _wait_for_agent(host: SimHost, expected_rules: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while host_report(_lab_host(host))["nic_rules"] < expected_rules:
        if host.agent_pid is None:
            raise CliError(f"hwflow-agent exited; see {host.agent_log}")
        if time.monotonic() > deadline:
            raise CliError(f"the agent did not install {expected_rules} NIC rules in {timeout:.0f}s; "
                           f"see {host.agent_log}")
        time.sleep(0.1)


def _counters(host: SimHost) -> dict[str, Any]:
    """What the host's NIC and OVS carried (hwflow.sim.lab.host_report), and the OVS flows hwflow holds."""
    report = host_report(_lab_host(host))
    of = OpenFlowConnection(host.ovs.mgmt(BRIDGE))
    try:
        flows = of.dump_flows(translate.COOKIE_MARK, translate.COOKIE_MARK_MASK)
    finally:
        of.close()
    return {key: report[key] for key in ("nic_forwarded_packets", "ovs_forwarded_packets", "nic_rules")} | {
        "ovs_flows": len(flows)}


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
              f"  ip netns exec {host.ns} hwflow flows --config-file {host.agent_config}\n"
              f"  hwflow trace --chassis {host.name} --port vm1 --packet ipv4_dst=10.0.0.2 --database "
              f"{args.database or f'sqlite:///{d}/nb.sqlite'}\n"
              f"  ovs-ofctl -O OpenFlow13 dump-flows {host.ovs.mgmt(BRIDGE)}\n"
              f"  hwflow nb port list --database {args.database or f'sqlite:///{d}/nb.sqlite'}\n"
              f"  less {host.agent_log}\n"
              f"clean up with: hwflow demo --clean {d}")


# --- several hosts ----------------------------------------------------------------------------------

LAB_NETWORKS = (("demo-a", 1001, "10.0.0"), ("demo-b", 1002, "10.0.1"))  # name, VNI, /24 prefix
WARM_UP = 30.0  # seconds a path may take before its first answer (agents programming, ARP, the NIC's neighbours)


def _run_lab(args: argparse.Namespace) -> int:
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="hwflow-demo-"))
    if load_state(workdir) is not None:
        raise CliError(f"a demo lab is still running from {workdir}: hwflow demo --clean {workdir}")
    profiles = [p for p in (args.profile or "mlx5-connectx6dx").split(",") if p]
    try:
        lab = SimLab(args.name, workdir, hosts=args.hosts, profiles=profiles,
                     database="etcd" if args.etcd else "sqlite", agent_debug=args.debug)
        say(args, f"[1/4] starting {args.hosts} hosts (workdir {workdir})")
        lab.start(lambda text: say(args, f"      {text}"))
    except HostError as exc:
        raise CliError(f"could not start the demo lab: {exc}") from None
    try:
        report = _lab_scenario(args, lab)
    except BaseException:
        lab.stop()
        raise
    report.update(workdir=str(workdir), kept=bool(args.keep))
    if not args.keep:
        lab.stop()
    _print_lab(args, report, lab)
    # a host whose NIC can tunnel must have carried its share; one that cannot leaves everything to OVS
    tunnelling = {h.name for h in lab.hosts if load_profile(h.profile).capabilities.can_encap("vxlan")}
    ok = report["ping_loss_percent"] == 0 and all((h["nic_forwarded_packets"] or 0) > 0 or h["nic_forwarded_packets"]
                                                  is None for h in report["hosts"]
                                                  if h["name"] in tunnelling)
    return 0 if ok else 1


def _lab_scenario(args: argparse.Namespace, lab: SimLab) -> dict[str, Any]:
    say(args, "[2/4] creating networks demo-a, demo-b, router demo-router and a VM port of each per host")

    def create(nb: NbApi) -> list[tuple[SimHost, Port, str]]:
        router = nb.create(Router(name="demo-router"))
        vms = []
        for net_name, vni, prefix in LAB_NETWORKS:
            net = nb.create(Network(name=net_name, network_type="vxlan", vni=vni))
            subnet = nb.create(Subnet(name=f"{net_name}-subnet", network_id=net.id, cidr=f"{prefix}.0/24",
                                      gateway_ip=f"{prefix}.254"))
            nb.create(RouterPort(name=f"demo-router-{net_name}", router_id=router.id, network_id=net.id,
                                 subnet_id=subnet.id, mac=f"fa:16:3e:ff:00:{vni % 256:02x}", ip=f"{prefix}.254"))
            for i, host in enumerate(lab.hosts, 1):
                vm = f"{net_name[-1]}{i}"
                port = nb.create(Port(name=vm, network_id=net.id, mac=f"fa:16:3e:{vni % 256:02x}:00:{i:02x}",
                                      ips=[f"{prefix}.{i}"], chassis=host.name))
                vms.append((host, port, f"{prefix}.254"))
        return vms

    vms = lab.nb(create)
    say(args, "[3/4] plugging a VF into each VM namespace and its representor into its host's br-int")
    for host, port, gateway in vms:
        host.plug(port, _vm_ns(host, port.name), gateway=gateway)
    pairs = []  # (host, vm namespace, address): a on host i pings a and b on host i+1
    for i, host in enumerate(lab.hosts):
        following = (i + 1) % len(lab.hosts) + 1  # the next host's VMs' last address byte
        pairs += [(host, _vm_ns(host, f"a{i + 1}"), f"{prefix}.{following}") for _, _, prefix in LAB_NETWORKS]
    say(args, f"[4/4] waiting for every path, then {args.count} pings on each of {len(pairs)} paths "
              "(one network and across the router, host to next host)")
    for host, ns, address in pairs:
        _warm_up(host, ns, address)
    before = [host_report(_lab_host(h)) for h in lab.hosts]
    lost = sum(host.ping(ns, address, count=args.count, interval=0.05) for host, ns, address in pairs)
    after = _settled(lab)
    keys = ("nic_forwarded_packets", "ovs_forwarded_packets", "nic_encapsulated_packets", "nic_decapsulated_packets")
    hosts = [{"name": a["name"], "profile": a["profile"],  # a NIC without counters says None
              **{k: None if a[k] is None or b[k] is None else a[k] - b[k] for k in keys}}
             for a, b in zip(after, before, strict=True)]
    return {"ping_loss_percent": lost / len(pairs), "pings": args.count * len(pairs), "hosts": hosts}


def _settled(lab: SimLab, timeout: float = 6.0) -> list[dict[str, Any]]:
    """The hosts' reports once two readings half a second apart agree: OVS counts a tunnel port's packets a
    moment after it forwarded them."""
    deadline = time.monotonic() + timeout
    now = [host_report(_lab_host(h)) for h in lab.hosts]
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now, before = [host_report(_lab_host(h)) for h in lab.hosts], now
        if now == before:
            break
    return now


def _vm_ns(host: SimHost, vm: str) -> str:
    return f"{host.ns}-{vm}"


def _lab_host(host: SimHost) -> LabHost:
    return LabHost(host.name, str(host.workdir), host.profile, host.tunnel_ip, "")


def _warm_up(host: SimHost, ns: str, address: str) -> None:
    deadline = time.monotonic() + WARM_UP
    while host.ping(ns, address, count=1, interval=0.2) > 0:
        if host.agent_pid is None:
            raise CliError(f"hwflow-agent of {host.name} exited; see {host.agent_log}")
        if time.monotonic() > deadline:
            raise CliError(f"{ns} got no answer from {address} in {WARM_UP:.0f}s; see {host.agent_log}")


def _print_lab(args: argparse.Namespace, report: dict[str, Any], lab: SimLab) -> None:
    if args.format == "json":
        dump_json(report)
        return
    print(f"{report['pings']} pings between {len(lab.hosts)} hosts: {report['ping_loss_percent']:g}% loss")
    print(f"{'host':<9} {'profile':<24} {'NIC fwd':>8} {'NIC encap':>9} {'NIC decap':>9} {'OVS fwd':>8}")
    for h in report["hosts"]:
        shown = {k: "-" if v is None else v for k, v in h.items()}
        print(f"{shown['name']:<9} {shown['profile']:<24} {shown['nic_forwarded_packets']:>8} "
              f"{shown['nic_encapsulated_packets']:>9} {shown['nic_decapsulated_packets']:>9} "
              f"{shown['ovs_forwarded_packets']:>8}")
    if args.keep:
        print(f"\nleft running in {report['workdir']}: hwflow lab status --workdir {report['workdir']} --name "
              f"{lab.name}\nclean up with: hwflow demo --clean {report['workdir']}")
