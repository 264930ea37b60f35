"""Which NIC driver describes which network device, and what each can offload.

The drivers named in ``[nic] drivers`` are loaded through stevedore in that
order; every discovered device is described by the first driver that claims
it, and a device no driver claims still gets a report saying so, so the
inventory always covers the whole host.
"""

from __future__ import annotations

from collections.abc import Sequence

import stevedore
from oslo_config import cfg

from hwflow.offload.nic import DeviceReport, NetDevice, NicDriver, not_offloadable

NAMESPACE = "hwflow.nic_drivers"


class UnknownDriverError(LookupError):
    """A configured NIC driver name that no installed entry point provides."""


def installed_drivers() -> list[str]:
    return sorted(stevedore.ExtensionManager(NAMESPACE).names())


def load_drivers(conf: cfg.ConfigOpts) -> list[NicDriver]:
    """The drivers of ``[nic] drivers``, in order, each built by its own ``from_conf``."""
    names = list(conf.nic.drivers)
    installed = installed_drivers()
    unknown = [n for n in names if n not in installed]
    if unknown:
        raise UnknownDriverError(
            f"[nic] drivers names unknown NIC driver(s) {', '.join(unknown)}; "
            f"installed ({NAMESPACE}): {', '.join(installed) or 'none'}"
        )
    manager = stevedore.NamedExtensionManager(
        NAMESPACE, names, name_order=True, propagate_map_exceptions=True, on_load_failure_callback=_reraise,
    )
    return [ext.plugin.from_conf(conf) for ext in manager]


def _reraise(manager: object, entrypoint: object, exc: Exception) -> None:
    raise exc


def inventory(drivers: Sequence[NicDriver], devices: Sequence[NetDevice]) -> list[DeviceReport]:
    return [_describe(drivers, dev) for dev in devices]


def _describe(drivers: Sequence[NicDriver], dev: NetDevice) -> DeviceReport:
    for driver in drivers:
        report = driver.describe(dev)
        if report is not None:
            return report
    names = ", ".join(d.name for d in drivers) or "none"
    return not_offloadable(dev, None, f"no NIC driver in [nic] drivers ({names}) handles {dev.name}")
