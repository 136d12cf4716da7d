"""The BPF backend of a session: a program loaded (from the program cache, or
compiled by BCC), read through its events map (perfbuffer.PerfBuffer), attached.

`cacheable`: whether the program cache may load it (BCC must, for what it
alone can read: the tools that read stack maps or tables through BCC say so;
a kretprobe with maxactive the cache itself leaves to BCC). A
kretprobe with maxactive that the kernel refuses (kprobe_events out of reach)
is attached again without it, and -v says so.
"""
from __future__ import annotations

import contextlib
import os
from typing import Callable

from bpfprobes.backends.bpf import loader, perfbuffer, progcache
from bpfprobes.base import fdlimit, signals
from bpfprobes.base.errors import KernelError
from bpfprobes.gen.codegen import Program
from bpfprobes.kernel.running import Kernel
from bpfprobes.plan.attach import Attach


class BpfBackend:
    def __init__(self, kernel: Kernel, program: Program, attaches: list[Attach], *,
                 cacheable: bool = True, pages: int = perfbuffer.DEFAULT_PAGES,
                 wakeup_events: int = perfbuffer.DEFAULT_WAKEUP,
                 reader: Callable[[object], perfbuffer.PerfBuffer] | None = None,
                 kretprobe_misses: bool = False) -> None:
        self.kernel = kernel
        self.program = program
        self.attaches = attaches
        self.cacheable = cacheable
        self.pages = pages
        self.wakeup_events = wakeup_events
        self.reader = reader                    # the transport, when not the events map
        self.count_kretprobe_misses = kretprobe_misses
        self.loaded = None
        self.misses: dict[str, int] = {}       # kretprobe target -> returns missed
        self._notes: list[str] = []

    # ---- set-up

    def load(self, teardown: contextlib.ExitStack, stop: signals.StopSignals) -> None:
        headers = self.kernel.headers   # a first start may merge a headers tree here
        stop.check("finding kernel headers")
        # from the program cache when it holds this program: no BCC compile, no LLVM
        # (a first start compiles in a child, which a stop signal kills)
        self.loaded = teardown.enter_context(
            progcache.load(self.program, headers, self.attaches)
            if self.cacheable else loader.compile_program(self.program, headers))
        # BCC compiling in this process: a stop signal during it is seen right after
        stop.check("loading the program" if self.origin == "cached" else "compiling")

    @property
    def origin(self) -> str:
        return self.loaded.origin

    def transport(self) -> perfbuffer.PerfBuffer:
        if self.reader is not None:
            return self.reader(self.loaded)
        return perfbuffer.PerfBuffer(self.loaded, pages=self.pages, wakeup_events=self.wakeup_events)

    def attach(self, stop: signals.StopSignals) -> None:
        # a descriptor per probe (a program each too, unless shared): room for them all
        fdlimit.ensure(sum(_descriptors(a) for a in self.attaches))
        for how in self.attaches:
            stop.check("attaching")
            self._attach(how, stop)
        stop.check("attaching")

    def _attach(self, how: Attach, stop: signals.StopSignals) -> None:
        try:
            self.loaded.attach(how)
        except KernelError as e:
            if how.members:
                # one link for all refused (a name ftrace resolves elsewhere): one each
                self._notes.append(f"{how.describe()}: {e.what}; attached one by one")
                fdlimit.ensure(sum(_descriptors(m) for m in how.members))
                for member in how.members:
                    stop.check("attaching")
                    self.loaded.attach(member)
                return
            if how.kind != "kretprobe" or not how.maxactive:
                raise
            # kprobe_events may be out of reach (no debugfs): the kprobe PMU has no maxactive
            self._notes.append(f"{how.describe()}: attached without maxactive "
                               "(misses not counted)")
            self.loaded.attach(Attach(how.kind, how.target, how.fn, offset=how.offset))

    # ---- what went live

    def live(self) -> tuple[list[str], str | None, dict]:
        return [a.describe() for a in self.loaded.attached], self.origin, {}

    def notes(self) -> list[str]:
        return self._notes + [f"attached {a.describe()}" for a in self.loaded.attached]

    def while_attached(self) -> dict:
        """kretprobe misses (kprobe_profile), readable only while attached; per
        target in `self.misses`."""
        if self.count_kretprobe_misses:
            self.misses = kretprobe_misses(self.kernel, self.loaded.attached)
        return {"kretprobe_misses": sum(self.misses.values())} if self.misses else {}


def _descriptors(a: Attach) -> int:
    """What attaching `a` holds open: a link (one for a kprobe_multi's members
    too), or an event and, at most, a program of its own."""
    return 1 if a.kind == "kprobe_multi" or a.cookie is not None else 2


def kretprobe_misses(k: Kernel, attached: list[Attach]) -> dict[str, int]:
    """Returns missed by each kretprobe BCC registered through kprobe_events
    (kprobe_profile: EVENT HITS MISSES); the kprobe PMU exposes no such count."""
    if k.tracefs is None:
        return {}
    try:
        lines = (k.tracefs / "kprobe_profile").read_text().splitlines()
    except OSError:
        return {}
    suffix = f"_bcc_{os.getpid()}"
    out = {}
    for a in attached:
        if a.kind != "kretprobe":
            continue
        name = "r_" + a.target.replace("+", "_").replace(".", "_") + suffix
        for line in lines:
            parts = line.split()
            if len(parts) >= 3 and parts[0] == name:
                out[a.target] = int(parts[2])
    return out
