"""Faults, against a real etcd: the database goes away and comes back; a foreign writer stores junk.

The agent's cache is what its datapaths are computed from, so "the agent
keeps its installed datapath" is shown here as: the cache keeps every
object while etcd is gone, says so in the log, retries with growing
backoff, and on return has every change made meanwhile.
"""

from __future__ import annotations

import importlib
import logging
import pathlib
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest

from hwflow.agent.cache import NbCache
from hwflow.db import NbApi
from hwflow.db.api import Create
from hwflow.db.etcd_server import EtcdCluster
from hwflow.model import DatabaseUnavailable, HwflowError, Network, Port, Subnet

pytestmark = pytest.mark.functional


@pytest.fixture
def cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(3) as c:
        yield c


def wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def mac(i: int) -> str:
    return f"fa:16:3e:00:02:{i:02x}"


def test_the_cache_survives_its_etcd_member_going_away_and_catches_up(cluster, caplog):
    caplog.set_level(logging.INFO, logger="hwflow.agent.cache")
    first, *others = cluster.members
    writer = NbApi.from_url("etcd://" + ",".join(m.endpoint for m in others))
    agent_db = NbApi.from_url(f"etcd://{first.endpoint}")  # the agent knows one member only
    try:
        net = writer.create(Network(id="n1", vni=1))
        writer.create(Subnet(id="s1", network_id=net.id, cidr="10.0.0.0/24"))
        local = writer.create(Port(id="vm1", network_id=net.id, mac=mac(1), ips=["10.0.0.1"], chassis="host1"))
        writer.create(Port(id="vm2", network_id=net.id, mac=mac(2), ips=["10.0.0.2"], chassis="host2"))
        changed = threading.Event()
        cache = NbCache(agent_db, changed.set, "host1", watch_timeout=0.5, max_backoff=2.0)
        cache.resync()
        cache.set_local_ports([local.id])
        cache.start()
        held = {o.id for o in cache.held()}
        assert {"n1", "s1", "vm1", "vm2"} <= held

        cluster.stop(first)
        wait_for(lambda: caplog.text.count("northbound database unavailable") >= 3)
        assert {o.id for o in cache.held()} == held  # nothing dropped while the database is away
        delays = [float(d) for d in re.findall(r"retrying in ([0-9.]+)s", caplog.text)]
        assert delays[:3] == [0.5, 1.0, 2.0] and max(delays) == 2.0  # backoff, capped
        assert "keeping the installed datapath" in caplog.text

        # Meanwhile the rest of the cluster takes changes.
        writer.create(Port(id="vm3", network_id=net.id, mac=mac(3), ips=["10.0.0.3"], chassis="host3"))
        writer.delete("port", "vm2")
        writer.update(Network(**{**writer.get("network", "n1").to_dict(), "mtu": 1400}))
        caplog.clear()
        changed.clear()
        cluster.start(first)
        wait_for(lambda: "reachable again" in caplog.text)
        wait_for(lambda: {"vm1", "vm3"} <= set(cache.objects("port")) and "vm2" not in cache.objects("port"))
        assert cache.objects("network")["n1"].mtu == 1400
        assert changed.is_set()
        cache.stop()
    finally:
        writer.close()
        agent_db.close()


def test_a_dead_database_is_a_clear_error_and_nothing_is_half_written(cluster):
    url = cluster.url
    with NbApi.from_url(url) as api:
        api.create(Network(id="n1", vni=1))
        cluster.stop()
        with pytest.raises(DatabaseUnavailable, match=r"cannot reach etcd at 127\.0\.0\.1:\d+,.*check that etcd "
                           "is running"):
            api.create(Network(id="n2", vni=2))
        cluster.start()
        assert [n.id for n in api.list("network")] == ["n1"]


def test_a_foreign_record_in_etcd_is_logged_and_skipped(cluster, caplog):
    with NbApi.from_url(cluster.url) as api:
        net = api.create(Network(id="n1", vni=1))
        api.create(Port(id="vm1", network_id=net.id, mac=mac(1), chassis="host1"))
        cache = NbCache(api, lambda: None, "host1", watch_timeout=0.5)
        cache.resync()
        cache.set_local_ports(["vm1"])
        cache.start()
        try:
            api.driver.put("port", "junk", b'{"id": "junk", "network_id": "n1", "mac": 7}')
            # Wrong types, missing fields, not JSON, not UTF-8, nested past the parser, another id (issue 16).
            foreign = {
                "junk-missing": b'{"id": "junk-missing"}',
                "junk-unknown": b'{"id": "junk-unknown", "network_id": "n1", "mac": "fa:16:3e:00:02:77", "x": 1}',
                "junk-id": b'{"id": "another", "network_id": "n1", "mac": "fa:16:3e:00:02:78"}',
                "junk-list": b'["junk-list"]',
                "junk-bytes": b"\xff\xfe port",
                "junk-deep": b"[" * 50_000 + b"]" * 50_000,
            }
            for key, value in foreign.items():
                api.driver.put("port", key, value)
            api.create(Port(id="vm2", network_id=net.id, mac=mac(2)))
            wait_for(lambda: "vm2" in cache.objects("port"))
            assert "junk" not in cache.objects("port")
            assert "skipping a bad change" in caplog.text and "port junk" in caplog.text
            for key in foreign:
                assert key not in cache.objects("port") and f"port {key}" in caplog.text
        finally:
            cache.stop()


def _hostile(*names: str) -> list:
    """Helpers of tests/unit/test_hostile_input.py (which imports its neighbours there)."""
    unit = str(pathlib.Path(__file__).parents[1] / "unit")
    if unit not in sys.path:
        sys.path.append(unit)
    module = importlib.import_module("test_hostile_input")
    return [getattr(module, name) for name in names]


def test_writers_racing_on_one_object_in_etcd_leave_it_consistent(cluster):
    """The unit test's race (tests/unit/test_hostile_input.py), on a real 3-member etcd: threads updating one
    port compare-and-swap, taking one MAC, deleting its network with everything in it and putting it back; only
    documented errors, and the database holds whole objects with whole indexes afterwards."""
    BASE, assert_consistent, race = _hostile("BASE", "assert_consistent", "race")
    with NbApi.from_url(cluster.url) as api:
        api.apply([Create(o) for o in BASE])
        for seed in range(2):
            assert race(cluster.url, workers=4, rounds=10, seed=seed) == []
            assert_consistent(api)
            holders = [p.id for p in api.list("port") if p.mac == "fa:16:3e:00:00:99" and p.network_id == "n1"]
            assert len(holders) <= 1, f"two ports took one MAC: {holders}"


def test_a_hostile_batch_on_etcd_is_refused_whole(cluster):
    """A batch etcd could only take in several transactions, refused by a check: nothing of it is written; a
    port too big for one etcd transaction is refused before anything is, naming it."""
    BASE, contents = _hostile("BASE", "contents")
    with NbApi.from_url(cluster.url) as api:
        api.apply([Create(o) for o in BASE])
        before = contents(api)
        ports = [Create(Port(id=f"b{i}", network_id="n1", mac=f"fa:16:3e:01:{i // 256:02x}:{i % 256:02x}"))
                 for i in range(200)]
        ports.append(Create(Port(id="b-last", network_id="n1", mac="fa:16:3e:01:00:05")))  # b5's MAC again
        with pytest.raises(HwflowError, match="port b-last.*already used by port b5"):
            api.apply(ports)
        assert contents(api) == before
        big = Port(id="big", network_id="n1", mac="fa:16:3e:00:00:07", ips=[f"10.0.0.{i}" for i in range(10, 200)])
        with pytest.raises(HwflowError, match="port big: writing it takes .* more than the database takes"):
            api.create(big)
        assert contents(api) == before
