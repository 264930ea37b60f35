"""The reference interpreter agrees with real Open vSwitch on the compiled pipeline.

Random topologies are compiled with the shipped layout and apps, synced into
a real OVS (userspace datapath) by the OVS backend, and random packets are
traced both through the interpreter and through ``ofproto/trace``: the sets
of output ports must be equal. This is what lets every other test use the
interpreter as its oracle.
"""

from __future__ import annotations

import re
import secrets
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.backends.ovs.backend import OvsBackend
from hwflow.backends.ovs.daemons import OvsDaemons
from hwflow.backends.ovs.openflow import OpenFlowConnection
from hwflow.backends.ovs.ovsdb import OvsdbClient
from hwflow.model.objects import Network, Port
from hwflow.pipeline import interpreter, ir
from hwflow.pipeline.topology import Topology

pytestmark = pytest.mark.functional

BRIDGE = "br-int"
NPORTS = 5
MACS = [f"fa:16:3e:00:00:{i:02x}" for i in range(1, NPORTS + 1)]
IPS = [f"10.0.0.{i}" for i in range(1, NPORTS + 1)]


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
        out = self.appctl("ofproto/trace", BRIDGE, flow)
        actions = out.strip().splitlines()[-1]
        assert actions.startswith("Datapath actions:"), out
        text = actions.split(":", 1)[1].strip()
        if text == "drop":
            return set()
        return {self.odp_names[int(a)] for a in text.split(",") if a.strip().isdigit()}

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
        ports[f"p{i}"] = Port(id=f"p{i}", name=f"p{i}", network_id=net.id, mac=MACS[i], ips=[IPS[i]],
                              unique_key=10 + i)
    local = frozenset(draw(st.sets(st.sampled_from(sorted(ports)), min_size=1)))
    return Topology("h", {n.id: n for n in nets}, ports, local)


@st.composite
def packets(draw, topo: Topology) -> dict[str, int]:
    src = draw(st.sampled_from(sorted(topo.local_port_ids)))
    dst_mac = draw(st.sampled_from(MACS + ["ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "fa:16:3e:99:99:99"]))
    kind = draw(st.sampled_from(("icmp", "arp", "other")))
    pkt = {"in_port": topo.ports[src].unique_key, "eth_src": _mac(MACS[int(src[1:])]), "eth_dst": _mac(dst_mac)}
    if kind == "icmp":
        pkt.update(eth_type=ir.ETH_TYPE_IPV4, ipv4_src=0x0A000001, ipv4_dst=0x0A000002, ip_proto=1, ip_ttl=64,
                   icmp_type=8, icmp_code=0)
    elif kind == "arp":
        pkt.update(eth_type=ir.ETH_TYPE_ARP, arp_op=1, arp_spa=0x0A000001, arp_tpa=0x0A000002)
    else:
        pkt.update(eth_type=0x88B5)
    return pkt


def _mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def _fmt_mac(value: int) -> str:
    return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))


def ovs_flow(pkt: dict[str, int], ofport_of: dict[int, int]) -> str:
    """The packet in ovs-ofctl flow syntax, as ofproto/trace takes it."""
    parts = [f"in_port={ofport_of[pkt['in_port']]}", f"dl_src={_fmt_mac(pkt['eth_src'])}",
             f"dl_dst={_fmt_mac(pkt['eth_dst'])}", f"dl_type={pkt['eth_type']:#06x}"]
    if pkt["eth_type"] == ir.ETH_TYPE_IPV4:
        parts += ["nw_src=10.0.0.1", "nw_dst=10.0.0.2", "nw_proto=1", "nw_ttl=64", "icmp_type=8", "icmp_code=0"]
    elif pkt["eth_type"] == ir.ETH_TYPE_ARP:
        parts += ["arp_op=1", "arp_spa=10.0.0.1", "arp_tpa=10.0.0.2"]
    return ",".join(parts)


COMPILER = Compiler.from_file(layout_path(""))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_interpreter_and_ovs_agree(ovs: Ovs, data: st.DataObject) -> None:
    topo = data.draw(topologies())
    pipeline = COMPILER.compile(topo)
    ports = {topo.ports[pid].unique_key: ovs.ofports[pid] for pid in topo.local_port_ids}
    result = ovs.backend.sync(pipeline.flows, ports)
    assert not result.errors, result.errors
    names = {key: f"p{key - 10}" for key in ports}
    for _ in range(4):
        pkt = data.draw(packets(topo))
        expected = {names[p] for p in interpreter.run(pipeline, pkt).ports}
        assert ovs.trace(ovs_flow(pkt, ports)) == expected, (pkt, pipeline.flows)
