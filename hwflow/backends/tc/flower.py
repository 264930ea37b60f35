"""tc-flower filters as values, and their netlink encoding.

pyroute2 has no flower, so hwflow encodes it itself. The byte layout is the
one iproute2's ``tc filter add ... flower ...`` sends (checked byte for byte
in tests/unit/test_tc_flower.py) and the one the kernel sends back in dumps
and echoes. Every flower key is one row of :data:`KEY_SPECS`: adding a key is
adding a row and a field to :class:`FlowerKeys`.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
import sys

from hwflow.backends.tc import netlink as nl

# /usr/include/linux/rtnetlink.h
RTM_NEWTFILTER = 44
RTM_DELTFILTER = 45
RTM_GETTFILTER = 46
TCA_KIND = 1
TCA_OPTIONS = 2
TCA_CHAIN = 11
TCMSG = struct.Struct("=BxxxiIII")  # family, ifindex, handle, parent, info
# /usr/include/linux/pkt_sched.h: TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)
INGRESS = 0xFFFFFFF2
# /usr/include/linux/if_ether.h
ETH_P_ALL = 0x0003
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
IPPROTO_TCP = 6
IPPROTO_UDP = 17
# /usr/include/linux/pkt_cls.h
TCA_CLS_FLAGS_SKIP_HW = 1 << 0
TCA_CLS_FLAGS_SKIP_SW = 1 << 1
TCA_CLS_FLAGS_IN_HW = 1 << 2
TCA_CLS_FLAGS_NOT_IN_HW = 1 << 3
REQUEST_FLAGS = TCA_CLS_FLAGS_SKIP_HW | TCA_CLS_FLAGS_SKIP_SW
TCA_ACT_KIND = 1
TCA_ACT_OPTIONS = 2
TCA_ACT_STATS = 4
TCA_ACT_MAX_PRIO = 32
TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_PIPE = 3
TC_ACT_STOLEN = 4
TC_ACT_EXT_SHIFT = 28
TC_ACT_EXT_VAL_MASK = (1 << TC_ACT_EXT_SHIFT) - 1
TC_ACT_GOTO_CHAIN = 2 << TC_ACT_EXT_SHIFT
TCA_FLOWER_ACT = 3
TCA_FLOWER_KEY_ETH_DST = 4
TCA_FLOWER_KEY_ETH_DST_MASK = 5
TCA_FLOWER_KEY_ETH_SRC = 6
TCA_FLOWER_KEY_ETH_SRC_MASK = 7
TCA_FLOWER_KEY_ETH_TYPE = 8
TCA_FLOWER_KEY_IP_PROTO = 9
TCA_FLOWER_KEY_IPV4_SRC = 10
TCA_FLOWER_KEY_IPV4_SRC_MASK = 11
TCA_FLOWER_KEY_IPV4_DST = 12
TCA_FLOWER_KEY_IPV4_DST_MASK = 13
TCA_FLOWER_KEY_IPV6_SRC = 14
TCA_FLOWER_KEY_IPV6_SRC_MASK = 15
TCA_FLOWER_KEY_IPV6_DST = 16
TCA_FLOWER_KEY_IPV6_DST_MASK = 17
TCA_FLOWER_KEY_TCP_SRC = 18
TCA_FLOWER_KEY_TCP_DST = 19
TCA_FLOWER_KEY_UDP_SRC = 20
TCA_FLOWER_KEY_UDP_DST = 21
TCA_FLOWER_FLAGS = 22
TCA_FLOWER_KEY_VLAN_ID = 23
TCA_FLOWER_KEY_TCP_SRC_MASK = 35
TCA_FLOWER_KEY_TCP_DST_MASK = 36
TCA_FLOWER_KEY_UDP_SRC_MASK = 37
TCA_FLOWER_KEY_UDP_DST_MASK = 38
TCA_FLOWER_IN_HW_COUNT = 86
# /usr/include/linux/gen_stats.h
TCA_STATS_BASIC = 1
TCA_STATS_PKT64 = 8
GNET_STATS_BASIC = struct.Struct("=QI4x")  # bytes, packets; padded to 8 as the kernel copies it
# /usr/include/linux/tc_act/tc_mirred.h
TCA_EGRESS_REDIR = 1
TCA_EGRESS_MIRROR = 2
TCA_INGRESS_REDIR = 3
TCA_INGRESS_MIRROR = 4
TCA_MIRRED_TM = 1
TCA_MIRRED_PARMS = 2
TC_MIRRED = struct.Struct("=IIiiiiI")  # tc_gen (index, capab, action, refcnt, bindcnt), eaction, ifindex
# /usr/include/linux/tc_act/tc_gact.h
TCA_GACT_TM = 1
TCA_GACT_PARMS = 2
TC_GACT = struct.Struct("=IIiii")  # tc_gen
# /usr/include/linux/pkt_cls.h: struct tcf_t, ages in clock ticks (USER_HZ)
TCF_T = struct.Struct("=QQQQ")  # install, lastuse, expires, firstuse
USER_HZ = 100
MS_PER_TICK = 1000 // USER_HZ


class FlowerDecodeError(ValueError):
    """A filter message that is malformed or that hwflow cannot represent."""


class FlowerUnsupported(FlowerDecodeError):
    """Well-formed, but uses a key, mask or action hwflow does not model (a device would say EOPNOTSUPP)."""


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """One flower key: where it lives in FlowerKeys and on the wire.

    ``mask_field`` None means hwflow matches the key exactly; ``mask_attr``
    is still given when the kernel may dump a mask for it (which must then be
    all ones).
    """

    field: str
    attr: int
    mask_field: str | None
    mask_attr: int | None
    size: int  # bytes on the wire
    ir_field: str  # the pipeline IR's name, for capability checks
    byteorder: str = "big"
    bits: int = 0  # value width when narrower than size * 8

    @property
    def width(self) -> int:
        return self.bits or self.size * 8

    def pack(self, value: int) -> bytes:
        return value.to_bytes(self.size, self.byteorder)

    def unpack(self, payload: bytes) -> int:
        if len(payload) < self.size:
            raise FlowerDecodeError(f"flower key {self.field}: {len(payload)} bytes, expected {self.size}")
        return int.from_bytes(payload[:self.size], self.byteorder)


KEY_SPECS: tuple[KeySpec, ...] = (
    KeySpec("eth_dst", TCA_FLOWER_KEY_ETH_DST, "eth_dst_mask", TCA_FLOWER_KEY_ETH_DST_MASK, 6,
            "eth_dst"),
    KeySpec("eth_src", TCA_FLOWER_KEY_ETH_SRC, "eth_src_mask", TCA_FLOWER_KEY_ETH_SRC_MASK, 6,
            "eth_src"),
    # The kernel reads VLAN_ID with nla_get_u16: host order, despite the header's "be16".
    KeySpec("vlan_id", TCA_FLOWER_KEY_VLAN_ID, None, None, 2, "vlan_vid", sys.byteorder, 12),
    KeySpec("ip_proto", TCA_FLOWER_KEY_IP_PROTO, None, None, 1, "ip_proto"),
    KeySpec("ipv4_src", TCA_FLOWER_KEY_IPV4_SRC, "ipv4_src_mask", TCA_FLOWER_KEY_IPV4_SRC_MASK, 4,
            "ipv4_src"),
    KeySpec("ipv4_dst", TCA_FLOWER_KEY_IPV4_DST, "ipv4_dst_mask", TCA_FLOWER_KEY_IPV4_DST_MASK, 4,
            "ipv4_dst"),
    KeySpec("ipv6_src", TCA_FLOWER_KEY_IPV6_SRC, "ipv6_src_mask", TCA_FLOWER_KEY_IPV6_SRC_MASK, 16,
            "ipv6_src"),
    KeySpec("ipv6_dst", TCA_FLOWER_KEY_IPV6_DST, "ipv6_dst_mask", TCA_FLOWER_KEY_IPV6_DST_MASK, 16,
            "ipv6_dst"),
    KeySpec("tcp_src", TCA_FLOWER_KEY_TCP_SRC, None, TCA_FLOWER_KEY_TCP_SRC_MASK, 2, "tcp_src"),
    KeySpec("tcp_dst", TCA_FLOWER_KEY_TCP_DST, None, TCA_FLOWER_KEY_TCP_DST_MASK, 2, "tcp_dst"),
    KeySpec("udp_src", TCA_FLOWER_KEY_UDP_SRC, None, TCA_FLOWER_KEY_UDP_SRC_MASK, 2, "udp_src"),
    KeySpec("udp_dst", TCA_FLOWER_KEY_UDP_DST, None, TCA_FLOWER_KEY_UDP_DST_MASK, 2, "udp_dst"),
)
_BY_ATTR = {s.attr: s for s in KEY_SPECS}
_BY_MASK_ATTR = {s.mask_attr: s for s in KEY_SPECS if s.mask_attr is not None}
# Which ethertype / ip_proto a key needs, so a rule that could never match is refused up front.
_NEEDS_PROTOCOL = {"ipv4": ETH_P_IP, "ipv6": ETH_P_IPV6, "vlan": ETH_P_8021Q}
_NEEDS_IP_PROTO = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}


@dataclasses.dataclass(frozen=True)
class FlowerKeys:
    """What a filter matches; None = not matched. A missing mask means all ones."""

    eth_dst: int | None = None
    eth_dst_mask: int | None = None
    eth_src: int | None = None
    eth_src_mask: int | None = None
    vlan_id: int | None = None
    ip_proto: int | None = None
    ipv4_src: int | None = None
    ipv4_src_mask: int | None = None
    ipv4_dst: int | None = None
    ipv4_dst_mask: int | None = None
    ipv6_src: int | None = None
    ipv6_src_mask: int | None = None
    ipv6_dst: int | None = None
    ipv6_dst_mask: int | None = None
    tcp_src: int | None = None
    tcp_dst: int | None = None
    udp_src: int | None = None
    udp_dst: int | None = None

    def __post_init__(self) -> None:
        for spec in KEY_SPECS:
            value = getattr(self, spec.field)
            mask = getattr(self, spec.mask_field) if spec.mask_field else None
            if value is None:
                if mask is not None:
                    raise ValueError(f"flower key {spec.mask_field} given without {spec.field}; set both")
                continue
            limit = (1 << spec.width) - 1
            if not 0 <= value <= limit:
                raise ValueError(f"flower key {spec.field}={value:#x} is out of range (0..{limit:#x})")
            if spec.mask_field:
                if mask is None:
                    object.__setattr__(self, spec.mask_field, limit)
                    continue
                if not 0 <= mask <= limit:
                    raise ValueError(f"flower key {spec.mask_field}={mask:#x} is out of range "
                                     f"(0..{limit:#x})")
                if value & ~mask:
                    raise ValueError(f"flower key {spec.field}={value:#x} has bits outside its mask "
                                     f"{mask:#x}; mask the value first")

    def items(self) -> list[tuple[KeySpec, int, int]]:
        """(spec, value, mask) for every matched key, in wire order."""
        out = []
        for spec in KEY_SPECS:
            value = getattr(self, spec.field)
            if value is not None:
                mask = getattr(self, spec.mask_field) if spec.mask_field else (1 << spec.width) - 1
                out.append((spec, value, mask))
        return out


@dataclasses.dataclass(frozen=True)
class Mirred:
    ifindex: int
    egress: bool = True
    redirect: bool = True

    def __post_init__(self) -> None:
        if not 0 < self.ifindex < 1 << 31:
            raise ValueError(f"mirred: ifindex {self.ifindex} is not a valid interface index")


GACT_VERDICTS = ("drop", "pass", "goto_chain")


@dataclasses.dataclass(frozen=True)
class Gact:
    verdict: str
    chain: int = 0

    def __post_init__(self) -> None:
        if self.verdict not in GACT_VERDICTS:
            raise ValueError(f"gact: unknown verdict {self.verdict!r}; use one of {GACT_VERDICTS}")
        if self.verdict != "goto_chain" and self.chain:
            raise ValueError(f"gact: chain {self.chain} given with verdict {self.verdict!r}; "
                             "only goto_chain takes one")
        if not 0 <= self.chain <= TC_ACT_EXT_VAL_MASK:
            raise ValueError(f"gact: chain {self.chain} out of range (0..{TC_ACT_EXT_VAL_MASK})")


FlowerAction = Mirred | Gact


@dataclasses.dataclass(frozen=True)
class FlowerRule:
    ifindex: int
    prio: int
    handle: int
    protocol: int  # ethertype, host order
    keys: FlowerKeys
    actions: tuple[FlowerAction, ...]
    chain: int = 0
    parent: int = INGRESS
    flags: int = 0  # TCA_CLS_FLAGS_SKIP_HW / SKIP_SW

    def __post_init__(self) -> None:
        where = f"flower rule prio {self.prio} handle {self.handle} on ifindex {self.ifindex}"
        if not 0 < self.ifindex < 1 << 31:
            raise ValueError(f"{where}: ifindex must be a positive interface index")
        if not 0 <= self.prio <= 0xFFFF or not 0 <= self.handle <= 0xFFFFFFFF:
            raise ValueError(f"{where}: prio must fit 16 bits and handle 32 bits")
        if not 0 <= self.protocol <= 0xFFFF or not 0 <= self.chain <= 0xFFFFFFFF:
            raise ValueError(f"{where}: protocol must fit 16 bits and chain 32 bits")
        if self.flags & ~REQUEST_FLAGS or self.flags == REQUEST_FLAGS:
            raise ValueError(f"{where}: flags {self.flags:#x}: use SKIP_HW or SKIP_SW (not both) or 0")
        if not 0 < len(self.actions) <= TCA_ACT_MAX_PRIO:
            raise ValueError(f"{where}: needs 1..{TCA_ACT_MAX_PRIO} actions, got {len(self.actions)}")
        if not all(isinstance(a, (Mirred, Gact)) for a in self.actions):
            raise ValueError(f"{where}: actions must be Mirred or Gact, got {self.actions!r}")
        ip_protocols = (ETH_P_IP, ETH_P_IPV6)
        for spec, _, _ in self.keys.items():
            family = spec.field.split("_")[0]
            if family in _NEEDS_PROTOCOL and self.protocol != _NEEDS_PROTOCOL[family]:
                raise ValueError(f"{where}: key {spec.field} needs protocol {_NEEDS_PROTOCOL[family]:#06x}, "
                                 f"not {self.protocol:#06x}")
            if spec.field == "ip_proto" and self.protocol not in ip_protocols:
                raise ValueError(f"{where}: ip_proto needs protocol 0x0800 or 0x86dd, "
                                 f"not {self.protocol:#06x}")
            if family in _NEEDS_IP_PROTO and self.keys.ip_proto != _NEEDS_IP_PROTO[family]:
                raise ValueError(f"{where}: key {spec.field} needs ip_proto {_NEEDS_IP_PROTO[family]}")

    def describe(self) -> str:
        return (f"flower rule chain {self.chain} prio {self.prio} handle {self.handle} "
                f"on ifindex {self.ifindex}")


@dataclasses.dataclass(frozen=True)
class RuleStats:
    packets: int
    bytes: int
    lastused_ms: int  # age: milliseconds since the rule last matched (since install if never)


# --- encoding ----------------------------------------------------------------


def encode_tcmsg(ifindex: int, handle: int, parent: int, prio: int, protocol: int) -> bytes:
    info = (prio << 16) | socket.htons(protocol)
    return TCMSG.pack(0, ifindex, handle, parent, info)


def _encode_action(action: FlowerAction, stats: RuleStats | None) -> list[bytes]:
    tm = [] if stats is None else [TCF_T.pack(0, stats.lastused_ms // MS_PER_TICK, 0, 0)]
    if isinstance(action, Mirred):
        eaction = {(True, True): TCA_EGRESS_REDIR, (True, False): TCA_EGRESS_MIRROR,
                   (False, True): TCA_INGRESS_REDIR, (False, False): TCA_INGRESS_MIRROR}
        verdict = TC_ACT_STOLEN if action.redirect else TC_ACT_PIPE
        parms = TC_MIRRED.pack(0, 0, verdict, 0, 0, eaction[(action.egress, action.redirect)], action.ifindex)
        kind, options = "mirred", [nl.nla(TCA_MIRRED_PARMS, parms)] + [nl.nla(TCA_MIRRED_TM, t) for t in tm]
    else:
        verdict = {"drop": TC_ACT_SHOT, "pass": TC_ACT_OK, "goto_chain": TC_ACT_GOTO_CHAIN | action.chain}
        parms = TC_GACT.pack(0, 0, verdict[action.verdict], 0, 0)
        kind, options = "gact", [nl.nla(TCA_GACT_PARMS, parms)] + [nl.nla(TCA_GACT_TM, t) for t in tm]
    out = [nl.nla_str(TCA_ACT_KIND, kind)]
    if stats is not None:
        out.append(nl.nla_nest(TCA_ACT_STATS, [nl.nla(TCA_STATS_BASIC,
                                                      GNET_STATS_BASIC.pack(stats.bytes, stats.packets))]))
    out.append(nl.nla_nest(TCA_ACT_OPTIONS, options, flag_nested=True))
    return out


def encode_options(rule: FlowerRule, stats: RuleStats | None = None, status_flags: int = 0) -> bytes:
    """TCA_OPTIONS in iproute2's order: keys, actions, flags, then eth_type."""
    attrs = []
    for spec, value, mask in rule.keys.items():
        attrs.append(nl.nla(spec.attr, spec.pack(value)))
        if spec.mask_field:
            attrs.append(nl.nla(spec.mask_attr, spec.pack(mask)))
    acts = [nl.nla_nest(i, _encode_action(a, stats)) for i, a in enumerate(rule.actions, start=1)]
    attrs.append(nl.nla_nest(TCA_FLOWER_ACT, acts))
    attrs.append(nl.nla_u32(TCA_FLOWER_FLAGS, rule.flags | status_flags))
    if rule.protocol != ETH_P_ALL:
        attrs.append(nl.nla(TCA_FLOWER_KEY_ETH_TYPE, struct.pack("!H", rule.protocol)))
    return nl.nla_nest(TCA_OPTIONS, attrs)


def _chain_and_kind(chain: int) -> bytes:
    """iproute2 puts TCA_CHAIN (only when not 0) before TCA_KIND."""
    return (nl.nla_u32(TCA_CHAIN, chain) if chain else b"") + nl.nla_str(TCA_KIND, "flower")


def encode_filter(rule: FlowerRule, msg_type: int, flags: int, seq: int,
                  stats: RuleStats | None = None, status_flags: int = 0) -> bytes:
    """A whole filter message; the simulated NIC uses it for echoes and dumps."""
    payload = encode_tcmsg(rule.ifindex, rule.handle, rule.parent, rule.prio, rule.protocol)
    payload += _chain_and_kind(rule.chain)
    payload += encode_options(rule, stats, status_flags)
    return nl.encode_message(msg_type, flags, seq, payload)


def encode_newfilter(rule: FlowerRule, seq: int,
                     flags: int = nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_EXCL) -> bytes:
    return encode_filter(rule, RTM_NEWTFILTER, flags, seq)


def encode_delfilter(rule: FlowerRule, seq: int) -> bytes:
    payload = encode_tcmsg(rule.ifindex, rule.handle, rule.parent, rule.prio, rule.protocol)
    payload += _chain_and_kind(rule.chain)
    return nl.encode_message(RTM_DELTFILTER, nl.NLM_F_REQUEST | nl.NLM_F_ACK, seq, payload)


def encode_dump(ifindex: int, seq: int, parent: int = INGRESS) -> bytes:
    payload = TCMSG.pack(0, ifindex, 0, parent, 0)
    return nl.encode_message(RTM_GETTFILTER, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, seq, payload)


# --- decoding ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TcHeader:
    ifindex: int
    handle: int
    parent: int
    prio: int
    protocol: int


def decode_tcmsg(payload: bytes) -> TcHeader:
    if len(payload) < TCMSG.size:
        raise FlowerDecodeError(f"tcmsg too short: {len(payload)} bytes, expected {TCMSG.size}")
    _, ifindex, handle, parent, info = TCMSG.unpack_from(payload)
    return TcHeader(ifindex, handle, parent, info >> 16, socket.ntohs(info & 0xFFFF))


def _decode_action(payload: bytes) -> tuple[FlowerAction, RuleStats | None]:
    attrs = nl.attr_map(payload)
    kind = nl.get_str(attrs.get(TCA_ACT_KIND, b""))
    options = nl.attr_map(attrs.get(TCA_ACT_OPTIONS, b""))
    mirred = kind == "mirred"
    parms_attr, tm_attr = (TCA_MIRRED_PARMS, TCA_MIRRED_TM) if mirred else (TCA_GACT_PARMS, TCA_GACT_TM)
    if kind not in ("mirred", "gact"):
        raise FlowerUnsupported(f"tc action {kind or '<no kind>'!r} is not modelled by hwflow")
    if parms_attr not in options:
        raise FlowerDecodeError(f"tc action {kind} has no parms")
    action: FlowerAction
    try:
        if mirred:
            *_, eaction, ifindex = TC_MIRRED.unpack_from(options[parms_attr])
            if eaction not in (TCA_EGRESS_REDIR, TCA_EGRESS_MIRROR, TCA_INGRESS_REDIR, TCA_INGRESS_MIRROR):
                raise FlowerDecodeError(f"mirred: unknown eaction {eaction}")
            action = Mirred(ifindex, egress=eaction <= TCA_EGRESS_MIRROR, redirect=eaction % 2 == 1)
        else:
            verdict = TC_GACT.unpack_from(options[parms_attr])[2] & 0xFFFFFFFF
            if verdict & ~TC_ACT_EXT_VAL_MASK == TC_ACT_GOTO_CHAIN:
                action = Gact("goto_chain", verdict & TC_ACT_EXT_VAL_MASK)
            elif verdict in (TC_ACT_SHOT, TC_ACT_OK):
                action = Gact("drop" if verdict == TC_ACT_SHOT else "pass")
            else:
                raise FlowerUnsupported(f"gact: verdict {verdict:#x} is not modelled by hwflow")
    except struct.error as exc:
        raise FlowerDecodeError(f"tc action {kind}: truncated parms ({exc})") from exc
    if TCA_ACT_STATS not in attrs:
        return action, None
    stats = nl.attr_map(attrs[TCA_ACT_STATS])
    nbytes, packets = GNET_STATS_BASIC.unpack(stats[TCA_STATS_BASIC].ljust(GNET_STATS_BASIC.size, b"\0")) \
        if TCA_STATS_BASIC in stats else (0, 0)
    if TCA_STATS_PKT64 in stats:
        packets = struct.unpack_from("=Q", stats[TCA_STATS_PKT64])[0]
    lastuse = TCF_T.unpack_from(options[tm_attr])[1] if tm_attr in options else 0
    return action, RuleStats(packets, nbytes, lastuse * MS_PER_TICK)


def _decode_options(payload: bytes) -> tuple[dict[str, int], tuple[FlowerAction, ...], int, RuleStats | None]:
    values: dict[str, int] = {}
    actions: list[FlowerAction] = []
    flags = 0
    stats = None
    for attr, data in nl.parse_attrs(payload):
        if attr in _BY_ATTR:
            values[_BY_ATTR[attr].field] = _BY_ATTR[attr].unpack(data)
        elif attr in _BY_MASK_ATTR:
            spec = _BY_MASK_ATTR[attr]
            mask = spec.unpack(data)
            if spec.mask_field:
                values[spec.mask_field] = mask
            elif mask != (1 << spec.width) - 1:
                raise FlowerUnsupported(f"flower key {spec.field} has mask {mask:#x}; "
                                        "hwflow models it exact only")
        elif attr == TCA_FLOWER_ACT:
            for _, act in sorted(nl.parse_attrs(data), key=lambda item: item[0]):
                action, act_stats = _decode_action(act)
                actions.append(action)
                stats = stats or act_stats
        elif attr == TCA_FLOWER_FLAGS:
            flags = nl.get_u32(data) & REQUEST_FLAGS
        elif attr not in (TCA_FLOWER_KEY_ETH_TYPE, TCA_FLOWER_IN_HW_COUNT):
            raise FlowerUnsupported(f"flower attribute {attr} (see pkt_cls.h) is not modelled by hwflow")
    return values, tuple(actions), flags, stats


def decode_filter_message(msg: nl.Message) -> tuple[FlowerRule, RuleStats | None]:
    if msg.type != RTM_NEWTFILTER:
        raise FlowerDecodeError(f"netlink message type {msg.type} is not RTM_NEWTFILTER ({RTM_NEWTFILTER})")
    header = decode_tcmsg(msg.payload)
    attrs = nl.attr_map(msg.payload[TCMSG.size:])
    kind = nl.get_str(attrs.get(TCA_KIND, b""))
    if kind != "flower":
        raise FlowerDecodeError(f"filter kind {kind!r} on ifindex {header.ifindex} is not flower")
    chain = nl.get_u32(attrs[TCA_CHAIN]) if TCA_CHAIN in attrs else 0
    values, actions, flags, stats = _decode_options(attrs.get(TCA_OPTIONS, b""))
    try:
        rule = FlowerRule(header.ifindex, header.prio, header.handle, header.protocol, FlowerKeys(**values),
                          actions, chain=chain, parent=header.parent, flags=flags)
    except ValueError as exc:
        raise FlowerDecodeError(str(exc)) from exc
    return rule, stats


def decode_filter(msg: bytes) -> tuple[FlowerRule, RuleStats | None]:
    """Decode one RTM_NEWTFILTER message (a dump entry or an echo)."""
    messages = nl.split_messages(msg)
    if len(messages) != 1:
        raise FlowerDecodeError(f"expected one netlink message, got {len(messages)}")
    return decode_filter_message(messages[0])
