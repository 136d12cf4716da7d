"""probe (also installed as `kprobe`): kprobes, kretprobes, uprobes and
tracepoints on any function, with arguments in the kernel's fetcharg syntax."""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field, replace

from bpfprobes import __version__
from bpfprobes.backends.bpf import loader
from bpfprobes.backends.bpf.backend import BpfBackend
from bpfprobes.backends.bpf.loaded import LoadedProgram
from bpfprobes.base.errors import CompileError, UsageError
from bpfprobes.base.safetext import for_terminal
from bpfprobes.gen import codegen, probegen
from bpfprobes.kernel import binaries, features, tracectx
from bpfprobes.kernel.running import Kernel, current
from bpfprobes.plan import countplan, probefilter, probelayout, probeplan, runconfig, spec
from bpfprobes.plan.attach import Attach
from bpfprobes.plan.probeattach import attach_for, attachments, default_maxactive  # noqa: F401
from bpfprobes.present import probefmt, proberows
from bpfprobes.present.output import EncodedJson, Quiet, TextLines
from bpfprobes.session import loop
from bpfprobes.session.core import Session, decoding
from bpfprobes.tools import probe_tracefs, probeoptions, shared
from bpfprobes.tools.shared import Clock, SessionOptions

BACKENDS = ("auto", "bpf", "tracefs")


@dataclass(frozen=True)
class Options(SessionOptions):
    specs: list[str] = field(default_factory=list)
    filter: str | None = None               # the --filter expression
    pid: int | None = None
    tid: int | None = None
    comm: str | None = None                 # the exact task name (bytes as given)
    header: bool = False                    # -H: ftrace's header line first
    stack: bool = False                     # -s: kernel stacks
    user_stack: bool = False                # -U: user stacks
    latency: bool = False                   # time returns from their entry
    summary: bool = False                   # a table per probe at exit
    quiet: bool = False                     # no event lines
    backend: str = "auto"                   # BACKENDS
    count: bool = False                     # count calls in the kernel instead
    by: str | None = None                   # with count: count.BY's keys
    interval: float | None = None           # with count: each interval's table
    context: bool = False                   # hardirq/softirq/NMI, preempt depth
    string_size: int = probelayout.DEFAULT_STRING_SIZE
    dry_run: bool = False                   # show the program and lines, attach nothing
    force: bool = False                     # an unproven instruction boundary, with a warning
    prometheus: tuple[str, int] | None = None   # count in the kernel, serve /metrics here
    hist: bool = False                      # a histogram in the kernel instead of events
    linear: int | None = None               # its buckets this wide (default: log2)
    hist_of: str | None = None              # of this captured argument (default: latency)
    unit: str = "us"                        # a latency histogram's unit
    folded: bool = False                    # stacks counted in the kernel, folded at exit


# ---------------------------------------------------------------- dry run / verbose

def describe(k: Kernel, plan: probeplan.Plan) -> list[str]:
    """What each probe is: mechanism, kprobe_events line, payload, filter split."""
    lines = []
    for p in plan.probes:
        s = p.spec
        lines.append(f"probe {p.index} {p.event}: {s.text}")
        up = p.uprobe.file_offset if p.uprobe else None
        line = spec.to_kprobe_events(replace(s, event=p.event), k.abi, uprobe_offset=up,
                                     ref_ctr=p.uprobe.ref_ctr if p.uprobe else None)
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


def dry_run(k: Kernel, plan: probeplan.Plan, attaches: list[Attach]) -> int:
    out = sys.stdout
    for line in describe(k, plan):
        out.write(f"# {for_terminal(line)}\n")
    for a in attaches:
        out.write(f"# attach: {for_terminal(a.describe())} -> {a.fn}\n")
    defs = codegen.define_flags(probegen.probe_defines(plan))
    out.write(f"# cflags: {' '.join(defs)}\n")
    settings = runconfig.describe(runconfig.PROBE, probegen.probe_config(plan))
    out.write(f"# config: {for_terminal(settings)}\n")
    out.write(probegen.probe_source(plan, k.abi))
    return 0


# ---------------------------------------------------------------- the run

def _mechanisms(k: Kernel, plan: probeplan.Plan) -> list[dict]:
    need = {"kprobe": "kprobes", "kretprobe": "kretprobes", "uprobe": "uprobes",
            "uretprobe": "uprobes", "tracepoint": "tracepoints"}
    return [{"event": p.event, "spec": p.spec.text, "mechanism": p.spec.kind,
             "why": f"asked for by the spec; {features.check(k, need[p.spec.kind]).why}"}
            for p in plan.probes]


def _usym(loaded: LoadedProgram, module: bool = True):
    return lambda addr, pid: loaded.user_symbol(addr, pid, module)


def trace(k: Kernel, plan: probeplan.Plan, attaches: list[Attach], o: Options,
          prog: str) -> loop.Summary:
    clock = Clock()
    sink = EncodedJson(prog) if o.json else \
        TextLines(prog, probefmt.FTRACE_HEADER, show_header=o.header)   # lines come escaped
    shown = Quiet(sink) if o.quiet else sink
    stats = probefmt.Stats(plan)
    # the program cache loads it unless a stack is asked for (BCC reads its stack map);
    # kretprobes with maxactive it leaves to BCC itself (progcache.usable)
    stacks = plan.options.kstack or plan.options.ustack
    # user addresses are named (libbcc's symbolizer, imported before going live) for a
    # uprobe's caller where it is shown (JSON; a return's line) and for user stacks
    if plan.options.ustack or any(p.spec.is_uprobe and (o.json or p.spec.is_return)
                                  for p in plan.probes):
        loader.prepare_user_symbols()
    backend = BpfBackend(k, probegen.probe_program(plan, k.abi), attaches, cacheable=not stacks,
                         pages=o.buffer_pages, kretprobe_misses=True)

    def consumer(backend: BpfBackend):
        loaded = backend.loaded
        decoder = probefmt.Decoder(plan, k.kallsyms,
                                   (lambda sid: loaded.stack("stacks", sid)) if stacks else None,
                                   _usym(loaded), _usym(loaded, module=False),
                                   tracectx.Decoder(k.abi.name) if o.context else None,
                                   entry_callers=o.json)
        # samples -> lines or JSON events, a batch in one pass (proberows: the storm path)
        rows = proberows.Rows(plan, decoder, k.kallsyms, _usym(loaded, module=False),
                              clock.wall, stats.note if o.summary else None)
        return decoding(rows.json if o.json else rows.text, shown)(backend)

    def meta(live) -> dict:
        return {"version": __version__, "kernel": k.release, "arch": k.abi.name,
                "transport": live.transport, "attach": live.attached,
                "probes": _mechanisms(k, plan),
                "filter": probefilter.text(plan.options.filter) if plan.options.filter else None,
                "startup_s": live.startup_s,
                **({"rate_limit": o.rate_limit.meta()} if o.rate_limit else {})}

    def at_exit(_summary) -> dict:
        for target, n in backend.misses.items():
            if n:
                sink.flush()
                print(f"{prog}: kretprobe on {target} missed {n} returns (maxactive too "
                      f"small: raise it, e.g. r64:{target})", file=sys.stderr)
        if not o.summary:
            return {}
        if o.json:
            return {"probes": stats.rows()}
        sink.flush()
        print(stats.table(), flush=True)
        return {}

    return Session(prog, k, backend, sink, consumer,
                   loop.Limits(o.duration, o.max_events), meta, verbose=o.verbose,
                   notes=describe(k, plan), throttled=o.rate_limit is not None,
                   at_exit=at_exit).run()


def _plan(k: Kernel, o: Options) -> tuple:
    names = binaries.Resolver(pid=o.pid)          # bash:readline, libc:malloc
    specs = spec.parse_all(o.specs, k.abi, names)
    expr = probefilter.parse(o.filter) if o.filter else None
    if o.latency and not any(s.is_return for s in specs):
        raise UsageError("--latency times return probes, and no spec is one",
                         "add an r: spec, e.g. 'r:do_sys_openat2 ret=$retval'")
    facts = probeplan.resolve(specs, k, dry_run=o.dry_run, force=o.force, pid=o.pid)
    facts.notes[:0] = names.notes               # -v: which binary each name became
    options = probeplan.Options(string_size=o.string_size, kstack=o.stack,
                                ustack=o.user_stack, latency=o.latency, pid=o.pid,
                                tid=o.tid, comm=o.comm, skip_pid=os.getpid(), filter=expr,
                                context=tracectx.preempt_defines(k.kallsyms, k.btf)
                                if o.context else None,
                                rate_limit=o.rate_limit)
    plan = probeplan.assemble(facts, options, k.abi)
    return plan, attachments(k, plan)


# what --prometheus cannot do: it sends no events (option -> why it needs them)
NOT_WITH_PROMETHEUS = {"count": "--count", "stack": "-s", "user_stack": "-U",
                       "summary": "--summary", "json": "--json", "header": "-H",
                       "context": "--context", "dry_run": "--dry-run", "max_events": "-n",
                       "by": "--by", "interval": "-i", "quiet": "-q"}


def prometheus(k: Kernel, o: Options, prog: str) -> int:
    """--prometheus: the specs as one metric part, served until a stop."""
    from bpfprobes.tools import metricparts, serve      # only here (prometheus_client, http)
    given = [flag for name, flag in NOT_WITH_PROMETHEUS.items() if getattr(o, name)]
    if given or o.backend == "tracefs" or o.pid or o.tid or o.comm:
        raise UsageError(f"--prometheus counts in the kernel and sends no events: not with "
                         f"{', '.join(given) or '--backend tracefs, -p, -L or --comm'}",
                         "a session file's [[probe]] part labels by comm or pid (serve)")
    from bpfprobes.plan import sessionfile             # only here (tomllib)
    decl = sessionfile.Part("probe", "probe", 0, specs=tuple(o.specs), filter=o.filter,
                            latency=o.latency, rate_limit=o.rate_limit)
    serve.serve(k, [metricparts.plan_part(k, decl, strict=True)], o.prometheus,
                serve.Options(duration=o.duration, verbose=o.verbose), prog)
    return 0


def run(o: Options, prog: str = "bpfprobes probe") -> int:
    probeoptions.check(o)            # options that go together, before anything is done
    if o.by == "probe":              # every count and histogram is per probe already
        o = replace(o, by=None)
    if not o.dry_run:
        shared.require_root()        # before planning: tracefs is root-only
    k = current()
    if o.prometheus:
        return prometheus(k, o, prog)
    plan, attaches = _plan(k, o)
    for warning in plan.warnings:
        print(f"{prog}: {for_terminal(warning)}", file=sys.stderr)
    if o.dry_run:
        return dry_run(k, plan, attaches)
    # the other modes' modules are imported when asked for: a trace needs none of
    # them, and they bring their own (count: prometheus_client, http.server)
    if o.count:
        from bpfprobes.tools import count
        targets = [countplan.Target(p.spec.kind, p.event,
                                    attach_for(k, p.spec, f"count_{i}", p.uprobe, o.pid))
                   for i, p in enumerate(plan.probes)]
        return count.count_targets(k, targets, count.Options(
            by=o.by, interval=o.interval, pid=o.pid, duration=o.duration, json=o.json,
            verbose=o.verbose), prog)
    if o.hist:
        from bpfprobes.tools import probehist
        probehist.run(k, plan, o, prog.split()[-1])
        return 0
    if o.folded:
        from bpfprobes.tools import folded
        folded.run_probe(k, plan, o, prog.split()[-1])
        return 0
    if o.backend == "tracefs":
        return probe_tracefs.trace(k, plan, o, prog, "asked for by --backend tracefs")
    try:
        trace(k, plan, attaches, o, prog.split()[-1])
    except CompileError as e:
        if o.backend == "bpf" or probe_tracefs.unsupported(plan, o) is not None \
                or any(p.spec.kind == "tracepoint" for p in plan.probes):
            raise
        why = f"the BPF backend cannot run here ({e.what}): using the kernel's dynamic events"
        print(f"{prog}: {for_terminal(why)}", file=sys.stderr)
        return probe_tracefs.trace(k, plan, o, prog, why)
    return 0
