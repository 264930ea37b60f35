"""The simulated NIC's data plane: TAP pairs (representor, VF), up to two physical ports, the eswitch between.

Each VF is a TAP device the harness moves into a VM's namespace (its file
descriptor keeps working after the move); its representor is a TAP device
that stays in the host namespace for Open vSwitch. Frames from a VF go
through the eswitch rules; a miss goes up the representor, as on a
switchdev NIC. Frames sent out of a representor go to its VF.

With physical ports (``--wire``, once or twice, as a single- or dual-port
ConnectX) the sim is a whole mlx5-style switchdev NIC, so that tunnels and
provider networks can be offloaded and the agent's code for them tested.
Port i's wire is an AF_PACKET socket on an existing netdev; its uplink
representor (a TAP, ``{name}p`` for port 0, ``{name}p1`` for port 1) is the
host's way onto it: what the host writes goes out that wire unchanged, what
no rule takes comes up it unchanged, a redirect (egress) to it goes out the
wire, an ingress redirect up the TAP. Frames from port i's wire are
classified on port i's uplink representor.

Port 0 carries the tunnel underlay: the tunnel devices ``{name}vx``/``{name}gn``
are its. They carry no traffic but are ports of the eswitch, as flow-based
``vxlan_sys_4789``/``genev_sys_6081`` are: decap rules sit on their ingress,
encap rules redirect to them, and encapsulated frames go out port 0's wire.
Encapsulation needs the remote VTEP's MAC, learnt from ARP on port 0's wire
(the underlay's neighbour table); until it is known the frame goes to
software and the sim asks (mlx5 holds such rules until the neighbour is
valid). A tunnel packet from port 0's wire (UDP to 4789 / 6081) is
classified on its tunnel device with its outer headers as enc_* keys; on
port 1 it is an ordinary frame. One function, :meth:`DataPlane.execute`,
carries out a rule's actions whatever the source; software is the source's
representor (for a wire: its uplink's, which gets a tunnel packet whole, as
OVS decapsulates it there).
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import logging
import os
import socket
import struct
import time
from collections.abc import Callable, Sequence

from hwflow.backends.tc import flower as fl
from hwflow.sim import tunnel
from hwflow.sim.eswitch import Eswitch, rewrite

LOG = logging.getLogger(__name__)

# /usr/include/linux/if_tun.h and /usr/include/linux/sockios.h, /usr/include/linux/if.h
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
SIOCSIFMTU = 0x8922
SIOCSIFHWADDR = 0x8924
ARPHRD_ETHER = 1
IFF_UP = 0x1
# /usr/include/linux/if_packet.h, if_ether.h
ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_OUTGOING = 4
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
ETH_P_8021Q = 0x8100
_AUXDATA = struct.Struct("=IIIHHHH")  # struct tpacket_auxdata
AUXDATA_SPACE = socket.CMSG_SPACE(_AUXDATA.size)
WIRE_MTU = 9000  # the harness makes the wire veth with it; a 1500-byte frame plus 50 bytes of VXLAN must fit
IFNAMSIZ = 16
MAX_WIRES = 2  # a dual-port ConnectX
MAX_FRAME = 65535


def open_tap(name: str) -> int:
    """A non-persistent TAP device: it disappears when the fd (the process) goes."""
    if not 0 < len(name.encode()) < IFNAMSIZ:
        raise ValueError(f"device name {name!r} must be 1..{IFNAMSIZ - 1} bytes; use a shorter --name")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI))
    except OSError as exc:
        os.close(fd)
        raise OSError(exc.errno, f"cannot create TAP device {name}: {exc.strerror}") from exc
    return fd


def set_mtu(name: str, mtu: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, SIOCSIFMTU, struct.pack("16si12x", name.encode(), mtu))


def set_mac(name: str, mac: bytes) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        fcntl.ioctl(sock, SIOCSIFHWADDR, struct.pack("16sH6s8x", name.encode(), ARPHRD_ETHER, mac))


def set_up(name: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        ifreq = fcntl.ioctl(sock, SIOCGIFFLAGS, struct.pack("16sH14x", name.encode(), 0))
        flags = struct.unpack_from("16sH", ifreq)[1]
        fcntl.ioctl(sock, SIOCSIFFLAGS, struct.pack("16sH14x", name.encode(), flags | IFF_UP))


@dataclasses.dataclass
class Port:
    vf: int
    representor: str
    representor_ifindex: int
    rep_fd: int
    vf_netdev: str
    vf_fd: int

    def status(self) -> dict[str, object]:
        return {"vf": self.vf, "representor": self.representor,
                "representor_ifindex": self.representor_ifindex, "vf_netdev": self.vf_netdev}


def create_ports(name: str, num_vfs: int) -> list[Port]:
    ports: list[Port] = []
    try:
        for i in range(num_vfs):
            rep, vf = f"{name}r{i}", f"{name}v{i}"
            rep_fd = open_tap(rep)
            try:
                vf_fd = open_tap(vf)
            except OSError:
                os.close(rep_fd)
                raise
            ports.append(Port(i, rep, socket.if_nametoindex(rep), rep_fd, vf, vf_fd))
            set_up(rep)
    except BaseException:
        close_ports(ports)
        raise
    return ports


def close_ports(ports: list[Port]) -> None:
    for port in ports:
        os.close(port.rep_fd)
        os.close(port.vf_fd)


@dataclasses.dataclass
class TunnelDevice:
    kind: str  # "vxlan" | "geneve"
    netdev: str
    ifindex: int
    fd: int
    dst_port: int

    def status(self) -> dict[str, object]:
        return {"type": self.kind, "netdev": self.netdev, "ifindex": self.ifindex, "dst_port": self.dst_port}


@dataclasses.dataclass
class Uplink:
    """Physical port ``port``: its wire (a packet socket; any datagram socket in tests), uplink representor and,
    on the port carrying the underlay, the tunnel devices."""

    representor: str
    representor_ifindex: int
    rep_fd: int
    wire: str
    wire_sock: socket.socket
    mac: bytes
    tunnels: list[TunnelDevice]
    port: int = 0

    def status(self) -> dict[str, object]:
        return {"port": self.port, "representor": self.representor, "representor_ifindex": self.representor_ifindex,
                "wire": self.wire, "mac": self.mac.hex(":")}

    @property
    def ifindexes(self) -> list[int]:
        return [self.representor_ifindex, *(t.ifindex for t in self.tunnels)]


TUNNEL_SUFFIXES = {tunnel.VXLAN: "vx", tunnel.GENEVE: "gn"}
UPLINK_SUFFIX = "p"


def uplink_representor(name: str, port: int = 0) -> str:
    """Port 0's uplink representor is ``{name}p``, port i's ``{name}p{i}``."""
    return f"{name}{UPLINK_SUFFIX}{port or ''}"


def uplink_names(name: str, ports: int = 1) -> list[str]:
    """The devices ``ports`` ``--wire``s add: each port's uplink representor, port 0's tunnel devices."""
    return [*(uplink_representor(name, i) for i in range(ports)), *(f"{name}{s}" for s in TUNNEL_SUFFIXES.values())]


def uplink_mac(name: str, port: int = 0) -> bytes:
    """A locally administered unicast MAC, stable across restarts (a NIC's port keeps its address), one per port.

    Port 0's is derived from the name alone, as before there was a port 1; port i's also from i (a netdev name
    cannot hold the ``:`` that separates them, so no other NIC's port 0 gets it).
    """
    seed = f"hwflow-simnic-uplink:{name}" + (f":{port}" if port else "")
    digest = bytearray(hashlib.sha256(seed.encode()).digest()[:6])
    digest[0] = digest[0] & 0xFC | 0x02
    return bytes(digest)


def open_wire(device: str) -> socket.socket:
    """A nonblocking raw packet socket on ``device`` seeing every frame (promiscuous), as a port's PHY.

    The device is set up first: a packet socket bound to a down device starts with an ENETDOWN error.
    The kernel takes a received frame's VLAN tag out into metadata: the socket asks for it (PACKET_AUXDATA)
    and :func:`with_vlan_tag` puts it back.
    Frames are taken as the device hands them over: a peer whose kernel sends with checksum or segmentation
    offload (a veth's default) should have it off (``ethtool -K PEER tx off tso off gso off``); frames other
    simulated NICs write are always whole.
    """
    ifindex = socket.if_nametoindex(device)
    set_up(device)
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC, 0)
    try:  # protocol 0 until bound: no frame of another device slips in between
        sock.bind((device, ETH_P_ALL))
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, struct.pack("iHH8s", ifindex, PACKET_MR_PROMISC, 0, b""))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
    except OSError:
        sock.close()
        raise
    return sock


def with_vlan_tag(frame: bytes, ancdata: list[tuple[int, int, bytes]]) -> bytes:
    """``frame`` as it was on the wire: the VLAN tag a packet socket's PACKET_AUXDATA reports put back after the
    MAC addresses (as libpcap does); the frame unchanged without one."""
    for level, kind, data in ancdata:
        if level == SOL_PACKET and kind == PACKET_AUXDATA and len(data) >= _AUXDATA.size:
            status, _, _, _, _, tci, tpid = _AUXDATA.unpack_from(data)
            if status & TP_STATUS_VLAN_VALID and len(frame) >= 12:
                tpid = tpid if status & TP_STATUS_VLAN_TPID_VALID else ETH_P_8021Q
                return frame[:12] + struct.pack("!HH", tpid, tci) + frame[12:]
    return frame


def create_uplink(name: str, wire: str, port: int = 0) -> Uplink:
    """Port ``port``: the wire's socket, the uplink representor and, on port 0, the tunnel devices (TAPs at MTU
    9000, up)."""
    wire_sock = open_wire(wire)
    fds: list[int] = []
    try:
        rep = uplink_representor(name, port)
        fds.append(open_tap(rep))
        mac = uplink_mac(name, port)
        set_mac(rep, mac)
        tunnels = []
        for kind, suffix in (TUNNEL_SUFFIXES.items() if port == 0 else ()):
            netdev = f"{name}{suffix}"
            fds.append(open_tap(netdev))
            tunnels.append(TunnelDevice(kind, netdev, socket.if_nametoindex(netdev), fds[-1], tunnel.DST_PORTS[kind]))
        for netdev in (rep, *(t.netdev for t in tunnels)):
            set_mtu(netdev, WIRE_MTU)
            set_up(netdev)
        return Uplink(rep, socket.if_nametoindex(rep), fds[0], wire, wire_sock, mac, tunnels, port)
    except BaseException:
        for fd in fds:
            os.close(fd)
        wire_sock.close()
        raise


def close_uplink(uplink: Uplink | None) -> None:
    if uplink is not None:
        os.close(uplink.rep_fd)
        for device in uplink.tunnels:
            os.close(device.fd)
        uplink.wire_sock.close()


def close_uplinks(uplinks: Sequence[Uplink]) -> None:
    for uplink in uplinks:
        close_uplink(uplink)


@dataclasses.dataclass
class Counters:
    hw_forwarded: int = 0
    hw_dropped: int = 0
    to_representor: int = 0
    to_vf: int = 0
    write_errors: int = 0
    unsupported: int = 0  # frames a rule sent to software because it has an action the sim cannot perform
    encapsulated: int = 0
    decapsulated: int = 0  # tunnel packets a rule took (their inner frame went on in hardware)
    encap_neigh_miss: int = 0  # frames an encap rule sent to software: the remote VTEP's MAC was not known yet
    from_wire: int = 0  # the counters of the wires are of all ports together
    to_wire: int = 0
    to_uplink: int = 0  # frames from a wire that went up its uplink representor (software)
    arp_requests: int = 0


class _Unsupported(Exception):
    """An action this frame cannot have in the sim's hardware: the frame goes to software as it came."""


@dataclasses.dataclass
class _Source:
    """Where a frame entered, for the actions' sake: what software gets of it and how that is counted."""

    software_fd: int
    original: bytes
    counter: str  # the Counters field a frame handed to software moves
    on_pass: Callable[[bytes], bytes] | None = None  # what software gets for a pass (else the frame as it is)


class DataPlane:
    """The VFs' ports and the physical ports (``uplinks``, port 0 first) around ``eswitch``."""

    def __init__(self, eswitch: Eswitch, ports: list[Port], uplinks: Sequence[Uplink] = (),
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.eswitch = eswitch
        self.ports = ports
        self.uplinks = list(uplinks)
        self.counters = Counters()
        self.neighbours = tunnel.Neighbours()  # the underlay's: learnt on the wire of the port with the tunnels
        self._clock = clock
        self._vf_by_rep_ifindex = {p.representor_ifindex: p for p in ports}
        self._uplink_by_rep_ifindex = {u.representor_ifindex: u for u in self.uplinks}
        self._underlay = next((u for u in self.uplinks if u.tunnels), None)
        tunnels = self._underlay.tunnels if self._underlay else []
        self._tunnels = {t.ifindex: t for t in tunnels}
        self._tunnel_ports = {t.dst_port: t.kind for t in tunnels}
        self._tunnel_by_port = {t.dst_port: t for t in tunnels}

    # --- sources -----------------------------------------------------------------

    def from_vf(self, port: Port) -> None:
        """A frame the VM sent: eswitch rules first (rewrites applied in order), the representor on a miss."""
        frame = _read(port.vf_fd)
        if frame is None:
            return
        actions = self.eswitch.classify(port.representor_ifindex, frame)
        self.execute(actions, frame, _Source(port.rep_fd, frame, "to_representor"))

    def from_representor(self, port: Port) -> None:
        frame = _read(port.rep_fd)
        if frame is not None:
            self._write(port.vf_fd, frame)
            self.counters.to_vf += 1

    def from_wire(self, uplink: Uplink) -> None:
        """A frame from ``uplink``'s wire: on the underlay's, a tunnel packet for a tunnel device's rules; anything
        else for the rules of ``uplink``'s representor."""
        frame = self._read_wire(uplink)
        if frame is None:
            return
        self.counters.from_wire += 1
        if uplink is self._underlay:
            self.neighbours.learn(frame)
            decap = tunnel.parse(frame, self._tunnel_ports)
            if decap is not None:
                device = self._tunnel_by_port[decap.dst_port]
                actions = self.eswitch.classify(device.ifindex, decap.inner, decap.meta())
                source = _Source(uplink.rep_fd, frame, "to_uplink",
                                 lambda inner: frame if inner == decap.inner else tunnel.rewrap(frame, decap, inner))
                if self.execute(actions, decap.inner, source):
                    self.counters.decapsulated += 1
                return
        actions = self.eswitch.classify(uplink.representor_ifindex, frame)
        self.execute(actions, frame, _Source(uplink.rep_fd, frame, "to_uplink"))

    def from_uplink_representor(self, uplink: Uplink) -> None:
        """What the host sends out of a physical port goes on its wire unchanged (on the underlay's, its ARP
        teaches neighbours)."""
        frame = _read(uplink.rep_fd)
        if frame is not None:
            if uplink is self._underlay:
                self.neighbours.learn(frame)
            self._to_wire(uplink, frame)

    def from_tunnel_device(self, device: TunnelDevice) -> None:
        """Tunnel devices carry no traffic: what the host sends into one is dropped (drained so it cannot pile up)."""
        _read(device.fd)

    # --- actions -----------------------------------------------------------------

    def execute(self, actions: list[fl.FlowerAction] | None, frame: bytes, source: _Source) -> bool:
        """Carry out a rule's actions on ``frame``; True when the hardware handled it (not software, not dropped).

        A miss, a ``pass`` and an action the sim cannot do hand the frame to
        ``source``'s software path: the original frame for a miss or an
        unsupported action, the frame as rewritten so far for a pass (as tc
        hands the stack a packet its pedits changed).
        """
        if actions is None:
            self._software(source, source.original)
            return False
        encap: fl.TunnelKey | None = None
        try:
            for action in actions:
                if isinstance(action, fl.Mirred):
                    self._mirred(action, frame, encap)
                elif isinstance(action, fl.Gact):
                    if action.verdict == "drop":
                        self.counters.hw_dropped += 1
                        return False
                    self._software(source, source.on_pass(frame) if source.on_pass else frame)
                    return False
                elif isinstance(action, fl.TunnelKey):
                    if action.unset:
                        encap = None  # the metadata of a decapsulated packet is released: nothing to do to the frame
                    elif action.ipv4_dst is None or action.ipv4_src is None:
                        raise _Unsupported("tunnel_key set without IPv4 endpoints")
                    else:
                        encap = action
                else:
                    rewritten = rewrite(action, frame)
                    if rewritten is None:  # ct: software gets the frame as it came
                        raise _Unsupported(type(action).__name__)
                    frame = rewritten
        except _Unsupported as exc:
            LOG.debug("simnic %s: to software: %s", self.eswitch.name, exc)
            self._software(source, source.original)
            self.counters.unsupported += 1
            return False
        except _NeighMiss as miss:
            self._software(source, source.original)
            self.counters.encap_neigh_miss += 1
            self._ask(miss.action)
            return False
        return True

    def _mirred(self, action: fl.Mirred, frame: bytes, encap: fl.TunnelKey | None) -> None:
        target = self._vf_by_rep_ifindex.get(action.ifindex)
        if target is not None:  # egress out of representor j reaches VF j; ingress reaches the host
            self._write(target.vf_fd if action.egress else target.rep_fd, frame)
            self.counters.hw_forwarded += 1
            return
        uplink = self._uplink_by_rep_ifindex.get(action.ifindex)
        if uplink is not None:  # egress out of an uplink representor is out of its wire; ingress reaches the host
            if action.egress:
                self._to_wire(uplink, frame)
            else:
                self._write(uplink.rep_fd, frame)
            self.counters.hw_forwarded += 1
            return
        device = self._tunnels.get(action.ifindex)
        if device is None or not action.egress:
            raise _Unsupported(f"mirred {'egress' if action.egress else 'ingress'} to ifindex {action.ifindex}")
        if encap is None:
            raise _Unsupported(f"redirect to tunnel device {device.netdev} without a tunnel_key set")
        assert self._underlay is not None
        self._to_wire(self._underlay, self._encapsulate(device, encap, frame))
        self.counters.encapsulated += 1
        self.counters.hw_forwarded += 1

    def _encapsulate(self, device: TunnelDevice, key: fl.TunnelKey, inner: bytes) -> bytes:
        assert self._underlay is not None and key.ipv4_src is not None and key.ipv4_dst is not None
        eth_dst = self.neighbours.lookup(key.ipv4_dst)
        if eth_dst is None:
            raise _NeighMiss(key)
        if key.geneve_opts and device.kind != tunnel.GENEVE:
            raise _Unsupported(f"geneve options on a {device.kind} tunnel")
        options = tunnel.geneve_options(tuple((o.opt_class, o.opt_type, o.data) for o in key.geneve_opts))
        return tunnel.encapsulate(
            inner, kind=device.kind, vni=key.key_id or 0, ipv4_src=key.ipv4_src, ipv4_dst=key.ipv4_dst,
            eth_src=self.neighbours.lookup(key.ipv4_src) or self._underlay.mac, eth_dst=eth_dst,
            dst_port=key.dst_port or device.dst_port, tos=key.tos or 0,
            ttl=tunnel.DEFAULT_TTL if key.ttl is None else key.ttl, csum=key.csum, options=options)

    def _ask(self, key: fl.TunnelKey) -> None:
        """One ARP request on the underlay for the remote VTEP, from the local VTEP's address, at most once a second."""
        assert self._underlay is not None and key.ipv4_src is not None and key.ipv4_dst is not None
        if self.neighbours.should_ask(key.ipv4_dst, self._clock()):
            src_mac = self.neighbours.lookup(key.ipv4_src) or self._underlay.mac
            self._to_wire(self._underlay, tunnel.arp_request(src_mac, key.ipv4_src, key.ipv4_dst))
            self.counters.arp_requests += 1

    # --- I/O ---------------------------------------------------------------------

    def _software(self, source: _Source, frame: bytes) -> None:
        self._write(source.software_fd, frame)
        setattr(self.counters, source.counter, getattr(self.counters, source.counter) + 1)

    def _to_wire(self, uplink: Uplink, frame: bytes) -> None:
        try:
            uplink.wire_sock.send(frame)
        except OSError as exc:  # EMSGSIZE past the wire's MTU, ENOBUFS, the wire gone: lost, as on a wire
            self.counters.write_errors += 1
            LOG.debug("simnic %s: frame lost on wire %s: %s", self.eswitch.name, uplink.wire, exc)
            return
        self.counters.to_wire += 1

    def _read_wire(self, uplink: Uplink) -> bytes | None:
        """The next frame ``uplink``'s wire received, its VLAN tag back in place (its socket also sees what we send:
        PACKET_OUTGOING, skipped)."""
        while True:
            try:
                frame, ancdata, _, address = uplink.wire_sock.recvmsg(MAX_FRAME, AUXDATA_SPACE)
            except (BlockingIOError, InterruptedError):
                return None
            except OSError as exc:  # ENETDOWN once when the wire went down: reported, then frames flow again
                LOG.info("simnic %s: wire %s: %s", self.eswitch.name, uplink.wire, exc)
                return None
            if not (isinstance(address, tuple) and len(address) > 2 and address[2] == PACKET_OUTGOING):
                return with_vlan_tag(frame, ancdata)

    def _write(self, fd: int, frame: bytes) -> None:
        try:
            os.write(fd, frame)
        except OSError as exc:  # e.g. EIO while the VF is down: the frame is lost, as on a wire
            self.counters.write_errors += 1
            LOG.debug("simnic %s: frame lost: %s", self.eswitch.name, exc)


class _NeighMiss(Exception):
    """The encap rule's remote VTEP has no neighbour entry yet."""

    def __init__(self, action: fl.TunnelKey) -> None:
        super().__init__(f"no neighbour for {action.ipv4_dst}")
        self.action = action


def _read(fd: int) -> bytes | None:
    try:
        return os.read(fd, MAX_FRAME)
    except (BlockingIOError, InterruptedError):
        return None
