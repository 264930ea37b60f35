"""The NIC model of the equivalence tests agrees with the simulated NIC.

``nic_model`` (the NIC's side of every HW/SW equivalence test) is written from tc's documented behaviour,
apart from the partitioner's helpers; the simulated NIC (``hwflow.sim.eswitch``) is what the functional tests
and the demo forward packets with, and the VM tier holds its rules to a real kernel's flower. Here a compiled
host's plan (test_split_compiled's hosts and packets) is encoded as the agent encodes it (``to_flower``),
installed in a simulated eswitch with the profile it was planned for, and each packet from a VM, as a frame,
is classified by both: the rules that take it, chain after chain (the eswitch's counters say which), and where
it goes must agree. Up to a ``ct`` action: the simulated NIC does no conntrack and hands the packet to
software there, where the model's own tracker goes on (the functional tests show the simulated side).
"""

from __future__ import annotations

import ipaddress

from hypothesis import assume, event, given, settings
from hypothesis import strategies as st
from nic_model import aimed_at_rules, apply, lookup
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoReply, ICMPv6EchoRequest, ICMPv6ND_NS, IPv6
from scapy.layers.l2 import Dot1Q, Ether
from test_split_compiled import ETHERTYPES, PROFILES, TUN, Host, hosts, offload_of, packets

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc import netlink as nl
from hwflow.backends.tc.backend import Representor, TunnelEndpoint, to_flower
from hwflow.offload.partition import HwRule, Partitioner
from hwflow.pipeline import interpreter, ir
from hwflow.sim.eswitch import Eswitch
from hwflow.sim.profile import load_profile

FIRST_IFINDEX = 100
TUNNEL = TunnelEndpoint(local_ipv4=int(ipaddress.ip_address("192.0.2.100")), dst_port=4789)


def _frame(pkt: dict[str, int]) -> bytes:
    """The frame a VM sends for an IR packet (the fields flower sees)."""
    pkt = {"ipv4_src": 0, "ipv4_dst": 0, "ipv6_src": 0, "ipv6_dst": 0, "ip_proto": 6, "ip_ttl": 64, "tcp_src": 0,
           "tcp_dst": 0, "udp_src": 0, "udp_dst": 0, "icmp_type": 0, "icmp_code": 0, **pkt}  # aimed: a rule's terms
    frame = Ether(src=pkt["eth_src"].to_bytes(6, "big"), dst=pkt["eth_dst"].to_bytes(6, "big"))
    if "vlan_vid" in pkt:
        frame /= Dot1Q(vlan=pkt["vlan_vid"])
    if pkt["eth_type"] == ir.ETH_TYPE_IPV4:
        l3 = IP(src=str(ipaddress.IPv4Address(pkt["ipv4_src"])), dst=str(ipaddress.IPv4Address(pkt["ipv4_dst"])),
                ttl=pkt["ip_ttl"], proto=pkt["ip_proto"])
    else:
        l3 = IPv6(src=str(ipaddress.IPv6Address(pkt["ipv6_src"])), dst=str(ipaddress.IPv6Address(pkt["ipv6_dst"])),
                  hlim=pkt["ip_ttl"], nh=pkt["ip_proto"])
    proto = pkt["ip_proto"]
    if proto == 6:
        l4 = TCP(sport=pkt["tcp_src"], dport=pkt["tcp_dst"])
    elif proto == 17:
        l4 = UDP(sport=pkt["udp_src"], dport=pkt["udp_dst"])
    elif proto == 1:
        l4 = ICMP(type=pkt["icmp_type"], code=pkt["icmp_code"])
    elif pkt["icmp_type"] == 135 and "nd_target" in pkt:
        l4 = ICMPv6ND_NS(tgt=str(ipaddress.IPv6Address(pkt["nd_target"])))
    else:
        l4 = (ICMPv6EchoRequest if pkt["icmp_type"] == 128 else ICMPv6EchoReply)()
    return bytes(frame / l3 / l4)


def _model(rules: list[HwRule], pkt: dict[str, int]) -> tuple[list[HwRule], str]:
    """The rules the model takes the packet through, and how that ends: a port it leaves by, "drop", "pass" or
    "miss" (software), "ct" (where the simulated NIC stops)."""
    state, chain, taken = {"ct_state": 0, **pkt}, 0, []
    for _ in range(64):
        rule = lookup(rules, chain, state)
        if rule is None:
            return taken, "miss"
        taken.append(rule)
        if any(isinstance(a, ir.Conntrack) for a in rule.actions):
            return taken, "ct"
        if rule.drop:
            return taken, "drop"
        for action in rule.actions:
            apply(action, state, interpreter.ConnTracker())
        if rule.goto is None:
            return taken, f"port {rule.output}" if rule.output is not None else "pass"
        chain = rule.goto
    raise AssertionError(f"more than 64 gotos: {rules}")


def _install(sw: Eswitch, encoded: list[fl.FlowerRule]) -> None:
    for seq, rule in enumerate(encoded, 1):  # handle 0: the switch picks one, as the kernel does
        replies = [m for raw in sw.handle_request(fl.encode_newfilter(rule, seq)) for m in nl.split_messages(raw)]
        err, text = nl.decode_error(next(m for m in replies if m.type == nl.NLMSG_ERROR))
        assert err == 0, (rule, err, text)  # the plan was made for this profile: the NIC takes every rule


def _counters(sw: Eswitch, ifindex: int) -> dict[tuple, int]:
    return {_key(r): s.packets for r, s in sw.rules(ifindex)}


def _key(rule: fl.FlowerRule) -> tuple:
    """A rule as it is installed, but its handle (the switch picks it)."""
    return rule.chain, rule.prio, rule.protocol, rule.keys, rule.actions


@settings(max_examples=150, deadline=None)
@given(st.data(), hosts(), st.sampled_from(PROFILES))
def test_the_nic_model_takes_the_rules_the_simulated_nic_takes(data, host: Host, profile: str) -> None:
    assume(host.local)
    offload = offload_of(host, profile)
    plan = Partitioner(host.joins).plan(host.pipeline, offload, ETHERTYPES, {})
    reps = {port: Representor(FIRST_IFINDEX + i, "sim") for i, port in enumerate(sorted(offload))}
    sw = Eswitch("sim0", load_profile(profile), [rep.ifindex for rep in reps.values()])
    encoded: dict[int, dict[tuple, HwRule]] = {}
    for port in (p.unique_key for p in host.local):
        for rule in plan.rules_of(port):
            flower_rule = to_flower(rule, reps, 0, {TUN: TUNNEL})[1]
            encoded.setdefault(port, {})[_key(flower_rule)] = rule
            _install(sw, [flower_rule])
    drawn = [p for p in data.draw(st.lists(packets(host), min_size=3, max_size=8)) if p["in_port"] in encoded]
    assume(drawn)
    taken_by_nic = dropped = 0
    for pkt in [p for d in drawn for p in (d, *aimed_at_rules(plan, d))]:
        ifindex = reps[pkt["in_port"]].ifindex
        rules = plan.rules_of(pkt["in_port"])
        path, end = _model(rules, pkt)
        before = _counters(sw, ifindex)
        actions = sw.classify(ifindex, _frame(pkt))
        moved = {key for key, n in _counters(sw, ifindex).items() if n > before.get(key, 0)}
        by_key = encoded[pkt["in_port"]]
        modelled = {key for key, rule in by_key.items() if rule in path}
        if end == "ct":  # the simulated NIC goes on into the chain after ct without a state: only its catch-all
            after_ct = path[-1].goto
            moved = {key for key in moved if key[0] != after_ct}
        assert moved == modelled, (pkt, [by_key[k] for k in moved], path)
        redirect = next((a.ifindex for a in actions or () if isinstance(a, fl.Mirred) and a.redirect), None)
        if end.startswith("port"):
            assert redirect == reps[path[-1].output].ifindex, (pkt, actions, path)
            taken_by_nic += 1
        else:
            assert redirect is None, (pkt, actions, end)
        if end == "drop":  # the simulated NIC drops it too (and not for a miss in a chain: that moves no counter)
            assert actions is not None and actions[-1] == fl.Gact("drop"), (pkt, actions, path)
            dropped += 1
        elif actions is not None and actions[-1] == fl.Gact("drop"):
            assert end == "miss", (pkt, actions, end)  # mlx5's miss in a chain N > 0 (the model: lost)
    event(f"{profile}: {'a packet forwarded by both' if taken_by_nic else 'every packet left to software'}")
    event(f"{profile}: {'a packet dropped by both' if dropped else 'no packet dropped by a NIC rule'}")
