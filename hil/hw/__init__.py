"""The hardware tier: ``hil/hw/run`` on a host with a real switchdev NIC (see README.rst)."""
