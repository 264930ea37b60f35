"""hwflow's L3 service plugin: Neutron's routers, interfaces, gateways and floating IPs in hwflow's NB database.

Enabled in Neutron's configuration as ``service_plugins = hwflow_l3``, beside ML2 with hwflow's mechanism
driver (``[ml2] mechanism_drivers = hwflow``), whose database connection and writes it shares. Neutron's own
L3 database mixins (the ones networking-ovn's and Dragonflow's plugins subclassed) keep Neutron's side: they
allocate the router's ports and addresses; this plugin writes hwflow's objects from Neutron's callbacks once
Neutron has committed, and refuses in the precommit (or before) callbacks what hwflow's model cannot hold.

Where Neutron's L3 ports go (the mechanism driver leaves them out): a router interface's port is hwflow's
``RouterPort`` (same id), the gateway port is the router's ``gateway_ip`` on its ``gateway_network_id``,
and a floating IP's port is the ``FloatingIP`` itself.

A write that fails after Neutron's commit is only logged by Neutron (an ``AFTER_*`` callback cannot fail a
request): hwflow's copy is then behind until a resync (see ``hwflow.neutron``).
"""

from __future__ import annotations

from typing import Any

from neutron.db import extraroute_db, l3_gwmode_db
from neutron_lib import constants as n_const
from neutron_lib.api.definitions import extraroute, l3, l3_ext_gw_mode
from neutron_lib.callbacks import events, registry, resources
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory
from neutron_lib.services import base as service_base

from hwflow.neutron import mapping
from hwflow.neutron.mech_driver import HwflowMechanismDriver

MECHANISM_DRIVER = "hwflow"  # the entry point name the ML2 driver this plugin writes through is enabled by


def _mechanism_driver() -> HwflowMechanismDriver:
    """hwflow's ML2 driver, loaded by the core plugin before any service plugin: one database connection and
    one write path (create or overwrite, delete with what it owns) for everything Neutron writes."""
    manager = getattr(directory.get_plugin(), "mechanism_manager", None)
    found = manager.mech_drivers.get(MECHANISM_DRIVER) if manager is not None else None
    if found is None:
        raise RuntimeError("hwflow_l3 needs ML2 with hwflow's mechanism driver: set core_plugin = ml2 and "
                           "[ml2] mechanism_drivers = hwflow in Neutron's configuration")
    return found.obj


@registry.has_registry_receivers
class HwflowL3RouterPlugin(service_base.ServicePluginBase, extraroute_db.ExtraRoute_dbonly_mixin,
                           l3_gwmode_db.L3_NAT_dbonly_mixin):
    """Routers (gateway with or without SNAT, static routes), router interfaces and floating IPs."""

    supported_extension_aliases = [l3.ALIAS, l3_ext_gw_mode.ALIAS, extraroute.ALIAS]

    def __init__(self) -> None:
        super().__init__()
        self.driver = _mechanism_driver()

    def get_plugin_type(self) -> str:
        return plugin_constants.L3

    def get_plugin_description(self) -> str:
        return "hwflow L3: routers, router interfaces, gateways and floating IPs in hwflow's database"

    # Routers

    @registry.receives(resources.ROUTER, [events.PRECOMMIT_CREATE, events.PRECOMMIT_UPDATE])
    def _check_router(self, resource: str, event: str, trigger: Any, payload: events.DBEventPayload) -> None:
        """A create's request, or the router as it was with an update's name and routes over it. Not the
        gateway: a request's may name a subnet and no address yet; Neutron allocates it, and hwflow holds
        whatever address that is."""
        router = {**payload.states[0], "external_gateway_info": None}
        if event == events.PRECOMMIT_UPDATE:
            router.update({key: payload.request_body[key] for key in ("name", "routes")
                           if key in payload.request_body})
        self.driver.check("router", lambda: mapping.router({**router, "id": payload.resource_id}))

    @registry.receives(resources.ROUTER, [events.AFTER_CREATE, events.AFTER_UPDATE])
    def _router_written(self, resource: str, event: str, trigger: Any, payload: events.DBEventPayload) -> None:
        """The router as Neutron made it: a gateway set or cleared is an update of the router."""
        router = payload.latest_state
        self.driver.put([mapping.router(router)])
        if router.get("gw_port_id"):
            self._active(payload.context, router["gw_port_id"])

    @registry.receives(resources.ROUTER, [events.AFTER_DELETE])
    def _router_deleted(self, resource: str, event: str, trigger: Any, payload: events.DBEventPayload) -> None:
        self.driver.remove("router", payload.resource_id)

    @staticmethod
    def _active(context: Any, port_id: str) -> None:
        """A router's port (interface or gateway) is ACTIVE in Neutron once hwflow holds it, as networking-ovn
        makes them: no agent reports it up, the router being on every chassis its networks reach."""
        directory.get_plugin().update_port_status(context, port_id, n_const.PORT_STATUS_ACTIVE)

    # Router interfaces (payload: the router; metadata: the interface's port)

    @registry.receives(resources.ROUTER_INTERFACE, [events.BEFORE_CREATE])
    def _check_interface(self, resource: str, event: str, trigger: Any, payload: events.DBEventPayload) -> None:
        port = payload.metadata["port"]
        self.driver.check("router interface", lambda: mapping.router_port(port, payload.resource_id))

    @registry.receives(resources.ROUTER_INTERFACE, [events.AFTER_CREATE])
    def _interface_added(self, resource: str, event: str, trigger: Any, payload: events.DBEventPayload) -> None:
        """A port attached by its id was a VM-side port the mechanism driver wrote as hwflow's Port: it is
        the router's port now, which holds the same MAC and address, so the Port goes first."""
        port = payload.metadata["port"]
        self.driver.remove("port", port["id"])
        self.driver.put([mapping.router_port(port, payload.resource_id)])
        self._active(payload.context, port["id"])

    @registry.receives(resources.ROUTER_INTERFACE, [events.AFTER_DELETE])
    def _interface_removed(self, resource: str, event: str, trigger: Any, payload: events.DBEventPayload) -> None:
        self.driver.remove("router_port", payload.metadata["port"]["id"])

    # Floating IPs

    @registry.receives(resources.FLOATING_IP, [events.AFTER_CREATE, events.AFTER_UPDATE])
    def _floating_ip_written(self, resource: str, event: str, trigger: Any,
                             payload: events.DBEventPayload) -> None:
        """Created, associated or disassociated (a port's deletion disassociates its floating IPs first). Its
        status in Neutron is then ACTIVE while associated, DOWN while not, as networking-ovn sets it once its
        northbound database holds the floating IP (the agent of the port's chassis applies it from there)."""
        fip = payload.latest_state
        self.driver.put([mapping.floating_ip(fip)])
        status = n_const.FLOATINGIP_STATUS_ACTIVE if fip.get("port_id") else n_const.FLOATINGIP_STATUS_DOWN
        if fip.get("status") != status:
            self.update_floatingip_status(payload.context, fip["id"], status)

    @registry.receives(resources.FLOATING_IP, [events.AFTER_DELETE])
    def _floating_ip_deleted(self, resource: str, event: str, trigger: Any,
                             payload: events.DBEventPayload) -> None:
        self.driver.remove("floating_ip", payload.resource_id)
