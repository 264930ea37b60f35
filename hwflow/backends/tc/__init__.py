"""tc-flower: netlink encoding (flower, netlink), transports and the client (transport)."""
