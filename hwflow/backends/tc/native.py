"""Batch encoding of many tc-flower rules of one shape: a prototype and a row of values per rule.

Encoding rule objects one by one in Python costs tens of microseconds per
rule; installing a large rule set is then bound by the encoder, not by the
device. Rules installed in bulk mostly share a shape (the same keys matched,
the same actions) and differ in a few values (an address, a port, a handle).
So a batch is described compactly as one *prototype* :class:`FlowerRule`,
the names of the fields that vary (its *columns*), and one row of integers
per rule, in a flat ``array('Q')``.

The prototype is encoded once by the reference encoder (hwflow.backends.tc.
flower); where each column lives in those bytes (its *slot*) is found by
encoding the prototype with two complementary values of the field and taking
the bytes that change, which also proves the field has one fixed place. The
C encoder (native/tcflower.c, through cffi) then copies the template and
writes each row into the slots, checking ranges and masks. Without the C
extension (no compiler at install time) the same batch is expanded into rule
objects and encoded by the reference encoder, with a one-line warning at
import; tests/unit/test_native_tc.py proves both byte-identical.

Column names: ``ifindex``, ``handle``, ``prio``; any integer key of
:class:`FlowerKeys` (``ipv4_dst``, ``ipv4_dst_mask``, ``ipv6_src``,
``tcp_dst``, ...); and ``actions[N].FIELD`` for the integer fields of
:data:`ACTION_COLUMNS` (``actions[0].ifindex`` of a mirred, say). A row has
one 64-bit word per column, two (high, low) for 128-bit ones.
"""

from __future__ import annotations

import array
import dataclasses
import logging
import re
from collections.abc import Callable, Sequence

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc import netlink as nl

LOG = logging.getLogger(__name__)

try:
    from hwflow.backends.tc import _tcflower_native  # type: ignore[attr-defined]
except ImportError:  # no C compiler at install time: the Python reference encoder does the work
    _tcflower_native = None
    LOG.warning("native tc-flower encoder not built (no C compiler at install?): bulk encoding uses Python, "
                "much slower; build it with: python native/build_tc.py")

NATIVE_AVAILABLE = _tcflower_native is not None
WORD_BITS = 64  # a column wider than this (IPv6 addresses) takes two words of a row, high then low
WORD = (1 << WORD_BITS) - 1
SEQ_OFFSET = 8  # nlmsghdr: len, type, flags, then seq

Layout = tuple[int, int, str]  # value bits, bytes on the wire, byte order
HOST, BIG = fl.HOST, "big"
# The header fields and the action fields that can be columns, with their layout (see flower.py's encoders).
HEADER_COLUMNS: dict[str, Layout] = {"ifindex": (31, 4, HOST), "handle": (32, 4, HOST), "prio": (16, 2, HOST)}
ACTION_COLUMNS: dict[type, dict[str, Layout]] = {
    fl.Mirred: {"ifindex": (31, 4, HOST)},
    fl.Vlan: {"vid": (12, 2, HOST), "prio": (3, 1, BIG)},
    fl.TunnelKey: {"ipv4_src": (32, 4, BIG), "ipv4_dst": (32, 4, BIG), "ipv6_src": (128, 16, BIG),
                   "ipv6_dst": (128, 16, BIG), "key_id": (32, 4, BIG), "dst_port": (16, 2, BIG), "tos": (8, 1, BIG),
                   "ttl": (8, 1, BIG)},
    fl.Ct: {"zone": (16, 2, HOST), "mark": (32, 4, HOST), "mark_mask": (32, 4, HOST), "nat_ipv4_min": (32, 4, BIG),
            "nat_ipv4_max": (32, 4, BIG), "nat_ipv6_min": (128, 16, BIG), "nat_ipv6_max": (128, 16, BIG),
            "nat_port_min": (16, 2, BIG), "nat_port_max": (16, 2, BIG)},
    fl.Csum: {"flags": (7, 4, HOST)},
}
_ACTION_COLUMN = re.compile(r"actions\[(\d+)\]\.(\w+)$")
_SPECS = {s.field: s for s in fl.KEY_SPECS}
_MASK_SPECS = {s.mask_field: s for s in fl.KEY_SPECS if s.mask_field}
OPS = ("add", "replace", "delete")
_NEW_FLAGS = {"add": nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_EXCL,
              "replace": nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_REPLACE}


class BatchError(ValueError):
    """A batch that cannot be encoded: a column without one fixed place, or a value out of range."""


@dataclasses.dataclass(frozen=True)
class Slot:
    """Where one word of a row goes in every message, and what values it takes.

    A column of up to 64 bits is one slot; a wider one (big-endian, full
    range: IPv6 addresses) is two, its high and then its low 8 bytes.
    """

    column: str
    offset: int
    size: int
    big_endian: bool
    min: int
    max: int
    mask_column: str | None  # the column holding this value's mask, if the mask varies too
    mask_const: int  # otherwise the prototype's mask (all ones for exact keys)
    covers: int = 0  # for a mask column whose value is the prototype's: bits the mask must keep
    half: str = ""  # "hi" / "lo" for the words of a column wider than 64 bits
    mask_index: int = -1  # the row word holding this word's mask (mask_column's word of the same half)

    def name(self) -> str:
        return f"{self.column} ({'high' if self.half == 'hi' else 'low'} 64 bits)" if self.half else self.column


def _words(slot: Slot) -> list[Slot]:
    """One slot per 64-bit word of the row; a 128-bit column splits into its high and low halves."""
    if slot.size <= 8:
        return [slot]
    if not slot.big_endian or slot.size != 16 or slot.min or slot.max != (1 << 128) - 1:
        raise BatchError(f"column {slot.column}: only full-range big-endian 128-bit keys can span two words")
    return [dataclasses.replace(slot, offset=slot.offset + at, size=8, min=0, max=WORD,
                                mask_const=slot.mask_const >> shift & WORD, covers=slot.covers >> shift & WORD,
                                half=half) for at, shift, half in ((0, WORD_BITS, "hi"), (8, 0, "lo"))]


# --- columns: reading and writing a field of a rule by name ------------------------------------------------------


def column_layout(rule: fl.FlowerRule, column: str) -> Layout:
    """(value bits, bytes on the wire, byte order) of a column of ``rule``; BatchError naming it if it is none."""
    if column in HEADER_COLUMNS:
        return HEADER_COLUMNS[column]
    spec = _SPECS.get(column) or _MASK_SPECS.get(column)
    if spec is not None:
        return spec.width, spec.size, spec.byteorder
    match = _ACTION_COLUMN.match(column)
    if match:
        index, name = int(match.group(1)), match.group(2)
        if index >= len(rule.actions):
            raise BatchError(f"column {column}: the prototype has {len(rule.actions)} actions")
        fields = ACTION_COLUMNS.get(type(rule.actions[index]), {})
        if name in fields:
            return fields[name]
        raise BatchError(f"column {column}: a {type(rule.actions[index]).__name__} action has no integer column "
                         f"{name!r}; use one of {sorted(fields) or 'none'}")
    raise BatchError(f"unknown column {column!r}: use ifindex, handle, prio, a FlowerKeys integer field "
                     "or actions[N].FIELD")


def get_column(rule: fl.FlowerRule, column: str) -> int | None:
    if column in HEADER_COLUMNS:
        return getattr(rule, column)
    if column in _SPECS or column in _MASK_SPECS:
        return getattr(rule.keys, column)
    match = _ACTION_COLUMN.match(column)
    assert match is not None, column  # column_layout() vetted the name
    return getattr(rule.actions[int(match.group(1))], match.group(2))


def with_columns(rule: fl.FlowerRule, values: dict[str, int]) -> fl.FlowerRule:
    """``rule`` with the named fields set, all at once (so a value and its mask change together)."""
    header = {k: v for k, v in values.items() if k in HEADER_COLUMNS}
    keys = {k: v for k, v in values.items() if k in _SPECS or k in _MASK_SPECS}
    actions = list(rule.actions)
    per_action: dict[int, dict[str, int]] = {}
    for column, value in values.items():
        match = _ACTION_COLUMN.match(column)
        if match:
            per_action.setdefault(int(match.group(1)), {})[match.group(2)] = value
    for index, fields in per_action.items():
        actions[index] = dataclasses.replace(actions[index], **fields)  # type: ignore[arg-type]
    new_keys = dataclasses.replace(rule.keys, **keys) if keys else rule.keys  # type: ignore[arg-type]
    return dataclasses.replace(rule, keys=new_keys, actions=tuple(actions), **header)  # type: ignore[arg-type]


def _mask_pairs(rule: fl.FlowerRule) -> dict[str, str]:
    """value column -> its mask column: masked keys, and the mark of a ct action."""
    pairs = {s.field: s.mask_field for s in fl.KEY_SPECS if s.mask_field}
    for i, action in enumerate(rule.actions):
        if isinstance(action, fl.Ct):
            pairs[f"actions[{i}].mark"] = f"actions[{i}].mark_mask"
    return pairs


# --- slots ----------------------------------------------------------------------------------------------------------


def _patterns(bits: int) -> tuple[int, int]:
    """Two values that differ in every bit of the field (so every byte of its slot changes)."""
    ones = (1 << bits) - 1
    a = int("01" * 64, 2) & ones
    return a, ones ^ a


def _distinct_bytes(bits: int) -> int:
    """0x..030201 cut to ``bits``: a value whose bytes all differ, so a misplaced window cannot match."""
    return int.from_bytes(bytes(range(1, 17)), "little") & ((1 << bits) - 1)


class Shape:
    """A prototype rule, its message template and the slots of its columns, for one kind of message."""

    def __init__(self, prototype: fl.FlowerRule, columns: Sequence[str], op: str = "add") -> None:
        if op not in OPS:
            raise BatchError(f"unknown batch operation {op!r}; use one of {OPS}")
        if len(set(columns)) != len(columns):
            raise BatchError(f"columns {list(columns)} name a field twice")
        self.prototype = prototype
        self.columns = tuple(columns)
        self.op = op
        self.template = self.encode_rule(prototype, 0)
        masks = _mask_pairs(prototype)
        values_of = {m: v for v, m in masks.items()}
        words = [w for c in self.columns for w in _words(self._find_slot(c, masks.get(c), values_of.get(c)))]
        where = {(w.column, w.half): i for i, w in enumerate(words)}
        self.slots = tuple(dataclasses.replace(w, mask_index=where[(w.mask_column, w.half)]) if w.mask_column else w
                           for w in words)
        self.row_width = len(self.slots)
        taken: set[int] = set(range(SEQ_OFFSET, SEQ_OFFSET + 4))
        for slot in self.slots:
            place = set(range(slot.offset, slot.offset + slot.size))
            if place & taken:
                raise BatchError(f"column {slot.column} overlaps another column in the message")
            taken |= place

    def encode_rule(self, rule: fl.FlowerRule, seq: int) -> bytes:
        """The reference encoding of one message of this batch."""
        if self.op == "delete":
            return fl.encode_delfilter(rule, seq)
        return fl.encode_newfilter(rule, seq, flags=_NEW_FLAGS[self.op])

    def _encode_with(self, column: str, value: int, mask: str | None, value_of: str | None) -> bytes | None:
        """The message with one column set (its mask opened to all ones, or its value zeroed, to stay valid)."""
        changes = {column: value}
        if mask is not None:
            changes[mask] = (1 << column_layout(self.prototype, mask)[0]) - 1
        if value_of is not None:
            changes[value_of] = 0
        try:
            return self.encode_rule(with_columns(self.prototype, changes), 0)
        except ValueError:
            return None

    def _find_slot(self, column: str, mask: str | None, value_of: str | None) -> Slot:
        bits, size, order = column_layout(self.prototype, column)
        if get_column(self.prototype, column) is None:
            raise BatchError(f"column {column}: the prototype does not set it, so its messages have no place "
                             "for it; give the prototype a value")
        a, b = _patterns(bits)
        one, other = self._encode_with(column, a, mask, value_of), self._encode_with(column, b, mask, value_of)
        if one is None or other is None or len(one) != len(self.template) or len(other) != len(self.template):
            raise BatchError(f"column {column}: changing it changes the message layout; put it in the prototype")
        changed = [i for i in range(len(one)) if one[i] != other[i]]
        probe = _distinct_bytes(bits)
        placed = self._encode_with(column, probe, mask, value_of) or b""
        # The one place where the field's bytes are the value's, in all three encodings, and all the change is.
        window = range(max(0, changed[-1] - size + 1), changed[0] + 1) if changed else range(0)
        places = [offset for offset in window
                  if all(enc[offset:offset + size] == v.to_bytes(size, order)  # type: ignore[arg-type]
                         for enc, v in ((one, a), (other, b), (placed, probe)))]
        if len(places) != 1:
            raise BatchError(f"column {column} does not have one fixed {size}-byte place in a {self.op} message "
                             "(not sent in it?); put it in the prototype")
        offset, big = places[0], order == "big"
        zero = self._encode_with(column, 0, mask, value_of)
        low = 0 if zero is not None and len(zero) == len(self.template) else 1
        mask_const = (1 << bits) - 1
        if mask is not None and mask not in self.columns:
            mask_const = get_column(self.prototype, mask) or 0
        covers = get_column(self.prototype, value_of) or 0 if value_of and value_of not in self.columns else 0
        return Slot(column, offset, size, big, low, (1 << bits) - 1, mask if mask in self.columns else None,
                    mask_const, covers)


# --- encoding -------------------------------------------------------------------------------------------------------


class FlowerBatch:
    """Encode many rules of one shape: ``encode(values, count, first_seq)`` with one row of values per rule."""

    def __init__(self, prototype: fl.FlowerRule, columns: Sequence[str], op: str = "add",
                 native: bool = NATIVE_AVAILABLE) -> None:
        if native and not NATIVE_AVAILABLE:
            raise BatchError("the native tc-flower encoder is not built; run: python native/build_tc.py")
        self.shape = Shape(prototype, columns, op)
        self.native = native
        self._encode: Callable[[bytearray, array.array, int, int], None] = \
            self._encode_c if native else self._encode_py
        if native:
            self._prepare_c()

    @property
    def message_size(self) -> int:
        return len(self.shape.template)

    def encode(self, values: array.array, count: int, first_seq: int = 1) -> bytes:
        """``count`` messages; ``values`` is ``array('Q')`` of count rows of ``shape.row_width`` words.

        A row holds the columns in order, one word each, two (high, low) for a column wider than 64 bits.
        """
        out = bytearray(count * self.message_size)
        self.encode_into(out, values, count, first_seq)
        return bytes(out)

    def encode_into(self, out: bytearray, values: array.array, count: int, first_seq: int = 1) -> int:
        """Like :meth:`encode` into a caller's buffer (reused across chunks of a large batch); bytes written."""
        width = self.shape.row_width
        if values.typecode != "Q" or len(values) != count * width:
            raise BatchError(f"values must be array('Q') of {count} x {width} words (columns "
                             f"{[w.name() for w in self.shape.slots]}), got {values.typecode!r} of {len(values)}")
        if not 0 <= first_seq <= 0xFFFFFFFF:
            raise BatchError(f"first_seq {first_seq} does not fit 32 bits")
        if len(out) < count * self.message_size:
            raise BatchError(f"buffer of {len(out)} bytes is too small for {count} messages of {self.message_size}")
        self._encode(out, values, count, first_seq)
        return count * self.message_size

    def rules(self, values: array.array, count: int) -> list[fl.FlowerRule]:
        """The rules a batch describes, as objects (slow; for the reference path and for tests)."""
        width = self.shape.row_width
        return [with_columns(self.shape.prototype, self.row_values(values[i * width:(i + 1) * width]))
                for i in range(count)]

    def row_values(self, row: Sequence[int]) -> dict[str, int]:
        """column -> value of one row (the two words of a wide column joined)."""
        out: dict[str, int] = {}
        for slot, word in zip(self.shape.slots, row):
            out[slot.column] = out.get(slot.column, 0) << WORD_BITS | word
        return out

    def _encode_py(self, out: bytearray, values: array.array, count: int, first_seq: int) -> None:
        self._check_py(values, count)
        rules = self.rules(values, count)
        data = b"".join(self.shape.encode_rule(r, (first_seq + i) & 0xFFFFFFFF) for i, r in enumerate(rules))
        out[:len(data)] = data

    def _check_py(self, values: array.array, count: int) -> None:
        """The C encoder's checks, rule by rule, with its errors (so both paths refuse the same batches)."""
        width = self.shape.row_width
        for rule in range(count):
            row = values[rule * width:(rule + 1) * width]
            for i, slot in enumerate(self.shape.slots):
                mask = row[slot.mask_index] if slot.mask_column else slot.mask_const
                if not slot.min <= row[i] <= slot.max:
                    raise self._value_error("range", rule, i, values)
                if row[i] & ~mask:
                    raise self._value_error("mask", rule, i, values)
                if slot.covers & ~row[i]:
                    raise self._value_error("covers", rule, i, values)

    def _prepare_c(self) -> None:
        ffi = _tcflower_native.ffi
        slots = ffi.new("struct hwtc_slot[]", max(1, len(self.shape.slots)))
        for i, slot in enumerate(self.shape.slots):
            slots[i].offset = slot.offset
            slots[i].size = slot.size
            slots[i].big_endian = slot.big_endian
            slots[i].mask_slot = slot.mask_index
            slots[i].min, slots[i].max, slots[i].mask_const = slot.min, slot.max, slot.mask_const
            slots[i].covers = slot.covers
        self._c_slots = slots
        self._c_template = ffi.from_buffer(self.shape.template)
        self._c_result = ffi.new("struct hwtc_result *")

    def _encode_c(self, out: bytearray, values: array.array, count: int, first_seq: int) -> None:
        ffi, lib = _tcflower_native.ffi, _tcflower_native.lib
        values_c = ffi.from_buffer("uint64_t[]", values) if len(values) else ffi.NULL
        res = self._c_result
        lib.hwtc_encode(self._c_template, self.message_size, self._c_slots, len(self.shape.slots), values_c,
                        count, first_seq, ffi.from_buffer(out), len(out), res)
        if res.error:
            kinds = {lib.HWTC_E_RANGE: "range", lib.HWTC_E_MASK: "mask", lib.HWTC_E_COVERS: "covers"}
            if res.error not in kinds:
                raise BatchError(f"native tc-flower encoder failed with code {res.error} (a bug: please report)")
            raise self._value_error(kinds[res.error], res.bad_rule, res.bad_slot, values)

    def _value_error(self, kind: str, rule: int, slot_index: int, values: array.array) -> BatchError:
        slot = self.shape.slots[slot_index]
        value = values[rule * self.shape.row_width + slot_index]
        if kind == "range":
            return BatchError(f"rule {rule} of the batch: {slot.name()}={value:#x} is out of range "
                              f"({slot.min:#x}..{slot.max:#x})")
        if kind == "covers":
            return BatchError(f"rule {rule} of the batch: {slot.name()}={value:#x} drops bits of the prototype's "
                              f"value {slot.covers:#x}; widen the mask or make the value a column too")
        mask_name = slot.mask_column or "the prototype's mask"
        return BatchError(f"rule {rule} of the batch: {slot.name()}={value:#x} has bits outside {mask_name}; "
                          "mask the value first")
