"""The logical network, as plain dataclasses the database stores as JSON.

Objects are checked here, once, so that neither the database nor the agent
ever has to cope with a malformed network: ``validate`` rejects bad input
with a message naming the object, the field and the rule, and
``from_dict`` applies the same checks to records read back, so a record
written by a foreign or newer tool is caught instead of crashing an agent.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import math
import re
import reprlib
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from hwflow.model.errors import ValidationError
from hwflow.util import dhcp_options

MAX_VNI = 2**24 - 1
MIN_MTU = 68
MAX_MTU = 9000
MAX_UNIQUE_KEY = 2**32 - 1
# Ports and networks become datapath port keys and flood groups: their keys stay below the block the
# pipeline reserves for the host's own tunnel and uplink ports (hwflow.pipeline.ir.PHYSNET_PORT_BASE).
MAX_DATAPATH_KEY = 0x7FFE_FFFF
MAX_NAME_LEN = 255
MAX_DHCP_OPT_NAME_LEN = 64  # Neutron's (DHCP_OPT_NAME_MAX_LEN)

# Ids become database keys (and etcd path segments), so no '/' or spaces.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,254}")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


_SHOWN = reprlib.Repr()
_SHOWN.maxlevel, _SHOWN.maxdict, _SHOWN.maxlist, _SHOWN.maxtuple, _SHOWN.maxset = 2, 4, 4, 4, 4
_SHOWN.maxstring, _SHOWN.maxother, _SHOWN.maxlong = 80, 80, 40
_REPR = reprlib.Repr()  # an object's repr: more of each field than a message quotes
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 4, 32, 32, 32, 32
_REPR.maxstring, _REPR.maxother, _REPR.maxlong = 300, 300, 100


def shown(value: Any, how: reprlib.Repr = _SHOWN, limit: int = 100) -> str:
    """``repr(value)`` cut to at most ``limit`` characters: what a message quotes of a value from outside.

    A file or a foreign record may hold a megabyte string, or a YAML structure whose aliases make its full
    ``repr`` astronomically long; an error quoting it must stay one short line and come back at once.
    """
    try:
        text = how.repr(value)
    except ValueError:  # an integer of more digits than Python turns into text
        text = f"<an integer of {value.bit_length()} bits>" if isinstance(value, int) else f"<a {type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _named(value: Any) -> str:
    """An id or name as a label shows it: as is when it is a sane string, else cut short."""
    return value if isinstance(value, str) and len(value) <= MAX_NAME_LEN and value.isprintable() else shown(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Annotation (as written in the dataclasses below) -> type test.
_TYPE_TESTS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "str": ("a string", lambda v: isinstance(v, str)),
    "int": ("an integer", _is_int),
    "float": ("a number", lambda v: _is_int(v) or isinstance(v, float)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "list[str]": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v)),
    "list[dict[str, Any]]": (
        "a list of mappings with string keys",
        lambda v: isinstance(v, list) and all(isinstance(i, dict) and all(isinstance(k, str) for k in i) for i in v),
    ),
    "dict[str, Any]": (
        "a mapping with string keys",
        lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    ),
}


@dataclasses.dataclass(kw_only=True)
class NbObject:
    """Fields every stored object has, and how kinds declare their relations.

    ``revision`` is the database's mod_revision of the record (0 before it
    is stored) and is what compare-and-swap updates compare against;
    ``unique_key`` is a small integer the NB API allocates per kind, used by
    the datapath where a UUID does not fit (port numbers, tunnel keys).
    ``project_id`` is the tenant the object belongs to. ``external_revision``
    is the revision the object has in the system that writes it into hwflow
    (Neutron's ``revision_number``; 0 for an object hwflow's own CLI made):
    that writer stores a change only over an older one, so two of its
    servers racing cannot leave hwflow behind (``hwflow.neutron.sync``).

    Relations are declared, not coded, so the NB API checks them all the
    same way: ``references`` maps a field (an id, "" for none, or a list of
    ids) to the kind it names, and every id must exist when written;
    ``owners`` are the reference fields whose target owns the object (a
    cascading delete of the target removes it; any other reference blocks
    the delete); ``immutable`` fields cannot change once stored;
    ``subnets_of`` names the network field whose subnets ``check_relations``
    needs; ``unique_scope`` is the namespace of ``unique_values`` (kinds
    sharing one, like ports and router ports, cannot take each other's MAC
    or IP); ``related_fields`` are other fields whose change can create a
    new dependency (a port's IPs on a subnet); ``max_unique_key`` is the
    largest ``unique_key`` the kind may hold; a kind not ``numbered`` takes
    none (its objects keep 0, and creating one writes no per-kind counter).
    """

    kind: ClassVar[str] = ""
    references: ClassVar[dict[str, str]] = {}
    owners: ClassVar[frozenset[str]] = frozenset()
    immutable: ClassVar[tuple[str, ...]] = ()
    subnets_of: ClassVar[str] = ""
    unique_scope: ClassVar[str] = ""
    related_fields: ClassVar[tuple[str, ...]] = ()

    id: str = ""
    name: str = ""
    project_id: str = "default"
    revision: int = 0
    unique_key: int = 0
    external_revision: int = 0

    max_unique_key: ClassVar[int] = MAX_UNIQUE_KEY
    numbered: ClassVar[bool] = True

    def __repr__(self) -> str:
        """As a dataclass's, but every field cut short: an object may hold what a careless caller or a hostile
        file gave it (a megabyte string, a billion laughs), and a traceback or a log line must still print."""
        fields = ", ".join(f"{f.name}={shown(getattr(self, f.name, None), _REPR, 400)}"
                           for f in dataclasses.fields(self))
        return f"{type(self).__name__}({fields})"

    def label(self) -> str:
        """How messages name the object: kind and id, plus the name people know it by."""
        named = f" ({_named(self.name)})" if self.name and self.name != self.id else ""
        return f"{self.kind} {_named(self.id) if self.id else '(new)'}{named}"

    def fail(self, field: str, rule: str) -> ValidationError:
        value = getattr(self, field, None)
        return ValidationError(f"{self.label()}: {field} {shown(value)} {rule}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> None:
        """Check every field; canonicalise those with several spellings.

        Canonical forms (lower-case MAC, compressed IPv6) make equal values
        compare equal in uniqueness checks and in the agents' indexes.
        """
        for f in dataclasses.fields(self):
            what, test = _TYPE_TESTS[str(f.type)]
            if not test(getattr(self, f.name)):
                raise self.fail(f.name, f"must be {what}")
        if not _ID_RE.fullmatch(self.id):
            raise self.fail("id", "must be 1-255 letters, digits, '.', '_', ':' or '-'")
        if len(self.name) > MAX_NAME_LEN or not self.name.isprintable():
            raise self.fail("name", f"must be at most {MAX_NAME_LEN} printable characters")
        if not _ID_RE.fullmatch(self.project_id):
            raise self.fail("project_id", "must be 1-255 letters, digits, '.', '_', ':' or '-'")
        if self.revision < 0:
            raise self.fail("revision", "must not be negative")
        if self.external_revision < 0:
            raise self.fail("external_revision", "must not be negative")
        if not 0 <= self.unique_key <= self.max_unique_key:
            raise self.fail("unique_key", f"must be between 0 and {self.max_unique_key}")
        self.validate_kind()

    def validate_kind(self) -> None:
        """Rules of one kind; runs after the common fields are known good."""

    def unique_values(self) -> list[tuple[str, str]]:
        """(constraint, value) pairs no other object of this ``unique_scope`` may share."""
        return []

    def ref_ids(self, field: str) -> list[str]:
        """The ids a reference field names (none for "")."""
        value = getattr(self, field)
        return list(value) if isinstance(value, list) else [value] if value else []

    def refs(self) -> list[tuple[str, str, str]]:
        """Every (field, kind, id) this object points at."""
        return [(field, kind, ident) for field, kind in self.references.items() for ident in self.ref_ids(field)]

    def uses(self, other: NbObject) -> bool:
        """Whether this object depends on ``other`` (deleting ``other`` would break it)."""
        return any(kind == other.kind and ident == other.id for _, kind, ident in self.refs())

    def owned_by(self, other: NbObject) -> bool:
        """Whether a cascading delete of ``other`` removes this object."""
        return any(other.kind == self.references[f] and other.id in self.ref_ids(f) for f in self.owners)

    def check_relations(self, related: Related) -> None:
        """Rules that need the objects this one points at; the NB API calls it on every write."""


@dataclasses.dataclass
class Related:
    """What a write's relation checks see: the referenced objects and, for ``subnets_of``, the subnets."""

    objects: dict[tuple[str, str], NbObject] = dataclasses.field(default_factory=dict)
    subnets: list[Subnet] = dataclasses.field(default_factory=list)

    def get(self, kind: str, ident: str) -> NbObject:
        return self.objects[kind, ident]


TUNNEL_TYPES = ("geneve", "vxlan")
NETWORK_TYPES = ("vxlan", "geneve", "vlan", "flat")
MAX_VLAN = 4094
DIRECTIONS = ("ingress", "egress")
ETHERTYPES = ("IPv4", "IPv6")
# Protocol numbers people write, and the names they are stored as.
PROTOCOL_NAMES = {"1": "icmp", "6": "tcp", "17": "udp", "58": "icmpv6", "132": "sctp"}
PORT_PROTOCOLS = ("tcp", "udp", "sctp")
_MULTICAST = {4: ipaddress.ip_network("224.0.0.0/4"), 6: ipaddress.ip_network("ff00::/8")}


@dataclasses.dataclass(kw_only=True, repr=False)
class Chassis(NbObject):
    """A host running hwflow-agent; its id is its name (the agent's chassis_name).

    ``tunnel_ip`` is where other chassis send its tunnelled traffic,
    ``tunnel_types`` the encapsulations it terminates, ``external_ip`` the
    address it SNATs external traffic to ("" = it does no SNAT),
    ``capabilities`` the offload summary its agent publishes. ``up`` is
    False once its agent stopped cleanly. ``heartbeat_at`` is when its agent
    last wrote the record (epoch seconds): at start, and when a field of it
    changed. The name is kept for the records agents wrote before, which
    rewrote it at every report; agents no longer do, since each write wakes
    every agent holding the chassis. Whether the agent is alive now is its
    liveness lease (NbApi.heartbeat / alive_chassis), not this record.
    """

    kind: ClassVar[str] = "chassis"
    # Nothing numbers a chassis, and its agent registers it: with a counter every chassis shares, each agent's
    # etcd role would need to write a key the others rely on (see doc/security.rst).
    numbered: ClassVar[bool] = False

    tunnel_ip: str = ""
    tunnel_types: list[str] = dataclasses.field(default_factory=lambda: list(TUNNEL_TYPES))
    external_ip: str = ""
    hostname: str = ""
    capabilities: dict[str, Any] = dataclasses.field(default_factory=dict)
    up: bool = False
    heartbeat_at: float = 0.0

    def __post_init__(self) -> None:
        self.id = self.id or self.name
        self.name = self.name or self.id

    def validate_kind(self) -> None:
        if self.id != self.name:
            raise self.fail("name", f"must equal the chassis id {self.id!r}")
        self.tunnel_ip = _canonical_ip(self, "tunnel_ip", self.tunnel_ip, unicast=True)
        unknown = sorted(set(self.tunnel_types) - set(TUNNEL_TYPES))
        if unknown or not self.tunnel_types:
            raise self.fail("tunnel_types", f"must list one or more of {', '.join(TUNNEL_TYPES)}")
        self.tunnel_types = sorted(set(self.tunnel_types))
        if self.external_ip:
            self.external_ip = _canonical_ip(self, "external_ip", self.external_ip, unicast=True)
        try:
            json.dumps(self.capabilities, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as exc:
            raise self.fail("capabilities", f"must be plain JSON data ({shown(str(exc))[1:-1]})") from None
        if not math.isfinite(self.heartbeat_at) or self.heartbeat_at < 0:
            raise self.fail("heartbeat_at", "must be a non-negative epoch time in seconds")
        self.heartbeat_at = float(self.heartbeat_at)


@dataclasses.dataclass(kw_only=True, repr=False)
class Network(NbObject):
    """A logical L2 segment.

    Overlay networks (``network_type`` vxlan or geneve) carry ``vni`` as
    their tunnel key; provider networks are a VLAN (``vlan_id``) or the
    untagged wire (flat) of the host interface mapped to
    ``physical_network``. ``external`` marks a network routers may use as
    their gateway and floating IPs may come from. While ``admin_state_up``
    is False no port of it carries traffic (see :class:`Port`).
    """

    kind: ClassVar[str] = "network"
    immutable: ClassVar[tuple[str, ...]] = ("network_type", "physical_network")
    max_unique_key: ClassVar[int] = MAX_DATAPATH_KEY

    network_type: str = "vxlan"
    vni: int = 0
    physical_network: str = ""
    vlan_id: int = 0
    mtu: int = 1500
    external: bool = False
    admin_state_up: bool = True

    def validate_kind(self) -> None:
        if self.network_type not in NETWORK_TYPES:
            raise self.fail("network_type", f"must be one of {', '.join(NETWORK_TYPES)}")
        if self.network_type in TUNNEL_TYPES:
            if not 1 <= self.vni <= MAX_VNI:
                raise self.fail("vni", f"must be between 1 and {MAX_VNI} on a {self.network_type} network")
            if self.physical_network or self.vlan_id:
                field = "physical_network" if self.physical_network else "vlan_id"
                raise self.fail(field, f"must be unset on a {self.network_type} network (it has a VNI)")
        else:
            if self.vni:
                raise self.fail("vni", f"must be 0 on a {self.network_type} network (it is not tunnelled)")
            if not _NAME_RE.fullmatch(self.physical_network):
                raise self.fail("physical_network", f"must name the physical network a {self.network_type} "
                                "network is on (letters, digits, '.', '_', '-')")
            if self.network_type == "vlan" and not 1 <= self.vlan_id <= MAX_VLAN:
                raise self.fail("vlan_id", f"must be between 1 and {MAX_VLAN} on a vlan network")
            if self.network_type == "flat" and self.vlan_id:
                raise self.fail("vlan_id", "must be 0 on a flat network (it is untagged)")
        if not MIN_MTU <= self.mtu <= MAX_MTU:
            raise self.fail("mtu", f"must be between {MIN_MTU} and {MAX_MTU}")

    def unique_values(self) -> list[tuple[str, str]]:
        if self.network_type in TUNNEL_TYPES:
            return [("vni", str(self.vni))]
        if self.network_type == "vlan":
            return [("vlan", f"{self.vlan_id} on physical network {self.physical_network}")]
        return [("flat network", f"on physical network {self.physical_network}")]


@dataclasses.dataclass(kw_only=True, repr=False)
class Subnet(NbObject):
    """An IPv4 or IPv6 prefix on a network, with what DHCP hands out for it.

    ``gateway_ip`` ("" = no gateway) is where hosts send off-subnet traffic;
    ``host_routes`` are extra routes pushed by DHCP, each
    ``{"destination": CIDR, "nexthop": IP}``; ``allocation_pools`` are the
    ranges addresses are taken from, each ``{"start": IP, "end": IP}``.
    The prefix cannot change once created (ports hold addresses in it).
    """

    kind: ClassVar[str] = "subnet"
    references: ClassVar[dict[str, str]] = {"network_id": "network"}
    owners: ClassVar[frozenset[str]] = frozenset({"network_id"})
    immutable: ClassVar[tuple[str, ...]] = ("network_id", "cidr")
    subnets_of: ClassVar[str] = "network_id"

    network_id: str = ""
    cidr: str = ""
    gateway_ip: str = ""
    enable_dhcp: bool = True
    dns_nameservers: list[str] = dataclasses.field(default_factory=list)
    host_routes: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    allocation_pools: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    @property
    def network(self) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
        return ipaddress.ip_network(self.cidr)

    def validate_kind(self) -> None:
        _require_id(self, "network_id", "network")
        try:
            net = ipaddress.ip_network(self.cidr, strict=False)
        except ValueError:
            raise self.fail("cidr", "must be an IPv4 or IPv6 prefix like 10.0.0.0/24 or 2001:db8::/64") from None
        if net.network_address != ipaddress.ip_interface(self.cidr).ip:
            raise self.fail("cidr", f"has host bits set; the prefix is {net}")
        if net.overlaps(_MULTICAST[net.version]):
            raise self.fail("cidr", f"must not overlap the multicast range {_MULTICAST[net.version]}")
        if net.prefixlen > net.max_prefixlen - 2 and net.version == 4:
            raise self.fail("cidr", "must leave room for hosts (at most /30 for IPv4)")
        self.cidr = str(net)
        if self.gateway_ip:
            self.gateway_ip = _canonical_ip(self, "gateway_ip", self.gateway_ip, unicast=True)
            self._check_host(ipaddress.ip_address(self.gateway_ip), "gateway_ip")
        self.dns_nameservers = [_canonical_ip(self, "dns_nameservers", ip) for ip in self.dns_nameservers]
        self.host_routes = [self._route(r) for r in self.host_routes]
        self.allocation_pools = self._pools()

    def _check_host(self, address: ipaddress.IPv4Address | ipaddress.IPv6Address, field: str) -> None:
        net = self.network
        if address not in net:
            raise self.fail(field, f"must lie in the subnet {net}")
        if net.version == 4 and address in (net.network_address, net.broadcast_address):
            raise self.fail(field, f"must not be the network or broadcast address of {net}")

    def _route(self, route: dict[str, Any]) -> dict[str, Any]:
        if set(route) != {"destination", "nexthop"}:
            raise self.fail("host_routes", "entries must be {\"destination\": CIDR, \"nexthop\": IP}")
        destination = _canonical_cidr(self, "host_routes", route["destination"])
        nexthop = _canonical_ip(self, "host_routes", route["nexthop"], unicast=True)
        if ipaddress.ip_network(destination).version != self.network.version:
            raise self.fail("host_routes", f"destination {destination} must be IPv{self.network.version}")
        self._check_host(ipaddress.ip_address(nexthop), "host_routes")
        return {"destination": destination, "nexthop": nexthop}

    def _pools(self) -> list[dict[str, Any]]:
        ranges = []
        for pool in self.allocation_pools:
            if set(pool) != {"start", "end"}:
                raise self.fail("allocation_pools", "entries must be {\"start\": IP, \"end\": IP}")
            start = ipaddress.ip_address(_canonical_ip(self, "allocation_pools", pool["start"], unicast=True))
            end = ipaddress.ip_address(_canonical_ip(self, "allocation_pools", pool["end"], unicast=True))
            self._check_host(start, "allocation_pools")
            self._check_host(end, "allocation_pools")
            if start > end:
                raise self.fail("allocation_pools", f"range {start}-{end} ends before it starts")
            if self.gateway_ip and start <= ipaddress.ip_address(self.gateway_ip) <= end:
                raise self.fail("allocation_pools", f"range {start}-{end} holds the gateway {self.gateway_ip}")
            ranges.append((start, end))
        ranges.sort()
        for (_, end), (start, _) in zip(ranges, ranges[1:]):
            if start <= end:
                raise self.fail("allocation_pools", f"ranges overlap at {start}")
        return [{"start": str(s), "end": str(e)} for s, e in ranges]

    def check_relations(self, related: Related) -> None:
        for other in related.subnets:
            if other.id != self.id and other.network.overlaps(self.network):
                raise self.fail("cidr", f"overlaps subnet {other.id} ({other.cidr}) on network {self.network_id}")


@dataclasses.dataclass(kw_only=True, repr=False)
class Port(NbObject):
    """A logical port on a network; ``chassis`` is where it is bound ("" = nowhere).

    ``ips`` must lie in the network's subnets when it has any (a network
    without subnets is plain L2 and takes any address). With
    ``port_security`` the port may only send from its MAC and IPs, plus the
    ``allowed_address_pairs`` (each ``{"ip_address": IP or CIDR,
    "mac_address": MAC}``, the MAC defaulting to the port's), and its traffic
    is filtered by its ``security_groups``; without it, neither applies.
    A port carries traffic only while its ``admin_state_up`` and its
    network's are True: otherwise what it sends and what is sent to it are
    dropped (as OVN's Logical_Switch_Port ``enabled``), and its agent does
    not report it up (Neutron shows it DOWN, as with ML2/OVS).

    ``extra_dhcp_opts`` (Neutron's extra_dhcp_opt) add to or replace what
    the agent's DHCP server sends the port, each ``{"name": dnsmasq's option
    name or a number 1..254, "value": text, "ip_version": 4 or 6}``; a value
    of "" suppresses the option (hwflow.agent.dhcp says how they apply).
    IPv4 ones are checked against hwflow.util.dhcp_options's table. hwflow
    serves DHCPv4 only: IPv6 ones are stored as given but not served.
    """

    kind: ClassVar[str] = "port"
    references: ClassVar[dict[str, str]] = {"network_id": "network", "security_groups": "security_group"}
    owners: ClassVar[frozenset[str]] = frozenset({"network_id"})
    immutable: ClassVar[tuple[str, ...]] = ("network_id",)
    subnets_of: ClassVar[str] = "network_id"
    unique_scope: ClassVar[str] = "port"
    related_fields: ClassVar[tuple[str, ...]] = ("ips",)
    max_unique_key: ClassVar[int] = MAX_DATAPATH_KEY

    network_id: str = ""
    mac: str = ""
    ips: list[str] = dataclasses.field(default_factory=list)
    chassis: str = ""
    device_owner: str = ""
    port_security: bool = True
    admin_state_up: bool = True
    security_groups: list[str] = dataclasses.field(default_factory=list)
    allowed_address_pairs: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    extra_dhcp_opts: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def validate_kind(self) -> None:
        _require_id(self, "network_id", "network")
        self.mac = _canonical_mac(self, "mac", self.mac)
        self.ips = _unique_list(self, "ips", [_canonical_ip(self, "ips", ip, unicast=True) for ip in self.ips])
        if self.chassis and not _ID_RE.fullmatch(self.chassis):
            raise self.fail("chassis", "must be a chassis name or empty")
        if len(self.device_owner) > MAX_NAME_LEN:
            raise self.fail("device_owner", f"must be at most {MAX_NAME_LEN} characters")
        for group in self.security_groups:
            if not _ID_RE.fullmatch(group):
                raise self.fail("security_groups", f"entry {shown(group)} must be the id of a security group")
        self.security_groups = _unique_list(self, "security_groups", self.security_groups)
        self.allowed_address_pairs = [self._pair(pair) for pair in self.allowed_address_pairs]
        if not self.port_security and (self.security_groups or self.allowed_address_pairs):
            field = "security_groups" if self.security_groups else "allowed_address_pairs"
            raise self.fail(field, "must be empty when port_security is off (nothing would enforce them)")
        self.extra_dhcp_opts = self._dhcp_options()

    def _dhcp_options(self) -> list[dict[str, Any]]:
        """The extra DHCP options in canonical form, each option at most once per IP version, sorted by IP version
        and name: their order carries no meaning, and Neutron's reads need not keep one (a repair comparing
        what it reads with what is stored must not see two orders as a change)."""
        options, seen = [], set()
        for entry in self.extra_dhcp_opts:
            option = self._dhcp_option(entry)
            key = (option["name"], option["ip_version"])
            if key in seen:
                raise self.fail("extra_dhcp_opts", f"set option {option['name']!r} (IPv{key[1]}) more than once; "
                                "give each option once")
            seen.add(key)
            options.append(option)
        return sorted(options, key=lambda o: (o["ip_version"], o["name"]))

    def _dhcp_option(self, entry: dict[str, Any]) -> dict[str, Any]:
        """One extra DHCP option: its name (an IPv4 one as the table names it, a number it names as that name),
        its value as text ("" for null: not sent) in the spelling hwflow.util.dhcp_options gives it, its IP
        version as 4 or 6."""
        if "name" not in entry or not set(entry) <= {"name", "value", "ip_version"}:
            raise self.fail("extra_dhcp_opts", "entries must be {\"name\": option name or number, \"value\": text, "
                            "\"ip_version\": 4 or 6 (optional, 4)}")
        name, value, version = entry["name"], entry.get("value"), entry.get("ip_version", 4)
        if not isinstance(name, str) or not 0 < len(name) <= MAX_DHCP_OPT_NAME_LEN or not name.isprintable():
            raise self.fail("extra_dhcp_opts", f"option name {shown(name)} must be 1-{MAX_DHCP_OPT_NAME_LEN} "
                            "printable characters")
        if str(version) not in ("4", "6"):
            raise self.fail("extra_dhcp_opts", f"option {shown(name)} has ip_version {shown(version)}; write 4 or 6")
        if value is None:
            value = ""
        elif _is_int(value):
            value = str(value)
        elif not isinstance(value, str):
            raise self.fail("extra_dhcp_opts", f"option {shown(name)} has value {shown(value)}; write it as text")
        if int(version) == 6:  # not served (hwflow's DHCP is v4): kept as Neutron has it
            if len(value) > dhcp_options.MAX_VALUE_LEN:
                raise self.fail("extra_dhcp_opts", f"option {shown(name)} (IPv6) has a value over "
                                f"{dhcp_options.MAX_VALUE_LEN} characters")
            return {"name": name, "value": value, "ip_version": 6}
        try:
            option = dhcp_options.lookup(name)
        except ValueError as exc:
            raise ValidationError(f"{self.label()}: extra_dhcp_opts option {shown(name)} {exc}") from None
        try:
            value = dhcp_options.canonical(option, value)
        except ValueError as exc:
            raise ValidationError(f"{self.label()}: extra_dhcp_opts option {shown(name)} value {shown(value)} "
                                  f"{exc}") from None
        return {"name": option.name, "value": value, "ip_version": 4}

    def _pair(self, pair: dict[str, Any]) -> dict[str, Any]:
        if "ip_address" not in pair or not set(pair) <= {"ip_address", "mac_address"}:
            raise self.fail("allowed_address_pairs", "entries must be {\"ip_address\": IP or CIDR, "
                            "\"mac_address\": MAC (optional)}")
        address = _canonical_cidr(self, "allowed_address_pairs", pair["ip_address"], host_ok=True)
        return {"ip_address": address,
                "mac_address": _canonical_mac(self, "allowed_address_pairs", pair.get("mac_address") or self.mac)}

    def unique_values(self) -> list[tuple[str, str]]:
        where = f" on network {self.network_id}"
        return [("mac", self.mac + where)] + [("ip", ip + where) for ip in self.ips]

    def uses(self, other: NbObject) -> bool:
        """A port also depends on the subnets its addresses come from."""
        if isinstance(other, Subnet):
            return other.network_id == self.network_id and any(
                ipaddress.ip_address(ip) in other.network for ip in self.ips)
        return super().uses(other)

    def check_relations(self, related: Related) -> None:
        _in_subnets(self, "ips", self.ips, related.subnets)


@dataclasses.dataclass(kw_only=True, repr=False)
class Router(NbObject):
    """A distributed router; it reaches networks through its router ports.

    ``gateway_network_id`` ("" = none) is the external network it uses as
    its way out, with ``gateway_ip`` its address there; with ``enable_snat``
    traffic from its inside networks leaves SNATed to the chassis's
    external_ip. ``routes`` are static, each ``{"destination": CIDR,
    "nexthop": IP}``.
    """

    kind: ClassVar[str] = "router"
    references: ClassVar[dict[str, str]] = {"gateway_network_id": "network"}
    subnets_of: ClassVar[str] = "gateway_network_id"
    unique_scope: ClassVar[str] = "port"
    related_fields: ClassVar[tuple[str, ...]] = ("gateway_ip",)

    gateway_network_id: str = ""
    gateway_ip: str = ""
    enable_snat: bool = True
    routes: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def validate_kind(self) -> None:
        if self.gateway_network_id:
            _require_id(self, "gateway_network_id", "network")
        if self.gateway_ip:
            if not self.gateway_network_id:
                raise self.fail("gateway_ip", "needs a gateway_network_id to be an address on")
            self.gateway_ip = _canonical_ip(self, "gateway_ip", self.gateway_ip, unicast=True)
        routes = []
        for route in self.routes:
            if set(route) != {"destination", "nexthop"}:
                raise self.fail("routes", "entries must be {\"destination\": CIDR, \"nexthop\": IP}")
            destination = _canonical_cidr(self, "routes", route["destination"])
            nexthop = _canonical_ip(self, "routes", route["nexthop"], unicast=True)
            if ipaddress.ip_network(destination).version != ipaddress.ip_address(nexthop).version:
                raise self.fail("routes", f"destination {destination} and nexthop {nexthop} differ in IP version")
            routes.append({"destination": destination, "nexthop": nexthop})
        self.routes = _unique_list(self, "routes", routes)

    def unique_values(self) -> list[tuple[str, str]]:
        return [("ip", f"{self.gateway_ip} on network {self.gateway_network_id}")] if self.gateway_ip else []

    def check_relations(self, related: Related) -> None:
        if self.gateway_network_id:
            _require_external(self, "gateway_network_id", related.get("network", self.gateway_network_id))
            if self.gateway_ip:
                _in_subnets(self, "gateway_ip", [self.gateway_ip], related.subnets)


@dataclasses.dataclass(kw_only=True, repr=False)
class RouterPort(NbObject):
    """A router's interface on one subnet: ``ip`` (usually the subnet's gateway) and ``mac`` on its network."""

    kind: ClassVar[str] = "router_port"
    references: ClassVar[dict[str, str]] = {"router_id": "router", "network_id": "network", "subnet_id": "subnet"}
    owners: ClassVar[frozenset[str]] = frozenset({"router_id"})
    immutable: ClassVar[tuple[str, ...]] = ("router_id", "network_id", "subnet_id")
    unique_scope: ClassVar[str] = "port"

    router_id: str = ""
    network_id: str = ""
    subnet_id: str = ""
    mac: str = ""
    ip: str = ""

    def validate_kind(self) -> None:
        _require_id(self, "router_id", "router")
        _require_id(self, "network_id", "network")
        _require_id(self, "subnet_id", "subnet")
        self.mac = _canonical_mac(self, "mac", self.mac)
        self.ip = _canonical_ip(self, "ip", self.ip, unicast=True)

    def unique_values(self) -> list[tuple[str, str]]:
        where = f" on network {self.network_id}"
        return [("mac", self.mac + where), ("ip", self.ip + where)]

    def check_relations(self, related: Related) -> None:
        subnet = related.get("subnet", self.subnet_id)
        assert isinstance(subnet, Subnet)
        if subnet.network_id != self.network_id:
            raise self.fail("subnet_id", f"is on network {subnet.network_id}, not on network_id {self.network_id}")
        _in_subnets(self, "ip", [self.ip], [subnet])


@dataclasses.dataclass(kw_only=True, repr=False)
class SecurityGroup(NbObject):
    """A named set of rules; a port in the group accepts what any of the group's rules allows."""

    kind: ClassVar[str] = "security_group"

    description: str = ""

    def validate_kind(self) -> None:
        if len(self.description) > MAX_NAME_LEN or not self.description.isprintable():
            raise self.fail("description", f"must be at most {MAX_NAME_LEN} printable characters")


@dataclasses.dataclass(kw_only=True, repr=False)
class SecurityGroupRule(NbObject):
    """One allow rule of a security group (traffic no rule allows is dropped).

    ``direction`` is as seen from the port; ``protocol`` is "" (any), a name
    (tcp, udp, sctp, icmp, icmpv6) or an IP protocol number, stored as the
    name where there is one. For tcp/udp/sctp, ``port_min``..``port_max``
    limit the destination port (0..0 = any); for icmp/icmpv6, ``icmp_type``
    and ``icmp_code`` (-1 = any). The peer is ``remote_ip_prefix`` (a CIDR of
    the rule's ethertype) or ``remote_group_id`` (the addresses of the ports
    in that group), or anyone when both are empty.
    """

    kind: ClassVar[str] = "security_group_rule"
    references: ClassVar[dict[str, str]] = {"security_group_id": "security_group",
                                            "remote_group_id": "security_group"}
    owners: ClassVar[frozenset[str]] = frozenset({"security_group_id"})
    immutable: ClassVar[tuple[str, ...]] = ("security_group_id",)

    security_group_id: str = ""
    direction: str = "ingress"
    ethertype: str = "IPv4"
    protocol: str = ""
    port_min: int = 0
    port_max: int = 0
    icmp_type: int = -1
    icmp_code: int = -1
    remote_ip_prefix: str = ""
    remote_group_id: str = ""

    def validate_kind(self) -> None:
        _require_id(self, "security_group_id", "security group")
        if self.direction not in DIRECTIONS:
            raise self.fail("direction", f"must be one of {', '.join(DIRECTIONS)}")
        if self.ethertype not in ETHERTYPES:
            raise self.fail("ethertype", f"must be one of {', '.join(ETHERTYPES)}")
        self.protocol = self._protocol()
        self._ports()
        self._icmp()
        if self.remote_ip_prefix and self.remote_group_id:
            raise self.fail("remote_group_id", "cannot be given together with remote_ip_prefix; choose one")
        if self.remote_ip_prefix:
            self.remote_ip_prefix = _canonical_cidr(self, "remote_ip_prefix", self.remote_ip_prefix)
            if f"IPv{ipaddress.ip_network(self.remote_ip_prefix).version}" != self.ethertype:
                raise self.fail("remote_ip_prefix", f"must be an {self.ethertype} prefix (the rule's ethertype)")
        if self.remote_group_id:
            _require_id(self, "remote_group_id", "security group")

    def _protocol(self) -> str:
        protocol = self.protocol.strip().lower()
        if protocol.isdigit():
            if int(protocol) > 255:
                raise self.fail("protocol", "must be an IP protocol number 0..255 or a name")
            protocol = PROTOCOL_NAMES.get(str(int(protocol)), str(int(protocol)))
        elif protocol and protocol not in {*PROTOCOL_NAMES.values()}:
            raise self.fail("protocol", f"must be empty (any), one of {', '.join(sorted(PROTOCOL_NAMES.values()))} "
                            "or an IP protocol number 0..255")
        if protocol == "icmp" and self.ethertype == "IPv6":
            raise self.fail("protocol", "must be icmpv6 on an IPv6 rule")
        if protocol == "icmpv6" and self.ethertype == "IPv4":
            raise self.fail("protocol", "must be icmp on an IPv4 rule")
        return protocol

    def _ports(self) -> None:
        if (self.port_min, self.port_max) == (0, 0):
            return
        if self.protocol not in PORT_PROTOCOLS:
            raise self.fail("port_min", f"needs a protocol with ports ({', '.join(PORT_PROTOCOLS)})")
        if not 1 <= self.port_min <= self.port_max <= 65535:
            raise self.fail("port_max", f"must satisfy 1 <= port_min ({self.port_min}) <= port_max <= 65535")

    def _icmp(self) -> None:
        if (self.icmp_type, self.icmp_code) == (-1, -1):
            return
        if self.protocol not in ("icmp", "icmpv6"):
            raise self.fail("icmp_type", "needs protocol icmp or icmpv6")
        if not 0 <= self.icmp_type <= 255:
            raise self.fail("icmp_type", "must be 0..255, or -1 for any")
        if not -1 <= self.icmp_code <= 255:
            raise self.fail("icmp_code", "must be 0..255, or -1 for any")


@dataclasses.dataclass(kw_only=True, repr=False)
class FloatingIP(NbObject):
    """A public IPv4 address on an external network, DNATed to ``fixed_ip_address`` of ``port_id``.

    ``port_id`` "" means reserved but not associated. When the port has one
    IPv4 address, ``fixed_ip_address`` may be left empty and is filled in.
    """

    kind: ClassVar[str] = "floating_ip"
    references: ClassVar[dict[str, str]] = {"floating_network_id": "network", "port_id": "port"}
    immutable: ClassVar[tuple[str, ...]] = ("floating_network_id", "floating_ip_address")
    subnets_of: ClassVar[str] = "floating_network_id"
    unique_scope: ClassVar[str] = "port"

    floating_network_id: str = ""
    floating_ip_address: str = ""
    port_id: str = ""
    fixed_ip_address: str = ""

    def validate_kind(self) -> None:
        _require_id(self, "floating_network_id", "network")
        self.floating_ip_address = _canonical_ip(self, "floating_ip_address", self.floating_ip_address, unicast=True)
        if ":" in self.floating_ip_address:
            raise self.fail("floating_ip_address", "must be an IPv4 address (IPv6 needs no NAT)")
        if self.port_id:
            _require_id(self, "port_id", "port")
        if self.fixed_ip_address:
            if not self.port_id:
                raise self.fail("fixed_ip_address", "needs a port_id to belong to")
            self.fixed_ip_address = _canonical_ip(self, "fixed_ip_address", self.fixed_ip_address, unicast=True)

    def unique_values(self) -> list[tuple[str, str]]:
        where = f" on network {self.floating_network_id}"
        fixed = [("floating ip of", f"{self.fixed_ip_address} of port {self.port_id}")] if self.port_id else []
        return [("ip", self.floating_ip_address + where), *fixed]

    def check_relations(self, related: Related) -> None:
        _require_external(self, "floating_network_id", related.get("network", self.floating_network_id))
        _in_subnets(self, "floating_ip_address", [self.floating_ip_address], related.subnets)
        if not self.port_id:
            return
        port = related.get("port", self.port_id)
        assert isinstance(port, Port)
        if not self.fixed_ip_address:
            ipv4 = [ip for ip in port.ips if ":" not in ip]
            if len(ipv4) != 1:
                raise self.fail("fixed_ip_address", f"must be given: port {port.id} has {len(ipv4)} IPv4 addresses")
            self.fixed_ip_address = ipv4[0]
        if self.fixed_ip_address not in port.ips or ":" in self.fixed_ip_address:
            raise self.fail("fixed_ip_address", f"must be one of port {port.id}'s IPv4 addresses {port.ips}")


def _require_id(obj: NbObject, field: str, what: str) -> None:
    if not _ID_RE.fullmatch(getattr(obj, field)):
        raise obj.fail(field, f"must be the id of a {what}")


def _require_external(obj: NbObject, field: str, network: NbObject) -> None:
    if not (isinstance(network, Network) and network.external):
        raise obj.fail(field, f"names {network.label()}, which is not external; create it with external true")


def _in_subnets(obj: NbObject, field: str, addresses: list[str], subnets: list[Subnet]) -> None:
    """Every address lies in one of the subnets (when there are any: a network without is plain L2)."""
    if not subnets:
        return
    for text in addresses:
        address = ipaddress.ip_address(text)
        if not any(address in s.network for s in subnets):
            cidrs = ", ".join(sorted(s.cidr for s in subnets))
            raise obj.fail(field, f"has {text}, which lies in none of the network's subnets ({cidrs})")


def _unique_list(obj: NbObject, field: str, values: list[Any]) -> list[Any]:
    """``values`` if none repeats (plain JSON values, compared as such; a set, so a long list costs no more)."""
    seen: set[Any] = set()
    for value in values:
        key = json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
        if key in seen:
            raise obj.fail(field, f"lists {value if isinstance(value, str) else shown(value)} more than once")
        seen.add(key)
    return list(values)


def _canonical_mac(obj: NbObject, field: str, text: Any) -> str:
    mac = text.strip().lower() if isinstance(text, str) else ""
    if not _MAC_RE.fullmatch(mac):
        raise ValidationError(f"{obj.label()}: {field} {shown(text)} must be six hex octets separated by ':' "
                              "(like fa:16:3e:12:34:56)")
    if int(mac[:2], 16) & 1:
        raise ValidationError(f"{obj.label()}: {field} {shown(text)} must be a unicast MAC address (first octet even)")
    if mac == "00:00:00:00:00:00":
        raise ValidationError(f"{obj.label()}: {field} {shown(text)} must not be all zeros")
    return mac


def _canonical_ip(obj: NbObject, field: str, text: Any, unicast: bool = False) -> str:
    try:
        if not isinstance(text, str):
            raise ValueError(text)
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValidationError(
            f"{obj.label()}: {field} {shown(text)} must be an IPv4 or IPv6 address (no prefix length)"
        ) from None
    if unicast and (address.is_multicast or address.is_unspecified):
        raise ValidationError(f"{obj.label()}: {field} {shown(text)} must be a unicast address")
    return str(address)


def _canonical_cidr(obj: NbObject, field: str, text: Any, host_ok: bool = False) -> str:
    """A prefix in canonical form; ``host_ok`` also takes a bare address (as a /32 or /128)."""
    try:
        if not isinstance(text, str):
            raise ValueError(text)
        net = ipaddress.ip_network(text, strict=True)
    except ValueError:
        raise ValidationError(
            f"{obj.label()}: {field} {shown(text)} must be an IP prefix with no host bits set, like 10.0.0.0/24"
        ) from None
    if host_ok and net.prefixlen == net.max_prefixlen:
        return str(net.network_address)
    return str(net)


KINDS: Mapping[str, type[NbObject]] = {
    cls.kind: cls
    for cls in (Chassis, Network, Subnet, Port, Router, RouterPort, SecurityGroup, SecurityGroupRule, FloatingIP)
}


def kind_class(kind: str | type[NbObject]) -> type[NbObject]:
    """The class of a kind given by name (or already a class), or a clear error."""
    if isinstance(kind, type) and issubclass(kind, NbObject) and kind.kind in KINDS:
        return kind
    try:
        return KINDS[str(kind)]
    except KeyError:
        raise ValidationError(f"unknown kind {shown(kind)}; known kinds: {', '.join(sorted(KINDS))}") from None


def from_dict(kind: str | type[NbObject], data: Any) -> NbObject:
    """Build and validate an object from decoded JSON; missing fields take defaults."""
    cls = kind_class(kind)
    label = f"{cls.kind} {_named(data.get('id', '(no id)')) if isinstance(data, Mapping) else '(?)'}"
    if not isinstance(data, Mapping):
        raise ValidationError(f"{label}: record must be a JSON object, not {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ValidationError(
            f"{label}: unknown field(s) {', '.join(shown(str(k))[1:-1] for k in unknown[:5])}"
            f"{f' and {len(unknown) - 5} more' if len(unknown) > 5 else ''}; "
            f"a {cls.kind} has {', '.join(fields)}"
        )
    for name, value in data.items():
        what, test = _TYPE_TESTS[str(fields[name].type)]
        if not test(value):
            raise ValidationError(f"{label}: {name} {shown(value)} must be {what}")
    obj = cls(**{k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
                 for k, v in data.items()})
    obj.validate()
    return obj
