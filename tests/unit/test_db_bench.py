"""``hwflow bench db`` runs end to end (tiny, on the embedded database) and reports its metrics."""

from __future__ import annotations

from hwflow import bench


def test_bench_db_reports_every_metric(tmp_path):
    module = bench.load("db")
    params = bench.parse_params(module.DEFAULTS, ["ports=40", "networks=4", "samples=5",
                                                  f"url=sqlite:///{tmp_path}/nb.sqlite"])
    results = module.run(params, lambda text: None)
    assert {"create_10k_ports_s", "sync_10k_ports_s", "watch_latency_median_ms"} <= set(results)
    assert results["ports_held"] == 40  # a local port on every network: the agent needs them all
    assert all(value > 0 for value in results.values())
