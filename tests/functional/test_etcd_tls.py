"""The database closed to strangers (issue 16, part 4): a real etcd with TLS, --client-cert-auth and auth on.

One etcd serves clients over TLS only, with certificates of a CA made here.
``hwflow db auth setup`` makes root and hwflow-admin and enables auth;
``hwflow db auth add-chassis`` makes each chassis's user. Then: a chassis's
credential registers and keeps alive its own chassis and reports its own
ports' status, and nothing else (a network, a port, another chassis or its
ports' status: refused, one line, nothing changes); the
admin writes the logical network; a client without a certificate, with one
of another CA, with a Common Name, without a user or with a wrong password
is refused with a line saying what to change; a real agent with its
chassis's credential registers, stays alive, forwards its VMs' pings and
reports their ports up.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tls_pki import Authority, Pair

from hwflow.conf import new_conf
from hwflow.db import NbApi, etcd_auth
from hwflow.db.api import PORT_STATUS_TABLE
from hwflow.db.etcd import Credentials, EtcdDriver, b64
from hwflow.db.etcd_server import EtcdCluster, ServerTls
from hwflow.model import Chassis, DatabaseUnavailable, Network, Port, Subnet
from hwflow.model.errors import AccessDenied, NotFound
from hwflow.sim.host import SimHost, in_ns, run

pytestmark = pytest.mark.functional

# The management link a simulated host's agent reaches etcd by: a veth whose root end etcd listens on.
MGMT_ETCD, MGMT_HOST, MGMT_PREFIX = "10.253.77.1", "10.253.77.2", 30
TABLES = ("chassis", "network", "subnet", "port", "_alive", "_counter", "_unique", "_ref", PORT_STATUS_TABLE)


class Secured:
    """The etcd, its CA, and a config file per identity (``conf(name)``)."""

    def __init__(self, root: Path, cluster: EtcdCluster, ca: Authority, mgmt: str) -> None:
        self.root, self.cluster, self.ca, self.mgmt = root, cluster, ca, mgmt
        self.client = ca.issue("client")
        self.passwords: dict[str, str] = {}

    def write_conf(self, name: str, pair: Pair | None = None, user: str = "", password: str = "",
                   ca_file: Path | None = None, url: str = "") -> Path:
        pair = pair or self.client
        lines = ["[database]", f"url = {url or self.cluster.url}", f"ca_file = {ca_file or self.ca.cert}",
                 f"cert_file = {pair.cert}", f"key_file = {pair.key}"]
        if user:
            lines += [f"username = {user}", f"password = {password or self.passwords[user]}"]
        path = self.root / f"{name}.conf"
        path.write_text("\n".join(lines) + "\n")
        path.chmod(0o600)
        return path

    def hwflow(self, *argv: str) -> Any:
        """``hwflow ARGV --format json``, its JSON answer (the command must succeed)."""
        done = subprocess.run([sys.executable, "-m", "hwflow.cli.main", *argv, "--format", "json"],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    def api(self, user: str = "", **conf: Any) -> NbApi:
        """The database as ``user`` (none: no user), with ``conf`` changing what write_conf writes."""
        path = self.write_conf(f"api-{user or 'nobody'}-{secrets.token_hex(3)}", user=user, **conf)
        return NbApi.from_url(self.cluster.url, new_conf(["--config-file", str(path)]))

    def add_chassis(self, name: str) -> dict[str, Any]:
        (account,) = self.hwflow("db", "auth", "add-chassis", name, "--config-file", str(self.conf("root")))[
            "accounts"]
        self.passwords[name] = account["password"]
        return account

    def conf(self, user: str) -> Path:
        return self.write_conf(user, user=user)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    root = tmp_path_factory.mktemp("etcd-tls")
    ca = Authority(root, "hwflow")
    server, probe = ca.issue("server", server=True, ips=(MGMT_ETCD,)), ca.issue("probe")
    mgmt = f"hwtls{secrets.token_hex(2)}"
    run("ip", "link", "add", mgmt, "type", "veth", "peer", "name", f"{mgmt}x")
    try:
        run("ip", "addr", "add", f"{MGMT_ETCD}/{MGMT_PREFIX}", "dev", mgmt)
        run("ip", "link", "set", mgmt, "up")
        with EtcdCluster(1, tls=ServerTls(str(ca.cert), str(server.cert), str(server.key), str(probe.cert),
                                          str(probe.key)), more_client_ips=[MGMT_ETCD]) as cluster:
            env = Secured(root, cluster, ca, mgmt)
            setup = env.hwflow("db", "auth", "setup", "--config-file", str(env.write_conf("bootstrap")))
            assert setup["auth_enabled"] is True
            env.passwords.update({a["user"]: a["password"] for a in setup["accounts"]})
            for chassis in ("host-a", "host-b"):
                env.add_chassis(chassis)
            yield env
    finally:
        run("ip", "link", "del", mgmt, check=False)  # gone already if its peer went with a host's namespace


def stored(api: NbApi, kind: type, ident: str) -> bool:
    try:
        api.get(kind, ident)
    except NotFound:
        return False
    return True


def everything(api: NbApi) -> dict[str, list[tuple[str, bytes, int]]]:
    """Every record of hwflow's tables with its revision: what must not move when a write is refused."""
    return {t: [(r.key, r.value, r.mod_revision) for r in api.driver.list(t)[1]] for t in TABLES}


def test_add_chassis_grants_exactly_its_own_keys(secured: Secured) -> None:
    account = secured.add_chassis("host-c")
    assert account["role"] == "hwflow-chassis-host-c"
    assert account["grants"] == [
        {"permission": "read", "key": "/hwflow/", "prefix": True},
        {"permission": "readwrite", "key": "/hwflow/chassis/host-c", "prefix": False},
        {"permission": "readwrite", "key": "/hwflow/_alive/host-c", "prefix": False},
        {"permission": "readwrite", "key": "/hwflow/port_status/host-c/", "prefix": True},
    ]
    with secured.api("root") as root:  # as etcd holds it
        perms = root.driver.request("/auth/role/get", {"role": "hwflow-chassis-host-c"})["perm"]
    assert len(perms) == 4
    with secured.api("root") as root:  # more than its own, by hand: a role, and a grant on its role
        root.driver.request("/auth/user/grant", {"user": "host-c", "role": "hwflow-admin"})
        root.driver.request("/auth/role/grant", {"name": "hwflow-chassis-host-c", "perm": {
            "permType": "READWRITE", "key": b64("/hwflow/network/"), "range_end": b64("/hwflow/network0")}})
    old = secured.passwords["host-c"]
    secured.add_chassis("host-c")  # again: a new password, the old one refused, the extras gone
    with secured.api("root") as root:
        assert root.driver.request("/auth/user/get", {"name": "host-c"})["roles"] == ["hwflow-chassis-host-c"]
        assert len(root.driver.request("/auth/role/get", {"role": "hwflow-chassis-host-c"})["perm"]) == 4
    with secured.api("host-c") as agent, pytest.raises(AccessDenied, match="permission denied"):
        agent.create(Network(id="by-host-c", vni=4500))
    with secured.api("host-c", password=old) as stale, \
            pytest.raises(AccessDenied, match=r"refused user 'host-c': wrong username or password"):
        stale.list(Network)


def test_setup_again_as_root_keeps_the_users_and_their_passwords(secured: Secured) -> None:
    again = secured.hwflow("db", "auth", "setup", "--config-file", str(secured.conf("root")))
    assert [(a["user"], a["password"]) for a in again["accounts"]] == [("root", None), ("hwflow-admin", None)]
    with secured.api("hwflow-admin") as admin:  # its password still works, its grants are right
        admin.create(Network(id="after-setup", vni=4200))
        admin.delete(Network, "after-setup")
    with pytest.raises(AssertionError, match=r"has auth enabled and refused .* from a client with no user"):
        secured.hwflow("db", "auth", "setup", "--config-file", str(secured.write_conf("anonymous")))


def test_a_chassis_registers_and_keeps_alive_with_its_own_credential(secured: Secured) -> None:
    with secured.api("host-a") as agent, secured.api("hwflow-admin") as admin:
        start = agent.driver.current_revision()
        agent.put_chassis(Chassis(id="host-a", tunnel_ip="192.0.2.1", up=True))
        agent.heartbeat("host-a", 30)
        agent.heartbeat("host-a", 30)  # the lease kept alive
        agent.put_chassis(Chassis(id="host-a", tunnel_ip="192.0.2.10", up=True))  # and its record rewritten
        assert admin.get(Chassis, "host-a").tunnel_ip == "192.0.2.10"
        assert "host-a" in admin.alive_chassis()
        assert admin.driver.get("_counter", "chassis") is None  # a chassis takes no counter every chassis shares
        since = admin.ports_up()[0] + 1
        agent.report_ports("host-a", ["p-up", "p-gone"], [])  # its own ports' status
        agent.report_ports("host-a", [], ["p-gone"])
        assert [(s.chassis, s.port) for s in admin.ports_up("host-a")[1]] == [("host-a", "p-up")]
        seen: list[tuple[str, bool]] = []
        deadline = time.monotonic() + 10
        while len(seen) < 3 and time.monotonic() < deadline:  # whoever follows them sees each change, in order
            since, changes = admin.watch_ports(since, timeout=1)
            seen += [(c.status.port, c.up) for c in changes if c.status.chassis == "host-a"]
        assert seen == [("p-gone", True), ("p-up", True), ("p-gone", False)]
        admin.create(Network(id="net-watch", vni=4001))
        events = agent.driver.watch(start + 1, timeout=10)  # and it reads everything, the watch too
        while not any(e.key == "net-watch" for e in events):
            events = agent.driver.watch(events[-1].revision + 1, timeout=10)
            assert events


@pytest.mark.parametrize("write", [
    pytest.param(lambda nb: nb.create(Network(id="evil", vni=666)), id="create-network"),
    pytest.param(lambda nb: nb.update(Network(**{**nb.get(Network, "n1").to_dict(), "mtu": 1280})),
                 id="update-network"),
    pytest.param(lambda nb: nb.delete(Network, "n1", cascade=True), id="delete-network"),
    pytest.param(lambda nb: nb.update(Port(**{**nb.get(Port, "p1").to_dict(), "chassis": "host-a"})),
                 id="steal-port"),
    pytest.param(lambda nb: nb.put_chassis(Chassis(id="host-b", tunnel_ip="198.51.100.66", up=True)),
                 id="another-chassis"),
    pytest.param(lambda nb: nb.put_chassis(Chassis(id="host-z", tunnel_ip="198.51.100.66", up=True)),
                 id="a-new-chassis"),
    pytest.param(lambda nb: nb.heartbeat("host-b", 30), id="another-liveness"),
    pytest.param(lambda nb: nb.report_ports("host-b", ["p1"], []), id="another-port-status"),
    pytest.param(lambda nb: nb.report_ports("host-b", [], ["p1"]), id="another-port-status-down"),
    pytest.param(lambda nb: nb.report_ports("host-ab", ["p1"], []), id="a-chassis-named-like-it"),
    pytest.param(lambda nb: nb.driver.put("_counter", "port", b"9"), id="a-counter"),
])
def test_a_chassis_credential_cannot_change_the_network_or_another_chassis(
        secured: Secured, write: Callable[[NbApi], object]) -> None:
    with secured.api("hwflow-admin") as admin, secured.api("host-a") as agent, secured.api("host-b") as other:
        if not stored(admin, Network, "n1"):
            admin.create(Network(id="n1", vni=4000))
            admin.create(Subnet(id="s1", network_id="n1", cidr="10.9.0.0/24"))
            admin.create(Port(id="p1", network_id="n1", mac="fa:16:3e:00:09:01", ips=["10.9.0.1"], chassis="host-b"))
            other.put_chassis(Chassis(id="host-b", tunnel_ip="198.51.100.2", up=True))
            other.report_ports("host-b", ["p1"], [])
        before = everything(admin)
        with pytest.raises(AccessDenied) as refused:
            write(agent)
        message = str(refused.value)
        assert "\n" not in message
        assert "to user 'host-a': permission denied" in message and "hwflow-admin" in message
        assert everything(admin) == before


def test_the_admin_writes_the_logical_network(secured: Secured) -> None:
    with secured.api("hwflow-admin") as admin:
        net = admin.create(Network(id="admin-net", vni=4100))
        admin.create(Subnet(id="admin-sub", network_id=net.id, cidr="10.10.0.0/24"))
        port = admin.create(Port(id="admin-port", network_id=net.id, mac="fa:16:3e:00:0a:01", ips=["10.10.0.5"]))
        admin.update(Port(**{**port.to_dict(), "chassis": "host-a"}))
        assert admin.get(Port, "admin-port").chassis == "host-a"
        listed = secured.hwflow("nb", "port", "list", "--config-file", str(secured.conf("hwflow-admin")))
        assert "admin-port" in [p["id"] for p in listed]  # the CLI over TLS with the admin's user
        admin.delete(Network, net.id, cascade=True)
        assert not stored(admin, Network, "admin-net")


def test_strangers_are_refused_with_what_to_change(secured: Secured) -> None:
    other_ca = Authority(secured.root, "other")
    url = secured.cluster.url
    plain = url.replace("etcds://", "etcd://")
    where = url.removeprefix("etcds://")
    cases: list[tuple[Callable[[], NbApi], type[Exception], str]] = [
        (lambda: NbApi.from_url(url), AccessDenied,
         rf"etcd's server certificate at {where} is not trusted .*set \[database\] ca_file"),
        (lambda: _no_cert(secured), AccessDenied,
         rf"etcd at {where} requires a client certificate .*set \[database\] cert_file and key_file"),
        (lambda: secured.api("host-a", pair=other_ca.issue("stranger")), AccessDenied,
         rf"etcd at {where} refused the client certificate \[database\] cert_file .*other-stranger\.crt"),
        (lambda: secured.api("host-a", pair=secured.ca.issue("named", common_name="host-a")), AccessDenied,
         r"has a Common Name, which etcd's JSON gateway .* refuses"),
        (lambda: secured.api("host-a", ca_file=other_ca.cert), AccessDenied, r"server certificate .* not trusted"),
        (lambda: secured.api(), AccessDenied, r"has auth enabled and refused a read of .* from a client with no "
         r"user: set \[database\] username and password"),
        (lambda: secured.api("host-a", password="guess"), AccessDenied, r"refused user 'host-a': wrong username"),
        (lambda: NbApi.from_url(plain), DatabaseUnavailable,
         rf"cannot reach etcd at {where} .*etcds:// if it serves TLS"),
    ]
    with secured.api("hwflow-admin") as admin:
        before = everything(admin)
        for opened, error, pattern in cases:
            with opened() as stranger, pytest.raises(error, match=pattern) as refused:
                stranger.create(Network(id="stranger", vni=4242))
            assert "\n" not in str(refused.value)
        assert everything(admin) == before


def _no_cert(secured: Secured) -> NbApi:
    path = secured.root / "nocert.conf"
    path.write_text(f"[database]\nurl = {secured.cluster.url}\nca_file = {secured.ca.cert}\n")
    return NbApi.from_url(secured.cluster.url, new_conf(["--config-file", str(path)]))


def test_a_token_etcd_forgot_when_it_restarted_is_taken_again(secured: Secured) -> None:
    with secured.api("host-a") as agent:
        agent.heartbeat("host-a", 30)
        secured.cluster.stop()
        secured.cluster.start()
        agent.put_chassis(Chassis(id="host-a", tunnel_ip="192.0.2.1", up=True))  # logged in again
        assert agent.get(Chassis, "host-a").tunnel_ip == "192.0.2.1"


def test_a_chassis_fails_over_between_members_with_its_credential(tmp_path: Path) -> None:
    """Three TLS members with auth: the member a chassis talks to stops, the next member takes its writes."""
    ca = Authority(tmp_path, "trio")
    server, client = ca.issue("server", server=True), ca.issue("client")
    tls = ServerTls(str(ca.cert), str(server.cert), str(server.key), str(client.cert), str(client.key))
    with EtcdCluster(3, tls=tls) as cluster:
        files = Credentials(str(ca.cert), str(client.cert), str(client.key))
        endpoints = [("127.0.0.1", m.client_port) for m in cluster.members]
        with EtcdDriver(endpoints, tls=True, credentials=files) as root_driver:
            accounts = {a.user: a.password for a in etcd_auth.setup(root_driver)}
        with EtcdDriver(endpoints, tls=True, credentials=dataclasses.replace(files, username="root",
                                                                              password=accounts["root"])) as root:
            password = etcd_auth.add_chassis(root, "host-f").password
        chassis = dataclasses.replace(files, username="host-f", password=password)
        with NbApi(EtcdDriver(endpoints, tls=True, credentials=chassis)) as agent:
            agent.put_chassis(Chassis(id="host-f", tunnel_ip="192.0.2.7", up=True))
            cluster.stop(cluster.members[0])
            agent.heartbeat("host-f", 30)
            agent.put_chassis(Chassis(id="host-f", tunnel_ip="192.0.2.8", up=True))
            assert agent.get(Chassis, "host-f").tunnel_ip == "192.0.2.8"
            with pytest.raises(AccessDenied, match="permission denied"):
                agent.create(Network(id="n-f", vni=4400))


def wait_for(what: str, check: Callable[[], object], timeout: float = 60, log: Path | None = None) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            tail = log.read_text()[-3000:] if log and log.exists() else ""
            pytest.fail(f"timed out waiting for {what}\n{tail}")
        time.sleep(0.2)


def test_an_agent_with_its_chassis_credential_registers_and_forwards(secured: Secured, tmp_path: Path) -> None:
    name = f"tl{secrets.token_hex(2)}"
    secured.add_chassis(name)
    options = {"ca_file": str(secured.ca.cert), "cert_file": str(secured.client.cert),
               "key_file": str(secured.client.key), "username": name, "password": secured.passwords[name]}
    host = SimHost(name, tmp_path / name, secured.cluster.url_at(MGMT_ETCD), database_options=options)
    try:
        host.start(agent=False)
        run("ip", "link", "set", f"{secured.mgmt}x", "netns", host.ns)
        in_ns(host.ns, "ip", "addr", "add", f"{MGMT_HOST}/{MGMT_PREFIX}", "dev", f"{secured.mgmt}x")
        in_ns(host.ns, "ip", "link", "set", f"{secured.mgmt}x", "up")
        host.start_agent()
        with secured.api("hwflow-admin") as admin:
            wait_for("the agent's chassis, alive", lambda: name in admin.alive_chassis()
                     and stored(admin, Chassis, name), log=host.agent_log)
            net = admin.create(Network(id=f"{name}-net", vni=4300))
            admin.create(Subnet(id=f"{name}-sub", network_id=net.id, cidr="10.43.0.0/24"))
            ports = {vm: admin.create(Port(id=f"{name}-{vm}", network_id=net.id, mac=f"fa:16:3e:00:43:0{i}",
                                           ips=[f"10.43.0.{i}"], chassis=name))
                     for i, vm in ((1, "vm1"), (2, "vm2"))}
        for vm, port in ports.items():
            host.plug(port, f"hwf-{name}-{vm}")
        wait_for("vm1 pinging vm2", lambda: host.ping(f"hwf-{name}-vm1", "10.43.0.2", count=1, interval=0.2) == 0,
                 log=host.agent_log)
        with secured.api("hwflow-admin") as admin:  # with its own credential, once both datapaths had them
            wait_for("both ports reported up", lambda: {s.port for s in admin.ports_up(name)[1]} == {
                port.id for port in ports.values()}, log=host.agent_log)
        log = host.agent_log.read_text()
        assert "permission denied" not in log and "cannot report" not in log
        # Local endpoints are root-only (tests/unit/test_local_endpoints.py shows what the modes refuse).
        assert os.stat(host.nic_socket).st_mode & 0o777 == 0o600
    finally:
        host.stop()
