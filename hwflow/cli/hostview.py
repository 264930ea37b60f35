"""A chassis as its agent sees it, for the commands that show one (``hwflow trace``, ``hwflow pipeline --chassis``).

The pipeline is what the agent of the chassis compiles (:func:`hwflow.agent.view.topology_of`: the same
selection, the same topology, the same apps and layout); the NIC is modelled, not asked: every local port a VF
of one embedded switch with the capabilities of ``--profile`` (default: those the chassis's agent recorded for
its first offload device, else the ``mlx5-connectx6dx`` profile), each tunnel type the chassis terminates a
tunnel device on that switch when the NIC can encapsulate or decapsulate it, each provider uplink named
(a physical network the host maps to its NIC's uplink representor: host configuration, ``[agent]
bridge_mappings``, not the database) on that switch too, and planned by the agent's partitioner with the
``[offload]`` options of the configuration given.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from typing import Any

from hwflow import conf as hwconf
from hwflow.agent import view
from hwflow.apps.compiler import Compiler, layout_path
from hwflow.cli.common import CliError
from hwflow.db.api import NbApi
from hwflow.model.errors import HwflowError
from hwflow.model.objects import Chassis, NbObject
from hwflow.offload.capabilities import Capabilities
from hwflow.offload.partition import Partitioner, Plan, PortOffload
from hwflow.pipeline import ir
from hwflow.pipeline.topology import Topology
from hwflow.sim.profile import ProfileError, load_profile

DEFAULT_PROFILE = "mlx5-connectx6dx"
SWITCH = "nic0"  # the one embedded switch the model has


@dataclasses.dataclass
class HostView:
    chassis: str
    objects: list[NbObject]  # the whole snapshot
    alive: set[str] | None  # chassis whose liveness lease holds (None: the database could not say)
    record: Chassis | None  # the chassis's own record
    topo: Topology
    compiler: Compiler
    pipeline: ir.Pipeline

    @property
    def dead(self) -> list[str]:
        """Other chassis that say they are up but hold no liveness lease: the agent takes them as unregistered
        (no tunnels)."""
        return sorted(o.id for o in self.objects if isinstance(o, Chassis)
                      and view.seen(o, self.chassis, self.alive) is None)


def load(conf: Any, chassis: str) -> HostView:
    """Read the database and compile the pipeline the agent of ``chassis`` compiles."""
    with NbApi.from_url(conf.database.url, conf) as nb:
        _, objects = nb.snapshot()
        try:
            alive: set[str] | None = set(nb.alive_chassis())
        except HwflowError:
            alive = None
    topo = view.topology_of(chassis, objects, view.bound_ports(objects, chassis), alive)
    compiler = Compiler.from_file(layout_path(conf.apps.layout))
    pipeline = compiler.compile(topo)
    record = next((o for o in objects if isinstance(o, Chassis) and o.id == chassis), None)
    return HostView(chassis, objects, alive, record, topo, compiler, pipeline)


@dataclasses.dataclass
class Hardware:
    capabilities: Capabilities
    source: str  # where the capabilities came from, for people
    offload: dict[int, PortOffload]
    ethertypes: tuple[int, ...]
    enabled: bool  # [offload] enabled
    plan: Plan


def capabilities_of(record: Chassis | None, profile: str | None) -> tuple[Capabilities, str]:
    """The NIC's capabilities: ``profile`` (a name or a path), else the chassis record's first offload device's,
    else the default profile's; and where they came from."""
    if profile is None and record is not None:
        for device in record.capabilities.get("offload_devices", []) or []:
            if isinstance(device, dict) and isinstance(device.get("capabilities"), dict):
                try:
                    return (Capabilities.from_dict(device["capabilities"]),
                            f"chassis {record.id}'s record (device {device.get('name', '?')})")
                except ValueError:
                    continue
    name = profile or DEFAULT_PROFILE
    try:
        return load_profile(name).capabilities, f"profile {name}"
    except ProfileError as exc:
        raise CliError(str(exc)) from None


def uplinks_of(conf: Any, named: Iterable[str] | None) -> list[str]:
    """The physical networks whose uplink the NIC carries: those ``named`` (``--uplink``), else those the
    configuration's ``[agent] bridge_mappings`` maps (the host's own, when given its config file)."""
    if named is not None:
        physnets = [name.strip() for name in named]
        if not all(physnets):
            raise CliError("--uplink needs a physical network name (as a network's physical_network)")
        return physnets
    try:
        return sorted(hwconf.bridge_mappings(conf.agent.bridge_mappings))
    except ValueError as exc:
        raise CliError(str(exc)) from None


def hardware(host: HostView, conf: Any, profile: str | None, uplinks: Iterable[str] = ()) -> Hardware:
    """The plan the agent of the chassis would make on a NIC of these capabilities, carrying the uplinks of
    these physical networks."""
    caps, source = capabilities_of(host.record, profile)
    offload = {p.unique_key: PortOffload(p.unique_key, SWITCH, caps) for p in host.topo.local_ports()}
    types = host.record.tunnel_types if host.record is not None else list(ir.TUNNEL_PORTS)
    for kind in types:
        if kind in ir.TUNNEL_PORTS and (caps.can_encap(kind) or caps.can_decap(kind)):
            key = ir.TUNNEL_PORTS[kind]
            offload[key] = PortOffload(key, SWITCH, caps)
    for physnet in uplinks:
        key = ir.physnet_port(physnet)
        offload[key] = PortOffload(key, SWITCH, caps)
    ethertypes = tuple(ir.ETH_TYPES_BY_NAME[name] for name in conf.offload.ethertypes)
    enabled = bool(conf.offload.enabled)
    plan = Partitioner(host.compiler.layout.joins()).plan(host.pipeline, offload, ethertypes, {}) if enabled \
        else Plan()
    return Hardware(caps, source, offload, ethertypes, enabled, plan)
