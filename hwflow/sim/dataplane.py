"""The simulated NIC's data plane: TAP pairs (representor, VF) and the eswitch between them.

Each VF is a TAP device the harness moves into a VM's namespace (its file
descriptor keeps working after the move); its representor is a TAP device
that stays in the host namespace for Open vSwitch. Frames from a VF go
through the eswitch rules; a miss goes up the representor, as on a
switchdev NIC. Frames sent out of a representor go to its VF.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import os
import socket
import struct

from hwflow.backends.tc import flower as fl
from hwflow.sim.eswitch import Eswitch, rewrite

LOG = logging.getLogger(__name__)

# /usr/include/linux/if_tun.h and /usr/include/linux/sockios.h, /usr/include/linux/if.h
TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1
IFNAMSIZ = 16
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
class Counters:
    hw_forwarded: int = 0
    hw_dropped: int = 0
    to_representor: int = 0
    to_vf: int = 0
    write_errors: int = 0
    unsupported: int = 0  # frames a rule sent to software because it has an action the sim cannot perform


class DataPlane:
    def __init__(self, eswitch: Eswitch, ports: list[Port]) -> None:
        self.eswitch = eswitch
        self.ports = ports
        self.counters = Counters()
        self._vf_by_rep_ifindex = {p.representor_ifindex: p for p in ports}

    def from_vf(self, port: Port) -> None:
        """A frame the VM sent: eswitch rules first (rewrites applied in order), the representor on a miss."""
        original = frame = _read(port.vf_fd)
        if frame is None:
            return
        actions = self.eswitch.classify(port.representor_ifindex, frame)
        if actions is None:
            self._write(port.rep_fd, frame)
            self.counters.to_representor += 1
            return
        for action in actions:
            if isinstance(action, fl.Mirred):
                target = self._vf_by_rep_ifindex.get(action.ifindex)
                if target is not None:  # egress out of representor j reaches VF j; ingress reaches the host
                    self._write(target.vf_fd if action.egress else target.rep_fd, frame)
                    self.counters.hw_forwarded += 1
            elif isinstance(action, fl.Gact):
                if action.verdict == "drop":
                    self.counters.hw_dropped += 1
                else:
                    self._write(port.rep_fd, frame)
                    self.counters.to_representor += 1
            else:
                rewritten = rewrite(action, frame)
                if rewritten is None:  # tunnel_key, ct: software gets the frame as it came
                    self._write(port.rep_fd, original)
                    self.counters.to_representor += 1
                    self.counters.unsupported += 1
                    return
                frame = rewritten

    def from_representor(self, port: Port) -> None:
        frame = _read(port.rep_fd)
        if frame is not None:
            self._write(port.vf_fd, frame)
            self.counters.to_vf += 1

    def _write(self, fd: int, frame: bytes) -> None:
        try:
            os.write(fd, frame)
        except OSError as exc:  # e.g. EIO while the VF is down: the frame is lost, as on a wire
            self.counters.write_errors += 1
            LOG.debug("simnic %s: frame lost: %s", self.eswitch.name, exc)


def _read(fd: int) -> bytes | None:
    try:
        return os.read(fd, MAX_FRAME)
    except (BlockingIOError, InterruptedError):
        return None
