"""What the agent publishes for ``hwflow flows``: the part of the picture only it knows.

What is *installed* anyone on the host can read (a tc dump of each representor, an OpenFlow dump of the
bridge). What it *means* only the agent knows: which logical object each hardware rule stands for, which
packet paths it kept in Open vSwitch and why, which representor is which port, which cookie is which owner.
After a pass that changed something (and after every full pass) the agent writes that here, as JSON, to
``<[agent] state_dir>/flows-<chassis_name>.json`` (:func:`path_for`): atomically (a temporary file renamed
over the old one, so a reader never sees half a file), at most every :data:`INTERVAL` seconds, from a
background thread. The pass itself only takes references to what it holds already (the plan, the flower
rules per port, the bindings: a few dictionary copies of one entry per port); turning them into JSON happens
in the writer thread, which reuses the entries of rules and paths it wrote before.

The file (``version`` 1), an object with these keys:

- ``version``: 1. ``chassis``: the agent's chassis name. ``written``: Unix time of the write;
  ``planned``: Unix time of the pass the content is from (``full``: whether that pass was a full one).
- ``ovs``: ``{"bridge": NAME, "openflow_endpoint": "unix:PATH" | "tcp:HOST:PORT"}``: where to dump the
  bridge's flows (its management socket, as the agent reaches it).
- ``ports``: logical port key (as text) -> ``{"id", "name", "ofport", "device"}``: the port's database id
  (``tunnel:vxlan`` / ``physnet:NAME`` for the host's tunnel and provider ports), its name (or null), its
  OpenFlow port on the bridge (or null) and its representor's device name (or null).
- ``devices``: the representors whose tc rules the agent owns (what ``hwflow flows`` dumps), each
  ``{"endpoint": "netlink" | "unix:PATH", "ifindex", "name", "port"}`` (``port``: logical key or null).
- ``hw``: the hardware rules of the plan, as the agent handed them to the NIC, each ``{"port" (logical key),
  "chain", "order" (position in the chain's decision list), "kind" ("rule"; "pass": holds software paths
  in front of later rules; "miss": a chain's catch-all pass), "owner" ("kind:id" of the IR flow, or null),
  "match" (the IR match, as ``hwflow trace`` prints it), "endpoint", "ifindex", "prio", "protocol",
  "keys" (the tc-flower keys: field -> integer, masks made explicit, see :func:`flower_keys`),
  "actions" (text, :func:`flower_actions`)}``. A rule is told apart by (endpoint, ifindex, chain, prio,
  protocol, keys), as :func:`hwflow.backends.tc.backend.identity` tells them.
- ``sw``: the packet paths kept in Open vSwitch, each ``{"port" (logical key; -1 for a path of a chain
  shared by several ports), "ports" (the logical keys reaching it), "chain", "match", "reason" (why
  software: a capability missing, "the NIC refused it: ... ENOSPC ...", "the NIC's rule table is full",
  "overlaps an earlier software-only path", ...), "owner" (or null)}``; and what the partitioner never
  walks, one path per port: an ethertype not among ``[offload] ethertypes`` (``eth_type=0x0806``: ARP by
  default), or ``*`` for a port without an offload-capable representor, or all ports while offload is off.
- ``refused``: rules the NIC refused since the last full pass: ``{"ifindex", "chain", "prio",
  "protocol", "keys", "error"}``.
- ``owners``: every IR owner ("kind:id") the agent compiled OpenFlow flows for: the cookie of a flow is
  :func:`hwflow.backends.ovs.translate.owner_cookie` of its owner, so a reader hashes these to name the
  owner of each flow it dumps.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwflow.backends.tc import flower
from hwflow.offload.partition import SHARED, HwRule, Plan, SoftwareLeaf
from hwflow.pipeline import ir
from hwflow.pipeline.trace import format_match, format_value

if TYPE_CHECKING:
    from hwflow.agent.daemon import Agent

LOG = logging.getLogger(__name__)

VERSION = 1
INTERVAL = 2.0  # seconds: the file is rewritten at most this often


def path_for(state_dir: str | Path, chassis: str) -> Path:
    return Path(state_dir) / f"flows-{chassis}.json"


def port_label(key: int, physnets: Mapping[int, str] | None = None) -> str | None:
    """The id a host port without a database object goes by: ``tunnel:vxlan``, ``physnet:NAME``."""
    for kind, number in ir.TUNNEL_PORTS.items():
        if key == number:
            return f"tunnel:{kind}"
    if physnets and key in physnets:
        return f"physnet:{physnets[key]}"
    return None


# --- tc-flower rules as text and JSON -------------------------------------------------------


_MAC_KEYS = {"eth_dst", "eth_src", "arp_sha", "arp_tha"}
_IPV4_KEYS = {"ipv4_src", "ipv4_dst", "arp_sip", "arp_tip", "enc_ipv4_src", "enc_ipv4_dst"}
_IPV6_KEYS = {"ipv6_src", "ipv6_dst", "enc_ipv6_src", "enc_ipv6_dst"}
_PROTOCOLS = {0x0800: "ip", 0x86DD: "ipv6", 0x0806: "arp", 0x8100: "802.1q", 0x88A8: "802.1ad"}


def flower_keys(keys: flower.FlowerKeys) -> dict[str, Any]:
    """The keys a rule matches, field -> value (masks as their own fields, as FlowerKeys holds them; Geneve
    options as text): equal for two rules exactly when their keys are."""
    out: dict[str, Any] = {}
    for name, value in vars(keys).items():
        if value is not None:
            out[name] = value if isinstance(value, int) else repr(value)
    return out


def _key_text(name: str, value: int) -> str:
    if name in _MAC_KEYS:
        return format_value("eth_dst", value)  # type: ignore[return-value]
    if name in _IPV4_KEYS:
        return format_value("ipv4_dst", value)  # type: ignore[return-value]
    if name in _IPV6_KEYS:
        return format_value("ipv6_dst", value)  # type: ignore[return-value]
    if name.endswith("eth_type"):
        return f"{value:#06x}"
    return str(value)


def _mask_text(name: str, mask: int, width: int) -> str | None:
    """None for a full mask; a prefix length when the mask is one; else the mask as the value is written."""
    if mask == (1 << width) - 1:
        return None
    ones = bin(mask).count("1")
    if mask == ((1 << ones) - 1) << (width - ones):
        return str(ones)
    return _key_text(name, mask)


def flower_match(protocol: int, keys: Mapping[str, Any]) -> str:
    """A rule's match as text: ``ip eth_dst=fa:16:3e:00:00:02 ipv4_dst=10.0.0.0/24 ct_state=0x22/0x22``."""
    specs = {spec.field: spec for spec in flower.KEY_SPECS}
    terms = [_PROTOCOLS.get(protocol, f"{protocol:#06x}")]
    for name, value in keys.items():
        spec = specs.get(name)
        if spec is None:
            if not name.endswith("_mask"):
                terms.append(f"{name}={value}")
            continue
        mask = keys.get(spec.mask_field) if spec.mask_field else None
        if name.startswith("ct_") and mask is not None:
            terms.append(f"{name}={value:#x}/{mask:#x}")
            continue
        text = _key_text(name, value)
        shown = _mask_text(name, mask, spec.width) if isinstance(mask, int) else None
        terms.append(f"{name}={text}" + (f"/{shown}" if shown is not None else ""))
    return " ".join(terms)


def flower_actions(actions: Iterable[flower.FlowerAction], devices: Mapping[int, str] | None = None) -> str:
    """A rule's actions as text, in order: ``pedit(2 words) csum redirect:vf1_rep``, ``goto:chain 7``..."""
    devices = devices or {}
    out = []
    for action in actions:
        if isinstance(action, flower.Mirred):
            out.append(f"redirect:{devices.get(action.ifindex, action.ifindex)}")
        elif isinstance(action, flower.Gact):
            out.append(f"goto:chain {action.chain}" if action.verdict == "goto_chain" else action.verdict)
        elif isinstance(action, flower.Vlan):
            out.append(f"vlan_push:{action.vid}" if action.action == "push" else f"vlan_{action.action}")
        elif isinstance(action, flower.TunnelKey):
            if action.unset:
                out.append("tunnel_key_unset")
            else:
                dst = format_value("ipv4_dst", action.ipv4_dst) if action.ipv4_dst is not None else action.ipv6_dst
                out.append(f"tunnel_key_set(vni={action.key_id},dst={dst})")
        elif isinstance(action, flower.Pedit):
            out.append(f"pedit({len(action.keys)} word{'s' if len(action.keys) != 1 else ''})")
        elif isinstance(action, flower.Csum):
            out.append("csum")
        elif isinstance(action, flower.Ct):
            parts = [f"zone={action.zone}"] + (["commit"] if action.commit else []) + (
                [f"nat={action.nat}"] if action.nat else [])
            out.append(f"ct({','.join(parts)})")
        else:
            out.append(type(action).__name__.lower())
    return " ".join(out)


def rule_kind(rule: HwRule) -> str:
    if rule.owner == "miss":
        return "miss"
    if rule.owner == "":
        return "pass"
    return "rule"


# --- the snapshot a pass leaves, and the writer -----------------------------------------------


@dataclasses.dataclass
class Snapshot:
    """References to what a pass left (taken in the agent's thread; nothing here is changed afterwards: each
    pass builds new dictionaries and lists rather than changing those of the pass before)."""

    at: float
    full: bool
    plan: Plan
    flower: dict[int, dict[int, list[tuple[HwRule, str, Any]]]]
    ports: dict[int, tuple[str, str | None, int | None]]  # logical key -> (id, name, ofport)
    devices: list[tuple[str, int, str | None, int | None]]  # (endpoint, ifindex, name, port key)
    offloaded: frozenset[int] = frozenset()  # the ports with a representor the plan was made for
    local: frozenset[int] = frozenset()  # the database's ports bound here


class Publisher:
    """Writes the file of one agent; :meth:`passed` is the hook at the end of each pass."""

    def __init__(self, path: Path, chassis: str, ovs: Mapping[str, str], interval: float = INTERVAL,
                 ethertypes: Iterable[str] | None = ("ipv4", "ipv6")) -> None:
        self.path = path
        self.chassis = chassis
        self.ovs = dict(ovs)
        self.ethertypes = None if ethertypes is None else tuple(ethertypes)  # offloaded ([offload]); None: offload off
        self.interval = interval
        self.writes = 0
        self._cond = threading.Condition()
        self._pending: Snapshot | None = None
        self._owners: Any = None  # a callable giving the owners' texts (read in the writer thread)
        self._refused: Any = None
        self._thread: threading.Thread | None = None
        self._last = 0.0  # monotonic time of the last write
        self._cache: dict[int, tuple[Any, Any, str]] = {}  # id(flower rule) -> (rule, flower rule, entry)
        self._sw_cache: dict[int, tuple[SoftwareLeaf, str]] = {}
        self._failed: str | None = None

    @classmethod
    def for_agent(cls, conf: Any) -> Publisher:
        agent = conf.agent
        endpoint = agent.openflow_endpoint or f"unix:{agent.ovs_rundir}/{agent.integration_bridge}.mgmt"
        return cls(path_for(agent.state_dir, agent.chassis_name), agent.chassis_name,
                   {"bridge": agent.integration_bridge, "openflow_endpoint": endpoint},
                   ethertypes=conf.offload.ethertypes if conf.offload.enabled else None)

    # --- in the agent's thread -----------------------------------------------------------------

    def passed(self, agent: Agent, plan: Plan, changed: bool, full: bool) -> None:
        """After a pass: when it changed something (or was full), hand the writer what it left."""
        if not (changed or full):
            return
        topo = agent.topo
        ports: dict[int, tuple[str, str | None, int | None]] = {}
        local = []
        for pid in topo.local_port_ids:
            port = topo.ports.get(pid)
            if port is not None:
                local.append(port.unique_key)
                ports[port.unique_key] = (pid, getattr(port, "name", "") or None, agent.ofports.get(port.unique_key))
        physnets = {ir.physnet_port(net): net for net in agent._bridge_mappings}
        for key, ofport in agent.ofports.items():
            if key not in ports:
                ports[key] = (port_label(key, physnets) or str(key), None, ofport)
        for key in agent._encoded_reps:
            if key not in ports:
                ports[key] = (port_label(key, physnets) or str(key), None, None)
        by_rep = {(rep.endpoint, rep.ifindex): key for key, rep in agent._encoded_reps.items()}
        names = {(r.tc_endpoint, r.ifindex): r.name for r in agent._reports.values() if r.tc_endpoint}
        reps = agent._managed | set(agent._encoded_reps.values())
        devices = [(rep.endpoint, rep.ifindex, names.get((rep.endpoint, rep.ifindex)),
                    by_rep.get((rep.endpoint, rep.ifindex))) for rep in reps]
        snapshot = Snapshot(time.time(), full, plan, dict(agent._flower), ports, devices,
                            frozenset(agent._encoded_reps), frozenset(local))
        with self._cond:
            self._pending = snapshot
            self._owners = agent.ovs.compiler.owners
            self._refused = agent.tc.refused
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="hwflow-publish", daemon=True)
                self._thread.start()
            self._cond.notify()

    # --- in the writer thread ------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None:
                    self._cond.wait()
                wait = self._last + self.interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.flush()

    def flush(self) -> bool:
        """Write what the last pass left now, if not written yet; False if nothing was pending.

        A big plan costs the writer real time (it shares the interpreter with the agent): the next write then
        waits ten times as long as this one took, if that is more than the interval, so that publishing never
        takes more than a tenth of the agent's time."""
        with self._cond:
            snapshot, self._pending = self._pending, None
            owners, refused = self._owners, self._refused
        if snapshot is None:
            return False
        began = time.monotonic()
        try:
            text = self.document_text(snapshot, owners() if owners else [], refused() if refused else {})
            write_atomically(self.path, text)
        except Exception as exc:  # a full disk must not stop the agent: say it once, try again next time
            text = f"{type(exc).__name__}: {exc}"
            if text != self._failed:
                LOG.warning("cannot publish the plan for `hwflow flows` to %s: %s", self.path, text)
            self._failed = text
            return True
        finally:
            now = time.monotonic()
            self._last = now + max(0.0, 10 * (now - began) - self.interval)
        self._failed = None
        self.writes += 1
        return True

    def document(self, snap: Snapshot, owners: Iterable[Any], refused: Mapping[tuple, str]) -> dict[str, Any]:
        """The document as a reader loads it."""
        return json.loads(self.document_text(snap, owners, refused))

    def document_text(self, snap: Snapshot, owners: Iterable[Any], refused: Mapping[tuple, str]) -> str:
        """The file's text. Each rule's and path's entry is encoded once and kept while the agent keeps the
        rule (the same objects from pass to pass), so a write after a small change encodes little; the text
        is joined from the pieces, which also lets the agent's thread run between them."""
        devices = {ifindex: name for _, ifindex, name, _ in snap.devices if name}
        hw: list[str] = []
        cache, fresh = self._cache, {}
        for port in sorted(snap.flower):
            for chain in sorted(snap.flower[port]):
                for rule, endpoint, fr in snap.flower[port][chain]:
                    key = id(fr)  # the agent keeps a rule's flower encoding while the rule stays equal (_encode)
                    held = cache.get(key)
                    if held is None or held[1] is not fr or (held[0] is not rule and held[0] != rule):
                        kind = rule_kind(rule)
                        held = (rule, fr, json.dumps({
                            "port": port, "chain": fr.chain, "order": rule.order, "kind": kind,
                            "owner": str(rule.owner) if kind == "rule" and rule.owner else None,
                            "match": format_match(rule.match, {}), "endpoint": endpoint, "ifindex": fr.ifindex,
                            "prio": fr.prio, "protocol": fr.protocol, "keys": flower_keys(fr.keys),
                            "actions": flower_actions(fr.actions, devices)}, separators=(",", ":")))
                    fresh[key] = held
                    hw.append(held[2])
        self._cache = fresh
        reaching: dict[int, list[int]] = {}
        for port, chains in snap.plan.reaches.items():
            for number in chains:
                reaching.setdefault(number, []).append(port)
        sw: list[str] = []
        sw_fresh: dict[int, tuple[SoftwareLeaf, str]] = {}
        for leaf in snap.plan.software:
            held_leaf = self._sw_cache.get(id(leaf))
            if held_leaf is None or held_leaf[0] is not leaf:
                owner = getattr(leaf, "owner", None)
                held_leaf = (leaf, json.dumps({"port": leaf.in_port, "chain": leaf.chain,
                                               "match": format_match(leaf.match, {}), "reason": leaf.reason,
                                               "owner": str(owner) if owner else None}, separators=(",", ":")))
            sw_fresh[id(leaf)] = held_leaf
            ports = sorted(reaching.get(leaf.chain, ())) if leaf.in_port == SHARED else [leaf.in_port]
            sw.append(f'{held_leaf[1][:-1]},"ports":{json.dumps(ports, separators=(",", ":"))}}}')
        self._sw_cache = sw_fresh
        sw += [json.dumps(entry, separators=(",", ":")) for entry in self._whole_port_paths(snap)]
        device_of = {port: name for _, _, name, port in snap.devices if port is not None}
        head = {
            "version": VERSION, "chassis": self.chassis, "written": time.time(), "planned": snap.at,
            "full": snap.full, "ovs": self.ovs,
            "ports": {str(key): {"id": pid, "name": name, "ofport": ofport, "device": device_of.get(key)}
                      for key, (pid, name, ofport) in sorted(snap.ports.items())},
            "devices": [{"endpoint": ep, "ifindex": ifindex, "name": name, "port": port}
                        for ep, ifindex, name, port in sorted(snap.devices, key=lambda d: (d[0], d[1]))],
            "refused": [{"ifindex": k[0], "chain": k[1], "prio": k[2], "protocol": k[3],
                         "keys": flower_keys(k[4]), "error": error} for k, error in refused.items()],
            "owners": sorted({str(owner) for owner in owners}),
        }
        text = json.dumps(head, separators=(",", ":"))
        return f'{text[:-1]},"hw":[{",".join(hw)}],"sw":[{",".join(sw)}]}}'

    def _whole_port_paths(self, snap: Snapshot) -> list[dict[str, Any]]:
        """What the partitioner never walks, so has no path of: a port's traffic of an ethertype not offloaded
        (``[offload] ethertypes``), and all the traffic of a port without an offload-capable representor or
        while offload is off."""
        out = []
        for key in sorted(snap.local):
            if self.ethertypes is None:
                reasons = [("*", "offload is off ([offload] enabled = false): everything stays in Open vSwitch")]
            elif key not in snap.offloaded:
                reasons = [("*", "no offload-capable representor: all of the port's traffic stays in Open vSwitch")]
            else:
                reasons = [(f"eth_type={value:#06x}", f"{name} is not among [offload] ethertypes: it stays in Open "
                            "vSwitch" + (" (the control plane sees address resolution)" if name == "arp" else ""))
                           for name, value in ir.ETH_TYPES_BY_NAME.items() if name not in self.ethertypes]
            out += [{"port": key, "ports": [key], "chain": 0, "match": match, "reason": reason, "owner": None}
                    for match, reason in reasons]
        return out


def write_atomically(path: Path, text: str) -> None:
    """``text`` to ``path`` through a temporary file in the same directory, renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(text)
    os.replace(tmp, path)


def load(path: Path) -> dict[str, Any]:
    """The published document at ``path`` (ValueError when it is not one this code reads)."""
    document = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or document.get("version") != VERSION:
        raise ValueError(f"{path}: not a version {VERSION} flows file")
    return document
