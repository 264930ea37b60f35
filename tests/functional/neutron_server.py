"""A real Neutron API server for tests, run as deployments run Neutron 29: its WSGI application under uWSGI.

It is configured to need nothing else: a sqlite database, ``auth_strategy = noauth`` (every request acts as
an admin of ``fake_project_id``), oslo.messaging's ``fake://`` transport (no broker; no RPC workers, since
no Neutron agent talks to it), and ML2 with hwflow's mechanism driver writing the hwflow database given,
over the vxlan, vlan and flat type drivers (physical network ``physnet1``).
The uWSGI master is SIGTERMed by its PID at ``stop``, and dies with the test process if that is killed.

Neutron's alembic migrations do not run on sqlite, so its schema is made the way Neutron's own unit tests
make theirs (neutron_lib's SqlFixture): every model imported, then its metadata's ``create_all``. That runs
in a child (``python neutron_server.py URL``): importing Neutron starts oslo.service's backend, which the
test process has no business holding.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

from hwflow.db.etcd_server import START_ATTEMPTS, PortTaken, _die_with_parent, free_port
from hwflow.sim.host import stop_process

START_TIMEOUT = 180.0  # a cold start imports all of Neutron on a shared, busy machine
PHYSNET = "physnet1"
VNI_RANGE = (1000, 1999)
VLAN_RANGE = (100, 199)

# Neutron's policy (policy.yaml in the configuration directory) beyond its defaults: binding:profile is the
# service role's (Nova's, which says there whether a VF is a switchdev one); the tests act as an admin.
POLICY = """\
"create_port:binding:profile": "rule:admin_only or rule:service_api"
"update_port:binding:profile": "rule:admin_only or rule:service_api"
"""

CONFIG = """\
[DEFAULT]
core_plugin = ml2
service_plugins = hwflow_l3
auth_strategy = noauth
api_paste_config = {paste}
transport_url = fake://
rpc_workers = 0
rpc_state_report_workers = 0
api_workers = 1
state_path = {state}
[database]
connection = {database}
[oslo_concurrency]
lock_path = {state}/lock
[ml2]
type_drivers = vxlan,vlan,flat
tenant_network_types = vxlan
mechanism_drivers = hwflow
extension_drivers = port_security
[ml2_type_vxlan]
vni_ranges = {vni[0]}:{vni[1]}
[ml2_type_vlan]
network_vlan_ranges = {physnet}:{vlan[0]}:{vlan[1]}
[ml2_type_flat]
flat_networks = {physnet}
[hwflow]
{hwflow}
"""


def create_schema(url: str) -> None:
    """Neutron's tables in the (empty) database at ``url``, from its models' metadata, and the rows its
    migrations put in: the default security group rule templates (every new group's egress rules, a
    default group's ingress from its members), taken from Neutron's migration that adds them."""
    import importlib.util

    import sqlalchemy
    from neutron.db import migration
    from neutron.db.migration.models import head  # noqa: F401 - imports every model into the metadata
    from neutron_lib.db import model_base

    path = Path(migration.__file__).parent / "alembic_migrations" / "versions" / "2023.2" / "expand" / \
        "c33da356b165_security_group_default_rules.py"
    spec = importlib.util.spec_from_file_location("sg_default_rules", path)
    assert spec and spec.loader, f"{path} is missing: Neutron moved its default security group rules"
    templates = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(templates)
    metadata = model_base.BASEV2.metadata
    engine = sqlalchemy.create_engine(url)
    try:
        metadata.create_all(engine)
        with engine.begin() as conn:
            for rule in templates.default_template_rules:
                rule = dict(rule)
                attrs = conn.execute(sqlalchemy.insert(metadata.tables["standardattributes"]).values(
                    description=rule.pop("description"), resource_type=templates.table_name))
                conn.execute(sqlalchemy.insert(metadata.tables[templates.table_name]).values(
                    standard_attr_id=attrs.inserted_primary_key[0], **rule))
    finally:
        engine.dispose()


class NeutronServer:
    """Neutron's API on a free port of 127.0.0.1 with its state in ``workdir``; ``start``, then ``stop``."""

    def __init__(self, workdir: Path, hwflow: Mapping[str, str], database: str = "") -> None:
        """``hwflow`` is the [hwflow] section: the database URL and, for an etcd closed to strangers, the
        credentials (ca_file, cert_file, key_file, username, password). ``database`` is Neutron's own: another
        server's (``self.database``), to run two servers on one; by default a new one in ``workdir``."""
        self.workdir = workdir
        self.hwflow = hwflow
        self.database = database or f"sqlite:///{workdir / 'state' / 'neutron.sqlite'}"
        self.new_database = not database
        self.url = f"http://127.0.0.1:{free_port()}"
        self.log = workdir / "neutron-api.log"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        """Write the configuration and the schema, start uWSGI, wait until the API answers (on another free
        port when the one chosen was taken before uWSGI bound it)."""
        state = self.workdir / "state"
        (state / "lock").mkdir(parents=True, exist_ok=True)
        paste = Path(sysconfig.get_path("data")) / "etc" / "neutron" / "api-paste.ini"
        assert paste.exists(), f"{paste} is missing: install hwflow's neutron extra (pip install -e '.[neutron]')"
        (self.workdir / "policy.yaml").write_text(POLICY)
        (self.workdir / "neutron.conf").write_text(CONFIG.format(
            paste=paste, state=state, database=self.database, vni=VNI_RANGE, vlan=VLAN_RANGE, physnet=PHYSNET,
            hwflow="\n".join(f"{name} = {value}" for name, value in self.hwflow.items())))
        if self.new_database:
            subprocess.run([sys.executable, __file__, self.database], check=True, timeout=300)
        for attempt in range(START_ATTEMPTS):
            self._launch()
            try:
                self._wait()
                return
            except PortTaken:
                if attempt == START_ATTEMPTS - 1:
                    raise
                self.url = f"http://127.0.0.1:{free_port()}"

    def _launch(self) -> None:
        uwsgi = Path(sys.executable).parent / "uwsgi"
        command = [str(uwsgi), "--http-socket", self.url.removeprefix("http://"),
                   "--module", "neutron.wsgi.api:application", "--home", sys.prefix,
                   "--master", "--processes", "1", "--lazy-apps", "--need-app", "--die-on-term",
                   # uWSGI's plain HTTP socket closes each connection: say so, or a client reusing one fails.
                   "--add-header", "Connection: close"]
        env = {"PATH": "/usr/bin:/bin", "OS_NEUTRON_CONFIG_DIR": str(self.workdir),
               "OS_NEUTRON_CONFIG_FILES": "neutron.conf"}
        with self.log.open("wb") as log:
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                         cwd=self.workdir, preexec_fn=_die_with_parent)

    def _wait(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                if "Address already in use" in self.tail():
                    raise PortTaken(self.url)
                raise RuntimeError(f"neutron-api (uWSGI) exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/v2.0/networks", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"neutron-api did not answer on {self.url} in {START_TIMEOUT:g}s:\n{self.tail()}")
            time.sleep(0.5)

    def tail(self, size: int = 6000) -> str:
        """The end of the server's log: what a failing test shows."""
        return self.log.read_text(errors="replace")[-size:] if self.log.exists() else ""

    def stop(self) -> None:
        """SIGTERM uWSGI's master by its PID (``--die-on-term``: it stops its worker), SIGKILL if it lingers."""
        stop_process(self.proc, timeout=20)


if __name__ == "__main__":
    create_schema(sys.argv[1])
