"""A long-running agent sees ports come and go: what the partitioner keeps between changes must not grow with them.

After a port is added and removed again, the planner holds as many chains, chain numbers, segments,
judgements and walks as before, and the plan it gives is the plan it gave.
"""

from __future__ import annotations

import dataclasses

import pytest

from hwflow.bench import partition as bench
from hwflow.bench.compile import _port
from hwflow.offload import partition
from hwflow.pipeline import ir
from hwflow.pipeline.topology import KIND_PORT

TYPES = (ir.ETH_TYPE_IPV4, ir.ETH_TYPE_IPV6)


def _held(planner) -> dict[str, int]:
    return {"chains": len(planner._chains), "numbers": len(planner.ids._ids), "segments": len(planner._segments),
            "judged": len(planner._judged), "walks": len(planner._planned),
            "parents": sum(1 for parents in planner._parents.values() if parents),
            "leaves kept": sum(len(s.leaves) for _, segments in planner._segments.values() for s in segments.values())}


@pytest.mark.parametrize("local", [True, False], ids=["a local port", "a remote port"])
def test_a_port_added_and_removed_leaves_the_planner_as_it_was(local):
    compiler, topo = bench.host(20, 200)
    caps = bench.capabilities("mlx5-connectx6dx")
    partitioner = partition.Partitioner(compiler.layout.joins())
    first = partitioner.plan(compiler.pipeline(), bench.offload(topo, caps), TYPES, {})
    before = _held(partitioner._planner)
    nets, groups = len(topo.networks), len(topo.of("security_group")) - 1
    port = _port(220, nets, groups, 221)
    if not local:
        port = dataclasses.replace(port, chassis="c0")
    grew = False
    for change in (lambda: topo.apply(KIND_PORT, port.id, port) + topo.set_local(port.id, local),
                   lambda: (topo.set_local(port.id, False) if local else []) + topo.apply(KIND_PORT, port.id, None)):
        delta = compiler.update(topo, change())
        plan = partitioner.plan(compiler.pipeline(), bench.offload(topo, caps), TYPES, {}, (delta.added, delta.removed))
        assert partitioner.changed is not None  # each change was planned as a change, not a whole plan
        if local and _held(partitioner._planner)["chains"] > before["chains"]:
            grew = True
    assert not local or grew  # the local port had chains of its own while it was there
    assert _held(partitioner._planner) == before
    assert {p: plan.rules_of(p) for p in first.own} == {p: first.rules_of(p) for p in first.own}



def test_a_whole_plan_gives_up_the_numbers_of_chains_it_no_longer_has():
    """Chain numbers outlive each plan (a chain keeps its number); a whole plan (the agent's resync timer) after a
    port went must not keep the numbers of that port's chains: the soak's agent grew by every port it saw."""
    compiler, topo = bench.host(20, 200)
    caps = bench.capabilities("mlx5-connectx6dx")
    partitioner = partition.Partitioner(compiler.layout.joins())
    first = partitioner.plan(compiler.pipeline(), bench.offload(topo, caps), TYPES, {})
    numbers = dict(partitioner._ids._ids)
    port = _port(220, len(topo.networks), len(topo.of("security_group")) - 1, 221)
    compiler.update(topo, topo.apply(KIND_PORT, port.id, port) + topo.set_local(port.id, True))
    partitioner.plan(compiler.pipeline(), bench.offload(topo, caps), TYPES, {})
    assert len(partitioner._ids._ids) > len(numbers)  # the port had chains of its own
    compiler.update(topo, topo.set_local(port.id, False) + topo.apply(KIND_PORT, port.id, None))
    plan = partitioner.plan(compiler.pipeline(), bench.offload(topo, caps), TYPES, {})
    assert partitioner.changed is None  # whole plans, each
    assert partitioner._ids._ids == numbers  # the chains left keep their numbers
    assert {p: plan.rules_of(p) for p in first.own} == {p: first.rules_of(p) for p in first.own}
