"""The rooms stay one-way: offload never reaches into a backend, and hwflow's core never into the drivers.

Data flows model -> db -> agent -> pipeline/apps -> offload -> backends, and
vendor NIC drivers (``drivers/``, imported as ``hwflow_drivers``) are plugins:
they import hwflow's core (the contract in ``hwflow.offload.nic``), and the
core reaches them only through stevedore entry points (``hwflow.nic_drivers``).
Every import counts, wherever it is (a function body, ``if TYPE_CHECKING:``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

HWFLOW = Path(__file__).resolve().parents[2] / "hwflow"


def modules_named(node: ast.Import | ast.ImportFrom, package: tuple[str, ...]) -> set[str]:
    """Every module an import statement may load, relative imports resolved against ``package``."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names}
    base = package[:len(package) - node.level + 1] if node.level else ()
    module = ".".join([*base, *([node.module] if node.module else [])])
    return {module} | {f"{module}.{alias.name}" for alias in node.names}  # from hwflow import backends


def imports(path: Path, root: Path) -> Iterator[tuple[ast.Import | ast.ImportFrom, set[str]]]:
    package = path.relative_to(root.parent).with_suffix("").parts[:-1]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, modules_named(node, package)


def violations(room: Path, forbidden: str, root: Path = HWFLOW) -> list[str]:
    """``path:line: import`` for every import under ``room`` of ``forbidden`` or a module inside it."""
    return sorted(f"{path.relative_to(root.parent)}:{node.lineno}: {ast.unparse(node)}"
                  for path in room.rglob("*.py") for node, names in imports(path, root)
                  if any(n == forbidden or n.startswith(forbidden + ".") for n in names))


@pytest.mark.parametrize(("room", "forbidden"), [
    ("offload", "hwflow.backends"),  # offload decides what goes to hardware; a backend carries it out
    (".", "hwflow_drivers"),  # the core names no driver: stevedore (hwflow.nic_drivers) loads them
])
def test_no_module_of_the_room_imports_what_it_must_not(room, forbidden):
    assert violations(HWFLOW / room, forbidden) == []


def test_every_kind_of_import_is_seen(tmp_path):
    """The checker itself: plain, from, relative, parent-relative and nested imports all count."""
    root = tmp_path / "hwflow"
    (root / "offload").mkdir(parents=True)
    sources = {
        "__init__.py": "from .backends import tc\n",
        "offload/__init__.py": "from . import capabilities\n",
        "offload/a.py": "import hwflow.backends.tc.flower as fl\n",
        "offload/b.py": "from .. import backends\n",
        "offload/c.py": "def f():\n    from hwflow_drivers.base import Family\n",
        "offload/d.py": "from hwflow.offload import nic\nfrom .partition import backends\nimport hwflow_driversx\n",
    }
    for name, text in sources.items():
        (root / name).write_text(text)
    assert violations(root / "offload", "hwflow.backends", root) == [
        "hwflow/offload/a.py:1: import hwflow.backends.tc.flower as fl",
        "hwflow/offload/b.py:1: from .. import backends",
    ]
    assert violations(root, "hwflow.backends", root) == [
        "hwflow/__init__.py:1: from .backends import tc",
        "hwflow/offload/a.py:1: import hwflow.backends.tc.flower as fl",
        "hwflow/offload/b.py:1: from .. import backends",
    ]
    assert violations(root, "hwflow_drivers", root) == ["hwflow/offload/c.py:2: from hwflow_drivers.base import Family"]
