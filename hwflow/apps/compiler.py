"""Load the apps a datapath layout names and compile topologies with them.

The compiler keeps every app's flows by owner. ``compile`` recomputes all of
them; ``update`` applies topology changes and recomputes only the owners
the apps say the changes touch, returning the flows the pipeline gained and
lost, and patches the pipeline with them (``Pipeline.patched``: the tables
touched, not the whole). Both leave ``pipeline()`` with the flows a full
compile of the current topology gives (the property tests in
tests/unit/test_compiler.py hold it to that). A flow two owners emit alike
is in the pipeline while either does: the compiler counts the owners of
each flow key.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterable, Sequence
from pathlib import Path

import stevedore

from hwflow.apps.base import App
from hwflow.conf.files import shipped
from hwflow.pipeline import ir, layout
from hwflow.pipeline.topology import Change, Topology
from hwflow.util.gc import gc_paused

LOG = logging.getLogger(__name__)
NAMESPACE = "hwflow.apps"


def layout_path(configured: str) -> Path:
    return Path(configured) if configured else shipped("datapath_layout.yaml")


def load_apps(names: Sequence[str]) -> list[App]:
    """Instantiate the named apps (stevedore ``hwflow.apps``); an unknown name is a LayoutError."""
    installed = sorted(stevedore.ExtensionManager(NAMESPACE).names())
    unknown = sorted(set(names) - set(installed))
    if unknown:
        raise layout.LayoutError(f"the layout names app(s) {', '.join(unknown)} that are not installed "
                                 f"(installed in {NAMESPACE}: {', '.join(installed)})")
    manager = stevedore.NamedExtensionManager(NAMESPACE, list(names), name_order=True, invoke_on_load=True)
    return [ext.obj for ext in manager]


@dataclasses.dataclass
class Delta:
    """What the pipeline gained and lost in one update (a flow another owner still emits is not lost)."""

    added: list[ir.Flow] = dataclasses.field(default_factory=list)
    removed: list[ir.Flow] = dataclasses.field(default_factory=list)
    owners: int = 0  # owners recomputed
    shared_keys: list[tuple] = dataclasses.field(default_factory=list)  # keys another owner holds too: rebuilt


class Compiler:
    """Apps plus the layout that numbers their tables: topology in, pipeline out."""

    def __init__(self, apps: Sequence[App], wiring: layout.Wiring) -> None:
        self.apps = {app.spec.name: app for app in apps}
        self.layout = layout.build([app.spec for app in apps], wiring)
        self._flows: dict[tuple[str, ir.Owner], tuple[ir.Flow, ...]] = {}
        self._holders: dict[tuple, int] = {}  # flow key -> how many owners emit a flow with it
        self._pipeline: ir.Pipeline | None = None

    @classmethod
    def from_file(cls, path: Path) -> Compiler:
        wiring = layout.Wiring.load(path)
        names = {wiring.start[0]} | {a for a, _ in wiring.wires} | {b for b, _ in wiring.wires.values()}
        return cls(load_apps(sorted(names)), wiring)

    def compile(self, topo: Topology) -> ir.Pipeline:
        """Everything from scratch (hundreds of thousands of small, long-lived objects: see gc_paused)."""
        with gc_paused(keep=True):
            self._flows = {}
            for name, app_layout in self.layout.apps.items():
                app = self.apps[name]
                for owner in app.owners(topo):
                    self._store(name, owner, app.owner_flows(owner, topo, app_layout))
            holders: dict[tuple, int] = {}
            for flows in self._flows.values():
                for flow in flows:
                    key = flow.key
                    holders[key] = holders.get(key, 0) + 1
            self._holders = holders
            self._pipeline = None
            return self.pipeline()

    def update(self, topo: Topology, changes: Iterable[Change]) -> Delta:
        """Recompute only what ``changes`` (already applied to ``topo``) touch."""
        changes = list(changes)
        delta = Delta()
        holders = self._holders
        ambiguous = False  # a key lost by one owner and kept by another: which flow stays is for a rebuild
        for name, app_layout in self.layout.apps.items():
            app = self.apps[name]
            dirty = {owner for change in changes for owner in app.affected(change, topo)}
            for owner in sorted(dirty):
                before = self._flows.get((name, owner), ())
                after = self._store(name, owner, app.owner_flows(owner, topo, app_layout))
                if before == after:
                    continue
                old, new = set(before), set(after)
                for flow in before:
                    if flow not in new:
                        count = holders[flow.key] - 1
                        if count:
                            holders[flow.key] = count
                            delta.shared_keys.append(flow.key)
                            ambiguous = True
                        else:
                            del holders[flow.key]
                            delta.removed.append(flow)
                for flow in after:
                    if flow not in old:
                        count = holders.get(flow.key, 0) + 1
                        holders[flow.key] = count
                        if count == 1:
                            delta.added.append(flow)
                        else:
                            delta.shared_keys.append(flow.key)
                            ambiguous = True
            delta.owners += len(dirty)
        if ambiguous:
            LOG.debug("%d flow key(s) held by more than one owner changed hands (%s...): rebuilding the pipeline",
                      len(delta.shared_keys), delta.shared_keys[0])
            self._pipeline = None
        elif (delta.added or delta.removed) and self._pipeline is not None:
            self._pipeline = self._pipeline.patched(delta.added, delta.removed, on_clash=_log_clash)
        return delta

    def _store(self, app: str, owner: ir.Owner, flows: Iterable[ir.Flow]) -> tuple[ir.Flow, ...]:
        out = tuple(flows)
        if out:
            self._flows[app, owner] = out
        else:
            self._flows.pop((app, owner), None)
        return out

    def pipeline(self) -> ir.Pipeline:
        """The current pipeline; a flow clashing with another's key is dropped and logged."""
        if self._pipeline is None:
            flows = [flow for key in sorted(self._flows) for flow in self._flows[key]]
            with gc_paused():  # its flows exist already (frozen by compile, or few since): no collection, no freeze
                self._pipeline = ir.Pipeline.build(flows, self.layout.table_names, on_clash=_log_clash)
        return self._pipeline


def _log_clash(kept: ir.Flow, dropped: ir.Flow) -> None:
    LOG.error("flows of %s and %s want the same table %d priority %d match; keeping the first (check the "
              "database for a duplicate address)", kept.owner, dropped.owner, kept.table, kept.priority)
