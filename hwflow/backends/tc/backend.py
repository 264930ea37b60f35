"""Keep the NIC's tc-flower rules equal to the partitioner's hardware rules.

Desired state in, minimal change out: rules are compared by what they match
(chain, priority, protocol, keys: :func:`identity`), and only the difference
is sent. The backend holds in memory, per representor, the rules installed
(with their handles) and the rules desired, as the last plan and apply left
them, so an ordinary change is planned from memory (:meth:`TcBackend.plan_delta`)
without a dump; the full :meth:`TcBackend.plan` dumps every representor (start,
repair timer), refreshes memory and counts as *repairs* the rules where the
dump disagreed with it. A restart therefore re-adds nothing and resets no
counter. Applying is split in two halves so the agent can order them around
the OVS update (make-before-break): stale rules leave the NIC before OVS
changes (:meth:`TcBackend.remove`), new rules arrive after OVS has the flows
that back them (:meth:`TcBackend.install`).

Drop rules are ordered so that no state of a change drops what either
datapath passes (:meth:`TcDiff.break_drops`): a drop that is to go, or to
do something else, leaves in the first half (a replace becomes a delete
then, and the new rule an add in the second half); so does a drop that
stays but whose packets a change in front of it may send elsewhere (a rule
added or deleted at a lower priority of its chain, or on the way to it):
it is added again in the second half, after the rules in front. Until it
is back its packets go to software, which decides them as it decides
everything.
"""

from __future__ import annotations

import collections
import dataclasses
import errno
import logging
from collections.abc import Callable, Iterable, Mapping

from hwflow.backends.tc import flower
from hwflow.backends.tc.probe import PROBE_CHAIN, PROBE_PRIO
from hwflow.backends.tc.transport import KernelTransport, SimSocketTransport, TcClient, TcError
from hwflow.offload.partition import HwRule
from hwflow.pipeline import ir

LOG = logging.getLogger(__name__)

PRIO_BASE = 1
PROTOCOL_SLOT = {ir.ETH_TYPE_IPV4: 0, ir.ETH_TYPE_IPV6: 1, ir.ETH_TYPE_ARP: 2}
SLOTS = 4  # prio = base + level * SLOTS + slot: tc wants one protocol per priority

TC_FLAGS = {"skip_sw": flower.TCA_CLS_FLAGS_SKIP_SW, "skip_hw": flower.TCA_CLS_FLAGS_SKIP_HW, "none": 0}

# IR field -> (FlowerKeys field, FlowerKeys mask field or None for exact-only keys)
_KEYS = {
    "eth_dst": ("eth_dst", "eth_dst_mask"),
    "eth_src": ("eth_src", "eth_src_mask"),
    "vlan_vid": ("vlan_id", None),
    "ip_proto": ("ip_proto", None),
    "ip_ttl": ("ip_ttl", "ip_ttl_mask"),
    "ipv4_src": ("ipv4_src", "ipv4_src_mask"),
    "ipv4_dst": ("ipv4_dst", "ipv4_dst_mask"),
    "ipv6_src": ("ipv6_src", "ipv6_src_mask"),
    "ipv6_dst": ("ipv6_dst", "ipv6_dst_mask"),
    "tcp_src": ("tcp_src", None),
    "tcp_dst": ("tcp_dst", None),
    "udp_src": ("udp_src", None),
    "udp_dst": ("udp_dst", None),
    "tun_id": ("enc_key_id", None),
    "tun_src": ("enc_ipv4_src", "enc_ipv4_src_mask"),
    "tun_dst": ("enc_ipv4_dst", "enc_ipv4_dst_mask"),
}
# IR ct_state bit (OVS numbering) -> tc-flower ct_state flag
_CT_FLAGS = {ir.CT_NEW: flower.TCA_FLOWER_KEY_CT_FLAGS_NEW, ir.CT_EST: flower.TCA_FLOWER_KEY_CT_FLAGS_ESTABLISHED,
             ir.CT_REL: flower.TCA_FLOWER_KEY_CT_FLAGS_RELATED, ir.CT_RPL: flower.TCA_FLOWER_KEY_CT_FLAGS_REPLY,
             ir.CT_INV: flower.TCA_FLOWER_KEY_CT_FLAGS_INVALID, ir.CT_TRK: flower.TCA_FLOWER_KEY_CT_FLAGS_TRACKED}
# IR header field pedit writes -> (pedit header type, byte offset)
_PEDIT = {"eth_dst": ("eth", 0), "eth_src": ("eth", 6), "ipv4_src": ("ip4", 12), "ipv4_dst": ("ip4", 16)}
_TTL_DEC = flower.pedit_set("ip4", 8, b"\xff", "add")  # TTL + 255 (mod 256): minus one
_NAT = {"snat": "src", "dnat": "dst", None: "nat"}


@dataclasses.dataclass(frozen=True)
class Representor:
    """Where a logical port's hardware rules go (for a tunnel port: its flow-based vxlan/geneve device)."""

    ifindex: int
    endpoint: str  # "netlink" or "unix:<path>"


@dataclasses.dataclass(frozen=True)
class TunnelEndpoint:
    """The host's side of a tunnel port, which the IR leaves to the host.

    The IR names only the VNI (``tun_id``) and the remote (``tun_dst``); the
    outer source address is the chassis's ``[agent] tunnel_ip`` and the UDP
    port is the flow-based (``external``) tunnel device's ``dstport``. The
    agent builds one per tunnel port from those two; encap rules carry them
    in ``tunnel_key set`` and decap rules match them (enc_ipv4_dst,
    enc_dst_port: a decap rule without the port is refused by mlx5).
    """

    local_ipv4: int
    dst_port: int


def to_flower(rule: HwRule, reps: Mapping[int, Representor], flags: int,
              tunnels: Mapping[int, TunnelEndpoint] | None = None) -> tuple[str, flower.FlowerRule]:
    """(endpoint, rule without a handle) for one hardware rule.

    ``reps`` maps logical ports (and tunnel ports, see ``ir.TUNNEL_PORTS``)
    to their devices; ``tunnels`` gives each tunnel port's endpoint facts.
    """
    src = reps[rule.in_port]
    eth_type = rule.match.get("eth_type")
    if eth_type is None or not eth_type.exact:
        raise ValueError(f"hardware rule {rule} must match one exact eth_type")
    keys = _keys(rule)
    decap = _tunnel(rule, rule.in_port, tunnels)
    if decap is not None:
        keys.update(enc_dst_port=decap.dst_port)
        keys.setdefault("enc_ipv4_dst", decap.local_ipv4)
    protocol, slot = eth_type.value, PROTOCOL_SLOT.get(eth_type.value, SLOTS - 1)
    if "vlan_id" in keys:  # flower: the tag's protocol, then the inner ethertype
        protocol, slot, keys["vlan_eth_type"] = flower.ETH_P_8021Q, SLOTS - 1, eth_type.value
    prio = PRIO_BASE + rule.level * SLOTS + slot
    if prio >= PROBE_PRIO:
        raise ValueError(f"hardware rule {rule}: level {rule.level} does not fit below the probes' prio {PROBE_PRIO}")
    # the tunnel's metadata goes only where the packet leaves: a goto keeps it for the next chain's enc_* keys,
    # a pass for software (OVS reads the tunnel key of what its tunnel port receives)
    unset = decap is not None and rule.output is not None
    actions = ((flower.TunnelKey(unset=True),) if unset else ()) + _actions(rule, reps, tunnels)
    return src.endpoint, flower.FlowerRule(
        ifindex=src.ifindex, prio=prio, handle=0, protocol=protocol,
        keys=flower.FlowerKeys(**keys), actions=actions, chain=rule.chain, flags=flags,
    )


def _keys(rule: HwRule) -> dict[str, int]:
    keys: dict[str, int] = {}
    eth_type = rule.match.get("eth_type")
    for term in rule.match.fields:
        if term.field == "eth_type":
            continue
        if term.field == "ct_state":
            keys["ct_state"] = _ct_flags(term.value)
            keys["ct_state_mask"] = _ct_flags(term.mask)
            continue
        if term.field in ("icmp_type", "icmp_code"):  # one IR field, a flower key per family
            family = "icmpv6" if eth_type is not None and eth_type.value == ir.ETH_TYPE_IPV6 else "icmpv4"
            name = f"{family}_{term.field.removeprefix('icmp_')}"
            keys[name], keys[f"{name}_mask"] = term.value, term.mask
            continue
        if term.field not in _KEYS:
            raise ValueError(f"hardware rule {rule}: field {term.field} has no tc-flower key")
        name, mask_name = _KEYS[term.field]
        if mask_name is None and not term.exact:
            raise ValueError(f"hardware rule {rule}: flower matches {term.field} exactly only")
        keys[name] = term.value
        if mask_name is not None:
            keys[mask_name] = term.mask
    return keys


def _ct_flags(bits: int) -> int:
    return sum(flag for bit, flag in _CT_FLAGS.items() if bits & bit)


def _tunnel(rule: HwRule, port: int, tunnels: Mapping[int, TunnelEndpoint] | None) -> TunnelEndpoint | None:
    """The endpoint facts of ``port`` when it is a tunnel port (None for any other port)."""
    if port not in ir.TUNNEL_PORTS.values():
        return None
    if tunnels is None or port not in tunnels:
        raise ValueError(f"hardware rule {rule}: tunnel port {port:#x} has no TunnelEndpoint; pass the host's "
                         "tunnel_ip and the tunnel device's UDP port as to_flower(tunnels=...)")
    return tunnels[port]


def _actions(rule: HwRule, reps: Mapping[int, Representor],
             tunnels: Mapping[int, TunnelEndpoint] | None) -> tuple[flower.FlowerAction, ...]:
    """The rule's header actions in order (rewrites merged into one pedit + csum), then its verdict (a drop rule
    is ``gact drop`` alone)."""
    if rule.drop:
        return (flower.Gact("drop"),)
    out: list[flower.FlowerAction] = []
    pedit: list[flower.PeditKey] = []
    csum = 0
    tunnel: dict[str, int] = {}
    for action in rule.actions:
        if isinstance(action, ir.SetField) and action.field in ("tun_id", "tun_dst"):
            tunnel[action.field] = action.value
            continue
        if isinstance(action, ir.SetField) and action.field in _PEDIT:
            htype, offset = _PEDIT[action.field]
            pedit += flower.pedit_set(htype, offset, action.value.to_bytes(ir.FIELD_BITS[action.field] // 8, "big"))
            csum |= _CSUM_L3_L4 if htype == "ip4" else 0
            continue
        if isinstance(action, ir.DecTtl):  # a pedit of its own: NICs (the simulated one too) take set and add apart
            out += _flush(pedit, csum) + _flush(list(_TTL_DEC), flower.TCA_CSUM_UPDATE_FLAG_IPV4HDR)
            pedit, csum = [], 0
            continue
        out += _flush(pedit, csum)
        pedit, csum = [], 0
        out.append(_one(rule, action))
    out += _flush(pedit, csum)
    if rule.goto is not None:
        return (*out, flower.Gact("goto_chain", rule.goto))
    if rule.output is None:
        return (*out, flower.Gact("pass"))
    encap = _tunnel(rule, rule.output, tunnels)
    if encap is not None:
        out.append(flower.TunnelKey(ipv4_src=encap.local_ipv4, ipv4_dst=tunnel["tun_dst"], key_id=tunnel["tun_id"],
                                    dst_port=encap.dst_port))
    return (*out, flower.Mirred(reps[rule.output].ifindex))


_CSUM_L3_L4 = flower.TCA_CSUM_UPDATE_FLAG_IPV4HDR | flower.TCA_CSUM_UPDATE_FLAG_TCP | flower.TCA_CSUM_UPDATE_FLAG_UDP


def _flush(keys: list[flower.PeditKey], csum: int) -> list[flower.FlowerAction]:
    """One pedit for a run of rewrites, and the checksum fix it needs (none for MACs)."""
    if not keys:
        return []
    return [flower.Pedit(tuple(keys))] + ([flower.Csum(csum)] if csum else [])


def _one(rule: HwRule, action: ir.Action) -> flower.FlowerAction:
    if isinstance(action, ir.PushVlan):
        return flower.Vlan("push", action.vid)
    if isinstance(action, ir.PopVlan):
        return flower.Vlan("pop")
    if isinstance(action, ir.Conntrack):
        if action.nat is None:
            return flower.Ct(zone=action.zone, commit=action.commit)
        address = {} if action.nat.ipv4 is None else {"nat_ipv4_min": action.nat.ipv4, "nat_ipv4_max": action.nat.ipv4}
        return flower.Ct(zone=action.zone, commit=action.commit, nat=_NAT[action.nat.kind], **address)
    raise ValueError(f"hardware rule {rule}: action {action} has no tc form")


def identity(rule: flower.FlowerRule) -> tuple:
    """What a rule matches: two rules with the same identity are one rule."""
    return (rule.ifindex, rule.chain, rule.prio, rule.protocol, rule.keys)


@dataclasses.dataclass
class TcDiff:
    add: list[tuple[str, flower.FlowerRule]] = dataclasses.field(default_factory=list)
    replace: list[tuple[str, flower.FlowerRule]] = dataclasses.field(default_factory=list)
    delete: list[tuple[str, flower.FlowerRule]] = dataclasses.field(default_factory=list)
    # rules of chains no desired rule leads to any more: taken off last, once nothing can reach them (taken off
    # first, a goto still waiting to be replaced would lead into an empty chain, and a miss there is a drop)
    delete_after: list[tuple[str, flower.FlowerRule]] = dataclasses.field(default_factory=list)
    repairs: int = 0  # rules where a dump disagreed with the state held in memory (TcBackend.plan)

    def __bool__(self) -> bool:
        return bool(self.add or self.replace or self.delete or self.delete_after)

    def extend(self, other: TcDiff) -> None:
        self.add += other.add
        self.replace += other.replace
        self.delete += other.delete
        self.delete_after += other.delete_after
        self.repairs += other.repairs

    def break_drops(self, held: Callable[[str, int], _DeviceState | None]) -> TcDiff:
        """Take drop rules off in the first half where keeping them through the OVS change could drop what
        OVS then passes (before :meth:`defer_unreachable`, which defers no drop). ``held``: a device's state
        in memory, as installed before this change.

        - A drop replaced by a rule that does not drop: a delete (first half) and an add of the new rule
          (second half, same handle).
        - A drop that stays as it is but that a change in front of it may hand packets it did not take, or
          whose packets the new rules in front send elsewhere: a rule added or deleted in its chain at a lower
          priority, or a goto leading into its chain that is deleted, replaced or itself so exposed (gotos
          lead to higher chains only). It is deleted in the first half and added again last in the second,
          after the rules in front of it.

        Additions are ordered drops last: a new drop never sits on the NIC before the rules in front of it.
        """
        by_dev: dict[Device, list[tuple[str, flower.FlowerRule]]] = {}
        for kind, items in (("add", self.add), ("replace", self.replace), ("delete", self.delete)):
            for endpoint, rule in items:
                by_dev.setdefault((endpoint, rule.ifindex), []).append((kind, rule))
        replace: list[tuple[str, flower.FlowerRule]] = []
        for endpoint, new in self.replace:
            state = held(endpoint, new.ifindex)
            key = identity(new)
            if state is not None and state.rules is not None and key in state.drops and not _drops(new):
                self.delete.append((endpoint, state.rules[key]))
                self.add.append((endpoint, new))
            else:
                replace.append((endpoint, new))
        self.replace = replace
        for (endpoint, ifindex), changes in by_dev.items():
            state = held(endpoint, ifindex)
            if state is not None and state.rules is not None and state.drops:
                for rule in _exposed_drops(state, changes):
                    self.delete.append((endpoint, rule))
                    self.add.append((endpoint, rule))
        # a drop arrives after the rules that go in front of it (a pass holding what software must see)
        self.add = [item for item in self.add if not _drops(item[1])] + [item for item in self.add if _drops(item[1])]
        return self

    def defer_unreachable(self, desired_targets: Callable[[str, int], set[int]],
                          installed: Callable[[str, int], Iterable[flower.FlowerRule]]) -> TcDiff:
        """Move to :attr:`delete_after` the deletions of rules in a chain that a rule staying on the NIC through
        the first half still leads to, while no desired rule does: that goto is replaced or deleted later, and
        until then its chain must hold. Deleting everything of a device (nothing stays) defers nothing. A drop
        rule's deletion is never deferred: it would drop what OVS, changed, passes (:meth:`break_drops`)."""
        by_dev: dict[Device, list[flower.FlowerRule]] = {}
        for endpoint, rule in self.delete:
            by_dev.setdefault((endpoint, rule.ifindex), []).append(rule)
        early: list[tuple[str, flower.FlowerRule]] = []
        for (endpoint, ifindex), rules in by_dev.items():
            wanted = desired_targets(endpoint, ifindex)
            going = {identity(r) for r in rules}
            staying = [r for r in installed(endpoint, ifindex) if identity(r) not in going]
            late: set[tuple] = set()
            while True:  # a deferred rule stays too, and may lead on to another chain
                held = {c for r in staying for c in _gotos(r)}
                more = {identity(r) for r in rules if r.chain and r.chain in held and r.chain not in wanted
                        and not _drops(r)} - late
                if not more:
                    break
                late |= more
                staying += [r for r in rules if identity(r) in more]
            for rule in rules:
                (self.delete_after if identity(rule) in late else early).append((endpoint, rule))
        self.delete = early
        return self


def _exposed_drops(state: _DeviceState, changes: list[tuple[str, flower.FlowerRule]]) -> list[flower.FlowerRule]:
    """The drop rules of a device, installed and not named by ``changes`` ((kind, rule) pairs), that a change in
    front of them exposes (see :meth:`TcDiff.break_drops`)."""
    rules = state.rules or {}
    named = {identity(rule) for _, rule in changes}
    lowest: dict[int, int] = {}  # chain -> the lowest prio added or deleted there
    moved: set[tuple] = set()  # rules deleted or replaced (a goto among them no longer leads where it did)
    for kind, rule in changes:
        if kind != "replace":
            lowest[rule.chain] = min(lowest.get(rule.chain, rule.prio), rule.prio)
        if kind != "add":
            moved.add(identity(rule))
    into: dict[int, list[tuple[tuple, flower.FlowerRule]]] = {}  # chain -> the gotos leading there
    for key, chains in state.gotos.items():
        for chain in chains:
            into.setdefault(chain, []).append((key, rules[key]))
    memo: dict[int, bool] = {}

    def exposed(chain: int, prio: int) -> bool:
        if lowest.get(chain, prio) < prio:
            return True
        if chain not in memo:
            memo[chain] = False  # a guard only: no goto leads back
            memo[chain] = any(key in moved or exposed(g.chain, g.prio) for key, g in into.get(chain, ()))
        return memo[chain]

    return [rules[key] for key in sorted(state.drops - named, key=lambda k: (k[1], k[2], k[3]))
            if exposed(rules[key].chain, rules[key].prio)]


def _drops(rule: flower.FlowerRule) -> bool:
    return any(isinstance(a, flower.Gact) and a.verdict == "drop" for a in rule.actions)


def _gotos(rule: flower.FlowerRule) -> set[int]:
    return {a.chain for a in rule.actions if isinstance(a, flower.Gact) and a.verdict == "goto_chain"}


def diff(desired: Iterable[flower.FlowerRule], installed: Iterable[flower.FlowerRule], endpoint: str) -> TcDiff:
    """Changes that turn ``installed`` (dumped, with handles) into ``desired`` (handle 0)."""
    have = {identity(r): r for r in installed}
    used: dict[int, set[int]] = {}
    for r in have.values():
        used.setdefault(r.ifindex, set()).add(r.handle)
    out = TcDiff()
    wanted = set()
    for rule in desired:
        key = identity(rule)
        wanted.add(key)
        old = have.get(key)
        if old is None:
            handle = _free_handle(used.setdefault(rule.ifindex, set()))
            out.add.append((endpoint, dataclasses.replace(rule, handle=handle)))
        elif old.actions != rule.actions:
            out.replace.append((endpoint, dataclasses.replace(rule, handle=old.handle)))
    out.delete = [(endpoint, r) for k, r in have.items() if k not in wanted]
    return out


def _free_handle(used: set[int]) -> int:
    handle = 1
    while handle in used:
        handle += 1
    used.add(handle)
    return handle


Device = tuple[str, int]  # (endpoint, ifindex): one representor (or tunnel device) on one NIC
# Refusals that leave the device as it was: the rule is simply not there (or the old one stays). Any other
# error (EINVAL from an echo that differs: the device stored something else; EEXIST; a timeout) leaves the
# device's state unknown, so it is dumped before it is planned again.
CLEAN_REFUSALS = frozenset({errno.EOPNOTSUPP, errno.ENOSPC})


@dataclasses.dataclass
class _DeviceState:
    """One device as the backend holds it in memory."""

    desired: dict[tuple, flower.FlowerRule]  # identity -> rule (handle 0): the last thing asked for
    rules: dict[tuple, flower.FlowerRule] | None = None  # identity -> installed rule; None: unknown, dump first
    handles: set[int] = dataclasses.field(default_factory=set)  # installed, and planned additions
    # of the installed rules: those that drop, and those that go to a chain (with the chains): TcDiff.break_drops
    drops: set[tuple] = dataclasses.field(default_factory=set)
    gotos: dict[tuple, set[int]] = dataclasses.field(default_factory=dict)

    def load(self, dumped: Iterable[flower.FlowerRule]) -> None:
        self.rules = {}
        self.drops, self.gotos = set(), {}
        for rule in dumped:
            self.put(identity(rule), rule)
        self.handles = {r.handle for r in self.rules.values()}

    def put(self, key: tuple, rule: flower.FlowerRule) -> None:
        """Hold ``rule`` as installed (``rules`` must be known)."""
        assert self.rules is not None
        self.rules[key] = rule
        self.drops.discard(key)
        self.gotos.pop(key, None)
        if _drops(rule):
            self.drops.add(key)
        if chains := _gotos(rule):
            self.gotos[key] = chains

    def take(self, key: tuple) -> None:
        assert self.rules is not None
        del self.rules[key]
        self.drops.discard(key)
        self.gotos.pop(key, None)

    def forget(self) -> None:
        """Unknown: dumped before it is planned again."""
        self.rules = None
        self.drops, self.gotos = set(), {}


def open_client(endpoint: str) -> TcClient:
    """A client that checks every rule's NLM_F_ECHO copy: a device that stores something other than what was
    asked refuses it (as OVS treats a tc echo mismatch). Checked identical against the real kernel's flower for
    every rule the encoder and the shipped apps produce (VM tier, hil/checks)."""
    if endpoint == "netlink":
        return TcClient(KernelTransport(), echo=True)
    if endpoint.startswith("unix:"):
        return TcClient(SimSocketTransport(endpoint[len("unix:"):]), echo=True)
    raise ValueError(f"unknown tc endpoint {endpoint!r}: use 'netlink' or 'unix:<path>'")


class TcBackend:
    """Talks to every NIC control endpoint on the host, one client each, and holds the NICs' rules in memory.

    Two ways to plan, one way to apply:

    - :meth:`plan` (the whole desired set; one dump per managed representor) at start and on the repair
      timer: it also refreshes the state held in memory, and counts (:attr:`repairs`, ``TcDiff.repairs``)
      and logs the rules where a dump disagreed with it: a bug, or someone else changing the NIC.
    - :meth:`plan_delta` (rules added to and removed from the desired set) for every other change: computed
      from memory, no dump, except for a device whose state is unknown (never seen, or its NIC failed or
      answered unexpectedly since: :meth:`needs_dump`), which is dumped and diffed against its whole desired
      set as memory has it.
    - then :meth:`remove` (stale rules off, before OVS changes) and :meth:`install` (new and changed rules,
      after OVS has the flows behind them), which keep memory equal to what the NIC answered: a rule the
      NIC refused is not installed (:meth:`refused` says why; it is tried again when added again, or by
      the next plan).

    A delta is relative to the desired set last given (by plan, changed by every plan_delta since): the
    rules of a representor that goes away belong in ``removed`` like any others (when the NIC no longer
    knows the device, ENODEV, they are gone with it). See hwflow.backends.ovs.backend.OvsBackend for how
    an agent pass orders both backends.

    A NIC whose control channel fails (socket gone, peer restarted, no
    answer) is left as it is for this pass: its client is dropped so the next
    pass reconnects, the failure is logged once, its devices are marked for a
    dump, and OVS keeps carrying the traffic. Only an answer from the NIC (an
    errno) counts as a refusal.
    """

    def __init__(self, connect: Callable[[str], TcClient] = open_client) -> None:
        self._connect = connect
        self._clients: dict[str, TcClient] = {}
        self._refused: dict[tuple, str] = {}  # identity -> last error, logged once
        self._unreachable: dict[str, str] = {}  # endpoint -> last failure, logged once
        self._devices: dict[Device, _DeviceState] = {}
        self._unreadable: dict[Device, str] = {}  # device -> last error its NIC answered to a dump, logged once
        self.repairs = 0  # over the backend's life: rules a dump showed differently from memory
        self.refusals: collections.Counter[int] = collections.Counter()  # over its life: errno -> NIC refusals

    def client(self, endpoint: str) -> TcClient:
        if endpoint not in self._clients:
            self._clients[endpoint] = self._connect(endpoint)
        return self._clients[endpoint]

    def installed(self, endpoint: str, ifindex: int) -> list[tuple[flower.FlowerRule, flower.RuleStats | None]]:
        """hwflow's rules on a device as the NIC has them now (a dump: every chain, for ct recirculations),
        less the capability probes' chain and prio."""
        return [(r, s) for r, s in self.client(endpoint).dump(ifindex)
                if r.chain != PROBE_CHAIN and r.prio != PROBE_PRIO]

    # --- the state held in memory ----------------------------------------------------------------

    def installed_rules(self) -> dict[Device, dict[tuple, flower.FlowerRule]]:
        """The state held in memory: (endpoint, ifindex) -> identity -> installed rule, for every device
        whose state is known (what a dump of it should show)."""
        return {dev: dict(state.rules) for dev, state in self._devices.items() if state.rules is not None}

    def rule_counts(self) -> dict[Device, int]:
        """How many rules each device whose state is known holds (cheap: no copy of the rules)."""
        return {dev: len(state.rules) for dev, state in self._devices.items() if state.rules is not None}

    def needs_dump(self) -> set[Device]:
        """Devices whose state is unknown: the next plan_delta (or plan) dumps them."""
        return {dev for dev, state in self._devices.items() if state.rules is None}

    def _state(self, dev: Device) -> _DeviceState:
        state = self._devices.get(dev)
        if state is None:
            state = self._devices[dev] = _DeviceState({})
        return state

    def _unknown(self, endpoint: str) -> None:
        """The NIC behind ``endpoint`` failed: its devices' state is unknown until dumped."""
        for (ep, _), state in self._devices.items():
            if ep == endpoint:
                state.forget()

    # --- planning ---------------------------------------------------------------------------------

    def plan(self, desired: Iterable[tuple[str, flower.FlowerRule]], managed: Iterable[Representor]) -> TcDiff:
        """The full reconcile: the changes for every managed representor (one dump each) whose NIC answers.

        ``desired`` is the whole desired set, (endpoint, rule without a handle) pairs; a managed
        representor it gives no rule loses all of hwflow's rules, and so does a device no longer managed on
        which memory holds rules of hwflow's, or may (an unplugged VF whose delta failed: forgetting it
        would leave its rules on the NIC for good). Refreshes the state held in memory (and forgets devices
        neither managed, nor given a rule, nor holding one); where a dump disagrees with what memory said
        (a rule missing, extra, or with another handle or other actions), the rule is repaired like any
        other change and counted in ``TcDiff.repairs`` and :attr:`repairs`, with a warning; not for a
        device whose state was unknown anyway (first plan, a NIC that failed). Apply with :meth:`remove`
        and :meth:`install`.
        """
        by_dev: dict[Device, list[flower.FlowerRule]] = {(r.endpoint, r.ifindex): [] for r in managed}
        for dev, state in self._devices.items():
            if state.rules is None or state.rules:  # it may hold hwflow's rules: cleaned, never forgotten with them
                by_dev.setdefault(dev, [])
        for endpoint, rule in desired:
            by_dev.setdefault((endpoint, rule.ifindex), []).append(rule)
        total = TcDiff()
        before = self._devices
        self._devices = {dev: _DeviceState({identity(r): r for r in rules}) for dev, rules in by_dev.items()}
        down: set[str] = set()
        for dev, rules in sorted(by_dev.items()):
            dumped = self._dump(dev, down)
            if dumped is None:
                continue
            old = before.get(dev)
            if old is not None and old.rules is not None:
                total.repairs += self._disagreements(dev, old.rules, dumped)
            total.extend(self._full_diff(dev, self._devices[dev], rules, dumped))
        self.repairs += total.repairs
        return total.break_drops(self._device).defer_unreachable(self._targets, self._held)

    def plan_delta(self, added: Iterable[tuple[str, flower.FlowerRule]],
                   removed: Iterable[tuple[str, flower.FlowerRule]]) -> TcDiff:
        """The changes for a change of the desired set, from the state held in memory: no dump.

        ``added``: (endpoint, rule without a handle) pairs now desired that were not, or whose actions
        changed; ``removed``: pairs desired before (by an earlier plan or plan_delta) that no longer are,
        as they were given then (a rule whose actions change may be given in both, old and new: it is
        replaced in place, never deleted and re-added). Rules are told apart by :func:`identity`. Touches
        only the rules named: an addition whose identity is installed with other actions is a replace
        (same handle), one installed as asked is nothing, a removal whose identity is not desired any more
        and is installed is a delete; a removal of a rule never installed (refused) is nothing.

        A device whose state is unknown (never planned, or its NIC failed or answered unexpectedly since:
        :meth:`needs_dump`) is dumped, whether or not the delta names it, and diffed against its whole
        desired set as memory has it; when its NIC still does not answer it is left for the next call.
        Apply the result with :meth:`remove` (before OVS changes) and :meth:`install` (after).
        """
        touched: dict[Device, dict[tuple, None]] = {}  # device -> identities the delta names
        for endpoint, rule in removed:
            dev, key = (endpoint, rule.ifindex), identity(rule)
            self._state(dev).desired.pop(key, None)
            touched.setdefault(dev, {})[key] = None
        for endpoint, rule in added:
            dev, key = (endpoint, rule.ifindex), identity(rule)
            self._state(dev).desired[key] = rule
            touched.setdefault(dev, {})[key] = None
        total = TcDiff()
        down: set[str] = set()
        for dev in sorted(touched.keys() | self.needs_dump()):
            state = self._devices.get(dev)
            if state is None:
                continue  # forgotten: it cannot be read and nothing is wanted on it
            if state.rules is None:
                dumped = self._dump(dev, down)
                if dumped is not None:
                    total.extend(self._full_diff(dev, state, list(state.desired.values()), dumped))
                continue
            endpoint = dev[0]
            for key in touched[dev]:
                want, have = state.desired.get(key), state.rules.get(key)
                if want is None:
                    if have is not None:
                        total.delete.append((endpoint, have))
                elif have is None:
                    handle = _free_handle(state.handles)
                    total.add.append((endpoint, dataclasses.replace(want, handle=handle)))
                elif have.actions != want.actions:
                    total.replace.append((endpoint, dataclasses.replace(want, handle=have.handle)))
        return total.break_drops(self._device).defer_unreachable(self._targets, self._held)

    def _device(self, endpoint: str, ifindex: int) -> _DeviceState | None:
        return self._devices.get((endpoint, ifindex))

    def _targets(self, endpoint: str, ifindex: int) -> set[int]:
        """The chains the desired rules of a device go to."""
        state = self._devices.get((endpoint, ifindex))
        return {c for r in (state.desired.values() if state is not None else ()) for c in _gotos(r)}

    def _held(self, endpoint: str, ifindex: int) -> Iterable[flower.FlowerRule]:
        state = self._devices.get((endpoint, ifindex))
        return state.rules.values() if state is not None and state.rules is not None else ()

    def _dump(self, dev: Device, down: set[str]) -> list[flower.FlowerRule] | None:
        """The device's rules, or None when it cannot be read: its NIC does not answer (the endpoint is
        lost, see _lost, and added to ``down``: the caller's other devices there are not tried again) or
        answers an error for this device (ENODEV: it is gone), which is logged once; a device that cannot
        be read and holds no desired rule is forgotten."""
        endpoint, ifindex = dev
        if endpoint in down:
            return None
        what = f"cannot read the rules of ifindex {ifindex}"
        try:
            dumped = [r for r, _ in self.installed(endpoint, ifindex)]
        except TcError as exc:
            text = f"{what}: {exc}"
            if self._unreadable.get(dev) != text:
                LOG.error("NIC at %s: %s; its rules stay as they are and OVS carries the traffic; retrying on the "
                          "next pass", endpoint, text)
            self._unreadable[dev] = text
            state = self._devices.get(dev)
            if state is not None and not state.desired:
                del self._devices[dev]
            return None
        except OSError as exc:
            self._lost(endpoint, f"{what}: {exc}")
            down.add(endpoint)
            return None
        self._unreadable.pop(dev, None)
        self._answers(endpoint)
        return dumped

    def _full_diff(self, dev: Device, state: _DeviceState, rules: list[flower.FlowerRule],
                   dumped: list[flower.FlowerRule]) -> TcDiff:
        """diff() of a freshly dumped device, whose memory becomes the dump (and the handles diff chose)."""
        state.load(dumped)
        part = diff(rules, dumped, dev[0])
        state.handles.update(r.handle for _, r in part.add)
        return part

    def _disagreements(self, dev: Device, held: Mapping[tuple, flower.FlowerRule],
                       dumped: list[flower.FlowerRule]) -> int:
        """How many rules a device's dump shows differently from memory; logged as a warning when any."""
        seen = {identity(r): r for r in dumped}
        missing = len(held.keys() - seen.keys())
        extra = len(seen.keys() - held.keys())
        different = sum(1 for key, rule in seen.items() if key in held and (
            held[key].handle, held[key].actions) != (rule.handle, rule.actions))
        repairs = missing + extra + different
        if repairs:
            LOG.warning("NIC at %s, ifindex %d: the dump disagrees with the rules hwflow holds in memory: %d "
                        "missing, %d extra, %d different; repairing %d rule(s) (a bug, or someone else changed "
                        "the NIC's rules)", dev[0], dev[1], missing, extra, different, repairs)
        return repairs

    # --- applying -----------------------------------------------------------------------------------

    def remove(self, changes: TcDiff) -> int:
        """First half: take stale rules off the NIC (safe: what they took goes to software, and OVS has
        everything), but not those of a chain a goto still leads to until :meth:`install` (see TcDiff)."""
        return self._apply(changes.delete, "delete")

    def install(self, changes: TcDiff) -> int:
        """Second half: new and changed rules, once OVS holds the flows behind them; then the rules of chains
        nothing leads to any more (:attr:`TcDiff.delete_after`). Counts the rules added and replaced."""
        done = self._apply(changes.add, "add") + self._apply(changes.replace, "replace")
        self._apply(changes.delete_after, "delete")
        return done

    def _apply(self, items: list[tuple[str, flower.FlowerRule]], op: str) -> int:
        done = 0
        for endpoint in sorted({e for e, _ in items}):
            rules = [r for e, r in items if e == endpoint]
            try:
                results = getattr(self.client(endpoint), op)(rules)
            except OSError as exc:
                self._lost(endpoint, f"cannot {op} {len(rules)} rule(s): {exc}")
                continue
            self._answers(endpoint)
            done += self._report(rules, results, op, endpoint)
            self._remember(endpoint, rules, results, op)
        return done

    def _remember(self, endpoint: str, rules: list[flower.FlowerRule], results: list[TcError | None],
                  op: str) -> None:
        """Keep memory equal to what the NIC answered."""
        for rule, err in zip(rules, results):
            state = self._devices.get((endpoint, rule.ifindex))
            if state is None or state.rules is None:
                continue  # unknown anyway: dumped before it is planned again
            key = identity(rule)
            if op == "delete":
                if err is None or err.errno in (errno.ENOENT, errno.ENODEV):  # gone either way (or its device)
                    if (held := state.rules.get(key)) is not None and held.handle == rule.handle:
                        state.take(key)
                    state.handles.discard(rule.handle)
                else:
                    state.forget()
            elif err is None:
                state.put(key, rule)
                state.handles.add(rule.handle)
            else:
                if op == "add":
                    state.handles.discard(rule.handle)
                if err.errno not in CLEAN_REFUSALS:
                    state.forget()

    def _lost(self, endpoint: str, text: str) -> None:
        """The NIC's control channel failed: drop the client (the next use reconnects), mark its devices
        for a dump, log it once (until it answers again)."""
        client = self._clients.pop(endpoint, None)
        if client is not None:
            client.close()
        self._unknown(endpoint)
        if endpoint not in self._unreachable:
            LOG.error("NIC at %s: %s; its rules stay as they are and OVS carries the traffic; retrying on the "
                      "next pass", endpoint, text)
        else:
            LOG.debug("NIC at %s still unreachable: %s", endpoint, text)
        self._unreachable[endpoint] = text

    def _answers(self, endpoint: str) -> None:
        if self._unreachable.pop(endpoint, None) is not None:
            LOG.warning("NIC at %s answers again", endpoint)

    def _report(self, rules: list[flower.FlowerRule], results: list[TcError | None], op: str, endpoint: str) -> int:
        done = 0
        for rule, err in zip(rules, results):
            key = identity(rule)
            if err is None:
                done += 1
                self._refused.pop(key, None)
                continue
            text = str(err)
            self.refusals[err.errno] += 1
            if self._refused.get(key) != text:
                LOG.warning("NIC at %s refused to %s: %s; that traffic stays in Open vSwitch", endpoint, op, text)
            self._refused[key] = text
        return done

    def refused(self) -> dict[tuple, str]:
        return dict(self._refused)

    @property
    def refused_count(self) -> int:
        return len(self._refused)

    def forget_refusals(self) -> None:
        """Let refused rules be tried again (room may have freed up, firmware changed)."""
        self._refused.clear()

    def unreachable(self) -> dict[str, str]:
        return dict(self._unreachable)

    def close(self) -> None:
        for client in self._clients.values():
            client.close()
        self._clients.clear()
