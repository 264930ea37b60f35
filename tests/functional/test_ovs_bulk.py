"""The bulk OpenFlow path against real Open vSwitch: flow counts, refusals inside big batches, Nicira actions.

Each test gets its own namespace with a private ovsdb-server/ovs-vswitchd
(userspace datapath) and one bridge; counts come from the switch itself
(aggregate stats and ovs-ofctl), never from what we think we sent.
"""

from __future__ import annotations

import dataclasses
import queue
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from os_ken.ofproto import ofproto_v1_3 as ofp

from hwflow.backends.ovs import native, translate
from hwflow.backends.ovs.backend import OvsBackend
from hwflow.backends.ovs.daemons import OvsDaemons
from hwflow.backends.ovs.openflow import OpenFlowConnection, PacketIn
from hwflow.backends.ovs.ovsdb import OvsdbClient
from hwflow.bench import openflow as bench
from hwflow.pipeline import ir

pytestmark = pytest.mark.functional

PREFIX = "hwt-of"
BRIDGE = "br-int"
PORTS = bench.PORTS


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=120)


@dataclasses.dataclass
class Switch:
    daemons: OvsDaemons
    of: OpenFlowConnection
    backend: OvsBackend

    def ofctl(self, command: str, *args: str) -> str:
        return run("ovs-ofctl", "-O", "OpenFlow13", command, self.daemons.mgmt(BRIDGE), *args).stdout

    def hwflow_flows(self) -> int:
        return self.of.flow_count(translate.COOKIE_MARK, translate.COOKIE_MARK_MASK)


@pytest.fixture
def switch() -> Iterator[Switch]:
    if shutil.which("ovs-vswitchd") is None:
        pytest.skip("openvswitch-switch is not installed")
    ns = f"{PREFIX}-bulk-{secrets.token_hex(3)}"
    rundir = Path(tempfile.mkdtemp(prefix=f"{ns}-"))
    daemons = OvsDaemons(rundir, netns=ns)
    closers = []
    try:
        run("ip", "netns", "add", ns)
        daemons.start()
        ovsdb = OvsdbClient(daemons.db_sock, BRIDGE)
        closers.append(ovsdb.close)
        ovsdb.ensure_bridge()
        of = OpenFlowConnection(daemons.mgmt(BRIDGE), timeout=60)
        closers.append(of.close)
        of.connect()
        yield Switch(daemons, of, OvsBackend(ovsdb, of))
    finally:
        for close in reversed(closers):
            close()
        daemons.stop()
        run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(rundir, ignore_errors=True)


def test_tens_of_thousands_of_flows_land_in_parts_and_reconcile_exactly(switch: Switch) -> None:
    flows = bench.workload(30_000)  # several writer parts and encoder chunks

    result = switch.backend.sync(flows, PORTS)

    assert (result.added, result.errors) == (30_000, ())
    assert switch.hwflow_flows() == 30_000
    assert "flow_count=30000" in switch.ofctl("dump-aggregate")
    assert switch.backend.sync(flows, PORTS).sent == 0
    rewired = [f._replace(actions=(ir.Output(3),)) if f.table == 10 else f for f in flows[:3000]]
    kept = [*rewired, *flows[3000:20_000]]
    changed = sum(a != b for a, b in zip(rewired, flows))
    again = switch.backend.sync(kept, PORTS)
    assert (again.added, again.modified, again.deleted, again.errors) == (0, changed, 10_000, ())
    assert changed > 500 and switch.hwflow_flows() == 20_000
    to_port_3 = sum(f.table == 10 and f.actions == (ir.Output(3),) for f in kept)
    assert switch.ofctl("dump-flows", "table=10").count("actions=output:3") == to_port_3


def test_a_refused_flow_deep_in_a_big_batch_is_named_and_the_rest_applied(switch: Switch) -> None:
    flows = bench.workload(20_000)
    bad = ir.Flow(40, 9, ir.Match(), (ir.Output(999),), "port:bogus")
    ports = {**PORTS, 999: ofp.OFPP_ANY}  # OVS refuses output to OFPP_ANY

    result = switch.backend.sync([*flows[:15_000], bad, *flows[15_000:]], ports)

    assert len(result.errors) == 1
    refused = result.errors[0].msg
    assert (refused.table_id, refused.priority, refused.cookie) == (40, 9, translate.owner_cookie("port:bogus"))
    assert result.errors[0].type == ofp.OFPET_BAD_ACTION
    assert switch.hwflow_flows() == 20_000


def test_nicira_conntrack_and_register_actions_are_accepted_by_ovs(switch: Switch) -> None:
    """The encoder-level extensions the IR cannot emit yet, checked against the real switch."""
    builder = native.ProgramBuilder(switch.backend.compiler.catalog)
    ip = [("eth_type", ir.ETH_TYPE_IPV4, None)]
    programs = [
        (0, ip + [("ct_state", 0, 0x20)], [("apply", [("ct", 0, None, 5, 1, 0, [])])]),
        (1, ip + [("ct_state", 0x21, 0x21)], [("apply", [
            ("ct", 1, "reg0", 15, 255, 0, [("set_field", "ct_mark", 7)]), ("output", 2)])]),
        (1, ip + [("reg3", 8, None)], [("apply", [
            ("reg_load2", "reg5", 0x12, 0xFF), ("reg_move", "reg5", "reg6", 8, 0, 16),
            ("reg_load2", "metadata", 0x1234, 0xFFFF)]), ("goto", 2)]),
    ]
    words: list[int] = []
    for table, match, instructions in programs:
        words += (*builder.header_words(table=table, priority=10, cookie=translate.owner_cookie("sg:1")),
                  *builder.body_words(match, instructions), native.CLOSE)

    assert switch.of.send_program(words, len(programs), switch.backend.encoder) == []

    dump = switch.ofctl("dump-flows")
    assert "ct(table=1,zone=5)" in dump
    assert "ct(commit,zone=NXM_NX_REG0[0..15],exec(set_field:0x7->ct_mark))" in dump
    assert "set_field:0x12/0xff->reg5" in dump and "move:NXM_NX_REG5[0..7]->NXM_NX_REG6[16..23]" in dump
    assert "set_field:0x1234/0xffff->metadata" in dump
    assert switch.hwflow_flows() == 3


def test_openflow_bench_runs_and_verifies_its_counts() -> None:
    if shutil.which("ovs-vswitchd") is None:
        pytest.skip("openvswitch-switch is not installed")
    # A prefix of this run's own: other tests (here or in a parallel run) make hwt-of-* namespaces meanwhile.
    prefix = f"{PREFIX}-bench-{secrets.token_hex(2)}"
    results = bench.run({"flows": 3000, "osken_flows": 1000, "netns_prefix": prefix}, lambda _text: None)
    assert results["flows_verified"] == 3000
    assert {"native_flows_per_s", "osken_flows_per_s", "speedup", "sync_flows_per_s", "compile_flows_per_s",
            "encode_flows_per_s", "resync_flows_per_s"} <= results.keys()
    # vswitchd's CPU time comes from /proc/PID/stat in 10 ms ticks and 3000 flows cost it one or two:
    # a reading of zero ticks is possible, so only the rates must be positive.
    cpu = {"ovs_cpu_us_per_flow", "ovs_cpu_share"}
    assert all(value > 0 for name, value in results.items() if name not in cpu)
    assert all(results[name] >= 0 for name in cpu)
    leftover = {n for n in run("ip", "netns", "list").stdout.split() if n.startswith(prefix)}
    assert not leftover, f"the bench left namespaces behind: {leftover}"


def test_without_the_native_encoder_the_os_ken_fallback_programs_the_same_flows(switch: Switch) -> None:
    """Where no compiler was present at install, the backend encodes with os-ken: same flows, same counts."""
    switch.backend.encoder = native.OskenEncoder(switch.backend.compiler.catalog)
    flows = bench.workload(2000)

    result = switch.backend.sync(flows, PORTS)

    assert (result.added, result.errors) == (2000, ())
    assert switch.hwflow_flows() == 2000
    assert switch.backend.sync(flows[:1500], PORTS).deleted == 500
    assert switch.hwflow_flows() == 1500


def test_bad_bench_parameters_are_one_clear_error() -> None:
    with pytest.raises(bench.BenchError, match="netns_prefix 'hwt-of/x': use 1-40 letters, digits and '-'"):
        bench.run({"flows": 10, "osken_flows": 10, "netns_prefix": f"{PREFIX}/x"}, lambda _text: None)


def test_router_actions_sync_and_resync_to_nothing(switch: Switch) -> None:
    """Move, DecTtl and OutputInPort as OVS takes them, and their dumped form diffs equal to the desired."""
    ipv4 = ir.Match.of(eth_type=ir.ETH_TYPE_IPV4, reg1=7)
    flows = [
        ir.Flow(20, 10, ipv4, (ir.Move("reg1", "metadata"), ir.Move("eth_src", "eth_dst"), ir.DecTtl(),
                               ir.Output(2)), "router:r1"),
        ir.Flow(20, 5, ir.Match.of(eth_type=ir.ETH_TYPE_ARP), (ir.Move("reg2", "reg3"), ir.OutputInPort()),
                "router:r1"),
    ]

    result = switch.backend.sync(flows, PORTS)

    assert (result.added, result.errors) == (2, ())
    dump = switch.ofctl("dump-flows")
    assert "move:NXM_NX_REG1[]->OXM_OF_METADATA[0..31]" in dump and "dec_ttl" in dump and "IN_PORT" in dump
    assert switch.backend.sync(flows, PORTS).sent == 0


def test_vlan_punt_conntrack_and_tunnel_flows_sync_and_resync_to_nothing(switch: Switch) -> None:
    """One flow of each construct, as OVS takes it and dumps it back: the second sync finds nothing to send."""
    ipv4, ipv6 = ir.Match.of(eth_type=ir.ETH_TYPE_IPV4), ir.Match.of(eth_type=ir.ETH_TYPE_IPV6)
    vxlan = ir.TUNNEL_PORTS["vxlan"]
    flows = [
        ir.Flow(30, 1, ir.Match.of(reg1=1), (ir.PushVlan(100), ir.Output(2)), "vlan:push"),
        ir.Flow(30, 2, ir.Match.of(vlan_vid=100), (ir.PopVlan(), ir.Output(3)), "vlan:pop"),
        ir.Flow(30, 3, ir.Match.of(vlan_vid=101), (ir.SetField("vlan_vid", 102), ir.Output(3)), "vlan:set"),
        ir.Flow(31, 1, ir.Match.of(reg2=1), (ir.SetField("metadata", 9), ir.Punt("dhcp")), "dhcp:punt"),
        ir.Flow(32, 1, ir.Match.of(eth_type=ir.ETH_TYPE_IPV4, ct_state=(0, ir.CT_TRK)),
                (ir.Conntrack(5, table=33),), "sg:lookup"),
        ir.Flow(33, 1, ir.Match.of(eth_type=ir.ETH_TYPE_IPV4, ct_state=ir.CT_TRK | ir.CT_NEW, ct_zone=5),
                (ir.Conntrack(5, commit=True, nat=ir.Nat("snat", 0x0A000001)), ir.Output(2)), "nat:snat"),
        ir.Flow(33, 2, ipv4, (ir.Conntrack(6, commit=True, table=34, nat=ir.Nat("dnat", 0x0A000002)),), "nat:dnat"),
        ir.Flow(33, 3, ipv6, (ir.Conntrack(7, table=34, nat=ir.Nat()),), "nat:un"),
        ir.Flow(34, 1, ir.Match.of(ct_mark=(1, 1), ct_zone=6, eth_type=ir.ETH_TYPE_IPV4), (ir.Output(1),), "sg:mark"),
        ir.Flow(35, 1, ir.Match.of(in_port=vxlan, tun_id=5001, tun_src=0x0A0A0A01, tun_dst=(0x0A0A0A00, 0xFFFFFF00)),
                (ir.Output(1),), "tunnel:decap"),
        ir.Flow(35, 2, ir.Match.of(reg3=1), (ir.SetField("tun_id", 5001), ir.SetField("tun_dst", 0x0A0A0A02),
                                             ir.Output(vxlan)), "tunnel:encap"),
    ]
    ports = {**PORTS, vxlan: 9}

    result = switch.backend.sync(flows, ports)

    assert (result.added, result.errors) == (len(flows), ())
    assert switch.backend.sync(flows, ports).sent == 0
    dump = switch.ofctl("dump-flows")
    for text in ("actions=push_vlan:0x8100,set_field:4196->vlan_vid,output:2", "dl_vlan=100 actions=pop_vlan,output:3",
                 "actions=set_field:4198->vlan_vid,output:3", "actions=set_field:0x9->metadata,CONTROLLER:65535",
                 "ct_state=-trk,ip actions=ct(table=33,zone=5)",
                 "actions=ct(commit,zone=5,nat(src=10.0.0.1)),output:2",
                 "actions=ct(commit,table=34,zone=6,nat(dst=10.0.0.2))", "actions=ct(table=34,zone=7,nat)",
                 "ct_zone=6,ct_mark=0x1/0x1", "tun_id=0x1389,tun_src=10.10.10.1,tun_dst=10.10.10.0/24,in_port=9",
                 "actions=set_field:0x1389->tun_id,set_field:10.10.10.2->tun_dst,output:9"):
        assert text in dump, f"{text!r} not in\n{dump}"


def test_a_punted_packet_reaches_the_agent_whole_with_its_metadata_and_registers(switch: Switch) -> None:
    """What a responder (DHCP) relies on: the frame untruncated, and the pipeline's state in the packet-in."""
    flows = [ir.Flow(0, 1, ir.Match(), (ir.SetField("reg0", 7), ir.SetField("outport", 9), ir.SetField("metadata", 5),
                                        ir.Punt("dhcp"), ir.Output(1)), "dhcp:punt")]
    assert switch.backend.sync(flows, PORTS).errors == ()
    punted: queue.Queue[PacketIn] = queue.Queue()
    switch.of.on_packet_in(punted.put)
    frame = bytes.fromhex("ffffffffffff020000000001" "88b5") + bytes(range(256)) * 6  # longer than any default max_len

    switch.of.packet_out(ofp.OFPP_TABLE, frame)  # into table 0, as if it came in

    got = punted.get(timeout=10)
    assert got.data == frame and got.cookie == translate.owner_cookie("dhcp:punt")
    assert (got.fields["metadata"], got.fields["reg0"], got.fields["reg15"]) == (5, 7, 9)
