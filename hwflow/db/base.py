"""The driver interface of the northbound database, shaped after etcd v3.

A driver stores opaque records under (table, key). Every successful write
advances one global revision; each record remembers the revision that
created it and the one that last changed it (``mod_revision``), so callers
can compare-and-swap on it. Every change is also an event that ``watch``
replays from any revision the driver still keeps, which is what lets an
agent take a snapshot and then follow changes without a gap. All drivers
(embedded SQLite, etcd) pass the same conformance tests.
"""

from __future__ import annotations

import abc
import dataclasses
from collections.abc import Sequence
from typing import Literal, Self

from oslo_config import cfg

from hwflow.model.errors import Compacted, Conflict, NotFound

__all__ = ["Compacted", "Compare", "Conflict", "Delete", "Driver", "Event", "Put", "Record"]


@dataclasses.dataclass(frozen=True)
class Record:
    table: str
    key: str
    value: bytes
    create_revision: int
    mod_revision: int


@dataclasses.dataclass(frozen=True)
class Event:
    """One change. For a delete, ``value`` is the last stored value (etcd's prev_kv)."""

    revision: int
    table: str
    key: str
    op: Literal["put", "delete"]
    value: bytes | None


@dataclasses.dataclass(frozen=True)
class Compare:
    """Require (table, key) to be at ``mod_revision``; 0 means it must not exist."""

    table: str
    key: str
    mod_revision: int


@dataclasses.dataclass(frozen=True)
class Put:
    table: str
    key: str
    value: bytes


@dataclasses.dataclass(frozen=True)
class Delete:
    table: str
    key: str


Op = Put | Delete


class Driver(abc.ABC):
    """Raw storage; the typed NB API (hwflow.db.api) is built on top of it."""

    # What one transaction may hold, None for no limit: the NB API splits a batch of writes into
    # transactions within both. ``max_txn_ops`` bounds the compares and, separately, the operations;
    # ``max_txn_bytes`` the keys and values the operations carry.
    max_txn_ops: int | None = None
    max_txn_bytes: int | None = None

    @classmethod
    @abc.abstractmethod
    def from_url(cls, url: str, conf: cfg.ConfigOpts | None = None) -> Driver:
        """Open the database a URL names; ``conf`` supplies tuning options."""

    @abc.abstractmethod
    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> int:
        """Apply ``ops`` atomically if every compare holds, at one new revision.

        Raises Conflict naming the first compare that failed. Deleting a key
        that does not exist is a no-op (no event). Returns the new revision.
        """

    @abc.abstractmethod
    def get(self, table: str, key: str) -> Record | None: ...

    def get_many(self, keys: Sequence[tuple[str, str]]) -> list[Record | None]:
        """Records by (table, key), in the order asked (None where there is none).

        Drivers read them in as few requests as they can; each record is as it
        was when read, not all necessarily at one revision.
        """
        return [self.get(table, key) for table, key in keys]

    @abc.abstractmethod
    def list(self, table: str, prefix: str = "") -> tuple[int, list[Record]]:
        """The revision the read was taken at, and the table's records (whose key starts with
        ``prefix``) sorted by key; a prefix is how an index table is read one entry's worth at a time."""

    @abc.abstractmethod
    def snapshot(self, tables: Sequence[str]) -> tuple[int, list[Record]]:
        """Several tables read at one revision, so nothing is seen half-applied."""

    @abc.abstractmethod
    def watch(self, from_revision: int, timeout: float) -> list[Event]:
        """Events with revision >= ``from_revision`` in order, or [] after ``timeout`` seconds.

        Events of one revision are returned together. Raises Compacted when
        ``from_revision`` is at or below the driver's compacted revision.
        """

    @abc.abstractmethod
    def compact(self, revision: int) -> None:
        """Forget the events at and below ``revision`` (the records stay)."""

    @abc.abstractmethod
    def current_revision(self) -> int: ...

    @abc.abstractmethod
    def keep_alive(self, table: str, key: str, ttl: float) -> None:
        """Create or refresh a liveness mark that lapses ``ttl`` seconds after the last call.

        On etcd it is a key under a lease, so a dead writer's mark goes
        away by itself; nothing else may write ``table``.
        """

    @abc.abstractmethod
    def alive(self, table: str) -> set[str]:
        """The keys of ``table`` whose liveness mark has not lapsed."""

    @abc.abstractmethod
    def close(self) -> None: ...

    def put(self, table: str, key: str, value: bytes, expected_mod_revision: int | None = None) -> int:
        """Write one record; ``expected_mod_revision``: None = any, 0 = must not exist, n = must be at n."""
        compares = [] if expected_mod_revision is None else [Compare(table, key, expected_mod_revision)]
        return self.txn(compares, [Put(table, key, value)])

    def delete(self, table: str, key: str, expected_mod_revision: int | None = None) -> int:
        """Remove one record; a missing one is NotFound, or a Conflict when a revision was expected."""
        if expected_mod_revision is None:
            current = self.get(table, key)
            if current is None:
                raise NotFound(f"{table} {key} does not exist")
            expected_mod_revision = current.mod_revision
        return self.txn([Compare(table, key, expected_mod_revision)], [Delete(table, key)])

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
