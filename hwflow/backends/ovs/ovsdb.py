"""The OVSDB side: the integration bridge and the ports plugged into it.

Ports are bound the way os-vif plugs them: an Interface row carries
``external_ids:iface-id`` = the logical port id, and vswitchd fills in the
``ofport`` some time after the row appears. The agent learns of changes
through :meth:`OvsdbClient.on_change` instead of polling.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from ovsdbapp.backend.ovs_idl import connection, event, idlutils
from ovsdbapp.schema.open_vswitch import impl_idl

LOG = logging.getLogger(__name__)

BRIDGE_COLUMNS: dict[str, Any] = {
    "datapath_type": "netdev",
    "fail_mode": "secure",
    "protocols": ["OpenFlow13"],
}

ChangeCallback = Callable[[str, str], None]  # (event: create|update|delete, interface name)


class OvsdbError(RuntimeError):
    """OVSDB could not be reached or refused a change."""


@dataclasses.dataclass(frozen=True)
class Iface:
    name: str
    ofport: int
    ifindex: int
    iface_id: str


class _InterfaceChanged(event.RowEvent):
    """Forwards every Interface row change to a hwflow callback."""

    def __init__(self, callback: ChangeCallback) -> None:
        super().__init__((self.ROW_CREATE, self.ROW_UPDATE, self.ROW_DELETE), "Interface", None)
        self.callback = callback
        self.event_name = f"hwflow-iface-{id(callback):x}"

    @property
    def key(self) -> tuple[Any, ...]:
        """Include the callback: the base key would merge two subscribers into one."""
        return (self.__class__, self.table, tuple(self.events), self.callback)

    def run(self, event: str, row: Any, old: Any) -> None:
        self.callback(event, row.name)


class _NotifyingIdl(connection.OvsdbIdl):
    """A python-ovs Idl that hands row changes to a RowEventHandler."""

    def __init__(self, remote: str, helper: Any, handler: event.RowEventHandler) -> None:
        super().__init__(remote, helper)
        self.handler = handler

    def notify(self, event: str, row: Any, updates: Any = None) -> None:
        self.handler.notify(event, row, updates)


class _Api(impl_idl.OvsdbIdl):
    """ovsdbapp keeps the connection on the class; hwflow needs one per client (two hosts, one test)."""

    @property
    def ovsdb_connection(self) -> connection.Connection:
        return self._own_connection

    @ovsdb_connection.setter
    def ovsdb_connection(self, conn: connection.Connection) -> None:
        self._own_connection = conn


class OvsdbClient:
    """One OVSDB session for one integration bridge."""

    def __init__(self, connection_str: str, bridge: str, timeout: float = 10) -> None:
        self.connection = connection_str
        self.bridge = bridge
        self.timeout = timeout
        self._handler = event.RowEventHandler()
        try:
            helper = idlutils.get_schema_helper(connection_str, "Open_vSwitch")
            helper.register_all()
            idl = _NotifyingIdl(connection_str, helper, self._handler)
            self._conn = connection.Connection(idl=idl, timeout=timeout)
            self.api = _Api(self._conn)
        except Exception as exc:
            self._handler.shutdown()
            raise OvsdbError(f"cannot connect to OVSDB at {connection_str}: {exc}; "
                             "is ovsdb-server running and the socket path right?") from exc

    def _execute(self, *commands: Any) -> list[Any]:
        try:
            with self.api.transaction(check_error=True) as txn:
                for cmd in commands:
                    txn.add(cmd)
        except Exception as exc:
            raise OvsdbError(f"OVSDB transaction on {self.connection} failed: {exc}") from exc
        return [cmd.result for cmd in commands]

    def ensure_bridge(self) -> None:
        """Create the bridge, or repair the columns hwflow relies on if someone changed them."""
        self._execute(
            self.api.add_br(self.bridge, may_exist=True),
            self.api.db_set("Bridge", self.bridge, *BRIDGE_COLUMNS.items()),
        )

    def add_port(self, name: str, iface_id: str | None = None) -> None:
        attrs = {"external_ids": {"iface-id": iface_id}} if iface_id else {}
        self._execute(self.api.add_port(self.bridge, name, may_exist=True, **attrs))

    def del_port(self, name: str) -> None:
        self._execute(self.api.del_port(name, bridge=self.bridge, if_exists=True))

    def interfaces(self) -> dict[str, Iface]:
        """Bound interfaces (iface-id -> Iface) on our bridge whose ofport vswitchd has assigned."""
        found: dict[str, Iface] = {}
        with self._conn.lock:
            bridge = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.bridge, None)
            if bridge is None:
                return found
            for port in bridge.ports:
                for row in port.interfaces:
                    iface = _iface(row)
                    if iface is not None:
                        found[iface.iface_id] = iface
        return found

    def ofport(self, name: str) -> int | None:
        """The interface's ofport, or None while vswitchd has not assigned one (or failed to)."""
        with self._conn.lock:
            row = idlutils.row_by_value(self.api.idl, "Interface", "name", name, None)
            return _first(row.ofport) if row is not None else None

    def wait_for_ofport(self, name: str, timeout: float | None = None) -> int:
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while True:
            ofport = self.ofport(name)
            if ofport is not None and ofport > 0:
                return ofport
            if time.monotonic() >= deadline:
                raise OvsdbError(f"interface {name!r} on {self.bridge} got no ofport (now {ofport}); "
                                 "check that the device exists and see vswitchd.log")
            time.sleep(0.02)

    def on_change(self, callback: ChangeCallback) -> None:
        """Call ``callback(event, interface_name)`` from a helper thread on each Interface change."""
        self._handler.watch_event(_InterfaceChanged(callback))

    def close(self) -> None:
        self._handler.shutdown()
        self._conn.stop(timeout=self.timeout)


def _first(column: Any) -> int | None:
    """Optional integer columns come back as [] or [value]."""
    if isinstance(column, list):
        return column[0] if column else None
    return column


def _iface(row: Any) -> Iface | None:
    iface_id = row.external_ids.get("iface-id")
    ofport = _first(row.ofport)
    if not iface_id or ofport is None or ofport <= 0:
        return None
    return Iface(name=row.name, ofport=ofport, ifindex=_first(row.ifindex) or 0, iface_id=iface_id)
