"""Shared test policy.

Functional tests need root, network namespaces and Open vSwitch. On a
developer machine without them they skip with the reason; in CI
(``HWFLOW_NO_SKIP=1``, set by ``.ci/run``) every skip is turned into a
failure (a test's, a skip marker's and a whole module's at collection), and
so are xfail and XPASS: a green CI run means every test really ran and
passed. In CI hypothesis prints the blob that reproduces a failure and
replays the failures kept in ``tests/hypothesis-regressions`` (see there).

Tests of the HW/SW split report how often their packets took a NIC rule
(the ``nic_share`` fixture); the summary at the end of the run lists them,
so a CI log shows how much of the proof reached the hardware side.
"""

from __future__ import annotations

import collections
import os
import pathlib
import shutil

import pytest
from hypothesis import settings
from hypothesis.database import DirectoryBasedExampleDatabase, MultiplexedDatabase, ReadOnlyDatabase

NO_SKIP = os.environ.get("HWFLOW_NO_SKIP") == "1"
NIC_SHARE: dict[str, collections.Counter[str]] = {}  # test -> examples, and those that took a NIC rule

REGRESSIONS = pathlib.Path(__file__).parent / "hypothesis-regressions"


class _Kept(DirectoryBasedExampleDatabase):
    """The smallest failing example of each failure, saved in the repository and kept once it passes (hypothesis
    deletes it from its own database then), so every later run replays it as a regression.

    Hypothesis saves a failing example under the test's key and, while shrinking, moves the one a smaller
    failure supersedes to a secondary key: that move drops it here. Secondary and target (pareto) corpora are
    not kept.
    """

    def save(self, key: bytes, value: bytes) -> None:
        if not key.endswith((b".secondary", b".pareto")):
            super().save(key, value)

    def delete(self, key: bytes, value: bytes) -> None:
        pass

    def move(self, src: bytes, dest: bytes, value: bytes) -> None:
        super().delete(src, value)


# Locally a failure found is saved in .hypothesis/ and in tests/hypothesis-regressions (commit it with the fix);
# CI replays the committed ones without writing, prints the blob that reproduces a new failure, and draws more
# examples where a test does not choose how many.
settings.register_profile("dev", database=MultiplexedDatabase(
    DirectoryBasedExampleDatabase(pathlib.Path(".hypothesis") / "examples"), _Kept(REGRESSIONS)))
settings.register_profile("ci", print_blob=True, max_examples=300,
                          database=ReadOnlyDatabase(DirectoryBasedExampleDatabase(REGRESSIONS)))
settings.load_profile("ci" if os.environ.get("CI") == "true" or NO_SKIP else "dev")


def _drawn_from_the_tests_alone() -> None:
    """Keep hypothesis from drawing literals found in hwflow's modules (it does since 6.131: now and then an
    integer or string of any local module imported so far). The fixed examples of the split properties are
    derandomized and their NIC-share floors measured on them; with the literals in the pool they changed with
    every literal anywhere in hwflow and with which modules a run had imported (three test files run together
    took the shared-chains floor from 12% to 1%). A private hook: on a hypothesis without it, nothing to do."""
    from hypothesis.internal.conjecture import providers
    if callable(getattr(providers, "_get_local_constants", None)) and hasattr(providers, "Constants"):
        providers._get_local_constants = providers.Constants


_drawn_from_the_tests_alone()


@pytest.fixture
def nic_share(request: pytest.FixtureRequest) -> collections.Counter[str]:
    """A counter for ``examples``, ``by_nic`` (examples where a NIC rule forwarded a packet) and, where a test
    counts them, ``dropped`` (examples where a NIC drop rule took a packet), reported at the end."""
    return NIC_SHARE.setdefault(request.node.nodeid, collections.Counter())


def pytest_terminal_summary(terminalreporter) -> None:
    if not NIC_SHARE:
        return
    terminalreporter.section("share of examples that forwarded a packet by a NIC rule")
    for test, counts in sorted(NIC_SHARE.items()):
        examples = counts["examples"]
        share = f"{100 * counts['by_nic'] / examples:.0f}%" if examples else "-"
        terminalreporter.write_line(f"{share:>5} of {examples} examples  {test}")
    dropping = {test: counts for test, counts in NIC_SHARE.items() if "dropped" in counts}
    if not dropping:
        return
    terminalreporter.section("share of examples that dropped a packet by a NIC rule")
    for test, counts in sorted(dropping.items()):
        examples = counts["examples"]
        share = f"{100 * counts['dropped'] / examples:.0f}%" if examples else "-"
        terminalreporter.write_line(f"{share:>5} of {examples} examples  {test}")


def _functional_blocker() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces)"
    for tool in ("ip", "ovs-vswitchd", "ovsdb-server", "ping"):
        if shutil.which(tool) is None:
            return f"needs {tool} (apt-get install iproute2 openvswitch-switch iputils-ping)"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    blocker = _functional_blocker()
    if blocker is None:
        return
    for item in items:
        if item.get_closest_marker("functional"):
            item.add_marker(pytest.mark.skip(reason=f"functional test {blocker}"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    report = outcome.get_result()
    if not NO_SKIP:
        return
    if hasattr(report, "wasxfail"):
        what = "passed though marked xfail" if report.passed else "failed as expected (xfail)"
        report.outcome = "failed"
        report.longrepr = f"{what}, but HWFLOW_NO_SKIP=1 requires every test to pass plainly: {report.wasxfail}"
    elif report.skipped:
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped, but HWFLOW_NO_SKIP=1 requires every test to run: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    """A module that skips itself at collection (``pytest.skip(allow_module_level=True)``) fails in CI too."""
    outcome = yield
    report = outcome.get_result()
    if NO_SKIP and report.skipped:
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped at collection, but HWFLOW_NO_SKIP=1 requires every test to run: {reason}"
