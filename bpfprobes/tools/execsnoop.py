"""execsnoop: trace execve() and execveat() system-wide, with arguments and result."""
from __future__ import annotations

import errno
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import Callable

from bpfprobes import __version__
from bpfprobes.backends.bpf.backend import BpfBackend
from bpfprobes.base.errors import KernelError
from bpfprobes.base.safetext import for_terminal
from bpfprobes.gen import codegen
from bpfprobes.kernel import policy
from bpfprobes.kernel.running import Kernel, current
from bpfprobes.plan import runconfig
from bpfprobes.plan.attach import Attach
from bpfprobes.present.decode import EXEC_ARGS_MISSING, EXEC_ARGS_SIZE, EXEC_ARG_MAX, exec_event
from bpfprobes.present.output import Column, JsonOutput, TextOutput
from bpfprobes.session import loop
from bpfprobes.session.core import Session, decoding, standard_meta
from bpfprobes.tools import shared
from bpfprobes.tools.shared import Clock, SessionOptions

SYSCALLS = ("execve", "execveat")
INFLIGHT_MAX = 1024        # execs between entry and return at once; beyond: counted drops
MAX_ARGS_LIMIT = 1024      # the BPF loop's bound; args[] (16 KiB) fills long before
DEFAULT_MAX_ARGS = 20


@dataclass(frozen=True)
class Options(SessionOptions):
    time: bool = False                  # -T: HH:MM:SS column
    timestamp: bool = False             # -t: seconds since start
    fails: bool = False                 # -x: failed execs too
    quote: bool = False                 # -q: "quoted" arguments
    name: re.Pattern | None = None      # comm matches
    line: re.Pattern | None = None      # the joined command line matches
    print_uid: bool = False
    uid: int | None = None
    ppid: int | None = None             # children of this process only
    max_args: int = DEFAULT_MAX_ARGS
    attach: str | None = None           # policy.CHOICES


def _plan(o: Options, k: Kernel) -> tuple[policy.Choice, list[Attach], dict]:
    entries = shared.syscall_entries(k, SYSCALLS)
    tps = shared.syscall_tracepoints(k, SYSCALLS)
    choice = policy.choose(k, o.attach, [s for s, _ in entries.values()], tps)
    if choice.mechanism == policy.KPROBE:
        return (choice, *shared.syscall_kprobes(k, entries, "kr_exec"))
    return (choice, *shared.syscall_tracepoint_attaches(tps, "tp_exit_exec"))


def _task_offsets(k: Kernel) -> tuple[dict, str]:
    """Where PPID comes from: task_struct offsets from BTF, or this kernel's own headers."""
    parent = k.struct_offset("task_struct", "real_parent")
    tgid = k.struct_offset("task_struct", "tgid")
    if parent is not None and tgid is not None:
        return {"TASK_REAL_PARENT": parent, "TASK_TGID": tgid}, \
            f"BTF (task_struct.real_parent +{parent}, tgid +{tgid})"
    if k.headers.status == "matching":
        return {"TASK_FROM_HEADERS": True}, f"this kernel's headers ({k.headers.path})"
    raise KernelError("cannot tell parent PIDs: no BTF (/sys/kernel/btf/vmlinux) and the kernel "
                      "headers found are not this kernel's", "enable CONFIG_DEBUG_INFO_BTF, or "
                      "install the headers of the running kernel (linux-headers-$(uname -r))")


# Text output escapes every argument for the terminal (safetext.for_terminal:
# controls, bidi overrides, bytes that are not UTF-8), which also keeps one exec
# on one line; with -q the argument is first quoted with \\ and " escaped, so
# the line is unambiguous (a literal backslash shows doubled, an escape single).
_QUOTED = {ord("\\"): "\\\\", ord('"'): '\\"'}


def _render_args(quote: bool) -> Callable[[dict], str]:
    """ARGS column: BCC's look; a cut argument ends in "...", missing ones add " ..."."""
    def one(arg: str, cut: bool) -> str:
        text = f'"{for_terminal(arg.translate(_QUOTED))}"' if quote else for_terminal(arg)
        return text + "..." if cut else text

    def render(e: dict) -> str:
        cut = set(e["cut"])
        line = " ".join(one(a, i in cut) for i, a in enumerate(e["argv"]))
        return line + " ..." if e["flags"] & EXEC_ARGS_MISSING else line
    return render


def _columns(o: Options, clock: Clock, started: float) -> list[Column]:
    def hms(e: dict) -> str:
        return time.strftime("%H:%M:%S", time.localtime(clock.wall(e["ts_ns"])))

    cols = [Column("TIME", -8, hms, escape=False)] if o.time else []
    cols += [Column("TIME(s)", -8, lambda e: f"{clock.wall(e['ts_ns']) - started:.3f}",
                    escape=False)] if o.timestamp else []
    cols += [Column("UID", -6, lambda e: e["uid"], escape=False)] if o.print_uid else []
    # ARGS escapes each argument itself (before -q's quotes and the joining spaces)
    return cols + [Column("PCOMM", -16, lambda e: e["comm"]),
                   Column("PID", -7, lambda e: e["pid"], escape=False),
                   Column("PPID", -7, lambda e: e["ppid"], escape=False),
                   Column("RET", 3, lambda e: e["ret"], escape=False),
                   Column("ARGS", 0, _render_args(o.quote), escape=False)]


def _decoder(o: Options, clock: Clock) -> Callable[[bytes], dict | None]:
    name, line = o.name, o.line

    def decode(raw: bytes) -> dict | None:
        e = exec_event(raw)
        if name is not None and not name.search(e["comm"]):
            return None
        if line is not None and not line.search(" ".join(e["argv"])):
            return None
        return e

    if not o.json:
        return decode

    def decode_json(raw: bytes) -> dict | None:
        e = decode(raw)
        if e is None:
            return None
        ret = e["ret"]
        return {"pid": e["pid"], "tid": e["tid"], "ppid": e["ppid"], "uid": e["uid"],
                "comm": e["comm"], "ret": ret,
                "errno": errno.errorcode.get(-ret, str(-ret)) if ret < 0 else None,
                "syscall": e["syscall"], "argv": e["argv"],
                "truncated": bool(e["truncation"]), "truncation": e["truncation"],
                "cut_args": e["cut"], "ts": clock.wall(e["ts_ns"])}
    return decode_json


def _meta(o: Options, k: Kernel, choice: policy.Choice, ppid_from: str) -> dict:
    filters = (("uid", o.uid), ("ppid", o.ppid), ("failed", True if o.fails else None),
               ("name", o.name.pattern if o.name else None),
               ("line", o.line.pattern if o.line else None))
    return {"version": __version__, "kernel": k.release, "arch": k.abi.name,
            "attach": choice.mechanism, "why": choice.why, "transport": "perf_buffer",
            "ppid_from": ppid_from, "max_args": o.max_args,
            "args_bytes": EXEC_ARGS_SIZE, "arg_bytes": EXEC_ARG_MAX,
            "filters": {key: v for key, v in filters if v is not None}}


def run(o: Options) -> int:
    shared.require_root()
    started = time.time()
    k = current()
    choice, attaches, defs = _plan(o, k)
    task_defs, ppid_from = _task_offsets(k)
    defs.update(task_defs)
    defs.update({"INFLIGHT_MAX": INFLIGHT_MAX, "MAX_ARGS": o.max_args})
    config = runconfig.pack(runconfig.EXECSNOOP, {
        **runconfig.task(skip_pid=os.getpid(), uid=o.uid, rate=o.rate_limit),
        "ppid": o.ppid, "show_failed": int(bool(o.fails))})
    if o.verbose:
        print(f"execsnoop: attach {choice.mechanism}: {choice.why}", file=sys.stderr)
        print(f"execsnoop: parent PIDs from {ppid_from}", file=sys.stderr)
    clock = Clock()
    sink = JsonOutput("execsnoop") if o.json else \
        TextOutput("execsnoop", _columns(o, clock, started))
    meta = _meta(o, k, choice, ppid_from)
    if o.rate_limit:
        meta["rate_limit"] = o.rate_limit.meta()
    backend = BpfBackend(k, codegen.ready_tool("execsnoop", defs, config), attaches,
                         pages=o.buffer_pages)
    Session("execsnoop", k, backend, sink, decoding(_decoder(o, clock), sink),
            loop.Limits(o.duration, o.max_events), standard_meta(meta),
            verbose=o.verbose, throttled=o.rate_limit is not None).run()
    return 0
