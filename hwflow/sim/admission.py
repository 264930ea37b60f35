"""Does a capability profile allow this tc-flower rule? The simulated NIC's admission check.

A real driver parses a flower rule and answers EOPNOTSUPP for anything its
hardware cannot do. The simulated NIC asks this module instead, with the
profile's :class:`Capabilities`, so it refuses exactly what the profile does
not claim. Keys and actions this module does not know (the flower encoder
grows faster than this check) are refused by name, never let through: a
profile can only be trusted for what it was checked against.
"""

from __future__ import annotations

import errno
from collections.abc import Collection

from hwflow.backends.tc import flower as fl
from hwflow.offload.capabilities import (
    ACTION_GOTO_CHAIN,
    ACTION_REDIRECT,
    QUIRK_TUNNEL_UDP_DST_PORT,
    Capabilities,
)

TUNNEL_KEY_PREFIX = "enc_"  # tc-flower(8): enc_key_id, enc_dst_ip, enc_dst_port, ...
TUNNEL_UDP_DST_PORT = "enc_dst_port"


class NotAdmitted(Exception):
    """The profile does not allow the rule; ``what`` names the part it does not allow."""

    def __init__(self, what: str, err: int = errno.EOPNOTSUPP) -> None:
        super().__init__(what)
        self.what = what
        self.errno = err


def action_name(action: object) -> str:
    """The capability an action needs, in hwflow.offload.capabilities' vocabulary, or a name for it."""
    if isinstance(action, fl.Mirred):
        if action.egress and action.redirect:
            return ACTION_REDIRECT
        direction = "egress" if action.egress else "ingress"
        return f"mirred {direction} {'redirect' if action.redirect else 'mirror'}"
    if isinstance(action, fl.Gact):
        return action.verdict
    return f"{type(action).__name__} (an action hwflow/sim/admission.py does not know)"


def check_keys(rule: fl.FlowerRule, caps: Capabilities) -> None:
    """Every matched key must be a field the profile matches, with a mask kind it takes."""
    if rule.protocol != fl.ETH_P_ALL and not caps.can_match("eth_type", 0xFFFF, 16):
        raise NotAdmitted("match on eth_type")
    for spec, _, mask in rule.keys.items():
        field = getattr(spec, "ir_field", None)
        if field is None:
            raise NotAdmitted(f"match on flower key {spec.field} (no IR field known for it)")
        if not caps.can_match(field, mask, spec.width):
            raise NotAdmitted(f"match on {field} with mask {mask:#x}")
    if caps.has_quirk(QUIRK_TUNNEL_UDP_DST_PORT):
        _check_tunnel_port_quirk(rule)


def _check_tunnel_port_quirk(rule: fl.FlowerRule) -> None:
    keys = {spec.field: (mask, spec.width) for spec, _, mask in rule.keys.items()}
    if any(k.startswith(TUNNEL_KEY_PREFIX) for k in keys):
        mask, width = keys.get(TUNNEL_UDP_DST_PORT, (0, 16))
        if mask != (1 << width) - 1:
            raise NotAdmitted(f"a tunnel match without an exact {TUNNEL_UDP_DST_PORT} "
                              f"(quirk {QUIRK_TUNNEL_UDP_DST_PORT})")


def check_actions(rule: fl.FlowerRule, caps: Capabilities, ports: Collection[int]) -> None:
    """Action count, kinds, redirect targets inside this switch, and forward gotos within the chain range."""
    if caps.max_chains is not None and rule.chain >= caps.max_chains:
        raise NotAdmitted(f"a rule in chain {rule.chain} (the profile has chains 0..{caps.max_chains - 1})")
    if len(rule.actions) > caps.max_actions_per_rule:
        raise NotAdmitted(f"{len(rule.actions)} actions in one rule (max {caps.max_actions_per_rule})")
    for action in rule.actions:
        name = action_name(action)
        if name not in caps.actions:
            raise NotAdmitted(f"action {name}")
        if isinstance(action, fl.Mirred) and action.ifindex not in ports:
            raise NotAdmitted(f"redirect to ifindex {action.ifindex} (not a port of this switch)")
        if name == ACTION_GOTO_CHAIN and isinstance(action, fl.Gact):
            if action.chain <= rule.chain:
                raise NotAdmitted(f"goto from chain {rule.chain} to chain {action.chain} (not a later chain)")
            if caps.max_chains is not None and action.chain >= caps.max_chains:
                raise NotAdmitted(f"goto chain {action.chain} (the profile has chains 0..{caps.max_chains - 1})")


def check(rule: fl.FlowerRule, caps: Capabilities, ports: Collection[int]) -> None:
    """Raise :class:`NotAdmitted` unless a device with ``caps`` would take ``rule`` in hardware.

    ``ports`` are the ifindexes of the switch's own ports (where a redirect may go).
    """
    if rule.flags & fl.TCA_CLS_FLAGS_SKIP_HW:
        raise NotAdmitted("a skip_hw rule (it belongs to the kernel datapath)")
    check_keys(rule, caps)
    check_actions(rule, caps, ports)

