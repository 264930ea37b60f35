"""The OVSDB side: the integration bridge and the ports plugged into it.

Ports are bound the way os-vif plugs them: an Interface row carries
``external_ids:iface-id`` = the logical port id, and vswitchd fills in the
``ofport`` some time after the row appears. The agent learns of changes
through :meth:`OvsdbClient.on_change` instead of polling.

The client replicates only the tables and columns hwflow reads or writes
(``MONITORED``), not the whole database: vswitchd rewrites every
Interface's ``statistics`` (and ``link_state``, ``mtu``, the Open_vSwitch
row's ``statistics``...) every few seconds, and none of that should cross
the socket, let alone wake the agent. ``on_change`` fires only when an
Interface appears, goes, or changes one of ``WAKE_COLUMNS``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ovsdbapp.backend.ovs_idl import connection, event, idlutils
from ovsdbapp.schema.open_vswitch import impl_idl

LOG = logging.getLogger(__name__)

BRIDGE_COLUMNS: dict[str, Any] = {
    "datapath_type": "netdev",
    "fail_mode": "secure",
    "protocols": ["OpenFlow13"],
}

# What the IDL replicates: the columns the ovsdbapp commands used here write (add_br, add_port, del_port,
# db_set on the bridge and on fixed ports) and read (the lookups by name, the transaction's
# next_cfg/cur_cfg wait and its ofport check), plus what interfaces() and the fixed-port sync read.
MONITORED: dict[str, tuple[str, ...]] = {
    "Open_vSwitch": ("bridges", "cur_cfg", "next_cfg"),
    "Bridge": ("name", "ports", *BRIDGE_COLUMNS),
    "Port": ("name", "interfaces"),
    "Interface": ("name", "type", "options", "external_ids", "ofport", "ifindex"),
}
# The Interface columns whose change can change what the agent computes: which logical port
# (external_ids:iface-id) sits on which ofport, and the fixed ports' type and options.
WAKE_COLUMNS = ("name", "type", "options", "external_ids", "ofport", "ifindex")

ChangeCallback = Callable[[str, str], None]  # (event: create|update|delete, interface name)
FIXED_KEY = "hwflow-port-key"  # external_ids key marking a FixedPort


class OvsdbError(RuntimeError):
    """OVSDB could not be reached or refused a change."""


@dataclasses.dataclass(frozen=True)
class Iface:
    name: str
    ofport: int
    ifindex: int
    iface_id: str


@dataclasses.dataclass(frozen=True)
class FixedPort:
    """A port hwflow itself keeps on the bridge: a tunnel endpoint or a provider uplink.

    ``key`` is the logical port key the pipeline names it by (``ir.TUNNEL_PORTS``,
    ``ir.physnet_port``); it is stored in ``external_ids:hwflow-port-key`` so the
    agent finds its ports again after a restart, and removes those it no
    longer wants. ``type`` "" is a system interface (an uplink NIC).
    """

    name: str
    key: int
    type: str = ""
    options: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(sorted(self.options)))  # as read back from OVSDB


class _InterfaceChanged(event.RowEvent):
    """Forwards an Interface row's creation, deletion or change of a WAKE_COLUMNS column to a callback."""

    def __init__(self, callback: ChangeCallback) -> None:
        super().__init__((self.ROW_CREATE, self.ROW_UPDATE, self.ROW_DELETE), "Interface", None)
        self.callback = callback
        self.event_name = f"hwflow-iface-{id(callback):x}"

    @property
    def key(self) -> tuple[Any, ...]:
        """Include the callback: the base key would merge two subscribers into one."""
        return (self.__class__, self.table, tuple(self.events), self.callback)

    def match_fn(self, event: str, row: Any, old: Any) -> bool:
        """An update counts if one of WAKE_COLUMNS changed: ``old`` holds the changed columns only."""
        return event != self.ROW_UPDATE or old is None or any(hasattr(old, col) for col in WAKE_COLUMNS)

    def matches(self, event: str, row: Any, old: Any = None) -> bool:
        """RowEvent.matches without its debug line, whose arguments (``idlutils.row2str`` of both rows) are built
        even with debug logging off, and build a new class for every column of a row (``process_value_for_str``'s
        StrUuid): cyclic garbage at every matched event. When a ``gc_paused(keep=True)`` block runs meanwhile on
        the agent's thread, the collector is off and the block's end freezes that garbage for good: the soak
        (hwflow bench soak) saw the agent grow by 7 classes a plugged or unplugged VM."""
        return (event in self.events and row._table.name == self.table and self.base_match(event, row, old)
                and self.match_fn(event, row, old))

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
        self._view: tuple[int, _BridgeView] | None = None  # (the IDL's change_seqno, the bridge as it was then)
        try:
            helper = idlutils.get_schema_helper(connection_str, "Open_vSwitch")
            for table, columns in MONITORED.items():
                helper.register_columns(table, list(columns))
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

    def sync_fixed_ports(self, wanted: Sequence[FixedPort]) -> bool:
        """Make the bridge's fixed ports exactly ``wanted``; True if anything had to change.

        Compared against the IDL's cache first, so calling it on every pass costs no transaction.
        """
        have = self._fixed_rows()
        commands = []
        for port in wanted:
            if have.pop(port.name, None) == port:
                continue
            ids = {FIXED_KEY: str(port.key)}
            commands += [self.api.add_port(self.bridge, port.name, may_exist=True),
                         self.api.db_set("Interface", port.name, ("type", port.type), ("options", dict(port.options)),
                                         ("external_ids", ids))]
        commands += [self.api.del_port(name, bridge=self.bridge, if_exists=True) for name in sorted(have)]
        if commands:
            self._execute(*commands)
        return bool(commands)

    def fixed_ofports(self) -> dict[int, int]:
        """Logical port key -> ofport of the fixed ports vswitchd has given one."""
        return dict(self._bridge().fixed_ofports)

    def _fixed_rows(self) -> dict[str, FixedPort]:
        return dict(self._bridge().fixed)

    def interfaces(self) -> dict[str, Iface]:
        """Bound interfaces (iface-id -> Iface) on our bridge whose ofport vswitchd has assigned."""
        return dict(self._bridge().interfaces)

    def _bridge(self) -> _BridgeView:
        """The bridge's interfaces as the IDL holds them, read again only when the IDL changed (a pass reads them
        three times; reading 200 rows through python-ovs costs 15-30 ms)."""
        with self._conn.lock:
            seqno = self.api.idl.change_seqno
            if self._view is None or self._view[0] != seqno:
                self._view = (seqno, _BridgeView.of(self._bridge_interfaces()))
            return self._view[1]

    def _bridge_interfaces(self) -> list[Any]:
        """Interface rows of our bridge (call with the connection lock held)."""
        bridge = idlutils.row_by_value(self.api.idl, "Bridge", "name", self.bridge, None)
        return [row for port in bridge.ports for row in port.interfaces] if bridge is not None else []

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
        """Call ``callback(event, interface_name)`` from a helper thread when an Interface row is
        created or deleted, or one of its WAKE_COLUMNS changes (never for statistics and the like)."""
        self._handler.watch_event(_InterfaceChanged(callback))

    def close(self) -> None:
        self._handler.shutdown()
        self._conn.stop(timeout=self.timeout)


@dataclasses.dataclass(frozen=True)
class _BridgeView:
    interfaces: Mapping[str, Iface]  # iface-id -> bound interface with an ofport
    fixed: Mapping[str, FixedPort]  # name -> fixed port hwflow put there
    fixed_ofports: Mapping[int, int]  # logical key -> ofport of a fixed port

    @classmethod
    def of(cls, rows: Sequence[Any]) -> _BridgeView:
        interfaces, fixed, ofports = {}, {}, {}
        for row in rows:
            iface = _iface(row)
            if iface is not None:
                interfaces[iface.iface_id] = iface
            ids = row.external_ids
            if FIXED_KEY in ids:
                key = int(ids[FIXED_KEY])
                fixed[row.name] = FixedPort(row.name, key, row.type, tuple(sorted(row.options.items())))
                ofport = _first(row.ofport)
                if ofport is not None and ofport > 0:
                    ofports[key] = ofport
        return cls(interfaces, fixed, ofports)


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
