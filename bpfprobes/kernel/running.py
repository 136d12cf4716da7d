"""Facts about the running kernel, each read from evidence on this machine.

Nothing here imports bcc: it reads /proc, /sys and tracefs, so it also runs
(and is tested) without root where the files allow.
"""
from __future__ import annotations

import gzip
import os
import subprocess
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Callable

from bpfprobes.kernel import arch, headers
from bpfprobes.kernel.btf import Btf, BtfError
from bpfprobes.kernel.facts import Facts
from bpfprobes.kernel.kallsyms import Kallsyms

_UNREAD = object()      # struct_offset: BTF unreadable (fails facts' check: not kept)
TASK_COMM_LEN = 16      # a task's comm with its NUL, on every architecture
TRACEFS_CANDIDATES = (Path("/sys/kernel/tracing"), Path("/sys/kernel/debug/tracing"))
DEBUGFS = Path("/sys/kernel/debug")


def _mounted(path: Path, fstype: str) -> bool:
    try:
        mounts = Path("/proc/self/mounts").read_text().splitlines()
    except OSError:
        return False
    return any(f" {path} {fstype} " in f" {line} " for line in mounts)


def _try_mount(path: Path, fstype: str) -> bool:
    """Mount a pseudo filesystem if we may (root); harmless when it is already there."""
    if _mounted(path, fstype):
        return True
    if os.geteuid() != 0 or not path.is_dir():
        return False
    subprocess.run(["mount", "-t", fstype, "nodev", str(path)], check=False,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return _mounted(path, fstype)


@dataclass
class Kernel:
    """The running kernel (or one described by the arguments, for tests)."""

    release: str = field(default_factory=lambda: os.uname().release)
    machine: str = field(default_factory=lambda: os.uname().machine)
    proc: Path = Path("/proc")
    boot: Path = Path("/boot")

    @cached_property
    def abi(self) -> arch.Abi:
        return arch.get(self.machine)

    @cached_property
    def config(self) -> dict[str, str]:
        """CONFIG_* options from /proc/config.gz or /boot/config-RELEASE ({} if neither)."""
        for path, opener in ((self.proc / "config.gz", gzip.open),
                             (self.boot / f"config-{self.release}", open)):
            try:
                with opener(path, "rt") as f:
                    text = f.read()
            except OSError:
                continue
            out = {}
            for line in text.splitlines():
                if line.startswith("CONFIG_") and "=" in line:
                    key, _, value = line.partition("=")
                    out[key] = value
                elif line.startswith("# CONFIG_") and line.endswith(" is not set"):
                    out[line[2:-11]] = "n"
            return out
        return {}

    def config_enabled(self, option: str) -> bool | None:
        """True/False from the config, None when the config is not readable."""
        if not self.config:
            return None
        return self.config.get(option, "n") in ("y", "m")

    @cached_property
    def tracefs(self) -> Path | None:
        """Where tracefs is, mounting it if needed and allowed."""
        for path in TRACEFS_CANDIDATES:
            if (path / "events").is_dir():
                return path
        if _try_mount(TRACEFS_CANDIDATES[0], "tracefs"):
            return TRACEFS_CANDIDATES[0]
        if _try_mount(DEBUGFS, "debugfs") and (TRACEFS_CANDIDATES[1] / "events").is_dir():
            return TRACEFS_CANDIDATES[1]
        return None

    def tracepoint_exists(self, category: str, event: str) -> bool:
        return self.tracefs is not None and (self.tracefs / "events" / category / event).is_dir()

    def tracepoint_format(self, category: str, event: str) -> str | None:
        if self.tracefs is None:
            return None
        try:
            return (self.tracefs / "events" / category / event / "format").read_text()
        except OSError:
            return None

    @cached_property
    def kallsyms(self) -> Kallsyms:
        return Kallsyms(self.proc / "kallsyms")

    @cached_property
    def btf(self) -> Btf | None:
        try:
            return Btf.load()
        except BtfError:
            return None

    @cached_property
    def kprobe_blacklist(self) -> frozenset[str]:
        """Functions the kernel refuses to kprobe (debugfs kprobes/blacklist)."""
        _try_mount(DEBUGFS, "debugfs")
        try:
            text = (DEBUGFS / "kprobes" / "blacklist").read_text()
        except OSError:
            return frozenset()
        # lines look like "0xffffffff81000000-0xffffffff81000040\tdo_int3"
        return frozenset(line.split()[1] for line in text.splitlines() if len(line.split()) > 1)

    @cached_property
    def facts(self) -> Facts | None:
        """This boot's saved answers (facts.py): the running kernel's only, not a
        kernel described by a test's files."""
        running = self.proc == Path("/proc") and self.release == os.uname().release
        return Facts(self.release) if running else None

    def _kept(self, kind: str, what: str, ask: Callable[[], object]) -> object:
        """`ask()`, through this boot's saved answers where they apply (facts.py)."""
        return ask() if self.facts is None else self.facts.ask(kind, what, ask)

    def in_image(self, name: str) -> bool:
        """`name` is a text symbol of the kernel image, not of a module (kallsyms;
        saved for the boot: the image's symbols stay, modules come and go)."""
        return bool(self._kept("symbol", name, lambda: self.kallsyms.in_image(name)))

    def syscall_symbol(self, syscall: str) -> tuple[str, bool] | None:
        """The kernel symbol that implements `syscall` and whether its arguments sit
        behind an inner pt_regs (the arch's wrapper prefix), from kallsyms."""
        for prefix in self.abi.syscall_prefixes:
            name = prefix + syscall
            if self.in_image(name):
                return name, prefix in self.abi.wrapped_prefixes
        return None

    @cached_property
    def headers(self) -> headers.Headers:
        return headers.find(self.release)

    def struct_offset(self, struct_name: str, member: str) -> int | None:
        """Offset of a kernel struct member from BTF (never from other kernels'
        headers); saved for the boot (vmlinux's BTF is fixed until a reboot)."""
        def ask() -> object:
            if self.btf is None:        # BTF could not be read: no answer (never kept)
                return _UNREAD
            try:
                return self.btf.member_offset(struct_name, member)
            except BtfError:
                return None             # BTF says it has no such member: an answer
        value = self._kept("offset", f"{struct_name}.{member}", ask)
        return None if value is _UNREAD else value  # type: ignore[return-value]


_current: Kernel | None = None


def current() -> Kernel:
    """The running kernel; facts are cached for the life of the process."""
    global _current
    if _current is None:
        _current = Kernel()
    return _current
