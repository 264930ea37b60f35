"""The etcd driver's side of "the database closed to strangers": URLs, credentials, and what a refusal says.

Real TLS, users and roles are tests/functional/test_etcd_tls.py; here the parts that need no etcd: parsing
(hypothesis over URLs), the checks made before any connection, and the mapping of etcd's and the TLS
library's refusals to one-line errors (hypothesis over what a server may answer).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hwflow.cli.main import main
from hwflow.conf import new_conf
from hwflow.db import NbApi
from hwflow.db.etcd import Credentials, EtcdDriver, b64, parse_url, refusal, tls_refusal
from hwflow.model import Chassis, DatabaseUnavailable, Network
from hwflow.model.errors import AccessDenied

WHERE = "10.0.0.1:2379"
PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"

hosts = st.one_of(
    st.from_regex(r"[a-z][a-z0-9.-]{0,20}", fullmatch=True),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: f"[{ip}]"),
)
prefixes = st.lists(st.from_regex(r"[A-Za-z0-9_-]{1,8}", fullmatch=True), max_size=3).map("/".join)


@given(st.sampled_from(["etcd", "etcds"]), st.lists(st.tuples(hosts, st.integers(1, 65535)), min_size=1,
                                                    max_size=4), prefixes)
def test_a_url_gives_back_its_endpoints_prefix_and_scheme(scheme, endpoints, prefix):
    url = f"{scheme}://" + ",".join(f"{host}:{port}" for host, port in endpoints) + (f"/{prefix}" if prefix else "")
    parsed = parse_url(url)
    assert parsed.endpoints == [(host.strip("[]"), port) for host, port in endpoints]
    assert parsed.prefix == (prefix or "hwflow")
    assert parsed.tls == (scheme == "etcds")


@given(st.text(max_size=200))
def test_any_url_parses_or_is_refused_in_one_line(url):
    try:
        parsed = parse_url(url)
    except DatabaseUnavailable as exc:
        assert "\n" not in str(exc) and "etcd://HOST:PORT" in str(exc) and "etcds://" in str(exc)
    else:
        assert url.startswith(("etcd://", "etcds://")) and parsed.endpoints


@pytest.mark.parametrize("url", ["etcds://", "etcds://host", "etcdss://h:1", "https://h:1", "etcds://h:99999"])
def test_bad_tls_urls_say_what_to_write(url):
    with pytest.raises(DatabaseUnavailable, match=r"bad etcd database URL .*etcds:// for TLS"):
        parse_url(url)


# --- credentials, checked before any connection --------------------------------------------------------


def pem(tmp_path: Path, name: str, text: str = PEM) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_good_credentials_pass_and_reach_the_clients(tmp_path):
    creds = Credentials(pem(tmp_path, "ca"), pem(tmp_path, "crt"), pem(tmp_path, "key"), "host-a", "pw")
    creds.check(tls=True)
    driver = EtcdDriver([("127.0.0.1", 2379)], tls=True, credentials=creds)
    session = driver._clients[0].session
    assert driver._clients[0].base_url == "https://127.0.0.1:2379"
    assert session.verify == creds.ca_file and session.cert == (creds.cert_file, creds.key_file)
    assert not session.trust_env  # REQUESTS_CA_BUNDLE must not override [database] ca_file
    assert "pw" not in repr(creds)


@pytest.mark.parametrize(("creds", "tls", "message"), [
    (dict(cert_file="crt"), True, r"\[database\] cert_file and key_file go together"),
    (dict(key_file="key"), True, r"cert_file and key_file go together"),
    (dict(ca_file="ca"), False, r"\[database\] ca_file set for a plain etcd:// URL: use etcds://"),
    (dict(username="host-a"), True, r"username and password go together"),
    (dict(password="pw"), False, r"username and password go together"),
    (dict(ca_file="missing"), True, r"\[database\] ca_file .*/missing: No such file or directory; point it at"),
    (dict(cert_file="junk", key_file="key"), True, r"\[database\] cert_file .*/junk is not a PEM file"),
])
def test_bad_credentials_are_refused_before_any_connection(tmp_path, creds, tls, message):
    files = {"crt": pem(tmp_path, "crt"), "key": pem(tmp_path, "key"), "ca": pem(tmp_path, "ca"),
             "junk": pem(tmp_path, "junk", "not a certificate"), "missing": str(tmp_path / "missing")}
    resolved = {k: files.get(v, v) if k.endswith("_file") else v for k, v in creds.items()}
    with pytest.raises(DatabaseUnavailable, match=message) as refused:
        Credentials(**resolved).check(tls)
    assert "\n" not in str(refused.value)


def test_the_config_reaches_the_driver(tmp_path):
    conf_file = tmp_path / "hwflow.conf"
    conf_file.write_text(f"[database]\nurl = etcds://127.0.0.1:1\nca_file = {pem(tmp_path, 'ca')}\n"
                         f"cert_file = {pem(tmp_path, 'crt')}\nkey_file = {pem(tmp_path, 'key')}\n"
                         "username = host-a\npassword = secret\n")
    conf = new_conf(["--config-file", str(conf_file)])
    with NbApi.from_url(conf.database.url, conf) as api:
        assert isinstance(api.driver, EtcdDriver)
        assert api.driver.credentials == Credentials.from_conf(conf)
        assert api.driver.credentials.username == "host-a"


# --- refusals ------------------------------------------------------------------------------------------


def gateway(message: str, code: int) -> str:
    return json.dumps({"error": message, "message": message, "code": code})


@pytest.mark.parametrize(("detail", "error", "message"), [
    (gateway("etcdserver: permission denied", 7), AccessDenied,
     r"refused a write of network/n1 to user 'host-a': permission denied; .*hwflow-admin"),
    (gateway("etcdserver: user name is empty", 3), AccessDenied,
     r"has auth enabled and refused a write of network/n1 from a client with no user: set \[database\] username"),
    (gateway("etcdserver: authentication failed, invalid user ID or password", 3), AccessDenied,
     r"refused user 'host-a': wrong username or password"),
    ("CommonName of client sending a request against gateway will be ignored and not used as expected\n",
     AccessDenied, r"refused the client certificate \[database\] cert_file c.crt: it has a Common Name"),
    ("Client sent an HTTP request to an HTTPS server.\n", DatabaseUnavailable, rf"speaks TLS: use etcds://{WHERE}"),
    (gateway("etcdserver: too many operations in txn request", 3), DatabaseUnavailable,
     r"refused a write of network/n1: etcdserver: too many operations"),
])
def test_etcd_refusals_name_the_credential_the_keys_and_the_fix(detail, error, message):
    exc = refusal(detail, Credentials(cert_file="c.crt", username="host-a", password="x"), WHERE,
                  "a write of network/n1")
    assert type(exc) is error
    assert exc.args[0].startswith(f"etcd at {WHERE} ")
    assert re.search(message, str(exc)), str(exc)


@given(st.one_of(st.text(max_size=300), st.builds(gateway, st.text(max_size=300), st.integers(0, 20))),
       st.sampled_from(["", "host-a"]))
def test_any_refusal_is_one_line_naming_the_server(detail, user):
    exc = refusal(detail, Credentials(username=user, password="x" if user else ""), WHERE, "a read of port/p")
    assert isinstance(exc, DatabaseUnavailable)
    assert "\n" not in str(exc) and WHERE in str(exc) and len(str(exc)) < 800


SSL = "HTTPSConnectionPool(host='10.0.0.1', port=2379): Max retries exceeded (Caused by SSLError(SSLError(1, "


@pytest.mark.parametrize(("detail", "cert", "message"), [
    (SSL + "'[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed: unable to get local issuer certificate "
     "(_ssl.c:1006)')))", "c.crt",
     r"server certificate at .* is not trusted \(\[SSL: CERTIFICATE_VERIFY_FAILED\] certificate verify failed: "
     r"unable to get local issuer certificate\): set \[database\] ca_file to the CA that signed it \(now ca.crt\)"),
    (SSL + "'[SSL: TLSV1_ALERT_UNKNOWN_CA] tlsv1 alert unknown ca (_ssl.c:2580)')))", "c.crt",
     r"refused the client certificate \[database\] cert_file c.crt \(\[SSL: TLSV1_ALERT_UNKNOWN_CA\] tlsv1 alert "
     r"unknown ca\): it must be signed by a CA in etcd's --trusted-ca-file"),
    (SSL + "'[SSL: TLSV13_ALERT_CERTIFICATE_REQUIRED] tlsv13 alert certificate required (_ssl.c:2580)')))", "",
     r"requires a client certificate .*set \[database\] cert_file and key_file"),
    (SSL + "'[SSL: WRONG_VERSION_NUMBER] wrong version number (_ssl.c:1006)')))", "",
     rf"does not speak TLS: use etcd://{WHERE}"),
])
def test_tls_refusals_say_which_file_to_change(detail, cert, message):
    exc = tls_refusal(detail, Credentials(ca_file="ca.crt", cert_file=cert, key_file=cert and "c.key"), WHERE)
    assert exc is not None and re.search(message, str(exc)), exc


@given(st.text(max_size=300))
def test_a_connection_error_is_tls_or_not_never_a_crash(detail):
    exc = tls_refusal(detail, Credentials(), WHERE)
    if exc is None:
        assert not any(word in detail.lower() for word in ("ssl", "certificate", "alert", "wrong version number"))
    else:
        assert "\n" not in str(exc) and WHERE in str(exc)


def test_a_refused_request_names_the_keys_it_writes_else_reads():
    driver = EtcdDriver([("127.0.0.1", 1)], prefix="site")
    txn = {"compare": [], "success": [
        {"request_put": {"key": b64(driver.full_key("port", f"p{i}"))}} for i in range(5)
    ] + [{"request_range": {"key": b64(driver.full_key("network", "n"))}}]}
    assert driver._asked("/kv/txn", txn) == "a write of port/p0, port/p1, port/p2 and 2 more"
    assert driver._asked("/kv/range", {"key": b64(driver.full_key("network", "n"))}) == "a read of network/n"
    assert driver._asked("/kv/put", {"key": b64(driver.full_key("_alive", "h"))}) == "a write of _alive/h"
    assert driver._asked("/lease/grant", {"TTL": 3}) == "a request (/lease/grant)"


# --- what an agent writes ------------------------------------------------------------------------------


def test_registering_a_chassis_writes_its_record_and_nothing_every_chassis_shares(tmp_path):
    """An agent's etcd role grants it its chassis record and liveness key only: a counter would be shared."""
    with NbApi.from_url(f"sqlite:///{tmp_path}/nb.sqlite") as api:
        before = api.driver.current_revision()
        chassis = api.put_chassis(Chassis(id="host-a", tunnel_ip="192.0.2.1"))
        api.heartbeat("host-a", 30)
        assert chassis.unique_key == 0
        assert api.driver.get("_counter", "chassis") is None
        written = {(e.table, e.key) for e in api.driver.watch(before + 1, timeout=0.5)}
        assert ("chassis", "host-a") in written <= {("chassis", "host-a"), ("_alive", "host-a")}  # SQLite's mark
        assert api.alive_chassis() == {"host-a"}  # is no watched record
        assert api.create(Network(id="n1", vni=7)).unique_key == 1  # other kinds are numbered as before


# --- hwflow db auth, where no etcd is needed to refuse -----------------------------------------------------


@pytest.mark.parametrize(("argv", "message"), [
    (["setup", "--database", "sqlite:///{tmp}/nb.sqlite"],
     "hwflow db: users and roles are etcd's: give --database etcd://HOST:PORT or etcds://HOST:PORT"),
    (["add-chassis", "a/b", "--database", "etcd://127.0.0.1:1"],
     "hwflow db: chassis name 'a/b' cannot be an etcd user: give the agent's [agent] chassis_name"),
    (["add-chassis", "", "--database", "etcd://127.0.0.1:1"], "hwflow db: chassis name '' cannot be an etcd user"),
])
def test_db_auth_refuses_in_one_line(tmp_path, capsys, argv, message):
    assert main(["db", "auth", *(a.format(tmp=tmp_path) for a in argv)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1
