"""Incremental compilation gives exactly what a full compile gives."""

from __future__ import annotations

import dataclasses

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hwflow.apps.compiler import Compiler, layout_path
from hwflow.model.objects import Network, Port
from hwflow.pipeline import ir
from hwflow.pipeline.topology import Topology

NETS = [Network(id=f"n{i}", name=f"n{i}", vni=10 + i, unique_key=i + 1) for i in range(3)]
NETS_RENUMBERED = [Network(id=f"n{i}", name=f"n{i}", vni=10 + i, unique_key=i + 7) for i in range(3)]
NETS_DOWN = [dataclasses.replace(n, admin_state_up=False) for n in NETS]  # their ports carry no traffic


@st.composite
def states(draw):
    """One state of the world: which networks exist, ports (id -> network, mac), which are local."""
    nets = {n.id: n for n in draw(st.lists(st.sampled_from(NETS + NETS_RENUMBERED + NETS_DOWN), max_size=4)) if n}
    ports = {}
    for i in draw(st.sets(st.integers(0, 7))):
        net = draw(st.sampled_from([n.id for n in NETS]))
        mac = f"fa:16:3e:00:00:{draw(st.integers(1, 3)) * 16 + i:02x}"
        ports[f"p{i}"] = Port(id=f"p{i}", name=f"p{i}", network_id=net, mac=mac, unique_key=100 + i,
                              admin_state_up=draw(st.integers(0, 3)) > 0)
    local = draw(st.sets(st.sampled_from(sorted(ports)))) if ports else set()
    return nets, ports, local


@settings(max_examples=150, deadline=None)
@given(st.lists(states(), min_size=1, max_size=6))
def test_incremental_equals_full(sequence):
    compiler = Compiler.from_file(layout_path(""))
    topo = Topology("h")
    flows = set(compiler.compile(topo).flows)
    for nets, ports, local in sequence:
        changes = topo.update({"network": nets, "port": ports}, local)
        delta = compiler.update(topo, changes)
        flows = (flows - set(delta.removed)) | set(delta.added)
        full = Compiler.from_file(layout_path("")).compile(Topology("h", nets, ports, local))
        assert set(compiler.pipeline().flows) == set(full.flows)
        assert flows == set(full.flows)


@settings(max_examples=150, deadline=None)
@given(st.lists(states(), min_size=1, max_size=6))
def test_the_changed_objects_alone_equal_a_full_compile(sequence):
    """What the agent does on a delta pass: only the objects the cache says changed (``Topology.apply_all``)."""
    compiler = Compiler.from_file(layout_path(""))
    topo = Topology("h")
    compiler.compile(topo)
    before: dict[tuple[str, str], object] = {}
    for nets, ports, local in sequence:
        now = {**{("network", k): v for k, v in nets.items()}, **{("port", k): v for k, v in ports.items()}}
        changed = {key: now.get(key) for key in before.keys() | now.keys() if before.get(key) != now.get(key)}
        compiler.update(topo, topo.apply_all(changed, local, ("network", "port")))
        before = now
        full = Compiler.from_file(layout_path("")).compile(Topology("h", nets, ports, local))
        assert set(compiler.pipeline().flows) == set(full.flows)


def test_one_port_added_touches_only_its_owners():
    compiler = Compiler.from_file(layout_path(""))
    ports = {f"p{i}": Port(id=f"p{i}", name="", network_id=f"n{i % 3}", mac=f"fa:16:3e:00:01:{i:02x}",
                           unique_key=100 + i) for i in range(30)}
    topo = Topology("h", {n.id: n for n in NETS}, ports, set(ports))
    compiler.compile(topo)
    new = Port(id="px", name="", network_id="n0", mac="fa:16:3e:00:02:00", unique_key=999)
    delta = compiler.update(topo, topo.update({"port": {**ports, "px": new}}, set(ports) | {"px"}))
    # the port's owners in classifier, port security, dhcp, responder (no address: no flow) and l3 (a possible
    # next hop: no router here, so no flow), and its network's in the classifier (tunnel/uplink entry); in l2 and
    # output, its own and its network's (flood): the network had local ports already
    assert delta.owners == 6 + 2 * 2
    assert {f.owner for f in delta.added} == {ir.Owner("network", "n0"), ir.Owner("port", "px")}
    # classify, unicast (from L3 and from the tunnel: a local port), delivery, and port security: link-local IPv6,
    # DHCP discovery, IPv6 DAD, drop the rest
    assert sum(f.owner == ("port", "px") for f in delta.added) == 8
    assert [f.owner for f in delta.removed] == [ir.Owner("network", "n0")]


def test_a_networks_first_local_port_brings_in_every_port_of_it():
    compiler = Compiler.from_file(layout_path(""))
    ports = {f"p{i}": Port(id=f"p{i}", name="", network_id="n0", mac=f"fa:16:3e:00:01:{i:02x}", unique_key=100 + i)
             for i in range(10)}
    topo = Topology("h", {n.id: n for n in NETS}, ports, set())  # all remote: n0 is not switched here
    compiler.compile(topo)
    delta = compiler.update(topo, topo.set_local("p3", True))
    # as above for p3, plus in l2 and output the unicast flow of each of the 9 other ports, and dhcp's network
    # (its renewal punts)
    assert delta.owners == 6 + 2 * 2 + 2 * 9 + 1
    assert {f.owner.id for f in delta.added if f.owner.kind == "port"} == set(ports)
    delta = compiler.update(topo, topo.set_local("p3", False))  # and its last one takes them away
    assert {f.owner.id for f in delta.removed if f.owner.kind == "port"} == set(ports)


def test_an_owner_reads_as_kind_colon_id_and_sorts_as_its_text_did():
    owner = ir.Owner("port", "a:b")
    assert str(owner) == "port:a:b" and ir.Owner.parse("port:a:b") == owner and owner == ("port", "a:b")
    texts = ["router_port:r1", "router:r2", "port:p-1", "port:p", "network:n", "l3:defaults", "snat:n",
             "floating_ip:f", "sg_egress:defaults", "security_group:g", "dhcp:defaults"]
    assert [str(o) for o in sorted(map(ir.Owner.parse, texts))] == sorted(texts)
    with pytest.raises(ValueError):
        ir.Owner.parse("no-kind")


def test_every_app_owner_is_an_owner_the_app_can_compute():
    compiler = Compiler.from_file(layout_path(""))
    ports = {f"p{i}": Port(id=f"p{i}", name="", network_id=f"n{i % 3}", mac=f"fa:16:3e:00:01:{i:02x}",
                           unique_key=100 + i) for i in range(6)}
    topo = Topology("h", {n.id: n for n in NETS}, ports, {"p0", "p1"})
    pipeline = compiler.compile(topo)
    assert pipeline.flows and all(type(f.owner) is ir.Owner for f in pipeline.flows)


ops = st.one_of(
    st.tuples(st.just("net"), st.sampled_from(NETS + NETS_RENUMBERED + NETS_DOWN + [None]), st.integers(0, 2)),
    st.tuples(st.just("port"), st.integers(0, 5), st.sampled_from(["n0", "n1", "n2", None])),
    st.tuples(st.just("local"), st.integers(0, 5), st.booleans()),
    st.tuples(st.just("admin"), st.integers(0, 5), st.booleans()),  # a port's admin state set
)


@settings(max_examples=150, deadline=None)
@given(st.lists(ops, max_size=25))
def test_single_object_changes_equal_a_full_compile(operations):
    compiler = Compiler.from_file(layout_path(""))
    topo = Topology("h")
    compiler.compile(topo)
    for op, a, b in operations:
        if op == "net":
            net_id = f"n{b}"
            obj = None if a is None else Network(id=net_id, name=net_id, vni=a.vni, unique_key=a.unique_key,
                                                 admin_state_up=a.admin_state_up)
            if obj is None and net_id not in topo.networks:
                continue
            changes = topo.apply("network", net_id, obj)
        elif op == "port":
            pid = f"p{a}"
            obj = None if b is None else Port(id=pid, name=pid, network_id=b, mac=f"fa:16:3e:00:00:{a:02x}",
                                               unique_key=100 + a)
            if obj is None and pid not in topo.ports:
                continue
            changes = topo.apply("port", pid, obj)
        elif op == "admin":
            pid = f"p{a}"
            if pid not in topo.ports:
                continue
            changes = topo.apply("port", pid, dataclasses.replace(topo.ports[pid], admin_state_up=b))
        else:
            changes = topo.set_local(f"p{a}", b)
        compiler.update(topo, changes)
        full = Compiler.from_file(layout_path("")).compile(
            Topology("h", dict(topo.networks), dict(topo.ports), set(topo.local_port_ids)))
        assert set(compiler.pipeline().flows) == set(full.flows)
