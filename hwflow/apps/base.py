"""What every network application is: a pure function from topology to IR."""

from __future__ import annotations

import abc
from collections.abc import Iterable

from hwflow.pipeline import ir
from hwflow.pipeline.topology import Topology


class App(abc.ABC):
    """Apps emit IR flows and know nothing of OVS, tc or NICs."""

    name: str

    @abc.abstractmethod
    def flows(self, topo: Topology) -> Iterable[ir.Flow]:
        """All flows this app wants for the given topology."""
