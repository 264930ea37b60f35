"""The simulated NIC's embedded switch: tc-flower rule tables, one per port, no I/O.

It answers the same netlink messages the kernel would (so hwflow's tc backend
cannot tell it from a real device except by transport), refuses what its
profile cannot do with the errno a real driver returns, and classifies frames
with tc semantics: chain 0 first, lowest prio number first, goto chain.
Its ports are the ifindexes it is given: the VFs' representors and, with
physical ports, their uplink representors and the tunnel devices (decap rules sit
on a tunnel device's ingress and match the outer headers' enc_* keys, as on
mlx5, whose flow-based vxlan/geneve devices play that part).
"""

from __future__ import annotations

import dataclasses
import errno
import logging
import random
import struct
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc import netlink as nl
from hwflow.backends.tc.probe import PROBE_CHAIN, PROBE_PRIO
from hwflow.offload.capabilities import CHAIN_MISS_CONTINUE
from hwflow.sim import admission
from hwflow.sim.profile import Profile
from hwflow.util.checksum import internet_checksum

LOG = logging.getLogger(__name__)
AUTO_PRIO = 0xC000  # the kernel's first automatically chosen prio (tcf_auto_prio)


class Refusal(Exception):
    """A request the device refuses; becomes an NLMSG_ERROR with extack text."""

    def __init__(self, err: int, message: str) -> None:
        super().__init__(message)
        self.errno = err
        self.message = message


@dataclasses.dataclass
class _Entry:
    rule: fl.FlowerRule
    installed: float
    lastused: float
    packets: int = 0
    bytes: int = 0


Key = tuple[int, int, int]  # chain, prio, handle


# --- frame parsing -------------------------------------------------------------

_ETH = struct.Struct("!6s6sH")
_IPV4 = struct.Struct("!BBxxxxHBBxx4s4s")  # ver/ihl, tos, flags/frag, ttl, proto, src, dst
_IPV6 = struct.Struct("!IxxBB16s16s")  # version/class/label, next header, hop limit, src, dst
_ARP = struct.Struct("!xxxxxxH6s4s6s4s")  # (Ethernet/IPv4) op, sha, spa, tha, tpa
_PORTS = struct.Struct("!HH")
_L4 = {fl.IPPROTO_TCP: "tcp", fl.IPPROTO_UDP: "udp", fl.IPPROTO_SCTP: "sctp"}
_ICMP = {(fl.ETH_P_IP, fl.IPPROTO_ICMP): "icmpv4", (fl.ETH_P_IPV6, fl.IPPROTO_ICMPV6): "icmpv6"}


def _parse_tags(frame: bytes, pkt: dict[str, int]) -> tuple[int, int]:
    """VLAN and QinQ tags into pkt (vlan_* outer, cvlan_* inner); (L3 offset, ethertype after the tags)."""
    offset, l3_type = _ETH.size, pkt["eth_type"]
    for prefix in ("vlan", "cvlan"):
        if l3_type not in fl.VLAN_PROTOCOLS or len(frame) < offset + 4:
            break
        tci, l3_type = struct.unpack_from("!HH", frame, offset)
        pkt.update({f"{prefix}_id": tci & 0xFFF, f"{prefix}_prio": tci >> 13, f"{prefix}_eth_type": l3_type})
        offset += 4
    return offset, l3_type


def _parse_l3(frame: bytes, offset: int, l3_type: int, pkt: dict[str, int]) -> int | None:
    """IPv4/IPv6/ARP fields into pkt; the L4 offset when the frame carries a first (or only) fragment."""
    if l3_type == fl.ETH_P_IP and len(frame) >= offset + _IPV4.size:
        ver_ihl, tos, frag, ttl, proto, s, d = _IPV4.unpack_from(frame, offset)
        pkt.update(ip_proto=proto, ip_tos=tos, ip_ttl=ttl, ipv4_src=int.from_bytes(s, "big"),
                   ipv4_dst=int.from_bytes(d, "big"))
        return offset + (ver_ihl & 0xF) * 4 if not frag & 0x1FFF else None  # only the first fragment has ports
    if l3_type == fl.ETH_P_IPV6 and len(frame) >= offset + _IPV6.size:
        head, proto, hops, s, d = _IPV6.unpack_from(frame, offset)
        pkt.update(ip_proto=proto, ip_tos=head >> 20 & 0xFF, ip_ttl=hops, ipv6_src=int.from_bytes(s, "big"),
                   ipv6_dst=int.from_bytes(d, "big"))
        return offset + _IPV6.size
    if l3_type in (fl.ETH_P_ARP, fl.ETH_P_RARP) and len(frame) >= offset + _ARP.size:
        op, sha, spa, tha, tpa = _ARP.unpack_from(frame, offset)
        pkt.update(arp_op=op & 0xFF, arp_sha=int.from_bytes(sha, "big"), arp_sip=int.from_bytes(spa, "big"),
                   arp_tha=int.from_bytes(tha, "big"), arp_tip=int.from_bytes(tpa, "big"))  # flower keeps op's low byte
    return None


def parse_frame(frame: bytes) -> dict[str, int] | None:
    """The flower-visible fields of an Ethernet frame; None for a runt.

    Only what the frame itself carries: the tunnel (enc_*) keys of a
    decapsulated frame come from its outer headers, which the caller passes to
    :meth:`Eswitch.classify` as ``meta``; conntrack keys are never here.
    """
    if len(frame) < _ETH.size:
        return None
    dst, src, eth_type = _ETH.unpack_from(frame)
    pkt = {"eth_dst": int.from_bytes(dst, "big"), "eth_src": int.from_bytes(src, "big"), "eth_type": eth_type}
    offset, l3_type = _parse_tags(frame, pkt)
    l4_offset = _parse_l3(frame, offset, l3_type, pkt)
    proto = pkt.get("ip_proto", -1)
    if l4_offset is None or len(frame) < l4_offset + _PORTS.size:
        return pkt
    l4, icmp = _L4.get(proto), _ICMP.get((l3_type, proto))
    if l4:
        pkt[f"{l4}_src"], pkt[f"{l4}_dst"] = _PORTS.unpack_from(frame, l4_offset)
    if icmp:
        pkt[f"{icmp}_type"], pkt[f"{icmp}_code"] = frame[l4_offset], frame[l4_offset + 1]
    if proto == fl.IPPROTO_TCP and len(frame) >= l4_offset + 14:
        pkt["tcp_flags"] = struct.unpack_from("!H", frame, l4_offset + 12)[0] & 0x0FFF
    return pkt


def rule_matches(rule: fl.FlowerRule, pkt: dict[str, Any]) -> bool:
    if rule.protocol != fl.ETH_P_ALL and pkt["eth_type"] != rule.protocol:
        return False
    for spec, value, mask in rule.keys.items():
        have = pkt.get(spec.field)
        if have is None or have & mask != value:
            return False
    return rule.keys.enc_opts is None or _options_match(rule.keys, pkt.get("enc_opts"))


def _options_match(keys: fl.FlowerKeys, have: bytes | None) -> bool:
    """Geneve options as flower compares them: the packet's option TLVs, as one blob, under the rule's mask.

    Each option is class, type, length (in 4-byte words), data; the blob must
    be as long as the rule's (the kernel's key holds the options' length too).
    """
    if have is None:
        return False
    want = b"".join(struct.pack("!HBB", o.opt_class, o.opt_type, len(o.data) // 4) + o.data
                    for o in keys.enc_opts or ())
    mask = b"".join(struct.pack("!HBB", m.opt_class, m.opt_type, 0xFF) + m.data for m in keys.enc_opts_mask or ())
    return len(have) == len(want) and all(h & m == w & m for h, w, m in zip(have, want, mask))


# --- header rewrites -------------------------------------------------------------
#
# What the simulated NIC's data plane does to a frame for vlan, pedit and csum
# actions, as the kernel's act_vlan, act_pedit and act_csum do. :func:`rewrite`
# returns None for the others: tunnel_key is the data plane's business (it
# encapsulates on the redirect to a tunnel device that follows it, see
# hwflow/sim/dataplane.py), and conntrack the sim cannot perform, so the data
# plane hands such a frame to software.

_CHECKSUM_AT = {fl.IPPROTO_TCP: 16, fl.IPPROTO_UDP: 6}  # checksum offset in the L4 header


def _layers(frame: bytes) -> tuple[int, int, int | None]:
    """(L3 offset, ethertype after the VLAN tags, L4 offset or None) of an Ethernet frame."""
    offset, l3_type = _ETH.size, struct.unpack_from("!H", frame, 12)[0]
    while l3_type in fl.VLAN_PROTOCOLS and len(frame) >= offset + 4:
        l3_type = struct.unpack_from("!H", frame, offset + 2)[0]
        offset += 4
    if l3_type == fl.ETH_P_IP and len(frame) >= offset + _IPV4.size:
        return offset, l3_type, offset + (frame[offset] & 0xF) * 4
    if l3_type == fl.ETH_P_IPV6 and len(frame) >= offset + _IPV6.size:
        return offset, l3_type, offset + _IPV6.size
    return offset, l3_type, None


def apply_vlan(action: fl.Vlan, frame: bytes) -> bytes:
    """Pop the outer tag (if any), push one, or set the outer tag's id and priority (keeping its DEI bit)."""
    tagged = len(frame) >= 18 and struct.unpack_from("!H", frame, 12)[0] in fl.VLAN_PROTOCOLS
    if action.action == "pop":
        return frame[:12] + frame[16:] if tagged else frame
    tci = action.prio << 13 | action.vid
    if action.action == "push":
        return frame[:12] + struct.pack("!HH", action.protocol, tci) + frame[12:]
    if not tagged:
        return frame
    dei = struct.unpack_from("!H", frame, 14)[0] & 0x1000
    return frame[:14] + struct.pack("!H", tci | dei) + frame[16:]


def apply_pedit(action: fl.Pedit, frame: bytes) -> bytes:
    """Each key's word: keep the mask's bits, then set (XOR) or add its value, as act_pedit does.

    act_pedit adds on the word read as a host-order (little-endian here) u32,
    so an "add" carries from lower to higher packet bytes; emulated exactly.
    A word past the end of the frame, or in a header the frame lacks, is left alone.
    """
    out = bytearray(frame)
    l3, _, l4 = _layers(frame)
    bases = {"eth": 0, "network": l3, "ip4": l3, "ip6": l3, "tcp": l4, "udp": l4}
    for key in action.keys:
        base = bases[key.htype]
        if base is None or base + key.offset + 4 > len(out):
            continue
        at = base + key.offset
        word = int.from_bytes(out[at:at + 4], "little")
        mask = int.from_bytes(key.mask.to_bytes(4, "big"), "little")
        value = int.from_bytes(key.value.to_bytes(4, "big"), "little")
        if key.cmd == "add":
            value = (word + value) & ~mask & 0xFFFFFFFF
        out[at:at + 4] = ((word & mask) ^ value).to_bytes(4, "little")
    return bytes(out)


def apply_csum(action: fl.Csum, frame: bytes) -> bytes:
    """Recompute the IPv4 header, TCP, UDP and ICMP checksums the action's flags name (IGMP, UDP-Lite, SCTP: no)."""
    l3, l3_type, l4 = _layers(frame)
    if l4 is None:
        return frame
    out = bytearray(frame)
    if l3_type == fl.ETH_P_IP:
        proto, total = out[l3 + 9], struct.unpack_from("!H", out, l3 + 2)[0]
        if action.flags & fl.TCA_CSUM_UPDATE_FLAG_IPV4HDR:
            out[l3 + 10:l3 + 12] = b"\0\0"
            out[l3 + 10:l3 + 12] = internet_checksum(bytes(out[l3:l4])).to_bytes(2, "big")
        length = min(total - (l4 - l3), len(out) - l4)
        pseudo = bytes(out[l3 + 12:l3 + 20]) + struct.pack("!BBH", 0, proto, length)
    else:
        proto, length = out[l3 + 6], min(struct.unpack_from("!H", out, l3 + 4)[0], len(out) - l4)
        pseudo = bytes(out[l3 + 8:l3 + 40]) + struct.pack("!IxxxB", length, proto)
    flag = {fl.IPPROTO_TCP: fl.TCA_CSUM_UPDATE_FLAG_TCP, fl.IPPROTO_UDP: fl.TCA_CSUM_UPDATE_FLAG_UDP,
            fl.IPPROTO_ICMP: fl.TCA_CSUM_UPDATE_FLAG_ICMP}.get(proto, 0)
    if not action.flags & flag or length < 8 or (proto == fl.IPPROTO_ICMP and l3_type != fl.ETH_P_IP):
        return bytes(out)
    at = l4 + _CHECKSUM_AT.get(proto, 2)
    out[at:at + 2] = b"\0\0"
    covered = bytes(out[l4:l4 + length])
    checksum = internet_checksum(covered if proto == fl.IPPROTO_ICMP else pseudo + covered)
    if proto == fl.IPPROTO_UDP and checksum == 0:
        checksum = 0xFFFF  # RFC 768: a computed 0 is sent as all ones
    out[at:at + 2] = checksum.to_bytes(2, "big")
    return bytes(out)


def rewrite(action: fl.FlowerAction, frame: bytes) -> bytes | None:
    """The frame after a header-changing action; None for an action the simulated NIC cannot perform."""
    if isinstance(action, fl.Vlan):
        return apply_vlan(action, frame)
    if isinstance(action, fl.Pedit):
        return apply_pedit(action, frame)
    if isinstance(action, fl.Csum):
        return apply_csum(action, frame)
    return None


def _is_dump(msg: nl.Message) -> bool:
    """NLM_F_DUMP shares its bits with NLM_F_EXCL|REPLACE: it only means dump on a GET."""
    return msg.type == fl.RTM_GETTFILTER and msg.flags & nl.NLM_F_DUMP == nl.NLM_F_DUMP


# --- the switch ----------------------------------------------------------------


REFUSAL_KINDS = ("EOPNOTSUPP", "ENOSPC", "echo")  # what an injected refusal is (see Eswitch.refuse_rate)


class Eswitch:
    """``refuse_rate``: fault injection (``hwflow-simnic --refuse-rate``). That share of the rule installs and
    replacements the switch would accept are refused instead, each at random (``refuse_seed``) one of
    :data:`REFUSAL_KINDS`: EOPNOTSUPP or ENOSPC as a driver that cannot take the rule, or the rule stored as
    asked but answered with an NLM_F_ECHO copy that differs from the request (an extra ``pass`` action), as a
    driver that silently changed what it stored would. Capability probes (hwflow.backends.tc.probe's chain
    and prio) are never refused: the faults are those of the rules, not of the device's description.
    ``injected`` counts them by kind."""

    def __init__(self, name: str, profile: Profile, ifindexes: Iterable[int],
                 clock: Callable[[], float] = time.monotonic, log: logging.Logger = LOG,
                 refuse_rate: float = 0.0, refuse_seed: int = 0) -> None:
        if not 0.0 <= refuse_rate <= 1.0:
            raise ValueError(f"refuse_rate {refuse_rate}: between 0 and 1")
        self.name = name
        self.refuse_rate = refuse_rate
        self._refuse_rng = random.Random(refuse_seed)
        self.injected: dict[str, int] = dict.fromkeys(REFUSAL_KINDS, 0)
        self.profile = profile
        self._tables: dict[int, dict[Key, _Entry]] = {i: {} for i in ifindexes}
        # (ifindex, chain, prio) -> that prio's entries, and their keys -> their (chain, prio, handle): adding a
        # rule looks at its own prio only, and finds a rule with the same keys without comparing every rule.
        self._groups: dict[tuple[int, int, int], dict[Key, _Entry]] = {}
        self._group_keys: dict[tuple[int, int, int], dict[fl.FlowerKeys, Key]] = {}
        self._sorted: dict[tuple[int, int], list[_Entry]] = {}
        self._clock = clock
        self._log = log
        self.lost_in_chain = 0  # packets dropped because they missed a chain software does not have

    @property
    def rule_count(self) -> int:
        return sum(len(t) for t in self._tables.values())

    def rules(self, ifindex: int) -> list[tuple[fl.FlowerRule, fl.RuleStats]]:
        now = self._clock()
        table = self._tables.get(ifindex, {})
        return [(table[k].rule, self._stats(table[k], now)) for k in sorted(table)]

    # --- data path -----------------------------------------------------------

    def classify(self, ifindex: int, frame: bytes,
                 meta: Mapping[str, Any] | None = None) -> list[fl.FlowerAction] | None:
        """Actions to apply to a frame entering the switch at ``ifindex`` (None: a miss, software's).

        ``ifindex`` is where tc would see the frame: a VF's representor for
        what the VF sent, port i's uplink representor for what came from its wire,
        a tunnel device for a tunnel packet from port 0's wire, whose inner frame
        is ``frame`` and whose outer headers are ``meta`` (flower's enc_* keys).

        After a goto chain, actions ending without a verdict yield a final ``Gact('pass')``: the rest is
        software's job. A miss in a chain N > 0 does what the profile's ``chain_miss`` says: software from
        chain 0 (a ``pass``), or, as mlx5 does, software tc at chain N, where a hardware-only rule set has
        nothing, so the packet is dropped (``Gact('drop')``, counted in ``lost_in_chain``).
        """
        pkt: dict[str, Any] | None = parse_frame(frame)
        if pkt is None or ifindex not in self._tables:
            return None
        if meta:
            pkt.update(meta)
        chain = 0
        applied: list[fl.FlowerAction] = []
        while True:
            entry = next((e for e in self._chain(ifindex, chain) if rule_matches(e.rule, pkt)), None)
            if entry is None:
                if not chain:
                    return None
                if self.profile.capabilities.chain_miss == CHAIN_MISS_CONTINUE and not any(
                        isinstance(a, fl.Ct) for a in applied):  # a ct the sim does not do: software took it there
                    self.lost_in_chain += 1
                    return [fl.Gact("drop")]
                return applied + [fl.Gact("pass")]
            entry.packets += 1
            entry.bytes += len(frame)
            entry.lastused = self._clock()
            goto = None
            for action in entry.rule.actions:
                if isinstance(action, fl.Gact) and action.verdict == "goto_chain":
                    goto = action.chain
                    break
                applied.append(action)
                if isinstance(action, fl.Gact) or isinstance(action, fl.Mirred) and action.redirect:
                    return applied
            if goto is None:
                return applied + [fl.Gact("pass")]
            chain = goto

    def _chain(self, ifindex: int, chain: int) -> list[_Entry]:
        key = (ifindex, chain)
        if key not in self._sorted:
            table = self._tables[ifindex]
            self._sorted[key] = [table[k] for k in sorted(table) if k[0] == chain]
        return self._sorted[key]

    # --- control path --------------------------------------------------------

    def handle_request(self, data: bytes) -> list[bytes]:
        """Replies (one netlink message each) to the messages in one datagram."""
        try:
            messages = nl.split_messages(data)
        except nl.NetlinkDecodeError as exc:
            self._log.warning("simnic %s: dropped a malformed datagram: %s", self.name, exc)
            return []
        replies: list[bytes] = []
        for msg in messages:
            try:
                out = self._dispatch(msg)
            except Refusal as exc:
                replies.append(nl.encode_error(msg, -exc.errno, exc.message))
                continue
            except (ValueError, struct.error, IndexError, KeyError) as exc:  # a header or attribute cut short
                self._log.info("simnic %s: refused a malformed request (type %d): %s", self.name, msg.type, exc)
                replies.append(nl.encode_error(msg, -errno.EINVAL, f"simnic {self.name}: malformed request: {exc}"))
                continue
            replies.extend(out)
            if msg.flags & nl.NLM_F_ACK and not _is_dump(msg):
                replies.append(nl.encode_error(msg, 0))
        return replies

    def _dispatch(self, msg: nl.Message) -> list[bytes]:
        if msg.type == fl.RTM_NEWTFILTER:
            return self._new(msg)
        if msg.type == fl.RTM_DELTFILTER:
            return self._delete(msg)
        if msg.type == fl.RTM_GETTFILTER:
            return self._get(msg)
        raise Refusal(errno.EOPNOTSUPP, f"simnic {self.name}: netlink message type {msg.type} "
                      "is not supported")

    def _table(self, header: fl.TcHeader) -> dict[Key, _Entry]:
        table = self._tables.get(header.ifindex)
        if table is None:
            raise Refusal(errno.ENODEV, f"simnic {self.name}: no representor with ifindex {header.ifindex}")
        if header.parent != fl.INGRESS:
            raise Refusal(errno.EOPNOTSUPP, f"simnic {self.name}: parent {header.parent:#x} is not supported "
                          f"by profile {self.profile.name}; only ingress ({fl.INGRESS:#x})")
        return table

    def _unsupported(self, what: str) -> Refusal:
        return Refusal(errno.EOPNOTSUPP,
                       f"simnic {self.name}: {what} is not supported by profile {self.profile.name}")

    def _decode(self, msg: nl.Message) -> fl.FlowerRule:
        try:
            rule, _ = fl.decode_filter_message(msg)
        except fl.FlowerUnsupported as exc:
            raise self._unsupported(str(exc)) from exc
        except ValueError as exc:
            raise Refusal(errno.EINVAL, f"simnic {self.name}: bad filter message: {exc}") from exc
        return rule

    def _check_profile(self, rule: fl.FlowerRule) -> None:
        try:
            admission.check(rule, self.profile.capabilities, self._tables)
        except admission.NotAdmitted as exc:
            raise self._unsupported(exc.what) from exc

    def _new(self, msg: nl.Message) -> list[bytes]:
        rule = self._decode(msg)
        table = self._table(fl.decode_tcmsg(msg.payload))
        if rule.prio == 0:
            if not msg.flags & nl.NLM_F_CREATE:
                raise Refusal(errno.ENOENT, f"simnic {self.name}: prio 0 needs NLM_F_CREATE")
            prios = [k[1] for k in table if k[0] == rule.chain]
            rule = dataclasses.replace(rule, prio=min(prios) - 1 if prios else AUTO_PRIO)
        group = self._groups.get((rule.ifindex, rule.chain, rule.prio), {})
        if group and next(iter(group.values())).rule.protocol != rule.protocol:  # one protocol per prio
            raise Refusal(errno.EINVAL, f"simnic {self.name}: prio {rule.prio} in chain {rule.chain} already "
                          "holds rules of another protocol")
        if rule.handle == 0:
            used = {k[2] for k in group}
            rule = dataclasses.replace(rule, handle=next(h for h in range(1, len(used) + 2) if h not in used))
        key = (rule.chain, rule.prio, rule.handle)
        if key in table and msg.flags & nl.NLM_F_EXCL:
            raise Refusal(errno.EEXIST, f"simnic {self.name}: {rule.describe()} already exists")
        if key not in table and not msg.flags & nl.NLM_F_CREATE:
            raise Refusal(errno.ENOENT, f"simnic {self.name}: {rule.describe()} does not exist "
                          "(and no NLM_F_CREATE)")
        group_key = (rule.ifindex, rule.chain, rule.prio)
        if self._group_keys.get(group_key, {}).get(rule.keys, key) != key:
            raise Refusal(errno.EEXIST, f"simnic {self.name}: prio {rule.prio} already has a rule "
                          "with these keys")
        try:
            self._check_profile(rule)
        except Refusal as exc:
            self._log.info("simnic %s: refused %s: %s", self.name, rule.describe(), exc.message)
            raise
        if key not in table and self.rule_count >= self.profile.capabilities.max_rules:
            self._log.info("simnic %s: refused %s: table full", self.name, rule.describe())
            raise Refusal(errno.ENOSPC, f"simnic {self.name}: rule table full "
                          f"({self.profile.capabilities.max_rules} rules, profile {self.profile.name})")
        injected = self._inject(rule)
        now = self._clock()
        replaced = key in table
        group_keys = self._group_keys.setdefault(group_key, {})
        if replaced:
            del group_keys[table[key].rule.keys]
        table[key] = self._groups.setdefault(group_key, {})[key] = _Entry(rule, now, now)
        group_keys[rule.keys] = key
        self._sorted.clear()
        self._log.info("simnic %s: %s %s", self.name, "replaced" if replaced else "added", rule.describe())
        if msg.flags & nl.NLM_F_ECHO:
            echoed = dataclasses.replace(rule, actions=(*rule.actions, fl.Gact("pass"))) if injected else rule
            return [fl.encode_filter(echoed, fl.RTM_NEWTFILTER, msg.flags, msg.seq,
                                     status_flags=fl.TCA_CLS_FLAGS_IN_HW)]
        return []

    def _inject(self, rule: fl.FlowerRule) -> bool:
        """With ``refuse_rate``: maybe refuse a rule the switch would take (raises), or answer it with an echo
        that differs (True)."""
        if not self.refuse_rate or rule.chain == PROBE_CHAIN or rule.prio == PROBE_PRIO:
            return False
        if self._refuse_rng.random() >= self.refuse_rate:
            return False
        kind = self._refuse_rng.choice(REFUSAL_KINDS)
        self.injected[kind] += 1
        self._log.info("simnic %s: injected refusal (%s) of %s", self.name, kind, rule.describe())
        if kind == "EOPNOTSUPP":
            raise Refusal(errno.EOPNOTSUPP, f"simnic {self.name}: {rule.describe()} refused (injected fault)")
        if kind == "ENOSPC":
            raise Refusal(errno.ENOSPC, f"simnic {self.name}: no room for {rule.describe()} (injected fault)")
        return True

    def _delete(self, msg: nl.Message) -> list[bytes]:
        header = fl.decode_tcmsg(msg.payload)
        table = self._table(header)
        attrs = nl.attr_map(msg.payload[fl.TCMSG.size:])
        chain = nl.get_u32(attrs[fl.TCA_CHAIN]) if fl.TCA_CHAIN in attrs else 0
        if header.prio == 0:  # the kernel flushes the whole chain
            doomed = [k for k in table if k[0] == chain]
        elif header.handle == 0:  # ... or the whole prio
            doomed = [k for k in table if k[:2] == (chain, header.prio)]
        else:
            doomed = [k for k in [(chain, header.prio, header.handle)] if k in table]
        if not doomed and header.prio:
            raise Refusal(errno.ENOENT, f"simnic {self.name}: no rule chain {chain} prio {header.prio} "
                          f"handle {header.handle} on ifindex {header.ifindex}")
        for key in doomed:
            self._log.info("simnic %s: deleted %s", self.name, table.pop(key).rule.describe())
            group_key = (header.ifindex, *key[:2])
            del self._group_keys[group_key][self._groups[group_key].pop(key).rule.keys]
            if not self._groups[group_key]:
                del self._groups[group_key], self._group_keys[group_key]
        self._sorted.clear()
        return []

    def _get(self, msg: nl.Message) -> list[bytes]:
        header = fl.decode_tcmsg(msg.payload)
        table = self._table(header)
        attrs = nl.attr_map(msg.payload[fl.TCMSG.size:])
        chain = nl.get_u32(attrs[fl.TCA_CHAIN]) if fl.TCA_CHAIN in attrs else None
        now = self._clock()
        if _is_dump(msg):
            out = [fl.encode_filter(table[k].rule, fl.RTM_NEWTFILTER, nl.NLM_F_MULTI, msg.seq,
                                    self._stats(table[k], now) if self._counters else None, fl.TCA_CLS_FLAGS_IN_HW)
                   for k in sorted(table) if chain is None or k[0] == chain]
            return out + [nl.encode_done(msg.seq, msg.pid)]
        entry = table.get((chain or 0, header.prio, header.handle))
        if entry is None:
            raise Refusal(errno.ENOENT, f"simnic {self.name}: no rule prio {header.prio} "
                          f"handle {header.handle} on ifindex {header.ifindex}")
        return [fl.encode_filter(entry.rule, fl.RTM_NEWTFILTER, 0, msg.seq,
                                 self._stats(entry, now) if self._counters else None,
                                 fl.TCA_CLS_FLAGS_IN_HW)]

    @property
    def _counters(self) -> bool:
        """A device without hardware counters (E810) reports no per-rule stats, as its driver does."""
        return self.profile.capabilities.counters

    @staticmethod
    def _stats(entry: _Entry, now: float) -> fl.RuleStats:
        return fl.RuleStats(entry.packets, entry.bytes, int((now - entry.lastused) * 1000))
