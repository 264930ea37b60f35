"""NVIDIA/Mellanox mlx5 (ConnectX-5, ConnectX-6 Dx, ConnectX-7, BlueField-2/3) in switchdev mode.

Every fact below names its public source. Kernel paths are of the upstream
tree (v6.1, the Debian 12 kernel): https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/
"""

from __future__ import annotations

from hwflow.offload.capabilities import (
    ACTION_CT,
    ACTION_DROP,
    ACTION_GOTO_CHAIN,
    ACTION_PASS,
    ACTION_REDIRECT,
    ACTION_REWRITE,
    ACTION_TTL_DEC,
    ACTION_TUNNEL_DECAP,
    ACTION_TUNNEL_ENCAP,
    ACTION_VLAN_POP,
    ACTION_VLAN_PUSH,
    MASK_ANY,
    MASK_EXACT,
    QUIRK_TUNNEL_UDP_DST_PORT,
    Capabilities,
    Conntrack,
    quirk,
)
from hwflow_drivers.base import Family, FamilyDriver

KERNEL = "https://git.kernel.org/pub/scm/linux/kernel/git/torvalds/linux.git/tree/drivers/net/ethernet/mellanox/mlx5/core"
PCI_IDS = "https://pci-ids.ucw.cz/read/PC/15b3"

# Matches: en_tc.c __parse_cls_flower() copies each flower key *and its mask* into the flow
# table entry's match criteria (FLOW_DISSECTOR_KEY_ETH_ADDRS, IPV4/IPV6_ADDRS, PORTS), so
# MACs, addresses and ports take arbitrary masks; BASIC gives n_proto and ip_proto, VLAN gives
# the outer VID, IP gives the TTL / hop limit with its mask as given: no exact-mask check, so a
# "TTL 0 or 1" rule (mask 0xfe) is accepted (when the firmware reports
# ft_field_support.outer_ipv4_ttl; every family below does). Source: {KERNEL}/en_tc.c
MATCH_FIELDS = {
    "eth_src": MASK_ANY, "eth_dst": MASK_ANY, "eth_type": MASK_EXACT, "vlan_vid": MASK_EXACT,
    "ip_proto": MASK_EXACT, "ip_ttl": MASK_ANY,
    "ipv4_src": MASK_ANY, "ipv4_dst": MASK_ANY, "ipv6_src": MASK_ANY, "ipv6_dst": MASK_ANY,
    "tcp_src": MASK_ANY, "tcp_dst": MASK_ANY, "udp_src": MASK_ANY, "udp_dst": MASK_ANY,
    # Tunnel (enc_*) keys: en/tc_tun.c mlx5e_tc_tun_parse() copies outer addresses with their
    # masks; the VNI / key id and the UDP port are taken whole (see the quirk below).
    "tun_id": MASK_EXACT, "tun_dst_port": MASK_EXACT,
    "tun_ipv4_src": MASK_ANY, "tun_ipv4_dst": MASK_ANY, "tun_ipv6_src": MASK_ANY, "tun_ipv6_dst": MASK_ANY,
}

# ICMP type and code: en_tc.c __parse_cls_flower() takes FLOW_DISSECTOR_KEY_ICMP for IPPROTO_ICMP and
# IPPROTO_ICMPV6 (misc_parameters_3 icmp_type/code, icmpv6_type/code) with the mask as given, when the
# firmware's flex_parser_protocols has MLX5_FLEX_PROTO_ICMP / MLX5_FLEX_PROTO_ICMPV6 (commit a3222a2da0a2
# "net/mlx5e: Allow to match on ICMP parameters", Linux 5.13). Software steering (steering/dr_matcher.c
# dr_matcher_supp_icmp_v4/v6) has it on every ConnectX-6 Dx and later; a ConnectX-5 only with a firmware
# flex-parser profile that enables it. Source: {KERNEL}/en_tc.c
# Not claimed yet, deliberately: with it the partitioner gives every IPv6 destination a rule per neighbor
# discovery and MLD type (the security groups let those bypass conntrack), which doubles the plan (partition
# bench at 1,000/10,000 with room: 95,000 -> 191,000 rules) and, at the working budget, takes room from data
# paths (shared chains reached 2,664 -> 1,793). Claim it ("icmp_type" and "icmp_code": MASK_ANY, ConnectX-6 Dx
# and later) when capacity goes to traffic by rank (issue 15).

# Actions: the FDB action parsers of en/tc/act/ (act.c tc_acts_fdb[]): drop.c, accept.c (pass),
# goto.c, mirred.c (redirect), vlan.c (push/pop; commit 8b32580df1cb "net/mlx5e: Add TC vlan
# action for SRIOV offloads"), tun.c (tunnel_key set/unset), pedit.c (header rewrite, including
# "add", which is how tc expresses a TTL decrement), ct.c. Source: {KERNEL}/en/tc/act/act.c
BASE_ACTIONS = frozenset({ACTION_REDIRECT, ACTION_DROP, ACTION_PASS, ACTION_GOTO_CHAIN, ACTION_VLAN_PUSH,
                          ACTION_VLAN_POP, ACTION_TUNNEL_ENCAP, ACTION_TUNNEL_DECAP, ACTION_REWRITE,
                          ACTION_TTL_DEC})

# Rewritable fields: the fields[] table of en_tc.c (OFFLOAD(...) rows: dmac, smac, ip4 ttl/saddr/
# daddr, ip6 hop_limit/saddr/daddr, tcp and udp ports). Source: {KERNEL}/en_tc.c
# The VLAN id too: en/tc/act/vlan_mangle.c offloads "vlan modify".
REWRITE_FIELDS = frozenset({"eth_src", "eth_dst", "ip_ttl", "ipv4_src", "ipv4_dst", "ipv6_src", "ipv6_dst",
                            "tcp_src", "tcp_dst", "udp_src", "udp_dst", "vlan_vid"})

# Conntrack: en/tc_ct.c (commit 4c3844d9e97e "net/mlx5e: CT: Introduce connection tracking")
# offloads ct with zones and NAT; mlx5_tc_ct_match_add() refuses matching ct_state +new, +rel
# and +inv ("matching on ct_state +new isn't supported"), so only trk, est and rpl can be matched.
# Source: {KERNEL}/en/tc_ct.c
CONNTRACK = Conntrack(states=frozenset({"trk", "est", "rpl"}), zones=True, nat=True)

# Quirk: en/tc_tun.c mlx5e_tc_tun_parse_udp_ports(): "UDP tunnel decap filter must include
# enc_dst_port condition" (EOPNOTSUPP), and the port mask must be full.
TUNNEL_PORT_QUIRK = quirk(QUIRK_TUNNEL_UDP_DST_PORT, f"{KERNEL}/en/tc_tun.c (mlx5e_tc_tun_parse_udp_ports)")

# Tunnels: en/tc_tun_vxlan.c, tc_tun_gre.c and tc_tun_geneve.c. Geneve needs the firmware's flex
# parser (MLX5_FLEX_PROTO_GENEVE in flex_parser_protocols, checked by
# mlx5e_tc_tun_can_offload_geneve()), which hwflow only claims for ConnectX-6 Dx and later.
TUNNELS_CX5 = frozenset({"vxlan", "gre"})
TUNNELS = frozenset({"vxlan", "geneve", "gre"})

# Chains: lib/fs_chains.c mlx5_chains_get_chain_range() returns UINT_MAX - 1 when the firmware
# supports ignore_flow_level (ConnectX-5 and later): no device limit below tc's own.
# Actions per rule: no mlx5 limit below tc's TCA_ACT_MAX_PRIO (32, include/uapi/linux/pkt_cls.h).
# Counters: every offloaded rule gets a flow counter read back on FLOW_CLS_STATS (fs_counters.c).
# Capacity: not published per family (FDB tables are sized by the firmware, log_max_ft_size);
# 65536 is hwflow's working budget, not a device limit: ENOSPC from the device still wins.
MAX_RULES = 65536
MAX_ACTIONS = 32


def _capabilities(tunnels: frozenset[str], conntrack: Conntrack | None) -> Capabilities:
    # ct_mark is matched through a register (en/tc_ct.c mlx5_tc_ct_match_add(): MARK_TO_REG), with its mask.
    ct_fields = {"ct_mark": MASK_ANY} if conntrack else {}
    return Capabilities(
        match_fields={**MATCH_FIELDS, **ct_fields},
        actions=BASE_ACTIONS | ({ACTION_CT} if conntrack else frozenset()),
        max_rules=MAX_RULES,
        max_actions_per_rule=MAX_ACTIONS,
        max_chains=None,
        counters=True,
        tunnel_encap=tunnels,
        tunnel_decap=tunnels,
        rewrite_fields=REWRITE_FIELDS,
        conntrack=conntrack,
        quirks=(TUNNEL_PORT_QUIRK,),
    )


# PCI device ids of the PFs (which own the eswitch and its representors), from the PCI ID
# repository {PCI_IDS}: 1017 MT27800 ConnectX-5, 1019 MT28800 ConnectX-5 Ex, 101d MT2892
# ConnectX-6 Dx, 1021 MT2910 ConnectX-7, a2d6 MT42822 BlueField-2 integrated ConnectX-6 Dx,
# a2dc MT43244 BlueField-3 integrated ConnectX-7.
# ConnectX-5 has no conntrack claimed: CT offload needs firmware reg_c preservation
# (en/tc_ct.c mlx5_tc_ct_init_check_esw_support()), which public documents promise from
# ConnectX-6 Dx on (NVIDIA DOCA "Virtual Switch on BlueField": connection tracking offload with
# SNAT and DNAT, https://docs.nvidia.com/doca/archive/3-0-0/virtual+switch+on+bluefield/index.html).
# `hwflow capabilities --probe` can confirm it on a given ConnectX-5.
FAMILIES = (
    Family("ConnectX-5", "mlx5-connectx5", frozenset({"15b3:1017", "15b3:1019"}),
           _capabilities(TUNNELS_CX5, None)),
    Family("ConnectX-6 Dx", "mlx5-connectx6dx", frozenset({"15b3:101d"}), _capabilities(TUNNELS, CONNTRACK)),
    Family("ConnectX-7", "mlx5-connectx7", frozenset({"15b3:1021"}), _capabilities(TUNNELS, CONNTRACK)),
    Family("BlueField-2", "mlx5-bluefield2", frozenset({"15b3:a2d6"}), _capabilities(TUNNELS, CONNTRACK)),
    Family("BlueField-3", "mlx5-bluefield3", frozenset({"15b3:a2dc"}), _capabilities(TUNNELS, CONNTRACK)),
)
FALLBACK = Family("mlx5 device of an unlisted family", "mlx5-connectx5", frozenset(),
                  _capabilities(TUNNELS_CX5, None))
"""An mlx5 device hwflow has no facts for gets what every mlx5 switchdev family has in common."""


class Mlx5Driver(FamilyDriver):
    name = "mlx5"
    kernel_drivers = frozenset({"mlx5_core"})
    families = FAMILIES
    fallback = FALLBACK
