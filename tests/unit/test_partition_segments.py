"""A chain walked again after a change reuses the segments nothing changed under, and walks as a fresh walk does.

The incremental == whole property tests hold the plans equal; this holds the reuse itself to account: the
leaves of every chain with its old segments offered equal a walk afresh, and the changes the agent sees most
(a port added on this host or another) leave most of a network's segments to be reused, not walked.
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


def _planned_host():
    compiler, topo = bench.host(20, 200)
    caps = bench.capabilities("mlx5-connectx6dx")
    partitioner = partition.Partitioner(compiler.layout.joins())
    partitioner.plan(compiler.pipeline(), bench.offload(topo, caps), TYPES, {})
    return compiler, topo, caps, partitioner


def _changes(topo):
    nets, groups = len(topo.networks), len(topo.of("security_group")) - 1
    local = _port(220, nets, groups, 221)
    remote = dataclasses.replace(_port(221, nets, groups, 222), chassis="c0")
    return {
        "a local port added": lambda: topo.apply(KIND_PORT, local.id, local) + topo.set_local(local.id, True),
        "a remote port added": lambda: topo.apply(KIND_PORT, remote.id, remote),
        "a remote port removed": lambda: topo.apply(KIND_PORT, "p30", None),
    }


@pytest.mark.parametrize("change", ["a local port added", "a remote port added", "a remote port removed"])
def test_a_chain_walked_with_its_old_segments_is_the_chain_walked_afresh(change):
    compiler, topo, caps, partitioner = _planned_host()
    planner = partitioner._planner
    before = {key: segments for key, (_, segments) in planner._segments.items()}
    delta = compiler.update(topo, _changes(topo)[change]())
    pipeline = compiler.pipeline()
    hit = partition._hit_by(delta.added, delta.removed, set())
    reused = walked = gone = 0
    doom = partition.Doom(caps)
    reads = partition.StateRead(pipeline.flows)
    for key, segments in before.items():
        memo = partition.Segments(segments, hit)
        again = list(partition.walk_entry(pipeline, key[2], compiler.layout.joins(), doom, {}, reads, memo))
        afresh = list(partition.walk_entry(pipeline, key[2], compiler.layout.joins(), doom, {}, reads))
        assert again == afresh, key
        kept = sum(1 for flow_id, segment in memo.now.items() if segments.get(flow_id) is segment)
        reused += kept
        walked += len(memo.now) - kept
        gone += len(segments.keys() - memo.now.keys())
    assert walked + gone > 0  # the change reached some segment: the check is not vacuous
    assert reused > 20 * (walked + gone)  # and most of what the chains hold was taken as it was
