"""Attach policy: which mechanism a tool uses on this kernel, and why.

1. kprobe/kretprobe where the kernel has them and the symbols are traceable;
2. otherwise the tool's tracepoint equivalent;
3. --attach forces one and fails clearly when this kernel cannot do it.
"""
from __future__ import annotations

from dataclasses import dataclass

from bpfprobes.base.errors import KernelError
from bpfprobes.kernel import features
from bpfprobes.kernel.running import Kernel

KPROBE, TRACEPOINT = "kprobe", "tracepoint"
CHOICES = (KPROBE, TRACEPOINT)


@dataclass(frozen=True)
class Choice:
    mechanism: str
    why: str


def traceable(k: Kernel, symbol: str) -> str | None:
    """None if `symbol` can be kprobed, else the reason it cannot."""
    # the image's answer is kept for the boot (a syscall entry: no kallsyms read on a
    # warm start); a module's symbol is looked up now, as modules come and go
    if not (k.in_image(symbol) or k.kallsyms.exists(symbol)):
        return f"{symbol} is not in /proc/kallsyms"
    if symbol in k.kprobe_blacklist:
        return f"{symbol} is in the kernel's kprobe blacklist"
    return None


def choose(k: Kernel, forced: str | None, kprobe_symbols: list[str],
           tracepoints: list[str]) -> Choice:
    """Pick kprobe or tracepoint for a ready tool from evidence on this kernel."""
    kp, krp = features.check(k, "kprobes"), features.check(k, "kretprobes")
    kp_problem = None if kp.available and krp.available else \
        f"kprobes unavailable ({kp.why if not kp.available else krp.why})"
    if kp_problem is None:
        if not kprobe_symbols:
            kp_problem = "no kprobe target symbol found in /proc/kallsyms"
        else:
            kp_problem = next(filter(None, (traceable(k, s) for s in kprobe_symbols)), None)
    missing_tp = [t for t in tracepoints if not k.tracepoint_exists(*t.split(":"))]
    tp_problem = f"tracepoint {missing_tp[0]} not found in tracefs" if missing_tp else None
    if forced == KPROBE or (forced is None and kp_problem is None):
        if kp_problem:
            raise KernelError(f"cannot use kprobes: {kp_problem}", "try --attach tracepoint")
        return Choice(KPROBE, f"kprobes available; attaching {', '.join(kprobe_symbols)}")
    if tp_problem:
        raise KernelError(f"cannot use tracepoints: {tp_problem}"
                          + (f"; and {kp_problem}" if kp_problem and forced is None else ""),
                          "try --attach kprobe" if forced else "")
    why = "forced by --attach" if forced else kp_problem
    return Choice(TRACEPOINT, f"{why}; using {', '.join(tracepoints)}")
