"""Least privilege on etcd: the users and roles an operator gives hwflow, as OVN's southbound RBAC does.

An agent's etcd user (named after its chassis) has a role that reads every
key under the database's prefix and writes exactly its own: its chassis
record (``NbApi.put_chassis``: a chassis takes no per-kind counter, so that
is its only key), its liveness mark (``NbApi.heartbeat``, a key under its
lease) and its ports' status (``NbApi.report_ports``: the keys under
``port_status/CHASSIS/``; the slash keeps chassis ``a`` out of ``ab``'s).
It can change no network, port, router or other chassis. Operators
and the Neutron side write as ``hwflow-admin``, which may write the whole
prefix. ``root`` (etcd's own, which alone may manage users) is made with
auth. Each user logs in with a password ([database] username/password):
etcd's JSON gateway, which hwflow speaks, never takes a client certificate's
Common Name as the user; the certificate (``etcds://``, ``--client-cert-auth``)
decides who may talk to etcd at all.

A generated password is shown once, when its user is made (setup) or made
again (add-chassis gives a chassis a new one each time it runs).
"""

from __future__ import annotations

import dataclasses
import secrets
from typing import Any, Literal

from hwflow.db.api import ALIVE_TABLE, PORT_STATUS_TABLE
from hwflow.db.etcd import EtcdDriver, b64, prefix_end, unb64
from hwflow.model.errors import DatabaseUnavailable, ValidationError
from hwflow.model.objects import Chassis, shown

ROOT = "root"
ADMIN = "hwflow-admin"
CHASSIS_ROLE_PREFIX = "hwflow-chassis-"
PASSWORD_BYTES = 24


@dataclasses.dataclass(frozen=True)
class Grant:
    """A permission of a role: on ``key``, or with ``prefix`` on every key starting with it."""

    permission: Literal["read", "readwrite"]
    key: str
    prefix: bool = False

    def perm(self) -> dict[str, Any]:
        """As etcd's JSON gateway writes a permission."""
        perm: dict[str, Any] = {"permType": self.permission.upper(), "key": b64(self.key)}
        if self.prefix:
            perm["range_end"] = b64(prefix_end(self.key))
        return perm


@dataclasses.dataclass
class Account:
    """A user made or kept: its role's grants, and its password if it was just set (else None)."""

    user: str
    role: str
    grants: list[Grant]
    password: str | None

    def to_dict(self) -> dict[str, Any]:
        return {"user": self.user, "role": self.role, "password": self.password,
                "grants": [dataclasses.asdict(g) for g in self.grants]}


def chassis_grants(driver: EtcdDriver, chassis: str) -> list[Grant]:
    """What the agent of ``chassis`` may touch: read everything of hwflow's, write its own two keys and its own
    ports' status."""
    return [Grant("read", driver.prefix, prefix=True),
            Grant("readwrite", driver.full_key(Chassis.kind, chassis)),
            Grant("readwrite", driver.full_key(ALIVE_TABLE, chassis)),
            Grant("readwrite", driver.full_key(PORT_STATUS_TABLE, f"{chassis}/"), prefix=True)]


def admin_grants(driver: EtcdDriver) -> list[Grant]:
    return [Grant("readwrite", driver.prefix, prefix=True)]


def setup(driver: EtcdDriver) -> list[Account]:
    """Make root (etcd's, with its root role) and hwflow-admin where missing, then enable auth.

    Run again (as root, once auth is on) it keeps both users and their
    passwords, and puts hwflow-admin's grants right.
    """
    accounts = [Account(ROOT, ROOT, [], _add_user(driver, ROOT, replace=False))]
    driver.request("/auth/user/grant", {"user": ROOT, "role": ROOT})
    accounts.append(_account(driver, ADMIN, ADMIN, admin_grants(driver), replace=False))
    driver.request("/auth/enable", {})
    return accounts


def add_chassis(driver: EtcdDriver, chassis: str) -> Account:
    """The user ``chassis`` with a new password and only the role granting exactly its keys (made again if
    there: grants and roles beyond those are taken away)."""
    if not chassis or not chassis.isprintable() or "/" in chassis:
        raise ValidationError(f"chassis name {shown(chassis)} cannot be an etcd user: give the agent's [agent] "
                              "chassis_name (printable, no '/')")
    return _account(driver, chassis, CHASSIS_ROLE_PREFIX + chassis, chassis_grants(driver, chassis), replace=True)


def _account(driver: EtcdDriver, user: str, role: str, grants: list[Grant], replace: bool) -> Account:
    """``user`` holding ``role`` only, and ``role`` exactly ``grants``: made again over what is there, so running
    setup or add-chassis twice, or after someone granted more by hand, ends in the same place."""
    password = _add_user(driver, user, replace)
    _ensure(driver, "/auth/role/add", {"name": role}, "role name already exists")
    wanted = {_normal(g.perm()) for g in grants}
    stale = [p for p in driver.request("/auth/role/get", {"role": role}).get("perm", []) if _normal(p) not in wanted]
    for perm in stale:  # a role with more than these (an older layout, a hand-made grant) loses the rest
        driver.request("/auth/role/revoke", {"role": role, "key": perm.get("key", ""),
                                             "range_end": perm.get("range_end", "")})
    for grant in grants:
        driver.request("/auth/role/grant", {"name": role, "perm": grant.perm()})
    driver.request("/auth/user/grant", {"user": user, "role": role})
    for other in driver.request("/auth/user/get", {"name": user}).get("roles", []):
        if other != role:  # a user with another role (granted by hand) may do more than its own: not any more
            driver.request("/auth/user/revoke", {"name": user, "role": other})
    return Account(user, role, grants, password)


def _normal(perm: dict[str, Any]) -> tuple[str, str, str]:
    """A permission as etcd lists it (READ, the zero value, is left out) or as a Grant writes it, comparable."""
    return (str(perm.get("permType", "READ")), unb64(perm.get("key", "")).decode(errors="replace"),
            unb64(perm.get("range_end", "")).decode(errors="replace"))


def _add_user(driver: EtcdDriver, user: str, replace: bool) -> str | None:
    """Make ``user`` with a new password, returned; an existing one gets a new password only if ``replace``."""
    password = secrets.token_urlsafe(PASSWORD_BYTES)
    if _ensure(driver, "/auth/user/add", {"name": user, "password": password}, "user name already exists"):
        return password
    if not replace:
        return None
    driver.request("/auth/user/changepw", {"name": user, "password": password})
    return password


def _ensure(driver: EtcdDriver, path: str, payload: dict[str, Any], exists: str) -> bool:
    """Make something unless it exists: True if made, False if it was there."""
    try:
        driver.request(path, payload)
    except DatabaseUnavailable as exc:
        if exists not in str(exc):
            raise
        return False
    return True
