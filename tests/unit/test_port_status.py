"""Port status records (NbApi.report_ports, ports_up, watch_ports) on the embedded database, and what the Neutron
side's watcher makes of them (hwflow.neutron.status.StatusWatcher, with Neutron's calls as the boundary).

Property: whatever agents report, in any order, ``ports_up`` is what was last said per chassis and port, and a
watcher that read the records once and then followed the changes holds the same."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwflow.db.api import NbApi
from hwflow.model.errors import DatabaseUnavailable

CHASSIS = ("host-a", "host-b", "host-ab")
PORTS = ("p1", "p2", "p3")

reports = st.lists(st.tuples(st.sampled_from(CHASSIS), st.frozensets(st.sampled_from(PORTS)),
                             st.frozensets(st.sampled_from(PORTS))), max_size=12)


@settings(max_examples=60, deadline=None)
@given(steps=reports)
def test_ports_up_is_the_last_report_and_the_watch_replays_it(tmp_path_factory: pytest.TempPathFactory,
                                                              steps: list) -> None:
    with NbApi.from_url(f"sqlite:///{tmp_path_factory.mktemp('status') / 'nb.sqlite'}") as nb:
        revision, _ = nb.ports_up()
        expected: set[tuple[str, str]] = set()
        for chassis, up, down in steps:
            nb.report_ports(chassis, up, down - up)
            expected = (expected - {(chassis, port) for port in down - up}) | {(chassis, port) for port in up}
        assert {(s.chassis, s.port) for s in nb.ports_up()[1]} == expected
        for chassis in CHASSIS:  # by chassis: its own only ("host-a/" is not "host-ab/")
            assert {(s.chassis, s.port) for s in nb.ports_up(chassis)[1]} == {e for e in expected if e[0] == chassis}
        followed: set[tuple[str, str]] = set()
        after = revision + 1
        while True:
            after, changes = nb.watch_ports(after, timeout=0)
            if not changes:
                break
            for change in changes:
                key = (change.status.chassis, change.status.port)
                followed = followed | {key} if change.up else followed - {key}
        assert followed == expected


def test_a_report_stamps_when_it_was_made(tmp_path: Path) -> None:
    with NbApi.from_url(f"sqlite:///{tmp_path / 'nb.sqlite'}") as nb:
        before = time.time()
        nb.report_ports("host-a", ["p1"], [])
        (status,) = nb.ports_up()[1]
        assert status.chassis == "host-a" and status.port == "p1" and before <= status.at <= time.time()
        nb.driver.put("port_status", "host-a/p2", b"not json")  # a record hwflow did not write: skipped
        assert [s.port for s in nb.ports_up()[1]] == ["p1"]


def test_the_watcher_sets_a_port_up_with_its_first_chassis_and_down_with_its_last(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A port moving between hosts (both report it for a while) stays up; no chassis left: down; a port already
    up when the watcher starts is set up, one Neutron shows ACTIVE that no chassis reports is set down; a
    database that was not there at start is opened again."""
    pytest.importorskip("neutron", reason="hwflow's neutron extra is not installed")
    from hwflow.neutron import status

    monkeypatch.setattr(status, "RETRY", 0.1)
    url = f"sqlite:///{tmp_path / 'nb.sqlite'}"
    opened: list[int] = []

    def open_nb() -> NbApi:
        opened.append(1)
        if len(opened) == 1:
            raise DatabaseUnavailable("not there yet")
        return NbApi.from_url(url)

    calls: list[tuple[str, str]] = []
    seen = threading.Condition()

    def record(what: str):
        def call(port: str) -> None:
            with seen:
                calls.append((what, port))
                seen.notify_all()
        return call

    def wait(count: int) -> list[tuple[str, str]]:
        with seen:
            assert seen.wait_for(lambda: len(calls) >= count, timeout=20), calls
            return list(calls)

    with NbApi.from_url(url) as nb:
        nb.report_ports("host-a", ["early"], [])
        watcher = status.StatusWatcher(open_nb, up=record("up"), down=record("down"),
                                       active=lambda: {"early", "stale"})  # Neutron's ACTIVE ports
        watcher.start()
        try:  # at start: the port reported up is set up, the one Neutron holds ACTIVE that none reports down
            assert wait(2) == [("up", "early"), ("down", "stale")]
            nb.report_ports("host-a", ["moving"], [])
            assert wait(3)[2] == ("up", "moving")
            nb.report_ports("host-b", ["moving"], [])  # the destination has it too: nothing to say
            nb.report_ports("host-a", [], ["moving", "early"])  # the source let go: still up on host-b
            assert wait(4)[3] == ("down", "early")
            nb.report_ports("host-b", [], ["moving"])
            assert wait(5)[4] == ("down", "moving")
            time.sleep(0.5)
            assert len(calls) == 5 and len(opened) == 2
        finally:
            watcher.stop()
