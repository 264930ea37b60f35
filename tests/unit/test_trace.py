"""`hwflow trace`: packet specs, defaults, and the trace itself through the CLI."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwflow.cli.main import main
from hwflow.pipeline import ir
from hwflow.pipeline.trace import PacketSpecError, format_value, parse_spec, parse_value

VISIBLE = sorted(f for f in ir.FIELD_BITS if f not in ir.INTERNAL_FIELDS and f != "in_port")


@given(st.sampled_from(VISIBLE).flatmap(lambda f: st.tuples(st.just(f), st.integers(0, (1 << ir.FIELD_BITS[f]) - 1))))
def test_values_print_back_as_they_parse(item):
    field, value = item
    assert parse_value(field, str(format_value(field, value))) == value


@pytest.mark.parametrize(("spec", "message"), [
    ("eth_dst", "not field=value"),
    ("color=red", "unknown packet field 'color'"),
    ("metadata=1", "unknown packet field 'metadata'"),
    ("vlan_tagged=1", "vlan_tagged follows from the packet"),
    ("eth_dst=fa:16:3e", "six"),
    ("ipv4_dst=10.0.0.300", "ipv4_dst=10.0.0.300"),
    ("ip_ttl=256", "out of range"),
])
def test_bad_specs_name_the_pair(spec, message):
    with pytest.raises(PacketSpecError, match=message):
        parse_spec(spec)


def test_names_for_common_values():
    assert parse_spec("eth_type=arp,ip_proto=udp") == {"eth_type": ir.ETH_TYPE_ARP, "ip_proto": 17}


@pytest.fixture
def db(tmp_path):
    url = f"sqlite:///{tmp_path}/nb.sqlite"
    assert main(["nb", "network", "create", "net1", "--vni", "5", "--database", url]) == 0
    for name, mac, ip in (("vm1", "fa:16:3e:00:00:01", "10.0.0.1"), ("vm2", "fa:16:3e:00:00:02", "10.0.0.2"),
                          ("far", "fa:16:3e:00:00:03", "10.0.0.3")):
        chassis = "h1" if name != "far" else "h2"
        assert main(["nb", "port", "create", name, "--network", "net1", "--mac", mac, "--ip", ip,
                     "--chassis", chassis, "--database", url]) == 0
    return url


def trace(db, capsys, *argv):
    capsys.readouterr()
    status = main(["trace", "--chassis", "h1", "--database", db, "--format", "json", *argv])
    out = capsys.readouterr()
    return status, (json.loads(out.out) if status == 0 else out.err)


def test_unicast_to_a_local_port(db, capsys):
    status, report = trace(db, capsys, "--port", "vm1", "--packet", "ipv4_dst=10.0.0.2")
    assert status == 0
    assert report["verdict"] == "output"
    assert [o["port"] for o in report["outputs"]] == ["vm2"]
    assert report["outputs"][0]["packet"]["eth_dst"] == "fa:16:3e:00:00:02"
    assert [s["table_name"] for s in report["steps"]] == ["classifier.ports", "port_security.filter", "dhcp.dhcp",
                                                          "sg_egress.egress", "responder.arp", "l3.arp",
                                                          "l3.router_mac", "l2.lookup", "sg_ingress.ingress",
                                                          "output.deliver"]
    assert report["steps"][-1]["owner"].startswith("port:")


def test_broadcast_floods_to_the_other_local_ports_only(db, capsys):
    # to an address no port holds (the responder answers for the ports' own)
    _, report = trace(db, capsys, "--port", "vm1", "--packet", "eth_type=arp,arp_tpa=10.0.0.99")
    assert [o["port"] for o in report["outputs"]] == ["vm2"]
    assert report["steps"][-1]["owner"].startswith("network:")


def test_a_spoofed_source_is_dropped_by_port_security(db, capsys):
    _, report = trace(db, capsys, "--port", "vm1", "--packet", "ipv4_src=10.0.0.99,ipv4_dst=10.0.0.2")
    assert report["verdict"] == "drop"
    assert report["steps"][-1]["table_name"] == "port_security.filter"
    assert report["steps"][-1]["flow"]["actions"] == ["drop"]


def test_unknown_unicast_is_dropped_by_a_table_miss(db, capsys):
    _, report = trace(db, capsys, "--port", "vm1", "--packet", "eth_dst=fa:16:3e:00:00:99")
    assert report["verdict"] == "drop" and report["outputs"] == []
    assert report["steps"][-1]["flow"] is None


def test_port_of_another_chassis_is_refused(db, capsys):
    status, err = trace(db, capsys, "--port", "far")
    assert status == 1 and "not bound to chassis h1" in err


def test_a_bad_packet_spec_exits_non_zero(db, capsys):
    status, err = trace(db, capsys, "--port", "vm1", "--packet", "ipv4_dst=10.0.0.9")
    assert status == 1 and "no port on the network has 10.0.0.9" in err


def test_every_action_has_a_trace_form():
    from hwflow.pipeline.trace import format_action

    pipeline = ir.Pipeline.build([], {4: "acl.egress"})
    forms = [format_action(a, {1: "vm1"}, pipeline) for a in (
        ir.Output(1), ir.GotoTable(4), ir.SetField("metadata", 3), ir.Move("reg0", "reg1"), ir.PushVlan(7),
        ir.PopVlan(), ir.DecTtl(), ir.Punt("dhcp"), ir.Conntrack(zone=2, commit=True, table=4), ir.Drop())]
    assert forms == ["output:vm1", "goto:acl.egress", "set:metadata=3", "move:reg0->reg1", "push_vlan:7",
                     "pop_vlan", "dec_ttl", "punt:dhcp", "ct(zone=2,commit,table=acl.egress)", "drop"]
