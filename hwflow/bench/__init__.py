"""Benchmarks behind ``hwflow bench NAME``.

Each benchmark is a module of this package with ``DEFAULTS`` (its parameters
and their default values, all ints, floats or strings) and
``run(params, progress) -> dict[str, float]`` returning its metrics. The CLI
adds the machine description and prints one JSON object:
``{"bench", "params", "machine", "results"}``. Comparisons a benchmark
reports (a speedup, say) are measured in the same run.
"""

from __future__ import annotations

import datetime
import importlib
import math
import os
import platform
import socket
import statistics
from collections.abc import Callable
from types import ModuleType
from typing import Any

# name -> module under hwflow.bench; a benchmark lands by adding its module here.
BENCHMARKS: dict[str, str] = {
    "compile": "compile",
    "converge": "converge",
    "db": "db",
    "openflow": "openflow",
    "partition": "partition",
    "publish": "publish",
    "soak": "soak",
    "tc-encode": "tc_encode",
    "tc-install": "tc_install",
}

Progress = Callable[[str], None]


def median_ms(seconds: list[float]) -> float:
    return round(statistics.median(seconds) * 1000, 2)


def p99_ms(seconds: list[float]) -> float:
    """Nearest rank: the smallest value at least 99% of the values are at or under (below 100, the slowest)."""
    ranked = sorted(seconds)
    return round(ranked[max(0, math.ceil(0.99 * len(ranked)) - 1)] * 1000, 2)


def load(name: str) -> ModuleType:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS)) or 'none'}")
    return importlib.import_module(f"hwflow.bench.{BENCHMARKS[name]}")


def machine() -> dict[str, Any]:
    """Enough about the machine to compare figures across runs."""
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    mem_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {
        "hostname": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_gib, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def parse_params(defaults: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``key=value`` overrides, typed like the default they replace."""
    params = dict(defaults)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or key not in defaults:
            raise ValueError(f"bad parameter {item!r}: use KEY=VALUE with KEY one of {', '.join(sorted(defaults))}")
        params[key] = type(defaults[key])(value)
    return params
