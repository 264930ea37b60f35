"""The native OpenFlow batch encoder against its reference, os-ken: byte for byte, errors included."""

from __future__ import annotations

import struct
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from hwflow.backends.ovs import native

CATALOG = native.Catalog()
BUILDER = native.ProgramBuilder(CATALOG)
needs_native = pytest.mark.skipif(not native.NATIVE_AVAILABLE,
                                  reason="native OpenFlow encoder not built (python native/build_of.py)")
FIELDS = sorted(CATALOG.fields)
SHORT_HEADER_FIELDS = sorted(f.name for f in CATALOG.fields.values() if len(f.header) == 4)


def value(field: str) -> st.SearchStrategy[int]:
    return st.integers(0, (1 << 8 * CATALOG.fields[field].width) - 1)


@st.composite
def terms(draw: st.DrawFn) -> list[native.Term]:
    names = draw(st.lists(st.sampled_from(FIELDS), unique=True, max_size=6))
    return [(name, draw(value(name)), draw(st.none() | value(name))) for name in names]


def u(bits: int) -> st.SearchStrategy[int]:
    return st.integers(0, (1 << bits) - 1)


def field_action(kind: str) -> st.SearchStrategy[native.Action]:
    return st.sampled_from(FIELDS).flatmap(lambda f: st.tuples(st.just(kind), st.just(f), value(f)))


reg_load2 = st.sampled_from(FIELDS).flatmap(
    lambda f: st.tuples(st.just("reg_load2"), st.just(f), value(f), st.none() | value(f)))
simple_actions = st.one_of(
    st.tuples(st.just("output"), u(32), u(16)),
    st.tuples(st.just("output"), u(32)),
    field_action("set_field"),
    reg_load2,
    st.tuples(st.just("set_nw_ttl"), u(8)),
    st.tuples(st.just("dec_nw_ttl")),
    st.tuples(st.just("push_vlan"), st.sampled_from([0x8100, 0x88A8])),
    st.tuples(st.just("pop_vlan")),
    st.tuples(st.just("group"), u(32)),
    st.tuples(st.just("reg_move"), st.sampled_from(SHORT_HEADER_FIELDS), st.sampled_from(SHORT_HEADER_FIELDS),
              u(16), u(16), u(16)),
    st.tuples(st.just("ct_clear")),
    st.tuples(st.just("resubmit_table"), u(16), u(8)),
)
# NXAST_NAT only ever ends a ct's nested list: os-ken leaves out the padding of a NAT followed by another action.
nat = st.tuples(st.just("nat"), u(16), st.none() | u(32))
ct = st.tuples(st.just("ct"), u(16), st.none() | st.sampled_from(SHORT_HEADER_FIELDS), u(16), u(8), u(16),
               st.tuples(st.lists(simple_actions, max_size=3), st.lists(nat, max_size=1)).map(lambda p: p[0] + p[1]))
actions = st.lists(st.one_of(simple_actions, ct), max_size=5)
instructions = st.lists(st.one_of(
    st.tuples(st.just("apply"), actions),
    st.tuples(st.just("write"), actions),
    st.tuples(st.just("clear")),
    st.tuples(st.just("goto"), u(8)),
    st.tuples(st.just("write_metadata"), u(64), u(64)),
), max_size=4)


@st.composite
def flow_mods(draw: st.DrawFn) -> list[int]:
    header = BUILDER.header_words(
        table=draw(u(8)), priority=draw(u(16)), command=draw(st.sampled_from([
            ofp.OFPFC_ADD, ofp.OFPFC_MODIFY, ofp.OFPFC_MODIFY_STRICT, ofp.OFPFC_DELETE, ofp.OFPFC_DELETE_STRICT])),
        cookie=draw(u(64)), cookie_mask=draw(u(64)), idle=draw(u(16)), hard=draw(u(16)), buffer_id=draw(u(32)),
        out_port=draw(u(32)), out_group=draw(u(32)), flags=draw(u(16)))
    return [*header, *BUILDER.body_words(draw(terms()), draw(instructions)), native.CLOSE]


def both(words: list[int], first_xid: int = 1, chunk_bytes: int = native.CHUNK_BYTES
         ) -> tuple[list[native.Chunk], list[native.Chunk]]:
    return (list(native.NativeEncoder(CATALOG).encode(words, first_xid, chunk_bytes)),
            list(native.OskenEncoder(CATALOG).encode(words, first_xid, chunk_bytes)))


def joined(chunks: list[native.Chunk]) -> bytes:
    return b"".join(c.data for c in chunks)


@needs_native
@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(flow_mods(), min_size=1, max_size=4), u(31))
def test_native_bytes_equal_os_ken_serialization(programs: list[list[int]], first_xid: int) -> None:
    words = [w for program in programs for w in program]
    fast, reference = both(words, first_xid + 1)
    assert joined(fast) == joined(reference)
    assert sum(c.messages for c in fast) == len(programs)


@needs_native
@settings(max_examples=200, deadline=None)
@given(flow_mods())
def test_os_ken_parses_the_native_bytes_back_to_the_same_message(program: list[int]) -> None:
    """The reference is os-ken's serializer; its parser agreeing too catches a shared misunderstanding."""
    (chunk,) = native.NativeEncoder(CATALOG).encode(program, 5)
    version, msg_type, length, xid = struct.unpack_from("!BBHI", chunk.data)
    assert (version, msg_type, length, xid) == (ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, len(chunk.data), 5)
    (_, want), = native.OskenEncoder(CATALOG).messages(program)
    got = parser.OFPFlowMod.parser(native.DATAPATH, version, msg_type, length, xid, chunk.data)
    assert (got.cookie, got.table_id, got.priority, got.command) == (want.cookie, want.table_id, want.priority,
                                                                     want.command)
    assert sorted(got.match.items(), key=str) == sorted(want.match.items(), key=str)
    assert [type(i) for i in got.instructions] == [type(i) for i in want.instructions]


def test_nicira_actions_match_os_ken_classes_exactly() -> None:
    """The encoder-level conntrack (with nat), reg load and reg move, pinned against hand-written os-ken objects."""
    words = [*BUILDER.header_words(table=0, priority=1), *BUILDER.body_words([], [("apply", [
        ("ct", 1, "reg0", 31, 5, 0, [("set_field", "ct_mark", 7), ("reg_load2", "ct_label", 3, None)]),
        ("ct", 0, None, 9, 255, 21, []),
        ("ct", 1, None, 3, 4, 0, [("nat", 1, 0x0A000001)]),
        ("ct", 0, None, 3, 4, 0, [("nat", 0)]),
        ("reg_load2", "reg5", 0x12, 0xFF),
        ("reg_load2", "metadata", 0x1234, 0xFFFF),
        ("reg_move", "reg0", "metadata", 12, 3, 40),
    ])]), native.CLOSE]
    want = parser.OFPFlowMod(native.DATAPATH, 0, 0, 0, ofp.OFPFC_ADD, 0, 0, 1, ofp.OFP_NO_BUFFER, ofp.OFPP_ANY,
                             ofp.OFPG_ANY, 0, parser.OFPMatch(), [parser.OFPInstructionActions(
                                 ofp.OFPIT_APPLY_ACTIONS, [
                                     parser.NXActionCT(1, "reg0", 31, 5, 0, [parser.OFPActionSetField(ct_mark=7),
                                                                             native._RegLoad2("ct_label", 3)]),
                                     parser.NXActionCT(0, "", 9, 255, 21, []),
                                     parser.NXActionCT(1, "", 3, 4, 0, [parser.NXActionNAT(
                                         1, range_ipv4_min="10.0.0.1")]),
                                     parser.NXActionCT(0, "", 3, 4, 0, [parser.NXActionNAT(0)]),
                                     parser.NXActionRegLoad2("reg5", 0x12, 0xFF),
                                     native._RegLoad2("metadata", 0x1234, 0xFFFF),
                                     parser.NXActionRegMove("reg0", "metadata", 12, 3, 40)])])
    want.xid = 9
    want.serialize()
    assert joined(list(native.OskenEncoder(CATALOG).encode(words, 9))) == bytes(want.buf)
    if native.NATIVE_AVAILABLE:
        assert joined(list(native.NativeEncoder(CATALOG).encode(words, 9))) == bytes(want.buf)
    # os-ken itself cannot pad a 20-byte OXM in NXAST_REG_LOAD2; OVS wants it padded to 8: 32 bytes.
    load = bytearray()
    native._RegLoad2("metadata", 1, 1).serialize(load, 0)
    assert len(load) == struct.unpack_from("!H", load, 2)[0] == 32


@needs_native
@pytest.mark.parametrize("chunk_bytes", [0, 100_000])
def test_large_batches_split_at_message_boundaries_with_consecutive_xids(chunk_bytes: int) -> None:
    flow = [*BUILDER.body_words([("eth_type", 0x800, None), ("ipv4_dst", 0, 0xFFFF0000)],
                                [("apply", [("output", 1)] * 200)]), native.CLOSE]
    words = []
    for i in range(300):
        words += (*BUILDER.header_words(table=1, priority=i), *flow)
    fast, reference = both(words, 0xFFFFFF00, chunk_bytes)
    assert len(fast) > 1 and joined(fast) == joined(reference)
    xids, offset, data = [], 0, joined(fast)
    while offset < len(data):
        length, xid = struct.unpack_from("!HI", data, offset + 2)
        xids.append(xid)
        offset += length
    assert xids == [(0xFFFFFF00 + i) & 0xFFFFFFFF for i in range(300)]
    assert [c.first_xid for c in fast[1:]] == [fast[0].first_xid + sum(c.messages for c in fast[:i + 1])
                                               for i in range(len(fast) - 1)]


def _header() -> list[int]:
    return list(BUILDER.header_words(table=0, priority=0))


BAD_PROGRAMS = [
    ([10**6], "not a template index"),
    ([CATALOG.index["match"], native.CLOSE], "cannot go here"),
    ([*_header(), CATALOG.index["match"], native.CLOSE], "cut short"),
    ([*_header(), CATALOG.index["match"], CATALOG.index["oxm:eth_type"]], "cut short"),
    ([*_header(), CATALOG.index["match"], CATALOG.index["oxm:eth_type"], 0x10000, native.CLOSE, native.CLOSE],
     "oxm:eth_type does not fit"),
    ([*_header(), CATALOG.index["match"], native.CLOSE, CATALOG.index["flow_mod"]], "flow_mod cannot go here"),
    ([native.CLOSE], "CLOSE cannot go here"),
    ([*_header(), *BUILDER.body_words([], [("apply", [("output", 1)] * 5000)]), native.CLOSE],
     "longer than 65535 bytes"),
]


@pytest.mark.parametrize("words, message", BAD_PROGRAMS)
@pytest.mark.parametrize("encoder", ["native", "os-ken"])
def test_bad_programs_are_refused_with_the_same_explanation(words: list[int], message: str, encoder: str) -> None:
    if encoder == "native" and not native.NATIVE_AVAILABLE:
        pytest.skip("native OpenFlow encoder not built (python native/build_of.py)")
    impl = native.NativeEncoder(CATALOG) if encoder == "native" else native.OskenEncoder(CATALOG)
    with pytest.raises(native.EncodeError, match=message):
        list(impl.encode(words, 1))


def test_unknown_names_say_where_to_add_them() -> None:
    with pytest.raises(native.EncodeError, match="add the field to FIELD_NAMES"):
        BUILDER.action_words(("frobnicate", 1))
    with pytest.raises(native.EncodeError, match="OXM field 'reg99' has no template; add it to FIELD_NAMES"):
        BUILDER.match_words([("reg99", 1, None)])
    with pytest.raises(native.EncodeError, match="nat: only a single IPv4 address"):
        BUILDER.action_words(("nat", 1, 5, 6))
    with pytest.raises(native.EncodeError, match="tcp_flags has an experimenter OXM header"):
        BUILDER.action_words(("reg_move", "tcp_flags", "reg0", 1, 0, 0))


def test_without_the_extension_import_warns_once_and_falls_back_to_os_ken() -> None:
    code = ("import sys; sys.modules['hwflow.backends.ovs._openflow_native'] = None\n"
            "from hwflow.backends.ovs import native\n"
            "print(native.NATIVE_AVAILABLE, type(native.best_encoder(native.Catalog())).__name__)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert proc.stdout.split() == ["False", "OskenEncoder"]
    warning = [line for line in proc.stderr.splitlines() if "native OpenFlow encoder" in line]
    assert len(warning) == 1 and "python native/build_of.py" in warning[0]
