"""Selective topology: which objects an agent needs, given the ports plugged into its bridge.

An agent holds only what its local ports need, as in Dragonflow: their
networks (with every port, subnet and router port on them), their security
groups (with the rules, the groups those rules name as remote, and the
ports in all of those groups, whose addresses the rules match), the routers
attached to their networks and the networks behind those routers (with
their ports and subnets), the floating IPs of local ports and their
external networks, routers' gateway networks (with ports and subnets: the
external next hop, the upstream router, is a port there, and the outside
behind the uplink reaches FIPs through L2 on those networks), and the
chassis it tunnels to. Nothing of a project none of its ports belongs to
or is connected to is held.

``walk`` computes that set from a ``Source``: a whole snapshot (at start-up
and after compaction) or the objects already held plus targeted reads of
the database (as ports come and go). It also returns which (object, kind)
referrer lists it read: the cache keeps those lists current from the watch
(a new object pointing at such an object is taken in), so the next walk
reads them from memory, and the database is only asked about what is new.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Protocol

from hwflow.model.objects import (
    Chassis,
    FloatingIP,
    NbObject,
    Network,
    Port,
    Router,
    RouterPort,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)

Key = tuple[str, str]  # (kind, id)
Expansion = tuple[str, str, str]  # (kind, id, referrer kind): a referrer list that was read


class Source(Protocol):
    def get(self, kind: str, ident: str) -> NbObject | None: ...

    def referrers(self, kind: str, ident: str, of_kind: str) -> list[NbObject]: ...


def referrer_index(objs: Iterable[NbObject]) -> dict[Expansion, list[NbObject]]:
    """(kind, id, referrer kind) -> the objects of that kind pointing at (kind, id)."""
    index: dict[Expansion, list[NbObject]] = {}
    for obj in objs:
        for _, kind, ident in obj.refs():
            index.setdefault((kind, ident, obj.kind), []).append(obj)
    return index


class SnapshotSource:
    """Every object of the database at one revision, in memory."""

    def __init__(self, objs: Iterable[NbObject]) -> None:
        self.objs = {(o.kind, o.id): o for o in objs}
        self.index = referrer_index(self.objs.values())

    def get(self, kind: str, ident: str) -> NbObject | None:
        return self.objs.get((kind, ident))

    def referrers(self, kind: str, ident: str, of_kind: str) -> list[NbObject]:
        return list(self.index.get((kind, ident, of_kind), ()))


@dataclasses.dataclass
class Selection:
    objects: dict[Key, NbObject]
    expanded: set[Expansion]


def walk(local_ids: Iterable[str], chassis: str, source: Source) -> Selection:
    """Everything the ports ``local_ids`` (those bound here or unbound) need, read from ``source``."""
    sel = Selection({}, set())

    def fetch(kind: str, ident: str) -> NbObject | None:
        obj = sel.objects.get((kind, ident)) or source.get(kind, ident)
        if obj is not None:
            sel.objects[kind, ident] = obj
        return obj

    def referrers(obj: NbObject, of_kind: str) -> list[NbObject]:
        sel.expanded.add((obj.kind, obj.id, of_kind))
        found = source.referrers(obj.kind, obj.id, of_kind)
        for o in found:
            sel.objects[o.kind, o.id] = o
        return found

    local = [p for pid in sorted(local_ids) if isinstance(p := source.get(Port.kind, pid), Port)
             and p.chassis in ("", chassis)]
    own_networks: set[str] = set()
    groups: set[str] = set()
    edge_networks: set[str] = set()  # floating IPs' and router gateways' networks: not the routers on them
    for port in local:
        sel.objects[port.kind, port.id] = port
        own_networks.add(port.network_id)
        groups.update(port.security_groups)
        edge_networks.update(f.floating_network_id for f in referrers(port, FloatingIP.kind)
                             if isinstance(f, FloatingIP))

    routers = {rp.router_id for net in own_networks if (n := fetch(Network.kind, net))
               for rp in referrers(n, RouterPort.kind) if isinstance(rp, RouterPort)}
    behind: set[str] = set()
    for router_id in sorted(routers):
        router = fetch(Router.kind, router_id)
        if not isinstance(router, Router):
            continue
        behind.update(rp.network_id for rp in referrers(router, RouterPort.kind) if isinstance(rp, RouterPort))
        if router.gateway_network_id:
            edge_networks.add(router.gateway_network_id)

    for net_id in sorted(own_networks | behind | edge_networks):
        if net := fetch(Network.kind, net_id):
            referrers(net, Port.kind)
            referrers(net, Subnet.kind)

    remote_groups: set[str] = set()
    for group_id in sorted(groups):
        if group := fetch(SecurityGroup.kind, group_id):
            remote_groups.update(r.remote_group_id for r in referrers(group, SecurityGroupRule.kind)
                                 if isinstance(r, SecurityGroupRule) and r.remote_group_id)
    for group_id in sorted(groups | remote_groups):
        if group := fetch(SecurityGroup.kind, group_id):
            referrers(group, Port.kind)

    bound = {p.chassis for (kind, _), p in list(sel.objects.items()) if kind == Port.kind and isinstance(p, Port)}
    for name in sorted((bound | {chassis}) - {""}):
        fetch(Chassis.kind, name)
    return sel


class HeldSource:
    """What an agent already holds, falling back to the database for what it has not read yet."""

    def __init__(self, held: Mapping[Key, NbObject], expanded: set[Expansion], database: Source) -> None:
        self.held = held
        self.expanded = expanded
        self.database = database
        self.index = referrer_index(held.values())

    def get(self, kind: str, ident: str) -> NbObject | None:
        return self.held.get((kind, ident)) or self.database.get(kind, ident)

    def referrers(self, kind: str, ident: str, of_kind: str) -> list[NbObject]:
        if (kind, ident, of_kind) in self.expanded:
            return list(self.index.get((kind, ident, of_kind), ()))
        return self.database.referrers(kind, ident, of_kind)
