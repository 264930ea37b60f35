"""``hwflow flows`` against a running simulated host: real dumps of the NIC and of OVS, the agent's published plan.

One SimHost (profile mlx5-connectx6dx) with two VMs on one network. The command runs as an operator would run
it: in the host's namespace, pointed at the agent's config (``ip netns exec hwf-NAME hwflow flows --config-file
WORKDIR/agent.conf --format json``).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest
from test_e2e import (
    HWFLOW,
    PINGS,
    VMS,
    Lab,
    create_network,
    evidence,
    ifindex,
    nic_rules,
    ping,
    plug,
    vm_ns,
    wait_for,
)

from hwflow.agent import published
from hwflow.backends.tc.transport import SimSocketTransport, TcClient
from hwflow.sim.host import BRIDGE, SimHost

pytestmark = pytest.mark.functional


def flows(host: SimHost, *args: str) -> list[dict]:
    out = subprocess.run(["ip", "netns", "exec", host.ns, HWFLOW, "flows", "--config-file", str(host.agent_config),
                          "--format", "json", *args], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"hwflow flows failed ({out.returncode}): {out.stderr}"
    assert not out.stderr.strip(), f"hwflow flows wrote to stderr: {out.stderr}"
    return json.loads(out.stdout)


@pytest.fixture(scope="module")
def host(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[SimHost, dict]]:
    lab = Lab(tmp_path_factory.mktemp)
    try:
        host = lab.host(profile="mlx5-connectx6dx")
        ports = create_network(host)
        plug(host, ports)
        wait_for("the NIC to carry vm1 -> vm2", lambda: any(
            rule.keys.eth_dst is not None for rule, _ in nic_rules(host, {host.vms[vm_ns(host, "vm1")].vf})), 30,
            host)
        wait_for("the agent to publish its plan", lambda: (host.workdir / f"flows-{host.name}.msgpack").exists(),
                 20, host)
        yield host, ports
    finally:
        lab.stop()


def hw_of(entries: list[dict], port_id: str) -> list[dict]:
    return [e for e in entries if e["datapath"] == "hw" and e["port"] == port_id]


def test_a_ping_is_counted_on_the_vm_ports_hardware_rules_and_software_paths_have_reasons(host) -> None:
    host, ports = host
    vm1, vm2 = ports["vm1"], ports["vm2"]
    before = sum(e["packets"] or 0 for e in hw_of(flows(host, "--datapath", "hw"), vm1.id))
    assert ping(host, "vm1", VMS[1][2]) == 0, evidence(host)

    entries = flows(host)
    assert {"datapath", "port", "owner", "packets", "bytes", "reason", "disagreement"} <= set(entries[0])
    mine = hw_of(entries, vm1.id)
    assert mine, f"no hardware entries for vm1's port {vm1.id}: {entries}"
    to_vm2 = [e for e in mine if e["owner"] == f"port:{vm2.id}" and f"eth_dst={VMS[1][1]}" in e["match"]
              and e["flower"].startswith("ip ")]
    assert to_vm2, f"no IPv4 hardware rule on vm1's port to vm2 owned by vm2's port: {mine}"
    assert to_vm2[0]["packets"] >= PINGS and to_vm2[0]["bytes"] > 0 and to_vm2[0]["reason"] is None
    counted = sum(e["packets"] for e in mine if e["packets"] is not None) - before
    assert counted >= PINGS, f"vm1's hardware rules counted {counted} packets, expected >= {PINGS}: {mine}"
    assert all(e["disagreement"] is None for e in entries if e["datapath"] == "hw"), \
        [e for e in entries if e["disagreement"]]
    assert all(e["port_name"] == "vm1" for e in mine)

    paths = [e for e in entries if e["kind"] == "path"]
    assert paths and all(e["datapath"] == "sw" and e["reason"] for e in paths)
    arp = [e for e in paths if vm1.id in e["ports"] and "eth_type=0x0806" in e["match"]]
    assert arp, f"no software path for vm1's ARP: {paths}"
    assert all("[offload] ethertypes" in e["reason"] for e in arp), arp
    flood = [e for e in paths if vm1.id in e["ports"] and e["match"].startswith("eth_dst=01:00:00:00:00:00/")]
    assert flood and all("replication stays in software" in e["reason"] for e in flood), paths
    sw_flows = [e for e in entries if e["kind"] == "flow"]
    assert sw_flows and all(e["owner"] for e in sw_flows), [e for e in sw_flows if not e["owner"]]
    assert any(e["port"] == vm1.id and e["packets"] > 0 for e in sw_flows)  # ARP, at least, went through OVS

    only = flows(host, "--port", "vm1", "--datapath", "hw")
    assert only and all(e["datapath"] == "hw" and e["port"] == vm1.id for e in only)


def ofctl(host: SimHost, *args: str) -> str:
    out = subprocess.run(["ovs-ofctl", "-O", "OpenFlow13", *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, f"ovs-ofctl {' '.join(args)} failed: {out.stderr}"
    return out.stdout


def a_flow_of(host: SimHost, ofport: int) -> tuple[int, int, str]:
    """(table, priority, match) of one of the bridge's flows reading ``ofport`` (an in_port match), as
    ovs-ofctl writes it: what ``del-flows --strict`` takes."""
    for line in ofctl(host, "dump-flows", host.ovs.mgmt(BRIDGE)).splitlines():
        fields = dict(part.split("=", 1) for part in line.split(" actions=")[0].replace(" ", "").split(",")
                      if "=" in part)
        if fields.get("in_port") == str(ofport) and "priority" in fields:
            head = line.split(" actions=")[0].split("priority=")[1]
            priority, _, match = head.partition(",")
            return int(fields["table"]), int(priority), match
    raise AssertionError(f"no flow reads ofport {ofport}")


def test_a_rule_and_a_flow_deleted_behind_the_agents_back_are_missing_until_repaired(host) -> None:
    host, ports = host
    vm1 = ports["vm1"]
    device = ifindex(host, "vm1")
    client = TcClient(SimSocketTransport(host.nic_socket))
    try:
        victim = next(rule for rule, _ in client.dump(device) if rule.keys.eth_dst is not None)
        assert client.delete([victim]) == [None]
    finally:
        client.close()
    doc = published.load(published.path_for(host.workdir, host.name))
    ofport = next(info["ofport"] for info in doc["ports"].values() if info["id"] == vm1.id)
    table, priority, match = a_flow_of(host, ofport)
    ofctl(host, "del-flows", "--strict", host.ovs.mgmt(BRIDGE), f"table={table},priority={priority},{match}")

    def missing() -> list[dict]:
        return [e for e in flows(host) if e["disagreement"] == "in the agent's plan, not installed"
                or (e["disagreement"] or "").startswith("in the agent's plan, not installed (")]

    gone = missing()
    hw = [e for e in gone if e["datapath"] == "hw"]
    sw = [e for e in gone if e["datapath"] == "sw"]
    assert len(hw) == 1 and hw[0]["port"] == vm1.id and hw[0]["packets"] is None and hw[0]["prio"] == victim.prio, gone
    assert len(sw) == 1 and sw[0]["kind"] == "flow" and (sw[0]["table"], sw[0]["priority"]) == (table, priority), gone
    assert sw[0]["packets"] is None and sw[0]["owner"] and sw[0]["port"] == vm1.id, sw
    assert not [e for e in flows(host) if (e["disagreement"] or "").startswith("installed")], "nothing extra"
    # the agent's repair timer (resync_interval, 60 s by default) puts them back; the test does not wait for it:
    # restarting the agent is a full pass too
    host.stop_agent()
    host.start_agent()
    wait_for("the agent to put the deleted rule and flow back", lambda: not missing(), 40, host)
