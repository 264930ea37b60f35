"""Active probing with tc-flower: ask the device itself, rule by rule, what it takes in hardware.

OVS probes the kernel's datapath features at start; this probes the NIC. Each
claim (a match field with a mask kind, an action, chains, several actions in
one rule, counters) becomes one tc-flower rule installed with ``skip_sw`` and
removed at once. Probe rules never see traffic: they live on a chain nothing
jumps to (:data:`PROBE_CHAIN`); a device with chain 0 only gets them at the
last priority of chain 0, each also matching a source MAC with the group bit
set (:data:`GUARD_SRC`), which no conforming frame carries (IEEE 802-2014,
8.2: a source address is always an individual address).

What hwflow's flower encoder cannot express yet (tunnels, rewrite, VLAN,
conntrack) and what would disturb traffic (capacity: filling the table) is
reported as not probed, never as confirmed. The answers are a backend-neutral
:class:`hwflow.offload.probe.ProbeReport`, which says what they make of the
device's capabilities and is cached with the time it was taken.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import time
from collections.abc import Callable, Iterator

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.transport import TcClient, TcError
from hwflow.offload.capabilities import (
    ACTION_CT,
    ACTION_DROP,
    ACTION_GOTO_CHAIN,
    ACTION_PASS,
    ACTION_REDIRECT,
    ACTION_REWRITE,
    ACTION_TTL_DEC,
    ACTION_TUNNEL_DECAP,
    ACTION_TUNNEL_ENCAP,
    ACTION_VLAN_POP,
    ACTION_VLAN_PUSH,
    CT_STATES,
    MASK_ANY,
    MASK_EXACT,
    MASK_PREFIX,
    Capabilities,
    Conntrack,
)
from hwflow.offload.probe import CONFIRMED, ERROR, FAR_CHAIN, NOT_PROBED, REFUSED, ProbeReport, ProbeResult

PROBE_CHAIN = FAR_CHAIN
"""The chain probe rules live on: high (yet a valid goto target, at most 2**28 - 1), apart from hwflow's chains;
a device that takes them there has answered the far-chain claim too."""
PROBE_PRIO = 0xFFFF  # the last priority: on chain 0, evaluated after every real rule
GUARD_SRC = 0x036877666C77  # group bit set: no frame has it as source
TERMINAL = fl.Gact("drop")
"""The action of a probe rule that tests something else: every tc-flower switchdev driver takes a drop."""
FLOWER = "flower"  # the claim a device that refuses every hardware flower rule is reported under

# IANA: VXLAN 4789 (RFC 7348), Geneve 6081 (RFC 8926). GRE has no port: with tc, a tunnel's type is
# that of the device a rule redirects to, which a probe rule (redirecting to its own port) has not.
TUNNEL_PORTS = {"vxlan": 4789, "geneve": 6081}
TEST_NET = (0xC0000201, 0xC0000202)  # 192.0.2.1, 192.0.2.2 (RFC 5737, documentation only)
# Which IR field each byte of a pedit-able header is (offsets from linux/if_ether.h, ip.h, ipv6.h, tcp.h, udp.h).
PEDIT_FIELDS = {
    "eth": [(0, 6, "eth_dst"), (6, 12, "eth_src")],
    "ip4": [(8, 9, "ip_ttl"), (12, 16, "ipv4_src"), (16, 20, "ipv4_dst")],
    "ip6": [(7, 8, "ip_ttl"), (8, 24, "ipv6_src"), (24, 40, "ipv6_dst")],
    "tcp": [(0, 2, "tcp_src"), (2, 4, "tcp_dst")],
    "udp": [(0, 2, "udp_src"), (2, 4, "udp_dst")],
}
REWRITABLE = frozenset({f for rows in PEDIT_FIELDS.values() for _, _, f in rows} | {"vlan_vid"})
"""The fields a probe can ask the device to rewrite: pedit's, and the VLAN id (vlan modify)."""
_PEDIT_PROTOCOL = {"eth": (fl.ETH_P_ALL, {}), "ip4": (fl.ETH_P_IP, {}), "ip6": (fl.ETH_P_IPV6, {}),
                   "tcp": (fl.ETH_P_IP, {"ip_proto": fl.IPPROTO_TCP}),
                   "udp": (fl.ETH_P_IP, {"ip_proto": fl.IPPROTO_UDP})}
QUALIFIED = frozenset({ACTION_TUNNEL_ENCAP, ACTION_TUNNEL_DECAP, ACTION_REWRITE})
"""Actions probed once per qualifier (tunnel type, rewritten field) rather than as such."""
CT_FLAGS = {"new": fl.TCA_FLOWER_KEY_CT_FLAGS_NEW, "est": fl.TCA_FLOWER_KEY_CT_FLAGS_ESTABLISHED,
            "rel": fl.TCA_FLOWER_KEY_CT_FLAGS_RELATED, "trk": fl.TCA_FLOWER_KEY_CT_FLAGS_TRACKED,
            "inv": fl.TCA_FLOWER_KEY_CT_FLAGS_INVALID, "rpl": fl.TCA_FLOWER_KEY_CT_FLAGS_REPLY}

# What a probe asks about beyond a driver's claims (see probe_candidates).
ASKED_FIELDS = ("eth_src", "eth_dst", "eth_type", "vlan_vid", "ip_proto", "ipv4_src", "ipv4_dst", "ipv6_src",
                "ipv6_dst", "tcp_src", "tcp_dst", "udp_src", "udp_dst")
ASKED_ACTIONS = frozenset({ACTION_REDIRECT, ACTION_DROP, ACTION_PASS, ACTION_GOTO_CHAIN, ACTION_VLAN_PUSH,
                           ACTION_VLAN_POP, ACTION_TUNNEL_ENCAP, ACTION_TUNNEL_DECAP, ACTION_REWRITE,
                           ACTION_TTL_DEC, ACTION_CT})
ASKED_ACTIONS_PER_RULE = 4


class ProbeError(RuntimeError):
    """Probing could not run at all (no transport, no safe place for probe rules)."""


def probe_candidates(claimed: Capabilities) -> Capabilities:
    """What to probe on a device claimed to have ``claimed``: those claims and everything a probe can ask
    about, so that a report shows both claims the device refuses and abilities no driver claimed.

    Capacity (``max_rules``) is never probed and stays as claimed; match fields are probed under every
    mask kind, whatever kind is claimed.
    """
    tunnels = frozenset(TUNNEL_PORTS)
    return dataclasses.replace(
        claimed,
        match_fields={**dict.fromkeys(ASKED_FIELDS, MASK_ANY), **claimed.match_fields},
        actions=claimed.actions | ASKED_ACTIONS,
        max_actions_per_rule=max(claimed.max_actions_per_rule, ASKED_ACTIONS_PER_RULE),
        max_chains=None,
        tunnel_encap=claimed.tunnel_encap | tunnels,
        tunnel_decap=claimed.tunnel_decap | tunnels,
        rewrite_fields=claimed.rewrite_fields | REWRITABLE,
        conntrack=Conntrack(frozenset(CT_STATES), zones=True, nat=True),
    )


@dataclasses.dataclass(frozen=True)
class _Place:
    chain: int
    guard: bool  # add the GUARD_SRC match (chain 0 only)

    def describe(self) -> str:
        where = f"chain {self.chain} prio {PROBE_PRIO}"
        return where + (" with a group-address eth_src guard" if self.guard else " (a chain nothing jumps to)")


class Prober:
    """Runs the probes of one device through a TcClient (kernel netlink or a simulated NIC's socket)."""

    def __init__(self, client: TcClient, ifindex: int, clock: Callable[[], float] = time.time) -> None:
        self._client = client
        self._ifindex = ifindex
        self._clock = clock

    def run(self, device: str, candidates: Capabilities, switch_id: str | None = None) -> ProbeReport:
        """Probe every claim of ``candidates`` that can be probed without touching traffic.

        A device that refuses hardware flower outright (EOPNOTSUPP wherever a
        probe rule could go) gets a report saying exactly that, with its reason.
        """
        place = self._placement()
        if isinstance(place, TcError):
            return ProbeReport(device, self._clock(), "none: the device refuses tc-flower in hardware",
                               (ProbeResult(FLOWER, REFUSED, place.message or str(place)),), switch_id)
        results = [self._try(f"match {f} {k}", place, keys, protocol)
                   for f, k, keys, protocol in _match_probes(candidates)]
        results.append(self._try("match eth_type exact", place, {}, fl.ETH_P_IP))
        results += [ProbeResult(f"match {spec.ir_field} masked", NOT_PROBED,
                                f"hwflow's tc-flower encoder matches {spec.field} exactly only")
                    for spec in fl.KEY_SPECS if spec.ir_field in candidates.match_fields and not spec.mask_field]
        results += [self._action_probe(a, place) for a in sorted(candidates.actions - QUALIFIED)]
        results += self._qualified_probes(candidates, place)
        results += self._chains(place)
        if candidates.max_actions_per_rule > 1:
            n = candidates.max_actions_per_rule
            results.append(self._try(f"actions per rule {n}", place, {}, fl.ETH_P_ALL, (TERMINAL,) * n))
        results.append(self._counters(place))
        results.append(ProbeResult("capacity", NOT_PROBED, "filling the table would leave real rules no room"))
        return ProbeReport(device, self._clock(), place.describe(), tuple(results), switch_id)
    def _rule(self, place: _Place, keys: dict[str, int], protocol: int,
              actions: tuple[fl.FlowerAction, ...] | None = None, chain: int | None = None) -> fl.FlowerRule:
        if place.guard and "eth_src" not in keys:
            keys = {"eth_src": GUARD_SRC, **keys}
        return fl.FlowerRule(self._ifindex, PROBE_PRIO, 1, protocol, fl.FlowerKeys(**keys),
                             actions or (TERMINAL,), chain=place.chain if chain is None else chain,
                             flags=fl.TCA_CLS_FLAGS_SKIP_SW)

    def _install(self, rule: fl.FlowerRule) -> TcError | None:
        """Add and at once remove one probe rule; the device's answer to the add."""
        (error,) = self._client.add([rule])
        if error is None:
            self._client.delete([rule])
        return error

    def _placement(self) -> _Place | TcError:
        """Where probe rules can go, or the device's refusal when it takes hardware flower nowhere."""
        errors = []
        for place in (_Place(PROBE_CHAIN, guard=False), _Place(0, guard=True)):
            self._client.delete([dataclasses.replace(self._rule(place, {}, fl.ETH_P_ALL), handle=0)])  # leftovers
            error = self._install(self._rule(place, {}, fl.ETH_P_ALL))
            if error is None:
                return place
            errors.append(error)
        if all(e.errno == errno.EOPNOTSUPP for e in errors) and len({e.message for e in errors}) == 1:
            return errors[-1]  # two unlike rules refused for one reason: the reason is flower itself
        raise ProbeError("no place for probe rules that cannot touch traffic: the device refuses chain "
                         f"{PROBE_CHAIN} and a drop rule matching eth_src on chain 0")

    def _try(self, claim: str, place: _Place, keys: dict[str, int], protocol: int,
             actions: tuple[fl.FlowerAction, ...] | None = None, chain: int | None = None) -> ProbeResult:
        try:
            rule = self._rule(place, keys, protocol, actions, chain)
        except ValueError as exc:
            return ProbeResult(claim, NOT_PROBED, f"hwflow cannot build the probe rule: {exc}")
        error = self._install(rule)
        if error is None:
            return ProbeResult(claim, CONFIRMED)
        status = REFUSED if error.errno in (errno.EOPNOTSUPP, errno.EINVAL) else ERROR
        return ProbeResult(claim, status, error.message or os.strerror(error.errno))

    def _action_probe(self, action: str, place: _Place) -> ProbeResult:
        claim = f"action {action}"
        if action == ACTION_DROP:
            return self._try(claim, place, {}, fl.ETH_P_ALL, (fl.Gact("drop"),))
        if action == ACTION_PASS:
            return self._try(claim, place, {}, fl.ETH_P_ALL, (fl.Gact("pass"),))
        if action == ACTION_REDIRECT:  # to the device itself: the rule never matches, so nothing loops
            return self._try(claim, place, {}, fl.ETH_P_ALL, (fl.Mirred(self._ifindex),))
        if action == ACTION_GOTO_CHAIN:  # the target need not exist: tc creates a chain on first use
            return self._try(claim, place, {}, fl.ETH_P_ALL, (fl.Gact("goto_chain", place.chain + 1),))
        if action == ACTION_VLAN_PUSH:
            return self._try(claim, place, {}, fl.ETH_P_ALL, (fl.Vlan("push", vid=1), self._to_self()))
        if action == ACTION_VLAN_POP:
            return self._try(claim, place, {}, fl.ETH_P_8021Q, (fl.Vlan("pop"), self._to_self()))
        if action == ACTION_TTL_DEC:
            return self._try(claim, place, {}, fl.ETH_P_IP, (fl.Pedit(fl.pedit_set("ip4", 8, b"\xff", "add")),
                                                                 fl.Csum(fl.TCA_CSUM_UPDATE_FLAG_IPV4HDR),
                                                                 self._to_self()))
        if action == ACTION_CT:
            return self._try(claim, place, {}, fl.ETH_P_IP, (fl.Ct(), fl.Gact("goto_chain", place.chain + 1)))
        return ProbeResult(claim, NOT_PROBED, f"hwflow has no probe for {action}")

    def _to_self(self) -> fl.FlowerAction:
        """Redirect to the probed port itself: a probe rule never matches, so nothing can loop."""
        return fl.Mirred(self._ifindex)

    def _qualified_probes(self, candidates: Capabilities, place: _Place) -> list[ProbeResult]:
        """Tunnel types, rewritten fields, conntrack zones / NAT / states: one probe each."""
        out = []
        for kind in sorted(candidates.tunnel_encap):
            out.append(self._encap(kind, place))
        for kind in sorted(candidates.tunnel_decap):
            out.append(self._decap(kind, place))
        for field in sorted(candidates.rewrite_fields):
            out.append(self._rewrite(field, place))
        if candidates.conntrack is not None:
            goto = fl.Gact("goto_chain", place.chain + 1)
            out.append(self._try("ct zones", place, {}, fl.ETH_P_IP, (fl.Ct(zone=1), goto)))
            out.append(self._try("ct nat", place, {}, fl.ETH_P_IP,
                                 (fl.Ct(nat="src", nat_ipv4_min=TEST_NET[0], nat_ipv4_max=TEST_NET[0]), goto)))
            for state in sorted(candidates.conntrack.states):
                flags = CT_FLAGS["trk"] | CT_FLAGS[state]
                out.append(self._try(f"match ct_state +{state}", place, {"ct_state": flags, "ct_state_mask": flags},
                                     fl.ETH_P_IP, (self._to_self(),)))
        return out

    def _encap(self, kind: str, place: _Place) -> ProbeResult:
        claim = f"tunnel_encap {kind}"
        if kind not in TUNNEL_PORTS:
            return ProbeResult(claim, NOT_PROBED, f"a {kind} tunnel is told only by the device a rule redirects to")
        tunnel = fl.TunnelKey(ipv4_src=TEST_NET[0], ipv4_dst=TEST_NET[1], key_id=1, dst_port=TUNNEL_PORTS[kind])
        return self._try(claim, place, {}, fl.ETH_P_ALL, (tunnel, self._to_self()))

    def _decap(self, kind: str, place: _Place) -> ProbeResult:
        claim = f"tunnel_decap {kind}"
        if kind not in TUNNEL_PORTS:
            return ProbeResult(claim, NOT_PROBED, f"a {kind} tunnel is told only by the device the rule is on")
        keys = {"enc_key_id": 1, "enc_dst_port": TUNNEL_PORTS[kind]}
        return self._try(claim, place, keys, fl.ETH_P_ALL, (fl.TunnelKey(unset=True), self._to_self()))

    def _rewrite(self, field: str, place: _Place) -> ProbeResult:
        claim = f"rewrite {field}"
        if field == "vlan_vid":
            return self._try(claim, place, {}, fl.ETH_P_8021Q, (fl.Vlan("modify", vid=1), self._to_self()))
        where = next(((h, lo, hi) for h, rows in PEDIT_FIELDS.items() for lo, hi, f in rows if f == field), None)
        if where is None:
            return ProbeResult(claim, NOT_PROBED, f"hwflow knows no pedit header offset for {field}")
        htype, lo, hi = where
        protocol, keys = _PEDIT_PROTOCOL[htype]
        # A MAC written with the group bit set stays a group address, as in every other probe.
        data = (GUARD_SRC.to_bytes(6, "big") if htype == "eth" else bytes(range(1, 1 + hi - lo)))[:hi - lo]
        return self._try(claim, place, keys, protocol, (fl.Pedit(fl.pedit_set(htype, lo, data)), self._to_self()))

    def _chains(self, place: _Place) -> list[ProbeResult]:
        """Chains beyond 0 at all ("chains"), and as far as the probe chain ("chain N")."""
        far = f"chain {PROBE_CHAIN}"
        if place.chain:
            return [ProbeResult("chains", CONFIRMED), ProbeResult(far, CONFIRMED)]
        refused = ProbeResult(far, REFUSED, "refused: the probe rules went to chain 0")
        chain1 = self._try("chains", place, {}, fl.ETH_P_ALL, chain=1)  # guarded like every chain-0 probe
        return [chain1, refused]

    def _counters(self, place: _Place) -> ProbeResult:
        rule = self._rule(place, {}, fl.ETH_P_ALL)
        (error,) = self._client.add([rule])
        if error is not None:
            return ProbeResult("counters", ERROR, str(error))
        try:
            dumped = [stats for got, stats in self._client.dump(self._ifindex)
                      if (got.chain, got.prio) == (rule.chain, PROBE_PRIO)]
        finally:
            self._client.delete([rule])
        if dumped and dumped[0] is not None:
            return ProbeResult("counters", CONFIRMED, "the dump carries hit counters")
        return ProbeResult("counters", REFUSED, "the dump carries no hit counters")


def _match_probes(candidates: Capabilities) -> Iterator[tuple[str, str, dict[str, int], int]]:
    """(field, mask kind, flower keys, protocol) for every match claim hwflow can encode."""
    specs: dict[str, fl.KeySpec] = {}
    for spec in fl.KEY_SPECS:  # a field two keys encode (ICMP's type: v4 and v6) is probed by the first
        specs.setdefault(spec.ir_field, spec)
    for field in sorted(candidates.match_fields):
        spec = specs.get(field)
        if spec is None:
            continue
        protocol = spec.needs[0] if spec.needs else fl.ETH_P_ALL
        base: dict[str, int] = {"ip_proto": spec.ip_proto[0]} if spec.ip_proto else {}
        if spec.field.startswith("enc_") and spec.field != "enc_dst_port":
            base["enc_dst_port"] = TUNNEL_PORTS["vxlan"]  # a tunnel match without its port is a quirk's refusal
        # eth_src keeps the guard's group bit under every mask, so it never matches a real frame.
        value = GUARD_SRC if spec.field == "eth_src" else 1
        yield field, MASK_EXACT, {**base, spec.field: value}, protocol
        if spec.mask_field:
            width = spec.width
            prefix = ((1 << width) - 1) ^ ((1 << (width // 2)) - 1)  # the upper half
            alternating = int("01" * (width // 2), 2)  # not a prefix; has the group bit of a MAC
            for kind, mask in ((MASK_PREFIX, prefix), (MASK_ANY, alternating)):
                yield field, kind, {**base, spec.field: value & mask, spec.mask_field: mask}, protocol


def not_probed_claims(candidates: Capabilities) -> list[str]:
    """Claims of ``candidates`` no probe covers (so a report can say so, not imply them)."""
    specs = {s.ir_field for s in fl.KEY_SPECS}
    out = [f"match {f}" for f in sorted(candidates.match_fields) if f not in specs and f != "eth_type"]
    out += [f"tunnel_{way} {t}" for way in ("encap", "decap")
            for t in sorted(getattr(candidates, f"tunnel_{way}")) if t not in TUNNEL_PORTS]
    return out + [f"rewrite {f}" for f in sorted(candidates.rewrite_fields - REWRITABLE)]
