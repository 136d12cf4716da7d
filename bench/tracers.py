"""The tracers the bench compares, as data: how to start each one, how to read
what it reported. Every tracer writes to a file; none is given special care.

A tracer's `argv` is a template: {python} is this interpreter (the project's
.venv), {root} the checkout. `lost` reads the tracer's own loss report from
its stdout+stderr text; `events` says how captured events are counted:
"lines" counts output lines naming the workload's path, "count" reads a
bpftrace count() map printed at exit (the kernel-side floor prints no lines).
"""
from __future__ import annotations

import re
import subprocess
import uuid
from dataclasses import dataclass
from typing import Callable


def _sum(pattern: str) -> Callable[[str], int]:
    """Loss as the sum of every match of `pattern`'s group 1. The peers report
    loss only when it happens (libbpf-tools once per lost batch), so no
    report means none."""
    rx = re.compile(pattern, re.M)

    def parse(text: str) -> int:
        return sum(int(n) for n in rx.findall(text))
    return parse


@dataclass(frozen=True)
class Tracer:
    name: str
    argv: tuple[str, ...]
    lost: Callable[[str], int | None]
    events: str = "lines"              # lines | count
    live_by: str = "marker"            # marker: first marker open in output; begin: BEGIN line
    note: str = ""
    env: tuple[tuple[str, str], ...] = ()   # extra environment ({work}: the run's scratch dir)
    smallest_only: bool = False        # run at the smallest storm size only
    warm_up: bool = False              # one unmeasured run first (fills a cache)
    storm: str = "open"                # the workload it traces: measure.STORMS

    def command(self, python: str, root: str) -> list[str]:
        return [a.replace("{python}", python).replace("{root}", root) for a in self.argv]

    def environment(self, work: str) -> dict[str, str]:
        return {k: v.replace("{work}", work).replace("{unique}", uuid.uuid4().hex[:8])
                for k, v in self.env}


# Tracepoint one-liners: the same event every peer traces, printed as text
BPFTRACE_OPENAT = ('BEGIN { printf("live\\n"); } '
                   'tracepoint:syscalls:sys_enter_openat '
                   '{ printf("%d %s %s\\n", pid, comm, str(args->filename)); }')
BPFTRACE_COUNT = ('BEGIN { printf("live\\n"); } '
                  'tracepoint:syscalls:sys_enter_openat { @opens = count(); }')
# In the VM: the kprobe path (do_sys_openat2 serves open, openat and openat2)
BPFTRACE_KPROBE = ('BEGIN { printf("live\\n"); } '
                   'kprobe:do_sys_openat2 { printf("%d %s %s\\n", pid, comm, str(uptr(arg1))); }')
BPFTRACE_KPROBE_COUNT = ('BEGIN { printf("live\\n"); } '
                         'kprobe:do_sys_openat2 { @opens = count(); }')

# bpfprobes keeps compiled programs in a cache (progcache.py): the bench gives
# it one of its own, warmed by the first run; the "first start" row starts
# from an empty cache every time (a BCC compile in the process).
OURS = Tracer("bpfprobes opensnoop", ("{root}/.venv/bin/bpfprobes", "opensnoop"),
              _sum(r"^opensnoop: \d+ events, (\d+) lost"),
              note="syscalls:sys_exit_open* alone, direct ring reader, program cache",
              env=(("BPFPROBES_CACHE", "{work}/cache"),), warm_up=True)
OURS_JSON = Tracer("bpfprobes opensnoop --json", (*OURS.argv, "--json"),
                   _sum(r'^\{"type":"summary","events":\d+,"lost":(\d+)'),
                   note="JSON lines, the same program cache", env=OURS.env, warm_up=True)
# a ring that holds a whole 1M storm (16384 pages a CPU: 128 MiB here): what a burst needs when the consumer
# is slower than the storm; the memory shows in the buffers column
OURS_BIG = Tracer("bpfprobes opensnoop --buffer-pages 16384", (*OURS.argv, "--buffer-pages", "16384"),
                  OURS.lost, note="a larger ring, the same program cache", env=OURS.env,
                  warm_up=True)
OURS_COLD = Tracer("bpfprobes opensnoop, first start", OURS.argv, OURS.lost,
                   note="empty program cache: BCC compiles", smallest_only=True,
                   env=(("BPFPROBES_CACHE", "{work}/cold-{unique}"),))
LIBBPF = Tracer("libbpf-tools opensnoop", ("/usr/sbin/opensnoop",),
                _sum(r"[Ll]ost (\d+) events"),
                note="C, perf buffer, a wakeup per event")
BPFTRACE = Tracer("bpftrace one-liner", ("bpftrace", "-e", BPFTRACE_OPENAT),
                  _sum(r"Lost (\d+) events"), note="tracepoint printf")
BCC_PY = Tracer("BCC-style Python tool", ("{python}", "{root}/bench/peers/bcc_opensnoop.py"),
                _sum(r"^lost (\d+) samples"), note="Python callback per event")
FLOOR = Tracer("kernel floor (count only)", ("bpftrace", "-e", BPFTRACE_COUNT),
               _sum(r"Lost (\d+) events"), events="count", live_by="begin",
               note="bpftrace count(), no output per event")

HOST = (OURS, OURS_JSON, OURS_BIG, OURS_COLD, LIBBPF, BPFTRACE, BCC_PY, FLOOR)
# the sustained-rate ladder (paced opens, rising): who keeps up with what, nothing lost
SUSTAINED = (OURS, OURS_JSON, LIBBPF, BPFTRACE)

# The exec storm (fork + execve of a program that exits at once): execsnoop and
# its peers, each printing the program's arguments (where the storm's token is)
BPFTRACE_EXEC = ('BEGIN { printf("live\\n"); } '
                 'tracepoint:syscalls:sys_enter_execve '
                 '{ printf("%d %s ", pid, comm); join(args->argv); }')
BPFTRACE_EXEC_COUNT = ('BEGIN { printf("live\\n"); } '
                       'tracepoint:syscalls:sys_enter_execve { @execs = count(); }')
EXEC = (Tracer("bpfprobes execsnoop", ("{root}/.venv/bin/bpfprobes", "execsnoop"),
               _sum(r"^execsnoop: \d+ events, (\d+) lost"), storm="exec", warm_up=True,
               note="syscalls:sys_{enter,exit}_execve, program cache",
               env=(("BPFPROBES_CACHE", "{work}/cache"),)),
        Tracer("libbpf-tools execsnoop", ("/usr/sbin/execsnoop",), LIBBPF.lost, storm="exec",
               note="C, perf buffer, a wakeup per event"),
        Tracer("bpftrace one-liner (exec)", ("bpftrace", "-e", BPFTRACE_EXEC), BPFTRACE.lost,
               storm="exec", note="tracepoint printf and join(argv)"),
        Tracer("kernel floor (exec count)", ("bpftrace", "-e", BPFTRACE_EXEC_COUNT),
               BPFTRACE.lost, events="count", live_by="begin", storm="exec",
               note="bpftrace count(), no output per event"))

# The uprobe storm: N calls of the workload's bench_call(i, n, token), a probe
# on it reading two numbers and the string (the token)
WORKLOAD = "{root}/bench/out/workload"
BPFTRACE_CALL = ('BEGIN { printf("live\\n"); } '
                 f'uprobe:{WORKLOAD}:bench_call '
                 '{ printf("%d %d %s\\n", arg0, arg1, str(arg2)); }')
BPFTRACE_CALL_COUNT = ('BEGIN { printf("live\\n"); } '
                       f'uprobe:{WORKLOAD}:bench_call {{ @calls = count(); }}')
CALL = (Tracer("bpfprobes probe (uprobe)",
               ("{root}/.venv/bin/bpfprobes", "probe",
                f"p:{WORKLOAD}:bench_call a=$arg1 b=$arg2 s=+0($arg3):string"),
               _sum(r"^probe: \d+ events, (\d+) lost"), storm="call", warm_up=True,
               note="two registers and a string, ftrace-style lines, program cache",
               env=(("BPFPROBES_CACHE", "{work}/cache"),)),
        Tracer("bpftrace one-liner (uprobe)", ("bpftrace", "-e", BPFTRACE_CALL), BPFTRACE.lost,
               storm="call", note="uprobe printf with str()"),
        Tracer("kernel floor (uprobe count)", ("bpftrace", "-e", BPFTRACE_CALL_COUNT),
               BPFTRACE.lost, events="count", live_by="begin", storm="call",
               note="bpftrace count(), no output per event"))


def baseline(checkout: str) -> Tracer:
    """bpfprobes opensnoop from another checkout (an older commit), run by this
    .venv's Python with that checkout first on its path: old and new code side
    by side in one table (make bench BENCH_ARGS="--baseline DIR")."""
    start = (f"import sys; sys.path.insert(0, {checkout!r}); "
             "from bpfprobes.cli.main import main; sys.exit(main(['opensnoop']))")
    try:            # named by its commit where it is a git checkout
        label = subprocess.run(["git", "-C", checkout, "rev-parse", "--short", "HEAD"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        label = checkout
    return Tracer(f"bpfprobes opensnoop @ {label}", ("{python}", "-c", start), OURS.lost,
                  note="the same tool from the baseline checkout, program cache warm",
                  env=(("BPFPROBES_CACHE", "{work}/cache-baseline"),), warm_up=True)

VM_BPFTRACE = Tracer("bpftrace one-liner (kprobe)", ("bpftrace", "-e", BPFTRACE_KPROBE),
                     _sum(r"Lost (\d+) events"), note="kprobe printf")
VM_FLOOR = Tracer("kernel floor (kprobe count)", ("bpftrace", "-e", BPFTRACE_KPROBE_COUNT),
                  _sum(r"Lost (\d+) events"), events="count", live_by="begin",
                  note="bpftrace count() on do_sys_openat2")
# BCC's Python peer compiles for ~25 s in the emulated VM: left out there
# the host's default path, asked for where kprobes exist: one program on each
# syscalls:sys_exit_open* (no kretprobe), what a user can choose under a storm
VM_TRACEPOINT = Tracer("bpfprobes opensnoop --attach tracepoint",
                       (*OURS.argv, "--attach", "tracepoint"), OURS.lost,
                       note="syscalls:sys_exit_open* alone, program cache", env=OURS.env,
                       warm_up=True)
VM = (OURS, VM_TRACEPOINT, LIBBPF, VM_BPFTRACE, VM_FLOOR)
