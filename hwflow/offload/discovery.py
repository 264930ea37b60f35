"""What the host says about its network devices, gathered from every source.

Facts come from sysfs (pyudev on the live host, plain files for a recorded
tree: libudev is always rooted at ``/sys``), rtnetlink link kinds, ethtool
features and devlink eswitch modes. A source that cannot answer is recorded
in ``sources_missing``; its fact stays ``None`` so drivers never act on a
guess.

Nothing here is vendor-specific: every driver is shown the same facts, as a
:class:`hwflow.offload.nic.NetDevice`, and judges them itself.
"""

from __future__ import annotations

import array
import dataclasses
import errno
import fcntl
import json
import os
import socket
import struct
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

from hwflow.offload.nic import NetDevice

SYS = Path("/sys")
RECORDED_FILE = "hwflow-recorded.json"
"""In a recorded tree, the answers of the non-sysfs sources (rtnetlink, ethtool, devlink)."""

ARPHRD_LOOPBACK = 772
# /usr/include/linux/sockios.h and linux/ethtool.h: the `ethtool -i` ioctl.
SIOCETHTOOL = 0x8946
ETHTOOL_GDRVINFO = 0x00000003
_DRVINFO = struct.Struct("=I32s32s32s32s32s12sIIIII")  # cmd, driver, version, fw_version, bus_info, ...
_IFREQ = struct.Struct("16sP16x")  # ifr_name, ifr_data, padded to sizeof(struct ifreq)
NO_DEVLINK = "devlink: the kernel has no devlink genetlink family"
_ESWITCH_MODES = {0: "legacy", 1: "switchdev"}


@dataclasses.dataclass(frozen=True)
class SysfsRecord:
    """The sysfs facts of one netdev, whichever reader produced them."""

    name: str
    ifindex: int
    link_type: int
    devtype: str | None
    is_tun: bool
    phys_switch_id: str | None
    phys_port_name: str | None
    parent_bus: str | None
    parent_driver: str | None
    pci_address: str | None
    pci_id: str | None


class SysfsSource(Protocol):
    def netdevs(self) -> list[SysfsRecord]: ...


class LinkFacts(Protocol):
    """Answers from netlink/ioctl sources; each answer is (value, why-missing)."""

    def link_kind(self, name: str) -> str | None: ...

    def hw_tc_offload(self, name: str) -> tuple[bool | None, str | None]: ...

    def eswitch_mode(self, pci_address: str) -> tuple[str | None, str | None]: ...

    def firmware(self, name: str) -> tuple[str | None, str | None]: ...


def _pci_id(vendor: str | None, device: str | None) -> str | None:
    if not vendor or not device:
        return None
    return f"{vendor.lower().removeprefix('0x')}:{device.lower().removeprefix('0x')}"


def _record(
    name: str,
    attr: Callable[[str], str | None],
    devtype: str | None,
    parent: tuple[str | None, str | None] | None,
    pci: tuple[str, str | None] | None,
) -> SysfsRecord:
    return SysfsRecord(
        name=name,
        ifindex=int(attr("ifindex") or 0),
        link_type=int(attr("type") or 0),
        devtype=devtype,
        is_tun=attr("tun_flags") is not None,
        phys_switch_id=attr("phys_switch_id") or None,
        phys_port_name=attr("phys_port_name") or None,
        parent_bus=parent[0] if parent else None,
        parent_driver=parent[1] if parent else None,
        pci_address=pci[0] if pci else None,
        pci_id=pci[1] if pci else None,
    )


def _read(path: Path) -> str | None:
    """A sysfs attribute, or None when absent or refused (EOPNOTSUPP on phys_* files)."""
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _link_name(path: Path) -> str | None:
    return os.path.basename(os.readlink(path)) if path.is_symlink() else None


class TreeSysfs:
    """Reads a sysfs tree from files, for recorded trees (pyudev cannot be re-rooted)."""

    def __init__(self, root: Path) -> None:
        if not (root / "class" / "net").is_dir():
            raise ValueError(
                f"sysfs root {root} has no class/net directory: pass the root of a sysfs tree "
                "(the live one is /sys)"
            )
        self.root = root

    def netdevs(self) -> list[SysfsRecord]:
        return [self._one(p) for p in sorted((self.root / "class" / "net").iterdir())]

    def _one(self, net: Path) -> SysfsRecord:
        uevent = dict(
            line.split("=", 1) for line in (_read(net / "uevent") or "").splitlines() if "=" in line
        )
        device = net / "device"
        parent = None
        pci = None
        if device.exists():
            resolved = device.resolve()
            parent = (_link_name(resolved / "subsystem"), _link_name(resolved / "driver"))
            pci = self._pci_ancestor(resolved)
        return _record(net.name, lambda a: _read(net / a), uevent.get("DEVTYPE"), parent, pci)

    def _pci_ancestor(self, path: Path) -> tuple[str, str | None] | None:
        devices = (self.root / "devices").resolve()
        for candidate in (path, *path.parents):
            if candidate == devices or devices not in candidate.parents:
                return None
            if _link_name(candidate / "subsystem") == "pci":
                return candidate.name, _pci_id(_read(candidate / "vendor"), _read(candidate / "device"))
        return None


class UdevSysfs:
    """Reads the live host's netdevs through libudev."""

    def netdevs(self) -> list[SysfsRecord]:
        import pyudev

        context = pyudev.Context()
        return [self._one(d) for d in sorted(context.list_devices(subsystem="net"), key=lambda d: d.sys_name)]

    @staticmethod
    def _attr(device: Any, name: str) -> str | None:
        try:
            value = device.attributes.get(name)
        except OSError:
            return None
        return value.decode("utf-8", "replace").strip() if value is not None else None

    def _one(self, dev: Any) -> SysfsRecord:
        parent = (dev.parent.subsystem, dev.parent.driver) if dev.parent is not None else None
        pci_dev = next((a for a in dev.ancestors if a.subsystem == "pci"), None)
        pci = None
        if pci_dev is not None:
            pci = pci_dev.sys_name, _pci_id(self._attr(pci_dev, "vendor"), self._attr(pci_dev, "device"))
        return _record(dev.sys_name, lambda a: self._attr(dev, a), dev.device_type, parent, pci)


class RecordedLinkFacts:
    """Recorded rtnetlink/ethtool/devlink answers that go with a recorded sysfs tree.

    The file holds ``{"link_kinds": {DEV: KIND}, "hw_tc_offload": {DEV: bool},
    "eswitch_modes": {PCI_ADDRESS: "legacy"|"switchdev"}, "firmware": {DEV: VERSION}}``
    (an empty VERSION: the device reports none); what it does not hold is
    reported missing, as a live source would be.
    """

    def __init__(self, data: Mapping[str, Any], origin: str) -> None:
        self.data = data
        self.origin = origin

    @classmethod
    def load(cls, path: Path) -> RecordedLinkFacts:
        if not path.exists():
            return cls({}, str(path))
        try:
            return cls(json.loads(path.read_text(encoding="utf-8")), str(path))
        except (OSError, ValueError) as exc:
            raise ValueError(f"recorded link facts {path}: {exc}; fix or remove the file") from exc

    def link_kind(self, name: str) -> str | None:
        return self.data.get("link_kinds", {}).get(name)

    def hw_tc_offload(self, name: str) -> tuple[bool | None, str | None]:
        value = self.data.get("hw_tc_offload", {}).get(name)
        return (value, None) if value is not None else (None, f"ethtool: {name} not recorded in {self.origin}")

    def eswitch_mode(self, pci_address: str) -> tuple[str | None, str | None]:
        value = self.data.get("eswitch_modes", {}).get(pci_address)
        return (value, None) if value is not None else (None, f"devlink: {pci_address} not recorded in {self.origin}")

    def firmware(self, name: str) -> tuple[str | None, str | None]:
        value = self.data.get("firmware", {}).get(name)
        if value is None:
            return None, f"ethtool -i: firmware of {name} not recorded in {self.origin}"
        return value or None, None


def drvinfo_firmware(name: str) -> tuple[str | None, str | None]:
    """The firmware version ``ethtool -i`` shows (ETHTOOL_GDRVINFO; pyroute2's Ethtool has no drvinfo)."""
    buf = array.array("B", _DRVINFO.pack(ETHTOOL_GDRVINFO, *(b"",) * 6, 0, 0, 0, 0, 0))
    ifreq = _IFREQ.pack(name.encode(), buf.buffer_info()[0])
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    except OSError as exc:
        return None, f"ethtool -i: firmware of {name}: {exc.strerror or exc}"
    version = _DRVINFO.unpack(buf.tobytes())[3].split(b"\0", 1)[0].decode("ascii", "replace")
    return version or None, None


class KernelLinkFacts:
    """Live answers from rtnetlink, the ethtool ioctl and devlink (when the kernel has it)."""

    def __init__(self) -> None:
        from pyroute2 import DL, Ethtool, IPRoute
        from pyroute2.netlink.exceptions import NetlinkError

        with IPRoute() as ipr:
            self._kinds = {
                link.get_attr("IFLA_IFNAME"): link.get_nested("IFLA_LINKINFO", "IFLA_INFO_KIND")
                for link in ipr.get_links()
            }
        self._ethtool = Ethtool()
        self._devlink: Any = None
        self._devlink_missing: str | None = None
        try:
            self._devlink = DL()
        except NetlinkError as exc:
            self._devlink_missing = NO_DEVLINK if exc.code == errno.ENOENT else f"devlink: {exc}"

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._ethtool.close()
        if self._devlink is not None:
            self._devlink.close()

    def link_kind(self, name: str) -> str | None:
        return self._kinds.get(name)

    def hw_tc_offload(self, name: str) -> tuple[bool | None, str | None]:
        try:
            feature = self._ethtool.get_features(name).features.get("hw-tc-offload")
        except Exception as exc:  # noqa: BLE001 - ioctl and netlink errors alike mean "unknown"
            return None, f"ethtool: {name}: {exc}"
        if feature is None:
            return None, f"ethtool: {name} has no hw-tc-offload feature"
        return bool(feature.enable), None

    def eswitch_mode(self, pci_address: str) -> tuple[str | None, str | None]:
        if self._devlink is None:
            return None, self._devlink_missing
        from pyroute2.netlink import NLM_F_REQUEST
        from pyroute2.netlink.devlink import DEVLINK_NAMES, devlinkcmd

        msg = devlinkcmd()
        msg["cmd"] = DEVLINK_NAMES["DEVLINK_CMD_ESWITCH_GET"]
        msg["attrs"] = [("DEVLINK_ATTR_BUS_NAME", "pci"), ("DEVLINK_ATTR_DEV_NAME", pci_address)]
        try:
            reply = self._devlink.nlm_request(msg, msg_type=self._devlink.prid, msg_flags=NLM_F_REQUEST)
        except Exception as exc:  # noqa: BLE001 - EOPNOTSUPP for devices without an eswitch
            return None, f"devlink: pci/{pci_address}: {exc}"
        mode = next(iter(reply)).get_attr("DEVLINK_ATTR_ESWITCH_MODE")
        return _ESWITCH_MODES.get(mode), None

    def firmware(self, name: str) -> tuple[str | None, str | None]:
        return drvinfo_firmware(name)


def _kind(rec: SysfsRecord, link_kind: str | None) -> str:
    if rec.link_type == ARPHRD_LOOPBACK:
        return "loopback"
    return rec.devtype or link_kind or ("tun" if rec.is_tun else None) or rec.parent_bus or "unknown"


def device_from(rec: SysfsRecord, links: LinkFacts) -> NetDevice:
    """Merge one sysfs record with the link facts; keep every missing source's reason."""
    link_kind = links.link_kind(rec.name)
    tc_offload, tc_missing = links.hw_tc_offload(rec.name)
    mode, mode_missing = links.eswitch_mode(rec.pci_address) if rec.pci_address else (None, None)
    firmware, firmware_missing = links.firmware(rec.name) if rec.pci_address else (None, None)
    return NetDevice(
        name=rec.name,
        ifindex=rec.ifindex,
        kernel_driver=rec.parent_driver or link_kind or ("tun" if rec.is_tun else None),
        pci_id=rec.pci_id,
        bus_info=rec.pci_address,
        phys_switch_id=rec.phys_switch_id,
        phys_port_name=rec.phys_port_name,
        hw_tc_offload=tc_offload,
        kind=_kind(rec, link_kind),
        eswitch_mode=mode,
        sources_missing=tuple(m for m in (tc_missing, mode_missing, firmware_missing) if m),
        firmware=firmware,
    )


def discover_from(sysfs: SysfsSource, links: LinkFacts) -> list[NetDevice]:
    return [device_from(rec, links) for rec in sysfs.netdevs()]


def discover(sysfs_root: Path = SYS) -> list[NetDevice]:
    """Every network device of this host (``/sys``) or of a recorded tree.

    A recorded tree may carry ``hwflow-recorded.json`` (see
    :class:`RecordedLinkFacts`) for the facts that sysfs does not hold.
    """
    if sysfs_root.resolve() == SYS:
        with KernelLinkFacts() as links:
            return discover_from(UdevSysfs(), links)
    return discover_from(TreeSysfs(sysfs_root), RecordedLinkFacts.load(sysfs_root / RECORDED_FILE))
