"""Kernel and hardware in the loop: the same checks against a stock kernel in a VM or a real NIC."""
