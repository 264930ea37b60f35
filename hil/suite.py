"""Checks, their results, and the one-line summary both runners end with.

Pure Python with no hwflow import, so the host side (which only reads what
the VM wrote) and the unit tests can use it. A check is a named callable;
it passes by returning and fails by raising, with a message that says what
the kernel or the device did instead.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
import traceback
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TextIO

SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")


class CheckFailed(AssertionError):
    """What a check saw that it should not have."""


@dataclasses.dataclass(frozen=True)
class Check:
    """A named check; ``known_issue`` names a defect elsewhere that makes it fail today (strict: see Result)."""

    name: str
    run: Callable[[], None]
    known_issue: str = ""


@dataclasses.dataclass(frozen=True)
class Result:
    """One check's outcome. ``expected_failure``: it failed for its known issue (XFAIL), counted in
    neither number of the summary; a known-issue check that passes is a failure, so the list of
    known issues cannot outlive the defects."""

    name: str
    passed: bool
    detail: str = ""
    seconds: float = 0.0
    expected_failure: bool = False

    def line(self) -> str:
        status = "XFAIL" if self.expected_failure else "PASS" if self.passed else "FAIL"
        detail = f": {self.detail}" if self.detail else ""
        return f"{status} {self.name} ({self.seconds:.1f}s){detail}"


def summary(results: Sequence[Result]) -> str:
    passed = sum(r.passed for r in results)
    failed = sum(not r.passed and not r.expected_failure for r in results)
    return f"{passed} passed, {failed} failed"


def ok(results: Sequence[Result]) -> bool:
    """Every check passed, or failed only for its known issue."""
    return all(r.passed or r.expected_failure for r in results)


def parse_summary(text: str) -> tuple[int, int]:
    """(passed, failed) from the last non-empty line, which must be the summary.

    Raises ValueError otherwise: output that stops early (a crashed VM, a
    killed runner) must never read as success.
    """
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    match = SUMMARY.match(lines[-1]) if lines else None
    if match is None:
        last = lines[-1] if lines else "<no output>"
        raise ValueError(f"output does not end with 'N passed, N failed' (last line: {last!r})")
    return int(match.group(1)), int(match.group(2))


def run_checks(checks: Iterable[Check], out: TextIO) -> list[Result]:
    """Run every check, even after a failure, printing one line per check as it ends."""
    results = []
    for check in checks:
        started = time.monotonic()
        try:
            check.run()
        except CheckFailed as exc:
            result = Result(check.name, False, str(exc), time.monotonic() - started)
        except Exception as exc:  # noqa: BLE001 - an unexpected error is a failed check, with its origin
            where = traceback.extract_tb(exc.__traceback__)[-1]
            origin = f" at {Path(where.filename).name}:{where.lineno}"
            result = Result(check.name, False, f"{type(exc).__name__}: {exc}{origin}", time.monotonic() - started)
        else:
            result = Result(check.name, True, "", time.monotonic() - started)
        if check.known_issue:
            result = _against_known_issue(result, check.known_issue)
        print(result.line(), file=out, flush=True)
        results.append(result)
    return results


def _against_known_issue(result: Result, issue: str) -> Result:
    if result.passed:
        return dataclasses.replace(result, passed=False, detail=f"passes now, but is listed with the known issue "
                                                                f"{issue!r}: take it off the list")
    return dataclasses.replace(result, expected_failure=True, detail=f"known issue: {issue}; {result.detail}")


def save(results: Sequence[Result], path: Path) -> None:
    path.write_text(json.dumps([dataclasses.asdict(r) for r in results], indent=1), encoding="utf-8")


def load(path: Path) -> list[Result]:
    """Results a runner saved; a missing or malformed file is a ValueError naming it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return [Result(**item) for item in data]
    except (OSError, ValueError, TypeError) as exc:
        raise ValueError(f"results file {path}: {exc}") from exc
