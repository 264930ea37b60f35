"""hwflow's NIC drivers (import name ``hwflow_drivers``): what each host NIC can offload, and why not.

A driver is a :class:`hwflow.offload.nic.NicDriver` (the contract is
hwflow's: drivers import it, hwflow imports no driver) registered under the
stevedore entry-point group ``hwflow.nic_drivers``; ``[nic] drivers`` names
the ones asked, in order, and the first whose ``describe(dev)`` returns a
report wins. In-tree: ``sim`` (simulated NICs), ``mlx5`` (ConnectX-5/6 Dx/7,
BlueField-2/3), ``ice`` (E810) and ``generic`` (any switchdev NIC, learning by
active probing; it claims every device, so it goes last).

A third-party driver is a package of its own that declares, e.g. in its
pyproject.toml::

    [project.entry-points."hwflow.nic_drivers"]
    acme = "hwflow_acme_nic:AcmeDriver"

and needs nothing changed in hwflow (tests/unit/fixtures/oot_driver is one).
A vendor driver usually subclasses :class:`hwflow_drivers.base.FamilyDriver`:
its kernel driver names, and one :class:`~hwflow_drivers.base.Family` per
device family with the :class:`hwflow.offload.capabilities.Capabilities` the
family has, each fact commented with the public document it comes from, and
the NIC profile (etc/nic-profiles) that makes the simulated NIC behave alike.
"""
