"""The contract between hwflow and a NIC driver: the device it is shown, and the report it gives back.

A driver looks at one discovered :class:`NetDevice` (see
:mod:`hwflow.offload.discovery`) and either declines it (``None``) or says
what hwflow may offload through it and why not when it may not. Drivers are
plugins: they import this module, never the other way round; hwflow loads
them by stevedore (entry-point group ``hwflow.nic_drivers``, see
:mod:`hwflow.offload.inventory`) and builds each with
:meth:`NicDriver.from_conf`, so each takes only the options it needs.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

from oslo_config import cfg

from hwflow.offload.capabilities import NO_OFFLOAD, Capabilities

TC_NETLINK = "netlink"
"""A report's ``tc_endpoint`` for a device programmed through the kernel (else ``unix:PATH``, a simulated NIC)."""

# A report's port_role: the switchdev roles (representors and the uplink), a flow-based tunnel device whose
# decap rules the embedded switch holds (mlx5's vxlan_sys_4789 through its indirect block), a PF not in
# switchdev, any other netdev.
VF_REPRESENTOR = "vf_representor"
SF_REPRESENTOR = "sf_representor"
PF_REPRESENTOR = "pf_representor"
UPLINK = "uplink"
TUNNEL = "tunnel"
PF = "pf"
NETDEV = "netdev"


@dataclasses.dataclass(frozen=True)
class NetDevice:
    """What discovery found about one network device; a fact no source could supply is None."""

    name: str
    ifindex: int
    kernel_driver: str | None
    pci_id: str | None  # "vendor:device", e.g. "15b3:101d"
    bus_info: str | None  # PCI address of the nearest PCI ancestor
    phys_switch_id: str | None
    phys_port_name: str | None
    hw_tc_offload: bool | None  # None: ethtool could not tell
    kind: str  # "loopback", "veth", "tun", "pci", "virtio", ...
    eswitch_mode: str | None = None  # from devlink only; None when unknown
    sources_missing: tuple[str, ...] = ()
    firmware: str | None = None  # ethtool -i firmware-version of PCI devices; None when unknown or none


@dataclasses.dataclass
class DeviceReport:
    name: str
    ifindex: int
    kernel_driver: str | None
    nic_driver: str | None  # the hwflow driver that described it; None when none did
    pci_id: str | None
    switch_id: str | None
    port_role: str  # a role above: VF/SF/PF_REPRESENTOR, UPLINK, PF, NETDEV
    eswitch_mode: str | None  # "switchdev", "legacy", None when unknown
    offload: bool
    reason: str | None  # why not, when offload is false
    capabilities: Capabilities = NO_OFFLOAD
    tc_endpoint: str | None = None  # "netlink", or "unix:<path>" for a simulated NIC
    firmware: str | None = None
    capability_source: str | None = None  # where the capabilities come from (family facts, probe, profile)
    tunnel_type: str | None = None  # a TUNNEL device's type (vxlan, geneve) and UDP port; None for others
    tunnel_dst_port: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ifindex": self.ifindex,
            "driver": self.kernel_driver,
            "nic_driver": self.nic_driver,
            "pci_id": self.pci_id,
            "switch_id": self.switch_id,
            "port_role": self.port_role,
            "eswitch_mode": self.eswitch_mode,
            "offload": self.offload,
            "reason": self.reason,
            "capabilities": self.capabilities.to_dict(),
            "tc_endpoint": self.tc_endpoint,
            "firmware": self.firmware,
            "capability_source": self.capability_source,
            "tunnel_type": self.tunnel_type,
            "tunnel_dst_port": self.tunnel_dst_port,
        }


def _identity(dev: NetDevice, nic_driver: str | None) -> dict[str, Any]:
    """The facts every report carries about the device itself."""
    return {"name": dev.name, "ifindex": dev.ifindex, "kernel_driver": dev.kernel_driver, "nic_driver": nic_driver,
            "pci_id": dev.pci_id, "switch_id": dev.phys_switch_id, "firmware": dev.firmware}


def not_offloadable(dev: NetDevice, nic_driver: str | None, reason: str, port_role: str = NETDEV) -> DeviceReport:
    """A report for a device hwflow keeps entirely in software."""
    return DeviceReport(**_identity(dev, nic_driver), port_role=port_role, eswitch_mode=dev.eswitch_mode,
                        offload=False, reason=reason)


def offload_report(dev: NetDevice, nic_driver: str, role: str, capabilities: Capabilities, source: str,
                   tc_endpoint: str = TC_NETLINK) -> DeviceReport:
    """A report for a switchdev port hwflow may program, with what it can do and where that is known from."""
    # Representors and a switch id exist only in switchdev mode: evidence, not a guess.
    return DeviceReport(**_identity(dev, nic_driver), port_role=role, eswitch_mode=dev.eswitch_mode or "switchdev",
                        offload=True, reason=None, capabilities=capabilities, tc_endpoint=tc_endpoint,
                        capability_source=source)


class NicDriver(abc.ABC):
    name: str

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> NicDriver:
        """Build the driver from the options it needs; most need none."""
        return cls()

    @abc.abstractmethod
    def describe(self, dev: NetDevice) -> DeviceReport | None:
        """The driver's report on ``dev``, or None when the device is not its own."""

    def problems(self) -> list[str]:
        """Sources this driver could not read (shown next to discovery's missing sources)."""
        return []
