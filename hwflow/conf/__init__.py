"""Configuration options, registered on a ConfigOpts the caller owns.

Nothing here touches the global ``oslo_config.cfg.CONF``: the agent, the CLI
and the tests each build their own ConfigOpts and pass it down, so two agents
can live in one test process. ``list_opts`` feeds oslo-config-generator,
which writes ``etc/hwflow.conf.sample``.
"""

from __future__ import annotations

import socket

from oslo_config import cfg

database_opts = [
    cfg.StrOpt(
        "url",
        default="sqlite:////var/lib/hwflow/nb.sqlite",
        help="Where the northbound database lives: sqlite:///PATH for the "
        "embedded database (one file shared by every process on the host), "
        "etcd://HOST:PORT[,HOST:PORT...] for an etcd cluster, or "
        "etcds://HOST:PORT[,HOST:PORT...] for one spoken to over TLS (with "
        "ca_file, cert_file, key_file).",
    ),
    cfg.StrOpt(
        "ca_file",
        default="",
        help="etcds://: the CA certificate (PEM) that signed etcd's server "
        "certificate. Empty: the system's trusted CAs.",
    ),
    cfg.StrOpt(
        "cert_file",
        default="",
        help="etcds://: this client's certificate (PEM), signed by a CA in "
        "etcd's --trusted-ca-file; etcd with --client-cert-auth refuses a "
        "client without one. Its subject must have no Common Name: etcd's "
        "JSON gateway, which hwflow speaks, refuses a certificate with one.",
    ),
    cfg.StrOpt(
        "key_file",
        default="",
        help="etcds://: the private key (PEM) of cert_file; readable by root only.",
    ),
    cfg.StrOpt(
        "username",
        default="",
        help="etcd user to act as when etcd has auth enabled: an agent's is "
        "its chassis name (made by `hwflow db auth add-chassis`, whose role "
        "may write only that chassis's own keys), an operator's hwflow-admin. "
        "Empty: no user (etcd without auth).",
    ),
    cfg.StrOpt(
        "password",
        default="",
        secret=True,
        help="Password of username (printed once by `hwflow db auth setup` / "
        "`add-chassis`); keep this file readable by root only.",
    ),
    cfg.FloatOpt(
        "poll_interval",
        default=0.01,
        min=0.001,
        help="Seconds between checks for new changes when watching the "
        "embedded database.",
    ),
]

agent_opts = [
    cfg.StrOpt(
        "chassis_name",
        default=socket.gethostname(),
        sample_default="<hostname>",
        help="Name this host registers under in the chassis table; ports "
        "bound to this name are programmed here.",
    ),
    cfg.StrOpt(
        "tunnel_ip",
        default="127.0.0.1",
        help="Underlay address other chassis use to reach this host.",
    ),
    cfg.StrOpt(
        "external_ip",
        default="",
        help="IPv4 address on the external network(s) that this host's VMs without a "
        "floating IP leave SNATed to (per-chassis SNAT, for routers with a gateway "
        "and SNAT enabled). Empty: this host does no SNAT for them.",
    ),
    cfg.ListOpt(
        "tunnel_types",
        default=["vxlan", "geneve"],
        item_type=cfg.types.String(choices=["vxlan", "geneve"]),
        help="Encapsulations this host terminates (one or more): the agent keeps a "
        "flow-based tunnel port of each type on the integration bridge, bound "
        "to tunnel_ip, and registers them so that other chassis tunnel to it "
        "only with these.",
    ),
    cfg.PortOpt(
        "vxlan_udp_port",
        default=4789,
        help="UDP destination port of VXLAN packets (IANA: 4789).",
    ),
    cfg.PortOpt(
        "geneve_udp_port",
        default=6081,
        help="UDP destination port of Geneve packets (IANA: 6081).",
    ),
    cfg.ListOpt(
        "bridge_mappings",
        default=[],
        sample_default="physnet1:eth1",
        help="Provider networks reachable from this host, as "
        "<physical_network>:<interface> pairs (as Neutron's bridge_mappings). "
        "The agent plugs each interface into the integration bridge as the "
        "physical network's uplink: vlan networks on it leave tagged, flat "
        "ones untagged.",
    ),
    cfg.StrOpt(
        "integration_bridge",
        default="br-int",
        help="Open vSwitch bridge that holds the representors and VM ports.",
    ),
    cfg.StrOpt(
        "ovsdb_connection",
        default="unix:/var/run/openvswitch/db.sock",
        help="OVSDB endpoint of the local Open vSwitch.",
    ),
    cfg.StrOpt(
        "openflow_endpoint",
        default="",
        help="OpenFlow endpoint of the integration bridge. Empty means the "
        "bridge's management socket, <ovs_rundir>/<bridge>.mgmt.",
    ),
    cfg.StrOpt(
        "ovs_rundir",
        default="/var/run/openvswitch",
        help="Open vSwitch run directory (where <bridge>.mgmt lives).",
    ),
    cfg.FloatOpt(
        "report_interval",
        default=10.0,
        min=0.5,
        help="Seconds between the agent's reports: each refreshes its "
        "chassis's liveness lease in the database (which lapses after three "
        "missed reports, and the chassis is then shown dead), and rewrites "
        "its chassis record only if something in it changed.",
    ),
    cfg.PortOpt(
        "metrics_port",
        default=0,
        help="TCP port the agent serves its Prometheus metrics on "
        "(http://<metrics_host>:<metrics_port>/metrics; see hwflow.agent.metrics "
        "for the list). 0: no metrics are served.",
    ),
    cfg.HostAddressOpt(
        "metrics_host",
        default="127.0.0.1",
        help="Address the agent's metrics server listens on (with metrics_port).",
    ),
    cfg.FloatOpt(
        "resync_interval",
        default=60.0,
        min=1.0,
        help="Seconds between full reconciles of both datapaths against the "
        "desired state, even when nothing changed (repairs drift).",
    ),
    cfg.StrOpt(
        "state_dir",
        default="/var/lib/hwflow",
        help="Directory where the agent publishes what only it knows (its "
        "plan: each hardware rule's logical owner, each software path's "
        "reason) as flows-<chassis_name>.msgpack, rewritten at most every few "
        "seconds after a change; `hwflow flows --config-file` reads it.",
    ),
]

nic_opts = [
    cfg.ListOpt(
        "drivers",
        default=["sim", "mlx5", "ice", "generic"],
        help="NIC drivers (stevedore names in hwflow.nic_drivers) asked, in "
        "order, whether they handle a network device; the first that does "
        "describes it.",
    ),
    cfg.StrOpt(
        "probe_cache",
        default="/var/lib/hwflow/probes",
        help="Directory of cached active-probe results (hwflow capabilities --probe writes them; the "
        "generic tc driver reads them).",
    ),
    cfg.ListOpt(
        "sim_sockets",
        default=[],
        help="Control sockets of simulated NICs (hwflow-simnic) on this host.",
    ),
]

offload_opts = [
    cfg.BoolOpt(
        "enabled",
        default=True,
        help="Program hardware rules at all. When false every flow stays in "
        "Open vSwitch.",
    ),
    cfg.ListOpt(
        "ethertypes",
        default=["ipv4", "ipv6"],
        item_type=cfg.types.String(choices=["ipv4", "ipv6", "arp"]),
        help="Traffic classes that may be offloaded. ARP stays in software by "
        "default so that the control plane keeps seeing address resolution.",
    ),
    cfg.StrOpt(
        "tc_policy",
        default="skip_sw",
        choices=[
            ("skip_sw", "hardware only: a rule the NIC cannot hold is refused"),
            ("skip_hw", "the kernel's software tc path only (testing without a NIC)"),
            ("none", "the kernel decides"),
        ],
        help="Flags put on every tc-flower rule.",
    ),
    cfg.FloatOpt(
        "traffic_half_life",
        default=30.0,
        min=0.1,
        help="When a NIC cannot hold every rule it could carry, its room goes "
        "to the busiest ports: packets a second from each port through both "
        "datapaths (the NIC rules' counters and OVS's), measured every "
        "[agent] report_interval and averaged with this half-life in seconds "
        "(a port gone quiet counts half as busy after it).",
    ),
    cfg.FloatOpt(
        "traffic_hysteresis",
        default=2.0,
        min=1.0,
        help="On a full NIC a port ranked above another (holding room the "
        "other wants) keeps its place until the other sends more than this "
        "many times as many packets a second (plus one), so rules do not "
        "move back and forth between ports of about the same traffic.",
    ),
]

apps_opts = [
    cfg.StrOpt(
        "layout",
        default="",
        sample_default="<shipped etc/datapath_layout.yaml>",
        help="Datapath layout file: which network applications (stevedore "
        "names in hwflow.apps) make up the pipeline and how their exit points "
        "are wired to entry points. Empty means the layout shipped with hwflow.",
    ),
]

GROUPS = {
    "database": database_opts,
    "agent": agent_opts,
    "nic": nic_opts,
    "offload": offload_opts,
    "apps": apps_opts,
}


def register_opts(conf: cfg.ConfigOpts) -> cfg.ConfigOpts:
    for group, opts in GROUPS.items():
        conf.register_opts(opts, group=group)
    return conf


def new_conf(args: list[str] | None = None, project: str = "hwflow") -> cfg.ConfigOpts:
    """A fresh ConfigOpts with every hwflow option, parsed from ``args``."""
    conf = register_opts(cfg.ConfigOpts())
    conf(args=args or [], project=project, default_config_files=[])
    return conf


def list_opts() -> list[tuple[str, list[cfg.Opt]]]:
    return [(group, list(opts)) for group, opts in GROUPS.items()]


def bridge_mappings(entries: list[str]) -> dict[str, str]:
    """``[agent] bridge_mappings`` as physical network -> interface; a bad entry is a ValueError naming it."""
    mappings: dict[str, str] = {}
    for entry in entries:
        physnet, sep, interface = (part.strip() for part in entry.partition(":"))
        if not sep or not physnet or not interface:
            raise ValueError(f"[agent] bridge_mappings entry {entry!r} is not <physical_network>:<interface> "
                             "(for example physnet1:eth1)")
        if physnet in mappings:
            raise ValueError(f"[agent] bridge_mappings names physical network {physnet!r} twice; keep one "
                             "interface per physical network")
        mappings[physnet] = interface
    return mappings
