"""The agent's DHCP codec and answers, cross-checked with scapy; garbage never raises anything but MalformedPacket."""

from __future__ import annotations

import dataclasses
import ipaddress
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from hwflow.agent import dhcp
from hwflow.backends.ovs.openflow import PacketIn
from hwflow.model.objects import Network, Port, Subnet
from hwflow.pipeline.topology import Topology

MAC = "fa:16:3e:00:00:01"
NET = Network(id="n", name="n", vni=5, unique_key=1, mtu=1450)
SUBNET = Subnet(id="s", name="s", network_id="n", cidr="10.0.0.0/24", gateway_ip="10.0.0.254",
                dns_nameservers=["10.0.0.53", "2001:db8::53", "8.8.8.8"],
                host_routes=[{"destination": "172.16.0.0/12", "nexthop": "10.0.0.250"}])
PORT = Port(id="p", name="p", network_id="n", mac=MAC, ips=["10.0.0.5"], unique_key=7)


def topology(*subnets: Subnet, port: Port = PORT) -> Topology:
    return Topology("h", {"n": NET}, {port.id: port}, {port.id}, {"subnet": {s.id: s for s in subnets}})


def client_frame(kind: str, mac: str = MAC, ciaddr: str = "0.0.0.0", flags: int = 0, **options: object) -> bytes:
    """What a real client sends: scapy builds it, not our encoder."""
    opts = [("message-type", kind), *options.items(), "end"]
    pkt = (Ether(src=mac, dst="ff:ff:ff:ff:ff:ff") / IP(src=ciaddr, dst="255.255.255.255")
           / UDP(sport=68, dport=67) / BOOTP(chaddr=bytes.fromhex(mac.replace(":", "")), xid=0x1234, ciaddr=ciaddr,
                                             flags=flags) / DHCP(options=opts))
    return bytes(pkt)


def reply(frame: bytes, topo: Topology | None = None, port: Port = PORT) -> Ether | None:
    out = dhcp.answer(dhcp.decode_request(frame), port, topo or topology(SUBNET))
    return None if out is None else Ether(out)


def options(pkt: Ether) -> dict[str, object]:
    return {o[0]: o[1] if len(o) == 2 else o[1:] for o in pkt[DHCP].options if isinstance(o, tuple)}


def test_discover_is_offered_the_ports_address_with_the_subnets_options():
    pkt = reply(client_frame("discover"))
    assert pkt is not None
    assert pkt[Ether].dst == MAC and pkt[Ether].src == dhcp.SERVER_MAC
    assert (pkt[IP].src, pkt[IP].dst) == ("10.0.0.254", "10.0.0.5")
    assert (pkt[UDP].sport, pkt[UDP].dport) == (67, 68)
    assert pkt[BOOTP].op == 2 and pkt[BOOTP].xid == 0x1234 and pkt[BOOTP].yiaddr == "10.0.0.5"
    assert len(pkt[BOOTP]) >= dhcp.MIN_BOOTP
    opts = options(pkt)
    assert opts["message-type"] == 2  # offer
    assert opts["server_id"] == "10.0.0.254" and opts["router"] == "10.0.0.254"
    assert opts["subnet_mask"] == "255.255.255.0" and opts["broadcast_address"] == "10.0.0.255"
    assert opts["name_server"] == ("10.0.0.53", "8.8.8.8")  # the IPv6 server is left out
    assert opts["interface-mtu"] == 1450
    assert opts["lease_time"] == dhcp.LEASE_SECONDS
    assert opts["renewal_time"] == dhcp.LEASE_SECONDS // 2
    assert opts["rebinding_time"] == dhcp.LEASE_SECONDS * 7 // 8
    # RFC 3442: 172.16/12 -> 10.0.0.250 (2 prefix octets), default -> the gateway (none)
    assert opts["classless_static_routes"] == ["172.16.0.0/12:10.0.0.250", "0.0.0.0/0:10.0.0.254"]


def test_checksums_are_what_scapy_computes():
    pkt = reply(client_frame("discover"))
    ip_sum, udp_sum = pkt[IP].chksum, pkt[UDP].chksum
    del pkt[IP].chksum, pkt[UDP].chksum
    rebuilt = Ether(bytes(pkt))
    assert (rebuilt[IP].chksum, rebuilt[UDP].chksum) == (ip_sum, udp_sum)


def test_request_for_the_ports_address_is_acked_and_any_other_is_nakked():
    ack = reply(client_frame("request", requested_addr="10.0.0.5", server_id="10.0.0.254"))
    assert options(ack)["message-type"] == 5 and ack[BOOTP].yiaddr == "10.0.0.5"
    nak = reply(client_frame("request", requested_addr="10.0.0.9"))
    assert options(nak)["message-type"] == 6
    assert nak[BOOTP].yiaddr == "0.0.0.0" and nak[IP].dst == "255.255.255.255"
    assert "lease_time" not in options(nak)


def test_renewal_by_ciaddr_is_acked_by_unicast_to_it():
    ack = reply(client_frame("request", ciaddr="10.0.0.5"))
    assert options(ack)["message-type"] == 5
    assert ack[IP].dst == "10.0.0.5" and ack[BOOTP].ciaddr == "10.0.0.5"


def test_broadcast_flag_is_honoured():
    assert reply(client_frame("discover", flags=0x8000))[IP].dst == "255.255.255.255"


def test_request_for_another_server_release_and_foreign_chaddr_get_no_answer():
    assert reply(client_frame("request", requested_addr="10.0.0.5", server_id="10.0.0.1")) is None
    assert reply(client_frame("release", ciaddr="10.0.0.5")) is None
    assert reply(client_frame("discover", mac="fa:16:3e:00:00:99")) is None


def test_no_answer_without_a_dhcp_subnet_for_the_port():
    assert reply(client_frame("discover"), topology()) is None
    off = Subnet(id="s", name="s", network_id="n", cidr="10.0.0.0/24", enable_dhcp=False)
    assert reply(client_frame("discover"), topology(off)) is None


def test_subnet_without_gateway_has_its_last_host_as_server_and_no_router():
    bare = Subnet(id="s", name="s", network_id="n", cidr="10.0.0.0/24")
    pkt = reply(client_frame("discover"), topology(bare))
    opts = options(pkt)
    assert opts["server_id"] == "10.0.0.254" == pkt[IP].src
    assert "router" not in opts and "classless_static_routes" not in opts and "name_server" not in opts


def with_options(*opts: tuple[str, str | None] | tuple[str, str | None, int]) -> Port:
    """PORT with extra DHCP options (name, value[, ip_version]), as the model stores them."""
    port = dataclasses.replace(PORT, extra_dhcp_opts=[
        {"name": o[0], "value": o[1], "ip_version": o[2] if len(o) > 2 else 4} for o in opts])
    port.validate()
    return port


def test_a_ports_extra_options_replace_add_to_and_remove_the_subnets_in_offer_and_ack():
    port = with_options(("mtu", "1400"), ("dns-server", "10.0.0.9, 10.0.0.10"), ("router", ""),
                        ("domain-name", "lab.example.org"), ("ntp-server", "10.0.0.123"), ("200", "hello"),
                        ("dns-server", "2001:db8::53", 6))
    for frame in (client_frame("discover"), client_frame("request", requested_addr="10.0.0.5")):
        opts = options(reply(frame, topology(SUBNET, port=port), port))
        assert opts["interface-mtu"] == 1400  # not the network's 1450
        assert opts["name_server"] == ("10.0.0.9", "10.0.0.10")  # not the subnet's; the IPv6 entry is not served
        assert "router" not in opts
        assert opts["domain"] == b"lab.example.org" and opts["NTP_server"] == "10.0.0.123"
        assert opts[200] == b"hello" and opts["subnet_mask"] == "255.255.255.0"
        # an empty router leaves option 121's default route: that is the subnet's, until it is set or emptied too
        assert opts["classless_static_routes"] == ["172.16.0.0/12:10.0.0.250", "0.0.0.0/0:10.0.0.254"]
    port = with_options(("classless-static-route", "10.9.0.0/16,10.0.0.1,0.0.0.0/0,10.0.0.2"))
    assert options(reply(client_frame("discover"), topology(SUBNET, port=port), port))["classless_static_routes"] == [
        "10.9.0.0/16:10.0.0.1", "0.0.0.0/0:10.0.0.2"]


def test_a_nak_carries_none_of_the_ports_options():
    port = with_options(("mtu", "1400"), ("server-ip-address", "10.0.0.7"))
    nak = reply(client_frame("request", requested_addr="10.0.0.9"), topology(SUBNET, port=port), port)
    assert options(nak)["message-type"] == 6 and "interface-mtu" not in options(nak)
    assert nak[BOOTP].siaddr == "0.0.0.0"


def test_boot_options_go_in_the_header_unless_asked_for_as_options_as_dnsmasq_does():
    port = with_options(("bootfile-name", "pxelinux.0"), ("tftp-server", "tftp.lab"),
                        ("server-ip-address", "10.0.0.7"))
    unasked = reply(client_frame("discover", param_req_list=[1, 3, 6]), topology(SUBNET, port=port), port)
    assert unasked[BOOTP].file.rstrip(b"\0") == b"pxelinux.0" and unasked[BOOTP].sname.rstrip(b"\0") == b"tftp.lab"
    assert unasked[BOOTP].siaddr == "10.0.0.7"
    assert "boot-file-name" not in options(unasked) and "tftp_server_name" not in options(unasked)
    asked = reply(client_frame("discover", param_req_list=[1, 66, 67]), topology(SUBNET, port=port), port)
    assert options(asked)["boot-file-name"] == b"pxelinux.0" and options(asked)["tftp_server_name"] == b"tftp.lab"
    assert asked[BOOTP].file.rstrip(b"\0") == b"" and asked[BOOTP].siaddr == "10.0.0.7"
    long_name = "boot/" + "x" * 130  # longer than the header's 128-byte file field: sent as the option
    port = with_options(("bootfile-name", long_name))
    sent = reply(client_frame("discover"), topology(SUBNET, port=port), port)
    assert options(sent)["boot-file-name"] == long_name.encode() and sent[BOOTP].file.rstrip(b"\0") == b""
    assert dhcp.DhcpMessage.decode(bytes(unasked[BOOTP])).file == b"pxelinux.0"


def test_our_encoding_decodes_back_and_matches_scapy():
    message = dhcp.DhcpMessage(dhcp.BOOTREQUEST, 7, bytes.fromhex("fa163e000001"),
                               {dhcp.OPT_MSG_TYPE: bytes((dhcp.REQUEST,)), 250: bytes(300)}, flags=0x8000,
                               ciaddr=ipaddress.IPv4Address("10.0.0.5"))
    raw = message.encode()
    assert dhcp.DhcpMessage.decode(raw) == message  # the 300-byte option went out as two (RFC 3396)
    parsed = BOOTP(raw)
    assert (parsed.xid, parsed.flags, parsed.ciaddr) == (7, 0x8000, "10.0.0.5")
    assert options(Ether() / IP() / UDP() / parsed)["message-type"] == dhcp.REQUEST


def test_non_dhcp_and_truncated_frames_are_malformed():
    other = bytes(Ether() / IP() / UDP(sport=68, dport=53) / (b"x" * 300))
    frame = client_frame("discover")
    for bad in (other, frame[:100], frame[:-30], bytes(Ether() / IP(proto=6)), b""):
        with pytest.raises(dhcp.MalformedPacket):
            dhcp.decode_request(bad)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=600))
def test_garbage_is_malformed_never_a_crash(data: bytes):
    try:
        dhcp.decode_request(data)
    except dhcp.MalformedPacket:
        pass


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_a_request_with_garbage_after_the_headers_is_malformed_or_decoded(data: st.DataObject):
    frame = bytearray(client_frame("discover"))
    for _ in range(data.draw(st.integers(1, 8))):
        frame[data.draw(st.integers(14, len(frame) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(frame)))
    try:
        request = dhcp.decode_request(bytes(frame[:cut]))
    except dhcp.MalformedPacket:
        return
    dhcp.answer(request, PORT, topology(SUBNET))  # whatever it decoded to, answering it works


class FakeOpenFlow:
    def __init__(self) -> None:
        self.sent: list[tuple[int, bytes]] = []

    def packet_out(self, port: int, data: bytes) -> None:
        self.sent.append((port, data))


def test_responder_answers_on_the_port_the_request_came_from(caplog: pytest.LogCaptureFixture):
    of = FakeOpenFlow()
    responder = dhcp.DhcpResponder(of, lambda: (topology(SUBNET), {PORT.unique_key: 3}))  # type: ignore[arg-type]
    assert responder.handle(PacketIn(3, 0, 0, {"in_port": 3}, client_frame("discover")))
    ((port, frame),) = of.sent
    assert port == 3 and Ether(frame)[BOOTP].yiaddr == "10.0.0.5"
    with caplog.at_level(logging.DEBUG, logger="hwflow.agent.dhcp"):
        assert not responder.handle(PacketIn(3, 0, 0, {"in_port": 3}, b"\x00garbage"))
        assert not responder.handle(PacketIn(9, 0, 0, {"in_port": 9}, client_frame("discover")))
    assert len(of.sent) == 1
    assert "ignoring a punted packet from OpenFlow port 3" in caplog.text
    assert "OpenFlow port 9, which is no local port" in caplog.text
