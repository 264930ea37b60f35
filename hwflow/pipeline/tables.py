"""Table numbers of the skeleton pipeline.

A fixed layout for now; the datapath layout graph (etc/datapath_layout.yaml)
will allocate these automatically once apps declare entry and exit points.
"""

CLASSIFY = 0  # in_port -> the port's logical network in `metadata`
L2_LOOKUP = 10  # (network, eth_dst) -> output port(s)

NAMES = {CLASSIFY: "classify", L2_LOOKUP: "l2_lookup"}
