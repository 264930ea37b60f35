"""A benchmark's working directory: gone after a success, left (and named) after a failure or when kept."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from hwflow.bench.workdir import run_in_workdir


def _writes_a_log(seen: list[Path]):
    def body(workdir: Path) -> dict[str, float]:
        seen.append(workdir)
        (workdir / "agent.log").write_text("started\n")
        return {"x": 1.0}
    return body


def test_success_removes_the_directory_and_returns_the_results() -> None:
    seen: list[Path] = []
    said: list[str] = []
    assert run_in_workdir("hwt-", False, said.append, _writes_a_log(seen)) == {"x": 1.0}
    assert not seen[0].exists()
    assert said == []


def test_keep_leaves_the_directory_and_says_where(tmp_path: Path) -> None:
    seen: list[Path] = []
    said: list[str] = []
    run_in_workdir("hwt-", True, said.append, _writes_a_log(seen))
    try:
        assert (seen[0] / "agent.log").read_text() == "started\n"
        assert said == [f"logs, config and database left in {seen[0]}"]
    finally:
        (seen[0] / "agent.log").unlink()
        seen[0].rmdir()


def test_a_failure_leaves_the_directory_for_its_logs() -> None:
    seen: list[Path] = []
    said: list[str] = []

    def fails(workdir: Path) -> dict[str, float]:
        seen.append(workdir)
        raise RuntimeError("the agent never came up")

    with pytest.raises(RuntimeError, match="never came up"):
        run_in_workdir("hwt-", False, said.append, fails)
    try:
        assert seen[0].is_dir()
        assert said == [f"logs, config and database left in {seen[0]}"]
    finally:
        seen[0].rmdir()


def test_sigterm_interrupts_the_body_and_is_restored_after() -> None:
    assert threading.current_thread() is threading.main_thread()
    before = signal.getsignal(signal.SIGTERM)
    seen: list[Path] = []

    def terminated(workdir: Path) -> dict[str, float]:
        seen.append(workdir)
        os.kill(os.getpid(), signal.SIGTERM)
        signal.pause()  # not reached: the handler raises first
        return {}

    with pytest.raises(KeyboardInterrupt, match=f"signal {signal.SIGTERM}"):
        run_in_workdir("hwt-", False, lambda _text: None, terminated)
    try:
        assert signal.getsignal(signal.SIGTERM) is before
    finally:
        seen[0].rmdir()
