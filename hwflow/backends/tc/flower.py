"""tc-flower filters as values, and their netlink encoding.

pyroute2 has no flower, so hwflow encodes it itself. The byte layout is the
one iproute2's ``tc filter add ... flower ...`` sends (checked byte for byte
in tests/unit/test_tc_flower.py) and the one the kernel sends back in dumps
and echoes. Every integer flower key is one row of :data:`KEY_SPECS`: adding
a key is adding a row and a field to :class:`FlowerKeys`. Geneve options
(nested, variable length) are the one key with code of its own. Every action
is a class with its own encoder/decoder pair, registered in :data:`ACTION_KINDS`.

Numbers are transcribed from the uapi headers of Linux 6.1 (Debian 12's
/usr/include/linux), named next to each block.
"""

from __future__ import annotations

import dataclasses
import socket
import struct
import sys
from collections.abc import Callable

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
ETH_P_ARP = 0x0806
ETH_P_RARP = 0x8035
ETH_P_IPV6 = 0x86DD
ETH_P_8021Q = 0x8100
ETH_P_8021AD = 0x88A8
VLAN_PROTOCOLS = (ETH_P_8021Q, ETH_P_8021AD)
# /usr/include/linux/in.h, in6.h
IPPROTO_ICMP = 1
IPPROTO_TCP = 6
IPPROTO_UDP = 17
IPPROTO_ICMPV6 = 58
IPPROTO_SCTP = 132
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
TCA_FLOWER_KEY_VLAN_PRIO = 24
TCA_FLOWER_KEY_VLAN_ETH_TYPE = 25
TCA_FLOWER_KEY_ENC_KEY_ID = 26
TCA_FLOWER_KEY_ENC_IPV4_SRC = 27
TCA_FLOWER_KEY_ENC_IPV4_SRC_MASK = 28
TCA_FLOWER_KEY_ENC_IPV4_DST = 29
TCA_FLOWER_KEY_ENC_IPV4_DST_MASK = 30
TCA_FLOWER_KEY_ENC_IPV6_SRC = 31
TCA_FLOWER_KEY_ENC_IPV6_SRC_MASK = 32
TCA_FLOWER_KEY_ENC_IPV6_DST = 33
TCA_FLOWER_KEY_ENC_IPV6_DST_MASK = 34
TCA_FLOWER_KEY_TCP_SRC_MASK = 35
TCA_FLOWER_KEY_TCP_DST_MASK = 36
TCA_FLOWER_KEY_UDP_SRC_MASK = 37
TCA_FLOWER_KEY_UDP_DST_MASK = 38
TCA_FLOWER_KEY_SCTP_SRC_MASK = 39
TCA_FLOWER_KEY_SCTP_DST_MASK = 40
TCA_FLOWER_KEY_SCTP_SRC = 41
TCA_FLOWER_KEY_SCTP_DST = 42
TCA_FLOWER_KEY_ENC_UDP_DST_PORT = 45
TCA_FLOWER_KEY_ENC_UDP_DST_PORT_MASK = 46
TCA_FLOWER_KEY_ICMPV4_CODE = 49
TCA_FLOWER_KEY_ICMPV4_CODE_MASK = 50
TCA_FLOWER_KEY_ICMPV4_TYPE = 51
TCA_FLOWER_KEY_ICMPV4_TYPE_MASK = 52
TCA_FLOWER_KEY_ICMPV6_CODE = 53
TCA_FLOWER_KEY_ICMPV6_CODE_MASK = 54
TCA_FLOWER_KEY_ICMPV6_TYPE = 55
TCA_FLOWER_KEY_ICMPV6_TYPE_MASK = 56
TCA_FLOWER_KEY_ARP_SIP = 57
TCA_FLOWER_KEY_ARP_SIP_MASK = 58
TCA_FLOWER_KEY_ARP_TIP = 59
TCA_FLOWER_KEY_ARP_TIP_MASK = 60
TCA_FLOWER_KEY_ARP_OP = 61
TCA_FLOWER_KEY_ARP_OP_MASK = 62
TCA_FLOWER_KEY_ARP_SHA = 63
TCA_FLOWER_KEY_ARP_SHA_MASK = 64
TCA_FLOWER_KEY_ARP_THA = 65
TCA_FLOWER_KEY_ARP_THA_MASK = 66
TCA_FLOWER_KEY_TCP_FLAGS = 71
TCA_FLOWER_KEY_TCP_FLAGS_MASK = 72
TCA_FLOWER_KEY_IP_TOS = 73
TCA_FLOWER_KEY_IP_TOS_MASK = 74
TCA_FLOWER_KEY_IP_TTL = 75
TCA_FLOWER_KEY_IP_TTL_MASK = 76
TCA_FLOWER_KEY_CVLAN_ID = 77
TCA_FLOWER_KEY_CVLAN_PRIO = 78
TCA_FLOWER_KEY_CVLAN_ETH_TYPE = 79
TCA_FLOWER_KEY_ENC_OPTS = 84
TCA_FLOWER_KEY_ENC_OPTS_MASK = 85
TCA_FLOWER_IN_HW_COUNT = 86
TCA_FLOWER_KEY_CT_STATE = 91
TCA_FLOWER_KEY_CT_STATE_MASK = 92
TCA_FLOWER_KEY_CT_ZONE = 93
TCA_FLOWER_KEY_CT_ZONE_MASK = 94
TCA_FLOWER_KEY_CT_MARK = 95
TCA_FLOWER_KEY_CT_MARK_MASK = 96
TCA_FLOWER_KEY_ENC_OPTS_GENEVE = 1
TCA_FLOWER_KEY_ENC_OPT_GENEVE_CLASS = 1
TCA_FLOWER_KEY_ENC_OPT_GENEVE_TYPE = 2
TCA_FLOWER_KEY_ENC_OPT_GENEVE_DATA = 3
TCA_FLOWER_KEY_CT_FLAGS_NEW = 1 << 0
TCA_FLOWER_KEY_CT_FLAGS_ESTABLISHED = 1 << 1
TCA_FLOWER_KEY_CT_FLAGS_RELATED = 1 << 2
TCA_FLOWER_KEY_CT_FLAGS_TRACKED = 1 << 3
TCA_FLOWER_KEY_CT_FLAGS_INVALID = 1 << 4
TCA_FLOWER_KEY_CT_FLAGS_REPLY = 1 << 5
CT_STATE_BITS = 6
# /usr/include/linux/gen_stats.h
TCA_STATS_BASIC = 1
TCA_STATS_PKT64 = 8
GNET_STATS_BASIC = struct.Struct("=QI4x")  # bytes, packets; padded to 8 as the kernel copies it
# /usr/include/linux/pkt_cls.h: tc_gen (index, capab, action, refcnt, bindcnt), the head of every action's parms
TC_GEN = struct.Struct("=IIiii")
# /usr/include/linux/tc_act/tc_mirred.h
TCA_EGRESS_REDIR = 1
TCA_EGRESS_MIRROR = 2
TCA_INGRESS_REDIR = 3
TCA_INGRESS_MIRROR = 4
TCA_MIRRED_TM = 1
TCA_MIRRED_PARMS = 2
TC_MIRRED = struct.Struct("=IIiiiiI")  # tc_gen, eaction, ifindex
# /usr/include/linux/tc_act/tc_gact.h
TCA_GACT_TM = 1
TCA_GACT_PARMS = 2
TC_GACT = TC_GEN
# /usr/include/linux/tc_act/tc_vlan.h
TCA_VLAN_ACT_POP = 1
TCA_VLAN_ACT_PUSH = 2
TCA_VLAN_ACT_MODIFY = 3
TCA_VLAN_TM = 1
TCA_VLAN_PARMS = 2
TCA_VLAN_PUSH_VLAN_ID = 3
TCA_VLAN_PUSH_VLAN_PROTOCOL = 4
TCA_VLAN_PUSH_VLAN_PRIORITY = 6
TC_VLAN = struct.Struct("=IIiiii")  # tc_gen, v_action
# /usr/include/linux/tc_act/tc_tunnel_key.h
TCA_TUNNEL_KEY_ACT_SET = 1
TCA_TUNNEL_KEY_ACT_RELEASE = 2
TCA_TUNNEL_KEY_TM = 1
TCA_TUNNEL_KEY_PARMS = 2
TCA_TUNNEL_KEY_ENC_IPV4_SRC = 3
TCA_TUNNEL_KEY_ENC_IPV4_DST = 4
TCA_TUNNEL_KEY_ENC_IPV6_SRC = 5
TCA_TUNNEL_KEY_ENC_IPV6_DST = 6
TCA_TUNNEL_KEY_ENC_KEY_ID = 7  # the header says be64; the kernel and iproute2 use be32
TCA_TUNNEL_KEY_ENC_DST_PORT = 9
TCA_TUNNEL_KEY_NO_CSUM = 10
TCA_TUNNEL_KEY_ENC_OPTS = 11
TCA_TUNNEL_KEY_ENC_TOS = 12
TCA_TUNNEL_KEY_ENC_TTL = 13
TCA_TUNNEL_KEY_ENC_OPTS_GENEVE = 1
TC_TUNNEL_KEY = struct.Struct("=IIiiii")  # tc_gen, t_action
# /usr/include/linux/tc_act/tc_pedit.h
TCA_PEDIT_TM = 1
TCA_PEDIT_PARMS_EX = 4
TCA_PEDIT_KEYS_EX = 5
TCA_PEDIT_KEY_EX = 6
TCA_PEDIT_KEY_EX_HTYPE = 1
TCA_PEDIT_KEY_EX_CMD = 2
PEDIT_HTYPES = {"network": 0, "eth": 1, "ip4": 2, "ip6": 3, "tcp": 4, "udp": 5}
PEDIT_CMDS = {"set": 0, "add": 1}
TC_PEDIT_SEL = struct.Struct("=IIiiiBBxx")  # tc_gen, nkeys, flags
TC_PEDIT_KEY = struct.Struct("=4s4sIIiI")  # mask, val (both in packet byte order), off, at, offmask, shift
# /usr/include/linux/tc_act/tc_csum.h
TCA_CSUM_PARMS = 1
TCA_CSUM_TM = 2
TCA_CSUM_UPDATE_FLAG_IPV4HDR = 1
TCA_CSUM_UPDATE_FLAG_ICMP = 2
TCA_CSUM_UPDATE_FLAG_IGMP = 4
TCA_CSUM_UPDATE_FLAG_TCP = 8
TCA_CSUM_UPDATE_FLAG_UDP = 16
TCA_CSUM_UPDATE_FLAG_UDPLITE = 32
TCA_CSUM_UPDATE_FLAG_SCTP = 64
CSUM_FLAGS = (1 << 7) - 1
TC_CSUM = struct.Struct("=IIiiiI")  # tc_gen, update_flags
# /usr/include/linux/tc_act/tc_ct.h
TCA_CT_PARMS = 1
TCA_CT_TM = 2
TCA_CT_ACTION = 3
TCA_CT_ZONE = 4
TCA_CT_MARK = 5
TCA_CT_MARK_MASK = 6
TCA_CT_NAT_IPV4_MIN = 9
TCA_CT_NAT_IPV4_MAX = 10
TCA_CT_NAT_IPV6_MIN = 11
TCA_CT_NAT_IPV6_MAX = 12
TCA_CT_NAT_PORT_MIN = 13
TCA_CT_NAT_PORT_MAX = 14
TCA_CT_ACT_COMMIT = 1 << 0
TCA_CT_ACT_FORCE = 1 << 1
TCA_CT_ACT_CLEAR = 1 << 2
TCA_CT_ACT_NAT = 1 << 3
TCA_CT_ACT_NAT_SRC = 1 << 4
TCA_CT_ACT_NAT_DST = 1 << 5
TC_CT = TC_GEN
# /usr/include/linux/pkt_cls.h: struct tcf_t, ages in clock ticks (USER_HZ)
TCF_T = struct.Struct("=QQQQ")  # install, lastuse, expires, firstuse
USER_HZ = 100
MS_PER_TICK = 1000 // USER_HZ
HOST = sys.byteorder


class FlowerDecodeError(ValueError):
    """A filter message that is malformed or that hwflow cannot represent."""


class FlowerUnsupported(FlowerDecodeError):
    """Well-formed, but uses a key, mask or action hwflow does not model (a device would say EOPNOTSUPP)."""


@dataclasses.dataclass(frozen=True)
class KeySpec:
    """One flower key: where it lives in FlowerKeys and on the wire, and what it needs to be matchable.

    ``mask_field`` None means hwflow matches the key exactly; ``mask_attr``
    is still given when the kernel may dump a mask for it (which must then be
    all ones). ``needs`` lists the ethertypes the key makes sense for, seen at
    ``layer``: "outer" (the filter's protocol), "inner" (the outer VLAN tag's
    ethertype) or "l3" (the ethertype after all VLAN tags); ``ip_proto`` the
    IP protocol it needs. A rule that could never match is refused up front.
    """

    field: str
    attr: int
    mask_field: str | None
    mask_attr: int | None
    size: int  # bytes on the wire
    ir_field: str  # the pipeline IR's name, for capability checks
    byteorder: str = "big"
    bits: int = 0  # value width when narrower than size * 8
    needs: tuple[int, ...] = ()
    layer: str = "l3"
    ip_proto: tuple[int, ...] = ()

    @property
    def width(self) -> int:
        return self.bits or self.size * 8

    def pack(self, value: int) -> bytes:
        return value.to_bytes(self.size, self.byteorder)

    def unpack(self, payload: bytes) -> int:
        if len(payload) < self.size:
            raise FlowerDecodeError(f"flower key {self.field}: {len(payload)} bytes, expected {self.size}")
        return int.from_bytes(payload[:self.size], self.byteorder)


_IP = (ETH_P_IP, ETH_P_IPV6)
_ARP = (ETH_P_ARP, ETH_P_RARP)


def _masked(field: str, attr: int, size: int, ir_field: str, **kw: object) -> KeySpec:
    """A key with an arbitrary mask whose mask attribute follows the value's (the usual pkt_cls.h layout)."""
    return KeySpec(field, attr, f"{field}_mask", attr + 1, size, ir_field, **kw)  # type: ignore[arg-type]


# Wire order of the keys (iproute2 writes them in command-line order; this is ours).
KEY_SPECS: tuple[KeySpec, ...] = (
    _masked("eth_dst", TCA_FLOWER_KEY_ETH_DST, 6, "eth_dst"),
    _masked("eth_src", TCA_FLOWER_KEY_ETH_SRC, 6, "eth_src"),
    # The kernel reads VLAN_ID with nla_get_u16: host order, despite the header's "be16".
    KeySpec("vlan_id", TCA_FLOWER_KEY_VLAN_ID, None, None, 2, "vlan_vid", HOST, 12, VLAN_PROTOCOLS, "outer"),
    KeySpec("vlan_prio", TCA_FLOWER_KEY_VLAN_PRIO, None, None, 1, "vlan_pcp", bits=3, needs=VLAN_PROTOCOLS,
            layer="outer"),
    KeySpec("vlan_eth_type", TCA_FLOWER_KEY_VLAN_ETH_TYPE, None, None, 2, "vlan_eth_type", needs=VLAN_PROTOCOLS,
            layer="outer"),
    KeySpec("cvlan_id", TCA_FLOWER_KEY_CVLAN_ID, None, None, 2, "cvlan_vid", HOST, 12, VLAN_PROTOCOLS, "inner"),
    KeySpec("cvlan_prio", TCA_FLOWER_KEY_CVLAN_PRIO, None, None, 1, "cvlan_pcp", bits=3, needs=VLAN_PROTOCOLS,
            layer="inner"),
    KeySpec("cvlan_eth_type", TCA_FLOWER_KEY_CVLAN_ETH_TYPE, None, None, 2, "cvlan_eth_type",
            needs=VLAN_PROTOCOLS, layer="inner"),
    KeySpec("ip_proto", TCA_FLOWER_KEY_IP_PROTO, None, None, 1, "ip_proto", needs=_IP),
    _masked("ip_tos", TCA_FLOWER_KEY_IP_TOS, 1, "ip_tos", needs=_IP),
    _masked("ip_ttl", TCA_FLOWER_KEY_IP_TTL, 1, "ip_ttl", needs=_IP),
    _masked("ipv4_src", TCA_FLOWER_KEY_IPV4_SRC, 4, "ipv4_src", needs=(ETH_P_IP,)),
    _masked("ipv4_dst", TCA_FLOWER_KEY_IPV4_DST, 4, "ipv4_dst", needs=(ETH_P_IP,)),
    _masked("ipv6_src", TCA_FLOWER_KEY_IPV6_SRC, 16, "ipv6_src", needs=(ETH_P_IPV6,)),
    _masked("ipv6_dst", TCA_FLOWER_KEY_IPV6_DST, 16, "ipv6_dst", needs=(ETH_P_IPV6,)),
    KeySpec("tcp_src", TCA_FLOWER_KEY_TCP_SRC, None, TCA_FLOWER_KEY_TCP_SRC_MASK, 2, "tcp_src", needs=_IP,
            ip_proto=(IPPROTO_TCP,)),
    KeySpec("tcp_dst", TCA_FLOWER_KEY_TCP_DST, None, TCA_FLOWER_KEY_TCP_DST_MASK, 2, "tcp_dst", needs=_IP,
            ip_proto=(IPPROTO_TCP,)),
    KeySpec("udp_src", TCA_FLOWER_KEY_UDP_SRC, None, TCA_FLOWER_KEY_UDP_SRC_MASK, 2, "udp_src", needs=_IP,
            ip_proto=(IPPROTO_UDP,)),
    KeySpec("udp_dst", TCA_FLOWER_KEY_UDP_DST, None, TCA_FLOWER_KEY_UDP_DST_MASK, 2, "udp_dst", needs=_IP,
            ip_proto=(IPPROTO_UDP,)),
    KeySpec("sctp_src", TCA_FLOWER_KEY_SCTP_SRC, None, TCA_FLOWER_KEY_SCTP_SRC_MASK, 2, "sctp_src", needs=_IP,
            ip_proto=(IPPROTO_SCTP,)),
    KeySpec("sctp_dst", TCA_FLOWER_KEY_SCTP_DST, None, TCA_FLOWER_KEY_SCTP_DST_MASK, 2, "sctp_dst", needs=_IP,
            ip_proto=(IPPROTO_SCTP,)),
    _masked("tcp_flags", TCA_FLOWER_KEY_TCP_FLAGS, 2, "tcp_flags", bits=12, needs=_IP, ip_proto=(IPPROTO_TCP,)),
    _masked("icmpv4_type", TCA_FLOWER_KEY_ICMPV4_TYPE, 1, "icmp_type", needs=(ETH_P_IP,),
            ip_proto=(IPPROTO_ICMP,)),
    _masked("icmpv4_code", TCA_FLOWER_KEY_ICMPV4_CODE, 1, "icmp_code", needs=(ETH_P_IP,),
            ip_proto=(IPPROTO_ICMP,)),
    # the IR has one icmp_type/icmp_code for both families (eth_type says which): ICMPv6's keys name them too
    _masked("icmpv6_type", TCA_FLOWER_KEY_ICMPV6_TYPE, 1, "icmp_type", needs=(ETH_P_IPV6,),
            ip_proto=(IPPROTO_ICMPV6,)),
    _masked("icmpv6_code", TCA_FLOWER_KEY_ICMPV6_CODE, 1, "icmp_code", needs=(ETH_P_IPV6,),
            ip_proto=(IPPROTO_ICMPV6,)),
    _masked("arp_sip", TCA_FLOWER_KEY_ARP_SIP, 4, "arp_spa", needs=_ARP),
    _masked("arp_tip", TCA_FLOWER_KEY_ARP_TIP, 4, "arp_tpa", needs=_ARP),
    _masked("arp_op", TCA_FLOWER_KEY_ARP_OP, 1, "arp_op", needs=_ARP),
    _masked("arp_sha", TCA_FLOWER_KEY_ARP_SHA, 6, "arp_sha", needs=_ARP),
    _masked("arp_tha", TCA_FLOWER_KEY_ARP_THA, 6, "arp_tha", needs=_ARP),
    KeySpec("enc_key_id", TCA_FLOWER_KEY_ENC_KEY_ID, None, None, 4, "tun_id"),
    _masked("enc_ipv4_src", TCA_FLOWER_KEY_ENC_IPV4_SRC, 4, "tun_ipv4_src"),
    _masked("enc_ipv4_dst", TCA_FLOWER_KEY_ENC_IPV4_DST, 4, "tun_ipv4_dst"),
    _masked("enc_ipv6_src", TCA_FLOWER_KEY_ENC_IPV6_SRC, 16, "tun_ipv6_src"),
    _masked("enc_ipv6_dst", TCA_FLOWER_KEY_ENC_IPV6_DST, 16, "tun_ipv6_dst"),
    KeySpec("enc_dst_port", TCA_FLOWER_KEY_ENC_UDP_DST_PORT, None, TCA_FLOWER_KEY_ENC_UDP_DST_PORT_MASK, 2,
            "tun_dst_port"),
    # ct_* are u16/u32 in host order (nla_get_u16/u32 in the kernel's fl_set_key_ct).
    _masked("ct_state", TCA_FLOWER_KEY_CT_STATE, 2, "ct_state", byteorder=HOST, bits=CT_STATE_BITS),
    _masked("ct_zone", TCA_FLOWER_KEY_CT_ZONE, 2, "ct_zone", byteorder=HOST),
    _masked("ct_mark", TCA_FLOWER_KEY_CT_MARK, 4, "ct_mark", byteorder=HOST),
)
_BY_ATTR = {s.attr: s for s in KEY_SPECS}
_BY_MASK_ATTR = {s.mask_attr: s for s in KEY_SPECS if s.mask_attr is not None}


@dataclasses.dataclass(frozen=True)
class GeneveOpt:
    """One Geneve option TLV (RFC 8926): class, type, and 4..124 bytes of data (a multiple of 4)."""

    opt_class: int
    opt_type: int
    data: bytes

    def __post_init__(self) -> None:
        if not 0 <= self.opt_class <= 0xFFFF or not 0 <= self.opt_type <= 0xFF:
            raise ValueError(f"geneve option class {self.opt_class:#x} type {self.opt_type:#x}: "
                             "class must fit 16 bits and type 8 bits")
        if not 4 <= len(self.data) <= 124 or len(self.data) % 4:
            raise ValueError(f"geneve option class {self.opt_class:#x} type {self.opt_type:#x}: data is "
                             f"{len(self.data)} bytes; it must be 4..124 bytes, a multiple of 4")

    def full_mask(self) -> GeneveOpt:
        return GeneveOpt(0xFFFF, 0xFF, b"\xff" * len(self.data))

    def encode(self, attr: int) -> bytes:
        """The option as iproute2 nests it (class, type, data; no NLA_F_NESTED), for flower and tunnel_key alike."""
        return nl.nla_nest(attr, [nl.nla(1, struct.pack("!H", self.opt_class)), nl.nla(2, bytes([self.opt_type])),
                                  nl.nla(3, self.data)])

    @classmethod
    def decode(cls, payload: bytes) -> GeneveOpt:
        attrs = nl.attr_map(payload)
        try:
            return cls(struct.unpack("!H", attrs[1][:2])[0], attrs[2][0], attrs[3])
        except (KeyError, IndexError, struct.error) as exc:
            raise FlowerDecodeError(f"geneve option: missing or short class/type/data ({exc})") from exc


def _decode_geneve_opts(payload: bytes, geneve_attr: int, where: str) -> tuple[GeneveOpt, ...]:
    out = []
    for attr, data in nl.parse_attrs(payload):
        if attr != geneve_attr:
            raise FlowerUnsupported(f"{where}: tunnel option kind {attr} is not Geneve; hwflow models Geneve only")
        out.append(GeneveOpt.decode(data))
    return tuple(out)


def _check_geneve_mask(values: tuple[GeneveOpt, ...], masks: tuple[GeneveOpt, ...]) -> None:
    if len(values) != len(masks) or any(len(v.data) != len(m.data) for v, m in zip(values, masks)):
        raise ValueError("flower key enc_opts_mask must have one option per enc_opts option, "
                         "with data of the same length")
    for v, m in zip(values, masks):
        data_outside = int.from_bytes(v.data, "big") & ~int.from_bytes(m.data, "big")
        if v.opt_class & ~m.opt_class or v.opt_type & ~m.opt_type or data_outside:
            raise ValueError(f"flower key enc_opts: option {v} has bits outside its mask {m}; mask it first")


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
    vlan_prio: int | None = None
    vlan_eth_type: int | None = None
    cvlan_id: int | None = None
    cvlan_prio: int | None = None
    cvlan_eth_type: int | None = None
    ip_tos: int | None = None
    ip_tos_mask: int | None = None
    ip_ttl: int | None = None
    ip_ttl_mask: int | None = None
    sctp_src: int | None = None
    sctp_dst: int | None = None
    tcp_flags: int | None = None
    tcp_flags_mask: int | None = None
    icmpv4_type: int | None = None
    icmpv4_type_mask: int | None = None
    icmpv4_code: int | None = None
    icmpv4_code_mask: int | None = None
    icmpv6_type: int | None = None
    icmpv6_type_mask: int | None = None
    icmpv6_code: int | None = None
    icmpv6_code_mask: int | None = None
    arp_sip: int | None = None
    arp_sip_mask: int | None = None
    arp_tip: int | None = None
    arp_tip_mask: int | None = None
    arp_op: int | None = None
    arp_op_mask: int | None = None
    arp_sha: int | None = None
    arp_sha_mask: int | None = None
    arp_tha: int | None = None
    arp_tha_mask: int | None = None
    enc_key_id: int | None = None
    enc_ipv4_src: int | None = None
    enc_ipv4_src_mask: int | None = None
    enc_ipv4_dst: int | None = None
    enc_ipv4_dst_mask: int | None = None
    enc_ipv6_src: int | None = None
    enc_ipv6_src_mask: int | None = None
    enc_ipv6_dst: int | None = None
    enc_ipv6_dst_mask: int | None = None
    enc_dst_port: int | None = None
    enc_opts: tuple[GeneveOpt, ...] | None = None
    enc_opts_mask: tuple[GeneveOpt, ...] | None = None
    ct_state: int | None = None
    ct_state_mask: int | None = None
    ct_zone: int | None = None
    ct_zone_mask: int | None = None
    ct_mark: int | None = None
    ct_mark_mask: int | None = None

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
        self._check_enc_opts()

    def _check_enc_opts(self) -> None:
        if self.enc_opts is None:
            if self.enc_opts_mask is not None:
                raise ValueError("flower key enc_opts_mask given without enc_opts; set both")
            return
        if not self.enc_opts or not all(isinstance(o, GeneveOpt) for o in self.enc_opts):
            raise ValueError(f"flower key enc_opts must be a non-empty tuple of GeneveOpt, got {self.enc_opts!r}")
        if self.enc_opts_mask is None:
            object.__setattr__(self, "enc_opts_mask", tuple(o.full_mask() for o in self.enc_opts))
        _check_geneve_mask(self.enc_opts, self.enc_opts_mask)  # type: ignore[arg-type]

    def items(self) -> list[tuple[KeySpec, int, int]]:
        """(spec, value, mask) for every matched integer key, in wire order (Geneve options are apart)."""
        out = []
        for spec in KEY_SPECS:
            value = getattr(self, spec.field)
            if value is not None:
                mask = getattr(self, spec.mask_field) if spec.mask_field else (1 << spec.width) - 1
                out.append((spec, value, mask))
        return out


# --- actions -----------------------------------------------------------------
#
# Every action but mirred and gact is "pipe" (the next action runs), as OVS and
# iproute2's defaults for these kinds; a dump with another control verdict is
# something hwflow does not model.


@dataclasses.dataclass(frozen=True)
class Mirred:
    ifindex: int
    egress: bool = True
    redirect: bool = True

    KIND = "mirred"
    TM = TCA_MIRRED_TM

    def __post_init__(self) -> None:
        if not 0 < self.ifindex < 1 << 31:
            raise ValueError(f"mirred: ifindex {self.ifindex} is not a valid interface index")

    def options(self) -> list[bytes]:
        eaction = {(True, True): TCA_EGRESS_REDIR, (True, False): TCA_EGRESS_MIRROR,
                   (False, True): TCA_INGRESS_REDIR, (False, False): TCA_INGRESS_MIRROR}
        verdict = TC_ACT_STOLEN if self.redirect else TC_ACT_PIPE
        parms = TC_MIRRED.pack(0, 0, verdict, 0, 0, eaction[(self.egress, self.redirect)], self.ifindex)
        return [nl.nla(TCA_MIRRED_PARMS, parms)]

    @classmethod
    def decode(cls, options: dict[int, bytes]) -> Mirred:
        *_, eaction, ifindex = TC_MIRRED.unpack_from(_required(options, TCA_MIRRED_PARMS, "mirred"))
        if eaction not in (TCA_EGRESS_REDIR, TCA_EGRESS_MIRROR, TCA_INGRESS_REDIR, TCA_INGRESS_MIRROR):
            raise FlowerDecodeError(f"mirred: unknown eaction {eaction}")
        return cls(ifindex, egress=eaction <= TCA_EGRESS_MIRROR, redirect=eaction % 2 == 1)


GACT_VERDICTS = ("drop", "pass", "goto_chain")


@dataclasses.dataclass(frozen=True)
class Gact:
    verdict: str
    chain: int = 0

    KIND = "gact"
    TM = TCA_GACT_TM

    def __post_init__(self) -> None:
        if self.verdict not in GACT_VERDICTS:
            raise ValueError(f"gact: unknown verdict {self.verdict!r}; use one of {GACT_VERDICTS}")
        if self.verdict != "goto_chain" and self.chain:
            raise ValueError(f"gact: chain {self.chain} given with verdict {self.verdict!r}; "
                             "only goto_chain takes one")
        if not 0 <= self.chain <= TC_ACT_EXT_VAL_MASK:
            raise ValueError(f"gact: chain {self.chain} out of range (0..{TC_ACT_EXT_VAL_MASK})")

    def control(self) -> int:
        """The tc_gen action word: TC_ACT_SHOT, TC_ACT_OK or TC_ACT_GOTO_CHAIN | chain."""
        return {"drop": TC_ACT_SHOT, "pass": TC_ACT_OK}.get(self.verdict, TC_ACT_GOTO_CHAIN | self.chain)

    def options(self) -> list[bytes]:
        return [nl.nla(TCA_GACT_PARMS, TC_GACT.pack(0, 0, self.control(), 0, 0))]

    @classmethod
    def decode(cls, options: dict[int, bytes]) -> Gact:
        verdict = TC_GACT.unpack_from(_required(options, TCA_GACT_PARMS, "gact"))[2] & 0xFFFFFFFF
        if verdict & ~TC_ACT_EXT_VAL_MASK == TC_ACT_GOTO_CHAIN:
            return cls("goto_chain", verdict & TC_ACT_EXT_VAL_MASK)
        if verdict in (TC_ACT_SHOT, TC_ACT_OK):
            return cls("drop" if verdict == TC_ACT_SHOT else "pass")
        raise FlowerUnsupported(f"gact: verdict {verdict:#x} is not modelled by hwflow")


VLAN_ACTIONS = {"pop": TCA_VLAN_ACT_POP, "push": TCA_VLAN_ACT_PUSH, "modify": TCA_VLAN_ACT_MODIFY}


@dataclasses.dataclass(frozen=True)
class Vlan:
    """Pop the outer tag, push one, or rewrite the outer tag's id and priority."""

    action: str
    vid: int = 0
    prio: int = 0
    protocol: int = ETH_P_8021Q

    KIND = "vlan"
    TM = TCA_VLAN_TM

    def __post_init__(self) -> None:
        if self.action not in VLAN_ACTIONS:
            raise ValueError(f"vlan: unknown action {self.action!r}; use one of {tuple(VLAN_ACTIONS)}")
        if self.action == "pop" and (self.vid or self.prio or self.protocol != ETH_P_8021Q):
            raise ValueError("vlan pop takes no vid, prio or protocol")
        if not 0 <= self.vid < 4096 or not 0 <= self.prio < 8:
            raise ValueError(f"vlan {self.action}: vid {self.vid} must be 0..4095 and prio {self.prio} 0..7")
        if self.protocol not in VLAN_PROTOCOLS:
            raise ValueError(f"vlan {self.action}: protocol {self.protocol:#06x} must be 0x8100 or 0x88a8")

    def options(self) -> list[bytes]:
        out = [nl.nla(TCA_VLAN_PARMS, TC_VLAN.pack(0, 0, TC_ACT_PIPE, 0, 0, VLAN_ACTIONS[self.action]))]
        if self.action != "pop":
            out += [nl.nla_u16(TCA_VLAN_PUSH_VLAN_ID, self.vid),
                    nl.nla(TCA_VLAN_PUSH_VLAN_PROTOCOL, struct.pack("!H", self.protocol)),
                    nl.nla(TCA_VLAN_PUSH_VLAN_PRIORITY, bytes([self.prio]))]
        return out

    @classmethod
    def decode(cls, options: dict[int, bytes]) -> Vlan:
        *_, v_action = TC_VLAN.unpack_from(_pipe(options, TCA_VLAN_PARMS, "vlan"))
        names = {v: k for k, v in VLAN_ACTIONS.items()}
        if v_action not in names:
            raise FlowerUnsupported(f"vlan: v_action {v_action} is not modelled by hwflow")
        if v_action == TCA_VLAN_ACT_POP:
            return cls("pop")
        vid = struct.unpack("=H", _required(options, TCA_VLAN_PUSH_VLAN_ID, "vlan")[:2])[0]
        protocol = struct.unpack("!H", options[TCA_VLAN_PUSH_VLAN_PROTOCOL][:2])[0] \
            if TCA_VLAN_PUSH_VLAN_PROTOCOL in options else ETH_P_8021Q
        prio = options[TCA_VLAN_PUSH_VLAN_PRIORITY][0] if TCA_VLAN_PUSH_VLAN_PRIORITY in options else 0
        return cls(names[v_action], vid, prio, protocol)


@dataclasses.dataclass(frozen=True)
class TunnelKey:
    """Set the tunnel metadata an encapsulating device (vxlan/geneve, ``external``) uses, or release it."""

    unset: bool = False
    ipv4_src: int | None = None
    ipv4_dst: int | None = None
    ipv6_src: int | None = None
    ipv6_dst: int | None = None
    key_id: int | None = None
    dst_port: int | None = None
    geneve_opts: tuple[GeneveOpt, ...] = ()
    tos: int | None = None
    ttl: int | None = None
    csum: bool = True

    KIND = "tunnel_key"
    TM = TCA_TUNNEL_KEY_TM
    _INTS = (("ipv4_src", TCA_TUNNEL_KEY_ENC_IPV4_SRC, 4), ("ipv4_dst", TCA_TUNNEL_KEY_ENC_IPV4_DST, 4),
             ("ipv6_src", TCA_TUNNEL_KEY_ENC_IPV6_SRC, 16), ("ipv6_dst", TCA_TUNNEL_KEY_ENC_IPV6_DST, 16),
             ("key_id", TCA_TUNNEL_KEY_ENC_KEY_ID, 4), ("dst_port", TCA_TUNNEL_KEY_ENC_DST_PORT, 2))
    _BYTES = (("tos", TCA_TUNNEL_KEY_ENC_TOS), ("ttl", TCA_TUNNEL_KEY_ENC_TTL))

    def __post_init__(self) -> None:
        given = [name for name, _, _ in self._INTS + tuple((n, 0, 1) for n, _ in self._BYTES)
                 if getattr(self, name) is not None]
        if self.unset:
            if given or self.geneve_opts or not self.csum:
                raise ValueError(f"tunnel_key unset takes no other field, got {given or 'geneve_opts/csum'}")
            return
        if (self.ipv4_dst is None) == (self.ipv6_dst is None):
            raise ValueError("tunnel_key set needs exactly one of ipv4_dst / ipv6_dst")
        if (self.ipv4_src if self.ipv6_dst is not None else self.ipv6_src) is not None:
            raise ValueError("tunnel_key set: source and destination must be the same IP version")
        for name, _, size in self._INTS + tuple((n, 0, 1) for n, _ in self._BYTES):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1 << (8 * size):
                raise ValueError(f"tunnel_key {name}={value:#x} does not fit {size * 8} bits")
        if not all(isinstance(o, GeneveOpt) for o in self.geneve_opts):
            raise ValueError(f"tunnel_key geneve_opts must be GeneveOpt values, got {self.geneve_opts!r}")

    def options(self) -> list[bytes]:
        out = []
        if not self.unset:
            for name, attr, size in self._INTS:
                value = getattr(self, name)
                if value is not None:
                    out.append(nl.nla(attr, value.to_bytes(size, "big")))
            if self.geneve_opts:
                out.append(nl.nla_nest(TCA_TUNNEL_KEY_ENC_OPTS, [o.encode(TCA_TUNNEL_KEY_ENC_OPTS_GENEVE)
                                                                 for o in self.geneve_opts]))
            for name, attr in self._BYTES:
                value = getattr(self, name)
                if value is not None:
                    out.append(nl.nla(attr, bytes([value])))
        # iproute2 sends NO_CSUM on unset too (always 0 there).
        out.append(nl.nla(TCA_TUNNEL_KEY_NO_CSUM, bytes([not self.csum])))
        t_action = TCA_TUNNEL_KEY_ACT_RELEASE if self.unset else TCA_TUNNEL_KEY_ACT_SET
        out.append(nl.nla(TCA_TUNNEL_KEY_PARMS, TC_TUNNEL_KEY.pack(0, 0, TC_ACT_PIPE, 0, 0, t_action)))
        return out

    @classmethod
    def decode(cls, options: dict[int, bytes]) -> TunnelKey:
        *_, t_action = TC_TUNNEL_KEY.unpack_from(_pipe(options, TCA_TUNNEL_KEY_PARMS, "tunnel_key"))
        if t_action == TCA_TUNNEL_KEY_ACT_RELEASE:
            return cls(unset=True)
        if t_action != TCA_TUNNEL_KEY_ACT_SET:
            raise FlowerUnsupported(f"tunnel_key: t_action {t_action} is not modelled by hwflow")
        fields: dict[str, object] = {name: int.from_bytes(options[attr][:size], "big")
                                     for name, attr, size in cls._INTS if attr in options}
        fields.update({name: options[attr][0] for name, attr in cls._BYTES if attr in options})
        if TCA_TUNNEL_KEY_ENC_OPTS in options:
            fields["geneve_opts"] = _decode_geneve_opts(options[TCA_TUNNEL_KEY_ENC_OPTS],
                                                        TCA_TUNNEL_KEY_ENC_OPTS_GENEVE, "tunnel_key")
        if TCA_TUNNEL_KEY_NO_CSUM in options:
            fields["csum"] = not options[TCA_TUNNEL_KEY_NO_CSUM][0]
        return cls(**fields)  # type: ignore[arg-type]


@dataclasses.dataclass(frozen=True)
class PeditKey:
    """One 32-bit pedit word: at ``offset`` in header ``htype``, keep ``mask`` bits and set (or add) ``value``.

    mask and value are the word's 4 bytes as they are in the packet
    (big-endian ints here), which is also how they go on the wire.
    """

    htype: str
    offset: int
    mask: int
    value: int
    cmd: str = "set"

    def __post_init__(self) -> None:
        if self.htype not in PEDIT_HTYPES or self.cmd not in PEDIT_CMDS:
            raise ValueError(f"pedit key: header {self.htype!r} / cmd {self.cmd!r} unknown; use one of "
                             f"{tuple(PEDIT_HTYPES)} / {tuple(PEDIT_CMDS)}")
        if not 0 <= self.offset < 1 << 31 or self.offset % 4:
            raise ValueError(f"pedit key {self.htype}+{self.offset}: offset must be a 32-bit aligned word")
        if not 0 <= self.mask <= 0xFFFFFFFF or not 0 <= self.value <= 0xFFFFFFFF:
            raise ValueError(f"pedit key {self.htype}+{self.offset}: mask and value must fit 32 bits")
        if self.value & self.mask:
            raise ValueError(f"pedit key {self.htype}+{self.offset}: value {self.value:#010x} touches bits the "
                             f"mask {self.mask:#010x} keeps")


def pedit_set(htype: str, offset: int, data: bytes, cmd: str = "set") -> tuple[PeditKey, ...]:
    """Pedit words writing ``data`` at byte ``offset`` of a header, split on 32-bit words as iproute2 does."""
    keys = []
    start, end = offset, offset + len(data)
    for word in range(start - start % 4, end, 4):
        value = mask = 0
        for i in range(4):
            pos = word + i
            byte_mask = 0xFF if start <= pos < end else 0
            value = value << 8 | (data[pos - start] if byte_mask else 0)
            mask = mask << 8 | (0xFF ^ byte_mask)
        keys.append(PeditKey(htype, word, mask, value, cmd))
    return tuple(keys)


@dataclasses.dataclass(frozen=True)
class Pedit:
    """Header rewrite ("pedit ex munge ..."): MACs, IPs, TTL; follow with :class:`Csum` for L3/L4 sums."""

    keys: tuple[PeditKey, ...]

    KIND = "pedit"
    TM = TCA_PEDIT_TM

    def __post_init__(self) -> None:
        if not 0 < len(self.keys) <= 128 or not all(isinstance(k, PeditKey) for k in self.keys):
            raise ValueError(f"pedit needs 1..128 PeditKey values, got {self.keys!r}")

    def options(self) -> list[bytes]:
        sel = TC_PEDIT_SEL.pack(0, 0, TC_ACT_PIPE, 0, 0, len(self.keys), 0)
        sel += b"".join(TC_PEDIT_KEY.pack(k.mask.to_bytes(4, "big"), k.value.to_bytes(4, "big"), k.offset, 0, 0, 0)
                        for k in self.keys)
        ex = [nl.nla_nest(TCA_PEDIT_KEY_EX, [nl.nla_u16(TCA_PEDIT_KEY_EX_HTYPE, PEDIT_HTYPES[k.htype]),
                                             nl.nla_u16(TCA_PEDIT_KEY_EX_CMD, PEDIT_CMDS[k.cmd])],
                          flag_nested=True) for k in self.keys]
        return [nl.nla(TCA_PEDIT_PARMS_EX, sel), nl.nla_nest(TCA_PEDIT_KEYS_EX, ex, flag_nested=True)]

    @classmethod
    def decode(cls, options: dict[int, bytes]) -> Pedit:
        sel = _pipe(options, TCA_PEDIT_PARMS_EX, "pedit (extended)")
        nkeys = TC_PEDIT_SEL.unpack_from(sel)[5]
        ex = [nl.attr_map(data) for _, data in nl.parse_attrs(options.get(TCA_PEDIT_KEYS_EX, b""))]
        if len(ex) != nkeys or len(sel) < TC_PEDIT_SEL.size + nkeys * TC_PEDIT_KEY.size:
            raise FlowerDecodeError(f"pedit: {nkeys} keys but {len(ex)} extended keys / {len(sel)} bytes of parms")
        htypes = {v: k for k, v in PEDIT_HTYPES.items()}
        cmds = {v: k for k, v in PEDIT_CMDS.items()}
        keys = []
        for i, key_ex in enumerate(ex):
            start = TC_PEDIT_SEL.size + i * TC_PEDIT_KEY.size
            mask, val, off, at, offmask, shift = TC_PEDIT_KEY.unpack_from(sel, start)
            htype = struct.unpack("=H", key_ex.get(TCA_PEDIT_KEY_EX_HTYPE, b"\0\0")[:2])[0]
            cmd = struct.unpack("=H", key_ex.get(TCA_PEDIT_KEY_EX_CMD, b"\0\0")[:2])[0]
            if at or offmask or shift or htype not in htypes or cmd not in cmds:
                raise FlowerUnsupported(f"pedit key {i}: header {htype} cmd {cmd} at/offmask/shift "
                                        f"{at}/{offmask}/{shift} is not modelled by hwflow")
            keys.append(PeditKey(htypes[htype], off, int.from_bytes(mask, "big"), int.from_bytes(val, "big"),
                                 cmds[cmd]))
        return cls(tuple(keys))


@dataclasses.dataclass(frozen=True)
class Csum:
    """Recompute checksums after a pedit: ``flags`` is an OR of TCA_CSUM_UPDATE_FLAG_*."""

    flags: int

    KIND = "csum"
    TM = TCA_CSUM_TM

    def __post_init__(self) -> None:
        if not self.flags or self.flags & ~CSUM_FLAGS:
            raise ValueError(f"csum: flags {self.flags:#x} must be a non-empty OR of TCA_CSUM_UPDATE_FLAG_*")

    def options(self) -> list[bytes]:
        return [nl.nla(TCA_CSUM_PARMS, TC_CSUM.pack(0, 0, TC_ACT_PIPE, 0, 0, self.flags))]

    @classmethod
    def decode(cls, options: dict[int, bytes]) -> Csum:
        return cls(TC_CSUM.unpack_from(_pipe(options, TCA_CSUM_PARMS, "csum"))[5])


CT_NAT = ("", "nat", "src", "dst")  # none, un-NAT only (established), SNAT, DNAT
_CT_NAT_FLAGS = {"": 0, "nat": TCA_CT_ACT_NAT, "src": TCA_CT_ACT_NAT | TCA_CT_ACT_NAT_SRC,
                 "dst": TCA_CT_ACT_NAT | TCA_CT_ACT_NAT_DST}


@dataclasses.dataclass(frozen=True)
class Ct:
    """Send the packet through conntrack in ``zone``; optionally commit, set the mark, NAT (or clear ct state)."""

    zone: int = 0
    commit: bool = False
    force: bool = False
    clear: bool = False
    mark: int = 0
    mark_mask: int = 0
    nat: str = ""
    nat_ipv4_min: int | None = None
    nat_ipv4_max: int | None = None
    nat_ipv6_min: int | None = None
    nat_ipv6_max: int | None = None
    nat_port_min: int | None = None
    nat_port_max: int | None = None

    KIND = "ct"
    TM = TCA_CT_TM
    _NAT_ATTRS = (("nat_ipv4_min", TCA_CT_NAT_IPV4_MIN, 4), ("nat_ipv4_max", TCA_CT_NAT_IPV4_MAX, 4),
                  ("nat_ipv6_min", TCA_CT_NAT_IPV6_MIN, 16), ("nat_ipv6_max", TCA_CT_NAT_IPV6_MAX, 16),
                  ("nat_port_min", TCA_CT_NAT_PORT_MIN, 2), ("nat_port_max", TCA_CT_NAT_PORT_MAX, 2))

    def __post_init__(self) -> None:
        nat_given = [n for n, _, _ in self._NAT_ATTRS if getattr(self, n) is not None]
        if self.clear and (self.zone or self.commit or self.force or self.mark_mask or self.nat):
            raise ValueError("ct clear takes no zone, commit, force, mark or nat")
        if not 0 <= self.zone <= 0xFFFF or not 0 <= self.mark <= 0xFFFFFFFF or not 0 <= self.mark_mask <= 0xFFFFFFFF:
            raise ValueError(f"ct: zone {self.zone} must fit 16 bits, mark/mask {self.mark:#x}/{self.mark_mask:#x} 32")
        if self.mark & ~self.mark_mask:
            raise ValueError(f"ct: mark {self.mark:#x} has bits outside mark_mask {self.mark_mask:#x}")
        if self.nat not in CT_NAT:
            raise ValueError(f"ct: nat {self.nat!r} unknown; use one of {CT_NAT}")
        if nat_given and self.nat not in ("src", "dst"):
            raise ValueError(f"ct: {', '.join(nat_given)} given without nat='src' or 'dst'")
        for lo, hi in (("nat_ipv4_min", "nat_ipv4_max"), ("nat_ipv6_min", "nat_ipv6_max"),
                       ("nat_port_min", "nat_port_max")):
            if (getattr(self, lo) is None) != (getattr(self, hi) is None):
                raise ValueError(f"ct: give both {lo} and {hi} (equal for a single value)")
        if self.nat_ipv4_min is not None and self.nat_ipv6_min is not None:
            raise ValueError("ct: NAT to an IPv4 or an IPv6 range, not both")
        for name, _, size in self._NAT_ATTRS:
            value = getattr(self, name)
            if value is not None and not 0 <= value < 1 << (8 * size):
                raise ValueError(f"ct: {name}={value:#x} does not fit {size * 8} bits")

    def flags(self) -> int:
        return ((TCA_CT_ACT_COMMIT if self.commit else 0) | (TCA_CT_ACT_FORCE if self.force else 0)
                | (TCA_CT_ACT_CLEAR if self.clear else 0) | _CT_NAT_FLAGS[self.nat])

    def options(self) -> list[bytes]:
        out = [] if self.clear else [nl.nla_u16(TCA_CT_ZONE, self.zone)]
        if self.mark_mask:
            out += [nl.nla_u32(TCA_CT_MARK, self.mark), nl.nla_u32(TCA_CT_MARK_MASK, self.mark_mask)]
        for name, attr, size in self._NAT_ATTRS:
            value = getattr(self, name)
            if value is not None:
                out.append(nl.nla(attr, value.to_bytes(size, "big")))
        out += [nl.nla_u16(TCA_CT_ACTION, self.flags()), nl.nla(TCA_CT_PARMS, TC_CT.pack(0, 0, TC_ACT_PIPE, 0, 0))]
        return out

    @classmethod
    def decode(cls, options: dict[int, bytes]) -> Ct:
        _pipe(options, TCA_CT_PARMS, "ct")
        flags = struct.unpack("=H", options.get(TCA_CT_ACTION, b"\0\0")[:2])[0]
        nat = {v: k for k, v in _CT_NAT_FLAGS.items()}.get(flags & (TCA_CT_ACT_NAT | TCA_CT_ACT_NAT_SRC
                                                                     | TCA_CT_ACT_NAT_DST))
        if nat is None or flags & ~(TCA_CT_ACT_COMMIT | TCA_CT_ACT_FORCE | TCA_CT_ACT_CLEAR | _CT_NAT_FLAGS["src"]
                                    | _CT_NAT_FLAGS["dst"]):
            raise FlowerUnsupported(f"ct: action flags {flags:#x} are not modelled by hwflow")
        fields: dict[str, object] = {name: int.from_bytes(options[attr][:size], "big")
                                     for name, attr, size in cls._NAT_ATTRS if attr in options}
        mark_mask = nl.get_u32(options[TCA_CT_MARK_MASK]) if TCA_CT_MARK_MASK in options else 0
        clear = bool(flags & TCA_CT_ACT_CLEAR)
        return cls(zone=0 if clear else struct.unpack("=H", options.get(TCA_CT_ZONE, b"\0\0")[:2])[0],
                   commit=bool(flags & TCA_CT_ACT_COMMIT), force=bool(flags & TCA_CT_ACT_FORCE), clear=clear,
                   mark=nl.get_u32(options[TCA_CT_MARK]) & mark_mask if mark_mask else 0, mark_mask=mark_mask,
                   nat=nat, **fields)  # type: ignore[arg-type]


FlowerAction = Mirred | Gact | Vlan | TunnelKey | Pedit | Csum | Ct
ACTION_KINDS: dict[str, Callable[[dict[int, bytes]], FlowerAction]] = {
    cls.KIND: cls.decode for cls in (Mirred, Gact, Vlan, TunnelKey, Pedit, Csum, Ct)}
_ACTION_TYPES = (Mirred, Gact, Vlan, TunnelKey, Pedit, Csum, Ct)


def _required(options: dict[int, bytes], attr: int, kind: str) -> bytes:
    if attr not in options:
        raise FlowerDecodeError(f"tc action {kind} has no parms (attribute {attr})")
    return options[attr]


def _pipe(options: dict[int, bytes], attr: int, kind: str) -> bytes:
    """The parms of an action hwflow always sends as "pipe"; any other control verdict is not modelled."""
    parms = _required(options, attr, kind)
    control = TC_GEN.unpack_from(parms)[2]
    if control != TC_ACT_PIPE:
        raise FlowerUnsupported(f"tc action {kind}: control verdict {control:#x} is not modelled by hwflow "
                                "(only pipe)")
    return parms


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
        if not all(isinstance(a, _ACTION_TYPES) for a in self.actions):
            raise ValueError(f"{where}: actions must be one of {[c.__name__ for c in _ACTION_TYPES]}, "
                             f"got {self.actions!r}")
        self._check_keys(where)

    def ethertype_at(self, layer: str) -> int | None:
        """The ethertype a key at ``layer`` sees: the protocol, the outer tag's, or the one after all tags."""
        outer, inner = self.protocol, self.keys.vlan_eth_type
        if layer == "outer":
            return outer
        if layer == "inner":
            return inner if outer in VLAN_PROTOCOLS else None
        if outer not in VLAN_PROTOCOLS:
            return outer
        return self.keys.cvlan_eth_type if inner in VLAN_PROTOCOLS else inner

    def _check_keys(self, where: str) -> None:
        for spec, _, _ in self.keys.items():
            if spec.needs and self.ethertype_at(spec.layer) not in spec.needs:
                what = {"outer": "protocol", "inner": "vlan_eth_type", "l3": "protocol"}
                have = self.ethertype_at(spec.layer)
                raise ValueError(f"{where}: key {spec.field} needs {what[spec.layer]} "
                                 f"{' or '.join(f'{t:#06x}' for t in spec.needs)}"
                                 f"{' (after the VLAN tags)' if spec.layer == 'l3' else ''}, not "
                                 f"{'none' if have is None else f'{have:#06x}'}")
            if spec.ip_proto and self.keys.ip_proto not in spec.ip_proto:
                raise ValueError(f"{where}: key {spec.field} needs ip_proto {spec.ip_proto[0]}")

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
    options = action.options()
    if stats is not None:
        options.append(nl.nla(action.TM, TCF_T.pack(0, stats.lastused_ms // MS_PER_TICK, 0, 0)))
    out = [nl.nla_str(TCA_ACT_KIND, action.KIND)]
    if stats is not None:
        out.append(nl.nla_nest(TCA_ACT_STATS, [nl.nla(TCA_STATS_BASIC,
                                                      GNET_STATS_BASIC.pack(stats.bytes, stats.packets))]))
    out.append(nl.nla_nest(TCA_ACT_OPTIONS, options, flag_nested=True))
    return out


_AFTER_ENC_OPTS = frozenset(("ct_state", "ct_zone", "ct_mark"))  # Geneve options go between enc_* and ct_*


def _encode_enc_opts(keys: FlowerKeys) -> list[bytes]:
    return [nl.nla_nest(attr, [o.encode(TCA_FLOWER_KEY_ENC_OPTS_GENEVE) for o in opts])
            for attr, opts in ((TCA_FLOWER_KEY_ENC_OPTS, keys.enc_opts or ()),
                               (TCA_FLOWER_KEY_ENC_OPTS_MASK, keys.enc_opts_mask or ()))]


def encode_options(rule: FlowerRule, stats: RuleStats | None = None, status_flags: int = 0) -> bytes:
    """TCA_OPTIONS in iproute2's order: keys, actions, flags, then eth_type."""
    attrs = []
    opts_pending = rule.keys.enc_opts is not None
    for spec, value, mask in rule.keys.items():
        if opts_pending and spec.field in _AFTER_ENC_OPTS:
            attrs += _encode_enc_opts(rule.keys)
            opts_pending = False
        attrs.append(nl.nla(spec.attr, spec.pack(value)))
        if spec.mask_field:
            attrs.append(nl.nla(spec.mask_attr, spec.pack(mask)))
    if opts_pending:
        attrs += _encode_enc_opts(rule.keys)
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
    if kind not in ACTION_KINDS:
        raise FlowerUnsupported(f"tc action {kind or '<no kind>'!r} is not modelled by hwflow")
    options = nl.attr_map(attrs.get(TCA_ACT_OPTIONS, b""))
    try:
        action = ACTION_KINDS[kind](options)
    except (struct.error, IndexError) as exc:
        raise FlowerDecodeError(f"tc action {kind}: truncated attributes ({exc})") from exc
    if TCA_ACT_STATS not in attrs:
        return action, None
    stats = nl.attr_map(attrs[TCA_ACT_STATS])
    nbytes, packets = GNET_STATS_BASIC.unpack(stats[TCA_STATS_BASIC].ljust(GNET_STATS_BASIC.size, b"\0")) \
        if TCA_STATS_BASIC in stats else (0, 0)
    if TCA_STATS_PKT64 in stats:
        packets = struct.unpack_from("=Q", stats[TCA_STATS_PKT64])[0]
    tm = options.get(action.TM)
    lastuse = TCF_T.unpack_from(tm)[1] if tm is not None and len(tm) >= TCF_T.size else 0
    return action, RuleStats(packets, nbytes, lastuse * MS_PER_TICK)


def _decode_enc_opts(values: dict[str, object], attr: int, data: bytes) -> None:
    field = "enc_opts" if attr == TCA_FLOWER_KEY_ENC_OPTS else "enc_opts_mask"
    values[field] = _decode_geneve_opts(data, TCA_FLOWER_KEY_ENC_OPTS_GENEVE, f"flower key {field}")


def _decode_options(payload: bytes) -> tuple[dict[str, object], tuple[FlowerAction, ...], int, RuleStats | None]:
    values: dict[str, object] = {}
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
        elif attr in (TCA_FLOWER_KEY_ENC_OPTS, TCA_FLOWER_KEY_ENC_OPTS_MASK):
            _decode_enc_opts(values, attr, data)
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
    """One RTM_NEWTFILTER message as a rule and its stats.

    Raises FlowerUnsupported for what hwflow does not model and FlowerDecodeError for anything malformed (an
    attribute cut short, a value no rule can hold): nothing else, whatever the bytes.
    """
    try:
        return _decode_filter_message(msg)
    except FlowerDecodeError:
        raise
    except (struct.error, IndexError, KeyError, ValueError) as exc:
        raise FlowerDecodeError(f"malformed filter message: {exc}") from exc


def _decode_filter_message(msg: nl.Message) -> tuple[FlowerRule, RuleStats | None]:
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
        rule = FlowerRule(header.ifindex, header.prio, header.handle, header.protocol,
                          FlowerKeys(**values),  # type: ignore[arg-type]
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
