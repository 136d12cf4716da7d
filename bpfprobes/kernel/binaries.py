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

LDCONFIG = ("/sbin/ldconfig", "/usr/sbin/ldconfig")
# ldconfig -p's tag for this machine's libraries ("libc6,x86-64")
ARCH_TAGS = {"x86_64": "x86-64", "aarch64": "AArch64", "ppc64le": "64bit", "s390x": "64bit",
             "riscv64": "64bit"}


def library_matches(basename: str, name: str) -> bool:
    """`libc.so.6` is libc, c and libc.so.6; `libfoo-1.2.so` is foo-1.2 and libfoo-1.2."""
    return basename == name or basename.startswith((f"{name}.so", f"lib{name}.so"))


def is_kernel_module(name: str, sys_module: Path = Path("/sys/module")) -> bool:
    return (sys_module / name.replace("-", "_")).is_dir()


def mapped_by(pid: int, name: str, proc: Path = Path("/proc")) -> str | None:
    """The file process `pid` mapped whose name is `name` (its executable or a library),
    as /proc/PID/root/PATH; None if it mapped none."""
    try:
        lines = (proc / str(pid) / "maps").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        parts = line.split(None, 5)
        if len(parts) == 6 and parts[5].startswith("/") and not parts[5].endswith(" (deleted)"):
            path = parts[5]
            if library_matches(os.path.basename(path), name):
                return f"{proc}/{pid}/root{path}"
    return None


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
    return min(found)[1] if found else None


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
        if is_kernel_module(name):
            return None
        for how, find in (("mapped by process", lambda: mapped_by(self.pid, name)
                           if self.pid else None),
                          ("the program on PATH", lambda: shutil.which(name)),
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
