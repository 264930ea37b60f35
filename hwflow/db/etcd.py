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
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import etcd3gw
import requests
from etcd3gw import exceptions as etcd_errors
from oslo_config import cfg

from hwflow.db.base import Compare, Delete, Driver, Event, Op, Put, Record
from hwflow.model.errors import Compacted, Conflict, DatabaseUnavailable

LOG = logging.getLogger(__name__)

URL_PREFIX = "etcd://"
DEFAULT_PREFIX = "hwflow"
REQUEST_TIMEOUT = 10.0  # seconds for one request; a dead member must not hang the agent
RANGE_PAGE = 5000  # records per range request, so a big table is read in bounded responses
# etcd refuses a transaction with more compares, or more operations, than its --max-txn-ops (128 by
# default), and a request over its --max-request-bytes (1.5 MiB by default; this leaves room for framing).
MAX_TXN_OPS = 128
MAX_TXN_BYTES = 1_000_000
# get_many reads a whole table when asked for at least a quarter as many of its keys as it holds.
WHOLE_TABLE_FACTOR = 4

T = TypeVar("T")


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _unb64(text: str) -> bytes:
    return base64.b64decode(text)


def _range_end(prefix: str) -> str:
    """The key just past every key that starts with ``prefix`` (etcd's prefix range)."""
    return prefix[:-1] + chr(ord(prefix[-1]) + 1)


def parse_url(url: str) -> tuple[list[tuple[str, int]], str]:
    """``etcd://HOST:PORT[,HOST:PORT...][/PREFIX]`` -> endpoints and key prefix."""
    rest = url[len(URL_PREFIX):] if url.startswith(URL_PREFIX) else ""
    hosts, _, prefix = rest.partition("/")
    endpoints = []
    for item in hosts.split(","):
        host, sep, port = item.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise DatabaseUnavailable(
                f"bad etcd database URL {url!r}: use etcd://HOST:PORT[,HOST:PORT...] "
                "(e.g. etcd://127.0.0.1:2379), optionally followed by /PREFIX"
            )
        endpoints.append((host.strip("[]"), int(port)))
    return endpoints, prefix.strip("/") or DEFAULT_PREFIX


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
    """``etcd://HOST:PORT[,HOST:PORT...][/PREFIX]``; PREFIX (default ``hwflow``) scopes every key."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], prefix: str = DEFAULT_PREFIX,
                 timeout: float = REQUEST_TIMEOUT, max_txn_ops: int = MAX_TXN_OPS) -> None:
        if not endpoints:
            raise ValueError("the etcd driver needs at least one endpoint")
        if max_txn_ops < 1:
            raise ValueError("max_txn_ops must be at least 1")
        self.max_txn_ops = max_txn_ops  # raise it with etcd's --max-txn-ops to write bigger batches atomically
        self.max_txn_bytes = MAX_TXN_BYTES
        self.endpoints = list(endpoints)
        self.prefix = f"/{prefix}/"
        self.timeout = timeout
        self._clients = [
            etcd3gw.Etcd3Client(host=host, port=port, timeout=timeout, api_path="/v3/") for host, port in endpoints
        ]
        self._current = 0  # index of the member last reached
        self._lock = threading.Lock()
        self._stream: _WatchStream | None = None
        self._leases: dict[tuple[str, str], int] = {}  # liveness mark -> the lease keeping it
        self._closed = False

    @classmethod
    def from_url(cls, url: str, conf: cfg.ConfigOpts | None = None) -> EtcdDriver:
        endpoints, prefix = parse_url(url)
        return cls(endpoints, prefix)

    def _where(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.endpoints)

    # --- requests, with fail-over between members --------------------------

    def _call(self, func: Callable[[etcd3gw.Etcd3Client], T]) -> T:
        """Run ``func`` on the member last reached, trying the others if it cannot be reached."""
        if self._closed:
            raise DatabaseUnavailable(f"the etcd database at {self._where()} was closed")
        errors = []
        for attempt in range(len(self._clients)):
            index = (self._current + attempt) % len(self._clients)
            try:
                result = func(self._clients[index])
            except (etcd_errors.ConnectionFailedError, etcd_errors.ConnectionTimeoutError,
                    etcd_errors.InternalServerError) as exc:
                errors.append(f"{self.endpoints[index][0]}:{self.endpoints[index][1]}: {str(exc)[:200]}")
                continue
            except etcd_errors.Etcd3Exception as exc:
                raise DatabaseUnavailable(f"etcd at {self._where()} refused a request: {exc}") from None
            self._current = index
            return result
        raise DatabaseUnavailable(
            f"cannot reach etcd at {self._where()} ({'; '.join(errors)}); check that etcd is running "
            "and reachable, or choose another --database etcd://HOST:PORT"
        )

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        return self._call(lambda client: client.post(client.get_url(path), json=payload))

    def _key(self, table: str, key: str) -> str:
        return f"{self.prefix}{table}/{key}"

    def _split(self, full_key: bytes) -> tuple[str, str]:
        table, _, key = full_key.decode()[len(self.prefix):].partition("/")
        return table, key

    def _record(self, kv: dict[str, Any]) -> Record:
        table, key = self._split(_unb64(kv["key"]))
        return Record(table, key, _unb64(kv.get("value", "")), int(kv.get("create_revision", 0)),
                      int(kv.get("mod_revision", 0)))

    # --- the driver interface ------------------------------------------------

    def txn(self, compares: Sequence[Compare], ops: Sequence[Op]) -> int:
        keys = [(op.table, op.key) for op in ops]
        if not ops or len(set(keys)) != len(keys):
            raise ValueError("a transaction needs at least one operation and each key at most once")
        request = {
            "compare": [
                {"key": _b64(self._key(c.table, c.key)), "target": "MOD", "result": "EQUAL",
                 "mod_revision": c.mod_revision}
                for c in compares
            ],
            "success": [self._request_op(op) for op in ops],
            # On failure, read back what was compared to say which record moved.
            "failure": [
                {"request_range": {"key": _b64(self._key(c.table, c.key)), "keys_only": True}} for c in compares
            ],
        }
        reply = self._post("/kv/txn", request)
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
        key = _b64(self._key(op.table, op.key))
        if isinstance(op, Put):
            return {"request_put": {"key": key, "value": base64.b64encode(op.value).decode()}}
        if isinstance(op, Delete):
            return {"request_delete_range": {"key": key}}
        raise TypeError(f"not a transaction operation: {op!r}")

    def get(self, table: str, key: str) -> Record | None:
        reply = self._post("/kv/range", {"key": _b64(self._key(table, key))})
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
            request = {"compare": [], "success": [{"request_range": {"key": _b64(self._key(t, k))}} for t, k in part]}
            responses = self._post("/kv/txn", request).get("responses", [])
            if len(responses) != len(part):
                raise DatabaseUnavailable(f"etcd at {self._where()} answered {len(responses)} of {len(part)} reads")
            for key, response in zip(part, responses, strict=True):
                kvs = response.get("response_range", {}).get("kvs", [])
                found[key] = self._record(kvs[0]) if kvs else None
        return [found[key] for key in keys]

    def _count(self, table: str) -> int:
        start = self._key(table, "")
        reply = self._post("/kv/range", {"key": _b64(start), "range_end": _b64(_range_end(start)), "count_only": True})
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
            start, end = self._key(table, prefix), _range_end(self._key(table, prefix))
            while True:
                request: dict[str, Any] = {"key": _b64(start), "range_end": _b64(end), "limit": RANGE_PAGE}
                if revision:
                    request["revision"] = revision
                reply = self._post("/kv/range", request)
                revision = revision or int(reply["header"]["revision"])
                page = [self._record(kv) for kv in reply.get("kvs", [])]
                records += page
                if not reply.get("more") or not page:
                    break
                start = self._key(page[-1].table, page[-1].key) + "\0"
        return revision or self.current_revision(), records

    def current_revision(self) -> int:
        reply = self._post("/kv/range", {"key": _b64(self.prefix), "keys_only": True, "limit": 1})
        return int(reply["header"]["revision"])

    def compact(self, revision: int) -> None:
        """Forget the events below ``revision``, and the deletes at it (etcd drops those tombstones)."""
        current = self.current_revision()
        if revision > current:
            raise ValueError(f"cannot compact revision {revision}: the database is at {current}")
        try:
            self._post("/kv/compaction", {"revision": revision, "physical": True})
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
                    raise DatabaseUnavailable(
                        f"etcd at {self._where()} cancelled the watch: {result.get('cancel_reason', 'no reason')}"
                    )
                events = [e for e in map(self._event, result.get("events", [])) if e.revision >= from_revision]
                if events:
                    stream.next_revision = events[-1].revision + 1
                    return events
                if time.monotonic() >= deadline:
                    return []

    def _event(self, ev: dict[str, Any]) -> Event:
        kv = ev["kv"]
        table, key = self._split(_unb64(kv["key"]))
        if ev.get("type") == "DELETE":
            prev = ev.get("prev_kv")
            return Event(int(kv["mod_revision"]), table, key, "delete", _unb64(prev.get("value", "")) if prev else None)
        return Event(int(kv["mod_revision"]), table, key, "put", _unb64(kv.get("value", "")))

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
            "key": _b64(self.prefix), "range_end": _b64(_range_end(self.prefix)),
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
            if response.status_code != 200:
                raise etcd_errors.ConnectionFailedError(f"HTTP {response.status_code}: {response.text[:200]}")
            return response

        self._stream = _WatchStream(self._call(open_on), from_revision)
        return self._stream

    def _drop_stream(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def keep_alive(self, table: str, key: str, ttl: float) -> None:
        """Refresh the mark's lease; grant a new one (and put the mark under it) if it lapsed."""
        lease = self._leases.get((table, key))
        if lease is not None:
            reply = self._post("/lease/keepalive", {"ID": lease})
            if int(reply.get("result", {}).get("TTL", 0)) > 0:
                return
        lease = int(self._post("/lease/grant", {"TTL": max(1, round(ttl)), "ID": 0})["ID"])
        self._post("/kv/put", {"key": _b64(self._key(table, key)), "value": "", "lease": lease})
        self._leases[table, key] = lease

    def alive(self, table: str) -> set[str]:
        return {r.key for r in self.list(table)[1]}

    def close(self) -> None:
        with self._lock:
            self._drop_stream()
        self._closed = True
        for client in self._clients:
            client.session.close()
