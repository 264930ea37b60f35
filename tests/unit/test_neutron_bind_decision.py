"""hwflow.neutron.binding's decision, over any port and chassis record: ``vif_type ovs`` exactly when the host has
a live agent and the vnic type is normal, or direct for a switchdev VF on a chassis reporting an offload device
that redirects; otherwise CannotBind with a one-line reason. A chassis record is whatever JSON its agent wrote:
no shape of it makes the decision raise anything else."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

pytest.importorskip("neutron_lib", reason="hwflow's neutron extra is not installed")
from hwflow.model.objects import Chassis  # noqa: E402
from hwflow.neutron import binding  # noqa: E402

# no "redirect" in any generated text: the one record that offloads is REDIRECTS
words = st.text(alphabet="abcs-", max_size=8)
json_values = st.recursive(st.none() | st.booleans() | st.integers() | words,
                           lambda inner: st.lists(inner, max_size=3) | st.dictionaries(words, inner, max_size=3),
                           max_leaves=8)
REDIRECTS = {"offload_devices": [{"name": "p0", "capabilities": {"actions": ["drop", "redirect"]}}]}
capabilities = st.sampled_from([REDIRECTS, {"offload_devices": []}, {}, {"offload_devices": [
    {"capabilities": {"actions": ["drop"]}}]}]) | st.dictionaries(st.sampled_from(["offload_devices", "x"]),
                                                                  json_values, max_size=2)
profiles = st.sampled_from([{}, {"capabilities": ["switchdev"]}, {"capabilities": "switchdev"}]) | json_values


@given(vnic=st.sampled_from(["normal", "direct", "macvtap", "direct-physical", None]), profile=profiles,
       caps=capabilities, registered=st.booleans(), alive=st.booleans())
def test_binds_ovs_exactly_where_hwflow_can(vnic: str | None, profile: Any, caps: dict, registered: bool,
                                             alive: bool) -> None:
    port = {"id": "p1", "binding:vnic_type": vnic, "binding:profile": profile}
    chassis = Chassis(id="c1", tunnel_ip="192.0.2.1", capabilities=caps) if registered else None
    switchdev = isinstance(profile, dict) and profile.get("capabilities") == ["switchdev"]
    expected = registered and alive and (vnic in ("normal", None) or (
        vnic == "direct" and switchdev and caps is REDIRECTS))
    try:
        vif_type, details = binding.vif(port, "host-1", chassis, alive)
    except binding.CannotBind as exc:
        assert not expected
        assert "\n" not in str(exc) and str(exc)
    else:
        assert expected and (vif_type, details["port_filter"]) == ("ovs", True)


@pytest.mark.parametrize(("caps", "offloads"), [
    (REDIRECTS, True),
    ({"offload_devices": [{"capabilities": {"actions": "redirect"}}]}, False),  # a string is not a list of them
    ({"offload_devices": [["redirect"]]}, False),
    ({"offload_devices": {"capabilities": {"actions": ["redirect"]}}}, False),
])
def test_an_offload_device_is_the_agents_shape_only(caps: dict, offloads: bool) -> None:
    assert binding.can_offload_vf(Chassis(id="c1", tunnel_ip="192.0.2.1", capabilities=caps)) is offloads
