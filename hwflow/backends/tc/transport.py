"""Sending tc-flower messages and matching the answers, to the kernel or the simulated NIC.

Only the transport differs between a real NIC (rtnetlink in the current
network namespace) and the simulated one (its AF_UNIX control socket): the
messages and the client are the same.
"""

from __future__ import annotations

import array
import dataclasses
import errno
import os
import select
import socket
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc import native
from hwflow.backends.tc import netlink as nl

RECV_BUFFER = 1 << 20
_NLMSG_FLAGS_OFFSET = 6  # struct nlmsghdr: len u32, type u16, flags u16 (host order)
MAX_SEND_BYTES = 60 * 1024  # under the AF_UNIX datagram limit and netlink's default rcvbuf


class TcError(Exception):
    """The device (or kernel) refused a request; ``message`` is its extack text, ``device`` its name if known."""

    def __init__(self, err: int, message: str | None, rule: fl.FlowerRule | None,
                 ifindex: int | None = None, device: str | None = None) -> None:
        self.errno = err
        self.message = message
        self.rule = rule
        self.ifindex = rule.ifindex if rule is not None else ifindex
        self.device = device
        super().__init__(str(self))

    def __str__(self) -> str:
        what = self.rule.describe() if self.rule is not None else f"tc request on ifindex {self.ifindex}"
        if self.device:
            what += f" (device {self.device})"
        detail = f": {self.message}" if self.message else ""
        code = "EOPNOTSUPP" if self.errno == errno.EOPNOTSUPP else errno.errorcode.get(self.errno, "?")
        return f"{what}: refused with {code} ({os.strerror(self.errno)}){detail}"


class Transport(Protocol):
    def send(self, data: bytes) -> None: ...

    def recv(self, timeout: float) -> bytes:
        """One datagram (one or more whole netlink messages); TimeoutError if none comes in time."""
        ...

    def close(self) -> None: ...


def _recv(sock: socket.socket, timeout: float, what: str) -> bytes:
    ready, _, _ = select.select([sock], [], [], timeout)
    if not ready:
        raise TimeoutError(f"{what}: no answer within {timeout:g}s")
    data = sock.recv(RECV_BUFFER)
    if not data:
        raise ConnectionError(f"{what}: the peer closed the connection")
    return data


class SimSocketTransport:
    """The simulated NIC's control socket (SOCK_SEQPACKET: datagram boundaries are kept)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self._sock.connect(path)
        except OSError as exc:
            self._sock.close()
            raise ConnectionError(f"simulated NIC control socket {path}: {exc.strerror or exc}; "
                                  "is hwflow-simnic running with this --socket?") from exc

    def send(self, data: bytes) -> None:
        self._sock.sendall(data)

    def recv(self, timeout: float) -> bytes:
        return _recv(self._sock, timeout, f"simulated NIC {self.path}")

    def close(self) -> None:
        self._sock.close()


class KernelTransport:
    """rtnetlink in the caller's network namespace, with extended acks so errors carry text."""

    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nl.NETLINK_ROUTE)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECV_BUFFER)
            self._sock.setsockopt(nl.SOL_NETLINK, nl.NETLINK_EXT_ACK, 1)
            self._sock.setsockopt(nl.SOL_NETLINK, nl.NETLINK_CAP_ACK, 1)
            self._sock.bind((0, 0))
        except OSError:
            self._sock.close()
            raise

    def send(self, data: bytes) -> None:
        self._sock.sendto(data, (0, 0))

    def recv(self, timeout: float) -> bytes:
        return _recv(self._sock, timeout, "kernel rtnetlink")

    def close(self) -> None:
        self._sock.close()


def echo_mismatch(sent: fl.FlowerRule, echoed: fl.FlowerRule) -> str | None:
    """How the device's echo of a new rule differs from what was sent; None when it is the same rule.

    A prio or handle of 0 asks the device to choose one, so the echo's is taken.
    """
    if not sent.prio or not sent.handle:
        sent = dataclasses.replace(sent, prio=sent.prio or echoed.prio, handle=sent.handle or echoed.handle)
    diffs = _differences(sent, echoed, "")
    return f"the device's echo differs: {'; '.join(diffs)}" if diffs else None


def _differences(ours: object, theirs: object, path: str) -> list[str]:
    """Field paths (keys.ipv4_dst, ...) where two values differ, descending into dataclasses of one type."""
    if ours == theirs:
        return []
    if dataclasses.is_dataclass(ours) and type(ours) is type(theirs):
        return [d for f in dataclasses.fields(ours)
                for d in _differences(getattr(ours, f.name), getattr(theirs, f.name), f"{path}{f.name}.")]
    show = (lambda v: hex(v)) if isinstance(ours, int) and isinstance(theirs, int) else repr
    return [f"{path.rstrip('.')}: sent {show(ours)}, device has {show(theirs)}"]


class TcClient:
    """Batched tc-flower requests: many messages per send, answers matched by sequence number.

    With ``echo``, new and replaced rules are sent with NLM_F_ECHO and the
    device's copy is compared with what was sent: a device that stored
    something else (a key it ignored, a mask it widened) has not done what was
    asked, so the answer is a refusal (EINVAL), as Open vSwitch treats it.
    ``devices`` maps ifindexes to names for error messages.
    """

    def __init__(self, transport: Transport, timeout: float = 5.0, batch: int = 256, echo: bool = False,
                 devices: Mapping[int, str] | None = None) -> None:
        self._transport = transport
        self._timeout = timeout
        self._batch = batch
        self._echo = echo
        self._devices = dict(devices or {})
        self._seq = 0  # the last sequence number used

    def _next_seq(self) -> int:
        return self._reserve_seqs(1)

    def _reserve_seqs(self, count: int) -> int:
        """The first of ``count`` consecutive sequence numbers (they wrap at 32 bits, as the C encoder's do)."""
        first = (self._seq + 1) & 0xFFFFFFFF
        self._seq = (self._seq + count) & 0xFFFFFFFF
        return first

    def add(self, rules: Iterable[fl.FlowerRule]) -> list[TcError | None]:
        flags = nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_EXCL | self._echo_flag()
        return self._transact(list(rules), lambda rule, seq: fl.encode_newfilter(rule, seq, flags=flags))

    def replace(self, rules: Iterable[fl.FlowerRule]) -> list[TcError | None]:
        """Change rules in place (same chain/prio/handle): no window in which the rule is missing."""
        flags = nl.NLM_F_REQUEST | nl.NLM_F_ACK | nl.NLM_F_CREATE | nl.NLM_F_REPLACE | self._echo_flag()
        return self._transact(list(rules), lambda rule, seq: fl.encode_newfilter(rule, seq, flags=flags))

    def _echo_flag(self) -> int:
        return nl.NLM_F_ECHO if self._echo else 0

    def _error(self, err: int, text: str | None, rule: fl.FlowerRule) -> TcError:
        return TcError(err, text, rule, device=self._devices.get(rule.ifindex))

    def delete(self, rules: Iterable[fl.FlowerRule]) -> list[TcError | None]:
        return self._transact(list(rules), fl.encode_delfilter)

    def _transact(self, rules: list[fl.FlowerRule],
                  encode: Callable[[fl.FlowerRule, int], bytes]) -> list[TcError | None]:
        results: list[TcError | None] = []
        start = 0
        while start < len(rules):
            pending: dict[int, int] = {}  # seq -> index into rules
            chunk = b""
            while start < len(rules) and len(pending) < self._batch:
                seq = self._next_seq()
                msg = encode(rules[start], seq)
                if chunk and len(chunk) + len(msg) > MAX_SEND_BYTES:
                    break
                chunk += msg
                pending[seq] = start
                start += 1
            self._transport.send(chunk)
            results.extend(self._collect_acks(pending, rules.__getitem__,
                                              expect_echo=encode is not fl.encode_delfilter))
        return results

    def send_batch(self, batch: native.FlowerBatch, values: array.array, count: int) -> list[TcError | None]:
        """Send a batch of one shape (see hwflow.backends.tc.native), natively encoded: one answer per rule.

        For bulk installs, where encoding rule objects one by one would bound
        the rate. Echo checking needs the rule objects: use add() for it.
        Only the last message of each send asks for an acknowledgement: netlink
        answers a failing request with an error whatever its flags and handles
        a send's messages in order, so the last ack means every request before
        it without an error succeeded. Reading one ack per rule cost more than
        the kernel's insertion (measured in the VM tier).
        """
        if self._echo:
            raise ValueError("send_batch does not check NLM_F_ECHO copies; use add()/replace() on a client "
                             "with echo, or a client without echo for batches")
        width = batch.shape.row_width
        per_send = max(1, min(self._batch, MAX_SEND_BYTES // batch.message_size))
        buffer = bytearray(per_send * batch.message_size)
        results: list[TcError | None] = []
        for start in range(0, count, per_send):
            n = min(per_send, count - start)
            first = self._reserve_seqs(n)
            written = batch.encode_into(buffer, values[start * width:(start + n) * width], n, first)
            for i in range(n - 1):
                offset = i * batch.message_size + _NLMSG_FLAGS_OFFSET
                flags = int.from_bytes(buffer[offset:offset + 2], sys.byteorder)
                buffer[offset:offset + 2] = (flags & ~nl.NLM_F_ACK).to_bytes(2, sys.byteorder)
            self._transport.send(bytes(buffer[:written]))
            pending = {(first + i) & 0xFFFFFFFF: start + i for i in range(n)}

            def rule_of(index: int) -> fl.FlowerRule:
                return batch.rules(values[index * width:(index + 1) * width], 1)[0]

            results.extend(self._collect_acks(pending, rule_of, expect_echo=False, last_acks_all=True))
        return results

    def _collect_acks(self, pending: dict[int, int], rule_of: Callable[[int], fl.FlowerRule],
                      expect_echo: bool, last_acks_all: bool = False) -> list[TcError | None]:
        """Answers for the requests in ``pending`` (seq -> index), in index order; rule_of(index) names a rule.

        With ``last_acks_all`` only the last request asked for an ack: once it is answered, a request with no
        error succeeded.
        """
        answers: dict[int, TcError | None] = {}
        echoes: dict[int, str | None] = {}  # index -> mismatch (None: the echo is the rule sent)
        last = max(pending.values())
        while len(answers) < len(pending) and not (last_acks_all and last in answers):
            try:
                data = self._transport.recv(self._timeout)
            except TimeoutError as exc:
                for index in pending.values():
                    answers.setdefault(index, self._error(errno.ETIMEDOUT, str(exc), rule_of(index)))
                break
            for msg in nl.split_messages(data):
                if msg.seq not in pending:
                    continue
                index = pending[msg.seq]
                if msg.type == fl.RTM_NEWTFILTER and self._echo and expect_echo:
                    echoes[index] = self._check_echo(rule_of(index), msg)
                elif msg.type == nl.NLMSG_ERROR:
                    error, text = nl.decode_error(msg)
                    answers[index] = self._error(-error, text, rule_of(index)) if error else self._echo_refusal(
                        rule_of, echoes, index, expect_echo)
        return [answers.get(i) for i in sorted(pending.values())]

    @staticmethod
    def _check_echo(rule: fl.FlowerRule, msg: nl.Message) -> str | None:
        try:
            echoed, _ = fl.decode_filter_message(msg)
        except ValueError as exc:
            return f"the device's echo cannot be read back: {exc}"
        return echo_mismatch(rule, echoed)

    def _echo_refusal(self, rule_of: Callable[[int], fl.FlowerRule], echoes: dict[int, str | None], index: int,
                      expect_echo: bool) -> TcError | None:
        """An acknowledged request is still refused when its echo was missing or differs from the rule sent."""
        if not self._echo or not expect_echo:
            return None
        if index not in echoes:
            return self._error(errno.EINVAL, "acknowledged without the NLM_F_ECHO copy of the rule", rule_of(index))
        mismatch = echoes[index]
        return self._error(errno.EINVAL, mismatch, rule_of(index)) if mismatch else None

    def dump(self, ifindex: int, parent: int = fl.INGRESS) -> list[tuple[fl.FlowerRule, fl.RuleStats | None]]:
        """Every flower rule on a device; filters of other kinds and per-prio headers are skipped."""
        seq = self._next_seq()
        self._transport.send(fl.encode_dump(ifindex, seq, parent))
        out = []
        while True:
            for msg in nl.split_messages(self._transport.recv(self._timeout)):
                if msg.seq != seq:
                    continue
                if msg.type == nl.NLMSG_DONE:
                    return out
                if msg.type == nl.NLMSG_ERROR:
                    error, text = nl.decode_error(msg)
                    if error:
                        raise TcError(-error, text, None, ifindex, self._devices.get(ifindex))
                elif msg.type == fl.RTM_NEWTFILTER and _is_flower_rule(msg):
                    out.append(fl.decode_filter_message(msg))

    def close(self) -> None:
        self._transport.close()


def _is_flower_rule(msg: nl.Message) -> bool:
    """The kernel also dumps one options-less entry per (chain, prio): not a rule."""
    attrs = nl.attr_map(msg.payload[fl.TCMSG.size:])
    return nl.get_str(attrs.get(fl.TCA_KIND, b"")) == "flower" and fl.TCA_OPTIONS in attrs
