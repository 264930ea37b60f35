"""The simulated eswitch: tc semantics, refusals a real driver would give, counters."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import socket

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6Unknown, IPv6
from scapy.layers.l2 import ARP, Dot1Q, Ether

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc import netlink as nl
from hwflow.offload.capabilities import CHAIN_MISS_CONTINUE, CHAIN_MISS_RESTART, Capabilities
from hwflow.sim.dataplane import DataPlane, Port, close_ports
from hwflow.sim.eswitch import Eswitch, apply_csum, apply_pedit, apply_vlan, parse_frame, rewrite
from hwflow.sim.profile import ProfileError, load_profile, parse_profile

REP0, REP1, REP2 = 101, 102, 103
MAC0, MAC1 = "02:00:00:00:00:01", "02:00:00:00:00:02"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def switch(profile: str = "sim-basic", clock: Clock | None = None) -> Eswitch:
    return Eswitch("sim0", load_profile(profile), [REP0, REP1, REP2], clock=clock or Clock())


def ipv4_rule(prio: int = 10, handle: int = 1, dst: int = 0x0A000002, out: int = REP1) -> fl.FlowerRule:
    return fl.FlowerRule(REP0, prio, handle, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=dst), (fl.Mirred(out),))


def request(sw: Eswitch, data: bytes) -> list[nl.Message]:
    return [m for raw in sw.handle_request(data) for m in nl.split_messages(raw)]


def error_of(replies: list[nl.Message]) -> tuple[int, str | None]:
    errors = [nl.decode_error(m) for m in replies if m.type == nl.NLMSG_ERROR]
    assert len(errors) == 1, replies
    return errors[0]


def add(sw: Eswitch, rule: fl.FlowerRule, seq: int = 1, **kw) -> tuple[int, str | None]:
    return error_of(request(sw, fl.encode_newfilter(rule, seq, **kw)))


def dump(sw: Eswitch, ifindex: int = REP0) -> list[tuple[fl.FlowerRule, fl.RuleStats | None]]:
    replies = request(sw, fl.encode_dump(ifindex, 7))
    assert replies[-1].type == nl.NLMSG_DONE and replies[-1].seq == 7
    return [fl.decode_filter_message(m) for m in replies[:-1]]


def frame(dst: str = "10.0.0.2", sport: int = 1234, dport: int = 80) -> bytes:
    return bytes(Ether(src=MAC0, dst=MAC1) / IP(src="10.0.0.1", dst=dst) / TCP(sport=sport, dport=dport))


def test_add_acks_and_dump_returns_the_rule_with_stats() -> None:
    sw = switch()
    rule = ipv4_rule()
    assert add(sw, rule) == (0, None)
    ((got, stats),) = dump(sw)
    assert got == rule
    assert stats == fl.RuleStats(0, 0, 0)
    assert dump(sw, REP1) == []


def test_a_device_without_counters_reports_no_stats() -> None:
    sw = switch("ice-e810")
    assert not sw.profile.capabilities.counters
    rule = fl.FlowerRule(REP0, 10, 1, fl.ETH_P_IP, fl.FlowerKeys(eth_dst=0x02_00_00_00_00_02), (fl.Mirred(REP1),))
    assert add(sw, rule) == (0, None)
    sw.classify(REP0, bytes.fromhex("020000000002") + bytes(6) + b"\x08\x00" + bytes(40))
    assert [stats for _, stats in dump(sw)] == [None]


def test_echo_returns_the_rule_with_the_handle_the_switch_chose() -> None:
    sw = switch()
    flags = nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_EXCL | nl.NLM_F_ECHO
    add(sw, ipv4_rule(handle=1))
    replies = request(sw, fl.encode_newfilter(ipv4_rule(handle=0, dst=0x0A000003), 5, flags=flags))
    echo, ack = replies
    assert (echo.type, echo.seq) == (fl.RTM_NEWTFILTER, 5)
    assert fl.decode_filter_message(echo)[0] == ipv4_rule(handle=2, dst=0x0A000003)
    assert nl.decode_error(ack) == (0, None)


def test_duplicate_with_excl_is_eexist_and_without_it_replaces() -> None:
    sw = switch()
    add(sw, ipv4_rule())
    err, text = add(sw, ipv4_rule(out=REP2))
    assert err == -errno.EEXIST and "already exists" in text
    assert add(sw, ipv4_rule(out=REP2), flags=nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE) == (0, None)
    assert [r.actions for r, _ in dump(sw)] == [(fl.Mirred(REP2),)]
    err, _ = add(sw, ipv4_rule(handle=9))  # same keys, same prio: flower refuses the twin
    assert err == -errno.EEXIST


def test_keys_freed_by_a_replace_or_a_delete_can_be_used_again_in_the_prio() -> None:
    sw = switch()
    replace = nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE
    add(sw, ipv4_rule(handle=1, dst=1))
    assert add(sw, ipv4_rule(handle=1, dst=2), flags=replace) == (0, None)  # handle 1 now matches dst 2
    assert add(sw, ipv4_rule(handle=2, dst=1)) == (0, None)  # so dst 1 is free again
    assert add(sw, ipv4_rule(handle=3, dst=2))[0] == -errno.EEXIST
    assert error_of(request(sw, fl.encode_delfilter(ipv4_rule(handle=1), 2))) == (0, None)
    assert add(sw, ipv4_rule(handle=3, dst=2)) == (0, None)
    flush_prio = dataclasses.replace(ipv4_rule(), handle=0)
    assert error_of(request(sw, fl.encode_delfilter(flush_prio, 3))) == (0, None)
    assert dump(sw) == []
    assert add(sw, ipv4_rule(handle=7, dst=1)) == (0, None)
    assert [r.handle for r, _ in dump(sw)] == [7]


def test_delete_and_missing_rules() -> None:
    sw = switch()
    add(sw, ipv4_rule())
    err, text = error_of(request(sw, fl.encode_delfilter(ipv4_rule(handle=5), 2)))
    assert err == -errno.ENOENT and "handle 5" in text
    assert error_of(request(sw, fl.encode_delfilter(ipv4_rule(), 3))) == (0, None)
    assert dump(sw) == []


def test_unknown_device_is_enodev() -> None:
    err, text = add(switch(), dataclasses.replace(ipv4_rule(), ifindex=999))
    assert err == -errno.ENODEV and "999" in text
    assert error_of(request(switch(), fl.encode_dump(999, 1)))[0] == -errno.ENODEV


@pytest.mark.parametrize(("rule", "what"), [
    (fl.FlowerRule(REP0, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=0x0A000002, ipv4_dst_mask=0xFF00FFFF),
                   (fl.Mirred(REP1),)), "match on ipv4_dst with mask 0xff00ffff"),
    (fl.FlowerRule(REP0, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(), (fl.Gact("pass"),)), "action pass"),
    (fl.FlowerRule(REP0, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(), (fl.Mirred(REP1, redirect=False),)),
     "action mirred egress mirror"),
    (fl.FlowerRule(REP0, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(), (fl.Mirred(1),)), "redirect to ifindex 1"),
    (fl.FlowerRule(REP0, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(), (fl.Mirred(REP1), fl.Gact("drop"))),
     "2 actions in one rule"),
    (fl.FlowerRule(REP0, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(), (fl.Gact("drop"),),
                   flags=fl.TCA_CLS_FLAGS_SKIP_HW),
     "a skip_hw rule"),
])
def test_what_the_profile_lacks_is_eopnotsupp_with_a_message(rule: fl.FlowerRule, what: str) -> None:
    sw = switch()
    err, text = add(sw, rule)
    assert err == -errno.EOPNOTSUPP
    assert text.startswith(f"simnic sim0: {what}") and text.endswith("is not supported by profile sim-basic")
    assert dump(sw) == []


def test_a_key_hwflow_does_not_model_is_eopnotsupp() -> None:
    msg = nl.split_messages(fl.encode_newfilter(ipv4_rule(), 1))[0]
    attrs = dict(nl.parse_attrs(msg.payload[fl.TCMSG.size:]))
    options = attrs[fl.TCA_OPTIONS] + nl.nla(67, b"\3")  # TCA_FLOWER_KEY_MPLS_TTL
    payload = (msg.payload[:fl.TCMSG.size] + nl.nla_str(fl.TCA_KIND, "flower")
               + nl.nla(fl.TCA_OPTIONS, options))
    err, text = error_of(request(switch(), nl.encode_message(fl.RTM_NEWTFILTER, msg.flags, 1, payload)))
    assert err == -errno.EOPNOTSUPP and "attribute 67" in text


def test_full_table_is_enospc_and_keeps_what_it_has() -> None:
    sw = switch("sim-tiny")
    rules = [ipv4_rule(handle=i + 1, dst=0x0A000100 + i) for i in range(9)]
    results = [add(sw, r, seq=i + 1) for i, r in enumerate(rules)]
    assert results[:8] == [(0, None)] * 8
    assert results[8][0] == -errno.ENOSPC and "full" in results[8][1]
    assert [r for r, _ in dump(sw)] == rules[:8]
    replace = nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE
    assert add(sw, rules[0], flags=replace) == (0, None)  # a replace needs no room


def test_a_batch_gets_one_answer_per_message_in_order() -> None:
    sw = switch()
    batch = fl.encode_newfilter(ipv4_rule(), 1) + fl.encode_newfilter(ipv4_rule(), 2) + \
        fl.encode_newfilter(ipv4_rule(handle=2, dst=3), 3)
    answers = [(m.seq, nl.decode_error(m)[0]) for m in request(sw, batch)]
    assert answers == [(1, 0), (2, -errno.EEXIST), (3, 0)]


def test_lowest_prio_wins_and_counters_move() -> None:
    clock = Clock()
    sw = switch(clock=clock)
    add(sw, ipv4_rule(prio=20, handle=1, out=REP2))
    http = fl.FlowerKeys(ip_proto=6, tcp_dst=80)
    add(sw, fl.FlowerRule(REP0, 10, 1, fl.ETH_P_IP, http, (fl.Mirred(REP1),)))
    assert sw.classify(REP0, frame()) == [fl.Mirred(REP1)]
    assert sw.classify(REP0, frame(dport=81)) == [fl.Mirred(REP2)]
    assert sw.classify(REP0, frame(dst="10.0.0.9", dport=22)) is None
    assert sw.classify(REP1, frame()) is None  # rules belong to one representor
    clock.now += 2.5
    stats = {r.prio: s for r, s in dump(sw)}
    assert stats[10] == fl.RuleStats(1, len(frame()), 2500)
    assert stats[20].packets == 1


@pytest.mark.parametrize("miss", [CHAIN_MISS_RESTART, CHAIN_MISS_CONTINUE])
def test_goto_chain_then_a_miss_does_what_the_profile_says(miss: str) -> None:
    """restart: software from chain 0; continue (mlx5): software tc at chain 3, which it lacks: dropped."""
    caps = Capabilities(match_fields={"eth_type": "exact", "ip_proto": "exact", "ipv4_dst": "prefix",
                                      "tcp_dst": "exact"},
                        actions=frozenset({"redirect", "drop", "goto_chain", "pass"}), max_rules=10, chain_miss=miss)
    sw = Eswitch("sim0", dataclasses.replace(load_profile("sim-basic"), capabilities=caps), [REP0, REP1],
                 clock=Clock())
    add(sw, fl.FlowerRule(REP0, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(), (fl.Gact("goto_chain", 3),)))
    add(sw, fl.FlowerRule(REP0, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(ip_proto=6, tcp_dst=22), (fl.Gact("drop"),),
                          chain=3), seq=2)
    assert sw.classify(REP0, frame(dport=22)) == [fl.Gact("drop")]
    assert sw.lost_in_chain == 0
    assert sw.classify(REP0, frame(dport=80)) == [fl.Gact("pass" if miss == CHAIN_MISS_RESTART else "drop")]
    assert sw.lost_in_chain == (miss == CHAIN_MISS_CONTINUE)
    add(sw, fl.FlowerRule(REP0, 9, 1, fl.ETH_P_IP, fl.FlowerKeys(), (fl.Gact("pass"),), chain=3), seq=4)
    assert sw.classify(REP0, frame(dport=80)) == [fl.Gact("pass")]  # the partitioner's catch-all
    err, text = add(sw, fl.FlowerRule(REP0, 2, 1, fl.ETH_P_IP, fl.FlowerKeys(), (fl.Gact("goto_chain", 3),),
                                      chain=3), seq=3)
    assert err == -errno.EOPNOTSUPP and "not a later chain" in text


def test_prio_is_per_protocol_as_in_the_kernel() -> None:
    sw = switch()
    add(sw, ipv4_rule(prio=5))
    ipv6 = fl.FlowerRule(REP0, 5, 2, fl.ETH_P_IPV6, fl.FlowerKeys(ipv6_dst=1), (fl.Mirred(REP1),))
    assert add(sw, ipv6)[0] == -errno.EINVAL


def test_profiles_resolve_by_name_and_refuse_nonsense(tmp_path) -> None:
    assert load_profile("sim-tiny").capabilities.max_rules == 8
    path = tmp_path / "mine.json"
    path.write_text('{"capabilities": {"match_fields": {"eth_dst": "fuzzy"}}}')
    with pytest.raises(ProfileError, match="fuzzy"):
        load_profile(str(path))
    with pytest.raises(ProfileError, match="sim-basic"):
        load_profile("no-such-profile")
    assert parse_profile({"capabilities": {}}, "/x/empty.json").name == "empty"


# --- frame parsing against scapy's -----------------------------------------------

addrs4 = st.integers(0, 2**32 - 1).map(lambda a: str(ipaddress.IPv4Address(a)))
addrs6 = st.integers(0, 2**128 - 1).map(lambda a: str(ipaddress.IPv6Address(a)))
ports = st.integers(0, 0xFFFF)


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    eth = Ether(src=draw(st.integers(0, 2**48 - 1)).to_bytes(6, "big").hex(":"),
                dst=draw(st.integers(0, 2**48 - 1)).to_bytes(6, "big").hex(":"))
    tags = draw(st.integers(0, 2))
    if tags:
        eth.type = draw(st.sampled_from(fl.VLAN_PROTOCOLS))
    for i in range(tags):
        eth = eth / Dot1Q(vlan=draw(st.integers(0, 4095)), prio=draw(st.integers(0, 7)),
                          type=fl.ETH_P_8021Q if i + 1 < tags else None)
    l3 = draw(st.sampled_from(["ip", "ip6", "arp", "none"]))
    if l3 == "none":
        return bytes(eth / b"payload")
    if l3 == "arp":
        return bytes(eth / ARP(op=draw(st.integers(1, 0xFFFF)), psrc=draw(addrs4), pdst=draw(addrs4),
                               hwsrc=draw(st.integers(0, 2**48 - 1)).to_bytes(6, "big").hex(":")))
    tos, ttl = draw(st.integers(0, 255)), draw(st.integers(0, 255))
    ip = (IP(src=draw(addrs4), dst=draw(addrs4), tos=tos, ttl=ttl) if l3 == "ip"
          else IPv6(src=draw(addrs6), dst=draw(addrs6), tc=tos, hlim=ttl))
    l4 = draw(st.sampled_from(["tcp", "udp", "icmp"]))
    if l4 == "icmp":
        icmp = ICMP if l3 == "ip" else ICMPv6Unknown
        return bytes(eth / ip / icmp(type=draw(st.integers(0, 255)), code=draw(st.integers(0, 255))))
    sport, dport = draw(ports), draw(ports)
    if l4 == "udp":
        return bytes(eth / ip / UDP(sport=sport, dport=dport))
    return bytes(eth / ip / TCP(sport=sport, dport=dport, flags=draw(st.integers(0, 0x1FF))))


@settings(max_examples=300)
@given(frames())
def test_parse_frame_agrees_with_scapy(raw: bytes) -> None:
    ref = Ether(raw)
    pkt = parse_frame(raw)
    assert pkt["eth_dst"] == int(ref.dst.replace(":", ""), 16)
    tags, layer = [], ref.payload
    while isinstance(layer, Dot1Q):  # scapy dissects 802.1ad as Dot1AD, a Dot1Q subclass
        tags, layer = tags + [layer], layer.payload
    for prefix, tag in zip(("vlan", "cvlan"), tags):
        assert (pkt[f"{prefix}_id"], pkt[f"{prefix}_prio"], pkt[f"{prefix}_eth_type"]) == (tag.vlan, tag.prio,
                                                                                            tag.type)
    assert ("vlan_id" in pkt, "cvlan_id" in pkt) == (len(tags) >= 1, len(tags) == 2)
    if IP in ref:
        assert pkt["ipv4_src"] == int(ipaddress.IPv4Address(ref[IP].src))
        assert (pkt["ip_proto"], pkt["ip_tos"], pkt["ip_ttl"]) == (ref[IP].proto, ref[IP].tos, ref[IP].ttl)
    if IPv6 in ref:
        assert pkt["ipv6_dst"] == int(ipaddress.IPv6Address(ref[IPv6].dst))
        assert (pkt["ip_tos"], pkt["ip_ttl"]) == (ref[IPv6].tc, ref[IPv6].hlim)
    for layer, name in ((TCP, "tcp"), (UDP, "udp")):
        if layer in ref:
            assert (pkt[f"{name}_src"], pkt[f"{name}_dst"]) == (ref[layer].sport, ref[layer].dport)
    if TCP in ref:
        assert pkt["tcp_flags"] == int(ref[TCP].flags)
    if ICMP in ref:
        assert (pkt["icmpv4_type"], pkt["icmpv4_code"]) == (ref[ICMP].type, ref[ICMP].code)
    if IPv6 in ref and ref[IPv6].nh == fl.IPPROTO_ICMPV6:
        assert (pkt["icmpv6_type"], pkt["icmpv6_code"]) == tuple(raw[-len(ref[IPv6].payload):][:2])
    if ARP in ref:
        assert (pkt["arp_op"], pkt["arp_sip"], pkt["arp_sha"]) == (
            ref[ARP].op & 0xFF, int(ipaddress.IPv4Address(ref[ARP].psrc)), int(ref[ARP].hwsrc.replace(":", ""), 16))
    assert parse_frame(raw[:13]) is None


# --- header rewrites against scapy's -----------------------------------------------


def rebuilt(raw: bytes) -> bytes:
    """The frame with every checksum recomputed by scapy."""
    pkt = Ether(raw)
    for layer in (IP, TCP, UDP, ICMP):
        if layer in pkt:
            del pkt[layer].chksum
    return bytes(pkt)


@settings(max_examples=100)
@given(frames(), st.integers(0, 4095), st.integers(0, 7))
def test_vlan_push_then_pop_gives_the_frame_back(raw: bytes, vid: int, prio: int) -> None:
    pushed = apply_vlan(fl.Vlan("push", vid, prio, fl.ETH_P_8021AD), raw)
    outer = Ether(pushed)
    assert (outer.type, outer.payload.vlan, outer.payload.prio) == (fl.ETH_P_8021AD, vid, prio)
    assert apply_vlan(fl.Vlan("pop"), pushed) == raw


def test_vlan_modify_keeps_dei_and_leaves_untagged_frames_alone() -> None:
    raw = bytes(Ether() / Dot1Q(vlan=5, prio=1, dei=1) / IP() / UDP())
    tag = Ether(apply_vlan(fl.Vlan("modify", 9, 6), raw))[Dot1Q]
    assert (tag.vlan, tag.prio, tag.dei) == (9, 6, 1)
    plain = bytes(Ether() / IP())
    assert apply_vlan(fl.Vlan("modify", 9, 6), plain) == plain
    assert apply_vlan(fl.Vlan("pop"), plain) == plain


@settings(max_examples=100)
@given(frames(), st.integers(0, 2**48 - 1), st.integers(0, 2**32 - 1), st.integers(0, 255))
def test_pedit_rewrites_and_csum_agree_with_scapy(raw: bytes, mac: int, addr: int, ttl: int) -> None:
    keys = fl.pedit_set("eth", 0, mac.to_bytes(6, "big"))
    if IP in Ether(raw):
        keys += fl.pedit_set("ip4", 12, addr.to_bytes(4, "big")) + fl.pedit_set("ip4", 8, bytes([ttl]))
    flags = (fl.TCA_CSUM_UPDATE_FLAG_IPV4HDR | fl.TCA_CSUM_UPDATE_FLAG_TCP | fl.TCA_CSUM_UPDATE_FLAG_UDP)
    out = rewrite(fl.Csum(flags), rewrite(fl.Pedit(keys), raw) or b"")
    pkt = Ether(out)
    assert pkt.dst == mac.to_bytes(6, "big").hex(":")
    if IP in pkt:
        assert (pkt[IP].src, pkt[IP].ttl) == (str(ipaddress.IPv4Address(addr)), ttl)
    assert out == rebuilt(out)  # every checksum is what scapy computes (IPv6 included)


def test_pedit_add_decrements_ttl_like_the_kernel_without_touching_the_protocol() -> None:
    dec_ttl = fl.Pedit((fl.PeditKey("ip4", 8, 0x00FFFFFF, 0xFF000000, "add"),))  # "munge ip ttl add 255"
    for ttl, expected in ((64, 63), (1, 0), (0, 255)):
        out = Ether(apply_pedit(dec_ttl, bytes(Ether() / IP(ttl=ttl, proto=17) / UDP())))
        assert (out[IP].ttl, out[IP].proto) == (expected, 17)


def test_pedit_past_the_frame_or_in_a_missing_header_changes_nothing() -> None:
    arp = bytes(Ether(type=0x0806) / (b"\0" * 28))
    assert apply_pedit(fl.Pedit(fl.pedit_set("tcp", 0, b"\1\2")), arp) == arp
    assert apply_pedit(fl.Pedit(fl.pedit_set("eth", 400, b"\1")), arp) == arp


def test_icmp_checksum_and_actions_the_sim_cannot_perform() -> None:
    raw = bytes(Ether() / IP() / ICMP(id=7, chksum=0))
    fixed = apply_csum(fl.Csum(fl.TCA_CSUM_UPDATE_FLAG_ICMP), raw)
    assert fixed == rebuilt(raw)
    assert rewrite(fl.Ct(zone=1), raw) is None and rewrite(fl.TunnelKey(unset=True), raw) is None


def test_classify_runs_through_rewrites_to_the_verdict() -> None:
    sw = Eswitch("sim0", load_profile("sim-no-tunnel-no-ct"), [REP0, REP1, REP2], clock=Clock())
    actions = (fl.Vlan("push", 7), fl.Pedit(fl.pedit_set("eth", 0, bytes(6))), fl.Vlan("pop"), fl.Mirred(REP1))
    rule = fl.FlowerRule(REP0, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=0x0A000002), actions)
    assert add(sw, rule) == (0, None)
    assert sw.classify(REP0, frame()) == list(actions)
    assert dump(sw)[0][0] == rule


def test_tunnel_and_ct_rules_are_stored_and_dumped_back_where_the_profile_allows_them() -> None:
    sw = Eswitch("sim0", load_profile("mlx5-connectx7"), [REP0, REP1, REP2], clock=Clock())
    keys = fl.FlowerKeys(enc_key_id=5, enc_ipv4_dst=0x0A000001, enc_dst_port=6081,
                         ct_state=fl.TCA_FLOWER_KEY_CT_FLAGS_TRACKED, ct_state_mask=fl.TCA_FLOWER_KEY_CT_FLAGS_TRACKED)
    decap = fl.FlowerRule(REP0, 1, 1, fl.ETH_P_IP, keys, (
        fl.TunnelKey(unset=True), fl.Ct(zone=3, commit=True), fl.Vlan("push", 5), fl.Gact("goto_chain", 2)))
    encap = fl.FlowerRule(REP0, 2, 1, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=1), (
        fl.TunnelKey(ipv4_dst=0x0A000002, key_id=7, dst_port=4789), fl.Mirred(REP1)))
    assert [add(sw, r) for r in (decap, encap)] == [(0, None)] * 2
    assert [r for r, _ in dump(sw)] == [decap, encap]


def socket_ports(count: int) -> tuple[list[Port], list[socket.socket]]:
    """Ports whose VF and representor are socketpair ends (frames keep their boundaries); the test's ends too."""
    ports, ours = [], []
    for i in range(count):
        vf, vf_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        rep, rep_peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        for end in (vf, rep, vf_peer, rep_peer):
            end.setblocking(False)
        ports.append(Port(i, f"r{i}", REP0 + i, rep.detach(), f"v{i}", vf.detach()))
        ours += [vf_peer, rep_peer]
    return ports, ours


def test_the_data_plane_rewrites_in_hardware_and_hands_ct_to_software() -> None:
    sw = Eswitch("sim0", load_profile("mlx5-connectx7"), [REP0, REP1], clock=Clock())
    new_mac = bytes.fromhex("020000000009")
    rewrite_rule = fl.FlowerRule(REP0, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=0x0A000002), (
        fl.Pedit(fl.pedit_set("eth", 0, new_mac)), fl.Mirred(REP1)))
    ct_rule = fl.FlowerRule(REP0, 1, 2, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=0x0A000003), (
        fl.Ct(zone=1), fl.Gact("goto_chain", 1)))
    assert [add(sw, r) for r in (rewrite_rule, ct_rule)] == [(0, None)] * 2
    ports, ours = socket_ports(2)
    vf0, rep0, vf1, _ = ours
    plane = DataPlane(sw, ports)
    try:
        vf0.send(frame("10.0.0.2"))
        plane.from_vf(ports[0])
        assert Ether(vf1.recv(2048)).dst == new_mac.hex(":")
        vf0.send(frame("10.0.0.3"))
        plane.from_vf(ports[0])
        assert rep0.recv(2048) == frame("10.0.0.3")
        assert (plane.counters.hw_forwarded, plane.counters.unsupported, plane.counters.to_representor) == (1, 1, 1)
    finally:
        close_ports(ports)
        for end in ours:
            end.close()
