"""DHCPv4 options by the names dnsmasq gives them (Neutron's ``extra_dhcp_opts``): the one table of names,
codes and value types, and a value's text and its bytes on the wire (RFC 2132, 3397, 3442).

The model checks a port's extra options with it (``hwflow.model.objects.Port``) and the agent's DHCP
responder encodes them with it (``hwflow.agent.dhcp``); the model must not import the agent, hence here.

A value is text, as Neutron and dnsmasq write it: addresses, domains and routes comma-separated
("10.0.0.1,10.0.0.2"; classless routes as "DEST/LEN,ROUTER,DEST/LEN,ROUTER", the routers of dnsmasq's
``classless-static-route``), numbers in decimal, strings as they are. ``canonical`` turns what a user wrote
into one spelling, so that equal values compare equal and encode alike, or raises ValueError saying what to
write. An option given by a number the table does not name is sent as dnsmasq guesses its type: IPv4
addresses when every item is one, else the text's bytes. ``server-ip-address`` is no option but the reply's
``siaddr`` (the next server, dnsmasq's name for it); its code is None. The options a DHCP exchange itself
is made of (message type, server identifier, lease times...) are the responder's, never a port's.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
from collections.abc import Iterable

ADDRESS = "address"
ADDRESSES = "addresses"
STRING = "string"
U8, U16, U32 = "u8", "u16", "u32"
DOMAINS = "domains"
ROUTES = "routes"
# What each type's value must look like, as an error message says it.
_WHAT = {
    ADDRESS: "one IPv4 address (like 10.0.0.1)",
    ADDRESSES: "IPv4 addresses separated by ',' (like 10.0.0.1,10.0.0.2)",
    STRING: "printable text of at most 255 bytes",
    DOMAINS: "domain names separated by ',' (like example.org,lab.example.org)",
    ROUTES: "DEST/LEN,ROUTER pairs separated by ',' (like 10.9.0.0/16,10.0.0.254), no host bits in DEST",
}
_LIMITS = {U8: 2**8 - 1, U16: 2**16 - 1, U32: 2**32 - 1}
_MINIMUM = {"mtu": 68}  # RFC 2132 9.3: the smallest MTU option 26 may carry
MAX_VALUE_LEN = 255  # Neutron's limit on opt_value (DHCP_OPT_VALUE_MAX_LEN)
_LABEL_RE = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


@dataclasses.dataclass(frozen=True)
class DhcpOption:
    """One option: its dnsmasq name, its code (None: ``server-ip-address``, the header's siaddr), its type."""

    name: str
    code: int | None
    type: str


SERVER_IP_ADDRESS = "server-ip-address"
TFTP_SERVER, BOOTFILE_NAME = 66, 67  # dnsmasq puts these in the header's sname and file unless asked for
_TABLE = (
    (1, "netmask", ADDRESS), (3, "router", ADDRESSES), (6, "dns-server", ADDRESSES), (7, "log-server", ADDRESSES),
    (9, "lpr-server", ADDRESSES), (13, "boot-file-size", U16), (15, "domain-name", STRING),
    (16, "swap-server", ADDRESS), (17, "root-path", STRING), (18, "extension-path", STRING),
    (19, "ip-forward-enable", U8), (20, "non-local-source-routing", U8), (22, "max-datagram-reassembly", U16),
    (23, "default-ttl", U8), (26, "mtu", U16), (27, "all-subnets-local", U8), (28, "broadcast", ADDRESS),
    (31, "router-discovery", U8), (32, "router-solicitation", ADDRESS), (35, "arp-timeout", U32),
    (37, "tcp-ttl", U8), (38, "tcp-keepalive", U32), (40, "nis-domain", STRING), (41, "nis-server", ADDRESSES),
    (42, "ntp-server", ADDRESSES), (44, "netbios-ns", ADDRESSES), (45, "netbios-dd", ADDRESSES),
    (46, "netbios-nodetype", U8), (47, "netbios-scope", STRING), (48, "x-windows-fs", ADDRESSES),
    (49, "x-windows-dm", ADDRESSES), (64, "nis+-domain", STRING), (65, "nis+-server", ADDRESSES),
    (TFTP_SERVER, "tftp-server", STRING), (BOOTFILE_NAME, "bootfile-name", STRING),
    (68, "mobile-ip-home", ADDRESSES), (69, "smtp-server", ADDRESSES), (70, "pop3-server", ADDRESSES),
    (71, "nntp-server", ADDRESSES), (74, "irc-server", ADDRESSES), (119, "domain-search", DOMAINS),
    (121, "classless-static-route", ROUTES), (150, "tftp-server-address", ADDRESSES),
    (None, SERVER_IP_ADDRESS, ADDRESS),
)
BY_NAME: dict[str, DhcpOption] = {name: DhcpOption(name, code, kind) for code, name, kind in _TABLE}
BY_CODE: dict[int, DhcpOption] = {o.code: o for o in BY_NAME.values() if o.code is not None}
# Requested address, lease time, overload, message type, server id, parameter list, max size, T1, T2, client id.
EXCHANGE_CODES = frozenset({50, 51, 52, 53, 54, 55, 57, 58, 59, 61})


def lookup(name: str) -> DhcpOption:
    """The option a name or a number 1..254 stands for; ValueError for any other, or for one of the exchange's."""
    text = name.strip().lower()
    if text in BY_NAME:
        return BY_NAME[text]
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 254:
        raise ValueError("is neither an option name hwflow knows (like router, dns-server, domain-name, mtu, "
                         "classless-static-route, ntp-server, bootfile-name) nor an option number 1..254")
    code = int(text)
    if code in EXCHANGE_CODES:
        raise ValueError("belongs to the DHCP exchange itself: hwflow's responder sets it")
    return BY_CODE.get(code) or DhcpOption(str(code), code, "")  # a number the table names is that name


def value_type(option: DhcpOption, value: str) -> str:
    """The type a value is read as: the table's, else dnsmasq's guess (addresses if every item is one)."""
    if option.type:
        return option.type
    try:
        _addresses(value)
    except ValueError:
        return STRING
    return ADDRESSES


def canonical(option: DhcpOption, value: str) -> str:
    """``value`` in its one spelling ("" stays "": the option is not sent); ValueError says what to write."""
    if value == "":
        return value
    if len(value) > MAX_VALUE_LEN:
        raise ValueError(f"must be at most {MAX_VALUE_LEN} characters")
    kind = value_type(option, value)
    if kind in _LIMITS:
        low, high, text = _MINIMUM.get(option.name, 0), _LIMITS[kind], value.strip()
        if not (text.isascii() and text.isdigit()) or not low <= int(text) <= high:
            raise ValueError(f"must be a whole number {low}..{high}")
        return str(int(text))
    try:
        return _canonical(kind, value.strip() if kind != STRING else value)
    except ValueError:
        raise ValueError(f"must be {_WHAT[kind]}") from None


def _canonical(kind: str, value: str) -> str:
    if kind == ADDRESS:
        return str(ipaddress.IPv4Address(value))
    if kind == ADDRESSES:
        return ",".join(str(a) for a in _addresses(value))
    if kind == DOMAINS:
        return ",".join(_domain(d) for d in value.split(","))
    if kind == ROUTES:
        return ",".join(f"{net},{router}" for net, router in _routes(value))
    if not value.isprintable() or len(value.encode()) > MAX_VALUE_LEN:
        raise ValueError(value)
    return value


def encode(option: DhcpOption, value: str) -> bytes:
    """The option's bytes on the wire for a canonical, non-empty ``value``."""
    kind = value_type(option, value)
    if kind in (ADDRESS, ADDRESSES):
        return b"".join(a.packed for a in _addresses(value))
    if kind in _LIMITS:
        return int(value).to_bytes({U8: 1, U16: 2, U32: 4}[kind], "big")
    if kind == DOMAINS:  # RFC 3397: each name in DNS wire format, uncompressed
        return b"".join(b"".join(bytes((len(label),)) + label.encode() for label in d.split(".")) + b"\0"
                        for d in value.split(","))
    if kind == ROUTES:
        return classless_routes(_routes(value))
    return value.encode()


def classless_routes(routes: Iterable[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address]]) -> bytes:
    """Option 121 (RFC 3442): each route as its prefix length, the prefix's significant octets, the router."""
    return b"".join(bytes((net.prefixlen,)) + net.network_address.packed[:(net.prefixlen + 7) // 8] + router.packed
                    for net, router in routes)


def _addresses(value: str) -> list[ipaddress.IPv4Address]:
    return [ipaddress.IPv4Address(item.strip()) for item in value.split(",")]


def _domain(text: str) -> str:
    name = text.strip().rstrip(".")
    if not name or len(name) > 253 or not all(_LABEL_RE.fullmatch(label) for label in name.split(".")):
        raise ValueError(text)
    return name.lower()


def _routes(value: str) -> list[tuple[ipaddress.IPv4Network, ipaddress.IPv4Address]]:
    items = [item.strip() for item in value.split(",")]
    if len(items) % 2:
        raise ValueError(value)
    return [(ipaddress.IPv4Network(items[i], strict=True), ipaddress.IPv4Address(items[i + 1]))
            for i in range(0, len(items), 2)]
