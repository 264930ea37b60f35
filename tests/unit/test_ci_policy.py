"""CI cannot pass by accident: with HWFLOW_NO_SKIP=1 a skip (runtime, marker or whole module), an xfail and an
XPASS each fail the run (tests/conftest.py)."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

PROBES = '''
import pytest

@pytest.mark.xfail(reason="x")
def test_xpass():
    pass

@pytest.mark.xfail(reason="y")
def test_xfail():
    assert False

def test_skip():
    pytest.skip("runtime")

@pytest.mark.skipif(True, reason="marker")
def test_marked():
    pass

def test_plain():
    pass
'''


def _run(tmp_path: pathlib.Path, no_skip: bool) -> str:
    env = {**os.environ, "HWFLOW_NO_SKIP": "1" if no_skip else "0", "CI": ""}
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rA", "--continue-on-collection-errors",
               str(tmp_path)]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    return done.stdout


def test_skips_and_xfails_fail_only_when_every_test_must_run(tmp_path):
    shutil.copy(pathlib.Path(__file__).parents[1] / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_probes.py").write_text(PROBES)
    (tmp_path / "test_module_skip.py").write_text('import pytest\npytest.skip("module", allow_module_level=True)\n')
    strict = _run(tmp_path, no_skip=True)
    for test in ("test_xpass", "test_xfail", "test_skip"):
        assert f"FAILED test_probes.py::{test}" in strict, strict
    assert "ERROR test_probes.py::test_marked" in strict, strict  # a skip marker acts at setup
    assert "PASSED test_probes.py::test_plain" in strict
    assert "ERROR test_module_skip.py" in strict
    relaxed = _run(tmp_path, no_skip=False)
    assert "FAILED" not in relaxed and "ERROR" not in relaxed, relaxed
