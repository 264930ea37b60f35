"""The contract between hwflow and a vendor NIC driver.

A driver looks at one discovered :class:`NetDevice` and either declines it
(``None``) or says what hwflow may offload through it and why not when it
may not. Drivers are loaded by stevedore (``hwflow.nic_drivers``) and built
with :meth:`NicDriver.from_conf`, so each takes only the options it needs.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any

from oslo_config import cfg

from hwflow.offload.capabilities import NO_OFFLOAD, Capabilities
from hwflow_drivers.discovery import NetDevice

TC_NETLINK = "netlink"


@dataclasses.dataclass
class DeviceReport:
    name: str
    ifindex: int
    kernel_driver: str | None
    nic_driver: str | None  # the hwflow driver that described it; None when none did
    pci_id: str | None
    switch_id: str | None
    port_role: str  # "vf_representor", "pf_representor", "uplink", "pf", "netdev"
    eswitch_mode: str | None  # "switchdev", "legacy", None when unknown
    offload: bool
    reason: str | None  # why not, when offload is false
    capabilities: Capabilities = NO_OFFLOAD
    tc_endpoint: str | None = None  # "netlink", or "unix:<path>" for a simulated NIC

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
        }


def not_offloadable(dev: NetDevice, nic_driver: str | None, reason: str, port_role: str = "netdev") -> DeviceReport:
    """A report for a device hwflow keeps entirely in software."""
    return DeviceReport(
        name=dev.name,
        ifindex=dev.ifindex,
        kernel_driver=dev.kernel_driver,
        nic_driver=nic_driver,
        pci_id=dev.pci_id,
        switch_id=dev.phys_switch_id,
        port_role=port_role,
        eswitch_mode=dev.eswitch_mode,
        offload=False,
        reason=reason,
    )


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
