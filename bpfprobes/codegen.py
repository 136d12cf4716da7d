"""The only module that writes BPF C: sources from bpf_c/ plus -D cflags.

Ready tools are whole .c files in bpf_c/ specialised by defines (filters,
architecture registers, BTF offsets); nothing is spliced into their text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .arch import Abi

# Installed wheel: bpfprobes/bpf_c/; source checkout: <root>/bpf_c/
C_DIRS = (Path(__file__).resolve().parent / "bpf_c",
          Path(__file__).resolve().parent.parent / "bpf_c")


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


def define_flags(defs: Mapping[str, object]) -> list[str]:
    """-D flags from a table: True -> -DKEY, None/False -> omitted, else -DKEY=value."""
    out = []
    for key, value in defs.items():
        if value is None or value is False:
            continue
        out.append(f"-D{key}" if value is True else f"-D{key}={value}")
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


def ready_tool(name: str, defs: Mapping[str, object]) -> Program:
    """bpf_c/NAME.bpf.c specialised by `defs`."""
    src = c_dir() / f"{name}.bpf.c"
    return Program(src.name, expand_includes(src.read_text(), c_dir()),
                   tuple(["-w", *define_flags(defs)]))
