"""The VM tier: a stock Debian kernel under qemu, built and booted by ``hil/vm/run``."""
