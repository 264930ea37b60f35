"""hwflow: a hardware-offload-aware local SDN controller for SmartNIC hosts."""

__version__ = "0.1.0"
