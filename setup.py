"""hwflow: a hardware-offload-aware local SDN controller for SmartNIC hosts."""

from glob import glob

from setuptools import find_packages, setup

setup(
    name="hwflow",
    version="0.1.0",
    description="Hardware-offload-aware local SDN controller for SmartNIC hosts",
    long_description=open("README.rst", encoding="utf-8").read(),
    long_description_content_type="text/x-rst",
    python_requires=">=3.11",
    # The vendor NIC drivers live in drivers/ but import as hwflow_drivers,
    # so they never collide with another project's top-level "drivers".
    packages=find_packages(include=["hwflow", "hwflow.*"]) + ["hwflow_drivers"],
    package_dir={"hwflow_drivers": "drivers"},
    # Installed copies of etc/ for non-editable installs (hwflow.sim.profile looks here too).
    data_files=[
        ("share/hwflow/nic-profiles", sorted(glob("etc/nic-profiles/*.json"))),
        ("share/hwflow", ["etc/hwflow.conf.sample", "etc/hwflow-agent.service", "etc/datapath_layout.yaml"]),
    ],
    install_requires=[
        "os-ken>=2.0",
        "pyroute2>=0.7",
        "pyudev>=0.24",
        "ovsdbapp>=2.0",
        "stevedore>=5.0",
        "oslo.config>=9.0",
        "cffi>=1.15",
        "PyYAML>=6.0",
        "etcd3gw>=2.4",
        "prometheus-client>=0.17",
        "msgpack>=1.0",  # the plan the agent publishes for `hwflow flows` (hwflow.agent.published)
    ],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6", "scapy>=2.5", "ruff", "cryptography"],
        # The Neutron integration (hwflow/neutron/): Neutron itself (29 asks for os-ken>=4.2.1, ovsdbapp>=2.18
        # and oslo.config>=10.2, which hwflow's own pins resolve to), the WSGI server its API runs under now that
        # it has no neutron-server (uWSGI, as deployments run it) and the SDK the tests drive it with.
        "neutron": ["neutron>=29.0.0", "uWSGI>=2.0.28", "openstacksdk>=4.0"],
    },
    # Each native/build_*.py is a cffi builder (``ffibuilder``) compiled at install time.
    cffi_modules=sorted(f"{path}:ffibuilder" for path in glob("native/build_*.py")),
    entry_points={
        "console_scripts": [
            "hwflow = hwflow.cli.main:main",
            "hwflow-agent = hwflow.agent.daemon:main",
            "hwflow-simnic = hwflow.sim.server:main",
        ],
        "hwflow.nb_db_drivers": [
            "sqlite = hwflow.db.sqlite:SqliteDriver",
            "etcd = hwflow.db.etcd:EtcdDriver",
            "etcds = hwflow.db.etcd:EtcdDriver",
        ],
        "hwflow.nic_drivers": [
            "sim = hwflow_drivers.sim:SimDriver",
            "generic = hwflow_drivers.generic:GenericDriver",
            "tc = hwflow_drivers.generic:GenericDriver",
            "mlx5 = hwflow_drivers.mlx5:Mlx5Driver",
            "ice = hwflow_drivers.ice:IceDriver",
        ],
        "hwflow.apps": [
            "classifier = hwflow.apps.classifier:ClassifierApp",
            "dhcp = hwflow.apps.dhcp:DhcpApp",
            "l2 = hwflow.apps.l2:L2App",
            "l3 = hwflow.apps.l3:L3App",
            "output = hwflow.apps.output:OutputApp",
            "port_security = hwflow.apps.port_security:PortSecurityApp",
            "responder = hwflow.apps.responder:ResponderApp",
            "sg_egress = hwflow.apps.security_groups:SgEgressApp",
            "sg_ingress = hwflow.apps.security_groups:SgIngressApp",
        ],
        "neutron.ml2.mechanism_drivers": [
            "hwflow = hwflow.neutron.mech_driver:HwflowMechanismDriver",
        ],
        "neutron.service_plugins": [
            "hwflow_l3 = hwflow.neutron.l3_plugin:HwflowL3RouterPlugin",
        ],
        "oslo.config.opts": [
            "hwflow = hwflow.conf:list_opts",
        ],
    },
)
