"""Run Python code with its sockets in another network namespace.

A lab's database listens inside the lab's own namespace (nothing of the
machine's own network is touched), so code in the root namespace that talks
to it (the ``hwflow lab`` commands, tests) runs that part in a thread that
entered the namespace: ``setns(2)`` moves only the calling thread, and every
socket the thread opens from then on lives in the namespace.
"""

from __future__ import annotations

import ctypes
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")

T = TypeVar("T")


def enter(ns: str) -> None:
    """Move the calling thread into network namespace ``ns`` (as ``ip netns exec`` does for a process)."""
    path = NETNS_DIR / ns
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if ctypes.CDLL(None, use_errno=True).setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot enter network namespace {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in(ns: str, func: Callable[[], T]) -> T:
    """``func()`` run in a thread of its own inside ``ns``; its result, or its exception raised here."""
    result: list[T] = []
    failure: list[BaseException] = []

    def body() -> None:
        try:
            enter(ns)
            result.append(func())
        except BaseException as exc:  # handed to the caller's thread
            failure.append(exc)

    thread = threading.Thread(target=body, name=f"netns-{ns}", daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return result[0]
