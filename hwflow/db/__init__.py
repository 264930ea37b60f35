"""The northbound database: the typed NB API over pluggable raw drivers (sqlite, etcd)."""

from hwflow.db.api import Change, NbApi
from hwflow.db.base import Compare, Delete, Driver, Event, Put, Record

__all__ = ["Change", "Compare", "Delete", "Driver", "Event", "NbApi", "Put", "Record"]
