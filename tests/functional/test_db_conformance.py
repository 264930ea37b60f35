"""The conformance suite: every database driver behaves the same, through the raw driver and the NB API.

Each test runs unchanged against the embedded SQLite driver, a single real
etcd server and a 3-member etcd cluster on loopback. The etcd servers are
started once per session (private data directories, free ports on
127.0.0.1) and every test gets its own key prefix, so tests never see each
other's records; revisions are global to a server, so tests compare them
relative to where the test started.
"""

from __future__ import annotations

import dataclasses
import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from hwflow.db import Compare, Delete, Driver, NbApi, Put, etcd_server
from hwflow.db.api import COUNTER_TABLE, REF_TABLE, UNIQUE_TABLE, BatchIncomplete, Create, Update, encode
from hwflow.db.etcd_server import EtcdCluster
from hwflow.model import (
    KINDS,
    Ambiguous,
    BrokenReference,
    Chassis,
    Compacted,
    Conflict,
    DatabaseUnavailable,
    HwflowError,
    Network,
    NotFound,
    Port,
    Router,
    RouterPort,
    SecurityGroup,
    Subnet,
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


def test_get_many_reads_records_in_the_order_asked(drv):
    """Few keys of a big table, and many keys of a small one (etcd reads that one whole): the same as get."""
    drv.txn([], [Put("few", f"k{i}", f"v{i}".encode()) for i in range(10)])
    for start in range(0, 600, 100):
        drv.txn([], [Put("many", f"k{i}", f"v{i}".encode()) for i in range(start, start + 100)])
    drv.put("fewer", "k1", b"other table")
    asked = [("few", f"k{i}") for i in range(300)] + [("many", f"k{i}") for i in range(0, 900, 7)]
    asked += [("few", "k3"), ("nothing", "k1"), ("fewer", "k1"), ("many", "k599")]
    got = drv.get_many(asked)
    assert got == [drv.get(table, key) for table, key in asked]
    assert [r.value if r else None for r in got[:12]] == [f"v{i}".encode() for i in range(10)] + [None, None]
    assert sum(r is not None for r in got) == 10 + len(range(0, 600, 7)) + 3
    assert drv.get_many([]) == []


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


def test_a_write_carries_its_time_in_the_envelope_and_a_record_without_it_still_reads(api):
    """The watch says when each put was written (the record's envelope, not a field of the object); a record
    stored before the envelope had it reads as before, with no time; a delete carries none."""
    before = time.time()
    net = api.create(Network(name="blue", vni=10))
    after = time.time()
    [change] = api.watch(net.revision, 5)
    assert change.obj == net and before <= change.written <= after
    assert "_written" not in net.to_dict() and api.get("network", net.id) == net
    old = Network(id="old", name="old", vni=11, unique_key=7)
    api.driver.put("network", "old", encode(old))
    [change] = api.watch(net.revision + 1, 5)
    assert change.obj.id == "old" and change.obj.vni == 11 and change.written is None
    assert api.get("network", "old").name == "old"
    api.delete("network", net.id)
    [change] = api.watch(api.driver.current_revision(), 5)
    assert change.op == "delete" and change.written is None


def test_a_ports_extra_dhcp_opts_are_stored_and_a_port_stored_before_them_reads_with_none(api):
    net = api.create(Network(name="blue", vni=10))
    opts = [{"name": "mtu", "value": "1400", "ip_version": 4}, {"name": "router", "value": "", "ip_version": 4},
            {"name": "dns-server", "value": "2001:db8::53", "ip_version": 6}]
    port = api.create(Port(name="vm1", network_id=net.id, mac=mac(1), extra_dhcp_opts=opts))
    assert api.get("port", port.id).extra_dhcp_opts == opts
    record = json.loads(encode(Port(id="old", name="old", network_id=net.id, mac=mac(2), unique_key=9)))
    del record["extra_dhcp_opts"]  # as written before the field existed
    api.driver.put("port", "old", json.dumps(record).encode())
    assert api.get("port", "old").extra_dhcp_opts == []


def test_admin_state_is_stored_and_watched_and_a_record_stored_before_it_reads_as_up(api):
    net = api.create(Network(name="blue", vni=10, admin_state_up=False))
    port = api.create(Port(name="vm1", network_id=net.id, mac=mac(1)))
    assert api.get("network", net.id).admin_state_up is False and api.get("port", port.id).admin_state_up is True
    down = api.update(dataclasses.replace(port, admin_state_up=False))
    [change] = api.watch(down.revision, 5)
    assert change.obj.admin_state_up is False and api.get("port", port.id).admin_state_up is False
    for obj in (Network(id="old", name="old", vni=11, unique_key=7),
                Port(id="old", name="old", network_id=net.id, mac=mac(2), unique_key=9)):
        record = json.loads(encode(obj))
        del record["admin_state_up"]  # as written before the field existed
        api.driver.put(obj.kind, "old", json.dumps(record).encode())
        assert api.get(obj.kind, "old").admin_state_up is True


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


# Batches: many objects checked together, written in as few transactions as the driver takes


def snapshot_all(drv: Driver) -> tuple[int, list]:
    """Every record the NB API keeps (objects and its index tables), at one revision."""
    return drv.snapshot([*KINDS, COUNTER_TABLE, UNIQUE_TABLE, REF_TABLE])


def a_topology(ports: int, first_mac: int = 0) -> list:
    """A network, its subnet and ``ports`` ports on it, the ports naming the others by id (same batch)."""
    return [
        Network(id="net-a", name="a", vni=7),
        Subnet(id="sub-a", name="a-v4", network_id="net-a", cidr="10.0.0.0/16"),
        SecurityGroup(id="web", name="web"),
        *(Port(name=f"p{i}", network_id="net-a", mac=mac(first_mac + i), ips=[f"10.0.{i // 200}.{i % 200 + 2}"],
               security_groups=["web"]) for i in range(ports)),
    ]


def test_a_batch_is_written_readable_and_watched(api):
    before = api.driver.current_revision()
    api.create(Port(network_id=api.create(Network(name="other", vni=1)).id, mac=mac(9999)))  # port counter at 1
    start = api.driver.current_revision() + 1
    stored = api.create_many(a_topology(150))
    assert [o.name for o in stored] == ["a", "a-v4", "web", *(f"p{i}" for i in range(150))]
    assert all(api.get(o.kind, o.id) == o for o in stored)
    ports = [o for o in stored if isinstance(o, Port)]
    assert [p.unique_key for p in ports] == list(range(2, 152))  # after the existing port's, in batch order
    assert len({p.id for p in ports}) == 150 and sorted(o.id for o in api.referrers("network", "net-a", Port)) == \
        sorted(p.id for p in ports)
    revisions = sorted({o.revision for o in stored})
    if api.driver.max_txn_ops is None:
        assert revisions == [start]  # one transaction
    else:  # 150 ports take 4 operations each: several transactions, in order, one revision each
        assert len(revisions) >= 150 * 4 // api.driver.max_txn_ops
        assert revisions == list(range(start, start + len(revisions)))
        assert [o.revision for o in stored] == sorted(o.revision for o in stored)
    changes, rev = [], start
    while len(changes) < len(stored):
        got = api.watch(rev, 5)
        assert got, f"the watch stopped after {len(changes)} of {len(stored)} changes"
        changes += got
        rev = got[-1].revision + 1
    assert [(c.op, c.obj) for c in changes] == [("put", o) for o in stored]
    assert before < start


def test_a_batch_with_a_bad_object_writes_nothing(api):
    api.create(Network(id="net-b", name="b", vni=8))
    before = snapshot_all(api.driver)
    batch = a_topology(150)
    cases = [
        (Port(name="bad-mac", network_id="net-a", mac="01:00:5e:00:00:01"), ValidationError,
         r"port .* \(bad-mac\): mac '01:00:5e:00:00:01' must be a unicast MAC"),
        (Port(name="dangling", network_id="nowhere", mac=mac(500)), BrokenReference,
         r"port .* \(dangling\): network_id 'nowhere' names no existing network"),
        (Port(name="outside", network_id="net-a", mac=mac(500), ips=["192.0.2.1"]), ValidationError,
         r"port .* \(outside\): ips .* has 192.0.2.1, which lies in none of the network's subnets \(10.0.0.0/16\)"),
        (Network(id="net-b", vni=9), Conflict, "conflict on network net-b: .*a network with this id already exists"),
        (Port(name="late", network_id="net-z", mac=mac(500)), BrokenReference,
         r"port .* \(late\): network_id 'net-z' names a network this batch creates later; put the network before"),
        (SecurityGroup(id="web", name="again"), ValidationError,
         r"security_group web \(again\): written twice in one batch \(writes 3 and 154\); write each object once"),
    ]
    for bad, error, message in cases:
        objs = [*batch, bad, Network(id="net-z", vni=10)] if "late" in message else [*batch, bad]
        with pytest.raises(error, match=message):
            api.create_many(objs)
        assert snapshot_all(api.driver) == before, f"{bad.label()} left something written"


def test_unique_values_clash_inside_a_batch_and_with_the_database(api):
    api.create_many(a_topology(2))
    [stored] = [p for p in api.list("port") if p.name == "p1"]
    before = snapshot_all(api.driver)
    with pytest.raises(ValidationError, match=rf"port .* \(twin\): mac {mac(900)} on network net-a is already used by "
                       r"port .* \(earlier in this batch\); choose another"):
        api.create_many([*(Port(name=f"q{i}", network_id="net-a", mac=mac(800 + i)) for i in range(100)),
                         Port(name="first", network_id="net-a", mac=mac(900)),
                         Port(name="twin", network_id="net-a", mac=mac(900))])
    with pytest.raises(ValidationError, match=rf"port .* \(copy\): ip 10.0.0.3 on network net-a is already used by "
                       rf"port {stored.id}; choose another"):
        api.create_many([*(Port(name=f"q{i}", network_id="net-a", mac=mac(800 + i)) for i in range(100)),
                         Port(name="copy", network_id="net-a", mac=mac(999), ips=["10.0.0.3"])])
    with pytest.raises(ValidationError, match="vni 7 is already used by network net-a"):
        api.create_many([Network(name="again", vni=7)])
    assert snapshot_all(api.driver) == before


def test_a_batch_updates_and_creates_and_may_reuse_what_it_frees(api):
    net, port = api.create_many(a_topology(1))[0], api.list("port")[0]
    moved = Port(**{**port.to_dict(), "ips": ["10.0.0.99"], "name": "moved"})
    stored = api.apply([
        Update(Network(**{**net.to_dict(), "mtu": 9000})),
        Update(moved),  # gives up 10.0.0.2 ...
        Create(Port(name="taker", network_id=net.id, mac=mac(77), ips=["10.0.0.2"])),  # ... which this takes
    ])
    assert api.get("network", net.id).mtu == 9000 and api.get("network", net.id).unique_key == net.unique_key
    assert api.get("port", port.id).ips == ["10.0.0.99"] and api.get("port", stored[2].id).ips == ["10.0.0.2"]
    for ip, holder in (("10.0.0.99", port.id), ("10.0.0.2", stored[2].id)):  # the index holds both, as they are
        with pytest.raises(ValidationError, match=f"ip {ip} on network net-a is already used by port {holder};"):
            api.create(Port(network_id=net.id, mac=mac(78), ips=[ip]))
    with pytest.raises(Conflict, match=f"conflict on port {port.id}: expected revision {port.revision}"):
        api.apply([Create(Port(name="x", network_id=net.id, mac=mac(79))), Update(moved, if_revision=port.revision)])
    assert {p.name for p in api.list("port")} == {"moved", "taker"}


def test_a_value_taken_while_a_batch_is_written_is_a_conflict_naming_the_object(api, url, monkeypatch):
    """Another writer takes a MAC of the batch between its check and its write: that transaction fails.

    The other writer creates a router port, so no counter the batch relies on moves (a moved one
    would have the batch checked again, and refused then as already used).
    """
    api.create_many([Network(id="net-a", vni=7), Subnet(id="sub-a", network_id="net-a", cidr="10.0.0.0/24"),
                     Router(id="r")])
    check = api._check

    def then_someone_takes_a_mac(writes):
        checked = check(writes)
        with NbApi.from_url(url) as other:
            other.create(RouterPort(name="intruder", router_id="r", network_id="net-a", subnet_id="sub-a",
                                    mac=mac(50), ip="10.0.0.1"))
        monkeypatch.setattr(api, "_check", check)  # only once
        return checked

    monkeypatch.setattr(api, "_check", then_someone_takes_a_mac)
    batch = [Port(name=f"p{i}", network_id="net-a", mac=mac(i)) for i in range(60)]
    taken = rf"port .* \(p50\): mac {mac(50)} on network net-a was taken by router_port .* while this write was"
    with pytest.raises(HwflowError, match=taken) as info:
        api.create_many(batch)
    names = {p.name for p in api.list("port")}
    if api.driver.max_txn_ops is None:  # one transaction: nothing of the batch written
        assert isinstance(info.value, Conflict) and names == set()
    else:  # 3 operations a port: p50 is not in the first transaction, which stays
        assert isinstance(info.value, BatchIncomplete) and isinstance(info.value.cause, Conflict)
        written = [o.name for o in info.value.written]
        assert written == [f"p{i}" for i in range(len(written))] and 0 < len(written) <= 50
        assert names == set(written)
        assert info.value.not_written[0].name == f"p{len(written)}" and not info.value.unknown
        assert f"{len(written)} of the batch's 60 objects were written and stay" in str(info.value)


def test_a_counter_moved_while_a_batch_is_written_is_retried(api, url, monkeypatch):
    api.create(Network(id="net-a", vni=7))
    check, calls = api._check, []

    def then_someone_creates_a_port(writes):
        calls.append(len(writes))
        checked = check(writes)
        if len(calls) == 1:
            with NbApi.from_url(url) as other:
                other.create(Port(name="other", network_id="net-a", mac=mac(999)))
        return checked

    monkeypatch.setattr(api, "_check", then_someone_creates_a_port)
    stored = api.create_many([Port(name=f"p{i}", network_id="net-a", mac=mac(i)) for i in range(60)])
    assert calls == [60, 60] and [api.get("port", p.id) for p in stored] == stored
    keys = sorted(p.unique_key for p in api.list("port"))
    assert keys == list(range(1, 62))  # the other writer's key and the batch's, none twice


def test_a_batch_split_in_transactions_checks_the_rest_again_after_a_race(api, url, monkeypatch):
    """Transactions of 16 operations (any driver): a port created between two of them moves the counter."""
    api.create(Network(id="net-a", vni=7))
    monkeypatch.setattr(api.driver, "max_txn_ops", 16)
    txn, check, checked = api.driver.txn, api._check, []

    def counted(writes):
        checked.append(len(writes))
        return check(writes)

    def someone_writes_after_the_first(compares, ops):
        revision = txn(compares, ops)
        if len(checked) == 1:
            with NbApi.from_url(url) as other:
                other.create(Port(name="other", network_id="net-a", mac=mac(999)))
        return revision

    monkeypatch.setattr(api, "_check", counted)
    monkeypatch.setattr(api.driver, "txn", someone_writes_after_the_first)
    stored = api.create_many([Port(name=f"p{i}", network_id="net-a", mac=mac(i)) for i in range(20)])
    assert checked == [20, 15]  # 5 ports (3 operations each, and the counter) went first; the rest checked again
    assert [api.get("port", p.id) for p in stored] == stored
    assert sorted(p.unique_key for p in api.list("port")) == list(range(1, 22))


def test_a_database_lost_part_way_says_what_was_written(api, monkeypatch):
    api.create(Network(id="net-a", vni=7))
    monkeypatch.setattr(api.driver, "max_txn_ops", 16)
    txn, calls = api.driver.txn, []

    def fails_the_third(compares, ops):
        calls.append(len(ops))
        if len(calls) == 3:
            raise DatabaseUnavailable("cannot reach the database (injected)")
        return txn(compares, ops)

    monkeypatch.setattr(api.driver, "txn", fails_the_third)
    with pytest.raises(BatchIncomplete) as info:
        api.create_many([Port(name=f"p{i}", network_id="net-a", mac=mac(i)) for i in range(20)])
    error = info.value
    assert [o.name for o in error.written] == [f"p{i}" for i in range(10)]
    assert [o.name for o in error.unknown] == [f"p{i}" for i in range(10, 15)]
    assert [o.name for o in error.not_written] == [f"p{i}" for i in range(15, 20)]
    assert sorted(p.name for p in api.list("port")) == sorted(o.name for o in error.written)
    assert str(error) == (
        "cannot reach the database (injected) [the batch stopped there: 10 of the batch's 20 objects were written "
        f"and stay (10 port; the last {error.written[-1].label()}); 5 may or may not have been (5 port, from "
        f"{error.unknown[0].label()} on: the database did not answer); 5 were not (5 port, from "
        f"{error.not_written[0].label()} on)]"
    )


# Random batches, good and bad mixed, from a small set of ids and values so that they clash: a batch
# small enough for one transaction is written whole or not at all, and does what its writes made one
# by one would do.

# Repeats weigh the draw: most writes pass, enough of them clash (an id or value taken, a reference to
# nothing or to what comes later, a stale revision, a subnet overlap, an address outside the subnets).
NETWORK_IDS, SUBNET_IDS = ("n0", *(f"n{i}" for i in range(2, 12))), ("s0", *(f"s{i}" for i in range(1, 10)))
PORT_IDS = ("p0", *(f"p{i}" for i in range(2, 20)))
NETWORK_REFS = ("n0", "n0", "n0", "n1", "n1", "n1", "n1", "n2", "nx")
CIDRS = ("10.1.0.0/24", "10.2.0.0/24", "10.3.0.0/24", "10.0.0.0/23")
IPS = ("10.0.0.1", *(f"10.0.0.{i}" for i in range(5, 15)), "10.1.0.5", "192.0.2.1")
ips_st = st.lists(st.sampled_from(IPS), max_size=2, unique=True)


def base_topology(api: NbApi) -> dict[str, int]:
    """Two networks, a subnet on the first, a port on each: what the batches meet; their revisions by id."""
    stored = api.create_many([
        Network(id="n0", vni=1), Network(id="n1", vni=2), Subnet(id="s0", network_id="n0", cidr="10.0.0.0/24"),
        Port(id="p0", network_id="n0", mac=mac(1), ips=["10.0.0.1"]), Port(id="p1", network_id="n1", mac=mac(2)),
    ])
    return {o.id: o.revision for o in stored}


writes_st = st.lists(st.one_of(
    st.builds(lambda i, vni: Create(Network(id=i, vni=vni)), st.sampled_from(NETWORK_IDS), st.integers(0, 30)),
    st.builds(lambda i, net, cidr: Create(Subnet(id=i, network_id=net, cidr=cidr)),
              st.sampled_from(SUBNET_IDS), st.sampled_from(NETWORK_REFS), st.sampled_from(CIDRS)),
    st.builds(lambda i, net, m, ips: Create(Port(id=i, network_id=net, mac=mac(m) if m else "bad", ips=ips)),
              st.sampled_from(PORT_IDS), st.sampled_from(NETWORK_REFS), st.integers(0, 60), ips_st),
    st.builds(lambda i, m, ips, name, rev: ("update", i, m, ips, name, rev),
              st.sampled_from(("p0", "p1")), st.integers(1, 60), ips_st, st.sampled_from(("", "renamed")),
              st.sampled_from(("read", "read", "read", "blind", "blind", "stale"))),
), min_size=1, max_size=8, unique_by=lambda w: ("port", w[1]) if isinstance(w, tuple) else (w.obj.kind, w.obj.id))


def made(api: NbApi, drawn: list) -> list:
    """The base topology stored through ``api``, and the drawn writes made against it (an update drawn as a
    tuple becomes one of the port as stored, at its revision as read, a stale one, or none)."""
    revisions = base_topology(api)
    ports = {p.id: p for p in api.list("port")}
    writes = []
    for write in drawn:
        if isinstance(write, tuple):
            _, ident, m, ips, name, rev = write
            changed = Port(**{**ports[ident].to_dict(), "mac": mac(m), "ips": ips, "name": name, "revision": 0})
            write = Update(changed, {"read": revisions[ident], "stale": revisions[ident] + 100, "blind": None}[rev])
        writes.append(write)
    return writes


def outcome(api: NbApi, writes: list) -> tuple[str, list]:
    """Apply each write alone, in order, stopping at the first refused; what is stored then, revisions aside."""
    for write in writes:
        try:
            api.apply([write])
        except HwflowError as exc:
            return type(exc).__name__, []
    return "ok", sorted((o.kind, o.id, json.dumps({**o.to_dict(), "revision": 0}, sort_keys=True))
                        for o in api.snapshot()[1])


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(drawn=writes_st)
def test_a_batch_is_written_whole_or_not_at_all_as_its_writes_one_by_one(url, drawn):
    example = uuid.uuid4().hex[:8]
    with NbApi.from_url(f"{url}-b{example}") as batch_api, NbApi.from_url(f"{url}-s{example}") as single_api:
        expected, after = outcome(single_api, made(single_api, drawn))
        event(f"one by one: {expected}")
        writes = made(batch_api, drawn)
        before = snapshot_all(batch_api.driver)
        try:
            stored = batch_api.apply(writes)
        except HwflowError as exc:
            assert not isinstance(exc, BatchIncomplete)  # one transaction: nothing can be left half written
            assert expected != "ok", f"one by one they pass, the batch was refused: {exc}"
            assert snapshot_all(batch_api.driver) == before
            return
        assert expected == "ok", "the batch passed where its writes one by one were refused"
        assert len({o.revision for o in stored}) == 1  # one transaction
        assert [batch_api.get(o.kind, o.id) for o in stored] == stored
        assert outcome(batch_api, [])[1] == after
