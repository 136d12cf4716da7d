"""Probes attached by perf_event_open(2) through the kernel's dynamic PMUs (kprobe,
uprobe), without tracefs: what the program cache attaches with, and how a USDT
site's uprobe gets its semaphore (the reference counter the kernel counts up while
the probe is attached, which BCC's Python attach_uprobe cannot pass).
"""
from __future__ import annotations

import ctypes
import fcntl
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from bpfprobes.backends.bpf import perfring
from bpfprobes.kernel import bpfsys

PERF_TYPE_TRACEPOINT = 2
PERF_SAMPLE_RAW = 1 << 10
PERF_EVENT_IOC_ENABLE = 0x2400
PERF_EVENT_IOC_SET_BPF = 0x40042408
_DEVICES = Path("/sys/bus/event_source/devices")


@dataclass(frozen=True)
class Pmu:
    type: int
    retprobe_bit: int
    ref_ctr_shift: int | None       # uprobe: where config holds the ref_ctr_offset


_cache: dict[str, Pmu | None] = {}


def _field(base: Path, name: str) -> int | None:
    """The first bit of a format field (`config:32-63` -> 32), None if absent."""
    try:
        return int((base / "format" / name).read_text().split(":")[1].split("-")[0])
    except (OSError, ValueError, IndexError):
        return None


def pmu(name: str) -> Pmu | None:
    """The `kprobe` or `uprobe` PMU, if this kernel has it."""
    if name not in _cache:
        base = _DEVICES / name
        try:
            kind = int((base / "type").read_text())
        except (OSError, ValueError):
            _cache[name] = None
        else:
            bit = _field(base, "retprobe")
            _cache[name] = None if bit is None else Pmu(kind, bit, _field(base, "ref_ctr_offset"))
    return _cache[name]


def perf_attr(kind: int, config: int, config1: int = 0, config2: int = 0) -> bytes:
    # type, size, config, sample_period, sample_type, read_format, flags, wakeup_events,
    # bp_type, config1, config2
    return struct.pack("<IIQQQQQIIQQ", kind, perfring.ATTR_SIZE, config, 1, PERF_SAMPLE_RAW,
                       0, 0, 1, 0, config1, config2).ljust(perfring.ATTR_SIZE, b"\0")


def with_program(fd: int, prog_fd: int) -> int:
    """Run `prog_fd` on the event `fd` and enable it; the event is closed on failure."""
    try:
        fcntl.ioctl(fd, PERF_EVENT_IOC_SET_BPF, prog_fd)
        fcntl.ioctl(fd, PERF_EVENT_IOC_ENABLE, 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def attach_uprobe(prog_fd: int, path: str, file_offset: int, ref_ctr: int = 0,
                  pid: int = -1, retprobe: bool = False) -> int:
    """A uprobe at `path`'s `file_offset`, counting up the u16 at file offset `ref_ctr`
    (0: none) while attached; -1: every process. The event's fd (close to detach)."""
    p = pmu("uprobe")
    if p is None:
        raise OSError(0, "this kernel has no uprobe PMU (perf_event_open cannot attach uprobes)")
    if ref_ctr and p.ref_ctr_shift is None:
        raise OSError(0, "this kernel's uprobes take no semaphore (ref_ctr_offset: 4.20 and "
                         "later)")
    name = ctypes.create_string_buffer(path.encode("utf-8", "surrogateescape"))
    config = (1 << p.retprobe_bit if retprobe else 0) | (ref_ctr << (p.ref_ctr_shift or 0))
    fd = perfring.perf_event_open(perf_attr(p.type, config, ctypes.addressof(name), file_offset),
                                  pid, 0 if pid == -1 else -1)
    return with_program(fd, prog_fd)


def open_kprobe(target: str, offset: int = 0, retprobe: bool = False) -> int:
    """A kprobe (or kretprobe) on `target`+`offset`, or at the address `offset`
    when `target` is empty, through the kprobe PMU: its perf event's fd, no
    program yet."""
    p = pmu("kprobe")
    if p is None:
        raise OSError(0, "this kernel has no kprobe PMU")
    name = ctypes.create_string_buffer(target.encode())
    config = 1 << p.retprobe_bit if retprobe else 0
    # config1: the function's name (0: none, config2 is an address), config2: offset
    return perfring.perf_event_open(perf_attr(p.type, config,
                                              ctypes.addressof(name) if target else 0, offset),
                                    -1, 0)


def _checked(fd: int, what: str) -> int:
    if fd < 0:
        raise OSError(-fd, f"{what}: {os.strerror(-fd)}")
    return fd


def attach_kprobe_link(prog_fd: int, target: str, cookie: int, offset: int = 0,
                       retprobe: bool = False) -> int:
    """`prog_fd` on a kprobe, told `cookie` (bpf_get_attach_cookie): a link's fd
    (close to detach). The link holds the perf event, whose own fd is closed
    here: one descriptor per probe, not two."""
    event = open_kprobe(target, offset, retprobe)
    try:
        return _checked(bpfsys.perf_link(prog_fd, event, cookie), "bpf link")
    finally:
        os.close(event)


def attach_kprobe_multi(prog_fd: int, members: list, retprobe: bool = False) -> int:
    """`prog_fd` at every kprobe of `members` (plan.attach.Attach: all by function
    name, or all by address) through one kprobe_multi link, each telling the
    program its cookie: the link's fd (close to detach all)."""
    cookies = [m.cookie or 0 for m in members]
    if all(m.target for m in members):
        fd = bpfsys.kprobe_multi_link(prog_fd, [m.target for m in members], cookies,
                                      retprobe=retprobe)
    else:
        fd = bpfsys.kprobe_multi_link(prog_fd, None, cookies, [m.offset for m in members],
                                      retprobe)
    return _checked(fd, "kprobe_multi link")
