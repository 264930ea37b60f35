"""The agent's copy of the northbound database, kept current by a watch.

Full sync first (a snapshot at revision R), then a watch from R + 1, so no
change falls between the two. When the database has compacted past the
revision the cache stands at, the cache takes a new snapshot instead of
missing changes. While the database is unreachable the cache keeps what it
has (the datapaths keep serving it) and retries with backoff.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from hwflow.db.api import NbApi
from hwflow.model.errors import Compacted, HwflowError
from hwflow.model.objects import NbObject

LOG = logging.getLogger(__name__)

MAX_BACKOFF = 30.0


class NbCache:
    def __init__(self, nb: NbApi, on_change: Callable[[], None], watch_timeout: float = 1.0) -> None:
        self._nb = nb
        self._on_change = on_change
        self._watch_timeout = watch_timeout
        self._lock = threading.Lock()
        self._objects: dict[str, dict[str, NbObject]] = {}
        self.revision = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def resync(self) -> None:
        """Replace the whole cache with a consistent snapshot."""
        revision, objs = self._nb.snapshot()
        fresh: dict[str, dict[str, NbObject]] = {}
        for obj in objs:
            fresh.setdefault(obj.kind, {})[obj.id] = obj
        with self._lock:
            self._objects = fresh
            self.revision = revision
        LOG.info("full sync at revision %d: %s", revision,
                 ", ".join(f"{len(v)} {k}" for k, v in sorted(fresh.items())) or "empty database")

    def objects(self, kind: str) -> dict[str, NbObject]:
        with self._lock:
            return dict(self._objects.get(kind, {}))

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
                if self._step():
                    self._on_change()
                if backoff:
                    LOG.warning("northbound database reachable again; caught up to revision %d", self.revision)
                backoff = 0.0
            except Compacted:
                LOG.warning("the database compacted past revision %d: doing a full resync", self.revision + 1)
                self._retry(self.resync)
                self._on_change()
            except HwflowError as exc:
                backoff = min(MAX_BACKOFF, backoff * 2 or 0.5)
                LOG.error("northbound database unreachable (%s); keeping the installed datapath, "
                          "retrying in %.1fs", exc, backoff)
                self._stop.wait(backoff)

    def _step(self) -> bool:
        changes = self._nb.watch(self.revision + 1, self._watch_timeout)
        if not changes:
            return False
        with self._lock:
            for change in changes:
                table = self._objects.setdefault(change.kind, {})
                if change.op == "delete":
                    table.pop(change.obj.id, None)
                else:
                    table[change.obj.id] = change.obj
                self.revision = max(self.revision, change.revision)
        LOG.debug("applied %d change(s), now at revision %d", len(changes), self.revision)
        return True

    def _retry(self, func: Callable[[], None]) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                func()
                return
            except HwflowError as exc:
                LOG.error("resync failed (%s); retrying in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(MAX_BACKOFF, backoff * 2)
