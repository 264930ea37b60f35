"""What is particular to the SQLite driver (its file, its bounded event log) and to driver loading.

Behaviour every driver shares is in tests/functional/test_db_conformance.py,
which runs against SQLite everywhere and against real etcd where it can.
"""

from __future__ import annotations

import pytest

from hwflow.db import NbApi, Put
from hwflow.db.etcd import parse_url
from hwflow.db.etcd_server import free_port
from hwflow.db.sqlite import SqliteDriver
from hwflow.model import Compacted, DatabaseUnavailable, Network


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "hwt-db" / "nb.sqlite")


def test_the_event_log_is_bounded(path):
    with SqliteDriver(path, keep_revisions=10) as drv:
        for i in range(100):
            drv.put("t", str(i % 3), b"v")
        with pytest.raises(Compacted) as info:
            drv.watch(1, 0)
        assert 80 <= info.value.compact_revision <= 90
        events = drv.watch(info.value.compact_revision + 1, 0)
        assert [e.revision for e in events] == list(range(info.value.compact_revision + 1, 101))
        assert len(drv.list("t")[1]) == 3


def test_unopenable_paths_name_the_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(DatabaseUnavailable, match=rf"directory {blocker} for the database .*--database"):
        SqliteDriver(str(blocker / "nb.sqlite"))
    with pytest.raises(DatabaseUnavailable, match=rf"cannot use the database {tmp_path}:"):
        SqliteDriver(str(tmp_path))
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    with pytest.raises(DatabaseUnavailable, match="garbage.sqlite"):
        SqliteDriver(str(garbage))
    assert garbage.read_bytes() == b"not a database at all" * 100


@pytest.mark.parametrize("url", ["sqlite://", "sqlite:///", "sqlite:///:memory:"])
def test_bad_sqlite_urls(url):
    with pytest.raises(DatabaseUnavailable, match="sqlite:///PATH"):
        SqliteDriver.from_url(url)


def test_data_survives_reopening(path):
    with NbApi.from_url(f"sqlite:///{path}") as nb:
        net = nb.create(Network(name="n", vni=1))
    with NbApi.from_url(f"sqlite:///{path}") as nb:
        assert nb.get("network", net.id) == net


def test_unknown_scheme_lists_installed_drivers():
    with pytest.raises(DatabaseUnavailable, match=r"'mysql://x'.*installed drivers: .*sqlite"):
        NbApi.from_url("mysql://x")




def test_etcd_is_an_installed_driver():
    with pytest.raises(DatabaseUnavailable, match=r"installed drivers: etcd, etcds, sqlite"):
        NbApi.from_url("mysql://x")


@pytest.mark.parametrize(("url", "endpoints", "prefix"), [
    ("etcd://127.0.0.1:2379", [("127.0.0.1", 2379)], "hwflow"),
    ("etcd://a:1,b:2,c:3/site-1", [("a", 1), ("b", 2), ("c", 3)], "site-1"),
    ("etcd://[::1]:2379/x/y/", [("::1", 2379)], "x/y"),
])
def test_etcd_urls(url, endpoints, prefix):
    assert parse_url(url) == (endpoints, prefix, False)
    assert parse_url("etcds" + url[4:]) == (endpoints, prefix, True)


@pytest.mark.parametrize("url", ["etcd://", "etcd://host", "etcd://host:0", "etcd://a:1,:2", "etcd://h:port"])
def test_bad_etcd_urls_say_what_to_write(url):
    with pytest.raises(DatabaseUnavailable, match=r"bad etcd database URL .*etcd://HOST:PORT"):
        parse_url(url)


def test_unreachable_etcd_names_every_endpoint_and_the_remedy(unused_port):
    with NbApi.from_url(f"etcd://127.0.0.1:{unused_port},localhost:{unused_port}") as nb:
        with pytest.raises(DatabaseUnavailable, match=rf"cannot reach etcd at 127.0.0.1:{unused_port},"
                           rf"localhost:{unused_port} .*check that etcd is running"):
            nb.list("network")


@pytest.fixture
def unused_port() -> int:
    return free_port()


def test_a_prefix_read_is_a_key_range_that_finds_what_starts_with_the_prefix(path):
    """Keys are read as an index range (not every key tested): right at the edges of UTF-8 too."""
    keys = ["a", "a/", "a/1", "a/1/x", "a0", "a\u00ff", "a\u0100", "\ud7ff", "\ud7ff/x", "\ue000", "\U0010ffff",
            "\U0010ffff/x", "b", "a/\U0010ffff"]
    with SqliteDriver(path) as drv:
        drv.txn([], [Put("t", key, b"") for key in keys])
        drv.put("u", "a/1", b"")  # another table's key is never read
        for prefix in ("a", "a/", "a/1", "a\u00ff", "\ud7ff", "\ue000", "\U0010ffff", "a/\U0010ffff", "c"):
            assert [r.key for r in drv.list("t", prefix)[1]] == sorted(k for k in keys if k.startswith(prefix))
        statements: list[str] = []
        drv._conn().set_trace_callback(statements.append)  # the SQL the driver runs, values filled in
        drv.list("t", "a/")
        drv._conn().set_trace_callback(None)
        [select] = [s for s in statements if s.startswith("SELECT tbl, key")]
        plan = " ".join(str(row) for row in drv._conn().execute(f"EXPLAIN QUERY PLAN {select}"))
        assert "SEARCH objects USING PRIMARY KEY (tbl=? AND key>? AND key<?)" in plan, plan
