"""The agent's tc side: desired-state diffs against a real simulated eswitch, and faults.

The eswitch (hwflow.sim.eswitch) runs in-process behind its real control
socket; the backend talks to it through the same TcClient the agent uses.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc.backend import Representor, TcBackend, diff, identity
from hwflow.sim.eswitch import Eswitch
from hwflow.sim.profile import load_profile
from hwflow.sim.server import serve_in_background

REP = (11, 12, 13)


def rule(mac: int, out: int, ifindex: int = REP[0], prio: int = 1) -> fl.FlowerRule:
    return fl.FlowerRule(ifindex, prio, 0, fl.ETH_P_IP, fl.FlowerKeys(eth_dst=mac), (fl.Mirred(out),))


@pytest.fixture
def sim() -> Iterator[tuple[str, Eswitch]]:
    tmp = tempfile.mkdtemp(prefix="hwt-tcb-")  # AF_UNIX paths must stay short
    path = os.path.join(tmp, "ctl")
    eswitch = Eswitch("sim0", load_profile("sim-basic"), list(REP))
    stop = serve_in_background(path, eswitch)
    try:
        yield path, eswitch
    finally:
        stop()
        shutil.rmtree(tmp, ignore_errors=True)


def apply(backend: TcBackend, endpoint: str, desired: list[fl.FlowerRule]) -> None:
    changes = backend.plan([(endpoint, r) for r in desired], [Representor(i, endpoint) for i in REP])
    backend.remove(changes)
    backend.install(changes)


def installed(backend: TcBackend, endpoint: str) -> dict[tuple, fl.FlowerRule]:
    return {identity(r): r for i in REP for r, _ in backend.installed(endpoint, i)}


rules = st.builds(rule, st.integers(1, 6), st.sampled_from(REP[1:]), st.sampled_from(REP), st.integers(1, 2))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(rules, max_size=8), min_size=1, max_size=4))
def test_each_sync_makes_the_nic_equal_to_the_desired_set_and_keeps_handles(sim, sequence):
    path, _ = sim
    endpoint = f"unix:{path}"
    backend = TcBackend()
    try:
        apply(backend, endpoint, [])
        for desired in sequence:
            wanted = {identity(r): r for r in desired}  # one rule per identity: the last one asked wins
            before = installed(backend, endpoint)
            apply(backend, endpoint, list(wanted.values()))
            after = installed(backend, endpoint)
            assert set(after) == set(wanted)
            for key, rule_now in after.items():
                assert rule_now.actions == wanted[key].actions
                if key in before:
                    assert rule_now.handle == before[key].handle  # replaced in place, never re-added
            assert not diff(list(wanted.values()), list(after.values()), endpoint)
    finally:
        apply(backend, endpoint, [])
        backend.close()


def test_a_vanished_nic_is_skipped_logged_once_and_found_again(sim, caplog):
    path, _ = sim
    endpoint = f"unix:{path}"
    backend = TcBackend()
    apply(backend, endpoint, [rule(1, REP[1])])
    tmp = os.path.dirname(path)
    os.rename(path, os.path.join(tmp, "gone"))  # the socket vanishes under the agent
    backend.close()
    with caplog.at_level(logging.ERROR):
        changes = backend.plan([(endpoint, rule(2, REP[1]))], [Representor(REP[0], endpoint)])
        assert not changes
        backend.plan([(endpoint, rule(2, REP[1]))], [Representor(REP[0], endpoint)])
    assert len([r for r in caplog.records if "OVS carries the traffic" in r.message]) == 1
    assert endpoint in backend.unreachable()
    os.rename(os.path.join(tmp, "gone"), path)
    apply(backend, endpoint, [rule(2, REP[1])])
    assert [r.keys.eth_dst for r in installed(backend, endpoint).values()] == [2]
    assert endpoint not in backend.unreachable()
    backend.close()


def test_refusals_are_remembered_until_forgotten():
    tmp = tempfile.mkdtemp(prefix="hwt-tcb-")
    path = os.path.join(tmp, "ctl")
    stop = serve_in_background(path, Eswitch("tiny", load_profile("sim-tiny"), list(REP)))
    endpoint = f"unix:{path}"
    backend = TcBackend()
    try:
        desired = [rule(m, REP[1]) for m in range(1, 11)]  # sim-tiny holds 8
        apply(backend, endpoint, desired)
        assert len(installed(backend, endpoint)) == 8
        refused = backend.refused()
        assert len(refused) == 2 and all("No space" in text or "ENOSPC" in text or "full" in text
                                         for text in refused.values())
        backend.forget_refusals()
        assert backend.refused() == {}
    finally:
        backend.close()
        stop()
        shutil.rmtree(tmp, ignore_errors=True)
