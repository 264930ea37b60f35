"""Discovery, the generic and sim NIC drivers, and the inventory, on recorded sysfs trees."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwflow import conf as hwconf
from hwflow.offload.capabilities import (
    ACTION_DROP,
    ACTION_GOTO_CHAIN,
    ACTION_PASS,
    ACTION_REDIRECT,
    MASK_KINDS,
    Capabilities,
)
from hwflow.offload.discovery import (
    NO_DEVLINK,
    SYS,
    RecordedLinkFacts,
    TreeSysfs,
    UdevSysfs,
    discover,
    discover_from,
    drvinfo_firmware,
)
from hwflow.offload.inventory import UnknownDriverError, installed_drivers, inventory, load_drivers
from hwflow.offload.nic import NetDevice
from hwflow.sim.profile import load_profile, profile_names
from hwflow_drivers import ice, mlx5
from hwflow_drivers.generic import GENERIC_SWITCHDEV, GenericDriver
from hwflow_drivers.sim import SimDriver
from hwflow_drivers.switchdev import port_role

HOST = Path(__file__).parent / "fixtures" / "sysfs" / "smartnic-host"
SIM_CAPS = {"match_fields": {"eth_dst": "exact", "ipv4_dst": "prefix"}, "actions": ["drop", "redirect"],
            "max_rules": 64, "max_actions_per_rule": 2}


def by_name(items):
    return {item.name: item for item in items}


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_status(tmp_path: Path, pid: int, caps=None, name="simnic0") -> str:
    socket = str(tmp_path / f"hwt-cap-{name}.sock")
    status = {
        "name": name,
        "profile": {"name": "small", "description": "test", "capabilities": caps or SIM_CAPS},
        "switch_id": "5151",
        "pid": pid,
        "socket": socket,
        "ports": [{"vf": i, "representor": f"{name}r{i}", "representor_ifindex": 11 + i, "vf_netdev": f"{name}v{i}"}
                  for i in range(2)],
    }
    Path(f"{socket}.json").write_text(json.dumps(status))
    return socket


@pytest.fixture(scope="module")
def devices() -> dict[str, NetDevice]:
    return by_name(discover(HOST))


@pytest.mark.parametrize(
    "name, driver, pci_id, bus_info, switch_id, port, tc, kind, mode",
    [
        ("enp3s0f0np0", "mlx5_core", "15b3:101d", "0000:03:00.0", "b8f0c20003a43a1c", "p0", True, "pci", "switchdev"),
        ("pf0hpf", "mlx5_core", "15b3:101d", "0000:03:00.0", "b8f0c20003a43a1c", "pf0", True, "pci", "switchdev"),
        ("enp3s0f0npf0vf1", "mlx5_core", "15b3:101d", "0000:03:00.0", "b8f0c20003a43a1c", "pf0vf1", True, "pci",
         "switchdev"),
        ("enp3s0f1np1", "mlx5_core", "15b3:101d", "0000:03:00.1", None, "p1", False, "pci", "legacy"),
        ("ens5f0", "ice", "8086:1593", "0000:5e:00.0", "40a6b70300a1b2c3", "p0", False, "pci", "switchdev"),
        ("eth0", "virtio_net", "1af4:1041", "0000:00:03.0", None, None, False, "virtio", None),
        ("veth0", "veth", None, None, None, None, False, "veth", None),
        ("br0", "bridge", None, None, None, None, False, "bridge", None),
        ("simnic0r0", "tun", None, None, None, None, False, "tun", None),
        ("lo", None, None, None, None, None, False, "loopback", None),
    ],
)
def test_recorded_tree_facts(devices, name, driver, pci_id, bus_info, switch_id, port, tc, kind, mode):
    dev = devices[name]
    assert (dev.kernel_driver, dev.pci_id, dev.bus_info, dev.phys_switch_id, dev.phys_port_name) == (
        driver, pci_id, bus_info, switch_id, port)
    assert (dev.hw_tc_offload, dev.kind, dev.eswitch_mode) == (tc, kind, mode)


def test_every_netdev_of_the_tree_is_found(devices):
    assert set(devices) == {p.name for p in (HOST / "class" / "net").iterdir()}
    assert devices["enp3s0f0npf0vf0"].ifindex == 4


def test_unrecorded_sources_are_missing_not_guessed():
    devs = by_name(discover_from(TreeSysfs(HOST), RecordedLinkFacts({}, "nowhere")))
    uplink = devs["enp3s0f0np0"]
    assert uplink.hw_tc_offload is None and uplink.eswitch_mode is None
    assert uplink.sources_missing == ("ethtool: enp3s0f0np0 not recorded in nowhere",
                                      "devlink: 0000:03:00.0 not recorded in nowhere",
                                      "ethtool -i: firmware of enp3s0f0np0 not recorded in nowhere")
    assert uplink.firmware is None
    assert "devlink" not in " ".join(devs["veth0"].sources_missing)  # no PCI device, nothing to ask
    report = GenericDriver().describe(uplink)
    assert not report.offload
    assert report.reason == "hw-tc-offload could not be read (ethtool: enp3s0f0np0 not recorded in nowhere)"


def test_a_path_that_is_not_a_sysfs_tree_is_refused(tmp_path):
    with pytest.raises(ValueError, match=f"sysfs root {tmp_path} has no class/net directory"):
        discover(tmp_path)


def test_a_corrupt_recorded_file_is_named(tmp_path):
    bad = tmp_path / "hwflow-recorded.json"
    bad.write_text("{")
    with pytest.raises(ValueError, match=f"recorded link facts {bad}"):
        RecordedLinkFacts.load(bad)


def test_file_reader_and_udev_agree_on_the_live_host():
    assert TreeSysfs(SYS).netdevs() == UdevSysfs().netdevs()


def kernel_has_devlink() -> bool:
    from pyroute2 import DL
    from pyroute2.netlink.exceptions import NetlinkError

    try:
        DL().close()
    except NetlinkError:
        return False
    return True


def test_live_discovery_reports_a_missing_devlink_instead_of_guessing():
    devs = discover()
    assert any(d.kind == "loopback" for d in devs)
    for dev in (d for d in devs if d.bus_info):
        devlink_missing = [m for m in dev.sources_missing if m.startswith("devlink")]
        assert (dev.eswitch_mode is None) == bool(devlink_missing)
        if not kernel_has_devlink():
            assert devlink_missing == [NO_DEVLINK]


@pytest.mark.parametrize(
    "name, offload, role, reason",
    [
        ("enp3s0f0np0", True, "uplink", None),
        ("pf0hpf", True, "pf_representor", None),
        ("enp3s0f0npf0vf0", True, "vf_representor", None),
        ("enp3s0f0npf0vf1", True, "vf_representor", None),
        ("enp3s0f1np1", False, "pf", ("mlx5_core in legacy mode: switch the eswitch to switchdev "
         "(devlink dev eswitch set pci/0000:03:00.1 mode switchdev)")),
        ("ens5f0", False, "uplink", "hw-tc-offload is off: ethtool -K ens5f0 hw-tc-offload on"),
        ("eth0", False, "netdev", "virtio_net: paravirtual NIC, no tc offload"),
        ("veth0", False, "netdev", "veth: virtual device with no embedded switch"),
        ("br0", False, "netdev", "bridge: virtual device with no embedded switch"),
        ("simnic0r0", False, "netdev", "tun: tap device not owned by a simulated NIC"),
        ("lo", False, "netdev", "loopback: the host's own loopback device, no embedded switch"),
    ],
)
def test_generic_driver_verdicts(devices, name, offload, role, reason):
    report = GenericDriver().describe(devices[name])
    assert (report.offload, report.port_role, report.reason) == (offload, role, reason)
    assert report.nic_driver == "generic"
    if offload:
        assert report.capabilities == GENERIC_SWITCHDEV
        assert (report.tc_endpoint, report.eswitch_mode) == ("netlink", "switchdev")
        assert report.switch_id == devices[name].phys_switch_id
    else:
        assert report.capabilities.max_rules == 0 and report.tc_endpoint is None


def test_legacy_nic_without_devlink_says_it_could_not_confirm(devices):
    dev = NetDevice(**{**devices["enp3s0f1np1"].__dict__, "eswitch_mode": None, "sources_missing": (NO_DEVLINK,)})
    reason = GenericDriver().describe(dev).reason
    assert "no phys_switch_id" in reason and NO_DEVLINK in reason
    assert "devlink dev eswitch set pci/0000:03:00.1 mode switchdev" in reason


def test_unknown_port_name_with_a_switch_id_is_explained(devices):
    dev = NetDevice(**{**devices["enp3s0f0npf0vf0"].__dict__, "phys_port_name": "weird7"})
    report = GenericDriver().describe(dev)
    assert not report.offload and "phys_port_name 'weird7'" in report.reason


nums = st.integers(min_value=0, max_value=4095)


@given(nums, nums, st.booleans(), nums)
def test_port_names_map_to_roles(pf, vf, controller, c):
    prefix = f"c{c}" if controller else ""
    assert port_role(f"{prefix}pf{pf}vf{vf}") == "vf_representor"
    assert port_role(f"{prefix}pf{pf}sf{vf}") == "sf_representor"
    assert port_role(f"{prefix}pf{pf}") == "pf_representor"
    assert port_role(f"p{pf}pf{vf}") == "pf_representor"
    assert port_role(f"p{pf}") == "uplink"
    assert port_role(f"p{pf}s{vf}") == "uplink"


@given(st.text(max_size=20))
def test_other_port_names_have_no_role(text):
    if not text.isascii() or not text.isalnum():
        assert port_role(text) is None
    assert port_role(f"x{text}") is None  # every role name starts with c or p


def test_sim_driver_claims_its_representors(devices, tmp_path):
    socket = write_status(tmp_path, pid=os.getpid())
    sim = SimDriver([socket])
    report = sim.describe(devices["simnic0r1"])
    assert report.offload and report.reason is None
    assert (report.port_role, report.eswitch_mode, report.switch_id) == ("vf_representor", "switchdev", "5151")
    assert report.tc_endpoint == f"unix:{socket}"
    assert report.kernel_driver == "tun"
    assert report.capabilities == Capabilities.from_dict(SIM_CAPS)
    assert report.capability_source == "simulated NIC simnic0: profile small"
    assert sim.describe(devices["veth0"]) is None
    assert sim.problems() == []


def test_sim_driver_reports_its_uplink_and_tunnel_devices(tmp_path):
    """A NIC with a physical port lists its uplink representor and tunnel devices: reported with their role,
    the tunnel's type and UDP port, offloadable only for a tunnel type the profile encapsulates or decapsulates."""
    caps = {**SIM_CAPS, "actions": ["redirect", "tunnel_encap", "tunnel_decap"], "tunnel_encap": ["vxlan"],
            "tunnel_decap": ["vxlan"]}
    socket = write_status(tmp_path, pid=os.getpid(), caps=caps)
    status = json.loads(Path(f"{socket}.json").read_text())
    status["uplinks"] = [{"port": 0, "representor": "simnic0p", "representor_ifindex": 20, "wire": "hw",
                          "mac": "02:00:00:00:00:01"}]
    status["tunnels"] = [{"type": "vxlan", "netdev": "simnic0vx", "ifindex": 21, "dst_port": 4789},
                         {"type": "geneve", "netdev": "simnic0gn", "ifindex": 22, "dst_port": 6081}]
    Path(f"{socket}.json").write_text(json.dumps(status))
    sim = SimDriver([socket])

    def device(name: str, ifindex: int) -> NetDevice:
        return NetDevice(name, ifindex, "tun", None, None, None, None, False, "tun")

    vxlan, geneve, uplink = (sim.describe(device(n, i)) for n, i in (("simnic0vx", 21), ("simnic0gn", 22),
                                                                     ("simnic0p", 20)))
    assert (vxlan.port_role, vxlan.offload, vxlan.tunnel_type, vxlan.tunnel_dst_port) == ("tunnel", True, "vxlan", 4789)
    assert vxlan.tc_endpoint == f"unix:{socket}" and vxlan.switch_id == "5151"
    assert (geneve.port_role, geneve.offload, geneve.tunnel_type) == ("tunnel", False, "geneve")
    assert "neither encapsulate nor decapsulate geneve" in geneve.reason
    assert (uplink.port_role, uplink.offload, uplink.tunnel_type) == ("uplink", True, None)


SIMPLE_ACTIONS = (ACTION_REDIRECT, ACTION_DROP, ACTION_PASS, ACTION_GOTO_CHAIN)  # need no qualifiers
profiles = st.fixed_dictionaries({
    "match_fields": st.dictionaries(st.sampled_from(["eth_src", "eth_dst", "eth_type", "ipv4_dst"]),
                                    st.sampled_from(MASK_KINDS)),
    "actions": st.lists(st.sampled_from(SIMPLE_ACTIONS), unique=True),
    "max_rules": st.integers(min_value=0, max_value=1 << 20),
    "max_actions_per_rule": st.integers(min_value=1, max_value=8),
})


@given(profiles)
def test_sim_reports_exactly_the_profile_capabilities(tmp_path_factory, caps):
    tmp = tmp_path_factory.mktemp("hwt-cap")
    dev = NetDevice("simnic0r0", 11, "tun", None, None, None, None, False, "tun")
    report = SimDriver([write_status(tmp, pid=os.getpid(), caps=caps)]).describe(dev)
    assert report.capabilities.to_dict() == Capabilities.from_dict(caps).to_dict()


def test_stale_status_file_gives_a_reason_not_a_crash(devices, tmp_path):
    socket = write_status(tmp_path, pid=dead_pid())
    report = SimDriver([socket]).describe(devices["simnic0r0"])
    assert not report.offload and report.nic_driver == "sim"
    assert "is not running: stale status file" in report.reason and f"{socket}.json" in report.reason
    assert report.capabilities.max_rules == 0


def test_bad_profile_is_named(devices, tmp_path):
    socket = write_status(tmp_path, pid=os.getpid(), caps={"actions": ["teleport"]})
    report = SimDriver([socket]).describe(devices["simnic0r0"])
    assert not report.offload and "bad profile" in report.reason and "teleport" in report.reason


def test_unreadable_or_absent_status_files_are_problems(devices, tmp_path):
    garbled = tmp_path / "garbled.sock"
    Path(f"{garbled}.json").write_text("not json")
    absent = tmp_path / "absent.sock"
    sim = SimDriver([str(garbled), str(absent)])
    assert sim.describe(devices["simnic0r0"]) is None
    problems = sim.problems()
    assert len(problems) == 2
    assert f"cannot read status file {garbled}.json" in problems[0]
    assert f"no status file {absent}.json" in problems[1]


def conf_with(drivers: list[str], sockets: list[str] | None = None):
    conf = hwconf.new_conf()
    conf.set_override("drivers", drivers, group="nic")
    conf.set_override("sim_sockets", sockets or [], group="nic")
    return conf


def test_drivers_load_in_configured_order_with_their_options(tmp_path, devices):
    socket = write_status(tmp_path, pid=os.getpid())
    drivers = load_drivers(conf_with(["sim", "generic"], [socket]))
    assert [d.name for d in drivers] == ["sim", "generic"]
    assert drivers[0].describe(devices["simnic0r0"]).tc_endpoint == f"unix:{socket}"
    assert [d.name for d in load_drivers(conf_with(["generic", "sim"]))] == ["generic", "sim"]


def test_unknown_driver_name_is_named_with_the_installed_ones():
    with pytest.raises(UnknownDriverError) as err:
        load_drivers(conf_with(["sim", "mlx9000"]))
    message = str(err.value)
    assert "mlx9000" in message and "sim" not in message.split(";")[0]
    assert {"sim", "generic"} <= set(installed_drivers())
    assert all(name in message.split(";")[1] for name in installed_drivers())


def test_first_claiming_driver_wins_and_every_device_gets_a_report(tmp_path, devices):
    socket = write_status(tmp_path, pid=os.getpid())
    devs = list(devices.values())
    both = by_name(inventory([SimDriver([socket]), GenericDriver()], devs))
    assert set(both) == set(devices)
    assert both["simnic0r0"].nic_driver == "sim" and both["simnic0r0"].offload
    assert both["veth0"].nic_driver == "generic"
    generic_first = by_name(inventory([GenericDriver(), SimDriver([socket])], devs))
    assert generic_first["simnic0r0"].nic_driver == "generic" and not generic_first["simnic0r0"].offload
    sim_only = by_name(inventory([SimDriver([socket])], devs))
    assert sim_only["veth0"].nic_driver is None
    assert sim_only["veth0"].reason == "no NIC driver in [nic] drivers (sim) handles veth0"


# --- vendor drivers: family facts, checked against the NIC profiles that simulate them ----------------


@pytest.mark.parametrize("family", [*mlx5.FAMILIES, *ice.FAMILIES], ids=lambda f: f.name)
def test_every_family_claims_exactly_what_its_profile_simulates(family):
    profile = load_profile(family.profile)
    assert profile.capabilities == family.capabilities
    assert profile.sources, f"profile {family.profile} cites no source"


def test_the_required_profiles_exist():
    names = set(profile_names())
    assert {f.profile for f in (*mlx5.FAMILIES, *ice.FAMILIES)} <= names
    plain = load_profile("sim-no-tunnel-no-ct").capabilities
    assert not plain.tunnel_encap and not plain.tunnel_decap and plain.conntrack is None
    assert load_profile("sim-64").capabilities.max_rules == 64
    for name in names:  # every shipped profile parses, and the model round-trips it
        caps = load_profile(name).capabilities
        assert Capabilities.from_dict(caps.to_dict()) == caps


def test_mlx5_describes_connectx6dx_representors_by_family(devices):
    driver = mlx5.Mlx5Driver()
    report = driver.describe(devices["enp3s0f0npf0vf1"])
    assert (report.offload, report.nic_driver, report.port_role) == (True, "mlx5", "vf_representor")
    assert report.capabilities == load_profile("mlx5-connectx6dx").capabilities
    assert report.capability_source == "mlx5: ConnectX-6 Dx facts (device 15b3:101d)"
    assert report.firmware == "22.39.1002"
    assert report.capabilities.can_conntrack({"trk", "est"}, zone=3, nat=True)
    assert not report.capabilities.can_conntrack({"new"})
    legacy = driver.describe(devices["enp3s0f1np1"])
    assert not legacy.offload and "legacy mode" in legacy.reason and legacy.nic_driver == "mlx5"
    assert driver.describe(devices["ens5f0"]) is None and driver.describe(devices["veth0"]) is None


def test_mlx5_unknown_device_id_gets_the_common_facts(devices):
    dev = NetDevice(**{**devices["enp3s0f0npf0vf0"].__dict__, "pci_id": "15b3:ffff"})
    report = mlx5.Mlx5Driver().describe(dev)
    assert report.capabilities == mlx5.FALLBACK.capabilities
    assert "unlisted family" in report.capability_source


def test_ice_describes_e810_uplink_and_representor(devices):
    driver = ice.IceDriver()
    rep = driver.describe(devices["ens5f0npf0vf0"])
    assert (rep.offload, rep.nic_driver, rep.port_role) == (True, "ice", "vf_representor")
    assert rep.capabilities == load_profile("ice-e810").capabilities
    assert rep.capabilities.max_chains == 1 and not rep.capabilities.counters
    assert rep.firmware == "4.40 0x8001c967 1.3534.0"
    uplink = driver.describe(devices["ens5f0"])
    assert not uplink.offload and uplink.reason == "hw-tc-offload is off: ethtool -K ens5f0 hw-tc-offload on"
    assert driver.describe(devices["enp3s0f0np0"]) is None


def test_vendor_drivers_before_generic_in_an_inventory(devices):
    reports = by_name(inventory([mlx5.Mlx5Driver(), ice.IceDriver(), GenericDriver()], list(devices.values())))
    assert {n: r.nic_driver for n, r in reports.items() if r.offload} == {
        "enp3s0f0np0": "mlx5", "pf0hpf": "mlx5", "enp3s0f0npf0vf0": "mlx5", "enp3s0f0npf0vf1": "mlx5",
        "ens5f0npf0vf0": "ice"}
    assert reports["veth0"].nic_driver == "generic"


def test_firmware_comes_from_the_ethtool_drvinfo_ioctl_or_says_why_not():
    assert drvinfo_firmware("hwt-nic-absent0") == (None, "ethtool -i: firmware of hwt-nic-absent0: No such device")
    version, missing = drvinfo_firmware("lo")  # the loopback driver answers no GDRVINFO
    assert version is None and missing == "ethtool -i: firmware of lo: Operation not supported"
