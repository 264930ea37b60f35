"""Batch encoding of OpenFlow 1.3 flow_mods: a compact program in, wire bytes out.

Building one os-ken message object per flow is what limits flow programming
(about 9k flows/s; OVS itself ingests about 200k/s), so many flow_mods are
described by one flat list of integers (a *program*) and encoded in one call,
natively (native/openflow.c through cffi) when the extension was built, else
by os-ken, which is also the reference the native output is proven
byte-identical to (tests/unit/test_native_of.py).

Program: a template index, then that template's arguments (one word each; two,
high then low, for values wider than 64 bits), and ``CLOSE`` after the
contents of a container (message, match, instruction, NXAST_CT). The C side
knows no OpenFlow: every match field and action is a :class:`Template` here,
generated from os-ken's own field table, with the os-ken object that is its
reference. A new field is one more name in :data:`FIELD_NAMES`; a new action
one more entry in :func:`_action_templates`.

OVS fields os-ken lacks are added to its OpenFlow 1.3 field table here
(:data:`OVS_EXTRA_FIELDS`), the way os-ken declares its own, so the reference
encoder, os-ken's match parser and the native templates all know them: today
``nd_reserved`` and ``nd_options_type`` (OVS >= 2.11; what turns a neighbor
solicitation into an advertisement). Their OXM class is 0x1000 (OVS's
ERICOXM_OF, a plain 4-byte header like NXM's, not an experimenter OXM),
fields 1 and 2, as ``ovs-ofctl ofp-print`` decodes them.
"""

from __future__ import annotations

import array
import dataclasses
import logging
import struct
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

from os_ken.lib import type_desc
from os_ken.ofproto import nicira_ext, ofproto_common, oxm_fields
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

LOG = logging.getLogger(__name__)

try:
    from hwflow.backends.ovs import _openflow_native  # type: ignore[attr-defined]
except ImportError:  # no C compiler at install time: the os-ken reference encoder does the work
    _openflow_native = None
    LOG.warning("native OpenFlow encoder not built (no C compiler at install?): flow programming uses os-ken, "
                "tens of times slower; build it with: python native/build_of.py")

NATIVE_AVAILABLE = _openflow_native is not None

PLAIN, CONTAINER, MATCH, MESSAGE = 0, 1, 2, 3
CLOSE = (1 << 64) - 1
MAX_SLOTS = 12
MAX_DEPTH = 8
MAX_MESSAGE = 0xFFFF
CHUNK_BYTES = 1 << 20
NX_VENDOR = ofproto_common.NX_EXPERIMENTER_ID
_IPV4 = type_desc.IPv4Addr

ERICOXM_OF_CLASS = 0x1000  # OVS's OXM class for the fields Ericsson contributed (lib/meta-flow.h)


class EricssonOxm(oxm_fields._OxmClass):
    """An OXM of OVS's ERICOXM_OF class: a 4-byte header like OpenFlow basic fields."""

    _class = ERICOXM_OF_CLASS


# OVS fields os-ken does not know: (name, OXM field number, os-ken value type), as OVS's meta-flow.h has them.
OVS_EXTRA_FIELDS = (
    ("nd_reserved", 1, type_desc.Int4),  # ERICOXM_OF_ICMPV6_ND_RESERVED: the ND flags word (an NA's R/S/O)
    ("nd_options_type", 2, type_desc.Int1),  # ERICOXM_OF_ICMPV6_ND_OPTIONS_TYPE: the ND option's type
)


def _register_ovs_fields() -> None:
    """Add :data:`OVS_EXTRA_FIELDS` to os-ken's OpenFlow 1.3 field table and rebuild its lookups, as os-ken's
    own module does at import; a second call (a reload) adds nothing."""
    known = {field.name for field in ofp.oxm_types}
    new = [EricssonOxm(name, number, kind) for name, number, kind in OVS_EXTRA_FIELDS if name not in known]
    if new:
        ofp.oxm_types.extend(new)
        oxm_fields.generate(ofp.__name__)


_register_ovs_fields()

# The OXM fields templates exist for, by os-ken name (its width and header come from os-ken).
FIELD_NAMES: tuple[str, ...] = (
    "in_port", "metadata", "eth_dst", "eth_src", "eth_type", "vlan_vid", "vlan_pcp", "ip_dscp", "ip_ecn",
    "ip_proto", "ipv4_src", "ipv4_dst", "tcp_src", "tcp_dst", "udp_src", "udp_dst", "sctp_src", "sctp_dst",
    "icmpv4_type", "icmpv4_code", "arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha", "ipv6_src", "ipv6_dst",
    "ipv6_flabel", "icmpv6_type", "icmpv6_code", "ipv6_nd_target", "ipv6_nd_sll", "ipv6_nd_tll", "nd_reserved",
    "nd_options_type", "tunnel_id", "tcp_flags", "nw_ttl", "tun_ipv4_src", "tun_ipv4_dst", "tun_ipv6_src",
    "tun_ipv6_dst", "pkt_mark", "ct_state", "ct_zone", "ct_mark", "ct_label", "conj_id",
    *(f"reg{i}" for i in range(16)), *(f"xreg{i}" for i in range(8)),
)


class Of13Datapath:
    """What os-ken message classes need from a datapath to serialize and parse: the protocol modules."""

    ofproto = ofp
    ofproto_parser = parser
    id = None


DATAPATH = Of13Datapath()


class EncodeError(ValueError):
    """A program the encoder cannot turn into messages; says where and why."""


# --- fields -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Field:
    """One OXM/NXM field as the wire spells it."""

    name: str
    header: bytes  # exact-match header (4 bytes, or 8 with an experimenter id)
    width: int  # value bytes
    rank: Any  # os-ken's sort key in OFPMatch: terms are emitted in this order
    to_user: Callable[[int], Any]  # integer -> the value os-ken wants (MAC/IP strings, ints)

    @property
    def masked_header(self) -> bytes:
        word = struct.unpack_from("!I", self.header)[0]
        exp = len(self.header) - 4
        return struct.pack("!I", (word & ~0x1FF) | 0x100 | (exp + 2 * self.width)) + self.header[4:]

    @property
    def header_word(self) -> int:
        """The 32-bit header as NXAST_REG_MOVE / NXAST_CT's zone_src carry it."""
        return struct.unpack_from("!I", self.header)[0]


def field_from_os_ken(name: str) -> Field:
    """A field's wire spelling as os-ken's own field table gives it."""
    num = ofp.oxm_from_user_header(name)
    kind = ofp._oxm_field_desc(num).type
    header = bytearray()
    ofp.oxm_serialize_header(num, header, 0)
    width = kind.size
    rank = num[0] if isinstance(num, tuple) else num

    def to_user(value: int) -> Any:
        return kind.to_user(value.to_bytes(width, "big"))

    return Field(name, bytes(header), width, rank, to_user)


# --- templates ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Slot:
    offset: int
    width: int  # bytes

    @property
    def words(self) -> int:
        return 2 if self.width > 8 else 1


Builder = Callable[[list[int], list[Any]], Any]  # (arguments, children) -> os-ken object


@dataclasses.dataclass(frozen=True)
class Template:
    """Fixed bytes with big-endian slots; containers also get their 16-bit length at ``length_at``."""

    name: str
    data: bytes
    kind: int
    slots: tuple[Slot, ...]
    build: Builder
    length_at: int = 2

    def __post_init__(self) -> None:
        if len(self.slots) > MAX_SLOTS or any(s.offset + s.width > len(self.data) for s in self.slots):
            raise ValueError(f"template {self.name}: slots do not fit (at most {MAX_SLOTS}, inside its bytes)")

    @property
    def words(self) -> int:
        return sum(s.words for s in self.slots)


def _pad8(data: bytes) -> bytes:
    return data + bytes(-len(data) % 8)


def _with_length(data: bytes) -> bytes:
    """An action whose 16-bit length (bytes 2..3) is its own padded size."""
    data = _pad8(data)
    return data[:2] + struct.pack("!H", len(data)) + data[4:]


def _nx(subtype: int, body: bytes) -> bytes:
    return _with_length(struct.pack("!HHIH", ofp.OFPAT_EXPERIMENTER, 0, NX_VENDOR, subtype) + body)


def _join(args: Sequence[int], slots: Sequence[Slot]) -> list[int]:
    """Arguments as integers, a two-word slot folded back into one value."""
    values, i = [], 0
    for slot in slots:
        if slot.words == 2:
            values.append(args[i] << 64 | args[i + 1])
        else:
            values.append(args[i])
        i += slot.words
    return values


class _RegLoad2(parser.NXActionRegLoad2):
    """os-ken's NXAST_REG_LOAD2 with OVS's padding for OXMs over 14 bytes, which os-ken cannot serialize
    (a negative pad); identical bytes wherever os-ken works."""

    def serialize_body(self) -> bytearray:
        data = bytearray()
        value = self.value if self.mask is None else (self.value, self.mask)
        num, value, mask = ofp.oxm_from_user(self.dst, value)
        length = ofp.oxm_serialize(num, value, mask, data, 0)
        return data + bytes(-(10 + length) % 8)


def _oxm_templates(field: Field) -> list[Template]:
    exact, masked = field.header, field.masked_header
    h, w = len(exact), field.width
    return [
        Template(f"oxm:{field.name}", exact + bytes(w), PLAIN, (Slot(h, w),),
                 lambda a, _c, f=field: (f.name, f.to_user(a[0]))),
        Template(f"oxm:{field.name}/masked", masked + bytes(2 * w), PLAIN, (Slot(h, w), Slot(h + w, w)),
                 lambda a, _c, f=field: (f.name, (f.to_user(a[0]), f.to_user(a[1])))),
    ]


def _field_action_templates(field: Field) -> list[Template]:
    h, w = len(field.header), field.width
    set_field = _with_length(struct.pack("!HH", ofp.OFPAT_SET_FIELD, 0) + field.header + bytes(w))
    load = _nx(nicira_ext.NXAST_REG_LOAD2, field.header + bytes(w))
    load_masked = _nx(nicira_ext.NXAST_REG_LOAD2, field.masked_header + bytes(2 * w))
    return [
        Template(f"set_field:{field.name}", set_field, PLAIN, (Slot(4 + h, w),),
                 lambda a, _c, f=field: parser.OFPActionSetField(**{f.name: f.to_user(a[0])})),
        Template(f"reg_load2:{field.name}", load, PLAIN, (Slot(10 + h, w),),
                 lambda a, _c, f=field: _RegLoad2(dst=f.name, value=f.to_user(a[0]))),
        Template(f"reg_load2:{field.name}/masked", load_masked, PLAIN, (Slot(10 + h, w), Slot(10 + h + w, w)),
                 lambda a, _c, f=field: _RegLoad2(dst=f.name, value=f.to_user(a[0]), mask=f.to_user(a[1]))),
    ]


def _flow_mod(args: list[int], children: list[Any]) -> parser.OFPFlowMod:
    if not children or not isinstance(children[0], parser.OFPMatch):
        raise EncodeError("a flow_mod's first child must be its match")
    cookie, cookie_mask, table, command, idle, hard, priority, buffer_id, out_port, out_group, flags = args
    return parser.OFPFlowMod(DATAPATH, cookie, cookie_mask, table, command, idle, hard, priority, buffer_id,
                             out_port, out_group, flags, children[0], children[1:])


def _message_templates() -> list[Template]:
    header = struct.pack("!BBHI", ofp.OFP_VERSION, ofp.OFPT_FLOW_MOD, 0, 0)
    # cookie, cookie_mask, table_id, command, idle, hard, priority, buffer_id, out_port, out_group, flags
    widths = ((8, 8), (16, 8), (24, 1), (25, 1), (26, 2), (28, 2), (30, 2), (32, 4), (36, 4), (40, 4), (44, 2))
    return [
        Template("flow_mod", header + bytes(40), MESSAGE, tuple(Slot(o, w) for o, w in widths), _flow_mod),
        Template("match", struct.pack("!HH", ofp.OFPMT_OXM, 0), MATCH, (),
                 lambda _a, c: parser.OFPMatch(**dict(c))),
    ]


def _instruction_templates() -> list[Template]:
    def actions(kind: int) -> bytes:
        return struct.pack("!HH4x", kind, 0)

    return [
        Template("apply_actions", actions(ofp.OFPIT_APPLY_ACTIONS), CONTAINER, (),
                 lambda _a, c: parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, c)),
        Template("write_actions", actions(ofp.OFPIT_WRITE_ACTIONS), CONTAINER, (),
                 lambda _a, c: parser.OFPInstructionActions(ofp.OFPIT_WRITE_ACTIONS, c)),
        Template("clear_actions", struct.pack("!HH4x", ofp.OFPIT_CLEAR_ACTIONS, 8), PLAIN, (),
                 lambda _a, _c: parser.OFPInstructionActions(ofp.OFPIT_CLEAR_ACTIONS, [])),
        Template("goto_table", struct.pack("!HHB3x", ofp.OFPIT_GOTO_TABLE, 8, 0), PLAIN, (Slot(4, 1),),
                 lambda a, _c: parser.OFPInstructionGotoTable(a[0])),
        Template("write_metadata", struct.pack("!HH4xQQ", ofp.OFPIT_WRITE_METADATA, 24, 0, 0), PLAIN,
                 (Slot(8, 8), Slot(16, 8)), lambda a, _c: parser.OFPInstructionWriteMetadata(a[0], a[1])),
    ]


def _ct(args: list[int], children: list[Any], headers: dict[int, str]) -> parser.NXActionCT:
    flags, zone_src, zone_ofs_nbits, recirc_table, alg = args
    return parser.NXActionCT(flags, headers[zone_src] if zone_src else "", zone_ofs_nbits, recirc_table, alg,
                             children)


def _action_templates(fields: Sequence[Field]) -> list[Template]:
    headers = {f.header_word: f.name for f in fields if len(f.header) == 4}
    return [
        Template("output", struct.pack("!HHIH6x", ofp.OFPAT_OUTPUT, 16, 0, 0), PLAIN, (Slot(4, 4), Slot(8, 2)),
                 lambda a, _c: parser.OFPActionOutput(a[0], a[1])),
        Template("set_nw_ttl", struct.pack("!HHB3x", ofp.OFPAT_SET_NW_TTL, 8, 0), PLAIN, (Slot(4, 1),),
                 lambda a, _c: parser.OFPActionSetNwTtl(a[0])),
        Template("dec_nw_ttl", struct.pack("!HH4x", ofp.OFPAT_DEC_NW_TTL, 8), PLAIN, (),
                 lambda _a, _c: parser.OFPActionDecNwTtl()),
        Template("push_vlan", struct.pack("!HHH2x", ofp.OFPAT_PUSH_VLAN, 8, 0), PLAIN, (Slot(4, 2),),
                 lambda a, _c: parser.OFPActionPushVlan(a[0])),
        Template("pop_vlan", struct.pack("!HH4x", ofp.OFPAT_POP_VLAN, 8), PLAIN, (),
                 lambda _a, _c: parser.OFPActionPopVlan()),
        Template("group", struct.pack("!HHI", ofp.OFPAT_GROUP, 8, 0), PLAIN, (Slot(4, 4),),
                 lambda a, _c: parser.OFPActionGroup(a[0])),
        # n_bits, src_ofs, dst_ofs, src header, dst header (4-byte headers: NXM and OXM basic fields)
        Template("reg_move", _nx(nicira_ext.NXAST_REG_MOVE, bytes(14)), PLAIN,
                 (Slot(10, 2), Slot(12, 2), Slot(14, 2), Slot(16, 4), Slot(20, 4)),
                 lambda a, _c: parser.NXActionRegMove(headers[a[3]], headers[a[4]], a[0], a[1], a[2])),
        # flags, zone_src header (0: zone_ofs_nbits is the zone itself), zone_ofs_nbits, recirc_table, alg
        Template("ct", _nx(nicira_ext.NXAST_CT, bytes(14)), CONTAINER,
                 (Slot(10, 2), Slot(12, 4), Slot(16, 2), Slot(18, 1), Slot(22, 2)),
                 lambda a, c: _ct(a, c, headers)),
        # Only inside "ct". flags; then the one IPv4 address the range holds (OVS's nat(src=A) / nat(dst=A)).
        Template("nat", _nx(nicira_ext.NXAST_NAT, bytes(6)), PLAIN, (Slot(12, 2),),
                 lambda a, _c: parser.NXActionNAT(a[0])),
        Template("nat:ipv4", _nx(nicira_ext.NXAST_NAT, struct.pack("!4xHI", nicira_ext.NX_NAT_RANGE_IPV4_MIN, 0)),
                 PLAIN, (Slot(12, 2), Slot(16, 4)),
                 lambda a, _c: parser.NXActionNAT(a[0], range_ipv4_min=_IPV4.to_user(a[1].to_bytes(4, "big")))),
        Template("ct_clear", _nx(nicira_ext.NXAST_CT_CLEAR, bytes(6)), PLAIN, (),
                 lambda _a, _c: parser.NXActionCTClear()),
        Template("resubmit_table", _nx(nicira_ext.NXAST_RESUBMIT_TABLE, bytes(6)), PLAIN, (Slot(10, 2), Slot(12, 1)),
                 lambda a, _c: parser.NXActionResubmitTable(a[0], a[1])),
    ]


class Catalog:
    """Every template, by index (what programs carry) and by name (what compilers look up)."""

    def __init__(self, field_names: Sequence[str] = FIELD_NAMES) -> None:
        self.fields: dict[str, Field] = {name: field_from_os_ken(name) for name in field_names}
        templates = _message_templates() + _instruction_templates() + _action_templates(list(self.fields.values()))
        for field in self.fields.values():
            templates += _oxm_templates(field) + _field_action_templates(field)
        self.templates: tuple[Template, ...] = tuple(templates)
        self.index: dict[str, int] = {t.name: i for i, t in enumerate(self.templates)}
        if len(self.index) != len(self.templates):
            raise ValueError("two templates share a name")

    def id(self, name: str) -> int:
        try:
            return self.index[name]
        except KeyError:
            raise EncodeError(f"no OpenFlow template {name!r}; add the field to FIELD_NAMES or the action to "
                              "_action_templates in hwflow/backends/ovs/native.py") from None

    def field(self, name: str) -> Field:
        try:
            return self.fields[name]
        except KeyError:
            raise EncodeError(f"OXM field {name!r} has no template; add it to FIELD_NAMES in "
                              "hwflow/backends/ovs/native.py") from None


# --- the compact description -> program words --------------------------------------------------

Term = tuple[str, int, int | None]  # OXM field, value, mask (None: exact)
Action = tuple[Any, ...]  # ("output", port[, max_len]), ("set_field", field, value), ... (see action_words)
Instruction = tuple[Any, ...]  # ("apply", [actions]), ("write", [actions]), ("clear",), ("goto", table), ...


def _value_words(value: int, width: int) -> tuple[int, ...]:
    return (value >> 64, value & CLOSE) if width > 8 else (value,)


class ProgramBuilder:
    """Turns the tuple description of flow_mods into program words, with the catalog's template ids."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def match_words(self, terms: Sequence[Term]) -> list[int]:
        """Terms in os-ken's order (its sort key) and masked values pre-masked (as os-ken normalises them),
        so native and os-ken bytes agree."""
        fields = [(self.catalog.field(name), value, mask) for name, value, mask in terms]
        fields.sort(key=lambda t: t[0].rank)
        words = [self.catalog.index["match"]]
        for field, value, mask in fields:
            if mask is None:
                words += (self.catalog.index[f"oxm:{field.name}"], *_value_words(value, field.width))
            else:
                words += (self.catalog.index[f"oxm:{field.name}/masked"], *_value_words(value & mask, field.width),
                          *_value_words(mask, field.width))
        words.append(CLOSE)
        return words

    def action_words(self, action: Action) -> list[int]:
        name, *args = action
        cat = self.catalog
        if name in ("set_field", "reg_load2"):
            field = cat.field(args[0])
            mask = args[2] if len(args) > 2 else None
            if name == "set_field" or mask is None:
                return [cat.id(f"{name}:{field.name}"), *_value_words(args[1], field.width)]
            return [cat.id(f"reg_load2:{field.name}/masked"), *_value_words(args[1], field.width),
                    *_value_words(mask, field.width)]
        if name == "output":  # max_len only means something for the controller port
            return [cat.id("output"), args[0], args[1] if len(args) > 1 else 0]
        if name == "reg_move":
            src, dst, n_bits, src_ofs, dst_ofs = args
            return [cat.id("reg_move"), n_bits, src_ofs, dst_ofs, self._short_header(src), self._short_header(dst)]
        if name == "ct":
            flags, zone_src, zone_ofs_nbits, recirc_table, alg, nested = args
            zone = self._short_header(zone_src) if zone_src else 0
            words = [cat.id("ct"), flags, zone, zone_ofs_nbits, recirc_table, alg]
            for inner in nested:
                words += self.action_words(inner)
            return [*words, CLOSE]
        if name == "nat":
            return self._nat_words(*args)
        return [cat.id(name), *args]

    def _nat_words(self, flags: int, ipv4_min: int | None = None, *other_ranges: int | None) -> list[int]:
        """("nat", flags[, ipv4_min, ipv4_max, ipv6_min, ipv6_max, proto_min, proto_max]), None where absent:
        the translation key's form. Templates exist for no range and for one IPv4 address."""
        if any(r is not None for r in other_ranges):
            raise EncodeError("nat: only a single IPv4 address (or none) has a template; add one to "
                              "_action_templates in hwflow/backends/ovs/native.py")
        if ipv4_min is None:
            return [self.catalog.id("nat"), flags]
        return [self.catalog.id("nat:ipv4"), flags, ipv4_min]

    def _short_header(self, name: str) -> int:
        field = self.catalog.field(name)
        if len(field.header) != 4:
            raise EncodeError(f"{name} has an experimenter OXM header; reg_move and ct zones take 4-byte headers")
        return field.header_word

    def instruction_words(self, instruction: Instruction) -> list[int]:
        name, *args = instruction
        if name in ("apply", "write"):
            words = [self.catalog.id(f"{name}_actions")]
            for action in args[0]:
                words += self.action_words(action)
            return [*words, CLOSE]
        if name == "goto":
            return [self.catalog.id("goto_table"), args[0]]
        if name == "clear":
            return [self.catalog.id("clear_actions")]
        return [self.catalog.id(name), *args]

    def body_words(self, match: Sequence[Term], instructions: Sequence[Instruction]) -> list[int]:
        words = self.match_words(match)
        for instruction in instructions:
            words += self.instruction_words(instruction)
        return words

    def header_words(self, *, table: int, priority: int, command: int = ofp.OFPFC_ADD, cookie: int = 0,
                     cookie_mask: int = 0, idle: int = 0, hard: int = 0, buffer_id: int = ofp.OFP_NO_BUFFER,
                     out_port: int = ofp.OFPP_ANY, out_group: int = ofp.OFPG_ANY, flags: int = 0) -> tuple[int, ...]:
        return (self.catalog.index["flow_mod"], cookie, cookie_mask, table, command, idle, hard, priority,
                buffer_id, out_port, out_group, flags)


# --- encoders -------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Chunk:
    """Complete messages, xids ``first_xid .. first_xid + messages - 1`` in order."""

    data: bytes
    first_xid: int
    messages: int


class Encoder(Protocol):
    def encode(self, words: Sequence[int], first_xid: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
        """Messages in chunks of at most ``chunk_bytes`` (at least 64 KiB), xids counting from ``first_xid``."""


_ERRORS = {
    1: "{word}: word {value} is not a template index (0..{last}) or CLOSE",
    2: "the message starting at word {at} is cut short: the program ends before its arguments or CLOSEs",
    3: "{word}: an argument of {name} does not fit its slot",
    4: "{word}: {name} cannot go here (a message at top level, everything else inside one, at most "
       f"{MAX_DEPTH} levels deep, CLOSE only inside an open container)",
    5: "the message starting at word {at} is longer than 65535 bytes; split its actions over several flows",
}


def _error(code: int, at: int, words: Sequence[int], catalog: Catalog) -> EncodeError:
    value = words[at] if at < len(words) else None
    name = catalog.templates[value].name if isinstance(value, int) and value < len(catalog.templates) else (
        "CLOSE" if value == CLOSE else str(value))
    text = _ERRORS[code].format(word=f"program word {at}", value=value, last=len(catalog.templates) - 1, at=at,
                                name=name)
    return EncodeError(f"cannot encode OpenFlow program: {text}")


def _chunk_size(chunk_bytes: int) -> int:
    return max(chunk_bytes, MAX_MESSAGE + 8 + 8)


class NativeEncoder:
    """native/openflow.c through cffi; the catalog's templates are handed over once."""

    def __init__(self, catalog: Catalog) -> None:
        if _openflow_native is None:
            raise EncodeError("the native OpenFlow encoder is not built; run python native/build_of.py "
                              "(needs a C compiler) or use OskenEncoder")
        self.catalog = catalog
        ffi = self._ffi = _openflow_native.ffi
        self._lib = _openflow_native.lib
        self._keep = [ffi.new("uint8_t[]", t.data) for t in catalog.templates]
        self._templates = ffi.new("struct hwof_template[]", len(catalog.templates))
        for c, t, data in zip(self._templates, catalog.templates, self._keep):
            c.data, c.size, c.kind, c.nslots, c.length_at = data, len(t.data), t.kind, len(t.slots), t.length_at
            for i, slot in enumerate(t.slots):
                c.slots[i].offset, c.slots[i].width = slot.offset, slot.width

    def encode(self, words: Sequence[int], first_xid: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
        ffi, lib = self._ffi, self._lib
        try:
            program = words if isinstance(words, array.array) else array.array("Q", words)
        except OverflowError:
            raise EncodeError("cannot encode OpenFlow program: a word is negative or wider than 64 bits") from None
        prog = ffi.from_buffer("uint64_t[]", program)
        size = _chunk_size(chunk_bytes)
        result = ffi.new("struct hwof_result *")
        done, xid = 0, first_xid
        while done < len(program):
            out = bytearray(size)
            rc = lib.hwof_encode(self._templates, len(self.catalog.templates), prog + done, len(program) - done,
                                 xid & 0xFFFFFFFF, ffi.from_buffer(out), size, result)
            if rc:
                raise _error(rc, done + result.error_at, program, self.catalog)
            del out[result.written:]
            yield Chunk(bytes(out), xid, result.messages)
            done += result.consumed
            xid += result.messages


@dataclasses.dataclass
class _Node:
    template: Template
    args: list[int]
    children: list[Any]


class OskenEncoder:
    """The reference: the same program read in Python, each template built as its os-ken object."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def messages(self, words: Sequence[int]) -> Iterator[tuple[int, Any]]:
        """(first program word, os-ken message) for each message of the program."""
        templates = self.catalog.templates
        stack: list[_Node] = []
        i = start = 0
        while i < len(words):
            op = words[i]
            if op == CLOSE:
                if not stack:
                    raise _error(4, i, words, self.catalog)
                node = stack.pop()
                built = node.template.build(node.args, node.children)
                i += 1
                if stack:
                    stack[-1].children.append(built)
                else:
                    yield start, built
                continue
            if not isinstance(op, int) or not 0 <= op < len(templates):
                raise _error(1, i, words, self.catalog)
            template = templates[op]
            if (not stack) != (template.kind == MESSAGE) or len(stack) >= MAX_DEPTH:
                raise _error(4, i, words, self.catalog)
            if not stack:
                start = i
            raw = list(words[i + 1:i + 1 + template.words])
            if len(raw) < template.words:
                raise _error(2, start, words, self.catalog)
            if any(not 0 <= w < 1 << 64 for w in raw) or any(
                    v >> (8 * s.width) for v, s in zip(_join(raw, template.slots), template.slots)):
                raise _error(3, i, words, self.catalog)
            args = _join(raw, template.slots)
            i += 1 + template.words
            if template.kind == PLAIN:
                stack[-1].children.append(template.build(args, []))
            else:
                stack.append(_Node(template, args, []))
        if stack:
            raise _error(2, start, words, self.catalog)

    def encode(self, words: Sequence[int], first_xid: int, chunk_bytes: int = CHUNK_BYTES) -> Iterator[Chunk]:
        size = _chunk_size(chunk_bytes)
        parts: list[bytes] = []
        used = count = 0
        xid = first_xid
        for start, msg in self.messages(words):
            msg.xid = (xid + count) & 0xFFFFFFFF
            try:
                msg.serialize()
            except struct.error:  # os-ken packs a length over 16 bits
                raise _error(5, start, words, self.catalog) from None
            if used + len(msg.buf) > size - MAX_MESSAGE - 8 and parts:
                yield Chunk(b"".join(parts), xid, count)
                xid, parts, used, count = xid + count, [], 0, 0
            parts.append(bytes(msg.buf))
            used += len(msg.buf)
            count += 1
        if parts:
            yield Chunk(b"".join(parts), xid, count)


def best_encoder(catalog: Catalog) -> Encoder:
    """Native where it was built; os-ken otherwise (the import already warned)."""
    return NativeEncoder(catalog) if NATIVE_AVAILABLE else OskenEncoder(catalog)
