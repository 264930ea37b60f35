"""The pipeline IR: tables of prioritised flows with masked matches.

The IR is what the apps emit and what every backend consumes. It knows
nothing of OpenFlow or tc: ports are logical port keys (the ``unique_key``
the database gives each port), values are plain integers (a MAC is a 48-bit
int, an IPv4 address a 32-bit int), and every flow names the logical object
it came from (``owner``) so a change to one object touches only its flows.

VLANs: the IR models one tag. ``vlan_vid`` is its VID; ``vlan_tagged`` says
whether there is a tag at all, so a flow can take untagged frames only
(``vlan_tagged=0``) or any tagged one. It is derived, not carried: a packet
is tagged when it has a ``vlan_vid``; PushVlan/PopVlan set and clear it.

Semantics (shared by the reference interpreter, OVS and the partitioner):
a packet enters table 0; in each table the highest-priority flow whose match
covers the packet runs its actions in order; a table with no match drops.
``Output`` actions accumulate; ``GotoTable`` continues in a later table; the
packet is dropped if the walk ends with no output.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

# Field name -> width in bits. Names follow the `hwflow trace` packet spec.
FIELD_BITS: dict[str, int] = {
    "in_port": 32,
    "metadata": 64,  # the logical network key while a packet is classified
    "eth_src": 48,
    "eth_dst": 48,
    "eth_type": 16,
    "vlan_vid": 12,
    "vlan_tagged": 1,  # 1: the frame carries a VLAN tag (a vlan_vid match implies it), 0: it carries none
    "ipv4_src": 32,
    "ipv4_dst": 32,
    "ipv6_src": 128,
    "ipv6_dst": 128,
    "ip_proto": 8,
    "ip_ttl": 8,
    "tcp_src": 16,
    "tcp_dst": 16,
    "udp_src": 16,
    "udp_dst": 16,
    "icmp_type": 8,
    "icmp_code": 8,
    "arp_op": 16,
    "arp_spa": 32,
    "arp_tpa": 32,
    "arp_sha": 48,
    "arp_tha": 48,
    "nd_target": 128,  # IPv6 neighbor discovery (ICMPv6 135/136): the address solicited or advertised
    "nd_sll": 48,  # an NS's source link-layer address option
    "nd_tll": 48,  # an NA's target link-layer address option
    # RFC 4861 wire fields of the ND header itself, NIC-neutral like the rest: an NA answer is built by
    # rewriting an NS, which needs its flags word and its option's type (OVS: nd_reserved, nd_options_type).
    "nd_reserved": 32,  # the word after the checksum: an NA's R/S/O flags (0x80000000/0x40000000/0x20000000)
    "nd_options_type": 8,  # the type of the message's link-layer option (1: source, 2: target)
    "tun_id": 64,  # VNI of a packet that came in (or goes out) through a tunnel
    "tun_src": 32,
    "tun_dst": 32,
    "ct_state": 8,  # CT_* bits below, set by a Conntrack action
    "ct_zone": 16,
    "ct_mark": 32,
    "outport": 32,  # the logical port (or flood group) L2 chose; read by the egress stages
    **{f"reg{i}": 32 for i in range(8)},  # scratch registers, allocated to apps by the layout
}

# ct_state bits, numbered as OVS numbers them (so translation is the identity).
CT_NEW = 0x01
CT_EST = 0x02
CT_REL = 0x04
CT_RPL = 0x08
CT_INV = 0x10
CT_TRK = 0x20
CT_SNAT = 0x40  # this packet's source was translated by NAT (OVS's +snat)
CT_DNAT = 0x80  # ... its destination (+dnat; a reply to an SNATed connection gets this one)
CT_EXCLUSIVE = CT_NEW | CT_EST | CT_REL | CT_INV  # conntrack gives a tracked packet exactly one of these

# Fields that live only inside the pipeline: zero when a packet enters, never on the wire.
INTERNAL_FIELDS = frozenset({"metadata", "ct_state", "ct_zone", "ct_mark", "outport", *(f"reg{i}" for i in range(8))})

# Fields read from others, never written: a SetField or Move of them is refused (PushVlan/PopVlan tag).
DERIVED_FIELDS = frozenset({"vlan_tagged"})

# ``outport`` values with this bit set name a flood group: the rest is the network's key.
FLOOD_GROUP = 1 << 31


def flood_group(network_key: int) -> int:
    return FLOOD_GROUP | network_key


# Logical port keys of the host's own tunnel endpoints, one flow-based port per tunnel type, above any
# key the database gives a port. Encapsulation is ``SetField tun_id`` (the VNI) + ``SetField tun_dst``
# (the remote chassis) + ``Output`` to one of these; a decapsulated packet enters with ``in_port`` one of
# these and ``tun_id``/``tun_src`` set. Each backend maps them to its device (OVS port, vxlan netdev).
TUNNEL_PORTS = {"vxlan": 0x7FFF_FF01, "geneve": 0x7FFF_FF02}

# Logical port keys of the host's provider uplinks (the OVS port or NIC a physical network leaves by),
# one per physical network name, below the tunnel ports. A name hashes into the block so that apps and
# backends agree on it without sharing configuration; ``physnet_port`` is the one place that says how.
# A VLAN network's frames leave tagged (PushVlan) and arrive tagged; a flat network's go untagged.
PHYSNET_PORT_BASE = 0x7FFF_0000
PHYSNET_PORT_SPAN = 0xFF00  # 0x7FFF_0000..0x7FFF_FEFF; database keys stay below the base


def physnet_port(physical_network: str) -> int:
    digest = 0x811C9DC5  # 32-bit FNV-1a: stable across processes and hosts, unlike hash()
    for byte in physical_network.encode():
        digest = ((digest ^ byte) * 0x01000193) & 0xFFFF_FFFF
    return PHYSNET_PORT_BASE + digest % PHYSNET_PORT_SPAN


ETH_TYPE_IPV4 = 0x0800
ETH_TYPE_ARP = 0x0806
ETH_TYPE_IPV6 = 0x86DD
ETH_TYPES_BY_NAME = {"ipv4": ETH_TYPE_IPV4, "ipv6": ETH_TYPE_IPV6, "arp": ETH_TYPE_ARP}  # [offload] ethertypes
MULTICAST_BIT = 1 << 40  # the I/G bit of a MAC held as a 48-bit int


def full_mask(field: str) -> int:
    return (1 << FIELD_BITS[field]) - 1


NESTED_FROM = 8  # a first lookup leaving more flows than this that do not pin its field is refined by a second
# A table's lookups answered are forgotten all at once beyond this many plus so many per flow of the pipeline:
# they are keyed by every index value asked (the ports of a long-running agent, long gone too), and a patch
# forgets only those a changed flow is among (a table with no flow of a port keeps the answers that port's walks
# got). Per flow of the whole pipeline, not of the table: a table of a few flows is asked by every destination
# (a security group's ingress entry, by outport), and a cap by its own flows made a whole plan ask again (-10%)
ANSWERS_KEPT, ANSWERS_PER_FLOW = 1024, 4
_FULL_MASKS = {name: (1 << bits) - 1 for name, bits in FIELD_BITS.items()}


class _FieldMatchTuple(NamedTuple):
    field: str
    value: int
    mask: int


class FieldMatch(_FieldMatchTuple):
    """``packet[field] & mask == value``; ``value`` is always pre-masked.

    A validated named tuple rather than a dataclass: a large host's pipeline sorts and hashes
    millions of these, and tuple comparison and hashing run in C (a third of a 200k-flow compile
    went to dataclass ``__eq__``/``__lt__``).
    """

    __slots__ = ()

    def __new__(cls, field: str, value: int, mask: int) -> FieldMatch:
        bits = FIELD_BITS.get(field)
        if bits is None:
            raise ValueError(f"unknown IR field {field!r}")
        limit = (1 << bits) - 1
        if not 0 <= mask <= limit or not 0 <= value <= limit:
            raise ValueError(f"{field}: value/mask out of range")
        if value & ~mask:
            raise ValueError(f"{field}: value {value:#x} has bits outside mask {mask:#x}")
        return tuple.__new__(cls, (field, value, mask))

    @property
    def exact(self) -> bool:
        return self.mask == full_mask(self.field)

    def covers(self, value: int) -> bool:
        return value & self.mask == self.value


class Match(tuple[FieldMatch, ...]):
    """A conjunction of field matches, at most one per field, kept sorted.

    A tuple of its terms, so hashing and comparison run in C: a compile keys several
    dictionaries by every flow's match.
    """

    __slots__ = ()

    def __new__(cls, fields: Iterable[FieldMatch] = ()) -> Match:
        ordered = sorted(fields)
        names = [fm.field for fm in ordered]
        if len(set(names)) != len(names):
            raise ValueError(f"a field is matched twice in {names}")
        return tuple.__new__(cls, ordered)

    @classmethod
    def of(cls, **exact: int | tuple[int, int]) -> Match:
        """Build from keywords: ``field=value`` (exact) or ``field=(value, mask)``."""
        items = []
        new, full_masks = tuple.__new__, _FULL_MASKS
        for name, spec in exact.items():
            full = full_masks.get(name)
            if spec.__class__ is int and full is not None and 0 <= spec <= full:  # FieldMatch's checks hold
                items.append(new(FieldMatch, (name, spec, full)))
            elif spec.__class__ is tuple:
                value, mask = spec
                items.append(FieldMatch(name, value & mask, mask))
            else:
                items.append(FieldMatch(name, spec, full or 0))  # raises, naming it
        items.sort()
        return new(cls, items)  # keywords cannot repeat a field and the terms are sorted: skip the checks

    @classmethod
    def of_terms(cls, terms: Iterable[tuple[str, int, int]]) -> Match:
        """From (field, value, mask) terms already valid (value within mask, one per field), in any order.

        Skips :class:`FieldMatch`'s checks: for terms built from other matches' (a symbolic walk's regions,
        hundreds of thousands on a big host), where the checks cost more than the rest of the construction.
        """
        new = tuple.__new__
        return new(cls, sorted([new(FieldMatch, term) for term in terms]))  # (a list: no generator per term)

    @property
    def fields(self) -> tuple[FieldMatch, ...]:
        return self

    def __repr__(self) -> str:
        return f"Match({tuple(self)!r})"

    def get(self, field: str) -> FieldMatch | None:
        for fm in self:  # (by position: a big pipeline's indexes ask this of every flow)
            if fm[0] == field:
                return fm
        return None

    def as_dict(self) -> dict[str, FieldMatch]:
        return {fm.field: fm for fm in self.fields}

    def covers(self, packet: Mapping[str, int]) -> bool:
        """True if a concrete packet (field -> value) satisfies every term.

        A field missing from the packet cannot satisfy a term whose mask is
        non-zero (an ICMP packet has no tcp_dst).
        """
        for fm in self.fields:
            value = packet.get(fm.field)
            if value is None:
                if fm.mask:
                    return False
                continue
            if not fm.covers(value):
                return False
        return True


# --- actions ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Output:
    """Send a copy of the packet, as it is now, to a logical port."""

    port: int


@dataclasses.dataclass(frozen=True)
class OutputInPort:
    """Send the packet back out of the port it came in on (answers such as ARP replies)."""


@dataclasses.dataclass(frozen=True)
class GotoTable:
    table: int


@dataclasses.dataclass(frozen=True)
class SetField:
    field: str
    value: int

    def __post_init__(self) -> None:
        if self.field not in FIELD_BITS:
            raise ValueError(f"unknown IR field {self.field!r}")
        if self.field in DERIVED_FIELDS:
            raise ValueError(f"{self.field} cannot be set: it follows the packet (PushVlan/PopVlan)")


@dataclasses.dataclass(frozen=True)
class Drop:
    """Stop the walk here. Outputs already made stand, as in OpenFlow."""


@dataclasses.dataclass(frozen=True)
class Move:
    """Copy one field into another (registers, metadata, headers) of the same width or narrower."""

    src: str
    dst: str

    def __post_init__(self) -> None:
        for name in (self.src, self.dst):
            if name not in FIELD_BITS:
                raise ValueError(f"unknown IR field {name!r}")
        if self.dst in DERIVED_FIELDS:
            raise ValueError(f"{self.dst} cannot be written: it follows the packet (PushVlan/PopVlan)")
        if FIELD_BITS[self.src] > FIELD_BITS[self.dst]:
            raise ValueError(f"move {self.src} -> {self.dst}: {FIELD_BITS[self.src]} bits do not fit in "
                             f"{FIELD_BITS[self.dst]}")


@dataclasses.dataclass(frozen=True)
class PushVlan:
    vid: int

    def __post_init__(self) -> None:
        if not 0 <= self.vid < 4096:
            raise ValueError(f"push_vlan: VLAN id {self.vid} is outside 0..4095")


@dataclasses.dataclass(frozen=True)
class PopVlan:
    """Remove the outer VLAN tag; a packet without one is left as it is."""


@dataclasses.dataclass(frozen=True)
class DecTtl:
    """Decrement the IP TTL; a packet whose TTL would reach 0 is dropped (OVS sends it to the controller)."""


@dataclasses.dataclass(frozen=True)
class Punt:
    """Hand the packet to the agent (DHCP, ARP for unknown addresses...): the walk stops here."""

    reason: str


@dataclasses.dataclass(frozen=True)
class Nat:
    """Address translation inside a :class:`Conntrack` action.

    ``kind`` "snat"/"dnat" with ``ipv4`` set up a translation when the
    connection is committed; ``kind`` None applies whatever translation the
    connection already has (OVS's bare ``nat``: replies are un-NATed).
    """

    kind: str | None = None
    ipv4: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in (None, "snat", "dnat"):
            raise ValueError(f"nat kind {self.kind!r} is not snat, dnat or None")
        if (self.kind is None) != (self.ipv4 is None):
            raise ValueError("nat: snat/dnat need an address, and a bare nat takes none")


@dataclasses.dataclass(frozen=True)
class Conntrack:
    """Send the packet through connection tracking in ``zone``.

    ``commit`` records the connection; with ``table`` the packet then goes on
    in that table with ``ct_state``/``ct_zone``/``ct_mark`` set (OVS's
    ``ct(table=N)`` recirculation); without it the walk continues with the
    next action, untracked again: its ct fields are cleared (as OVS leaves it).
    """

    zone: int
    commit: bool = False
    table: int | None = None
    nat: Nat | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.zone < 1 << 16:
            raise ValueError(f"conntrack zone {self.zone} is outside 0..65535")


Action = Output | OutputInPort | GotoTable | SetField | Drop | Move | PushVlan | PopVlan | DecTtl | Punt | Conntrack


class Owner(NamedTuple):
    """The logical object a flow comes from: a kind (``port``, ``network``, ``router``, an app's ``defaults``
    owner is its app's name...) and an id. Apps dispatch on ``kind``; it hashes and sorts as a tuple (kind
    first, as the ``kind:id`` text did). ``str()`` gives ``kind:id`` for logs, cookies and tools."""

    kind: str
    id: str

    def __str__(self) -> str:
        return f"{self.kind}:{self.id}"

    @classmethod
    def parse(cls, text: str) -> Owner:
        """The owner ``kind:id`` names (the id may hold colons; the kind may not)."""
        kind, sep, oid = text.partition(":")
        if not sep:
            raise ValueError(f"owner {text!r} is not kind:id")
        return cls(kind, oid)


class Flow(NamedTuple):
    """One prioritised flow: a named tuple, built and hashed by the hundred thousand in a compile."""

    table: int
    priority: int
    match: Match
    actions: tuple[Action, ...]
    owner: Owner  # e.g. Owner("port", <id>); str(owner) is "port:<id>"

    @property
    def key(self) -> tuple[int, int, Match]:
        """What identifies a flow in a datapath (OpenFlow's strict key)."""
        return (self.table, self.priority, self.match)


def _table_then_priority(flow: Flow) -> tuple[int, int]:
    return flow.table, -flow.priority


Entry = tuple[tuple[int, int], "Flow"]  # ((-priority, sequence), flow): a flow's place in its table


class Pipeline:
    """A compiled pipeline: tables of flows, highest priority first, plus the names of its tables.

    Immutable. :meth:`patched` makes the pipeline after a change sharing every untouched table (and its
    indexes) with this one, so a one-port change costs the tables it touches, not the whole pipeline.
    Within a table, flows of one priority keep the order they were given in (:meth:`build`); flows a patch
    adds come after those of their priority already there. Overlapping flows of one priority are an app's
    bug (OpenFlow leaves their order undefined), so nothing may rely on that order.
    """

    def __init__(self, flows: Iterable[Flow], table_names: Mapping[int, str] | None = None) -> None:
        self.table_names: Mapping[int, str] = dict(table_names or {})
        self._entries: dict[int, list[Entry]] = {}
        sequence = 0
        for flow in sorted(flows, key=_table_then_priority):
            self._entries.setdefault(flow.table, []).append(((-flow.priority, sequence), flow))
            sequence += 1
        self._sequence = sequence
        self._flows: tuple[Flow, ...] | None = None
        self._tables: dict[int, list[Flow]] = {}
        self._indexes: dict[tuple[int, str], tuple[dict[int, list[Entry]], list[Entry]]] = {}
        self._fields: dict[int, tuple[str, ...]] = {}
        self._keys: dict[int, dict[tuple, Entry]] = {}  # table -> flow key -> its entry (made on first patch)
        self._answers: dict[int, _Answers] = {}  # table -> the lookups answered (see lookup)
        self._essential: dict[int, dict[tuple[int, ...], tuple]] = {}  # see _essential_of

    @classmethod
    def build(cls, flows: Iterable[Flow], table_names: Mapping[int, str],
              on_clash: Callable[[Flow, Flow], None] | None = None) -> Pipeline:
        """Order ``flows`` by table and priority; two flows with one key are an error.

        With ``on_clash`` the first of two clashing flows (in the order given) is kept and
        ``on_clash(kept, dropped)`` told, instead. Flows of one table and priority keep the order
        given: a hash pass finds duplicates and a sort on two integers orders the rest (sorting on
        the matches too cost a quarter of a 200k-flow compile).
        """
        return cls(_unique(flows, on_clash).values(), table_names)

    def patched(self, added: Iterable[Flow], removed: Iterable[Flow],
                on_clash: Callable[[Flow, Flow], None] | None = None) -> Pipeline:
        """The pipeline with ``removed`` taken out and ``added`` put in (an added flow whose key a remaining flow
        holds is a clash, handled as :meth:`build` does).

        The new pipeline takes over this one's indexes of the tables the patch changes (changed in place, not
        copied: a big table's index holds thousands of buckets, and the partitioner's lookups build several);
        this one builds them again if it is ever looked up there again. Its flows stay as they were.
        """
        gone: dict[int, set[tuple[int, int, Match]]] = {}
        for flow in removed:
            gone.setdefault(flow.table, set()).add(flow.key)
        new: dict[int, list[Flow]] = {}
        for flow in _unique(added, on_clash).values():
            new.setdefault(flow.table, []).append(flow)
        out = Pipeline.__new__(Pipeline)
        out.table_names = self.table_names
        out._entries = dict(self._entries)
        out._sequence = self._sequence
        out._flows = None
        out._tables = {t: v for t, v in self._tables.items() if t not in gone and t not in new}
        out._fields = dict(self._fields)
        out._indexes = {k: v for k, v in self._indexes.items() if k[0] not in gone and k[0] not in new}
        out._keys = {t: v for t, v in self._keys.items() if t not in gone and t not in new}
        out._answers = {t: v for t, v in self._answers.items() if t not in gone and t not in new}
        out._essential = {t: v for t, v in self._essential.items() if t not in gone and t not in new}
        for table in gone.keys() | new.keys():
            keys = gone.get(table, set())
            held = self._keys_of(table)
            del self._keys[table]  # the new pipeline's now
            entries = list(self._entries.get(table, ()))
            dropped: list[Entry] = []
            for key in keys:
                entry = held.pop(key, None)
                if entry is not None:
                    del entries[bisect.bisect_left(entries, entry[0], key=_position)]
                    dropped.append(entry)
            fresh: list[Entry] = []
            for flow in new.get(table, ()):
                other = held.get(flow.key)
                if other is not None:
                    if other[1] != flow:
                        if on_clash is None:
                            raise ValueError(f"two flows share table/priority/match: {flow} vs {other[1]}")
                        on_clash(other[1], flow)
                    continue
                entry = ((-flow.priority, out._sequence), flow)
                out._sequence += 1
                held[flow.key] = entry
                bisect.insort(entries, entry, key=_position)
                fresh.append(entry)
            out._keys[table] = held
            if entries:
                out._entries[table] = entries
            else:
                out._entries.pop(table, None)
            fields = self._fields.get(table)
            if fields is not None:  # a field the new flows match exactly joins the index; none leaves it (a
                # lookup by a field no flow matches exactly is only less selective, never wrong)
                exact = {t.field for _, f in fresh for t in f.match if t.mask == _FULL_MASKS[t.field]}
                out._fields[table] = fields + tuple(sorted(exact - set(fields)))
            self._essential.pop(table, None)  # of index lists the new pipeline changes in place
            answers = self._answers.pop(table, None)  # the new pipeline's now, less what the patch changed
            if answers is not None and out._fields.get(table) == fields:
                for _, flow in (*dropped, *fresh):
                    answers.forget(flow)
                out._answers[table] = answers
            for (t, on), old in [(k, v) for k, v in self._indexes.items() if k[0] == table]:
                del self._indexes[t, on]  # the new pipeline's now
                if len(on) == 1:
                    out._indexes[t, on] = _patch_index(old, on[0], dropped, fresh)
                else:  # an index of the first field's rest: only flows not pinning the first field are in it
                    out._indexes[t, on] = _patch_index(
                        old, on[1], [e for e in dropped if pinned(e[1].match, on[0]) is None],
                        [e for e in fresh if pinned(e[1].match, on[0]) is None])
        return out

    @property
    def flows(self) -> tuple[Flow, ...]:
        """Every flow, by table, highest priority first."""
        if self._flows is None:
            self._flows = tuple(flow for table in sorted(self._entries) for _, flow in self._entries[table])
        return self._flows

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._entries.values())

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pipeline) and (self.flows, dict(self.table_names)) == (
            other.flows, dict(other.table_names))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Pipeline(flows={self.flows!r}, table_names={dict(self.table_names)!r})"

    def table(self, table: int) -> list[Flow]:
        """Flows of one table, highest priority first."""
        flows = self._tables.get(table)
        if flows is None:
            flows = self._tables[table] = [flow for _, flow in self._entries.get(table, ())]
        return flows

    def candidates(self, table: int, exact: Mapping[str, int]) -> Iterable[Flow]:
        """The flows of ``table`` that may match a packet whose fields in ``exact`` have those values, in order.

        A table is indexed on the fields its flows match exactly, preferring ``in_port`` and the pipeline's
        internal fields, which a walk always knows (a port's classification, a network's L2 lookup, a
        delivery by ``outport``). Of those ``exact`` has, the one leaving the fewest candidates is used:
        only the flows matching its value exactly and those not matching it exactly can match, merged back
        into priority order; with none, it is the whole table. A walk that knows a network but not a next
        hop (a register copied from the packet) still skips other networks' next hops, and a port's walk
        through the ARP responder skips other networks' addresses.
        """
        return self.lookup(table, exact)[2]

    def lookup(self, table: int, exact: Mapping[str, int], essential: bool = False
               ) -> tuple[tuple[str, ...], tuple[int, ...], Iterable[Flow]]:
        """:meth:`candidates`, with the fields and values it looked them up by (empty: the whole table).

        ``essential``: without the candidates a later one makes redundant (:func:`essential`): what a symbolic
        walk needs, which would otherwise follow each of them only to find it ends where the later one does.
        Not for a trace: it names the flow a packet really matches.

        The first field's index leaves the flows matching its value and those not matching it exactly (the
        *rest*); when the rest is long (a table of per-port flows and per-network flows, looked up by port,
        rests on every network's flows) it is looked up again by a second known field. A flow added to or
        removed from ``table`` can change the answer only if it matches the first field exactly with its
        value, or it does not match the first exactly and matches the second exactly with its value, or
        it matches neither exactly: what an incremental user records (:func:`reaches`).

        The answer depends only on the values ``exact`` gives the table's index fields, and is remembered by
        them until a patch changes the table: a partitioner's walks ask the same few thousand questions
        hundreds of thousands of times.
        """
        answers = self._answers.get(table)
        if answers is None or len(answers.by_key) >= answers.cap:
            answers = self._answers[table] = _Answers(
                ANSWERS_KEPT + ANSWERS_PER_FLOW * sum(map(len, self._entries.values())))
        key = tuple(map(exact.get, self._index_fields(table)))
        if essential:
            key += (essential,)  # filed as the whole answer is: a patch that changes one forgets both
        answer = answers.by_key.get(key)
        if answer is None:
            fields, values, parts = self._look_up(table, exact)
            if essential:
                flows = self._essential_of(table, parts)
            else:
                flows = tuple(flow for _, flow in _merged(parts))
            answer = (fields, values, flows)
            answers.put(key, answer)
        return answer

    def _essential_of(self, table: int, parts: list[Sequence[Entry]]) -> tuple[Flow, ...]:
        """:func:`essential_flows` of the merge of ``parts`` (lists of ``table``'s index), remembered by the lists
        themselves: a walk looks up the ingress security-group stage by each destination's port, and every
        remote destination's answer is the same lists, the stage's defaults (a whole plan's first lookups spent
        a sixth of its time finding the same flows redundant again)."""
        few = [entry for part in parts for entry in part]
        if len(few) <= 2:  # a destination's delivery; a routed path's L2 entry and its network's flood (11,600 of
            # them in a whole plan): remembering them costs more than finding what is essential again
            return essential_flows(tuple(flow for _, flow in sorted(few, key=_position)))
        memo = self._essential.setdefault(table, {})
        key = tuple(map(id, parts))
        held = memo.get(key)
        if held is None or any(a is not b for a, b in zip(held[0], parts)):
            held = memo[key] = (parts, essential_flows(tuple(flow for _, flow in _merged(parts))))
        return held[1]

    def _look_up(self, table: int, exact: Mapping[str, int]) -> tuple[tuple[str, ...], tuple[int, ...],
                                                                     list[Sequence[Entry]]]:
        """The fields and values looked up by, and the non-empty lists of the table's index they leave, each in
        table order: their merge is the answer.

        The first field is the one whose lookup, refined by a second where its rest is long, leaves the fewest
        flows: a routed path knows the network and the next hop's MAC at the L2 lookup, where the network's
        value leaves each of its destinations but the MAC's (refined by the network, for the broadcast flows
        every network has) leaves one and its network's floods."""
        best: tuple[int, tuple[str, ...], tuple[int, ...], list[Sequence[Entry]]] | None = None
        for field in self._index_fields(table):
            value = exact.get(field)
            if value is None:
                continue
            buckets, rest = self._index(table, (field,))
            hits = buckets.get(value, ())
            if best is not None and len(hits) >= best[0]:
                continue  # its hits are in any answer by it
            choice = (len(hits) + len(rest), (field,), (value,), [hits, rest])
            if len(rest) > NESTED_FROM:
                choice = self._refined(table, choice, exact)
            if best is None or choice[0] < best[0]:
                best = choice
        if best is None:
            whole = self._entries.get(table)
            return (), (), [whole] if whole else []
        _, fields, values, parts = best
        return fields, values, [part for part in parts if part]

    def _refined(self, table: int, first: tuple[int, tuple[str, ...], tuple[int, ...], list[Sequence[Entry]]],
                 exact: Mapping[str, int]) -> tuple[int, tuple[str, ...], tuple[int, ...], list[Sequence[Entry]]]:
        """A first field's lookup (size, fields, values, [hits, rest]) with its rest looked up again by the second
        known field leaving the fewest of it, if one leaves fewer."""
        size, (name,), values, (hits, rest) = first
        best = first
        for field in self._index_fields(table):
            value = exact.get(field)
            if field == name or value is None:
                continue
            buckets, rest2 = self._index(table, (name, field))
            hits2 = buckets.get(value, ())
            if len(hits) + len(hits2) + len(rest2) < best[0]:
                best = (len(hits) + len(hits2) + len(rest2), (name, field), (*values, value), [hits, hits2, rest2])
        return best

    def _keys_of(self, table: int) -> dict[tuple, Entry]:
        keys = self._keys.get(table)
        if keys is None:
            keys = self._keys[table] = {entry[1].key: entry for entry in self._entries.get(table, ())}
        return keys

    def index_fields(self, table: int) -> tuple[str, ...]:
        """The fields :meth:`lookup` may use for ``table``: the values ``exact`` gives others are not read."""
        fields = self._fields.get(table)
        return fields if fields is not None else self._index_fields(table)

    def _index_fields(self, table: int) -> tuple[str, ...]:
        fields = self._fields.get(table)
        if fields is None:
            values: dict[str, set[int]] = {}
            full = _FULL_MASKS
            for flow in self.table(table):
                for field, value, mask in flow.match:  # (unpacked: a whole table's terms, at a plan's first look)
                    if mask == full[field]:
                        values.setdefault(field, set()).add(value)
            fields = self._fields[table] = tuple(sorted(
                values, key=lambda f: (f != "in_port" and f not in INTERNAL_FIELDS, -len(values[f]), f)))
        return fields

    def _index(self, table: int, fields: tuple[str, ...]) -> tuple[dict[int, list[Entry]], list[Entry]]:
        """The index of ``table`` on ``fields[-1]``: of all its flows for one field, of the rest of the first
        field's index for two."""
        index = self._indexes.get((table, fields))
        if index is None:
            entries = self._entries.get(table, []) if len(fields) == 1 else self._index(table, fields[:1])[1]
            index = self._indexes[table, fields] = _index_table(entries, fields[-1])
        return index


class _Answers:
    """One table's lookups answered, by the values they knew of its index fields, and filed by the first field
    and value each was answered by: a patch forgets those a changed flow is (or would be) among, and the rest
    stay right (:func:`reaches`), so a change does not cost every later walk a fresh look at the table."""

    __slots__ = ("by_key", "_filed", "cap")

    def __init__(self, cap: int) -> None:
        self.cap = cap  # forgotten all at once beyond this many (ANSWERS_KEPT)
        self.by_key: dict[tuple, tuple[tuple[str, ...], tuple[int, ...], tuple[Flow, ...]]] = {}
        self._filed: dict[str | None, dict[int | None, list[tuple]]] = {}  # first field -> its value -> keys

    def put(self, key: tuple, answer: tuple[tuple[str, ...], tuple[int, ...], tuple[Flow, ...]]) -> None:
        self.by_key[key] = answer
        fields, values = answer[0], answer[1]
        first, value = (fields[0], values[0]) if fields else (None, None)  # (None, None): the whole table
        self._filed.setdefault(first, {}).setdefault(value, []).append(key)

    def forget(self, flow: Flow) -> None:
        """Forget the answers ``flow`` is among: by a first field it pins, those by its value; by one it does
        not pin (it is in every answer by that field), all of them."""
        for first in list(self._filed):
            pin = pinned(flow.match, first) if first is not None else None
            by_value = self._filed[first]
            if pin is not None:
                keys = by_value.pop(pin, ())
            else:
                keys = [key for part in by_value.values() for key in part]
                del self._filed[first]
            for key in keys:
                self.by_key.pop(key, None)


def _unique(flows: Iterable[Flow], on_clash: Callable[[Flow, Flow], None] | None) -> dict[tuple, Flow]:
    unique: dict[tuple[int, int, Match], Flow] = {}
    for flow in flows:
        key = flow.key
        last = unique.setdefault(key, flow)
        if last is not flow and last != flow:
            if on_clash is None:
                raise ValueError(f"two flows share table/priority/match: {flow} vs {last}")
            on_clash(last, flow)
    return unique


def _position(entry: Entry) -> tuple[int, int]:
    return entry[0]


def _merged(parts: Sequence[Sequence[Entry]]) -> Iterable[Entry]:
    """Lists of one table's entries (each in table order) merged into table order."""
    return parts[0] if len(parts) == 1 else heapq.merge(*parts, key=_position) if parts else ()


def pinned(match: Match, field: str) -> int | None:
    """The value ``match`` matches ``field`` exactly with (None: it does not)."""
    term = match.get(field)
    return term.value if term is not None and term.mask == _FULL_MASKS[field] else None


def pins(match: Match) -> dict[str, int]:
    """The fields ``match`` matches exactly, with their values."""
    return {field: value for field, value, mask in match if mask == _FULL_MASKS[field]}


ESSENTIAL_REACH = 64  # how many later flows essential_flows compares a flow with


def essential_flows(flows: tuple[Flow, ...]) -> tuple[Flow, ...]:
    """``flows`` (one table's, highest priority first) without each flow whose packets would go the same way
    without it: the first later flow that may match one of its packets covers its whole match and does the
    same actions (looked for among the next :data:`ESSENTIAL_REACH` flows). The ICMPv6 neighbour discovery
    bypasses in front of a security-group stage's default, all going where the default goes, are such flows
    for every destination without rules of its own.
    """
    if len(flows) < 2:
        return flows
    if len(flows) == 2:  # (one comparison: hashing both flows' actions for the map below costs more)
        first, second = flows
        return flows if first.actions != second.actions or not _redundant(first, flows[1:]) else (second,)
    last = {flow.actions: i for i, flow in enumerate(flows)}  # a flow no later one does the same as is kept unread
    kept = [flow for i, flow in enumerate(flows)
            if last[flow.actions] == i or not _redundant(flow, flows[i + 1:i + 1 + ESSENTIAL_REACH])]
    return flows if len(kept) == len(flows) else tuple(kept)


def _redundant(flow: Flow, later: Sequence[Flow]) -> bool:
    terms = flow.match.as_dict()
    for other in later:
        if not disjoint(other.match, terms):
            return other.actions == flow.actions and all(
                (mine := terms.get(t.field)) is not None and not t.mask & ~mine.mask
                and not (t.value ^ mine.value) & t.mask for t in other.match)  # it covers the flow's match
    return False


def disjoint(terms: Iterable[FieldMatch], theirs: Mapping[str, FieldMatch], ignore: frozenset[str] = frozenset()
             ) -> bool:
    """Whether no packet matches both ``terms`` and the match ``theirs`` (by field; ``ignore``: fields taken as
    matching anything). A tracked packet is exactly one of new, est, rel and inv."""
    for field, value, mask in terms:  # (unpacked, not by attribute: asked of every pair of overlapping candidates)
        other = theirs.get(field)
        if other is None or field in ignore:
            continue
        if (value ^ other[1]) & mask & other[2]:
            return True
        if field == "ct_state":
            mine, its = value & mask & CT_EXCLUSIVE, other[1] & other[2] & CT_EXCLUSIVE
            if mine and its and mine != its:
                return True
    return False


def reaches(pinning: Mapping[str, int], fields: tuple[str, ...], values: tuple[int, ...]) -> bool:
    """Whether a flow pinning ``pinning`` (:func:`pins` of its match) is among what :meth:`Pipeline.lookup` by
    ``fields`` = ``values`` answers (or would, if it were in the table): what an incremental user of lookups
    checks a changed flow against."""
    for field, value in zip(fields, values):
        pin = pinning.get(field)
        if pin is not None:
            return pin == value
    return True


def _index_table(entries: Sequence[Entry], field: str) -> tuple[dict[int, list[Entry]], list[Entry]]:
    """(value -> entries matching ``field`` exactly, entries of the others) for one table, in table order."""
    buckets: dict[int, list[Entry]] = {}
    rest: list[Entry] = []
    full = _FULL_MASKS[field]
    for entry in entries:  # (pinned, inline: an index is built over a whole table at a plan's first look)
        for name, value, mask in entry[1].match:
            if name == field:
                (buckets.setdefault(value, []) if mask == full else rest).append(entry)
                break
        else:
            rest.append(entry)
    return buckets, rest


def _patch_index(index: tuple[dict[int, list[Entry]], list[Entry]], field: str, dropped: Sequence[Entry],
                 fresh: Sequence[Entry]) -> tuple[dict[int, list[Entry]], list[Entry]]:
    """An index after a patch, changed in place: each removed entry taken out of its bucket by position, each
    added one put in at its position (a big table's rest holds thousands: no scan, no sort)."""
    buckets, rest = index
    for entry in dropped:
        value = pinned(entry[1].match, field)
        bucket = rest if value is None else buckets[value]
        del bucket[bisect.bisect_left(bucket, entry[0], key=_position)]
        if value is not None and not bucket:
            del buckets[value]
    for entry in fresh:
        value = pinned(entry[1].match, field)
        bisect.insort(rest if value is None else buckets.setdefault(value, []), entry, key=_position)
    return buckets, rest
