"""``hwflow bench db``: the northbound database under an agent's load, on a real etcd.

Starts a private etcd on 127.0.0.1 (unless ``url`` names a database), then:

- ``create_10k_ports_s``: ``ports`` ports (on ``networks`` networks with a
  subnet each) created as one batch through the NB API (``create_many``, as
  ``hwflow nb apply`` does): checked together, then written in as few
  compare-and-swap transactions as the database takes (``create_txns``);
- ``sync_10k_ports_s``: an agent's full sync of that topology (one snapshot,
  then the selection for its local ports, one on every network, so every
  port is held), as after a restart or a compaction; scaled to 10k ports;
- ``grow_10k_ports_s``: the same set reached by targeted reads instead (what
  happens when the local ports appear after start-up), scaled the same way;
- ``watch_latency_median_ms`` / ``_p90_ms``: from the write transaction of
  an update of a held port to the agent's cache having applied it, over
  ``samples`` writes; ``update_to_cache_median_ms`` also counts the reads
  the NB API does before writing (validation, references, CAS);
- ``create_10k_ports_one_by_one_s``: last, ``one_by_one_ports`` more ports
  created one at a time (``create``, as ``hwflow nb port create`` does: each
  its own checks and transaction), scaled to 10k; ``batch_speedup`` is it
  over the batch's figure, in the same run.
"""

from __future__ import annotations

import contextlib
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

from hwflow.agent.cache import NbCache
from hwflow.bench import Progress
from hwflow.db.api import NbApi
from hwflow.db.etcd_server import EtcdCluster
from hwflow.model.objects import Network, Port, Subnet

DEFAULTS: dict[str, Any] = {"ports": 10_000, "networks": 100, "samples": 200, "one_by_one_ports": 1_000, "url": ""}
CHASSIS = "bench-host"


@contextlib.contextmanager
def _database(url: str) -> Iterator[str]:
    if url:
        yield url
        return
    with EtcdCluster(1) as cluster:
        yield f"{cluster.url}/bench-db-{int(time.time())}"


def _port(i: int, networks: list[Network], chassis: str) -> Port:
    """The i-th port: spread over the networks, an address of its network's /16, a MAC of its own."""
    net, host = i % len(networks), i // len(networks) + 2
    return Port(name=f"p{i}", network_id=networks[net].id, ips=[f"10.{net}.{host >> 8}.{host & 255}"],
                mac=f"fa:16:3e:{i >> 16 & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}", chassis=chassis)


def _create(api: NbApi, ports: int, networks: int, progress: Progress) -> tuple[float, int, list[Network], list[str]]:
    """Networks with a /16 subnet each, then the ports spread over them in one batch; the first port of each is local.

    Returns the batch's time and transactions, the networks and the local ports.
    """
    if not 1 <= networks <= 255 or ports > networks * 65_000:
        raise ValueError("bench db needs 1..255 networks and at most 65000 ports per network")
    nets = api.create_many([Network(name=f"bench-{i}", vni=50_000 + i) for i in range(networks)])
    api.create_many([Subnet(network_id=net.id, cidr=f"10.{i}.0.0/16") for i, net in enumerate(nets)])
    batch = [_port(i, nets, CHASSIS if i < networks else f"host-{i % 50}") for i in range(ports)]
    progress(f"creating {ports} ports in one batch")
    start = time.perf_counter()
    stored = api.create_many(batch)
    elapsed = time.perf_counter() - start
    return elapsed, len({p.revision for p in stored}), nets, [p.id for p in stored[:networks]]


def _create_one_by_one(api: NbApi, first: int, count: int, nets: list[Network], progress: Progress) -> float:
    """``count`` more ports, each created alone (its own reads and transaction)."""
    start = time.perf_counter()
    for n, i in enumerate(range(first, first + count)):
        api.create(_port(i, nets, f"host-{i % 50}"))
        if n and n % 1000 == 0:
            progress(f"created {n} ports one by one")
    return time.perf_counter() - start


def _latency(api: NbApi, cache: NbCache, applied: threading.Event, port_id: str,
             samples: int) -> tuple[list[float], list[float]]:
    """(from the write transaction, from the API call) to the cache having applied it, in ms."""
    committing = [0.0]
    send = api.driver.txn

    def timed_txn(*args: Any) -> int:  # notes when the write itself goes out, after the API's reads
        committing[0] = time.perf_counter()
        return send(*args)

    api.driver.txn = timed_txn  # type: ignore[method-assign]
    port = api.get("port", port_id)
    from_write, from_call = [], []
    try:
        for i in range(samples):
            applied.clear()
            start = time.perf_counter()
            port = api.update(Port(**{**port.to_dict(), "name": f"renamed-{i}"}))
            while cache.objects("port")[port_id].revision < port.revision:
                if not applied.wait(10):
                    raise RuntimeError("the agent's cache did not see an update within 10 s")
                applied.clear()
            done = time.perf_counter()
            from_write.append((done - committing[0]) * 1000)
            from_call.append((done - start) * 1000)
    finally:
        api.driver.txn = send  # type: ignore[method-assign]
    return from_write, from_call


def run(params: dict[str, Any], progress: Progress) -> dict[str, float]:
    with _database(params["url"]) as url, NbApi.from_url(url) as api:
        progress(f"database {url}")
        create_s, txns, nets, local = _create(api, params["ports"], params["networks"], progress)
        progress(f"created {params['ports']} ports in {create_s:.1f}s ({txns} transactions)")

        applied = threading.Event()
        cache = NbCache(api, applied.set, CHASSIS, watch_timeout=0.5)
        cache.resync()  # as the agent starts: no local port known yet
        start = time.perf_counter()
        cache.set_local_ports(local)  # its ports appear: targeted reads
        grow_s = time.perf_counter() - start
        start = time.perf_counter()
        cache.resync()  # the same set from one snapshot, as after a restart or a compaction
        sync_s = time.perf_counter() - start
        held = len(cache.objects("port"))
        progress(f"holding {held} ports: grown in {grow_s:.2f}s, full sync in {sync_s:.2f}s")

        cache.start()
        try:
            from_write, from_call = _latency(api, cache, applied, local[0], params["samples"])
        finally:
            cache.stop()
        one_by_one = params["one_by_one_ports"]
        single_s = _create_one_by_one(api, params["ports"], one_by_one, nets, progress) if one_by_one else 0.0
    results = {
        "create_10k_ports_s": round(create_s * 10_000 / params["ports"], 2),
        "create_ports_per_s": round(params["ports"] / create_s, 1),
        "create_txns": txns,
        "sync_10k_ports_s": round(sync_s * 10_000 / held, 3),
        "grow_10k_ports_s": round(grow_s * 10_000 / held, 3),
        "ports_held": held,
        "watch_latency_median_ms": round(statistics.median(from_write), 2),
        "watch_latency_p90_ms": round(statistics.quantiles(from_write, n=10)[-1], 2),
        "update_to_cache_median_ms": round(statistics.median(from_call), 2),
    }
    if one_by_one:
        results["create_10k_ports_one_by_one_s"] = round(single_s * 10_000 / one_by_one, 2)
        results["batch_speedup"] = round(single_s / one_by_one / (create_s / params["ports"]), 1)
    return results
