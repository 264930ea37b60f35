"""hwflow's own OpenFlow 1.3 connection to a bridge.

We dial the bridge's management socket (vswitchd always listens there)
instead of running os-ken's controller framework: one socket, one reader
thread, replies routed by xid. os-ken is used only for message classes.
Batches go out in one write followed by a barrier, which is what makes flow
programming fast (see notes/platform-facts.md) and tells us exactly which
message of the batch OVS refused.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import socket
import struct
import threading
from collections.abc import Sequence
from typing import Any

from os_ken.ofproto import ofproto_common, ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from hwflow.backends.ovs.translate import Of13Datapath

LOG = logging.getLogger(__name__)

HEADER = struct.Struct("!BBHI")  # version, type, length, xid
HELLO_ELEM = struct.Struct("!HH")  # type, length
RECV_SIZE = 1 << 16


class OpenFlowError(RuntimeError):
    """Base of the errors this connection raises."""


class OpenFlowConnectionError(OpenFlowError):
    """The switch cannot be reached, or the connection dropped while we waited."""


class OpenFlowVersionError(OpenFlowError):
    """The bridge does not allow OpenFlow 1.3."""


class OpenFlowTimeout(OpenFlowError):
    """The switch did not answer in time."""


@dataclasses.dataclass(frozen=True)
class Rejected:
    """A message of a batch that the switch answered with OFPT_ERROR."""

    msg: Any
    type: int
    code: int
    data: bytes

    def __str__(self) -> str:
        return (f"{type(self.msg).__name__} xid={self.msg.xid} refused: "
                f"{_error_name('OFPET_', self.type)}/code {self.code}")


def _error_name(prefix: str, value: int) -> str:
    names = [n for n in dir(ofp) if n.startswith(prefix) and getattr(ofp, n) == value]
    return names[0] if names else f"{prefix}{value}"


def hello_versions(buf: bytes) -> set[int]:
    """The versions a peer's HELLO offers: its bitmap if it sent one, else every version up to its own."""
    version, _, length, _ = HEADER.unpack_from(buf)
    offset = HEADER.size
    while offset + HELLO_ELEM.size <= length:
        elem_type, elem_len = HELLO_ELEM.unpack_from(buf, offset)
        if elem_len < HELLO_ELEM.size:
            break
        if elem_type == ofp.OFPHET_VERSIONBITMAP:
            words = buf[offset + HELLO_ELEM.size:offset + elem_len]
            bitmap = 0
            for i in range(len(words) // 4):
                bitmap |= int.from_bytes(words[4 * i:4 * i + 4], "big") << (32 * i)
            return {v for v in range(bitmap.bit_length()) if bitmap >> v & 1}
        offset += (elem_len + 7) // 8 * 8
    return set(range(1, version + 1))


def parse_endpoint(endpoint: str) -> tuple[int, Any]:
    kind, _, rest = endpoint.partition(":")
    if kind == "unix" and rest:
        return socket.AF_UNIX, rest
    if kind == "tcp" and rest.count(":") >= 1:
        host, _, port = rest.rpartition(":")
        return socket.AF_INET, (host, int(port))
    raise OpenFlowError(f"bad OpenFlow endpoint {endpoint!r}: use unix:PATH or tcp:HOST:PORT")


class _Waiter:
    """Collects the replies to one request (or one batch) until its final message arrives."""

    def __init__(self, final_xid: int) -> None:
        self.final_xid = final_xid
        self.replies: list[Any] = []
        self.done = threading.Event()
        self.failure: OpenFlowError | None = None

    def deliver(self, msg: Any) -> None:
        self.replies.append(msg)
        if msg.xid != self.final_xid:
            return
        more = isinstance(msg, parser.OFPMultipartReply) and msg.flags & ofp.OFPMPF_REPLY_MORE
        if not more:
            self.done.set()

    def fail(self, failure: OpenFlowError) -> None:
        """No effect once complete: a switch may answer and hang up right after."""
        if self.done.is_set():
            return
        self.failure = failure
        self.done.set()


class OpenFlowConnection:
    """An OpenFlow 1.3 session to one switch; reconnects on the next call after a failure."""

    def __init__(self, endpoint: str, timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self.datapath = Of13Datapath()
        self._family, self._address = parse_endpoint(endpoint)
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        self._conn_lock = threading.Lock()
        self._send_lock = threading.Lock()
        self._waiters_lock = threading.Lock()
        self._waiters: dict[int, _Waiter] = {}
        self._xids = itertools.count(1)
        self._closed = False
        self._ever_connected = False

    # --- connection life cycle ---------------------------------------------------

    def connect(self) -> None:
        with self._conn_lock:
            if self._sock is None:
                self._open()

    def _open(self) -> None:
        sock = socket.socket(self._family, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._address)
            hello = parser.OFPHello(self.datapath)  # a 1.3 header offers "up to 1.3"; os-ken sends no bitmap
            hello.serialize()
            sock.sendall(hello.buf)
            peer = _read_message(sock)
        except OSError as exc:
            sock.close()
            raise OpenFlowConnectionError(f"cannot connect to OpenFlow endpoint {self.endpoint}: {exc}; "
                                          "is ovs-vswitchd running and the bridge created?") from exc
        offered = hello_versions(peer) if HEADER.unpack_from(peer)[1] == ofp.OFPT_HELLO else set()
        if ofp.OFP_VERSION not in offered:
            sock.close()
            raise OpenFlowVersionError(
                f"{self.endpoint} does not speak OpenFlow 1.3 (it offers versions {sorted(offered)}); "
                "set the bridge's protocols to include OpenFlow13 "
                "(ovs-vsctl set bridge BR protocols=OpenFlow13)")
        sock.settimeout(None)
        self._sock = sock
        self._reader = threading.Thread(target=self._read_loop, args=(sock,), daemon=True,
                                        name=f"hwflow-of-{self.endpoint}")
        self._reader.start()
        if self._ever_connected:
            LOG.info("OpenFlow connection to %s re-established", self.endpoint)
        self._ever_connected = True

    def _ensure_connected(self) -> socket.socket:
        with self._conn_lock:
            if self._closed:
                raise OpenFlowConnectionError(f"OpenFlow connection to {self.endpoint} was closed")
            if self._sock is None:
                self._open()
            assert self._sock is not None
            return self._sock

    def _lost(self, sock: socket.socket, reason: str) -> None:
        with self._conn_lock:
            if self._sock is sock:
                self._sock = None
                if not self._closed:
                    LOG.warning("OpenFlow connection to %s lost (%s); reconnecting on next use",
                                self.endpoint, reason)
        sock.close()
        with self._waiters_lock:
            waiters, self._waiters = set(self._waiters.values()), {}
        for waiter in waiters:
            waiter.fail(OpenFlowConnectionError(f"OpenFlow connection to {self.endpoint} lost: {reason}"))

    def close(self) -> None:
        with self._conn_lock:
            self._closed = True
            sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(self.timeout)

    # --- reading -------------------------------------------------------------------

    def _read_loop(self, sock: socket.socket) -> None:
        buf = bytearray()
        try:
            while True:
                chunk = sock.recv(RECV_SIZE)
                if not chunk:
                    raise ConnectionError("closed by peer")
                buf += chunk
                while len(buf) >= HEADER.size:
                    length = HEADER.unpack_from(buf)[2]
                    if length < HEADER.size:
                        raise ConnectionError(f"corrupt OpenFlow header (length {length})")
                    if len(buf) < length:
                        break
                    self._dispatch(sock, bytes(buf[:length]))
                    del buf[:length]
        except OSError as exc:
            self._lost(sock, str(exc) or type(exc).__name__)

    def _dispatch(self, sock: socket.socket, raw: bytes) -> None:
        version, msg_type, length, xid = HEADER.unpack_from(raw)
        if msg_type == ofp.OFPT_ECHO_REQUEST:
            reply = parser.OFPEchoReply(self.datapath, data=raw[HEADER.size:])
            reply.xid = xid
            reply.serialize()
            self._write(sock, bytes(reply.buf))
            return
        with self._waiters_lock:
            waiter = self._waiters.get(xid)
        if waiter is None:
            return  # async message or a reply nobody waits for any more
        msg = ofproto_parser.msg(self.datapath, version, msg_type, length, xid, raw)
        if msg is None:
            waiter.fail(OpenFlowError(f"could not parse OpenFlow message type {msg_type} "
                                      f"from {self.endpoint}"))
            return
        waiter.deliver(msg)

    # --- writing -------------------------------------------------------------------

    def _write(self, sock: socket.socket, data: bytes) -> None:
        with self._send_lock:
            sock.sendall(data)

    def _next_xid(self) -> int:
        return next(self._xids) % 0xFFFFFFFF + 1

    def _exchange(self, msgs: Sequence[Any], final: Any) -> tuple[_Waiter, dict[int, Any]]:
        """Write ``msgs`` then ``final`` in one go; wait until ``final``'s reply ends."""
        sock = self._ensure_connected()
        by_xid: dict[int, Any] = {}
        chunks = []
        for msg in (*msgs, final):
            msg.xid = self._next_xid()
            msg.serialize()
            by_xid[msg.xid] = msg
            chunks.append(msg.buf)
        waiter = _Waiter(final.xid)
        with self._waiters_lock:
            for xid in by_xid:
                self._waiters[xid] = waiter
        if self._sock is not sock:  # lost between connecting and registering: nobody would wake us
            waiter.fail(OpenFlowConnectionError(f"OpenFlow connection to {self.endpoint} lost"))
        try:
            try:
                self._write(sock, b"".join(chunks))
            except OSError as exc:
                self._lost(sock, str(exc))
            if not waiter.done.wait(self.timeout):
                raise OpenFlowTimeout(f"{self.endpoint} did not answer {type(final).__name__} "
                                      f"within {self.timeout}s")
        finally:
            with self._waiters_lock:
                for xid in by_xid:
                    self._waiters.pop(xid, None)
        if waiter.failure is not None:
            raise waiter.failure
        return waiter, by_xid

    def send(self, msgs: Sequence[Any]) -> list[Rejected]:
        """Send a batch and a barrier; return the messages the switch refused (empty: all applied)."""
        waiter, by_xid = self._exchange(msgs, parser.OFPBarrierRequest(self.datapath))
        return [Rejected(by_xid[r.xid], r.type, r.code, bytes(r.data or b""))
                for r in waiter.replies if isinstance(r, parser.OFPErrorMsg)]

    def request(self, msg: Any) -> list[Any]:
        """One request, every part of its reply. Read-only, so retried once on a fresh connection."""
        try:
            waiter, _ = self._exchange((), msg)
        except OpenFlowConnectionError:
            if self._closed:
                raise
            waiter, _ = self._exchange((), msg)
        errors = [r for r in waiter.replies if isinstance(r, parser.OFPErrorMsg)]
        if errors:
            raise OpenFlowError(f"{self.endpoint} refused {type(msg).__name__}: "
                                f"{_error_name('OFPET_', errors[0].type)}/code {errors[0].code}")
        return waiter.replies

    def dump_flows(self, cookie: int = 0, cookie_mask: int = 0,
                   table: int = ofp.OFPTT_ALL) -> list[parser.OFPFlowStats]:
        req = parser.OFPFlowStatsRequest(self.datapath, 0, table, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                         cookie, cookie_mask, parser.OFPMatch())
        return [stats for reply in self.request(req) for stats in reply.body]

    def port_stats(self) -> dict[int, tuple[int, int]]:
        """ofport -> (rx_packets, tx_packets), as the switch counts them."""
        req = parser.OFPPortStatsRequest(self.datapath, 0, ofp.OFPP_ANY)
        return {s.port_no: (s.rx_packets, s.tx_packets) for reply in self.request(req) for s in reply.body}


def _read_message(sock: socket.socket) -> bytes:
    """Blocking read of exactly one message (used for the HELLO, before the reader thread runs)."""
    header = _read_exact(sock, HEADER.size)
    length = HEADER.unpack_from(header)[2]
    if length < ofproto_common.OFP_HEADER_SIZE:
        raise ConnectionError(f"corrupt OpenFlow header (length {length})")
    return header + _read_exact(sock, length - HEADER.size)


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("closed by peer during HELLO")
        data += chunk
    return bytes(data)
