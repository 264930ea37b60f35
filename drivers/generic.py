"""The generic tc driver: any switchdev NIC, judged by switchdev facts and learned by active probing.

It claims every device, so it goes last in ``[nic] drivers``. A device is
offloadable only when sysfs shows a switchdev port identity
(``phys_switch_id`` + a representor ``phys_port_name``) *and* ethtool shows
``hw-tc-offload`` on; anything else gets a reason an operator can act on.
Knowing no device family, it claims only what every tc-flower switchdev
driver takes until ``hwflow capabilities --probe`` has asked the device
itself; from then on it claims exactly what the probes confirmed.
"""

from __future__ import annotations

from pathlib import Path

from oslo_config import cfg

from hwflow.backends.tc.probe import FLOWER, probe_candidates
from hwflow.offload.capabilities import ACTION_DROP, ACTION_REDIRECT, MASK_EXACT, Capabilities
from hwflow.offload.nic import DeviceReport, NetDevice, NicDriver, not_offloadable, offload_report
from hwflow.offload.probe import REFUSED, ProbeCache, age_text
from hwflow_drivers import switchdev

GENERIC_SWITCHDEV = Capabilities(
    match_fields={"eth_src": MASK_EXACT, "eth_dst": MASK_EXACT, "eth_type": MASK_EXACT},
    actions=frozenset({ACTION_REDIRECT, ACTION_DROP}),
    max_rules=1024,
)
"""What every tc-flower switchdev device accepts; deliberately small, as nothing was probed."""

PROBE_CANDIDATES = probe_candidates(GENERIC_SWITCHDEV)
"""Everything the generic driver asks the device about when probing (each kept only if confirmed)."""


class GenericDriver(NicDriver):
    name = "generic"

    def __init__(self, cache: ProbeCache | None = None) -> None:
        self.cache = cache

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> GenericDriver:
        return cls(ProbeCache(Path(conf.nic.probe_cache)))

    def _refusal(self, dev: NetDevice) -> str | None:
        """Why not, when this device's own probe found it refuses hardware flower altogether."""
        try:
            report = self.cache.load(dev.name) if self.cache is not None else None
        except ValueError:
            return None
        if report is None or report.status(FLOWER) != REFUSED:
            return None
        detail = next(r.detail for r in report.results if r.claim == FLOWER)
        return f"the device refuses tc-flower in hardware (probed {age_text(report.age())} ago): {detail}"

    def capabilities(self, dev: NetDevice) -> tuple[Capabilities, str]:
        """What to claim for ``dev``, and where that comes from."""
        baseline = (GENERIC_SWITCHDEV, "generic baseline: not probed (hwflow capabilities --probe)")
        if self.cache is None:
            return baseline
        try:
            report = self.cache.load(dev.name)
        except ValueError as exc:
            return GENERIC_SWITCHDEV, f"generic baseline: {exc}"
        if report is None:
            return baseline
        if report.switch_id is not None and report.switch_id != dev.phys_switch_id:
            return GENERIC_SWITCHDEV, (f"generic baseline: the cached probe of {dev.name} is of eswitch "
                                       f"{report.switch_id}, not {dev.phys_switch_id}: probe again")
        return report.learned(PROBE_CANDIDATES), f"probed {age_text(report.age())} ago ({report.placement})"

    def describe(self, dev: NetDevice) -> DeviceReport:
        verdict = switchdev.judge(dev)
        if verdict.reason is not None:
            return not_offloadable(dev, self.name, verdict.reason, verdict.role)
        refusal = self._refusal(dev)
        if refusal is not None:
            return not_offloadable(dev, self.name, refusal, verdict.role)
        capabilities, source = self.capabilities(dev)
        return offload_report(dev, self.name, verdict.role, capabilities, source)

