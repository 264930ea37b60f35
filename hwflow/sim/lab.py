"""A lab of simulated SmartNIC hosts on one machine: the many-host setup users and the scenario tests run.

Each host is a :class:`SimHost` (its own namespace, ovs-vswitchd, simulated
NIC and agent). Their NICs' physical ports are wired to one underlay (a
bridge in the lab's namespace), over which they tunnel to each other; a
second bridge there is the management network the agents reach the database
by; a third (``OUTSIDE_BRIDGE``) is the physical network ``physnet`` every
host's provider uplink is on (VLAN and flat networks, external networks for
floating IPs and SNAT: the lab's namespace can stand for the router beyond),
wired to each NIC's second physical port, whose uplink representor is the
network's uplink.
The database is an embedded SQLite file every host opens, or etcd (one
member or a cluster of three) running in the lab's namespace on the
management network, as a deployment that outgrew one machine has it.

Nothing touches the machine's own network: the lab's namespace holds the
bridges and etcd. Code in the root namespace reaches etcd through
:func:`hwflow.util.netns.call_in` (or ``ip netns exec``); :meth:`SimLab.nb`
does that for it.

Everything started is recorded in ``<workdir>/lab.json`` (and each host's
``host.json``), so a lab left running (``hwflow lab up``) is stopped by
another process (``hwflow lab down``, :func:`teardown_lab`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import requests

from hwflow.backends.ovs.backend import TUNNEL_PORT_NAMES
from hwflow.backends.ovs.daemons import OvsDaemons
from hwflow.backends.ovs.openflow import OpenFlowConnection
from hwflow.backends.ovs.ovsdb import OvsdbClient
from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.transport import SimSocketTransport, TcClient
from hwflow.db.api import NbApi
from hwflow.db.etcd_server import ETCD_BINARY
from hwflow.model.errors import NotFound
from hwflow.model.objects import Chassis, Port
from hwflow.sim.host import (
    BRIDGE,
    PLUGGED,
    HostError,
    SimHost,
    Underlay,
    give_vf,
    in_ns,
    run,
    stop_process,
    take_vf_back,
    teardown_from_state,
)
from hwflow.sim.host import STATE_FILE as HOST_STATE_FILE
from hwflow.util.netns import call_in

STATE_FILE = "lab.json"
UNDERLAY_NET = "172.31.0"  # host i's tunnel address: .i
PHYSNET = "physnet1"  # the physical network every host's provider uplink is on
OUTSIDE_BRIDGE = "ex"  # that network, in the lab's namespace
EXTERNAL_NET = "198.51.100"  # host i's external_ip (its SNAT address, on a flat external network of PHYSNET): .100+i
MGMT_NET = "10.254.0"  # host i's management address: .i; etcd members: .251, .252, .253
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
START_TIMEOUT = 60.0
MAX_HOSTS = 200

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class LabHost:
    """One host of the lab as recorded: enough to find everything it runs."""

    name: str
    workdir: str
    profile: str
    tunnel_ip: str
    mgmt_ip: str


class SimLab:
    """``hosts`` simulated hosts; ``profiles`` are given to them in turn; ``database`` is "sqlite" or "etcd"."""

    def __init__(self, name: str, workdir: Path, hosts: int = 3, profiles: Sequence[str] = ("mlx5-connectx6dx",),
                 database: str = "etcd", etcd_members: int = 1, num_vfs: int = 4, agent_debug: bool = False,
                 physnet: str = PHYSNET) -> None:
        if not 1 <= len(name) <= 5 or not name.isalnum():
            raise HostError(f"lab name {name!r}: 1 to 5 letters or digits (host names are NAME<n>, at most 8)")
        if not 1 <= hosts <= MAX_HOSTS:
            raise HostError(f"{hosts} hosts: a lab has 1 to {MAX_HOSTS}")
        if database not in ("sqlite", "etcd"):
            raise HostError(f"database {database!r}: sqlite or etcd")
        if etcd_members not in (1, 3):
            raise HostError(f"{etcd_members} etcd members: 1 or 3")
        if not profiles:
            raise HostError("give at least one NIC profile")
        self.name = name
        self.workdir = Path(workdir).resolve()
        self.database = database
        self.etcd_members = etcd_members
        self.underlay = Underlay(name)
        self.members = [f"{MGMT_NET}.{251 + i}" for i in range(etcd_members)] if database == "etcd" else []
        self.url = ("etcd://" + ",".join(f"{ip}:{ETCD_CLIENT_PORT}" for ip in self.members) if self.members
                    else f"sqlite:///{self.workdir}/nb.sqlite")
        self.physnet = physnet
        self.num_vfs = num_vfs
        self.agent_debug = agent_debug
        self.hosts = [self._new_host(i, profiles[(i - 1) % len(profiles)]) for i in range(1, hosts + 1)]
        self._etcd: list[subprocess.Popen] = []

    # --- lifecycle -------------------------------------------------------------------------------

    def start(self, progress: Callable[[str], None] = lambda _: None) -> SimLab:
        """Start the underlay, the database and every host (its agent last); stop all of it on a failure."""
        if (self.workdir / STATE_FILE).exists():
            raise HostError(f"a lab is running from {self.workdir}: hwflow lab down --workdir {self.workdir}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            progress(f"underlay and management network (namespace {self.underlay.ns})")
            self.underlay.start()
            self._save()
            for bridge in ("mg", OUTSIDE_BRIDGE):
                in_ns(self.underlay.ns, "ip", "link", "add", bridge, "type", "bridge")
                in_ns(self.underlay.ns, "ip", "link", "set", bridge, "up")
            # frames the lab's namespace sends (as the upstream router) carry whole checksums, as a router's do
            in_ns(self.underlay.ns, "ethtool", "-K", OUTSIDE_BRIDGE, "tx", "off", check=False)
            if self.members:
                progress(f"etcd ({len(self.members)} member{'s' if len(self.members) > 1 else ''}) at {self.url}")
                self._start_etcd()
            else:
                for stale in self.workdir.glob("nb.sqlite*"):
                    stale.unlink()
            for i, host in enumerate(self.hosts, 1):
                progress(f"host {host.name} ({host.profile}): OVS, simulated NIC, agent")
                self._start_host(host, i)
            progress("waiting for every agent to register its chassis")
            self._wait_registered()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> SimLab:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop every host, the database and the underlay, each on its own so one failure does not leak the rest."""
        for host in self.hosts:
            host.stop()
        for proc in self._etcd:
            stop_process(proc, 15)
        self._etcd = []
        self.underlay.stop()
        (self.workdir / STATE_FILE).unlink(missing_ok=True)

    def add_host(self, profile: str | None = None) -> SimHost:
        """One more host, started and registered: the lab grows while it runs (a host joins the cloud)."""
        i = len(self.hosts) + 1
        host = self._new_host(i, profile or self.hosts[0].profile)
        self.hosts.append(host)
        self._start_host(host, i)
        self._wait_registered()
        return host

    def _new_host(self, i: int, profile: str) -> SimHost:
        """Host i: its NIC on the underlay (tunnel address .i) and, by its second port, on the physical network."""
        return SimHost(f"{self.name}{i}", self.workdir / f"{self.name}{i}", self.url, num_vfs=self.num_vfs,
                       profile=profile, agent_debug=self.agent_debug, tunnel_ip=f"{UNDERLAY_NET}.{i}",
                       underlay=self.underlay, uplinks={self.physnet: self.underlay.ns}, nic_physnet=self.physnet,
                       external_ip=f"{EXTERNAL_NET}.{100 + i}")

    def _start_host(self, host: SimHost, index: int) -> None:
        """Start a host without its agent, wire its management link and provider uplink, then its agent."""
        host.start(agent=False)
        self._save()
        self._wire_mgmt(host, index)
        peer = host.uplink_peer(self.physnet)
        in_ns(self.underlay.ns, "ip", "link", "set", peer, "master", OUTSIDE_BRIDGE)
        in_ns(self.underlay.ns, "ethtool", "-K", peer, "tx", "off", check=False)
        host.start_agent()
        self._save()

    def _wait_registered(self) -> None:
        """Until every host's chassis is in the database: only then do other hosts tunnel to it."""
        names = {h.name for h in self.hosts}
        deadline = time.monotonic() + START_TIMEOUT
        while self.nb(lambda nb: {c.id for c in nb.list(Chassis)} & names) != names:
            down = [h.name for h in self.hosts if h.agent_pid is None]
            if down:
                raise HostError(f"the agent of {down[0]} exited; see {self.workdir}/{down[0]}/agent.log")
            if time.monotonic() > deadline:
                raise HostError(f"not every agent registered in {START_TIMEOUT:.0f}s; see {self.workdir}/*/agent.log")
            time.sleep(0.2)

    def _wire_mgmt(self, host: SimHost, index: int) -> None:
        """The host's management link: a veth from its namespace to the lab's management bridge."""
        device = f"{host.name}m"
        self.underlay.attach(host.ns, device, bridge="mg")
        in_ns(host.ns, "ip", "addr", "add", f"{MGMT_NET}.{index}/24", "dev", device)

    def _start_etcd(self) -> None:
        if not os.path.exists(ETCD_BINARY):
            raise HostError(f"{ETCD_BINARY} not found: apt-get install etcd-server (or use --database sqlite)")
        for ip in self.members:
            in_ns(self.underlay.ns, "ip", "addr", "add", f"{ip}/24", "dev", "mg")
        cluster = ",".join(f"e{i}=http://{ip}:{ETCD_PEER_PORT}" for i, ip in enumerate(self.members))
        for i, ip in enumerate(self.members):
            data = self.workdir / f"etcd{i}"
            shutil.rmtree(data, ignore_errors=True)
            log = open(self.workdir / f"etcd{i}.log", "ab")  # noqa: SIM115 - handed to the child
            self._etcd.append(subprocess.Popen(
                ["ip", "netns", "exec", self.underlay.ns, ETCD_BINARY, "--name", f"e{i}", "--data-dir", str(data),
                 "--listen-client-urls", f"http://{ip}:{ETCD_CLIENT_PORT}",
                 "--advertise-client-urls", f"http://{ip}:{ETCD_CLIENT_PORT}",
                 "--listen-peer-urls", f"http://{ip}:{ETCD_PEER_PORT}",
                 "--initial-advertise-peer-urls", f"http://{ip}:{ETCD_PEER_PORT}",
                 "--initial-cluster", cluster, "--initial-cluster-state", "new",
                 "--initial-cluster-token", f"hwflow-lab-{self.name}",
                 "--heartbeat-interval", "100", "--election-timeout", "2000"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
                env={**os.environ, "ETCD_UNSUPPORTED_ARCH": ""}))
            log.close()
            self._save()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._etcd_healthy():
            dead = [p for p in self._etcd if p.poll() is not None]
            if dead:
                raise HostError(f"etcd exited ({dead[0].returncode}); see {self.workdir}/etcd*.log")
            if time.monotonic() > deadline:
                raise HostError(f"etcd did not answer in {START_TIMEOUT:.0f}s; see {self.workdir}/etcd*.log")
            time.sleep(0.2)

    def stop_etcd(self, member: int) -> None:
        """Stop one etcd member (``members[member]``), its data kept: the database, or that member, goes away."""
        stop_process(self._etcd[member], 15)

    def start_etcd(self, member: int) -> None:
        """Start a member ``stop_etcd`` stopped, as it ran before, and wait until every member is healthy."""
        old = self._etcd[member]
        if old.poll() is None:
            return
        log = open(self.workdir / f"etcd{member}.log", "ab")  # noqa: SIM115 - handed to the child
        self._etcd[member] = subprocess.Popen(old.args, stdout=log, stderr=subprocess.STDOUT,
                                              stdin=subprocess.DEVNULL, start_new_session=True,
                                              env={**os.environ, "ETCD_UNSUPPORTED_ARCH": ""})
        log.close()
        self._save()
        deadline = time.monotonic() + START_TIMEOUT
        while not self._etcd_healthy():
            if self._etcd[member].poll() is not None:
                raise HostError(f"etcd member {member} exited ({self._etcd[member].returncode}); see "
                                f"{self.workdir}/etcd{member}.log")
            if time.monotonic() > deadline:
                raise HostError(f"etcd did not answer in {START_TIMEOUT:.0f}s; see {self.workdir}/etcd*.log")
            time.sleep(0.2)

    def _etcd_healthy(self) -> bool:
        def ask() -> bool:
            try:
                return all(requests.get(f"http://{ip}:{ETCD_CLIENT_PORT}/health", timeout=2).json().get("health")
                           == "true" for ip in self.members)
            except (requests.RequestException, ValueError):
                return False
        return call_in(self.underlay.ns, ask)

    def _save(self) -> None:
        state = {"name": self.name, "underlay_ns": self.underlay.ns, "database": self.url,
                 "etcd_pids": [p.pid for p in self._etcd],
                 "hosts": [dataclasses.asdict(LabHost(h.name, str(h.workdir), h.profile, h.tunnel_ip,
                                                      f"{MGMT_NET}.{i}"))
                           for i, h in enumerate(self.hosts, 1)]}
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2))

    # --- using it ------------------------------------------------------------------------------------

    def nb(self, func: Callable[[NbApi], T]) -> T:
        """``func(api)`` with an NB API on the lab's database, run where the database can be reached."""
        return on_database(self.url, self.underlay.ns, func)


def on_database(url: str, underlay_ns: str, func: Callable[[NbApi], T]) -> T:
    """``func(api)`` with an NB API on a lab's database: in its namespace for etcd, which listens there only."""
    def body() -> T:
        with NbApi.from_url(url) as api:
            return func(api)
    return body() if url.startswith("sqlite:") else call_in(underlay_ns, body)


# --- VMs plugged into a running lab (hwflow lab plug / unplug) ----------------------------------------------


def plug_vm(workdir: Path, host_name: str, port_id: str, vm: str) -> dict:
    """A new VM namespace ``vm`` on a free VF of a running lab's host, with the MAC of the port in the lab's
    database, its representor plugged into the host's bridge for that port (as Nova and os-vif do); what was
    plugged, as ``hwflow lab plug`` reports it. The VM has no address until it asks DHCP (or is given one)."""
    state = _running(workdir)
    hosts = {host["name"]: host for host in state["hosts"]}
    if host_name not in hosts:
        raise HostError(f"no host {host_name!r} in the lab in {workdir}; its hosts: {', '.join(sorted(hosts))}")
    if vm in namespaces():
        raise HostError(f"network namespace {vm!r} exists already: name another VM namespace")
    try:
        port = on_database(state["database"], state["underlay_ns"], lambda api: api.get(Port, port_id))
    except NotFound:
        raise HostError(f"no port {port_id} in the lab's database {state['database']}: create it first (hwflow nb "
                        "port create, or Neutron)") from None
    host_dir = Path(hosts[host_name]["workdir"])
    saved = json.loads((host_dir / HOST_STATE_FILE).read_text())
    used = {vf["vf_netdev"] for vf in saved.get(PLUGGED, {}).values()}
    nic = json.loads((host_dir / "simnic.sock.json").read_text())
    free = [vf for vf in nic.get("ports", ()) if vf["vf_netdev"] not in used]
    if not free:
        raise HostError(f"host {host_name}'s simulated NIC has no free VF left: unplug a VM (hwflow lab unplug)")
    vf = free[0]
    saved["vms"].append(vm)
    saved.setdefault(PLUGGED, {})[vm] = {"port_id": port.id, "vf_netdev": vf["vf_netdev"],
                                         "representor": vf["representor"]}
    (host_dir / HOST_STATE_FILE).write_text(json.dumps(saved, indent=2))  # first: `lab down` deletes it all
    give_vf(saved["ns"], vf["vf_netdev"], vm, port.mac)
    ovsdb = _bridge(saved)
    ovsdb.add_port(vf["representor"], iface_id=port.id)
    ovsdb.wait_for_ofport(vf["representor"], timeout=15)
    return {"vm": vm, "host": host_name, "port_id": port.id, "mac": port.mac, "ips": list(port.ips),
            "vf": vf["vf_netdev"], "representor": vf["representor"]}


def unplug_vm(workdir: Path, vm: str) -> dict:
    """The VM's representor off its host's bridge, its VF back to the host, its namespace gone; what was
    unplugged, as ``hwflow lab unplug`` reports it."""
    state = _running(workdir)
    for host in state["hosts"]:
        host_dir = Path(host["workdir"])
        saved = json.loads((host_dir / HOST_STATE_FILE).read_text())
        plugged = saved.get(PLUGGED, {}).get(vm)
        if plugged is None:
            continue
        _bridge(saved).del_port(plugged["representor"])
        take_vf_back(saved["ns"], plugged["vf_netdev"], vm)
        del saved[PLUGGED][vm]
        saved["vms"] = [name for name in saved["vms"] if name != vm]
        (host_dir / HOST_STATE_FILE).write_text(json.dumps(saved, indent=2))
        return {"vm": vm, "host": host["name"], **plugged}
    raise HostError(f"no VM {vm!r} plugged in the lab in {workdir} (hwflow lab status lists them)")


def _bridge(host_state: dict) -> OvsdbClient:
    """The integration bridge of a running host, from its host.json."""
    return OvsdbClient(OvsDaemons(Path(host_state["ovs_rundir"])).db_sock, BRIDGE)


def _running(workdir: Path) -> dict:
    state = load_state(workdir)
    if state is None:
        raise HostError(f"no lab in {workdir} (no {STATE_FILE} there): hwflow lab up --workdir {workdir}")
    return state


def namespaces() -> set[str]:
    """The network namespaces on this machine."""
    return {line.split()[0] for line in run("ip", "netns", "list").stdout.splitlines() if line.strip()}


def load_state(workdir: Path) -> dict | None:
    path = Path(workdir) / STATE_FILE
    return json.loads(path.read_text()) if path.exists() else None


def teardown_lab(workdir: Path) -> bool:
    """Stop a lab left running (``hwflow lab up``) from its state file; False when there is none."""
    state = load_state(workdir)
    if state is None:
        return False
    for host in state.get("hosts", ()):
        teardown_from_state(Path(host["workdir"]))
    for pid in state.get("etcd_pids", ()):
        try:
            if b"etcd" in Path(f"/proc/{pid}/cmdline").read_bytes():  # ours, not a recycled pid
                os.kill(pid, signal.SIGTERM)
        except (OSError, ProcessLookupError):
            pass
    run("ip", "netns", "delete", state["underlay_ns"], check=False)
    (Path(workdir) / STATE_FILE).unlink(missing_ok=True)
    return True


# --- what each host's datapaths carried ---------------------------------------------------------------


def host_report(host: LabHost) -> dict:
    """One host's VMs and what its NIC and its OVS forwarded (rule and port counters, read now).

    ``nic_forwarded_packets``: packets the NIC's rules sent on (a redirect, to a VF or into a tunnel; None,
    as the other NIC counts, for a NIC whose rules have no counters);
    ``nic_encapsulated_packets``: those sent into a tunnel; ``nic_decapsulated_packets``: those its tunnel
    devices' rules took out of one and delivered; ``ovs_forwarded_packets``: packets OVS took in from the
    VMs' representors and its tunnel ports (what the NIC left to software); ``ovs_uplink_packets``: those it
    took in from the provider uplinks (the physical network's broadcasts among them).
    """
    workdir = Path(host.workdir)
    state = json.loads((workdir / "host.json").read_text()) if (workdir / "host.json").exists() else {}
    status = json.loads((workdir / "simnic.sock.json").read_text()) if (workdir / "simnic.sock.json").exists() \
        else {}
    rules = _nic_rules(str(workdir / "simnic.sock"), status)
    tunnels = {t["ifindex"] for t in status.get("tunnels", ())}
    ovs = OvsDaemons(Path(state.get("ovs_rundir", workdir / "ovs")), netns=state.get("ns"))
    def packets(pick: Callable[[fl.FlowerRule], bool]) -> int | None:
        """What the rules ``pick`` selects counted; None for a NIC that counts nothing (its profile: no counters)."""
        picked = [stats for rule, stats in rules if pick(rule)]
        return None if any(s is None for s in picked) else sum(s.packets for s in picked if s is not None)

    ovs_vms, ovs_uplinks = _ovs_rx(ovs, status)
    return {
        "name": host.name,
        "profile": host.profile,
        "tunnel_ip": host.tunnel_ip,
        "vms": state.get("vms", []),
        "nic_rules": len(rules),
        "nic_forwarded_packets": packets(_redirects),
        "nic_encapsulated_packets": packets(_encapsulates),
        "nic_decapsulated_packets": packets(lambda r: r.ifindex in tunnels and _redirects(r)),
        "ovs_forwarded_packets": ovs_vms,
        "ovs_uplink_packets": ovs_uplinks,
    }


def _nic_rules(socket: str, status: dict) -> list[tuple[fl.FlowerRule, fl.RuleStats | None]]:
    devices = [p["representor_ifindex"] for p in status.get("ports", ())]
    devices += [t["ifindex"] for t in status.get("tunnels", ())]
    devices += [u["representor_ifindex"] for u in status.get("uplinks", ())]
    try:
        client = TcClient(SimSocketTransport(socket))
    except OSError:
        return []
    try:
        return [entry for ifindex in devices for entry in client.dump(ifindex)]
    except OSError:
        return []
    finally:
        client.close()


def _redirects(rule: fl.FlowerRule) -> bool:
    return any(isinstance(a, fl.Mirred) for a in rule.actions)


def _encapsulates(rule: fl.FlowerRule) -> bool:
    return any(isinstance(a, fl.TunnelKey) and not a.unset for a in rule.actions)


def _ovs_rx(ovs: OvsDaemons, status: dict) -> tuple[int, int]:
    """Packets OVS received (on the VF representors and its tunnel ports, on the NIC's provider uplinks: port 0's
    uplink representor is the underlay's, on another bridge), from one reading of the bridge's port counters."""
    groups = ([p["representor"] for p in status.get("ports", ())] + list(TUNNEL_PORT_NAMES.values()),
              [u["representor"] for u in status.get("uplinks", ()) if u.get("port")])
    try:
        ovsdb = OvsdbClient(ovs.db_sock, BRIDGE)
        try:
            ofports = [{ovsdb.ofport(name) for name in names} - {None} for names in groups]
        finally:
            ovsdb.close()
        of = OpenFlowConnection(ovs.mgmt(BRIDGE))
        try:
            stats = of.port_stats()
        finally:
            of.close()
    except (OSError, RuntimeError):
        return 0, 0
    vms, uplinks = (sum(rx for ofport, (rx, _) in stats.items() if ofport in group) for group in ofports)
    return vms, uplinks
