"""The software datapath: Open vSwitch through OVSDB (ovsdbapp) and OpenFlow 1.3 (os-ken messages).

daemons: private ovsdb-server/ovs-vswitchd for tests and the demo; ovsdb: the
bridge and its bound ports; openflow: hwflow's own OpenFlow session; translate:
IR -> flow_mods and canonical keys; backend: the desired-state sync.
"""
