"""The northbound API: typed, validated model objects on top of a raw driver.

Every write is one driver transaction that compares what it relies on, so
concurrent writers (the CLI, several agents) cannot leave the database
inconsistent: a create compares the ids it references and the per-kind
counter it takes its ``unique_key`` from; a delete compares every object it
removes and the counters of the kinds that could point at it, so a child
created meanwhile makes it retry instead of leaving an orphan. Values that
must be unique (a network's VNI, a port's MAC and IPs on its network) are
claimed as index records in the same transaction.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Iterable
from importlib.metadata import entry_points
from typing import Literal, Self

from oslo_config import cfg
from stevedore import driver as stevedore_driver

from hwflow.db.base import Compare, Delete, Driver, Op, Put, Record
from hwflow.model.errors import (
    Ambiguous,
    BrokenReference,
    Conflict,
    DatabaseUnavailable,
    NotFound,
    ValidationError,
)
from hwflow.model.objects import KINDS, Chassis, NbObject, Related, Subnet, from_dict, kind_class

LOG = logging.getLogger(__name__)

DRIVER_NAMESPACE = "hwflow.nb_db_drivers"
COUNTER_TABLE = "_counter"  # kind -> the last unique_key handed out
UNIQUE_TABLE = "_unique"  # "scope/constraint/value" -> "kind id" of the object holding it
# "kind/id/referrer kind/referrer id" -> the referrer's record: who points at an object, read by prefix.
# Holding a copy of the referrer (written in the same transaction) makes "the ports of this network"
# one range read instead of one read per port: what an agent does whenever its set of ports grows.
REF_TABLE = "_ref"
ALIVE_TABLE = "_alive"  # chassis id -> liveness mark its agent keeps alive
MAX_ATTEMPTS = 50  # transactions retried after losing a race on a counter or a reference

Kind = str | type[NbObject]


@dataclasses.dataclass(frozen=True)
class Change:
    """One object written or deleted; for a delete ``obj`` is its last stored value."""

    revision: int
    kind: str
    op: Literal["put", "delete"]
    obj: NbObject


def encode(obj: NbObject) -> bytes:
    data = obj.to_dict()
    del data["revision"]  # the record's mod_revision is the truth
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


def decode(table: str, key: str, value: bytes, revision: int) -> NbObject:
    """A stored record back as an object; a malformed one is a ValidationError naming it."""
    try:
        data = json.loads(value)
    except ValueError as exc:
        raise ValidationError(f"{table} {key}: stored record is not JSON ({exc})") from None
    obj = from_dict(table, data)
    if obj.id != key:
        raise ValidationError(f"{table} {key}: stored record carries another id, {obj.id!r}")
    obj.revision = revision
    return obj


def _unique_keys(obj: NbObject) -> dict[str, str]:
    """Index key -> what to tell a user who collides with it."""
    scope = obj.unique_scope or obj.kind
    return {f"{scope}/{name}/{value}": f"{name} {value}" for name, value in obj.unique_values()}


def _ref_keys(obj: NbObject) -> set[str]:
    """Index keys under which ``obj`` is listed as pointing at each object it references."""
    return {f"{kind}/{ident}/{obj.kind}/{obj.id}" for _, kind, ident in obj.refs()}


def _holder(obj: NbObject) -> bytes:
    """What a unique index record holds: who took the value, for the message of whoever collides."""
    return f"{obj.kind} {obj.id}".encode()


def _referrer_kinds(kind: str) -> set[str]:
    """Kinds whose objects can depend on objects of ``kind`` (a port on a subnet through its IPs, too)."""
    kinds = {cls.kind for cls in KINDS.values() if kind in cls.references.values()}
    if kind == Subnet.kind:
        kinds |= {cls.kind for cls in KINDS.values() if cls.subnets_of}
    return kinds


def _changed(new: NbObject, old: NbObject, fields: Iterable[str]) -> list[str]:
    return [f for f in fields if getattr(new, f) != getattr(old, f)]


class NbApi:
    """Typed access to the NB database; the caller owns the driver and closes it through here."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver

    @classmethod
    def from_url(cls, url: str, conf: cfg.ConfigOpts | None = None) -> NbApi:
        """Load the driver named by the URL scheme (sqlite:///PATH, etcd://HOST:PORT)."""
        scheme = url.split("://", 1)[0] if "://" in url else ""
        installed = sorted({ep.name for ep in entry_points(group=DRIVER_NAMESPACE)})
        if scheme not in installed:
            raise DatabaseUnavailable(
                f"no database driver for {url!r}: the URL must start with one of "
                f"{', '.join(s + '://' for s in installed) or '(none installed)'} "
                f"(installed drivers: {', '.join(installed)}; e.g. sqlite:///PATH)"
            )
        try:
            manager = stevedore_driver.DriverManager(DRIVER_NAMESPACE, scheme, invoke_on_load=False)
        except RuntimeError as exc:
            raise DatabaseUnavailable(f"cannot load the {scheme} database driver: {exc}") from None
        return cls(manager.driver.from_url(url, conf))

    def close(self) -> None:
        self.driver.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # Reads

    def _decode_many(self, records: Iterable[Record]) -> list[NbObject]:
        """Decode what can be; a bad record is logged and skipped so one cannot stop an agent."""
        objs = []
        for rec in records:
            if rec.table not in KINDS:
                continue
            try:
                objs.append(decode(rec.table, rec.key, rec.value, rec.mod_revision))
            except ValidationError as exc:
                LOG.warning("skipping a bad record: %s", exc)
        return objs

    def get(self, kind: Kind, id: str) -> NbObject:
        cls = kind_class(kind)
        rec = self.driver.get(cls.kind, id)
        if rec is None:
            raise NotFound(f"no {cls.kind} with id {id!r}")
        return decode(rec.table, rec.key, rec.value, rec.mod_revision)

    def list(self, kind: Kind) -> list[NbObject]:
        _, records = self.driver.list(kind_class(kind).kind)
        return self._decode_many(records)

    def find(self, kind: Kind, id_or_name: str) -> NbObject:
        """By id, else by name; several objects with that name is an Ambiguous error."""
        cls = kind_class(kind)
        try:
            return self.get(cls, id_or_name)
        except NotFound:
            pass
        matches = [obj for obj in self.list(cls) if obj.name == id_or_name]
        if not matches:
            raise NotFound(f"no {cls.kind} with id or name {id_or_name!r}")
        if len(matches) > 1:
            raise Ambiguous(
                f"{len(matches)} {cls.kind} objects are named {id_or_name!r} "
                f"({', '.join(o.id for o in matches)}); use the id"
            )
        return matches[0]

    def referrers(self, kind: Kind, id: str, of_kind: Kind | None = None) -> list[NbObject]:
        """The objects (of ``of_kind``, or any) that point at one object: one prefix read of the index."""
        target = kind_class(kind).kind
        prefix = f"{target}/{id}/" + (f"{kind_class(of_kind).kind}/" if of_kind is not None else "")
        _, records = self.driver.list(REF_TABLE, prefix)
        found = []
        for rec in records:
            ref_kind, _, ref_id = rec.key[len(target) + len(id) + 2:].partition("/")
            try:
                found.append(decode(ref_kind, ref_id, rec.value, rec.mod_revision))
            except ValidationError as exc:
                LOG.warning("skipping a bad referrer of %s %s: %s", target, id, exc)
        return found

    def snapshot(self) -> tuple[int, list[NbObject]]:
        """Every object at one revision; watch from revision + 1 to follow on without a gap."""
        revision, records = self.driver.snapshot(sorted(KINDS))
        return revision, self._decode_many(records)

    def watch(self, from_revision: int, timeout: float) -> list[Change]:
        """Changes at or after ``from_revision``, or [] after ``timeout`` seconds.

        Resume from the last change's revision + 1. Raises Compacted when the
        history is gone: take a new snapshot.
        """
        deadline = time.monotonic() + timeout
        while True:
            events = self.driver.watch(from_revision, max(0.0, deadline - time.monotonic()))
            changes = []
            for ev in events:
                if ev.table not in KINDS:
                    continue
                if ev.value is None:
                    LOG.warning("skipping a %s of %s %s without a value", ev.op, ev.table, ev.key)
                    continue
                try:
                    obj = decode(ev.table, ev.key, ev.value, ev.revision)
                except ValidationError as exc:
                    LOG.warning("skipping a bad change at revision %d: %s", ev.revision, exc)
                    continue
                changes.append(Change(ev.revision, ev.table, ev.op, obj))
            if changes or not events or time.monotonic() >= deadline:
                return changes
            from_revision = events[-1].revision + 1

    # Writes

    def _relations(self, obj: NbObject) -> tuple[list[Compare], Related]:
        """Read what ``obj`` points at (and the subnets it needs), failing on a missing reference.

        The compares make the write fail if any of it changes before it lands.
        """
        compares, related = [], Related()
        for field, kind, ident in obj.refs():
            rec = self.driver.get(kind, ident)
            if rec is None:
                raise BrokenReference(
                    f"{obj.label()}: {field} {ident!r} names no existing {kind}; create the {kind} first"
                )
            if (kind, ident) not in related.objects:
                related.objects[kind, ident] = decode(rec.table, rec.key, rec.value, rec.mod_revision)
                compares.append(Compare(kind, ident, rec.mod_revision))
        network = getattr(obj, obj.subnets_of) if obj.subnets_of else ""
        if network:
            related.subnets = [s for s in self.referrers("network", network, Subnet) if isinstance(s, Subnet)]
            counter = self.driver.get(COUNTER_TABLE, Subnet.kind)
            if obj.kind != Subnet.kind:  # a subnet's own create compares this counter already
                compares.append(Compare(COUNTER_TABLE, Subnet.kind, counter.mod_revision if counter else 0))
        obj.check_relations(related)
        return compares, related

    def _raise_if_taken(self, exc: Conflict, obj: NbObject, unique: dict[str, str]) -> None:
        """Turn a lost claim on a unique value into a clear error; return if worth a retry."""
        if exc.table != UNIQUE_TABLE or exc.key not in unique:
            return
        holder = self.driver.get(UNIQUE_TABLE, exc.key)
        if holder is not None:
            raise ValidationError(
                f"{obj.label()}: {unique[exc.key]} is already used by "
                f"{holder.value.decode(errors='replace')}; choose another"
            )

    def create(self, obj: NbObject) -> NbObject:
        """Store a new object; returns a copy with its id, unique_key and revision set."""
        new = dataclasses.replace(obj, id=obj.id or str(uuid.uuid4()), revision=0, unique_key=0)
        new.validate()
        for _ in range(MAX_ATTEMPTS):
            counter = self.driver.get(COUNTER_TABLE, new.kind)
            new.unique_key = (int(counter.value) if counter else 0) + 1
            if new.unique_key > new.max_unique_key:
                raise ValidationError(f"{new.label()}: every unique_key of kind {new.kind} is used")
            relation_compares, _ = self._relations(new)
            unique = _unique_keys(new)
            compares = [
                Compare(new.kind, new.id, 0),
                Compare(COUNTER_TABLE, new.kind, counter.mod_revision if counter else 0),
                *relation_compares,
                *(Compare(UNIQUE_TABLE, key, 0) for key in unique),
            ]
            ops: list[Op] = [
                Put(COUNTER_TABLE, new.kind, str(new.unique_key).encode()),
                Put(new.kind, new.id, encode(new)),
                *(Put(UNIQUE_TABLE, key, _holder(new)) for key in unique),
                *(Put(REF_TABLE, key, encode(new)) for key in _ref_keys(new)),
            ]
            try:
                new.revision = self.driver.txn(compares, ops)
                return new
            except Conflict as exc:
                if (exc.table, exc.key) == (new.kind, new.id):
                    raise Conflict(
                        new.kind, new.id, 0, exc.actual, f"a {new.kind} with this id already exists"
                    ) from None
                self._raise_if_taken(exc, new, unique)
        raise DatabaseUnavailable(f"{new.label()}: gave up after {MAX_ATTEMPTS} concurrent-write retries")

    def update(self, obj: NbObject, if_revision: int | None = None) -> NbObject:
        """Replace a stored object if it is still at ``if_revision`` (default: ``obj.revision``).

        An object never read (revision 0) and no ``if_revision`` overwrites
        whatever is stored. The unique_key is kept; immutable fields cannot
        change. An update that could add a dependency (a new reference, a
        port's new IP) also moves its kind's counter, so a delete racing
        with it retries and sees the dependency instead of leaving it dangling.
        """
        expected = if_revision if if_revision is not None else (obj.revision or None)
        new = dataclasses.replace(obj, revision=0)
        new.validate()
        for _ in range(MAX_ATTEMPTS):
            stored = self.get(new.kind, new.id)
            new.unique_key = stored.unique_key
            for field in _changed(new, stored, new.immutable):
                raise ValidationError(
                    f"{new.label()}: {field} cannot change (it is {getattr(stored, field)!r}); "
                    f"delete the {new.kind} and create it again"
                )
            relation_compares, _ = self._relations(new)
            unique, old_unique = _unique_keys(new), _unique_keys(stored)
            compares = [
                Compare(new.kind, new.id, stored.revision if expected is None else expected),
                *relation_compares,
                *(Compare(UNIQUE_TABLE, key, 0) for key in unique if key not in old_unique),
            ]
            ops: list[Op] = [
                Put(new.kind, new.id, encode(new)),
                *(Put(UNIQUE_TABLE, key, _holder(new)) for key in unique if key not in old_unique),
                *(Delete(UNIQUE_TABLE, key) for key in old_unique if key not in unique),
                *(Put(REF_TABLE, key, encode(new)) for key in _ref_keys(new)),
                *(Delete(REF_TABLE, key) for key in _ref_keys(stored) - _ref_keys(new)),
            ]
            if _changed(new, stored, [*new.references, *new.related_fields]):
                counter = self.driver.get(COUNTER_TABLE, new.kind)
                if counter is not None:
                    compares.append(Compare(COUNTER_TABLE, new.kind, counter.mod_revision))
                    ops.append(Put(COUNTER_TABLE, new.kind, counter.value))
            try:
                new.revision = self.driver.txn(compares, ops)
                return new
            except Conflict as exc:
                if (exc.table, exc.key) == (new.kind, new.id) and expected is not None:
                    raise
                self._raise_if_taken(exc, new, unique)
        raise DatabaseUnavailable(f"{new.label()}: gave up after {MAX_ATTEMPTS} concurrent-write retries")

    def put_chassis(self, chassis: Chassis) -> Chassis:
        """Register or refresh a chassis whatever is stored: its agent is the only writer."""
        for _ in range(MAX_ATTEMPTS):
            try:
                self.get(Chassis, chassis.id or chassis.name)
            except NotFound:
                try:
                    return self.create(chassis)
                except Conflict:
                    continue
            return self.update(dataclasses.replace(chassis, revision=0))
        raise DatabaseUnavailable(f"{chassis.label()}: gave up after {MAX_ATTEMPTS} concurrent-write retries")

    def heartbeat(self, chassis: str, ttl: float) -> None:
        """Say the agent of ``chassis`` is alive for the next ``ttl`` seconds (an etcd lease)."""
        self.driver.keep_alive(ALIVE_TABLE, chassis, ttl)

    def alive_chassis(self) -> set[str]:
        """The chassis whose agent's heartbeat has not lapsed: a dead agent drops out within its ttl."""
        return self.driver.alive(ALIVE_TABLE)

    def delete(
        self, kind: Kind, id: str, if_revision: int | None = None, cascade: bool = False
    ) -> list[NbObject]:
        """Remove an object, and with ``cascade`` everything it owns, in one transaction.

        Returns what was removed, the named object first. Objects that merely
        use a removed one (a port in a security group, a floating IP on a
        port) always block the delete: cascading into them would delete far
        more than asked.
        """
        cls = kind_class(kind)
        for _ in range(MAX_ATTEMPTS):
            # Counters first: a referrer created or re-pointed after this moves one, and the write retries.
            counters = {k: rec.mod_revision if (rec := self.driver.get(COUNTER_TABLE, k)) else 0 for k in KINDS}
            target = self.get(cls, id)
            if if_revision is not None and target.revision != if_revision:
                raise Conflict(cls.kind, id, if_revision, target.revision)
            owned, related = self._owned(target)
            if owned and not cascade:
                raise BrokenReference(
                    f"{target.label()} is still used by {_some(owned)}; delete those first, "
                    "or delete with cascade (--cascade)"
                )
            removed = [target, *owned]
            users = list({(o.kind, o.id): o for r in removed for o in related[r.kind, r.id]
                          if o not in removed and o.uses(r)}.values())
            if users:
                raise BrokenReference(
                    f"{target.label()} is still used by {_some(users)}; remove those references first "
                    f"(--cascade only deletes what the {target.kind} owns)"
                )
            compares = [Compare(o.kind, o.id, o.revision) for o in removed]
            compares += [Compare(COUNTER_TABLE, k, counters[k])
                         for k in sorted({k for o in removed for k in _referrer_kinds(o.kind)})]
            ops: list[Op] = [Delete(o.kind, o.id) for o in removed]
            ops += [Delete(UNIQUE_TABLE, key) for o in removed for key in _unique_keys(o)]
            ops += [Delete(REF_TABLE, key) for o in removed for key in _ref_keys(o)]
            try:
                self.driver.txn(compares, ops)
                return removed
            except Conflict as exc:
                if (exc.table, exc.key) == (cls.kind, id) and if_revision is not None:
                    raise
        raise DatabaseUnavailable(f"{cls.kind} {id}: gave up after {MAX_ATTEMPTS} concurrent-write retries")

    def _related(self, obj: NbObject) -> list[NbObject]:
        """Objects that may depend on ``obj``: its referrers, and for a subnet the ports of its network."""
        found = self.referrers(obj.kind, obj.id)
        if isinstance(obj, Subnet):
            found += self.referrers("network", obj.network_id, "port")
        return found

    def _owned(self, target: NbObject) -> tuple[list[NbObject], dict[tuple[str, str], list[NbObject]]]:
        """Everything ``target`` owns, directly or through another owned object, read through the index.

        Also returns what was read as related to each of them, so the check for
        objects that merely use them sees the same reads (a child created
        between two reads is then owned, never mistaken for a user).
        """
        found: dict[tuple[str, str], NbObject] = {}
        related: dict[tuple[str, str], list[NbObject]] = {}
        pending = [target]
        while pending:
            parent = pending.pop()
            related[parent.kind, parent.id] = self._related(parent)
            for child in related[parent.kind, parent.id]:
                if child.owned_by(parent) and (child.kind, child.id) not in found and child != target:
                    found[child.kind, child.id] = child
                    pending.append(child)
        return list(found.values()), related


def _some(objs: list[NbObject]) -> str:
    names = ", ".join(o.label() for o in objs[:5])
    return names + (f" and {len(objs) - 5} more" if len(objs) > 5 else "")
