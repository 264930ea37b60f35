"""A probe report: what a device confirmed of hwflow's claims, and what that makes of its capabilities.

A backend's prober (tc-flower's: :mod:`hwflow.backends.tc.probe`) asks the
device itself, claim by claim, and answers with a :class:`ProbeReport`: one
:class:`ProbeResult` per claim ("match ipv4_dst prefix", "action drop",
"chains", "chain N", "actions per rule N", "counters", ...), each confirmed,
refused, an error, or not probed. :meth:`ProbeReport.learned` keeps of a
driver's candidate capabilities exactly what was confirmed. Reports are
cached as JSON with the time they were taken, so their age can be shown and
judged.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

from hwflow.offload.capabilities import (
    ACTION_CT,
    ACTION_GOTO_CHAIN,
    ACTION_REWRITE,
    ACTION_TUNNEL_DECAP,
    ACTION_TUNNEL_ENCAP,
    MASK_ANY,
    MASK_EXACT,
    MASK_PREFIX,
    Capabilities,
    Conntrack,
)

FAR_CHAIN = 0x0FFFFFF0
"""The far chain probes ask about (claim "chain N"), high yet a valid tc goto target (at most 2**28 - 1):
a device that takes a rule there adds no chain limit hwflow would reach."""
CONFIRMED, REFUSED, ERROR, NOT_PROBED = "confirmed", "refused", "error", "not_probed"
STATUSES = (CONFIRMED, REFUSED, ERROR, NOT_PROBED)


@dataclasses.dataclass(frozen=True)
class ProbeResult:
    claim: str  # "match ipv4_dst prefix", "action drop", "chains", "actions per rule 4", "counters", ...
    status: str  # confirmed | refused | error | not_probed
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"claim": self.claim, "status": self.status, "detail": self.detail}


@dataclasses.dataclass(frozen=True)
class ProbeReport:
    device: str
    taken_at: float  # Unix time
    placement: str  # where the probe rules went
    results: tuple[ProbeResult, ...]
    switch_id: str | None = None  # the eswitch probed: a cache entry of another NIC under the same name is stale

    def status(self, claim: str) -> str:
        return next((r.status for r in self.results if r.claim == claim), NOT_PROBED)

    def age(self, now: float | None = None) -> float:
        return max(0.0, (time.time() if now is None else now) - self.taken_at)

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "switch_id": self.switch_id, "taken_at": self.taken_at,
                "placement": self.placement, "results": [r.to_dict() for r in self.results]}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ProbeReport:
        try:
            results = tuple(ProbeResult(str(r["claim"]), str(r["status"]), r.get("detail")) for r in data["results"])
            switch_id = data.get("switch_id")
            report = cls(str(data["device"]), float(data["taken_at"]), str(data["placement"]), results,
                         None if switch_id is None else str(switch_id))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"probe report: missing or bad field ({exc!r})") from exc
        bad = sorted({r.status for r in results} - set(STATUSES))
        if bad:
            raise ValueError(f"probe report: unknown status(es) {bad}; known: {STATUSES}")
        return report

    def _some_chains(self) -> int:
        """2 when chain 1 was taken but the probe chain was not (the real count is unknown), else 1."""
        return 2 if self.status("chains") == CONFIRMED else 1

    def learned(self, candidates: Capabilities) -> Capabilities:
        """What the probes confirmed of ``candidates``; nothing unconfirmed is kept."""
        fields = {}
        for field in candidates.match_fields:
            kinds = [k for k in (MASK_ANY, MASK_PREFIX, MASK_EXACT) if self.status(f"match {field} {k}") == CONFIRMED]
            if kinds:
                fields[field] = kinds[0]
        if self.status("match eth_type exact") == CONFIRMED:
            fields["eth_type"] = MASK_EXACT
        actions = {a for a in candidates.actions if self.status(f"action {a}") == CONFIRMED}
        if self.status("chains") != CONFIRMED:
            actions -= {ACTION_GOTO_CHAIN}
        encap = frozenset(t for t in candidates.tunnel_encap if self.status(f"tunnel_encap {t}") == CONFIRMED)
        decap = frozenset(t for t in candidates.tunnel_decap if self.status(f"tunnel_decap {t}") == CONFIRMED)
        rewrite = frozenset(f for f in candidates.rewrite_fields if self.status(f"rewrite {f}") == CONFIRMED)
        conntrack = None
        if candidates.conntrack is not None and ACTION_CT in actions:
            states = frozenset(s for s in candidates.conntrack.states
                               if self.status(f"match ct_state +{s}") == CONFIRMED)
            conntrack = Conntrack(states, self.status("ct zones") == CONFIRMED, self.status("ct nat") == CONFIRMED)
        actions.discard(ACTION_CT)
        for action, qualifier in ((ACTION_TUNNEL_ENCAP, encap), (ACTION_TUNNEL_DECAP, decap),
                                  (ACTION_REWRITE, rewrite), (ACTION_CT, conntrack)):
            if qualifier:
                actions.add(action)
        per_rule = max([1] + [int(r.claim.rsplit(" ", 1)[1]) for r in self.results
                              if r.claim.startswith("actions per rule ") and r.status == CONFIRMED])
        return Capabilities(
            match_fields=fields,
            actions=actions,
            max_rules=candidates.max_rules,  # never probed: filling the table would leave real rules no room
            max_actions_per_rule=per_rule,
            max_chains=None if self.status(f"chain {FAR_CHAIN}") == CONFIRMED else self._some_chains(),
            counters=self.status("counters") == CONFIRMED,
            tunnel_encap=encap,
            tunnel_decap=decap,
            rewrite_fields=rewrite,
            conntrack=conntrack,
        )


class ProbeCache:
    """Probe reports on disk, one JSON file per device, written atomically."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, device: str) -> Path:
        return self.directory / f"{device}.json"

    def save(self, report: ProbeReport) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(report.device)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        tmp.replace(path)
        return path

    def load(self, device: str) -> ProbeReport | None:
        """The cached report, None when there is none; a corrupt file is an error naming it."""
        path = self.path(device)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise ValueError(f"probe cache {path}: {exc}; remove it and probe again") from exc
        try:
            return ProbeReport.from_dict(data)
        except ValueError as exc:
            raise ValueError(f"probe cache {path}: {exc}; remove it and probe again") from exc


def age_text(seconds: float) -> str:
    """'42s', '5m', '3h', '2d': how old a probe result is, for people."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"
