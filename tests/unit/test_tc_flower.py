"""tc-flower encoding: round trips, validation, and iproute2's own bytes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc import netlink as nl


def masked(bits: int) -> st.SearchStrategy[tuple[int, int]]:
    return st.tuples(st.integers(0, (1 << bits) - 1), st.integers(0, (1 << bits) - 1)).map(
        lambda vm: (vm[0] & vm[1], vm[1]))


@st.composite
def rules(draw: st.DrawFn) -> fl.FlowerRule:
    protocol = draw(st.sampled_from([fl.ETH_P_ALL, fl.ETH_P_IP, fl.ETH_P_IPV6, fl.ETH_P_8021Q, 0x0806]))
    keys: dict[str, int] = {}
    for name in ("eth_dst", "eth_src"):
        if draw(st.booleans()):
            keys[name], keys[name + "_mask"] = draw(masked(48))
    if protocol == fl.ETH_P_8021Q and draw(st.booleans()):
        keys["vlan_id"] = draw(st.integers(0, 4095))
    family = {fl.ETH_P_IP: ("ipv4", 32), fl.ETH_P_IPV6: ("ipv6", 128)}.get(protocol)
    if family:
        for side in ("src", "dst"):
            if draw(st.booleans()):
                name = f"{family[0]}_{side}"
                keys[name], keys[name + "_mask"] = draw(masked(family[1]))
        if draw(st.booleans()):
            keys["ip_proto"] = draw(st.sampled_from([1, 6, 17, 58, 132]))
            l4 = {6: "tcp", 17: "udp"}.get(keys["ip_proto"])
            for side in ("src", "dst"):
                if l4 and draw(st.booleans()):
                    keys[f"{l4}_{side}"] = draw(st.integers(0, 0xFFFF))
    action = st.one_of(
        st.builds(fl.Mirred, st.integers(1, (1 << 31) - 1), st.booleans(), st.booleans()),
        st.sampled_from([fl.Gact("drop"), fl.Gact("pass")]),
        st.integers(0, fl.TC_ACT_EXT_VAL_MASK).map(lambda c: fl.Gact("goto_chain", c)),
    )
    return fl.FlowerRule(
        ifindex=draw(st.integers(1, (1 << 31) - 1)), prio=draw(st.integers(0, 0xFFFF)),
        handle=draw(st.integers(0, 0xFFFFFFFF)), protocol=protocol, keys=fl.FlowerKeys(**keys),
        actions=tuple(draw(st.lists(action, min_size=1, max_size=4))),
        chain=draw(st.integers(0, 0xFFFFFFFF)), parent=draw(st.sampled_from([fl.INGRESS, 0xFFFFFFF3])),
        flags=draw(st.sampled_from([0, fl.TCA_CLS_FLAGS_SKIP_HW, fl.TCA_CLS_FLAGS_SKIP_SW])),
    )


@settings(max_examples=300)
@given(rules(), st.integers(0, 0xFFFFFFFF))
def test_encode_then_decode_gives_the_same_rule(rule: fl.FlowerRule, seq: int) -> None:
    data = fl.encode_newfilter(rule, seq, flags=nl.NLM_F_REQUEST)
    decoded, stats = fl.decode_filter(data)
    assert decoded == rule
    assert stats is None
    assert nl.split_messages(data)[0].seq == seq


@given(rules(), st.integers(0, 2**63), st.integers(0, 2**32 - 1), st.integers(0, 2**40).map(lambda t: t * 10))
def test_stats_survive_a_dump_entry(rule: fl.FlowerRule, nbytes: int, packets: int, age_ms: int) -> None:
    stats = fl.RuleStats(packets, nbytes, age_ms)
    data = fl.encode_filter(rule, fl.RTM_NEWTFILTER, nl.NLM_F_MULTI, 1, stats, fl.TCA_CLS_FLAGS_IN_HW)
    assert fl.decode_filter(data) == (rule, stats)


@given(st.binary(max_size=300))
def test_decoding_garbage_raises_value_error_only(data: bytes) -> None:
    try:
        fl.decode_filter(nl.encode_message(fl.RTM_NEWTFILTER, 0, 1, data))
    except ValueError:
        pass


def test_delete_and_dump_layout() -> None:
    rule = fl.FlowerRule(5, 10, 2, fl.ETH_P_IP, fl.FlowerKeys(), (fl.Gact("drop"),), chain=3)
    (msg,) = nl.split_messages(fl.encode_delfilter(rule, 9))
    assert (msg.type, msg.flags, msg.seq) == (fl.RTM_DELTFILTER, nl.NLM_F_REQUEST | nl.NLM_F_ACK, 9)
    header = fl.decode_tcmsg(msg.payload)
    assert (header.ifindex, header.handle, header.prio, header.protocol) == (5, 2, 10, fl.ETH_P_IP)
    assert nl.attr_map(msg.payload[fl.TCMSG.size:]) == {fl.TCA_KIND: b"flower\0", fl.TCA_CHAIN: b"\3\0\0\0"}
    (dump,) = nl.split_messages(fl.encode_dump(5, 4))
    assert dump.flags == nl.NLM_F_REQUEST | nl.NLM_F_DUMP
    assert fl.decode_tcmsg(dump.payload).parent == fl.INGRESS


@pytest.mark.parametrize(("kwargs", "words"), [
    ({"eth_dst": 1, "eth_dst_mask": 0xFF00}, "bits outside its mask"),
    ({"eth_dst_mask": 0xFF}, "without eth_dst"),
    ({"vlan_id": 4096}, "out of range"),
    ({"ipv4_src": 1 << 32}, "out of range"),
])
def test_bad_keys_are_refused_by_name(kwargs: dict, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        fl.FlowerKeys(**kwargs)


@pytest.mark.parametrize(("protocol", "keys", "words"), [
    (fl.ETH_P_IPV6, fl.FlowerKeys(ipv4_dst=1), "ipv4_dst needs protocol 0x0800"),
    (fl.ETH_P_IP, fl.FlowerKeys(ip_proto=17, tcp_dst=80), "tcp_dst needs ip_proto 6"),
    (fl.ETH_P_ALL, fl.FlowerKeys(ip_proto=6), "ip_proto needs protocol"),
    (fl.ETH_P_IP, fl.FlowerKeys(vlan_id=3), "vlan_id needs protocol 0x8100"),
])
def test_keys_that_cannot_match_the_protocol_are_refused(protocol: int, keys: fl.FlowerKeys,
                                                         words: str) -> None:
    with pytest.raises(ValueError, match=words):
        fl.FlowerRule(1, 1, 1, protocol, keys, (fl.Gact("drop"),))


def test_rule_needs_an_action_and_sane_flags() -> None:
    with pytest.raises(ValueError, match="actions"):
        fl.FlowerRule(1, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(), ())
    with pytest.raises(ValueError, match="not both"):
        fl.FlowerRule(1, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(), (fl.Gact("drop"),), flags=3)
    with pytest.raises(ValueError, match="only goto_chain"):
        fl.Gact("drop", chain=2)


def test_unmodelled_attributes_are_not_silently_dropped() -> None:
    rule = fl.FlowerRule(1, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(), (fl.Gact("drop"),))
    msg = nl.split_messages(fl.encode_newfilter(rule, 1))[0]
    # Append TCA_FLOWER_KEY_VLAN_PRIO (24) inside TCA_OPTIONS: a key hwflow does not model.
    attrs = nl.parse_attrs(msg.payload[fl.TCMSG.size:])
    options = dict(attrs)[fl.TCA_OPTIONS] + nl.nla(24, b"\1")
    payload = (msg.payload[:fl.TCMSG.size] + nl.nla_str(fl.TCA_KIND, "flower")
               + nl.nla(fl.TCA_OPTIONS, options))
    with pytest.raises(fl.FlowerDecodeError, match="attribute 24"):
        fl.decode_filter(nl.encode_message(fl.RTM_NEWTFILTER, 0, 1, payload))


# --- iproute2's bytes ----------------------------------------------------------

TC_CASES = [
    (("prio 10 handle 1 protocol ip flower dst_mac 02:00:00:00:00:01"
     " src_mac 02:00:00:00:00:00/ff:ff:ff:00:00:00 ip_proto tcp src_ip 10.0.0.0/8 dst_ip 192.168.1.1"
     " dst_port 80 action mirred egress redirect dev lo"),
     fl.FlowerRule(1, 10, 1, fl.ETH_P_IP, fl.FlowerKeys(
         eth_dst=0x020000000001, eth_src=0x020000000000, eth_src_mask=0xFFFFFF000000, ip_proto=6,
         ipv4_src=0x0A000000, ipv4_src_mask=0xFF000000, ipv4_dst=0xC0A80101, tcp_dst=80), (fl.Mirred(1),))),
    (("prio 3 handle 7 chain 4 protocol ipv6 flower skip_hw ip_proto udp src_ip 2001:db8::/32 src_port 53"
     " action gact drop"),
     fl.FlowerRule(1, 3, 7, fl.ETH_P_IPV6, fl.FlowerKeys(
         ip_proto=17, ipv6_src=0x20010DB8 << 96, ipv6_src_mask=((1 << 32) - 1) << 96, udp_src=53),
         (fl.Gact("drop"),), chain=4, flags=fl.TCA_CLS_FLAGS_SKIP_HW)),
    (("prio 2 handle 3 protocol 802.1Q flower vlan_id 10 action mirred ingress mirror dev lo"
     " action gact goto chain 5"),
     fl.FlowerRule(1, 2, 3, fl.ETH_P_8021Q, fl.FlowerKeys(vlan_id=10),
                   (fl.Mirred(1, egress=False, redirect=False), fl.Gact("goto_chain", 5)))),
]


def tc_sent_newfilter(args: str) -> bytes:
    """The RTM_NEWTFILTER bytes iproute2 writes (the kernel here then refuses them: no flower)."""
    ns = f"hwt-sim-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        trace = subprocess.run(
            ["ip", "netns", "exec", ns, "strace", "-f", "-e", "trace=sendmsg", "-e", "write=all",
             "-o", "/dev/stdout", "tc", "filter", "add", "dev", "lo", "ingress", *args.split()],
            check=False, capture_output=True, text=True, timeout=30).stdout
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    buffers, current = [], bytearray()
    for line in trace.splitlines():
        row = re.match(r"\s*\| [0-9a-f]{5}  ((?:[0-9a-f]{2} {1,2}){1,16})", line)
        if row:
            current += bytes.fromhex(row.group(1))
        elif current:
            buffers.append(bytes(current))
            current = bytearray()
    buffers.append(bytes(current))
    for buf in buffers:
        msgs = nl.split_messages(buf) if len(buf) >= nl.NLMSGHDR.size else []
        if msgs and msgs[0].type == fl.RTM_NEWTFILTER:
            return buf
    raise AssertionError(f"tc sent no RTM_NEWTFILTER; strace said:\n{trace}")


@pytest.mark.skipif(shutil.which("strace") is None or shutil.which("tc") is None or os.geteuid() != 0,
                    reason="needs strace, iproute2's tc and root (for a private namespace)")
@pytest.mark.parametrize(("args", "rule"), TC_CASES)
def test_bytes_match_what_iproute2_sends(args: str, rule: fl.FlowerRule) -> None:
    theirs = tc_sent_newfilter(args)
    (msg,) = nl.split_messages(theirs)
    ours = fl.encode_newfilter(rule, msg.seq, flags=msg.flags)
    assert ours.hex() == theirs.hex()
    assert fl.decode_filter(theirs) == (rule, None)
