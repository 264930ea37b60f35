"""What a NIC's embedded switch can do, in the pipeline IR's own terms.

Drivers (``drivers/``) build a :class:`Capabilities` for each device they
handle; the partitioner only ever asks it questions. Field names are IR
field names (``eth_dst``, ``ipv4_src``...); action names are the HW action
vocabulary below. The same structure is what the simulated NIC's profile
holds, so the sim refuses exactly what a device with that profile would.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

# How a device accepts a mask on a match field.
MASK_EXACT = "exact"  # only all-ones masks
MASK_PREFIX = "prefix"  # contiguous leading ones (CIDR-style)
MASK_ANY = "any"  # arbitrary bit masks
MASK_KINDS = (MASK_EXACT, MASK_PREFIX, MASK_ANY)

# HW actions hwflow knows how to ask for.
ACTION_REDIRECT = "redirect"  # mirred egress redirect to another port
ACTION_DROP = "drop"  # gact drop
ACTION_PASS = "pass"  # gact pass: hand the packet to the representor (software)
ACTION_GOTO_CHAIN = "goto_chain"  # gact goto chain N
HW_ACTIONS = (ACTION_REDIRECT, ACTION_DROP, ACTION_PASS, ACTION_GOTO_CHAIN)


@dataclasses.dataclass(frozen=True)
class Capabilities:
    match_fields: Mapping[str, str]  # IR field -> mask kind
    actions: frozenset[str]
    max_rules: int
    max_actions_per_rule: int = 1

    def can_match(self, field: str, mask: int, width: int) -> bool:
        kind = self.match_fields.get(field)
        if kind is None:
            return False
        if kind == MASK_ANY or mask == (1 << width) - 1:
            return True
        if kind == MASK_PREFIX:
            inverted = ~mask & ((1 << width) - 1)
            return inverted & (inverted + 1) == 0  # mask is ones then zeros
        return False

    def to_dict(self) -> dict[str, Any]:
        return {
            "match_fields": dict(sorted(self.match_fields.items())),
            "actions": sorted(self.actions),
            "max_rules": self.max_rules,
            "max_actions_per_rule": self.max_actions_per_rule,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Capabilities:
        fields = dict(data.get("match_fields", {}))
        bad = {k: v for k, v in fields.items() if v not in MASK_KINDS}
        if bad:
            raise ValueError(f"capabilities: unknown mask kind(s) {bad}; use one of {MASK_KINDS}")
        actions = frozenset(data.get("actions", ()))
        unknown = actions - set(HW_ACTIONS)
        if unknown:
            raise ValueError(f"capabilities: unknown action(s) {sorted(unknown)}; known: {HW_ACTIONS}")
        return cls(
            match_fields=fields,
            actions=actions,
            max_rules=int(data.get("max_rules", 0)),
            max_actions_per_rule=int(data.get("max_actions_per_rule", 1)),
        )


NO_OFFLOAD = Capabilities(match_fields={}, actions=frozenset(), max_rules=0)
