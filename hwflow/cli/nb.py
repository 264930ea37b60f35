"""``hwflow nb``: read and write the logical network in the northbound database."""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from oslo_config import cfg

from hwflow.cli import output
from hwflow.cli.common import common_options
from hwflow.db.api import NbApi
from hwflow.model.objects import Chassis, NbObject, Network, Port

Formatter = argparse.RawDescriptionHelpFormatter

DESCRIPTION = """\
Create, list, show and delete the objects of the logical network in the
northbound (NB) database that every hwflow-agent follows. Writes are checked
before they are stored: a bad field, a reference to a missing object, or a
value another object already holds (a network's VNI, a port's MAC or IP on
its network) is refused with a message naming the object and the field, and
nothing stored is changed.

Objects are named by id or by name; a name shared by several objects must be
replaced by the id. Every object carries a REVISION, the database revision
of its last change: pass it to --if-revision to act only if nobody changed
the object since you looked at it.

The database is [database] url of the configuration, or --database:
sqlite:///PATH (one file shared by every process of the host) or
etcd://HOST:PORT."""

EPILOG = """\
Exit status: 0 on success; 1 when the request is refused (invalid field,
unknown or ambiguous object, broken reference, revision conflict) or the
database cannot be opened, with one line on stderr saying why; 2 on a
command-line syntax error.

Examples:
  hwflow nb network create blue --vni 1001
  hwflow nb port create vm1 --network blue --mac fa:16:3e:00:00:01 --ip 10.0.0.11
  hwflow nb port list --format json
  hwflow nb network delete blue --cascade
  hwflow nb chassis list --database sqlite:////var/lib/hwflow/nb.sqlite"""

COLUMNS: dict[str, tuple[str, ...]] = {
    "network": ("id", "name", "vni", "mtu", "unique_key", "revision"),
    "port": ("id", "name", "network_id", "mac", "ips", "chassis", "unique_key", "revision"),
    "chassis": ("name", "tunnel_ip", "hostname", "up", "heartbeat", "revision"),
}

JSON_NOTE = """\
JSON output (--format json): the object as stored, {FIELD: VALUE, ...};
"list" prints a list of them and "delete" the list of objects removed
(the named one first, then what --cascade removed with it)."""


def _open(conf: cfg.ConfigOpts) -> NbApi:
    return NbApi.from_url(conf.database.url, conf)


def _row(obj: NbObject) -> dict[str, Any]:
    row = obj.to_dict()
    if isinstance(obj, Chassis):
        age = max(0.0, time.time() - obj.heartbeat_at)
        row["heartbeat"] = f"{age:.0f}s ago" if obj.heartbeat_at else "never"
    return row


def _print_objects(args: argparse.Namespace, objs: list[NbObject]) -> None:
    output.emit(args.format, [o.to_dict() for o in objs], [_row(o) for o in objs], COLUMNS[args.kind])


def _print_object(args: argparse.Namespace, obj: NbObject) -> None:
    if args.format == "json":
        output.dump_json(obj.to_dict())
    else:
        output.table([{"field": k, "value": v} for k, v in obj.to_dict().items()], ("field", "value"))


def _list(args: argparse.Namespace, conf: cfg.ConfigOpts) -> int:
    with _open(conf) as api:
        objs = api.list(args.kind)
        if getattr(args, "network", None):
            network = api.find(Network, args.network)
            objs = [o for o in objs if isinstance(o, Port) and o.network_id == network.id]
    _print_objects(args, objs)
    return 0


def _show(args: argparse.Namespace, conf: cfg.ConfigOpts) -> int:
    with _open(conf) as api:
        obj = api.find(args.kind, args.object)
    _print_object(args, obj)
    return 0


def _delete(args: argparse.Namespace, conf: cfg.ConfigOpts) -> int:
    with _open(conf) as api:
        obj = api.find(args.kind, args.object)
        removed = api.delete(obj.kind, obj.id, if_revision=args.if_revision, cascade=args.cascade)
    if args.format == "json":
        output.dump_json([o.to_dict() for o in removed])
    else:
        for o in removed:
            print(f"deleted {o.label()}")
    return 0


def _create_network(args: argparse.Namespace, conf: cfg.ConfigOpts) -> int:
    with _open(conf) as api:
        obj = api.create(Network(id=args.id or "", name=args.name, project_id=args.project,
                                 vni=args.vni, mtu=args.mtu))
    _print_object(args, obj)
    return 0


def _create_port(args: argparse.Namespace, conf: cfg.ConfigOpts) -> int:
    with _open(conf) as api:
        network = api.find(Network, args.network)
        obj = api.create(Port(
            id=args.id or "", name=args.name, project_id=args.project, network_id=network.id,
            mac=args.mac, ips=args.ip or [], chassis=args.chassis, device_owner=args.device_owner,
            port_security=args.port_security,
        ))
    _print_object(args, obj)
    return 0


def _leaf(actions: Any, name: str, help: str, description: str, examples: str,
          func: Callable[[argparse.Namespace, cfg.ConfigOpts], int]) -> argparse.ArgumentParser:
    parser = actions.add_parser(
        name, help=help, description=description, formatter_class=Formatter,
        epilog=f"{JSON_NOTE}\n\nExamples:\n{examples}",
    )
    common_options(parser)
    parser.set_defaults(func=func)
    return parser


def _object_arg(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument("object", metavar="ID|NAME", help=f"the {kind}'s id, or its name if unique")


def _create_common(parser: argparse.ArgumentParser, kind: str) -> None:
    parser.add_argument("name", metavar="NAME", help=f"name of the new {kind} (need not be unique)")
    parser.add_argument("--id", metavar="ID", help="id to store it under (default: a new UUID)")
    parser.add_argument("--project", default="default", metavar="PROJECT",
                        help="project (tenant) it belongs to (default: default)")


def _read_actions(actions: Any, kind: str) -> None:
    _leaf(actions, "list", f"list every {kind}", f"List every {kind} in the NB database.",
          f"  hwflow nb {kind} list\n  hwflow nb {kind} list --format json", _list)
    _object_arg(_leaf(actions, "show", f"show one {kind}", f"Show every field of one {kind}.",
                      f"  hwflow nb {kind} show NAME\n  hwflow nb {kind} show ID --format json", _show), kind)


def _delete_action(actions: Any, kind: str, cascade_help: str | None) -> None:
    parser = _leaf(
        actions, "delete", f"delete a {kind}",
        f"Delete a {kind}. Refused (nothing deleted) when other objects still point at it,"
        " unless --cascade is given.",
        f"  hwflow nb {kind} delete NAME\n  hwflow nb {kind} delete ID --if-revision 42", _delete,
    )
    _object_arg(parser, kind)
    parser.add_argument("--if-revision", type=int, metavar="N",
                        help=f"delete only if the {kind} is still at revision N (see REVISION); "
                        "otherwise fail with a conflict")
    if cascade_help:
        parser.add_argument("--cascade", action="store_true", help=cascade_help)
    else:
        parser.set_defaults(cascade=False)


def _network_parser(kinds: Any) -> None:
    parser = kinds.add_parser("network", help="logical L2 networks",
                              description="Logical L2 networks; the VNI is the network's tunnel key.",
                              formatter_class=Formatter)
    parser.set_defaults(kind="network")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = _leaf(
        actions, "create", "create a network",
        "Create a network. Its VNI must be unique among networks.",
        "  hwflow nb network create blue --vni 1001\n  hwflow nb network create jumbo --vni 7 --mtu 9000",
        _create_network,
    )
    _create_common(create, "network")
    create.add_argument("--vni", type=int, required=True, metavar="N",
                        help="VXLAN/Geneve network identifier, 1..16777215, unique among networks")
    create.add_argument("--mtu", type=int, default=1500, metavar="M", help="MTU, 68..9000 (default: 1500)")
    _read_actions(actions, "network")
    _delete_action(actions, "network", "also delete every port on the network, in the same transaction")


def _port_parser(kinds: Any) -> None:
    parser = kinds.add_parser("port", help="logical ports", formatter_class=Formatter,
                              description="Logical ports; a port bound to a chassis is programmed there.")
    parser.set_defaults(kind="port")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    create = _leaf(
        actions, "create", "create a port",
        "Create a port on a network. Its MAC and IPs must be unique on that network.",
        "  hwflow nb port create vm1 --network blue --mac fa:16:3e:00:00:01\n"
        "  hwflow nb port create vm2 --network blue --mac fa:16:3e:00:00:02 --ip 10.0.0.12 \\\n"
        "      --ip 2001:db8::12 --chassis compute-1",
        _create_port,
    )
    _create_common(create, "port")
    create.add_argument("--network", required=True, metavar="NET", help="the network's id or name")
    create.add_argument("--mac", required=True, metavar="MAC",
                        help="unicast MAC address, e.g. fa:16:3e:00:00:01 (stored lower-case)")
    create.add_argument("--ip", action="append", metavar="IP",
                        help="IPv4 or IPv6 address of the port (repeat for several)")
    create.add_argument("--chassis", default="", metavar="NAME",
                        help="chassis the port is bound to (default: unbound)")
    create.add_argument("--device-owner", default="", metavar="OWNER",
                        help="what uses the port, e.g. compute:nova (informational)")
    create.add_argument("--no-port-security", dest="port_security", action="store_false",
                        help="let the port send from any MAC/IP (default: only its own)")
    _read_actions(actions, "port")
    list_parser = actions.choices["list"]
    list_parser.add_argument("--network", metavar="NET", help="only the ports of this network (id or name)")
    _delete_action(actions, "port", None)


def _chassis_parser(kinds: Any) -> None:
    parser = kinds.add_parser(
        "chassis", help="hosts running hwflow-agent (read-only)", formatter_class=Formatter,
        description="Hosts running hwflow-agent. Agents register and refresh their own chassis;"
        " HEARTBEAT is the time since the last refresh.",
    )
    parser.set_defaults(kind="chassis")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    _read_actions(actions, "chassis")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "nb", help="the logical network in the northbound database",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=Formatter,
    )
    kinds = parser.add_subparsers(dest="kind_command", metavar="KIND", required=True)
    _network_parser(kinds)
    _port_parser(kinds)
    _chassis_parser(kinds)
    return parser

