"""The OpenFlow reader thread never dies silently: a message it cannot take (garbage a switch sent, or a handler
that raises) is logged naming its type and xid, counted, and costs the session, which comes back (against a
scripted switch on a real unix socket)."""

from __future__ import annotations

import logging
import socket
import struct
import threading
from collections.abc import Callable

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp
from test_dhcp_openflow import subscribed_session
from test_ovs_translate import accept_session, of_message, port_stats_part, read_of_message, switch  # noqa: F401

from hwflow.backends.ovs.openflow import OpenFlowConnection

# Replies the reader thread used to die on (a message os-ken merely fails to parse fails its request and keeps the
# session): a version os-ken does not know (OFPUnknownVersion), and a flow dump's reply, which is kept as bytes,
# cut inside its multipart header (struct.error). name -> (the request, the garbage to its xid, a good reply to
# an xid, what the request returns from the good reply).
EMPTY_FLOW_DUMP = struct.pack(ofp.OFP_MULTIPART_REPLY_PACK_STR, ofp.OFPMP_FLOW, 0)
GARBAGE: dict[str, tuple[Callable[[OpenFlowConnection], object], Callable[[int], bytes], Callable[[int], bytes],
                         Callable[[int], object]]] = {
    "unknown-version": (OpenFlowConnection.port_stats,
                        lambda xid: struct.pack("!BBHI", 0x99, ofp.OFPT_MULTIPART_REPLY, 8, xid),
                        lambda xid: port_stats_part(xid, [(3, 10, 20)], more=False),
                        lambda xid: {3: (10, 20)}),
    "flow-dump-cut-short": (OpenFlowConnection.dump_flows_raw,
                            lambda xid: of_message(ofp.OFPT_MULTIPART_REPLY, xid, b"\x00\x01"),
                            lambda xid: of_message(ofp.OFPT_MULTIPART_REPLY, xid, EMPTY_FLOW_DUMP),
                            lambda xid: [of_message(ofp.OFPT_MULTIPART_REPLY, xid, EMPTY_FLOW_DUMP)]),
}


def ask(conn: OpenFlowConnection, request: Callable[[OpenFlowConnection], object]) -> tuple[threading.Thread, list]:
    """``request(conn)`` in a thread of its own; its result or exception lands in the list."""
    out: list = []

    def body() -> None:
        try:
            out.append(request(conn))
        except Exception as exc:  # handed to the test
            out.append(exc)

    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread, out


def garbage_then_recovery(server: socket.socket, conn: OpenFlowConnection, session: socket.socket,
                          name: str, caplog: pytest.LogCaptureFixture,
                          accept: Callable[[socket.socket], socket.socket]) -> None:
    """A request answered with garbage: the session goes (logged, counted), the request's retry dials a new one
    (``accept`` takes it) and is answered."""
    request, garbage, good, expected = GARBAGE[name]
    thread, out = ask(conn, request)
    msg_type, xid, _ = read_of_message(session)
    assert msg_type == ofp.OFPT_MULTIPART_REQUEST
    generation = conn.generation
    with caplog.at_level(logging.ERROR, logger="hwflow.backends.ovs.openflow"):
        session.sendall(garbage(xid))
        assert session.recv(1) == b"", "the session was not reset"
    assert conn.reader_errors == 1
    assert f"(xid {xid}," in caplog.text and "failed on a message of type" in caplog.text, caplog.text
    again = accept(server)
    msg_type, xid, _ = read_of_message(again)
    assert msg_type == ofp.OFPT_MULTIPART_REQUEST
    again.sendall(good(xid))
    thread.join(5)
    assert out == [expected(xid)], out
    assert conn.generation > generation + 1 and conn.connected  # lost, then a new session: memory dumps again


@pytest.mark.parametrize("name", sorted(GARBAGE))
def test_garbage_costs_the_session_not_the_reader_and_the_request_is_answered_on_a_new_one(
        switch, name: str, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    server, endpoint = switch
    conn = OpenFlowConnection(endpoint, timeout=5)
    try:
        dialler = threading.Thread(target=conn.connect)
        dialler.start()
        session = accept_session(server)
        dialler.join(5)
        garbage_then_recovery(server, conn, session, name, caplog, accept_session)
    finally:
        conn.close()


def test_a_connection_with_listeners_comes_back_subscribed_after_garbage(switch, caplog) -> None:  # noqa: F811
    server, endpoint = switch
    conn = OpenFlowConnection(endpoint, timeout=5)
    try:
        conn.on_packet_in(lambda packet: None)
        garbage_then_recovery(server, conn, subscribed_session(server), "unknown-version", caplog, subscribed_session)
    finally:
        conn.close()


def test_a_reader_error_on_a_message_nobody_waits_for_also_resets(switch, caplog) -> None:  # noqa: F811
    """A handler that raises on the reader thread (here, the echo reply's write to a socket object that
    is not one) is the same: logged, counted, the session reset."""
    server, endpoint = switch
    conn = OpenFlowConnection(endpoint, timeout=5)
    try:
        dialler = threading.Thread(target=conn.connect)
        dialler.start()
        session = accept_session(server)
        dialler.join(5)
        original = conn._write

        def broken(sock: socket.socket, data: bytes) -> None:
            raise ValueError("a handler bug")

        conn._write = broken  # type: ignore[method-assign]
        with caplog.at_level(logging.ERROR, logger="hwflow.backends.ovs.openflow"):
            session.sendall(of_message(ofp.OFPT_ECHO_REQUEST, 77, b"ping"))
            assert session.recv(1) == b""
        conn._write = original  # type: ignore[method-assign]
        assert conn.reader_errors == 1 and f"type {ofp.OFPT_ECHO_REQUEST} (xid 77" in caplog.text
    finally:
        conn.close()
