"""`hwflow trace` compiles what the agent of the chassis compiles, and says what the NIC does (issue 15).

The agent side is hwflow.agent.daemon.Agent itself (no OVS, no NIC: its cache, its full topology pass and its
incremental compiler), fed the ports bound to the chassis as plugged; the trace side is what the CLI runs
(hwflow.cli.hostview.load). Topologies are random: networks, routers (with gateways on an external network and
floating IPs), security groups naming remote groups, ports on several chassis and on none, another tenant, and
chassis whose agents are alive or not.
"""

from __future__ import annotations

import json
import tempfile
import types

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwflow import conf as hwconf
from hwflow.agent import view
from hwflow.agent.daemon import Agent
from hwflow.apps.compiler import Compiler, layout_path
from hwflow.cli import hostview
from hwflow.cli.main import main
from hwflow.db import NbApi
from hwflow.model import (
    Chassis,
    FloatingIP,
    Network,
    Port,
    Router,
    RouterPort,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
)
from hwflow.offload import nic_walk
from hwflow.offload.partition import HwRule, Plan
from hwflow.pipeline import interpreter, ir

CHASSIS = ("h1", "h2", "h3")


def conf_for(url: str, chassis: str):
    conf = hwconf.new_conf([])
    conf.set_override("url", url, group="database")
    conf.set_override("chassis_name", chassis, group="agent")
    return conf


def agent_pipeline(url: str, chassis: str) -> ir.Pipeline:
    """What hwflow-agent of ``chassis`` compiles after its first full pass, the ports bound to it plugged in."""
    conf = conf_for(url, chassis)
    with NbApi.from_url(url, conf) as nb:
        plugged = {p.id for p in nb.list(Port) if p.chassis == chassis}
        agent = Agent(conf, nb, None, types.SimpleNamespace(of=None), None, lambda: [],
                      Compiler.from_file(layout_path(conf.apps.layout)))
        agent.cache.resync()
        agent.cache.set_local_ports(plugged)
        agent.follow_liveness()
        changes = agent._topology_changes(dict.fromkeys(plugged), True)
        agent.compiler.update(agent.topo, changes)
        return agent.compiler.pipeline()


def assert_same(url: str) -> None:
    for chassis in CHASSIS:
        traced = hostview.load(conf_for(url, chassis), chassis).pipeline
        agent = agent_pipeline(url, chassis)
        assert len(traced.flows) == len(set(traced.flows))
        assert sorted(map(repr, traced.flows)) == sorted(map(repr, agent.flows)), chassis
        assert traced.table_names == agent.table_names


@st.composite
def databases(draw) -> list:
    """Writes of a random topology, in an order the database takes."""
    objs: list = [Chassis(name=c, tunnel_ip=f"192.0.2.{i + 1}", tunnel_types=draw(st.sampled_from(
        (["vxlan"], ["geneve"], ["vxlan", "geneve"]))), external_ip=f"198.51.100.{10 + i}", up=draw(st.booleans()))
        for i, c in enumerate(CHASSIS)]
    n_nets = draw(st.integers(1, 4))
    nets = [f"n{i}" for i in range(n_nets)]
    ext = draw(st.booleans())
    if ext:
        objs += [Network(id="ext", name="ext", network_type="flat", physical_network="physnet1", external=True,
                         project_id="admin"),
                 Subnet(id="sext", name="sext", network_id="ext", cidr="198.51.100.0/24", gateway_ip="198.51.100.1",
                        project_id="admin"),
                 Port(id="upstream", name="upstream", network_id="ext", mac="fa:16:3e:ee:00:01",
                      ips=["198.51.100.1"], project_id="admin")]
    for i, n in enumerate(nets):
        project = "B" if i == 3 else "A"
        objs += [Network(id=n, name=n, vni=100 + i, project_id=project),
                 Subnet(id=f"s{i}", name=f"s{i}", network_id=n, cidr=f"10.{i}.0.0/24", gateway_ip=f"10.{i}.0.1",
                        project_id=project)]
    # each of nets 0-2 on router 0, router 1 or none (two routers on one subnet would be a duplicate route)
    on = [draw(st.sampled_from((None, 0, 1))) for _ in nets[:3]]
    routers = [{n for n, r in zip(nets, on) if r == k} for k in (0, 1)]
    routers = [attached for attached in routers if attached]
    for r, attached in enumerate(routers):
        gateway = ext and draw(st.booleans())
        objs.append(Router(id=f"r{r}", name=f"r{r}", project_id="A", **(
            {"gateway_network_id": "ext", "gateway_ip": f"198.51.100.{2 + r}"} if gateway else {})))
        for n in sorted(attached):
            i = int(n[1:])
            objs.append(RouterPort(id=f"r{r}-{n}", name=f"r{r}-{n}", router_id=f"r{r}", network_id=n, subnet_id=f"s{i}",
                                   mac=f"fa:16:3e:01:{r:02x}:{i:02x}", ip=f"10.{i}.0.{1 + 200 * r}", project_id="A"))
    groups = ["g0", "g1", "g2"]
    objs += [SecurityGroup(id=g, name=g, project_id="A") for g in groups]
    for k in range(draw(st.integers(0, 4))):
        fields = draw(st.sampled_from(({"protocol": "tcp", "port_min": 22, "port_max": 22}, {"protocol": "icmp"},
                                       {}, {"remote_ip_prefix": "10.0.0.0/8"})))
        remote = None if "remote_ip_prefix" in fields else draw(st.sampled_from((None, *groups)))
        objs.append(SecurityGroupRule(id=f"rule{k}", name=f"rule{k}", security_group_id=draw(st.sampled_from(groups)),
                                      direction=draw(st.sampled_from(("ingress", "egress"))), project_id="A",
                                      **fields, **({"remote_group_id": remote} if remote else {})))
    ports = []
    for k in range(draw(st.integers(1, 8))):
        i = draw(st.integers(0, n_nets - 1))
        ports.append(Port(id=f"p{k}", name=f"p{k}", network_id=nets[i], mac=f"fa:16:3e:00:00:{k + 10:02x}",
                          ips=[f"10.{i}.0.{k + 10}"], chassis=draw(st.sampled_from(("", *CHASSIS))),
                          project_id="B" if i == 3 else "A",
                          security_groups=[] if i == 3 else draw(st.lists(st.sampled_from(groups), max_size=2,
                                                                          unique=True))))
    objs += ports
    if ext:
        routed = {rp.network_id for rp in objs if isinstance(rp, RouterPort)}
        for k, p in enumerate(p for p in ports if p.network_id in routed and draw(st.booleans())):
            objs.append(FloatingIP(id=f"f{k}", name=f"f{k}", floating_network_id="ext", port_id=p.id,
                                   floating_ip_address=f"198.51.100.{50 + k}", fixed_ip_address=p.ips[0],
                                   project_id="A"))
    alive = draw(st.sets(st.sampled_from(CHASSIS)))
    return [objs, alive]


def write(url: str, objs: list, alive: set[str]) -> None:
    with NbApi.from_url(url) as api:
        for obj in objs:
            if isinstance(obj, Chassis):
                api.put_chassis(obj)
            else:
                api.create(obj)
        for name in alive:
            api.heartbeat(name, 600)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(databases())
def test_trace_compiles_what_the_agent_compiles(drawn):
    objs, alive = drawn
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/nb.sqlite"
        write(url, objs, alive)
        assert_same(url)


def test_the_shared_view_is_the_agents_selection():
    """view.topology_of holds what the agent's cache holds for the same plugged ports: nothing of another tenant."""
    topo = view.topology_of("h1", routed_objects(), {"vm1"})
    assert topo.local_port_ids == {"vm1"}
    assert "other" not in topo.networks and "vm4" in topo.ports  # behind the router: held; another tenant: not


# --- the routed fixture ------------------------------------------------------------------------------------------


def routed_objects() -> list:
    objs: list = [Chassis(name="h1", tunnel_ip="192.0.2.1", tunnel_types=["vxlan"]),
                  Chassis(name="h2", tunnel_ip="192.0.2.2", tunnel_types=["vxlan"])]
    for i in (1, 2):
        objs += [Network(id=f"net{i}", name=f"net{i}", vni=i),
                 Subnet(id=f"sub{i}", name=f"sub{i}", network_id=f"net{i}", cidr=f"10.{i - 1}.0.0/24",
                        gateway_ip=f"10.{i - 1}.0.1")]
    objs.append(Router(id="r1", name="r1"))
    objs += [RouterPort(id=f"r1-{i}", name=f"r1-{i}", router_id="r1", network_id=f"net{i}", subnet_id=f"sub{i}",
                        mac=f"fa:16:3e:00:01:0{i}", ip=f"10.{i - 1}.0.1") for i in (1, 2)]
    objs += [Network(id="other", name="other", vni=9, project_id="B"),
             Subnet(id="osub", name="osub", network_id="other", cidr="10.9.0.0/24", project_id="B"),
             Port(id="ob", name="ob", network_id="other", mac="fa:16:3e:00:09:01", ips=["10.9.0.5"], chassis="h1",
                  project_id="B")]
    for name, net, ip, chassis in (("vm1", "net1", "10.0.0.5", "h1"), ("vm3", "net2", "10.1.0.3", "h1"),
                                   ("vm4", "net2", "10.1.0.4", "h2")):
        objs.append(Port(id=name, name=name, network_id=net, mac=f"fa:16:3e:00:00:{ip.split('.')[-1]:0>2}",
                         ips=[ip], chassis=chassis))
    return objs


@pytest.fixture
def routed(tmp_path) -> str:
    url = f"sqlite:///{tmp_path}/nb.sqlite"
    write(url, routed_objects(), {"h1", "h2"})
    return url


def trace(url, capsys, *argv):
    capsys.readouterr()
    status = main(["trace", "--chassis", "h1", "--database", url, "--format", "json", *argv])
    out = capsys.readouterr()
    assert status == 0, out.err
    return json.loads(out.out)


def test_the_fixture_compiles_as_the_agent_does(routed):
    assert_same(routed)


def test_a_packet_to_another_subnet_is_routed_not_dropped(routed, capsys):
    report = trace(routed, capsys, "--port", "vm1", "--packet", "ipv4_dst=10.1.0.3")  # eth_dst: the router's
    assert report["verdict"] == "output"
    assert [o["port"] for o in report["outputs"]] == ["vm3"]
    out = report["outputs"][0]["packet"]
    assert (out["eth_src"], out["eth_dst"], out["ip_ttl"]) == ("fa:16:3e:00:01:02", "fa:16:3e:00:00:03", 63)
    names = [s["table_name"] for s in report["steps"]]
    assert "l3.route" in names and names[-1] == "output.deliver"
    assert "hardware" not in report


def test_a_routed_packet_to_another_chassis_goes_through_the_tunnel(routed, capsys):
    report = trace(routed, capsys, "--port", "vm1", "--packet", "ipv4_dst=10.1.0.4")
    ((out,),) = [report["outputs"]]
    assert out["port"] == "vxlan-tunnel" and out["packet"]["tun_dst"] == "192.0.2.2"


def test_hardware_on_mlx5_shows_the_rewriting_redirect(routed, capsys):
    report = trace(routed, capsys, "--port", "vm1", "--packet", "ipv4_dst=10.1.0.3", "--hardware",
                   "--profile", "mlx5-connectx6dx")
    hw = report["hardware"]
    assert set(hw) >= {"verdict", "rules", "reason"}
    assert hw["verdict"].startswith("redirect to vm3") and hw["reason"] is None
    last = hw["rules"][-1]
    assert set(last) == {"chain", "match", "actions", "owner"}
    assert "set:eth_src=fa:16:3e:00:01:02" in last["actions"] and "dec_ttl" in last["actions"]
    assert last["actions"][-1] == "redirect:vm3"
    assert [r["chain"] for r in hw["rules"]][0] == 0 and all(r["actions"][-1].startswith("goto chain")
                                                             for r in hw["rules"][:-1])
    assert hw["packet"] == report["outputs"][0]["packet"]  # the NIC sends what software would
    assert report["verdict"] == "output"  # the software trace follows, as without --hardware


def test_hardware_on_sim_basic_says_why_software(routed, capsys):
    report = trace(routed, capsys, "--port", "vm1", "--packet", "ipv4_dst=10.1.0.3", "--hardware",
                   "--profile", "sim-basic")
    hw = report["hardware"]
    assert not hw["verdict"].startswith("redirect")
    assert "rewrite" in hw["reason"]  # sim-basic has no pedit: the router's MAC rewrite keeps it in software


def test_hardware_of_arp_says_the_ethertype_is_not_offloaded(routed, capsys):
    hw = trace(routed, capsys, "--port", "vm1", "--packet", "eth_type=arp,arp_tpa=10.0.0.99", "--hardware")["hardware"]
    assert "ethertypes" in hw["reason"] or hw["reason"]  # ARP stays in software by default


def test_hardware_text_output_puts_the_nic_first(routed, capsys):
    capsys.readouterr()
    assert main(["trace", "--chassis", "h1", "--database", routed, "--port", "vm1", "--packet",
                 "ipv4_dst=10.1.0.3", "--hardware"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("NIC (profile mlx5-connectx6dx): redirect to vm3")
    assert any(line.startswith("software (OVS)") for line in lines)


@pytest.fixture
def provider(tmp_path) -> str:
    """vm1 on h1 and vm2 on h2, on VLAN 100 of physical network "public": between them packets leave by the
    uplink, tagged."""
    url = f"sqlite:///{tmp_path}/nb.sqlite"
    write(url, [Chassis(name="h1", tunnel_ip="192.0.2.1", tunnel_types=["vxlan"]),
                Chassis(name="h2", tunnel_ip="192.0.2.2", tunnel_types=["vxlan"]),
                Network(id="pub", name="pub", network_type="vlan", physical_network="public", vlan_id=100),
                Subnet(id="psub", name="psub", network_id="pub", cidr="203.0.113.0/24"),
                Port(id="vm1", name="vm1", network_id="pub", mac="fa:16:3e:00:00:05", ips=["203.0.113.5"],
                     chassis="h1"),
                Port(id="vm2", name="vm2", network_id="pub", mac="fa:16:3e:00:00:06", ips=["203.0.113.6"],
                     chassis="h2")], {"h1", "h2"})
    return url


def test_hardware_with_an_uplink_pushes_the_vlan_and_redirects_to_it(provider, capsys):
    """A provider network's packet to another chassis: with its physical network's uplink on the NIC, the NIC
    rule that takes it pushes the network's VLAN and redirects to the uplink, as software would send it."""
    report = trace(provider, capsys, "--port", "vm1", "--packet", "ipv4_dst=203.0.113.6", "--hardware",
                   "--profile", "mlx5-connectx6dx", "--uplink", "public")
    [out] = report["outputs"]
    assert out["port"] == "public-uplink" and out["packet"]["vlan_vid"] == 100
    hw = report["hardware"]
    assert hw["verdict"] == "redirect to public-uplink after push_vlan:100" and hw["reason"] is None, hw
    assert hw["rules"][-1]["actions"][-2:] == ["push_vlan:100", "redirect:public-uplink"]
    assert hw["packet"] == out["packet"]


def test_hardware_without_the_uplink_says_software_and_the_config_maps_it(provider, capsys, tmp_path):
    """Without --uplink the config's [agent] bridge_mappings says which uplinks the NIC carries: none (the
    default), and the packet is software's; the host's config mapping public, and it is the NIC's again."""
    hw = trace(provider, capsys, "--port", "vm1", "--packet", "ipv4_dst=203.0.113.6", "--hardware")["hardware"]
    assert not hw["verdict"].startswith("redirect") and hw["reason"], hw
    config = tmp_path / "agent.conf"
    config.write_text("[agent]\nbridge_mappings = public:eth1\n")
    hw = trace(provider, capsys, "--config-file", str(config), "--port", "vm1", "--packet",
               "ipv4_dst=203.0.113.6", "--hardware")["hardware"]
    assert hw["verdict"] == "redirect to public-uplink after push_vlan:100", hw
    capsys.readouterr()
    assert main(["trace", "--chassis", "h1", "--database", provider, "--port", "vm1", "--packet",
                 "ipv4_dst=203.0.113.6", "--hardware", "--uplink", " "]) == 1
    assert capsys.readouterr().err.strip().endswith("--uplink needs a physical network name (as a network's "
                                                    "physical_network)")


def test_help_documents_the_hardware_keys(capsys):
    with pytest.raises(SystemExit):
        main(["trace", "--help"])
    text = capsys.readouterr().out
    assert "hardware (with --hardware)" in text and '"reason"' in text and '"rules"' in text


# --- the product's NIC walk ----------------------------------------------------------------------------------------


def _rule(chain, order, match, **kw) -> HwRule:
    return HwRule(in_port=1, order=order, level=order, match=ir.Match(ir.FieldMatch(f, v, ir.full_mask(f))
                                                                       for f, v in match.items()),
                  output=kw.pop("output", None), owner=kw.pop("owner", ir.Owner("port", "p")), chain=chain, **kw)


def test_the_walk_follows_gotos_and_says_where_software_takes_over():
    plan = Plan(own={1: [_rule(0, 0, {"eth_type": 0x800}, goto=7), _rule(0, 1, {"eth_type": 0x86DD}, drop=True)]},
                chains={})
    plan.chains[7] = types.SimpleNamespace(rules=[_rule(7, 0, {"eth_type": 0x800, "ipv4_dst": 5}, output=2,
                                                        actions=(ir.SetField("eth_dst", 9),))], software=[],
                                           shared=False)
    plan.reaches[1] = (7,)
    sent = nic_walk.walk(plan, {"in_port": 1, "eth_type": 0x800, "ipv4_dst": 5})
    assert sent.verdict == nic_walk.REDIRECT and sent.output == 2 and sent.packet["eth_dst"] == 9
    assert [r.chain for r in sent.rules] == [0, 7]
    lost = nic_walk.walk(plan, {"in_port": 1, "eth_type": 0x800, "ipv4_dst": 6})
    assert lost.verdict == nic_walk.MISS and lost.chain == 7 and lost.lost
    restart = nic_walk.walk(plan, {"in_port": 1, "eth_type": 0x800, "ipv4_dst": 6}, chain_miss="restart")
    assert restart.software and not restart.lost
    assert nic_walk.walk(plan, {"in_port": 1, "eth_type": 0x86DD}).verdict == nic_walk.DROP
    arp = nic_walk.walk(plan, {"in_port": 1, "eth_type": 0x806}, interpreter.ConnTracker())
    assert arp.verdict == nic_walk.MISS and arp.chain == 0 and arp.software


def test_overlapping_rules_of_one_level_are_named():
    rules = [_rule(0, 0, {"eth_type": 0x800}, output=2), _rule(0, 0, {"ipv4_dst": 5}, output=3)]
    with pytest.raises(nic_walk.OverlappingRules):
        nic_walk.lookup(rules, 0, {"eth_type": 0x800, "ipv4_dst": 5})


# --- hwflow pipeline --dot --chassis -------------------------------------------------------------------------------


def dot(url, capsys, *argv) -> str:
    capsys.readouterr()
    assert main(["pipeline", "--dot", "--chassis", "h1", "--database", url, *argv]) == 0
    return capsys.readouterr().out


def _cell(text: str, table: str) -> str:
    """The colour of ``table``'s cell ("12 (route)")."""
    start = text.index(f">{table}")
    return text[text.rindex('bgcolor="', 0, start) + 9:].split('"', 1)[0]


def test_dot_colours_the_tables_by_what_the_nic_takes(routed, capsys):
    mlx5 = dot(routed, capsys, "--profile", "mlx5-connectx6dx")
    assert "legend" in mlx5 and "chassis h1, NIC: profile mlx5-connectx6dx" in mlx5
    assert _cell(mlx5, "12 (route)") in ("palegreen", "khaki1")  # routed paths are rules on mlx5
    assert _cell(mlx5, "4 (state)") == "gray85"  # no security group here: no path through it
    basic = dot(routed, capsys, "--profile", "sim-basic")
    assert _cell(basic, "12 (route)") == "gray85"  # no rewrite on sim-basic: every routed path is software's
    assert mlx5.startswith("digraph datapath {") and mlx5.rstrip().endswith("}")


def test_chassis_needs_dot(routed, capsys):
    assert main(["pipeline", "--chassis", "h1", "--database", routed]) == 1
    assert "give --dot" in capsys.readouterr().err


def test_shares_count_a_path_once_per_table(routed):
    conf = conf_for(routed, "h1")
    host = hostview.load(conf, "h1")
    hw = hostview.hardware(host, conf, "mlx5-connectx6dx")
    shares = nic_walk.table_shares(host.pipeline, hw.plan, sorted(hw.offload))
    assert shares and all(0 <= taken <= total for taken, total in shares.values())
    assert shares[0][1] >= max(total for _, total in shares.values())  # every path starts in table 0
