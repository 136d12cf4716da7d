"""A probe plan's attachments: what the BPF backend attaches for each probe and
each hidden entry (kprobes, kretprobes with maxactive, uprobes at checked
addresses, tracepoints)."""
from __future__ import annotations

import os

from bpfprobes.kernel.running import Kernel
from bpfprobes.plan import probeplan, spec
from bpfprobes.plan.attach import Attach


def default_maxactive() -> int:
    """The kernel's own default for kretprobes (kernel/kprobes.c), stated explicitly so
    BCC registers through kprobe_events, where kprobe_profile counts misses."""
    return max(10, 2 * (os.cpu_count() or 1))


def _kernel_target(k: Kernel, s: spec.ProbeSpec) -> str:
    # BCC names kprobe_events entries after the target: keep MOD: only when ambiguous
    if s.module and len(k.kallsyms.find(s.symbol)) > 1:
        return f"{s.module}:{s.symbol}"
    return s.symbol


def attach_for(k: Kernel, s: spec.ProbeSpec, fn: str, up: probeplan.Uprobe | None,
               pid: int | None, kind: str | None = None) -> Attach:
    kind = kind or s.kind
    if s.kind == "tracepoint":
        return Attach("tracepoint", f"{s.group}:{s.event}", fn)
    if up is not None:
        # the address probeplan placed and checked, not BCC's own symbol lookup
        return Attach(kind, "", fn, path=up.path, offset=up.vaddr, pid=pid or -1,
                      kernel_path=up.kernel_path or None, ref_ctr=up.ref_ctr,
                      file_offset=up.file_offset)
    maxactive = (s.maxactive or default_maxactive()) if kind == "kretprobe" else 0
    return Attach(kind, _kernel_target(k, s), fn, offset=s.offset, maxactive=maxactive)


def attachments(k: Kernel, plan: probeplan.Plan) -> list[Attach]:
    pid = plan.options.pid
    out = []
    for st in plan.stashes:            # entries first: a return then finds its start
        entry = {"kretprobe": "kprobe", "uretprobe": "uprobe"}[st.spec.kind]
        out.append(attach_for(k, st.spec, st.fn, st.uprobe, pid, entry))
    out += [attach_for(k, p.spec, p.fn, p.uprobe, pid) for p in plan.probes]
    return out
