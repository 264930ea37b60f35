"""etc/hwflow.conf.sample must be what oslo-config-generator makes from the code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hwflow import conf as hwconf

ROOT = Path(__file__).resolve().parents[2]


def test_sample_config_is_current(tmp_path: Path) -> None:
    out = tmp_path / "hwflow.conf.sample"
    subprocess.run(
        [sys.executable, "-m", "oslo_config.generator", "--namespace", "hwflow", "--wrap-width", "79",
         "--output-file", str(out)],
        check=True, capture_output=True,
    )
    committed = (ROOT / "etc" / "hwflow.conf.sample").read_text()
    assert out.read_text() == committed, (
        "etc/hwflow.conf.sample is stale: run "
        "`oslo-config-generator --config-file etc/oslo-config-generator/hwflow.conf` and commit it"
    )


def test_sample_config_parses_to_the_defaults(tmp_path: Path) -> None:
    conf = hwconf.new_conf(["--config-file", str(ROOT / "etc" / "hwflow.conf.sample")])
    assert conf.database.url == "sqlite:////var/lib/hwflow/nb.sqlite"
    assert conf.nic.drivers == ["sim", "mlx5", "ice", "generic"]
    assert conf.offload.ethertypes == ["ipv4", "ipv6"]


def test_a_bad_value_is_refused_with_the_option_named(tmp_path: Path) -> None:
    bad = tmp_path / "bad.conf"
    bad.write_text("[offload]\ntc_policy = sometimes\n")
    conf = hwconf.new_conf(["--config-file", str(bad)])
    with pytest.raises(ValueError, match="sometimes"):
        _ = conf.offload.tc_policy
