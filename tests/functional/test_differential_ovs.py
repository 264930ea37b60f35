"""The reference interpreter agrees with real Open vSwitch on the compiled pipeline.

Random topologies are compiled with the shipped layout and apps, synced into
a real OVS (userspace datapath) by the OVS backend, and random packets are
traced both through the interpreter and through ``ofproto/trace``: the sets
of output ports must be equal, and a packet sent once leaves with the same
rewritten headers (``set(...)`` datapath actions: the ARP and IPv6 neighbor
discovery answers). Ports may hold an IPv6 address too, and packets include
neighbor solicitations (for a held address, an unknown one, from ``::``). Hand-built pipelines do the same for what the
apps do not emit yet: VLAN push/pop/rewrite (the VLAN each copy leaves with
must agree too) and a conntrack chain, traced with ``--ct-next`` set to the
state the interpreter's tracker gives. Routing is compared too: random subnets
joined by a router, packets with random protocols, L4 ports and TTLs (1
expires at the hop, 2 just survives), where they leave and with which MACs
and TTL. Security groups over a connection: a request, its reply and the
request again between ports in random groups of random rules, traced with
each recirculation's conntrack state as the interpreter's tracker found it
(``ofproto/trace`` does not track connections itself: the tracker's state
machine is the conntrack tests' business, what the flows make of each state
is compared here). This is what lets every other test use the interpreter as
its oracle.
"""

from __future__ import annotations

import ipaddress
import re
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.backends.ovs.backend import OvsBackend
from hwflow.backends.ovs.daemons import OvsDaemons
from hwflow.backends.ovs.openflow import OpenFlowConnection
from hwflow.backends.ovs.ovsdb import OvsdbClient
from hwflow.model.objects import (
    Network,
    Port,
    Router,
    RouterPort,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)
from hwflow.pipeline import interpreter, ir
from hwflow.pipeline.topology import Topology

pytestmark = pytest.mark.functional

BRIDGE = "br-int"
NPORTS = 5
MACS = [f"fa:16:3e:00:00:{i:02x}" for i in range(1, NPORTS + 1)]
IPS = [f"10.0.0.{i}" for i in range(1, NPORTS + 1)]
IPS6 = [f"fd00::{i}" for i in range(1, NPORTS + 1)]


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


class Ovs:
    """One OVS in its own namespace with NPORTS veth ports carrying iface-ids p0..pN."""

    def __init__(self) -> None:
        self.ns = f"hwt-dif-{secrets.token_hex(3)}"
        self.dir = Path(tempfile.mkdtemp(prefix="hwt-dif-"))
        sh("ip", "netns", "add", self.ns)
        self.daemons = OvsDaemons(self.dir, netns=self.ns).start()
        self.ovsdb = OvsdbClient(self.daemons.db_sock, BRIDGE)
        self.ovsdb.ensure_bridge()
        for i in range(NPORTS):
            sh("ip", "-n", self.ns, "link", "add", f"p{i}", "type", "veth", "peer", "name", f"q{i}")
            sh("ip", "-n", self.ns, "link", "set", f"p{i}", "up")
            self.ovsdb.add_port(f"p{i}", iface_id=f"p{i}")
        self.ofports = {f"p{i}": self.ovsdb.wait_for_ofport(f"p{i}", timeout=15) for i in range(NPORTS)}
        self.backend = OvsBackend(self.ovsdb, OpenFlowConnection(self.daemons.mgmt(BRIDGE)))
        self.odp_names = self._odp_names()

    def appctl(self, *args: str) -> str:
        return sh("ip", "netns", "exec", self.ns, "ovs-appctl", "-t", str(self.dir / "vswitchd.ctl"), *args)

    def _odp_names(self) -> dict[int, str]:
        """Datapath port number -> interface name, from `dpif/show` ("p0 1/3: (system)")."""
        names = {}
        for line in self.appctl("dpif/show").splitlines():
            m = re.match(r"\s+(\S+) \d+/(\d+):", line)
            if m:
                names[int(m.group(2))] = m.group(1)
        return names

    def trace(self, flow: str) -> set[str]:
        return {name for name, _ in self.trace_outputs(flow)}

    def datapath_actions(self, flow: str, ct_next: str | list[str] | None = None) -> list[str]:
        """The datapath actions of the trace, over every recirculation, in order; ``ct_next``: the conntrack state
        each recirculation finds, in turn."""
        states = [ct_next] if isinstance(ct_next, str) else ct_next or []
        out = self.appctl("ofproto/trace", BRIDGE, flow, *(arg for flags in states for arg in ("--ct-next", flags)))
        sections = [line.split(":", 1)[1] for line in out.splitlines() if line.startswith("Datapath actions:")]
        assert sections, out
        return [a for text in sections for a in _datapath_actions(text)]

    def trace_outputs(self, flow: str, ct_next: str | list[str] | None = None) -> list[tuple[str, int | None]]:
        """(interface, outer VLAN id or None) of each copy sent, over every recirculation of the trace."""
        vlans = [int(v) for v in re.findall(r"dl_vlan=(\d+)", flow)]
        sent = []
        for action in self.datapath_actions(flow, ct_next):
            if action.isdigit():
                sent.append((self.odp_names[int(action)], vlans[-1] if vlans else None))
            elif action.startswith("push_vlan("):
                vlans.append(int(re.search(r"vid=(\d+)", action).group(1)))
            elif action == "pop_vlan":
                vlans.pop()
        return sent

    def close(self) -> None:
        self.backend.of.close()
        self.ovsdb.close()
        self.daemons.stop()
        subprocess.run(["ip", "netns", "delete", self.ns], check=False)


@pytest.fixture(scope="module")
def ovs() -> Iterator[Ovs]:
    host = Ovs()
    try:
        yield host
    finally:
        host.close()


@st.composite
def topologies(draw) -> Topology:
    nets = [Network(id=f"n{i}", name=f"n{i}", vni=100 + i, unique_key=i + 1) for i in range(3)]
    ports = {}
    for i in range(NPORTS):
        net = draw(st.sampled_from(nets))
        ips = [IPS[i], IPS6[i]] if draw(st.booleans()) else [IPS[i]]
        ports[f"p{i}"] = Port(id=f"p{i}", name=f"p{i}", network_id=net.id, mac=MACS[i], ips=ips, unique_key=10 + i)
    local = frozenset(draw(st.sets(st.sampled_from(sorted(ports)), min_size=1)))
    return Topology("h", {n.id: n for n in nets}, ports, local)


@st.composite
def packets(draw, topo: Topology) -> dict[str, int]:
    src = draw(st.sampled_from(sorted(topo.local_port_ids)))
    dst_mac = draw(st.sampled_from(MACS + ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "fa:16:3e:99:99:99"]))
    kind = draw(st.sampled_from(("icmp", "arp", "nd", "other")))
    pkt = {"in_port": topo.ports[src].unique_key, "eth_src": _mac(MACS[int(src[1:])]), "eth_dst": _mac(dst_mac)}
    if kind == "nd":
        pkt.update(draw(solicitations(topo, topo.ports[src])))
    elif kind == "icmp":
        pkt.update(eth_type=ir.ETH_TYPE_IPV4, ipv4_src=0x0A000001, ipv4_dst=0x0A000002, ip_proto=1, ip_ttl=64,
                   icmp_type=8, icmp_code=0)
    elif kind == "arp":
        pkt.update(eth_type=ir.ETH_TYPE_ARP, arp_op=1, arp_spa=0x0A000001, arp_tpa=0x0A000002, arp_sha=pkt["eth_src"],
                   arp_tha=0)
    else:
        pkt.update(eth_type=0x88B5)
    return pkt


@st.composite
def solicitations(draw, topo: Topology, port: Port) -> dict[str, int]:
    """An NS from ``port`` as its port security lets it out (from its link-local or IPv6 address, or :: for
    DAD, which carries no link-layer option), for an address of its network (half the time, when there is
    one), of another, or nobody's."""
    mac = _mac(port.mac)
    link_local = 0xFE80 << 112 | ((mac >> 24) ^ 0x020000) << 40 | 0xFFFE << 24 | mac & 0xFFFFFF
    src = draw(st.sampled_from([link_local, 0, *(_ip6(a) for a in port.ips if ":" in a)]))
    neighbours = [a for p in topo.ports_of(port.network_id) for a in p.ips if ":" in a]
    target = _ip6(draw(st.sampled_from(neighbours) if neighbours and draw(st.booleans())
                       else st.sampled_from([*IPS6, "fd00::99"])))
    group = _ip6("ff02::1:ff00:0") | target & 0xFFFFFF
    ns = {"eth_dst": 0x3333_0000_0000 | group & 0xFFFF_FFFF, "eth_type": ir.ETH_TYPE_IPV6, "ipv6_src": src,
          "ipv6_dst": group, "ip_proto": 58, "ip_ttl": 255, "icmp_type": 135, "icmp_code": 0, "nd_reserved": 0,
          "nd_target": target}
    return ns if src == 0 else {**ns, "nd_options_type": 1, "nd_sll": mac}


def _ip6(text: str) -> int:
    return int(ipaddress.IPv6Address(text))


# What the trace's set(...) datapath actions name, as IR fields, e.g. set(nd_ext(nd_reserved=0x60000000,...)).
REWRITES = {"eth": {"src": "eth_src", "dst": "eth_dst"}, "ipv6": {"src": "ipv6_src", "dst": "ipv6_dst"},
            "ipv4": {"src": "ipv4_src", "dst": "ipv4_dst", "ttl": "ip_ttl"},
            "icmpv6": {"type": "icmp_type", "code": "icmp_code"}, "nd": {"sll": "nd_sll", "tll": "nd_tll"},
            "nd_ext": {"nd_reserved": "nd_reserved", "nd_options_type": "nd_options_type"},
            "arp": {"sip": "arp_spa", "tip": "arp_tpa", "op": "arp_op", "sha": "arp_sha", "tha": "arp_tha"}}
COMPARED = ("eth_src", "eth_dst", "ipv6_src", "ipv6_dst", "icmp_type", "nd_reserved", "nd_options_type", "arp_op",
            "arp_spa", "arp_tpa", "arp_sha", "arp_tha")


def _rewrites(actions: list[str]) -> dict[str, int]:
    """IR field -> the value the trace's set(...) actions write."""
    fields = {}
    for action in actions:
        m = re.fullmatch(r"set\((\w+)\((.*)\)\)", action)
        for item in m.group(2).split(",") if m and m.group(1) in REWRITES else ():
            key, _, value = item.partition("=")
            if key in REWRITES[m.group(1)]:
                fields[REWRITES[m.group(1)][key]] = _value(value)
    return fields


def _value(text: str) -> int:
    if re.fullmatch(r"([0-9a-f]{2}:){5}[0-9a-f]{2}", text):
        return _mac(text)
    return int(ipaddress.ip_address(text)) if ":" in text or text.count(".") == 3 else int(text, 0)


def assert_same_headers(pkt: dict[str, int], verdict: interpreter.Verdict, actions: list[str]) -> None:
    """A single copy leaves OVS rewritten as the interpreter says (the link-layer option: the answer's nd_tll)."""
    ((_, expected),) = verdict.outputs
    rewrites = _rewrites(actions)
    sent = {**pkt, **rewrites}
    assert {f: sent.get(f) for f in COMPARED} == {f: expected.get(f) for f in COMPARED}, actions
    if "nd_tll" in rewrites or "nd_tll" in expected:
        assert rewrites.get("nd_tll") == expected.get("nd_tll"), actions


def _datapath_actions(text: str) -> list[str]:
    """"ct(commit,zone=5),push_vlan(vid=7,pcp=0),3" -> its top-level actions."""
    actions, depth, current = [], 0, ""
    for char in text.strip():
        depth += (char == "(") - (char == ")")
        if char == "," and depth == 0:
            actions.append(current)
            current = ""
        else:
            current += char
    return [*actions, current]


def _mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def _fmt_mac(value: int) -> str:
    return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))


def ovs_flow(pkt: dict[str, int], ofport_of: dict[int, int]) -> str:
    """The packet in ovs-ofctl flow syntax, as ofproto/trace takes it."""
    parts = [f"in_port={ofport_of[pkt['in_port']]}", f"dl_src={_fmt_mac(pkt['eth_src'])}",
             f"dl_dst={_fmt_mac(pkt['eth_dst'])}", f"dl_type={pkt['eth_type']:#06x}"]
    if pkt["eth_type"] == ir.ETH_TYPE_IPV4:
        parts += [f"nw_src={ipaddress.IPv4Address(pkt['ipv4_src'])}",
                  f"nw_dst={ipaddress.IPv4Address(pkt['ipv4_dst'])}", f"nw_proto={pkt['ip_proto']}",
                  f"nw_ttl={pkt['ip_ttl']}"]
        if pkt["ip_proto"] == 1:
            parts += [f"icmp_type={pkt['icmp_type']}", f"icmp_code={pkt['icmp_code']}"]
        else:
            name = "tcp" if pkt["ip_proto"] == 6 else "udp"
            parts += [f"{name}_src={pkt[name + '_src']}", f"{name}_dst={pkt[name + '_dst']}"]
    elif pkt["eth_type"] == ir.ETH_TYPE_ARP:
        parts += ["arp_op=1", "arp_spa=10.0.0.1", "arp_tpa=10.0.0.2", f"arp_sha={_fmt_mac(pkt['arp_sha'])}",
                  "arp_tha=00:00:00:00:00:00"]
    elif pkt["eth_type"] == ir.ETH_TYPE_IPV6:
        parts += [f"ipv6_src={ipaddress.IPv6Address(pkt['ipv6_src'])}",
                  f"ipv6_dst={ipaddress.IPv6Address(pkt['ipv6_dst'])}", "nw_proto=58", "nw_ttl=255",
                  "icmpv6_type=135", "icmpv6_code=0", f"nd_target={ipaddress.IPv6Address(pkt['nd_target'])}"]
        if "nd_sll" in pkt:
            parts += [f"nd_sll={_fmt_mac(pkt['nd_sll'])}", "nd_options_type=1"]
    return ",".join(parts)


COMPILER = Compiler.from_file(layout_path(""))


def _synced(ovs: Ovs, topo: Topology) -> tuple[ir.Pipeline, dict[int, int], dict[int, str]]:
    """``topo`` compiled and synced into the OVS: the pipeline, port key -> ofport, port key -> interface."""
    pipeline = COMPILER.compile(topo)
    ports = {topo.ports[pid].unique_key: ovs.ofports[pid] for pid in topo.local_port_ids}
    result = ovs.backend.sync(pipeline.flows, ports)
    assert not result.errors, result.errors
    return pipeline, ports, {key: f"p{key - 10}" for key in ports}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_interpreter_and_ovs_agree(ovs: Ovs, data: st.DataObject) -> None:
    topo = data.draw(topologies())
    pipeline, ports, names = _synced(ovs, topo)
    for _ in range(4):
        pkt = data.draw(packets(topo))
        verdict = interpreter.run(pipeline, pkt)
        flow = ovs_flow(pkt, ports)
        assert ovs.trace(flow) == {names[p] for p in verdict.ports}, (pkt, pipeline.flows)
        if len(verdict.outputs) == 1:
            assert_same_headers(pkt, verdict, ovs.datapath_actions(flow))


def nd_topology() -> Topology:
    """Every port local: p0-p2 on n0 with IPv6, p3 (IPv6) and p4 (IPv4 only) on n1."""
    nets = {f"n{i}": Network(id=f"n{i}", name=f"n{i}", vni=100 + i, unique_key=i + 1) for i in range(2)}
    ports = {f"p{i}": Port(id=f"p{i}", name=f"p{i}", network_id="n0" if i < 3 else "n1", mac=MACS[i],
                           ips=[IPS[i], IPS6[i]] if i < 4 else [IPS[i]], unique_key=10 + i) for i in range(NPORTS)}
    return Topology("h", nets, ports, frozenset(ports))


@pytest.mark.parametrize("source", ["link-local", "own", "dad"])
@pytest.mark.parametrize("target", ["fd00::2", "fd00::1", "fd00::4", "fd00::99"])
def test_neighbor_solicitations_agree_with_ovs(ovs: Ovs, source: str, target: str) -> None:
    """From p0: answered for a neighbour's address (p1's), passed on for its own, another network's, nobody's,
    and for DAD from :: (then without a link-layer option)."""
    topo = nd_topology()
    pipeline = COMPILER.compile(topo)
    ports = {topo.ports[pid].unique_key: ovs.ofports[pid] for pid in topo.ports}
    assert not ovs.backend.sync(pipeline.flows, ports).errors
    mac = _mac(MACS[0])
    src = {"own": _ip6(IPS6[0]), "dad": 0, "link-local": 0xFE80 << 112 | 0xF816_3EFF_FE00_0001}[source]
    group = _ip6("ff02::1:ff00:0") | _ip6(target) & 0xFFFFFF
    pkt = {"in_port": 10, "eth_src": mac, "eth_dst": 0x3333_0000_0000 | group & 0xFFFF_FFFF,
           "eth_type": ir.ETH_TYPE_IPV6, "ipv6_src": src, "ipv6_dst": group, "ip_proto": 58, "ip_ttl": 255,
           "icmp_type": 135, "icmp_code": 0, "nd_reserved": 0, "nd_target": _ip6(target),
           **({} if source == "dad" else {"nd_options_type": 1, "nd_sll": mac})}
    verdict = interpreter.run(pipeline, pkt)
    answered = source != "dad" and target == "fd00::2"
    assert [p for p, out in verdict.outputs if out["icmp_type"] == 136] == ([10] if answered else [])
    flow = ovs_flow(pkt, ports)
    assert ovs.trace(flow) == {f"p{port - 10}" for port in verdict.ports}
    if len(verdict.outputs) == 1:
        assert_same_headers(pkt, verdict, ovs.datapath_actions(flow))


def _key(i: int) -> int:
    """The logical key of port p<i> (as the topologies above number them)."""
    return 10 + i


def _bind(ovs: Ovs, flows: list[ir.Flow]) -> tuple[ir.Pipeline, dict[int, int]]:
    pipeline = ir.Pipeline.build(flows, {})
    ports = {_key(i): ovs.ofports[f"p{i}"] for i in range(NPORTS)}
    result = ovs.backend.sync(pipeline.flows, ports)
    assert not result.errors, result.errors
    return pipeline, ports


def _sent(verdict: interpreter.Verdict) -> list[tuple[str, int | None]]:
    return sorted((f"p{port - 10}", pkt.get("vlan_vid")) for port, pkt in verdict.outputs)


# Tagged packets (vid 200, 300) are taken by their own flows first, so a push only ever meets an untagged
# packet: the IR models one tag, OVS a stack of them.
VLAN_FLOWS = [
    ir.Flow(0, 20, ir.Match.of(vlan_vid=200), (ir.PopVlan(), ir.Output(_key(1)), ir.PushVlan(11), ir.Output(_key(2))),
            "t"),
    ir.Flow(0, 20, ir.Match.of(vlan_vid=300), (ir.SetField("vlan_vid", 301), ir.Output(_key(3)), ir.GotoTable(1)),
            "t"),
    ir.Flow(0, 10, ir.Match.of(in_port=_key(0)), (ir.PushVlan(100), ir.Output(_key(3)), ir.PopVlan(),
                                                  ir.Output(_key(4))), "t"),
    ir.Flow(0, 10, ir.Match.of(in_port=_key(1)), (ir.PushVlan(7), ir.GotoTable(1)), "t"),
    ir.Flow(0, 5, ir.Match(), (ir.Output(_key(2)),), "t"),
    ir.Flow(1, 10, ir.Match.of(vlan_vid=7), (ir.PopVlan(), ir.Output(_key(4))), "t"),
    ir.Flow(1, 5, ir.Match(), (ir.Output(_key(0)),), "t"),
]


@pytest.mark.parametrize("vlan", [None, 200, 300])
@pytest.mark.parametrize("port", range(NPORTS))
def test_vlan_push_pop_and_rewrite_agree_with_ovs(ovs: Ovs, port: int, vlan: int | None) -> None:
    pipeline, ports = _bind(ovs, VLAN_FLOWS)
    pkt, flow = _frame(port, vlan, ports)
    assert sorted(ovs.trace_outputs(flow)) == _sent(interpreter.run(pipeline, pkt)), pkt


def _frame(port: int, vlan: int | None, ports: dict[int, int]) -> tuple[dict[str, int], str]:
    """A non-IP frame from p<port>, tagged ``vlan`` if given: as the interpreter's packet and as ofproto/trace's."""
    pkt = {"in_port": _key(port), "eth_src": 1, "eth_dst": 2, "eth_type": 0x88B5}
    flow = f"in_port={ports[_key(port)]},dl_src=00:00:00:00:00:01,dl_dst=00:00:00:00:00:02,dl_type=0x88b5"
    if vlan is not None:
        pkt["vlan_vid"] = vlan
        flow += f",dl_vlan={vlan}"
    return pkt, flow


# vlan_tagged: untagged only (OVS's vlan_vid=0x0000), any tag (0x1000/0x1000), beside a vlan_vid.
TAGGED_FLOWS = [
    ir.Flow(0, 10, ir.Match.of(in_port=_key(0), vlan_tagged=1), (ir.PopVlan(), ir.Output(_key(1))), "t"),
    ir.Flow(0, 10, ir.Match.of(in_port=_key(0), vlan_tagged=0), (ir.Output(_key(2)),), "t"),
    ir.Flow(0, 10, ir.Match.of(in_port=_key(1), vlan_tagged=1, vlan_vid=5), (ir.Output(_key(3)),), "t"),
    ir.Flow(0, 5, ir.Match(), (ir.Output(_key(4)),), "t"),
]


@pytest.mark.parametrize("vlan", [None, 5, 400])
@pytest.mark.parametrize("port", [0, 1])
def test_tagged_and_untagged_matches_agree_with_ovs(ovs: Ovs, port: int, vlan: int | None) -> None:
    pipeline, ports = _bind(ovs, TAGGED_FLOWS)
    pkt, flow = _frame(port, vlan, ports)
    sent = _sent(interpreter.run(pipeline, pkt))
    assert sorted(ovs.trace_outputs(flow)) == sent, pkt
    assert len(sent) == 1
    assert ovs.backend.sync(pipeline.flows, ports).sent == 0  # what OVS dumps keys as what was sent


TRK, NEW, EST, RPL = ir.CT_TRK, ir.CT_NEW, ir.CT_EST, ir.CT_RPL
CT_FLOWS = [
    # What is sent before the conntrack stands; the walk goes on in table 1 with ct_state and ct_zone set.
    ir.Flow(0, 10, ir.Match.of(eth_type=ir.ETH_TYPE_IPV4), (ir.Output(_key(4)), ir.Conntrack(5, table=1)), "t"),
    ir.Flow(1, 30, ir.Match.of(eth_type=ir.ETH_TYPE_IPV4, ct_state=(TRK | EST | RPL, TRK | EST | RPL), ct_zone=5),
            (ir.Output(_key(3)),), "t"),
    ir.Flow(1, 20, ir.Match.of(eth_type=ir.ETH_TYPE_IPV4, ct_state=(TRK | EST, TRK | EST), ct_zone=5),
            (ir.Output(_key(2)),), "t"),
    ir.Flow(1, 10, ir.Match.of(eth_type=ir.ETH_TYPE_IPV4, ct_state=(TRK | NEW, TRK | NEW), ct_zone=5),
            (ir.Conntrack(5, commit=True), ir.Output(_key(1))), "t"),
    ir.Flow(1, 1, ir.Match(), (ir.Drop(),), "t"),
]
CT_NEXT = {"new": "trk,new", "est": "trk,est", "rpl": "trk,est,rpl"}


@pytest.mark.parametrize("state", sorted(CT_NEXT))
@pytest.mark.parametrize("port", range(NPORTS))
def test_conntrack_recirculation_agrees_with_ovs(ovs: Ovs, port: int, state: str) -> None:
    """The interpreter's tracker is primed so its state is the one ``--ct-next`` hands OVS."""
    pipeline, ports = _bind(ovs, CT_FLOWS)
    pkt = {"in_port": _key(port), "eth_type": ir.ETH_TYPE_IPV4, "ipv4_src": 0x0A000001, "ipv4_dst": 0x0A000002,
           "ip_proto": 6, "ip_ttl": 64, "tcp_src": 1000, "tcp_dst": 80}
    tracker = interpreter.ConnTracker()
    if state == "est":
        tracker.commit(5, pkt)
    elif state == "rpl":
        tracker.commit(5, {**pkt, "ipv4_src": pkt["ipv4_dst"], "ipv4_dst": pkt["ipv4_src"], "tcp_src": 80,
                           "tcp_dst": 1000})
    flow = f"in_port={ports[_key(port)]},tcp,nw_src=10.0.0.1,nw_dst=10.0.0.2,nw_ttl=64,tp_src=1000,tp_dst=80"
    assert sorted(ovs.trace_outputs(flow, CT_NEXT[state])) == _sent(interpreter.run(pipeline, pkt, tracker)), state


# --- routing: a router between subnets, TTLs that expire and that do not -------------------------------------

ROUTED_REWRITES = ("eth_src", "eth_dst", "ipv4_src", "ipv4_dst", "ip_ttl")


@st.composite
def routed_topologies(draw) -> Topology:
    """Two or three networks with a /24 each, a router on two or more of them, the five ports spread over
    them (no security group: the router is what is compared; conntrack is the other tests' business)."""
    n = draw(st.integers(2, 3))
    nets = {f"n{i}": Network(id=f"n{i}", name=f"n{i}", vni=100 + i, unique_key=i + 1) for i in range(n)}
    subnets = {f"s{i}": Subnet(id=f"s{i}", name=f"s{i}", network_id=f"n{i}", cidr=f"10.{i}.0.0/24",
                               gateway_ip=f"10.{i}.0.1") for i in range(n)}
    joined = draw(st.sets(st.sampled_from(sorted(nets)), min_size=2))
    rps = {f"rp{net[1:]}": RouterPort(id=f"rp{net[1:]}", name=f"rp{net[1:]}", router_id="r0", network_id=net,
                                      subnet_id=f"s{net[1:]}", mac=f"fa:16:3e:00:01:{int(net[1:]):02x}",
                                      ip=f"10.{net[1:]}.0.1") for net in sorted(joined)}
    ports = {}
    for i in range(NPORTS):
        net = draw(st.integers(0, n - 1))
        ports[f"p{i}"] = Port(id=f"p{i}", name=f"p{i}", network_id=f"n{net}", mac=MACS[i],
                              ips=[f"10.{net}.0.{i + 10}"], unique_key=10 + i)
    others = {"subnet": subnets, "router_port": rps, "router": {"r0": Router(id="r0", name="r0")}}
    return Topology("h", nets, ports, set(ports), others=others)


@st.composite
def routed_packets(draw, topo: Topology) -> dict[str, int]:
    """From a port to another's address, through its network's router port (routed) or straight to the
    other's MAC, with a random protocol, L4 ports and a TTL that the hop expires (1), just survives (2) or not."""
    src = topo.ports[draw(st.sampled_from(sorted(topo.ports)))]
    dst = topo.ports[draw(st.sampled_from(sorted(topo.ports)))]
    gateway = [rp for rp in topo.of("router_port").values() if rp.network_id == src.network_id]
    dst_mac = _mac(gateway[0].mac) if gateway and draw(st.integers(0, 3)) else _mac(dst.mac)
    dst_ip = int(ipaddress.IPv4Address(dst.ips[0])) if draw(st.integers(0, 5)) else 0x0A090009  # or nobody's
    proto = draw(st.sampled_from((1, 6, 17)))
    pkt = {"in_port": src.unique_key, "eth_src": _mac(src.mac), "eth_dst": dst_mac, "eth_type": ir.ETH_TYPE_IPV4,
           "ipv4_src": int(ipaddress.IPv4Address(src.ips[0])), "ipv4_dst": dst_ip, "ip_proto": proto,
           "ip_ttl": draw(st.sampled_from((1, 2, 64)))}
    if proto == 1:
        pkt.update(icmp_type=8, icmp_code=0)
    else:
        name = "tcp" if proto == 6 else "udp"
        pkt.update({f"{name}_src": draw(st.integers(1024, 65535)), f"{name}_dst": draw(st.sampled_from((22, 53, 80)))})
    return pkt


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_routing_agrees_with_ovs(ovs: Ovs, data: st.DataObject) -> None:
    """Where a routed packet leaves, and with which MACs and TTL: the interpreter as OVS."""
    topo = data.draw(routed_topologies())
    pipeline, ports, names = _synced(ovs, topo)
    for _ in range(6):
        pkt = data.draw(routed_packets(topo))
        verdict = interpreter.run(pipeline, pkt)
        flow = ovs_flow(pkt, ports)
        actions = ovs.datapath_actions(flow)
        sent = {ovs.odp_names[int(a)] for a in actions if a.isdigit()}
        assert sent == {names[p] for p in verdict.ports}, (pkt, actions)
        event("routed (MACs and TTL rewritten)" if verdict.outputs and verdict.outputs[0][1]["ip_ttl"] != pkt["ip_ttl"]
              else "delivered unrouted" if verdict.outputs else "not delivered (dropped or to the agent)")
        if len(verdict.outputs) == 1:
            ((_, expected),) = verdict.outputs
            rewritten = {**pkt, **_rewrites(actions)}
            assert {f: rewritten.get(f) for f in ROUTED_REWRITES} == {f: expected.get(f) for f in ROUTED_REWRITES}, (
                pkt, actions)


# --- security groups: connection state over a request and its reply -----------------------------------------

SG_RULES = (
    ("ingress", {"protocol": "tcp", "port_min": 22, "port_max": 22}),
    ("ingress", {"protocol": "tcp", "port_min": 80, "port_max": 81, "remote_ip_prefix": "10.0.0.0/25"}),
    ("ingress", {"protocol": "udp", "port_min": 53, "port_max": 53}),
    ("ingress", {"protocol": "icmp", "icmp_type": 8}),
    ("ingress", {"protocol": "tcp", "remote_group_id": "g1"}),
    ("egress", {}),
    ("egress", {"protocol": "tcp"}),
)
CT_FLAGS = ((ir.CT_TRK, "trk"), (ir.CT_NEW, "new"), (ir.CT_EST, "est"), (ir.CT_REL, "rel"), (ir.CT_RPL, "rpl"),
            (ir.CT_INV, "inv"))


@st.composite
def guarded_topologies(draw) -> Topology:
    """One network, the five ports in random security groups of random rules (a remote group among them)."""
    net = Network(id="n0", name="n0", vni=100, unique_key=1)
    groups = {g: SecurityGroup(id=g, name=g, unique_key=k + 1) for k, g in enumerate(("g0", "g1"))}
    rules = {}
    for g in groups:
        for j in draw(st.sets(st.integers(0, len(SG_RULES) - 1), min_size=1)):
            direction, fields = SG_RULES[j]
            rules[f"{g}-{j}"] = SecurityGroupRule(id=f"{g}-{j}", name=f"{g}-{j}", security_group_id=g,
                                                  direction=direction, **fields)
    ports = {f"p{i}": Port(id=f"p{i}", name=f"p{i}", network_id="n0", mac=MACS[i], ips=[IPS[i]], unique_key=10 + i,
                           security_groups=draw(st.lists(st.sampled_from(sorted(groups)), max_size=2, unique=True)))
             for i in range(NPORTS)}
    others = {"security_group": groups, "security_group_rule": rules}
    return Topology("h", {"n0": net}, ports, set(ports), others=others)


class RecordingTracker(interpreter.ConnTracker):
    """The interpreter's tracker, remembering the state each ct action found, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def state(self, zone: int, packet) -> int:
        found = super().state(zone, packet)
        self.seen.append(found)
        return found


def _ct_next(verdict: interpreter.Verdict, seen: list[int]) -> list[str]:
    """The ``--ct-next`` flags of each recirculation the packet took, from the states the tracker found."""
    cts = [a for step in verdict.steps if step.flow is not None for a in step.flow.actions
           if isinstance(a, ir.Conntrack)]
    assert len(cts) == len(seen), (cts, seen)
    return [",".join(name for bit, name in CT_FLAGS if state & bit) for ct, state in zip(cts, seen)
            if ct.table is not None]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_security_groups_agree_with_ovs_over_a_connection(ovs: Ovs, data: st.DataObject) -> None:
    """A request between two ports and its reply: each passes or not, by the groups' rules and the connection's
    state, as in OVS traced with the conntrack states the interpreter's tracker found."""
    topo = data.draw(guarded_topologies())
    pipeline, ports, names = _synced(ovs, topo)
    a, b = data.draw(st.lists(st.integers(0, NPORTS - 1), min_size=2, max_size=2, unique=True))
    proto = data.draw(st.sampled_from((1, 6, 17)))
    request = {"in_port": 10 + a, "eth_src": _mac(MACS[a]), "eth_dst": _mac(MACS[b]), "eth_type": ir.ETH_TYPE_IPV4,
               "ipv4_src": int(ipaddress.IPv4Address(IPS[a])), "ipv4_dst": int(ipaddress.IPv4Address(IPS[b])),
               "ip_proto": proto, "ip_ttl": 64}
    if proto == 1:
        request.update(icmp_type=8, icmp_code=0)
        reply = {**request, "icmp_type": 0}
    else:
        name = "tcp" if proto == 6 else "udp"
        request.update({f"{name}_src": 40000, f"{name}_dst": data.draw(st.sampled_from((22, 53, 80, 443)))})
        reply = {**request, f"{name}_src": request[f"{name}_dst"], f"{name}_dst": 40000}
    reply.update(in_port=10 + b, eth_src=request["eth_dst"], eth_dst=request["eth_src"],
                 ipv4_src=request["ipv4_dst"], ipv4_dst=request["ipv4_src"])
    tracker = RecordingTracker()
    for pkt in (request, reply, request):
        tracker.seen.clear()
        verdict = interpreter.run(pipeline, pkt, tracker)
        flow = ovs_flow(pkt, ports)
        ct_next = _ct_next(verdict, tracker.seen)
        sent = {name for name, _ in ovs.trace_outputs(flow, ct_next)}
        assert sent == {names[p] for p in verdict.ports}, (pkt, ct_next, ovs.datapath_actions(flow, ct_next))
        event("passed" if verdict.outputs else "dropped")
