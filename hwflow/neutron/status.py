"""Port status from hwflow's agents to Neutron: a port goes ACTIVE when an agent has programmed it, DOWN when
no agent holds it any more, as networking-ovn does from its southbound watcher.

An agent reports each local port up once both its datapaths are in place and takes the report back when the
port leaves its host (``NbApi.report_ports``). ``StatusWatcher`` runs in each Neutron API worker (started by
the mechanism driver once the worker is up): it reads the reports, then follows their changes; a port some
chassis reports up completes its L2 provisioning block (Neutron then makes a bound port ACTIVE), a port no
chassis reports any more gets the block back and goes DOWN; at start, so does a port Neutron shows ACTIVE
that hwflow bound and no chassis reports (its agent took the report back while no watcher ran). The driver
puts the block on a port when it is bound to a new host, so nothing else (a DHCP agent's report) makes it
ACTIVE before hwflow has programmed it.
Several workers each follow the reports: setting a status twice is the same as once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from neutron.db import provisioning_blocks
from neutron.plugins.ml2 import db as ml2_db
from neutron_lib import constants as n_const
from neutron_lib import context as n_context
from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import resources
from neutron_lib.plugins import directory
from oslo_log import log

from hwflow.db.api import NbApi, PortStatusChange
from hwflow.model.errors import Compacted, HwflowError
from hwflow.neutron import mapping

LOG = log.getLogger(__name__)

WATCH_TIMEOUT = 1.0  # how long one watch waits: how soon ``stop`` is heard
RETRY = 2.0  # after the database failed: wait, then read the reports again


def block(context: n_context.Context, port_id: str) -> None:
    """Hold the port out of ACTIVE until hwflow reports it up."""
    provisioning_blocks.add_provisioning_component(context, port_id, resources.PORT,
                                                   provisioning_blocks.L2_AGENT_ENTITY)


def port_up(port_id: str) -> None:
    """hwflow programmed the port: its L2 provisioning is complete (Neutron makes a bound port ACTIVE)."""
    LOG.info("hwflow reports port %s up", port_id)
    provisioning_blocks.provisioning_complete(n_context.get_admin_context(), port_id, resources.PORT,
                                              provisioning_blocks.L2_AGENT_ENTITY)


def port_down(port_id: str) -> None:
    """No agent holds the port: blocked again (before the status, so no other entity makes it ACTIVE), DOWN."""
    context = n_context.get_admin_context()
    if not ml2_db.get_port(context, port_id):
        return  # deleted: its agent took the report back
    LOG.info("hwflow reports port %s down", port_id)
    block(context, port_id)
    directory.get_plugin().update_port_status(context, port_id, n_const.PORT_STATUS_DOWN)


def active_ports() -> set[str]:
    """The ports Neutron shows ACTIVE that hwflow bound (``vif_type ovs``; a router's or a floating IP's are the
    L3 plugin's)."""
    ports = directory.get_plugin().get_ports(n_context.get_admin_context(),
                                             filters={"status": [n_const.PORT_STATUS_ACTIVE]})
    return {port["id"] for port in ports
            if port.get(portbindings.VIF_TYPE) == portbindings.VIF_TYPE_OVS and not mapping.is_l3_port(port)}


class StatusWatcher:
    """A thread following hwflow's port status records into Neutron (``port_up``/``port_down``); ``start``,
    ``stop``."""

    def __init__(self, open_nb: Callable[[], NbApi], up: Callable[[str], None] = port_up,
                 down: Callable[[str], None] = port_down, active: Callable[[], set[str]] = active_ports) -> None:
        self._open_nb, self._up, self._down, self._active = open_nb, up, down, active
        self._started = False  # whether Neutron's ACTIVE ports were checked against the first reports
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="hwflow-port-status", daemon=True)
        self._holders: dict[str, set[str]] = {}  # port -> the chassis reporting it up

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        """Read every report, then follow; a failed database (at start too) or a compacted history: open it
        and read them all again."""
        while not self._stop.is_set():
            try:
                with self._open_nb() as nb:
                    revision = self._read(nb)
                    while not self._stop.is_set():
                        revision, changes = nb.watch_ports(revision, WATCH_TIMEOUT)
                        for change in changes:
                            self._apply(change)
            except Compacted:
                LOG.info("hwflow's port status history was compacted: reading every report again")
            except HwflowError as exc:
                LOG.warning("cannot follow hwflow's port status (%s): again in %.0f s", exc, RETRY)
                self._stop.wait(RETRY)

    def _read(self, nb: NbApi) -> int:
        """Take every report as it is now: ports newly up are set up, ports no longer reported down (those this
        watcher saw before; at its first read, those Neutron shows ACTIVE). The revision to watch from."""
        revision, statuses = nb.ports_up()
        holders: dict[str, set[str]] = {}
        for status in statuses:
            holders.setdefault(status.port, set()).add(status.chassis)
        before, self._holders = self._holders, holders
        for port in holders.keys() - before.keys():
            self._set(port, up=True)
        for port in before.keys() - holders.keys():
            self._set(port, up=False)
        if not self._started:
            try:
                stale = self._active() - holders.keys()
            except Exception:  # Neutron's database: the reports are still followed
                LOG.exception("could not read which ports Neutron shows ACTIVE")
                stale = set()
            for port in sorted(stale):
                self._set(port, up=False)
            self._started = True
        return revision + 1

    def _apply(self, change: PortStatusChange) -> None:
        """One chassis's report: the port goes up with its first holder and down with its last."""
        port, chassis = change.status.port, change.status.chassis
        held = self._holders.setdefault(port, set())
        was = bool(held)
        if change.up:
            held.add(chassis)
        else:
            held.discard(chassis)
        if not held:
            del self._holders[port]
        if bool(held) != was:
            self._set(port, up=bool(held))

    def _set(self, port: str, up: bool) -> None:
        """Tell Neutron; a failure there is logged (the next report of the port tells it again)."""
        try:
            (self._up if up else self._down)(port)
        except Exception:  # Neutron's database: the watcher must outlive one failed update
            LOG.exception("could not set port %s %s in Neutron", port, "up" if up else "down")
