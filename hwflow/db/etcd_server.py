"""Private etcd servers on loopback, for tests and benchmarks that need a real etcd.

Each member gets its own data directory and free ports on 127.0.0.1; the
context manager stops exactly the processes it started (by PID) and removes
their directories, even when the body fails, and a member dies with the
thread that started it if that is killed (start members from a thread that
lives as long as they should: the main thread in tests and benchmarks). ``stop``/``start`` of one
member let fault tests take the database away and bring it back. A port
chosen free and taken by someone else before etcd binds it (seen in CI)
makes the cluster start again on new ports, up to ``START_ATTEMPTS`` times.
With ``tls`` the members serve clients over TLS only and require a client
certificate signed by its CA (``--client-cert-auth``); peers stay plain on
loopback. Members serve clients on 127.0.0.1 and on ``more_client_ips``
(for a network namespace to reach them: the address of a veth the caller
made; ``url_at`` names them there).
"""

from __future__ import annotations

import ctypes
import dataclasses
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from typing import Self

import requests

ETCD_BINARY = "/usr/bin/etcd"
START_TIMEOUT = 60.0  # the machine is shared and busy: a cold member can take a while
START_ATTEMPTS = 3  # a port found free can be taken before etcd binds it: new ports, then again
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child: be terminated when the process that started us dies, even by SIGKILL.

    A test run killed by a timeout then leaves no etcd behind on the shared machine.
    """
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    return free_ports(1)[0]


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports on 127.0.0.1 (held together while chosen, so none repeats)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class PortTaken(RuntimeError):
    """A member found a port it was given in use (taken between our choosing it and etcd binding it)."""


@dataclasses.dataclass(frozen=True)
class ServerTls:
    """PEM files of a TLS member: its certificate and key, the CA its clients' certificates must chain to,
    and a client certificate and key of that CA's for checking the member is ready."""

    ca_file: str
    cert_file: str
    key_file: str
    client_cert_file: str
    client_key_file: str


@dataclasses.dataclass
class Member:
    name: str
    client_port: int
    peer_port: int
    data_dir: str
    log_path: str
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.client_port}"


class EtcdCluster:
    """``size`` etcd members on 127.0.0.1 forming one cluster (1 = a single server)."""

    def __init__(self, size: int = 1, binary: str = ETCD_BINARY, tls: ServerTls | None = None,
                 more_client_ips: Sequence[str] = ()) -> None:
        if not os.path.exists(binary):
            raise FileNotFoundError(f"{binary} not found: apt-get install etcd-server")
        self.binary = binary
        self.tls = tls
        self.client_ips = ["127.0.0.1", *more_client_ips]
        self.root = tempfile.mkdtemp(prefix="hwflow-etcd-")
        self.members = [Member(f"m{i}", 0, 0, os.path.join(self.root, f"m{i}.etcd"),
                               os.path.join(self.root, f"m{i}.log")) for i in range(size)]
        self._new_ports()

    def _new_ports(self) -> None:
        """Fresh ports for every member, and fresh data: the cluster's peer list names them all."""
        ports = free_ports(2 * len(self.members))
        for i, m in enumerate(self.members):
            m.client_port, m.peer_port = ports[2 * i], ports[2 * i + 1]
            shutil.rmtree(m.data_dir, ignore_errors=True)

    @property
    def url(self) -> str:
        """The driver URL naming every member."""
        return self.url_at("127.0.0.1")

    def url_at(self, ip: str) -> str:
        """The driver URL naming every member at ``ip``, one of ``client_ips``."""
        return ("etcds://" if self.tls else "etcd://") + ",".join(f"{ip}:{m.client_port}" for m in self.members)

    def _command(self, member: Member) -> list[str]:
        cluster = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        tls = ["--cert-file", self.tls.cert_file, "--key-file", self.tls.key_file, "--trusted-ca-file",
               self.tls.ca_file, "--client-cert-auth"] if self.tls else []
        return [
            self.binary, "--name", member.name, "--data-dir", member.data_dir, *tls,
            "--listen-client-urls", ",".join(f"{self._scheme}://{ip}:{member.client_port}" for ip in self.client_ips),
            "--advertise-client-urls", f"{self._scheme}://{member.endpoint}",
            "--listen-peer-urls", f"http://127.0.0.1:{member.peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{member.peer_port}",
            "--initial-cluster", cluster, "--initial-cluster-state", "new",
            "--initial-cluster-token", os.path.basename(self.root),
            # Loopback on a busy machine: relaxed heartbeats avoid needless elections.
            "--heartbeat-interval", "100", "--election-timeout", "2000",
        ]

    @property
    def _scheme(self) -> str:
        return "https" if self.tls else "http"

    def start(self, member: Member | None = None) -> None:
        """Start every member (or one), then wait until the cluster answers writes."""
        for m in [member] if member else self.members:
            if m.process is None or m.process.poll() is not None:
                log = open(m.log_path, "ab")  # noqa: SIM115 - the child keeps writing to it
                m.process = subprocess.Popen(self._command(m), stdout=log, stderr=subprocess.STDOUT,
                                             env={**os.environ, "ETCD_UNSUPPORTED_ARCH": ""},
                                             preexec_fn=_die_with_parent)
                log.close()
        self.wait_ready(member)

    def wait_ready(self, member: Member | None = None) -> None:
        """Wait until the member(s) report healthy (a leader elected, writes possible)."""
        deadline = time.monotonic() + START_TIMEOUT
        tls = ({"verify": self.tls.ca_file, "cert": (self.tls.client_cert_file, self.tls.client_key_file)}
               if self.tls else {})
        for m in [member] if member else [m for m in self.members if m.process is not None]:
            while True:
                if m.process is not None and m.process.poll() is not None:
                    tail = self._tail(m)
                    error = PortTaken if "address already in use" in tail else RuntimeError
                    raise error(f"etcd member {m.name} exited: {tail}")
                try:
                    health = requests.get(f"{self._scheme}://{m.endpoint}/health", timeout=2, **tls).json()
                    if health.get("health") == "true":
                        break
                except (requests.RequestException, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"etcd member {m.name} not ready in {START_TIMEOUT}s: {self._tail(m)}")
                time.sleep(0.1)

    def stop(self, member: Member | None = None) -> None:
        """Stop every member (or one) by its PID; its data stays for a restart."""
        for m in [member] if member else self.members:
            if m.process is not None and m.process.poll() is None:
                m.process.terminate()
                try:
                    m.process.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    m.process.kill()
                    m.process.wait(timeout=20)
            m.process = None

    def _tail(self, member: Member) -> str:
        try:
            with open(member.log_path, encoding="utf-8", errors="replace") as f:
                return f.read()[-1500:]
        except OSError:
            return "(no log)"

    def close(self) -> None:
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            for attempt in range(START_ATTEMPTS):
                try:
                    self.start()
                    break
                except PortTaken:
                    self.stop()
                    if attempt == START_ATTEMPTS - 1:
                        raise
                    self._new_ports()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
