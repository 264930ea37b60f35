"""The conformance suite: every database driver behaves the same, through the raw driver and the NB API.

Each test runs unchanged against the embedded SQLite driver, a single real
etcd server and a 3-member etcd cluster on loopback. The etcd servers are
started once per session (private data directories, free ports on
127.0.0.1) and every test gets its own key prefix, so tests never see each
other's records; revisions are global to a server, so tests compare them
relative to where the test started.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest

from hwflow.db import Compare, Delete, Driver, NbApi, Put, etcd_server
from hwflow.db.etcd_server import EtcdCluster
from hwflow.model import (
    Ambiguous,
    BrokenReference,
    Chassis,
    Compacted,
    Conflict,
    DatabaseUnavailable,
    Network,
    NotFound,
    Port,
    SecurityGroup,
    ValidationError,
)


@pytest.fixture(scope="session")
def etcd_single() -> Iterator[EtcdCluster]:
    with EtcdCluster(1) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    with EtcdCluster(3) as cluster:
        yield cluster


@pytest.fixture(params=[
    "sqlite",
    pytest.param("etcd", marks=pytest.mark.functional),
    pytest.param("etcd-3-members", marks=pytest.mark.functional),
])
def url(request, tmp_path) -> str:
    """A database URL no other test uses."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/nb.sqlite"
    cluster = request.getfixturevalue("etcd_single" if request.param == "etcd" else "etcd_cluster")
    return f"{cluster.url}/test-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def api(url) -> Iterator[NbApi]:
    with NbApi.from_url(url) as nb:
        yield nb


@pytest.fixture
def drv(api) -> Driver:
    return api.driver


def mac(i: int) -> str:
    return f"fa:16:3e:00:{i // 256:02x}:{i % 256:02x}"


# The raw driver


def test_put_get_and_revisions(drv):
    base = drv.current_revision()
    assert drv.put("t", "k", b"v1") == base + 1
    assert drv.put("t", "k", b"v2") == base + 2
    rec = drv.get("t", "k")
    assert (rec.value, rec.create_revision, rec.mod_revision) == (b"v2", base + 1, base + 2)
    assert drv.get("t", "other") is None
    assert drv.current_revision() == base + 2


def test_compare_and_swap(drv):
    first = drv.put("t", "k", b"v1", expected_mod_revision=0)
    with pytest.raises(Conflict, match=f"conflict on t k: expected no stored object, found revision {first}"):
        drv.put("t", "k", b"v2", expected_mod_revision=0)
    second = drv.put("t", "k", b"v2", expected_mod_revision=first)
    with pytest.raises(Conflict) as info:
        drv.put("t", "k", b"v3", expected_mod_revision=first)
    assert (info.value.expected, info.value.actual) == (first, second)
    assert drv.get("t", "k").value == b"v2"
    with pytest.raises(Conflict):
        drv.delete("t", "k", expected_mod_revision=first)
    assert drv.delete("t", "k", expected_mod_revision=second) == second + 1
    with pytest.raises(NotFound, match="t k does not exist"):
        drv.delete("t", "k")


def test_a_failed_transaction_changes_nothing(drv):
    rev = drv.put("t", "a", b"1")
    with pytest.raises(Conflict) as info:
        drv.txn([Compare("t", "a", rev), Compare("t", "b", rev + 5)], [Put("t", "a", b"2"), Put("t", "c", b"3")])
    assert (info.value.table, info.value.key) == ("t", "b")
    assert drv.current_revision() == rev
    assert drv.get("t", "a").value == b"1" and drv.get("t", "c") is None
    assert [e.revision for e in drv.watch(rev, 0.2)] == [rev]


def test_a_transaction_is_one_revision(drv):
    drv.put("t", "gone", b"old")
    rev = drv.txn([], [Put("t", "a", b"1"), Put("u", "b", b"2"), Delete("t", "gone"), Delete("t", "never")])
    events = drv.watch(rev, 5)
    assert sorted((e.revision, e.table, e.key, e.op, e.value) for e in events) == [
        (rev, "t", "a", "put", b"1"), (rev, "t", "gone", "delete", b"old"), (rev, "u", "b", "put", b"2"),
    ]
    with pytest.raises(ValueError):
        drv.txn([], [Put("t", "a", b"1"), Delete("t", "a")])


def test_list_and_snapshot(drv):
    drv.put("a", "2", b"x")
    drv.put("a", "1", b"y")
    last = drv.put("b", "1", b"z")
    rev, records = drv.list("a")
    assert rev == last and [r.key for r in records] == ["1", "2"]
    rev, records = drv.snapshot(["a", "b"])
    assert rev == last and [(r.table, r.key) for r in records] == [("a", "1"), ("a", "2"), ("b", "1")]
    assert drv.list("empty") == (last, [])


def test_keys_may_hold_slashes_and_tables_do_not_mix(drv):
    drv.put("t", "x/y/z", b"1")
    drv.put("tt", "k", b"2")
    assert [r.key for r in drv.list("t")[1]] == ["x/y/z"]
    assert drv.get("t", "x/y/z").value == b"1"


def test_watch_waits_without_spinning(drv):
    rev = drv.put("t", "k", b"v")
    cpu, start = time.process_time(), time.monotonic()
    assert drv.watch(rev + 1, 0.3) == []
    assert time.monotonic() - start >= 0.3
    assert time.process_time() - cpu < 0.15


def test_watch_wakes_up_on_a_write(drv):
    base = drv.current_revision()
    timer = threading.Timer(0.1, drv.put, ("t", "k", b"v"))
    timer.start()
    start = time.monotonic()
    events = drv.watch(base + 1, 5)
    assert [(e.revision, e.key) for e in events] == [(base + 1, "k")]
    assert time.monotonic() - start < 2
    timer.join()


def test_watch_resumes_anywhere_without_gap_or_duplicate(drv):
    revs = [drv.put("t", f"k{i % 3}", str(i).encode()) for i in range(10)]
    seen, rev = [], revs[0]
    while rev <= revs[-1]:
        events = drv.watch(rev, 5)
        seen.append(events[0].value)  # one step at a time: every call resumes a moved stream
        rev = events[0].revision + 1
    assert seen == [str(i).encode() for i in range(10)]
    assert [e.value for e in drv.watch(revs[4], 5)][:1] == [b"4"]  # and going back works too


def test_compacted_history_raises(drv):
    revs = [drv.put("t", "k", str(i).encode()) for i in range(5)]
    drv.compact(revs[2])
    with pytest.raises(Compacted) as info:
        drv.watch(revs[2], 0.5)
    assert info.value.compact_revision == revs[2]
    assert [e.value for e in drv.watch(revs[3], 5)] == [b"3", b"4"]
    assert drv.get("t", "k").value == b"4"
    with pytest.raises(ValueError):
        drv.compact(revs[-1] + 99)


WRITER = """
import sys
from hwflow.db import NbApi
url, name, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
with NbApi.from_url(url) as api:
    for i in range(count):
        api.driver.put("t", f"{name}{i % 7}", f"{name}:{i}".encode())
"""


def test_watch_sees_every_revision_once_in_order_while_other_processes_write(drv, url):
    count = 100
    start = drv.current_revision() + 1
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, url, name, str(count)]) for name in ("a", "b")]
    seen, rev, deadline = [], start, time.monotonic() + 90
    while len(seen) < 2 * count and time.monotonic() < deadline:
        events = drv.watch(rev, 1)
        seen += events
        rev = events[-1].revision + 1 if events else rev
    assert [w.wait(60) for w in writers] == [0, 0]
    revisions = [e.revision for e in seen]
    assert revisions == sorted(set(revisions)) and len(seen) == 2 * count
    for name in ("a", "b"):
        values = [e.value.decode() for e in seen if e.key.startswith(name)]
        assert values == [f"{name}:{i}" for i in range(count)]


def test_threads_share_one_driver(drv):
    base = drv.current_revision()

    def write(t: int) -> None:
        for i in range(15):
            drv.put("t", f"{t}-{i}", b"v")

    threads = [threading.Thread(target=write, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rev, records = drv.list("t")
    assert rev == base + 60 and len(records) == 60
    assert sorted(r.mod_revision for r in records) == list(range(base + 1, base + 61))


def test_closed_driver_refuses_calls(url):
    api = NbApi.from_url(url)
    api.close()
    with pytest.raises(DatabaseUnavailable, match="closed"):
        api.driver.get("t", "k")


# The NB API


def test_create_assigns_id_unique_key_and_revision(api):
    given = Network(name="blue", vni=10)
    net = api.create(given)
    assert given.id == "" and given.revision == 0  # the caller's object is left alone
    assert len(net.id) == 36 and net.unique_key == 1 and net.revision == api.driver.current_revision()
    assert api.get("network", net.id) == net
    assert api.create(Network(name="red", vni=11)).unique_key == 2


def test_create_validates_and_stores_nothing_on_error(api):
    before = api.driver.current_revision()
    with pytest.raises(ValidationError, match="vni"):
        api.create(Network(name="bad", vni=0))
    assert api.list("network") == [] and api.driver.current_revision() == before


def test_duplicate_id_is_a_conflict(api):
    net = api.create(Network(id="n1", vni=1))
    expected = f"conflict on network n1: expected no stored object, found revision {net.revision}"
    with pytest.raises(Conflict, match=expected):
        api.create(Network(id="n1", vni=2))


def test_port_needs_an_existing_network(api):
    with pytest.raises(BrokenReference, match="network_id 'nope' names no existing network"):
        api.create(Port(network_id="nope", mac=mac(1)))
    assert api.list("port") == []


def test_unique_values_are_enforced_and_released(api):
    net = api.create(Network(name="n", vni=5))
    with pytest.raises(ValidationError, match=f"vni 5 is already used by network {net.id}"):
        api.create(Network(name="m", vni=5))
    p1 = api.create(Port(network_id=net.id, mac=mac(1), ips=["10.0.0.1"]))
    with pytest.raises(ValidationError, match=f"mac {mac(1)} on network {net.id} is already used"):
        api.create(Port(network_id=net.id, mac=mac(1).upper()))
    with pytest.raises(ValidationError, match="ip 10.0.0.1 on network"):
        api.create(Port(network_id=net.id, mac=mac(2), ips=["10.0.0.1"]))
    api.update(Port(**{**p1.to_dict(), "ips": ["10.0.0.9"]}))
    api.create(Port(network_id=net.id, mac=mac(2), ips=["10.0.0.1"]))
    api.delete("network", net.id, cascade=True)
    api.create(Network(name="again", vni=5))


def test_update_is_compare_and_swap(api):
    net = api.create(Network(name="n", vni=5))
    newer = api.update(Network(**{**net.to_dict(), "mtu": 9000}))
    assert newer.revision > net.revision and newer.unique_key == net.unique_key
    with pytest.raises(Conflict, match=f"expected revision {net.revision}, found revision {newer.revision}"):
        api.update(Network(**{**net.to_dict(), "mtu": 1400}))
    with pytest.raises(Conflict):
        api.update(newer, if_revision=net.revision)
    assert api.get("network", net.id).mtu == 9000
    blind = api.update(Network(id=net.id, vni=5, mtu=1280))  # never read: overwrites
    assert blind.mtu == 1280 and blind.unique_key == net.unique_key
    with pytest.raises(NotFound):
        api.update(Network(id="missing", vni=6))


def test_a_port_cannot_move_to_another_network(api):
    a = api.create(Network(name="a", vni=1))
    b = api.create(Network(name="b", vni=2))
    p = api.create(Port(network_id=a.id, mac=mac(1)))
    with pytest.raises(ValidationError, match="network_id cannot change"):
        api.update(Port(**{**p.to_dict(), "network_id": b.id}))


def test_delete_refuses_to_orphan_ports_unless_cascade(api):
    net = api.create(Network(name="n", vni=5))
    ports = [api.create(Port(name=f"p{i}", network_id=net.id, mac=mac(i))) for i in range(3)]
    with pytest.raises(BrokenReference, match=r"still used by port .*--cascade"):
        api.delete("network", net.id)
    assert len(api.list("port")) == 3 and api.get("network", net.id) == net
    rev = api.driver.current_revision()
    removed = api.delete("network", net.id, cascade=True)
    assert removed[0] == net and sorted(p.id for p in removed[1:]) == sorted(p.id for p in ports)
    assert api.list("network") == [] and api.list("port") == []
    changes = api.watch(rev + 1, 5)
    assert {(c.revision, c.kind, c.op) for c in changes} == {
        (rev + 1, "network", "delete"), (rev + 1, "port", "delete"),
    }
    assert {c.obj.name for c in changes} == {"n", "p0", "p1", "p2"}  # deletes carry the last value


def test_delete_with_stale_revision_is_a_conflict(api):
    net = api.create(Network(name="n", vni=5))
    api.update(net)
    with pytest.raises(Conflict, match="conflict on network"):
        api.delete("network", net.id, if_revision=net.revision)
    assert api.get("network", net.id)
    with pytest.raises(NotFound, match="no port with id 'x'"):
        api.delete("port", "x")


def test_find_by_id_or_name(api):
    a = api.create(Network(name="same", vni=1))
    b = api.create(Network(name="same", vni=2))
    c = api.create(Network(name="c", vni=3))
    assert api.find("network", "c") == c and api.find("network", a.id) == a
    ambiguous = rf"2 network objects are named 'same' \(({a.id}|{b.id}), .*use the id"
    with pytest.raises(Ambiguous, match=ambiguous):
        api.find("network", "same")
    with pytest.raises(NotFound, match="no network with id or name 'zzz'"):
        api.find("network", "zzz")


def test_snapshot_then_watch_has_no_gap(api):
    net = api.create(Network(name="n", vni=5))
    rev, objs = api.snapshot()
    assert objs == [net]
    port = api.create(Port(network_id=net.id, mac=mac(1)))
    changes = api.watch(rev + 1, 5)
    assert [(c.kind, c.op, c.obj) for c in changes] == [("port", "put", port)]
    assert changes[0].revision == port.revision


def test_bad_records_are_skipped_not_raised(api, caplog):
    net = api.create(Network(name="n", vni=5))
    api.driver.put("network", "foreign", json.dumps({"id": "foreign", "vni": 1, "colour": "red"}).encode())
    api.driver.put("port", "junk", b"\x00not json")
    later = api.create(Network(name="later", vni=6))
    assert [c.obj for c in api.watch(net.revision + 1, 5)] == [later]
    assert {o.id for o in api.list("network")} == {net.id, later.id}
    assert "colour" in caplog.text and "not JSON" in caplog.text
    with pytest.raises(ValidationError, match="network foreign"):
        api.get("network", "foreign")


def test_watch_raises_compacted(api):
    net = api.create(Network(name="n", vni=5))
    api.update(net)
    api.driver.compact(net.revision)
    with pytest.raises(Compacted):
        api.watch(net.revision, 0.5)


def test_put_chassis_registers_then_refreshes(api):
    first = api.put_chassis(Chassis(name="host1", tunnel_ip="192.0.2.1", up=True, heartbeat_at=1.0))
    again = api.put_chassis(Chassis(name="host1", tunnel_ip="192.0.2.1", up=True, heartbeat_at=2.0))
    assert again.unique_key == first.unique_key and again.revision > first.revision
    assert api.get("chassis", "host1").heartbeat_at == 2.0


CREATOR = """
import sys
from hwflow.db import NbApi
from hwflow.model import Network
base = int(sys.argv[2])
with NbApi.from_url(sys.argv[1]) as api:
    for i in range(20):
        api.create(Network(name=f"n{base + i}", vni=base + i))
"""


def test_unique_keys_stay_unique_across_processes(api, url):
    creators = [subprocess.Popen([sys.executable, "-c", CREATOR, url, str(base)]) for base in (1, 1001, 2001)]
    assert [c.wait(90) for c in creators] == [0, 0, 0]
    keys = sorted(n.unique_key for n in api.list("network"))
    assert keys == list(range(1, 61))


def add_ports(api: NbApi, net_id: str, count: int) -> None:
    """Create ports until the network disappears under us."""
    for i in range(count):
        try:
            api.create(Port(network_id=net_id, mac=mac(i)))
        except BrokenReference:
            return


def test_concurrent_port_create_and_network_delete_never_orphan(api):
    for round_ in range(4):
        net = api.create(Network(name="n", vni=100 + round_))
        thread = threading.Thread(target=add_ports, args=(api, net.id, 20))
        thread.start()
        time.sleep(0.005 * round_)
        api.delete("network", net.id, cascade=True)
        thread.join()
        assert {p.network_id for p in api.list("port")} <= {n.id for n in api.list("network")}


def test_list_by_key_prefix(drv):
    for key in ("a/1", "a/2", "ab/1", "b/1"):
        drv.put("idx", key, b"")
    drv.put("other", "a/9", b"")
    assert [r.key for r in drv.list("idx", "a/")[1]] == ["a/1", "a/2"]
    assert [r.key for r in drv.list("idx", "a")[1]] == ["a/1", "a/2", "ab/1"]
    assert drv.list("idx", "c")[1] == []


def test_referrers_come_from_the_index_and_follow_updates(api):
    net = api.create(Network(name="n", vni=1))
    web, db = api.create(SecurityGroup(name="web")), api.create(SecurityGroup(name="db"))
    p1 = api.create(Port(network_id=net.id, mac=mac(1), security_groups=[web.id]))
    p2 = api.create(Port(network_id=net.id, mac=mac(2), security_groups=[web.id, db.id]))
    assert sorted(o.id for o in api.referrers("network", net.id)) == sorted([p1.id, p2.id])
    assert sorted(o.id for o in api.referrers("security_group", web.id)) == sorted([p1.id, p2.id])
    p2 = api.update(Port(**{**p2.to_dict(), "security_groups": [db.id], "name": "renamed"}))
    assert api.referrers("security_group", db.id) == [p2]  # the index holds the referrer as it is now
    assert [o.id for o in api.referrers("security_group", web.id)] == [p1.id]
    assert [o.id for o in api.referrers("security_group", db.id)] == [p2.id]
    api.delete("port", p1.id)
    assert api.referrers("security_group", web.id) == []
    assert [o.id for o in api.referrers("network", net.id)] == [p2.id]
    assert api.referrers("network", net.id, of_kind="subnet") == []


def test_chassis_liveness_lapses_without_heartbeats(api):
    api.heartbeat("host1", ttl=1)
    api.heartbeat("host2", ttl=60)
    assert api.alive_chassis() == {"host1", "host2"}
    api.heartbeat("host1", ttl=1)  # a refresh keeps it
    assert "host1" in api.alive_chassis()
    deadline = time.monotonic() + 15  # etcd may round a lease up to its minimum TTL
    while "host1" in api.alive_chassis():
        assert time.monotonic() < deadline, "host1 still alive without heartbeats"
        time.sleep(0.2)
    assert api.alive_chassis() == {"host2"}
    api.heartbeat("host1", ttl=60)  # an agent that comes back is alive again
    assert api.alive_chassis() == {"host1", "host2"}


@pytest.mark.functional
def test_a_member_whose_port_was_taken_meanwhile_starts_again_on_new_ports(monkeypatch) -> None:
    """Ports are chosen free, then bound by etcd: someone may take one in between (seen in CI)."""
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real, calls = etcd_server.free_ports, []

    def first_one_taken(count: int) -> list[int]:
        calls.append(count)
        ports = real(count)
        return [taken, *ports[1:]] if len(calls) == 1 else ports

    monkeypatch.setattr(etcd_server, "free_ports", first_one_taken)
    try:
        with EtcdCluster(1) as cluster:
            assert len(calls) == 2 and cluster.members[0].client_port != taken
            with NbApi.from_url(cluster.url) as nb:
                assert nb.create(Network(name="after-retry", vni=4242)).revision
    finally:
        squatter.close()
