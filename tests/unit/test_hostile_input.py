"""Hostile input never crashes anything (issue 16, part 2).

Random and adversarial objects into the NB API and ``hwflow nb apply`` (wrong types, huge strings, unicode,
broken and later references, duplicates, YAML bombs, files that are not UTF-8 or too big), writers racing on
one object, random and mutated netlink into the simulated NIC, mutated bytes into hwflow's flower and
OpenFlow decoders, and records a foreign writer stored with wrong types: each gets a documented error (one
short line) or a consistent result, the database never holds part of a refused batch, nothing hangs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import random
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_ovs_translate import PORTS, flow_stats_reply, ir_flows
from test_tc_flower import rules

from hwflow.backends.ovs import native, translate
from hwflow.backends.ovs.openflow import OpenFlowError, hello_versions
from hwflow.backends.tc import flower as fl
from hwflow.backends.tc import netlink as nl
from hwflow.cli import main as cli_main
from hwflow.db import NbApi
from hwflow.db.api import REF_TABLE, UNIQUE_TABLE, Create, Update, _ref_keys, _unique_keys
from hwflow.model import (
    KINDS,
    Chassis,
    HwflowError,
    Network,
    Port,
    Router,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)
from hwflow.pipeline import ir
from hwflow.sim.eswitch import Eswitch
from hwflow.sim.profile import load_profile
from hwflow.sim.server import serve_in_background

MAX_MESSAGE = 2000  # an error quoting hostile input stays a short line
NB_SETTINGS = settings(max_examples=60, deadline=None,
                       suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- the database as a whole -----------------------------------------------------------------------------

def contents(api: NbApi) -> dict[tuple[str, str], bytes]:
    """Every record of every table, indexes and counters included: what "nothing changed" compares."""
    found = {}
    for table in [*KINDS, "_counter", UNIQUE_TABLE, REF_TABLE]:
        _, records = api.driver.list(table)
        found.update({(table, r.key): r.value for r in records})
    return found


def assert_consistent(api: NbApi) -> None:
    """Every object decodes, names only objects that exist, and the indexes hold exactly what the objects do."""
    objs = {(o.kind, o.id): o for kind in KINDS for o in api.list(kind)}
    raw = contents(api)
    assert len(objs) == sum(1 for (table, _) in raw if table in KINDS), "a stored record does not decode"
    for obj in objs.values():
        for field, kind, ident in obj.refs():
            assert (kind, ident) in objs, f"{obj.label()}: {field} names {kind} {ident}, which is not stored"
    assert {key for (table, key) in raw if table == REF_TABLE} == {k for o in objs.values() for k in _ref_keys(o)}
    assert {key for (table, key) in raw if table == UNIQUE_TABLE} == {
        k for o in objs.values() for k in _unique_keys(o)}


def assert_one_line(message: str) -> None:
    assert "\n" not in message.strip() and 0 < len(message) < MAX_MESSAGE, message[:3000]


@contextlib.contextmanager
def database() -> Iterator[tuple[str, NbApi]]:
    """A fresh SQLite database holding a small topology (hypothesis's examples each need their own)."""
    with tempfile.TemporaryDirectory(prefix="hwt-hostile-") as tmp:
        url = f"sqlite:///{tmp}/nb.sqlite"
        with NbApi.from_url(url) as api:
            api.apply([Create(o) for o in BASE])
            yield url, api


BASE = [
    Network(id="n1", name="blue", vni=1),
    Network(id="ext", name="public", network_type="flat", physical_network="ext", external=True),
    Subnet(id="s1", network_id="n1", cidr="10.0.0.0/24", gateway_ip="10.0.0.1"),
    Subnet(id="s-ext", network_id="ext", cidr="192.0.2.0/24"),
    SecurityGroup(id="sg1", name="web"),
    SecurityGroupRule(id="rule1", security_group_id="sg1", protocol="tcp", port_min=80, port_max=80),
    Port(id="p1", name="vm1", network_id="n1", mac="fa:16:3e:00:00:01", ips=["10.0.0.5"], security_groups=["sg1"]),
    Router(id="r1", name="gw", gateway_network_id="ext", gateway_ip="192.0.2.10"),
    Chassis(id="host1", tunnel_ip="192.0.2.100"),
]


# --- hostile values ------------------------------------------------------------------------------------------

def _deep(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


def _wide(levels: int) -> Any:
    """A billion laughs in Python: each level lists the one below nine times (shared, never copied)."""
    value: Any = ["lol"] * 9
    for _ in range(levels):
        value = [value] * 9
    return value


class Token:
    """Stands for a value whose repr is itself hostile (a billion laughs, 5,000 nested lists): hypothesis prints
    what it drew, so it draws these, and the test puts the value in (``real``)."""

    def __init__(self, name: str, value: Any) -> None:
        self.name, self.value = name, value

    def __repr__(self) -> str:
        return f"<{self.name}>"


def one_of_these(values: dict[str, Any]) -> st.SearchStrategy[Token]:
    return st.sampled_from([Token(name, value) for name, value in values.items()])


def real(value: Any) -> Any:
    """``value`` with its tokens replaced by what they stand for (the drawn structure around them is small)."""
    if isinstance(value, Token):
        return value.value
    if isinstance(value, list):
        return [real(v) for v in value]
    if isinstance(value, dict):
        return {k: real(v) for k, v in value.items()}
    return value


HUGE = "x" * 200_000
texts = st.text(max_size=12) | st.text(st.characters(codec="utf-8"), max_size=6) | st.sampled_from(
    ["", " ", "\0", "\ud800", "名前", "a/b", "a b", "é" * 300, "-1", "10.0.0.5", "fa:16:3e:00:00:01"]) | one_of_these(
    {"200,000 x": HUGE})
scalars = (st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats() | texts
           | st.sampled_from([-1, 0, 2**32, 2**63]) | one_of_these({"2**20000": 2**20000}))
# Values a foreign record can hold (JSON has no aliases: what it says it spells out) ...
hostile_json = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                            | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=8) | one_of_these(
    {"5,000 nested lists": _deep(5000), "[{}]": [{}], "deep route": [{"destination": _deep(3000), "nexthop": 1}],
     "deep dict": {"a": _deep(5000)}, "20,000 numbers": list(range(20000)), "one IP thrice": ["10.0.0.7"] * 3,
     "9**5 laughs": _wide(4)})
# ... and a caller or a YAML file: a billion laughs too, whose repr (or JSON) would never end.
hostile = hostile_json | one_of_these({"9**10 laughs": _wide(9)})

# Ids of the base topology, of nothing, and of objects a batch may create (before or after the writer).
IDS = ["n1", "ext", "s1", "s-ext", "sg1", "rule1", "p1", "r1", "host1", "new1", "new2", "missing", "blue", "web"]
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "id": st.sampled_from(["", *IDS, "bad id", "x" * 300]),
    "name": st.sampled_from(["", "blue", "vm1", "new1", "host1", "名前", "a\tb"]) | one_of_these({"200,000 x": HUGE}),
    "mac": st.sampled_from(["fa:16:3e:00:00:01", "fa:16:3e:00:00:02", "FA:16:3E:00:00:03", "01:00:00:00:00:00",
                            "zz"]),
    "ips": st.lists(st.sampled_from(["10.0.0.5", "10.0.0.6", "10.0.0.6", "192.0.2.7", "::1", "10.0.0.256"]),
                    max_size=3),
    "cidr": st.sampled_from(["10.0.0.0/24", "10.0.0.0/25", "10.1.0.0/16", "2001:db8::/64", "10.0.0.1/24", "x"]),
    "vni": st.sampled_from([1, 2, 3, 0, 2**24, -1]),
    "network_type": st.sampled_from(["vxlan", "geneve", "vlan", "flat", "gre"]),
    "physical_network": st.sampled_from(["", "ext", "phys2"]),
    "vlan_id": st.sampled_from([0, 10, 5000]),
    "security_groups": st.lists(st.sampled_from(IDS), max_size=3),
    "floating_ip_address": st.sampled_from(["192.0.2.20", "192.0.2.10", "10.0.0.9"]),
    "project_id": st.sampled_from(["default", "t2", "", "bad project"]),
    "revision": st.sampled_from([0, 1, 5, 10_000, -1]),
}
for _field in ("network_id", "gateway_network_id", "floating_network_id", "router_id", "subnet_id", "port_id",
               "security_group_id", "remote_group_id", "chassis"):
    PLAUSIBLE[_field] = st.sampled_from(["", *IDS])
for _field in ("ip", "gateway_ip", "fixed_ip_address", "tunnel_ip", "external_ip"):
    PLAUSIBLE[_field] = st.sampled_from(["", "10.0.0.1", "10.0.0.5", "10.0.0.8", "192.0.2.10", "224.0.0.1"])


@st.composite
def fields_of(draw: st.DrawFn, cls: type) -> dict[str, Any]:
    """Some fields of a ``cls`` object: mostly plausible (so the checks past the types are reached), some hostile."""
    fields: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        choice = draw(st.sampled_from(["omit", "omit", "plausible", "plausible", "plausible", "hostile"]))
        if choice == "omit" and f.name != "id":
            continue
        if choice == "hostile":
            fields[f.name] = draw(hostile)
        elif f.name in PLAUSIBLE:
            fields[f.name] = draw(PLAUSIBLE[f.name])
        elif f.name != "id":
            fields[f.name] = draw({"bool": st.booleans(), "int": st.integers(-2, 70000), "float": st.floats(0, 1e10),
                                   "str": st.sampled_from(["", "ingress", "IPv4", "tcp", "x"]),
                                   }.get(str(f.type), st.just(f.default_factory() if callable(f.default_factory)
                                                              else f.default)))
    return fields


@st.composite
def writes(draw: st.DrawFn) -> list[tuple[str, str, dict[str, Any], Any]]:
    """A batch as (create or update, kind, fields with tokens, if_revision): ``build`` makes the writes."""
    batch = []
    for _ in range(draw(st.integers(1, 5))):
        cls = draw(st.sampled_from(list(KINDS.values())))
        how = draw(st.sampled_from(["create", "update"]))
        revision = draw(st.none() | st.sampled_from([0, 1, 3, -1, "1", 2.0, 2**70])) if how == "update" else None
        batch.append((how, cls.kind, draw(fields_of(cls)), revision))
    return batch


def build(batch: list[tuple[str, str, dict[str, Any], Any]]) -> list[Create | Update]:
    out: list[Create | Update] = []
    for how, kind, fields, revision in batch:
        cls = KINDS[kind]
        obj = cls.__new__(cls)  # every field as drawn, even of the wrong type: what a careless caller passes
        for f in dataclasses.fields(cls):
            setattr(obj, f.name, real(fields[f.name]) if f.name in fields else
                    f.default_factory() if callable(f.default_factory) else f.default)
        out.append(Create(obj) if how == "create" else Update(obj, revision))
    return out


@NB_SETTINGS
@given(writes())
def test_a_batch_of_hostile_writes_is_refused_whole_or_stored_consistently(batch):
    with database() as (_, api):
        before = contents(api)
        try:
            stored = api.apply(build(batch))
        except HwflowError as exc:
            assert_one_line(str(exc))
            assert contents(api) == before, f"a refused batch left records behind: {exc}"
            return
        for obj in stored:
            assert api.get(obj.kind, obj.id).to_dict() == obj.to_dict()
        assert_consistent(api)


@NB_SETTINGS
@given(st.sampled_from(list(KINDS)), st.dictionaries(st.text(max_size=10) | st.sampled_from(
    ["id", "name", "mac", "network_id", "ips", "capabilities", "routes"]), hostile_json, max_size=6))
def test_a_foreign_record_of_any_shape_is_skipped_by_every_read(kind, data):
    """Raw JSON under the NB API (a foreign or newer writer): reads skip it with a log line, never raise else."""
    with database() as (_, api):
        try:
            value = json.dumps({"id": "junk", **real(data)}).encode()
        except (ValueError, RecursionError):
            value = b"[" * 100_000  # what json cannot write, a foreign writer still can
        api.driver.put(kind, "junk", value)
        listed = {o.id for o in api.list(kind)}
        assert {o.id for o in BASE if o.kind == kind} <= listed
        revision, objs = api.snapshot()
        assert {(o.kind, o.id) for o in BASE} <= {(o.kind, o.id) for o in objs}
        try:
            api.get(kind, "junk")
        except HwflowError as exc:
            assert_one_line(str(exc))


def test_a_record_that_is_not_utf8_or_nested_too_deep_is_a_validation_error_naming_it():
    with database() as (_, api):
        for value in (b"\xff\xfe{", b"[" * 100_000 + b"]" * 100_000,
                      b'{"id": "junk", "name": "' + b"x" * 10**6 + b'"}'):
            api.driver.put("port", "junk", value)
            with pytest.raises(HwflowError, match="port junk") as exc:
                api.get("port", "junk")
            assert_one_line(str(exc.value))
            assert "junk" not in {p.id for p in api.list("port")}


# --- writers racing on one object -----------------------------------------------------------------------------

def race(url: str, workers: int, rounds: int, seed: int) -> list[BaseException]:
    """``workers`` threads, each with its own connection, hammering port p1 and network n1 at once.

    Each round a worker re-reads p1 and updates it compare-and-swap, creates a port taking the same MAC as the
    others, or deletes the network with everything it owns (and puts it back). Returns anything raised that is
    not a documented error (a HwflowError).
    """
    unexpected: list[BaseException] = []
    start = threading.Barrier(workers)

    def work(me: int) -> None:
        with NbApi.from_url(url) as api:
            start.wait()
            for n in range(rounds):
                step = (seed + me * 7 + n) % 5
                try:
                    if step in (0, 1):
                        port = api.get("port", "p1")
                        api.update(dataclasses.replace(port, name=f"w{me}-{n}", ips=[f"10.0.0.{10 + me}"]))
                    elif step == 2:
                        api.create(Port(id=f"w{me}-{n}", network_id="n1", mac="fa:16:3e:00:00:99"))
                    elif step == 3:
                        api.delete("network", "n1", cascade=True)
                    else:
                        api.apply([Create(Network(id="n1", name="blue", vni=1)),
                                   Create(Subnet(id="s1", network_id="n1", cidr="10.0.0.0/24")),
                                   Create(Port(id="p1", network_id="n1", mac="fa:16:3e:00:00:01", ips=["10.0.0.5"]))])
                except HwflowError as exc:
                    assert_one_line(str(exc))
                except BaseException as exc:  # noqa: BLE001 - the test's point: nothing else escapes
                    unexpected.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
        assert not t.is_alive(), "a writer hung"
    return unexpected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_concurrent_writers_on_one_object_leave_a_consistent_database(seed):
    with database() as (url, api):
        assert race(url, workers=4, rounds=12, seed=seed) == []
        assert_consistent(api)
        holders = [p.id for p in api.list("port") if p.mac == "fa:16:3e:00:00:99" and p.network_id == "n1"]
        assert len(holders) <= 1, f"two ports took one MAC: {holders}"


# --- hwflow nb apply ---------------------------------------------------------------------------------------------

def run_apply(url: str, path: str, *extra: str) -> tuple[int, str, str]:
    """``hwflow nb apply PATH`` through the real entry point, in process: (status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli_main.main(["nb", "apply", path, "--database", url, *extra])
    return status, out.getvalue(), err.getvalue()


def assert_refused_cleanly(status: int, err: str) -> None:
    assert status == 1, err
    assert err.startswith("hwflow nb: ") and err.endswith("\n") and err.count("\n") == 1, err[:3000]
    assert len(err) < MAX_MESSAGE, err[:3000]


@contextlib.contextmanager
def topology_file(data: bytes) -> Iterator[str]:
    with tempfile.NamedTemporaryFile("wb", suffix=".yaml", prefix="hwt-hostile-", delete=False) as f:
        f.write(data)
    try:
        yield f.name
    finally:
        os.unlink(f.name)


def apply_bytes(data: bytes) -> tuple[int, str, str, bool]:
    """Apply a file; returns the status, output, error and whether the database is as before (when refused)."""
    with database() as (url, api), topology_file(data) as path:
        before = contents(api)
        status, out, err = run_apply(url, path)
        unchanged = contents(api) == before
        if status == 0:
            assert_consistent(api)
        return status, out, err, unchanged


yaml_scalars = st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.text(max_size=10) | st.sampled_from(
    ["blue", "n1", "s1", "sg1", "p1", "10.0.0.7", "fa:16:3e:00:00:07", "10.0.0.0/24", "名前", "x" * 5000])
yaml_values = st.recursive(yaml_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)


@st.composite
def topology_docs(draw: st.DrawFn) -> Any:
    if draw(st.integers(0, 9)) == 0:
        return draw(yaml_values)  # any shape at all, the top level too
    doc: dict[Any, Any] = {}
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["network", "networks", "subnets", "port", "ports", "security_group",
                                     "security_group_rules", "routers", "router_port", "floating_ip", "chassis",
                                     "bogus"]))
        cls = KINDS.get(kind.removesuffix("s") if kind.removesuffix("s") in KINDS else kind, Network)
        items = draw(st.lists(fields_of(cls).map(lambda f: {k: real(v) for k, v in f.items() if k != "revision"}),
                              max_size=3))
        doc[kind] = items if draw(st.integers(0, 5)) else draw(yaml_values)
    return doc


def _yaml(doc: Any) -> bytes:
    try:
        return yaml.safe_dump(doc, allow_unicode=True).encode("utf-8", "surrogatepass")
    except (yaml.YAMLError, RecursionError, ValueError):
        return b"- unrepresentable\n"


@NB_SETTINGS
@given(topology_docs().map(_yaml))
def test_apply_of_a_random_topology_file_is_one_line_or_a_consistent_database(data):
    status, _, err, unchanged = apply_bytes(data)
    if status != 0:
        assert_refused_cleanly(status, err)
        assert unchanged, f"a refused file left records behind: {err}"


@NB_SETTINGS
@given(st.binary(max_size=400) | topology_docs().map(_yaml).flatmap(
    lambda good: st.tuples(st.integers(0, max(0, len(good) - 1)), st.binary(min_size=1, max_size=8)).map(
        lambda cut: good[:cut[0]] + cut[1] + good[cut[0] + len(cut[1]):])))
def test_apply_of_random_or_mutated_bytes_never_crashes(data):
    status, _, err, unchanged = apply_bytes(data)
    if status != 0:
        assert_refused_cleanly(status, err)
        assert unchanged


def laughs(levels: int) -> bytes:
    lines = ['lol0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels + 1):
        lines.append(f"lol{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]")
    lines.append(f"networks: [{{name: bomb, vni: 5, mtu: *l{levels}}}]")
    return ("\n".join(lines) + "\n").encode()


@pytest.mark.parametrize("data, message", [
    (laughs(9), "aliases"),  # 9**10 nodes: refused while parsing, not built
    (laughs(30), "aliases"),
    (b"networks: " + b"[" * 10_000 + b"]" * 10_000 + b"\n", "nest"),
    (b"networks:\n" + b"".join(b"  " * i + b"-\n" for i in range(1, 200)) + b"  " * 200 + b"x\n", "levels deep"),
    (b"networks: [{name: a, vni: " + b"9" * 5000 + b"}]\n", "cannot be read"),
    (b"networks: [{name: a, vni: 2024-13-45}]\n", "cannot be read"),
    (b"networks: [{name: &a [*a], vni: 1}]\n", ""),
    (b"networks: [{name: *nothing}]\n", "not valid YAML"),
    (b"networks: [{name: " + b"x" * 5_000_000 + b", vni: 7}]\n", "name"),
    (b"ports: [{name: vm, network_id: [[[[blue]]]], mac: 'fa:16:3e:00:00:07'}]\n", "must name a network"),
    (b"ports: [{name: [a, b], network_id: blue, mac: 'fa:16:3e:00:00:07'}]\n", "name"),
    (b"networks: [{name: a, vni: 5}, {name: b, vni: 5}]\n", "vni 5 is already used"),
    (b"networks: [{id: n9, name: a, vni: 5}, {id: n9, name: a, vni: 6}]\n", "merge them"),
    (b"ports: [{name: vm, network_id: later, mac: 'fa:16:3e:00:00:07'}]\nnetworks: [{name: later2, vni: 8}]\n",
     "no network with id or name 'later'"),
    (b"networks: [{1: 2}]\n", "keywords must be strings"),
    (b"networks: [{name: a, vni: 7, " + b", ".join(b"f%d: 1" % i for i in range(10_000)) + b"}]\n",
     "unexpected keyword"),
    (b"networks: [{name: \"\\uD800\", vni: 7}]\n", "not valid YAML"),  # libyaml refuses a lone surrogate
    (b"\xef\xbb\xbfnetworks: []\n", None),  # a byte-order mark is UTF-8 still
    (b"---\nnetworks: []\n---\nports: []\n", "not valid YAML"),
])
def test_adversarial_files_are_refused_fast_in_one_line(data, message):
    started = time.monotonic()
    status, _, err, unchanged = apply_bytes(data)
    assert time.monotonic() - started < 10, "took too long"
    if message is None:
        assert status == 0, err
        return
    assert_refused_cleanly(status, err)
    assert message in err and unchanged


def test_a_file_bigger_than_the_limit_is_refused_unread():
    with database() as (url, api), topology_file(b"") as path:
        os.truncate(path, (64 << 20) + 1)  # sparse: cheap to make
        started = time.monotonic()
        status, _, err = run_apply(url, path)
        assert time.monotonic() - started < 10
        assert_refused_cleanly(status, err)
        assert "larger than 64 MiB" in err


def test_a_port_too_big_for_one_transaction_is_refused_before_anything_is_written():
    """A port with more addresses than one transaction of the driver takes (etcd: 128 operations)."""
    with database() as (_, api):
        before = contents(api)
        api.driver.max_txn_ops = 128
        with pytest.raises(HwflowError, match="port big: writing it takes .* more than the database takes"):
            api.apply([Create(Network(id="n2", vni=2)),
                       Create(Port(id="big", network_id="n1", mac="fa:16:3e:00:00:07",
                                   ips=[f"10.0.0.{i}" for i in range(10, 200)]))])
        assert contents(api) == before


# --- the simulated NIC's control socket --------------------------------------------------------------------------

REP0, REP1 = 101, 102
BOUND = 5.0  # seconds any one request may take


def sim_switch() -> Any:
    return Eswitch("hostile0", load_profile("mlx5-connectx7"), [REP0, REP1])


def within(seconds: float, func: Any, *args: Any) -> Any:
    """``func(*args)`` from a worker thread: its result, its exception raised here, or a failure if it hangs."""
    result: list[Any] = []

    def run() -> None:
        try:
            result.append(("ok", func(*args)))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result.append(("raised", exc))

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(seconds)
    assert result, f"{getattr(func, '__name__', func)} hung for more than {seconds}s"
    how, value = result[0]
    if how == "raised":
        raise value
    return value


@st.composite
def valid_requests(draw: st.DrawFn) -> bytes:
    """A request the simulated NIC understands: add (maybe echo), delete, get or dump of a flower rule."""
    rule = dataclasses.replace(draw(rules(max_actions=2)), ifindex=draw(st.sampled_from([REP0, REP1, 7])),
                               parent=fl.INGRESS)
    kind = draw(st.sampled_from(["new", "new", "delete", "get", "dump"]))
    seq = draw(st.integers(0, 2**32 - 1))
    if kind == "new":
        flags = nl.NLM_F_REQUEST | nl.NLM_F_ACK | draw(st.sampled_from(
            [nl.NLM_F_CREATE, nl.NLM_F_CREATE | nl.NLM_F_EXCL, nl.NLM_F_ECHO | nl.NLM_F_CREATE, 0]))
        return fl.encode_newfilter(rule, seq, flags=flags)
    if kind == "delete":
        return fl.encode_delfilter(rule, seq)
    if kind == "get":
        return fl.encode_filter(rule, fl.RTM_GETTFILTER, nl.NLM_F_REQUEST, seq)
    return fl.encode_dump(rule.ifindex, seq)


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[bytes]) -> bytes:
    """A valid encoding with bytes flipped, cut short, grown, spliced into, or whole messages glued together."""
    data = bytearray(draw(valid))
    for _ in range(draw(st.integers(1, 4))):
        how = draw(st.sampled_from(["flip", "set", "truncate", "extend", "splice", "glue", "length"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if how == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif how == "set" and data:
            data[at] = draw(st.sampled_from([0, 1, 0x7F, 0x80, 0xFF]))
        elif how == "truncate":
            del data[at:]
        elif how == "extend":
            data += draw(st.binary(max_size=64))
        elif how == "splice":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif how == "glue":
            data += draw(valid)
        elif how == "length" and len(data) >= 8:  # an attribute's or the header's length, lying
            at = draw(st.integers(0, (len(data) - 2) // 4)) * 4
            struct.pack_into("=H", data, at, draw(st.sampled_from([0, 1, 3, 4, 5, 0xFFFF, len(data), len(data) + 4])))
    return bytes(data)


def assert_replies_are_netlink(replies: list[bytes]) -> None:
    for raw in replies:
        for msg in nl.split_messages(raw):
            assert msg.type in (nl.NLMSG_ERROR, nl.NLMSG_DONE, fl.RTM_NEWTFILTER), msg
            if msg.type == nl.NLMSG_ERROR:
                error, _ = nl.decode_error(msg)
                assert error <= 0


def still_answers(sw: Any) -> None:
    replies = [m for raw in within(BOUND, sw.handle_request, fl.encode_dump(REP0, 4242))
               for m in nl.split_messages(raw)]
    assert replies and replies[-1].type == nl.NLMSG_DONE and replies[-1].seq == 4242


SIM_SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SIM_SETTINGS
@given(st.lists(valid_requests() | mutated(valid_requests()) | st.binary(max_size=200), min_size=1, max_size=6))
def test_random_and_mutated_netlink_gets_an_error_or_nothing_and_the_sim_keeps_answering(requests):
    sw = sim_switch()
    for data in requests:
        assert_replies_are_netlink(within(BOUND, sw.handle_request, data))
    still_answers(sw)


def test_a_served_sim_survives_hostile_datagrams_and_still_answers(tmp_path):
    """At the socket: random, mutated, huge and empty datagrams, and clients that vanish mid-request."""
    path = str(tmp_path / "hwt-hostile-sim.sock")
    stop = serve_in_background(path, sim_switch())
    rand = random.Random(16)
    valid = fl.encode_dump(REP0, 1)

    def connected() -> socket.socket:
        """A client. A connect with a timeout to a unix socket whose backlog is full fails with EAGAIN at once
        (it does not wait as TCP's does): on a loaded machine the server may be a moment behind, not BOUND."""
        deadline = time.monotonic() + BOUND
        while True:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.settimeout(BOUND)
            try:
                s.connect(path)
                return s
            except BlockingIOError:
                s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)

    def ask(data: bytes, expect_reply: bool) -> list[nl.Message]:
        with connected() as s:
            s.settimeout(BOUND if expect_reply else 0.2)
            s.sendall(data)
            try:
                return nl.split_messages(s.recv(1 << 20))
            except TimeoutError:
                assert not expect_reply, "the simulated NIC stopped answering"
                return []

    try:
        rule = fl.FlowerRule(REP0, 10, 1, fl.ETH_P_IP, fl.FlowerKeys(ipv4_dst=0x0A000002), (fl.Mirred(REP1),))
        good = fl.encode_newfilter(rule, 9)
        for i in range(300):
            data = bytearray(good if i % 2 else valid)
            for _ in range(rand.randint(1, 4)):
                at = rand.randrange(len(data))
                data[at] = rand.randrange(256)
            if i % 7 == 0:
                data = bytearray(rand.randbytes(rand.randint(1, 300)))
            if i % 11 == 0:
                del data[rand.randrange(len(data)):]
            if data:
                ask(bytes(data), expect_reply=False)
            assert ask(valid, expect_reply=True)[-1].type == nl.NLMSG_DONE
        for data in (valid * 4000, b"\0" * 200_000):  # bigger than a reply buffer, and all zeros
            ask(data, expect_reply=False)
        for _ in range(20):  # a client that connects, sends, and is gone before the answer
            s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
            s.connect(path)
            s.send(valid)
            s.close()
        assert ask(valid, expect_reply=True)[-1].type == nl.NLMSG_DONE
    finally:
        stop()


# --- hwflow's flower and OpenFlow decoders ------------------------------------------------------------------------

@st.composite
def flower_encodings(draw: st.DrawFn) -> bytes:
    rule = draw(rules(max_actions=3))
    if draw(st.booleans()):
        stats = fl.RuleStats(draw(st.integers(0, 2**32 - 1)), draw(st.integers(0, 2**63)), 10)
        return fl.encode_filter(rule, fl.RTM_NEWTFILTER, nl.NLM_F_MULTI, 1, stats, fl.TCA_CLS_FLAGS_IN_HW)
    return fl.encode_newfilter(rule, draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(flower_encodings()) | st.binary(max_size=300))
def test_the_flower_decoder_raises_its_own_errors_only(data):
    try:
        within(BOUND, fl.decode_filter, data)
    except (fl.FlowerDecodeError, nl.NetlinkDecodeError):
        pass


@st.composite
def flow_stats_replies(draw: st.DrawFn) -> bytes:
    mods = [translate.to_flow_mod(f, PORTS) for f in draw(st.lists(ir_flows(), min_size=1, max_size=3))]
    return flow_stats_reply(mods, [(draw(st.integers(0, 2**64 - 1)), draw(st.integers(0, 2**64 - 1)))] * len(mods))


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(flow_stats_replies()) | st.binary(max_size=300))
def test_the_openflow_dump_decoder_raises_its_own_errors_only(data):
    compiler = translate.FlowCompiler(native.Catalog())
    try:
        within(BOUND, compiler.decode_flow_stats, [data])
    except translate.DumpDecodeError:
        pass


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64) | st.builds(lambda body, length: struct.pack("!BBHI", 4, 0, length, 1) + body,
                                          st.binary(max_size=64), st.integers(0, 0xFFFF)))
def test_a_hello_is_read_as_versions_or_refused_as_an_openflow_error(data):
    try:
        versions = within(BOUND, hello_versions, data)
    except OpenFlowError:
        return
    assert all(isinstance(v, int) and v >= 0 for v in versions)


@pytest.mark.parametrize("build", [
    lambda: nl.encode_message(fl.RTM_DELTFILTER, nl.NLM_F_REQUEST | nl.NLM_F_ACK, 1, b"\0" * 4),
    lambda: nl.encode_message(fl.RTM_GETTFILTER, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, 1, b"\0" * 4),
    lambda: nl.encode_message(fl.RTM_GETTFILTER, nl.NLM_F_REQUEST, 1, fl.TCMSG.pack(0, REP0, 0, fl.INGRESS, 0)
                              + nl.nla(fl.TCA_CHAIN, b"\1")),
    lambda: nl.encode_message(fl.RTM_DELTFILTER, nl.NLM_F_REQUEST, 1, fl.TCMSG.pack(0, REP0, 0, fl.INGRESS, 0)
                              + b"\x08\x00\x0b\x00\x01"),
], ids=["delete-short-tcmsg", "dump-short-tcmsg", "get-short-chain", "delete-cut-attribute"])
def test_a_request_cut_short_is_einval_not_a_dead_sim(build):
    """Found by the property above: a delete, get or dump whose tcmsg or chain was cut short raised out of the
    eswitch (FlowerDecodeError, struct.error), which ended the served NIC's loop."""
    sw = sim_switch()
    replies = [m for raw in sw.handle_request(build()) for m in nl.split_messages(raw)]
    assert [nl.decode_error(m)[0] for m in replies if m.type == nl.NLMSG_ERROR] == [-22]
    still_answers(sw)


def test_a_flow_entry_of_length_zero_is_an_error_not_an_endless_loop():
    """Found by the property above: a flow stats entry claiming length 0 never moved the decoder on."""
    mod = translate.to_flow_mod(ir.Flow(0, 1, ir.Match.of(in_port=10), (), "x"), PORTS)
    data = bytearray(flow_stats_reply([mod], [(0, 0)]))
    struct.pack_into("!H", data, 16, 0)  # the first entry's length, after the 16-byte multipart header
    with pytest.raises(translate.DumpDecodeError, match="length 0"):
        within(BOUND, translate.FlowCompiler(native.Catalog()).decode_flow_stats, [bytes(data)])


# --- records a foreign writer left in the database ---------------------------------------------------------------

FOREIGN = {  # key -> what a foreign (or newer, or broken) writer stored under the port table
    "junk-type": b'{"id": "junk-type", "network_id": "n1", "mac": 7}',
    "junk-missing": b'{"id": "junk-missing"}',
    "junk-unknown": b'{"id": "junk-unknown", "network_id": "n1", "mac": "fa:16:3e:00:00:77", "colour": "red"}',
    "junk-id": b'{"id": "someone-else", "network_id": "n1", "mac": "fa:16:3e:00:00:78"}',
    "junk-list": b'["id", "junk-list"]',
    "junk-bytes": b"\xff\xfe\x00port",
    "junk-deep": b"[" * 50_000 + b"]" * 50_000,
    "junk-huge": b'{"id": "junk-huge", "network_id": "n1", "mac": "fa:16:3e:00:00:79", "name": "' + b"x" * 300_000
                 + b'"}',
}


def test_the_agent_cache_skips_foreign_records_naming_them_and_keeps_serving(caplog):
    import logging

    from hwflow.agent.cache import NbCache
    caplog.set_level(logging.WARNING)
    with database() as (_, api):
        changed = threading.Event()
        cache = NbCache(api, changed.set, "host1", watch_timeout=0.2)
        cache.resync()
        cache.set_local_ports(["p1"])
        cache.start()
        try:
            held = {(o.kind, o.id) for o in cache.held()}
            for key, value in FOREIGN.items():
                api.driver.put("port", key, value)
            api.driver.put(REF_TABLE, "network/n1/port/junk-ref", b'{"id": "junk-ref", "mac": []}')
            # A held object overwritten with junk (a write that needs it is refused, naming it; the cache keeps it).
            api.driver.put("security_group_rule", "rule1",
                           b'{"id": "rule1", "security_group_id": "sg1", "protocol": 6}')
            api.create(Port(id="vm2", network_id="n1", mac="fa:16:3e:00:00:02", ips=["10.0.0.6"]))
            deadline = time.monotonic() + 20
            while "vm2" not in cache.objects("port"):
                assert time.monotonic() < deadline, "the cache stopped following the database"
                time.sleep(0.05)
            assert not set(FOREIGN) & set(cache.objects("port"))
            assert cache.objects("security_group_rule")["rule1"].protocol == "tcp"  # the good copy stays
            assert held <= {(o.kind, o.id) for o in cache.held()}
            for key in FOREIGN:
                assert f"port {key}" in caplog.text, f"no log line names port {key}"
            assert "security_group_rule rule1" in caplog.text
            assert all(len(r.getMessage()) < MAX_MESSAGE for r in caplog.records)

            # A new agent (a restart) reads the same database from scratch: the junk is skipped there too.
            caplog.clear()
            fresh = NbCache(api, lambda: None, "host1")
            fresh.resync()
            fresh.set_local_ports(["p1", "vm2"])
            assert {"p1", "vm2"} <= set(fresh.objects("port")) and not set(FOREIGN) & set(fresh.objects("port"))
            assert "junk-ref" in caplog.text
            # The rule reaches a new agent through the reference index, which holds the copy the NB API last
            # wrote (a foreign writer bypassing the API does not update it): the good copy or none, never junk.
            assert fresh.objects("security_group_rule").get("rule1", BASE[5]).protocol == "tcp"
        finally:
            cache.stop()
