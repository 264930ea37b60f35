"""TcClient over the simulated NIC's control socket (served in-process), and over real rtnetlink."""

from __future__ import annotations

import array
import dataclasses
import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator

import pytest

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc import native
from hwflow.backends.tc import netlink as nl
from hwflow.backends.tc.transport import SimSocketTransport, TcClient, TcError
from hwflow.sim import server
from hwflow.sim.eswitch import Eswitch
from hwflow.sim.profile import load_profile

REP0, REP1 = 11, 12


@pytest.fixture
def sock_dir() -> Iterator[str]:
    path = tempfile.mkdtemp(prefix="hwt-sim-")  # short: AF_UNIX paths are limited to 108 bytes
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def serve(path: str, profile: str) -> tuple[Eswitch, Callable[[], None]]:
    eswitch = Eswitch("sim0", load_profile(profile), [REP0, REP1])
    return eswitch, server.serve_in_background(path, eswitch)


@pytest.fixture
def client(sock_dir: str, request: pytest.FixtureRequest) -> Iterator[TcClient]:
    path = os.path.join(sock_dir, "ctl")
    marker = request.node.get_closest_marker("profile")
    _, stop = serve(path, marker.args[0] if marker else "sim-basic")
    tc = TcClient(SimSocketTransport(path), timeout=5.0, batch=100)
    try:
        yield tc
    finally:
        tc.close()
        stop()


def rule(i: int, ifindex: int = REP0, out: int = REP1, **keys: int) -> fl.FlowerRule:
    return fl.FlowerRule(ifindex, 1 + i // 1000, 1 + i % 1000, fl.ETH_P_IP,
                         fl.FlowerKeys(ipv4_dst=0x0A000000 + i, **keys), (fl.Mirred(out),))


def test_many_rules_in_batches_then_a_dump_that_spans_datagrams(client: TcClient) -> None:
    rules = [rule(i) for i in range(700)]  # 7 sends of 100; the dump is ~150 KiB
    assert client.add(rules) == [None] * 700
    dumped = client.dump(REP0)
    assert [r for r, _ in dumped] == sorted(rules, key=lambda r: (r.chain, r.prio, r.handle))
    assert all(s == fl.RuleStats(0, 0, s.lastused_ms) for _, s in dumped)
    assert client.dump(REP1) == []


def test_answers_are_per_rule_and_in_order(client: TcClient) -> None:
    bad_mask = fl.FlowerKeys(ipv4_dst=0x0A000003 & 0xFF00FFFF, ipv4_dst_mask=0xFF00FFFF)
    batch = [rule(1), rule(1), fl.FlowerRule(REP0, 9, 1, fl.ETH_P_IP, bad_mask, (fl.Mirred(REP1),)),
             rule(2, ifindex=99), rule(4)]
    results = client.add(batch)
    assert results[0] is None and results[4] is None
    assert [r.errno for r in results[1:4]] == [errno.EEXIST, errno.EOPNOTSUPP, errno.ENODEV]
    refused = results[2]
    assert refused.rule == batch[2]
    assert refused.message == ("simnic sim0: match on ipv4_dst with mask 0xff00ffff is not supported "
                               "by profile sim-basic")
    assert str(refused).startswith(f"flower rule chain 0 prio 9 handle 1 on ifindex {REP0}: refused with "
                                   "EOPNOTSUPP")
    assert [r for r, _ in client.dump(REP0)] == [rule(1), rule(4)]


def test_replace_changes_a_rule_in_place_and_keeps_count(client: TcClient) -> None:
    client.add([rule(1)])
    assert client.add([rule(1, out=REP0)])[0].errno == errno.EEXIST
    assert client.replace([rule(1, out=REP0), rule(2)]) == [None, None]
    assert [r for r, _ in client.dump(REP0)] == [rule(1, out=REP0), rule(2)]


def test_delete_reports_missing_rules(client: TcClient) -> None:
    client.add([rule(1), rule(2)])
    results = client.delete([rule(1), rule(5)])
    assert results[0] is None
    assert results[1].errno == errno.ENOENT and "handle 6" in results[1].message
    assert [r for r, _ in client.dump(REP0)] == [rule(2)]


@pytest.mark.profile("sim-tiny")
def test_capacity_refusal_keeps_the_first_rules(client: TcClient) -> None:
    results = client.add([rule(i) for i in range(9)])
    assert results[:8] == [None] * 8
    assert results[8].errno == errno.ENOSPC
    assert len(client.dump(REP0)) == 8


def test_dump_of_an_unknown_device_raises(client: TcClient) -> None:
    with pytest.raises(TcError, match="ifindex 77: refused with ENODEV") as info:
        client.dump(77)
    assert info.value.rule is None and info.value.ifindex == 77


def test_a_silent_peer_times_out_per_rule(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "mute")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(1)  # never accepts: the connection sits in the backlog
    tc = TcClient(SimSocketTransport(path), timeout=0.2)
    try:
        results = tc.add([rule(1), rule(2)])
    finally:
        tc.close()
        listener.close()
    assert [r.errno for r in results] == [errno.ETIMEDOUT] * 2


def test_missing_socket_says_what_to_do(sock_dir: str) -> None:
    with pytest.raises(ConnectionError, match="is hwflow-simnic running"):
        SimSocketTransport(os.path.join(sock_dir, "nothing"))


@pytest.mark.parametrize("use_native", [True, False] if native.NATIVE_AVAILABLE else [False])
def test_a_batch_goes_out_natively_encoded_with_one_answer_per_rule(client: TcClient, use_native: bool) -> None:
    batch = native.FlowerBatch(rule(0), ["prio", "handle", "ipv4_dst"], native=use_native)
    count = 700
    values = array.array("Q")
    for i in range(count):
        values.extend([1 + i // 100, 1 + i % 100, 0x0A000000 + i])
    values[3 * 650 + 1] = values[3 * 649 + 1]  # rule 650 reuses rule 649's prio and handle
    results = client.send_batch(batch, values, count)
    assert results[:650] == [None] * 650 and results[651:] == [None] * 49
    assert results[650].errno == errno.EEXIST
    assert results[650].rule == batch.rules(values[3 * 650:3 * 651], 1)[0]
    dumped = [r for r, _ in client.dump(REP0)]
    expected = batch.rules(values, count)
    del expected[650]
    assert dumped == sorted(expected, key=lambda r: (r.chain, r.prio, r.handle))


def test_a_batch_asks_for_one_ack_per_send_and_errors_still_name_their_rule(client: TcClient) -> None:
    batch = native.FlowerBatch(rule(0), ["handle"], native=False)
    device = ScriptedDevice(None)
    assert TcClient(device).send_batch(batch, array.array("Q", range(1, 6)), 5) == [None] * 5
    assert [bool(flags & nl.NLM_F_ACK) for flags in device.sent_flags] == [False] * 4 + [True]
    # a device that acks only when asked (the simulated NIC, like the kernel): the failing rule in the
    # middle is named, the others succeed
    batch = native.FlowerBatch(rule(0), ["prio", "handle", "ipv4_dst"], native=False)
    rows = [(1, 1, 0x0A000001), (1, 2, 0x0A000002), (1, 2, 0x0A000003), (1, 3, 0x0A000004)]
    results = client.send_batch(batch, array.array("Q", [v for row in rows for v in row]), 4)
    assert results[:2] == [None, None] and results[3] is None and results[2].errno == errno.EEXIST


def test_a_batch_is_refused_by_a_client_that_checks_echoes() -> None:
    batch = native.FlowerBatch(rule(0), ["handle"], native=False)
    with pytest.raises(ValueError, match="send_batch does not check NLM_F_ECHO"):
        TcClient(ScriptedDevice(None), echo=True).send_batch(batch, array.array("Q", [1]), 1)


def test_echo_from_the_simulated_nic_is_checked_and_matches(sock_dir: str) -> None:
    path = os.path.join(sock_dir, "ctl")
    eswitch, stop = serve(path, "sim-basic")
    tc = TcClient(SimSocketTransport(path), timeout=5.0, echo=True)
    try:
        auto = dataclasses.replace(rule(7), prio=0, handle=0)  # the device chooses prio and handle
        assert tc.add([auto, rule(1)]) == [None, None]
        assert tc.replace([rule(1, out=REP0)]) == [None]
        assert tc.delete([rule(1)]) == [None]
        assert [(r.prio, r.handle) for r, _ in tc.dump(REP0)] == [(0xC000, 1)]  # tc's first automatic prio
    finally:
        tc.close()
        stop()
    assert eswitch.rule_count == 1


class ScriptedDevice:
    """A transport standing in for a device that acknowledges everything and answers ``echo(request)`` first."""

    def __init__(self, echo: Callable[[nl.Message], bytes] | None) -> None:
        self.echo = echo
        self.replies: list[bytes] = []
        self.sent_flags: list[int] = []

    def send(self, data: bytes) -> None:
        for msg in nl.split_messages(data):
            self.sent_flags.append(msg.flags)
            if self.echo is not None and msg.type == fl.RTM_NEWTFILTER:
                self.replies.append(self.echo(msg))
            self.replies.append(nl.encode_error(msg, 0))

    def recv(self, timeout: float) -> bytes:
        if not self.replies:
            raise TimeoutError("scripted device: nothing more to say")
        data, self.replies = b"".join(self.replies), []
        return data

    def close(self) -> None:
        pass


def echoing(tamper: Callable[[fl.FlowerRule], fl.FlowerRule]) -> Callable[[nl.Message], bytes]:
    """An echo of the request's rule as ``tamper`` changes it, flagged in hardware as a device's is."""
    def echo(msg: nl.Message) -> bytes:
        stored = tamper(fl.decode_filter_message(msg)[0])
        return fl.encode_filter(stored, fl.RTM_NEWTFILTER, msg.flags, msg.seq, status_flags=fl.TCA_CLS_FLAGS_IN_HW)
    return echo


def test_an_echo_that_differs_from_the_request_is_a_refusal_naming_the_difference() -> None:
    widened = fl.FlowerKeys(ipv4_dst=0x0A000000, ipv4_dst_mask=0xFF000000)
    device = ScriptedDevice(echoing(lambda r: dataclasses.replace(r, keys=widened) if r.handle == 3 else r))
    tc = TcClient(device, echo=True, devices={REP0: "sim0r0"})
    results = tc.add([rule(1), rule(2)])
    assert all(flags & nl.NLM_F_ECHO for flags in device.sent_flags)
    assert results[0] is None
    assert results[1].errno == errno.EINVAL
    assert results[1].message == ("the device's echo differs: keys.ipv4_dst: sent 0xa000002, device has 0xa000000; "
                                  "keys.ipv4_dst_mask: sent 0xffffffff, device has 0xff000000")
    assert str(results[1]).startswith(f"flower rule chain 0 prio 1 handle 3 on ifindex {REP0} (device sim0r0): "
                                      "refused with EINVAL")


def test_an_ack_without_the_echo_is_a_refusal_and_without_echo_nothing_is_checked() -> None:
    (missing,) = TcClient(ScriptedDevice(None), echo=True).add([rule(1)])
    assert missing.errno == errno.EINVAL and "without the NLM_F_ECHO copy" in missing.message
    device = ScriptedDevice(None)
    assert TcClient(device).add([rule(1)]) == [None]
    assert not device.sent_flags[0] & nl.NLM_F_ECHO


def test_an_echo_hwflow_cannot_read_is_a_refusal() -> None:
    def ipv6_echo(msg: nl.Message) -> bytes:
        """The request's bytes with the protocol turned to IPv6: an ipv4_dst match can then never hold."""
        info = (1 << 16) | socket.htons(fl.ETH_P_IPV6)
        payload = msg.payload[:16] + info.to_bytes(4, sys.byteorder) + msg.payload[20:]
        return nl.encode_message(msg.type, msg.flags, msg.seq, payload)

    (err,) = TcClient(ScriptedDevice(ipv6_echo), echo=True).add([rule(1)])
    assert err.errno == errno.EINVAL and "cannot be read back" in err.message and "ipv4_dst needs" in err.message


KERNEL_PROBE = """
import json
from hwflow.backends.tc import flower as fl
from hwflow.backends.tc import netlink as nl
from hwflow.backends.tc.transport import KernelTransport, TcClient
tc = TcClient(KernelTransport())
rule = fl.FlowerRule(1, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=1), (fl.Gact("drop"),))
(err,) = tc.add([rule])
print(json.dumps({"errno": err.errno, "message": err.message, "dump": len(tc.dump(1))}))
"""


@pytest.mark.functional
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private network namespace")
def test_kernel_transport_carries_the_kernels_refusal_text() -> None:
    """This kernel has no flower; its refusal (with extack text) still proves framing and ack matching."""
    ns = f"hwt-sim-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        def probe() -> dict:
            out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", KERNEL_PROBE],
                                 check=True, capture_output=True, text=True, timeout=30,
                                 env={**os.environ, "PYTHONPATH": os.getcwd()})
            return json.loads(out.stdout)

        no_qdisc = probe()
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "ingress"], check=True)
        no_flower = probe()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=True)
    assert no_qdisc["errno"] == errno.EINVAL and "Qdisc" in no_qdisc["message"]
    assert no_flower["errno"] == errno.ENOENT and "classifier not found" in no_flower["message"]
    assert no_flower["dump"] == 0
