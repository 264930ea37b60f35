"""What vendor drivers share: a driver that claims its kernel driver's devices and describes them by family facts.

The contract itself (:class:`~hwflow.offload.nic.NicDriver`, the
:class:`~hwflow.offload.nic.NetDevice` it is shown and the
:class:`~hwflow.offload.nic.DeviceReport` it gives back) is hwflow's, in
:mod:`hwflow.offload.nic`.
"""

from __future__ import annotations

import dataclasses

from hwflow.offload.capabilities import Capabilities
from hwflow.offload.nic import DeviceReport, NetDevice, NicDriver, not_offloadable, offload_report
from hwflow_drivers import switchdev


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
