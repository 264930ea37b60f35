"""The datapath layout: wiring checked, tables and registers allocated."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.pipeline.layout import AppSpec, LayoutError, Wiring, build, describe, to_dot


def spec(name, tables=("t",), exits=(), registers=()):
    return AppSpec(name, tables, {"in": tables[0]}, exits, registers)


def wiring(start, **wires):
    return Wiring.parse({"start": start, "wires": {k.replace("__", "."): v for k, v in wires.items()}})


def test_tables_follow_the_wiring_and_every_goto_jumps_forward():
    specs = [spec("c", ("x", "y"), exits=("out",)), spec("a", exits=("out",)), spec("b", ("t", "u"))]
    lay = build(specs, wiring("a.in", a__out="c.in", c__out="b.in"))
    assert list(lay.apps) == ["a", "c", "b"]
    assert lay.table_names == {0: "a.t", 1: "c.x", 2: "c.y", 3: "b.t", 4: "b.u"}
    assert lay.apps["a"].goto("out").table == 1
    assert lay.apps["c"].goto("out").table == 3


def test_inserting_an_app_is_a_layout_change_only():
    before = build([spec("a", exits=("out",)), spec("b")], wiring("a.in", a__out="b.in"))
    after = build([spec("a", exits=("out",)), spec("m", exits=("out",)), spec("b")],
                  wiring("a.in", a__out="m.in", m__out="b.in"))
    assert before.apps["a"].goto("out").table == 1
    assert after.apps["a"].goto("out").table == after.apps["m"].table("t")
    assert after.apps["m"].goto("out").table == after.apps["b"].table("t")


def test_an_entry_two_wires_feed_is_a_join_unless_its_app_only_delivers():
    specs = [spec("a", exits=("out", "other")), spec("m", exits=("out", "far")), spec("b", exits=("out",)),
             spec("z")]
    lay = build(specs, wiring("a.in", a__out="m.in", a__other="b.in", m__out="b.in", m__far="z.in", b__out="z.in"))
    assert lay.joins() == {lay.apps["b"].table("t")}  # z, fed twice too, has no exit: a path ends there


@pytest.mark.parametrize(("specs", "wires", "message"), [
    ([spec("a", exits=("out",)), spec("b")], {}, "dangling"),
    ([spec("a", exits=("out",)), spec("b", exits=("out",))], {"a.out": "b.in", "b.out": "a.in"}, "loop: a -> b -> a"),
    ([spec("a", exits=("out",))], {"a.out": "zz.in"}, "not installed"),
    ([spec("a", exits=("out",)), spec("b")], {"a.out": "b.nope"}, "no entry point 'nope'"),
    ([spec("a"), spec("b")], {"a.out": "b.in"}, "no exit point 'out'"),
    ([spec("a"), spec("b")], {}, "no wire reaches them"),
])
def test_bad_layouts_are_refused_naming_the_fault(specs, wires, message):
    with pytest.raises(LayoutError, match=message):
        build(specs, Wiring.parse({"start": "a.in", "wires": wires}))


def test_malformed_layout_file_names_the_file(tmp_path):
    bad = tmp_path / "layout.yaml"
    bad.write_text("wires: [1, 2]\n")
    with pytest.raises(LayoutError, match=str(bad)):
        Wiring.load(bad)


@given(st.lists(st.integers(0, 3), min_size=1, max_size=8))
def test_registers_are_private_to_each_app(counts):
    specs = [spec(f"a{i}", exits=("out",) if i < len(counts) - 1 else (), registers=tuple(f"r{j}" for j in range(n)))
             for i, n in enumerate(counts)]
    wires = {f"a{i}.out": f"a{i + 1}.in" for i in range(len(counts) - 1)}
    if sum(counts) > 8:
        with pytest.raises(LayoutError, match="no register left"):
            build(specs, Wiring.parse({"start": "a0.in", "wires": wires}))
        return
    lay = build(specs, Wiring.parse({"start": "a0.in", "wires": wires}))
    used = [f for al in lay.apps.values() for f in al.register_fields.values()]
    assert len(used) == len(set(used)) == sum(counts)


def test_the_shipped_layout_loads_with_the_installed_apps():
    compiler = Compiler.from_file(layout_path(""))
    assert list(compiler.layout.apps) == ["classifier", "port_security", "dhcp", "sg_egress", "responder", "l3", "l2",
                                           "sg_ingress", "output"]
    text = "\n".join(describe(compiler.layout))
    assert "classifier.out -> port_security.in" in text and "l3.out -> l2.in" in text
    assert '"l3" -> "l2"' in to_dot(compiler.layout)
