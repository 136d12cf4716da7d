"""Kernel symbols from /proc/kallsyms: existence, modules, wildcards, addr -> sym+off."""
from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

KALLSYMS = Path("/proc/kallsyms")
_TEXT_TYPES = b"tTwW"


@dataclass(frozen=True)
class Symbol:
    name: str
    addr: int
    module: str | None     # None for vmlinux, else the module name without brackets
    kind: str              # kallsyms type letter


class Kallsyms:
    """Lazy view of /proc/kallsyms; name lookups scan the raw bytes (cheap, no full parse)."""

    def __init__(self, path: Path = KALLSYMS, text: bytes | None = None) -> None:
        self._path = path
        self._text = text
        self._sorted: tuple[list[int], list[Symbol]] | None = None

    @property
    def raw(self) -> bytes:
        if self._text is None:
            self._text = self._path.read_bytes()
        return self._text

    def find(self, name: str, module: str | None = None,
             kinds: tuple[bytes, ...] = (b"t", b"T", b"w", b"W")) -> list[Symbol]:
        """Symbols called `name` of the kallsyms type letters `kinds` (text by
        default), in `module` if given (None = anywhere)."""
        raw, out, key = self.raw, [], b" " + name.encode()
        pos = raw.find(key)
        while pos >= 0:
            end = pos + len(key)
            if end < len(raw) and raw[end:end + 1] in (b"\n", b"\t") and pos >= 2:
                bol = raw.rfind(b"\n", 0, pos) + 1
                eol = raw.find(b"\n", end)
                parts = raw[bol:eol if eol >= 0 else len(raw)].split()
                if len(parts) >= 3 and parts[1] in kinds:
                    mod = parts[3].strip(b"[]").decode() if len(parts) > 3 else None
                    if module is None or mod == module:
                        out.append(Symbol(name, int(parts[0], 16), mod, parts[1].decode()))
            pos = raw.find(key, end)
        return out

    def exists(self, name: str, module: str | None = None) -> bool:
        return bool(self.find(name, module))

    def first_existing(self, names: list[str]) -> str | None:
        return next((n for n in names if self.exists(n)), None)

    def match(self, pattern: str, limit: int = 0) -> list[str]:
        """Text symbol names matching a shell wildcard (* ?), sorted, unique."""
        body = "".join({"*": r"\S*", "?": r"\S"}.get(c, re.escape(c)) for c in pattern)
        rx = re.compile(rb" [tTwW] (" + body.encode() + rb")(?=[\t\n])")
        names = sorted({m.group(1).decode() for m in rx.finditer(self.raw)})
        return names[:limit] if limit else names

    def module_symbols(self, module: str) -> list[str]:
        """Text symbol names of a loaded module, sorted, unique."""
        rx = re.compile(rb" [tTwW] (\S+)\t\[" + re.escape(module.encode()) + rb"\]")
        return sorted({m.group(1).decode() for m in rx.finditer(self.raw)})

    def modules_of(self, name: str) -> set[str | None]:
        return {s.module for s in self.find(name)}

    def _table(self) -> tuple[list[int], list[Symbol]]:
        if self._sorted is None:
            syms = []
            for line in self.raw.splitlines():
                parts = line.split()
                if len(parts) < 3 or parts[1] not in b"tTwW" or len(parts[1]) != 1:
                    continue
                addr = int(parts[0], 16)
                if addr == 0:
                    continue
                mod = parts[3].strip(b"[]").decode() if len(parts) > 3 else None
                syms.append(Symbol(parts[2].decode(), addr, mod, parts[1].decode()))
            syms.sort(key=lambda s: s.addr)
            self._sorted = ([s.addr for s in syms], syms)
        return self._sorted

    def addresses_visible(self) -> bool:
        """kptr_restrict hides addresses (all zero) from readers without privilege."""
        return re.search(rb"^0*[1-9a-f][0-9a-f]* [tT] ", self.raw, re.M) is not None

    def resolve(self, addr: int) -> tuple[Symbol, int] | None:
        """The text symbol containing `addr` and the offset into it."""
        addrs, syms = self._table()
        i = bisect.bisect_right(addrs, addr) - 1
        if i < 0:
            return None
        return syms[i], addr - syms[i].addr

    def format(self, addr: int) -> str:
        """`func+0x1a`, `func+0x1a [module]`, or the raw hex address if unknown."""
        hit = self.resolve(addr)
        if hit is None:
            return f"0x{addr:x}"
        sym, off = hit
        mod = f" [{sym.module}]" if sym.module else ""
        return f"{sym.name}+0x{off:x}{mod}"
