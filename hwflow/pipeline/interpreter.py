"""The reference interpreter: run one packet through the IR.

It is the oracle: tests compare OVS, the simulated NIC and the HW/SW split
against it. It follows the semantics written in :mod:`hwflow.pipeline.ir`
and OpenFlow's quirks that matter here: output to the ingress port is
skipped, a TTL that would reach zero drops the packet, and ``ct(table=N)``
re-enters the pipeline at table N with the connection's state set.

Neighbor discovery, as OVS writes it: the link-layer option of a
solicitation or advertisement that has one (it carries ``nd_sll`` or
``nd_tll``) is one slot, named by its type (``nd_options_type``: 1 ``nd_sll``,
2 ``nd_tll``). Each copy sent carries the writes since the previous copy as
OVS commits them: the retype first, then the address, written only under
the name of the option's type by then. So an NS retyped to 2 keeps its
sender's address unless ``nd_tll`` is written, and an ``nd_sll`` written in
the same stretch is lost. A message without the option (DAD) gets none.

Connection tracking is modelled by :class:`ConnTracker`, which a caller
keeps across packets (stateful security groups need the reply direction
to find the connection the request committed; NAT needs the translation
the first packet set up), with OVS's NAT semantics.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from hwflow.pipeline import ir

MAX_STEPS = 64  # more tables than this on one packet's path is a pipeline bug, not traffic

Key = tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Step:
    table: int
    flow: ir.Flow | None  # None: table miss


@dataclasses.dataclass(frozen=True)
class Verdict:
    outputs: tuple[tuple[int, Mapping[str, int]], ...]  # (port, packet as sent)
    steps: tuple[Step, ...]
    punt: str | None = None  # the reason, when the packet went to the agent

    @property
    def kind(self) -> str:
        if self.punt is not None:
            return "punt"
        return "output" if self.outputs else "drop"

    @property
    def ports(self) -> tuple[int, ...]:
        return tuple(port for port, _ in self.outputs)


# ct_state bits OVS adds when a ct action's NAT rewrote the packet (OVS_CS_F_SRC_NAT / OVS_CS_F_DST_NAT).


@dataclasses.dataclass(frozen=True)
class Connection:
    """A committed connection: its original-direction tuple and the translation set up when it was committed."""

    original: Key
    nat: ir.Nat | None = None


class ConnTracker:
    """Connections by zone, found from either direction, with OVS's NAT.

    As in OVS (and the kernel's nf_nat under it): a connection's translation
    is fixed when it is committed; a packet passing a ct with ``nat`` (bare,
    or with arguments, which are then ignored) gets the connection's
    translation in its direction (the reply direction is un-NATed); a packet
    of no connection is translated by ``nat(src|dst=...)`` only (a bare
    ``nat`` leaves it alone), and the translation sticks if it is committed.
    """

    def __init__(self) -> None:
        self._conns: dict[tuple[int, Key], Connection] = {}  # (zone, original tuple)
        self._replies: dict[tuple[int, Key], Key] = {}  # (zone, reply tuple) -> original tuple

    @staticmethod
    def _key(packet: Mapping[str, int]) -> Key | None:
        proto = packet.get("ip_proto")
        if proto is None:
            return None
        src = packet.get("ipv4_src", packet.get("ipv6_src", 0))
        dst = packet.get("ipv4_dst", packet.get("ipv6_dst", 0))
        if proto in (6, 17):
            sport = packet.get("tcp_src", packet.get("udp_src", 0))
            dport = packet.get("tcp_dst", packet.get("udp_dst", 0))
            return (proto, src, dst, sport, dport)
        return (proto, src, dst)

    @staticmethod
    def _reverse(key: Key) -> Key:
        if len(key) == 5:
            return (key[0], key[2], key[1], key[4], key[3])
        return (key[0], key[2], key[1])

    @staticmethod
    def _translated(key: Key, nat: ir.Nat | None) -> Key:
        """The original tuple as it leaves the translation (what the reply is addressed back to)."""
        if nat is None:
            return key
        if nat.kind == "snat":
            return (key[0], nat.ipv4, *key[2:])
        return (key[0], key[1], nat.ipv4, *key[3:])

    def find(self, zone: int, packet: Mapping[str, int]) -> tuple[Connection, bool] | None:
        """The connection a packet belongs to in ``zone`` and whether it travels in the reply direction."""
        key = self._key(packet)
        if key is None:
            return None
        if (zone, key) in self._conns:
            return self._conns[zone, key], False
        original = self._replies.get((zone, key))
        return (self._conns[zone, original], True) if original is not None else None

    def state(self, zone: int, packet: Mapping[str, int]) -> int:
        if self._key(packet) is None:
            return ir.CT_TRK | ir.CT_INV
        found = self.find(zone, packet)
        if found is None:
            return ir.CT_TRK | ir.CT_NEW
        return ir.CT_TRK | ir.CT_EST | (ir.CT_RPL if found[1] else 0)

    def commit(self, zone: int, packet: Mapping[str, int], nat: ir.Nat | None = None) -> None:
        """Record the packet's connection (as it was before any translation); an existing one keeps its NAT."""
        key = self._key(packet)
        if key is None or self.find(zone, packet) is not None:
            return
        setup = nat if nat is not None and nat.kind is not None else None
        reply = self._reverse(self._translated(key, setup))
        if (zone, reply) in self._replies or (zone, reply) in self._conns:
            raise RuntimeError(f"zone {zone}: translating {key} clashes with a connection's reply {reply}; OVS would "
                               "pick another source port of its own, which a reference cannot predict")
        self._conns[zone, key] = Connection(key, setup)
        self._replies[zone, reply] = key

    def translate(self, zone: int, packet: dict[str, int], nat: ir.Nat) -> int:
        """Rewrite the packet's addresses as a ct with ``nat`` would; return the CT_SNAT/CT_DNAT bits it earned."""
        conn, reply = self.find(zone, packet) or (None, False)
        rule = conn.nat if conn is not None else nat if nat.kind is not None else None
        if rule is None or rule.ipv4 is None or "ipv4_src" not in packet:
            return 0
        source_side = (rule.kind == "snat") != reply  # a reply undoes SNAT on its destination, DNAT on its source
        value = conn.original[1 if rule.kind == "snat" else 2] if conn is not None and reply else rule.ipv4
        packet["ipv4_src" if source_side else "ipv4_dst"] = value
        return ir.CT_SNAT if source_side else ir.CT_DNAT


def lookup(pipeline: ir.Pipeline, table: int, packet: Mapping[str, int]) -> ir.Flow | None:
    """The flow that wins in ``table``: highest priority among the matching ones."""
    for flow in pipeline.candidates(table, packet):  # highest priority first
        if flow.match.covers(packet):
            return flow
    return None


def run(pipeline: ir.Pipeline, packet: Mapping[str, int], conntrack: ConnTracker | None = None) -> Verdict:
    """Run ``packet`` (field -> value; must carry ``in_port``) from table 0."""
    if "in_port" not in packet:
        raise ValueError("the packet needs an in_port")
    tracker = conntrack or ConnTracker()
    state = dict(packet)
    for name in ir.INTERNAL_FIELDS:
        state.setdefault(name, 0)
    state["vlan_tagged"] = int("vlan_vid" in state)
    outputs: list[tuple[int, Mapping[str, int]]] = []
    steps: list[Step] = []
    option = NdOption.arrived(packet)
    table: int | None = 0
    while table is not None:
        if len(steps) >= MAX_STEPS:
            raise RuntimeError(f"pipeline loops: more than {MAX_STEPS} tables visited")
        flow = lookup(pipeline, table, state)
        steps.append(Step(table, flow))
        current, table = table, None
        if flow is None:
            break
        for action in flow.actions:
            if isinstance(action, ir.Output):
                if action.port != state["in_port"]:
                    outputs.append((action.port, _visible(state, option)))
            elif isinstance(action, ir.OutputInPort):
                outputs.append((state["in_port"], _visible(state, option)))
            elif isinstance(action, ir.GotoTable):
                if action.table <= current:
                    raise RuntimeError(f"goto from table {current} to {action.table} goes backwards")
                table = action.table
            elif isinstance(action, ir.Punt):
                return Verdict(tuple(outputs), tuple(steps), punt=action.reason)
            elif isinstance(action, ir.Drop) or not _mutate(state, action, tracker):
                table = None
                break
            elif isinstance(action, ir.Conntrack) and action.table is not None:
                table = action.table
                break
    return Verdict(tuple(outputs), tuple(steps))


def _mutate(state: dict[str, int], action: ir.Action, tracker: ConnTracker) -> bool:
    """Apply a header/metadata action; False when the packet dies of it (TTL)."""
    if isinstance(action, ir.SetField):
        state[action.field] = action.value
    elif isinstance(action, ir.Move):
        state[action.dst] = state.get(action.src, 0) & ir.full_mask(action.dst)
    elif isinstance(action, ir.PushVlan):
        state["vlan_vid"], state["vlan_tagged"] = action.vid, 1
    elif isinstance(action, ir.PopVlan):
        state.pop("vlan_vid", None)
        state["vlan_tagged"] = 0
    elif isinstance(action, ir.DecTtl):
        if "ip_ttl" in state:
            if state["ip_ttl"] <= 1:
                return False
            state["ip_ttl"] -= 1
    elif isinstance(action, ir.Conntrack):
        apply_conntrack(state, action, tracker)
    return True


def apply_conntrack(state: dict[str, int], action: ir.Conntrack, tracker: ConnTracker) -> None:
    """One ct action on a packet: look up (ct_state is as the packet found it, as OVS reports it after
    ct(commit)), translate, commit. Public so models of other datapaths (the NIC's tc ct) share it."""
    ct_state = tracker.state(action.zone, state)
    before = dict(state)
    nat_bits = tracker.translate(action.zone, state, action.nat) if action.nat is not None else 0
    if action.commit:
        tracker.commit(action.zone, before, action.nat)
    if action.table is not None:
        state["ct_state"] = ct_state | nat_bits
        state["ct_zone"] = action.zone
    else:  # OVS: a ct that does not recirculate leaves the packet untracked, its ct fields cleared
        state["ct_state"] = state["ct_zone"] = state["ct_mark"] = 0


ND_OPTIONS = {1: "nd_sll", 2: "nd_tll"}  # an ND link-layer option's type -> the IR field naming its address


@dataclasses.dataclass
class NdOption:
    """An ND message's link-layer option as it is on the wire, and its fields as the last copy sent had them
    (OVS's base flow: a write is what differs from it)."""

    type: int
    address: int
    sent: dict[str, int]

    @classmethod
    def arrived(cls, packet: Mapping[str, int]) -> NdOption | None:
        for type_, name in ND_OPTIONS.items():
            if name in packet:
                return cls(packet.get("nd_options_type", type_), packet[name], _option_fields(packet))
        return None

    def send(self, state: Mapping[str, int]) -> tuple[str | None, int]:
        """(field naming the option, its address) in the copy sent now: retyped, then written by type."""
        self.type = state.get("nd_options_type", self.type)
        name = ND_OPTIONS.get(self.type)
        if name is not None and state.get(name, 0) != self.sent[name]:
            self.address = state[name]
        self.sent = _option_fields(state)
        return name, self.address


def _option_fields(packet: Mapping[str, int]) -> dict[str, int]:
    return {field: packet.get(field, 0) for field in ND_OPTIONS.values()}


def _visible(state: Mapping[str, int], option: NdOption | None) -> dict[str, int]:
    """The packet as it leaves: internal fields are not on the wire; an ND option as OVS writes it (module doc)."""
    packet = {k: v for k, v in state.items() if k not in ir.INTERNAL_FIELDS and k not in ("in_port", "vlan_tagged")}
    for field in ND_OPTIONS.values():
        packet.pop(field, None)
    name, address = option.send(state) if option is not None else (None, 0)
    if name is not None:
        packet[name] = address
    return packet
