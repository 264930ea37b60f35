"""VXLAN and Geneve over IPv4 as the simulated NIC's physical port sends and receives them; its neighbour table.

Pure functions on bytes (no I/O), so the codec is tested on its own: build
an outer Ethernet/IPv4/UDP/VXLAN-or-Geneve frame around an inner Ethernet
frame (:func:`encapsulate`), take one apart (:func:`parse`, which returns
None for anything that is not a well-formed tunnel packet to one of the
given UDP ports, and never raises), and the IPv4 -> MAC table a switchdev NIC
needs before it may encapsulate (mlx5 keeps an encap rule waiting on a valid
neighbour: :class:`Neighbours`, learnt from ARP on the wire).
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Mapping

from hwflow.util.checksum import internet_checksum

VXLAN, GENEVE = "vxlan", "geneve"
DST_PORTS = {VXLAN: 4789, GENEVE: 6081}  # IANA; the ports of the sim's vxlan_sys_4789 / genev_sys_6081
ETH_P_IP, ETH_P_ARP, ETH_P_TEB = 0x0800, 0x0806, 0x6558  # TEB: Transparent Ethernet Bridging (Geneve)
IPPROTO_UDP = 17
IP_DF = 0x4000
DEFAULT_TTL = 64
SRC_PORT_MIN, SRC_PORT_MAX = 32768, 61000  # udp_flow_src_port over the default ip_local_port_range: [min, max)
VXLAN_FLAG_I = 0x08  # RFC 7348: the VNI is valid
ETH_HLEN, IPV4_HLEN, UDP_HLEN, TUNNEL_HLEN = 14, 20, 8, 8
OUTER_HLEN = ETH_HLEN + IPV4_HLEN + UDP_HLEN + TUNNEL_HLEN  # 50 bytes of outer headers (no Geneve options)
BROADCAST = b"\xff" * 6
MIN_FRAME = 60  # an Ethernet frame without its FCS, padded as a NIC pads it
ARP_REQUEST, ARP_REPLY = 1, 2

_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBHHHBBH4s4s")
_UDP = struct.Struct("!HHHH")
_ARP = struct.Struct("!HHBBH6s4s6s4s")


@dataclasses.dataclass(frozen=True)
class Decapsulated:
    """A tunnel packet taken apart: the inner frame and what flower's enc_* keys see of the outer headers."""

    kind: str  # "vxlan" | "geneve"
    vni: int
    ipv4_src: int
    ipv4_dst: int
    src_port: int
    dst_port: int
    tos: int
    ttl: int
    inner: bytes
    options: bytes = b""  # Geneve option TLVs as on the wire (class, type, length in words, data)

    def meta(self) -> dict[str, object]:
        """The packet's tunnel keys under the names of hwflow.backends.tc.flower's KeySpec fields."""
        out: dict[str, object] = {"enc_key_id": self.vni, "enc_ipv4_src": self.ipv4_src,
                                  "enc_ipv4_dst": self.ipv4_dst, "enc_dst_port": self.dst_port}
        if self.kind == GENEVE:
            out["enc_opts"] = self.options
        return out


def udp_src_port(inner: bytes) -> int:
    """A source port in [32768, 61000) from a hash of the inner frame's flow, as Linux's udp_flow_src_port.

    The flow is the inner IPv4/IPv6 addresses, protocol and L4 ports when the
    frame has them, else its MAC addresses and ethertype: one flow keeps one
    port (ECMP in the underlay keeps its packets in order), flows spread.
    """
    key = _flow_key(inner)
    digest = int.from_bytes(hashlib.blake2b(key, digest_size=4).digest(), "big")
    digest ^= (digest << 16) & 0xFFFFFFFF  # the kernel's mixing; only the upper 16 bits matter below
    return (digest * (SRC_PORT_MAX - SRC_PORT_MIN) >> 32) + SRC_PORT_MIN


def _flow_key(frame: bytes) -> bytes:
    offset = ETH_HLEN
    if len(frame) < offset:
        return frame
    eth_type = struct.unpack_from("!H", frame, 12)[0]
    while eth_type in (0x8100, 0x88A8) and len(frame) >= offset + 4:
        eth_type = struct.unpack_from("!H", frame, offset + 2)[0]
        offset += 4
    if eth_type == ETH_P_IP and len(frame) >= offset + IPV4_HLEN:
        ihl, proto = (frame[offset] & 0xF) * 4, frame[offset + 9]
        addrs = frame[offset + 12:offset + 20]
        fragment = struct.unpack_from("!H", frame, offset + 6)[0] & 0x1FFF
        ports = frame[offset + ihl:offset + ihl + 4] if proto in (6, 17, 132) and not fragment else b""
        return b"4" + addrs + bytes([proto]) + ports
    if eth_type == 0x86DD and len(frame) >= offset + 40:
        proto = frame[offset + 6]
        ports = frame[offset + 40:offset + 44] if proto in (6, 17, 132) else b""
        return b"6" + frame[offset + 8:offset + 40] + bytes([proto]) + ports
    return b"e" + frame[:12] + eth_type.to_bytes(2, "big")


def geneve_options(opts: tuple[tuple[int, int, bytes], ...]) -> bytes:
    """(class, type, data) options as Geneve TLVs (RFC 8926 section 3.5); data a multiple of 4 bytes, <= 124."""
    return b"".join(struct.pack("!HBB", cls, typ, len(data) // 4 & 0x1F) + data for cls, typ, data in opts)


def ipv4_header(src: int, dst: int, payload_len: int, proto: int = IPPROTO_UDP, tos: int = 0,
                ttl: int = DEFAULT_TTL) -> bytes:
    """An option-less IPv4 header with DF set, id 0 and its checksum."""
    head = _IPV4.pack(0x45, tos, IPV4_HLEN + payload_len, 0, IP_DF, ttl, proto, 0, src.to_bytes(4, "big"),
                      dst.to_bytes(4, "big"))
    return head[:10] + internet_checksum(head).to_bytes(2, "big") + head[12:]


def udp_checksum(src: int, dst: int, segment: bytes) -> int:
    """The UDP checksum of ``segment`` (its checksum field zero) over the IPv4 pseudo-header; 0 is sent as 0xffff."""
    pseudo = struct.pack("!4s4sBBH", src.to_bytes(4, "big"), dst.to_bytes(4, "big"), 0, IPPROTO_UDP, len(segment))
    return internet_checksum(pseudo + segment) or 0xFFFF


def encapsulate(inner: bytes, *, kind: str, vni: int, ipv4_src: int, ipv4_dst: int, eth_src: bytes,
                eth_dst: bytes, dst_port: int | None = None, src_port: int | None = None, tos: int = 0,
                ttl: int = DEFAULT_TTL, csum: bool = False, options: bytes = b"") -> bytes:
    """Ethernet/IPv4/UDP/(VXLAN | Geneve) around ``inner``, an Ethernet frame.

    The UDP source port defaults to :func:`udp_src_port` of the inner frame,
    the destination port to the tunnel type's; ``csum`` asks for the UDP
    checksum (else 0, as a VXLAN/Geneve device without ``udpcsum`` sends).
    ``options`` (Geneve only) are option TLVs as :func:`geneve_options` makes.
    """
    if kind == VXLAN:
        if options:
            raise ValueError("VXLAN has no options; Geneve options need a geneve tunnel")
        header = struct.pack("!B3xI", VXLAN_FLAG_I, vni << 8)
    elif kind == GENEVE:
        if len(options) % 4 or len(options) > 252:
            raise ValueError(f"Geneve options are 4-byte words, at most 252 bytes: got {len(options)}")
        header = struct.pack("!BBHI", len(options) // 4, 0, ETH_P_TEB, vni << 8) + options
    else:
        raise ValueError(f"tunnel type {kind!r}: the simulated NIC encapsulates {VXLAN} and {GENEVE}")
    if not 0 <= vni < 1 << 24:
        raise ValueError(f"VNI {vni} does not fit 24 bits")
    src_port = udp_src_port(inner) if src_port is None else src_port
    dst_port = DST_PORTS[kind] if dst_port is None else dst_port
    length = UDP_HLEN + len(header) + len(inner)
    segment = _UDP.pack(src_port, dst_port, length, 0) + header + inner
    if csum:
        segment = segment[:6] + udp_checksum(ipv4_src, ipv4_dst, segment).to_bytes(2, "big") + segment[8:]
    return (_ETH.pack(eth_dst, eth_src, ETH_P_IP) + ipv4_header(ipv4_src, ipv4_dst, length, tos=tos, ttl=ttl)
            + segment)


def parse(frame: bytes, ports: Mapping[int, str] | None = None) -> Decapsulated | None:
    """The tunnel packet in an untagged Ethernet frame, or None when it is not one to ``ports`` (UDP port -> type).

    Well-formed means: IPv4 with a valid header checksum and no fragmentation,
    UDP to one of the ports, a VXLAN header with the I flag, or a Geneve
    version 0 header carrying Ethernet (0x6558) whose options fit the packet,
    and an inner frame of at least an Ethernet header. The UDP checksum is not
    checked (a veth peer may hand frames over with it still to be completed).
    """
    ports = {port: kind for kind, port in DST_PORTS.items()} if ports is None else ports
    if len(frame) < OUTER_HLEN:
        return None
    _, _, eth_type = _ETH.unpack_from(frame)
    if eth_type != ETH_P_IP:
        return None
    ver_ihl, tos, total, _, frag, ttl, proto, _, src, dst = _IPV4.unpack_from(frame, ETH_HLEN)
    ihl = (ver_ihl & 0xF) * 4
    l4 = ETH_HLEN + ihl
    if (ver_ihl >> 4 != 4 or ihl < IPV4_HLEN or proto != IPPROTO_UDP or frag & 0x3FFF
            or total < ihl + UDP_HLEN or ETH_HLEN + total > len(frame)
            or internet_checksum(frame[ETH_HLEN:l4]) != 0):
        return None
    src_port, dst_port, udp_len, _ = _UDP.unpack_from(frame, l4)
    kind = ports.get(dst_port)
    end = l4 + udp_len
    if kind is None or udp_len < UDP_HLEN + TUNNEL_HLEN or end > ETH_HLEN + total:
        return None
    body = l4 + UDP_HLEN
    options = b""
    if kind == VXLAN:
        flags, vni = struct.unpack_from("!B3xI", frame, body)
        if not flags & VXLAN_FLAG_I:
            return None
        inner_at = body + TUNNEL_HLEN
    elif kind == GENEVE:
        ver_len, _, protocol, vni = struct.unpack_from("!BBHI", frame, body)
        inner_at = body + TUNNEL_HLEN + (ver_len & 0x3F) * 4
        if ver_len >> 6 != 0 or protocol != ETH_P_TEB or inner_at > end or not _options_fit(frame[body + 8:inner_at]):
            return None
        options = frame[body + TUNNEL_HLEN:inner_at]
    else:
        return None
    inner = frame[inner_at:end]
    if len(inner) < ETH_HLEN:
        return None
    return Decapsulated(kind, vni >> 8, int.from_bytes(src, "big"), int.from_bytes(dst, "big"), src_port, dst_port,
                        tos, ttl, inner, options)


def _options_fit(options: bytes) -> bool:
    """Each Geneve option's header and declared data lie inside the options area."""
    at = 0
    while at < len(options):
        if at + 4 > len(options):
            return False
        at += 4 + (options[at + 3] & 0x1F) * 4
    return at == len(options)


def rewrap(outer: bytes, decap: Decapsulated, inner: bytes) -> bytes:
    """``outer`` (:func:`parse` took it apart into ``decap``) carrying ``inner`` instead; lengths, checksums fixed.

    For a frame a decap rule rewrote and then passed to software: the uplink's
    software path receives tunnel packets whole, and must see the rewrite.
    """
    ihl = (outer[ETH_HLEN] & 0xF) * 4
    l4 = ETH_HLEN + ihl
    inner_at = l4 + struct.unpack_from("!H", outer, l4 + 4)[0] - len(decap.inner)
    head = bytearray(outer[:inner_at])
    udp_len = len(head) - l4 + len(inner)
    struct.pack_into("!H", head, ETH_HLEN + 2, ihl + udp_len)
    head[ETH_HLEN + 10:ETH_HLEN + 12] = b"\0\0"
    head[ETH_HLEN + 10:ETH_HLEN + 12] = internet_checksum(bytes(head[ETH_HLEN:l4])).to_bytes(2, "big")
    struct.pack_into("!H", head, l4 + 4, udp_len)
    had_csum = struct.unpack_from("!H", head, l4 + 6)[0] != 0
    struct.pack_into("!H", head, l4 + 6, 0)
    if had_csum:
        struct.pack_into("!H", head, l4 + 6, udp_checksum(decap.ipv4_src, decap.ipv4_dst, bytes(head[l4:]) + inner))
    return bytes(head) + inner


# --- neighbours ----------------------------------------------------------------


def arp_sender(frame: bytes) -> tuple[int, bytes] | None:
    """(sender IPv4, sender MAC) of an untagged Ethernet/IPv4 ARP frame; None for anything else or an ARP probe."""
    if len(frame) < ETH_HLEN + _ARP.size or struct.unpack_from("!H", frame, 12)[0] != ETH_P_ARP:
        return None
    htype, ptype, hlen, plen, _, sha, spa, _, _ = _ARP.unpack_from(frame, ETH_HLEN)
    if (htype, ptype, hlen, plen) != (1, ETH_P_IP, 6, 4):
        return None
    ip = int.from_bytes(spa, "big")
    if not ip or sha[0] & 1 or sha == bytes(6):  # a probe (sender 0.0.0.0), or a multicast / null sender MAC
        return None
    return ip, sha


def arp_request(eth_src: bytes, ipv4_src: int, ipv4_dst: int) -> bytes:
    """A broadcast "who has ipv4_dst, tell ipv4_src" from ``eth_src``, padded to the minimum frame."""
    frame = _ETH.pack(BROADCAST, eth_src, ETH_P_ARP) + _ARP.pack(
        1, ETH_P_IP, 6, 4, ARP_REQUEST, eth_src, ipv4_src.to_bytes(4, "big"), bytes(6), ipv4_dst.to_bytes(4, "big"))
    return frame.ljust(MIN_FRAME, b"\0")


class Neighbours:
    """IPv4 -> MAC from the sender fields of the ARP frames crossing the wire; ARP requests at most once a second.

    Entries never expire (the simulated underlay does not renumber); a later
    ARP from the same address replaces its MAC.
    """

    REQUEST_INTERVAL = 1.0

    def __init__(self) -> None:
        self._macs: dict[int, bytes] = {}
        self._asked: dict[int, float] = {}

    def learn(self, frame: bytes) -> bool:
        """Take the sender of an ARP frame; True when the frame was one."""
        sender = arp_sender(frame)
        if sender is None:
            return False
        self._macs[sender[0]] = sender[1]
        self._asked.pop(sender[0], None)
        return True

    def lookup(self, ipv4: int) -> bytes | None:
        return self._macs.get(ipv4)

    def should_ask(self, ipv4: int, now: float) -> bool:
        """True (and remembered) unless ``ipv4`` was asked for less than a second ago."""
        last = self._asked.get(ipv4)
        if last is not None and now - last < self.REQUEST_INTERVAL:
            return False
        self._asked[ipv4] = now
        return True

    def __len__(self) -> int:
        return len(self._macs)
