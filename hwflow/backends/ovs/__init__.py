"""The software datapath: Open vSwitch through OVSDB (ovsdbapp) and OpenFlow 1.3 (os-ken messages).

daemons: private ovsdb-server/ovs-vswitchd for tests and the demo; ovsdb: the
bridge and its bound ports; openflow: hwflow's own OpenFlow session; translate:
IR -> flow_mods (os-ken objects, the reference) or program words for the
batch encoder, and canonical keys; native: the batch encoder (C through cffi,
os-ken as fallback); backend: the desired-state sync.
"""
