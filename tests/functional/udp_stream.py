"""A steady UDP stream with sequence numbers, both ends in one process: run one in each VM's namespace.

``python udp_stream.py --bind IP --peer IP --rate 200 --status FILE``: sends ``rate`` datagrams a second to
the peer (each carries its sequence number and the sender's CLOCK_MONOTONIC time, which every namespace on
the machine shares) and receives the peer's. Every 0.1 s FILE (JSON, replaced atomically) says how far it
got: ``sent``, ``received`` (distinct sequence numbers), ``duplicates``, ``last_seq``, ``last_arrival``.
SIGUSR1 stops the sending; SIGTERM ends the process after a final FILE that also lists the ``gaps``: each
run of sequence numbers missing between two received ones, with the arrival times around it, and how late
the packet that ended it arrived (``resumed``), as [first_missing, last_missing, arrived_before, resumed].
Used by tests/functional/test_faults_in_flight.py; standard library only (it runs under any Python).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import struct
import threading
import time

PACKET = struct.Struct("!4sQd")  # magic, sequence number, send time (CLOCK_MONOTONIC)
MAGIC = b"hwfs"
PAD = 64  # payload bytes in all


class Receiver:
    def __init__(self) -> None:
        self.seen = bytearray()
        self.received = 0
        self.duplicates = 0
        self.last_seq = -1
        self.last_arrival = 0.0
        self.first_arrival = 0.0
        self.arrivals: list[tuple[int, float]] = []  # (seq, arrival) in arrival order

    def take(self, seq: int, now: float) -> None:
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


def main() -> int:
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
    state = {"sent": 0, "sending": True, "running": True, "first_send": 0.0}
    lock = threading.Lock()

    def send() -> None:
        interval = 1.0 / args.rate
        start = time.monotonic()
        state["first_send"] = start
        seq = 0
        while state["sending"]:
            now = time.monotonic()
            due = start + seq * interval
            if now < due:
                time.sleep(min(due - now, 0.05))
                continue
            try:
                sock.sendto(PACKET.pack(MAGIC, seq, now).ljust(PAD, b"\0"), (args.peer, args.port))
            except OSError:
                pass  # no route or no neighbour for a moment: that packet is lost, as a VM's would be
            seq += 1
            state["sent"] = seq

    def write(final: bool) -> None:
        with lock:
            status = {"sent": state["sent"], "received": receiver.received, "duplicates": receiver.duplicates,
                      "last_seq": receiver.last_seq, "last_arrival": receiver.last_arrival,
                      "first_arrival": receiver.first_arrival, "first_send": state["first_send"],
                      "rate": args.rate, "final": final}
            if final:
                status["gaps"] = receiver.gaps()
                status["first_seq"] = receiver.seen.find(1) if receiver.received else -1
        tmp = args.status + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(status, f)
        os.replace(tmp, args.status)

    def stop_sending(*_: object) -> None:
        state["sending"] = False

    def stop(*_: object) -> None:
        state["sending"] = False
        state["running"] = False

    signal.signal(signal.SIGUSR1, stop_sending)
    signal.signal(signal.SIGTERM, stop)
    sender = threading.Thread(target=send, daemon=True)
    sender.start()
    next_write = 0.0
    while state["running"]:
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
                with lock:
                    receiver.take(seq, now)
        if now >= next_write:
            write(False)
            next_write = now + 0.1
    sender.join(1)
    write(True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
