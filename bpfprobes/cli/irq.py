"""`bpfprobes irq`'s command line (tools/irq.py does the work)."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Sequence

from bpfprobes.kernel import policy
from bpfprobes.tools import irq
from bpfprobes.tools.irq import NO_LINE, PROG, SOFTIRQS
from . import common

_SYMBOL = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,510}")     # KSYM_NAME_LEN 512 with the NUL

EXAMPLES = """\
    bpfprobes irq                         # every hardirq handler run, timed
    bpfprobes irq eth0 -v                 # the NIC's lines (pyroute2, sysfs) and why
    bpfprobes irq vda --summary -d 10     # the disk: count, rate, p50/p99/max per IRQ and CPU
    bpfprobes irq vda -i 1 -q             # that table every second, no event lines
    bpfprobes irq --irq 36 -s             # one line, with kernel stacks
    bpfprobes irq --name 'virtio*-input*' # lines by name (shell wildcards)
    bpfprobes irq --softirq NET_RX,NET_TX # softirq vectors, timed
    bpfprobes irq --tasklet               # tasklets run, and their functions
    bpfprobes irq --tasklet-schedule -s   # who schedules tasklets (kprobe)
    bpfprobes irq eth0 --attach kprobe --handler vring_interrupt -s
    bpfprobes irq vda --json -d 5         # JSON lines
    bpfprobes irq vda --hist --unit ns -d 10   # the disk handler's time, a histogram in the kernel
    bpfprobes irq --softirq all --hist -i 1    # each softirq vector's, every second
    bpfprobes irq vda --folded -d 10 > irq.folded   # what the disk's interrupts interrupted
"""


def _irq_list(text: str) -> list[int]:
    """'36' or '36,37'."""
    irq = common.int_type(0, "an IRQ number", NO_LINE - 1)
    return [irq(part.strip()) for part in text.split(",")]


def _symbol(text: str) -> str:
    """A kernel function name as kallsyms spells it (foo, foo.isra.0): it becomes a
    kprobe target, so nothing else gets through."""
    if not _SYMBOL.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{common.shown(text)} is not a kernel function name")
    return text


def _softirq_list(text: str) -> int:
    """'NET_RX,timer' or 'all' -> a bit mask of vectors."""
    if text.strip().lower() == "all":
        return (1 << len(SOFTIRQS)) - 1
    mask = 0
    for part in text.split(","):
        name = part.strip().upper().removesuffix("_SOFTIRQ")
        if name not in SOFTIRQS:
            raise argparse.ArgumentTypeError(
                f"unknown softirq {part.strip()!r} (one of {', '.join(SOFTIRQS)}, or all)")
        mask |= 1 << SOFTIRQS.index(name)
    return mask


def build_parser() -> common.Parser:
    p = common.parser(PROG, "Trace interrupt handlers of a device, softirqs and "
                      "tasklets: counts, handler time, stacks, and the context of each event.",
                      EXAMPLES)
    p.add_argument("device", nargs="?", metavar="DEVICE",
                   help="a network interface (eth0) or block device (vda, nvme0n1)")
    p.add_argument("--irq", type=_irq_list, action="extend", default=[], metavar="N[,N]",
                   help="these IRQ lines (repeatable)")
    p.add_argument("--name", metavar="PATTERN",
                   help="IRQ lines whose name in /proc/interrupts matches (shell wildcards)")
    p.add_argument("--softirq", type=_softirq_list, default=0, metavar="VEC[,VEC]",
                   help=f"softirq vectors ({', '.join(SOFTIRQS)}, or all)")
    p.add_argument("--tasklet", action="store_true", help="tasklets run (irq:tasklet_entry/exit)")
    p.add_argument("--tasklet-schedule", action="store_true",
                   help="tasklets scheduled (a kprobe on __tasklet_schedule; with -s: by whom)")
    p.add_argument("--handler", action="append", default=[], type=_symbol, metavar="FUNC",
                   help="kprobe this handler function (repeatable); else the known one")
    p.add_argument("--attach", choices=policy.CHOICES,
                   help="force kprobes on the handlers or the irq tracepoints "
                        "(default: kprobes where available and the handler is known)")
    p.add_argument("-s", "--stack", action="store_true", help="kernel stack of each event")
    p.add_argument("--summary", action="store_true",
                   help="at exit, a table per IRQ and CPU: count, rate, p50/p99/max")
    p.add_argument("-i", "--interval", type=common.seconds_arg, metavar="SECONDS",
                   help="print the table every SECONDS (and reset it)")
    p.add_argument("-q", "--quiet", action="store_true", help="no event lines (tables only)")
    p.add_argument("--hist", action="store_true",
                   help="a histogram of handler times per kind and line, bucketed in the "
                        "kernel (no events), printed at exit and each -i")
    p.add_argument("--folded", action="store_true",
                   help="count each kind's and line's calls by the kernel stack at entry, in "
                        "the kernel, and print them at exit in the folded format of flame "
                        "graph tools (KIND LINE;outer;...;inner COUNT)")
    common.add_histogram_shape_options(p, "with --hist: the times' unit (default us)")
    common.add_session_options(p)
    return p


def run(argv: Sequence[str]) -> int:
    return irq.run(common.options(build_parser().parse_args(argv), irq.Options))


def main(argv: Sequence[str] | None = None) -> int:
    return common.main(PROG, run, argv)


if __name__ == "__main__":
    sys.exit(main())
