"""``hwflow neutron-sync``: compare hwflow's database with Neutron's and repair hwflow's side."""

from __future__ import annotations

import argparse
from typing import Any

from oslo_config import cfg

from hwflow.cli.common import CliError, common_options
from hwflow.cli.output import emit
from hwflow.db.api import NbApi

EPILOG = """\
Neutron is read through its API as an admin: with openstacksdk's usual settings (OS_CLOUD and clouds.yaml,
or OS_AUTH_URL, OS_USERNAME, ...), or --neutron-url for a server with auth_strategy = noauth. Only
hwflow's side is written. An object hwflow's own CLI made (not Neutron's) is never reported nor deleted.

  hwflow neutron-sync --dry-run --database etcd://10.0.0.1:2379
  OS_CLOUD=admin hwflow neutron-sync --config-file /etc/hwflow/hwflow.conf --format json

ACTION: create (missing in hwflow), update (held with other values; DETAIL names the fields),
delete (held by hwflow, not in Neutron), refused (hwflow's model cannot hold it; DETAIL says why).
RESULT: what the repair did (empty with --dry-run). Exit status 1 when a repair failed."""

COLUMNS = ("action", "kind", "id", "name", "detail", "result")


class ApiNeutron:
    """Neutron's API through an openstacksdk connection: the resources as Neutron's JSON shows them (what
    ``hwflow.neutron.mapping`` reads), not openstacksdk's renamed attributes; a collection is read ``page``
    objects a request, following Neutron's next links."""

    def __init__(self, conn: Any, page: int = 1000) -> None:
        self.conn, self.page = conn, page

    def _get(self, path: str) -> Any:
        from openstack import exceptions

        answer = self.conn.network.get(path)
        exceptions.raise_from_response(answer)
        return answer.json()

    def list(self, collection: str) -> list[dict[str, Any]]:
        key, found = collection.replace("-", "_"), []
        path: str | None = f"/{collection}?limit={self.page}"
        while path:
            answer = self._get(path)
            found += answer[key]
            path = next((link["href"] for link in answer.get(f"{key}_links", []) if link.get("rel") == "next"), None)
        return found

    def get(self, collection: str, ident: str) -> dict[str, Any] | None:
        from openstack import exceptions

        try:
            return self._get(f"/{collection}/{ident}")[collection.rstrip("s").replace("-", "_")]
        except exceptions.NotFoundException:
            return None


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "neutron-sync", help="compare hwflow's database with OpenStack Neutron's and repair hwflow's side",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dry-run", action="store_true", help="report the differences, change nothing")
    parser.add_argument("--neutron-url", metavar="URL",
                        help="Neutron's API endpoint of a noauth server (default: openstacksdk's settings)")
    common_options(parser)
    parser.set_defaults(func=run)


def connect(url: str | None) -> Any:
    """An openstacksdk connection: to ``url`` without auth, else from OS_* variables or clouds.yaml."""
    try:
        import openstack
    except ImportError:
        raise CliError("needs openstacksdk and Neutron's libraries: install hwflow's neutron extra "
                       "(pip install 'hwflow[neutron]')") from None
    if url:
        return openstack.connection.Connection(auth_type="none", auth={"endpoint": url},
                                               network_endpoint_override=url)
    from keystoneauth1 import exceptions as ksa_exceptions

    try:
        return openstack.connect()
    except (openstack.exceptions.ConfigException, ksa_exceptions.ClientException) as exc:
        raise CliError(f"no Neutron to read: {exc}; set OS_CLOUD (clouds.yaml) or OS_AUTH_URL and the other "
                       "OS_* variables of an admin, or give --neutron-url for a noauth server") from None


def run(args: argparse.Namespace, conf: cfg.ConfigOpts) -> int:
    neutron = ApiNeutron(connect(args.neutron_url))
    try:
        from hwflow.neutron import sync
    except ImportError as exc:
        raise CliError(f"needs Neutron's libraries ({exc}): install hwflow's neutron extra "
                       "(pip install 'hwflow[neutron]')") from None
    from keystoneauth1 import exceptions as ksa_exceptions
    from openstack import exceptions

    try:
        with NbApi.from_url(conf.database.url, conf) as nb:
            differences = sync.compare(neutron, nb)
            if not args.dry_run:
                differences = sync.repair(neutron, nb, differences)
    except (exceptions.SDKException, ksa_exceptions.ClientException) as exc:
        raise CliError(f"reading Neutron failed: {exc} (check --neutron-url or the OS_* settings)") from None
    rows = [diff.row() for diff in differences]
    emit(args.format, rows, rows, COLUMNS)
    return 1 if any(diff.result.startswith(sync.FAILED) for diff in differences) else 0
