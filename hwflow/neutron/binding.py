"""Port binding: whether hwflow binds a Neutron port to a host, and how Nova is to plug it there.

Both vnic types hwflow binds become ``vif_type ovs``, as networking-ovn binds a switchdev VF: ``normal`` is a
tap device on the integration bridge; ``direct`` with ``switchdev`` in its binding profile's capabilities (Nova
puts it there for a VF of a NIC in switchdev mode) is a VF, whose representor os-vif plugs into the bridge,
where hwflow's agent offloads its rules to the NIC. The host must have a live hwflow agent (its chassis's
liveness lease holds), and for ``direct`` a NIC that can take the VF's rules (its agent reports an offload
device that can redirect). A ``direct`` port on a host without one is refused rather than bound as ``normal``:
Nova has already given the VM a VF, which only a switchdev NIC's representor lets hwflow reach. A ``direct``
port without ``switchdev`` is a legacy SR-IOV VF (the sriovnicswitch driver's, ``hw_veb``), which hwflow
cannot reach either. A refusal is logged by the driver with the reason; Neutron shows ``binding_failed``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from neutron_lib.api.definitions import portbindings

from hwflow.model.objects import Chassis

VNIC_TYPES = (portbindings.VNIC_NORMAL, portbindings.VNIC_DIRECT)
SWITCHDEV = "switchdev"  # in binding:profile's capabilities: the VF's NIC is in switchdev mode (set by Nova)
VIF_DETAILS = {portbindings.CAP_PORT_FILTER: True, portbindings.VIF_DETAILS_CONNECTIVITY: portbindings.CONNECTIVITY_L2}


class CannotBind(Exception):
    """Why hwflow does not bind a port to a host, in a line an operator can act on."""


def vif(port: Mapping[str, Any], host: str, chassis: Chassis | None, alive: bool) -> tuple[str, dict[str, Any]]:
    """The vif type and details binding ``port`` to ``host``, whose registered chassis is ``chassis`` (None:
    none) and ``alive`` whether its agent's lease holds; else CannotBind with the reason."""
    vnic = port.get(portbindings.VNIC_TYPE) or portbindings.VNIC_NORMAL
    if vnic not in VNIC_TYPES:
        raise CannotBind(f"vnic_type {vnic} is not one hwflow binds ({', '.join(VNIC_TYPES)})")
    if vnic == portbindings.VNIC_DIRECT and not is_switchdev(port.get(portbindings.PROFILE)):
        raise CannotBind(f"vnic_type direct without {SWITCHDEV!r} in binding:profile capabilities is a legacy "
                         "SR-IOV VF, which hwflow cannot reach; put the NIC in switchdev mode, or bind it with "
                         "the sriovnicswitch driver")
    if chassis is None:
        raise CannotBind(f"no hwflow agent registered for host {host}: start hwflow-agent there (its [agent] "
                         "chassis_name or its hostname must be the host's name)")
    if not alive:
        raise CannotBind(f"the hwflow agent of host {host} (chassis {chassis.id}) is not alive (its heartbeat "
                         "lapsed): start it again")
    if vnic == portbindings.VNIC_DIRECT and not can_offload_vf(chassis):
        raise CannotBind(f"chassis {chassis.id} (host {host}) reports no switchdev NIC that can forward a VF's "
                         "traffic (no offload device that can redirect): use vnic_type normal, or a host with one")
    return portbindings.VIF_TYPE_OVS, dict(VIF_DETAILS)


def is_switchdev(profile: Any) -> bool:
    """Whether a binding profile says its VF is a switchdev NIC's: ``switchdev`` in its list of capabilities."""
    capabilities = profile.get("capabilities") if isinstance(profile, Mapping) else None
    return isinstance(capabilities, list) and SWITCHDEV in capabilities


def can_offload_vf(chassis: Chassis) -> bool:
    """Whether the chassis's agent reports an offload device (its record's capabilities) that can redirect: what
    a VF's traffic needs to reach its representor's rules. The record is any JSON its agent wrote: a shape
    other than the agent's is no such device."""
    devices = chassis.capabilities.get("offload_devices")
    return isinstance(devices, list) and any(
        isinstance(device, Mapping) and isinstance(caps := device.get("capabilities"), Mapping)
        and isinstance(actions := caps.get("actions"), list) and "redirect" in actions for device in devices)
