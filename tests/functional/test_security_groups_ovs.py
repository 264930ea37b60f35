"""Security groups in real OVS: real TCP connections and pings between VMs of a SimHost.

The server VM is in a group that lets in TCP/22 from anyone, TCP/2222 from
the members of the client's group and TCP/8080 from the client's address
(and anything out); the client's and the outsider's groups let anything out
and nothing in. Conntrack (OVS's, in each port's zone) is what lets the
replies back. Every test runs on a NIC without conntrack (sim-basic) and on
one the partitioner plans conntrack chains for (mlx5-connectx6dx), which the
simulated NIC takes packets into and hands up to OVS at the ``ct`` action.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_e2e import counted, evidence, hw_packets, ifindex, nic_rules, ovs_rx, redirects, representor, vm_ns

from hwflow.backends.tc import flower as fl
from hwflow.db.api import NbApi
from hwflow.model.objects import Network, Port, SecurityGroup, SecurityGroupRule
from hwflow.sim.host import SimHost, in_ns, stop_process

pytestmark = pytest.mark.functional

SERVER = ("server", "fa:16:3e:00:00:21", "10.0.0.21")
CLIENT = ("client", "fa:16:3e:00:00:22", "10.0.0.22")
OUTSIDER = ("outsider", "fa:16:3e:00:00:23", "10.0.0.23")
PROFILES = ("sim-basic", "mlx5-connectx6dx")
REPLY = "hello from "
# Listens on every port given after the reply text, answers each connection with it + the port, and closes it.
SERVE = """
import socketserver, sys, threading
class Answer(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.sendall((sys.argv[1] + str(self.server.server_address[1])).encode())
socketserver.TCPServer.allow_reuse_address = True
servers = [socketserver.ThreadingTCPServer(("0.0.0.0", int(p)), Answer) for p in sys.argv[2:]]
for s in servers[1:]:
    threading.Thread(target=s.serve_forever, daemon=True).start()
print("ready", flush=True)
servers[0].serve_forever()
"""
CONNECT = """
import socket, sys
try:
    with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5) as s:
        s.settimeout(1.5)
        print(s.recv(100).decode())
except OSError as exc:
    print("failed", exc)
"""


class Vms:
    """The host, its VMs' namespaces, the servers started in them (stopped at the end)."""

    def __init__(self, host: SimHost) -> None:
        self.host = host
        self.servers: list[subprocess.Popen] = []

    def ns(self, vm: str) -> str:
        return f"hwf-{self.host.name}-{vm}"

    def serve(self, vm: str, *ports: int) -> None:
        proc = subprocess.Popen(["ip", "netns", "exec", self.ns(vm), sys.executable, "-c", SERVE, REPLY,
                                 *map(str, ports)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.servers.append(proc)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready", f"server in {vm} did not start"

    def connect(self, vm: str, address: str, port: int) -> str:
        """What a TCP client in ``vm`` got from ``address``:``port`` ("" when it could not connect)."""
        out = in_ns(self.ns(vm), sys.executable, "-c", CONNECT, address, str(port), check=False).stdout.strip()
        return "" if out.startswith("failed") else out

    def ping_loss(self, vm: str, address: str) -> float:
        return self.host.ping(self.ns(vm), address, count=3, interval=0.2)

    def stop(self) -> None:
        for proc in self.servers:
            stop_process(proc)


def wait_until(what: str, check, host: SimHost, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            log = host.agent_log.read_text(errors="replace")[-3000:] if host.agent_log.exists() else ""
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}\n{log}")
        time.sleep(0.3)


def create(host: SimHost) -> dict[str, Port]:
    """One network; the server in the "ssh" group, the client and the outsider in egress-only groups."""
    with NbApi.from_url(host.database) as nb:
        net = nb.create(Network(name="sg-net", vni=1101))
        ssh, clients, outsiders = (nb.create(SecurityGroup(name=n)) for n in ("ssh", "clients", "outsiders"))
        tcp = {"security_group_id": ssh.id, "direction": "ingress", "protocol": "tcp"}
        nb.create(SecurityGroupRule(**tcp, port_min=22, port_max=22))
        nb.create(SecurityGroupRule(**tcp, port_min=2222, port_max=2222, remote_group_id=clients.id))
        nb.create(SecurityGroupRule(**tcp, port_min=8080, port_max=8080, remote_ip_prefix=f"{CLIENT[2]}/32"))
        for group in (ssh, clients, outsiders):
            nb.create(SecurityGroupRule(security_group_id=group.id, direction="egress"))
        return {vm: nb.create(Port(name=vm, network_id=net.id, mac=mac, ips=[ip], chassis=host.name,
                                   security_groups=[group.id]))
                for (vm, mac, ip), group in ((SERVER, ssh), (CLIENT, clients), (OUTSIDER, outsiders))}


@pytest.fixture(scope="module", params=PROFILES)
def vms(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Vms]:
    name = f"sg{secrets.token_hex(2)}"
    workdir: Path = tmp_path_factory.mktemp(name)
    with SimHost(name, workdir, f"sqlite:///{workdir}/nb.sqlite", profile=request.param) as host:
        lab = Vms(host)
        try:
            for vm, port in create(host).items():
                host.plug(port, lab.ns(vm))
            lab.serve("server", 22, 80, 2222, 8080)
            lab.serve("client", 22, 2222)
            wait_until("the client's SSH connection to the server",
                       lambda: lab.connect("client", SERVER[2], 22) == f"{REPLY}22", host)
            yield lab
        finally:
            lab.stop()


def test_ssh_gets_in_and_its_reply_data_comes_back(vms: Vms) -> None:
    for _ in range(3):
        assert vms.connect("client", SERVER[2], 22) == f"{REPLY}22"


CONNECTIONS = 5
AT_LEAST = 3  # packets each end of such a connection sends: SYN / SYN-ACK, an ACK / the data, a FIN


def test_the_packets_of_allowed_connections_are_carried_by_ovs(vms: Vms) -> None:
    """SSH connections the server's group lets in (and the client's lets out): which datapath carried them.

    OVS, on both profiles: conntrack is OVS's. On sim-basic (no conntrack) the partitioner keeps a filtered
    port's IP in software, so no NIC rule on either representor counts a packet. On mlx5-connectx6dx it plans
    conntrack chains: a port's chain 0 sends its IPv4 through ``ct`` in the port's zone and on to a chain on
    the connection's state, where +trk+est packets to the peer would be redirected. The simulated NIC cannot
    do conntrack: its data plane hands the frame, as it came, up the representor at the ``ct`` action. So each
    end's ct rule counts every packet it sends, OVS receives at least as many, and no NIC rule (the +est
    redirects included) forwards one. On a NIC that does conntrack the +est redirects would: in the chain after
    the server's ct, the redirect to it comes before any ``pass`` (the +inv/+rel/+new paths mlx5 cannot match
    stay in software without one in front of it: a packet of theirs is never +est, and the chain's catch-all
    hands them up), which the rules installed are checked for here.
    """
    host, ends = vms.host, ("client", "server")

    def through_ct(rule: fl.FlowerRule) -> bool:
        return any(isinstance(a, fl.Ct) for a in rule.actions)

    def now() -> dict[str, tuple[int, int, int, int]]:  # each end: OVS rx, NIC ct rules, NIC rules, redirects
        return {vm: (ovs_rx(host, representor(host, vm)), counted(host, vm, through_ct), counted(host, vm),
                     hw_packets(host, vm, peer)) for vm, peer in (ends, ends[::-1])}

    before = now()
    for _ in range(CONNECTIONS):
        assert vms.connect("client", SERVER[2], 22) == f"{REPLY}22"
    after = now()
    seen = {vm: tuple(n - b for n, b in zip(after[vm], before[vm], strict=True)) for vm in ends}
    what = f"(OVS rx, NIC ct rules, all NIC rules, NIC redirects to the other end) on {host.profile}: {seen}"
    assert all(rx >= AT_LEAST * CONNECTIONS for rx, *_ in seen.values()), "OVS missed packets " + what \
        + evidence(host)
    assert not any(redirected for *_, redirected in seen.values()), "the NIC forwarded packets " + what \
        + evidence(host)
    if host.profile == "sim-basic":
        assert not any(nic for _, _, nic, _ in seen.values()), "NIC rules counted packets " + what + evidence(host)
    else:
        assert all(rx >= ct >= AT_LEAST * CONNECTIONS for rx, ct, *_ in seen.values()), \
            "the NIC's ct rules did not take every packet up to OVS " + what + evidence(host)
        for vm, peer in (ends, ends[::-1]):
            assert heads_its_chain(host, vm, peer), f"no +est redirect {vm} -> {peer} before a pass" + evidence(host)


def heads_its_chain(host: SimHost, vm: str, peer: str) -> bool:
    """Whether ``vm``'s representor has a redirect to ``peer`` on a connection's state (after ``ct``) and, in its
    chain, no ``pass`` comes before it (one of the same prio cannot overlap it: the plan gives overlapping rules
    different prios)."""
    rules = [rule for rule, _ in nic_rules(host, {host.vms[vm_ns(host, vm)].vf})]
    to = ifindex(host, peer)
    found = [rule for rule in rules if redirects(rule, to) and rule.keys.ct_state is not None]
    return bool(found) and all(other.prio >= rule.prio for rule in found for other in rules
                               if other.chain == rule.chain and other.actions == (fl.Gact("pass"),))


def test_what_no_ingress_rule_allows_is_dropped(vms: Vms) -> None:
    assert vms.connect("client", SERVER[2], 80) == ""
    assert vms.ping_loss("client", SERVER[2]) == 100


def test_a_remote_group_rule_lets_in_its_groups_members_only(vms: Vms) -> None:
    assert vms.connect("client", SERVER[2], 2222) == f"{REPLY}2222"
    assert vms.connect("outsider", SERVER[2], 2222) == ""
    assert vms.connect("outsider", SERVER[2], 22) == f"{REPLY}22"


def test_a_remote_prefix_rule_lets_in_its_addresses_only(vms: Vms) -> None:
    assert vms.connect("client", SERVER[2], 8080) == f"{REPLY}8080"
    assert vms.connect("outsider", SERVER[2], 8080) == ""


def test_the_server_cannot_open_a_connection_to_a_client_whose_group_lets_nothing_in(vms: Vms) -> None:
    assert vms.connect("server", CLIENT[2], 22) == ""
    assert vms.connect("server", CLIENT[2], 2222) == ""
    assert vms.ping_loss("server", CLIENT[2]) == 100


def test_a_rule_added_while_running_opens_its_port(vms: Vms) -> None:
    with NbApi.from_url(vms.host.database) as nb:
        ssh = next(g for g in nb.list(SecurityGroup) if g.name == "ssh")
        rule = nb.create(SecurityGroupRule(security_group_id=ssh.id, direction="ingress", protocol="tcp",
                                           port_min=80, port_max=80))
    try:
        wait_until("TCP/80 to the server to open", lambda: vms.connect("client", SERVER[2], 80) == f"{REPLY}80",
                   vms.host)
    finally:
        with NbApi.from_url(vms.host.database) as nb:
            nb.delete(SecurityGroupRule, rule.id)
    wait_until("TCP/80 to the server to close again", lambda: vms.connect("client", SERVER[2], 80) == "", vms.host)
    assert vms.connect("client", SERVER[2], 22) == f"{REPLY}22"
