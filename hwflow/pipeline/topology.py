"""The view of the logical network that apps compile from, with its indexes.

The agent owns one Topology and updates it from its cache: ``apply`` and
``set_local`` for single changes (cheap), ``update`` to make it equal to a
whole snapshot (walks everything). Both return what changed, which is what
the incremental compiler recompiles. Apps only read it.

Objects are kept per kind (``network``, ``port``, ``subnet``, ``router``,
``router_port``...) and compared by identity first (the cache hands back the
same instance while a record is unchanged), so an update that changes one
port costs little more than walking the dictionaries. The few lookups apps
make by a field (the ports of a network, the router ports of a router) are
indexed here.

It also gives each local port a *local number* (:meth:`Topology.local_number`),
1..``LOCAL_NUMBERS``, for datapath resources scarcer than database keys (a
conntrack zone is 16 bits; database keys grow forever). A port keeps its
number while it stays local and known; its own ``unique_key`` is preferred
when free, so small deployments see zone == key. Ports whose key is too big
take numbers from the top down, so they rarely take a small key's own. A
port that finds none free (all taken) gets one when it is next written or
plugged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from hwflow.model.objects import NbObject, Network, Port

KIND_NETWORK = "network"
KIND_PORT = "port"
KIND_LOCAL = "local"  # a port became local to, or left, this chassis
KIND_PRESENT = "present"  # a network got its first local port here, or lost its last (old/new: bool)

LOCAL_NUMBERS = 0x7FFF  # local numbers are 1..this (conntrack zones below l3's NAT zones)

# (kind, field) pairs apps look objects up by.
INDEXED = (("port", "network_id"), ("subnet", "network_id"), ("router_port", "router_id"),
           ("router_port", "network_id"))


def network_admin_up(network: Network | None) -> bool:
    """Whether a network lets its ports carry traffic: one not known (yet, or any more) holds none of them down."""
    return network is None or network.admin_state_up


@dataclasses.dataclass(frozen=True)
class Change:
    kind: str
    id: str
    old: Any  # the object before (None: it is new; for "local", the Port)
    new: Any  # the object after (None: it is gone)


class Topology:
    def __init__(self, chassis: str, networks: Mapping[str, Network] | None = None,
                 ports: Mapping[str, Port] | None = None, local_port_ids: Iterable[str] = (),
                 others: Mapping[str, Mapping[str, NbObject]] | None = None) -> None:
        self.chassis = chassis
        self.objects: dict[str, dict[str, Any]] = {}
        self.local_port_ids: set[str] = set()
        self._index: dict[tuple[str, str], dict[Any, set[str]]] = {key: {} for key in INDEXED}
        # (kind, field, value) -> the sorted answer of ``by``: apps ask the same question once per port
        self._by_cache: dict[tuple[str, str, Any], tuple[Any, ...]] = {}
        self._numbers: dict[str, int] = {}  # local port id -> its local number
        self._numbered: set[int] = set()
        self._next_high = LOCAL_NUMBERS  # where the top-down search for a free number starts
        self._local_network: dict[str, str] = {}  # local, known port id -> its network
        self._local_count: dict[str, int] = {}  # network id -> how many local ports it has
        self.update({KIND_NETWORK: networks or {}, KIND_PORT: ports or {}, **(others or {})}, local_port_ids)

    # --- reading ---------------------------------------------------------------

    @property
    def networks(self) -> dict[str, Network]:
        return self.objects.setdefault(KIND_NETWORK, {})

    @property
    def ports(self) -> dict[str, Port]:
        return self.objects.setdefault(KIND_PORT, {})

    def of(self, kind: str) -> dict[str, Any]:
        return self.objects.setdefault(kind, {})

    def get(self, kind: str, obj_id: str) -> Any:
        return self.objects.get(kind, {}).get(obj_id)

    def by(self, kind: str, field: str, value: object) -> list[Any]:
        """Objects of ``kind`` whose ``field`` is ``value`` (an indexed pair), in unique_key order."""
        cached = self._by_cache.get((kind, field, value))
        if cached is None:
            ids = self._index[kind, field].get(value, ())
            table = self.objects.get(kind, {})
            cached = tuple(sorted((table[i] for i in ids), key=lambda o: (o.unique_key, o.id)))
            self._by_cache[kind, field, value] = cached
        return list(cached)

    def local_ports(self) -> list[Port]:
        return sorted((self.ports[i] for i in self.local_port_ids if i in self.ports), key=lambda p: p.unique_key)

    def ports_of(self, network_id: str) -> list[Port]:
        return self.by(KIND_PORT, "network_id", network_id)

    def local_ports_of(self, network_id: str) -> list[Port]:
        return [p for p in self.ports_of(network_id) if p.id in self.local_port_ids]

    def is_local(self, port_id: str) -> bool:
        return port_id in self.local_port_ids and port_id in self.ports

    def admin_up(self, port: Port) -> bool:
        """Whether the port may carry traffic: it and its network (when known) are administratively up.

        One answer for the apps that drop a down port's traffic and for the agent that reports it.
        """
        return port.admin_state_up and network_admin_up(self.networks.get(port.network_id))

    def local_number(self, port_id: str) -> int | None:
        """The local port's number (stable while it stays local), or None: not local, or all numbers taken."""
        return self._numbers.get(port_id)

    # --- writing (the agent only) --------------------------------------------------

    def update(self, objects: Mapping[str, Mapping[str, Any]], local_port_ids: Iterable[str]) -> list[Change]:
        """Make the view equal to ``objects`` (kind -> id -> object) and the local ports; return what changed.

        A kind missing from ``objects`` is left as it is.
        """
        changes: list[Change] = []
        ports_before = self.ports
        for kind, new in objects.items():
            old = self.objects.get(kind, {})
            diff = _diff(kind, old, new)
            for change in diff:
                self._reindex(change)
            changes += diff
            self.objects[kind] = dict(new)
        local = set(local_port_ids)
        for pid in sorted(local ^ self.local_port_ids):
            # the port as it was while local (it may be gone or on another network now) and as it is now
            changes.append(Change(KIND_LOCAL, pid, ports_before.get(pid) if pid in self.local_port_ids else None,
                                  self.ports.get(pid) if pid in local else None))
        self.local_port_ids = local
        touched = {c.id for c in changes if c.kind in (KIND_PORT, KIND_LOCAL)}
        # numbers given back first, then taken in key order: a restarted agent numbers its ports as before
        return changes + self._settle(sorted(touched, key=lambda i: (self.is_local(i),
                                                                      getattr(self.ports.get(i), "unique_key", 0), i)))

    def apply_all(self, changed: Mapping[tuple[str, str], Any], local_port_ids: Iterable[str],
                  kinds: Sequence[str]) -> list[Change]:
        """:meth:`update` from what changed only: ``changed`` maps (kind, id) to the object now (None: gone).

        Ports leaving first (as the object they were local as), then the objects one by one in the order of
        ``kinds``, then ports arriving in key order: numbers are given back before they are taken, as
        :meth:`update` does.
        """
        local = set(local_port_ids)
        changes: list[Change] = []
        for pid in sorted(self.local_port_ids - local):
            changes += self.set_local(pid, False)
        for (kind, ident), obj in sorted(changed.items(), key=lambda item: (kinds.index(item[0][0]), item[0][1])):
            changes += self.apply(kind, ident, obj)
        for pid in sorted(local - self.local_port_ids, key=lambda i: (self.ports[i].unique_key, i)):
            changes += self.set_local(pid, True)
        return changes

    def apply(self, kind: str, obj_id: str, obj: Any) -> list[Change]:
        """One object written (or deleted, ``obj`` None): the cheap path for a watched change."""
        table = self.objects.setdefault(kind, {})
        before = table.get(obj_id)
        if before is obj or before == obj:
            return []
        if obj is None:
            del table[obj_id]
        else:
            table[obj_id] = obj
        change = Change(kind, obj_id, before, obj)
        self._reindex(change)
        return [change, *self._settle([obj_id])] if kind == KIND_PORT else [change]

    def set_local(self, port_id: str, local: bool) -> list[Change]:
        """A port's interface appeared on (or left) this chassis' bridge."""
        if (port_id in self.local_port_ids) == local:
            return []
        port = self.ports.get(port_id)
        if local:
            self.local_port_ids.add(port_id)
            change = Change(KIND_LOCAL, port_id, None, port)
        else:
            self.local_port_ids.discard(port_id)
            change = Change(KIND_LOCAL, port_id, port, None)
        return [change, *self._settle([port_id])]

    def _settle(self, port_ids: Iterable[str]) -> list[Change]:
        """Bookkeeping of ports that may have become (or stopped being) local and known: their numbers, and
        the networks that got their first local port or lost their last (a "present" change each)."""
        was_present: dict[str, bool] = {}
        for pid in port_ids:
            old = self._local_network.pop(pid, None)
            new = self.ports[pid].network_id if self.is_local(pid) else None
            for network_id, step in ((old, -1), (new, 1)):
                if network_id is not None:
                    count = self._local_count.pop(network_id, 0)
                    was_present.setdefault(network_id, count > 0)
                    if count + step:
                        self._local_count[network_id] = count + step
            if new is not None:
                self._local_network[pid] = new
            self._renumber(pid)
        return [Change(KIND_PRESENT, n, was, not was) for n, was in sorted(was_present.items())
                if was != (n in self._local_count)]

    def _renumber(self, port_id: str) -> None:
        """Give a port that is local and known a number, and take it back from one that is not."""
        number = self._numbers.get(port_id)
        if not self.is_local(port_id):
            if number is not None:
                del self._numbers[port_id]
                self._numbered.discard(number)
                self._next_high = max(self._next_high, number)
            return
        if number is None:
            number = self._free_number(self.ports[port_id].unique_key)
            if number is not None:
                self._numbers[port_id] = number
                self._numbered.add(number)

    def _free_number(self, key: int) -> int | None:
        if 1 <= key <= LOCAL_NUMBERS and key not in self._numbered:
            return key
        while self._next_high >= 1 and self._next_high in self._numbered:
            self._next_high -= 1
        return self._next_high if self._next_high >= 1 else None

    def _reindex(self, change: Change) -> None:
        for kind, field in INDEXED:
            if kind != change.kind:
                continue
            index = self._index[kind, field]
            if change.old is not None:
                index.get(getattr(change.old, field), set()).discard(change.id)
                self._by_cache.pop((kind, field, getattr(change.old, field)), None)
            if change.new is not None:
                index.setdefault(getattr(change.new, field), set()).add(change.id)
                self._by_cache.pop((kind, field, getattr(change.new, field)), None)


def _diff(kind: str, old: Mapping[str, object], new: Mapping[str, object]) -> list[Change]:
    changes = [Change(kind, key, obj, None) for key, obj in old.items() if key not in new]
    for key, obj in new.items():
        before = old.get(key)
        if before is not obj and before != obj:
            changes.append(Change(kind, key, before, obj))
    return changes
