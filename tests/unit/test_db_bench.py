"""``hwflow bench db`` runs end to end (tiny, on the embedded database) and reports its metrics."""

from __future__ import annotations

from hwflow import bench
from hwflow.db import NbApi


def test_bench_db_reports_every_metric(tmp_path):
    module = bench.load("db")
    url = f"sqlite:///{tmp_path}/nb.sqlite"
    params = bench.parse_params(module.DEFAULTS, ["ports=40", "networks=4", "samples=5", "one_by_one_ports=8",
                                                  f"url={url}"])
    results = module.run(params, lambda text: None)
    assert {"create_10k_ports_s", "create_10k_ports_one_by_one_s", "batch_speedup", "sync_10k_ports_s",
            "watch_latency_median_ms"} <= set(results)
    assert results["ports_held"] == 40  # a local port on every network: the agent needs them all
    assert results["create_txns"] == 1  # the batch: one transaction on SQLite
    assert all(value > 0 for value in results.values())
    with NbApi.from_url(url) as api:
        ports = api.list("port")
    assert len(ports) == 48 and len({p.unique_key for p in ports}) == 48  # the batch's and the 8 created alone
