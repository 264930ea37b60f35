"""``hwflow nb``: read and write the logical network in the northbound database.

Every kind of the model gets the same five actions (create, update, delete,
list, show); their options are derived from the model's fields, so a field
added to the model is on the command line without code here. Reference
fields take the target's id or name (``--network blue`` for ``network_id``),
list fields repeat (``--ip A --ip B``), and list-of-mapping fields take
``key=value,key=value`` (``--host-route destination=0.0.0.0/0,nexthop=10.0.0.1``;
``--extra-dhcp-opt name=dns-server,value=10.0.0.1,10.0.0.2``: an item
without '=' continues the value before it).
``hwflow nb apply FILE.yaml`` creates or updates a whole topology.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
import uuid
from collections.abc import Callable, Mapping, Set
from typing import Any

import yaml
from oslo_config import cfg

from hwflow.cli import output
from hwflow.cli.common import CliError, common_options
from hwflow.db.api import BatchIncomplete, Create, NbApi, Update, Write
from hwflow.model.errors import Ambiguous, NotFound, ValidationError
from hwflow.model.objects import KINDS, Chassis, NbObject, Port, kind_class, shown

Formatter = argparse.RawDescriptionHelpFormatter

DESCRIPTION = """\
Create, update, list, show and delete the objects of the logical network in
the northbound (NB) database that every hwflow-agent follows: network,
subnet, port, router, router_port, security_group, security_group_rule,
floating_ip, and (read-only but for delete) chassis. Writes are checked
before they are stored: a bad field, a reference to a missing object, or a
value another object already holds (a VNI, a MAC or IP on a network) is
refused with a message naming the object and the field, and nothing stored
is changed.

Objects are named by id or by name; a name shared by several objects must be
replaced by the id. Every object carries a REVISION, the database revision
of its last change: pass it to --if-revision to act only if nobody changed
the object since you looked at it (a conflict exits with status 1 and says
"conflict").

The database is [database] url of the configuration, or --database:
sqlite:///PATH (one file shared by every process of the host) or
etcd://HOST:PORT[,HOST:PORT...]."""

EPILOG = """\
Exit status: 0 on success; 1 when the request is refused (invalid field,
unknown or ambiguous object, broken reference, revision conflict) or the
database cannot be opened, with one line on stderr saying why; 2 on a
command-line syntax error.

Examples:
  hwflow nb network create blue --vni 1001
  hwflow nb network create public --network-type flat --physical-network ext --external
  hwflow nb subnet create blue-v4 --network blue --cidr 10.0.0.0/24 --gateway-ip 10.0.0.1
  hwflow nb port create vm1 --network blue --mac fa:16:3e:00:00:01 --ip 10.0.0.11
  hwflow nb port update vm1 --security-group web --if-revision 42
  hwflow nb network delete blue --cascade
  hwflow nb apply topology.yaml"""

# The columns "list" shows per kind (every field is in --format json and in "show").
COLUMNS: dict[str, tuple[str, ...]] = {
    "chassis": ("name", "alive", "tunnel_ip", "tunnel_types", "hostname", "registered", "revision"),
    "network": ("id", "name", "network_type", "vni", "physical_network", "vlan_id", "mtu", "external", "revision"),
    "subnet": ("id", "name", "network_id", "cidr", "gateway_ip", "enable_dhcp", "revision"),
    "port": ("id", "name", "network_id", "mac", "ips", "chassis", "status", "security_groups", "unique_key",
             "revision"),
    "router": ("id", "name", "gateway_network_id", "gateway_ip", "enable_snat", "revision"),
    "router_port": ("id", "name", "router_id", "subnet_id", "mac", "ip", "revision"),
    "security_group": ("id", "name", "description", "revision"),
    "security_group_rule": ("id", "security_group_id", "direction", "ethertype", "protocol", "port_min", "port_max",
                            "remote_ip_prefix", "remote_group_id", "revision"),
    "floating_ip": ("id", "floating_ip_address", "floating_network_id", "port_id", "fixed_ip_address", "revision"),
}

# Fields set by the database (or, external_revision, by the system that writes the object: Neutron), never from
# the command line.
_MANAGED = ("id", "name", "project_id", "revision", "unique_key", "external_revision")
# The order "apply" writes kinds in, so that whatever an object names exists before it.
APPLY_ORDER = ("network", "security_group", "security_group_rule", "subnet", "router", "router_port", "port",
               "floating_ip")

JSON_NOTE = """\
JSON output (--format json): the object as stored, {FIELD: VALUE, ...}
(a chassis also has "alive": whether its agent runs, i.e. its liveness
lease holds and it has not marked the chassis down (up); its heartbeat_at
is when its agent last wrote the record: at start and when something in it
changed, not at every report, shown by "list" as "registered ... ago"; a
port also has "status": "up" while an agent reports it programmed, else
"down"); "list" prints a list of them and "delete" the list of objects removed
(the named one first, then what --cascade removed with it)."""


@dataclasses.dataclass(frozen=True)
class Option:
    """How one model field appears on the command line."""

    field: str
    flag: str  # e.g. "--network" for network_id, "--ip" for ips
    type: str  # the field's annotation
    target: str  # kind a reference names, "" if none

    @property
    def dest(self) -> str:
        return f"f_{self.field}"


def options(cls: type[NbObject]) -> list[Option]:
    """The command-line options of a kind, derived from its fields."""
    found = []
    for f in dataclasses.fields(cls):
        if f.name in _MANAGED:
            continue
        name, target = f.name, cls.references.get(f.name, "")
        if target and name.endswith("_id"):
            name = name[:-3]
        elif str(f.type).startswith("list[") and name.endswith("s"):
            name = name[:-1]
        found.append(Option(f.name, "--" + name.replace("_", "-"), str(f.type), target))
    return found


def _parse_mapping(text: str) -> dict[str, Any]:
    """KEY=VALUE,KEY=VALUE; an item without '=' continues the value before it, so a value may hold commas
    (``name=dns-server,value=10.0.0.1,10.0.0.2``)."""
    mapping: dict[str, Any] = {}
    key = ""
    for item in filter(str.strip, text.split(",")):
        name, sep, value = item.partition("=")
        if sep and name.strip():
            key = name.strip()
            mapping[key] = value.strip()
        elif key and not sep:
            mapping[key] += "," + item.strip()
        else:
            key = ""
            break
    if not key:
        raise argparse.ArgumentTypeError(f"{text!r} must be KEY=VALUE[,KEY=VALUE...]")
    return mapping


def _add_option(parser: argparse.ArgumentParser, opt: Option, kind: str) -> None:
    help_text = f"{opt.field} of the {kind}"
    if opt.target:
        help_text += f" (the {opt.target}'s id or name)"
    kwargs: dict[str, Any] = {"dest": opt.dest, "default": argparse.SUPPRESS}
    if opt.type == "bool":
        kwargs["action"] = argparse.BooleanOptionalAction
    elif opt.type == "int":
        kwargs.update(type=int, metavar="N")
    elif opt.type == "float":
        kwargs.update(type=float, metavar="X")
    elif opt.type == "list[str]":
        kwargs.update(action="append", metavar="VALUE")
        help_text += "; repeat for several"
    elif opt.type == "list[dict[str, Any]]":
        kwargs.update(action="append", type=_parse_mapping, metavar="KEY=VALUE,...")
        help_text += "; repeat for several"
    elif opt.type == "dict[str, Any]":
        return  # free-form data (a chassis's capabilities) is written by agents, not typed in
    else:
        kwargs["metavar"] = "VALUE"
    parser.add_argument(opt.flag, help=help_text, **kwargs)


def _resolve(api: NbApi, opt: Option, value: Any) -> Any:
    """Reference values given by name become ids."""
    if not opt.target or not value:
        return value
    if isinstance(value, list):
        return [api.find(opt.target, v).id for v in value]
    return api.find(opt.target, value).id


def _given(api: NbApi, cls: type[NbObject], args: argparse.Namespace) -> dict[str, Any]:
    return {opt.field: _resolve(api, opt, getattr(args, opt.dest)) for opt in options(cls) if hasattr(args, opt.dest)}


def _open(conf: cfg.ConfigOpts) -> NbApi:
    return NbApi.from_url(conf.database.url, conf)


def _stored(obj: NbObject, alive: Set[str], up: Set[str] = frozenset()) -> dict[str, Any]:
    """The object as stored; a chassis also says whether its agent runs, a port whether an agent has it up.

    That is its liveness lease (refreshed every report interval, lapsing
    after three missed ones) unless the agent marked the chassis down when it
    stopped: the lease may outlive a clean stop by up to those three intervals.
    A port is up while an agent reports it programmed (``up``: NbApi.ports_up).
    """
    data = obj.to_dict()
    if isinstance(obj, Chassis):
        data["alive"] = obj.id in alive and obj.up
    if isinstance(obj, Port):
        data["status"] = "up" if obj.id in up else "down"
    return data


def _live(api: NbApi, kind: str) -> tuple[set[str], set[str]]:
    """What ``_stored`` adds to objects of ``kind``: the chassis alive, the ports some agent reports up."""
    alive = api.alive_chassis() if kind == Chassis.kind else set()
    up = {status.port for status in api.ports_up()[1]} if kind == Port.kind else set()
    return alive, up


def _row(obj: NbObject, alive: Set[str], up: Set[str] = frozenset()) -> dict[str, Any]:
    row = _stored(obj, alive, up)
    if isinstance(obj, Chassis):  # heartbeat_at: when the agent last wrote the record, not its last report
        row["registered"] = _ago(time.time() - obj.heartbeat_at) if obj.heartbeat_at else "never"
    return row


def _ago(seconds: float) -> str:
    """'42s ago', '7m ago', '5h ago', '3d ago'."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds // size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _print_object(args: argparse.Namespace, obj: NbObject, alive: Set[str] = frozenset(),
                  up: Set[str] = frozenset()) -> None:
    data = _stored(obj, alive, up)
    if args.format == "json":
        output.dump_json(data)
    else:
        output.table([{"field": k, "value": v} for k, v in data.items()], ("field", "value"))


# --- actions ---------------------------------------------------------------------


def _list(args: argparse.Namespace, conf: cfg.ConfigOpts) -> int:
    with _open(conf) as api:
        objs = api.list(args.kind)
        if getattr(args, "network", None):
            network = api.find("network", args.network)
            objs = [o for o in objs if isinstance(o, Port) and o.network_id == network.id]
        if getattr(args, "project", None):
            objs = [o for o in objs if o.project_id == args.project]
        alive, up = _live(api, args.kind)
    output.emit(args.format, [_stored(o, alive, up) for o in objs], [_row(o, alive, up) for o in objs],
                COLUMNS[args.kind])
    return 0


def _show(args: argparse.Namespace, conf: cfg.ConfigOpts) -> int:
    with _open(conf) as api:
        obj = api.find(args.kind, args.object)
        alive, up = _live(api, args.kind)
    _print_object(args, obj, alive, up)
    return 0


def _create(args: argparse.Namespace, conf: cfg.ConfigOpts) -> int:
    cls = kind_class(args.kind)
    with _open(conf) as api:
        obj = api.create(cls(id=args.id or "", name=args.name, project_id=args.project, **_given(api, cls, args)))
    _print_object(args, obj)
    return 0


def _update(args: argparse.Namespace, conf: cfg.ConfigOpts) -> int:
    """Read, change the fields given, write back: compare-and-swap on what was read (or on --if-revision)."""
    cls = kind_class(args.kind)
    with _open(conf) as api:
        stored = api.find(cls, args.object)
        fields = stored.to_dict()
        for name in args.clear or []:
            if name not in fields or name in _MANAGED:
                raise CliError(f"--clear {name}: a {cls.kind} has no such field to clear")
            fields[name] = type(fields[name])()
        fields.update(_given(api, cls, args))
        if args.new_name is not None:
            fields["name"] = args.new_name
        obj = api.update(cls(**fields), if_revision=args.if_revision)
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


# --- apply -------------------------------------------------------------------------


# What "apply" reads: a topology of 100,000 ports is some 20 MB of YAML and 2 million nodes. A file may not
# nest deeper than a topology needs (kinds -> objects -> fields -> lists of mappings -> values), nor make its
# anchors and aliases stand for more nodes than that: a "billion laughs" file is a few hundred bytes whose
# aliases expand to a billion nodes, refused here while parsing, before anything is built from it.
MAX_FILE_BYTES = 64 << 20
MAX_DEPTH = 16
MAX_NODES = 4_000_000


def _check_yaml(path: str, text: str) -> None:
    """Refuse a YAML text nesting deeper than MAX_DEPTH or expanding (aliases counted in full) past MAX_NODES.

    One pass over the parser's events, no recursion: a collection or a scalar is a node, an alias the nodes
    its anchor stands for.
    """
    stack: list[tuple[str | None, int]] = []  # open collections: (anchor, the nodes it holds so far)
    sizes: dict[str, int] = {}  # anchor -> the nodes it stands for
    total = 0
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    for event in yaml.parse(text, Loader=loader):
        if isinstance(event, yaml.AliasEvent):
            size = sizes.get(event.anchor, 1)
        elif isinstance(event, yaml.ScalarEvent):
            size = 1
            if event.anchor:
                sizes[event.anchor] = 1
        elif isinstance(event, yaml.CollectionStartEvent):
            if len(stack) >= MAX_DEPTH:
                line = event.start_mark.line + 1 if event.start_mark else "?"
                raise CliError(f"{path}: line {line} nests more than {MAX_DEPTH} levels deep; a topology needs "
                               "a few (kinds, objects, fields, lists)")
            stack.append((event.anchor, 1))
            total += 1
            continue
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, size = stack.pop()
            if anchor:
                sizes[anchor] = size
            if stack:
                stack[-1] = (stack[-1][0], stack[-1][1] + size)
            continue
        else:
            continue
        total += size
        if stack:
            stack[-1] = (stack[-1][0], stack[-1][1] + size)
        if total > MAX_NODES:
            raise CliError(f"{path}: its aliases (*NAME) expand to more than {MAX_NODES:,} nodes; write the objects "
                           "out, or use fewer aliases")
    if total > MAX_NODES:
        raise CliError(f"{path}: more than {MAX_NODES:,} YAML nodes; split the topology into several files")


def _load_topology(path: str) -> dict[str, list[dict[str, Any]]]:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise CliError(f"{path} is larger than {MAX_FILE_BYTES >> 20} MiB; split the topology into several "
                           "files")
        text = raw.decode("utf-8")
        _check_yaml(path, text)
        data = yaml.load(text, Loader=loader) or {}
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        why = " ".join(str(exc).replace('in "<unicode string>", ', "").split())
        raise CliError(f"{path} is not valid YAML: {why[:300] + '...' if len(why) > 300 else why}") from None
    except UnicodeDecodeError as exc:
        raise CliError(f"{path} is not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}): save it "
                       "as UTF-8") from None
    except ValueError as exc:  # a value YAML's syntax admits but Python cannot build (a date 2024-13-45, an int
        # of 5,000 digits)
        raise CliError(f"{path} holds a value that cannot be read: {shown(str(exc))[1:-1]}") from None
    except RecursionError:
        raise CliError(f"{path}: nested too deeply to read") from None
    if not isinstance(data, Mapping):
        raise CliError(f"{path}: the top level must map kinds to lists of objects, like 'network: [...]'")
    topology: dict[str, list[dict[str, Any]]] = {}
    for key, items in data.items():
        kind = str(key)[:-1] if str(key) not in KINDS and str(key).endswith("s") else str(key)
        if kind not in APPLY_ORDER:
            raise CliError(f"{path}: unknown kind {shown(key)}; use one of {', '.join(APPLY_ORDER)}")
        if not isinstance(items, list) or not all(isinstance(i, Mapping) for i in items):
            raise CliError(f"{path}: {kind} must be a list of objects (each a mapping of field: value)")
        topology.setdefault(kind, []).extend(dict(i) for i in items)
    return topology


class _Known:
    """The stored objects of the kinds an apply touches, read once, and what the file writes as it goes: entries
    then find what they name (by id or name, created earlier in the file too) without a database read each."""

    def __init__(self, api: NbApi, kinds: set[str]) -> None:
        self.objects: dict[str, dict[str, NbObject]] = {kind: {} for kind in kinds}
        self.names: dict[str, dict[str, dict[str, NbObject]]] = {kind: {} for kind in kinds}  # kind -> name -> id
        for kind in sorted(kinds):
            for obj in api.list(kind):
                self.add(obj)

    def add(self, obj: NbObject) -> None:
        old = self.objects[obj.kind].get(obj.id)
        if old is not None:
            self.names[obj.kind][old.name].pop(obj.id, None)
        self.objects[obj.kind][obj.id] = obj
        self.names[obj.kind].setdefault(obj.name, {})[obj.id] = obj

    def find(self, kind: str, id_or_name: str) -> NbObject:
        """By id, else by name: NbApi.find over what was read and what the file wrote before."""
        if id_or_name in self.objects[kind]:
            return self.objects[kind][id_or_name]
        matches = list(self.names[kind].get(id_or_name, {}).values())
        if not matches:
            raise NotFound(f"no {kind} with id or name {id_or_name!r}")
        if len(matches) > 1:
            raise Ambiguous(f"{len(matches)} {kind} objects are named {id_or_name!r} "
                            f"({', '.join(o.id for o in matches)}); use the id")
        return matches[0]

    def match(self, kind: str, item: Mapping[str, Any]) -> NbObject | None:
        """The stored object an entry describes: by id if it has one, else by name."""
        ident, name = _text(item.get("id")), _text(item.get("name"))
        if ident:
            return self.objects[kind].get(ident) if isinstance(ident, str) else None
        if name and isinstance(name, str):
            try:
                return self.find(kind, name)
            except NotFound:
                return None
        return None


def _reference(kind: str, item: Mapping[str, Any], field: str, value: Any) -> str:
    """A reference as the file gives it: an id or name (a number YAML read as one is its text)."""
    if isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool)):
        return str(value)
    raise ValidationError(f"{kind} {_bare(item.get('name') or item.get('id') or '(new)')}: {field} "
                          f"{shown(value)} must name a {kind_class(kind).references[field]} by id or name")


def _bare(value: Any) -> str:
    """A name or id from the file as a message shows it: a string unquoted, anything else as repr; both cut short."""
    return shown(value)[1:-1] if isinstance(value, str) else shown(value)


def _text(value: Any) -> Any:
    """An id or name as the file gives it: a number YAML read as one is its text; anything else is left for
    validation to refuse by its type."""
    return str(value) if isinstance(value, int) and not isinstance(value, bool) else value


def _apply_one(known: _Known, kind: str, item: dict[str, Any]) -> tuple[Write | None, dict[str, Any]]:
    """The write an entry asks for (None when the stored object already is so), and its line of the report."""
    cls = kind_class(kind)
    for field, target in cls.references.items():
        value = item.get(field)
        if isinstance(value, list):
            item[field] = [known.find(target, _reference(kind, item, field, v)).id for v in value]
        elif value:
            item[field] = known.find(target, _reference(kind, item, field, value)).id
    stored = known.match(kind, item)
    if stored is None:
        obj = cls(**{**item, "id": _text(item.get("id")) or str(uuid.uuid4()), "revision": 0})
        obj.validate()  # before it is indexed by name: a name that is not a string is refused, not hashed
        known.add(obj)
        return Create(obj), {"action": "created", "kind": kind, "id": obj.id, "name": obj.name, "fields": sorted(item)}
    wanted = cls(**{**stored.to_dict(), **item, "id": stored.id})
    wanted.validate()
    changed = sorted(f for f in item if f not in ("id", "revision") and getattr(wanted, f) != getattr(stored, f))
    known.add(wanted)
    return (Update(wanted, if_revision=stored.revision) if changed else None), {
        "action": "updated" if changed else "unchanged", "kind": kind, "id": stored.id, "name": wanted.name,
        "fields": changed}


def _apply(args: argparse.Namespace, conf: cfg.ConfigOpts) -> int:
    """Check every object of the file, then create or update them in one batch, kinds in dependency order."""
    topology = _load_topology(args.file)
    report: list[dict[str, Any]] = []
    writes: list[Write] = []
    with _open(conf) as api:
        known = _Known(api, {*topology, *(t for k in topology for t in kind_class(k).references.values())})
        entries: dict[tuple[str, str], int] = {}  # object -> its entry's number among those of its kind
        for kind in APPLY_ORDER:
            for number, item in enumerate(topology.get(kind, []), 1):
                try:
                    write, entry = _apply_one(known, kind, item)
                except TypeError as exc:  # a field the kind does not have
                    raise ValidationError(f"{args.file}: {kind} {_bare(item.get('name') or item.get('id') or '')}"
                                          f": {shown(str(exc))[1:-1]}; "
                                          f"a {kind} has {', '.join(f.name for f in dataclasses.fields(KINDS[kind]))}"
                                          ) from None
                if (kind, entry["id"]) in entries:
                    raise ValidationError(f"{args.file}: {kind} entries {entries[kind, entry['id']]} and {number} "
                                          f"both describe {kind} {entry['id']} ({entry['name']}); merge them")
                entries[kind, entry["id"]] = number
                report.append(entry)
                if write is not None:
                    writes.append(write)
        try:
            api.apply(writes)
        except BatchIncomplete as exc:
            raise CliError(f"{args.file}: {exc}; apply the file again to write the rest") from None
    if args.format == "json":
        output.dump_json(report)
        return 0
    for entry in report:
        if entry["action"] != "unchanged":
            fields = f": {', '.join(entry['fields'])}" if entry["action"] == "updated" else ""
            print(f"{entry['action']} {entry['kind']} {entry['id']} ({entry['name']}){fields}")
    counts = {a: sum(e["action"] == a for e in report) for a in ("created", "updated", "unchanged")}
    print(", ".join(f"{n} {a}" for a, n in counts.items()))
    return 0


# --- the parsers -----------------------------------------------------------------------


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


def _if_revision(parser: argparse.ArgumentParser, kind: str, verb: str) -> None:
    parser.add_argument("--if-revision", type=int, metavar="N",
                        help=f"{verb} only if the {kind} is still at revision N (see REVISION); "
                        "otherwise fail with a conflict")


def _kind_parser(kinds: Any, cls: type[NbObject]) -> None:
    kind = cls.kind
    doc = (cls.__doc__ or kind).strip()
    parser = kinds.add_parser(kind, help=doc.splitlines()[0], description=doc, formatter_class=Formatter)
    parser.set_defaults(kind=kind)
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    writable = cls is not Chassis  # agents register and refresh their own chassis

    if writable:
        create = _leaf(actions, "create", f"create a {kind}", f"Create a {kind}.",
                       f"  hwflow nb {kind} create NAME [--FIELD VALUE ...]", _create)
        create.add_argument("name", metavar="NAME", help=f"name of the new {kind} (need not be unique)")
        create.add_argument("--id", metavar="ID", help="id to store it under (default: a new UUID)")
        create.add_argument("--project", default="default", metavar="PROJECT",
                            help="project (tenant) it belongs to (default: default)")
        update = _leaf(actions, "update", f"change fields of a {kind}",
                       f"Change the given fields of a {kind}, leaving the others as stored. The write only lands "
                       "if nobody changed the object since it was read (or since --if-revision).",
                       f"  hwflow nb {kind} update NAME --FIELD VALUE\n"
                       f"  hwflow nb {kind} update ID --clear FIELD --if-revision 42", _update)
        _object_arg(update, kind)
        update.add_argument("--name", dest="new_name", metavar="NAME", help="rename it")
        update.add_argument("--clear", action="append", metavar="FIELD",
                            help="reset FIELD (a model field name) to empty; repeat for several")
        _if_revision(update, kind, "update")
        for opt in options(cls):
            _add_option(create, opt, kind)
            _add_option(update, opt, kind)

    listing = _leaf(actions, "list", f"list every {kind}", f"List every {kind} in the NB database.",
                    f"  hwflow nb {kind} list\n  hwflow nb {kind} list --format json", _list)
    listing.add_argument("--project", metavar="PROJECT", help="only those of this project")
    if cls is Port:
        listing.add_argument("--network", metavar="NET", help="only the ports of this network (id or name)")
    _object_arg(_leaf(actions, "show", f"show one {kind}", f"Show every field of one {kind}.",
                      f"  hwflow nb {kind} show NAME\n  hwflow nb {kind} show ID --format json", _show), kind)
    delete = _leaf(actions, "delete", f"delete a {kind}",
                   f"Delete a {kind}. Refused (nothing deleted) while other objects use it; --cascade also "
                   f"deletes what the {kind} owns (a network's ports and subnets, a router's ports, a group's rules).",
                   f"  hwflow nb {kind} delete NAME\n  hwflow nb {kind} delete ID --if-revision 42", _delete)
    _object_arg(delete, kind)
    _if_revision(delete, kind, "delete")
    delete.add_argument("--cascade", action="store_true", help=f"also delete what the {kind} owns, in the same "
                        "transaction")


def _apply_parser(kinds: Any) -> None:
    parser = _leaf(
        kinds, "apply", "create or update a whole topology from a YAML file",
        "Create or update every object a YAML file describes, kinds in dependency order, and report what\n"
        "changed. The file maps kinds (network, subnet, port, ...; plurals too) to lists of objects with\n"
        "the model's field names; reference fields may name the target by id or name, including objects\n"
        "created earlier in the same file. An entry matches a stored object by id, else by name; matched\n"
        "objects are updated (compare-and-swap) where fields differ.\n\n"
        "Every object is checked before anything is written: when one is refused (the message names it),\n"
        "nothing changes. The writes then go out as one batch, in as few transactions as the database\n"
        "takes: one on SQLite; on etcd up to 128 operations each (about 30 ports), in the file's dependency\n"
        "order. If a transaction of a big file fails there (a concurrent writer took a MAC, etcd went\n"
        "away), those before it stay: the error says which objects were written and which not, and\n"
        "applying the file again writes the rest.",
        "  hwflow nb apply topology.yaml\n\n"
        "topology.yaml:\n"
        "  networks:\n    - {name: blue, vni: 1001}\n"
        "  subnets:\n    - {name: blue-v4, network_id: blue, cidr: 10.0.0.0/24, gateway_ip: 10.0.0.1}\n"
        "  ports:\n    - {name: vm1, network_id: blue, mac: 'fa:16:3e:00:00:01', ips: [10.0.0.11]}",
        _apply,
    )
    parser.add_argument("file", metavar="FILE.yaml", help="the topology to apply")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "nb", help="the logical network in the northbound database",
        description=DESCRIPTION, epilog=EPILOG, formatter_class=Formatter,
    )
    kinds = parser.add_subparsers(dest="kind_command", metavar="KIND", required=True)
    for cls in KINDS.values():
        _kind_parser(kinds, cls)
    _apply_parser(kinds)
    return parser
