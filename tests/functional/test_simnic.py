"""hwflow-simnic end to end: real TAP devices, real pings between namespaces, rules over its socket."""

from __future__ import annotations

import dataclasses
import errno
import ipaddress
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hwflow import bench
from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.transport import SimSocketTransport, TcClient
from hwflow.sim.profile import load_profile

pytestmark = pytest.mark.functional

REPO = Path(__file__).resolve().parents[2]
MACS = ("02:77:00:00:00:01", "02:77:00:00:00:02")
ADDRS = ("10.77.0.1", "10.77.0.2")


def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(list(args), check=False, capture_output=True, text=True, timeout=60)
    if check and done.returncode:
        raise AssertionError(f"{' '.join(args)} failed ({done.returncode}): {done.stderr}{done.stdout}")
    return done


def ip(ns: str, *args: str) -> subprocess.CompletedProcess:
    return run("ip", "-n", ns, *args)


def no_ipv6(ns: str) -> None:
    """Router solicitations and DAD would add packets the counters should not see."""
    run("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
        "net.ipv6.conf.default.disable_ipv6=1")


@dataclasses.dataclass
class SimNic:
    ns: str
    name: str
    socket: str
    proc: subprocess.Popen
    log: Path
    status: dict

    def port(self, vf: int) -> dict:
        return self.status["ports"][vf]

    def client(self) -> TcClient:
        return TcClient(SimSocketTransport(self.socket), timeout=5.0)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def workdir() -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="hwt-sim-"))  # short: AF_UNIX paths are limited to 108 bytes
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def start_simnic(workdir: Path) -> Iterator:
    """Starts hwflow-simnic in a fresh host namespace; stops it (by pid) and removes everything after."""
    started: list[SimNic] = []

    def start(profile: str = "sim-basic", num_vfs: int = 2) -> SimNic:
        suffix = secrets.token_hex(2)
        ns, name = f"hwt-sim-host-{suffix}", f"hwt-sim{suffix}"
        sock = str(workdir / f"nic{suffix}")
        log = workdir / f"nic{suffix}.log"
        run("ip", "netns", "add", ns)
        no_ipv6(ns)
        ip(ns, "link", "set", "lo", "up")
        with log.open("w") as out:
            proc = subprocess.Popen(
                ["ip", "netns", "exec", ns, sys.executable, "-m", "hwflow.sim.server", "--name", name,
                 "--num-vfs", str(num_vfs), "--socket", sock, "--profile", profile],
                stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONPATH": str(REPO)})
        nic = SimNic(ns, name, sock, proc, log, {})
        started.append(nic)
        deadline = time.monotonic() + 20
        status = Path(sock + ".json")
        while not status.exists():
            assert proc.poll() is None, f"hwflow-simnic exited {proc.returncode}: {nic.output()}"
            assert time.monotonic() < deadline, f"hwflow-simnic did not come up: {nic.output()}"
            time.sleep(0.05)
        nic.status = json.loads(status.read_text())
        return nic

    try:
        yield start
    finally:
        for nic in started:
            if nic.proc.poll() is None:
                nic.proc.send_signal(signal.SIGTERM)
                try:
                    nic.proc.wait(10)
                except subprocess.TimeoutExpired:
                    nic.proc.kill()
                    nic.proc.wait()
            run("ip", "netns", "del", nic.ns, check=False)


@pytest.fixture
def vm_namespaces() -> Iterator[list[str]]:
    suffix = secrets.token_hex(2)
    names = [f"hwt-sim-vm{i}-{suffix}" for i in range(2)]
    try:
        for name in names:
            run("ip", "netns", "add", name)
            no_ipv6(name)
        yield names
    finally:
        for name in names:
            run("ip", "netns", "del", name, check=False)


def plug_vms(nic: SimNic, vms: list[str]) -> None:
    """Move each VF into its VM, rename it eth0, address it, and pin the peer's MAC (no ARP needed)."""
    for i, vm in enumerate(vms):
        ip(nic.ns, "link", "set", nic.port(i)["vf_netdev"], "netns", vm)
        ip(vm, "link", "set", nic.port(i)["vf_netdev"], "name", "eth0")
        ip(vm, "link", "set", "eth0", "address", MACS[i])
        ip(vm, "addr", "add", f"{ADDRS[i]}/24", "dev", "eth0")
        ip(vm, "link", "set", "eth0", "up")
        ip(vm, "link", "set", "lo", "up")
        ip(vm, "neigh", "add", ADDRS[1 - i], "lladdr", MACS[1 - i], "dev", "eth0", "nud", "permanent")


def ping(vm: str, addr: str, count: int = 5) -> subprocess.CompletedProcess:
    return run("ip", "netns", "exec", vm, "ping", "-c", str(count), "-i", "0.2", "-W", "2", addr, check=False)


def rx_packets(ns: str, dev: str) -> int:
    return json.loads(ip(ns, "-s", "-j", "link", "show", dev).stdout)[0]["stats64"]["rx"]["packets"]


def redirect(nic: SimNic, src_vf: int, dst_vf: int) -> fl.FlowerRule:
    dst_ip = int(ipaddress.IPv4Address(ADDRS[dst_vf]))
    out = fl.Mirred(nic.port(dst_vf)["representor_ifindex"])
    return fl.FlowerRule(nic.port(src_vf)["representor_ifindex"], 10, 1, fl.ETH_P_IP,
                         fl.FlowerKeys(ipv4_dst=dst_ip), (out,))


def test_status_file_describes_the_devices(start_simnic) -> None:
    nic = start_simnic()
    assert nic.status["profile"] == load_profile("sim-basic").to_dict()
    assert nic.status["pid"] > 0 and nic.status["socket"] == nic.socket
    assert len(nic.status["switch_id"]) == 16
    for i in range(2):
        port = nic.port(i)
        assert (port["representor"], port["vf_netdev"]) == (f"{nic.name}r{i}", f"{nic.name}v{i}")
        link = json.loads(ip(nic.ns, "-j", "link", "show", port["representor"]).stdout)[0]
        assert link["ifindex"] == port["representor_ifindex"] and "UP" in link["flags"]


def test_rules_forward_pings_between_vms_in_hardware(start_simnic, vm_namespaces: list[str]) -> None:
    nic = start_simnic()
    plug_vms(nic, vm_namespaces)
    reps = [nic.port(i)["representor"] for i in range(2)]
    tc = nic.client()
    try:
        assert tc.add([redirect(nic, 0, 1), redirect(nic, 1, 0)]) == [None, None]
        done = ping(vm_namespaces[0], ADDRS[1])
        assert " 0% packet loss" in done.stdout, done.stdout + nic.output()
        stats = [tc.dump(nic.port(i)["representor_ifindex"]) for i in range(2)]
    finally:
        tc.close()
    assert [len(s) for s in stats] == [1, 1]
    assert all(s[0][1].packets >= 5 for s in stats), stats
    assert [rx_packets(nic.ns, rep) for rep in reps] == [0, 0]  # nothing went up the representors
    assert "added flower rule" in nic.output()


def test_header_rewrites_happen_in_the_nic(start_simnic, vm_namespaces: list[str]) -> None:
    """VM0 sends to a MAC nobody has: only the NIC's pedit of eth dst (between a VLAN push and pop) delivers it."""
    nic = start_simnic("sim-no-tunnel-no-ct")
    plug_vms(nic, vm_namespaces)
    ip(vm_namespaces[0], "neigh", "replace", ADDRS[1], "lladdr", "02:77:00:00:00:99", "dev", "eth0",
       "nud", "permanent")
    rep0, rep1 = (nic.port(i)["representor_ifindex"] for i in range(2))
    mac1 = bytes.fromhex(MACS[1].replace(":", ""))
    fix = fl.FlowerRule(rep0, 10, 1, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=int(ipaddress.IPv4Address(ADDRS[1]))), (
        fl.Vlan("push", 100, 3), fl.Pedit(fl.pedit_set("eth", 0, mac1)), fl.Vlan("pop"), fl.Mirred(rep1)))
    tc = TcClient(SimSocketTransport(nic.socket), timeout=5.0, echo=True)  # the device's echoes are checked too
    try:
        assert tc.add([fix, redirect(nic, 1, 0)]) == [None, None], nic.output()
        done = ping(vm_namespaces[0], ADDRS[1])
        assert " 0% packet loss" in done.stdout, done.stdout + nic.output()
        ((dumped, stats),) = tc.dump(rep0)
    finally:
        tc.close()
    assert dumped == fix and stats.packets >= 5
    assert [rx_packets(nic.ns, nic.port(i)["representor"]) for i in range(2)] == [0, 0]


def test_misses_go_up_the_representors_and_a_bridge_forwards_them(start_simnic,
                                                                   vm_namespaces: list[str]) -> None:
    nic = start_simnic()
    plug_vms(nic, vm_namespaces)
    bridge = f"hwt-sim-br{secrets.token_hex(2)}"
    ip(nic.ns, "link", "add", bridge, "type", "bridge")
    reps = [nic.port(i)["representor"] for i in range(2)]
    for rep in reps:
        ip(nic.ns, "link", "set", rep, "master", bridge)
    ip(nic.ns, "link", "set", bridge, "up")
    done = ping(vm_namespaces[0], ADDRS[1])
    assert " 0% packet loss" in done.stdout, done.stdout + nic.output()
    assert all(rx_packets(nic.ns, rep) >= 5 for rep in reps)


def test_refusals_keep_what_fits(start_simnic, workdir: Path) -> None:
    nic = start_simnic("sim-tiny")
    rep0, rep1 = (nic.port(i)["representor_ifindex"] for i in range(2))
    rules = [fl.FlowerRule(rep0, 10, i + 1, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=0x0A4D0000 + i),
                           (fl.Mirred(rep1),)) for i in range(9)]
    tc = nic.client()
    try:
        results = tc.add(rules)
        kept = [r for r, _ in tc.dump(rep0)]
    finally:
        tc.close()
    assert results[:8] == [None] * 8
    assert results[8].errno == errno.ENOSPC
    assert kept == rules[:8]
    assert "table full" in nic.output()

    lacking = load_profile("sim-basic").to_dict()
    del lacking["capabilities"]["match_fields"]["tcp_dst"]
    path = workdir / "no-l4.json"
    path.write_text(json.dumps({**lacking, "name": "no-l4"}))
    nic = start_simnic(str(path))
    rep0, rep1 = (nic.port(i)["representor_ifindex"] for i in range(2))
    web = fl.FlowerRule(rep0, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(ip_proto=6, tcp_dst=443), (fl.Mirred(rep1),))
    tc = nic.client()
    try:
        (err,) = tc.add([web])
        assert tc.dump(rep0) == []
    finally:
        tc.close()
    assert err.errno == errno.EOPNOTSUPP
    assert err.message == (f"simnic {nic.name}: match on tcp_dst with mask 0xffff is not supported "
                           "by profile no-l4")


def test_sigterm_removes_the_socket_status_and_devices(start_simnic) -> None:
    nic = start_simnic()
    nic.proc.send_signal(signal.SIGTERM)
    assert nic.proc.wait(10) == 0
    assert not os.path.exists(nic.socket) and not os.path.exists(nic.socket + ".json")
    assert run("ip", "-n", nic.ns, "link", "show", nic.port(0)["representor"], check=False).returncode != 0


def test_the_tc_install_bench_starts_its_own_nic_and_verifies_the_rules() -> None:
    module = bench.load("tc-install")
    results = module.run(bench.parse_params(module.DEFAULTS, ["rules=600"]), lambda text: None)
    assert (results["rules_verified"], results["refused"]) == (600, 0)
    assert results["python_rules_per_s"] > 0 and results["native_rules_per_s"] > 0
