"""execsnoop: trace execve() and execveat() system-wide, with arguments and result."""
from __future__ import annotations

import argparse
import errno
import os
import pwd
import re
import sys
import time
from typing import Callable, Sequence

from .. import __version__, codegen, policy, runconfig, stream
from ..bpfbackend import BpfBackend
from ..decode import EXEC_ARG_MAX, EXEC_ARGS_MISSING, EXEC_ARGS_SIZE, exec_event
from ..errors import KernelError
from ..kernel import Kernel, current
from ..loader import Attach
from ..output import Column, JsonOutput, TextOutput
from ..safetext import for_terminal
from ..session import Session, decoding, standard_meta
from . import common

SYSCALLS = ("execve", "execveat")
INFLIGHT_MAX = 1024        # execs between entry and return at once; beyond: counted drops
MAX_ARGS_LIMIT = 1024      # the BPF loop's bound; args[] (16 KiB) fills long before

EXAMPLES = """\
    execsnoop                    # trace all exec() syscalls (execve and execveat)
    execsnoop -x                 # include failed exec()s
    execsnoop -T -U              # with a time (HH:MM:SS) and UID column
    execsnoop -t                 # with seconds since execsnoop started
    execsnoop -q                 # "quote" every argument
    execsnoop -n '^(sh|bash)$'   # only programs whose name matches a regex
    execsnoop -l 'tpkg'          # only command lines matching a regex
    execsnoop -u www-data        # only this user (a name or a UID)
    execsnoop -P 1234            # only children of PID 1234
    execsnoop --max-args 60      # show up to 60 arguments (default 20)
    execsnoop --json -d 10       # JSON lines for 10 seconds
    execsnoop --rate-limit 50/cpu   # at most 50 events/s per CPU; the rest counted
    execsnoop -v --attach tracepoint
"""


def _max_args(text: str) -> int:
    value = common.count_arg(text)
    if value > MAX_ARGS_LIMIT:
        raise argparse.ArgumentTypeError(
            f"--max-args must be at most {MAX_ARGS_LIMIT}, not {value}")
    return value


def _regex(text: str) -> re.Pattern:
    try:
        return re.compile(text)
    except re.error as e:
        raise argparse.ArgumentTypeError(f"bad regular expression {common.shown(text)}: {e}")
    except (OverflowError, RecursionError) as e:     # a{99999999999}; parentheses 1000 deep
        raise argparse.ArgumentTypeError(
            f"regular expression {common.shown(text)} is too large: {e}")


def _user(text: str) -> int:
    """A user name or a numeric UID, as BCC's -u takes it."""
    if text.isascii() and text.isdigit():      # not int('²'), which isdigit() too
        return common.uid_arg(str(int(text)))      # 007 is 7, not octal
    try:
        return pwd.getpwnam(text).pw_uid
    except (KeyError, ValueError):                 # ValueError: a NUL or a surrogate
        raise argparse.ArgumentTypeError(f"no such user {common.shown(text)}")


def build_parser() -> common.Parser:
    p = common.parser("execsnoop", "Trace execve() and execveat() syscalls, with arguments.",
                      EXAMPLES)
    p.add_argument("-T", "--time", action="store_true", help="include a time column (HH:MM:SS)")
    p.add_argument("-t", "--timestamp", action="store_true",
                   help="include a column of seconds since execsnoop started")
    p.add_argument("-x", "--fails", action="store_true", help="include failed exec()s")
    p.add_argument("-q", "--quote", action="store_true",
                   help='put "quotemarks" around arguments (\\ and " escaped)')
    p.add_argument("-n", "--name", type=_regex, metavar="NAME",
                   help="only programs whose name (comm) matches this regex")
    p.add_argument("-l", "--line", type=_regex, metavar="LINE",
                   help="only command lines (arguments joined by spaces) matching this regex")
    p.add_argument("-U", "--print-uid", action="store_true", help="include a UID column")
    p.add_argument("-u", "--uid", type=_user, metavar="USER",
                   help="trace this user only (name or UID)")
    p.add_argument("-P", "--ppid", type=common.pid_arg, help="trace children of this PID only")
    p.add_argument("--max-args", type=_max_args, default=20, metavar="N",
                   help="arguments to capture and show (default 20)")
    p.add_argument("--attach", choices=policy.CHOICES,
                   help="force kprobes or tracepoints (default: kprobes where available)")
    common.add_session_options(p)
    return p


def _plan(args, k: Kernel) -> tuple[policy.Choice, list[Attach], dict]:
    entries = common.syscall_entries(k, SYSCALLS)
    tps = common.syscall_tracepoints(k, SYSCALLS)
    choice = policy.choose(k, args.attach, [s for s, _ in entries.values()], tps)
    if choice.mechanism == policy.KPROBE:
        return (choice, *common.syscall_kprobes(k, entries, "kr_exec"))
    return (choice, *common.syscall_tracepoint_attaches(tps, "tp_exit_exec"))


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


def _columns(args, clock: common.Clock, started: float) -> list[Column]:
    def hms(e: dict) -> str:
        return time.strftime("%H:%M:%S", time.localtime(clock.wall(e["ts_ns"])))

    cols = [Column("TIME", -8, hms, escape=False)] if args.time else []
    cols += [Column("TIME(s)", -8, lambda e: f"{clock.wall(e['ts_ns']) - started:.3f}",
                    escape=False)] if args.timestamp else []
    cols += [Column("UID", -6, lambda e: e["uid"], escape=False)] if args.print_uid else []
    # ARGS escapes each argument itself (before -q's quotes and the joining spaces)
    return cols + [Column("PCOMM", -16, lambda e: e["comm"]),
                   Column("PID", -7, lambda e: e["pid"], escape=False),
                   Column("PPID", -7, lambda e: e["ppid"], escape=False),
                   Column("RET", 3, lambda e: e["ret"], escape=False),
                   Column("ARGS", 0, _render_args(args.quote), escape=False)]


def _decoder(args, clock: common.Clock) -> Callable[[bytes], dict | None]:
    name, line = args.name, args.line

    def decode(raw: bytes) -> dict | None:
        e = exec_event(raw)
        if name is not None and not name.search(e["comm"]):
            return None
        if line is not None and not line.search(" ".join(e["argv"])):
            return None
        return e

    if not args.json:
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


def _meta(args, k: Kernel, choice: policy.Choice, ppid_from: str) -> dict:
    filters = (("uid", args.uid), ("ppid", args.ppid), ("failed", True if args.fails else None),
               ("name", args.name.pattern if args.name else None),
               ("line", args.line.pattern if args.line else None))
    return {"version": __version__, "kernel": k.release, "arch": k.abi.name,
            "attach": choice.mechanism, "why": choice.why, "transport": "perf_buffer",
            "ppid_from": ppid_from, "max_args": args.max_args,
            "args_bytes": EXEC_ARGS_SIZE, "arg_bytes": EXEC_ARG_MAX,
            "filters": {key: v for key, v in filters if v is not None}}


def run(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(argv)
    common.require_root()
    started = time.time()
    k = current()
    choice, attaches, defs = _plan(args, k)
    task_defs, ppid_from = _task_offsets(k)
    defs.update(task_defs)
    defs.update({"INFLIGHT_MAX": INFLIGHT_MAX, "MAX_ARGS": args.max_args})
    config = runconfig.pack(runconfig.EXECSNOOP, {
        **runconfig.task(skip_pid=os.getpid(), uid=args.uid, rate=args.rate_limit),
        "ppid": args.ppid, "show_failed": int(bool(args.fails))})
    if args.verbose:
        print(f"execsnoop: attach {choice.mechanism}: {choice.why}", file=sys.stderr)
        print(f"execsnoop: parent PIDs from {ppid_from}", file=sys.stderr)
    clock = common.Clock()
    sink = JsonOutput("execsnoop") if args.json else \
        TextOutput("execsnoop", _columns(args, clock, started))
    meta = _meta(args, k, choice, ppid_from)
    if args.rate_limit:
        meta["rate_limit"] = args.rate_limit.meta()
    backend = BpfBackend(k, codegen.ready_tool("execsnoop", defs, config), attaches,
                         pages=args.buffer_pages)
    Session("execsnoop", k, backend, sink, decoding(_decoder(args, clock), sink),
            stream.Limits(args.duration, args.max_events), standard_meta(meta),
            verbose=args.verbose, throttled=args.rate_limit is not None).run()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return common.main("execsnoop", run, argv)


if __name__ == "__main__":
    sys.exit(main())
