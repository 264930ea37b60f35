"""The topology's bookkeeping of local ports: their numbers (unique, in range, stable while a port stays local,
its key when that is free) and the networks that have local ports ("present" changes when that flips)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from hwflow.model.objects import Port
from hwflow.pipeline import topology as topology_module
from hwflow.pipeline.topology import KIND_PRESENT, Topology

KEYS = (1, 2, 3, 5, 0x8000, 0x12345, 0x12346)


def port(i: int, key: int, network: str = "n") -> Port:
    return Port(id=f"p{i}", name=f"p{i}", network_id=network, mac=f"fa:16:3e:00:00:{i:02x}", unique_key=key)


def test_a_small_key_is_its_own_number_and_big_keys_count_down_from_the_top():
    ports = {f"p{i}": port(i, key) for i, key in enumerate(KEYS)}
    topo = Topology("h", {}, ports, set(ports))
    numbers = {pid: topo.local_number(pid) for pid in ports}
    top = topology_module.LOCAL_NUMBERS
    assert numbers == {"p0": 1, "p1": 2, "p2": 3, "p3": 5, "p4": top, "p5": top - 1, "p6": top - 2}


def test_a_remote_or_unknown_port_has_no_number():
    topo = Topology("h", {}, {"p0": port(0, 7)}, set())
    assert topo.local_number("p0") is None
    topo.set_local("px", True)  # its interface is here, the database has not told us about it yet
    assert topo.local_number("px") is None
    topo.apply("port", "px", port(9, 0x9000))
    assert topo.local_number("px") == topology_module.LOCAL_NUMBERS


ops = st.lists(st.one_of(
    st.tuples(st.just("port"), st.integers(0, len(KEYS) - 1), st.sampled_from([None, "n", "m"])),  # moved, gone
    st.tuples(st.just("local"), st.integers(0, len(KEYS) - 1), st.booleans()),
), max_size=30)


@settings(max_examples=400, deadline=None)
@given(ops, st.integers(1, 8))
def test_numbers_are_unique_in_range_and_stable_while_local(operations, limit):
    topology_module.LOCAL_NUMBERS, saved = limit, topology_module.LOCAL_NUMBERS
    try:
        topo = Topology("h")
        held: dict[str, int] = {}
        for op, i, on in operations:
            present = _present(topo)
            pid = f"p{i}"
            if op == "port":
                changes = topo.apply("port", pid, port(i, KEYS[i], on) if on else None)
            else:
                changes = topo.set_local(pid, on)
            numbers = {p: topo.local_number(p) for p in topo.local_port_ids if topo.local_number(p) is not None}
            assert all(1 <= n <= limit for n in numbers.values())
            assert len(set(numbers.values())) == len(numbers)
            assert all(numbers.get(p) == n for p, n in held.items() if topo.is_local(p))  # kept while local
            assert set(numbers) <= {p for p in topo.local_port_ids if topo.is_local(p)}
            if changes and topo.is_local(pid) and pid not in numbers:  # the port just written or plugged found none
                assert len(numbers) == limit
            assert {c.id for c in changes if c.kind == KIND_PRESENT} == present ^ _present(topo)
            held = numbers
    finally:
        topology_module.LOCAL_NUMBERS = saved


def _present(topo: Topology) -> set[str]:
    return {topo.ports[p].network_id for p in topo.local_port_ids if topo.is_local(p)}


def test_a_batch_reports_each_network_that_came_or_went_once():
    ports = {f"p{i}": port(i, i + 1, "n" if i < 2 else "m") for i in range(3)}
    topo = Topology("h", {}, ports, {"p0"})
    changes = topo.update({"port": ports}, {"p1", "p2"})  # n keeps a local port (p0 leaves, p1 comes), m gets one
    assert [(c.id, c.old, c.new) for c in changes if c.kind == KIND_PRESENT] == [("m", False, True)]
