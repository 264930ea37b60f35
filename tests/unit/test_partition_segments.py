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


def test_a_chain_for_the_other_ethertype_takes_its_twins_segments_as_they_would_be_walked():
    """A network's IPv6 L2 chain takes the IPv4 chain's segments that never read the ethertype (its remote
    destinations), the term swapped: each equals the segment walked afresh, and those that read it (a local
    destination's security group) are walked."""
    compiler, topo = bench.host(20, 200)
    caps = bench.capabilities("mlx5-connectx6dx")
    pipeline = compiler.pipeline()
    twinned = []
    original = partition.Twin.segment

    def segment(self, flow, changed):
        taken = original(self, flow, changed)
        if taken is not None:
            twinned.append(taken)
        return taken

    partitioner = partition.Partitioner(compiler.layout.joins())
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(partition.Twin, "segment", segment)
        partitioner.plan(pipeline, bench.offload(topo, caps), TYPES, {})
    planner = partitioner._planner
    doom = partition.Doom(caps)
    taken = {id(segment) for segment in twinned}
    ipv6_l2 = {True: 0, False: 0}  # an IPv6 L2 chain's segments: taken from the twin, or walked
    for key, (_, segments) in planner._segments.items():
        memo = partition.Segments()
        list(partition.walk_entry(pipeline, key[2], compiler.layout.joins(), doom, {}, planner.reads, memo))
        ipv6 = (ir.ETH_TYPE_IPV6 if ("eth_type", ir.ETH_TYPE_IPV6, 0xFFFF) in key[2].region else None)
        for flow_id, segment in segments.items():
            assert segment.leaves == memo.now[flow_id].leaves and segment.deps == memo.now[flow_id].deps, key
            assert ipv6 or id(segment) not in taken  # the IPv4 chains are walked first, in full
            if ipv6 and pipeline.table_names[key[2].table] == "l2.lookup":
                ipv6_l2[id(segment) in taken] += 1
    assert ipv6_l2[True] > 100 and ipv6_l2[False] > 0
