"""``hwflow nb chassis list``: "alive" from the liveness lease and the record's up, "registered" from heartbeat_at."""

from __future__ import annotations

import argparse
import json
import time

import pytest

from hwflow.cli import nb
from hwflow.cli.common import load_conf
from hwflow.db import NbApi
from hwflow.model import Chassis


@pytest.fixture
def url(tmp_path) -> str:
    return f"sqlite:///{tmp_path}/nb.sqlite"


def chassis_list(url: str, capsys: pytest.CaptureFixture[str], *options: str) -> str:
    parser = argparse.ArgumentParser(prog="hwflow")
    nb.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["nb", "chassis", "list", *options, "--database", url])
    assert args.func(args, load_conf(args)) == 0
    return capsys.readouterr().out


def test_alive_is_the_lease_unless_the_agent_marked_the_chassis_down(url, capsys):
    with NbApi.from_url(url) as api:
        api.put_chassis(Chassis(name="h1", tunnel_ip="192.0.2.1", up=True, heartbeat_at=time.time() - 300))
        api.put_chassis(Chassis(name="h2", tunnel_ip="192.0.2.2", up=True))
        api.heartbeat("h1", ttl=60)
        alive = {c["name"]: c["alive"] for c in json.loads(chassis_list(url, capsys, "--format", "json"))}
        assert alive == {"h1": True, "h2": False}  # h2: no lease (its agent died, or never reported)

        api.put_chassis(Chassis(name="h1", tunnel_ip="192.0.2.1", up=False, heartbeat_at=time.time()))
        assert api.alive_chassis() == {"h1"}  # the lease outlives a clean stop by up to its ttl ...
        listed = json.loads(chassis_list(url, capsys, "--format", "json"))
        assert [c["alive"] for c in listed] == [False, False]  # ... but the agent said it stopped


def test_the_table_says_when_the_record_was_registered(url, capsys):
    with NbApi.from_url(url) as api:
        api.put_chassis(Chassis(name="h1", tunnel_ip="192.0.2.1", up=True, heartbeat_at=time.time() - 300))
        api.put_chassis(Chassis(name="h2", tunnel_ip="192.0.2.2", up=True))
    out = chassis_list(url, capsys)
    assert "REGISTERED" in out.splitlines()[0] and "HEARTBEAT" not in out
    assert "5m ago" in out and "never" in out


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s ago"), (59, "59s ago"), (60, "1m ago"), (3599, "59m ago"),
                                               (7200, "2h ago"), (86400 * 3 + 5, "3d ago"), (-4, "0s ago")])
def test_ages(seconds, text):
    assert nb._ago(seconds) == text
