"""The agent's Prometheus metrics, scraped over HTTP from a running simulated host, with real pings.

The agent of a SimHost (profile mlx5-connectx6dx) serves its metrics on 127.0.0.1 inside the host's network
namespace (``[agent] metrics_port``); the test scrapes them from a thread that entered that namespace. Two VMs
ping; the per-port counters must move on the hardware side (the NIC's rules carried the pings), not on the
software side, and the capacity gauge must say what the NIC holds.
"""

from __future__ import annotations

import secrets
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from test_e2e import PINGS, VMS, agent_log, create_network, evidence, nic_rules, ping, plug, wait_for

from hwflow.db import NbApi
from hwflow.model import Network
from hwflow.sim.host import SimHost
from hwflow.sim.profile import load_profile
from hwflow.util.netns import call_in

pytestmark = pytest.mark.functional

PROFILE = "mlx5-connectx6dx"
METRICS_PORT = 9187  # in the host's own namespace: nothing else listens there


def scrape(host: SimHost) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample the agent serves: (name, sorted labels) -> value; {} while it does not answer."""
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{METRICS_PORT}/metrics", timeout=5) as reply:
            return reply.read().decode()

    try:
        text = call_in(host.ns, get)
    except OSError:
        return {}
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def sample(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get(("hwflow_agent_" + name, tuple(sorted(labels.items()))))


@pytest.fixture
def host(tmp_path: Path) -> Iterator[SimHost]:
    name = f"mt{secrets.token_hex(2)}"
    workdir = tmp_path / name
    host = SimHost(name, workdir, f"sqlite:///{workdir}/nb.sqlite", profile=PROFILE, metrics_port=METRICS_PORT)
    try:
        yield host.start()
    finally:
        host.stop()


def test_metrics_show_the_pings_in_hardware_and_the_nic_full_as_it_is(host: SimHost) -> None:
    ports = create_network(host)
    plug(host, ports)
    sender = ports["vm1"].id

    def traffic_counted() -> dict:  # the first report after the ports are programmed
        samples = scrape(host)
        hw = sample(samples, "port_packets_total", datapath="hw", port=sender)
        return samples if hw is not None and (sample(samples, "hw_rules_installed") or 0) > 0 else {}

    before = wait_for("the agent's metrics with the ports' traffic", traffic_counted, timeout=30, host=host)
    sw_before = sample(before, "port_packets_total", datapath="sw", port=sender)

    assert ping(host, "vm1", VMS[1][2]) == 0, evidence(host)

    def moved() -> dict:
        samples = scrape(host)
        hw = sample(samples, "port_packets_total", datapath="hw", port=sender) or 0
        return samples if hw - sample(before, "port_packets_total", datapath="hw", port=sender) >= PINGS else {}

    after = wait_for(f"{PINGS} more packets of {sender} in hardware", moved, timeout=30, host=host,
                     details=lambda: "\n".join(f"{k} {v}" for k, v in sorted(scrape(host).items())
                                               if "port_" in k[0]))
    hw_moved = (sample(after, "port_packets_total", datapath="hw", port=sender)
                - sample(before, "port_packets_total", datapath="hw", port=sender))
    assert hw_moved < 2 * PINGS, f"{hw_moved} packets of vm1 in hardware for {PINGS} pings: counted twice"
    sw_after = sample(after, "port_packets_total", datapath="sw", port=sender)
    assert sw_after - sw_before < PINGS, f"OVS took {sw_after - sw_before} packets of vm1: the pings went there"
    hw_bytes = (sample(after, "port_bytes_total", datapath="hw", port=sender)
                - sample(before, "port_bytes_total", datapath="hw", port=sender))
    assert hw_bytes >= PINGS * 98  # an ICMP echo request of ping's default size: 98 bytes on the wire

    assert sample(after, "reconcile_passes_total", kind="full") >= 1
    assert sample(after, "reconcile_passes_total", kind="full") + sample(
        after, "reconcile_passes_total", kind="delta") > 1
    assert sample(after, "reconcile_duration_seconds_count", kind="full") >= 1
    assert sample(after, "hw_rules_installed") > 0
    assert sample(after, "hw_rules_eligible") >= sample(after, "hw_rules_installed")
    assert sample(after, "db_revision") > 0
    assert 0 <= sample(after, "db_watch_reply_age_seconds") < 10
    # one write now: the agent's watch delivers it, and the lag from its write time is observed
    with NbApi.from_url(host.database) as nb:
        nb.create(Network(name="lag-probe", vni=4242))
    lagged = wait_for("the write's watch lag observed", lambda: (s := scrape(host)) and sample(
        s, "db_watch_lag_seconds_count") > sample(after, "db_watch_lag_seconds_count") and s, timeout=10, host=host)
    assert sample(lagged, "db_watch_lag_seconds_count") == sample(after, "db_watch_lag_seconds_count") + 1
    lag = sample(lagged, "db_watch_lag_seconds_sum") - sample(after, "db_watch_lag_seconds_sum")
    assert 0 < lag < 2, f"a write took {lag:.3f} s to reach the agent's watch"
    assert sample(after, "chassis_alive") == 1

    # capacity: what the agent says is on the embedded switch is what the NIC holds
    used = {labels: value for (name, labels), value in after.items() if name == "hwflow_agent_switch_rules_used"}
    assert len(used) == 1, used
    ((switch_labels, _),) = used.items()
    switch = dict(switch_labels)["switch_id"]
    rules = len(nic_rules(host))
    wait_for(f"the capacity gauge at the NIC's {rules} rules",
             lambda: sample(scrape(host), "switch_rules_used", switch_id=switch) == len(nic_rules(host)),
             timeout=15, host=host)
    assert sample(after, "switch_rules_max", switch_id=switch) == load_profile(PROFILE).capabilities.max_rules
    assert "serving Prometheus metrics" in agent_log(host)
