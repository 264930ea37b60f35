"""The etcd driver: the northbound database on an etcd v3 server or cluster.

Talks to etcd's JSON gateway through etcd3gw (plain HTTP, no gRPC stack in
the agent). Records live under ``/PREFIX/TABLE/KEY``; etcd's own revisions
are the driver's revisions, so compare-and-swap is an etcd transaction that
compares ``mod_revision``, and a watch is an etcd watch from a revision with
``prev_kv`` (a delete carries the last value, as the NB API expects).

A watch is a long-lived HTTP stream read by one thread per driver. Callers
pull from it (``watch(from_revision, timeout)``); when they ask for a
revision other than the one the stream stands at, or the stream broke
(etcd restarted, a member died), it is reopened from the revision asked
for, so nothing is missed or repeated. When etcd has compacted past that
revision the stream is cancelled with the compact revision, which becomes a
Compacted error: the caller resyncs.

With several endpoints (``etcd://A:2379,B:2379,C:2379``) a request that
cannot reach one member is retried on the next.

``etcds://`` speaks TLS, with a client certificate from ``[database]
cert_file``/``key_file`` when etcd runs with ``--client-cert-auth``. When
etcd has auth enabled the driver logs in as ``[database] username`` and
sends the token with every request (the watch stream too), logging in again
when etcd forgets it (its ``--auth-token-ttl`` lapsed, or it restarted).
etcd's JSON gateway does not take the certificate's Common Name as the user
(it refuses a certificate that has one): the certificate says the client may
talk to the cluster at all, the user what it may touch. A refusal (a
certificate, a user, a permission) is an AccessDenied naming the credential,
the keys asked for, and what to change.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_errors
from oslo_config import cfg

from hwflow.db.base import Compare, Delete, Driver, Event, Op, Put, Record
from hwflow.model.errors import AccessDenied, Compacted, Conflict, DatabaseUnavailable
from hwflow.model.objects import shown

LOG = logging.getLogger(__name__)

SCHEMES = {"etcd://": "http", "etcds://": "https"}  # URL scheme -> what the gateway is spoken over
DEFAULT_PREFIX = "hwflow"
REQUEST_TIMEOUT = 10.0  # seconds for one request; a dead member must not hang the agent
RANGE_PAGE = 5000  # records per range request, so a big table is read in bounded responses
# etcd refuses a transaction with more compares, or more operations, than its --max-txn-ops (128 by
# default), and a request over its --max-request-bytes (1.5 MiB by default; this leaves room for framing).
MAX_TXN_OPS = 128
MAX_TXN_BYTES = 1_000_000
# get_many reads a whole table when asked for at least a quarter as many of its keys as it holds.
WHOLE_TABLE_FACTOR = 4
UNAUTHENTICATED = 16  # gRPC status etcd answers a token it does not know (lapsed, or etcd restarted) with
SHOWN_KEYS = 3  # keys of a refused request named in its error

T = TypeVar("T")


def _detail(exc: etcd_errors.Etcd3Exception) -> str:
    """What etcd3gw knows of a failure: the reply's body, or the connection error's text."""
    return str(exc.detail_text or exc)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def unb64(text: str) -> bytes:
    return base64.b64decode(text)


def prefix_end(prefix: str) -> str:
    """The key just past every key that starts with ``prefix`` (etcd's prefix range)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


class EtcdUrl(NamedTuple):
    endpoints: list[tuple[str, int]]
    prefix: str
    tls: bool


def parse_url(url: str) -> EtcdUrl:
    """``etcd[s]://HOST:PORT[,HOST:PORT...][/PREFIX]`` -> endpoints, key prefix, and whether to speak TLS."""
    scheme = next((s for s in SCHEMES if url.startswith(s)), "")
    hosts, _, prefix = url[len(scheme):].partition("/") if scheme else ("", "", "")
    endpoints = []
    for item in hosts.split(","):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise DatabaseUnavailable(
                f"bad etcd database URL {shown(url)}: use etcd://HOST:PORT[,HOST:PORT...] "
                "(e.g. etcd://127.0.0.1:2379), or etcds:// for TLS, optionally followed by /PREFIX"
            )
        endpoints.append((host.strip("[]"), int(port)))
    return EtcdUrl(endpoints, prefix.strip("/") or DEFAULT_PREFIX, SCHEMES[scheme] == "https")


@dataclasses.dataclass(frozen=True)
class Credentials:
    """Who the driver is to etcd: TLS files (etcds://) and an etcd user (when etcd has auth enabled)."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    username: str = ""
    password: str = dataclasses.field(default="", repr=False)

    @classmethod
    def from_conf(cls, conf: cfg.ConfigOpts) -> Credentials:
        db = conf.database
        return cls(db.ca_file, db.cert_file, db.key_file, db.username, db.password)

    @property
    def who(self) -> str:
        """The user as a message names it."""
        return repr(self.username) if self.username else "(none: no [database] username)"

    def check(self, tls: bool) -> None:
        """Refuse what cannot work before any connection: a file missing, half a pair, TLS files on etcd://."""
        files = {"ca_file": self.ca_file, "cert_file": self.cert_file, "key_file": self.key_file}
        if not tls and any(files.values()):
            named = ", ".join(name for name, path in files.items() if path)
            raise DatabaseUnavailable(f"[database] {named} set for a plain etcd:// URL: use etcds://HOST:PORT to "
                                      "speak TLS, or unset them")
        if bool(self.cert_file) != bool(self.key_file):
            raise DatabaseUnavailable("[database] cert_file and key_file go together (the client certificate and "
                                      "its private key): set both, or neither")
        if bool(self.username) != bool(self.password):
            raise DatabaseUnavailable("[database] username and password go together: set both (`hwflow db auth "
                                      "add-chassis` prints them), or neither for etcd without auth")
        for name, path in files.items():
            if path:
                _check_pem(name, path)


def _check_pem(option: str, path: str) -> None:
    """A PEM file that can be read: else one line naming the option, the path and the cause."""
    try:
        with open(path, "rb") as f:
            head = f.read(1 << 16)
    except OSError as exc:
        raise DatabaseUnavailable(f"[database] {option} {path}: {exc.strerror}; point it at a readable PEM "
                                  "file") from None
    if b"-----BEGIN " not in head:
        raise DatabaseUnavailable(f"[database] {option} {path} is not a PEM file (no -----BEGIN line); give "
                                  "the certificate or key in PEM form")


def _etcd_message(detail: str) -> str:
    """etcd's own words in a refusal, on one line: the JSON gateway's "message" (or "error"), else the text."""
    try:
        reply = json.loads(detail)
    except (ValueError, RecursionError):
        reply = None
    if isinstance(reply, dict):
        detail = str(reply.get("message") or reply.get("error") or detail)
    return " ".join(detail.split())[:200]


def _grpc_code(detail: str) -> int:
    """The gRPC status code of a refusal the JSON gateway wrote (0 when it wrote none)."""
    with contextlib.suppress(ValueError, TypeError, AttributeError, RecursionError):
        return int(json.loads(detail).get("code", 0))
    return 0


def refusal(detail: str, credentials: Credentials, where: str, asked: str) -> DatabaseUnavailable:
    """The error for a request etcd answered but refused: one line, naming the credential, the keys, the fix."""
    message = _etcd_message(detail)
    low = message.lower()
    if "permission denied" in low:
        return AccessDenied(
            f"etcd at {where} refused {asked} to user {credentials.who}: permission denied; that user's role "
            "does not grant it (a chassis's may write only its own chassis record and liveness key), so act "
            "as a user whose role does ([database] username, e.g. hwflow-admin)")
    if "user name is empty" in low:
        return AccessDenied(
            f"etcd at {where} has auth enabled and refused {asked} from a client with no user: set [database] "
            "username and password (`hwflow db auth setup` and `add-chassis` print them)")
    if "authentication failed" in low or "invalid user" in low:
        return AccessDenied(f"etcd at {where} refused user {credentials.who}: wrong username or password; "
                            "check [database] username and password")
    if "commonname" in low:
        return AccessDenied(
            f"etcd at {where} refused the client certificate [database] cert_file {credentials.cert_file}: it "
            "has a Common Name, which etcd's JSON gateway (what hwflow speaks) refuses under --client-cert-auth; "
            "issue it with no CN in its subject (who the client is, is [database] username)")
    if "http request to an https server" in low:
        return DatabaseUnavailable(f"etcd at {where} speaks TLS: use etcds://{where} (with [database] ca_file, "
                                   "cert_file and key_file)")
    return DatabaseUnavailable(f"etcd at {where} refused {asked}: {message}")


def tls_refusal(detail: str, credentials: Credentials, where: str) -> DatabaseUnavailable | None:
    """The error for a connection TLS failed (no retry on another member helps), or None if it was not TLS."""
    low = detail.lower()
    if "certificate verify failed" in low:
        return AccessDenied(
            f"etcd's server certificate at {where} is not trusted ({_ssl_reason(detail)}): set [database] ca_file "
            f"to the CA that signed it (now {credentials.ca_file or 'the system CAs'}), and reach etcd by a name "
            "or address the certificate holds")
    if "wrong version number" in low:
        return DatabaseUnavailable(f"etcd at {where} does not speak TLS: use etcd://{where}, or start etcd with "
                                   "--cert-file and --key-file")
    if not any(word in low for word in ("alert", "ssl", "certificate")):
        return None
    if not credentials.cert_file:
        return AccessDenied(
            f"etcd at {where} requires a client certificate ({_ssl_reason(detail)}): set [database] cert_file "
            "and key_file to a certificate signed by a CA in etcd's --trusted-ca-file")
    return AccessDenied(
        f"etcd at {where} refused the client certificate [database] cert_file {credentials.cert_file} "
        f"({_ssl_reason(detail)}): it must be signed by a CA in etcd's --trusted-ca-file, unexpired, and for "
        "client use (extended key usage clientAuth)")


def _ssl_reason(detail: str) -> str:
    """The SSL library's reason in a requests error, e.g. 'TLSV1_ALERT_UNKNOWN_CA', else the text cut short."""
    start = detail.find("[SSL")
    end = detail.find(" (_ssl.c", start)
    reason = detail[start:end if end > start else start + 120] if start >= 0 else detail[:120]
    return " ".join(reason.split())


class _WatchStream:
    """One etcd watch over the driver's prefix, read by a thread into a queue.

    Each queue item is a parsed watch response, or an exception when the
    stream failed; ``next_revision`` is the first revision not yet handed out.
    """

    def __init__(self, response: requests.Response, start_revision: int) -> None:
        self.response = response
        self.next_revision = start_revision
        self.queue: queue.Queue[dict[str, Any] | Exception] = queue.Queue()
        self.thread = threading.Thread(target=self._read, name="etcd-watch", daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buffer = b""
        try:
            for chunk in self.response.iter_content(chunk_size=None):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        self.queue.put(json.loads(line))
            self.queue.put(DatabaseUnavailable("etcd closed the watch stream"))
        except (requests.RequestException, OSError, ValueError, AttributeError) as exc:
            self.queue.put(DatabaseUnavailable(f"the etcd watch stream broke: {exc}"))

    def close(self) -> None:
        """Unblock the reader by shutting the socket down under it, then drop the connection."""
        with contextlib.suppress(Exception):
            fileno = self.response.raw._fp.fileno()  # type: ignore[union-attr]
            socket.socket(fileno=socket.dup(fileno)).shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(Exception):
            self.response.close()


class EtcdDriver(Driver):
    """``etcd[s]://HOST:PORT[,HOST:PORT...][/PREFIX]``; PREFIX (default ``hwflow``) scopes every key."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], prefix: str = DEFAULT_PREFIX,
                 timeout: float = REQUEST_TIMEOUT, max_txn_ops: int = MAX_TXN_OPS, tls: bool = False,
                 credentials: Credentials | None = None) -> None:
        if not endpoints:
            raise ValueError("the etcd driver needs at least one endpoint")
        if max_txn_ops < 1:
            raise ValueError("max_txn_ops must be at least 1")
        self.max_txn_ops = max_txn_ops  # raise it with etcd's --max-txn-ops to write bigger batches atomically
        self.max_txn_bytes = MAX_TXN_BYTES
        self.endpoints = list(endpoints)
        self.prefix = f"/{prefix}/"
        self.timeout = timeout
        self.credentials = credentials or Credentials()
        creds = self.credentials
        self._clients = [
            etcd3gw.Etcd3Client(host=host, port=port, protocol="https" if tls else "http", timeout=timeout,
                                ca_cert=creds.ca_file or None, cert_cert=creds.cert_file or None,
                                cert_key=creds.key_file or None, api_path="/v3/")
            for host, port in endpoints
        ]
        if creds.ca_file:  # requests lets REQUESTS_CA_BUNDLE (and proxies) of the environment override a session's
            for client in self._clients:  # CA: [database] ca_file must win, and etcd is reached directly
                client.session.trust_env = False
        self._logged_in = False
        self._current = 0  # index of the member last reached
        self._lock = threading.Lock()
        self._stream: _WatchStream | None = None
        self._leases: dict[tuple[str, str], int] = {}  # liveness mark -> the lease keeping it
        self._closed = False

    @classmethod
    def from_url(cls, url: str, conf: cfg.ConfigOpts | None = None) -> EtcdDriver:
        parsed = parse_url(url)
        credentials = Credentials.from_conf(conf) if conf is not None else Credentials()
        credentials.check(parsed.tls)
        return cls(parsed.endpoints, parsed.prefix, tls=parsed.tls, credentials=credentials)

    def _where(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.endpoints)

    # --- requests, with fail-over between members --------------------------

    def _call(self, func: Callable[[etcd3gw.Etcd3Client], T], asked: Callable[[], str]) -> T:
        """Run ``func`` on the member last reached, trying the others if it cannot be reached.

        ``asked()`` says what the request asks for, in a refusal's message (worked out only then).
        """
        if self._closed:
            raise DatabaseUnavailable(f"the etcd database at {self._where()} was closed")
        errors = []
        for attempt in range(len(self._clients)):
            index = (self._current + attempt) % len(self._clients)
            try:
                result = self._as_user(self._clients[index], func)
            except (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError,
                    etcd_errors.InternalServerError) as exc:
                detail = _detail(exc)
                if (tls_error := tls_refusal(detail, self.credentials, self._where())) is not None:
                    raise tls_error from None
                errors.append(f"{self.endpoints[index][0]}:{self.endpoints[index][1]}: {detail[:200]}")
                continue
            except etcd_errors.Etcd3Exception as exc:
                raise refusal(_detail(exc), self.credentials, self._where(), asked()) from None
            self._current = index
            return result
        raise DatabaseUnavailable(
            f"cannot reach etcd at {self._where()} ({'; '.join(errors)}); check that etcd is running "
            "and reachable, or choose another --database etcd://HOST:PORT (etcds:// if it serves TLS)"
        )

    def _as_user(self, client: etcd3gw.Etcd3Client, func: Callable[[etcd3gw.Etcd3Client], T]) -> T:
        """``func(client)`` as [database] username when one is set: logged in first, and again if etcd forgot us."""
        if not self.credentials.username:
            return func(client)
        if not self._logged_in:
            self._login(client)
        try:
            return func(client)
        except etcd_errors.Etcd3Exception as exc:
            detail = _detail(exc)
            if _grpc_code(detail) != UNAUTHENTICATED and "user name is empty" not in detail:
                raise
        self._login(client)  # etcd forgot the token (its --auth-token-ttl lapsed, it restarted) or enabled auth
        return func(client)

    def _login(self, client: etcd3gw.Etcd3Client) -> None:
        """Take a token for [database] username; every member's session sends it (one auth store per cluster).

        An etcd without auth has no tokens to give: requests go without one until it asks for a user. The
        login goes without the old token: etcd refuses a login that carries one it forgot.
        """
        for each in self._clients:
            each.session.headers.pop("Authorization", None)
        try:
            reply = client.post(client.get_url("/auth/authenticate"),
                                json={"name": self.credentials.username, "password": self.credentials.password})
        except etcd_errors.Etcd3Exception as exc:
            if "authentication is not enabled" not in _detail(exc):
                raise
            LOG.warning("etcd at %s has auth disabled: [database] username %s is not used until it is enabled",
                        self._where(), self.credentials.who)
            reply = {}
        if reply.get("token"):
            for each in self._clients:
                each.session.headers["Authorization"] = str(reply["token"])
        self._logged_in = True

    def request(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One call of etcd's JSON gateway (``/v3`` + ``path``), as the driver's user, with fail-over."""
        return self._call(lambda client: client.post(client.get_url(path), json=payload),
                          lambda: self._asked(path, payload))

    def _asked(self, path: str, payload: dict[str, Any]) -> str:
        """What a request asks, for a refusal: the keys it writes (else reads), as TABLE/KEY."""
        ops = payload.get("success", [{path: payload}])
        writes, reads = [], []
        for op in ops:
            for kind, body in op.items():
                if isinstance(body, dict) and "key" in body:
                    key = unb64(body["key"]).decode(errors="replace").removeprefix(self.prefix)
                    (reads if kind in ("request_range", "/kv/range") else writes).append(key)
        keys, verb = (writes, "a write of") if writes else (reads, "a read of")
        if not keys:
            return f"a request ({path})"
        more = f" and {len(keys) - SHOWN_KEYS} more" if len(keys) > SHOWN_KEYS else ""
        return f"{verb} {', '.join(keys[:SHOWN_KEYS])}{more}"

    def full_key(self, table: str, key: str) -> str:
        """The etcd key of a record: /PREFIX/TABLE/KEY (what a role grants, too)."""
        return f"{self.prefix}{table}/{key}"

    def _split(self, full_key: bytes) -> tuple[str, str]:
        table, _, key = full_key.decode()[len(self.prefix):].partition("/")
        return table, key

    def _record(self, kv: dict[str, Any]) -> Record:
        table, key = self._split(unb64(kv["key"]))
        return Record(table, key, unb64(kv.get("value", "")), int(kv.get("create_revision", 0)),
                      int(kv.get("mod_revision", 0)))

    # --- the driver interface ------------------------------------------------

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> int:
        keys = [(op.table, op.key) for op in ops]
        if not ops or len(set(keys)) != len(keys):
            raise ValueError("a transaction needs at least one operation and each key at most once")
        request = {
            "compare": [
                {"key": b64(self.full_key(c.table, c.key)), "target": "MOD", "result": "EQUAL",
                 "mod_revision": c.mod_revision}
                for c in compares
            ],
            "success": [self._request_op(op) for op in ops],
            # On failure, read back what was compared to say which record moved.
            "failure": [
                {"request_range": {"key": b64(self.full_key(c.table, c.key)), "keys_only": True}} for c in compares
            ],
        }
        reply = self.request("/kv/txn", request)
        if reply.get("succeeded"):
            return int(reply["header"]["revision"])
        for compare, response in zip(compares, reply.get("responses", [])):
            kvs = response.get("response_range", {}).get("kvs", [])
            actual = int(kvs[0].get("mod_revision", 0)) if kvs else 0
            if actual != compare.mod_revision:
                raise Conflict(compare.table, compare.key, compare.mod_revision, actual)
        raise Conflict(compares[0].table, compares[0].key, compares[0].mod_revision, -1,
                       "the record changed and changed back; retry")

    def _request_op(self, op: Op) -> dict[str, Any]:
        key = b64(self.full_key(op.table, op.key))
        if isinstance(op, Put):
            return {"request_put": {"key": key, "value": base64.b64encode(op.value).decode()}}
        if isinstance(op, Delete):
            return {"request_delete_range": {"key": key}}
        raise TypeError(f"not a transaction operation: {op!r}")

    def get(self, table: str, key: str) -> Record | None:
        reply = self.request("/kv/range", {"key": b64(self.full_key(table, key))})
        kvs = reply.get("kvs", [])
        return self._record(kvs[0]) if kvs else None

    def get_many(self, keys: Sequence[tuple[str, str]]) -> list[Record | None]:
        """Up to ``max_txn_ops`` reads per request (a read-only transaction of range requests).

        Where many keys of one table are asked and the table holds not many
        more (a batch's unique values in a young database), the table is read
        whole instead: a few paged range reads rather than one per 128 keys.
        """
        found: dict[tuple[str, str], Record | None] = {}
        by_table: dict[str, list[str]] = {}
        for table, key in keys:
            by_table.setdefault(table, []).append(key)
        singles: list[tuple[str, str]] = []
        for table, wanted in by_table.items():
            if len(wanted) >= 2 * self.max_txn_ops and self._count(table) <= WHOLE_TABLE_FACTOR * len(wanted):
                records = {r.key: r for r in self.list(table)[1]}
                found.update(((table, key), records.get(key)) for key in wanted)
            else:
                singles += [(table, key) for key in wanted]
        for start in range(0, len(singles), self.max_txn_ops):
            part = singles[start:start + self.max_txn_ops]
            reads = [{"request_range": {"key": b64(self.full_key(t, k))}} for t, k in part]
            request = {"compare": [], "success": reads}
            responses = self.request("/kv/txn", request).get("responses", [])
            if len(responses) != len(part):
                raise DatabaseUnavailable(f"etcd at {self._where()} answered {len(responses)} of {len(part)} reads")
            for key, response in zip(part, responses, strict=True):
                kvs = response.get("response_range", {}).get("kvs", [])
                found[key] = self._record(kvs[0]) if kvs else None
        return [found[key] for key in keys]

    def _count(self, table: str) -> int:
        start = self.full_key(table, "")
        reply = self.request("/kv/range", {"key": b64(start), "range_end": b64(prefix_end(start)),
                                           "count_only": True})
        return int(reply.get("count", 0))

    def list(self, table: str, prefix: str = "") -> tuple[int, list[Record]]:
        return self._ranges([(table, prefix)])

    def snapshot(self, tables: Sequence[str]) -> tuple[int, list[Record]]:
        return self._ranges([(table, "") for table in sorted(tables)])

    def _ranges(self, ranges: Sequence[tuple[str, str]]) -> tuple[int, list[Record]]:
        """Key ranges read at the revision of the first page, so all of it is one point in time."""
        revision = 0
        records: list[Record] = []
        for table, prefix in ranges:
            start, end = self.full_key(table, prefix), prefix_end(self.full_key(table, prefix))
            while True:
                request: dict[str, Any] = {"key": b64(start), "range_end": b64(end), "limit": RANGE_PAGE}
                if revision:
                    request["revision"] = revision
                reply = self.request("/kv/range", request)
                revision = revision or int(reply["header"]["revision"])
                page = [self._record(kv) for kv in reply.get("kvs", [])]
                records += page
                if not reply.get("more") or not page:
                    break
                start = self.full_key(page[-1].table, page[-1].key) + "\0"
        return revision or self.current_revision(), records

    def current_revision(self) -> int:
        reply = self.request("/kv/range", {"key": b64(self.prefix), "keys_only": True, "limit": 1})
        return int(reply["header"]["revision"])

    def compact(self, revision: int) -> None:
        """Forget the events below ``revision``, and the deletes at it (etcd drops those tombstones)."""
        current = self.current_revision()
        if revision > current:
            raise ValueError(f"cannot compact revision {revision}: the database is at {current}")
        try:
            self.request("/kv/compaction", {"revision": revision, "physical": True})
        except DatabaseUnavailable as exc:
            if "compacted" not in str(exc):  # already compacted further: nothing to do
                raise

    def watch(self, from_revision: int, timeout: float) -> list[Event]:
        if from_revision < 1:
            raise ValueError(f"watch needs a revision of at least 1, not {from_revision}")
        deadline = time.monotonic() + timeout
        retried = False
        with self._lock:
            stream = self._open_stream(from_revision)
            while True:
                try:
                    item = stream.queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    return []
                if isinstance(item, Exception):
                    self._drop_stream()
                    if retried:
                        raise item
                    retried = True  # a stream reset while it was being replaced: open it once more
                    stream = self._open_stream(from_revision)
                    continue
                result = item.get("result", item)
                if "error" in item:
                    self._drop_stream()
                    raise DatabaseUnavailable(f"etcd at {self._where()} ended the watch: {item['error']}")
                if int(result.get("compact_revision", 0) or 0):
                    self._drop_stream()
                    raise Compacted(int(result["compact_revision"]))
                if result.get("canceled"):
                    self._drop_stream()
                    raise refusal(str(result.get("cancel_reason", "no reason")), self.credentials, self._where(),
                                  f"a watch of every key under {self.prefix}")
                events = [e for e in map(self._event, result.get("events", [])) if e.revision >= from_revision]
                if events:
                    stream.next_revision = events[-1].revision + 1
                    return events
                if time.monotonic() >= deadline:
                    return []

    def _event(self, ev: dict[str, Any]) -> Event:
        kv = ev["kv"]
        table, key = self._split(unb64(kv["key"]))
        if ev.get("type") == "DELETE":
            prev = ev.get("prev_kv")
            return Event(int(kv["mod_revision"]), table, key, "delete", unb64(prev.get("value", "")) if prev else None)
        return Event(int(kv["mod_revision"]), table, key, "put", unb64(kv.get("value", "")))

    def _open_stream(self, from_revision: int) -> _WatchStream:
        """The stream standing at ``from_revision``, reopened there if it stands elsewhere or broke.

        It starts one revision early (that revision's events are dropped): etcd
        accepts a watch from its compact revision although a delete at that
        revision is gone, so asking for one before it makes etcd refuse exactly
        when the sqlite driver would, and nothing is silently missed.
        """
        if self._stream is not None and self._stream.next_revision == from_revision:
            return self._stream
        self._drop_stream()
        request = {"create_request": {
            "key": b64(self.prefix), "range_end": b64(prefix_end(self.prefix)),
            "start_revision": max(1, from_revision - 1), "prev_kv": True,
        }}

        def open_on(client: etcd3gw.Etcd3Client) -> requests.Response:
            # "Connection: close": a stream is torn down by shutting its socket, which must never go back to
            # the session's pool for a later request to trip over. One retry covers a pooled connection that
            # the server closed meanwhile (POST is not retried by urllib3).
            for attempt in (1, 2):
                try:
                    response = client.session.post(client.get_url("/watch"), json=request, stream=True,
                                                   timeout=(self.timeout, None), headers={"Connection": "close"})
                    break
                except requests.RequestException as exc:
                    if attempt == 2:
                        raise etcd_errors.ConnectionFailedError(str(exc) or type(exc).__name__) from None
            if 400 <= response.status_code < 500:  # refused (a token, a certificate): not a member down
                raise etcd_errors.Etcd3Exception(response.text)
            if response.status_code != 200:
                raise etcd_errors.ConnectionFailedError(f"HTTP {response.status_code}: {response.text[:200]}")
            return response

        self._stream = _WatchStream(self._call(open_on, lambda: f"a watch of every key under {self.prefix}"),
                                    from_revision)
        return self._stream

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def keep_alive(self, table: str, key: str, ttl: float) -> None:
        """Refresh the mark's lease; grant a new one (and put the mark under it) if it lapsed."""
        lease = self._leases.get((table, key))
        if lease is not None:
            reply = self.request("/lease/keepalive", {"ID": lease})
            if int(reply.get("result", {}).get("TTL", 0)) > 0:
                return
        lease = int(self.request("/lease/grant", {"TTL": max(1, round(ttl)), "ID": 0})["ID"])
        self.request("/kv/put", {"key": b64(self.full_key(table, key)), "value": "", "lease": lease})
        self._leases[table, key] = lease

    def alive(self, table: str) -> set[str]:
        return {r.key for r in self.list(table)[1]}

    def close(self) -> None:
        with self._lock:
            self._drop_stream()
        self._closed = True
        for client in self._clients:
            client.session.close()
