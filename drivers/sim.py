"""The simulated NIC's driver: claims the representors a running hwflow-simnic owns.

Each simulated NIC writes ``<socket>.json`` describing itself (profile,
switch id, pid, ports; with a physical port, its uplink representor and its
tunnel devices). The netdevs it lists are its own: hwflow programs them
through the sim's control socket, with the sim's capability profile, exactly
as it would a real switchdev NIC over netlink. A tunnel device is reported
offloadable when the profile can encapsulate or decapsulate its type.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from oslo_config import cfg

from hwflow.offload.capabilities import NO_OFFLOAD, Capabilities
from hwflow.offload.nic import TUNNEL, UPLINK, VF_REPRESENTOR, DeviceReport, NetDevice, NicDriver, not_offloadable

ROLE = VF_REPRESENTOR


@dataclasses.dataclass(frozen=True)
class SimNic:
    """One status file, already judged: ``problem`` says why its ports cannot be offloaded."""

    name: str
    socket: str
    switch_id: str | None
    capabilities: Capabilities  # NO_OFFLOAD when there is a problem
    profile: str
    representors: frozenset[str]
    problem: str | None
    uplinks: frozenset[str] = frozenset()  # its uplink representors (one a physical port: --wire)
    tunnels: Mapping[str, tuple[str, int]] = dataclasses.field(default_factory=dict)  # device -> (type, UDP port)


def status_path(socket: str) -> Path:
    return Path(f"{socket}.json")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _judge(socket: str, status: Mapping[str, Any]) -> SimNic:
    name = str(status.get("name") or socket)
    representors = frozenset(
        str(p["representor"]) for p in status.get("ports", ()) if isinstance(p, dict) and p.get("representor")
    )
    pid = status.get("pid")
    problem = None
    capabilities = NO_OFFLOAD
    if not isinstance(pid, int) or not pid_alive(pid):
        problem = (
            f"simulated NIC {name} (pid {pid}) is not running: stale status file {status_path(socket)}; "
            "start hwflow-simnic again or remove the file"
        )
    else:
        try:
            capabilities = Capabilities.from_dict(status["profile"]["capabilities"])
        except (KeyError, TypeError, ValueError) as exc:
            problem = f"simulated NIC {name}: bad profile in {status_path(socket)}: {exc}"
    profile = status.get("profile")
    profile_name = str(profile.get("name")) if isinstance(profile, dict) else "?"
    uplinks = frozenset(str(u["representor"]) for u in status.get("uplinks", ()) if isinstance(u, dict)
                        and u.get("representor"))
    tunnels = {str(t["netdev"]): (str(t["type"]), int(t["dst_port"])) for t in status.get("tunnels", ())
               if isinstance(t, dict) and {"netdev", "type", "dst_port"} <= t.keys()}
    return SimNic(name, str(status.get("socket") or socket), status.get("switch_id"), capabilities, profile_name,
                  representors, problem, uplinks, tunnels)


def load_status(socket: str) -> tuple[SimNic | None, str | None]:
    """The simulated NIC behind ``socket``, or why its status file cannot be used at all."""
    path = status_path(socket)
    try:
        status = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"sim: no status file {path}: is hwflow-simnic running with --socket {socket}?"
    except (OSError, ValueError) as exc:
        return None, f"sim: cannot read status file {path}: {exc}"
    if not isinstance(status, dict) or not isinstance(status.get("ports", []), list):
        return None, f"sim: status file {path} is not a simulated NIC status (expected an object with ports)"
    return _judge(socket, status), None


class SimDriver(NicDriver):
    name = "sim"

    def __init__(self, sim_sockets: list[str]) -> None:
        self._nics: list[SimNic] = []
        self._problems: list[str] = []
        for socket in sim_sockets:
            nic, problem = load_status(socket)
            if nic is not None:
                self._nics.append(nic)
            if problem is not None:
                self._problems.append(problem)

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> SimDriver:
        return cls(list(conf.nic.sim_sockets))

    def problems(self) -> list[str]:
        return list(self._problems)

    def describe(self, dev: NetDevice) -> DeviceReport | None:
        nic = next((n for n in self._nics if dev.name in n.representors or dev.name in n.tunnels
                    or dev.name in n.uplinks), None)
        if nic is None:
            return None
        role = TUNNEL if dev.name in nic.tunnels else UPLINK if dev.name in nic.uplinks else ROLE
        problem = nic.problem
        kind, port = nic.tunnels.get(dev.name, (None, None))
        if problem is None and kind is not None and not (nic.capabilities.can_encap(kind)
                                                           or nic.capabilities.can_decap(kind)):
            problem = f"simulated NIC {nic.name} (profile {nic.profile}) can neither encapsulate nor decapsulate {kind}"
        if problem is not None:
            report = not_offloadable(dev, self.name, problem, role)
            report.switch_id = nic.switch_id
            report.tunnel_type, report.tunnel_dst_port = kind, port
            return report
        return DeviceReport(
            name=dev.name,
            ifindex=dev.ifindex,
            kernel_driver=dev.kernel_driver,
            nic_driver=self.name,
            pci_id=None,
            switch_id=nic.switch_id,
            port_role=role,
            eswitch_mode="switchdev",
            offload=True,
            reason=None,
            capabilities=nic.capabilities,
            tc_endpoint=f"unix:{nic.socket}",
            capability_source=f"simulated NIC {nic.name}: profile {nic.profile}",
            tunnel_type=kind,
            tunnel_dst_port=port,
        )
