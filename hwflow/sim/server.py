"""``hwflow-simnic``: a simulated switchdev SmartNIC in one process.

Run it inside the simulated host's network namespace. It creates the
representor/VF TAP pairs, serves tc-flower netlink on an AF_UNIX
SOCK_SEQPACKET socket, forwards frames through its eswitch, and writes
``<socket>.json`` (atomically) once the devices exist: harnesses wait for
that file, and hwflow's sim driver reads it.

``--wire DEVICE`` gives it a physical port on an existing netdev (one end
of a veth), with an uplink representor ``NAMEp``; a second ``--wire`` gives
it port 1 (as a dual-port ConnectX), uplink representor ``NAMEp1``, e.g.
for provider networks. Port 0 carries the tunnel underlay: the tunnel
devices ``NAMEvx`` (vxlan, 4789) and ``NAMEgn`` (geneve, 6081) are its, so
that it encapsulates and decapsulates as tc rules say (hwflow/sim/dataplane.py).
The status file then lists the ports under ``uplinks`` (``port``,
``representor``, ``representor_ifindex``, ``wire``, ``mac``) and the
tunnel devices under ``tunnels``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import selectors
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

from hwflow.sim import dataplane
from hwflow.sim.eswitch import Eswitch
from hwflow.sim.profile import Profile, ProfileError, load_profile

LOG = logging.getLogger(__name__)
MAX_DATAGRAM = 64 * 1024
RECV_BUFFER = 1 << 20
SOCKET_MODE = 0o600  # the control socket: its owner (root) alone may connect


def pack_datagrams(messages: list[bytes], limit: int = MAX_DATAGRAM) -> list[bytes]:
    """Whole netlink messages grouped into datagrams of at most ``limit`` bytes (a reply may span several)."""
    out: list[bytes] = []
    current = b""
    for msg in messages:
        if current and len(current) + len(msg) > limit:
            out.append(current)
            current = b""
        current += msg
    if current:
        out.append(current)
    return out


Callback = Callable[[], None]


class ControlServer:
    """Serves the eswitch's netlink on a SOCK_SEQPACKET socket, one request datagram at a time."""

    def __init__(self, path: str, eswitch: Eswitch, selector: selectors.BaseSelector) -> None:
        self.path = path
        self._eswitch = eswitch
        self._selector = selector
        if os.path.exists(path):
            os.unlink(path)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._listener.bind(path)
        # Root only: whoever may connect may rewrite the NIC's rules. Before listen() nobody can connect, so
        # there is no moment when the socket is open to others.
        os.chmod(path, SOCKET_MODE)
        self._listener.listen(16)
        self._listener.setblocking(False)
        selector.register(self._listener, selectors.EVENT_READ, self._accept)

    def _accept(self) -> None:
        conn, _ = self._listener.accept()
        conn.setblocking(True)
        self._selector.register(conn, selectors.EVENT_READ, lambda: self._serve(conn))

    def _serve(self, conn: socket.socket) -> None:
        try:
            request = conn.recv(RECV_BUFFER)
            if request:
                for datagram in pack_datagrams(self._eswitch.handle_request(request)):
                    conn.sendall(datagram)
                return
        except OSError as exc:
            LOG.warning("simnic %s: control connection failed: %s", self._eswitch.name, exc)
        except Exception:  # a request the eswitch could not take must not stop the NIC: drop its connection
            LOG.exception("simnic %s: a control request failed; closing its connection", self._eswitch.name)
        self._selector.unregister(conn)
        conn.close()

    def close(self) -> None:
        for key in list(self._selector.get_map().values()):
            if isinstance(key.fileobj, socket.socket):
                self._selector.unregister(key.fileobj)
                key.fileobj.close()
        if os.path.exists(self.path):
            os.unlink(self.path)


def run(selector: selectors.BaseSelector, stopped: Callable[[], bool], tick: float = 0.2) -> None:
    """Dispatch ready fds until ``stopped()``; the tick bounds how late a signal is noticed."""
    while not stopped():
        for key, _ in selector.select(tick):
            key.data()


def serve_in_background(path: str, eswitch: Eswitch, tick: float = 0.05) -> Callable[[], None]:
    """Serve ``eswitch``'s control socket from a thread (tests, benchmarks); returns the stop function."""
    selector = selectors.DefaultSelector()
    control = ControlServer(path, eswitch, selector)
    stop = threading.Event()

    def loop() -> None:
        try:
            run(selector, stop.is_set, tick=tick)
        finally:
            control.close()
            for key in list(selector.get_map().values()):
                key.fileobj.close()

    thread = threading.Thread(target=loop, name=f"simnic-{eswitch.name}", daemon=True)
    thread.start()

    def stop_serving() -> None:
        stop.set()
        thread.join(5)

    return stop_serving


def switch_id(name: str) -> str:
    """Stable across restarts so that ports keep their identity (like a NIC's serial)."""
    return hashlib.sha256(f"hwflow-simnic:{name}".encode()).hexdigest()[:16]


def write_status(path: Path, status: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(status, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def status_of(name: str, profile: Profile, sock: str, ports: list[dataplane.Port],
              uplinks: Sequence[dataplane.Uplink] = ()) -> dict:
    """What ``<socket>.json`` says; ``uplinks`` and ``tunnels`` only with physical ports."""
    status = {"name": name, "profile": profile.to_dict(), "switch_id": switch_id(name), "pid": os.getpid(),
              "socket": sock, "ports": [p.status() for p in ports]}
    if uplinks:
        status["uplinks"] = [u.status() for u in uplinks]
        status["tunnels"] = [t.status() for u in uplinks for t in u.tunnels]
    return status


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="hwflow-simnic", description=__doc__.splitlines()[0])
    parser.add_argument("--name", required=True,
                        help="device name prefix; representors are NAMErI, VFs NAMEvI")
    parser.add_argument("--num-vfs", type=int, required=True, help="number of VF / representor pairs")
    parser.add_argument("--socket", required=True, help="path of the tc control socket (status in PATH.json)")
    parser.add_argument("--profile", default="sim-basic", help="profile name in etc/nic-profiles, or a path")
    parser.add_argument("--wire", metavar="DEVICE", action="append", default=[],
                        help="an existing netdev to be a physical port's wire; the first is port 0, with the "
                             "uplink representor NAMEp and the tunnel devices NAMEvx (vxlan) and NAMEgn (geneve), "
                             f"a second port 1, with NAMEp1 (at most {dataplane.MAX_WIRES})")
    parser.add_argument("--refuse-rate", type=float, default=0.0, metavar="SHARE",
                        help="fault injection: refuse this share (0 to 1) of the rule installs the NIC would "
                             "accept, each with EOPNOTSUPP, ENOSPC or an echo that differs from the request")
    parser.add_argument("--refuse-seed", type=int, default=0, metavar="N",
                        help="seed of --refuse-rate's choices (the same seed, the same faults)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = parser.parse_args(argv)
    if not 0.0 <= args.refuse_rate <= 1.0:
        parser.error(f"--refuse-rate {args.refuse_rate}: a share between 0 and 1")
    if len(args.wire) > dataplane.MAX_WIRES:
        parser.error(f"--wire given {len(args.wire)} times: the simulated NIC has at most "
                     f"{dataplane.MAX_WIRES} physical ports")
    if len(set(args.wire)) < len(args.wire):
        parser.error(f"--wire {args.wire[0]} given twice: each physical port needs its own wire")
    names = [f"{args.name}r{max(args.num_vfs - 1, 0)}",
             *(dataplane.uplink_names(args.name, len(args.wire)) if args.wire else [])]
    longest = max(names, key=len)
    if args.num_vfs < 1 or len(longest) >= dataplane.IFNAMSIZ:
        parser.error(f"--name {args.name!r} with --num-vfs {args.num_vfs}: need at least one VF and device "
                     f"names of at most {dataplane.IFNAMSIZ - 1} characters ({longest!r} is too long)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        print(f"hwflow-simnic: {exc}", file=sys.stderr)
        return 2
    stop = {"requested": False}

    def request_stop(signum: int, _frame: object) -> None:
        LOG.info("simnic %s: signal %d, exiting", args.name, signum)
        stop["requested"] = True

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    status_path = Path(args.socket + ".json")
    ports = dataplane.create_ports(args.name, args.num_vfs)
    uplinks: list[dataplane.Uplink] = []
    for index, wire in enumerate(args.wire):
        try:
            uplinks.append(dataplane.create_uplink(args.name, wire, index))
        except OSError as exc:
            dataplane.close_uplinks(uplinks)
            dataplane.close_ports(ports)
            print(f"hwflow-simnic: --wire {wire}: {exc}", file=sys.stderr)
            return 2
    selector = selectors.DefaultSelector()
    ifindexes = [p.representor_ifindex for p in ports] + [i for u in uplinks for i in u.ifindexes]
    eswitch = Eswitch(args.name, profile, ifindexes, refuse_rate=args.refuse_rate, refuse_seed=args.refuse_seed)
    plane = dataplane.DataPlane(eswitch, ports, uplinks)
    for port in ports:
        selector.register(port.vf_fd, selectors.EVENT_READ, lambda p=port: plane.from_vf(p))
        selector.register(port.rep_fd, selectors.EVENT_READ, lambda p=port: plane.from_representor(p))
    for uplink in uplinks:
        selector.register(uplink.wire_sock.fileno(), selectors.EVENT_READ, lambda u=uplink: plane.from_wire(u))
        selector.register(uplink.rep_fd, selectors.EVENT_READ, lambda u=uplink: plane.from_uplink_representor(u))
        for device in uplink.tunnels:
            selector.register(device.fd, selectors.EVENT_READ, lambda d=device: plane.from_tunnel_device(d))
    control = ControlServer(args.socket, eswitch, selector)
    try:
        write_status(status_path, status_of(args.name, profile, args.socket, ports, uplinks))
        wires = "".join(f", wire {u.wire} (uplink {u.representor})" for u in uplinks)
        LOG.info("simnic %s: %d VFs%s, profile %s, control socket %s", args.name, len(ports), wires, profile.name,
                 args.socket)
        run(selector, lambda: stop["requested"])
    finally:
        control.close()
        status_path.unlink(missing_ok=True)
        dataplane.close_ports(ports)
        dataplane.close_uplinks(uplinks)
        LOG.info("simnic %s: stopped (%s)%s", args.name, plane.counters,
                 f", injected refusals {eswitch.injected}" if args.refuse_rate else "")
    return 0


if __name__ == "__main__":
    sys.exit(main())
