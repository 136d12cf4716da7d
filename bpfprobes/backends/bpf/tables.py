"""The transport of a program that sends no events: its per-CPU tables, read
whenever its tool asks (an interval, a metrics snapshot) and once more at the
stop, while still attached. Loss is what every program counts (drops, runs the
kernel skipped), as for an events map.
"""
from __future__ import annotations

import time

from bpfprobes.backends.bpf import perfring
from bpfprobes.backends.bpf.loaded import LoadedProgram
from bpfprobes.backends.bpf.perfbuffer import PerfBuffer
from bpfprobes.kernel import bpfsys


def possible_cpus() -> list[int]:
    """The CPUs a per-CPU map has a value for (each possible one, online or not)."""
    return perfring.cpus("possible")


def percpu_rows(loaded: LoadedProgram, name: str) -> list[tuple[bytes, list[bytes]]]:
    """(key, [each possible CPU's value bytes]) of every entry of a per-CPU map,
    read with bpf(2) whoever loaded the program: values of any struct."""
    fd = loaded.map_fd(name)
    info = bpfsys.map_info(fd)
    ncpu = len(possible_cpus())
    stride = (info["value_size"] + 7) & ~7          # the kernel rounds each CPU's copy up
    out, key = [], None
    while (key := perfring.map_next_key(fd, key, info["key_size"])) is not None:
        raw = perfring.map_lookup(fd, key, stride * ncpu)
        if raw is not None:
            size = info["value_size"]
            out.append((key, [raw[i * stride:i * stride + size] for i in range(ncpu)]))
    return out


def rows(loaded: LoadedProgram, name: str) -> list[tuple[bytes, bytes]]:
    """(key, value) of every entry of a map that is not per-CPU, read with bpf(2)."""
    fd = loaded.map_fd(name)
    info = bpfsys.map_info(fd)
    out, key = [], None
    while (key := perfring.map_next_key(fd, key, info["key_size"])) is not None:
        raw = perfring.map_lookup(fd, key, info["value_size"])
        if raw is not None:
            out.append((key, raw))
    return out


class NoStream:
    """A transport with nothing to read as it comes: polling only waits."""
    kind = "tables"

    def open(self, on_sample) -> None:
        pass

    def poll(self, timeout_ms: int) -> None:
        time.sleep(timeout_ms / 1000)

    def drain(self) -> None:
        pass

    def close(self) -> None:
        pass


class TableReader(NoStream, PerfBuffer):
    """A run without an events map: the tool reads its tables; loss as for any,
    its last figure taken at the stop (`final_lost`: the maps go with the detach)."""

    def __init__(self, loaded: LoadedProgram) -> None:
        PerfBuffer.__init__(self, loaded, direct=False)
        self.kind = "tables"
        self.final_lost = 0

    def finish(self) -> None:
        self.final_lost = self.lost
