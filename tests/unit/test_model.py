"""The model accepts every well-formed object and names the field of every bad one."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from hwflow.model import KINDS, Chassis, Network, Port, ValidationError, from_dict, kind_class
from hwflow.model.objects import MAX_VNI

octet = st.integers(0, 255)


def mac_text(octets: list[int], upper: bool) -> str:
    text = ":".join(f"{o:02x}" for o in octets)
    return text.upper() if upper else text


unicast_macs = st.builds(
    mac_text,
    st.lists(octet, min_size=6, max_size=6).map(lambda o: [o[0] & 0xFE, *o[1:]]).filter(any),
    st.booleans(),
)
multicast_macs = st.builds(
    mac_text, st.lists(octet, min_size=6, max_size=6).map(lambda o: [o[0] | 1, *o[1:]]), st.booleans()
)
unicast_ips = st.ip_addresses().filter(lambda a: not (a.is_multicast or a.is_unspecified))


def port(**fields) -> Port:
    base = {"id": "p1", "network_id": "n1", "mac": "fa:16:3e:00:00:01"}
    return Port(**{**base, **fields})


def rejected(obj, field: str) -> str:
    """Validate, expecting a failure whose message names the object and the field."""
    with pytest.raises(ValidationError) as info:
        obj.validate()
    message = str(info.value)
    assert message.startswith(f"{obj.kind} {obj.id}"), message
    assert re.search(rf"\b{field}\b", message), message
    return message


@given(unicast_macs)
def test_unicast_macs_are_accepted_and_lower_cased(mac):
    p = port(mac=mac)
    p.validate()
    assert p.mac == mac.lower()


@given(multicast_macs)
def test_multicast_macs_are_rejected(mac):
    assert "unicast" in rejected(port(mac=mac), "mac")


@given(st.text(max_size=20))
def test_malformed_macs_are_rejected(text):
    assume(not re.fullmatch(r"\s*[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}\s*", text))
    rejected(port(mac=text), "mac")


def test_the_zero_mac_is_rejected():
    rejected(port(mac="00:00:00:00:00:00"), "mac")


@given(st.integers(1, MAX_VNI))
def test_vnis_in_range_are_accepted(vni):
    Network(id="n1", vni=vni).validate()


@given(st.integers().filter(lambda v: not 1 <= v <= MAX_VNI))
def test_vnis_out_of_range_are_rejected(vni):
    assert str(MAX_VNI) in rejected(Network(id="n1", vni=vni), "vni")


@given(st.integers())
def test_mtu_bounds(mtu):
    net = Network(id="n1", vni=1, mtu=mtu)
    if 68 <= mtu <= 9000:
        net.validate()
    else:
        rejected(net, "mtu")


@given(st.lists(unicast_ips, max_size=4, unique=True))
def test_unicast_ips_are_accepted_in_canonical_form(addresses):
    p = port(ips=[a.exploded.upper() for a in addresses])
    p.validate()
    assert p.ips == [str(a) for a in addresses]


@given(st.ip_addresses().filter(lambda a: a.is_multicast or a.is_unspecified))
def test_multicast_and_unspecified_ips_are_rejected(address):
    assert "unicast" in rejected(port(ips=[str(address)]), "ips")


@given(st.text(max_size=40))
def test_text_that_is_not_an_ip_is_rejected(text):
    try:
        ipaddress.ip_address(text)
        assume(False)
    except ValueError:
        pass
    rejected(port(ips=[text]), "ips")


def test_an_ip_listed_twice_is_rejected():
    assert "more than once" in rejected(port(ips=["10.0.0.1", "10.0.0.1"]), "ips")


def test_prefix_lengths_are_not_addresses():
    assert "no prefix length" in rejected(port(ips=["10.0.0.1/24"]), "ips")


@pytest.mark.parametrize("bad", ["", "a/b", "has space", "-leading", "x" * 256])
def test_ids_that_cannot_be_keys_are_rejected(bad):
    with pytest.raises(ValidationError, match=r"\bid\b"):
        Network(id=bad, vni=1).validate()


def test_wrong_types_are_rejected_even_when_built_directly():
    rejected(Network(id="n1", vni=True), "vni")  # a bool is not an int
    rejected(port(ips="10.0.0.1"), "ips")
    rejected(port(port_security=1), "port_security")


def test_a_port_needs_a_network():
    rejected(port(network_id=""), "network_id")


def test_chassis_id_is_its_name():
    assert Chassis(name="host1").id == "host1"
    assert Chassis(id="host1").name == "host1"
    rejected(Chassis(id="host1", name="host2", tunnel_ip="10.0.0.1"), "name")


def test_chassis_rules():
    Chassis(name="h", tunnel_ip="192.0.2.1", capabilities={"nics": [{"name": "eth0"}]}).validate()
    rejected(Chassis(name="h", tunnel_ip="not-an-ip"), "tunnel_ip")
    rejected(Chassis(name="h", tunnel_ip="192.0.2.1", capabilities={"x": object()}), "capabilities")
    rejected(Chassis(name="h", tunnel_ip="192.0.2.1", heartbeat_at=float("nan")), "heartbeat_at")


objects = st.one_of(
    st.builds(
        Port, id=st.uuids().map(str), name=st.text(max_size=10).filter(str.isprintable),
        network_id=st.uuids().map(str), mac=unicast_macs.map(str.lower),
        ips=st.lists(unicast_ips.map(str), max_size=3, unique=True), chassis=st.sampled_from(["", "host-1"]),
        port_security=st.booleans(), unique_key=st.integers(0, 2**32 - 1), revision=st.integers(0, 2**40),
    ),
    st.builds(Network, id=st.uuids().map(str), vni=st.integers(1, MAX_VNI), mtu=st.integers(68, 9000)),
    st.builds(Chassis, name=st.from_regex(r"[a-z][a-z0-9-]{0,20}", fullmatch=True),
              tunnel_ip=unicast_ips.map(str), up=st.booleans(), heartbeat_at=st.floats(0, 2e9),
              capabilities=st.dictionaries(st.text(max_size=5), st.integers(), max_size=3)),
)


@given(objects)
def test_to_dict_from_dict_round_trip(obj):
    obj.validate()
    assert from_dict(obj.kind, obj.to_dict()) == obj


def test_from_dict_rejects_unknown_fields_naming_them():
    with pytest.raises(ValidationError, match=r"network n1: unknown field\(s\) colour"):
        from_dict("network", {"id": "n1", "vni": 1, "colour": "red"})


@pytest.mark.parametrize("field, value", [("vni", "7"), ("mtu", 1500.0), ("name", 3), ("id", None)])
def test_from_dict_rejects_wrong_types_naming_the_field(field, value):
    with pytest.raises(ValidationError, match=rf"\b{field}\b.*must be"):
        from_dict("network", {"id": "n1", "vni": 1, field: value})


def test_from_dict_rejects_records_that_are_not_objects():
    with pytest.raises(ValidationError, match="must be a JSON object"):
        from_dict("port", ["p1"])


def test_from_dict_fills_missing_fields_with_defaults_and_validates():
    assert from_dict("network", {"id": "n1", "vni": 9}).mtu == 1500
    with pytest.raises(ValidationError, match="vni"):
        from_dict("network", {"id": "n1"})


def test_kind_names_map_to_classes():
    assert {name: kind_class(name) for name in ("chassis", "network", "port")} == dict(KINDS)
    assert kind_class(Port) is Port
    with pytest.raises(ValidationError, match="unknown kind 'router'; known kinds: chassis, network, port"):
        kind_class("router")
