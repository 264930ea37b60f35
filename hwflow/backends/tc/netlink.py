"""Minimal netlink framing: message headers, attributes (TLVs), errors.

Only what tc-flower needs, in plain ``struct`` so that the same bytes can be
sent to the kernel or to the simulated NIC. Numbers are transcribed from the
uapi headers named next to each block (Linux 6.1, as shipped in Debian 12).
"""

from __future__ import annotations

import dataclasses
import struct
from collections.abc import Iterable

# /usr/include/linux/netlink.h
NETLINK_ROUTE = 0
NLM_F_REQUEST = 0x01
NLM_F_MULTI = 0x02
NLM_F_ACK = 0x04
NLM_F_ECHO = 0x08
NLM_F_ROOT = 0x100
NLM_F_MATCH = 0x200
NLM_F_DUMP = NLM_F_ROOT | NLM_F_MATCH
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in an ack: the request's payload is not echoed
NLM_F_ACK_TLVS = 0x200  # in an ack: extended-ack attributes follow
NLMSG_NOOP = 0x1
NLMSG_ERROR = 0x2
NLMSG_DONE = 0x3
NLMSGERR_ATTR_MSG = 1
NETLINK_CAP_ACK = 10
NETLINK_EXT_ACK = 11
NLA_F_NESTED = 1 << 15
NLA_F_NET_BYTEORDER = 1 << 14
NLA_TYPE_MASK = ~(NLA_F_NESTED | NLA_F_NET_BYTEORDER) & 0xFFFF
# /usr/include/linux/socket.h
SOL_NETLINK = 270

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
NLAHDR = struct.Struct("=HH")  # len, type
NLMSGERR = struct.Struct("=i")  # error, then the request's nlmsghdr


def align4(n: int) -> int:
    return (n + 3) & ~3


def pad4(data: bytes) -> bytes:
    return data + b"\0" * (align4(len(data)) - len(data))


@dataclasses.dataclass(frozen=True)
class Message:
    type: int
    flags: int
    seq: int
    pid: int
    payload: bytes

    def encode(self) -> bytes:
        return encode_message(self.type, self.flags, self.seq, self.payload, self.pid)


class NetlinkDecodeError(ValueError):
    """Bytes that do not frame as netlink: a peer bug, never retried."""


def encode_message(msg_type: int, flags: int, seq: int, payload: bytes, pid: int = 0) -> bytes:
    return NLMSGHDR.pack(NLMSGHDR.size + len(payload), msg_type, flags, seq, pid) + pad4(payload)


def split_messages(data: bytes) -> list[Message]:
    """Split a buffer (one datagram) into the netlink messages it carries."""
    out = []
    offset = 0
    while offset + NLMSGHDR.size <= len(data):
        length, msg_type, flags, seq, pid = NLMSGHDR.unpack_from(data, offset)
        if length < NLMSGHDR.size or offset + length > len(data):
            raise NetlinkDecodeError(f"netlink message at offset {offset} claims {length} bytes "
                                     f"of {len(data)}")
        out.append(Message(msg_type, flags, seq, pid, data[offset + NLMSGHDR.size:offset + length]))
        offset += align4(length)
    if offset < len(data) and data[offset:].strip(b"\0"):
        raise NetlinkDecodeError(f"{len(data) - offset} trailing bytes after the last netlink message")
    return out


def nla(attr_type: int, payload: bytes) -> bytes:
    return NLAHDR.pack(NLAHDR.size + len(payload), attr_type) + pad4(payload)


def nla_nest(attr_type: int, attrs: Iterable[bytes], flag_nested: bool = False) -> bytes:
    return nla(attr_type | (NLA_F_NESTED if flag_nested else 0), b"".join(attrs))


def nla_u16(attr_type: int, value: int) -> bytes:
    return nla(attr_type, struct.pack("=H", value))


def nla_u32(attr_type: int, value: int) -> bytes:
    return nla(attr_type, struct.pack("=I", value))


def nla_str(attr_type: int, value: str) -> bytes:
    return nla(attr_type, value.encode() + b"\0")


def parse_attrs(data: bytes) -> list[tuple[int, bytes]]:
    """(type without NLA_F_* flags, payload) for each attribute, in order."""
    out = []
    offset = 0
    while offset + NLAHDR.size <= len(data):
        length, attr_type = NLAHDR.unpack_from(data, offset)
        if length < NLAHDR.size or offset + length > len(data):
            raise NetlinkDecodeError(f"attribute {attr_type & NLA_TYPE_MASK} at offset {offset} "
                                     f"claims {length} bytes of {len(data)}")
        out.append((attr_type & NLA_TYPE_MASK, data[offset + NLAHDR.size:offset + length]))
        offset += align4(length)
    return out


def attr_map(data: bytes) -> dict[int, bytes]:
    return dict(parse_attrs(data))


def get_str(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode(errors="replace")


def get_u32(payload: bytes) -> int:
    return struct.unpack_from("=I", payload)[0]


def encode_error(request: Message, error: int, extack: str | None = None) -> bytes:
    """An ack (``error`` 0) or error (``-errno``), capped, as the kernel sends with NETLINK_CAP_ACK."""
    header = NLMSGHDR.pack(NLMSGHDR.size + len(request.payload), request.type, request.flags,
                           request.seq, request.pid)
    flags = NLM_F_CAPPED
    tlvs = b""
    if extack:
        flags |= NLM_F_ACK_TLVS
        tlvs = nla_str(NLMSGERR_ATTR_MSG, extack)
    return encode_message(NLMSG_ERROR, flags, request.seq, NLMSGERR.pack(error) + header + tlvs, request.pid)


def decode_error(msg: Message) -> tuple[int, str | None]:
    """(error, extack text) of an NLMSG_ERROR; error is 0 or -errno."""
    if len(msg.payload) < NLMSGERR.size + NLMSGHDR.size:
        raise NetlinkDecodeError(f"NLMSG_ERROR too short ({len(msg.payload)} bytes)")
    (error,) = NLMSGERR.unpack_from(msg.payload)
    if not msg.flags & NLM_F_ACK_TLVS:
        return error, None
    tlv_start = NLMSGERR.size + NLMSGHDR.size
    if not msg.flags & NLM_F_CAPPED:
        tlv_start = NLMSGERR.size + align4(NLMSGHDR.unpack_from(msg.payload, NLMSGERR.size)[0])
    attrs = attr_map(msg.payload[tlv_start:])
    text = attrs.get(NLMSGERR_ATTR_MSG)
    return error, get_str(text) if text is not None else None


def encode_done(seq: int, pid: int = 0) -> bytes:
    return encode_message(NLMSG_DONE, NLM_F_MULTI, seq, struct.pack("=i", 0), pid)
