"""Keeping hwflow's database what Neutron's says: writes that never go back, and a compare-and-repair pass.

How the two integrations hwflow's line is measured against do it, and what hwflow takes of each:

- networking-odl keeps a journal: each change is a row of Neutron's database written in the precommit (in
  Neutron's transaction), sent to OpenDaylight by a worker thread that retries it until it is done, with a
  full sync at start. Its writes are asynchronous: a request succeeds before OpenDaylight has it.
- networking-ovn (now Neutron's OVN driver) writes in the postcommit, and stamps every OVN row with Neutron's
  ``revision_number`` (``external_ids: neutron:revision_number``); its transaction checks that the stored
  stamp is older (``check_revision_number``), so two servers racing never put an older state over a newer.
  A table of Neutron's (``ovn_revision_numbers``) records what reached OVN, and a maintenance task
  (``DBInconsistenciesPeriodics.check_for_inconsistencies``, every 300 s, in the one server holding an OVSDB
  lock) repairs the rows where it and ``standardattributes`` differ. ``neutron-ovn-db-sync-util`` compares
  everything and repairs OVN's side.

hwflow's driver writes in the postcommit, synchronously, as OVN's does (an agent sees a change when Neutron
answers), so it takes OVN's design: each object hwflow holds from Neutron carries Neutron's
``revision_number`` as its ``external_revision`` (a model field, as Dragonflow's models carried it as their
``version``), and :func:`put_newer` writes an object only over an older one, compare-and-swap on hwflow's own
revision of what it read (a race lost is read again). A write that failed (hwflow's database unreachable, a
postcommit that raised, a security group callback that is only logged, a server killed between Neutron's commit
and hwflow's write) and a stale update landing after a delete are then found by comparing the two databases:
:func:`compare` lists what hwflow lacks, holds differently or holds that Neutron has not, :func:`repair`
writes hwflow's side (never Neutron's). Both run from ``hwflow neutron-sync`` and from the driver's maintenance
thread, when each Neutron API worker starts and every ``[hwflow] sync_interval`` seconds after. No journal
table: the comparison needs none (Neutron's database is the truth, its revision numbers say what is newer),
and a schema of hwflow's in Neutron's database would need migrations of its own. What a journal would give
and this does not: a missed write is repaired at the next round, not retried at once.

Objects hwflow's own CLI made (``external_revision`` 0) are not Neutron's: never reported as extra, never
deleted.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, Protocol

from neutron_lib import constants as n_const

from hwflow.db.api import BatchIncomplete, Create, NbApi, Update, Write
from hwflow.model.errors import Conflict, DatabaseUnavailable, HwflowError, NotFound, ValidationError
from hwflow.model.objects import Chassis, NbObject, Port, SecurityGroup
from hwflow.neutron import mapping

WRITE_ATTEMPTS = 20  # a write that lost this many races to other Neutron servers' writes of the same objects gives up
# What differs between two objects that are the same: hwflow's bookkeeping, and Neutron's revision (a revision
# moved by what hwflow does not hold, a port's status say, is no difference).
BOOKKEEPING = ("revision", "unique_key", "external_revision")

Action = Literal["create", "update", "delete", "refused"]
FAILED = "failed: "  # how a difference's result starts when repairing it failed


class Neutron(Protocol):
    """Neutron's resources as its API shows them to an admin: ``list`` a collection (``networks``,
    ``security-group-rules``, ...), ``get`` one object of it now (None if Neutron has none)."""

    def list(self, collection: str) -> list[dict[str, Any]]: ...

    def get(self, collection: str, ident: str) -> dict[str, Any] | None: ...


@dataclasses.dataclass(frozen=True)
class Collection:
    """One kind of Neutron resource hwflow holds: its collection in Neutron's API, hwflow's kind, and how a
    resource of it becomes hwflow's object (None: not hwflow's to hold, e.g. a router's port)."""

    path: str
    kind: str
    translate: Callable[[Mapping[str, Any], Sequence[Chassis]], NbObject | None]


def segments(net: Mapping[str, Any]) -> list[dict[str, Any]]:
    """A network's segments as ML2 hands them to a driver, from its API form (``segments`` when it has several,
    else the ``provider:`` attributes, which only an admin sees)."""
    shown = net.get("segments") or [net]
    if any("provider:network_type" not in segment for segment in shown):
        raise ValidationError(f"network {net['id']}: Neutron did not show its provider:network_type; read Neutron "
                              "as an admin (OS_* or clouds.yaml credentials of an admin user)")
    return [{"network_type": s["provider:network_type"], "physical_network": s.get("provider:physical_network"),
             "segmentation_id": s.get("provider:segmentation_id")} for s in shown]


def _port(port: Mapping[str, Any], chassis: Sequence[Chassis]) -> NbObject | None:
    if mapping.is_l3_port(port):
        return None
    return mapping.port(port, mapping.chassis_for(port.get("binding:host_id") or "", chassis))


def _router_port(port: Mapping[str, Any], chassis: Sequence[Chassis]) -> NbObject | None:
    """A router's interface is its port, as hwflow's RouterPort of the same id (``hwflow.neutron.l3_plugin``)."""
    if port.get("device_owner") not in n_const.ROUTER_INTERFACE_OWNERS:
        return None
    return mapping.router_port(port, port["device_id"])


# In the order hwflow's database takes them (what an object names is written before it).
COLLECTIONS = (
    Collection("networks", "network", lambda net, _: mapping.network(net, segments(net))),
    Collection("security-groups", "security_group", lambda group, _: mapping.security_group(group)),
    Collection("security-group-rules", "security_group_rule", lambda rule, _: mapping.security_group_rule(rule)),
    Collection("subnets", "subnet", lambda sub, _: mapping.subnet(sub)),
    Collection("routers", "router", lambda router, _: mapping.router(router)),
    Collection("ports", "router_port", _router_port),
    Collection("ports", "port", _port),
    Collection("floatingips", "floating_ip", lambda fip, _: mapping.floating_ip(fip)),
)

KIND_COLLECTIONS = {coll.kind: coll for coll in COLLECTIONS}


@dataclasses.dataclass
class Difference:
    """One object hwflow holds apart from Neutron: ``create`` (missing in hwflow), ``update`` (held with other
    values: ``detail`` names the fields), ``delete`` (held by hwflow, gone from Neutron), ``refused`` (Neutron
    has it, hwflow's model cannot hold it: ``detail`` says why). ``result`` is what repairing it did."""

    action: Action
    kind: str
    id: str
    name: str
    detail: str = ""
    result: str = ""
    wanted: NbObject | None = dataclasses.field(default=None, repr=False, compare=False)
    collection: Collection | None = dataclasses.field(default=None, repr=False, compare=False)

    def row(self) -> dict[str, str]:
        """As ``hwflow neutron-sync`` reports it."""
        return {"action": self.action, "kind": self.kind, "id": self.id, "name": self.name, "detail": self.detail,
                "result": self.result}


def put_newer(nb: NbApi, objs: Iterable[NbObject], neutron: Neutron | None = None) -> list[NbObject]:
    """Create or overwrite each object, in one batch, but none over a newer one: one hwflow holds at a higher
    ``external_revision`` is left (another Neutron server wrote a later state). Each overwrite compares hwflow's
    revision of what was read, so a race lost to another writer is read and decided again. Equal revisions are
    written (a request Neutron retried, a repair); an object hwflow holds as it is is not (Neutron moves a port's
    revision when it sets the port's status, which hwflow does not hold: rewriting it would wake every agent).
    With ``neutron``, an object hwflow lacks is created only if Neutron has it now, and deleted again if Neutron
    has it no more once written (:func:`_undone`): a server's update landing after another server deleted the
    object does not bring it back; one that is hwflow's (``external_revision`` 0, :data:`mapping.DROP_ALL_GROUP`)
    is created all the same. Returns the objects left.
    """
    objs = list(objs)
    for _ in range(WRITE_ATTEMPTS):
        writes: list[Write] = []
        left: list[NbObject] = []
        for obj in objs:
            try:
                stored = nb.get(type(obj), obj.id)
            except NotFound:
                if neutron is None or not obj.external_revision or _holds(neutron, KIND_COLLECTIONS[obj.kind], obj.id):
                    writes.append(Create(obj))
                else:
                    left.append(obj)
                continue
            if stored.external_revision > obj.external_revision:
                left.append(obj)
            elif _differing(obj, stored):
                writes.append(Update(obj, if_revision=stored.revision))
            # else the same but for Neutron's revision (a port's status moved it): no write, no agent woken
        try:
            nb.apply(writes)
        except Conflict:
            continue
        except BatchIncomplete as exc:
            if not isinstance(exc.cause, Conflict):
                raise
            continue
        return left + _undone(nb, writes, neutron)
    raise DatabaseUnavailable(f"{objs[0].label() if len(objs) == 1 else f'{len(objs)} objects'}: gave up after "
                              f"{WRITE_ATTEMPTS} writes lost to concurrent writers of the same objects")


def _undone(nb: NbApi, writes: Sequence[Write], neutron: Neutron | None) -> list[NbObject]:
    """The objects just created that Neutron no longer has, deleted again: another server's delete between
    asking Neutron and the create had its hwflow side done before the create (had it come after, it deleted
    the object itself), so Neutron is asked once more, after. Closes the window without a tombstone."""
    if neutron is None:
        return []
    undone = [write.obj for write in writes if isinstance(write, Create) and write.obj.external_revision
              and not _holds(neutron, KIND_COLLECTIONS[write.obj.kind], write.obj.id)]
    for obj in reversed(undone):  # what names an object before it
        with contextlib.suppress(NotFound):
            nb.delete(obj.kind, obj.id, cascade=True)
    return undone


def _differing(wanted: NbObject, held: NbObject) -> list[str]:
    return [f.name for f in dataclasses.fields(wanted)
            if f.name not in BOOKKEEPING and getattr(wanted, f.name) != getattr(held, f.name)]


def _compared(wanted: NbObject, held: NbObject | None) -> list[Difference]:
    """What repairing hwflow's copy of one object takes: nothing, or its create or update."""
    if held is None:
        return [Difference("create", wanted.kind, wanted.id, wanted.name, "missing in hwflow", wanted=wanted)]
    if fields := _differing(wanted, held):
        return [Difference("update", wanted.kind, wanted.id, wanted.name, f"differs in {', '.join(fields)}",
                           wanted=wanted)]
    return []


def compare(neutron: Neutron, nb: NbApi) -> list[Difference]:
    """What hwflow's database holds apart from Neutron's: deletes first (kinds in the reverse of
    :data:`COLLECTIONS`' order: what names an object goes before it; and a port that became a router's
    interface gives its addresses up before the interface takes them), then the rest in that order, a kind's
    objects by id. Reads only."""
    chassis = [c for c in nb.list(Chassis) if isinstance(c, Chassis)]
    found: list[Difference] = []
    extra: list[Difference] = []
    listed: dict[str, list[dict[str, Any]]] = {}
    groups: dict[str, NbObject] = {}  # the security groups hwflow holds
    dropping = False  # whether some port is in none of Neutron's groups, with port security
    for coll in COLLECTIONS:
        held = {obj.id: obj for obj in nb.list(coll.kind)}
        if coll.kind == SecurityGroup.kind:
            groups = held
        known: set[str] = set()
        if coll.path not in listed:
            listed[coll.path] = sorted(neutron.list(coll.path), key=lambda r: r["id"])
        for resource in listed[coll.path]:
            try:
                wanted = coll.translate(resource, chassis)
            except ValidationError as exc:
                known.add(resource["id"])
                found.append(Difference("refused", coll.kind, resource["id"], resource.get("name") or "", str(exc)))
                continue
            if wanted is None:
                continue
            known.add(wanted.id)
            if isinstance(wanted, Port) and wanted.security_groups == [mapping.DROP_ALL_GROUP] and not dropping:
                dropping = True  # the port's write needs the group: compared (made) first, once
                found += _compared(mapping.drop_all_group(), groups.get(mapping.DROP_ALL_GROUP))
            found += _compared(wanted, held.get(wanted.id))
        extra = [Difference("delete", coll.kind, obj.id, obj.name, f"not in Neutron as a {coll.kind}", collection=coll)
                 for ident, obj in sorted(held.items()) if ident not in known and obj.external_revision > 0] + extra
    return extra + found


def repair(neutron: Neutron, nb: NbApi, differences: Iterable[Difference]) -> list[Difference]:
    """Make hwflow's side what Neutron's is, one object at a time (one that fails is reported, the rest go on),
    and say in each difference's ``result`` what was done. An extra object is deleted (with what it owns) only
    if Neutron still lacks it when asked again: one created since the comparison read Neutron is not."""
    done = []
    for diff in differences:
        try:
            diff.result = _repair(neutron, nb, diff)
        except HwflowError as exc:
            diff.result = f"{FAILED}{exc}"
        done.append(diff)
    return done


def _holds(neutron: Neutron, coll: Collection, ident: str) -> bool:
    """Whether Neutron has the object now, as one of the collection's kind (a port may have become a router's)."""
    resource = neutron.get(coll.path, ident)
    if resource is None:
        return False
    try:
        return coll.translate(resource, []) is not None
    except ValidationError:
        return True


def _repair(neutron: Neutron, nb: NbApi, diff: Difference) -> str:
    if diff.action == "refused":
        return "left: hwflow cannot hold it"
    if diff.action == "delete":
        assert diff.collection is not None
        if _holds(neutron, diff.collection, diff.id):
            return "left: Neutron has it now"
        try:
            nb.delete(diff.kind, diff.id, cascade=True)
        except NotFound:
            return "gone already"
        return "deleted"
    assert diff.wanted is not None
    if put_newer(nb, [diff.wanted], neutron):
        return "left: hwflow holds a newer revision" if diff.action == "update" else "left: Neutron no longer has it"
    return "created" if diff.action == "create" else "updated"
