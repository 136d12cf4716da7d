"""opensnoop: trace open(), openat() and openat2() system-wide, with their result."""
from __future__ import annotations

import errno
import os
import sys
from operator import itemgetter
from typing import Sequence

from .. import __version__, codegen, openflags, policy, runconfig, stream
from ..decode import open_event
from ..errors import UsageError
from ..kernel import current
from ..loader import Attach
from ..bpfbackend import BpfBackend
from ..output import Column, JsonOutput, TextOutput
from ..session import Session, decoding, standard_meta
from . import common

SYSCALLS = ("open", "openat", "openat2")
INFLIGHT_MAX = 16384

EXAMPLES = """\
    opensnoop                    # trace all open() syscalls
    opensnoop -T -U              # with a timestamp and the UID
    opensnoop -x                 # only failed opens
    opensnoop -p 181             # only PID 181
    opensnoop -n nginx           # only processes whose name contains "nginx"
    opensnoop -e -f O_WRONLY     # writers only, with flags and mode
    opensnoop --cgroup /sys/fs/cgroup/system.slice/ssh.service
    opensnoop --json -d 10       # JSON lines for 10 seconds
    opensnoop --rate-limit 1000  # at most 1000 events/s; the rest counted as throttled
    opensnoop -v --attach tracepoint
"""


def build_parser() -> common.Parser:
    p = common.parser("opensnoop", "Trace open(), openat() and openat2() syscalls.", EXAMPLES)
    p.add_argument("-T", "--timestamp", action="store_true", help="include a timestamp column")
    p.add_argument("-U", "--print-uid", action="store_true", help="include a UID column")
    p.add_argument("-x", "--failed", action="store_true", help="only show failed opens")
    p.add_argument("-p", "--pid", type=common.pid_arg, help="trace this PID only")
    p.add_argument("-t", "--tid", type=common.pid_arg, help="trace this TID only")
    p.add_argument("-u", "--uid", type=common.uid_arg, help="trace this UID only")
    p.add_argument("-n", "--name", help="only processes whose name contains NAME")
    p.add_argument("-e", "--extended-fields", action="store_true", help="show flags and mode")
    p.add_argument("-f", "--flag-filter", action="append", default=[], metavar="FLAG",
                   help="only opens with this flag (e.g. O_WRONLY); repeatable, any matches")
    p.add_argument("--cgroup", metavar="PATH", help="trace this cgroup v2 only (in the kernel)")
    p.add_argument("--attach", choices=policy.CHOICES,
                   help="force kprobes or tracepoints (default: kprobes where available)")
    p.add_argument("--perf-buffer", action="store_true",
                   help="send events through a perf buffer even where the kernel has a BPF "
                        "ring buffer (the default there: cheaper per event)")
    common.add_session_options(p)
    return p


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


# raw_syscalls:sys_exit instead of syscalls:sys_{enter,exit}_open*: one BPF run
# per open instead of two plus a map (bench/: ~1.4x untraced against ~1.8x in
# an open storm). Per arch: the pt_regs member holding the syscall number, the
# numbers, and the thread_info flag of a compat (32-bit) syscall, which is
# skipped as the syscalls:* tracepoints skip it. Arches not listed, or a
# kernel without BTF for the flag's offset, use the pair of tracepoints.
RAW_SYSCALLS = {
    "x86_64": {"SYSCALL_NR": "orig_ax", "NR_OPEN": 2, "NR_OPENAT": 257, "NR_OPENAT2": 437,
               "TS_COMPAT": 0x0002},
}
RAW_TP = "raw_syscalls:sys_exit"


def _raw_syscalls_defs(k) -> dict | None:
    """-D defines of the raw_syscalls path, or None where it cannot be used."""
    table = RAW_SYSCALLS.get(k.abi.name)
    if table is None or not k.tracepoint_exists(*RAW_TP.split(":")):
        return None
    ti, status = k.struct_offset("task_struct", "thread_info"), \
        k.struct_offset("thread_info", "status")
    if ti is None or status is None:
        return None
    return {"ATTACH_RAW_SYSCALLS": True, **codegen.abi_defines(k.abi, False), **table,
            "TASK_TI_STATUS": ti + status}


def _plan(args, k):
    entries = common.syscall_entries(k, SYSCALLS)
    raw = _raw_syscalls_defs(k)
    tps = [RAW_TP] if raw else common.syscall_tracepoints(k, SYSCALLS)
    choice = policy.choose(k, args.attach, [s for s, _ in entries.values()], tps)
    if choice.mechanism == policy.KPROBE:
        return (choice, *common.syscall_kprobes(k, entries, "kr_open"))
    if raw:
        return choice, [Attach("raw_tracepoint", RAW_TP.split(":")[1], "tp_raw_sys_exit")], raw
    return (choice, *common.syscall_tracepoint_attaches(tps, "tp_exit_open"))


def _columns(args) -> list[Column]:
    first = {"ts": None}

    def rel_time(e):
        if first["ts"] is None:
            first["ts"] = e["ts_ns"]
        return f"{(e['ts_ns'] - first['ts']) / 1e9:.9f}"

    def path(e):
        return e["path"] + " [truncated]" if e["truncated"] else e["path"]

    # numbers are escape=False; COMM and PATH come from any user (a file named
    # with ESC sequences) and are escaped as they are printed
    cols = [Column("TIME(s)", -14, rel_time, escape=False)] if args.timestamp else []
    # plain fields through itemgetter: a C call per cell on the storm path
    cols += [Column("UID", 6, itemgetter("uid"), escape=False)] if args.print_uid else []
    cols += [Column("PID", 7, itemgetter("pid"), escape=False),
             Column("COMM", -16, itemgetter("comm")),
             Column("FD", 4, lambda e: e["ret"] if e["ret"] >= 0 else -1, escape=False),
             Column("ERR", 3, lambda e: -e["ret"] if e["ret"] < 0 else 0, escape=False)]
    if args.extended_fields:
        cols += [Column("FLAGS", 8, lambda e: f"{e['flags']:08o}", escape=False),
                 Column("MODE", 5, lambda e: f"{e['mode']:04o}", escape=False)]
    return cols + [Column("PATH", 0, path)]


def _decoder(args, clock: common.Clock):
    name = args.name

    def decode(raw: bytes) -> dict | None:
        e = open_event(raw)
        if name is not None and name not in e["comm"]:
            return None
        return e

    if not args.json:
        return decode if name is not None else open_event    # one call less per event

    def decode_json(raw: bytes) -> dict | None:
        e = decode(raw)
        if e is None:
            return None
        ret = e["ret"]
        return {"pid": e["pid"], "tid": e["tid"], "uid": e["uid"], "comm": e["comm"],
                "fd": ret if ret >= 0 else -1, "err": -ret if ret < 0 else 0,
                "errno": errno.errorcode.get(-ret) if ret < 0 else None,
                "flags": e["flags"], "flags_names": openflags.describe(e["flags"]),
                "mode": e["mode"], "syscall": e["syscall"], "path": e["path"],
                "truncated": e["truncated"], "ts": clock.wall(e["ts_ns"])}
    return decode_json


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    flags_mask, rdonly = _flag_filter(args.flag_filter)
    cgroup = _cgroup_id(args.cgroup) if args.cgroup else None
    common.require_root()
    k = current()
    choice, attaches, defs = _plan(args, k)
    defs.update({"INFLIGHT_MAX": INFLIGHT_MAX,
                 **({} if args.perf_buffer else stream.output_defines(args.buffer_pages))})
    config = runconfig.pack(runconfig.OPENSNOOP, {
        **runconfig.task(skip_pid=os.getpid(), pid=args.pid, tid=args.tid, uid=args.uid,
                         cgroup=cgroup, rate=args.rate_limit),
        "flags": flags_mask, "rdonly": int(rdonly), "failed_only": int(args.failed)})
    if args.verbose:
        print(f"opensnoop: attach {choice.mechanism}: {choice.why}", file=sys.stderr)
    sink = JsonOutput("opensnoop") if args.json else TextOutput("opensnoop", _columns(args))
    meta = {"version": __version__, "kernel": k.release, "arch": k.abi.name,
            "attach": choice.mechanism, "why": choice.why, "transport": "perf_buffer",
            "filters": {key: v for key, v in (("pid", args.pid), ("tid", args.tid),
                                              ("uid", args.uid), ("failed", args.failed or None),
                                              ("flags", args.flag_filter or None),
                                              ("cgroup", args.cgroup), ("name", args.name))
                        if v is not None}}
    if args.rate_limit:
        meta["rate_limit"] = args.rate_limit.meta()
    backend = BpfBackend(k, codegen.ready_tool("opensnoop", defs, config), attaches,
                         pages=args.buffer_pages)
    Session("opensnoop", k, backend, sink, decoding(_decoder(args, common.Clock()), sink),
            stream.Limits(args.duration, args.max_events), standard_meta(meta),
            verbose=args.verbose, throttled=args.rate_limit is not None).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return common.main("opensnoop", run, argv)


if __name__ == "__main__":
    sys.exit(main())
