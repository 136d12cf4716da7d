"""What this kernel offers, each fact established by evidence.

Config options and files say what was built; where only trying tells the
truth (fentry: BTF present, yet the load is refused here with EPERM) we make a
real, minimal load through bpf(2) and report what the kernel answered.
"""
from __future__ import annotations

import errno
import os
from dataclasses import dataclass
from pathlib import Path

from bpfprobes.kernel import bpfsys
from bpfprobes.kernel.btf import BtfError, FUNC
from bpfprobes.kernel.running import Kernel

PMU = Path("/sys/bus/event_source/devices")
FENTRY_TARGETS = ("vfs_read", "do_sys_openat2", "do_sys_open")


@dataclass(frozen=True)
class Evidence:
    available: bool
    why: str


def _config_says(k: Kernel, option: str) -> str:
    state = k.config_enabled(option)
    return {True: f"{option}=y", False: f"{option} is not set", None: "kernel config unreadable"}[state]


def kprobes(k: Kernel) -> Evidence:
    pmu = (PMU / "kprobe" / "type").exists()
    events = k.tracefs is not None and (k.tracefs / "kprobe_events").exists()
    ok = (pmu or events) and k.config_enabled("CONFIG_KPROBES") is not False
    files = ", ".join(n for n, present in (("kprobe PMU", pmu), ("kprobe_events", events))
                      if present) or "no kprobe PMU, no kprobe_events"
    return Evidence(ok, f"{_config_says(k, 'CONFIG_KPROBES')}; {files}")


def kretprobes(k: Kernel) -> Evidence:
    base = kprobes(k)
    retprobe_fmt = (PMU / "kprobe" / "format" / "retprobe").exists()
    ok = base.available and k.config_enabled("CONFIG_KRETPROBES") is not False and \
        (retprobe_fmt or (k.tracefs is not None and (k.tracefs / "kprobe_events").exists()))
    return Evidence(ok, f"{_config_says(k, 'CONFIG_KRETPROBES')}; "
                        f"{'retprobe format in kprobe PMU' if retprobe_fmt else base.why}")


def uprobes(k: Kernel) -> Evidence:
    pmu = (PMU / "uprobe" / "type").exists()
    events = k.tracefs is not None and (k.tracefs / "uprobe_events").exists()
    why = ", ".join(n for n, p in (("uprobe PMU", pmu), ("uprobe_events", events)) if p)
    return Evidence(pmu or events, f"{_config_says(k, 'CONFIG_UPROBES')}; {why or 'no uprobe PMU'}")


def tracepoints(k: Kernel) -> Evidence:
    pmu = (PMU / "tracepoint" / "type").exists()
    syscalls = k.tracepoint_exists("syscalls", "sys_enter_openat")
    ok = pmu and k.tracefs is not None
    why = f"tracepoint PMU {'present' if pmu else 'absent'}; tracefs at {k.tracefs}; " \
          f"syscalls:sys_enter_openat {'present' if syscalls else 'absent'}"
    return Evidence(ok, why)


def btf(k: Kernel) -> Evidence:
    if k.btf is None:
        return Evidence(False, "no readable /sys/kernel/btf/vmlinux")
    try:
        off = k.btf.member_offset("task_struct", "real_parent")
    except BtfError as e:
        return Evidence(False, f"/sys/kernel/btf/vmlinux unusable: {e}")
    return Evidence(True, f"/sys/kernel/btf/vmlinux parsed (task_struct.real_parent at {off})")


def fentry(k: Kernel) -> Evidence:
    if k.btf is None:
        return Evidence(False, "fentry needs BTF; none")
    for func in FENTRY_TARGETS:
        try:
            btf_id = k.btf.find(func, FUNC)
        except BtfError:
            continue
        rc = bpfsys.fentry_load(btf_id)
        if rc == 0:
            return Evidence(True, f"fentry program on {func} loaded and attached")
        return Evidence(False, f"fentry program on {func} refused: "
                               f"{errno.errorcode.get(-rc, rc)} ({os.strerror(-rc)})")
    return Evidence(False, "no fentry test target in BTF")


def attach_cookies(k: Kernel) -> Evidence:
    rc = bpfsys.attach_cookie_load()
    if rc == 0:
        return Evidence(True, "kprobe program calling bpf_get_attach_cookie loaded")
    return Evidence(False, f"bpf_get_attach_cookie refused: {errno.errorcode.get(-rc, rc)} "
                           "(kernels before 5.15 have none)")


def kprobe_multi(k: Kernel) -> Evidence:
    """One link for many kprobes (fprobe): 5.18+ built with CONFIG_FPROBE (Debian's 6.1
    is not, its 6.12 is). Tried for real on a function ftrace can attach to."""
    if not kprobes(k).available:
        return Evidence(False, "no kprobes")
    refused = "no kprobe_multi test target in kallsyms"
    for func in FENTRY_TARGETS:
        if not k.kallsyms.exists(func):
            continue
        rc = bpfsys.kprobe_multi_attach(func)
        if rc == 0:
            return Evidence(True, f"kprobe_multi link on {func} attached")
        refused = (f"kprobe_multi link on {func} refused: {errno.errorcode.get(-rc, rc)} "
                   f"({_config_says(k, 'CONFIG_FPROBE')})")
    return Evidence(False, refused)


def _map_feature(map_type: int, key: int, value: int, entries: int, name: str) -> Evidence:
    fd = bpfsys.map_create(map_type, key, value, entries)
    if fd >= 0:
        os.close(fd)
        return Evidence(True, f"{name} map created")
    return Evidence(False, f"{name} map refused: {errno.errorcode.get(-fd, fd)}")


def perf_buffer(k: Kernel) -> Evidence:
    return _map_feature(bpfsys.MAP_PERF_EVENT_ARRAY, 4, 4, os.cpu_count() or 1, "perf event array")


def ring_buffer(k: Kernel) -> Evidence:
    return _map_feature(bpfsys.MAP_RINGBUF, 0, 0, 4096, "ring buffer")


CHECKS = {"kprobes": kprobes, "kretprobes": kretprobes, "fentry": fentry,
          "tracepoints": tracepoints, "uprobes": uprobes, "btf": btf,
          "perf_buffer": perf_buffer, "ring_buffer": ring_buffer,
          "attach_cookies": attach_cookies, "kprobe_multi": kprobe_multi}

_cache: dict[tuple[int, str], Evidence] = {}


def check(k: Kernel, name: str) -> Evidence:
    """One feature, memoised per kernel object (each check may load a program)."""
    key = (id(k), name)
    if key not in _cache:
        _cache[key] = CHECKS[name](k)
    return _cache[key]


def check_all(k: Kernel) -> dict[str, Evidence]:
    return {name: check(k, name) for name in CHECKS}


def _cap_bits() -> int:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
    except OSError:
        pass
    return 0


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


CAPS = {"cap_sys_admin": 21, "cap_perfmon": 38, "cap_bpf": 39}


def privileges() -> dict[str, object]:
    bits = _cap_bits()
    return {"euid": os.geteuid(), "root": os.geteuid() == 0,
            **{name: bool(bits >> bit & 1) for name, bit in CAPS.items()},
            "unprivileged_bpf_disabled": _read_int("/proc/sys/kernel/unprivileged_bpf_disabled"),
            "perf_event_paranoid": _read_int("/proc/sys/kernel/perf_event_paranoid")}
