"""``hwflow capabilities`` on real devices, inside a network namespace of our own."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

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
    name = f"hwt-cap-{secrets.token_hex(4)}"
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
