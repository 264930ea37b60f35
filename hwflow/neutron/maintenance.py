"""The repair in Neutron's own process: when an API worker starts and every ``[hwflow] sync_interval`` seconds
after, hwflow's database compared with Neutron's and repaired (``hwflow.neutron.sync``), as networking-ovn's
maintenance task does for OVN.

It reads Neutron through its plugins, as an admin, the same resources ``hwflow neutron-sync`` reads through the
API. Each API worker runs one (OVN's runs in the one server holding an OVSDB lock; hwflow has no such lock,
and needs none: a repair never writes over a newer revision, and deletes only what Neutron still lacks when
asked again), so with several servers it runs more often than the interval.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from neutron_lib import context as n_context
from neutron_lib import exceptions as n_exc
from neutron_lib.plugins import constants as plugin_constants
from neutron_lib.plugins import directory
from oslo_log import log

from hwflow.db.api import NbApi
from hwflow.neutron import sync

LOG = log.getLogger(__name__)

SOON = 2.0  # seconds from a failed write (or round) to the round repairing it; doubled while rounds fail

# A collection of Neutron's API -> the plugin serving it and its methods listing it and reading one.
GETTERS = {
    "networks": ("", "get_networks", "get_network"),
    "subnets": ("", "get_subnets", "get_subnet"),
    "ports": ("", "get_ports", "get_port"),
    "security-groups": ("", "get_security_groups", "get_security_group"),
    "security-group-rules": ("", "get_security_group_rules", "get_security_group_rule"),
    "routers": (plugin_constants.L3, "get_routers", "get_router"),
    "floatingips": (plugin_constants.L3, "get_floatingips", "get_floatingip"),
}


class PluginNeutron:
    """Neutron's resources as its plugins give them to an admin (the dicts its API answers with)."""

    def __init__(self) -> None:
        self.context = n_context.get_admin_context()

    def _plugin(self, collection: str) -> Any:
        alias = GETTERS[collection][0]
        return directory.get_plugin(alias) if alias else directory.get_plugin()

    def list(self, collection: str) -> list[dict[str, Any]]:
        plugin = self._plugin(collection)
        return [] if plugin is None else getattr(plugin, GETTERS[collection][1])(self.context)

    def get(self, collection: str, ident: str) -> dict[str, Any] | None:
        plugin = self._plugin(collection)
        if plugin is None:
            return None
        try:
            return getattr(plugin, GETTERS[collection][2])(self.context, ident)
        except n_exc.NotFound:
            return None


class Maintenance:
    """A thread comparing and repairing every ``interval`` seconds, and soon after a write of the driver's
    failed (``soon``); ``start``, ``stop``.

    A failed write is thus repaired in seconds, not at the next interval: a round :data:`SOON` seconds after
    the failure (the database that refused it may need a moment), and while rounds fail (hwflow's database
    still down), again after twice as long each time, up to the interval. What a journal (networking-odl's)
    gives, a write retried until it is done, without a table of hwflow's in Neutron's database
    (``hwflow.neutron.sync`` says why none).
    """

    def __init__(self, open_nb: Callable[[], NbApi], interval: float) -> None:
        self._open_nb, self.interval = open_nb, interval
        self._stop = threading.Event()
        self._wake = threading.Event()  # set by ``soon`` and by ``stop``
        self._thread = threading.Thread(target=self._run, name="hwflow-maintenance", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=10)

    def soon(self) -> None:
        """A write to hwflow's database failed: a round within :data:`SOON` seconds."""
        self._wake.set()

    def _run(self) -> None:
        """A round at start (a server killed between Neutron's commit and hwflow's write, restarted, repairs
        at once), then one every interval, or sooner: asked, or after a round that failed."""
        backoff = SOON
        with self._open_nb() as nb:
            while not self._stop.is_set():
                if self.run_once(nb):
                    wait, backoff = self.interval, SOON
                else:
                    wait, backoff = backoff, min(2 * backoff, self.interval)
                    LOG.warning("hwflow maintenance: not all repaired; again in %.0f s", wait)
                if self._wake.wait(wait) and not self._stop.is_set():
                    self._wake.clear()
                    self._stop.wait(SOON)

    def run_once(self, nb: NbApi) -> bool:
        """One comparison and repair; each difference is logged (one means a write hwflow missed). Whatever fails
        (hwflow's database, Neutron's) is logged and the next round tries again: the thread must outlive it.
        Whether every difference found was repaired (or left for its reason)."""
        try:
            neutron = PluginNeutron()
            done = sync.repair(neutron, nb, sync.compare(neutron, nb))
            for diff in done:
                LOG.warning("hwflow maintenance: %s %s %s (%s): %s: %s", diff.action, diff.kind, diff.id, diff.name,
                            diff.detail, diff.result)
            failed = sum(diff.result.startswith(sync.FAILED) for diff in done)
            LOG.info("hwflow maintenance: a round done: %d difference(s), %d not repaired", len(done), failed)
            return not failed
        except Exception:  # noqa: BLE001 - any failure: logged, and the next round again
            LOG.exception("hwflow maintenance: comparing with hwflow's database failed")
            return False
