"""Private Open vSwitch daemons for tests and the demo.

Each instance runs its own ovsdb-server and ovs-vswitchd out of one private
run directory, so nothing touches the host's OVS. vswitchd's userspace
datapath names devices globally (``ovs-netdev``, the bridge's internal port),
so two instances on one machine must run in different network namespaces.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

LOG = logging.getLogger(__name__)

SCHEMA = Path("/usr/share/openvswitch/vswitch.ovsschema")
BINARIES = ("ovsdb-tool", "ovsdb-server", "ovs-vsctl", "ovs-vswitchd")
STOP_TIMEOUT = 5.0


class OvsDaemonError(RuntimeError):
    """The daemons could not be started (or a prerequisite is missing)."""


def _require_binaries(netns: str | None) -> None:
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        raise OvsDaemonError(f"Open vSwitch binaries not found: {', '.join(missing)}; "
                             "install openvswitch-switch (apt-get install openvswitch-switch)")
    if not SCHEMA.exists():
        raise OvsDaemonError(f"OVS schema {SCHEMA} is missing; reinstall openvswitch-common")
    if netns is not None and not Path("/run/netns", netns).exists():
        raise OvsDaemonError(f"network namespace {netns!r} does not exist; create it first "
                             f"(ip netns add {netns})")


def _pid_is(pid: int, binary: str) -> bool:
    """True if ``pid`` is alive and runs ``binary`` (guards against recycled pids)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    argv0 = cmdline.split(b"\0", 1)[0].decode(errors="replace")
    return os.path.basename(argv0) == binary


def _terminate(pid: int, binary: str) -> None:
    """SIGTERM, then SIGKILL if the process outlives STOP_TIMEOUT."""
    if not _pid_is(pid, binary):
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if not _pid_is(pid, binary) or _is_zombie(pid):
            return
        time.sleep(0.02)
    LOG.warning("%s (pid %d) ignored SIGTERM for %.0fs; killing it", binary, pid, STOP_TIMEOUT)
    os.kill(pid, signal.SIGKILL)


def _is_zombie(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


class OvsDaemons:
    """ovsdb-server + ovs-vswitchd living in ``rundir`` (and ``netns`` if given)."""

    def __init__(self, rundir: Path, netns: str | None = None) -> None:
        self.rundir = Path(rundir).resolve()
        self.netns = netns
        self._started = False

    @property
    def db_sock(self) -> str:
        return f"unix:{self.rundir}/db.sock"

    def mgmt(self, bridge: str) -> str:
        """The bridge's OpenFlow management socket, which vswitchd always listens on."""
        return f"unix:{self.rundir}/{bridge}.mgmt"

    def _env(self) -> dict[str, str]:
        env = dict(os.environ)
        for var in ("OVS_RUNDIR", "OVS_DBDIR", "OVS_LOGDIR"):
            env[var] = str(self.rundir)
        return env

    def _run(self, argv: list[str]) -> None:
        if self.netns is not None:
            argv = ["ip", "netns", "exec", self.netns, *argv]
        proc = subprocess.run(argv, check=False, env=self._env(), capture_output=True, text=True, timeout=30)
        if proc.returncode != 0:
            raise OvsDaemonError(f"{' '.join(argv)} failed ({proc.returncode}): "
                                 f"{proc.stderr.strip() or proc.stdout.strip()}; logs in {self.rundir}")

    def start(self) -> Self:
        _require_binaries(self.netns)
        self.rundir.mkdir(parents=True, exist_ok=True)
        d = self.rundir
        db = d / "conf.db"
        self._started = True
        try:
            if not db.exists():
                self._run(["ovsdb-tool", "create", str(db), str(SCHEMA)])
            self._run(["ovsdb-server", str(db), f"--remote=punix:{d}/db.sock",
                       f"--pidfile={d}/ovsdb.pid", "--detach", f"--log-file={d}/ovsdb.log",
                       f"--unixctl={d}/ovsdb.ctl"])
            self._run(["ovs-vsctl", f"--db={self.db_sock}", "--no-wait", "init"])
            self.start_vswitchd()
        except BaseException:
            self.stop()
            raise
        LOG.info("OVS daemons running in %s%s", d, f" (netns {self.netns})" if self.netns else "")
        return self

    def start_vswitchd(self) -> None:
        """Start ovs-vswitchd (``start`` does; again after ``kill_vswitchd``): it takes its configuration from
        ovsdb-server, its flow tables empty."""
        d = self.rundir
        self._run(["ovs-vswitchd", self.db_sock, f"--pidfile={d}/vswitchd.pid", "--detach",
                   f"--log-file={d}/vswitchd.log", f"--unixctl={d}/vswitchd.ctl"])

    def kill_vswitchd(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGKILL ovs-vswitchd, as a crash: its datapath and flow tables go, ovsdb-server stays."""
        path = self.rundir / "vswitchd.pid"
        try:
            pid = int(path.read_text().strip())
        except (OSError, ValueError):
            return
        if _pid_is(pid, "ovs-vswitchd"):
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + timeout
            while _pid_is(pid, "ovs-vswitchd") and not _is_zombie(pid) and time.monotonic() < deadline:
                time.sleep(0.01)
        path.unlink(missing_ok=True)

    def adopt(self) -> Self:
        """Take charge of daemons an earlier process started in this rundir, so stop() ends them."""
        self._started = True
        return self

    def stop(self) -> None:
        """Stop only the processes named in our own pidfiles; a no-op the second time."""
        if not self._started:
            return
        for pidfile, binary in (("vswitchd.pid", "ovs-vswitchd"), ("ovsdb.pid", "ovsdb-server")):
            path = self.rundir / pidfile
            try:
                pid = int(path.read_text().strip())
            except (OSError, ValueError):
                continue
            _terminate(pid, binary)
            path.unlink(missing_ok=True)
        self._started = False

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()
