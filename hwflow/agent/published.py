"""What the agent publishes for ``hwflow flows``: the part of the picture only it knows.

What is *installed* anyone on the host can read (a tc dump of each representor, an OpenFlow dump of the
bridge). What it *means* only the agent knows: which logical object each hardware rule stands for, which
packet paths it kept in Open vSwitch and why, which representor is which port, which cookie is which owner,
and what it *intends* to be installed (every NIC rule and every OpenFlow flow, so a reader can say what is
missing as well as what is extra). After a pass that changed something (and after every full pass) the agent
writes that to ``<[agent] state_dir>/flows-<chassis_name>.msgpack`` (:func:`path_for`): atomically (a
temporary file renamed over the old one, so a reader never sees half a file), at most every :data:`INTERVAL`
seconds, from a background thread. The pass itself only takes references to what it holds already (the plan,
the flower rules per port, the bindings, the OVS backend's flows); the writer thread turns them into the file,
reusing the packed rows of rules it wrote before.

The file is MessagePack (a 200-port host's ~50,000 NIC rules and ~50,000 flows: JSON text of each rule's
match and actions took the writer most of a second, and a reader as long again; ``hwflow bench publish``
measures it), one map (``version`` 2). Big tables are lists of rows, each a list of values in the order of
the table's column names (``*_columns``); an integer wider than 64 bits (an IPv6 address or mask) is an
extension of type :data:`BIG_INT` holding it big-endian (two's complement); a value of no MessagePack type (a
Geneve option) is its Python ``repr``. :func:`read` gives each row back as a map of its columns and each IR
match as text (as ``hwflow trace`` prints it). Keys:

- ``version``: 2. ``chassis``: the agent's chassis name. ``written``: Unix time of the write;
  ``planned``: Unix time of the pass the content is from (``full``: whether that pass was a full one).
- ``ovs``: ``{"bridge": NAME, "openflow_endpoint": "unix:PATH" | "tcp:HOST:PORT"}``: where to dump the
  bridge's flows (its management socket, as the agent reaches it).
- ``ports``: logical port key (as text) -> ``{"id", "name", "ofport", "device"}``: the port's database id
  (``tunnel:vxlan`` / ``physnet:NAME`` for the host's tunnel and provider ports), its name (or null), its
  OpenFlow port on the bridge (or null) and its representor's device name (or null).
- ``devices``: the representors whose tc rules the agent owns (what ``hwflow flows`` dumps), each
  ``{"endpoint": "netlink" | "unix:PATH", "ifindex", "name", "port"}`` (``port``: logical key or null).
- ``key_fields``: the names of the tc-flower keys, in the order a rule's ``keys`` lists their values
  (:class:`hwflow.backends.tc.flower.FlowerKeys`' fields, masks as their own fields; null: not matched).
- ``hw`` (columns ``hw_columns``): the hardware rules of the plan, as the agent handed them to the NIC:
  ``port`` (logical key), ``chain``, ``order`` (position in the chain's decision list), ``kind`` ("rule";
  "pass": holds software paths in front of later rules; "miss": a chain's catch-all pass), ``owner`` ("kind:id"
  of the IR flow, or null), ``match`` (the IR match: ``[field, value, mask]`` terms), ``endpoint``,
  ``ifindex``, ``prio``, ``protocol``, ``keys`` (see ``key_fields``), ``actions`` (text,
  :func:`flower_actions`). A rule is told apart by (endpoint, ifindex, chain, prio, protocol, keys), as
  :func:`hwflow.backends.tc.backend.identity` tells them.
- ``sw`` (columns ``sw_columns``): the packet paths kept in Open vSwitch: ``port`` (logical key; -1 for a
  path of a chain shared by several ports), ``ports`` (the logical keys reaching it), ``chain``, ``match`` (IR
  terms), ``reason`` (why software: a capability missing, "the NIC refused it: ... ENOSPC ...", "the NIC's
  rule table is full", "overlaps an earlier software-only path", ...), ``owner`` (or null); and what the
  partitioner never walks, one path per port: an ethertype not among ``[offload] ethertypes`` (ARP by
  default), or every packet (an empty match) of a port without an offload-capable representor, or of all
  ports while offload is off.
- ``flows`` (columns ``flow_columns``): every OpenFlow flow the agent holds installed on the bridge:
  ``cookie`` (:func:`hwflow.backends.ovs.translate.owner_cookie` of its owner), ``table``, ``priority``,
  ``match`` (``[oxm, value, mask]`` terms, sorted: an OpenFlow flow is told apart by table, priority and
  match, as :data:`hwflow.backends.ovs.translate.FlowKey`). About 65 bytes a flow (7.5 MiB for a
  200-port host's 120,000): enough to name each flow missing from the bridge, which a digest per owner
  would not.
- ``refused``: rules the NIC refused since the last full pass: ``{"ifindex", "chain", "prio",
  "protocol", "keys", "error"}``.
- ``owners``: every IR owner ("kind:id") the agent compiled OpenFlow flows for: a reader hashes these
  (``owner_cookie``) to name the owner of each flow by its cookie.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from hwflow.backends.tc import flower
from hwflow.offload.partition import SHARED, HwRule, Plan, SoftwareLeaf
from hwflow.pipeline import ir
from hwflow.pipeline.trace import format_match, format_value

if TYPE_CHECKING:
    from hwflow.agent.daemon import Agent

LOG = logging.getLogger(__name__)

VERSION = 2
INTERVAL = 2.0  # seconds: the file is rewritten at most this often
DIR_MODE = 0o700  # [agent] state_dir when the agent makes it
FILE_MODE = 0o600
BIG_INT = 1  # MessagePack extension type of an integer wider than 64 bits
KEY_FIELDS = tuple(f.name for f in dataclasses.fields(flower.FlowerKeys))
HW_COLUMNS = ("port", "chain", "order", "kind", "owner", "match", "endpoint", "ifindex", "prio", "protocol", "keys",
              "actions")
SW_COLUMNS = ("port", "ports", "chain", "match", "reason", "owner")
FLOW_COLUMNS = ("cookie", "table", "priority", "match")


def path_for(state_dir: str | Path, chassis: str) -> Path:
    return Path(state_dir) / f"flows-{chassis}.msgpack"


def port_label(key: int, physnets: Mapping[int, str] | None = None) -> str | None:
    """The id a host port without a database object goes by: ``tunnel:vxlan``, ``physnet:NAME``."""
    for kind, number in ir.TUNNEL_PORTS.items():
        if key == number:
            return f"tunnel:{kind}"
    if physnets and key in physnets:
        return f"physnet:{physnets[key]}"
    return None


# --- MessagePack both ways ---------------------------------------------------------------------


def _packable(value: Any) -> Any:
    """What MessagePack has no type for: an integer past 64 bits as :data:`BIG_INT`, anything else its repr."""
    if isinstance(value, int):
        return msgpack.ExtType(BIG_INT, value.to_bytes(value.bit_length() // 8 + 1, "big", signed=True))
    return repr(value)


def _unpacked(code: int, data: bytes) -> Any:
    if code == BIG_INT:
        return int.from_bytes(data, "big", signed=True)
    return msgpack.ExtType(code, data)


def packer() -> msgpack.Packer:
    return msgpack.Packer(default=_packable)


def unpack(data: bytes) -> Any:
    """MessagePack as :func:`packer` writes it; arrays as tuples (rows and keys are hashed by readers)."""
    return msgpack.unpackb(data, ext_hook=_unpacked, use_list=False, raw=False, strict_map_key=False)


def key_values(keys: flower.FlowerKeys) -> tuple[Any, ...]:
    """A rule's keys as a row holds them: every field's value (None: not matched), in :data:`KEY_FIELDS` order,
    as read back from the file (so a rule dumped from the NIC compares equal to its published row)."""
    return unpack(packer().pack(tuple(vars(keys).values())))


def keys_map(keys: Iterable[Any]) -> dict[str, Any]:
    """A row's keys as field -> value, the fields matched only."""
    return {name: value for name, value in zip(KEY_FIELDS, keys, strict=True) if value is not None}


# --- tc-flower rules as text and JSON -------------------------------------------------------


_MAC_KEYS = {"eth_dst", "eth_src", "arp_sha", "arp_tha"}
_IPV4_KEYS = {"ipv4_src", "ipv4_dst", "arp_sip", "arp_tip", "enc_ipv4_src", "enc_ipv4_dst"}
_IPV6_KEYS = {"ipv6_src", "ipv6_dst", "enc_ipv6_src", "enc_ipv6_dst"}
_PROTOCOLS = {0x0800: "ip", 0x86DD: "ipv6", 0x0806: "arp", 0x8100: "802.1q", 0x88A8: "802.1ad"}


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
    pass builds new dictionaries and lists rather than changing those of the pass before), but ``flows``: the
    OVS backend's own mapping of the flows it holds (OvsBackend.held), which later passes change, so the writer
    copies it with one ``dict()`` (atomic under the GIL: its keys are tuples of text and integers, hashed in C)
    rather than the agent's thread copying 100,000 entries on every pass."""

    at: float
    full: bool
    plan: Plan
    flower: dict[int, dict[int, list[tuple[HwRule, str, Any]]]]
    ports: dict[int, tuple[str, str | None, int | None]]  # logical key -> (id, name, ofport)
    devices: list[tuple[str, int, str | None, int | None]]  # (endpoint, ifindex, name, port key)
    offloaded: frozenset[int] = frozenset()  # the ports with a representor the plan was made for
    local: frozenset[int] = frozenset()  # the database's ports bound here
    flows: Mapping[tuple, Any] = dataclasses.field(default_factory=dict)  # FlowKey -> Held (its .cookie)


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
        self._cache: dict[int, tuple[Any, Any, bytes]] = {}  # id(flower rule) -> (rule, flower rule, packed row)
        self._sw_cache: dict[int, tuple[SoftwareLeaf, tuple]] = {}
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
        physnets = {ir.physnet_port(net): net for net in agent.bridge_mappings}
        for key, ofport in agent.ofports.items():
            if key not in ports:
                ports[key] = (port_label(key, physnets) or str(key), None, ofport)
        for key in agent.encoded_reps:
            if key not in ports:
                ports[key] = (port_label(key, physnets) or str(key), None, None)
        by_rep = {(rep.endpoint, rep.ifindex): key for key, rep in agent.encoded_reps.items()}
        names = {(r.tc_endpoint, r.ifindex): r.name for r in agent.device_reports.values() if r.tc_endpoint}
        reps = agent.managed_reps | set(agent.encoded_reps.values())
        devices = [(rep.endpoint, rep.ifindex, names.get((rep.endpoint, rep.ifindex)),
                    by_rep.get((rep.endpoint, rep.ifindex))) for rep in reps]
        snapshot = Snapshot(time.time(), full, plan, dict(agent.flower_rules), ports, devices,
                            frozenset(agent.encoded_reps), frozenset(local), agent.ovs.held)
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
            self.write(snapshot, owners() if owners else [], refused() if refused else {})
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

    def write(self, snap: Snapshot, owners: Iterable[Any], refused: Mapping[tuple, str]) -> None:
        """The file, written now."""
        write_atomically(self.path, self.document_bytes(snap, owners, refused))

    def document(self, snap: Snapshot, owners: Iterable[Any], refused: Mapping[tuple, str]) -> dict[str, Any]:
        """The document as a reader loads it (:func:`read`)."""
        return read(self.document_bytes(snap, owners, refused))

    def document_bytes(self, snap: Snapshot, owners: Iterable[Any], refused: Mapping[tuple, str]) -> bytes:
        """The file's bytes. Each rule's row is packed once and kept while the agent keeps the rule (the same
        objects from pass to pass), so a write after a small change packs little; the document is joined from
        the pieces (a MessagePack array is its header and its items, one after the other)."""
        pack = packer().pack
        hw = self._hw_rows(snap, pack)
        sw = self._software_rows(snap) + self._whole_port_paths(snap)
        flows = [(held.cookie, *key) for key, held in dict(snap.flows).items()]
        device_of = {port: name for _, _, name, port in snap.devices if port is not None}
        head = {
            "version": VERSION, "chassis": self.chassis, "written": time.time(), "planned": snap.at,
            "full": snap.full, "ovs": self.ovs,
            "ports": {str(key): {"id": pid, "name": name, "ofport": ofport, "device": device_of.get(key)}
                      for key, (pid, name, ofport) in sorted(snap.ports.items())},
            "devices": [{"endpoint": ep, "ifindex": ifindex, "name": name, "port": port}
                        for ep, ifindex, name, port in sorted(snap.devices, key=lambda d: (d[0], d[1]))],
            "refused": [{"ifindex": k[0], "chain": k[1], "prio": k[2], "protocol": k[3],
                         "keys": tuple(vars(k[4]).values()), "error": error} for k, error in refused.items()],
            "owners": sorted({str(owner) for owner in owners}),
            "key_fields": KEY_FIELDS, "hw_columns": HW_COLUMNS, "sw_columns": SW_COLUMNS,
            "flow_columns": FLOW_COLUMNS, "sw": sw, "flows": flows,
        }
        out = packer()
        parts = [out.pack_map_header(len(head) + 1)]
        parts += [pack(name) + pack(value) for name, value in head.items()]
        parts += [pack("hw"), out.pack_array_header(len(hw)), *hw]
        return b"".join(parts)

    def _hw_rows(self, snap: Snapshot, pack: Callable[[Any], bytes]) -> list[bytes]:
        """Each NIC rule's packed row, packed again only when the agent encoded the rule afresh."""
        devices = {ifindex: name for _, ifindex, name, _ in snap.devices if name}
        hw: list[bytes] = []
        cache, fresh = self._cache, {}
        texts: dict[tuple, str] = {}  # a rule's actions -> their text, for this write only (most rules share a few;
        # kept longer, the texts of every port's conntrack zone and of devices long gone piled up in the soak)
        for port in sorted(snap.flower):
            for chain in sorted(snap.flower[port]):
                for rule, endpoint, fr in snap.flower[port][chain]:
                    key = id(fr)  # the agent keeps a rule's flower encoding while the rule stays equal (_encode)
                    held = cache.get(key)
                    if held is None or held[1] is not fr or (held[0] is not rule and held[0] != rule):
                        kind = rule_kind(rule)
                        actions = texts.get(fr.actions)
                        if actions is None:
                            actions = texts[fr.actions] = flower_actions(fr.actions, devices)
                        owner = str(rule.owner) if kind == "rule" and rule.owner else None
                        held = (rule, fr, pack((port, fr.chain, rule.order, kind, owner, rule.match, endpoint,
                                                fr.ifindex, fr.prio, fr.protocol, tuple(vars(fr.keys).values()),
                                                actions)))
                    fresh[key] = held
                    hw.append(held[2])
        self._cache = fresh
        return hw

    def _software_rows(self, snap: Snapshot) -> list[tuple]:
        """Each path the plan leaves to OVS, with the ports a shared chain's path is reached from."""
        reaching: dict[int, list[int]] = {}
        for port, chains in snap.plan.reaches.items():
            for number in chains:
                reaching.setdefault(number, []).append(port)
        sw: list[tuple] = []
        sw_fresh: dict[int, tuple[SoftwareLeaf, tuple]] = {}
        for leaf in snap.plan.software:
            held_leaf = self._sw_cache.get(id(leaf))
            if held_leaf is None or held_leaf[0] is not leaf:
                owner = getattr(leaf, "owner", None)
                held_leaf = (leaf, (leaf.in_port, leaf.chain, leaf.match, leaf.reason, str(owner) if owner else None))
            sw_fresh[id(leaf)] = held_leaf
            in_port, chain, match, reason, owner = held_leaf[1]
            ports = sorted(reaching.get(chain, ())) if in_port == SHARED else [in_port]
            sw.append((in_port, ports, chain, match, reason, owner))
        self._sw_cache = sw_fresh
        return sw

    def _whole_port_paths(self, snap: Snapshot) -> list[tuple]:
        """What the partitioner never walks, so has no path of: a port's traffic of an ethertype not offloaded
        (``[offload] ethertypes``), and all the traffic of a port without an offload-capable representor or
        while offload is off."""
        out = []
        for key in sorted(snap.local):
            if self.ethertypes is None:
                reasons = [(ir.Match(), "offload is off ([offload] enabled = false): everything stays in Open "
                            "vSwitch")]
            elif key not in snap.offloaded:
                reasons = [(ir.Match(), "no offload-capable representor: all of the port's traffic stays in Open "
                            "vSwitch")]
            else:
                reasons = [(ir.Match.of(eth_type=value), f"{name} is not among [offload] ethertypes: it stays in "
                            "Open vSwitch" + (" (the control plane sees address resolution)" if name == "arp" else ""))
                           for name, value in ir.ETH_TYPES_BY_NAME.items() if name not in self.ethertypes]
            out += [(key, [key], 0, match, reason, None) for match, reason in reasons]
        return out


def write_atomically(path: Path, data: bytes) -> None:
    """``data`` to ``path`` through a temporary file in the same directory, renamed over it.

    Root's only (the directory made 0700, the file 0600): the plan names every tenant port of the host and
    where its packets go.
    """
    path.parent.mkdir(mode=DIR_MODE, parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    os.fchmod(fd, FILE_MODE)  # a temporary file left behind by a crash keeps the mode it was made with
    with open(fd, "wb") as out:
        out.write(data)
    os.replace(tmp, path)


def _ir_text(terms: Iterable[tuple[str, int, int]]) -> str:
    return format_match(ir.Match(ir.FieldMatch(*term) for term in terms), {})


def read(data: bytes) -> dict[str, Any]:
    """A published document from its bytes: each row a map of its columns, IR matches as text (ValueError when
    it is not one this code reads)."""
    try:
        document = unpack(data)
    except (ValueError, msgpack.UnpackException) as exc:
        raise ValueError(f"not a flows file ({exc})") from None
    if not isinstance(document, dict) or document.get("version") != VERSION:
        raise ValueError(f"not a version {VERSION} flows file (an agent of another hwflow version wrote it: "
                         "restart the agent, or use its hwflow)")
    tables = (("hw", "hw_columns", HW_COLUMNS), ("sw", "sw_columns", SW_COLUMNS), ("flows", "flow_columns",
                                                                                 FLOW_COLUMNS))
    if document.get("key_fields") != KEY_FIELDS or any(document.get(named) != columns for _, named, columns in tables):
        raise ValueError("its tc-flower keys or columns are another hwflow version's: restart the agent, or use "
                         "its hwflow")
    try:
        for table, _, columns in tables:
            rows = [dict(zip(columns, row, strict=True)) for row in document[table]]
            if table != "flows":
                texts: dict[tuple, str] = {}  # a shared chain's rules are in every port's copy: one text each
                for row in rows:
                    text = texts.get(row["match"])
                    if text is None:
                        text = texts[row["match"]] = _ir_text(row["match"])
                    row["match"] = text
            document[table] = rows
    except (KeyError, TypeError, ValueError) as exc:  # cut short, or not the agent's
        raise ValueError(f"not a flows file the agent wrote ({type(exc).__name__}: {exc})") from None
    return document


def load(path: Path) -> dict[str, Any]:
    """The published document at ``path`` (ValueError when it is not one this code reads)."""
    try:
        return read(path.read_bytes())
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
