"""hwflow.neutron.sync on a real (sqlite) hwflow database against Neutron's resources as dicts (the boundary):
whatever was lost, changed or left behind in hwflow, one compare-and-repair makes hwflow's copy Neutron's, the
report names exactly what differed, a second comparison finds nothing, and hwflow's own objects stay; a write
never goes back to an older revision."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("neutron_lib", reason="hwflow's neutron extra is not installed (pip install -e '.[test,neutron]')")
from hwflow.cli.main import main  # noqa: E402
from hwflow.db.api import NbApi  # noqa: E402
from hwflow.model.errors import BrokenReference, NotFound  # noqa: E402
from hwflow.model.objects import NbObject, Network, Port, SecurityGroup, SecurityGroupRule  # noqa: E402
from hwflow.neutron import mapping, sync  # noqa: E402

FATES = st.sampled_from(["kept", "lost", "renamed"])  # what happened to an object's copy in hwflow


class FakeNeutron:
    """Neutron's API answers, as dicts by collection (the boundary the sync reads)."""

    def __init__(self, collections: dict[str, list[dict[str, Any]]]) -> None:
        self.collections = collections

    def list(self, collection: str) -> list[dict[str, Any]]:
        return list(self.collections.get(collection, []))

    def get(self, collection: str, ident: str) -> dict[str, Any] | None:
        return next((r for r in self.collections.get(collection, []) if r["id"] == ident), None)


def _ident() -> str:
    return str(uuid.uuid4())


@st.composite
def neutron_state(draw: st.DrawFn) -> FakeNeutron:
    """1-3 vxlan networks with 0-3 ports each (in 0-1 of 0-2 security groups of 0-2 rules)."""
    groups = [{"id": _ident(), "name": f"g{n}", "description": "", "revision_number": draw(st.integers(1, 9))}
              for n in range(draw(st.integers(0, 2)))]
    rules = [{"id": _ident(), "security_group_id": group["id"], "direction": "ingress", "ethertype": "IPv4",
              "protocol": "tcp", "port_range_min": 22 + n, "port_range_max": 22 + n, "revision_number": 1}
             for group in groups for n in range(draw(st.integers(0, 2)))]
    networks, ports = [], []
    for n in range(draw(st.integers(1, 3))):
        net = {"id": _ident(), "name": f"net{n}", "mtu": 1450, "provider:network_type": "vxlan",
               "provider:segmentation_id": 1000 + n, "revision_number": draw(st.integers(1, 9))}
        networks.append(net)
        for m in range(draw(st.integers(0, 3))):
            in_groups = [draw(st.sampled_from(groups))["id"]] if groups and draw(st.booleans()) else []
            ports.append({"id": _ident(), "name": f"p{n}-{m}", "network_id": net["id"],
                          "mac_address": f"fa:16:3e:00:{n:02x}:{m:02x}", "fixed_ips": [], "device_owner": "",
                          "port_security_enabled": True, "security_groups": in_groups,
                          "revision_number": draw(st.integers(1, 9))})
    return FakeNeutron({"networks": networks, "security-groups": groups, "security-group-rules": rules,
                        "ports": ports})


def _wanted(neutron: FakeNeutron) -> list[NbObject]:
    """Neutron's objects as hwflow holds them, in the order hwflow's database takes them (with the group of the
    ports in none of Neutron's first, if some port is)."""
    found = []
    for coll in sync.COLLECTIONS:
        found += [obj for r in neutron.list(coll.path) if (obj := coll.translate(r, [])) is not None]
    if any(isinstance(obj, Port) and obj.security_groups == [mapping.DROP_ALL_GROUP] for obj in found):
        found.insert(0, mapping.drop_all_group())
    return found


def _same(nb: NbApi, obj: NbObject) -> bool:
    try:
        held = nb.get(obj.kind, obj.id)
    except NotFound:
        return False
    return all(getattr(held, f) == getattr(obj, f) for f in obj.to_dict()
               if f not in ("revision", "unique_key", "external_revision"))  # hwflow's, and Neutron's revision


@settings(max_examples=40, deadline=None)
@given(neutron=neutron_state(), fates=st.lists(FATES, min_size=20, max_size=20), stale=st.integers(0, 2))
def test_one_repair_makes_hwflow_what_neutron_says(neutron: FakeNeutron, fates: list[str], stale: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, NbApi.from_url(f"sqlite:///{Path(tmp) / 'nb.sqlite'}") as nb:
        wanted = _wanted(neutron)
        sync.put_newer(nb, wanted)
        own = nb.create(Network(name="hwflows-own", vni=5000))  # not Neutron's: never reported, never deleted
        for obj, fate in zip(reversed(wanted), fates, strict=False):  # ports first: a network's loss takes its own
            if fate == "lost" and _same(nb, obj):
                with contextlib.suppress(BrokenReference):  # a group a port is in stays
                    nb.delete(obj.kind, obj.id, cascade=True)
            elif fate == "renamed" and _same(nb, obj):
                held = nb.get(obj.kind, obj.id)
                held.name += "-changed"
                nb.update(held)
        gone = [nb.create(Network(name=f"deleted-in-neutron-{n}", vni=6000 + n, external_revision=3))
                for n in range(stale)]
        differing = {(obj.kind, obj.id) for obj in wanted if not _same(nb, obj)}

        report = sync.compare(neutron, nb)
        assert {(d.kind, d.id) for d in report} == differing | {("network", net.id) for net in gone}
        assert {d.action for d in report if (d.kind, d.id) in differing} <= {"create", "update"}
        repaired = sync.repair(neutron, nb, report)
        assert all(d.result in ("created", "updated", "deleted") for d in repaired), repaired
        assert all(_same(nb, obj) for obj in wanted)
        assert nb.get(Network, own.id).name == "hwflows-own"
        assert sync.compare(neutron, nb) == []


def test_an_older_revision_is_not_written_over_a_newer() -> None:
    """A late write of revision 4 over a port hwflow holds at 5 is left (and said so); 5 again or 6 is written."""
    with tempfile.TemporaryDirectory() as tmp, NbApi.from_url(f"sqlite:///{Path(tmp) / 'nb.sqlite'}") as nb:
        net = nb.create(Network(name="n", vni=7, external_revision=1))
        group = nb.create(SecurityGroup(name="g", external_revision=1))
        port = Port(id=_ident(), name="v5", network_id=net.id, mac="fa:16:3e:00:00:01",
                    security_groups=[group.id], external_revision=5)
        assert sync.put_newer(nb, [port]) == []
        older = Port(**{**port.to_dict(), "name": "v4", "external_revision": 4})
        assert sync.put_newer(nb, [older]) == [older]
        assert nb.get(Port, port.id).name == "v5"
        for name, revision in (("v5-again", 5), ("v6", 6)):
            assert sync.put_newer(nb, [Port(**{**port.to_dict(), "name": name, "external_revision": revision})]) == []
            held = nb.get(Port, port.id)
            assert (held.name, held.external_revision) == (name, revision)


def test_a_newer_revision_of_the_same_object_is_not_written() -> None:
    """Neutron bumps a port's revision when it sets its status (ACTIVE once hwflow reports it up): the port as
    hwflow holds it is the same, so nothing is written and no agent wakes for it."""
    with tempfile.TemporaryDirectory() as tmp, NbApi.from_url(f"sqlite:///{Path(tmp) / 'nb.sqlite'}") as nb:
        net = nb.create(Network(name="n", vni=7, external_revision=1))
        port = Port(id=_ident(), name="p", network_id=net.id, mac="fa:16:3e:00:00:01", port_security=False,
                    external_revision=3)
        assert sync.put_newer(nb, [port]) == []
        written = nb.get(Port, port.id).revision
        assert sync.put_newer(nb, [Port(**{**port.to_dict(), "external_revision": 4})]) == []
        assert nb.get(Port, port.id).revision == written
        assert sync.put_newer(nb, [Port(**{**port.to_dict(), "name": "q", "external_revision": 5})]) == []
        assert (nb.get(Port, port.id).name, nb.get(Port, port.id).external_revision) == ("q", 5)


def test_a_network_neutron_does_not_show_as_an_admin_is_refused_with_the_reason() -> None:
    """Without the provider attributes (a user who is not an admin) a network cannot be compared: refused,
    saying to read Neutron as an admin, and left alone by the repair."""
    neutron = FakeNeutron({"networks": [{"id": _ident(), "name": "n", "mtu": 1500, "revision_number": 1}]})
    with tempfile.TemporaryDirectory() as tmp, NbApi.from_url(f"sqlite:///{Path(tmp) / 'nb.sqlite'}") as nb:
        [diff] = sync.compare(neutron, nb)
        assert (diff.action, diff.kind) == ("refused", "network") and "as an admin" in diff.detail
        assert [d.result for d in sync.repair(neutron, nb, [diff])] == ["left: hwflow cannot hold it"]


@pytest.mark.parametrize(("options", "says"), [
    ([], "no Neutron to read: .*auth_url; set OS_CLOUD .*or give --neutron-url"),
    (["--neutron-url", "http://127.0.0.1:9"], "reading Neutron failed: .*127.0.0.1:9.*check --neutron-url"),
])
def test_no_neutron_to_read_is_one_line(options: list[str], says: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                        capsys: pytest.CaptureFixture[str]) -> None:
    """No openstacksdk settings, or a URL where no Neutron answers: exit status 1 and one line saying what to set."""
    for name in [name for name in os.environ if name.startswith("OS_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.config/openstack/clouds.yaml
    monkeypatch.chdir(tmp_path)
    assert main(["neutron-sync", "--database", f"sqlite:///{tmp_path / 'nb.sqlite'}", *options]) == 1
    out, err = capsys.readouterr()
    assert out == "" and len(err.splitlines()) == 1 and re.match(f"hwflow neutron-sync: {says}", err), err


def test_what_neutron_no_longer_has_is_not_created_again() -> None:
    """A late update of a port another server has deleted (Neutron has it no more, hwflow neither): not created
    again when Neutron is asked; a port Neutron has is."""
    with tempfile.TemporaryDirectory() as tmp, NbApi.from_url(f"sqlite:///{Path(tmp) / 'nb.sqlite'}") as nb:
        net = nb.create(Network(name="n", vni=7, external_revision=1))
        kept, deleted = (Port(id=_ident(), name=name, network_id=net.id, mac=f"fa:16:3e:00:00:0{n}",
                              port_security=False, external_revision=3) for n, name in enumerate(("kept", "deleted")))
        neutron = FakeNeutron({"ports": [{"id": kept.id, "name": "kept", "network_id": net.id, "fixed_ips": [],
                                          "mac_address": kept.mac, "device_owner": "", "revision_number": 3}]})
        assert sync.put_newer(nb, [kept, deleted], neutron) == [deleted]
        assert [p.id for p in nb.list(Port)] == [kept.id]


class DeletedWhileAsked(FakeNeutron):
    """Neutron as another server's delete leaves it while this one writes: it has the object when first asked,
    then no more."""

    def get(self, collection: str, ident: str) -> dict[str, Any] | None:
        found = super().get(collection, ident)
        self.collections[collection] = [r for r in self.collections[collection] if r["id"] != ident]
        return found


def test_an_object_deleted_in_neutron_while_being_created_is_not_left_in_hwflow() -> None:
    """The other server's delete finished in hwflow before this create was written (its remove found nothing):
    the create, asking Neutron again after, deletes it and says it was left."""
    with tempfile.TemporaryDirectory() as tmp, NbApi.from_url(f"sqlite:///{Path(tmp) / 'nb.sqlite'}") as nb:
        net = nb.create(Network(name="n", vni=7, external_revision=1))
        port = Port(id=_ident(), name="late", network_id=net.id, mac="fa:16:3e:00:00:01", port_security=False,
                    external_revision=3)
        neutron = DeletedWhileAsked({"ports": [{"id": port.id, "name": "late", "network_id": net.id, "fixed_ips": [],
                                                "mac_address": port.mac, "device_owner": "", "revision_number": 3}]})
        assert sync.put_newer(nb, [port], neutron) == [port]
        assert nb.list(Port) == []
        assert sync.put_newer(nb, [port], None) == [] and [p.id for p in nb.list(Port)] == [port.id]  # no Neutron


def test_a_port_with_port_security_and_no_group_drops_all_ip_as_in_neutron() -> None:
    """Neutron drops all IP of such a port; hwflow filters only a port in some group: the port is in hwflow's
    group of no rule, made by the repair before the port (Neutron does not have it), and never deleted after."""
    net = {"id": _ident(), "name": "n", "mtu": 1450, "provider:network_type": "vxlan",
           "provider:segmentation_id": 1000, "revision_number": 1}
    port = {"id": _ident(), "name": "p", "network_id": net["id"], "mac_address": "fa:16:3e:00:00:01",
            "fixed_ips": [], "device_owner": "", "port_security_enabled": True, "security_groups": [],
            "revision_number": 2}
    neutron = FakeNeutron({"networks": [net], "ports": [port]})
    with tempfile.TemporaryDirectory() as tmp, NbApi.from_url(f"sqlite:///{Path(tmp) / 'nb.sqlite'}") as nb:
        report = sync.compare(neutron, nb)
        assert [(d.action, d.kind, d.id) for d in report] == [
            ("create", "network", net["id"]), ("create", "security_group", mapping.DROP_ALL_GROUP),
            ("create", "port", port["id"])]
        assert [d.result for d in sync.repair(neutron, nb, report)] == ["created"] * 3
        assert nb.get(Port, port["id"]).security_groups == [mapping.DROP_ALL_GROUP]
        assert nb.referrers(SecurityGroup, mapping.DROP_ALL_GROUP, SecurityGroupRule) == []
        assert sync.compare(neutron, nb) == []
        neutron.collections["ports"] = []
        assert [(d.action, d.id) for d in sync.compare(neutron, nb)] == [("delete", port["id"])]


def test_an_admin_state_hwflow_holds_otherwise_is_a_difference_the_repair_writes() -> None:
    """A network and a port Neutron holds down and hwflow up (a lost update) are told apart by admin_state_up."""
    net = {"id": _ident(), "name": "n", "mtu": 1450, "provider:network_type": "vxlan",
           "provider:segmentation_id": 1000, "revision_number": 2, "admin_state_up": False}
    port = {"id": _ident(), "name": "p", "network_id": net["id"], "mac_address": "fa:16:3e:00:00:01",
            "fixed_ips": [], "device_owner": "", "port_security_enabled": False, "revision_number": 2,
            "admin_state_up": False}
    neutron = FakeNeutron({"networks": [net], "ports": [port]})
    with tempfile.TemporaryDirectory() as tmp, NbApi.from_url(f"sqlite:///{Path(tmp) / 'nb.sqlite'}") as nb:
        sync.put_newer(nb, [Network(**{**_wanted(neutron)[0].to_dict(), "admin_state_up": True}),
                            Port(**{**_wanted(neutron)[1].to_dict(), "admin_state_up": True})])
        report = sync.compare(neutron, nb)
        assert [(d.action, d.kind, d.detail) for d in report] == [
            ("update", "network", "differs in admin_state_up"), ("update", "port", "differs in admin_state_up")]
        assert [d.result for d in sync.repair(neutron, nb, report)] == ["updated"] * 2
        assert not nb.get(Network, net["id"]).admin_state_up and not nb.get(Port, port["id"]).admin_state_up
        assert sync.compare(neutron, nb) == []
