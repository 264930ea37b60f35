"""Checks that fail today because of a defect outside hil/, each with what must change and where.

A listed check that fails is reported as XFAIL (not counted as failed); one
that passes is a failure, so an entry must be removed as soon as its defect
is fixed. Keep this list short and every entry actionable.
"""

from __future__ import annotations

KNOWN_ISSUES: dict[str, str] = {
    "netdevsim switchdev: probed, no flower offload claimed, the kernel's reason given": (
        "issue 5: `hwflow capabilities --probe` exits 1 ('cannot probe: no place for probe rules that cannot "
        "touch traffic') when a device refuses flower on every placement with EOPNOTSUPP; it should report "
        "offload false with the device's extack as the reason (and without --probe the generic driver claims "
        "flower offload for netdevsim representors)"
    ),
}
