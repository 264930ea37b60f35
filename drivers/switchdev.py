"""Switchdev facts every vendor driver judges the same way: port roles, and why a port cannot offload.

Source for the port names: the kernel's switchdev documentation
(Documentation/networking/switchdev.rst, "Port Netdev Naming") and
devlink-port (Documentation/networking/devlink/devlink-port.rst): a
representor's ``phys_port_name`` is ``pfNvfM`` (VF), ``pfNsfM`` (SF), ``pfN``
(PF), each optionally prefixed by ``cX`` (an external controller, e.g. the
host of a BlueField); the uplink (physical port) is ``pN`` or ``pNsM`` (split).
All representors of one eswitch share ``phys_switch_id``.
"""

from __future__ import annotations

import dataclasses
import re

from hwflow.offload.nic import NETDEV, PF, PF_REPRESENTOR, SF_REPRESENTOR, UPLINK, VF_REPRESENTOR, NetDevice

_PORT_ROLES = (
    (re.compile(r"(c\d+)?pf\d+vf\d+"), VF_REPRESENTOR),
    (re.compile(r"(c\d+)?pf\d+sf\d+"), SF_REPRESENTOR),
    (re.compile(r"(c\d+)?pf\d+|p\d+pf\d+"), PF_REPRESENTOR),
    (re.compile(r"p\d+(s\d+)?"), UPLINK),
)


def port_role(phys_port_name: str | None) -> str | None:
    """The switchdev role a ``phys_port_name`` names, or None when it names none."""
    if not phys_port_name:
        return None
    return next((role for pattern, role in _PORT_ROLES if pattern.fullmatch(phys_port_name)), None)


def _missing(dev: NetDevice, source: str) -> str:
    return "; ".join(m for m in dev.sources_missing if m.startswith(source)) or f"{source}: no answer"


def why_no_switch(dev: NetDevice) -> str:
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
    return f"hw-tc-offload could not be read ({_missing(dev, 'ethtool:')})"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """A device's switchdev standing: its role, and why it cannot offload (None when it can)."""

    role: str
    reason: str | None


def judge(dev: NetDevice) -> Verdict:
    """Whether ``dev`` is a switchdev port with tc offload on, from sysfs/ethtool/devlink facts alone."""
    role = port_role(dev.phys_port_name) if dev.phys_switch_id else None
    if role is None:
        if dev.phys_switch_id:
            reason = (
                f"phys_port_name {dev.phys_port_name!r} of {dev.name} is not a switchdev port name "
                "hwflow knows (pfXvfY, pfXsfY, pfX, pY)"
            )
        else:
            reason = why_no_switch(dev)
        return Verdict(PF if dev.kind == "pci" else NETDEV, reason)
    if dev.eswitch_mode == "legacy":
        return Verdict(role, why_no_switch(dev))
    if dev.hw_tc_offload is not True:
        return Verdict(role, _why_not_on(dev))
    return Verdict(role, None)
