"""Packet-ins reach the listeners on the reader thread, packet-outs go out, and a dropped connection is redialled
by itself so punted packets keep arriving (against a scripted switch on a unix socket)."""

from __future__ import annotations

import queue
import socket
import struct
import threading

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser
from test_ovs_translate import accept_session, of_message, read_of_message, switch  # noqa: F401 - a fixture

from hwflow.backends.ovs.openflow import OpenFlowConnection, OpenFlowConnectionError, PacketIn

FRAME = bytes(range(64)) * 3


def packet_in(xid: int, in_port: int, frame: bytes, table: int = 4, cookie: int = 0xC0FFEE) -> bytes:
    """An OFPT_PACKET_IN as OVS sends it for output:CONTROLLER with max_len NO_BUFFER."""
    match = parser.OFPMatch(in_port=in_port, metadata=5, reg0=7)
    buf = bytearray()
    match.serialize(buf, 0)
    body = struct.pack("!IHBBQ", ofp.OFP_NO_BUFFER, len(frame), ofp.OFPR_ACTION, table, cookie)
    return of_message(ofp.OFPT_PACKET_IN, xid, body + bytes(buf) + b"\0\0" + frame)


def subscribed_session(server: socket.socket) -> socket.socket:
    """Accept the connection's session and check it asked for packet-ins (OVS sends none otherwise)."""
    session = accept_session(server)
    msg_type, _, body = read_of_message(session)
    assert msg_type == ofp.OFPT_SET_CONFIG
    assert struct.unpack("!HH", body)[1] == ofp.OFPCML_NO_BUFFER  # miss_send_len
    return session


def test_packet_in_reaches_listeners_and_survives_a_dropped_connection(switch) -> None:  # noqa: F811
    server, endpoint = switch
    got: queue.Queue[PacketIn] = queue.Queue()
    conn = OpenFlowConnection(endpoint, timeout=5)

    def broken(packet: PacketIn) -> None:
        raise RuntimeError("a buggy listener")

    try:
        conn.on_packet_in(broken)  # registered first: its failure must not cost the next listener the packet
        conn.on_packet_in(got.put)
        session = subscribed_session(server)  # the listener made the connection dial by itself
        session.sendall(packet_in(1, 3, FRAME))
        first = got.get(timeout=5)
        assert (first.in_port, first.table_id, first.cookie, first.data) == (3, 4, 0xC0FFEE, FRAME)
        assert first.fields["metadata"] == 5 and first.fields["reg0"] == 7

        conn.packet_out(3, b"reply-frame")
        msg_type, _, body = read_of_message(session)
        assert msg_type == ofp.OFPT_PACKET_OUT
        buffer_id, in_port, actions_len = struct.unpack_from("!IIH6x", body)
        assert (buffer_id, in_port) == (ofp.OFP_NO_BUFFER, ofp.OFPP_CONTROLLER)
        action = parser.OFPAction.parser(body, 16)
        assert actions_len == action.len and (action.type, action.port) == (ofp.OFPAT_OUTPUT, 3)
        assert body[16 + actions_len:] == b"reply-frame"

        session.close()  # the switch restarts: nobody calls the connection, yet it comes back and re-subscribes
        session = subscribed_session(server)
        session.sendall(packet_in(2, 9, FRAME[:60]))
        assert got.get(timeout=5).in_port == 9
    finally:
        conn.close()


def test_a_listener_on_a_live_connection_subscribes_it_at_once(switch) -> None:  # noqa: F811
    server, endpoint = switch
    conn = OpenFlowConnection(endpoint, timeout=5)
    try:
        dialler = threading.Thread(target=conn.connect)
        dialler.start()
        session = accept_session(server)
        dialler.join(5)
        conn.on_packet_in(lambda packet: None)
        msg_type, _, body = read_of_message(session)
        assert msg_type == ofp.OFPT_SET_CONFIG and struct.unpack("!HH", body)[1] == ofp.OFPCML_NO_BUFFER
    finally:
        conn.close()


def test_packet_out_to_a_switch_that_is_gone_raises_a_connection_error(tmp_path) -> None:
    conn = OpenFlowConnection(f"unix:{tmp_path}/none.mgmt", timeout=1)
    with pytest.raises(OpenFlowConnectionError, match="cannot connect"):
        conn.packet_out(1, b"x")
    conn.close()
