"""What may reach BPF C, and the ready tools' C: sources from bpf_c/ plus -D
cflags. The one other writer of C, probegen.py (the probe tool's functions),
writes it only through the checks here.

Ready tools are whole .c files in bpf_c/ specialised by defines (their shape:
attach mechanism, architecture registers, BTF offsets); nothing is spliced
into their text. What changes from run to run (filters, our PID, a rate
limit) is not C at all: it is the program's config (runconfig.py), written to
its map by the loader.

Nothing the user types becomes C. What the generated program holds is made
here from ints (`c_int`; a string is compared as the integer values of its
bytes, `c_bytes_equal`, the one path text takes into C), identifiers we make
and check (`c_identifier`), and pt_regs members from the arch tables
(`c_member`). Spec text, paths, event, argument and field names appear in
the C only as indexes; -D values pass the same checks (`define_flags`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from bpfprobes.base.errors import UsageError
from bpfprobes.kernel.arch import Abi

# Installed wheel: bpfprobes/bpf_c/; source checkout: <root>/bpf_c/ (this file: bpfprobes/gen/)
C_DIRS = (Path(__file__).resolve().parents[1] / "bpf_c",
          Path(__file__).resolve().parents[2] / "bpf_c")


def c_dir() -> Path:
    """Where the BPF C sources are (installed or checked out)."""
    for d in C_DIRS:
        if (d / "common.h").is_file():
            return d
    raise FileNotFoundError("bpf_c/ not found next to the bpfprobes package")


@dataclass(frozen=True)
class Program:
    name: str                  # for messages: "opensnoop.bpf.c"
    text: str
    cflags: tuple[str, ...]
    config: bytes = b""        # its config map's value (runconfig.pack): not in the bytecode


# ---------------------------------------------------------------- what may reach C

MAX_C_IDENT = 64
_C_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_C_MEMBER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\[[0-9]{1,4}\]|\.[A-Za-z_][A-Za-z0-9_]*){0,4}")
_C_NUMBER = re.compile(r"(?:0[xX][0-9a-fA-F]{1,16}|[0-9]{1,20})(?:ULL|UL|U|LL|L)?")
# BCC loads and attaches every function whose name starts with one of these when
# the program is constructed (BPF._trace_autoload), before we attach anything.
BCC_AUTO_ATTACH = ("kprobe__", "kretprobe__", "tracepoint__", "raw_tracepoint__",
                   "kfunc__", "kretfunc__", "kmod_ret__", "lsm__")
U64_MAX = 2**64 - 1


def c_identifier(name: str) -> str:
    """`name`, checked to be a plain C identifier that BCC will not auto-attach.
    Only names we make get here; a failure is a bug, not bad input."""
    if not (isinstance(name, str) and len(name) <= MAX_C_IDENT and _C_IDENT.fullmatch(name)) \
            or name.startswith(BCC_AUTO_ATTACH):
        raise ValueError(f"not a safe C identifier: {name!r}")
    return name


def c_member(expr: str) -> str:
    """A pt_regs member as the arch tables write it: `si`, `regs[1]`, `psw.addr`."""
    if not (isinstance(expr, str) and _C_MEMBER.fullmatch(expr)):
        raise ValueError(f"not a struct member: {expr!r}")
    return expr


def c_int(n: int, signed: bool = False) -> str:
    """A C integer constant for a Python int in 64 bits (s64 or u64)."""
    if type(n) is not int:
        raise ValueError(f"not an integer: {n!r}")
    if not signed:
        if not 0 <= n <= U64_MAX:
            raise ValueError(f"{n} does not fit in u64")
        return f"{n:#x}ULL"
    if not -2**63 <= n < 2**63:
        raise ValueError(f"{n} does not fit in s64")
    return f"{n}LL" if n > -2**63 else "(-0x7fffffffffffffffLL - 1)"    # INT64_MIN has no literal


def text_bytes(text: str | bytes) -> bytes:
    """The exact bytes of user text the kernel compares (argv that was not UTF-8
    arrives surrogate-escaped and goes back to its own bytes)."""
    if isinstance(text, (bytes, bytearray)):
        return bytes(text)
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise UsageError(f"{text.encode('ascii', 'backslashreplace').decode()[:40]!r} "
                         "holds characters that are not text", "give UTF-8 text") from None


def c_bytes_equal(base: str, data: bytes) -> str:
    """C that is true when the bytes at `base` (our C expression) start with
    `data`: each byte as an integer, so no text of the user's is ever C."""
    return " && ".join(f"(u8){base}[{i}] == {b}" for i, b in enumerate(bytes(data))) or "1"


def define_flags(defs: Mapping[str, object]) -> list[str]:
    """-D flags from a table: True -> -DKEY, None/False -> omitted, else -DKEY=value.
    Values are ints, numbers or struct members (checked): never free text."""
    out = []
    for key, value in defs.items():
        c_identifier(key)
        if value is None or value is False:
            continue
        if value is True:
            out.append(f"-D{key}")
        elif type(value) is int:
            out.append(f"-D{key}={value}")
        elif isinstance(value, str) and (_C_NUMBER.fullmatch(value) or _C_MEMBER.fullmatch(value)):
            out.append(f"-D{key}={value}")
        else:
            raise ValueError(f"-D{key}: {value!r} is not a number or a member name")
    return out


def abi_defines(abi: Abi, syscall_wrapped: bool) -> dict[str, object]:
    """pt_regs members for arguments and return value, from the arch table."""
    defs: dict[str, object] = {f"FUNC_ARG{i}": abi.member(r) for i, r in enumerate(abi.func_args, 1)}
    defs.update({f"SYSCALL_ARG{i}": abi.member(r) for i, r in enumerate(abi.syscall_args, 1)})
    defs["RET_REG"] = abi.member(abi.retval)
    defs["SYSCALL_WRAPPED"] = syscall_wrapped
    return defs


_LOCAL_INCLUDE = re.compile(r'^#include "([^"]+)"[^\n]*$', re.M)


def expand_includes(text: str, base: Path, seen: set[str] | None = None) -> str:
    """Inline `#include "local.h"` from bpf_c/: BCC rewrites map calls
    (`drops.lookup(...)`) only in the main file, never in included headers."""
    seen = set() if seen is None else seen

    def inline(m: re.Match) -> str:
        name = m.group(1)
        if name in seen:
            return f"/* {name} already included */"
        seen.add(name)
        body = expand_includes((base / name).read_text(), base, seen)
        return f"/* ---- {name} ---- */\n{body}\n/* ---- end of {name} ---- */"

    return _LOCAL_INCLUDE.sub(inline, text)


def ready_tool(name: str, defs: Mapping[str, object], config: bytes) -> Program:
    """bpf_c/NAME.bpf.c specialised by `defs`, run with `config`."""
    src = c_dir() / f"{c_identifier(name)}.bpf.c"
    return Program(src.name, expand_includes(src.read_text(), c_dir()),
                   tuple(["-w", *define_flags(defs)]), config)


# ---------------------------------------------------------------- bpfprobes count: one counter per target

def count_program(targets: int, defs: Mapping[str, object], config: bytes,
                  counters: Iterable[int] | None = None) -> Program:
    """bpf_c/count.bpf.c with a COUNTER(n) function (count_n) for each target in
    `counters` (default: all; kernel functions told apart by cookie need none)."""
    src = c_dir() / "count.bpf.c"
    counters = "\n".join(f"COUNTER({int(n)})"
                         for n in (range(int(targets)) if counters is None else counters))
    return Program(src.name, expand_includes(src.read_text(), c_dir()) + "\n" + counters + "\n",
                   tuple(["-w", *define_flags({"COUNT_TARGETS": max(1, targets), **defs})]),
                   config)
