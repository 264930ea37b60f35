"""Load the apps a datapath layout names and compile a topology with them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import stevedore

from hwflow.apps.base import App
from hwflow.conf.files import shipped
from hwflow.pipeline import ir, layout
from hwflow.pipeline.topology import Topology

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


class Compiler:
    """Apps plus the layout that numbers their tables: topology in, pipeline out."""

    def __init__(self, apps: Sequence[App], wiring: layout.Wiring) -> None:
        self.apps = {app.spec.name: app for app in apps}
        self.layout = layout.build([app.spec for app in apps], wiring)

    @classmethod
    def from_file(cls, path: Path) -> Compiler:
        wiring = layout.Wiring.load(path)
        names = {wiring.start[0]} | {a for a, _ in wiring.wires} | {b for b, _ in wiring.wires.values()}
        return cls(load_apps(sorted(names)), wiring)

    def compile(self, topo: Topology) -> ir.Pipeline:
        flows = (f for name, al in self.layout.apps.items() for f in self.apps[name].flows(topo, al))
        return ir.Pipeline.build(flows, self.layout.table_names)
