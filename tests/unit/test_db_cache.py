"""The agent's selective cache: it holds what its local ports need, follows the watch, grows and shrinks.

Runs on the embedded database; tests/functional/test_agent_faults.py does
the same against a real etcd that is taken away and brought back.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwflow.agent.cache import NbCache
from hwflow.db import NbApi
from hwflow.model import (
    Chassis,
    FloatingIP,
    HwflowError,
    Network,
    Port,
    Router,
    RouterPort,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)


@pytest.fixture
def api(tmp_path) -> Iterator[NbApi]:
    with NbApi.from_url(f"sqlite:///{tmp_path}/nb.sqlite") as nb:
        yield nb


class Agent:
    """A cache as the agent of ``host1`` uses it, counting the change notifications."""

    def __init__(self, api: NbApi) -> None:
        self.changed = threading.Event()
        self.cache = NbCache(api, self.changed.set, "host1", watch_timeout=0.2)

    def ids(self, kind: str | None = None) -> set[str]:
        return {o.id for o in self.cache.held() if kind is None or o.kind == kind}

    def wait_for(self, condition: Callable[[], bool], timeout: float = 10) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, f"timed out; holding {sorted(self.ids())}"
            time.sleep(0.02)


@pytest.fixture
def agent(api) -> Iterator[Agent]:
    a = Agent(api)
    yield a
    a.cache.stop()


_macs = iter(range(1, 10_000))


def port(api: NbApi, name: str, net: Network, ip: str, chassis: str, project: str, groups=()) -> Port:
    return api.create(Port(id=name, name=name, project_id=project, network_id=net.id,
                           mac=f"fa:16:3e:00:00:{next(_macs):02x}", ips=[ip], chassis=chassis,
                           security_groups=list(groups)))


def build(api: NbApi) -> None:
    """Tenant A and tenant B, sharing only the external network (project admin)."""
    for host in ("host1", "host2", "host3", "host4"):
        api.put_chassis(Chassis(name=host, tunnel_ip=f"192.0.2.{host[-1]}"))
    ext = api.create(Network(id="ext", project_id="admin", network_type="flat", physical_network="public",
                             external=True))
    api.create(Subnet(id="ext-sub", project_id="admin", network_id=ext.id, cidr="203.0.113.0/24"))
    # Tenant A: a1 -- router ra -- a2; a3 unrelated to host1 except through a remote group.
    nets = {n: api.create(Network(id=n, project_id="A", vni=i)) for i, n in enumerate(("a1", "a2", "a3"), 1)}
    for i, n in enumerate(("a1", "a2", "a3"), 1):
        api.create(Subnet(id=f"{n}-sub", project_id="A", network_id=n, cidr=f"10.{i}.0.0/24"))
    ra = api.create(Router(id="ra", project_id="A", gateway_network_id=ext.id, gateway_ip="203.0.113.2"))
    for i, n in enumerate(("a1", "a2"), 1):
        api.create(RouterPort(id=f"ra-{n}", project_id="A", router_id=ra.id, network_id=n, subnet_id=f"{n}-sub",
                              mac=f"fa:16:3e:00:01:0{i}", ip=f"10.{i}.0.1"))
    web = api.create(SecurityGroup(id="web", project_id="A"))
    admins = api.create(SecurityGroup(id="admins", project_id="A"))
    api.create(SecurityGroupRule(id="web-ssh", project_id="A", security_group_id=web.id, protocol="tcp",
                                 port_min=22, port_max=22, remote_group_id=admins.id))
    port(api, "pa1", nets["a1"], "10.1.0.11", "host1", "A", [web.id])
    port(api, "pa2", nets["a1"], "10.1.0.12", "host2", "A")
    port(api, "pa3", nets["a2"], "10.2.0.13", "host3", "A")
    port(api, "pa4", nets["a3"], "10.3.0.14", "host3", "A", [admins.id])
    port(api, "pa5", nets["a3"], "10.3.0.15", "host3", "A")  # a3 is not routed to a1: not needed
    api.create(FloatingIP(id="fa", project_id="A", floating_network_id=ext.id, floating_ip_address="203.0.113.10",
                          port_id="pa1"))
    # Tenant B: its own network, router, group and floating IP, on host2 and host4.
    b1 = api.create(Network(id="b1", project_id="B", vni=100))
    api.create(Subnet(id="b1-sub", project_id="B", network_id=b1.id, cidr="10.1.0.0/24"))
    rb = api.create(Router(id="rb", project_id="B", gateway_network_id=ext.id, gateway_ip="203.0.113.3"))
    api.create(RouterPort(id="rb-b1", project_id="B", router_id=rb.id, network_id=b1.id, subnet_id="b1-sub",
                          mac="fa:16:3e:00:02:01", ip="10.1.0.1"))
    sgb = api.create(SecurityGroup(id="sgb", project_id="B"))
    api.create(SecurityGroupRule(id="sgb-any", project_id="B", security_group_id=sgb.id, remote_group_id=sgb.id))
    port(api, "pb1", b1, "10.1.0.21", "host2", "B", [sgb.id])
    port(api, "pb2", b1, "10.1.0.22", "host4", "B", [sgb.id])
    api.create(FloatingIP(id="fb", project_id="B", floating_network_id=ext.id, floating_ip_address="203.0.113.20",
                          port_id="pb1"))


TENANT_A_NEEDS = {
    "pa1", "pa2", "pa3", "pa4", "a1", "a2", "a1-sub", "a2-sub", "ra", "ra-a1", "ra-a2", "web", "web-ssh",
    "admins", "fa", "ext", "ext-sub", "host1", "host2", "host3",
}


def test_an_agent_holds_what_its_ports_need_and_nothing_of_another_tenant(api, agent):
    build(api)
    agent.cache.resync()
    assert agent.ids() == {"host1"}  # no local port yet: only its own chassis
    assert agent.cache.set_local_ports(["pa1", "not-a-port"])
    assert agent.ids() == TENANT_A_NEEDS
    assert {o.project_id for o in agent.cache.held()} == {"A", "admin", "default"}  # chassis are "default"
    assert not agent.cache.set_local_ports(["pa1", "not-a-port"])  # nothing new: no reads, no change

    agent.cache.resync()  # the same set from a full snapshot
    assert agent.ids() == TENANT_A_NEEDS


def test_the_set_grows_and_shrinks_with_the_local_ports(api, agent):
    build(api)
    agent.cache.resync()
    agent.cache.set_local_ports(["pa1"])
    port(api, "pb-here", api.get("network", "b1"), "10.1.0.30", "host1", "B", ["sgb"])
    agent.cache.set_local_ports(["pa1", "pb-here"])
    assert {"b1", "b1-sub", "rb", "rb-b1", "sgb", "sgb-any", "pb1", "pb2", "pb-here", "host4"} <= agent.ids()
    assert "fb" not in agent.ids()  # another port's floating IP
    agent.cache.set_local_ports(["pb-here"])
    assert not {o.id for o in agent.cache.held() if o.project_id == "A"}
    agent.cache.set_local_ports([])
    assert agent.ids() == {"host1"}


def test_a_port_bound_elsewhere_is_not_local(api, agent):
    build(api)
    agent.cache.resync()
    agent.cache.set_local_ports(["pb1"])  # plugged here by mistake, but bound to host2
    assert agent.ids() == {"host1"}


def test_watched_changes_are_taken_in_when_they_matter(api, agent):
    build(api)
    agent.cache.resync()
    agent.cache.set_local_ports(["pa1"])
    agent.cache.start()
    a1 = api.get("network", "a1")
    port(api, "pa6", a1, "10.1.0.16", "host4", "A")  # a new neighbour on a local network, on a new chassis
    agent.wait_for(lambda: {"pa6", "host4"} <= agent.ids())
    port(api, "pa7", a1, "10.1.0.17", "host5", "A")  # bound to a chassis that registers only afterwards
    agent.wait_for(lambda: "pa7" in agent.ids())
    api.put_chassis(Chassis(name="host5", tunnel_ip="192.0.2.5"))
    agent.wait_for(lambda: "host5" in agent.ids())
    port(api, "pb3", api.get("network", "b1"), "10.1.0.23", "host2", "B")  # tenant B: dropped on arrival
    mtu = api.update(Network(**{**a1.to_dict(), "mtu": 1400}))
    agent.wait_for(lambda: agent.cache.objects("network")["a1"].mtu == 1400)
    assert agent.cache.revision >= mtu.revision and "pb3" not in agent.ids()

    # Attaching a new network to the router brings it and its ports in; detaching drops them.
    a3_sub = api.get("subnet", "a3-sub")
    api.create(RouterPort(id="ra-a3", project_id="A", router_id="ra", network_id="a3", subnet_id=a3_sub.id,
                          mac="fa:16:3e:00:01:03", ip="10.3.0.1"))
    agent.wait_for(lambda: {"a3", "a3-sub", "pa5", "ra-a3"} <= agent.ids())
    api.delete("router_port", "ra-a3")
    agent.wait_for(lambda: "a3" not in agent.ids())
    assert "pa5" not in agent.ids() and "pa4" in agent.ids()  # pa4 stays: it is in a remote group

    # Leaving the remote group, and the group rule going, shrink the set too.
    api.delete("security_group_rule", "web-ssh")
    agent.wait_for(lambda: "pa4" not in agent.ids())
    assert "admins" not in agent.ids()


def test_a_compacted_history_means_a_full_resync(api, agent, caplog):
    build(api)
    agent.cache.resync()
    agent.cache.set_local_ports(["pa1"])
    stood_at = agent.cache.revision
    pa2 = api.get("port", "pa2")
    api.update(Port(**{**pa2.to_dict(), "name": "renamed"}))
    api.delete("port", "pa3")
    api.driver.compact(api.driver.current_revision())
    agent.cache.start()
    agent.wait_for(lambda: "pa3" not in agent.ids() and agent.cache.objects("port")["pa2"].name == "renamed")
    assert f"compacted past revision {stood_at + 1}: doing a full resync" in caplog.text
    assert agent.changed.is_set()


def test_a_bad_record_is_skipped(api, agent, caplog):
    build(api)
    agent.cache.resync()
    agent.cache.set_local_ports(["pa1"])
    agent.cache.start()
    api.driver.put("port", "pa2", b'{"id": "pa2", "network_id": "a1", "mac": "not a mac"}')
    port(api, "pa7", api.get("network", "a1"), "10.1.0.17", "host2", "A")
    agent.wait_for(lambda: "pa7" in agent.ids())
    assert "pa2" in agent.ids()  # the last good value stays
    assert "skipping a bad change" in caplog.text and "not a mac" in caplog.text


# The incremental selection (watch + targeted reads) always equals a fresh full sync.

Op = tuple[str, int, int]
ops = st.lists(st.tuples(st.sampled_from(["port", "unport", "attach", "detach", "group", "rule", "unrule", "local"]),
                         st.integers(0, 3), st.integers(0, 3)), min_size=1, max_size=12)


def _mutate(api: NbApi, op: Op, n: int) -> list[str] | None:
    """Apply one random operation; returns new local ids for "local", else None. Refusals are fine."""
    action, a, b = op
    net, group = f"n{a}", f"g{b}"
    try:
        if action == "port":
            api.create(Port(id=f"p{n}", network_id=net, mac=f"fa:16:3e:00:03:{n:02x}", ips=[f"10.{a}.0.{n + 10}"],
                            chassis=f"host{b}", security_groups=[group] if b % 2 else []))
        elif action == "unport":
            ports = [p for p in api.list("port") if p.network_id == net]
            if ports:
                api.delete("port", ports[b % len(ports)].id)
        elif action == "attach":
            api.create(RouterPort(id=f"r{b}-{net}", router_id=f"r{b}", network_id=net, subnet_id=f"{net}-sub",
                                  mac=f"fa:16:3e:00:04:{a * 4 + b:02x}", ip=f"10.{a}.0.{200 + b}"))
        elif action == "detach":
            api.delete("router_port", f"r{b}-{net}")
        elif action == "group":
            ports = [p for p in api.list("port") if p.network_id == net]
            if ports:
                api.update(Port(**{**ports[0].to_dict(), "security_groups": [group]}))
        elif action == "rule":
            api.create(SecurityGroupRule(id=f"rule{n}", security_group_id=group, remote_group_id=f"g{a}"))
        elif action == "unrule":
            rules = [r for r in api.list("security_group_rule") if r.security_group_id == group]
            if rules:
                api.delete("security_group_rule", rules[0].id)
        elif action == "local":
            return sorted({f"p{a}", f"p{b}"})  # ids of ports that may or may not exist (yet)
    except HwflowError:
        pass
    return None


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops)
def test_the_followed_selection_equals_a_fresh_full_sync(tmp_path_factory, operations):
    path = tmp_path_factory.mktemp("prop") / "nb.sqlite"
    with NbApi.from_url(f"sqlite:///{path}") as api:
        for i in range(4):
            api.create(Network(id=f"n{i}", vni=i + 1))
            api.create(Subnet(id=f"n{i}-sub", network_id=f"n{i}", cidr=f"10.{i}.0.0/24"))
            api.create(SecurityGroup(id=f"g{i}"))
            api.create(Router(id=f"r{i}"))
            api.put_chassis(Chassis(name=f"host{i}", tunnel_ip=f"192.0.2.{i + 1}"))
        api.create(Port(id="p0", network_id="n0", mac="fa:16:3e:00:05:01", ips=["10.0.0.5"], chassis="host1"))
        follower = NbCache(api, lambda: None, "host1", watch_timeout=0.05)
        follower.resync()
        follower.set_local_ports(["p0"])
        assert follower.drain() is None  # a resync: the reader must compare everything
        replica = {(o.kind, o.id): o for o in follower.held()}  # what the agent's topology view holds
        local = ["p0"]
        follower.start()
        try:
            for n, op in enumerate(operations, 1):
                new_local = _mutate(api, op, n)
                if new_local is not None:
                    local = new_local
                    follower.set_local_ports(local)
                if n % 3 == 0:
                    _take(replica, follower.drain())
            target = api.driver.current_revision()
            deadline = time.monotonic() + 20
            while follower.revision < target:
                assert time.monotonic() < deadline, "the follower did not catch up"
                time.sleep(0.01)
        finally:
            follower.stop()
        _take(replica, follower.drain())
        assert replica == {(o.kind, o.id): o for o in follower.held()}  # the drained changes told it all
        fresh = NbCache(api, lambda: None, "host1")
        fresh.set_local_ports(local)
        fresh.resync()
        assert {(o.kind, o.id, o.revision) for o in follower.held()} == {
            (o.kind, o.id, o.revision) for o in fresh.held()}


def _take(replica: dict, drained: dict | None) -> None:
    assert drained is not None, "no resync happened: the cache should know what changed"
    for key, obj in drained.items():
        if obj is None:
            replica.pop(key, None)
        else:
            replica[key] = obj
