"""The native tc-flower batch encoder: byte-identical to the Python reference over the rule space."""

from __future__ import annotations

import array

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_tc_flower import rules

from hwflow import bench
from hwflow.backends.tc import flower as fl
from hwflow.backends.tc import native
from hwflow.backends.tc import netlink as nl

needs_native = pytest.mark.skipif(not native.NATIVE_AVAILABLE,
                                  reason="native tc-flower encoder not built (python native/build_tc.py)")
# Keys other keys depend on (changing them would make the prototype's other keys unmatchable).
STRUCTURAL = {"ip_proto", "vlan_eth_type", "cvlan_eth_type"}


def candidate_columns(rule: fl.FlowerRule) -> list[str]:
    """Every field of ``rule`` that can vary within a batch of its shape."""
    out = list(native.HEADER_COLUMNS)
    for spec in fl.KEY_SPECS:
        if getattr(rule.keys, spec.field) is not None and spec.field not in STRUCTURAL:
            out += [spec.field] + ([spec.mask_field] if spec.mask_field else [])
    for i, action in enumerate(rule.actions):
        for name in native.ACTION_COLUMNS.get(type(action), {}):
            value = getattr(action, name)
            no_mark = name.startswith("mark") and not getattr(action, "mark_mask", 0)
            unsent = (isinstance(action, fl.Vlan) and action.action == "pop"
                      or isinstance(action, fl.Ct) and (action.clear or no_mark))
            if value is not None and not unsent:
                out.append(f"actions[{i}].{name}")
    return out


@st.composite
def batches(draw: st.DrawFn) -> tuple[native.Shape, array.array, int, int]:
    """A prototype, some of its columns, and 1..4 rows of valid values."""
    prototype = draw(rules(max_actions=3))
    op = draw(st.sampled_from(["add", "replace"]))
    candidates = candidate_columns(prototype)
    columns = draw(st.lists(st.sampled_from(candidates), unique=True, max_size=len(candidates)))
    shape = native.Shape(prototype, columns, op)
    count = draw(st.integers(1, 4))
    values = array.array("Q")
    for _ in range(count):
        row = [draw(st.integers(s.min, s.max)) for s in shape.slots]
        for i, slot in enumerate(shape.slots):  # a varying mask keeps the prototype's value ...
            row[i] |= slot.covers
        for i, slot in enumerate(shape.slots):  # ... and varying values lie inside their masks
            row[i] &= row[slot.mask_index] if slot.mask_column else slot.mask_const
        values.extend(row)
    return shape, values, count, draw(st.integers(0, 0xFFFFFFFF))


def reference(shape: native.Shape, values: array.array, count: int, first_seq: int) -> bytes:
    width = shape.row_width
    out = []
    for i in range(count):
        row: dict[str, int] = {}
        for slot, word in zip(shape.slots, values[i * width:(i + 1) * width]):
            row[slot.column] = row.get(slot.column, 0) << 64 | word if slot.half == "lo" else word
        rule = native.with_columns(shape.prototype, row)
        assert all(native.get_column(rule, c) == v for c, v in row.items())
        out.append(shape.encode_rule(rule, (first_seq + i) & 0xFFFFFFFF))
    return b"".join(out)


@needs_native
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(batches())
def test_native_output_is_byte_identical_to_the_python_encoder(batch: tuple) -> None:
    shape, values, count, first_seq = batch
    expected = reference(shape, values, count, first_seq)
    for use_native in (True, False):
        encoder = native.FlowerBatch(shape.prototype, shape.columns, shape.op, native=use_native)
        assert encoder.encode(values, count, first_seq).hex() == expected.hex()


PROTO = fl.FlowerRule(5, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(
    eth_dst=0x020000000001, ip_proto=6, ipv4_dst=0x0A000000, ipv4_dst_mask=0xFFFFFF00, tcp_dst=80), (fl.Mirred(7),))


def encoders() -> list[bool]:
    return [True, False] if native.NATIVE_AVAILABLE else [False]


@pytest.mark.parametrize("use_native", encoders())
def test_a_batch_decodes_back_to_the_rules_it_describes(use_native: bool) -> None:
    batch = native.FlowerBatch(PROTO, ["handle", "ipv4_dst", "actions[0].ifindex"], native=use_native)
    values = array.array("Q", [1, 0x0A000100, 8, 2, 0x0A000200, 9])
    messages = nl.split_messages(batch.encode(values, 2, first_seq=0xFFFFFFFF))
    assert [m.seq for m in messages] == [0xFFFFFFFF, 0]  # sequence numbers wrap like the kernel's u32
    assert [fl.decode_filter_message(m)[0] for m in messages] == batch.rules(values, 2)
    assert batch.rules(values, 2)[1].actions == (fl.Mirred(9),)


@pytest.mark.parametrize("use_native", encoders())
def test_delete_batches_take_header_columns(use_native: bool) -> None:
    batch = native.FlowerBatch(PROTO, ["prio", "handle"], "delete", native=use_native)
    messages = nl.split_messages(batch.encode(array.array("Q", [3, 4, 5, 6]), 2))
    assert [m.type for m in messages] == [fl.RTM_DELTFILTER] * 2
    assert [(fl.decode_tcmsg(m.payload).prio, fl.decode_tcmsg(m.payload).handle) for m in messages] == [(3, 4), (5, 6)]
    with pytest.raises(native.BatchError, match="column ipv4_dst does not have one fixed 4-byte place in a delete"):
        native.FlowerBatch(PROTO, ["ipv4_dst"], "delete", native=use_native)


@pytest.mark.parametrize("use_native", encoders())
@pytest.mark.parametrize(("values", "words"), [
    ([9, 80, 9, 0x10000], r"rule 1 of the batch: tcp_dst=0x10000 is out of range \(0x0..0xffff\)"),
    ([9, 80, 0, 80], r"rule 1 of the batch: actions\[0\].ifindex=0x0 is out of range \(0x1..0x7fffffff\)"),
])
def test_bad_values_are_refused_naming_rule_and_column(use_native: bool, values: list[int], words: str) -> None:
    batch = native.FlowerBatch(PROTO, ["actions[0].ifindex", "tcp_dst"], native=use_native)
    with pytest.raises(native.BatchError, match=words):
        batch.encode(array.array("Q", values), 2)


@pytest.mark.parametrize("use_native", encoders())
def test_values_outside_their_mask_are_refused(use_native: bool) -> None:
    fixed_mask = native.FlowerBatch(PROTO, ["ipv4_dst"], native=use_native)
    with pytest.raises(native.BatchError, match="ipv4_dst=0xa000001 has bits outside the prototype's mask"):
        fixed_mask.encode(array.array("Q", [0x0A000001]), 1)
    both = native.FlowerBatch(PROTO, ["ipv4_dst", "ipv4_dst_mask"], native=use_native)
    assert len(both.encode(array.array("Q", [0x0A000001, 0xFFFFFFFF]), 1)) == both.message_size
    with pytest.raises(native.BatchError, match="ipv4_dst=0xa000001 has bits outside ipv4_dst_mask"):
        both.encode(array.array("Q", [0x0A000001, 0xFFFFFF00]), 1)
    mask_only = native.FlowerBatch(PROTO, ["ipv4_dst_mask"], native=use_native)
    with pytest.raises(native.BatchError, match="ipv4_dst_mask=0xf0000000 drops bits of the prototype.s value"):
        mask_only.encode(array.array("Q", [0xFFFF0000, 0xF0000000]), 2)


@pytest.mark.parametrize(("columns", "words"), [
    (["ip_proto"], "column ip_proto: changing it changes the message layout"),
    (["udp_dst"], "column udp_dst: the prototype does not set it"),
    (["nonsense"], "unknown column 'nonsense'"),
    (["actions[3].ifindex"], r"column actions\[3\].ifindex: the prototype has 1 actions"),
    (["actions[0].zone"], "a Mirred action has no integer column 'zone'"),
    (["handle", "handle"], "name a field twice"),
])
def test_columns_that_cannot_vary_are_refused_by_name(columns: list[str], words: str) -> None:
    with pytest.raises(native.BatchError, match=words):
        native.FlowerBatch(PROTO, columns, native=False)


@pytest.mark.parametrize("use_native", encoders())
def test_ipv6_columns_take_two_words_high_then_low(use_native: bool) -> None:
    v6 = fl.FlowerRule(5, 1, 1, fl.ETH_P_IPV6, fl.FlowerKeys(ipv6_dst=1 << 64, ipv6_dst_mask=((1 << 64) - 1) << 64),
                       (fl.Gact("drop"),))
    batch = native.FlowerBatch(v6, ["handle", "ipv6_dst"], native=use_native)
    assert batch.shape.row_width == 3
    rules = batch.rules(array.array("Q", [2, 0x20010DB8 << 32, 0]), 1)
    assert rules[0].keys.ipv6_dst == 0x20010DB8 << 96 and rules[0].handle == 2
    assert fl.decode_filter(batch.encode(array.array("Q", [2, 0x20010DB8 << 32, 0]), 1))[0] == rules[0]
    with pytest.raises(native.BatchError, match=r"rule 0 of the batch: ipv6_dst \(low 64 bits\)=0x1 has bits outside "
                                                "the prototype's mask"):
        batch.encode(array.array("Q", [2, 0, 1]), 1)


def test_values_must_be_rows_of_64_bit_words() -> None:
    batch = native.FlowerBatch(PROTO, ["handle"], native=False)
    with pytest.raises(native.BatchError, match=r"array\('Q'\) of 2 x 1 words"):
        batch.encode(array.array("I", [1, 2]), 2)
    with pytest.raises(native.BatchError, match="too small"):
        batch.encode_into(bytearray(10), array.array("Q", [1]), 1)


@needs_native
def test_the_tc_encode_bench_checks_its_own_bytes() -> None:
    module = bench.load("tc-encode")
    params = bench.parse_params(module.DEFAULTS, ["rules=3000", "python_rules=500", "chunk=1000"])
    results = module.run(params, lambda text: None)
    assert results["identical"] == 1 and results["message_bytes"] == 180
    assert set(results) >= {"native_rules_per_s", "python_rules_per_s", "speedup"}
