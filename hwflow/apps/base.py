"""What every network application is: a pure function from topology to IR.

An app declares its tables, entry and exit points and registers in ``spec``
(by local name); the datapath layout (hwflow.pipeline.layout) gives it
numbers, and ``flows`` receives them as an :class:`AppLayout`. Apps know
nothing of OVS, tc or NICs, nor of which app comes before or after them.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable

from hwflow.pipeline import ir
from hwflow.pipeline.layout import AppLayout, AppSpec
from hwflow.pipeline.topology import Topology


class App(abc.ABC):
    spec: AppSpec

    @abc.abstractmethod
    def flows(self, topo: Topology, layout: AppLayout) -> Iterable[ir.Flow]:
        """All flows this app wants for the given topology."""
