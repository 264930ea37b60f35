"""The pure-Python parts of the kernel-in-the-loop tier (hil/): results, verdicts, build inputs, breakages.

The VM itself runs in ``bash hil/vm/run`` (CI); these tests pin down how its
output is judged, so that a VM that crashes, hangs or lies can never read as
a pass, and that the deliberate breakages really are invisible to a round
trip through hwflow's own code (which is why the tier needs a real kernel).
"""

from __future__ import annotations

import importlib
import io
import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

suite = importlib.import_module("hil.suite")
boot = importlib.import_module("hil.vm.boot")
build = importlib.import_module("hil.vm.build")
breakage = importlib.import_module("hil.checks.breakage")
rules = importlib.import_module("hil.checks.rules")

from hwflow.backends.tc import flower as fl  # noqa: E402
from hwflow.bench.tc_install import rows, tc_batch_lines  # noqa: E402


def _raise(exc: Exception) -> None:
    raise exc


def test_summary_line_counts_passes_and_failures():
    results = [suite.Result("a", True), suite.Result("b", False, "boom"), suite.Result("c", True)]
    assert suite.summary(results) == "2 passed, 1 failed"
    assert suite.parse_summary("PASS a\nFAIL b: boom\n2 passed, 1 failed\n\n") == (2, 1)


@pytest.mark.parametrize("text", ["", "PASS a\n", "1 passed, 0 failed\nPASS late\n", "3 passed,0 failed"])
def test_output_without_a_final_summary_is_refused(text):
    with pytest.raises(ValueError, match="N passed, N failed"):
        suite.parse_summary(text)


def test_run_checks_keeps_going_after_a_failure_and_says_where():
    out = io.StringIO()
    checks = [
        suite.Check("fails", lambda: _raise(suite.CheckFailed("kernel said no"))),
        suite.Check("crashes", lambda: _raise(KeyError("x"))),
        suite.Check("passes", lambda: None),
    ]
    results = suite.run_checks(checks, out)
    assert [r.passed for r in results] == [False, False, True]
    assert results[0].detail == "kernel said no"
    assert results[1].detail.startswith("KeyError: 'x' at test_hil_tier.py:")
    assert out.getvalue().splitlines()[0].startswith("FAIL fails (")


def test_results_round_trip_through_json(tmp_path):
    results = [suite.Result("a", True, "", 1.5), suite.Result("b", False, "why", 0.1)]
    suite.save(results, tmp_path / "r.json")
    assert suite.load(tmp_path / "r.json") == results
    (tmp_path / "bad.json").write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json"):
        suite.load(tmp_path / "bad.json")


GOOD_LOG = "guest: kernel 6.1\nPASS one (0.1s)\nPASS two (0.2s)\n2 passed, 0 failed\n"


def test_verdict_passes_only_when_log_and_exit_status_agree():
    assert all(r.passed for r in boot.verdict(GOOD_LOG, 1, 60))  # qemu: (0 << 1) | 1
    contradicted = boot.verdict(GOOD_LOG, 3, 60)  # the guest exited 1 but every line says PASS
    assert [r.name for r in contradicted if not r.passed] == ["vm"]


@pytest.mark.parametrize("log,rc,why", [
    ("PASS one (0.1s)\n", 1, "did not finish its suite"),
    (GOOD_LOG, None, "did not stop within"),
    (GOOD_LOG, 0, "without the guest's status"),
    ("", 1, "did not finish"),
])
def test_a_vm_that_crashes_hangs_or_stops_early_fails(log, rc, why):
    results = boot.verdict(log, rc, 60)
    assert not all(r.passed for r in results)
    assert any(why in r.detail for r in results if r.name == "vm")


def test_failed_checks_from_the_guest_are_counted():
    log = "PASS one (0.1s)\nFAIL two (0.3s): iproute2 reads src_mac\n1 passed, 1 failed\n"
    results = boot.verdict(log, 3, 60)
    assert suite.summary(results) == "1 passed, 1 failed"
    assert results[1].detail == "iproute2 reads src_mac"


def test_kernel_abi_comes_from_apt_cache_depends():
    out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n"
    assert build.parse_kernel_abi(out) == "6.1.0-56-amd64"
    with pytest.raises(build.BuildError, match="apt-get update"):
        build.parse_kernel_abi("linux-image-amd64\n")


def test_mirror_is_read_from_one_line_and_deb822_sources():
    one_line = "# comment\ndeb [arch=amd64] http://mirror.example/debian bookworm main\n"
    deb822 = ("Types: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n\n"
              "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n")
    assert build.parse_mirror([one_line]) == "http://mirror.example/debian"
    assert build.parse_mirror([deb822]) == "http://deb.debian.org/debian"
    with pytest.raises(build.BuildError, match="no Debian mirror"):
        build.parse_mirror(["deb http://x/debian trixie main\n"])


def test_qemu_exit_status_carries_the_guests():
    assert [boot.guest_status(rc) for rc in (1, 3, 251, 0, 2)] == [0, 1, 125, None, None]


def _rule(**keys: int) -> fl.FlowerRule:
    protocol = fl.ETH_P_8021Q if "vlan_id" in keys else fl.ETH_P_IP
    return fl.FlowerRule(3, 1, 1, protocol, fl.FlowerKeys(**keys), (fl.Mirred(4),))


@pytest.mark.parametrize("name,keys", [
    ("eth-swap", {"eth_dst": 0x020000000001}),
    ("vlan-byteorder", {"vlan_id": 0x123}),
])
def test_breakages_change_the_bytes_but_survive_hwflows_own_round_trip(name, keys):
    """Why the tier needs a kernel: a shared mistake decodes back to the rule sent."""
    rule = _rule(**keys)
    good = fl.encode_newfilter(rule, 1)
    with breakage.broken(name):
        bad = fl.encode_newfilter(rule, 1)
        decoded, _ = fl.decode_filter(bad)
    assert bad != good
    assert decoded == rule
    assert fl.encode_newfilter(rule, 1) == good  # undone on exit


def test_unknown_breakage_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown breakage 'nope'.*eth-swap"):
        with breakage.broken("nope"):
            pass


def test_every_encoder_key_and_action_has_a_sample_rule():
    samples = rules.all_samples(1, 2)
    assert [s.problem for s in samples if s.rule is None] == []
    covered = {s.name.split()[1] for s in samples if s.name.startswith("key ")}
    assert covered == {spec.field for spec in fl.KEY_SPECS}
    assert len({(s.rule.chain, s.rule.prio) for s in samples}) == len(samples)


def test_a_known_issue_fails_as_xfail_and_its_fix_fails_the_run():
    still_broken = suite.Check("probe", lambda: _raise(suite.CheckFailed("exit 1")), known_issue="issue 5")
    fixed = suite.Check("fixed", lambda: None, known_issue="issue 5")
    out = io.StringIO()
    broken, passing = suite.run_checks([still_broken, fixed], out)
    assert broken.expected_failure and not broken.passed
    assert out.getvalue().startswith("XFAIL probe (")
    assert not passing.passed and "take it off the list" in passing.detail
    assert suite.summary([broken]) == "0 passed, 0 failed" and suite.ok([broken])
    assert not suite.ok([broken, passing])


def test_xfail_lines_from_the_guest_keep_the_run_green():
    log = "PASS one (0.1s)\nXFAIL two (0.3s): known issue: issue 5; exit 1\n1 passed, 0 failed\n"
    results = boot.verdict(log, 1, 60)
    assert suite.ok(results) and suite.summary(results) == "1 passed, 0 failed"
    assert results[1].expected_failure


def test_hw_runner_without_a_nic_says_it_is_skipped():
    proc = subprocess.run(["bash", str(REPO / "hil/hw/run")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0
    assert "skipped: no --pf given" in proc.stdout


def test_hw_runner_refuses_a_device_that_is_not_an_sriov_pf():
    runner = importlib.import_module("hil.hw.runner")
    with pytest.raises(SystemExit) as exc:
        runner.main(["--pf", "lo", "--vfs", "2"])
    assert exc.value.code == 2


def test_hw_runner_needs_two_vfs(capsys):
    runner = importlib.import_module("hil.hw.runner")
    with pytest.raises(SystemExit):
        runner.main(["--pf", "lo", "--vfs", "1"])
    assert "at least 2" in capsys.readouterr().err


def test_prune_keeps_used_and_recent_stages(tmp_path, monkeypatch):
    monkeypatch.setattr(build, "CACHE", tmp_path)
    used, recent, stale = (tmp_path / n for n in ("kernel-a", "rootfs-new", "rootfs-old"))
    for path in (used, recent, stale):
        path.mkdir()
    old = 0.0  # 1970: older than any cutoff
    os.utime(used, (old, old))
    os.utime(stale, (old, old))
    build.prune({used})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kernel-a", "rootfs-new"]
    assert used.stat().st_mtime > old  # touched: in use


def test_the_tc_batch_lines_are_the_rules_hwflow_sends():
    """The VM bench compares like with like: line i names rule i's prio, handle and address."""
    values = rows(0, 250)
    lines = tc_batch_lines("in0", "out0", 0, 250)
    for i in (0, 99, 100, 249):
        prio, handle, address = values[3 * i:3 * i + 3]
        words = lines[i].split()
        assert words[words.index("prio") + 1] == str(prio) and words[words.index("handle") + 1] == str(handle)
        assert words[words.index("dst_ip") + 1] == str(ipaddress.ip_address(address))
        assert "skip_hw" in words and words[-1] == "out0"
