"""The agent's DHCPv4 server: answers the requests the dhcp app punts, from the database alone.

There is no lease database and no address pool: a port's address is the one
the northbound database gives it (hwflow.apps.dhcp.served), so the answer to
a DISCOVER is an OFFER of that address, a REQUEST for it is ACKed and a
REQUEST for any other address is NAKed (the client then starts over and is
offered the right one). A REQUEST naming another server is left alone (the
client chose someone else's offer).

What the replies carry (RFC 2132): subnet mask, broadcast address, router
(the subnet's gateway), DNS servers, the network's MTU, the subnet's host
routes as classless static routes (RFC 3442, with the default route through
the gateway added, since a client that takes option 121 ignores option 3),
lease time and the renewal (T1) and rebinding (T2) times.

A port's ``extra_dhcp_opts`` (IPv4 ones; hwflow.util.dhcp_options has their
names and types) then replace the option of the same code or add it; one
with an empty value removes the option the subnet would give (Neutron's way
to keep a second NIC from taking a default route: ``router`` empty; on a
subnet with host routes, option 121 still carries the gateway's default
route unless ``classless-static-route`` is set or emptied too). Like the
subnet's, they are sent whether the client listed them in its parameter
request list (55) or not: a client ignores what it did not ask for, and some
(udhcpc without -O) hand their script what came unasked. As dnsmasq does,
``tftp-server`` (66) and ``bootfile-name`` (67) go in the header's ``sname``
and ``file`` unless the client asked for them as options (PXE ROMs read the
header; a value too long for the field is sent as the option), and
``server-ip-address`` is the header's ``siaddr``, the next server. The reply
is not trimmed to the client's maximum message size (57): a port with many
extra options can make it longer than 576 bytes.

Server identifier: the subnet's gateway address; a subnet without a gateway
uses its last host address. Broadcast requests and renewals unicast to the
server identifier reach us (see hwflow.apps.dhcp for when a renewal cannot);
T1 and T2 are the RFC's defaults (1/2 and 7/8 of the lease). The replies
come from SERVER_MAC.

Packet-ins arrive on the OpenFlow reader thread, which must never wait (it
also reads the barrier replies flow programming waits for): the listener
only queues the packet (a full queue drops it, as a busy server would), and
one worker thread decodes, answers and sends the packet-out. Anything that
is not a well-formed DHCP request is ignored with a debug log. The worker
reads the agent's topology while the agent's loop may be updating it; the
rare request that meets it mid-update is dropped (the client retransmits)
rather than answered from a half-written view.

The codec (Ethernet/IPv4/UDP/BOOTP, RFC 951 and 2131) is our own: small,
and strict where a reply depends on it.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import queue
import struct
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from hwflow.apps.dhcp import CLIENT_PORT, IPPROTO_UDP, SERVER_PORT, Served, served, server_id
from hwflow.backends.ovs.openflow import OpenFlowConnection, OpenFlowError, PacketIn
from hwflow.model.objects import Network, Port, Subnet
from hwflow.pipeline import ir
from hwflow.pipeline.topology import Topology
from hwflow.util import dhcp_options
from hwflow.util.checksum import internet_checksum

LOG = logging.getLogger(__name__)

# Neutron's default. A port whose address changes in the database learns it when it next rebinds (NAK,
# then the new address): at most 7/8 of this after its last lease.
LEASE_SECONDS = 86400
BACKLOG = 1024  # punted requests waiting for the worker; more are dropped (clients retransmit)
SERVER_MAC = "02:68:77:00:00:67"  # locally administered; the source of every reply

# Message types (option 53).
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK, RELEASE, INFORM = range(1, 9)
_NAMES = {DISCOVER: "DISCOVER", OFFER: "OFFER", REQUEST: "REQUEST", DECLINE: "DECLINE", ACK: "ACK", NAK: "NAK",
          RELEASE: "RELEASE", INFORM: "INFORM"}
# Options (RFC 2132, 3442).
OPT_PAD, OPT_END = 0, 255
OPT_SUBNET_MASK, OPT_ROUTER, OPT_DNS, OPT_MTU, OPT_BROADCAST = 1, 3, 6, 26, 28
OPT_REQUESTED_IP, OPT_LEASE, OPT_MSG_TYPE, OPT_SERVER_ID, OPT_T1, OPT_T2 = 50, 51, 53, 54, 58, 59
OPT_CLASSLESS_ROUTES = 121
OPT_PARAMETERS = 55  # the client's parameter request list

BOOTREQUEST, BOOTREPLY = 1, 2
HTYPE_ETHERNET, HLEN_ETHERNET = 1, 6
MAGIC = b"\x63\x82\x53\x63"
FLAG_BROADCAST = 0x8000
BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s")  # op .. file: the fixed 236 bytes
MIN_BOOTP = 300  # RFC 1542: some clients drop shorter messages, so replies are padded to it
ETHERNET = struct.Struct("!6s6sH")
IPV4 = struct.Struct("!BBHHHBBH4s4s")
UDP = struct.Struct("!HHHH")
IP_DEFAULT_TTL = 64
IP_FRAGMENTED = 0x3FFF  # the MF flag and the fragment offset
BROADCAST = ipaddress.IPv4Address("255.255.255.255")
ANY = ipaddress.IPv4Address(0)


class MalformedPacket(ValueError):
    """A frame that is not a well-formed DHCP request; the message says what is wrong."""


@dataclasses.dataclass(frozen=True)
class DhcpMessage:
    """A BOOTP message; options by code, repeated instances already concatenated (RFC 3396)."""

    op: int
    xid: int
    chaddr: bytes  # the client's hardware address (6 bytes)
    options: Mapping[int, bytes]
    flags: int = 0
    ciaddr: ipaddress.IPv4Address = ANY
    yiaddr: ipaddress.IPv4Address = ANY
    siaddr: ipaddress.IPv4Address = ANY
    giaddr: ipaddress.IPv4Address = ANY
    sname: bytes = b""  # the header's server host name and boot file name (64 and 128 bytes, NUL-padded)
    file: bytes = b""

    @property
    def message_type(self) -> int | None:
        value = self.options.get(OPT_MSG_TYPE, b"")
        return value[0] if len(value) == 1 else None

    def address_option(self, code: int) -> ipaddress.IPv4Address | None:
        value = self.options.get(code, b"")
        return ipaddress.IPv4Address(value) if len(value) == 4 else None

    def encode(self) -> bytes:
        fixed = BOOTP.pack(self.op, HTYPE_ETHERNET, HLEN_ETHERNET, 0, self.xid, 0, self.flags,
                           self.ciaddr.packed, self.yiaddr.packed, self.siaddr.packed, self.giaddr.packed,
                           self.chaddr.ljust(16, b"\0"), self.sname, self.file)
        body = fixed + MAGIC + b"".join(_option(code, value) for code, value in self.options.items()) + b"\xff"
        return body.ljust(MIN_BOOTP, b"\0")

    @classmethod
    def decode(cls, data: bytes) -> DhcpMessage:
        if len(data) < BOOTP.size + len(MAGIC):
            raise MalformedPacket(f"BOOTP message of {len(data)} bytes is shorter than {BOOTP.size + 4}")
        op, htype, hlen, _, xid, _, flags, ciaddr, yiaddr, siaddr, giaddr, chaddr, sname, file = BOOTP.unpack_from(
            data)
        if (htype, hlen) != (HTYPE_ETHERNET, HLEN_ETHERNET):
            raise MalformedPacket(f"hardware type {htype}/length {hlen} is not Ethernet")
        if data[BOOTP.size:BOOTP.size + 4] != MAGIC:
            raise MalformedPacket("no DHCP magic cookie")
        return cls(op, xid, chaddr[:6], _decode_options(data, BOOTP.size + 4), flags, ipaddress.IPv4Address(ciaddr),
                   ipaddress.IPv4Address(yiaddr), ipaddress.IPv4Address(siaddr), ipaddress.IPv4Address(giaddr),
                   sname.rstrip(b"\0"), file.rstrip(b"\0"))


def _option(code: int, value: bytes) -> bytes:
    """One option; a value over 255 bytes is split into several instances (RFC 3396)."""
    chunks = [value[i:i + 255] for i in range(0, len(value), 255)] or [b""]
    return b"".join(bytes((code, len(chunk))) + chunk for chunk in chunks)


def _decode_options(data: bytes, offset: int) -> dict[int, bytes]:
    options: dict[int, bytes] = {}
    while offset < len(data):
        code = data[offset]
        if code == OPT_END:
            return options
        if code == OPT_PAD:
            offset += 1
            continue
        if offset + 2 > len(data) or offset + 2 + data[offset + 1] > len(data):
            raise MalformedPacket(f"option {code} runs past the end of the message")
        length = data[offset + 1]
        options[code] = options.get(code, b"") + data[offset + 2:offset + 2 + length]
        offset += 2 + length
    raise MalformedPacket("options have no end option")


@dataclasses.dataclass(frozen=True)
class Request:
    """A DHCP request as it came from a port: the frame's source MAC and the message."""

    eth_src: bytes
    message: DhcpMessage


def decode_request(frame: bytes) -> Request:
    """A client's DHCP request from an Ethernet frame; raises MalformedPacket for anything else."""
    if len(frame) < ETHERNET.size + IPV4.size:
        raise MalformedPacket(f"frame of {len(frame)} bytes is too short for IPv4")
    _, eth_src, eth_type = ETHERNET.unpack_from(frame)
    if eth_type != ir.ETH_TYPE_IPV4:
        raise MalformedPacket(f"ethertype {eth_type:#06x} is not IPv4")
    ip = frame[ETHERNET.size:]
    ver_ihl, _, total, _, frag, _, proto, _, _, _ = IPV4.unpack_from(ip)
    header = (ver_ihl & 0xF) * 4
    if ver_ihl >> 4 != 4 or header < IPV4.size or total < header + UDP.size or total > len(ip):
        raise MalformedPacket("bad IPv4 header (version, header length or total length)")
    if proto != IPPROTO_UDP or frag & IP_FRAGMENTED:
        raise MalformedPacket(f"IP protocol {proto}, fragment bits {frag & IP_FRAGMENTED:#x}: not a whole UDP "
                              "datagram")
    sport, dport, length, _ = UDP.unpack_from(ip, header)
    if (sport, dport) != (CLIENT_PORT, SERVER_PORT):
        raise MalformedPacket(f"UDP {sport} -> {dport} is not DHCP from a client")
    if not UDP.size <= length <= total - header:
        raise MalformedPacket(f"UDP length {length} does not fit the IP packet")
    message = DhcpMessage.decode(ip[header + UDP.size:header + length])
    if message.op != BOOTREQUEST or message.message_type is None:
        raise MalformedPacket(f"BOOTP op {message.op} without a DHCP message type is not a client request")
    return Request(eth_src, message)


def encode_frame(eth_src: bytes, eth_dst: bytes, ip_src: ipaddress.IPv4Address, ip_dst: ipaddress.IPv4Address,
                 payload: bytes) -> bytes:
    """Ethernet + IPv4 + UDP 67 -> 68 around ``payload``, both checksums filled in."""
    udp_length = UDP.size + len(payload)
    pseudo = ip_src.packed + ip_dst.packed + struct.pack("!BBH", 0, IPPROTO_UDP, udp_length)
    udp_sum = internet_checksum(pseudo + UDP.pack(SERVER_PORT, CLIENT_PORT, udp_length, 0) + payload) or 0xFFFF
    udp = UDP.pack(SERVER_PORT, CLIENT_PORT, udp_length, udp_sum) + payload
    header = IPV4.pack(0x45, 0, IPV4.size + len(udp), 0, 0, IP_DEFAULT_TTL, IPPROTO_UDP, 0, ip_src.packed,
                       ip_dst.packed)
    header = header[:10] + struct.pack("!H", internet_checksum(header)) + header[12:]
    return ETHERNET.pack(eth_dst, eth_src, ir.ETH_TYPE_IPV4) + header + udp


# --- answering ------------------------------------------------------------------------------------


def _addresses(texts: list[str]) -> bytes:
    return b"".join(ipaddress.IPv4Address(t).packed for t in texts if ipaddress.ip_address(t).version == 4)


def _classless_routes(subnet: Subnet) -> bytes:
    """Option 121: the subnet's host routes and the default route through its gateway."""
    routes = [(r["destination"], r["nexthop"]) for r in subnet.host_routes]
    if subnet.gateway_ip:
        routes.append(("0.0.0.0/0", subnet.gateway_ip))
    return dhcp_options.classless_routes((ipaddress.IPv4Network(destination), ipaddress.IPv4Address(nexthop))
                                         for destination, nexthop in routes)


def lease_options(lease: Served, network: Network | None, lease_seconds: int = LEASE_SECONDS) -> Iterator[
        tuple[int, bytes]]:
    """The options of an OFFER or ACK, after the message type and server id."""
    subnet = lease.subnet
    yield OPT_LEASE, struct.pack("!I", lease_seconds)
    yield OPT_T1, struct.pack("!I", lease_seconds // 2)
    yield OPT_T2, struct.pack("!I", lease_seconds * 7 // 8)
    yield OPT_SUBNET_MASK, subnet.network.netmask.packed
    yield OPT_BROADCAST, subnet.network.broadcast_address.packed
    if subnet.gateway_ip:
        yield OPT_ROUTER, ipaddress.IPv4Address(subnet.gateway_ip).packed
    if dns := _addresses(subnet.dns_nameservers):
        yield OPT_DNS, dns
    if network is not None:
        yield OPT_MTU, struct.pack("!H", network.mtu)
    if subnet.host_routes:
        yield OPT_CLASSLESS_ROUTES, _classless_routes(subnet)


@dataclasses.dataclass(frozen=True)
class PortOptions:
    """What a port's extra options make of a reply: options by code (None: not sent) and header fields."""

    options: dict[int, bytes | None] = dataclasses.field(default_factory=dict)
    siaddr: ipaddress.IPv4Address = ANY
    sname: bytes = b""
    file: bytes = b""


# Option -> the header field dnsmasq puts it in, and that field's size (a value must leave room for a NUL).
_HEADER_FIELDS = {dhcp_options.TFTP_SERVER: ("sname", 64), dhcp_options.BOOTFILE_NAME: ("file", 128)}


def port_options(port: Port, asked: bytes) -> PortOptions:
    """The port's IPv4 extra options, for a client that asked for the option codes in ``asked`` (see the module
    docstring for where each goes)."""
    options: dict[int, bytes | None] = {}
    header: dict[str, Any] = {}
    for entry in port.extra_dhcp_opts:
        if entry["ip_version"] != 4:
            continue
        option, value = dhcp_options.lookup(entry["name"]), entry["value"]
        field, size = _HEADER_FIELDS.get(option.code, ("", 0))
        if option.code is None:
            header["siaddr"] = ipaddress.IPv4Address(value) if value else ANY
        elif field and option.code not in asked and len(value.encode()) < size:
            header[field] = value.encode()
        else:
            options[option.code] = dhcp_options.encode(option, value) if value else None
    return PortOptions(options, **header)


def answer(request: Request, port: Port, topo: Topology, lease_seconds: int = LEASE_SECONDS) -> bytes | None:
    """The reply frame to ``request`` from ``port`` (None: no reply is due), from the topology alone."""
    message = request.message
    lease = served(port, topo)
    if lease is None or message.chaddr != _mac(port.mac):
        LOG.debug("DHCP %s from port %s (chaddr %s): not served here", message.message_type, port.id,
                  message.chaddr.hex(":"))
        return None
    server = server_id(lease.subnet)
    kind = _reply_kind(message, lease, server)
    if kind is None:
        return None
    options: dict[int, bytes] = {OPT_MSG_TYPE: bytes((kind,)), OPT_SERVER_ID: server.packed}
    extra = PortOptions()
    if kind != NAK:
        options.update(lease_options(lease, topo.networks.get(port.network_id), lease_seconds))
        extra = port_options(port, message.options.get(OPT_PARAMETERS, b""))
        for code, value in extra.options.items():
            if value is None:
                options.pop(code, None)
            else:
                options[code] = value
    reply = DhcpMessage(BOOTREPLY, message.xid, message.chaddr, options, message.flags,
                        ciaddr=message.ciaddr if kind == ACK else ANY,
                        yiaddr=lease.address if kind != NAK else ANY, siaddr=extra.siaddr, giaddr=message.giaddr,
                        sname=extra.sname, file=extra.file)
    LOG.info("DHCP %s from port %s: %s %s", _NAMES.get(message.message_type or 0), port.id, _NAMES[kind],
             lease.address if kind != NAK else f"(it asked for {_requested(message)})")
    return encode_frame(_mac(SERVER_MAC), request.eth_src, server, _destination(kind, message, lease),
                        reply.encode())


def _destination(kind: int, message: DhcpMessage, lease: Served) -> ipaddress.IPv4Address:
    """Where the reply's IP header points (RFC 2131 4.1; the frame goes to the client's MAC in any case)."""
    if kind == NAK:
        return BROADCAST
    if message.ciaddr != ANY:
        return message.ciaddr
    return BROADCAST if message.flags & FLAG_BROADCAST else lease.address


def _reply_kind(message: DhcpMessage, lease: Served, server: ipaddress.IPv4Address) -> int | None:
    kind = message.message_type
    if kind == DISCOVER:
        return OFFER
    if kind != REQUEST:
        LOG.debug("DHCP message type %s needs no answer", kind)
        return None
    chosen = message.address_option(OPT_SERVER_ID)
    if chosen is not None and chosen != server:
        LOG.debug("DHCP REQUEST for server %s: not us (%s)", chosen, server)
        return None
    return ACK if _requested(message) == lease.address else NAK


def _requested(message: DhcpMessage) -> ipaddress.IPv4Address:
    """The address a REQUEST asks for: option 50 (SELECTING, INIT-REBOOT) or ciaddr (RENEWING, REBINDING)."""
    return message.address_option(OPT_REQUESTED_IP) or message.ciaddr


def _mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))



# --- the server -----------------------------------------------------------------------------------

View = Callable[[], tuple[Topology, Mapping[int, int]]]  # the topology and logical port key -> ofport


class DhcpResponder:
    """Answers punted DHCP requests with packet-outs on ``of``; ``view`` is the agent's current state."""

    def __init__(self, of: OpenFlowConnection, view: View, lease_seconds: int = LEASE_SECONDS,
                 backlog: int = BACKLOG) -> None:
        self.of = of
        self._view = view
        self.lease_seconds = lease_seconds
        self._queue: queue.Queue[PacketIn | None] = queue.Queue(backlog)
        self._worker: threading.Thread | None = None
        self.dropped = 0  # requests lost to a full queue

    def start(self) -> None:
        self._worker = threading.Thread(target=self._run, daemon=True, name="hwflow-dhcp")
        self._worker.start()
        self.of.on_packet_in(self._enqueue)

    def stop(self) -> None:
        if self._worker is None:
            return
        self.of.remove_packet_in(self._enqueue)
        self._queue.put(None)
        self._worker.join(10)
        self._worker = None

    def _enqueue(self, packet: PacketIn) -> None:
        try:
            self._queue.put_nowait(packet)
        except queue.Full:
            self.dropped += 1
            LOG.debug("DHCP backlog full (%d): dropping a punted packet", self._queue.maxsize)

    def _run(self) -> None:
        while (packet := self._queue.get()) is not None:
            try:
                self.handle(packet)
            except OpenFlowError as exc:
                LOG.warning("cannot send a DHCP reply: %s", exc)
            except Exception:  # a bug answering one packet must not stop the server
                LOG.exception("DHCP: failed to answer a packet from OpenFlow port %d", packet.in_port)

    def handle(self, packet: PacketIn) -> bool:
        """Answer one punted packet if it is a request we serve; True if a reply was sent."""
        try:
            request = decode_request(packet.data)
        except MalformedPacket as exc:
            LOG.debug("ignoring a punted packet from OpenFlow port %d: %s", packet.in_port, exc)
            return False
        topo, ofports = self._view()
        try:
            port = _local_port(topo, ofports, packet.in_port)
            frame = answer(request, port, topo, self.lease_seconds) if port is not None else None
        except (KeyError, RuntimeError) as exc:  # read while the agent's pass rewrites its indexes
            LOG.debug("DHCP from OpenFlow port %d met the topology mid-update (%r); the client will retry",
                      packet.in_port, exc)
            return False
        if port is None:
            LOG.debug("DHCP from OpenFlow port %d, which is no local port (any more)", packet.in_port)
            return False
        if frame is None:
            return False
        self.of.packet_out(packet.in_port, frame)
        return True


def _local_port(topo: Topology, ofports: Mapping[int, int], ofport: int) -> Port | None:
    key = next((k for k, o in list(ofports.items()) if o == ofport), None)
    return next((p for p in topo.local_ports() if p.unique_key == key), None) if key is not None else None
