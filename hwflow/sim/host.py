"""A simulated SmartNIC host: everything a real one has, in network namespaces.

One host namespace holds Open vSwitch (userspace datapath), the simulated
NIC's representors and its control socket, and the agent, each a real
process. VMs are namespaces of their own holding a VF. ``plug`` does what
Nova and os-vif do on a real host: hand the VF to the VM and put the
representor on the integration bridge with ``external_ids:iface-id``.

The demo, the functional tests and anyone exploring use this one harness.
Everything it starts is recorded in ``<workdir>/host.json`` so that
``teardown_from_state`` can clean up a host left running by ``--keep``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from hwflow.backends.ovs.daemons import OvsDaemons
from hwflow.backends.ovs.ovsdb import OvsdbClient
from hwflow.model.objects import Port

LOG = logging.getLogger(__name__)

BRIDGE = "br-int"
UNDERLAY_BRIDGE = "br-ul"  # holds a host's tunnel address and its NIC's uplink representor (see SimHost)
STATE_FILE = "host.json"
PLUGGED = "plugged"  # host.json: VM namespace -> its port_id, vf_netdev and representor
WIRE_MTU = 9000  # room for the tunnel headers around a VM's 1500-byte frames


class HostError(RuntimeError):
    """The simulated host could not be set up; the message says which step."""


def run(*argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise HostError(f"{' '.join(argv)} failed: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def in_ns(ns: str, *argv: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
    return run("ip", "netns", "exec", ns, *argv, check=check, timeout=timeout)


@dataclasses.dataclass
class Vm:
    name: str  # its network namespace
    port_id: str
    vf: int
    representor: str


class SimHost:
    """Start with ``start()`` (or ``with``), stop with ``stop()``; both are idempotent."""

    def __init__(self, name: str, workdir: Path, database: str, num_vfs: int = 4,
                 profile: str = "sim-basic", agent_debug: bool = False, tunnel_ip: str = "127.0.0.1",
                 uplinks: Mapping[str, str] | None = None, external_ip: str = "",
                 underlay: Underlay | None = None, underlay_prefixlen: int = 24,
                 nic_physnet: str | None = None, metrics_port: int = 0, nic_refuse_rate: float = 0.0,
                 nic_refuse_seed: int = 0, database_options: Mapping[str, str] | None = None) -> None:
        """``uplinks``: physical network -> a namespace (it must exist) that start() links to this host by a
        veth pair, whose host end becomes the physical network's uplink (``[agent] bridge_mappings``) and whose
        other end is ``uplink_peer(physnet)`` in that namespace.

        ``underlay``: the physical network the NIC's port is wired to. The host's tunnels run over it, as on a
        SmartNIC host: the simulated NIC's physical port is the host's end of the wire, its uplink representor
        sits on an OVS bridge (``UNDERLAY_BRIDGE``) whose internal port holds ``tunnel_ip`` (the userspace
        datapath routes and ARPs for what it encapsulates through its own bridges), and the NIC encapsulates
        and decapsulates what its rules say, handing the rest to that bridge.

        ``nic_physnet``: one of ``uplinks`` whose link is the NIC's second physical port (with ``underlay``):
        the veth's host end is that port's wire and the port's uplink representor is the physical network's
        uplink, so the NIC can push and pop its VLAN tags itself (a representor cannot sit on the underlay's
        bridge and the integration bridge at once: hence a port of its own, as on a dual-port NIC).

        ``metrics_port``: where the agent serves its Prometheus metrics (``[agent] metrics_port``), on 127.0.0.1
        in the host's namespace; 0: nowhere.

        ``nic_refuse_rate``, ``nic_refuse_seed``: fault injection in the simulated NIC (``hwflow-simnic
        --refuse-rate/--refuse-seed``): that share of its rule installs refused.

        ``database_options``: more of the agent's ``[database]`` options (an etcds:// database's certificate
        files, its etcd user and password).
        """
        if nic_physnet is not None and (underlay is None or nic_physnet not in (uplinks or {})):
            raise HostError(f"nic_physnet {nic_physnet!r} needs an underlay and an uplink for that network")
        if len(name) > 8:
            raise HostError(f"host name {name!r} is too long: at most 8 characters (it prefixes device names)")
        self.name = name
        self.workdir = Path(workdir).resolve()
        self.database = database
        self.num_vfs = num_vfs
        self.profile = profile
        self.agent_debug = agent_debug
        self.tunnel_ip = tunnel_ip
        self.external_ip = external_ip  # per-chassis SNAT address ([agent] external_ip)
        self.uplinks = dict(uplinks or {})
        self.underlay = underlay
        self.underlay_prefixlen = underlay_prefixlen
        self.nic_physnet = nic_physnet
        self.metrics_port = metrics_port
        self.nic_refuse_rate = nic_refuse_rate
        self.nic_refuse_seed = nic_refuse_seed
        self.database_options = dict(database_options or {})
        self.ns = f"hwf-{name}"
        self.nic = f"{name}n"
        self.nic_socket = str(self.workdir / "simnic.sock")
        self.ovs = OvsDaemons(self.workdir / "ovs", netns=self.ns)
        self.vms: dict[str, Vm] = {}
        self._procs: dict[str, subprocess.Popen] = {}
        self._nic_status: dict = {}
        self._ovsdb: OvsdbClient | None = None

    # --- paths the user may want -----------------------------------------------

    @property
    def agent_config(self) -> Path:
        return self.workdir / "agent.conf"

    @property
    def agent_log(self) -> Path:
        return self.workdir / "agent.log"

    @property
    def nic_ports(self) -> list[dict]:
        return list(self._nic_status.get("ports", []))

    @property
    def nic_status(self) -> dict:
        """The simulated NIC's status file as it started (ports, uplink, tunnel devices)."""
        return dict(self._nic_status)

    @property
    def wire(self) -> str:
        """The host's end of its underlay link: the simulated NIC's physical port."""
        return f"{self.name}w"

    @property
    def ovsdb(self) -> OvsdbClient:
        if self._ovsdb is None:
            self._ovsdb = OvsdbClient(self.ovs.db_sock, BRIDGE)
        return self._ovsdb

    # --- lifecycle -------------------------------------------------------------------

    def start(self, agent: bool = True) -> SimHost:
        """Start the host; without ``agent`` everything but hwflow-agent (``start_agent`` starts it later)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            run("ip", "netns", "add", self.ns)
            in_ns(self.ns, "ip", "link", "set", "lo", "up")
            self._save()
            if self.underlay is not None:
                self.underlay.attach(self.ns, self.wire)
            # a new host: an OVS database left in a reused workdir would keep the old ports (and plugging a
            # representor by the same name again would keep its old iface-id)
            (self.ovs.rundir / "conf.db").unlink(missing_ok=True)
            self.ovs.start()
            self.ovsdb.ensure_bridge()
            self._link_uplinks()
            self._start_nic()
            if self.underlay is not None:
                self._bridge_uplink()
            self._write_agent_config()
            if agent:
                self.start_agent()
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> SimHost:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _spawn(self, role: str, argv: list[str]) -> subprocess.Popen:
        log = open(self.workdir / f"{role}.out", "ab")  # noqa: SIM115 - handed to the child
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns, *argv], stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        self._procs[role] = proc
        self._save()
        return proc

    def _start_nic(self) -> None:
        status = Path(self.nic_socket + ".json")
        status.unlink(missing_ok=True)
        wire = ["--wire", self.wire] if self.underlay is not None else []
        if self.nic_physnet is not None:
            wire += ["--wire", self._veths()[self.nic_physnet]]
        if self.nic_refuse_rate:
            wire += ["--refuse-rate", str(self.nic_refuse_rate), "--refuse-seed", str(self.nic_refuse_seed)]
        proc = self._spawn("simnic", [sys.executable, "-m", "hwflow.sim.server", "--name", self.nic,
                                      "--num-vfs", str(self.num_vfs), "--socket", self.nic_socket,
                                      "--profile", self.profile, *wire])
        deadline = time.monotonic() + 20
        while not status.exists():
            if proc.poll() is not None:
                raise HostError(f"the simulated NIC exited ({proc.returncode}); see {self.workdir}/simnic.out")
            if time.monotonic() > deadline:
                raise HostError(f"the simulated NIC did not come up in 20s; see {self.workdir}/simnic.out")
            time.sleep(0.05)
        self._nic_status = json.loads(status.read_text())

    def _bridge_uplink(self) -> None:
        """The NIC's uplink representor on the underlay bridge, whose internal port holds the tunnel address."""
        uplink = next((u for u in self._nic_status.get("uplinks", ()) if u.get("port") == 0), None)
        if not isinstance(uplink, dict):
            raise HostError(f"the simulated NIC {self.nic} reports no uplink; see {self.workdir}/simnic.out")
        run("ovs-vsctl", f"--db={self.ovs.db_sock}", "--may-exist", "add-br", UNDERLAY_BRIDGE, "--", "set",
            "bridge", UNDERLAY_BRIDGE, "datapath_type=netdev", "--", "--may-exist", "add-port", UNDERLAY_BRIDGE,
            uplink["representor"])
        self.ovsdb.wait_for_ofport(UNDERLAY_BRIDGE, timeout=15)
        in_ns(self.ns, "ip", "link", "set", UNDERLAY_BRIDGE, "mtu", str(WIRE_MTU))
        in_ns(self.ns, "ip", "addr", "add", f"{self.tunnel_ip}/{self.underlay_prefixlen}", "dev", UNDERLAY_BRIDGE)
        in_ns(self.ns, "ip", "link", "set", UNDERLAY_BRIDGE, "up")

    def _write_agent_config(self) -> None:
        self.agent_config.write_text(
            "[database]\n"
            f"url = {self.database}\n"
            + "".join(f"{name} = {value}\n" for name, value in self.database_options.items())
            + "\n[agent]\n"
            f"chassis_name = {self.name}\n"
            f"ovsdb_connection = {self.ovs.db_sock}\n"
            f"ovs_rundir = {self.ovs.rundir}\n"
            f"integration_bridge = {BRIDGE}\n"
            f"tunnel_ip = {self.tunnel_ip}\n"
            f"external_ip = {self.external_ip}\n"
            f"bridge_mappings = {','.join(f'{net}:{dev}' for net, dev in self._uplink_devices().items())}\n"
            f"state_dir = {self.workdir}\n"
            f"metrics_port = {self.metrics_port}\n"
            "report_interval = 5\n\n"
            "[nic]\n"
            f"sim_sockets = {self.nic_socket}\n"
        )

    def _veths(self) -> dict[str, str]:
        """Physical network -> the host's end of the veth its uplink is."""
        return {physnet: f"{self.name}u{i}" for i, physnet in enumerate(sorted(self.uplinks))}

    def _uplink_devices(self) -> dict[str, str]:
        """Physical network -> its uplink interface (``bridge_mappings``): the veth, or for ``nic_physnet`` the
        uplink representor of the NIC port that veth is the wire of."""
        devices = self._veths()
        if self.nic_physnet is not None:
            devices[self.nic_physnet] = next(u["representor"] for u in self._nic_status.get("uplinks", ())
                                             if u.get("port") == 1)
        return devices

    def uplink_peer(self, physnet: str) -> str:
        """The device at the far end of a physical network's uplink, in the namespace given for it."""
        return self._veths()[physnet] + "x"

    def _link_uplinks(self) -> None:
        for physnet, device in self._veths().items():
            peer_ns = self.uplinks[physnet]
            run("ip", "link", "add", device, "netns", self.ns, "type", "veth", "peer", "name",
                self.uplink_peer(physnet), "netns", peer_ns)
            if physnet == self.nic_physnet:  # the NIC's wire: it carries only what the NIC sends
                in_ns(self.ns, "sysctl", "-qw", f"net.ipv6.conf.{device}.disable_ipv6=1")
            in_ns(self.ns, "ip", "link", "set", device, "up")
            in_ns(peer_ns, "ip", "link", "set", self.uplink_peer(physnet), "up")

    def restart_nic(self, down: float = 0.0) -> float:
        """The simulated NIC dies (SIGKILL: its rules, VFs and representors go with it) and starts again with
        the same name and socket, ``down`` seconds later; each VM gets its VF back as it had it (address,
        MAC, routes, permanent neighbours), and the representors come back to OVS under their names.
        Returns the seconds the VFs were gone (kill to the last VM configured again)."""
        saved = {vm: self._vf_setup(vm) for vm in self.vms}
        ofports = {vm: self.ovsdb.ofport(info.representor) for vm, info in self.vms.items()}
        proc = self._procs.pop("simnic", None)
        killed = time.monotonic()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait(10)
        time.sleep(down)
        self._start_nic()
        ports = {p["vf"]: p for p in self.nic_ports}
        for vm, info in self.vms.items():
            vf = ports[info.vf]
            in_ns(self.ns, "ip", "link", "set", vf["vf_netdev"], "netns", vm)
            in_ns(vm, "ip", "link", "set", vf["vf_netdev"], "name", "eth0")
            for argv in saved[vm]:
                in_ns(vm, *argv, check=False)
        # The representors are new devices under the old names. A kernel datapath takes them back by itself;
        # the userspace one keeps reading the old, gone, devices: take each off the bridge and put it back as
        # it was (same iface-id, same OpenFlow port number), as a real host's OVS does.
        for info in self.vms.values():
            self.ovsdb.del_port(info.representor)
        for vm, info in self.vms.items():
            run("ovs-vsctl", f"--db={self.ovs.db_sock}", "add-port", BRIDGE, info.representor, "--", "set",
                "interface", info.representor, f"external_ids:iface-id={info.port_id}",
                *([f"ofport_request={ofports[vm]}"] if ofports[vm] else []))
        for info in self.vms.values():
            self.ovsdb.wait_for_ofport(info.representor, timeout=15)
        return time.monotonic() - killed

    def _vf_setup(self, vm: str) -> list[tuple[str, ...]]:
        """The commands that give a VM's eth0 back what it has now (a new VF after a NIC restart)."""
        link = json.loads(in_ns(vm, "ip", "-j", "link", "show", "dev", "eth0").stdout)[0]
        out: list[tuple[str, ...]] = [("ip", "link", "set", "eth0", "address", link["address"]),
                                      ("ip", "link", "set", "eth0", "mtu", str(link["mtu"])),
                                      ("ip", "link", "set", "eth0", "up")]
        for entry in json.loads(in_ns(vm, "ip", "-j", "addr", "show", "dev", "eth0").stdout or "[]"):
            for info in entry.get("addr_info", []):
                if info.get("scope") == "global":
                    out.append(("ip", "addr", "add", f"{info['local']}/{info['prefixlen']}", "dev", "eth0",
                                *(("nodad",) if info.get("family") == "inet6" else ())))
        for route in json.loads(in_ns(vm, "ip", "-j", "route", "show", "dev", "eth0").stdout or "[]"):
            if "gateway" in route:
                out.append(("ip", "route", "add", route["dst"], "via", route["gateway"], "dev", "eth0"))
        for neigh in json.loads(in_ns(vm, "ip", "-j", "neigh", "show", "dev", "eth0", "nud", "permanent").stdout
                                or "[]"):
            out.append(("ip", "neigh", "replace", neigh["dst"], "lladdr", neigh["lladdr"], "dev", "eth0", "nud",
                        "permanent"))
        return out

    def start_agent(self) -> None:
        argv = [sys.executable, "-m", "hwflow.agent.daemon", "--config-file", str(self.agent_config),
                "--log-file", str(self.agent_log)]
        self._spawn("agent", argv + (["--debug"] if self.agent_debug else []))

    def stop_agent(self, timeout: float = 15) -> None:
        stop_process(self._procs.pop("agent", None), timeout)
        self._save()

    @property
    def agent_pid(self) -> int | None:
        proc = self._procs.get("agent")
        return proc.pid if proc is not None and proc.poll() is None else None

    def stop(self) -> None:
        """Tear everything down, each step on its own so one failure does not leak the rest."""
        for role in ("agent", "simnic"):
            stop_process(self._procs.pop(role, None), 15)
        if self._ovsdb is not None:
            self._ovsdb.close()
            self._ovsdb = None
        self.ovs.stop()
        for vm in list(self.vms.values()):
            run("ip", "netns", "delete", vm.name, check=False)
        self.vms.clear()
        run("ip", "netns", "delete", self.ns, check=False)
        (self.workdir / STATE_FILE).unlink(missing_ok=True)

    def _save(self) -> None:
        state = {"ns": self.ns, "vms": [vm.name for vm in self.vms.values()], "ovs_rundir": str(self.ovs.rundir),
                 "pids": {role: p.pid for role, p in self._procs.items()},
                 PLUGGED: {vm.name: {"port_id": vm.port_id, "vf_netdev": f"{self.nic}v{vm.vf}",
                                     "representor": vm.representor} for vm in self.vms.values()}}
        (self.workdir / STATE_FILE).write_text(json.dumps(state, indent=2))

    # --- VMs -----------------------------------------------------------------------------

    def plug(self, port: Port, vm: str, prefixlen: int = 24, gateway: str | None = None, ipv6: bool = False,
             ipv6_prefixlen: int = 64, ipv6_dad: bool = False) -> Vm:
        """Give the next free VF to a new VM namespace and put its representor on the bridge.

        VMs run without IPv6 (no router solicitations, MLD or DAD in the way of tests that count packets)
        unless ``ipv6``: then the VM also has its port's IPv6 addresses (``ipv6_prefixlen``), added
        ``nodad`` (usable at once) unless ``ipv6_dad`` (the kernel probes for duplicates first; see
        :meth:`ipv6_address_flags`), and its link-local address.
        """
        used = {v.vf for v in self.vms.values()}
        free = [p for p in self.nic_ports if p["vf"] not in used]
        if not free:
            raise HostError(f"simulated NIC {self.nic} has no free VF left ({self.num_vfs} in all)")
        vf = free[0]
        self.vms[vm] = Vm(vm, port.id, vf["vf"], vf["representor"])
        self._save()
        give_vf(self.ns, vf["vf_netdev"], vm, port.mac, ipv6)
        for address in port.ips:
            if ":" not in address:
                in_ns(vm, "ip", "addr", "add", f"{address}/{prefixlen}", "dev", "eth0")
            elif ipv6:
                in_ns(vm, "ip", "-6", "addr", "add", f"{address}/{ipv6_prefixlen}", "dev", "eth0",
                      *(() if ipv6_dad else ("nodad",)))
        if gateway:
            in_ns(vm, "ip", "route", "add", "default", "via", gateway)
        self.ovsdb.add_port(vf["representor"], iface_id=port.id)
        self.ovsdb.wait_for_ofport(vf["representor"], timeout=15)
        return self.vms[vm]

    def ipv6_address_flags(self, vm: str, address: str) -> set[str] | None:
        """The kernel's flags on a VM's IPv6 address (``tentative`` while DAD runs, ``dadfailed`` when another
        node claimed it); None when the VM does not hold it."""
        for entry in json.loads(in_ns(vm, "ip", "-j", "-6", "addr", "show", "dev", "eth0").stdout or "[]"):
            for info in entry.get("addr_info", []):
                if info.get("local") == address:
                    return {flag for flag in ("tentative", "dadfailed", "optimistic") if info.get(flag)}
        return None

    def unplug(self, vm: str) -> None:
        """Take the representor off the bridge and give the VF back to the host."""
        info = self.vms.pop(vm)
        self.ovsdb.del_port(info.representor)
        take_vf_back(self.ns, f"{self.nic}v{info.vf}", vm)
        self._save()

    def ping(self, vm: str, address: str, count: int = 5, interval: float = 0.2) -> float:
        """Loss in percent of a real ping from ``vm`` to ``address``."""
        proc = in_ns(vm, "ping", "-c", str(count), "-i", str(interval), "-W", "1", address, check=False,
                     timeout=count * (interval + 1) + 10)
        for line in proc.stdout.splitlines():
            if "packet loss" in line:
                return float(line.split("%")[0].split()[-1])
        raise HostError(f"ping from {vm} to {address} gave no summary: {proc.stdout} {proc.stderr}")


def stop_process(proc: subprocess.Popen | None, timeout: float = 10) -> None:
    """SIGTERM a child we started, then SIGKILL if it does not go in ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        LOG.warning("pid %d did not stop in %.0fs; killing it", proc.pid, timeout)
        proc.kill()
        proc.wait(5)


def give_vf(host_ns: str, vf_netdev: str, vm: str, mac: str, ipv6: bool = False) -> None:
    """A new VM namespace ``vm`` holding the host's VF ``vf_netdev`` as its eth0, with ``mac``, up, IPv6 off
    unless ``ipv6``: what Nova does with a VF before os-vif plugs its representor into the bridge."""
    run("ip", "netns", "add", vm)
    in_ns(host_ns, "ip", "link", "set", vf_netdev, "netns", vm)
    disabled = "0" if ipv6 else "1"
    for argv in (
        ("sysctl", "-qw", f"net.ipv6.conf.all.disable_ipv6={disabled}"),
        ("sysctl", "-qw", f"net.ipv6.conf.default.disable_ipv6={disabled}"),
        ("ip", "link", "set", vf_netdev, "name", "eth0"),
        ("ip", "link", "set", "eth0", "address", mac),
        ("ip", "link", "set", "lo", "up"),
        ("ip", "link", "set", "eth0", "up"),
    ):
        in_ns(vm, *argv)


def take_vf_back(host_ns: str, vf_netdev: str, vm: str) -> None:
    """The VM's eth0 back to the host as ``vf_netdev`` and the VM's namespace gone (deleting the namespace
    with the VF in it would destroy the simulated VF)."""
    in_ns(vm, "ip", "link", "set", "eth0", "down", check=False)
    in_ns(vm, "ip", "link", "set", "eth0", "name", vf_netdev, check=False)
    in_ns(vm, "ip", "link", "set", vf_netdev, "netns", host_ns, check=False)
    run("ip", "netns", "delete", vm, check=False)


def teardown_from_state(workdir: Path) -> bool:
    """Clean up a host left running (``hwflow demo --keep``) from its state file."""
    path = Path(workdir) / STATE_FILE
    if not path.exists():
        return False
    state = json.loads(path.read_text())
    for pid in state.get("pids", {}).values():
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    time.sleep(1)
    OvsDaemons(Path(state["ovs_rundir"]), netns=state["ns"]).adopt().stop()
    for ns in state.get("vms", []) + [state["ns"]]:
        run("ip", "netns", "delete", ns, check=False)
    path.unlink(missing_ok=True)
    return True


class Underlay:
    """The physical network simulated hosts' NICs are wired to: a namespace holding a Linux bridge.

    Each host's NIC gets a veth pair: one end (``SimHost.wire``) in the host's namespace, which the simulated
    NIC opens as its physical port, the other on the bridge. ``start``/``stop`` (or ``with``) are idempotent.
    """

    def __init__(self, name: str) -> None:
        if len(name) > 8:
            raise HostError(f"underlay name {name!r} is too long: at most 8 characters")
        self.ns = f"hwf-ul-{name}"
        self.bridge = "ul"
        self._ports = 0

    def start(self) -> Underlay:
        run("ip", "netns", "add", self.ns)
        try:
            in_ns(self.ns, "ip", "link", "set", "lo", "up")  # a service here (the lab's etcd) talks to itself
            for scope in ("all", "default"):  # a wire carries only what the hosts send (no router solicitations)
                in_ns(self.ns, "sysctl", "-qw", f"net.ipv6.conf.{scope}.disable_ipv6=1")
            in_ns(self.ns, "ip", "link", "add", self.bridge, "mtu", str(WIRE_MTU), "type", "bridge")
            in_ns(self.ns, "ip", "link", "set", self.bridge, "up")
        except BaseException:
            self.stop()
            raise
        return self

    def __enter__(self) -> Underlay:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def attach(self, ns: str, device: str, bridge: str | None = None) -> None:
        """Wire ``device`` (made here, in namespace ``ns``) to the underlay's bridge, or to another ``bridge`` of
        its namespace (a lab's management network)."""
        self._ports += 1
        far = f"ul{self._ports}"
        run("ip", "link", "add", device, "netns", ns, "mtu", str(WIRE_MTU), "type", "veth", "peer", "name", far,
            "netns", self.ns, "mtu", str(WIRE_MTU))
        in_ns(self.ns, "ip", "link", "set", far, "master", bridge or self.bridge)
        in_ns(self.ns, "ip", "link", "set", far, "up")
        in_ns(ns, "sysctl", "-qw", f"net.ipv6.conf.{device}.disable_ipv6=1")
        in_ns(ns, "ip", "link", "set", device, "up")

    def stop(self) -> None:
        run("ip", "netns", "delete", self.ns, check=False)
