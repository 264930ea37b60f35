"""hwflow-simnic with physical ports (--wire): real encapsulation onto a veth, a remote VTEP answering ARP, decap;
a second port carrying a provider VLAN.

Port 0's wire is one end of a veth; the other end sits in a "remote"
namespace with 192.0.2.2/24 (its kernel answers the sim's ARP request).
Port 1's wire (when asked for) is another veth to a second remote namespace.
The test reads and writes raw frames in every namespace with packet
sockets, so every byte on the wires is checked.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.transport import SimSocketTransport, TcClient
from hwflow.sim.dataplane import AUXDATA_SPACE, PACKET_AUXDATA, SOL_PACKET, with_vlan_tag
from hwflow.util.checksum import internet_checksum

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]
LOCAL, REMOTE = "192.0.2.1", "192.0.2.2"
VF_MAC, PEER_MAC = "02:78:00:00:00:01", "02:78:00:00:00:02"
CLONE_NEWNET = 0x40000000
ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(args), check=False, capture_output=True, text=True, timeout=60)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr}{done.stdout}")
    return done


def ip(ns: str, *args: str) -> subprocess.CompletedProcess:
    return run("ip", "-n", ns, *args)


def link(ns: str, dev: str) -> dict:
    return json.loads(ip(ns, "-j", "link", "show", dev).stdout)[0]


def packet_socket(ns: str, dev: str) -> socket.socket:
    """A raw packet socket on ``dev`` in namespace ``ns``, made from a thread that entered it (the test's stays)."""
    made: dict[str, object] = {}

    def enter() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(f"/var/run/netns/{ns}", os.O_RDONLY)
            try:
                if libc.setns(fd, CLONE_NEWNET):
                    raise OSError(ctypes.get_errno(), f"setns into {ns}")
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            sock.bind((dev, ETH_P_ALL))
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)  # the kernel takes VLAN tags out: put them back
            sock.settimeout(0.1)
            made["sock"] = sock
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread
            made["error"] = exc

    thread = threading.Thread(target=enter)
    thread.start()
    thread.join()
    if "error" in made:
        raise made["error"]  # type: ignore[misc]
    return made["sock"]  # type: ignore[return-value]


def received(sock: socket.socket, wanted: Callable[[bytes], bool], timeout: float = 3.0) -> bytes | None:
    """The first frame ``sock``'s device received (not sent), VLAN tag in place, that ``wanted`` accepts, within
    ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            frame, ancdata, _, address = sock.recvmsg(65535, AUXDATA_SPACE)
        except TimeoutError:
            continue
        frame = with_vlan_tag(frame, ancdata)
        if address[2] != PACKET_OUTGOING and wanted(frame):
            return frame
    return None


def drain(sock: socket.socket) -> None:
    while received(sock, lambda _: True, 0.2) is not None:
        pass


def is_vxlan(frame: bytes) -> bool:
    pkt = Ether(frame)
    return UDP in pkt and pkt[UDP].dport == 4789


def inner(dst: str = "10.0.0.2", payload: bytes = b"hello over the wire") -> bytes:
    return bytes(Ether(src=VF_MAC, dst=PEER_MAC) / IP(src="10.0.0.1", dst=dst) / UDP(sport=1111, dport=2222)
                 / payload)


class Rig:
    def __init__(self, workdir: Path) -> None:
        suffix = secrets.token_hex(2)
        self.host, self.remote = f"hwt-upl-h-{suffix}", f"hwt-upl-r-{suffix}"
        self.name, self.wire, self.peer = f"hwtu{suffix}", f"hwtw{suffix}", f"hwtr{suffix}"
        self.remote1, self.wire1, self.peer1 = f"hwt-upl-s-{suffix}", f"hwtx{suffix}", f"hwts{suffix}"  # port 1
        self.socket = str(workdir / f"nic{suffix}")
        self.log = workdir / f"nic{suffix}.log"
        self.proc: subprocess.Popen | None = None
        self.sockets: list[socket.socket] = []
        self.status: dict = {}

    def make_namespaces(self) -> None:
        for ns in (self.host, self.remote, self.remote1):
            run("ip", "netns", "add", ns)
            run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1")
            ip(ns, "link", "set", "lo", "up")
        for wire, peer, remote in ((self.wire, self.peer, self.remote), (self.wire1, self.peer1, self.remote1)):
            ip(self.host, "link", "add", wire, "mtu", "9000", "type", "veth", "peer", "name", peer, "netns", remote)
            ip(remote, "link", "set", peer, "mtu", "9000", "up")
        ip(self.remote, "addr", "add", f"{REMOTE}/24", "dev", self.peer)  # port 1's remote has no address: L2 only

    def start(self, profile: str = "mlx5-connectx6dx", wires: int = 1) -> None:
        with self.log.open("w") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.host, sys.executable, "-m", "hwflow.sim.server", "--name", self.name,
                 "--num-vfs", "1", "--socket", self.socket, "--profile", profile,
                 *(arg for wire in (self.wire, self.wire1)[:wires] for arg in ("--wire", wire)),
                 "--log-level", "DEBUG"],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
        status = Path(self.socket + ".json")
        deadline = time.monotonic() + 20
        while not status.exists():
            assert self.proc.poll() is None, f"hwflow-simnic exited {self.proc.returncode}: {self.output()}"
            assert time.monotonic() < deadline, f"hwflow-simnic did not come up: {self.output()}"
            time.sleep(0.05)
        self.status = json.loads(status.read_text())

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()

    def sock(self, ns: str, dev: str) -> socket.socket:
        self.sockets.append(packet_socket(ns, dev))
        return self.sockets[-1]

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()
        self.stop()
        for ns in (self.host, self.remote, self.remote1):
            run("ip", "netns", "del", ns, check=False)


@pytest.fixture
def rig() -> Iterator[Rig]:
    workdir = Path(tempfile.mkdtemp(prefix="hwt-upl-"))  # short: AF_UNIX paths are limited to 108 bytes
    made = Rig(workdir)
    try:
        made.make_namespaces()
        yield made
    finally:
        made.close()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("wires", [1, 2])
def test_status_names_the_uplinks_and_tunnel_devices(rig: Rig, wires: int) -> None:
    rig.start(wires=wires)
    uplinks, tunnels = rig.status["uplinks"], rig.status["tunnels"]
    assert "uplink" not in rig.status
    assert [(u["port"], u["representor"], u["wire"]) for u in uplinks] == [
        (0, f"{rig.name}p", rig.wire), (1, f"{rig.name}p1", rig.wire1)][:wires]
    assert len({u["mac"] for u in uplinks}) == wires
    for uplink in uplinks:
        rep = link(rig.host, uplink["representor"])
        assert rep["ifindex"] == uplink["representor_ifindex"] and rep["address"] == uplink["mac"]
    assert [(t["type"], t["netdev"], t["dst_port"]) for t in tunnels] == [
        ("vxlan", f"{rig.name}vx", 4789), ("geneve", f"{rig.name}gn", 6081)]
    for dev, ifindex in [*((u["representor"], u["representor_ifindex"]) for u in uplinks),
                         *((t["netdev"], t["ifindex"]) for t in tunnels)]:
        got = link(rig.host, dev)
        assert (got["ifindex"], got["mtu"], "UP" in got["flags"]) == (ifindex, 9000, True)


@pytest.mark.parametrize("wires", [1, 2])
def test_encap_to_a_remote_vtep_after_arp_and_decap_to_the_vf(rig: Rig, wires: int) -> None:
    """Port 0 carries the tunnels, whether or not there is a port 1 (which sees none of it)."""
    rig.start(wires=wires)
    port = rig.status["ports"][0]
    vx = rig.status["tunnels"][0]["ifindex"]
    uplink_mac = rig.status["uplinks"][0]["mac"]
    remote_mac = link(rig.remote, rig.peer)["address"]
    ip(rig.host, "link", "set", port["vf_netdev"], "up")
    vf = rig.sock(rig.host, port["vf_netdev"])
    rep = rig.sock(rig.host, port["representor"])
    up = rig.sock(rig.host, rig.status["uplinks"][0]["representor"])
    remote = rig.sock(rig.remote, rig.peer)
    remote1 = rig.sock(rig.remote1, rig.peer1)
    encap = fl.FlowerRule(port["representor_ifindex"], 10, 1, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=0x0A000002), (
        fl.TunnelKey(ipv4_src=0xC0000201, ipv4_dst=0xC0000202, key_id=42, dst_port=4789), fl.Mirred(vx)))
    decap = fl.FlowerRule(vx, 10, 1, fl.ETH_P_IP, fl.FlowerKeys(enc_key_id=42, enc_ipv4_dst=0xC0000201,
                                                                enc_dst_port=4789), (
        fl.TunnelKey(unset=True), fl.Mirred(port["representor_ifindex"])))
    tc = TcClient(SimSocketTransport(rig.socket), timeout=5.0)
    try:
        assert tc.add([encap, decap]) == [None, None], rig.output()

        # the first frame: no neighbour for 192.0.2.2 -> software gets it, the sim asks on the wire
        vf.send(inner())
        assert received(rep, lambda f: f == inner()) is not None, rig.output()
        request = received(remote, lambda f: ARP in Ether(f))
        assert request is not None, rig.output()
        arp = Ether(request)[ARP]
        assert (arp.op, arp.psrc, arp.pdst, arp.hwsrc) == (1, LOCAL, REMOTE, uplink_mac)

        # the remote kernel answered; the next frames are encapsulated in the NIC
        outer = None
        for _ in range(20):
            vf.send(inner())
            outer = received(remote, is_vxlan, 0.25)
            if outer is not None:
                break
        assert outer is not None, rig.output()
        pkt = Ether(outer)
        assert (pkt.src, pkt.dst) == (uplink_mac, remote_mac)
        assert (pkt[IP].src, pkt[IP].dst, pkt[IP].ttl, pkt[IP].flags) == (LOCAL, REMOTE, 64, "DF")
        assert internet_checksum(outer[14:34]) == 0
        assert 32768 <= pkt[UDP].sport < 61000 and pkt[UDP].dport == 4789
        assert pkt[VXLAN].vni == 42 and bytes(pkt[VXLAN].payload) == inner()

        # decap: VNI 42 to the VF, VNI 43 (no rule) up the uplink representor whole
        drain(vf)
        drain(up)
        back = inner("10.0.0.1", b"and back")
        back = bytes(Ether(src=PEER_MAC, dst=VF_MAC) / Ether(back)[IP])

        def vxlan(vni: int) -> bytes:
            return bytes(Ether(src=remote_mac, dst=uplink_mac) / IP(src=REMOTE, dst=LOCAL, flags="DF")
                         / UDP(sport=50000, dport=4789) / VXLAN(vni=vni) / back)

        remote.send(vxlan(42))
        assert received(vf, lambda f: f == back) is not None, rig.output()
        remote.send(vxlan(43))
        assert received(up, lambda f: f == vxlan(43)) is not None, rig.output()
        assert received(vf, lambda f: f == back, 0.5) is None
        assert received(remote1, lambda _: True, 0.2) is None  # nothing of the underlay on port 1's wire

        stats = {ifindex: [s.packets for _, s in tc.dump(ifindex)] for ifindex in (port["representor_ifindex"], vx)}
    finally:
        tc.close()
    assert stats[port["representor_ifindex"]][0] >= 2 and stats[vx] == [1], stats
    assert rig.stop() == 0
    counters = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", rig.output().rsplit("stopped", 1)[1]))
    assert counters["encap_neigh_miss"] >= 1 and counters["encapsulated"] >= 1, counters
    assert counters["decapsulated"] == 1 and counters["arp_requests"] >= 1 and counters["to_uplink"] >= 1, counters


def test_host_frames_go_out_their_ports_wire_unchanged(rig: Rig) -> None:
    rig.start(wires=2)
    up0, up1 = (rig.sock(rig.host, u["representor"]) for u in rig.status["uplinks"])
    remote0, remote1 = rig.sock(rig.remote, rig.peer), rig.sock(rig.remote1, rig.peer1)
    frame = bytes(Ether(src="02:78:00:00:00:aa", dst="02:78:00:00:00:bb", type=0x88B5) / (b"x" * 3000))
    up0.send(frame)
    assert received(remote0, lambda f: f == frame) is not None, rig.output()
    frame1 = frame[:14] + b"y" * 3000
    up1.send(frame1)
    assert received(remote1, lambda f: f == frame1) is not None, rig.output()
    assert received(remote0, lambda f: f == frame1, 0.3) is None and received(remote1, lambda f: f == frame, 0) is None


def test_a_provider_vlan_on_port_1_both_ways_and_a_miss_up_its_representor(rig: Rig) -> None:
    """VF0 -> vlan push 100 -> port 1's wire; tagged from port 1's wire -> vlan pop -> VF0; the rest up NAMEp1."""
    rig.start(wires=2)
    port = rig.status["ports"][0]
    uplink0, uplink1 = rig.status["uplinks"]
    ip(rig.host, "link", "set", port["vf_netdev"], "up")
    vf = rig.sock(rig.host, port["vf_netdev"])
    up0, up1 = rig.sock(rig.host, uplink0["representor"]), rig.sock(rig.host, uplink1["representor"])
    remote0, remote1 = rig.sock(rig.remote, rig.peer), rig.sock(rig.remote1, rig.peer1)
    out = fl.FlowerRule(port["representor_ifindex"], 10, 1, fl.ETH_P_IP, fl.FlowerKeys(), (
        fl.Vlan("push", 100), fl.Mirred(uplink1["representor_ifindex"])))
    back = fl.FlowerRule(uplink1["representor_ifindex"], 10, 1, fl.ETH_P_8021Q, fl.FlowerKeys(vlan_id=100), (
        fl.Vlan("pop"), fl.Mirred(port["representor_ifindex"])))
    tc = TcClient(SimSocketTransport(rig.socket), timeout=5.0)
    try:
        assert tc.add([out, back]) == [None, None], rig.output()
        drain(remote0)
        drain(remote1)

        vf.send(inner())
        tagged = received(remote1, lambda f: Dot1Q in Ether(f))
        assert tagged is not None, rig.output()
        pkt = Ether(tagged)
        assert pkt[Dot1Q].vlan == 100 and bytes(pkt[Dot1Q].payload) == inner()[14:] and tagged[:12] == inner()[:12]
        assert received(remote0, lambda f: f[:12] == inner()[:12], 0.3) is None  # nothing of it on port 0's wire

        answer = bytes(Ether(src=PEER_MAC, dst=VF_MAC) / IP(src="10.0.0.2", dst="10.0.0.1") / UDP(sport=2222,
                                                                                                  dport=1111) / b"hi")
        remote1.send(bytes(Ether(src=PEER_MAC, dst=VF_MAC) / Dot1Q(vlan=100) / Ether(answer).payload))
        assert received(vf, lambda f: f == answer) is not None, rig.output()

        unmatched = bytes(Ether(src=PEER_MAC, dst=VF_MAC) / Dot1Q(vlan=200) / Ether(answer).payload)
        remote1.send(unmatched)
        assert received(up1, lambda f: f == unmatched) is not None, rig.output()
        assert received(up0, lambda f: f == unmatched, 0.3) is None
        assert received(vf, lambda f: f[12:14] == b"\x81\x00" or f == answer, 0.3) is None

        stats = {i: [s.packets for _, s in tc.dump(i)] for i in (port["representor_ifindex"],
                                                                   uplink1["representor_ifindex"])}
    finally:
        tc.close()
    assert stats == {port["representor_ifindex"]: [1], uplink1["representor_ifindex"]: [1]}, stats
