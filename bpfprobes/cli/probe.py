"""probe (also installed as `kprobe`): kprobes, kretprobes, uprobes and
tracepoints on any function, with arguments in the kernel's fetcharg syntax."""
from __future__ import annotations

import argparse
import sys
from typing import Sequence

from bpfprobes.backends.bpf import perfbuffer
from bpfprobes.plan import probelayout
from bpfprobes.plan import countplan
from bpfprobes.tools import probe
from . import common

EXAMPLES = """\
  bpfprobes probe 'p:do_sys_openat2 file=+0(%si):string'       # kernel function, arg by register
  bpfprobes probe 'p:do_sys_openat2 filename:string'           # the same, by its BTF name
  bpfprobes probe 'r:do_sys_openat2 ret=$retval' --filter 'ret < 0'     # failed opens only
  bpfprobes probe 'p:do_sys_openat2' 'r:do_sys_openat2 ret=$retval' --summary   # + latency
  bpfprobes probe -s 'p:vfs_read count=$arg3:u64' -n 5         # with kernel stacks, 5 events
  bpfprobes probe 'p:9pnet_virtio:p9_virtio_request'           # a function in a module
  bpfprobes probe 'p:/lib/x86_64-linux-gnu/libc.so.6:malloc size=$arg1:u64' -p 1234
  bpfprobes probe -U 'r:/usr/bin/bash:readline line=+0($retval):string'
  bpfprobes probe 'r:bash:readline +0($retval):string'           # bash from PATH
  bpfprobes probe -p 1234 'p:libc:malloc size=$arg1:u64'        # the libc pid 1234 mapped
  bpfprobes probe 'u:/usr/bin/python3.11:python:gc__start gen=$arg1'   # a USDT probe
  bpfprobes probe 'u:./a.out:myapp:request id=$arg1 url=+0($arg2):string'  # (sys/sdt.h)
  bpfprobes probe 't:syscalls:sys_enter_openat filename:string' --filter 'filename ~ "/etc/*"'
  bpfprobes probe --json 't:sched:sched_process_exec filename pid'
  bpfprobes probe --context 'p:vring_interrupt irq=$arg1:s32'      # hardirq? preempt depth?
  bpfprobes probe --backend tracefs 'p:do_sys_openat2 file=+0(%si):string'  # no BCC needed
  bpfprobes probe --count 'p:vfs_read' 'p:vfs_write' -i 1      # calls counted in the kernel
  bpfprobes probe --rate-limit 100 'p:vfs_read count=$arg3:u64'  # at most 100 events/s
  bpfprobes probe --prometheus :9435 'p:do_sys_openat2' 'r:do_sys_openat2'  # hits, latency
  bpfprobes probe --hist -d 10 'p:vfs_read' 'r:vfs_read'        # latency histogram, in us
  bpfprobes probe --hist --hist-of n --by comm 'r:vfs_read n=$retval'  # sizes read, per comm
  bpfprobes probe --hist --linear 100 --hist-of count 't:syscalls:sys_enter_read count' 
  bpfprobes probe --folded -d 10 'p:vfs_read' > out.folded     # flamegraph.pl out.folded
  bpfprobes probe --folded -p 1234 'p:libc:malloc'               # who calls malloc, by stack
  bpfprobes probe --dry-run 'p:do_sys_openat2 file=+0(%si):string'   # show C, attach nothing
  kprobe 'p:myopen do_sys_openat2 file=+0(%si):string' 'file ~ "/etc/*"'  # perf-tools style

specs: p[:[GRP/]EVENT] [MOD:]SYM[+OFFS] [ARGS]   kprobe     r[N][:EVENT] [MOD:]SYM [ARGS]  kretprobe
       p[:EVENT] /PATH:SYM[+OFFS] [ARGS]         uprobe     r[:EVENT] /PATH:SYM [ARGS]     uretprobe
       PATH may be relative (./a.out:main) or a name: a kernel module of that name first,
       else (with -p) a file that process mapped, a program on PATH (bash:readline), a
       library in the loader's cache (libc:malloc, c:malloc, libc.so.6:malloc)
       t:SUBSYS:EVENT [FIELD[:TYPE] ...]         tracepoint (fields from its format file)
       u:BINARY:[PROVIDER:]NAME [ARGS]           USDT probe, every site of it; $argN are the
                                                 note's arguments, typed by it; semaphores raised
ARGS:  [NAME=]FETCHARG[:TYPE]; FETCHARG: %REG $argN $retval $comm $stackN @SYM[+OFFS]
       +|-[u]OFFS(FETCHARG) or a BTF parameter name; TYPE: u8..u64 s8..s64 x8..x64 string
       ustring symbol. --filter: NAME OP VALUE joined by && || ! ( ), OP one of
       == != < <= > >= & ~ (glob); names: captured args, pid tid cpu comm latency_ns.
       A probe that lacks a field the filter names is not filtered.
"""


def _options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-d", "--duration", type=common.seconds_arg, metavar="SECONDS",
                   help="stop after this many seconds")
    p.add_argument("-n", "--max-events", type=common.count_arg, metavar="COUNT",
                   help="stop after COUNT events")
    p.add_argument("-p", "--pid", type=common.pid_arg, help="only this process (tgid)")
    p.add_argument("-L", "--tid", type=common.pid_arg, help="only this thread")
    p.add_argument("--comm", type=common.comm_arg, metavar="NAME",
                   help="only tasks with this exact name (1 to 15 bytes, as the kernel keeps it)")
    p.add_argument("-H", "--header", action="store_true", help="print a header line first")
    p.add_argument("-s", "--stack", action="store_true", help="kernel stack trace per event")
    p.add_argument("-U", "--user-stack", action="store_true", help="user stack trace per event")
    p.add_argument("--latency", action="store_true",
                   help="time return probes from their function's entry (added automatically "
                        "when p: and r: on one function are both given)")
    p.add_argument("--summary", action="store_true",
                   help="at exit, a table per probe: count, latency p50/p90/p99/max")
    p.add_argument("-q", "--quiet", action="store_true", help="print no events (use with --summary)")
    p.add_argument("--backend", choices=probe.BACKENDS, default="auto",
                   help="bpf: BCC programs; tracefs: the kernel's own kprobe_events/"
                        "uprobe_events in a trace instance of ours (no BCC, no headers); "
                        "auto (default): bpf, or tracefs when BCC cannot compile")
    common.add_rate_limit_option(p)
    p.add_argument("--count", action="store_true",
                   help="count calls per probe in the kernel instead of printing events "
                        "(arguments are not read); see also bpfprobes count")
    p.add_argument("--by", choices=sorted([*countplan.BY, "probe"]),
                   help="with --count or --hist: per process too (probe: per probe only, "
                        "the default)")
    p.add_argument("-i", "--interval", type=common.seconds_arg, metavar="SECONDS",
                   help="with --count or --hist: each interval's")
    p.add_argument("--hist", action="store_true",
                   help="a log2 histogram per probe, bucketed in the kernel, printed at exit "
                        "(and each -i): of the latency (a p:/r: pair or --latency), or of "
                        "--hist-of")
    common.add_histogram_shape_options(p, "with --hist: a latency's unit (default us)")
    p.add_argument("--hist-of", metavar="NAME", help="with --hist: a captured integer argument")
    p.add_argument("--folded", action="store_true",
                   help="count stacks in the kernel (kernel stacks at kernel probes, user "
                        "stacks at uprobes; or as -s/-U say) and print them at exit in the "
                        "folded format of flame graph tools (COMM;outer;...;inner COUNT)")
    p.add_argument("--prometheus", type=common.listen_arg, metavar="ADDR:PORT",
                   help="count each probe's hits (and latencies) in the kernel and serve them "
                        "at http://ADDR:PORT/metrics instead of printing events")
    p.add_argument("--context", action="store_true",
                   help="the context of each event: hardirq/softirq/NMI, bottom halves off, "
                        "need-resched, preempt depth (ftrace's d.h1 columns; read from the "
                        "CPU's preempt_count where kallsyms shows it)")
    p.add_argument("--string-size", type=common.count_arg, metavar="BYTES",
                   default=probelayout.DEFAULT_STRING_SIZE,
                   help=f"bytes kept of each string (default {probelayout.DEFAULT_STRING_SIZE})")
    p.add_argument("--json", action="store_true", help="JSON lines (meta, event, lost, summary)")
    p.add_argument("--buffer-pages", type=common.pages_arg, default=perfbuffer.DEFAULT_PAGES,
                   metavar="N", help=f"perf buffer pages per CPU (default {perfbuffer.DEFAULT_PAGES})")
    p.add_argument("-v", "--dry-run", action="store_true",
                   help="print the generated program and kprobe_events lines; attach nothing")
    p.add_argument("--force", action="store_true",
                   help="probe a user address even where it cannot be shown to start an "
                        "instruction (a warning instead of a refusal)")
    p.add_argument("--verbose", action="store_true",
                   help="say what is attached and where the filter runs, then trace")


def build_parser(prog: str = "bpfprobes probe") -> common.Parser:
    p = common.parser(prog, "Trace kernel and user functions and tracepoints with their "
                      "arguments (kprobe_events syntax, run through BPF).", EXAMPLES)
    p.add_argument("specs", nargs="+", metavar="SPEC", help="probe specs (see below)")
    p.add_argument("--filter", metavar="EXPR", help="only events where EXPR holds, e.g. 'ret < 0'")
    _options(p)
    return p


def build_kprobe_parser() -> common.Parser:
    """perf-tools' `kprobe [options] definition [filter]`."""
    p = common.parser("kprobe", "Trace a kernel or user function, or a tracepoint "
                      "(perf-tools' kprobe, through BPF).", EXAMPLES)
    p.add_argument("definition", help="one probe spec")
    p.add_argument("filter", nargs="?", help="a filter expression, e.g. 'ret < 0'")
    _options(p)
    return p


def run(argv: Sequence[str], prog: str = "bpfprobes probe", kprobe_style: bool = False) -> int:
    if kprobe_style:            # perf-tools' order: one definition, then a filter
        args = build_kprobe_parser().parse_args(argv)
        args.specs = [args.definition]
    else:
        args = build_parser().parse_args(argv)
    return probe.run(common.options(args, probe.Options), prog)


def main(argv: Sequence[str] | None = None) -> int:
    return common.main("bpfprobes probe", run, argv)


def kprobe_main(argv: Sequence[str] | None = None) -> int:
    """The `kprobe` command: perf-tools' argument order, one spec and a filter."""
    return common.main("kprobe", lambda a: run(a, "kprobe", kprobe_style=True), argv)


if __name__ == "__main__":
    sys.exit(main())
