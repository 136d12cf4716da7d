"""Find kernel headers for BCC without touching /lib/modules.

Order: $BPFPROBES_KERNEL_HEADERS (the user's word), /lib/modules/RELEASE/build (matching), /sys/kernel/kheaders.tar.xz
(matching, unpacked to our cache), then the nearest installed distro headers
(Debian splits them into -common and -ARCH; we merge both into one symlink tree
under our cache, because BCC_KERNEL_SOURCE takes one directory).

Root compiles from what is in the cache, so the cache is ours alone (safefs.py):
the cache root and every tree in it are 0700 and owned by root whatever the
umask, every path component is checked on its open descriptor, and a cache
directory someone else could change is refused. A tree is built once, by
whoever comes first: under a lock in the cache root, into a temporary directory
renamed into place when complete (with a stamp saying what it was built from),
and removed on any failure; a temporary left by a killed run is removed by the
next build. A tree without a matching stamp (older bpfprobes, a package upgrade,
a new kernel build) is built again.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bpfprobes.base import safefs

CACHE = Path(os.environ.get("BPFPROBES_CACHE", "/var/cache/bpfprobes"))
KHEADERS = Path("/sys/kernel/kheaders.tar.xz")
USR_SRC = Path("/usr/src")
MATCHING, NEAREST, NONE = "matching", "nearest", "none"
STAMP = ".bpfprobes-tree"       # written last into a tree: what it was built from
TREE_FORMAT = 1


@dataclass(frozen=True)
class Headers:
    status: str                 # matching | nearest | none
    path: str | None            # directory BCC compiles against
    source: str                 # how it was found, for -v and doctor
    release: str | None = None  # whose headers these are
    # where BCC compiles (its working directory): clang's dependency list names
    # headers relative to it; /lib/modules/R/source when R has both build and source
    compile_dir: str | None = None

    @property
    def relative_base(self) -> str | None:
        """The directory relative header names in a compile's dependency list are from."""
        return self.compile_dir or self.path

    def bcc_env(self) -> dict[str, str | None]:
        """BCC's header variables for its compile, None: unset. Both are always
        decided here: one inherited from the caller's environment (sudo -E) would
        make BCC compile from a tree other than the one the program cache keys
        and fingerprints (relative_base)."""
        if self.path and self.source != "lib/modules":
            return {"BCC_KERNEL_SOURCE": self.path, "BCC_KERNEL_MODULES_SUFFIX": None}
        return {"BCC_KERNEL_SOURCE": None, "BCC_KERNEL_MODULES_SUFFIX": None}


def _version_key(release: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", release))


def _distance(a: str, b: str) -> tuple[int, ...]:
    ka, kb = _version_key(a)[:3], _version_key(b)[:3]
    return tuple(abs(x - y) for x, y in zip(ka, kb))


def _flavour_dirs(usr_src: Path) -> list[Path]:
    """Debian's per-flavour header dirs (linux-headers-6.1.0-56-amd64), not -common."""
    return sorted(p for p in usr_src.glob("linux-headers-*")
                  if p.is_dir() and not p.name.endswith("-common")
                  and ((p / "include").exists() or (p / "Makefile").exists()))


# ---- shared trees in the cache ----------------------------------------------------------

def _stamp_of(parent_fd: int, parent: Path, name: str) -> dict | None:
    """The stamp of tree `name` if it is complete and ours alone, else None."""
    fd = safefs.open_subdir(parent_fd, name, str(parent))
    if fd is None:
        return None
    try:
        data = safefs.read_file(fd, STAMP)
    finally:
        os.close(fd)
    try:
        return json.loads(data) if data is not None else None
    except ValueError:
        return None


def shared_tree(cache: Path, kind: str, name: str, stamp: dict,
                build: Callable[[Path], None]) -> Path:
    """cache/kind/name, built by `build(tmp)` unless it is there with this stamp.

    The warm path takes no lock: a tree is renamed into place only when whole,
    so a reader sees a complete tree or none."""
    parent = cache / kind
    with safefs.opened_dir(parent, private_from=cache) as parent_fd:
        if _stamp_of(parent_fd, parent, name) == stamp:
            return parent / name
        with safefs.opened_dir(cache, private_from=cache) as cache_fd, safefs.locked(cache_fd):
            if _stamp_of(parent_fd, parent, name) == stamp:
                return parent / name            # another run built it while we waited
            # we hold the lock, so no one else is building: every temporary is stale
            safefs.sweep_temps(parent_fd)
            tmp = safefs.make_temp_dir(parent_fd, name)
            old = safefs.temp_name(name)
            try:
                build(parent / tmp)
                tmp_fd = safefs.open_subdir(parent_fd, tmp, str(parent))
                if tmp_fd is None:
                    raise OSError(f"{parent / tmp} vanished while it was built")
                try:
                    safefs.write_file(tmp_fd, STAMP, json.dumps(stamp).encode())
                finally:
                    os.close(tmp_fd)
                try:                            # an old or incomplete tree: out of the way
                    os.rename(name, old, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
                except FileNotFoundError:
                    pass
                os.rename(tmp, name, src_dir_fd=parent_fd, dst_dir_fd=parent_fd)
            finally:
                safefs.remove(parent_fd, tmp)   # gone already unless something failed
                safefs.remove(parent_fd, old)
    return parent / name


def _merge_tree(dest: Path, sources: list[Path]) -> None:
    """A tree of symlinks in `dest` (a new private directory): later sources win
    (like `cp -rs a/. b/. dest`), but a directory that only one source has is
    one symlink to it. Debian's pair then merges in ~70 links, not 16,000: built
    in milliseconds, and removed as fast (a long symlink owns a disk block, and
    freeing 16,000 of them took 50 s on a disk mounted with `discard`). Headers
    are found through the include path, so a directory link reads the same
    files. Path-based calls are safe here: `dest` sits in a directory only we
    can enter, checked by descriptor just before."""
    entries: dict[str, list[os.DirEntry]] = {}
    for src in sources:
        with os.scandir(src) as it:
            for e in it:
                entries.setdefault(e.name, []).append(e)
    for name, found in sorted(entries.items()):
        link = os.path.join(dest, name)
        dirs = [Path(e.path) for e in found if e.is_dir(follow_symlinks=False)]
        if len(dirs) > 1 and found[-1].is_dir(follow_symlinks=False):
            os.mkdir(link, 0o700)
            os.chmod(link, 0o700)               # whatever the umask
            _merge_tree(Path(link), dirs)
            continue
        # relative links (Debian's scripts -> ../../lib/linux-kbuild-X) would
        # dangle from our cache: point at what they resolve to
        last = found[-1]
        os.symlink(os.path.realpath(last.path) if last.is_symlink() else last.path, link)


def _identity(path: Path) -> list:
    """What changes when a package upgrade touches a source tree: dpkg unpacks
    every file as a new one and renames it, so the top directory (Makefile,
    .config, ...) changes with each upgrade."""
    return [str(path), *safefs.identity(os.stat(path))]


# ---- kheaders --------------------------------------------------------------------------

def _safe_members(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Regular files and directories inside the tree, ours, not writable by others.
    (tarfile's data filter does the same from Python 3.11.4; Debian 12 has 3.11.2.)"""
    members = []
    for m in tar:
        parts = Path(m.name).parts
        if not (m.isreg() or m.isdir()) or m.name.startswith("/") or ".." in parts:
            continue                            # the kernel's tar has none: refuse, don't guess
        m.mode = 0o700 if m.isdir() else 0o644
        m.uid, m.gid, m.uname, m.gname = os.geteuid(), os.getegid(), "", ""
        members.append(m)
    return members


def _extract(archive: Path, dest: Path) -> None:
    with tarfile.open(archive) as tar:
        members = _safe_members(tar)
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(dest, members=members, **extra)


def _kheaders(release: str, cache: Path, lib_modules: Path) -> Path | None:
    # modprobe costs ~10 ms a start: only where this kernel has modules to load
    if not KHEADERS.exists() and (lib_modules / release).is_dir():
        subprocess.run(["modprobe", "-q", "kheaders"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not KHEADERS.exists():
        return None
    # a rebuilt kernel keeps its release but not its version string (build number, date)
    stamp = {"format": TREE_FORMAT, "kernel": os.uname().version, "release": release,
             "size": os.stat(KHEADERS).st_size}
    return shared_tree(cache, "kheaders", release, stamp,
                       lambda tmp: _extract(KHEADERS, tmp))


def find(release: str | None = None, lib_modules: Path = Path("/lib/modules"),
         usr_src: Path = USR_SRC, cache: Path = CACHE) -> Headers:
    """The best headers this machine has for the running kernel. Raises
    safefs.UnsafePath (one line) when the cache is not ours alone."""
    release = release or os.uname().release
    override = os.environ.get("BPFPROBES_KERNEL_HEADERS")
    if override is not None:
        if (Path(override) / "include").is_dir():
            return Headers(MATCHING, override, "BPFPROBES_KERNEL_HEADERS", release)
        return Headers(NONE, None, f"BPFPROBES_KERNEL_HEADERS={override} has no include/", None)
    build = lib_modules / release / "build"
    if (build / "include").exists() or (build / "Makefile").exists():
        # as BCC: with both build and source (Debian's -ARCH and -common) it compiles in source
        source = lib_modules / release / "source"
        where = source if build.is_dir() and source.is_dir() else build
        return Headers(MATCHING, str(build.resolve()), "lib/modules", release,
                       compile_dir=str(where.resolve()))
    try:
        kh = _kheaders(release, cache, lib_modules)
    except (OSError, tarfile.TarError):
        kh = None
    if kh is not None:
        return Headers(MATCHING, str(kh), "kheaders", release)
    candidates = _flavour_dirs(usr_src)
    if not candidates:
        return Headers(NONE, None, "no headers installed", None)
    best = min(candidates, key=lambda p: (_distance(p.name.removeprefix("linux-headers-"), release),
                                          [-x for x in _version_key(p.name)]))
    other = best.name.removeprefix("linux-headers-")
    common = _common_dir(best)
    sources = [d for d in (common, best) if d is not None]
    try:
        stamp = {"format": TREE_FORMAT, "sources": [_identity(s) for s in sources]}
        dest = shared_tree(cache, "headers", other, stamp, lambda tmp: _merge_tree(tmp, sources))
    except OSError as e:                        # a read-only or full disk: said, not a traceback
        return Headers(NONE, None, f"cannot merge {best} into {cache / 'headers'}: "
                                   f"{e.strerror or e}", None)
    return Headers(NEAREST, str(dest), f"{best}" + (f" + {common}" if common else ""), other)


def _common_dir(flavour: Path) -> Path | None:
    """linux-headers-6.1.0-56-amd64 -> linux-headers-6.1.0-56-common, if present."""
    m = re.match(r"(linux-headers-.*?)-[^-]+$", flavour.name)
    if m:
        common = flavour.with_name(m.group(1) + "-common")
        if common.is_dir():
            return common
    return None
