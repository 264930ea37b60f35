"""How the NB API cuts a batch into transactions, and what it stores (on the embedded database).

What a batch does on every driver (all or nothing, clashes, races) is in
tests/functional/test_db_conformance.py; here, the limits a driver sets.
"""

from __future__ import annotations

import json

import pytest

from hwflow.db import NbApi
from hwflow.db.api import encode
from hwflow.model import (
    Chassis,
    Conflict,
    FloatingIP,
    Network,
    Port,
    Router,
    RouterPort,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)


@pytest.fixture
def api(tmp_path):
    with NbApi.from_url(f"sqlite:///{tmp_path}/nb.sqlite") as nb:
        yield nb


def record(txns: list, api: NbApi, monkeypatch: pytest.MonkeyPatch) -> None:
    """Note every transaction the driver is given: (compares, ops)."""
    txn = api.driver.txn

    def noted(compares, ops):
        txns.append((list(compares), list(ops)))
        return txn(compares, ops)

    monkeypatch.setattr(api.driver, "txn", noted)


@pytest.mark.parametrize("max_ops", [8, 20, 128])
def test_no_transaction_holds_more_than_the_driver_takes(api, monkeypatch, max_ops):
    txns: list = []
    monkeypatch.setattr(api.driver, "max_txn_ops", max_ops)
    record(txns, api, monkeypatch)
    batch = [Network(id="n", vni=1), Subnet(id="s", network_id="n", cidr="10.0.0.0/24"), SecurityGroup(id="g"),
             *(Port(name=f"p{i}", network_id="n", mac=f"fa:16:3e:00:00:{i:02x}", ips=[f"10.0.0.{i + 2}"],
                    security_groups=["g"]) for i in range(100))]
    stored = api.create_many(batch)
    assert all(len(compares) <= max_ops and len(ops) <= max_ops for compares, ops in txns)
    assert sum(len(ops) for _, ops in txns) >= 100 * 5  # a port: itself, its MAC, its IP, two index entries
    per_txn = (max_ops - 1) // 5  # ports a transaction can take beside the kind's counter
    assert len(txns) <= -(-100 // per_txn) + 2  # and none emptier than it need be (+ the network, subnet, group)
    assert [o.revision for o in stored] == sorted(o.revision for o in stored)
    assert len({o.revision for o in stored}) == len(txns)


def test_no_transaction_carries_more_bytes_than_the_driver_takes(api, monkeypatch):
    txns: list = []
    monkeypatch.setattr(api.driver, "max_txn_bytes", 4000)
    record(txns, api, monkeypatch)
    api.create(Network(id="n", vni=1))
    txns.clear()
    api.create_many([Port(name=f"p{i}", network_id="n", mac=f"fa:16:3e:00:00:{i:02x}", device_owner="x" * 200)
                     for i in range(40)])
    sizes = [sum(len(op.key) + len(getattr(op, "value", b"")) for op in ops) for _, ops in txns]
    assert len(txns) > 1 and max(sizes) <= 4000 + 64  # the kind's counter rides along uncounted
    assert len(api.list("port")) == 40


def test_sqlite_writes_a_batch_in_one_transaction(api, monkeypatch):
    txns: list = []
    record(txns, api, monkeypatch)
    api.create(Network(id="n", vni=1))
    api.create_many([Port(network_id="n", mac=f"fa:16:3e:00:{i // 256:02x}:{i % 256:02x}") for i in range(2000)])
    assert len(txns) == 2 and len(txns[1][1]) == 2000 * 3 + 1


@pytest.mark.parametrize("obj", [
    Chassis(name="c", tunnel_ip="192.0.2.1", capabilities={"nic": {"rules": [1, 2]}}),
    Network(id="n", vni=1, mtu=9000),
    Subnet(id="s", network_id="n", cidr="10.0.0.0/24",
           host_routes=[{"destination": "0.0.0.0/0", "nexthop": "10.0.0.1"}]),
    Port(id="p", network_id="n", mac="fa:16:3e:00:00:01", ips=["10.0.0.5"], security_groups=["g"],
         allowed_address_pairs=[{"ip_address": "10.0.0.128/25", "mac_address": "fa:16:3e:00:00:01"}]),
    Router(id="r", routes=[{"destination": "10.1.0.0/16", "nexthop": "10.0.0.254"}]),
    RouterPort(id="rp", router_id="r", network_id="n", subnet_id="s", mac="fa:16:3e:00:00:02", ip="10.0.0.1"),
    SecurityGroup(id="g", description="web"),
    SecurityGroupRule(id="sr", security_group_id="g", protocol="tcp", port_min=80, port_max=80),
    FloatingIP(id="f", floating_network_id="n", floating_ip_address="203.0.113.5", revision=7, unique_key=3),
])
def test_a_record_holds_every_field_but_the_revision(obj):
    expected = obj.to_dict()
    del expected["revision"]
    assert json.loads(encode(obj)) == expected
    assert encode(obj) == json.dumps(expected, sort_keys=True, separators=(",", ":")).encode()


def test_a_conflict_the_driver_cannot_place_is_retried_not_blamed_on_the_first_object(api, monkeypatch):
    """etcd's txn says -1 when no compared record reads back as moved: check again, do not guess who lost."""
    txn, calls = api.driver.txn, []

    def unplaced_once(compares, ops):
        calls.append(compares[0])
        if len(calls) == 1:
            first = compares[0]
            raise Conflict(first.table, first.key, first.mod_revision, -1, "the record changed and changed back")
        return txn(compares, ops)

    monkeypatch.setattr(api.driver, "txn", unplaced_once)
    [net] = api.create_many([Network(id="n", vni=1)])
    assert calls[0].key == "n" and len(calls) == 2 and api.get("network", "n") == net
