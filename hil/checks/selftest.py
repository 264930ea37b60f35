"""The tier tests itself: with a deliberately broken encoder, the checks must fail.

Each breakage in :mod:`hil.checks.breakage` is a mistake the encoder and the
decoder share, which a round trip through hwflow's own code (the simulated
NIC) cannot see. The suite is run again in a child process with the
breakage applied; the check passes only when that run reports failures,
among them the checks named here, and exits non-zero.
"""

from __future__ import annotations

import os
import subprocess
import sys

from hil.checks.breakage import ENV
from hil.suite import Check, CheckFailed, parse_summary

# breakage -> (groups to run, check names that must fail)
EXPECTED = {
    "eth-swap": (("flower", "packets"), ("flower key eth_dst", "packets L2 unicast redirect")),
    "vlan-byteorder": (("flower",), ("flower key vlan_id",)),
}


def run_broken(name: str) -> None:
    groups, must_fail = EXPECTED[name]
    env = dict(os.environ, **{ENV: name})
    proc = subprocess.run([sys.executable, "-m", "hil.checks", "--only", ",".join(groups)],
                          capture_output=True, text=True, env=env, timeout=600)
    try:
        passed, failed = parse_summary(proc.stdout)
    except ValueError as exc:
        raise CheckFailed(f"the broken run ({ENV}={name}) gave no summary: {exc}; "
                          f"stderr: {proc.stderr[-500:]}") from exc
    failing = [line for line in proc.stdout.splitlines() if line.startswith("FAIL ")]
    missed = [m for m in must_fail if not any(line.startswith(f"FAIL {m}") for line in failing)]
    if failed == 0 or proc.returncode == 0 or missed:
        raise CheckFailed(f"with {ENV}={name} the suite reported {passed} passed, {failed} failed "
                          f"(exit {proc.returncode}); these should have failed but did not: {missed}")


def checks() -> list[Check]:
    return [Check(f"tier catches a broken encoder ({name})", lambda n=name: run_broken(n)) for name in EXPECTED]
