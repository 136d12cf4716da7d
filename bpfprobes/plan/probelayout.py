"""Where each captured argument sits in a probe event's payload.

Computed once from the spec, used twice: codegen writes each value at its
slot, decode reads it back from the same slot, so no per-spec C struct is
ever mirrored by hand. Scalars come first, one 8-byte slot each (the raw
64-bit value; the type's width and sign are applied when decoding); then
strings, each in a fixed slot. Only the used part of the last string leaves
the kernel (variable-size sample).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

from bpfprobes.base.errors import UsageError
from bpfprobes.kernel.running import TASK_COMM_LEN
from bpfprobes.plan.spec import ArgType, Comm, FetchArg

SCALAR_SIZE = 8
COMM_SIZE = TASK_COMM_LEN
DEFAULT_STRING_SIZE = 256
MAX_STRING_SIZE = 4096       # the kernel's MAX_STRING_SIZE (PATH_MAX)
MAX_PAYLOAD = 16384          # per event; a perf sample must stay well under 64 KiB


@dataclass(frozen=True)
class Slot:
    index: int               # argument position, 0-based: its bit in faults/truncated
    name: str
    type: ArgType
    offset: int              # bytes into the payload
    size: int                # 8 for scalars; the slot's capacity for strings

    @cached_property            # asked per slot per event: computed once
    def is_string(self) -> bool:
        return self.type.is_string


@dataclass(frozen=True)
class PayloadLayout:
    slots: tuple[Slot, ...]  # in argument order
    size: int                # payload bytes when every slot is full

    @property
    def scalars(self) -> tuple[Slot, ...]:
        return tuple(s for s in self.slots if not s.is_string)

    @property
    def strings(self) -> tuple[Slot, ...]:
        return tuple(s for s in self.slots if s.is_string)

    @property
    def trimmed(self) -> Slot | None:
        """The string slot that ends the payload: only its used bytes are sent."""
        last = max(self.slots, key=lambda s: s.offset, default=None)
        return last if last is not None and last.is_string else None

    @cached_property
    def _reading(self) -> tuple[struct.Struct, int, tuple[tuple[int, int] | None, ...]]:
        """How unpack reads a payload, worked out once: the scalars' struct, their
        bytes, and each slot's string span (None: the next scalar)."""
        n = len(self.scalars)
        return (struct.Struct(f"<{n}Q"), n * SCALAR_SIZE,
                tuple((s.offset, s.offset + s.size) if s.is_string else None for s in self.slots))

    def unpack(self, payload: bytes) -> list[int | bytes]:
        """Raw values in argument order: ints for scalars, bytes for strings."""
        scalars, size, spans = self._reading
        ints = iter(scalars.unpack_from(payload.ljust(size, b"\0")))
        return [payload[span[0]:span[1]] if span else next(ints) for span in spans]


def _align(n: int) -> int:
    return (n + 7) & ~7


def layout(args: Sequence[FetchArg], string_size: int = DEFAULT_STRING_SIZE,
           string_sizes: dict[str, int] | None = None) -> PayloadLayout:
    """Slots for `args`. `string_sizes` caps particular strings (char[16] fields)."""
    if not 8 <= string_size <= MAX_STRING_SIZE:
        raise UsageError(f"string size {string_size} out of range",
                         f"between 8 and {MAX_STRING_SIZE} bytes")
    caps = string_sizes or {}
    scalars = [(i, a) for i, a in enumerate(args) if not a.type.is_string]
    strings = [(i, a) for i, a in enumerate(args) if a.type.is_string]
    slots: dict[int, Slot] = {}
    off = 0
    for i, a in scalars:
        slots[i] = Slot(i, a.name, a.type, off, SCALAR_SIZE)
        off += SCALAR_SIZE
    for i, a in strings:
        size = COMM_SIZE if isinstance(a.fetch, Comm) else min(string_size, caps.get(a.name,
                                                                                     string_size))
        slots[i] = Slot(i, a.name, a.type, off, _align(size))
        off += _align(size)
    if off > MAX_PAYLOAD:
        raise UsageError(f"the arguments need {off} bytes per event, more than {MAX_PAYLOAD}",
                         "capture fewer strings or lower --string-size")
    return PayloadLayout(tuple(slots[i] for i in range(len(args))), off)


def typed(t: ArgType, raw: int) -> int:
    """A raw 64-bit slot as the type says: width-masked, sign-extended for sN."""
    bits = t.bits or 64
    value = raw & ((1 << bits) - 1)
    if t.kind == "s" and value >> (bits - 1):
        value -= 1 << bits
    return value
