"""The DHCP option table (hwflow.util.dhcp_options): every option's value, in any spelling the type takes, comes
out in one spelling that encodes to the bytes its RFC says (decoded here by an independent reader) and decodes
back to that spelling; a malformed value or an unknown name is a ValueError saying what to write."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwflow.util import dhcp_options as do

IPV4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
LABEL = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
DOMAIN = st.lists(LABEL, min_size=1, max_size=4).map(".".join)


@st.composite
def routes(draw: st.DrawFn) -> str:
    nets = draw(st.lists(st.tuples(IPV4, st.integers(0, 32)), min_size=1, max_size=4))
    return ",".join(f"{ipaddress.IPv4Network((a, n), strict=False)},{draw(IPV4)}" for a, n in nets)


def values(kind: str, name: str) -> st.SearchStrategy[str]:
    """Well-formed values of a type, as a user may space them."""
    spaced = st.sampled_from([",", ", ", " ,"])
    if kind == do.ADDRESS:
        return IPV4
    if kind == do.ADDRESSES:
        return st.tuples(st.lists(IPV4, min_size=1, max_size=8), spaced).map(lambda t: t[1].join(t[0]))
    if kind in (do.U8, do.U16, do.U32):
        high = {do.U8: 255, do.U16: 65535, do.U32: 2**32 - 1}[kind]
        return st.integers(68 if name == "mtu" else 0, high).map(str)
    if kind == do.DOMAINS:
        return st.lists(DOMAIN, min_size=1, max_size=4).map(",".join)
    if kind == do.ROUTES:
        return routes()
    return st.text(st.characters(codec="utf-8", categories=("L", "N", "P"), include_characters=" "), min_size=1,
                   max_size=60)


def decoded(kind: str, data: bytes) -> str:
    """The value text of an option's bytes, read as RFC 2132/3397/3442 say (not with the code under test)."""
    if kind in (do.ADDRESS, do.ADDRESSES):
        assert len(data) % 4 == 0 and (kind == do.ADDRESSES or len(data) == 4)
        return ",".join(str(ipaddress.IPv4Address(data[i:i + 4])) for i in range(0, len(data), 4))
    if kind in (do.U8, do.U16, do.U32):
        assert len(data) == {do.U8: 1, do.U16: 2, do.U32: 4}[kind]
        return str(int.from_bytes(data, "big"))
    if kind == do.DOMAINS:
        names, labels, i = [], [], 0
        while i < len(data):
            length, i = data[i], i + 1
            if length == 0:
                names.append(".".join(labels))
                labels = []
            else:
                labels.append(data[i:i + length].decode())
                i += length
        assert not labels
        return ",".join(names)
    if kind == do.ROUTES:
        out, i = [], 0
        while i < len(data):
            width = data[i]
            significant = (width + 7) // 8
            prefix = data[i + 1:i + 1 + significant].ljust(4, b"\0")
            router = data[i + 1 + significant:i + 5 + significant]
            out.append(f"{ipaddress.IPv4Address(prefix)}/{width},{ipaddress.IPv4Address(router)}")
            i += 5 + significant
        return ",".join(out)
    return data.decode()


@given(st.data())
def test_every_named_option_encodes_its_canonical_value_to_what_its_rfc_decodes_back(data: st.DataObject) -> None:
    option = data.draw(st.sampled_from(sorted(do.BY_NAME.values(), key=lambda o: o.name)))
    value = data.draw(values(option.type, option.name))
    text = do.canonical(option, value)
    assert do.canonical(option, text) == text  # one spelling
    assert decoded(option.type, do.encode(option, text)) == text


@given(code=st.integers(1, 254).filter(lambda c: c not in do.BY_CODE and c not in do.EXCHANGE_CODES),
       addresses=st.lists(IPV4, min_size=1, max_size=5), text=st.text(min_size=1, max_size=40))
def test_an_unnamed_number_is_addresses_when_every_item_is_one_else_text(code, addresses, text) -> None:
    option = do.lookup(str(code))
    assert (option.code, option.name) == (code, str(code))
    assert decoded(do.ADDRESSES, do.encode(option, do.canonical(option, " , ".join(addresses)))) == ",".join(addresses)
    if text.isprintable() and len(text.encode()) <= 255:
        assert do.encode(option, do.canonical(option, text)) == (
            b"".join(ipaddress.IPv4Address(a.strip()).packed for a in text.split(","))
            if do.value_type(option, text) == do.ADDRESSES else text.encode())


@pytest.mark.parametrize(("name", "expected"), [
    ("router", 3), ("Router", 3), (" dns-server ", 6), ("mtu", 26), ("26", 26), ("026", 26),
    ("classless-static-route", 121), ("150", 150), ("200", 200), ("server-ip-address", None)])
def test_names_and_numbers_look_up_the_table(name: str, expected: int | None) -> None:
    assert do.lookup(name).code == expected
    assert do.lookup(name) == do.BY_CODE.get(expected or -1, do.lookup(name))  # a number the table names is that name


@pytest.mark.parametrize(("name", "message"), [
    ("routers", "neither an option name"), ("0", "neither"), ("255", "neither"), ("-3", "neither"), ("", "neither"),
    ("tag:foo,router", "neither"), ("٣", "neither"),
    ("53", "DHCP exchange itself"), ("54", "DHCP exchange itself"), ("51", "DHCP exchange itself"),
    ("55", "DHCP exchange itself")])
def test_unknown_names_and_the_exchanges_own_options_are_refused(name: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        do.lookup(name)


@pytest.mark.parametrize(("name", "value", "message"), [
    ("router", "10.0.0.1,", "IPv4 addresses separated by ','"),
    ("dns-server", "2001:db8::1", "IPv4 addresses"),
    ("netmask", "10.0.0.1,10.0.0.2", "one IPv4 address"),
    ("mtu", "1400.5", "whole number 68..65535"), ("mtu", "67", "whole number 68..65535"),
    ("mtu", "65536", "68..65535"), ("default-ttl", "256", "0..255"), ("arp-timeout", "-1", "0..4294967295"),
    ("classless-static-route", "10.9.0.1/16,10.0.0.254", "no host bits"),
    ("classless-static-route", "10.9.0.0/16", "DEST/LEN,ROUTER pairs"),
    ("domain-search", "example..org", "domain names"), ("domain-search", "-bad.org", "domain names"),
    ("domain-name", "line\nbreak", "printable text"), ("bootfile-name", "x" * 256, "at most 255 characters")])
def test_malformed_values_say_what_to_write(name: str, value: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        do.canonical(do.lookup(name), value)


def test_an_empty_value_stays_empty_for_any_option() -> None:
    assert all(do.canonical(o, "") == "" for o in do.BY_NAME.values())
