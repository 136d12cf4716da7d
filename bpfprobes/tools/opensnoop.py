"""opensnoop: trace open(), openat() and openat2() system-wide, with their result."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field

from bpfprobes import __version__
from bpfprobes.backends.bpf import perfbuffer
from bpfprobes.backends.bpf.backend import BpfBackend
from bpfprobes.base.errors import KernelError, UsageError
from bpfprobes.gen import codegen
from bpfprobes.kernel import btf, openflags, policy
from bpfprobes.kernel.running import current
from bpfprobes.plan import runconfig
from bpfprobes.plan.attach import Attach
from bpfprobes.present import openjson
from bpfprobes.present.decode import open_event
from bpfprobes.present.output import Column, EncodedJson, TextOutput
from bpfprobes.session import loop
from bpfprobes.session.core import Session, decoding, standard_meta
from bpfprobes.tools import shared
from bpfprobes.tools.shared import Clock, SessionOptions

SYSCALLS = ("open", "openat", "openat2")
INFLIGHT_MAX = 16384


@dataclass(frozen=True)
class Options(SessionOptions):
    timestamp: bool = False             # -T: a time column
    print_uid: bool = False             # -U: a UID column
    failed: bool = False                # -x: failed opens only
    pid: int | None = None
    tid: int | None = None
    uid: int | None = None
    name: str | None = None             # comm contains this (userspace)
    extended_fields: bool = False       # -e: flags and mode
    flag_filter: list[str] = field(default_factory=list)     # O_* names, any matches
    cgroup: str | None = None           # a cgroup v2 directory
    attach: str | None = None           # policy.CHOICES: force kprobes or tracepoints
    perf_buffer: bool = False           # a perf buffer even where a ring buffer exists
    full_path: bool = False             # -F: relative paths made absolute in the kernel


def _cgroup_id(path: str) -> int:
    """A cgroup v2 directory's id is its inode number (bpf_get_current_cgroup_id)."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise UsageError(f"--cgroup {path}: {e.strerror}", "give a directory under /sys/fs/cgroup")
    if not os.path.isdir(path):
        raise UsageError(f"--cgroup {path} is not a cgroup directory")
    return st.st_ino


def _flag_filter(names: list[str]) -> tuple[int | None, bool]:
    mask, rdonly = 0, False
    for name in names:
        try:
            value = openflags.parse(name)
        except KeyError:
            raise UsageError(f"unknown open flag {name!r}",
                             "known: " + ", ".join(openflags.FLAGS)) from None
        rdonly |= value == 0
        mask |= value
    return (mask or None) if names else None, rdonly


# The cheapest paths read the arguments at the syscall's exit from the user's
# saved registers: one BPF run per open, no map between entry and exit.
# syscalls:sys_exit_open* with bpf_task_pt_regs (5.15+) runs only at the open
# syscalls' exits; raw_syscalls:sys_exit runs at every syscall's (a getppid()
# storm pays for it) and is kept for kernels without the helper; else the
# entry/exit pairs and a map (bench/: about 1.8x untraced in an open storm).
RAW_TP = "raw_syscalls:sys_exit"


def _syscall_exit_defs(k) -> dict | None:
    """-D defines of the syscalls:sys_exit_open*-only path, or None. Its helpers
    take the kernel's BTF task type: no BTF, no path (the verifier would refuse it)."""
    if not k.abi.args_kept_at_exit or not btf.VMLINUX.exists() \
            or not k.in_image("bpf_task_pt_regs"):
        return None
    return {"ATTACH_SYSCALL_EXIT": True, **codegen.abi_defines(k.abi, False)}


def _raw_syscalls_defs(k) -> dict | None:
    """-D defines of the raw_syscalls path, or None where it cannot be used."""
    table = k.abi.raw_syscalls
    if table is None or not k.tracepoint_exists(*RAW_TP.split(":")):
        return None
    ti, status = k.struct_offset("task_struct", "thread_info"), \
        k.struct_offset("thread_info", "status")
    if ti is None or status is None:
        return None
    return {"ATTACH_RAW_SYSCALLS": True, **codegen.abi_defines(k.abi, False), **table,
            "TASK_TI_STATUS": ti + status}


def _plan(o: Options, k):
    entries = shared.syscall_entries(k, SYSCALLS)
    pairs = shared.syscall_tracepoints(k, SYSCALLS)
    exits = [tp for tp in pairs if ":sys_exit_" in tp]
    regs = _syscall_exit_defs(k) if exits else None
    raw = None if regs else _raw_syscalls_defs(k)
    tps = exits if regs else [RAW_TP] if raw else pairs
    choice = policy.choose(k, o.attach, [s for s, _ in entries.values()], tps)
    if choice.mechanism == policy.KPROBE:
        return (choice, *shared.syscall_kprobes(k, entries, "kr_open"))
    if regs:
        return choice, [Attach("tracepoint", tp, "tp_exit_regs_" + tp.split("sys_exit_")[1])
                        for tp in exits], regs
    if raw:
        return choice, [Attach("raw_tracepoint", RAW_TP.split(":")[1], "tp_raw_sys_exit")], raw
    return (choice, *shared.syscall_tracepoint_attaches(pairs, "tp_exit_open"))


# -F: where the kernel keeps a task's cwd, its open files and a path's dentries and
# mounts (bpf_c/fullpath.h's defines), from this kernel's BTF
FULL_PATH_OFFSETS = {
    "TASK_FS": ("task_struct", "fs"), "TASK_FILES": ("task_struct", "files"),
    "FS_PWD": ("fs_struct", "pwd"), "FILES_FDT": ("files_struct", "fdt"),
    "FDT_FD": ("fdtable", "fd"), "FILE_F_PATH": ("file", "f_path"),
    "PATH_MNT": ("path", "mnt"), "PATH_DENTRY": ("path", "dentry"),
    "DENTRY_PARENT": ("dentry", "d_parent"), "DENTRY_NAME": ("dentry", "d_name"),
    "QSTR_NAME": ("qstr", "name"), "VFSMOUNT_ROOT": ("vfsmount", "mnt_root"),
    "MOUNT_MNT": ("mount", "mnt"), "MOUNT_PARENT": ("mount", "mnt_parent"),
    "MOUNT_MOUNTPOINT": ("mount", "mnt_mountpoint")}


def full_path_defines(k) -> dict[str, object]:
    """-F's defines; KernelError where BTF does not give every offset."""
    defs: dict[str, object] = {"FULL_PATH": True}
    for name, (struct_name, member) in FULL_PATH_OFFSETS.items():
        off = k.struct_offset(struct_name, member)
        if off is None:
            raise KernelError(f"-F needs {struct_name}.{member}'s offset, which this kernel's "
                              "BTF does not give", "run without -F")
        defs[name] = off
    return defs


def _columns(o: Options) -> list[Column]:
    first = {"ts": None}

    def rel_time(e):
        if first["ts"] is None:
            first["ts"] = e["ts_ns"]
        return f"{(e['ts_ns'] - first['ts']) / 1e9:.9f}"

    def path(e):
        return e["path"] + " [truncated]" if e["truncated"] else e["path"]

    # numbers are escape=False; COMM and PATH come from any user (a file named
    # with ESC sequences) and are escaped as they are printed
    cols = [Column("TIME(s)", -14, rel_time, escape=False)] if o.timestamp else []
    # plain fields by name: read inline, no call per cell on the storm path
    cols += [Column("UID", 6, "uid", escape=False)] if o.print_uid else []
    cols += [Column("PID", 7, "pid", escape=False),
             Column("COMM", -16, "comm"),
             Column("FD", 4, "fd", escape=False), Column("ERR", 3, "err", escape=False)]
    if o.extended_fields:
        cols += [Column("FLAGS", 8, lambda e: f"{e['flags']:08o}", escape=False),
                 Column("MODE", 5, lambda e: f"{e['mode']:04o}", escape=False)]
    return cols + [Column("PATH", 0, path)]


def _decoder(o: Options, clock: Clock):
    """raw sample -> its event (columns) or its encoded JSON line; None: not shown."""
    if o.json:
        return openjson.lines(clock.wall, o.name)
    name = o.name
    if name is None:
        return open_event                   # one call less per event

    def decode(raw: bytes) -> dict | None:
        e = open_event(raw)
        return e if name in e["comm"] else None
    return decode


def run(o: Options) -> int:
    flags_mask, rdonly = _flag_filter(o.flag_filter)
    cgroup = _cgroup_id(o.cgroup) if o.cgroup else None
    shared.require_root()
    k = current()
    choice, attaches, defs = _plan(o, k)
    defs.update({"INFLIGHT_MAX": INFLIGHT_MAX,
                 **({} if o.perf_buffer else perfbuffer.output_defines(o.buffer_pages)),
                 **(full_path_defines(k) if o.full_path else {})})
    config = runconfig.pack(runconfig.OPENSNOOP, {
        **runconfig.task(skip_pid=os.getpid(), pid=o.pid, tid=o.tid, uid=o.uid,
                         cgroup=cgroup, rate=o.rate_limit),
        "flags": flags_mask, "rdonly": int(rdonly), "failed_only": int(o.failed)})
    if o.verbose:
        print(f"opensnoop: attach {choice.mechanism}: {choice.why}", file=sys.stderr)
    sink = EncodedJson("opensnoop") if o.json else TextOutput("opensnoop", _columns(o))
    meta = {"version": __version__, "kernel": k.release, "arch": k.abi.name,
            "attach": choice.mechanism, "why": choice.why, "transport": "perf_buffer",
            "filters": {key: v for key, v in (("pid", o.pid), ("tid", o.tid),
                                              ("uid", o.uid), ("failed", o.failed or None),
                                              ("flags", o.flag_filter or None),
                                              ("cgroup", o.cgroup), ("name", o.name),
                                              ("full_path", o.full_path or None))
                        if v is not None}}
    if o.rate_limit:
        meta["rate_limit"] = o.rate_limit.meta()
    backend = BpfBackend(k, codegen.ready_tool("opensnoop", defs, config), attaches,
                         pages=o.buffer_pages)
    Session("opensnoop", k, backend, sink, decoding(_decoder(o, Clock()), sink),
            loop.Limits(o.duration, o.max_events), standard_meta(meta),
            verbose=o.verbose, throttled=o.rate_limit is not None).run()
    return 0
