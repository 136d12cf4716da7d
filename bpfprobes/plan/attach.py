"""What to attach a program's function to: one kprobe, kretprobe, tracepoint,
raw tracepoint, uprobe or uretprobe, as a plan says it (either backend
carries it out)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Attach:
    kind: str                   # kprobe | kretprobe | kprobe_multi | tracepoint | raw_tracepoint |
                                # uprobe | uretprobe
    target: str                 # symbol, "category:event", or uprobe symbol
    fn: str                     # BPF function in the program
    path: str | None = None     # uprobe binary
    offset: int = 0             # kprobe +OFFS, or uprobe address when symbol is empty
    maxactive: int = 0
    pid: int = -1               # uprobe: only this process
    kernel_path: str | None = None  # uprobe: /proc/self/fd/N of the checked binary (`path` shown)
    # a USDT site: attached at `file_offset` by our own perf_event_open, counting up the
    # semaphore at file offset `ref_ctr` (0: none); None: any other uprobe
    ref_ctr: int | None = None
    file_offset: int = 0
    # a kprobe whose program tells targets apart by bpf_get_attach_cookie (their index)
    cookie: int | None = None
    # kprobe_multi: these kprobes (each with its cookie) through one link; should the
    # kernel refuse it, each is attached on its own (its `fn`)
    members: tuple["Attach", ...] = ()

    def describe(self) -> str:
        if self.kind == "kprobe_multi":
            shown = ", ".join(m.target or hex(m.offset) for m in self.members[:3])
            more = ", ..." if len(self.members) > 3 else ""
            return f"kprobe_multi {len(self.members)} functions ({shown}{more})"
        where = f"{self.path}:" if self.path else ""
        off = f"+{self.offset}" if self.offset and self.target else ""
        return f"{self.kind} {where}{self.target or hex(self.offset)}{off}"
