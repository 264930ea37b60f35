"""OpenStack Neutron integration (issue 17): Neutron's API mapped onto hwflow's NB database.

Only this package imports Neutron; it is installed with the ``neutron`` extra (``pip install
'hwflow[neutron]'``) and the agent never imports it. Point a Neutron server at hwflow with, in its
configuration, ``[ml2] mechanism_drivers = hwflow``, ``extension_drivers = port_security`` and
``[hwflow] database = <the agents' [database] url>``; for an etcd closed to strangers (doc/security.rst)
``[hwflow]`` also takes ``[database]``'s ca_file, cert_file, key_file, username and password (an
operator's user, e.g. hwflow-admin: Neutron writes the whole logical network).

What exists:

- ``mech_driver.HwflowMechanismDriver`` (entry point ``neutron.ml2.mechanism_drivers: hwflow``): networks,
  subnets and ports on their postcommit, security groups and rules on Neutron's callbacks, created,
  updated and deleted in hwflow's database through ``NbApi``; each checked in its precommit, so Neutron
  refuses with hwflow's reason what hwflow's model cannot hold, and a network's VNI or VLAN that hwflow's
  database gives a network Neutron does not know (made with ``hwflow nb``) is a 409 naming it.
- ``l3_plugin.HwflowL3RouterPlugin`` (entry point ``neutron.service_plugins: hwflow_l3``; it needs the mechanism
  driver, whose database and write path it uses): Neutron's L3 database mixins keep Neutron's side (as
  networking-ovn's and Dragonflow's L3 plugins); routers, router interfaces and floating IPs are written
  from Neutron's after-commit callbacks, checked in its precommit (or before) callbacks. A router's
  interface port is hwflow's RouterPort of the same id (a VM port attached by its id stops being a hwflow
  Port), its gateway port is the router's gateway network and address (the IPv4 one) with SNAT on or off,
  a floating IP's port is the FloatingIP (address, associated port and fixed address); a floating IP is
  ACTIVE in Neutron once written while associated, DOWN while not, and a router's ports ACTIVE once
  written (as networking-ovn sets them).
- Consistency (``sync``, ``maintenance``, ``hwflow neutron-sync``): every object written carries Neutron's
  ``revision_number`` as its ``external_revision``, written only over an older one (compare-and-swap on
  what was read), so two servers racing never put an older state over a newer (networking-ovn's revision
  check; ``sync``'s docstring says why no networking-odl journal); ``sync.compare`` lists what hwflow
  lacks, holds with other values or holds that Neutron has not, ``sync.repair`` writes hwflow's side.
  A thread in each API worker does both when it starts (a restarted server repairs what it missed) and
  every ``[hwflow] sync_interval`` seconds (300, as OVN's maintenance task; 0 = none), and 2 s after a write
  of the driver failed (then backing off while rounds fail), reading Neutron through its plugins;
  ``hwflow neutron-sync [--dry-run]`` does them through Neutron's API (openstacksdk) and reports. Objects
  of ``external_revision`` 0 (made with ``hwflow nb``) are not Neutron's: never reported, never deleted.
- ``mapping``: the field mapping. Network: one segment of type vxlan/geneve (VNI) or vlan/flat
  (physical network, VLAN id), MTU, ``router:external``, admin state. Subnet: CIDR, gateway, DHCP enabled,
  allocation pools, DNS servers, host routes. Port: MAC, fixed IPs, device owner, admin state, port security,
  security groups (with port security and none, hwflow's group of no rule ``neutron-drop-all``: Neutron drops
  all such a port's IP, hwflow filters only a port in some group), allowed address pairs, extra DHCP options
  (``extra_dhcp_opts``: the agent serves the IPv4 ones, the IPv6 ones are stored only), binding host as
  chassis (the chassis registered under that
  name or hostname, else the host name, which is an agent's default chassis name). Security group:
  name, description; rule: direction, ethertype, protocol, port range or ICMP type/code, remote prefix
  or remote group.
- ``binding`` and ``status``: ``bind_port`` binds vnic_type ``normal``, and ``direct`` with ``switchdev`` in
  the binding profile's capabilities (a VF of a NIC in switchdev mode), as ``vif_type ovs`` (networking-ovn's
  way: os-vif plugs the tap or the VF's representor into the integration bridge) to the host's chassis
  when its agent's lease holds and, for ``direct``, it reports an offload device that can redirect;
  otherwise Neutron shows ``binding_failed`` and its log the reason (no agent for the host, a dead one,
  a NIC that cannot offload, a legacy SR-IOV VF, another vnic type). A direct port on a host that cannot
  offload is refused, not bound ``normal``: Nova has given the VM a VF already. Each agent reports the
  ports it has programmed (``NbApi.report_ports``: a key ``port_status/CHASSIS/PORT`` each, the agent's
  etcd role writes its own prefix only); a watcher thread in each API worker completes a port's L2
  provisioning block when some chassis reports it up (Neutron makes a bound port ACTIVE) and puts the
  block back and sets DOWN when none does (at its start, too, for a port ACTIVE that no chassis reports),
  as networking-ovn does from its southbound database. A port whose admin state, or its network's, is down
  carries no traffic and is not reported (Neutron shows it DOWN, as with ML2/OVS). The driver
  adds the block when a port is bound to a new host. ``hwflow nb port list`` shows the status.

What Neutron has and hwflow's model does not (not written; a later change to the model may add them):
the binding profile but its ``switchdev`` capability; networks of several segments; the ``local`` and ``gre`` types;
subnet IPv6 address/RA modes, subnet pools, service types and segments; security
group statefulness, sharing and rule descriptions; address groups (a rule naming one is refused);
QoS, trunks, port DNS names. Routers: admin state, HA, distributed and availability zone flags,
flavors, the gateway's addresses but one (hwflow's SNAT goes out as each chassis's external_ip, not as the
gateway's address); an interface of several addresses (Neutron's IPv6 subnets of one network on one port)
is refused. Floating IPs: QoS, port forwardings, DNS.

A server's update of an object hwflow lacks creates it only if Neutron has it when asked, and asks again once
written (``sync.put_newer``): another server's delete in between does not leave it in hwflow.

Facts the next steps build on: Neutron 29 has no ``neutron-server``; its API is the WSGI application
``neutron.wsgi.api:application`` (configuration from ``OS_NEUTRON_CONFIG_DIR``/``OS_NEUTRON_CONFIG_FILES``),
served here by uWSGI. A postcommit that raises makes ML2 answer 500 (a create is undone, an update or a
delete stays in Neutron), except a port's update or delete, which ML2 only logs (200/204): hwflow's reason is
only in Neutron's log. A security group callback that raises
after the commit (``AFTER_*``) is logged and the request succeeds: hwflow's copy is then behind, which the
repair catches (``sync``); so is a router's, an interface's or a floating IP's write (the L3 plugin's are
all after-commit callbacks). Deleting a group drops the other groups' rules naming it as remote group
without an event for them (the driver sweeps them). Neutron's schema on sqlite comes from its models, not its
migrations, so rows the migrations insert (the default security group rule templates) are added by hand
(tests/functional/neutron_server.py). The status watcher is a thread of the API worker, started on
``PROCESS AFTER_INIT`` (published by ``neutron.server.api.api_server`` in the worker, uWSGI's
``--lazy-apps``); uWSGI 2.0.31 runs a worker's Python threads without ``--enable-threads`` (its log says
"python threads support enabled"). ``binding:profile`` is the service role's (Nova's) by Neutron's
policy; the test server's policy.yaml lets its admin set it. On sqlite, Neutron's requests and the
watcher's status writes can find the database locked (a test waits for a port's status before deleting it).
``extra_dhcp_opt`` is an extension ML2 itself supports (its plugin class mixes in Neutron's
``ExtraDhcpOptMixin``), not an extension driver: ``extension_drivers`` need not name it, and the port dict a
precommit sees already holds the options (an option whose value is null is dropped, not stored).
"""
