"""Real packets through the encoder's rewriting actions: routed MAC rewrite + TTL, VLAN, VXLAN, conntrack.

Each scenario builds namespaces around two representor stand-ins (veths),
installs hwflow-encoded rules (``skip_hw``) with hwflow's TcClient, pings,
and checks both that the traffic arrived changed as the actions say (the
receiver only accepts its own MAC, its VLAN, its tunnel; the TTL it reports)
and that every rule's counter shows the packets sent. The partitioner and
``to_flower`` emit redirects only today; when they emit these actions from
a compiled pipeline, these scenarios are where that path gets checked.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Sequence

from hil.checks import host
from hil.suite import Check, CheckFailed
from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.transport import KernelTransport, TcClient

PINGS = 4
ROUTER_MAC = 0x020000AAAA01
IP4_TOTAL_PROTO = fl.TCA_CSUM_UPDATE_FLAG_IPV4HDR


def ip(text: str) -> int:
    return int(ipaddress.ip_address(text))


def mac_text(mac: int) -> str:
    return ":".join(f"{mac:012x}"[i:i + 2] for i in range(0, 12, 2))


@dataclasses.dataclass(frozen=True)
class Host:
    """A namespace whose ``eth0`` is the peer of ``rep`` (root namespace)."""

    netns: str
    rep: str

    def up(self, address: str) -> None:
        host.sh("ip", "netns", "del", self.netns, check=False)
        host.delete_link(self.rep)
        host.sh("ip", "netns", "add", self.netns)
        host.veth(self.rep, "eth0", self.netns)
        self.run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1")
        self.run("ip", "addr", "add", address, "dev", "eth0")
        host.clsact(self.rep)

    def run(self, *cmd: str, check: bool = True) -> str:
        return host.sh("ip", "netns", "exec", self.netns, *cmd, check=check)

    def mac(self, dev: str = "eth0") -> int:
        return host.mac_of(dev, self.netns)

    def neighbour(self, address: str, mac: int, dev: str = "eth0") -> None:
        self.run("ip", "neigh", "replace", address, "lladdr", mac_text(mac), "dev", dev, "nud", "permanent")

    def ping(self, address: str, count: int = PINGS) -> str:
        """ping's output; a run that lost packets fails the check with it."""
        out = self.run("ping", "-n", "-c", str(count), "-i", "0.2", "-W", "2", address, check=False)
        if f"{count} received" not in out:
            raise CheckFailed(f"ping {self.netns} -> {address} lost packets: {out.strip().splitlines()[-2:]}")
        return out

    def down(self) -> None:
        host.sh("ip", "netns", "del", self.netns, check=False)
        host.delete_link(self.rep)


def install(client: TcClient, rules: Sequence[fl.FlowerRule]) -> None:
    errors = [e for e in client.add(rules) if e is not None]
    if errors:
        raise CheckFailed(f"the kernel refused: {'; '.join(map(str, errors))}")


def expect_counts(client: TcClient, expected: dict[str, dict[tuple[int, int], int]]) -> None:
    """{device: {(chain, prio): packets}} against the counters the kernel dumps."""
    seen: dict[str, dict[tuple[int, int], int]] = {}
    for dev in expected:
        seen[dev] = {(r.chain, r.prio): s.packets if s else -1 for r, s in client.dump(host.ifindex(dev))}
    if seen != expected:
        raise CheckFailed(f"rule counters {seen}, expected {expected}")


def routed(client: TcClient, a: Host, b: Host) -> None:
    """A router in rules: rewrite both MACs, decrement the TTL (pedit add 0xff), fix the checksum, redirect."""
    a.up("10.1.0.1/24")
    b.up("10.2.0.1/24")
    for h, gw, other in ((a, "10.1.0.254", "10.2.0.0/24"), (b, "10.2.0.254", "10.1.0.0/24")):
        h.neighbour(gw, ROUTER_MAC)
        h.run("ip", "route", "add", other, "via", gw)

    def hop(src: Host, dst: Host, to: str) -> fl.FlowerRule:
        rewrite = fl.Pedit(fl.pedit_set("eth", 0, dst.mac().to_bytes(6, "big") + ROUTER_MAC.to_bytes(6, "big"))
                           + fl.pedit_set("ip4", 8, b"\xff", "add"))
        return fl.FlowerRule(host.ifindex(src.rep), 1, 1, fl.ETH_P_IP,
                             fl.FlowerKeys(eth_dst=ROUTER_MAC, ipv4_dst=ip(to)),
                             (rewrite, fl.Csum(IP4_TOTAL_PROTO), fl.Mirred(host.ifindex(dst.rep))),
                             flags=fl.TCA_CLS_FLAGS_SKIP_HW)

    install(client, [hop(a, b, "10.2.0.1"), hop(b, a, "10.1.0.1")])
    out = a.ping("10.2.0.1")
    if "ttl=63" not in out:
        raise CheckFailed(f"the reply's TTL was not decremented once (expected ttl=63): {out.splitlines()[1:2]}")
    expect_counts(client, {a.rep: {(0, 1): PINGS}, b.rep: {(0, 1): PINGS}})


def vlan(client: TcClient, a: Host, b: Host) -> None:
    """A untagged, B on VLAN 100: push on the way in, pop on the way back."""
    a.up("10.3.0.1/24")
    b.up("10.3.0.99/32")  # eth0 itself carries no traffic; B talks on eth0.100
    b.run("ip", "link", "add", "link", "eth0", "name", "eth0.100", "type", "vlan", "id", "100")
    b.run("ip", "addr", "add", "10.3.0.2/24", "dev", "eth0.100")
    b.run("ip", "link", "set", "eth0.100", "up")
    a.neighbour("10.3.0.2", b.mac("eth0.100"))
    b.neighbour("10.3.0.1", a.mac(), "eth0.100")
    ra, rb = host.ifindex(a.rep), host.ifindex(b.rep)
    install(client, [
        fl.FlowerRule(ra, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(), (fl.Vlan("push", 100), fl.Mirred(rb)),
                      flags=fl.TCA_CLS_FLAGS_SKIP_HW),
        fl.FlowerRule(rb, 1, 1, fl.ETH_P_8021Q, fl.FlowerKeys(vlan_id=100), (fl.Vlan("pop"), fl.Mirred(ra)),
                      flags=fl.TCA_CLS_FLAGS_SKIP_HW),
    ])
    a.ping("10.3.0.2")
    expect_counts(client, {a.rep: {(0, 1): PINGS}, b.rep: {(0, 1): PINGS}})


def vxlan(client: TcClient, a: Host, c: Host) -> None:
    """A's traffic into an ``external`` vxlan device by tunnel_key set; C's VTEP answers; decap by enc keys."""
    a.up("10.4.0.1/24")
    c.up("192.168.77.2/24")  # C's eth0 is the underlay; its VTEP is vxlan42
    host.sh("ip", "addr", "add", "192.168.77.1/24", "dev", c.rep)
    host.delete_link("hilvx0")
    host.sh("ip", "link", "add", "hilvx0", "type", "vxlan", "external", "dstport", "4789")
    host.sh("ip", "link", "set", "hilvx0", "up")
    host.clsact("hilvx0")
    c.run("ip", "link", "add", "vxlan42", "type", "vxlan", "id", "42", "remote", "192.168.77.1",
          "local", "192.168.77.2", "dstport", "4789")
    c.run("ip", "addr", "add", "10.4.0.2/24", "dev", "vxlan42")
    c.run("ip", "link", "set", "vxlan42", "up")
    a.neighbour("10.4.0.2", c.mac("vxlan42"))
    c.neighbour("10.4.0.1", a.mac(), "vxlan42")
    ra, vx = host.ifindex(a.rep), host.ifindex("hilvx0")
    encap = fl.TunnelKey(ipv4_src=ip("192.168.77.1"), ipv4_dst=ip("192.168.77.2"), key_id=42, dst_port=4789)
    install(client, [
        fl.FlowerRule(ra, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(), (encap, fl.Mirred(vx)), flags=fl.TCA_CLS_FLAGS_SKIP_HW),
        fl.FlowerRule(vx, 1, 1, fl.ETH_P_IP, fl.FlowerKeys(enc_key_id=42, enc_ipv4_src=ip("192.168.77.2")),
                      (fl.TunnelKey(unset=True), fl.Mirred(ra)), flags=fl.TCA_CLS_FLAGS_SKIP_HW),
    ])
    try:
        a.ping("10.4.0.2")
        expect_counts(client, {a.rep: {(0, 1): PINGS}, "hilvx0": {(0, 1): PINGS}})
    finally:
        host.delete_link("hilvx0")


def conntrack(client: TcClient, a: Host, b: Host) -> None:
    """A ct chain: untracked -> ct zone 5 -> chain 1; +new from A is committed, +est both ways; B cannot open."""
    a.up("10.5.0.1/24")
    b.up("10.5.0.2/24")
    a.neighbour("10.5.0.2", b.mac())
    b.neighbour("10.5.0.1", a.mac())
    ra, rb = host.ifindex(a.rep), host.ifindex(b.rep)
    trk, new, est = (fl.TCA_FLOWER_KEY_CT_FLAGS_TRACKED, fl.TCA_FLOWER_KEY_CT_FLAGS_NEW,
                     fl.TCA_FLOWER_KEY_CT_FLAGS_ESTABLISHED)
    sw = fl.TCA_CLS_FLAGS_SKIP_HW

    def rule(dev: int, chain: int, prio: int, state: int, mask: int, actions: tuple) -> fl.FlowerRule:
        return fl.FlowerRule(dev, prio, prio, fl.ETH_P_IP, fl.FlowerKeys(ct_state=state, ct_state_mask=mask),
                             actions, chain=chain, flags=sw)

    install(client, [
        rule(ra, 0, 1, 0, trk, (fl.Ct(zone=5), fl.Gact("goto_chain", 1))),
        rule(ra, 1, 2, trk | new, trk | new, (fl.Ct(zone=5, commit=True), fl.Mirred(rb))),
        rule(ra, 1, 3, trk | est, trk | est, (fl.Mirred(rb),)),
        rule(rb, 0, 1, 0, trk, (fl.Ct(zone=5), fl.Gact("goto_chain", 1))),
        rule(rb, 1, 3, trk | est, trk | est, (fl.Mirred(ra),)),
    ])
    a.ping("10.5.0.2")
    expect_counts(client, {a.rep: {(0, 1): PINGS, (1, 2): 1, (1, 3): PINGS - 1},
                           b.rep: {(0, 1): PINGS, (1, 3): PINGS}})
    try:
        b.ping("10.5.0.1", 1)
    except CheckFailed:
        return
    raise CheckFailed("B opened a connection to A although only A's side commits new connections")


SCENARIOS: tuple[tuple[str, Callable[[TcClient, Host, Host], None]], ...] = (
    ("routed: MAC rewrite and TTL decrement (pedit + csum)", routed),
    ("VLAN push and pop", vlan),
    ("VXLAN encap to an external vxlan device (tunnel_key) and decap (enc keys)", vxlan),
    ("conntrack chain: ct zone, goto chain, commit, +est", conntrack),
)


def run(scenario: Callable[[TcClient, Host, Host], None]) -> None:
    a, b = Host("hilxa", "hilxra"), Host("hilxb", "hilxrb")
    client = TcClient(KernelTransport(), timeout=10.0)
    try:
        scenario(client, a, b)
    finally:
        client.close()
        a.down()
        b.down()


def checks() -> list[Check]:
    return [Check(f"packets {name}", lambda s=scenario: run(s)) for name, scenario in SCENARIOS]
