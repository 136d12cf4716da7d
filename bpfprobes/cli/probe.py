"""probe (also installed as `kprobe`): kprobes, kretprobes, uprobes and
tracepoints on any function, with arguments in the kernel's fetcharg syntax."""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import replace
from typing import Sequence

from .. import __version__, codegen, countplan, features, loader, probefilter, probefmt, \
    probelayout, probeplan, runconfig, spec, stream, tracectx
from ..bpfbackend import BpfBackend
from ..errors import CompileError, UsageError
from ..kernel import Kernel, current
from ..output import Column, JsonOutput, Quiet, TextOutput
from ..safetext import decode_exact, for_terminal
from ..session import Session
from . import common, count, probe_tracefs

EXAMPLES = """\
  bpfprobes probe 'p:do_sys_openat2 file=+0(%si):string'       # kernel function, arg by register
  bpfprobes probe 'p:do_sys_openat2 filename:string'           # the same, by its BTF name
  bpfprobes probe 'r:do_sys_openat2 ret=$retval' --filter 'ret < 0'     # failed opens only
  bpfprobes probe 'p:do_sys_openat2' 'r:do_sys_openat2 ret=$retval' --summary   # + latency
  bpfprobes probe -s 'p:vfs_read count=$arg3:u64' -n 5         # with kernel stacks, 5 events
  bpfprobes probe 'p:9pnet_virtio:p9_virtio_request'           # a function in a module
  bpfprobes probe 'p:/lib/x86_64-linux-gnu/libc.so.6:malloc size=$arg1:u64' -p 1234
  bpfprobes probe -U 'r:/usr/bin/bash:readline line=+0($retval):string'
  bpfprobes probe 't:syscalls:sys_enter_openat filename:string' --filter 'filename ~ "/etc/*"'
  bpfprobes probe --json 't:sched:sched_process_exec filename pid'
  bpfprobes probe --context 'p:vring_interrupt irq=$arg1:s32'      # hardirq? preempt depth?
  bpfprobes probe --backend tracefs 'p:do_sys_openat2 file=+0(%si):string'  # no BCC needed
  bpfprobes probe --count 'p:vfs_read' 'p:vfs_write' -i 1      # calls counted in the kernel
  bpfprobes probe --rate-limit 100 'p:vfs_read count=$arg3:u64'  # at most 100 events/s
  bpfprobes probe --dry-run 'p:do_sys_openat2 file=+0(%si):string'   # show C, attach nothing
  kprobe 'p:myopen do_sys_openat2 file=+0(%si):string' 'file ~ "/etc/*"'  # perf-tools style

specs: p[:[GRP/]EVENT] [MOD:]SYM[+OFFS] [ARGS]   kprobe     r[N][:EVENT] [MOD:]SYM [ARGS]  kretprobe
       p[:EVENT] /PATH:SYM[+OFFS] [ARGS]         uprobe     r[:EVENT] /PATH:SYM [ARGS]     uretprobe
       t:SUBSYS:EVENT [FIELD[:TYPE] ...]         tracepoint (fields from its format file)
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
    p.add_argument("--backend", choices=("auto", "bpf", "tracefs"), default="auto",
                   help="bpf: BCC programs; tracefs: the kernel's own kprobe_events/"
                        "uprobe_events in a trace instance of ours (no BCC, no headers); "
                        "auto (default): bpf, or tracefs when BCC cannot compile")
    common.add_rate_limit_option(p)
    p.add_argument("--count", action="store_true",
                   help="count calls per probe in the kernel instead of printing events "
                        "(arguments are not read); see also bpfprobes count")
    p.add_argument("--by", choices=sorted(count.BY), help="with --count: per process too")
    p.add_argument("-i", "--interval", type=common.seconds_arg, metavar="SECONDS",
                   help="with --count: the counts of each interval")
    p.add_argument("--context", action="store_true",
                   help="the context of each event: hardirq/softirq/NMI, bottom halves off, "
                        "need-resched, preempt depth (ftrace's d.h1 columns; read from the "
                        "CPU's preempt_count where kallsyms shows it)")
    p.add_argument("--string-size", type=common.count_arg, metavar="BYTES",
                   default=probelayout.DEFAULT_STRING_SIZE,
                   help=f"bytes kept of each string (default {probelayout.DEFAULT_STRING_SIZE})")
    p.add_argument("--json", action="store_true", help="JSON lines (meta, event, lost, summary)")
    p.add_argument("--buffer-pages", type=common.pages_arg, default=stream.DEFAULT_PAGES,
                   metavar="N", help=f"perf buffer pages per CPU (default {stream.DEFAULT_PAGES})")
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


# ---------------------------------------------------------------- plan -> attachments

def default_maxactive() -> int:
    """The kernel's own default for kretprobes (kernel/kprobes.c), stated explicitly so
    BCC registers through kprobe_events, where kprobe_profile counts misses."""
    return max(10, 2 * (os.cpu_count() or 1))


def _kernel_target(k: Kernel, s: spec.ProbeSpec) -> str:
    # BCC names kprobe_events entries after the target: keep MOD: only when ambiguous
    if s.module and len(k.kallsyms.find(s.symbol)) > 1:
        return f"{s.module}:{s.symbol}"
    return s.symbol


def _attach_for(k: Kernel, s: spec.ProbeSpec, fn: str, up: probeplan.Uprobe | None,
                pid: int | None, kind: str | None = None) -> loader.Attach:
    kind = kind or s.kind
    if s.kind == "tracepoint":
        return loader.Attach("tracepoint", f"{s.group}:{s.event}", fn)
    if up is not None:
        # the address probeplan placed and checked, not BCC's own symbol lookup
        return loader.Attach(kind, "", fn, path=up.path, offset=up.vaddr, pid=pid or -1,
                             kernel_path=up.kernel_path or None)
    maxactive = (s.maxactive or default_maxactive()) if kind == "kretprobe" else 0
    return loader.Attach(kind, _kernel_target(k, s), fn, offset=s.offset, maxactive=maxactive)


def attachments(k: Kernel, plan: probeplan.Plan) -> list[loader.Attach]:
    pid = plan.options.pid
    out = []
    for st in plan.stashes:            # entries first: a return then finds its start
        entry = {"kretprobe": "kprobe", "uretprobe": "uprobe"}[st.spec.kind]
        out.append(_attach_for(k, st.spec, st.fn, st.uprobe, pid, entry))
    out += [_attach_for(k, p.spec, p.fn, p.uprobe, pid) for p in plan.probes]
    return out


# ---------------------------------------------------------------- dry run / verbose

def describe(k: Kernel, plan: probeplan.Plan) -> list[str]:
    """What each probe is: mechanism, kprobe_events line, payload, filter split."""
    lines = []
    for p in plan.probes:
        s = p.spec
        lines.append(f"probe {p.index} {p.event}: {s.text}")
        up = p.uprobe.file_offset if p.uprobe else None
        line = spec.to_kprobe_events(replace(s, event=p.event), k.abi, uprobe_offset=up)
        if line:
            which = "uprobe_events" if s.is_uprobe else "kprobe_events"
            lines.append(f"  {which}: {line}")
        slots = ", ".join(f"{sl.name}:{sl.type}@{sl.offset}" + (f"[{sl.size}]" if sl.is_string
                                                                else "") for sl in p.layout.slots)
        lines.append(f"  function {p.fn}, payload {p.layout.size} bytes" +
                     (f": {slots}" if slots else ""))
        if p.pair is not None:
            lines.append(f"  latency: from its entry (pair {p.pair})")
        if plan.options.filter is not None:
            if p.kernel_filter is None and p.user_filter is None:
                lines.append("  filter: not applied (the probe lacks a field it names)")
            else:
                kernel = probefilter.text(p.kernel_filter) if p.kernel_filter else "(none)"
                user = "; userspace checks the rest" if p.user_filter else ""
                lines.append(f"  filter: in kernel: {kernel}{user}")
    for st in plan.stashes:
        lines.append(f"entry of {st.spec.text}: {st.fn} records the time for the latency")
    return lines + list(plan.notes)


def dry_run(k: Kernel, plan: probeplan.Plan, attaches: list[loader.Attach]) -> int:
    out = sys.stdout
    for line in describe(k, plan):
        out.write(f"# {for_terminal(line)}\n")
    for a in attaches:
        out.write(f"# attach: {for_terminal(a.describe())} -> {a.fn}\n")
    defs = codegen.define_flags(codegen.probe_defines(plan))
    out.write(f"# cflags: {' '.join(defs)}\n")
    settings = runconfig.describe(runconfig.PROBE, codegen.probe_config(plan))
    out.write(f"# config: {for_terminal(settings)}\n")
    out.write(codegen.probe_source(plan, k.abi))
    return 0


# ---------------------------------------------------------------- the run

def _mechanisms(k: Kernel, plan: probeplan.Plan) -> list[dict]:
    need = {"kprobe": "kprobes", "kretprobe": "kretprobes", "uprobe": "uprobes",
            "uretprobe": "uprobes", "tracepoint": "tracepoints"}
    return [{"event": p.event, "spec": p.spec.text, "mechanism": p.spec.kind,
             "why": f"asked for by the spec; {features.check(k, need[p.spec.kind]).why}"}
            for p in plan.probes]


def _usym(loaded: loader.Loaded, module: bool = True):
    def usym(addr: int, pid: int) -> str:
        name = loaded.bpf.sym(addr, pid, show_module=module, show_offset=True)
        text = decode_exact(name) if isinstance(name, bytes) else str(name)
        return f"0x{addr:x}" + text[len("[unknown]"):] if text.startswith("[unknown]") else text
    return usym


def trace(k: Kernel, plan: probeplan.Plan, attaches: list[loader.Attach], args,
          prog: str) -> stream.Summary:
    clock = common.Clock()
    sink = JsonOutput(prog) if args.json else \
        TextOutput(prog, [Column(probefmt.FTRACE_HEADER, 0, lambda text: text,
                                 escape=False)],         # ftrace_text escapes each line
                   header=args.header)
    shown = Quiet(sink) if args.quiet else sink
    stats = probefmt.Stats(plan)
    render = (lambda ev: probefmt.json_event(ev, clock.wall)) if args.json else \
        probefmt.ftrace_text
    # BCC loads it: uprobes, kretprobe maxactive and stack maps are BCC's to attach and read
    backend = BpfBackend(k, codegen.probe_program(plan, k.abi), attaches, cacheable=False,
                         pages=args.buffer_pages, kretprobe_misses=True)

    def consumer(backend: BpfBackend):
        loaded = backend.loaded
        stacks = plan.options.kstack or plan.options.ustack
        decoder = probefmt.Decoder(plan, k.kallsyms,
                                   (lambda sid: loaded["stacks"].walk(sid)) if stacks else None,
                                   _usym(loaded), _usym(loaded, module=False),
                                   tracectx.Decoder(k.abi.name) if args.context else None)

        def on_event(raw: bytes) -> bool:
            ev = decoder(raw)
            if ev is None:
                return False
            stats.add(ev)
            shown.event(render(ev))
            return True
        return on_event

    def meta(live) -> dict:
        return {"version": __version__, "kernel": k.release, "arch": k.abi.name,
                "transport": live.transport, "attach": live.attached,
                "probes": _mechanisms(k, plan),
                "filter": probefilter.text(plan.options.filter) if plan.options.filter else None,
                "startup_s": live.startup_s,
                **({"rate_limit": args.rate_limit.meta()} if args.rate_limit else {})}

    def at_exit(_summary) -> dict:
        for target, n in backend.misses.items():
            if n:
                sink.flush()
                print(f"{prog}: kretprobe on {target} missed {n} returns (maxactive too "
                      f"small: raise it, e.g. r64:{target})", file=sys.stderr)
        if not args.summary:
            return {}
        if args.json:
            return {"probes": stats.rows()}
        sink.flush()
        print(stats.table(), flush=True)
        return {}

    return Session(prog, k, backend, sink, consumer,
                   stream.Limits(args.duration, args.max_events), meta, verbose=args.verbose,
                   notes=describe(k, plan), throttled=args.rate_limit is not None,
                   at_exit=at_exit).run()


def _plan(k: Kernel, texts: list[str], filter_text: str | None, args) -> tuple:
    specs = spec.parse_all(texts, k.abi)
    expr = probefilter.parse(filter_text) if filter_text else None
    if args.latency and not any(s.is_return for s in specs):
        raise UsageError("--latency times return probes, and no spec is one",
                         "add an r: spec, e.g. 'r:do_sys_openat2 ret=$retval'")
    facts = probeplan.resolve(specs, k, dry_run=args.dry_run, force=args.force, pid=args.pid)
    options = probeplan.Options(string_size=args.string_size, kstack=args.stack,
                                ustack=args.user_stack, latency=args.latency, pid=args.pid,
                                tid=args.tid, comm=args.comm, skip_pid=os.getpid(), filter=expr,
                                context=tracectx.preempt_defines(k.kallsyms, k.btf)
                                if args.context else None,
                                rate_limit=args.rate_limit)
    plan = probeplan.assemble(facts, options, k.abi)
    return plan, attachments(k, plan)


def run(argv: Sequence[str], prog: str = "bpfprobes probe", kprobe_style: bool = False) -> int:
    if kprobe_style:
        args = build_kprobe_parser().parse_args(argv)
        texts, filter_text = [args.definition], args.filter
    else:
        args = build_parser().parse_args(argv)
        texts, filter_text = args.specs, args.filter
    if not args.dry_run:
        common.require_root()        # before planning: tracefs is root-only
    k = current()
    plan, attaches = _plan(k, texts, filter_text, args)
    for warning in plan.warnings:
        print(f"{prog}: {for_terminal(warning)}", file=sys.stderr)
    if args.dry_run:
        return dry_run(k, plan, attaches)
    if args.count:
        targets = [countplan.Target(p.spec.kind, p.event,
                                    _attach_for(k, p.spec, f"count_{i}", p.uprobe, args.pid))
                   for i, p in enumerate(plan.probes)]
        return count.count_targets(k, targets, args, prog, pid=args.pid)
    if args.backend == "tracefs":
        return probe_tracefs.trace(k, plan, args, prog, "asked for by --backend tracefs")
    try:
        trace(k, plan, attaches, args, prog.split()[-1])
    except CompileError as e:
        if args.backend == "bpf" or probe_tracefs.unsupported(plan, args) is not None \
                or any(p.spec.kind == "tracepoint" for p in plan.probes):
            raise
        why = f"the BPF backend cannot run here ({e.what}): using the kernel's dynamic events"
        print(f"{prog}: {for_terminal(why)}", file=sys.stderr)
        return probe_tracefs.trace(k, plan, args, prog, why)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    return common.main("bpfprobes probe", run, argv)


def kprobe_main(argv: Sequence[str] | None = None) -> int:
    """The `kprobe` command: perf-tools' argument order, one spec and a filter."""
    return common.main("kprobe", lambda a: run(a, "kprobe", kprobe_style=True), argv)


if __name__ == "__main__":
    sys.exit(main())
