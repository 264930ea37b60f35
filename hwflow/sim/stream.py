"""A steady UDP stream with sequence numbers between two VMs, counting what never arrived and what arrived twice.

Each end is this module run in a VM's namespace (``python -m hwflow.sim.stream --bind IP --peer IP --rate 200
--status FILE``; :class:`Stream` starts both and reads them): it sends ``rate`` datagrams a second to the peer
(each carries its sequence number and the sender's CLOCK_MONOTONIC time, which every namespace on the machine
shares) and receives the peer's. Every 0.1 s FILE (JSON, replaced atomically) says how far it got: ``sent``,
``received`` (distinct sequence numbers), ``duplicates``, ``last_seq``, ``last_arrival``. SIGUSR1 stops the
sending; SIGTERM ends the process after a final FILE that also lists the ``gaps``: each run of sequence numbers
missing between two received ones, with the arrival times around it, and how late the packet that ended it
arrived (``resumed``), as [first_missing, last_missing, arrived_before, resumed]. The sending end uses the
standard library only. Used by tests/functional/test_faults_in_flight.py and ``hwflow bench soak``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

PACKET = struct.Struct("!4sQd")  # magic, sequence number, send time (CLOCK_MONOTONIC)
MAGIC = b"hwfs"
PAD = 64  # payload bytes in all


class Receiver:
    """One end's count of the peer's datagrams: a bitmap of the sequence numbers seen (a duplicate is one
    seen before) and each one's arrival time, from which the gaps are found at the end."""

    def __init__(self) -> None:
        self.seen = bytearray()
        self.received = 0
        self.duplicates = 0
        self.last_seq = -1
        self.last_arrival = 0.0
        self.first_arrival = 0.0
        self.arrivals: list[tuple[int, float]] = []  # (seq, arrival) in arrival order

    def take(self, seq: int, now: float) -> None:
        """Datagram ``seq`` arrived at ``now`` (time.monotonic())."""
        if seq >= len(self.seen):
            self.seen.extend(bytes(seq + 1024 - len(self.seen)))
        if self.seen[seq]:
            self.duplicates += 1
            return
        self.seen[seq] = 1
        self.received += 1
        self.last_seq = max(self.last_seq, seq)
        self.last_arrival = now
        self.first_arrival = self.first_arrival or now
        self.arrivals.append((seq, now))

    def gaps(self) -> list[list[float]]:
        """Runs of missing sequence numbers between the first and the last received, with the arrival times
        of the packets around each (by sequence number)."""
        arrival = dict(self.arrivals)
        out: list[list[float]] = []
        seq = self.seen.find(1)
        if seq < 0:
            return out
        while seq <= self.last_seq:
            if self.seen[seq]:
                seq += 1
                continue
            start = seq
            while not self.seen[seq]:
                seq += 1
            out.append([start, seq - 1, arrival[start - 1], arrival[seq]])
        return out


@dataclasses.dataclass
class Sender:
    """The sending half, in its own thread: ``rate`` datagrams a second to ``peer`` until ``sending`` is
    cleared, on schedule (a late datagram is sent at once, not skipped: the sequence numbers stay dense)."""

    sock: socket.socket
    peer: tuple[str, int]
    rate: float
    sent: int = 0
    first_send: float = 0.0
    sending: bool = True

    def run(self) -> None:
        interval = 1.0 / self.rate
        start = self.first_send = time.monotonic()
        seq = 0
        while self.sending:
            now = time.monotonic()
            due = start + seq * interval
            if now < due:
                time.sleep(min(due - now, 0.05))
                continue
            try:
                self.sock.sendto(PACKET.pack(MAGIC, seq, now).ljust(PAD, b"\0"), self.peer)
            except OSError:
                pass  # no route or no neighbour for a moment: that packet is lost, as a VM's would be
            seq += 1
            self.sent = seq


def write_status(path: str, sender: Sender, receiver: Receiver, final: bool) -> None:
    """The status file (see the module's docstring), replaced atomically so the controlling side never reads
    half of it."""
    status = {"sent": sender.sent, "received": receiver.received, "duplicates": receiver.duplicates,
              "last_seq": receiver.last_seq, "last_arrival": receiver.last_arrival,
              "first_arrival": receiver.first_arrival, "first_send": sender.first_send,
              "rate": sender.rate, "final": final}
    if final:
        status["gaps"] = receiver.gaps()
        status["first_seq"] = receiver.seen.find(1) if receiver.received else -1
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(status, f)
    os.replace(tmp, path)


def main() -> int:
    """One end: the sender in a thread, the receiver here, writing the status file every 0.1 s until SIGTERM."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--bind", required=True)
    parser.add_argument("--peer", required=True)
    parser.add_argument("--port", type=int, default=5999)
    parser.add_argument("--rate", type=float, default=200.0)
    parser.add_argument("--status", required=True)
    args = parser.parse_args()

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind((args.bind, args.port))
    sock.settimeout(0.1)
    receiver = Receiver()
    sender = Sender(sock, (args.peer, args.port), args.rate)
    running = threading.Event()
    running.set()

    def stop_sending(*_: object) -> None:
        sender.sending = False

    def stop(*_: object) -> None:
        sender.sending = False
        running.clear()

    signal.signal(signal.SIGUSR1, stop_sending)
    signal.signal(signal.SIGTERM, stop)
    thread = threading.Thread(target=sender.run, daemon=True)
    thread.start()
    next_write = 0.0
    while running.is_set():
        try:
            data = sock.recv(2048)
        except TimeoutError:
            data = b""
        except InterruptedError:
            continue
        now = time.monotonic()
        if len(data) >= PACKET.size:
            magic, seq, _sent = PACKET.unpack_from(data)
            if magic == MAGIC:
                receiver.take(seq, now)
        if now >= next_write:
            write_status(args.status, sender, receiver, False)
            next_write = now + 0.1
    thread.join(1)
    write_status(args.status, sender, receiver, True)
    return 0


# --- the controlling side: both ends started, watched and read ----------------------------------------


class StreamError(RuntimeError):
    """An end of a stream exited, or the stream did not flow in time; the message says which and why."""


@dataclasses.dataclass
class Way:
    """One direction of a stream, as measured at its end."""

    sent: int
    received: int
    duplicates: int
    lost: int  # of the established stream: sent from the first received on, never arrived
    gaps: list[list[float]]  # [first_missing, last_missing, arrived_before, resumed]

    @property
    def longest_silence(self) -> float:
        """Seconds between the last datagram before a gap and the first after it (0: no gap)."""
        return max((resumed - before for _, _, before, resumed in self.gaps), default=0.0)


class Stream:
    """This module in two VMs' namespaces, each sending to the other at ``rate`` datagrams a second; ``stop``
    returns both ways. ``a`` and ``b``: (namespace, address) of each end; status files go to ``workdir``."""

    def __init__(self, name: str, workdir: Path, a: tuple[str, str], b: tuple[str, str], rate: int) -> None:
        self.name = name
        self.rate = rate
        self.ends = {"a": a, "b": b}  # end -> (namespace, address)
        self.status_files = {end: Path(workdir) / f"stream-{name}-{end}.json" for end in self.ends}
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, timeout: float = 15) -> Stream:
        """Start both ends and wait until each has received half a second of the other's datagrams."""
        for end, (ns, address) in self.ends.items():
            peer = self.ends["b" if end == "a" else "a"][1]
            self.status_files[end].unlink(missing_ok=True)
            self.procs[end] = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "hwflow.sim.stream", "--bind", address,
                 "--peer", peer, "--rate", str(self.rate), "--status", str(self.status_files[end])],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        self._wait("to flow both ways", lambda: all(s["received"] >= self.rate // 2 for s in self.status().values()),
                   timeout)
        return self

    def status(self) -> dict[str, dict]:
        """Each end's status file as it last wrote it; an end that exited is a StreamError with its stderr."""
        out = {}
        for end, path in self.status_files.items():
            proc = self.procs[end]
            if proc.poll() is not None:
                raise StreamError(f"stream {self.name} end {end} exited ({proc.returncode}): "
                                  f"{proc.stderr.read().decode(errors='replace') if proc.stderr else ''}")
            try:
                out[end] = json.loads(path.read_text())
            except (OSError, ValueError):
                out[end] = {"received": 0, "sent": 0, "last_arrival": 0.0}
        return out

    def describe(self) -> str:
        return f"stream {self.name}: {self.status()}"

    def flowing_since(self, since: float) -> bool:
        """Whether both ends received a datagram after ``since`` (time.monotonic())."""
        return all(s["last_arrival"] > since for s in self.status().values())

    def first_arrival_after(self, since: float, timeout: float = 30) -> float:
        """Seconds from ``since`` until both ways carry datagrams again."""
        self._wait("to flow again", lambda: self.flowing_since(since), timeout)
        return max(s["last_arrival"] for s in self.status().values()) - since

    def _wait(self, what: str, check: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise StreamError(f"stream {self.name} did not start {what} in {timeout:g}s: {self.describe()}")
            time.sleep(0.1)

    def stop(self) -> dict[str, Way]:
        """Stop sending, let what is in flight arrive, then read both ends: {"a->b": Way, "b->a": Way}."""
        for proc in self.procs.values():
            proc.send_signal(signal.SIGUSR1)
        time.sleep(0.5)
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            proc.wait(10)
        final = {end: json.loads(path.read_text()) for end, path in self.status_files.items()}
        self.procs.clear()
        ways = {}
        for src, dst in (("a", "b"), ("b", "a")):
            got, sent = final[dst], final[src]["sent"]
            lost = sent - got["first_seq"] - got["received"]  # from the first datagram that arrived on
            ways[f"{src}->{dst}"] = Way(sent, got["received"], got["duplicates"], lost, got["gaps"])
        return ways

    def kill(self) -> None:
        """Kill both ends (those still running): the cleanup of a run that failed."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
        self.procs.clear()


if __name__ == "__main__":
    raise SystemExit(main())
