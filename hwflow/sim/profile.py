"""Capability profiles of the simulated NIC.

A profile is what makes the simulated NIC refuse what a real device would:
it holds the same :class:`Capabilities` a driver would report, so hwflow and
the sim agree by construction on what fits in hardware.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import hwflow
from hwflow.offload.capabilities import Capabilities


class ProfileError(ValueError):
    """A profile that cannot be found or read."""


PROFILE_KEYS = ("name", "description", "sources", "capabilities")


@dataclasses.dataclass(frozen=True)
class Profile:
    name: str
    description: str
    capabilities: Capabilities
    sources: tuple[str, ...] = ()  # public documents the profile's facts come from

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description, "sources": list(self.sources),
                "capabilities": self.capabilities.to_dict()}


def profile_dirs() -> list[Path]:
    """Where profile names resolve: the source tree first, then the installed data."""
    return [Path(hwflow.__file__).resolve().parents[1] / "etc" / "nic-profiles",
            Path(sys.prefix) / "share" / "hwflow" / "nic-profiles"]


def resolve(name_or_path: str) -> Path:
    """A path as given if it names a file, else ``NAME.json`` in the profile directories."""
    as_path = Path(name_or_path)
    if as_path.is_file():
        return as_path
    for directory in profile_dirs():
        candidate = directory / f"{name_or_path}.json"
        if candidate.is_file():
            return candidate
    raise ProfileError(f"NIC profile {name_or_path!r} not found: give a path to a JSON file "
                       f"or one of {profile_names()}")


def parse_profile(data: Mapping[str, Any], source: str) -> Profile:
    """A profile document ({name, description, sources, capabilities}); anything else is named as an error."""
    if not isinstance(data, Mapping) or not isinstance(data.get("capabilities"), Mapping):
        raise ProfileError(f"NIC profile {source}: expected an object with a 'capabilities' object")
    unknown = sorted(set(data) - set(PROFILE_KEYS))
    if unknown:
        raise ProfileError(f"NIC profile {source}: unknown key(s) {unknown}; known: {list(PROFILE_KEYS)}")
    sources = data.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise ProfileError(f"NIC profile {source}: sources must be a list of strings")
    try:
        capabilities = Capabilities.from_dict(data["capabilities"])
    except (TypeError, ValueError) as exc:
        raise ProfileError(f"NIC profile {source}: {exc}") from exc
    return Profile(str(data.get("name") or Path(source).stem), str(data.get("description", "")), capabilities,
                   tuple(sources))


def profile_names() -> list[str]:
    """Every profile name the directories hold."""
    return sorted({p.stem for d in profile_dirs() if d.is_dir() for p in d.glob("*.json")})


def load_profile(name_or_path: str) -> Profile:
    path = resolve(name_or_path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ProfileError(f"NIC profile {path}: cannot read it: {exc}") from exc
    return parse_profile(data, str(path))
