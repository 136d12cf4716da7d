"""--folded (probe, irq): stacks counted in the kernel by stack id, printed at exit in
the folded format flame graph tools read (flamegraph.pl, inferno, speedscope):
`ROOT;outermost;...;innermost COUNT`, one line per distinct stack.

The kernel keeps one row per (root, stacks, caller, address space) in metrics.h's
per-CPU table, and each distinct stack once, named by its content (bpf_c/folded.h):
nothing is sent per call. The rows and the stacks they name are read once at the
stop, while the program is still loaded. User frames are named
from the maps each process had when it was first seen (procmaps.UserSymbols: the
kernel sends that first sight at once), so processes gone by the end are named too;
kernel frames from kallsyms.
"""
from __future__ import annotations

import os
import re
import struct
import sys
from dataclasses import dataclass, replace
from typing import Callable

from bpfprobes import __version__
from bpfprobes.backends.bpf import tables
from bpfprobes.backends.bpf.backend import BpfBackend
from bpfprobes.backends.bpf.perfbuffer import PerfBuffer
from bpfprobes.base.errors import BpfprobesError
from bpfprobes.base.safetext import for_terminal
from bpfprobes.gen import codegen, probegen
from bpfprobes.kernel import errnos
from bpfprobes.kernel.kallsyms import Kallsyms
from bpfprobes.kernel.procmaps import Incarnation, UserSymbols
from bpfprobes.kernel.running import Kernel
from bpfprobes.plan import metricplan, probeplan
from bpfprobes.plan.metricplan import STACK_ARGS
from bpfprobes.plan.probeattach import attachments
from bpfprobes.present.decode import METRIC_ARGS, METRIC_KEY, PROBE_EVENT, cstr
from bpfprobes.present.output import JsonOutput, TextOutput
from bpfprobes.present.probefmt import TRAMPOLINES, CallerRule, with_caller
from bpfprobes.session import loop
from bpfprobes.session.core import Live, Session

SERIES = 65_536                 # distinct (root, stacks) rows kept; past them: an other row
PROBE_SEEN = 0xFFFFFFFF         # probe_event.h: a process's first sight
NOT_ASKED = -1                  # a stack id of -1: that stack was not asked for
_ARGS = struct.Struct(f"<{METRIC_ARGS}q")
_HEADER = PROBE_EVENT.head.size
# the tracer's own frames at the innermost end of a kernel stack (the BPF program, the
# tracepoint or kprobe dispatch that ran it): not the traced code, so not shown. A
# BPF program loaded after kallsyms was read resolves to the last symbol before it.
_MACHINERY = re.compile(r"bpf_prog_|bpf_trace_run\d|__bpf_trace_|__traceiter_|perf_trace_"
                        r"|perf_syscall_|trace_call_bpf|kprobe_(perf|ftrace|int3|dispatcher)"
                        r"|_einittext$|__bpf_prog_run|uprobe_")


@dataclass(frozen=True)
class Row:
    """One distinct stack as the kernel counted it."""
    index: int                  # the probe (irq: the kind)
    pid: int
    comm: str
    kstack: int                 # the stack's name (bpf_c/folded.h), -errno, -1: not asked
    ustack: int
    caller: int                 # return address read at a function's entry, or 0
    mm: int
    label: int = 0              # irq: kind << 32 | line (args[0] of its key)


class FoldedTables(PerfBuffer):
    """The events map (first sights only), and at the stop, while still loaded, the
    counted rows and every stack they name."""

    def __init__(self, loaded, key: Callable[[dict], Row]) -> None:
        # a wakeup per first sight (one per process, rare): its maps are read before a
        # short-lived process is gone, not a batch later
        super().__init__(loaded, wakeup_events=1)
        self._program = loaded
        self._key = key
        self.rows: dict[Row, int] = {}
        self.other = 0                                  # calls past the table's rows
        self.stacks: dict[int, list[int]] = {}

    def finish(self) -> None:
        super().finish()                                # first sights still in the rings
        loaded = self._program
        for raw, per_cpu in tables.percpu_rows(loaded, "metrics"):
            n = sum(int.from_bytes(v[:8], "little") for v in per_cpu)
            if n:
                row = self._key(METRIC_KEY.unpack(raw))
                self.rows[row] = self.rows.get(row, 0) + n
        self.other = sum(int.from_bytes(v[:8], "little")
                         for _, per_cpu in tables.percpu_rows(loaded, "metric_other")
                         for v in per_cpu)
        wanted = {s for r in self.rows for s in (r.kstack, r.ustack) if s >= 0}
        for key, value in tables.rows(loaded, "folded_stacks"):
            name = int.from_bytes(key, "little")
            if name in wanted:
                ips = struct.unpack(f"<{len(value) // 8}Q", value)
                self.stacks[name] = list(ips[:ips.index(0)] if 0 in ips else ips)


def probe_row(key: dict) -> Row:
    """A probe --folded row (metricplan.STACK_ARGS in its key's args)."""
    args = _ARGS.unpack(key["args"])
    return Row(key["probe"], key["pid"], cstr(key["comm"]), args[STACK_ARGS["kstack"]],
               args[STACK_ARGS["ustack"]], args[STACK_ARGS["caller"]] & (2**64 - 1),
               args[STACK_ARGS["mm"]] & (2**64 - 1))


def frame_text(name: str) -> str:
    """A frame as the folded format can hold it: escaped for a terminal, and no `;`
    (the frame separator) from a symbol or a comm; a backslash of its own is escaped
    first, so no name reads as another's escape."""
    return for_terminal(name.replace("\\", "\\x5c")).replace(";", "\\x3b")


class Namer:
    """Frames of a row, outermost first: user frames, then kernel frames. `probe_of`:
    a row's probe (None: no caller to put back)."""

    def __init__(self, kallsyms: Kallsyms, users: UserSymbols,
                 probe_of: Callable[[Row], object | None]):
        self.kallsyms = kallsyms
        self.users = users
        self.probe_of = probe_of
        self.callers = CallerRule()

    def observe(self, rows, stacks: dict[int, list[int]]) -> None:
        """Learn from every user stack which probes' stacks lack their caller, before
        any is named (CallerRule: the outermost of a recursion settles it)."""
        for row in rows:
            probe = self.probe_of(row)
            if probe is not None and row.ustack >= 0:
                self.callers.observe(probe, stacks.get(row.ustack, []), row.caller)

    def kernel(self, addrs: list[int]) -> list[str]:
        out = []
        for i, a in enumerate(addrs):
            hit = self.kallsyms.resolve(a - (i > 0))       # return addresses: the call's
            name = hit[0].name if hit is not None else "[unknown]"
            if any(t in name for t in TRAMPOLINES):
                continue
            if out or not _MACHINERY.match(name):          # innermost first: trimmed
                out.append(name)
        return out

    def user(self, row: Row, addrs: list[int]) -> list[str]:
        return [self.users.name(row.pid, row.mm, a - (i > 0)) for i, a in enumerate(addrs)]

    def frames(self, row: Row, stacks: dict[int, list[int]]) -> list[str]:
        out: list[str] = []
        for sid, kind in ((row.ustack, "user"), (row.kstack, "kernel")):
            if sid == NOT_ASKED:
                continue
            if sid < 0:
                out.append(f"[no {kind} stack: {errnos.name(sid) or sid}]")
                continue
            addrs = stacks.get(sid, [])
            probe = self.probe_of(row)
            if probe is not None and kind == "user":
                addrs = self.callers.apply(probe, addrs, row.caller)
            elif probe is not None and probe.spec.is_kernel and not probe.spec.is_return:
                addrs = with_caller(addrs, row.caller)
            names = self.user(row, addrs) if kind == "user" else self.kernel(addrs)
            out += reversed(names)
        return out


def stacks_of(rows: dict[Row, int], other: int, stacks: dict[int, list[int]], namer: Namer,
              root: Callable[[Row], str]) -> dict[tuple[str, ...], int]:
    """{frames, root first: count}: rows that name the same frames are one stack."""
    namer.observe(rows, stacks)
    out: dict[tuple[str, ...], int] = {}
    for row, n in rows.items():
        frames = (root(row), *namer.frames(row, stacks))
        out[frames] = out.get(frames, 0) + n
    if other:
        out[("[other stacks: the table was full]",)] = other
    return out


def folded_text(counted: dict[tuple[str, ...], int]) -> str:
    """The folded lines, sorted (stable output, as stackcollapse tools print)."""
    lines = sorted(";".join(frame_text(f) for f in frames) + f" {n}"
                   for frames, n in counted.items())
    return "\n".join(lines)


def session(k: Kernel, prog: str, program: codegen.Program, attaches: list, o,
            key: Callable[[dict], Row], root: Callable[[Row], str],
            probe_of: Callable[[Row], object | None], what: str,
            meta_extra: dict) -> loop.Summary:
    """A run whose program counts stacks (probe --folded, irq --folded), printed at exit."""
    users = UserSymbols()
    readers: list[FoldedTables] = []
    sink = JsonOutput(prog) if o.json else _Text(prog, what)

    def reader(loaded) -> FoldedTables:
        readers.append(FoldedTables(loaded, key))
        return readers[-1]

    backend = BpfBackend(k, program, attaches, cacheable=False, reader=reader)

    def consumer(_backend) -> Callable[[bytes], bool]:
        def on_sample(raw: bytes) -> bool:
            head = PROBE_EVENT.unpack(raw) if len(raw) >= _HEADER + 32 else None
            if head is not None and head["probe"] == PROBE_SEEN:
                pid = head["pid"]
                space, boottime, code, stack = struct.unpack_from("<4Q", raw, _HEADER)
                remembered = users.remember(pid, space, Incarnation(boottime, code, stack))
                if o.verbose:
                    print(f"{prog}: maps of pid {pid} " +
                          ("kept" if remembered else "not read: the process is gone, exiting "
                           "or no longer the one seen"),
                          file=sys.stderr, flush=True)
            return False
        return on_sample

    def at_exit(_summary) -> dict:
        r = readers[-1]
        namer = Namer(k.kallsyms, users, probe_of)
        folded = stacks_of(r.rows, r.other, r.stacks, namer, root)
        rows = [{"stack": list(frames), "count": n} for frames, n in sorted(folded.items())]
        try:
            if rows or o.json:              # no stacks: no line, not an empty one
                sink.table("folded", rows, folded_text(folded))
                sink.flush()
        except BrokenPipeError:             # | head: the rest of the stacks is not wanted
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except OSError as e:                # a full disk: say so, not a traceback
            raise BpfprobesError(f"cannot write the stacks: {e.strerror or e}",
                                 "write them where there is room") from None
        users.close()
        missed = sum(1 for row in r.rows if row.ustack >= 0 and (row.pid, row.mm) in
                     users.missed)
        return {"events": sum(r.rows.values()) + r.other, "stacks": len(folded),
                **({"stacks_unnamed": missed} if missed else {})}

    def meta(live_: Live) -> dict:
        return {"version": __version__, "kernel": k.release, "probes": live_.attached,
                "folded": True, **meta_extra, "startup_s": live_.startup_s}

    return Session(prog, k, backend, sink, consumer, loop.Limits(o.duration, None), meta,
                   verbose=o.verbose, throttled=o.rate_limit is not None,
                   at_exit=at_exit).run()


class _Text(TextOutput):
    """--folded's text: the stacks alone on stdout (for a flame graph tool); what is
    counted goes to stderr."""

    def __init__(self, prog: str, what: str) -> None:
        super().__init__(prog, [], header=False)
        self.what = what

    def meta(self, meta: dict) -> None:
        print(f"Counting {for_terminal(self.what)} in the kernel. Ctrl-C to end.",
              file=sys.stderr, flush=True)


# ---------------------------------------------------------------- probe --folded

# where probe.h's probe_space_of finds a process's identity, from this kernel's BTF
SPACE_OFFSETS = {"TASK_MM": ("task_struct", "mm"),
                 "TASK_GROUP_LEADER": ("task_struct", "group_leader"),
                 "TASK_START_BOOTTIME": ("task_struct", "start_boottime"),
                 "MM_START_CODE": ("mm_struct", "start_code"),
                 "MM_START_STACK": ("mm_struct", "start_stack")}


def task_offsets(k: Kernel) -> tuple:
    """((define, offset), ...) where BTF has them all, else () (the identity is 0:
    maps are then read without checking the process is the one seen)."""
    found = {name: k.struct_offset(*where) for name, where in SPACE_OFFSETS.items()}
    return tuple(found.items()) if None not in found.values() else ()


def seed() -> int:
    """A random seed for folded.h's stack names, per run (a 63-bit value: -D safe)."""
    return int.from_bytes(os.urandom(8), "little") >> 1


def run_probe(k: Kernel, plan, o, prog: str) -> loop.Summary:
    """probe --folded: each probe's stacks counted under (comm, pid: user stacks need
    it). Without -s or -U: kernel stacks at kernel probes, user stacks at uprobes."""
    opts = plan.options
    kstack, ustack = opts.kstack, opts.ustack
    if not (kstack or ustack):
        kstack = any(not p.spec.is_uprobe for p in plan.probes)
        ustack = any(p.spec.is_uprobe for p in plan.probes)
    by = ("comm", "pid") if ustack else ("comm",)
    plan = replace(plan, options=replace(opts, kstack=kstack, ustack=ustack,
                                         task_offsets=task_offsets(k), folded_seed=seed()))
    plan = probeplan.with_metrics(plan, metricplan.Options(by, SERIES, stacks=True))
    probes = plan.probes

    def probe_of(row: Row):
        return probes[row.index] if row.index < len(probes) else None

    return session(k, prog, probegen.probe_program(plan, k.abi), attachments(k, plan), o,
                   probe_row, lambda row: row.comm, probe_of,
                   f"stacks of {len(probes)} probe{'s' * (len(probes) != 1)}",
                   {"stacks": [s for s, on in (("kernel", kstack), ("user", ustack)) if on]})
