"""What several tools share below the command line: the root check, syscall
entry points and tracepoints to attach, and the clock that timestamps events."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Sequence

from bpfprobes.backends.bpf.perfbuffer import DEFAULT_PAGES
from bpfprobes.base.errors import KernelError
from bpfprobes.gen import codegen
from bpfprobes.kernel.running import Kernel
from bpfprobes.plan.attach import Attach
from bpfprobes.plan.runconfig import RateLimit


@dataclass(frozen=True)
class SessionOptions:
    """What every tracing tool's options hold: bounds, output, transport, verbosity
    (cli/common.add_session_options gives them on the command line)."""
    duration: float | None = None       # seconds, then stop
    max_events: int | None = None       # events, then stop
    json: bool = False                  # JSON lines instead of text
    buffer_pages: int = DEFAULT_PAGES   # per CPU, a power of two
    rate_limit: RateLimit | None = None
    verbose: bool = False


def require_root() -> None:
    if os.geteuid() != 0:
        raise KernelError("must be run as root: loading BPF programs needs CAP_BPF and "
                          "CAP_PERFMON (or CAP_SYS_ADMIN)", "run with sudo")


def syscall_entries(k: Kernel, syscalls: Sequence[str]) -> dict[str, tuple[str, bool]]:
    """Each syscall's entry symbol on this kernel and whether it is behind the arch wrapper."""
    found = {sc: k.syscall_symbol(sc) for sc in syscalls}
    return {sc: s for sc, s in found.items() if s is not None}


def syscall_tracepoints(k: Kernel, syscalls: Sequence[str]) -> list[str]:
    """The syscalls:sys_enter_X / sys_exit_X pairs this kernel has."""
    return [f"syscalls:sys_{d}_{sc}" for sc in syscalls for d in ("enter", "exit")
            if k.tracepoint_exists("syscalls", f"sys_enter_{sc}")]


def syscall_kprobes(k: Kernel, entries: dict[str, tuple[str, bool]],
                    ret_fn: str) -> tuple[list[Attach], dict]:
    """kp_<syscall> at each entry symbol and `ret_fn` at its return, with the
    arch's registers as -D flags (a ready tool's bpf_c program names them so)."""
    attaches = [a for sc, (sym, _) in entries.items()
                for a in (Attach("kprobe", sym, f"kp_{sc}"),
                          Attach("kretprobe", sym, ret_fn))]
    wrapped = all(w for _, w in entries.values())
    return attaches, {"ATTACH_KPROBE": True, **codegen.abi_defines(k.abi, wrapped)}


def syscall_tracepoint_attaches(tps: list[str], exit_fn: str) -> tuple[list[Attach], dict]:
    """tp_enter_<syscall> at each sys_enter tracepoint and `exit_fn` at each sys_exit."""
    attaches = [Attach("tracepoint", tp, "tp_" + tp.split(":")[1].replace("sys_", "")
                              if "enter" in tp else exit_fn) for tp in tps]
    return attaches, {"ATTACH_TRACEPOINT": True}


class Clock:
    """bpf_ktime_get_ns() is CLOCK_MONOTONIC: map it to wall-clock seconds."""

    def __init__(self, samples: int = 5) -> None:
        # a preemption between the two reads would shift every timestamp by its
        # length: keep the sample whose monotonic reads bracket the wall read closest
        best = None
        for _ in range(samples):
            m0 = time.clock_gettime(time.CLOCK_MONOTONIC)
            wall = time.time()
            m1 = time.clock_gettime(time.CLOCK_MONOTONIC)
            if best is None or m1 - m0 < best[0]:
                best = (m1 - m0, wall - (m0 + m1) / 2)
        self.offset = best[1]
        self._offset_ns = round(self.offset * 1e9)

    def wall(self, ts_ns: int) -> float:
        """Seconds, rounded to the microsecond in integers: whole microseconds
        over 1e6 is the float nearest that decimal (as round(x, 6), at a fifth
        of its cost)."""
        return ((self._offset_ns + ts_ns + 500) // 1000) / 1e6
