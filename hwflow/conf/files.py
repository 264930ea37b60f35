"""Finding the files hwflow ships in etc/ (layout, NIC profiles, samples).

A source checkout (or an editable install) has them in the repository's
etc/; an installed package has them under <prefix>/share/hwflow (setup.py's
data_files), or beside the package for ``pip install --target DIR``.
Looking in all of them keeps one code path for developers and users.
"""

from __future__ import annotations

import sys
from pathlib import Path

import hwflow


def shipped_dirs() -> list[Path]:
    """The repository's etc/, the data files beside the package (pip --target), then the prefix's."""
    beside = Path(hwflow.__file__).resolve().parents[1]
    return [beside / "etc", beside / "share" / "hwflow", Path(sys.prefix) / "share" / "hwflow"]


def shipped(relpath: str) -> Path:
    """The first shipped copy of ``relpath`` (e.g. "datapath_layout.yaml")."""
    for base in shipped_dirs():
        candidate = base / relpath
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{relpath} is not in {' or '.join(str(d) for d in shipped_dirs())}: "
                            "is hwflow installed completely?")
