"""IR -> OpenFlow 1.3 translation (wire round trips, canonical keys, refusals) and the OpenFlow session."""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from os_ken.ofproto import ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from hwflow.backends.ovs import native, translate
from hwflow.backends.ovs.openflow import (
    OpenFlowConnection,
    OpenFlowConnectionError,
    OpenFlowError,
    hello_versions,
)
from hwflow.pipeline import ir

PORTS = {10: 1, 11: 2, 12: 7, 13: 65000}


def bits(field: str) -> st.SearchStrategy[int]:
    return st.integers(0, ir.full_mask(field))


@st.composite
def masked(draw: st.DrawFn, field: str) -> ir.FieldMatch:
    mask = draw(st.one_of(st.just(ir.full_mask(field)), bits(field)))
    return ir.FieldMatch(field, draw(bits(field)) & mask, mask)


def exact(field: str, value: int) -> ir.FieldMatch:
    return ir.FieldMatch(field, value, ir.full_mask(field))


@st.composite
def l3_terms(draw: st.DrawFn) -> list[ir.FieldMatch]:
    """A protocol stack whose OpenFlow prerequisites are all present."""
    kind = draw(st.sampled_from(["none", "eth", "ipv4", "ipv6", "arp"]))
    if kind == "none":
        return []
    if kind == "eth":
        return [exact("eth_type", draw(st.sampled_from([0x88CC, 0x8100 + 1])))]
    if kind == "arp":
        terms = [exact("eth_type", ir.ETH_TYPE_ARP)]
        if draw(st.booleans()):
            terms.append(exact("arp_op", draw(st.integers(1, 2))))
        terms += [draw(masked(f)) for f in ("arp_spa", "arp_tpa") if draw(st.booleans())]
        return terms
    v4 = kind == "ipv4"
    terms = [exact("eth_type", ir.ETH_TYPE_IPV4 if v4 else ir.ETH_TYPE_IPV6)]
    addrs = ("ipv4_src", "ipv4_dst") if v4 else ("ipv6_src", "ipv6_dst")
    terms += [draw(masked(f)) for f in addrs if draw(st.booleans())]
    proto = draw(st.sampled_from([None, 6, 17, 1 if v4 else 58]))
    if proto is None:
        return terms
    terms.append(exact("ip_proto", proto))
    l4 = {6: ("tcp_src", "tcp_dst"), 17: ("udp_src", "udp_dst")}.get(proto)
    if l4:
        terms += [draw(masked(f)) for f in l4 if draw(st.booleans())]
    elif proto == 58 and draw(st.booleans()):  # neighbor discovery: the ND fields need the exact type
        nd_type = draw(st.sampled_from([135, 136]))
        terms.append(exact("icmp_type", nd_type))
        terms += [draw(masked(f)) for f in ("nd_target", "nd_sll" if nd_type == 135 else "nd_tll")
                  if draw(st.booleans())]
    else:
        terms += [exact(f, draw(bits(f))) for f in ("icmp_type", "icmp_code") if draw(st.booleans())]
    return terms


@st.composite
def ir_matches(draw: st.DrawFn) -> ir.Match:
    terms = draw(l3_terms())
    if draw(st.booleans()):
        terms.append(exact("in_port", draw(st.sampled_from(sorted(PORTS)))))
    terms += [draw(masked(f)) for f in ("metadata", "eth_src", "eth_dst", "vlan_vid", "ct_state", "ct_mark", "tun_id",
                                        "tun_src", "tun_dst", "outport") if draw(st.booleans())]
    if draw(st.booleans()):
        terms.append(exact("ct_zone", draw(bits("ct_zone"))))
    if draw(st.booleans()):  # with a vlan_vid it can only say "tagged"
        vid = next((t for t in terms if t.field == "vlan_vid" and t.mask), None)
        terms.append(exact("vlan_tagged", 1 if vid is not None else draw(st.integers(0, 1))))
    return ir.Match(tuple(terms))


MOVABLE = ["metadata", "eth_src", "eth_dst", *(f"reg{i}" for i in range(8))]
moves = st.tuples(st.sampled_from(MOVABLE), st.sampled_from(MOVABLE)).filter(
    lambda pair: ir.FIELD_BITS[pair[0]] <= ir.FIELD_BITS[pair[1]]).map(lambda pair: ir.Move(*pair))


def conntracks(ipv4: bool, table: st.SearchStrategy[int | None]) -> st.SearchStrategy[ir.Conntrack]:
    """Conntrack actions OVS takes after an IP match: snat/dnat only committed and on IPv4."""
    nats = st.none() | st.just(ir.Nat())
    if ipv4:
        nats |= st.builds(ir.Nat, st.sampled_from(["snat", "dnat"]), bits("ipv4_dst"))
    return st.builds(lambda zone, commit, table, nat: ir.Conntrack(zone, commit or (nat is not None and
                                                                                    nat.kind is not None), table, nat),
                     bits("ct_zone"), st.booleans(), table, nats)


def with_vlan_known(actions: list[ir.Action], match: ir.Match) -> list[ir.Action]:
    """A PopVlan or vlan_vid rewrite where no tag is known present becomes a PushVlan, as OVS requires."""
    term, flag = match.get("vlan_vid"), match.get("vlan_tagged")
    tagged, out = term is not None and term.mask != 0 or flag is not None and flag.value == 1, []
    for action in actions:
        needs = isinstance(action, ir.PopVlan) or isinstance(action, ir.SetField) and action.field == "vlan_vid"
        out.append(ir.PushVlan(7) if needs and not tagged else action)
        tagged = not isinstance(out[-1], ir.PopVlan) and (tagged or isinstance(out[-1], ir.PushVlan))
    return out


@st.composite
def ir_flows(draw: st.DrawFn) -> ir.Flow:
    table = draw(st.integers(0, 250))
    match = draw(ir_matches())
    settable = ["metadata", "eth_src", "eth_dst", "vlan_vid", "tun_id", "tun_src", "tun_dst", "outport"]
    eth_type = match.get("eth_type")
    ip = eth_type is not None and eth_type.value in (ir.ETH_TYPE_IPV4, ir.ETH_TYPE_IPV6)
    ipv4 = eth_type is not None and eth_type.value == ir.ETH_TYPE_IPV4
    if ip:
        settable.append("ip_ttl")
    if ipv4:
        settable += ["ipv4_src", "ipv4_dst"]
    nd_type = match.get("icmp_type") if eth_type is not None and eth_type.value == ir.ETH_TYPE_IPV6 else None
    if nd_type is not None and nd_type.value in (135, 136):
        settable += ["nd_target", "nd_sll" if nd_type.value == 135 else "nd_tll", "nd_reserved", "nd_options_type"]
    state = match.get("ct_state")
    may_commit = state is None or not state.value & ir.CT_INV
    actions: list[ir.Action] = draw(st.lists(st.one_of(
        st.builds(ir.Output, st.sampled_from(sorted(PORTS))),
        st.sampled_from(settable).flatmap(lambda f: st.builds(ir.SetField, st.just(f), bits(f))),
        st.just(ir.OutputInPort()),
        st.just(ir.DecTtl() if ip else ir.OutputInPort()),
        moves,
        st.builds(ir.PushVlan, bits("vlan_vid")),
        st.just(ir.PopVlan()),
        conntracks(ipv4, st.none()) if ip and may_commit else st.just(ir.PopVlan()),
    ), max_size=4))
    actions = with_vlan_known(actions, match)
    tails = ["none", "goto", "drop", "punt", *(["conntrack"] if ip and may_commit else [])]
    tail = draw(st.sampled_from(tails))
    if tail == "goto":
        actions.append(ir.GotoTable(draw(st.integers(table + 1, 253))))
    elif tail == "drop":
        actions.append(ir.Drop())
    elif tail == "punt":
        actions.append(ir.Punt("dhcp"))
    elif tail == "conntrack":
        actions.append(draw(conntracks(ipv4, st.integers(0, 253))))
    return ir.Flow(table, draw(st.integers(0, 0xFFFF)), match, tuple(actions),
                   draw(st.text(min_size=1, max_size=20)))


def wire_round_trip(mod: parser.OFPFlowMod) -> parser.OFPFlowMod:
    mod.serialize()
    version, msg_type, length, xid = ofproto_parser.header(mod.buf)
    return ofproto_parser.msg(translate.DATAPATH, version, msg_type, length, xid, bytes(mod.buf))


def ir_key(flow: ir.Flow) -> tuple:
    """What must decide canonical-key equality: the IR key without match-everything terms, and without a
    ``vlan_tagged=1`` beside a ``vlan_vid`` match (which implies it: OpenFlow has one spelling for both)."""
    implied = flow.match.get("vlan_vid") is not None
    return (flow.table, flow.priority, tuple(f for f in flow.match.fields if f.mask and not (
        implied and f.field == "vlan_tagged" and f.value == 1)))


@settings(max_examples=400, deadline=None)
@given(ir_flows())
def test_flow_survives_the_wire_with_identical_canonical_keys(flow: ir.Flow) -> None:
    mod = translate.to_flow_mod(flow, PORTS)
    back = wire_round_trip(mod)
    assert back.cookie == mod.cookie == translate.owner_cookie(flow.owner)
    assert translate.flow_key(back.table_id, back.priority, back.match) == translate.flow_key(
        mod.table_id, mod.priority, mod.match)
    assert translate.instructions_key(back.instructions) == translate.instructions_key(mod.instructions)


@settings(max_examples=300, deadline=None)
@given(ir_flows(), ir_flows())
def test_canonical_keys_equal_exactly_when_ir_keys_equal(a: ir.Flow, b: ir.Flow) -> None:
    ka, kb = (translate.to_flow_mod(f, PORTS) for f in (a, b))
    same = translate.flow_key(ka.table_id, ka.priority, ka.match) == translate.flow_key(
        kb.table_id, kb.priority, kb.match)
    assert same == (ir_key(a) == ir_key(b))


@settings(max_examples=200, deadline=None)
@given(ir_flows())
def test_same_flow_with_its_match_respelled_has_the_same_key(flow: ir.Flow) -> None:
    """Explicit full masks (another spelling OVS or os-ken may use) must not change the key."""
    mod = translate.to_flow_mod(flow, PORTS)
    respelled = parser.OFPMatch(**{k: v if isinstance(v, tuple) else (v, _full(k))
                                   for k, v in mod.match.items()})
    assert translate.match_key(respelled) == translate.match_key(mod.match)


def _full(oxm: str):
    width = {"vlan_vid": 13, "icmpv4_type": 8, "icmpv4_code": 8, "icmpv6_type": 8, "icmpv6_code": 8, "reg15": 32,
             "tunnel_id": 64, "tun_ipv4_src": 32, "tun_ipv4_dst": 32, "ct_state": 32, "ipv6_nd_target": 128,
             "ipv6_nd_sll": 48, "ipv6_nd_tll": 48}.get(oxm) or ir.FIELD_BITS[oxm]
    return translate.to_user(oxm, (1 << width) - 1)


COMPILER = translate.FlowCompiler(native.Catalog())


@settings(max_examples=400, deadline=None)
@given(ir_flows(), st.integers(1, 0xFFFFFFFF))
def test_compiled_program_encodes_to_the_os_ken_flow_mod_bytes_and_keys(flow: ir.Flow, xid: int) -> None:
    assert_encodes_as_os_ken(flow, xid)


@st.composite
def nd_flows(draw: st.DrawFn) -> ir.Flow:
    """Solicitations and advertisements rewritten field by field (rare in ir_flows: one flow in forty is ND)."""
    nd_type = draw(st.sampled_from([135, 136]))
    option = "nd_sll" if nd_type == 135 else "nd_tll"
    match = ir.Match((exact("eth_type", ir.ETH_TYPE_IPV6), exact("ip_proto", 58), exact("icmp_type", nd_type),
                      *(draw(masked(f)) for f in ("nd_target", option, "metadata") if draw(st.booleans()))))
    fields = ["nd_reserved", "nd_options_type", "nd_target", option, "icmp_type", "eth_src", "ipv6_src"]
    actions = draw(st.lists(st.sampled_from(fields).flatmap(lambda f: st.builds(ir.SetField, st.just(f), bits(f))),
                            max_size=6))
    return ir.Flow(draw(st.integers(0, 250)), draw(st.integers(0, 0xFFFF)), match, (*actions, ir.OutputInPort()),
                   "port:p")


@settings(max_examples=200, deadline=None)
@given(nd_flows(), st.integers(1, 0xFFFFFFFF))
def test_nd_rewrites_encode_to_the_os_ken_bytes_and_decode_back(flow: ir.Flow, xid: int) -> None:
    assert_encodes_as_os_ken(flow, xid)
    mod = translate.to_flow_mod(flow, PORTS)
    (decoded,) = COMPILER.decode_flow_stats([flow_stats_reply([mod], [(1, 2)])])
    assert decoded.instructions == translate.instructions_key(wire_round_trip(mod).instructions)


def assert_encodes_as_os_ken(flow: ir.Flow, xid: int) -> None:
    """The fast path (IR -> program words -> encoder) is the os-ken path (IR -> OFPFlowMod), byte for byte."""
    mod = translate.to_flow_mod(flow, PORTS)
    mod.xid = xid
    mod.serialize()
    compiled = COMPILER.compile(flow, PORTS)
    words = COMPILER.flow_mod(flow.table, flow.priority, compiled.cookie, 0, ofp.OFPFC_ADD, compiled.body)
    encoders = [native.OskenEncoder(COMPILER.catalog)]
    if native.NATIVE_AVAILABLE:
        encoders.append(native.NativeEncoder(COMPILER.catalog))
    for encoder in encoders:
        (chunk,) = encoder.encode(words, xid)
        assert chunk.data == bytes(mod.buf)
    assert compiled.key == translate.flow_key(mod.table_id, mod.priority, mod.match)
    assert compiled.instructions == translate.instructions_key(mod.instructions)
    assert compiled.cookie == mod.cookie


@settings(max_examples=200, deadline=None)
@given(ir_flows())
def test_a_match_rebuilt_from_its_key_encodes_like_the_original(flow: ir.Flow) -> None:
    compiled = COMPILER.compile(flow, PORTS)
    assert COMPILER.key_body(compiled.key) == list(compiled.body[:len(COMPILER.key_body(compiled.key))])


def flow_stats_reply(mods: list[parser.OFPFlowMod], counters: list[tuple[int, int]]) -> bytes:
    """A flow stats reply as OVS sends it: each entry's match and instructions as the flow_mod had them."""
    body = b""
    for mod, (packets, octets) in zip(mods, counters):
        mod.serialize()
        rest = bytes(mod.buf[48:])  # after ofp_header + the flow_mod's fixed part: match, instructions
        body += struct.pack("!HBxIIHHHH4xQQQ", 48 + len(rest), mod.table_id, 1, 2, mod.priority, 0, 0, 0,
                            mod.cookie, packets, octets) + rest
    header = struct.pack("!BBHIHH4x", ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, 16 + len(body), 7,
                         ofp.OFPMP_FLOW, 0)
    return header + body


@settings(max_examples=300, deadline=None)
@given(st.lists(ir_flows(), min_size=1, max_size=5), st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))
def test_flow_stats_decode_to_the_keys_os_ken_parsing_gives(flows: list[ir.Flow], packets: int, octets: int
                                                            ) -> None:
    mods = [translate.to_flow_mod(f, PORTS) for f in flows]
    raw = flow_stats_reply(mods, [(packets, octets)] * len(mods))
    parsed = ofproto_parser.msg(translate.DATAPATH, ofp.OFP_VERSION, ofp.OFPT_MULTIPART_REPLY, len(raw), 7, raw)
    decoded = COMPILER.decode_flow_stats([raw])
    assert [(d.key, d.instructions, d.cookie, d.n_packets, d.n_bytes) for d in decoded] == [
        (translate.flow_key(s.table_id, s.priority, s.match), translate.instructions_key(s.instructions), s.cookie,
         s.packet_count, s.byte_count) for s in parsed.body]


def test_foreign_actions_and_fields_in_a_dump_decode_as_unknown_not_as_ours() -> None:
    mod = parser.OFPFlowMod(translate.DATAPATH, 1, 0, 3, ofp.OFPFC_ADD, 0, 0, 5, ofp.OFP_NO_BUFFER, ofp.OFPP_ANY,
                            ofp.OFPG_ANY, 0, parser.OFPMatch(reg3=(4, 0xF)), [parser.OFPInstructionActions(
                                ofp.OFPIT_APPLY_ACTIONS, [parser.NXActionCTClear(), parser.OFPActionOutput(2)])])
    (flow,) = COMPILER.decode_flow_stats([flow_stats_reply([mod], [(0, 0)])])
    assert flow.key == (3, 5, (("reg3", 4, 0xF),))
    (apply,) = flow.instructions
    assert apply[1][0][:2] == ("unknown", ofp.OFPAT_EXPERIMENTER) and apply[1][1] == ("output", 2)


@pytest.mark.parametrize("flow", [
    ir.Flow(0, 1, ir.Match.of(in_port=99), (), "port:p"),
    ir.Flow(3, 1, ir.Match(), (ir.GotoTable(3),), "x"),
    ir.Flow(0, 70000, ir.Match(), (), "x"),
    ir.Flow(0, 1, ir.Match.of(ipv4_dst=1), (), "x"),
])
def test_compiler_refuses_exactly_what_translation_refuses(flow: ir.Flow) -> None:
    with pytest.raises(translate.TranslationError) as slow:
        translate.to_flow_mod(flow, PORTS)
    with pytest.raises(type(slow.value)) as fast:
        COMPILER.compile(flow, PORTS)
    assert str(fast.value) == str(slow.value)


def test_translation_of_a_classifier_flow() -> None:
    flow = ir.Flow(0, 100, ir.Match.of(in_port=11, vlan_vid=5),
                   (ir.SetField("metadata", 7), ir.Output(12), ir.GotoTable(3)), "port:a")
    mod = translate.to_flow_mod(flow, PORTS)
    assert mod.match["in_port"] == 2
    assert mod.match["vlan_vid"] == 5 | ofp.OFPVID_PRESENT
    assert translate.instructions_key(mod.instructions) == (
        ("apply", (("output", 7),)), ("write_metadata", 7, translate.ALL_ONES_64), ("goto", 3))


def test_vlan_tagged_is_the_present_bit_of_vlan_vid() -> None:
    def vlan(**terms: int) -> object:
        return translate.to_flow_mod(ir.Flow(0, 1, ir.Match.of(in_port=11, **terms), (ir.Drop(),), "x"),
                                     PORTS).match.get("vlan_vid")

    assert vlan(vlan_tagged=0) == ofp.OFPVID_NONE  # untagged frames only
    assert vlan(vlan_tagged=1) == (ofp.OFPVID_PRESENT, ofp.OFPVID_PRESENT)  # any tag
    assert vlan(vlan_tagged=1, vlan_vid=5) == 5 | ofp.OFPVID_PRESENT
    with pytest.raises(translate.TranslationError, match="vlan_tagged=0 beside a vlan_vid match never holds"):
        vlan(vlan_tagged=0, vlan_vid=5)
    flow = ir.Flow(0, 1, ir.Match.of(in_port=11, vlan_tagged=1), (ir.PopVlan(), ir.Output(12)), "x")
    assert translate.instructions_key(translate.to_flow_mod(flow, PORTS).instructions) == (
        ("apply", (("pop_vlan",), ("output", 7))),)  # a tag is known present: OVS takes the pop


def test_a_move_into_a_wider_field_clears_it_first_as_the_ir_copies_the_whole_value() -> None:
    flow = ir.Flow(0, 1, ir.Match.of(eth_type=ir.ETH_TYPE_IPV4), (
        ir.Move("reg1", "metadata"), ir.Move("eth_src", "eth_dst"), ir.DecTtl(), ir.OutputInPort()), "router:r")
    assert translate.instructions_key(translate.to_flow_mod(flow, PORTS).instructions) == (("apply", (
        ("set_field", "metadata", 0), ("reg_move", "reg1", "metadata", 32, 0, 0),
        ("reg_move", "eth_src", "eth_dst", 48, 0, 0), ("dec_nw_ttl",), ("output", ofp.OFPP_IN_PORT))),)


@pytest.mark.parametrize("action, reason", [
    (ir.Move("vlan_vid", "reg0"), "a move of vlan_vid has no OpenFlow translation"),
    (ir.DecTtl(), "dec_ttl on nw_ttl needs an exact match on eth_type=0x0800 or 0x86dd"),
    (ir.SetField("ip_ttl", 9), "set_field on nw_ttl needs an exact match on eth_type"),
    (ir.Move("ipv4_src", "reg0"), "a move from ipv4_src needs an exact match on eth_type=0x0800"),
])
def test_actions_openflow_cannot_express_here_are_refused(action: ir.Action, reason: str) -> None:
    flow = ir.Flow(0, 1, ir.Match(), (action,), "x")
    for translation in (COMPILER.compile, translate.to_flow_mod):
        with pytest.raises(translate.TranslationError, match=reason):
            translation(flow, PORTS)


def test_drop_has_no_instructions_and_stops_the_list() -> None:
    flow = ir.Flow(2, 1, ir.Match(), (ir.Drop(), ir.Output(10)), "net:x")
    assert translate.to_flow_mod(flow, PORTS).instructions == []


@pytest.mark.parametrize("match, missing", [
    (ir.Match.of(ipv4_dst=1), "eth_type=0x0800"),
    (ir.Match.of(eth_type=ir.ETH_TYPE_IPV6, ipv4_dst=1), "eth_type=0x0800"),
    (ir.Match.of(eth_type=ir.ETH_TYPE_IPV4, tcp_dst=80), "ip_proto=6"),
    (ir.Match.of(ip_proto=6, tcp_dst=80), "eth_type=0x0800 or 0x86dd"),
    (ir.Match.of(eth_type=ir.ETH_TYPE_IPV6, ip_proto=1, icmp_type=8), "eth_type=0x0800"),
    (ir.Match.of(arp_tpa=5), "eth_type=0x0806"),
])
def test_missing_prerequisite_names_the_flow_and_the_term(match: ir.Match, missing: str) -> None:
    flow = ir.Flow(4, 9, match, (), ir.Owner("router", "r1"))
    with pytest.raises(translate.TranslationError) as err:
        translate.to_flow_mod(flow, PORTS)
    assert "owner='router:r1'" in str(err.value) and missing in str(err.value)


NS = {"eth_type": ir.ETH_TYPE_IPV6, "ip_proto": 58, "icmp_type": 135}


@pytest.mark.parametrize("field", ["nd_reserved", "nd_options_type"])
def test_nd_header_fields_need_an_nd_type_to_be_set(field: str) -> None:
    flow = ir.Flow(0, 1, ir.Match.of(eth_type=ir.ETH_TYPE_IPV6, ip_proto=58, icmp_type=128),
                   (ir.SetField(field, 1),), "port:p")
    with pytest.raises(translate.TranslationError, match=f"set_field on {field} needs an exact match on "
                                                         "icmp_type=135 or 136"):
        translate.to_flow_mod(flow, PORTS)


def test_an_nd_answer_sets_ovs_ericsson_fields_with_their_ovs_headers() -> None:
    """OXM class 0x1000 (OVS's ERICOXM_OF), fields 1 and 2, as `ovs-ofctl ofp-print` decodes them; the dump
    decodes back to the names."""
    flow = ir.Flow(4, 100, ir.Match.of(**NS, nd_target=1), (
        ir.SetField("icmp_type", 136), ir.SetField("nd_reserved", 0x60000000), ir.SetField("nd_options_type", 2),
        ir.SetField("nd_sll", 0xFA163E000002), ir.OutputInPort()), "port:p")
    mod = translate.to_flow_mod(flow, PORTS)
    mod.serialize()
    assert bytes.fromhex("0019001010000204600000000000000000190010100004010200000000000000") in bytes(mod.buf)
    (flow_back,) = COMPILER.decode_flow_stats([flow_stats_reply([mod], [(0, 0)])])
    assert flow_back.instructions == (("apply", (
        ("set_field", "icmpv6_type", 136), ("set_field", "nd_reserved", 0x60000000),
        ("set_field", "nd_options_type", 2), ("set_field", "ipv6_nd_sll", 0xFA163E000002),
        ("output", ofp.OFPP_IN_PORT))),)


def test_set_field_needs_its_prerequisite_too() -> None:
    flow = ir.Flow(0, 1, ir.Match(), (ir.SetField("ipv4_dst", 1),), "fip:1")
    with pytest.raises(translate.TranslationError, match="set_field on ipv4_dst needs"):
        translate.to_flow_mod(flow, PORTS)


@pytest.mark.parametrize("flow", [
    ir.Flow(0, 1, ir.Match.of(in_port=99), (), "port:p"),
    ir.Flow(0, 1, ir.Match(), (ir.Output(10), ir.Output(99)), "port:p"),
])
def test_unbound_port_is_reported_with_its_key(flow: ir.Flow) -> None:
    with pytest.raises(translate.UnboundPort) as err:
        translate.to_flow_mod(flow, PORTS)
    assert err.value.port_key == 99 and err.value.flow is flow


@pytest.mark.parametrize("flow, reason", [
    (ir.Flow(3, 1, ir.Match(), (ir.GotoTable(3),), "x"), "only jumps forward"),
    (ir.Flow(3, 1, ir.Match(), (ir.GotoTable(4), ir.Output(10)), "x"), "after GotoTable"),
    (ir.Flow(0, 1, ir.Match.of(eth_type=ir.ETH_TYPE_IPV4, ip_ttl=1), (), "x"), "cannot match ip_ttl"),
    (ir.Flow(0, 1, ir.Match.of(in_port=(10, 0xF)), (), "x"), "in_port can only be matched exactly"),
    (ir.Flow(255, 1, ir.Match(), (), "x"), "table 255"),
    (ir.Flow(0, 70000, ir.Match(), (), "x"), "priority 70000"),
    (ir.Flow(0, 1, ir.Match.of(**NS, nd_reserved=0), (), "x"), "nd_reserved can only be set"),
    (ir.Flow(0, 1, ir.Match.of(**NS, nd_options_type=1), (), "x"), "nd_options_type can only be set"),
])
def test_untranslatable_flows_are_refused_clearly(flow: ir.Flow, reason: str) -> None:
    with pytest.raises(translate.TranslationError, match=reason):
        translate.to_flow_mod(flow, PORTS)


def test_cookie_is_marked_stable_and_owner_specific() -> None:
    cookie = translate.owner_cookie("port:a")
    assert cookie >> 48 == translate.HWFLOW_MARK and translate.is_hwflow_cookie(cookie)
    assert cookie == 0x4857E6905E0C0F56  # must not change between releases: restarts reconcile by it
    assert translate.owner_cookie("port:b") != cookie
    assert translate.owner_cookie(ir.Owner("port", "a")) == cookie  # an owner's cookie is its text's
    assert not translate.is_hwflow_cookie(0x1234)


def encode_hello(version: int, bitmap_versions: set[int], padding_elements: int) -> bytes:
    """A HELLO as OpenFlow 1.3.1 section 7.5.1 lays it out (os-ken does not serialize elements)."""
    elements = b"".join(struct.pack("!HH4x", 0xFFFF, 8) for _ in range(padding_elements))
    words = max(1, (max(bitmap_versions) + 32) // 32)
    bitmap = sum(1 << v for v in bitmap_versions).to_bytes(4 * words, "little")
    body = b"".join(bitmap[i:i + 4][::-1] for i in range(0, len(bitmap), 4))
    elem = struct.pack("!HH", ofp.OFPHET_VERSIONBITMAP, 4 + len(body)) + body
    elem += b"\0" * (-len(elem) % 8)
    payload = elements + elem
    return struct.pack("!BBHI", version, ofp.OFPT_HELLO, 8 + len(payload), 1) + payload


@given(st.integers(1, 6), st.sets(st.integers(1, 70), min_size=1), st.integers(0, 2))
def test_hello_version_bitmap_is_read_back(version: int, versions: set[int], padding: int) -> None:
    assert hello_versions(encode_hello(version, versions, padding)) == versions


def test_hello_without_bitmap_offers_every_version_up_to_its_own() -> None:
    assert hello_versions(bytes([1, 0, 0, 8, 0, 0, 0, 1])) == {1}
    assert hello_versions(bytes([4, 0, 0, 8, 0, 0, 0, 1])) == {1, 2, 3, 4}


# --- the OpenFlow connection against a scripted switch ------------------------------------------
# The behaviour real OVS rarely shows on demand: echo requests, multi-part replies,
# errors inside a batch, a dropped session.


def of_message(msg_type: int, xid: int, body: bytes = b"") -> bytes:
    return struct.pack("!BBHI", ofp.OFP_VERSION, msg_type, 8 + len(body), xid) + body


def port_stats_part(xid: int, ports: list[tuple[int, int, int]], more: bool) -> bytes:
    body = struct.pack(ofp.OFP_MULTIPART_REPLY_PACK_STR, ofp.OFPMP_PORT_STATS,
                       ofp.OFPMPF_REPLY_MORE if more else 0)
    for port_no, rx, tx in ports:
        body += struct.pack(ofp.OFP_PORT_STATS_PACK_STR, port_no, rx, tx, *([0] * 10), 0, 0)
    return of_message(ofp.OFPT_MULTIPART_REPLY, xid, body)


def read_exact(conn: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError("client hung up")
        data += chunk
    return data


def read_of_message(conn: socket.socket) -> tuple[int, int, bytes]:
    _, msg_type, length, xid = struct.unpack("!BBHI", read_exact(conn, 8))
    return msg_type, xid, read_exact(conn, length - 8)


@pytest.fixture
def switch(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "sw.mgmt"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(2)
    server.settimeout(5)
    try:
        yield server, f"unix:{path}"
    finally:
        server.close()


def accept_session(server: socket.socket) -> socket.socket:
    conn, _ = server.accept()
    conn.settimeout(5)
    conn.sendall(of_message(ofp.OFPT_HELLO, 1))
    assert read_of_message(conn)[0] == ofp.OFPT_HELLO
    return conn


def serve(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def test_connection_answers_echo_joins_parts_maps_errors_and_reconnects(
        switch: tuple[socket.socket, str], caplog: pytest.LogCaptureFixture) -> None:
    server, endpoint = switch
    caplog.set_level(logging.INFO, logger="hwflow.backends.ovs.openflow")
    seen: dict[str, object] = {}

    def first_session() -> None:
        conn = accept_session(server)
        conn.sendall(of_message(ofp.OFPT_ECHO_REQUEST, 77, b"ping"))
        # The echo reply and the client's port stats request may come in either order.
        received = {msg[0]: msg for msg in (read_of_message(conn), read_of_message(conn))}
        seen["echo"] = received.get(ofp.OFPT_ECHO_REPLY)
        xid = received[ofp.OFPT_MULTIPART_REQUEST][1]
        conn.sendall(port_stats_part(xid, [(1, 10, 20)], more=True)
                     + port_stats_part(xid, [(2, 30, 40)], more=False))
        mod_type, mod_xid, _ = read_of_message(conn)
        _, barrier_xid, _ = read_of_message(conn)
        seen["mod_type"] = mod_type
        conn.sendall(of_message(ofp.OFPT_ERROR, mod_xid, struct.pack("!HH", ofp.OFPET_BAD_ACTION, 4))
                     + of_message(ofp.OFPT_BARRIER_REPLY, barrier_xid))
        conn.close()

    thread = serve(first_session)
    of = OpenFlowConnection(endpoint, timeout=5)
    try:
        of.connect()
        assert of.port_stats() == {1: (10, 20), 2: (30, 40)}
        flow = ir.Flow(0, 1, ir.Match(), (ir.Output(10),), "port:p")
        rejected = of.send([translate.to_flow_mod(flow, PORTS)])
        assert [(r.type, r.code, r.msg.cookie) for r in rejected] == [
            (ofp.OFPET_BAD_ACTION, 4, translate.owner_cookie("port:p"))]
        thread.join(5)
        assert seen["echo"] == (ofp.OFPT_ECHO_REPLY, 77, b"ping")
        assert seen["mod_type"] == ofp.OFPT_FLOW_MOD

        def second_session() -> None:
            conn = accept_session(server)
            _, xid, _ = read_of_message(conn)
            conn.sendall(port_stats_part(xid, [(3, 1, 2)], more=False))
            assert conn.recv(1) == b""  # until the client closes

        thread = serve(second_session)
        assert of.port_stats() == {3: (1, 2)}
        assert "lost" in caplog.text and "re-established" in caplog.text
    finally:
        of.close()
        thread.join(5)


def test_unreachable_endpoint_and_bad_endpoint_are_explained(tmp_path: Path) -> None:
    with pytest.raises(OpenFlowConnectionError, match="is ovs-vswitchd running"):
        OpenFlowConnection(f"unix:{tmp_path}/missing.mgmt", timeout=1).connect()
    with pytest.raises(OpenFlowError, match="use unix:PATH or tcp:HOST:PORT"):
        OpenFlowConnection("ssl:1.2.3.4")


def test_program_writer_sends_the_parts_before_a_bad_one_and_nothing_after(
        switch: tuple[socket.socket, str]) -> None:
    """The error surfaces in the caller's thread from finish(); no barrier follows a failed batch."""
    server, endpoint = switch
    received: list[tuple[int, int]] = []

    def session() -> None:
        conn = accept_session(server)
        try:
            while True:
                msg_type, xid, _ = read_of_message(conn)
                received.append((msg_type, xid))
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close()

    thread = serve(session)
    good = COMPILER.compile(ir.Flow(0, 1, ir.Match(), (ir.Output(10),), "port:p"), PORTS)
    words = COMPILER.flow_mod(0, 1, good.cookie, 0, ofp.OFPFC_ADD, good.body)
    of = OpenFlowConnection(endpoint, timeout=5)
    encoder = native.best_encoder(COMPILER.catalog)
    try:
        with pytest.raises(native.EncodeError, match="not a template index"):
            with of.writer(encoder) as writer:
                writer.add(words * 3, 3)
                writer.add([10**9], 1)
                writer.add(words, 1)
                writer.finish()
        of.close()
        thread.join(5)
        assert [t for t, _ in received] == [ofp.OFPT_FLOW_MOD] * 3
        assert len({xid for _, xid in received}) == 3
    finally:
        of.close()
        thread.join(5)


def test_a_move_dumped_with_nxm_names_keys_like_the_oxm_move_we_sent() -> None:
    """OVS dumps move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[] for the eth_src -> eth_dst move we sent."""
    def move(src: str, dst: str) -> parser.OFPFlowMod:
        return parser.OFPFlowMod(translate.DATAPATH, 1, 0, 3, ofp.OFPFC_ADD, 0, 0, 5, ofp.OFP_NO_BUFFER,
                                 ofp.OFPP_ANY, ofp.OFPG_ANY, 0, parser.OFPMatch(), [parser.OFPInstructionActions(
                                     ofp.OFPIT_APPLY_ACTIONS, [parser.NXActionRegMove(src, dst, 48, 0, 0)])])

    sent, dumped = (COMPILER.decode_flow_stats([flow_stats_reply([m], [(0, 0)])])[0]
                    for m in (move("eth_src", "eth_dst"), move("eth_src_nxm", "eth_dst_nxm")))
    assert sent.instructions == dumped.instructions == (("apply", (("reg_move", "eth_src", "eth_dst", 48, 0, 0),)),)
    assert translate.instructions_key(move("eth_src_nxm", "eth_dst_nxm").instructions) == sent.instructions


IPV4 = ir.Match.of(eth_type=ir.ETH_TYPE_IPV4)
CONTROLLER = ("output", ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)
NO_RANGE = (None,) * 6


@pytest.mark.parametrize("match, actions, want", [
    (ir.Match(), (ir.PushVlan(5), ir.Output(10)),
     (("apply", (("push_vlan", 0x8100), ("set_field", "vlan_vid", 5 | ofp.OFPVID_PRESENT), ("output", 1))),)),
    (ir.Match.of(vlan_vid=5), (ir.PopVlan(), ir.Output(10)), (("apply", (("pop_vlan",), ("output", 1))),)),
    (ir.Match.of(vlan_vid=5), (ir.SetField("vlan_vid", 9),),
     (("apply", (("set_field", "vlan_vid", 9 | ofp.OFPVID_PRESENT),)),)),
    # The punt ends the list; the metadata set before it is written in place so the packet-in carries it.
    (ir.Match(), (ir.SetField("metadata", 3), ir.Punt("dhcp"), ir.Output(10), ir.GotoTable(9)),
     (("apply", (("set_field", "metadata", 3), CONTROLLER)),)),
    (IPV4, (ir.SetField("metadata", 3), ir.Conntrack(7, commit=True, table=20, nat=ir.Nat("snat", 0x0A000001))),
     (("apply", (("set_field", "metadata", 3), ("ct", 1, None, 7, 20, 0, (("nat", 1, 0x0A000001, *NO_RANGE[1:]),)))),)),
    (IPV4, (ir.Conntrack(7, commit=True, nat=ir.Nat("dnat", 0x0A000002)), ir.Output(10)),
     (("apply", (("ct", 1, None, 7, 255, 0, (("nat", 2, 0x0A000002, *NO_RANGE[1:]),)), ("output", 1))),)),
    (ir.Match.of(eth_type=ir.ETH_TYPE_IPV6), (ir.Conntrack(0, table=5, nat=ir.Nat()),),
     (("apply", (("ct", 0, None, 0, 5, 0, (("nat", 0, *NO_RANGE),)),)),)),
    (ir.Match(), (ir.SetField("tun_id", 100), ir.SetField("tun_dst", 0xC0A80001), ir.Output(10)),
     (("apply", (("set_field", "tunnel_id", 100), ("set_field", "tun_ipv4_dst", 0xC0A80001), ("output", 1))),)),
])
def test_new_actions_translate_to_their_openflow_form_on_both_paths(match: ir.Match, actions: tuple,
                                                                    want: tuple) -> None:
    flow = ir.Flow(1, 1, match, actions, "x")
    assert translate.instructions_key(translate.to_flow_mod(flow, PORTS).instructions) == want
    assert COMPILER.compile(flow, PORTS).instructions == want


def test_ct_tunnel_matches_widen_ct_state_to_ovs_32_bits() -> None:
    flow = ir.Flow(2, 1, ir.Match.of(ct_state=ir.CT_TRK | ir.CT_EST, ct_zone=7, ct_mark=(4, 7), tun_id=100,
                                     tun_src=0x01020304, tun_dst=(0x01020300, 0xFFFFFF00)), (), "x")
    key = (2, 1, (("ct_mark", 4, 7), ("ct_state", 0x22, 0xFF), ("ct_zone", 7, 0xFFFF),
                  ("tun_ipv4_dst", 0x01020300, 0xFFFFFF00), ("tun_ipv4_src", 0x01020304, 0xFFFFFFFF),
                  ("tunnel_id", 100, translate.ALL_ONES_64)))
    mod = translate.to_flow_mod(flow, PORTS)
    assert mod.match["ct_state"] == (0x22, 0xFF) and mod.match["tun_ipv4_src"] == "1.2.3.4"
    assert translate.flow_key(mod.table_id, mod.priority, mod.match) == COMPILER.compile(flow, PORTS).key == key


@pytest.mark.parametrize("match, action, reason", [
    (ir.Match(), ir.PopVlan(), "PopVlan needs a VLAN tag: match a vlan_vid or PushVlan first"),
    (ir.Match(), ir.SetField("vlan_vid", 3), "a SetField of vlan_vid needs a VLAN tag"),
    (ir.Match(), ir.Conntrack(1), "the action ct needs an exact match on eth_type=0x0800 or 0x86dd"),
    (ir.Match.of(eth_type=ir.ETH_TYPE_IPV6), ir.Conntrack(1, True, nat=ir.Nat("snat", 1)),
     "nat to an IPv4 address needs an exact match on eth_type=0x0800"),
    (IPV4, ir.Conntrack(1, nat=ir.Nat("dnat", 1)), "Conntrack with dnat needs commit=True"),
    (ir.Match.of(eth_type=ir.ETH_TYPE_IPV4, ct_state=(ir.CT_INV, ir.CT_INV)), ir.Conntrack(1, commit=True),
     "commit of a packet matched as ct_state \\+inv"),
    (IPV4, ir.Conntrack(1, table=254), "Conntrack table 254 is outside OpenFlow.s 0..253"),
    (ir.Match(), ir.SetField("ct_mark", 1), "ct_mark cannot be rewritten"),
    (ir.Match(), ir.Move("reg0", "ct_mark"), "a move into ct_mark"),
    (ir.Match.of(ct_zone=(1, 0xF)), ir.Output(10), "ct_zone can only be matched exactly"),
])
def test_what_ovs_would_refuse_is_refused_with_the_reason_on_both_paths(match: ir.Match, action: ir.Action,
                                                                         reason: str) -> None:
    flow = ir.Flow(0, 1, match, (action,), "x")
    for translation in (COMPILER.compile, translate.to_flow_mod):
        with pytest.raises(translate.TranslationError, match=reason):
            translation(flow, PORTS)


def test_after_a_recirculating_conntrack_only_drop_may_follow() -> None:
    """OVS would run later actions on the untracked packet; the IR's walk goes on in the ct table only."""
    ct = ir.Conntrack(1, table=9)
    assert COMPILER.compile(ir.Flow(0, 1, IPV4, (ct, ir.Drop()), "x"), PORTS).instructions == (
        ("apply", (("ct", 0, None, 1, 9, 0, ()),)),)
    flow = ir.Flow(0, 1, IPV4, (ct, ir.Output(10)), "x")
    for translation in (COMPILER.compile, translate.to_flow_mod):
        with pytest.raises(translate.TranslationError, match=r"after Conntrack\(table=...\)"):
            translation(flow, PORTS)
