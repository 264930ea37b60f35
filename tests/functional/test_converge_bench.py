"""``hwflow bench converge`` on a small host: a real agent, the simulated NIC and OVS, every write measured.

The bench runs once for the module (4 local ports, 50 remote, 2 writes of each kind); the tests read its
results. The topology and the timeout are checked without a host.
"""

from __future__ import annotations

import math
import time

import pytest

from hwflow import bench
from hwflow.bench import converge
from hwflow.db.api import Create, NbApi
from hwflow.model.objects import Port

SMALL = {"local_ports": 4, "remote_ports": 50, "changes": 2}
FIGURES = ("write_to_nic_median_ms", "write_to_nic_p99_ms", "noop_pass_ms", "resync_s", "setup_s")
COUNTS = ("nic_rules", "ovs_flows")


@pytest.fixture(scope="module")
def run() -> tuple[dict[str, float], list[str]]:
    params = bench.parse_params(converge.DEFAULTS, [f"{key}={value}" for key, value in SMALL.items()])
    lines: list[str] = []
    return converge.run(params, lines.append), lines


@pytest.mark.functional
def test_every_figure_is_a_positive_number(run) -> None:
    results, _ = run
    assert set(FIGURES + COUNTS) <= results.keys()
    for key in FIGURES + COUNTS + tuple(f"{kind}_median_ms" for kind in converge.KINDS):
        value = results[key]
        assert isinstance(value, int | float) and not isinstance(value, bool), (key, value)
        assert math.isfinite(value) and value > 0, (key, value)
    assert results["write_to_nic_p99_ms"] >= results["write_to_nic_median_ms"]
    assert results["resync_s"] >= results["resync_pass_s"] > 0


@pytest.mark.functional
def test_a_local_port_added_moves_the_nic_rule_count(run) -> None:
    results, lines = run
    assert results["nic_rules_per_local_port"] > 0
    measured = [line for line in lines if line.startswith(("local_port ", "remote_port ", "sg_rule "))]
    assert len(measured) == 3 * SMALL["changes"], lines


@pytest.mark.functional
def test_a_restart_loses_no_flow(run) -> None:
    results, _ = run
    assert results["resync_ovs_flows_lost"] == 0


@pytest.mark.functional
def test_a_restart_loses_no_nic_rule(run) -> None:
    """It used to lose some: the plan depended on refusals met on the way (routed rules' mixed pedit, gotos to
    lower chains) and on the order chains were numbered in; chain numbers now come from the chain itself."""
    results, _ = run
    assert results["resync_nic_rules_lost"] == 0 and results["resync_nic_rules_removed"] == 0


def test_the_topology_and_every_measured_write_fit_one_database(tmp_path) -> None:
    topo = converge.scenario(4, 50, "host1", 3)
    with NbApi.from_url(f"sqlite:///{tmp_path}/nb.sqlite") as nb:
        nb.create_many(topo.objects)
        for kind in converge.KINDS:
            nb.apply([Create(write.obj) for write in topo.writes[kind]])  # unique MACs, addresses on their subnet
    local = {p.id for p in topo.local}
    assert len(local) == 4 and all(p.chassis == "host1" for p in topo.local)
    for write in topo.writes["local_port"]:
        assert isinstance(write.obj, Port) and write.neighbour is not None and write.neighbour.id in local
        assert write.obj.network_id == write.neighbour.network_id and write.obj.chassis == "host1"
    for write in topo.writes["remote_port"]:
        assert isinstance(write.obj, Port) and write.obj.chassis not in ("", "host1") and write.tunnel_ip
    assert all(write.owners for write in topo.writes["sg_rule"])


class _NoFlows:
    def flow_count(self, owner: str | None = None) -> int:
        return 0


def test_a_write_that_never_lands_is_an_error_naming_it() -> None:
    write = converge.Write("remote_port", Port(id="cv-remote-7", network_id="n0"))
    never = converge.Expectation(_NoFlows(), ["port:cv-remote-7"], lambda: False, None)
    start = time.perf_counter()
    with pytest.raises(converge.ConvergeError, match=r"remote_port cv-remote-7: the OVS flows .* not there after"):
        converge.wait_in_place(write, never, start, 0.05, lambda: True)
    assert time.perf_counter() - start < 5
