"""``hwflow capabilities``: its parser contract, table, JSON shape and errors."""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from hwflow.cli import capabilities, main
from hwflow.offload.capabilities import Capabilities
from hwflow.sim.eswitch import Eswitch
from hwflow.sim.profile import load_profile
from hwflow.sim.server import serve_in_background

HOST = Path(__file__).parent / "fixtures" / "sysfs" / "smartnic-host"
DEVICE_KEYS = {"name", "driver", "offload", "reason", "capabilities", "nic_driver", "pci_id", "switch_id",
               "port_role", "eswitch_mode", "tc_endpoint", "ifindex", "firmware", "capability_source",
               "tunnel_type", "tunnel_dst_port"}


def parser() -> argparse.ArgumentParser:
    """The same contract main.build_parser uses, without the other commands' modules."""
    top = argparse.ArgumentParser(prog="hwflow")
    capabilities.add_parser(top.add_subparsers(dest="command", required=True))
    return top


def run(*argv: str) -> int:
    args = parser().parse_args(["capabilities", *argv])
    return args.func(args, main.load_conf(args))


@pytest.fixture
def config(tmp_path) -> Path:
    socket = tmp_path / "hwt-cap-sim.sock"
    Path(f"{socket}.json").write_text(json.dumps({
        "name": "simnic0", "switch_id": "5151", "pid": os.getpid(), "socket": str(socket),
        "profile": {"name": "p", "description": "d",
                    "capabilities": {"match_fields": {"eth_dst": "exact"}, "actions": ["redirect"],
                                     "max_rules": 8}},
        "ports": [{"vf": 0, "representor": "simnic0r0", "representor_ifindex": 11, "vf_netdev": "simnic0v0"}],
    }))
    path = tmp_path / "hwflow.conf"
    path.write_text(f"[nic]\ndrivers = sim,generic\nsim_sockets = {socket}\n")
    return path


def json_output(capsys, *argv: str) -> dict:
    assert run("--format", "json", *argv) == 0
    return json.loads(capsys.readouterr().out)


def test_json_shape(capsys, config):
    out = json_output(capsys, "--sysfs-root", str(HOST), "--config-file", str(config))
    assert set(out) == {"devices", "eswitches", "sources_missing"}
    assert {d["name"] for d in out["devices"]} == {p.name for p in (HOST / "class" / "net").iterdir()}
    for dev in out["devices"]:
        assert set(dev) == DEVICE_KEYS | {"probe"}
        assert dev["probe"] is None
        assert isinstance(dev["offload"], bool)
        assert (dev["reason"] is None) == dev["offload"]
        Capabilities.from_dict(dev["capabilities"])
    devs = {d["name"]: d for d in out["devices"]}
    assert devs["simnic0r0"]["nic_driver"] == "sim" and devs["simnic0r0"]["offload"] is True
    assert devs["simnic0r0"]["capabilities"]["match_fields"] == {"eth_dst": "exact"}
    assert devs["simnic0r1"]["nic_driver"] == "generic"  # not listed in the status file
    assert devs["enp3s0f0npf0vf0"]["tc_endpoint"] == "netlink"
    assert devs["veth0"]["reason"] == "veth: virtual device with no embedded switch"
    assert out["sources_missing"] == [f"devlink: 0000:00:03.0 not recorded in {HOST}/hwflow-recorded.json"]


def test_driver_problems_are_listed_with_missing_sources(capsys, tmp_path):
    path = tmp_path / "hwflow.conf"
    path.write_text(f"[nic]\nsim_sockets = {tmp_path}/absent.sock\n")
    out = json_output(capsys, "--sysfs-root", str(HOST), "--config-file", str(path))
    assert any(f"no status file {tmp_path}/absent.sock.json" in m for m in out["sources_missing"])


def test_table_lists_every_device(capsys):
    assert run("--sysfs-root", str(HOST)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["NAME", "DRIVER", "NIC_DRIVER", "PCI_ID", "SWITCH_ID", "ROLE", "ESWITCH",
                                "REPRESENTORS", "OFFLOAD", "REASON"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if line and not line.startswith(" ")}
    assert rows["enp3s0f0npf0vf1"][:9] == ["enp3s0f0npf0vf1", "mlx5_core", "mlx5", "15b3:101d",
                                           "b8f0c20003a43a1c", "vf_representor", "switchdev", "-", "yes"]
    assert rows["enp3s0f0np0"][7:11] == ["1", "pf", "2", "vf"]  # the uplink counts its eswitch's representors
    assert rows["enp3s0f1np1"][6:10] == ["legacy", "-", "no", "mlx5_core"]
    assert "sources missing:" in lines


def test_one_device_in_full(capsys, tmp_path):
    generic_only = tmp_path / "generic.conf"  # the generic driver's conservative baseline, not mlx5's facts
    generic_only.write_text("[nic]\ndrivers = generic\n")
    assert run("--sysfs-root", str(HOST), "--config-file", str(generic_only), "--device", "enp3s0f0np0") == 0
    out = capsys.readouterr().out
    assert "enp3s0f0npf0vf0" not in out
    for field in ("eth_src", "eth_dst", "eth_type"):
        assert any(line.split() == [field, "exact"] for line in out.splitlines())
    assert any(line.split() == ["actions", "drop,redirect"] for line in out.splitlines())
    assert any(line.split() == ["port_role", "uplink"] for line in out.splitlines())


def test_one_device_as_json(capsys):
    out = json_output(capsys, "--sysfs-root", str(HOST), "--device", "lo")
    assert [d["name"] for d in out["devices"]] == ["lo"]


def test_unknown_device_is_an_error_listing_the_present_ones():
    with pytest.raises(main.CliError, match=r"no network device named 'eth9'; present: br0, enp3s0f0np0"):
        run("--sysfs-root", str(HOST), "--device", "eth9")


def test_unknown_nic_driver_in_config(tmp_path):
    path = tmp_path / "hwflow.conf"
    path.write_text("[nic]\ndrivers = sim,bogus\n")
    with pytest.raises(main.CliError, match=r"unknown NIC driver\(s\) bogus; installed .*generic, ice, mlx5, sim"):
        run("--sysfs-root", str(HOST), "--config-file", str(path))


def test_bad_sysfs_root(tmp_path):
    with pytest.raises(main.CliError, match=f"sysfs root {tmp_path} has no class/net"):
        run("--sysfs-root", str(tmp_path))


def test_help_documents_every_json_key(capsys):
    with pytest.raises(SystemExit):
        parser().parse_args(["capabilities", "--help"])
    text = capsys.readouterr().out
    for key in DEVICE_KEYS | {"devices", "sources_missing", "eswitches", "probe", "taken_at", "age_seconds"}:
        assert f"{key} " in text or f'"{key}"' in text, key
    for key in Capabilities.from_dict({}).to_dict():
        assert f'"{key}"' in text, key
    for option in ("--device", "--sysfs-root", "--format", "--config-file", "--probe", "--probe-cache"):
        assert option in text
    assert "--database" not in text


def test_eswitches_group_uplink_pf_and_vf_representors(capsys):
    out = json_output(capsys, "--sysfs-root", str(HOST))
    groups = {g["switch_id"]: g for g in out["eswitches"]}
    assert groups["b8f0c20003a43a1c"] == {
        "switch_id": "b8f0c20003a43a1c", "eswitch_mode": "switchdev", "uplinks": ["enp3s0f0np0"],
        "pf_representors": ["pf0hpf"], "vf_representors": ["enp3s0f0npf0vf0", "enp3s0f0npf0vf1"],
        "sf_representors": [], "tunnels": []}
    assert groups["40a6b70300a1b2c3"]["vf_representors"] == ["ens5f0npf0vf0"]
    assert set(groups) == {"b8f0c20003a43a1c", "40a6b70300a1b2c3"}  # legacy and virtual devices have none


@pytest.fixture
def served_sim(tmp_path):
    """The sim's eswitch behind a real control socket, owning the recorded tree's simnic0r0/r1 (ifindex 11, 12)."""
    profile = load_profile("ice-e810")
    socket = tmp_path / "hwt-nic-sim.sock"
    stop = serve_in_background(str(socket), Eswitch("simnic0", profile, [11, 12]))
    Path(f"{socket}.json").write_text(json.dumps({
        "name": "simnic0", "switch_id": "5151", "pid": os.getpid(), "socket": str(socket),
        "profile": profile.to_dict(),
        "ports": [{"vf": i, "representor": f"simnic0r{i}", "representor_ifindex": 11 + i, "vf_netdev": f"v{i}"}
                  for i in range(2)],
    }))
    config = tmp_path / "hwflow.conf"
    config.write_text(f"[nic]\ndrivers = sim,generic\nsim_sockets = {socket}\nprobe_cache = {tmp_path}/probes\n")
    try:
        yield config
    finally:
        stop()


def test_probe_confirms_the_profile_and_is_shown_with_its_age(capsys, served_sim, tmp_path):
    base = ("--sysfs-root", str(HOST), "--config-file", str(served_sim), "--device", "simnic0r0")
    assert run(*base) == 0
    assert "not probed: hwflow capabilities --probe --device simnic0r0" in capsys.readouterr().out
    assert run(*base, "--probe") == 0
    text = capsys.readouterr().out
    assert text.startswith("probed simnic0r0: ")
    assert "chain 0 prio 65535 with a group-address eth_src guard" in text  # E810: chain 0 only
    probe_table = text.split(" ago, ", 1)[1].splitlines()[2:]  # after "probed Ns ago, PLACEMENT:" and its header
    claims = {" ".join(line.split()[:2]): line.split()[2] for line in probe_table if len(line.split()) > 2}
    assert claims["action redirect"] == "confirmed" and claims["action drop"] == "confirmed"
    assert claims["action ct"] == "refused"  # E810: no ct
    # E810: no tunnel_key action, so the probe's tunnel rules are refused like any unclaimed action
    assert claims["tunnel_encap vxlan"] == "refused" and claims["tunnel_decap vxlan"] == "refused"
    out = json_output(capsys, *base)
    probe = out["devices"][0]["probe"]
    assert probe["device"] == "simnic0r0" and 0 <= probe["age_seconds"] < 60
    statuses = {r["claim"]: r["status"] for r in probe["results"]}
    assert statuses["chains"] == "refused" and statuses["match ipv4_dst prefix"] == "confirmed"
    assert statuses["match ipv4_dst any"] == "refused"
    assert probe["not_probed"] == []  # E810's every claim probed (its gre encap, the one that was not, is gone)
    assert (tmp_path / "probes" / "simnic0r0.json").is_file()


def test_probe_of_a_device_that_cannot_offload_is_an_error():
    with pytest.raises(main.CliError, match="veth0 cannot be probed: veth: virtual device with no embedded switch"):
        run("--sysfs-root", str(HOST), "--device", "veth0", "--probe")


def test_probe_of_an_unreachable_sim_names_the_device(tmp_path):
    socket = tmp_path / "hwt-nic-gone.sock"
    Path(f"{socket}.json").write_text(json.dumps({
        "name": "simnic0", "switch_id": "5151", "pid": os.getpid(), "socket": str(socket),
        "profile": load_profile("sim-basic").to_dict(),
        "ports": [{"vf": 0, "representor": "simnic0r0", "representor_ifindex": 11, "vf_netdev": "v0"}],
    }))
    config = tmp_path / "hwflow.conf"
    config.write_text(f"[nic]\nsim_sockets = {socket}\n")
    with pytest.raises(main.CliError, match=f"cannot probe simnic0r0: simulated NIC control socket {socket}"):
        run("--sysfs-root", str(HOST), "--config-file", str(config), "--probe", "--probe-cache", str(tmp_path))


def test_a_recorded_tree_never_probes_the_host_kernel():
    with pytest.raises(main.CliError, match="enp3s0f0npf0vf0 cannot be probed: its facts come from a recorded sysfs"):
        run("--sysfs-root", str(HOST), "--device", "enp3s0f0npf0vf0", "--probe")


OOT_PACKAGE = Path(__file__).parent / "fixtures" / "oot_driver"


def hwflow_capabilities(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hwflow.cli.main", "capabilities", *argv], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def build_wheel(source: Path, out: Path) -> Path:
    """A PEP 427 wheel of the fixture package, from its pyproject.toml.

    Built by hand because the test machines have no network and no ``wheel``
    package, which setuptools' PEP 517 backend needs; pip installs the result.
    """
    project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
    dist = f"{project['name'].replace('-', '_')}-{project['version']}"
    entry_points = "".join(f"[{group}]\n" + "".join(f"{k} = {v}\n" for k, v in points.items())
                           for group, points in project["entry-points"].items())
    files = {str(p.relative_to(source)): p.read_bytes() for p in sorted(source.rglob("*.py"))}
    files[f"{dist}.dist-info/METADATA"] = (f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                           f"Version: {project['version']}\n").encode()
    files[f"{dist}.dist-info/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: hwflow-test\nRoot-Is-Purelib: true\n"
                                        b"Tag: py3-none-any\n")
    files[f"{dist}.dist-info/entry_points.txt"] = entry_points.encode()
    record = "".join(f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for name, data in files.items())
    files[f"{dist}.dist-info/RECORD"] = (record + f"{dist}.dist-info/RECORD,,\n").encode()
    wheel = out / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name, data in files.items():
            archive.writestr(name, data)
    return wheel


def test_an_out_of_tree_driver_package_is_picked_up_by_its_entry_point_alone(tmp_path):
    """A separately packaged driver, installed into its own directory, works without touching hwflow."""
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps",
                          "--target", str(site), str(build_wheel(OOT_PACKAGE, tmp_path))],
                         capture_output=True, text=True, timeout=300, check=False)
    assert pip.returncode == 0, pip.stderr
    config = tmp_path / "hwflow.conf"
    config.write_text("[nic]\ndrivers = acme,generic\n")
    argv = ("--sysfs-root", str(HOST), "--config-file", str(config), "--format", "json")

    without = hwflow_capabilities({**os.environ}, *argv)
    assert without.returncode == 1
    assert "unknown NIC driver(s) acme; installed (hwflow.nic_drivers)" in without.stderr

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    done = hwflow_capabilities(env, *argv)
    assert done.returncode == 0, done.stderr
    devices = {d["name"]: d for d in json.loads(done.stdout)["devices"]}
    assert devices["eth0"]["nic_driver"] == "acme"
    assert devices["eth0"]["reason"] == "acme: eth0 is an Acme virtio port; Acme NICs offload nothing"
    assert devices["veth0"]["nic_driver"] == "generic"  # the next driver still gets what acme declines
