"""The working directory a benchmark that starts daemons runs in, and its cleanup.

Its logs, config and database are worth reading after a failure, so they stay then (and where is said);
after a success they go unless the run asked to keep them. SIGTERM (a CI job cancelled, ``timeout``) is
made Ctrl-C while the benchmark runs, so that its own cleanup (daemons, namespaces) runs too.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from hwflow.bench import Progress


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM as Ctrl-C while the bench runs (a signal handler can only be set in the main thread)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_in_workdir(prefix: str, keep: bool, progress: Progress,
                   body: Callable[[Path], dict[str, float]]) -> dict[str, float]:
    """``body``'s results, run in a fresh directory that is removed after a success unless ``keep``."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))  # keep prefix short: AF_UNIX paths are limited to 108 bytes
    ok = False
    try:
        with _sigterm_interrupts():
            results = body(workdir)
        ok = True
        return results
    finally:
        if ok and not keep:
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            progress(f"logs, config and database left in {workdir}")
