"""``hwflow db auth``: close an etcd database to strangers (users, roles, auth; see hwflow.db.etcd_auth)."""

from __future__ import annotations

import argparse
from typing import Any

from hwflow.cli.common import CliError, common_options
from hwflow.cli.output import emit
from hwflow.db import etcd_auth
from hwflow.db.api import NbApi
from hwflow.db.etcd import EtcdDriver

EPILOG = """\
First, as etcd's root (before auth is on, no credentials are needed):
  hwflow db auth setup --database etcds://10.0.0.1:2379 --config-file tls.conf
then, with [database] username = root and its password in the config, for each host:
  hwflow db auth add-chassis compute-1 --config-file root.conf
and put the user and password it prints in that host's [database] username and password.
Passwords are shown once; a lost one is replaced by running add-chassis again.
"""


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("db", help="the database's own administration (etcd users and roles)")
    sub = parser.add_subparsers(dest="db_command", metavar="COMMAND", required=True)
    auth = sub.add_parser("auth", help="etcd users and roles: each agent writes only its own chassis keys",
                          epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = auth.add_subparsers(dest="auth_command", metavar="ACTION", required=True)
    setup = actions.add_parser(
        "setup", help="make etcd's root user and the hwflow-admin user (read and write everything of hwflow's), "
        "then enable auth", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    common_options(setup)
    setup.set_defaults(func=run_setup)
    chassis = actions.add_parser(
        "add-chassis", help="make the user NAME (a new password) whose role reads everything of hwflow's and "
        "writes only chassis NAME's record and liveness key", epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    chassis.add_argument("name", metavar="NAME", help="the chassis ([agent] chassis_name of its agent)")
    common_options(chassis)
    chassis.set_defaults(func=run_add_chassis)


def _driver(api: NbApi) -> EtcdDriver:
    if not isinstance(api.driver, EtcdDriver):
        raise CliError("users and roles are etcd's: give --database etcd://HOST:PORT or etcds://HOST:PORT (a "
                       "SQLite file is guarded by its file mode)")
    return api.driver


def run_setup(args: argparse.Namespace, conf: Any) -> int:
    with NbApi.from_url(conf.database.url, conf) as api:
        accounts = etcd_auth.setup(_driver(api))
    _show(args.format, accounts, {"auth_enabled": True})
    return 0


def run_add_chassis(args: argparse.Namespace, conf: Any) -> int:
    with NbApi.from_url(conf.database.url, conf) as api:
        account = etcd_auth.add_chassis(_driver(api), args.name)
    _show(args.format, [account], {})
    return 0


def _show(fmt: str, accounts: list[etcd_auth.Account], extra: dict[str, Any]) -> None:
    rows = []
    for a in accounts:
        for i, grant in enumerate(a.grants or [None]):  # root's role is etcd's own: everything
            rows.append({"user": a.user, "role": a.role, "password": a.password if i == 0 else "",
                         "permission": grant.permission if grant else "all",
                         "keys": (grant.key + ("*" if grant.prefix else "")) if grant else "*"})
    emit(fmt, {"accounts": [a.to_dict() for a in accounts], **extra}, rows,
         ("user", "role", "permission", "keys", "password"))
    if fmt == "table" and any(a.password for a in accounts):
        print("Each password is shown once: put it, with its user, in [database] username and password of the "
              "config that acts as that user (readable by root only).")
