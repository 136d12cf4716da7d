"""What to attach a program's function to: one kprobe, kretprobe, tracepoint,
raw tracepoint, uprobe or uretprobe, as a plan says it (either backend
carries it out)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Attach:
    kind: str                   # kprobe | kretprobe | tracepoint | raw_tracepoint | uprobe | uretprobe
    target: str                 # symbol, "category:event", or uprobe symbol
    fn: str                     # BPF function in the program
    path: str | None = None     # uprobe binary
    offset: int = 0             # kprobe +OFFS, or uprobe address when symbol is empty
    maxactive: int = 0
    pid: int = -1               # uprobe: only this process
    kernel_path: str | None = None  # uprobe: /proc/self/fd/N of the checked binary (`path` shown)
    # a USDT site: attached at `file_offset` by our own perf_event_open, counting up the
    # semaphore at file offset `ref_ctr` (0: none); None: any other uprobe (BCC's attach)
    ref_ctr: int | None = None
    file_offset: int = 0

    def describe(self) -> str:
        where = f"{self.path}:" if self.path else ""
        off = f"+{self.offset}" if self.offset and self.target else ""
        return f"{self.kind} {where}{self.target or hex(self.offset)}{off}"
