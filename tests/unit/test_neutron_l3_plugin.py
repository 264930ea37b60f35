"""hwflow's L3 service plugin finds the ML2 driver it writes through, or says in one line what to configure."""

from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest

pytest.importorskip("neutron", reason="hwflow's neutron extra is not installed (pip install -e '.[test,neutron]')")
from neutron_lib import fixture  # noqa: E402
from neutron_lib.plugins import constants, directory  # noqa: E402

from hwflow.neutron import l3_plugin  # noqa: E402


@pytest.fixture
def plugins() -> Iterator[None]:
    """Neutron's plugin directory, empty, and restored after the test."""
    directory_fixture = fixture.PluginDirectoryFixture()
    directory_fixture.setUp()
    try:
        yield
    finally:
        directory_fixture.cleanUp()


class CorePlugin:
    """Neutron's core plugin as the L3 plugin sees it (the directory holds it by a weak reference); ML2's has a
    mechanism manager."""

    def __init__(self, mechanism_manager: SimpleNamespace | None = None) -> None:
        if mechanism_manager is not None:
            self.mechanism_manager = mechanism_manager


def ml2(*drivers: str) -> CorePlugin:
    """A core plugin with ML2's mechanism manager holding ``drivers`` (each loaded driver object is ``obj``)."""
    return CorePlugin(SimpleNamespace(mech_drivers={name: SimpleNamespace(obj=f"{name}-driver") for name in drivers}))


@pytest.mark.parametrize("drivers", [None, ("openvswitch",)], ids=["not-ml2", "ml2-without-hwflow"])
def test_without_hwflow_mechanism_driver_the_plugin_says_what_to_set(plugins, drivers) -> None:
    core = CorePlugin() if drivers is None else ml2(*drivers)
    directory.add_plugin(constants.CORE, core)
    with pytest.raises(RuntimeError, match=r"^hwflow_l3 needs ML2 .*\[ml2\] mechanism_drivers = hwflow"):
        l3_plugin._mechanism_driver()


def test_the_plugin_writes_through_hwflows_mechanism_driver(plugins) -> None:
    directory.add_plugin(constants.CORE, ml2("openvswitch", "hwflow"))
    assert l3_plugin._mechanism_driver() == "hwflow-driver"
