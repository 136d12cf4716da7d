"""The one interface of a loaded BPF program, whoever loaded it: BCC in this
process (loader.Loaded) or bpf(2) from the program cache
(progcache.DirectLoaded). Everything outside this package reaches a program
through these calls only, by map role and name: no BCC object leaves it."""
from __future__ import annotations

from typing import Callable, Protocol

from bpfprobes.gen.codegen import Program
from bpfprobes.plan.attach import Attach

STACK_DEPTH = 127                       # PERF_MAX_STACK_DEPTH: a stack map value's slots


class LoadedProgram(Protocol):
    origin: str                         # compiled (this start) | cached
    program: Program
    attached: list[Attach]

    def attach(self, how: Attach) -> None:
        """Attach one function (KernelError: one line)."""

    def close(self) -> None:
        """Detach everything, free programs and maps (idempotent)."""

    def map_fd(self, name: str) -> int:
        """A map's fd (KeyError: the program has none of that name)."""

    def has_map(self, name: str) -> bool: ...

    def prog_fds(self) -> list[int]:
        """The run's programs (their info: recursion misses); none once closed."""

    def per_cpu_sum(self, name: str) -> int:
        """A one-slot per-CPU u64 counter, summed over CPUs (drops, throttled)."""

    def stack(self, name: str, stack_id: int) -> list[int]:
        """The addresses of one stack in a stack trace map, innermost first."""

    def user_symbol(self, addr: int, pid: int, module: bool) -> str:
        """`sym+off [module]` of a user address in process pid, or `0x...`."""

    def table_items(self, name: str) -> list[tuple[bytes, list[int]]]:
        """(key bytes, per-CPU u64 values) of every entry of a per-CPU table."""

    def open_perf_reader(self, name: str, on_sample: Callable[[bytes], None], pages: int,
                         on_lost: Callable[[int], None], wakeup_events: int) -> None:
        """BCC's perf reader on an events map, where perfring's direct one is
        not offered (perfring.supported())."""

    def poll_perf(self, timeout_ms: int) -> None: ...

    def consume_perf(self) -> None: ...
