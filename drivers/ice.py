"""Intel E810 (ice) in switchdev mode.

Every fact below names its public source: upstream kernel commits to
drivers/net/ethernet/intel/ice (https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/commit/?id=ID)
and the PCI ID repository.
"""

from __future__ import annotations

from hwflow.offload.capabilities import (
    ACTION_DROP,
    ACTION_REDIRECT,
    ACTION_TUNNEL_DECAP,
    ACTION_TUNNEL_ENCAP,
    MASK_EXACT,
    MASK_PREFIX,
    Capabilities,
)
from hwflow_drivers.base import Family, FamilyDriver

# Matches: commit 0d08a441fb1a "ice: ndo_setup_tc implementation for PF": src/dst MAC,
# ethertype, VLAN, and L3 / L3+L4 filters on IPv4 and IPv6 addresses and ports, in switchdev
# mode. Masks: MACs and ports are taken whole (hwflow claims exact only); address masks are
# passed to the switch recipe as given, and hwflow claims CIDR prefixes, which the probe confirms.
MATCH_FIELDS = {
    "eth_src": MASK_EXACT, "eth_dst": MASK_EXACT, "eth_type": MASK_EXACT, "vlan_vid": MASK_EXACT,
    "ip_proto": MASK_EXACT,
    "ipv4_src": MASK_PREFIX, "ipv4_dst": MASK_PREFIX, "ipv6_src": MASK_PREFIX, "ipv6_dst": MASK_PREFIX,
    "tcp_src": MASK_EXACT, "tcp_dst": MASK_EXACT, "udp_src": MASK_EXACT, "udp_dst": MASK_EXACT,
    # Tunnel (enc_*) keys, commit 9e300987d4a8: "outer MACs, outer IPs, outer destination port and VNI";
    # claimed whole only.
    "tun_id": MASK_EXACT, "tun_dst_port": MASK_EXACT,
    "tun_ipv4_src": MASK_EXACT, "tun_ipv4_dst": MASK_EXACT, "tun_ipv6_src": MASK_EXACT, "tun_ipv6_dst": MASK_EXACT,
}

# Actions: the same commit: "Two types of actions are supported at the moment: FLOW_ACTION_DROP
# and FLOW_ACTION_REDIRECT". No goto (so one chain), no pedit, no vlan push/pop, no ct.
# Tunnels: commit 9e300987d4a8 "ice: VXLAN and Geneve TC support" (decap on the tunnel device,
# encap by redirecting from a representor to it) and commit f0a35040adbe "ice: support for GRE
# in eswitch".
TUNNELS = frozenset({"vxlan", "geneve", "gre"})

# Counters: ice_repr.c ice_repr_setup_tc_cls_flower() handles only FLOW_CLS_REPLACE and
# FLOW_CLS_DESTROY and answers -EINVAL to anything else, FLOW_CLS_STATS included: no hardware
# hit counters. Capacity: not published; 16384 is hwflow's working budget, not a device limit.
E810 = Capabilities(
    match_fields=MATCH_FIELDS,
    actions=frozenset({ACTION_REDIRECT, ACTION_DROP, ACTION_TUNNEL_ENCAP, ACTION_TUNNEL_DECAP}),
    max_rules=16384,
    max_actions_per_rule=2,  # a tunnel_key action followed by its redirect
    max_chains=1,
    counters=False,
    tunnel_encap=TUNNELS,
    tunnel_decap=TUNNELS,
)

# PCI device ids, from https://pci-ids.ucw.cz/read/PC/8086: 1591 E810-C backplane,
# 1592 E810-C QSFP, 1593 E810-C SFP, 159b E810-XXV SFP.
FAMILIES = (Family("E810", "ice-e810", frozenset({"8086:1591", "8086:1592", "8086:1593", "8086:159b"}), E810),)


class IceDriver(FamilyDriver):
    name = "ice"
    kernel_drivers = frozenset({"ice"})
    families = FAMILIES
    fallback = Family("ice device of an unlisted family", "ice-e810", frozenset(), E810)
