"""to_flower: the partitioner's hardware rules as tc-flower rules, for every action it can place.

Each pipeline is split by the partitioner for a NIC that can do everything,
turned into flower rules, and checked both for what the rule says and for
surviving hwflow's own encoder round trip (the kernel's reading is the VM
tier's job: hil/checks).
"""

from __future__ import annotations

import dataclasses

import pytest

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.backend import TC_FLAGS, Representor, TunnelEndpoint, to_flower
from hwflow.offload import capabilities as hw
from hwflow.offload.capabilities import MASK_ANY, MASK_EXACT, Capabilities, Conntrack
from hwflow.offload.partition import HwRule, PortOffload, partition
from hwflow.pipeline import ir
from hwflow.sim import admission
from hwflow.sim.profile import load_profile

TUN = ir.TUNNEL_PORTS["vxlan"]
REPS = {1: Representor(11, "netlink"), 2: Representor(12, "netlink"), TUN: Representor(99, "netlink")}
TUNNELS = {TUN: TunnelEndpoint(local_ipv4=0xC0A84D01, dst_port=4789)}
MAC_A, MAC_B, ROUTER = 0x020000000001, 0x020000000002, 0x020000AAAA01
CAPS = Capabilities(
    match_fields={"eth_dst": MASK_ANY, "eth_src": MASK_ANY, "eth_type": MASK_EXACT, "ip_ttl": MASK_ANY,
                  "vlan_vid": MASK_EXACT, "tun_id": MASK_EXACT, "tun_ipv4_src": MASK_ANY},
    actions=frozenset(hw.HW_ACTIONS), max_rules=100, max_actions_per_rule=8,
    tunnel_encap=frozenset({"vxlan"}), tunnel_decap=frozenset({"vxlan"}),
    rewrite_fields=frozenset({"eth_src", "eth_dst", "ipv4_src", "ipv4_dst"}),
    conntrack=Conntrack(frozenset(hw.CT_STATES), zones=True, nat=True),
)


def flower_rules(flows: list[ir.Flow]) -> list[fl.FlowerRule]:
    ports = {p: PortOffload(p, "sw0", CAPS) for p in REPS}
    plan = partition(ir.Pipeline.build(flows, {}), ports, (ir.ETH_TYPE_IPV4,), unicast_only=False)
    out = []
    for rule in plan.rules:
        endpoint, frule = to_flower(rule, REPS, TC_FLAGS["skip_hw"], TUNNELS)
        assert endpoint == "netlink"
        out.append(frule)
        decoded, _ = fl.decode_filter(fl.encode_newfilter(dataclasses.replace(frule, handle=1), seq=1))
        assert decoded.keys == frule.keys and decoded.actions == frule.actions and decoded.chain == frule.chain
    return out


def test_a_route_is_two_pedits_csum_and_redirect_behind_a_pass_rule():
    """The MAC rewrite and the TTL decrement are two pedits (set, then add): NICs take them apart."""
    hop = (ir.SetField("eth_src", ROUTER), ir.SetField("eth_dst", MAC_B), ir.DecTtl(), ir.Output(2))
    trap, route = flower_rules([ir.Flow(0, 1, ir.Match.of(in_port=1, eth_dst=ROUTER), hop, "r")])
    assert trap.actions == (fl.Gact("pass"),) and (trap.keys.ip_ttl, trap.keys.ip_ttl_mask) == (0, 0xFE)
    assert route.prio > trap.prio
    macs, ttl, csum, mirred = route.actions
    assert macs == fl.Pedit(fl.pedit_set("eth", 6, ROUTER.to_bytes(6, "big")) + fl.pedit_set("eth", 0, MAC_B.to_bytes(
        6, "big")))
    assert ttl == fl.Pedit(fl.pedit_set("ip4", 8, b"\xff", "add"))
    assert csum == fl.Csum(fl.TCA_CSUM_UPDATE_FLAG_IPV4HDR) and mirred == fl.Mirred(12)


def test_an_address_rewrite_fixes_the_l4_checksums_too():
    (rule,) = flower_rules([ir.Flow(0, 1, ir.Match.of(in_port=1), (ir.SetField("ipv4_dst", 0x0A000002),
                                                                   ir.Output(2)), "nat")])
    assert rule.actions[1] == fl.Csum(fl.TCA_CSUM_UPDATE_FLAG_IPV4HDR | fl.TCA_CSUM_UPDATE_FLAG_TCP
                                      | fl.TCA_CSUM_UPDATE_FLAG_UDP)


def test_vlan_push_and_pop():
    push, pop = flower_rules([
        ir.Flow(0, 1, ir.Match.of(in_port=1), (ir.PushVlan(100), ir.Output(2)), "push"),
        ir.Flow(0, 1, ir.Match.of(in_port=2, vlan_vid=100), (ir.PopVlan(), ir.Output(1)), "pop")])
    assert push.protocol == fl.ETH_P_IP and push.actions == (fl.Vlan("push", 100), fl.Mirred(12))
    assert (pop.protocol, pop.keys.vlan_id, pop.keys.vlan_eth_type) == (fl.ETH_P_8021Q, 100, fl.ETH_P_IP)
    assert pop.actions == (fl.Vlan("pop"), fl.Mirred(11))


def test_vxlan_encap_takes_the_host_side_from_the_tunnel_endpoint_and_decap_matches_it():
    encap, decap = flower_rules([
        ir.Flow(0, 1, ir.Match.of(in_port=1), (ir.SetField("tun_id", 42), ir.SetField("tun_dst", 0xC0A84D02),
                                               ir.Output(TUN)), "encap"),
        ir.Flow(0, 1, ir.Match.of(in_port=TUN, tun_id=42, tun_src=0xC0A84D02), (ir.Output(1),), "decap")])
    assert encap.ifindex == 11 and encap.actions == (
        fl.TunnelKey(ipv4_src=0xC0A84D01, ipv4_dst=0xC0A84D02, key_id=42, dst_port=4789), fl.Mirred(99))
    assert decap.ifindex == 99 and decap.actions == (fl.TunnelKey(unset=True), fl.Mirred(11))
    assert (decap.keys.enc_key_id, decap.keys.enc_ipv4_src, decap.keys.enc_ipv4_dst, decap.keys.enc_dst_port) == (
        42, 0xC0A84D02, 0xC0A84D01, 4789)


def test_a_tunnel_rule_that_goes_on_to_a_chain_keeps_the_tunnel_metadata_for_its_enc_keys():
    """Decap (tunnel_key unset) comes with the output only: after a goto the next chain's rules still match the
    enc_* keys, which a kernel cannot do once the metadata is released (the VM tier checks it with packets)."""
    goto = HwRule(TUN, 0, 0, ir.Match.of(eth_type=ir.ETH_TYPE_IPV4, tun_id=42), None, "t", (), 0, 1 << 20)
    out = HwRule(TUN, 0, 0, ir.Match.of(eth_type=ir.ETH_TYPE_IPV4, tun_id=42, eth_dst=2), 1, "t", (), 1 << 20)
    held = HwRule(TUN, 1, 1, ir.Match.of(eth_type=ir.ETH_TYPE_IPV4, tun_id=42), None, "", (), 1 << 20)
    (_, first), (_, then), (_, passed) = (to_flower(r, REPS, TC_FLAGS["skip_hw"], TUNNELS) for r in (goto, out, held))
    assert first.actions == (fl.Gact("goto_chain", 1 << 20),) and first.keys.enc_key_id == 42
    assert then.actions == (fl.TunnelKey(unset=True), fl.Mirred(11)) and then.keys.enc_dst_port == 4789
    assert passed.actions == (fl.Gact("pass"),)  # software gets the packet with its tunnel metadata, as OVS needs


def test_a_tunnel_port_without_its_endpoint_is_an_error_that_says_what_to_pass():
    ports = {p: PortOffload(p, "sw0", CAPS) for p in REPS}
    flow = ir.Flow(0, 1, ir.Match.of(in_port=TUN), (ir.Output(1),), "decap")
    (rule,) = partition(ir.Pipeline.build([flow], {}), ports, (ir.ETH_TYPE_IPV4,), unicast_only=False).rules
    with pytest.raises(ValueError, match="TunnelEndpoint"):
        to_flower(rule, REPS, 0)


def test_a_conntrack_chain_is_ct_goto_and_ct_state_matches_with_trk():
    est, new = ir.CT_TRK | ir.CT_EST, ir.CT_TRK | ir.CT_NEW
    rules = flower_rules([
        ir.Flow(0, 1, ir.Match.of(in_port=1), (ir.Conntrack(zone=5, table=1),), "ct"),
        ir.Flow(1, 2, ir.Match.of(ct_state=(est, est)), (ir.Output(2),), "est"),
        ir.Flow(1, 1, ir.Match.of(ct_state=(new, new)), (ir.Conntrack(zone=5, commit=True), ir.Output(2)), "new")])
    ct, est_rule, new_rule, miss = rules
    assert ct.chain == 0 and ct.actions[0] == fl.Ct(zone=5) and ct.actions[1].verdict == "goto_chain"
    assert est_rule.chain == new_rule.chain == miss.chain == ct.actions[1].chain > 0
    assert miss.actions == (fl.Gact("pass"),) and miss.prio > max(est_rule.prio, new_rule.prio)
    trk = fl.TCA_FLOWER_KEY_CT_FLAGS_TRACKED
    assert est_rule.keys.ct_state == trk | fl.TCA_FLOWER_KEY_CT_FLAGS_ESTABLISHED == est_rule.keys.ct_state_mask
    assert new_rule.keys.ct_state == trk | fl.TCA_FLOWER_KEY_CT_FLAGS_NEW
    assert new_rule.actions == (fl.Ct(zone=5, commit=True), fl.Mirred(12))


@pytest.mark.parametrize(("nat", "expected"), [
    (ir.Nat("snat", 0x0A000007), fl.Ct(zone=5, commit=True, nat="src", nat_ipv4_min=0x0A000007,
                                       nat_ipv4_max=0x0A000007)),
    (ir.Nat("dnat", 0x0A000008), fl.Ct(zone=5, commit=True, nat="dst", nat_ipv4_min=0x0A000008,
                                       nat_ipv4_max=0x0A000008)),
    (ir.Nat(), fl.Ct(zone=5, commit=True, nat="nat")),
])
def test_conntrack_nat_is_ct_nat(nat, expected):
    rule = HwRule(1, 0, 0, ir.Match.of(eth_type=ir.ETH_TYPE_IPV4), 2, "sg",
                  (ir.Conntrack(zone=5, commit=True, nat=nat),))
    _, frule = to_flower(rule, REPS, 0)
    assert frule.actions == (expected, fl.Mirred(12))


def test_a_route_as_flower_is_admitted_by_the_simulated_mlx5():
    """The simulated NIC, with the ConnectX-6 Dx profile, takes the routed rule (it refused one pedit mixing the
    MAC sets and the TTL add: every routed port's rules were refused and kept in software)."""
    caps = load_profile("mlx5-connectx6dx").capabilities
    hop = (ir.SetField("eth_src", ROUTER), ir.SetField("eth_dst", MAC_B), ir.DecTtl(), ir.Output(2))
    pipeline = ir.Pipeline.build([ir.Flow(0, 1, ir.Match.of(in_port=1, eth_dst=ROUTER), hop, "r")], {})
    plan = partition(pipeline, {p: PortOffload(p, "sw0", caps) for p in (1, 2)}, (ir.ETH_TYPE_IPV4,))
    rules = [to_flower(rule, REPS, TC_FLAGS["skip_sw"])[1] for rule in plan.rules_of(1)]
    assert len(rules) == 2
    for rule in rules:
        admission.check(rule, caps, [11, 12])  # raises NotAdmitted with why


@pytest.mark.parametrize("eth_type, proto, family", [(ir.ETH_TYPE_IPV4, 1, "icmpv4"), (ir.ETH_TYPE_IPV6, 58, "icmpv6")])
def test_an_icmp_match_is_its_familys_flower_key_and_mlx5_takes_it(eth_type, proto, family):
    """The IR has one icmp_type for both families; flower has a key per family, and a v4 key on an IPv6 rule
    is refused by the kernel. The ConnectX-6 Dx matches both (kernel commit a3222a2da0a2: drivers/mlx5.py says
    why its profile does not claim it yet): a NIC that does takes the rule; ice matches neither."""
    mlx5 = load_profile("mlx5-connectx6dx").capabilities
    caps = dataclasses.replace(mlx5, match_fields={**mlx5.match_fields, "icmp_type": MASK_ANY, "icmp_code": MASK_ANY})
    echo = ir.Match.of(in_port=1, eth_dst=MAC_B, eth_type=eth_type, ip_proto=proto, icmp_type=8 if proto == 1 else 128,
                       icmp_code=0)
    pipeline = ir.Pipeline.build([ir.Flow(0, 1, echo, (ir.Output(2),), "echo")], {})
    plan = partition(pipeline, {p: PortOffload(p, "sw0", caps) for p in (1, 2)}, (eth_type,))
    (rule,) = plan.rules_of(1)
    frule = to_flower(rule, REPS, TC_FLAGS["skip_sw"])[1]
    assert (getattr(frule.keys, f"{family}_type"), getattr(frule.keys, f"{family}_type_mask")) == (
        8 if proto == 1 else 128, 0xFF)
    assert getattr(frule.keys, f"{family}_code_mask") == 0xFF
    other = "icmpv6" if family == "icmpv4" else "icmpv4"
    assert getattr(frule.keys, f"{other}_type") is None
    decoded, _ = fl.decode_filter(fl.encode_newfilter(dataclasses.replace(frule, handle=1), seq=1))
    assert decoded.keys == frule.keys
    admission.check(frule, caps, [11, 12])
    with pytest.raises(admission.NotAdmitted, match="icmp_type"):
        admission.check(frule, load_profile("ice-e810").capabilities, [11, 12])
