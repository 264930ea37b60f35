"""TcBackend.plan_delta (deltas from the state held in memory) and plan's repairs, against the simulated eswitch.

The eswitch (hwflow.sim.eswitch) runs in-process behind its real control
socket and the backend reaches it through the same TcClient the agent uses.
Every request datagram the eswitch gets is recorded, so a test sees exactly
which messages the backend sent (dumps included); what the NIC holds is read
from the eswitch itself, never through the backend.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwflow.backends.tc import flower as fl
from hwflow.backends.tc import netlink as nl
from hwflow.backends.tc.backend import Representor, TcBackend, TcDiff, identity
from hwflow.backends.tc.transport import SimSocketTransport, TcClient
from hwflow.sim.eswitch import Eswitch
from hwflow.sim.profile import load_profile
from hwflow.sim.server import serve_in_background

REP = (11, 12, 13)


def rule(mac: int, out: int, ifindex: int = REP[0], prio: int = 1) -> fl.FlowerRule:
    return fl.FlowerRule(ifindex, prio, 0, fl.ETH_P_IP, fl.FlowerKeys(eth_dst=mac), (fl.Mirred(out),))


class Nic:
    """A simulated eswitch on its control socket, with a log of the messages it was sent."""

    def __init__(self, profile: str = "sim-basic") -> None:
        self.tmp = tempfile.mkdtemp(prefix="hwt-tcd-")  # AF_UNIX paths must stay short
        self.path = os.path.join(self.tmp, "ctl")
        self.endpoint = f"unix:{self.path}"
        self.profile = profile
        self.stop = lambda: None
        self.start()

    def start(self) -> None:
        """A fresh eswitch (a restarted NIC: no rules) behind the same socket path."""
        self.stop()
        self.eswitch = Eswitch("sim0", load_profile(self.profile), list(REP))
        self.seen: Counter[str] = Counter()
        handle = self.eswitch.handle_request

        def recording(data: bytes) -> list[bytes]:
            for msg in nl.split_messages(data):
                self.seen[_kind(msg)] += 1
            return handle(data)

        self.eswitch.handle_request = recording  # type: ignore[method-assign]
        self.stop = serve_in_background(self.path, self.eswitch)

    def rules(self) -> dict[tuple[str, int], dict[tuple, fl.FlowerRule]]:
        """What the NIC holds, in the terms of TcBackend.installed_rules()."""
        return {(self.endpoint, i): {identity(r): r for r, _ in self.eswitch.rules(i)} for i in REP}

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _kind(msg: nl.Message) -> str:
    if msg.type == fl.RTM_GETTFILTER:
        return "dump" if msg.flags & nl.NLM_F_DUMP == nl.NLM_F_DUMP else "get"
    if msg.type == fl.RTM_DELTFILTER:
        return "delete"
    if msg.type == fl.RTM_NEWTFILTER:
        return "replace" if msg.flags & nl.NLM_F_REPLACE else "add"
    return str(msg.type)


@pytest.fixture
def nic() -> Iterator[Nic]:
    nic = Nic()
    try:
        yield nic
    finally:
        nic.close()


@pytest.fixture
def backend() -> Iterator[TcBackend]:
    backend = TcBackend()
    try:
        yield backend
    finally:
        backend.close()


def managed(nic: Nic) -> list[Representor]:
    return [Representor(i, nic.endpoint) for i in REP]


def apply(backend: TcBackend, changes: TcDiff) -> None:
    backend.remove(changes)
    backend.install(changes)


def full(backend: TcBackend, nic: Nic, desired: list[fl.FlowerRule]) -> TcDiff:
    changes = backend.plan([(nic.endpoint, r) for r in desired], managed(nic))
    apply(backend, changes)
    return changes


def delta(backend: TcBackend, nic: Nic, added: list[fl.FlowerRule], removed: list[fl.FlowerRule]) -> TcDiff:
    changes = backend.plan_delta([(nic.endpoint, r) for r in added], [(nic.endpoint, r) for r in removed])
    apply(backend, changes)
    return changes


def summary(rules: dict) -> dict:
    """Device -> identity -> (handle, actions): what memory and the NIC must agree on."""
    return {dev: {k: (r.handle, r.actions) for k, r in by_id.items()} for dev, by_id in rules.items()}


def test_a_delta_touches_only_the_rules_it_names_and_dumps_nothing(nic: Nic, backend: TcBackend) -> None:
    base = [rule(m, REP[1], ifindex=REP[m % 3]) for m in range(1, 31)]
    full(backend, nic, base)
    assert nic.seen["dump"] == 3 and nic.seen["add"] == 30
    before = nic.rules()
    nic.seen.clear()

    new = rule(100, REP[2])
    changed = rule(4, REP[0], ifindex=REP[1])  # base[3]'s identity (mac 4 on REP[1]), another output
    changes = delta(backend, nic, added=[new, changed], removed=[base[6], base[3]])

    assert (len(changes.add), len(changes.replace), len(changes.delete)) == (1, 1, 1)
    assert nic.seen == Counter(add=1, replace=1, delete=1)  # no dump: planned from memory
    after = nic.rules()
    assert summary(backend.installed_rules()) == summary(after)
    by_key = {k: r for rules in before.values() for k, r in rules.items()}
    now = {k: r for rules in after.values() for k, r in rules.items()}
    assert now[identity(changed)].handle == by_key[identity(changed)].handle  # replaced in place
    assert now[identity(changed)].actions == changed.actions
    assert identity(base[6]) not in now and identity(new) in now
    untouched = set(by_key) - {identity(base[6]), identity(changed)}
    assert all(now[k] == by_key[k] for k in untouched)

    nic.seen.clear()
    assert not delta(backend, nic, [], [])  # an empty delta sends nothing at all
    assert not delta(backend, nic, [base[0]], [base[0]])  # nor one that gives a rule back as it is
    assert nic.seen == Counter()


def test_memory_follows_what_the_nic_answered_refused_rules_are_not_installed(backend: TcBackend) -> None:
    nic = Nic("sim-tiny")  # holds 8 rules
    try:
        desired = [rule(m, REP[1]) for m in range(1, 11)]
        full(backend, nic, desired)
        assert len(backend.refused()) == 2
        assert summary(backend.installed_rules()) == summary(nic.rules())
        assert sum(len(r) for r in backend.installed_rules().values()) == 8
        refused = [r for r in desired if identity(r) in backend.refused()]
        nic.seen.clear()

        # Removing a refused rule sends nothing; removing an installed one makes room for a new one.
        changes = delta(backend, nic, [rule(50, REP[1])], [refused[0], desired[0]])
        assert (len(changes.add), len(changes.delete)) == (1, 1)
        assert nic.seen == Counter(add=1, delete=1)
        assert summary(backend.installed_rules()) == summary(nic.rules())

        # A refusal for room (ENOSPC) leaves the device known: no dump next time.
        delta(backend, nic, [rule(51, REP[1])], [])
        assert identity(rule(51, REP[1])) in backend.refused()
        assert backend.needs_dump() == set()
        nic.seen.clear()
        delta(backend, nic, [rule(52, REP[2])], [])
        assert nic.seen["dump"] == 0
    finally:
        backend.close()
        nic.close()


def test_a_rule_deleted_behind_the_backs_back_is_repaired_by_the_next_full_plan(nic: Nic, backend: TcBackend,
                                                                                caplog) -> None:
    desired = [rule(m, REP[2], ifindex=REP[m % 2]) for m in range(1, 9)]
    full(backend, nic, desired)
    victim = next(r for r in nic.eswitch.rules(REP[0]))[0]
    other = TcClient(SimSocketTransport(nic.path))  # someone else on the NIC's control socket
    try:
        assert other.delete([victim]) == [None]
    finally:
        other.close()
    assert not delta(backend, nic, [], [])  # a delta trusts memory: it does not see it

    with caplog.at_level(logging.WARNING, logger="hwflow.backends.tc.backend"):
        changes = full(backend, nic, desired)

    assert changes.repairs == 1 and backend.repairs == 1
    assert [identity(r) for _, r in changes.add] == [identity(victim)] and not changes.delete
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "1 missing, 0 extra, 0 different" in warnings[0] and f"ifindex {REP[0]}" in warnings[0]
    assert summary(backend.installed_rules()) == summary(nic.rules())
    assert {identity(r) for rules in nic.rules().values() for r in rules.values()} == {identity(r) for r in desired}
    caplog.clear()
    assert full(backend, nic, desired).repairs == 0
    assert not caplog.records


def test_extra_and_changed_rules_are_repairs_too(nic: Nic, backend: TcBackend) -> None:
    desired = [rule(m, REP[2]) for m in range(1, 4)]
    full(backend, nic, desired)
    stray = dataclasses.replace(rule(99, REP[1]), handle=77)
    changed = dataclasses.replace(nic.rules()[(nic.endpoint, REP[0])][identity(desired[1])], actions=(fl.Gact("drop"),))
    other = TcClient(SimSocketTransport(nic.path))
    try:
        assert other.add([stray]) == [None] and other.replace([changed]) == [None]
    finally:
        other.close()
    changes = full(backend, nic, desired)
    # the changed rule drops: it leaves in the first half and its repair is added in the second (break_drops)
    assert changes.repairs == 2 and (len(changes.delete), len(changes.replace), len(changes.add)) == (2, 0, 1)
    assert summary(backend.installed_rules()) == summary(nic.rules())


def test_a_nic_that_fails_is_dumped_at_the_next_delta_and_converges(nic: Nic, backend: TcBackend) -> None:
    first = [rule(m, REP[1], ifindex=REP[m % 3]) for m in range(1, 7)]
    full(backend, nic, first)
    nic.start()  # the NIC restarts: its rules are gone, the backend's socket is dead
    nic.seen.clear()

    late = rule(20, REP[1])
    changes = delta(backend, nic, [late], [])  # planned from memory; the install finds the NIC gone
    assert len(changes.add) == 1 and nic.endpoint in backend.unreachable()
    assert backend.needs_dump() == {(nic.endpoint, i) for i in REP}

    nic.seen.clear()
    changes = delta(backend, nic, [], [])  # nothing changed, but every device of that NIC is read again
    assert nic.seen["dump"] == 3
    assert len(changes.add) == 7 and not changes.delete
    assert backend.needs_dump() == set()
    assert {identity(r) for rules in nic.rules().values() for r in rules.values()} == \
        {identity(r) for r in [*first, late]}
    assert summary(backend.installed_rules()) == summary(nic.rules())
    nic.seen.clear()
    delta(backend, nic, [], [late])
    assert nic.seen == Counter(delete=1)


def test_an_unplugged_representor_whose_rules_a_failed_delta_left_is_cleaned_by_the_next_full_plan(
        nic: Nic, backend: TcBackend) -> None:
    """Its VF unplugged, a representor is no longer managed; the delta taking its rules off found the NIC gone.
    The next full plan, not naming it, still takes them off (seen in a soak: 20 rules left for good)."""
    kept, unplugged = rule(1, REP[1]), rule(2, REP[1], ifindex=REP[2])
    full(backend, nic, [kept, unplugged])
    tmp = os.path.dirname(nic.path)
    os.rename(nic.path, os.path.join(tmp, "gone"))
    backend.close()
    delta(backend, nic, [], [unplugged])
    assert identity(unplugged) in nic.rules()[nic.endpoint, REP[2]]
    os.rename(os.path.join(tmp, "gone"), nic.path)
    apply(backend, backend.plan([(nic.endpoint, kept)], [Representor(i, nic.endpoint) for i in REP[:2]]))
    assert not nic.rules()[nic.endpoint, REP[2]]
    assert backend.installed_rules()[nic.endpoint, REP[2]] == {}
    assert summary(backend.installed_rules())[nic.endpoint, REP[0]] == summary(nic.rules())[nic.endpoint, REP[0]]
    apply(backend, backend.plan([(nic.endpoint, kept)], [Representor(i, nic.endpoint) for i in REP[:2]]))
    assert (nic.endpoint, REP[2]) not in backend.installed_rules()  # nothing of hwflow's on it: forgotten now


def test_a_vanished_socket_is_skipped_logged_once_and_found_again_by_a_delta(nic: Nic, backend: TcBackend,
                                                                              caplog) -> None:
    full(backend, nic, [rule(1, REP[1])])
    tmp = os.path.dirname(nic.path)
    os.rename(nic.path, os.path.join(tmp, "gone"))
    backend.close()
    with caplog.at_level(logging.ERROR):
        delta(backend, nic, [rule(2, REP[1])], [rule(1, REP[1])])
        delta(backend, nic, [], [])
    assert len([r for r in caplog.records if "OVS carries the traffic" in r.message]) == 1
    assert backend.needs_dump() == {(nic.endpoint, i) for i in REP}
    os.rename(os.path.join(tmp, "gone"), nic.path)
    delta(backend, nic, [], [])
    assert [r.keys.eth_dst for rules in nic.rules().values() for r in rules.values()] == [2]
    assert nic.endpoint not in backend.unreachable()
    assert summary(backend.installed_rules()) == summary(nic.rules())


def test_an_unexpected_refusal_marks_only_that_device_for_a_dump(nic: Nic, backend: TcBackend) -> None:
    full(backend, nic, [rule(1, REP[1]), rule(1, REP[2], ifindex=REP[1])])
    # Someone takes the handle the backend will pick next, at the prio its next rule uses: EEXIST.
    squatter = dataclasses.replace(rule(7, REP[2]), handle=2)
    other = TcClient(SimSocketTransport(nic.path))
    try:
        assert other.add([squatter]) == [None]
    finally:
        other.close()
    changes = delta(backend, nic, [rule(3, REP[2])], [])
    assert [r.handle for _, r in changes.add] == [2]
    assert "EEXIST" in next(iter(backend.refused().values()))
    assert backend.needs_dump() == {(nic.endpoint, REP[0])}  # not the others: they stay planned from memory
    nic.seen.clear()
    changes = delta(backend, nic, [], [])
    assert nic.seen["dump"] == 1
    assert [r.keys.eth_dst for _, r in changes.delete] == [7] and [r.keys.eth_dst for _, r in changes.add] == [3]
    assert summary(backend.installed_rules()) == summary(nic.rules())


def test_a_device_the_nic_does_not_know_does_not_make_the_others_dump(nic: Nic, backend: TcBackend,
                                                                      caplog) -> None:
    full(backend, nic, [rule(1, REP[1])])
    nic.seen.clear()
    ghost = rule(5, REP[1], ifindex=99)  # no such representor: the NIC answers ENODEV
    with caplog.at_level(logging.ERROR):
        delta(backend, nic, [ghost, rule(2, REP[1])], [])
        delta(backend, nic, [], [])
    assert nic.seen["dump"] == 2 and nic.seen["add"] == 1  # the ghost is read (twice), the others never
    assert len([r for r in caplog.records if "ifindex 99" in r.message]) == 1
    assert backend.needs_dump() == {(nic.endpoint, 99)} and not backend.unreachable()
    delta(backend, nic, [], [ghost])  # nothing wanted there any more: forgotten
    assert backend.needs_dump() == set()


# --- random deltas: memory always equals the NIC, and the NIC the desired set -----------------------

rules = st.one_of(
    st.builds(rule, st.integers(1, 6), st.sampled_from(REP[1:]), st.sampled_from(REP), st.integers(1, 2)),
    st.builds(lambda mac, ifindex, prio: dataclasses.replace(_drop(mac, prio=prio), ifindex=ifindex),
              st.integers(1, 6), st.sampled_from(REP), st.integers(1, 2)))  # drops: their deltas are reshaped


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(st.lists(rules, max_size=6), st.lists(st.integers(0, 30), max_size=4)),
                min_size=1, max_size=6))
def test_after_random_deltas_memory_equals_the_nic_and_the_nic_the_desired_set(nic: Nic, steps) -> None:
    backend = TcBackend()
    try:
        full(backend, nic, [])
        nic.seen.clear()
        desired: dict[tuple, fl.FlowerRule] = {}
        for added, removals in steps:
            present = list(desired.values())
            removed = [present[i % len(present)] for i in removals] if present else []
            for r in removed:
                desired.pop(identity(r), None)
            for r in added:
                old = desired.get(identity(r))
                if old is not None and old not in removed:
                    removed.append(old)  # a rule whose actions change: removed in its old form too
                desired[identity(r)] = r
            delta(backend, nic, added, removed)
            held = nic.rules()
            assert summary(backend.installed_rules()) == summary(held)
            assert {k: r.actions for rules in held.values() for k, r in rules.items()} == \
                {k: r.actions for k, r in desired.items()}
        assert nic.seen["dump"] == 0
        assert full(backend, nic, list(desired.values())).repairs == 0
        assert not backend.plan([(nic.endpoint, r) for r in desired.values()], managed(nic))
    finally:
        full(backend, nic, [])
        backend.close()


def test_the_rules_of_a_representor_that_vanished_are_removed_without_a_dump_or_a_lost_nic(
        nic: Nic, backend: TcBackend) -> None:
    on_third = [rule(m, REP[1], ifindex=REP[2]) for m in (1, 2)]
    full(backend, nic, [rule(1, REP[1]), *on_third])
    del nic.eswitch._tables[REP[2]]  # the VF goes: the NIC answers ENODEV for its representor from now on
    nic.seen.clear()
    changes = delta(backend, nic, [], on_third)
    assert len(changes.delete) == 2 and nic.seen == Counter(delete=2)
    assert backend.installed_rules()[(nic.endpoint, REP[2])] == {}
    assert backend.needs_dump() == set() and not backend.unreachable()
    nic.seen.clear()
    delta(backend, nic, [rule(3, REP[1])], [])
    assert nic.seen == Counter(add=1)


def _chain(mac: int, out: int, chain: int, prio: int = 1) -> fl.FlowerRule:
    return dataclasses.replace(rule(mac, out, prio=prio), chain=chain)


def _goto(mac: int, chain: int) -> fl.FlowerRule:
    return fl.FlowerRule(REP[0], 1, 0, fl.ETH_P_IP, fl.FlowerKeys(eth_dst=mac), (fl.Gact("goto_chain", chain),))


def test_a_chain_a_goto_still_leads_to_is_emptied_only_after_the_goto_moved() -> None:
    """A chain renumbered (a restart, say): the goto is replaced in the second half, so the old chain's rules go
    after it, not in the first half, when a packet following the goto would find the chain empty (a miss in
    chain N is a drop on mlx5). Taking everything off a device defers nothing."""
    nic = Nic("mlx5-connectx6dx")
    backend = TcBackend()
    try:
        old = [_goto(1, 1 << 20), _chain(1, REP[1], 1 << 20)]
        new = [_goto(1, 2 << 20), _chain(1, REP[1], 2 << 20)]
        full(backend, nic, old)
        changes = backend.plan([(nic.endpoint, r) for r in new], managed(nic))
        assert [r.chain for _, r in changes.delete_after] == [1 << 20] and not changes.delete
        backend.remove(changes)
        held = nic.rules()[nic.endpoint, REP[0]].values()
        assert {r.chain for r in held} == {0, 1 << 20}  # the goto still leads to 1 << 20, which still forwards
        backend.install(changes)
        held = nic.rules()[nic.endpoint, REP[0]].values()
        assert sorted((r.chain, r.actions) for r in held) == sorted((r.chain, r.actions) for r in new)
        gone = backend.plan([], managed(nic))
        assert len(gone.delete) == 2 and not gone.delete_after
        backend.remove(gone)
        assert not nic.rules()[nic.endpoint, REP[0]]
    finally:
        backend.close()
        nic.close()


# --- drops: make-before-break -------------------------------------------------------------------------


def _drop(mac: int, chain: int = 0, prio: int = 1) -> fl.FlowerRule:
    return fl.FlowerRule(REP[0], prio, 0, fl.ETH_P_IP, fl.FlowerKeys(eth_dst=mac), (fl.Gact("drop"),), chain=chain)


def _actions_on_nic(nic: Nic) -> dict[tuple, tuple]:
    return {key: r.actions for key, r in nic.rules()[nic.endpoint, REP[0]].items()}


@pytest.fixture
def mlx5() -> Iterator[Nic]:
    nic = Nic("mlx5-connectx6dx")
    try:
        yield nic
    finally:
        nic.close()


def test_a_drop_that_stops_dropping_leaves_in_the_first_half(mlx5: Nic, backend: TcBackend) -> None:
    """Between OVS taking the new flows and the NIC's update, a drop still there would drop what OVS now passes:
    its replace becomes a delete (first half) and an add (second half); the other way round, a redirect that
    becomes a drop is replaced in the second half, once OVS drops too."""
    nic = mlx5
    full(backend, nic, [_drop(1), rule(2, REP[1])])
    dropping, forwarding = identity(_drop(1)), identity(rule(2, REP[1]))
    assert forwarding == identity(_drop(2))
    changes = backend.plan_delta([(nic.endpoint, rule(1, REP[1])), (nic.endpoint, _drop(2))],
                                 [(nic.endpoint, _drop(1)), (nic.endpoint, rule(2, REP[1]))])
    assert [identity(r) for _, r in changes.delete] == [dropping] and not changes.delete_after
    assert [identity(r) for _, r in changes.add] == [dropping] and [identity(r) for _, r in changes.replace] == [
        forwarding]
    backend.remove(changes)
    on_nic = _actions_on_nic(nic)
    assert dropping not in on_nic and on_nic[forwarding] == (fl.Mirred(REP[1]),)  # OVS changes here
    backend.install(changes)
    assert _actions_on_nic(nic) == {dropping: (fl.Mirred(REP[1]),), forwarding: (fl.Gact("drop"),)}
    assert summary(backend.installed_rules()) == summary(nic.rules())
    # the full plan (a dump) orders it alike
    changes = backend.plan([(nic.endpoint, _drop(1)), (nic.endpoint, rule(2, REP[1]))], managed(nic))
    assert [identity(r) for _, r in changes.delete] == [forwarding] and [
        identity(r) for _, r in changes.replace] == [dropping]
    apply(backend, changes)
    assert _actions_on_nic(nic) == {dropping: (fl.Gact("drop"),), forwarding: (fl.Mirred(REP[1]),)}
    assert backend.plan([(nic.endpoint, _drop(1)), (nic.endpoint, rule(2, REP[1]))], managed(nic)).repairs == 0


def test_a_drop_in_a_chain_a_goto_still_leads_to_is_not_deferred(mlx5: Nic, backend: TcBackend) -> None:
    nic = mlx5
    old = [_goto(1, 1 << 20), _chain(1, REP[1], 1 << 20), _drop(1, 1 << 20, prio=5)]
    new = [_goto(1, 2 << 20), _chain(1, REP[1], 2 << 20)]
    full(backend, nic, old)
    changes = backend.plan([(nic.endpoint, r) for r in new], managed(nic))
    assert [(r.chain, r.actions) for _, r in changes.delete] == [(1 << 20, (fl.Gact("drop"),))]
    assert [r.chain for _, r in changes.delete_after] == [1 << 20]
    apply(backend, changes)
    assert sorted((r.chain, r.actions) for r in nic.rules()[nic.endpoint, REP[0]].values()) == sorted(
        (r.chain, r.actions) for r in new)


def test_a_drop_that_stays_behind_a_change_in_front_of_it_is_off_the_nic_meanwhile(
        mlx5: Nic, backend: TcBackend) -> None:
    """A rule added in front of a drop (a security group now lets some of its packets through): until it is
    there, OVS passes what the drop takes. The drop leaves in the first half and comes back last; one behind a
    goto whose way changes, likewise; one in a chain nothing in front of it changed stays put."""
    nic = mlx5
    deny, other = _drop(7, 1 << 20, prio=9), _drop(7, 2 << 20, prio=9)
    full(backend, nic, [_goto(1, 1 << 20), deny, dataclasses.replace(_goto(2, 2 << 20), prio=2), other])
    allow = _chain(7, REP[1], 1 << 20, prio=5)
    nic.seen.clear()
    changes = backend.plan_delta([(nic.endpoint, allow)], [])
    assert [r.actions for _, r in changes.delete] == [(fl.Gact("drop"),)]
    assert [r.actions for _, r in changes.add] == [allow.actions, (fl.Gact("drop"),)]  # the drop last
    backend.remove(changes)
    assert identity(deny) not in _actions_on_nic(nic) and identity(other) in _actions_on_nic(nic)
    backend.install(changes)
    assert {identity(deny), identity(other), identity(allow)} <= _actions_on_nic(nic).keys()
    assert nic.seen == Counter(delete=1, add=2)
    assert summary(backend.installed_rules()) == summary(nic.rules())
    # the goto to chain 1 << 20 now leads elsewhere: its drop leaves first, and comes back after the change
    moved = _goto(1, 2 << 20)
    changes = backend.plan_delta([(nic.endpoint, moved)], [(nic.endpoint, _goto(1, 1 << 20))])
    assert [identity(r) for _, r in changes.delete] == [identity(deny)] and [
        identity(r) for _, r in changes.replace] == [identity(moved)]
    apply(backend, changes)
    assert summary(backend.installed_rules()) == summary(nic.rules())
    assert backend.plan([(nic.endpoint, r) for r in (moved, deny, allow, dataclasses.replace(
        _goto(2, 2 << 20), prio=2), other)], managed(nic)).repairs == 0
