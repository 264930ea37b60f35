"""Neighbor discovery answers stay in software: the NIC never gets a rule rewriting ND fields.

The answer rewrites the ND header (type, flags word, option type, option
address), which tc pedit on a NIC cannot: the partitioner must refuse those
edits whatever a NIC claims, and keep the solicitation's path in OVS, with the
same verdict as the pipeline alone.
"""

from __future__ import annotations

import pytest
from nic_model import hw_then_sw

from hwflow.apps.base import ipv6_int
from hwflow.apps.compiler import Compiler, layout_path
from hwflow.model.objects import Network, Port
from hwflow.offload import capabilities as hw
from hwflow.offload.capabilities import MASK_ANY, MASK_EXACT, Capabilities
from hwflow.offload.partition import Leaf, PortOffload, _cannot_edit, partition
from hwflow.pipeline import interpreter, ir
from hwflow.pipeline.topology import Topology

ND_FIELDS = ("nd_reserved", "nd_options_type", "nd_sll", "nd_tll", "nd_target")
# A NIC claiming redirects, rewrites and TTL decrements, and the rewrite of every header field, the ND ones included.
GENEROUS = Capabilities(
    match_fields={f: MASK_ANY for f in ("eth_src", "eth_dst", "ipv6_src", "ipv6_dst", "nd_target", "nd_sll")}
    | {f: MASK_EXACT for f in ("eth_type", "ip_proto", "icmp_type", "icmp_code")},
    actions=frozenset({hw.ACTION_REDIRECT, hw.ACTION_DROP, hw.ACTION_PASS, hw.ACTION_REWRITE, hw.ACTION_TTL_DEC}),
    max_rules=1000, max_actions_per_rule=16,
    rewrite_fields=frozenset({"eth_src", "eth_dst", "ipv6_src", "ipv6_dst", "icmp_type", *ND_FIELDS}),
)
MAC1, MAC2 = "fa:16:3e:00:00:01", "fa:16:3e:00:00:02"


@pytest.mark.parametrize("field", [*ND_FIELDS, "icmp_type"])
def test_an_nd_header_rewrite_is_refused_for_hardware_whatever_the_nic_claims(field: str) -> None:
    leaf = Leaf(region=(("eth_type", ir.ETH_TYPE_IPV6, 0xFFFF),), outputs=(2,), blocker=None, owner="port:p",
                edits=(ir.SetField("eth_src", 1), ir.SetField(field, 2)))
    assert _cannot_edit(leaf, GENEROUS) == f"the NIC cannot rewrite {field}"


def pipeline() -> ir.Pipeline:
    nets = {"n": Network(id="n", name="n", vni=5, unique_key=1)}
    ports = {p.id: p for p in (
        Port(id="a", name="a", network_id="n", mac=MAC1, ips=["fd00::1"], unique_key=11),
        Port(id="b", name="b", network_id="n", mac=MAC2, ips=["fd00::2"], unique_key=12))}
    return Compiler.from_file(layout_path("")).compile(Topology("h", nets, ports, {"a", "b"}))


def test_a_compiled_nd_answer_stays_in_software_with_the_verdict_of_the_pipeline_alone() -> None:
    pl = pipeline()
    plan = partition(pl, {k: PortOffload(k, "sw0", GENEROUS) for k in (11, 12)}, (ir.ETH_TYPE_IPV6,))
    assert plan.rules, "the IPv6 unicast between the ports should be in hardware: the NIC is capable"
    assert not [r for r in plan.rules for a in r.actions if isinstance(a, ir.SetField) and a.field in ND_FIELDS]
    solicitation = {"in_port": 11, "eth_src": int(MAC1.replace(":", ""), 16), "eth_dst": 0x3333FF000002,
                    "eth_type": ir.ETH_TYPE_IPV6, "ipv6_src": ipv6_int("fd00::1"),
                    "ipv6_dst": ipv6_int("ff02::1:ff00:2"), "ip_proto": 58, "ip_ttl": 255, "icmp_type": 135,
                    "icmp_code": 0, "nd_target": ipv6_int("fd00::2"), "nd_options_type": 1,
                    "nd_sll": int(MAC1.replace(":", ""), 16)}
    alone = interpreter.run(pl, solicitation).outputs
    assert [(port, pkt["icmp_type"], pkt["nd_tll"]) for port, pkt in alone] == [
        (11, 136, int(MAC2.replace(":", ""), 16))]
    assert hw_then_sw(pl, plan, solicitation, interpreter.ConnTracker()) == alone
