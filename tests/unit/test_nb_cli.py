"""``hwflow nb``: what it stores, what it prints, and how it fails."""

from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys

import pytest

from hwflow.cli import nb
from hwflow.cli.common import CliError, load_conf
from hwflow.db import NbApi
from hwflow.model import Chassis, HwflowError, Network, Port


@pytest.fixture
def url(tmp_path):
    return f"sqlite:///{tmp_path}/hwt-db/nb.sqlite"


@pytest.fixture
def cli(url, capsys):
    """Run ``hwflow nb ...`` in process, as hwflow.cli.main.main would; returns (status, out, err)."""

    def run(*argv: str) -> tuple[int, str, str]:
        parser = argparse.ArgumentParser(prog="hwflow")
        nb.add_parser(parser.add_subparsers(dest="command", required=True))
        args = parser.parse_args(["nb", *argv, "--database", url])
        try:
            status = args.func(args, load_conf(args))
        except (HwflowError, CliError) as exc:
            print(f"hwflow {args.command}: {exc}", file=sys.stderr)
            status = 1
        out, err = capsys.readouterr()
        return status, out, err

    return run


def stored(url: str, kind: str) -> list:
    with NbApi.from_url(url) as api:
        return api.list(kind)


def test_create_show_list_delete(cli, url):
    status, out, _ = cli("network", "create", "blue", "--vni", "1001")
    assert status == 0 and "1001" in out
    [net] = stored(url, "network")
    assert (net.name, net.vni, net.mtu) == ("blue", 1001, 1500)

    status, out, _ = cli("port", "create", "vm1", "--network", "blue", "--mac", "FA:16:3E:00:00:01",
                         "--ip", "10.0.0.11", "--ip", "2001:DB8::11", "--chassis", "compute-1")
    assert status == 0
    [port] = stored(url, "port")
    assert (port.network_id, port.mac, port.ips, port.chassis) == (
        net.id, "fa:16:3e:00:00:01", ["10.0.0.11", "2001:db8::11"], "compute-1",
    )

    status, out, _ = cli("port", "show", "vm1")
    assert status == 0 and port.id in out and "fa:16:3e:00:00:01" in out
    status, out, _ = cli("port", "list")
    assert out.splitlines()[0].split()[:4] == ["ID", "NAME", "NETWORK_ID", "MAC"] and "vm1" in out

    status, out, _ = cli("port", "delete", "vm1")
    assert status == 0 and out == f"deleted port {port.id} (vm1)\n"
    assert stored(url, "port") == []


def test_json_output_shapes(cli):
    _, out, _ = cli("network", "create", "blue", "--vni", "7", "--mtu", "9000", "--format", "json")
    created = json.loads(out)
    assert set(created) == {"id", "name", "project_id", "revision", "unique_key", "external_revision", "network_type",
                            "vni", "physical_network", "vlan_id", "mtu", "external", "admin_state_up"}
    assert (created["name"], created["vni"], created["mtu"], created["revision"]) == ("blue", 7, 9000, 1)
    _, out, _ = cli("network", "list", "--format", "json")
    assert json.loads(out) == [created]
    _, out, _ = cli("network", "show", created["id"], "--format", "json")
    assert json.loads(out) == created
    _, out, _ = cli("port", "list", "--format", "json")
    assert json.loads(out) == []


def test_port_list_filters_by_network(cli):
    cli("network", "create", "a", "--vni", "1")
    cli("network", "create", "b", "--vni", "2")
    cli("port", "create", "pa", "--network", "a", "--mac", "fa:16:3e:00:00:01")
    cli("port", "create", "pb", "--network", "b", "--mac", "fa:16:3e:00:00:02")
    _, out, _ = cli("port", "list", "--network", "b", "--format", "json")
    assert [p["name"] for p in json.loads(out)] == ["pb"]


def test_network_delete_needs_cascade_when_ports_remain(cli, url):
    cli("network", "create", "blue", "--vni", "1")
    cli("port", "create", "vm1", "--network", "blue", "--mac", "fa:16:3e:00:00:01")
    status, out, err = cli("network", "delete", "blue")
    assert status == 1 and out == ""
    assert err.count("\n") == 1 and "still used by port" in err and "--cascade" in err
    assert len(stored(url, "port")) == 1 and len(stored(url, "network")) == 1
    status, out, _ = cli("network", "delete", "blue", "--cascade", "--format", "json")
    assert status == 0 and [o["name"] for o in json.loads(out)] == ["blue", "vm1"]
    assert stored(url, "port") == [] and stored(url, "network") == []


def test_stale_if_revision_is_a_conflict_and_deletes_nothing(cli, url):
    cli("network", "create", "blue", "--vni", "1")
    status, _, err = cli("network", "delete", "blue", "--if-revision", "7")
    assert status == 1
    assert err.startswith("hwflow nb: conflict on network ")
    assert "expected revision 7, found revision 1" in err
    assert len(stored(url, "network")) == 1
    assert cli("network", "delete", "blue", "--if-revision", "1")[0] == 0


@pytest.mark.parametrize("argv, message", [
    (("network", "create", "x", "--vni", "0"), "vni 0 must be between 1 and 16777215"),
    (("port", "create", "p", "--network", "nowhere", "--mac", "fa:16:3e:00:00:01"),
     "no network with id or name 'nowhere'"),
    (("network", "show", "nothing"), "no network with id or name 'nothing'"),
    (("chassis", "show", "ghost"), "no chassis with id or name 'ghost'"),
])
def test_refusals_are_one_line_with_status_1(cli, url, argv, message):
    status, out, err = cli(*argv)
    assert (status, out) == (1, "")
    assert err.count("\n") == 1 and message in err
    assert stored(url, "network") == [] and stored(url, "port") == []


def test_bad_mac_names_the_port_and_field(cli):
    cli("network", "create", "blue", "--vni", "1")
    status, _, err = cli("port", "create", "p", "--network", "blue", "--mac", "01:00:5e:00:00:01")
    assert status == 1 and "(p): mac '01:00:5e:00:00:01' must be a unicast MAC address" in err


def test_ambiguous_names_ask_for_the_id(cli):
    cli("network", "create", "twin", "--vni", "1")
    cli("network", "create", "twin", "--vni", "2")
    status, _, err = cli("network", "show", "twin")
    assert status == 1 and "use the id" in err


def test_chassis_list_and_show(cli, url):
    with NbApi.from_url(url) as api:
        api.put_chassis(Chassis(name="compute-1", tunnel_ip="192.0.2.1", hostname="c1", up=True))
    status, out, _ = cli("chassis", "list")
    assert status == 0 and "compute-1" in out and "192.0.2.1" in out and "never" in out
    _, out, _ = cli("chassis", "show", "compute-1", "--format", "json")
    assert json.loads(out)["tunnel_ip"] == "192.0.2.1" and json.loads(out)["alive"] is False
    with NbApi.from_url(url) as api:
        api.heartbeat("compute-1", ttl=60)
    _, out, _ = cli("chassis", "list", "--format", "json")
    assert [c["alive"] for c in json.loads(out)] == [True]


def test_unusable_database_is_reported(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    parser = argparse.ArgumentParser(prog="hwflow")
    nb.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["nb", "network", "list", "--database", f"sqlite:///{blocker}/nb.sqlite"])
    with pytest.raises(HwflowError, match=rf"{blocker}.*--database"):
        args.func(args, load_conf(args))


MAIN_IMPORTS = all(importlib.util.find_spec(m) for m in ("hwflow.cli.capabilities", "hwflow.cli.demo"))


@pytest.mark.skipif(not MAIN_IMPORTS, reason="hwflow.cli.main imports command modules not written yet")
def test_real_command_reports_a_conflict_with_status_1(url):
    def hwflow(*argv: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "hwflow.cli.main", "nb", *argv, "--database", url],
                              capture_output=True, text=True, timeout=60)

    created = hwflow("network", "create", "blue", "--vni", "5", "--format", "json")
    assert created.returncode == 0, created.stderr
    net = json.loads(created.stdout)
    with NbApi.from_url(url) as api:
        api.update(Network(**{**net, "mtu": 9000}))
        api.create(Port(network_id=net["id"], mac="fa:16:3e:00:00:01"))
    stale = hwflow("network", "delete", "blue", "--cascade", "--if-revision", str(net["revision"]))
    assert stale.returncode == 1 and stale.stdout == ""
    # Only the last line: importing other command modules may print library warnings first.
    assert stale.stderr.splitlines()[-1] == (
        f"hwflow nb: conflict on network {net['id']}: expected revision 1, found revision 2 "
        "(it was changed by someone else; read it again and retry)"
    )
    listed = hwflow("port", "list", "--format", "json")
    assert listed.returncode == 0 and len(json.loads(listed.stdout)) == 1


def test_every_kind_through_the_cli(cli, url):
    assert cli("network", "create", "public", "--network-type", "flat", "--physical-network", "ext",
               "--external")[0] == 0
    assert cli("subnet", "create", "public-v4", "--network", "public", "--cidr", "203.0.113.0/24")[0] == 0
    assert cli("network", "create", "blue", "--vni", "5", "--project", "t1")[0] == 0
    status, _, err = cli("subnet", "create", "blue-v4", "--network", "blue", "--cidr", "10.0.0.0/24",
                         "--gateway-ip", "10.0.0.1", "--dns-nameserver", "10.0.0.2",
                         "--host-route", "destination=192.168.0.0/16,nexthop=10.0.0.254",
                         "--allocation-pool", "start=10.0.0.10,end=10.0.0.99")
    assert status == 0, err
    assert cli("security_group", "create", "web", "--description", "web servers")[0] == 0
    assert cli("security_group_rule", "create", "http", "--security-group", "web", "--protocol", "tcp",
               "--port-min", "80", "--port-max", "80", "--remote-ip-prefix", "0.0.0.0/0")[0] == 0
    assert cli("router", "create", "r1", "--gateway-network", "public", "--gateway-ip", "203.0.113.2",
               "--route", "destination=172.16.0.0/12,nexthop=10.0.0.254")[0] == 0
    assert cli("router_port", "create", "r1-blue", "--router", "r1", "--network", "blue", "--subnet", "blue-v4",
               "--mac", "fa:16:3e:00:00:fe", "--ip", "10.0.0.1")[0] == 0
    assert cli("port", "create", "vm1", "--network", "blue", "--mac", "fa:16:3e:00:00:01", "--ip", "10.0.0.11",
               "--security-group", "web", "--allowed-address-pair", "ip_address=10.0.0.128/25")[0] == 0
    status, out, err = cli("floating_ip", "create", "f1", "--floating-network", "public",
                           "--floating-ip-address", "203.0.113.9", "--port", "vm1", "--format", "json")
    assert status == 0, err and json.loads(out)["fixed_ip_address"] == "10.0.0.11"
    [port] = stored(url, "port")
    [group] = stored(url, "security_group")
    assert port.security_groups == [group.id]
    assert port.allowed_address_pairs == [{"ip_address": "10.0.0.128/25", "mac_address": "fa:16:3e:00:00:01"}]
    _, out, _ = cli("subnet", "list", "--format", "json")
    assert {s["name"] for s in json.loads(out)} == {"public-v4", "blue-v4"}
    _, out, _ = cli("network", "list", "--project", "t1", "--format", "json")
    assert [n["name"] for n in json.loads(out)] == ["blue"]
    status, out, _ = cli("router", "list")
    assert status == 0 and "203.0.113.2" in out


def test_update_is_compare_and_swap_and_can_clear(cli, url):
    cli("network", "create", "blue", "--vni", "5")
    cli("security_group", "create", "web")
    cli("port", "create", "vm1", "--network", "blue", "--mac", "fa:16:3e:00:00:01", "--security-group", "web")
    [port] = stored(url, "port")
    status, _, err = cli("port", "update", "vm1", "--no-port-security", "--if-revision", str(port.revision))
    assert status == 1 and "security_groups" in err and "port_security is off" in err
    status, out, err = cli("port", "update", "vm1", "--no-port-security", "--clear", "security_groups",
                           "--name", "vm-one", "--format", "json", "--if-revision", str(port.revision))
    assert status == 0, err
    updated = json.loads(out)
    assert (updated["name"], updated["port_security"], updated["security_groups"]) == ("vm-one", False, [])
    status, _, err = cli("port", "update", "vm-one", "--device-owner", "x", "--if-revision", str(port.revision))
    assert status == 1 and err.startswith("hwflow nb: conflict on port ")
    status, _, err = cli("port", "update", "vm-one", "--clear", "colour")
    assert status == 1 and "no such field" in err


def test_extra_dhcp_opts_through_the_cli_and_a_yaml_file(cli, url, tmp_path):
    """A value may hold commas (an item without '=' continues it); ip_version comes as text and is stored as 4."""
    cli("network", "create", "blue", "--vni", "5")
    status, _, err = cli("port", "create", "vm1", "--network", "blue", "--mac", "fa:16:3e:00:00:01",
                         "--extra-dhcp-opt", "name=dns-server,value=10.0.0.9,10.0.0.10,ip_version=4",
                         "--extra-dhcp-opt", "name=router,value=")
    assert status == 0, err
    [port] = stored(url, "port")
    assert port.extra_dhcp_opts == [{"name": "dns-server", "value": "10.0.0.9,10.0.0.10", "ip_version": 4},
                                    {"name": "router", "value": "", "ip_version": 4}]
    status, _, err = cli("port", "update", "vm1", "--extra-dhcp-opt", "name=mtu,value=tall")
    assert status == 1 and "port" in err and "extra_dhcp_opts option 'mtu' value 'tall' must be a whole number" in err
    topology = tmp_path / "topology.yaml"
    topology.write_text("""
ports:
  - name: vm1
    network_id: blue
    mac: 'fa:16:3e:00:00:01'
    extra_dhcp_opts:
      - {name: mtu, value: 1400}
      - {name: domain-name, value: lab.example.org}
      - {name: dns-server, value: '2001:db8::53', ip_version: 6}
""")
    status, _, err = cli("apply", str(topology))
    assert status == 0, err
    [port] = stored(url, "port")
    assert port.extra_dhcp_opts == [{"name": "domain-name", "value": "lab.example.org", "ip_version": 4},
                                    {"name": "mtu", "value": "1400", "ip_version": 4},
                                    {"name": "dns-server", "value": "2001:db8::53", "ip_version": 6}]


def test_admin_state_through_the_cli_and_a_yaml_file(cli, url, tmp_path):
    """``--no-admin-state-up`` / ``--admin-state-up`` on a network and a port; a file may set it too."""
    assert cli("network", "create", "blue", "--vni", "5", "--no-admin-state-up")[0] == 0
    assert cli("port", "create", "vm1", "--network", "blue", "--mac", "fa:16:3e:00:00:01")[0] == 0
    [net], [port] = stored(url, "network"), stored(url, "port")
    assert (net.admin_state_up, port.admin_state_up) == (False, True)
    assert cli("port", "update", "vm1", "--no-admin-state-up")[0] == 0
    assert cli("network", "update", "blue", "--admin-state-up")[0] == 0
    [net], [port] = stored(url, "network"), stored(url, "port")
    assert (net.admin_state_up, port.admin_state_up) == (True, False)
    topology = tmp_path / "topology.yaml"
    topology.write_text("ports:\n  - {name: vm1, network_id: blue, mac: 'fa:16:3e:00:00:01', admin_state_up: true}\n")
    status, _, err = cli("apply", str(topology))
    assert status == 0, err
    assert stored(url, "port")[0].admin_state_up is True


def test_apply_creates_then_updates_and_reports(cli, url, tmp_path):
    topology = tmp_path / "topology.yaml"
    topology.write_text("""
networks:
  - {name: blue, vni: 1001, project_id: t1}
subnets:
  - {name: blue-v4, network_id: blue, cidr: 10.0.0.0/24, gateway_ip: 10.0.0.1}
security_groups:
  - {name: web}
security_group_rule:
  - {name: ssh, security_group_id: web, protocol: tcp, port_min: 22, port_max: 22}
ports:
  - {name: vm1, network_id: blue, mac: 'fa:16:3e:00:00:01', ips: [10.0.0.11], security_groups: [web]}
""")
    status, out, err = cli("apply", str(topology))
    assert status == 0, err
    assert out.splitlines()[-1] == "5 created, 0 updated, 0 unchanged"
    status, out, _ = cli("apply", str(topology))
    assert out.splitlines() == ["0 created, 0 updated, 5 unchanged"]
    topology.write_text(topology.read_text().replace("vni: 1001", "vni: 1002").replace("10.0.0.11", "10.0.0.12"))
    status, out, _ = cli("apply", str(topology), "--format", "json")
    changes = {(e["kind"], e["action"], tuple(e["fields"])) for e in json.loads(out)}
    assert ("network", "updated", ("vni",)) in changes and ("port", "updated", ("ips",)) in changes
    [port] = stored(url, "port")
    assert port.ips == ["10.0.0.12"]


@pytest.mark.parametrize("text, message", [
    ("networks: {name: x}", "must be a list of objects"),
    ("switches: []", "unknown kind 'switches'"),
    ("networks:\n  - {name: x, vni: 1, colour: red}", "colour"),
    ("ports:\n  - {name: p, network_id: nowhere, mac: 'fa:16:3e:00:00:01'}", "no network with id or name 'nowhere'"),
    ("networks: [", "not valid YAML"),
    ("networks:\n  - {name: x, vni: 1}\n  - {name: y, vni: 2}\n  - {name: x, mtu: 9000}",
     "network entries 1 and 3 both describe network "),
])
def test_apply_refuses_bad_files_clearly(cli, url, tmp_path, text, message):
    topology = tmp_path / "bad.yaml"
    topology.write_text(text)
    status, _, err = cli("apply", str(topology))
    assert status == 1 and message in err and err.count("\n") == 1


def test_apply_refuses_a_file_that_is_not_utf8_in_one_line(cli, url, tmp_path):
    topology = tmp_path / "latin1.yaml"
    topology.write_bytes("networks:\n  - {name: caf\u00e9, vni: 1}\n".encode("latin-1"))
    status, out, err = cli("apply", str(topology))
    assert (status, out) == (1, "") and err.count("\n") == 1
    assert "is not UTF-8 text (byte 0xe9 at offset" in err and "Traceback" not in err
    assert stored(url, "network") == []


def test_apply_writes_a_whole_file_in_one_transaction_or_nothing(cli, url, tmp_path):
    ports = "".join(f"  - {{name: vm{i}, network_id: blue, mac: 'fa:16:3e:00:01:{i:02x}', ips: [10.0.0.{i + 10}], "
                    "security_groups: [web]}\n" for i in range(200))
    topology = tmp_path / "big.yaml"
    topology.write_text(f"networks:\n  - {{name: blue, vni: 1001}}\nsecurity_groups:\n  - {{name: web}}\n"
                        f"subnets:\n  - {{name: blue-v4, network_id: blue, cidr: 10.0.0.0/24}}\nports:\n{ports}"
                        "  - {name: stray, network_id: blue, mac: 'fa:16:3e:00:02:00', ips: [10.9.0.1],"
                        " security_groups: [web]}\n")
    status, out, err = cli("apply", str(topology))
    assert (status, out) == (1, "") and err.count("\n") == 1
    assert "(stray): ips ['10.9.0.1'] has 10.9.0.1, which lies in none of the network's subnets (10.0.0.0/24)" in err
    assert stored(url, "network") == [] and stored(url, "port") == []  # the last entry refused: nothing written

    topology.write_text(topology.read_text().replace("10.9.0.1", "10.0.0.250"))
    status, out, err = cli("apply", str(topology))
    assert status == 0, err
    assert out.splitlines()[-1] == "204 created, 0 updated, 0 unchanged"
    everything = [*stored(url, "network"), *stored(url, "subnet"), *stored(url, "security_group"), *stored(url, "port")]
    assert len(everything) == 204 and len({o.revision for o in everything}) == 1
    [web] = stored(url, "security_group")
    assert all(p.security_groups == [web.id] for p in stored(url, "port"))


def test_apply_that_stops_part_way_says_what_was_written_and_applying_again_finishes(cli, url, tmp_path, monkeypatch):
    from hwflow.db.sqlite import SqliteDriver
    from hwflow.model import DatabaseUnavailable

    topology = tmp_path / "ports.yaml"
    topology.write_text("networks:\n  - {name: blue, vni: 1001}\nports:\n" + "".join(
        f"  - {{name: vm{i}, network_id: blue, mac: 'fa:16:3e:00:01:{i:02x}'}}\n" for i in range(12)))
    txn, calls = SqliteDriver.txn, []

    def second_fails(self, compares, ops):
        calls.append(len(ops))
        if len(calls) == 2:
            raise DatabaseUnavailable("the database went away (injected)")
        return txn(self, compares, ops)

    # 16 operations a transaction: the network and 4 ports (3 operations each, and the counters), then 5 ports
    monkeypatch.setattr(SqliteDriver, "max_txn_ops", 16)
    monkeypatch.setattr(SqliteDriver, "txn", second_fails)
    status, out, err = cli("apply", str(topology))
    assert (status, out) == (1, "") and err.count("\n") == 1
    assert sorted(p.name for p in stored(url, "port")) == ["vm0", "vm1", "vm2", "vm3"]
    assert err.startswith(f"hwflow nb: {topology}: the database went away (injected) [the batch stopped there: ")
    assert "5 of the batch's 13 objects were written and stay (1 network, 4 port; the last port " in err
    assert "(vm3)); 5 may or may not have been (5 port, from port " in err
    assert "(vm4) on: the database did not answer); 3 were not (3 port, from port " in err
    assert err.endswith("(vm9) on)]; apply the file again to write the rest\n")

    monkeypatch.setattr(SqliteDriver, "txn", txn)
    status, out, err = cli("apply", str(topology))
    assert status == 0, err
    assert out.splitlines()[-1] == "8 created, 0 updated, 5 unchanged"
    assert sorted(p.name for p in stored(url, "port")) == sorted(f"vm{i}" for i in range(12))


def test_a_port_shows_whether_an_agent_reports_it_up(cli, url):
    cli("network", "create", "blue", "--vni", "1001")
    cli("port", "create", "vm1", "--network", "blue", "--mac", "fa:16:3e:00:00:01", "--chassis", "compute-1")
    [port] = stored(url, "port")

    def shown() -> tuple[str, str]:
        listed = json.loads(cli("port", "list", "--format", "json")[1])
        return listed[0]["status"], json.loads(cli("port", "show", "vm1", "--format", "json")[1])["status"]

    assert shown() == ("down", "down")
    with NbApi.from_url(url) as api:
        api.report_ports("compute-1", [port.id], [])
        assert shown() == ("up", "up")
        header = cli("port", "list")[1].splitlines()[0].split()
        assert header[header.index("CHASSIS") + 1] == "STATUS"
        api.report_ports("compute-1", [], [port.id])
        assert shown() == ("down", "down")
