"""The northbound API: typed, validated model objects on top of a raw driver.

Writes compare what they rely on, so concurrent writers (the CLI, several
agents) cannot leave the database inconsistent: a create compares the ids
it references and the per-kind counter it takes its ``unique_key`` from; a
delete compares every object it removes and the counters of the kinds that
could point at it, so a child created meanwhile makes it retry instead of
leaving an orphan. Values that must be unique (a network's VNI, a port's MAC
and IPs on its network) are claimed as index records in the same
transaction.

Creates and updates go through one path, ``NbApi.apply``: a batch of them
is checked as a whole first (nothing is written when one is refused), then
written in as few transactions as the driver takes (one on SQLite; on etcd
as many as its per-transaction limit needs, in the batch's order). A single
``create`` or ``update`` is a batch of one.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
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
    HwflowError,
    NotFound,
    ValidationError,
)
from hwflow.model.objects import KINDS, Chassis, NbObject, Related, Subnet, from_dict, kind_class, shown

LOG = logging.getLogger(__name__)

DRIVER_NAMESPACE = "hwflow.nb_db_drivers"
COUNTER_TABLE = "_counter"  # kind -> the last unique_key handed out
UNIQUE_TABLE = "_unique"  # "scope/constraint/value" -> "kind id" of the object holding it
# "kind/id/referrer kind/referrer id" -> the referrer's record: who points at an object, read by prefix.
# Holding a copy of the referrer (written in the same transaction) makes "the ports of this network"
# one range read instead of one read per port: what an agent does whenever its set of ports grows.
REF_TABLE = "_ref"
ALIVE_TABLE = "_alive"  # chassis id -> liveness mark its agent keeps alive
PORT_STATUS_TABLE = "port_status"  # "chassis/port id" -> a port that chassis's agent has programmed (PortUp)
# The stored record's envelope: when the API wrote it (Unix seconds, the writer's clock), next to the object's
# fields but not one of them (decode takes it off): how long a change took to reach a watcher.
WRITTEN = "_written"
STAMP_BYTES = len(f'"{WRITTEN}":{time.time() * 1000:.6f},')  # what the stamp adds to a record (ample: 1000x now)
MAX_ATTEMPTS = 50  # transactions retried after losing a race on a counter or a reference

Kind = str | type[NbObject]


@dataclasses.dataclass(frozen=True)
class Change:
    """One object written or deleted; for a delete ``obj`` is its last stored value. ``written``: when the
    writer stored a put (Unix seconds, its clock; the record's :data:`WRITTEN`), None for a delete (nothing
    stamps a deletion) and for a record stored before the stamp existed."""

    revision: int
    kind: str
    op: Literal["put", "delete"]
    obj: NbObject
    written: float | None = None


@dataclasses.dataclass(frozen=True)
class PortUp:
    """A port the agent of ``chassis`` has programmed (both its datapaths in place), since ``at`` (epoch seconds).

    A port no agent reports is down. One record per port keyed "chassis/port": an agent's etcd role may write
    its own chassis's prefix only (``etcd_auth.chassis_grants``), and plugging a port writes one small key,
    where one record per chassis listing its ports would rewrite (and send each watcher) all of a 200-port
    host's at every plug.
    """

    chassis: str
    port: str
    at: float = 0.0


@dataclasses.dataclass(frozen=True)
class PortStatusChange:
    """A port reported up by a chassis (``up``), or no longer (unplugged, deleted, bound elsewhere)."""

    revision: int
    status: PortUp
    up: bool


def _port_up(key: str, value: bytes | None) -> PortUp | None:
    """A status record as a PortUp; None (logged) for one hwflow did not write (a deletion's has no value)."""
    chassis, _, port = key.partition("/")
    try:
        at = float(json.loads(value)["at"]) if value is not None else 0.0
    except (ValueError, TypeError, KeyError) as exc:
        LOG.warning("skipping a bad port status record %r: %s", key, exc)
        return None
    return PortUp(chassis, port, at) if chassis and port else None


@dataclasses.dataclass(frozen=True)
class Create:
    """A write of a batch: store ``obj`` as a new object (under a new UUID when it has no id)."""

    obj: NbObject


@dataclasses.dataclass(frozen=True)
class Update:
    """A write of a batch: replace the stored object ``obj.id`` if it is still at ``if_revision``.

    Without ``if_revision``, ``obj.revision``; an object never read (revision 0)
    overwrites whatever is stored. As ``NbApi.update``.
    """

    obj: NbObject
    if_revision: int | None = None


Write = Create | Update


class BatchIncomplete(HwflowError):
    """A batch written in several transactions stopped after some of them had committed.

    Those stay: ``written`` (the first objects of the batch, in its order, as
    stored). ``unknown`` are the objects of the transaction the database did
    not answer (it may or may not have committed), ``not_written`` the rest,
    ``cause`` the error that stopped it. Only a batch bigger than one
    transaction can end so (on etcd: more than its ``--max-txn-ops``).
    """

    def __init__(self, cause: HwflowError, written: list[NbObject], unknown: list[NbObject],
                 not_written: list[NbObject]) -> None:
        self.cause, self.written, self.unknown, self.not_written = cause, written, unknown, not_written
        total = len(written) + len(unknown) + len(not_written)
        parts = [f"{len(written)} of the batch's {total} objects were written and stay"
                 + (f" ({_count(written)}; the last {written[-1].label()})" if written else "")]
        if unknown:
            parts.append(f"{len(unknown)} may or may not have been ({_count(unknown)}, from {unknown[0].label()} "
                         "on: the database did not answer)")
        if not_written:
            parts.append(f"{len(not_written)} were not ({_count(not_written)}, from {not_written[0].label()} on)")
        super().__init__(f"{cause} [the batch stopped there: {'; '.join(parts)}]")


def _count(objs: list[NbObject]) -> str:
    kinds: dict[str, int] = {}
    for obj in objs:
        kinds[obj.kind] = kinds.get(obj.kind, 0) + 1
    return ", ".join(f"{n:,} {kind}" for kind, n in kinds.items())


@dataclasses.dataclass(eq=False)
class _Entry:
    """One write of a batch, checked: the object as it will be stored and what its transaction holds."""

    write: Write  # as asked
    new: NbObject
    expected: int | None = None  # the revision an update asked for: losing it is not retried
    stored: NbObject | None = None  # what an update replaces
    relies: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # compared at their revision as read
    claims: dict[str, str] = dataclasses.field(default_factory=dict)  # unique index keys it takes -> their meaning
    releases: list[str] = dataclasses.field(default_factory=list)  # unique index keys an update gives up
    ops: list[Op] = dataclasses.field(default_factory=list)
    bump: bool = False  # an update that can add a dependency moves its kind's counter, as a create does

    def again(self) -> Write:
        """The write to check again after a race: a create keeps the id it was given."""
        if isinstance(self.write, Create) and not self.write.obj.id:
            return Create(dataclasses.replace(self.write.obj, id=self.new.id))
        return self.write


class _Reads:
    """What a batch's checks see: the records read for the whole batch, with the batch's own writes laid
    over them as the checks go through it in order (an object sees those before it, never those after)."""

    def __init__(self, records: dict[tuple[str, str], Record | None]) -> None:
        self.records = records
        self.decoded: dict[tuple[str, str], NbObject] = {}
        self.batch: dict[tuple[str, str], NbObject] = {}  # the batch's objects checked so far
        self.later: set[tuple[str, str]] = set()  # objects the batch creates, not reached yet
        self.subnets_of: dict[str, dict[str, Subnet]] = {}  # network -> its stored subnets, by id
        self.batch_subnets: dict[str, dict[str, Subnet]] = {}  # network -> the batch's subnets so far, by id

    def revision(self, table: str, key: str) -> int:
        rec = self.records.get((table, key))
        return rec.mod_revision if rec is not None else 0

    def get(self, kind: str, ident: str) -> NbObject | None:
        if (kind, ident) in self.batch:
            return self.batch[kind, ident]
        if (kind, ident) not in self.decoded:
            rec = self.records.get((kind, ident))
            if rec is None:
                return None
            self.decoded[kind, ident] = decode(rec.table, rec.key, rec.value, rec.mod_revision)
        return self.decoded[kind, ident]

    def subnets(self, network: str) -> list[Subnet]:
        return list({**self.subnets_of.get(network, {}), **self.batch_subnets.get(network, {})}.values())

    def wrote(self, obj: NbObject) -> None:
        self.batch[obj.kind, obj.id] = obj
        self.later.discard((obj.kind, obj.id))
        if isinstance(obj, Subnet):
            self.batch_subnets.setdefault(obj.network_id, {})[obj.id] = obj


def encode(obj: NbObject) -> bytes:
    """The stored record: the fields but the revision (the record's mod_revision is the truth).

    Read straight off the object (fields hold plain JSON data, no nested dataclass), not through
    ``to_dict``, whose deep copy was a quarter of the time of checking a batch.
    """
    data = {name: getattr(obj, name) for name in _stored_fields(type(obj))}
    return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()


@functools.cache
def _stored_fields(cls: type[NbObject]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls) if f.name != "revision")


def stamped(value: bytes, written: float) -> bytes:
    """An encoded record with its envelope's :data:`WRITTEN`: first, as ``json.dumps(sort_keys=True)`` would put
    it (``_`` sorts before every field name), spliced in rather than encoded again."""
    return b'{"%s":%.6f,%s' % (WRITTEN.encode(), written, value[1:])


def decode(table: str, key: str, value: bytes, revision: int) -> NbObject:
    """A stored record back as an object; a malformed one is a ValidationError naming it."""
    return decode_written(table, key, value, revision)[0]


def decode_written(table: str, key: str, value: bytes, revision: int) -> tuple[NbObject, float | None]:
    """:func:`decode`, and when the record was written (its envelope's :data:`WRITTEN`; None if it has none)."""
    try:
        data = json.loads(value)
    except ValueError as exc:  # UnicodeDecodeError too: a record that is not UTF-8
        raise ValidationError(f"{table} {key}: stored record is not JSON ({exc})") from None
    except RecursionError:
        raise ValidationError(f"{table} {key}: stored record is JSON nested too deeply to read") from None
    if not isinstance(data, dict):
        raise ValidationError(f"{table} {key}: stored record must be a JSON object, not {type(data).__name__}")
    if data.get("id") != key:  # checked first, so that every message below names the record by its key
        carries = f"another id, {shown(data['id'])}" if "id" in data else "no id"
        raise ValidationError(f"{table} {key}: stored record carries {carries}")
    written = data.pop(WRITTEN, None)
    if written is not None and (isinstance(written, bool) or not isinstance(written, int | float)):
        raise ValidationError(f"{table} {key}: stored record's {WRITTEN} must be a time in Unix seconds, not "
                              f"{shown(written)}")
    obj = from_dict(table, data)
    obj.revision = revision
    return obj, written


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
                    obj, written = decode_written(ev.table, ev.key, ev.value, ev.revision)
                except ValidationError as exc:
                    LOG.warning("skipping a bad change at revision %d: %s", ev.revision, exc)
                    continue
                changes.append(Change(ev.revision, ev.table, ev.op, obj, written if ev.op == "put" else None))
            if changes or not events or time.monotonic() >= deadline:
                return changes
            from_revision = events[-1].revision + 1

    # Port status: what each agent has programmed (PortUp)

    def report_ports(self, chassis: str, up: Iterable[str], down: Iterable[str]) -> None:
        """Say the agent of ``chassis`` has programmed the ports ``up`` (now) and no longer has ``down``
        (unplugged, deleted, bound elsewhere), in as few transactions as the driver takes; deleting a status
        that is not there is nothing."""
        stamp = json.dumps({"at": time.time()}).encode()
        ops: list[Op] = [Put(PORT_STATUS_TABLE, f"{chassis}/{port}", stamp) for port in sorted(up)]
        ops += [Delete(PORT_STATUS_TABLE, f"{chassis}/{port}") for port in sorted(down)]
        step = self.driver.max_txn_ops or len(ops) or 1
        for start in range(0, len(ops), step):
            self.driver.txn([], ops[start:start + step])

    def ports_up(self, chassis: str = "") -> tuple[int, list[PortUp]]:
        """The revision read at, and the ports reported up (by ``chassis``, or by any): watch_ports from
        revision + 1 follows on without a gap."""
        revision, records = self.driver.list(PORT_STATUS_TABLE, f"{chassis}/" if chassis else "")
        return revision, [status for rec in records if (status := _port_up(rec.key, rec.value)) is not None]

    def watch_ports(self, from_revision: int, timeout: float) -> tuple[int, list[PortStatusChange]]:
        """Port status changes at or after ``from_revision`` (or [] after ``timeout`` seconds), and the revision to
        watch from next (past the other tables' changes too); Compacted when the history is gone (read
        ports_up again)."""
        events = self.driver.watch(from_revision, timeout)
        changes = [PortStatusChange(ev.revision, status, ev.op == "put") for ev in events
                   if ev.table == PORT_STATUS_TABLE
                   and (status := _port_up(ev.key, ev.value if ev.op == "put" else None)) is not None]
        return (events[-1].revision + 1 if events else from_revision), changes

    # Writes

    def create(self, obj: NbObject) -> NbObject:
        """Store a new object; returns a copy with its id, unique_key and revision set."""
        return self.apply([Create(obj)])[0]

    def update(self, obj: NbObject, if_revision: int | None = None) -> NbObject:
        """Replace a stored object if it is still at ``if_revision`` (default: ``obj.revision``).

        An object never read (revision 0) and no ``if_revision`` overwrites
        whatever is stored. The unique_key is kept; immutable fields cannot
        change. An update that could add a dependency (a new reference, a
        port's new IP) also moves its kind's counter, so a delete racing
        with it retries and sees the dependency instead of leaving it dangling.
        """
        return self.apply([Update(obj, if_revision)])[0]

    def create_many(self, objs: Iterable[NbObject]) -> list[NbObject]:
        """``apply`` of a create of each object, in order."""
        return self.apply([Create(obj) for obj in objs])

    def apply(self, writes: Iterable[Write]) -> list[NbObject]:
        """Create and update many objects: checked as one batch, written in as few transactions as the driver takes.

        Returns the objects as stored (ids, unique_keys and revisions set), in
        the order of ``writes``. The batch is checked as if its writes were
        made one after the other: an object may reference objects created (or
        see objects updated) earlier in the batch, never later; names of
        unique values (a VNI, a MAC or IP on a network) must be free in the
        database and not taken by an earlier write of the batch. Anything
        refused raises what a single create or update would (ValidationError,
        BrokenReference, NotFound, or Conflict for a stale revision or an id
        that exists), naming the object, and nothing is written.

        Then the writes go out in order, in transactions as big as the driver
        takes (``Driver.max_txn_ops``, ``max_txn_bytes``): SQLite takes the
        whole batch in one, so it lands entirely or not at all; etcd takes
        128 compares and 128 operations by default (about 30 ports), so a
        bigger batch is several transactions, each applied whole, in the
        batch's order, and every one of them leaves a consistent database
        (nothing in it references what a later one writes). Each compares
        what it relies on, as a single write does; a concurrent writer that
        moved a counter or a referenced object makes the rest of the batch
        be checked again and retried. One that took an id or a unique value
        of the batch's objects meanwhile makes it fail with a Conflict naming
        the object. When a transaction fails after earlier ones committed,
        those writes stay: the error is a BatchIncomplete saying which
        objects were written and which were not (checking and applying the
        rest again completes it).
        """
        pending = list(writes)
        written: list[NbObject] = []
        for _ in range(MAX_ATTEMPTS):
            if not pending:
                return written
            try:
                entries, revisions, counters = self._check(pending)
            except HwflowError as exc:
                raise _incomplete(exc, written, [], [w.obj for w in pending]) from None
            chunks = list(self._chunks(entries))
            for n, chunk in enumerate(chunks):
                try:
                    self._commit(chunk, revisions, counters)
                except Conflict as exc:
                    lost = self._lost(exc, chunk)
                    if lost is not None:
                        raise _incomplete(lost, written, [], [e.new for later in chunks[n:] for e in later]) from None
                    pending = [e.again() for later in chunks[n:] for e in later]  # check those again, then retry
                    break
                except DatabaseUnavailable as exc:
                    rest = [e.new for later in chunks[n + 1:] for e in later]
                    raise _incomplete(exc, written, [e.new for e in chunk], rest) from None
                written += [e.new for e in chunk]
            else:
                return written
        what = pending[0].obj.label() if len(pending) == 1 else f"a batch of {len(pending)} writes"
        raise _incomplete(DatabaseUnavailable(f"{what}: gave up after {MAX_ATTEMPTS} concurrent-write retries"),
                          written, [], [w.obj for w in pending])

    def _check(self, writes: Sequence[Write]) -> tuple[list[_Entry], dict[tuple[str, str], int], dict[str, int]]:
        """Check a batch as if written in order, reading what it needs in few requests; nothing is written.

        Returns its entries, the revision of every record they rely on as read,
        and each created kind's counter as read.
        """
        entries: list[_Entry] = []
        seen: dict[tuple[str, str], int] = {}
        for write in writes:
            if isinstance(write, Create):
                new = dataclasses.replace(write.obj, id=write.obj.id or str(uuid.uuid4()), revision=0, unique_key=0)
                entry = _Entry(write, new)
            elif isinstance(write, Update):
                expected = write.if_revision if write.if_revision is not None else (write.obj.revision or None)
                if expected is not None and (type(expected) is not int or expected < 0):
                    what = "if_revision" if write.if_revision is not None else "revision"
                    raise ValidationError(f"{write.obj.label()}: {what} {shown(expected)} must be a revision "
                                          "(a non-negative integer)")
                new = dataclasses.replace(write.obj, revision=0)
                entry = _Entry(write, new, expected)
            else:
                raise TypeError(f"not a batch write (Create or Update): {write!r}")
            new.validate()
            if (new.kind, new.id) in seen:
                raise ValidationError(f"{new.label()}: written twice in one batch (writes {seen[new.kind, new.id]} "
                                      f"and {len(entries) + 1}); write each object once")
            seen[new.kind, new.id] = len(entries) + 1
            entries.append(entry)

        # One read of everything the checks need (stored objects, references, counters, unique values), then
        # the subnets of the networks involved; a unique value known only after the relations (a floating
        # IP's fixed address) is read after them.
        wanted: dict[tuple[str, str], None] = {}
        for e in entries:
            if isinstance(e.write, Update) or e.write.obj.id:  # a new UUID is taken by nobody
                wanted[e.new.kind, e.new.id] = None
            wanted[COUNTER_TABLE, e.new.kind] = None
            if e.new.subnets_of:
                wanted[COUNTER_TABLE, Subnet.kind] = None
            wanted.update(((kind, ident), None) for _, kind, ident in e.new.refs())
            wanted.update(((UNIQUE_TABLE, key), None) for key in _unique_keys(e.new))
        reads = _Reads(dict(zip(wanted, self.driver.get_many(list(wanted)), strict=True)))
        networks = {getattr(e.new, e.new.subnets_of) for e in entries if e.new.subnets_of}
        for network in sorted(networks - {""}):
            if reads.records.get(("network", network)) is not None:
                reads.subnets_of[network] = {s.id: s for s in self.referrers("network", network, Subnet)
                                             if isinstance(s, Subnet)}
        reads.later = {(e.new.kind, e.new.id) for e in entries if isinstance(e.write, Create)}

        counters = {kind: int(rec.value) if (rec := reads.records[COUNTER_TABLE, kind]) else 0
                    for kind in {e.new.kind for e in entries}}
        taken = dict(counters)
        for e in entries:
            new = e.new
            if isinstance(e.write, Update):
                stored = reads.get(new.kind, new.id)
                if stored is None:
                    raise NotFound(f"no {new.kind} with id {new.id!r}")
                for field in _changed(new, stored, new.immutable):
                    raise ValidationError(
                        f"{new.label()}: {field} cannot change (it is {getattr(stored, field)!r}); "
                        f"delete the {new.kind} and create it again"
                    )
                if e.expected is not None and stored.revision != e.expected:
                    raise Conflict(new.kind, new.id, e.expected, stored.revision)
                new.unique_key, e.stored = stored.unique_key, stored
                e.bump = bool(_changed(new, stored, [*new.references, *new.related_fields]))
            else:
                if revision := reads.revision(new.kind, new.id):
                    raise Conflict(new.kind, new.id, 0, revision, f"a {new.kind} with this id already exists")
                if new.numbered:
                    taken[new.kind] += 1
                    new.unique_key = taken[new.kind]
                if new.unique_key > new.max_unique_key:
                    raise ValidationError(f"{new.label()}: every unique_key of kind {new.kind} is used")
            relies, _ = self._relations(new, reads)
            e.relies = [(new.kind, new.id), *relies]
            reads.wrote(new)

        for e in entries:
            unique, old = _unique_keys(e.new), _unique_keys(e.stored) if e.stored else {}
            e.claims = {key: what for key, what in unique.items() if key not in old}
            e.releases = [key for key in old if key not in unique]
        late = [(UNIQUE_TABLE, key) for e in entries for key in e.claims if (UNIQUE_TABLE, key) not in reads.records]
        if late:
            reads.records.update(zip(late, self.driver.get_many(late), strict=True))
        holders: dict[str, str] = {}  # unique index key -> who in the batch holds it
        released: set[str] = set()  # stored values the batch gives up: a later write of it may take them
        for e in entries:
            for key, what in e.claims.items():
                holder = holders.get(key)
                if holder is None and key not in released and (rec := reads.records[UNIQUE_TABLE, key]) is not None:
                    holder = rec.value.decode(errors="replace")
                if holder is not None:
                    raise ValidationError(f"{e.new.label()}: {what} is already used by {holder}; choose another")
                holders[key] = f"{e.new.kind} {e.new.id} (earlier in this batch)"
            released.update(e.releases)

            value = encode(e.new)
            refs, old_refs = _ref_keys(e.new), _ref_keys(e.stored) if e.stored else set()
            e.relies += [(UNIQUE_TABLE, key) for key in e.claims]
            e.ops = [
                Put(e.new.kind, e.new.id, value),
                *(Put(UNIQUE_TABLE, key, _holder(e.new)) for key in e.claims),
                *(Delete(UNIQUE_TABLE, key) for key in e.releases),
                *(Put(REF_TABLE, key, value) for key in sorted(refs)),
                *(Delete(REF_TABLE, key) for key in sorted(old_refs - refs)),
            ]
        revisions = {key: rec.mod_revision for key, rec in reads.records.items() if rec is not None}
        return entries, revisions, counters

    def _relations(self, obj: NbObject, reads: _Reads) -> tuple[list[tuple[str, str]], Related]:
        """What ``obj`` points at (and the subnets it needs) as ``reads`` sees it, failing on a missing reference.

        Also returns the records the write relies on: its transaction compares
        them, so it fails if any of them changes before it lands.
        """
        relies, related = [], Related()
        for field, kind, ident in obj.refs():
            target = reads.get(kind, ident)
            if target is None:
                if (kind, ident) in reads.later:
                    raise BrokenReference(f"{obj.label()}: {field} {ident!r} names a {kind} this batch creates "
                                          f"later; put the {kind} before the {obj.kind}")
                raise BrokenReference(
                    f"{obj.label()}: {field} {ident!r} names no existing {kind}; create the {kind} first"
                )
            if (kind, ident) not in related.objects:
                related.objects[kind, ident] = target
                relies.append((kind, ident))
        network = getattr(obj, obj.subnets_of) if obj.subnets_of else ""
        if network:
            related.subnets = reads.subnets(network)
            if obj.kind != Subnet.kind:  # a subnet's own create relies on this counter already
                relies.append((COUNTER_TABLE, Subnet.kind))
        obj.check_relations(related)
        return relies, related

    def _chunks(self, entries: list[_Entry]) -> Iterator[list[_Entry]]:
        """The batch cut, in order, into transactions the driver takes (counting each kind's counter once).

        An object too big for one transaction on its own is a ValidationError (raised before anything is written:
        the caller lists the chunks first)."""
        max_ops, max_bytes = self.driver.max_txn_ops, self.driver.max_txn_bytes
        chunk: list[_Entry] = []
        ops: set[tuple[str, str]] = set()
        relies: set[tuple[str, str]] = set()
        size = 0
        for e in entries:
            counter = (COUNTER_TABLE, e.new.kind)
            e_ops = {(op.table, op.key) for op in e.ops} | {counter}
            e_relies = {*e.relies, counter}
            e_size = STAMP_BYTES + sum(len(op.key) + len(op.value) if isinstance(op, Put) else len(op.key)
                                       for op in e.ops)
            if (max_ops is not None and max(len(e_ops), len(e_relies)) > max_ops) or (
                    max_bytes is not None and e_size > max_bytes):
                raise ValidationError(
                    f"{e.new.label()}: writing it takes {max(len(e_ops), len(e_relies))} operations and {e_size:,} "
                    f"bytes in one transaction, more than the database takes ({max_ops or 'any'} operations, "
                    f"{f'{max_bytes:,}' if max_bytes is not None else 'any'} bytes); give it fewer addresses, "
                    "groups or routes")
            if chunk and (
                (max_ops is not None and (len(ops) + len(e_ops - ops) > max_ops
                                          or len(relies) + len(e_relies - relies) > max_ops))
                or (max_bytes is not None and size + e_size > max_bytes)
            ):
                yield chunk
                chunk, ops, relies, size = [], set(), set(), 0
            chunk.append(e)
            ops |= e_ops
            relies |= e_relies
            size += e_size
        if chunk:
            yield chunk

    def _commit(self, chunk: list[_Entry], revisions: dict[tuple[str, str], int], counters: dict[str, int]) -> None:
        """One transaction: the chunk's writes, comparing what they rely on at the revision it had before it.

        ``revisions`` and ``counters`` move on with what it wrote, for the next chunk.
        """
        ops: dict[tuple[str, str], Op] = {}
        relies: dict[tuple[str, str], None] = {}
        top: dict[str, int] = {}  # kind -> the counter value this transaction leaves
        for e in chunk:
            for op in e.ops:
                ops[op.table, op.key] = op  # a unique value released and taken again in one chunk: the take
            relies.update(dict.fromkeys(e.relies))
            kind = e.new.kind
            if e.stored is None and e.new.numbered:
                top[kind] = max(top.get(kind, 0), e.new.unique_key)
            elif e.bump and (COUNTER_TABLE, kind) in revisions:
                top[kind] = max(top.get(kind, 0), counters.get(kind, 0))
        for kind, value in top.items():
            relies[COUNTER_TABLE, kind] = None
            ops[COUNTER_TABLE, kind] = Put(COUNTER_TABLE, kind, str(value).encode())
        compares = [Compare(table, key, revisions.get((table, key), 0)) for table, key in relies]
        now = time.time()  # stamped as the transaction goes out, not when the batch was checked (seconds before)
        for e in chunk:
            ops[e.new.kind, e.new.id] = Put(e.new.kind, e.new.id, stamped(ops[e.new.kind, e.new.id].value, now))
        revision = self.driver.txn(compares, list(ops.values()))
        for key, op in ops.items():
            revisions[key] = revision if isinstance(op, Put) else 0
        counters.update(top)
        for e in chunk:
            e.new.revision = revision

    def _lost(self, exc: Conflict, chunk: list[_Entry]) -> HwflowError | None:
        """What a chunk's failed compare means: the error to raise, or None when checking again may pass."""
        if exc.actual < 0:  # the driver could not say which record moved
            return None
        for e in chunk:
            if (exc.table, exc.key) == (e.new.kind, e.new.id):
                if e.stored is None:
                    return Conflict(e.new.kind, e.new.id, 0, exc.actual, f"a {e.new.kind} with this id already exists")
                return exc if e.expected is not None else None
            if exc.table == UNIQUE_TABLE and exc.key in e.claims:
                holder = self.driver.get(UNIQUE_TABLE, exc.key)
                if holder is None:
                    return None  # taken and given up again meanwhile
                return Conflict(UNIQUE_TABLE, exc.key, exc.expected, exc.actual,
                                f"{e.new.label()}: {e.claims[exc.key]} was taken by "
                                f"{holder.value.decode(errors='replace')} while this write was under way; "
                                "choose another")
        return None

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


def _incomplete(cause: HwflowError, written: list[NbObject], unknown: list[NbObject],
                not_written: list[NbObject]) -> HwflowError:
    """``cause`` itself when nothing of the batch is known written and nothing left behind uncertain."""
    if not written and not (unknown and not_written):
        return cause
    return BatchIncomplete(cause, written, unknown, not_written)


def _some(objs: list[NbObject]) -> str:
    names = ", ".join(o.label() for o in objs[:5])
    return names + (f" and {len(objs) - 5} more" if len(objs) > 5 else "")
