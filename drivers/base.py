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
from hwflow_drivers import switchdev
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
    firmware: str | None = None
    capability_source: str | None = None  # where the capabilities come from (family facts, probe, profile)

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
        }


def _identity(dev: NetDevice, nic_driver: str | None) -> dict[str, Any]:
    """The facts every report carries about the device itself."""
    return {"name": dev.name, "ifindex": dev.ifindex, "kernel_driver": dev.kernel_driver, "nic_driver": nic_driver,
            "pci_id": dev.pci_id, "switch_id": dev.phys_switch_id, "firmware": dev.firmware}


def not_offloadable(dev: NetDevice, nic_driver: str | None, reason: str, port_role: str = "netdev") -> DeviceReport:
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


@dataclasses.dataclass(frozen=True)
class Family:
    """One device family: the PCI ids (of the PF, which owns the representors) and what it can offload.

    ``profile`` names the NIC profile in etc/nic-profiles that makes the
    simulated NIC behave like this family; a unit test keeps the two equal.
    """

    name: str
    profile: str
    pci_ids: frozenset[str]
    capabilities: Capabilities


class FamilyDriver(NicDriver):
    """A vendor driver: claims its kernel driver's devices and describes them by family facts."""

    kernel_drivers: frozenset[str]
    families: tuple[Family, ...]
    fallback: Family  # for a device id of this vendor no family lists

    def family(self, pci_id: str | None) -> Family:
        return next((f for f in self.families if pci_id in f.pci_ids), self.fallback)

    def describe(self, dev: NetDevice) -> DeviceReport | None:
        if dev.kernel_driver not in self.kernel_drivers:
            return None
        verdict = switchdev.judge(dev)
        if verdict.reason is not None:
            return not_offloadable(dev, self.name, verdict.reason, verdict.role)
        family = self.family(dev.pci_id)
        source = f"{self.name}: {family.name} facts (device {dev.pci_id or 'unknown'})"
        return offload_report(dev, self.name, verdict.role, family.capabilities, source)
