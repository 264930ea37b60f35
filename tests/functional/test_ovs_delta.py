"""OvsBackend.apply (deltas from the state held in memory) and sync's repairs, against real Open vSwitch.

Each test gets its own namespace with a private ovsdb-server/ovs-vswitchd
(userspace datapath) and one bridge. What the backend sends is counted on the
wire (every OpenFlow message it writes is parsed back); what the bridge holds
comes from the switch itself (dumps, aggregate stats, ovs-ofctl).
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import shutil
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from hwflow.backends.ovs import translate
from hwflow.backends.ovs.backend import FullSyncNeeded, OvsBackend
from hwflow.backends.ovs.daemons import OvsDaemons
from hwflow.backends.ovs.openflow import HEADER, OpenFlowConnection
from hwflow.backends.ovs.ovsdb import OvsdbClient
from hwflow.pipeline import ir

pytestmark = pytest.mark.functional

PREFIX = "hwt-od"
BRIDGE = "br-int"
ETH_TEST = 0x88B5  # IEEE local experimental ethertype: frames for counting, nothing else matches them
PORTS = {101: 1, 102: 2, 103: 3}  # logical port -> ofport: OVS takes flows naming ports it does not have


def run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=60)


class Wire:
    """Every OpenFlow message the connection writes: (type, flow_mod command, table, priority)."""

    def __init__(self, of: OpenFlowConnection) -> None:
        self.messages: list[tuple[int, int | None, int | None, int | None]] = []
        write = of._write

        def counting(sock, data: bytes) -> None:
            self._parse(data)
            write(sock, data)

        of._write = counting  # type: ignore[method-assign]

    def _parse(self, data: bytes) -> None:
        offset = 0
        while offset < len(data):
            _, kind, length, _ = HEADER.unpack_from(data, offset)
            if kind == ofp.OFPT_FLOW_MOD:
                table, command = data[offset + 24], data[offset + 25]
                (priority,) = struct.unpack_from("!H", data, offset + 30)
                self.messages.append((kind, command, table, priority))
            else:
                self.messages.append((kind, None, None, None))
            offset += length

    def clear(self) -> None:
        self.messages.clear()

    def flow_mods(self) -> list[tuple[int, int, int]]:
        """(command, table, priority) in the order sent."""
        return [(c, t, p) for k, c, t, p in self.messages if k == ofp.OFPT_FLOW_MOD]  # type: ignore[misc]

    def kinds(self) -> set[int]:
        return {k for k, _, _, _ in self.messages}


@dataclasses.dataclass
class Switch:
    ns: str
    daemons: OvsDaemons
    ovsdb: OvsdbClient
    of: OpenFlowConnection
    backend: OvsBackend
    wire: Wire

    @property
    def target(self) -> str:
        return self.daemons.mgmt(BRIDGE)

    def ofctl(self, command: str, *args: str) -> str:
        return run("ovs-ofctl", "-O", "OpenFlow13", command, self.target, *args).stdout

    def dumped(self) -> dict[translate.FlowKey, tuple[translate.InstructionsKey, int]]:
        """What the bridge holds under the hwflow marker, in the terms of OvsBackend.installed_flows()."""
        replies = self.of.dump_flows_raw(translate.COOKIE_MARK, translate.COOKIE_MARK_MASK)
        return {f.key: (f.instructions, f.cookie) for f in self.backend.compiler.decode_flow_stats(replies)}

    def n_packets(self) -> dict[translate.FlowKey, int]:
        return {r.key: r.n_packets for r in self.backend.flow_stats()}

    def send_frames(self, eth_dst: int, count: int = 3) -> None:
        """Frames into table 0 (packet-out to OFPP_TABLE), so flows matching them count packets."""
        frame = eth_dst.to_bytes(6, "big") + bytes.fromhex("020000000001") + ETH_TEST.to_bytes(2, "big") + bytes(46)
        for _ in range(count):
            self.of.packet_out(ofp.OFPP_TABLE, frame)
        self.of.send([])  # a barrier: the packet-outs are processed


@pytest.fixture
def switch() -> Iterator[Switch]:
    if shutil.which("ovs-vswitchd") is None:
        pytest.skip("openvswitch-switch is not installed")
    ns = f"{PREFIX}-{secrets.token_hex(3)}"
    rundir = Path(tempfile.mkdtemp(prefix=f"{ns}-"))
    daemons = OvsDaemons(rundir, netns=ns)
    closers = []
    try:
        run("ip", "netns", "add", ns)
        daemons.start()
        ovsdb = OvsdbClient(daemons.db_sock, BRIDGE)
        closers.append(ovsdb.close)
        ovsdb.ensure_bridge()
        of = OpenFlowConnection(daemons.mgmt(BRIDGE))
        closers.append(of.close)
        of.connect()
        yield Switch(ns, daemons, ovsdb, of, OvsBackend(ovsdb, of), Wire(of))
    finally:
        for close in reversed(closers):
            close()
        daemons.stop()
        run("ip", "netns", "del", ns, check=False)
        shutil.rmtree(rundir, ignore_errors=True)


def mac_flow(i: int, actions: tuple[ir.Action, ...] = (ir.Drop(),), owner: str | None = None,
             table: int = 0) -> ir.Flow:
    return ir.Flow(table, 10, ir.Match.of(eth_type=ETH_TEST, eth_dst=0x020000001000 + i), actions,
                   owner or f"mac:{i}")


def port_flows(port: int) -> list[ir.Flow]:
    """One flow matching the port (its key holds the ofport), one sending to it (its actions do)."""
    return [ir.Flow(0, 100, ir.Match.of(in_port=port), (ir.SetField("metadata", 7), ir.GotoTable(10)),
                    f"port:{port}"),
            ir.Flow(10, 100, ir.Match.of(metadata=7, eth_dst=0x020000002000 + port), (ir.Output(port),),
                    f"port:{port}")]


def base_flows(n: int = 200) -> list[ir.Flow]:
    return [mac_flow(i) for i in range(n)]


ADD, MODIFY, DELETE = ofp.OFPFC_ADD, ofp.OFPFC_MODIFY_STRICT, ofp.OFPFC_DELETE_STRICT


def test_apply_before_any_sync_asks_for_one(switch: Switch) -> None:
    assert switch.backend.needs_full_sync
    with pytest.raises(FullSyncNeeded, match="sync"):
        switch.backend.apply([mac_flow(1)], [], PORTS)
    assert switch.wire.flow_mods() == []
    switch.backend.sync([], PORTS)
    assert not switch.backend.needs_full_sync


def test_a_delta_sends_only_its_flow_mods_and_no_dump(switch: Switch) -> None:
    flows = base_flows()
    switch.backend.sync(flows, PORTS)
    switch.send_frames(0x020000001000 + 7)
    before = switch.n_packets()
    switch.wire.clear()

    new, old = mac_flow(500), flows[3]
    changed = mac_flow(5, (ir.Output(101),))
    result = switch.backend.apply([new, changed], [old, flows[5]], PORTS)

    assert (result.added, result.modified, result.deleted, result.errors) == (1, 1, 1, ())
    assert switch.wire.flow_mods() == [(ADD, 0, 10), (MODIFY, 0, 10), (DELETE, 0, 10)]  # deletion last
    assert switch.wire.kinds() == {ofp.OFPT_FLOW_MOD, ofp.OFPT_BARRIER_REQUEST}  # no flow dump: memory
    assert switch.of.flow_count(translate.COOKIE_MARK, translate.COOKIE_MARK_MASK) == 200
    after = switch.n_packets()
    untouched = [k for k in before if k in after]
    assert len(untouched) == 199 and all(after[k] == before[k] for k in untouched)
    assert max(after.values()) == 3  # the counted flow kept its packets
    assert switch.backend.installed_flows() == switch.dumped()

    switch.wire.clear()
    assert switch.backend.apply([], [], PORTS).sent == 0  # an empty delta sends nothing at all
    assert switch.wire.messages == []


def test_a_changed_flow_is_modified_in_place_never_deleted_and_added(switch: Switch) -> None:
    flow = mac_flow(1)
    switch.backend.sync([flow, mac_flow(2)], PORTS)
    switch.send_frames(0x020000001001, count=5)
    key = next(iter(k for k in switch.n_packets() if switch.n_packets()[k]))
    switch.wire.clear()

    redirected = flow._replace(actions=(ir.Output(102),))
    result = switch.backend.apply([redirected], [flow], PORTS)

    assert (result.added, result.modified, result.deleted) == (0, 1, 0)
    assert switch.wire.flow_mods() == [(MODIFY, 0, 10)]  # one MODIFY_STRICT: the flow never leaves the table
    assert switch.n_packets()[key] == 5, "a delete and an add would have reset the flow's counters"
    assert switch.dumped()[key][0] == (("apply", (("output", 2),)),)
    switch.send_frames(0x020000001001, count=2)
    assert switch.n_packets()[key] == 7

    # A new owner (cookie) on the same key: an ADD over it, which OVS applies in place.
    switch.wire.clear()
    moved = redirected._replace(owner="network:other")
    assert switch.backend.apply([moved], [redirected], PORTS).modified == 1
    assert switch.wire.flow_mods() == [(ADD, 0, 10)]
    assert switch.dumped()[key][1] == translate.owner_cookie("network:other")
    assert switch.n_packets()[key] == 7
    assert switch.backend.installed_flows() == switch.dumped()


def test_an_add_over_a_key_installed_with_other_actions_is_a_modify(switch: Switch) -> None:
    switch.backend.sync([mac_flow(1)], PORTS)
    switch.wire.clear()
    result = switch.backend.apply([mac_flow(1, (ir.Output(101),))], [], PORTS)
    assert (result.added, result.modified, result.deleted) == (0, 1, 0)
    assert switch.wire.flow_mods() == [(MODIFY, 0, 10)]
    assert switch.backend.installed_flows() == switch.dumped()


def test_an_unbound_ports_flows_are_installed_when_its_ofport_appears_and_leave_with_it(switch: Switch) -> None:
    key = 201
    flows = port_flows(key)
    result = switch.backend.sync([mac_flow(1), *flows], {})
    assert sorted(e.port_key for e in result.skipped_unbound) == [key, key]
    assert set(switch.backend.unbound_flows()) == set(flows)

    dev, iface_id = f"{PREFIX}-{secrets.token_hex(3)}", f"lport-{secrets.token_hex(2)}"
    run("ip", "netns", "exec", switch.ns, "ip", "link", "add", dev, "type", "veth", "peer", "name",
        f"{PREFIX}p{secrets.token_hex(3)}")
    switch.ovsdb.add_port(dev, iface_id=iface_id)
    ofport = switch.ovsdb.wait_for_ofport(dev, timeout=10)
    ports = switch.backend.ofports({iface_id: key})
    assert ports == {key: ofport}
    switch.wire.clear()

    bound = switch.backend.apply([], [], ports)  # no flow changed: only the binding

    assert (bound.added, bound.modified, bound.deleted, bound.skipped_unbound) == (2, 0, 0, ())
    assert sorted(switch.wire.flow_mods()) == [(ADD, 0, 100), (ADD, 10, 100)]
    assert switch.backend.unbound_flows() == {}
    dump = switch.ofctl("dump-flows")
    assert f"in_port={ofport}" in dump and f"output:{ofport}" in dump
    assert switch.backend.installed_flows() == switch.dumped()

    switch.ovsdb.del_port(dev)  # unplugged: its flows leave and wait for it again
    unbound = switch.backend.apply([], [], {})
    assert (unbound.added, unbound.deleted) == (0, 2)
    assert sorted(e.port_key for e in unbound.skipped_unbound) == [key, key]
    assert set(switch.backend.unbound_flows()) == set(flows)
    assert f"in_port={ofport}" not in switch.ofctl("dump-flows")
    assert switch.backend.installed_flows() == switch.dumped()

    # Removing a waiting flow forgets it: a later binding installs only what is still desired.
    switch.backend.apply([], [flows[1]], {})
    assert switch.backend.apply([], [], ports).added == 1
    assert switch.backend.installed_flows() == switch.dumped()


def test_a_port_bound_to_another_ofport_gets_its_flows_recompiled(switch: Switch) -> None:
    switch.backend.sync([*port_flows(101), *port_flows(102)], PORTS)
    switch.wire.clear()

    result = switch.backend.apply([], [], {**PORTS, 101: 9})

    # The in_port flow's key changes (add the new one, then delete the old); the output flow is modified.
    assert (result.added, result.modified, result.deleted) == (1, 1, 1)
    sent = switch.wire.flow_mods()
    assert sorted(sent[:2]) == [(ADD, 0, 100), (MODIFY, 10, 100)] and sent[2] == (DELETE, 0, 100)  # deletion last
    dump = switch.ofctl("dump-flows")
    assert "in_port=9" in dump and "output:9" in dump and "in_port=1 " not in dump and "output:1\n" not in dump
    assert switch.backend.installed_flows() == switch.dumped()


def test_a_flow_changed_behind_the_backs_back_is_repaired_by_the_next_sync_and_counted(switch: Switch,
                                                                                          caplog) -> None:
    flows = [mac_flow(i) for i in range(5)]
    switch.backend.sync(flows, PORTS)
    switch.ofctl("del-flows", f"cookie={translate.owner_cookie('mac:2'):#x}/-1")
    assert switch.of.flow_count(translate.COOKIE_MARK, translate.COOKIE_MARK_MASK) == 4
    assert switch.backend.apply([], [], PORTS).sent == 0  # a delta trusts memory: nothing to see

    with caplog.at_level(logging.WARNING, logger="hwflow.backends.ovs.backend"):
        result = switch.backend.sync(flows, PORTS)

    assert (result.added, result.modified, result.deleted, result.repairs) == (1, 0, 0, 1)
    assert switch.backend.repairs == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "1 missing, 0 extra, 0 different" in warnings[0]
    assert switch.backend.installed_flows() == switch.dumped()
    assert len(switch.dumped()) == 5

    # One extra (an hwflow cookie nobody asked for) and one different (actions rewritten).
    switch.ofctl("add-flow", f"cookie={translate.owner_cookie('stray'):#x},table=3,priority=1,actions=drop")
    switch.ofctl("mod-flows", "--strict",
                 f"table=0,priority=10,dl_type={ETH_TEST:#x},dl_dst=02:00:00:00:10:04,actions=output:3")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="hwflow.backends.ovs.backend"):
        again = switch.backend.sync(flows, PORTS)
    assert (again.added, again.modified, again.deleted, again.repairs) == (0, 1, 1, 2)
    assert switch.backend.repairs == 3
    assert any("0 missing, 1 extra, 1 different" in r.getMessage() for r in caplog.records)
    assert switch.backend.sync(flows, PORTS).repairs == 0


def test_a_restarted_vswitchd_turns_the_next_call_into_a_full_sync(switch: Switch) -> None:
    flows = [*base_flows(20), *port_flows(101)]
    switch.backend.sync(flows, PORTS)
    assert not switch.backend.needs_full_sync

    switch.daemons.stop()  # vswitchd's flow table goes with it
    switch.daemons.start()
    deadline = time.monotonic() + 10
    while not switch.backend.needs_full_sync:  # the connection's reader sees the hang-up
        assert time.monotonic() < deadline, "the lost OpenFlow session went unnoticed"
        time.sleep(0.05)
    with pytest.raises(FullSyncNeeded):
        switch.backend.apply([mac_flow(900)], [], PORTS)

    deadline = time.monotonic() + 10
    while True:  # the new vswitchd takes a moment to create the bridge and its mgmt socket
        try:
            result = switch.backend.sync(flows, PORTS)
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)

    assert (result.added, result.deleted, result.repairs) == (22, 0, 0)  # expected after a restart: no repair
    assert not switch.backend.needs_full_sync
    assert switch.backend.apply([mac_flow(900)], [], PORTS).added == 1
    assert switch.backend.installed_flows() == switch.dumped()


def test_a_refused_flow_mod_leaves_memory_as_the_bridge_has_it(switch: Switch) -> None:
    switch.backend.sync([mac_flow(1)], PORTS)
    bad = mac_flow(2, (ir.Output(999),))
    refused = switch.backend.apply([bad, mac_flow(3)], [], {**PORTS, 999: 0xFFFFFFFF})  # OVS refuses OFPP_ANY
    assert len(refused.errors) == 1 and refused.added == 2
    assert switch.backend.installed_flows() == switch.dumped()
    assert len(switch.dumped()) == 2
    again = switch.backend.apply([mac_flow(1, (ir.Output(999),))], [mac_flow(1)], {**PORTS, 999: 0xFFFFFFFF})
    assert len(again.errors) == 1
    assert switch.backend.installed_flows() == switch.dumped()  # the refused modify: the old flow stays
    assert switch.backend.sync([mac_flow(1), mac_flow(3)], PORTS).repairs == 0


def test_a_delta_that_cannot_be_translated_sends_nothing_and_changes_nothing(switch: Switch) -> None:
    switch.backend.sync([mac_flow(1)], PORTS)
    memory = switch.backend.installed_flows()
    switch.wire.clear()
    clash = [mac_flow(2), mac_flow(2, (ir.Output(101),))]
    with pytest.raises(ValueError, match="same OpenFlow"):
        switch.backend.apply(clash, [mac_flow(1)], PORTS)
    backwards = ir.Flow(10, 1, ir.Match(), (ir.GotoTable(5),), "bad")
    with pytest.raises(translate.TranslationError):
        switch.backend.apply([mac_flow(3), backwards], [], PORTS)
    assert switch.wire.flow_mods() == []
    assert switch.backend.installed_flows() == memory == switch.dumped()
    assert not switch.backend.needs_full_sync


# --- random deltas: memory always equals a fresh dump -----------------------------------------

# Slots with distinct (table, priority) so two slots never share a key; some match or output a port.
SLOTS = [(0, 200 + p, ir.Match.of(in_port=p)) for p in (101, 102, 103)] + \
        [(10, 10 + i, ir.Match.of(eth_type=ETH_TEST, eth_dst=0x020000003000 + i)) for i in range(5)]
ACTIONS = [(ir.Drop(),), (ir.Output(101),), (ir.Output(102), ir.Output(103)), (ir.GotoTable(20),)]
OWNERS = ["owner:a", "owner:b"]


def variant(slot: int, actions: int, owner: int) -> ir.Flow:
    table, priority, match = SLOTS[slot]
    return ir.Flow(table, priority, match, ACTIONS[actions], OWNERS[owner])


step = st.tuples(
    st.dictionaries(st.integers(0, len(SLOTS) - 1),
                    st.one_of(st.none(), st.tuples(st.integers(0, len(ACTIONS) - 1), st.integers(0, 1))),
                    max_size=5),
    st.dictionaries(st.sampled_from([101, 102, 103]), st.one_of(st.none(), st.integers(1, 6))),
)


def expected(backend: OvsBackend, flows: list[ir.Flow], ports: dict[int, int]) -> dict:
    out = {}
    for flow in flows:
        try:
            compiled = backend.compiler.compile(flow, ports)
        except translate.UnboundPort:
            continue
        out[compiled.key] = (compiled.instructions, compiled.cookie)
    return out


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(step, min_size=1, max_size=6))
def test_after_random_deltas_memory_equals_a_fresh_dump_and_the_desired_set(switch: Switch, steps) -> None:
    backend = switch.backend
    ports = dict(PORTS)
    backend.sync([], ports)
    desired: dict[int, ir.Flow] = {}
    for changes, rebinding in steps:
        added, removed = [], []
        for slot, change in changes.items():
            if slot in desired:
                removed.append(desired.pop(slot))
            if change is not None:
                desired[slot] = variant(slot, *change)
                added.append(desired[slot])
        for port, ofport in rebinding.items():
            if ofport is None:
                ports.pop(port, None)
            else:
                ports[port] = ofport
        result = backend.apply(added, removed, ports)
        assert result.errors == ()
        dump = switch.dumped()
        assert backend.installed_flows() == dump
        assert dump == expected(backend, list(desired.values()), ports)
        assert set(backend.unbound_flows()) == {f for f in desired.values()
                                                if any(p not in ports for p in _named(f))}
    final = backend.sync(list(desired.values()), ports)
    assert (final.sent, final.repairs) == (0, 0)


def _named(flow: ir.Flow) -> list[int]:
    return [term.value for term in flow.match if term.field == "in_port"] + \
        [a.port for a in flow.actions if isinstance(a, ir.Output)]


def test_thousands_of_removals_go_out_in_parts_after_the_additions(switch: Switch) -> None:
    flows = base_flows(20000)
    switch.backend.sync(flows, PORTS)
    switch.wire.clear()
    result = switch.backend.apply([mac_flow(i, table=1) for i in range(9000)], flows[:10000], PORTS)
    assert (result.added, result.deleted, result.errors) == (9000, 10000, ())
    commands = [c for c, _, _ in switch.wire.flow_mods()]
    assert commands == [ADD] * 9000 + [DELETE] * 10000
    assert switch.of.flow_count(translate.COOKIE_MARK, translate.COOKIE_MARK_MASK) == 19000
    assert switch.backend.installed_flows() == switch.dumped()
    parts = switch.of.request(parser.OFPFlowStatsRequest(switch.of.datapath, 0, 1, ofp.OFPP_ANY, ofp.OFPG_ANY,
                                                         0, 0, parser.OFPMatch()))
    assert sum(len(part.body) for part in parts) == 9000
