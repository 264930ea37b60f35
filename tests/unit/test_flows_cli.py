"""``hwflow flows``: the agent's published plan joined with what the datapaths hold (hwflow.cli.flows.join)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from types import SimpleNamespace

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from hwflow.agent import published
from hwflow.backends.ovs.backend import Held
from hwflow.backends.ovs.translate import InstalledFlow, owner_cookie
from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.backend import Representor, to_flower
from hwflow.cli import flows
from hwflow.cli.common import CliError
from hwflow.offload.partition import HwRule, Plan, SoftwareLeaf
from hwflow.pipeline import ir

EP = "unix:/run/simnic.sock"
REPS = {1: Representor(11, EP), 2: Representor(12, EP)}
VM2 = 0xFA163E000002
OWNER1, OWNER2 = ir.Owner("port", "p1"), ir.Owner("port", "p2")


def rule(eth_dst: int, order: int = 0, owner: ir.Owner | str = OWNER2) -> HwRule:
    return HwRule(1, order, 0, ir.Match.of(eth_type=ir.ETH_TYPE_IPV4, eth_dst=eth_dst), 2, owner)


def planned(*rules: HwRule) -> list[tuple[HwRule, str, fl.FlowerRule]]:
    return [(r, *to_flower(r, REPS, fl.TCA_CLS_FLAGS_SKIP_SW)) for r in rules]


def document(encoded: list, software: list[SoftwareLeaf] = (), owners=(OWNER1, OWNER2), refused=None,
             flows: tuple[InstalledFlow, ...] = (), publisher: published.Publisher | None = None,
             rep2: str = "rep2") -> dict:
    plan = Plan(own={1: [r for r, _, _ in encoded]}, software=software)
    snap = published.Snapshot(
        at=1.0, full=True, plan=plan, flower={1: {0: encoded}},
        ports={1: ("p1", "vm1-port", 5), 2: ("p2", None, 6), ir.TUNNEL_PORTS["vxlan"]: ("tunnel:vxlan", None, 7)},
        devices=[(EP, 11, "rep1", 1), (EP, 12, rep2, 2)],
        flows={flow.key: Held(flow.instructions, flow.cookie, None) for flow in flows})
    publisher = publisher or published.Publisher(Path("/nonexistent"), "host1",
                                                 {"bridge": "br-int", "openflow_endpoint": "unix:/x"})
    return publisher.document(snap, owners, refused or {})


def installed(encoded: list, handle: int = 1) -> list[tuple[fl.FlowerRule, fl.RuleStats]]:
    return [(dataclasses.replace(fr, handle=handle + i), fl.RuleStats(10 + i, 1000 + i, 0))
            for i, (_, _, fr) in enumerate(encoded)]


def test_an_installed_planned_rule_has_its_owner_port_and_counters() -> None:
    encoded = planned(rule(VM2))
    entries = flows.join(document(encoded), {(EP, 11): installed(encoded), (EP, 12): []}, [])
    [hw] = [e for e in entries if e["datapath"] == "hw"]
    assert hw["owner"] == "port:p2" and hw["port"] == "p1" and hw["port_name"] == "vm1-port"
    assert hw["device"] == "rep1" and hw["kind"] == "rule" and hw["chain"] == 0
    assert (hw["packets"], hw["bytes"], hw["reason"], hw["disagreement"]) == (10, 1000, None, None)
    assert "eth_dst=fa:16:3e:00:00:02" in hw["match"] and "eth_dst=fa:16:3e:00:00:02" in hw["flower"]
    assert hw["actions"] == "redirect:rep2"


def test_a_rule_encoded_anew_names_the_device_its_actions_go_to_now() -> None:
    """A long-running publisher: a rule's actions are told as the devices are named at that write (texts
    kept across writes named a device gone, and piled up with every port's conntrack zone in the soak)."""
    publisher = published.Publisher(Path("/nonexistent"), "host1", {"bridge": "br-int", "openflow_endpoint": "x"})
    for name in ("rep2", "vf2-renamed"):
        encoded = planned(rule(VM2))  # encoded afresh: a new flower rule, the same actions
        entries = flows.join(document(encoded, publisher=publisher, rep2=name),
                             {(EP, 11): installed(encoded), (EP, 12): []}, [])
        [hw] = [e for e in entries if e["datapath"] == "hw"]
        assert (hw["actions"], hw["disagreement"]) == (f"redirect:{name}", None)  # as planned


def test_an_ipv6_rule_past_64_bits_joins_its_dump() -> None:
    """IPv6 addresses and masks in the plan's match and tc keys (integers MessagePack has no type for) come back
    equal to what the NIC dumps: the rule is installed, not missing and extra."""
    v6 = HwRule(1, 0, 0, ir.Match.of(eth_type=ir.ETH_TYPE_IPV6, ipv6_dst=(0x20010DB8 << 96 | 5, (1 << 128) - 1)),
                2, OWNER2)
    encoded = planned(v6)
    entries = flows.join(document(encoded), {(EP, 11): installed(encoded), (EP, 12): []}, [])
    [hw] = [e for e in entries if e["datapath"] == "hw"]
    assert hw["disagreement"] is None and hw["owner"] == "port:p2" and hw["packets"] == 10
    assert "ipv6_dst=2001:db8::5" in hw["match"] and "ipv6_dst=2001:db8::5" in hw["flower"]


def test_disagreements_both_ways() -> None:
    kept, lost, extra = planned(rule(VM2), rule(VM2 + 1, 1), rule(VM2 + 2, 2))
    doc = document([kept, lost])
    entries = flows.join(doc, {(EP, 11): installed([kept, extra]), (EP, 12): []}, [])
    by_mac = {e["flower"].split("eth_dst=")[1].split()[0]: e for e in entries if e["datapath"] == "hw"}
    assert by_mac["fa:16:3e:00:00:02"]["disagreement"] is None
    assert by_mac["fa:16:3e:00:00:03"]["disagreement"] == "in the agent's plan, not installed"
    assert by_mac["fa:16:3e:00:00:03"]["packets"] is None and by_mac["fa:16:3e:00:00:03"]["owner"] == "port:p2"
    assert by_mac["fa:16:3e:00:00:04"]["disagreement"] == "installed, not in the agent's plan"
    assert by_mac["fa:16:3e:00:00:04"]["owner"] is None and by_mac["fa:16:3e:00:00:04"]["port"] == "p1"
    assert by_mac["fa:16:3e:00:00:04"]["packets"] == 11


def test_a_planned_rule_the_nic_refused_says_so_and_other_actions_are_a_disagreement() -> None:
    kept, refused = planned(rule(VM2), rule(VM2 + 1, 1))
    fr = refused[2]
    doc = document([kept, refused], refused={(fr.ifindex, fr.chain, fr.prio, fr.protocol, fr.keys): "ENOSPC!"})
    other = dataclasses.replace(kept[2], actions=(fl.Gact("drop"),))
    entries = flows.join(doc, {(EP, 11): installed([(None, EP, other)]), (EP, 12): []}, [])
    notes = sorted(e["disagreement"] for e in entries if e["datapath"] == "hw")
    assert notes == ["in the agent's plan, not installed (the NIC refused it: ENOSPC!)",
                     "installed with other actions (planned: redirect:rep2)"]


def test_an_unreadable_nic_is_said_of_its_planned_rules() -> None:
    encoded = planned(rule(VM2))
    entries = flows.join(document(encoded), {}, [], {(EP, 11): "no such socket"})
    [hw] = entries
    assert hw["disagreement"] == "the NIC could not be read: no such socket"


def test_software_paths_carry_their_reason_and_owner() -> None:
    arp = ir.Match.of(eth_type=ir.ETH_TYPE_ARP)
    leaves = [SoftwareLeaf(1, arp, "eth_type 0x0806 is not offloaded", 0, owner=OWNER1),
              SoftwareLeaf(-1, arp, "the NIC's rule table is full", 7)]
    doc = document(planned(rule(VM2)), leaves)
    doc["sw"][1]["ports"] = [1, 2]  # a shared chain both ports reach
    paths = [e for e in flows.join(doc, {}, []) if e["kind"] == "path"]
    assert [(p["datapath"], p["port"], p["ports"], p["owner"], p["reason"], p["packets"]) for p in paths] == [
        ("sw", "p1", ["p1"], "port:p1", "eth_type 0x0806 is not offloaded", None),
        ("sw", None, ["p1", "p2"], None, "the NIC's rule table is full", None)]
    assert paths[0]["match"] == "eth_type=0x0806"


FLOW = InstalledFlow((0, 100, (("eth_type", 0x800, 0xFFFF), ("in_port", 5, 0xFFFFFFFF))),
                     (("apply", (("output", 6),)),), owner_cookie(OWNER2), 3, 300)
V6 = InstalledFlow((2, 50, (("eth_type", 0x86DD, 0xFFFF), ("ipv6_dst", 0xFE80 << 112 | 1, (1 << 128) - 1))),
                   (("goto", 3),), owner_cookie(OWNER1), 0, 0)


def test_openflow_flows_are_named_by_their_cookie_and_in_port() -> None:
    doc = document(planned(rule(VM2)), flows=(FLOW,))
    flow = FLOW
    stranger = InstalledFlow((3, 10, (("metadata", 4, 0xFF),)), (("goto", 4),), owner_cookie("port:zz"), 0, 0)
    [mine, theirs] = [e for e in flows.join(doc, {}, [flow, stranger]) if e["kind"] == "flow"]
    assert (mine["owner"], mine["port"], mine["packets"], mine["bytes"], mine["disagreement"]) == (
        "port:p2", "p1", 3, 300, None)
    assert mine["match"] == "eth_type=0x0800,in_port=rep1" and mine["actions"] == "output:rep2"
    assert theirs["owner"] is None and theirs["disagreement"] == "owner unknown to the agent"
    assert theirs["match"] == "metadata=4/0xff" and theirs["actions"] == "goto:4"


def test_openflow_flows_missing_and_unplanned_are_disagreements_both_ways() -> None:
    """The plan holds every flow the agent installed (IPv6 addresses past 64 bits included): one the bridge lacks
    is missing, with its owner and where it was; one of a known owner the plan lacks is unplanned."""
    unplanned = InstalledFlow((0, 90, (("eth_type", 0x806, 0xFFFF),)), (), owner_cookie(OWNER2), 1, 60)
    doc = document(planned(rule(VM2)), flows=(FLOW, V6))
    entries = [e for e in flows.join(doc, {}, [FLOW, unplanned]) if e["kind"] == "flow"]
    by_table = {(e["table"], e["priority"]): e for e in entries}
    assert by_table[0, 100]["disagreement"] is None
    missing = by_table[2, 50]
    assert missing["disagreement"] == "in the agent's plan, not installed" and missing["owner"] == "port:p1"
    assert missing["packets"] is None and missing["actions"] is None
    assert missing["match"] == "eth_type=0x86dd,ipv6_dst=fe80::1"
    assert by_table[0, 90]["disagreement"] == "installed, not in the agent's plan"
    assert by_table[0, 90]["owner"] == "port:p2" and by_table[0, 90]["packets"] == 1
    assert not [e for e in flows.join(doc, {}, None) if e["kind"] == "flow"]  # OVS not dumped: nothing said


def test_the_table_is_one_line_per_entry(capsys: pytest.CaptureFixture) -> None:
    doc = document(planned(rule(VM2)), [SoftwareLeaf(1, ir.Match.of(eth_type=ir.ETH_TYPE_ARP), "x" * 200, 0)])
    entries = flows.join(doc, {(EP, 11): installed(planned(rule(VM2)))}, [])
    lines = flows.table_lines(doc, entries).splitlines()
    assert len(lines) == 2 + len(entries)
    assert lines[1].split()[:3] == ["DP", "PORT", "OWNER"]
    assert "hw rule" in lines[2] and "vm1-port" in lines[2] and "port:p2" in lines[2]


def test_the_publisher_writes_atomically_at_most_every_interval(tmp_path: Path) -> None:
    path = tmp_path / "state" / "flows-host1.msgpack"
    publisher = published.Publisher(path, "host1", {"bridge": "br-int", "openflow_endpoint": "unix:/x"},
                                    interval=0.3)
    encoded = planned(rule(VM2))
    topo = SimpleNamespace(local_port_ids={"p1"}, ports={"p1": SimpleNamespace(unique_key=1, name="vm1-port")})
    agent = SimpleNamespace(
        topo=topo, ofports={1: 5}, bridge_mappings={}, encoded_reps={1: REPS[1]}, managed_reps=frozenset({REPS[1]}),
        device_reports={}, flower_rules={1: {0: encoded}},
            ovs=SimpleNamespace(compiler=SimpleNamespace(owners=lambda: [OWNER1]), held={}),
        tc=SimpleNamespace(refused=dict))
    plan = Plan(own={1: [encoded[0][0]]})
    publisher.passed(agent, plan, changed=False, full=False)
    assert publisher._pending is None  # nothing changed: nothing to write
    publisher.passed(agent, plan, changed=True, full=False)
    for _ in range(50):
        if path.exists():
            break
        time.sleep(0.05)
    assert path.exists()
    doc = published.load(path)
    assert doc["chassis"] == "host1" and list(doc["owners"]) == ["port:p1"] and len(doc["hw"]) == 1
    assert doc["ports"]["1"] == {"id": "p1", "name": "vm1-port", "ofport": 5, "device": None}
    assert not list(path.parent.glob(".*.tmp"))
    first = publisher.writes
    publisher.passed(agent, plan, changed=True, full=False)
    publisher.passed(agent, plan, changed=True, full=False)
    assert publisher.writes == first  # within the interval: held back, then written once
    for _ in range(50):
        if publisher.writes > first:
            break
        time.sleep(0.05)
    time.sleep(0.1)
    assert publisher.writes == first + 1


def test_the_cli_finds_the_chassis_file(tmp_path: Path) -> None:
    with pytest.raises(CliError, match="no published plan"):
        flows.find_published(tmp_path, None, "h1", True)
    (tmp_path / "flows-h1.msgpack").write_text("{}")
    assert flows.find_published(tmp_path, None, "other", False).name == "flows-h1.msgpack"
    (tmp_path / "flows-h2.msgpack").write_text("{}")
    with pytest.raises(CliError, match="pick one with --chassis.*h1, h2"):
        flows.find_published(tmp_path, None, "other", False)
    assert flows.find_published(tmp_path, "h2", "h1", True).name == "flows-h2.msgpack"
    assert flows.find_published(tmp_path, None, "h1", True).name == "flows-h1.msgpack"
    with pytest.raises(CliError, match="h3.msgpack is missing"):
        flows.find_published(tmp_path, "h3", "h1", True)


@settings(max_examples=300, deadline=None)
@example(msgpack.packb({"version": 2}))  # the right version, nothing else
@example(msgpack.packb({"version": 2, "key_fields": list(published.KEY_FIELDS), "hw_columns": list(
    published.HW_COLUMNS), "sw_columns": list(published.SW_COLUMNS), "flow_columns": list(published.FLOW_COLUMNS),
    "hw": [[1]], "sw": [], "flows": []}))  # a row cut short
@given(st.one_of(st.binary(max_size=64), st.builds(
    lambda doc, cut: doc[:cut], st.just(published.Publisher(Path("/x"), "h", {}).document_bytes(
        published.Snapshot(1.0, True, Plan(), {}, {}, []), [], {})), st.integers(0, 400))))
def test_a_file_that_is_not_the_agents_is_a_value_error_never_another(data: bytes) -> None:
    """What `hwflow flows` turns into its one-line error: garbage, a file cut short, anything."""
    try:
        doc = published.read(data)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert doc["version"] == published.VERSION and doc["hw"] == []
