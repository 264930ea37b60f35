"""The logical network model: object kinds, their validation, and shared errors."""

from hwflow.model.errors import (
    Ambiguous,
    BrokenReference,
    Compacted,
    Conflict,
    DatabaseUnavailable,
    HwflowError,
    NotFound,
    ValidationError,
)
from hwflow.model.objects import KINDS, Chassis, NbObject, Network, Port, from_dict, kind_class

__all__ = [
    "KINDS",
    "Ambiguous",
    "BrokenReference",
    "Chassis",
    "Compacted",
    "Conflict",
    "DatabaseUnavailable",
    "HwflowError",
    "NbObject",
    "Network",
    "NotFound",
    "Port",
    "ValidationError",
    "from_dict",
    "kind_class",
]
