"""Neutron's resources (the dicts its plugin hands a mechanism driver) as hwflow's model objects.

Pure functions, no database: the mechanism driver calls them in a precommit to refuse what hwflow cannot
hold (while Neutron can still say no to the request) and in the postcommit to write it. Each returns an
object that ``validate`` accepted, or raises hwflow's ValidationError naming the Neutron resource and what
to change. What hwflow's model has no field for is listed in ``hwflow.neutron``'s docstring.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypeVar

from neutron_lib import constants as n_const

from hwflow.model.errors import ValidationError
from hwflow.model.objects import (
    PORT_PROTOCOLS,
    PROTOCOL_NAMES,
    Chassis,
    FloatingIP,
    NbObject,
    Network,
    Port,
    Router,
    RouterPort,
    SecurityGroup,
    SecurityGroupRule,
    Subnet,
    shown,
)

# Device owners whose ports are a router's interface, gateway or floating IP: the L3 side of Neutron,
# which hwflow models as router ports and floating IPs (an L3 service plugin's work), not as ports.
L3_OWNERS = (*n_const.ROUTER_PORT_OWNERS, n_const.DEVICE_OWNER_ROUTER_HA_INTF, n_const.DEVICE_OWNER_AGENT_GW,
             n_const.DEVICE_OWNER_FLOATINGIP)
# The network types hwflow's datapath carries, by Neutron's names (which are hwflow's too).
SEGMENT_TYPES = ("vxlan", "geneve", "vlan", "flat")

Obj = TypeVar("Obj", bound=NbObject)

# Neutron drops every IP packet of a port with port security and no security group (no rule allows any: its
# firewalls keep only ARP, DHCP and neighbour discovery); hwflow filters a port only while it is in some group.
# Such a port is written in this group, which has no rule, as Neutron's OVN driver puts every port with port
# security in its port group ``neutron_pg_drop``. hwflow's object, not Neutron's (``external_revision`` 0):
# never reported or deleted by a repair; written by whoever writes a port naming it first.
DROP_ALL_GROUP = "neutron-drop-all"


def drop_all_group() -> SecurityGroup:
    """The group of the ports with port security and no security group of Neutron's (:data:`DROP_ALL_GROUP`)."""
    return _checked(SecurityGroup(
        id=DROP_ALL_GROUP, name=DROP_ALL_GROUP,
        description="Neutron's ports with port security and no security group: all IP dropped, as in Neutron"))


def _checked(obj: Obj) -> Obj:
    obj.validate()
    return obj


def _prefix(label: str, field: str, text: Any) -> str:
    """An address or CIDR as the prefix it names: Neutron keeps what the user wrote (10.0.0.5/24), hwflow's
    model takes a prefix without host bits (10.0.0.0/24), or an address."""
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except (TypeError, ValueError):
        raise ValidationError(f"{label}: {field} {shown(text)} must be an IP address or prefix") from None


def _common(resource: Mapping[str, Any]) -> dict[str, Any]:
    """The fields every object has: Neutron's id, name, project (an object of no project is hwflow's
    "default" one, as the CLI writes them) and revision number (what a write newer than another is)."""
    return {"id": resource["id"], "name": resource.get("name") or "",
            "project_id": resource.get("project_id") or NbObject.project_id,
            "external_revision": resource.get("revision_number") or 0}


def chassis_for(host: str, registered: Iterable[Chassis]) -> str:
    """The chassis of a binding host among those registered: the one of that name, else of that hostname; else
    the host name itself, which is the chassis name an agent takes by default (it binds when that agent comes)."""
    chassis = list(registered)
    for named in ([c.id for c in chassis if c.id == host], [c.id for c in chassis if c.hostname == host]):
        if named:
            return named[0]
    return host


def network(net: Mapping[str, Any], segments: Sequence[Mapping[str, Any]]) -> Network:
    """A Neutron network and its segments (ML2's ``network_segments``): one segment of a type hwflow carries;
    its MTU, ``router:external`` and admin state."""
    label = f"network {net['id']}"
    if len(segments) != 1:
        raise ValidationError(f"{label}: has {len(segments)} segments; hwflow carries a network on exactly one "
                              "(create it without multiple provider segments)")
    segment = segments[0]
    kind, ident = segment["network_type"], segment.get("segmentation_id") or 0
    if kind not in SEGMENT_TYPES:
        raise ValidationError(f"{label}: network type {kind!r} is not one hwflow carries; use one of "
                              f"{', '.join(SEGMENT_TYPES)} ([ml2] type_drivers, tenant_network_types)")
    tunnelled = kind in ("vxlan", "geneve")
    return _checked(Network(
        **_common(net), network_type=kind, vni=ident if tunnelled else 0,
        physical_network="" if tunnelled else segment.get("physical_network") or "",
        vlan_id=ident if kind == "vlan" else 0, mtu=net["mtu"], external=bool(net.get("router:external")),
        admin_state_up=bool(net.get("admin_state_up", True))))


def subnet(sub: Mapping[str, Any]) -> Subnet:
    """A Neutron subnet: prefix, gateway, DHCP, pools, DNS servers and host routes as they are."""
    return _checked(Subnet(
        **_common(sub), network_id=sub["network_id"], cidr=sub["cidr"], gateway_ip=sub.get("gateway_ip") or "",
        enable_dhcp=bool(sub["enable_dhcp"]), dns_nameservers=list(sub.get("dns_nameservers") or []),
        host_routes=[{"destination": r["destination"], "nexthop": r["nexthop"]} for r in sub.get("host_routes") or []],
        allocation_pools=[{"start": p["start"], "end": p["end"]} for p in sub.get("allocation_pools") or []]))


def is_l3_port(port_dict: Mapping[str, Any]) -> bool:
    """Whether the port belongs to Neutron's L3 side (a router's or a floating IP's), which ``port`` leaves out."""
    return port_dict.get("device_owner") in L3_OWNERS


def port(port_dict: Mapping[str, Any], chassis: str) -> Port:
    """A Neutron port bound to ``chassis`` ("" = unbound): its MAC, fixed IPs, owner, admin state, port security,
    groups and allowed address pairs. An address pair's CIDR is taken as the prefix it names (Neutron keeps host bits);
    a port with port security and no group is in :data:`DROP_ALL_GROUP`. Its extra DHCP options are written as
    Neutron stores them: an option of null value is not stored (Neutron drops it), one of "" is (not sent)."""
    security = port_dict.get("port_security_enabled", True)
    groups = list(port_dict.get("security_groups") or []) or [DROP_ALL_GROUP]
    label = f"port {port_dict['id']}"
    pairs = [{"ip_address": _prefix(label, "allowed_address_pairs", pair["ip_address"]),
              "mac_address": pair.get("mac_address") or port_dict["mac_address"]}
             for pair in port_dict.get("allowed_address_pairs") or []]
    return _checked(Port(
        **_common(port_dict), network_id=port_dict["network_id"], mac=port_dict["mac_address"],
        ips=[ip["ip_address"] for ip in port_dict.get("fixed_ips") or []], chassis=chassis,
        device_owner=port_dict.get("device_owner") or "", port_security=bool(security),
        admin_state_up=bool(port_dict.get("admin_state_up", True)),
        security_groups=groups if security else [],
        allowed_address_pairs=pairs if security else [],
        extra_dhcp_opts=[{"name": o["opt_name"], "value": o["opt_value"], "ip_version": o.get("ip_version") or 4}
                         for o in port_dict.get("extra_dhcp_opts") or [] if o.get("opt_value") is not None]))


def security_group(group: Mapping[str, Any]) -> SecurityGroup:
    """A Neutron security group (its rules are ``security_group_rule`` each)."""
    return _checked(SecurityGroup(**_common(group), description=group.get("description") or ""))


def _protocol(rule: Mapping[str, Any]) -> str:
    """Neutron's protocol (None or "any" for any, a name or a number) as hwflow's: the name hwflow has for
    it, else its number. Neutron stores an IPv6 rule's ICMP as ipv6-icmp (or 58), hwflow as icmpv6."""
    protocol = str(rule.get("protocol") or "").lower()
    if protocol in ("", "any"):
        return ""
    number = str(n_const.IP_PROTOCOL_MAP.get(protocol, protocol))
    if rule["ethertype"] == n_const.IPv6 and number == str(n_const.PROTO_NUM_ICMP):
        number = str(n_const.PROTO_NUM_IPV6_ICMP)
    return PROTOCOL_NAMES.get(number, number)


def security_group_rule(rule: Mapping[str, Any]) -> SecurityGroupRule:
    """A Neutron security group rule. Neutron's port_range_min/max are the destination ports for tcp, udp
    and sctp, and the ICMP type/code for icmp (None = any); hwflow's address groups do not exist, so a rule
    naming one is refused."""
    label = f"security group rule {rule['id']}"
    if rule.get("remote_address_group_id"):
        raise ValidationError(f"{label}: remote_address_group_id is not supported by hwflow; "
                              "use remote_ip_prefix or remote_group_id")
    low, high = rule.get("port_range_min"), rule.get("port_range_max")
    made = SecurityGroupRule(
        id=rule["id"], project_id=rule.get("project_id") or NbObject.project_id,
        external_revision=rule.get("revision_number") or 0,
        security_group_id=rule["security_group_id"], direction=rule["direction"], ethertype=rule["ethertype"],
        protocol=_protocol(rule), remote_group_id=rule.get("remote_group_id") or "",
        remote_ip_prefix=_prefix(label, "remote_ip_prefix", rule["remote_ip_prefix"])
        if rule.get("remote_ip_prefix") else "")
    if made.protocol in ("icmp", "icmpv6"):
        made.icmp_type = -1 if low is None else int(low)
        made.icmp_code = -1 if high is None else int(high)
    elif low is not None or high is not None:
        if made.protocol not in PORT_PROTOCOLS:
            raise ValidationError(f"{label}: a port range on protocol {made.protocol or 'any'} is not supported by "
                                  f"hwflow (only on {', '.join(PORT_PROTOCOLS)})")
        made.port_min = int(low if low is not None else high)
        made.port_max = int(high if high is not None else low)
    return _checked(made)


def router(rtr: Mapping[str, Any]) -> Router:
    """A Neutron router: its gateway (external network, address, SNAT) and static routes. hwflow's gateway holds
    one address: the gateway port's IPv4 one (NAT is IPv4's), else its first. SNAT goes out as each chassis's
    external_ip (hwflow's SNAT is per chassis, distributed), not as this address."""
    label = f"router {rtr['id']}"
    gateway = rtr.get("external_gateway_info") or {}
    ips = [ip["ip_address"] for ip in gateway.get("external_fixed_ips") or []]
    ipv4 = [ip for ip in ips if ":" not in ip]
    return _checked(Router(
        **_common(rtr), gateway_network_id=gateway.get("network_id") or "", gateway_ip=(ipv4 or ips or [""])[0],
        enable_snat=bool(gateway.get("enable_snat", True)),
        routes=[{"destination": _prefix(label, "routes", route["destination"]), "nexthop": route["nexthop"]}
                for route in rtr.get("routes") or []]))


def router_port(port_dict: Mapping[str, Any], router_id: str) -> RouterPort:
    """A Neutron router interface (its port) on ``router_id``: hwflow's router port has one address, so a port
    of several (Neutron puts a network's IPv6 subnets, or an IPv4 and IPv6 one, on one interface) is refused."""
    fixed = port_dict.get("fixed_ips") or []
    if len(fixed) != 1:
        raise ValidationError(f"router interface port {port_dict['id']}: has {len(fixed)} addresses; hwflow holds a "
                              "router interface with exactly one (attach each subnet by a port of its own)")
    return _checked(RouterPort(
        **_common(port_dict), router_id=router_id, network_id=port_dict["network_id"],
        subnet_id=fixed[0]["subnet_id"], mac=port_dict["mac_address"], ip=fixed[0]["ip_address"]))


def floating_ip(fip: Mapping[str, Any]) -> FloatingIP:
    """A Neutron floating IP, associated (port and fixed address) or not; its own port on the external network
    is not written (hwflow's floating IP is the address)."""
    return _checked(FloatingIP(
        **_common(fip), floating_network_id=fip["floating_network_id"],
        floating_ip_address=fip["floating_ip_address"], port_id=fip.get("port_id") or "",
        fixed_ip_address=fip.get("fixed_ip_address") or ""))
