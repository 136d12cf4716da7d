"""Run-time settings of a BPF program, as the bytes of its `config` map.

What changes from run to run (task filters, our own PID, a rate limit, a
tool's own filters) is not compiled in: each program reads it from a one-entry
read-only array map that the loader writes before anything is attached
(bpf_c/config.h). So the program's bytecode depends on its shape alone, and
the program cache keeps one entry per shape without touching an instruction.

Each struct <tool>_config is declared once in its bpf_c header and mirrored
once here (a unit test compiles the header with gcc and compares).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Mapping

from bpfprobes.base.cstruct import Layout, ctype_of

ANY_UID = 0xFFFFFFFF            # config.h: uid 0 is root, so "any" is this
COMM_LEN = 16                   # TASK_COMM_LEN
IRQ_SLOTS = 16                  # irq.h IRQ_SLOTS

# config.h RUN_CONFIG_FIELDS: the start of every program's config
RUN_FIELDS = (("skip_pid", "u32"), ("pid", "u32"), ("tid", "u32"), ("uid", "u32"),
              ("cgroup", "u64"), ("rate_limit", "u64"), ("rate_per_cpu", "u32"),
              ("reserved", "u32"))

OPENSNOOP = Layout("opensnoop_config", RUN_FIELDS + (
    ("flags", "u64"), ("rdonly", "u32"), ("failed_only", "u32")))
EXECSNOOP = Layout("execsnoop_config", RUN_FIELDS + (
    ("ppid", "u32"), ("show_failed", "u32")))
IRQ = Layout("irq_config", RUN_FIELDS + (
    ("softirq_mask", "u32"), ("irq_filter", "u32"), ("irqs", f"s32[{IRQ_SLOTS}]")))
PROBE = Layout("probe_config", RUN_FIELDS + (
    ("comm", f"char[{COMM_LEN}]"), ("comm_len", "u32"), ("comm_set", "u32")))
COUNT = Layout("count_config", RUN_FIELDS)

_DEFAULTS = {"uid": ANY_UID}


def pack(layout: Layout, values: Mapping[str, object]) -> bytes:
    """The map value for `values` (fields not given: no filter). A name the
    layout lacks, or a value its field cannot hold, is a bug: it raises."""
    obj = layout.ctype()
    for name, value in {**_DEFAULTS, **values}.items():
        if value is None:               # not given: no filter (uid's is ANY_UID, not root's 0)
            value = _DEFAULTS.get(name)
        if value is None:
            continue
        kind = dict(layout.fields)[name]
        base, _, count = kind.partition("[")
        if base == "char":              # a C string: its NUL must fit
            if not isinstance(value, bytes) or len(value) >= int(count[:-1]):
                raise ValueError(f"config {name}: {value!r} does not fit {kind} with its NUL")
        elif count:
            if len(value) != int(count[:-1]):
                raise ValueError(f"config {name}: {len(value)} values for {kind}")
            for item in value:
                _check_int(name, base, item)
            value = ctype_of(kind)(*value)
        else:
            _check_int(name, kind, value)
        setattr(obj, name, value)
    return bytes(obj)


def _check_int(name: str, kind: str, value: object) -> None:
    """ctypes would cut an out-of-range int silently: a filter must never
    compare a value other than the one given."""
    bits = ctypes.sizeof(ctype_of(kind)) * 8
    low, high = (-(1 << bits - 1), (1 << bits - 1) - 1) if kind[0] == "s" else (0, (1 << bits) - 1)
    if type(value) not in (int, bool) or not low <= value <= high:
        raise ValueError(f"config {name}: {value!r} does not fit {kind}")


@dataclass(frozen=True)
class RateLimit:
    """--rate-limit: events a second at most, on all CPUs together or each."""
    per_second: int
    per_cpu: bool

    def meta(self) -> dict:
        return {"per_second": self.per_second, "per_cpu": self.per_cpu}

    @classmethod
    def parse(cls, text: str) -> "RateLimit":
        """'500' (all CPUs together) or '500/cpu' (each CPU); ValueError says why not."""
        number, slash, scope = text.partition("/")
        if (slash and scope != "cpu") or not number.isdigit() \
                or not 1 <= int(number) <= 2**31 - 1:
            raise ValueError(f"N or N/cpu with N from 1 to {2**31 - 1}, not {text!r}")
        return cls(int(number), bool(slash))


def task(*, skip_pid: int | None = None, pid: int | None = None, tid: int | None = None,
         uid: int | None = None, cgroup: int | None = None,
         rate: RateLimit | None = None) -> dict:
    """The run fields every program has, from a tool's options (None: no filter)."""
    out = {"skip_pid": skip_pid, "pid": pid, "tid": tid, "uid": uid, "cgroup": cgroup}
    if rate is not None:
        out.update(rate_limit=rate.per_second, rate_per_cpu=int(rate.per_cpu))
    return out


def describe(layout: Layout, raw: bytes) -> str:
    """The settings that filter or limit anything, as `name=value` (for --dry-run);
    our own PID, skipped by every run, is not the user's filter."""
    obj = layout.ctype.from_buffer_copy(raw)
    out = []
    for name, kind in layout.fields:
        value = getattr(obj, name)
        if kind.startswith("char["):
            value = value.decode("ascii", "backslashreplace")
        elif "[" in kind:
            value = list(value)
        if name not in ("reserved", "skip_pid") and value not in (0, b"", "", None) and \
                value != _DEFAULTS.get(name) and not (isinstance(value, list) and not any(value)):
            out.append(f"{name}={value}")
    return " ".join(out) or "(no filters)"
