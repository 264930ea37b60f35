"""Soak (issue 16, part 5), CI-sized: an agent under three minutes of port creates, moves, security group
changes and deletes comes back to its baseline: rules, flows, memory, file descriptors, threads.

The churn and its figures are ``hwflow bench soak``'s (hwflow.bench.soak, whose docstring says what each
figure is); the 30-minute run is recorded in doc/reliability.rst. Real OVS (userspace), the simulated NIC,
the real agent, a real UDP stream between two fixed VMs for the whole run.
"""

from __future__ import annotations

import json

import pytest

from hwflow.bench import soak

pytestmark = pytest.mark.functional

PARAMS = {**soak.DEFAULTS, "minutes": 3.0, "warmup_s": 60.0, "sample_s": 5.0}
# The agent's RSS after the churn, against the same baseline topology after the warm-up (what a first churn
# allocates for good: CPython's arenas and caches, the allocator's high-water mark). Measured: 1.3 to 3.7 MB
# more after up to three minutes (360 operations) on an agent of 85 to 95 MB; the 30-minute run's figures are
# in doc/reliability.rst. A leak of a port's state (its flows, rules and topology: a few KB) on each of the
# 360 operations would pass 8 MB, and 8 MB stays under 10% of the agent.
RSS_GROWTH_MB = 8.0


def test_an_agent_under_churn_comes_back_to_its_baseline_and_the_stream_loses_nothing() -> None:
    results = soak.run(PARAMS, lambda line: print(f"[soak] {line}", flush=True))
    print("RELIABILITY " + json.dumps({"test": "soak", **results}, sort_keys=True), flush=True)
    assert all(results[f"ops_{kind}"] >= 1 for kind in soak.KINDS), results
    assert results["nic_rules_max"] > results["nic_rules_baseline"], f"the churn added no NIC rule: {results}"
    assert results["ovs_flows_max"] > results["ovs_flows_baseline"], f"the churn added no OVS flow: {results}"
    assert results["back_to_baseline_s"] >= 0, f"the counts never came back to the baseline's: {results}"
    assert results["nic_rules_end"] == results["nic_rules_baseline"] and results["nic_rules_changed"] == 0, results
    assert results["ovs_flows_end"] == results["ovs_flows_baseline"] and results["ovs_flows_changed"] == 0, results
    assert results["leftover_nic_rules"] == 0 and results["leftover_ovs_flows"] == 0, results
    assert results["stream_sent"] > 0 and results["stream_lost"] == 0 and results["stream_duplicates"] == 0, results
    assert results["rss_growth_mb"] <= RSS_GROWTH_MB, f"the agent's RSS grew past {RSS_GROWTH_MB} MB: {results}"
    assert results["fds_end"] == results["fds_warm"], f"the agent leaks file descriptors: {results}"
    assert results["threads_end"] == results["threads_warm"], f"the agent leaks threads: {results}"
    assert results["repairs"] == 0 and results["failed_passes"] == 0, results
    assert results["full_passes"] <= results["full_passes_timer"], f"full passes beyond the resync timer's: {results}"
