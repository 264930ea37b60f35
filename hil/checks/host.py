"""Setting up the test network with iproute2, and reading it back: the scaffolding, not the subject.

The rules under test always go in through hwflow; ``ip``, ``tc`` and
``devlink`` only build the stage (namespaces, veths, qdiscs, netdevsim) and
give an independent reading of what the kernel holds.
"""

from __future__ import annotations

import json
import socket
import subprocess
from pathlib import Path
from typing import Any

from hil.suite import CheckFailed


def sh(*cmd: str, check: bool = True, timeout: float = 60.0) -> str:
    """Run a command; a failure names the command and what it printed."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode:
        raise CheckFailed(f"`{' '.join(cmd)}` exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
    return proc.stdout


def tc_json(*args: str) -> list[dict[str, Any]]:
    """``tc -j ARGS``: iproute2's own decoding of what the kernel holds."""
    out = sh("tc", "-j", *args)
    return json.loads(out) if out.strip() else []


def ifindex(name: str) -> int:
    return socket.if_nametoindex(name)


def mac_of(name: str, netns: str | None = None) -> int:
    path = f"/sys/class/net/{name}/address"
    text = sh("ip", "netns", "exec", netns, "cat", path) if netns else Path(path).read_text(encoding="utf-8")
    return int(text.strip().replace(":", ""), 16)


def veth(name: str, peer: str, peer_netns: str | None = None) -> None:
    """A veth pair, both ends up; the peer optionally moved into a namespace."""
    sh("ip", "link", "add", name, "type", "veth", "peer", "name", peer)
    if peer_netns:
        sh("ip", "link", "set", peer, "netns", peer_netns)
        sh("ip", "-n", peer_netns, "link", "set", peer, "up")
    else:
        sh("ip", "link", "set", peer, "up")
    sh("ip", "link", "set", name, "up")


def clsact(name: str) -> None:
    sh("tc", "qdisc", "replace", "dev", name, "clsact")


def delete_link(name: str) -> None:
    sh("ip", "link", "del", name, check=False)
