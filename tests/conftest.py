"""Shared test policy.

Functional tests need root, network namespaces and Open vSwitch. On a
developer machine without them they skip with the reason; in CI
(``HWFLOW_NO_SKIP=1``, set by ``.ci/run``) every skip is turned into a
failure, so a green CI run means every test really ran.
"""

from __future__ import annotations

import os
import shutil

import pytest

NO_SKIP = os.environ.get("HWFLOW_NO_SKIP") == "1"


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
    if NO_SKIP and report.skipped and not hasattr(report, "wasxfail"):
        report.outcome = "failed"
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.longrepr = f"skipped, but HWFLOW_NO_SKIP=1 requires every test to run: {reason}"
