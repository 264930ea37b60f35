"""Intel E810 (ice) in switchdev mode.

Every fact below names its public source: upstream kernel commits to
drivers/net/ethernet/intel/ice (https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/commit/?id=ID)
and the PCI ID repository.
"""

from __future__ import annotations

from hwflow.offload.capabilities import (
    ACTION_DROP,
    ACTION_REDIRECT,
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
# and FLOW_ACTION_REDIRECT". No goto (so one chain), no pedit, no vlan push/pop, no ct, and no
# tunnel_key: ice_eswitch_tc_parse_action takes drop and redirect only (../shared/notes/
# nic-offload-facts.md, section 7). Its tunnels (commits 9e300987d4a8, f0a35040adbe) are
# match-and-redirect: the outer headers are the rule's enc_* keys, with no tunnel_key action. hwflow
# encodes encap as tunnel_key set + redirect and decap as tunnel_key unset + redirect (to_flower), which
# ice refuses, so it claims no tunnel type until the encoder has ice's shape: its tunnels stay in OVS.
# Counters: ice_repr.c ice_repr_setup_tc_cls_flower() handles only FLOW_CLS_REPLACE and
# FLOW_CLS_DESTROY and answers -EINVAL to anything else, FLOW_CLS_STATS included: no hardware
# hit counters. Capacity: not published; 16384 is hwflow's working budget, not a device limit.
E810 = Capabilities(
    match_fields=MATCH_FIELDS,
    actions=frozenset({ACTION_REDIRECT, ACTION_DROP}),
    max_rules=16384,
    max_actions_per_rule=2,  # what the switch recipe takes; hwflow's rules here need one (drop or redirect)
    max_chains=1,
    counters=False,
)

# PCI device ids, from https://pci-ids.ucw.cz/read/PC/8086: 1591 E810-C backplane,
# 1592 E810-C QSFP, 1593 E810-C SFP, 159b E810-XXV SFP.
FAMILIES = (Family("E810", "ice-e810", frozenset({"8086:1591", "8086:1592", "8086:1593", "8086:159b"}), E810),)


class IceDriver(FamilyDriver):
    name = "ice"
    kernel_drivers = frozenset({"ice"})
    families = FAMILIES
    fallback = Family("ice device of an unlisted family", "ice-e810", frozenset(), E810)
