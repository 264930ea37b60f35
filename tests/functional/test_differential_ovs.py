"""The reference interpreter agrees with real Open vSwitch on the compiled pipeline.

Random topologies are compiled with the shipped layout and apps, synced into
a real OVS (userspace datapath) by the OVS backend, and random packets are
traced both through the interpreter and through ``ofproto/trace``: the
copies sent must be the same (port, VLAN tag, tunnel key and destination),
and a packet sent once leaves with the same rewritten headers (``set(...)``
datapath actions). Every app of the shipped layout is on some path:

* L2, ARP and IPv6 neighbor discovery answers (solicitations for a held
  address, an unknown one, from ``::``), on hand-built pipelines too: VLAN
  push/pop/rewrite and a conntrack chain.
* Routing: random subnets joined by a router, random protocols, L4 ports and
  TTLs (1 expires at the hop, 2 just survives): where packets leave, with
  which MACs and TTL. DHCP discovers, requests and renewals among them: a
  served port's go to the agent (the interpreter's Punt, OVS's
  ``controller`` action) and nowhere else, a port of a subnet without DHCP
  has them forwarded.
* Security groups, IPv4 and IPv6, over a connection: a request, its reply
  and the request again between ports of random addresses in groups of
  random rules (port ranges, prefixes, a remote group), random L4 ports.
* NAT: a router with a gateway on a flat external network behind the
  uplink, FIPs for some ports, SNAT to the chassis's address for the others,
  some ports in security groups (their zone after the NAT's); connections
  from a VM to the outside and from the outside to a FIP, the SNAT address or
  nobody, with their answers; ARP from the outside.
* Ports elsewhere: VXLAN networks (random VNIs) with ports on other chassis
  (random tunnel addresses; some terminate no VXLAN, one is unknown) and
  provider VLAN and flat networks behind the uplink: out through the tunnel
  (tun_id and tun_dst compared) or tagged through the uplink, and in from
  either; IPv4 and IPv6 TCP, UDP and ICMP.

Conntrack: ``ofproto/trace`` does not track connections. Each recirculation
is traced with ``--ct-next`` set to the state the interpreter's tracker found
(the tracker's state machine is the conntrack tests' business; what the
flows make of each state is compared here), so the tracker's known gaps
(an ICMP error is never ``+rel``, a first TCP packet that is no SYN is
``+new``) cannot show here. The trace simulates a ct's ``nat(src=...)`` or
``nat(dst=...)`` and prints the addresses it gives ("Modified flow"): those
are compared with the interpreter's. It cannot undo a connection's
translation on a reply through a bare ``nat`` (the SNAT address's replies):
that recirculation is traced again from its table (``trace-packet-out`` of a
``resubmit``) with the addresses the interpreter's tracker restored, so the
un-SNAT itself is the interpreter's word; where the reply goes from there is
compared (``trace-packet-out`` cannot thaw a recirculation of its own, a
"Recirculation conflict": each later one is resumed the same way).

Tunnels: ``ofproto/trace`` encapsulates as the userspace datapath does
(``tnl_push``), which needs a route to the remote chassis: the tunnel
address sits on a second bridge with one port, the underlay, that carries
each encapsulated copy out.

This is what lets every other test use the interpreter as its oracle.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import secrets
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.apps.l3 import CHASSIS_SNAT_ZONE, nat_mac
from hwflow.backends.ovs.backend import TUNNEL_PORT_NAMES, OvsBackend, fixed_ports
from hwflow.backends.ovs.daemons import OvsDaemons
from hwflow.backends.ovs.openflow import OpenFlowConnection
from hwflow.backends.ovs.ovsdb import OvsdbClient
from hwflow.model.objects import (
    MAX_VLAN,
    MAX_VNI,
    Chassis,
    FloatingIP,
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
BROADCAST = (1 << 48) - 1
PHYSNET, UPLINK = "physnet1", "u0"
TUNNEL_IP = "192.0.2.1"  # this chassis's, on the underlay bridge
UNDERLAY, UNDERLAY_PORT = "br-ul", "t0"
# The agent's fixed ports on the bridge: logical port key -> interface.
FIXED = {ir.TUNNEL_PORTS["vxlan"]: TUNNEL_PORT_NAMES["vxlan"], ir.physnet_port(PHYSNET): UPLINK}
TUNNELS = frozenset(ir.TUNNEL_PORTS.values())

# A copy sent: (interface, outer VLAN id or None, (tun_id, tun_dst) when encapsulated).
Copy = tuple[str, int | None, tuple[int, int] | None]
# A recirculation after a ct: the --ct-next flags of the state found, and the IPv4 addresses the tracker's NAT
# left the packet with (None: it translated nothing).
Recirculation = tuple[str, dict[str, int] | None]


def sh(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout


class Ovs:
    """One OVS in its own namespace: NPORTS veth ports carrying iface-ids p0..pN, the agent's VXLAN tunnel port
    and the uplink of PHYSNET (:data:`FIXED`), the underlay bridge the tunnel is routed by."""

    def __init__(self) -> None:
        self.ns = f"hwt-dif-{secrets.token_hex(3)}"
        self.dir = Path(tempfile.mkdtemp(prefix="hwt-dif-"))
        with contextlib.ExitStack() as undo:  # a setup failing half-way takes down what it started
            sh("ip", "netns", "add", self.ns)
            undo.callback(subprocess.run, ["ip", "netns", "delete", self.ns], check=False)
            self.daemons = OvsDaemons(self.dir, netns=self.ns).start()
            undo.callback(self.daemons.stop)
            self.ovsdb = OvsdbClient(self.daemons.db_sock, BRIDGE)
            undo.callback(self.ovsdb.close)
            self.ovsdb.ensure_bridge()
            for i in range(NPORTS):
                self._veth(f"p{i}")
                self.ovsdb.add_port(f"p{i}", iface_id=f"p{i}")
            self._veth(UPLINK)
            self.ovsdb.sync_fixed_ports(fixed_ports(TUNNEL_IP, ["vxlan"], {"vxlan": 4789}, {PHYSNET: UPLINK}))
            self.ofports = {f"p{i}": self.ovsdb.wait_for_ofport(f"p{i}", timeout=15) for i in range(NPORTS)}
            self.fixed = {key: self.ovsdb.wait_for_ofport(name, timeout=15) for key, name in FIXED.items()}
            self.backend = OvsBackend(self.ovsdb, OpenFlowConnection(self.daemons.mgmt(BRIDGE)))
            undo.callback(self.backend.of.close)
            self._underlay()
            self.odp_names = self._odp_names()
            self._undo = undo.pop_all()

    def _veth(self, name: str) -> None:
        sh("ip", "-n", self.ns, "link", "add", name, "type", "veth", "peer", "name", f"{name}-far")
        sh("ip", "-n", self.ns, "link", "set", name, "up")

    def _underlay(self) -> None:
        """A standalone bridge holding TUNNEL_IP, with one port: without a route to the remote chassis the trace
        drops what goes into the tunnel, and it prunes an encapsulated copy that leaves by no port."""
        self._veth(UNDERLAY_PORT)
        sh("ovs-vsctl", f"--db={self.daemons.db_sock}", "add-br", UNDERLAY, "--", "set", "Bridge", UNDERLAY,
           "datapath_type=netdev", "--", "add-port", UNDERLAY, UNDERLAY_PORT)
        sh("ip", "-n", self.ns, "addr", "add", f"{TUNNEL_IP}/24", "dev", UNDERLAY)
        sh("ip", "-n", self.ns, "link", "set", UNDERLAY, "up")
        deadline = time.monotonic() + 15
        while f"dev {UNDERLAY}" not in self.appctl("ovs/route/show"):  # learnt from the namespace's routes
            assert time.monotonic() < deadline, self.appctl("ovs/route/show")
            time.sleep(0.05)

    def neighbour(self, address: str) -> None:
        """Let the trace encapsulate towards a remote chassis (it would ARP for it instead)."""
        self.appctl("tnl/neigh/set", UNDERLAY, address, "aa:55:aa:55:00:01")

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
        return {name for name, *_ in self.trace_outputs(flow)}

    def trace_text(self, flow: str, ct_next: Sequence[str] = (), actions: str | None = None) -> str:
        """``ofproto/trace`` of ``flow``, or with ``actions`` ``trace-packet-out`` of them; each recirculation finds
        the next of the ``ct_next`` conntrack states."""
        states = [arg for flags in ct_next for arg in ("--ct-next", flags)]
        if actions is None:
            return self.appctl("ofproto/trace", *states, BRIDGE, flow)
        return self.appctl("ofproto/trace-packet-out", *states, BRIDGE, flow, actions)

    def datapath_actions(self, flow: str, ct_next: str | list[str] | None = None) -> list[str]:
        """The datapath actions of the trace, over every recirculation, in order; ``ct_next``: the conntrack state
        each recirculation finds, in turn."""
        return _actions_of(self.trace_text(flow, [ct_next] if isinstance(ct_next, str) else ct_next or []))

    def trace_outputs(self, flow: str, ct_next: str | list[str] | None = None) -> list[Copy]:
        """Each copy sent, over every recirculation of the trace."""
        return self.copies(self.datapath_actions(flow, ct_next), [int(v) for v in re.findall(r"dl_vlan=(\d+)", flow)])

    def copies(self, actions: list[str], vlans: Sequence[int] = ()) -> list[Copy]:
        """Each copy the datapath actions send; ``vlans``: the tags the packet came with, the outer one last."""
        stack, sent = list(vlans), []
        for action in actions:
            if action.startswith("clone("):
                sent += self.copies(_datapath_actions(action[len("clone("):-1]), stack)
            elif action.startswith("tnl_push("):
                port = int(re.search(r"tnl_port\((\d+)\)", action).group(1))
                vni = int(re.search(r"vni=(0x[0-9a-f]+)", action).group(1), 16)
                dst = re.search(r"ipv4\(src=[\d.]+,dst=([\d.]+)", action).group(1)
                sent.append((self.odp_names[port], stack[-1] if stack else None, (vni, _ip4(dst))))
            elif action.isdigit():
                name = self.odp_names[int(action)]
                if name != UNDERLAY_PORT:  # there the encapsulated packet of a tnl_push leaves, counted by it
                    sent.append((name, stack[-1] if stack else None, None))
            elif action.startswith("push_vlan("):
                stack.append(int(re.search(r"vid=(\d+)", action).group(1)))
            elif action == "pop_vlan":
                stack.pop()
        return sent

    def trace_connection(self, flow: str, recirculations: Sequence[Recirculation],
                         actions: str | None = None) -> tuple[list[str], dict[str, int]]:
        """The datapath actions over every recirculation, each finding the state the interpreter's tracker found,
        and the IPv4 addresses NAT gave the packet (IR field -> value). A recirculation the trace cannot follow
        is traced again from its table (trace-packet-out of a resubmit) with the packet as the trace froze it:
        after a reply's un-NAT by a bare ``nat``, which the trace does not simulate, with the addresses the
        tracker restored (module doc); and any recirculation of such a trace, which trace-packet-out cannot thaw
        (it reports a "Recirculation conflict")."""
        text = self.trace_text(flow, [flags for flags, _ in recirculations], actions)
        parts = RESUMED.split(text)
        done, translated = _actions_of(parts[0]), {}
        for i, stage in enumerate(parts[1:]):
            restored, nat = recirculations[i][1], _translations(stage)
            unsimulated = restored if restored is not None and not nat else None
            if unsimulated is not None or actions is not None:
                frozen = re.search(r"^Flow: (.*)$", stage, re.M).group(1)
                table = re.findall(r"will be resumed at table (\d+)", parts[i])[-1]
                addresses = unsimulated or nat
                more, later = self.trace_connection(_thawed(frozen, addresses), recirculations[i + 1:],
                                                    f"resubmit(,{table})")
                return done + more, {**translated, **addresses, **later}
            done += _actions_of(stage)
            translated.update(nat)
        return done, translated

    def close(self) -> None:
        self._undo.close()


@pytest.fixture(scope="module")
def ovs() -> Iterator[Ovs]:
    host = Ovs()
    try:
        yield host
    finally:
        host.close()


RESUMED = re.compile(r"^recirc\(0x[0-9a-f]+\) - resume conntrack.*$", re.M)  # heads each recirculation's trace


def _actions_of(text: str) -> list[str]:
    sections = [line.split(":", 1)[1] for line in text.splitlines() if line.startswith("Datapath actions:")]
    assert sections, text
    return [a for text in sections for a in _datapath_actions(text)]


def _translations(stage: str) -> dict[str, int]:
    """The addresses the trace's NAT simulation gave a recirculation ("Modified flow: nw_src=...,nw_dst=...")."""
    m = re.search(r"^ Modified flow: (.*)$", stage, re.M)
    return {f"ipv4_{k}": _ip4(v) for k, v in re.findall(r"nw_(src|dst)=([\d.]+)", m.group(1) if m else "")}


def _thawed(flow: str, addresses: Mapping[str, int]) -> str:
    """A recirculation's flow (as the trace prints it) as trace-packet-out takes it, with the given IPv4
    addresses: no recirc_id, no bare ``eth``, L4 ports named by their protocol (the parser refuses a UDP
    packet's tp_src)."""
    fields = [f for f in flow.split(",") if f != "eth" and not f.startswith("recirc_id=")]
    proto = "udp" if "udp" in fields else "tcp"
    renamed = {"tp_src": f"{proto}_src", "tp_dst": f"{proto}_dst"}
    values = {f"nw_{side}": ipaddress.IPv4Address(addresses[f"ipv4_{side}"]) for side in ("src", "dst")
              if f"ipv4_{side}" in addresses}
    parts = []
    for field in fields:
        key, sep, value = field.partition("=")
        parts.append(f"{renamed.get(key, key)}={values.get(key, value)}" if sep else field)
    return ",".join(parts)


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


ECHO_REPLY = {8: 0, 128: 129}  # ICMP and ICMPv6 echo request -> reply
SWAPPED = (("ipv4_src", "ipv4_dst"), ("ipv6_src", "ipv6_dst"), ("tcp_src", "tcp_dst"), ("udp_src", "udp_dst"))


@st.composite
def transports(draw, ipv6: bool = False, dst_ports: st.SearchStrategy[int] = st.integers(1, 65535)) -> dict[str, int]:
    """A protocol above IP: TCP or UDP from a random port to one of ``dst_ports``, or an ICMP(v6) echo request."""
    proto = draw(st.sampled_from((6, 17, 58 if ipv6 else 1)))
    if proto in (1, 58):
        return {"ip_proto": proto, "icmp_type": 128 if ipv6 else 8, "icmp_code": 0}
    name = "tcp" if proto == 6 else "udp"
    return {"ip_proto": proto, f"{name}_src": draw(st.integers(1, 65535)), f"{name}_dst": draw(dst_ports)}


def _addressed(src: Port, dst: Port, version: int) -> dict[str, int]:
    """The IP header of a packet from ``src``'s address to ``dst``'s: their first (IPv4) or second (IPv6) one."""
    family, eth_type, index = ("ipv6", ir.ETH_TYPE_IPV6, 1) if version == 6 else ("ipv4", ir.ETH_TYPE_IPV4, 0)
    return {"eth_type": eth_type, f"{family}_src": int(ipaddress.ip_address(src.ips[index])),
            f"{family}_dst": int(ipaddress.ip_address(dst.ips[index])), "ip_ttl": 64}


def _answer(port: int, sent: Mapping[str, int]) -> dict[str, int]:
    """The answer to a packet as it reached ``port``, sent back from there: addresses and L4 ports swapped."""
    answer = {**sent, "in_port": port, "eth_src": sent["eth_dst"], "eth_dst": sent["eth_src"], "ip_ttl": 64}
    for src, dst in SWAPPED:
        if src in sent:
            answer[src], answer[dst] = sent[dst], sent[src]
    if "icmp_type" in sent:
        answer["icmp_type"] = ECHO_REPLY[sent["icmp_type"]]
    return answer


def _ip4(text: str) -> int:
    return int(ipaddress.IPv4Address(text))


def _ip6(text: str) -> int:
    return int(ipaddress.IPv6Address(text))


# What the trace's set(...) datapath actions name, as IR fields, e.g. set(nd_ext(nd_reserved=0x60000000,...)).
REWRITES = {"eth": {"src": "eth_src", "dst": "eth_dst"}, "ipv6": {"src": "ipv6_src", "dst": "ipv6_dst"},
            "ipv4": {"src": "ipv4_src", "dst": "ipv4_dst", "ttl": "ip_ttl"},
            "icmpv6": {"type": "icmp_type", "code": "icmp_code"}, "nd": {"sll": "nd_sll", "tll": "nd_tll"},
            "nd_ext": {"nd_reserved": "nd_reserved", "nd_options_type": "nd_options_type"},
            "arp": {"sip": "arp_spa", "tip": "arp_tpa", "op": "arp_op", "sha": "arp_sha", "tha": "arp_tha"}}
COMPARED = ("eth_src", "eth_dst", "ipv4_src", "ipv4_dst", "ip_ttl", "ipv6_src", "ipv6_dst", "icmp_type", "nd_reserved",
            "nd_options_type", "arp_op", "arp_spa", "arp_tpa", "arp_sha", "arp_tha")


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


def assert_same_headers(pkt: Mapping[str, int], verdict: interpreter.Verdict, actions: list[str],
                        translated: Mapping[str, int] | None = None) -> None:
    """A single copy leaves OVS rewritten as the interpreter says (the link-layer option: the answer's nd_tll;
    ``translated``: the addresses conntrack's NAT gave it in OVS)."""
    ((_, expected),) = verdict.outputs
    rewrites = {**_rewrites(actions), **(translated or {})}
    sent = {**pkt, **rewrites}
    assert {f: sent.get(f) for f in COMPARED} == {f: expected.get(f) for f in COMPARED}, (pkt, actions)
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


def _punted(actions: list[str]) -> bool:
    """Whether the datapath actions hand the packet to the controller by a ``controller`` action (reason 1; a TTL
    dec_ttl cannot decrement goes there as reason 2, which the interpreter, like the apps, counts as a drop)."""
    return any(a.startswith("userspace(") and "controller(reason=1," in a for a in actions)


def _mac(text: str) -> int:
    return int(text.replace(":", ""), 16)


def _fmt_mac(value: int) -> str:
    return ":".join(f"{b:02x}" for b in value.to_bytes(6, "big"))


L4_NAMES = {1: "icmp", 58: "icmpv6", 6: "tcp", 17: "udp"}


def ovs_flow(pkt: Mapping[str, int], ofport_of: Mapping[int, int]) -> str:
    """The packet in ovs-ofctl flow syntax, as ofproto/trace takes it."""
    parts = [f"in_port={ofport_of[pkt['in_port']]}"]
    if "tun_id" in pkt:
        parts += [f"tun_id={pkt['tun_id']:#x}", f"tun_src={ipaddress.IPv4Address(pkt['tun_src'])}"]
    parts += [f"dl_src={_fmt_mac(pkt['eth_src'])}", f"dl_dst={_fmt_mac(pkt['eth_dst'])}"]
    if "vlan_vid" in pkt:
        parts.append(f"dl_vlan={pkt['vlan_vid']}")
    parts.append(f"dl_type={pkt['eth_type']:#06x}")
    if pkt["eth_type"] == ir.ETH_TYPE_ARP:
        parts += [f"arp_op={pkt['arp_op']}", f"arp_spa={ipaddress.IPv4Address(pkt['arp_spa'])}",
                  f"arp_tpa={ipaddress.IPv4Address(pkt['arp_tpa'])}", f"arp_sha={_fmt_mac(pkt['arp_sha'])}",
                  f"arp_tha={_fmt_mac(pkt['arp_tha'])}"]
    elif pkt["eth_type"] == ir.ETH_TYPE_IPV4:
        parts += [f"nw_src={ipaddress.IPv4Address(pkt['ipv4_src'])}",
                  f"nw_dst={ipaddress.IPv4Address(pkt['ipv4_dst'])}", *_l4(pkt)]
    elif pkt["eth_type"] == ir.ETH_TYPE_IPV6:
        parts += [f"ipv6_src={ipaddress.IPv6Address(pkt['ipv6_src'])}",
                  f"ipv6_dst={ipaddress.IPv6Address(pkt['ipv6_dst'])}", *_l4(pkt)]
    return ",".join(parts)


def _l4(pkt: Mapping[str, int]) -> list[str]:
    """The IP packet's protocol, TTL and what follows, in flow syntax (an NS's target and link-layer option)."""
    name = L4_NAMES[pkt["ip_proto"]]
    parts = [f"nw_proto={pkt['ip_proto']}", f"nw_ttl={pkt['ip_ttl']}"]
    if name in ("icmp", "icmpv6"):
        parts += [f"{name}_type={pkt['icmp_type']}", f"{name}_code={pkt['icmp_code']}"]
    else:
        parts += [f"{name}_src={pkt[name + '_src']}", f"{name}_dst={pkt[name + '_dst']}"]
    if "nd_target" in pkt:
        parts.append(f"nd_target={ipaddress.IPv6Address(pkt['nd_target'])}")
    if "nd_sll" in pkt:
        parts += [f"nd_sll={_fmt_mac(pkt['nd_sll'])}", f"nd_options_type={pkt['nd_options_type']}"]
    return parts


COMPILER = Compiler.from_file(layout_path(""))


def _synced(ovs: Ovs, topo: Topology) -> tuple[ir.Pipeline, dict[int, int], dict[int, str]]:
    """``topo`` compiled and synced into the OVS: the pipeline, port key -> ofport, port key -> interface (a local
    port's is its id; the fixed ports' are :data:`FIXED`)."""
    pipeline = COMPILER.compile(topo)
    ports = {topo.ports[pid].unique_key: ovs.ofports[pid] for pid in topo.local_port_ids} | ovs.fixed
    result = ovs.backend.sync(pipeline.flows, ports)
    assert not result.errors, result.errors
    return pipeline, ports, {topo.ports[pid].unique_key: pid for pid in topo.local_port_ids} | FIXED


def _copies(verdict: interpreter.Verdict, names: Mapping[int, str]) -> list[Copy]:
    """The copies the interpreter sends, as :meth:`Ovs.copies` gives OVS's (sorted)."""
    return sorted(((names[port], pkt.get("vlan_vid"), (pkt["tun_id"], pkt["tun_dst"]) if port in TUNNELS else None)
                   for port, pkt in verdict.outputs), key=str)


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


HAND_NAMES = {_key(i): f"p{i}" for i in range(NPORTS)}  # the hand-built pipelines' ports


def _bind(ovs: Ovs, flows: list[ir.Flow]) -> tuple[ir.Pipeline, dict[int, int]]:
    pipeline = ir.Pipeline.build(flows, {})
    ports = {_key(i): ovs.ofports[f"p{i}"] for i in range(NPORTS)}
    result = ovs.backend.sync(pipeline.flows, ports)
    assert not result.errors, result.errors
    return pipeline, ports


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
    assert sorted(ovs.trace_outputs(flow), key=str) == _copies(interpreter.run(pipeline, pkt), HAND_NAMES), pkt


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
    sent = _copies(interpreter.run(pipeline, pkt), HAND_NAMES)
    assert sorted(ovs.trace_outputs(flow), key=str) == sent, pkt
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
    expected = _copies(interpreter.run(pipeline, pkt, tracker), HAND_NAMES)
    assert sorted(ovs.trace_outputs(flow, CT_NEXT[state]), key=str) == expected, state


# --- routing: a router between subnets, TTLs that expire and that do not; DHCP on the way -----------------------

@st.composite
def routed_topologies(draw) -> Topology:
    """Two or three networks with a /24 each (DHCP on or off), a router on two or more of them, the five ports
    spread over them (no security group: the router is what is compared; conntrack is the other tests' business)."""
    n = draw(st.integers(2, 3))
    nets = {f"n{i}": Network(id=f"n{i}", name=f"n{i}", vni=100 + i, unique_key=i + 1) for i in range(n)}
    subnets = {f"s{i}": Subnet(id=f"s{i}", name=f"s{i}", network_id=f"n{i}", cidr=f"10.{i}.0.0/24",
                               gateway_ip=f"10.{i}.0.1", enable_dhcp=draw(st.booleans())) for i in range(n)}
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
    dst_ip = _ip4(dst.ips[0]) if draw(st.integers(0, 5)) else 0x0A090009  # or nobody's
    return {"in_port": src.unique_key, "eth_src": _mac(src.mac), "eth_dst": dst_mac, "eth_type": ir.ETH_TYPE_IPV4,
            "ipv4_src": _ip4(src.ips[0]), "ipv4_dst": dst_ip, "ip_ttl": draw(st.sampled_from((1, 2, 64))),
            **draw(transports())}


@st.composite
def dhcp_requests(draw, topo: Topology) -> dict[str, int]:
    """From a port: a DHCP discover (from 0.0.0.0) or request broadcast, or a renewal unicast to its subnet's
    gateway through the router port holding it."""
    port = topo.ports[draw(st.sampled_from(sorted(topo.ports)))]
    gateway = [rp for rp in topo.of("router_port").values() if rp.network_id == port.network_id]
    ways = [(0, BROADCAST, 0xFFFF_FFFF), (_ip4(port.ips[0]), BROADCAST, 0xFFFF_FFFF)]  # discover, request
    ways += [(_ip4(port.ips[0]), _mac(rp.mac), _ip4(rp.ip)) for rp in gateway]  # renewal
    src, dst_mac, dst = draw(st.sampled_from(ways))
    return {"in_port": port.unique_key, "eth_src": _mac(port.mac), "eth_dst": dst_mac, "eth_type": ir.ETH_TYPE_IPV4,
            "ipv4_src": src, "ipv4_dst": dst, "ip_proto": 17, "ip_ttl": 64, "udp_src": 68, "udp_dst": 67}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_routing_agrees_with_ovs(ovs: Ovs, data: st.DataObject) -> None:
    """Where a routed packet leaves, and with which MACs and TTL; whether a DHCP request goes to the agent (and
    then nowhere else): the interpreter as OVS."""
    topo = data.draw(routed_topologies())
    pipeline, ports, names = _synced(ovs, topo)
    for _ in range(6):
        pkt = data.draw(dhcp_requests(topo) if data.draw(st.integers(0, 3)) == 0 else routed_packets(topo))
        verdict = interpreter.run(pipeline, pkt)
        actions = ovs.datapath_actions(ovs_flow(pkt, ports))
        assert {name for name, *_ in ovs.copies(actions)} == {names[p] for p in verdict.ports}, (pkt, actions)
        assert _punted(actions) == (verdict.punt is not None), (pkt, actions)
        event("punted to the agent" if verdict.punt else "routed (MACs and TTL rewritten)"
              if verdict.outputs and verdict.outputs[0][1]["ip_ttl"] != pkt["ip_ttl"]
              else "delivered unrouted" if verdict.outputs else "dropped")
        if len(verdict.outputs) == 1:
            assert_same_headers(pkt, verdict, actions)


# --- security groups: connection state over a request and its reply -----------------------------------------

CT_FLAGS = ((ir.CT_TRK, "trk"), (ir.CT_NEW, "new"), (ir.CT_EST, "est"), (ir.CT_REL, "rel"), (ir.CT_RPL, "rpl"),
            (ir.CT_INV, "inv"))
GROUPS = ("g0", "g1")


@st.composite
def sg_rules(draw, group: str, index: int, hosts: Sequence[int]) -> SecurityGroupRule:
    """A random rule: either direction and ethertype, any or one protocol, a port range or ICMP type, a peer
    prefix around one of the ports' addresses (``hosts``) or a remote group."""
    ethertype = draw(st.sampled_from(("IPv4", "IPv6")))
    icmp = "icmp" if ethertype == "IPv4" else "icmpv6"
    fields = {"protocol": draw(st.sampled_from(("", "tcp", "udp", icmp)))}
    if fields["protocol"] in ("tcp", "udp") and draw(st.booleans()):
        low = draw(st.integers(1, 65535))
        fields.update(port_min=low, port_max=min(65535, low + draw(st.sampled_from((0, 1, 6, 255, 1000, 65535)))))
    elif fields["protocol"] == icmp and draw(st.booleans()):
        fields.update(icmp_type=8 if ethertype == "IPv4" else 128, icmp_code=draw(st.sampled_from((-1, 0))))
    peer = draw(st.sampled_from(("", "prefix", "group")))
    if peer == "prefix":
        host, bits = draw(st.sampled_from(hosts)), draw(st.integers(0, 8))
        address = f"10.0.0.{host}/{32 - bits}" if ethertype == "IPv4" else f"fd00::{host:x}/{128 - bits}"
        fields["remote_ip_prefix"] = str(ipaddress.ip_network(address, strict=False))
    elif peer == "group":
        fields["remote_group_id"] = draw(st.sampled_from(GROUPS))
    return SecurityGroupRule(id=f"{group}-{index}", name=f"{group}-{index}", security_group_id=group,
                             direction=draw(st.sampled_from(("ingress", "egress"))), ethertype=ethertype, **fields)


@st.composite
def security_groups(draw, hosts: Sequence[int]) -> dict[str, dict[str, SecurityGroup | SecurityGroupRule]]:
    """GROUPS with one to four random rules each, as a topology's objects by kind."""
    groups = {g: SecurityGroup(id=g, name=g, unique_key=k + 1) for k, g in enumerate(GROUPS)}
    rules = {rule.id: rule for g in groups for j in range(draw(st.integers(1, 4)))
             for rule in [draw(sg_rules(g, j, hosts))]}
    return {"security_group": groups, "security_group_rule": rules}


@st.composite
def guarded_topologies(draw) -> Topology:
    """One network, the five ports (random IPv4 and IPv6 addresses) in random groups of random rules."""
    net = Network(id="n0", name="n0", vni=100, unique_key=1)
    hosts = draw(st.lists(st.integers(2, 254), min_size=NPORTS, max_size=NPORTS, unique=True))
    ports = {f"p{i}": Port(id=f"p{i}", name=f"p{i}", network_id="n0", mac=MACS[i],
                           ips=[f"10.0.0.{hosts[i]}", f"fd00::{hosts[i]:x}"], unique_key=10 + i,
                           security_groups=draw(st.lists(st.sampled_from(GROUPS), max_size=2, unique=True)))
             for i in range(NPORTS)}
    return Topology("h", {"n0": net}, ports, set(ports), others=draw(security_groups(hosts)))


class RecordingTracker(interpreter.ConnTracker):
    """The interpreter's tracker, remembering for each ct action in turn the state it found and the addresses
    its NAT left (None: it translated nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[int, dict[str, int] | None]] = []

    def state(self, zone: int, packet: Mapping[str, int]) -> int:
        found = super().state(zone, packet)
        self.seen.append((found, None))
        return found

    def translate(self, zone: int, packet: dict[str, int], nat: ir.Nat) -> int:
        bits = super().translate(zone, packet, nat)
        if bits:
            self.seen[-1] = (self.seen[-1][0], {"ipv4_src": packet["ipv4_src"], "ipv4_dst": packet["ipv4_dst"]})
        return bits


def _recirculations(verdict: interpreter.Verdict, seen: list[tuple[int, dict[str, int] | None]]) -> list[Recirculation]:
    """What each recirculation the packet took found, from what the tracker saw at each ct."""
    cts = [a for step in verdict.steps if step.flow is not None for a in step.flow.actions
           if isinstance(a, ir.Conntrack)]
    assert len(cts) == len(seen), (cts, seen)
    return [(",".join(name for bit, name in CT_FLAGS if state & bit), nat) for ct, (state, nat) in zip(cts, seen)
            if ct.table is not None]


def _traced(ovs: Ovs, pipeline: ir.Pipeline, ports: Mapping[int, int], pkt: Mapping[str, int],
            tracker: RecordingTracker) -> tuple[interpreter.Verdict, list[str], dict[str, int]]:
    """``pkt`` through the interpreter (``tracker`` keeps the connections) and through OVS as the tracker's states
    say: the verdict, OVS's datapath actions and the addresses its NAT gave the packet."""
    tracker.seen.clear()
    verdict = interpreter.run(pipeline, pkt, tracker)
    return verdict, *ovs.trace_connection(ovs_flow(pkt, ports), _recirculations(verdict, tracker.seen))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_security_groups_agree_with_ovs_over_a_connection(ovs: Ovs, data: st.DataObject) -> None:
    """A request between two ports (IPv4 or IPv6, random L4 ports, often at a rule's port range's edge) and its
    reply: each passes or not, by the groups' rules and the connection's state, as in OVS traced with the
    conntrack states the interpreter's tracker found."""
    topo = data.draw(guarded_topologies())
    pipeline, ports, names = _synced(ovs, topo)
    a, b = (topo.ports[f"p{i}"] for i in data.draw(st.lists(st.integers(0, NPORTS - 1), min_size=2, max_size=2,
                                                              unique=True)))
    version = data.draw(st.sampled_from((4, 6)))
    edges = sorted({p for r in topo.of("security_group_rule").values() if r.port_min
                    for p in (r.port_min - 1, r.port_min, r.port_max, r.port_max + 1) if 1 <= p <= 65535})
    dst_ports = st.one_of(st.sampled_from(edges), st.integers(1, 65535)) if edges else st.integers(1, 65535)
    request = {"in_port": a.unique_key, "eth_src": _mac(a.mac), "eth_dst": _mac(b.mac), **_addressed(a, b, version),
               **data.draw(transports(ipv6=version == 6, dst_ports=dst_ports))}
    tracker = RecordingTracker()
    for pkt in (request, _answer(b.unique_key, request), request):
        verdict, actions, _ = _traced(ovs, pipeline, ports, pkt, tracker)
        sent = {name for name, *_ in ovs.copies(actions)}
        assert sent == {names[p] for p in verdict.ports}, (pkt, actions)
        event(f"IPv{version} {L4_NAMES[pkt['ip_proto']]} {'passed' if verdict.outputs else 'dropped'}")


# --- NAT: floating IPs and SNAT, to and from the outside behind the uplink -----------------------------------

EXT_NET = "198.51.100"  # the external /24; the upstream router holds .1, its gateway_ip
UPSTREAM = Port(id="upstream", name="upstream", network_id="ext", mac="fa:16:3e:00:ee:01", ips=[f"{EXT_NET}.1"],
                unique_key=30)


@st.composite
def nat_topologies(draw) -> Topology:
    """A router joining one or two inside /24s to a flat external network behind the uplink, the upstream router
    on it; some ports have FIPs, the others go out SNATed to this chassis's external address, or not at all (the
    router does no SNAT, or the chassis has no address). The ports', FIPs' and chassis's addresses are random;
    half the ports are in a security group (random rules besides Neutron's default, anything out), whose
    conntrack zone comes after the NAT's."""
    n = draw(st.integers(1, 2))
    nets = {f"n{i}": Network(id=f"n{i}", name=f"n{i}", vni=100 + i, unique_key=i + 1) for i in range(n)}
    nets["ext"] = Network(id="ext", name="ext", network_type="flat", physical_network=PHYSNET, external=True,
                          unique_key=9)
    subnets = {f"s{i}": Subnet(id=f"s{i}", name=f"s{i}", network_id=f"n{i}", cidr=f"10.{i}.0.0/24",
                               gateway_ip=f"10.{i}.0.1") for i in range(n)}
    subnets["se"] = Subnet(id="se", name="se", network_id="ext", cidr=f"{EXT_NET}.0/24", gateway_ip=UPSTREAM.ips[0])
    rps = {f"rp{i}": RouterPort(id=f"rp{i}", name=f"rp{i}", router_id="r0", network_id=f"n{i}", subnet_id=f"s{i}",
                                mac=f"fa:16:3e:00:01:{i:02x}", ip=f"10.{i}.0.1") for i in range(n)}
    hosts = draw(st.lists(st.integers(2, 254), min_size=NPORTS, max_size=NPORTS, unique=True))
    public = draw(st.lists(st.integers(2, 254), min_size=NPORTS + 2, max_size=NPORTS + 2, unique=True))
    ports = {"upstream": UPSTREAM}
    for i in range(NPORTS):
        net = draw(st.integers(0, n - 1))
        ports[f"p{i}"] = Port(id=f"p{i}", name=f"p{i}", network_id=f"n{net}", mac=MACS[i],
                              ips=[f"10.{net}.0.{hosts[i]}"], unique_key=10 + i,
                              security_groups=draw(st.sampled_from(([], [], ["g0"], ["g1"]))))
    fips = {f"f{i}": FloatingIP(id=f"f{i}", name=f"f{i}", floating_network_id="ext", port_id=f"p{i}",
                                floating_ip_address=f"{EXT_NET}.{public[i + 2]}",
                                fixed_ip_address=ports[f"p{i}"].ips[0])
            for i in sorted(draw(st.sets(st.integers(0, NPORTS - 1), min_size=1, max_size=NPORTS - 1)))}
    others_go = draw(st.sampled_from(("SNATed", "SNATed", "nowhere: no SNAT", "nowhere: no external address")))
    router = Router(id="r0", name="r0", gateway_network_id="ext", gateway_ip=f"{EXT_NET}.{public[1]}",
                    enable_snat=others_go != "nowhere: no SNAT", unique_key=draw(st.integers(1, 1000)))
    external_ip = "" if others_go == "nowhere: no external address" else f"{EXT_NET}.{public[0]}"
    chassis = Chassis(id="h", tunnel_ip=TUNNEL_IP, external_ip=external_ip)
    security = draw(security_groups(hosts))
    security["security_group_rule"] |= {f"{g}-out": SecurityGroupRule(id=f"{g}-out", name=f"{g}-out",
                                                                      security_group_id=g, direction="egress")
                                        for g in GROUPS}
    others = {"subnet": subnets, "router_port": rps, "router": {"r0": router}, "floating_ip": fips,
              "chassis": {"h": chassis}, **security}
    return Topology("h", nets, ports, {f"p{i}" for i in range(NPORTS)}, others=others)


@st.composite
def nat_openers(draw, topo: Topology) -> dict[str, int]:
    """A connection's first packet: from a local port with a FIP or one without (half the time each), through its
    router port, to the outside (beyond the upstream router, the upstream itself, nobody's on the external
    subnet); or from the outside, through the uplink, to a FIP, the SNAT address or nobody's, at the MAC this
    host would answer for it with. Or ARP from the outside for one of those."""
    held = [f.floating_ip_address for f in topo.of("floating_ip").values()]
    held += [c.external_ip for c in topo.of("chassis").values() if c.external_ip]
    nobody = draw(st.sampled_from([a for h in range(2, 255) if (a := f"{EXT_NET}.{h}") not in held]))
    target = _ip4(draw(st.sampled_from([*held, nobody])))
    beyond = f"203.0.113.{draw(st.integers(1, 254))}"  # behind the upstream router: the default route
    remote = draw(st.sampled_from((beyond, UPSTREAM.ips[0], nobody)))
    upstream = {"in_port": ir.physnet_port(PHYSNET), "eth_src": _mac(UPSTREAM.mac)}
    kind = draw(st.sampled_from(("out", "out", "in", "in", "arp")))
    if kind == "arp":
        return {**upstream, "eth_dst": BROADCAST, "eth_type": ir.ETH_TYPE_ARP, "arp_op": 1,
                "arp_spa": _ip4(UPSTREAM.ips[0]), "arp_tpa": target, "arp_sha": _mac(UPSTREAM.mac), "arp_tha": 0}
    if kind == "in":
        head = {**upstream, "eth_dst": nat_mac(str(ipaddress.IPv4Address(target))), "ipv4_src": _ip4(remote),
                "ipv4_dst": target}
    else:
        fipped = {f.port_id for f in topo.of("floating_ip").values()}
        with_fip = draw(st.booleans())
        vm = topo.ports[draw(st.sampled_from(sorted(p for p in topo.local_port_ids if (p in fipped) == with_fip)))]
        gateway = topo.of("router_port")[f"rp{vm.network_id[1:]}"]
        head = {"in_port": vm.unique_key, "eth_src": _mac(vm.mac), "eth_dst": _mac(gateway.mac),
                "ipv4_src": _ip4(vm.ips[0]), "ipv4_dst": _ip4(remote)}
    return {**head, "eth_type": ir.ETH_TYPE_IPV4, "ip_ttl": 64, **draw(transports())}


def _origin(pkt: Mapping[str, int]) -> str:
    return {ir.TUNNEL_PORTS["vxlan"]: "from the tunnel", ir.physnet_port(PHYSNET): "from the uplink"}.get(
        pkt["in_port"], "from a local port")


def _nat_event(stage: str, pkt: Mapping[str, int], verdict: interpreter.Verdict) -> str:
    """What happened to a packet, and through which translation: a FIP's zone or the chassis's SNAT zone."""
    if pkt["eth_type"] == ir.ETH_TYPE_ARP:
        return f"ARP {_origin(pkt)}: {'answered' if verdict.outputs else 'not answered'}"
    zones = {a.zone for step in verdict.steps if step.flow is not None for a in step.flow.actions
             if isinstance(a, ir.Conntrack) and a.nat is not None}
    through = "the SNAT address" if CHASSIS_SNAT_ZONE in zones else "a FIP" if zones else "no NAT"
    return f"{stage} {_origin(pkt)} through {through}: {'delivered' if verdict.outputs else 'dropped'}"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_nat_agrees_with_ovs_over_a_connection(ovs: Ovs, data: st.DataObject) -> None:
    """A connection's first packet through the router's FIPs and SNAT, the answer to it where it was delivered,
    and the first packet again: where each leaves, with which MACs, TTL and translated addresses."""
    topo = data.draw(nat_topologies())
    pipeline, ports, names = _synced(ovs, topo)
    opener = data.draw(nat_openers(topo))
    tracker = RecordingTracker()
    pkt: Mapping[str, int] = opener
    for stage in ("first", "answer", "again"):
        verdict, actions, translated = _traced(ovs, pipeline, ports, pkt, tracker)
        assert sorted(ovs.copies(actions), key=str) == _copies(verdict, names), (pkt, actions)
        event(_nat_event(stage, pkt, verdict))
        if len(verdict.outputs) != 1:
            return
        assert_same_headers(pkt, verdict, actions, translated)
        if pkt["eth_type"] == ir.ETH_TYPE_ARP:
            return
        pkt = _answer(*verdict.outputs[0]) if stage == "first" else opener


# --- ports elsewhere: other chassis through the tunnel, provider networks through the uplink ------------------

REMOTE_MACS = [f"fa:16:3e:00:02:{i:02x}" for i in range(1, 5)]
NOBODYS_MAC = "fa:16:3e:99:99:99"
# What a remote chassis terminates: VXLAN, VXLAN among others, or not VXLAN (its ports' packets drop).
TUNNEL_TYPES = (["vxlan"], ["geneve", "vxlan"], ["geneve"])


@st.composite
def placed_topologies(draw) -> Topology:
    """Three networks: VXLAN (random VNIs) or provider VLAN (random ids) on PHYSNET, the first maybe flat; the
    five local ports and four remote ones on them. A remote port is bound to one of two other chassis (random
    tunnel addresses and types), to none, or to one nobody knows. Addresses: IPv4, some IPv6 too."""
    vnis = draw(st.lists(st.integers(1, MAX_VNI), min_size=3, max_size=3, unique=True))
    vlans = draw(st.lists(st.integers(1, MAX_VLAN), min_size=3, max_size=3, unique=True))
    nets = {}
    for i in range(3):
        kind = draw(st.sampled_from(("vxlan", "vlan", "flat") if i == 0 else ("vxlan", "vlan")))
        nets[f"n{i}"] = Network(id=f"n{i}", name=f"n{i}", network_type=kind, unique_key=i + 1,
                                vni=vnis[i] if kind == "vxlan" else 0, vlan_id=vlans[i] if kind == "vlan" else 0,
                                physical_network="" if kind == "vxlan" else PHYSNET)
    tunnel_ips = draw(st.lists(st.integers(2, 254), min_size=2, max_size=2, unique=True))
    chassis = {f"c{i}": Chassis(id=f"c{i}", tunnel_ip=f"192.0.2.{ip}", tunnel_types=draw(st.sampled_from(TUNNEL_TYPES)))
               for i, ip in enumerate(tunnel_ips)}
    hosts = draw(st.lists(st.integers(2, 254), min_size=NPORTS + 4, max_size=NPORTS + 4, unique=True))
    ports = {}
    for i, host in enumerate(hosts):
        ips = [f"10.0.0.{host}", f"fd00::{host:x}"] if draw(st.booleans()) else [f"10.0.0.{host}"]
        local = i < NPORTS
        pid = f"p{i}" if local else f"r{i - NPORTS}"
        ports[pid] = Port(id=pid, name=pid, network_id=draw(st.sampled_from(sorted(nets))), ips=ips,
                          mac=MACS[i] if local else REMOTE_MACS[i - NPORTS], unique_key=10 + i,
                          chassis="h" if local else draw(st.sampled_from(("c0", "c1", "", "gone"))))
    others = {"chassis": {"h": Chassis(id="h", tunnel_ip=TUNNEL_IP), **chassis}}
    return Topology("h", nets, ports, {f"p{i}" for i in range(NPORTS)}, others=others)


@st.composite
def placed_packets(draw, topo: Topology) -> dict[str, int]:
    """IP from a port to a port of its network (mostly: or any; a local one for an arrival), the broadcast or
    nobody's MAC: from a local port; from a remote one through the tunnel, keyed with its network's VNI (mostly:
    or another's, or nobody's); or through the uplink, tagged with its network's VLAN or untagged for the flat
    one (mostly: or as another's, or with nobody's). IPv6 when both ends have it, half the time."""
    origin = draw(st.sampled_from(("local port", "tunnel", "uplink")))
    remote = sorted(set(topo.ports) - topo.local_port_ids)
    overlay = [p for p in remote if topo.networks[topo.ports[p].network_id].network_type == "vxlan"]
    ids = {"local port": sorted(topo.local_port_ids), "tunnel": overlay or remote,
           "uplink": sorted(set(remote) - set(overlay)) or remote}[origin]
    src = topo.ports[draw(st.sampled_from(ids))]
    net = topo.networks[src.network_id]
    neighbours = topo.ports_of(net.id) if origin == "local port" else topo.local_ports_of(net.id)
    dst = topo.ports[draw(st.sampled_from([p.id for p in neighbours] if neighbours and draw(st.integers(0, 3))
                                          else sorted(topo.ports)))]
    dst_mac = _mac(dst.mac) if draw(st.integers(0, 3)) else draw(st.sampled_from((BROADCAST, _mac(NOBODYS_MAC))))
    head = {"in_port": src.unique_key}
    if origin == "tunnel":
        vnis = [n.vni for n in topo.networks.values() if n.vni] + [MAX_VNI]
        vni = net.vni if net.vni and draw(st.integers(0, 3)) else draw(st.sampled_from(vnis))
        head = {"in_port": ir.TUNNEL_PORTS["vxlan"], "tun_id": vni, "tun_src": _ip4("192.0.2.99")}
    elif origin == "uplink":
        tags = [n.vlan_id for n in topo.networks.values() if n.vlan_id] + [MAX_VLAN, None]
        vlan = net.vlan_id or None if net.physical_network and draw(st.integers(0, 3)) else draw(st.sampled_from(tags))
        head = {"in_port": ir.physnet_port(PHYSNET), **({} if vlan is None else {"vlan_vid": vlan})}
    version = 6 if all(len(p.ips) > 1 for p in (src, dst)) and draw(st.booleans()) else 4
    return {**head, "eth_src": _mac(src.mac), "eth_dst": dst_mac, **_addressed(src, dst, version),
            **draw(transports(ipv6=version == 6))}


def _where(copy: Copy) -> str:
    name, vlan, tunnel = copy
    if tunnel is not None:
        return "tunnel"
    if name == UPLINK:
        return "uplink tagged" if vlan is not None else "uplink untagged"
    return "local port"


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_ports_elsewhere_agree_with_ovs(ovs: Ovs, data: st.DataObject) -> None:
    """Each copy of a packet to, from or between ports on other chassis and behind the uplink: the port, the VLAN
    it is tagged with, the tunnel's key and destination, as in OVS."""
    topo = data.draw(placed_topologies())
    for chassis in topo.of("chassis").values():
        ovs.neighbour(chassis.tunnel_ip)
    pipeline, ports, names = _synced(ovs, topo)
    for _ in range(4):
        pkt = data.draw(placed_packets(topo))
        verdict = interpreter.run(pipeline, pkt)
        expected = _copies(verdict, names)
        assert sorted(ovs.trace_outputs(ovs_flow(pkt, ports)), key=str) == expected, pkt
        event(f"{_origin(pkt)}: {', '.join(sorted({_where(c) for c in expected})) or 'dropped'}")
