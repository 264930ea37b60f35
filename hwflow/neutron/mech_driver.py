"""hwflow's ML2 mechanism driver: what Neutron commits, written to hwflow's NB database.

Enabled in Neutron's ML2 configuration as ``mechanism_drivers = hwflow`` with the database in
``[hwflow] database`` of Neutron's configuration. Each create and update is translated and checked in its
precommit, so that what hwflow cannot hold (a type it does not carry, a /31 IPv4 subnet, an address
group) is refused while Neutron can still refuse the request, with hwflow's reason; it is written in the
postcommit, once Neutron's own transaction is in. Security groups and their rules, which are not ML2's,
come from Neutron's callbacks (a refusal in their precommit event also stops the request).

A write that fails in a postcommit is raised: ML2 then undoes a create and reports an error; an update or
a delete stays done in Neutron and not in hwflow until the repair the failure asks for a few seconds later
(``hwflow.neutron.maintenance``; with ``[hwflow] sync_interval = 0``, until ``hwflow neutron-sync``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from neutron.api import wsgi
from neutron_lib import constants as n_const
from neutron_lib import exceptions as n_exc
from neutron_lib.api.definitions import portbindings
from neutron_lib.callbacks import events, registry, resources
from neutron_lib.plugins import directory
from neutron_lib.plugins.ml2 import api
from oslo_config import cfg
from oslo_log import log

from hwflow import conf as hwflow_conf
from hwflow.db.api import NbApi
from hwflow.db.etcd import Credentials
from hwflow.model.errors import HwflowError, NotFound, ValidationError
from hwflow.model.objects import Chassis, NbObject, Port, SecurityGroup, SecurityGroupRule
from hwflow.neutron import binding, maintenance, mapping, status, sync

LOG = log.getLogger(__name__)

# hwflow's own [database] options for an etcd with TLS and auth (doc/security.rst), under [hwflow] in Neutron's
# configuration, beside the URL: the etcd driver's Credentials, by the same names.
CREDENTIALS = tuple(field.name for field in dataclasses.fields(Credentials))
_DATABASE_OPTS = {opt.name: opt for opt in hwflow_conf.database_opts}
OPTS = [
    cfg.StrOpt(
        "database",
        default=_DATABASE_OPTS["url"].default,
        help="hwflow's NB database, as the agents' [database] url: sqlite:///PATH for the embedded database "
        "on this host, etcd://HOST:PORT[,HOST:PORT...] for an etcd cluster, etcds://... for one over TLS.",
    ),
    *(_DATABASE_OPTS[name] for name in CREDENTIALS),
    cfg.IntOpt(
        "sync_interval",
        default=300,
        min=0,
        help="Seconds between two comparisons of hwflow's database with Neutron's, each repairing hwflow's side "
        "(what hwflow neutron-sync does; networking-ovn's maintenance runs every 300 s), in each API worker; "
        "0 runs none.",
    ),
]


def hwflow_database_conf(neutron: cfg.ConfigOpts) -> cfg.ConfigOpts:
    """hwflow's configuration with the [database] credentials Neutron's [hwflow] gives: what NbApi's
    drivers read them from."""
    conf = hwflow_conf.new_conf()
    for name in CREDENTIALS:
        conf.set_override(name, neutron.hwflow[name], group="database")
    return conf


def open_nb() -> NbApi:
    """hwflow's database as Neutron's configuration names it."""
    return NbApi.from_url(cfg.CONF.hwflow.database, hwflow_database_conf(cfg.CONF))


class HwflowConflict(n_exc.Conflict):
    """A value hwflow holds unique taken in hwflow's database by what Neutron does not know: a 409."""

    message = "%(reason)s"


class HwflowMechanismDriver(api.MechanismDriver):
    """Networks, subnets, ports (with their binding host as chassis), security groups and rules."""

    def initialize(self) -> None:
        cfg.CONF.register_opts(OPTS, group="hwflow")
        for resource, event, callback in (
            (resources.SECURITY_GROUP, events.PRECOMMIT_CREATE, self._check_security_group),
            (resources.SECURITY_GROUP, events.PRECOMMIT_UPDATE, self._check_security_group),
            (resources.SECURITY_GROUP, events.AFTER_CREATE, self._security_group_written),
            (resources.SECURITY_GROUP, events.AFTER_UPDATE, self._security_group_written),
            (resources.SECURITY_GROUP, events.AFTER_DELETE, self._security_group_deleted),
            (resources.SECURITY_GROUP_RULE, events.PRECOMMIT_CREATE, self._check_rule),
            (resources.SECURITY_GROUP_RULE, events.AFTER_CREATE, self._rule_written),
            (resources.SECURITY_GROUP_RULE, events.AFTER_DELETE, self._rule_deleted),
        ):
            registry.subscribe(callback, resource, event)
        registry.subscribe(self._start_threads, resources.PROCESS, events.AFTER_INIT)

    def _start_threads(self, resource: str, event: str, trigger: Any, payload: Any = None) -> None:
        """In each API worker once it is up (after a fork, so the threads are the worker's): follow the ports
        hwflow's agents report up (hwflow.neutron.status), and compare and repair every sync_interval
        (hwflow.neutron.maintenance)."""
        if trigger is wsgi.WorkerService:
            status.StatusWatcher(open_nb).start()
            if cfg.CONF.hwflow.sync_interval:
                self._maintenance = maintenance.Maintenance(open_nb, cfg.CONF.hwflow.sync_interval)
                self._maintenance.start()

    _maintenance: maintenance.Maintenance | None = None  # this worker's, once it is up

    @functools.cached_property
    def nb(self) -> NbApi:
        """Opened at first use, in the process that serves requests (a WSGI server may load, then fork)."""
        return open_nb()

    # Writing

    def put(self, objs: Iterable[NbObject]) -> None:
        """Create or overwrite, in one batch: a postcommit may run again for a request Neutron retried, and
        a resource may already be there (a security group written before its port asked for it). Never over a
        newer revision (another Neutron server's later update got there first), nor created again when Neutron
        no longer has it (another server's delete got there first: ``sync.put_newer``)."""
        with self._repaired_if_failed():
            for obj in sync.put_newer(self.nb, objs, maintenance.PluginNeutron()):
                LOG.debug("hwflow: %s at revision %d not written: hwflow holds a newer one, or Neutron no longer "
                          "has it", obj.label(), obj.external_revision)

    def remove(self, kind: str, ident: str) -> None:
        """Delete with what hwflow's object owns (a network's subnets and ports, a group's rules): Neutron
        has removed those too. Gone already is fine (a retried request, a network delete after its ports)."""
        with self._repaired_if_failed():
            try:
                self.nb.delete(kind, ident, cascade=True)
            except NotFound:
                LOG.debug("hwflow: %s %s was not in hwflow's database", kind, ident)

    @contextlib.contextmanager
    def _repaired_if_failed(self) -> Iterator[None]:
        """A write that fails is raised (Neutron undoes a create, logs a port's update or delete) and repaired by
        this worker's maintenance within seconds (``Maintenance.soon``), not at its next interval."""
        try:
            yield
        except HwflowError:
            if self._maintenance is not None:
                self._maintenance.soon()
            raise

    def _chassis(self, host: str) -> str:
        """The chassis of a binding host: the one registered under that name or that hostname; else the host
        name itself, which is the chassis name an agent takes by default (it binds when that agent comes)."""
        if not host:
            return ""
        try:
            return self.nb.get(Chassis, host).id  # one read: chassis are usually named after their host
        except NotFound:
            return mapping.chassis_for(host, [c for c in self.nb.list(Chassis) if isinstance(c, Chassis)])

    # Networks

    def create_network_precommit(self, context: api.NetworkContext) -> None:
        self._check_free(self.check("network", lambda: mapping.network(context.current,
                                                                          context.network_segments)))

    def _check_free(self, obj: NbObject) -> None:
        """Refuse, while Neutron can still say no, a VNI or a VLAN on a physical network that hwflow's database
        gives another object of the kind, one Neutron does not know (made with ``hwflow nb``): the write
        would fail after Neutron's commit, which a user sees as a 500 with no reason."""
        wanted = set(obj.unique_values())
        for other in self.nb.list(type(obj)):
            taken = wanted & set(other.unique_values())
            if other.id != obj.id and taken:
                what, value = sorted(taken)[0]
                raise HwflowConflict(reason=f"{obj.label()}: {what} {value} is taken by {other.label()} in hwflow's "
                                     "database, which Neutron does not know; choose another, or delete that one "
                                     "(hwflow nb)")

    update_network_precommit = create_network_precommit

    def create_network_postcommit(self, context: api.NetworkContext) -> None:
        self.put([mapping.network(context.current, context.network_segments)])

    update_network_postcommit = create_network_postcommit

    def delete_network_postcommit(self, context: api.NetworkContext) -> None:
        self.remove("network", context.current["id"])

    # Subnets

    def create_subnet_precommit(self, context: api.SubnetContext) -> None:
        self.check("subnet", lambda: mapping.subnet(context.current))

    update_subnet_precommit = create_subnet_precommit

    def create_subnet_postcommit(self, context: api.SubnetContext) -> None:
        self.put([mapping.subnet(context.current)])

    update_subnet_postcommit = create_subnet_postcommit

    def delete_subnet_postcommit(self, context: api.SubnetContext) -> None:
        self.remove("subnet", context.current["id"])

    # Ports

    def create_port_precommit(self, context: api.PortContext) -> None:
        if not mapping.is_l3_port(context.current):
            self.check("port", lambda: mapping.port(context.current, context.host))
            if context.host and context.host != context.original_host \
                    and context.current["status"] != n_const.PORT_STATUS_ACTIVE:
                status.block(context.plugin_context, context.current["id"])  # ACTIVE when hwflow has it up

    update_port_precommit = create_port_precommit

    def create_port_postcommit(self, context: api.PortContext) -> None:
        if not mapping.is_l3_port(context.current):
            with self._repaired_if_failed():  # the reads before the write too: its chassis, the groups hwflow lacks
                port = mapping.port(context.current, self._chassis(context.host))
                self.put([*self._missing_groups(context, port), port])

    update_port_postcommit = create_port_postcommit

    def bind_port(self, context: api.PortContext) -> None:
        """To the host's chassis, if hwflow can (hwflow.neutron.binding); else the reason is logged, and with no
        other driver binding it Neutron shows binding_failed."""
        port, host = context.current, context.host
        ident = self._chassis(host)
        try:
            chassis = self.nb.get(Chassis, ident)
        except NotFound:
            chassis = None
        try:
            vif_type, details = binding.vif(port, host, chassis if isinstance(chassis, Chassis) else None,
                                            ident in self.nb.alive_chassis())
        except binding.CannotBind as exc:
            LOG.warning("hwflow cannot bind port %s (vnic_type %s) to host %s: %s", port["id"],
                        port.get(portbindings.VNIC_TYPE), host, exc)
            return
        for segment in context.segments_to_bind:
            if segment[api.NETWORK_TYPE] in mapping.SEGMENT_TYPES:
                context.set_binding(segment[api.ID], vif_type, details)
                return
        LOG.warning("hwflow cannot bind port %s to host %s: its network has no segment of a type hwflow carries",
                    port["id"], host)

    def delete_port_postcommit(self, context: api.PortContext) -> None:
        if not mapping.is_l3_port(context.current):
            self.remove("port", context.current["id"])

    def _missing_groups(self, context: api.PortContext, port: Port) -> list[NbObject]:
        """The port's security groups hwflow's database lacks (made before this driver was enabled, or their
        write failed), with their rules, read from Neutron (``mapping.DROP_ALL_GROUP``, hwflow's, made): written
        with the port, which cannot name a group that is not there."""
        found: list[NbObject] = []
        for ident in port.security_groups:
            try:
                self.nb.get(SecurityGroup, ident)
            except NotFound:
                if ident == mapping.DROP_ALL_GROUP:
                    found.append(mapping.drop_all_group())
                    continue
                group = directory.get_plugin().get_security_group(context.plugin_context, ident)
                found += [mapping.security_group(group),
                          *map(mapping.security_group_rule, group.get("security_group_rules") or [])]
        return found

    @staticmethod
    def check(what: str, build: Callable[[], NbObject]) -> NbObject:
        """Translate in a precommit: what hwflow cannot hold is the 400 (a 409 from a security group's event)
        Neutron answers with, hwflow's reason in it."""
        try:
            return build()
        except ValidationError as exc:
            raise n_exc.InvalidInput(error_message=f"hwflow cannot hold this {what}: {exc}") from None

    # Security groups and rules (Neutron's callbacks: resource, event, trigger, payload)

    def _check_security_group(self, resource: str, event: str, trigger: Any, payload: events.DBEventPayload) -> None:
        group = payload.latest_state
        self.check("security group", lambda: mapping.security_group(group))
        for rule in group.get("security_group_rules") or []:
            self.check("security group rule", lambda rule=rule: mapping.security_group_rule(rule))

    def _security_group_written(self, resource: str, event: str, trigger: Any,
                                payload: events.DBEventPayload) -> None:
        """A group with the rules it has (a new group comes with its default egress rules)."""
        group = payload.latest_state
        rules = [mapping.security_group_rule(rule) for rule in group.get("security_group_rules") or []]
        self.put([mapping.security_group(group), *rules])

    def _security_group_deleted(self, resource: str, event: str, trigger: Any,
                                payload: events.DBEventPayload) -> None:
        """The group and its rules, and the other groups' rules naming it as their remote group: Neutron's
        database drops those with it (a foreign key), without an event for each."""
        with self._repaired_if_failed():  # the read of the rules naming it too
            for rule in self.nb.referrers("security_group", payload.resource_id, SecurityGroupRule):
                if rule.security_group_id != payload.resource_id:
                    self.remove(rule.kind, rule.id)
            self.remove("security_group", payload.resource_id)

    def _check_rule(self, resource: str, event: str, trigger: Any, payload: events.DBEventPayload) -> None:
        self.check("security group rule", lambda: mapping.security_group_rule(payload.latest_state))

    def _rule_written(self, resource: str, event: str, trigger: Any, payload: events.DBEventPayload) -> None:
        self.put([mapping.security_group_rule(payload.latest_state)])

    def _rule_deleted(self, resource: str, event: str, trigger: Any, payload: events.DBEventPayload) -> None:
        self.remove("security_group_rule", payload.resource_id)
