"""The fallback driver: any kernel netdev, judged by switchdev facts alone.

It claims every device, so it goes last in ``[nic] drivers``. A device is
offloadable only when sysfs shows a switchdev port identity
(``phys_switch_id`` + a representor ``phys_port_name``) *and* ethtool shows
``hw-tc-offload`` on; anything else gets a reason an operator can act on.
Vendor drivers placed before it refine the capabilities per device family.
"""

from __future__ import annotations

import re

from hwflow.offload.capabilities import ACTION_DROP, ACTION_REDIRECT, MASK_EXACT, Capabilities
from hwflow_drivers.base import TC_NETLINK, DeviceReport, NicDriver, not_offloadable
from hwflow_drivers.discovery import NetDevice

GENERIC_SWITCHDEV = Capabilities(
    match_fields={"eth_src": MASK_EXACT, "eth_dst": MASK_EXACT, "eth_type": MASK_EXACT},
    actions=frozenset({ACTION_REDIRECT, ACTION_DROP}),
    max_rules=1024,
)
"""What every tc-flower switchdev device accepts; deliberately small, as nothing was probed."""

_PORT_ROLES = (
    (re.compile(r"(c\d+)?pf\d+vf\d+"), "vf_representor"),
    (re.compile(r"(c\d+)?pf\d+sf\d+"), "sf_representor"),
    (re.compile(r"(c\d+)?pf\d+|p\d+pf\d+"), "pf_representor"),
    (re.compile(r"p\d+(s\d+)?"), "uplink"),
)


def port_role(phys_port_name: str | None) -> str | None:
    """The switchdev role a ``phys_port_name`` names, or None when it names none."""
    if not phys_port_name:
        return None
    return next((role for pattern, role in _PORT_ROLES if pattern.fullmatch(phys_port_name)), None)


def _missing(dev: NetDevice, source: str) -> str:
    return "; ".join(m for m in dev.sources_missing if m.startswith(source)) or f"{source}: no answer"


def _why_no_switch(dev: NetDevice) -> str:
    """Why a device without a switchdev port identity cannot take tc rules in hardware."""
    driver = dev.kernel_driver or dev.kind
    if dev.kind == "loopback":
        return "loopback: the host's own loopback device, no embedded switch"
    if dev.kernel_driver == "virtio_net":
        return "virtio_net: paravirtual NIC, no tc offload"
    if dev.kind == "tun":
        return "tun: tap device not owned by a simulated NIC"
    if dev.bus_info is None:
        return f"{driver}: virtual device with no embedded switch"
    fix = f"devlink dev eswitch set pci/{dev.bus_info} mode switchdev"
    if dev.eswitch_mode == "legacy":
        return f"{driver} in legacy mode: switch the eswitch to switchdev ({fix})"
    if dev.eswitch_mode is None:
        return (
            f"{driver}: no phys_switch_id, so its eswitch is in legacy mode or it has none; "
            f"devlink could not confirm ({_missing(dev, 'devlink')}); if it has one: {fix}"
        )
    return f"{driver}: eswitch is {dev.eswitch_mode} but {dev.name} shows no switchdev port identity"


def _why_not_on(dev: NetDevice) -> str:
    if dev.hw_tc_offload is False:
        return f"hw-tc-offload is off: ethtool -K {dev.name} hw-tc-offload on"
    return f"hw-tc-offload could not be read ({_missing(dev, 'ethtool')})"


class GenericDriver(NicDriver):
    name = "generic"

    def describe(self, dev: NetDevice) -> DeviceReport:
        role = port_role(dev.phys_port_name) if dev.phys_switch_id else None
        if role is None:
            if dev.phys_switch_id:
                reason = (
                    f"phys_port_name {dev.phys_port_name!r} of {dev.name} is not a switchdev port name "
                    "hwflow knows (pfXvfY, pfXsfY, pfX, pY)"
                )
            else:
                reason = _why_no_switch(dev)
            return not_offloadable(dev, self.name, reason, "pf" if dev.kind == "pci" else "netdev")
        if dev.eswitch_mode == "legacy":
            return not_offloadable(dev, self.name, _why_no_switch(dev), role)
        if dev.hw_tc_offload is not True:
            return not_offloadable(dev, self.name, _why_not_on(dev), role)
        return DeviceReport(
            name=dev.name,
            ifindex=dev.ifindex,
            kernel_driver=dev.kernel_driver,
            nic_driver=self.name,
            pci_id=dev.pci_id,
            switch_id=dev.phys_switch_id,
            port_role=role,
            # Representors and a switch id exist only in switchdev mode: evidence, not a guess.
            eswitch_mode=dev.eswitch_mode or "switchdev",
            offload=True,
            reason=None,
            capabilities=GENERIC_SWITCHDEV,
            tc_endpoint=TC_NETLINK,
        )
