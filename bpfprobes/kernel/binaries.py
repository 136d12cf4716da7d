"""User binaries by the names the peers use, for uprobe targets written NAME:SYM
(perf-tools' `uprobe p:bash:readline`, bpftrace's `uprobe:libc:malloc`).

The rule, in order (said under -v):
  1. a kernel module of that name (/sys/module/NAME) wins: `p:ext4:ext4_sync_fs`
     stays a kprobe in module ext4;
  2. with -p PID, a file that process has mapped: its executable, or a library
     (`libc`, `c`, `libc.so.6`), read through /proc/PID/root: the very file it
     runs, in its own mount namespace (a container's libc, not ours);
  3. a program on PATH (`bash`);
  4. a library in the dynamic loader's cache (`ldconfig -p`), this machine's
     architecture first.
A name that is none of these is an error that says where it looked.
"""
from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from bpfprobes.base.errors import UsageError
from bpfprobes.kernel import procmaps

LDCONFIG = ("/sbin/ldconfig", "/usr/sbin/ldconfig")
NAME_MAX = 255
# ldconfig -p's tag for this machine's libraries ("libc6,x86-64")
ARCH_TAGS = {"x86_64": "x86-64", "aarch64": "AArch64", "ppc64le": "64bit", "s390x": "64bit",
             "riscv64": "64bit"}


def library_matches(basename: str, name: str) -> bool:
    """`libc.so.6` is libc, c and libc.so.6; `libfoo-1.2.so` is foo-1.2 and libfoo-1.2."""
    return basename == name or basename.startswith((f"{name}.so", f"lib{name}.so"))


def is_kernel_module(name: str, sys_module: Path = Path("/sys/module")) -> bool:
    try:
        return (sys_module / name.replace("-", "_")).is_dir()
    except OSError:                 # a name no file system takes: no module either
        return False


def mapped_by(pid: int, name: str, proc: Path = Path("/proc")) -> str | None:
    """The file process `pid` mapped whose name is `name` (its executable or a library),
    as /proc/PID/root/PATH; None if it mapped none."""
    try:
        maps = procmaps.parse_maps((proc / str(pid) / "maps").read_text(), executable=False)
    except OSError:
        return None
    for m in maps:
        if library_matches(m.basename, name):
            # a file replaced or removed since it was mapped: the mapping itself is the
            # file the process runs (a path would name the new one, or nothing)
            return m.map_file(str(proc), pid) if m.deleted \
                else f"{proc}/{pid}/root{m.file_path}"
    return None


def on_path(name: str) -> str | None:
    """`name` in PATH's absolute directories only: an empty or relative entry (".")
    would let the directory a root tracer happens to run in choose its binary."""
    dirs = [d for d in os.environ.get("PATH", os.defpath).split(os.pathsep) if d.startswith("/")]
    found = shutil.which(name, path=os.pathsep.join(dirs)) if dirs else None
    return os.path.abspath(found) if found else None


def loader_cache(name: str) -> str | None:
    """The library `name` in `ldconfig -p`, this machine's architecture first."""
    tool = next((t for t in LDCONFIG if os.access(t, os.X_OK)), None)
    if tool is None:
        return None
    try:
        out = subprocess.run([tool, "-p"], capture_output=True, text=True, timeout=10,
                             check=False).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    tag = ARCH_TAGS.get(platform.machine(), "")
    found = []
    for line in out.splitlines():
        soname, arrow, path = line.strip().partition(" => ")
        if arrow and library_matches(soname.split(" (")[0], name):
            found.append((tag not in soname, path.strip()))
    # this machine's first, then in the cache's own order (its search order)
    found.sort(key=lambda f: f[0])
    return found[0][1] if found else None


@dataclass
class Resolver:
    """NAME -> a binary's path by the rule above, with what it did for -v."""
    pid: int | None = None
    notes: list[str] = field(default_factory=list)
    _found: dict[str, str | None] = field(default_factory=dict)     # one lookup a name

    def __call__(self, name: str) -> str | None:
        """The binary's path, or None: `name` is a kernel module (UsageError: nothing)."""
        if name not in self._found:
            self._found[name] = self._look(name)
        return self._found[name]

    def _look(self, name: str) -> str | None:
        if len(name) > NAME_MAX:
            raise UsageError(f"a binary's name is {NAME_MAX} bytes at most, not {len(name)}")
        if is_kernel_module(name):
            return None
        for how, find in (("mapped by process", lambda: mapped_by(self.pid, name)
                           if self.pid else None),
                          ("the program on PATH", lambda: on_path(name)),
                          ("the library in the loader's cache", lambda: loader_cache(name))):
            path = find()
            if path:
                where = f"{how} {self.pid}" if how.startswith("mapped") else how
                self.notes.append(f"{name}: {where}, {path} (no kernel module {name})")
                return path
        mapped = f", not mapped by process {self.pid}" if self.pid else ""
        raise UsageError(f"{name!r} is no kernel module, no program on PATH and no library "
                         f"in the loader's cache{mapped}",
                         "give the binary's path: /PATH/TO/BINARY:SYMBOL")
