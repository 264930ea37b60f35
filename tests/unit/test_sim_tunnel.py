"""The simulated NIC's physical ports: the VXLAN/Geneve codec, the neighbour table, encap/decap in the data plane
(port 0) and port 1 beside it."""

from __future__ import annotations

import dataclasses
import socket
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.contrib.geneve import GENEVE
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import ARP, Dot1Q, Ether
from scapy.layers.vxlan import VXLAN

from hwflow.backends.tc import flower as fl
from hwflow.offload.capabilities import CHAIN_MISS_CONTINUE, CHAIN_MISS_RESTART
from hwflow.sim import dataplane, server, tunnel
from hwflow.sim.dataplane import DataPlane, Port, TunnelDevice, Uplink, close_ports
from hwflow.sim.eswitch import Eswitch
from hwflow.sim.profile import load_profile
from hwflow.util.checksum import internet_checksum

LOCAL, REMOTE = 0xC0000201, 0xC0000202  # 192.0.2.1, 192.0.2.2
LOCAL_MAC, REMOTE_MAC, UPLINK_MAC = bytes.fromhex("0200000000a1"), bytes.fromhex("0200000000b2"), b"\x02" * 6
VF_MAC, PEER_MAC = "02:00:00:00:00:01", "02:00:00:00:00:02"
REP0, REP1, UPLINK_REP, VX, GN, UPLINK1_REP = 101, 102, 110, 111, 112, 120
UPLINK1_MAC = b"\x02\x11" * 3


def inner_frame(dst: str = "10.0.0.2", sport: int = 1234) -> bytes:
    return bytes(Ether(src=VF_MAC, dst=PEER_MAC) / IP(src="10.0.0.1", dst=dst) / UDP(sport=sport, dport=53) / b"q")


geneve_opts = st.lists(st.tuples(st.integers(0, 0xFFFF), st.integers(0, 0xFF),
                                 st.integers(1, 8).flatmap(lambda n: st.binary(min_size=4 * n, max_size=4 * n))),
                       max_size=3).map(tuple)


@given(inner=st.binary(min_size=14, max_size=300), kind=st.sampled_from([tunnel.VXLAN, tunnel.GENEVE]),
       vni=st.integers(0, 2**24 - 1), src=st.integers(1, 2**32 - 1), dst=st.integers(1, 2**32 - 1),
       dst_port=st.none() | st.integers(1, 0xFFFF), tos=st.integers(0, 255), ttl=st.integers(1, 255),
       csum=st.booleans(), opts=geneve_opts)
def test_encapsulate_then_parse_gives_everything_back(inner: bytes, kind: str, vni: int, src: int, dst: int,
                                                     dst_port: int | None, tos: int, ttl: int, csum: bool,
                                                     opts: tuple) -> None:
    options = tunnel.geneve_options(opts) if kind == tunnel.GENEVE else b""
    outer = tunnel.encapsulate(inner, kind=kind, vni=vni, ipv4_src=src, ipv4_dst=dst, eth_src=LOCAL_MAC,
                               eth_dst=REMOTE_MAC, dst_port=dst_port, tos=tos, ttl=ttl, csum=csum, options=options)
    port = dst_port or tunnel.DST_PORTS[kind]
    got = tunnel.parse(outer, {port: kind})
    assert got is not None
    assert (got.kind, got.vni, got.ipv4_src, got.ipv4_dst, got.dst_port, got.tos, got.ttl, got.inner, got.options) == (
        kind, vni, src, dst, port, tos, ttl, inner, options)
    assert tunnel.SRC_PORT_MIN <= got.src_port < tunnel.SRC_PORT_MAX
    assert outer[:12] == REMOTE_MAC + LOCAL_MAC
    assert internet_checksum(outer[14:34]) == 0  # the IPv4 header checksum verifies
    ip = IP(outer[14:])
    assert (ip.flags, ip.id, ip.len) == ("DF", 0, len(outer) - 14)
    if csum:
        pseudo = struct.pack("!IIBBH", src, dst, 0, 17, len(outer) - 34)
        assert internet_checksum(pseudo + outer[34:]) == 0
    else:
        assert outer[40:42] == b"\0\0"
    assert tunnel.parse(outer, {port + 1 if port < 0xFFFF else 1: kind}) is None  # not a port of ours


def test_scapy_reads_what_the_sim_builds() -> None:
    inner = inner_frame()
    vx = Ether(tunnel.encapsulate(inner, kind=tunnel.VXLAN, vni=42, ipv4_src=LOCAL, ipv4_dst=REMOTE,
                                  eth_src=LOCAL_MAC, eth_dst=REMOTE_MAC, csum=True))
    assert vx[UDP].dport == 4789 and vx[VXLAN].vni == 42 and bytes(vx[VXLAN].payload) == inner
    assert vx[IP].src == "192.0.2.1" and vx[IP].ttl == 64 and vx[IP].tos == 0
    gn = Ether(tunnel.encapsulate(inner, kind=tunnel.GENEVE, vni=7, ipv4_src=LOCAL, ipv4_dst=REMOTE,
                                  eth_src=LOCAL_MAC, eth_dst=REMOTE_MAC,
                                  options=tunnel.geneve_options(((0x102, 0x80, b"abcd"),))))
    assert gn[UDP].dport == 6081 and gn[GENEVE].vni == 7 and gn[GENEVE].proto == 0x6558
    assert gn[GENEVE].optionlen == 2 and bytes(gn[GENEVE].payload) == inner
    # and the sim reads what scapy builds
    built = bytes(Ether() / IP(src="192.0.2.2", dst="192.0.2.1", flags="DF") / UDP(sport=5555, dport=4789)
                  / VXLAN(vni=42) / inner)
    got = tunnel.parse(built)
    assert got is not None and (got.vni, got.inner, got.src_port, got.ipv4_src) == (42, inner, 5555, REMOTE)


def test_the_source_port_follows_the_flow() -> None:
    ports = {tunnel.udp_src_port(inner_frame(sport=p)) for p in range(1000, 1100)}
    assert len(ports) > 80 and all(tunnel.SRC_PORT_MIN <= p < tunnel.SRC_PORT_MAX for p in ports)
    assert tunnel.udp_src_port(inner_frame()) == tunnel.udp_src_port(inner_frame())
    assert tunnel.SRC_PORT_MIN <= tunnel.udp_src_port(b"") < tunnel.SRC_PORT_MAX


VALID = tunnel.encapsulate(inner_frame(), kind=tunnel.GENEVE, vni=5, ipv4_src=REMOTE, ipv4_dst=LOCAL,
                           eth_src=REMOTE_MAC, eth_dst=LOCAL_MAC, options=tunnel.geneve_options(((1, 2, b"1234"),)))


@given(cut=st.integers(0, len(VALID) - 1))
def test_a_truncated_tunnel_packet_is_none(cut: int) -> None:
    assert tunnel.parse(VALID[:cut]) is None


@given(data=st.binary(max_size=200) | st.builds(lambda at, b: VALID[:at] + bytes([b]) + VALID[at + 1:],
                                                st.integers(0, len(VALID) - 1), st.integers(0, 255)))
def test_parse_never_raises(data: bytes) -> None:
    got = tunnel.parse(data)
    assert got is None or len(got.inner) >= 14


@pytest.mark.parametrize("broken", [
    lambda f: f[:14] + bytes([0x46]) + f[15:],  # IHL 6 with the old checksum
    lambda f: f[:24] + b"\0\0" + f[26:],  # a wrong header checksum
    lambda f: f[:12] + b"\x86\xdd" + f[14:],  # not IPv4
    lambda f: f[:42] + bytes([0x40]) + f[43:],  # Geneve version 1
    lambda f: f[:44] + b"\x08\x00" + f[46:],  # Geneve carrying IPv4, not Ethernet
    lambda f: f[:42] + bytes([0x3F]) + f[43:],  # options longer than the packet
])
def test_malformed_tunnel_packets_are_none(broken) -> None:
    assert tunnel.parse(VALID) is not None
    assert tunnel.parse(broken(VALID)) is None


def test_vxlan_without_the_i_flag_and_fragments_are_none() -> None:
    vx = tunnel.encapsulate(inner_frame(), kind=tunnel.VXLAN, vni=5, ipv4_src=REMOTE, ipv4_dst=LOCAL,
                            eth_src=REMOTE_MAC, eth_dst=LOCAL_MAC)
    assert tunnel.parse(vx) is not None
    assert tunnel.parse(vx[:42] + b"\0" + vx[43:]) is None
    fragment = bytearray(vx)
    fragment[20:22] = b"\x20\x00"  # MF
    fragment[24:26] = b"\0\0"
    fragment[24:26] = internet_checksum(bytes(fragment[14:34])).to_bytes(2, "big")
    assert tunnel.parse(bytes(fragment)) is None


def test_rewrap_carries_a_new_inner_frame_with_right_lengths_and_checksums() -> None:
    outer = tunnel.encapsulate(inner_frame(), kind=tunnel.VXLAN, vni=9, ipv4_src=REMOTE, ipv4_dst=LOCAL,
                               eth_src=REMOTE_MAC, eth_dst=LOCAL_MAC, csum=True) + b"\0" * 4  # padding
    decap = tunnel.parse(outer)
    assert decap is not None
    longer = inner_frame("10.0.0.9") + b"more"
    again = tunnel.rewrap(outer, decap, longer)
    got = tunnel.parse(again)
    assert got is not None and (got.inner, got.vni, got.src_port) == (longer, 9, decap.src_port)
    assert internet_checksum(again[14:34]) == 0
    pseudo = struct.pack("!IIBBH", REMOTE, LOCAL, 0, 17, len(again) - 34)
    assert internet_checksum(pseudo + again[34:]) == 0


def test_neighbours_learn_from_arp_senders_and_ask_at_most_once_a_second() -> None:
    table = tunnel.Neighbours()
    reply = bytes(Ether(src="02:00:00:00:00:b2", dst="02:00:00:00:00:a1") / ARP(
        op=2, hwsrc="02:00:00:00:00:b2", psrc="192.0.2.2", hwdst="02:00:00:00:00:a1", pdst="192.0.2.1"))
    probe = bytes(Ether(src="02:00:00:00:00:c3", dst="ff:ff:ff:ff:ff:ff") / ARP(
        op=1, hwsrc="02:00:00:00:00:c3", psrc="0.0.0.0", pdst="192.0.2.3"))
    tagged = bytes(Ether(src="02:00:00:00:00:c3") / Dot1Q(vlan=5) / ARP(hwsrc="02:00:00:00:00:c3", psrc="192.0.2.4"))
    assert [table.learn(f) for f in (reply, probe, tagged, inner_frame(), b"")] == [True, False, False, False, False]
    assert table.lookup(REMOTE) == REMOTE_MAC and table.lookup(0xC0000203) is None and len(table) == 1
    assert [table.should_ask(LOCAL, t) for t in (10.0, 10.5, 11.0, 11.2)] == [True, False, True, False]
    request = tunnel.arp_request(LOCAL_MAC, LOCAL, REMOTE)
    arp = Ether(request)[ARP]
    assert len(request) == 60 and Ether(request).dst == "ff:ff:ff:ff:ff:ff"
    assert (arp.op, arp.psrc, arp.pdst, arp.hwsrc) == (1, "192.0.2.1", "192.0.2.2", LOCAL_MAC.hex(":"))
    assert tunnel.arp_sender(request) == (LOCAL, LOCAL_MAC)


# --- the data plane with a physical port (socketpairs for TAPs and the wire) -------------------------------


class Rig:
    """A DataPlane with two VFs and port 0's uplink (with ``wires=2`` port 1's too) whose devices are socketpair
    ends; the test holds the other ends."""

    def __init__(self, profile: str = "mlx5-connectx6dx", wires: int = 1, **replace) -> None:
        prof = load_profile(profile)
        if replace:
            prof = dataclasses.replace(prof, capabilities=dataclasses.replace(prof.capabilities, **replace))
        self.now = 100.0
        self.sw = Eswitch("sim0", prof, [REP0, REP1, UPLINK_REP, VX, GN, *([UPLINK1_REP] if wires > 1 else [])],
                          clock=lambda: self.now)
        self.ours: list[socket.socket] = []
        self.ports = []
        for i in range(2):
            vf, rep = self.pair(), self.pair()
            self.ports.append(Port(i, f"r{i}", REP0 + i, rep, f"v{i}", vf))
        self.vf = self.ours[0::2]
        self.rep = self.ours[1::2]
        uplink_rep, tunnel_fds = self.pair(), [self.pair(), self.pair()]
        wire, self.wire = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        wire.setblocking(False)
        self.wire.setblocking(False)
        self.uplink_rep = self.ours[4]
        self.uplink = Uplink("sim0p", UPLINK_REP, uplink_rep, "wire0", wire, UPLINK_MAC, [
            TunnelDevice(tunnel.VXLAN, "sim0vx", VX, tunnel_fds[0], 4789),
            TunnelDevice(tunnel.GENEVE, "sim0gn", GN, tunnel_fds[1], 6081)])
        self.uplinks = [self.uplink]
        if wires > 1:
            rep1 = self.pair()
            self.uplink1_rep = self.ours[-1]
            wire1, self.wire1 = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            wire1.setblocking(False)
            self.wire1.setblocking(False)
            self.ours.append(self.wire1)
            self.uplink1 = Uplink("sim0p1", UPLINK1_REP, rep1, "wire1", wire1, UPLINK1_MAC, [], port=1)
            self.uplinks.append(self.uplink1)
        self.plane = DataPlane(self.sw, self.ports, self.uplinks, clock=lambda: self.now)

    def pair(self) -> int:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        mine.setblocking(False)
        theirs.setblocking(False)
        self.ours.append(theirs)
        return mine.detach()

    def close(self) -> None:
        close_ports(self.ports)
        dataplane.close_uplinks(self.uplinks)
        for end in self.ours:
            end.close()
        self.wire.close()


def install(sw: Eswitch, *rules: fl.FlowerRule) -> None:
    for seq, rule in enumerate(rules, 1):
        replies = sw.handle_request(fl.encode_newfilter(rule, seq))
        assert replies and all(b"simnic" not in r for r in replies), replies


def pending(sock: socket.socket) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(sock.recv(65536))
        except BlockingIOError:
            return out


@pytest.fixture
def rig():
    made: list[Rig] = []

    def make(*args, **kw) -> Rig:
        made.append(Rig(*args, **kw))
        return made[-1]

    yield make
    for r in made:
        r.close()


ENCAP = fl.TunnelKey(ipv4_src=LOCAL, ipv4_dst=REMOTE, key_id=42, dst_port=4789)
DECAP_KEYS = {"enc_key_id": 42, "enc_ipv4_dst": LOCAL, "enc_dst_port": 4789}


def arp_reply() -> bytes:
    return bytes(Ether(src=REMOTE_MAC, dst=UPLINK_MAC) / ARP(op=2, hwsrc=REMOTE_MAC, psrc="192.0.2.2",
                                                            hwdst=UPLINK_MAC, pdst="192.0.2.1"))


def test_encap_waits_for_the_neighbour_then_goes_out_the_wire(rig) -> None:
    r = rig()
    install(r.sw, fl.FlowerRule(REP0, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(), (
        fl.Pedit(fl.pedit_set("eth", 0, bytes.fromhex("020000000099"))), ENCAP, fl.Mirred(VX))))
    frame = inner_frame()
    r.vf[0].send(frame)
    r.plane.from_vf(r.ports[0])
    assert pending(r.rep[0]) == [frame]  # the original, to software
    (request,) = pending(r.wire)
    arp = Ether(request)[ARP]
    assert (arp.op, arp.psrc, arp.pdst, arp.hwsrc) == (1, "192.0.2.1", "192.0.2.2", UPLINK_MAC.hex(":"))
    r.vf[0].send(frame)
    r.plane.from_vf(r.ports[0])  # still no neighbour, and less than a second since the request: no new one
    assert pending(r.rep[0]) == [frame] and pending(r.wire) == []
    r.wire.send(arp_reply())
    r.plane.from_wire(r.uplink)
    assert pending(r.uplink_rep) == [arp_reply()]  # no rule takes it: up to the host, unchanged
    r.vf[0].send(frame)
    r.plane.from_vf(r.ports[0])
    (outer,) = pending(r.wire)
    got = tunnel.parse(outer)
    assert got is not None and (got.vni, got.ipv4_src, got.ipv4_dst, got.dst_port) == (42, LOCAL, REMOTE, 4789)
    assert got.inner == bytes.fromhex("020000000099") + frame[6:]  # rewritten before the encapsulation
    assert outer[:12] == REMOTE_MAC + UPLINK_MAC
    assert outer[40:42] != b"\0\0"  # tunnel_key csum defaults to true
    c = r.plane.counters
    assert (c.encapsulated, c.encap_neigh_miss, c.to_representor, c.arp_requests, c.to_wire) == (1, 2, 2, 1, 2)


def test_encap_source_mac_is_the_local_vteps_once_seen_and_ipv6_or_no_key_is_software(rig) -> None:
    r = rig()
    install(r.sw, fl.FlowerRule(REP0, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=0x0A000002), (
        fl.TunnelKey(ipv4_src=LOCAL, ipv4_dst=REMOTE, key_id=7, tos=0x10, ttl=9, csum=False), fl.Mirred(GN))),
        fl.FlowerRule(REP0, 1, 2, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=0x0A000003), (
            fl.TunnelKey(ipv6_src=1, ipv6_dst=2, key_id=7), fl.Mirred(VX))),
        fl.FlowerRule(REP0, 1, 3, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=0x0A000004), (fl.Mirred(VX),)))
    host_arp = bytes(Ether(src=LOCAL_MAC, dst="ff:ff:ff:ff:ff:ff") / ARP(op=1, hwsrc=LOCAL_MAC, psrc="192.0.2.1",
                                                                         pdst="192.0.2.2"))
    r.uplink_rep.send(host_arp)  # the host asks for the remote VTEP through the uplink representor
    r.plane.from_uplink_representor(r.uplink)
    r.wire.send(arp_reply())
    r.plane.from_wire(r.uplink)
    assert pending(r.wire) == [host_arp]
    pending(r.uplink_rep)
    r.vf[0].send(inner_frame("10.0.0.2"))
    r.plane.from_vf(r.ports[0])
    (outer,) = pending(r.wire)
    got = tunnel.parse(outer)
    assert got is not None and (got.kind, got.vni, got.tos, got.ttl, got.dst_port) == (tunnel.GENEVE, 7, 0x10, 9, 6081)
    assert outer[:12] == REMOTE_MAC + LOCAL_MAC and outer[40:42] == b"\0\0"
    for dst in ("10.0.0.3", "10.0.0.4"):
        r.vf[0].send(inner_frame(dst))
        r.plane.from_vf(r.ports[0])
        assert pending(r.rep[0]) == [inner_frame(dst)]
    assert r.plane.counters.unsupported == 2 and pending(r.wire) == []


def vxlan_from_remote(vni: int = 42, inner: bytes | None = None, dst: int = LOCAL) -> bytes:
    return tunnel.encapsulate(inner or inner_frame(), kind=tunnel.VXLAN, vni=vni, ipv4_src=REMOTE, ipv4_dst=dst,
                              eth_src=REMOTE_MAC, eth_dst=UPLINK_MAC)


def test_decap_delivers_the_inner_frame_and_a_miss_goes_up_the_uplink_whole(rig) -> None:
    r = rig()
    install(r.sw, fl.FlowerRule(VX, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(**DECAP_KEYS), (
        fl.TunnelKey(unset=True), fl.Mirred(REP0))))
    for vni in (42, 43):
        r.wire.send(vxlan_from_remote(vni))
        r.plane.from_wire(r.uplink)
    assert pending(r.vf[0]) == [inner_frame()]
    assert pending(r.uplink_rep) == [vxlan_from_remote(43)]
    geneve = tunnel.encapsulate(inner_frame(), kind=tunnel.GENEVE, vni=42, ipv4_src=REMOTE, ipv4_dst=LOCAL,
                                eth_src=REMOTE_MAC, eth_dst=UPLINK_MAC)
    r.wire.send(geneve)  # the rule is on the vxlan device: a geneve packet is not its
    r.plane.from_wire(r.uplink)
    assert pending(r.uplink_rep) == [geneve] and pending(r.vf[0]) == []
    ((_, stats),) = r.sw.rules(VX)
    assert stats.packets == 1
    c = r.plane.counters
    assert (c.from_wire, c.decapsulated, c.to_uplink, c.hw_forwarded) == (3, 1, 2, 1)


def test_decap_matches_geneve_options(rig) -> None:
    r = rig()
    opt = fl.GeneveOpt(0x102, 0x80, b"ab\0\0")
    keys = fl.FlowerKeys(enc_key_id=5, enc_dst_port=6081, enc_ipv4_dst=LOCAL, enc_opts=(opt,),
                         enc_opts_mask=(fl.GeneveOpt(0xFFFF, 0xFF, b"\xff\xff\0\0"),))
    install(r.sw, fl.FlowerRule(GN, 1, 1, fl.ETH_P_IP, keys, (fl.TunnelKey(unset=True), fl.Mirred(REP1))))

    def send(options: bytes) -> None:
        r.wire.send(tunnel.encapsulate(inner_frame(), kind=tunnel.GENEVE, vni=5, ipv4_src=REMOTE, ipv4_dst=LOCAL,
                                       eth_src=REMOTE_MAC, eth_dst=UPLINK_MAC, options=options))
        r.plane.from_wire(r.uplink)

    for data in (b"abzz", b"xbcd", b""):
        send(tunnel.geneve_options(((0x102, 0x80, data),)) if data else b"")
    assert len(pending(r.vf[1])) == 1 and len(pending(r.uplink_rep)) == 2


def test_decap_pass_gives_software_the_outer_frame_with_the_rewrite_and_a_chain_miss_follows_the_profile(rig) -> None:
    r = rig()
    mac = bytes.fromhex("020000000077")
    install(r.sw, fl.FlowerRule(VX, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(**DECAP_KEYS), (
        fl.Pedit(fl.pedit_set("eth", 0, mac)), fl.Gact("goto_chain", 1))),
        fl.FlowerRule(VX, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=0x0A000009), (fl.Gact("pass"),), chain=1))
    r.wire.send(vxlan_from_remote(inner=inner_frame("10.0.0.9")))
    r.plane.from_wire(r.uplink)
    (up,) = pending(r.uplink_rep)
    got = tunnel.parse(up)
    assert got is not None and got.inner == mac + inner_frame("10.0.0.9")[6:] and got.vni == 42
    r.wire.send(vxlan_from_remote())  # misses chain 1: mlx5 (chain_miss continue) drops it
    r.plane.from_wire(r.uplink)
    assert pending(r.uplink_rep) == [] and r.plane.counters.hw_dropped == 1 and r.sw.lost_in_chain == 1

    restart = rig(chain_miss=CHAIN_MISS_RESTART)
    install(restart.sw, *(rule for rule, _ in r.sw.rules(VX)))
    restart.wire.send(vxlan_from_remote())
    restart.plane.from_wire(restart.uplink)
    (up,) = pending(restart.uplink_rep)
    assert tunnel.parse(up).inner == mac + inner_frame()[6:]


def test_the_uplink_representor_and_the_wire(rig) -> None:
    """Host -> wire unchanged; a wire frame a rule on the uplink takes (provider VLAN: pop, to VF1), one it does not."""
    r = rig()
    install(r.sw, fl.FlowerRule(UPLINK_REP, 1, 1, fl.ETH_P_8021Q, fl.FlowerKeys(vlan_id=100), (
        fl.Vlan("pop"), fl.Mirred(REP1))), fl.FlowerRule(REP1, 1, 1, fl.ETH_P_ALL, fl.FlowerKeys(), (
            fl.Vlan("push", 100), fl.Mirred(UPLINK_REP))))
    tagged = bytes(Ether(src=PEER_MAC, dst=VF_MAC) / Dot1Q(vlan=100) / IP() / TCP())
    untagged = bytes(Ether(src=PEER_MAC, dst=VF_MAC) / IP() / TCP())
    r.wire.send(tagged)
    r.wire.send(untagged)
    r.plane.from_wire(r.uplink)
    r.plane.from_wire(r.uplink)
    assert pending(r.vf[1]) == [untagged] and pending(r.uplink_rep) == [untagged]
    r.vf[1].send(untagged)  # and back: the VF's rule pushes the tag and sends it out the wire
    r.plane.from_vf(r.ports[1])
    r.uplink_rep.send(b"host frame....")
    r.plane.from_uplink_representor(r.uplink)
    assert pending(r.wire) == [tagged, b"host frame...."]
    r.ours[5].send(b"into the vxlan device")  # tunnel devices carry nothing: drained, dropped
    r.plane.from_tunnel_device(r.uplink.tunnels[0])
    assert pending(r.wire) == [] and r.plane.counters.to_uplink == 1


def test_vf_to_vf_and_software_paths_stay_as_they_were(rig, monkeypatch) -> None:
    r = rig()
    install(r.sw, fl.FlowerRule(REP0, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=0x0A000002), (fl.Mirred(REP1),)),
            fl.FlowerRule(REP0, 1, 3, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=0x0A000004), (fl.Gact("drop"),)))
    for dst in ("10.0.0.2", "10.0.0.4", "10.0.0.5"):
        r.vf[0].send(inner_frame(dst))
        r.plane.from_vf(r.ports[0])
    assert pending(r.vf[1]) == [inner_frame("10.0.0.2")] and pending(r.rep[0]) == [inner_frame("10.0.0.5")]
    c = r.plane.counters
    assert (c.hw_forwarded, c.hw_dropped, c.to_representor, c.to_wire) == (1, 1, 1, 0)
    # ingress redirects (no profile admits them, the data plane still knows them): to the representors' host side
    monkeypatch.setattr(r.sw, "classify", lambda *_: [fl.Mirred(REP1, egress=False), fl.Mirred(UPLINK_REP, False)])
    r.vf[0].send(inner_frame())
    r.plane.from_vf(r.ports[0])
    assert pending(r.rep[1]) == [inner_frame()] and pending(r.uplink_rep) == [inner_frame()]
    monkeypatch.setattr(r.sw, "classify", lambda *_: [fl.Mirred(VX, egress=False)])
    r.vf[0].send(inner_frame())
    r.plane.from_vf(r.ports[0])
    assert pending(r.rep[0]) == [inner_frame()] and c.unsupported == 1


def test_status_and_arguments_name_the_uplinks_only_with_wires(rig) -> None:
    r = rig(wires=2)
    profile = load_profile("sim-basic")
    plain = server.status_of("sim0", profile, "/s", r.ports)
    assert not {"uplink", "uplinks", "tunnels"} & plain.keys()
    port0 = {"port": 0, "representor": "sim0p", "representor_ifindex": UPLINK_REP, "wire": "wire0",
             "mac": "02:02:02:02:02:02"}
    port1 = {"port": 1, "representor": "sim0p1", "representor_ifindex": UPLINK1_REP, "wire": "wire1",
             "mac": "02:11:02:11:02:11"}
    tunnels = [{"type": "vxlan", "netdev": "sim0vx", "ifindex": VX, "dst_port": 4789},
               {"type": "geneve", "netdev": "sim0gn", "ifindex": GN, "dst_port": 6081}]
    one = server.status_of("sim0", profile, "/s", r.ports, [r.uplink])
    assert (one["uplinks"], one["tunnels"], "uplink" in one) == ([port0], tunnels, False)
    two = server.status_of("sim0", profile, "/s", r.ports, r.uplinks)
    assert (two["uplinks"], two["tunnels"]) == ([port0, port1], tunnels)


def parse(*extra: str, name: str = "abcdefghijklm"):
    return server.parse_args(["--name", name, "--num-vfs", "1", "--socket", "s", *extra])


def test_wire_arguments_one_or_two_distinct_ports_with_names_that_fit(capsys) -> None:
    assert parse().wire == []
    assert parse("--wire", "w").wire == ["w"]
    assert parse("--wire", "w0", "--wire", "w1").wire == ["w0", "w1"]
    with pytest.raises(SystemExit):
        parse("--wire", "w0", "--wire", "w1", "--wire", "w2")
    assert "at most 2 physical ports" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse("--wire", "w0", "--wire", "w0")
    assert "--wire w0 given twice" in capsys.readouterr().err
    for wires in (["--wire", "w"], ["--wire", "w0", "--wire", "w1"]):  # abcdefghijklmnvx / ...p1 do not fit IFNAMSIZ
        with pytest.raises(SystemExit):
            parse(*wires, name="abcdefghijklmn")
        assert "abcdefghijklmn" in capsys.readouterr().err
    assert dataplane.uplink_names("sim0") == ["sim0p", "sim0vx", "sim0gn"]
    assert dataplane.uplink_names("sim0", 2) == ["sim0p", "sim0p1", "sim0vx", "sim0gn"]


def test_each_port_has_its_own_stable_mac_and_port_0_keeps_its_address() -> None:
    mac = dataplane.uplink_mac("sim0")
    assert mac == dataplane.uplink_mac("sim0", 0) == bytes.fromhex("beba6506eb1e")
    assert mac != dataplane.uplink_mac("sim1")
    mac1 = dataplane.uplink_mac("sim0", 1)
    assert mac1 == dataplane.uplink_mac("sim0", 1) not in (mac, dataplane.uplink_mac("sim1", 1))
    assert all(m[0] & 3 == 2 for m in (mac, mac1))  # locally administered, unicast


def test_port_1_carries_a_provider_vlan_both_ways_and_its_misses_come_up_its_representor(rig) -> None:
    r = rig(wires=2)
    install(r.sw, fl.FlowerRule(REP0, 1, 1, fl.ETH_P_ALL, fl.FlowerKeys(), (
        fl.Vlan("push", 100), fl.Mirred(UPLINK1_REP))), fl.FlowerRule(UPLINK1_REP, 1, 1, fl.ETH_P_8021Q,
                                                                      fl.FlowerKeys(vlan_id=100), (
            fl.Vlan("pop"), fl.Mirred(REP0))))
    tagged = bytes(Ether(src=VF_MAC, dst=PEER_MAC) / Dot1Q(vlan=100) / IP() / TCP())
    untagged = bytes(Ether(src=VF_MAC, dst=PEER_MAC) / IP() / TCP())
    r.vf[0].send(untagged)
    r.plane.from_vf(r.ports[0])
    assert pending(r.wire1) == [tagged] and pending(r.wire) == []
    other = bytes(Ether(src=PEER_MAC, dst=VF_MAC) / Dot1Q(vlan=200) / IP() / TCP())
    for frame in (tagged, other):
        r.wire1.send(frame)
        r.plane.from_wire(r.uplink1)
    assert pending(r.vf[0]) == [untagged] and pending(r.uplink1_rep) == [other] and pending(r.uplink_rep) == []
    r.uplink1_rep.send(b"host frame on port 1")  # the host's writes go out port 1's wire, not port 0's
    r.plane.from_uplink_representor(r.uplink1)
    assert pending(r.wire1) == [b"host frame on port 1"] and pending(r.wire) == []
    ((_, stats),) = r.sw.rules(UPLINK1_REP)
    assert stats.packets == 1
    c = r.plane.counters
    assert (c.from_wire, c.to_wire, c.to_uplink, c.hw_forwarded) == (2, 2, 1, 2)


def test_a_wire_frames_vlan_tag_goes_back_where_the_kernel_took_it_from() -> None:
    frame = bytes(Ether(src=PEER_MAC, dst=VF_MAC) / IP() / TCP())
    tagged = bytes(Ether(src=PEER_MAC, dst=VF_MAC) / Dot1Q(vlan=100, prio=5) / IP() / TCP())

    def aux(status: int, tci: int = 0, tpid: int = 0, level: int = dataplane.SOL_PACKET,
            kind: int = dataplane.PACKET_AUXDATA) -> list[tuple[int, int, bytes]]:
        return [(level, kind, struct.pack("=IIIHHHH", status, len(frame), len(frame), 0, 14, tci, tpid))]

    assert dataplane.with_vlan_tag(frame, aux(dataplane.TP_STATUS_VLAN_VALID, 0xA064)) == tagged
    qinq = dataplane.with_vlan_tag(frame, aux(dataplane.TP_STATUS_VLAN_VALID | dataplane.TP_STATUS_VLAN_TPID_VALID,
                                              7, 0x88A8))
    assert qinq == frame[:12] + b"\x88\xa8\x00\x07" + frame[12:]
    assert dataplane.with_vlan_tag(frame, aux(0, 0xA064)) == frame  # no tag: the tci field means nothing
    assert dataplane.with_vlan_tag(frame, aux(dataplane.TP_STATUS_VLAN_VALID, 5, kind=1)) == frame
    assert dataplane.with_vlan_tag(frame, []) == frame


def test_an_ingress_redirect_to_port_1_goes_up_its_representor(rig, monkeypatch) -> None:
    r = rig(wires=2)
    monkeypatch.setattr(r.sw, "classify", lambda *_: [fl.Mirred(UPLINK1_REP, egress=False)])
    r.vf[0].send(inner_frame())
    r.plane.from_vf(r.ports[0])
    assert pending(r.uplink1_rep) == [inner_frame()] and pending(r.wire1) == [] and pending(r.uplink_rep) == []


def test_tunnels_are_port_0s_a_vxlan_frame_on_port_1_is_an_ordinary_frame(rig) -> None:
    r = rig(wires=2)
    install(r.sw, fl.FlowerRule(VX, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(**DECAP_KEYS), (
        fl.TunnelKey(unset=True), fl.Mirred(REP0))), fl.FlowerRule(REP0, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(), (
            ENCAP, fl.Mirred(VX))))
    r.wire1.send(vxlan_from_remote(42))
    r.plane.from_wire(r.uplink1)
    assert pending(r.uplink1_rep) == [vxlan_from_remote(42)] and pending(r.vf[0]) == []
    r.wire1.send(arp_reply())  # the remote VTEP's address heard on port 1 is not the underlay's neighbour
    r.plane.from_wire(r.uplink1)
    r.vf[0].send(inner_frame())
    r.plane.from_vf(r.ports[0])
    assert len(r.plane.neighbours) == 0 and r.plane.counters.encap_neigh_miss == 1
    (request,) = pending(r.wire)  # the sim asks on port 0
    assert Ether(request)[ARP].pdst == "192.0.2.2" and pending(r.wire1) == []
    r.wire.send(arp_reply())
    r.plane.from_wire(r.uplink)
    r.vf[0].send(inner_frame())
    r.plane.from_vf(r.ports[0])
    (outer,) = pending(r.wire)
    assert tunnel.parse(outer).inner == inner_frame() and outer[6:12] == UPLINK_MAC and pending(r.wire1) == []
    r.wire.send(vxlan_from_remote(42))  # on port 0 the same packet is decapsulated
    r.plane.from_wire(r.uplink)
    assert pending(r.vf[0]) == [inner_frame()]
    assert r.plane.counters.decapsulated == 1


def test_chain_miss_continue_is_the_mlx5_profile() -> None:
    assert load_profile("mlx5-connectx6dx").capabilities.chain_miss == CHAIN_MISS_CONTINUE
