"""Local endpoints are root-only (issue 16, part 4): the simulated NIC's control socket, the agent's published
plan, and the metrics server on loopback unless configured otherwise.

Each test shows the refusal itself where it can: a process that is not root cannot connect, cannot read.
"""

from __future__ import annotations

import os
import selectors
import shutil
import socket
import stat
import tempfile
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hwflow.agent import published
from hwflow.agent.metrics import AgentMetrics
from hwflow.conf import new_conf
from hwflow.sim.eswitch import Eswitch
from hwflow.sim.profile import load_profile
from hwflow.sim.server import ControlServer

NOBODY = 65534


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A directory anyone may enter (0755), so only the mode of what is in it can refuse a stranger."""
    path = Path(tempfile.mkdtemp(prefix="hwt-ep-"))  # short: AF_UNIX paths are limited to 108 bytes
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def as_nobody(action: Callable[[], object]) -> str:
    """What ``action`` gives (or the name of the OSError it raises) in a forked child that is not root.

    A fork, not a new interpreter: nobody may not run root's Python. The child only calls ``action``.
    """
    if os.geteuid() != 0:
        pytest.skip("needs root, to run a process as nobody")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to nobody, try, report, and leave without running anything of pytest's
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                answer = str(action())
            except OSError as exc:
                answer = type(exc).__name__
            os.write(write_end, answer.encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        answer = pipe.read().decode()
    os.waitpid(pid, 0)
    return answer


def connect(path: str) -> str:
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.connect(path)
    return "connected"


def mode(path: Path | str) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_the_simulated_nics_control_socket_refuses_all_but_root(open_dir: Path) -> None:
    path = str(open_dir / "simnic.sock")
    selector = selectors.DefaultSelector()
    server = ControlServer(path, Eswitch("hwt-ep", load_profile("sim-basic"), [11, 12]), selector)
    try:
        assert mode(path) == 0o600
        assert as_nobody(lambda: connect(path)) == "PermissionError"
        os.chmod(path, 0o666)  # the same socket open to all: the stranger gets in (the check above can fail)
        assert as_nobody(lambda: connect(path)) == "connected"
    finally:
        server._listener.close()
        selector.close()


def test_the_published_plan_is_root_only_even_over_a_file_left_behind(open_dir: Path) -> None:
    state_dir = open_dir / "state"
    target = published.path_for(state_dir, "host-a")
    state_dir.mkdir(mode=0o755)
    stale = target.with_name(f".{target.name}.{os.getpid()}.tmp")  # a crash's leftover, readable by all
    stale.write_bytes(b"old")
    stale.chmod(0o644)
    old_umask = os.umask(0)
    try:
        published.write_atomically(target, b"plan")
        fresh = open_dir / "fresh" / "state"
        published.write_atomically(published.path_for(fresh, "host-a"), b"plan")
    finally:
        os.umask(old_umask)
    assert mode(target) == 0o600 and target.read_bytes() == b"plan"
    assert mode(fresh) == 0o700 and mode(published.path_for(fresh, "host-a")) == 0o600
    assert as_nobody(target.read_bytes) == "PermissionError"


def test_metrics_are_served_on_loopback_unless_configured_otherwise() -> None:
    conf = new_conf([])
    assert conf.agent.metrics_host == "127.0.0.1"
    metrics = AgentMetrics()
    metrics.serve(conf.agent.metrics_host, 0)
    try:
        host, port = metrics._server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
            assert b"hwflow_agent" in reply.read()
    finally:
        metrics.close()
