"""Deliberately broken encoders, to prove the tier catches what the simulated NIC cannot.

Each breakage is a mistake the encoder and the decoder would *share* (both
read the same table), so a round trip through hwflow's own code, as the
simulated NIC does, still passes. Only the real kernel, read back through
an independent decoder (iproute2) or through real packets, can tell. Chosen
with ``HWFLOW_HIL_BREAK=NAME`` (or ``--break NAME``) in the in-VM suite.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Iterator

from hwflow.backends.tc import flower as fl

ENV = "HWFLOW_HIL_BREAK"


def _with_specs(change: Callable[[fl.KeySpec], fl.KeySpec]) -> Callable[[], Callable[[], None]]:
    """A breakage that rewrites KEY_SPECS (and the decoder's indexes built from it); returns its undo."""

    def apply() -> Callable[[], None]:
        saved = (fl.KEY_SPECS, fl._BY_ATTR, fl._BY_MASK_ATTR)
        fl.KEY_SPECS = tuple(change(spec) for spec in fl.KEY_SPECS)
        fl._BY_ATTR = {s.attr: s for s in fl.KEY_SPECS}
        fl._BY_MASK_ATTR = {s.mask_attr: s for s in fl.KEY_SPECS if s.mask_attr is not None}

        def undo() -> None:
            fl.KEY_SPECS, fl._BY_ATTR, fl._BY_MASK_ATTR = saved

        return undo

    return apply


def _swap_eth(spec: fl.KeySpec) -> fl.KeySpec:
    """eth_dst sent as TCA_FLOWER_KEY_ETH_SRC and the reverse: a transposed attribute number."""
    pairs = {"eth_dst": fl.TCA_FLOWER_KEY_ETH_SRC, "eth_src": fl.TCA_FLOWER_KEY_ETH_DST}
    if spec.field not in pairs:
        return spec
    return dataclasses.replace(spec, attr=pairs[spec.field], mask_attr=pairs[spec.field] + 1)


def _vlan_big_endian(spec: fl.KeySpec) -> fl.KeySpec:
    """VLAN id in network order, as the uapi header's comment suggests but the kernel does not read it."""
    if spec.field != "vlan_id":
        return spec
    return dataclasses.replace(spec, byteorder="little" if spec.byteorder == "big" else "big")


BREAKAGES: dict[str, Callable[[], Callable[[], None]]] = {
    "eth-swap": _with_specs(_swap_eth),
    "vlan-byteorder": _with_specs(_vlan_big_endian),
}


@contextlib.contextmanager
def broken(name: str | None) -> Iterator[None]:
    """Run the body with the named breakage applied (None: the encoder as it is)."""
    if name is None or name == "":
        yield
        return
    if name not in BREAKAGES:
        raise ValueError(f"unknown breakage {name!r} in {ENV}; known: {', '.join(sorted(BREAKAGES))}")
    undo = BREAKAGES[name]()
    try:
        yield
    finally:
        undo()
