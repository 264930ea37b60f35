"""The view of the logical network that apps compile from, with its indexes.

The agent owns one Topology and updates it from its cache: ``apply`` and
``set_local`` for single changes (cheap), ``update`` to make it equal to a
whole snapshot (walks everything). Both return what changed, which is what
the incremental compiler recompiles. Apps only
read it. Objects are compared by identity first (the cache hands back the
same instance while a record is unchanged), so an update that changes one
port costs little more than walking the dictionaries.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping

from hwflow.model.objects import Network, Port

KIND_NETWORK = "network"
KIND_PORT = "port"
KIND_LOCAL = "local"  # a port became local to, or left, this chassis


@dataclasses.dataclass(frozen=True)
class Change:
    kind: str
    id: str
    old: object | None  # the object before (None: it is new; for "local", the Port)
    new: object | None  # the object after (None: it is gone)


class Topology:
    def __init__(self, chassis: str, networks: Mapping[str, Network] | None = None,
                 ports: Mapping[str, Port] | None = None, local_port_ids: Iterable[str] = ()) -> None:
        self.chassis = chassis
        self.networks: dict[str, Network] = {}
        self.ports: dict[str, Port] = {}
        self.local_port_ids: set[str] = set()
        self._ports_by_net: dict[str, set[str]] = {}
        self.update(networks or {}, ports or {}, local_port_ids)

    # --- reading ---------------------------------------------------------------

    def local_ports(self) -> list[Port]:
        return sorted((self.ports[i] for i in self.local_port_ids if i in self.ports), key=lambda p: p.unique_key)

    def ports_of(self, network_id: str) -> list[Port]:
        return sorted((self.ports[i] for i in self._ports_by_net.get(network_id, ())), key=lambda p: p.unique_key)

    def local_ports_of(self, network_id: str) -> list[Port]:
        return [p for p in self.ports_of(network_id) if p.id in self.local_port_ids]

    def is_local(self, port_id: str) -> bool:
        return port_id in self.local_port_ids and port_id in self.ports

    # --- writing (the agent only) --------------------------------------------------

    def update(self, networks: Mapping[str, Network], ports: Mapping[str, Port],
               local_port_ids: Iterable[str]) -> list[Change]:
        """Make the view equal to the arguments; return what changed."""
        changes = _diff(KIND_NETWORK, self.networks, networks) + _diff(KIND_PORT, self.ports, ports)
        for change in changes:
            if change.kind == KIND_PORT:
                self._reindex(change)
        self.networks = dict(networks)
        self.ports = dict(ports)
        local = set(local_port_ids)
        for pid in sorted(local ^ self.local_port_ids):
            port = self.ports.get(pid)
            changes.append(Change(KIND_LOCAL, pid, port if pid in self.local_port_ids else None,
                                  port if pid in local else None))
        self.local_port_ids = local
        return changes

    def apply(self, kind: str, obj_id: str, obj: Network | Port | None) -> list[Change]:
        """One object written (or deleted, ``obj`` None): the cheap path for a watched change."""
        table: dict = self.networks if kind == KIND_NETWORK else self.ports
        before = table.get(obj_id)
        if before is obj or before == obj:
            return []
        if obj is None:
            del table[obj_id]
        else:
            table[obj_id] = obj
        change = Change(kind, obj_id, before, obj)
        if kind == KIND_PORT:
            self._reindex(change)
        return [change]

    def set_local(self, port_id: str, local: bool) -> list[Change]:
        """A port's interface appeared on (or left) this chassis' bridge."""
        if (port_id in self.local_port_ids) == local:
            return []
        port = self.ports.get(port_id)
        if local:
            self.local_port_ids.add(port_id)
            return [Change(KIND_LOCAL, port_id, None, port)]
        self.local_port_ids.discard(port_id)
        return [Change(KIND_LOCAL, port_id, port, None)]

    def _reindex(self, change: Change) -> None:
        if isinstance(change.old, Port):
            self._ports_by_net.get(change.old.network_id, set()).discard(change.id)
        if isinstance(change.new, Port):
            self._ports_by_net.setdefault(change.new.network_id, set()).add(change.id)


def _diff(kind: str, old: Mapping[str, object], new: Mapping[str, object]) -> list[Change]:
    changes = [Change(kind, key, obj, None) for key, obj in old.items() if key not in new]
    for key, obj in new.items():
        before = old.get(key)
        if before is not obj and before != obj:
            changes.append(Change(kind, key, before, obj))
    return changes
