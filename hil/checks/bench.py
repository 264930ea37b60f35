"""Issue 6's tc-install figures on a real kernel: hwflow's native batch against ``tc -batch``, same rules.

Printed as a ``BENCH`` line (the VM runner echoes the guest's log); the
check fails only when a rule is refused or missing from the dump, since the
rates follow the host's load (TCG on a shared machine).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from hil.checks import host
from hil.suite import Check, CheckFailed
from hwflow.bench.tc_install import kernel_vs_tc_batch

RULES = 2000
DEV, OUT = "hilbench0", "hilbench1"


def measure() -> None:
    host.delete_link(DEV)
    host.veth(DEV, OUT)
    host.clsact(DEV)
    try:
        with tempfile.TemporaryDirectory(prefix="hil-bench-") as work:
            figures = kernel_vs_tc_batch(DEV, OUT, RULES, Path(work))
    finally:
        host.delete_link(DEV)
    print(f"BENCH tc-install into the kernel's flower ({host.sh('uname', '-r').strip()}, TCG): "
          + ", ".join(f"{k}={v}" for k, v in figures.items()), flush=True)
    if figures["refused"] or figures["verified"] != RULES:
        raise CheckFailed(f"{figures['refused']} refused, {figures['verified']} of {RULES} dumped: {figures}")


def checks() -> list[Check]:
    return [Check(f"bench {RULES} rules: hwflow native batch vs tc -batch", measure)]
