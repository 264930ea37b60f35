"""gc_paused: bulk work without the cyclic collector, and the collector back afterwards."""

import gc

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
