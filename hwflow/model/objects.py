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
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from hwflow.model.errors import ValidationError

MAX_VNI = 2**24 - 1
MIN_MTU = 68
MAX_MTU = 9000
MAX_UNIQUE_KEY = 2**32 - 1
MAX_NAME_LEN = 255

# Ids become database keys (and etcd path segments), so no '/' or spaces.
_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,254}")
_MAC_RE = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# Annotation (as written in the dataclasses below) -> type test.
_TYPE_TESTS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "str": ("a string", lambda v: isinstance(v, str)),
    "int": ("an integer", _is_int),
    "float": ("a number", lambda v: _is_int(v) or isinstance(v, float)),
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "list[str]": ("a list of strings", lambda v: isinstance(v, list) and all(isinstance(i, str) for i in v)),
    "dict[str, Any]": (
        "a mapping with string keys",
        lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v),
    ),
}


@dataclasses.dataclass(kw_only=True)
class NbObject:
    """Fields every stored object has.

    ``revision`` is the database's mod_revision of the record (0 before it
    is stored) and is what compare-and-swap updates compare against;
    ``unique_key`` is a small integer the NB API allocates per kind, used by
    the datapath where a UUID does not fit (port numbers, tunnel keys).
    """

    kind: ClassVar[str] = ""
    # Reference field -> kind it points at; references cannot change once set.
    references: ClassVar[dict[str, str]] = {}

    id: str = ""
    name: str = ""
    project_id: str = "default"
    revision: int = 0
    unique_key: int = 0

    def label(self) -> str:
        """How messages name the object: kind and id, plus the name people know it by."""
        named = f" ({self.name})" if self.name and self.name != self.id else ""
        return f"{self.kind} {self.id or '(new)'}{named}"

    def fail(self, field: str, rule: str) -> ValidationError:
        value = getattr(self, field, None)
        return ValidationError(f"{self.label()}: {field} {value!r} {rule}")

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
        if not 0 <= self.unique_key <= MAX_UNIQUE_KEY:
            raise self.fail("unique_key", f"must be between 0 and {MAX_UNIQUE_KEY}")
        self.validate_kind()

    def validate_kind(self) -> None:
        """Rules of one kind; runs after the common fields are known good."""

    def unique_values(self) -> list[tuple[str, str]]:
        """(constraint, value) pairs no other object of this kind may share."""
        return []


@dataclasses.dataclass(kw_only=True)
class Chassis(NbObject):
    """A host running hwflow-agent; its id is its name (the agent's chassis_name)."""

    kind: ClassVar[str] = "chassis"

    tunnel_ip: str = ""
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
        self.tunnel_ip = _canonical_ip(self, "tunnel_ip", self.tunnel_ip)
        try:
            json.dumps(self.capabilities, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise self.fail("capabilities", f"must be plain JSON data ({exc})") from None
        if not math.isfinite(self.heartbeat_at) or self.heartbeat_at < 0:
            raise self.fail("heartbeat_at", "must be a non-negative epoch time in seconds")
        self.heartbeat_at = float(self.heartbeat_at)


@dataclasses.dataclass(kw_only=True)
class Network(NbObject):
    """A logical L2 segment; ``vni`` is its tunnel key on the wire."""

    kind: ClassVar[str] = "network"

    vni: int = 0
    mtu: int = 1500

    def validate_kind(self) -> None:
        if not 1 <= self.vni <= MAX_VNI:
            raise self.fail("vni", f"must be between 1 and {MAX_VNI}")
        if not MIN_MTU <= self.mtu <= MAX_MTU:
            raise self.fail("mtu", f"must be between {MIN_MTU} and {MAX_MTU}")

    def unique_values(self) -> list[tuple[str, str]]:
        return [("vni", str(self.vni))]


@dataclasses.dataclass(kw_only=True)
class Port(NbObject):
    """A logical port on a network; ``chassis`` is where it is bound ("" = nowhere)."""

    kind: ClassVar[str] = "port"
    references: ClassVar[dict[str, str]] = {"network_id": "network"}

    network_id: str = ""
    mac: str = ""
    ips: list[str] = dataclasses.field(default_factory=list)
    chassis: str = ""
    device_owner: str = ""
    port_security: bool = True

    def validate_kind(self) -> None:
        if not _ID_RE.fullmatch(self.network_id):
            raise self.fail("network_id", "must be the id of a network")
        self.mac = self.mac.strip().lower()
        if not _MAC_RE.fullmatch(self.mac):
            raise self.fail("mac", "must be six hex octets separated by ':' (like fa:16:3e:12:34:56)")
        if int(self.mac[:2], 16) & 1:
            raise self.fail("mac", "must be a unicast MAC address (first octet even)")
        if self.mac == "00:00:00:00:00:00":
            raise self.fail("mac", "must not be all zeros")
        ips = [_canonical_ip(self, "ips", ip, unicast=True) for ip in self.ips]
        duplicates = sorted({ip for ip in ips if ips.count(ip) > 1})
        if duplicates:
            raise self.fail("ips", f"lists {duplicates[0]} more than once")
        self.ips = ips
        if self.chassis and not _ID_RE.fullmatch(self.chassis):
            raise self.fail("chassis", "must be a chassis name or empty")
        if len(self.device_owner) > MAX_NAME_LEN:
            raise self.fail("device_owner", f"must be at most {MAX_NAME_LEN} characters")

    def unique_values(self) -> list[tuple[str, str]]:
        where = f" on network {self.network_id}"
        return [("mac", self.mac + where)] + [("ip", ip + where) for ip in self.ips]


def _canonical_ip(obj: NbObject, field: str, text: str, unicast: bool = False) -> str:
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise ValidationError(
            f"{obj.label()}: {field} {text!r} must be an IPv4 or IPv6 address (no prefix length)"
        ) from None
    if unicast and (address.is_multicast or address.is_unspecified):
        raise ValidationError(f"{obj.label()}: {field} {text!r} must be a unicast address")
    return str(address)


KINDS: Mapping[str, type[NbObject]] = {cls.kind: cls for cls in (Chassis, Network, Port)}


def kind_class(kind: str | type[NbObject]) -> type[NbObject]:
    """The class of a kind given by name (or already a class), or a clear error."""
    if isinstance(kind, type) and issubclass(kind, NbObject) and kind.kind in KINDS:
        return kind
    try:
        return KINDS[str(kind)]
    except KeyError:
        raise ValidationError(f"unknown kind {kind!r}; known kinds: {', '.join(sorted(KINDS))}") from None


def from_dict(kind: str | type[NbObject], data: Any) -> NbObject:
    """Build and validate an object from decoded JSON; missing fields take defaults."""
    cls = kind_class(kind)
    label = f"{cls.kind} {data.get('id', '(no id)') if isinstance(data, Mapping) else '(?)'}"
    if not isinstance(data, Mapping):
        raise ValidationError(f"{label}: record must be a JSON object, not {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValidationError(
            f"{label}: unknown field(s) {', '.join(map(str, unknown))}; "
            f"a {cls.kind} has {', '.join(fields)}"
        )
    for name, value in data.items():
        what, test = _TYPE_TESTS[str(fields[name].type)]
        if not test(value):
            raise ValidationError(f"{label}: {name} {value!r} must be {what}")
    obj = cls(**{k: (list(v) if isinstance(v, list) else dict(v) if isinstance(v, dict) else v)
                 for k, v in data.items()})
    obj.validate()
    return obj
