"""``python3 -m hil.checks``: run the in-VM (or on-host) suite; the last line is ``N passed, N failed``.

Exit status 0 only when every check passed. ``HWFLOW_HIL_BREAK=NAME`` runs
it with a deliberately broken encoder (see :mod:`hil.checks.breakage`).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from hil import suite
from hil.checks import actions, bench, breakage, flower, forwarding, netdevsim, selftest
from hil.checks.known import KNOWN_ISSUES

GROUPS: dict[str, Callable[[], list[suite.Check]]] = {
    "flower": flower.checks,
    "packets": forwarding.checks,
    "actions": actions.checks,
    "netdevsim": netdevsim.checks,
    "bench": bench.checks,
    "selftest": selftest.checks,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m hil.checks", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(GROUPS),
                        help=f"comma-separated groups to run (default: all: {','.join(GROUPS)})")
    parser.add_argument("--results", type=Path, help="also write the results as JSON here")
    args = parser.parse_args(argv)
    groups = [g for g in args.only.split(",") if g]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        parser.error(f"unknown group(s) {', '.join(unknown)}; known: {', '.join(GROUPS)}")
    name = os.environ.get(breakage.ENV) or None
    if name is not None and name not in breakage.BREAKAGES:
        parser.error(f"unknown breakage {name!r} in {breakage.ENV}; known: {', '.join(sorted(breakage.BREAKAGES))}")
    with breakage.broken(name):
        if name:
            print(f"NOTE encoder deliberately broken: {breakage.ENV}={name}", flush=True)
        checks = [dataclasses.replace(check, known_issue=KNOWN_ISSUES.get(check.name, ""))
                  for group in groups for check in GROUPS[group]()]
        results = suite.run_checks(checks, sys.stdout)
    if args.results:
        suite.save(results, args.results)
    print(suite.summary(results), flush=True)
    return 0 if suite.ok(results) else 1


if __name__ == "__main__":
    sys.exit(main())
