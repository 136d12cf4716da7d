"""Find kernel headers for BCC without touching /lib/modules.

Order: $BPFPROBES_KERNEL_HEADERS (the user's word), /lib/modules/RELEASE/build (matching), /sys/kernel/kheaders.tar.xz
(matching, unpacked to our cache), then the nearest installed distro headers
(Debian splits them into -common and -ARCH; we merge both into one symlink tree
under our cache, because BCC_KERNEL_SOURCE takes one directory).
"""
from __future__ import annotations

import os
import re
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("BPFPROBES_CACHE", "/var/cache/bpfprobes"))
KHEADERS = Path("/sys/kernel/kheaders.tar.xz")
USR_SRC = Path("/usr/src")
MATCHING, NEAREST, NONE = "matching", "nearest", "none"


@dataclass(frozen=True)
class Headers:
    status: str                 # matching | nearest | none
    path: str | None            # directory BCC compiles against
    source: str                 # how it was found, for -v and doctor
    release: str | None = None  # whose headers these are

    def bcc_env(self) -> dict[str, str]:
        """Environment for BCC: nothing when it finds the headers itself."""
        if self.path and self.source != "lib/modules":
            return {"BCC_KERNEL_SOURCE": self.path}
        return {}


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


def _merge_tree(dest: Path, sources: list[Path]) -> None:
    """A tree of symlinks: later sources win (like `cp -rs a/. b/. dest`)."""
    tmp = dest.with_name(dest.name + f".tmp{os.getpid()}")
    for src in sources:
        for root, dirs, files in os.walk(src, followlinks=False):
            rel = Path(root).relative_to(src)
            (tmp / rel).mkdir(parents=True, exist_ok=True)
            for name in files + [d for d in dirs if (Path(root) / d).is_symlink()]:
                link = tmp / rel / name
                if link.is_symlink() or link.exists():
                    link.unlink()
                target = Path(root) / name
                # relative links (Debian's scripts -> ../../lib/linux-kbuild-X) would
                # dangle from our cache: point at what they resolve to
                link.symlink_to(target.resolve() if target.is_symlink() else target)
    tmp.rename(dest)


def _kheaders(release: str, cache: Path) -> Path | None:
    if not KHEADERS.exists():
        subprocess.run(["modprobe", "-q", "kheaders"], check=False,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if not KHEADERS.exists():
        return None
    dest = cache / "kheaders" / release
    if not (dest / ".complete").exists():
        dest.mkdir(parents=True, exist_ok=True)
        with tarfile.open(KHEADERS) as tar:
            tar.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") \
                else tar.extractall(dest)
        (dest / ".complete").touch()
    return dest


def find(release: str | None = None, lib_modules: Path = Path("/lib/modules"),
         usr_src: Path = USR_SRC, cache: Path = CACHE) -> Headers:
    """The best headers this machine has for the running kernel."""
    release = release or os.uname().release
    override = os.environ.get("BPFPROBES_KERNEL_HEADERS")
    if override is not None:
        if (Path(override) / "include").is_dir():
            return Headers(MATCHING, override, "BPFPROBES_KERNEL_HEADERS", release)
        return Headers(NONE, None, f"BPFPROBES_KERNEL_HEADERS={override} has no include/", None)
    build = lib_modules / release / "build"
    if (build / "include").exists() or (build / "Makefile").exists():
        return Headers(MATCHING, str(build.resolve()), "lib/modules", release)
    try:
        kh = _kheaders(release, cache)
    except OSError:
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
    dest = cache / "headers" / other
    if not dest.exists():
        dest.parent.mkdir(parents=True, exist_ok=True)
        _merge_tree(dest, [d for d in (common, best) if d is not None])
    return Headers(NEAREST, str(dest), f"{best}" + (f" + {common}" if common else ""), other)


def _common_dir(flavour: Path) -> Path | None:
    """linux-headers-6.1.0-56-amd64 -> linux-headers-6.1.0-56-common, if present."""
    m = re.match(r"(linux-headers-.*?)-[^-]+$", flavour.name)
    if m:
        common = flavour.with_name(m.group(1) + "-common")
        if common.is_dir():
            return common
    return None
