"""A USDT argument's location, as the assembler wrote it in the probe's note, to the
fetcharg that reads it: `-4@%edi` is the s32 in %di, `8@-16(%rbp)` the u64 at
%bp - 16 (user memory), `4@$5` the constant 5, `-8@[sp, 16]` the s64 at sp + 16
(aarch64). SIZE@ gives the width, a minus sign a signed value.

Locations this does not read (an index register, a symbol relative to %rip) are
refused with the argument named: never read from a wrong place.
"""
from __future__ import annotations

import re

from bpfprobes.base.errors import UsageError
from bpfprobes.kernel.arch import Abi
from bpfprobes.plan.spec import TYPES, ArgType, Deref, Imm, Node, Reg

# sub-register spellings the assembler uses -> the register holding them (the width
# comes from SIZE@, so the low bytes of the whole register are the value)
_X86_SUB = {**{f"{p}{r}": r for r in ("ax", "bx", "cx", "dx", "si", "di", "bp", "sp")
               for p in ("r", "e", "")},
            **{low: r for low, r in (("al", "ax"), ("bl", "bx"), ("cl", "cx"), ("dl", "dx"),
                                     ("sil", "si"), ("dil", "di"), ("bpl", "bp"), ("spl", "sp"))},
            **{f"r{n}{s}": f"r{n}" for n in range(8, 16) for s in ("", "d", "w", "b")},
            "rip": "ip"}
_AARCH64_SUB = {**{f"{p}{n}": f"x{n}" for n in range(31) for p in ("x", "w")},
                "sp": "sp", "wsp": "sp"}
SUB_REGISTERS = {"x86_64": _X86_SUB, "aarch64": _AARCH64_SUB}

_SIZE = re.compile(r"(-?)(1|2|4|8)@(.+)")
_NUM = r"-?(?:0[xX][0-9a-fA-F]+|[0-9]+)"
# x86 (AT&T): %reg, $imm, disp(%reg), (%reg)
_X86_FORMS = (("reg", re.compile(r"%([a-z0-9]+)")), ("imm", re.compile(rf"\$({_NUM})")),
              ("mem", re.compile(rf"({_NUM})?\(%([a-z0-9]+)\)")))
# aarch64: reg, imm, [reg], [reg, off]
_AARCH64_FORMS = (("reg", re.compile(r"([xw][0-9]+|w?sp)")), ("imm", re.compile(rf"#?({_NUM})")),
                  ("mem", re.compile(rf"\[([xw][0-9]+|sp)(?:\s*,\s*#?({_NUM}))?\]")))
FORMS = {"x86_64": _X86_FORMS, "aarch64": _AARCH64_FORMS}


def _register(name: str, abi: Abi, where: str) -> Reg:
    full = SUB_REGISTERS[abi.name].get(name)
    canon = abi.canonical(full) if full is not None else None
    if canon is None:
        raise UsageError(f"{where}: register {name!r} is not one bpfprobes reads",
                         "probe the site with p:PATH:0xOFFSET and read it yourself")
    return Reg(canon)


def location(text: str, abi: Abi, where: str) -> tuple[Node, ArgType]:
    """(fetch node, default type) of one argument location; UsageError if unreadable."""
    if abi.name not in FORMS:
        raise UsageError(f"{where}: USDT arguments are not read on {abi.name} yet",
                         "probe the site with p:PATH:0xOFFSET and %REG fetchargs")
    m = _SIZE.fullmatch(text)
    if m is None:
        raise UsageError(f"{where}: the note's argument {text!r} has no SIZE@ form")
    sign, size, loc = m.groups()
    arg_type = TYPES[f"{'s' if sign else 'u'}{int(size) * 8}"]
    for kind, rx in FORMS[abi.name]:
        hit = rx.fullmatch(loc)
        if hit is None:
            continue
        if kind == "reg":
            return _register(hit[1], abi, where), arg_type
        if kind == "imm":
            value = int(hit[1], 0)
            if not -2**63 <= value < 2**64:         # a crafted note: never cut silently
                raise UsageError(f"{where}: the note's constant {hit[1][:30]} does not fit "
                                 "in 64 bits")
            return Imm(value), arg_type
        disp, reg = (hit[1], hit[2]) if abi.name == "x86_64" else (hit[2], hit[1])
        return Deref(int(disp or "0", 0), _register(reg, abi, where), user=True), arg_type
    raise UsageError(f"{where}: the note's argument {text!r} is a location bpfprobes does "
                     "not read (an index register or a symbol)",
                     "leave that argument out; the others are read")
