"""gc_paused: bulk work without the cyclic collector, and the collector back afterwards."""

import gc
import weakref

import pytest

from hwflow.util.gc import gc_paused


def test_gc_pause_restores_the_collector_even_on_error() -> None:
    assert gc.isenabled()
    with pytest.raises(RuntimeError), gc_paused():
        assert not gc.isenabled()
        raise RuntimeError("boom")
    assert gc.isenabled()
    gc.disable()
    try:
        with gc_paused():
            pass
        assert not gc.isenabled()  # it was off before: left off
    finally:
        gc.enable()


def test_kept_work_is_frozen_and_earlier_garbage_collected_first() -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a cycle: only the collector frees it

    garbage = weakref.ref(Node())
    frozen = gc.get_freeze_count()
    try:
        with gc_paused(keep=True):
            assert garbage() is None  # collected before the rest is frozen: it would leak there
            kept = [Node() for _ in range(100)]
        assert gc.isenabled()
        assert gc.get_freeze_count() >= frozen + len(kept)
    finally:
        gc.unfreeze()
