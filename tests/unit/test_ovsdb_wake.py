"""Which Interface row changes call OvsdbClient's change callback (the IDL's notices, faked).

python-ovs hands an update over with the row as it is now and a row of the
old values of the changed columns only; reading any other column of it
raises AttributeError. The functional test (tests/functional/test_ovsdb_events.py)
shows the same against a real ovsdb-server.
"""

from __future__ import annotations

import gc
import uuid
from types import SimpleNamespace

import pytest

from hwflow.backends.ovs.ovsdb import WAKE_COLUMNS, _InterfaceChanged


def row() -> SimpleNamespace:
    return SimpleNamespace(name="tap1", ofport=[5], external_ids={"iface-id": "p1"}, statistics={})


def old(**changed: object) -> SimpleNamespace:
    """The notice's old row: only the columns that changed exist."""
    return SimpleNamespace(**changed)


@pytest.fixture
def watcher() -> _InterfaceChanged:
    return _InterfaceChanged(lambda *_: None)


@pytest.mark.parametrize("column", WAKE_COLUMNS)
def test_a_change_of_a_column_the_agent_reads_calls_back(watcher, column):
    assert watcher.match_fn("update", row(), old(**{column: None}))


@pytest.mark.parametrize("columns", [
    {"statistics": {"rx_packets": 1}},
    {"link_state": "up", "link_resets": 1},
    {"other_config": {}},
    {"mtu": 1500, "statistics": {}},
])
def test_a_change_of_anything_else_does_not(watcher, columns):
    assert not watcher.match_fn("update", row(), old(**columns))


def test_one_wake_column_among_others_calls_back(watcher):
    assert watcher.match_fn("update", row(), old(statistics={}, ofport=[]))


def test_creation_and_deletion_call_back_for_interfaces_only(watcher):
    assert watcher.match_fn("create", row(), None) and watcher.match_fn("delete", row(), None)
    assert watcher.table == "Interface" and set(watcher.events) == {"create", "update", "delete"}


def test_a_matched_event_leaves_no_cyclic_garbage(watcher):
    """ovsdbapp's RowEvent.matches built a class per column for a debug line even with debug off; garbage the
    collector must find, and which a gc_paused(keep=True) block running meanwhile froze for good (a leak the
    soak found: hwflow bench soak)."""
    notice = SimpleNamespace(_table=SimpleNamespace(name="Interface", columns={}), uuid=uuid.uuid4(), name="tap1")
    gc.collect()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        assert all(watcher.matches(event, notice) for event in ("create", "update", "delete") for _ in range(5))
        gc.collect()
        classes = [o for o in gc.garbage if isinstance(o, type)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert classes == []
