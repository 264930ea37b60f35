"""Build (or reuse) the VM the kernel-in-the-loop tier boots: a stock Debian kernel and a RAM root.

Why a VM at all: the development kernel has no tc-flower, and an encoding
mistake shared by hwflow's encoder and decoder passes the simulated NIC
unseen. A stock distribution kernel under qemu (TCG) has the real classifier.

What comes out (:func:`build` returns the paths to ``hil/vm/boot.py``):

- ``vmlinuz``: the kernel of ``linux-image-amd64``'s current ABI, taken from
  the distribution at build time (never hard-coded: old ABIs vanish).
- ``initrd``: two concatenated zstd cpio archives, which the kernel unpacks
  in order into its RAM root: a debootstrap minbase root with Python and
  hwflow's dependencies (pip --target), then an overlay with the kernel
  modules tc-flower needs, netdevsim (built out of tree from
  ``linux-source``), and ``/init``. hwflow itself is not inside: it comes in
  per run through the 9p share, so editing hwflow rebuilds nothing.

Every stage is cached under ``$HWFLOW_VM_CACHE`` (default /var/cache/hwflow-vm)
in a directory named by a hash of its inputs (kernel ABI, package lists, the
source of the function that builds it, the guest's /init); a stage whose
directory is complete is reused.
"""

from __future__ import annotations

import fcntl
import hashlib
import inspect
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from email.parser import Parser
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = Path(os.environ.get("HWFLOW_VM_CACHE", "/var/cache/hwflow-vm"))
SUITE = "bookworm"
PRUNE_DAYS = 7.0  # an unused stage older than this is removed
ROOT_PACKAGES = ("python3", "iproute2", "kmod", "iputils-ping", "ethtool", "libudev1", "procps")
# Modules the suite loads; their dependency closure is copied too.
MODULES = ("cls_flower", "act_mirred", "act_gact", "act_vlan", "act_pedit", "act_csum", "act_tunnel_key",
           "act_ct", "sch_ingress", "openvswitch", "veth", "vxlan", "8021q", "virtio_pci", "9pnet_virtio", "9p")
WHEEL_IGNORE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*cache", ".hypothesis",
                "tests", "hil")
TRIM = ("usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "var/cache/apt",
        "var/lib/apt/lists", "usr/share/python-wheels")


class BuildError(RuntimeError):
    """A build step failed; the message says which and how to reproduce it."""


def log(message: str) -> None:
    print(f"hil/vm/build: {message}", file=sys.stderr, flush=True)


def run(cmd: Sequence[str | Path], cwd: Path | None = None, capture: bool = False) -> str:
    """Run a command; on failure raise with the command line and its error output."""
    proc = subprocess.run([str(c) for c in cmd], cwd=cwd, text=True, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE if capture else subprocess.DEVNULL,
                          stderr=subprocess.PIPE)
    if proc.returncode:
        raise BuildError(f"{' '.join(map(str, cmd))} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return proc.stdout if capture else ""


def digest(*parts: str | bytes) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
        h.update(b"\0")
    return h.hexdigest()[:16]


# --- inputs taken from the distribution -------------------------------------------


def parse_kernel_abi(depends_output: str) -> str:
    """The ABI (e.g. ``6.1.0-56-amd64``) from ``apt-cache depends linux-image-amd64``."""
    found = re.findall(r"Depends:\s*linux-image-(\d[^\s]*-amd64)\b", depends_output)
    if not found:
        raise BuildError("apt-cache depends linux-image-amd64 names no linux-image-<ABI>-amd64; "
                         "is the Debian mirror in /etc/apt/sources.list* and `apt-get update` done?")
    return found[0]


def kernel_abi() -> str:
    return parse_kernel_abi(run(["apt-cache", "depends", "linux-image-amd64"], capture=True))


def parse_mirror(sources: Iterable[str], suite: str = SUITE) -> str:
    """The first configured mirror URI serving ``suite``, from one-line or deb822 sources."""
    for text in sources:
        for line in text.splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and suite in words:
                uris = [w for w in words[1:] if "://" in w]
                if uris and words[words.index(uris[0]) + 1] == suite:
                    return uris[0]
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(re.findall(r"^([A-Za-z-]+):\s*(.*)$", stanza, re.M))
            if suite in fields.get("Suites", "").split() and "deb" in fields.get("Types", "").split():
                return fields["URIs"].split()[0]
    raise BuildError(f"no Debian mirror for {suite} in /etc/apt/sources.list*")


def mirror() -> str:
    files = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    return parse_mirror(f.read_text(encoding="utf-8") for f in files if f.is_file())


def download(packages: Sequence[str], dest: Path) -> list[Path]:
    """``apt-get download`` into ``dest``: the .deb of each package, in order."""
    dest.mkdir(parents=True, exist_ok=True)
    run(["apt-get", "download", *packages], cwd=dest)
    debs = []
    for package in packages:
        matches = sorted(dest.glob(f"{package}_*.deb"))
        if not matches:
            raise BuildError(f"apt-get download {package} left no {package}_*.deb in {dest}")
        debs.append(matches[-1])
    return debs


# --- stages ----------------------------------------------------------------------


def stage(name: str, key: str) -> tuple[Path, bool]:
    """(directory, already built) for one cached stage."""
    path = CACHE / f"{name}-{key}"
    return path, (path / ".done").exists()


def finish(path: Path, started: float) -> None:
    (path / ".done").write_text(f"{time.monotonic() - started:.1f}s\n", encoding="utf-8")


def fresh(path: Path) -> Path:
    """An empty directory for a stage being (re)built; a half-built one is discarded."""
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def build_kernel(abi: str) -> Path:
    """The kernel image and its whole module tree, with modules.dep."""
    path, done = stage("kernel", abi)
    if done:
        return path
    started = time.monotonic()
    log(f"kernel {abi}: downloading and extracting linux-image-{abi}")
    fresh(path)
    (deb,) = download([f"linux-image-{abi}"], path / "debs")
    run(["dpkg-deb", "-x", deb, path / "root"])
    run(["depmod", "-b", path / "root", abi])
    shutil.copy(path / "root" / "boot" / f"vmlinuz-{abi}", path / "vmlinuz")
    shutil.rmtree(path / "debs")
    finish(path, started)
    return path


NETDEVSIM_KBUILD = "obj-m += netdevsim.o\n"


def build_netdevsim(abi: str) -> Path:
    """netdevsim.ko: Debian does not build it, so compile it out of tree against the ABI's headers."""
    path, done = stage("netdevsim", digest(abi, inspect.getsource(build_netdevsim)))
    if done:
        return path
    started = time.monotonic()
    log(f"netdevsim for {abi}: downloading linux-source and headers, compiling out of tree")
    fresh(path)
    source_pkg = f"linux-source-{'.'.join(abi.split('.')[:2])}"
    headers = [f"linux-headers-{abi}", f"linux-headers-{abi.removesuffix('-amd64')}-common",
               f"linux-kbuild-{'.'.join(abi.split('.')[:2])}"]
    debs = download([source_pkg, *headers], path / "debs")
    for deb in debs:
        run(["dpkg-deb", "-x", deb, path / "root"])
    tarball = next((path / "root" / "usr" / "src").glob(f"{source_pkg}.tar.*"))
    top = source_pkg
    run(["tar", "-xf", tarball, "-C", path, f"{top}/drivers/net/netdevsim"])
    src = path / top / "drivers" / "net" / "netdevsim"
    kdir = path / "root" / "usr" / "src" / f"linux-headers-{abi}"
    # Debian's per-flavour Makefile includes the common one by absolute path: point it at our copy.
    makefile = kdir / "Makefile"
    makefile.write_text(makefile.read_text(encoding="utf-8").replace("/usr/src/", f"{path / 'root'}/usr/src/"),
                        encoding="utf-8")
    run(["make", "-C", kdir, f"M={src}", "CONFIG_NETDEVSIM=m", f"-j{os.cpu_count() or 1}", "modules"])
    shutil.copy(src / "netdevsim.ko", path / "netdevsim.ko")
    for scratch in ("debs", "root", top):
        shutil.rmtree(path / scratch)
    finish(path, started)
    return path


def python_requirements(wheel: Path) -> list[str]:
    """hwflow's install requirements, read from the metadata of its built wheel."""
    import zipfile

    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        message = Parser().parsestr(zf.read(meta).decode())
    return sorted(r for r in message.get_all("Requires-Dist", []) if "extra ==" not in r)


def build_rootfs(requirements: Sequence[str], pip: Path) -> Path:
    """The Debian minbase root with Python and hwflow's dependencies, packed as one cpio.zst."""
    path, done = stage("rootfs", digest(SUITE, *ROOT_PACKAGES, *requirements, inspect.getsource(build_rootfs)))
    if done:
        return path
    started = time.monotonic()
    fresh(path)
    root = path / "root"
    log(f"rootfs: debootstrap {SUITE} minbase with {', '.join(ROOT_PACKAGES)}")
    run(["debootstrap", "--variant=minbase", f"--include={','.join(ROOT_PACKAGES)}", SUITE, root, mirror()])
    for rel in TRIM:
        shutil.rmtree(root / rel, ignore_errors=True)
    log(f"rootfs: pip install --target (the guest's python3.11): {', '.join(requirements)}")
    run([pip, "install", "-q", "--disable-pip-version-check",
         "--target", root / "usr/local/lib/python3.11/dist-packages", *requirements])
    pack(root, path / "rootfs.cpio.zst")
    shutil.rmtree(root)
    finish(path, started)
    return path


def pack(root: Path, out: Path) -> None:
    """A newc cpio of ``root``, zstd-compressed (the kernel unpacks concatenated archives in order)."""
    with open(out, "wb") as sink:
        find = subprocess.Popen(["find", ".", "-mindepth", "1", "-print0"], cwd=root, stdout=subprocess.PIPE)
        cpio = subprocess.Popen(["cpio", "--null", "-o", "-H", "newc", "--quiet"], cwd=root,
                                stdin=find.stdout, stdout=subprocess.PIPE)
        zstd = subprocess.Popen(["zstd", "-q", "-3", "-T0"], stdin=cpio.stdout, stdout=sink)
        assert find.stdout is not None and cpio.stdout is not None
        find.stdout.close()
        cpio.stdout.close()
        codes = (zstd.wait(), cpio.wait(), find.wait())
    if any(codes):
        raise BuildError(f"packing {root} into {out} failed (zstd, cpio, find exited {codes})")


def module_closure(kroot: Path, abi: str, names: Iterable[str]) -> list[Path]:
    """Every .ko the modules need, from ``modprobe --show-depends`` (built-ins need nothing)."""
    files: list[Path] = []
    for name in names:
        out = run(["modprobe", "-d", kroot, "-S", abi, "--show-depends", name], capture=True)
        for line in out.splitlines():
            words = line.split()
            if words and words[0] == "insmod" and Path(words[1]) not in files:
                files.append(Path(words[1]))
    return files


def build_overlay(abi: str, kernel: Path, netdevsim: Path) -> Path:
    """Modules (closure + netdevsim and its dependencies) and /init, packed as the second archive."""
    init = (HERE / "init").read_bytes()
    path, done = stage("overlay", digest(abi, init, *MODULES, inspect.getsource(build_overlay),
                                          inspect.getsource(module_closure), (netdevsim / "netdevsim.ko").read_bytes()))
    if done:
        return path
    started = time.monotonic()
    fresh(path)
    root = path / "root"
    kroot = kernel / "root"
    # The minbase root has merged /usr: /lib is a symlink, and an archive entry for a real
    # lib/ directory would replace it. Ship the same symlink and put files under usr/lib.
    (root / "usr/lib").mkdir(parents=True)
    (root / "lib").symlink_to("usr/lib")
    nsim_deps = run(["modinfo", "-F", "depends", netdevsim / "netdevsim.ko"], capture=True).strip()
    wanted = [*MODULES, *filter(None, nsim_deps.split(","))]
    for ko in module_closure(kroot, abi, wanted):
        # Debian ships modules under /lib/modules (or /usr/lib/modules): both land in usr/lib/modules.
        rel = ko.relative_to(kroot / "lib") if ko.is_relative_to(kroot / "lib") else ko.relative_to(kroot / "usr/lib")
        dest = root / "usr/lib" / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ko, dest)
    extra = root / "usr/lib/modules" / abi / "extra"
    extra.mkdir(parents=True, exist_ok=True)
    shutil.copy(netdevsim / "netdevsim.ko", extra)
    for meta in ("modules.order", "modules.builtin", "modules.builtin.modinfo"):
        src = kroot / "lib/modules" / abi / meta
        if src.exists():
            shutil.copy(src, root / "usr/lib/modules" / abi / meta)
    run(["depmod", "-b", root, abi])
    (root / "init").write_bytes(init)
    (root / "init").chmod(0o755)
    pack(root, path / "overlay.cpio.zst")
    shutil.rmtree(root)
    finish(path, started)
    return path


def build_wheel(python: Path, dest: Path) -> Path:
    """hwflow as a wheel (its cffi helpers compiled for the host's python3.11, which the guest shares)."""
    dest.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="hwflow-wheel-") as tmp:
        # Build from a copy: setuptools writes build/ and *.egg-info into the source tree.
        src = Path(tmp) / "src"
        shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(*WHEEL_IGNORE))
        run([python, "-m", "pip", "wheel", "-q", "--disable-pip-version-check", "--no-deps",
             "-w", dest, src])
    return next(dest.glob("hwflow-*.whl"))


def prune(used: set[Path], max_age_days: float = PRUNE_DAYS) -> None:
    """Drop stages this build does not use and nobody has used for a while (other checkouts keep theirs)."""
    cutoff = time.time() - max_age_days * 86400
    for path in CACHE.iterdir():
        if path.is_dir() and path not in used and path.stat().st_mtime < cutoff:
            log(f"removing stale stage {path.name}")
            shutil.rmtree(path, ignore_errors=True)
    for path in used:
        path.touch()


def build(python: Path, work: Path) -> dict[str, str]:
    """Everything the run needs; returns paths and the ABI.

    Runs that share the cache (several engineers on one machine) take turns
    on it: a stage being built is never seen half-done or rebuilt twice.
    """
    abi = kernel_abi()
    wheel = build_wheel(python, work / "wheel")
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w", encoding="utf-8") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        kernel = build_kernel(abi)
        netdevsim = build_netdevsim(abi)
        rootfs = build_rootfs(python_requirements(wheel), python.parent / "pip")
        overlay = build_overlay(abi, kernel, netdevsim)
        prune({kernel, netdevsim, rootfs, overlay})
        initrd = work / "initrd.cpio.zst"
        with open(initrd, "wb") as out:
            for part in (rootfs / "rootfs.cpio.zst", overlay / "overlay.cpio.zst"):
                with open(part, "rb") as src:
                    shutil.copyfileobj(src, out)
    return {"abi": abi, "vmlinuz": str(kernel / "vmlinuz"), "initrd": str(initrd), "wheel": str(wheel)}
