"""Checks that fail today because of a defect outside hil/, each with what must change and where.

A listed check that fails is reported as XFAIL (not counted as failed); one
that passes is a failure, so an entry must be removed as soon as its defect
is fixed. Keep this list short and every entry actionable.
"""

from __future__ import annotations

KNOWN_ISSUES: dict[str, str] = {}
