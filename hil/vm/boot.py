"""Host side of the VM tier: build (cached), share hwflow in, boot qemu (TCG), report what the guest saw.

The guest's verdict travels two ways that must agree: its exit status
through isa-debug-exit (qemu exits ``(status << 1) | 1``) and the check
lines it writes into the shared folder. A VM that hangs, panics or never
writes its summary is a failure, never a pass.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent))

from hil import suite  # noqa: E402 - the repo root goes on sys.path first
from hil.vm import build  # noqa: E402

DEFAULT_TIMEOUT = 480.0  # seconds for the VM (a run takes ~200 s); with a cold build, within CI's 15 minutes


def qemu_command(vmlinuz: Path, initrd: Path, share: Path, console: Path) -> list[str]:
    """TCG (KVM hangs after the BIOS on these machines), a RAM root, a 9p share, isa-debug-exit."""
    return [
        "qemu-system-x86_64", "-accel", "tcg,thread=multi", "-cpu", "max", "-smp", "2", "-m", "2048",
        "-kernel", str(vmlinuz), "-initrd", str(initrd),
        # no_timer_check: under TCG on a loaded host the IO-APIC timer check can fail and panic the boot.
        "-append", "console=ttyS0 panic=-1 quiet loglevel=4 no_timer_check",
        "-no-reboot", "-nic", "none", "-display", "none", "-vga", "none", "-monitor", "none",
        "-serial", f"file:{console}",
        "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
        "-virtfs", f"local,path={share},mount_tag=host,security_model=none,id=host",
    ]


def guest_status(qemu_rc: int) -> int | None:
    """The guest's exit status from qemu's, or None when the guest never reported one."""
    if qemu_rc % 2 == 1:
        return qemu_rc >> 1
    return None


def prepare_share(share: Path, wheel: Path, python: Path, only: str, breakage: str | None) -> None:
    """hwflow (from its wheel), the hil package and the guest script, for /mnt/host in the VM."""
    build.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--no-deps",
               "--target", share / "site", wheel])
    # pip --target has no prefix for data_files: put them where a source checkout has them (etc/),
    # which hwflow.conf.files.shipped() looks at first.
    shutil.copytree(share / "site" / "share" / "hwflow", share / "site" / "etc")
    shutil.copytree(HERE.parent, share / "hil", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(HERE / "guest.sh", share / "guest.sh")
    lines = [f"HIL_ONLY='{only}'"]
    if breakage:
        lines.append(f"export HWFLOW_HIL_BREAK='{breakage}'")
    (share / "env").write_text("\n".join(lines) + "\n", encoding="utf-8")


def boot(cmd: Sequence[str], timeout: float) -> tuple[int | None, float]:
    """Run qemu; (its exit status or None on timeout, seconds). A VM past its time is killed."""
    started = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL)
    try:
        rc: int | None = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = None
    return rc, time.monotonic() - started


def verdict(guest_log: str, qemu_rc: int | None, timeout: float) -> list[suite.Result]:
    """The guest's check results, plus a failure for anything that went wrong around them."""
    results = []
    for line in guest_log.splitlines():
        status, _, rest = line.partition(" ")
        if status in ("PASS", "FAIL", "XFAIL"):
            name, _, detail = rest.partition(": ") if status != "PASS" else (rest, "", "")
            results.append(suite.Result(name, status == "PASS", detail, expected_failure=status == "XFAIL"))
    problems = []
    try:
        suite.parse_summary(guest_log)
    except ValueError as exc:
        problems.append(f"the guest did not finish its suite: {exc}")
    if qemu_rc is None:
        problems.append(f"the VM did not stop within {timeout:g}s and was killed")
    else:
        status = guest_status(qemu_rc)
        if status is None:
            problems.append(f"qemu exited {qemu_rc} without the guest's status (panic, or a crash before /init)")
        elif results and (status == 0) != suite.ok(results):
            problems.append(f"the guest's exit status {status} contradicts its check lines")
    if not results and not problems:
        problems.append("the guest ran no checks")
    results.extend(suite.Result("vm", False, p) for p in problems)
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hil/vm/run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="flower,packets,actions,netdevsim,bench,selftest",
                        help="comma-separated check groups (flower, packets, actions, netdevsim, bench, selftest)")
    parser.add_argument("--break", dest="breakage", metavar="NAME",
                        default=os.environ.get("HWFLOW_HIL_BREAK") or None,
                        help="run with a deliberately broken encoder (eth-swap, vlan-byteorder): must fail")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds the VM may run")
    parser.add_argument("--keep", action="store_true", help="keep the run directory (console.log, guest.log)")
    args = parser.parse_args(argv)
    python = Path(sys.executable)
    work = Path(tempfile.mkdtemp(prefix="hwflow-vm-"))
    started = time.monotonic()
    try:
        try:
            vm = build.build(python, work)
        except build.BuildError as exc:
            print(f"hil/vm/run: build failed: {exc}", file=sys.stderr)
            print(suite.summary([suite.Result("build", False, str(exc))]))
            return 1
        built = time.monotonic()
        share = work / "share"
        prepare_share(share, Path(vm["wheel"]), python, args.only, args.breakage)
        print(f"hil/vm/run: kernel {vm['abi']}; built in {built - started:.0f}s; booting qemu (TCG)", flush=True)
        command = qemu_command(Path(vm["vmlinuz"]), Path(vm["initrd"]), share, work / "console.log")
        qemu_rc, seconds = boot(command, args.timeout)
        if qemu_rc is not None and not (share / "guest.log").exists():
            # The guest never reached /init's script: a boot flake, not a check result. Once more.
            print(f"hil/vm/run: the VM stopped before running anything (qemu {qemu_rc}); booting once more")
            qemu_rc, seconds = boot(command, args.timeout)
        log_path = share / "guest.log"
        guest_log = log_path.read_text(encoding="utf-8", errors="replace") if log_path.exists() else ""
        results = verdict(guest_log, qemu_rc, args.timeout)
        for line in guest_log.splitlines():
            if not suite.SUMMARY.match(line.strip()):
                print(f"  | {line}")
        for result in results:
            if result.name == "vm":
                print(result.line())
        if any(r.name == "vm" for r in results):
            console = (work / "console.log").read_text(encoding="utf-8", errors="replace")
            print("hil/vm/run: the VM's console ends with:\n" + "\n".join(console.splitlines()[-30:]))
        kept = f"; run directory {work}" if args.keep else ""
        print(f"hil/vm/run: VM ran {seconds:.0f}s; total {time.monotonic() - started:.0f}s{kept}")
        known = [r for r in results if r.expected_failure]
        if known:
            print(f"hil/vm/run: {len(known)} known failure(s), each waiting on a change outside hil/ "
                  "(hil/checks/known.py)")
        print(suite.summary(results))
        return 0 if suite.ok(results) else 1
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
