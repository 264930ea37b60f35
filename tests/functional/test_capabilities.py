"""``hwflow capabilities`` on real devices, inside a network namespace of our own."""

from __future__ import annotations

import errno
import json
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

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.transport import SimSocketTransport, TcClient
from hwflow.sim.profile import load_profile, profile_names

pytestmark = pytest.mark.functional

# The capabilities command under main.py's contract (add_parser, func, load_conf),
# without importing the other commands' modules.
RUNNER = (
    "import argparse, sys\n"
    "from hwflow.cli import capabilities, main\n"
    "top = argparse.ArgumentParser(prog='hwflow')\n"
    "capabilities.add_parser(top.add_subparsers(dest='command', required=True))\n"
    "args = top.parse_args(sys.argv[1:])\n"
    "sys.exit(args.func(args, main.load_conf(args)))\n"
)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"hwt-nic-{secrets.token_hex(4)}"
    ip("netns", "add", name)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


@pytest.fixture
def sim_process() -> Iterator[subprocess.Popen]:
    """A live process whose pid the status file names, standing in for hwflow-simnic."""
    proc = subprocess.Popen(["sleep", "600"])
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait()


def capabilities_json(ns: str, *argv: str) -> dict:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", RUNNER, "capabilities", "--format", "json", *argv],
        check=False, capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return {d["name"]: d for d in json.loads(done.stdout)["devices"]}


def test_veth_is_reported_not_offloadable(netns):
    a, b = f"hwt-cap-{secrets.token_hex(2)}a", f"hwt-cap-{secrets.token_hex(2)}b"
    ip("-n", netns, "link", "add", a, "type", "veth", "peer", "name", b)
    devices = capabilities_json(netns)
    assert set(devices) == {"lo", a, b}
    for name in (a, b):
        assert devices[name]["offload"] is False
        assert devices[name]["driver"] == "veth"
        assert devices[name]["reason"] == "veth: virtual device with no embedded switch"
        assert devices[name]["nic_driver"] == "generic"
    assert devices["lo"]["reason"].startswith("loopback")


def test_sim_driver_claims_real_tap_representors(netns, sim_process, tmp_path):
    suffix = secrets.token_hex(2)
    reps = [f"hwt-cap-{suffix}r{i}" for i in range(2)]
    stray = f"hwt-cap-{suffix}x"
    for tap in (*reps, stray):
        ip("-n", netns, "tuntap", "add", "mode", "tap", tap)
    socket = tmp_path / f"hwt-cap-{suffix}.sock"
    Path(f"{socket}.json").write_text(json.dumps({
        "name": f"hwt-cap-{suffix}", "switch_id": "c0ffee", "pid": sim_process.pid, "socket": str(socket),
        "profile": {"name": "tiny", "description": "test profile",
                    "capabilities": {"match_fields": {"eth_dst": "exact", "ipv4_dst": "prefix"},
                                     "actions": ["redirect", "drop"], "max_rules": 16}},
        "ports": [{"vf": i, "representor": rep, "representor_ifindex": 0, "vf_netdev": f"v{i}"}
                  for i, rep in enumerate(reps)],
    }))
    config = tmp_path / "hwflow.conf"
    config.write_text(f"[nic]\ndrivers = sim,generic\nsim_sockets = {socket}\n")

    devices = capabilities_json(netns, "--config-file", str(config))
    for rep in reps:
        dev = devices[rep]
        assert (dev["offload"], dev["nic_driver"], dev["driver"]) == (True, "sim", "tun")
        assert (dev["port_role"], dev["eswitch_mode"], dev["switch_id"]) == ("vf_representor", "switchdev", "c0ffee")
        assert dev["tc_endpoint"] == f"unix:{socket}"
        assert dev["capabilities"]["match_fields"] == {"eth_dst": "exact", "ipv4_dst": "prefix"}
        assert dev["capabilities"]["max_rules"] == 16
    assert devices[stray]["offload"] is False
    assert devices[stray]["reason"] == "tun: tap device not owned by a simulated NIC"

    sim_process.kill()
    sim_process.wait()
    stale = capabilities_json(netns, "--config-file", str(config))
    for rep in reps:
        assert stale[rep]["offload"] is False and stale[rep]["nic_driver"] == "sim"
        assert f"(pid {sim_process.pid}) is not running: stale status file {socket}.json" in stale[rep]["reason"]


# --- a real hwflow-simnic under every NIC profile: discovery, the report, probing, refusals ----------


@pytest.fixture
def simnic(netns, tmp_path_factory) -> Iterator:
    """Starts hwflow-simnic in ``netns`` with a profile; stops it by pid afterwards."""
    started: list[subprocess.Popen] = []
    workdir = Path(tempfile.mkdtemp(prefix="hwt-nic-"))  # short: AF_UNIX paths are limited to 108 bytes

    def start(profile: str) -> tuple[str, dict, Path]:
        name = f"hwt-nic{secrets.token_hex(2)}"
        socket = workdir / f"{name}.sock"
        log = (workdir / f"{name}.log").open("w")
        proc = subprocess.Popen(["ip", "netns", "exec", netns, sys.executable, "-m", "hwflow.sim.server",
                                 "--name", name, "--num-vfs", "2", "--socket", str(socket), "--profile", profile],
                                stdout=log, stderr=subprocess.STDOUT)
        started.append(proc)
        status = Path(f"{socket}.json")
        deadline = time.monotonic() + 30
        while not status.exists():
            assert proc.poll() is None, (workdir / f"{name}.log").read_text()
            assert time.monotonic() < deadline, "hwflow-simnic did not come up"
            time.sleep(0.05)
        config = workdir / f"{name}.conf"
        config.write_text(f"[nic]\ndrivers = sim,generic\nsim_sockets = {socket}\nprobe_cache = {workdir}/probes\n")
        return str(socket), json.loads(status.read_text()), config

    try:
        yield start
    finally:
        for proc in started:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


@pytest.mark.parametrize("profile_name", profile_names())
def test_the_simulated_nic_under_every_profile(netns, simnic, profile_name):
    profile = load_profile(profile_name)
    socket, status, config = simnic(profile_name)
    reps = [p["representor"] for p in status["ports"]]

    devices = capabilities_json(netns, "--config-file", str(config))
    for rep in reps:
        dev = devices[rep]
        assert (dev["offload"], dev["nic_driver"], dev["port_role"]) == (True, "sim", "vf_representor")
        assert dev["capabilities"] == profile.capabilities.to_dict()
        assert dev["capability_source"] == f"simulated NIC {status['name']}: profile {profile_name}"
        assert dev["probe"] is None

    probed = capabilities_json(netns, "--config-file", str(config), "--device", reps[0], "--probe")[reps[0]]
    statuses = {r["claim"]: r["status"] for r in probed["probe"]["results"]}
    caps = profile.capabilities
    for action in ("redirect", "drop", "pass"):
        assert statuses[f"action {action}"] == ("confirmed" if action in caps.actions else "refused"), action
    for field in ("eth_dst", "ipv4_dst", "ipv6_src"):
        expected = "confirmed" if field in caps.match_fields else "refused"
        assert statuses[f"match {field} exact"] == expected, field
    assert statuses["chains"] == ("refused" if caps.max_chains == 1 else "confirmed")
    assert statuses["capacity"] == "not_probed"
    tc = TcClient(SimSocketTransport(socket))
    try:
        assert tc.dump(status["ports"][0]["representor_ifindex"]) == []  # the probes left nothing behind
    finally:
        tc.close()


def test_the_64_rule_profile_refuses_the_65th_with_enospc_and_an_unclaimed_action_with_eopnotsupp(netns, simnic):
    socket, status, _ = simnic("sim-64")
    rep0, rep1 = (p["representor_ifindex"] for p in status["ports"])
    rules = [fl.FlowerRule(rep0, 10, i + 1, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=0x0A000000 + i), (fl.Mirred(rep1),))
             for i in range(65)]
    tc = TcClient(SimSocketTransport(socket))
    try:
        results = tc.add(rules)
        punt = fl.FlowerRule(rep0, 20, 1, fl.ETH_P_IP, fl.FlowerKeys(ipv4_src=1), (fl.Gact("pass"),))
        (refused,) = tc.add([punt])
    finally:
        tc.close()
    assert results[:64] == [None] * 64
    assert results[64].errno == errno.ENOSPC and "rule table full (64 rules, profile sim-64)" in results[64].message
    assert refused.errno == errno.EOPNOTSUPP  # the table being full is not the reason: the action is
    assert "action pass is not supported by profile sim-64" in refused.message
