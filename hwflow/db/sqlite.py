"""The embedded northbound database: one SQLite file shared by every process on a host.

The CLI and the agent are separate processes, so the file runs in WAL mode
(readers never block the writer), every write takes the write lock up front
(``BEGIN IMMEDIATE``) so the revision counter, the records and the event
log move together, and ``busy_timeout`` makes a second writer wait instead
of failing. Because revisions are assigned under that lock and committed
with their events, a watcher can never see revision n+1 before n. Each
thread gets its own connection, since the agent reads from several threads.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence

from oslo_config import cfg

from hwflow.db.base import Compare, Delete, Driver, Event, Op, Put, Record
from hwflow.model.errors import Compacted, Conflict, DatabaseUnavailable

URL_PREFIX = "sqlite:///"
SCHEMA_VERSION = 1
# Revisions returned by one watch call, so a watcher far behind catches up in bounded steps.
WATCH_BATCH_REVISIONS = 10_000

_SCHEMA = (
    ("CREATE TABLE IF NOT EXISTS objects (tbl TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL,"
    " create_rev INTEGER NOT NULL, mod_rev INTEGER NOT NULL, PRIMARY KEY (tbl, key)) WITHOUT ROWID"),
    ("CREATE TABLE IF NOT EXISTS events (rev INTEGER NOT NULL, idx INTEGER NOT NULL, tbl TEXT NOT NULL,"
    " key TEXT NOT NULL, op TEXT NOT NULL, value BLOB, PRIMARY KEY (rev, idx)) WITHOUT ROWID"),
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    ("CREATE TABLE IF NOT EXISTS liveness (tbl TEXT NOT NULL, key TEXT NOT NULL, expires REAL NOT NULL,"
    " PRIMARY KEY (tbl, key)) WITHOUT ROWID"),
    ("INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compact_revision', 0),"
    f" ('schema', {SCHEMA_VERSION})"),
)


def _prefix_end(prefix: str) -> str | None:
    """The least key above every key starting with ``prefix`` (None if there is none to write).

    Keys compare as UTF-8 bytes, in code point order: a prefix read is then a range of the primary
    key's index instead of a test of every key of the table.
    """
    last = ord(prefix[-1])
    if last == 0x10FFFF:
        return None
    return prefix[:-1] + chr(0xE000 if last == 0xD7FF else last + 1)  # surrogates are never in a key


class SqliteDriver(Driver):
    """``sqlite:///PATH`` (relative) or ``sqlite:////abs/PATH``, as in SQLAlchemy."""

    def __init__(
        self,
        path: str,
        poll_interval: float = 0.01,
        keep_revisions: int = 100_000,
        busy_timeout: float = 30.0,
    ) -> None:
        if keep_revisions < 1:
            raise ValueError("keep_revisions must be at least 1")
        self.path = path
        self.poll_interval = poll_interval
        self.keep_revisions = keep_revisions
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._lock = threading.Lock()
        self._connections: list[sqlite3.Connection] = []
        self._closed = False
        self._make_parent()
        with self._errors():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                for statement in _SCHEMA:
                    conn.execute(statement)
                schema = self._meta(conn, "schema")
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        if schema > SCHEMA_VERSION:
            raise DatabaseUnavailable(
                f"the database {path} has schema {schema}, written by a newer hwflow "
                f"(this one knows {SCHEMA_VERSION}); upgrade hwflow"
            )

    @classmethod
    def from_url(cls, url: str, conf: cfg.ConfigOpts | None = None) -> SqliteDriver:
        path = url[len(URL_PREFIX):] if url.startswith(URL_PREFIX) else ""
        if not path or path == ":memory:":
            raise DatabaseUnavailable(
                f"bad sqlite database URL {url!r}: use sqlite:///PATH for a file "
                "(sqlite:////var/lib/hwflow/nb.sqlite for an absolute path)"
            )
        poll = conf.database.poll_interval if conf is not None else 0.01
        return cls(path, poll_interval=poll)

    def _make_parent(self) -> None:
        parent = os.path.dirname(os.path.abspath(self.path))
        try:
            os.makedirs(parent, exist_ok=True)
        except OSError as exc:
            raise DatabaseUnavailable(
                f"cannot create the directory {parent} for the database {self.path}: {exc.strerror}; "
                "create it, or choose another location with --database sqlite:///PATH"
            ) from None

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        """Turn SQLite failures into DatabaseUnavailable naming the file and the remedy."""
        try:
            yield
        except sqlite3.Error as exc:
            raise DatabaseUnavailable(
                f"cannot use the database {self.path}: {exc}; check that the file is an hwflow "
                "database, readable and writable by this user, and not locked by a stuck process"
            ) from None

    def _conn(self) -> sqlite3.Connection:
        if self._closed:
            raise DatabaseUnavailable(f"the database {self.path} was closed")
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None, check_same_thread=False
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            with self._lock:
                self._connections.append(conn)
            self._local.conn = conn
        return conn

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """One read transaction: every SELECT inside sees the same committed revision."""
        with self._errors():
            conn = self._conn()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    @staticmethod
    def _meta(conn: sqlite3.Connection, name: str) -> int:
        return int(conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()[0])

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> int:
        keys = [(op.table, op.key) for op in ops]
        if not ops or len(set(keys)) != len(keys):
            raise ValueError("a transaction needs at least one operation and each key at most once")
        with self._errors():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                revision = self._apply(conn, compares, ops)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        return revision

    def _apply(self, conn: sqlite3.Connection, compares: Sequence[Compare], ops: Sequence[Op]) -> int:
        for c in compares:
            row = conn.execute(
                "SELECT mod_rev FROM objects WHERE tbl = ? AND key = ?", (c.table, c.key)
            ).fetchone()
            actual = row[0] if row else 0
            if actual != c.mod_revision:
                raise Conflict(c.table, c.key, c.mod_revision, actual)
        current = self._meta(conn, "revision")
        revision = current + 1
        events = 0
        for op in ops:
            old = conn.execute(
                "SELECT value, create_rev FROM objects WHERE tbl = ? AND key = ?", (op.table, op.key)
            ).fetchone()
            if isinstance(op, Put):
                conn.execute(
                    "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)",
                    (op.table, op.key, op.value, old[1] if old else revision, revision),
                )
                value: bytes | None = op.value
            elif isinstance(op, Delete) and old is not None:
                conn.execute("DELETE FROM objects WHERE tbl = ? AND key = ?", (op.table, op.key))
                value = old[0]
            else:
                continue
            conn.execute(
                "INSERT INTO events VALUES (?, ?, ?, ?, ?, ?)",
                (revision, events, op.table, op.key, "put" if isinstance(op, Put) else "delete", value),
            )
            events += 1
        if not events:
            return current
        conn.execute("UPDATE meta SET value = ? WHERE name = 'revision'", (revision,))
        self._auto_compact(conn, revision)
        return revision

    def _auto_compact(self, conn: sqlite3.Connection, revision: int) -> None:
        """Bound the event log; done in batches so most writes delete nothing."""
        compacted = self._meta(conn, "compact_revision")
        if revision - compacted > self.keep_revisions + max(1, self.keep_revisions // 10):
            self._compact(conn, revision - self.keep_revisions)

    @staticmethod
    def _compact(conn: sqlite3.Connection, revision: int) -> None:
        conn.execute("DELETE FROM events WHERE rev <= ?", (revision,))
        conn.execute("UPDATE meta SET value = ? WHERE name = 'compact_revision'", (revision,))

    def compact(self, revision: int) -> None:
        with self._errors():
            conn = self._conn()
            conn.execute("BEGIN IMMEDIATE")
            try:
                current = self._meta(conn, "revision")
                if revision > current:
                    raise ValueError(f"cannot compact revision {revision}: the database is at {current}")
                if revision > self._meta(conn, "compact_revision"):
                    self._compact(conn, revision)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def get(self, table: str, key: str) -> Record | None:
        with self._errors():
            row = self._conn().execute(
                "SELECT tbl, key, value, create_rev, mod_rev FROM objects WHERE tbl = ? AND key = ?",
                (table, key),
            ).fetchone()
        return Record(*row) if row else None

    def get_many(self, keys: Sequence[tuple[str, str]]) -> list[Record | None]:
        """One read transaction, so all of them at one revision."""
        with self._read() as conn:
            rows = [conn.execute("SELECT tbl, key, value, create_rev, mod_rev FROM objects WHERE tbl = ? AND key = ?",
                                 key).fetchone() for key in keys]
        return [Record(*row) if row else None for row in rows]

    def list(self, table: str, prefix: str = "") -> tuple[int, list[Record]]:
        if not prefix:
            return self.snapshot([table])
        with self._read() as conn:
            revision = self._meta(conn, "revision")
            end = _prefix_end(prefix)
            rows = conn.execute(
                "SELECT tbl, key, value, create_rev, mod_rev FROM objects"
                " WHERE tbl = ? AND key >= ? AND key < ? ORDER BY key",
                (table, prefix, end),
            ).fetchall() if end else conn.execute(
                "SELECT tbl, key, value, create_rev, mod_rev FROM objects"
                " WHERE tbl = ? AND substr(key, 1, ?) = ? ORDER BY key",
                (table, len(prefix), prefix),
            ).fetchall()
        return revision, [Record(*row) for row in rows]

    def snapshot(self, tables: Sequence[str]) -> tuple[int, list[Record]]:
        marks = ",".join("?" * len(tables))
        with self._read() as conn:
            revision = self._meta(conn, "revision")
            rows = conn.execute(
                "SELECT tbl, key, value, create_rev, mod_rev FROM objects"
                f" WHERE tbl IN ({marks}) ORDER BY tbl, key",
                tuple(tables),
            ).fetchall()
        return revision, [Record(*row) for row in rows]

    def watch(self, from_revision: int, timeout: float) -> list[Event]:
        if from_revision < 1:
            raise ValueError(f"watch needs a revision of at least 1, not {from_revision}")
        deadline = time.monotonic() + timeout
        while True:
            with self._read() as conn:
                compacted = self._meta(conn, "compact_revision")
                if from_revision <= compacted:
                    raise Compacted(compacted)
                rows = conn.execute(
                    "SELECT rev, tbl, key, op, value FROM events WHERE rev >= ? AND rev < ?"
                    " ORDER BY rev, idx",
                    (from_revision, from_revision + WATCH_BATCH_REVISIONS),
                ).fetchall()
            if rows:
                return [Event(*row) for row in rows]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return []
            time.sleep(min(self.poll_interval, remaining))

    def current_revision(self) -> int:
        with self._errors():
            return self._meta(self._conn(), "revision")

    def keep_alive(self, table: str, key: str, ttl: float) -> None:
        """A mark with its expiry time (wall clock: every process of the host shares it)."""
        with self._errors():
            self._conn().execute("INSERT OR REPLACE INTO liveness VALUES (?, ?, ?)", (table, key, time.time() + ttl))

    def alive(self, table: str) -> set[str]:
        with self._errors():
            rows = self._conn().execute("SELECT key FROM liveness WHERE tbl = ? AND expires > ?",
                                        (table, time.time())).fetchall()
        return {row[0] for row in rows}

    def close(self) -> None:
        self._closed = True
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
