"""The agent's selective copy of the northbound database, kept current by a watch.

It holds only what this chassis's local ports need (hwflow.agent.selection):
the agent says which port ids are plugged into its bridge
(``set_local_ports``) and the cache grows or shrinks its set to match, with
targeted reads (by id, and through the reference index), never by listing
whole tables on a change.

Full sync first (a snapshot at revision R, from which the set is taken),
then a watch from R + 1, so no change falls between the two. A watched
change is taken in when it touches something held or points at an object
whose referrers are held; anything else is dropped on arrival. When the
database has compacted past the revision the cache stands at, it takes a
new snapshot instead of missing changes. While the database is unreachable
the cache keeps what it has (the datapaths keep serving it), says so in
the log and retries with backoff; it then resumes from where it stood, so
every change made meanwhile arrives. A bad record is skipped by the NB API
(logged), never raised here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable

from hwflow.agent import selection
from hwflow.db.api import Change, NbApi
from hwflow.model.errors import Compacted, HwflowError, NotFound, ValidationError
from hwflow.model.objects import NbObject, Port, SecurityGroupRule, Subnet

LOG = logging.getLogger(__name__)

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 30.0


class _DatabaseSource:
    """Targeted reads for selection.walk: one object by id, or one referrer list through the index."""

    def __init__(self, nb: NbApi) -> None:
        self.nb = nb

    def get(self, kind: str, ident: str) -> NbObject | None:
        try:
            return self.nb.get(kind, ident)
        except NotFound:
            return None
        except ValidationError as exc:
            LOG.warning("skipping a bad record: %s", exc)
            return None

    def referrers(self, kind: str, ident: str, of_kind: str) -> list[NbObject]:
        return self.nb.referrers(kind, ident, of_kind)


def _shape(obj: NbObject) -> tuple[object, ...]:
    """What decides which other objects an object pulls in: its references and where it is bound."""
    return (tuple(obj.refs()), getattr(obj, "chassis", None))


class NbCache:
    """Selective, watched view of the NB database for the agent of ``chassis``.

    ``on_change`` is called (from the watch thread) whenever what is held changed. ``observe_lag``, when set, is
    called (from the watch thread) with the seconds between a write and the watch delivering it, for every put
    the watch delivers that carries its write time (taken in or not: the lag is the watch's); never below 0
    (the writer's clock may be another host's).
    """

    def __init__(self, nb: NbApi, on_change: Callable[[], None], chassis: str, watch_timeout: float = 1.0,
                 max_backoff: float = MAX_BACKOFF) -> None:
        self._nb = nb
        self._source = _DatabaseSource(nb)
        self._on_change = on_change
        self._chassis = chassis
        self._watch_timeout = watch_timeout
        self._max_backoff = max_backoff
        self._lock = threading.RLock()
        self._held: dict[selection.Key, NbObject] = {}
        self._expanded: set[selection.Expansion] = set()
        self._local_ids: frozenset[str] = frozenset()
        self._stale = False  # the set must be walked again (a walk failed on an unreachable database)
        self._touched: set[selection.Key] | None = None  # keys changed since the last drain (None: anything)
        self.revision = 0
        self.last_reply: float | None = None  # time.monotonic() of the database's last snapshot or watch answer
        self.observe_lag: Callable[[float], None] | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- what the agent reads ------------------------------------------------------

    def objects(self, kind: str) -> dict[str, NbObject]:
        with self._lock:
            return {ident: obj for (k, ident), obj in self._held.items() if k == kind}

    def drain(self) -> dict[selection.Key, NbObject | None] | None:
        """What changed since the last drain: (kind, id) -> the object now held (None: no longer held).

        None when the cache cannot say (a full resync replaced what it holds, or nothing was drained yet):
        the reader compares everything (:meth:`objects`) instead.
        """
        with self._lock:
            touched, self._touched = self._touched, set()
            if touched is None:
                return None
            return {key: self._held.get(key) for key in touched}

    def held(self) -> list[NbObject]:
        """Every object held (the agent's full pass takes its topology from them: hwflow.agent.view)."""
        with self._lock:
            return list(self._held.values())

    def set_local_ports(self, port_ids: Iterable[str]) -> bool:
        """Tell the cache which port ids are plugged in here; True when what it holds changed.

        The new set is fetched now; if the database cannot be reached the
        cache keeps what it holds, logs why, and the watch thread fetches it
        once the database is back (then ``on_change`` fires).
        """
        ids = frozenset(port_ids)
        with self._lock:
            if ids == self._local_ids and not self._stale:
                return False
            self._local_ids = ids
            try:
                return self._walk()
            except HwflowError as exc:
                self._stale = True
                LOG.error("northbound database unavailable while fetching the topology of local ports (%s); "
                          "keeping the installed datapath, retrying in the background", exc)
                return False

    # --- sync ---------------------------------------------------------------------------

    def resync(self) -> None:
        """Replace what is held with the selection from one consistent snapshot."""
        revision, objs = self._nb.snapshot()
        self.last_reply = time.monotonic()
        with self._lock:
            chosen = selection.walk(self._local_ids, self._chassis, selection.SnapshotSource(objs))
            self._held, self._expanded = chosen.objects, chosen.expanded
            self._touched = None
            self.revision = revision
            self._stale = False
        LOG.info("full sync at revision %d: holding %d of %d objects for %d local port id(s)", revision,
                 len(chosen.objects), len(objs), len(self._local_ids))

    def _walk(self) -> bool:
        """Recompute the selection from what is held plus targeted reads; True if it changed."""
        source = selection.HeldSource(self._held, self._expanded, self._source)
        chosen = selection.walk(self._local_ids, self._chassis, source)
        differ = set(chosen.objects.keys() ^ self._held.keys())
        differ |= {k for k, obj in chosen.objects.items() if k not in differ and obj is not self._held[k]}
        if self._touched is not None:
            self._touched |= differ
        self._held, self._expanded = chosen.objects, chosen.expanded
        self._stale = False
        return bool(differ)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._follow, name="nb-watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self._watch_timeout + 5)

    def _follow(self) -> None:
        backoff = 0.0
        while not self._stop.is_set():
            try:
                changed = self._catch_up_walk() | self._step()
                if backoff:
                    LOG.warning("northbound database reachable again; caught up to revision %d", self.revision)
                backoff = 0.0
                if changed:
                    self._on_change()
            except Compacted:
                LOG.warning("the database compacted past revision %d: doing a full resync", self.revision + 1)
                self._retry(self.resync)
                self._on_change()
            except HwflowError as exc:
                backoff = min(self._max_backoff, backoff * 2 or FIRST_BACKOFF)
                LOG.error("northbound database unavailable (%s); keeping the installed datapath, "
                          "retrying in %.1fs", exc, backoff)
                self._stop.wait(backoff)

    def _catch_up_walk(self) -> bool:
        with self._lock:
            return self._walk() if self._stale else False

    def _step(self) -> bool:
        changes = self._nb.watch(self.revision + 1, self._watch_timeout)
        self.last_reply = time.monotonic()
        if not changes:
            return False
        if self.observe_lag is not None:
            now = time.time()
            for change in changes:
                if change.written is not None:
                    self.observe_lag(max(0.0, now - change.written))
        with self._lock:
            changed, rewalk = False, False
            for change in changes:
                took, reshaped = self._apply(change)
                changed |= took
                rewalk |= reshaped
            self.revision = max(self.revision, changes[-1].revision)
            if rewalk:
                try:
                    changed |= self._walk()
                except HwflowError:
                    self._stale = True  # what was applied stays; the walk is retried first thing
                    raise
        LOG.debug("applied %d change(s), now at revision %d", len(changes), self.revision)
        return changed

    def _apply(self, change: Change) -> tuple[bool, bool]:
        """Take one change in if it concerns what is held; (held set changed, selection must be walked)."""
        key = (change.kind, change.obj.id)
        current = self._held.get(key)
        if change.op == "delete":
            if current is None:
                return False, False
            del self._held[key]
            self._touch(key)
            return True, True
        if current is not None:
            if change.revision < current.revision:  # already read newer by a targeted fetch
                return False, False
            self._held[key] = change.obj
            self._touch(key)
            return True, _shape(current) != _shape(change.obj)
        if self._wanted(change.obj):
            self._held[key] = change.obj
            self._touch(key)
            return True, self._reaches_further(change.obj)
        return False, False

    def _touch(self, key: selection.Key) -> None:
        if self._touched is not None:
            self._touched.add(key)

    def _reaches_further(self, obj: NbObject) -> bool:
        """Whether a new object taken in can pull in more than itself (then the selection is walked again).

        A port of another chassis on a network or in a group whose ports are held pulls in only its chassis,
        which is usually held already; a subnet nothing; a security-group rule only its remote group. With
        ten thousand ports held, walking the selection again for each new one is what a write waited for.
        """
        if isinstance(obj, Port):
            return obj.id in self._local_ids or bool(obj.chassis) and ("chassis", obj.chassis) not in self._held
        if isinstance(obj, Subnet):
            return False
        if isinstance(obj, SecurityGroupRule):
            return bool(obj.remote_group_id) and ("security_group", obj.remote_group_id, "port") not in self._expanded
        return True

    def _wanted(self, obj: NbObject) -> bool:
        """A new object matters if it is a local port or points at an object whose referrers are held."""
        if obj.kind == "port" and obj.id in self._local_ids:
            return True
        if obj.kind == "chassis":  # registered after ports bound to it were taken in: tunnels need it
            return any(kind == "port" and getattr(held, "chassis", "") == obj.id
                       for (kind, _), held in self._held.items())
        return any((kind, ident, obj.kind) in self._expanded for _, kind, ident in obj.refs())

    def _retry(self, func: Callable[[], None]) -> None:
        backoff = FIRST_BACKOFF
        while not self._stop.is_set():
            try:
                func()
                return
            except HwflowError as exc:
                LOG.error("resync failed (%s); retrying in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(self._max_backoff, backoff * 2)
