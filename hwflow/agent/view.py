"""What a chassis's agent compiles from: the one place that turns northbound objects into its ``Topology``.

``hwflow-agent`` and ``hwflow trace`` must compile the same pipeline for a chassis, so both take their
topology here:

- :data:`TOPOLOGY_KINDS`: the kinds the apps compile from (the agent's cache holds these, and chassis).
- :func:`seen`: an object as the topology takes it; another chassis whose agent said it is up and whose
  liveness lease lapsed is taken as not registered (None), so nothing tunnels to its ports until it is back (a
  record that says it is not up, an agent stopped cleanly or a chassis no agent runs on, keeps its tunnels).
- :func:`is_here` / :func:`local_ports`: which of the ports plugged into the chassis's bridge are local (bound
  to the chassis, or bound to none).
- :func:`topology_objects`: the held objects by kind, as :meth:`Topology.update` takes them.
- :func:`update_topology`: the agent's full path (a full pass, or a cache that resynced): the topology made
  equal to what is held, returning the changes the incremental compiler recompiles.
- :func:`topology_of`: the whole of it from a snapshot of the database: ``selection.walk`` for the plugged
  ports (what the agent's cache would hold), then :func:`update_topology` on a fresh ``Topology``.

Where trace and the agent differ, they differ in what they are given, not in what they do with it: the agent's
plugged ports are the interfaces on its bridge with an iface-id (an unbound port plugged there is local too),
trace has no OVS to ask and takes the ports bound to the chassis; the agent's liveness is the last answer it
read, trace reads it when it runs. A port's local number (its conntrack zone) is what a freshly started agent
gives it; a long-running agent whose ports came and went may have given one a number from the top down.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from typing import Any

from hwflow.agent import selection
from hwflow.model.objects import Chassis, NbObject, Port
from hwflow.pipeline.topology import Change, Topology

# What the apps compile from; the agent's cache holds these (and chassis).
TOPOLOGY_KINDS = ("network", "subnet", "port", "router", "router_port", "security_group", "security_group_rule",
                  "floating_ip", "chassis")


def seen(obj: NbObject | None, chassis: str, alive: Collection[str] | None) -> NbObject | None:
    """``obj`` as the topology of ``chassis`` takes it: another chassis that says it is up but is not in ``alive``
    (None: liveness not read yet, every chassis counts) is taken as not registered (None)."""
    if isinstance(obj, Chassis) and obj.up and obj.id != chassis and alive is not None and obj.id not in alive:
        return None
    return obj


def is_here(port: Port, chassis: str) -> bool:
    """Whether a port plugged into ``chassis``'s bridge is local there: bound to it, or bound to no chassis."""
    return port.chassis in ("", chassis)


def local_ports(plugged: Iterable[str], ports: Mapping[str, Port], chassis: str) -> set[str]:
    """The plugged port ids that are local: known ports bound to ``chassis`` or to none."""
    return {pid for pid in plugged if pid in ports and is_here(ports[pid], chassis)}


def topology_objects(held: Iterable[NbObject], chassis: str, alive: Collection[str] | None
                     ) -> dict[str, dict[str, Any]]:
    """kind -> id -> object for every kind of :data:`TOPOLOGY_KINDS` (each present, maybe empty), chassis records
    filtered by :func:`seen`."""
    objects: dict[str, dict[str, Any]] = {kind: {} for kind in TOPOLOGY_KINDS}
    for obj in held:
        if obj.kind in objects:
            objects[obj.kind][obj.id] = obj
    objects[Chassis.kind] = {i: c for i, c in objects[Chassis.kind].items() if seen(c, chassis, alive) is not None}
    return objects


def update_topology(topo: Topology, held: Iterable[NbObject], plugged: Iterable[str],
                    alive: Collection[str] | None) -> list[Change]:
    """Make ``topo`` equal to the held objects and the local ones of the ``plugged`` port ids; what changed."""
    objects = topology_objects(held, topo.chassis, alive)
    return topo.update(objects, local_ports(plugged, objects[Port.kind], topo.chassis))


def topology_of(chassis: str, snapshot: Iterable[NbObject], plugged: Iterable[str],
                alive: Collection[str] | None = None) -> Topology:
    """The topology the agent of ``chassis`` compiles when ``plugged`` are the port ids on its bridge, from a
    snapshot of the whole database: what its cache would hold (``selection.walk``) made into a fresh view."""
    plugged = frozenset(plugged)
    held = selection.walk(plugged, chassis, selection.SnapshotSource(snapshot)).objects.values()
    topo = Topology(chassis)
    update_topology(topo, held, plugged, alive)
    return topo


def bound_ports(snapshot: Iterable[NbObject], chassis: str) -> set[str]:
    """What trace takes as plugged into ``chassis`` (it has no OVS to ask): the ports bound to it."""
    return {o.id for o in snapshot if isinstance(o, Port) and o.chassis == chassis}
