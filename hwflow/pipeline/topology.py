"""The view of the logical network that apps compile from.

The agent builds it from its cache; apps read it and never write. Keeping it
a plain immutable value makes every compile a pure function of it, which is
what lets the agent diff two compiles instead of scripting events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from hwflow.model.objects import Network, Port


@dataclasses.dataclass(frozen=True)
class Topology:
    chassis: str
    networks: Mapping[str, Network]
    ports: Mapping[str, Port]
    local_port_ids: frozenset[str]  # ports plugged into this host's bridge

    def local_ports(self) -> list[Port]:
        return sorted((self.ports[i] for i in self.local_port_ids if i in self.ports), key=lambda p: p.unique_key)

    def ports_of(self, network_id: str) -> list[Port]:
        return sorted((p for p in self.ports.values() if p.network_id == network_id), key=lambda p: p.unique_key)
