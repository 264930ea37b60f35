"""Sample rules: one per thing the tc encoder can express, generated from the encoder's own tables.

Samples come from :data:`hwflow.backends.tc.flower.KEY_SPECS` and the action
and flag types, so a key added to the encoder becomes one more sample here
without editing this file; a key whose sample cannot be built is reported
(as a failing check) rather than silently left out.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Iterator

from hwflow.backends.tc import flower as fl

# Protocols and ip_protos tried, in order, until the encoder's own validation accepts a key.
PROTOCOLS = (fl.ETH_P_IP, fl.ETH_P_IPV6, fl.ETH_P_8021Q, fl.ETH_P_ALL)
IP_PROTOS = (None, fl.IPPROTO_TCP, fl.IPPROTO_UDP)
PATTERN = 0x0A1B2C3D4E5F60718293A4B5C6D7E8F9  # a value with distinct bytes, so swapped bytes show
# Keys whose values the kernel checks for meaning: (exact value, (masked value, mask)).
# ct_state (pkt_cls.h TCA_FLOWER_KEY_CT_FLAGS_*): +trk+est, and +trk+est-new.
SPECIAL = {"ct_state": (0x0A, (0x0A, 0x0B))}
# Action types with samples below; a type the encoder gains becomes a failing "no sample" check.
COVERED_ACTIONS = (fl.Mirred, fl.Gact, fl.Vlan, fl.TunnelKey, fl.Pedit, fl.Csum, fl.Ct)
IP_A, IP_B = 0x0A000001, 0x0A000002  # 10.0.0.1, 10.0.0.2
IP6_A, IP6_B = 0xFD00 << 112 | 1, 0xFD00 << 112 | 2
L3_CSUM = fl.TCA_CSUM_UPDATE_FLAG_IPV4HDR | fl.TCA_CSUM_UPDATE_FLAG_TCP | fl.TCA_CSUM_UPDATE_FLAG_UDP


@dataclasses.dataclass(frozen=True)
class Sample:
    """A rule to install, or why none could be built for this encoder feature."""

    name: str
    rule: fl.FlowerRule | None
    problem: str | None = None


def key_value(spec: fl.KeySpec) -> int:
    """A valid value for a key; ip_proto gets TCP so that port keys may share the sample."""
    if spec.field == "ip_proto":
        return fl.IPPROTO_TCP
    if spec.field in SPECIAL:
        return SPECIAL[spec.field][0]
    return PATTERN & ((1 << spec.width) - 1)


def half_prefix(spec: fl.KeySpec) -> int:
    width = spec.width
    return ((1 << width) - 1) ^ ((1 << (width // 2)) - 1)


def _contexts(spec: fl.KeySpec) -> Iterator[tuple[int, dict[str, int]]]:
    """(protocol, companion keys) that may make ``spec`` matchable, most likely first.

    Encoders whose KeySpec says what a key needs (``needs``, ``layer``,
    ``ip_proto``) are asked first; then every protocol/ip_proto pair is tried.
    """
    needs = getattr(spec, "needs", ())
    layer = getattr(spec, "layer", "l3")
    protos = getattr(spec, "ip_proto", ())
    extra = {"ip_proto": protos[0]} if protos and spec.field != "ip_proto" else {}
    if needs and layer == "outer":
        yield needs[0], {}
    elif needs and layer == "inner":
        yield fl.ETH_P_8021Q, {"vlan_eth_type": needs[0]}
    elif needs:
        yield needs[0], extra
    for protocol in PROTOCOLS:
        for ip_proto in IP_PROTOS:
            yield protocol, {} if ip_proto is None or spec.field == "ip_proto" else {"ip_proto": ip_proto}


def _keys_for(spec: fl.KeySpec, masked: bool) -> Iterator[tuple[int, fl.FlowerKeys]]:
    """(protocol, keys) candidates for one key; the caller keeps the first the rule accepts."""
    value = key_value(spec)
    fields: dict[str, int] = {spec.field: value}
    if masked and spec.mask_field:
        mask = half_prefix(spec)
        value, mask = SPECIAL[spec.field][1] if spec.field in SPECIAL else (value & mask, mask)
        fields = {spec.field: value, spec.mask_field: mask}
    for protocol, extra in _contexts(spec):
        try:
            yield protocol, fl.FlowerKeys(**fields, **extra)
        except (ValueError, TypeError):
            continue


def key_samples(ifindex: int, out_ifindex: int, first_prio: int) -> list[Sample]:
    """One sample per key (exact), and one more per maskable key (a half-width prefix mask)."""
    samples = []
    prio = first_prio
    for spec in fl.KEY_SPECS:
        for masked in (False, True) if spec.mask_field else (False,):
            name = f"key {spec.field}" + (" masked" if masked else "")
            rule = None
            errors = []
            for protocol, keys in _keys_for(spec, masked):
                try:
                    rule = fl.FlowerRule(ifindex, prio, prio, protocol, keys, (fl.Mirred(out_ifindex),),
                                         flags=fl.TCA_CLS_FLAGS_SKIP_HW)
                    break
                except ValueError as exc:
                    errors.append(str(exc))
            problem = None if rule else (f"no protocol/ip_proto makes a valid rule for {spec.field}: "
                                         f"{errors[-1] if errors else 'FlowerKeys refused every value'}; "
                                         "extend hil/checks/rules.py for it")
            samples.append(Sample(name, rule, problem))
            prio += 1
    return samples


def action_samples(ifindex: int, out_ifindex: int, first_prio: int) -> list[Sample]:
    """Every action form, each alone on a match-all IPv4 rule; plus a chain and a two-action list."""
    out = fl.Mirred(out_ifindex)
    actions: list[tuple[str, tuple[fl.FlowerAction, ...], int]] = [
        ("mirred egress redirect", (out,), 0),
        ("mirred egress mirror", (fl.Mirred(out_ifindex, redirect=False), fl.Gact("drop")), 0),
        ("mirred ingress redirect", (fl.Mirred(out_ifindex, egress=False),), 0),
        ("mirred ingress mirror", (fl.Mirred(out_ifindex, egress=False, redirect=False), fl.Gact("pass")), 0),
        ("gact drop", (fl.Gact("drop"),), 0),
        ("gact pass", (fl.Gact("pass"),), 0),
        ("gact goto_chain", (fl.Gact("goto_chain", 7),), 0),
        ("rule in chain 7", (out,), 7),
        ("vlan push 802.1Q", (fl.Vlan("push", 100, 3), out), 0),
        ("vlan push 802.1ad", (fl.Vlan("push", 200, 0, fl.ETH_P_8021AD), out), 0),
        ("vlan pop", (fl.Vlan("pop"), out), 0),
        ("vlan modify", (fl.Vlan("modify", 300, 5), out), 0),
        ("tunnel_key set IPv4", (fl.TunnelKey(ipv4_src=IP_A, ipv4_dst=IP_B, key_id=42, dst_port=4789), out), 0),
        ("tunnel_key set IPv6, tos, ttl, no csum",
         (fl.TunnelKey(ipv6_src=IP6_A, ipv6_dst=IP6_B, key_id=7, dst_port=4789, tos=0x10, ttl=64, csum=False),
          out), 0),
        ("tunnel_key set Geneve options",
         (fl.TunnelKey(ipv4_src=IP_A, ipv4_dst=IP_B, key_id=9, dst_port=6081,
                       geneve_opts=(fl.GeneveOpt(0x0102, 0x80, bytes(range(1, 9))),)), out), 0),
        ("tunnel_key unset", (fl.TunnelKey(unset=True), out), 0),
        ("pedit eth + ip4 ttl, csum", (fl.Pedit(fl.pedit_set("eth", 0, bytes.fromhex("020000000042"))
                                                + fl.pedit_set("ip4", 8, b"\xff", "add")), fl.Csum(L3_CSUM), out), 0),
        ("pedit ip6 dst", (fl.Pedit(fl.pedit_set("ip6", 24, IP6_B.to_bytes(16, "big"))), out), 0),
        ("ct zone 5", (fl.Ct(zone=5), fl.Gact("goto_chain", 1)), 0),
        ("ct commit with mark", (fl.Ct(zone=5, commit=True, mark=0x10, mark_mask=0xFF), out), 0),
        ("ct commit with SNAT", (fl.Ct(zone=5, commit=True, nat="src", nat_ipv4_min=IP_A, nat_ipv4_max=IP_A,
                                       nat_port_min=1024, nat_port_max=2048), out), 0),
        ("ct nat (established)", (fl.Ct(zone=5, nat="nat"), out), 0),
        ("ct clear", (fl.Ct(clear=True), out), 0),
    ]
    samples = []
    for offset, (name, acts, chain) in enumerate(actions):
        prio = first_prio + offset
        rule = fl.FlowerRule(ifindex, prio, prio, fl.ETH_P_IP, fl.FlowerKeys(), acts, chain=chain,
                             flags=fl.TCA_CLS_FLAGS_SKIP_HW)
        samples.append(Sample(f"action {name}", rule))
    prio = first_prio + len(actions)
    samples.append(Sample("flags none (software + hardware where possible)",
                          fl.FlowerRule(ifindex, prio, prio, fl.ETH_P_ALL, fl.FlowerKeys(), (fl.Gact("pass"),))))
    for kind in typing.get_args(fl.FlowerAction):
        if kind not in COVERED_ACTIONS:
            samples.append(Sample(f"action {kind.__name__}", None,
                                  f"the encoder has action {kind.__name__} but hil/checks/rules.py has no sample "
                                  "of it; add one to action_samples"))
    return samples


def all_samples(ifindex: int, out_ifindex: int) -> list[Sample]:
    keys = key_samples(ifindex, out_ifindex, 1)
    return keys + action_samples(ifindex, out_ifindex, len(keys) + 1)
