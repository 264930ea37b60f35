"""The datapath layout: apps as nodes, wires from exit points to entry points.

Each app declares the tables it uses, its entry points (where other apps may
send packets), its exit points (where it sends packets on) and the
registers it needs, all by local name. ``etc/datapath_layout.yaml`` says
where packets start and wires every exit point to an entry point. From
that, table numbers and registers are allocated here, so apps never carry
numbers and adding an app between two others is a one-line change to the
layout, not to either app (what Dragonflow's app decoupling aimed at).

Tables are numbered in topological order of the wiring graph, each app's
tables consecutively in the order it declares them, so every wire jumps
forward (OpenFlow's goto only goes forward; a cycle is refused). An app may
only jump to its own later tables or through its exit points.

Layout file::

    start: classifier.in          # app.entry where every packet begins (table 0)
    wires:
      classifier.out: l2.in       # app.exit: app.entry
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from hwflow.pipeline import ir

REGISTERS = tuple(f"reg{i}" for i in range(8))


class LayoutError(ValueError):
    """The layout cannot be built; the message names the app, point or wire at fault."""


@dataclasses.dataclass(frozen=True)
class AppSpec:
    """What an app declares about itself; all names are local to the app."""

    name: str
    tables: tuple[str, ...]
    entries: Mapping[str, str]  # entry point -> one of ``tables``
    exits: tuple[str, ...] = ()
    registers: tuple[str, ...] = ()
    meets: tuple[str, ...] = ()  # tables inside the app where paths from many places meet (see Layout.joins)

    def __post_init__(self) -> None:
        if not self.tables:
            raise LayoutError(f"app {self.name}: declares no table")
        for table in self.meets:
            if table not in self.tables:
                raise LayoutError(f"app {self.name}: meeting point names unknown table {table!r}")
        for entry, table in self.entries.items():
            if table not in self.tables:
                raise LayoutError(f"app {self.name}: entry point {entry} names unknown table {table!r}")


@dataclasses.dataclass(frozen=True)
class Wiring:
    start: tuple[str, str]  # (app, entry)
    wires: Mapping[tuple[str, str], tuple[str, str]]  # (app, exit) -> (app, entry)

    @classmethod
    def load(cls, path: Path) -> Wiring:
        try:
            data = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise LayoutError(f"cannot read the datapath layout {path}: {exc}") from None
        return cls.parse(data, str(path))

    @classmethod
    def parse(cls, data: object, source: str = "layout") -> Wiring:
        if not isinstance(data, dict) or "start" not in data or not isinstance(data.get("wires", {}), dict):
            raise LayoutError(f"{source}: expected a mapping with 'start: app.entry' and 'wires: {{app.exit: "
                              "app.entry}}'")
        wires = {_point(k, source): _point(v, source) for k, v in (data.get("wires") or {}).items()}
        return cls(_point(data["start"], source), wires)


def _point(text: object, source: str) -> tuple[str, str]:
    app, dot, point = str(text).partition(".")
    if not dot or not app or not point:
        raise LayoutError(f"{source}: {text!r} is not of the form app.point")
    return app, point


@dataclasses.dataclass(frozen=True)
class AppLayout:
    """What one app sees: its table numbers, where its exits lead, its registers."""

    spec: AppSpec
    table_ids: Mapping[str, int]
    exit_tables: Mapping[str, int]
    register_fields: Mapping[str, str]

    def table(self, name: str) -> int:
        try:
            return self.table_ids[name]
        except KeyError:
            raise LayoutError(f"app {self.spec.name}: no table {name!r} declared") from None

    def goto(self, exit_point: str) -> ir.GotoTable:
        try:
            return ir.GotoTable(self.exit_tables[exit_point])
        except KeyError:
            raise LayoutError(f"app {self.spec.name}: no exit point {exit_point!r} declared") from None

    def reg(self, name: str) -> str:
        try:
            return self.register_fields[name]
        except KeyError:
            raise LayoutError(f"app {self.spec.name}: no register {name!r} declared") from None


@dataclasses.dataclass(frozen=True)
class Layout:
    apps: Mapping[str, AppLayout]  # in table order
    table_names: Mapping[int, str]  # number -> "app.table"
    wiring: Wiring

    def joins(self) -> frozenset[int]:
        """Where paths from different places meet: entry points more than one wire leads to, and the tables an
        app declares as meeting points (``AppSpec.meets``: L3's next hop, which the routes of every network a
        router joins lead to).

        The partitioner lets a port's path hand over there to a chain every port of a network (or a router's
        every network) shares. Not at an app without exits (output: it delivers): a path ends there in the
        one rule of its destination, which a chain of its own would only put behind a goto.
        """
        fed: dict[tuple[str, str], int] = {}
        for target in self.wiring.wires.values():
            fed[target] = fed.get(target, 0) + 1
        entries = {self.apps[app].table_ids[self.apps[app].spec.entries[entry]]
                   for (app, entry), count in fed.items() if count > 1 and self.apps[app].spec.exits}
        inside = {app.table_ids[table] for app in self.apps.values() for table in app.spec.meets}
        return frozenset(entries | inside)

    def edges(self) -> list[tuple[str, str, str, str]]:
        """(from app, exit, to app, entry) for every wire, in table order."""
        order = list(self.apps)
        return sorted(((a, e, b, n) for (a, e), (b, n) in self.wiring.wires.items()),
                      key=lambda w: (order.index(w[0]), w[1]))


def build(specs: Sequence[AppSpec], wiring: Wiring) -> Layout:
    """Check the wiring against what the apps declare and allocate tables and registers."""
    by_name = {s.name: s for s in specs}
    _check_points(by_name, wiring)
    order = _topological(by_name, wiring)
    table_ids: dict[str, dict[str, int]] = {}
    names: dict[int, str] = {}
    next_table = 0
    for app in order:
        table_ids[app] = {}
        for table in by_name[app].tables:
            table_ids[app][table] = next_table
            names[next_table] = f"{app}.{table}"
            next_table += 1
    if next_table > 254:
        raise LayoutError(f"the layout needs {next_table} tables; OpenFlow has 254")
    start_app, start_entry = wiring.start
    if table_ids[start_app][by_name[start_app].entries[start_entry]] != 0:
        raise LayoutError(f"start {start_app}.{start_entry} is not first in table order; nothing may feed it")
    registers = _allocate_registers(by_name, order)
    apps = {}
    for app in order:
        spec = by_name[app]
        exits = {}
        for exit_point in spec.exits:
            to_app, entry = wiring.wires[app, exit_point]
            exits[exit_point] = table_ids[to_app][by_name[to_app].entries[entry]]
        apps[app] = AppLayout(spec, table_ids[app], exits, registers[app])
    return Layout(apps, names, wiring)


def _check_points(by_name: Mapping[str, AppSpec], wiring: Wiring) -> None:
    def entry_ok(app: str, entry: str, where: str) -> None:
        if app not in by_name:
            raise LayoutError(f"{where} names app {app!r}, which is not installed "
                              f"(installed: {', '.join(sorted(by_name))})")
        if entry not in by_name[app].entries:
            raise LayoutError(f"{where}: app {app} has no entry point {entry!r} "
                              f"(it has: {', '.join(sorted(by_name[app].entries)) or 'none'})")

    entry_ok(*wiring.start, "start")
    for (app, exit_point), (to_app, entry) in wiring.wires.items():
        where = f"wire {app}.{exit_point} -> {to_app}.{entry}"
        if app not in by_name:
            raise LayoutError(f"{where}: app {app!r} is not installed")
        if exit_point not in by_name[app].exits:
            raise LayoutError(f"{where}: app {app} has no exit point {exit_point!r}")
        entry_ok(to_app, entry, where)
    for spec in by_name.values():
        for exit_point in spec.exits:
            if (spec.name, exit_point) not in wiring.wires:
                raise LayoutError(f"exit point {spec.name}.{exit_point} is dangling: wire it to an entry point "
                                  "in the layout file")


def _topological(by_name: Mapping[str, AppSpec], wiring: Wiring) -> list[str]:
    """Apps reachable from the start, feeders before the apps they feed; a cycle is an error."""
    succ: dict[str, list[str]] = {name: [] for name in by_name}
    for (app, _), (to_app, _) in sorted(wiring.wires.items()):
        succ[app].append(to_app)
    order: list[str] = []
    state: dict[str, str] = {}

    def visit(app: str, path: list[str]) -> None:
        if state.get(app) == "done":
            return
        if state.get(app) == "active":
            loop = path[path.index(app):] + [app]
            raise LayoutError(f"the layout makes a loop: {' -> '.join(loop)}")
        state[app] = "active"
        for nxt in succ[app]:
            visit(nxt, path + [app])
        state[app] = "done"
        order.append(app)

    visit(wiring.start[0], [])
    unreachable = sorted(set(by_name) - set(order))
    if unreachable:
        raise LayoutError(f"app(s) {', '.join(unreachable)} are installed for the layout but no wire reaches them")
    return order[::-1]


def _allocate_registers(by_name: Mapping[str, AppSpec], order: Sequence[str]) -> dict[str, dict[str, str]]:
    """Private registers per app; every app gets its own, so none can clobber another's."""
    free = list(REGISTERS)
    out: dict[str, dict[str, str]] = {}
    for app in order:
        out[app] = {}
        for name in by_name[app].registers:
            if not free:
                raise LayoutError(f"app {app}: no register left for {name!r} ({len(REGISTERS)} in all)")
            out[app][name] = free.pop(0)
    return out


def describe(layout: Layout) -> list[str]:
    """The graph as text: one line per app with its tables, then one per wire."""
    lines = []
    for app, al in layout.apps.items():
        tables = ", ".join(f"{t}={n}" for t, n in al.table_ids.items())
        regs = ", ".join(f"{r}={f}" for r, f in al.register_fields.items())
        lines.append(f"{app}: tables {tables}" + (f"; registers {regs}" if regs else ""))
    start_app, start_entry = layout.wiring.start
    lines.append(f"start -> {start_app}.{start_entry}")
    lines += [f"{a}.{e} -> {b}.{n}" for a, e, b, n in layout.edges()]
    return lines


def to_dot(layout: Layout) -> str:
    """Graphviz source: apps as boxes listing their tables, wires as labelled edges."""
    out = ["digraph datapath {", "  rankdir=LR;", "  node [shape=record];"]
    for app, al in layout.apps.items():
        tables = "|".join(f"{t} ({n})" for t, n in al.table_ids.items())
        out.append(f'  "{app}" [label="{{{app}|{tables}}}"];')
    out.append('  start [shape=point];')
    out.append(f'  start -> "{layout.wiring.start[0]}" [label="{layout.wiring.start[1]}"];')
    out += [f'  "{a}" -> "{b}" [label="{e} -> {n}"];' for a, e, b, n in layout.edges()]
    out.append("}")
    return "\n".join(out) + "\n"
