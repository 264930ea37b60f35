"""``hwflow bench partition`` runs (small) and reports what it places; ``hwflow bench`` lists every benchmark."""

from __future__ import annotations

import json

from hwflow import bench
from hwflow.cli.main import main


def test_bench_partition_places_rules_on_a_capable_nic_and_none_on_a_basic_one():
    module = bench.load("partition")
    small = ["local_ports=20", "remote_ports=100", "changes=2"]
    capable = module.run(bench.parse_params(module.DEFAULTS, small), lambda text: None)
    assert {"flows", "partition_s", "per_port_ms", "hw_rules", "tc_rules", "software_paths"} <= set(capable)
    assert capable["hw_rules"] > 0 and capable["software_paths"] > 0
    assert capable["tc_rules"] > capable["hw_rules"]  # shared chains: one plan, a copy per representor
    assert capable["incremental_median_ms"] > 0 and capable["full_replans"] == 0
    params = ["local_ports=20", "remote_ports=100", "profile=sim-basic", "changes=1"]
    basic = module.run(bench.parse_params(module.DEFAULTS, params), lambda text: None)
    assert basic["hw_rules"] == 0 and basic["flows"] == capable["flows"]  # no conntrack: every port is filtered


def test_bench_lists_each_benchmark_with_its_parameters(capsys):
    assert main(["bench", "--json"]) == 0
    listed = {row["name"]: row for row in json.loads(capsys.readouterr().out)}
    assert set(listed) == set(bench.BENCHMARKS)
    assert listed["partition"]["params"] == ("local_ports=1000 remote_ports=10000 profile=mlx5-connectx6dx changes=20 "
                                             "max_rules=0 ethertypes=ipv4,ipv6")
    assert listed["compile"]["measures"].startswith("Compile a large host")
