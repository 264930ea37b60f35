"""hwflow's own OpenFlow 1.3 connection to a bridge.

We dial the bridge's management socket (vswitchd always listens there)
instead of running os-ken's controller framework: one socket, one reader
thread, replies routed by xid. os-ken is used only for message classes.
Batches go out in large writes followed by a barrier, which is what makes
flow programming fast (see notes/platform-facts.md) and tells us exactly
which message of the batch OVS refused. :meth:`OpenFlowConnection.send_program`
takes flow_mods as a compact program (hwflow.backends.ovs.native) and writes
the natively encoded chunks; :meth:`~OpenFlowConnection.send` takes os-ken
messages.

Packets the pipeline punts arrive as packet-ins on the reader thread and go
to the listeners :meth:`~OpenFlowConnection.on_packet_in` registered; while
any is registered, a lost connection is redialled in the background (the
listeners belong to the connection object, not to one socket), so punted
packets keep arriving without anyone having to send something first.
:meth:`~OpenFlowConnection.packet_out` sends a packet out of a port.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import socket
import struct
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any

from os_ken.ofproto import ofproto_common, ofproto_parser
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from hwflow.backends.ovs.native import Chunk, Encoder, Of13Datapath

LOG = logging.getLogger(__name__)

HEADER = struct.Struct("!BBHI")  # version, type, length, xid
HELLO_ELEM = struct.Struct("!HH")  # type, length
MULTIPART = struct.Struct("!HH4x")  # type, flags (after the header)
RECV_SIZE = 1 << 16
MAX_XID = 0xFFFFFFFF
REDIAL_MIN, REDIAL_MAX = 0.1, 5.0  # seconds between redials of a lost connection that has listeners


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


@dataclasses.dataclass(frozen=True)
class PacketIn:
    """A packet the switch handed us, with the metadata OVS reports for it."""

    in_port: int  # the OpenFlow port it came in on
    table_id: int
    cookie: int  # of the flow that sent it
    fields: Mapping[str, Any]  # the packet-in's match: in_port, metadata, registers, tunnel fields
    data: bytes  # the whole frame (the pipeline punts with max_len NO_BUFFER)


PacketInListener = Callable[[PacketIn], None]


def _error_name(prefix: str, value: int) -> str:
    names = [n for n in dir(ofp) if n.startswith(prefix) and getattr(ofp, n) == value]
    return names[0] if names else f"{prefix}{value}"


def hello_versions(buf: bytes) -> set[int]:
    """The versions a peer's HELLO offers: its bitmap if it sent one, else every version up to its own.

    A HELLO shorter than its header is an OpenFlowError; elements past the bytes there are are not read.
    """
    if len(buf) < HEADER.size:
        raise OpenFlowError(f"a HELLO of {len(buf)} bytes is shorter than an OpenFlow header")
    version, _, length, _ = HEADER.unpack_from(buf)
    length = min(length, len(buf))
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

    def __init__(self, final_xid: int, raw: bool = False) -> None:
        self.final_xid = final_xid
        self.raw = raw  # keep multipart replies as bytes: parsing big dumps with os-ken is the slow part
        self.replies: list[Any] = []
        self.done = threading.Event()
        self.failure: OpenFlowError | None = None

    def deliver_raw(self, raw: bytes, xid: int) -> None:
        self.replies.append(raw)
        if xid == self.final_xid and not MULTIPART.unpack_from(raw, HEADER.size)[1] & ofp.OFPMPF_REPLY_MORE:
            self.done.set()

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
        self._ranges: dict[range, _Waiter] = {}  # a program's flow_mods: errors carry any xid of the range
        self._xid_lock = threading.Lock()
        self._xid = 1
        self._closed = False
        self._ever_connected = False
        self._listeners: list[PacketInListener] = []
        self._down = threading.Event()  # set when the connection is lost (or closed): the keeper redials
        self._keeper: threading.Thread | None = None
        self._shut = threading.Event()  # close() was called: the keeper stops waiting
        self._generation = 0  # bumped when a session is established and when it is lost
        self.reader_errors = 0  # messages the reader thread failed on, each costing the session (_read_loop)

    @property
    def generation(self) -> int:
        """Bumped whenever a session to the switch is established or lost (never reset).

        While it stays the same, every message went over one session to one running vswitchd, so the flow
        table is the one this connection programmed (and others changed). A different value means the switch
        may have restarted, which empties its flow table: whoever keeps a copy of it in memory must dump again.
        """
        return self._generation

    @property
    def connected(self) -> bool:
        """Whether a session to the switch is up now."""
        return self._sock is not None

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
        if self._listeners:
            self._subscribe(sock)
        self._generation += 1
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
                self._generation += 1
                if not self._closed:
                    LOG.warning("OpenFlow connection to %s lost (%s); reconnecting %s", self.endpoint, reason,
                                "now" if self._listeners else "on next use")
                self._down.set()
        sock.close()
        with self._waiters_lock:
            waiters = set(self._waiters.values()) | set(self._ranges.values())
            self._waiters, self._ranges = {}, {}
        for waiter in waiters:
            waiter.fail(OpenFlowConnectionError(f"OpenFlow connection to {self.endpoint} lost: {reason}"))

    def close(self) -> None:
        with self._conn_lock:
            self._closed = True
            sock, self._sock = self._sock, None
        self._shut.set()
        self._down.set()
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        for thread in (self._reader, self._keeper):
            if thread is not None and thread is not threading.current_thread():
                thread.join(self.timeout)

    # --- packet-in and packet-out ------------------------------------------------------

    def on_packet_in(self, listener: PacketInListener) -> None:
        """Call ``listener`` for every packet-in, on the reader thread: it must not block (queue the work).

        From now on the connection keeps itself up: it dials at once and redials whenever it is lost.
        """
        with self._conn_lock:
            self._listeners.append(listener)
            if self._keeper is None:
                self._keeper = threading.Thread(target=self._keep_connected, daemon=True,
                                                name=f"hwflow-of-keeper-{self.endpoint}")
                self._keeper.start()
            if self._sock is None:
                self._down.set()
            elif len(self._listeners) == 1:
                self._subscribe(self._sock)

    def remove_packet_in(self, listener: PacketInListener) -> None:
        with self._conn_lock:
            self._listeners.remove(listener)

    def _subscribe(self, sock: socket.socket) -> None:
        """Ask for packet-ins on this session: OVS sends none to a connection on its management socket
        until it sets a nonzero miss_send_len (connmgr.c). OpenFlow 1.3 table misses drop rather than
        punt, so this brings only the packets flows send to the controller. Every new session needs it."""
        config = parser.OFPSetConfig(self.datapath, ofp.OFPC_FRAG_NORMAL, ofp.OFPCML_NO_BUFFER)
        config.xid = self._next_xid()
        config.serialize()
        try:
            self._write(sock, bytes(config.buf))
        except OSError as exc:  # the reader sees the loss too, and the keeper redials
            LOG.warning("cannot ask %s for packet-ins: %s", self.endpoint, exc)

    def _keep_connected(self) -> None:
        """Redial a lost connection at once, then with backoff, until it is closed."""
        delay = REDIAL_MIN
        while True:
            self._down.wait()
            self._down.clear()  # before dialling: a loss right after the dial sets it again
            try:
                self._ensure_connected()
            except OpenFlowConnectionError:
                if self._closed:
                    return
                LOG.warning("OpenFlow connection to %s still down; punted packets are lost until it is back "
                            "(retrying in %.1fs)", self.endpoint, delay)
                self._down.set()
                self._shut.wait(delay)
                delay = min(REDIAL_MAX, delay * 2)
                continue
            except OpenFlowError as exc:
                LOG.error("OpenFlow connection to %s cannot be redialled: %s", self.endpoint, exc)
                return
            delay = REDIAL_MIN

    def packet_out(self, port: int, data: bytes) -> None:
        """Send the frame ``data`` out of OpenFlow port ``port``, as if the controller sent it.

        Nothing is awaited: a packet-out is a datagram, and waiting for a barrier would cost a round trip
        per packet. Raises OpenFlowConnectionError when the switch cannot be reached.
        """
        msg = parser.OFPPacketOut(self.datapath, ofp.OFP_NO_BUFFER, ofp.OFPP_CONTROLLER,
                                  [parser.OFPActionOutput(port, 0)], data)
        msg.xid = self._next_xid()
        msg.serialize()
        sock = self._ensure_connected()
        try:
            self._write(sock, bytes(msg.buf))
        except OSError as exc:
            self._lost(sock, str(exc))
            raise OpenFlowConnectionError(f"OpenFlow connection to {self.endpoint} lost: {exc}") from exc

    def _deliver_packet_in(self, raw: bytes) -> None:
        version, msg_type, length, xid = HEADER.unpack_from(raw)
        try:
            msg = parser.OFPPacketIn.parser(self.datapath, version, msg_type, length, xid, raw)
            fields = dict(msg.match.items())
            packet = PacketIn(fields["in_port"], msg.table_id, msg.cookie, fields, bytes(msg.data))
        except Exception as exc:  # a packet-in os-ken cannot read must not stop the reader
            LOG.debug("ignoring an unreadable packet-in from %s: %s", self.endpoint, exc)
            return
        for listener in list(self._listeners):
            try:
                listener(packet)
            except Exception:
                LOG.exception("packet-in listener %r failed; the packet is dropped", listener)

    # --- reading -------------------------------------------------------------------

    def _read_loop(self, sock: socket.socket) -> None:
        """Read and dispatch until the session ends. A message no handler could take (garbage, or a bug in a
        handler) must not leave a dead reader behind a live socket, where every request would time out and
        nothing would tell the agent: it is logged with its type and xid, counted (:attr:`reader_errors`) and
        the session reset, which bumps :attr:`generation` (a full pass follows) and redials."""
        buf = bytearray()
        header: tuple[int, int, int, int] | None = None
        try:
            while True:
                chunk = sock.recv(RECV_SIZE)
                if not chunk:
                    raise ConnectionError("closed by peer")
                buf += chunk
                while len(buf) >= HEADER.size:
                    header = HEADER.unpack_from(buf)
                    length = header[2]
                    if length < HEADER.size:
                        raise ConnectionError(f"corrupt OpenFlow header (length {length})")
                    if len(buf) < length:
                        break
                    self._dispatch(sock, bytes(buf[:length]))
                    del buf[:length]
        except OSError as exc:
            self._lost(sock, str(exc) or type(exc).__name__)
        except Exception as exc:  # see the docstring: anything else a message raised
            self.reader_errors += 1
            version, msg_type, _, xid = header or (0, -1, 0, 0)
            LOG.exception("OpenFlow reader of %s failed on a message of type %d (xid %d, version %d); resetting "
                          "the connection", self.endpoint, msg_type, xid, version)
            self._lost(sock, f"the reader failed on message type {msg_type} xid {xid}: {type(exc).__name__}")

    def _dispatch(self, sock: socket.socket, raw: bytes) -> None:
        version, msg_type, length, xid = HEADER.unpack_from(raw)
        if msg_type == ofp.OFPT_ECHO_REQUEST:
            reply = parser.OFPEchoReply(self.datapath, data=raw[HEADER.size:])
            reply.xid = xid
            reply.serialize()
            self._write(sock, bytes(reply.buf))
            return
        if msg_type == ofp.OFPT_PACKET_IN:
            self._deliver_packet_in(raw)
            return
        with self._waiters_lock:
            waiter = self._waiters.get(xid) or next((w for r, w in self._ranges.items() if xid in r), None)
        if waiter is None:
            return  # async message or a reply nobody waits for any more
        if waiter.raw and msg_type == ofp.OFPT_MULTIPART_REPLY:
            waiter.deliver_raw(raw, xid)
            return
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

    def _reserve_xids(self, count: int) -> int:
        """``count`` consecutive xids that do not wrap, so a program's xids are one range."""
        with self._xid_lock:
            if self._xid + count > MAX_XID:
                self._xid = 1
            first = self._xid
            self._xid += count
            return first

    def _next_xid(self) -> int:
        return self._reserve_xids(1)

    def _exchange(self, msgs: Sequence[Any], final: Any, raw: bool = False) -> tuple[_Waiter, dict[int, Any]]:
        """Write ``msgs`` then ``final`` in one go; wait until ``final``'s reply ends."""
        sock = self._ensure_connected()
        by_xid: dict[int, Any] = {}
        chunks = []
        for msg in (*msgs, final):
            msg.xid = self._next_xid()
            msg.serialize()
            by_xid[msg.xid] = msg
            chunks.append(msg.buf)
        waiter = _Waiter(final.xid, raw)
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

    def send_each(self, msgs: Iterable[Any]) -> list[Rejected]:
        """One write per message as each is built, as os-ken's ``Datapath.send_msg`` does, then a barrier.

        The measured baseline of ``hwflow bench openflow``; the agent uses :meth:`send_program`.
        """
        sock = self._ensure_connected()
        sent: dict[int, Any] = {}
        waiter = _Waiter(-1)
        try:
            for msg in msgs:
                msg.xid = self._next_xid()
                msg.serialize()
                sent[msg.xid] = msg
                with self._waiters_lock:
                    self._waiters[msg.xid] = waiter
                self._write(sock, bytes(msg.buf))
            errors = self.send([])
        except OSError as exc:
            self._lost(sock, str(exc))
            raise OpenFlowConnectionError(f"OpenFlow connection to {self.endpoint} lost: {exc}") from exc
        finally:
            with self._waiters_lock:
                for xid in sent:
                    self._waiters.pop(xid, None)
        return errors + [Rejected(sent[r.xid], r.type, r.code, bytes(r.data or b""))
                         for r in waiter.replies if isinstance(r, parser.OFPErrorMsg)]

    def writer(self, encoder: Encoder) -> ProgramWriter:
        """A :class:`ProgramWriter` on this connection (use it as a context manager)."""
        return ProgramWriter(self, encoder)

    def send_program(self, words: Sequence[int], messages: int, encoder: Encoder) -> list[Rejected]:
        """Encode a program of ``messages`` flow_mods, write it in large chunks, then a barrier.

        Returns the refused flow_mods, each parsed back from the bytes sent.
        """
        with self.writer(encoder) as writer:
            writer.add(words, messages)
            return writer.finish()

    def request(self, msg: Any, raw: bool = False) -> list[Any]:
        """One request, every part of its reply (multipart parts as bytes if ``raw``). Read-only, so
        retried once on a fresh connection."""
        try:
            waiter, _ = self._exchange((), msg, raw)
        except OpenFlowConnectionError:
            if self._closed:
                raise
            waiter, _ = self._exchange((), msg, raw)
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

    def dump_flows_raw(self, cookie: int = 0, cookie_mask: int = 0, table: int = ofp.OFPTT_ALL) -> list[bytes]:
        """The flow stats replies as sent (translate.FlowCompiler.decode_flow_stats reads them without
        building os-ken objects)."""
        req = parser.OFPFlowStatsRequest(self.datapath, 0, table, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                         cookie, cookie_mask, parser.OFPMatch())
        return self.request(req, raw=True)

    def flow_count(self, cookie: int = 0, cookie_mask: int = 0, table: int = ofp.OFPTT_ALL) -> int:
        """How many flows the switch holds (under a cookie mask), counted by the switch: no dump."""
        req = parser.OFPAggregateStatsRequest(self.datapath, 0, table, ofp.OFPP_ANY, ofp.OFPG_ANY, cookie,
                                              cookie_mask, parser.OFPMatch())
        return sum(reply.body.flow_count for reply in self.request(req))

    def port_stats(self) -> dict[int, tuple[int, int]]:
        """ofport -> (rx_packets, tx_packets), as the switch counts them."""
        req = parser.OFPPortStatsRequest(self.datapath, 0, ofp.OFPP_ANY)
        return {s.port_no: (s.rx_packets, s.tx_packets) for reply in self.request(req) for s in reply.body}

    def port_counters(self) -> dict[int, tuple[int, int, int, int]]:
        """ofport -> (rx_packets, rx_bytes, tx_packets, tx_bytes), as the switch counts them."""
        req = parser.OFPPortStatsRequest(self.datapath, 0, ofp.OFPP_ANY)
        return {s.port_no: (s.rx_packets, s.rx_bytes, s.tx_packets, s.tx_bytes)
                for reply in self.request(req) for s in reply.body}


class ProgramWriter:
    """Flow_mod programs encoded and written by a helper thread while the caller builds the next part.

    ``add`` queues a part (program words and how many flow_mods they hold) and returns at once;
    ``finish`` sends one barrier after the last part and returns the refused flow_mods, each parsed back
    from the bytes sent (errors are rare; parsing every message would cost what the encoder saves).
    The helper thread mostly runs without the GIL (cffi releases it around the native encoder; a
    blocking ``sendall`` while OVS reads), so building flows in Python overlaps with OVS ingesting them.
    Leaving the ``with`` block without ``finish`` stops after the parts already queued.
    """

    def __init__(self, conn: OpenFlowConnection, encoder: Encoder) -> None:
        self._conn = conn
        self._encoder = encoder
        self._sock = conn._ensure_connected()
        self._waiter = _Waiter(-1)  # the barrier's xid is known at finish()
        self._parts: queue.SimpleQueue[tuple[Sequence[int], int, int] | None] = queue.SimpleQueue()
        self._ranges: list[range] = []
        self._chunks: list[Chunk] = []
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"hwflow-of-writer-{conn.endpoint}")
        self._thread.start()
        self._finished = False

    def add(self, words: Sequence[int], messages: int) -> None:
        if messages == 0:
            return
        first = self._conn._reserve_xids(messages)
        batch = range(first, first + messages)
        self._ranges.append(batch)
        with self._conn._waiters_lock:
            self._conn._ranges[batch] = self._waiter
        self._parts.put((words, first, messages))

    def _run(self) -> None:
        while (part := self._parts.get()) is not None:
            if self._failure is not None:
                continue  # drain: nothing more goes out after a failure
            words, first, messages = part
            try:
                chunks = list(self._encoder.encode(words, first))
                if sum(c.messages for c in chunks) != messages:
                    raise ValueError(f"a program part holds {sum(c.messages for c in chunks)} messages, "
                                     f"not {messages}")
                for chunk in chunks:
                    self._conn._write(self._sock, chunk.data)
                    self._chunks.append(chunk)  # also the progress _stop watches
            except OSError as exc:
                self._conn._lost(self._sock, str(exc))
                self._failure = OpenFlowConnectionError(f"OpenFlow connection to {self._conn.endpoint} lost: "
                                                        f"{exc}")
            except Exception as exc:  # an encoding error: reported by finish() in the caller's thread
                self._failure = exc

    def _stop(self) -> None:
        """Waits while the helper makes progress: a big batch into a slow switch may take a while, but a
        switch that takes nothing for ``timeout`` seconds is stuck."""
        self._parts.put(None)
        while True:
            written = len(self._chunks)
            self._thread.join(self._conn.timeout)
            if not self._thread.is_alive():
                return
            if len(self._chunks) == written:
                raise OpenFlowTimeout(f"{self._conn.endpoint} took no flow_mods for {self._conn.timeout}s")

    def finish(self) -> list[Rejected]:
        self._finished = True
        self._stop()
        if self._failure is not None:
            raise self._failure
        barrier = parser.OFPBarrierRequest(self._conn.datapath)
        barrier.xid = self._conn._next_xid()
        barrier.serialize()
        self._waiter.final_xid = barrier.xid
        with self._conn._waiters_lock:
            self._conn._waiters[barrier.xid] = self._waiter
        if self._conn._sock is not self._sock:
            self._waiter.fail(OpenFlowConnectionError(f"OpenFlow connection to {self._conn.endpoint} lost"))
        try:
            self._conn._write(self._sock, bytes(barrier.buf))
        except OSError as exc:
            self._conn._lost(self._sock, str(exc))
        if not self._waiter.done.wait(self._conn.timeout):
            raise OpenFlowTimeout(f"{self._conn.endpoint} did not answer the barrier after "
                                  f"{sum(len(r) for r in self._ranges)} flow_mods within {self._conn.timeout}s")
        if self._waiter.failure is not None:
            raise self._waiter.failure
        return [Rejected(_message_at(self._chunks, r.xid), r.type, r.code, bytes(r.data or b""))
                for r in self._waiter.replies if isinstance(r, parser.OFPErrorMsg)]

    def __enter__(self) -> ProgramWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        try:
            if not self._finished:
                self._stop()
        finally:
            with self._conn._waiters_lock:
                for batch in self._ranges:
                    self._conn._ranges.pop(batch, None)
                self._conn._waiters.pop(self._waiter.final_xid, None)


def _message_at(chunks: Sequence[Chunk], xid: int) -> Any:
    """The message with ``xid``, parsed back from the chunk that carried it."""
    for chunk in chunks:
        if chunk.first_xid <= xid < chunk.first_xid + chunk.messages:
            offset = 0
            for _ in range(xid - chunk.first_xid):
                offset += HEADER.unpack_from(chunk.data, offset)[2]
            version, msg_type, length, msg_xid = HEADER.unpack_from(chunk.data, offset)
            return ofproto_parser.msg(Of13Datapath(), version, msg_type, length, msg_xid,
                                      chunk.data[offset:offset + length])
    raise OpenFlowError(f"the switch named xid {xid}, which the batch did not send")


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
